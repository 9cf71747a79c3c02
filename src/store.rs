//! The store: where the journal's pending work, the dead letters and the
//! control state (phase, epoch) live, behind one interface, [`Handle`], with
//! two implementations:
//!
//! - [`Handle::Local`]: the embedded journal directory (segment files, the
//!   dead-letter log, `phase.json`). One instance; the default and the
//!   demo's.
//! - [`Handle::Postgres`]: tables in a PostgreSQL database shared by every
//!   instance of a fleet (`[store] kind = "postgres"`).
//!
//! # The contract (tests/store_contract.rs runs it against both)
//!
//! - [`Handle::append`] makes a batch durable in one transaction (all or
//!   nothing) and returns its seqs; the caller releases the downstream
//!   response only after it returned `Ok`. Appends that arrive together
//!   share one commit (group commit: one fsync locally, one transaction in
//!   PostgreSQL).
//! - Every record belongs to a **lane** (the key it changes). Lanes leave
//!   the process only as [`journal::Cipher::tag`]s (keyed hashes), bodies
//!   only encrypted with the journal key by the journal's own record codec
//!   (the seq is authenticated, so a record cannot be moved or replayed
//!   under another seq): the database never sees a token, a session id or
//!   a key in clear.
//! - [`Handle::claim`] hands an owner whole lanes with a lease: every
//!   pending record of each lane it returns, in seq order, and never a lane
//!   in which any record is claimed under a live lease (by anyone). So one
//!   owner at a time works on a key, fleet-wide, and sees its payload
//!   events in order. A lease that expires (its owner died or stalled)
//!   returns the lane to the pool; [`Handle::extend`] renews an owner's
//!   leases, [`Handle::release`] gives them back.
//! - [`Handle::ack`] deletes applied records, whoever claimed them.
//! - [`Handle::bury`] moves a record to the dead letters with a reason (one
//!   transaction); [`Handle::retry_dead_letters`] moves them back.
//! - [`Handle::control`] / [`Handle::set_control`]: the phase, the epoch
//!   and when the primary last flipped, written by compare-and-set on a
//!   version so two instances never both make the same transition;
//!   [`Handle::changes`] wakes the other instances when it changed.
//! - The fleet's backfill ([`BackfillStore`], PostgreSQL only: a local
//!   store has one instance, whose backfill keeps its checkpoint files):
//!   one runner at a time under a lease, checkpoints only the runner
//!   writes, and [`BackfillStore::claim_for_backfill`], the fleet-wide
//!   "live writes win" rule.
//! - Everything written is there after a restart ([`Handle::close`], then
//!   open again): pending records come back (unclaimed locally; in
//!   PostgreSQL a dead owner's claims return when their lease expires).
//!   Delivery is at least once: the local journal persists a cursor over
//!   the acked prefix, so a record acked out of order may come back after a
//!   restart; PostgreSQL deletes acked rows, so none do.
//!
//! The client credential map ([`Registrations`]) follows the store too: on
//! disk beside the journal for one instance, a table shared by the fleet in
//! PostgreSQL.

mod local;
mod postgres;
mod registrations;
mod tls;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::journal::{self, Cipher};
use crate::model::Secret;

pub use postgres::{CHANGES_CHANNEL, SCHEMA_VERSION, Schema};
pub use registrations::{LOOKUP_TIMEOUT, Registrations, SecretChanges};

/// A record's sequence number in the store.
pub type Seq = u64;

/// A lane's identity as stored: a keyed hash of the key it changes.
pub type LaneTag = [u8; 16];

