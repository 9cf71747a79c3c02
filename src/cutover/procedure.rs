//! The fenced flip, forward (`cutover`) and back (`rollback`):
//!
//! 1. **Pre-flight**: the new primary answers and accepts our management
//!    token; both servers publish identical JWK sets (otherwise sessions and
//!    tokens break: the migration guide's first step); every live session
//!    of the old primary is alive on the new one, no nearer to its idle
//!    expiry (those last used earlier there are touched); the backfill is done
//!    (forward only); the sync lag is under `cutover.max_lag`; no dead
//!    letters (or `--force`). Each check reports pass/fail with its figure.
//!    `--dry-run` stops here.
//! 2. **Hold**: trigger requests wait at the gate (reads keep flowing).
//! 3. **Drain**: the requests that had passed the gate finish journaling;
//!    the journal is drained to zero and every sync lane is idle. This is
//!    *proven* from the journal's own counters, not assumed.
//! 4. **Verify**: every key synced since shortly before the hold is read on
//!    both sides and must be equal. To keep the pause short at a distance,
//!    most of it happens outside the pause: before the hold, the recent
//!    keys are verified in rounds while writes flow (each round covering
//!    what synced during the previous one), and during the hold a key is
//!    verified as soon as its lane is idle (writes are held, so it no
//!    longer changes), alongside the drain. Keys are read on both sides at
//!    once, as many keys at a time as the secondary's concurrency limiter
//!    allows (the sync's own limit, growing while the target keeps up). A
//!    key found different before the drain completes is checked again
//!    after it: only a difference then is drift.
//! 5. **Flip**: the new phase and epoch are persisted, then the primary
//!    switches.
//! 6. **Release**: held requests go on, to the new primary.
//!
//! Steps 2–5 are bounded by `max_pause`. Past it, or on any error, the flip
//! aborts: held requests are released to the old primary, the phase is
//! what it was, and the report says why. Nothing is lost either way.
//!
//! A fleet (several instances sharing a PostgreSQL store) flips the same
//! way, coordinated through the store's control row: see [`fleet`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::gate::Gate;
use super::parity::{self, Parity};
use super::{Event, Phase, Phases};
use crate::api::{Check, FlipReport, FlipRequest, Step};
use crate::backfill::Backfill;
use crate::journal::{DeadLetters, Journal};
use crate::metrics::CutoverMetrics;
use crate::model::Key;
use crate::model::Side;
use crate::servers::Servers;
use crate::store::Registrations;
use crate::sync::Recorder;
use crate::sync::SyncHandle;
use crate::verify::Verifier;

mod fleet;
pub use fleet::{Fleet, fleet_state};

/// Default bound on the write pause.
pub(crate) const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(2);
/// Default largest sync lag at which a cutover may start: the drain must
/// fit in the pause.
pub(crate) const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);
/// Keys synced this long before the hold are verified too (the writes
/// right before the cutover are the ones most likely still settling).
pub(crate) const VERIFY_LOOKBACK: Duration = Duration::from_secs(2);
/// Default time spent verifying recent keys before the hold: about what
/// the pause itself may take, and nothing is held meanwhile.
pub(crate) const DEFAULT_VERIFY_AHEAD: Duration = Duration::from_secs(2);
/// Verify rounds before the hold, at most: each covers what synced during
/// the previous one, so the set left for the pause shrinks round by round.
const VERIFY_ROUNDS_BEFORE_HOLD: usize = 3;
/// How long a replaced client secret stays valid on the server that
/// replaced it, and only there (RN 11.0): a relying party may still present
/// it.
pub const PREVIOUS_SECRET_GRACE: Duration = Duration::from_secs(30 * 60);
/// How long state that lives only on the previous primary (login sessions
/// in progress, authorization codes, identifier access tokens) is served
/// from it after a flip: an authorization code lives 10 minutes.
pub(crate) const DEFAULT_FALLBACK_WINDOW: Duration = Duration::from_secs(600);

/// What the flip needs besides [`super::Config`].
#[derive(Debug, Clone)]
pub struct Environment {
    /// Whether the target can take traffic (an Authlete target needs
    /// `target.new_primary_url`: Authlete itself is an API, not an OP).
    pub target_serves_traffic: bool,
    /// The verifier, for the pre-flight passes over live records.
    pub verifier: Verifier,
    /// Clients' credentials beyond the records (secret changes).
    pub registrations: Arc<Registrations>,
    /// The secret-key parity prover (`None` for an Authlete target).
    pub parity: Option<Arc<Parity>>,
    /// Fleet mode: the shared store and this instance's name in it (the
    /// flip is coordinated through the store: [`fleet`]).
    pub shared: Option<Fleet>,
}

/// A flip held, drained and verified, about to be committed.
#[derive(Debug)]
struct Prepared {
    started: Instant,
    report: FlipReport,
}

/// The cutover machinery.
#[derive(Debug)]
pub struct Cutover {
    /// The persisted phase.
    pub phases: Arc<Phases>,
    /// The write gate.
    pub gate: Arc<Gate>,
    /// Which side is primary.
    pub servers: Arc<Servers>,
    /// The journal (to prove the drain).
    pub journal: Journal,
    /// The sync (idle lanes, recently synced keys).
    pub sync: SyncHandle,
    /// The backfill (must be done before a cutover).
    pub backfill: Backfill,
    /// The dead letters (should be none).
    pub dead_letters: Arc<DeadLetters>,
    /// Changes kept in memory (must be none).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: CutoverMetrics,
    /// Settings.
    pub config: super::Config,
    /// What the settings do not say.
    pub environment: Environment,
    /// One flip at a time.
    running: tokio::sync::Mutex<()>,
    prepared: Mutex<Option<Prepared>>,
}

