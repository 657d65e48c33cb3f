// Small SVG charts drawn with DOM APIs. Each chart keeps the numbers it drew in data attributes
// (data-series / data-values / data-t) so tests can compare them with the API's numbers.
import { svg, el } from "./dom.js";
import { attachTips } from "./tips.js";
import { fmtAxis } from "./time.js";

// A chart is drawn for the width of its box (one unit of the drawing is one CSS pixel, so the
// labels show at the size the style sheet gives them, on a phone as on a wide screen): first at a
// guess, a phone's narrower, then again once its box is laid out, and whenever that box's width
// changes.
const WIDE = 600;
const NARROW = 360;
const MIN_W = 200;
const H = 180;
const PAD = { left: 62, right: 8, top: 10, bottom: 22 };

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * chart({id, title, points: [{t, ...}], bucket, series: [{key, label, kind: "bar"|"line"}], format})
 * Bars of several series are drawn side by side, lines on top.
 */
export function chart(spec) {
  const { title, series } = spec;
  let W = matchMedia("(max-width: 760px)").matches ? NARROW : WIDE;
  let drawn = draw(spec, W);
  // A series may bring its own legend item (a link: click to filter).
  const legend = el("div", { class: "legend" }, series.map((s, si) => {
    const item = s.legend || el("span", null, s.label);
    item.classList.add("key", `key-${si}`);
    return item;
  }));
  const figure = el("figure", { class: "chart-box" }, el("figcaption", null, title), drawn.root, legend);
  attachTips(figure, drawn.root, drawn.tips);
  if (typeof ResizeObserver === "function") {
    new ResizeObserver(() => {
      const w = drawn.root.getBoundingClientRect().width;
      if (w < MIN_W || Math.abs(w - W) < 0.5) return;
      W = w;
      const fresh = draw(spec, W);
      for (const tip of figure.querySelectorAll(".chart-tip")) tip.remove();
      drawn.root.replaceWith(fresh.root);
      drawn = fresh;
      attachTips(figure, drawn.root, drawn.tips);
    }).observe(figure);
  }
  return figure;
}

/** The chart's SVG, `W` units wide, and what its tooltip needs. */
function draw({ id, title, points, bucket, series, format }, W) {
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title, "data-chart": id,
    "data-t": points.map((p) => p.t).join(","), "data-bucket": bucket,
  });
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const values = series.flatMap((s) => points.map((p) => p[s.key]).filter((v) => v !== null && v !== undefined));
  const max = niceMax(Math.max(0, ...values));
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t + bucket : 1;
  const span = Math.max(t1 - t0, bucket || 1);
  const x = (t) => PAD.left + ((t - t0) / span) * plotW;
  const y = (v) => PAD.top + plotH - (v / max) * plotH;
  // Axes and grid: three horizontal lines with labels.
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: PAD.left - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, format(v)));
  }
  if (points.length) {
    root.append(svg("text", { x: PAD.left, y: H - 6, class: "axis" }, fmtAxis(t0, span)));
    root.append(svg("text", { x: W - PAD.right, y: H - 6, class: "axis", "text-anchor": "end" }, fmtAxis(t1, span, true)));
  } else {
    root.append(svg("text", { x: W / 2, y: H / 2, class: "axis", "text-anchor": "middle" }, "no traces in this range"));
  }
  const bars = series.filter((s) => s.kind === "bar");
  const slot = (bucket / span) * plotW;
  const barW = Math.max(1, (slot * 0.8) / Math.max(1, bars.length));
  series.forEach((s, si) => {
    const vals = points.map((p) => (p[s.key] === undefined ? null : p[s.key]));
    const group = svg("g", {
      class: `series series-${si}`, "data-series": s.key,
      "data-values": vals.map((v) => (v === null ? "" : String(v))).join(","),
    });
    group.append(svg("title", null, s.label));
    if (s.kind === "bar") {
      const bi = bars.indexOf(s);
      points.forEach((p, i) => {
        const v = vals[i];
        if (v === null) return;
        group.append(svg("rect", {
          x: x(p.t) + slot * 0.1 + bi * barW, y: y(v), width: barW, height: Math.max(0, y(0) - y(v)),
          "data-t": p.t, "data-value": v,
        }, svg("title", null, `${s.label}: ${format(v)}`)));
      });
    } else {
      const coords = [];
      points.forEach((p, i) => {
        if (vals[i] !== null) coords.push(`${(x(p.t) + slot / 2).toFixed(1)},${y(vals[i]).toFixed(1)}`);
      });
      if (coords.length) group.append(svg("polyline", { points: coords.join(" "), fill: "none" }));
      points.forEach((p, i) => {
        if (vals[i] !== null) {
          group.append(svg("circle", { cx: x(p.t) + slot / 2, cy: y(vals[i]), r: 2.5, "data-t": p.t, "data-value": vals[i] },
            svg("title", null, `${s.label}: ${format(vals[i])}`)));
        }
      });
    }
    root.append(group);
  });
  return { root, tips: { points, series, format, center: (p) => x(p.t) + slot / 2, width: W, top: PAD.top, bottom: PAD.top + plotH } };
}
