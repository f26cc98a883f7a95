// Streamed text: the client delivers message_delta and message_completed like every event,
// and MessageAccumulator assembles them — merged deltas included — into messages.
//
//   node --test clients/js/tests/

import assert from "node:assert/strict";
import { test } from "node:test";

import { EVENT_TYPES, MessageAccumulator } from "../src/client.js";
import { setup, socket } from "./support.mjs";

const delta = (seq, text, extra = {}) => ({
  type: "message_delta",
  seq,
  event_id: `e${seq}`,
  ts: seq,
  run_id: "r1",
  data: { message_id: "m1", delta: text },
  ...extra,
});

test("the streamed-text events are event types the client delivers", async () => {
  assert.ok(EVENT_TYPES.includes("message_delta"));
  assert.ok(EVENT_TYPES.includes("message_completed"));
  const { client } = setup();
  const texts = [];
  client.on("message_delta", (e) => texts.push(e.data.delta));
  client.connect();
  const ws = await socket(1);
  ws.accept({ epoch: "e_A" });
  ws.frame(delta(1, "Three "));
  ws.frame(delta(3, "flights found.", { from_seq: 2 }));
  ws.frame(delta(3, "again"));
  assert.deepEqual(texts, ["Three ", "flights found."], "a repeat by seq is dropped");
  assert.equal(client.lastSeq, 3);
  client.close();
});

test("the accumulator assembles deltas, merged ones too, and ends a message once", () => {
  const acc = new MessageAccumulator();
  assert.equal(acc.add({ type: "agent_started", seq: 1, run_id: "r1", data: {} }), null);
  assert.deepEqual(acc.add(delta(2, "Three ")), { run_id: "r1", message_id: "m1", text: "Three ", done: false });
  acc.add(delta(5, "flights ", { from_seq: 3 }));
  const done = acc.add({ type: "message_completed", seq: 6, run_id: "r1", data: { message_id: "m1" } });
  assert.deepEqual(done, { run_id: "r1", message_id: "m1", text: "Three flights ", done: true });
  // The whole text, when message_completed carries it, wins.
  acc.add({ type: "message_completed", seq: 7, run_id: "r1", data: { message_id: "m1", text: "Three flights found." } });
  assert.equal(acc.get("r1", "m1").text, "Three flights found.");
});

test("a message open when its run ends ends with it; other runs' messages stay open", () => {
  const acc = new MessageAccumulator();
  acc.add(delta(1, "partial"));
  acc.add({ ...delta(2, "other"), run_id: "r2" });
  const ended = acc.add({ type: "agent_error", seq: 3, run_id: "r1", data: { message: "boom" } });
  assert.deepEqual(ended, { run_id: "r1", message_id: "m1", text: "partial", done: true });
  assert.equal(acc.get("r2", "m1").done, false);
  assert.equal(acc.messages().length, 2);
  acc.clear();
  assert.deepEqual(acc.messages(), []);
});
