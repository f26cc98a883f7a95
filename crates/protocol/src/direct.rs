//! One-pass decoding of an event's `type` and `data` straight from the JSON text into the
//! typed payloads, without building a [`Value`] tree of the whole event first.
//!
//! This path has no error messages of its own: it either produces exactly what the
//! decoding through a [`Value`] tree produces for the same text, or fails, and the caller
//! then decodes the text the slow way, which names the field and the reason. Anything this
//! path is unsure of (an unknown key at the top, a value of an unexpected type, a key
//! repeated anywhere) therefore fails here. Values whose shape is free (`arguments`,
//! `result`, `value` and the extra fields) are still built as [`Value`]s, by the same
//! parser that refuses repeated keys.
//!
//! The visitors here are driven first by [`Quick`], a reader of the common subset of JSON
//! that counts nesting as it goes, and when it gives up, by `serde_json`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::Value;
use serde_json::map::Entry;

use crate::codec::StrictValue;
use crate::event::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, Custom, EventData, EventType, Extra,
    MessageCompleted, MessageDelta, ToolCompleted, ToolExecuting,
};
use crate::ids::{EventId, RunId, ThreadId, UserId};

/// A key of a JSON object, borrowed from the text unless it held an escape.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// An event's `type`, read as a string naming a known type.
pub(crate) struct TypeName(pub(crate) EventType);

impl<'de> Deserialize<'de> for TypeName {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TypeName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event type")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TypeName, E> {
                EventType::from_str(v)
                    .map(TypeName)
                    .map_err(|_| E::custom("unknown event type"))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, refusing a key repeated in any of its objects.
pub(crate) struct AnyValue;

impl<'de> DeserializeSeed<'de> for AnyValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let duplicate = RefCell::new(None);
        StrictValue::root(&duplicate).deserialize(d)
    }
}

/// The error of a repeated key; its text is never shown (the slow path names the key).
fn repeated<E: de::Error>() -> E {
    E::custom("duplicate key")
}

/// A payload decoded field by field: typed fields by their own `Deserialize`, any other key
/// into `extra`, as serde's `flatten` does on the slow path.
trait Payload: Default + Into<EventData> {
    /// The typed fields, in order.
    const FIELDS: &'static [Field];

    /// Bit `i` set: the `i`-th typed field has no default and must be present.
    const REQUIRED: u32;

    /// Reads the value of `key` when it is a typed field (returning its bit), else leaves
    /// the value unread and returns 0.
    fn read_field<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<u32, A::Error>;

    /// Where the other fields go.
    fn extra(&mut self) -> &mut Extra;
}

/// How [`Quick::data_facts`] checks the value of a typed field of `data` without decoding
/// it: what the field's type accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// A string (`String`).
    Str,
    /// A string, read as the id the event's run step names (`tool_call_id`, `message_id`).
    Named,
    /// A string or `null` (`Option<String>`).
    OptStr,
    /// An integer from 0 to `u64::MAX`, or `null` (`Option<u64>`).
    OptU64,
    /// `true` or `false` (`bool`).
    Bool,
    /// Any JSON value (`Value`).
    Any,
}

