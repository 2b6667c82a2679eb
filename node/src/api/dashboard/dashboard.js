// The node's dashboard: reads this node's /v1 API and renders it. Everything it shows comes
// from the API (which checks the bearer token); every value is written as text, never as
// markup, because peers and clients choose some of it (agent strings, topic names, errors).
"use strict";

const REFRESH_MS = 2000;
const ACTIVITY_MS = 5000;
const TOKEN_KEY = "p2p-mpc-api-token";

const $ = (id) => document.getElementById(id);

// A token in the address's fragment (`/#token=...`, never sent to the server) is taken
// once into this tab's storage and removed from the address bar.
(function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    let token = m[1];
    try { token = decodeURIComponent(token); } catch (_) { /* used as written */ }
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const resp = await fetch(path, { headers, cache: "no-store" });
  if (resp.status === 401) throw new Unauthorized("the API refused the token");
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).error || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${resp.status} ${detail}`);
  }
  return resp.json();
}

// Builds an element; string children become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "title") e.title = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function short(id) {
  return id && id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id || "";
}

function peerCell(id, self) {
  return el("td", { class: "mono", title: id, "data-peer-id": id }, short(id), id === self ? " (this node)" : "");
}

function rows(tbody, list, render, empty, columns) {
  const out = list.map(render);
  if (out.length === 0) out.push(el("tr", {}, el("td", { colspan: String(columns), class: "hint" }, empty)));
  tbody.replaceChildren(...out);
}

function ms(v) {
  if (v === null || v === undefined) return "—";
  return v < 10 ? v.toFixed(2) + " ms" : v < 1000 ? v.toFixed(0) + " ms" : (v / 1000).toFixed(2) + " s";
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return d ? `${d}d ${h}h ${m}m` : h ? `${h}h ${m}m ${s}s` : m ? `${m}m ${s}s` : `${s}s`;
}

function policyText(p) {
  if (!p) return "";
  if (p.legacy) return "legacy open";
  const parts = [p.open ? "open" : `${p.approvals || 1}-of-${(p.clients || []).length} clients`];
  if (p.max_message_bytes) parts.push(`≤ ${p.max_message_bytes} B`);
  if (p.max_signatures_per_minute) parts.push(`${p.max_signatures_per_minute}/min`);
  if (p.message_prefix) parts.push(`prefix ${p.message_prefix}`);
  if (p.reshare) parts.push(`reshare: ${p.reshare}`);
  return parts.join(", ");
}

const state = { status: null, peers: [], keys: [], activity: { samples: [], interval_seconds: 5 } };

function renderNode(s) {
  $("node-title").textContent = s.peer_id;
  const facts = [
    ["peer id", s.peer_id],
    ["version", s.version],
    ["uptime", duration(s.uptime_seconds || 0)],
    ["connected peers", String(s.connected_peers)],
    ["listening on", s.listen_addrs.join("\n") || "—"],
    ["roster", s.roster ? `${s.roster.size} members${s.roster.member ? ", this node is one" : ", this node is NOT one"}` : "none (every peer admitted)"],
    ["topics", s.topics.join(", ") || "—"],
  ];
  $("node-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: k === "peer id" || k === "listening on" ? "mono" : "" }, v)]));
}

function renderCluster(s, peers, keys) {
  const byId = new Map(peers.map((p) => [p.peer_id, p]));
  const members = s.roster ? s.roster.members : [];
  $("cluster-hint").textContent = s.roster
    ? "Every roster member, as this node sees it over its own connections."
    : "This node has no roster: the cluster is the peers it is connected to.";
  const list = s.roster ? members : peers.map((p) => p.peer_id);
  rows($("cluster-rows"), list, (id) => {
    const p = byId.get(id);
    const held = keys.filter((k) => (k.participants || []).includes(id)).length;
    let stateCell;
    if (id === s.peer_id) stateCell = el("td", { class: "ok" }, "this node");
    else if (p) stateCell = el("td", { class: "ok" }, "connected");
    else stateCell = el("td", { class: "bad" }, "not connected");
    return el("tr", { "data-member": id }, peerCell(id, s.peer_id), stateCell,
      el("td", {}, p ? ms(p.rtt_ms) : "—"),
      el("td", { class: "mono" }, p ? (p.connected_addrs[0] || "") : ""),
      el("td", {}, p ? (p.agent_version || "") : id === s.peer_id ? "p2p-mpc/" + s.version : ""),
      el("td", {}, String(held)));
  }, "no members", 6);
}

function renderPeers(s, peers) {
  rows($("peer-rows"), peers, (p) => el("tr", { "data-peer": p.peer_id }, peerCell(p.peer_id, s.peer_id),
    el("td", {}, ms(p.rtt_ms)),
    el("td", { class: "mono" }, p.connected_addrs.join(" ")),
    el("td", {}, p.agent_version || "—"),
    el("td", {}, p.topics.join(", "))), "not connected to any peer", 5);
}

function renderTopics(s, topics, samples) {
  const last = samples[samples.length - 1];
  rows($("topic-rows"), s.topics, (t) => {
    const view = topics.find((v) => v.topic === t) || {};
    const total = samples.reduce((n, x) => n + ((x.messages || {})[t] || 0), 0);
    const rate = last && last.seconds > 0 ? ((last.messages || {})[t] || 0) / last.seconds : 0;
    return el("tr", { "data-topic": t }, el("td", { class: "mono" }, t),
      el("td", {}, view.content_type || "text"), el("td", {}, rate.toFixed(1)), el("td", {}, String(total)));
  }, "no topics joined", 4);
}

function renderKeys(s, keys) {
  rows($("key-rows"), keys, (k) => el("tr", { "data-key": k.key_id },
    el("td", { class: "mono", title: k.public_key }, k.key_id),
    el("td", {}, k.scheme),
    el("td", {}, `${k.threshold} of ${k.participants.length}`),
    el("td", { class: "mono" }, k.participants.map((p) => short(p) + (p === s.peer_id ? " (this node)" : "")).join(", ")),
    el("td", {}, policyText(k.policy)),
    el("td", {}, String(k.generation || 0)),
    el("td", { class: k.status === "active" ? "ok" : "warn" }, k.status)), "this node holds no key share", 7);
}

function renderSessions(s, sessions) {
  rows($("session-rows"), sessions, (x) => {
    const ended = new Date(x.started_at_ms + x.duration_ms);
    const others = x.peers.slice(1);
    const more = x.peers_total > x.peers.length ? ` and ${x.peers_total - x.peers.length} more` : "";
    const blame = x.blamed.length ? "blamed " + x.blamed.map(short).join(", ") : "";
    const why = [blame, x.error || ""].filter(Boolean).join(": ");
    return el("tr", { "data-session": x.session, "data-protocol": x.protocol, "data-outcome": x.outcome },
      el("td", {}, ended.toLocaleTimeString()),
      el("td", {}, x.protocol), el("td", {}, x.role),
      el("td", { class: "mono", title: others.join("\n") }, others.map(short).join(", ") + more),
      el("td", {}, ms(x.duration_ms)),
      el("td", { class: x.outcome === "completed" ? "ok" : "bad" }, x.outcome),
      el("td", { class: "mono" }, why));
  }, "no session since the node started", 7);
}

function renderTasks(tasks) {
  rows($("task-rows"), tasks, (t) => {
    const fraction = Math.min(1, t.reports_in_current_batch / Math.max(1, t.min_reports));
    const bar = el("div", { class: "bar", title: `${t.reports_in_current_batch} of ${t.min_reports}` }, el("span"));
    bar.firstChild.style.width = (fraction * 100).toFixed(1) + "%";
    return el("tr", { "data-task": t.task_id }, el("td", { class: "mono" }, t.task_id),
      el("td", {}, `${t.threshold + 1} of ${t.participants.length}`), el("td", {}, t.access),
      el("td", {}, String(t.current_batch)),
      el("td", {}, bar, `${t.reports_in_current_batch} / ${t.min_reports} reports`),
      el("td", {}, t.opened_batches.join(", ") || "—"));
  }, "no aggregation task here", 6);
}

const SVG = "http://www.w3.org/2000/svg";

function plot(id, noteId, values, unit) {
  const svg = $(id);
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...finite);
  const n = values.length;
  const points = values.map((v, i) => `${n > 1 ? (i * 300) / (n - 1) : 300},${80 - ((v || 0) / max) * 76 - 2}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.replaceChildren(line);
  const last = finite.length ? finite[finite.length - 1] : null;
  $(noteId).textContent = n === 0
    ? "no sample yet (one every 5 s)"
    : `now ${last === null ? "—" : last.toFixed(unit === "ms" ? 2 : 1)} ${unit}, peak ${finite.length ? max.toFixed(unit === "ms" ? 2 : 1) : "—"} ${unit}, over ${duration(Math.round(n * state.activity.interval_seconds))}`;
}

