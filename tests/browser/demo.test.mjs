// agentwire end-to-end test in a real browser: Debian's Chromium driven by playwright-core
// against a running agentwire server with the demo on.
//
//   node tests/browser/demo.test.mjs --url http://127.0.0.1:8080 --api-key KEY \
//        [--artifacts target/browser-artifacts] [--chromium /usr/bin/chromium] \
//        [--cases resume,stall]
//
// (or AGENTWIRE_URL, AGENTWIRE_API_KEY, AGENTWIRE_ARTIFACTS, CHROMIUM_PATH). Exits 0 when
// every check passed, 1 otherwise; prints the screenshots' paths.
//
// What it proves (case `resume`): the demo page signs in, starts a run through the bridge and shows the
// five critical events in order; a user disconnected mid-run (admin endpoint) reconnects
// and resumes — every event once, in order, the server's replayed counter up; a second tab
// of the same user sees the same timeline; another user's tab sees none of it; a run
// stopped from the page ends with agent_error. Case `stall`: a run that stalls after a tool
// call is ended by the server as `stalled`, shown as such, with nothing of that run after.

import { mkdirSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: process.env.AGENTWIRE_URL },
    "api-key": { type: "string", default: process.env.AGENTWIRE_API_KEY },
    artifacts: { type: "string", default: process.env.AGENTWIRE_ARTIFACTS || "target/browser-artifacts" },
    chromium: { type: "string", default: process.env.CHROMIUM_PATH || "/usr/bin/chromium" },
    "pace-ms": { type: "string", default: "250" },
    // Which cases to run, comma-separated: `resume` (the delivery guarantees), `stall`.
    cases: { type: "string", default: "resume,stall" },
  },
});
if (!args.url || !args["api-key"]) {
  console.error("usage: node demo.test.mjs --url http://HOST:PORT --api-key KEY [--artifacts DIR] [--chromium PATH] [--cases resume,stall]");
  process.exit(2);
}
const BASE = args.url.replace(/\/$/, "");
const API_KEY = args["api-key"];
const ARTIFACTS = path.resolve(args.artifacts);
const PACE_MS = Number(args["pace-ms"]);
const CASES = new Set(args.cases.split(","));
const unknown = [...CASES].filter((c) => c !== "resume" && c !== "stall");
if (unknown.length > 0 || CASES.size === 0) {
  console.error(`unknown case(s) ${JSON.stringify(unknown)}: --cases takes resume and/or stall`);
  process.exit(2);
}
const WAIT = 15_000;
const CRITICAL = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"];

mkdirSync(ARTIFACTS, { recursive: true });

// The whole run is bounded: a hang fails the test instead of stalling CI.
const watchdog = setTimeout(() => {
  console.error("FAIL: the browser test did not finish within 55 s");
  process.exit(1);
}, 55_000);

const T0 = Date.now();
let passed = 0;
const screenshots = [];
const pageErrors = [];

function check(condition, what, detail) {
  if (!condition) {
    const extra = detail === undefined ? "" : `\n  detail: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
    throw new Error(`${what}${extra}`);
  }
  passed++;
  console.log(`ok ${passed} - ${what} (${((Date.now() - T0) / 1000).toFixed(1)} s)`);
}

async function shot(page, name) {
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, animations: "disabled" });
  screenshots.push(file);
}

async function stats() {
  const r = await fetch(`${BASE}/demo/stats`);
  if (!r.ok) throw new Error(`/demo/stats answered ${r.status}`);
  return r.json();
}

async function until(what, fn, within = WAIT) {
  const deadline = Date.now() + within;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Opens the demo in a new tab of `context` and signs in as `user`. */
async function openSignedIn(context, user, label) {
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("console", (m) => {
    if (m.type() === "error") pageErrors.push(`${label}: console: ${m.text()}`);
  });
  page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
  await page.goto(`${BASE}/?pace_ms=${PACE_MS}`);
  await page.getByTestId("user-id").fill(user);
  await page.getByTestId("sign-in").click();
  await page.waitForSelector('[data-testid="state-pill"][data-state="open"]', { timeout: WAIT });
  return page;
}

/**
 * The events a tab's timeline shows, in DOM order. A streamed answer is one entry that
 * lists every seq and event id it shows (`data-seqs`, `data-event-ids`): each counts.
 */
function timeline(page) {
  return page.$$eval("#timeline li.ev", (items) =>
    items.flatMap((li) => {
      const seqs = li.dataset.seqs ? li.dataset.seqs.split(",").map(Number) : [Number(li.dataset.seq)];
      const ids = li.dataset.eventIds ? li.dataset.eventIds.split(",") : [li.dataset.eventId];
      return seqs.map((seq, i) => ({
        seq,
        type: li.dataset.type,
        run: li.dataset.run,
        // A merged delta shows several seqs under its one event id.
        id: `${ids[Math.min(i, ids.length - 1)]}#${seq}`,
      }));
    }),
  );
}

