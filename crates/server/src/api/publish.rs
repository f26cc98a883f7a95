//! `POST /v1/events`: the publish API for agents in other processes and languages
//! (docs/protocol.md §8), and what it shares with the history read: the settings and the
//! metrics.
//!
//! A request goes through, in this order: the API key (401/403), the content type (415),
//! the body size (413), decoding (400/413/422), each event's validation and size (422/413),
//! the key's rate (429), the run lifecycle (409), and only then the broker: one
//! `publish_many` per user of the body, all at once (409 `event_id_conflict` when an
//! `event_id` was accepted for a different event, 503 on a failure). Every check before the
//! broker looks at the whole body, so a refused body publishes nothing; the broker takes
//! each user's events all or nothing under a refusal, so only a broker failure, or a
//! refusal of one user's events in a body for several users, leaves part of a body
//! published — the answer lists what was.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::{BrokerError, EmitError, PreparedEvent};
use agentwire_protocol::{
    DecodeError, EventId, Limits, MAX_EVENT_DEPTH, PublishAccepted, PublishBody, PublishRequest,
    PublishResponse, RunState, RunViolation, UserId,
};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::ApiState;
use super::ratelimit::RateLimiter;
use super::runs::{RunKey, RunMetrics, RunTable};
use crate::auth::{KeyScope, authorize};
use crate::http::{ApiError, ErrorBody, ErrorCode};

/// `Retry-After` of a 503, in seconds.
const BROKER_RETRY_AFTER_SECS: u64 = 1;

type StatusLabel = [(&'static str, &'static str); 1];

/// The metrics of the publish API and the history read.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublishMetrics {
    requests: Family<StatusLabel, Counter>,
    history_reads: Family<StatusLabel, Counter>,
    pub(crate) runs: RunMetrics,
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
        registry.register(
            "agentwire_run_states",
            "Runs whose lifecycle state the publish API remembers (at most --max-runs)",
            m.runs.runs.clone(),
        );
        registry.register(
            "agentwire_run_state_evictions",
            "Runs forgotten because --max-runs was reached (least recently used first)",
            m.runs.evictions.clone(),
        );
        registry.register(
            "agentwire_run_states_expired",
            "Runs forgotten --run-ttl after their last event",
            m.runs.expired.clone(),
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
    publish_rate: u32,
    limiter: Option<RateLimiter>,
    runs: Option<RunTable>,
    pub(crate) metrics: PublishMetrics,
}

impl PublishApi {
    /// The publish API with these bounds; `runs` (most runs, how long one is remembered)
    /// turns the run-lifecycle check on.
    pub(crate) fn new(
        limits: PublishLimits,
        runs: Option<(usize, Duration)>,
        metrics: PublishMetrics,
    ) -> Self {
        PublishApi {
            max_batch: limits.max_batch.max(1),
            max_request_bytes: limits.max_request_bytes,
            history_read_max: limits.history_read_max.max(1),
            publish_rate: limits.publish_rate,
            limiter: RateLimiter::new(limits.publish_rate, limits.publish_burst),
            runs: runs.map(|(max, ttl)| RunTable::new(max, ttl, metrics.runs.clone())),
            metrics,
        }
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

fn request_too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {limit} bytes (--max-request-bytes)"),
    )
}

