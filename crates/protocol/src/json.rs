//! Compact JSON written straight into a byte buffer, for what the server writes once per
//! event: the same bytes `serde_json::to_vec` writes for the same values, without going
//! through a `Serializer` and its per-byte string scan (strings are checked eight bytes at
//! a time, and copied in runs).

use serde_json::{Number, Value};

/// Eight copies of a byte.
const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

const HIGH_BITS: u64 = splat(0x80);

/// Bit 7 of each byte of `x` that a JSON string must escape (below U+0020, `"` or `\`),
/// possibly with stray bits above the lowest one: each test is exact for the lowest byte
/// that matches (a borrow only runs from a matching byte upward), which is all
/// [`next_escape`] reads.
///
/// Control characters and `"` are one test: flipping bit 1 maps `"` (0x22) to 0x20 and
/// every byte below 0x20 to another byte below 0x20, while every other byte stays at 0x21
/// or above, so the bytes to escape among them are those that end up below 0x21.
fn escape_bits(x: u64) -> u64 {
    let flipped = x ^ splat(0x02);
    let control_or_quote = flipped.wrapping_sub(splat(0x21)) & !flipped;
    let backslash = x ^ splat(b'\\');
    let backslash = backslash.wrapping_sub(splat(1)) & !backslash;
    (control_or_quote | backslash) & HIGH_BITS
}

/// The index of the first byte at or after `from` that must be escaped (which is also
/// where a JSON string being read ends, or needs a closer look): eight bytes at a time,
/// then the last few one by one.
#[inline]
pub(crate) fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    // The first word on its own: most keys and ids, read or written, end in it.
    if let Some(chunk) = bytes.get(from..from.wrapping_add(8)) {
        let bits = escape_bits(word(chunk));
        if bits != 0 {
            return Some(from + first_flagged(bits));
        }
        return next_escape_after(bytes, from + 8);
    }
    next_escape_after(bytes, from)
}

/// [`next_escape`] past its first word: two words at a time (one test for both), then a
/// last whole word, then the last few bytes of the text as one word.
fn next_escape_after(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let mut pairs = rest.chunks_exact(16);
    let mut at = from;
    for pair in &mut pairs {
        let (a, b) = pair.split_at(8);
        let (a, b) = (escape_bits(word(a)), escape_bits(word(b)));
        // Each is zero unless its word holds a byte to escape (stray bits only come above
        // a match), so one test covers both.
        if a | b != 0 {
            let i = if a != 0 {
                first_flagged(a)
            } else {
                8 + first_flagged(b)
            };
            return Some(at + i);
        }
        at += 16;
    }
    let mut tail = pairs.remainder();
    if let Some((head, last)) = tail.split_first_chunk::<8>() {
        let bits = escape_bits(u64::from_le_bytes(*head));
        if bits != 0 {
            return Some(at + first_flagged(bits));
        }
        tail = last;
    }
    escape_in_tail(bytes, tail.len())
}

/// The index of the first byte to escape among the last `n` (fewer than 8) bytes of
/// `bytes`. When the text has a word's worth of bytes, those `n` are read as one word:
/// the bytes before them shifted out (they may hold bytes to escape, such as the quote
/// that opened the string, and a match there would leave stray bits above it), and bytes
/// that need no escape shifted in above them.
fn escape_in_tail(bytes: &[u8], n: usize) -> Option<usize> {
    let len = bytes.len();
    if n == 0 {
        return None;
    }
    if let Some(last) = bytes.last_chunk::<8>() {
        let w = (u64::from_le_bytes(*last) >> (8 * (8 - n))) | (splat(b'a') << (8 * n));
        let bits = escape_bits(w);
        return (bits != 0).then(|| len - n + first_flagged(bits));
    }
    bytes[len - n..]
        .iter()
        .position(|&b| needs_escape(b))
        .map(|i| len - n + i)
}

