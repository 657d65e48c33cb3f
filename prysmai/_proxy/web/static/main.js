// The router: one page shell, a module per page, chosen by the path.
import { getJSON } from "./api.js";
import { clear, el } from "./dom.js";
import { offerProjectFilter } from "./filters.js";
import { render as budgets } from "./budgets.js";
import "./keys.js";
import { switches } from "./prefs.js";
import { render as overview } from "./overview.js";
import { render as traces } from "./traces.js";
import { renderSession, renderTrace } from "./trace.js";
import { renderSessions, renderUser, renderUsers } from "./users.js";

async function route() {
  const main = document.getElementById("main");
  const path = location.pathname;
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    // A malformed %-escape (a link cut short): say so, rather than "Loading…" for ever.
    clear(main).append(
      el("h1", null, "Not found"),
      el("p", { class: "error" }, "This address is not valid (a malformed %-escape); open the page again from its list."));
    document.body.dataset.ready = "1";
    return;
  }
  document.querySelector(".top .logout").before(switches());
  const section = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
  }
  let me = null;
  try {
    me = await getJSON("me");
  } catch {
    return;
  }
  offerProjectFilter(me.admin);
  if (me.read_only) document.querySelector(".brand").append(el("span", { class: "ro" }, " read-only"));
  // Which traces this key reads: its project's, or (an admin key) every project's.
  document.querySelector(".brand").append(el("span", { class: "ro" }, me.admin ? " all projects" : " project " + me.project));
  if (section === "overview") await overview(main, me);
  else if (section === "traces" && parts.length === 1) await traces(main, me);
  else if (section === "traces") await renderTrace(main, parts[1], me);
  else if (section === "sessions" && parts.length === 1) await renderSessions(main);
  else if (section === "sessions") await renderSession(main, parts.slice(1).join("/"));
  else if (section === "users" && parts.length === 1) await renderUsers(main);
  else if (section === "users") await renderUser(main, parts.slice(1).join("/"));
  else if (section === "budgets") await budgets(main);
  // Two frames: the charts, laid out in the first, are drawn again for their boxes (charts.js).
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  document.body.dataset.ready = "1";  // tests wait for this
}

route();
