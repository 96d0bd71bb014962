// The dashboard: reads the daemon's API, follows its transition stream, and sends
// the operator's actions (release, pause, resume) with the token pasted once.

import * as api from "./api.js";
import { chart, legend } from "./chart.js";
import { fabric } from "./fabric.js";
import { h, rate, age, clock, count, replaceChildren } from "./dom.js";

const LIVE = new Set(["pending", "active", "expiring"]);
const KEEP_TRANSITIONS = 200;

const state = {
  skew: 0,                 // daemon clock - page clock (s)
  status: null,
  taps: new Map(),         // live taps by id (the API's tap, or a transition's tap record)
  shownAt: new Map(),      // tap id -> when the page first showed it (epoch ms)
  policies: [],
  transitions: [],         // newest last
  lastId: 0,
  stopStream: null,
  window: 300,
};

const $ = (id) => document.getElementById(id);
const now = () => Date.now() / 1000 + state.skew;

// -- messages -----------------------------------------------------------------------

const recent = new Map();
function say(text, level = "info") {
  const seen = recent.get(text);
  if (seen && Date.now() - seen < 10000) return;
  recent.set(text, Date.now());
  const el = h("div", { class: "message", dataset: { level }, text });
  $("messages").append(el);
  setTimeout(() => el.remove(), level === "error" ? 9000 : 5000);
}

async function read(path) {
  try {
    return await api.get(path);
  } catch (err) {
    if (err.status === 401) {
      say(`reads refused: ${err.message}. Paste a token.`, "error");
    } else if (err.status !== 503) {
      say(`${path}: ${err.message}`, "error");
    }
    return null;
  }
}

// -- token ----------------------------------------------------------------------------

function showToken() {
  const set = Boolean(api.token.get());
  const el = $("token-state");
  el.dataset.set = set ? "yes" : "no";
  el.textContent = set ? "token set (kept for this browser session)" : "read-only: no token";
  document.body.dataset.token = set ? "yes" : "no";
  for (const b of document.querySelectorAll("button[data-write]")) b.disabled = !set || b.dataset.idle === "no";
}

function restartStream() {
  if (state.stopStream) state.stopStream();
  state.stopStream = api.follow(state.lastId, onTransition, (st) => {
    const pill = $("stream");
    pill.dataset.state = st;
    pill.textContent = `stream: ${st}`;
    if (st === "live") refreshSoon();
  });
}

function setupToken() {
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    api.token.set(value);
    $("token-input").value = "";
    showToken();
    await refreshAll();
    if (!state.lastId) await loadTimeline();  // reads were refused until now
    restartStream();
  });
  $("token-forget").addEventListener("click", () => {
    api.token.forget();
    showToken();
    restartStream();
  });
  showToken();
}

// -- actions --------------------------------------------------------------------------

async function act(path, what) {
  try {
    const body = await api.post(path);
    say(`${what}: ${body.outcome}${body.message ? ` (${body.message})` : ""}, by ${body.who}`);
    refreshSoon();
  } catch (err) {
    say(`${what} refused: ${err.message}`, "error");
  }
}

function actionButton(label, path, what, idle, danger = false) {
  const b = h("button", { type: "button", class: danger ? "danger" : null,
    dataset: { write: "yes", idle: idle ? "yes" : "no", action: label.toLowerCase() }, text: label });
  b.disabled = !api.token.get() || !idle;
  b.addEventListener("click", () => act(path, what));
  return b;
}

// -- health ---------------------------------------------------------------------------

function card(title, ok, value, sub, extra) {
  return h("div", { class: "card", dataset: { ok: ok === null ? "" : ok ? "yes" : "no", card: title.toLowerCase() } },
    h("div", { class: "title", text: title }), h("div", { class: "value", text: value }),
    h("div", { class: "sub", text: sub }), extra || null);
}

