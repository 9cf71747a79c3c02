//! The fenced flip, forward (`cutover`) and back (`rollback`):
//!
//! 1. **Pre-flight**: the new primary answers and accepts our management
//!    token; both servers publish identical JWK sets (otherwise sessions and
//!    tokens break: the migration guide's first step); the backfill is done
//!    (forward only); the sync lag is under `cutover.max_lag`; no dead
//!    letters (or `--force`). Each check reports pass/fail with its figure.
//!    `--dry-run` stops here.
//! 2. **Hold**: trigger requests wait at the gate (reads keep flowing).
//! 3. **Drain**: the requests that had passed the gate finish journaling;
//!    the journal is drained to zero and every sync lane is idle. This is
//!    *proven* from the journal's own counters, not assumed.
//! 4. **Verify**: every key synced since shortly before the hold is read on
//!    both sides and must be equal.
//! 5. **Flip**: the new phase and epoch are persisted, then the primary
//!    switches.
//! 6. **Release**: held requests go on, to the new primary.
//!
//! Steps 2–5 are bounded by `max_pause`. Past it, or on any error, the flip
//! aborts: held requests are released to the old primary, the phase is
//! what it was, and the report says why. Nothing is lost either way.
//!
//! Several instances are driven together with `prepare` (steps 1–4, the
//! gate stays closed), then `commit` (5–6) or `abort` on all of them. A
//! prepared instance that hears neither in time asks its peers: if any has
//! committed it commits too, if all are reachable and none has it aborts,
//! otherwise it keeps refusing writes (`503`) rather than send one to a
//! primary that may already be stale.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::gate::Gate;
use super::{Event, Phase, Phases};
use crate::api::{Check, FlipReport, FlipRequest, Step};
use crate::backfill::Backfill;
use crate::journal::{DeadLetters, Journal};
use crate::metrics::CutoverMetrics;
use crate::model::Key;
use crate::model::Side;
use crate::servers::Servers;
use crate::sync::Recorder;
use crate::sync::SyncHandle;

/// Default bound on the write pause.
pub(crate) const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(2);
/// Default largest sync lag at which a cutover may start: the drain must
/// fit in the pause.
pub(crate) const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);
/// Keys synced this long before the hold are verified too (the writes
/// right before the cutover are the ones most likely still settling).
pub(crate) const VERIFY_LOOKBACK: Duration = Duration::from_secs(2);
/// How long state that lives only on the previous primary (login sessions
/// in progress, authorization codes, identifier access tokens) is served
/// from it after a flip: an authorization code lives 10 minutes.
pub(crate) const DEFAULT_FALLBACK_WINDOW: Duration = Duration::from_secs(600);

/// What the flip needs besides [`super::Config`].
#[derive(Debug, Clone)]
pub struct Environment {
    /// The admin token, to ask peers.
    pub admin_token: Option<crate::model::Secret>,
    /// Whether the target can take traffic (an Authlete target needs
    /// `target.new_primary_url`: Authlete itself is an API, not an OP).
    pub target_serves_traffic: bool,
}

