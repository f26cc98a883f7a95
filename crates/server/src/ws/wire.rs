//! The WebSocket transport under `GET /ws`: the opening handshake, the socket split into
//! a read side and a write side, and the frame writer.
//!
//! Reading stays with tungstenite (frame parsing, masking, UTF-8 and size limits). Writing
//! does not: the server only ever sends unmasked text frames whose payload already exists
//! as shared [`Bytes`] (one serialization per event, shared by every connection of the
//! user), so [`FrameWriter`] puts a 2–10 byte header in front of each and hands header and
//! payload to the kernel together in one vectored write per batch. Nothing is copied into
//! a per-connection write buffer, so an idle connection holds no write buffer at all and a
//! burst leaves none behind, and the two halves need no lock between them.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::http::door::ConnSlot;
use crate::http::io::TrackedTcp;
use crate::http::{ApiError, ErrorCode};

/// Most slices one vectored write is given (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 512;

/// Most frames of a batch whose headers and slices are built on the stack for its first
/// `sendmsg`; a longer batch, or what is left of one the socket did not take whole, has
/// them allocated while it waits for room.
const STACK_FRAMES: usize = 32;

/// WebSocket opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// The header of a final, unmasked server frame: at most 10 bytes, of which the first
/// `len` are used.
#[derive(Debug, Clone, Copy)]
struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// A placeholder, overwritten before it is used.
    const EMPTY: Header = Header {
        bytes: [0; 10],
        len: 0,
    };

    /// The header of a frame carrying `payload_len` bytes, in the shortest length form.
    fn new(opcode: OpCode, payload_len: usize) -> Header {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode as u8;
        let len = if let Ok(short) = u8::try_from(payload_len)
            && short < 126
        {
            bytes[1] = short;
            2
        } else if let Ok(medium) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&medium.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Header { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A valid `GET /ws` upgrade request: what the 101 answer and the upgraded socket need.
#[derive(Debug)]
pub(crate) struct WsUpgrade {
    key: HeaderValue,
    offered_protocols: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
}

/// Why a request to `/ws` is not a WebSocket opening handshake as RFC 6455 §4.2.1 defines
/// it (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeRejection {
    NotGet,
    NotHttp11,
    NoHost,
    NoConnectionUpgrade,
    NoUpgradeWebsocket,
    /// Answered with `Sec-WebSocket-Version: 13`, the version the server speaks (§4.2.2).
    BadVersion,
    NoKey,
    BadKey,
    NotUpgradable,
}

impl UpgradeRejection {
    fn reason(self) -> &'static str {
        match self {
            UpgradeRejection::NotGet => "a WebSocket handshake is a GET request",
            UpgradeRejection::NotHttp11 => "a WebSocket handshake needs HTTP/1.1",
            UpgradeRejection::NoHost => "header `Host`: missing",
            UpgradeRejection::NoConnectionUpgrade => {
                "not a WebSocket handshake: `Connection` must contain `upgrade`"
            }
            UpgradeRejection::NoUpgradeWebsocket => {
                "not a WebSocket handshake: `Upgrade` must be `websocket`"
            }
            UpgradeRejection::BadVersion => {
                "header `Sec-WebSocket-Version`: must be 13, given once"
            }
            UpgradeRejection::NoKey => "header `Sec-WebSocket-Key`: missing",
            UpgradeRejection::BadKey => {
                "header `Sec-WebSocket-Key`: must be 16 bytes in base64 (24 characters), given once"
            }
            UpgradeRejection::NotUpgradable => "this connection cannot be upgraded",
        }
    }
}

impl From<UpgradeRejection> for ApiError {
    fn from(r: UpgradeRejection) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, r.reason())
    }
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let mut r = ApiError::from(self).into_response();
        if self == UpgradeRejection::BadVersion {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        r
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The one value of header `name`, `None` when it is missing or given more than once.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// Whether `key` is what RFC 6455 §4.1 asks a client to send: 16 bytes in base64, that is
/// 22 characters of the base64 alphabet and `==`.
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRejection::NotGet);
        }
        if parts.version < Version::HTTP_11 {
            return Err(UpgradeRejection::NotHttp11);
        }
        if !parts.headers.contains_key(header::HOST) {
            return Err(UpgradeRejection::NoHost);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeRejection::NoConnectionUpgrade);
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(UpgradeRejection::NoUpgradeWebsocket);
        }
        if single(&parts.headers, header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes().trim_ascii() != b"13")
        {
            return Err(UpgradeRejection::BadVersion);
        }
        if !parts.headers.contains_key(header::SEC_WEBSOCKET_KEY) {
            return Err(UpgradeRejection::NoKey);
        }
        let key = single(&parts.headers, header::SEC_WEBSOCKET_KEY)
            .filter(|k| is_base64_of_16_bytes(k.as_bytes().trim_ascii()))
            .cloned()
            .ok_or(UpgradeRejection::BadKey)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(WsUpgrade {
            key,
            offered_protocols: parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned(),
            on_upgrade,
        })
    }
}

