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

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::Value;

use crate::codec::StrictValue;
use crate::event::{
    AgentCompleted, AgentError, AgentStarted, AgentThinking, Custom, EventData, EventType, Extra,
    MessageCompleted, MessageDelta, ToolCompleted, ToolExecuting,
};

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

/// A field whose type decodes itself.
fn typed<'de, T: Deserialize<'de>, A: MapAccess<'de>>(map: &mut A) -> Result<T, A::Error> {
    map.next_value()
}

/// A field holding any JSON value.
fn any<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Value, A::Error> {
    map.next_value_seed(AnyValue)
}

/// Implements [`Payload`]: `"wire name" => field: how, required`, where `how` is `typed` or
/// `any`, in the order of the struct's fields.
macro_rules! payload {
    ($ty:ident { $($name:literal => $field:ident: $how:ident, $required:literal;)* }) => {
        impl Payload for $ty {
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
    "agent_name" => agent_name: typed, false;
    "stall_timeout_ms" => stall_timeout_ms: typed, false;
});
payload!(AgentThinking {
    "thought" => thought: typed, true;
    "step" => step: typed, false;
});
payload!(ToolExecuting {
    "tool_call_id" => tool_call_id: typed, true;
    "tool_name" => tool_name: typed, true;
    "arguments" => arguments: any, false;
});
payload!(ToolCompleted {
    "tool_call_id" => tool_call_id: typed, true;
    "tool_name" => tool_name: typed, true;
    "result" => result: any, false;
    "is_error" => is_error: typed, false;
    "duration_ms" => duration_ms: typed, false;
});
payload!(AgentCompleted {
    "result" => result: any, false;
    "duration_ms" => duration_ms: typed, false;
});
payload!(AgentError {
    "message" => message: typed, true;
    "code" => code: typed, false;
    "retryable" => retryable: typed, false;
});
payload!(MessageDelta {
    "message_id" => message_id: typed, true;
    "delta" => delta: typed, true;
});
payload!(MessageCompleted {
    "message_id" => message_id: typed, true;
    "text" => text: typed, false;
});
payload!(Custom {
    "name" => name: typed, true;
    "value" => value: any, false;
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
            let key = key.into_owned();
            if payload.extra().contains_key(&key) {
                return Err(repeated());
            }
            let value = map.next_value_seed(AnyValue)?;
            payload.extra().insert(key, value);
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
