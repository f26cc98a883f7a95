//! Reading the fields a client checks out of an agentwire frame — `type`, `seq`,
//! `from_seq`, `user_id`, and `data.sent_at_us` / `data.u` — in one pass over its JSON,
//! without building a tree or deserializing the fields it does not need.
//!
//! Every frame is walked as JSON from its first byte to its last: the fields may come in
//! any order, with any whitespace, with escaped keys or values, and every other value
//! (objects and arrays nested in any way) is stepped over by its grammar. A frame is read
//! exactly as `serde_json` would deserialize it into the fields above — a known field twice,
//! a `seq` that is not an unsigned integer, a `data` that is not an object, a truncated or
//! trailing input are errors — with one leniency that never changes what is read: inside
//! a string that is stepped over, raw control characters are not looked for (escapes are
//! checked). The tests compare the two on generated frames.

use std::borrow::Cow;
use std::fmt;

/// How deep objects and arrays may nest inside a value that is stepped over (a multiple
/// of 64). `serde_json` has no such bound there; a frame nested deeper is an error here.
pub(crate) const MAX_DEPTH: usize = 256;

/// The checked fields of one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) ty: Cow<'a, str>,
    pub(crate) seq: Option<u64>,
    /// On a merged `message_delta`: the frame covers `from_seq ..= seq`.
    pub(crate) from_seq: Option<u64>,
    pub(crate) user_id: Option<Cow<'a, str>>,
    /// `data.sent_at_us`: the publisher's scheduled send time.
    pub(crate) sent_at_us: Option<u64>,
    /// `data.u`: the user the event was published for.
    pub(crate) u: Option<u32>,
}

/// Why a frame could not be read; `at` is the byte offset where reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameError {
    pub(crate) kind: ErrorKind,
    pub(crate) at: usize,
}

/// What was wrong with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Not JSON (or JSON cut short).
    Syntax,
    /// Objects and arrays nested deeper than [`MAX_DEPTH`] in a value stepped over.
    TooDeep,
    /// Something after the frame's object.
    Trailing,
    /// The frame has no `type`.
    MissingType,
    /// A checked field appears twice.
    DuplicateField,
    /// A checked field holds a value of another type (or a number out of its range).
    WrongType,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Syntax => "not JSON",
            ErrorKind::TooDeep => "nested too deep",
            ErrorKind::Trailing => "trailing characters",
            ErrorKind::MissingType => "no `type`",
            ErrorKind::DuplicateField => "a checked field twice",
            ErrorKind::WrongType => "a checked field of the wrong type",
        };
        write!(f, "unreadable frame: {what} at byte {}", self.at)
    }
}

impl std::error::Error for FrameError {}

/// Reads `text`'s checked fields.
pub(crate) fn parse(text: &str) -> Result<Frame<'_>, FrameError> {
    let mut c = Cursor {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    let mut ty = None;
    let mut seq = None;
    let mut from_seq = None;
    let mut user_id = None;
    let mut data: Option<Option<(Option<u64>, Option<u32>)>> = None;
    c.ws();
    c.object(|c, key| {
        match key {
            b"type" => once(c, &mut ty, |c| c.string())?,
            b"seq" => once(c, &mut seq, Cursor::opt_u64)?,
            b"from_seq" => once(c, &mut from_seq, Cursor::opt_u64)?,
            b"user_id" => once(c, &mut user_id, |c| {
                if c.null()? {
                    Ok(None)
                } else {
                    c.string().map(Some)
                }
            })?,
            b"data" => once(c, &mut data, |c| {
                if c.null()? {
                    return Ok(None);
                }
                if c.peek() != Some(b'{') {
                    return Err(c.err(ErrorKind::WrongType));
                }
                let mut sent = None;
                let mut u = None;
                c.object(|c, key| match key {
                    b"sent_at_us" => once(c, &mut sent, Cursor::opt_u64),
                    b"u" => once(c, &mut u, |c| {
                        let at = c.i;
                        match c.opt_u64()? {
                            None => Ok(None),
                            Some(v) => u32::try_from(v).map(Some).map_err(|_| FrameError {
                                kind: ErrorKind::WrongType,
                                at,
                            }),
                        }
                    }),
                    _ => c.skip_value(),
                })?;
                Ok(Some((sent.flatten(), u.flatten())))
            })?,
            _ => c.skip_value()?,
        }
        Ok(())
    })?;
    c.ws();
    if c.i != c.b.len() {
        return Err(c.err(ErrorKind::Trailing));
    }
    let Some(ty) = ty else {
        return Err(c.err(ErrorKind::MissingType));
    };
    let (sent_at_us, u) = data.flatten().unwrap_or((None, None));
    Ok(Frame {
        ty,
        seq: seq.flatten(),
        from_seq: from_seq.flatten(),
        user_id: user_id.flatten(),
        sent_at_us,
        u,
    })
}

