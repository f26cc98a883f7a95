// The hook in a component: the signed-in user's agent runs as a timeline.

import { useAgentwire } from "./useAgentwire.js";

async function getToken() {
  // Your backend mints a short-lived agentwire token for the signed-in user.
  const r = await fetch("/api/agentwire-token", { method: "POST", cache: "no-store" });
  if (!r.ok) throw new Error(`token: ${r.status}`);
  return (await r.json()).token;
}

function describe(e) {
  switch (e.type) {
    case "agent_started":
      return `${e.data.agent_name ?? "agent"} started`;
    case "agent_thinking":
      return e.data.thought;
    case "tool_executing":
      return `running ${e.data.tool_name}`;
    case "tool_completed":
      return `${e.data.tool_name} ${e.data.is_error ? "failed" : "done"}`;
    case "agent_completed":
      return `answer: ${JSON.stringify(e.data.result)}`;
    case "agent_error":
      return `failed: ${e.data.message}`;
    default:
      return e.data.name;
  }
}

export function RunTimeline() {
  const { connection, events } = useAgentwire({ url: "wss://agentwire.example.com/ws", getToken });
  return (
    <section>
      <p>
        {connection.state} · seq {connection.lastSeq} · {connection.reconnects} reconnects
      </p>
      <ol>
        {events.map((e) => (
          <li key={e.seq}>
            <code>{e.type}</code> {describe(e)}
          </li>
        ))}
      </ol>
    </section>
  );
}
