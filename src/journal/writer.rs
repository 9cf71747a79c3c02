//! The journal's two OS threads and the state they share with the handles.
//!
//! - **writer** (`journal-writer`): owns appending. It blocks on its channel,
//!   drains every request queued behind the first one (the group), writes
//!   the group with one `write_all`, fdatasyncs once under `sync = always`,
//!   and only then answers every appender. Requests that arrive while it is
//!   inside `fdatasync` queue up and form the next group: that is the whole
//!   group-commit mechanism, with no timers and no added latency when idle.
//! - **maintenance** (`journal-maintenance`): everything nobody waits for:
//!   the periodic fdatasync of `sync = interval`, persisting the applied
//!   cursor, deleting applied segments. Kept off the writer so that its
//!   fsyncs (a cursor persist costs three) never delay an append.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tracing::warn;

use super::cursor::AckTracker;
use super::store::{Store, Usage};
use super::{Commit, Entry, Error, Observer, Seq, SyncPolicy};

/// Upper bound on the bodies gathered into one group commit. Past it the
/// writer commits what it has and takes the rest in the next group, so one
/// burst cannot build an unbounded buffer and the first waiter in a group is
/// not held back by a huge write.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// Where an answer goes.
type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// Bodies to append as consecutive records, and where the seqs go.
pub(super) struct AppendRequest {
    pub(super) bodies: Vec<Vec<u8>>,
    pub(super) reply: Reply<Delivery>,
}

/// The answer to an append: its seqs, and its records until the caller
/// takes the seqs ([`Delivery::accept`]). A delivery dropped unaccepted
/// gives its records to [`super::Journal::take_orphans`]: the caller's
/// future was dropped, either before the writer answered (the send fails
/// and hands the delivery back) or after it answered but before the caller
/// read the answer (the delivery is dropped inside the channel). Either
/// way the records are durable and nobody else knows their seqs; without
/// this the second case left them unsynced until the next restart.
pub(super) struct Delivery {
    seqs: Range<Seq>,
    entries: Vec<Entry>,
    state: Arc<Mutex<State>>,
}

impl Delivery {
    /// The seqs, for a caller that syncs the records itself.
    pub(super) fn accept(mut self) -> Range<Seq> {
        self.entries = Vec::new();
        self.seqs.clone()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.entries.is_empty() {
            lock(&self.state).orphans.append(&mut self.entries);
        }
    }
}

/// A request to the writer thread.
pub(super) enum WriterMsg {
    /// Append these bodies as consecutive records.
    Append(AppendRequest),
    /// Sync what was written and exit.
    Close { reply: Reply<()> },
    /// Exit at once, persisting nothing: what a kill does.
    #[cfg(test)]
    Crash,
}

/// A request to the maintenance thread.
pub(super) enum MaintenanceMsg {
    /// A segment became fully applied: persist the cursor now so it can go.
    Wake,
    /// fdatasync written records and persist the cursor.
    Flush { reply: Reply<()> },
    /// Flush, then exit.
    Stop { reply: Reply<()> },
    /// Exit at once, persisting nothing: what a kill does.
    #[cfg(test)]
    Crash,
}

/// State shared by the handles and both threads, behind one mutex that is
/// only ever held for a few field updates (never across I/O).
#[derive(Debug)]
pub(super) struct State {
    /// The seq the next record gets.
    pub(super) next_seq: Seq,
    /// Out-of-order acks and the in-memory applied cursor.
    pub(super) acks: AckTracker,
    /// The cursor last written to disk.
    pub(super) persisted_cursor: Seq,
    /// `(first seq, appended_at)` of every group still at or above the
    /// cursor, to answer "how old is the oldest unacked record".
    pub(super) groups: VecDeque<(Seq, SystemTime)>,
    /// Storage usage as of the last commit or deletion.
    pub(super) usage: Usage,
    /// Records written whose appender stopped waiting for the answer.
    pub(super) orphans: Vec<Entry>,
}

