//! The legacy names: the table of every name and module path of the system agentwire
//! replaces, with its replacement, and the whole-word matcher that finds them in source.
//!
//! What it is not: the aliases themselves (those are in `crates/agentwire/src/legacy.rs`)
//! nor the migration guide (`docs/migration.md`); `cargo xtask check` proves the three
//! agree. This directory — the table and the tools built on it (`migrate`, the fixture
//! check) — is one of the few places allowed to name legacy items (rule
//! `no_legacy_names`), because naming them is its job.

pub(crate) mod fixture;
pub(crate) mod migrate;

/// One deprecated item of the `agentwire` facade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LegacyItem {
    /// Its module under `agentwire`, e.g. `websocket_core::manager`.
    pub(crate) module: &'static str,
    /// Its name there.
    pub(crate) name: &'static str,
    /// What to import instead, from the crate root (`agentwire::…`).
    pub(crate) import: &'static str,
    /// What to write instead where the old name is used in code.
    pub(crate) replacement: &'static str,
}

impl LegacyItem {
    /// Its full path, as rustc names it: `agentwire::websocket_core::WebSocketManager`.
    pub(crate) fn path(&self) -> String {
        format!("agentwire::{}::{}", self.module, self.name)
    }

    /// Whether the name itself is legacy (and not only its path).
    pub(crate) fn name_is_legacy(&self) -> bool {
        self.name != self.import
    }
}

const fn item(
    module: &'static str,
    name: &'static str,
    import: &'static str,
    replacement: &'static str,
) -> LegacyItem {
    LegacyItem {
        module,
        name,
        import,
        replacement,
    }
}

/// Every deprecated item of the facade, one per old path.
pub(crate) const LEGACY_ITEMS: &[LegacyItem] = &[
    item(
        "websocket_core",
        "WebSocketManager",
        "UnifiedWebSocketManager",
        "UnifiedWebSocketManager",
    ),
    item(
        "websocket_core",
        "WebSocketEventEmitter",
        "UnifiedWebSocketEmitter",
        "UnifiedWebSocketEmitter",
    ),
    item(
        "websocket_core",
        "get_websocket_manager",
        "UnifiedWebSocketManager",
        "UnifiedWebSocketManager::global",
    ),
    item(
        "websocket_core",
        "WebSocketHeartbeatManager",
        "HeartbeatPolicy",
        "HeartbeatPolicy",
    ),
    item(
        "websocket_core::manager",
        "WebSocketManager",
        "UnifiedWebSocketManager",
        "UnifiedWebSocketManager",
    ),
    item(
        "websocket_core::manager",
        "get_websocket_manager",
        "UnifiedWebSocketManager",
        "UnifiedWebSocketManager::global",
    ),
    item(
        "websocket_core::isolated_event_emitter",
        "IsolatedWebSocketEventEmitter",
        "UnifiedWebSocketEmitter",
        "UnifiedWebSocketEmitter",
    ),
    item(
        "websocket::manager",
        "WebSocketManager",
        "UnifiedWebSocketManager",
        "UnifiedWebSocketManager",
    ),
    item(
        "services::websocket_event_emitter",
        "WebSocketEventEmitter",
        "UnifiedWebSocketEmitter",
        "UnifiedWebSocketEmitter",
    ),
    item(
        "services::websocket_event_emitter",
        "WebSocketEventEmitterFactory",
        "WebSocketEmitterFactory",
        "WebSocketEmitterFactory",
    ),
    item(
        "services::websocket_emitter_pool",
        "WebSocketEmitterPool",
        "WebSocketEmitterPool",
        "WebSocketEmitterPool",
    ),
    item(
        "services::user_websocket_emitter",
        "UserWebSocketEmitter",
        "UnifiedWebSocketEmitter",
        "UnifiedWebSocketEmitter",
    ),
    item(
        "services::user_websocket_emitter",
        "OptimizedUserWebSocketEmitter",
        "UnifiedWebSocketEmitter",
        "UnifiedWebSocketEmitter",
    ),
    item(
        "services::websocket_bridge_factory",
        "WebSocketBridgeFactory",
        "UnifiedWebSocketManager",
        "UnifiedWebSocketManager",
    ),
];

/// Every legacy module of the facade, parents included.
pub(crate) const LEGACY_MODULES: &[&str] = &[
    "websocket_core",
    "websocket_core::manager",
    "websocket_core::isolated_event_emitter",
    "websocket",
    "websocket::manager",
    "services",
    "services::websocket_event_emitter",
    "services::websocket_emitter_pool",
    "services::user_websocket_emitter",
    "services::websocket_bridge_factory",
];