async function runIds(page) {
  return [...new Set((await timeline(page)).map((e) => e.run))];
}

async function waitForEvent(page, run, type) {
  await page.waitForSelector(`#timeline li.ev[data-run="${run}"][data-type="${type}"]`, { timeout: WAIT });
}

/** Clicks "Start a run" and returns the id of the run that appears. */
async function startRun(page) {
  const before = new Set(await runIds(page));
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/demo/runs") && r.request().method() === "POST", { timeout: WAIT }),
    page.getByTestId("start-run").click(),
  ]);
  check(response.status() === 202, "POST /demo/runs (with the user's token) answers 202", response.status());
  const { run_id: run } = await response.json();
  check(typeof run === "string" && !before.has(run), `a new run started (${run})`);
  return run;
}

function assertCriticalOrder(events, run, label) {
  const types = events.filter((e) => e.run === run).map((e) => e.type);
  let at = -1;
  for (const type of CRITICAL) {
    const next = types.indexOf(type, at + 1);
    check(next > at, `${label}: ${type} shown in order`, types);
    at = next;
  }
  check(types[types.length - 1] === "agent_completed", `${label}: agent_completed ends the run`, types);
}

function assertOncePerSeqInOrder(events, label) {
  const seqs = events.map((e) => e.seq);
  const ids = events.map((e) => e.id);
  check(new Set(seqs).size === seqs.length, `${label}: no seq shown twice`, seqs);
  check(new Set(ids).size === ids.length, `${label}: no event_id shown twice`, ids);
  check(
    seqs.every((s, i) => s === i + 1),
    `${label}: seqs are 1..${seqs.length} in order, none missing`,
    seqs,
  );
}

/**
 * The demo's delivery guarantees: sign in, run, resume after a disconnect, a second tab,
 * another user's tab, a run stopped from the page.
 */
