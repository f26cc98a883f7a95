//! Bodies of the publish API (`POST /v1/events`): what a publisher sends, what it gets back.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::codec::{self, DecodeError, Limits, from_value_at, require};
use crate::event::Event;
use crate::ids::{EventId, Seq, Timestamp, UserId};

/// One event to publish, for one user:
/// `{"user_id","type","thread_id","run_id","event_id"?,"data"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    /// Whose stream the event goes to.
    pub user_id: UserId,
    /// The publisher's own id for the event. Publishing the same id again is answered with
    /// the first acceptance, which makes retries safe.
    pub event_id: Option<EventId>,
    /// The event.
    pub event: Event,
}

impl Serialize for PublishRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("user_id", &self.user_id)?;
        map.serialize_entry("type", self.event.event_type().as_str())?;
        if let Some(id) = &self.event_id {
            map.serialize_entry("event_id", id)?;
        }
        self.event.serialize_body(&mut map)?;
        map.end()
    }
}

impl PublishRequest {
    fn from_object(mut obj: Map<String, Value>) -> Result<Self, DecodeError> {
        let user_id = from_value_at("user_id", require(&mut obj, "user_id")?)?;
        let event_id = match obj.remove("event_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(from_value_at("event_id", v)?),
        };
        let event = Event::take_fields(&mut obj)?;
        if let Some(field) = obj.keys().next() {
            return Err(DecodeError::Invalid {
                field: field.clone(),
                reason: "unknown field".into(),
            });
        }
        Ok(PublishRequest {
            user_id,
            event_id,
            event,
        })
    }
}

/// A publish body: one event, or an array of them.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishBody {
    /// A single object.
    One(PublishRequest),
    /// An array of objects, answered in the same order.
    Batch(Vec<PublishRequest>),
}

impl PublishBody {
    /// Decodes a publish body within `limits`, accepting at most `max_batch` events.
    /// Errors inside a batch name the item: `[2].data.tool_call_id`.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the field and the reason; [`DecodeError::TooLarge`] when the
    /// body or the batch is too large.
    pub fn decode(bytes: &[u8], limits: Limits, max_batch: usize) -> Result<Self, DecodeError> {
        match codec::parse_value(bytes, limits)? {
            Value::Object(obj) => Ok(PublishBody::One(PublishRequest::from_object(obj)?)),
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(DecodeError::WrongShape {
                        expected: "at least one event",
                    });
                }
                if items.len() > max_batch {
                    return Err(DecodeError::TooLarge {
                        size: items.len(),
                        limit: max_batch,
                    });
                }
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        match item {
                            Value::Object(obj) => PublishRequest::from_object(obj),
                            _ => Err(DecodeError::Invalid {
                                field: String::new(),
                                reason: "expected a JSON object".into(),
                            }),
                        }
                        .map_err(|e| e.within(&format!("[{i}]")))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(PublishBody::Batch)
            }
            _ => Err(DecodeError::WrongShape {
                expected: "a JSON object or an array of objects",
            }),
        }
    }

    /// The events, in order.
    pub fn into_requests(self) -> Vec<PublishRequest> {
        match self {
            PublishBody::One(r) => vec![r],
            PublishBody::Batch(rs) => rs,
        }
    }
}

impl Serialize for PublishBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PublishBody::One(r) => r.serialize(s),
            PublishBody::Batch(rs) => rs.serialize(s),
        }
    }
}

/// Where the broker put one published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishAccepted {
    /// Its position in the user's stream.
    pub seq: Seq,
    /// Its id (the publisher's, or the one the broker assigned).
    pub event_id: EventId,
    /// When it was accepted.
    pub ts: Timestamp,
    /// Where to ask whether it reached the user: the path of its run's receipt
    /// (`/v1/users/{user_id}/runs/{run_id}`) for a run event, else of the user's receipt
    /// (`/v1/users/{user_id}/receipts`), each segment percent-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// The answer to a publish: one result per event, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// One entry per published event.
    pub results: Vec<PublishAccepted>,
}
