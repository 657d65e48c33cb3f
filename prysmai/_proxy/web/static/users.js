// Sessions and users: one row per id with its totals; a session opens its conversation timeline.
import { getJSON } from "./api.js";
import { apiParams, filterBar } from "./filters.js";
import { clear, costText, el, fmtNum, fmtTime, pageLink, sessionLink, table } from "./dom.js";

async function list(main, kind) {
  const title = kind === "sessions" ? "Sessions" : "Users";
  const url = new URLSearchParams(location.search);
  const params = apiParams(location.search, { limit: "50" });
  if (url.get("cursor")) params.set("cursor", url.get("cursor"));
  const body = el("div", null, el("p", { class: "muted" }, "Loading…"));
  clear(main).append(el("h1", null, title), filterBar(false), body);
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
      cell: (r) => (kind === "sessions" ? sessionLink(idOf(r)) : pageLink("/traces", { user: idOf(r), since: "all" }, idOf(r))) },
    { head: "requests", cls: "num", cell: (r) => fmtNum(r.requests) },
    { head: "errors", cls: "num", cell: (r) => fmtNum(r.errors) },
    { head: "cancelled", cls: "num", cell: (r) => fmtNum(r.cancelled) },
    { head: "tokens", cls: "num", cell: (r) => fmtNum(r.total_tokens) },
    { head: "cost", cls: "num", cell: (r) => costText(r.cost_usd, r.unpriced) },
    { head: "first seen", cls: "nowrap", cell: (r) => fmtTime(r.first_seen) },
    { head: "last seen", cls: "nowrap", cell: (r) => fmtTime(r.last_seen) },
  ];
  const pager = el("nav", { class: "pager" });
  if (doc.next_cursor) {
    const next = new URLSearchParams(url);
    next.set("cursor", doc.next_cursor);
    pager.append(pageLink(location.pathname, next, "next page »"));
  }
  clear(body).append(
    doc.data.length ? table(columns, doc.data, { id: kind + "-table" }) : el("p", { class: "muted" }, `No ${kind} in this range.`),
    pager);
}

export const renderSessions = (main) => list(main, "sessions");
export const renderUsers = (main) => list(main, "users");
