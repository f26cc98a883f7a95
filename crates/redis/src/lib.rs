//! `agentwire-redis`: the agentwire [`Broker`](agentwire_manager::Broker) on Redis 7, so
//! many agentwire nodes serve one set of users: an event published on any node reaches the
//! user's connections on every node, in `seq` order, and resumes work across nodes.
//!
//! What it is not: it knows nothing of HTTP, sockets to clients or the manager's queues;
//! it depends on the manager's trait (and the protocol crate) only. It is not the embedded
//! default: one node needs no Redis and keeps the in-memory broker.
//!
//! Key decision: **one atomic script per publish batch** does everything that orders an
//! event — dedupe, `seq`, `ts`, epoch, append to history, publish — so the order Redis
//! publishes in *is* `seq` order, on every node, and history holds every event before any
//! subscriber can be handed it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use agentwire_manager::{ManagerConfig, UnifiedWebSocketManager};
//! use agentwire_redis::{RedisBroker, RedisConfig, RedisTarget};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RedisConfig::builder(RedisTarget::Standalone("redis://127.0.0.1:6379".into()))
//!     .key_prefix("prod:agentwire:")
//!     .build()?;
//! let broker = RedisBroker::connect(config).await?;
//! let manager = UnifiedWebSocketManager::new(ManagerConfig::default(), Arc::new(broker.clone()));
//! // /readyz: `Broker::health` (PING, and the pub/sub connection up);
//! // /metrics: `broker.metrics()`, a plain snapshot.
//! # let _ = (manager, broker.metrics());
//! # Ok(()) }
//! ```
//!
//! # Client crate: `redis` (redis-rs), not `fred`
//! Both are maintained async clients with tokio, cluster and RESP3 support. `redis` 1.x was
//! chosen because the broker needs control more than convenience:
//! - RESP3 pushes go to a callback we give the connection (`AsyncPushSender`), so messages
//!   are handed to subscribers on the connection's reader with no queue in between;
//!   `fred` hands them out through a bounded broadcast channel whose slow receivers lose
//!   messages, which we would then have to detect and resync.
//! - The connection reports its own loss (a `Disconnection` push), and subscriptions,
//!   reconnects, backoff and resync are ours: the subscription task knows exactly when a
//!   subscription is in effect again, which is when `resync` may be called.
//! - `Script` does `EVALSHA` with the `NOSCRIPT` fallback (load, retry) on both the
//!   standalone and the cluster connection, which routes a call by its first key.
//! - It is the client of the Redis project's own organisation, with a stable 1.x line
//!   whose minimum Rust version matches ours.
//!
//! # Data layout
//! Every key is `<prefix>{<user>}:<part>` (see [`RedisConfigBuilder::key_prefix`],
//! default `agentwire:`). The user is the hash tag, so all of a user's keys and its channel
//! share one cluster slot and one script may touch them; inside the braces `%`, `{` and
//! `}` are percent-escaped (`%25`, `%7B`, `%7D`), so a user id holding braces or colons can
//! neither move the tag nor collide with another user.
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `…:meta` | HASH | `epoch`, `seq` (newest), `ts` (newest) | `stream_idle_ttl` (24 h) after the last publish or history read |
//! | `…:stream` | STREAM | entry id `<seq>-<ts>`, field `m` = `<type>\n<event_id>\n<frame>` | `max_age` after the last publish; trimmed to `max_events_per_user` (`MAXLEN`, exact) and by age (`MINID`) |
//! | `…:ids` | HASH | `event_id` → `<seq>:<ts>:<digest>` | `dedupe_window` after the last publish; entries past the window or beyond `max_dedupe_per_user` are dropped |
//! | `…:order` | ZSET | `event_id` scored by `seq` (the dedupe entries oldest first) | as `…:ids` |
//! | `…:channel` | channel | `<seq>\n<ts>\n<epoch>\n` + the stream entry | — |
//! | `…:run:<run_id>` | HASH | one run's lifecycle: `s` (r, c, f), `n` open calls, `b` bytes, `a` reserved bytes, `k` reservation token, `o` owner, `f` registry last told, `l` last event or heartbeat (ms, Redis `TIME`), `w` the run's own stall timeout (ms), `t:<tool_call_id>` per open call | `run_limits.ttl` after the run's last event |
//!
//! | `…:leases` | HASH | connection leases: `<node>/<connection>` → expiry (ms), `x<expiry>` once evicted, `#` the admission counter | twice `connection_lease` after the last admission or renewal |
//! | `…:lease_order` | ZSET | live leases by admission | as `…:leases` |
//! | `…:receipt` | HASH | the user's delivery receipt across the nodes: `e` epoch, `d` delivered seq, `a` acked seq, each moved only forward by `lua/receipts.lua` ([`RedisReceipts`]) | `stream_idle_ttl` after the last record |
//!
//! and, under a hash tag of its own (`%runs`, which no escaped user can be), the **run
//! registry**, which counts the run state of every user for the whole cluster (each key
//! expiring 2 × ttl after the registry's last call):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>{%runs}:runs` | HASH | run key → `<live>:<bytes>:<token>:<holds>:<revived>:<owner>` |
//! | `<prefix>{%runs}:expiry` | ZSET | run key by when the registry forgets it (1.5 × ttl after it was last told) |
//! | `<prefix>{%runs}:finished` | ZSET | finished runs by when they ended: the order they make room |
//! | `<prefix>{%runs}:owners` | HASH | publisher → its runs in progress and their bytes |
//! | `<prefix>{%runs}:totals` | HASH | `runs`, `live`, `bytes`, `live_bytes` |
//!
//! For the cluster beyond the streams ([`RedisBroker::cluster`], [`RedisBroker::rates`]):
//! `<prefix>{%ctl}:nodes` (ZSET: the live nodes of the control channel, by when their
//! presence expires), the channels `<prefix>{%ctl}:all` and `<prefix>{%ctl}:node:<node>`
//! ([`RedisControl`]), and `<prefix>{%rate:<publisher>}:tat` (one publisher's publish rate,
//! [`RedisRates`]). No escaped user starts with `%`, so none of these tags is a user's.
//!
//! A stream lives as long as its `meta`: when `meta` expires (`stream_idle_ttl` after the
//! user's last publish or history read, at least the dedupe window) or is lost (a Redis
//! restarted empty, an eviction), the user's next publish or read starts a new epoch at
//! `seq` 1 (rule 7 of the contract). The default keeps it far longer than history, so a
//! client that was idle for an hour resumes under the same epoch (a gap, if anything,
//! rather than a reset).
//!
//! On a standalone Redis the channel is a classic one (`PUBLISH`/`SUBSCRIBE`); on a
//! cluster it is a shard channel (`SPUBLISH`/`SSUBSCRIBE`), served by the node that owns
//! the user's slot, so publishing does not broadcast across the cluster bus.
//!
//! # The scripts (`lua/`)
//! **publish** (one call per `publish` or `publish_many`, with up to `max_batch_events`
//! events): `TIME` → now; the epoch from `meta`, or a new one (generated by the caller)
//! when the stream is new — then whatever is left of an older stream is deleted, so a
//! `seq` never restarts under an old epoch; pass 1 checks every event against `ids`
//! (inside the window: same digest → its first acceptance, another digest → *conflict*,
//! and the whole batch is refused with nothing stored) and against earlier events of the
//! batch, checks the run of every fresh guarded event (below), and numbers the fresh ones;
//! pass 2, per fresh event in order: compose the frame,
//! `XADD` (with `MAXLEN`), `HSET` ids, `ZADD` order, publish; then store the newest
//! `seq`/`ts`, trim by age, forget dedupe entries past the bounds, refresh the TTLs. `ts`
//! is Redis's clock in ms, never below the stream's previous `ts` (so age order is `seq`
//! order and the age trim is a binary search over `seq`).
//! **history**: the epoch (created as above when the stream is new, so the epoch a client
//! is told at connect is the one its first event gets), trim by age, the newest `seq`, the
//! first held `seq`, and `XRANGE` from `after + 1`; the broker derives the gap exactly as
//! the in-memory broker does. **lookup**: the dedupe entry, if inside the window.
//! **runs**: the run registry (below). **heartbeat**: a run in progress gets `l` = now
//! (rule 12), nothing else.
//!
//! # Stall claims (rule 12 of the contract)
//! Every fresh guarded event sets its run's `l` to Redis's `TIME`; `agent_started` stores
//! the run's own stall timeout in `w`. A stall claim (step code `x`, its argument the
//! outcome and the claim's timeout) is checked in the publish script like any step, after
//! the run is found in progress: when `now - l` is below the timeout (`w`, else the
//! claim's; `w` = 0: never) the script answers `active` with the time left and writes
//! nothing, otherwise the claim ends the run as `e` would. One script, one clock: of
//! claims from many nodes exactly one ends a stalled run.
//!
//! # Run guards (rule 11 of the contract)
//! The publish script checks every fresh guarded event against its run's state key —
//! after dedupe and conflicts, in batch order, by the rules of
//! `agentwire_protocol::RunState::apply_step`, which `lua/publish.lua` mirrors (a property
//! test runs random sequences through both) — and writes the runs with the append, in the
//! same atomic step: of many `agent_started` of one run on many nodes, one is accepted.
//!
//! The bounds (`RunLimits`) hold for the whole cluster through the registry, one more
//! script (`lua/runs.lua`) on its own slot, called per *run*, not per event:
//! 1. before a batch that starts a run, the node **reserves** its room (refused at a bound:
//!    the script then refuses the start with `TooManyRuns`, in batch order); finished runs
//!    are forgotten first to make room, their state keys deleted by the node;
//! 2. the publish script starts the run on the reservation's token, and asks for more room
//!    (`grow`, nothing written) when open tool calls outgrow it; the node asks the
//!    registry and calls the script again;
//! 3. after the publish, the node tells the registry that a run **ended** (`finish`), that
//!    one is still going (`refresh`, at most every half ttl), and **drops** its hold on a
//!    reservation its publish did not start a run on (a duplicate `agent_started`, a lost
//!    race, a refused batch): the last hold dropped, the reservation goes. Concurrent
//!    starters of one run share one reservation (`exists`), so the run counts once.
//!
//! A run in progress is counted at its reservation: its bytes plus up to 1 KiB of room
//! taken while the bounds left it, so a run opening a few tool calls asks once.
//!
//! **Failure modes.** Between the registry and a user's slot nothing is atomic, and the
//! registry errs on the side of counting too much, for a bounded time: a node that dies
//! (or loses Redis) after reserving and before publishing, or after ending a run and
//! before telling the registry, leaves a reservation that holds its place until the
//! registry forgets it, 1.5 × ttl after it was last told; a failed follow-up call is
//! counted in `run_registry_failures`. A run whose registry entry expired while the run
//! went on is reserved again when it next needs room. A run's state key whose delete
//! failed after an eviction expires with its ttl, answering `AfterTerminal` until then. A
//! publish that failed transiently keeps its reservation: a retry finds it.
//!
//! # Frames: composed in the script, byte for byte
//! The frame is joined inside the publish script from pieces the caller cuts out of
//! [`compose_frame`](agentwire_manager::compose_frame)'s own output (composed with `seq`
//! and `ts` 0): `head ‖ seq ‖ mid ‖ ts ‖ tail`. Composing in Rust around values the script
//! returns would need a second step to publish, and two publishers of one user could then
//! publish in an order other than `seq`'s, or a stream entry could be delivered with a
//! frame built for another `seq`. In the script, the frame, the stored entry and the
//! published message come from the same values in the same atomic step. A test compares
//! stored and delivered frames with `compose_frame` for awkward event ids.
//!
//! # TLS
//! `rediss://` addresses connect over TLS (rustls on ring) and always verify the server's
//! certificate and name: against the system's CA certificates, or only against a CA of
//! the operator's ([`RedisTls`], given with [`RedisConfigBuilder::tls`]), which also
//! carries a client certificate for a Redis that asks for one. TLS settings with a
//! `redis://` address are refused, so a configuration that meant TLS cannot run without
//! it.
//!
//! # Subscriptions
//! One dedicated pub/sub connection per broker (named `agentwire-pubsub:<prefix>` on a
//! standalone Redis). Subscriptions are counted per (user, subscriber) in this process;
//! the first subscriber of a user adds the user's channel to a pending set that the
//! subscription task sends in batches (`subscribe_batch` channels per command) and waits
//! for Redis's confirmation, so `subscribe` is in effect when it returns. An unsubscribe
//! that ends a subscriber's delivery first publishes a *barrier* message on the user's
//! channel and waits for it to come back (messages arrive in publish order), so every
//! event accepted while the subscription was held reaches the subscriber; then delivery
//! stops, and the channel is unsubscribed in Redis in the next batch once no local
//! subscriber is left. Barriers of other nodes are ignored. When
//! the connection is lost (a `Disconnection` push, a failed `PING` every `ping_interval`,
//! a failed subscribe), the task makes a new one with exponential backoff and full jitter,
//! subscribes every wanted channel, and then calls `Subscriber::resync` for every
//! subscriber of every channel; a channel Redis drops on its own (a cluster slot moved) is
//! subscribed again and its users resynced. Messages of an older connection are ignored.
//!
//! # Bounds
//! Every bound is a [`RedisConfigBuilder`] setting with a default and a counter in
//! [`RedisMetrics`]: run state (`run_limits`: `runs_refused`, `runs_evicted`,
//! `runs_expired`; gauges `runs_held`, `runs_in_progress`, `run_bytes`), history per user
//! by count and age (`history_trimmed`), dedupe entries
//! by window and count (`dedupe_forgotten`), idle streams (`epochs_created`), command time
//! (`timeouts`), events per batch (`batches_refused`), channels per subscribe command
//! (`subscribe_commands`), pending subscription changes (`subscribes_refused`, gauge
//! `pending_subscriptions`), reconnect backoff (`reconnects`, `reconnect_failures`). What
//! Redis expires whole by TTL is not counted here (Redis's `expired_keys` counts it); total
//! memory is Redis's `maxmemory` (use a `volatile-*` policy: every key has a TTL; an
//! evicted `meta` means a new epoch and clients get `replay_gap`, an evicted stream a gap).
//! Commands share one multiplexed connection whose request queue is the client's own
//! (bounded, callers wait when it is full).

mod broker;
mod config;
mod connect;
mod control;
mod error;
mod keys;
mod leases;
mod metrics;
mod pubsub;
mod rates;
mod receipts;
mod runs;
mod script;
mod tls;

pub use broker::RedisBroker;
pub use config::{MAX_KEY_PREFIX_BYTES, RedisConfig, RedisConfigBuilder, RedisTarget, redact_url};
pub use connect::PUBSUB_CLIENT_NAME;
pub use control::{MAX_PENDING_CONTROL_REQUESTS, RedisControl};
pub use error::ConfigError;
pub use leases::RedisLeases;
pub use metrics::{LatencyHistogram, ROUND_TRIP_BUCKETS_MICROS, RedisMetrics};
pub use rates::RedisRates;
pub use receipts::RedisReceipts;
pub use tls::RedisTls;

#[cfg(feature = "testing")]
pub mod testing;
