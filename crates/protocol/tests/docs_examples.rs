//! `docs/protocol.md` is the specification; this test keeps it honest. Every ```` ```json ````
//! block must decode with this crate, the examples must cover every frame, and the tables
//! of close codes, error codes and limits must say what the code says.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use agentwire_protocol::{
    AUTH_SUBPROTOCOL_PREFIX, ClientAction, ClientFrame, CloseCode, DEFAULT_MAX_EVENT_BYTES,
    EventType, Limits, MAX_CLIENT_FRAME_BYTES, MAX_CLIENT_FRAME_DEPTH, MAX_EVENT_DEPTH,
    MAX_ID_BYTES, MAX_OPEN_MESSAGES, MAX_OPEN_TOOL_CALLS, PublishBody, PublishResponse,
    SUBPROTOCOL, ServerFrame,
};
use serde_json::Value;

/// The publish batch limit the document states as the default.
const DOC_MAX_BATCH: usize = 100;

/// Fewer values than this means the examples were lost, not that the protocol shrank.
const MIN_VALUES: usize = 15;

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} must exist: {e}", path.display()))
}

/// One JSON value of the document, with the 1-based line it starts on.
struct Example {
    line: usize,
    text: String,
}

/// The contents of every block fenced as ```` ```json ````, as (line of its first content
/// line, text).
fn json_blocks(doc: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut fenced_other = false;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(tag) = trimmed.strip_prefix("```") {
            match (current.take(), fenced_other) {
                (Some(block), _) => blocks.push(block),
                (None, true) => fenced_other = false,
                (None, false) if tag.trim() == "json" => current = Some((i + 2, String::new())),
                (None, false) => fenced_other = true,
            }
            continue;
        }
        if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(current.is_none(), "a ```json block is not closed");
    blocks
}

/// A block holds one JSON value, or one per line (JSON Lines).
fn examples(doc: &str) -> Result<Vec<Example>, String> {
    let mut out = Vec::new();
    for (line, text) in json_blocks(doc) {
        if serde_json::from_str::<Value>(&text).is_ok() {
            out.push(Example { line, text });
            continue;
        }
        for (j, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<Value>(l) {
                return Err(format!(
                    "docs/protocol.md:{}: neither the block nor this line is JSON: {e}",
                    line + j
                ));
            }
            out.push(Example {
                line: line + j,
                text: l.to_owned(),
            });
        }
    }
    Ok(out)
}

/// Whether every field of `doc` is in `encoded` with the same value. The encoding may add
/// defaults the example leaves out; a field it lacks is one the decoder ignored — most
/// likely a misspelling in the document.
fn covered(doc: &Value, encoded: &Value) -> bool {
    match (doc, encoded) {
        (Value::Object(d), Value::Object(e)) => d
            .iter()
            .all(|(k, v)| e.get(k).is_some_and(|ev| covered(v, ev))),
        (Value::Array(d), Value::Array(e)) => {
            d.len() == e.len() && d.iter().zip(e).all(|(dv, ev)| covered(dv, ev))
        }
        _ => doc == encoded,
    }
}

/// Extra `data` fields the examples show on purpose (the protocol keeps any extra field,
/// so a misspelt typed field would decode too; naming the intended ones catches that).
const DOC_EXTRA_FIELDS: [&str; 1] = ["model"];

/// `data` fields of the events in `value` (an event, or an array of them) that are neither
/// typed fields of their event type nor in [`DOC_EXTRA_FIELDS`].
fn unexpected_data_fields(value: &Value) -> Vec<String> {
    let events = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for event in events {
        let ty = event
            .get("type")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<EventType>().ok());
        let (Some(ty), Some(Value::Object(data))) = (ty, event.get("data")) else {
            continue;
        };
        for key in data.keys() {
            if !support::typed_fields(ty).contains(&key.as_str())
                && !DOC_EXTRA_FIELDS.contains(&key.as_str())
            {
                out.push(format!("data.{key} of {ty}"));
            }
        }
    }
    out
}

/// Decodes an example as the first of the four kinds that accepts it; returns what it
/// is ("server agent_started", "publish batch", …) and its encoding.
fn decode(text: &str) -> Result<(String, Value), Vec<String>> {
    let bytes = text.as_bytes();
    let encoded = |s: String| serde_json::from_str::<Value>(&s).expect("the crate encodes JSON");
    let mut errors = Vec::new();
    match ClientFrame::decode(bytes) {
        Ok(f) => return Ok((format!("client {}", f.type_name()), encoded(f.to_json()))),
        Err(e) => errors.push(format!("as ClientFrame: {e}")),
    }
    match ServerFrame::decode(bytes) {
        Ok(f) => return Ok((format!("server {}", f.type_name()), encoded(f.to_json()))),
        Err(e) => errors.push(format!("as ServerFrame: {e}")),
    }
    match PublishBody::decode(bytes, Limits::EVENT, DOC_MAX_BATCH) {
        Ok(b) => {
            let kind = match &b {
                PublishBody::One(_) => "publish one",
                PublishBody::Batch(_) => "publish batch",
            };
            return Ok((kind.to_owned(), encoded(agentwire_protocol::to_json(&b))));
        }
        Err(e) => errors.push(format!("as PublishBody: {e}")),
    }
    match serde_json::from_str::<PublishResponse>(text) {
        Ok(r) => {
            return Ok((
                "publish response".into(),
                encoded(agentwire_protocol::to_json(&r)),
            ));
        }
        Err(e) => errors.push(format!("as PublishResponse: {e}")),
    }
    Err(errors)
}