impl Cutover {
    /// The machinery over the running subsystems.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        phases: Arc<Phases>,
        gate: Arc<Gate>,
        servers: Arc<Servers>,
        journal: Journal,
        sync: SyncHandle,
        backfill: Backfill,
        dead_letters: Arc<DeadLetters>,
        recorder: Recorder,
        metrics: CutoverMetrics,
        config: super::Config,
        environment: Environment,
    ) -> Self {
        let cutover = Self {
            phases,
            gate,
            servers,
            journal,
            sync,
            backfill,
            dead_letters,
            recorder,
            metrics,
            config,
            environment,
            running: tokio::sync::Mutex::new(()),
            prepared: Mutex::new(None),
        };
        cutover.publish();
        cutover
    }

    fn publish(&self) {
        let state = self.phases.current();
        self.metrics.set_phase(state.phase.as_str(), state.epoch);
    }

    fn report(&self, outcome: crate::api::Outcome) -> FlipReport {
        let state = self.phases.current();
        FlipReport {
            outcome,
            phase: state.phase,
            epoch: state.epoch,
            primary: self.servers.primary_side(),
            ..FlipReport::default()
        }
    }

    /// `handover cutover`: source → target.
    pub async fn cutover(&self, request: &FlipRequest) -> FlipReport {
        self.flip(request, Phase::Mirroring).await
    }

    /// `handover rollback`: target → source.
    pub async fn rollback(&self, request: &FlipRequest) -> FlipReport {
        self.flip(request, Phase::CutOver).await
    }

    /// `handover complete`: stop syncing for good.
    pub async fn complete(&self) -> FlipReport {
        let _running = self.running.lock().await;
        if let Some(fleet) = &self.environment.shared {
            return self.complete_fleet(fleet).await;
        }
        match self.phases.apply(Event::Complete) {
            Ok(_) => {
                self.publish();
                self.report(crate::api::Outcome::Completed)
            }
            Err(err) => {
                let mut report = self.report(crate::api::Outcome::Refused);
                report.reason = Some(err.to_string());
                report
            }
        }
    }

    async fn flip(&self, request: &FlipRequest, from: Phase) -> FlipReport {
        let _running = self.running.lock().await;
        if let Some(fleet) = &self.environment.shared {
            return self.flip_fleet(fleet, request, from).await;
        }
        let report = self.prepare_locked(request, from).await;
        if report.outcome != crate::api::Outcome::Prepared {
            return report;
        }
        match self.take_prepared() {
            Some(prepared) => self.commit_locked(prepared),
            None => report,
        }
    }

    fn take_prepared(&self) -> Option<Prepared> {
        self.prepared.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Pre-flight and the held drain. On success the gate is closed and a
    /// `Prepared` is stored; otherwise everything is as before.
    async fn prepare_locked(&self, request: &FlipRequest, from: Phase) -> FlipReport {
        let state = self.phases.current();
        let mut report = self.report(crate::api::Outcome::Refused);
        if state.phase != from {
            report.reason = Some(format!(
                "cannot {} while {}",
                verb(from),
                state.phase.as_str()
            ));
            return report;
        }
        let new_primary = from.primary().other();
        report.preflight = self.preflight(new_primary, from == Phase::Mirroring).await;
        if stops_after_preflight(&mut report, request) {
            return report;
        }

        // Verify what synced recently while writes still flow: the pause
        // then only covers what syncs from now on.
        let verified_before = match self.verify_before_hold().await {
            Ok(verified) => verified,
            Err(reason) => {
                report.reason = Some(format!("verifying recent keys failed: {reason}"));
                return report;
            }
        };
        let max_pause = self.max_pause(request);
        if let Err(err) = self.phases.apply(Event::Begin) {
            report.reason = Some(err.to_string());
            return report;
        }
        self.publish();
        let started = Instant::now();
        let deadline = started + max_pause;
        let step = |report: &mut FlipReport, name: &str, ok: bool, detail: String| {
            push_step(report, started, name, ok, detail);
        };
        self.gate.close();
        tracing::info!(max_pause = ?max_pause, from = from.as_str(), "writes held");
        step(
            &mut report,
            "hold writes",
            true,
            "trigger requests wait at the gate".to_owned(),
        );

        // Requests that passed the gate finish journaling.
        if !self.gate.wait_in_flight_done(remaining(deadline)).await {
            step(
                &mut report,
                "finish in-flight writes",
                false,
                "still running at the pause bound".to_owned(),
            );
            self.abort_locked(
                &mut report,
                started,
                "in-flight writes did not finish within the pause bound",
            );
            return report;
        }
        step(&mut report, "finish in-flight writes", true, String::new());

        // Drain, proven from the journal's counters; meanwhile verify every
        // key whose lane is idle.
        let drain = async {
            loop {
                let mut stats = self.journal.stats();
                let busy = self.sync.busy_lanes();
                let unjournaled = self.recorder.unjournaled();
                if let Some(depth) = self.shared_depth().await {
                    stats.depth += depth;
                }
                if stats.depth == 0 && busy == 0 && unjournaled == 0 {
                    break Ok(stats.last_seq);
                }
                if Instant::now() >= deadline {
                    break Err(format!(
                        "journal not drained: depth {}, busy lanes {busy}, unjournaled {unjournaled}",
                        stats.depth
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        // Each step is stamped when it ends, not when both have: the report
        // tells an SRE which of the two kept the pause open.
        let drain = async { (drain.await, started.elapsed()) };
        let verify = async {
            let verified = tokio::time::timeout(
                remaining(deadline),
                self.verify_during_hold(
                    verified_before.since,
                    verified_before.differing.clone(),
                    &verified_before.settled,
                ),
            )
            .await;
            (verified, started.elapsed())
        };
        let ((drained, drained_at), (verified, verified_at)) = tokio::join!(drain, verify);
        let limit = self.sync.limiter().snapshot();
        match drained {
            Ok(last_seq) => push_step_at(
                &mut report,
                drained_at,
                "drain journal",
                true,
                match last_seq {
                    Some(seq) => format!("depth 0, every record through seq {seq} applied"),
                    None => "depth 0, nothing was ever journaled".to_owned(),
                },
            ),
            Err(reason) => {
                step(&mut report, "drain journal", false, reason.clone());
                self.abort_locked(&mut report, started, &reason);
                return report;
            }
        }

        // Verify what was synced right before and during the hold.
        match verified {
            Ok(Ok(count)) => push_step_at(
                &mut report,
                verified_at,
                "verify recent keys",
                true,
                format!(
                    "{count} keys equal on both sides during the hold; {} verified in {} ms before it, while writes flowed; sync concurrency limit {} at the end",
                    verified_before.equal,
                    millis(verified_before.took),
                    limit.limit,
                ),
            ),
            Ok(Err(reason)) => {
                step(&mut report, "verify recent keys", false, reason.clone());
                self.abort_locked(&mut report, started, &reason);
                return report;
            }
            Err(_) => {
                let reason =
                    "verifying recent keys did not finish within the pause bound".to_owned();
                step(&mut report, "verify recent keys", false, reason.clone());
                self.abort_locked(&mut report, started, &reason);
                return report;
            }
        }
        report.outcome = crate::api::Outcome::Prepared;
        if let Ok(mut slot) = self.prepared.lock() {
            *slot = Some(Prepared {
                started,
                report: report.clone(),
            });
        }
        report
    }

    fn commit_locked(&self, prepared: Prepared) -> FlipReport {
        let mut report = prepared.report;
        let report = &mut report;
        let started = prepared.started;
        let before = self.phases.current().phase;
        match self.phases.apply(Event::Flip) {
            Ok(state) => {
                self.servers.set_primary(state.phase.primary());
                self.servers.mark_flip();
                self.publish();
                report.steps.push(Step {
                    step: "flip primary".to_owned(),
                    ok: true,
                    at_ms: millis(started.elapsed()),
                    detail: format!(
                        "primary {} at epoch {}",
                        state.phase.primary().as_str(),
                        state.epoch
                    ),
                });
            }
            Err(err) => {
                let reason = format!("cannot persist the flip: {err}");
                self.abort_locked(report, started, &reason);
                return report.clone();
            }
        }
        let held = self.gate.open();
        let pause = started.elapsed();
        report.steps.push(Step {
            step: "release writes".to_owned(),
            ok: true,
            at_ms: millis(pause),
            detail: format!("{} held requests released to the new primary", held.held),
        });
        report.outcome = if before == Phase::RollingBack {
            crate::api::Outcome::RolledBack
        } else {
            crate::api::Outcome::CutOver
        };
        self.conclude(report, pause, held);
        tracing::info!(
            outcome = report.outcome.as_str(),
            epoch = report.epoch,
            pause_ms = report.pause_ms,
            held = report.held,
            "flip done"
        );
        report.clone()
    }

    fn abort_locked(&self, report: &mut FlipReport, started: Instant, reason: &str) {
        if let Ok(mut slot) = self.prepared.lock() {
            *slot = None;
        }
        if let Err(err) = self.phases.apply(Event::Abort) {
            tracing::error!(error = %err, "abort refused by the phase table");
        }
        self.publish();
        // The primary did not change: held requests go to the old one.
        let held = self.gate.open();
        let pause = started.elapsed();
        report.outcome = crate::api::Outcome::Aborted;
        report.reason = Some(reason.to_owned());
        self.conclude(report, pause, held);
        tracing::warn!(
            reason,
            pause_ms = report.pause_ms,
            "flip aborted; nothing changed"
        );
    }

    /// Fills in the report's outcome figures and counts the flip (its
    /// outcome set by the caller) in the metrics.
    fn conclude(&self, report: &mut FlipReport, pause: Duration, held: super::gate::Held) {
        self.finish_report(report, pause, held.held, held.rejected);
        self.metrics
            .record_flip(report.outcome.as_str(), pause, held.held, held.rejected);
    }

    fn finish_report(&self, report: &mut FlipReport, pause: Duration, held: u64, rejected: u64) {
        let state = self.phases.current();
        report.phase = state.phase;
        report.epoch = state.epoch;
        report.primary = self.servers.primary_side();
        report.pause_ms = millis(pause);
        report.held = held;
        report.released = held;
        report.rejected = rejected;
    }

    /// Before the hold, while writes flow: verifies the keys synced in the
    /// last [`VERIFY_LOOKBACK`], in rounds, each covering what synced during
    /// the previous one, until a round's set fits in one go at the
    /// limiter's concurrency, or `cutover.verify_ahead` is spent (a round
    /// cut short leaves its keys to the hold). A read that fails refuses
    /// the cutover (the pause has not begun); a key that differs is only
    /// carried over (its sync may be in flight).
    async fn verify_before_hold(&self) -> Result<VerifiedBeforeHold, String> {
        let started = Instant::now();
        let mut verified = self.verify_rounds_before_hold().await?;
        verified.took = started.elapsed();
        Ok(verified)
    }

    /// The pause bound of `request`, or the configured one.
    fn max_pause(&self, request: &FlipRequest) -> Duration {
        request
            .max_pause_ms
            .map_or(self.config.max_pause, Duration::from_millis)
    }

    async fn verify_rounds_before_hold(&self) -> Result<VerifiedBeforeHold, String> {
        let deadline = Instant::now() + self.config.verify_ahead;
        let mut since = Instant::now()
            .checked_sub(VERIFY_LOOKBACK)
            .unwrap_or_else(Instant::now);
        let mut outcome = VerifiedBeforeHold {
            since,
            differing: Vec::new(),
            equal: 0,
            took: Duration::ZERO,
            settled: Settled::default(),
        };
        if self.servers.authlete().is_some() {
            // Authlete holds no records to compare key by key; the drain
            // proves every token event was applied.
            return Ok(outcome);
        }
        for _ in 0..VERIFY_ROUNDS_BEFORE_HOLD {
            let round = Instant::now();
            if round >= deadline {
                break;
            }
            let mut keys = outcome.differing.clone();
            keys.extend(self.sync.recent_keys(since));
            let keys = dedup(keys);
            let fits = keys.len() <= self.sync.limiter().snapshot().limit;
            let (checked, complete) = self.check_keys(keys, deadline).await?;
            outcome.equal += checked.equal.len();
            if !complete {
                // Cut short: the keys it did not reach, and the ones that
                // differed before, stay for the hold (`since` is not
                // moved); the ones it found equal are settled unless
                // synced again.
                let equal: std::collections::HashSet<String> =
                    checked.equal.iter().map(Key::identity).collect();
                outcome
                    .differing
                    .retain(|key| !equal.contains(&key.identity()));
                outcome.differing.extend(checked.differing);
                outcome.settled = Settled {
                    at: Some(round),
                    keys: equal,
                };
                break;
            }
            outcome.differing = checked.differing;
            since = round;
            outcome.since = round;
            if fits {
                break;
            }
        }
        Ok(outcome)
    }

    /// During the hold: verifies every key synced since `since` (and the
    /// ones that differed before), each as soon as its lane is idle, until
    /// the sync is drained and nothing is left. A key that differs while
    /// the drain goes on is checked again; once drained, a difference is
    /// drift. Returns the keys verified.
    ///
    /// Checks stream: a key's check starts the moment its lane goes idle,
    /// not when the previous batch of checks has finished. At a distance a
    /// batch takes a round trip or more, and a key waiting for the next one
    /// kept the pause open that much longer after the drain.
    async fn verify_during_hold(
        &self,
        since: Instant,
        again: Vec<Key>,
        settled: &Settled,
    ) -> Result<usize, String> {
        if self.servers.authlete().is_some() {
            return Ok(0);
        }
        let limiter = Arc::clone(self.sync.limiter());
        // Cancels the checks still waiting for a permit when this future is
        // dropped (the pause bound).
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop_on_drop = stop.clone().drop_guard();
        let mut pending: std::collections::HashMap<String, Key> =
            again.into_iter().map(|key| (key.identity(), key)).collect();
        let mut verified = std::collections::HashSet::new();
        let mut checking = std::collections::HashSet::new();
        let mut checks = tokio::task::JoinSet::new();
        let mut drift = Vec::new();
        let mut cursor = since;
        let mut first_look = true;
        loop {
            // Read before choosing the keys: drained then means every key
            // chosen has its final state on both sides.
            let drained = self.journal.stats().depth == 0
                && self.shared_depth().await.is_none_or(|depth| depth == 0)
                && self.sync.busy_lanes() == 0
                && self.recorder.unjournaled() == 0;
            // Only what synced since the last look: a key synced again is
            // already pending, checking or verified.
            let now = Instant::now();
            let recent = self.sync.recent_keys(cursor);
            // On the first look only: a key settled before the hold and
            // not synced since is equal still. Read after `recent`, so a
            // key synced in between counts as synced again; one synced
            // after `now` comes up again at the next look, unfiltered.
            // Only while the sync still remembers every key synced since
            // the round began; past that, nothing is skipped.
            let skip = first_look && settled.at.is_some_and(|at| self.sync.remembers_since(at));
            let resynced: std::collections::HashSet<String> = match settled.at {
                Some(at) if skip => self
                    .sync
                    .recent_keys(at)
                    .iter()
                    .map(Key::identity)
                    .collect(),
                _ => std::collections::HashSet::new(),
            };
            for key in recent {
                let identity = key.identity();
                if skip && settled.keys.contains(&identity) && !resynced.contains(&identity) {
                    continue;
                }
                if !verified.contains(&identity) && !checking.contains(&identity) {
                    pending.entry(identity).or_insert(key);
                }
            }
            first_look = false;
            cursor = now;
            let ready: Vec<String> = pending
                .iter()
                .filter(|(_, key)| drained || !self.sync.is_busy(key))
                .map(|(identity, _)| identity.clone())
                .collect();
            for identity in ready {
                let Some(key) = pending.remove(&identity) else {
                    continue;
                };
                checking.insert(identity);
                let check = self.check(&limiter, &stop, key);
                checks.spawn(async move {
                    let (key, equal) = check.await;
                    (key, drained, equal)
                });
            }
            if checks.is_empty() && pending.is_empty() && drained {
                if drift.is_empty() {
                    return Ok(verified.len());
                }
                let names: Vec<String> = drift.iter().map(Key::redacted).collect();
                return Err(format!("{} keys differ: {}", names.len(), names.join(", ")));
            }
            // Until a check finishes (then collect every finished one) or
            // the next look at the lanes.
            let first = if checks.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
                None
            } else {
                tokio::select! {
                    joined = checks.join_next() => joined,
                    () = tokio::time::sleep(Duration::from_millis(2)) => None,
                }
            };
            let mut finished: Vec<_> = first.into_iter().collect();
            while let Some(joined) = checks.try_join_next() {
                finished.push(joined);
            }
            for joined in finished {
                let (key, drained_then, equal) = joined.map_err(|err| err.to_string())?;
                let identity = key.identity();
                checking.remove(&identity);
                match equal? {
                    true => {
                        verified.insert(identity);
                    }
                    false if drained_then => drift.push(key),
                    false => {
                        pending.insert(identity, key);
                    }
                }
            }
        }
    }

    /// The comparison of `key` on both sides ([`check_key`]), owning what
    /// it needs, for a task of its own.
    fn check(
        &self,
        limiter: &Arc<crate::sync::Limiter>,
        stop: &tokio_util::sync::CancellationToken,
        key: Key,
    ) -> impl std::future::Future<Output = (Key, Result<bool, String>)> + Send + 'static {
        let primary = self.servers.primary_api().clone();
        let secondary = self.servers.secondary_api().clone();
        let limiter = Arc::clone(limiter);
        let stop = stop.clone();
        async move {
            let equal = check_key(&primary, &secondary, &limiter, &stop, &key).await;
            (key, equal)
        }
    }

    /// Reads `keys` on both sides (both at once per key, as many keys at
    /// once as the secondary's concurrency limiter allows) and sorts them
    /// into equal and differing. A read that fails is an error.
    async fn check_keys(
        &self,
        keys: Vec<Key>,
        deadline: Instant,
    ) -> Result<(Checked, bool), String> {
        let mut checks = tokio::task::JoinSet::new();
        let limiter = Arc::clone(self.sync.limiter());
        // Dropped with the set when the caller gives up (deadline).
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop_on_drop = stop.clone().drop_guard();
        for key in keys {
            let check = self.check(&limiter, &stop, key);
            checks.spawn(async move {
                let (key, equal) = check.await;
                equal.map(|equal| (key, equal))
            });
        }
        let mut checked = Checked::default();
        loop {
            let joined = match tokio::time::timeout(remaining(deadline), checks.join_next()).await {
                Err(_) => return Ok((checked, false)),
                Ok(None) => return Ok((checked, true)),
                Ok(Some(joined)) => joined,
            };
            let (key, equal) = joined.map_err(|err| err.to_string())??;
            if equal {
                checked.equal.push(key);
            } else {
                checked.differing.push(key);
            }
        }
    }

    /// Pending records of the shared journal (fleet mode); an unreadable
    /// store counts as not drained.
    async fn shared_depth(&self) -> Option<u64> {
        let fleet = self.environment.shared.as_ref()?;
        Some(match fleet.store.depth().await {
            Ok(depth) => depth.records,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the shared journal's depth");
                u64::MAX
            }
        })
    }

    async fn preflight(&self, new_primary: Side, forward: bool) -> Vec<Check> {
        if self.servers.authlete().is_some() {
            return self.preflight_authlete(new_primary, forward).await;
        }
        let mut checks = Vec::new();
        let api = self.servers.api(new_primary);
        // The checks that talk to the servers run at once: a slow server
        // delays the pre-flight by its slowest check, not by their sum.
        let reachable = async {
            // Reachable, and our management token works there.
            match api.get_client("handover-preflight-probe").await {
                Ok(_) => Check::pass(
                    format!("{} reachable", new_primary.as_str()),
                    format!(
                        "{} answers and accepts the management token",
                        api.upstream().url
                    ),
                ),
                Err(err) => Check::fail(
                    format!("{} reachable", new_primary.as_str()),
                    err.to_string(),
                    false,
                ),
            }
        };
        let keys = async {
            match &self.environment.parity {
                Some(prover) => parity::checks(
                    &prover.probe().await,
                    new_primary.as_str(),
                    new_primary.other().as_str(),
                ),
                None => Vec::new(),
            }
        };
        let sessions = async {
            if self
                .environment
                .verifier
                .datasets
                .contains(&crate::model::Dataset::Sessions)
            {
                Some(self.sessions_alive(new_primary).await)
            } else {
                None
            }
        };
        let (reachable, jwks, keys, discovery, backchannel, sessions) = tokio::join!(
            reachable,
            self.compare_jwks(),
            keys,
            self.compare_discovery(new_primary),
            self.secondary_backchannel(new_primary),
            sessions
        );
        checks.push(reachable);
        checks.push(jwks);
        checks.extend(keys);
        checks.push(discovery);
        checks.push(backchannel);
        checks.extend(sessions);
        checks.push(self.secret_grace(new_primary).await);
        checks.push(self.client_replacements(new_primary));
        self.sync_checks(forward, &mut checks).await;
        checks
    }

    /// A warning about clients whose secret changed within the previous
    /// secret's grace: the old primary alone still accepts their previous
    /// secret, from relying parties that have not picked up the new one.
    /// In a fleet the changes are counted over every instance's syncs.
    async fn secret_grace(&self, new_primary: Side) -> Check {
        let check = "no client in its previous-secret grace";
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let grace = PREVIOUS_SECRET_GRACE.as_secs();
        let changes = match self
            .environment
            .registrations
            .secret_changes(now.saturating_sub(grace))
            .await
        {
            Ok(changes) => changes,
            // A warning check: it never refuses a flip, so an unreadable
            // map only says that it could not look.
            Err(err) => {
                return Check::warn(
                    check,
                    format!("cannot count recent client secret changes: {err}"),
                );
            }
        };
        let recent = changes.since;
        if recent == 0 {
            return Check::pass(
                check,
                format!("no client secret changed in the last {} min", grace / 60),
            );
        }
        let latest = changes.latest.unwrap_or(now);
        let wait = (latest + grace).saturating_sub(now);
        Check::warn(
            check,
            format!(
                "{recent} client{} changed {} secret less than {} min ago: relying parties still presenting the previous one are refused by the {} (only the {} accepts it, for {} more min); cut over after that to be safe",
                if recent == 1 { "" } else { "s" },
                if recent == 1 { "its" } else { "their" },
                grace / 60,
                new_primary.as_str(),
                new_primary.other().as_str(),
                wait.div_ceil(60),
            ),
        )
    }

    /// A warning about clients the new primary took only by delete and
    /// create (it would not keep or take their secret on update): where
    /// its deletes cascade, their authorizations were re-imported but
    /// tokens issued before may be revoked there.
    fn client_replacements(&self, new_primary: Side) -> Check {
        let check = "clients updated in place";
        let replaced = self.servers.api(new_primary).clients_replaced();
        if replaced == 0 {
            return Check::pass(check, "no client was replaced by delete and create");
        }
        Check::warn(
            check,
            format!(
                "{replaced} client update{} reached the {} only by delete and create: where its deletes cascade, tokens issued before may be revoked there; set op.reg.alwaysRefreshClientSecretOnUpdate=false on it (and check that it takes preferred_client_secret on update)",
                if replaced == 1 { "" } else { "s" },
                new_primary.as_str(),
            ),
        )
    }

    /// Every live session of the current primary is alive on the new one,
    /// and no nearer to its idle expiry (the pass touches those that are):
    /// nobody is logged out by the flip.
    async fn sessions_alive(&self, new_primary: Side) -> Check {
        let check = format!("live sessions alive on the {}", new_primary.as_str());
        let old_primary = new_primary.other().as_str();
        match self.environment.verifier.prove_sessions_alive().await {
            Ok(found) => {
                let mut detail = format!(
                    "{} live sessions: {} alive on the {} ({} touched to match the {old_primary}'s last use)",
                    found.live,
                    found.alive,
                    new_primary.as_str(),
                    found.touched,
                );
                if found.missing > 0 {
                    detail.push_str(&format!(
                        "; {} missing (a re-sync of each is journaled: run the check again)",
                        found.missing
                    ));
                }
                if found.in_flight > 0 {
                    detail.push_str(&format!("; {} being synced", found.in_flight));
                }
                Check {
                    check,
                    ok: found.missing == 0,
                    detail,
                    forceable: true,
                    warning: false,
                }
            }
            Err(err) => Check {
                check,
                ok: false,
                detail: err.to_string(),
                forceable: true,
                warning: false,
            },
        }
    }

    /// The checks both kinds of target share: the backfill finished
    /// (forward only), the sync lag within bounds, no dead letters.
    async fn sync_checks(&self, forward: bool, checks: &mut Vec<Check>) {
        if forward {
            // A fleet: the fleet's backfill (done by whichever instance ran
            // it), read now.
            self.backfill.refresh().await;
            let state = self.backfill.state();
            let done = state == crate::api::BackfillState::Done;
            let detail = match &self.environment.shared {
                Some(_) => format!("backfill {} (fleet)", state.as_str()),
                None => format!("backfill {}", state.as_str()),
            };
            checks.push(Check {
                check: "backfill finished".to_owned(),
                ok: done,
                detail,
                forceable: true,
                warning: false,
            });
        }
        let mut stats = self.journal.stats();
        let mut lag = stats.oldest_unacked_age.unwrap_or_default();
        let mut dead = self.dead_letters.len() as u64;
        // A fleet's changes and dead letters are in the shared store,
        // whoever took them.
        if let Some(fleet) = &self.environment.shared {
            match fleet.store.glance().await {
                Ok(glance) => {
                    stats.depth += glance.depth.records;
                    if let Some(oldest) = glance.depth.oldest {
                        lag = lag.max(oldest.elapsed().unwrap_or_default());
                    }
                    dead += glance.dead_letters;
                }
                Err(err) => {
                    checks.push(Check::fail(
                        "store reachable",
                        format!("cannot read the shared journal: {err}"),
                        false,
                    ));
                }
            }
        }
        checks.push(Check {
            check: "sync lag".to_owned(),
            ok: lag <= self.config.max_lag,
            detail: format!(
                "lag {} ms (bound {} ms), journal depth {}",
                millis(lag),
                millis(self.config.max_lag),
                stats.depth
            ),
            forceable: false,
            warning: false,
        });
        checks.push(Check {
            check: "no dead letters".to_owned(),
            ok: dead == 0,
            detail: if dead == 0 {
                "0 dead letters".to_owned()
            } else {
                format!(
                    "{dead} dead letters (see `handover dead-letters`; --force to cut over anyway)"
                )
            },
            forceable: true,
            warning: false,
        });
        let untracked = self.recorder.untracked();
        checks.push(Check {
            check: "nothing left untracked".to_owned(),
            ok: untracked.count == 0,
            detail: untracked.warning().map_or_else(
                || "every change since the last verify was tracked".to_owned(),
                |warning| format!("{warning}; --force to cut over anyway"),
            ),
            forceable: true,
            warning: false,
        });
    }

    /// Pre-flight for an Authlete target: the new authorization server (or,
    /// rolling back, the source) must answer; JWK sets are the new server's
    /// own business (Authlete-issued tokens are opaque values).
    async fn preflight_authlete(&self, new_primary: Side, forward: bool) -> Vec<Check> {
        let mut checks = Vec::new();
        if forward && !self.environment.target_serves_traffic {
            checks.push(Check {
                check: "new authorization server configured".to_owned(),
                ok: false,
                detail: "target.new_primary_url is not set: there is no server to send traffic to"
                    .to_owned(),
                forceable: false,
                warning: false,
            });
            return checks;
        }
        let upstream = self.servers.upstream(new_primary);
        let probe = upstream.probe(Duration::from_secs(5)).await;
        checks.push(Check {
            check: format!("{} reachable", new_primary.as_str()),
            ok: probe.is_ok(),
            detail: match probe {
                Ok(()) => format!("{} answers", upstream.url),
                Err(err) => err.to_string(),
            },
            forceable: false,
            warning: false,
        });
        self.sync_checks(forward, &mut checks).await;
        checks
    }

    /// A public document of one side, as JSON.
    async fn fetch_public(&self, side: Side, endpoint: &str) -> Result<Value, String> {
        let upstream = self.servers.upstream(side);
        let uri = upstream.url.endpoint(endpoint).map_err(|e| e.to_string())?;
        let request = http::Request::get(uri)
            .body(crate::http::body::ProxyBody::empty())
            .map_err(|e| e.to_string())?;
        let response = upstream
            .send(request, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = crate::http::read_body(response.into_body(), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{} answered {status} for {endpoint}",
                side.as_str()
            ));
        }
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| format!("{} {endpoint} is not JSON: {e}", side.as_str()))
    }

    /// The discovery documents of both servers, compared where a
    /// difference changes what clients do (issuer, endpoints, algorithms,
    /// grant and response types, auth methods, subject types, scopes): a
    /// warning, since the operator may have meant it.
    async fn compare_discovery(&self, new_primary: Side) -> Check {
        let check = "discovery documents agree";
        let endpoint = "/.well-known/openid-configuration";
        let old_primary = new_primary.other();
        let (old, new) = match (
            self.fetch_public(old_primary, endpoint).await,
            self.fetch_public(new_primary, endpoint).await,
        ) {
            (Ok(old), Ok(new)) => (old, new),
            (Err(err), _) | (_, Err(err)) => return Check::warn(check, err),
        };
        let differences = discovery_differences(&old, &new);
        if differences.is_empty() {
            Check::pass(
                check,
                "issuer, endpoints, algorithms, grant types and the rest clients act on are equal",
            )
        } else {
            Check::warn(
                check,
                format!(
                    "the {} differs from the {} in {}",
                    new_primary.as_str(),
                    old_primary.as_str(),
                    differences.join("; ")
                ),
            )
        }
    }

    /// A warning when a server that is (or is about to be) the secondary
    /// advertises OpenID back-channel logout (`backchannel_logout_supported`
    /// in its discovery document): a secondary ends sessions on its own
    /// (idle and lifetime expiry by its own clock, the deletes the sync
    /// applies) and would notify relying parties of logouts the primary
    /// never made, or notify them a second time (spec §6.4, RN 15.6). The
    /// secondary until now is the new primary; the one after the flip is
    /// the old primary (the reverse sync writes to it).
    async fn secondary_backchannel(&self, new_primary: Side) -> Check {
        let check = "secondary sends no back-channel logouts";
        let endpoint = "/.well-known/openid-configuration";
        let mut advertising = Vec::new();
        for (side, role) in [
            (new_primary, "the secondary until this flip"),
            (new_primary.other(), "the secondary after it"),
        ] {
            match self.fetch_public(side, endpoint).await {
                Ok(discovery) => {
                    if discovery.get("backchannel_logout_supported") == Some(&Value::Bool(true)) {
                        advertising.push(format!("the {} ({role})", side.as_str()));
                    }
                }
                Err(err) => return Check::warn(check, err),
            }
        }
        if advertising.is_empty() {
            Check::pass(check, "neither server advertises back-channel logout")
        } else {
            Check::warn(
                check,
                format!(
                    "{} {} back-channel logout: a secondary notifies relying parties of \
                     sessions it ends on its own (expiry, synced deletes); turn it off there \
                     while it is the secondary (README, \"Back-channel logout\")",
                    advertising.join(" and "),
                    if advertising.len() > 1 {
                        "advertise"
                    } else {
                        "advertises"
                    }
                ),
            )
        }
    }

    /// `/jwks.json` of both servers must be identical.
    async fn compare_jwks(&self) -> Check {
        let fetch = |side: Side| self.fetch_public(side, "/jwks.json");
        let (source, target) = (fetch(Side::Source).await, fetch(Side::Target).await);
        let (source, target) = match (source, target) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(err), _) | (_, Err(err)) => {
                return Check {
                    check: "identical JWK sets".to_owned(),
                    ok: false,
                    detail: err,
                    forceable: false,
                    warning: false,
                };
            }
        };
        let keys = |set: &Value| -> std::collections::BTreeMap<String, Value> {
            set.get("keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .map(|key| {
                            let kid = key
                                .get("kid")
                                .and_then(Value::as_str)
                                .unwrap_or("(no kid)")
                                .to_owned();
                            (kid, key.clone())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (a, b) = (keys(&source), keys(&target));
        let only_source: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let only_target: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
        let differing: Vec<&String> = a
            .iter()
            .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k)
            .collect();
        if only_source.is_empty() && only_target.is_empty() && differing.is_empty() {
            Check {
                check: "identical JWK sets".to_owned(),
                ok: true,
                detail: format!("{} keys, same on both", a.len()),
                forceable: false,
                warning: false,
            }
        } else {
            let mut parts = Vec::new();
            if !differing.is_empty() {
                parts.push(format!("different keys with kid {differing:?}"));
            }
            if !only_source.is_empty() {
                parts.push(format!("only on the source: {only_source:?}"));
            }
            if !only_target.is_empty() {
                parts.push(format!("only on the target: {only_target:?}"));
            }
            Check {
                check: "identical JWK sets".to_owned(),
                ok: false,
                detail: format!(
                    "{}; configure the target with the source's JWK set first, or sessions and tokens break",
                    parts.join("; ")
                ),
                forceable: false,
                warning: false,
            }
        }
    }

    /// The phase now, for `/status`.
    pub fn phase(&self) -> Phase {
        self.phases.current().phase
    }
}

