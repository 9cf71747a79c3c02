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
//! paged), the changes are synced from memory right away (best effort), and
//! they are kept, bounded by [`MAX_UNJOURNALED`], to be journaled again
//! with the next successful append.
//!
//! A record that no longer decodes (authenticated by the journal's AEAD, so
//! written by a handover of another version) is moved to the dead letters
//! with the reason and acknowledged, never silently dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::SyncHandle;
use crate::health::Health;
use crate::journal::{self, DeadLetters, Journal};
use crate::metrics::JournalMetrics;
use crate::model::{Change, Dataset};

/// Most changes kept in memory while the journal cannot be written; past
/// this the oldest are dropped (and counted): `handover verify --repair`
/// finds what they would have fixed.
pub const MAX_UNJOURNALED: usize = 100_000;

/// Journals changes and hands them to the sync. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    datasets: Vec<Dataset>,
    journal: Journal,
    sync: SyncHandle,
    dead_letters: Arc<DeadLetters>,
    health: Arc<Health>,
    metrics: JournalMetrics,
    unjournaled: Mutex<VecDeque<Change>>,
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
    /// are ignored).
    pub fn new(
        datasets: Vec<Dataset>,
        journal: Journal,
        sync: SyncHandle,
        dead_letters: Arc<DeadLetters>,
        health: Arc<Health>,
        metrics: JournalMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                datasets,
                journal,
                sync,
                dead_letters,
                health,
                metrics,
                unjournaled: Mutex::new(VecDeque::new()),
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
    pub(crate) async fn record_settled(&self, changes: Vec<Change>, limit: Duration) {
        self.inner.record(changes, Some(limit)).await;
    }

    /// Changes waiting in memory for the journal to accept them again.
    pub(crate) fn unjournaled(&self) -> usize {
        self.inner.unjournaled.lock().map_or(0, |q| q.len())
    }

    /// Gives the journal's backlog from before a restart to the sync.
    pub fn resume(&self, entries: Vec<journal::Entry>) {
        if entries.is_empty() {
            return;
        }
        tracing::info!(changes = entries.len(), "resuming journal backlog");
        self.submit_entries(entries);
    }

    /// Syncs the records whose append future was dropped (the journal keeps
    /// them for us). Called periodically.
    pub(crate) fn pick_up_orphans(&self) {
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

    async fn record(&self, changes: Vec<Change>, settle: Option<Duration>) {
        let mut changes: Vec<Change> = changes.into_iter().filter(|c| self.enabled(c)).collect();
        if changes.is_empty() {
            return;
        }
        // Re-journal what a failed append left in memory.
        let backlog: Vec<Change> = self
            .unjournaled
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default();
        let retried = backlog.len();
        changes.extend(backlog);
        let bodies: Vec<Vec<u8>> = changes.iter().map(Change::to_record).collect();
        let started = Instant::now();
        match self.journal.append_batch(bodies).await {
            Ok(seqs) => {
                self.metrics
                    .append_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.health.set_journal_ok(true);
                if retried > 0 {
                    tracing::info!(changes = retried, "re-journaled changes kept in memory");
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
                tracing::error!(error = %err, changes = changes.len(), "cannot journal changes; syncing from memory and keeping them for repair");
                self.metrics.unjournaled.inc_by(changes.len() as u64);
                if let Ok(mut queue) = self.unjournaled.lock() {
                    queue.extend(changes.iter().cloned());
                    let excess = queue.len().saturating_sub(MAX_UNJOURNALED);
                    if excess > 0 {
                        queue.drain(..excess);
                        tracing::error!(
                            dropped = excess,
                            "in-memory repair backlog full; run `handover verify --repair` once the journal is back"
                        );
                    }
                }
                self.sync.submit_unjournaled(changes);
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
