//! The one way a change enters the sync: the [`Recorder`] encodes it,
//! appends it to the journal, waits until it is durable, and hands it to the
//! sync workers. The trigger hook records through it (before the downstream
//! response is released), and so do the operator's repairs (`verify
//! --repair`), retried dead letters and the cutover's pre-flight.
//!
//! It also owns the two ways work comes back without a trigger:
//!
//! - **the journal's backlog at start-up** ([`Recorder::resume`]): changes
//!   acknowledged to clients before a restart but not yet applied;
//! - **orphans** ([`Recorder::pick_up_orphans`]): records whose append
//!   future was dropped after the journal had accepted them (a client that
//!   disconnected mid-request); the journal holds them, nobody else would
//!   sync them.
//!
//! A journal that cannot be written never fails the client's request (the
//! primary already did the work): readiness turns false (the operator is
//! paged), the trigger's changes are synced from memory right away, once
//! (best effort), and kept in memory once each (coalesced: the same change
//! twice is kept once), bounded by [`MAX_UNJOURNALED`].
//! [`Recorder::keep_journaling`] retries journaling them with backoff (at
//! most [`REJOURNAL_MAX_DELAY`] apart), without waiting for traffic; when
//! it succeeds readiness returns and the now-journaled changes are synced
//! again from the journal (so a change costs at most two applies, whatever
//! the outage's length; a trigger never re-submits what earlier triggers
//! left in memory).
//!
//! A record that no longer decodes (authenticated by the journal's AEAD, so
//! written by a handover of another version) is moved to the dead letters
//! with the reason and acknowledged, never silently dropped.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::SyncHandle;
use crate::health::Health;
use crate::journal::{self, DeadLetters, Journal};
use crate::metrics::JournalMetrics;
use crate::model::{Change, Dataset, Key};

/// Most changes kept in memory while the journal cannot be written; past
/// this the oldest are dropped (and counted): `handover verify --repair`
/// finds what they would have fixed.
pub const MAX_UNJOURNALED: usize = 100_000;

/// Longest wait between two attempts to journal the changes kept in
/// memory: readiness returns at most this long after the journal is
/// writable again, with or without traffic.
pub const REJOURNAL_MAX_DELAY: Duration = Duration::from_secs(1);

/// First wait after a failed attempt to journal the kept changes (doubling
/// up to [`REJOURNAL_MAX_DELAY`]): a short hiccup clears at once, a full
/// disk costs one failed write a second.
pub const REJOURNAL_INITIAL_DELAY: Duration = Duration::from_millis(100);

/// How often a settled record of the shared journal is looked for.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// Changes the proxy could not name: successful triggers whose response
/// could not be inspected and whose request alone named nothing. Only
/// `verify` finds what they changed; until one has run after them,
/// `/status` warns and the cutover pre-flight refuses (forceable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Untracked {
    /// How many since the last verify that covered them.
    pub count: u64,
    /// When the first of them happened.
    pub since: Option<SystemTime>,
    /// When the last of them happened.
    pub last: Option<SystemTime>,
}

impl Untracked {
    /// The operator's sentence: "N changes could not be tracked since T;
    /// run `handover verify --repair`", or `None` when there are none.
    pub fn warning(&self) -> Option<String> {
        let since = self.since?;
        (self.count > 0).then(|| {
            format!(
                "{} change{} could not be tracked since {} (a trigger's response was too large, cut off or malformed); run `handover verify --repair`",
                self.count,
                if self.count == 1 { "" } else { "s" },
                httpdate::fmt_http_date(since)
            )
        })
    }
}

/// Changes that could not be journaled, each kept once, oldest first.
#[derive(Default)]
struct Backlog {
    changes: VecDeque<Change>,
    /// The record of every change kept or being journaled, so that the
    /// same change is kept once however many triggers repeat it.
    kept: HashSet<Vec<u8>>,
}

impl Backlog {
    /// Keeps the changes not kept yet; returns how many were new. The
    /// oldest are dropped past [`MAX_UNJOURNALED`].
    fn keep(&mut self, changes: &[Change]) -> usize {
        let mut added = 0;
        for change in changes {
            if self.kept.insert(change.to_record()) {
                self.changes.push_back(change.clone());
                added += 1;
            }
        }
        self.trim();
        added
    }

    /// Puts back, in front, what a failed attempt took out.
    fn restore(&mut self, taken: Vec<Change>) {
        for change in taken.into_iter().rev() {
            self.changes.push_front(change);
        }
        self.trim();
    }

