// The agentwire live demo: sign in with a development token, watch the user's events,
// start simulated runs. Everything it shows comes through /client.js.
import { AgentwireClient, MessageAccumulator } from "/client.js";

const $ = (id) => document.getElementById(id);
const timeline = $("timeline");

let client = null;
let user = null;
let token = null;
let statsTimer = null;
/** run_id → tool_call_id → the tool_executing entry, to mark it when the call ends. */
const openTools = new Map();

function toolsOf(runId) {
  let tools = openTools.get(runId);
  if (!tools) openTools.set(runId, (tools = new Map()));
  return tools;
}
const seenRuns = new Set();
/** Streamed answers: their text as it arrives, and each open one's timeline entry. */
const answers = new MessageAccumulator();
const answerEntries = new Map();
/** Runs that streamed an answer: their agent_completed need not show it again. */
const streamedRuns = new Set();
/** Runs whose terminal event arrived (it may come before the start request's answer). */
const endedRuns = new Set();

// ---- signing in ----------------------------------------------------------------------

async function fetchToken() {
  const own = $("own-token").value.trim();
  if (own) return own;
  const r = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: user }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `token request failed (${r.status})`);
  return body.token;
}

async function getToken() {
  // Called by the client on every (re)connect: a fresh development token each time.
  token = await fetchToken();
  return token;
}

function showError(message) {
  const el = $("signin-error");
  el.textContent = message;
  el.hidden = !message;
}

async function signIn(event) {
  event.preventDefault();
  const id = $("user-id").value.trim();
  if (!id) return;
  signOut();
  user = id;
  showError("");
  $("signin-btn").disabled = true;
  try {
    token = await fetchToken();
  } catch (err) {
    user = null;
    showError(err.message);
    return;
  } finally {
    $("signin-btn").disabled = false;
  }
  $("signin").hidden = true;
  $("signed-in").hidden = false;
  $("signed-user").textContent = user;
  $("who").textContent = user;
  $("who").hidden = false;
  $("empty-text").textContent = "No events yet. Start a run and watch it arrive.";
  client = new AgentwireClient({ getToken });
  client.on("*", render);
  client.onReplayGap(({ from_seq, to_seq }) =>
    notice(`Events ${from_seq}–${to_seq} are no longer held by the server; a real app would refetch them.`),
  );
  client.onStateChange(showConnection);
  client.onError((e) => {
    if (e.kind === "handshake" || e.kind === "closed") showError(e.message);
  });
  client.connect();
}

function signOut() {
  if (client) client.close();
  client = null;
  user = null;
  token = null;
  timeline.replaceChildren();
  openTools.clear();
  seenRuns.clear();
  endedRuns.clear();
  activeRuns.clear();
  $("stop-run").hidden = true;
  $("empty").hidden = false;
  $("empty-text").textContent = "Sign in to watch a user's agent runs live.";
  $("signin").hidden = false;
  $("signed-in").hidden = true;
  $("who").hidden = true;
  $("start-run").disabled = true;
  $("stall-run").disabled = true;
  $("run-status").textContent = "";
  showConnection({ state: "idle", lastSeq: 0, reconnects: 0, duplicatesDropped: 0, replayGaps: 0, connectionId: null, epoch: null });
}

// ---- the connection panel -------------------------------------------------------------

const STATE_TEXT = {
  idle: "signed out",
  connecting: "connecting…",
  open: "live",
  reconnecting: "reconnecting…",
  closed: "disconnected",
};