impl WsUpgrade {
    /// Whether the client offered `protocol` in `Sec-WebSocket-Protocol`.
    pub(crate) fn offers(&self, protocol: &str) -> bool {
        self.offered_protocols
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|offered| offered.split(',').any(|p| p.trim() == protocol))
    }

    /// Answers 101, selecting `protocol` when the client offered it, and runs `serve` on
    /// the upgraded socket.
    pub(crate) fn accept<F, Fut>(
        self,
        protocol: &'static str,
        config: WebSocketConfig,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Box<WsStream>, FrameWriter) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let selected = self.offers(protocol);
        // A task's future is as large as its largest state, and every idle connection
        // holds this one: what it captures is one pointer, and the upgrade runs in a
        // future of its own, so that nothing of the upgrade keeps room beside `serve`'s.
        let setup = Box::new((self.on_upgrade, config, serve));
        tokio::spawn(async move {
            let (on_upgrade, config, serve) = *setup;
            let upgrade = Box::pin(async move {
                let upgraded = on_upgrade.await.ok()?;
                let (read, write, pre_read, slot) = split(upgraded);
                let stream = WebSocketStream::from_partially_read(
                    ReadOnly(read),
                    pre_read,
                    Role::Server,
                    Some(config),
                )
                .await;
                Some((stream, write, slot))
            });
            let Some((stream, write, slot)) = upgrade.await else {
                return;
            };
            // Boxed: the stream moves from the connection's task to its reader's.
            serve(Box::new(stream), FrameWriter::new(write, slot)).await;
        });
        let mut response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
        )
            .into_response();
        let headers = response.headers_mut();
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if selected {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;

/// Where a connection's frames go.
enum WriteHalf {
    /// A plain TCP socket: frames go out with `sendmsg`, several per call.
    Tcp(OwnedWriteHalf),
    /// Any other transport, through its `AsyncWrite`.
    Other(Box<dyn AsyncWrite + Send + Unpin>),
}

/// Splits the upgraded connection. A plain TCP socket (what `Server::serve` hands hyper)
/// splits into two owned halves with no lock between them; any other transport — the
/// router mounted in an application served by `axum::serve`, which wraps the socket, or
/// TLS — is split generically, behind a lock. Bytes the client sent right after its
/// handshake come back as the third value.
fn split(upgraded: Upgraded) -> (ReadHalf, WriteHalf, Vec<u8>, Option<ConnSlot>) {
    // `Server::serve`'s connections: the socket and its slot at the front door, which the
    // WebSocket holds from now on.
    let upgraded = match upgraded.downcast::<TokioIo<TrackedTcp>>() {
        Ok(parts) => {
            let (tcp, slot) = parts.io.into_inner().into_parts();
            let (r, w) = tcp.into_split();
            return (
                Box::new(r),
                WriteHalf::Tcp(w),
                parts.read_buf.to_vec(),
                Some(slot),
            );
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (r, w) = parts.io.into_inner().into_split();
            (
                Box::new(r),
                WriteHalf::Tcp(w),
                parts.read_buf.to_vec(),
                None,
            )
        }
        Err(upgraded) => {
            tracing::debug!("not a plain TCP connection: split through a lock");
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            (Box::new(r), WriteHalf::Other(Box::new(w)), Vec::new(), None)
        }
    }
}

/// The read side as tungstenite sees it. tungstenite answers pings and close frames by
/// writing; here those writes go nowhere, and the connection's writer sends the answers
/// itself (it is the only code that writes to the socket).
#[derive(Debug)]
pub(crate) struct ReadOnly<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The read side of a connection: tungstenite over [`ReadOnly`].
pub(crate) type WsStream = WebSocketStream<ReadOnly<ReadHalf>>;

/// Writes server frames to the socket (see the module docs).
pub(crate) struct FrameWriter {
    io: WriteHalf,
    /// The connection's place at the front door, given back when the socket closes.
    _slot: Option<ConnSlot>,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").finish_non_exhaustive()
    }
}