/// A typed field of a payload: its wire name, how its value is checked, and whether it
/// must be present.
type Field = (&'static str, Check, bool);

/// The typed fields of a `ty` event's `data`, and the mask of those that must be present.
fn fields_of(ty: EventType) -> (&'static [Field], u32) {
    fn of<P: Payload>() -> (&'static [Field], u32) {
        (P::FIELDS, P::REQUIRED)
    }
    match ty {
        EventType::AgentStarted => of::<AgentStarted>(),
        EventType::AgentThinking => of::<AgentThinking>(),
        EventType::ToolExecuting => of::<ToolExecuting>(),
        EventType::ToolCompleted => of::<ToolCompleted>(),
        EventType::AgentCompleted => of::<AgentCompleted>(),
        EventType::AgentError => of::<AgentError>(),
        EventType::MessageDelta => of::<MessageDelta>(),
        EventType::MessageCompleted => of::<MessageCompleted>(),
        EventType::Custom => of::<Custom>(),
    }
}

/// The typed fields a `ty` event's `data` is always delivered with (those with a default
/// that [`crate::Event::body_json`] writes even when it is the default), which `seen` (bit
/// `i`: the `i`-th typed field is there) lacks: their wire names and their defaults' JSON.
pub(crate) fn missing_defaults(
    ty: EventType,
    seen: u32,
) -> impl Iterator<Item = (&'static str, &'static str)> {
    fields_of(ty)
        .0
        .iter()
        .enumerate()
        .filter(move |(i, _)| seen & (1 << i) == 0)
        .filter_map(|(_, (name, check, _))| match check {
            Check::Bool => Some((*name, "false")),
            Check::Any => Some((*name, "null")),
            _ => None,
        })
}

/// Which typed fields of a `ty` event's `data` are among `keys` (bit `i`: the `i`-th).
pub(crate) fn seen_fields<'k>(ty: EventType, keys: impl Iterator<Item = &'k str>) -> u32 {
    let fields = fields_of(ty).0;
    keys.filter_map(|key| fields.iter().position(|(name, ..)| *name == key))
        .fold(0, |seen, i| seen | 1 << i)
}

/// What [`Quick::data_facts`] reads of an event's `data`: what a broker needs of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DataFacts {
    /// The tool call id or message id, for the types that name one.
    pub(crate) named: Option<String>,
    /// `stall_timeout_ms` (of `agent_started`).
    pub(crate) stall_timeout_ms: Option<u64>,
    /// Bit `i` set: the `i`-th typed field of the type was present.
    pub(crate) seen: u32,
}

impl DataFacts {
    /// The facts of an event sent without `data`, which [`DataSeed::absent`] accepts for
    /// the types without a required field.
    pub(crate) fn absent(ty: EventType) -> Result<Self, GaveUp> {
        match fields_of(ty) {
            (_, 0) => Ok(DataFacts::default()),
            _ => Err(GaveUp),
        }
    }
}

/// How many keys of an object [`Keys`] holds inline.
const FEW_KEYS: usize = 8;

/// The keys of one object read by [`Quick`], to find a repeated one: the first
/// [`FEW_KEYS`] held inline and compared pair by pair as they come, so the objects of
/// agent events allocate nothing; the keys of a larger object sorted once at its end.
struct Keys<'de> {
    /// The first keys, `few[..len]`; the slots past `len` hold nothing read.
    few: [Cow<'de, str>; FEW_KEYS],
    len: usize,
    more: Vec<Cow<'de, str>>,
}

impl<'de> Keys<'de> {
    fn new() -> Self {
        Keys {
            few: Default::default(),
            len: 0,
            more: Vec::new(),
        }
    }

    /// Adds `key`; fails when it is among the first few and came before.
    fn insert(&mut self, key: Cow<'de, str>) -> Result<(), GaveUp> {
        if self.len == FEW_KEYS {
            self.more.push(key);
            return Ok(());
        }
        if self.few[..self.len].contains(&key) {
            return Err(GaveUp);
        }
        self.few[self.len] = key;
        self.len += 1;
        Ok(())
    }

    /// Fails when two of the keys are the same.
    fn distinct(self) -> Result<(), GaveUp> {
        if self.more.is_empty() {
            return Ok(());
        }
        let mut keys = self.more;
        keys.extend(self.few.into_iter().take(self.len));
        keys.sort_unstable();
        match keys.windows(2).any(|pair| pair[0] == pair[1]) {
            true => Err(GaveUp),
            false => Ok(()),
        }
    }
}

/// Sets `slot` once: a key repeated in an object fails.
pub(crate) fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(repeated());
    }
    *slot = Some(value);
    Ok(())
}

