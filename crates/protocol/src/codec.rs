//! JSON decoding with limits, and the error every decoder returns.
//!
//! Input from outside the process — client frames, publish bodies — goes through
//! [`parse_object`] first: size, UTF-8 and nesting depth are checked on the raw bytes
//! before any JSON value is built, so an oversized or deeply nested input costs one linear
//! scan and no allocation.

use serde::de::{DeserializeOwned, DeserializeSeed as _};
use serde_json::{Map, Value};

/// Largest client → server frame accepted, in bytes. Client frames are tiny (`ping`, `ack`,
/// `resume`); the largest is `refresh_token`, whose JWT rarely exceeds 2 KiB.
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024;

/// Deepest nesting of JSON arrays and objects accepted in a client frame.
pub const MAX_CLIENT_FRAME_DEPTH: usize = 8;

/// Default largest event a publisher may send, in bytes of JSON (256 KiB). Servers make it
/// configurable; this is the value they start from.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;

/// Deepest nesting of JSON arrays and objects accepted in a published event (its `data`
/// included).
pub const MAX_EVENT_DEPTH: usize = 64;

/// How much input a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of arrays and objects.
    pub max_depth: usize,
}

impl Limits {
    /// The limits for client → server frames.
    pub const CLIENT_FRAME: Limits = Limits {
        max_bytes: MAX_CLIENT_FRAME_BYTES,
        max_depth: MAX_CLIENT_FRAME_DEPTH,
    };

    /// The default limits for one published event.
    pub const EVENT: Limits = Limits {
        max_bytes: DEFAULT_MAX_EVENT_BYTES,
        max_depth: MAX_EVENT_DEPTH,
    };
}

/// Why input could not be decoded. Every variant says what was wrong and, where there is
/// one, which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than the limit.
    #[error("input is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The input is not UTF-8.
    #[error("input is not UTF-8 (valid up to byte {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// Arrays and objects nest deeper than the limit.
    #[error("JSON nests deeper than {limit} levels")]
    TooDeep {
        /// The depth limit.
        limit: usize,
    },
    /// The input is not JSON.
    #[error("malformed JSON at line {line}, column {column}: {reason}")]
    Malformed {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser expected.
        reason: String,
    },
    /// The input is JSON, but not of the expected shape at the top level.
    #[error("expected {expected}")]
    WrongShape {
        /// What was expected, e.g. "a JSON object".
        expected: &'static str,
    },
    /// The `type` field is missing or not a string.
    #[error("field `type`: missing or not a string")]
    MissingType,
    /// The `type` field names no frame this decoder knows.
    #[error("field `type`: unknown type `{type_name}`")]
    UnknownType {
        /// The type that was sent.
        type_name: String,
    },
    /// A field is missing, unknown, or has the wrong type or value.
    #[error("field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `data.tool_call_id` or `[2].user_id`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// The field the error is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::MissingType | DecodeError::UnknownType { .. } => Some("type"),
            DecodeError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Whether the input was refused for its size rather than its content.
    pub fn is_too_large(&self) -> bool {
        matches!(self, DecodeError::TooLarge { .. })
    }

    /// Prefixes the field path with `prefix` (for errors inside a batch or a sub-object).
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        match self {
            DecodeError::Invalid { field, reason } => DecodeError::Invalid {
                field: join_path(prefix, &field),
                reason,
            },
            DecodeError::MissingType => DecodeError::Invalid {
                field: join_path(prefix, "type"),
                reason: "missing or not a string".into(),
            },
            DecodeError::UnknownType { type_name } => DecodeError::Invalid {
                field: join_path(prefix, "type"),
                reason: format!("unknown type `{type_name}`"),
            },
            other => other,
        }
    }
}

fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        // An error about the item itself (a batch entry that is not an object) names it.
        prefix.to_owned()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

/// Checks size, UTF-8 and nesting depth, then parses a JSON value, refusing an object
/// that names a key twice.
///
/// # Errors
/// [`DecodeError::TooLarge`], [`DecodeError::NotUtf8`], [`DecodeError::TooDeep`],
/// [`DecodeError::Malformed`], or [`DecodeError::Invalid`] naming a repeated key.
pub fn parse_value(bytes: &[u8], limits: Limits) -> Result<Value, DecodeError> {
    parse_checked(check_input(bytes, limits)?)
}

