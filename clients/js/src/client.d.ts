// Types of the agentwire client: the npm package `@agentwire/client` and the server's
// /client.js (one source, clients/js/src/client.js). Wire protocol: docs/protocol.md;
// usage: docs/client.md.

/** The subprotocol every connection offers ("agentwire.v1"). */
export declare const SUBPROTOCOL: "agentwire.v1";
/** Prefix of the subprotocol that carries the token ("agentwire.auth."). */
export declare const AUTH_SUBPROTOCOL_PREFIX: "agentwire.auth.";

/** The event types of protocol v1. */
export type EventType =
  | "agent_started"
  | "agent_thinking"
  | "tool_executing"
  | "tool_completed"
  | "agent_completed"
  | "agent_error"
  | "message_delta"
  | "message_completed"
  | "custom";

/** The event types, in the order a run produces them (custom last). */
export declare const EVENT_TYPES: readonly EventType[];

/** Close codes of protocol v1 (§9). */
export declare const CloseCode: {
  readonly NORMAL: 1000;
  readonly GOING_AWAY: 1001;
  readonly PROTOCOL_ERROR: 1002;
  readonly ABNORMAL: 1006;
  readonly INVALID_PAYLOAD: 1007;
  readonly POLICY_VIOLATION: 1008;
  readonly MESSAGE_TOO_BIG: 1009;
  readonly INTERNAL_ERROR: 1011;
  readonly TRY_AGAIN_LATER: 1013;
  readonly TOKEN_INVALID: 4001;
  readonly TOKEN_EXPIRED: 4002;
  readonly REPLACED: 4003;
  readonly REJECTED: 4004;
};

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Fields every delivered event has (§4.2). Unknown `data` fields are kept. */
export interface EventBase<T extends EventType, D> {
  type: T;
  /** Position in the user's stream: per user, strictly increasing by one. */
  seq: number;
  event_id: string;
  /** When the broker accepted the event, ms since the Unix epoch. */
  ts: number;
  /**
   * Only on a merged `message_delta` (§6.5): the frame stands for the events
   * `from_seq ..= seq`, deltas of one message that waited in a slow connection's queue.
   */
  from_seq?: number;
  thread_id?: string;
  run_id?: string;
  data: D & { [extra: string]: Json | undefined };
}

export type AgentStarted = EventBase<"agent_started", { agent_name?: string }>;
export type AgentThinking = EventBase<"agent_thinking", { thought: string; step?: number }>;
export type ToolExecuting = EventBase<
  "tool_executing",
  { tool_call_id: string; tool_name: string; arguments: Json }
>;
export type ToolCompleted = EventBase<
  "tool_completed",
  { tool_call_id: string; tool_name: string; result: Json; is_error: boolean; duration_ms?: number }
>;
export type AgentCompleted = EventBase<"agent_completed", { result: Json; duration_ms?: number }>;
export type AgentError = EventBase<"agent_error", { message: string; code?: string; retryable: boolean }>;
export type MessageDelta = EventBase<"message_delta", { message_id: string; delta: string }>;
export type MessageCompleted = EventBase<"message_completed", { message_id: string; text?: string }>;
export type CustomEvent = EventBase<"custom", { name: string; value: Json }>;

/** Every event type mapped to its shape. */
export interface EventMap {
  agent_started: AgentStarted;
  agent_thinking: AgentThinking;
  tool_executing: ToolExecuting;
  tool_completed: ToolCompleted;
  agent_completed: AgentCompleted;
  agent_error: AgentError;
  message_delta: MessageDelta;
  message_completed: MessageCompleted;
  custom: CustomEvent;
}

/** Any delivered event. */
export type AgentwireEvent = EventMap[EventType];

