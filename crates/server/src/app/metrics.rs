//! Prometheus metrics of one server instance: every counter and size of the manager's
//! `get_stats()` (read at scrape time), beside what each endpoint registered (the
//! WebSocket endpoint's in `crate::ws`, the publish API's in `crate::api`), and `/metrics`.
//!
//! Each server has its own [`Registry`]; there is no process-wide recorder, so several
//! servers in one process (tests) each report exact values.
//!
//! `/metrics` says much about a node (its users, its connections, its load): on the main
//! listener it is served to full API keys only; `--metrics-listen` serves it on an address
//! of its own (a private interface for Prometheus), and no longer on the main listener.

use std::fmt;
use std::sync::Arc;

use agentwire_bridge::AgentWebSocketBridge;
use agentwire_manager::{ManagerStats, RunLimit, RunStats, StallReason, UnifiedWebSocketManager};
use agentwire_protocol::{EventType, RunViolation};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::broker::ServerBroker;
use crate::auth::{Auth, KeyScope, authorize};
use crate::http::{ApiError, ErrorBody, ErrorCode};

/// The server's registry: what the endpoints registered, and the manager's stats.
pub(crate) struct Metrics {
    registry: Registry,
    /// Who may read `/metrics` on the main listener.
    access: Access,
}

/// Who may read `/metrics` on the main listener.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// The holder of a full API key.
    FullKey(Arc<Auth>),
    /// Nobody: it is served on its own listener (`--metrics-listen`), to anyone who reaches
    /// that address.
    Elsewhere,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// `registry` (with what the endpoints registered) plus a collector that reads
    /// `manager.get_stats()` at scrape time, one for `broker`'s own metrics when it has
    /// any (Redis), and one for the emitter pool of the demo's bridge when the demo is on.
    pub(crate) fn new(
        mut registry: Registry,
        manager: UnifiedWebSocketManager,
        broker: Option<&ServerBroker>,
        demo_bridge: Option<AgentWebSocketBridge>,
        access: Access,
    ) -> Metrics {
        registry.register_collector(Box::new(ManagerCollector { manager }));
        if let Some(bridge) = demo_bridge {
            registry.register_collector(Box::new(PoolCollector { bridge }));
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = broker.and_then(ServerBroker::redis) {
            registry.register_collector(Box::new(RedisCollector {
                broker: redis.clone(),
            }));
        }
        #[cfg(not(feature = "redis"))]
        let _ = broker;
        Metrics { registry, access }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `GET /metrics` on the main listener: Prometheus text, for a full API key — or 404 when
/// the metrics have a listener of their own (`--metrics-listen`).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Every metric (docs/operations.md), OpenMetrics text",
            content_type = "application/openmetrics-text"),
        (status = 400, description = "More than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "A publish-only API key", body = ErrorBody),
        (status = 404, description = "The metrics are served on --metrics-listen", body = ErrorBody)))]
pub(crate) async fn metrics(
    State(metrics): State<Arc<Metrics>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match &metrics.access {
        Access::FullKey(auth) => {
            authorize(auth, &headers, KeyScope::Full)?;
        }
        Access::Elsewhere => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "the metrics are served on their own listener (--metrics-listen)",
            ));
        }
    }
    Ok(exposition(&metrics))
}

/// `GET /metrics` on the listener of `--metrics-listen`: to anyone who reaches it.
pub(crate) async fn open_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    exposition(&metrics)
}

fn exposition(metrics: &Metrics) -> Response {
    let body = metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// The routes of the metrics listener: `/metrics`, and the JSON 404/405 for the rest.
pub(crate) fn listener_routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(open_metrics))
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .fallback(crate::http::not_found)
        .with_state(metrics)
}

/// Reads the manager's stats at scrape time.
#[derive(Debug)]
struct ManagerCollector {
    manager: UnifiedWebSocketManager,
}

/// Reads the demo bridge's emitter pool ([`PoolStats`](agentwire_emitter::PoolStats)) at
/// scrape time: the pool is the server's only one, and serves the demo's runs.
#[derive(Debug)]
struct PoolCollector {
    bridge: AgentWebSocketBridge,
}

