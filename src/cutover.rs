//! The migration phases and the fenced cutover (DESIGN.md §6).
//!
//! # Phase table
//!
//! | from | event | to | guard / effect |
//! |---|---|---|---|
//! | `mirroring` | `begin` | `cutting-over` | pre-flight checks pass; trigger requests are held |
//! | `cutting-over` | `flip` | `cut-over` | journal drained to zero, recently synced keys equal on both sides; epoch + 1; primary = target; held requests released to the target |
//! | `cutting-over` | `abort` | `mirroring` | pause bound exceeded or a step failed; held requests released to the source |
//! | `cut-over` | `begin` | `rolling-back` | (`handover rollback`) reverse pre-flight passes; trigger requests are held |
//! | `rolling-back` | `flip` | `mirroring` | reverse journal drained; epoch + 1; primary = source |
//! | `rolling-back` | `abort` | `cut-over` | as for `cutting-over` |
//! | `cut-over` | `complete` | `completed` | sync stops; a plain pass-through to the target |
//!
//! Every other (phase, event) pair is refused. [`transition`] is the pure
//! function of this table; [`Phases`] persists the phase and the epoch in
//! `<journal dir>/phase.json` (written atomically *before* the new phase
//! takes effect), so a restart resumes with the right primary. A process
//! that dies while `cutting-over` or `rolling-back` never flipped (the flip
//! is written first), so it restarts in the phase it was leaving.
//!
//! In `mirroring` the source is primary and changes sync source → target;
//! in `cut-over` the target is primary and changes sync target → source, so
//! a rollback loses nothing; in `completed` nothing syncs.

pub mod credentials;
pub mod gate;
pub mod parity;
pub mod procedure;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::model::phase::{Event, Illegal, Phase, transition};

/// The cutover's settings (`[cutover]`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Default bound on the write pause.
    pub max_pause: Duration,
    /// Largest sync lag at which a cutover may start.
    pub max_lag: Duration,
    /// Most time spent verifying recently synced keys before writes are
    /// held (zero: all of them are verified during the hold).
    pub verify_ahead: Duration,
    /// Most trigger requests held during a flip.
    pub hold_max_requests: usize,
    /// Most bytes of held request bodies.
    pub hold_max_bytes: usize,
    /// How long after a flip the previous primary serves state only it has.
    pub fallback_window: Duration,
    /// An Authlete target only: how long after the flip a refresh the new
    /// authorization server refuses (`invalid_grant`) is replayed at the
    /// old Connect2id, whose tokens are then created at Authlete (refresh
    /// tokens held by clients idle during the whole mirroring). Set by the
    /// config from the target's refresh-token lifetime; `None` for a
    /// Connect2id target.
    pub refresh_fallback_window: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_pause: procedure::DEFAULT_MAX_PAUSE,
            max_lag: procedure::DEFAULT_MAX_LAG,
            verify_ahead: procedure::DEFAULT_VERIFY_AHEAD,
            hold_max_requests: gate::DEFAULT_MAX_HELD,
            hold_max_bytes: gate::DEFAULT_MAX_HELD_BYTES,
            fallback_window: procedure::DEFAULT_FALLBACK_WINDOW,
            refresh_fallback_window: None,
        }
    }
}

/// A refused or unpersisted phase change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The event does not apply in the current phase.
    #[error(transparent)]
    Illegal(#[from] Illegal),
    /// The phase file could not be written.
    #[error("cannot persist the phase to {path}: {message}")]
    Persist {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
}

/// The persisted phase and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The phase.
    pub phase: Phase,
    /// Increments at every flip of the primary (both directions).
    pub epoch: u64,
    /// When the primary last flipped (epoch ms): the fallback windows to
    /// the previous primary count from it, across restarts (the refresh
    /// fallback to an old Connect2id stays open for weeks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flipped_at_ms: Option<u64>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            phase: Phase::Mirroring,
            epoch: 1,
            flipped_at_ms: None,
        }
    }
}

/// The phase, persisted.
#[derive(Debug)]
pub struct Phases {
    path: PathBuf,
    state: Mutex<State>,
    /// The phase, readable without the lock on the request path.
    fast: std::sync::atomic::AtomicU8,
}