function showConnection(s) {
  const pill = $("state-pill");
  pill.dataset.state = s.state;
  pill.textContent = STATE_TEXT[s.state] || s.state;
  $("c-state").textContent = s.state + (s.lastClose && s.state !== "open" ? ` (${s.lastClose.code})` : "");
  $("c-seq").textContent = String(s.lastSeq);
  $("c-reconnects").textContent = String(s.reconnects);
  $("c-dups").textContent = String(s.duplicatesDropped);
  $("c-gaps").textContent = String(s.replayGaps);
  $("c-id").textContent = s.connectionId || "—";
  $("c-id").title = s.connectionId || "";
  $("c-epoch").textContent = s.epoch || "—";
  $("c-epoch").title = s.epoch || "";
  showRunButtons();
  if (s.state === "closed" && s.lastClose && s.lastClose.final && client) {
    const why = { 4003: "another tab of this user took over", 4004: "this user has too many tabs open" }[s.lastClose.code];
    if (why) showError(`Disconnected: ${why}. Sign in again to reconnect.`);
  }
}

// ---- the timeline ---------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function pretty(value) {
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

const ICON = {
  agent_started: "▶",
  agent_thinking: "…",
  tool_executing: "⚙",
  tool_completed: "✓",
  agent_completed: "★",
  agent_error: "!",
  message_delta: "✎",
  custom: "•",
};

function entry(e, title) {
  const li = el("li", `ev ev-${e.type}`);
  li.dataset.seq = String(e.seq);
  li.dataset.type = e.type;
  li.dataset.eventId = e.event_id;
  if (e.run_id) li.dataset.run = e.run_id;
  li.append(el("div", "avatar", ICON[e.type] || "•"));
  const bubble = el("div", "bubble");
  const meta = el("div", "meta");
  const t = el("span", "title");
  if (title instanceof Node) t.append(title);
  else t.textContent = title;
  meta.append(t, el("span", "", time(e.ts)), el("span", "seq", `#${e.seq}`));
  bubble.append(meta);
  li.append(bubble);
  return { li, bubble };
}

function toolTitle(prefix, name) {
  const f = document.createDocumentFragment();
  f.append(prefix + " ", el("span", "tool-name", name));
  return f;
}

/**
 * A streamed answer is one entry whose text grows with each `message_delta` (a merged
 * one, protocol §6.5, is just a longer piece) until `message_completed` or the run's end.
 * The entry lists every seq and event id it shows, so each event is still accounted for.
 */
function renderMessage(e) {
  const m = answers.add(e);
  const key = JSON.stringify([e.run_id, e.data.message_id]);
  let open = answerEntries.get(key);
  if (!open) {
    const node = entry(e, "Answering…");
    const text = el("p", "text streaming");
    node.bubble.append(text);
    node.li.dataset.seqs = "";
    node.li.dataset.eventIds = "";
    open = { li: node.li, text, title: node.bubble.querySelector(".title") };
    answerEntries.set(key, open);
    streamedRuns.add(e.run_id);
    append(node.li);
  }
  const seqs = [];
  for (let s = e.from_seq ?? e.seq; s <= e.seq; s++) seqs.push(s);
  open.li.dataset.seqs = [open.li.dataset.seqs, ...seqs].filter(Boolean).join(",");
  open.li.dataset.eventIds = [open.li.dataset.eventIds, e.event_id].filter(Boolean).join(",");
  open.li.querySelector(".seq").textContent = `#${open.li.dataset.seqs.split(",")[0]}–${e.seq}`;
  if (m) open.text.textContent = m.text;
  if (e.type === "message_completed") endMessage(key, open, "Answer");
  const scroller = $("scroller");
  if (scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 160) scroller.scrollTop = scroller.scrollHeight;
}

function endMessage(key, open, title) {
  open.title.textContent = title;
  open.text.classList.remove("streaming");
  open.li.classList.add("done");
  answerEntries.delete(key);
}

