//! A minimal keep-alive HTTP/1.1 client over one `TcpStream`: `POST /v1/events` and
//! `GET /metrics`, nothing else.
//!
//! Why hand-written rather than hyper-util's client: the load generator needs exactly one
//! request in flight per connection, on a connection it owns (a publisher lane keeps one
//! user's events in order on one connection, which the run lifecycle needs), and the
//! cheapest possible client so its CPU is not mistaken for the server's. Such a client is
//! a hundred lines: one `write_all` per request, a response read into a reused buffer —
//! no pool, no extra dependencies (hyper-util's client would add `http-body-util`,
//! `tower-service` and a connection pool whose scheduling we would then have to reason
//! about).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
#[derive(Debug)]
pub(crate) struct HttpConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    req: Vec<u8>,
}

/// A response: its status and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl HttpConn {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        HttpConn {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            req: Vec::with_capacity(64 * 1024),
        }
    }

    async fn stream(&mut self) -> anyhow::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        Ok(self.stream.as_mut().expect("set above"))
    }

    /// `POST path` with a JSON body and a bearer token. Reconnects once when the kept-alive
    /// connection was closed by the server.
    pub(crate) async fn post_json(
        &mut self,
        path: &str,
        bearer: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        self.req.clear();
        self.req.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bearer}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.addr,
                body.len()
            )
            .as_bytes(),
        );
        self.req.extend_from_slice(body);
        self.round_trip().await
    }

    /// `GET path` with a bearer token (`/metrics` needs a full API key).
    pub(crate) async fn get(&mut self, path: &str, bearer: &str) -> anyhow::Result<Response> {
        self.req.clear();
        self.req.extend_from_slice(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bearer}\r\n\r\n",
                self.addr
            )
            .as_bytes(),
        );
        self.round_trip().await
    }

    async fn round_trip(&mut self) -> anyhow::Result<Response> {
        match self.try_round_trip().await {
            Ok(r) => Ok(r),
            Err(_) if self.stream.is_some() => {
                // The server may have closed an idle keep-alive connection: one fresh try.
                self.stream = None;
                self.try_round_trip().await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_round_trip(&mut self) -> anyhow::Result<Response> {
        let req = std::mem::take(&mut self.req);
        let written = self.stream().await?.write_all(&req).await;
        self.req = req;
        if let Err(e) = written {
            self.stream = None;
            return Err(e.into());
        }
        match self.read_response().await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Reads what has arrived into `buf`'s spare room (at least 16 KiB of it).
    async fn fill(&mut self) -> anyhow::Result<()> {
        let stream = self.stream.as_mut().context("not connected")?;
        self.buf.reserve(16 * 1024);
        let n = stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }

    async fn read_response(&mut self) -> anyhow::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                bail!("response head too large");
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<usize>().context("content-length")?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            self.read_chunked().await?
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        };
        if close {
            self.stream = None;
        }
        Ok(Response { status, body })
    }

    async fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("chunk size")?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of an unlabelled gauge or counter in a Prometheus text exposition
/// (`name value`, or the `_total` line of a counter).
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("_total").unwrap_or(rest);
        let v = rest.strip_prefix(' ')?;
        v.split_whitespace().next()?.parse().ok()
    })
}