/// One publish request read by [`Quick::raw_request`]: checked as the typed decoding
/// checks it, its `data` kept as the text it was written as.
#[derive(Debug)]
pub(crate) struct RawRequest<'de> {
    pub(crate) user_id: UserId,
    pub(crate) event_id: Option<EventId>,
    pub(crate) event_type: EventType,
    pub(crate) thread_id: Option<ThreadId>,
    pub(crate) run_id: Option<RunId>,
    /// The text of `data`, `None` when the request has none.
    pub(crate) data: Option<&'de str>,
    /// Whether the text of `data` holds whitespace between its tokens.
    pub(crate) spaced: bool,
    pub(crate) facts: DataFacts,
}

/// A field whose type decodes itself.
fn typed<'de, T: Deserialize<'de>, A: MapAccess<'de>>(map: &mut A) -> Result<T, A::Error> {
    map.next_value()
}

/// A field holding any JSON value.
fn any<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Value, A::Error> {
    map.next_value_seed(AnyValue)
}

/// Implements [`Payload`]: `"wire name" => field: how check, required`, where `how` is
/// `typed` or `any` and `check` how [`Quick::data_facts`] checks the field's value without
/// decoding it (a [`Check`]), in the order of the struct's fields.
macro_rules! payload {
    ($ty:ident { $($name:literal => $field:ident: $how:ident $check:ident, $required:literal;)* }) => {
        impl Payload for $ty {
            const FIELDS: &'static [Field] = &[$(($name, Check::$check, $required)),*];

            const REQUIRED: u32 = {
                let mut mask = 0u32;
                let mut bit = 1u32;
                $(
                    if $required {
                        mask |= bit;
                    }
                    bit <<= 1;
                )*
                let _ = bit;
                mask
            };

            fn read_field<'de, A: MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<u32, A::Error> {
                let mut bit = 1u32;
                $(
                    if key == $name {
                        self.$field = $how(map)?;
                        return Ok(bit);
                    }
                    bit <<= 1;
                )*
                let _ = bit;
                Ok(0)
            }

            fn extra(&mut self) -> &mut Extra {
                &mut self.extra
            }
        }
    };
}

payload!(AgentStarted {
    "agent_name" => agent_name: typed OptStr, false;
    "stall_timeout_ms" => stall_timeout_ms: typed OptU64, false;
});
payload!(AgentThinking {
    "thought" => thought: typed Str, true;
    "step" => step: typed OptU64, false;
});
payload!(ToolExecuting {
    "tool_call_id" => tool_call_id: typed Named, true;
    "tool_name" => tool_name: typed Str, true;
    "arguments" => arguments: any Any, false;
});
payload!(ToolCompleted {
    "tool_call_id" => tool_call_id: typed Named, true;
    "tool_name" => tool_name: typed Str, true;
    "result" => result: any Any, false;
    "is_error" => is_error: typed Bool, false;
    "duration_ms" => duration_ms: typed OptU64, false;
});
payload!(AgentCompleted {
    "result" => result: any Any, false;
    "duration_ms" => duration_ms: typed OptU64, false;
});
payload!(AgentError {
    "message" => message: typed Str, true;
    "code" => code: typed OptStr, false;
    "retryable" => retryable: typed Bool, false;
});
payload!(MessageDelta {
    "message_id" => message_id: typed Named, true;
    "delta" => delta: typed Str, true;
});
payload!(MessageCompleted {
    "message_id" => message_id: typed Named, true;
    "text" => text: typed OptStr, false;
});
payload!(Custom {
    "name" => name: typed Str, true;
    "value" => value: any Any, false;
});

/// Decodes one payload type from a JSON object.
struct PayloadVisitor<P>(PhantomData<P>);

impl<'de, P: Payload> Visitor<'de> for PayloadVisitor<P> {
    type Value = P;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event's data object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<P, A::Error> {
        let mut payload = P::default();
        let mut seen = 0u32;
        while let Some(Key(key)) = map.next_key()? {
            let bit = payload.read_field(&key, &mut map)?;
            if bit != 0 {
                if seen & bit != 0 {
                    return Err(repeated());
                }
                seen |= bit;
                continue;
            }
            match payload.extra().entry(key) {
                Entry::Occupied(_) => return Err(repeated()),
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(AnyValue)?);
                }
            }
        }
        finish(payload, seen)
    }
}

