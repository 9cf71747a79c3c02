//! The sync's adaptive concurrency limit: how many jobs may write to one
//! server at once, sized by what that server can take rather than fixed.
//!
//! A fixed pool caps throughput at `jobs / (round trips per key × RTT)`:
//! 16 jobs against a target 100 ms away sync at most ~100 keys/s, whatever
//! the target could do. This limit grows while the server's latency stays
//! near its minimum and backs off when latency rises or the server says it
//! is overloaded, in the spirit of Envoy's adaptive-concurrency filter and
//! Netflix's concurrency-limits (a gradient on latency, AIMD on errors):
//!
//! - **Signal.** Every management-API exchange with the server reports its
//!   latency and verdict ([`crate::upstream::Observer`]); the limit is in
//!   jobs, the signal is per request, so a mix of keys that cost one or two
//!   round trips does not blur it.
//! - **Windows.** Samples are judged per window of about one minimum round
//!   trip (at least [`MIN_WINDOW`], [`MIN_SAMPLES`] answers). The window's
//!   median is compared with the minimum latency seen over the last
//!   [`MIN_RTT_MEMORY`] (the window's 10th percentile, so one fast outlier
//!   does not set it): above `min × TOLERANCE + SLACK` the limit shrinks by
//!   the ratio (the gradient, at most halved); otherwise, if jobs waited
//!   for a permit during the window (the limit was what held them), it
//!   grows by [`GROWTH`]. An unused limit does not grow: it stays a claim
//!   backed by evidence.
//! - **Overload.** A `429` or `503` (or a timeout) halves the limit at once,
//!   at most once per window (the answers of requests already in flight
//!   say the same thing). A `Retry-After` holds every new job until it
//!   passes; `servers::call` holds every request too, so the server is never
//!   called sooner than it asked.
//! - **Bounds.** The limit stays within `[MIN_LIMIT, max]` (`sync.max_concurrency`)
//!   and starts at `initial` (`sync.workers`). When the sync's circuit
//!   breaker opens (the server is down), it drops back to `initial`: a
//!   server catching up after an outage is approached again from a low
//!   limit and grows only as fast as its latency allows.
//!
//! Permits are a fair (FIFO) semaphore whose size follows the limit; a
//! shrink takes free permits away at once and the rest as jobs finish.
//!
//! **Spare capacity.** The cutover's verify reads keys through the same
//! limit (the target's capacity is one), but only with what the sync's jobs
//! leave: [`Limiter::acquire_spare`] never queues ahead of a job. A verify
//! of a thousand keys once queued in front of the sync's jobs for several
//! round trips at 100 ms; the lag that built up then was the next pause.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::upstream::{Observer, Verdict};

/// The limit never goes below this (one probe at a time is the breaker's
/// business, not the limiter's).
pub const MIN_LIMIT: usize = 2;
/// Shortest judging window.
pub const MIN_WINDOW: Duration = Duration::from_millis(25);
/// Longest judging window.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);
/// Answers needed before a window is judged.
pub const MIN_SAMPLES: usize = 5;
/// How long the minimum latency is remembered: a server that became slower
/// for good is re-measured after this long.
pub const MIN_RTT_MEMORY: Duration = Duration::from_secs(10);
/// Latency up to `min × TOLERANCE + SLACK` counts as "near the minimum".
pub const TOLERANCE: f64 = 1.5;
/// Absolute slack on top of the tolerance: a local server's latency is a
/// few hundred microseconds and jitters by milliseconds with CPU load,
/// which is no sign of overload.
pub const SLACK: Duration = Duration::from_millis(5);
/// Growth per window while latency is near its minimum and jobs wait.
pub const GROWTH: f64 = 0.25;
/// What an overload answer (or a timeout) multiplies the limit by.
pub const OVERLOAD_BACKOFF: f64 = 0.5;
/// The most one window of rising latency takes away.
pub const MAX_LATENCY_BACKOFF: f64 = 0.5;
/// How long spare-capacity waiters go without any before they queue like
/// jobs ([`Limiter::acquire_spare`]).
pub const SPARE_PATIENCE: Duration = Duration::from_millis(250);
/// How often a spare-capacity waiter looks again without being woken.
const SPARE_RECHECK: Duration = Duration::from_millis(10);
/// Samples kept per window (a reservoir beyond that).
const WINDOW_SAMPLES: usize = 512;

