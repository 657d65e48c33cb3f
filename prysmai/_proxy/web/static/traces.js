// Traces: newest first, filtered and sorted through the URL, paginated by cursor. Each page is a
// URL of its own: `cursor` (where it starts; none on the first page) and `prev`, the cursors of
// the pages before it (one parameter each, oldest first, "" for the first page), so "previous
// page" returns exactly to the page before, and the browser's back button does too.
import { getJSON } from "./api.js";
import { apiParams, DEFAULT_RANGE, filterBar } from "./filters.js";
import { welcomeIfEmpty } from "./welcome.js";
import { clear, el, fmtMs, fmtNum, fmtTime, pageLink, scoreChips, statusBadge, table, traceCost, traceLink } from "./dom.js";
import { filterLink } from "./slice.js";

// A page's own parameters (not the list's): a new order, size or filter starts at the first page.
const PAGE_PARAMS = ["cursor", "prev"];
// Pages "previous page" can go back through; a longer walk keeps the latest (the URL stays short),
// and "first page" is always there.
const MAX_BACK = 50;

/** The pager: "first page", "previous page" (the page before, from the `prev` stack) and "next
 * page" (this page's cursor pushed on the stack). */
function pager(url, nextCursor) {
  const nav = el("nav", { class: "pager", id: "traces-pager", "aria-label": "pages" });
  const cursor = url.get("cursor") || "";
  const stack = url.getAll("prev");
  const at = (start, before) => {
    const q = new URLSearchParams(url);
    for (const drop of PAGE_PARAMS) q.delete(drop);
    if (start) q.set("cursor", start);
    for (const c of before) q.append("prev", c);
    return q;
  };
  const link = (query, label, id) => {
    const a = pageLink("/traces", query, label);
    a.id = id;
    return a;
  };
  if (cursor) nav.append(link(at("", []), "« first page", "first-page"));
  if (cursor && stack.length) {
    nav.append(link(at(stack[stack.length - 1], stack.slice(0, -1)), "‹ previous page", "previous-page"));
  }
  if (nextCursor) nav.append(link(at(nextCursor, [...stack, cursor].slice(-MAX_BACK)), "next page »", "next-page"));
  return nav;
}

function sortHead(key, label) {
  const url = new URLSearchParams(location.search);
  const current = url.get("sort") || "time";
  const order = url.get("order") || "desc";
  const next = new URLSearchParams(url);
  for (const drop of PAGE_PARAMS) next.delete(drop);
  next.set("sort", key);
  next.set("order", current === key && order === "desc" ? "asc" : "desc");
  const arrow = current === key ? (order === "desc" ? " ▼" : " ▲") : "";
  const a = el("a", { class: "sort", "data-sort": key }, label + arrow);
  a.href = "/traces?" + next.toString();
  return a;
}

function preview(text, kind) {
  if (text === null || text === undefined || text === "") return el("span", { class: "muted", "data-preview": kind }, "–");
  return el("span", { class: kind === "error" ? "preview error-text" : "preview", "data-preview": kind, title: text }, text);
}

/** The page-size choice: a new size starts from the first page. */
function pageSize(url) {
  const current = url.get("limit") || "50";
  const sizes = ["25", "50", "100", "200", "500"];
  if (!sizes.includes(current)) sizes.push(current);
  const select = el("select", { id: "page-size", "aria-label": "traces per page" },
    sizes.map((n) => el("option", { value: n, selected: n === current }, n + " per page")));
  select.addEventListener("change", () => {
    const next = new URLSearchParams(url);
    for (const drop of PAGE_PARAMS) next.delete(drop);
    next.set("limit", select.value);
    location.assign("/traces?" + next.toString());
  });
  return select;
}