fn finish<P: Payload, E: de::Error>(payload: P, seen: u32) -> Result<P, E> {
    if seen & P::REQUIRED == P::REQUIRED {
        Ok(payload)
    } else {
        Err(E::custom("missing field"))
    }
}

/// Decodes `data` for an event of the given type.
pub(crate) struct DataSeed(pub(crate) EventType);

impl DataSeed {
    /// The payload of an event sent without `data`, as the slow path decodes `{}`.
    pub(crate) fn absent<E: de::Error>(self) -> Result<EventData, E> {
        fn empty<P: Payload, E: de::Error>() -> Result<EventData, E> {
            finish(P::default(), 0).map(Into::into)
        }
        match self.0 {
            EventType::AgentStarted => empty::<AgentStarted, E>(),
            EventType::AgentThinking => empty::<AgentThinking, E>(),
            EventType::ToolExecuting => empty::<ToolExecuting, E>(),
            EventType::ToolCompleted => empty::<ToolCompleted, E>(),
            EventType::AgentCompleted => empty::<AgentCompleted, E>(),
            EventType::AgentError => empty::<AgentError, E>(),
            EventType::MessageDelta => empty::<MessageDelta, E>(),
            EventType::MessageCompleted => empty::<MessageCompleted, E>(),
            EventType::Custom => empty::<Custom, E>(),
        }
    }
}

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = EventData;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<EventData, D::Error> {
        fn one<'de, P: Payload, D: de::Deserializer<'de>>(d: D) -> Result<EventData, D::Error> {
            d.deserialize_map(PayloadVisitor::<P>(PhantomData))
                .map(Into::into)
        }
        match self.0 {
            EventType::AgentStarted => one::<AgentStarted, D>(d),
            EventType::AgentThinking => one::<AgentThinking, D>(d),
            EventType::ToolExecuting => one::<ToolExecuting, D>(d),
            EventType::ToolCompleted => one::<ToolCompleted, D>(d),
            EventType::AgentCompleted => one::<AgentCompleted, D>(d),
            EventType::AgentError => one::<AgentError, D>(d),
            EventType::MessageDelta => one::<MessageDelta, D>(d),
            EventType::MessageCompleted => one::<MessageCompleted, D>(d),
            EventType::Custom => one::<Custom, D>(d),
        }
    }
}

/// A JSON reader for the common case, given to the same visitors as `serde_json`'s: it
/// reads objects, arrays, strings (escapes included, but no `\u` surrogates), integers
/// that fit in 64 bits, `true`, `false` and `null`, and counts nesting as it goes. For
/// anything else — a fraction or an exponent, a surrogate escape, nesting deeper than
/// its bound, a `&RawValue`, malformed text — it gives up, and the caller reads the text
/// with `serde_json`. What it accepts it reads exactly as `serde_json` does: the same
/// visitor calls with the same values.
pub(crate) struct Quick<'de> {
    text: &'de str,
    pos: usize,
    depth: usize,
    max_depth: usize,
    /// Whether whitespace between tokens was passed since this was last cleared.
    spaced: bool,
}

/// Deepest nesting [`Quick`] reads: within `serde_json`'s own recursion limit (128), so
/// whatever it accepts, `serde_json` accepts too.
const QUICK_MAX_DEPTH: usize = 100;

/// The quick reader gave up; the text is read again by `serde_json`, whose errors are the
/// ones reported.
#[derive(Debug)]
pub(crate) struct GaveUp;

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outside what the quick reader reads")
    }
}

impl std::error::Error for GaveUp {}

impl de::Error for GaveUp {
    fn custom<T: fmt::Display>(_: T) -> Self {
        GaveUp
    }
}

impl<'de> Quick<'de> {
    /// A reader of `text` that gives up on arrays and objects nested deeper than
    /// `max_depth` (so an accepted text passes the depth check of that limit).
    pub(crate) fn new(text: &'de str, max_depth: usize) -> Self {
        Quick {
            text,
            pos: 0,
            depth: 0,
            max_depth: max_depth.min(QUICK_MAX_DEPTH),
            spaced: false,
        }
    }

