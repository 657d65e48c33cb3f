// The overview's charts split by one group: cost, requests, errors and latency over time by model,
// user, project or one metadata key -- the top groups and "other" (GET series). The split lives in
// the URL (?split=model, ?split=meta:team), so the view can be shared; a legend entry is a link
// adding its group to the overview's filters.
import { getJSON } from "./api.js";
import { chart } from "./charts.js";
import { clear, el, fmtCost, fmtMs, fmtNum, fmtTime } from "./dom.js";
import { apiParams } from "./filters.js";
import { filterLink } from "./slice.js";

const SPLITS = [["", "no split"], ["model", "model"], ["user", "user"], ["project", "project"], ["meta", "metadata key"]];
// The filter a group's legend link adds.
const FILTER_OF = { model: "model", user: "user", project: "project" };
const METRICS = [
  ["requests", "Requests", "requests", fmtNum],
  ["errors", "Errors", "errors", fmtNum],
  ["cost", "Cost (priced requests)", "cost_usd", fmtCost],
  ["latency", "Latency p50", "latency_p50", fmtMs],
];
const TOP = "5";

/** The split's controls and the element its charts go in, for the overview. */
export function splitSection() {
  const url = new URLSearchParams(location.search);
  const split = url.get("split") || "";
  const isMeta = split.startsWith("meta:");
  const choice = el("select", { id: "split-by", "aria-label": "split the charts by" },
    SPLITS.map(([value, label]) =>
      el("option", { value, selected: (isMeta ? "meta" : split) === value }, label)));
  const key = el("input", { type: "search", id: "split-key", placeholder: "metadata key", "aria-label": "metadata key" });
  key.value = isMeta ? split.slice(5) : "";
  key.hidden = !isMeta;
  const form = el("form", { class: "filters", id: "split-form" }, el("label", { class: "field" }, "Split charts by ", choice), key,
    el("button", { type: "submit" }, "Split"));
  choice.addEventListener("change", () => {
    key.hidden = choice.value !== "meta";
    if (choice.value !== "meta") form.requestSubmit();
    else key.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams(location.search);
    const value = choice.value === "meta" ? (key.value.trim() ? "meta:" + key.value.trim() : "") : choice.value;
    if (value) next.set("split", value);
    else next.delete("split");
    const query = next.toString();
    location.assign(location.pathname + (query ? "?" + query : ""));
  });
  const body = el("div", { id: "split-body" });
  const section = el("section", { class: "split", id: "split" }, el("h2", null, "Split by group"), form, body);
  return { section, split, body };
}

/** Draw `split`'s charts into `body` (a fresh read each time the overview refreshes): the counts
 * first (a read of the hourly rollup), then latency (its histograms: a slower read). */
export async function drawSplit(split, body) {
  if (!split) return;
  const params = (latency) => apiParams(location.search, { by: split, top: TOP, latency });
  const counts = await getJSON("series", params("false"));
  // A refresh keeps the latency chart drawn until its new one comes.
  const previous = body.querySelector("[data-chart=split-latency]");
  const latencyBox = previous ? previous.closest(".chart-box")
    : el("div", { class: "chart-box", id: "split-latency-box" }, el("p", { class: "muted" }, "latency…"));
  const charts = counts.groups.length ? METRICS.filter(([id]) => id !== "latency").map((m) => splitChart(split, counts, m)) : [];
  const note = counts.complete ? null : el("p", { class: "muted", id: "split-note" },
    `Split over the latest traces of the range only: those since ${fmtTime(counts.scanned_since)}.`);
  const shown = counts.groups.length ? el("section", { class: "charts" }, charts, latencyBox) : el("p", { class: "muted" }, "nothing in this range");
  clear(body).append(...(note ? [note, shown] : [shown]));
  if (!counts.groups.length) return;
  try {
    const full = await getJSON("series", params("true"));
    latencyBox.replaceWith(splitChart(split, full, METRICS.find(([id]) => id === "latency")));
  } catch (err) {
    clear(latencyBox).append(el("p", { class: "error" }, "latency: " + String(err.message || err)));
  }
}

/** One chart of the split: `metric` ([id, title, field, format]) of each group of `doc`. */
function splitChart(split, doc, [id, title, field, format]) {
  const metaKey = split.startsWith("meta:") ? split.slice(5) : null;
  const groups = doc.groups;
  const points = groups[0].timeseries.map((p, i) => {
    const point = { t: p.t };
    groups.forEach((g, gi) => { point["g" + gi] = g.timeseries[i][field]; });
    return point;
  });
  const label = (g) => (g.other ? "other" : g.key === null ? "(none)" : g.key);
  const legend = (g) => {
    if (g.other || g.key === null) return null;
    const name = metaKey === null ? FILTER_OF[split] : "meta";
    const value = metaKey === null ? g.key : metaKey + "=" + g.key;
    return filterLink(name, value, g.key, location.pathname);
  };
  return chart({
    id: "split-" + id, title: `${title} by ${metaKey === null ? split : "metadata " + metaKey}`, points,
    bucket: doc.bucket_seconds, format,
    series: groups.map((g, gi) => ({ key: "g" + gi, label: label(g), kind: "line", legend: legend(g) })),
  });
}
