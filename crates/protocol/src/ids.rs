//! Identifier newtypes, validated where they enter the process.
//!
//! User, thread and run ids (and publisher-supplied event ids, epochs and connection ids)
//! share one rule: a UTF-8 string of 1–[`MAX_ID_BYTES`] bytes with no control characters.
//! JWT subjects such as `auth0|123` and e-mail addresses pass. The string is kept in an
//! `Arc<str>`, so cloning an id — which the registry and every event do — never copies it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Longest identifier accepted, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 256;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than [`MAX_ID_BYTES`].
    #[error("is {len} bytes long; the limit is {MAX_ID_BYTES}")]
    TooLong {
        /// Length of the rejected string in bytes.
        len: usize,
    },
    /// The string contains a control character.
    #[error("contains a control character at byte {at}")]
    ControlCharacter {
        /// Byte offset of the first control character.
        at: usize,
    },
}

/// Checks the identifier rule shared by every string id.
///
/// # Errors
/// [`IdError`] naming the first rule the string breaks.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong { len: s.len() });
    }
    // Printable ASCII, as most ids are, holds no control character; anything else is
    // looked at character by character.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some((at, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(IdError::ControlCharacter { at });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Eq, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl PartialEq for $name {
            /// Two clones of one id are equal without reading their text: the maps that
            /// find an entry by an id they hold a clone of do not touch the string.
            #[inline]
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
            }
        }

        impl std::hash::Hash for $name {
            /// The text's hash, as a `str`'s: equal ids hash alike.
            #[inline]
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                (*self.0).hash(state);
            }
        }

        impl $name {
            /// Validates `s` and wraps it.
            ///
            /// # Errors
            /// [`IdError`] when `s` breaks the identifier rule.
            pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
                let s = s.as_ref();
                validate_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$name, E> {
                        $name::new(s).map_err(|e| E::custom(format_args!("{} {}", $what, e)))
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    };
}

string_id!(
    /// The user an event belongs to. On a connection it comes only from authentication
    /// (the JWT `sub`), never from anything the client sends afterwards.
    UserId,
    "a user id"
);
string_id!(
    /// A conversation thread.
    ThreadId,
    "a thread id"
);
string_id!(
    /// One agent run: the unit the run lifecycle ([`crate::RunState`]) is checked on.
    RunId,
    "a run id"
);
string_id!(
    /// An event's identity. The broker assigns a UUIDv7 unless the publisher supplied one;
    /// publishing the same id twice is answered with the first acceptance.
    EventId,
    "an event id"
);
string_id!(
    /// One live connection, assigned by the server (`c_` followed by a UUIDv7).
    ConnectionId,
    "a connection id"
);
string_id!(
    /// Names one incarnation of a user's stream. It changes whenever the stream's `seq`
    /// space restarts (a restarted in-memory node, expired history), so a client resuming
    /// with an old epoch learns that its `last_seq` means nothing here.
    Epoch,
    "an epoch"
);

/// `prefix` (two ASCII bytes) followed by a fresh UUIDv7 in simple form (32 lowercase hex
/// digits), written into a buffer on the stack: no formatter, one allocation (the `Arc`).
fn prefixed_uuid_v7_simple(prefix: [u8; 2]) -> Arc<str> {
    let mut buf = [0u8; 2 + uuid::fmt::Simple::LENGTH];
    buf[..2].copy_from_slice(&prefix);
    uuid::Uuid::now_v7().simple().encode_lower(&mut buf[2..]);
    Arc::from(std::str::from_utf8(&buf).expect("an ASCII prefix and hex digits"))
}

impl EventId {
    /// A fresh UUIDv7 event id (time-ordered, hyphenated): [`EventIdBatch`] with one id.
    pub fn generate() -> Self {
        EventIdBatch::now().next_id()
    }
}