function renderHealth() {
  const st = state.status;
  if (!st) return;
  const e = st.engine, c = st.controller, b = st.capture_budget, store = st.store;
  const switches = c.switches || [];
  let bar = null;
  if (b.total_bps) {
    const fill = h("div");
    fill.style.width = `${Math.min(100, (100 * b.used_bps) / b.total_bps).toFixed(1)}%`;
    bar = h("div", { class: "bar" }, fill);
  }
  replaceChildren($("health"),
    card("Engine", e.reachable, e.reachable ? "reachable" : "unreachable",
      `${e.embedded ? "embedded" : "sFlow-RT"} ${e.url}; ${count(e.events_received)} events${e.last_error ? `; ${e.last_error}` : ""}`),
    card("Controller", c.reachable, c.reachable ? "reachable" : "unreachable",
      `${c.address}; ${c.pending_calls || 0} call(s) pending${c.last_error ? `; ${c.last_error}` : ""}`),
    card("Switches", switches.length > 0, `${switches.length} connected`,
      switches.map((sw) => `${sw.name} (${sw.role || "?"})`).join(", ") || "none"),
    card("Taps", null, `${st.taps.live} live`,
      Object.entries(st.taps.by_state).map(([k, v]) => `${k} ${v}`).join(" · ")),
    card("Capture budget", b.total_bps ? b.used_bps <= b.total_bps : null,
      `${rate(b.used_bps)}`, b.total_bps ? `of ${rate(b.total_bps)}` : "unlimited", bar),
    card("State file", store.writable, store.writable ? "writable" : "refuses writes",
      store.error || `${store.unsaved_transitions} unsaved transition(s)`));
  $("version").textContent = `v${st.version} · up ${age(st.uptime_s)}`;
}

// -- taps -----------------------------------------------------------------------------

// The API's tap and a transition's tap record name a few fields differently.
function tapView(t) {
  return {
    tap_id: t.tap_id, policy: t.policy, flow_key: t.flow_key, state: t.state,
    dpid: t.dpid, in_port: t.in_port, copy_port: t.copy_port,
    created_at: t.created_at ?? t.start, rate_bps: t.rate_bps ?? null,
    packets: t.packets ?? 0, bytes: t.bytes ?? 0,
  };
}