/// A flip in progress (between prepare and commit).
#[derive(Debug)]
struct Prepared {
    started: Instant,
    deadline: Instant,
    report: FlipReport,
    /// The epoch the flip will produce.
    next_epoch: u64,
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
        let report = self.prepare_locked(request, from).await;
        if report.outcome != crate::api::Outcome::Prepared {
            return report;
        }
        // Single instance: commit right away.
        match self.take_prepared() {
            Some(prepared) => self.commit_locked(prepared),
            None => report,
        }
    }

    fn take_prepared(&self) -> Option<Prepared> {
        self.prepared.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Multi-instance step one: pre-flight, hold, drain, verify; the gate
    /// stays closed until [`Cutover::commit`] or [`Cutover::abort`] (or
    /// the watchdog).
    pub async fn prepare(self: &Arc<Self>, request: &FlipRequest) -> FlipReport {
        let from = self.phases.current().phase;
        let _running = self.running.lock().await;
        let report = self.prepare_locked(request, from).await;
        if report.outcome == crate::api::Outcome::Prepared {
            let cutover = Arc::clone(self);
            tokio::spawn(async move { cutover.watchdog().await });
        }
        report
    }

    /// Multi-instance step two: flip and release.
    pub async fn commit(&self) -> FlipReport {
        let _running = self.running.lock().await;
        match self.take_prepared() {
            Some(prepared) => self.commit_locked(prepared),
            None => {
                let mut report = self.report(crate::api::Outcome::Refused);
                report.reason = Some("nothing is prepared".to_owned());
                report
            }
        }
    }

    /// Multi-instance: give up a prepared flip.
    pub async fn abort(&self, reason: &str) -> FlipReport {
        let _running = self.running.lock().await;
        match self.take_prepared() {
            Some(prepared) => {
                let mut report = prepared.report;
                self.abort_locked(&mut report, prepared.started, reason);
                report
            }
            None => {
                let mut report = self.report(crate::api::Outcome::Refused);
                report.reason = Some("nothing is prepared".to_owned());
                report
            }
        }
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
        let blocking: Vec<&Check> = report
            .preflight
            .iter()
            .filter(|check| !(check.ok || (check.forceable && request.force)))
            .collect();
        if !blocking.is_empty() {
            report.reason = Some(format!(
                "pre-flight failed: {}",
                blocking
                    .iter()
                    .map(|c| c.check.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return report;
        }
        if request.dry_run {
            report.outcome = crate::api::Outcome::DryRunPassed;
            return report;
        }

        let max_pause = request
            .max_pause_ms
            .map_or(self.config.max_pause, Duration::from_millis);
        if let Err(err) = self.phases.apply(Event::Begin) {
            report.reason = Some(err.to_string());
            return report;
        }
        self.publish();
        let started = Instant::now();
        let deadline = started + max_pause;
        let step = |report: &mut FlipReport, name: &str, ok: bool, detail: String| {
            report.steps.push(Step {
                step: name.to_owned(),
                ok,
                at_ms: millis(started.elapsed()),
                detail,
            });
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

        // Drain, proven from the journal's counters.
        let drained = loop {
            let stats = self.journal.stats();
            let busy = self.sync.busy_lanes();
            let unjournaled = self.recorder.unjournaled();
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
        };
        match drained {
            Ok(last_seq) => step(
                &mut report,
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
        match tokio::time::timeout(remaining(deadline), self.verify_recent(started)).await {
            Ok(Ok(count)) => step(
                &mut report,
                "verify recent keys",
                true,
                format!("{count} keys equal on both sides"),
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
                deadline,
                report: report.clone(),
                next_epoch: state.epoch + 1,
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
        self.finish_report(report, pause, held.held, held.rejected);
        self.metrics
            .record_flip(report.outcome.as_str(), pause, held.held, held.rejected);
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
        self.finish_report(report, pause, held.held, held.rejected);
        self.metrics
            .record_flip("aborted", pause, held.held, held.rejected);
        tracing::warn!(
            reason,
            pause_ms = report.pause_ms,
            "flip aborted; nothing changed"
        );
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

    /// Compares every key synced since shortly before `since` on both sides.
    async fn verify_recent(&self, since: Instant) -> Result<usize, String> {
        if self.servers.authlete().is_some() {
            // Authlete holds no records to compare key by key; the drain
            // proved every token event was applied.
            return Ok(0);
        }
        let keys = self
            .sync
            .recent_keys(since.checked_sub(VERIFY_LOOKBACK).unwrap_or(since));
        let count = keys.len();
        let mut differing = Vec::new();
        for chunk in keys.chunks(64) {
            let mut checks = tokio::task::JoinSet::new();
            for key in chunk {
                let primary = self.servers.primary_api().clone();
                let secondary = self.servers.secondary_api().clone();
                let key = key.clone();
                checks.spawn(async move {
                    let (a, b) = (read(&primary, &key).await, read(&secondary, &key).await);
                    let (a, b) = match (a, b) {
                        (Ok(a), Ok(b)) => (a, b),
                        (Err(err), _) | (_, Err(err)) => return Err(err.to_string()),
                    };
                    let dataset = key.dataset();
                    let equal = match (&a, &b) {
                        (Some(a), Some(b)) => dataset.comparable(a) == dataset.comparable(b),
                        (None, None) => true,
                        _ => false,
                    };
                    Ok((key, equal))
                });
            }
            while let Some(joined) = checks.join_next().await {
                let (key, equal) = joined.map_err(|err| err.to_string())??;
                if !equal {
                    differing.push(key.redacted());
                }
            }
        }
        if differing.is_empty() {
            Ok(count)
        } else {
            Err(format!(
                "{} keys differ: {}",
                differing.len(),
                differing.join(", ")
            ))
        }
    }

    async fn preflight(&self, new_primary: Side, forward: bool) -> Vec<Check> {
        if self.servers.authlete().is_some() {
            return self.preflight_authlete(new_primary, forward).await;
        }
        let mut checks = Vec::new();
        let api = self.servers.api(new_primary);
        // Reachable, and our management token works there.
        let reachable = api.get_client("handover-preflight-probe").await;
        checks.push(match reachable {
            Ok(_) => Check {
                check: format!("{} reachable", new_primary.as_str()),
                ok: true,
                detail: format!(
                    "{} answers and accepts the management token",
                    api.upstream().url
                ),
                forceable: false,
            },
            Err(err) => Check {
                check: format!("{} reachable", new_primary.as_str()),
                ok: false,
                detail: err.to_string(),
                forceable: false,
            },
        });
        checks.push(self.compare_jwks().await);
        self.sync_checks(forward, &mut checks);
        checks
    }

    /// The checks both kinds of target share: the backfill finished
    /// (forward only), the sync lag within bounds, no dead letters.
    fn sync_checks(&self, forward: bool, checks: &mut Vec<Check>) {
        if forward {
            let state = self.backfill.state();
            checks.push(Check {
                check: "backfill finished".to_owned(),
                ok: state == crate::api::BackfillState::Done,
                detail: format!("backfill {}", state.as_str()),
                forceable: true,
            });
        }
        let stats = self.journal.stats();
        let lag = stats.oldest_unacked_age.unwrap_or_default();
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
        });
        let dead = self.dead_letters.len();
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
        });
        self.sync_checks(forward, &mut checks);
        checks
    }

    /// `/jwks.json` of both servers must be identical.
    async fn compare_jwks(&self) -> Check {
        let fetch = |side: Side| async move {
            let upstream = self.servers.upstream(side);
            let uri = upstream
                .url
                .endpoint("/jwks.json")
                .map_err(|e| e.to_string())?;
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
                return Err(format!("{} answered {status}", side.as_str()));
            }
            serde_json::from_slice::<Value>(&body)
                .map_err(|e| format!("{} JWK set is not JSON: {e}", side.as_str()))
        };
        let (source, target) = (fetch(Side::Source).await, fetch(Side::Target).await);
        let (source, target) = match (source, target) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(err), _) | (_, Err(err)) => {
                return Check {
                    check: "identical JWK sets".to_owned(),
                    ok: false,
                    detail: err,
                    forceable: false,
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
            }
        }
    }

    /// Resolves a prepared flip whose coordinator went silent.
    async fn watchdog(self: Arc<Self>) {
        let Some(deadline) = self
            .prepared
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.deadline))
        else {
            return;
        };
        // The coordinator gets the pause bound plus a little slack.
        tokio::time::sleep_until((deadline + Duration::from_secs(2)).into()).await;
        loop {
            // Committed or aborted meanwhile: nothing to resolve.
            let Some(next_epoch) = self
                .prepared
                .lock()
                .ok()
                .and_then(|p| p.as_ref().map(|p| p.next_epoch))
            else {
                return;
            };
            match self.ask_peers(next_epoch).await {
                PeerVerdict::SomeoneFlipped => {
                    tracing::warn!("coordinator silent; a peer flipped: committing");
                    let _ = self.commit().await;
                    return;
                }
                PeerVerdict::NobodyFlipped => {
                    let _ = self
                        .abort("the coordinator went silent and no peer flipped")
                        .await;
                    return;
                }
                PeerVerdict::Unknown => {
                    // Keep the gate closed: held writes time out with 503
                    // rather than reach a primary that may be stale.
                    tracing::error!("coordinator silent and peers unreachable: writes stay fenced");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn ask_peers(&self, next_epoch: u64) -> PeerVerdict {
        if self.config.peers.is_empty() {
            return PeerVerdict::NobodyFlipped;
        }
        let mut unknown = false;
        for peer in &self.config.peers {
            let client = crate::api::AdminClient::new(
                peer,
                self.environment
                    .admin_token
                    .as_ref()
                    .map(|t| t.expose().to_owned()),
            );
            match client.status().await {
                Ok(status) if status.epoch >= next_epoch => return PeerVerdict::SomeoneFlipped,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(peer, error = %err, "cannot ask a peer");
                    unknown = true;
                }
            }
        }
        if unknown {
            PeerVerdict::Unknown
        } else {
            PeerVerdict::NobodyFlipped
        }
    }

    /// The phase now, for `/status`.
    pub fn phase(&self) -> Phase {
        self.phases.current().phase
    }
}

enum PeerVerdict {
    SomeoneFlipped,
    NobodyFlipped,
    Unknown,
}

fn verb(from: Phase) -> &'static str {
    if from == Phase::CutOver {
        "roll back"
    } else {
        "cut over"
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