/// What is left to write of `frame`'s text frame once its first `sent` bytes (header
/// included) are on the wire: a slice of `frame`, or (the header itself cut, which a
/// socket rarely does) a copy.
pub(crate) fn text_rest(frame: &Bytes, sent: usize) -> Bytes {
    let header = Header::new(OpCode::Text, frame.len());
    let header = header.as_slice();
    match sent.checked_sub(header.len()) {
        Some(past) => frame.slice(past.min(frame.len())..),
        None => [&header[sent..], &frame[..]].concat().into(),
    }
}

impl FrameWriter {
    fn new(io: WriteHalf, slot: Option<ConnSlot>) -> Self {
        FrameWriter { io, _slot: slot }
    }

    /// Writes each payload as a text frame, all in as few system calls as the socket
    /// takes, then flushes: [`FrameWriter::write_text_now`], then what is left with
    /// [`FrameWriter::write_text_rest`].
    #[cfg(test)]
    pub(crate) async fn write_text(
        &mut self,
        frames: &[Bytes],
        sent: &mut usize,
    ) -> io::Result<()> {
        if self.write_text_now(frames, sent)? {
            return Ok(());
        }
        self.write_text_rest(frames, sent).await
    }

    /// Whether this writes to a plain TCP socket ([`FrameWriter::write_text_now`] writes
    /// nothing to any other transport).
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self.io, WriteHalf::Tcp(_))
    }

    /// Writes each payload as a text frame with what a plain TCP socket takes now, without
    /// waiting, for a batch of at most [`STACK_FRAMES`] frames (their headers and slices on
    /// the stack): `true` once all is sent. `false` when the socket's buffer filled first
    /// (`sent`, the bytes of the batch written so far, headers included, grows by what it
    /// took), or when the batch is longer or the transport is not plain TCP (nothing is
    /// sent): [`FrameWriter::write_text_rest`] then writes the rest. A plain socket needs
    /// no flush.
    pub(crate) fn write_text_now(&self, frames: &[Bytes], sent: &mut usize) -> io::Result<bool> {
        let WriteHalf::Tcp(w) = &self.io else {
            return Ok(false);
        };
        // Arrays sized to the batch: filling slots a batch does not use would cost more
        // than its headers.
        let tcp = w.as_ref();
        match frames.len() {
            0..=2 => send_text_now::<2, 4>(tcp, frames, sent),
            3..=8 => send_text_now::<8, 16>(tcp, frames, sent),
            9..=STACK_FRAMES => {
                send_text_now::<STACK_FRAMES, { 2 * STACK_FRAMES }>(tcp, frames, sent)
            }
            _ => Ok(false),
        }
    }

    /// Writes `frames` as text frames from byte `sent` of the batch on (what
    /// [`FrameWriter::write_text_now`] did not), waiting for room, then flushes; `sent`
    /// grows by what each write takes, so that a caller who stops waiting can end the frame
    /// in progress with [`FrameWriter::finish_frame`]. The headers and slices are on the
    /// heap while it waits.
    pub(crate) async fn write_text_rest(
        &mut self,
        frames: &[Bytes],
        sent: &mut usize,
    ) -> io::Result<()> {
        let headers: Vec<Header> = frames
            .iter()
            .map(|f| Header::new(OpCode::Text, f.len()))
            .collect();
        let mut slices: Vec<IoSlice<'_>> = headers
            .iter()
            .zip(frames)
            .flat_map(|(h, f)| [IoSlice::new(h.as_slice()), IoSlice::new(f)])
            .collect();
        let mut rest: &mut [IoSlice<'_>] = &mut slices;
        IoSlice::advance_slices(&mut rest, *sent);
        self.io.write_slices(rest, sent).await
    }

    /// Writes the rest of the frame that [`FrameWriter::write_text_rest`] of `frames` was in
    /// when it had sent `sent` bytes, so the stream ends on a frame boundary (where a close
    /// frame may follow); the frames after it are not written.
    pub(crate) async fn finish_frame(&mut self, frames: &[Bytes], sent: usize) -> io::Result<()> {
        let mut start = 0;
        for frame in frames {
            let header = Header::new(OpCode::Text, frame.len());
            let head = header.as_slice();
            let end = start + head.len() + frame.len();
            if sent < end {
                if sent == start {
                    return Ok(());
                }
                let into = sent - start;
                let mut slices = if into < head.len() {
                    [IoSlice::new(&head[into..]), IoSlice::new(frame)]
                } else {
                    [IoSlice::new(&[]), IoSlice::new(&frame[into - head.len()..])]
                };
                return self.io.write_slices(&mut slices, &mut 0).await;
            }
            start = end;
        }
        Ok(())
    }

    /// Writes one control frame (ping, pong or close) and flushes.
    pub(crate) async fn write_control(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        // Control payloads are at most 125 bytes (RFC 6455 §5.5).
        let payload = &payload[..payload.len().min(125)];
        let header = Header::new(opcode, payload.len());
        let mut slices = [IoSlice::new(header.as_slice()), IoSlice::new(payload)];
        self.io.write_slices(&mut slices, &mut 0).await
    }

    /// Writes `bytes` as they are: the rest of a frame begun elsewhere ([`text_rest`]).
    pub(crate) async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io
            .write_slices(&mut [IoSlice::new(bytes)], &mut 0)
            .await
    }

    /// Sends a close frame with `code` and `reason`.
    pub(crate) async fn write_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        self.write_control(OpCode::Close, &payload).await
    }

    /// Ends the server's side of the socket (a FIN after the close frame), for a peer whose
    /// bytes are no longer read: its close frame cannot end the close handshake, and a
    /// client waits for the server to close first (RFC 6455 §7.1.1).
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.io {
            WriteHalf::Tcp(w) => w.shutdown().await,
            WriteHalf::Other(w) => w.shutdown().await,
        }
    }
}

