//! Sync workers: take journaled changes, read the current state of each key
//! from the primary, and upsert or delete it on the secondary (DESIGN.md
//! §2, step 3).
//!
//! # Lanes
//!
//! Work is grouped in *lanes*, one per record identity
//! ([`Key::identity`]). A lane runs one job at a time, so two workers never
//! write the same record concurrently (a worker holding an older read could
//! otherwise overwrite a newer one). Within a lane:
//!
//! - state changes ([`Change::Sync`]) coalesce: any number of them arriving
//!   while the lane is busy become one more sync afterwards, which reads the
//!   state current at that time (the newest read wins);
//! - payload events (revocations) queue in order and run before the lane's
//!   next state sync;
//! - work that needs a lookup first ([`Change::Resolve`],
//!   [`Change::SubjectSessions`], a revocation's re-reads) produces
//!   *follow-ups*, which enter the lane of the key they resolved to.
//!
//! Because workers copy current state, order across lanes does not matter,
//! duplicates are harmless, and several proxy instances converge without
//! coordination.
//!
//! # Acknowledgement
//!
//! Each journaled change carries an [`Ack`]: the journal record is
//! acknowledged (and may be deleted) when the last piece of work holding it
//! is done, including follow-ups. A failure that retrying cannot fix (the
//! secondary refuses the record, the primary answers garbage) moves the
//! change to the dead-letter log with the reason, then acknowledges it; an
//! operator can retry dead letters after fixing the cause. Transient
//! failures (unreachable, 5xx, refused credentials) retry with capped
//! exponential backoff and jitter, forever: the journal grows and the lag
//! metric says so, nothing is dropped.

mod apply;
mod authlete;
mod breaker;
pub mod claimer;
mod dispatcher;
pub mod limiter;
mod recorder;

pub use apply::{Apply, BoxFuture, Connect2idCopy};
pub use authlete::AuthleteApply;
pub use limiter::{Bounds, Limiter, Permit, Snapshot};
pub use recorder::{
    Epoch, MAX_UNJOURNALED, REJOURNAL_INITIAL_DELAY, REJOURNAL_MAX_DELAY, Recorder, SharedJournal,
    Untracked,
};

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::journal::{DeadLetters, Journal, Seq};
use crate::metrics::SyncMetrics;
use crate::model::{Change, Dataset, Key, Side};
use crate::servers::ApiError;

/// Default concurrency the sync starts with (and restarts from after an
/// outage): enough to hide a few milliseconds of target latency at
/// thousands of writes per second, few enough not to overload a target
/// that is catching up. The limit grows from here while the target's
/// latency allows ([`limiter`]).
pub const DEFAULT_WORKERS: usize = 16;
/// Default cap on the adaptive concurrency: a target 200 ms away needs
/// about 400 jobs in flight to take 1,000 keys/s at two round trips each;
/// the limiter only goes this high while the target's latency stays flat.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// First retry delay after a transient failure.
pub(crate) const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest retry delay: a target that was down is picked up again within
/// half a minute of coming back.
pub(crate) const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Deadline for one management-API call made by the sync (read at the
/// primary or write at the secondary).
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sync settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Datasets kept in sync (`clients`, `authorizations`, `sessions`; or
    /// `clients`, `tokens` for an Authlete target).
    pub datasets: Vec<Dataset>,
    /// The tenants of a multi-tenant Connect2id (`Tenant-ID` values)
    /// besides the default one, backfilled and verified each on its own
    /// (`sync.tenants`; live changes are scoped by their own headers).
    pub tenants: Vec<crate::model::Tenant>,
    /// Concurrent jobs to start with (and after an outage).
    pub workers: usize,
    /// The most concurrent jobs the adaptive limit may allow.
    pub max_concurrency: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Deadline of one management-API call.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            datasets: Dataset::CONNECT2ID.to_vec(),
            tenants: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            workers: DEFAULT_WORKERS,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
        }
    }
}

impl Config {
    /// The bounds of each server's concurrency limiter.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            initial: self.workers,
            max: self.max_concurrency.max(self.workers),
        }
    }
}

