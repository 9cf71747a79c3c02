//! The lease-fenced flip of a fleet (`[store] kind = "postgres"`): every
//! instance shares the phase, the epoch and the journal in the store, and
//! the one an operator runs `handover cutover` on coordinates the rest
//! through it. No instance talks to another.
//!
//! 1. **Pre-flight** as for one instance, plus: the store answers, and every
//!    instance with a live lease sees the phase the flip leaves.
//! 2. **Publish the hold**: one compare-and-set on the control row moves the
//!    phase to `cutting-over` (or `rolling-back`) with a hold naming the
//!    coordinator and lasting `max_pause` by the store's clock. A second
//!    flip started anywhere meanwhile loses the compare-and-set.
//! 3. **Every live instance takes part** ([`Cutover::take_part`]), the
//!    coordinator too: its follower sees the hold within
//!    [`FOLLOW_INTERVAL`], closes its gate, waits until every trigger that
//!    had passed it is in the store and nothing is left in its memory, and
//!    acknowledges `held`; once the shared journal is drained (any
//!    instance's workers apply any instance's records) it verifies the keys
//!    it synced recently and acknowledges `verified` (or `failed`, with
//!    why).
//! 4. **Wait**: the coordinator waits until every instance with a live
//!    lease has acknowledged `verified` and the shared journal is empty. An
//!    instance whose lease expires stops counting: it fenced itself (its
//!    triggers get `503`) two thirds of a lease after its last renewal,
//!    before anyone may treat it as gone. An instance that registers during
//!    the hold counts as soon as it does (it registers before it serves a
//!    request, then reads the control row and takes part).
//! 5. **Flip** by compare-and-set: the phase, the epoch + 1, no hold. Every
//!    instance's follower adopts it: the new primary first, then the gate
//!    opens and the held requests go to it.
//!
//! Past `max_pause`, or on any failure, the coordinator aborts by
//! compare-and-set (the phase left, the same epoch, no hold) and every
//! instance releases its held requests to the old primary. A coordinator
//! that dies mid-flip leaves a hold that expires: the first follower to see
//! it expired aborts it. Exactly one of flip and abort wins the
//! compare-and-set. An instance that cannot read the store keeps its held
//! requests (they are refused with `503` after [`super::super::gate::HOLD_LIMIT`]
//! rather than sent to a primary that may be stale).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Cutover, VERIFY_LOOKBACK, millis, push_step, remaining, stops_after_preflight, verb};
use crate::api::{Check, FlipReport, FlipRequest, Outcome};
use crate::cutover::{Event, Phase, State};
use crate::model::Key;
use crate::store::{Changes, Control, Handle, Hold, HoldAck, NewHold, NextControl};

/// How often every instance reads the shared control row while the store
/// announces no changes (its listener is not connected): the delay before
/// it holds, and before it releases after the flip. A read is one indexed
/// row; fifty a second per instance is nothing to PostgreSQL.
pub(crate) const FOLLOW_INTERVAL: Duration = Duration::from_millis(20);
/// How often it reads the row anyway while changes are announced
/// (`Handle::changes`): a hold that ran out of time is noticed by reading,
/// since nothing announces the passing of time.
pub(crate) const FOLLOW_WHILE_LISTENING: Duration = Duration::from_millis(250);

/// How often the coordinator reads the members' acknowledgements while
/// they are not announced, and the shared journal's depth.
const ACK_POLL: Duration = Duration::from_millis(5);
/// How often it reads the acknowledgements anyway while they are
/// announced.
const ACK_WHILE_LISTENING: Duration = Duration::from_millis(100);

/// How long an instance takes part in a hold at most (the coordinator's
/// pause bound ends it sooner; this bounds an abandoned one).
const TAKE_PART_LIMIT: Duration = crate::cutover::gate::HOLD_LIMIT;

/// This instance in the fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The shared store.
    pub store: Handle,
    /// This instance's name in it (members, claims, acknowledgements).
    pub instance: String,
    following: Arc<Mutex<Following>>,
    /// Wakes the lease renewal when this instance's phase changed, so the
    /// members table shows it at once, not a renewal later.
    pub phase_changed: Arc<tokio::sync::Notify>,
}