/// Texts that mark an old module path wherever they stand as whole words. `websocket`,
/// `services` and `manager` alone are too common to flag; the old paths through them are
/// caught by their distinctive parts.
pub(crate) const LEGACY_PATH_MARKS: &[&str] = &[
    "websocket_core",
    "websocket::manager",
    "isolated_event_emitter",
    "websocket_event_emitter",
    "websocket_emitter_pool",
    "user_websocket_emitter",
    "websocket_bridge_factory",
];

/// A legacy name or path found in a line of source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// 1-based line.
    pub(crate) line: usize,
    /// The legacy text found.
    pub(crate) old: &'static str,
    /// What replaces it.
    pub(crate) new: String,
}

/// Whether `c` can be part of a Rust identifier.
pub(crate) fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Byte offsets of every whole-word occurrence of `word` in `text`: not preceded or
/// followed by an identifier character, so `UnifiedWebSocketManager` is no occurrence of
/// `WebSocketManager`.
pub(crate) fn find_word(text: &str, word: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        if !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char) {
            found.push(start);
        }
        from = end;
    }
    found
}

/// The distinct legacy names (those that are not also current names), with what replaces
/// each in code.
pub(crate) fn legacy_names() -> Vec<(&'static str, &'static str)> {
    let mut names: Vec<(&str, &str)> = LEGACY_ITEMS
        .iter()
        .filter(|i| i.name_is_legacy())
        .map(|i| (i.name, i.replacement))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Every legacy name and old module path in `text`, line by line, with its replacement.
pub(crate) fn find_legacy(text: &str) -> Vec<Finding> {
    let names = legacy_names();
    let mut findings = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut hits: Vec<(usize, Finding)> = Vec::new();
        for mark in LEGACY_PATH_MARKS {
            for at in find_word(line, mark) {
                hits.push((
                    at,
                    Finding {
                        line: index + 1,
                        old: mark,
                        new: "the crate root, `agentwire::`".to_owned(),
                    },
                ));
            }
        }
        for (name, replacement) in &names {
            for at in find_word(line, name) {
                hits.push((
                    at,
                    Finding {
                        line: index + 1,
                        old: name,
                        new: format!("`{replacement}`"),
                    },
                ));
            }
        }
        hits.sort_by_key(|(at, _)| *at);
        findings.extend(hits.into_iter().map(|(_, f)| f));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_only() {
        assert_eq!(find_word("WebSocketManager", "WebSocketManager"), [0]);
        assert!(find_word("UnifiedWebSocketManager", "WebSocketManager").is_empty());
        assert!(find_word("WebSocketManagerX", "WebSocketManager").is_empty());
        assert_eq!(
            find_word(
                "a::WebSocketManager<T>, WebSocketManager",
                "WebSocketManager"
            ),
            [3, 24]
        );
        assert_eq!(
            find_word("x::websocket::manager::Y", "websocket::manager"),
            [3]
        );
        assert!(find_word("my_websocket::manager", "websocket::manager").is_empty());
        assert!(find_word("websocket::manager_x", "websocket::manager").is_empty());
    }

    #[test]
    fn findings_name_the_line_and_the_replacement() {
        let text = "use agentwire::UnifiedWebSocketManager;\n\
                    let m = agentwire::websocket_core::get_websocket_manager();\n";
        let found = find_legacy(text);
        assert_eq!(
            found,
            [
                Finding {
                    line: 2,
                    old: "websocket_core",
                    new: "the crate root, `agentwire::`".to_owned(),
                },
                Finding {
                    line: 2,
                    old: "get_websocket_manager",
                    new: "`UnifiedWebSocketManager::global`".to_owned(),
                },
            ]
        );
    }

    #[test]
    fn the_table_is_consistent() {
        for item in LEGACY_ITEMS {
            assert!(LEGACY_MODULES.contains(&item.module), "{item:?}");
            assert!(
                LEGACY_PATH_MARKS
                    .iter()
                    .any(|mark| !find_word(&item.path(), mark).is_empty()),
                "no path mark catches {}",
                item.path()
            );
            assert!(item.replacement.starts_with(item.import), "{item:?}");
        }
        for (i, a) in LEGACY_ITEMS.iter().enumerate() {
            assert!(
                LEGACY_ITEMS[..i].iter().all(|b| b.path() != a.path()),
                "duplicate {}",
                a.path()
            );
        }
        // A path-only item keeps its name; every other name is caught as a word.
        let path_only: Vec<&str> = LEGACY_ITEMS
            .iter()
            .filter(|i| !i.name_is_legacy())
            .map(|i| i.name)
            .collect();
        assert_eq!(path_only, ["WebSocketEmitterPool"]);
    }
}
