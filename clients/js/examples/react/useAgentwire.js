// A React hook over the agentwire client: `const { connection, events } =
// useAgentwire({ url, getToken })`. One client per mounted component; it connects when the
// component mounts and closes when it unmounts (StrictMode's extra mount included).

import { useEffect, useRef, useState, useSyncExternalStore } from "react";

import { createAgentwireStore } from "./agentwireStore.js";

/**
 * Connects with `options` (docs/client.md; `maxEvents` bounds the events kept) and
 * returns `{ connection, events, gaps }`, re-rendering on every change. A new `getToken`
 * on each render is fine: the client always calls the newest one.
 */
export function useAgentwire({ getToken, maxEvents, ...options }) {
  const latestGetToken = useRef(getToken);
  useEffect(() => {
    latestGetToken.current = getToken;
  });
  const [store] = useState(() =>
    createAgentwireStore({ ...options, getToken: (request) => latestGetToken.current(request) }, { maxEvents }),
  );
  useEffect(() => {
    store.client.connect();
    return () => store.client.close();
  }, [store]);
  return useSyncExternalStore(store.subscribe, store.getSnapshot);
}
