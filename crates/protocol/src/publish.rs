//! Bodies of the publish API (`POST /v1/events`): what a publisher sends, what it gets back.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::codec::{self, DecodeError, Limits, from_value_at, require};
use crate::direct::{DataSeed, Key, Quick, Span, TypeName};
use crate::event::{Event, EventData, EventType};
use crate::ids::{EventId, RunId, Seq, ThreadId, Timestamp, UserId};
use crate::json::{push_str, push_u64};

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
        let text = codec::check_text(bytes, limits)?;
        // The quick reader counts nesting itself: a body it reads passes the depth check.
        if let Some(body) = Self::decode_quick(text, max_batch, limits.max_depth) {
            return Ok(body);
        }
        codec::check_depth(text.as_bytes(), limits.max_depth)?;
        // The one pass straight into typed events holds for every body it accepts; a body
        // it refuses is decoded again through a `Value` tree, whose errors name the field.
        match Self::decode_direct(text, max_batch) {
            Some(body) => Ok(body),
            None => Self::decode_via_value(text, max_batch),
        }
    }

    /// The one-pass decoding by the quick reader ([`Quick`]), which reads the common
    /// case (no floats, no surrogate escapes, at most `max_depth` levels deep; `data`
    /// before `type` is kept as text until the type is known): `None` for anything
    /// it does not accept, which is at least every body [`PublishBody::decode_direct`]
    /// refuses.
    fn decode_quick(text: &str, max_batch: usize, max_depth: usize) -> Option<Self> {
        let mut de = Quick::new(text, max_depth);
        let body =
            de::Deserializer::deserialize_any(&mut de, BodyVisitor::<AsSpan>::new(max_batch))
                .ok()?;
        de.end().ok()?;
        Some(body)
    }

    /// The one-pass decoding: `None` for anything it does not accept, which is at least
    /// every body [`PublishBody::decode_via_value`] refuses.
    fn decode_direct(text: &str, max_batch: usize) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let body =
            de::Deserializer::deserialize_any(&mut de, BodyVisitor::<AsText>::new(max_batch))
                .ok()?;
        de.end().ok()?;
        Some(body)
    }

    /// The decoding through a [`Value`] tree, which names the field and the reason of
    /// every error.
    fn decode_via_value(text: &str, max_batch: usize) -> Result<Self, DecodeError> {
        match codec::parse_checked(text)? {
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

/// How a request keeps its `data` when `data` comes before `type` (which says how to
/// decode it).
trait HoldData<'de> {
    /// What is kept.
    type Held;

    /// Reads the value of `data`, to decode once the type is known.
    fn hold<A: MapAccess<'de>>(map: &mut A) -> Result<Self::Held, A::Error>;

    /// Decodes what was kept as the `data` of a `ty` event.
    fn decode<E: de::Error>(held: Self::Held, ty: EventType) -> Result<EventData, E>;
}

/// Keeps `data` as its text (serde_json's `RawValue`), read again once the type is known.
struct AsText;

impl<'de> HoldData<'de> for AsText {
    type Held = &'de RawValue;

    fn hold<A: MapAccess<'de>>(map: &mut A) -> Result<&'de RawValue, A::Error> {
        map.next_value()
    }

    fn decode<E: de::Error>(raw: &'de RawValue, ty: EventType) -> Result<EventData, E> {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        DataSeed(ty).deserialize(&mut de).map_err(E::custom)
    }
}

/// Keeps `data` as the text [`Quick`] checked it to be, read again by [`Quick`] once the
/// type is known.
struct AsSpan;

impl<'de> HoldData<'de> for AsSpan {
    type Held = &'de str;

    fn hold<A: MapAccess<'de>>(map: &mut A) -> Result<&'de str, A::Error> {
        map.next_value::<Span<'de>>().map(|span| span.0)
    }

    fn decode<E: de::Error>(text: &'de str, ty: EventType) -> Result<EventData, E> {
        // The span was read within the body's nesting bound, so it is within it alone.
        let mut de = Quick::new(text, usize::MAX);
        let data = DataSeed(ty).deserialize(&mut de).map_err(E::custom)?;
        de.end().map_err(E::custom)?;
        Ok(data)
    }
}

/// A publish body in one pass: an object, or a non-empty array of at most `max_batch`.
struct BodyVisitor<H> {
    max_batch: usize,
    hold: PhantomData<H>,
}

impl<H> BodyVisitor<H> {
    fn new(max_batch: usize) -> Self {
        BodyVisitor {
            max_batch,
            hold: PhantomData,
        }
    }
}

impl<'de, H: HoldData<'de>> Visitor<'de> for BodyVisitor<H> {
    type Value = PublishBody;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PublishBody, A::Error> {
        RequestVisitor::<H>(PhantomData)
            .visit_map(map)
            .map(PublishBody::One)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PublishBody, A::Error> {
        let mut requests = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max_batch));
        while let Some(request) = seq.next_element_seed(RequestSeed::<H>(PhantomData))? {
            if requests.len() == self.max_batch {
                return Err(de::Error::custom("too many events"));
            }
            requests.push(request);
        }
        if requests.is_empty() {
            return Err(de::Error::custom("no event"));
        }
        Ok(PublishBody::Batch(requests))
    }
}

