//! The Lua scripts (`lua/*.lua`, each prefixed with `lua/common.lua`), the pieces of a
//! frame the publish script joins around `seq` and `ts`, and the decoding of what the
//! scripts store and publish.

use agentwire_manager::compose_frame;
use agentwire_protocol::{Epoch, EventId, EventType, Seq, Timestamp};
use bytes::Bytes;

/// Accepts a batch of one user's events (dedupe, seq, ts, epoch, append, publish).
pub(crate) const PUBLISH: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/publish.lua")
);
/// Reads a range of history (and creates the epoch of a new stream).
pub(crate) const HISTORY: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/history.lua")
);
/// The run registry: reservations of run state, counted for the whole cluster.
pub(crate) const RUNS: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/runs.lua")
);
/// A heartbeat of one run: a sign of life for its stall timeout.
pub(crate) const HEARTBEAT: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/heartbeat.lua")
);
/// Connection leases of one user: admit, renew, release.
pub(crate) const LEASES: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/leases.lua")
);
/// One user's delivery receipt: max-only record.
pub(crate) const RECEIPTS: &str = include_str!("../lua/receipts.lua");
/// The presence of the nodes sharing the Redis (the control channel's).
pub(crate) const PRESENCE: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/presence.lua")
);
/// One publisher's publish rate (GCRA).
pub(crate) const RATE: &str = include_str!("../lua/rate.lua");
/// Finds the first acceptance of an `event_id` inside the dedupe window.
pub(crate) const LOOKUP: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/lookup.lua")
);

/// A frame cut around its `seq` and `ts` values: the frame of `seq` and `ts` is
/// `head`, `seq` in decimal, `mid`, `ts` in decimal, `tail`.
///
/// The pieces come from [`compose_frame`] itself (composed with `seq` and `ts` 0 and cut
/// at those two digits), so the script that joins them writes the frame byte for byte as
/// every other broker does, without a second copy of the frame layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameParts {
    pub(crate) head: Bytes,
    pub(crate) mid: Bytes,
    pub(crate) tail: Bytes,
}

/// Why a composed frame could not be cut: [`compose_frame`]'s layout changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayoutChanged;

impl FrameParts {
    pub(crate) fn new(
        event_type: EventType,
        event_id: &EventId,
        body: &[u8],
    ) -> Result<Self, LayoutChanged> {
        const SEQ: &[u8] = b"\"seq\":0,";
        const TS: &[u8] = b",\"ts\":0";
        let frame = compose_frame(event_type, Seq(0), event_id, Timestamp(0), body);
        // The type is a wire name (no quotes), so the first `"seq":` is the field. In the
        // JSON string of the event id every `"` is escaped, so `,"ts":` cannot occur
        // there: its first occurrence after `seq` is the field.
        let seq_at = find(&frame, SEQ, 0).ok_or(LayoutChanged)? + SEQ.len() - 2;
        let ts_at = find(&frame, TS, seq_at).ok_or(LayoutChanged)? + TS.len() - 1;
        Ok(FrameParts {
            head: frame.slice(..seq_at),
            mid: frame.slice(seq_at + 1..ts_at),
            tail: frame.slice(ts_at + 1..),
        })
    }

    /// The frame these parts make for `seq` and `ts`, as the script joins it.
    #[cfg(test)]
    pub(crate) fn join(&self, seq: Seq, ts: Timestamp) -> Vec<u8> {
        let mut out = self.head.to_vec();
        out.extend_from_slice(seq.get().to_string().as_bytes());
        out.extend_from_slice(&self.mid);
        out.extend_from_slice(ts.as_millis().to_string().as_bytes());
        out.extend_from_slice(&self.tail);
        out
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + from)
}

/// What the publish script appends (stream field `m`) and, after a header, publishes:
/// `<type>\n<event_id>\n<frame>`. Identifiers hold no control characters, so the first two
/// newlines are the separators; the frame is the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) event_type: EventType,
    pub(crate) event_id: EventId,
    pub(crate) frame: Bytes,
}

/// What the broker read from Redis is not what its scripts write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} from Redis")]
pub(crate) struct Malformed {
    pub(crate) what: &'static str,
}

fn malformed(what: &'static str) -> Malformed {
    Malformed { what }
}

/// Splits off the text up to the next newline.
fn field<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a str, Malformed> {
    let at = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(malformed(what))?;
    let text = std::str::from_utf8(&rest[..at]).map_err(|_| malformed(what))?;
    *rest = &rest[at + 1..];
    Ok(text)
}

