//! Reading a request body, the one way every handler that takes one does (the publish API,
//! the demo endpoints): bounded in bytes — refused from `Content-Length` before anything
//! is read, else as soon as the bound is passed — and, when the server's front door put a
//! deadline on it (`--body-read-timeout`), in time.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::door::{DoorMetrics, Timeout};
use super::{ApiError, ErrorCode};

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyReadError {
    /// The body did not arrive within the body-read timeout.
    #[error("the body did not arrive within {0:?} (--body-read-timeout)")]
    TimedOut(std::time::Duration),
    /// The connection failed while the body was read.
    #[error(transparent)]
    Connection(#[from] hyper::Error),
}

/// A request body that must be read whole by a deadline (`--body-read-timeout`, counted
/// from the request head); past it, reading yields [`BodyReadError::TimedOut`]. The timer
/// is armed only when the body makes a reader wait, so a body that is there already (or
/// absent) costs none.
#[derive(Debug)]
pub(crate) struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timeout: std::time::Duration,
    timer: Option<Pin<Box<Sleep>>>,
    metrics: DoorMetrics,
}

impl TimedBody {
    pub(crate) fn new(inner: Incoming, timeout: std::time::Duration, metrics: DoorMetrics) -> Self {
        TimedBody {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            timer: None,
            metrics,
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BodyReadError::from)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            self.metrics.timed_out(Timeout::BodyRead);
            return Poll::Ready(Some(Err(BodyReadError::TimedOut(self.timeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
/// A body that arrives as one chunk (the usual case: hyper hands over what one read of
/// the socket holds) is returned as that chunk, without a copy; a body in several chunks
/// is gathered into one buffer, sized from `Content-Length` when it is declared.
///
/// # Errors
/// 413 `payload_too_large` past `limit`; 408 `request_timeout` when the body did not arrive
/// within the body-read timeout; 400 `bad_request` when it could not be read.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    bound: &str,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit, bound));
    }
    let mut stream = body.into_data_stream();
    let first = match stream.next().await {
        None => return Ok(Bytes::new()),
        Some(chunk) => chunk.map_err(|e| read_error(&e))?,
    };
    if first.len() > limit {
        return Err(too_large(limit, bound));
    }
    let Some(second) = stream.next().await else {
        return Ok(first);
    };
    let mut out = Vec::with_capacity(declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)));
    out.extend_from_slice(&first);
    drop(first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        let chunk = chunk.map_err(|e| read_error(&e))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit, bound));
        }
        out.extend_from_slice(&chunk);
        next = stream.next().await;
    }
    Ok(Bytes::from(out))
}

fn read_error(e: &axum::Error) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(timeout @ BodyReadError::TimedOut(_)) = c.downcast_ref::<BodyReadError>() {
            return ApiError::new(ErrorCode::RequestTimeout, timeout.to_string());
        }
        cause = c.source();
    }
    ApiError::new(ErrorCode::BadRequest, format!("cannot read the body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(chunks: &[&'static [u8]]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    /// One chunk or several, the body reads the same; the bound counts every chunk.
    #[tokio::test]
    async fn bodies_read_whole_in_one_chunk_or_several() {
        let h = HeaderMap::new();
        let one = read_body(&h, chunked(&[b"[1,2,3]"]), 7, "--max").await;
        assert_eq!(one.expect("one chunk").as_ref(), b"[1,2,3]");
        let many = read_body(&h, chunked(&[b"[1,", b"2,", b"3]"]), 7, "--max").await;
        assert_eq!(many.expect("three chunks").as_ref(), b"[1,2,3]");
        let empty = read_body(&h, chunked(&[]), 7, "--max").await;
        assert_eq!(empty.expect("no chunk").as_ref(), b"");
        for chunks in [&[&b"[1,2,3,4]"[..]][..], &[b"[1,2,", b"3,4]"]] {
            let e = read_body(&h, chunked(chunks), 7, "--max")
                .await
                .expect_err("over the bound");
            assert_eq!(e.code, ErrorCode::PayloadTooLarge);
            assert_eq!(e.message, "the request body is larger than 7 bytes (--max)");
        }
    }
}
