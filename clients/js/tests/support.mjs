// What the client tests share: a WebSocket the test plays the server of, and a client
// wired to it.

import { AgentwireClient } from "../src/client.js";

/** A WebSocket the test plays the server of. */
export class FakeSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = new URL(url);
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) {
    const frame = JSON.parse(text);
    this.sent.push(frame);
    // The liveness check must not end connections that tests keep open for long.
    if (frame.type === "ping") queueMicrotask(() => this.readyState === 1 && this.frame({ type: "pong" }));
  }
  close() {
    this.readyState = 3;
  }
  // --- the server's side ---
  accept(fields = {}) {
    this.readyState = 1;
    this.frame({
      type: "connection_established",
      connection_id: `c_${FakeSocket.all.length}`,
      user_id: "u1",
      epoch: "e_1",
      heartbeat_interval_ms: 30000,
      last_seq: 0,
      resumed: false,
      ...fields,
    });
  }
  frame(obj) {
    this.onmessage({ data: JSON.stringify(obj) });
  }
  event(seq, type = "custom") {
    this.frame({ type, seq, event_id: `ev${seq}`, ts: 1, run_id: "r1", data: { name: "n", value: seq } });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose({ code, reason });
  }
  /** An `error` with no `close` after it: Node 20's WebSocket after a refused handshake. */
  failWithoutClose() {
    this.onerror({ type: "error" });
  }
}

export const FAST = { initialMs: 2, maxMs: 10, factor: 2, jitter: 0 };

/**
 * A client on a FakeSocket with fast backoff and no acks; `token(n)` is what the n-th
 * getToken call (1-based) returns. `tokens` collects every request getToken got.
 */
export function setup(options = {}, token = (n) => `tok${n}`) {
  FakeSocket.all = [];
  const tokens = [];
  const client = new AgentwireClient({
    url: "ws://agentwire.test/ws",
    WebSocket: FakeSocket,
    backoff: FAST,
    goingAwayDelayMs: 1,
    ack: false,
    getToken: (request) => {
      tokens.push(request);
      return token(tokens.length);
    },
    ...options,
  });
  const states = [];
  client.onStateChange((s) => states.push(s.state));
  const errors = [];
  client.onError((e) => errors.push(e));
  return { client, tokens, states, errors };
}

/** The `n`-th socket (1-based), once the client opened it. */
export async function socket(n) {
  const deadline = Date.now() + 2000;
  while (FakeSocket.all.length < n) {
    if (Date.now() > deadline) throw new Error(`no socket #${n} (have ${FakeSocket.all.length})`);
    await new Promise((r) => setTimeout(r, 1));
  }
  return FakeSocket.all[n - 1];
}


/**
 * Lets pending promise callbacks run (the client awaits getToken before it opens a
 * socket). Works under `mock.timers`, which leaves setImmediate alone.
 */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** An unsigned JWT for user u1 that expires at `expMs` (the client only reads `exp`). */
export function jwt(expMs) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: "u1", exp: Math.floor(expMs / 1000) })}.sig`;
}
