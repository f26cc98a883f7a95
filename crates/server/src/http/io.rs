//! The socket of an HTTP connection as hyper sees it: a `TcpStream` that tells the front
//! door when request bytes arrive (for the header-read and idle timeouts), carries the
//! connection's slot, and gives every answer hyper writes by itself the JSON error body.
//!
//! hyper answers a request it cannot parse — a malformed request line or header (a bad
//! `Content-Length`, bytes a header may not hold), a head over `--max-header-bytes` — on its
//! own, with `400`/`431`/`414` and an empty body, before any service sees the request.
//! Those answers are recognised as they are written (no request is being served, and the
//! bytes are a complete head with those statuses, `content-length: 0` and no
//! `content-type`, which no answer of the service has) and replaced by the same answer
//! with the error body of every other refusal.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::door::ConnSlot;
use super::error::{ApiError, ErrorCode, raw_answer};

/// A connection's socket, with its slot at the front door.
#[derive(Debug)]
pub(crate) struct TrackedTcp {
    tcp: TcpStream,
    slot: ConnSlot,
    /// The JSON answer that replaced hyper's, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
}

impl TrackedTcp {
    pub(crate) fn new(tcp: TcpStream, slot: ConnSlot) -> TrackedTcp {
        TrackedTcp {
            tcp,
            slot,
            answer: None,
        }
    }

    /// The socket and its slot (for a connection upgraded to a WebSocket).
    pub(crate) fn into_parts(self) -> (TcpStream, ConnSlot) {
        (self.tcp, self.slot)
    }

    /// Writes what is left of the replacement answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, written)) = &mut self.answer else {
            return Poll::Ready(Ok(()));
        };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Replaces `head` when it is an answer hyper made up by itself; `true` when it did.
    fn replace_hyper_answer(&mut self, head: &[u8]) -> bool {
        if self.answer.is_some() || self.slot.serving() {
            return false;
        }
        let Some(status) = hyper_answer_status(head) else {
            return false;
        };
        let door = self.slot.door();
        door.metrics.malformed(status);
        let error = match status {
            431 => ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!(
                    "the request's head is larger than {} bytes (--max-header-bytes), or has \
                     more than 100 headers",
                    door.limits.max_header_bytes
                ),
            ),
            414 => ApiError::new(ErrorCode::UriTooLong, "the request target is too long"),
            _ => ApiError::new(
                ErrorCode::BadRequest,
                "the request is malformed: its request line or a header (such as \
                 Content-Length) cannot be parsed",
            ),
        };
        self.answer = Some((raw_answer(&error), 0));
        true
    }
}

/// The status of `bytes` when they are one of hyper's own answers: a complete head and
/// nothing after it, status 400, 414 or 431, `content-length: 0` and no `content-type`.
fn hyper_answer_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    let status = match rest.get(..4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    let head = bytes.strip_suffix(b"\r\n\r\n")?;
    let mut empty = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // A blank line inside: there is more than a head.
            return None;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-type") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if value != b"0" {
                return None;
            }
            empty = true;
        }
    }
    empty.then_some(status)
}

impl AsyncRead for TrackedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.slot.heard();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TrackedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.answer.is_some() || self.replace_hyper_answer(buf) {
            // hyper's bytes count as written; ours go out instead.
            ready!(self.poll_answer(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.answer.is_some()
            || first.is_some_and(|head| head.len() == total && self.replace_hyper_answer(head))
        {
            ready!(self.poll_answer(cx))?;
            return Poll::Ready(Ok(total));
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_empty_answers_are_recognised() {
        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_answer_status(own), Some(431));
        let bad = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(hyper_answer_status(bad), Some(400));
        for not in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"{\"error\":\"x\"}",
            b"",
        ] {
            assert_eq!(
                hyper_answer_status(not),
                None,
                "{}",
                String::from_utf8_lossy(not)
            );
        }
    }
}
