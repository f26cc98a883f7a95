//! A raw Server-Sent Events client for `GET /v1/stream`: an HTTP/1.1 request on a TCP
//! socket, the chunked answer decoded as it arrives, and SSE messages parsed from it, as a
//! browser's `EventSource` would ([`agentwire::protocol::sse::Parser`]).

use std::net::SocketAddr;
use std::time::Duration;

use agentwire::protocol::sse::Parser;
use agentwire::protocol::{EventEnvelope, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::{HttpResponse, WAIT};

/// One SSE message: its `event` (`message` when none was named), `id` and `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field, or `message`.
    pub event: String,
    /// The `id:` field of this message, if it had one.
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

impl SseMessage {
    /// The data as an agentwire frame.
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::decode(self.data.as_bytes())
            .unwrap_or_else(|e| panic!("not a frame ({e}): {}", self.data))
    }

    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.data))
    }
}

/// An open event stream.
#[derive(Debug)]
pub struct SseClient {
    tcp: TcpStream,
    /// Received body bytes not yet de-chunked.
    raw: Vec<u8>,
    /// The SSE messages of the de-chunked body.
    parser: Parser,
    /// The answer's last chunk was read.
    ended: bool,
    /// The headers of the answer.
    pub headers: Vec<(String, String)>,
}

/// Opens `GET {path}` (with its query) on `addr` with `headers`; the stream on a `200`,
/// the whole answer otherwise.
///
/// # Errors
/// The answer, when it is not `200`.
pub async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<SseClient, HttpResponse> {
    let work = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut head =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let split = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = tcp.read(&mut buf).await.expect("read the head");
            assert!(n > 0, "the server closed before answering");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        if status != 200 {
            // Read the refusal to its end: it is a complete answer.
            let _ = timeout(Duration::from_secs(2), async {
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    if crate::answer_is_whole(&raw) {
                        break;
                    }
                }
            })
            .await;
            return Err(crate::parse_http(&raw));
        }
        let headers = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(SseClient {
            tcp,
            raw: raw[split + 4..].to_vec(),
            parser: Parser::new(),
            ended: false,
            headers,
        })
    };
    timeout(WAIT, work)
        .await
        .expect("an answer within the wait bound")
}

impl SseClient {
    /// Moves whole chunks from `raw` to the parser.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a chunk size");
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            self.parser.feed(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// Comment lines seen (heartbeats).
    pub fn comments(&self) -> u64 {
        self.parser.comments()
    }

    /// The newest `retry:` value.
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry()
    }

    /// The next message parsed so far, if a whole one is there.
    fn parse_one(&mut self) -> Option<SseMessage> {
        let m = self.parser.next_message()?;
        Some(SseMessage {
            event: m.event.unwrap_or_else(|| "message".to_owned()),
            id: m.id,
            data: m.data,
        })
    }

    /// The next message within `within`; `None` when the stream ended or nothing came.
    pub async fn next_within(&mut self, within: Duration) -> Option<SseMessage> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 8192];
        loop {
            self.dechunk();
            if let Some(m) = self.parse_one() {
                return Some(m);
            }
            if self.ended {
                return None;
            }
            let read = tokio::time::timeout_at(deadline, self.tcp.read(&mut buf)).await;
            match read {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => {
                    self.ended = true;
                }
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The next message (fails the test after [`WAIT`]).
    pub async fn next(&mut self) -> SseMessage {
        self.next_within(WAIT)
            .await
            .expect("an SSE message within the wait bound")
    }

    /// The next message, which must be an event; its envelope.
    pub async fn event(&mut self) -> (EventEnvelope, Option<String>) {
        let m = self.next().await;
        match m.frame() {
            ServerFrame::Event(e) => (e, m.id),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Waits for the stream to end; the `close` event's code, if one came first.
    pub async fn closed(&mut self) -> Option<u16> {
        let mut code = None;
        while let Some(m) = self.next_within(WAIT).await {
            if m.event == "close" {
                code = m.json()["code"]
                    .as_u64()
                    .and_then(|c| u16::try_from(c).ok());
            }
        }
        assert!(self.ended, "the stream did not end within the wait bound");
        code
    }
}
