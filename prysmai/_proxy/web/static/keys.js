// Keyboard shortcuts: "/" focuses the page's search field; "j" / "k" move the selection down / up
// a list (traces, sessions, users; on a trace opened from the list, to the next / previous trace);
// Enter opens the selected row; Escape goes back up (a trace or a session to its list, a user to
// the users). Never while typing: a key pressed in a field is the field's, and Escape there only
// leaves the field.

// The lists j/k move in, and the search field "/" focuses, first match first.
const LISTS = "#traces-table, #sessions-table, #users-table, #user-sessions";
const SEARCH = ["#search", "#f-q", "#filters input[type=search]"];

function typing(target) {
  if (!(target instanceof Element)) return false;
  return Boolean(target.closest("input, textarea, select, [contenteditable]:not([contenteditable=false])"));
}

function rows() {
  const table = document.querySelector(LISTS);
  return table ? [...table.querySelectorAll("tbody tr")] : [];
}

function selectedIndex(list) {
  return list.findIndex((tr) => tr.classList.contains("kb-selected"));
}

function select(list, index) {
  for (const tr of list) {
    tr.classList.remove("kb-selected");
    tr.removeAttribute("aria-current");
  }
  const tr = list[index];
  tr.classList.add("kb-selected");
  tr.setAttribute("aria-current", "true");
  // Focus goes to the row's link: a screen reader says it, and the page scrolls to it.
  const link = tr.querySelector("a[href]");
  if (link) link.focus({ preventScroll: true });
  tr.scrollIntoView({ block: "nearest" });
}

function move(step) {
  const list = rows();
  if (list.length) {
    const at = selectedIndex(list);
    select(list, at < 0 ? (step > 0 ? 0 : list.length - 1) : Math.max(0, Math.min(list.length - 1, at + step)));
    return true;
  }
  // A trace opened from the list: along the list.
  const target = document.getElementById(step > 0 ? "trace-next" : "trace-previous");
  if (target && target.href) {
    location.assign(target.href);
    return true;
  }
  return false;
}

function open() {
  const list = rows();
  const at = selectedIndex(list);
  const link = at < 0 ? null : list[at].querySelector("a[href]");
  // A button or link focused elsewhere (Tab) is Enter's own.
  const focused = document.activeElement;
  if (!link || (focused && focused !== document.body && !list[at].contains(focused))) return false;
  location.assign(link.href);
  return true;
}

/** Up one level: the list a trace was opened from (its filters kept), else the page's list. */
function back() {
  const parts = location.pathname.split("/").filter(Boolean);
  if (parts.length < 2) return false;
  const toList = document.querySelector("#trace-nav a");
  location.assign(parts[0] === "traces" && toList ? toList.href : "/" + parts[0]);
  return true;
}

document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  if (typing(event.target)) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  let done = false;
  if (event.key === "/") {
    const field = SEARCH.map((s) => document.querySelector(s)).find(Boolean);
    if (field) {
      field.focus();
      field.select();
      done = true;
    }
  } else if (event.key === "j") done = move(1);
  else if (event.key === "k") done = move(-1);
  else if (event.key === "Enter") done = open();
  else if (event.key === "Escape") done = !document.querySelector(".chart-tip:not([hidden])") && back();
  if (done) event.preventDefault();
});
