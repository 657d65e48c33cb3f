// Overview: totals, time series and breakdowns for a time range; refreshes itself until paused.
import { getJSON } from "./api.js";
import { chart } from "./charts.js";
import { apiParams, filterBar } from "./filters.js";
import { fmtClock } from "./time.js";
import { welcomeIfEmpty } from "./welcome.js";
import { drawSplit, splitSection } from "./groups.js";
import { clear, costText, el, fmtAverage, fmtCost, fmtMs, fmtNum, fmtPct, pageLink, sessionLink, table } from "./dom.js";

const AVERAGE_TITLES = { model: "Average score by model", user: "Average score by user", project: "Average score by project" };
// The traces filter each group's link adds.
const AVERAGE_FILTER = { model: "model", user: "user", project: "project" };

/** The average of each score name (a boolean's: its share of true) by model, user or project. */
function averages(by, rows) {
  const keyCell = (r) => (r[by] === null || r[by] === undefined
    ? el("span", { class: "muted" }, "(none)")
    : pageLink("/traces", apiParams(location.search, { [AVERAGE_FILTER[by]]: r[by], score: r.name }), r[by]));
  const columns = [
    { head: by, cell: keyCell, cls: "clip" },
    { head: "score", cell: (r) => r.name, cls: "clip" },
    { head: "average", cell: (r) => fmtAverage(r.average), cls: "num" },
    { head: "scores", cell: (r) => fmtNum(r.scores), cls: "num" },
  ];
  return el("section", { class: "breakdown", "data-averages": by },
    el("h2", null, AVERAGE_TITLES[by]),
    rows.length ? table(columns, rows) : el("p", { class: "muted" }, "no scores in this range"));
}

// What a cost total leaves out, each for what it is: requests of models without a price, and
// requests that reported no usage (failed or cancelled: nothing to price).
function costNotes(o) {
  const notes = [];
  if (o.unpriced) notes.push(fmtNum(o.unpriced) + " request(s) of models without a price");
  if (o.no_usage) notes.push(fmtNum(o.no_usage) + " reported no usage");
  return notes.length ? notes.join(" · ") : "every request priced";
}

// Every 10 s by default; ?refresh=N (seconds, at least 2) in the URL changes it.
const REFRESH_MS = Math.max(2, Number(new URLSearchParams(location.search).get("refresh")) || 10) * 1000;

function card(id, label, value, sub) {
  return el("div", { class: "card", "data-metric": id }, el("div", { class: "card-label" }, label),
    el("div", { class: "card-value" }, value), sub ? el("div", { class: "card-sub" }, sub) : null);
}

function cards(o) {
  return el("section", { class: "cards", id: "cards" },
    card("requests", "Requests", fmtNum(o.requests)),
    card("error_rate", "Error rate", fmtPct(o.error_rate),
      `${fmtNum(o.errors)} errors · ${fmtNum(o.cancelled)} cancelled`),
    card("total_tokens", "Tokens", fmtNum(o.total_tokens),
      `${fmtNum(o.prompt_tokens)} in · ${fmtNum(o.completion_tokens)} out`),
    card("cost_usd", "Cost", costText(o.cost_usd, o.unpriced), costNotes(o)),
    card("latency", "Latency p50 / p95 / p99",
      `${fmtMs(o.latency_ms.p50)} / ${fmtMs(o.latency_ms.p95)} / ${fmtMs(o.latency_ms.p99)}`),
    card("ttft", "TTFT p50 / p95", `${fmtMs(o.ttft_ms.p50)} / ${fmtMs(o.ttft_ms.p95)}`, "streamed requests"));
}

const BREAKDOWN_TITLES = { project: "By project", model: "By model", endpoint: "By endpoint", user_id: "By user", session_id: "By session" };
const FILTER_OF = { project: "project", model: "model", endpoint: "endpoint", user_id: "user", session_id: "session" };