impl Entry {
    /// Decodes an entry; `raw` is shared, so the frame is not copied.
    pub(crate) fn decode(raw: &Bytes) -> Result<Self, Malformed> {
        let mut rest: &[u8] = raw;
        let event_type = field(&mut rest, "entry type")?
            .parse()
            .map_err(|_| malformed("entry type"))?;
        let event_id = EventId::new(field(&mut rest, "entry event_id")?)
            .map_err(|_| malformed("entry event_id"))?;
        let frame = raw.slice(raw.len() - rest.len()..);
        Ok(Entry {
            event_type,
            event_id,
            frame,
        })
    }
}

/// A published message: `<seq>\n<ts>\n<epoch>\n` followed by an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) seq: Seq,
    pub(crate) ts: Timestamp,
    pub(crate) epoch: Epoch,
    pub(crate) entry: Entry,
}

impl Message {
    pub(crate) fn decode(raw: &Bytes) -> Result<Self, Malformed> {
        let mut rest: &[u8] = raw;
        let seq = field(&mut rest, "message seq")?
            .parse()
            .map_err(|_| malformed("message seq"))?;
        let ts = field(&mut rest, "message ts")?
            .parse()
            .map_err(|_| malformed("message ts"))?;
        let epoch = Epoch::new(field(&mut rest, "message epoch")?)
            .map_err(|_| malformed("message epoch"))?;
        let entry = Entry::decode(&raw.slice(raw.len() - rest.len()..))?;
        Ok(Message {
            seq: Seq(seq),
            ts: Timestamp(ts),
            epoch,
            entry,
        })
    }
}

/// Parses a stream entry id, `<seq>-<ts>`.
pub(crate) fn entry_id(id: &str) -> Result<(Seq, Timestamp), Malformed> {
    let (seq, ts) = id.split_once('-').ok_or(malformed("stream entry id"))?;
    let seq = seq.parse().map_err(|_| malformed("stream entry id"))?;
    let ts = ts.parse().map_err(|_| malformed("stream entry id"))?;
    Ok((Seq(seq), Timestamp(ts)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{Custom, Event};

    fn body(value: serde_json::Value) -> Bytes {
        Bytes::from(
            Event::new(
                Some("t1".parse().expect("id")),
                None,
                Custom {
                    name: "n".into(),
                    value,
                    extra: Default::default(),
                },
            )
            .body_json(),
        )
    }

    #[test]
    fn parts_join_to_the_composed_frame() {
        let ids = [
            "plain",
            "with \"quotes\" and \\ backslash",
            "looks like ,\"ts\":0 inside",
            "\"seq\":0,",
            "ünïcødé ✓",
        ];
        let bodies = [
            body(serde_json::json!({"ts": 0, "seq": 0})),
            body(serde_json::json!(",\"ts\":0")),
            Bytes::from_static(b"{}"),
        ];
        for id in ids {
            let id = EventId::new(id).expect("valid id");
            for body in &bodies {
                for t in EventType::ALL {
                    let parts = FrameParts::new(t, &id, body).expect("layout");
                    for (seq, ts) in [(1, 0), (10, 1_764_104_400_123), (u64::MAX, u64::MAX)] {
                        let want = compose_frame(t, Seq(seq), &id, Timestamp(ts), body);
                        assert_eq!(parts.join(Seq(seq), Timestamp(ts)), want.to_vec());
                    }
                }
            }
        }
    }

    #[test]
    fn messages_and_entries_decode() {
        let raw = Bytes::from_static(b"7\n99\ne_1\ncustom\nid \"x\"\n{\"a\":\"\\n\"}\n");
        let m = Message::decode(&raw).expect("decodes");
        assert_eq!(
            (m.seq, m.ts, m.epoch.as_str()),
            (Seq(7), Timestamp(99), "e_1")
        );
        assert_eq!(m.entry.event_type, EventType::Custom);
        assert_eq!(m.entry.event_id.as_str(), "id \"x\"");
        assert_eq!(&m.entry.frame[..], b"{\"a\":\"\\n\"}\n");
        for bad in [
            &b""[..],
            b"x\n1\ne\ncustom\nid\n{}",
            b"1\n1\ne\nnope\nid\n{}",
            b"1\n1\ne\ncustom\n",
            b"1\n1\n\ncustom\nid\n{}",
        ] {
            assert!(
                Message::decode(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(entry_id("3-17"), Ok((Seq(3), Timestamp(17))));
        assert!(entry_id("3").is_err() && entry_id("a-1").is_err());
    }
}