/// The limiter's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Where the limit starts, and restarts after an outage.
    pub initial: usize,
    /// The cap.
    pub max: usize,
}

/// A snapshot, for `/status` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The current limit.
    pub limit: usize,
    /// Jobs holding a permit.
    pub in_flight: usize,
    /// Jobs waiting for one.
    pub waiting: usize,
    /// The minimum latency the limit is judged against, once known.
    pub min_latency: Option<Duration>,
    /// How long new jobs still wait for a `Retry-After`.
    pub throttled_for: Option<Duration>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    samples: Vec<Duration>,
    seen: usize,
    /// A job had to wait for a permit during the window.
    saturated: bool,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            samples: Vec::new(),
            seen: 0,
            saturated: false,
        }
    }

    fn push(&mut self, sample: Duration) {
        self.seen += 1;
        if self.samples.len() < WINDOW_SAMPLES {
            self.samples.push(sample);
        } else {
            // Reservoir sampling keeps the window's distribution.
            let slot = fastrand::usize(0..self.seen);
            if slot < WINDOW_SAMPLES {
                self.samples[slot] = sample;
            }
        }
    }
}

#[derive(Debug)]
struct State {
    limit: f64,
    /// Permits in existence (free in the semaphore or held).
    issued: usize,
    window: Window,
    /// Per judged window: when, and its fastest answers.
    fastest: VecDeque<(Instant, Duration)>,
    last_cut: Option<Instant>,
    retry_at: Option<Instant>,
}

impl State {
    fn min_latency(&self) -> Option<Duration> {
        self.fastest.iter().map(|(_, fastest)| *fastest).min()
    }

    fn window_length(&self) -> Duration {
        self.min_latency()
            .unwrap_or_default()
            .clamp(MIN_WINDOW, MAX_WINDOW)
    }
}

/// The adaptive concurrency limit of the sync's jobs against one server.
#[derive(Debug)]
pub struct Limiter {
    bounds: Bounds,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    /// Wakes one [`Limiter::acquire_spare`] waiter when a permit is
    /// returned or the limit grows.
    spare: Notify,
    /// The turn among spare-capacity waiters.
    spare_turn: tokio::sync::Mutex<()>,
    /// Since when spare-capacity waiters have found none
    /// ([`Limiter::acquire_spare`]: past [`SPARE_PATIENCE`] they queue).
    spare_starved_since: Mutex<Option<Instant>>,
}

/// A job's right to run; released on drop.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        let Some(permit) = self.permit.take() else {
            return;
        };
        let Ok(mut state) = self.limiter.state.lock() else {
            return;
        };
        // The limit shrank while this job ran: this permit goes away.
        if state.issued > capacity(state.limit) {
            state.issued -= 1;
            permit.forget();
            return;
        }
        drop(state);
        // Back in the semaphore (a queued job takes it first), then a
        // spare-capacity waiter may try.
        drop(permit);
        self.limiter.spare.notify_one();
    }
}

fn capacity(limit: f64) -> usize {
    // Truncation is the point: 16.9 allows 16 jobs.
    limit.floor() as usize
}

impl Limiter {
    /// A limiter starting at `bounds.initial` (clamped into the bounds).
    pub fn new(bounds: Bounds) -> Arc<Self> {
        let max = bounds.max.max(MIN_LIMIT);
        let initial = bounds.initial.clamp(MIN_LIMIT, max);
        let bounds = Bounds { initial, max };
        Arc::new(Self {
            bounds,
            permits: Arc::new(Semaphore::new(initial)),
            state: Mutex::new(State {
                limit: initial as f64,
                issued: initial,
                window: Window::new(Instant::now()),
                fastest: VecDeque::new(),
                last_cut: None,
                retry_at: None,
            }),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            spare: Notify::new(),
            spare_turn: tokio::sync::Mutex::new(()),
            spare_starved_since: Mutex::new(None),
        })
    }

