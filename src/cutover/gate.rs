//! The write gate: during a flip, trigger requests wait here instead of
//! reaching either server, in a buffer bounded by count and bytes. Requests
//! that already passed are counted until their changes are journaled, so
//! the flip can wait for them before draining. A full buffer answers `503`
//! with `Retry-After` instead of queueing without bound.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

/// Default most requests held at once.
pub(crate) const DEFAULT_MAX_HELD: usize = 10_000;
/// Default most bytes of held request bodies.
pub(crate) const DEFAULT_MAX_HELD_BYTES: usize = 64 << 20;
/// How long a held request waits at most, whatever happens to the flip:
/// then it is refused with `503` (never forwarded to a primary that may be
/// stale).
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    closed: bool,
    held: usize,
    held_bytes: usize,
    /// Requests past the gate whose changes are not journaled yet.
    in_flight: usize,
    /// Totals of the current closing.
    held_total: u64,
    rejected_total: u64,
}

/// The gate.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    /// Bumped on every change, to wake waiters.
    changed: watch::Sender<u64>,
    max_held: usize,
    max_bytes: usize,
    held_counter: Counter,
    rejected_counter: Counter,
    /// Fleet mode: set while this instance cannot renew its lease; every
    /// trigger is refused (503 with Retry-After), reads still flow.
    fenced: std::sync::atomic::AtomicBool,
}

/// A request that passed the gate; its changes are journaled when dropped.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate
            .update(|state| state.in_flight = state.in_flight.saturating_sub(1));
    }
}

/// What one closing held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Requests that waited.
    pub held: u64,
    /// Requests refused because the buffer was full.
    pub rejected: u64,
}

impl Gate {
    /// An open gate.
    pub fn new(
        max_held: usize,
        max_bytes: usize,
        held_counter: Counter,
        rejected_counter: Counter,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            max_held,
            max_bytes,
            held_counter,
            rejected_counter,
            fenced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let result = match self.state.lock() {
            Ok(mut state) => change(&mut state),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        };
        self.changed
            .send_modify(|generation| *generation = generation.wrapping_add(1));
        result
    }

    fn read<R>(&self, read: impl FnOnce(&State) -> R) -> R {
        match self.state.lock() {
            Ok(state) => read(&state),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    /// Lets a trigger request through, waiting while the gate is closed.
    pub async fn pass(self: &Arc<Self>, body_bytes: usize) -> Result<Pass, Refused> {
        if self.fenced.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refused::Fenced);
        }
        let mut changed = self.changed.subscribe();
        let outcome = self.update(|state| {
            if !state.closed {
                state.in_flight += 1;
                return Ok(true);
            }
            if state.held + 1 > self.max_held || state.held_bytes + body_bytes > self.max_bytes {
                state.rejected_total += 1;
                return Err(());
            }
            state.held += 1;
            state.held_bytes += body_bytes;
            state.held_total += 1;
            Ok(false)
        });
        match outcome {
            Ok(true) => {
                return Ok(Pass {
                    gate: Arc::clone(self),
                });
            }
            Ok(false) => {
                self.held_counter.inc();
            }
            Err(()) => {
                self.rejected_counter.inc();
                return Err(Refused::BufferFull);
            }
        }
        let waited = tokio::time::timeout(HOLD_LIMIT, async {
            loop {
                let open = self.update(|state| {
                    if state.closed {
                        false
                    } else {
                        state.held -= 1;
                        state.held_bytes = state.held_bytes.saturating_sub(body_bytes);
                        state.in_flight += 1;
                        true
                    }
                });
                if open {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        match waited {
            Ok(()) => Ok(Pass {
                gate: Arc::clone(self),
            }),
            Err(_) => {
                self.update(|state| {
                    state.held -= 1;
                    state.held_bytes = state.held_bytes.saturating_sub(body_bytes);
                });
                Err(Refused::HeldTooLong)
            }
        }
    }

    /// Closes the gate: new trigger requests wait.
    pub fn close(&self) {
        self.update(|state| {
            state.closed = true;
            state.held_total = 0;
            state.rejected_total = 0;
        });
    }

    /// Opens the gate: held requests go on (to whichever server is primary
    /// by now). Returns what this closing held.
    pub fn open(&self) -> Held {
        self.update(|state| {
            state.closed = false;
            Held {
                held: state.held_total,
                rejected: state.rejected_total,
            }
        })
    }

    /// Fences this instance (trigger requests refused) or lifts the fence.
    pub fn set_fenced(&self, fenced: bool) {
        self.fenced
            .store(fenced, std::sync::atomic::Ordering::Release);
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.read(|state| state.closed)
    }

    /// Requests waiting now.
    pub fn held_now(&self) -> usize {
        self.read(|state| state.held)
    }

    /// Waits until no request that passed is still being forwarded or
    /// journaled; false on timeout.
    pub(crate) async fn wait_in_flight_done(&self, timeout: Duration) -> bool {
        let mut changed = self.changed.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if self.read(|state| state.in_flight) == 0 {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}

/// Why the gate refused a request (the caller answers `503` with
/// `Retry-After`: the client should try again in a moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The hold buffer is full (by count or bytes).
    #[error("write hold buffer full during a cutover")]
    BufferFull,
    /// The request waited [`HOLD_LIMIT`] and the flip still holds writes.
    #[error("writes held too long during a cutover")]
    HeldTooLong,
    /// This instance could not renew its fleet lease: it fenced itself.
    #[error("instance fenced: its fleet lease could not be renewed")]
    Fenced,
}

impl Refused {
    /// The reason, for the error response's log line.
    pub fn reason(self) -> &'static str {
        match self {
            Self::BufferFull => "write hold buffer full during a cutover",
            Self::HeldTooLong => "writes held too long during a cutover",
            Self::Fenced => "instance fenced: its fleet lease could not be renewed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_held: usize) -> Arc<Gate> {
        Arc::new(Gate::new(
            max_held,
            1 << 20,
            Counter::default(),
            Counter::default(),
        ))
    }

    #[tokio::test]
    async fn an_open_gate_counts_requests_in_flight() {
        let gate = gate(10);
        let pass = gate.pass(10).await.unwrap();
        assert!(!gate.wait_in_flight_done(Duration::from_millis(10)).await);
        drop(pass);
        assert!(gate.wait_in_flight_done(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn a_closed_gate_holds_until_opened() {
        let gate = gate(10);
        gate.close();
        let waiting = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.pass(10).await.map(|_| ()) })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.held_now() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(!waiting.is_finished());
        let held = gate.open();
        assert_eq!(
            held,
            Held {
                held: 1,
                rejected: 0
            }
        );
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_full_buffer_refuses_with_503() {
        let gate = gate(1);
        gate.close();
        let first = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.pass(1).await.map(|_| ()) })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.held_now() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let refused = gate.pass(1).await.unwrap_err();
        assert_eq!(refused, Refused::BufferFull);
        assert_eq!(
            gate.open(),
            Held {
                held: 1,
                rejected: 1
            }
        );
        first.await.unwrap().unwrap();
    }
}