impl Collector for PoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let p = self.bridge.pool_stats();
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let e = &mut enc;
        gauge(
            e,
            "agentwire_demo_pool_emitters",
            "Emitters the demo's emitter pool holds (runs not finished)",
            n(p.size),
        )?;
        gauge(
            e,
            "agentwire_demo_pool_max_emitters",
            "The bound on the demo's emitter pool",
            n(p.max_emitters),
        )?;
        gauge(
            e,
            "agentwire_demo_pool_finished_remembered",
            "Finished runs the demo's emitter pool remembers",
            n(p.finished_remembered),
        )?;
        for (name, help, v) in [
            (
                "agentwire_demo_pool_created",
                "Emitters the demo's pool made for a run it had none for",
                p.created,
            ),
            (
                "agentwire_demo_pool_reused",
                "Gets the demo's pool answered with the run's existing emitter",
                p.reused,
            ),
            (
                "agentwire_demo_pool_evicted_full",
                "Idle emitters the demo's pool dropped to make room for a new run",
                p.evicted_full,
            ),
            (
                "agentwire_demo_pool_evicted_idle",
                "Emitters the demo's pool dropped for being idle past its idle time",
                p.evicted_idle,
            ),
            (
                "agentwire_demo_pool_refused",
                "New demo runs the pool refused because every place held a live run",
                p.refused,
            ),
            (
                "agentwire_demo_pool_finished",
                "Demo runs that left the pool at their terminal event",
                p.finished,
            ),
            (
                "agentwire_demo_pool_finished_forgotten",
                "Finished runs the demo's pool forgot past its bound on remembered ones",
                p.finished_forgotten,
            ),
        ] {
            counter(e, name, help, v)?;
        }
        Ok(())
    }
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ManagerCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = self.manager.get_stats();
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let e = &mut enc;
        gauge(
            e,
            "agentwire_connections",
            "Live connections on this node",
            n(s.connections),
        )?;
        gauge(
            e,
            "agentwire_users",
            "Users with at least one live connection",
            n(s.users),
        )?;
        gauge(
            e,
            "agentwire_max_connections_of_a_user",
            "The most connections any one user holds",
            n(s.max_connections_of_a_user),
        )?;
        counter(
            e,
            "agentwire_connections_opened",
            "Connections accepted",
            s.connections_opened,
        )?;
        counter(
            e,
            "agentwire_connections_closed",
            "Connections removed",
            s.connections_closed,
        )?;
        counter(
            e,
            "agentwire_events_emitted",
            "Events accepted by the broker through this node (duplicates excluded)",
            s.events_emitted,
        )?;
        {
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "agentwire_events_emitted_by_type",
                "Events accepted by the broker through this node, by type",
                None,
                c.metric_type(),
            )?;
            for (t, v) in EventType::ALL.iter().zip(s.events_emitted_by_type) {
                let labels = [("type", t.as_str())];
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            e,
            "agentwire_events_delivered",
            "Live events queued to connections (one per connection reached)",
            s.events_delivered,
        )?;
        counter(
            e,
            "agentwire_events_replayed",
            "History events queued to resuming connections",
            s.events_replayed,
        )?;
        counter(
            e,
            "agentwire_replay_gaps",
            "replay_gap frames sent",
            s.replay_gaps,
        )?;
        counter(
            e,
            "agentwire_events_deduplicated",
            "Emits answered as duplicates of an earlier event_id",
            s.events_deduplicated,
        )?;
        counter(
            e,
            "agentwire_emit_failures",
            "Emits that failed",
            s.emit_failures,
        )?;
        counter(
            e,
            "agentwire_evictions",
            "Connections closed with 4003 to make room for a newer one of the same user",
            s.evictions,
        )?;
        counter(
            e,
            "agentwire_rejections_user_limit",
            "Connections refused with 4004 (per-user limit, policy reject)",
            s.rejections_user_limit,
        )?;
        counter(
            e,
            "agentwire_leases_lost",
            "Connections closed with 4003 because their lease was found taken by a newer connection of the user (--broker redis)",
            s.leases_lost,
        )?;
        counter(
            e,
            "agentwire_lease_failures",
            "Connection lease calls that failed (a connect refused, or a renewal missed) (--broker redis)",
            s.lease_failures,
        )?;
        counter(
            e,
            "agentwire_rejections_node_full",
            "Connections refused with 1013 (node connection limit)",
            s.rejections_node_full,
        )?;
        counter(
            e,
            "agentwire_slow_consumer_closes",
            "Connections closed with 1013 because their queue overflowed",
            s.slow_consumer_closes,
        )?;
        counter(
            e,
            "agentwire_deltas_merged",
            "Live message_delta events merged into the delta before them in a busy connection queue",
            s.deltas_merged,
        )?;
        counter(
            e,
            "agentwire_heartbeat_timeouts",
            "Connections closed because their peer went silent",
            s.heartbeat_timeouts,
        )?;
        gauge(
            e,
            "agentwire_history_events",
            "Events held in history",
            s.history_events,
        )?;
        gauge(
            e,
            "agentwire_history_bytes",
            "Bytes held in history",
            s.history_bytes,
        )?;
        gauge(
            e,
            "agentwire_history_users",
            "Users whose stream the broker holds",
            s.history_users,
        )?;
        counter(
            e,
            "agentwire_history_trimmed",
            "Events trimmed from history by its bounds",
            s.history_trimmed,
        )?;
        gauge(
            e,
            "agentwire_dedupe_ids",
            "Event ids remembered for deduplication (in history or the dedupe window)",
            s.dedupe_ids,
        )?;
        counter(
            e,
            "agentwire_event_id_conflicts",
            "Emits refused because their event_id was accepted for a different event",
            s.event_id_conflicts,
        )?;
        counter(
            e,
            "agentwire_resyncs",
            "Broker signals that deliveries may have been missed (the user's connections catch up from history)",
            s.resyncs,
        )?;
        counter(
            e,
            "agentwire_catch_up_failures",
            "Connections closed with 1011 because history could not be read, or did not reach delivered events, within the catch-up wait",
            s.catch_up_failures,
        )?;
        counter(
            e,
            "agentwire_catch_up_rereads",
            "Times a connection catching up, its queue less than half full, let go of the live events held aside past its queue's bounds and read them from history instead",
            s.catch_up_rereads,
        )?;
        gauge(
            e,
            "agentwire_queued_frames",
            "Frames waiting in connection queues, over all connections",
            s.queued_frames,
        )?;
        gauge(
            e,
            "agentwire_queued_bytes",
            "Bytes waiting in connection queues, over all connections (each at most --queue-max-bytes)",
            s.queued_bytes,
        )?;
        encode_runs(e, &s.runs)?;
        encode_watchdog(e, &s)?;
        encode_load(e, &s)
    }
}

