//! The backfill: copies everything that existed on the primary before
//! handover was deployed (DESIGN.md §5).
//!
//! For each enabled dataset, in order (clients before the authorizations
//! that name them), the primary's export (`GET /clients`,
//! `GET /authz-store/rest/v3/authorizations`, `GET
//! /session-store/rest/v2/sessions`) is streamed and split incrementally
//! ([`crate::json_stream`]): memory stays flat whatever the size. Each record
//! is written to the secondary with the import semantics, through the sync
//! lane of its key.
//!
//! # Live writes win
//!
//! Before an export starts, the sync starts recording which keys live
//! traffic touches. An exported record whose key was touched since (or has
//! live work queued) is not written: its exported copy may be older than
//! the primary's state, and the sync path, which reads the current state,
//! owns it. Because a record is written inside its key's lane, a live change
//! that arrives while the exported copy is being written is synced right
//! after it: the newest read always lands last (the DBLog rule). Deletes
//! are covered too: a key deleted during the export is synced as a delete
//! and its exported copy is skipped, so nothing is resurrected.
//!
//! # Progress, checkpoints and resume
//!
//! Records complete out of order (bounded concurrency); the checkpoint is
//! the number of leading records of the export that are settled (copied,
//! skipped because live traffic owns them, or dead-lettered), how many of
//! them settled each way, plus a hash of the last one's key. It is written atomically to
//! `<journal dir>/backfill/<dataset>.json` about once a second and when the
//! dataset ends. **What resume guarantees:** after a restart (or a failed
//! export), the dataset's export is streamed again and the first
//! `checkpoint` records are skipped without being written, provided the
//! record at the checkpoint has the same key as before (the source's export
//! order is stable); otherwise the dataset is copied again from the start,
//! which is safe because every write is an idempotent import. Records that
//! were in flight at a crash are written again. A finished dataset is not
//! copied again by `start`; `start` after `done` begins a new pass.
//!
//! Rate (records per second) and concurrency are adjustable while running;
//! pause stops reading the export (the connection stays open; if the source
//! drops it, the dataset resumes from its checkpoint).
//!
//! # A fleet (`[store] kind = "postgres"`)
//!
//! Checkpoints and progress live in the shared store instead of files
//! (the `Ledger` seam; `store::BackfillStore` has the rules), and the
//! checkpoint names its last key by a keyed hash of the journal key, not a
//! plain SHA-256:
//!
//! - **One runner.** `start` on any instance runs the backfill there only
//!   if no other instance holds the runner lease; otherwise it is refused,
//!   naming the runner and its admin API. The runner renews the lease
//!   while it runs and lets go when the pass is done, fails or stops; one
//!   whose lease another instance took after it expired stops copying
//!   (its checkpoints are refused from then on). When the runner
//!   dies, its lease expires and `start` on another instance resumes from
//!   the shared checkpoint; instances with `auto_start` take over by
//!   themselves (a pass left `running` or `paused` without a live runner).
//!   `start` after `done` begins a new pass and clears the shared
//!   checkpoints.
//! - **Status from any instance.** The non-runners show the fleet's
//!   backfill from the store: the runner, and each dataset's progress as
//!   of its last checkpoint (written about once a second, read when
//!   `/status` is asked, so at most about a second behind the runner's own
//!   view). Pause, resume and settings act on the runner's process: asked
//!   of another instance, they are refused with the runner's admin URL.
//! - **Live writes win, fleet-wide.** Live traffic through another
//!   instance is synced by whichever instance claims it, unseen by this
//!   instance's lanes: each exported copy is written only under its key's
//!   claim in the store, and only if no live change of the key was
//!   journaled since the pass began; keys a change reaches through a
//!   lookup are marked before they are read, and a copy whose key was
//!   marked while it was written gets one more sync (`sync`,
//!   `store::BackfillStore`).

mod tokens;

pub use tokens::{TOKEN_BATCH, TOKEN_BATCHES_IN_FLIGHT, TokenLine, import_tokens};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{BackfillState as State, BackfillStatus, DatasetProgress};
use crate::model::{Change, Dataset, Key, Tenant};
use crate::servers::Servers;
use crate::servers::export::Export;
use crate::store::{BackfillStore, BackfillUpdate, SharedBackfill, StoredCheckpoint};
use crate::sync::{BackfillOutcome, Recorder, SyncHandle};

/// Writes in flight at once by default: enough to keep a remote target
/// busy, well below the sync workers' share of its capacity.
pub(crate) const DEFAULT_CONCURRENCY: usize = 32;
/// How often the checkpoint is written while a dataset runs.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts at one dataset's export before the backfill is marked failed.
pub(crate) const EXPORT_ATTEMPTS: u32 = 3;
/// How often an instance of a fleet reads the fleet's backfill: its view
/// for `/status` between asks, and how soon an `auto_start` instance sees
/// that the runner died.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for the store when `/status` reads the fleet's backfill:
/// past it, the latest view is shown.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Backfill settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Start copying as soon as the proxy starts (else on command).
    pub auto_start: bool,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Records per second; 0 = unlimited.
    pub rate: u64,
    /// Count each export first (one extra streaming read of the source) so
    /// progress has a total and an ETA.
    pub count_first: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auto_start: false,
            concurrency: DEFAULT_CONCURRENCY,
            rate: 0,
            count_first: true,
        }
    }
}

/// A backfill control error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operation does not apply in the current state.
    #[error("backfill is {state}: cannot {operation}")]
    State {
        /// The current state.
        state: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A fleet: another instance runs the backfill (its lease is live).
    #[error(
        "backfill runs on instance {instance} (admin API {admin_url}): {operation} it there, or wait until it ends"
    )]
    Elsewhere {
        /// The runner.
        instance: String,
        /// Its admin API.
        admin_url: String,
        /// What was asked.
        operation: &'static str,
    },
    /// A fleet: the shared store could not be read or written (the
    /// database's fault, or the network's).
    #[error("backfill: {0}")]
    Store(#[from] crate::store::Error),
}

/// An operator's request to the backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Start or resume.
    Start,
    /// Pause.
    Pause,
    /// Resume after a pause.
    Resume,
    /// Only change the settings.
    Settings,
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Settings => "change the settings of",
        }
    }
}