    /// Checks that only whitespace follows the value read.
    pub(crate) fn end(&mut self) -> Result<(), GaveUp> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(GaveUp),
        }
    }

    /// The next byte that is not whitespace (as JSON defines it), not consumed.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            // Every byte JSON counts as whitespace is at most a space.
            if b > b' ' || !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.spaced = true;
            self.pos += 1;
        }
        None
    }

    /// Consumes `b`, the next byte after whitespace.
    fn eat(&mut self, b: u8) -> Result<(), GaveUp> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(GaveUp)
        }
    }

    /// Consumes `word` (a literal's remaining letters).
    fn literal(&mut self, word: &[u8]) -> Result<(), GaveUp> {
        if self.text.as_bytes()[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(GaveUp)
        }
    }

    /// Enters an array or an object (its opening bracket at `pos`).
    fn enter(&mut self) -> Result<(), GaveUp> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(GaveUp);
        }
        self.pos += 1;
        Ok(())
    }

    /// The digits at `pos`: a JSON integer without a sign that fits in a `u64`.
    fn digits(&mut self) -> Result<u64, GaveUp> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut n = 0u64;
        let mut end = start;
        // Up to 19 digits cannot overflow; from the 20th on, every step is checked.
        let unchecked = bytes.len().min(start + 19);
        while end < unchecked {
            let d = bytes[end].wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            n = n * 10 + u64::from(d);
            end += 1;
        }
        while let Some(&b) = bytes.get(end) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d)))
                .ok_or(GaveUp)?;
            end += 1;
        }
        self.pos = end;
        let len = end - start;
        // No digits, a leading zero, or a fraction or exponent (read as a float by
        // serde_json).
        if len == 0
            || (len > 1 && bytes[start] == b'0')
            || matches!(bytes.get(self.pos), Some(b'.' | b'e' | b'E'))
        {
            return Err(GaveUp);
        }
        Ok(n)
    }

    /// The string whose opening quote is at `pos`, to `visitor`: borrowed from the text
    /// when it has no escape.
    #[inline]
    fn string<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, GaveUp> {
        let bytes = self.text.as_bytes();
        let start = self.pos + 1;
        let at = crate::json::next_escape(bytes, start).ok_or(GaveUp)?;
        match bytes[at] {
            b'"' => {
                let s = self.text.get(start..at).ok_or(GaveUp)?;
                self.pos = at + 1;
                visitor.visit_borrowed_str(s)
            }
            b'\\' => {
                let s = self.unescape(start, at)?;
                visitor.visit_string(s)
            }
            // A control character, which JSON strings may not hold.
            _ => Err(GaveUp),
        }
    }

    /// A string from `start` with its first backslash at `at`, its escapes resolved.
    fn unescape(&mut self, start: usize, mut at: usize) -> Result<String, GaveUp> {
        let bytes = self.text.as_bytes();
        let mut out = String::with_capacity(at - start + 16);
        let mut from = start;
        loop {
            out.push_str(self.text.get(from..at).ok_or(GaveUp)?);
            match bytes.get(at + 1) {
                Some(b'"') => out.push('"'),
                Some(b'\\') => out.push('\\'),
                Some(b'/') => out.push('/'),
                Some(b'b') => out.push('\u{8}'),
                Some(b'f') => out.push('\u{c}'),
                Some(b'n') => out.push('\n'),
                Some(b'r') => out.push('\r'),
                Some(b't') => out.push('\t'),
                Some(b'u') => {
                    let hex = bytes.get(at + 2..at + 6).ok_or(GaveUp)?;
                    let mut n = 0u32;
                    for &h in hex {
                        let d = char::from(h).to_digit(16).ok_or(GaveUp)?;
                        n = n * 16 + d;
                    }
                    // A surrogate (of a pair, or alone) is left to serde_json.
                    out.push(char::from_u32(n).ok_or(GaveUp)?);
                    at += 4;
                }
                _ => return Err(GaveUp),
            }
            from = at + 2;
            at = crate::json::next_escape(bytes, from).ok_or(GaveUp)?;
            match bytes[at] {
                b'"' => {
                    out.push_str(self.text.get(from..at).ok_or(GaveUp)?);
                    self.pos = at + 1;
                    return Ok(out);
                }
                b'\\' => {}
                _ => return Err(GaveUp),
            }
        }
    }

    /// The closing bracket of the array or object being left.
    fn leave(&mut self, close: u8) -> Result<(), GaveUp> {
        self.eat(close)?;
        self.depth -= 1;
        Ok(())
    }
}