/// Default `[store] pool_size`: 8 connections per instance. The writer
/// takes one at a time (group commit), claims and acks a few more; eight
/// leaves room for the operator's requests while a fleet of ten stays far
/// below PostgreSQL's default `max_connections` of 100.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Default `[store] connect_timeout`: 5 s. Long enough for a TLS handshake
/// to a database across a region; short enough that an unreachable
/// database is reported while the operator still watches the start.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default `[store] claim_lease`: 30 s. An instance renews its claims
/// every third of it while it lives; when it dies, its claims go to the
/// rest of the fleet this long after its last renewal. Long enough that a
/// stalled renewal (a GC-free process, but a busy database) does not hand a
/// key to two instances; short enough that a lost instance's changes are
/// late by half a minute, not lost.
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(30);

/// Most records the PostgreSQL writer puts in one transaction: bounds the
/// size of one statement while a burst still costs few commits.
pub const MAX_GROUP_RECORDS: usize = 1024;

/// Which store.
#[derive(Debug, Clone, Default)]
pub enum Kind {
    /// The journal directory (`[journal] dir`).
    #[default]
    Local,
    /// A PostgreSQL database shared by the fleet.
    Postgres {
        /// The connection URL (or `key=value` string). A secret: it may
        /// carry a password; never logged or echoed.
        url: Secret,
    },
}

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which store.
    pub kind: Kind,
    /// Most connections open at once (PostgreSQL).
    pub pool_size: usize,
    /// Longest wait for one connection to be established (PostgreSQL).
    pub connect_timeout: Duration,
    /// CA certificates for the database's TLS certificate instead of the
    /// system roots (PostgreSQL with `sslmode=prefer` or `require`).
    pub ca_file: Option<PathBuf>,
    /// How long a claim holds without renewal.
    pub claim_lease: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kind: Kind::Local,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ca_file: None,
            claim_lease: DEFAULT_CLAIM_LEASE,
        }
    }
}

impl Config {
    /// A PostgreSQL store at `url` with the defaults.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self {
            kind: Kind::Postgres {
                url: Secret::new(url.into()),
            },
            ..Self::default()
        }
    }
}

/// Store errors. None of them carries the connection URL or a record's
/// contents.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The local journal failed (see [`journal::Error`]).
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// The database could not be reached or a statement failed.
    #[error("store: PostgreSQL {op} failed: {message}")]
    Postgres {
        /// What was being done ("connect", "append", "claim", ...).
        op: &'static str,
        /// The client's error (never contains the URL or record contents:
        /// only tags and ciphertext are sent).
        message: String,
    },
    /// The database's schema is newer than this build knows.
    #[error(
        "store: the database schema is at version {found}, newer than this build's {supported}; upgrade handover"
    )]
    SchemaTooNew {
        /// The version found.
        found: i32,
        /// [`SCHEMA_VERSION`].
        supported: i32,
    },
    /// A stored record does not decrypt or does not belong where it is
    /// (wrong key, tampering, a writer bug).
    #[error("store: record {seq} in {place} is unreadable: {reason}")]
    Corrupt {
        /// Where ("journal", "dead letters").
        place: &'static str,
        /// Its seq.
        seq: Seq,
        /// What is wrong.
        reason: String,
    },
    /// A client's entry in the shared credential map does not decrypt or
    /// was sealed for another client (wrong journal key, tampering).
    #[error("store: a client's registration entry is unreadable: {reason}")]
    UnreadableRegistration {
        /// What is wrong (names no client and no token).
        reason: String,
    },
    /// A setting is unusable (a TLS CA file, the URL).
    #[error("store: {field}: {reason}")]
    InvalidConfig {
        /// The config field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

impl Error {
    fn postgres(op: &'static str, err: &tokio_postgres::Error) -> Self {
        Error::Postgres {
            op,
            message: postgres::describe(err),
        }
    }
}

/// One change to append: the lane it belongs to (the key's identity, in
/// clear; the store keeps only its tag) and the body (the store keeps it
/// only encrypted).
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// The lane, e.g. the key's identity.
    pub lane: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lanes and bodies may name tokens: never print them.
        f.debug_struct("Record")
            .field("lane_len", &self.lane.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A claimed record.
#[derive(Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Its seq (ack it with this).
    pub seq: Seq,
    /// Its lane's tag.
    pub lane: LaneTag,
    /// The body, decrypted.
    pub body: Vec<u8>,
    /// When it was appended.
    pub appended_at: SystemTime,
}

impl fmt::Debug for Claimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claimed")
            .field("seq", &self.seq)
            .field("body_len", &self.body.len())
            .field("appended_at", &self.appended_at)
            .finish_non_exhaustive()
    }
}