/// The persisted checkpoint of one dataset.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Checkpoint {
    /// The dataset finished.
    done: bool,
    /// Leading export records settled.
    settled: u64,
    /// SHA-256 (hex) of the identity of the last settled record's key:
    /// checks the export order on resume without storing the key (a
    /// session id is a secret).
    last_key_hash: Option<String>,
    /// Of the settled records: written, skipped (live traffic owned them),
    /// failed.
    copied: u64,
    skipped: u64,
    failed: u64,
    /// Of the settled records: not copied, by reason (an authorization
    /// whose export carries no refresh-token value, for an Authlete
    /// target).
    #[serde(default)]
    not_copied: BTreeMap<String, u64>,
    /// Records in the export when counted.
    total: Option<u64>,
}

/// Where checkpoints live: the one seam between a single instance and a
/// fleet.
#[derive(Debug)]
enum Ledger {
    /// `<journal dir>/backfill/<dataset>.json` (a local store).
    Files(PathBuf),
    /// The shared store (a fleet).
    Fleet(Fleet),
}

/// The fleet side of the ledger.
#[derive(Debug)]
struct Fleet {
    store: BackfillStore,
    /// This instance's name: the runner's, while it runs the backfill.
    instance: String,
    /// Its admin API, for the status of the backfill it runs.
    admin_url: String,
    /// The runner lease.
    lease: Duration,
    /// The fleet's backfill at the latest read.
    view: Mutex<Option<SharedBackfill>>,
}

impl Fleet {
    /// Reads the fleet's backfill and keeps it as the view.
    async fn refresh(&self) -> Result<SharedBackfill, crate::store::Error> {
        let shared = self.store.read().await?;
        if let Ok(mut view) = self.view.lock() {
            *view = Some(shared.clone());
        }
        Ok(shared)
    }

    fn view(&self) -> Option<SharedBackfill> {
        self.view.lock().ok().and_then(|view| view.clone())
    }

    /// The runner, if another instance holds a live lease.
    fn runner_elsewhere(&self, shared: &SharedBackfill) -> Option<crate::store::BackfillRunner> {
        shared
            .runner
            .clone()
            .filter(|runner| runner.live && runner.instance != self.instance)
    }
}

/// The fleet's state as `/status` shows it: a pass left running or paused
/// without a live runner is stopped (`start` resumes it).
fn fleet_state(shared: &SharedBackfill) -> State {
    let runs = shared.runner.as_ref().is_some_and(|runner| runner.live);
    match shared.state.as_str() {
        "running" if runs => State::Running,
        "paused" if runs => State::Paused,
        "done" => State::Done,
        "failed" => State::Failed,
        _ => State::Idle,
    }
}

/// A stored checkpoint's JSON back; an unreadable one starts the dataset
/// over (imports are idempotent).
fn parse_checkpoint(stored: &StoredCheckpoint) -> Option<Checkpoint> {
    match serde_json::from_str(&stored.checkpoint) {
        Ok(checkpoint) => Some(checkpoint),
        Err(err) => {
            tracing::warn!(dataset = %stored.dataset, error = %err, "unreadable shared backfill checkpoint; starting the dataset over");
            None
        }
    }
}

impl Ledger {
    async fn read(&self, dataset: Dataset) -> Option<Checkpoint> {
        match self {
            Ledger::Files(dir) => read_checkpoint(dir, dataset),
            Ledger::Fleet(fleet) => match fleet.refresh().await {
                Ok(shared) => shared
                    .checkpoints
                    .iter()
                    .find(|stored| stored.dataset == dataset.as_str())
                    .and_then(parse_checkpoint),
                Err(err) => {
                    // Copying again from the start is safe, only slower.
                    tracing::warn!(dataset = dataset.as_str(), error = %err, "cannot read the shared backfill checkpoint; copying the dataset from the start");
                    None
                }
            },
        }
    }

    async fn write(&self, dataset: Dataset, checkpoint: &Checkpoint, progress: &Progress) {
        let written = match self {
            Ledger::Files(dir) => {
                write_checkpoint(dir, dataset, checkpoint).map_err(|err| err.to_string())
            }
            Ledger::Fleet(fleet) => {
                let stored = StoredCheckpoint {
                    dataset: dataset.as_str().to_owned(),
                    checkpoint: serde_json::to_string(checkpoint).expect("a checkpoint serializes"),
                    rate: progress.rate.lock().map_or(0.0, |rate| *rate),
                    error: progress.error.lock().ok().and_then(|error| error.clone()),
                };
                match fleet.store.save_checkpoint(&fleet.instance, &stored).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("another instance runs the backfill now".to_owned()),
                    Err(err) => Err(err.to_string()),
                }
            }
        };
        if let Err(err) = written {
            tracing::warn!(dataset = dataset.as_str(), error = %err, "cannot write the backfill checkpoint");
        }
    }

    /// Forgets a dataset's checkpoint: it is copied again from the start.
    async fn forget(&self, dataset: Dataset) {
        match self {
            Ledger::Files(dir) => {
                let _ = std::fs::remove_file(checkpoint_path(dir, dataset));
            }
            Ledger::Fleet(fleet) => {
                if let Err(err) = fleet
                    .store
                    .forget_checkpoint(&fleet.instance, dataset.as_str())
                    .await
                {
                    tracing::warn!(dataset = dataset.as_str(), error = %err, "cannot clear the shared backfill checkpoint");
                }
            }
        }
    }

    /// How a checkpoint names a key: never the key itself (a session id is
    /// a secret); in the shared database, a hash keyed by the journal key.
    fn key_hash(&self, key: &Key) -> String {
        match self {
            Ledger::Files(_) => hash_key(key),
            Ledger::Fleet(fleet) => fleet.store.key_hash(key.identity().as_bytes()),
        }
    }
}

#[derive(Debug, Default)]
struct Progress {
    total: Option<u64>,
    copied: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    not_copied: Mutex<BTreeMap<String, u64>>,
    /// Settled records per second, smoothed.
    rate: Mutex<f64>,
    error: Mutex<Option<String>>,
}