/// The sync's concurrency limiters, one per server: jobs take a permit from
/// the secondary's, and each learns from its own server's answers (its
/// upstream's `Feedback`), so after a flip the new secondary's limit is
/// judged against that server's own latency.
///
/// At a flip the new secondary's limiter takes over the old one's limit
/// when its own is lower ([`Limits::secondary`]). A job holds its permit
/// while it reads the primary too, so the jobs the sync needs (rate × job
/// time) do not change when the roles swap; the new secondary's own limit
/// was left wherever its last stint (or its start) put it. Measured at
/// 500 writes/s with a target 100 ms away: the source's limit was 9 at the
/// cut-over, every job then read the target at 100 ms, and the backlog
/// grew to 640 records and 1.4 s of lag while the limit climbed window by
/// window to 244 (README of the benches, §8). Its latency still judges it
/// from there: a secondary that cannot take it lowers it within a window.
#[derive(Debug, Clone)]
pub struct Limits {
    source: Arc<Limiter>,
    target: Arc<Limiter>,
    /// The side the jobs last wrote to (`Side::index`), or `NONE`.
    last_secondary: Arc<std::sync::atomic::AtomicU8>,
}

impl Limits {
    const NONE: u8 = u8::MAX;

    /// Both limiters, starting at `config`'s bounds.
    pub fn new(config: &Config) -> Self {
        Self {
            source: Limiter::new(config.bounds()),
            target: Limiter::new(config.bounds()),
            last_secondary: Arc::new(std::sync::atomic::AtomicU8::new(Self::NONE)),
        }
    }

    /// The limiter of `side`'s server.
    pub fn of(&self, side: Side) -> &Arc<Limiter> {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// The limiter of the secondary, `side`: the jobs' and the verify's.
    /// The first call after the roles swapped hands the old secondary's
    /// limit over (see the type's documentation).
    pub fn secondary(&self, side: Side) -> &Arc<Limiter> {
        let now = match side {
            Side::Source => 0,
            Side::Target => 1,
        };
        let limiter = self.of(side);
        // A read per job; a write only at a flip.
        if self.last_secondary.load(Ordering::Acquire) != now {
            let before = self.last_secondary.swap(now, Ordering::AcqRel);
            if before != now && before != Self::NONE {
                limiter.raise_to(self.of(side.other()).snapshot().limit);
            }
        }
        limiter
    }
}

/// Acknowledges one journal record when the last holder drops it, unless
/// the sync is stopping (unfinished work must come back after a restart).
///
/// "Stopping" is the stop token itself, not a flag some task sets once it
/// notices the token: a job woken by the stop drops its acks at once, and
/// must find them refused no matter which task the runtime ran first.
pub(crate) struct Ack {
    seq: Seq,
    journal: AckSink,
    stop: CancellationToken,
    /// Told when the record is settled (applied or dead-lettered), for a
    /// caller that must not answer before the secondary has the change.
    settled: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack").field("seq", &self.seq).finish()
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.stop.is_cancelled() {
            self.journal.ack(self.seq);
            if let Some(settled) = self.settled.take() {
                let _ = settled.send(());
            }
        }
    }
}

/// Where acknowledgements go: the local journal, or (fleet mode) the
/// shared store's ack batcher, which deletes applied records.
#[derive(Debug, Clone)]
pub enum AckSink {
    /// The local journal.
    Journal(Journal),
    /// Seqs of the shared store, batched by [`claimer::ack_batches`].
    Store(mpsc::UnboundedSender<Seq>),
}

impl AckSink {
    fn ack(&self, seq: Seq) {
        match self {
            AckSink::Journal(journal) => journal.ack(seq),
            // The batcher stops after the sync: nothing to do then.
            AckSink::Store(acks) => {
                let _ = acks.send(seq);
            }
        }
    }
}

impl From<Journal> for AckSink {
    fn from(journal: Journal) -> Self {
        AckSink::Journal(journal)
    }
}

/// One unit of work: a change and the journal records it settles.
pub(crate) type Work = dispatcher::Work<Arc<Ack>>;

/// An exported record for the backfill to write.
pub(crate) type BackfillItem = dispatcher::Exported<tokio::sync::oneshot::Sender<BackfillOutcome>>;

type Job = dispatcher::Job<Arc<Ack>, tokio::sync::oneshot::Sender<BackfillOutcome>>;

/// Work not backed by a journal record (the journal failed; best effort).
fn unjournaled(change: Change) -> Work {
    Work {
        change,
        acks: Vec::new(),
    }
}

