//! Delivery receipts for publishers: `GET /v1/users/{user_id}/receipts` (how far the
//! user's clients got) and `GET /v1/users/{user_id}/runs/{run_id}` (one run: its state,
//! first and last `seq`, and whether its terminal event was delivered and acknowledged),
//! optionally waiting (`?wait_acked=30s`) until the terminal event is acknowledged —
//! a long poll bounded in time (`--receipt-max-wait`) and in number
//! (`--receipt-max-waiters`), ended when the caller goes away.
//!
//! A run is found in the user's history (every node shares it); the receipt is what this
//! node's sockets did, merged with what every node recorded when the manager shares
//! receipts (`--broker redis`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentwire_manager::UnifiedWebSocketManager;
use agentwire_protocol::{EventData, EventType, RunId, STALLED_CODE, Seq, ServerFrame, UserId};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::ApiState;
use super::runs::run_path;
use crate::auth::{KeyScope, authorize};
use crate::http::{ApiError, ErrorBody, ErrorCode};

/// How often a receipt long poll looks at the cluster's receipts again with `--broker
/// redis` (an ack on another node signals nothing here).
pub(crate) const RECEIPT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Events read from history per call while looking for a run.
const RUN_SCAN_PAGE: usize = 1_000;

/// The bounds and metrics of receipt long polls.
#[derive(Debug)]
pub(crate) struct ReceiptWaits {
    max_wait: Duration,
    max_waiters: usize,
    waiting: AtomicUsize,
    waiters: Gauge,
    refused: Counter,
}

impl ReceiptWaits {
    /// The bounds `max_wait` and `max_waiters`, with metrics registered in `registry`.
    pub(crate) fn new(max_wait: Duration, max_waiters: usize, registry: &mut Registry) -> Self {
        let w = ReceiptWaits {
            max_wait,
            max_waiters,
            waiting: AtomicUsize::new(0),
            waiters: Gauge::default(),
            refused: Counter::default(),
        };
        registry.register(
            "agentwire_receipt_waiters",
            "Receipt long polls (?wait_acked) waiting now (at most --receipt-max-waiters)",
            w.waiters.clone(),
        );
        registry.register(
            "agentwire_receipt_waits_refused",
            "Receipt long polls refused (503) because --receipt-max-waiters were waiting",
            w.refused.clone(),
        );
        w
    }
}

/// One waiting long poll; gives its place back when dropped (the answer, or the caller
/// going away).
struct WaitSlot<'a>(&'a ReceiptWaits);

impl<'a> WaitSlot<'a> {
    fn take(waits: &'a ReceiptWaits) -> Option<Self> {
        let taken = waits
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < waits.max_waiters).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            waits.refused.inc();
            return None;
        }
        waits.waiters.inc();
        Some(WaitSlot(waits))
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiters.dec();
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(1)
}

fn user_path(path: Result<Path<String>, PathRejection>) -> Result<UserId, ApiError> {
    let Path(user) = path.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    UserId::new(&user)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("a user id {e}")).at("user_id"))
}

/// `GET /v1/users/{user_id}/receipts`: how far the user's clients got on this node (on every node with `--broker redis`).
#[utoipa::path(get, path = "/v1/users/{user_id}/receipts", tag = "publish",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "Whose receipt")),
    responses(
        (status = 200, description = "The user's stream (epoch, newest seq) and how far its clients got on this node (on every node with --broker redis)", body = super::schema::ReceiptDoc),
        (status = 400, description = "Not a valid user id; or more than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 503, description = "The broker is unavailable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub(crate) async fn user_receipts(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&app.auth, &headers, KeyScope::Publish)?;
    let user = user_path(path)?;
    let stream = app
        .manager
        .history(&user, Seq::ZERO, 0)
        .await
        .map_err(unavailable)?;
    let (delivered, acked) = app
        .manager
        .receipt_in(&user, &stream.epoch)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({
        "user_id": user,
        "epoch": stream.epoch,
        "last_seq": stream.last_seq,
        "delivered_seq": delivered,
        "acked_seq": acked,
    }))
    .into_response())
}

/// What history says of one run.
#[derive(Debug, Default)]
struct RunSeen {
    first: Option<Seq>,
    last: Option<Seq>,
    started: bool,
    /// The terminal event: its seq, type, and whether the server ended the run as stalled.
    terminal: Option<(Seq, EventType, bool)>,
    /// History no longer held the run's first events.
    gap: bool,
}

async fn find_run(
    manager: &UnifiedWebSocketManager,
    user: &UserId,
    run: &RunId,
) -> Result<(agentwire_protocol::Epoch, Seq, RunSeen), ApiError> {
    let mut seen = RunSeen::default();
    let mut after = Seq::ZERO;
    loop {
        let page = manager
            .history(user, after, RUN_SCAN_PAGE)
            .await
            .map_err(unavailable)?;
        if after == Seq::ZERO && page.gap.is_some() {
            seen.gap = true;
        }
        for e in &page.events {
            after = e.seq;
            let Ok(ServerFrame::Event(env)) = ServerFrame::decode(&e.frame) else {
                continue;
            };
            if env.event.run_id.as_ref() != Some(run) {
                continue;
            }
            seen.first.get_or_insert(e.seq);
            seen.last = Some(e.seq);
            match &env.event.data {
                EventData::AgentStarted(_) => seen.started = true,
                EventData::AgentCompleted(_) => {
                    seen.terminal = Some((e.seq, EventType::AgentCompleted, false));
                }
                EventData::AgentError(d) => {
                    let stalled = d.code.as_deref() == Some(STALLED_CODE);
                    seen.terminal = Some((e.seq, EventType::AgentError, stalled));
                }
                _ => {}
            }
        }
        if page.events.len() < RUN_SCAN_PAGE || after >= page.last_seq {
            return Ok((page.epoch, page.last_seq, seen));
        }
    }
}

