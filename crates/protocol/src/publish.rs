//! Bodies of the publish API (`POST /v1/events`): what a publisher sends, what it gets back.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::codec::{self, DecodeError, Limits, from_value_at, require};
use crate::direct::{
    DataSeed, Key, Quick, RawRequest, Span, TypeName, missing_defaults, once, seen_fields,
};
use crate::event::{Event, EventData, EventFacts, EventType};
use crate::ids::{EventId, RunId, Seq, ThreadId, Timestamp, UserId};
use crate::json::{Object, push_compact, push_str, push_u64};
use crate::run::RunStep;

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
        Self::decode_text(text, limits, max_batch)
    }

    /// [`PublishBody::decode`] of a text that passed [`codec::check_text`].
    fn decode_text(text: &str, limits: Limits, max_batch: usize) -> Result<Self, DecodeError> {
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

/// One published event, checked, with its `data` kept as the publisher wrote it: what the
/// publish API hands its broker. Built by [`PublishBody::decode_events`], or from a typed
/// event ([`PublishedEvent::new`]); its body is always valid JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent {
    user_id: UserId,
    event_id: Option<EventId>,
    facts: EventFacts,
    body: Vec<u8>,
}

impl PublishedEvent {
    /// `event` for `user_id`, checked ([`Event::validate`]) and serialized
    /// ([`Event::body_json`]).
    ///
    /// # Errors
    /// As [`Event::validate`].
    pub fn new(
        user_id: UserId,
        event_id: Option<EventId>,
        event: &Event,
    ) -> Result<Self, DecodeError> {
        event.validate()?;
        Ok(PublishedEvent {
            user_id,
            event_id,
            facts: event.facts(),
            body: event.body_json(),
        })
    }

    /// Whose stream it goes to.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The publisher's id for it, if it gave one.
    pub fn event_id(&self) -> Option<&EventId> {
        self.event_id.as_ref()
    }

    /// Its id, to set one where the publisher gave none.
    pub fn event_id_mut(&mut self) -> &mut Option<EventId> {
        &mut self.event_id
    }

    /// What a broker reads of it besides its body.
    pub fn facts(&self) -> &EventFacts {
        &self.facts
    }

    /// The body a broker stores, `{"thread_id"?,"run_id"?,"data"}` (see
    /// [`Event::body_json`]): `data` as the publisher wrote it, without the whitespace
    /// between its tokens, or `{}` when the publisher sent none. A typed event's `data`
    /// is written by [`Event::body_json`].
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Its parts: user, id, facts and body.
    pub fn into_parts(self) -> (UserId, Option<EventId>, EventFacts, Vec<u8>) {
        (self.user_id, self.event_id, self.facts, self.body)
    }

    /// An event whose `data` is the text `data` (a valid JSON object; `None`: sent
    /// without one) holding the typed fields `seen` (bit `i`: the `i`-th typed field of its
    /// type): the fields delivered with their default when absent are added after the
    /// others. `spaced`: whether the text may hold whitespace between its tokens, which
    /// is then removed; text known to hold none is copied as it is.
    fn with_data_text(
        user_id: UserId,
        event_id: Option<EventId>,
        facts: EventFacts,
        data: Option<&str>,
        spaced: bool,
        seen: u32,
    ) -> Self {
        let ids = facts.thread_id.as_ref().map_or(0, |t| t.as_str().len())
            + facts.run_id.as_ref().map_or(0, |r| r.as_str().len());
        let mut body = Vec::with_capacity(64 + ids + data.map_or(2, str::len));
        let mut obj = Object::open(&mut body);
        if let Some(t) = &facts.thread_id {
            obj.str("thread_id", t.as_str());
        }
        if let Some(r) = &facts.run_id {
            obj.str("run_id", r.as_str());
        }
        let out = obj.key("data");
        let start = out.len();
        match data {
            Some(text) if spaced => push_compact(out, text),
            Some(text) => out.extend_from_slice(text.as_bytes()),
            None => out.extend_from_slice(b"{}"),
        }
        let mut defaults = missing_defaults(facts.event_type, seen).peekable();
        if defaults.peek().is_some() {
            // Reopens the object: its closing brace goes after the added fields.
            out.pop();
            let mut empty = out.len() == start + 1;
            for (name, value) in defaults {
                if !std::mem::replace(&mut empty, false) {
                    out.push(b',');
                }
                push_str(out, name);
                out.push(b':');
                out.extend_from_slice(value.as_bytes());
            }
            out.push(b'}');
        }
        obj.close();
        PublishedEvent {
            user_id,
            event_id,
            facts,
            body,
        }
    }

