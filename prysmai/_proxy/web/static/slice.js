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
 * `scope()`: the page's range and project as API parameters. Returns the input.
 *
 * The field is an ARIA combobox and the suggestions its listbox: the focus stays in the field,
 * ArrowDown / ArrowUp move the highlighted option (`aria-activedescendant`, wrapping round),
 * Enter picks it (and does not submit the filters), Escape closes the list (a second Escape leaves
 * the field). A click picks an option too. */
export function withSuggestions(name, input, scope, panel) {
  if (!(name in SUGGESTED)) return input;
  const list = el("ul", { class: "suggest", role: "listbox", id: "suggest-" + name, "aria-label": name + " suggestions" });
  list.hidden = true;
  panel.append(list);
  input.setAttribute("autocomplete", "off");
  input.setAttribute("role", "combobox");
  input.setAttribute("aria-autocomplete", "list");
  input.setAttribute("aria-expanded", "false");
  input.setAttribute("aria-controls", list.id);
  const cache = new Map();
  let shown = 0;
  // The options drawn ({ option, text }: the field's text once picked), and the highlighted one.
  let choices = [];
  let active = -1;

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

  function highlight(index) {
    active = index;
    choices.forEach((c, i) => {
      c.option.setAttribute("aria-selected", String(i === index));
      c.option.classList.toggle("active", i === index);
    });
    if (index < 0) {
      input.removeAttribute("aria-activedescendant");
      return;
    }
    input.setAttribute("aria-activedescendant", choices[index].option.id);
    choices[index].option.scrollIntoView({ block: "nearest" });
  }

  function setOpen(open) {
    list.hidden = !open;
    input.setAttribute("aria-expanded", String(open));
    if (!open) highlight(-1);
  }

  function pick(index) {
    input.value = choices[index].text;
    input.focus();
    if (name === "meta" && input.value.endsWith("=")) draw();  // on to the key's values
    else setOpen(false);
  }

  async function draw() {
    const mine = ++shown;
    const [values, typed, write] = await options();
    if (mine !== shown || document.activeElement !== input) return;  // a newer draw, or gone
    const wanted = typed.toLowerCase();
    const matching = values.filter((v) => v.value.toLowerCase().startsWith(wanted)).slice(0, SHOWN);
    clear(list);
    choices = matching.map((v, i) => {
      const option = el("li", { class: "suggestion", role: "option", id: `${list.id}-${i}`, "aria-selected": "false", "data-value": v.value },
        el("span", { class: "suggestion-value" }, v.value), " ", el("span", { class: "muted" }, fmtNum(v.count)));
      // Before the input loses focus to the option.
      option.addEventListener("mousedown", (event) => event.preventDefault());
      option.addEventListener("click", () => pick(i));
      list.append(option);
      return { option, text: write(v.value) };
    });
    highlight(-1);
    setOpen(choices.length > 0);
  }

  input.addEventListener("focus", draw);
  input.addEventListener("input", draw);
  input.addEventListener("blur", () => { shown++; setOpen(false); });
  input.addEventListener("keydown", (event) => {
    const open = !list.hidden && choices.length > 0;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();  // (not the caret to the text's start or end)
      if (!open) {
        if (choices.length) setOpen(true);
        else { draw(); return; }
      }
      const n = choices.length;
      highlight(event.key === "ArrowDown" ? (active + 1) % n : (active <= 0 ? n - 1 : active - 1));
    } else if (event.key === "Enter" && open && active >= 0) {
      event.preventDefault();  // the option, not the form's submit
      pick(active);
    } else if (event.key === "Escape" && open) {
      event.preventDefault();  // only the list closes; the keyboard shortcuts leave the field on the next
      setOpen(false);
    }
  });
  return input;
}