/// What this instance last acted on. Reads of the control row may arrive
/// out of order (the follower's and the coordinator's): one older than
/// what was acted on is ignored, so a stale "no hold" never opens a gate
/// closed for a newer hold.
#[derive(Debug, Default)]
struct Following {
    /// The highest control version acted on.
    seen: u64,
    /// The hold this instance takes part in, and how to stop taking part.
    part: Option<(u64, CancellationToken)>,
}

impl Fleet {
    /// This instance, named `instance` in `store`.
    pub fn new(store: Handle, instance: String) -> Self {
        Self {
            store,
            instance,
            following: Arc::new(Mutex::new(Following::default())),
            phase_changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn following(&self) -> std::sync::MutexGuard<'_, Following> {
        self.following
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts taking part in `hold`, published at control `version`;
    /// returns the token that stops it, or `None` when already taking part
    /// or when a newer control version was acted on.
    fn begin_part(&self, version: u64, hold: u64) -> Option<CancellationToken> {
        let mut following = self.following();
        if version < following.seen || following.part.as_ref().is_some_and(|(id, _)| *id == hold) {
            return None;
        }
        following.seen = version;
        if let Some((_, stop)) = following.part.take() {
            stop.cancel();
        }
        let stop = CancellationToken::new();
        following.part = Some((hold, stop.clone()));
        Some(stop)
    }
}

/// The state an instance starting now takes from the fleet's control row:
/// its phase (during a hold, the phase the hold leaves: the follower then
/// takes part), epoch and flip instant. `None` for an unknown phase.
pub fn fleet_state(control: &Control) -> Option<State> {
    let phase = Phase::from_name(&control.phase)?;
    Some(State {
        phase: left_by(phase),
        epoch: control.epoch,
        flipped_at_ms: control.flipped_at_ms,
    })
}

/// The phase a transient phase leaves (what an abort returns to).
fn left_by(phase: Phase) -> Phase {
    match phase {
        Phase::CuttingOver => Phase::Mirroring,
        Phase::RollingBack => Phase::CutOver,
        other => other,
    }
}

/// The control state an abort of `holding`'s hold writes: the phase it
/// left, the same epoch, no hold.
fn abort_of(holding: &Control) -> NextControl {
    let phase = Phase::from_name(&holding.phase).map_or(Phase::Mirroring, left_by);
    NextControl {
        phase: phase.as_str().to_owned(),
        epoch: holding.epoch,
        flipped_at_ms: holding.flipped_at_ms,
        hold: None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Cutover {
    fn fleet(&self) -> Option<&Fleet> {
        self.environment.shared.as_ref()
    }

    /// `handover cutover` / `rollback` on a fleet, coordinated from this
    /// instance (module doc).
    pub(super) async fn flip_fleet(
        &self,
        fleet: &Fleet,
        request: &FlipRequest,
        from: Phase,
    ) -> FlipReport {
        let mut report = self.report(Outcome::Refused);
        let control = match fleet.store.control().await {
            Ok(control) => control,
            Err(err) => {
                report.reason = Some(format!(
                    "cannot read the fleet's phase from the store: {err}"
                ));
                return report;
            }
        };
        // Whatever this instance saw last, the store is the truth.
        self.adopt(&control);
        if let Some(hold) = &control.hold {
            report.reason = Some(format!(
                "a flip coordinated by {} is in progress (hold {})",
                hold.coordinator, hold.id
            ));
            return report;
        }
        if control.phase != from.as_str() {
            report.reason = Some(format!(
                "cannot {} while the fleet is {}",
                verb(from),
                control.phase
            ));
            return report;
        }
        let new_primary = from.primary().other();
        report.preflight = self.preflight(new_primary, from == Phase::Mirroring).await;
        report.preflight.push(self.fleet_check(fleet, from).await);
        if stops_after_preflight(&mut report, request) {
            return report;
        }
        let verified_before = match self.verify_before_hold().await {
            Ok(verified) => verified,
            Err(reason) => {
                report.reason = Some(format!("verifying recent keys failed: {reason}"));
                return report;
            }
        };
        let max_pause = self.max_pause(request);
        let Ok(holding) = crate::cutover::transition(from, Event::Begin) else {
            report.reason = Some(format!("cannot {} while {}", verb(from), from.as_str()));
            return report;
        };
        let hold = NextControl {
            phase: holding.as_str().to_owned(),
            epoch: control.epoch,
            flipped_at_ms: control.flipped_at_ms,
            hold: Some(NewHold {
                coordinator: fleet.instance.clone(),
                lasting: max_pause,
            }),
        };
        let published = match fleet.store.set_control(control.version, &hold).await {
            Ok(Some(published)) => published,
            Ok(None) => {
                report.reason =
                    Some("another instance changed the fleet's phase meanwhile".to_owned());
                return report;
            }
            Err(err) => {
                report.reason = Some(format!("cannot publish the hold: {err}"));
                return report;
            }
        };
        let Some(hold_id) = published.hold.as_ref().map(|hold| hold.id) else {
            report.reason = Some("the store did not keep the hold".to_owned());
            return report;
        };
        let started = Instant::now();
        let deadline = started + max_pause;
        tracing::info!(hold = hold_id, max_pause = ?max_pause, from = from.as_str(), "fleet hold published");
        let step = |report: &mut FlipReport, name: &str, ok: bool, detail: String| {
            push_step(report, started, name, ok, detail);
        };
        step(
            &mut report,
            "hold writes",
            true,
            format!("hold {hold_id} published: every instance holds its trigger requests"),
        );

        // This instance takes part like every other; meanwhile wait for all.
        let stop = fleet
            .begin_part(published.version, hold_id)
            .unwrap_or_default();
        let part = self.take_part(
            fleet,
            hold_id,
            from,
            verified_before.since,
            verified_before.differing.clone(),
            stop.clone(),
        );
        let wait = async {
            let waited = self.wait_for_fleet(fleet, hold_id, deadline).await;
            // On failure this instance's part may still be waiting.
            stop.cancel();
            waited
        };
        let (_, waited) = tokio::join!(part, wait);
        let acked = match waited {
            Ok(acked) => acked,
            Err(reason) => {
                step(&mut report, "every instance held", false, reason.clone());
                return self
                    .abort_fleet(fleet, report, &published, started, &reason)
                    .await;
            }
        };
        step(
            &mut report,
            "every instance held",
            true,
            format!(
                "{} instance{} with a live lease: {}",
                acked.len(),
                if acked.len() == 1 { "" } else { "s" },
                acked.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
        step(
            &mut report,
            "drain journal",
            true,
            "shared journal depth 0: every instance's records applied".to_owned(),
        );
        let keys: u64 = acked.values().sum();
        step(
            &mut report,
            "verify recent keys",
            true,
            format!(
                "{keys} keys equal on both sides during the hold (each instance its own); {} verified in {} ms before it, while writes flowed",
                verified_before.equal,
                millis(verified_before.took)
            ),
        );

        // The flip: one compare-and-set, then every instance follows.
        let Ok(flipped_phase) = crate::cutover::transition(holding, Event::Flip) else {
            return self
                .abort_fleet(
                    fleet,
                    report,
                    &published,
                    started,
                    "the phase table refused the flip",
                )
                .await;
        };
        let flip = NextControl {
            phase: flipped_phase.as_str().to_owned(),
            epoch: published.epoch + 1,
            flipped_at_ms: Some(now_ms()),
            hold: None,
        };
        let flipped = match fleet.store.set_control(published.version, &flip).await {
            Ok(Some(flipped)) => flipped,
            Ok(None) => {
                // Someone aborted the hold (its time ran out) first.
                let reason = "the hold ended before the flip (another instance aborted it when its time ran out)";
                step(&mut report, "flip primary", false, reason.to_owned());
                return self
                    .finish_fleet(fleet, report, started, Outcome::Aborted, Some(reason))
                    .await;
            }
            Err(err) => {
                // The write may or may not have landed: the store decides.
                let reason = format!("the store did not confirm the flip: {err}");
                step(&mut report, "flip primary", false, reason.clone());
                return self.settle_unknown(fleet, report, started, &reason).await;
            }
        };
        let held = self.adopt(&flipped).unwrap_or_default();
        step(
            &mut report,
            "flip primary",
            true,
            format!(
                "primary {} at epoch {} (compare-and-set on the fleet's control, version {})",
                flipped_phase.primary().as_str(),
                flipped.epoch,
                flipped.version
            ),
        );
        let pause = started.elapsed();
        step(
            &mut report,
            "release writes",
            true,
            format!(
                "{} requests held here released to the new primary; every other instance releases its own as it reads the flip",
                held.held
            ),
        );
        report.outcome = if holding == Phase::RollingBack {
            Outcome::RolledBack
        } else {
            Outcome::CutOver
        };
        self.conclude(&mut report, pause, held);
        tracing::info!(
            outcome = report.outcome.as_str(),
            epoch = report.epoch,
            pause_ms = report.pause_ms,
            "fleet flip done"
        );
        report
    }

    /// `handover complete` on a fleet: one compare-and-set; every instance
    /// stops syncing as it reads it.
    pub(super) async fn complete_fleet(&self, fleet: &Fleet) -> FlipReport {
        let mut report = self.report(Outcome::Refused);
        let control = match fleet.store.control().await {
            Ok(control) => control,
            Err(err) => {
                report.reason = Some(format!("cannot read the fleet's phase: {err}"));
                return report;
            }
        };
        self.adopt(&control);
        let phase = Phase::from_name(&control.phase).unwrap_or_default();
        let next = match crate::cutover::transition(phase, Event::Complete) {
            Ok(next) if control.hold.is_none() => next,
            Ok(_) => {
                report.reason = Some("a flip is in progress".to_owned());
                return report;
            }
            Err(err) => {
                report.reason = Some(err.to_string());
                return report;
            }
        };
        let write = NextControl {
            phase: next.as_str().to_owned(),
            epoch: control.epoch,
            flipped_at_ms: control.flipped_at_ms,
            hold: None,
        };
        match fleet.store.set_control(control.version, &write).await {
            Ok(Some(completed)) => {
                self.adopt(&completed);
                self.report(Outcome::Completed)
            }
            Ok(None) => {
                report.reason =
                    Some("another instance changed the fleet's phase meanwhile".to_owned());
                report
            }
            Err(err) => {
                report.reason = Some(format!("cannot write the fleet's phase: {err}"));
                report
            }
        }
    }

    /// Pre-flight: the store answers and every instance with a live lease
    /// sees the phase this flip leaves; instances whose lease expired are
    /// named (they fenced themselves and do not take part).
    async fn fleet_check(&self, fleet: &Fleet, from: Phase) -> Check {
        let check = "every live instance ready";
        // Instances write their phase when it changes: a moment after a
        // flip one may still show the one before.
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            let members = match fleet.store.members().await {
                Ok(members) => members,
                Err(err) => {
                    return Check::fail(
                        check,
                        format!("cannot read the fleet's members: {err}"),
                        false,
                    );
                }
            };
            let live: Vec<_> = members.iter().filter(|m| m.live).collect();
            let behind: Vec<String> = live
                .iter()
                .filter(|m| m.member.phase != from.as_str())
                .map(|m| format!("{} sees {}", m.member.instance, m.member.phase))
                .collect();
            if !behind.is_empty() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let gone: Vec<String> = members
                .iter()
                .filter(|m| !m.live)
                .map(|m| {
                    format!(
                        "{} (lease expired {} s ago)",
                        m.member.instance,
                        m.lease_age_ms / 1000
                    )
                })
                .collect();
            let mut detail = format!(
                "{} instance{} with a live lease",
                live.len(),
                if live.len() == 1 { "" } else { "s" }
            );
            if !gone.is_empty() {
                detail.push_str(&format!("; fenced, not taking part: {}", gone.join(", ")));
            }
            return if behind.is_empty() {
                Check::pass(check, detail)
            } else {
                Check::fail(
                    check,
                    format!("{detail}; not {}: {}", from.as_str(), behind.join(", ")),
                    false,
                )
            };
        }
    }

    /// Waits until every instance with a live lease acknowledged `hold` as
    /// verified and the shared journal is empty; returns the keys each
    /// verified, by instance.
    async fn wait_for_fleet(
        &self,
        fleet: &Fleet,
        hold: u64,
        deadline: Instant,
    ) -> Result<BTreeMap<String, u64>, String> {
        let mut changes = watch_changes(&fleet.store);
        loop {
            let last_problem;
            // Acknowledgements are announced; the journal's depth is not.
            let mut announced = false;
            match fleet.store.members().await {
                Ok(members) => {
                    let mut verified = BTreeMap::new();
                    let mut waiting = Vec::new();
                    for member in members.iter().filter(|m| m.live) {
                        let name = &member.member.instance;
                        match &member.hold_ack {
                            Some((id, HoldAck::Verified { keys })) if *id == hold => {
                                verified.insert(name.clone(), *keys);
                            }
                            Some((id, HoldAck::Failed(reason))) if *id == hold => {
                                return Err(format!("{name} cannot take part: {reason}"));
                            }
                            Some((id, HoldAck::Held)) if *id == hold => {
                                waiting.push(format!("{name} (held, draining)"));
                            }
                            _ => waiting.push(format!("{name} (not yet held)")),
                        }
                    }
                    if waiting.is_empty() {
                        match fleet.store.depth().await {
                            Ok(depth) if depth.records == 0 => return Ok(verified),
                            Ok(depth) => {
                                last_problem = format!(
                                    "shared journal depth {} after every instance verified",
                                    depth.records
                                );
                            }
                            Err(err) => last_problem = err.to_string(),
                        }
                    } else {
                        last_problem = format!("waiting for {}", waiting.join(", "));
                        announced = true;
                    }
                }
                Err(err) => last_problem = format!("cannot read the fleet's members: {err}"),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not every live instance held and verified within the pause bound: {last_problem}"
                ));
            }
            let slow = if announced {
                ACK_WHILE_LISTENING
            } else {
                ACK_POLL
            };
            let _ = tokio::time::timeout(
                remaining(deadline),
                until_changed(&mut changes, ACK_POLL, slow),
            )
            .await;
        }
    }

    /// This instance's part in `hold` (module doc, step 3): hold, journal,
    /// acknowledge; then, drained, verify and acknowledge again. Stops when
    /// `stop` is cancelled (the hold ended) or after [`TAKE_PART_LIMIT`].
    async fn take_part(
        &self,
        fleet: &Fleet,
        hold: u64,
        from: Phase,
        since: Instant,
        again: Vec<Key>,
        stop: CancellationToken,
    ) {
        let ack = |state: HoldAck| async move {
            match fleet.store.ack_hold(&fleet.instance, hold, &state).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    hold,
                    "cannot acknowledge the hold: this instance is not a member (its lease expired)"
                ),
                Err(err) => tracing::warn!(hold, error = %err, "cannot acknowledge the hold"),
            }
        };
        if self.phases.current().phase == from
            && let Err(err) = self.phases.apply(Event::Begin)
        {
            ack(HoldAck::Failed(format!("cannot hold: {err}"))).await;
            return;
        }
        self.publish();
        fleet.phase_changed.notify_one();
        self.gate.close();
        tracing::info!(hold, "writes held for the fleet's flip");
        let work = async {
            if !self.gate.wait_in_flight_done(TAKE_PART_LIMIT).await {
                return HoldAck::Failed("in-flight writes did not finish".to_owned());
            }
            // What a failed append left in memory must reach the store
            // before anyone drains it.
            while self.recorder.unjournaled() > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ack(HoldAck::Held).await;
            // Each instance verifies what it synced; none carries keys
            // settled before the hold (`Settled`) across the fleet.
            match self
                .verify_during_hold(since, again, &super::Settled::default())
                .await
            {
                Ok(keys) => {
                    // An Authlete target verifies nothing key by key: the
                    // drain is the proof, so wait for it here too.
                    while !self.drained().await {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    HoldAck::Verified { keys: keys as u64 }
                }
                Err(reason) => HoldAck::Failed(reason),
            }
        };
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(TAKE_PART_LIMIT, work) => outcome.unwrap_or_else(|_| {
                HoldAck::Failed("did not drain and verify in time".to_owned())
            }),
            () = stop.cancelled() => return,
        };
        ack(outcome).await;
    }

    /// Every record applied: this instance's journal and memory, its lanes,
    /// and the shared journal.
    async fn drained(&self) -> bool {
        self.journal.stats().depth == 0
            && self.sync.busy_lanes() == 0
            && self.recorder.unjournaled() == 0
            && self.shared_depth().await.is_none_or(|depth| depth == 0)
    }

    /// Gives up the hold this coordinator published: compare-and-set back
    /// to the phase it left; every instance releases to the old primary.
    async fn abort_fleet(
        &self,
        fleet: &Fleet,
        report: FlipReport,
        published: &Control,
        started: Instant,
        reason: &str,
    ) -> FlipReport {
        match fleet
            .store
            .set_control(published.version, &abort_of(published))
            .await
        {
            // Aborted here, or by another instance when its time ran out
            // (only its coordinator flips a hold): the store says so.
            Ok(_) => {
                self.finish_fleet(fleet, report, started, Outcome::Aborted, Some(reason))
                    .await
            }
            Err(err) => {
                let reason = format!("{reason}; and the abort was not confirmed: {err}");
                self.settle_unknown(fleet, report, started, &reason).await
            }
        }
    }

    /// After the flip or abort was decided in the store: adopt it here and
    /// finish the report.
    async fn finish_fleet(
        &self,
        fleet: &Fleet,
        mut report: FlipReport,
        started: Instant,
        outcome: Outcome,
        reason: Option<&str>,
    ) -> FlipReport {
        let held = match fleet.store.control().await {
            Ok(control) => self.adopt(&control).unwrap_or_default(),
            // The follower adopts it once the store answers; the gate
            // stays closed until then.
            Err(_) => crate::cutover::gate::Held::default(),
        };
        let pause = started.elapsed();
        report.outcome = outcome;
        report.reason = reason.map(str::to_owned);
        self.conclude(&mut report, pause, held);
        tracing::warn!(reason, pause_ms = report.pause_ms, "fleet flip not done");
        report
    }

    /// The store did not confirm a write: read until it answers (a few
    /// seconds), then report what it says; the gate stays closed meanwhile.
    async fn settle_unknown(
        &self,
        fleet: &Fleet,
        mut report: FlipReport,
        started: Instant,
        reason: &str,
    ) -> FlipReport {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(control) = fleet.store.control().await {
                let before = report.epoch;
                let held = self.adopt(&control).unwrap_or_default();
                let pause = started.elapsed();
                self.finish_report(&mut report, pause, held.held, held.rejected);
                report.outcome = if control.epoch > before {
                    if report.primary == crate::model::Side::Target {
                        Outcome::CutOver
                    } else {
                        Outcome::RolledBack
                    }
                } else {
                    report.reason = Some(reason.to_owned());
                    Outcome::Aborted
                };
                return report;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.outcome = Outcome::Unreachable;
        report.reason = Some(format!(
            "{reason}; the store is unreachable: every instance keeps holding trigger requests (503 after 30 s) until it reads the outcome"
        ));
        report
    }

    /// Makes this instance match the fleet's control row when no hold is in
    /// progress: phase, epoch, primary, then the gate opens (held requests
    /// go to the primary set just before). Returns what the gate held, or
    /// `None` when there was nothing to change (or a hold is on).
    pub(crate) fn adopt(&self, control: &Control) -> Option<crate::cutover::gate::Held> {
        let fleet = self.fleet()?;
        let mut following = fleet.following();
        if control.version < following.seen {
            return None;
        }
        following.seen = control.version;
        if control.hold.is_some() {
            return None;
        }
        // The hold ended (flipped or aborted): stop taking part.
        if let Some((_, stop)) = following.part.take() {
            stop.cancel();
        }
        let Some(phase) = Phase::from_name(&control.phase) else {
            tracing::error!(phase = %control.phase, "the store names an unknown phase; ignored");
            return None;
        };
        let local = self.phases.current();
        let changed = local.phase != phase || local.epoch != control.epoch;
        if changed {
            let next = State {
                phase,
                epoch: control.epoch,
                flipped_at_ms: control.flipped_at_ms,
            };
            if let Err(err) = self.phases.adopt(next) {
                // The local copy is a cache; the fleet's state holds.
                tracing::error!(error = %err, "cannot persist the fleet's phase locally");
            }
            self.servers.set_primary(phase.primary());
            if control.epoch != local.epoch
                && let Some(at) = control.flipped_at_ms
            {
                self.servers
                    .mark_flip_at(std::time::UNIX_EPOCH + Duration::from_millis(at));
            }
            self.publish();
            fleet.phase_changed.notify_one();
        }
        if !changed && !self.gate.is_closed() {
            return None;
        }
        let held = self.gate.open();
        tracing::info!(
            phase = phase.as_str(),
            epoch = control.epoch,
            held = held.held,
            "following the fleet: writes flow"
        );
        Some(held)
    }

    /// Every instance, all its life in fleet mode: reads the control row
    /// every [`FOLLOW_INTERVAL`], takes part in a hold it sees, aborts a
    /// hold whose time ran out, and adopts a flip or an abort.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let Some(fleet) = self.fleet().cloned() else {
            return;
        };
        let mut changes = watch_changes(&fleet.store);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = until_changed(&mut changes, FOLLOW_INTERVAL, FOLLOW_WHILE_LISTENING) => {}
            }
            match fleet.store.control().await {
                Ok(control) => self.follow_once(&fleet, &control).await,
                Err(err) => tracing::debug!(error = %err, "cannot read the fleet's control"),
            }
        }
    }

    async fn follow_once(self: &Arc<Self>, fleet: &Fleet, control: &Control) {
        let Some(hold) = &control.hold else {
            self.adopt(control);
            return;
        };
        if hold.expired {
            self.abort_expired(fleet, control, hold).await;
            return;
        }
        if hold.coordinator == fleet.instance {
            // The coordinator takes part from its own flip.
            return;
        }
        let Some(holding) = Phase::from_name(&control.phase).filter(|p| p.holds_writes()) else {
            return;
        };
        let Some(stop) = fleet.begin_part(control.version, hold.id) else {
            return;
        };
        let cutover = Arc::clone(self);
        let fleet = fleet.clone();
        let hold_id = hold.id;
        let since = Instant::now()
            .checked_sub(VERIFY_LOOKBACK)
            .unwrap_or_else(Instant::now);
        tokio::spawn(async move {
            cutover
                .take_part(&fleet, hold_id, left_by(holding), since, Vec::new(), stop)
                .await;
        });
    }

    /// A hold whose time ran out (its coordinator died or stalled): abort
    /// it by compare-and-set; exactly one of this and the coordinator's
    /// flip wins.
    async fn abort_expired(&self, fleet: &Fleet, control: &Control, hold: &Hold) {
        match fleet
            .store
            .set_control(control.version, &abort_of(control))
            .await
        {
            Ok(Some(aborted)) => {
                tracing::warn!(
                    hold = hold.id,
                    coordinator = %hold.coordinator,
                    "the fleet's hold ran out of time: aborted it, writes go to the old primary"
                );
                self.adopt(&aborted);
            }
            Ok(None) => {}
            Err(err) => tracing::debug!(error = %err, "cannot abort an expired hold"),
        }
    }
}

/// The store's change announcements, seen up to now (`None` for a store
/// that makes none).
fn watch_changes(store: &Handle) -> Option<watch::Receiver<Changes>> {
    store.changes().map(|mut changes| {
        changes.borrow_and_update();
        changes
    })
}

/// Waits until the store announces a change, or `polling` passes: `slow`
/// instead while its listener is connected (changes then arrive as they
/// commit; the read after a quiet `slow` catches what nothing announces).
async fn until_changed(
    changes: &mut Option<watch::Receiver<Changes>>,
    polling: Duration,
    slow: Duration,
) {
    let Some(watch) = changes else {
        tokio::time::sleep(polling).await;
        return;
    };
    let wait = if watch.borrow().listening {
        slow
    } else {
        polling
    };
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        changed = watch.changed() => {
            if changed.is_err() {
                // The store closed: poll from now on.
                *changes = None;
            }
        }
    }
}
