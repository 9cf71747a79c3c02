//! The sync's lane bookkeeping as a pure state machine: inputs in, jobs to
//! start out, no I/O, no clock. The engine (`sync.rs`) feeds it from one
//! task and spawns what it returns; `model_tests` checks it against a
//! simple model over random input sequences (like the journal's).
//!
//! # Rules
//!
//! - One job per lane at a time: a lane is one record identity
//!   ([`lane_of`]), so two workers never write the same record
//!   concurrently (an older read could overwrite a newer one).
//! - State syncs coalesce: any number arriving while the lane is busy
//!   become one more sync afterwards, carrying all their acks (the newest
//!   read wins).
//! - Payload events (revocations, token events) queue in order and run
//!   before the lane's next state sync.
//! - While a backfill export runs (between [`Dispatcher::watch_begin`] and
//!   [`Dispatcher::watch_end`]), a lane live traffic touched owns its key:
//!   an exported copy of it is skipped, never written after a live read.
//!   Outside that window too, an exported copy is skipped when live work
//!   for its key is queued or running, or arrives while the copy waits.
//!   (In a fleet these lanes see only this instance's share of the live
//!   work: the engine also takes the key's claim in the shared store for
//!   each copy, see `store::BackfillStore`.)
//!
//! The dispatcher is generic over what it carries for the engine: `A`, the
//! acknowledgement of a journal record (dropped when the work is done), and
//! `R`, the reply channel of an exported record. Tests use plain values.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;

use crate::model::{Change, Key};

/// The lane a change is stored under in a shared store (fleet mode): the
/// dispatcher's own lane, so an instance holding a stored lane holds every
/// dispatcher lane its changes go to; a resolution (a lane of its own, whose
/// token must not name it) gets a random one.
pub(crate) fn store_lane(change: &Change) -> String {
    match change {
        Change::Resolve { .. } => format!("resolve:{:016x}", fastrand::u64(..)),
        other => Dispatcher::<(), ()>::default().lane_of(other),
    }
}

/// One unit of work: a change and the acknowledgements it settles.
#[derive(Debug)]
pub(crate) struct Work<A> {
    /// The change.
    pub change: Change,
    /// What settles when it is done (journal records).
    pub acks: Vec<A>,
}

/// An exported record for the backfill to write.
#[derive(Debug)]
pub(crate) struct Exported<R> {
    /// The record's key.
    pub key: Key,
    /// The record as exported by the primary.
    pub record: Value,
    /// Told what happened.
    pub reply: R,
}

/// A job to run in a lane.
#[derive(Debug)]
pub(super) enum Job<A, R> {
    /// Copy the current state of a key.
    Sync {
        /// The key.
        key: Key,
        /// Every coalesced change's acks.
        acks: Vec<A>,
    },
    /// A payload event, or work that resolves to follow-ups.
    Payload(Work<A>),
    /// Write an exported record.
    Backfill(Exported<R>),
}

/// What an input asks the engine to do.
#[derive(Debug)]
pub(super) struct Effects<A, R> {
    /// Jobs to start, each in its lane (report back with
    /// [`Dispatcher::done`]).
    pub start: Vec<(String, Job<A, R>)>,
    /// Exported records not written because live traffic owns their key.
    pub skipped: Vec<R>,
    /// Lanes whose live work started (`true`) or ended (`false`): the
    /// engine mirrors them into the set verify reads, incrementally.
    pub busy: Vec<(String, bool)>,
}

impl<A, R> Default for Effects<A, R> {
    fn default() -> Self {
        Self {
            start: Vec::new(),
            skipped: Vec::new(),
            busy: Vec::new(),
        }
    }
}

/// What a lane is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Running {
    /// Live work (a sync, a payload event).
    Live,
    /// An exported copy.
    Export,
}

#[derive(Debug)]
struct Lane<A, R> {
    running: Option<Running>,
    /// A pending state sync and the acks it settles.
    sync: Option<(Key, Vec<A>)>,
    /// Ordered payload events.
    payloads: VecDeque<Work<A>>,
    /// An exported record waiting to be written.
    backfill: Option<Exported<R>>,
}