/// A dead letter, as listed.
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id among the dead letters (retry through it).
    pub id: u64,
    /// Why the sync gave up (no secrets).
    pub reason: String,
    /// The original body, decrypted.
    pub body: Vec<u8>,
    /// When it was buried.
    pub dead_at: SystemTime,
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("reason", &self.reason)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Pending work at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Records appended and not acked (claimed or not).
    pub records: u64,
    /// When the oldest of them was appended.
    pub oldest: Option<SystemTime>,
}

/// Pending work and dead letters at a glance, for `/status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Glance {
    /// Pending records.
    pub depth: Depth,
    /// Dead letters.
    pub dead_letters: u64,
}

/// One instance of the fleet, as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Unique per running process.
    pub instance: String,
    /// Where its admin API listens.
    pub admin_url: String,
    /// Its handover version.
    pub version: String,
    /// The phase it sees.
    pub phase: String,
    /// The fleet's backfill state as it sees it (`idle`, `running`,
    /// `done`, ...; the shared `handover_backfill` row is the authority:
    /// [`BackfillStore`]).
    #[serde(default)]
    pub backfill: String,
}

/// A member and its lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    /// The member.
    #[serde(flatten)]
    pub member: Member,
    /// Time since its last renewal.
    pub lease_age_ms: u64,
    /// Whether its lease is live (it renewed within the lease).
    pub live: bool,
    /// The last hold it acknowledged, and how far it came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_ack: Option<(u64, HoldAck)>,
}

/// The shared control state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The phase, as `Phase::as_str` writes it (`mirroring`, `cut-over`, ...).
    pub phase: String,
    /// Increments at every flip of the primary.
    pub epoch: u64,
    /// When the primary last flipped (unix ms).
    pub flipped_at_ms: Option<u64>,
    /// Increments at every write; [`Handle::set_control`] compares it.
    pub version: u64,
    /// The flip in progress, if any: every instance holds its writes for it.
    pub hold: Option<Hold>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            phase: "mirroring".to_owned(),
            epoch: 1,
            flipped_at_ms: None,
            version: 0,
            hold: None,
        }
    }
}

/// A flip in progress, as the control state publishes it to the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Its id: the control version that published it (unique, increasing).
    pub id: u64,
    /// The instance driving it.
    pub coordinator: String,
    /// Whether its time is up by the store's clock (the coordinator may be
    /// gone: any instance may then abort it).
    pub expired: bool,
}

/// What [`Handle::set_control`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextControl {
    /// The phase.
    pub phase: String,
    /// The epoch.
    pub epoch: u64,
    /// When the primary last flipped (unix ms).
    pub flipped_at_ms: Option<u64>,
    /// A hold to publish (`None` clears the one there is).
    pub hold: Option<NewHold>,
}

/// A hold to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    /// The instance driving the flip.
    pub coordinator: String,
    /// How long it may last, by the store's clock.
    pub lasting: Duration,
}

/// How far a member has come with a hold ([`Handle::ack_hold`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldAck {
    /// Its gate is closed, every trigger that had passed it is journaled
    /// in the store, and nothing is left in its memory.
    Held,
    /// And the keys it synced recently were read equal on both sides after
    /// the shared journal drained.
    Verified {
        /// How many.
        keys: u64,
    },
    /// It cannot take part (the reason names no secret).
    Failed(String),
}

