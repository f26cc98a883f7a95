// agentwire's Server-Sent Events transport in a real browser: Debian's Chromium driven by
// playwright-core against a running server (tests/tests/e2e_browser.rs starts it).
//
//   AGENTWIRE_HTTP=http://127.0.0.1:PORT AGENTWIRE_API_KEY=KEY \
//   AGENTWIRE_TOKENS='{"sse-raw":"jwt","sse-client":"jwt"}' \
//   node tests/browser/sse.test.mjs [--chromium /usr/bin/chromium]
//
// What it proves: a page's own `EventSource` on `/v1/stream` receives a run; when the
// server drops the connection mid-run (the admin endpoint), the browser's automatic
// reconnect sends `Last-Event-ID` and the stream resumes — every event once, in order.
// Then the same with the client module (`/client.js`, `transport: "sse"`), which
// reconnects by its own rules. Exits 0 when every check passed, 1 otherwise.

import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    chromium: { type: "string", default: process.env.CHROMIUM_PATH || "/usr/bin/chromium" },
  },
});
const BASE = (process.env.AGENTWIRE_HTTP || "").replace(/\/$/, "");
const API_KEY = process.env.AGENTWIRE_API_KEY;
const TOKENS = JSON.parse(process.env.AGENTWIRE_TOKENS || "{}");
if (!BASE || !API_KEY) {
  console.error("set AGENTWIRE_HTTP, AGENTWIRE_API_KEY and AGENTWIRE_TOKENS");
  process.exit(2);
}
const WAIT = 15_000;
const watchdog = setTimeout(() => {
  console.error("FAIL: the SSE browser test did not finish within 50 s");
  process.exit(1);
}, 50_000);

let passed = 0;
function check(condition, what, detail) {
  if (!condition) {
    throw new Error(`${what}${detail === undefined ? "" : `\n  detail: ${JSON.stringify(detail)}`}`);
  }
  passed++;
  console.log(`ok ${passed} - ${what}`);
}

async function until(what, fn) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function publish(user, events) {
  const res = await fetch(`${BASE}/v1/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(events.map((e) => ({ user_id: user, thread_id: "t1", ...e }))),
  });
  if (res.status !== 200) throw new Error(`publish answered ${res.status}: ${await res.text()}`);
}

async function disconnect(user) {
  const res = await fetch(`${BASE}/v1/users/${encodeURIComponent(user)}/disconnect`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  const body = await res.json();
  check(res.status === 200 && body.disconnected === 1, `the admin endpoint drops ${user}'s stream`, body);
}

/** A run in two halves: before and after the connection is dropped. */
function run(id) {
  return [
    [
      { run_id: id, type: "agent_started", data: { agent_name: "sse" } },
      { run_id: id, type: "agent_thinking", data: { thought: "thinking", step: 1 } },
      { run_id: id, type: "tool_executing", data: { tool_call_id: `${id}-tc`, tool_name: "search", arguments: {} } },
    ],
    [
      { run_id: id, type: "tool_completed", data: { tool_call_id: `${id}-tc`, tool_name: "search", result: 1, is_error: false } },
      { run_id: id, type: "agent_completed", data: { result: "done" } },
    ],
  ];
}

const CRITICAL = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"];

function assertOnceInOrder(events, what) {
  const seqs = events.map((e) => e.seq);
  check(
    JSON.stringify(seqs) === JSON.stringify([1, 2, 3, 4, 5]),
    `${what}: every event once, in order`,
    seqs,
  );
  check(
    JSON.stringify(events.map((e) => e.type)) === JSON.stringify(CRITICAL),
    `${what}: the five critical events`,
    events.map((e) => e.type),
  );
}

async function rawEventSource(page) {
  const user = "sse-raw";
  await page.evaluate((token) => {
    window.got = { frames: [], ids: [], opens: 0, closes: [] };
    const es = new EventSource(`/v1/stream?token=${encodeURIComponent(token)}`);
    es.onopen = () => window.got.opens++;
    es.onmessage = (m) => {
      window.got.frames.push(JSON.parse(m.data));
      window.got.ids.push(m.lastEventId);
    };
    es.addEventListener("close", (m) => window.got.closes.push(JSON.parse(m.data).code));
    window.es = es;
  }, TOKENS[user]);
  const frames = () => page.evaluate(() => window.got.frames);
  await until("the stream is established", async () => (await frames()).length >= 1);
  const [first, second] = run("r-raw");
  await publish(user, first);
  await until("the first half arrives", async () => (await frames()).length >= 4);
  await disconnect(user);
  await publish(user, second);
  await until("the browser reconnects and the run completes", async () =>
    (await frames()).some((f) => f.type === "agent_completed"),
  );
  const got = await page.evaluate(() => window.got);
  check(got.closes[0] === 1001, "the dropped stream ended with a close event 1001", got.closes);
  check(got.opens === 2, "the browser reconnected on its own, once", got.opens);
  const hellos = got.frames.filter((f) => f.type === "connection_established");
  check(hellos.length === 2 && hellos[1].resumed === true, "the reconnect resumed (Last-Event-ID)", hellos);
  const events = got.frames.filter((f) => typeof f.seq === "number");
  assertOnceInOrder(events, "EventSource");
  const epoch = hellos[0].epoch;
  const lastId = got.ids.at(-1);
  check(lastId === `${epoch}:5`, "lastEventId is <epoch>:<seq>", lastId);
  await page.evaluate(() => window.es.close());
}

async function clientModule(page) {
  const user = "sse-client";
  await page.evaluate(async (token) => {
    const { AgentwireClient } = await import("/client.js");
    window.seen = [];
    window.states = [];
    const client = new AgentwireClient({
      transport: "sse",
      getToken: () => token,
      backoff: { initialMs: 100, maxMs: 500 },
    });
    client.on("*", (e) => window.seen.push({ seq: e.seq, type: e.type }));
    client.onStateChange((s) => window.states.push(`${s.state}/${s.transport}`));
    client.connect();
    window.client = client;
  }, TOKENS[user]);
  const state = () => page.evaluate(() => window.client.state);
  await until("the client is open", async () => (await state()) === "open");
  const [first, second] = run("r-client");
  await publish(user, first);
  await until("the first half arrives", async () => (await page.evaluate(() => window.seen.length)) >= 3);
  await disconnect(user);
  await publish(user, second);
  await until("the client resumes and the run completes", async () =>
    (await page.evaluate(() => window.seen)).some((e) => e.type === "agent_completed"),
  );
  const snap = await page.evaluate(() => window.client.snapshot);
  check(snap.transport === "sse" && snap.reconnects === 1, "the client reconnected once over SSE", snap);
  assertOnceInOrder(await page.evaluate(() => window.seen), "the client module");
  await page.evaluate(() => window.client.close());
}

async function main() {
  const browser = await chromium.launch({
    executablePath: args.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"],
  });
  const pageErrors = [];
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(WAIT);
    page.on("pageerror", (e) => pageErrors.push(e.message));
    // Any page of the server's origin: the stream is same-origin.
    await page.goto(`${BASE}/healthz`);
    await rawEventSource(page);
    await clientModule(page);
    check(pageErrors.length === 0, "no page errors", pageErrors);
  } finally {
    await browser.close();
  }
}

try {
  await main();
  console.log(`${passed} passed, 0 failed`);
  clearTimeout(watchdog);
} catch (err) {
  console.error(`FAIL: ${err.message}`);
  console.log(`${passed} passed, 1 failed`);
  process.exit(1);
}
