//! `GET /v1/users/{user_id}/events?after_seq=N&limit=M`: a page of a user's history, for
//! a backend that rebuilds state or audits what a user was sent.
//!
//! The events are the frames clients received, byte for byte (they were serialized once,
//! when accepted); the page is assembled around them without parsing them again.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentwire_manager::History;
use agentwire_protocol::{Seq, UserId};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::auth::{KeyScope, authorize};
use crate::http::{ApiError, ErrorBody, ErrorCode};

/// Events a history read returns when it gives no `limit`.
pub(crate) const DEFAULT_HISTORY_READ_LIMIT: usize = 100;

fn bad_param(field: &str, reason: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, reason).at(field)
}

/// `after_seq` and `limit` from the query; any other parameter is an error.
fn parse_params(query: &BTreeMap<String, String>, max: usize) -> Result<(Seq, usize), ApiError> {
    if let Some(other) = query.keys().find(|k| *k != "after_seq" && *k != "limit") {
        return Err(bad_param(other, "unknown query parameter"));
    }
    let after = match query.get("after_seq") {
        None => Seq::ZERO,
        Some(v) => Seq(v
            .parse::<u64>()
            .map_err(|_| bad_param("after_seq", "must be a non-negative integer"))?),
    };
    let limit = match query.get("limit") {
        None => DEFAULT_HISTORY_READ_LIMIT.min(max),
        Some(v) => {
            let n = v
                .parse::<usize>()
                .map_err(|_| bad_param("limit", "must be a non-negative integer"))?;
            if n > max {
                return Err(bad_param(
                    "limit",
                    format!("must be at most {max} (--history-read-max)"),
                ));
            }
            n
        }
    };
    Ok((after, limit))
}

/// The page as JSON: scalar fields encoded by serde, the stored frames copied as they are.
fn page_json(user: &UserId, h: &History) -> Vec<u8> {
    use agentwire_protocol::to_json;
    let frames: usize = h.events.iter().map(|e| e.frame.len() + 1).sum();
    let mut out = Vec::with_capacity(128 + frames);
    out.extend_from_slice(b"{\"user_id\":");
    out.extend_from_slice(to_json(user).as_bytes());
    out.extend_from_slice(b",\"epoch\":");
    out.extend_from_slice(to_json(&h.epoch).as_bytes());
    out.extend_from_slice(b",\"last_seq\":");
    out.extend_from_slice(h.last_seq.get().to_string().as_bytes());
    out.extend_from_slice(b",\"gap\":");
    match h.gap {
        Some((from, to)) => out.extend_from_slice(
            format!("{{\"from_seq\":{},\"to_seq\":{}}}", from.get(), to.get()).as_bytes(),
        ),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"events\":[");
    for (i, e) in h.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.frame);
    }
    out.extend_from_slice(b"]}");
    out
}

/// `GET /v1/users/{user_id}/events`: up to `limit` events of the user with
/// `seq > after_seq`, oldest first.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/events",
    tag = "publish",
    security(("api_key" = [])),
    params(
        ("user_id" = String, Path, description = "Whose stream to read"),
        ("after_seq" = Option<u64>, Query, description = "Return events after this seq (default 0: from the oldest held)"),
        ("limit" = Option<usize>, Query, description = "Most events to return (default 100, at most --history-read-max, default 1000)"),
    ),
    responses(
        (status = 200, description = "A page of history. Page on by passing the last event's seq as after_seq \
            until `events` is empty. `gap` names events after `after_seq` that history no longer holds.",
            body = super::schema::HistoryPageDoc),
        (status = 400, description = "A malformed query string or path; a bad user id, after_seq or limit, or an unknown query parameter (`field` names it); or more than one Authorization header (`field`: Authorization)", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "A publish-only API key (--publish-api-keys)", body = ErrorBody),
        (status = 503, description = "The broker is unavailable", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn read_history(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let response = match read(&app, &headers, user_id, query).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    };
    app.publish.metrics.history_read(response.status());
    response
}

async fn read(
    app: &ApiState,
    headers: &HeaderMap,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&app.auth, headers, KeyScope::Full)?;
    let Path(user_id) = user_id.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let user = UserId::new(&user_id).map_err(|e| bad_param("user_id", format!("a user id {e}")))?;
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let (after, limit) = parse_params(&query, app.publish.history_read_max)?;
    let history = app
        .manager
        .history(&user, after, limit)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(1))?;
    let mut r = page_json(&user, &history).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_manager::StoredEvent;
    use agentwire_protocol::{Epoch, EventType, Timestamp};

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn params_have_defaults_and_bounds() {
        assert_eq!(
            parse_params(&params(&[]), 1_000)
                .ok()
                .map(|(a, l)| (a.get(), l)),
            Some((0, DEFAULT_HISTORY_READ_LIMIT))
        );
        assert_eq!(
            parse_params(&params(&[("after_seq", "7"), ("limit", "3")]), 1_000)
                .ok()
                .map(|(a, l)| (a.get(), l)),
            Some((7, 3))
        );
        assert_eq!(
            parse_params(&params(&[]), 10).ok().map(|(_, l)| l),
            Some(10)
        );
        for (bad, field) in [
            (params(&[("limit", "11")]), "limit"),
            (params(&[("limit", "x")]), "limit"),
            (params(&[("after_seq", "-1")]), "after_seq"),
            (params(&[("since", "1")]), "since"),
        ] {
            let p = parse_params(&bad, 10).expect_err("refused");
            assert_eq!(p.code, ErrorCode::BadRequest);
            assert_eq!(p.field.as_deref(), Some(field));
        }
    }

    #[test]
    fn a_page_is_json_with_the_frames_inside() {
        let frame =
            br#"{"type":"custom","seq":4,"event_id":"e","ts":1,"data":{"name":"n","value":1}}"#;
        let epoch: Epoch = "e_1".parse().expect("epoch");
        let h = History {
            epoch: epoch.clone(),
            last_seq: Seq(9),
            gap: Some((Seq(1), Seq(3))),
            events: vec![
                StoredEvent {
                    seq: Seq(4),
                    event_id: "e".parse().expect("id"),
                    ts: Timestamp(1),
                    event_type: EventType::Custom,
                    epoch,
                    frame: bytes::Bytes::from_static(frame),
                };
                2
            ],
        };
        let user = UserId::new("u\"1").expect("user");
        let v: serde_json::Value =
            serde_json::from_slice(&page_json(&user, &h)).expect("valid JSON");
        assert_eq!(v["user_id"], "u\"1");
        assert_eq!(v["epoch"], "e_1");
        assert_eq!(v["last_seq"], 9);
        assert_eq!(v["gap"], serde_json::json!({"from_seq": 1, "to_seq": 3}));
        assert_eq!(v["events"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["events"][1]["seq"], 4);
        let empty = History {
            gap: None,
            events: Vec::new(),
            ..h
        };
        let v: serde_json::Value =
            serde_json::from_slice(&page_json(&user, &empty)).expect("valid JSON");
        assert_eq!(v["gap"], serde_json::Value::Null);
        assert_eq!(v["events"], serde_json::json!([]));
    }
}
