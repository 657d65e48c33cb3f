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

export function fmtCost(usd) {
  if (usd === null || usd === undefined) return "unpriced";
  if (usd === 0) return "$0";
  if (usd < 0.01) return "$" + usd.toPrecision(3);
  return "$" + usd.toFixed(4);
}

/** Cost with the unpriced count: a sum over priced requests is never presented as the total. */
export function costText(usd, unpriced, requests) {
  if (requests && unpriced >= requests) return "unknown (" + fmtNum(unpriced) + " unpriced)";
  const base = fmtCost(usd || 0);
  return unpriced ? base + " + " + fmtNum(unpriced) + " unpriced" : base;
}

export function fmtPct(x) {
  return x === null || x === undefined ? "–" : (x * 100).toFixed(x && x < 0.01 ? 2 : 1) + " %";
}

export function fmtTime(unix) {
  if (unix === null || unix === undefined) return "–";
  const d = new Date(unix * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function statusBadge(status, httpStatus) {
  const label = httpStatus ? `${status} ${httpStatus}` : String(status);
  return el("span", { class: "badge badge-" + (status === "success" ? "ok" : "bad") }, label);
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