const rows = new Map();
function renderTaps() {
  const body = $("taps").tBodies[0];
  const live = [...state.taps.values()].filter((t) => LIVE.has(t.state))
    .sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
  const ids = new Set(live.map((t) => t.tap_id));
  for (const [id, row] of rows) {
    if (!ids.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  live.forEach((t, i) => {
    let row = rows.get(t.tap_id);
    if (!row) {
      row = h("tr", { dataset: { tapId: t.tap_id } });
      for (let k = 0; k < 9; k++) row.append(h("td"));
      row.cells[0].className = "key";
      row.cells[2].className = "key";
      rows.set(t.tap_id, row);
      if (!state.shownAt.has(t.tap_id)) state.shownAt.set(t.tap_id, Date.now());
      row.dataset.shownAt = String(state.shownAt.get(t.tap_id));
    }
    if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
    row.dataset.state = t.state;
    const set = (k, text) => { if (row.cells[k].textContent !== text) row.cells[k].textContent = text; };
    set(0, t.tap_id);
    set(1, t.policy);
    set(2, t.flow_key);
    const badge = row.cells[3].firstChild;
    if (!badge || badge.dataset.state !== t.state) {
      replaceChildren(row.cells[3], h("span", { class: "state", dataset: { state: t.state }, text: t.state }));
    }
    set(4, t.dpid ? `s${t.dpid} port ${t.in_port} → uplink ${t.copy_port}` : "not placed");
    set(5, t.created_at ? age(now() - t.created_at) : "–");
    set(6, rate(t.rate_bps));
    set(7, count(t.packets));
    const idle = t.state === "pending" || t.state === "active";
    const button = row.cells[8].firstChild;
    if (!button) {
      row.cells[8].append(actionButton("Release", `/api/v1/taps/${encodeURIComponent(t.tap_id)}/release`,
        `release ${t.tap_id}`, idle, true));
    } else {
      button.dataset.idle = idle ? "yes" : "no";
      button.disabled = !api.token.get() || !idle;
    }
  });
  $("no-taps").hidden = live.length > 0;
  $("tap-count").textContent = live.length ? `${live.length} live` : "";
}

async function refreshTaps() {
  const started = performance.now();
  const body = await read("/api/v1/taps?state=live&limit=500");
  if (!body) return;
  const taps = new Map(body.taps.map((t) => [t.tap_id, tapView(t)]));
  // A transition that arrived while this read was under way is newer than it.
  for (const [id, t] of state.taps) {
    if (t.noted > started) taps.set(id, { ...(taps.get(id) || {}), ...t });
  }
  state.taps = taps;
  renderTaps();
}

// -- transitions ------------------------------------------------------------------------

function transitionItem(t) {
  const who = t.tap_id || t.policy || "";
  return h("li", { dataset: { id: String(t.id), kind: t.kind, tapId: t.tap_id || "" } },
    h("span", { class: "when", text: clock(t.at), title: new Date(t.at * 1000).toString() }),
    h("span", { class: "kind", dataset: { kind: t.kind }, text: t.kind }),
    h("span", { class: "cause" }, h("span", { class: "key", text: who }), who ? " · " : "", t.cause || ""));
}

function renderTimeline() {
  replaceChildren($("timeline"), [...state.transitions].reverse().map(transitionItem));
}

function onTransition(t) {
  if (t.id <= state.lastId) return;
  state.lastId = t.id;
  state.transitions.push(t);
  if (state.transitions.length > KEEP_TRANSITIONS) state.transitions.splice(0, state.transitions.length - KEEP_TRANSITIONS);
  const item = transitionItem(t);
  item.dataset.shownAt = String(Date.now());  // when the stream's record reached the page
  $("timeline").prepend(item);
  const list = $("timeline");
  while (list.children.length > KEEP_TRANSITIONS) list.lastChild.remove();
  if (t.tap) {
    // Show the change at once from the record; the next read fills in the rest.
    const prev = state.taps.get(t.tap_id);
    state.taps.set(t.tap_id, { ...(prev || {}), ...tapView(t.tap), noted: performance.now(),
      rate_bps: prev ? prev.rate_bps : (t.detail && t.detail.rate_bps) ?? null });
    renderTaps();
  }
  if (["paused", "resumed"].includes(t.kind)) refreshPolicies();
  refreshSoon();
}

async function loadTimeline() {
  const st = state.status;
  const from = Math.max(0, (st ? st.last_transition_id : 0) - 100);
  const body = await read(`/api/v1/transitions?after=${from}&limit=100`);
  if (!body) return;
  state.transitions = body.transitions;
  state.lastId = Math.max(state.lastId, body.last_id);
  renderTimeline();
}

// -- policies and charts --------------------------------------------------------------

function policyState(p) {
  if (!p.enabled) return "disabled";
  return p.paused ? "paused" : "active";
}

// Rows are updated in place (a button being clicked is never swapped under the pointer).
const policyRows = new Map();
function renderPolicies(body) {
  const tbody = $("policies").tBodies[0];
  const names = new Set(body.policies.map((p) => p.name));
  for (const [name, row] of policyRows) {
    if (!names.has(name)) {
      row.remove();
      policyRows.delete(name);
    }
  }
  body.policies.forEach((p, i) => {
    const d = p.definition || {};
    const st = policyState(p);
    let row = policyRows.get(p.name);
    if (!row) {
      row = h("tr", { dataset: { policy: p.name } });
      for (let k = 0; k < 6; k++) row.append(h("td"));
      row.cells[0].className = "key";
      policyRows.set(p.name, row);
    }
    if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] || null);
    row.dataset.state = st;
    const set = (k, text) => { if (row.cells[k].textContent !== text) row.cells[k].textContent = text; };
    set(0, p.name);
    row.cells[0].title = p.description || "";
    set(1, p.kind || "");
    const badge = row.cells[2].firstChild;
    if (!badge || badge.dataset.state !== st) {
      replaceChildren(row.cells[2], h("span", { class: "state", dataset: { state: st }, text: st }));
    }
    set(3, `${p.live_taps} / ${p.max_taps ?? "–"}`);
    set(4, typeof d.threshold === "number" ? rate(d.threshold) : "–");
    const action = p.paused ? "resume" : "pause";
    const button = row.cells[5].firstChild;
    if (!button || button.dataset.action !== action) {
      const path = `/api/v1/policies/${encodeURIComponent(p.name)}/${action}`;
      replaceChildren(row.cells[5], p.paused
        ? actionButton("Resume", path, `resume ${p.name}`, true)
        : actionButton("Pause", path, `pause ${p.name}`, p.enabled));
    } else {
      button.dataset.idle = p.paused || p.enabled ? "yes" : "no";
      button.disabled = !api.token.get() || button.dataset.idle === "no";
    }
  });
  const r = body.reload || {};
  $("reload").textContent = r.at
    ? `last ${r.what || "load"} ${clock(r.at)}: ${r.ok ? "ok" : `rejected — ${r.error}`}`
    : "";
}