impl Progress {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Copied => &self.copied,
            Outcome::Skipped => &self.skipped,
            Outcome::Failed => &self.failed,
            Outcome::NotCopied(reason) => {
                if let Ok(mut counts) = self.not_copied.lock() {
                    *counts.entry(reason.to_owned()).or_default() += 1;
                }
                return;
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn not_copied(&self) -> BTreeMap<String, u64> {
        self.not_copied
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    fn settled(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.not_copied().values().sum::<u64>()
    }
}

/// The backfill controller (cheap clone).
#[derive(Debug, Clone)]
pub struct Backfill {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Mutex<Config>,
    /// The datasets, in copy order.
    datasets: Vec<Dataset>,
    /// Where the checkpoints live.
    ledger: Ledger,
    /// Serializes start, pause and resume (a start awaits the store).
    control: tokio::sync::Mutex<()>,
    servers: Arc<Servers>,
    sync: SyncHandle,
    state: watch::Sender<State>,
    progress: Mutex<BTreeMap<Dataset, Arc<Progress>>>,
    rate: AtomicU64,
    permits: Arc<Semaphore>,
    concurrency: AtomicUsize,
    stop: CancellationToken,
    runner: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When the current pass started, and how long it took once finished.
    timing: Mutex<(Option<Instant>, Option<Duration>)>,
    /// Tenants besides the default one (`sync.tenants`), and where their
    /// keys are journaled.
    tenants: Vec<Tenant>,
    recorder: Option<Recorder>,
}

impl Backfill {
    /// A controller (nothing runs until [`Backfill::start`]). Progress of
    /// earlier runs is read from the checkpoints.
    /// `datasets` are copied in order; checkpoints live in `dir`
    /// (`<journal dir>/backfill`).
    pub fn new(
        config: Config,
        datasets: Vec<Dataset>,
        dir: PathBuf,
        servers: Arc<Servers>,
        sync: SyncHandle,
        stop: CancellationToken,
    ) -> Self {
        let mut progress = BTreeMap::new();
        let mut all_done = !datasets.is_empty();
        let mut any = false;
        for &dataset in &datasets {
            let checkpoint = read_checkpoint(&dir, dataset);
            any |= checkpoint.is_some();
            let checkpoint = checkpoint.unwrap_or_default();
            all_done &= checkpoint.done;
            progress.insert(dataset, Arc::new(progress_from(&checkpoint)));
        }
        let initial = if any && all_done {
            State::Done
        } else {
            State::Idle
        };
        let concurrency = config.concurrency.max(1);
        Self {
            inner: Arc::new(Inner {
                rate: AtomicU64::new(config.rate),
                permits: Arc::new(Semaphore::new(concurrency)),
                concurrency: AtomicUsize::new(concurrency),
                config: Mutex::new(config),
                datasets,
                ledger: Ledger::Files(dir),
                control: tokio::sync::Mutex::new(()),
                servers,
                sync,
                state: watch::channel(initial).0,
                progress: Mutex::new(progress),
                stop,
                runner: Mutex::new(None),
                timing: Mutex::new((None, None)),
                tenants: Vec::new(),
                recorder: None,
            }),
        }
    }

    /// Also backfills `tenants` (after the default issuer), journaling
    /// their keys with `recorder`. Call before sharing the controller.
    pub fn with_tenants(mut self, tenants: Vec<Tenant>, recorder: Recorder) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.tenants = tenants;
            inner.recorder = Some(recorder);
        }
        self
    }