/// Fresh UUIDv7 event ids stamped with one clock read: the ids of a publish body are
/// generated with one read of the clock instead of one per event.
///
/// Each id is a hyphenated lowercase UUIDv7: the Unix time in milliseconds (48 bits), a
/// 42-bit counter split around the version and variant bits, and 32 random bits — the
/// layout `uuid`'s own `ContextV7` gives. The counter is per thread: it starts at a
/// random 41-bit value whenever the thread's millisecond advances and goes up by one for
/// every other id, so the ids a thread generates are strictly increasing (as UUIDs and as
/// strings) and never repeat; a clock that went back, or a counter that ran out, keeps
/// the thread's last millisecond (moved on by one on overflow). Ids of different threads
/// and nodes differ by their random bits, as UUIDv7s always do.
#[derive(Debug, Clone, Copy)]
pub struct EventIdBatch {
    unix_ms: u64,
}

impl EventIdBatch {
    /// Ids stamped with the current time.
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // 48 bits of milliseconds last until the year 10889.
        let unix_ms = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        EventIdBatch { unix_ms }
    }

    /// The next id.
    pub fn next_id(&mut self) -> EventId {
        let uuid = uuid::Uuid::from_u128(V7_STATE.with(|state| {
            let mut s = state.get();
            let v = s.next(self.unix_ms);
            state.set(s);
            v
        }));
        // Written into a buffer on the stack, not through the formatter.
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        EventId(Arc::from(&*uuid.hyphenated().encode_lower(&mut buf)))
    }
}

/// Bits of a UUIDv7's counter, as `uuid`'s `ContextV7` uses them: 12 in `rand_a`, 30 at the
/// top of `rand_b`.
const V7_COUNTER_BITS: u32 = 42;
/// A fresh counter leaves its top bit clear, so at least 2^41 ids fit in a millisecond.
const V7_COUNTER_SEED_MASK: u64 = (1 << (V7_COUNTER_BITS - 1)) - 1;
const V7_COUNTER_MAX: u64 = (1 << V7_COUNTER_BITS) - 1;
const V7_MS_MASK: u64 = (1 << 48) - 1;

/// One thread's UUIDv7 state: the millisecond and counter of its last id, and its random
/// generator (wyrand, seeded from the operating system's randomness on first use).
#[derive(Debug, Clone, Copy)]
struct V7State {
    unix_ms: u64,
    counter: u64,
    rng: u64,
}

thread_local! {
    static V7_STATE: std::cell::Cell<V7State> = const {
        std::cell::Cell::new(V7State { unix_ms: 0, counter: 0, rng: 0 })
    };
}

impl V7State {
    /// The next UUIDv7 (as a number) at `unix_ms`, after every one before it.
    fn next(&mut self, unix_ms: u64) -> u128 {
        if self.rng == 0 {
            // Seeded once per thread from the operating system's randomness: the random
            // low bits of `uuid`'s own UUIDv7 and std's randomly keyed hasher. Zero is the
            // "not seeded" mark.
            use std::hash::BuildHasher;
            let hashed = std::hash::RandomState::new().hash_one(std::thread::current().id());
            self.rng = (uuid::Uuid::now_v7().as_u64_pair().1 ^ hashed) | 1;
        }
        let unix_ms = unix_ms & V7_MS_MASK;
        if unix_ms > self.unix_ms {
            self.unix_ms = unix_ms;
            self.counter = self.random() & V7_COUNTER_SEED_MASK;
        } else if self.counter < V7_COUNTER_MAX {
            self.counter += 1;
        } else {
            self.unix_ms = (self.unix_ms + 1) & V7_MS_MASK;
            self.counter = self.random() & V7_COUNTER_SEED_MASK;
        }
        let tail = self.random() as u32;
        v7_bits(self.unix_ms, self.counter, tail)
    }

    /// wyrand: 64 random bits.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.rng) * u128::from(self.rng ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    }
}

/// A UUIDv7 from its fields: `unix_ms` (48 bits), the version (7), the counter's top 12
/// bits, the variant (`10`), the counter's low 30 bits, and `tail`.
fn v7_bits(unix_ms: u64, counter: u64, tail: u32) -> u128 {
    let counter = u128::from(counter & V7_COUNTER_MAX);
    (u128::from(unix_ms & V7_MS_MASK) << 80)
        | (0x7 << 76)
        | ((counter >> 30) << 64)
        | (0b10 << 62)
        | ((counter & ((1 << 30) - 1)) << 32)
        | u128::from(tail)
}