/// Checks size, UTF-8 and nesting depth of input about to be parsed.
pub(crate) fn check_input(bytes: &[u8], limits: Limits) -> Result<&str, DecodeError> {
    let text = check_text(bytes, limits)?;
    check_depth(text.as_bytes(), limits.max_depth)?;
    Ok(text)
}

/// The first two checks of [`check_input`]: size and UTF-8 (a reader that counts nesting
/// itself leaves the depth check for when it gives up).
pub(crate) fn check_text(bytes: &[u8], limits: Limits) -> Result<&str, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

/// [`parse_value`] of a text that passed [`check_input`].
pub(crate) fn parse_checked(text: &str) -> Result<Value, DecodeError> {
    let duplicate = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = StrictValue::root(&duplicate)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| match duplicate.into_inner() {
        Some(field) => DecodeError::Invalid {
            field,
            reason: "the key appears more than once in its object".into(),
        },
        None => DecodeError::Malformed {
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        },
    })
}

/// Where a value sits in the document: its key or index, and its parent. Lives on the
/// stack while its value is parsed, so a path is built only for the error that needs one.
#[derive(Clone, Copy)]
struct Step<'a> {
    parent: Option<&'a Step<'a>>,
    name: StepName<'a>,
}

#[derive(Clone, Copy)]
enum StepName<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_of(step: Option<&Step<'_>>) -> String {
    let Some(step) = step else {
        return String::new();
    };
    let parent = path_of(step.parent);
    match step.name {
        StepName::Key(k) => join_path(&parent, k),
        StepName::Index(i) => join_path(&parent, &format!("[{i}]")),
    }
}

/// Builds a [`Value`] as `serde_json` does, but refuses an object that names a key twice
/// (`serde_json` keeps the last one silently, so `{"user_id":"a","user_id":"b"}` would
/// publish to `b` while a reader of the text sees `a`). The offending path is left in
/// `duplicate`.
pub(crate) struct StrictValue<'a, 'd> {
    at: Option<&'a Step<'a>>,
    duplicate: &'d std::cell::RefCell<Option<String>>,
}