struct RequestSeed<H>(PhantomData<H>);

impl<'de, H: HoldData<'de>> DeserializeSeed<'de> for RequestSeed<H> {
    type Value = PublishRequest;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<PublishRequest, D::Error> {
        d.deserialize_map(RequestVisitor::<H>(PhantomData))
    }
}

/// One publish request in one pass. `data` is decoded as it is read when `type` came
/// before it (as every client here writes it), else kept (`H`) until `type` is known.
struct RequestVisitor<H>(PhantomData<H>);

impl<'de, H: HoldData<'de>> Visitor<'de> for RequestVisitor<H> {
    type Value = PublishRequest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PublishRequest, A::Error> {
        fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
            if slot.is_some() {
                return Err(E::custom("duplicate key"));
            }
            *slot = Some(value);
            Ok(())
        }
        let mut user_id: Option<UserId> = None;
        let mut ty: Option<EventType> = None;
        let mut event_id: Option<Option<EventId>> = None;
        let mut thread_id: Option<Option<ThreadId>> = None;
        let mut run_id: Option<Option<RunId>> = None;
        let mut data: Option<EventData> = None;
        let mut held: Option<H::Held> = None;
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "user_id" => once(&mut user_id, map.next_value()?)?,
                "type" => once(&mut ty, map.next_value::<TypeName>()?.0)?,
                "event_id" => once(&mut event_id, map.next_value()?)?,
                "thread_id" => once(&mut thread_id, map.next_value()?)?,
                "run_id" => once(&mut run_id, map.next_value()?)?,
                "data" => {
                    if data.is_some() || held.is_some() {
                        return Err(de::Error::custom("duplicate key"));
                    }
                    match ty {
                        Some(ty) => data = Some(map.next_value_seed(DataSeed(ty))?),
                        None => held = Some(H::hold(&mut map)?),
                    }
                }
                _ => return Err(de::Error::custom("unknown field")),
            }
        }
        let ty = ty.ok_or_else(|| de::Error::custom("no type"))?;
        let data = match (data, held) {
            (Some(data), _) => data,
            (None, Some(held)) => H::decode(held, ty)?,
            (None, None) => DataSeed(ty).absent()?,
        };
        let event = Event {
            thread_id: thread_id.flatten(),
            run_id: run_id.flatten(),
            data,
        };
        event.validate().map_err(de::Error::custom)?;
        Ok(PublishRequest {
            user_id: user_id.ok_or_else(|| de::Error::custom("no user_id"))?,
            event_id: event_id.flatten(),
            event,
        })
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

impl PublishResponse {
    /// The answer as JSON: the same bytes as serde_json writes for it, written straight
    /// into one buffer sized up front (it runs for every publish, and holds a result per
    /// event).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let size = self
            .results
            .iter()
            .map(|r| {
                64 + r.event_id.as_str().len() + r.receipt.as_ref().map_or(0, |p| p.len() + 12)
            })
            .sum::<usize>();
        let mut out = ResultsWriter::with_capacity(size);
        for r in &self.results {
            match &r.receipt {
                Some(receipt) => {
                    out.push_with_receipt(r.seq, &r.event_id, r.ts, |o| push_str(o, receipt));
                }
                None => out.push(r.seq, &r.event_id, r.ts),
            }
        }
        out.finish()
    }
}

