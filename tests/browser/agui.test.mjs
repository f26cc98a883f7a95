// The AG-UI projection against a running agentwire server, checked with @ag-ui/core's own
// schemas (pinned in package-lock.json): every event of `GET /v1/stream?format=ag-ui`
// parses as an AG-UI event, and the stream keeps the order rules AG-UI clients rely on —
// per run, one RUN_STARTED first; every reasoning message, text message and tool call
// started before its content and ended before RUN_FINISHED/RUN_ERROR; nothing after them.
//
//   AGENTWIRE_HTTP=http://127.0.0.1:PORT AGENTWIRE_API_KEY=KEY \
//   AGENTWIRE_TOKENS='{"user":"jwt",…}' node --test tests/browser/agui.test.mjs
//
// Run by tests/tests/e2e_agui.rs, which starts the server and mints the tokens.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { EventSchema } from "@ag-ui/core/schemas";

const BASE = (process.env.AGENTWIRE_HTTP || "").replace(/\/$/, "");
const API_KEY = process.env.AGENTWIRE_API_KEY;
const TOKENS = JSON.parse(process.env.AGENTWIRE_TOKENS || "{}");
const WAIT = 10_000;

const skip = !BASE || !API_KEY ? "AGENTWIRE_HTTP and AGENTWIRE_API_KEY are not set" : false;

/** The projection's golden files (crates/protocol/tests/golden-ag-ui). */
const GOLDEN = new URL("../../crates/protocol/tests/golden-ag-ui/", import.meta.url);

test("every event of the projection's golden files parses with @ag-ui/core", () => {
  const files = readdirSync(GOLDEN).filter((f) => f.endsWith(".json"));
  assert.ok(files.length >= 12, `golden files: ${files}`);
  for (const file of files) {
    const events = JSON.parse(readFileSync(new URL(file, GOLDEN), "utf8"));
    assert.ok(Array.isArray(events) && events.length > 0, file);
    for (const e of events) {
      const parsed = EventSchema.safeParse(e);
      assert.ok(parsed.success, `${file}: not a valid AG-UI event: ${JSON.stringify(e)}\n${parsed.error}`);
    }
  }
});

