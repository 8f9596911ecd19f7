// linegate console: draws each page from the JSON API (/api/v1/...) and
// polls it once a second. Only GET requests; data goes into the page as
// text (never as HTML).
"use strict";

const STATES = ["running", "setup", "down", "idle", "planned_stop", "offline"];
const POLL_MS = 1000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"; }
function ago(t) {
  if (!t) return "–";
  let s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
  if (s < 60) return s.toFixed(0) + " s ago";
  if (s < 3600) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}
function clock(t) { return t ? new Date(t).toLocaleTimeString() : "–"; }
function stamp(t) { return t ? new Date(t).toLocaleString() : "–"; }
function stateBadge(s) { return el("span", { class: "state " + (s || "unknown"), "data-state": s || "unknown" }, s || "unknown"); }
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function num(v) { return el("td", { class: "num" }, v === null || v === undefined ? "–" : v); }
function progress(o) {
  const q = Math.max(1, o.quantity);
  const share = Math.min(1, o.produced / q);
  return el("span", {},
    el("span", { class: "bar", title: o.produced + " of " + o.quantity },
      el("span", { style: "width:" + (100 * share).toFixed(1) + "%" })),
    " " + o.produced + "/" + o.quantity);
}

async function getJson(path) {
  const r = await fetch(path, { headers: { "Accept": "application/json" }, cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function setStatus(ok, text) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("stale", !ok);
}

function poll(draw) {
  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      await draw();
      setStatus(true, "live · " + new Date().toLocaleTimeString());
    } catch (e) {
      setStatus(false, "not updating: " + e.message);
    } finally {
      busy = false;
    }
  }
  tick();
  setInterval(tick, POLL_MS);
}

// ---- Line --------------------------------------------------------------
async function drawLine() {
  const line = await getJson("/api/v1/line");
  document.getElementById("gateway-id").textContent = line.gateway;
  const rows = line.machines.map(m => {
    const p = m.period || { kpi: {}, counts: {} };
    const o = m.order;
    return el("tr", { "data-machine": m.machine, "data-state": m.state || "unknown" },
      el("td", {}, el("a", { class: "machine", href: "/machine/" + encodeURIComponent(m.machine) }, m.machine)),
      el("td", {}, stateBadge(m.state)),
      el("td", { title: stamp(m.since) }, ago(m.since)),
      el("td", {}, m.reason || ""),
      num(pct(p.kpi.availability)), num(pct(p.kpi.performance)), num(pct(p.kpi.quality)), num(pct(p.kpi.oee)),
      num(p.counts.produced), num(p.counts.good),
      el("td", {}, o ? el("span", {}, o.order_id + " (" + o.product + ") ", progress(o)) : "–"));
  });
  fill(document.querySelector("#line tbody"), rows);
}

// ---- Machine -------------------------------------------------------------
function drawTimeline(box, view) {
  const W = 1000, H = 46, BAR = 30;
  const from = Date.parse(view.from), to = Date.parse(view.to);
  const span = Math.max(1, to - from);
  const x = t => (W * (Date.parse(t) - from) / span);
  const s = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img", "aria-label": "state timeline" });
  // What no record covers (before the agent watched, a gap) stays hatched.
  s.append(svg("rect", { x: 0, y: 0, width: W, height: BAR, class: "nodata" }, svg("title", {}, "no record")));
  for (const sp of view.spans) {
    const x0 = x(sp.from), w = Math.max(0.5, x(sp.to) - x0);
    s.append(svg("rect", { x: x0.toFixed(2), y: 0, width: w.toFixed(2), height: BAR, class: sp.state, "data-state": sp.state },
      svg("title", {}, sp.state + " " + clock(sp.from) + "–" + clock(sp.to) + (sp.reason ? " (" + sp.reason + ")" : ""))));
  }
  for (let i = 0; i <= 4; i++) {
    const t = new Date(from + span * i / 4);
    const fmt = span < 2 * 3600e3 ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
    s.append(svg("text", { x: Math.min(W - 60, W * i / 4 + 2), y: H - 3 }, t.toLocaleTimeString([], fmt)));
  }
  box.replaceChildren(s);
}

