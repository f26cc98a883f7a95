//! A broken rule at one place, as the tidy rules and the legacy-name check report it.

use std::fmt;
use std::path::PathBuf;

/// One broken rule at one place, printed as `path:line: rule: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    /// File, relative to the checked root.
    pub(crate) path: PathBuf,
    /// 1-based line.
    pub(crate) line: usize,
    /// Name of the rule broken.
    pub(crate) rule: &'static str,
    /// What is wrong and what to do about it.
    pub(crate) message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.path.display(),
            self.line,
            self.rule,
            self.message
        )
    }
}