/// `wait_acked` from the query, bounded by `max`.
fn parse_wait(
    query: &BTreeMap<String, String>,
    max: Duration,
) -> Result<Option<Duration>, ApiError> {
    if let Some(other) = query.keys().find(|k| *k != "wait_acked") {
        return Err(ApiError::new(ErrorCode::BadRequest, "unknown query parameter").at(other));
    }
    let Some(v) = query.get("wait_acked") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "a duration such as 30s or 500ms, at most {} s (--receipt-max-wait)",
                max.as_secs()
            ),
        )
        .at("wait_acked")
    };
    let wait = parse_short_duration(v).ok_or_else(bad)?;
    if wait > max {
        return Err(bad());
    }
    Ok(Some(wait))
}

/// `500ms`, `30s`, `2m`, or a bare number of seconds.
fn parse_short_duration(v: &str) -> Option<Duration> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = v.split_at(digits);
    let n: u64 = n.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

fn run_body(
    user: &UserId,
    run: &RunId,
    epoch: &agentwire_protocol::Epoch,
    seen: &RunSeen,
    receipt: (Seq, Seq),
) -> Value {
    let (delivered, acked) = receipt;
    let state = match seen.terminal {
        Some((_, EventType::AgentCompleted, _)) => "completed",
        Some((_, _, true)) => "stalled",
        Some(_) => "failed",
        None => "running",
    };
    let terminal = seen.terminal.map(|(seq, ty, _)| {
        json!({
            "seq": seq,
            "type": ty.as_str(),
            "delivered": delivered >= seq,
            "acked": acked >= seq,
        })
    });
    json!({
        "user_id": user,
        "run_id": run,
        "epoch": epoch,
        "state": state,
        "first_seq": seen.first,
        "last_seq": seen.last,
        "started_in_history": seen.started,
        "terminal": terminal,
        "delivered_seq": delivered,
        "acked_seq": acked,
    })
}

/// `GET /v1/users/{user_id}/runs/{run_id}`: one run's receipt; with `wait_acked`, answers
/// once the run's terminal event is acknowledged or the time is up.
#[utoipa::path(get, path = "/v1/users/{user_id}/runs/{run_id}", tag = "publish",
    security(("api_key" = [])),
    params(("user_id" = String, Path, description = "Whose run"),
        ("run_id" = String, Path, description = "The run"),
        ("wait_acked" = Option<String>, Query, description = "Wait until the run's terminal event is acknowledged, at most this long (e.g. 30s; at most --receipt-max-wait, default 60s)")),
    responses(
        (status = 200, description = "The run as history holds it, and whether its terminal event was delivered and acknowledged on this node (on any node with --broker redis); after a wait, whatever holds when it ended", body = super::schema::RunReceiptDoc),
        (status = 400, description = "Not a valid user or run id, an unknown query parameter, or a wait_acked that is not a duration or exceeds --receipt-max-wait; or more than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "History holds no event of the run (never published, or trimmed)", body = ErrorBody),
        (status = 503, description = "The broker is unavailable, or --receipt-max-waiters long polls are waiting", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))))]
pub(crate) async fn run_receipt(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&app.auth, &headers, KeyScope::Publish)?;
    let (user, run) = run_path(path)?;
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let wait = parse_wait(&query, app.receipts.max_wait)?;
    let manager = &app.manager;
    let deadline = wait.map(|w| Instant::now() + w);
    let _slot = match wait {
        Some(_) => Some(WaitSlot::take(&app.receipts).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "too many receipt long polls are waiting (--receipt-max-waiters); retry",
            )
            .retry_after(1)
        })?),
        None => None,
    };
    let changes = manager.receipt_changes(&user);
    // The run as history held it; read again only while its end is not in it.
    let mut found: Option<(agentwire_protocol::Epoch, RunSeen)> = None;
    loop {
        // Armed before looking, so an ack in between wakes the wait.
        let changed = changes.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (epoch, seen) = match found.take() {
            Some(f) if f.1.terminal.is_some() => f,
            _ => {
                let (epoch, _, seen) = find_run(manager, &user, &run).await?;
                (epoch, seen)
            }
        };
        if seen.first.is_none() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "history holds no event of this run (never published, or trimmed)",
            )
            .at("run_id"));
        }
        let receipt = manager
            .receipt_in(&user, &epoch)
            .await
            .map_err(unavailable)?;
        let acked = seen.terminal.is_some_and(|(seq, _, _)| receipt.1 >= seq);
        let body = run_body(&user, &run, &epoch, &seen, receipt);
        let Some(deadline) = deadline.filter(|d| !acked && Instant::now() < *d) else {
            return Ok(Json(body).into_response());
        };
        found = Some((epoch, seen));
        // An ack on this node wakes the wait; one on another node is seen by looking
        // again every RECEIPT_POLL_INTERVAL.
        let look_again = if manager.receipts_shared() {
            deadline.min(Instant::now() + RECEIPT_POLL_INTERVAL)
        } else {
            deadline
        };
        let _ = tokio::time::timeout_at(look_again, changed).await;
    }
}