enum Command {
    Submit(Vec<Work>),
    Done {
        lane: String,
        follow_ups: Vec<Work>,
    },
    /// Start recording which keys live traffic touches (a backfill export
    /// is about to begin).
    WatchBegin,
    /// Stop recording.
    WatchEnd,
    /// Write an exported record unless live traffic owns its key.
    Backfill(BackfillItem),
}

/// What happened to one exported record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillOutcome {
    /// Written to the secondary.
    Copied,
    /// Live traffic changed the key since the export began: the sync path
    /// owns it (it reads the current state), the older exported copy is
    /// not written.
    Skipped,
    /// The secondary refused it; the key is in the dead letters.
    Failed,
    /// The sync is stopping.
    Stopped,
}

/// A handle to the running sync.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    commands: mpsc::UnboundedSender<Command>,
    journal: AckSink,
    stop: CancellationToken,
    busy_lanes: Arc<AtomicUsize>,
    /// Identities of lanes with live (non-backfill) work, for verify.
    busy_keys: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Keys synced recently, for the cutover's final check.
    recent: Arc<Recent>,
    idle: watch::Receiver<bool>,
    limits: Limits,
    apply: Arc<dyn Apply>,
    /// Changes applied, per second.
    applied: Arc<RateMeter>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Submit(work) => write!(f, "Submit({} changes)", work.len()),
            Self::Done { follow_ups, .. } => write!(f, "Done({} follow-ups)", follow_ups.len()),
            Self::WatchBegin => f.write_str("WatchBegin"),
            Self::WatchEnd => f.write_str("WatchEnd"),
            Self::Backfill(item) => write!(f, "Backfill({})", item.key.redacted()),
        }
    }
}

impl SyncHandle {
    /// Queues journaled changes (`seqs[i]` is the record of `changes[i]`).
    pub(crate) fn submit_journaled(&self, entries: impl IntoIterator<Item = (Seq, Change)>) {
        let work: Vec<Work> = entries
            .into_iter()
            .map(|(seq, change)| Work {
                change,
                acks: vec![Arc::new(Ack {
                    seq,
                    journal: self.journal.clone(),
                    stop: self.stop.clone(),
                    settled: None,
                })],
            })
            .collect();
        if !work.is_empty() {
            let _ = self.commands.send(Command::Submit(work));
        }
    }

    /// Queues journaled changes like [`SyncHandle::submit_journaled`];
    /// the returned future completes once every one of them is settled
    /// (applied to the secondary, follow-ups included, or dead-lettered)
    /// or the sync stops. Put a deadline on it: a secondary that is down
    /// keeps a change retrying.
    pub(crate) fn submit_journaled_settled(
        &self,
        entries: impl IntoIterator<Item = (Seq, Change)>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut settled = Vec::new();
        let work: Vec<Work> = entries
            .into_iter()
            .map(|(seq, change)| {
                let (tell, told) = tokio::sync::oneshot::channel();
                settled.push(told);
                Work {
                    change,
                    acks: vec![Arc::new(Ack {
                        seq,
                        journal: self.journal.clone(),
                        stop: self.stop.clone(),
                        settled: Some(tell),
                    })],
                }
            })
            .collect();
        if !work.is_empty() {
            let _ = self.commands.send(Command::Submit(work));
        }
        async move {
            for told in settled {
                // An error means the ack was dropped while stopping: the
                // change stays in the journal; nothing more to wait for.
                let _ = told.await;
            }
        }
    }

    /// Queues changes that are not in the journal (best effort).
    pub(crate) fn submit_unjournaled(&self, changes: impl IntoIterator<Item = Change>) {
        let work: Vec<Work> = changes.into_iter().map(unjournaled).collect();
        if !work.is_empty() {
            let _ = self.commands.send(Command::Submit(work));
        }
    }

    /// Starts recording the keys live traffic touches, for a backfill
    /// export about to begin: a record whose key was touched is not
    /// overwritten with its exported (older) copy.
    pub(crate) fn watch_begin(&self) {
        let _ = self.commands.send(Command::WatchBegin);
    }

    /// Stops recording touched keys.
    pub(crate) fn watch_end(&self) {
        let _ = self.commands.send(Command::WatchEnd);
    }

    /// Writes one exported record through the key's lane (serialised with
    /// live sync of the same key). Returns what happened.
    pub async fn backfill(&self, key: Key, record: Value) -> BackfillOutcome {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self
            .commands
            .send(Command::Backfill(BackfillItem { key, record, reply }))
            .is_err()
        {
            return BackfillOutcome::Stopped;
        }
        answer.await.unwrap_or(BackfillOutcome::Stopped)
    }

