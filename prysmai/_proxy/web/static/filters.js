// The filter bar. Every filter lives in the page's URL (so a view can be shared or bookmarked);
// applying filters navigates to the same page with the new query string.
import { el } from "./dom.js";
import { fromInput, toInput, zoneName } from "./time.js";
import { suggestionPanel, withSuggestions } from "./slice.js";

export const RANGES = [
  ["15m", "15 min"],
  ["1h", "1 hour"],
  ["24h", "24 hours"],
  ["7d", "7 days"],
  ["30d", "30 days"],
  ["all", "all time"],
  ["custom", "custom"],
];
export const DEFAULT_RANGE = "24h";
// The project filter is offered to admin keys only: a project's key reads its own project.
let withProject = false;
export function offerProjectFilter(on) {
  withProject = Boolean(on);
}
const FIELDS = [
  ["project", "project"],
  ["model", "model, or prefix*"],
  ["endpoint", "endpoint"],
  ["user", "user, or prefix*"],
  ["session", "session"],
  ["meta", "metadata key=value (& key=value)"],
  ["q", "words in bodies"],
  ["score", "score name"],
  ["score_min", "score ≥"],
  ["score_max", "score ≤"],
  ["provider", "provider"],
];
// The range filters and the rarer ones, under "more filters": [name, label].
const MORE = [
  ["cost_min", "cost ≥ (USD)"],
  ["cost_max", "cost ≤ (USD)"],
  ["latency_min", "latency ≥ (ms)"],
  ["latency_max", "latency ≤ (ms)"],
  ["ttft_min", "TTFT ≥ (ms)"],
  ["ttft_max", "TTFT ≤ (ms)"],
  ["tokens_min", "tokens ≥"],
  ["tokens_max", "tokens ≤"],
  ["http_status", "HTTP status"],
];
const NUMERIC = new Set(["score_min", "score_max", ...MORE.map(([n]) => n)]);
// The fields whose value may end in "*": a prefix, any case (the API's user~= and model~=).
const PREFIXED = new Set(["model", "user"]);
// Several metadata conditions in the one field, all of which must hold.
const META_JOIN = " & ";
const NAMES = ["until", "project", "model", "model~", "endpoint", "status", "user", "user~", "session", "key", "meta", "q",
  "score", "score_min", "score_max", "provider", "stream", ...MORE.map(([n]) => n)];

/** The URL's parameters as the API's query (range -> since; "all" -> no since), as
 * URLSearchParams: a name may repeat (meta). */
export function apiParams(search, extra) {
  const url = new URLSearchParams(search);
  const out = new URLSearchParams();
  const since = url.get("since") || DEFAULT_RANGE;
  if (since !== "all") out.set("since", since);
  for (const name of NAMES) {
    for (const value of url.getAll(name)) if (value) out.append(name, value);
  }
  for (const [name, value] of Object.entries(extra || {})) out.set(name, value);
  return out;
}

/** The field's text for a filter of the URL: "ali*" for user~=ali, conditions joined by " & ". */
function fieldValue(url, name) {
  if (PREFIXED.has(name) && url.get(name + "~")) return url.get(name + "~") + "*";
  if (name === "meta") return url.getAll("meta").join(META_JOIN);
  return url.get(name) || "";
}

/** A field's text back into the URL's parameters. */
function setField(next, name, text) {
  const value = text.trim();
  if (!value) return;
  if (PREFIXED.has(name) && value.endsWith("*") && value.length > 1) next.set(name + "~", value.slice(0, -1));
  else if (name === "meta") for (const m of value.split(META_JOIN)) { if (m.trim()) next.append("meta", m.trim()); }
  else next.set(name, value);
}

function toLocalInput(value) {
  // An ISO date/time from the URL as the value of a datetime-local input.
  // (In the zone the times are shown in: time.js.)
  const unix = /^\d+(\.\d+)?$/.test(value) ? Number(value) : new Date(value).getTime() / 1000;
  return Number.isNaN(unix) ? "" : toInput(unix);
}