/// Eight bytes as a little-endian word.
fn word(chunk: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// The index of the byte of the lowest bit set in `bits` (not zero).
fn first_flagged(bits: u64) -> usize {
    (bits.trailing_zeros() / 8) as usize
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it: `\"`, `\\`, `\b`, `\f`,
/// `\n`, `\r`, `\t`, any other byte below 0x20 as `\u00xx` (lowercase hex), and every other
/// character as it is.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Shorter than a word (most keys and ids): one look at each byte, and when none needs
    // escaping, the string as it is.
    if bytes.len() < 8 && !bytes.iter().any(|&b| needs_escape(b)) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    while let Some(at) = next_escape(bytes, start) {
        out.extend_from_slice(&bytes[start..at]);
        let b = bytes[at];
        let short = match b {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            _ => None,
        };
        match short {
            Some(c) => out.extend_from_slice(&[b'\\', c]),
            None => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends an unsigned integer.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a number as serde_json writes it.
fn push_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        push_u64(out, u);
    } else if let Some(i) = n.as_i64() {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
    } else {
        // A float: serde_json's own formatting, so the digits are the same. Writing into a
        // `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, n);
    }
}

/// Appends `v` as compact JSON, as `serde_json::to_writer` writes it.
pub fn push_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => push_number(out, n),
        Value::String(s) => push_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut obj = Object::open(out);
            for (k, v) in map {
                obj.key_escaped(k);
                push_value(obj.out, v);
            }
            obj.close();
        }
    }
}

/// A rough size of `v` in JSON, to size a buffer before writing it: exact for strings
/// without escapes, a guess for the rest.
pub(crate) fn size_hint(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.len() * 16,
        Value::Object(map) => 2 + map.len() * 24,
        _ => 8,
    }
}

/// Appends `json`, the text of one valid JSON value, without the whitespace between its
/// tokens: the same value, written as compactly as it was written otherwise (its keys'
/// order, its numbers and its strings' escapes stay as they are). Strings are passed over
/// eight bytes at a time.
pub(crate) fn push_compact(out: &mut Vec<u8>, json: &str) {
    let bytes = json.as_bytes();
    out.reserve(bytes.len());
    // `bytes[from..i]` is copied at the next whitespace, or at the end.
    let mut from = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = string_end(bytes, i + 1),
            b' ' | b'\n' | b'\t' | b'\r' => {
                out.extend_from_slice(&bytes[from..i]);
                i += 1;
                while matches!(bytes.get(i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
                    i += 1;
                }
                from = i;
            }
            _ => i += 1,
        }
    }
    out.extend_from_slice(&bytes[from..]);
}

/// Where the string whose contents start at `from` ends: just past its closing quote (the
/// end of `bytes` if it has none).
fn string_end(bytes: &[u8], mut from: usize) -> usize {
    while let Some(at) = next_escape(bytes, from) {
        match bytes[at] {
            b'"' => return at + 1,
            // The escaped byte is never the closing quote.
            b'\\' => from = at + 2,
            // A control character, which valid JSON holds in no string.
            _ => from = at + 1,
        }
    }
    bytes.len()
}

