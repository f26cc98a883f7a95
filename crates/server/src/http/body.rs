//! Reading a request body, the one way every handler that takes one does (the publish API,
//! the demo endpoints): bounded in bytes — refused from `Content-Length` before anything
//! is read, else as soon as the bound is passed — and, when the server's front door put a
//! deadline on it (`--body-read-timeout`), in time.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;

use super::{ApiError, ErrorCode};

/// The answer to a body larger than `limit` bytes; `bound` names the setting
/// (`--max-request-bytes`).
pub(crate) fn too_large(limit: usize, bound: &str) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {limit} bytes ({bound})"),
    )
}

/// The body, at most `limit` bytes (`bound` names the setting, for the error).
///
/// # Errors
/// 413 `payload_too_large` past `limit`; 408 `request_timeout` when the body did not arrive
/// within the body-read timeout; 400 `bad_request` when it could not be read.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    bound: &str,
) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit, bound));
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| read_error(&e))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit, bound));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn read_error(e: &axum::Error) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("cannot read the body: {e}"))
}