    /// Keys synced (from live changes) since `since`, each once.
    pub(crate) fn recent_keys(&self, since: Instant) -> Vec<Key> {
        self.recent.since(since)
    }

    /// Whether [`Self::recent_keys`]`(since)` is complete: none synced
    /// since then was forgotten (a minute, or 50,000 keys, are kept).
    pub(crate) fn remembers_since(&self, since: Instant) -> bool {
        self.recent.covers(since)
    }

    /// Whether live work is queued or running for `key`.
    pub(crate) fn is_busy(&self, key: &Key) -> bool {
        self.busy_keys
            .lock()
            .is_ok_and(|keys| keys.contains(&key.identity()))
    }

    /// The concurrency limiter of the server the sync writes to now (the
    /// secondary): jobs, the cutover's verify and `/status` use it.
    pub fn limiter(&self) -> &Arc<Limiter> {
        self.limits.secondary(self.apply.secondary())
    }

    /// The server the sync writes to now.
    pub fn secondary(&self) -> Side {
        self.apply.secondary()
    }

    /// Changes applied per second over the last [`RATE_WINDOW`].
    pub fn rate(&self) -> f64 {
        self.applied.per_second()
    }

    /// Lanes with work queued or running.
    pub(crate) fn busy_lanes(&self) -> usize {
        self.busy_lanes.load(Ordering::Acquire)
    }

    /// Waits until no lane has work, or `timeout` passes. Returns whether
    /// the sync went idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut idle = self.idle.clone();
        tokio::time::timeout(timeout, idle.wait_for(|idle| *idle))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The window of the sync rate in `/status`.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Events per second over the last [`RATE_WINDOW`], in one-second buckets.
#[derive(Debug, Default)]
struct RateMeter {
    /// (second since `epoch`, events in it), oldest first.
    buckets: std::sync::Mutex<VecDeque<(u64, u64)>>,
    epoch: std::sync::OnceLock<Instant>,
}

impl RateMeter {
    fn now(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_secs()
    }

    fn tick(&self) {
        let second = self.now();
        if let Ok(mut buckets) = self.buckets.lock() {
            match buckets.back_mut() {
                Some((at, count)) if *at == second => *count += 1,
                _ => buckets.push_back((second, 1)),
            }
            let window = RATE_WINDOW.as_secs();
            while buckets.front().is_some_and(|(at, _)| at + window < second) {
                buckets.pop_front();
            }
        }
    }

    /// Over the complete seconds of the window (the current one is still
    /// filling), so a steady rate reads steady.
    fn per_second(&self) -> f64 {
        let second = self.now();
        let window = RATE_WINDOW.as_secs();
        let Ok(buckets) = self.buckets.lock() else {
            return 0.0;
        };
        let events: u64 = buckets
            .iter()
            .filter(|(at, _)| *at < second && at + window >= second)
            .map(|(_, count)| count)
            .sum();
        events as f64 / window as f64
    }
}

/// Keys synced in the last minute (at most [`RECENT_CAPACITY`]).
#[derive(Debug, Default)]
struct Recent {
    keys: std::sync::Mutex<VecDeque<(Instant, Key)>>,
    /// When the newest key it let go of was synced (capacity or age).
    forgot_through: std::sync::Mutex<Option<Instant>>,
}

/// Most recently synced keys remembered.
const RECENT_CAPACITY: usize = 50_000;
/// How long a synced key is remembered.
const RECENT_AGE: Duration = Duration::from_secs(60);

impl Recent {
    fn push(&self, key: Key) {
        if let Ok(mut keys) = self.keys.lock() {
            let now = Instant::now();
            while keys.len() >= RECENT_CAPACITY
                || keys
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > RECENT_AGE)
            {
                if let Some((at, _)) = keys.pop_front()
                    && let Ok(mut forgot) = self.forgot_through.lock()
                {
                    *forgot = Some(at);
                }
            }
            keys.push_back((now, key));
        }
    }

    /// Whether every key synced since `since` is still remembered.
    fn covers(&self, since: Instant) -> bool {
        self.forgot_through
            .lock()
            .is_ok_and(|forgot| forgot.is_none_or(|at| at < since))
    }

