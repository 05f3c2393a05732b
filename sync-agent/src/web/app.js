// mlag-sync web view: keeps the page live by polling /api/view (the
// sections arrive rendered and escaped by the agent) every data-refresh-ms.
"use strict";
(function () {
  const refresh = Number(document.body.dataset.refreshMs) || 2000;
  const status = document.getElementById("status");
  function shown(ms) {
    return new Date(ms).toLocaleTimeString();
  }
  const taken = document.getElementById("taken");
  if (taken) {
    taken.textContent = shown(Number(taken.dataset.ms));
  }
  async function tick() {
    try {
      const response = await fetch("/api/view", { cache: "no-store" });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const view = await response.json();
      const main = document.getElementById("sections");
      const html = view.sections
        .map(s => '<section id="' + s.id + '"><h2>' + s.title + "</h2>" + s.html + "</section>")
        .join("");
      main.innerHTML = html;
      status.className = "";
      status.textContent = "gathered at " + shown(view.taken_unix_ms) + ", refreshed every " + refresh / 1000 + " s";
      document.getElementById("stats").textContent = "web view: " + view.stats.gathered + " views gathered, "
        + view.stats.shared + " requests shared one, " + view.stats.graph_failures + " graphs not drawn, "
        + view.stats.not_found + " unknown paths, " + view.stats.bad_method + " bad methods, "
        + view.stats.busy + " refused busy";
    } catch (err) {
      status.className = "stale";
      status.textContent = "not refreshed (" + err.message + "): the agent may have stopped; retrying";
    }
    setTimeout(tick, refresh);
  }
  setTimeout(tick, refresh);
})();
