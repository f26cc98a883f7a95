//! `POST /v1/events`: the publish API for agents in other processes and languages
//! (docs/protocol.md §8), and what it shares with the history read: the settings and the
//! metrics.
//!
//! A request goes through, in this order: the API key (401/403), the content type (415),
//! the body size (413), decoding (400/413/422), each event's validation and size (422/413),
//! the key's rate (429), and then the broker: one `publish_many` per user of the body, all
//! at once. With `--run-lifecycle enforce` every run event carries a run guard, and the
//! broker checks each user's events — dedupe first, then `event_id` conflicts (409
//! `event_id_conflict`) and runs (409 `run_violation`, 429 `too_many_runs`), in order —
//! in the same atomic step as their append (rule 11 of the broker contract); 503 on a
//! failure. Every check before the broker looks at the whole body, so such a refusal
//! publishes nothing; the broker takes each user's events all or nothing, so only a broker
//! failure, or a refusal of one user's events in a body for several users, leaves part of
//! a body published — the answer lists what was.

use std::sync::Arc;

use agentwire_manager::{
    BrokerError, EmitError, PreparedEvent, PublishRate, PublishRates, PublisherId, RateDecision,
    RunLimit,
};
use agentwire_protocol::{
    DecodeError, EventIdBatch, Limits, MAX_EVENT_DEPTH, PublishBody, ResultsWriter, RunId,
    RunViolation, UserId,
};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::time::Duration;

use super::ApiState;
use crate::auth::{ApiKey, KeyScope, authorize};
use crate::http::{ApiError, ErrorBody, ErrorCode, body};

/// The setting that bounds a publish body, as its errors name it.
const MAX_REQUEST_BYTES: &str = "--max-request-bytes";

/// `Retry-After` of a 503, in seconds.
const BROKER_RETRY_AFTER_SECS: u64 = 1;

/// `Retry-After` of a 429 `too_many_runs`, in seconds: runs end on their own time, so a
/// short wait and a retry.
const RUNS_RETRY_AFTER_SECS: u64 = 1;

type StatusLabel = [(&'static str, &'static str); 1];

/// The metrics of the publish API and the history read.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublishMetrics {
    requests: Family<StatusLabel, Counter>,
    history_reads: Family<StatusLabel, Counter>,
}

impl PublishMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = PublishMetrics::default();
        registry.register(
            "agentwire_publish_requests",
            "POST /v1/events requests, by HTTP status (429: refused by the per-key rate limit)",
            m.requests.clone(),
        );
        registry.register(
            "agentwire_history_reads",
            "GET /v1/users/{user_id}/events requests, by HTTP status",
            m.history_reads.clone(),
        );
        m
    }

    pub(crate) fn history_read(&self, status: StatusCode) {
        self.history_reads
            .get_or_create(&[("status", status_label(status))])
            .inc();
    }
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// The settings and state of the publish API.
#[derive(Debug)]
pub(crate) struct PublishApi {
    pub(crate) max_batch: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) history_read_max: usize,
    /// The key's rate, and the limiter that holds it (`None`: `--publish-rate 0`).
    limiter: Option<(PublishRate, Arc<dyn PublishRates>)>,
    /// Whether run events carry run guards (`--run-lifecycle enforce`).
    lifecycle: bool,
    pub(crate) metrics: PublishMetrics,
}

impl PublishApi {
    /// The publish API with these bounds; `lifecycle` has the broker check each run
    /// event against its run; `rates` holds each key's `--publish-rate` (this node's
    /// limiter, or one shared by the cluster).
    pub(crate) fn new(
        limits: PublishLimits,
        lifecycle: bool,
        rates: Arc<dyn PublishRates>,
        metrics: PublishMetrics,
    ) -> Self {
        let rate = PublishRate {
            per_second: limits.publish_rate,
            burst: limits.publish_burst.max(1),
        };
        PublishApi {
            max_batch: limits.max_batch.max(1),
            max_request_bytes: limits.max_request_bytes,
            history_read_max: limits.history_read_max.max(1),
            limiter: (limits.publish_rate > 0).then_some((rate, rates)),
            lifecycle,
            metrics,
        }
    }
}

impl PublishApi {
    /// Takes `events` from `publisher`'s rate (`--publish-rate`, `--publish-burst`), or
    /// the 429 (or 503, the limiter failing) that refuses them.
    pub(crate) async fn take_rate(
        &self,
        publisher: &PublisherId,
        events: usize,
    ) -> Result<(), ApiError> {
        if let Some((rate, limiter)) = &self.limiter {
            let decision = limiter.take(publisher, events, *rate).await;
            if !matches!(decision, Ok(RateDecision::Taken)) {
                return Err(rate_problem(decision, rate.per_second, events));
            }
        }
        Ok(())
    }
}