    fn trim(&mut self) {
        let excess = self.changes.len().saturating_sub(MAX_UNJOURNALED);
        if excess > 0 {
            for dropped in self.changes.drain(..excess) {
                self.kept.remove(&dropped.to_record());
            }
            tracing::error!(
                dropped = excess,
                "in-memory repair backlog full; run `handover verify --repair` once the journal is back"
            );
        }
    }
}

/// Journals changes and hands them to the sync. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// Where [`Recorder`] appends, when it is not the local journal.
#[derive(Debug, Clone)]
pub struct SharedJournal {
    /// The shared store.
    pub store: crate::store::Handle,
    /// Woken after each append: this instance's claimer.
    pub wake: Arc<Notify>,
    /// The epoch this instance is at: each record carries it, so no
    /// instance still behind a flip applies it in the old direction.
    pub epoch: Epoch,
}

/// Reads the epoch this instance is at (the phase lives above the sync).
#[derive(Clone)]
pub struct Epoch(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Epoch {
    /// The epoch `read` returns.
    pub fn new(read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// The epoch now.
    pub fn get(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Epoch").field(&self.get()).finish()
    }
}

/// What an append returned.
enum Appended {
    /// Seqs of the local journal, to hand to this instance's sync.
    Local(std::ops::Range<journal::Seq>),
    /// Seqs of the shared store: whichever instance claims them syncs them.
    Shared(Vec<crate::store::Seq>),
}

struct Inner {
    datasets: Vec<Dataset>,
    journal: Journal,
    shared: Option<SharedJournal>,
    sync: SyncHandle,
    dead_letters: Arc<DeadLetters>,
    health: Arc<Health>,
    metrics: JournalMetrics,
    unjournaled: Mutex<Backlog>,
    /// Wakes [`Recorder::keep_journaling`]: the backlog got its first
    /// change, or an append just succeeded while changes wait.
    wake: Notify,
    untracked: Mutex<Untracked>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("datasets", &self.inner.datasets)
            .field("unjournaled", &self.unjournaled())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder for the enabled `datasets` (changes of other datasets
    /// are ignored) that appends to `shared` (fleet mode) when given, else
    /// to the local journal.
    pub fn with_shared(
        datasets: Vec<Dataset>,
        journal: Journal,
        shared: Option<SharedJournal>,
        sync: SyncHandle,
        dead_letters: Arc<DeadLetters>,
        health: Arc<Health>,
        metrics: JournalMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                datasets,
                journal,
                shared,
                sync,
                dead_letters,
                health,
                metrics,
                unjournaled: Mutex::new(Backlog::default()),
                wake: Notify::new(),
                untracked: Mutex::new(Untracked::default()),
            }),
        }
    }

    /// Journals `changes` and hands them to the sync. Returns once they are
    /// durable, or once the failure has been recorded.
    pub async fn record(&self, changes: Vec<Change>) {
        self.inner.record(changes, None).await;
    }

    /// Like [`Recorder::record`], then also waits (at most `limit`) until
    /// the sync has applied them: for an answer the client must not get
    /// before the secondary holds what it created.
    pub async fn record_settled(&self, changes: Vec<Change>, limit: Duration) {
        self.inner.record(changes, Some(limit)).await;
    }

    /// Records a successful trigger at `route` whose change could not be
    /// named (`reason`: its response was too large, cut off or malformed):
    /// counted, logged, and remembered for `/status` and the cutover
    /// pre-flight until a verify covers it.
    pub fn record_untracked(&self, route: &'static str, reason: &'static str) {
        self.inner.metrics.record_untracked(route);
        let now = SystemTime::now();
        let mut untracked = self
            .inner
            .untracked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        untracked.count += 1;
        untracked.since.get_or_insert(now);
        untracked.last = Some(now);
        tracing::error!(
            route,
            reason,
            untracked = untracked.count,
            "cannot track a change: the primary's answer could not be inspected; run `handover verify --repair`"
        );
    }

    /// The changes that could not be tracked since the last verify that
    /// covered them.
    pub fn untracked(&self) -> Untracked {
        *self
            .inner
            .untracked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A verify (of every dataset) that started at `started` has finished
    /// and found or repaired the drift: untracked changes from before it
    /// are accounted for. Later ones stay.
    pub fn verified_since(&self, started: SystemTime) {
        let mut untracked = self
            .inner
            .untracked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if untracked.last.is_some_and(|last| last < started) {
            *untracked = Untracked::default();
        }
    }

    /// Fleet mode: whether a change of `key` waits in the shared journal,
    /// taken by any instance (its sync may be running elsewhere). A store
    /// that does not answer counts as "no": the caller reports what it
    /// read.
    pub async fn pending_in_store(&self, key: &Key) -> bool {
        let Some(shared) = &self.inner.shared else {
            return false;
        };
        let lane = super::dispatcher::store_lane(&Change::sync(key.clone()));
        match shared.store.lane_pending(lane.as_bytes()).await {
            Ok(pending) => pending,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the shared journal for a key");
                false
            }
        }
    }

    /// Changes waiting in memory for the journal to accept them again.
    pub fn unjournaled(&self) -> usize {
        self.inner.backlog().changes.len()
    }

    /// Journals the changes kept in memory, retrying with backoff
    /// ([`REJOURNAL_INITIAL_DELAY`] doubling to [`REJOURNAL_MAX_DELAY`])
    /// until they are durable, then hands them to the sync as journaled.
    /// Runs until `stop`, then makes one last attempt (the downstream is
    /// drained by then).
    pub async fn keep_journaling(self, stop: CancellationToken) {
        let inner = &self.inner;
        let mut delay = REJOURNAL_INITIAL_DELAY;
        loop {
            if inner.backlog().changes.is_empty() {
                delay = REJOURNAL_INITIAL_DELAY;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = inner.wake.notified() => {}
                }
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
                () = inner.wake.notified() => {}
            }
            if inner.rejournal().await {
                delay = REJOURNAL_INITIAL_DELAY;
            } else {
                delay = (delay * 2).min(REJOURNAL_MAX_DELAY);
            }
        }
        if !inner.backlog().changes.is_empty() && !inner.rejournal().await {
            tracing::error!(
                changes = inner.backlog().changes.len(),
                "stopping with changes that could not be journaled; run `handover verify --repair` after the restart"
            );
        }
    }

    /// Gives the journal's backlog from before a restart to the sync.
    pub fn resume(&self, entries: Vec<journal::Entry>) {
        if entries.is_empty() {
            return;
        }
        tracing::info!(changes = entries.len(), "resuming journal backlog");
        self.submit_entries(entries);
    }

    /// Fleet mode: moves the local journal's backlog from before a
    /// restart (an instance switched from `kind = "local"`) to the shared
    /// journal, and acknowledges it locally only once it is there. If the
    /// shared store refuses, the records stay in the local journal (they
    /// come back at the next start) and are synced from memory meanwhile.
    pub async fn adopt(&self, entries: Vec<journal::Entry>) {
        let inner = &self.inner;
        let decoded: Vec<(journal::Seq, Change)> = entries
            .into_iter()
            .filter_map(|entry| inner.decode(entry))
            .filter(|(_, change)| inner.enabled(change))
            .collect();
        if decoded.is_empty() {
            return;
        }
        let (seqs, changes): (Vec<journal::Seq>, Vec<Change>) = decoded.into_iter().unzip();
        match inner.append(&changes).await {
            Ok(_) => {
                tracing::info!(
                    changes = changes.len(),
                    "moved the local journal's backlog to the shared journal"
                );
                for seq in seqs {
                    inner.journal.ack(seq);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, changes = changes.len(), "cannot move the local journal's backlog to the shared journal; syncing it from memory, it stays in the local journal");
                inner.sync.submit_unjournaled(changes);
            }
        }
    }

    /// Syncs the records whose append future was dropped (the journal keeps
    /// them for us). Called periodically.
    pub fn pick_up_orphans(&self) {
        let orphans = self.inner.journal.take_orphans();
        if !orphans.is_empty() {
            self.submit_entries(orphans);
        }
    }

    fn submit_entries(&self, entries: Vec<journal::Entry>) {
        let decoded: Vec<_> = entries
            .into_iter()
            .filter_map(|entry| self.inner.decode(entry))
            .collect();
        self.inner.sync.submit_journaled(decoded);
    }
}

