// Budgets: each project's spend this month against its monthly budget, its last minute against its
// request rate, the days left at the month's pace, and the 429s its limits gave over time (the
// read API's "budgets"). A project without limits is shown as such. Project names come from the
// config (or the store): they enter the page as text and attribute values only.
import { getJSON } from "./api.js";
import { chart } from "./charts.js";
import { clear, el, fmtCost, fmtNum, fmtPct, fmtTime, table } from "./dom.js";

function spendCell(p) {
  const s = p.spend;
  if (s.budget_usd === null) return el("span", { "data-field": "spend" }, fmtCost(s.month_usd));
  return el("span", { "data-field": "spend" },
    el("meter", { min: 0, max: 1, low: 0.8, high: 0.95, optimum: 0, value: Math.min(1, s.used), title: fmtPct(s.used) }),
    " " + fmtCost(s.month_usd) + " of " + fmtCost(s.budget_usd));
}

function daysLeftCell(p, month_end) {
  const s = p.spend;
  let text;
  if (s.budget_usd === null) text = "–";
  else if (s.exhausted) text = "exhausted";
  else if (s.days_left === null) text = "no spend yet";
  else text = s.days_left.toFixed(1) + " days";
  // Whether it lasts the month at this pace, or the day it runs out.
  let title = null;
  if (s.runs_out_at !== null) title = s.runs_out_at >= month_end ? "lasts the month at this pace" : "runs out about " + fmtTime(s.runs_out_at);
  return el("span", { "data-field": "days_left", class: s.exhausted ? "error-text" : null, title }, text);
}

function rateCell(p) {
  const r = p.rate;
  const limit = r.requests_per_minute === null ? "" : " of " + fmtNum(r.requests_per_minute) + "/min";
  return el("span", { "data-field": "rate" }, fmtNum(r.last_minute) + limit);
}

function limitsCell(p) {
  if (!p.limited) return el("span", { class: "muted", "data-field": "limits" }, p.configured ? "no limits" : "not in the config");
  const l = [];
  if (p.spend.budget_usd !== null) l.push(fmtCost(p.spend.budget_usd) + "/month");
  const rpm = p.rate.requests_per_minute;
  if (rpm !== null) l.push(fmtNum(rpm) + (rpm === 1 ? " request/min" : " requests/min"));
  return el("span", { "data-field": "limits" }, l.join(" · "));
}

function refusedCell(p) {
  const r = p.refusals;
  return el("span", { "data-field": "refusals", "data-rate": r.rate, "data-budget": r.budget },
    fmtNum(r.rate) + " rate · " + fmtNum(r.budget) + " budget");
}

function bucketName(seconds) {
  if (seconds % 86400 === 0) return seconds === 86400 ? "day" : seconds / 86400 + " days";
  if (seconds % 3600 === 0) return seconds === 3600 ? "hour" : seconds / 3600 + " hours";
  if (seconds % 60 === 0) return seconds === 60 ? "minute" : seconds / 60 + " minutes";
  return seconds + " s";
}

function draw(body, doc) {
  const month = new Date(doc.month_start * 1000).toISOString().slice(0, 7);
  const columns = [
    { head: "project", cell: (p) => el("span", { "data-field": "project" }, p.project), cls: "clip" },
    { head: "limits", cell: limitsCell },
    { head: "spend this month", cell: spendCell },
    { head: "pace / day", cell: (p) => el("span", { "data-field": "pace" }, fmtCost(p.spend.pace_usd_per_day)), cls: "num" },
    { head: "days left", cell: (p) => daysLeftCell(p, doc.month_end), cls: "num" },
    { head: "last minute", cell: rateCell, cls: "num" },
    { head: "429s (limits)", cell: refusedCell, cls: "num" },
  ];
  const list = table(columns, doc.projects, { id: "budgets" });
  // One row per project, in the API's order: each row says which project it is (for tests and
  // for the eye), as an attribute set through the DOM.
  list.querySelectorAll("tbody tr").forEach((tr, i) => tr.setAttribute("data-project", doc.projects[i].project));
  const charts = el("section", { class: "charts", id: "refusal-charts" },
    doc.projects.filter((p) => p.limited || p.refusals.rate || p.refusals.budget).map((p) => {
      const fig = chart({
        id: "refusals", title: "429s of " + p.project + "'s limits per " + bucketName(doc.bucket_seconds),
        points: p.refusals.series, bucket: doc.bucket_seconds, format: fmtNum,
        series: [{ key: "rate", label: "requests per minute", kind: "bar" }, { key: "budget", label: "monthly budget", kind: "bar" }],
      });
      fig.setAttribute("data-project", p.project);
      return fig;
    }));
  clear(body).append(
    el("p", { class: "muted", id: "budget-month" },
      `Month ${month} (UTC), as of ${fmtTime(doc.as_of)}. The pace is this month's average spend per day; ` +
      "the days left are what the rest of the budget lasts at it. The last minute counts the requests the limits let through."),
    doc.projects.length ? list : el("p", { class: "muted" }, "No project yet."),
    el("h2", null, "429s the limits gave" + (doc.since === doc.month_start ? " this month" : "")),
    charts.childNodes.length ? charts : el("p", { class: "muted" }, "No project has limits."));
}

export async function render(main) {
  const body = el("div", { id: "budgets-body" });
  clear(main).append(el("h1", null, "Budgets"), body);
  const params = {};
  const url = new URLSearchParams(location.search);
  for (const name of ["since", "until", "project"]) if (url.get(name)) params[name] = url.get(name);
  try {
    draw(body, await getJSON("budgets", params));
  } catch (err) {
    clear(body).append(el("p", { class: "error" }, String(err.message || err)));
  }
}
