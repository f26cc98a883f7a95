// Tests of the client (src/client.js) under node against a scripted WebSocket: the
// close-code table, handshake failures, resume, duplicates, replay_gap, epochs. The
// browser test (tests/browser/demo.test.mjs) proves the same module in Chromium against a
// real server; these cover the cases a real server is slow or awkward to drive.
//
//   node --test clients/js/test/

import assert from "node:assert/strict";
import { test } from "node:test";

import { AgentwireClient, CloseCode } from "../src/client.js";
import { FAST, FakeSocket, flush, setup, socket } from "./support.mjs";

const settle = (ms = 40) => new Promise((r) => setTimeout(r, ms));

test("offers agentwire.v1 and the token subprotocol, calling getToken on every connect", async () => {
  const { client, tokens } = setup();
  client.connect();
  const ws = await socket(1);
  assert.deepEqual(ws.protocols, ["agentwire.v1", "agentwire.auth.tok1"]);
  assert.equal(ws.url.search, "", "a first connect has no resume point");
  ws.accept();
  ws.serverClose(CloseCode.GOING_AWAY);
  const again = await socket(2);
  assert.deepEqual(again.protocols, ["agentwire.v1", "agentwire.auth.tok2"]);
  assert.deepEqual(tokens.map((t) => t.reason), ["initial", "reconnect"]);
  client.close();
});

test("drops duplicates by seq and resumes with last_seq and epoch", async () => {
  const { client } = setup();
  const seen = [];
  client.on("custom", (e) => seen.push(e.seq));
  client.connect();
  const ws = await socket(1);
  ws.accept({ epoch: "e_A" });
  for (const seq of [1, 2, 2, 3, 1]) ws.event(seq);
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(client.snapshot.duplicatesDropped, 2);
  ws.serverClose(CloseCode.INTERNAL_ERROR);
  const ws2 = await socket(2);
  assert.equal(ws2.url.searchParams.get("last_seq"), "3");
  assert.equal(ws2.url.searchParams.get("epoch"), "e_A");
  ws2.accept({ epoch: "e_A", last_seq: 5, resumed: true });
  for (const seq of [3, 4, 5]) ws2.event(seq);
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  assert.equal(client.reconnects, 1);
  client.close();
});

test("typed handlers see only their type; '*' sees all", async () => {
  const { client } = setup();
  const started = [];
  const all = [];
  client.on("agent_started", (e) => started.push(e.seq));
  client.on("*", (e) => all.push(e.type));
  assert.throws(() => client.on("agent_startd", () => {}), TypeError);
  client.connect();
  const ws = await socket(1);
  ws.accept();
  ws.event(1, "agent_started");
  ws.event(2, "agent_thinking");
  assert.deepEqual(started, [1]);
  assert.deepEqual(all, ["agent_started", "agent_thinking"]);
  client.close();
});

test("surfaces replay_gap and starts over in a new epoch", async () => {
  const { client } = setup({ resume: { lastSeq: 7, epoch: "e_old" } });
  const gaps = [];
  const seen = [];
  client.onReplayGap((g) => gaps.push(g));
  client.on("*", (e) => seen.push(e.seq));
  client.connect();
  const ws = await socket(1);
  assert.equal(ws.url.searchParams.get("last_seq"), "7");
  ws.accept({ epoch: "e_new", last_seq: 2 });
  ws.frame({ type: "replay_gap", from_seq: 1, to_seq: 7 });
  ws.event(1);
  ws.event(2);
  assert.deepEqual(gaps, [{ from_seq: 1, to_seq: 7 }]);
  assert.deepEqual(seen, [1, 2]);
  assert.equal(client.epoch, "e_new");
  client.close();
});

for (const code of [CloseCode.REPLACED, CloseCode.REJECTED]) {
  test(`never reconnects by itself after ${code}; connect() starts again`, async () => {
    const { client, states } = setup();
    client.connect();
    const ws = await socket(1);
    ws.accept();
    ws.serverClose(code);
    await settle();
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(client.state, "closed");
    assert.deepEqual(client.snapshot.lastClose, { code, reason: "", final: true });
    assert.equal(states.at(-1), "closed");
    client.connect();
    await socket(2);
    client.close();
  });
}

test("4004 before connection_established is final too", async () => {
  const { client } = setup();
  client.connect();
  const ws = await socket(1);
  ws.serverClose(CloseCode.REJECTED);
  await settle();
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(client.state, "closed");
});