impl Phases {
    /// Loads `<dir>/phase.json` (`mirroring`, epoch 1 when absent). A
    /// transient phase on disk means the process died mid-flip before the
    /// flip was written: it resumes in the phase it was leaving.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("phase.json");
        let mut state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes).map_err(|err| Error::Persist {
                path: path.clone(),
                message: format!("unreadable: {err}"),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(err) => {
                return Err(Error::Persist {
                    path,
                    message: err.to_string(),
                });
            }
        };
        match state.phase {
            Phase::CuttingOver => {
                tracing::warn!(
                    "restarted during a cutover that never flipped; resuming in mirroring"
                );
                state.phase = Phase::Mirroring;
            }
            Phase::RollingBack => {
                tracing::warn!(
                    "restarted during a rollback that never flipped; resuming in cut-over"
                );
                state.phase = Phase::CutOver;
            }
            _ => {}
        }
        Ok(Self {
            path,
            fast: std::sync::atomic::AtomicU8::new(state.phase as u8),
            state: Mutex::new(state),
        })
    }

    /// The current phase, lock-free.
    pub fn phase(&self) -> Phase {
        let value = self.fast.load(std::sync::atomic::Ordering::Acquire);
        Phase::ALL
            .into_iter()
            .find(|phase| *phase as u8 == value)
            .unwrap_or(Phase::Mirroring)
    }

    /// The current phase and epoch.
    pub fn current(&self) -> State {
        self.state.lock().map_or_else(|p| *p.into_inner(), |s| *s)
    }

    /// Applies an event: checks the table, persists the new state (a flip
    /// increments the epoch), then makes it current.
    pub fn apply(&self, event: Event) -> Result<State, Error> {
        let mut guard = self.state.lock().map_err(|_| Error::Persist {
            path: self.path.clone(),
            message: "phase lock poisoned".to_owned(),
        })?;
        let phase = transition(guard.phase, event)?;
        let (epoch, flipped_at_ms) = if event == Event::Flip {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            (guard.epoch + 1, Some(now))
        } else {
            (guard.epoch, guard.flipped_at_ms)
        };
        let next = State {
            phase,
            epoch,
            flipped_at_ms,
        };
        // Transient phases are not worth an fsync: a crash in them resumes
        // in the phase before, which is what the file already says.
        if !phase.holds_writes() {
            persist(&self.path, &next).map_err(|err| Error::Persist {
                path: self.path.clone(),
                message: err.to_string(),
            })?;
        }
        *guard = next;
        self.fast
            .store(phase as u8, std::sync::atomic::Ordering::Release);
        tracing::info!(phase = phase.as_str(), epoch, "phase changed");
        Ok(next)
    }
}

impl Phases {
    /// Fleet mode: takes the state the fleet's shared control says (another
    /// instance flipped, aborted or completed), persisting it like
    /// [`Phases::apply`] does. The table was checked by whoever wrote it.
    pub fn adopt(&self, next: State) -> Result<State, Error> {
        let mut guard = self.state.lock().map_err(|_| Error::Persist {
            path: self.path.clone(),
            message: "phase lock poisoned".to_owned(),
        })?;
        if !next.phase.holds_writes() {
            persist(&self.path, &next).map_err(|err| Error::Persist {
                path: self.path.clone(),
                message: err.to_string(),
            })?;
        }
        *guard = next;
        self.fast
            .store(next.phase as u8, std::sync::atomic::Ordering::Release);
        tracing::info!(
            phase = next.phase.as_str(),
            epoch = next.epoch,
            "phase taken from the fleet"
        );
        Ok(next)
    }
}

fn persist(path: &Path, state: &State) -> std::io::Result<()> {
    crate::journal::replace_file(
        path,
        &path.with_extension("json.tmp"),
        &serde_json::to_vec(state).map_err(std::io::Error::other)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Side;

    #[test]
    fn every_legal_edge_of_the_table() {
        use Event::*;
        use Phase::*;
        let legal = [
            (Mirroring, Begin, CuttingOver),
            (CuttingOver, Flip, CutOver),
            (CuttingOver, Abort, Mirroring),
            (CutOver, Begin, RollingBack),
            (RollingBack, Flip, Mirroring),
            (RollingBack, Abort, CutOver),
            (CutOver, Complete, Completed),
        ];
        for (from, event, to) in legal {
            assert_eq!(transition(from, event), Ok(to), "{from:?} {event:?}");
        }
        for from in Phase::ALL {
            for event in [Begin, Flip, Abort, Complete] {
                if !legal.iter().any(|(f, e, _)| *f == from && *e == event) {
                    assert!(
                        transition(from, event).is_err(),
                        "{from:?} {event:?} must be refused"
                    );
                }
            }
        }
    }

    #[test]
    fn phases_name_the_primary() {
        assert_eq!(Phase::Mirroring.primary(), Side::Source);
        assert_eq!(Phase::CuttingOver.primary(), Side::Source);
        assert_eq!(Phase::CutOver.primary(), Side::Target);
        assert_eq!(Phase::RollingBack.primary(), Side::Target);
        assert_eq!(Phase::Completed.primary(), Side::Target);
        assert!(!Phase::Completed.syncs());
    }

    #[test]
    fn the_phase_survives_a_restart_and_a_crash_mid_flip_resumes_safely() {
        let dir = tempfile::tempdir().unwrap();
        let phases = Phases::load(dir.path()).unwrap();
        assert_eq!(phases.current(), State::default());
        phases.apply(Event::Begin).unwrap();
        // Crash while cutting over: nothing flipped.
        assert_eq!(
            Phases::load(dir.path()).unwrap().current().phase,
            Phase::Mirroring
        );
        let flipped = phases.apply(Event::Flip).unwrap();
        assert_eq!((flipped.phase, flipped.epoch), (Phase::CutOver, 2));
        // The flip instant persists: the fallback windows count from it
        // after a restart too.
        assert!(
            flipped
                .flipped_at_ms
                .is_some_and(|at| at > 1_700_000_000_000)
        );
        assert_eq!(Phases::load(dir.path()).unwrap().current(), flipped);
        phases.apply(Event::Begin).unwrap();
        assert_eq!(
            Phases::load(dir.path()).unwrap().current().phase,
            Phase::CutOver
        );
        let back = phases.apply(Event::Flip).unwrap();
        assert_eq!((back.phase, back.epoch), (Phase::Mirroring, 3));
        assert!(phases.apply(Event::Complete).is_err());
    }
}
