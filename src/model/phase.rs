//! The migration's phases and the pure transition table (DESIGN.md §6):
//!
//! ```text
//! mirroring --Begin--> cutting-over --Flip--> cut-over --Complete--> completed
//!     ^                    |  Abort              |  ^
//!     +--------------------+                     |  | Abort
//!     +---------Flip---- rolling-back <--Begin---+--+
//! ```
//!
//! Persisting the phase and the epoch is the cutover's job
//! (`cutover::Phases`); here is only what a phase *means*.

use serde::{Deserialize, Serialize};

use super::Side;

/// A migration phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Source primary, syncing to the target. Where a migration starts.
    #[default]
    Mirroring,
    /// Flipping to the target: writes held.
    CuttingOver,
    /// Target primary, syncing back to the source.
    CutOver,
    /// Flipping back to the source: writes held.
    RollingBack,
    /// Target primary, no sync: a plain pass-through.
    Completed,
}

impl Phase {
    /// The name used in `/status`, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mirroring => "mirroring",
            Self::CuttingOver => "cutting-over",
            Self::CutOver => "cut-over",
            Self::RollingBack => "rolling-back",
            Self::Completed => "completed",
        }
    }

    /// The phase named `name` (as [`Phase::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|phase| phase.as_str() == name)
    }

    /// Every phase, for metrics.
    pub(crate) const ALL: [Self; 5] = [
        Self::Mirroring,
        Self::CuttingOver,
        Self::CutOver,
        Self::RollingBack,
        Self::Completed,
    ];

    /// Which side serves traffic in this phase.
    pub fn primary(self) -> Side {
        match self {
            Self::Mirroring | Self::CuttingOver => Side::Source,
            Self::CutOver | Self::RollingBack | Self::Completed => Side::Target,
        }
    }

    /// Whether changes are synced in this phase.
    pub fn syncs(self) -> bool {
        self != Self::Completed
    }

    /// Whether trigger requests are held in this phase.
    pub(crate) fn holds_writes(self) -> bool {
        matches!(self, Self::CuttingOver | Self::RollingBack)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What moves the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Start a cutover (from `mirroring`) or a rollback (from `cut-over`).
    Begin,
    /// The drain and checks passed: switch the primary.
    Flip,
    /// The pause bound was exceeded or a step failed.
    Abort,
    /// Stop syncing for good.
    Complete,
}

/// A refused transition: the event does not apply in the current phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event:?} while {phase}", phase = .phase.as_str())]
pub struct Illegal {
    /// The current phase.
    pub phase: Phase,
    /// The event.
    pub event: Event,
}

/// The pure transition function of the phase table.
pub fn transition(phase: Phase, event: Event) -> Result<Phase, Illegal> {
    use Event::{Abort, Begin, Complete, Flip};
    use Phase::{Completed, CutOver, CuttingOver, Mirroring, RollingBack};
    match (phase, event) {
        (Mirroring, Begin) => Ok(CuttingOver),
        (CuttingOver, Flip) => Ok(CutOver),
        (CuttingOver, Abort) => Ok(Mirroring),
        (CutOver, Begin) => Ok(RollingBack),
        (RollingBack, Flip) => Ok(Mirroring),
        (RollingBack, Abort) => Ok(CutOver),
        (CutOver, Complete) => Ok(Completed),
        (phase, event) => Err(Illegal { phase, event }),
    }
}