/// Writes the JSON of a [`PublishResponse`] result by result, from the parts of each
/// result, so that an answer can be written without building the response first: the same
/// bytes as [`PublishResponse::to_json_bytes`] writes for the same results.
#[derive(Debug)]
pub struct ResultsWriter {
    out: Vec<u8>,
    results: usize,
    /// The events of a body share a few accept times: the digits of the last one written
    /// (the time and where they are in `out`) are copied rather than written again.
    last_ts: Option<(u64, std::ops::Range<usize>)>,
}

impl ResultsWriter {
    /// An answer with room for `bytes` bytes of results.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut out = Vec::with_capacity(16 + bytes);
        out.extend_from_slice(b"{\"results\":[");
        ResultsWriter {
            out,
            results: 0,
            last_ts: None,
        }
    }

    /// Appends a result without a receipt.
    pub fn push(&mut self, seq: Seq, event_id: &EventId, ts: Timestamp) {
        self.open(seq, event_id, ts);
        self.out.push(b'}');
    }

    /// Appends a result whose receipt `receipt` writes, as a JSON string (quotes and
    /// escapes included).
    pub fn push_with_receipt(
        &mut self,
        seq: Seq,
        event_id: &EventId,
        ts: Timestamp,
        receipt: impl FnOnce(&mut Vec<u8>),
    ) {
        self.open(seq, event_id, ts);
        self.out.extend_from_slice(b",\"receipt\":");
        receipt(&mut self.out);
        self.out.push(b'}');
    }

    /// The answer's JSON.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"]}");
        self.out
    }

    fn open(&mut self, seq: Seq, event_id: &EventId, ts: Timestamp) {
        let out = &mut self.out;
        // Each result's keys, with the separators around them, written as one literal.
        let open: &[u8] = if self.results > 0 {
            b",{\"seq\":"
        } else {
            b"{\"seq\":"
        };
        self.results += 1;
        out.extend_from_slice(open);
        push_u64(out, seq.get());
        out.extend_from_slice(b",\"event_id\":");
        push_str(out, event_id.as_str());
        out.extend_from_slice(b",\"ts\":");
        let ts = ts.as_millis();
        match &self.last_ts {
            Some((last, digits)) if *last == ts => out.extend_from_within(digits.clone()),
            _ => {
                let start = out.len();
                push_u64(out, ts);
                self.last_ts = Some((ts, start..out.len()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A JSON value for a field: the right type, a wrong one, null, or an object that
    /// repeats a key.
    fn value() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            r#""a""#,
            r#""tc1""#,
            r#""x\u0001""#,
            r#""agent_thinking""#,
            r#""custom""#,
            r#""u\u005fid""#,
            "3",
            "-1",
            "1.5",
            "0",
            "null",
            "true",
            "false",
            "[]",
            r#"[1,{"k":[]}]"#,
            r#"{"k":1}"#,
            r#"{"k":1,"k":2}"#,
            r#"{"a":{"k":1,"k":1}}"#,
            // Numbers at the edges of what is read as an integer, and what is not.
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "-0",
            "01",
            "1e3",
            "1E3",
            "0.5",
            "-",
            "[1,]",
            r#"{"k":1,}"#,
            "nul",
            "truex",
            // Every escape, and escapes serde_json reads but the quick reader leaves to it.
            r#""\"\\\/\b\f\n\r\t\u00e9\u00E9\u0000\u001f\u007f\u2028""#,
            r#""\ud83e\udd80""#,
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u+123""#,
            "\"tab\\tinside\"",
            "\"raw\ttab\"",
            "\"é用🦀\"",
        ])
        .prop_map(str::to_owned)
    }

    /// A JSON string literal, each character written in one of the ways JSON allows: as
    /// itself (where it may be), as a short escape, as `\u` with lower- or uppercase hex,
    /// or as a surrogate pair.
    fn any_string_value() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            3 => prop::char::range('a', 'z'),
            2 => prop::sample::select(vec![
                '"', '\\', '/', '\u{0}', '\u{8}', '\u{c}', '\n', '\r', '\t', '\u{1f}', ' ',
                '\u{7f}', '\u{80}', '\u{9f}', 'é', '用', '🦀', '\u{2028}', '\u{fffd}',
            ]),
            1 => any::<char>(),
        ];
        prop::collection::vec((c, 0u8..5), 0..24).prop_map(|cs| {
            let mut out = String::from("\"");
            for (c, how) in cs {
                let mut units = [0u16; 2];
                let units = c.encode_utf16(&mut units);
                let short = match c {
                    '"' => Some("\\\""),
                    '\\' => Some("\\\\"),
                    '/' => Some("\\/"),
                    '\u{8}' => Some("\\b"),
                    '\u{c}' => Some("\\f"),
                    '\n' => Some("\\n"),
                    '\r' => Some("\\r"),
                    '\t' => Some("\\t"),
                    _ => None,
                };
                match how {
                    0 if !matches!(c, '"' | '\\' | '\u{0}'..='\u{1f}') => out.push(c),
                    1 if short.is_some() => out.push_str(short.unwrap_or_default()),
                    1 | 2 => units
                        .iter()
                        .for_each(|u| out.push_str(&format!("\\u{u:04x}"))),
                    _ => units
                        .iter()
                        .for_each(|u| out.push_str(&format!("\\u{u:04X}"))),
                }
            }
            out.push('"');
            out
        })
    }

    const DATA_KEYS: [&str; 21] = [
        "agent_name",
        "stall_timeout_ms",
        "thought",
        "step",
        "tool_call_id",
        "tool_name",
        "arguments",
        "result",
        "is_error",
        "duration_ms",
        "message",
        "code",
        "retryable",
        "message_id",
        "delta",
        "text",
        "name",
        "value",
        "extra",
        "pad",
        "th\\u006fught",
    ];

    const TOP_KEYS: [&str; 8] = [
        "user_id",
        "type",
        "thread_id",
        "run_id",
        "event_id",
        "data",
        "other",
        "typ\\u0065",
    ];

    /// A valid event of each type: `type` and the fields of `data`.
    fn valid_event() -> impl Strategy<Value = (&'static str, Vec<(&'static str, &'static str)>)> {
        prop::sample::select(vec![
            (
                "agent_started",
                vec![
                    ("agent_name", r#""a""#),
                    ("stall_timeout_ms", "null"),
                    ("k", "[1,2.5,-3]"),
                ],
            ),
            (
                "agent_thinking",
                vec![("thought", r#""t\n\u00e9""#), ("step", "2")],
            ),
            (
                "tool_executing",
                vec![
                    ("tool_call_id", r#""tc1""#),
                    ("tool_name", r#""n""#),
                    ("arguments", r#"{"q":{"r":[null]}}"#),
                ],
            ),
            (
                "tool_completed",
                vec![
                    ("tool_call_id", r#""tc1""#),
                    ("tool_name", r#""n""#),
                    ("result", r#""r""#),
                    ("is_error", "true"),
                    ("duration_ms", "3"),
                ],
            ),
            (
                "agent_completed",
                vec![("result", r#"{"x":1}"#), ("pad", r#""p""#)],
            ),
            (
                "agent_error",
                vec![
                    ("message", r#""m""#),
                    ("code", r#""c""#),
                    ("retryable", "false"),
                ],
            ),
            (
                "message_delta",
                vec![("message_id", r#""m""#), ("delta", r#""d""#)],
            ),
            ("message_completed", vec![("message_id", r#""m""#)]),
            ("custom", vec![("name", r#""n""#), ("value", "[{}]")]),
        ])
    }

    /// One change to a valid request, which may make it invalid.
    #[derive(Debug, Clone)]
    enum Change {
        /// Adds a top-level field (maybe one already there).
        Top(&'static str, String),
        /// Adds a field to `data` (maybe one already there).
        Data(&'static str, String),
        /// Removes the top-level field at this index.
        DropTop(prop::sample::Index),
        /// Removes the `data` field at this index.
        DropData(prop::sample::Index),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (prop::sample::select(TOP_KEYS.to_vec()), value()).prop_map(|(k, v)| Change::Top(k, v)),
            (prop::sample::select(DATA_KEYS.to_vec()), value())
                .prop_map(|(k, v)| Change::Data(k, v)),
            any::<prop::sample::Index>().prop_map(Change::DropTop),
            any::<prop::sample::Index>().prop_map(Change::DropData),
        ]
    }

    /// A publish request: a valid one with up to three changes, its fields in any order.
    fn request() -> impl Strategy<Value = String> {
        request_with(0..3)
    }

    /// A valid publish request, its fields in any order.
    fn valid_request() -> impl Strategy<Value = String> {
        request_with(0..1)
    }

    fn request_with(changes: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        (
            valid_event(),
            prop::collection::vec(change(), changes),
            any::<prop::sample::Index>(),
        )
            .prop_map(|((ty, data), changes, rotate)| {
                let mut top: Vec<(&str, String)> = vec![
                    ("user_id", r#""u1""#.into()),
                    ("type", format!(r#""{ty}""#)),
                    ("thread_id", r#""t1""#.into()),
                    ("run_id", r#""r1""#.into()),
                    ("event_id", "null".into()),
                ];
                let mut data: Vec<(&str, String)> =
                    data.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
                let mut data_as_value = None;
                for c in changes {
                    match c {
                        Change::Top("data", v) => data_as_value = Some(v),
                        Change::Top(k, v) => top.push((k, v)),
                        Change::Data(k, v) => data.push((k, v)),
                        Change::DropTop(i) => {
                            top.remove(i.index(top.len()));
                        }
                        Change::DropData(i) if !data.is_empty() => {
                            data.remove(i.index(data.len()));
                        }
                        Change::DropData(_) => {}
                    }
                }
                let data = data
                    .iter()
                    .map(|(k, v)| format!(r#""{k}":{v}"#))
                    .collect::<Vec<_>>()
                    .join(",");
                top.push(("data", data_as_value.unwrap_or(format!("{{{data}}}"))));
                let n = top.len();
                top.rotate_left(rotate.index(n));
                let fields: Vec<String> =
                    top.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
                format!("{{{}}}", fields.join(","))
            })
    }

    fn body() -> impl Strategy<Value = String> {
        let body = prop_oneof![
            4 => request(),
            4 => prop::collection::vec(request(), 0..5).prop_map(|rs| format!("[{}]", rs.join(","))),
            1 => value(),
        ];
        // Whitespace between the tokens (no string generated here holds `,` or `:`).
        (body, any::<bool>()).prop_map(|(b, spaced)| {
            if spaced {
                format!(" {} \n", b.replace(',', " ,\t").replace(':', "\r: "))
            } else {
                b
            }
        })
    }

    /// A valid `agent_thinking` request whose thought and extra field are any strings.
    fn request_with_strings() -> impl Strategy<Value = String> {
        (any_string_value(), any_string_value(), any_string_value()).prop_map(|(t, k, v)| {
            format!(
                r#"{{"user_id":"u1","type":"agent_thinking","run_id":"r1","data":{{"thought":{t},{k}:{v},"step":1}}}}"#
            )
        })
    }

    /// `decode` as it was before the quick reader: every check of the input first, then
    /// the one pass, then the `Value` tree.
    fn decode_reference(
        bytes: &[u8],
        limits: Limits,
        max_batch: usize,
    ) -> Result<PublishBody, DecodeError> {
        let text = codec::check_input(bytes, limits)?;
        match PublishBody::decode_direct(text, max_batch) {
            Some(body) => Ok(body),
            None => PublishBody::decode_via_value(text, max_batch),
        }
    }

    /// The quick reader accepts only what the one pass accepts, and decodes it to the
    /// same requests.
    fn quick_agrees(text: &str) -> Result<(), TestCaseError> {
        let quick = PublishBody::decode_quick(text, 3, 64);
        if quick.is_some() {
            prop_assert_eq!(&quick, &PublishBody::decode_direct(text, 3), "{}", text);
        }
        Ok(())
    }

    proptest! {
        /// Results that repeat an accept time, next to each other or not, with and without
        /// receipts, are written as serde_json writes them.
        #[test]
        fn answers_with_repeated_times_are_what_serde_json_writes(
            items in proptest::collection::vec(
                (
                    any::<u64>(),
                    prop::sample::select(vec![0u64, 7, 1_700_000_000_000, u64::MAX]),
                    any::<bool>(),
                ),
                0..12,
            ),
        ) {
            let results = items
                .into_iter()
                .map(|(seq, ts, receipt)| PublishAccepted {
                    seq: Seq(seq),
                    event_id: EventId::generate(),
                    ts: Timestamp(ts),
                    receipt: receipt.then(|| "/v1/users/u%221/receipts".to_owned()),
                })
                .collect();
            let response = PublishResponse { results };
            prop_assert_eq!(
                String::from_utf8(response.to_json_bytes()).expect("UTF-8"),
                serde_json::to_string(&response).expect("serializes")
            );
        }
    }

    #[test]
    fn the_load_generators_events_take_the_quick_path() {
        let text = r#"[{"user_id":"lgu7","type":"agent_thinking","thread_id":"t7","run_id":"r3","data":{"thought":"xxxx","step":4,"sent_at_us":1796039396123456,"u":7,"k":42}},{"user_id":"lgu8","type":"agent_completed","thread_id":"t8","run_id":"r3","data":{"result":"xx","duration_ms":40,"sent_at_us":1,"u":8,"k":10}}]"#;
        let quick = PublishBody::decode_quick(text, 50, 64).expect("quick path");
        assert_eq!(Ok(quick), PublishBody::decode_via_value(text, 50));
    }

    #[test]
    fn nesting_is_bounded_as_before() {
        let nested = |n: usize| {
            format!(
                r#"{{"user_id":"u","type":"custom","data":{{"name":"n","value":{}1{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        for limit in [0, 1, 2, 3, 5, 8, 64, 200] {
            for n in [0, 1, 2, 3, 4, 6, 7, 62, 63, 99, 100, 126, 127, 128, 199] {
                let limits = Limits {
                    max_bytes: 4096,
                    max_depth: limit,
                };
                let text = nested(n);
                assert_eq!(
                    PublishBody::decode(text.as_bytes(), limits, 3),
                    decode_reference(text.as_bytes(), limits, 3),
                    "limit {limit}, nesting {n}"
                );
            }
        }
    }

    proptest! {
        /// The one pass accepts exactly what the decoding through a `Value` tree accepts,
        /// and decodes it to the same requests.
        #[test]
        fn the_one_pass_decodes_what_the_value_tree_decodes(text in body()) {
            let direct = PublishBody::decode_direct(&text, 3);
            let via_value = PublishBody::decode_via_value(&text, 3);
            match (&direct, &via_value) {
                (Some(d), Ok(v)) => prop_assert_eq!(d, v),
                (None, Err(_)) => {}
                _ => prop_assert!(false, "{text}: one pass {direct:?}, value tree {via_value:?}"),
            }
        }

        #[test]
        fn valid_requests_take_the_one_pass(text in valid_request()) {
            let direct = PublishBody::decode_direct(&text, 3);
            prop_assert!(direct.is_some(), "{}", text);
            prop_assert_eq!(direct, PublishBody::decode_via_value(&text, 3).ok());
        }

        #[test]
        fn the_quick_reader_decodes_what_the_one_pass_decodes(text in body()) {
            quick_agrees(&text)?;
        }

        #[test]
        fn the_quick_reader_reads_strings_as_serde_json_does(text in request_with_strings()) {
            quick_agrees(&text)?;
            prop_assert!(PublishBody::decode_direct(&text, 3).is_some(), "{}", text);
        }

        /// Valid requests without a float (or a surrogate escape, which none has) take the
        /// quick path, whether `type` comes before `data` or after it.
        #[test]
        fn valid_requests_take_the_quick_path(text in valid_request()) {
            let quick = PublishBody::decode_quick(&text, 3, 64);
            prop_assert_eq!(quick.is_some(), !text.contains('.'), "{}", text);
            quick_agrees(&text)?;
        }

        /// `decode` answers as it did before the quick reader, errors included, under any
        /// depth limit.
        #[test]
        fn decode_answers_as_before(
            text in prop_oneof![body(), request_with_strings()],
            max_depth in 0usize..6,
            max_batch in 1usize..4,
        ) {
            let limits = Limits { max_bytes: 4096, max_depth };
            prop_assert_eq!(
                PublishBody::decode(text.as_bytes(), limits, max_batch),
                decode_reference(text.as_bytes(), limits, max_batch)
            );
        }
    }
}
