// The client on the platform's own WebSocket, over real loopback sockets: a local HTTP
// server that refuses every handshake (Node 20's built-in WebSocket then sends `error`
// and never `close`, issue 19), and a real agentwire server when the e2e harness
// (tests/tests/e2e_browser.rs) names one in AGENTWIRE_URL, AGENTWIRE_USER,
// AGENTWIRE_TOKEN and AGENTWIRE_API_KEY.
//
//   node --test clients/js/tests/     (Node 20: NODE_OPTIONS=--experimental-websocket)

import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { AgentwireClient } from "../src/client.js";

/** Every wait here ends by this; a test that reaches it fails. */
const WAIT_MS = 20000;

const FAST = { initialMs: 10, maxMs: 50, factor: 2, jitter: 0 };

/** Why the platform has no WebSocket to test, or null. Fails under CI instead. */
function noWebSocket() {
  if (typeof globalThis.WebSocket === "function") return null;
  const why = "this node has no global WebSocket (Node 20: NODE_OPTIONS=--experimental-websocket)";
  assert.notEqual(process.env.CI, "true", `${why}: required in CI`);
  return why;
}

const server = process.env.AGENTWIRE_URL
  ? {
      url: process.env.AGENTWIRE_URL,
      user: process.env.AGENTWIRE_USER,
      token: process.env.AGENTWIRE_TOKEN,
      apiKey: process.env.AGENTWIRE_API_KEY,
    }
  : null;
const NO_SERVER = "no agentwire server named (AGENTWIRE_URL): tests/tests/e2e_browser.rs runs this with one";

/** Resolves with the first snapshot for which `check` holds; rejects after WAIT_MS. */
function until(client, what, check) {
  return new Promise((resolve, reject) => {
    if (check(client.snapshot)) return resolve(client.snapshot);
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${what}; state ${JSON.stringify(client.snapshot)}`));
    }, WAIT_MS);
    const off = client.onStateChange((s) => {
      if (!check(s)) return;
      clearTimeout(timer);
      off();
      resolve(s);
    });
  });
}

/** A client that gives up after two failed handshakes with a fresh token. */
function refusedClient(url, getToken) {
  const client = new AgentwireClient({ url, getToken, backoff: FAST, maxHandshakeFailures: 2, ack: false });
  const errors = [];
  client.onError((e) => errors.push(e.kind));
  return { client, errors };
}

test("a refused handshake ends in closed, not in connecting", async (t) => {
  const why = noWebSocket();
  if (why) return t.skip(why);
  let handshakes = 0;
  const refusing = http.createServer((req, res) => res.writeHead(404).end());
  refusing.on("upgrade", (req, socket) => {
    handshakes++;
    socket.end("HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
  });
  await new Promise((resolve) => refusing.listen(0, "127.0.0.1", resolve));
  try {
    const { client, errors } = refusedClient(`ws://127.0.0.1:${refusing.address().port}/ws`, () => "t");
    client.connect();
    const s = await until(client, "the client to give up", (s) => s.state === "closed");
    assert.equal(s.lastClose.final, true);
    assert.deepEqual(errors, ["handshake"]);
    assert.equal(handshakes, 4, "two tries, two more with a fresh token");
  } finally {
    refusing.close();
  }
});

test("agentwire: a bad token ends in closed after the refused handshakes", { skip: !server && NO_SERVER }, async (t) => {
  const why = noWebSocket();
  if (why) return t.skip(why);
  const { client, errors } = refusedClient(server.url, () => "not-a-jwt");
  client.connect();
  await until(client, "the client to give up", (s) => s.state === "closed");
  assert.deepEqual(errors, ["handshake"]);
});

test("agentwire: connects with a token and receives a published event", { skip: !server && NO_SERVER }, async (t) => {
  const why = noWebSocket();
  if (why) return t.skip(why);
  const client = new AgentwireClient({ url: server.url, getToken: () => server.token, backoff: FAST });
  const events = [];
  client.on("*", (e) => events.push(e));
  client.connect();
  try {
    const open = await until(client, "the connection to open", (s) => s.state === "open");
    assert.equal(open.userId, server.user);
    const base = server.url.replace(/^ws/, "http").replace(/\/ws$/, "");
    const published = await fetch(`${base}/v1/events`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ user_id: server.user, type: "custom", data: { name: "hello", value: 1 } }),
    });
    const answer = await published.text();
    assert.equal(published.status, 200, answer);
    const { results } = JSON.parse(answer);
    await until(client, "the event", () => events.length > 0);
    assert.equal(events[0].type, "custom");
    assert.equal(events[0].data.name, "hello");
    assert.equal(events[0].seq, results[0].seq);
  } finally {
    client.close();
  }
});