async function refreshPolicies() {
  const body = await read("/api/v1/policies");
  if (!body) return;
  state.policies = body.policies;
  renderPolicies(body);
}

const charts = new Map();
async function refreshCharts() {
  const wanted = state.policies.filter((p) => p.enabled && p.flow_name && p.kind !== "scheduled");
  const box = $("charts");
  for (const [name, el] of charts) {
    if (!wanted.some((p) => p.name === name)) {
      el.remove();
      charts.delete(name);
    }
  }
  await Promise.all(wanted.map(async (p) => {
    const data = await read(`/api/v1/policies/${encodeURIComponent(p.name)}/flows?window=${state.window}`);
    if (!data) return;
    let el = charts.get(p.name);
    if (!el) {
      el = h("div", { class: "chart", dataset: { policy: p.name } });
      charts.set(p.name, el);
      box.append(el);
    }
    const title = h("h3", {}, `${p.name} `, h("span", { class: "muted small",
      text: `${p.kind}${data.threshold_bps ? ` · threshold ${rate(data.threshold_bps)}` : ""}${data.paused ? " · paused" : ""}` }));
    replaceChildren(el, title, chart(data, now()), legend(data));
  }));
}

async function refreshFabric() {
  const body = await read("/api/v1/fabric");
  if (!body) return;
  replaceChildren($("fabric"), fabric(body));
}

async function refreshStatus() {
  const asked = Date.now() / 1000;
  const body = await read("/api/v1/status");
  if (!body) return false;
  const got = Date.now() / 1000;
  state.skew = body.as_of ? body.as_of - (asked + got) / 2 : 0;
  // as_of is the last published batch, not "now": only trust a skew beyond a second.
  if (Math.abs(state.skew) < 1) state.skew = 0;
  state.status = body;
  renderHealth();
  $("updated").textContent = `updated ${clock(got)}`;
  return true;
}

// -- scheduling -----------------------------------------------------------------------

let soon = null;
function refreshSoon() {
  if (soon) return;
  soon = setTimeout(async () => {
    soon = null;
    await Promise.all([refreshTaps(), refreshFabric(), refreshStatus(), refreshPolicies()]);
  }, 150);
}

async function refreshAll() {
  await refreshStatus();
  await Promise.all([refreshPolicies(), refreshTaps(), refreshFabric()]);
  await refreshCharts();
}

function every(ms, job) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await job();
    } finally {
      busy = false;
    }
  }, ms);
}

async function start() {
  setupToken();
  $("window").addEventListener("change", (ev) => {
    state.window = Number(ev.target.value);
    refreshCharts();
  });
  await refreshAll();
  await loadTimeline();
  restartStream();
  every(1000, async () => { await refreshTaps(); await refreshCharts(); });
  every(2000, async () => { await refreshStatus(); await refreshFabric(); });
  every(5000, refreshPolicies);
  document.body.dataset.ready = "yes";
}

start();