/// An object being written: its members' separators, and the closing brace.
pub(crate) struct Object<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    /// Writes `{`.
    pub(crate) fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, first: true }
    }

    fn comma(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    /// Starts a member whose key is a plain name (nothing to escape): `"key":`.
    #[inline]
    pub(crate) fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        self.comma();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// Starts a member with any key, escaped.
    pub(crate) fn key_escaped(&mut self, key: &str) -> &mut Vec<u8> {
        self.comma();
        push_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// A member whose value is a string.
    #[inline]
    pub(crate) fn str(&mut self, key: &'static str, value: &str) {
        push_str(self.key(key), value);
    }

    /// A member whose value is an unsigned integer.
    #[inline]
    pub(crate) fn u64(&mut self, key: &'static str, value: u64) {
        push_u64(self.key(key), value);
    }

    /// A member whose value is a boolean.
    #[inline]
    pub(crate) fn bool(&mut self, key: &'static str, value: bool) {
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.key(key).extend_from_slice(text);
    }

    /// A member whose value is any JSON value.
    #[inline]
    pub(crate) fn value(&mut self, key: &'static str, value: &Value) {
        push_value(self.key(key), value);
    }

    /// Every member of `map`, in its order.
    pub(crate) fn extend(&mut self, map: &serde_json::Map<String, Value>) {
        for (k, v) in map {
            push_value(self.key_escaped(k), v);
        }
    }

    /// Writes `}`.
    pub(crate) fn close(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, s);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "\"",
            "\\",
            "a\u{0}b\u{1f}c\u{7f}\u{80}",
            "\u{8}\u{c}\n\r\t",
            "exactly8",
            "seven 7",
            "0123456789abcdef\"0123456789abcdef\\",
            "é用🦀\u{2028}\u{200b}",
            "ends with a quote at byte sixteen\"",
        ] {
            assert_eq!(
                escaped(s),
                serde_json::to_string(s).expect("serializes"),
                "{s:?}"
            );
        }
    }

    /// Strings where characters that need escaping land at every position of the
    /// eight-byte chunks, among near misses (`!`, `#`, `[`, `]`, 0x20, 0x7f, non-ASCII).
    fn tricky_string() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            4 => prop::char::range('a', 'z'),
            1 => prop::sample::select(vec![
                '"', '\\', '\u{0}', '\u{8}', '\u{c}', '\n', '\r', '\t', '\u{1b}', '\u{1f}',
                ' ', '!', '#', '[', ']', '\u{7f}', '\u{80}', 'é', '🦀', '\u{2028}',
            ]),
            1 => any::<char>(),
        ];
        prop::collection::vec(c, 0..80).prop_map(|cs| cs.into_iter().collect())
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            tricky_string().prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(tricky_string(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The whitespace between tokens goes, and nothing else: a value written with
        /// whitespace (serde_json's pretty form, or with spaces around every separator of
        /// its compact form outside strings) comes out as its compact form.
        #[test]
        fn compacting_removes_the_whitespace_between_tokens(v in value(), pretty in any::<bool>()) {
            let compact = serde_json::to_string(&v).expect("serializes");
            let spaced = if pretty {
                serde_json::to_string_pretty(&v).expect("serializes")
            } else {
                let mut spaced = String::from(" \t");
                let mut in_string = false;
                let mut escaped = false;
                for c in compact.chars() {
                    spaced.push(c);
                    match c {
                        _ if escaped => escaped = false,
                        '\\' if in_string => escaped = true,
                        '"' => in_string = !in_string,
                        ',' | ':' | '[' | '{' if !in_string => spaced.push_str(" \r\n "),
                        _ => {}
                    }
                }
                spaced.push('\n');
                spaced
            };
            let mut out = b"x".to_vec();
            push_compact(&mut out, &spaced);
            prop_assert_eq!(String::from_utf8(out).expect("UTF-8"), format!("x{compact}"));
        }

        #[test]
        fn next_escape_finds_the_first_byte_to_escape(
            bytes in prop::collection::vec(
                prop_oneof![
                    4 => b'a'..=b'z',
                    1 => prop::sample::select(vec![
                        b'"', b'\\', 0, 0x1f, 0x20, b'!', b'#', b'[', b']', 0x7f, 0x80, 0x9f,
                        0xa0, 0xdc, 0xff,
                    ]),
                    1 => any::<u8>(),
                ],
                0..80,
            ),
            from in 0usize..82,
        ) {
            let expected = bytes
                .get(from..)
                .and_then(|rest| rest.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\'))
                .map(|at| from + at);
            prop_assert_eq!(next_escape(&bytes, from), expected);
        }

        #[test]
        fn next_escape_finds_a_lone_byte_to_escape_anywhere_in_a_long_run(
            len in 0usize..100,
            at in 0usize..100,
            special in prop::sample::select(vec![
                b'"', b'\\', 0, 0x1f, 0x20, b'!', b'#', b'a', 0x7f, 0x80, 0xff,
            ]),
            before in prop::sample::select(vec![b'"', b'\\', 0, b'x']),
            from in 0usize..102,
        ) {
            // Clean text but for one byte at `at`, and whatever lies before `from` (the
            // quote that opened a string, say) never counts.
            let mut bytes = vec![b'x'; len];
            if let Some(b) = bytes.get_mut(at) {
                *b = special;
            }
            for b in bytes.iter_mut().take(from.min(at)) {
                *b = before;
            }
            let expected = bytes
                .get(from..)
                .and_then(|rest| rest.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\'))
                .map(|i| from + i);
            prop_assert_eq!(next_escape(&bytes, from), expected);
        }

        #[test]
        fn any_string_is_written_as_serde_json_writes_it(
            s in prop_oneof![tricky_string(), any::<String>()]
        ) {
            prop_assert_eq!(escaped(&s), serde_json::to_string(&s).expect("serializes"));
        }

        #[test]
        fn any_value_is_written_as_serde_json_writes_it(v in value()) {
            let mut out = Vec::new();
            push_value(&mut out, &v);
            prop_assert_eq!(out, serde_json::to_vec(&v).expect("serializes"));
        }
    }
}