function renderPlots(samples) {
  const per = (f) => samples.map((x) => (x.seconds > 0 ? f(x) / x.seconds : 0));
  plot("plot-signatures", "note-signatures", per((x) => x.signatures), "/s");
  plot("plot-latency", "note-latency", samples.map((x) => x.session_ms_mean), "ms");
  plot("plot-messages", "note-messages", per((x) => Object.values(x.messages || {}).reduce((a, b) => a + b, 0)), "/s");
}

function show(stateName, message) {
  document.body.dataset.state = stateName;
  $("live").textContent = stateName === "live" ? "live · " + new Date().toLocaleTimeString() : stateName;
  $("banner").hidden = !message;
  $("banner").textContent = message || "";
  $("login").hidden = stateName !== "login";
  $("content").hidden = stateName === "login";
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

function failed(e) {
  if (e instanceof Unauthorized) {
    show("login", sessionStorage.getItem(TOKEN_KEY) ? "The API refused this token." : "");
  } else {
    show("error", "Cannot read the node's API: " + e.message);
  }
}

async function refresh() {
  try {
    const [status, peers, keys, sessions, tasks, topics] = await Promise.all([
      api("/v1/status"), api("/v1/peers"), api("/v1/keys"), api("/v1/sessions?limit=50"),
      api("/v1/aggregations"), api("/v1/topics"),
    ]);
    Object.assign(state, { status, peers: peers.peers, keys: keys.keys });
    renderNode(status);
    renderCluster(status, peers.peers, keys.keys);
    renderPeers(status, peers.peers);
    renderTopics(status, topics.topics, state.activity.samples);
    renderKeys(status, keys.keys);
    renderSessions(status, sessions.sessions);
    renderTasks(tasks.tasks);
    show("live");
  } catch (e) {
    failed(e);
  }
}

async function refreshActivity() {
  try {
    state.activity = await api("/v1/activity");
    renderPlots(state.activity.samples);
  } catch (e) {
    failed(e);
  }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  refresh();
  refreshActivity();
});
$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  refresh();
});

// The next refresh is scheduled when the last one is done: a slow node never has requests
// of this page piling up.
async function every(ms, f) {
  await f();
  setTimeout(() => every(ms, f), ms);
}
every(REFRESH_MS, refresh);
every(ACTIVITY_MS, refreshActivity);