/// Reading without building: what the typed decoding accepts, checked in one pass, with
/// the text of `data` kept as it was written.
impl<'de> Quick<'de> {
    /// A publish body: one request, or a non-empty array of at most `max_batch` (and
    /// whether it was an array). Accepts only bodies the typed decoding accepts.
    pub(crate) fn raw_body(
        &mut self,
        max_batch: usize,
    ) -> Result<(Vec<RawRequest<'de>>, bool), GaveUp> {
        let body = match self.peek() {
            Some(b'{') => (vec![self.raw_request()?], false),
            Some(b'[') => {
                self.enter()?;
                let mut requests = Vec::new();
                let mut first = true;
                while self.next_element(&mut first)? {
                    if requests.len() == max_batch {
                        return Err(GaveUp);
                    }
                    requests.push(self.raw_request()?);
                }
                self.leave(b']')?;
                if requests.is_empty() {
                    return Err(GaveUp);
                }
                (requests, true)
            }
            _ => return Err(GaveUp),
        };
        self.end()?;
        Ok(body)
    }

    /// One publish request, checked field by field as the typed decoding checks it
    /// (`RequestVisitor` and [`DataSeed`], then `Event::validate`), building nothing of
    /// its `data`.
    fn raw_request(&mut self) -> Result<RawRequest<'de>, GaveUp> {
        if self.peek() != Some(b'{') {
            return Err(GaveUp);
        }
        self.enter()?;
        let mut user_id: Option<UserId> = None;
        let mut ty: Option<EventType> = None;
        let mut event_id: Option<Option<EventId>> = None;
        let mut thread_id: Option<Option<ThreadId>> = None;
        let mut run_id: Option<Option<RunId>> = None;
        let mut data: Option<(&'de str, bool, Option<DataFacts>)> = None;
        let mut first = true;
        while let Some(key) = self.next_key(&mut first)? {
            match &*key {
                "user_id" => once(&mut user_id, Deserialize::deserialize(&mut *self)?)?,
                "type" => once(&mut ty, TypeName::deserialize(&mut *self)?.0)?,
                "event_id" => once(&mut event_id, Deserialize::deserialize(&mut *self)?)?,
                "thread_id" => once(&mut thread_id, Deserialize::deserialize(&mut *self)?)?,
                "run_id" => once(&mut run_id, Deserialize::deserialize(&mut *self)?)?,
                "data" => {
                    self.peek().ok_or(GaveUp)?;
                    let start = self.pos;
                    self.spaced = false;
                    // Before `type`, `data` is only checked to be JSON; it is read again
                    // once the type is known.
                    let facts = match ty {
                        Some(ty) => Some(self.data_facts(ty)?),
                        None => {
                            self.skip_checked()?;
                            None
                        }
                    };
                    let text = self.text.get(start..self.pos).ok_or(GaveUp)?;
                    once(&mut data, (text, self.spaced, facts))?;
                }
                _ => return Err(GaveUp),
            }
        }
        self.leave(b'}')?;
        let event_type = ty.ok_or(GaveUp)?;
        let (data, spaced, facts) = match data {
            Some((text, spaced, Some(facts))) => (Some(text), spaced, facts),
            Some((text, spaced, None)) => {
                // The text was read within the body's nesting bound, so it is within it
                // alone.
                let mut again = Quick::new(text, usize::MAX);
                let facts = again.data_facts(event_type)?;
                again.end()?;
                (Some(text), spaced, facts)
            }
            None => (None, false, DataFacts::absent(event_type)?),
        };
        Ok(RawRequest {
            user_id: user_id.ok_or(GaveUp)?,
            event_id: event_id.flatten(),
            event_type,
            thread_id: thread_id.flatten(),
            run_id: run_id.flatten(),
            data,
            spaced,
            facts,
        })
    }