async function resumeCase(browser, suffix) {
  const alice = `alice-${suffix}`;
  const bob = `bob-${suffix}`;
  const aliceContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const bobContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });

  // 1. Sign in, start a run, see the five critical events in order.
  const tab1 = await openSignedIn(aliceContext, alice, "alice tab 1");
  check(await tab1.getByTestId("signed-user").textContent() === alice, "tab 1 is signed in as alice");
  const run1 = await startRun(tab1);
  await waitForEvent(tab1, run1, "agent_completed");
  const first = await timeline(tab1);
  assertCriticalOrder(first, run1, "run 1");
  assertOncePerSeqInOrder(first, "after run 1");
  await shot(tab1, "01-run-completed.png");

  // 2. A second tab of alice, and a tab of bob.
  const tab2 = await openSignedIn(aliceContext, alice, "alice tab 2");
  await until("tab 2 shows run 1 from history", async () => (await timeline(tab2)).length === first.length);
  const bobTab = await openSignedIn(bobContext, bob, "bob");

  // 3. Mid-run, an operator disconnects alice. Tab 1's reconnect waits (its token
  //    request is held) until the run has ended on the server, so it must resume: the
  //    events it missed come from history.
  const replayedBefore = (await stats()).events_replayed;
  let release;
  const held = new Promise((r) => (release = r));
  let tokenRequests = 0;
  await tab1.route("**/demo/token", async (route) => {
    tokenRequests++;
    await held;
    await route.continue();
  });
  const run2 = await startRun(tab1);
  await waitForEvent(tab1, run2, "agent_thinking");
  const cut = await fetch(`${BASE}/v1/users/${encodeURIComponent(alice)}/disconnect`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  const cutBody = await cut.json();
  check(cut.status === 200 && cutBody.disconnected === 2, "the admin endpoint disconnects alice's two tabs", cutBody);
  await tab1.waitForSelector('[data-testid="state-pill"]:not([data-state="open"])', { timeout: WAIT });
  check(true, "tab 1 notices the disconnect");
  // Counted once the tab is cut off: a step of the run may land while the cut is made.
  const seenBeforeCut = (await timeline(tab1)).length;
  await until("run 2 ends on the server", async () => (await stats()).demo_runs_active === 0);
  await until("tab 1 asks for a token to reconnect", () => tokenRequests > 0);
  check((await timeline(tab1)).length === seenBeforeCut, "tab 1 got nothing while disconnected");
  release();
  await tab1.waitForSelector('[data-testid="state-pill"][data-state="open"]', { timeout: WAIT });
  check((await tab1.getByTestId("reconnects").textContent()) === "1", "tab 1 reconnected once");
  await waitForEvent(tab1, run2, "agent_completed");
  const resumed = await timeline(tab1);
  check(resumed.length > seenBeforeCut, "tab 1 received the events it missed", { seenBeforeCut, now: resumed.length });
  assertCriticalOrder(resumed, run2, "run 2 (resumed)");
  assertOncePerSeqInOrder(resumed, "after the resume");
  const replayedAfter = (await stats()).events_replayed;
  check(replayedAfter > replayedBefore, "the server's replayed counter went up", { replayedBefore, replayedAfter });
  check(
    Number(await tab1.getByTestId("last-seq").textContent()) === resumed[resumed.length - 1].seq,
    "tab 1's last seq is its newest event",
  );
  await shot(tab1, "02-resumed-after-disconnect.png");

  // 4. The second tab shows the same timeline.
  await waitForEvent(tab2, run2, "agent_completed");
  await tab2.waitForSelector('[data-testid="state-pill"][data-state="open"]', { timeout: WAIT });
  const second = await timeline(tab2);
  check(JSON.stringify(second) === JSON.stringify(resumed), "tab 2 shows the same timeline as tab 1", { second, resumed });
  await shot(tab2, "03-second-tab-same-user.png");

  // 5. Bob saw none of it.
  const bobs = await timeline(bobTab);
  check(bobs.length === 0, "bob's tab shows none of alice's events", bobs);
  const bobText = await bobTab.textContent("#timeline");
  check(!bobText.includes(run1) && !bobText.includes(run2), "bob's tab names none of alice's runs");
  check((await bobTab.getByTestId("state-pill").getAttribute("data-state")) === "open", "bob's tab stayed connected");
  await shot(bobTab, "04-other-user-sees-nothing.png");

  // 6. A run stopped from the page ends with agent_error (the bridge's drop guard). This
  //    run is paced slowly (about 16 s), so it is still in progress when the stop button
  //    is clicked however late the page shows its start on a busy machine.
  await tab1.route("**/demo/runs", (route) =>
    route.request().method() === "POST"
      ? route.continue({ postData: JSON.stringify({ pace_ms: 2000 }) })
      : route.continue(),
  );
  const run3 = await startRun(tab1);
  await tab1.unroute("**/demo/runs");
  await waitForEvent(tab1, run3, "agent_started");
  await tab1.getByTestId("stop-run").click();
  await waitForEvent(tab1, run3, "agent_error");
  const stopped = await timeline(tab1);
  const run3Types = stopped.filter((e) => e.run === run3).map((e) => e.type);
  check(run3Types[0] === "agent_started" && run3Types.at(-1) === "agent_error", "a stopped run ends with agent_error", run3Types);
  check(!run3Types.includes("agent_completed"), "a stopped run does not complete");
  check(
    (await tab1.textContent(`#timeline li.ev[data-run="${run3}"][data-type="agent_error"]`)).includes("run_dropped"),
    "the error entry shows its code",
  );
  assertOncePerSeqInOrder(stopped, "after the stopped run");
  await shot(tab1, "05-run-stopped-agent-error.png");
}

/**
 * A run that stalls (issue 18): it calls a tool and goes silent; the server's watchdog ends
 * it with agent_error code `stalled` after its 3 s stall timeout, and the page shows the run
 * ended by the server, with nothing of that run after it.
 */
