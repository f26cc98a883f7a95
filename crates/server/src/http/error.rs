//! The one error answer of every HTTP route the server serves — publish, history, admin,
//! the `/ws` handshake, the demo endpoints and the fallbacks (404, 405):
//! `{"error": "<code>", "message": "<for people>", "field": "<path>" | null}`, with the
//! status the code stands for (docs/protocol.md §8.1).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The machine-readable code of an error answer. Each code has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    /// 400: the request is malformed (query, path, headers, body that is not JSON).
    BadRequest,
    /// 408: the request body did not arrive within the body-read timeout.
    RequestTimeout,
    /// 401: no credential, or an unknown or invalid one.
    Unauthorized,
    /// 403: the credential may not do this, or the Origin/Host is not allowed.
    Forbidden,
    /// 404: no such route or resource.
    NotFound,
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 409: an event breaks its run's lifecycle.
    RunViolation,
    /// 409: an `event_id` accepted before names a different event.
    EventIdConflict,
    /// 413: a body, an event or a batch larger than its limit.
    PayloadTooLarge,
    /// 414: the request target is too long.
    UriTooLong,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: an event is missing a field, has an unknown or ill-typed one, or breaks an
    /// identifier's rule.
    InvalidEvent,
    /// 429: the API key exceeds its publish rate (`Retry-After` says when to retry).
    RateLimited,
    /// 429: too many demo runs in progress.
    TooManyRuns,
    /// 429: the user holds as many connections as `--max-connections-per-user` allows
    /// (and `--per-user-policy reject`).
    TooManyConnections,
    /// 431: the request's headers are too large.
    HeadersTooLarge,
    /// 500: the server or the broker failed for good.
    Internal,
    /// 503: the broker is unavailable for now (`Retry-After` says when to retry).
    Unavailable,
    /// 503: the server is shutting down; connect again (elsewhere).
    ShuttingDown,
}

impl ErrorCode {
    /// The HTTP status of this code.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RunViolation | ErrorCode::EventIdConflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidEvent => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited | ErrorCode::TooManyRuns | ErrorCode::TooManyConnections => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A refused request, as every route answers it: a code (and so a status), a message for
/// people, the field it is about, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// A path such as `data.tool_call_id` or, inside a batch, `[1].data.tool_call_id`.
    pub(crate) field: Option<String>,
    /// Seconds for `Retry-After`.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// The same error, about `field`.
    #[must_use]
    pub(crate) fn at(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// The same error, with `Retry-After: secs`.
    #[must_use]
    pub(crate) fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.code.status()
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What kind of error, for programs (the HTTP status follows from it).
    error: ErrorCode,
    /// What is wrong, for people.
    message: String,
    /// The field the error is about: a path such as `data.tool_call_id` or, inside a batch,
    /// `[1].data.tool_call_id`; `null` when it is not about one field.
    #[schema(required)]
    field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.code,
            message: self.message,
            field: self.field,
        };
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

impl ApiError {
    /// The body of this error as JSON bytes.
    fn body_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: self.code,
            message: self.message.clone(),
            field: self.field.clone(),
        };
        // A struct of strings and a unit enum always serializes.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// The whole HTTP/1.1 answer of `error` as bytes, with `Connection: close`: for answers
/// given below the router — by the front door, in place of one hyper made up — where there
/// is no response object to build.
pub(crate) fn raw_answer(error: &ApiError) -> Vec<u8> {
    let status = error.status();
    let body = error.body_json();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(secs) = error.retry_after {
        out.push_str(&format!("retry-after: {secs}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

impl ErrorCode {
    /// The code of an answer with `status` that carries none (one axum made up).
    fn for_status(status: StatusCode) -> ErrorCode {
        match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::RequestTimeout,
            413 => ErrorCode::PayloadTooLarge,
            414 => ErrorCode::UriTooLong,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::InvalidEvent,
            429 => ErrorCode::RateLimited,
            431 => ErrorCode::HeadersTooLarge,
            503 => ErrorCode::Unavailable,
            500..=599 => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// The most of a made-up answer's text that becomes the JSON body's `message`.
const MADE_UP_TEXT_MAX: usize = 1024;

/// Gives every error answer of the router the JSON error body. The handlers answer with
/// [`ApiError`]; what axum answers by itself (an extractor's rejection, such as a path
/// segment that is not UTF-8 once percent-decoded) is plain text, turned here into the
/// same body with the same status, its text as the message. Success answers pass as they
/// are, for the cost of a look at the status.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MADE_UP_TEXT_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let json = ApiError::new(ErrorCode::for_status(status), message).body_json();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(json))
}

/// The answer to a path no route serves.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route (see /openapi.json)")
}

/// The answer to a method a route does not serve.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not serve this method (see /openapi.json)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_has_error_message_and_field() {
        let r = ApiError::new(ErrorCode::InvalidEvent, "missing")
            .at("[1].data.tool_call_id")
            .into_response();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let bytes = axum::body::to_bytes(r.into_body(), 1024)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"error": "invalid_event", "message": "missing",
                "field": "[1].data.tool_call_id"})
        );
    }

    #[test]
    fn a_raw_answer_is_a_whole_response_with_the_body() {
        let raw = raw_answer(&ApiError::new(ErrorCode::HeadersTooLarge, "big").retry_after(2));
        let text = String::from_utf8(raw).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("retry-after: 2"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"error": "headers_too_large", "message": "big", "field": null})
        );
    }

    #[tokio::test]
    async fn unauthorized_asks_for_a_bearer_and_retry_after_is_sent() {
        let r = ApiError::new(ErrorCode::Unauthorized, "no key").into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let bytes = axum::body::to_bytes(r.into_body(), 1024)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(v["field"], serde_json::Value::Null);
        let r = ApiError::new(ErrorCode::Unavailable, "down")
            .retry_after(1)
            .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
