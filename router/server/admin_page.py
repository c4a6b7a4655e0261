"""The status page at `/admin/`: one self-contained HTML file (no external asset, no CDN).

It fetches `/admin/state` every 2 s and draws providers as rows, red (ejected or drained), amber
(throttled, half-open, or an error in the last 5 s) or green, then the routes' plans. When the admin
API asks for a key (401), the page asks the operator for it once and keeps it in the tab's
sessionStorage, sending it as `Authorization: Bearer`.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llm-router status</title>
<style>
  :root { --red: #c62828; --amber: #ef8f00; --green: #2e7d32; --ink: #1d2330; --muted: #667085; }
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 24px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 24px 0 8px; }
  .meta { color: var(--muted); font-size: 12px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e4e7ec; white-space: nowrap; }
  th { font-size: 12px; color: var(--muted); font-weight: 600; }
  tr.provider td:first-child { border-left: 6px solid var(--muted); }
  tr.red td:first-child { border-left-color: var(--red); }
  tr.amber td:first-child { border-left-color: var(--amber); }
  tr.green td:first-child { border-left-color: var(--green); }
  tr.red { background: #fdecea; } tr.amber { background: #fff4e0; } tr.green { background: #edf7ee; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; }
  .badge.red { background: var(--red); } .badge.amber { background: var(--amber); }
  .badge.green { background: var(--green); }
  #error { color: var(--red); margin: 8px 0; }
  .num { text-align: right; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>llm-router status</h1>
<div class="meta" id="meta">loading...</div>
<div id="error"></div>
<h2>Providers</h2>
<table>
  <thead><tr><th>provider</th><th>state</th><th>breaker</th><th class="num">in flight</th>
  <th class="num">ttfb p50</th><th class="num">ttfb p99</th><th class="num">errors/s</th>
  <th>throttled until</th><th>ejected until</th></tr></thead>
  <tbody id="providers"></tbody>
</table>
<h2>Routes</h2>
<table>
  <thead><tr><th>route</th><th>strategy</th><th>tier</th><th>target</th><th>status</th>
  <th class="num">latency (json / stream)</th></tr></thead>
  <tbody id="routes"></tbody>
</table>
<script>
"use strict";
const KEY = "llm-router-admin-key";
function text(value) { return value === null || value === undefined ? "-" : String(value); }
function ms(seconds) { return seconds === null || seconds === undefined ? "-" : (seconds * 1000).toFixed(0) + " ms"; }
function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : "-"; }
function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function stateOf(p) {
  if (p.drained) return "drained";
  if (p.breaker === "open") return "ejected";
  if (p.throttled_until) return "throttled (" + text(p.throttle_cause) + ")";
  if (p.breaker === "half_open") return "half-open";
  return "serving";
}
function render(state) {
  document.getElementById("error").textContent = "";
  document.getElementById("meta").textContent = "policy " + state.policy.path + " (sha256 " +
    state.policy.sha256.slice(0, 12) + "), loaded " + time(state.policy.loaded_at) + "; updated " +
    time(state.generated_at) + (state.policy.last_reload_error ? "; last reload refused: " +
    state.policy.last_reload_error : "");
  const providers = document.getElementById("providers");
  providers.replaceChildren();
  for (const [name, p] of Object.entries(state.providers)) {
    const row = document.createElement("tr");
    row.className = "provider " + p.status;
    row.dataset.provider = name;
    row.dataset.status = p.status;
    cell(row, name);
    const badge = document.createElement("span");
    badge.className = "badge " + p.status;
    badge.textContent = stateOf(p);
    cell(row, "").appendChild(badge);
    cell(row, p.breaker);
    cell(row, text(p.in_flight), "num");
    const recent = p.recent || {};
    cell(row, ms(recent.ttfb_p50_s), "num");
    cell(row, ms(recent.ttfb_p99_s), "num");
    cell(row, recent.errors_per_s === undefined ? "-" : recent.errors_per_s.toFixed(2), "num");
    cell(row, time(p.throttled_until));
    cell(row, time(p.ejected_until));
    providers.appendChild(row);
  }
  const routes = document.getElementById("routes");
  routes.replaceChildren();
  for (const [name, r] of Object.entries(state.routes)) {
    for (const t of r.targets) {
      const row = document.createElement("tr");
      cell(row, name);
      cell(row, r.strategy + (r.hedge ? ", hedged" : ""));
      cell(row, text(t.priority));
      cell(row, t.provider + " / " + t.model);
      cell(row, t.status);
      cell(row, ms(t.latency_json_s) + " / " + ms(t.latency_stream_s), "num");
      routes.appendChild(row);
    }
  }
}
async function refresh() {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers["Authorization"] = "Bearer " + key;
  try {
    const response = await fetch("state", { headers, cache: "no-store" });
    if (response.status === 401) {
      const typed = window.prompt("Admin key (server.admin.key_env):");
      if (typed) sessionStorage.setItem(KEY, typed);
      document.getElementById("error").textContent = "the admin API needs its key";
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    document.getElementById("error").textContent = "cannot reach the router: " + error.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