/// The publish API's and the history read's bounds (see the flags of the same names).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishLimits {
    pub(crate) max_batch: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) history_read_max: usize,
    pub(crate) publish_rate: u32,
    pub(crate) publish_burst: u32,
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send `Content-Type: application/json`",
        ))
    }
}

/// The status and body for a body that did not decode.
fn decode_problem(e: &DecodeError, body_len: usize, api: &PublishApi) -> ApiError {
    match e {
        DecodeError::TooLarge { .. } if body_len > api.max_request_bytes => {
            body::too_large(api.max_request_bytes, MAX_REQUEST_BYTES)
        }
        DecodeError::TooLarge { size, limit } => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the batch holds {size} events; the limit is {limit} (--max-batch)"),
        ),
        DecodeError::MissingType
        | DecodeError::UnknownType { .. }
        | DecodeError::Invalid { .. } => ApiError {
            field: e.field().map(str::to_owned),
            ..ApiError::new(ErrorCode::InvalidEvent, reason_of(e))
        },
        _ => ApiError::new(ErrorCode::BadRequest, e.to_string()),
    }
}

/// The reason of a field error, without the "field `x`:" its `Display` starts with (the
/// body names the field on its own).
fn reason_of(e: &DecodeError) -> String {
    match e {
        DecodeError::Invalid { reason, .. } => reason.clone(),
        DecodeError::MissingType => "missing or not a string".into(),
        DecodeError::UnknownType { type_name } => format!("unknown type `{type_name}`"),
        other => other.to_string(),
    }
}

/// The path prefix of item `i`: `[i]` in a batch, nothing for a single event.
fn item(batch: bool, i: usize) -> String {
    if batch {
        format!("[{i}]")
    } else {
        String::new()
    }
}

fn prepare_problem(e: EmitError, batch: bool, i: usize) -> ApiError {
    match e {
        EmitError::Invalid(d) => {
            let d = d.within(&item(batch, i));
            ApiError {
                field: d.field().map(str::to_owned),
                ..ApiError::new(ErrorCode::InvalidEvent, reason_of(&d))
            }
        }
        EmitError::TooLarge { size, limit } => ApiError {
            field: batch.then(|| item(batch, i)),
            ..ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the event is {size} bytes of JSON; the limit is {limit} (--max-event-bytes)"
                ),
            )
        },
        other => broker_problem(&other, batch, i, &[]),
    }
}

/// The answer to a publish the broker did not take whole: event `i` failed with `e`, and
/// the events at `accepted` (indexes into the body) were accepted.
fn broker_problem(e: &EmitError, batch: bool, i: usize, accepted: &[usize]) -> ApiError {
    let transient = e.is_transient() || matches!(e, EmitError::Broker(BrokerError::Closed));
    let mut outcome = String::new();
    if accepted.is_empty() && transient {
        // A broker that did not answer may have stored the events before the answer was
        // lost: a retry under the same event_ids is answered with what was stored.
        outcome.push_str(
            "; nothing is known to have been published: retry the body with the same \
             event_ids (an event the broker did store is answered with its first acceptance)",
        );
    } else if accepted.is_empty() {
        outcome.push_str("; nothing was published");
    } else if accepted.iter().copied().eq(0..i) {
        outcome.push_str(&format!(
            "; the events before [{i}] were accepted: retry the body with the same event_ids"
        ));
    } else {
        let list: Vec<String> = accepted.iter().map(|&a| format!("[{a}]")).collect();
        outcome.push_str(&format!(
            "; the events {} were accepted: retry the body with the same event_ids",
            list.join(", ")
        ));
    }
    let at = |field: &str| match (batch, field.is_empty()) {
        (false, _) => field.to_owned(),
        (true, true) => item(batch, i),
        (true, false) => format!("{}.{field}", item(batch, i)),
    };
    match e {
        EmitError::Conflict { .. } => {
            ApiError::new(ErrorCode::EventIdConflict, format!("{e}{outcome}")).at(at("event_id"))
        }
        EmitError::Violation(v) => violation_problem(v, &outcome).at(at(v.field())),
        EmitError::TooManyRuns(limit) => ApiError::new(
            ErrorCode::TooManyRuns,
            format!(
                "no room for this run's state: {} is full ({}){outcome}",
                limit_flag(*limit),
                limit_meaning(*limit)
            ),
        )
        .at(at("run_id"))
        .retry_after(RUNS_RETRY_AFTER_SECS),
        _ => {
            let error = if transient {
                ApiError::new(ErrorCode::Unavailable, format!("{e}{outcome}"))
                    .retry_after(BROKER_RETRY_AFTER_SECS)
            } else {
                ApiError::new(ErrorCode::Internal, format!("{e}{outcome}"))
            };
            ApiError {
                field: batch.then(|| item(batch, i)),
                ..error
            }
        }
    }
}

