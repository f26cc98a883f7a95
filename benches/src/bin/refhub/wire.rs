//! One WebSocket connection after its upgrade: a reader (tungstenite, over the socket's
//! read half) and a writer that drains the connection's outbox into one vectored
//! `sendmsg` per batch — a 2–10 byte header in front of each shared frame, nothing copied
//! into a per-connection buffer.
//!
//! The same idea as agentwire-server's writer, written again on purpose: the hub uses no
//! code of agentwire, so a change to agentwire's writer moves one side of a ratio, never
//! both.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::hub::{End, Hub, Outbox, recycle};

/// Most slices one `sendmsg` is given (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 512;

/// How long the writer may take to send its close frame once the reader has ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The reader's settings: agentwire's defaults (`--read-buffer-size 256`, 16 KiB message
/// and frame limits), so both keep the same per-connection read buffer.
fn reader_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .max_message_size(Some(16 * 1024))
        .max_frame_size(Some(16 * 1024))
}

/// The header of a final, unmasked server frame.
#[derive(Debug, Clone, Copy)]
struct Header {
    bytes: [u8; 10],
    len: usize,
}

impl Header {
    fn new(opcode: u8, payload_len: usize) -> Header {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
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
        &self.bytes[..self.len]
    }
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PONG: u8 = 0xA;

/// Serves an upgraded connection of `user` until either side ends it.
pub(crate) async fn serve(hub: Arc<Hub>, user: String, upgraded: Upgraded) {
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        return;
    };
    let pre_read = parts.read_buf.to_vec();
    let (read, write) = parts.io.into_inner().into_split();
    let Ok(outbox) = hub.connect(&user) else {
        return;
    };
    let mut writer = tokio::spawn(write_loop(hub.clone(), outbox.clone(), write));
    let mut ws = WebSocketStream::from_partially_read(
        ReadOnly(read),
        pre_read,
        Role::Server,
        Some(reader_config()),
    )
    .await;
    let writer_done = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Ping(payload))) => outbox.pong(payload),
                Some(Ok(Message::Close(_))) => {
                    outbox.end(End::Close(1000));
                    break false;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    outbox.end(End::Gone);
                    break false;
                }
            },
            _ = &mut writer => break true,
        }
    };
    if !writer_done
        && tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    hub.disconnect(&user, &outbox);
}

async fn write_loop(hub: Arc<Hub>, outbox: Arc<Outbox>, tcp: OwnedWriteHalf) {
    let mut batch = Vec::new();
    loop {
        let next = outbox.next(&mut batch, &hub).await;
        if !batch.is_empty() {
            if write_text(tcp.as_ref(), &batch).await.is_err() {
                return;
            }
            hub.stats
                .frames_written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            recycle(&mut batch);
        }
        if let Some(payload) = next.pong
            && write_control(tcp.as_ref(), PONG, &payload).await.is_err()
        {
            return;
        }
        match next.end {
            Some(End::Close(code)) => {
                let _ = write_control(tcp.as_ref(), CLOSE, &code.to_be_bytes()).await;
                return;
            }
            Some(End::Gone) => return,
            None => {}
        }
    }
}

/// Writes each payload as a text frame, in as few `sendmsg` calls as the socket takes.
async fn write_text(tcp: &TcpStream, frames: &[Bytes]) -> io::Result<()> {
    if let [frame] = frames {
        let header = Header::new(TEXT, frame.len());
        let mut slices = [IoSlice::new(header.as_slice()), IoSlice::new(frame)];
        return send_all(tcp, &mut slices).await;
    }
    let headers: Vec<Header> = frames.iter().map(|f| Header::new(TEXT, f.len())).collect();
    let mut slices: Vec<IoSlice<'_>> = headers
        .iter()
        .zip(frames)
        .flat_map(|(h, f)| [IoSlice::new(h.as_slice()), IoSlice::new(f)])
        .collect();
    send_all(tcp, &mut slices).await
}

async fn write_control(tcp: &TcpStream, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let payload = &payload[..payload.len().min(125)];
    let header = Header::new(opcode, payload.len());
    let mut slices = [IoSlice::new(header.as_slice()), IoSlice::new(payload)];
    send_all(tcp, &mut slices).await
}

/// Sends every slice with `sendmsg`, waiting for room when the socket's buffer is full.
async fn send_all(tcp: &TcpStream, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut rest: &mut [IoSlice<'_>] = slices;
    while !rest.is_empty() {
        let n = rest.len().min(MAX_IOV);
        let send = || socket2::SockRef::from(tcp).send_vectored(&rest[..n]);
        let sent = match send() {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => loop {
                match tcp.try_io(Interest::WRITABLE, send) {
                    Ok(sent) => break sent,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                    Err(e) => return Err(e),
                }
            },
            Err(e) => return Err(e),
        };
        if sent == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, sent);
    }
    Ok(())
}

/// The read half as tungstenite sees it: its automatic answers (pongs, close replies) go
/// nowhere, since the writer is the only code that writes to the socket.
#[derive(Debug)]
struct ReadOnly(OwnedReadHalf);

impl AsyncRead for ReadOnly {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadOnly {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        for (len, expect) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            assert_eq!(Header::new(TEXT, len).as_slice(), expect, "length {len}");
        }
    }
}