#[test]
fn every_json_example_decodes_and_every_frame_has_one() {
    let doc = doc();
    let examples = examples(&doc).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        examples.len() >= MIN_VALUES,
        "docs/protocol.md has {} JSON values in ```json blocks; expected at least {MIN_VALUES}",
        examples.len()
    );

    let mut failures = Vec::new();
    let mut kinds = BTreeSet::new();
    for ex in &examples {
        match decode(&ex.text) {
            Ok((kind, encoded)) => {
                let value: Value = serde_json::from_str(&ex.text).expect("checked above");
                if !covered(&value, &encoded) {
                    failures.push(format!(
                        "docs/protocol.md:{}: decodes as {kind}, but a field is lost or changed\n  doc:     {value}\n  decoded: {encoded}",
                        ex.line
                    ));
                }
                let unexpected = unexpected_data_fields(&value);
                if !unexpected.is_empty() {
                    failures.push(format!(
                        "docs/protocol.md:{}: fields that no payload type has (misspelt?): {unexpected:?}",
                        ex.line
                    ));
                }
                kinds.insert(kind);
            }
            Err(errors) => failures.push(format!(
                "docs/protocol.md:{}: decodes as nothing\n  {}",
                ex.line,
                errors.join("\n  ")
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let mut wanted: Vec<String> = EventType::ALL
        .iter()
        .map(|t| format!("server {t}"))
        .collect();
    for k in [
        "server connection_established",
        "server replay_gap",
        "server pong",
        "server error",
        "client ping",
        "client ack",
        "client resume",
        "client refresh_token",
        "publish one",
        "publish batch",
        "publish response",
    ] {
        wanted.push(k.to_owned());
    }
    let missing: Vec<&String> = wanted.iter().filter(|k| !kinds.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md has no ```json example of: {missing:?}"
    );
}

/// The table rows of the document, as trimmed cells.
fn table_rows(doc: &str) -> Vec<Vec<String>> {
    doc.lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// How the document words each action; the table must use these words.
fn wording(action: ClientAction) -> &'static str {
    match action {
        ClientAction::Stop => "Stop; do not reconnect.",
        ClientAction::StopAndReport => "Stop and report: a client or server bug.",
        ClientAction::ReconnectAndResume => {
            "Reconnect at once (another node may serve) and resume."
        }
        ClientAction::BackOffThenReconnect => "Back off, then reconnect.",
        ClientAction::ReconnectWithBackoffAndResume => {
            "Reconnect with exponential backoff and resume."
        }
        ClientAction::NewTokenThenReconnect => "Get a new token before reconnecting.",
        ClientAction::RefreshTokenThenResume => "Refresh the token, reconnect and resume.",
        ClientAction::DoNotReconnect => "Do not reconnect on its own; a user action may.",
    }
}

#[test]
fn the_close_code_table_is_the_code() {
    let rows = table_rows(&doc());
    let close_rows: Vec<(u16, &Vec<String>)> = rows
        .iter()
        .filter_map(|r| {
            let code: u16 = r.first()?.parse().ok()?;
            (1000..5000).contains(&code).then_some((code, r))
        })
        .collect();
    let mut failures = Vec::new();
    for c in CloseCode::ALL {
        match close_rows.iter().find(|(code, _)| *code == c.code()) {
            None => failures.push(format!("no row for {c}")),
            Some((_, row)) => {
                let want = wording(c.client_action());
                if row.get(2).map(String::as_str) != Some(want) {
                    failures.push(format!(
                        "{c}: the client should `{want}`; the row says {row:?}"
                    ));
                }
            }
        }
    }
    for (code, _) in &close_rows {
        if CloseCode::from_code(*code).is_none() {
            failures.push(format!(
                "row for {code}, which is not a close code of the crate"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_error_code_table_lists_every_code() {
    let rows = table_rows(&doc());
    for code in support::ERROR_CODES {
        let name = format!("`{}`", agentwire_protocol::to_json(&code).trim_matches('"'));
        assert!(
            rows.iter().any(|r| r.first() == Some(&name)),
            "no row for error code {name}"
        );
    }
}

#[test]
fn the_limits_table_states_the_constants() {
    let doc = doc();
    let rows = table_rows(&doc);
    let limits = [
        ("MAX_CLIENT_FRAME_BYTES", MAX_CLIENT_FRAME_BYTES),
        ("MAX_CLIENT_FRAME_DEPTH", MAX_CLIENT_FRAME_DEPTH),
        ("DEFAULT_MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES),
        ("MAX_EVENT_DEPTH", MAX_EVENT_DEPTH),
        ("MAX_ID_BYTES", MAX_ID_BYTES),
        ("MAX_OPEN_TOOL_CALLS", MAX_OPEN_TOOL_CALLS),
        ("MAX_OPEN_MESSAGES", MAX_OPEN_MESSAGES),
    ];
    for (name, value) in limits {
        let row = rows
            .iter()
            .find(|r| r.first().map(String::as_str) == Some(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("no row for `{name}` in a table"));
        let cell = row.get(1).map(String::as_str).unwrap_or_default();
        let stated: Option<usize> = cell.split_whitespace().next().and_then(|n| n.parse().ok());
        assert_eq!(stated, Some(value), "`{name}`: the row says {row:?}");
    }
    let batch = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("max batch"))
        .expect("a row for the default batch limit");
    assert!(
        batch
            .get(1)
            .is_some_and(|c| c.starts_with(&format!("{DOC_MAX_BATCH} "))),
        "the examples are checked with a batch limit of {DOC_MAX_BATCH}; the row says {batch:?}"
    );
    for name in [SUBPROTOCOL, AUTH_SUBPROTOCOL_PREFIX] {
        assert!(doc.contains(name), "the document never names `{name}`");
    }
}