    /// The bounds in force.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Waits for a permit (and for any `Retry-After` to pass). `None` when
    /// `stop` fires first.
    pub async fn acquire(self: &Arc<Self>, stop: &CancellationToken) -> Option<Permit> {
        self.throttled(stop).await?;
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.mark_saturated();
                self.waiting.fetch_add(1, Ordering::AcqRel);
                let permit = tokio::select! {
                    () = stop.cancelled() => None,
                    permit = Arc::clone(&self.permits).acquire_owned() => permit.ok(),
                };
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit?
            }
        };
        Some(self.admit(permit))
    }

    /// Like [`Limiter::acquire`], but only with capacity no job is waiting
    /// for: it takes a free permit when no job is queued, and otherwise
    /// waits for a returned permit that no job takes. For reads that may
    /// wait (the cutover's verify) and must not delay the sync.
    ///
    /// Not forever, though: while jobs always wait (a sync held at a low
    /// limit by a slow target, or by a starved CPU), there is no spare
    /// capacity at all, and a verify that waits for it checks nothing until
    /// the cutover's hold, which then has to check every key inside its
    /// pause bound. So once spare waiters have found none for
    /// [`SPARE_PATIENCE`], each queues like a job, behind the jobs already
    /// waiting (never ahead of one), one at a time (the spare waiters' turn
    /// is held meanwhile): the reads get one place in the queue, until
    /// spare capacity is found again.
    pub async fn acquire_spare(self: &Arc<Self>, stop: &CancellationToken) -> Option<Permit> {
        // One spare waiter at a time looks; the others queue behind it in
        // order, so a returned permit wakes one task, not a thousand.
        let _turn = tokio::select! {
            () = stop.cancelled() => return None,
            turn = self.spare_turn.lock() => turn,
        };
        loop {
            self.throttled(stop).await?;
            // Registered before looking, so a permit returned in between
            // is not missed.
            let returned = self.spare.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if self.waiting.load(Ordering::Acquire) == 0
                && let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned()
            {
                self.set_spare_starved(false);
                return Some(self.admit(permit));
            }
            self.set_spare_starved(true);
            if self.spare_starved_for() >= Some(SPARE_PATIENCE) {
                return self.acquire(stop).await;
            }
            // Demand beyond the limit, like a queued job: the limit may
            // grow if the server's latency allows.
            self.mark_saturated();
            // The timer covers a permit handed to a job that then gave up
            // waiting (stopping): nothing announces that one.
            tokio::select! {
                () = stop.cancelled() => return None,
                () = returned => {}
                () = tokio::time::sleep(SPARE_RECHECK) => {}
            }
        }
    }

    /// How long spare waiters have found no spare capacity, if they have
    /// not.
    fn spare_starved_for(&self) -> Option<Duration> {
        let since = *self.spare_starved_since.lock().ok()?;
        since.map(|at| at.elapsed())
    }

    /// Notes whether a spare waiter just found spare capacity.
    fn set_spare_starved(&self, starved: bool) {
        if let Ok(mut since) = self.spare_starved_since.lock() {
            match (starved, *since) {
                (false, _) => *since = None,
                (true, None) => *since = Some(Instant::now()),
                (true, Some(_)) => {}
            }
        }
    }

    /// Waits out a `Retry-After`; `None` when `stop` fires first.
    async fn throttled(&self, stop: &CancellationToken) -> Option<()> {
        loop {
            let retry_at = self.state.lock().ok().and_then(|state| state.retry_at);
            match retry_at {
                Some(at) if Instant::now() < at => {
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                _ => return Some(()),
            }
        }
    }

    fn admit(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Permit {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.permits.available_permits() == 0 {
            self.mark_saturated();
        }
        Permit {
            permit: Some(permit),
            limiter: Arc::clone(self),
        }
    }

    fn mark_saturated(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.window.saturated = true;
        }
    }

    /// The server is down (the sync's breaker opened): start again from
    /// the initial limit once it is back.
    pub fn restart(&self) {
        if let Ok(mut state) = self.state.lock() {
            let limit = self.bounds.initial as f64;
            if state.limit > limit {
                tracing::info!(
                    from = capacity(state.limit),
                    to = self.bounds.initial,
                    "sync concurrency back to its initial limit after an outage"
                );
                self.set_limit(&mut state, limit);
            }
            state.window = Window::new(Instant::now());
        }
    }

    /// Raises the limit to at least `limit` (within the bounds); a new
    /// window starts, so the latency judges the new limit afresh.
    pub fn raise_to(&self, limit: usize) {
        if let Ok(mut state) = self.state.lock()
            && capacity(state.limit) < limit.min(self.bounds.max)
        {
            tracing::info!(
                from = capacity(state.limit),
                to = limit.min(self.bounds.max),
                "sync concurrency raised to the previous secondary's limit"
            );
            self.set_limit(&mut state, limit as f64);
            state.window = Window::new(Instant::now());
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        let (limit, min_latency, retry_at) = match self.state.lock() {
            Ok(state) => (capacity(state.limit), state.min_latency(), state.retry_at),
            Err(_) => (0, None, None),
        };
        let now = Instant::now();
        Snapshot {
            limit,
            in_flight: self.in_flight.load(Ordering::Acquire),
            waiting: self.waiting.load(Ordering::Acquire),
            min_latency,
            throttled_for: retry_at
                .filter(|at| *at > now)
                .map(|at| at.saturating_duration_since(now)),
        }
    }

    /// Moves the limit to `limit` (within the bounds) and the permits with
    /// it.
    fn set_limit(&self, state: &mut State, limit: f64) {
        let limit = limit.clamp(MIN_LIMIT as f64, self.bounds.max as f64);
        state.limit = limit;
        let wanted = capacity(limit);
        if wanted > state.issued {
            self.permits.add_permits(wanted - state.issued);
            state.issued = wanted;
            self.spare.notify_one();
        } else if wanted < state.issued {
            // Free permits go now; held ones as their jobs finish.
            let excess = state.issued - wanted;
            let free = excess.min(self.permits.available_permits());
            if let Some(Ok(taken)) = u32::try_from(free)
                .ok()
                .map(|n| Arc::clone(&self.permits).try_acquire_many_owned(n))
            {
                taken.forget();
                state.issued -= free;
            }
        }
    }

    /// Halves the limit, at most once per window.
    fn cut(&self, state: &mut State, now: Instant) {
        let window = state.window_length();
        if state
            .last_cut
            .is_some_and(|at| now.saturating_duration_since(at) < window)
        {
            return;
        }
        state.last_cut = Some(now);
        let limit = state.limit * OVERLOAD_BACKOFF;
        self.set_limit(state, limit);
        state.window = Window::new(now);
    }

    /// Judges the window if it is complete.
    fn judge(&self, state: &mut State, now: Instant) {
        let length = state.window_length();
        if now.saturating_duration_since(state.window.started) < length
            || state.window.samples.len() < MIN_SAMPLES
        {
            return;
        }
        let mut window = std::mem::replace(&mut state.window, Window::new(now));
        let samples = &mut window.samples;
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        let fastest = samples[samples.len() / 10];
        state.fastest.push_back((now, fastest));
        while state
            .fastest
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > MIN_RTT_MEMORY)
        {
            state.fastest.pop_front();
        }
        let Some(min) = state.min_latency() else {
            return;
        };
        let threshold = min.mul_f64(TOLERANCE) + SLACK;
        if median > threshold {
            let ratio = threshold.as_secs_f64() / median.as_secs_f64();
            let limit = state.limit * ratio.max(MAX_LATENCY_BACKOFF);
            tracing::debug!(
                median = ?median,
                min = ?min,
                limit = capacity(limit),
                "sync target latency rising; concurrency lowered"
            );
            self.set_limit(state, limit);
        } else if window.saturated || self.waiting.load(Ordering::Acquire) > 0 {
            let limit = state.limit + (state.limit * GROWTH).max(1.0);
            self.set_limit(state, limit);
        }
    }
}