impl<A, R> Default for Lane<A, R> {
    fn default() -> Self {
        Self {
            running: None,
            sync: None,
            payloads: VecDeque::new(),
            backfill: None,
        }
    }
}

impl<A, R> Lane<A, R> {
    fn has_live_work(&self) -> bool {
        self.sync.is_some() || !self.payloads.is_empty()
    }

    /// Whether the live sync owns this key now: live work queued or
    /// running.
    fn owned_by_live(&self) -> bool {
        self.has_live_work() || self.running == Some(Running::Live)
    }
}

/// The lanes.
#[derive(Debug)]
pub(super) struct Dispatcher<A, R> {
    lanes: HashMap<String, Lane<A, R>>,
    /// While a backfill export runs: the lanes live traffic touched.
    touched_by_live: Option<HashSet<String>>,
    /// Lanes with live work queued or running (not only an exported copy),
    /// kept incrementally: rebuilding it from every lane would cost
    /// O(lanes) per input.
    busy: HashSet<String>,
    /// Resolutions seen, naming their lanes.
    resolutions: u64,
}

impl<A, R> Default for Dispatcher<A, R> {
    fn default() -> Self {
        Self {
            lanes: HashMap::new(),
            touched_by_live: None,
            busy: HashSet::new(),
            resolutions: 0,
        }
    }
}

impl<A, R> Dispatcher<A, R> {
    /// New work from the journal (or a resolution's follow-ups).
    pub(super) fn submit(&mut self, work: impl IntoIterator<Item = Work<A>>) -> Effects<A, R> {
        let mut effects = Effects::default();
        let mut touched = Vec::new();
        for item in work {
            touched.push(self.enqueue(item, &mut effects));
        }
        self.schedule(touched, effects)
    }

    /// A job of `lane` finished, producing `follow_ups`.
    pub(super) fn done(&mut self, lane: String, follow_ups: Vec<Work<A>>) -> Effects<A, R> {
        if let Some(state) = self.lanes.get_mut(&lane) {
            state.running = None;
        }
        let mut effects = Effects::default();
        let mut touched = vec![lane];
        for item in follow_ups {
            touched.push(self.enqueue(item, &mut effects));
        }
        self.schedule(touched, effects)
    }

    /// A backfill export is about to begin: from now on, keys live traffic
    /// touches belong to the sync. Work already queued or running is live
    /// and at least as new as the export.
    pub(super) fn watch_begin(&mut self) {
        self.touched_by_live = Some(
            self.lanes
                .iter()
                .filter(|(_, lane)| lane.owned_by_live())
                .map(|(name, _)| name.clone())
                .collect(),
        );
    }

    /// The export ended.
    pub(super) fn watch_end(&mut self) {
        self.touched_by_live = None;
    }

    /// An exported record: written unless live traffic owns its key.
    pub(super) fn backfill(&mut self, item: Exported<R>) -> Effects<A, R> {
        let name = item.key.identity();
        let owned_by_live = self
            .touched_by_live
            .as_ref()
            .is_some_and(|live| live.contains(&name))
            || self.lanes.get(&name).is_some_and(Lane::owned_by_live);
        let mut effects = Effects::default();
        if owned_by_live {
            effects.skipped.push(item.reply);
            return effects;
        }
        let lane = self.lanes.entry(name.clone()).or_default();
        // Two exported copies of one key (the export listed it twice): the
        // later copy wins.
        if let Some(earlier) = lane.backfill.replace(item) {
            effects.skipped.push(earlier.reply);
        }
        self.schedule(vec![name], effects)
    }

