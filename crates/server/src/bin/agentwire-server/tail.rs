//! `agentwire-server tail`: follows one user's stream and prints each frame as one JSON
//! line on stdout; reconnects after a lost connection and resumes where it stopped
//! (`last_seq` and `epoch`, docs/protocol.md §6), so no event is missed or printed twice.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::cli::{TailArgs, TokenArgs};
use crate::client::{ServerAddr, ServerAddrError};

/// The first wait before reconnecting; it doubles up to [`RECONNECT_MAX_DELAY`].
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two connection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
/// Lifetime of each token `tail` mints (a new one at every connection).
const MINTED_TOKEN_TTL_SECS: u64 = 3600;
/// How long the close handshake may take on Ctrl-C.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why `tail` stopped other than by Ctrl-C or `--count`; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TailError {
    /// `--server` cannot be used (exit 2).
    #[error(transparent)]
    Server(#[from] ServerAddrError),
    /// No token could be minted: no secret and no development credentials (exit 4).
    #[error("cannot mint a token: {0:#}")]
    Mint(anyhow::Error),
    /// The handshake was refused for good: 400, 401 or 403 (exit 4). A refusal that may
    /// pass later (503 while draining, 429) is retried instead.
    #[error("the server refused the connection ({status}): {body}")]
    Refused { status: u16, body: String },
}

impl TailError {
    /// The process's exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            TailError::Server(_) => 2,
            TailError::Mint(_) | TailError::Refused { .. } => 4,
        }
    }
}

/// Where the stream was left: sent back at the next connection to resume after it.
#[derive(Debug, Default)]
struct Position {
    epoch: Option<String>,
    last_seq: Option<u64>,
    events: u64,
}

impl Position {
    /// Notes what `frame` says of the stream's position.
    fn note(&mut self, frame: &Value) {
        if frame["type"] == "connection_established" {
            let epoch = frame["epoch"].as_str().map(str::to_owned);
            if epoch != self.epoch {
                // A new incarnation of the stream: its seqs start over.
                self.last_seq = None;
            }
            self.epoch = epoch;
        } else if let Some(seq) = frame["seq"].as_u64() {
            self.last_seq = Some(seq);
            self.events += 1;
        }
    }

    fn query(&self) -> String {
        match (&self.epoch, self.last_seq) {
            (Some(epoch), Some(seq)) => format!("?last_seq={seq}&epoch={epoch}"),
            _ => String::new(),
        }
    }
}

/// How one connection ended.
enum End {
    /// Ctrl-C, SIGTERM or `--count`: exit 0.
    Done,
    /// Lost (closed by the server, a network error, or not made): reconnect.
    Lost(String),
}

/// Follows the stream until Ctrl-C (or `--count` events).
///
/// # Errors
/// [`TailError`] for what reconnecting cannot mend.
pub(crate) async fn run(args: &TailArgs) -> Result<(), TailError> {
    let server = ServerAddr::parse(&args.server.server)?;
    let mut stop = std::pin::pin!(agentwire_server::shutdown_signal());
    let mut position = Position::default();
    let mut delay = RECONNECT_FIRST_DELAY;
    loop {
        let token = token(args)?;
        let url = format!("ws://{}/ws{}", server.authority(), position.query());
        let attempt = tokio::select! {
            () = &mut stop => return Ok(()),
            r = connect(&url, &token, server.socket()) => r,
        };
        let end = match attempt {
            Ok(ws) => {
                delay = RECONNECT_FIRST_DELAY;
                follow(ws, &mut position, args.count, &mut stop).await
            }
            Err(tungstenite::Error::Http(answer))
                if matches!(answer.status().as_u16(), 400 | 401 | 403) =>
            {
                let body = answer
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(TailError::Refused {
                    status: answer.status().as_u16(),
                    body,
                });
            }
            Err(e) => End::Lost(e.to_string()),
        };
        match end {
            End::Done => return Ok(()),
            End::Lost(why) => {
                eprintln!("{why}; reconnecting to {server} in {delay:?}");
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    url: &str,
    token: &str,
    socket: (&str, u16),
) -> Result<Socket, tungstenite::Error> {
    let mut request = url.into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
    request.headers_mut().insert("authorization", bearer);
    let stream = tokio::net::TcpStream::connect(socket).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// Prints the frames of one connection until it ends.
async fn follow(
    mut ws: Socket,
    position: &mut Position,
    count: Option<u64>,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> End {
    loop {
        if count.is_some_and(|n| position.events >= n) {
            let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(None)).await;
            return End::Done;
        }
        let message = tokio::select! {
            () = &mut *stop => {
                let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(None)).await;
                return End::Done;
            }
            m = ws.next() => m,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                position.note(&frame);
                if text.contains('\n') && !frame.is_null() {
                    crate::say(&frame.to_string());
                } else {
                    crate::say(&text);
                }
            }
            Some(Ok(Message::Close(close))) => {
                return End::Lost(match close {
                    Some(c) => format!("closed by the server: {} {}", u16::from(c.code), c.reason),
                    None => "closed by the server".into(),
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return End::Lost(e.to_string()),
            None => return End::Lost("the connection ended".into()),
        }
    }
}

/// `--token`, or a fresh token minted as `agentwire-server token` does.
fn token(args: &TailArgs) -> Result<String, TailError> {
    if let Some(token) = &args.token {
        return Ok(token.clone());
    }
    let mint = TokenArgs {
        user: args.user.clone().unwrap_or_default(),
        ttl_secs: MINTED_TOKEN_TTL_SECS,
        sign: args.sign.clone(),
    };
    crate::dev::mint_token(&mint).map_err(TailError::Mint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_resumes_after_the_last_event_of_the_same_epoch() {
        let mut p = Position::default();
        assert_eq!(p.query(), "");
        p.note(&serde_json::json!({"type":"connection_established","epoch":"e_1","last_seq":0}));
        assert_eq!(p.query(), "", "nothing seen yet: from the start");
        p.note(&serde_json::json!({"type":"agent_started","seq":7}));
        assert_eq!(p.query(), "?last_seq=7&epoch=e_1");
        p.note(&serde_json::json!({"type":"connection_established","epoch":"e_1"}));
        assert_eq!(p.query(), "?last_seq=7&epoch=e_1");
        p.note(&serde_json::json!({"type":"connection_established","epoch":"e_2"}));
        assert_eq!(p.query(), "", "a new epoch starts over");
        assert_eq!(p.events, 1);
    }
}