    fn from_raw(raw: RawRequest<'_>) -> Self {
        let facts = EventFacts {
            event_type: raw.event_type,
            thread_id: raw.thread_id,
            run_id: raw.run_id,
            step: RunStep::for_type(raw.event_type, raw.facts.named),
            stall_timeout_ms: raw.facts.stall_timeout_ms,
        };
        Self::with_data_text(
            raw.user_id,
            raw.event_id,
            facts,
            raw.data,
            raw.spaced,
            raw.facts.seen,
        )
    }
}

/// The events of a publish body ([`PublishBody::decode_events`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvents {
    /// The events, in order.
    pub events: Vec<PublishedEvent>,
    /// Whether the body was an array (whose errors name the item).
    pub batch: bool,
}

impl PublishBody {
    /// Decodes a publish body as [`PublishBody::decode`] does — it accepts the same
    /// bodies, refuses the others with the same errors, and reads the same facts — but
    /// keeps each event's `data` as the publisher wrote it rather than building it: the
    /// common case is read in one pass that builds nothing of `data`; anything else is
    /// decoded into typed events, then its `data` taken from the text.
    ///
    /// # Errors
    /// As [`PublishBody::decode`].
    pub fn decode_events(
        bytes: &[u8],
        limits: Limits,
        max_batch: usize,
    ) -> Result<PublishedEvents, DecodeError> {
        let text = codec::check_text(bytes, limits)?;
        // The quick reader counts nesting itself: a body it reads passes the depth check.
        if let Some(events) = Self::events_quick(text, max_batch, limits.max_depth) {
            return Ok(events);
        }
        Self::events_slow(text, limits, max_batch)
    }

    /// The other way of [`PublishBody::decode_events`]: the typed decoding, then each
    /// event's `data` taken from the text.
    fn events_slow(
        text: &str,
        limits: Limits,
        max_batch: usize,
    ) -> Result<PublishedEvents, DecodeError> {
        let typed = Self::decode_text(text, limits, max_batch)?;
        let batch = matches!(typed, PublishBody::Batch(_));
        let requests = typed.into_requests();
        let data = data_texts(text, batch)
            .ok()
            .filter(|data| data.len() == requests.len());
        let events = match data {
            Some(data) => requests
                .into_iter()
                .zip(data)
                .map(|(r, (data, keys))| {
                    let facts = r.event.facts();
                    let seen = seen_fields(facts.event_type, keys.iter().map(String::as_str));
                    PublishedEvent::with_data_text(r.user_id, r.event_id, facts, data, true, seen)
                })
                .collect(),
            // Not met by a body the typed decoding accepts; were it met, its events would
            // be written from their typed values rather than lost.
            None => requests
                .into_iter()
                .map(|r| PublishedEvent {
                    facts: r.event.facts(),
                    body: r.event.body_json(),
                    user_id: r.user_id,
                    event_id: r.event_id,
                })
                .collect(),
        };
        Ok(PublishedEvents { events, batch })
    }

