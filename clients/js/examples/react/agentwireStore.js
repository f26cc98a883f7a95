// One agentwire client as a store React can subscribe to (useSyncExternalStore): an
// immutable snapshot of the connection and the newest events, replaced on every change.
// Nothing in here knows React, so it is tested under node (clients/js/tests/).

import { AgentwireClient } from "@agentwire/client";

/** How many events a store keeps by default; older ones are dropped first. */
export const DEFAULT_MAX_EVENTS = 200;

/**
 * A store over a new AgentwireClient made from `options` (see docs/client.md). Its
 * snapshot is `{ connection, events, gaps }`: the client's snapshot, the newest
 * `maxEvents` events in seq order, and the replay gaps seen.
 */
export function createAgentwireStore(options, { maxEvents = DEFAULT_MAX_EVENTS } = {}) {
  const client = new AgentwireClient(options);
  const listeners = new Set();
  let snapshot = { connection: client.snapshot, events: [], gaps: [] };
  const update = (change) => {
    snapshot = { ...snapshot, ...change };
    for (const listener of listeners) listener();
  };
  client.on("*", (event) => update({ events: [...snapshot.events, event].slice(-maxEvents) }));
  client.onReplayGap((gap) => update({ gaps: [...snapshot.gaps, gap] }));
  client.onStateChange((connection) => update({ connection }));
  return {
    client,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    getSnapshot: () => snapshot,
  };
}
