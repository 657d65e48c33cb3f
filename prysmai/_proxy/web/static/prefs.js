// What this browser remembers of the dashboard (localStorage: no cookie, nothing sent to the
// server): the time zone times are shown in, and the colour theme. A link may carry the zone as
// ?tz=utc|local, so a shared view shows its times as its author saw them; opening it makes that
// zone this browser's choice, so the pages it leads to agree with it.
import { el } from "./dom.js";

const ZONE_KEY = "prysm.tz";
const THEME_KEY = "prysm.theme";
export const ZONES = ["local", "utc"];
export const THEMES = ["system", "light", "dark"];

// Storage may be unavailable (disabled, a sandboxed frame): the dashboard then works with the
// defaults and remembers nothing, rather than failing.
function load(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    // nothing to remember it in
  }
}

// The zone of this page view: a new one reloads the page (the switch), so it is read once.
let pageZone = null;

/** "utc" or "local" (the default): the URL's ?tz= first, else this browser's choice. */
export function zone() {
  if (pageZone !== null) return pageZone;
  const asked = new URLSearchParams(location.search).get("tz");
  if (ZONES.includes(asked)) {
    if (load(ZONE_KEY) !== asked) store(ZONE_KEY, asked);
    pageZone = asked;
  } else {
    const saved = load(ZONE_KEY);
    pageZone = ZONES.includes(saved) ? saved : "local";
  }
  return pageZone;
}

/** "system" (follow prefers-color-scheme), "light" or "dark". */
export function theme() {
  const saved = load(THEME_KEY);
  return THEMES.includes(saved) ? saved : "system";
}

/** Apply a theme to the page (theme.js does the same before the first paint). */
function applyTheme(value) {
  if (value === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = value;
}

/** The local zone's name, as the browser knows it ("Europe/Paris"), for the switch's label. */
function localZoneName() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "browser";
  } catch {
    return "browser";
  }
}

/** The header's two switches: time zone and theme. A new zone redraws the page (every time on it
 * changes); a new theme applies at once. */
export function switches() {
  const current = zone();
  const tz = el("select", { id: "zone-switch", "aria-label": "time zone of the times shown", title: "time zone of the times shown" },
    el("option", { value: "local", selected: current === "local" }, "local time (" + localZoneName() + ")"),
    el("option", { value: "utc", selected: current === "utc" }, "UTC"));
  tz.addEventListener("change", () => {
    store(ZONE_KEY, tz.value);
    const url = new URL(location.href);
    // A view whose link names its zone keeps naming it: the new one.
    if (url.searchParams.has("tz")) url.searchParams.set("tz", tz.value);
    location.assign(url.pathname + url.search + url.hash);
  });
  const chosen = theme();
  const look = el("select", { id: "theme-switch", "aria-label": "colour theme", title: "colour theme" },
    THEMES.map((t) => el("option", { value: t, selected: t === chosen }, t === "system" ? "theme: system" : "theme: " + t)));
  look.addEventListener("change", () => {
    store(THEME_KEY, look.value);
    applyTheme(look.value);
    look.blur();  // the keyboard's shortcuts (keys.js) are the page's again
  });
  return el("div", { class: "switches" }, tz, look);
}