/** Publishes agentwire events for `user` through the publish API. */
async function publish(user, events) {
  const body = events.map((e) => ({ user_id: user, ...e }));
  const res = await fetch(`${BASE}/v1/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200, await res.text());
}

/** An open `/v1/stream?format=ag-ui`: its SSE messages, parsed as they arrive. */
async function openStream(user, headers = {}) {
  const controller = new AbortController();
  const res = await fetch(`${BASE}/v1/stream?format=ag-ui&token=${TOKENS[user]}`, {
    headers: { accept: "text/event-stream", ...headers },
    signal: controller.signal,
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/event-stream");
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const queue = [];
  async function next() {
    const deadline = Date.now() + WAIT;
    for (;;) {
      const end = text.indexOf("\n\n");
      if (end >= 0) {
        const block = text.slice(0, end);
        text = text.slice(end + 2);
        const msg = { id: null, data: null };
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "id") msg.id = value;
          if (field === "data") msg.data = msg.data === null ? value : `${msg.data}\n${value}`;
        }
        if (msg.data !== null) return msg;
        continue;
      }
      const left = deadline - Date.now();
      assert.ok(left > 0, "an SSE message within the wait bound");
      let timer;
      const read = await Promise.race([
        reader.read(),
        new Promise((resolve) => (timer = setTimeout(() => resolve({ timeout: true }), left))),
      ]);
      clearTimeout(timer);
      assert.ok(!read.timeout, "an SSE message within the wait bound");
      if (read.done) return null;
      text += decoder.decode(read.value, { stream: true });
    }
  }
  return {
    queue,
    /** The next AG-UI event, validated by @ag-ui/core's schema; with its SSE id. */
    async event() {
      const msg = await next();
      assert.ok(msg, "the stream ended early");
      const json = JSON.parse(msg.data);
      const parsed = EventSchema.safeParse(json);
      assert.ok(parsed.success, `not a valid AG-UI event: ${msg.data}\n${parsed.error}`);
      return { event: json, id: msg.id };
    },
    close() {
      controller.abort();
    },
  };
}

/** Reads events until `until(event)` holds; all of them, in order. */
async function readUntil(stream, until) {
  const out = [];
  for (;;) {
    const e = await stream.event();
    out.push(e);
    if (until(e.event)) return out;
  }
}

/** The AG-UI order rules, per run, over `events` (AG-UI events in stream order). */
function checkOrder(events) {
  const runs = new Map();
  const runOf = (e) => e.metadata?.agentwire?.runId;
  for (const e of events) {
    if (e.type === "CUSTOM" && e.name?.startsWith("agentwire.")) continue;
    const runId = e.type === "RUN_STARTED" ? e.runId : runOf(e);
    if (runId === undefined) continue;
    let run = runs.get(runId);
    if (e.type === "RUN_STARTED") {
      assert.equal(run, undefined, `a second RUN_STARTED for run ${runId}`);
      run = { open: new Set(), tools: new Map(), ended: false };
      runs.set(runId, run);
      continue;
    }
    assert.ok(run, `${e.type} of run ${runId} before its RUN_STARTED`);
    assert.ok(!run.ended, `${e.type} of run ${runId} after its end`);
    const key = (kind, id) => `${kind}:${id}`;
    switch (e.type) {
      case "REASONING_START":
        run.open.add(key("reasoning", e.messageId));
        break;
      case "REASONING_MESSAGE_START":
        assert.ok(run.open.has(key("reasoning", e.messageId)), "reasoning message outside its span");
        run.open.add(key("reasoning-message", e.messageId));
        break;
      case "REASONING_MESSAGE_CONTENT":
        assert.ok(run.open.has(key("reasoning-message", e.messageId)), "reasoning content before its start");
        break;
      case "REASONING_MESSAGE_END":
        assert.ok(run.open.delete(key("reasoning-message", e.messageId)), "reasoning message ended twice");
        break;
      case "REASONING_END":
        assert.ok(!run.open.has(key("reasoning-message", e.messageId)), "span ended with a message open");
        assert.ok(run.open.delete(key("reasoning", e.messageId)), "reasoning span ended twice");
        break;
      case "TEXT_MESSAGE_START":
        run.open.add(key("text", e.messageId));
        break;
      case "TEXT_MESSAGE_CONTENT":
        assert.ok(run.open.has(key("text", e.messageId)), "text content before its start");
        break;
      case "TEXT_MESSAGE_END":
        assert.ok(run.open.delete(key("text", e.messageId)), "text message ended twice");
        break;
      case "TOOL_CALL_START":
        assert.ok(!run.tools.has(e.toolCallId), "a tool call started twice");
        run.tools.set(e.toolCallId, "open");
        run.open.add(key("tool", e.toolCallId));
        break;
      case "TOOL_CALL_ARGS":
        assert.equal(run.tools.get(e.toolCallId), "open", "tool call args outside the call");
        break;
      case "TOOL_CALL_END":
        assert.equal(run.tools.get(e.toolCallId), "open", "tool call ended twice");
        run.tools.set(e.toolCallId, "ended");
        run.open.delete(key("tool", e.toolCallId));
        break;
      case "TOOL_CALL_RESULT":
        assert.equal(run.tools.get(e.toolCallId), "ended", "a tool result before its call ended");
        break;
      case "RUN_FINISHED":
      case "RUN_ERROR":
        assert.deepEqual([...run.open], [], `run ${runId} ended with something open`);
        run.ended = true;
        break;
      default:
        break;
    }
  }
  return runs;
}

const run = (id, extra = {}) => ({ thread_id: "t1", run_id: id, ...extra });

function demoRun(id) {
  return [
    { ...run(id), type: "agent_started", data: { agent_name: "triage" } },
    { ...run(id), type: "agent_thinking", data: { thought: "Looking it up.", step: 1 } },
    {
      ...run(id),
      type: "tool_executing",
      data: { tool_call_id: `${id}-tc1`, tool_name: "search", arguments: { q: "weather" } },
    },
    {
      ...run(id),
      type: "tool_completed",
      data: { tool_call_id: `${id}-tc1`, tool_name: "search", result: { temp: 21 }, is_error: false },
    },
    { ...run(id), type: "custom", data: { name: "progress", value: { pct: 100 } } },
    { ...run(id), type: "agent_completed", data: { result: "21 °C", duration_ms: 12 } },
  ];
}

test("the demo run projects to valid AG-UI events in AG-UI's order", { skip }, async () => {
  const user = "agui-demo";
  const stream = await openStream(user);
  const hello = await stream.event();
  assert.equal(hello.event.type, "CUSTOM");
  assert.equal(hello.event.name, "agentwire.connection_established");
  await publish(user, demoRun("r-demo"));
  const got = await readUntil(stream, (e) => e.type === "RUN_FINISHED");
  stream.close();
  const types = got.map((g) => g.event.type);
  assert.deepEqual(types, [
    "RUN_STARTED",
    "REASONING_START",
    "REASONING_MESSAGE_START",
    "REASONING_MESSAGE_CONTENT",
    "REASONING_MESSAGE_END",
    "REASONING_END",
    "TOOL_CALL_START",
    "TOOL_CALL_ARGS",
    "TOOL_CALL_END",
    "TOOL_CALL_RESULT",
    "CUSTOM",
    "RUN_FINISHED",
  ]);
  const runs = checkOrder(got.map((g) => g.event));
  assert.ok(runs.get("r-demo").ended);
  assert.equal(got[0].event.threadId, "t1");
  assert.equal(got[0].event.runId, "r-demo");
  assert.equal(JSON.parse(got[7].event.delta).q, "weather");
  assert.equal(got.at(-1).event.result, "21 °C");
  // One SSE id per agentwire event, on its last AG-UI event: `<epoch>:<seq>`.
  const ids = got.filter((g) => g.id !== null).map((g) => g.id.split(":").at(-1));
  assert.deepEqual(ids, ["1", "2", "3", "4", "5", "6"]);
});

test("a failing run ends with RUN_ERROR and nothing open", { skip }, async () => {
  const user = "agui-fail";
  const stream = await openStream(user);
  await stream.event();
  await publish(user, [
    { ...run("r-fail"), type: "agent_started", data: {} },
    {
      ...run("r-fail"),
      type: "tool_executing",
      data: { tool_call_id: "tc-f", tool_name: "fetch", arguments: {} },
    },
    {
      ...run("r-fail"),
      type: "tool_completed",
      data: { tool_call_id: "tc-f", tool_name: "fetch", result: "timeout", is_error: true },
    },
    { ...run("r-fail"), type: "agent_error", data: { message: "the tool timed out", code: "tool_timeout" } },
  ]);
  const got = await readUntil(stream, (e) => e.type === "RUN_ERROR");
  stream.close();
  const last = got.at(-1).event;
  assert.equal(last.message, "the tool timed out");
  assert.equal(last.code, "tool_timeout");
  assert.equal(last.metadata.agentwire.runId, "r-fail");
  const result = got.find((g) => g.event.type === "TOOL_CALL_RESULT").event;
  assert.equal(result.content, "timeout");
  assert.equal(result.metadata.agentwire.isError, true);
  checkOrder(got.map((g) => g.event));
});

test("a stream resumed mid-run continues without a duplicate or a hole", { skip }, async () => {
  const user = "agui-resume";
  const events = demoRun("r-resume");
  const first = await openStream(user);
  await first.event();
  await publish(user, events.slice(0, 3));
  // Up to the end of the tool call: the third agentwire event's last AG-UI event.
  const before = await readUntil(first, (e) => e.type === "TOOL_CALL_END");
  first.close();
  const lastId = before.filter((g) => g.id !== null).at(-1).id;
  assert.match(lastId, /:3$/);
  await publish(user, events.slice(3));
  // What a browser's EventSource sends when it reconnects.
  const second = await openStream(user, { "last-event-id": lastId });
  const hello = await second.event();
  assert.equal(hello.event.name, "agentwire.connection_established");
  assert.equal(hello.event.value.resumed, true);
  const after = await readUntil(second, (e) => e.type === "RUN_FINISHED");
  second.close();
  const all = [...before, ...after].map((g) => g.event);
  assert.equal(after[0].event.type, "TOOL_CALL_RESULT", "resumes right after the last event");
  const seqs = [...new Set(all.map((e) => e.metadata.agentwire.seq))];
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6], "every agentwire event once, in order");
  checkOrder(all);
});

function streamedRun(id) {
  return [
    { ...run(id), type: "agent_started", data: {} },
    { ...run(id), type: "message_delta", data: { message_id: "m1", delta: "Three " } },
    { ...run(id), type: "message_delta", data: { message_id: "m1", delta: "flights " } },
    { ...run(id), type: "message_delta", data: { message_id: "m1", delta: "found." } },
    { ...run(id), type: "message_completed", data: { message_id: "m1", text: "Three flights found." } },
    { ...run(id), type: "agent_completed", data: { result: "ok" } },
  ];
}

test("a streamed answer is TEXT_MESSAGE_START, CONTENT for each delta, END", { skip }, async () => {
  const user = "agui-text";
  const stream = await openStream(user);
  await stream.event();
  await publish(user, streamedRun("r-text"));
  const got = await readUntil(stream, (e) => e.type === "RUN_FINISHED");
  stream.close();
  assert.deepEqual(
    got.map((g) => g.event.type),
    [
      "RUN_STARTED",
      "TEXT_MESSAGE_START",
      "TEXT_MESSAGE_CONTENT",
      "TEXT_MESSAGE_CONTENT",
      "TEXT_MESSAGE_CONTENT",
      "TEXT_MESSAGE_END",
      "RUN_FINISHED",
    ],
  );
  const text = got
    .filter((g) => g.event.type === "TEXT_MESSAGE_CONTENT")
    .map((g) => g.event.delta)
    .join("");
  assert.equal(text, "Three flights found.");
  assert.equal(got[1].event.role, "assistant");
  assert.equal(got[1].event.messageId, "r-text:m1");
  checkOrder(got.map((g) => g.event));
});

test("a stream resumed inside a streamed answer opens it again, without a duplicate or a hole", { skip }, async () => {
  const user = "agui-text-resume";
  const events = streamedRun("r-tr");
  const first = await openStream(user);
  await first.event();
  await publish(user, events.slice(0, 3));
  const before = await readUntil(first, (e) => e.type === "TEXT_MESSAGE_CONTENT" && e.delta === "flights ");
  first.close();
  const lastId = before.filter((g) => g.id !== null).at(-1).id;
  await publish(user, events.slice(3));
  const second = await openStream(user, { "last-event-id": lastId });
  assert.equal((await second.event()).event.value.resumed, true);
  const after = await readUntil(second, (e) => e.type === "RUN_FINISHED");
  second.close();
  // The new connection opens the message again before its next content.
  assert.deepEqual(
    after.map((g) => g.event.type),
    ["TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "RUN_FINISHED"],
  );
  const text = [...before, ...after]
    .filter((g) => g.event.type === "TEXT_MESSAGE_CONTENT")
    .map((g) => g.event.delta)
    .join("");
  assert.equal(text, "Three flights found.", "every delta once, in order");
  // Each connection's events keep AG-UI's order on their own.
  checkOrder(before.map((g) => g.event));
  const seqs = [...new Set([...before, ...after].map((g) => g.event.metadata.agentwire.seq))];
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6]);
});

test("the end of a stream is a CUSTOM event an AG-UI client can parse", { skip }, async () => {
  const user = "agui-close";
  const first = await openStream(user);
  await first.event();
  // A connection of the same user over the limit evicts the oldest (4003).
  const others = [];
  for (let i = 0; i < 3; i++) {
    const s = await openStream(user);
    await s.event();
    others.push(s);
  }
  const { event } = await first.event();
  assert.equal(event.type, "CUSTOM");
  assert.equal(event.name, "agentwire.close");
  assert.equal(event.value.code, 4003);
  for (const s of others) s.close();
});
