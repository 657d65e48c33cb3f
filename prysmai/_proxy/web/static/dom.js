// DOM helpers. Captured content is untrusted: it only ever enters the page as text nodes or as
// attribute values set through the DOM, never as HTML. Nothing in these modules uses innerHTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/** el("a", {href: "/x", class: "y"}, "text", child...) -- strings become text nodes. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  if (!attrs) return;
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(child instanceof Node ? child : text(String(child)));
  }
}

// Invisible and direction-changing characters (C0/C1 controls but tab and newline, zero-width
// characters, bidi embeddings, overrides and isolates, BOM): shown as a visible ⟨U+XXXX⟩ mark, so
// a captured "\u202Egnp.exe" cannot pass for "exe.png" and nothing hides in plain sight.
const HIDDEN = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u206F\uFEFF]/g;

// A marker the store's writer put where it redacted something ("[redacted:email]"): shown as a
// marker, not as the captured text it stands for.
const REDACTED = /\[redacted:[a-z][a-z0-9_]{0,31}\]/;
const MARKS = new RegExp(REDACTED.source + "|" + HIDDEN.source, "g");

/** A captured string as text nodes, hidden characters made visible, redaction markers marked. */
export function text(value) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of value.matchAll(MARKS)) {
    if (m.index > last) frag.appendChild(document.createTextNode(value.slice(last, m.index)));
    const mark = document.createElement("span");
    if (m[0].startsWith("[redacted:")) {
      mark.className = "redacted";
      mark.title = "redacted before it was stored";
      mark.textContent = m[0];
    } else {
      const code = m[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
      mark.className = "ctrl";
      mark.title = "hidden character U+" + code;
      mark.textContent = "⟨U+" + code + "⟩";
    }
    frag.appendChild(mark);
    last = m.index + m[0].length;
  }
  if (last < value.length) frag.appendChild(document.createTextNode(value.slice(last)));
  return frag;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** A link to one of our own pages: the path is built here, so a captured value can never become
 * a "javascript:" or off-site URL -- it is only ever a percent-encoded path segment or query. */
export function pageLink(path, params, ...children) {
  const a = el("a", null, ...children);
  const query = params ? new URLSearchParams(params).toString() : "";
  a.href = path + (query ? "?" + query : "");
  return a;
}

export function traceLink(id, ...children) {
  return pageLink("/traces/" + encodeURIComponent(id), null, ...(children.length ? children : [id.slice(0, 10)]));
}

export function sessionLink(id) {
  return pageLink("/sessions/" + encodeURIComponent(id), null, id);
}

export function fmtNum(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
  if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
  return ms.toFixed(ms < 10 ? 2 : 0) + " ms";
}

// Costs are said as prysmai/_proxy/api/costs.py says them (tests/proxy/web/test_costs_contract.py
// runs both on the same values): fixed notation, three significant digits below a dollar, cents
// from a dollar up, never "$0" for a cost that is not zero.
const SMALLEST_COST = 1e-10;

/** Dollars: $0.00000008, $0.0123, $0.50, $1,234.50. */
export function fmtCost(usd) {
  if (usd === null || usd === undefined) return "–";
  if (!Number.isFinite(usd)) return "unknown";
  if (usd < 0) return "-" + fmtCost(-usd);
  if (usd === 0) return "$0.00";
  if (usd < SMALLEST_COST) return "<$0.0000000001";
  if (usd >= 1) {
    const [whole, cents] = usd.toFixed(2).split(".");
    return "$" + whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + "." + cents;
  }
  // The exponent of the shortest form that reads back as this number; toFixed rounds the
  // number's exact value, half up.
  const exponent = Number(usd.toExponential().split("e")[1]);
  let text = usd.toFixed(2 - exponent);
  while (text.endsWith("0") && text.split(".")[1].length > 2) text = text.slice(0, -1);
  return "$" + text;
}

/** A trace's cost status: "priced", "unpriced" (no price for its model) or "no_usage". */
export function costStatus(t) {
  if (t.cost_usd !== null && t.cost_usd !== undefined) return "priced";
  return t.total_tokens !== null && t.total_tokens !== undefined ? "unpriced" : "no_usage";
}

/** One trace's cost: dollars, "unpriced" or "no usage". */
export function traceCost(t) {
  const status = costStatus(t);
  if (status === "priced") return fmtCost(t.cost_usd);
  return status === "unpriced" ? "unpriced" : "no usage";
}

/** A sum of costs: a sum over priced requests is never presented as the total. */
export function costText(usd, unpriced) {
  if (usd === null || usd === undefined) return unpriced ? "unknown (" + fmtNum(unpriced) + " unpriced)" : "no usage";
  return fmtCost(usd) + (unpriced ? " + " + fmtNum(unpriced) + " unpriced" : "");
}

export function fmtPct(x) {
  return x === null || x === undefined ? "–" : (x * 100).toFixed(x && x < 0.01 ? 2 : 1) + " %";
}

// Times (zoned, 24-hour) are time.js's; re-exported for the pages that format everything from here.
export { fmtTime } from "./time.js";

// Cancelled (the client went away first) is not an error: a colour of its own.
const BADGES = { success: "ok", cancelled: "cancelled" };

export function statusBadge(status, httpStatus) {
  const label = httpStatus ? `${status} ${httpStatus}` : String(status);
  return el("span", { class: "badge badge-" + (BADGES[status] || "bad"), "data-status": status }, label);
}

/** A definition list from [label, value-node-or-text] pairs (null values skipped). */
export function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(el("dt", null, label), el("dd", null, value));
  }
  return dl;
}

export function table(columns, rows, attrs) {
  const head = el("tr", null, columns.map((c) => el("th", c.cls === "num" ? { class: "num" } : null, c.head)));
  const body = el("tbody");
  for (const row of rows) {
    body.append(el("tr", null, columns.map((c) => el("td", c.cls ? { class: c.cls } : null, c.cell(row)))));
  }
  return el("div", { class: "table-wrap" }, el("table", attrs, el("thead", null, head), body));
}

/** A score's value as text: "true"/"false", a number as given, a category as its text. */
export function scoreValue(s) {
  if (s.type === "boolean") return s.value ? "👍 true" : "👎 false";
  if (s.type === "number") return String(Number(s.value));
  return String(s.value);
}

/** An average of scores as text: up to 3 decimals (a boolean's: its share of true). */
export function fmtAverage(x) {
  return (Math.round(x * 1000) / 1000).toString();
}

/** The scores of a group of traces (a session, a user) in one cell: "name: average (count)" chips,
 * as text; a group without any shows "–". */
export function scoreAverages(scores) {
  if (!scores || !scores.length) return "–";
  return el("span", { class: "scores" }, scores.map((s) =>
    el("span", { class: "chip", "data-score": s.name, title: `${s.name}: average of ${s.scores} score(s)` },
      s.name + ": ", fmtAverage(s.average), el("span", { class: "muted" }, ` (${fmtNum(s.scores)})`))));
}

/** A trace's scores in one cell: "name: value" chips (text only; a title holds the comment). */
export function scoreChips(scores) {
  if (!scores || !scores.length) return "–";
  return el("span", { class: "scores" }, scores.map((s) =>
    el("span", { class: "chip", "data-score": s.name, title: s.comment || null }, s.name + ": ", scoreValue(s))));
}