/// The stall watchdog (docs/operations.md).
fn encode_watchdog(e: &mut DescriptorEncoder<'_>, s: &ManagerStats) -> fmt::Result {
    {
        let c = ConstCounter::new(0u64);
        let mut m = e.encode_descriptor(
            "agentwire_runs_stalled",
            "Runs this node ended with agent_error code stalled, by the timeout that applied \
             (timeout: --run-stall-timeout; run_timeout: the run's own stall_timeout_ms)",
            None,
            c.metric_type(),
        )?;
        for reason in StallReason::ALL {
            ConstCounter::new(s.runs_stalled[reason.index()])
                .encode(m.encode_family(&[("reason", reason.name())])?)?;
        }
    }
    gauge(
        e,
        "agentwire_watched_runs",
        "Runs in progress the stall watchdog watches on this node (at most --max-watched-runs)",
        s.watched_runs,
    )?;
    counter(
        e,
        "agentwire_runs_unwatched",
        "Runs the stall watchdog did not watch because --max-watched-runs were watched",
        s.runs_unwatched,
    )?;
    gauge(
        e,
        "agentwire_receipt_users",
        "Users whose delivery receipt this node keeps (at most --max-receipt-users)",
        s.receipt_users,
    )?;
    counter(
        e,
        "agentwire_receipts_evicted",
        "Delivery receipts forgotten to make room at --max-receipt-users",
        s.receipts_evicted,
    )?;
    counter(
        e,
        "agentwire_receipts_expired",
        "Delivery receipts forgotten after --receipt-ttl unchanged while their user had no \
         connection on this node",
        s.receipts_expired,
    )?;
    counter(
        e,
        "agentwire_receipts_unflushed",
        "Receipt changes not written to Redis because --max-receipt-users users were \
         waiting for the next flush",
        s.receipts_unflushed,
    )?;
    counter(
        e,
        "agentwire_receipt_flush_failures",
        "Receipt writes to Redis that failed (each retried at the next flush)",
        s.receipt_flush_failures,
    )
}

/// How busy the runtime is, and the direct writes it pauses (docs/architecture.md,
/// *Direct writes*).
fn encode_load(e: &mut DescriptorEncoder<'_>, s: &ManagerStats) -> fmt::Result {
    #[allow(clippy::cast_precision_loss)] // at most 1,000
    let busy = ConstGauge::new(s.runtime_busy_permille as f64 / 1e3);
    let m = e.encode_descriptor(
        "agentwire_runtime_busy_ratio",
        "The share of the last 50 ms the runtime's workers were busy",
        None,
        busy.metric_type(),
    )?;
    busy.encode(m)?;
    counter(
        e,
        "agentwire_direct_write_pauses",
        "Times live events went to the connections' writers instead of being written \
         directly (a trial, or a pause kept), the runtime's workers busy more than 85 % \
         of the time; direct writes resume below 70 %",
        s.direct_write_pauses,
    )?;
    counter(
        e,
        "agentwire_write_mode_trials",
        "Trials of the other way of writing live events (pausing direct writes, or \
         resuming them) while the runtime's workers were busy more than 85 % of the time",
        s.write_mode_trials,
    )?;
    counter(
        e,
        "agentwire_write_mode_switches",
        "Trials kept because deliveries cost less of the workers' busy time under them",
        s.write_mode_switches,
    )
}