/// Reads a checked field's value into `slot`, which must still be empty.
fn once<'a, T>(
    c: &mut Cursor<'a>,
    slot: &mut Option<T>,
    read: impl FnOnce(&mut Cursor<'a>) -> Result<T, FrameError>,
) -> Result<(), FrameError> {
    if slot.is_some() {
        return Err(c.err(ErrorKind::DuplicateField));
    }
    *slot = Some(read(c)?);
    Ok(())
}

/// Bytes of a string looked at eight at a time before `memchr2` takes over: keys and ids
/// are shorter, and `memchr2` costs more than that to start.
const SHORT: usize = 32;

/// The first `"` or `\\` in `b[from..to]` (`to` if none), eight bytes at a time.
#[inline(always)]
fn find_quote_or_backslash(b: &[u8], from: usize, to: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    /// The high bit of each zero byte of `x` (and maybe of bytes above one: only the
    /// lowest set bit is exact, the one used).
    fn zeros(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    let mut i = from;
    while i + 8 <= to {
        let Some(word) = b[i..].first_chunk::<8>() else {
            break;
        };
        let w = u64::from_le_bytes(*word);
        let hits = zeros(w ^ (ONES * u64::from(b'"'))) | zeros(w ^ (ONES * u64::from(b'\\')));
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < to && b[i] != b'"' && b[i] != b'\\' {
        i += 1;
    }
    i
}

struct Cursor<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, kind: ErrorKind) -> FrameError {
        FrameError { kind, at: self.i }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), FrameError> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(ErrorKind::Syntax))
        }
    }

    /// An object at the cursor: `field` is called with each key (unescaped), the cursor
    /// on its value, and must read the value whole.
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &[u8]) -> Result<(), FrameError>,
    ) -> Result<(), FrameError> {
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err(ErrorKind::Syntax));
            }
            let open = self.i;
            if self.skip_string()? {
                let key = self.unescape(open)?;
                self.colon()?;
                field(self, key.as_bytes())?;
            } else {
                let key = &self.b[open + 1..self.i - 1];
                self.colon()?;
                field(self, key)?;
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err(ErrorKind::Syntax)),
            }
        }
    }

    /// Whitespace, a colon, whitespace: from a key to its value.
    fn colon(&mut self) -> Result<(), FrameError> {
        self.ws();
        self.expect(b':')?;
        self.ws();
        Ok(())
    }

    /// `null` at the cursor (consumed), or `false` with the cursor where it was.
    fn null(&mut self) -> Result<bool, FrameError> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), FrameError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err(ErrorKind::Syntax))
        }
    }

    /// A string at the cursor, unescaped (borrowed from the input when it has no escapes).
    fn string(&mut self) -> Result<Cow<'a, str>, FrameError> {
        if self.peek() != Some(b'"') {
            return Err(self.err(if self.peek().is_none() {
                ErrorKind::Syntax
            } else {
                ErrorKind::WrongType
            }));
        }
        let open = self.i;
        if self.skip_string()? {
            return self.unescape(open).map(Cow::Owned);
        }
        Ok(Cow::Borrowed(&self.text[open + 1..self.i - 1]))
    }

    /// The string from `open` (its quote) to the cursor, unescaped. Rare: serde_json does
    /// it (surrogate pairs and all).
    fn unescape(&self, open: usize) -> Result<String, FrameError> {
        serde_json::from_str::<String>(&self.text[open..self.i]).map_err(|_| FrameError {
            kind: ErrorKind::Syntax,
            at: open,
        })
    }

    /// Steps over the string at the cursor (on its opening quote); whether it had escapes.
    /// Inlined for what most strings are, short and without escapes.
    #[inline(always)]
    fn skip_string(&mut self) -> Result<bool, FrameError> {
        let b = self.b;
        let from = self.i + 1;
        let to = b.len().min(from + SHORT);
        let i = find_quote_or_backslash(b, from, to);
        if i < to && b[i] == b'"' {
            self.i = i + 1;
            return Ok(false);
        }
        self.skip_string_from(i)
    }

    /// The rest of [`Cursor::skip_string`] from `i`, where a long string goes on, or an
    /// escape or the end of the input is.
    #[inline(never)]
    fn skip_string_from(&mut self, mut i: usize) -> Result<bool, FrameError> {
        let b = self.b;
        let mut escaped = false;
        let mut short_end = i;
        loop {
            if i == short_end {
                match memchr::memchr2(b'"', b'\\', &b[i..]) {
                    Some(off) => i += off,
                    None => {
                        self.i = b.len();
                        return Err(self.err(ErrorKind::Syntax));
                    }
                }
            }
            if b[i] == b'"' {
                self.i = i + 1;
                return Ok(escaped);
            }
            escaped = true;
            match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = b.get(i + 2..i + 6);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        self.i = i;
                        return Err(self.err(ErrorKind::Syntax));
                    }
                    i += 6;
                }
                _ => {
                    self.i = i;
                    return Err(self.err(ErrorKind::Syntax));
                }
            }
            short_end = b.len().min(i + SHORT);
            i = find_quote_or_backslash(b, i, short_end);
        }
    }

    /// `null`, or an unsigned integer that fits a `u64`.
    fn opt_u64(&mut self) -> Result<Option<u64>, FrameError> {
        let b = self.b;
        let start = self.i;
        let wrong = FrameError {
            kind: ErrorKind::WrongType,
            at: start,
        };
        let mut i = start;
        let mut v: u64 = 0;
        let mut overflow = false;
        while let Some(&d) = b.get(i) {
            let d = d.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d))) {
                Some(next) => v = next,
                None => overflow = true,
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            if self.null()? {
                return Ok(None);
            }
            // A string, a negative number, an object…: not a `u64` either way.
            return Err(if self.peek().is_none() {
                self.err(ErrorKind::Syntax)
            } else {
                wrong
            });
        }
        if digits > 1 && b[start] == b'0' {
            return Err(FrameError {
                kind: ErrorKind::Syntax,
                at: start,
            });
        }
        // A fraction or an exponent makes a float, which is not a `u64`; so is an
        // integer past `u64::MAX` (serde_json reads it as a float).
        if overflow || matches!(b.get(i), Some(b'.' | b'e' | b'E')) {
            return Err(wrong);
        }
        self.i = i;
        Ok(Some(v))
    }

    /// Steps over any JSON value at the cursor. Iterative, like `serde_json`'s own: the
    /// containers it is inside are a stack of bits (1: an object), at most [`MAX_DEPTH`].
    fn skip_value(&mut self) -> Result<(), FrameError> {
        match self.peek() {
            Some(b'"') => self.skip_string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            _ => self.skip_nested(),
        }
    }

    /// [`Cursor::skip_value`] of any value, objects and arrays included.
    fn skip_nested(&mut self) -> Result<(), FrameError> {
        let mut stack = [0u64; MAX_DEPTH / 64];
        let mut depth = 0usize;
        loop {
            // A value.
            match self.peek() {
                Some(b'"') => {
                    self.skip_string()?;
                }
                Some(open @ (b'{' | b'[')) => {
                    if depth == MAX_DEPTH {
                        return Err(self.err(ErrorKind::TooDeep));
                    }
                    let object = open == b'{';
                    let (word, bit) = (depth / 64, 1u64 << (depth % 64));
                    if object {
                        stack[word] |= bit;
                    } else {
                        stack[word] &= !bit;
                    }
                    depth += 1;
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.i += 1;
                        depth -= 1;
                    } else {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                _ => return Err(self.err(ErrorKind::Syntax)),
            }
            // After a value: the next one of its container, or the container's end.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = stack[(depth - 1) / 64] & (1u64 << ((depth - 1) % 64)) != 0;
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        self.ws();
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if object => {
                        self.i += 1;
                        depth -= 1;
                    }
                    Some(b']') if !object => {
                        self.i += 1;
                        depth -= 1;
                    }
                    _ => return Err(self.err(ErrorKind::Syntax)),
                }
            }
        }
    }

    /// A key of an object being stepped over, its colon and the whitespace up to its value.
    fn key(&mut self) -> Result<(), FrameError> {
        if self.peek() != Some(b'"') {
            return Err(self.err(ErrorKind::Syntax));
        }
        self.skip_string()?;
        self.ws();
        self.expect(b':')?;
        self.ws();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn skip_number(&mut self) -> Result<(), FrameError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int = self.digits();
        if int == 0 || (int > 1 && self.b[self.i - int] == b'0') {
            return Err(self.err(ErrorKind::Syntax));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err(ErrorKind::Syntax));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err(ErrorKind::Syntax));
            }
        }
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let n = self.b[self.i..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.i += n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    /// What the clients deserialized before this reader: the reference it must agree with.
    #[derive(Deserialize)]
    struct SerdeFrame<'a> {
        #[serde(rename = "type", borrow)]
        ty: Cow<'a, str>,
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default)]
        from_seq: Option<u64>,
        #[serde(default, borrow)]
        user_id: Option<Cow<'a, str>>,
        #[serde(default)]
        data: Option<Marks>,
    }

    #[derive(Deserialize)]
    struct Marks {
        #[serde(default)]
        sent_at_us: Option<u64>,
        #[serde(default)]
        u: Option<u32>,
    }

    fn by_serde(text: &str) -> Option<Frame<'static>> {
        let f: SerdeFrame<'_> = serde_json::from_str(text).ok()?;
        let (sent_at_us, u) = f.data.map_or((None, None), |m| (m.sent_at_us, m.u));
        Some(Frame {
            ty: Cow::Owned(f.ty.into_owned()),
            seq: f.seq,
            from_seq: f.from_seq,
            user_id: f.user_id.map(|u| Cow::Owned(u.into_owned())),
            sent_at_us,
            u,
        })
    }

    fn agree(text: &str) {
        let ours = parse(text).ok();
        assert_eq!(ours, by_serde(text), "{text}");
    }

    #[test]
    fn reads_an_agentwire_frame() {
        let text = r#"{"type":"agent_thinking","seq":12,"event_id":"e_1","ts":1700000000000,"thread_id":"t3","run_id":"r1","data":{"thought":"xxxx","step":1,"sent_at_us":1700000000123456,"u":3,"k":12}}"#;
        let f = parse(text).expect("reads");
        assert_eq!(f.ty, "agent_thinking");
        assert!(matches!(f.ty, Cow::Borrowed(_)));
        assert_eq!(f.seq, Some(12));
        assert_eq!(f.from_seq, None);
        assert_eq!(f.sent_at_us, Some(1_700_000_000_123_456));
        assert_eq!(f.u, Some(3));
        agree(text);
    }

    #[test]
    fn fields_in_any_order_with_whitespace_and_escapes() {
        let text = " {\n \"data\" : { \"u\" : 7 , \"nested\" : {\"seq\": 99, \"u\": [1, {\"u\": 5}]}, \"sent_at_us\" : 5 } ,\
                    \"s\\u0065q\" : 4, \"from_seq\": 2, \"user_id\": \"a\\\"b\\u00e9\", \"type\" : \"message_delta\" } \r\n";
        let f = parse(text).expect("reads");
        assert_eq!(f.seq, Some(4));
        assert_eq!(f.from_seq, Some(2));
        assert_eq!(f.u, Some(7));
        assert_eq!(f.sent_at_us, Some(5));
        assert_eq!(f.user_id.as_deref(), Some("a\"bé"));
        assert_eq!(f.ty, "message_delta");
        agree(text);
    }

    #[test]
    fn a_marker_inside_a_string_is_not_read() {
        let text = r#"{"type":"x","pad":"\",\"seq\":5,\"u\":1","data":{"thought":"\"u\":9,","u":2},"seq":6}"#;
        let f = parse(text).expect("reads");
        assert_eq!((f.seq, f.u), (Some(6), Some(2)));
        agree(text);
    }

    #[test]
    fn finds_the_first_quote_or_backslash_at_any_offset() {
        for len in 0..40 {
            for at in 0..=len {
                for stop in [b'"', b'\\'] {
                    let mut b = vec![b'x'; len];
                    if at < len {
                        b[at] = stop;
                        // A later one must not be found first.
                        if at + 1 < len {
                            b[len - 1] = b'"';
                        }
                    }
                    for from in 0..=at.min(len) {
                        let want = if at < len { at } else { len };
                        assert_eq!(
                            find_quote_or_backslash(&b, from, len),
                            want,
                            "{len} {at} {from}"
                        );
                    }
                }
            }
        }
        // Bytes just around the two, and high bytes, are not taken for them.
        let b = "!#[]\u{7f}é\u{ff}\u{22}".as_bytes();
        assert_eq!(find_quote_or_backslash(b, 0, b.len()), b.len() - 1);
        let b = [0x21, 0x23, 0x5b, 0x5d, 0xa2, 0xdc, 0x7f, 0x80, 0xff, 0x5c];
        assert_eq!(find_quote_or_backslash(&b, 0, b.len()), 9);
    }

    #[test]
    fn reads_integers_at_the_edges_of_u64() {
        for (text, want) in [
            ("0", Some(0)),
            ("9999999999999999999", Some(9_999_999_999_999_999_999)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("99999999999999999999", None),
            ("100000000000000000000", None),
        ] {
            let frame = format!(r#"{{"type":"a","seq":{text}}}"#);
            assert_eq!(parse(&frame).ok().and_then(|f| f.seq), want, "{text}");
            agree(&frame);
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for (text, kind) in [
            (r#"{"seq":1}"#, ErrorKind::MissingType),
            (r#"{"type":"a","seq":1,"seq":2}"#, ErrorKind::DuplicateField),
            (
                r#"{"type":"a","seq":null,"seq":2}"#,
                ErrorKind::DuplicateField,
            ),
            (
                r#"{"type":"a","data":{"u":1,"u":1}}"#,
                ErrorKind::DuplicateField,
            ),
            (r#"{"type":"a","seq":"1"}"#, ErrorKind::WrongType),
            (r#"{"type":"a","seq":-1}"#, ErrorKind::WrongType),
            (r#"{"type":"a","seq":1.0}"#, ErrorKind::WrongType),
            (r#"{"type":"a","seq":1e3}"#, ErrorKind::WrongType),
            (
                r#"{"type":"a","seq":18446744073709551616}"#,
                ErrorKind::WrongType,
            ),
            (
                r#"{"type":"a","data":{"u":4294967296}}"#,
                ErrorKind::WrongType,
            ),
            (r#"{"type":"a","data":"x"}"#, ErrorKind::WrongType),
            (r#"{"type":1}"#, ErrorKind::WrongType),
            (r#"{"type":"a","seq":01}"#, ErrorKind::Syntax),
            (r#"{"type":"a","seq":1"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":[1,}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":[1}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":{"a":1]}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":{"a"}}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":{1:2}}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":{"a":1,}}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":"\q"}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":"\u12"}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":tru}"#, ErrorKind::Syntax),
            (r#"{"type":"a","x":1.}"#, ErrorKind::Syntax),
            (r#"{"type":"a" "seq":1}"#, ErrorKind::Syntax),
            (r#"{"type":"a"}x"#, ErrorKind::Trailing),
            (r#"{"type":"a"}{}"#, ErrorKind::Trailing),
            (r#"["type","a"]"#, ErrorKind::Syntax),
            ("", ErrorKind::Syntax),
        ] {
            assert_eq!(parse(text).map_err(|e| e.kind), Err(kind), "{text}");
            assert!(by_serde(text).is_none(), "serde_json reads {text}");
        }
        let nested = |n: usize| {
            format!(
                r#"{{"type":"a","x":{}1{}}}"#,
                r#"[{"a":"#.repeat(n),
                "}]".repeat(n)
            )
        };
        // 2 × 128 containers are stepped over; one more is refused.
        agree(&nested(MAX_DEPTH / 2));
        assert_eq!(
            parse(&nested(MAX_DEPTH / 2 + 1)).map_err(|e| e.kind),
            Err(ErrorKind::TooDeep)
        );
    }

    /// Any JSON value, as serde_json writes it.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::String),
            "[a-z\"\\\\ ,:{}\\[\\]]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::vec(("[a-z_]{0,10}", inner), 0..4)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// A key as JSON, each character possibly written as a `\u` escape.
    fn key_json(key: &str, escape: &[bool]) -> String {
        let mut s = String::from("\"");
        for (i, ch) in key.chars().enumerate() {
            if escape.get(i).copied().unwrap_or(false) {
                s.push_str(&format!("\\u{:04x}", u32::from(ch)));
            } else {
                s.push(ch);
            }
        }
        s.push('"');
        s
    }

    /// A field's value: often of the type the reader wants, sometimes anything.
    fn field_value(key: &'static str) -> BoxedStrategy<String> {
        let any_value = value().prop_map(|v| v.to_string()).boxed();
        let wanted = match key {
            "seq" | "from_seq" | "sent_at_us" | "u" => prop_oneof![
                (0u64..100).prop_map(|v| v.to_string()),
                any::<u64>().prop_map(|v| v.to_string()),
                any::<u32>().prop_map(|v| v.to_string()),
                Just("null".to_owned()),
            ]
            .boxed(),
            "type" | "user_id" => any::<String>()
                .prop_map(|s| serde_json::Value::String(s).to_string())
                .boxed(),
            _ => any_value.clone(),
        };
        prop_oneof![12 => wanted, 1 => any_value].boxed()
    }

    /// Fields every generated frame has (`type`, `seq`) or often has.
    const TOP: [&str; 4] = ["type", "seq", "from_seq", "user_id"];
    const MARKS: [&str; 2] = ["sent_at_us", "u"];
    /// Other fields, a checked one now and then (then twice in the frame).
    const TOP_EXTRA: [&str; 12] = [
        "event_id",
        "ts",
        "run_id",
        "thread_id",
        "u",
        "k",
        "event_id",
        "ts",
        "run_id",
        "type",
        "seq",
        "from_seq",
    ];
    const MARKS_EXTRA: [&str; 8] = ["k", "seq", "thought", "step", "k", "seq", "u", "sent_at_us"];

    fn field(key: &'static str) -> impl Strategy<Value = (String, String)> {
        (
            Just(key),
            prop::collection::vec(prop::bool::weighted(0.1), 12),
        )
            .prop_flat_map(|(k, esc)| (Just(key_json(k, &esc)), field_value(k)))
    }

    /// `base`'s fields (each left out with probability `drop`), then up to `max` of
    /// `extra`, in a shuffled order.
    fn fields(
        base: &'static [&'static str],
        extra: &'static [&'static str],
        max: usize,
    ) -> impl Strategy<Value = Vec<(String, String)>> {
        let base: Vec<_> = base
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                // The first field (`type`, `sent_at_us`) is rarely missing, the others often.
                let keep = if i == 0 { 0.95 } else { 0.6 };
                prop::option::weighted(keep, field(k))
            })
            .collect();
        let extra = prop::collection::vec(prop::sample::select(extra).prop_flat_map(field), 0..max);
        (base, extra)
            .prop_map(|(base, extra)| base.into_iter().flatten().chain(extra).collect::<Vec<_>>())
            .prop_shuffle()
    }

    fn join(fields: &[(String, String)], ws: &str) -> String {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{k}{ws}:{ws}{v}"))
            .collect();
        format!("{{{ws}{}{ws}}}", body.join(&format!("{ws},{ws}")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn reads_generated_frames_as_serde_json_does(
            top in fields(&TOP, &TOP_EXTRA, 4),
            marks in fields(&MARKS, &MARKS_EXTRA, 3),
            data_at in 0usize..8,
            data_kind in 0u8..5,
            ws in prop::sample::select(vec!["", " ", "\n\t "]),
        ) {
            let data = match data_kind {
                0 => None,
                1 => Some("null".to_owned()),
                _ => Some(join(&marks, ws)),
            };
            let mut top = top;
            if let Some(d) = data {
                top.insert(data_at.min(top.len()), ("\"data\"".to_owned(), d));
            }
            let text = join(&top, ws);
            agree(&text);
        }

        #[test]
        fn never_panics_on_bytes(s in any::<String>()) {
            let _ = parse(&s);
        }

        #[test]
        fn a_cut_frame_is_never_read(cut in 1usize..200) {
            let text = r#"{"type":"agent_thinking","seq":12,"event_id":"e_1","thread_id":"t3","data":{"thought":"x\"y","sent_at_us":1700000000123456,"u":3,"k":12}}"#;
            let cut = cut.min(text.len() - 1);
            prop_assert!(parse(&text[..cut]).is_err());
        }
    }
}
