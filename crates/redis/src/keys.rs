//! Redis key and channel names of a user's stream.
//!
//! Every name is `<prefix>{<user>}:<part>`: the prefix separates deployments (and tests)
//! sharing one Redis, and the braces make the user the hash tag, so all of a user's keys
//! and its channel live in one cluster slot and one script may touch them all.
//!
//! User ids are arbitrary UTF-8 (1–256 bytes) and may contain `{`, `}`, `:` or `%`. Inside
//! the braces they are written with `%`, `{` and `}` percent-escaped (`%25`, `%7B`, `%7D`):
//! the tag then never holds a brace, so Redis takes exactly the escaped user as the tag,
//! and the escape is reversible, so two users never share a name. The prefix may hold no
//! brace (checked by [`crate::RedisConfig`]), so the first `{` of a name is always ours.

use agentwire_protocol::{RunId, UserId};

/// The names of one user's keys and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserKeys {
    /// `<prefix>{<user>}`: what every name of the user starts with.
    tagged: String,
    /// HASH `epoch`, `seq` (newest seq), `ts` (newest ts).
    pub(crate) meta: String,
    /// STREAM of accepted events, entry id `<seq>-<ts>`, one field `m`.
    pub(crate) stream: String,
    /// HASH event_id → `<seq>:<ts>:<digest>`: the dedupe entries.
    pub(crate) ids: String,
    /// ZSET event_id scored by seq: the dedupe entries in acceptance order.
    pub(crate) order: String,
    /// The sharded pub/sub channel the script `SPUBLISH`es accepted events on.
    pub(crate) channel: String,
    /// HASH `<node>/<connection>` → lease expiry (see `lua/leases.lua`).
    pub(crate) leases: String,
    /// ZSET of live leases by admission.
    pub(crate) lease_order: String,
    /// HASH `e` (epoch), `d` (delivered seq), `a` (acked seq): the user's delivery
    /// receipt across the nodes (see `lua/receipts.lua`).
    pub(crate) receipt: String,
}

impl UserKeys {
    /// The names for `user` under `prefix`.
    pub(crate) fn new(prefix: &str, user: &UserId) -> Self {
        let tagged = format!("{prefix}{{{}}}", escape(user.as_str()));
        UserKeys {
            meta: format!("{tagged}:meta"),
            stream: format!("{tagged}:stream"),
            ids: format!("{tagged}:ids"),
            order: format!("{tagged}:order"),
            channel: format!("{tagged}:channel"),
            leases: format!("{tagged}:leases"),
            lease_order: format!("{tagged}:lease_order"),
            receipt: format!("{tagged}:receipt"),
            tagged,
        }
    }

    /// HASH of the lifecycle state of the user's run `run` (see `lua/publish.lua`). The
    /// run id follows `:run:` unescaped: the user's braces come first, so nothing in it
    /// can move the hash tag, and no other part of a user's names starts with `run:`.
    pub(crate) fn run(&self, run: &RunId) -> String {
        format!("{}:run:{}", self.tagged, run.as_str())
    }

    /// The keys every script is given, in the order the scripts expect them.
    pub(crate) fn script_keys(&self) -> [&str; 5] {
        [
            &self.meta,
            &self.stream,
            &self.ids,
            &self.order,
            &self.channel,
        ]
    }
}

/// The names of the run registry's keys (see `lua/runs.lua`), all under the hash tag
/// `%runs`, which no user's tag can be (a user's `%` is always escaped as `%25`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryKeys {
    keys: [String; 5],
}

impl RegistryKeys {
    pub(crate) fn new(prefix: &str) -> Self {
        let part = |p: &str| format!("{prefix}{{%runs}}:{p}");
        RegistryKeys {
            keys: [
                part("runs"),
                part("expiry"),
                part("finished"),
                part("owners"),
                part("totals"),
            ],
        }
    }

    /// The keys the registry script is given, in its order.
    pub(crate) fn script_keys(&self) -> &[String; 5] {
        &self.keys
    }
}

/// `s` with `%`, `{` and `}` percent-escaped.
/// The key holding `publisher`'s publish rate state (see `lua/rate.lua`): under a hash
/// tag of its own, `%rate:` and the escaped publisher, which no escaped user can be.
pub(crate) fn rate_key(prefix: &str, publisher: &str) -> String {
    format!("{prefix}{{%rate:{}}}:tat", escape(publisher))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// The hash tag Redis Cluster takes from `key`: what lies between the first `{` and the
/// first `}` after it, when that is not empty; otherwise the whole key.
#[cfg(test)]
pub(crate) fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(s: &str) -> String {
        s.replace("%7D", "}")
            .replace("%7B", "{")
            .replace("%25", "%")
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("valid user id")
    }

    const AWKWARD: &[&str] = &[
        "alice",
        "auth0|123",
        "a:b",
        "a}b",
        "{a}",
        "}",
        "{",
        "{}",
        "%7D",
        "%",
        "a%7Bb",
        "x}:meta",
        "ünï{cødé}",
        "user:with:colons:stream",
    ];

    #[test]
    fn every_key_of_a_user_carries_the_escaped_user_as_hash_tag() {
        for raw in AWKWARD {
            let keys = UserKeys::new("agentwire:", &user(raw));
            for key in keys.script_keys() {
                let tag = hash_tag(key);
                assert_eq!(unescape(tag), *raw, "key {key}");
                assert!(!tag.contains('{') && !tag.contains('}'));
                assert!(key.starts_with("agentwire:{"));
            }
        }
    }

    #[test]
    fn different_users_never_share_a_name() {
        let mut seen = std::collections::HashSet::new();
        for raw in AWKWARD {
            let keys = UserKeys::new("p:", &user(raw));
            for key in keys.script_keys() {
                assert!(seen.insert(key.to_owned()), "{key} named twice");
            }
        }
    }

    #[test]
    fn run_keys_share_their_users_slot_and_the_registry_its_own() {
        for raw in AWKWARD {
            let keys = UserKeys::new("agentwire:", &user(raw));
            for run in ["r1", "}", "{x}", "a:b"] {
                let key = keys.run(&run.parse().expect("run id"));
                assert_eq!(hash_tag(&key), hash_tag(&keys.meta), "{key}");
            }
            assert_ne!(
                keys.run(&"a".parse().expect("run")),
                keys.run(&"b".parse().expect("run"))
            );
        }
        let registry = RegistryKeys::new("agentwire:");
        for key in registry.script_keys() {
            assert_eq!(hash_tag(key), "%runs");
        }
        // No user's keys carry the registry's tag, not even a user called `%runs`.
        let tricky = UserKeys::new("agentwire:", &user("%runs"));
        assert_ne!(hash_tag(&tricky.meta), "%runs");
    }

    #[test]
    fn a_user_cannot_reach_into_another_prefix() {
        // A user id that looks like the end of a tag and a key part stays inside its own
        // braces.
        let a = UserKeys::new("a:", &user("}:meta"));
        assert_eq!(a.meta, "a:{%7D:meta}:meta");
        assert_eq!(hash_tag(&a.meta), "%7D:meta");
    }
}