/** Events `from_seq ..= to_seq` cannot be delivered: refetch what they would have built. */
export interface ReplayGap {
  from_seq: number;
  to_seq: number;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface CloseInfo {
  code: number;
  reason: string;
  /** Whether the client stopped for good (until `connect()` is called again). */
  final: boolean;
}

/** What state handlers receive. */
export interface Snapshot {
  state: ConnectionState;
  /** The seq of the newest event processed (0: none). */
  lastSeq: number;
  /** The stream `lastSeq` belongs to, once known. */
  epoch: string | null;
  /** Reconnects after a connection had opened. */
  reconnects: number;
  connectionId: string | null;
  /** The authenticated user (the token's `sub`), once connected. */
  userId: string | null;
  /** Consecutive attempts that closed before `connection_established`. */
  handshakeFailures: number;
  /** Events dropped because their seq was not newer than `lastSeq`. */
  duplicatesDropped: number;
  /** `replay_gap` frames received. */
  replayGaps: number;
  /** The last close, while not open. */
  lastClose: CloseInfo | null;
  /** The transport in use: "sse" once a client with `transport: "auto"` moved to it. */
  transport: "websocket" | "sse";
}

/** Why `getToken` is called. */
export interface TokenRequest {
  /**
   * "initial": the first connect; "reconnect": a reconnect (a cached token is fine);
   * "token_invalid" (4001), "token_expired" (4002), "handshake_failed" (several
   * handshakes failed: maybe a 401 a browser cannot see), "refresh" (before `exp`, for a
   * `refresh_token` frame): fetch a new one.
   */
  reason: "initial" | "reconnect" | "token_invalid" | "token_expired" | "handshake_failed" | "refresh";
  /** True when a cached token must not be returned. */
  forceRefresh: boolean;
}

export interface ClientError {
  /**
   * "server": an `error` frame; "closed": a close that stops the client (1002, 1007,
   * 1009); "handshake": gave up; "token": getToken failed; "transport": a client with
   * `transport: "auto"` moved to Server-Sent Events; "socket", "frame", "handler".
   */
  kind: "server" | "closed" | "handshake" | "token" | "transport" | "socket" | "frame" | "handler";
  message: string;
  /** The `error` frame's code, or the close code. */
  code?: string | number;
  cause?: unknown;
}

export interface BackoffOptions {
  /** First delay (default 1000 ms). */
  initialMs?: number;
  /** Largest delay (default 30000 ms). */
  maxMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** Fraction of the delay taken off at random, 0..1 (default 0.5). */
  jitter?: number;
}

export interface ClientOptions {
  /** Returns the user's JWT; called on every (re)connect. */
  getToken: (request: TokenRequest) => string | Promise<string>;
  /** The WebSocket URL (default: /ws on the page's host, ws: or wss:). */
  url?: string;
  /** Where to resume from (e.g. saved across a page load). */
  resume?: { lastSeq: number; epoch: string };
  /**
   * Consecutive handshakes that may fail before the token is fetched anew; when the next
   * ones fail as often again, the client gives up ("closed"). Default 3.
   */
  maxHandshakeFailures?: number;
  backoff?: BackoffOptions;
  /** Upper bound of the random delay before reconnecting after 1001/4002 (default 250 ms). */
  goingAwayDelayMs?: number;
  /** How long a connection must stay open for the backoff to start over (default 10 s). */
  stableAfterMs?: number;
  /** A `ping` unanswered this long closes the connection as dead (default 10 s). */
  pongTimeoutMs?: number;
  /** Send `ack` frames for processed events (default true). */
  ack?: boolean;
  /** Acks are batched over this long (default 250 ms). */
  ackDelayMs?: number;
  /**
   * Send `refresh_token` this long before the token's `exp` (default 60 s; 0: never). A
   * token that lives less than twice this is refreshed halfway through its life.
   */
  refreshBeforeExpiryMs?: number;
  /**
   * An attempt that has not received `connection_established` this long after it started
   * (`getToken` included) is abandoned and counts as a failed handshake (default 15 s;
   * 0: no limit).
   */
  connectTimeoutMs?: number;
  /**
   * The WebSocket constructor (default the global one; in Node 20 pass one, e.g. the `ws`
   * package's, or run node with `--experimental-websocket`).
   */
  WebSocket?: typeof WebSocket;
  /**
   * "websocket" (default): `/ws`. "sse": Server-Sent Events from `/v1/stream` (no client
   * frames: no acks, pings or token refreshes; the server's 4002 brings a reconnect with a
   * new token). "auto": a WebSocket, moving to SSE for good after `maxHandshakeFailures`
   * failed WebSocket handshakes in a row (a proxy that breaks upgrades). The API is the
   * same on both.
   */
  transport?: "websocket" | "sse" | "auto";
  /** The event-stream URL (default: `url` with http(s): and `/v1/stream` for `/ws`). */
  sseUrl?: string;
  /** The EventSource constructor (default the global one). */
  EventSource?: typeof EventSource;
  onEvent?: (event: AgentwireEvent) => void;
  onReplayGap?: (gap: ReplayGap) => void;
  onStateChange?: (snapshot: Snapshot) => void;
  onError?: (error: ClientError) => void;
}

/** Removes the handler it was returned for. */
export type Unsubscribe = () => void;

/** A connection to one user's event stream that survives reconnects. */
export declare class AgentwireClient {
  constructor(options: ClientOptions);
  /** Calls `handler` for every event of `type`. */
  on<T extends EventType>(type: T, handler: (event: EventMap[T]) => void): Unsubscribe;
  /** Calls `handler` for every event. */
  on(type: "*", handler: (event: AgentwireEvent) => void): Unsubscribe;
  onReplayGap(handler: (gap: ReplayGap) => void): Unsubscribe;
  onStateChange(handler: (snapshot: Snapshot) => void): Unsubscribe;
  onError(handler: (error: ClientError) => void): Unsubscribe;
  /** Starts connecting; after "closed", starts again. */
  connect(): void;
  /** Closes with 1000 and stops reconnecting. */
  close(): void;
  readonly state: ConnectionState;
  readonly lastSeq: number;
  readonly epoch: string | null;
  readonly reconnects: number;
  readonly snapshot: Snapshot;
}

/** A streamed message as [`MessageAccumulator`] holds it. */
export interface StreamedMessage {
  run_id: string | undefined;
  message_id: string;
  /** The text so far: the deltas concatenated, or `message_completed`'s `text`. */
  text: string;
  /** Whether `message_completed`, or the end of its run, came. */
  done: boolean;
}

/** Assembles streamed messages from delivered events (docs/protocol.md §4.2, §6.5). */
export declare class MessageAccumulator {
  constructor();
  /** Takes any event; returns the message it changed, or null. */
  add(event: AgentwireEvent): StreamedMessage | null;
  get(runId: string | undefined, messageId: string): StreamedMessage | undefined;
  messages(): StreamedMessage[];
  delete(runId: string | undefined, messageId: string): boolean;
  clear(): void;
}