    /// The one pass of [`PublishBody::decode_events`] ([`Quick::raw_body`]): `None` for
    /// anything it does not accept, which is at least every body
    /// [`PublishBody::decode`] refuses.
    fn events_quick(text: &str, max_batch: usize, max_depth: usize) -> Option<PublishedEvents> {
        let (raws, batch) = Quick::new(text, max_depth).raw_body(max_batch).ok()?;
        // Facts checked as `Event::validate` checks them; the slow path names the field.
        let events = raws
            .into_iter()
            .map(|raw| {
                let event = PublishedEvent::from_raw(raw);
                event.facts.validate().ok().map(|()| event)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(PublishedEvents { events, batch })
    }
}

/// The text of a request's `data` (`None`: it has none), and its keys.
type DataText<'a> = (Option<&'a str>, Vec<String>);

/// The text of each request's `data` in a publish body the typed decoding accepted (so
/// each request is an object with at most one `data`, itself an object), and its keys, in
/// order.
fn data_texts(text: &str, batch: bool) -> Result<Vec<DataText<'_>>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let items = match batch {
        true => serde_json::from_str::<Vec<Data<'_>>>(text)?,
        false => vec![serde_json::from_str::<Data<'_>>(text)?],
    };
    items
        .into_iter()
        .map(|d| {
            let keys = match d.data {
                Some(raw) => serde_json::from_str::<
                    std::collections::BTreeMap<String, de::IgnoredAny>,
                >(raw.get())?
                .into_keys()
                .collect(),
                None => Vec::new(),
            };
            Ok((d.data.map(RawValue::get), keys))
        })
        .collect()
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

    /// The value of `data` in a stored body.
    fn stored_data(body: &[u8]) -> Value {
        let mut obj: Map<String, Value> = serde_json::from_slice(body).expect("a JSON object");
        obj.remove("data").expect("data")
    }

    /// `decode_events` accepts what `decode` accepts, refuses the rest with the same
    /// error, and reads the same events: the same facts, and `data` the same value as the
    /// publisher wrote (which decodes to the same typed payload).
    fn events_agree(text: &str, limits: Limits, max_batch: usize) -> Result<(), TestCaseError> {
        let typed = PublishBody::decode(text.as_bytes(), limits, max_batch);
        let events = PublishBody::decode_events(text.as_bytes(), limits, max_batch);
        let (typed, events) = match (typed, events) {
            (Ok(t), Ok(e)) => (t, e),
            (Err(t), Err(e)) => {
                prop_assert_eq!(t, e, "{}", text);
                return Ok(());
            }
            (t, e) => {
                prop_assert!(false, "{text}: typed {t:?}, events {e:?}");
                unreachable!()
            }
        };
        prop_assert_eq!(events.batch, matches!(typed, PublishBody::Batch(_)));
        // What the publisher wrote as each request's `data`.
        let written: Vec<Value> = match serde_json::from_str::<Value>(text).expect("JSON") {
            Value::Array(items) => items,
            one => vec![one],
        }
        .into_iter()
        .map(|mut r| r.as_object_mut().and_then(|o| o.remove("data")))
        .map(|d| d.unwrap_or_else(|| Value::Object(Map::new())))
        .collect();
        let typed = typed.into_requests();
        prop_assert_eq!(typed.len(), events.events.len());
        for ((t, e), written) in typed.iter().zip(&events.events).zip(written) {
            prop_assert_eq!(&t.user_id, e.user_id());
            prop_assert_eq!(t.event_id.as_ref(), e.event_id());
            prop_assert_eq!(&t.event.facts(), e.facts());
            let data = stored_data(e.body());
            // As written, with the fields always delivered added at their defaults.
            let mut expected = written;
            if let (Some(expected), Value::Object(typed)) =
                (expected.as_object_mut(), stored_data(&t.event.body_json()))
            {
                for (k, v) in typed {
                    expected.entry(k).or_insert(v);
                }
            }
            prop_assert_eq!(&data, &expected, "{}", text);
            let decoded = EventData::from_value(t.event.event_type(), data);
            prop_assert_eq!(decoded.as_ref(), Ok(&t.event.data));
            let mut body: Map<String, Value> = serde_json::from_slice(e.body()).expect("JSON");
            body.insert("data".into(), Value::Object(Map::new()));
            let mut canonical: Map<String, Value> =
                serde_json::from_slice(&t.event.body_json()).expect("JSON");
            canonical.insert("data".into(), Value::Object(Map::new()));
            prop_assert_eq!(body, canonical);
        }
        Ok(())
    }