impl Inner {
    fn enabled(&self, change: &Change) -> bool {
        let dataset = change.dataset();
        self.datasets.contains(&dataset)
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.unjournaled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn record(&self, changes: Vec<Change>, settle: Option<Duration>) {
        let changes: Vec<Change> = changes.into_iter().filter(|c| self.enabled(c)).collect();
        if changes.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.append(&changes).await {
            Ok(Appended::Shared(seqs)) => {
                self.metrics
                    .append_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.health.set_journal_ok(true);
                if !self.backlog().changes.is_empty() {
                    self.wake.notify_one();
                }
                if let Some(limit) = settle {
                    self.settle_shared(&seqs, limit).await;
                }
            }
            Ok(Appended::Local(seqs)) => {
                self.metrics
                    .append_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.health.set_journal_ok(true);
                if !self.backlog().changes.is_empty() {
                    // The journal works again: journal the kept changes now.
                    self.wake.notify_one();
                }
                match settle {
                    None => self.sync.submit_journaled(seqs.zip(changes)),
                    Some(limit) => {
                        let settled = self.sync.submit_journaled_settled(seqs.zip(changes));
                        if tokio::time::timeout(limit, settled).await.is_err() {
                            tracing::warn!(
                                limit = ?limit,
                                "released an answer of the previous primary before its changes reached the new primary"
                            );
                        }
                    }
                }
            }
            Err(err) => {
                self.metrics.errors.inc();
                self.health.set_journal_ok(false);
                let (added, first) = {
                    let mut backlog = self.backlog();
                    let first = backlog.changes.is_empty();
                    (backlog.keep(&changes), first)
                };
                self.metrics.unjournaled.inc_by(added as u64);
                if first {
                    tracing::error!(error = %err, changes = changes.len(), "cannot journal changes; syncing from memory and keeping them until the journal is writable");
                    self.wake.notify_one();
                } else {
                    tracing::debug!(error = %err, changes = changes.len(), "cannot journal changes; kept in memory");
                }
                // Only this trigger's changes: the kept ones were synced
                // when their own trigger came.
                self.sync.submit_unjournaled(changes);
            }
        }
    }

    /// Appends `changes` (one group commit) to the shared store if there
    /// is one, else to the local journal.
    async fn append(&self, changes: &[Change]) -> Result<Appended, String> {
        match &self.shared {
            Some(shared) => {
                let records = changes
                    .iter()
                    .map(|change| crate::store::Record {
                        lane: super::dispatcher::store_lane(change).into_bytes(),
                        body: change.to_record(),
                    })
                    .collect();
                let seqs = shared
                    .store
                    .append_in(records, shared.epoch.get())
                    .await
                    .map_err(|err| err.to_string())?;
                shared.wake.notify_one();
                Ok(Appended::Shared(seqs))
            }
            None => {
                let bodies: Vec<Vec<u8>> = changes.iter().map(Change::to_record).collect();
                self.journal
                    .append_batch(bodies)
                    .await
                    .map(Appended::Local)
                    .map_err(|err| err.to_string())
            }
        }
    }

    /// Waits (at most `limit`) until the fleet has applied `seqs`: any
    /// instance may have claimed them, so the store is asked.
    async fn settle_shared(&self, seqs: &[crate::store::Seq], limit: Duration) {
        let Some(shared) = &self.shared else {
            return;
        };
        let waited = tokio::time::timeout(limit, async {
            loop {
                match shared.store.pending_among(seqs).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(err) => tracing::debug!(error = %err, "cannot read pending shared work"),
                }
                tokio::time::sleep(SETTLE_POLL).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                limit = ?limit,
                "released an answer of the previous primary before its changes reached the new primary"
            );
        }
    }

    /// One attempt to journal the kept changes; true when none are left
    /// waiting.
    async fn rejournal(&self) -> bool {
        let taken: Vec<Change> = self.backlog().changes.drain(..).collect();
        if taken.is_empty() {
            return true;
        }
        match self.append(&taken).await {
            Ok(appended) => {
                {
                    let mut backlog = self.backlog();
                    for change in &taken {
                        backlog.kept.remove(&change.to_record());
                    }
                }
                self.health.set_journal_ok(true);
                tracing::info!(
                    changes = taken.len(),
                    "journaled the changes kept in memory"
                );
                // Synced from memory already, best effort; the journaled
                // copy is synced (once more) and acknowledged like any other.
                if let Appended::Local(seqs) = appended {
                    self.sync.submit_journaled(seqs.zip(taken));
                }
                self.backlog().changes.is_empty()
            }
            Err(err) => {
                self.metrics.errors.inc();
                self.health.set_journal_ok(false);
                tracing::debug!(error = %err, changes = taken.len(), "journal still not writable");
                self.backlog().restore(taken);
                false
            }
        }
    }

    /// A journal record's change, or `None` after moving an unreadable one
    /// to the dead letters (and acknowledging it there).
    fn decode(&self, entry: journal::Entry) -> Option<(journal::Seq, Change)> {
        match Change::from_record(&entry.body) {
            Ok(change) => Some((entry.seq, change)),
            Err(err) => {
                tracing::error!(seq = entry.seq, error = %err, "unreadable journal record; moved to dead letters");
                let reason = format!("unreadable journal record: {err}");
                match self.dead_letters.push(&reason, &entry.body) {
                    Ok(_) => self.journal.ack(entry.seq),
                    Err(err) => {
                        tracing::error!(error = %err, "cannot write the dead-letter log; the record stays in the journal")
                    }
                }
                None
            }
        }
    }
}
