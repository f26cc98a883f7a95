//! The clients' WebSocket: the opening handshake (RFC 6455 §4) and a reader of the
//! server's frames that hands each text message out as a `&str` borrowed from the
//! connection's read buffer.
//!
//! Why not tokio-tungstenite here (the flooders still use it): its reader zeroes its whole
//! read chunk before every read and copies each message out of it, which cost the
//! generator more instructions than the rest of reading a frame together, so the
//! generator ran out of its core before the servers it measures did. This reader reads
//! into the buffer's spare capacity and parses frames in place. It checks what
//! tungstenite checks of a server's frames — unmasked, no reserved bits, known opcodes,
//! control frames whole and short, continuations only inside a fragmented message, text
//! that is UTF-8, close frames of 0 or ≥ 2 bytes with a UTF-8 reason, the same size
//! limits — and answers pings with pongs, as tungstenite does.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest frame read (tungstenite's default `max_frame_size`).
pub(crate) const MAX_FRAME_BYTES: usize = 16 << 20;
/// Largest message read, its fragments together (tungstenite's `max_message_size`).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Largest handshake answer head.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The read buffer a connection starts with, and the least free space a read is given
/// (what the clients gave tungstenite as its read buffer).
pub(crate) const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Why a connection's frames could not be read.
#[derive(Debug)]
pub(crate) enum WsError {
    Io(io::Error),
    /// The server broke the protocol.
    Protocol(&'static str),
    /// A frame or message over [`MAX_FRAME_BYTES`] / [`MAX_MESSAGE_BYTES`].
    TooLarge(usize),
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Io(e) => write!(f, "IO error: {e}"),
            WsError::Protocol(what) => write!(f, "WebSocket protocol error: {what}"),
            WsError::TooLarge(n) => write!(f, "a frame or message of {n} bytes is too large"),
        }
    }
}

impl std::error::Error for WsError {}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        WsError::Io(e)
    }
}

/// A message of the server's.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Msg<'a> {
    Text(&'a str),
    Binary,
    /// A close frame and its code (`None`: it had none).
    Close(Option<u16>),
}

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// An open client WebSocket over `S`.
#[derive(Debug)]
pub(crate) struct WsStream<S> {
    io: S,
    /// Read bytes; `buf[pos..]` are not parsed yet.
    buf: Vec<u8>,
    pos: usize,
    /// Bytes the frame at `pos` needs in all, when it is incomplete.
    need: usize,
    /// A fragmented message being put together: whether it is text, and its bytes.
    partial: Option<(bool, Vec<u8>)>,
    /// The last fragmented text message, whole.
    whole: Vec<u8>,
    /// The payload of a ping to answer.
    pong: Option<Vec<u8>>,
    /// State of the masks of this client's frames (xorshift; RFC 6455 asks browsers for
    /// unpredictable masks to protect proxies, which a load generator does not need).
    mask: u32,
}

/// Opens a WebSocket on `io` (connected to `server`): `GET path` with a bearer token.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    server: SocketAddr,
    path: &str,
    token: &str,
) -> anyhow::Result<WsStream<S>> {
    let key = generate_key();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    io.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(READ_BUFFER_BYTES);
    let head_len = loop {
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            bail!("handshake answer head over {MAX_HEAD_BYTES} bytes");
        }
        buf.reserve(READ_BUFFER_BYTES);
        if io.read_buf(&mut buf).await? == 0 {
            bail!("closed during the handshake");
        }
    };
    check_upgrade(&buf[..head_len], &key)?;
    let seed = (u32::from(server.port()) ^ crate::clients::now_us() as u32) | 1;
    Ok(WsStream {
        io,
        buf,
        pos: head_len,
        need: 0,
        partial: None,
        whole: Vec::new(),
        pong: None,
        mask: seed,
    })
}