    /// Checks the `data` object of a `ty` event as [`DataSeed`] decodes it — every typed
    /// field of the type its field accepts, the required ones present, no key repeated at
    /// any depth — and reads what a broker needs of it.
    pub(crate) fn data_facts(&mut self, ty: EventType) -> Result<DataFacts, GaveUp> {
        let (fields, required) = fields_of(ty);
        if self.peek() != Some(b'{') {
            return Err(GaveUp);
        }
        self.enter()?;
        let mut facts = DataFacts::default();
        let mut seen = 0u32;
        let mut extra = Keys::new();
        let mut first = true;
        while let Some(key) = self.next_key(&mut first)? {
            let Some(i) = fields.iter().position(|(name, ..)| *name == key) else {
                self.skip_checked()?;
                extra.insert(key)?;
                continue;
            };
            let bit = 1 << i;
            if seen & bit != 0 {
                return Err(GaveUp);
            }
            seen |= bit;
            match fields[i].1 {
                Check::Str => {
                    Key::deserialize(&mut *self)?;
                }
                Check::Named => facts.named = Some(Key::deserialize(&mut *self)?.0.into_owned()),
                Check::OptStr => {
                    Option::<Key<'de>>::deserialize(&mut *self)?;
                }
                Check::OptU64 => {
                    let n = match self.peek() {
                        Some(b'0'..=b'9') => Some(self.digits()?),
                        Some(b'n') => {
                            self.literal(b"null")?;
                            None
                        }
                        _ => return Err(GaveUp),
                    };
                    if fields[i].0 == "stall_timeout_ms" {
                        facts.stall_timeout_ms = n;
                    }
                }
                Check::Bool => {
                    bool::deserialize(&mut *self)?;
                }
                Check::Any => self.skip_checked()?,
            }
        }
        self.leave(b'}')?;
        extra.distinct()?;
        facts.seen = seen;
        match seen & required == required {
            true => Ok(facts),
            false => Err(GaveUp),
        }
    }

    /// Reads past any value, checking it as [`AnyValue`] decodes it (no key repeated in
    /// any of its objects) without building it.
    fn skip_checked(&mut self) -> Result<(), GaveUp> {
        match self.peek().ok_or(GaveUp)? {
            b'{' => {
                self.enter()?;
                let mut keys = Keys::new();
                let mut first = true;
                while let Some(key) = self.next_key(&mut first)? {
                    self.skip_checked()?;
                    keys.insert(key)?;
                }
                self.leave(b'}')?;
                keys.distinct()
            }
            b'[' => {
                self.enter()?;
                let mut first = true;
                while self.next_element(&mut first)? {
                    self.skip_checked()?;
                }
                self.leave(b']')
            }
            _ => de::IgnoredAny::deserialize(&mut *self).map(|_| ()),
        }
    }

