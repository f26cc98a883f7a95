//! The frames of a connection, in both directions: one JSON object per text frame, its
//! kind in the `type` field.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::codec::{self, DecodeError, Limits, from_object, take_type};
use crate::event::{EventEnvelope, EventType};
use crate::ids::{ConnectionId, Epoch, Seq, UserId};

/// First frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEstablished {
    /// This connection's id.
    pub connection_id: ConnectionId,
    /// The authenticated user.
    pub user_id: UserId,
    /// The current incarnation of the user's stream; send it back when resuming.
    pub epoch: Epoch,
    /// How often the server pings; a client may ping as often to detect a dead link.
    pub heartbeat_interval_ms: u64,
    /// The user's newest `seq` at connect.
    pub last_seq: Seq,
    /// Whether the requested resume point was served from history. `false` when the client
    /// asked for none, or when a `replay_gap` follows.
    pub resumed: bool,
}

/// Events the client missed that history no longer holds: `from_seq..=to_seq` are gone,
/// so the client should refetch its state. When the whole stream was reset (another epoch),
/// the range covers what the client had claimed to have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayGap {
    /// First missing `seq`.
    pub from_seq: Seq,
    /// Last missing `seq`.
    pub to_seq: Seq,
}

/// What an `error` frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame was malformed: not JSON, wrong shape, a bad field.
    BadRequest,
    /// The frame's `type` is not one a client may send.
    UnknownType,
    /// The frame was larger than the server accepts.
    TooLarge,
    /// `resume` was sent after the first frame.
    ResumeNotFirst,
    /// The token in `refresh_token` was refused.
    InvalidToken,
    /// The client sends faster than allowed.
    RateLimited,
    /// The server failed; the connection may still work.
    Internal,
    /// A code this version of the protocol does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

/// An `error` frame: the server refused something the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What kind of error.
    pub code: ErrorCode,
    /// A human-readable explanation, naming the field where there is one.
    pub message: String,
}

/// Server → client frames.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// `connection_established`: sent first, once.
    ConnectionEstablished(ConnectionEstablished),
    /// An agent event of the user.
    Event(EventEnvelope),
    /// `replay_gap`: events the client missed are no longer in history.
    ReplayGap(ReplayGap),
    /// `pong`: answers `ping`.
    Pong,
    /// `error`: the server refused what the client sent.
    Error(ErrorFrame),
}

impl ServerFrame {
    /// The `type` this frame carries on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::ConnectionEstablished(_) => "connection_established",
            ServerFrame::Event(e) => e.event.event_type().as_str(),
            ServerFrame::ReplayGap(_) => "replay_gap",
            ServerFrame::Pong => "pong",
            ServerFrame::Error(_) => "error",
        }
    }

    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        crate::to_json(self)
    }

    /// Decodes a frame a server sent. Unknown fields are ignored, so a client keeps
    /// working when a newer server adds some.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the field and the reason.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let limits = Limits {
            max_bytes: usize::MAX,
            max_depth: codec::MAX_EVENT_DEPTH + 1,
        };
        let mut obj = codec::parse_object(bytes, limits)?;
        let type_name = take_type(&mut obj)?;
        Ok(match type_name.as_str() {
            "connection_established" => ServerFrame::ConnectionEstablished(from_object(obj)?),
            "replay_gap" => ServerFrame::ReplayGap(from_object(obj)?),
            "pong" => ServerFrame::Pong,
            "error" => ServerFrame::Error(from_object(obj)?),
            other => {
                if other.parse::<EventType>().is_err() {
                    return Err(DecodeError::UnknownType { type_name });
                }
                obj.insert("type".into(), type_name.into());
                ServerFrame::Event(EventEnvelope::take_fields(&mut obj)?)
            }
        })
    }
}

/// A body written after its `type`.
#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

impl Serialize for ServerFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ty = self.type_name();
        match self {
            ServerFrame::ConnectionEstablished(b) => Tagged { ty, body: b }.serialize(s),
            ServerFrame::Event(e) => e.serialize(s),
            ServerFrame::ReplayGap(b) => Tagged { ty, body: b }.serialize(s),
            ServerFrame::Pong => Tagged {
                ty,
                body: &Empty {},
            }
            .serialize(s),
            ServerFrame::Error(b) => Tagged { ty, body: b }.serialize(s),
        }
    }
}

/// Client → server frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `ping`: the server answers `pong`.
    Ping,
    /// `ack`: the client has processed every event up to `seq`.
    Ack {
        /// The newest `seq` the client has processed.
        seq: Seq,
    },
    /// `resume`: only as the first frame, instead of the `last_seq`/`epoch` query string.
    Resume {
        /// The newest `seq` the client has seen.
        last_seq: Seq,
        /// The epoch that `last_seq` belongs to.
        epoch: Epoch,
    },
    /// `refresh_token`: extends the connection past its token's expiry.
    RefreshToken {
        /// A fresh token for the same user.
        token: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    seq: Seq,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    last_seq: Seq,
    epoch: Epoch,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshTokenBody {
    token: String,
}

impl ClientFrame {
    /// The `type` this frame carries on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Ping => "ping",
            ClientFrame::Ack { .. } => "ack",
            ClientFrame::Resume { .. } => "resume",
            ClientFrame::RefreshToken { .. } => "refresh_token",
        }
    }

    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        crate::to_json(self)
    }

    /// Decodes a frame a client sent, within [`Limits::CLIENT_FRAME`]. Strict: unknown
    /// types and unknown fields are errors.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the field and the reason.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut obj = codec::parse_object(bytes, Limits::CLIENT_FRAME)?;
        let type_name = take_type(&mut obj)?;
        Ok(match type_name.as_str() {
            "ping" => {
                from_object::<Empty>(obj)?;
                ClientFrame::Ping
            }
            "ack" => {
                let b: AckBody = from_object(obj)?;
                ClientFrame::Ack { seq: b.seq }
            }
            "resume" => {
                let b: ResumeBody = from_object(obj)?;
                ClientFrame::Resume {
                    last_seq: b.last_seq,
                    epoch: b.epoch,
                }
            }
            "refresh_token" => {
                let b: RefreshTokenBody = from_object(obj)?;
                if b.token.is_empty() {
                    return Err(DecodeError::Invalid {
                        field: "token".into(),
                        reason: "must not be empty".into(),
                    });
                }
                ClientFrame::RefreshToken { token: b.token }
            }
            _ => return Err(DecodeError::UnknownType { type_name }),
        })
    }
}

impl Serialize for ClientFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", self.type_name())?;
        match self {
            ClientFrame::Ping => {}
            ClientFrame::Ack { seq } => map.serialize_entry("seq", seq)?,
            ClientFrame::Resume { last_seq, epoch } => {
                map.serialize_entry("last_seq", last_seq)?;
                map.serialize_entry("epoch", epoch)?;
            }
            ClientFrame::RefreshToken { token } => map.serialize_entry("token", token)?,
        }
        map.end()
    }
}