    /// Keeps checkpoints and progress in the fleet's shared store instead
    /// of files (see the module doc), as `instance` (whose admin API is
    /// at `admin_url`), holding the runner lease for `lease` while it
    /// runs. Call before sharing the controller.
    pub fn in_fleet(
        mut self,
        store: BackfillStore,
        instance: String,
        admin_url: String,
        lease: Duration,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.ledger = Ledger::Fleet(Fleet {
                store,
                instance,
                admin_url,
                lease,
                view: Mutex::new(None),
            });
            // The fleet's progress is read from the store, not from files
            // a local run may have left.
            if let Ok(mut progress) = inner.progress.lock() {
                for &dataset in &inner.datasets {
                    progress.insert(dataset, Arc::new(Progress::default()));
                }
            }
            inner.state.send_replace(State::Idle);
        }
        self
    }

    /// The current state: this instance's backfill, or in a fleet, while
    /// this instance does not run it, the fleet's at the latest read.
    pub fn state(&self) -> State {
        let local = self.local_state();
        if matches!(local, State::Running | State::Paused) {
            return local;
        }
        match &self.inner.ledger {
            Ledger::Fleet(fleet) => fleet.view().map_or(local, |shared| fleet_state(&shared)),
            Ledger::Files(_) => local,
        }
    }

    /// This instance's own backfill.
    fn local_state(&self) -> State {
        *self.inner.state.borrow()
    }

    /// Reads the fleet's backfill now (a fleet; nothing to do otherwise),
    /// for a status that is at most a checkpoint interval behind.
    pub async fn refresh(&self) {
        if let Ledger::Fleet(fleet) = &self.inner.ledger {
            match tokio::time::timeout(READ_TIMEOUT, fleet.refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "cannot read the fleet's backfill; showing the latest view")
                }
                Err(_) => tracing::debug!(
                    "the store did not answer in time; showing the latest view of the backfill"
                ),
            }
        }
    }

    /// Starts (or resumes after a failure or restart) the backfill. `start`
    /// while running is a no-op; `start` after `done` begins a new pass.
    /// In a fleet, refused while another instance runs it.
    pub async fn start(&self) -> Result<State, Error> {
        self.control(Operation::Start, None, None).await
    }

    /// Pauses reading the exports.
    pub async fn pause(&self) -> Result<State, Error> {
        self.control(Operation::Pause, None, None).await
    }

    /// Resumes after a pause.
    pub async fn resume(&self) -> Result<State, Error> {
        self.control(Operation::Resume, None, None).await
    }

    /// What `auto_start` does at start-up: start unless the backfill is
    /// done (in a fleet: done by any instance, or running elsewhere).
    pub async fn start_automatically(&self) {
        self.refresh().await;
        if self.state() == State::Done {
            return;
        }
        match self.start().await {
            Ok(_) => {}
            Err(Error::Elsewhere { instance, .. }) => {
                tracing::info!(runner = %instance, "the backfill runs on another instance");
            }
            Err(err) => tracing::warn!(error = %err, "cannot start the backfill"),
        }
    }

    /// An operator's request: adjusts the settings given, then does
    /// `operation`. In a fleet, the settings, pause and resume act on the
    /// runner's process: asked of another instance while the runner's
    /// lease is live, refused with its admin URL.
    pub async fn control(
        &self,
        operation: Operation,
        rate: Option<u64>,
        concurrency: Option<usize>,
    ) -> Result<State, Error> {
        let _turn = self.inner.control.lock().await;
        if let Ledger::Fleet(fleet) = &self.inner.ledger
            && !matches!(self.local_state(), State::Running | State::Paused)
            && let Some(runner) = fleet.runner_elsewhere(&fleet.refresh().await?)
        {
            return Err(Error::Elsewhere {
                instance: runner.instance,
                admin_url: runner
                    .admin_url
                    .unwrap_or_else(|| "unknown: the runner is not a member".to_owned()),
                operation: operation.verb(),
            });
        }
        if let Some(concurrency) = concurrency {
            self.set_concurrency(concurrency)?;
        }
        if let Some(rate) = rate {
            self.set_rate(rate);
        }
        match operation {
            Operation::Start => self.start_locked().await,
            Operation::Pause => self.run_or_pause(State::Paused, "pause").await,
            Operation::Resume => self.run_or_pause(State::Running, "resume").await,
            Operation::Settings => {
                self.inner.publish(false).await;
                Ok(self.state())
            }
        }
    }

    async fn start_locked(&self) -> Result<State, Error> {
        let new_pass = match self.local_state() {
            State::Running => return Ok(State::Running),
            State::Paused => return self.run_or_pause(State::Running, "resume").await,
            local => match &self.inner.ledger {
                Ledger::Files(dir) => {
                    let done = local == State::Done;
                    if done {
                        // A new pass: forget the finished checkpoints.
                        for &dataset in &self.inner.datasets {
                            let _ = std::fs::remove_file(checkpoint_path(dir, dataset));
                        }
                    }
                    done
                }
                Ledger::Fleet(fleet) => {
                    if let Some(runner) = fleet
                        .store
                        .take_runner(&fleet.instance, fleet.lease)
                        .await?
                    {
                        return Err(Error::Elsewhere {
                            instance: runner.instance,
                            admin_url: runner.admin_url.unwrap_or_else(|| {
                                "unknown: the runner is not a member".to_owned()
                            }),
                            operation: "start",
                        });
                    }
                    let (rate, concurrency) = (
                        self.inner.rate.load(Ordering::Relaxed),
                        self.inner.concurrency.load(Ordering::Relaxed) as u64,
                    );
                    let Some(new_pass) = fleet
                        .store
                        .begin_pass(&fleet.instance, rate, concurrency)
                        .await?
                    else {
                        return Err(Error::State {
                            state: "taken over by another instance",
                            operation: "start",
                        });
                    };
                    // Resuming: the progress so far is the shared one.
                    let shared = fleet.refresh().await?;
                    if let Ok(mut progress) = self.inner.progress.lock() {
                        for &dataset in &self.inner.datasets {
                            let checkpoint = shared
                                .checkpoints
                                .iter()
                                .find(|stored| stored.dataset == dataset.as_str())
                                .and_then(parse_checkpoint)
                                .filter(|_| !new_pass)
                                .unwrap_or_default();
                            progress.insert(dataset, Arc::new(progress_from(&checkpoint)));
                        }
                    }
                    tracing::info!(instance = %fleet.instance, new_pass, "running the fleet's backfill");
                    new_pass
                }
            },
        };
        if new_pass && let Ok(mut progress) = self.inner.progress.lock() {
            for &dataset in &self.inner.datasets {
                progress.insert(dataset, Arc::new(Progress::default()));
            }
        }
        self.inner.state.send_replace(State::Running);
        if let Ok(mut timing) = self.inner.timing.lock() {
            *timing = (Some(Instant::now()), None);
        }
        let inner = Arc::clone(&self.inner);
        let stop = self.inner.stop.child_token();
        let task = tokio::spawn(async move { inner.run(stop).await });
        if let Ok(mut runner) = self.inner.runner.lock() {
            *runner = Some(task);
        }
        Ok(State::Running)
    }

    /// Moves a running or paused backfill to `to` (running or paused);
    /// refuses `operation` in any other state.
    async fn run_or_pause(&self, to: State, operation: &'static str) -> Result<State, Error> {
        match self.local_state() {
            State::Running | State::Paused => {
                self.inner.state.send_replace(to);
                self.inner.publish(false).await;
                Ok(to)
            }
            _ => Err(Error::State {
                state: self.state().as_str(),
                operation,
            }),
        }
    }

    /// A fleet: follows the fleet's backfill until `stop` (the view
    /// `/status` and the membership show between asks); with `auto_start`,
    /// takes over a pass whose runner died. Returns at once otherwise.
    pub async fn follow(self, stop: CancellationToken) {
        let Ledger::Fleet(fleet) = &self.inner.ledger else {
            return;
        };
        loop {
            if let Ok(shared) = fleet.refresh().await {
                let orphaned = matches!(shared.state.as_str(), "running" | "paused")
                    && !shared.runner.as_ref().is_some_and(|runner| runner.live);
                let auto_start = self.inner.config.lock().is_ok_and(|c| c.auto_start);
                if auto_start
                    && orphaned
                    && !matches!(self.local_state(), State::Running | State::Paused)
                {
                    match self.start().await {
                        Ok(_) => tracing::info!(
                            "took over the fleet's backfill from an instance that stopped running it"
                        ),
                        Err(Error::Elsewhere { .. }) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot take over the fleet's backfill")
                        }
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
        }
    }

    /// Sets the rate limit (records per second, 0 = unlimited), live.
    pub(crate) fn set_rate(&self, rate: u64) {
        self.inner.rate.store(rate, Ordering::Relaxed);
        if let Ok(mut config) = self.inner.config.lock() {
            config.rate = rate;
        }
    }

    /// Sets the concurrency (writes in flight), live.
    pub(crate) fn set_concurrency(&self, concurrency: usize) -> Result<(), Error> {
        if concurrency == 0 || concurrency > 4096 {
            return Err(Error::Invalid(
                "concurrency must be between 1 and 4096".to_owned(),
            ));
        }
        let previous = self.inner.concurrency.swap(concurrency, Ordering::AcqRel);
        if concurrency > previous {
            self.inner.permits.add_permits(concurrency - previous);
        } else {
            // Take the surplus permits out as they come back.
            let permits = Arc::clone(&self.inner.permits);
            let surplus = u32::try_from(previous - concurrency).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(permit) = permits.acquire_many(surplus).await {
                    permit.forget();
                }
            });
        }
        if let Ok(mut config) = self.inner.config.lock() {
            config.concurrency = concurrency;
        }
        Ok(())
    }

    /// Waits until the backfill is no longer running (done, failed, idle),
    /// or `timeout` passes.
    pub(crate) async fn wait_finished(&self, timeout: Duration) -> State {
        let mut state = self.inner.state.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            state.wait_for(|s| matches!(s, State::Done | State::Failed | State::Idle)),
        )
        .await;
        self.state()
    }

    /// The `/status` view. In a fleet, on an instance that does not run
    /// the backfill, the fleet's: its runner and each dataset's shared
    /// checkpoint, read when `/status` is asked ([`Backfill::refresh`]).
    pub fn status(&self) -> BackfillStatus {
        let active = matches!(self.local_state(), State::Running | State::Paused);
        if let Ledger::Fleet(fleet) = &self.inner.ledger
            && !active
            && let Some(shared) = fleet.view()
        {
            return self.fleet_status(&shared);
        }
        let progress = self
            .inner
            .progress
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let elapsed = self
            .inner
            .timing
            .lock()
            .ok()
            .and_then(|timing| match *timing {
                (_, Some(took)) => Some(took),
                (Some(started), None) => Some(started.elapsed()),
                (None, None) => None,
            });
        BackfillStatus {
            elapsed_ms: elapsed.map_or(0, |e| u64::try_from(e.as_millis()).unwrap_or(u64::MAX)),
            state: self.state(),
            rate_limit: self.inner.rate.load(Ordering::Relaxed),
            concurrency: self.inner.concurrency.load(Ordering::Relaxed),
            datasets: self.render(progress),
            runner: match &self.inner.ledger {
                Ledger::Fleet(fleet) if active => Some(crate::api::BackfillRunner {
                    instance: fleet.instance.clone(),
                    admin_url: fleet.admin_url.clone(),
                }),
                _ => None,
            },
        }
    }

    /// The fleet's backfill as another instance runs it (or ran it).
    fn fleet_status(&self, shared: &SharedBackfill) -> BackfillStatus {
        let progress = self
            .inner
            .datasets
            .iter()
            .map(|&dataset| {
                let stored = shared
                    .checkpoints
                    .iter()
                    .find(|stored| stored.dataset == dataset.as_str());
                let checkpoint = stored.and_then(parse_checkpoint).unwrap_or_default();
                let progress = progress_from(&checkpoint);
                if let Some(stored) = stored {
                    if let Ok(mut rate) = progress.rate.lock() {
                        *rate = stored.rate;
                    }
                    if let Ok(mut error) = progress.error.lock() {
                        error.clone_from(&stored.error);
                    }
                }
                (dataset, Arc::new(progress))
            })
            .collect();
        BackfillStatus {
            state: fleet_state(shared),
            rate_limit: shared.rate_limit,
            concurrency: usize::try_from(shared.concurrency).unwrap_or(usize::MAX),
            elapsed_ms: shared.elapsed_ms.unwrap_or(0),
            datasets: self.render(progress),
            runner: shared
                .runner
                .as_ref()
                .filter(|runner| runner.live)
                .map(|runner| crate::api::BackfillRunner {
                    instance: runner.instance.clone(),
                    admin_url: runner.admin_url.clone().unwrap_or_default(),
                }),
        }
    }

    /// Each dataset's progress as `/status` shows it.
    fn render(
        &self,
        progress: BTreeMap<Dataset, Arc<Progress>>,
    ) -> BTreeMap<Dataset, DatasetProgress> {
        progress
            .into_iter()
            .map(|(dataset, p)| {
                let settled = p.settled();
                let rate = p.rate.lock().map_or(0.0, |r| *r);
                // Records created after the count are in the export too.
                let total = p.total.unwrap_or(settled).max(settled);
                let remaining = total.saturating_sub(settled);
                let eta_s = if rate > 0.0 {
                    (remaining as f64 / rate).ceil() as u64
                } else {
                    0
                };
                (
                    dataset,
                    DatasetProgress {
                        total,
                        copied: p.copied.load(Ordering::Relaxed),
                        // Refresh-token values copied from the export: the
                        // client may hold another string (see
                        // `servers::authlete::refresh_token_of_record`).
                        unconfirmed: if dataset == Dataset::Tokens
                            && self.inner.servers.authlete().is_some()
                        {
                            p.copied.load(Ordering::Relaxed)
                        } else {
                            0
                        },
                        not_copied: p.not_copied(),
                        skipped: p.skipped.load(Ordering::Relaxed),
                        failed: p.failed.load(Ordering::Relaxed),
                        rate,
                        eta_s,
                        error: p.error.lock().ok().and_then(|e| e.clone()),
                    },
                )
            })
            .collect()
    }
}