/// Checks the handshake's answer: `101`, `Upgrade: websocket`, `Connection: upgrade` and
/// the accept key of `key`.
fn check_upgrade(head: &[u8], key: &str) -> anyhow::Result<()> {
    let head = std::str::from_utf8(head).context("handshake answer is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("handshake answer without a status")?;
    if status != 101 {
        bail!("HTTP error: {status}");
    }
    let (mut upgrade, mut connection, mut accept) = (false, false, false);
    let want = derive_accept_key(key.as_bytes());
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = value == want;
        }
    }
    if !(upgrade && connection && accept) {
        bail!("handshake answer without Upgrade, Connection or the right Sec-WebSocket-Accept");
    }
    Ok(())
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Reads once from the socket into the buffer; 0 at its end. Cancel-safe.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < READ_BUFFER_BYTES / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let pending = self.buf.len() - self.pos;
        let spare = self.need.saturating_sub(pending).max(READ_BUFFER_BYTES / 2);
        self.buf.reserve(spare);
        self.io.read_buf(&mut self.buf).await
    }

    /// Answers a ping that came in since the last call, if any.
    pub(crate) async fn answer_ping(&mut self) -> io::Result<()> {
        match self.pong.take() {
            Some(payload) => self.send_control(PONG, &payload).await,
            None => Ok(()),
        }
    }

    /// Sends a close frame with `code` (`None`: an empty one).
    pub(crate) async fn send_close(&mut self, code: Option<u16>) -> io::Result<()> {
        match code {
            Some(c) => self.send_control(CLOSE, &c.to_be_bytes()).await,
            None => self.send_control(CLOSE, &[]).await,
        }
    }

    async fn send_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        debug_assert!(payload.len() <= 125);
        let mut frame = [0u8; 6 + 125];
        frame[0] = 0x80 | opcode;
        frame[1] = 0x80 | payload.len() as u8;
        // xorshift32
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let mask = self.mask.to_be_bytes();
        frame[2..6].copy_from_slice(&mask);
        for (i, b) in payload.iter().enumerate() {
            frame[6 + i] = b ^ mask[i % 4];
        }
        self.io.write_all(&frame[..6 + payload.len()]).await?;
        self.io.flush().await
    }
}

