// The client's timers under fake time (node:test's mock.timers, Date included): token
// refresh for tokens that live very long or very short, and attempts that would otherwise
// wait for ever (issue 19).
//
//   node --test clients/js/tests/

import assert from "node:assert/strict";
import { test } from "node:test";

import { AgentwireClient, CloseCode } from "../src/client.js";
import { FakeSocket, flush, jwt, setup } from "./support.mjs";

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const DAY = 24 * 60 * MINUTE;
const START = Date.UTC(2026, 0, 1);

/** Advances fake time by `ms` in steps of `step`, letting promises settle after each. */
async function advance(t, ms, step) {
  for (let done = 0; done < ms; done += step) {
    t.mock.timers.tick(Math.min(step, ms - done));
    await flush();
  }
}

function fakeTime(t) {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: START });
}

/** The `refresh_token` frames the client sent on `ws`. */
function refreshes(ws) {
  return ws.sent.filter((f) => f.type === "refresh_token");
}

test("a token living longer than 24.8 days is refreshed once, a minute before it expires", async (t) => {
  fakeTime(t);
  const life = 30 * DAY;
  const { client, tokens } = setup({}, () => jwt(Date.now() + life));
  client.connect();
  await flush();
  const ws = FakeSocket.all[0];
  ws.accept();
  // A delay past 2^31 - 1 ms fires at once: this used to ask for 1,411 tokens in 2 s.
  await advance(t, 2 * SECOND, 10);
  assert.equal(tokens.length, 1, "getToken was called again at once");
  assert.deepEqual(refreshes(ws), []);

  await advance(t, life - MINUTE - 2 * SECOND - SECOND, DAY);
  assert.equal(tokens.length, 1, "refreshed too early");
  await advance(t, 2 * SECOND, 100);
  assert.equal(tokens.length, 2, "not refreshed a minute before exp");
  assert.equal(tokens[1].reason, "refresh");
  assert.equal(tokens[1].forceRefresh, true);
  assert.equal(refreshes(ws).length, 1);
  client.close();
});

test("a token shorter than the refresh margin is refreshed halfway through its life, not every second", async (t) => {
  fakeTime(t);
  const life = 30 * SECOND; // the margin is 60 s
  const { client, tokens } = setup({}, () => jwt(Date.now() + life));
  client.connect();
  await flush();
  const ws = FakeSocket.all[0];
  ws.accept();
  await advance(t, 2 * MINUTE, 100);
  // Every 15 s for two minutes: 8, where it used to be one a second.
  assert.equal(refreshes(ws).length, 8);
  assert.ok(tokens.slice(1).every((r) => r.reason === "refresh"));
  assert.equal(client.state, "open");
  client.close();
});

test("a refresh that hands back the token in use is reported once, not asked for again", async (t) => {
  fakeTime(t);
  const same = jwt(START + 10 * MINUTE);
  const { client, tokens, errors } = setup({}, () => same);
  client.connect();
  await flush();
  const ws = FakeSocket.all[0];
  ws.accept();
  await advance(t, 10 * MINUTE, SECOND);
  assert.equal(tokens.length, 2, "one refresh attempt, at 9 minutes");
  assert.deepEqual(refreshes(ws), []);
  assert.deepEqual(errors.map((e) => e.kind), ["token"]);
  // At exp the server closes with 4002; the reconnect asks for a fresh token.
  ws.serverClose(CloseCode.TOKEN_EXPIRED);
  await advance(t, SECOND, 10);
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(tokens[2].reason, "token_expired");
  client.close();
});

test("a token about to expire is not refreshed: the server's 4002 leads to a new token", async (t) => {
  fakeTime(t);
  const { client, tokens } = setup({}, () => jwt(Date.now() + SECOND));
  client.connect();
  await flush();
  FakeSocket.all[0].accept();
  await advance(t, 5 * SECOND, 10);
  assert.equal(tokens.length, 1);
  client.close();
});

test("an error with no close after it ends the attempt (Node 20's WebSocket after a refused handshake)", async (t) => {
  fakeTime(t);
  const { client, errors } = setup({ maxHandshakeFailures: 2 });
  client.connect();
  await flush();
  FakeSocket.all[0].failWithoutClose();
  await advance(t, 999, 1);
  assert.equal(client.state, "connecting", "the close may still come");
  await advance(t, 1, 1);
  assert.equal(client.state, "reconnecting");
  assert.equal(FakeSocket.all[0].readyState, 3, "the socket was closed");
  assert.equal(client.snapshot.handshakeFailures, 1);
  // Every attempt fails the same way: two, a fresh token, two more, then it gives up.
  for (let n = 2; n <= 4; n++) {
    await advance(t, 20, 1);
    assert.equal(FakeSocket.all.length, n);
    FakeSocket.all[n - 1].failWithoutClose();
    await advance(t, SECOND, 100);
  }
  assert.equal(client.state, "closed");
  assert.deepEqual(errors.map((e) => e.kind), ["handshake"]);
});

test("an error followed by its close is handled once, by the close", async (t) => {
  fakeTime(t);
  const { client } = setup();
  client.connect();
  await flush();
  const ws = FakeSocket.all[0];
  ws.accept();
  ws.failWithoutClose();
  ws.serverClose(CloseCode.GOING_AWAY);
  await advance(t, 5 * SECOND, 10);
  assert.equal(FakeSocket.all.length, 2, "one reconnect, not two");
  assert.equal(client.state, "connecting");
  client.close();
});

test("an attempt with no connection_established is abandoned after connectTimeoutMs", async (t) => {
  fakeTime(t);
  const { client } = setup({ connectTimeoutMs: 5 * SECOND });
  client.connect();
  await flush();
  await advance(t, 5 * SECOND - 1, 100);
  assert.equal(client.state, "connecting");
  await advance(t, 1, 1);
  assert.equal(client.state, "reconnecting");
  assert.equal(FakeSocket.all[0].readyState, 3);
  await advance(t, 20, 1);
  assert.equal(FakeSocket.all.length, 2);
  // An established connection is not timed out.
  FakeSocket.all[1].accept();
  await advance(t, 10 * SECOND, SECOND);
  assert.equal(client.state, "open");
  client.close();
});

test("a getToken that never settles is bounded by connectTimeoutMs too", async (t) => {
  fakeTime(t);
  const { client, tokens } = setup({ connectTimeoutMs: 5 * SECOND }, (n) =>
    n === 1 ? new Promise(() => {}) : `tok${n}`,
  );
  client.connect();
  await advance(t, 5 * SECOND, 100);
  assert.equal(client.state, "reconnecting");
  await advance(t, 20, 1);
  assert.equal(tokens.length, 2);
  assert.equal(FakeSocket.all.length, 1);
  client.close();
});

test("without a WebSocket the constructor says what to pass", () => {
  const global = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    assert.throws(
      () => new AgentwireClient({ url: "ws://agentwire.test/ws", getToken: () => "t" }),
      /--experimental-websocket/,
    );
  } finally {
    globalThis.WebSocket = global;
  }
});