    #[test]
    fn a_body_keeps_data_as_written_without_its_whitespace() {
        let text = r#"{"user_id":"u","run_id":"r","type":"tool_completed","data": { "z" : [1, {"b":"x y"}], "tool_call_id":"t\u0031", "tool_name":"n" , "a":null}}"#;
        let events = PublishBody::decode_events(text.as_bytes(), Limits::EVENT, 1).expect("ok");
        assert!(!events.batch);
        let [event] = &events.events[..] else {
            panic!("one event");
        };
        assert_eq!(
            std::str::from_utf8(event.body()),
            Ok(
                r#"{"run_id":"r","data":{"z":[1,{"b":"x y"}],"tool_call_id":"t\u0031","tool_name":"n","a":null,"result":null,"is_error":false}}"#
            )
        );
        assert_eq!(
            event.facts().step,
            Some(RunStep::CloseToolCall("t1".into()))
        );
        // Through the typed decoding (a fraction is not read by the quick reader), the
        // same text.
        let slow = text.replace("[1,", "[1.5,");
        let events = PublishBody::decode_events(slow.as_bytes(), Limits::EVENT, 1).expect("ok");
        assert_eq!(
            std::str::from_utf8(events.events[0].body()),
            Ok(
                r#"{"run_id":"r","data":{"z":[1.5,{"b":"x y"}],"tool_call_id":"t\u0031","tool_name":"n","a":null,"result":null,"is_error":false}}"#
            )
        );
    }

