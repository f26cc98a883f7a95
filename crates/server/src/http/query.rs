//! The query string of a connection handshake (`GET /ws`, `GET /v1/stream`): the tokens
//! it carries and the resume point it asks for.

use agentwire_manager::Resume;
use agentwire_protocol::{Epoch, Seq};

/// The query string of a connection handshake: `token` (every one given: two that differ
/// are refused), `last_seq`, `epoch`, `format`. Other parameters are ignored.
#[derive(Debug, Default)]
pub(crate) struct HandshakeQuery {
    pub(crate) tokens: Vec<String>,
    pub(crate) last_seq: Option<String>,
    pub(crate) epoch: Option<String>,
    /// `format`: `agentwire` (the default) or `ag-ui`.
    pub(crate) format: Option<String>,
}

/// Decodes a handshake's query string.
pub(crate) fn parse_handshake_query(raw: Option<&str>) -> HandshakeQuery {
    let mut q = HandshakeQuery::default();
    // `application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte; a malformed escape
    // is kept as it is written, and bytes that are not UTF-8 become U+FFFD.
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "token" => {
                q.tokens.push(v.into_owned());
                continue;
            }
            "last_seq" => &mut q.last_seq,
            "epoch" => &mut q.epoch,
            "format" => &mut q.format,
            _ => continue,
        };
        *slot = Some(v.into_owned());
    }
    q
}

/// The resume point `?last_seq=&epoch=` asks for; the field and the reason when it is
/// malformed.
pub(crate) fn resume_from_query(
    q: &HandshakeQuery,
) -> Result<Option<Resume>, (&'static str, String)> {
    match (&q.last_seq, &q.epoch) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(("epoch", "is required with `last_seq`".into())),
        (None, Some(_)) => Err(("last_seq", "is required with `epoch`".into())),
        (Some(seq), Some(epoch)) => {
            let last_seq = seq
                .parse::<u64>()
                .map_err(|_| ("last_seq", "must be a non-negative integer".to_owned()))?;
            let epoch = Epoch::new(epoch).map_err(|e| ("epoch", format!("an epoch {e}")))?;
            Ok(Some(Resume::After {
                last_seq: Seq(last_seq),
                epoch,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded() {
        let q = parse_handshake_query(Some("token=a%2Eb.c&last_seq=5&epoch=e_1&x=y+z&token=d"));
        assert_eq!(q.tokens, ["a.b.c", "d"]);
        assert_eq!(q.last_seq.as_deref(), Some("5"));
        assert_eq!(q.epoch.as_deref(), Some("e_1"));
        let token = |raw| parse_handshake_query(Some(raw)).tokens.pop();
        assert_eq!(token("token=%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(token("token=a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(token("token=a%2").as_deref(), Some("a%2"));
        assert_eq!(
            token("token=%41%42").as_deref(),
            Some("AB"),
            "an escape at the very end"
        );
    }

    #[test]
    fn resume_needs_both_fields_and_a_number() {
        let q = |s| parse_handshake_query(Some(s));
        assert_eq!(resume_from_query(&q("")), Ok(None));
        assert!(matches!(
            resume_from_query(&q("last_seq=4&epoch=e_1")),
            Ok(Some(Resume::After {
                last_seq: Seq(4),
                ..
            }))
        ));
        assert_eq!(
            resume_from_query(&q("last_seq=4")).map_err(|e| e.0),
            Err("epoch")
        );
        assert_eq!(
            resume_from_query(&q("epoch=e")).map_err(|e| e.0),
            Err("last_seq")
        );
        assert_eq!(
            resume_from_query(&q("last_seq=-1&epoch=e")).map_err(|e| e.0),
            Err("last_seq")
        );
    }
}