    fn since(&self, since: Instant) -> Vec<Key> {
        let Ok(keys) = self.keys.lock() else {
            return Vec::new();
        };
        // In time order (stamped under this lock), so the keys since
        // `since` are a suffix: the cutover asks every few milliseconds
        // during the pause, and scanning a minute of keys each time took
        // CPU from the drain and this lock from the sync's pushes.
        let start = keys.partition_point(|(at, _)| *at < since);
        let mut seen = std::collections::HashSet::new();
        keys.range(start..)
            .filter(|(_, key)| seen.insert(key.identity()))
            .map(|(_, key)| key.clone())
            .collect()
    }
}

/// Fleet mode: the shared store, and this instance's name and claim lease
/// in it.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The store.
    pub store: crate::store::Handle,
    /// The owner name this instance's claims carry (its claimer's).
    pub owner: String,
    /// The claim lease (the claimer renews every claim of `owner`).
    pub lease: Duration,
}

struct Worker {
    recent: Arc<Recent>,
    applied: Arc<RateMeter>,
    apply: Arc<dyn Apply>,
    dead_letters: Arc<DeadLetters>,
    /// Fleet mode: dead letters go to the shared store, and an exported
    /// copy is written only under its lane's claim there.
    shared: Option<Shared>,
    metrics: SyncMetrics,
    config: Config,
    limits: Limits,
    breaker: breaker::Breaker,
    stop: CancellationToken,
}

/// Starts the sync: a dispatcher task owning the lanes, and jobs spawned on
/// `tracker` (as many running at once as the secondary's limiter in
/// `limits` allows), writing to the secondary through `apply`.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    config: Config,
    limits: Limits,
    apply: Arc<dyn Apply>,
    journal: impl Into<AckSink>,
    dead_letters: Arc<DeadLetters>,
    shared: Option<Shared>,
    metrics: SyncMetrics,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> SyncHandle {
    let (commands, mut receiver) = mpsc::unbounded_channel::<Command>();
    let busy_lanes = Arc::new(AtomicUsize::new(0));
    let (idle_tx, idle) = watch::channel(true);
    let busy_keys = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let recent = Arc::new(Recent::default());
    let applied = Arc::new(RateMeter::default());
    let handle = SyncHandle {
        commands: commands.clone(),
        journal: journal.into(),
        stop: stop.clone(),
        busy_lanes: Arc::clone(&busy_lanes),
        busy_keys: Arc::clone(&busy_keys),
        recent: Arc::clone(&recent),
        idle,
        limits: limits.clone(),
        apply: Arc::clone(&apply),
        applied: Arc::clone(&applied),
    };
    let outage = metrics.outage.clone();
    let worker = Arc::new(Worker {
        recent,
        applied,
        apply,
        dead_letters,
        shared,
        metrics,
        limits: limits.clone(),
        breaker: breaker::Breaker::new(config.retry_initial, config.retry_max, backoff, outage),
        config,
        stop: stop.clone(),
    });
    let job_tracker = tracker.clone();
    let dispatcher = async move {
        let mut lanes = dispatcher::Dispatcher::default();
        loop {
            let command = tokio::select! {
                () = stop.cancelled() => break,
                command = receiver.recv() => match command {
                    Some(command) => command,
                    None => break,
                },
            };
            let effects = match command {
                Command::Submit(work) => lanes.submit(work),
                Command::Done { lane, follow_ups } => lanes.done(lane, follow_ups),
                Command::WatchBegin => {
                    lanes.watch_begin();
                    dispatcher::Effects::default()
                }
                Command::WatchEnd => {
                    lanes.watch_end();
                    dispatcher::Effects::default()
                }
                Command::Backfill(item) => lanes.backfill(item),
            };
            let dispatcher::Effects {
                start,
                skipped,
                busy,
            } = effects;
            for reply in skipped {
                let _ = reply.send(BackfillOutcome::Skipped);
            }
            for (lane, job) in start {
                let worker = Arc::clone(&worker);
                let commands = commands.clone();
                job_tracker.spawn(
                    async move {
                        let follow_ups = worker.run(job).await;
                        let _ = commands.send(Command::Done { lane, follow_ups });
                    }
                    .instrument(tracing::debug_span!("sync")),
                );
            }
            busy_lanes.store(lanes.lanes(), Ordering::Release);
            if !busy.is_empty()
                && let Ok(mut keys) = busy_keys.lock()
            {
                for (lane, busy) in busy {
                    if busy {
                        keys.insert(lane);
                    } else {
                        keys.remove(&lane);
                    }
                }
            }
            idle_tx.send_if_modified(|idle| {
                let now_idle = lanes.is_idle();
                std::mem::replace(idle, now_idle) != now_idle
            });
        }
        // Stopping: unfinished work must come back from the journal after a
        // restart, so late drops must not acknowledge it (the token may not
        // be cancelled yet if the dispatcher ended for another reason).
        stop.cancel();
        drop(lanes);
    };
    tracker.spawn(dispatcher.instrument(tracing::info_span!("sync")));
    handle
}