function breakdown(by, rows) {
  const keyCell = (r) => {
    if (r.key === null || r.key === undefined) return el("span", { class: "muted" }, "(none)");
    if (by === "session_id") return sessionLink(r.key);
    return pageLink("/traces", apiParams(location.search, { [FILTER_OF[by]]: r.key }), r.key);
  };
  const columns = [
    { head: by.replace("_id", ""), cell: keyCell, cls: "clip" },
    { head: "requests", cell: (r) => fmtNum(r.requests), cls: "num" },
    { head: "errors", cell: (r) => fmtNum(r.errors), cls: "num" },
    { head: "cancelled", cell: (r) => fmtNum(r.cancelled), cls: "num" },
    { head: "tokens", cell: (r) => fmtNum(r.total_tokens), cls: "num" },
    { head: "cost", cell: (r) => costText(r.cost_usd, r.unpriced), cls: "num" },
    { head: "p50", cell: (r) => fmtMs(r.latency_p50), cls: "num" },
    { head: "p95", cell: (r) => fmtMs(r.latency_p95), cls: "num" },
  ];
  return el("section", { class: "breakdown", "data-breakdown": by },
    el("h2", null, BREAKDOWN_TITLES[by]),
    rows.length ? table(columns, rows) : el("p", { class: "muted" }, "nothing in this range"));
}

export async function render(main, me) {
  let timer = null;
  let paused = false;
  const body = el("div", { id: "overview-body" });
  const pause = el("button", { type: "button", id: "pause", class: "secondary" }, "Pause auto-refresh");
  const stamp = el("span", { class: "muted", id: "refreshed" });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume auto-refresh" : "Pause auto-refresh";
    pause.setAttribute("aria-pressed", String(paused));
    if (paused) clearTimeout(timer);
    else load();
  });
  const split = splitSection();
  clear(main).append(el("h1", null, "Overview"), filterBar(true), el("div", { class: "toolbar" }, pause, stamp), body);

  async function load() {
    clearTimeout(timer);
    try {
      const doc = await getJSON("overview", apiParams(location.search));
      await draw(doc);
      await drawSplit(split.split, split.body).catch((err) => clear(split.body).append(el("p", { class: "error" }, String(err.message || err))));
      stamp.textContent = "updated " + fmtClock(Date.now() / 1000);
    } catch (err) {
      clear(body).append(el("p", { class: "error" }, String(err.message || err)));
    }
    if (!paused) timer = setTimeout(tick, REFRESH_MS);
  }

  // A tab in the background does not query the store; it catches up when shown again.
  function tick() {
    if (document.visibilityState === "hidden") {
      document.addEventListener("visibilitychange", () => { if (!paused) load(); }, { once: true });
    } else {
      load();
    }
  }

  async function draw(doc) {
    const pts = doc.timeseries;
    const b = doc.bucket_seconds;
    const charts = el("section", { class: "charts" },
      chart({ id: "requests", title: "Requests, errors and cancellations per " + bucketName(b), points: pts, bucket: b, format: fmtNum,
        series: [{ key: "requests", label: "requests", kind: "bar" }, { key: "errors", label: "errors", kind: "bar" },
          { key: "cancelled", label: "cancelled", kind: "bar" }] }),
      chart({ id: "latency", title: "Latency percentiles", points: pts, bucket: b, format: fmtMs,
        series: [{ key: "latency_p50", label: "p50", kind: "line" }, { key: "latency_p95", label: "p95", kind: "line" },
          { key: "latency_p99", label: "p99", kind: "line" }] }),
      chart({ id: "cost", title: "Cost per " + bucketName(b) + " (priced requests)", points: pts, bucket: b, format: fmtCost,
        series: [{ key: "cost_usd", label: "cost (USD)", kind: "bar" }] }));
    const breakdowns = el("div", { class: "breakdowns" },
      Object.keys(BREAKDOWN_TITLES).filter((by) => by in doc.breakdowns).map((by) => breakdown(by, doc.breakdowns[by])));
    const scored = doc.score_averages || {};
    const scores = el("div", { class: "breakdowns", id: "score-averages" },
      Object.keys(AVERAGE_TITLES).filter((by) => by in scored).map((by) => averages(by, scored[by])));
    // Nothing in the range: if nothing at all was ever stored, how to send the first trace.
    const welcome = doc.overview.requests ? null : await welcomeIfEmpty(me);
    clear(body).append(welcome || "", cards(doc.overview), charts, split.section, breakdowns, scores);
  }

  await load();
}

function bucketName(seconds) {
  if (seconds % 86400 === 0) return seconds === 86400 ? "day" : seconds / 86400 + " days";
  if (seconds % 3600 === 0) return seconds === 3600 ? "hour" : seconds / 3600 + " hours";
  if (seconds % 60 === 0) return seconds === 60 ? "minute" : seconds / 60 + " minutes";
  return seconds + " s";
}
