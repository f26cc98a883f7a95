// The client's Server-Sent Events transport (`transport: "sse"` and "auto") under node,
// against a scripted EventSource: the same frames, dedupe and resume as on a WebSocket,
// the final `close` event followed as a close code, and the move from a WebSocket that
// keeps failing to an event stream. tests/browser/sse.test.mjs runs it in Chromium.

import assert from "node:assert/strict";
import { test } from "node:test";

import { CloseCode } from "../src/client.js";
import { FakeSocket, setup, socket } from "./support.mjs";

/** An EventSource the test plays the server of. */
class FakeEventSource {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  addEventListener(name, fn) {
    this.listeners.set(name, fn);
  }
  close() {
    this.closed = true;
  }
  // --- the server's side ---
  message(obj) {
    this.onmessage({ data: JSON.stringify(obj) });
  }
  accept(fields = {}) {
    this.onopen?.();
    this.message({
      type: "connection_established",
      connection_id: `c_${FakeEventSource.all.length}`,
      user_id: "u1",
      epoch: "e_1",
      heartbeat_interval_ms: 30000,
      last_seq: 0,
      resumed: false,
      ...fields,
    });
  }
  event(seq) {
    this.message({ type: "custom", seq, event_id: `ev${seq}`, ts: 1, data: { name: "n", value: seq } });
  }
  end(code) {
    this.listeners.get("close")({ data: JSON.stringify({ code, reason: "r" }) });
    this.onerror({ type: "error" });
  }
  drop() {
    this.onerror({ type: "error" });
  }
}

async function stream(n) {
  const deadline = Date.now() + 2000;
  while (FakeEventSource.all.length < n) {
    if (Date.now() > deadline) throw new Error(`no event source #${n}`);
    await new Promise((r) => setTimeout(r, 1));
  }
  return FakeEventSource.all[n - 1];
}

test("an event stream delivers once, in order, and resumes from the seq it holds", async () => {
  FakeEventSource.all = [];
  const { client } = setup({ transport: "sse", EventSource: FakeEventSource });
  const seen = [];
  client.on("custom", (e) => seen.push(e.seq));
  client.connect();
  const es = await stream(1);
  assert.equal(es.url.origin + es.url.pathname, "http://agentwire.test/v1/stream");
  assert.equal(es.url.searchParams.get("token"), "tok1");
  es.accept({ epoch: "e_A" });
  for (const seq of [1, 2, 2, 3]) es.event(seq);
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(client.snapshot.transport, "sse");
  // The connection drops: the client reconnects by itself, from seq 3 of epoch e_A.
  es.drop();
  assert.ok(es.closed, "the EventSource's own reconnect is not used");
  const again = await stream(2);
  assert.equal(again.url.searchParams.get("last_seq"), "3");
  assert.equal(again.url.searchParams.get("epoch"), "e_A");
  again.accept({ epoch: "e_A", resumed: true, last_seq: 4 });
  for (const seq of [3, 4]) again.event(seq);
  assert.deepEqual(seen, [1, 2, 3, 4]);
  assert.equal(client.reconnects, 1);
  client.close();
});

test("the stream's final close event is followed like a close code", async () => {
  FakeEventSource.all = [];
  const { client } = setup({ transport: "sse", EventSource: FakeEventSource });
  client.connect();
  const es = await stream(1);
  es.accept();
  es.end(CloseCode.REPLACED);
  assert.equal(client.state, "closed");
  assert.equal(client.snapshot.lastClose.code, 4003);
  assert.equal(FakeEventSource.all.length, 1, "4003 does not reconnect");
});

test("'auto' moves to an event stream when WebSocket handshakes keep failing", async () => {
  FakeEventSource.all = [];
  const { client, errors } = setup({ transport: "auto", EventSource: FakeEventSource });
  client.connect();
  for (let n = 1; n <= 3; n++) {
    const ws = await socket(n);
    ws.serverClose(CloseCode.ABNORMAL);
  }
  const es = await stream(1);
  es.accept();
  assert.equal(client.state, "open");
  assert.equal(client.snapshot.transport, "sse");
  assert.ok(errors.some((e) => e.kind === "transport"), JSON.stringify(errors));
  assert.equal(FakeSocket.all.length, 3);
  client.close();
  assert.ok(es.closed);
});