impl HoldAck {
    /// As stored: `held`, `verified:<keys>`, `failed:<reason>`.
    pub fn encode(&self) -> String {
        match self {
            Self::Held => "held".to_owned(),
            Self::Verified { keys } => format!("verified:{keys}"),
            Self::Failed(reason) => format!("failed:{}", cut_reason(reason)),
        }
    }

    /// The stored form back; an unknown form is a failure naming it.
    pub fn decode(text: &str) -> Self {
        if text == "held" {
            return Self::Held;
        }
        if let Some(keys) = text.strip_prefix("verified:")
            && let Ok(keys) = keys.parse()
        {
            return Self::Verified { keys };
        }
        match text.strip_prefix("failed:") {
            Some(reason) => Self::Failed(reason.to_owned()),
            None => Self::Failed(format!("unknown acknowledgement {text:?}")),
        }
    }
}

impl serde::Serialize for HoldAck {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

/// What a store's change listener heard: the hint that the control row or
/// a hold acknowledgement may have changed (PostgreSQL's `NOTIFY`, see
/// [`Handle::changes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// The listener is connected: changes are announced as they commit, so
    /// a watcher may poll slowly.
    pub listening: bool,
    /// Notices heard so far (a reconnection counts as one).
    pub notices: u64,
}

/// The fleet's backfill as the store holds it ([`BackfillStore::read`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedBackfill {
    /// The pass's state as its runner last published it (`idle`,
    /// `running`, `paused`, `done`, `failed`).
    pub state: String,
    /// Who runs it (or ran it last and has not let go).
    pub runner: Option<BackfillRunner>,
    /// A pass is unfinished: appends record the lanes they touch.
    pub watching: bool,
    /// Time spent in the pass (so far, or in all once finished).
    pub elapsed_ms: Option<u64>,
    /// The runner's rate limit (records per second, 0 = unlimited).
    pub rate_limit: u64,
    /// The runner's writes in flight at once.
    pub concurrency: u64,
    /// Each dataset's latest checkpoint.
    pub checkpoints: Vec<StoredCheckpoint>,
}

/// The instance running the fleet's backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRunner {
    /// Its name.
    pub instance: String,
    /// Its admin API, when it is a member.
    pub admin_url: Option<String>,
    /// Whether its lease is live.
    pub live: bool,
}

/// One dataset's checkpoint as stored: the backfill's own JSON form (its
/// key hash is a keyed [`Cipher::tag`], never a key), and what the status
/// shows beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    /// The dataset.
    pub dataset: String,
    /// The checkpoint, as the backfill serializes it.
    pub checkpoint: String,
    /// Records settled per second, recently.
    pub rate: f64,
    /// Why the dataset failed, if it did (names no secret).
    pub error: Option<String>,
}

/// What the runner publishes ([`BackfillStore::publish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillUpdate {
    /// The state (`done` ends the pass: the touched lanes are forgotten).
    pub state: String,
    /// Its rate limit.
    pub rate_limit: u64,
    /// Its concurrency.
    pub concurrency: u64,
    /// Let go of the runner's lease (finished, failed or stopped).
    pub release: bool,
}