    /// The next key of the object being read, and its colon (`first`: no member read
    /// yet); `None` at its closing brace, which is left unread.
    fn next_key(&mut self, first: &mut bool) -> Result<Option<Cow<'de, str>>, GaveUp> {
        if !self.next_member(first)? {
            return Ok(None);
        }
        let Key(key) = Key::deserialize(&mut *self)?;
        self.eat(b':')?;
        Ok(Some(key))
    }

    /// Whether another member of the object being read follows (its separator read, its
    /// key next; `first`: no member read yet); `false` at its closing brace, left unread.
    fn next_member(&mut self, first: &mut bool) -> Result<bool, GaveUp> {
        let mut next = self.peek();
        if next == Some(b'}') {
            return Ok(false);
        }
        if !std::mem::replace(first, false) {
            if next != Some(b',') {
                return Err(GaveUp);
            }
            self.pos += 1;
            next = self.peek();
        }
        // A key is a string.
        match next {
            Some(b'"') => Ok(true),
            _ => Err(GaveUp),
        }
    }

    /// Whether another element of the array being read follows (its separator read;
    /// `first`: no element read yet); `false` at its closing bracket, left unread.
    fn next_element(&mut self, first: &mut bool) -> Result<bool, GaveUp> {
        match self.peek() {
            Some(b']') => Ok(false),
            Some(b',') if !*first => {
                self.pos += 1;
                Ok(true)
            }
            _ if !*first => Err(GaveUp),
            _ => {
                *first = false;
                Ok(true)
            }
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut Quick<'de> {
    type Error = GaveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GaveUp> {
        match self.peek().ok_or(GaveUp)? {
            b'"' => self.string(visitor),
            b'0'..=b'9' => visitor.visit_u64(self.digits()?),
            b'-' => {
                self.pos += 1;
                // As serde_json: `-0` and anything below `i64::MIN` are floats.
                let n = self.digits()?;
                if n == 0 || n > 1 << 63 {
                    return Err(GaveUp);
                }
                visitor.visit_i64(0i64.wrapping_sub_unsigned(n))
            }
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b'[' => {
                self.enter()?;
                let value = visitor.visit_seq(QuickSeq {
                    de: self,
                    first: true,
                })?;
                self.leave(b']')?;
                Ok(value)
            }
            b'{' => self.deserialize_map(visitor),
            _ => Err(GaveUp),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GaveUp> {
        if self.peek() != Some(b'{') {
            return Err(GaveUp);
        }
        self.enter()?;
        let value = visitor.visit_map(QuickMap {
            de: self,
            first: true,
        })?;
        self.leave(b'}')?;
        Ok(value)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GaveUp> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GaveUp> {
        // Anything but a string is refused by a visitor of strings.
        match self.peek() {
            Some(b'"') => self.string(visitor),
            _ => Err(GaveUp),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GaveUp> {
        self.deserialize_str(visitor)
    }

    /// A `Span`: the text of the next value, checked as it is read past. Any other
    /// newtype is refused (serde_json's `RawValue`, which only serde_json reads).
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GaveUp> {
        if name != SPAN {
            return Err(GaveUp);
        }
        self.peek().ok_or(GaveUp)?;
        let start = self.pos;
        de::IgnoredAny::deserialize(&mut *self)?;
        visitor.visit_borrowed_str(self.text.get(start..self.pos).ok_or(GaveUp)?)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes
        byte_buf unit unit_struct seq tuple tuple_struct struct enum identifier ignored_any
    }
}

/// The newtype name under which [`Quick`] hands out a value's text ([`Span`]).
const SPAN: &str = "$agentwire::direct::Span";

/// The text of one JSON value, which [`Quick`] read past (so it is JSON, within the
/// nesting bound) without building anything. Only [`Quick`] produces one.
pub(crate) struct Span<'de>(pub(crate) &'de str);

impl<'de> Deserialize<'de> for Span<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Span<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the text of a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Span<'de>, E> {
                Ok(Span(v))
            }
        }
        d.deserialize_newtype_struct(SPAN, V)
    }
}

/// The elements of an array being read by [`Quick`].
struct QuickSeq<'a, 'de> {
    de: &'a mut Quick<'de>,
    first: bool,
}

impl<'de> de::SeqAccess<'de> for QuickSeq<'_, 'de> {
    type Error = GaveUp;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, GaveUp> {
        if !self.de.next_element(&mut self.first)? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

/// The members of an object being read by [`Quick`].
struct QuickMap<'a, 'de> {
    de: &'a mut Quick<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for QuickMap<'_, 'de> {
    type Error = GaveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, GaveUp> {
        if !self.de.next_member(&mut self.first)? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GaveUp> {
        self.de.eat(b':')?;
        seed.deserialize(&mut *self.de)
    }
}