/// The broker's run state (docs/protocol.md §7, docs/operations.md).
fn encode_runs(e: &mut DescriptorEncoder<'_>, r: &RunStats) -> fmt::Result {
    gauge(
        e,
        "agentwire_run_states",
        "Runs whose lifecycle state the broker holds, in progress and finished (at most --max-runs)",
        r.runs,
    )?;
    gauge(
        e,
        "agentwire_runs_in_progress",
        "Runs started and not ended whose state the broker holds",
        r.live_runs,
    )?;
    gauge(
        e,
        "agentwire_run_state_bytes",
        "Bytes of run state the broker holds (at most --run-state-max-bytes)",
        r.bytes,
    )?;
    counter(
        e,
        "agentwire_run_state_evictions",
        "Finished runs forgotten to make room at --max-runs or --run-state-max-bytes",
        r.evicted,
    )?;
    counter(
        e,
        "agentwire_run_states_expired",
        "Runs forgotten --run-ttl after their last event",
        r.expired,
    )?;
    {
        let c = ConstCounter::new(0u64);
        let mut m = e.encode_descriptor(
            "agentwire_run_violations",
            "Run events refused (409 run_violation) because they break their run, by violation",
            None,
            c.metric_type(),
        )?;
        for (name, v) in RunViolation::NAMES.iter().zip(r.violations) {
            ConstCounter::new(v).encode(m.encode_family(&[("violation", *name)])?)?;
        }
    }
    let c = ConstCounter::new(0u64);
    let mut m = e.encode_descriptor(
        "agentwire_runs_refused",
        "Run events refused (429 too_many_runs) at a run-state bound, by the bound's flag",
        None,
        c.metric_type(),
    )?;
    for limit in RunLimit::ALL {
        let flag = match limit {
            RunLimit::Runs => "max_runs",
            RunLimit::Bytes => "run_state_max_bytes",
            RunLimit::OwnerRuns => "max_runs_per_key",
            _ => "run_state_max_bytes_per_key",
        };
        ConstCounter::new(r.refused_at(limit)).encode(m.encode_family(&[("bound", flag)])?)?;
    }
    Ok(())
}

/// Reads the Redis broker's own counters at scrape time (`agentwire_redis_*`).
#[cfg(feature = "redis")]
#[derive(Debug)]
struct RedisCollector {
    broker: agentwire_redis::RedisBroker,
}

/// A histogram snapshot: each bucket's own count (the encoder accumulates them).
#[cfg(feature = "redis")]
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

#[cfg(feature = "redis")]
impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