impl WriteHalf {
    /// Writes every slice, in order, then flushes; `sent` grows by what each write took.
    async fn write_slices(
        &mut self,
        slices: &mut [IoSlice<'_>],
        sent: &mut usize,
    ) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => send_all(w.as_ref(), slices, sent).await,
            WriteHalf::Other(w) => {
                if w.is_write_vectored() {
                    let mut rest: &mut [IoSlice<'_>] = slices;
                    while !rest.is_empty() {
                        let n = rest.len().min(MAX_IOV);
                        let written = w.write_vectored(&rest[..n]).await?;
                        if written == 0 {
                            return Err(io::ErrorKind::WriteZero.into());
                        }
                        *sent += written;
                        IoSlice::advance_slices(&mut rest, written);
                    }
                } else {
                    for s in slices.iter() {
                        w.write_all(s).await?;
                        *sent += s.len();
                    }
                }
                w.flush().await
            }
        }
    }
}

/// Sends a batch of at most `N` text frames with `sendmsg` while the socket takes them,
/// building headers and slices (`S`, twice `N`) on the stack: `true` once all is sent,
/// `false` when the socket's buffer filled first (`sent` grows by what it took).
fn send_text_now<const N: usize, const S: usize>(
    tcp: &TcpStream,
    frames: &[Bytes],
    sent: &mut usize,
) -> io::Result<bool> {
    const { assert!(S == 2 * N && S <= MAX_IOV) };
    if frames.len() > N {
        return Ok(false);
    }
    let mut headers = [Header::EMPTY; N];
    for (h, f) in headers.iter_mut().zip(frames) {
        *h = Header::new(OpCode::Text, f.len());
    }
    let mut slices = [IoSlice::new(&[]); S];
    for (pair, (h, f)) in slices.chunks_exact_mut(2).zip(headers.iter().zip(frames)) {
        pair[0] = IoSlice::new(h.as_slice());
        pair[1] = IoSlice::new(f);
    }
    let mut rest: &mut [IoSlice<'_>] = &mut slices[..2 * frames.len()];
    while !rest.is_empty() {
        let took = match socket2::SockRef::from(tcp).send_vectored(rest) {
            Ok(took) => took,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        if took == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *sent += took;
        IoSlice::advance_slices(&mut rest, took);
    }
    Ok(true)
}

/// Sends every slice with `sendmsg` (a socket's own call: no file-position lock, unlike
/// `writev`), waiting for room when the socket's buffer is full; `sent` grows by what each
/// call took.
async fn send_all(tcp: &TcpStream, slices: &mut [IoSlice<'_>], sent: &mut usize) -> io::Result<()> {
    let mut rest: &mut [IoSlice<'_>] = slices;
    while !rest.is_empty() {
        let n = rest.len().min(MAX_IOV);
        let send = || socket2::SockRef::from(tcp).send_vectored(&rest[..n]);
        // The socket is almost always writable: send at once. Only when it is full does
        // the send go through tokio's readiness (`try_io`, which clears the readiness it
        // saw before the attempt, so no wake-up is lost), and wait.
        let took = match send() {
            Ok(took) => took,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => loop {
                match tcp.try_io(Interest::WRITABLE, send) {
                    Ok(took) => break took,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                    Err(e) => return Err(e),
                }
            },
            Err(e) => return Err(e),
        };
        if took == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *sent += took;
        IoSlice::advance_slices(&mut rest, took);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_sixteen_bytes_of_base64() {
        assert!(is_base64_of_16_bytes(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b""[..],
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25j!Q==",
            b"dGhlIHNhbXBsZSBub25jZQA",
            b"dGhlIHNhbXBsZSBub25jZQ==dGhl",
        ] {
            assert!(
                !is_base64_of_16_bytes(bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        for (len, expect) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            assert_eq!(
                Header::new(OpCode::Text, len).as_slice(),
                expect,
                "length {len}"
            );
        }
        assert_eq!(Header::new(OpCode::Close, 2).as_slice(), [0x88, 2]);
    }

    /// A writer that takes at most `chunk` bytes per call, so every partial-write path
    /// runs.
    struct Trickle {
        out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        chunk: usize,
        vectored: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.lock().expect("lock").extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.chunk;
            let mut out = self.out.lock().expect("lock");
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Issue 14: a writer that stops mid-batch (its connection was abandoned) ends the
    /// frame in progress, so the close frame after it is a frame of its own.
    #[tokio::test]
    async fn a_batch_cut_anywhere_is_finished_at_the_next_frame_boundary() {
        let frames: Vec<Bytes> = [3usize, 200, 0, 5]
            .iter()
            .map(|&n| Bytes::from(vec![b'x'; n]))
            .collect();
        let mut whole = Vec::new();
        let mut boundaries = vec![0];
        for f in &frames {
            whole.extend_from_slice(Header::new(OpCode::Text, f.len()).as_slice());
            whole.extend_from_slice(f);
            boundaries.push(whole.len());
        }
        for sent in 0..=whole.len() {
            let out = std::sync::Arc::new(std::sync::Mutex::new(whole[..sent].to_vec()));
            let mut w = FrameWriter::new(
                WriteHalf::Other(Box::new(Trickle {
                    out: out.clone(),
                    chunk: 1 << 20,
                    vectored: true,
                })),
                None,
            );
            w.finish_frame(&frames, sent).await.expect("written");
            let end = *boundaries.iter().find(|&&b| b >= sent).expect("a boundary");
            assert_eq!(*out.lock().expect("lock"), whole[..end], "cut at {sent}");
        }
    }

    /// `frames` as text frames on the wire.
    fn on_the_wire(frames: &[Bytes]) -> Vec<u8> {
        let mut wire = Vec::new();
        for f in frames {
            wire.extend_from_slice(Header::new(OpCode::Text, f.len()).as_slice());
            wire.extend_from_slice(f);
        }
        wire
    }

    /// A connected pair of loopback sockets: the client's end, and the server's.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// A batch on a plain TCP socket: sent from the stack while the socket takes it, the
    /// rest (after the socket's buffer filled mid-frame) once the peer reads, every byte
    /// in order; batches short and long, with frames of every header length.
    #[tokio::test]
    async fn a_tcp_batch_the_socket_cannot_take_at_once_arrives_whole() {
        use tokio::io::AsyncReadExt;
        for count in [1usize, 2, 3, 8, 9, STACK_FRAMES, STACK_FRAMES + 1] {
            let frames: Vec<Bytes> = (0..count)
                .map(|i| {
                    let len = [5usize, 126, 70_000, 300][i % 4];
                    Bytes::from(vec![b'a' + (i % 26) as u8; len])
                })
                .collect();
            let expected = on_the_wire(&frames);
            let (mut client, server) = tcp_pair().await;
            socket2::SockRef::from(&server)
                .set_send_buffer_size(4096)
                .expect("SO_SNDBUF");
            let (_read, write) = server.into_split();
            let mut writer = FrameWriter::new(WriteHalf::Tcp(write), None);
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.expect("read");
                got
            });
            let mut sent = 0;
            writer
                .write_text(&frames, &mut sent)
                .await
                .expect("written");
            assert_eq!(sent, expected.len(), "{count} frames");
            drop(writer);
            drop(_read);
            assert!(reader.await.expect("reader") == expected, "{count} frames");
        }
    }

    #[tokio::test]
    async fn partial_writes_still_produce_every_frame_in_order() {
        let frames: Vec<Bytes> = [1usize, 130, 0, 70_000, 7]
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![b'a' + i as u8; n]))
            .collect();
        let expected = on_the_wire(&frames);
        for vectored in [true, false] {
            for chunk in [1, 3, 64, 1 << 20] {
                let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let mut w = FrameWriter::new(
                    WriteHalf::Other(Box::new(Trickle {
                        out: out.clone(),
                        chunk,
                        vectored,
                    })),
                    None,
                );
                let mut sent = 0;
                w.write_text(&frames, &mut sent).await.expect("written");
                assert_eq!(
                    *out.lock().expect("lock"),
                    expected,
                    "chunk {chunk}, vectored {vectored}"
                );
                assert_eq!(sent, expected.len());
            }
        }
    }
}