impl ConnectionId {
    /// A fresh connection id: `c_` and a UUIDv7 in simple form.
    pub fn generate() -> Self {
        Self(prefixed_uuid_v7_simple(*b"c_"))
    }
}

impl Epoch {
    /// A fresh epoch: `e_` and a UUIDv7 in simple form.
    pub fn generate() -> Self {
        Self(prefixed_uuid_v7_simple(*b"e_"))
    }
}

/// Position of an event in its user's stream: per user, strictly increasing by one from 1,
/// assigned by the broker. `Seq(0)` means "before the first event".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The position before the first event.
    pub const ZERO: Seq = Seq(0);

    /// The next position.
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// The number inside.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Milliseconds since the Unix epoch, set by the broker when it accepts an event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_subjects_and_emails_are_valid_user_ids() {
        for s in ["auth0|123", "alice@example.com", "u1", "用户", "a b"] {
            assert!(UserId::new(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn empty_long_and_control_ids_are_rejected() {
        assert_eq!(UserId::new(""), Err(IdError::Empty));
        assert_eq!(
            UserId::new("x".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong {
                len: MAX_ID_BYTES + 1
            })
        );
        assert!(UserId::new("x".repeat(MAX_ID_BYTES)).is_ok());
        assert_eq!(
            UserId::new("ab\ncd"),
            Err(IdError::ControlCharacter { at: 2 })
        );
        assert_eq!(
            ThreadId::new("\u{7f}"),
            Err(IdError::ControlCharacter { at: 0 })
        );
    }

    proptest::proptest! {
        /// The printable-ASCII shortcut agrees with the rule as written (no `char` that
        /// is a control character).
        #[test]
        fn validation_agrees_with_the_rule(s in "[ -~]{0,3}|\\PC{0,6}|[\\x00-\\x{a0}]{0,4}") {
            let expected = if s.is_empty() {
                Err(IdError::Empty)
            } else {
                match s.char_indices().find(|(_, c)| c.is_control()) {
                    Some((at, _)) => Err(IdError::ControlCharacter { at }),
                    None => Ok(()),
                }
            };
            proptest::prop_assert_eq!(validate_id(&s), expected);
        }
    }

    #[test]
    fn deserialize_validates() {
        let err = serde_json::from_str::<UserId>("\"\"").unwrap_err();
        assert!(
            err.to_string().contains("a user id must not be empty"),
            "{err}"
        );
        let ok: UserId = serde_json::from_str("\"auth0|1\"").unwrap();
        assert_eq!(ok.as_str(), "auth0|1");
    }

    /// Equality is the text's, whether two ids share their allocation or not, and equal
    /// ids hash alike (the maps keyed by ids rely on both).
    #[test]
    fn ids_compare_and_hash_by_their_text() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let a: EventId = "evt-1".parse().expect("valid");
        let b: EventId = String::from("evt-1").try_into().expect("valid");
        let c: EventId = "evt-2".parse().expect("valid");
        assert!(!Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, b);
        assert_eq!(a, a.clone());
        assert_ne!(a, c);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        assert_eq!(hasher.hash_one(&a), hasher.hash_one("evt-1"));
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = ConnectionId::generate();
        let b = ConnectionId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("c_"));
        assert!(Epoch::generate().as_str().starts_with("e_"));
        assert!(validate_id(EventId::generate().as_str()).is_ok());
    }

    /// The bits are where `uuid`'s own UUIDv7 puts the time and a 42-bit counter: the
    /// top 96 bits agree with `Uuid::new_v7` given the same time and counter (its last 32
    /// bits are random), and the version and variant are those of a UUIDv7.
    #[test]
    fn v7_bits_are_laid_out_as_uuid_lays_them_out() {
        let mut state = V7State {
            unix_ms: 0,
            counter: 0,
            rng: 0x1234_5678_9abc_def1,
        };
        let cases = [
            (0, 0, 0),
            (1_796_042_072_123, 1, u32::MAX),
            (V7_MS_MASK, V7_COUNTER_MAX, 7),
            (1_700_000_000_000, 1 << 29, 1),
            (1_700_000_000_001, 1 << 30, 2),
            (1_700_000_000_002, 1 << 41, 3),
        ];
        let random = (0..200).map(|_| {
            (
                state.random() & V7_MS_MASK,
                state.random() & V7_COUNTER_MAX,
                state.random() as u32,
            )
        });
        for (ms, counter, tail) in cases.into_iter().chain(random.collect::<Vec<_>>()) {
            let ours = uuid::Uuid::from_u128(v7_bits(ms, counter, tail));
            let ts = uuid::Timestamp::from_unix_time(
                ms / 1000,
                (ms % 1000) as u32 * 1_000_000,
                u128::from(counter),
                42,
            );
            let theirs = uuid::Uuid::new_v7(ts);
            assert_eq!(
                ours.as_u128() >> 32,
                theirs.as_u128() >> 32,
                "{ms} {counter}"
            );
            assert_eq!(ours.as_u128() as u32, tail);
            assert_eq!(ours.get_version_num(), 7);
            assert_eq!(ours.get_variant(), uuid::Variant::RFC4122);
        }
    }

    /// A thread's ids are strictly increasing — as UUIDs and as strings, within a
    /// millisecond, across batches, when the clock goes back and when the counter runs out
    /// — so they never repeat; ids of several threads do not repeat either.
    #[test]
    fn generated_event_ids_increase_and_never_repeat() {
        let mut last = String::new();
        let mut check = |id: EventId| {
            let u = uuid::Uuid::parse_str(id.as_str()).expect("uuid");
            assert_eq!(u.get_version_num(), 7);
            assert_eq!(u.hyphenated().to_string(), id.as_str());
            assert!(id.as_str() > last.as_str(), "{id} after {last}");
            last = id.as_str().to_owned();
        };
        let mut batch = EventIdBatch::now();
        for _ in 0..10_000 {
            check(batch.next_id());
        }
        for _ in 0..1_000 {
            check(EventId::generate());
        }
        // The clock going back a minute: the thread keeps its last millisecond.
        let mut earlier = EventIdBatch {
            unix_ms: batch.unix_ms - 60_000,
        };
        for _ in 0..1_000 {
            check(earlier.next_id());
        }
        // A counter that ran out moves the millisecond on by one.
        V7_STATE.with(|s| {
            let mut state = s.get();
            state.counter = V7_COUNTER_MAX - 2;
            s.set(state);
        });
        let before = V7_STATE.with(|s| s.get().unix_ms);
        for _ in 0..10 {
            check(earlier.next_id());
        }
        assert_eq!(V7_STATE.with(|s| s.get().unix_ms), before + 1);
        for _ in 0..1_000 {
            check(EventId::generate());
        }

        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut batch = EventIdBatch::now();
                    (0..5_000).map(|_| batch.next_id()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().expect("thread") {
                assert!(all.insert(id));
            }
        }
    }

    /// Generated ids keep the shapes they always had: `c_`/`e_` and 32 lowercase hex
    /// digits, and a hyphenated lowercase UUIDv7, each parsing back as a version 7 UUID.
    #[test]
    fn generated_ids_have_their_shapes() {
        for (id, prefix) in [
            (ConnectionId::generate().as_str().to_owned(), "c_"),
            (Epoch::generate().as_str().to_owned(), "e_"),
        ] {
            let hex = id.strip_prefix(prefix).expect("prefix");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
            let u = uuid::Uuid::parse_str(hex).expect("uuid");
            assert_eq!(u.get_version_num(), 7);
            assert_eq!(u.simple().to_string(), hex);
        }
        let id = EventId::generate();
        let u = uuid::Uuid::parse_str(id.as_str()).expect("uuid");
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.to_string(), id.as_str());
    }
}
