// Slicing: click a captured value to filter by it, and the filter inputs' value suggestions.
//
// Click to filter: a model, user, session, project, provider or metadata member shown on a page is
// a link that adds it to the filters of the view it is on (they live in the URL, so the new view
// can be shared too). Suggestions: the values the store has seen in the page's range (and the
// key's project), read from GET suggest; shown as buttons below the filters, as text.
import { getJSON } from "./api.js";
import { clear, el, fmtNum, pageLink } from "./dom.js";

// Parameters that belong to one page of a list or to one trace, not to the slice.
const NOT_FILTERS = ["cursor", "prev", "trace", "list"];

/** The query `search` with `name` = `value` added as a filter (a metadata condition "key=value" is
 * added to the others: they all must hold). */
export function withFilter(search, name, value) {
  const next = new URLSearchParams(search);
  for (const drop of NOT_FILTERS) next.delete(drop);
  if (name === "meta") {
    if (!next.getAll("meta").includes(value)) next.append("meta", value);
  } else {
    next.set(name, value);
    next.delete(name + "~");  // an exact value replaces a prefix of the same field
  }
  return next;
}

/** A link adding `name` = `value` to this view's filters (or to `search`'s), on `path` (the traces
 * list by default). */
export function filterLink(name, value, label, path, search) {
  const query = withFilter(search === undefined ? location.search : search, name, value);
  const a = pageLink(path || "/traces", query, label === undefined ? value : label);
  a.className = "filter-link";
  a.dataset.filter = name;
  a.title = "filter by this " + (name === "meta" ? "metadata value" : name);
  return a;
}

/** A metadata member as a metadata filter compares it (text; true/false are 1/0), or null when
 * no filter can match it (a fraction, an object, a list, null): what GET suggest offers too. */
export function metaText(value) {
  if (typeof value === "boolean") return value ? "1" : "0";
  if (typeof value === "string") return value;
  if (typeof value === "number" && Number.isInteger(value)) return String(value);
  return null;
}

// -- suggestions -----------------------------------------------------------------------------------
// The filter inputs that get suggestions -> the field GET suggest names.
const SUGGESTED = { model: "model", provider: "provider", user: "user", endpoint: "endpoint", project: "project", meta: "meta" };
const SHOWN = 12;
const META_JOIN = " & ";

/** Where the filter inputs' suggestions show: a row of its own below the filters (in the flow,
 * so it never covers a control, and hiding it moves nothing above it). */
export function suggestionPanel() {
  return el("div", { class: "suggest-panel", id: "suggestions" });
}

/** `input` (the filter field `name`), its suggestions shown in `panel` while it has the focus;
 * `scope()`: the page's range and project as API parameters. Returns the input. */
export function withSuggestions(name, input, scope, panel) {
  if (!(name in SUGGESTED)) return input;
  const list = el("ul", { class: "suggest", role: "listbox", id: "suggest-" + name, "aria-label": name + " suggestions" });
  list.hidden = true;
  panel.append(list);
  input.setAttribute("autocomplete", "off");
  input.setAttribute("aria-controls", list.id);
  const cache = new Map();
  let shown = 0;

  function ask(params) {
    const key = new URLSearchParams(params).toString();
    if (!cache.has(key)) {
      const query = scope();
      for (const [k, v] of Object.entries(params)) query.set(k, v);
      query.set("limit", "100");
      cache.set(key, getJSON("suggest", query).then((doc) => doc.values, () => []));
    }
    return cache.get(key);
  }

  // What to suggest for the text typed so far: [values, prefix typed, how a choice is written back].
  async function options() {
    const text = input.value;
    if (name !== "meta") {
      const values = await ask({ field: SUGGESTED[name] });
      return [values, text.replace(/\*$/, ""), (v) => v];
    }
    const cut = text.lastIndexOf(META_JOIN);
    const before = cut < 0 ? "" : text.slice(0, cut + META_JOIN.length);
    const current = text.slice(before.length);
    const eq = current.indexOf("=");
    if (eq < 0) {
      const values = await ask({ field: "meta_key" });
      return [values, current, (v) => before + v + "="];
    }
    const key = current.slice(0, eq);
    const values = await ask({ field: "meta_value", meta_key: key });
    return [values, current.slice(eq + 1), (v) => before + key + "=" + v];
  }

  async function draw() {
    const mine = ++shown;
    const [values, typed, write] = await options();
    if (mine !== shown || document.activeElement !== input) return;  // a newer draw, or gone
    const wanted = typed.toLowerCase();
    const matching = values.filter((v) => v.value.toLowerCase().startsWith(wanted)).slice(0, SHOWN);
    clear(list);
    for (const v of matching) {
      const choice = el("button", { type: "button", class: "suggestion", role: "option", "data-value": v.value },
        el("span", { class: "suggestion-value" }, v.value), " ", el("span", { class: "muted" }, fmtNum(v.count)));
      // Before the input loses focus to the button.
      choice.addEventListener("mousedown", (event) => event.preventDefault());
      choice.addEventListener("click", () => {
        input.value = write(v.value);
        input.focus();
        if (name === "meta" && input.value.endsWith("=")) draw();  // on to the key's values
        else list.hidden = true;
      });
      list.append(el("li", null, choice));
    }
    list.hidden = !matching.length;
  }

  input.addEventListener("focus", draw);
  input.addEventListener("input", draw);
  input.addEventListener("blur", () => { shown++; list.hidden = true; });
  input.addEventListener("keydown", (event) => { if (event.key === "Escape") list.hidden = true; });
  return input;
}