/** The filter form; `full` adds the per-trace filters (the overview takes them too). */
export function filterBar(full) {
  const url = new URLSearchParams(location.search);
  const since = url.get("since") || DEFAULT_RANGE;
  const isCustom = !RANGES.some(([v]) => v === since) || Boolean(url.get("until"));
  const range = el("select", { name: "range", id: "f-range", "aria-label": "time range" },
    RANGES.map(([value, label]) => el("option", { value, selected: (isCustom ? value === "custom" : value === since) }, label)));
  const from = el("input", { type: "datetime-local", id: "f-since", "aria-label": "from" });
  const to = el("input", { type: "datetime-local", id: "f-until", "aria-label": "until" });
  if (isCustom) {
    from.value = toLocalInput(since);
    to.value = url.get("until") ? toLocalInput(url.get("until")) : "";
  }
  const custom = el("span", { class: "custom-range" }, from, " – ", to, " ", el("span", { class: "muted", id: "range-zone" }, zoneName()));
  custom.hidden = !isCustom;
  range.addEventListener("change", () => {
    custom.hidden = range.value !== "custom";
    if (range.value !== "custom") form.requestSubmit();
  });
  const inputs = {};
  const controls = [el("label", { class: "field" }, "Range ", range), custom];
  const panel = suggestionPanel();
  if (full) {
    const status = el("select", { id: "f-status", name: "status", "aria-label": "status" },
      ["", "success", "error", "timeout", "cancelled"].map((s) =>
        el("option", { value: s, selected: (url.get("status") || "") === s }, s || "any status")));
    inputs.status = status;
    controls.push(status);
    const scope = () => apiParams(location.search);
    const field = (name, label) => {
      const input = el("input", NUMERIC.has(name)
        ? { type: "number", step: "any", min: name.startsWith("score") ? null : "0", id: "f-" + name, placeholder: label, "aria-label": label, class: "narrow" }
        : { type: "search", id: "f-" + name, placeholder: label, "aria-label": label });
      input.value = fieldValue(url, name);
      inputs[name] = input;
      return withSuggestions(name, input, scope, panel);
    };
    for (const [name, label] of FIELDS.filter(([n]) => withProject || n !== "project")) controls.push(field(name, label));
    const stream = el("select", { id: "f-stream", name: "stream", "aria-label": "streamed" },
      [["", "streamed or not"], ["true", "streamed"], ["false", "not streamed"]].map(([v, label]) =>
        el("option", { value: v, selected: (url.get("stream") || "") === v }, label)));
    inputs.stream = stream;
    const more = el("details", { class: "more-filters", id: "more-filters", open: ["stream", ...MORE.map(([n]) => n)].some((n) => url.get(n)) },
      el("summary", null, "more filters"), stream, MORE.map(([name, label]) => field(name, label)));
    controls.push(more);
  }
  const form = el("form", { class: "filters", id: "filters" }, controls, el("button", { type: "submit" }, "Apply"), panel);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    if (range.value === "custom") {
      // Unix seconds: unambiguous whatever the browser's or the server's time zone.
      if (fromInput(from.value) !== null) next.set("since", String(fromInput(from.value)));
      if (fromInput(to.value) !== null) next.set("until", String(fromInput(to.value)));
    } else if (range.value !== DEFAULT_RANGE) {
      next.set("since", range.value);
    }
    for (const [name, input] of Object.entries(inputs)) setField(next, name, input.value);
    // Keep the sort of the traces table; a new filter starts from the first page.
    for (const keep of ["sort", "order", "limit", "refresh", "key", "tz"]) if (url.get(keep)) next.set(keep, url.get(keep));
    const query = next.toString();
    location.assign(location.pathname + (query ? "?" + query : ""));
  });
  return form;
}