impl<'d> StrictValue<'static, 'd> {
    /// A document's top value; a repeated key's path is left in `duplicate`.
    pub(crate) fn root(duplicate: &'d std::cell::RefCell<Option<String>>) -> Self {
        StrictValue {
            at: None,
            duplicate,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue<'_, '_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        loop {
            let step = Step {
                parent: self.at,
                name: StepName::Index(items.len()),
            };
            let seed = StrictValue {
                at: Some(&step),
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let step = Step {
                parent: self.at,
                name: StepName::Key(&key),
            };
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(path_of(Some(&step)));
                return Err(serde::de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(StrictValue {
                at: Some(&step),
                duplicate: self.duplicate,
            })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// [`parse_value`], then requires a JSON object.
///
/// # Errors
/// As [`parse_value`], and [`DecodeError::WrongShape`] for anything but an object.
pub fn parse_object(bytes: &[u8], limits: Limits) -> Result<Map<String, Value>, DecodeError> {
    match parse_value(bytes, limits)? {
        Value::Object(map) => Ok(map),
        _ => Err(DecodeError::WrongShape {
            expected: "a JSON object",
        }),
    }
}

/// Rejects input whose arrays and objects nest deeper than `limit`, by one scan over the
/// bytes that jumps over string contents (most of an event's bytes) with `memchr`.
/// Brackets need not balance here, nor strings end: the parser reports that afterwards.
pub(crate) fn check_depth(bytes: &[u8], limit: usize) -> Result<(), DecodeError> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => {
                // Past the closing quote; an escape skips the byte after the backslash.
                loop {
                    let Some(j) = bytes.get(i..).and_then(|s| memchr::memchr2(b'"', b'\\', s))
                    else {
                        return Ok(());
                    };
                    if bytes[i + j] == b'"' {
                        i += j + 1;
                        break;
                    }
                    i += j + 2;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(DecodeError::TooDeep { limit });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Removes and returns the `type` field.
pub(crate) fn take_type(obj: &mut Map<String, Value>) -> Result<String, DecodeError> {
    match obj.remove("type") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(DecodeError::MissingType),
    }
}

/// Removes and returns a required field.
pub(crate) fn require(obj: &mut Map<String, Value>, field: &str) -> Result<Value, DecodeError> {
    obj.remove(field).ok_or_else(|| DecodeError::Invalid {
        field: field.to_owned(),
        reason: "missing".into(),
    })
}

/// Deserializes `value`, naming the failing field by its path below `at`.
pub(crate) fn from_value_at<T: DeserializeOwned>(at: &str, value: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." {
            at.to_owned()
        } else {
            join_path(at, &inner)
        };
        let reason = e.into_inner().to_string();
        DecodeError::Invalid {
            field: missing_field(&field, &reason),
            reason,
        }
    })
}

/// serde reports a missing field at its parent's path, naming it only in the message
/// ("missing field `x`"); this puts it into the path.
fn missing_field(path: &str, reason: &str) -> String {
    reason
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map_or_else(|| path.to_owned(), |name| join_path(path, name))
}

/// Deserializes what is left of an object into a frame's body, refusing unknown fields.
pub(crate) fn from_object<T: DeserializeOwned>(obj: Map<String, Value>) -> Result<T, DecodeError> {
    from_value_at("", Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The depth check written the plain way, byte by byte: the reference the fast one
    /// must agree with.
    fn depth_check_reference(bytes: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return false;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        true
    }

    proptest! {
        #[test]
        fn the_depth_check_agrees_with_a_byte_by_byte_scan(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), Just(b'['), Just(b']'), Just(b'{'), Just(b'}'),
                    Just(b'a'), Just(b','),
                ],
                0..64,
            ),
            limit in 0usize..6,
        ) {
            prop_assert_eq!(check_depth(&bytes, limit).is_ok(), depth_check_reference(&bytes, limit));
        }
    }

    const SMALL: Limits = Limits {
        max_bytes: 64,
        max_depth: 3,
    };

    #[test]
    fn size_is_checked_first() {
        let big = vec![b' '; 65];
        assert_eq!(
            parse_value(&big, SMALL),
            Err(DecodeError::TooLarge {
                size: 65,
                limit: 64
            })
        );
    }

    #[test]
    fn non_utf8_is_rejected() {
        assert_eq!(
            parse_value(b"{\"a\":\"\xff\"}", SMALL),
            Err(DecodeError::NotUtf8 { valid_up_to: 6 })
        );
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert!(parse_value(br#"[[["[[[[[["]]]"#, SMALL).is_ok());
        assert_eq!(
            parse_value(b"[[[[]]]]", SMALL),
            Err(DecodeError::TooDeep { limit: 3 })
        );
        assert!(parse_value(br#"{"a":"\"[[[[["}"#, SMALL).is_ok());
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let loose = Limits {
            max_bytes: 1024,
            max_depth: 8,
        };
        let err = parse_value(br#"{"user_id":"alice","user_id":"victim"}"#, loose).unwrap_err();
        assert_eq!(err.field(), Some("user_id"));
        let err = parse_value(br#"[{"a":1},{"data":{"x":[{"k":1,"k":2}]}}]"#, loose).unwrap_err();
        assert_eq!(err.field(), Some("[1].data.x[0].k"));
        // The same key in different objects, and equal values under different keys, are fine.
        let ok = parse_value(br#"{"a":{"k":1},"b":{"k":1},"c":[1,1]}"#, loose).expect("parses");
        assert_eq!(ok["b"]["k"], 1);
    }

    #[test]
    fn strict_parsing_builds_the_value_serde_json_builds() {
        let loose = Limits {
            max_bytes: 4096,
            max_depth: 16,
        };
        let text = br#"{"s":"x\u00e9\n","i":-3,"u":18446744073709551615,"f":1.5e300,"n":null,"b":true,"a":[[],{}],"o":{"z":{}}}"#;
        let ours = parse_value(text, loose).expect("parses");
        let theirs: Value = serde_json::from_slice(text).expect("parses");
        assert_eq!(ours, theirs);
        assert!(matches!(
            parse_value(b"{\"a\":1} x", loose),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_names_line_and_column() {
        match parse_value(b"{\n  \"a\": }", SMALL) {
            Err(DecodeError::Malformed {
                line: 2, column, ..
            }) => assert!(column > 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_fields_are_named_by_path() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            x: u64,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            inner: Inner,
        }
        let err = from_value_at::<Outer>("data", serde_json::json!({"inner": {}})).unwrap_err();
        assert_eq!(err.field(), Some("data.inner.x"));
        let err =
            from_value_at::<Outer>("data", serde_json::json!({"inner": {"x": "no"}})).unwrap_err();
        assert_eq!(err.field(), Some("data.inner.x"));
    }
}