#[cfg(feature = "redis")]
impl Collector for RedisCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        use agentwire_redis::ROUND_TRIP_BUCKETS_MICROS;
        let m = self.broker.metrics();
        let e = &mut enc;
        #[allow(clippy::cast_precision_loss)] // bucket bounds are small whole microseconds
        let bounds = ROUND_TRIP_BUCKETS_MICROS
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain(std::iter::once(f64::MAX));
        let h = ConstHistogram {
            sum: m.round_trip.sum.as_secs_f64(),
            count: m.round_trip.count,
            buckets: bounds.zip(m.round_trip.counts.iter().copied()).collect(),
        };
        let enc_h = e.encode_descriptor(
            "agentwire_redis_round_trip_seconds",
            "Round trips to Redis (commands and script calls, failed ones included), by duration",
            None,
            h.metric_type(),
        )?;
        h.encode(enc_h)?;
        for (name, help, v) in [
            (
                "agentwire_redis_reconnects",
                "Times the Redis pub/sub connection was lost and made again",
                m.reconnects,
            ),
            (
                "agentwire_redis_reconnect_failures",
                "Attempts to reconnect the Redis pub/sub connection that failed (each followed by a backoff)",
                m.reconnect_failures,
            ),
            (
                "agentwire_redis_resyncs",
                "Users caught up from history after a Redis subscription was restored",
                m.resyncs,
            ),
            (
                "agentwire_redis_script_errors",
                "Script calls Redis answered with an error",
                m.script_errors,
            ),
            (
                "agentwire_redis_timeouts",
                "Redis commands that did not answer within --redis-command-timeout",
                m.timeouts,
            ),
            (
                "agentwire_redis_unavailable",
                "Redis commands that failed for want of a connection",
                m.unavailable,
            ),
            (
                "agentwire_redis_epochs_created",
                "Streams that started a new epoch in this node's calls (new users, expired streams, a Redis that lost its data)",
                m.epochs_created,
            ),
            (
                "agentwire_redis_dedupe_forgotten",
                "Dedupe entries forgotten past the dedupe window or the per-user count bound",
                m.dedupe_forgotten,
            ),
            (
                "agentwire_redis_batches_refused",
                "Publish batches refused for holding more events than one script call takes",
                m.batches_refused,
            ),
            (
                "agentwire_redis_subscribe_commands",
                "SUBSCRIBE/SSUBSCRIBE commands sent (each for a batch of channels)",
                m.subscribe_commands,
            ),
            (
                "agentwire_redis_unsubscribe_commands",
                "UNSUBSCRIBE/SUNSUBSCRIBE commands sent",
                m.unsubscribe_commands,
            ),
            (
                "agentwire_redis_subscribes_refused",
                "Subscriptions refused because too many channel changes were waiting for Redis",
                m.subscribes_refused,
            ),
            (
                "agentwire_redis_messages_delivered",
                "Redis pub/sub messages handed to this node's subscribers",
                m.messages_delivered,
            ),
            (
                "agentwire_redis_malformed_messages",
                "Redis pub/sub messages that could not be decoded (the user is resynced)",
                m.malformed_messages,
            ),
            (
                "agentwire_redis_ping_failures",
                "Health checks (PING) of the Redis pub/sub connection that failed",
                m.ping_failures,
            ),
            (
                "agentwire_redis_run_registry_calls",
                "Calls to the cluster-wide run registry in Redis",
                m.run_registry_calls,
            ),
            (
                "agentwire_redis_run_registry_failures",
                "Run registry calls after an accepted publish that failed (corrected by the registry's expiry)",
                m.run_registry_failures,
            ),
            (
                "agentwire_redis_lease_evictions",
                "Connections of a user, on any node, whose lease this node's admissions took (per-user limit across nodes)",
                m.lease_evictions,
            ),
            (
                "agentwire_redis_lease_rejections",
                "Connections this node refused because the user held the limit in leases across nodes",
                m.lease_rejections,
            ),
            (
                "agentwire_redis_leases_restored",
                "Expired leases of this node's connections taken again at renewal (the user had room)",
                m.leases_restored,
            ),
            (
                "agentwire_redis_evicted_leases_forgotten",
                "Evicted leases forgotten past 64 per user (a renewal of one treats it as expired, not evicted)",
                m.evicted_leases_forgotten,
            ),
            (
                "agentwire_redis_control_sent",
                "Messages this node published on the control channel",
                m.control_sent,
            ),
            (
                "agentwire_redis_control_received",
                "Messages this node received on the control channel",
                m.control_received,
            ),
            (
                "agentwire_redis_control_failures",
                "Control channel calls that failed (link down, command failed or timed out)",
                m.control_failures,
            ),
            (
                "agentwire_redis_control_unanswered",
                "Admin requests some live node did not answer within --redis-control-wait",
                m.control_unanswered,
            ),
            (
                "agentwire_redis_control_refused",
                "Admin requests refused because too many were waiting for answers",
                m.control_refused,
            ),
            (
                "agentwire_redis_control_reconnects",
                "Times the control channel's connection was lost and made again",
                m.control_reconnects,
            ),
            (
                "agentwire_redis_rate_refused",
                "Publish requests the cluster's per-key rate limiter refused (429)",
                m.rate_refused,
            ),
        ] {
            counter(e, name, help, v)?;
        }
        gauge(
            e,
            "agentwire_redis_subscribed_channels",
            "Redis channels this node is subscribed to (one per user with a connection here)",
            m.subscribed_channels,
        )?;
        gauge(
            e,
            "agentwire_redis_pending_subscriptions",
            "Channel changes waiting for the Redis subscription task",
            m.pending_subscriptions,
        )?;
        gauge(
            e,
            "agentwire_redis_control_up",
            "1 while this node's control channel subscription (admin disconnects, evictions between nodes) is up; /readyz answers 503 while it is 0",
            m.control_up,
        )
    }
}
