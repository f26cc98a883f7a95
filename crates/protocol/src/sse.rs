//! The Server-Sent Events form of the stream (`GET /v1/stream`): how one message is
//! written, and an incremental parser that reads messages back as a browser's
//! `EventSource` does.
//!
//! Every event's SSE `id` is `<epoch>:<seq>`, what a reconnect sends as `Last-Event-ID`.
//!
//! ```
//! use agentwire_protocol::sse::{Parser, write_message};
//!
//! let mut out = Vec::new();
//! write_message(&mut out, None, Some(("e_1", 7)), br#"{"seq":7}"#);
//! let mut parser = Parser::new();
//! let (head, tail) = out.split_at(5);
//! parser.feed(head);
//! assert_eq!(parser.next_message(), None);
//! parser.feed(tail);
//! let m = parser.next_message().expect("a whole message");
//! assert_eq!(m.id.as_deref(), Some("e_1:7"));
//! assert_eq!(m.data, r#"{"seq":7}"#);
//! ```

/// Appends one SSE message to `out`: `event` (none: a `message`), `id` as `<epoch>:<seq>`,
/// and `data`, one `data:` line per line of it (serialized JSON has none, but a line break
/// — `\n`, `\r\n` or `\r` — must never end the message early). `event` and the epoch hold
/// no line break.
pub fn write_message(out: &mut Vec<u8>, event: Option<&str>, id: Option<(&str, u64)>, data: &[u8]) {
    out.reserve(data.len() + 64);
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    if let Some((epoch, seq)) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(epoch.as_bytes());
        out.push(b':');
        out.extend_from_slice(seq.to_string().as_bytes());
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
}

/// Parses an SSE `id` as this stream writes them, `<epoch>:<seq>`.
pub fn parse_event_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.rsplit_once(':')?;
    let seq = seq.parse().ok()?;
    (!epoch.is_empty()).then_some((epoch, seq))
}

/// One SSE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The `event:` field (`None`: the default, `message`).
    pub event: Option<String>,
    /// The `id:` field of this message, if it had one.
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The fields of the message being read.
#[derive(Debug, Default)]
struct Pending {
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

/// Reads SSE messages from a stream's bytes, fed as they arrive, cut anywhere. Lines end
/// with `\n`, `\r\n` or `\r`; a blank line ends a message. A message without `data:` lines
/// (such as one made of comments only, the server's heartbeats) is skipped; comments are
/// counted, and `retry:` values kept. Bytes that are not UTF-8 are read as U+FFFD. Pure:
/// no I/O, no panics.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes fed and not yet read; `buf[..start]` is read.
    buf: Vec<u8>,
    start: usize,
    /// The last line ended with `\r`: a `\n` right after it belongs to that line end.
    after_cr: bool,
    pending: Pending,
    comments: u64,
    retry: Option<u64>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Parser::default()
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Option<Message> {
        loop {
            if self.after_cr {
                match self.buf.get(self.start) {
                    None => return None,
                    Some(b'\n') => self.start += 1,
                    Some(_) => {}
                }
                self.after_cr = false;
            }
            let rest = &self.buf[self.start..];
            let end = memchr::memchr2(b'\n', b'\r', rest)?;
            self.after_cr = rest[end] == b'\r';
            let line = String::from_utf8_lossy(&rest[..end]).into_owned();
            self.start += end + 1;
            if line.is_empty() {
                let pending = std::mem::take(&mut self.pending);
                if let Some(data) = pending.data {
                    return Some(Message {
                        event: pending.event,
                        id: pending.id,
                        data,
                    });
                }
                continue;
            }
            self.take_line(&line);
        }
    }

    fn take_line(&mut self, line: &str) {
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.pending.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.pending.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            "data" => match &mut self.pending.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.pending.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }

    /// Comment lines read so far (the server's heartbeats).
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// The newest `retry:` value read, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> (Vec<Message>, Parser) {
        let mut parser = Parser::new();
        let mut got = Vec::new();
        for chunk in chunks {
            parser.feed(chunk);
            while let Some(m) = parser.next_message() {
                got.push(m);
            }
        }
        (got, parser)
    }

    #[test]
    fn a_message_has_an_id_and_never_ends_early() {
        let mut out = Vec::new();
        write_message(&mut out, None, Some(("e_1", 7)), b"{\"a\":1}");
        write_message(&mut out, Some("close"), None, b"x\ny\r\nz\rw");
        write_message(&mut out, None, None, b"");
        assert_eq!(
            &out[..],
            &b"id: e_1:7\ndata: {\"a\":1}\n\n\
               event: close\ndata: x\ndata: y\ndata: z\ndata: w\n\n\
               data: \n\n"[..]
        );
    }

    #[test]
    fn event_ids_read_back() {
        assert_eq!(parse_event_id("e_1:7"), Some(("e_1", 7)));
        assert_eq!(parse_event_id("a:b:7"), Some(("a:b", 7)));
        assert_eq!(parse_event_id(":7"), None);
        assert_eq!(parse_event_id("e_1"), None);
        assert_eq!(parse_event_id("e_1:-1"), None);
    }

    #[test]
    fn comments_retry_and_fields_are_read_as_event_source_reads_them() {
        let stream = b"retry: 1000\n\n: heartbeat\n\ndata: {\"type\":\"x\"}\n\n\
            id: e_1:7\r\ndata:a\r\ndata\r\n\r\nevent: close\rdata: {}\r\revent: nothing\n\n\
            retry: soon\nfield: ignored\ndata: \xff\n\n";
        let (got, parser) = parse_all(&[stream]);
        let message = |event: Option<&str>, id: Option<&str>, data: &str| Message {
            event: event.map(str::to_owned),
            id: id.map(str::to_owned),
            data: data.to_owned(),
        };
        assert_eq!(
            got,
            vec![
                message(None, None, r#"{"type":"x"}"#),
                message(None, Some("e_1:7"), "a\n"),
                message(Some("close"), None, "{}"),
                message(None, None, "\u{fffd}"),
            ]
        );
        assert_eq!((parser.comments(), parser.retry()), (1, Some(1000)));
    }

    #[test]
    fn a_message_waits_for_its_blank_line_and_a_cr_for_what_follows() {
        let mut parser = Parser::new();
        parser.feed(b"data: a\r");
        assert_eq!(parser.next_message(), None);
        parser.feed(b"\n\r");
        assert_eq!(parser.next_message().map(|m| m.data).as_deref(), Some("a"));
        parser.feed(b"\ndata: b\n");
        assert_eq!(
            parser.next_message(),
            None,
            "the \\n after a \\r ends no message"
        );
        parser.feed(b"\n");
        assert_eq!(parser.next_message().map(|m| m.data).as_deref(), Some("b"));
    }

    /// `data` as a parser gives it back: every line break a `\n`.
    fn lines_joined(data: &str) -> String {
        data.replace("\r\n", "\n").replace('\r', "\n")
    }

    proptest! {
        #[test]
        fn written_messages_parse_back_whatever_the_chunks(
            messages in prop::collection::vec(
                (
                    prop::option::of("[a-z_]{1,12}"),
                    prop::option::of(("[A-Za-z0-9_-]{1,16}", any::<u64>())),
                    "(\\PC|[\r\n]){0,40}",
                ),
                0..8,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut stream = b"retry: 1000\n\n".to_vec();
            for (event, id, data) in &messages {
                write_message(
                    &mut stream,
                    event.as_deref(),
                    id.as_ref().map(|(epoch, seq)| (epoch.as_str(), *seq)),
                    data.as_bytes(),
                );
                stream.extend_from_slice(b": heartbeat\n\n");
            }
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            at.push(0);
            at.push(stream.len());
            at.sort_unstable();
            let chunks: Vec<&[u8]> = at.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            let (got, parser) = parse_all(&chunks);
            let want: Vec<Message> = messages
                .iter()
                .map(|(event, id, data)| Message {
                    event: event.clone(),
                    id: id.as_ref().map(|(epoch, seq)| format!("{epoch}:{seq}")),
                    data: lines_joined(data),
                })
                .collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(parser.comments(), messages.len() as u64);
            prop_assert_eq!(parser.retry(), Some(1000));
        }
    }
}