/// Why [`Worker::retrying`] stopped trying.
enum GaveUp {
    /// The sync is stopping; the work stays in the journal.
    Stopped,
    /// Refused for good: dead-letter it.
    Refused(ApiError),
}

/// The delay before retry number `attempt` (0-based): doubling from
/// `initial`, capped at `max`, then jittered to between half and all of
/// it, so that instances retrying the same outage do not stampede
/// together.
fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let base = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(max);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

impl Worker {
    /// Runs one job to completion: success, dead letter, or stop. Returns
    /// the follow-ups.
    async fn run(&self, job: Job) -> Vec<Work> {
        let (change, acks) = match job {
            Job::Sync { key, acks } => (Change::sync(key), acks),
            Job::Payload(work) => (work.change, work.acks),
            Job::Backfill(item) => {
                let outcome = self.backfill(&item.key, &item.record).await;
                let _ = item.reply.send(outcome);
                return Vec::new();
            }
        };
        let dataset = change.dataset();
        let applied = self
            .retrying(dataset, &|| change.redacted(), || async {
                let limiter = self.limits.secondary(self.apply.secondary());
                let Some(_permit) = limiter.acquire(&self.stop).await else {
                    return Err(ApiError::Transient("the sync is stopping".to_owned()));
                };
                self.apply.apply(&change).await
            })
            .await;
        match applied {
            Ok(follow_ups) => {
                if !self.mark_follow_ups(&follow_ups).await {
                    return Vec::new();
                }
                self.applied.tick();
                if let Change::Sync { key, .. } = &change {
                    self.recent.push(key.clone());
                }
                follow_ups
                    .into_iter()
                    .map(|change| Work {
                        change,
                        acks: acks.clone(),
                    })
                    .collect()
            }
            Err(GaveUp::Stopped) => Vec::new(),
            Err(GaveUp::Refused(err)) => {
                self.dead_letter(&change, dataset, &err.to_string()).await;
                Vec::new()
            }
        }
    }