/// The fleet's backfill in a PostgreSQL store ([`Handle::backfill_store`]).
///
/// - **One runner**: [`BackfillStore::take_runner`] succeeds for one
///   instance at a time; the runner renews its lease
///   ([`BackfillStore::renew_runner`]) and lets go when it finishes or
///   stops; a runner that dies loses it when the lease expires. A lease
///   row rather than an advisory lock: it is visible to every instance
///   (status names the runner), and it does not depend on one pooled
///   connection staying open. A stalled runner may overlap its successor
///   for a moment; that costs duplicate imports (idempotent), never a
///   stale write, because each write is guarded by its lane (below), and
///   its checkpoints are refused once it lost the lease.
/// - **Checkpoints** are written by the runner only.
/// - **Live writes win, fleet-wide**: [`BackfillStore::claim_for_backfill`]
///   takes a key's lane for one exported copy only if live traffic has not
///   touched the key since the pass began (a durable mark every append
///   leaves while the pass is unfinished, even once its record was applied
///   and deleted) and no record of the lane is pending. It takes the lane
///   the way a claim does (a record of its own, a sync of the key, claimed
///   under the runner's lease): no instance claims the key until the copy
///   is written and that record acked, and a live change journaled
///   meanwhile is synced after it, reading the newer state. Keys a live
///   change reaches only through a resolution (synced by the instance
///   that claimed it, not under the key's claim) are marked touched
///   ([`BackfillStore::mark_touched`]) before they are read; a copy whose
///   key was marked while it was written is followed by a sync of the key
///   ([`BackfillStore::finish_backfill_write`]). If the runner dies
///   mid-write, the record returns to the pool when the lease expires and
///   a sync of the key overwrites whatever copy landed.
#[derive(Debug, Clone)]
pub struct BackfillStore(Arc<postgres::Postgres>);

impl BackfillStore {
    /// Makes `instance` the runner for `lease`, unless another instance
    /// holds a live lease: then that runner.
    pub async fn take_runner(
        &self,
        instance: &str,
        lease: Duration,
    ) -> Result<Option<BackfillRunner>, Error> {
        self.0.take_runner(instance, lease).await
    }

    /// Renews `instance`'s runner lease; `false` when it is not the runner
    /// any more (its lease expired and another took it).
    pub async fn renew_runner(&self, instance: &str, lease: Duration) -> Result<bool, Error> {
        self.0.renew_runner(instance, lease).await
    }

    /// The runner `instance` begins (or resumes) the pass: `Some(true)`
    /// when the previous pass was done (its checkpoints and touched lanes
    /// are cleared: a new pass), `Some(false)` when it resumes, `None` when
    /// `instance` is not the runner.
    pub async fn begin_pass(
        &self,
        instance: &str,
        rate_limit: u64,
        concurrency: u64,
    ) -> Result<Option<bool>, Error> {
        self.0.begin_pass(instance, rate_limit, concurrency).await
    }

    /// The runner `instance` publishes its state; `false` when it is not
    /// the runner.
    pub async fn publish(&self, instance: &str, update: &BackfillUpdate) -> Result<bool, Error> {
        self.0.publish_backfill(instance, update).await
    }

    /// The runner `instance` saves a checkpoint; `false` (nothing written)
    /// when it is not the runner.
    pub async fn save_checkpoint(
        &self,
        instance: &str,
        checkpoint: &StoredCheckpoint,
    ) -> Result<bool, Error> {
        self.0.save_checkpoint(instance, checkpoint).await
    }

    /// The runner `instance` forgets a dataset's checkpoint (its export
    /// order changed: it is copied again from the start).
    pub async fn forget_checkpoint(&self, instance: &str, dataset: &str) -> Result<(), Error> {
        self.0.forget_checkpoint(instance, dataset).await
    }

    /// The fleet's backfill now.
    pub async fn read(&self) -> Result<SharedBackfill, Error> {
        self.0.read_backfill().await
    }

    /// Takes `lane` for writing one exported copy, as `owner` for `lease`
    /// (renewed with [`Handle::extend`] like its claims): the seq of the
    /// record that holds it (`body`, a sync of the key, applied by whoever
    /// claims it if the owner never acks it), or `None` when live traffic
    /// owns the key (touched since the pass began, or pending). Ack the
    /// seq once the copy is written.
    pub async fn claim_for_backfill(
        &self,
        owner: &str,
        lane: &[u8],
        body: &[u8],
        lease: Duration,
    ) -> Result<Option<Seq>, Error> {
        self.0.claim_for_backfill(owner, lane, body, lease).await
    }