/// What the verify before the hold left for the pause.
#[derive(Debug)]
struct VerifiedBeforeHold {
    /// Keys synced since then still need verifying.
    since: Instant,
    /// Keys that differed (their sync may have been in flight).
    differing: Vec<Key>,
    /// Keys found equal.
    equal: usize,
    /// How long it took (writes flowed meanwhile).
    took: Duration,
    /// What the last round verified before it was cut short.
    settled: Settled,
}

/// Keys the last round before the hold found equal before `verify_ahead`
/// ran out, and when that round began. A key not synced since then is
/// still equal on both sides (every change of it goes through the sync),
/// so the hold need not read it again; without this, a round cut short
/// counted for nothing and a busy sync left every recent key to the pause.
#[derive(Debug, Default)]
pub(super) struct Settled {
    /// When the round began; `None`: nothing settled.
    at: Option<Instant>,
    /// The identities of the keys it found equal.
    keys: std::collections::HashSet<String>,
}

/// Keys read on both sides.
#[derive(Debug, Default)]
struct Checked {
    equal: Vec<Key>,
    differing: Vec<Key>,
}

/// Each key once (by identity), in first-seen order.
fn dedup(keys: Vec<Key>) -> Vec<Key> {
    let mut seen = std::collections::HashSet::new();
    keys.into_iter()
        .filter(|key| seen.insert(key.identity()))
        .collect()
}

