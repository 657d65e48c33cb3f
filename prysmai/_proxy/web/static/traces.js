// Traces: newest first, filtered and sorted through the URL, paginated by cursor.
import { getJSON } from "./api.js";
import { apiParams, filterBar } from "./filters.js";
import { clear, el, fmtMs, fmtNum, fmtTime, pageLink, scoreChips, sessionLink, statusBadge, table, traceCost, traceLink } from "./dom.js";

function sortHead(key, label) {
  const url = new URLSearchParams(location.search);
  const current = url.get("sort") || "time";
  const order = url.get("order") || "desc";
  const next = new URLSearchParams(url);
  next.delete("cursor");
  next.set("sort", key);
  next.set("order", current === key && order === "desc" ? "asc" : "desc");
  const arrow = current === key ? (order === "desc" ? " ▼" : " ▲") : "";
  const a = el("a", { class: "sort", "data-sort": key }, label + arrow);
  a.href = "/traces?" + next.toString();
  return a;
}

export function traceColumns(withSort, withProject) {
  const head = (key, label) => (withSort ? sortHead(key, label) : label);
  return [
    { head: head("time", "time"), cell: (r) => traceLink(r.id, fmtTime(r.created_at)), cls: "nowrap" },
    // Only an admin key reads several projects; a project's key sees its own only.
    ...(withProject ? [{ head: "project", cell: (r) => r.project ?? "–", cls: "clip" }] : []),
    { head: "model", cell: (r) => r.model ?? "–", cls: "clip" },
    { head: "endpoint", cell: (r) => r.endpoint, cls: "clip" },
    { head: "status", cell: (r) => statusBadge(r.status, r.http_status) },
    { head: head("latency", "latency"), cell: (r) => fmtMs(r.latency_ms), cls: "num" },
    { head: head("ttft", "TTFT"), cell: (r) => fmtMs(r.ttft_ms), cls: "num" },
    { head: head("tokens", "tokens"), cell: (r) => fmtNum(r.total_tokens), cls: "num" },
    { head: head("cost", "cost"), cell: (r) => traceCost(r), cls: "num" },
    { head: "user", cell: (r) => (r.user_id ? pageLink("/traces", { user: r.user_id, since: "all" }, r.user_id) : "–"), cls: "clip" },
    { head: "session", cell: (r) => (r.session_id ? sessionLink(r.session_id) : "–"), cls: "clip" },
    { head: "scores", cell: (r) => scoreChips(r.scores), cls: "clip scores-cell" },
  ];
}

export async function render(main, me) {
  const url = new URLSearchParams(location.search);
  const params = apiParams(location.search, {
    sort: url.get("sort") || "time", order: url.get("order") || "desc", limit: url.get("limit") || "50",
  });
  if (url.get("cursor")) params.set("cursor", url.get("cursor"));
  const body = el("div", { id: "traces-body" }, el("p", { class: "muted" }, "Loading…"));
  clear(main).append(el("h1", null, "Traces"), filterBar(true), body);
  let doc;
  try {
    doc = await getJSON("traces", params);
  } catch (err) {
    clear(body).append(el("p", { class: "error" }, String(err.message || err)));
    return;
  }
  const rows = doc.data;
  const pager = el("nav", { class: "pager" });
  if (url.get("cursor")) {
    const first = new URLSearchParams(url);
    first.delete("cursor");
    pager.append(pageLink("/traces", first, "« first page"));
  }
  if (doc.next_cursor) {
    const next = new URLSearchParams(url);
    next.set("cursor", doc.next_cursor);
    const a = pageLink("/traces", next, "next page »");
    a.id = "next-page";
    pager.append(a);
  }
  clear(body).append(
    rows.length ? table(traceColumns(true, Boolean(me && me.admin)), rows, { id: "traces-table" }) : el("p", { class: "muted" }, "No traces match these filters."),
    el("p", { class: "muted" }, `${rows.length} trace(s) on this page`),
    pager);
}
