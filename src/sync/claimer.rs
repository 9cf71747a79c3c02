//! Fleet mode: how an instance takes its share of the shared journal.
//!
//! With a PostgreSQL store the [`super::Recorder`] only appends; it never
//! hands a change to its own workers. Every instance runs a claimer that
//! claims whole lanes with a lease ([`crate::store::Handle::claim`]) and
//! submits their records to its sync, where the dispatcher's per-lane rules
//! apply as usual. Because a stored lane is held by one instance at a time,
//! those rules hold across the fleet: one sync per key, coalescing, payload
//! events in order.
//!
//! - **Wake-up**: at once after a local append; otherwise every
//!   [`POLL_INTERVAL`], which is how changes appended by other instances
//!   (or left by a dead one) are found.
//! - **Back-pressure**: at most [`MAX_OUTSTANDING`] records claimed and not
//!   yet acknowledged, so a slow target leaves the rest to the fleet.
//! - **Leases**: renewed every third of the lease while the instance runs;
//!   released at a clean stop, so the rest of the fleet takes over at once;
//!   after a crash they expire and return to the pool.
//! - **Acks** are batched: one `DELETE` per batch ([`ack_batches`]).
//! - A record that does not decode (written by another version) is moved
//!   to the dead letters with the reason, never dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::SyncHandle;
use crate::model::Change;
use crate::store::{Handle, Seq};

/// How often an idle instance looks for work appended elsewhere: bounds
/// the extra lag of a change appended by another instance, at one cheap
/// query per instance per interval.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Most lanes taken in one claim.
pub const MAX_LANES_PER_CLAIM: usize = 256;

/// Most records an instance holds claimed and unacknowledged.
pub const MAX_OUTSTANDING: usize = 4096;

/// Most seqs deleted by one ack statement.
const MAX_ACK_BATCH: usize = 1024;

/// Claims shared work for this instance's sync.
#[derive(Debug, Clone)]
pub struct Claimer {
    store: Handle,
    sync: SyncHandle,
    owner: String,
    lease: Duration,
    wake: Arc<Notify>,
    outstanding: Arc<AtomicUsize>,
    /// The epoch this instance is at: it claims nothing appended after it
    /// (a flip it has not followed yet: that change's primary is another).
    epoch: Option<super::Epoch>,
}

impl Claimer {
    /// A claimer for `owner` (unique per running instance).
    pub fn new(store: Handle, sync: SyncHandle, owner: String, lease: Duration) -> Self {
        Self {
            store,
            sync,
            owner,
            lease,
            wake: Arc::new(Notify::new()),
            outstanding: Arc::new(AtomicUsize::new(0)),
            epoch: None,
        }
    }

    /// Claims only what was appended at the epoch `epoch` reads, or before.
    pub fn with_epoch(mut self, epoch: super::Epoch) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// What the recorder notifies after an append.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The owner name its claims carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims and submits until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut failing = false;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let room = MAX_OUTSTANDING.saturating_sub(self.outstanding.load(Ordering::Acquire));
            if room > 0 {
                let epoch = self.epoch.as_ref().map_or(u64::MAX, super::Epoch::get);
                match self
                    .store
                    .claim_through(
                        &self.owner,
                        MAX_LANES_PER_CLAIM.min(room),
                        self.lease,
                        epoch,
                    )
                    .await
                {
                    Ok(claimed) if !claimed.is_empty() => {
                        failing = false;
                        self.outstanding.fetch_add(claimed.len(), Ordering::AcqRel);
                        let mut work = Vec::with_capacity(claimed.len());
                        for record in claimed {
                            match Change::from_record(&record.body) {
                                Ok(change) => work.push((record.seq, change)),
                                Err(err) => {
                                    tracing::error!(seq = record.seq, error = %err, "unreadable shared journal record; moved to dead letters");
                                    let reason = format!("unreadable journal record: {err}");
                                    if let Err(err) = self.store.bury(&record, &reason).await {
                                        tracing::error!(error = %err, "cannot move an unreadable record to the dead letters");
                                    }
                                    self.outstanding.fetch_sub(1, Ordering::AcqRel);
                                }
                            }
                        }
                        self.sync.submit_journaled(work);
                        continue;
                    }
                    Ok(_) => failing = false,
                    Err(err) => {
                        if !failing {
                            tracing::error!(error = %err, "cannot claim shared work; retrying");
                        }
                        failing = true;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Renews this instance's claims every third of the lease until
    /// `stop`.
    pub async fn renew(self, stop: CancellationToken) {
        let every = self.lease / 3;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(err) = self.store.extend(&self.owner, self.lease).await {
                tracing::error!(error = %err, "cannot renew the claims on shared work");
            }
        }
    }

    /// Deletes acknowledged records in batches until `stop`, then deletes
    /// what is queued and gives back the claims still held (their work
    /// was not finished) so the fleet takes them over at once.
    pub async fn ack_batches(
        self,
        mut acks: mpsc::UnboundedReceiver<Seq>,
        stop: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => None,
                seq = acks.recv() => seq,
            };
            let Some(first) = first else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_ACK_BATCH {
                match acks.try_recv() {
                    Ok(seq) => batch.push(seq),
                    Err(_) => break,
                }
            }
            self.ack(&batch, &stop).await;
        }
        let mut rest = Vec::new();
        while let Ok(seq) = acks.try_recv() {
            rest.push(seq);
        }
        if !rest.is_empty()
            && let Err(err) = self.store.ack(&rest).await
        {
            tracing::error!(error = %err, "cannot acknowledge shared work at shutdown; it will be applied again");
        }
        match self.store.release(&self.owner).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "gave back unfinished shared work"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot give back claims; they return when their lease expires")
            }
        }
    }

    async fn ack(&self, batch: &[Seq], stop: &CancellationToken) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.ack(batch).await {
                Ok(()) => break,
                Err(err) if stop.is_cancelled() => {
                    tracing::error!(error = %err, "cannot acknowledge shared work; it will be applied again");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot acknowledge shared work; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.outstanding.fetch_sub(batch.len(), Ordering::AcqRel);
    }
}
