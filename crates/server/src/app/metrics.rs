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

use agentwire_manager::{RunLimit, RunStats, UnifiedWebSocketManager};
use agentwire_protocol::{EventType, RunViolation};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

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
    /// `manager.get_stats()` at scrape time.
    pub(crate) fn new(
        mut registry: Registry,
        manager: UnifiedWebSocketManager,
        access: Access,
    ) -> Metrics {
        registry.register_collector(Box::new(ManagerCollector { manager }));
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
        encode_runs(e, &s.runs)
    }
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
