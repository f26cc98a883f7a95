// agentwire browser client — one ES module, no build step, no dependencies.
//
// The npm package `@agentwire/client` (clients/js) and agentwire-server's `/client.js`
// (types at `/client.d.ts`) are this one file: the server embeds it at build time. It runs
// in browsers and in Node 20+ (with a WebSocket: Node 22's global one, Node 20's behind
// `--experimental-websocket`, or the `ws` package's passed as `WebSocket`). The wire
// protocol it speaks is docs/protocol.md; how to use it is docs/client.md.
//
//   import { AgentwireClient } from "/client.js";   // or from "@agentwire/client"
//   const client = new AgentwireClient({ getToken: () => fetchMyToken() });
//   client.on("tool_executing", (e) => show(e.data.tool_name, e.data.arguments));
//   client.onReplayGap((gap) => refetchThread());
//   const answers = new MessageAccumulator();          // streamed text, as it arrives
//   client.on("*", (e) => { const m = answers.add(e); if (m) render(m.message_id, m.text); });
//   client.connect();
//
// What it guarantees: every event of the user, once, in `seq` order, across reconnects —
// or a `replay_gap` naming what the server could no longer deliver. Over a WebSocket (the
// default) or, where WebSockets fail, Server-Sent Events (`transport: "sse"` or "auto"),
// with the same API.

/** The subprotocol every connection offers; the server answers with it. */
export const SUBPROTOCOL = "agentwire.v1";
/** Prefix of the subprotocol that carries the token (the server never echoes it). */
export const AUTH_SUBPROTOCOL_PREFIX = "agentwire.auth.";

/** The event types of protocol v1, in the order a run produces them (custom last). */
export const EVENT_TYPES = Object.freeze([
  "agent_started",
  "agent_thinking",
  "tool_executing",
  "tool_completed",
  "agent_completed",
  "agent_error",
  "message_delta",
  "message_completed",
  "custom",
]);

/** Close codes of protocol v1 (§9). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  TOKEN_INVALID: 4001,
  TOKEN_EXPIRED: 4002,
  REPLACED: 4003,
  REJECTED: 4004,
});

const DEFAULTS = Object.freeze({
  maxHandshakeFailures: 3,
  backoff: Object.freeze({ initialMs: 1000, maxMs: 30000, factor: 2, jitter: 0.5 }),
  goingAwayDelayMs: 250,
  stableAfterMs: 10000,
  pongTimeoutMs: 10000,
  ack: true,
  ackDelayMs: 250,
  refreshBeforeExpiryMs: 60000,
  connectTimeoutMs: 15000,
});

/**
 * The longest delay `setTimeout` keeps: 2^31 - 1 ms (about 24.8 days). A longer one fires
 * at once, in browsers and in Node alike, so longer waits are taken in steps of this.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How long after a socket's `error` its `close` may come. Browsers and the `ws` package
 * send both at once; Node 20's built-in WebSocket (undici 6) sends no `close` after a
 * refused handshake, so without this the client would wait in "connecting" for ever.
 */
const ERROR_CLOSE_GRACE_MS = 1000;

/**
 * A token refresh is not scheduled sooner than this: a token that expires sooner is left
 * to expire, and the server's 4002 brings a reconnect with a new token.
 */
const MIN_REFRESH_DELAY_MS = 1000;

const EVENT_TYPE_SET = new Set(EVENT_TYPES);

/**
 * What the client does after a close, by code (docs/protocol.md §9).
 * "stop": final, report; "halt": final until the application calls connect() again;
 * "now": reconnect at once; "backoff": reconnect with exponential backoff;
 * "token": reconnect with a freshly fetched token.
 */
function closePolicy(code) {
  switch (code) {
    case CloseCode.NORMAL:
    case CloseCode.PROTOCOL_ERROR:
    case CloseCode.INVALID_PAYLOAD:
    case CloseCode.MESSAGE_TOO_BIG:
      return "stop";
    case CloseCode.REPLACED:
    case CloseCode.REJECTED:
      return "halt";
    case CloseCode.GOING_AWAY:
      return "now";
    case CloseCode.TOKEN_INVALID:
    case CloseCode.TOKEN_EXPIRED:
      return "token";
    default:
      // 1006 (dropped), 1008, 1011, 1013 and codes this version does not know.
      return "backoff";
  }
}

