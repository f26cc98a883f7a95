//! Golden files of the AG-UI projection (docs/ag-ui.md): for each server frame of
//! `tests/golden/`, the AG-UI events it projects to, in `tests/golden-ag-ui/` (plus
//! `close.json`, the end of a stream closed with 1001), each projected on a connection of
//! its own (so a `message_completed` opens its message again before it ends it). A missing, extra or changed file
//! fails; nothing here writes one. `tests/browser/agui.test.mjs` parses every event of
//! these files with `@ag-ui/core`'s schemas.

use std::collections::BTreeSet;
use std::path::PathBuf;

use agentwire_protocol::{CloseCode, ServerFrame, project_close, project_frame};
use serde_json::Value;

const FRAMES: [&str; 13] = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
    "agent_error",
    "message_delta",
    "message_completed",
    "custom",
    "connection_established",
    "replay_gap",
    "error",
    "pong",
];

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_server_frame_projects_to_its_golden_events() {
    let dir = tests_dir();
    let mut failures = Vec::new();
    for name in FRAMES {
        let frame_bytes = std::fs::read(dir.join(format!("golden/{name}.json"))).expect("frame");
        let frame = ServerFrame::decode(&frame_bytes).expect("a golden frame decodes");
        let got = serde_json::to_value(project_frame(&frame)).expect("json");
        let want = read_json(dir.join(format!("golden-ag-ui/{name}.json")));
        if got != want {
            failures.push(format!(
                "{name}: projected\n{}\nexpected\n{}",
                serde_json::to_string_pretty(&got).unwrap_or_default(),
                serde_json::to_string_pretty(&want).unwrap_or_default()
            ));
        }
    }
    let close = serde_json::to_value([project_close(CloseCode::GoingAway)]).expect("json");
    if close != read_json(dir.join("golden-ag-ui/close.json")) {
        failures.push(format!("close: projected {close}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_golden_directory_holds_exactly_these_files() {
    let found: BTreeSet<String> = std::fs::read_dir(tests_dir().join("golden-ag-ui"))
        .expect("the directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = FRAMES
        .iter()
        .map(|n| format!("{n}.json"))
        .chain(["close.json".to_owned()])
        .collect();
    assert_eq!(found, expected);
}