impl Inner {
    /// Runs a pass until it is done, fails, or `stop` (the controller's
    /// stop, or in a fleet, the runner lease lost).
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let config = self
            .config
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        if let Ledger::Files(dir) = &self.ledger
            && let Err(err) = crate::journal::create_private_dir_all(dir)
        {
            tracing::error!(dir = %dir.display(), error = %err, "cannot create the backfill checkpoint directory");
        }
        let lease = match &self.ledger {
            Ledger::Fleet(_) => Some(tokio::spawn(
                Arc::clone(&self).keep_runner_lease(stop.clone()),
            )),
            Ledger::Files(_) => None,
        };
        let outcome = self.copy_all(&config, &stop).await;
        if let Some(lease) = lease {
            lease.abort();
        }
        self.sync.watch_end();
        let state = match outcome {
            // Resumes from the checkpoints on the next start (in a fleet,
            // on any instance: the pass is left for one to take over).
            None => {
                self.let_go(self.local_state(), true).await;
                State::Idle
            }
            Some(failed) => {
                if let Ok(mut timing) = self.timing.lock()
                    && let (Some(started), None) = *timing
                {
                    timing.1 = Some(started.elapsed());
                }
                let state = if failed { State::Failed } else { State::Done };
                if !failed {
                    tracing::info!("backfill done");
                }
                self.let_go(state, true).await;
                state
            }
        };
        // What this instance shows from now on is the fleet's: fresh.
        if let Ledger::Fleet(fleet) = &self.ledger
            && let Err(err) = fleet.refresh().await
        {
            tracing::debug!(error = %err, "cannot read the fleet's backfill");
        }
        self.state.send_replace(state);
    }

    fn local_state(&self) -> State {
        *self.state.borrow()
    }

    /// Every dataset, then the tenants: `Some(failed)` when the pass ended,
    /// `None` when it was stopped.
    async fn copy_all(&self, config: &Config, stop: &CancellationToken) -> Option<bool> {
        for &dataset in &self.datasets {
            let checkpoint = self.ledger.read(dataset).await.unwrap_or_default();
            if checkpoint.done {
                continue;
            }
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.copy_dataset(config, dataset, stop).await {
                    Ok(()) => break,
                    Err(DatasetError::Stopped) => return None,
                    Err(DatasetError::OrderChanged) => {
                        // copy_dataset handles it; unreachable here.
                        break;
                    }
                    Err(DatasetError::Export(message)) if attempt < EXPORT_ATTEMPTS => {
                        tracing::warn!(dataset = dataset.as_str(), attempt, error = %message, "backfill export failed; resuming from the checkpoint");
                        tokio::select! {
                            () = stop.cancelled() => return None,
                            () = tokio::time::sleep(Duration::from_secs(u64::from(attempt))) => {}
                        }
                    }
                    Err(DatasetError::Export(message)) => {
                        tracing::error!(dataset = dataset.as_str(), error = %message, "backfill failed; `handover backfill start` resumes from the checkpoint");
                        if let Some(progress) = self.progress_of(dataset) {
                            if let Ok(mut error) = progress.error.lock() {
                                *error = Some(message);
                            }
                            // The fleet sees why.
                            if let Ledger::Fleet(_) = &self.ledger
                                && let Some(checkpoint) = self.ledger.read(dataset).await
                            {
                                self.ledger.write(dataset, &checkpoint, &progress).await;
                            }
                        }
                        return Some(true);
                    }
                }
            }
        }
        if let Err(message) = self.enqueue_tenants(stop).await {
            tracing::error!(error = %message, "backfill of a tenant failed; `handover backfill start` runs it again");
            return Some(true);
        }
        if stop.is_cancelled() {
            return None;
        }
        Some(false)
    }

    /// A fleet: renews the runner lease every third of it until `stop`. A
    /// runner whose lease another instance took (it expired while this one
    /// could not renew it) stops copying. One that merely cannot reach the
    /// store goes on: its writes wait for the store anyway (each takes its
    /// key's claim there first), and a second runner would only repeat
    /// idempotent imports, never write a stale copy.
    async fn keep_runner_lease(self: Arc<Self>, stop: CancellationToken) {
        let Ledger::Fleet(fleet) = &self.ledger else {
            return;
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(fleet.lease / 3) => {}
            }
            match fleet.store.renew_runner(&fleet.instance, fleet.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(
                        "another instance took over the backfill (this one could not renew its lease in time); stopping here"
                    );
                    stop.cancel();
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot renew the backfill lease; retrying")
                }
            }
        }
    }

    /// A fleet: publishes the runner's state and settings (and lets go of
    /// the lease when `release`). Nothing to do for one instance.
    async fn let_go(&self, state: State, release: bool) {
        let Ledger::Fleet(fleet) = &self.ledger else {
            return;
        };
        let update = BackfillUpdate {
            state: state.as_str().to_owned(),
            rate_limit: self.rate.load(Ordering::Relaxed),
            concurrency: self.concurrency.load(Ordering::Relaxed) as u64,
            release,
        };
        match fleet.store.publish(&fleet.instance, &update).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("the backfill is no longer this instance's to publish"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot publish the backfill's state to the fleet")
            }
        }
    }

    /// A fleet: publishes the running backfill's state and settings.
    async fn publish(&self, release: bool) {
        let state = self.local_state();
        if matches!(state, State::Running | State::Paused) {
            self.let_go(state, release).await;
        }
    }

    /// The tenants' records (`sync.tenants`), after the default issuer's:
    /// every key of each tenant's exports is journaled as a change scoped
    /// to that tenant (the DBLog rule: "enqueue every key", DESIGN §4),
    /// and the sync copies each from the primary's tenant to the
    /// secondary's. No checkpoint: a repeated pass enqueues again, which
    /// is harmless; progress shows as journal depth.
    async fn enqueue_tenants(&self, stop: &CancellationToken) -> Result<(), String> {
        let Some(recorder) = &self.recorder else {
            return Ok(());
        };
        for tenant in &self.tenants {
            let primary = self.servers.primary_api().in_tenant(tenant);
            for &dataset in &self.datasets {
                let mut export = Export::open(&primary, dataset)
                    .await
                    .map_err(|err| format!("{} {dataset}: {err}", tenant.label()))?;
                let mut enqueued = 0u64;
                loop {
                    let records = tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        next = export.next() => next.map_err(|err| format!("{} {dataset}: {err}", tenant.label()))?,
                    };
                    let Some(records) = records else { break };
                    let changes: Vec<Change> = records
                        .into_iter()
                        .filter_map(|member| member.key)
                        .map(|key| Change::sync(key).scoped(Some(tenant.clone())))
                        .collect();
                    enqueued += changes.len() as u64;
                    if !changes.is_empty() {
                        recorder.record(changes).await;
                    }
                }
                tracing::info!(tenant = %tenant.label(), dataset = dataset.as_str(), enqueued, "tenant backfill enqueued");
            }
        }
        Ok(())
    }

    fn progress_of(&self, dataset: Dataset) -> Option<Arc<Progress>> {
        self.progress.lock().ok()?.get(&dataset).cloned()
    }

    async fn copy_dataset(
        &self,
        config: &Config,
        dataset: Dataset,
        stop: &CancellationToken,
    ) -> Result<(), DatasetError> {
        let mut checkpoint = self.ledger.read(dataset).await.unwrap_or_default();
        let primary = self.servers.primary_api().clone();
        // Count first, for a total and an ETA.
        let total = match checkpoint.total {
            Some(total) => Some(total),
            None if config.count_first => Some(self.count(&primary, dataset, stop).await?),
            None => None,
        };
        checkpoint.total = total;
        let progress = Arc::new(Progress {
            total,
            ..progress_from(&checkpoint)
        });
        if let Ok(mut all) = self.progress.lock() {
            all.insert(dataset, Arc::clone(&progress));
        }
        tracing::info!(dataset = dataset.as_str(), total = ?total, resume_at = checkpoint.settled, "backfill copying");

        let tracker = Arc::new(Mutex::new(Settled::new(&checkpoint)));
        let result = self
            .stream_dataset(dataset, &checkpoint, &progress, &tracker, stop)
            .await;
        if let Err(DatasetError::OrderChanged) = result {
            // Copy everything again: imports are idempotent.
            self.ledger.forget(dataset).await;
            return Box::pin(self.copy_dataset(config, dataset, stop)).await;
        }
        // Whatever happened, keep what is settled.
        self.save(dataset, &checkpoint, &progress, &tracker, result.is_ok())
            .await;
        result
    }

    async fn stream_dataset(
        &self,
        dataset: Dataset,
        checkpoint: &Checkpoint,
        progress: &Arc<Progress>,
        tracker: &Arc<Mutex<Settled>>,
        stop: &CancellationToken,
    ) -> Result<(), DatasetError> {
        let primary = self.servers.primary_api().clone();
        // From here on, keys touched by live traffic belong to the sync.
        self.sync.watch_begin();
        let mut export = Export::open(&primary, dataset)
            .await
            .map_err(|err| DatasetError::Export(err.to_string()))?;
        let skip = checkpoint.settled;
        let expected_hash = checkpoint.last_key_hash.clone();
        let mut index: u64 = 0;
        let mut limiter = Limiter::new();
        let mut last_checkpoint = Instant::now();
        let mut rate_window = (Instant::now(), progress.settled());
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            let records = tokio::select! {
                () = stop.cancelled() => return Err(DatasetError::Stopped),
                next = export.next() => next.map_err(|err| DatasetError::Export(err.to_string()))?,
            };
            let Some(records) = records else { break };
            for member in records {
                index += 1;
                let Some(key) = member.key else {
                    {
                        // A record without a usable key is reported, not
                        // fatal: the rest of the export still copies.
                        tracing::warn!(
                            dataset = dataset.as_str(),
                            index,
                            "exported record without a key; skipped"
                        );
                        if index > skip {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut t) = tracker.lock() {
                                t.complete(index, None, Outcome::Failed);
                            }
                        }
                        continue;
                    }
                };
                if index <= skip {
                    if index == skip
                        && expected_hash.as_deref() != Some(&self.ledger.key_hash(&key))
                    {
                        // The export order changed: copy everything again
                        // (imports are idempotent).
                        tracing::warn!(
                            dataset = dataset.as_str(),
                            "export order changed since the checkpoint; copying the dataset from the start"
                        );
                        return Err(DatasetError::OrderChanged);
                    }
                    continue;
                }
                let Ok(record) = serde_json::from_slice::<Value>(&member.json) else {
                    tracing::warn!(
                        dataset = dataset.as_str(),
                        index,
                        "malformed record in the export; skipped"
                    );
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut t) = tracker.lock() {
                        t.complete(index, None, Outcome::Failed);
                    }
                    continue;
                };
                // An authorization without a refresh-token value to copy
                // is said so, never counted as a copy.
                if dataset == Dataset::Tokens
                    && let Some(authlete) = self.servers.authlete()
                    && let Err(reason) = crate::servers::authlete::refresh_token_of_record(
                        &record,
                        authlete.config(),
                    )
                {
                    let outcome = Outcome::NotCopied(reason.as_str());
                    progress.count(outcome);
                    if let Ok(mut t) = tracker.lock() {
                        t.complete(index, Some(self.ledger.key_hash(&key)), outcome);
                    }
                    continue;
                }
                // Pause, rate limit and concurrency apply per record.
                self.wait_while_paused(stop).await?;
                limiter.wait(self.rate.load(Ordering::Relaxed)).await;
                let permit = tokio::select! {
                    () = stop.cancelled() => return Err(DatasetError::Stopped),
                    permit = Arc::clone(&self.permits).acquire_owned() => permit.map_err(|_| DatasetError::Stopped)?,
                };
                let sync = self.sync.clone();
                let progress = Arc::clone(progress);
                let tracker = Arc::clone(tracker);
                let key_hash = self.ledger.key_hash(&key);
                in_flight.spawn(async move {
                    let outcome = sync.backfill(key, record).await;
                    drop(permit);
                    let outcome = match outcome {
                        BackfillOutcome::Copied => Outcome::Copied,
                        BackfillOutcome::Skipped => Outcome::Skipped,
                        BackfillOutcome::Failed => Outcome::Failed,
                        BackfillOutcome::Stopped => return,
                    };
                    progress.count(outcome);
                    if let Ok(mut t) = tracker.lock() {
                        t.complete(index, Some(key_hash), outcome);
                    }
                });
                while in_flight.try_join_next().is_some() {}
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                last_checkpoint = Instant::now();
                self.save(dataset, checkpoint, progress, tracker, false)
                    .await;
                let (since, before) = rate_window;
                let now_settled = progress.settled();
                let elapsed = since.elapsed().as_secs_f64();
                if elapsed > 0.0 {
                    let instant = (now_settled - before) as f64 / elapsed;
                    if let Ok(mut rate) = progress.rate.lock() {
                        *rate = if *rate == 0.0 {
                            instant
                        } else {
                            0.7 * *rate + 0.3 * instant
                        };
                    }
                }
                rate_window = (Instant::now(), now_settled);
            }
        }
        while in_flight.join_next().await.is_some() {}
        if stop.is_cancelled() {
            return Err(DatasetError::Stopped);
        }
        tracing::info!(
            dataset = dataset.as_str(),
            copied = progress.copied.load(Ordering::Relaxed),
            skipped_live = progress.skipped.load(Ordering::Relaxed),
            failed = progress.failed.load(Ordering::Relaxed),
            "backfill dataset done"
        );
        Ok(())
    }

    /// Streams an export only to count its records.
    async fn count(
        &self,
        primary: &crate::servers::connect2id::Connect2id,
        dataset: Dataset,
        stop: &CancellationToken,
    ) -> Result<u64, DatasetError> {
        let mut export = Export::open(primary, dataset)
            .await
            .map_err(|err| DatasetError::Export(err.to_string()))?;
        let mut total = 0u64;
        loop {
            let records = tokio::select! {
                () = stop.cancelled() => return Err(DatasetError::Stopped),
                next = export.next() => next.map_err(|err| DatasetError::Export(format!("counting: {err}")))?,
            };
            match records {
                Some(records) => total += records.len() as u64,
                None => break,
            }
        }
        Ok(total)
    }

    async fn wait_while_paused(&self, stop: &CancellationToken) -> Result<(), DatasetError> {
        let mut state = self.state.subscribe();
        tokio::select! {
            () = stop.cancelled() => Err(DatasetError::Stopped),
            result = state.wait_for(|s| *s != State::Paused) => result.map(|_| ()).map_err(|_| DatasetError::Stopped),
        }
    }

    async fn save(
        &self,
        dataset: Dataset,
        base: &Checkpoint,
        progress: &Progress,
        tracker: &Mutex<Settled>,
        done: bool,
    ) {
        // The counts describe the settled prefix, like `settled`: records
        // that completed beyond it are written again on resume and must
        // not be counted twice.
        let checkpoint = match tracker.lock() {
            Ok(t) => Checkpoint {
                done,
                settled: t.settled,
                last_key_hash: t.last_hash.clone(),
                copied: t.copied,
                skipped: t.skipped,
                failed: t.failed,
                not_copied: t.not_copied.clone(),
                total: progress.total,
            },
            Err(_) => base.clone(),
        };
        self.ledger.write(dataset, &checkpoint, progress).await;
    }
}