    /// Lanes with work queued or running.
    pub(super) fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Whether no lane has work.
    pub(super) fn is_idle(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Whether live work is queued or running for the lane `identity`.
    #[cfg(test)]
    pub(super) fn is_busy(&self, identity: &str) -> bool {
        self.busy.contains(identity)
    }

    /// The lane a change belongs to: its record's identity.
    fn lane_of(&mut self, change: &Change) -> String {
        match change {
            Change::Sync { key, .. } => key.identity(),
            Change::SubjectSessions { subject } => format!("subject-sessions:{subject}"),
            Change::Revocation {
                subject: Some(subject),
                client_id: Some(client_id),
                ..
            } => Key::Authorization {
                subject: subject.clone(),
                client_id: client_id.clone(),
            }
            .identity(),
            Change::Revocation {
                subject,
                client_id,
                actor,
                ..
            } => format!(
                "revocation:{}|{}|{}",
                subject.as_deref().unwrap_or(""),
                client_id.as_deref().unwrap_or(""),
                actor.as_deref().unwrap_or("")
            ),
            // Each resolution is its own lane: nothing to coalesce, and the
            // token must not appear in a lane name that could be logged.
            Change::Resolve { .. } => {
                self.resolutions = self.resolutions.wrapping_add(1);
                format!("resolve:{}", self.resolutions)
            }
            Change::Token { event } => event.family(),
            Change::RevokeToken { client_id, .. } => {
                format!("revoke-token:{}", client_id.as_deref().unwrap_or(""))
            }
            // Another issuer's records are other records: their own lanes.
            Change::Scoped { tenant, inner } => {
                let lane = self.lane_of(inner);
                format!("{}@{lane}", tenant.label())
            }
        }
    }

    /// Adds work to its lane; returns the lane's name.
    fn enqueue(&mut self, work: Work<A>, effects: &mut Effects<A, R>) -> String {
        let name = self.lane_of(&work.change);
        if let Some(live) = &mut self.touched_by_live {
            live.insert(name.clone());
        }
        let lane = self.lanes.entry(name.clone()).or_default();
        // An exported copy still waiting is older than what live traffic
        // just changed: the live sync owns the key now.
        if let Some(item) = lane.backfill.take() {
            effects.skipped.push(item.reply);
        }
        match work.change {
            Change::Sync { key, from: None } => match &mut lane.sync {
                Some((pending, acks)) => {
                    // Coalesce; keep the newest form of the key (a
                    // session's SID may arrive with either HMAC-equivalent
                    // spelling).
                    *pending = key;
                    acks.extend(work.acks);
                }
                None => lane.sync = Some((key, work.acks)),
            },
            change => lane.payloads.push_back(Work {
                change,
                acks: work.acks,
            }),
        }
        name
    }

    /// Starts a job in every touched lane that is free, and updates the
    /// busy set for them.
    fn schedule(&mut self, touched: Vec<String>, mut effects: Effects<A, R>) -> Effects<A, R> {
        for name in &touched {
            let Some(lane) = self.lanes.get_mut(name) else {
                continue;
            };
            if lane.running.is_some() {
                continue;
            }
            // Live work first; an exported copy only if nothing live
            // touched the key meanwhile.
            let (job, running) = if let Some(work) = lane.payloads.pop_front() {
                (Job::Payload(work), Running::Live)
            } else if let Some((key, acks)) = lane.sync.take() {
                (Job::Sync { key, acks }, Running::Live)
            } else if let Some(item) = lane.backfill.take() {
                (Job::Backfill(item), Running::Export)
            } else {
                self.lanes.remove(name);
                continue;
            };
            lane.running = Some(running);
            effects.start.push((name.clone(), job));
        }
        for name in touched {
            let busy = self.lanes.get(&name).is_some_and(|lane| {
                lane.has_live_work() || (lane.running.is_some() && lane.backfill.is_none())
            });
            let changed = if busy {
                self.busy.insert(name.clone())
            } else {
                self.busy.remove(&name)
            };
            if changed {
                effects.busy.push((name, busy));
            }
        }
        effects
    }
}

#[cfg(test)]
#[path = "dispatcher/model_tests.rs"]
mod model_tests;