    /// Marks `lanes` as touched by live traffic while a pass is
    /// unfinished (nothing otherwise), for changes that reach a key
    /// without being journaled on its lane: the keys a resolution or a
    /// subject's sessions resolve to, synced by the instance that claimed
    /// the change. Call it before reading them at the primary.
    pub async fn mark_touched(&self, lanes: &[&[u8]]) -> Result<(), Error> {
        self.0.mark_touched(lanes).await
    }

    /// Ends the backfill write that holds `seq` on `lane`: deletes the
    /// record, or, when the lane was touched since it was taken (a
    /// resolved key's sync does not wait for the lane's claim), gives it
    /// back to the pool instead, so a sync of the key reads the primary
    /// after the copy landed; returns whether it did that.
    pub async fn finish_backfill_write(&self, seq: Seq, lane: &[u8]) -> Result<bool, Error> {
        self.0.finish_backfill_write(seq, lane).await
    }

    /// The keyed hash (hex) a checkpoint names a key by: the journal
    /// key's [`Cipher::tag`], so the database never holds an identity.
    pub fn key_hash(&self, identity: &[u8]) -> String {
        self.0
            .tag(identity)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// An open store. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Handle {
    /// The journal directory.
    Local(Arc<local::Local>),
    /// A PostgreSQL database.
    Postgres(Arc<postgres::Postgres>),
}

impl Handle {
    /// Opens the store `config` names: the journal directory of `journal`
    /// for [`Kind::Local`], the database (migrating its schema) for
    /// [`Kind::Postgres`].
    pub async fn open(
        config: &Config,
        journal: &journal::Config,
        cipher: Cipher,
    ) -> Result<Handle, Error> {
        match &config.kind {
            Kind::Local => {
                let journal = journal.clone();
                let local =
                    tokio::task::spawn_blocking(move || local::Local::open(journal, cipher))
                        .await
                        .map_err(|_| Error::Closed)??;
                Ok(Handle::Local(Arc::new(local)))
            }
            Kind::Postgres { .. } => Ok(Handle::Postgres(Arc::new(
                postgres::Postgres::open(config, cipher).await?,
            ))),
        }
    }

    /// Wakes when another instance may have changed the control row or
    /// acknowledged a hold ([`Changes`]): PostgreSQL only (one instance
    /// has nobody else to hear from). A hint: read the state after it, and
    /// poll as well (slowly while [`Changes::listening`]).
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<Changes>> {
        match self {
            Handle::Local(_) => None,
            Handle::Postgres(pg) => Some(pg.changes()),
        }
    }

    /// The fleet's backfill state: a PostgreSQL store only (a local
    /// store's single instance keeps its checkpoint files).
    pub fn backfill_store(&self) -> Option<BackfillStore> {
        match self {
            Handle::Local(_) => None,
            Handle::Postgres(store) => Some(BackfillStore(Arc::clone(store))),
        }
    }