enum DatasetError {
    Stopped,
    Export(String),
    /// The export's order differs from the checkpoint's.
    OrderChanged,
}

/// How one exported record settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Copied,
    Skipped,
    Failed,
    /// Nothing to copy, for this reason.
    NotCopied(&'static str),
}

/// Tracks the contiguous prefix of settled records (they settle out of
/// order), and how the records of that prefix settled.
#[derive(Debug)]
struct Settled {
    settled: u64,
    last_hash: Option<String>,
    copied: u64,
    skipped: u64,
    failed: u64,
    not_copied: BTreeMap<String, u64>,
    pending: BTreeMap<u64, (Option<String>, Outcome)>,
}

impl Settled {
    /// Continues from a checkpoint.
    fn new(checkpoint: &Checkpoint) -> Self {
        Self {
            settled: checkpoint.settled,
            last_hash: checkpoint.last_key_hash.clone(),
            copied: checkpoint.copied,
            skipped: checkpoint.skipped,
            failed: checkpoint.failed,
            not_copied: checkpoint.not_copied.clone(),
            pending: BTreeMap::new(),
        }
    }

    fn complete(&mut self, index: u64, hash: Option<String>, outcome: Outcome) {
        self.pending.insert(index, (hash, outcome));
        while let Some((hash, outcome)) = self.pending.remove(&(self.settled + 1)) {
            self.settled += 1;
            match outcome {
                Outcome::Copied => self.copied += 1,
                Outcome::Skipped => self.skipped += 1,
                Outcome::Failed => self.failed += 1,
                Outcome::NotCopied(reason) => {
                    *self.not_copied.entry(reason.to_owned()).or_default() += 1;
                }
            }
            if hash.is_some() {
                self.last_hash = hash;
            }
        }
    }
}