function render(e) {
  $("empty").hidden = true;
  if (e.type === "message_delta" || e.type === "message_completed") {
    renderMessage(e);
    return;
  }
  if (e.run_id && e.type === "agent_started" && !seenRuns.has(e.run_id)) {
    seenRuns.add(e.run_id);
    const d = el("li", "run-divider");
    d.append("Run ", el("span", "mono", e.run_id));
    append(d);
  }
  let node;
  switch (e.type) {
    case "agent_started": {
      node = entry(e, `${e.data.agent_name || "Agent"} started`);
      node.bubble.append(el("p", "text", "Working on it."));
      break;
    }
    case "agent_thinking": {
      node = entry(e, e.data.step ? `Thinking · step ${e.data.step}` : "Thinking");
      node.bubble.append(el("p", "text", e.data.thought));
      break;
    }
    case "tool_executing": {
      node = entry(e, toolTitle("Calling", e.data.tool_name));
      node.bubble.append(el("div", "label", "Arguments"), el("pre", "", pretty(e.data.arguments)));
      node.bubble.querySelector(".meta").append(el("span", "status", "running…"));
      toolsOf(e.run_id).set(e.data.tool_call_id, node.li);
      break;
    }
    case "tool_completed": {
      node = entry(e, toolTitle(e.data.is_error ? "Failed" : "Result of", e.data.tool_name));
      if (e.data.is_error) node.li.classList.add("is-error");
      const took = typeof e.data.duration_ms === "number" ? ` · ${e.data.duration_ms} ms` : "";
      node.bubble.querySelector(".meta").insertBefore(el("span", "", took.slice(3)), node.bubble.querySelector(".seq"));
      node.bubble.append(el("div", "label", e.data.is_error ? "Error" : "Result"), el("pre", "", pretty(e.data.result)));
      const started = toolsOf(e.run_id).get(e.data.tool_call_id);
      if (started) {
        started.classList.add(e.data.is_error ? "failed" : "done");
        const status = started.querySelector(".status");
        if (status) status.textContent = e.data.is_error ? "failed" : `done${took}`;
        toolsOf(e.run_id).delete(e.data.tool_call_id);
      }
      break;
    }
    case "agent_completed": {
      const took = typeof e.data.duration_ms === "number" ? ` in ${(e.data.duration_ms / 1000).toFixed(1)} s` : "";
      node = entry(e, `Completed${took}`);
      const result = e.data.result;
      // A result that carries an answer for the user shows it as text (unless the run
      // streamed it already); anything else as JSON.
      if (streamedRuns.has(e.run_id) && result && typeof result === "object" && typeof result.answer === "string") {
        node.bubble.append(el("p", "label", "The answer above is the run's result."));
      } else if (result && typeof result === "object" && typeof result.answer === "string") {
        node.bubble.append(el("p", "text", result.answer));
      } else if (typeof result === "string") {
        node.bubble.append(el("p", "text", result));
      } else {
        node.bubble.append(el("pre", "", pretty(result)));
      }
      break;
    }
    case "agent_error": {
      // `stalled`: the server ended a run that went silent (protocol §7.1).
      node = entry(e, e.data.code === "stalled" ? "Run stalled: ended by the server" : "Run failed");
      node.bubble.append(el("p", "text", e.data.message));
      if (e.data.code) node.bubble.append(el("div", "label", `code: ${e.data.code}${e.data.retryable ? " · retryable" : ""}`));
      break;
    }
    default: {
      node = entry(e, e.data.name || e.type);
      node.bubble.append(el("pre", "", pretty(e.data.value)));
    }
  }
  append(node.li);
  if (e.type === "agent_completed" || e.type === "agent_error") {
    // Tool calls still open end with the run (protocol §7).
    for (const li of toolsOf(e.run_id).values()) {
      li.classList.add("failed");
      const status = li.querySelector(".status");
      if (status) status.textContent = "ended with the run";
    }
    openTools.delete(e.run_id);
    // So do messages still streaming.
    answers.add(e);
    for (const [key, open] of answerEntries) {
      if (open.li.dataset.run === e.run_id) endMessage(key, open, "Answer (cut short)");
    }
    streamedRuns.delete(e.run_id);
    endedRuns.add(e.run_id);
    runEnded(e.run_id);
  }
}