async function stallCase(browser, suffix) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const tab = await openSignedIn(context, `carol-${suffix}`, "carol");
  const [stallResponse] = await Promise.all([
    tab.waitForResponse((r) => r.url().endsWith("/demo/runs") && r.request().method() === "POST", { timeout: WAIT }),
    tab.getByTestId("stall-run").click(),
  ]);
  const stallBody = await stallResponse.json();
  check(
    stallResponse.status() === 202 && stallBody.stall_timeout_ms === 3000,
    "POST /demo/runs {stall: true} answers 202 with a 3 s stall timeout",
    { status: stallResponse.status(), body: stallBody },
  );
  const stalledRun = stallBody.run_id;
  await waitForEvent(tab, stalledRun, "tool_executing");
  // Bounded by WAIT (15 s), which the 3 s stall timeout and the watchdog's tick fit inside.
  await waitForEvent(tab, stalledRun, "agent_error");
  const stalledEntry = `#timeline li.ev[data-run="${stalledRun}"][data-type="agent_error"]`;
  check(
    (await tab.textContent(`${stalledEntry} .title`)) === "Run stalled: ended by the server",
    "the stalled run's last entry says the server ended it",
    await tab.textContent(stalledEntry),
  );
  check(
    (await tab.textContent(`${stalledEntry} .label`)) === "code: stalled · retryable",
    "the entry shows the code `stalled`, retryable",
    await tab.textContent(stalledEntry),
  );
  check(
    (await tab.textContent(`#timeline li.ev[data-run="${stalledRun}"][data-type="tool_executing"] .status`)) ===
      "ended with the run",
    "the silent tool call is shown as ended with the run",
  );
  await tab.locator(stalledEntry).scrollIntoViewIfNeeded();
  await shot(tab, "06-run-stalled-ended-by-server.png");
  // Nothing of the stalled run after its end: a later run, completed, is a barrier (the
  // server delivers in seq order, so anything of the stalled run published before it shows first).
  const nextRun = await startRun(tab);
  await waitForEvent(tab, nextRun, "agent_completed");
  const afterStall = await timeline(tab);
  const stalledRunTypes = afterStall.filter((e) => e.run === stalledRun).map((e) => e.type);
  check(
    JSON.stringify(stalledRunTypes) === JSON.stringify(["agent_started", "tool_executing", "agent_error"]),
    "the stalled run is agent_started, tool_executing, agent_error and nothing after",
    stalledRunTypes,
  );
  const stallEnd = afterStall.findIndex((e) => e.run === stalledRun && e.type === "agent_error");
  check(
    afterStall.slice(stallEnd + 1).every((e) => e.run === nextRun),
    "no event after the stalled run's end but the next run's",
    afterStall.slice(stallEnd + 1),
  );
  assertOncePerSeqInOrder(afterStall, "after the stalled run");
}

async function main() {
  const browser = await chromium.launch({
    executablePath: args.chromium,
    headless: true,
    // Playwright gives every launch a fresh, empty profile (--user-data-dir) of its own.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const suffix = Math.random().toString(36).slice(2, 8);
    if (CASES.has("resume")) await resumeCase(browser, suffix);
    if (CASES.has("stall")) await stallCase(browser, suffix);

    check(pageErrors.length === 0, "no page errors or console errors", pageErrors);
  } catch (err) {
    for (const page of browser.contexts().flatMap((c) => c.pages())) {
      const i = screenshots.length;
      await shot(page, `failure-${[...CASES].join("-")}-${i}.png`).catch(() => {});
    }
    throw err;
  } finally {
    await browser.close();
  }
}

try {
  await main();
  console.log("screenshots:");
  for (const s of screenshots) console.log(`  ${s}`);
  console.log(`${passed} passed, 0 failed`);
  clearTimeout(watchdog);
} catch (err) {
  console.error(`FAIL: ${err.message}`);
  if (pageErrors.length) console.error(`page errors:\n  ${pageErrors.join("\n  ")}`);
  if (screenshots.length) console.error(`screenshots:\n  ${screenshots.join("\n  ")}`);
  console.log(`${passed} passed, 1 failed`);
  process.exit(1);
}