/// A simple pacing limiter: at most `rate` records per second on average.
struct Limiter {
    next: tokio::time::Instant,
}

impl Limiter {
    fn new() -> Self {
        Self {
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self, rate: u64) {
        if rate == 0 {
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let now = tokio::time::Instant::now();
        // Do not bank unused time beyond one second of burst.
        if self.next + Duration::from_secs(1) < now {
            self.next = now;
        }
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next += interval;
    }
}

/// A short digest of a key, for the checkpoint (never the key itself: a
/// SID is a secret).
fn hash_key(key: &Key) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.identity().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn progress_from(checkpoint: &Checkpoint) -> Progress {
    Progress {
        total: checkpoint.total,
        copied: AtomicU64::new(checkpoint.copied),
        skipped: AtomicU64::new(checkpoint.skipped),
        failed: AtomicU64::new(checkpoint.failed),
        not_copied: Mutex::new(checkpoint.not_copied.clone()),
        rate: Mutex::new(0.0),
        error: Mutex::new(None),
    }
}

fn checkpoint_path(dir: &Path, dataset: Dataset) -> PathBuf {
    dir.join(format!("{dataset}.json"))
}

fn read_checkpoint(dir: &Path, dataset: Dataset) -> Option<Checkpoint> {
    let text = std::fs::read(checkpoint_path(dir, dataset)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(checkpoint) => Some(checkpoint),
        Err(err) => {
            tracing::warn!(dataset = dataset.as_str(), error = %err, "unreadable backfill checkpoint; starting the dataset over");
            None
        }
    }
}

/// Writes a checkpoint atomically: temp file, fsync, rename.
fn write_checkpoint(dir: &Path, dataset: Dataset, checkpoint: &Checkpoint) -> std::io::Result<()> {
    crate::journal::create_private_dir_all(dir)?;
    crate::journal::replace_file(
        &checkpoint_path(dir, dataset),
        &dir.join(format!(".{dataset}.json.tmp")),
        &serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settled_prefix_advances_over_out_of_order_completions() {
        let mut settled = Settled::new(&Checkpoint {
            settled: 10,
            copied: 9,
            failed: 1,
            ..Checkpoint::default()
        });
        settled.complete(12, Some("b".into()), Outcome::Skipped);
        assert_eq!(settled.settled, 10);
        settled.complete(11, Some("a".into()), Outcome::Copied);
        assert_eq!(settled.settled, 12);
        assert_eq!(settled.last_hash.as_deref(), Some("b"));
        settled.complete(13, None, Outcome::Failed);
        assert_eq!(settled.settled, 13);
        assert_eq!(settled.last_hash.as_deref(), Some("b"));
        assert_eq!(
            (settled.copied, settled.skipped, settled.failed),
            (10, 1, 2)
        );
    }

    #[test]
    fn completions_beyond_the_settled_prefix_are_not_counted_in_it() {
        // Record 2 is still in flight when the backfill stops: records 3
        // and 4 will be written again on resume, so the checkpoint must
        // not count them yet.
        let mut settled = Settled::new(&Checkpoint::default());
        settled.complete(1, Some("a".into()), Outcome::Copied);
        settled.complete(3, Some("c".into()), Outcome::Copied);
        settled.complete(4, Some("d".into()), Outcome::Skipped);
        assert_eq!(settled.settled, 1);
        assert_eq!((settled.copied, settled.skipped, settled.failed), (1, 0, 0));
    }

    #[test]
    fn checkpoints_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint {
            done: false,
            settled: 42,
            last_key_hash: Some(hash_key(&Key::Client {
                client_id: "a".into(),
            })),
            copied: 40,
            skipped: 1,
            failed: 1,
            not_copied: [("value_not_exported".to_owned(), 3)].into_iter().collect(),
            total: Some(100),
        };
        write_checkpoint(dir.path(), Dataset::Clients, &checkpoint).unwrap();
        assert_eq!(
            read_checkpoint(dir.path(), Dataset::Clients),
            Some(checkpoint)
        );
        assert_eq!(read_checkpoint(dir.path(), Dataset::Sessions), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_paces_records() {
        let mut limiter = Limiter::new();
        let started = tokio::time::Instant::now();
        for _ in 0..11 {
            limiter.wait(10).await;
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(990) && elapsed < Duration::from_millis(1100),
            "{elapsed:?}"
        );
    }
}