/** The `exp` claim of a JWT, in ms since the epoch, or null. Never verifies anything. */
function tokenExpiryMs(token) {
  try {
    const part = token.split(".")[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "===".slice((b64.length + 3) % 4);
    const claims = JSON.parse(atob(padded));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

function defaultUrl() {
  if (typeof location === "undefined") {
    throw new Error("agentwire: pass `url` outside a browser page");
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/**
 * A connection to one user's event stream that survives reconnects.
 *
 * States: "idle" (not started), "connecting" (handshake in flight), "open"
 * (connection_established received), "reconnecting" (waiting to retry), "closed" (stopped;
 * `connect()` starts again).
 */
export class AgentwireClient {
  /** @param {import("./client").ClientOptions} options */
  constructor(options) {
    if (!options || typeof options.getToken !== "function") {
      throw new TypeError("agentwire: `getToken` (a function returning a token) is required");
    }
    this._opts = {
      ...DEFAULTS,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
    };
    this._url = options.url || defaultUrl();
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._EventSource = options.EventSource || globalThis.EventSource;
    const transport = options.transport || "websocket";
    if (!TRANSPORTS.includes(transport)) {
      throw new TypeError(`agentwire: \`transport\` must be one of ${TRANSPORTS.join(", ")}`);
    }
    this._transport = transport;
    // "auto" starts on a WebSocket and moves to SSE for good when handshakes keep failing.
    this._useSse = transport === "sse";
    if (transport !== "sse" && typeof this._WebSocket !== "function") {
      throw new TypeError(
        "agentwire: no WebSocket here: pass `WebSocket` (Node 20: run node with " +
          "--experimental-websocket, or pass the `ws` package's WebSocket)",
      );
    }
    if (transport !== "websocket" && typeof this._EventSource !== "function") {
      throw new TypeError("agentwire: no EventSource here: pass `EventSource`");
    }
    this._sseUrl = options.sseUrl || streamUrl(this._url);
    this._handlers = new Map();
    this._state = "idle";
    this._ws = null;
    this._generation = 0;
    this._lastSeq = options.resume ? Number(options.resume.lastSeq) || 0 : 0;
    this._epoch = options.resume ? options.resume.epoch || null : null;
    this._connectionId = null;
    this._userId = null;
    this._reconnects = 0;
    this._attempt = 0;
    this._handshakeFailures = 0;
    this._tokenRefetched = false;
    this._needFreshToken = false;
    this._duplicates = 0;
    this._gaps = 0;
    this._lastClose = null;
    this._timers = new Set();
    this._heartbeatMs = 30000;
    this._lastReceived = 0;
    this._ackedSeq = this._lastSeq;
    for (const [name, key] of [
      ["*", "onEvent"],
      ["replay_gap", "onReplayGap"],
      ["state", "onStateChange"],
      ["error", "onError"],
    ]) {
      if (typeof options[key] === "function") this._add(name, options[key]);
    }
  }

  // ---- public API -------------------------------------------------------------------

  /**
   * Calls `handler(event)` for every event of `type` ("agent_started", …, "custom"), or of
   * every type with "*". Returns a function that removes the handler.
   */
  on(type, handler) {
    if (type !== "*" && !EVENT_TYPE_SET.has(type)) {
      throw new TypeError(`agentwire: unknown event type ${JSON.stringify(type)}`);
    }
    return this._add(type, handler);
  }

  /** Calls `handler({from_seq, to_seq})` when the server cannot deliver those events. */
  onReplayGap(handler) {
    return this._add("replay_gap", handler);
  }

  /** Calls `handler(snapshot)` whenever the state, last seq or reconnect count changes. */
  onStateChange(handler) {
    return this._add("state", handler);
  }

  /** Calls `handler(error)` for `error` frames, bad frames and failures worth reporting. */
  onError(handler) {
    return this._add("error", handler);
  }

  /** Starts (or, after "closed", restarts) connecting. Does nothing while active. */
  connect() {
    if (this._state === "connecting" || this._state === "open" || this._state === "reconnecting") {
      return;
    }
    this._attempt = 0;
    this._handshakeFailures = 0;
    this._tokenRefetched = false;
    this._lastClose = null;
    this._open(this._needFreshToken ? "token_invalid" : "initial");
  }

  /** Closes with 1000 and stops reconnecting. Events already received stay processed. */
  close() {
    this._generation++;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(CloseCode.NORMAL, "client closed");
      } catch {
        // Already closing.
      }
    }
    this._lastClose = { code: CloseCode.NORMAL, reason: "client closed", final: true };
    this._setState("closed");
  }

  /** The current state. */
  get state() {
    return this._state;
  }
  /** The `seq` of the newest event processed (0: none). */
  get lastSeq() {
    return this._lastSeq;
  }
  /** The epoch of the stream `lastSeq` belongs to, once known. */
  get epoch() {
    return this._epoch;
  }
  /** How many times the client reconnected after a connection had opened. */
  get reconnects() {
    return this._reconnects;
  }
  /** The snapshot handed to state handlers. */
  get snapshot() {
    return {
      state: this._state,
      lastSeq: this._lastSeq,
      epoch: this._epoch,
      reconnects: this._reconnects,
      connectionId: this._connectionId,
      userId: this._userId,
      handshakeFailures: this._handshakeFailures,
      duplicatesDropped: this._duplicates,
      replayGaps: this._gaps,
      lastClose: this._lastClose,
      transport: this._useSse ? "sse" : "websocket",
    };
  }

  // ---- connecting -------------------------------------------------------------------

  async _open(reason) {
    const generation = ++this._generation;
    this._clearTimers();
    this._setState("connecting");
    let established = false;
    // Bounds the whole attempt, getToken included: a server that accepts the TCP
    // connection and never answers, or a getToken that never settles, counts as a
    // failed handshake instead of holding the client in "connecting".
    if (this._opts.connectTimeoutMs > 0) {
      this._later(this._opts.connectTimeoutMs, () => {
        if (!established) this._abandon(this._ws, "no connection_established in time", false);
      }, generation);
    }
    const forceRefresh = reason !== "initial" && reason !== "reconnect";
    let token;
    try {
      token = await this._opts.getToken({ reason, forceRefresh });
    } catch (err) {
      if (generation !== this._generation) return;
      this._emit("error", { kind: "token", message: `getToken failed: ${describe(err)}`, cause: err });
      this._handshakeFailed(generation);
      return;
    }
    if (generation !== this._generation) return;
    if (typeof token !== "string" || token.length === 0) {
      this._emit("error", { kind: "token", message: "getToken returned no token" });
      this._handshakeFailed(generation);
      return;
    }
    this._needFreshToken = false;
    const sse = this._useSse;
    const url = new URL(sse ? this._sseUrl : this._url, typeof location === "undefined" ? undefined : location.href);
    url.searchParams.delete("last_seq");
    url.searchParams.delete("epoch");
    if (this._epoch) {
      url.searchParams.set("last_seq", String(this._lastSeq));
      url.searchParams.set("epoch", this._epoch);
    }
    let ws;
    try {
      if (sse) {
        // An EventSource cannot set headers: the token rides in the query (never logged).
        url.searchParams.set("token", token);
        ws = new SseSocket(this._EventSource, url.toString());
      } else {
        ws = new this._WebSocket(url.toString(), [SUBPROTOCOL, AUTH_SUBPROTOCOL_PREFIX + token]);
      }
    } catch (err) {
      this._emit("error", { kind: "socket", message: `cannot open a WebSocket: ${describe(err)}`, cause: err });
      this._handshakeFailed(generation);
      return;
    }
    this._ws = ws;
    ws.onmessage = (msg) => {
      if (generation !== this._generation) return;
      this._lastReceived = Date.now();
      const frame = parseFrame(msg.data);
      if (!frame) {
        this._emit("error", { kind: "frame", message: "the server sent a frame that is not a JSON object" });
        return;
      }
      if (frame.type === "connection_established") {
        established = true;
        this._established(frame, token, generation);
      } else if (established) {
        this._frame(frame);
      }
    };
    ws.onclose = (ev) => {
      if (generation !== this._generation) return;
      this._ws = null;
      this._closed(ev.code, ev.reason, established, generation);
    };
    ws.onerror = () => {
      // The close that follows decides what happens next; when none comes (Node 20's
      // WebSocket after a refused handshake), the attempt ends as a dropped connection.
      this._later(ERROR_CLOSE_GRACE_MS, () => {
        if (this._ws === ws) this._abandon(ws, "error without close", established);
      }, generation);
    };
  }

  _established(frame, token, generation) {
    const wasReconnect = this._connectionId !== null;
    if (frame.epoch !== this._epoch) {
      // A new stream: its seqs start over (a replay_gap tells the app what was void).
      this._lastSeq = 0;
      this._ackedSeq = 0;
    } else if (this._lastSeq > frame.last_seq) {
      this._lastSeq = frame.last_seq;
      this._ackedSeq = Math.min(this._ackedSeq, this._lastSeq);
    }
    this._epoch = frame.epoch;
    this._connectionId = frame.connection_id;
    this._userId = frame.user_id;
    this._heartbeatMs = Number(frame.heartbeat_interval_ms) > 0 ? Number(frame.heartbeat_interval_ms) : 30000;
    this._handshakeFailures = 0;
    this._tokenRefetched = false;
    this._lastClose = null;
    if (wasReconnect) this._reconnects++;
    this._setState("open");
    this._later(this._opts.stableAfterMs, () => {
      this._attempt = 0;
    }, generation);
    if (!this._useSse) {
      // An event stream carries no client frames: no ping, no refresh_token. Its server
      // sends heartbeat comments; an expired token ends it with 4002, and the reconnect
      // fetches a new one.
      this._startHeartbeat(generation);
      this._scheduleRefresh(token, generation);
    }
  }

  _frame(frame) {
    if (EVENT_TYPE_SET.has(frame.type) && typeof frame.seq === "number") {
      if (frame.seq <= this._lastSeq) {
        this._duplicates++;
        return;
      }
      this._lastSeq = frame.seq;
      this._dispatch(frame.type, frame);
      this._dispatch("*", frame);
      this._notify();
      this._scheduleAck();
      return;
    }
    switch (frame.type) {
      case "replay_gap":
        this._gaps++;
        this._dispatch("replay_gap", { from_seq: frame.from_seq, to_seq: frame.to_seq });
        this._notify();
        return;
      case "error":
        this._emit("error", { kind: "server", code: frame.code, message: frame.message });
        return;
      case "pong":
        return;
      default:
        // A newer server's frame: ignored (§4).
        return;
    }
  }

  _closed(code, reason, established, generation) {
    this._clearTimers();
    // A browser reports a refused handshake (401, 403) as 1006, like a dropped network;
    // any other code came from the server, which may close before connection_established
    // (4004, 1013), and is followed as the table says.
    const policy = established || code !== CloseCode.ABNORMAL ? closePolicy(code) : "handshake";
    this._lastClose = { code, reason: reason || "", final: false };
    switch (policy) {
      case "stop":
        this._lastClose.final = true;
        if (code !== CloseCode.NORMAL) {
          this._emit("error", { kind: "closed", code, message: `closed with ${code}: ${reason || "no reason"}` });
        }
        this._setState("closed");
        return;
      case "halt":
        this._lastClose.final = true;
        this._setState("closed");
        return;
      case "now":
        this._retry(jittered(this._opts.goingAwayDelayMs, 1), "reconnect", generation);
        return;
      case "token":
        this._needFreshToken = true;
        this._retry(
          code === CloseCode.TOKEN_EXPIRED ? jittered(this._opts.goingAwayDelayMs, 1) : this._nextBackoff(),
          code === CloseCode.TOKEN_EXPIRED ? "token_expired" : "token_invalid",
          generation,
        );
        return;
      case "backoff":
        this._retry(this._nextBackoff(), "reconnect", generation);
        return;
      default:
        this._handshakeFailed(generation);
    }
  }

  /** A connection attempt ended before connection_established: maybe a 401 we can't see. */
  _handshakeFailed(generation) {
    this._handshakeFailures++;
    const max = this._opts.maxHandshakeFailures;
    if (this._handshakeFailures >= max && this._transport === "auto" && !this._useSse) {
      // WebSockets do not get through (a proxy that breaks upgrades, say): the same
      // number of tries over Server-Sent Events, for the rest of this client's life.
      this._useSse = true;
      this._handshakeFailures = 0;
      this._emit("error", {
        kind: "transport",
        message: `${max} WebSocket handshakes failed: switching to Server-Sent Events`,
      });
      this._retry(this._nextBackoff(), "reconnect", generation);
      return;
    }
    if (this._handshakeFailures >= max) {
      if (this._tokenRefetched) {
        this._lastClose = {
          ...(this._lastClose || { code: CloseCode.ABNORMAL, reason: "" }),
          final: true,
        };
        this._emit("error", {
          kind: "handshake",
          message: `gave up after ${2 * max} failed handshakes, the last ${max} with a fresh token`,
        });
        this._setState("closed");
        return;
      }
      // Maybe a 401: the same number of tries again, with a token fetched anew.
      this._tokenRefetched = true;
      this._needFreshToken = true;
      this._handshakeFailures = 0;
    }
    this._retry(this._nextBackoff(), this._needFreshToken ? "handshake_failed" : "reconnect", generation);
  }

  _retry(delayMs, reason, generation) {
    if (generation !== this._generation) return;
    this._setState("reconnecting");
    this._later(delayMs, () => this._open(reason), generation);
  }

  _nextBackoff() {
    const { initialMs, maxMs, factor, jitter } = this._opts.backoff;
    const base = Math.min(maxMs, initialMs * Math.pow(factor, this._attempt));
    this._attempt++;
    return jittered(base, jitter);
  }

  // ---- keeping the connection useful ------------------------------------------------

  _startHeartbeat(generation) {
    // The server's pings are control frames a page never sees, so a quiet link is checked
    // with a `ping` frame; a missing `pong` is handled like a close without a code.
    const check = () => {
      const ws = this._ws;
      if (!ws || generation !== this._generation) return;
      const quiet = Date.now() - this._lastReceived;
      if (quiet < this._heartbeatMs) {
        this._later(this._heartbeatMs - quiet, check, generation);
        return;
      }
      this._send({ type: "ping" });
      const pinged = Date.now();
      this._later(this._opts.pongTimeoutMs, () => {
        if (this._lastReceived >= pinged || this._ws !== ws) return;
        this._abandon(ws, "no pong", true);
      }, generation);
      this._later(this._heartbeatMs, check, generation);
    };
    this._later(this._heartbeatMs, check, generation);
  }

  _scheduleAck() {
    if (!this._opts.ack || this._ackPending) return;
    this._ackPending = true;
    const generation = this._generation;
    this._later(this._opts.ackDelayMs, () => {
      this._ackPending = false;
      if (this._lastSeq > this._ackedSeq && this._send({ type: "ack", seq: this._lastSeq })) {
        this._ackedSeq = this._lastSeq;
      }
    }, generation);
  }

  _scheduleRefresh(token, generation) {
    const exp = tokenExpiryMs(token);
    const margin = this._opts.refreshBeforeExpiryMs;
    if (exp === null || !(margin > 0)) return;
    const left = exp - Date.now();
    // A token that lives less than twice the margin is refreshed halfway through what is
    // left of it: refreshing it "margin before exp" would mean at once, again and again.
    const delay = left - Math.min(margin, left / 2);
    if (!(delay >= MIN_REFRESH_DELAY_MS)) return;
    this._later(delay, async () => {
      let fresh;
      try {
        fresh = await this._opts.getToken({ reason: "refresh", forceRefresh: true });
      } catch (err) {
        this._emit("error", { kind: "token", message: `token refresh failed: ${describe(err)}`, cause: err });
        return;
      }
      if (generation !== this._generation || typeof fresh !== "string" || !fresh) return;
      const freshExp = tokenExpiryMs(fresh);
      if (freshExp !== null && freshExp <= exp) {
        // A cache that ignored forceRefresh: sending it extends nothing, and asking again
        // would ask in a loop. The server's 4002 at `exp` brings a reconnect instead.
        this._emit("error", {
          kind: "token",
          message: "getToken({ reason: \"refresh\" }) returned a token that expires no later than the one in use",
        });
        return;
      }
      if (this._send({ type: "refresh_token", token: fresh })) this._scheduleRefresh(fresh, generation);
    }, generation);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- plumbing ---------------------------------------------------------------------

  /**
   * Ends the attempt or connection on `ws` (or the attempt that has no socket yet) as if
   * it had closed with 1006: nothing of it is heard any more.
   */
  _abandon(ws, reason, established) {
    this._generation++;
    this._ws = null;
    if (ws) {
      try {
        ws.close();
      } catch {
        // Already closing.
      }
    }
    this._closed(CloseCode.ABNORMAL, reason, established, this._generation);
  }

  /** Calls `fn` after `ms`, unless the generation moved on (any `ms`, days included). */
  _later(ms, fn, generation) {
    if (ms > MAX_TIMER_MS) {
      // Re-armed against the deadline, so a late first step does not delay the second.
      const due = Date.now() + ms;
      this._later(MAX_TIMER_MS, () => this._later(due - Date.now(), fn, generation), generation);
      return;
    }
    const id = setTimeout(() => {
      this._timers.delete(id);
      if (generation === this._generation) fn();
    }, ms);
    this._timers.add(id);
  }

  _clearTimers() {
    for (const id of this._timers) clearTimeout(id);
    this._timers.clear();
    this._ackPending = false;
  }

  _add(name, handler) {
    if (typeof handler !== "function") throw new TypeError("agentwire: a handler must be a function");
    let set = this._handlers.get(name);
    if (!set) this._handlers.set(name, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  _dispatch(name, value) {
    const set = this._handlers.get(name);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(value);
      } catch (err) {
        // One broken handler must not stop delivery to the others.
        if (name !== "error") this._emit("error", { kind: "handler", message: `a ${name} handler threw: ${describe(err)}`, cause: err });
        else setTimeout(() => { throw err; });
      }
    }
  }

  _emit(name, value) {
    this._dispatch(name, value);
  }

  _setState(state) {
    this._state = state;
    this._notify();
  }

  _notify() {
    this._dispatch("state", this.snapshot);
  }
}

/**
 * Assembles streamed messages (`message_delta` … `message_completed`, docs/protocol.md
 * §4.2) from the events a client delivers, in the order it delivers them. A merged delta
 * (one carrying `from_seq`, §6.5) is just a longer piece. A message still open when its
 * run ends (`agent_completed`, `agent_error`) ends with it.
 */
export class MessageAccumulator {
  constructor() {
    /** @type {Map<string, {run_id: string|undefined, message_id: string, text: string, done: boolean}>} */
    this._messages = new Map();
  }

  /**
   * Takes any event; returns the message it changed (`{run_id, message_id, text, done}`),
   * or null when it changed none. Finished messages stay until `delete` or `clear`.
   */
  add(event) {
    if (!event || typeof event !== "object") return null;
    const data = event.data || {};
    switch (event.type) {
      case "message_delta": {
        const m = this._open(event.run_id, data.message_id);
        if (m.done) {
          // The id streams again after it completed: a new message (protocol §7).
          m.text = "";
          m.done = false;
        }
        m.text += typeof data.delta === "string" ? data.delta : "";
        return { ...m };
      }
      case "message_completed": {
        const m = this._open(event.run_id, data.message_id);
        if (typeof data.text === "string") m.text = data.text;
        m.done = true;
        return { ...m };
      }
      case "agent_completed":
      case "agent_error": {
        let last = null;
        for (const m of this._messages.values()) {
          if (m.run_id === event.run_id && !m.done) {
            m.done = true;
            last = { ...m };
          }
        }
        return last;
      }
      default:
        return null;
    }
  }

  /** The message `messageId` of run `runId`, or undefined. */
  get(runId, messageId) {
    const m = this._messages.get(key(runId, messageId));
    return m ? { ...m } : undefined;
  }

  /** Every message held, oldest first. */
  messages() {
    return [...this._messages.values()].map((m) => ({ ...m }));
  }

  /** Forgets the message `messageId` of run `runId`. */
  delete(runId, messageId) {
    return this._messages.delete(key(runId, messageId));
  }

  /** Forgets every message (after a `replay_gap`, say, before refetching). */
  clear() {
    this._messages.clear();
  }

  _open(runId, messageId) {
    const k = key(runId, messageId);
    let m = this._messages.get(k);
    if (!m) {
      m = { run_id: runId, message_id: String(messageId), text: "", done: false };
      this._messages.set(k, m);
    }
    return m;
  }
}

function key(runId, messageId) {
  return JSON.stringify([runId ?? null, String(messageId)]);
}

/** The transports a client may be given. */
const TRANSPORTS = Object.freeze(["websocket", "sse", "auto"]);

/** The event-stream URL next to a WebSocket URL: ws(s)://host/…/ws → http(s)://host/…/v1/stream. */
function streamUrl(wsUrl) {
  try {
    const url = new URL(wsUrl, typeof location === "undefined" ? undefined : location.href);
    if (url.protocol === "ws:") url.protocol = "http:";
    if (url.protocol === "wss:") url.protocol = "https:";
    url.pathname = url.pathname.endsWith("/ws") ? `${url.pathname.slice(0, -3)}/v1/stream` : "/v1/stream";
    return url.toString();
  } catch {
    return "/v1/stream";
  }
}

/**
 * `GET /v1/stream` (Server-Sent Events, docs/protocol.md §2.4) behind the few WebSocket
 * members the client uses: `onmessage`, `onclose({code, reason})`, `onerror`, `close()`,
 * `readyState`. The stream's final `close` event becomes the close with its code; an end
 * without one (the connection dropped, or a refused request) a close with 1006. The
 * EventSource's own reconnect is not used: the client reconnects by its rules, resuming
 * from the `seq` it holds, with a fresh token when it needs one.
 */
class SseSocket {
  constructor(EventSourceImpl, url) {
    this.readyState = 0;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this._done = false;
    this._es = new EventSourceImpl(url);
    this._es.onopen = () => {
      if (!this._done) this.readyState = 1;
    };
    this._es.onmessage = (msg) => {
      if (!this._done && this.onmessage) this.onmessage({ data: msg.data });
    };
    this._es.addEventListener("close", (msg) => {
      let code = CloseCode.ABNORMAL;
      let reason = "";
      try {
        const v = JSON.parse(msg.data);
        if (typeof v.code === "number") code = v.code;
        if (typeof v.reason === "string") reason = v.reason;
      } catch {
        // Not ours: the end is a dropped connection.
      }
      this._finish(code, reason);
    });
    this._es.onerror = () => this._finish(CloseCode.ABNORMAL, "");
  }

  /** Nothing can be sent on an event stream; the client's `_send` reports `false`. */
  send() {
    throw new Error("agentwire: an event stream carries no client frames");
  }

  close() {
    if (this._done) return;
    this._done = true;
    this.readyState = 3;
    this._es.close();
  }

  _finish(code, reason) {
    if (this._done) return;
    this.close();
    if (this.onclose) this.onclose({ code, reason });
  }
}

function jittered(ms, jitter) {
  const j = Math.min(1, Math.max(0, jitter));
  return Math.round(ms * (1 - j * Math.random()));
}

function parseFrame(data) {
  if (typeof data !== "string") return null;
  try {
    const v = JSON.parse(data);
    return v && typeof v === "object" && !Array.isArray(v) && typeof v.type === "string" ? v : null;
  } catch {
    return null;
  }
}

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}
