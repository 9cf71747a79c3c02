//! The sync's circuit breaker: one outage, one retry timer.
//!
//! Without it every pending key retries on its own backoff timer. With the
//! secondary down and a backlog of thousands of keys that is thousands of
//! attempts per second, each of which first reads the key from the primary
//! (production load for nothing), and after the outage every key still
//! waits out its own timer, so the backlog drains long after the secondary
//! is back (measured: 3,681 failed attempts/s and a 25 s drain, benches
//! §3).
//!
//! After [`THRESHOLD`] transient failures in a row with no success in
//! between, the breaker *opens*: lanes stop trying and wait. One lane at a
//! time is let through as a probe, on one exponential backoff timer; its
//! success closes the breaker and wakes every lane at once, its failure
//! moves the next probe further out. An isolated failure (one record the
//! secondary answers 500 for) does not open it: successes of other lanes
//! keep resetting the count, and that lane keeps its own backoff.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Transient failures in a row, with no success in between, that open the
/// breaker.
pub(super) const THRESHOLD: u32 = 8;

/// Longest wait between probes. One request every two seconds costs the
/// servers nothing, and the backlog starts draining at most this long
/// after the secondary is back (the lanes' own `retry_max` is for isolated
/// failures).
pub(super) const PROBE_MAX: Duration = Duration::from_secs(2);

/// What a lane may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// The breaker is closed: try, with the lane's own backoff on failure.
    Normal,
    /// The breaker is open and this lane tests the secondary for all.
    Probe,
}

/// The outcome of one attempt, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The servers answered (a success, or a refusal retrying cannot fix).
    Answered,
    /// Unreachable, timed out, 5xx, 429.
    Transient,
}

#[derive(Debug, Default)]
struct State {
    failures_in_a_row: u32,
    open: bool,
    probing: bool,
    /// Probes that failed since the breaker opened.
    probes_failed: u32,
    next_probe: Option<Instant>,
}

/// Shared by every lane of one sync.
#[derive(Debug)]
pub(super) struct Breaker {
    state: Mutex<State>,
    changed: Notify,
    backoff: fn(u32, Duration, Duration) -> Duration,
    initial: Duration,
    max: Duration,
    /// Set to 1 while open (`handover_sync_outage`).
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Breaker {
    /// A closed breaker whose probes back off from `initial` to `max`
    /// (with `backoff(attempt, initial, max)`), `max` capped at
    /// [`PROBE_MAX`].
    pub(super) fn new(
        initial: Duration,
        max: Duration,
        backoff: fn(u32, Duration, Duration) -> Duration,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            backoff,
            initial,
            max: max.min(PROBE_MAX),
            gauge,
        }
    }

    /// Waits until this lane may try. Returns `None` when `stop` fires.
    pub(super) async fn admit(
        &self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Admission> {
        loop {
            // Registered before the state is read, so a change between the
            // read and the wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let Ok(mut state) = self.state.lock() else {
                    return Some(Admission::Normal);
                };
                if !state.open {
                    return Some(Admission::Normal);
                }
                match state.next_probe {
                    Some(at) if !state.probing && Instant::now() >= at => {
                        state.probing = true;
                        return Some(Admission::Probe);
                    }
                    // A probe is out: wait for its verdict.
                    _ if state.probing => None,
                    at => at,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = &mut changed => {}
                () = sleep_until(wake_at) => {}
            }
        }
    }