/** `listQuery`: the list's filters and order, carried to the trace page (its previous / next). */
export function traceColumns(withSort, withProject, listQuery) {
  const head = (key, label) => (withSort ? sortHead(key, label) : label);
  const open = (r) => (listQuery ? pageLink("/traces/" + encodeURIComponent(r.id), listQuery, fmtTime(r.created_at)) : traceLink(r.id, fmtTime(r.created_at)));
  return [
    { head: head("time", "time"), cell: open, cls: "nowrap" },
    // Only an admin key reads several projects; a project's key sees its own only.
    ...(withProject ? [{ head: "project", cell: (r) => (r.project ? filterLink("project", r.project) : "–"), cls: "clip" }] : []),
    // A click on a value adds it to the list's filters (the session's timeline is one more link).
    { head: "model", cell: (r) => (r.model ? filterLink("model", r.model) : "–"), cls: "clip" },
    { head: "endpoint", cell: (r) => [r.endpoint, r.stream ? el("span", { class: "stream-mark", "data-stream": "1", title: "streamed" }, "stream") : null], cls: "clip" },
    { head: "status", cell: (r) => statusBadge(r.status, r.http_status) },
    // One line each, as text: the start of the last user message, and of the answer -- or, for a
    // failure, its error message.
    { head: "asked", cell: (r) => preview(r.prompt_preview, "prompt"), cls: "clip preview" },
    { head: "answer", cell: (r) => (r.error && r.status !== "success" ? preview(r.error, "error") : preview(r.answer_preview, "answer")), cls: "clip preview" },
    { head: head("latency", "latency"), cell: (r) => fmtMs(r.latency_ms), cls: "num" },
    { head: head("ttft", "TTFT"), cell: (r) => fmtMs(r.ttft_ms), cls: "num" },
    { head: head("tokens", "tokens"), cell: (r) => fmtNum(r.total_tokens), cls: "num" },
    { head: head("cost", "cost"), cell: (r) => traceCost(r), cls: "num" },
    { head: "user", cell: (r) => (r.user_id ? filterLink("user", r.user_id) : "–"), cls: "clip" },
    { head: "session", cell: (r) => (r.session_id
      ? [filterLink("session", r.session_id), " ", pageLink("/sessions/" + encodeURIComponent(r.session_id), null, "↗")]
      : "–"), cls: "clip" },
    { head: "scores", cell: (r) => scoreChips(r.scores), cls: "clip scores-cell" },
  ];
}

/** Links that download every trace of these filters, in this order (not one page): the read
 * API's format=csv|jsonl, with the bodies when asked. A plain link: the browser downloads it. */
function exportBar(url) {
  const bodies = el("input", { type: "checkbox", id: "export-bodies" });
  const links = [["csv", "CSV"], ["jsonl", "JSON Lines"]].map(([format, label]) =>
    el("a", { class: "button", id: "export-" + format, download: true }, label));
  const update = () => {
    for (const a of links) {
      const params = apiParams(location.search, {
        sort: url.get("sort") || "time", order: url.get("order") || "desc", format: a.id.slice("export-".length),
      });
      if (bodies.checked) params.set("fields", "all");
      a.href = "/ui/api/traces?" + params.toString();
    }
  };
  bodies.addEventListener("change", update);
  update();
  return el("p", { class: "export-bar", id: "export-bar" },
    "Export every match: ", links[0], " ", links[1], " ", el("label", null, bodies, " with bodies"));
}

/** The list's filters and order (not its page), as the trace page takes them. */
function listQuery(url) {
  const out = new URLSearchParams(url);
  for (const drop of PAGE_PARAMS) out.delete(drop);
  out.delete("limit");
  if (!out.get("since")) out.set("since", DEFAULT_RANGE);
  out.set("list", "1");
  return out;
}

export async function render(main, me) {
  const url = new URLSearchParams(location.search);
  const params = apiParams(location.search, {
    sort: url.get("sort") || "time", order: url.get("order") || "desc", limit: url.get("limit") || "50",
  });
  if (url.get("cursor")) params.set("cursor", url.get("cursor"));
  const body = el("div", { id: "traces-body" }, el("p", { class: "muted" }, "Loading…"));
  clear(main).append(el("h1", null, "Traces"), filterBar(true), exportBar(url), body);
  let doc;
  try {
    doc = await getJSON("traces", params);
  } catch (err) {
    clear(body).append(el("p", { class: "error" }, String(err.message || err)));
    return;
  }
  const rows = doc.data;
  const total = doc.total === null ? "many traces match (counting them took too long)"
    : doc.total_exact ? `${doc.total.toLocaleString("en-US")} trace(s) match` : `more than ${doc.total.toLocaleString("en-US")} traces match`;
  clear(body).append(
    el("p", { class: "list-head" }, el("span", { id: "traces-total", "data-total": doc.total, "data-exact": String(doc.total_exact) }, total), " ", pageSize(url)),
    rows.length ? table(traceColumns(true, Boolean(me && me.admin), listQuery(url)), rows, { id: "traces-table" })
      : (await welcomeIfEmpty(me)) || el("p", { class: "muted" }, "No traces match these filters."),
    el("p", { class: "muted" }, `${rows.length} trace(s) on this page`),
    pager(url, doc.next_cursor));
}