async function drawMachine() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const m = await getJson("/api/v1/machines/" + encodeURIComponent(id));
  document.getElementById("machine-id").textContent = m.machine;
  document.getElementById("machine-state").replaceWith(Object.assign(stateBadge(m.state), { id: "machine-state" }));
  document.getElementById("machine-summary").textContent =
    "since " + stamp(m.since) + (m.reason ? " · " + m.reason : "") +
    " · parts " + m.produced_total + " (good " + m.good_total + ")" +
    " · polls " + m.reads + ", failed " + m.failed_reads +
    (m.last_error ? " · last error: " + m.last_error : "");
  document.getElementById("shift-name").textContent = m.timeline.shift.name ? "(" + m.timeline.shift.name + ")" : "(no shift calendar: since the agent started, at most 8 h)";
  drawTimeline(document.getElementById("timeline-shift"), m.timeline.shift.view);
  drawTimeline(document.getElementById("timeline-day"), m.timeline.day);
  const legend = document.getElementById("legend");
  if (!legend.childElementCount) {
    legend.append(...STATES.map(s => el("span", {}, el("i", { style: "background:var(--" + s + ")" }), s)));
  }
  fill(document.querySelector("#signals tbody"), m.signals.map(s => el("tr", {},
    el("td", {}, s.signal), el("td", { class: "num" }, s.value === null ? "–" : s.value),
    el("td", { title: stamp(s.last_read) }, ago(s.last_read)), el("td", { class: "error" }, s.error || ""))));
  const b = m.bus_stats;
  document.getElementById("bus-id").textContent = b.bus + (b.transport ? " (" + b.transport + ")" : "");
  const c = b.counters || {};
  const lat = b.latency;
  const kv = [
    ["running", b.running ? "yes, since " + stamp(b.since) : "no"],
    ...Object.entries(c).map(([k, v]) => [k, v]),
    ["mean reply", lat && lat.mean_s !== null ? (1000 * lat.mean_s).toFixed(2) + " ms over " + lat.count + " replies" : "–"],
  ];
  fill(document.querySelector("#bus tbody"), kv.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  fill(document.querySelector("#periods tbody"), m.periods.map(p => el("tr", {},
    el("td", {}, p.kind), el("td", {}, stamp(p.start)), el("td", {}, stamp(p.end)),
    num(p.seconds.running.toFixed(0)), num(p.seconds.idle.toFixed(0)), num(p.seconds.down.toFixed(0)), num(p.seconds.offline.toFixed(0)),
    num(p.counts.produced), num(p.counts.good),
    num(pct(p.kpi.availability)), num(pct(p.kpi.performance)), num(pct(p.kpi.quality)), num(pct(p.kpi.oee)))));
}

// ---- Orders --------------------------------------------------------------
function lateness(o) {
  if (o.lateness_s === null) return el("span", {}, "–");
  const min = o.lateness_s / 60;
  return min > 0 ? el("span", { class: "late" }, min.toFixed(0) + " min late") : el("span", {}, (-min).toFixed(0) + " min ahead");
}
async function drawOrders() {
  const d = await getJson("/api/v1/orders");
  fill(document.querySelector("#plans tbody"), d.plans.length ? d.plans.map(p => el("tr", {},
    el("td", {}, p.plan_id), num(p.orders), num(p.started), num(p.started_in_sequence), num(p.completed), num(p.completed_on_time),
    num(pct(p.on_time_rate)))) : [el("tr", {}, el("td", { colspan: 7, class: "note" }, "no plans"))]);
  const queues = document.getElementById("queues");
  queues.replaceChildren(...d.machines.map(m => el("section", { "data-machine": m.machine },
    el("h2", {}, m.machine),
    m.orders.length ? el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ...["#", "Order", "Product", "State", "Progress", "Due", "Lateness", "Reason"].map(h => el("th", {}, h)))),
      el("tbody", {}, ...m.orders.map((o, i) => el("tr", { "data-order": o.order_id },
        num(i + 1), el("td", {}, o.order_id + (o.revision > 1 ? " r" + o.revision : "")), el("td", {}, o.product),
        el("td", {}, o.state), el("td", {}, progress(o)), el("td", {}, stamp(o.due)), el("td", {}, lateness(o)), el("td", {}, o.reason || "")))))
      : el("p", { class: "note" }, "no orders"))));
}

// ---- Gateway -------------------------------------------------------------
async function drawGateway() {
  const g = await getJson("/api/v1/gateway");
  document.getElementById("gateway-id").textContent = g.gateway + " · " + g.site;
  const u = g.uplink;
  const kv = [
    ["uplink", u.configured ? (u.connected ? "connected" : "not connected") : "no [uplink] configured"],
    ["broker", u.broker || "–"],
    ["backlog (outbox)", g.outbox.depth + " messages, " + (g.outbox.bytes / 1024).toFixed(0) + " of " + (g.outbox.max_bytes / 1024).toFixed(0) + " KB"],
    ["dropped telemetry", g.outbox.dropped_telemetry],
    ["sent / acknowledged", u.sent + " / " + u.acked],
    ["reconnects", u.reconnects],
    ["last uplink error", u.last_error || "–"],
    ["version", g.version],
    ["config file", g.config_file || "(none: built in)"],
    ["store", g.store + " (" + g.store_condition + ")"],
    ["started", stamp(g.started_at)],
    ["watchdog", g.watchdog.healthy ? "every loop beats" : "silent: " + g.watchdog.silent.join(", ")],
  ];
  fill(document.querySelector("#gateway tbody"), kv.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  fill(document.querySelector("#loops tbody"), g.watchdog.loops.map(l => el("tr", {},
    el("td", {}, l), el("td", {}, g.watchdog.silent.includes(l) ? el("span", { class: "late" }, "silent") : "yes"))));
}

const PAGES = { line: drawLine, machine: drawMachine, orders: drawOrders, gateway: drawGateway };
document.addEventListener("DOMContentLoaded", () => {
  const draw = PAGES[document.body.dataset.page];
  if (draw) poll(draw);
});
