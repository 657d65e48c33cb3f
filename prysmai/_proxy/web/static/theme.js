// The colour theme chosen on this browser (prefs.js's switch), set before the first paint so a
// dark page does not flash light. A classic script (not a module): it runs at once, in <head>.
(function () {
  try {
    var chosen = localStorage.getItem("prysm.theme");
    if (chosen === "light" || chosen === "dark") document.documentElement.dataset.theme = chosen;
  } catch (e) {
    // no storage: follow the system
  }
})();
