//! Which server: the source (migrated from) or the target (migrated to).
//! Fixed for the whole migration; *primary* and *secondary* are roles the
//! phase gives them (see [`super::Phase::primary`]). The one side type:
//! upstreams, metric labels, errors and the admin API all use it.

use serde::{Deserialize, Serialize};

/// Source or target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The server migrated from; the default, being the primary before
    /// any flip.
    #[default]
    Source,
    /// The server migrated to.
    Target,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Self::Source => Self::Target,
            Self::Target => Self::Source,
        }
    }

    /// The name used in logs, metrics and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Target => "target",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}