/// The flag of the run-state bound `limit`.
fn limit_flag(limit: RunLimit) -> &'static str {
    match limit {
        RunLimit::Runs => "--max-runs",
        RunLimit::Bytes => "--run-state-max-bytes",
        RunLimit::OwnerRuns => "--max-runs-per-key",
        RunLimit::OwnerBytes => "--run-state-max-bytes-per-key",
        _ => "a run-state bound",
    }
}

fn limit_meaning(limit: RunLimit) -> &'static str {
    match limit {
        RunLimit::Runs => "runs in progress on the server",
        RunLimit::Bytes => "bytes of run state on the server",
        RunLimit::OwnerRuns => "this API key's runs in progress",
        RunLimit::OwnerBytes => "this API key's bytes of run state",
        _ => "run state",
    }
}

/// A `run_violation`: the message starts with the violation's name (docs/protocol.md §7).
fn violation_problem(v: &RunViolation, outcome: &str) -> ApiError {
    ApiError::new(
        ErrorCode::RunViolation,
        format!("{}: {v}{outcome}", v.name()),
    )
}

/// The answer to a body the key's rate refused (429, nothing published), or to a limiter
/// that could not be asked (503).
fn rate_problem(decision: Result<RateDecision, BrokerError>, rate: u32, events: usize) -> ApiError {
    match decision {
        // No `Retry-After`: waiting does not help.
        Ok(RateDecision::OverBurst { burst }) => ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "the body holds {events} events; this API key may publish at most {burst} at \
                 once (--publish-burst): split it. Nothing was published"
            ),
        ),
        Ok(other) => {
            let wait = match other {
                RateDecision::Wait(w) => w,
                _ => Duration::ZERO,
            };
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this API key may publish {rate} events per second (--publish-rate); \
                     nothing was published"
                ),
            )
            // `Retry-After` counts whole seconds: at least one.
            .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
        }
        Err(e) => ApiError::new(
            ErrorCode::Unavailable,
            format!("the publish rate limiter cannot be reached: {e}; nothing was published"),
        )
        .retry_after(BROKER_RETRY_AFTER_SECS),
    }
}

/// Who `key` publishes as: the fingerprint its runs and its rate count against.
pub(crate) fn publisher_of(app: &ApiState, key: ApiKey) -> Result<PublisherId, ApiError> {
    app.auth.publisher(key).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            "the API key has no publisher fingerprint",
        )
    })
}