impl<S> WsStream<S> {
    /// The next whole message in the buffer (`None`: more must be read). Pings are kept
    /// for [`WsStream::answer_ping`], pongs skipped.
    pub(crate) fn next_message(&mut self) -> Result<Option<Msg<'_>>, WsError> {
        loop {
            let avail = &self.buf[self.pos..];
            if avail.len() < 2 {
                self.need = 2;
                return Ok(None);
            }
            let (b0, b1) = (avail[0], avail[1]);
            if b1 & 0x80 != 0 {
                return Err(WsError::Protocol("a masked frame from the server"));
            }
            if b0 & 0x70 != 0 {
                return Err(WsError::Protocol("reserved bits set"));
            }
            let (len, head) = match b1 & 0x7f {
                126 => match avail.get(2..4) {
                    Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                    None => {
                        self.need = 4;
                        return Ok(None);
                    }
                },
                127 => match avail.get(2..10) {
                    Some(b) => {
                        let mut be = [0u8; 8];
                        be.copy_from_slice(b);
                        (u64::from_be_bytes(be), 10)
                    }
                    None => {
                        self.need = 10;
                        return Ok(None);
                    }
                },
                n => (u64::from(n), 2),
            };
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_FRAME_BYTES {
                return Err(WsError::TooLarge(len));
            }
            if avail.len() < head + len {
                self.need = head + len;
                return Ok(None);
            }
            self.need = 0;
            let start = self.pos + head;
            let end = start + len;
            self.pos = end;
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            if opcode >= CLOSE && (!fin || len > 125) {
                return Err(WsError::Protocol("a fragmented or long control frame"));
            }
            match opcode {
                TEXT | BINARY => {
                    if self.partial.is_some() {
                        return Err(WsError::Protocol("a new message inside a fragmented one"));
                    }
                    if !fin {
                        self.partial = Some((opcode == TEXT, self.buf[start..end].to_vec()));
                        continue;
                    }
                    if opcode == BINARY {
                        return Ok(Some(Msg::Binary));
                    }
                    return match std::str::from_utf8(&self.buf[start..end]) {
                        Ok(text) => Ok(Some(Msg::Text(text))),
                        Err(_) => Err(WsError::Protocol("a text message that is not UTF-8")),
                    };
                }
                CONTINUATION => {
                    let Some((text, bytes)) = self.partial.as_mut() else {
                        return Err(WsError::Protocol("a continuation outside a message"));
                    };
                    bytes.extend_from_slice(&self.buf[start..end]);
                    if bytes.len() > MAX_MESSAGE_BYTES {
                        return Err(WsError::TooLarge(bytes.len()));
                    }
                    if !fin {
                        continue;
                    }
                    let text = *text;
                    self.whole = self.partial.take().map(|(_, b)| b).unwrap_or_default();
                    if !text {
                        return Ok(Some(Msg::Binary));
                    }
                    return match std::str::from_utf8(&self.whole) {
                        Ok(text) => Ok(Some(Msg::Text(text))),
                        Err(_) => Err(WsError::Protocol("a text message that is not UTF-8")),
                    };
                }
                CLOSE => {
                    let payload = &self.buf[start..end];
                    return match payload.len() {
                        0 => Ok(Some(Msg::Close(None))),
                        1 => Err(WsError::Protocol("a close frame of one byte")),
                        _ => {
                            if std::str::from_utf8(&payload[2..]).is_err() {
                                return Err(WsError::Protocol("a close reason that is not UTF-8"));
                            }
                            Ok(Some(Msg::Close(Some(u16::from_be_bytes([
                                payload[0], payload[1],
                            ])))))
                        }
                    };
                }
                PING => self.pong = Some(self.buf[start..end].to_vec()),
                PONG => {}
                _ => return Err(WsError::Protocol("an unknown opcode")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn stream(bytes: Vec<u8>) -> WsStream<()> {
        stream_on((), bytes)
    }

    /// A reader over `io` that has `bytes` in its buffer already.
    fn stream_on<T>(io: T, bytes: Vec<u8>) -> WsStream<T> {
        WsStream {
            io,
            buf: bytes,
            pos: 0,
            need: 0,
            partial: None,
            whole: Vec::new(),
            pong: None,
            mask: 1,
        }
    }

    /// Every message of `bytes`, fed in pieces of `step` bytes.
    fn read_all(bytes: &[u8], step: usize) -> Result<Vec<String>, String> {
        let mut ws = stream(Vec::new());
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            ws.buf.extend_from_slice(piece);
            loop {
                match ws.next_message() {
                    Ok(Some(Msg::Text(t))) => out.push(t.to_owned()),
                    Ok(Some(Msg::Binary)) => out.push("<binary>".into()),
                    Ok(Some(Msg::Close(c))) => out.push(format!("<close {c:?}>")),
                    Ok(None) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        if ws.pong.is_some() {
            out.push("<ping>".into());
        }
        Ok(out)
    }

    #[test]
    fn reads_messages_of_every_length_in_any_pieces() {
        let long = "y".repeat(70_000);
        let mut bytes = Vec::new();
        bytes.extend(frame(0x81, b"{\"a\":1}"));
        bytes.extend(frame(0x81, "é".repeat(100).as_bytes()));
        bytes.extend(frame(0x81, long.as_bytes()));
        bytes.extend(frame(0x82, &[0, 1, 2]));
        bytes.extend(frame(0x89, b"hb"));
        bytes.extend(frame(0x8A, b"x"));
        bytes.extend(frame(0x01, b"fra"));
        bytes.extend(frame(0x89, b"hb"));
        bytes.extend(frame(0x00, "g\u{e9}".as_bytes()));
        bytes.extend(frame(0x80, b"ment"));
        bytes.extend(frame(0x88, &[0x03, 0xf3, b'b', b'y', b'e']));
        let want = vec![
            "{\"a\":1}".to_owned(),
            "é".repeat(100),
            long,
            "<binary>".into(),
            "fragément".into(),
            "<close Some(1011)>".into(),
            "<ping>".into(),
        ];
        for step in [1, 2, 3, 7, 125, 4096, bytes.len()] {
            assert_eq!(read_all(&bytes, step).as_ref(), Ok(&want), "step {step}");
        }
    }

    #[test]
    fn refuses_what_tungstenite_refuses() {
        for (bytes, what) in [
            (vec![0x81, 0x82, 1, 2, 3, 4, 5, 6], "masked"),
            (frame(0xC1, b"x"), "reserved"),
            (frame(0x83, b"x"), "unknown opcode"),
            (frame(0x09, b"x"), "control"),
            (frame(0x89, &[0; 126]), "control"),
            (frame(0x80, b"x"), "continuation outside"),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                "inside a fragmented",
            ),
            (frame(0x81, &[0xff, 0xfe]), "not UTF-8"),
            (
                [frame(0x01, &[0xc3]), frame(0x80, b"x")].concat(),
                "not UTF-8",
            ),
            (frame(0x88, &[3]), "one byte"),
            (frame(0x88, &[3, 0xe8, 0xff]), "reason"),
            (vec![0x81, 127, 0, 0, 0, 0, 0x01, 0, 0, 1], "too large"),
        ] {
            let got = read_all(&bytes, bytes.len()).expect_err(what);
            assert!(got.contains(what), "{what}: {got}");
        }
    }

    #[test]
    fn an_empty_close_has_no_code() {
        assert_eq!(
            read_all(&frame(0x88, b""), 1),
            Ok(vec!["<close None>".to_owned()])
        );
    }

    #[tokio::test]
    async fn handshakes_answers_pings_and_closes() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let srv = tokio::spawn(async move {
            let mut req = Vec::new();
            while memchr::memmem::find(&req, b"\r\n\r\n").is_none() {
                server.read_buf(&mut req).await.expect("read");
            }
            let req = String::from_utf8(req).expect("utf8");
            assert!(req.starts_with("GET /ws HTTP/1.1\r\n"), "{req}");
            assert!(req.contains("Authorization: Bearer tok\r\n"), "{req}");
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("key");
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            let mut out = answer.into_bytes();
            out.extend(frame(0x81, b"hello"));
            out.extend(frame(0x89, b"p1"));
            server.write_all(&out).await.expect("write");
            // The pong, masked.
            let mut pong = [0u8; 8];
            server.read_exact(&mut pong).await.expect("pong");
            assert_eq!(pong[0], 0x8A);
            assert_eq!(pong[1], 0x82);
            let unmasked: Vec<u8> = pong[6..]
                .iter()
                .zip(&pong[2..6])
                .map(|(b, m)| b ^ m)
                .collect();
            assert_eq!(unmasked, b"p1");
            server
                .write_all(&frame(0x88, &1000u16.to_be_bytes()))
                .await
                .expect("write");
            let mut close = [0u8; 8];
            server.read_exact(&mut close).await.expect("close");
            assert_eq!(&close[..2], &[0x88, 0x82]);
        });
        let mut ws = connect(client, addr, "/ws", "tok").await.expect("connects");
        let mut seen = Vec::new();
        'read: loop {
            loop {
                match ws.next_message().expect("valid") {
                    Some(Msg::Text(t)) => seen.push(t.to_owned()),
                    Some(Msg::Close(code)) => {
                        seen.push(format!("close {code:?}"));
                        ws.send_close(code).await.expect("close");
                        break 'read;
                    }
                    Some(Msg::Binary) => {}
                    None => break,
                }
            }
            ws.answer_ping().await.expect("pong");
            assert!(ws.fill().await.expect("read") > 0);
        }
        assert_eq!(seen, ["hello", "close Some(1000)"]);
        srv.await.expect("server");
    }

    #[tokio::test]
    async fn fill_grows_the_buffer_for_a_large_frame_and_keeps_what_follows() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut ws = stream_on(client, Vec::new());
        let big = "z".repeat(100_000);
        let mut bytes = frame(0x81, b"first");
        bytes.extend(frame(0x81, big.as_bytes()));
        bytes.extend(frame(0x81, b"last"));
        tokio::spawn(async move {
            for piece in bytes.chunks(777) {
                server.write_all(piece).await.expect("write");
            }
        });
        let mut seen = Vec::new();
        loop {
            while let Some(m) = ws.next_message().expect("valid") {
                match m {
                    Msg::Text(t) => seen.push(t.len()),
                    other => panic!("{other:?}"),
                }
            }
            if ws.fill().await.expect("read") == 0 {
                break;
            }
        }
        assert_eq!(seen, [5, 100_000, 4]);
        assert_eq!(ws.pos, ws.buf.len());
    }

    #[tokio::test]
    async fn a_refused_handshake_names_the_status() {
        let (client, mut server) = tokio::io::duplex(4096);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        tokio::spawn(async move {
            let mut req = vec![0u8; 1024];
            let _ = server.read(&mut req).await;
            let _ = server
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let err = connect(client, addr, "/ws", "tok")
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("401"), "{err}");
    }
}