/// Reads the body, refusing more than `limit` bytes as soon as it is known: from
/// `Content-Length` before reading anything, else while reading.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(request_too_large(limit));
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(ErrorCode::BadRequest, format!("cannot read the body: {e}"))
        })?;
        if out.len() + chunk.len() > limit {
            return Err(request_too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The status and body for a body that did not decode.
fn decode_problem(e: &DecodeError, body_len: usize, api: &PublishApi) -> ApiError {
    match e {
        DecodeError::TooLarge { .. } if body_len > api.max_request_bytes => {
            request_too_large(api.max_request_bytes)
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
    let mut reason = e.to_string();
    if accepted.is_empty() {
        reason.push_str("; nothing was published");
    } else if accepted.iter().copied().eq(0..i) {
        reason.push_str(&format!(
            "; the events before [{i}] were accepted: retry the body with the same event_ids"
        ));
    } else {
        let list: Vec<String> = accepted.iter().map(|&a| format!("[{a}]")).collect();
        reason.push_str(&format!(
            "; the events {} were accepted: retry the body with the same event_ids",
            list.join(", ")
        ));
    }
    let field = batch.then(|| item(batch, i));
    if let EmitError::Conflict { .. } = e {
        let field = match field {
            Some(f) => format!("{f}.event_id"),
            None => "event_id".to_owned(),
        };
        return ApiError::new(ErrorCode::EventIdConflict, reason).at(field);
    }
    let error = if transient {
        ApiError::new(ErrorCode::Unavailable, reason).retry_after(BROKER_RETRY_AFTER_SECS)
    } else {
        ApiError::new(ErrorCode::Internal, reason)
    };
    ApiError { field, ..error }
}

/// The run an event belongs to, when it is a run event (`custom` events are outside the
/// lifecycle).
fn run_key(r: &PublishRequest) -> Option<RunKey> {
    if !r.event.event_type().is_run_event() {
        return None;
    }
    r.event
        .run_id
        .as_ref()
        .map(|run| (r.user_id.clone(), run.clone()))
}

/// The name of a violation, as docs/protocol.md §7 lists them.
fn violation_name(v: &RunViolation) -> &'static str {
    match v {
        RunViolation::NotStarted { .. } => "NotStarted",
        RunViolation::AlreadyStarted => "AlreadyStarted",
        RunViolation::DuplicateToolCall { .. } => "DuplicateToolCall",
        RunViolation::UnknownToolCall { .. } => "UnknownToolCall",
        RunViolation::TooManyOpenToolCalls => "TooManyOpenToolCalls",
        RunViolation::AfterTerminal { .. } => "AfterTerminal",
        _ => "RunViolation",
    }
}

fn violation_problem(v: &RunViolation, batch: bool, i: usize) -> ApiError {
    let field = match v {
        RunViolation::DuplicateToolCall { .. }
        | RunViolation::UnknownToolCall { .. }
        | RunViolation::TooManyOpenToolCalls => "data.tool_call_id",
        _ => "type",
    };
    let prefix = item(batch, i);
    let field = if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    };
    ApiError::new(
        ErrorCode::RunViolation,
        format!("{}: {v}", violation_name(v)),
    )
    .at(field)
}

/// Whether `event_id` was accepted into `user`'s stream (inside the broker's dedupe
/// window): then an event carrying it is a retry of one the broker accepted, not a new
/// one.
async fn accepted_before(
    app: &ApiState,
    user: &UserId,
    event_id: &EventId,
) -> Result<bool, BrokerError> {
    Ok(app.manager.lookup_event(user, event_id).await?.is_some())
}

/// Checks every run event of the body against copies of its run's state, in order. An
/// event that breaks its run is refused — unless it carries an `event_id` the user's
/// stream already holds: then it is a retry, the broker will answer its first
/// acceptance, and the run's state stays as it is.
async fn check_runs(
    app: &ApiState,
    requests: &[PublishRequest],
    states: HashMap<RunKey, RunState>,
    batch: bool,
) -> Result<(), ApiError> {
    let mut states = states;
    for (i, r) in requests.iter().enumerate() {
        let Some(key) = run_key(r) else { continue };
        let state = states.entry(key).or_default();
        let Err(violation) = state.apply(&r.event.data) else {
            continue;
        };
        let retry = match &r.event_id {
            Some(id) => accepted_before(app, &r.user_id, id)
                .await
                .map_err(|e| broker_problem(&EmitError::from(e), false, 0, &[]))?,
            None => false,
        };
        if !retry {
            return Err(violation_problem(&violation, batch, i));
        }
    }
    Ok(())
}

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
        (status = 400, description = "Not UTF-8, not JSON, neither an object nor a non-empty array, or nested too deep", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 409, description = "An event breaks its run's lifecycle (`run_violation`; `message` names \
            the violation), or reuses an event_id accepted for a different event (`event_id_conflict`; \
            that user's events were not published)", body = ErrorBody),
        (status = 413, description = "An event larger than --max-event-bytes, a body larger than --max-request-bytes, or more than --max-batch events", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "A missing, unknown or ill-typed field, or an identifier breaking the rule", body = ErrorBody),
        (status = 429, description = "The API key exceeds --publish-rate; nothing was published", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the events fit the rate"))),
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
        Ok(r) => Json(r).into_response(),
        Err(p) => p.into_response(),
    };
    app.publish
        .metrics
        .requests
        .get_or_create(&[("status", status_label(response.status()))])
        .inc();
    response
}

async fn publish(
    app: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<PublishResponse, ApiError> {
    let api = &app.publish;
    let key = authorize(&app.auth, headers, KeyScope::Publish)?;
    check_content_type(headers)?;
    let bytes = read_body(headers, body, api.max_request_bytes).await?;
    let limits = Limits {
        max_bytes: api.max_request_bytes,
        max_depth: MAX_EVENT_DEPTH,
    };
    let decoded = PublishBody::decode(&bytes, limits, api.max_batch)
        .map_err(|e| decode_problem(&e, bytes.len(), api))?;
    drop(bytes);
    let batch = matches!(decoded, PublishBody::Batch(_));
    let requests = decoded.into_requests();
    let prepared = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            app.manager
                .prepare_event(&r.user_id, &r.event, r.event_id.clone())
                .map_err(|e| prepare_problem(e, batch, i))
        })
        .collect::<Result<Vec<PreparedEvent>, ApiError>>()?;
    if let Some(limiter) = &api.limiter
        && let Err(wait) = limiter.take(key.id, requests.len(), Instant::now())
    {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this API key may publish {} events per second (--publish-rate); nothing was published",
                api.publish_rate
            ),
        )
        .retry_after(wait.as_secs().max(1)));
    }
    let mut locked = match &api.runs {
        Some(runs) => {
            let keys: BTreeSet<RunKey> = requests.iter().filter_map(run_key).collect();
            let locked = runs.lock(keys).await;
            check_runs(app, &requests, locked.snapshot(), batch).await?;
            Some(locked)
        }
        None => None,
    };
    // One broker call per user of the body, all at once.
    let answers = app.manager.emit_prepared_many(&prepared).await;
    let mut results = Vec::with_capacity(prepared.len());
    let mut accepted_at = Vec::new();
    let mut failure = None;
    for (i, (answer, request)) in answers.into_iter().zip(&requests).enumerate() {
        let accepted = match answer {
            Ok(a) => a,
            Err(e) => {
                failure.get_or_insert((i, e));
                continue;
            }
        };
        accepted_at.push(i);
        if let (Some(locked), Some(key)) = (locked.as_mut(), run_key(request))
            && let Some(state) = locked.state_mut(&key)
        {
            // A retry the check let through (see `check_runs`) does not apply again; an
            // event whose first publish failed after the broker took it does.
            let _ = state.apply(&request.event.data);
        }
        results.push(PublishAccepted {
            seq: accepted.seq,
            event_id: accepted.event_id,
            ts: accepted.ts,
        });
    }
    if let Some((i, e)) = failure {
        // A conflict names the event that reused the id (the last one carrying it).
        let i = match &e {
            EmitError::Conflict { event_id, .. } => requests
                .iter()
                .rposition(|r| {
                    r.user_id == requests[i].user_id && r.event_id.as_ref() == Some(event_id)
                })
                .unwrap_or(i),
            _ => i,
        };
        return Err(broker_problem(&e, batch, i, &accepted_at));
    }
    Ok(PublishResponse { results })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use agentwire_protocol::EventData;

    #[test]
    fn violations_name_their_kind_and_field() {
        let v = RunViolation::UnknownToolCall {
            tool_call_id: "tc9".into(),
        };
        let p = violation_problem(&v, true, 2);
        assert_eq!(p.status(), StatusCode::CONFLICT);
        assert_eq!(p.code, ErrorCode::RunViolation);
        assert_eq!(p.field.as_deref(), Some("[2].data.tool_call_id"));
        assert!(p.message.starts_with("UnknownToolCall: "), "{}", p.message);
        let p = violation_problem(&RunViolation::AlreadyStarted, false, 0);
        assert_eq!(p.field.as_deref(), Some("type"));
    }

    #[test]
    fn every_violation_has_its_documented_name() {
        let mut state = RunState::default();
        let thinking = EventData::AgentThinking(agentwire_protocol::AgentThinking::default());
        let v = state.apply(&thinking).expect_err("not started");
        assert_eq!(violation_name(&v), "NotStarted");
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