for (const code of [CloseCode.TOKEN_INVALID, CloseCode.TOKEN_EXPIRED]) {
  test(`fetches a fresh token after ${code}`, async () => {
    const { client, tokens } = setup();
    client.connect();
    const ws = await socket(1);
    ws.accept();
    ws.event(1);
    ws.serverClose(code);
    const ws2 = await socket(2);
    assert.equal(tokens[1].forceRefresh, true);
    assert.equal(tokens[1].reason, code === CloseCode.TOKEN_EXPIRED ? "token_expired" : "token_invalid");
    assert.equal(ws2.url.searchParams.get("last_seq"), "1", "and resumes");
    client.close();
  });
}

for (const code of [CloseCode.NORMAL, CloseCode.PROTOCOL_ERROR, CloseCode.MESSAGE_TOO_BIG]) {
  test(`stops after ${code}`, async () => {
    const { client } = setup();
    const errors = [];
    client.onError((e) => errors.push(e.kind));
    client.connect();
    const ws = await socket(1);
    ws.accept();
    ws.serverClose(code);
    await settle();
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(client.state, "closed");
    assert.deepEqual(errors, code === CloseCode.NORMAL ? [] : ["closed"]);
  });
}

test("after failed handshakes fetches a new token, then gives up", async () => {
  const { client, tokens } = setup({ maxHandshakeFailures: 3 });
  const errors = [];
  client.onError((e) => errors.push(e.kind));
  client.connect();
  for (let n = 1; n <= 6; n++) (await socket(n)).serverClose(CloseCode.ABNORMAL);
  await settle();
  assert.equal(FakeSocket.all.length, 6, "no attempt after giving up");
  assert.equal(client.state, "closed");
  assert.deepEqual(errors, ["handshake"]);
  assert.deepEqual(
    tokens.map((t) => t.forceRefresh),
    [false, false, false, true, false, false],
    "the fourth attempt fetches a fresh token",
  );
});

test("a successful handshake resets the failure count", async () => {
  const { client } = setup({ maxHandshakeFailures: 2 });
  client.connect();
  (await socket(1)).serverClose(CloseCode.ABNORMAL);
  (await socket(2)).accept();
  assert.equal(client.snapshot.handshakeFailures, 0);
  FakeSocket.all[1].serverClose(CloseCode.ABNORMAL);
  for (let n = 3; n <= 6; n++) (await socket(n)).serverClose(CloseCode.ABNORMAL);
  await settle();
  assert.equal(client.state, "closed");
  assert.equal(FakeSocket.all.length, 6);
});

test("backs off exponentially with jitter, capped", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"] });
  FakeSocket.all = [];
  const client = new AgentwireClient({
    url: "ws://agentwire.test/ws",
    WebSocket: FakeSocket,
    backoff: { initialMs: 1000, maxMs: 8000, factor: 2, jitter: 0.5 },
    maxHandshakeFailures: Infinity,
    ack: false,
    getToken: () => "t",
  });
  client.connect();
  await flush();
  // With jitter 0.5 each delay lies between half its base and the base.
  for (const [i, base] of [1000, 2000, 4000, 8000, 8000].entries()) {
    FakeSocket.all[i].serverClose(CloseCode.ABNORMAL);
    t.mock.timers.tick(base / 2 - 1);
    await flush();
    assert.equal(FakeSocket.all.length, i + 1, `attempt ${i + 2} came before ${base / 2} ms`);
    t.mock.timers.tick(base / 2 + 1);
    await flush();
    assert.equal(FakeSocket.all.length, i + 2, `attempt ${i + 2} did not come within ${base} ms`);
  }
  client.close();
});

test("a getToken that throws is reported and retried", async () => {
  FakeSocket.all = [];
  let calls = 0;
  const errors = [];
  const client = new AgentwireClient({
    url: "ws://agentwire.test/ws",
    WebSocket: FakeSocket,
    backoff: FAST,
    getToken: () => {
      calls++;
      if (calls === 1) throw new Error("offline");
      return "t";
    },
  });
  client.onError((e) => errors.push(e.message));
  client.connect();
  (await socket(1)).accept();
  assert.equal(client.state, "open");
  assert.match(errors[0], /offline/);
  client.close();
});

test("acks processed events, batched", async () => {
  const { client } = setup({ ack: true, ackDelayMs: 5 });
  client.connect();
  const ws = await socket(1);
  ws.accept();
  ws.event(1);
  ws.event(2);
  await settle(30);
  assert.deepEqual(ws.sent, [{ type: "ack", seq: 2 }]);
  client.close();
});