impl State {
    /// Forgets group timestamps wholly below the cursor.
    pub(super) fn trim_groups(&mut self) {
        let cursor = self.acks.cursor();
        while self
            .groups
            .get(1)
            .is_some_and(|&(first, _)| first <= cursor)
        {
            self.groups.pop_front();
        }
        if cursor >= self.next_seq {
            self.groups.clear();
        }
    }
}

/// Locks the shared state. Poisoning is ignored: every update is a handful
/// of plain assignments that a panic cannot leave half done in a way that
/// matters more than losing the journal would.
pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread.
pub(super) struct Writer {
    pub(super) store: Arc<dyn Store>,
    pub(super) rx: Receiver<WriterMsg>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) policy: SyncPolicy,
    pub(super) observer: Arc<dyn Observer>,
    pub(super) next_seq: Seq,
}

struct Waiter {
    seqs: Range<Seq>,
    reply: Reply<Delivery>,
}

impl Writer {
    /// Runs until closed or until every handle is gone.
    pub(super) fn run(mut self) {
        loop {
            let Ok(first) = self.rx.recv() else {
                // Every handle dropped without close(): finish cleanly.
                self.sync_quietly();
                return;
            };
            let mut group = Vec::new();
            let mut group_bytes = 0;
            let mut control = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append(request) => {
                        group_bytes += request.bodies.iter().map(Vec::len).sum::<usize>();
                        group.push(request);
                    }
                    other => {
                        control = Some(other);
                        break;
                    }
                }
                if group_bytes >= MAX_GROUP_BYTES {
                    break;
                }
                next = self.rx.try_recv().ok();
            }
            if !group.is_empty() {
                self.commit(group);
            }
            match control {
                None => {}
                Some(WriterMsg::Close { reply }) => {
                    let result = self.store.sync();
                    // Let go of the store before answering: once the
                    // maintenance thread has done the same (close() stops
                    // it next), the directory lock is released, so a reopen
                    // right after close() returns finds the directory free.
                    drop(self);
                    let _ = reply.send(result);
                    return;
                }
                #[cfg(test)]
                Some(WriterMsg::Crash) => return,
                Some(WriterMsg::Append(_)) => unreachable!("appends never end a group"),
            }
        }
    }

    fn commit(&mut self, group: Vec<AppendRequest>) {
        let appended_at = SystemTime::now();
        let first = self.next_seq;
        let mut seq = first;
        let mut entries = Vec::new();
        let mut waiters = Vec::with_capacity(group.len());
        for AppendRequest { bodies, reply } in group {
            let start = seq;
            for body in bodies {
                entries.push(Entry {
                    seq,
                    body,
                    appended_at,
                });
                seq += 1;
            }
            waiters.push(Waiter {
                seqs: start..seq,
                reply,
            });
        }
        let sync = self.policy == SyncPolicy::Always;
        match self.store.append(&entries, sync) {
            Ok(appended) => {
                self.next_seq = seq;
                {
                    // Publish before answering: a worker may ack the moment
                    // it has the seq.
                    let mut state = lock(&self.state);
                    state.next_seq = seq;
                    if seq > first {
                        state.groups.push_back((first, appended_at));
                    }
                    state.usage = self.store.usage();
                }
                self.observer.on_commit(&Commit {
                    requests: waiters.len(),
                    records: entries.len(),
                    bytes: appended.bytes,
                    write: appended.write,
                    fsync: appended.sync,
                });
                let mut entries = entries.into_iter();
                for waiter in waiters {
                    let count = usize::try_from(waiter.seqs.end - waiter.seqs.start)
                        .expect("a group holds fewer than usize::MAX records");
                    let delivery = Delivery {
                        seqs: waiter.seqs,
                        entries: entries.by_ref().take(count).collect(),
                        state: Arc::clone(&self.state),
                    };
                    // If the appender's future is gone, the delivery comes
                    // back and, dropped, leaves its records as orphans
                    // instead of blocking the cursor until the next restart.
                    let _ = waiter.reply.send(Ok(delivery));
                }
            }
            Err(err) => {
                warn!(error = %err, records = entries.len(), "failed to append to the journal");
                self.observer.on_error(&err);
                for waiter in waiters {
                    let _ = waiter.reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn sync_quietly(&self) {
        if let Err(err) = self.store.sync() {
            warn!(error = %err, "failed to sync the journal at exit");
            self.observer.on_error(&err);
        }
    }
}

/// The maintenance thread.
pub(super) struct Maintenance {
    pub(super) store: Arc<dyn Store>,
    pub(super) rx: Receiver<MaintenanceMsg>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) policy: SyncPolicy,
    pub(super) observer: Arc<dyn Observer>,
    pub(super) cursor_interval: Duration,
    pub(super) persisted: Seq,
}

impl Maintenance {
    /// Runs until stopped or until every handle is gone.
    pub(super) fn run(mut self) {
        let sync_interval = match self.policy {
            SyncPolicy::Always => None,
            SyncPolicy::Interval(interval) => Some(interval),
        };
        let mut next_sync = sync_interval.map(|i| Instant::now() + i);
        let mut next_persist = Instant::now() + self.cursor_interval;
        loop {
            let deadline = next_sync.map_or(next_persist, |s| s.min(next_persist));
            let timeout = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(timeout) {
                Ok(MaintenanceMsg::Wake) => {
                    let _ = self.persist_cursor();
                }
                Ok(MaintenanceMsg::Flush { reply }) => {
                    let _ = reply.send(self.flush());
                }
                Ok(MaintenanceMsg::Stop { reply }) => {
                    let result = self.flush();
                    drop(self);
                    let _ = reply.send(result);
                    return;
                }
                #[cfg(test)]
                Ok(MaintenanceMsg::Crash) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.flush();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if let (Some(at), Some(interval)) = (next_sync, sync_interval)
                        && now >= at
                    {
                        let _ = self.sync();
                        next_sync = Some(now + interval);
                    }
                    if now >= next_persist {
                        let _ = self.persist_cursor();
                        next_persist = now + self.cursor_interval;
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        // Data first, then the cursor (STYLE.md §4 steps 5 and 6).
        let synced = self.sync();
        let persisted = self.persist_cursor();
        synced.and(persisted)
    }

    fn sync(&self) -> Result<(), Error> {
        let started = Instant::now();
        match self.store.sync() {
            Ok(()) => {
                self.observer.on_sync(started.elapsed());
                Ok(())
            }
            Err(err) => {
                // With `interval` the appenders were already answered: all
                // that is left is to say so loudly and try again next tick.
                warn!(error = %err, "failed to sync the journal in the background");
                self.observer.on_error(&err);
                Err(err)
            }
        }
    }

    fn persist_cursor(&mut self) -> Result<(), Error> {
        let cursor = lock(&self.state).acks.cursor();
        if cursor > self.persisted {
            if let Err(err) = self.store.persist_cursor(cursor) {
                // Not a safety problem: more records are replayed after a
                // crash. Retried at the next tick.
                warn!(error = %err, cursor, "failed to persist the journal cursor");
                self.observer.on_error(&err);
                return Err(err);
            }
            self.persisted = cursor;
            lock(&self.state).persisted_cursor = cursor;
        }
        let deletable = lock(&self.state)
            .usage
            .deletable_at
            .is_some_and(|at| at <= self.persisted);
        if deletable {
            let result = self.store.delete_applied(self.persisted);
            lock(&self.state).usage = self.store.usage();
            if let Err(err) = result {
                warn!(error = %err, "failed to delete applied journal segments");
                self.observer.on_error(&err);
                return Err(err);
            }
        }
        Ok(())
    }
}