    #[test]
    fn whitespace_is_removed_only_where_data_holds_it() {
        // Whitespace around `data` but none within it; whitespace inside its strings;
        // whitespace only before its closing brace; and an object of more keys than are
        // compared pair by pair, all distinct.
        let keys: String = (0..12).map(|i| format!(r#","k{i}":{i}"#)).collect();
        for (data, stored) in [
            (
                r#"{"thought":"a b","k":[1,2]}"#,
                r#"{"thought":"a b","k":[1,2]}"#,
            ),
            (
                r#"{"thought":"a","k":{"x":[1,2] }}"#,
                r#"{"thought":"a","k":{"x":[1,2]}}"#,
            ),
            (r#"{"thought":"a"	}"#, r#"{"thought":"a"}"#),
            (
                &format!(r#"{{"thought":"a"{keys}}}"#),
                &format!(r#"{{"thought":"a"{keys}}}"#),
            ),
        ] {
            let text = format!(
                "{{ \"user_id\" : \"u\", \"type\":\"agent_thinking\", \"data\" :\n{data} , \"run_id\":\"r\" }}"
            );
            let quick = PublishBody::events_quick(&text, 1, 64).expect("quick path");
            assert_eq!(
                std::str::from_utf8(quick.events[0].body()),
                Ok(format!(r#"{{"run_id":"r","data":{stored}}}"#).as_str()),
                "{text}"
            );
            assert_eq!(Ok(quick), PublishBody::events_slow(&text, Limits::EVENT, 1));
        }
    }

    #[test]
    fn fields_with_a_default_are_delivered_when_left_out() {
        for (data, stored) in [
            ("", r#"{"result":null}"#),
            (r#","data":{}"#, r#"{"result":null}"#),
            (r#","data":{ }"#, r#"{"result":null}"#),
            (r#","data":{"k":1}"#, r#"{"k":1,"result":null}"#),
            (r#","data":{"result":2}"#, r#"{"result":2}"#),
            (r#","data":{"result":2.5}"#, r#"{"result":2.5}"#),
            (r#","data":{"k":0.5}"#, r#"{"k":0.5,"result":null}"#),
            (r#","data":{}}"#, ""),
        ] {
            let text = format!(r#"{{"user_id":"u","type":"agent_completed","run_id":"r"{data}}}"#);
            let events = PublishBody::decode_events(text.as_bytes(), Limits::EVENT, 1);
            if stored.is_empty() {
                assert!(events.is_err(), "{text}");
                continue;
            }
            let events = events.expect("accepted");
            assert_eq!(
                std::str::from_utf8(events.events[0].body()),
                Ok(format!(r#"{{"run_id":"r","data":{stored}}}"#).as_str()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_key_repeated_anywhere_in_data_is_refused_by_the_one_pass() {
        let data = [
            r#"{"thought":"a","k":1,"k":2}"#,
            r#"{"thought":"a","k":1,"\u006b":2}"#,
            r#"{"thought":"a","th\u006fught":"b"}"#,
            r#"{"thought":"a","k":{"x":1,"y":{"z":[{"q":1,"q":1}]}}}"#,
            r#"{"k":[{"a":1,"a":2}],"thought":"a"}"#,
            r#"{"thought":"a","k1":1,"k2":1,"k3":1,"k4":1,"k5":1,"k6":1,"k7":1,"k8":1,"k9":1,"k1":1}"#,
        ];
        for data in data {
            for text in [
                format!(r#"{{"user_id":"u","type":"agent_thinking","run_id":"r","data":{data}}}"#),
                format!(r#"{{"user_id":"u","data":{data},"run_id":"r","type":"agent_thinking"}}"#),
            ] {
                assert_eq!(PublishBody::events_quick(&text, 3, 64), None, "{text}");
                let events = PublishBody::decode_events(text.as_bytes(), Limits::EVENT, 3);
                let typed = PublishBody::decode(text.as_bytes(), Limits::EVENT, 3);
                assert!(typed.is_err(), "{text}");
                assert_eq!(events.err(), typed.err(), "{text}");
            }
        }
    }

    #[test]
    fn the_load_generators_events_take_the_quick_events_path() {
        let text = r#"[{"user_id":"lgu7","type":"agent_thinking","thread_id":"t7","run_id":"r3","data":{"thought":"xxxx","step":4,"sent_at_us":1796039396123456,"u":7,"k":42}},{"user_id":"lgu8","type":"agent_completed","thread_id":"t8","run_id":"r3","data":{"result":"xx","duration_ms":40,"sent_at_us":1,"u":8,"k":10}}]"#;
        let quick = PublishBody::events_quick(text, 50, 64).expect("quick path");
        assert_eq!(Ok(quick), PublishBody::events_slow(text, Limits::EVENT, 50));
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// `decode_events` answers as `decode` does, under any depth limit and batch size.
        #[test]
        fn events_are_decoded_as_typed_events_are(
            text in prop_oneof![body(), request_with_strings()],
            max_depth in 0usize..6,
            max_batch in 1usize..4,
        ) {
            events_agree(&text, Limits { max_bytes: 4096, max_depth }, max_batch)?;
        }

        /// The one pass of `decode_events` accepts only what its other way accepts, and
        /// writes the same bodies; valid requests without a fraction take it.
        #[test]
        fn the_events_pass_writes_what_the_other_way_writes(
            text in prop_oneof![body(), valid_request(), request_with_strings()],
        ) {
            let quick = PublishBody::events_quick(&text, 3, 64);
            let limits = Limits { max_bytes: 4096, max_depth: 64 };
            if quick.is_some() {
                prop_assert_eq!(&quick, &PublishBody::events_slow(&text, limits, 3).ok(), "{}", text);
            }
            if PublishBody::decode_quick(&text, 3, 64).is_some() {
                prop_assert!(quick.is_some(), "{}", text);
            }
        }
    }
}