impl Observer for Limiter {
    fn observe(&self, elapsed: Duration, verdict: Verdict) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        match verdict {
            Verdict::Answered => {
                state.window.push(elapsed);
                self.judge(&mut state, now);
            }
            Verdict::Overloaded { retry_after } => {
                if let Some(delay) = retry_after {
                    let at = now + delay.min(crate::upstream::MAX_RETRY_AFTER);
                    if state.retry_at.is_none_or(|current| current < at) {
                        state.retry_at = Some(at);
                    }
                }
                self.cut(&mut state, now);
            }
            Verdict::TimedOut => self.cut(&mut state, now),
            Verdict::Unreachable => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(initial: usize, max: usize) -> Arc<Limiter> {
        Limiter::new(Bounds { initial, max })
    }

    /// Plays `windows` windows of a server answering in `latency`, with
    /// more jobs than the limit waiting (all permits held, one more job
    /// queued), answers spread over the window.
    async fn load(limiter: &Arc<Limiter>, latency: Duration, windows: usize) {
        let stop = CancellationToken::new();
        for _ in 0..windows {
            let mut held = Vec::new();
            while let Ok(permit) = Arc::clone(&limiter.permits).try_acquire_owned() {
                limiter.in_flight.fetch_add(1, Ordering::AcqRel);
                held.push(Permit {
                    permit: Some(permit),
                    limiter: Arc::clone(limiter),
                });
            }
            // One more job waits: the limit is what holds it.
            let waiter = {
                let limiter = Arc::clone(limiter);
                let stop = stop.clone();
                tokio::spawn(async move { limiter.acquire(&stop).await })
            };
            tokio::task::yield_now().await;
            let answers = held.len().max(MIN_SAMPLES);
            let step = latency.max(MIN_WINDOW) / u32::try_from(answers).unwrap();
            for _ in 0..answers {
                tokio::time::advance(step).await;
                limiter.observe(latency, Verdict::Answered);
            }
            drop(held);
            drop(waiter.await.unwrap());
        }
    }

    /// Exactly one window whose answers all took `latency`.
    async fn one_window(limiter: &Limiter, latency: Duration) {
        let length = {
            let mut state = limiter.state.lock().unwrap();
            state.window = Window::new(Instant::now());
            state.window_length()
        };
        tokio::time::advance(length).await;
        for _ in 0..MIN_SAMPLES {
            limiter.observe(latency, Verdict::Answered);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grows_while_latency_stays_near_its_minimum() {
        let limiter = limiter(16, 1024);
        load(&limiter, Duration::from_millis(100), 6).await;
        let grown = limiter.snapshot().limit;
        assert!(grown > 16 * 2, "limit {grown} after six good windows");
        assert_eq!(
            limiter.snapshot().min_latency,
            Some(Duration::from_millis(100))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_grow_when_nothing_waits() {
        let limiter = limiter(16, 1024);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(100)).await;
            for _ in 0..MIN_SAMPLES {
                limiter.observe(Duration::from_millis(100), Verdict::Answered);
            }
        }
        assert_eq!(limiter.snapshot().limit, 16);
    }

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_cap() {
        let limiter = limiter(16, 40);
        load(&limiter, Duration::from_millis(20), 30).await;
        assert_eq!(limiter.snapshot().limit, 40);
        assert_eq!(limiter.permits.available_permits(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn shrinks_when_latency_rises() {
        let limiter = limiter(16, 1024);
        load(&limiter, Duration::from_millis(100), 8).await;
        let before = limiter.snapshot().limit;
        assert!(before > 16);
        // The server slows down to four times its minimum: one window of
        // it shrinks the limit, by at most half.
        one_window(&limiter, Duration::from_millis(400)).await;
        let after = limiter.snapshot().limit;
        assert!(after < before, "limit {before} -> {after}");
        assert!(
            after >= before / 2,
            "at most halved per window: {before} -> {after}"
        );
        // A milder rise shrinks it by the ratio.
        one_window(&limiter, Duration::from_millis(180)).await;
        let milder = limiter.snapshot().limit;
        assert!(milder < after && milder > after / 2, "{after} -> {milder}");
        load(&limiter, Duration::from_millis(400), 5).await;
        let later = limiter.snapshot().limit;
        assert!(later < milder, "keeps shrinking: {milder} -> {later}");
        // Free permits are taken away at once.
        assert_eq!(limiter.permits.available_permits(), later);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_within_the_slack_is_not_overload() {
        let limiter = limiter(16, 1024);
        load(&limiter, Duration::from_micros(300), 2).await;
        let before = limiter.snapshot().limit;
        load(&limiter, Duration::from_millis(3), 4).await;
        assert!(limiter.snapshot().limit > before);
    }

    #[tokio::test(start_paused = true)]
    async fn overload_answers_halve_it_once_per_window() {
        for verdict in [Verdict::Overloaded { retry_after: None }, Verdict::TimedOut] {
            let limiter = limiter(64, 1024);
            // A burst of 429/503 answers from requests that were in flight
            // together counts once.
            for _ in 0..10 {
                limiter.observe(Duration::from_millis(50), verdict);
            }
            assert_eq!(limiter.snapshot().limit, 32);
            tokio::time::advance(MIN_WINDOW).await;
            limiter.observe(Duration::from_millis(50), verdict);
            assert_eq!(limiter.snapshot().limit, 16);
            for _ in 0..20 {
                tokio::time::advance(MIN_WINDOW).await;
                limiter.observe(Duration::from_millis(50), verdict);
            }
            assert_eq!(limiter.snapshot().limit, MIN_LIMIT);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrink_takes_held_permits_back_as_jobs_finish() {
        let limiter = limiter(16, 1024);
        let stop = CancellationToken::new();
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(limiter.acquire(&stop).await.unwrap());
        }
        limiter.observe(
            Duration::from_millis(5),
            Verdict::Overloaded { retry_after: None },
        );
        assert_eq!(limiter.snapshot().limit, 8);
        assert_eq!(limiter.snapshot().in_flight, 16);
        // Nine of the sixteen finish: one permit is free again (16 - 9 = 7
        // still run, the limit is 8).
        held.truncate(7);
        assert_eq!(limiter.permits.available_permits(), 1);
        drop(held);
        assert_eq!(limiter.permits.available_permits(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_every_new_job() {
        let limiter = limiter(16, 1024);
        limiter.observe(
            Duration::from_millis(5),
            Verdict::Overloaded {
                retry_after: Some(Duration::from_secs(3)),
            },
        );
        let snapshot = limiter.snapshot();
        assert_eq!(snapshot.throttled_for, Some(Duration::from_secs(3)));
        let stop = CancellationToken::new();
        let before = Instant::now();
        let permit = limiter.acquire(&stop).await;
        assert!(permit.is_some());
        assert_eq!(before.elapsed(), Duration::from_secs(3));
        assert_eq!(limiter.snapshot().throttled_for, None);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_jobs_stop_when_told() {
        let limiter = limiter(2, 2);
        let stop = CancellationToken::new();
        let _a = limiter.acquire(&stop).await.unwrap();
        let _b = limiter.acquire(&stop).await.unwrap();
        let waiting = {
            let (limiter, stop) = (Arc::clone(&limiter), stop.clone());
            tokio::spawn(async move { limiter.acquire(&stop).await.is_some() })
        };
        tokio::task::yield_now().await;
        assert_eq!(limiter.snapshot().waiting, 1);
        stop.cancel();
        assert!(!waiting.await.unwrap());
        assert_eq!(limiter.snapshot().waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_restarts_it_from_the_initial_limit() {
        let limiter = limiter(16, 1024);
        load(&limiter, Duration::from_millis(50), 8).await;
        assert!(limiter.snapshot().limit > 16);
        limiter.restart();
        assert_eq!(limiter.snapshot().limit, 16);
        assert_eq!(limiter.permits.available_permits(), 16);
    }

    /// Polls `task` a few times (paused time advances past the spare
    /// waiters' recheck timer too); whether it has finished.
    async fn settled<T>(task: &tokio::task::JoinHandle<T>) -> bool {
        for _ in 0..5 {
            tokio::time::sleep(SPARE_RECHECK).await;
        }
        task.is_finished()
    }

    #[tokio::test(start_paused = true)]
    async fn spare_capacity_never_goes_ahead_of_a_waiting_job() {
        let limiter = limiter(2, 2);
        let stop = CancellationToken::new();
        let a = limiter.acquire(&stop).await.unwrap();
        let b = limiter.acquire(&stop).await.unwrap();
        // A verify read asks first, a job after it.
        let spare = {
            let (limiter, stop) = (Arc::clone(&limiter), stop.clone());
            tokio::spawn(async move { limiter.acquire_spare(&stop).await })
        };
        assert!(!settled(&spare).await);
        let job = {
            let (limiter, stop) = (Arc::clone(&limiter), stop.clone());
            tokio::spawn(async move { limiter.acquire(&stop).await })
        };
        assert!(!settled(&job).await);
        // The first permit returned goes to the job, not the earlier read.
        drop(a);
        assert!(settled(&job).await);
        assert!(!settled(&spare).await);
        // Nothing else queued: the next one is the read's.
        drop(b);
        assert!(settled(&spare).await);
        assert!(spare.await.unwrap().is_some());
        assert!(job.await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn spare_waiters_that_never_find_any_queue_behind_the_jobs_after_their_patience() {
        let limiter = limiter(2, 2);
        let stop = CancellationToken::new();
        let spawn_job = || {
            let (limiter, stop) = (Arc::clone(&limiter), stop.clone());
            tokio::spawn(async move { limiter.acquire(&stop).await })
        };
        // Every permit busy and a job always waiting: no spare capacity.
        let a = limiter.acquire(&stop).await.unwrap();
        let b = limiter.acquire(&stop).await.unwrap();
        let first = spawn_job();
        let spare = {
            let (limiter, stop) = (Arc::clone(&limiter), stop.clone());
            tokio::spawn(async move { limiter.acquire_spare(&stop).await })
        };
        tokio::time::sleep(SPARE_PATIENCE * 2).await;
        assert!(!spare.is_finished());
        // A returned permit goes to the job that waited before the read;
        // a job that queues after the read has queued waits behind it.
        drop(a);
        assert!(settled(&first).await);
        let second = spawn_job();
        assert!(!settled(&second).await);
        drop(b);
        assert!(
            settled(&spare).await,
            "the read waits for spare capacity that never comes"
        );
        assert!(!second.is_finished());
        drop(spare.await.unwrap());
        assert!(settled(&second).await);
        // Spare capacity found at once again: the patience starts over.
        drop(first.await.unwrap());
        drop(second.await.unwrap());
        assert!(limiter.acquire_spare(&stop).await.is_some());
        assert_eq!(limiter.spare_starved_for(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn spare_capacity_is_taken_at_once_and_by_each_waiter_in_turn() {
        let limiter = limiter(3, 3);
        let stop = CancellationToken::new();
        // Free permits, nobody queued: no wait.
        let held: Vec<Permit> = [
            limiter.acquire_spare(&stop).await.unwrap(),
            limiter.acquire_spare(&stop).await.unwrap(),
            limiter.acquire_spare(&stop).await.unwrap(),
        ]
        .into();
        assert_eq!(limiter.snapshot().in_flight, 3);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (limiter, stop) = (Arc::clone(&limiter), stop.clone());
                tokio::spawn(async move { limiter.acquire_spare(&stop).await })
            })
            .collect();
        for waiter in &waiters {
            assert!(!settled(waiter).await);
        }
        // All returned at once: every waiter gets one.
        drop(held);
        for waiter in waiters {
            assert!(waiter.await.unwrap().is_some());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spare_capacity_waiters_stop_when_told() {
        let limiter = limiter(2, 2);
        let stop = CancellationToken::new();
        let _a = limiter.acquire(&stop).await.unwrap();
        let _b = limiter.acquire(&stop).await.unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (limiter, stop) = (Arc::clone(&limiter), stop.clone());
                tokio::spawn(async move { limiter.acquire_spare(&stop).await.is_some() })
            })
            .collect();
        tokio::task::yield_now().await;
        stop.cancel();
        for waiter in waiters {
            assert!(!waiter.await.unwrap());
        }
    }
}
