// A chart's tooltip: pointing at a chart (a mouse hovering, a finger tapping) shows the time of
// the nearest bucket and every series' value there, as text in a box beside the finger, and marks
// the bucket with a line. The <title>s of the bars and points stay for screen readers; browsers
// show those on hover only, late, and never on a touch screen.
import { el, svg } from "./dom.js";
import { fmtTime } from "./time.js";

// The one tooltip shown at a time: a tap on another chart moves it.
let shown = null;

function hideShown() {
  if (shown) shown();
  shown = null;
}

// A tap outside every chart, or Escape, hides it.
document.addEventListener("pointerdown", (event) => {
  if (!(event.target instanceof Element) || !event.target.closest(".chart-box")) hideShown();
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || !shown) return;
  hideShown();
  event.preventDefault();  // (so the keyboard's Escape does not also go back: keys.js)
});

/** Give `figure` (holding the chart `root`, a viewBox `width` wide) a tooltip over `points`;
 * `center(p)` is the x of a point's bucket in the viewBox, `top`/`bottom` the plot's edges. */
export function attachTips(figure, root, { points, series, format, center, width, top, bottom }) {
  if (!points.length) return;
  const tip = el("div", { class: "chart-tip", role: "tooltip", hidden: true });
  const line = svg("line", { class: "tip-line", y1: top, y2: bottom, x1: 0, x2: 0, visibility: "hidden" });
  root.append(line);
  figure.append(tip);

  function hide() {
    tip.hidden = true;
    line.setAttribute("visibility", "hidden");
  }

  function show(clientX, clientY) {
    const box = root.getBoundingClientRect();
    if (!box.width) return;
    const vx = ((clientX - box.left) / box.width) * width;
    let best = points[0];
    for (const p of points) if (Math.abs(center(p) - vx) < Math.abs(center(best) - vx)) best = p;
    tip.replaceChildren(
      el("div", { class: "tip-time" }, fmtTime(best.t)),
      ...series.map((s, si) => {
        const v = best[s.key];
        return el("div", { class: `tip-row key key-${si}`, "data-series": s.key, "data-value": v ?? "" },
          s.label + ": " + (v === null || v === undefined ? "–" : format(v)));
      }));
    tip.dataset.t = String(best.t);
    tip.hidden = false;
    const x = center(best);
    line.setAttribute("x1", x);
    line.setAttribute("x2", x);
    line.removeAttribute("visibility");
    // Beside the point, inside the figure (a phone's screen is narrow): through the CSSOM, which
    // the Content-Security-Policy allows (it forbids style attributes).
    const frame = figure.getBoundingClientRect();
    const left = box.left - frame.left + (x / width) * box.width;
    const room = frame.width - tip.offsetWidth - 4;
    tip.style.left = Math.max(4, Math.min(room, left - tip.offsetWidth / 2)) + "px";
    tip.style.top = Math.max(0, clientY - frame.top - tip.offsetHeight - 14) + "px";
    if (shown !== hide) hideShown();
    shown = hide;
  }

  root.addEventListener("pointermove", (event) => show(event.clientX, event.clientY));
  root.addEventListener("pointerdown", (event) => show(event.clientX, event.clientY));
  root.addEventListener("pointerleave", (event) => {
    if (event.pointerType === "mouse") hideShown();
  });
}