    /// Writes one exported record, retrying transient failures. In a
    /// fleet, only under its lane's claim in the shared store, and only if
    /// live traffic through any instance has not touched the key since the
    /// pass began (`store::BackfillStore`): this instance's lanes see only
    /// its own share of the live work.
    async fn backfill(&self, key: &Key, record: &Value) -> BackfillOutcome {
        let Some(shared) = &self.shared else {
            return self.write_exported(key, record).await;
        };
        let Some(backfill) = shared.store.backfill_store() else {
            return self.write_exported(key, record).await;
        };
        let change = Change::sync(key.clone());
        let lane = dispatcher::store_lane(&change);
        let body = change.to_record();
        let mut delay = Duration::from_millis(100);
        let seq = loop {
            match backfill
                .claim_for_backfill(&shared.owner, lane.as_bytes(), &body, shared.lease)
                .await
            {
                Ok(Some(seq)) => break seq,
                Ok(None) => return BackfillOutcome::Skipped,
                Err(err) => {
                    tracing::warn!(key = %key.redacted(), error = %err, "cannot take a key for the backfill; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return BackfillOutcome::Stopped,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let outcome = self.write_exported(key, record).await;
        if outcome == BackfillOutcome::Stopped {
            // The record stays claimed until this instance gives its claims
            // back at shutdown (or its lease expires): then a sync of the
            // key overwrites whatever copy landed.
            return outcome;
        }
        // Until this, the lane is held: a live change waiting behind it is
        // synced once it is gone; a resolved key synced meanwhile elsewhere
        // (marked touched before its read) gets one more sync. A failure is
        // retried; giving up would hold the lane for as long as the claims
        // are renewed.
        let mut delay = Duration::from_millis(50);
        while let Err(err) = backfill.finish_backfill_write(seq, lane.as_bytes()).await {
            tracing::warn!(error = %err, "cannot release a key the backfill wrote; retrying");
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        outcome
    }

    /// In a fleet, marks the keys of `follow_ups` as touched by live
    /// traffic for a backfill pass that may be running on another
    /// instance: they are synced here without their lanes' claims, so the
    /// runner must learn of them before they are read (see
    /// `store::BackfillStore`). False when the sync stopped first (the
    /// change stays in the journal).
    async fn mark_follow_ups(&self, follow_ups: &[Change]) -> bool {
        let Some(backfill) = self.shared.as_ref().and_then(|s| s.store.backfill_store()) else {
            return true;
        };
        let lanes: Vec<String> = follow_ups
            .iter()
            .filter(|change| !matches!(change, Change::Resolve { .. }))
            .map(dispatcher::store_lane)
            .collect();
        if lanes.is_empty() {
            return true;
        }
        let lanes: Vec<&[u8]> = lanes.iter().map(String::as_bytes).collect();
        let mut delay = Duration::from_millis(50);
        loop {
            match backfill.mark_touched(&lanes).await {
                Ok(()) => return true,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot mark resolved keys for the backfill; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Writes one exported record to the secondary, retrying transient
    /// failures; a refusal dead-letters the key.
    async fn write_exported(&self, key: &Key, record: &Value) -> BackfillOutcome {
        let dataset = key.dataset();
        let written = self
            .retrying(dataset, &|| key.redacted(), || async {
                self.apply.write_exported(key, record).await
            })
            .await;
        match written {
            Ok(()) => BackfillOutcome::Copied,
            Err(GaveUp::Stopped) => BackfillOutcome::Stopped,
            Err(GaveUp::Refused(err)) => {
                // Dead-letter the key (not the exported copy): a retry
                // re-reads the current state from the primary.
                self.dead_letter(&Change::sync(key.clone()), dataset, &err.to_string())
                    .await;
                BackfillOutcome::Failed
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the sync stops.
    /// A transient failure is retried after the lane's own backoff; during
    /// an outage ([`breaker`]) the lane waits for the breaker instead, so
    /// one probe retries for all. `what` names the work in log lines
    /// (redacted), only computed when something is logged.
    async fn retrying<T, Fut>(
        &self,
        dataset: Dataset,
        what: &(dyn Fn() -> String + Sync),
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, GaveUp>
    where
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut failures: u32 = 0;
        loop {
            let admission = self
                .breaker
                .admit(&self.stop)
                .await
                .ok_or(GaveUp::Stopped)?;
            let started = Instant::now();
            match attempt().await {
                Ok(value) => {
                    self.breaker.record(admission, breaker::Outcome::Answered);
                    self.metrics.record_applied(dataset, started.elapsed());
                    if failures > 0 {
                        tracing::info!(change = %what(), attempts = failures + 1, "synced after retries");
                    }
                    return Ok(value);
                }
                Err(err) if err.is_transient() => {
                    self.metrics.record_failure(dataset);
                    // A server that answers "not yet" is up: no outage.
                    let outcome = if matches!(err, ApiError::Awaiting(_)) {
                        breaker::Outcome::Answered
                    } else {
                        breaker::Outcome::Transient
                    };
                    let outage = self.breaker.record(admission, outcome);
                    if outage {
                        self.limits.secondary(self.apply.secondary()).restart();
                    }
                    let delay = backoff(failures, self.config.retry_initial, self.config.retry_max);
                    if failures == 0 || failures % 10 == 9 {
                        tracing::warn!(change = %what(), error = %err, attempt = failures + 1, retry_in = ?delay, outage, "sync failed; retrying");
                    }
                    failures = failures.saturating_add(1);
                    if !outage {
                        tokio::select! {
                            () = self.stop.cancelled() => return Err(GaveUp::Stopped),
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                Err(err) => {
                    // Refused for good, but the servers answered.
                    self.breaker.record(admission, breaker::Outcome::Answered);
                    return Err(GaveUp::Refused(err));
                }
            }
        }
    }

    async fn dead_letter(&self, change: &Change, dataset: Dataset, reason: &str) {
        // The reason is an error that may quote a server; the dead-letter
        // log is read by the admin API and the CLI as it is.
        let reason = &crate::telemetry::redact::text(reason);
        self.metrics.record_dead_letter(dataset);
        tracing::error!(change = %change.redacted(), reason, "sync gave up; moved to dead letters");
        let body = change.to_record();
        if let Some(store) = self.shared.as_ref().map(|shared| &shared.store) {
            let lane = dispatcher::store_lane(change);
            match store.dead_letter(lane.as_bytes(), reason, &body).await {
                Ok(_) => {
                    if let Ok(letters) = store.dead_letters().await {
                        let count = i64::try_from(letters.len()).unwrap_or(i64::MAX);
                        self.metrics.dead_letters.set(count);
                    }
                }
                Err(err) => tracing::error!(error = %err, "cannot write the shared dead letters"),
            }
            return;
        }
        let letters = Arc::clone(&self.dead_letters);
        let reason = reason.to_owned();
        let pushed = tokio::task::spawn_blocking(move || letters.push(&reason, &body)).await;
        match pushed {
            Ok(Ok(_)) => {
                let count = i64::try_from(self.dead_letters.len()).unwrap_or(i64::MAX);
                self.metrics.dead_letters.set(count);
            }
            Ok(Err(err)) => tracing::error!(error = %err, "cannot write the dead-letter log"),
            Err(err) => tracing::error!(error = %err, "dead-letter task failed"),
        }
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    fn client(id: &str) -> Key {
        Key::Client {
            client_id: id.to_owned(),
        }
    }

    #[test]
    fn keys_since_an_instant_are_the_later_ones_each_once() {
        let recent = Recent::default();
        let before = Instant::now();
        recent.push(client("a"));
        std::thread::sleep(Duration::from_millis(2));
        let middle = Instant::now();
        recent.push(client("b"));
        recent.push(client("a"));
        recent.push(client("b"));
        assert_eq!(recent.since(before), vec![client("a"), client("b")]);
        assert_eq!(recent.since(middle), vec![client("b"), client("a")]);
        assert_eq!(recent.since(Instant::now()), Vec::<Key>::new());
    }

    #[test]
    fn it_says_whether_it_still_remembers_every_key_since_an_instant() {
        let recent = Recent::default();
        let start = Instant::now();
        recent.push(client("first"));
        assert!(recent.covers(start));
        std::thread::sleep(Duration::from_millis(2));
        let later = Instant::now();
        // Full: the oldest go, and with them the memory of `start` onward.
        for i in 0..RECENT_CAPACITY {
            recent.push(client(&i.to_string()));
        }
        assert!(!recent.covers(start));
        assert!(recent.covers(Instant::now()));
        // The one let go was synced before `later`: nothing after is lost.
        assert!(recent.covers(later));
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn the_new_secondary_takes_over_a_higher_limit_at_a_flip() {
        let limits = Limits::new(&Config::default());
        let initial = limits.of(Side::Source).snapshot().limit;
        // Mirroring: the jobs write to the target, whose limit grew.
        assert!(Arc::ptr_eq(
            limits.secondary(Side::Target),
            limits.of(Side::Target)
        ));
        limits.of(Side::Target).raise_to(initial * 8);
        assert_eq!(limits.of(Side::Source).snapshot().limit, initial);
        // Cut over: the source is the secondary now, at the target's limit.
        limits.secondary(Side::Source);
        assert_eq!(limits.of(Side::Source).snapshot().limit, initial * 8);
        // Rolling back to a target whose own limit is the higher one: it
        // keeps it.
        limits.of(Side::Target).raise_to(initial * 10);
        limits.secondary(Side::Target);
        assert_eq!(limits.of(Side::Target).snapshot().limit, initial * 10);
        // Asking again without a flip changes nothing.
        limits.secondary(Side::Target);
        assert_eq!(limits.of(Side::Source).snapshot().limit, initial * 8);
    }

    #[test]
    fn a_limit_taken_over_stays_within_the_bounds() {
        let limits = Limits::new(&Config::default());
        let max = limits.of(Side::Source).bounds().max;
        limits.secondary(Side::Target);
        limits.of(Side::Target).raise_to(max * 4);
        assert_eq!(limits.of(Side::Target).snapshot().limit, max);
        limits.secondary(Side::Source);
        assert_eq!(limits.of(Side::Source).snapshot().limit, max);
    }
}
