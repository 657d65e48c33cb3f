// Sessions and users: one row per id with its totals, sorted by a click on a column head and
// searched by id; a session opens its conversation timeline, a user their page.
import { getJSON } from "./api.js";
import { chart } from "./charts.js";
import { apiParams, filterBar } from "./filters.js";
import { clear, costText, el, fmtAverage, fmtCost, fmtNum, fmtTime, pageLink, scoreAverages, sessionLink, table } from "./dom.js";

function sortHead(key, label) {
  const url = new URLSearchParams(location.search);
  const current = url.get("sort") || "last_seen";
  const order = url.get("order") || "desc";
  const next = new URLSearchParams(url);
  next.delete("cursor");
  next.set("sort", key);
  next.set("order", current === key && order === "desc" ? "asc" : "desc");
  const a = el("a", { class: "sort", "data-sort": key }, label + (current === key ? (order === "desc" ? " ▼" : " ▲") : ""));
  a.href = location.pathname + "?" + next.toString();
  return a;
}

function searchBox(kind) {
  const url = new URLSearchParams(location.search);
  const input = el("input", { type: "search", id: "search", placeholder: `search ${kind === "sessions" ? "session" : "user"} ids`, "aria-label": "search ids" });
  input.value = url.get("search") || "";
  const form = el("form", { class: "filters", id: "search-form" }, input, el("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams(url);
    next.delete("cursor");
    if (input.value.trim()) next.set("search", input.value.trim());
    else next.delete("search");
    location.assign(location.pathname + "?" + next.toString());
  });
  return form;
}

export function userLink(id) {
  return pageLink("/users/" + encodeURIComponent(id), null, id);
}

async function list(main, kind) {
  const title = kind === "sessions" ? "Sessions" : "Users";
  const url = new URLSearchParams(location.search);
  const params = apiParams(location.search, { limit: "50" });
  for (const name of ["cursor", "sort", "order", "search"]) if (url.get(name)) params.set(name, url.get(name));
  const body = el("div", null, el("p", { class: "muted" }, "Loading…"));
  clear(main).append(el("h1", null, title), filterBar(false), searchBox(kind), body);
  let doc;
  try {
    doc = await getJSON(kind, params);
  } catch (err) {
    clear(body).append(el("p", { class: "error" }, String(err.message || err)));
    return;
  }
  const idOf = (r) => (kind === "sessions" ? r.session_id : r.user_id);
  const columns = [
    { head: kind === "sessions" ? "session" : "user", cls: "clip",
      cell: (r) => (kind === "sessions" ? sessionLink(idOf(r)) : userLink(idOf(r))) },
    { head: sortHead("requests", "requests"), cls: "num", cell: (r) => fmtNum(r.requests) },
    { head: sortHead("errors", "errors"), cls: "num", cell: (r) => fmtNum(r.errors) },
    { head: "cancelled", cls: "num", cell: (r) => fmtNum(r.cancelled) },
    { head: sortHead("tokens", "tokens"), cls: "num", cell: (r) => fmtNum(r.total_tokens) },
    { head: sortHead("cost", "cost"), cls: "num", cell: (r) => costText(r.cost_usd, r.unpriced) },
    { head: "scores", cls: "clip scores-cell", cell: (r) => scoreAverages(r.scores) },
    { head: "first seen", cls: "nowrap", cell: (r) => fmtTime(r.first_seen) },
    { head: sortHead("last_seen", "last seen"), cls: "nowrap", cell: (r) => fmtTime(r.last_seen) },
  ];
  const pager = el("nav", { class: "pager" });
  if (doc.next_cursor) {
    const next = new URLSearchParams(url);
    next.set("cursor", doc.next_cursor);
    pager.append(pageLink(location.pathname, next, "next page »"));
  }
  clear(body).append(
    doc.data.length ? table(columns, doc.data, { id: kind + "-table" }) : el("p", { class: "muted" }, url.get("search") ? `No ${kind} match this search in this range.` : `No ${kind} in this range.`),
    pager);
}

export const renderSessions = (main) => list(main, "sessions");
export const renderUsers = (main) => list(main, "users");

/** A user's page: their totals, spend, requests and errors over time, and their sessions -- the
 * overview and the sessions list of the read API, filtered to the user. */
export async function renderUser(main, userId) {
  const params = apiParams(location.search, { user: userId });
  clear(main).append(el("h1", null, "User ", el("code", null, userId)), filterBar(false),
    el("p", null, pageLink("/traces", { user: userId, since: "all" }, "their traces »")));
  const body = el("div", { id: "user-body" }, el("p", { class: "muted" }, "Loading…"));
  main.append(body);
  let doc;
  let sessions;
  try {
    [doc, sessions] = await Promise.all([getJSON("overview", params), getJSON("sessions", new URLSearchParams([...params, ["limit", "50"]]))]);
  } catch (err) {
    clear(body).append(el("p", { class: "error" }, String(err.message || err)));
    return;
  }
  const o = doc.overview;
  const pts = doc.timeseries;
  const b = doc.bucket_seconds;
  const cards = el("div", { class: "cards", id: "user-cards" },
    [["requests", fmtNum(o.requests)], ["errors", fmtNum(o.errors)], ["cost", costText(o.cost_usd, o.unpriced)], ["tokens", fmtNum(o.total_tokens)]]
      .map(([k, v]) => el("div", { class: "card", "data-metric": k }, el("div", { class: "card-label" }, k), el("div", { class: "card-value" }, v))));
  const charts = el("section", { class: "charts" },
    chart({ id: "user-spend", title: "Spend over time", points: pts, bucket: b, format: fmtCost, series: [{ key: "cost_usd", label: "cost (USD)", kind: "bar" }] }),
    chart({ id: "user-requests", title: "Requests and errors over time", points: pts, bucket: b, format: fmtNum,
      series: [{ key: "requests", label: "requests", kind: "bar" }, { key: "errors", label: "errors", kind: "bar" }] }));
  const columns = [
    { head: "session", cls: "clip", cell: (r) => sessionLink(r.session_id) },
    { head: "requests", cls: "num", cell: (r) => fmtNum(r.requests) },
    { head: "errors", cls: "num", cell: (r) => fmtNum(r.errors) },
    { head: "cost", cls: "num", cell: (r) => costText(r.cost_usd, r.unpriced) },
    { head: "scores", cls: "clip scores-cell", cell: (r) => scoreAverages(r.scores) },
    { head: "last seen", cls: "nowrap", cell: (r) => fmtTime(r.last_seen) },
  ];
  // The user's scores: the overview's averages by user, filtered to this user (one group).
  const own = ((doc.score_averages || {}).user || []).filter((r) => r.user === userId);
  const scoreColumns = [
    { head: "score", cls: "clip", cell: (r) => pageLink("/traces", apiParams(location.search, { user: userId, score: r.name }), r.name) },
    { head: "average", cls: "num", cell: (r) => fmtAverage(r.average) },
    { head: "scores", cls: "num", cell: (r) => fmtNum(r.scores) },
  ];
  const scores = el("section", { id: "user-scores" }, el("h2", null, "Scores"),
    own.length ? table(scoreColumns, own) : el("p", { class: "muted" }, "No scores in this range."));
  clear(body).append(cards, charts, scores, el("h2", null, "Sessions"),
    sessions.data.length ? table(columns, sessions.data, { id: "user-sessions" }) : el("p", { class: "muted" }, "No sessions in this range."));
}