    /// Counts an attempt. Returns whether the breaker is open afterwards
    /// (the lane then waits in [`Breaker::admit`] rather than on its own
    /// timer).
    pub(super) fn record(&self, admission: Admission, outcome: Outcome) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        match outcome {
            Outcome::Answered => {
                state.failures_in_a_row = 0;
                if state.open {
                    tracing::info!(
                        failed_probes = state.probes_failed,
                        "the sync reaches the servers again; every waiting change resumes"
                    );
                    *state = State::default();
                    self.gauge.set(0);
                    self.changed.notify_waiters();
                }
            }
            Outcome::Transient => {
                state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
                if admission == Admission::Probe && state.open {
                    state.probing = false;
                    state.probes_failed = state.probes_failed.saturating_add(1);
                    let delay = (self.backoff)(state.probes_failed, self.initial, self.max);
                    state.next_probe = Some(Instant::now() + delay);
                    if state.probes_failed % 10 == 0 {
                        tracing::warn!(
                            failed_probes = state.probes_failed,
                            next_probe_in = ?delay,
                            "the sync still cannot reach the servers"
                        );
                    }
                    self.changed.notify_waiters();
                } else if !state.open && state.failures_in_a_row >= THRESHOLD {
                    state.open = true;
                    self.gauge.set(1);
                    state.probing = false;
                    state.probes_failed = 0;
                    let delay = (self.backoff)(0, self.initial, self.max);
                    state.next_probe = Some(Instant::now() + delay);
                    tracing::warn!(
                        failures_in_a_row = state.failures_in_a_row,
                        "the sync cannot reach the servers: changes wait in the journal, one probe retries for all"
                    );
                }
            }
        }
        state.open
    }

    /// Whether the breaker is open.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.state.lock().map(|s| s.open).unwrap_or(false)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio_util::sync::CancellationToken;

    use super::*;

    fn doubling(attempt: u32, initial: Duration, max: Duration) -> Duration {
        initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(max)
    }

    /// A breaker opened by `THRESHOLD` transient failures in a row.
    fn opened() -> Arc<Breaker> {
        let breaker = breaker();
        for _ in 0..THRESHOLD {
            breaker.record(Admission::Normal, Outcome::Transient);
        }
        breaker
    }

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            Duration::from_millis(100),
            Duration::from_secs(30),
            doubling,
            prometheus_client::metrics::gauge::Gauge::default(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn isolated_failures_keep_it_closed() {
        let breaker = breaker();
        for _ in 0..100 {
            for _ in 0..THRESHOLD - 1 {
                assert!(!breaker.record(Admission::Normal, Outcome::Transient));
            }
            assert!(!breaker.record(Admission::Normal, Outcome::Answered));
        }
        let stop = CancellationToken::new();
        assert_eq!(breaker.admit(&stop).await, Some(Admission::Normal));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_lets_one_probe_through_at_a_time_and_its_success_releases_everyone() {
        let breaker = opened();
        assert!(breaker.is_open());
        assert_eq!(breaker.gauge.get(), 1);
        let stop = CancellationToken::new();
        let probes = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let mut lanes = Vec::new();
        for _ in 0..50 {
            let (breaker, stop, probes, released) = (
                Arc::clone(&breaker),
                stop.clone(),
                Arc::clone(&probes),
                Arc::clone(&released),
            );
            lanes.push(tokio::spawn(async move {
                loop {
                    match breaker.admit(&stop).await {
                        Some(Admission::Probe) => {
                            let n = probes.fetch_add(1, Ordering::SeqCst) + 1;
                            // The secondary is back at the fourth probe.
                            let outcome = if n < 4 {
                                Outcome::Transient
                            } else {
                                Outcome::Answered
                            };
                            breaker.record(Admission::Probe, outcome);
                            if outcome == Outcome::Answered {
                                released.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                        Some(Admission::Normal) => {
                            released.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        None => return,
                    }
                }
            }));
        }
        let started = Instant::now();
        for lane in lanes {
            lane.await.unwrap();
        }
        // 50 lanes, 4 attempts in all (not 50 per backoff step), spaced
        // 100 + 200 + 400 + 800 ms.
        assert_eq!(probes.load(Ordering::SeqCst), 4);
        assert_eq!(released.load(Ordering::SeqCst), 50);
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert!(!breaker.is_open());
        assert_eq!(breaker.gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_come_at_least_every_probe_max_however_long_the_outage() {
        let breaker = opened();
        let stop = CancellationToken::new();
        for _ in 0..20 {
            assert_eq!(breaker.admit(&stop).await, Some(Admission::Probe));
            breaker.record(Admission::Probe, Outcome::Transient);
        }
        let before = Instant::now();
        assert_eq!(breaker.admit(&stop).await, Some(Admission::Probe));
        assert_eq!(before.elapsed(), PROBE_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_lanes_stop_when_told() {
        let breaker = opened();
        let stop = CancellationToken::new();
        assert_eq!(breaker.admit(&stop).await, Some(Admission::Probe));
        let waiting = {
            let (breaker, stop) = (Arc::clone(&breaker), stop.clone());
            tokio::spawn(async move { breaker.admit(&stop).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
        assert_eq!(waiting.await.unwrap(), None);
    }
}