/// The discovery members that change what a client does, compared as a
/// whole (`issuer`, every `*_endpoint` and `jwks_uri`, every `*_supported`
/// list compared as a set, the `require_*` flags).
fn discovery_differences(old: &Value, new: &Value) -> Vec<String> {
    let relevant = |name: &str| {
        name == "issuer"
            || name == "jwks_uri"
            || name.ends_with("_endpoint")
            || name.ends_with("_supported")
            || name.starts_with("require_")
    };
    let members = |doc: &Value| -> std::collections::BTreeMap<String, Value> {
        doc.as_object()
            .map(|object| {
                object
                    .iter()
                    .filter(|(name, _)| relevant(name))
                    .map(|(name, value)| {
                        let value = match value {
                            Value::Array(items) => {
                                let mut items: Vec<String> =
                                    items.iter().map(Value::to_string).collect();
                                items.sort();
                                items.dedup();
                                Value::from(items)
                            }
                            other => other.clone(),
                        };
                        (name.clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old, new) = (members(old), members(new));
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| old.get(*name) != new.get(*name))
        .map(|name| match (old.get(name), new.get(name)) {
            (Some(_), None) => format!("{name} (absent)"),
            (None, Some(_)) => format!("{name} (added)"),
            _ => name.clone(),
        })
        .collect()
}

fn verb(from: Phase) -> &'static str {
    if from == Phase::CutOver {
        "roll back"
    } else {
        "cut over"
    }
}

/// After the pre-flight: whether the flip stops here, refused (a check
/// failed that `--force` does not cover; the report names them) or because
/// it was a dry run.
fn stops_after_preflight(report: &mut FlipReport, request: &FlipRequest) -> bool {
    let blocking: Vec<&str> = report
        .preflight
        .iter()
        .filter(|check| !(check.ok || (check.forceable && request.force)))
        .map(|check| check.check.as_str())
        .collect();
    if !blocking.is_empty() {
        report.reason = Some(format!("pre-flight failed: {}", blocking.join(", ")));
        return true;
    }
    if request.dry_run {
        report.outcome = crate::api::Outcome::DryRunPassed;
        return true;
    }
    false
}

/// Adds a step to the report, timed from the start of the pause.
fn push_step(report: &mut FlipReport, started: Instant, name: &str, ok: bool, detail: String) {
    push_step_at(report, started.elapsed(), name, ok, detail);
}

/// Adds a step that ended `at` after the start of the pause.
fn push_step_at(report: &mut FlipReport, at: Duration, name: &str, ok: bool, detail: String) {
    report.steps.push(Step {
        step: name.to_owned(),
        ok,
        at_ms: millis(at),
        detail,
    });
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `key` reads the same on both sides, both read at once under
/// one permit of the secondary's limiter, taken from its spare capacity
/// (the sync's jobs go first: the drain is what the pause waits for). A
/// read that fails is an error.
async fn check_key(
    primary: &crate::servers::connect2id::Connect2id,
    secondary: &crate::servers::connect2id::Connect2id,
    limiter: &Arc<crate::sync::Limiter>,
    stop: &tokio_util::sync::CancellationToken,
    key: &Key,
) -> Result<bool, String> {
    let Some(_permit) = limiter.acquire_spare(stop).await else {
        return Err("stopped".to_owned());
    };
    let (a, b) = tokio::join!(read(primary, key), read(secondary, key));
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(err), _) | (_, Err(err)) => return Err(err.to_string()),
    };
    let dataset = key.dataset();
    Ok(match (&a, &b) {
        (Some(a), Some(b)) => dataset.comparable(a) == dataset.comparable(b),
        (None, None) => true,
        _ => false,
    })
}

async fn read(
    api: &crate::servers::connect2id::Connect2id,
    key: &Key,
) -> Result<Option<Value>, crate::servers::ApiError> {
    match key {
        Key::Client { client_id } => api.get_client(client_id).await,
        Key::Authorization { subject, client_id } => {
            api.get_authorization(subject, client_id).await
        }
        Key::Session { sid } => api.get_session(sid).await,
    }
}