/** Appends to the timeline, following the newest entry unless the reader scrolled up. */
function append(li) {
  const scroller = $("scroller");
  const following = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  timeline.append(li);
  if (following) scroller.scrollTop = scroller.scrollHeight;
}

function notice(text) {
  $("empty").hidden = true;
  append(el("li", "notice", text));
}

// ---- starting and stopping runs ------------------------------------------------------

/** The runs this page started that have not ended yet. */
const activeRuns = new Set();
// `?pace_ms=300` runs faster (the browser tests use it); the server bounds it.
const pace = new URLSearchParams(location.search).get("pace_ms");

function showRunButtons() {
  const open = client !== null && client.state === "open";
  $("start-run").disabled = !open;
  $("stall-run").disabled = !open;
  $("stop-run").hidden = activeRuns.size === 0;
}

function runEnded(runId) {
  if (activeRuns.delete(runId) && activeRuns.size === 0) $("run-status").textContent = "";
  showRunButtons();
}

async function startRun() {
  if (!client || !token) return;
  $("start-run").disabled = true;
  $("run-status").textContent = "Starting a simulated run on the server…";
  try {
    const r = await fetch("/demo/runs", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(pace === null ? {} : { pace_ms: Number(pace) }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.message || `could not start a run (${r.status})`);
    if (!endedRuns.has(body.run_id)) activeRuns.add(body.run_id);
    $("run-status").textContent = `Run ${body.run_id} is running on the server through the bridge; its events arrive below.`;
  } catch (err) {
    $("run-status").textContent = err.message;
  } finally {
    showRunButtons();
  }
}

/**
 * Starts a run that goes silent after `tool_executing` (its `stall_timeout_ms` is 3 s):
 * the server's watchdog ends it with `agent_error` code `stalled`, which arrives below.
 */
async function startStallingRun() {
  if (!client || !token) return;
  $("stall-run").disabled = true;
  try {
    const r = await fetch("/demo/runs", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ stall: true }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.message || `could not start a run (${r.status})`);
    if (!endedRuns.has(body.run_id)) activeRuns.add(body.run_id);
    const secs = body.stall_timeout_ms / 1000;
    $("run-status").textContent = `Run ${body.run_id} called a tool and went silent; the server ends it as stalled after ${secs} s without an event.`;
  } catch (err) {
    $("run-status").textContent = err.message;
  } finally {
    showRunButtons();
  }
}

async function stopRuns() {
  for (const runId of [...activeRuns]) {
    const r = await fetch(`/demo/runs/${encodeURIComponent(runId)}/cancel`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
    }).catch(() => null);
    if (r && r.status === 404) runEnded(runId);
  }
}

// ---- server stats ---------------------------------------------------------------------

async function refreshStats() {
  try {
    // Outside development mode the stats are for signed-in users: send the token.
    const headers = token ? { authorization: `Bearer ${token}` } : {};
    const r = await fetch("/demo/stats", { cache: "no-store", headers });
    if (!r.ok) throw new Error(String(r.status));
    const s = await r.json();
    $("s-connections").textContent = s.connections;
    $("s-users").textContent = s.users;
    $("s-emitted").textContent = s.events_emitted;
    $("s-delivered").textContent = s.events_delivered;
    $("s-replayed").textContent = s.events_replayed;
    $("s-gaps").textContent = s.replay_gaps;
    $("s-runs").textContent = s.demo_runs_active;
    $("stats-dot").classList.add("on");
  } catch {
    $("stats-dot").classList.remove("on");
  }
}

$("signin").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
$("start-run").addEventListener("click", startRun);
$("stall-run").addEventListener("click", startStallingRun);
$("stop-run").addEventListener("click", stopRuns);
refreshStats();
statsTimer = setInterval(refreshStats, 1000);
window.addEventListener("pagehide", () => clearInterval(statsTimer));
