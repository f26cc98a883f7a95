// The React example's store (examples/react/agentwireStore.js) under node, against a
// scripted WebSocket; and that the hook's module parses (React itself is not installed).
//
//   node --test clients/js/tests/

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import { CloseCode } from "../src/client.js";
import { createAgentwireStore } from "../examples/react/agentwireStore.js";
import { FAST, FakeSocket, socket } from "./support.mjs";

function store(maxEvents) {
  FakeSocket.all = [];
  const options = { url: "ws://agentwire.test/ws", WebSocket: FakeSocket, backoff: FAST, ack: false, getToken: () => "t" };
  return createAgentwireStore(options, { maxEvents });
}

test("the store's snapshot follows the connection and keeps the newest events", async () => {
  const s = store(3);
  let changes = 0;
  const unsubscribe = s.subscribe(() => changes++);
  const first = s.getSnapshot();
  assert.equal(first.connection.state, "idle");
  s.client.connect();
  const ws = await socket(1);
  ws.accept();
  assert.equal(s.getSnapshot().connection.state, "open");
  for (const seq of [1, 2, 3, 4]) ws.event(seq);
  const now = s.getSnapshot();
  assert.deepEqual(now.events.map((e) => e.seq), [2, 3, 4], "bounded by maxEvents");
  assert.equal(now.connection.lastSeq, 4);
  assert.deepEqual(first.events, [], "a snapshot is never changed, only replaced");
  assert.equal(s.getSnapshot(), s.getSnapshot(), "stable between changes");
  ws.frame({ type: "replay_gap", from_seq: 5, to_seq: 9 });
  assert.deepEqual(s.getSnapshot().gaps, [{ from_seq: 5, to_seq: 9 }]);
  const seen = changes;
  unsubscribe();
  ws.serverClose(CloseCode.NORMAL);
  assert.equal(changes, seen, "an unsubscribed listener hears nothing");
  assert.equal(s.getSnapshot().connection.state, "closed");
});

test("the React hook's module parses", () => {
  const hook = fileURLToPath(new URL("../examples/react/useAgentwire.js", import.meta.url));
  execFileSync(process.execPath, ["--check", hook]);
});
