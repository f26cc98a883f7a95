//! The load generator's Server-Sent Events reader for `GET /v1/stream`: the answer's head,
//! the chunked body decoded as it arrives, and SSE messages parsed from it
//! ([`agentwire_protocol::sse::Parser`]). Each message's data is an agentwire frame, read
//! as from a WebSocket.

use agentwire_protocol::sse::{Message, Parser, parse_event_id};

/// The head of the answer: its status, whether the body is chunked, and how many bytes of
/// the input it took; `None` until the whole head has arrived.
pub(crate) fn parse_head(raw: &[u8]) -> Option<(u16, bool, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    Some((status, chunked, end + 4))
}

/// The body of one event stream, fed as it is read.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    chunked: bool,
    /// Body bytes not yet de-chunked.
    raw: Vec<u8>,
    /// The SSE messages of the de-chunked body (boxed: the reader sits in an enum
    /// beside a boxed WebSocket).
    parser: Box<Parser>,
    /// The last chunk (size 0) was read.
    pub(crate) ended: bool,
}

impl Reader {
    /// A reader of a body sent chunked (`Transfer-Encoding: chunked`) or as it is.
    pub(crate) fn new(chunked: bool) -> Self {
        Reader {
            chunked,
            ..Reader::default()
        }
    }

    /// Takes body bytes as they were read.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.chunked {
            self.raw.extend_from_slice(bytes);
            self.dechunk();
        } else {
            self.parser.feed(bytes);
        }
    }

    /// Moves whole chunks from `raw` to the parser.
    fn dechunk(&mut self) {
        let mut at = 0;
        while !self.ended {
            let rest = &self.raw[at..];
            let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let size_field = std::str::from_utf8(&rest[..line_end]).unwrap_or("");
            // A chunk extension (`;name=value`) follows the size.
            let size_hex = size_field.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_hex, 16) else {
                // Not a chunk size: the stream is broken; stop reading it.
                self.ended = true;
                break;
            };
            let start = line_end + 2;
            if rest.len() < start + size + 2 {
                break;
            }
            if size == 0 {
                self.ended = true;
            } else {
                self.parser.feed(&rest[start..start + size]);
            }
            at += start + size + 2;
        }
        self.raw.drain(..at);
    }

    /// The next whole message, if one has arrived. Blocks made of comments only (the
    /// heartbeats) are skipped, as are ones without data.
    pub(crate) fn next_message(&mut self) -> Option<Message> {
        self.parser.next_message()
    }

    /// Comment lines seen (the server's heartbeats).
    #[cfg(test)]
    fn comments(&self) -> u64 {
        self.parser.comments()
    }
}

/// The seq of an `id:` value (`<epoch>:<seq>`).
pub(crate) fn id_seq(id: &str) -> Option<u64> {
    parse_event_id(id).map(|(_, seq)| seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        Transfer-Encoding: chunked\r\n\r\n";

    fn chunk(body: &str) -> Vec<u8> {
        format!("{:x}\r\n{body}\r\n", body.len()).into_bytes()
    }

    #[test]
    fn the_head_gives_status_encoding_and_length() {
        assert_eq!(parse_head(&HEAD[..20]), None);
        let mut raw = HEAD.to_vec();
        raw.extend_from_slice(b"rest");
        assert_eq!(parse_head(&raw), Some((200, true, HEAD.len())));
        let plain = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_head(plain), Some((401, false, plain.len() - 2)));
    }

    #[test]
    fn messages_come_out_of_chunks_split_anywhere() {
        let body = [
            chunk("retry: 1000\n\ndata: {\"type\":\"connection_established\"}\n\n"),
            chunk(": heartbeat\n\n"),
            chunk("id: e_1:7\ndata: {\"seq\":7}\n\nevent: close\n"),
            chunk("data: {\"code\":1013}\n\n"),
            b"0\r\n\r\n".to_vec(),
        ]
        .concat();
        // Fed one byte at a time: nothing depends on where a read ends.
        let mut r = Reader::new(true);
        let mut got = Vec::new();
        for b in &body {
            r.feed(std::slice::from_ref(b));
            while let Some(m) = r.next_message() {
                got.push(m);
            }
        }
        assert!(r.ended);
        assert_eq!(r.comments(), 1);
        let want = vec![
            Message {
                event: None,
                id: None,
                data: r#"{"type":"connection_established"}"#.into(),
            },
            Message {
                event: None,
                id: Some("e_1:7".into()),
                data: r#"{"seq":7}"#.into(),
            },
            Message {
                event: Some("close".into()),
                id: None,
                data: r#"{"code":1013}"#.into(),
            },
        ];
        assert_eq!(got, want);
        assert_eq!(id_seq("e_1:7"), Some(7));
        assert_eq!(id_seq("7"), None);
    }

    #[test]
    fn data_lines_join_and_an_unchunked_body_reads_as_it_is() {
        let mut r = Reader::new(false);
        r.feed(b"data: a\ndata:b\n\n");
        assert_eq!(r.next_message().map(|m| m.data).as_deref(), Some("a\nb"));
        assert_eq!(r.next_message(), None);
    }

    #[test]
    fn a_broken_chunk_size_ends_the_stream() {
        let mut r = Reader::new(true);
        r.feed(b"zz\r\ndata: x\n\n\r\n");
        assert!(r.ended);
        assert_eq!(r.next_message(), None);
    }
}