/// Where a publisher asks whether an event reached its user (docs/protocol.md §8.5); the
/// receipt webhook's notices carry it.
#[cfg(any(feature = "webhook", test))]
pub(crate) fn receipt_path(user: &UserId, run: Option<&RunId>) -> String {
    let mut out = Vec::with_capacity(
        "/v1/users//receipts".len() + user.as_str().len() + run.map_or(0, |r| r.as_str().len()),
    );
    push_receipt_path(&mut out, user, run);
    // Only ASCII is written: unreserved bytes as they are, every other byte as `%XX`.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends [`receipt_path`]'s path: it runs for every published event, so it is written
/// into the answer itself, without a string of its own and without `format!`. What it
/// writes needs no JSON escape.
fn push_receipt_path(out: &mut Vec<u8>, user: &UserId, run: Option<&RunId>) {
    out.extend_from_slice(b"/v1/users/");
    push_path_segment(out, user.as_str());
    match run {
        Some(run) => {
            out.extend_from_slice(b"/runs/");
            push_path_segment(out, run.as_str());
        }
        None => out.extend_from_slice(b"/receipts"),
    }
}

/// Appends `s` percent-encoded as one path segment: every byte but the unreserved ones.
fn push_path_segment(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = s.as_bytes();
    // Most segments (user ids, run ids) are unreserved throughout: checked eight bytes at
    // a time and copied whole.
    if all_unreserved(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    // Runs of unreserved bytes are copied whole.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if UNRESERVED[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether every byte of `bytes` is unreserved: eight table lookups at a time, joined
/// without a branch per byte.
fn all_unreserved(bytes: &[u8]) -> bool {
    let kept = |b: u8| UNRESERVED[usize::from(b)];
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let all = kept(c[0])
            & kept(c[1])
            & kept(c[2])
            & kept(c[3])
            & kept(c[4])
            & kept(c[5])
            & kept(c[6])
            & kept(c[7]);
        if !all {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| kept(b))
}

/// The bytes a path segment keeps as they are (RFC 3986 unreserved), by value.
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

/// `POST /v1/events`: publishes one event or a batch, all or nothing (docs/protocol.md
/// §8).
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "publish",
    security(("api_key" = [])),
    request_body(
        content = super::schema::PublishBodyDoc,
        content_type = "application/json",
        description = "One event, or an array of 1 to --max-batch events (default 100), \
            for one or more users. Checked as a whole before anything is published."
    ),
    responses(
        (status = 200, description = "Every event accepted; one result per event, in request order. \
            An event_id accepted before is answered with its first acceptance.",
            body = super::schema::PublishResponseDoc),
        (status = 400, description = "Not UTF-8, not JSON, neither an object nor a non-empty array, or nested too deep; or more than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 408, description = "The body did not arrive within --body-read-timeout; nothing was published", body = ErrorBody),
        (status = 409, description = "An event breaks its run's lifecycle (`run_violation`; `message` names \
            the violation), or reuses an event_id accepted for a different event (`event_id_conflict`); \
            that user's events were not published", body = ErrorBody),
        (status = 413, description = "An event larger than --max-event-bytes, a body larger than --max-request-bytes, or more than --max-batch events", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "A missing, unknown or ill-typed field, or an identifier breaking the rule", body = ErrorBody),
        (status = 429, description = "The API key exceeds --publish-rate, or the body holds more events \
            than --publish-burst allows at once (`rate_limited`, then without Retry-After: split it; \
            nothing was published), or a run does not fit the run-state bounds (`too_many_runs`: --max-runs, \
            --run-state-max-bytes, or the key's share, --max-runs-per-key and \
            --run-state-max-bytes-per-key; that user's events were not published)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the events may fit"))),
        (status = 500, description = "The broker refused the event for good", body = ErrorBody),
        (status = 503, description = "The broker is unavailable; `message` lists the events that were \
            accepted, if any. Retrying with the same event_ids is safe", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn publish_events(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match publish(&app, &headers, body).await {
        // The same bytes and headers as `Json` of a `PublishResponse`, written without
        // serde (one result per event).
        Ok(json) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response(),
        Err(p) => p.into_response(),
    };
    app.publish
        .metrics
        .requests
        .get_or_create(&[("status", status_label(response.status()))])
        .inc();
    response
}

/// Publishes a body; the answer is the JSON of its
/// [`PublishResponse`](agentwire_protocol::PublishResponse).
async fn publish(app: &ApiState, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let api = &app.publish;
    let key = authorize(&app.auth, headers, KeyScope::Publish)?;
    check_content_type(headers)?;
    let bytes = body::read_body(headers, body, api.max_request_bytes, MAX_REQUEST_BYTES).await?;
    let limits = Limits {
        max_bytes: api.max_request_bytes,
        max_depth: MAX_EVENT_DEPTH,
    };
    let decoded = PublishBody::decode_events(&bytes, limits, api.max_batch)
        .map_err(|e| decode_problem(&e, bytes.len(), api))?;
    drop(bytes);
    let batch = decoded.batch;
    // The events without a publisher's id get fresh ones from one clock read per body.
    let mut fresh_ids: Option<EventIdBatch> = None;
    let prepared = decoded
        .events
        .into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            event
                .event_id_mut()
                .get_or_insert_with(|| fresh_ids.get_or_insert_with(EventIdBatch::now).next_id());
            app.manager
                .prepare_published(event)
                .map_err(|e| prepare_problem(e, batch, i))
        })
        .collect::<Result<Vec<PreparedEvent>, ApiError>>()?;
    // The key's fingerprint, computed when the keys were set: what the rate and the run
    // guards count against.
    let publisher = publisher_of(app, key)?;
    api.take_rate(&publisher, prepared.len()).await?;
    let prepared = if api.lifecycle {
        prepared
            .into_iter()
            .map(|p| p.guarded(publisher.clone()))
            .collect()
    } else {
        prepared
    };
    // One broker call per user of the body, all at once.
    let answers = app.manager.emit_prepared_many(&prepared).await;
    // About a result's length: its keys and numbers, a UUID and a receipt's path.
    let mut results = ResultsWriter::with_capacity(prepared.len() * 160);
    let mut accepted_at = Vec::with_capacity(prepared.len());
    let mut failure = None;
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Ok(a) => {
                accepted_at.push(i);
                let p = &prepared[i];
                results.push_with_receipt(a.seq, &a.event_id, a.ts, |out| {
                    out.push(b'"');
                    push_receipt_path(out, p.user_id(), p.run_id());
                    out.push(b'"');
                });
            }
            Err(e) => {
                failure.get_or_insert((i, e));
            }
        }
    }
    if let Some((i, e)) = failure {
        // A user's events refused with one of them: the answer names that one.
        let (i, e) = match e {
            EmitError::BatchRefused { index } => match answers.get(*index) {
                Some(Err(refused)) => (*index, refused),
                _ => (i, e),
            },
            _ => (i, e),
        };
        return Err(broker_problem(e, batch, i, &accepted_at));
    }
    Ok(results.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_refusals_name_their_kind_and_field() {
        let v = EmitError::Violation(RunViolation::UnknownToolCall {
            tool_call_id: "tc9".into(),
        });
        let p = broker_problem(&v, true, 2, &[]);
        assert_eq!(p.status(), StatusCode::CONFLICT);
        assert_eq!(p.code, ErrorCode::RunViolation);
        assert_eq!(p.field.as_deref(), Some("[2].data.tool_call_id"));
        assert!(p.message.starts_with("UnknownToolCall: "), "{}", p.message);
        assert!(
            p.message.ends_with("nothing was published"),
            "{}",
            p.message
        );
        let p = broker_problem(
            &EmitError::Violation(RunViolation::AlreadyStarted),
            false,
            0,
            &[],
        );
        assert_eq!(p.field.as_deref(), Some("type"));
        let p = broker_problem(&EmitError::TooManyRuns(RunLimit::OwnerRuns), true, 1, &[0]);
        assert_eq!(
            (p.status(), p.code),
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRuns)
        );
        assert_eq!(p.field.as_deref(), Some("[1].run_id"));
        assert_eq!(p.retry_after, Some(RUNS_RETRY_AFTER_SECS));
        assert!(p.message.contains("--max-runs-per-key"), "{}", p.message);
        assert!(
            p.message.contains("the events before [1] were accepted"),
            "{}",
            p.message
        );
    }

    #[test]
    fn receipt_paths_encode_their_segments() {
        let user = UserId::new("auth0|a b/c").expect("user");
        let run: RunId = "r-1.x".parse().expect("run");
        assert_eq!(
            receipt_path(&user, Some(&run)),
            "/v1/users/auth0%7Ca%20b%2Fc/runs/r-1.x"
        );
        assert_eq!(
            receipt_path(&user, None),
            "/v1/users/auth0%7Ca%20b%2Fc/receipts"
        );
    }

    /// A segment is encoded byte by byte: unreserved bytes as they are, every other byte
    /// as `%` and two uppercase hex digits — for every ASCII character and multi-byte ones,
    /// at the start, the end and between runs.
    #[test]
    fn path_segments_encode_every_reserved_byte() {
        let reference = |s: &str| {
            let mut out = String::new();
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        };
        let ascii: String = (0u8..0x80).map(char::from).collect();
        let cases = [
            String::new(),
            ascii.clone(),
            format!("é{ascii}用"),
            "user-0042".to_owned(),
            "🙂a b🙂".to_owned(),
            "%%".to_owned(),
        ];
        // A reserved byte at each place of the eight-byte chunks and of the remainder.
        let placed = (0..20).flat_map(|at| {
            ["/", " ", "é", "\u{7f}"].map(|r| {
                let mut s = "abcdefghij0123456789".to_owned();
                s.replace_range(at..=at, r);
                s
            })
        });
        for s in cases.into_iter().chain(placed) {
            let mut out = b"/x/".to_vec();
            push_path_segment(&mut out, &s);
            assert_eq!(out, format!("/x/{}", reference(&s)).into_bytes(), "{s:?}");
        }
    }

    #[test]
    fn content_type_must_be_json_with_any_parameters() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_err());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(check_content_type(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(check_content_type(&h).is_ok());
    }
}