    /// `"local"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Handle::Local(_) => "local",
            Handle::Postgres(_) => "postgres",
        }
    }

    /// Appends `records` as one transaction; returns their seqs in order.
    /// They may be claimed at any epoch.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<Seq>, Error> {
        self.append_in(records, 0).await
    }

    /// Appends `records` made at `epoch` (the primary they were read from):
    /// only a claimer at that epoch or a later one takes them, so an
    /// instance that has not yet followed a flip never applies a change
    /// made after it in the old direction. (A local store has one
    /// instance: its epoch is the only one, and it keeps none.)
    pub async fn append_in(&self, records: Vec<Record>, epoch: u64) -> Result<Vec<Seq>, Error> {
        match self {
            Handle::Local(store) => store.append(records).await,
            Handle::Postgres(store) => store.append(records, epoch).await,
        }
    }

    /// Claims up to `max_lanes` lanes that nobody holds under a live lease,
    /// oldest first, for `owner` until `lease` from now: every pending
    /// record of each, in seq order.
    pub async fn claim(
        &self,
        owner: &str,
        max_lanes: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        self.claim_through(owner, max_lanes, lease, u64::MAX).await
    }

    /// Like [`Handle::claim`], taking only lanes whose records were all
    /// appended at `epoch` or before ([`Handle::append_in`]).
    pub async fn claim_through(
        &self,
        owner: &str,
        max_lanes: usize,
        lease: Duration,
        epoch: u64,
    ) -> Result<Vec<Claimed>, Error> {
        match self {
            Handle::Local(store) => Ok(store.claim(owner, max_lanes, lease)),
            Handle::Postgres(store) => store.claim(owner, max_lanes, lease, epoch).await,
        }
    }

    /// Renews every claim `owner` holds to `lease` from now; returns how
    /// many records it holds.
    pub async fn extend(&self, owner: &str, lease: Duration) -> Result<u64, Error> {
        match self {
            Handle::Local(store) => Ok(store.extend(owner, lease)),
            Handle::Postgres(store) => store.extend(owner, lease).await,
        }
    }

    /// Gives back every claim `owner` holds (unacked records return to the
    /// pool at once); returns how many.
    pub async fn release(&self, owner: &str) -> Result<u64, Error> {
        match self {
            Handle::Local(store) => Ok(store.release(owner)),
            Handle::Postgres(store) => store.release(owner).await,
        }
    }

    /// Deletes applied records. Unknown seqs are ignored.
    pub async fn ack(&self, seqs: &[Seq]) -> Result<(), Error> {
        match self {
            Handle::Local(store) => {
                store.ack(seqs);
                Ok(())
            }
            Handle::Postgres(store) => store.ack(seqs).await,
        }
    }

    /// Pending records.
    pub async fn depth(&self) -> Result<Depth, Error> {
        match self {
            Handle::Local(store) => Ok(store.depth()),
            Handle::Postgres(store) => store.depth().await,
        }
    }

    /// Moves a claimed record to the dead letters with `reason` (cut to
    /// [`journal::MAX_REASON_BYTES`]; it must not name a secret).
    pub async fn bury(&self, record: &Claimed, reason: &str) -> Result<u64, Error> {
        let reason = cut_reason(reason);
        match self {
            Handle::Local(store) => {
                let store = Arc::clone(store);
                let record = record.clone();
                let reason = reason.to_owned();
                tokio::task::spawn_blocking(move || store.bury(&record, &reason))
                    .await
                    .map_err(|_| Error::Closed)?
            }
            Handle::Postgres(store) => store.bury(record, reason).await,
        }
    }

    /// Records a dead letter for `lane` without touching the pending
    /// records (the caller acks the journal record itself, after this
    /// returned: a crash in between retries it, never loses it).
    pub async fn dead_letter(&self, lane: &[u8], reason: &str, body: &[u8]) -> Result<u64, Error> {
        let reason = cut_reason(reason);
        match self {
            Handle::Local(store) => {
                let store = Arc::clone(store);
                let (lane, reason, body) = (lane.to_vec(), reason.to_owned(), body.to_vec());
                tokio::task::spawn_blocking(move || store.dead_letter(&lane, &reason, &body))
                    .await
                    .map_err(|_| Error::Closed)?
            }
            Handle::Postgres(store) => store.dead_letter(lane, reason, body).await,
        }
    }

    /// Whether any record of `lane` is pending (claimed or not), by any
    /// instance.
    pub async fn lane_pending(&self, lane: &[u8]) -> Result<bool, Error> {
        match self {
            Handle::Local(store) => Ok(store.lane_pending(lane)),
            Handle::Postgres(store) => store.lane_pending(lane).await,
        }
    }

    /// How many of `seqs` are still pending (not acked).
    pub async fn pending_among(&self, seqs: &[Seq]) -> Result<u64, Error> {
        match self {
            Handle::Local(store) => Ok(store.pending_among(seqs)),
            Handle::Postgres(store) => store.pending_among(seqs).await,
        }
    }

    /// Pending work and the number of dead letters.
    pub async fn glance(&self) -> Result<Glance, Error> {
        match self {
            Handle::Local(store) => Ok(Glance {
                depth: store.depth(),
                dead_letters: store.dead_letters()?.len() as u64,
            }),
            Handle::Postgres(store) => store.glance().await,
        }
    }

    /// Registers `member` or renews its lease to `lease` from now.
    pub async fn renew_member(&self, member: &Member, lease: Duration) -> Result<(), Error> {
        match self {
            Handle::Local(store) => {
                store.renew_member(member, lease);
                Ok(())
            }
            Handle::Postgres(store) => store.renew_member(member, lease).await,
        }
    }

    /// Removes `instance` from the members (a clean stop).
    pub async fn leave(&self, instance: &str) -> Result<(), Error> {
        match self {
            Handle::Local(store) => {
                store.leave(instance);
                Ok(())
            }
            Handle::Postgres(store) => store.leave(instance).await,
        }
    }

    /// Every registered member, live or not, by instance name.
    pub async fn members(&self) -> Result<Vec<MemberStatus>, Error> {
        match self {
            Handle::Local(store) => Ok(store.members()),
            Handle::Postgres(store) => store.members().await,
        }
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        match self {
            Handle::Local(store) => store.dead_letters(),
            Handle::Postgres(store) => store.dead_letters().await,
        }
    }

    /// Moves every dead letter with `id <= through` back to the pending
    /// records (new seqs, same lanes); returns how many.
    pub async fn retry_dead_letters(&self, through: u64) -> Result<usize, Error> {
        match self {
            Handle::Local(store) => store.retry_dead_letters(through).await,
            Handle::Postgres(store) => store.retry_dead_letters(through).await,
        }
    }

    /// The control state.
    pub async fn control(&self) -> Result<Control, Error> {
        match self {
            Handle::Local(store) => Ok(store.control()),
            Handle::Postgres(store) => store.control().await,
        }
    }

    /// Writes the control state if its version is still `expected`;
    /// returns the new state (version + 1; a hold it publishes has that
    /// version as its id), or `None` when someone else wrote first.
    pub async fn set_control(
        &self,
        expected: u64,
        next: &NextControl,
    ) -> Result<Option<Control>, Error> {
        match self {
            Handle::Local(store) => {
                let store = Arc::clone(store);
                let next = next.clone();
                tokio::task::spawn_blocking(move || store.set_control(expected, &next))
                    .await
                    .map_err(|_| Error::Closed)?
            }
            Handle::Postgres(store) => store.set_control(expected, next).await,
        }
    }

    /// Records how far member `instance` has come with hold `hold`;
    /// `false` when it is not a member (its registration expired and was
    /// not renewed).
    pub async fn ack_hold(&self, instance: &str, hold: u64, ack: &HoldAck) -> Result<bool, Error> {
        match self {
            Handle::Local(store) => Ok(store.ack_hold(instance, hold, ack)),
            Handle::Postgres(store) => store.ack_hold(instance, hold, ack).await,
        }
    }

    /// Makes everything durable and closes the store; pending records stay
    /// for the next open.
    pub async fn close(self) -> Result<(), Error> {
        match self {
            Handle::Local(store) => store.close().await,
            Handle::Postgres(store) => {
                store.close().await;
                Ok(())
            }
        }
    }
}

/// Whether `url` is a connection URL or `key=value` string the store can
/// use (libpq's `sslmode` values included).
pub fn url_parses(url: &str) -> bool {
    postgres::ssl_verification(url)
        .0
        .parse::<tokio_postgres::Config>()
        .is_ok()
}

/// Connects to the database of `config` without changing anything and
/// reads its schema version (`handover check`).
pub async fn probe(config: &Config) -> Result<Schema, Error> {
    postgres::probe(config).await
}

fn cut_reason(reason: &str) -> &str {
    let mut cut = reason.len().min(journal::MAX_REASON_BYTES);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_unix_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
