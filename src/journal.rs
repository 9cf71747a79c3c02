//! The journal: the durable, ordered record of changes that must reach the
//! secondary (DESIGN.md §2 step 2, §4).
//!
//! # Guarantee
//!
//! When a trigger succeeds at the primary, the proxy appends a record
//! describing the change and releases the downstream response only after
//! [`Journal::append`] returned `Ok`. From that moment the record is
//! **never lost**, whatever instant the proxy is killed at; with
//! `sync = always` (the default) it also survives power loss. It stays in
//! the journal until a sync worker [`Journal::ack`]s it, and comes back from
//! [`Journal::open`] after any restart until then.
//!
//! Bodies are opaque bytes: the caller serialises its change records (keys,
//! or payloads such as revocations and token values). Every body is
//! encrypted at rest, because payloads carry tokens, session ids and client
//! secrets.
//!
//! # Invariants
//!
//! 1. Seqs are assigned by the single writer thread, consecutively; a
//!    failed group consumes none. Seqs returned by `append` strictly
//!    increase, across restarts too. A seq is only ever written twice if its
//!    first record never made it into the journal for good: its group
//!    failed (and was cut back), or it was in a torn tail cut by recovery;
//!    in both cases its `append` never returned `Ok`.
//! 2. A record is never half present: a failed write is truncated back to the
//!    last whole batch before anything else is written, and recovery cuts a
//!    torn tail. Nothing is ever written after a partial record.
//! 3. Only the last segment file is written. A segment is fdatasync'ed before
//!    the next one is created, and the directory is fsync'ed after each
//!    segment create and delete, so a crash can damage only the tail of the
//!    last segment.
//! 4. The applied cursor only moves forward; it is persisted atomically; a
//!    segment is deleted only when every record in it is below the
//!    *persisted* cursor.
//! 5. Corruption is never skipped: recovery either explains the damage as a
//!    torn tail (and cuts it, with a log line naming file, offset and size)
//!    or refuses to open with an error naming file and byte offset.
//! 6. One journal per directory: the directory is `flock`ed while open.
//!
//! # On-disk format
//!
//! ```text
//! <dir>/LOCK                         flock'd while open
//! <dir>/cursor                       seq u64 LE | crc32 u32 LE (12 bytes)
//! <dir>/NNNNNNNNNNNNNNNNNNNN.seg     20-digit first seq of the file; records back to back
//! <dir>/deadletters/                 the dead-letter log, same layout (see DeadLetters)
//! <dir>/registrations/               per-client credentials, same layout (see Registrations; a local store only)
//!
//! record:
//!   len    u32 LE    bytes after the crc field (37 + plaintext length)
//!   crc    u32 LE    CRC-32 (crc32fast) of those bytes
//!   seq    u64 LE
//!   flags  u8        0; readers refuse unknown bits
//!   nonce  [u8; 12]  random per record
//!   ciphertext + 16-byte tag   ChaCha20-Poly1305, associated data = seq ‖ flags
//!
//! plaintext = appended_at (unix ms, u64 LE) ‖ body
//! ```
//!
//! The CRC tells torn or rotted bytes from good ones without the key; the
//! AEAD keeps bodies secret and makes forged, edited or moved records fail
//! (the seq is authenticated). Nonces are random, never derived from the
//! seq, because a torn tail's seqs are reused (see `cipher.rs`). A record's
//! plaintext is at most [`record::MAX_PLAINTEXT`] (16 MiB, a format
//! constant that lets recovery call an absurd length corruption); appends are
//! limited by [`Config::max_record_bytes`] (default 1 MiB).
//!
//! # Write path and sync policies
//!
//! [`Journal::append`] checks sizes, sends the bodies to the writer thread
//! over a channel with a oneshot for the answer, and awaits it. The writer
//! drains every request queued at that moment, encrypts and frames them into
//! one buffer, issues one `write_all`, and then:
//!
//! - [`SyncPolicy::Always`] (default): one `fdatasync`, then answers every
//!   appender in the group. Requests arriving during that fdatasync form the
//!   next group, so one fsync covers everything that arrived while the
//!   previous one ran (group commit): throughput grows with concurrency
//!   while each append costs about one fsync of latency. **Survives**: kill
//!   at any instant, kernel panic, power loss (on storage that honours
//!   flushes).
//! - [`SyncPolicy::Interval`]: answers right after the `write_all` (the data
//!   is in the page cache, which belongs to the kernel, not the process), and
//!   the maintenance thread fdatasyncs at most once per interval.
//!   **Survives**: kill of the process at any instant. **Loses**, on power
//!   loss or kernel crash, up to one interval of acknowledged writes; if the
//!   cursor had already been persisted past them, recovery notices that the
//!   cursor is ahead of the log and carries on from the cursor.
//!
//! Errors (disk full, unwritable directory, EIO) come back to the appenders
//! of the failed group as `Err`. The partial write is truncated away (if
//! truncation fails too, the next append retries it before writing), and
//! the writer keeps serving later appends: the caller keeps forwarding,
//! raises the alarm (`/readyz`), and re-journals what failed with its next
//! successful append (DESIGN.md §2). An `Err` means the record is not
//! durable; in rare cases (fsync failed, truncation failed, then a crash) it
//! may still come back at recovery, which at-least-once sync tolerates. The
//! converse never happens.
//!
//! A failed background fsync (`interval`) cannot be reported to appenders
//! that were already answered: it is logged and reported to
//! [`Observer::on_error`], and retried at the next tick.
//!
//! # Acks and the applied cursor
//!
//! Sync workers call [`Journal::ack`] (non-blocking) in any order. The
//! journal keeps the acked seqs above the cursor and advances the cursor over
//! the contiguous prefix. The maintenance thread persists the cursor at most
//! once per [`Config::cursor_persist_interval`], immediately when a segment
//! becomes fully applied (so it can be deleted), and on flush/close; then it
//! deletes fully applied segments.
//!
//! # Recovery contract
//!
//! [`Journal::open`] returns every record with `seq >= persisted cursor`, in
//! seq order, decrypted. Delivery is **at least once**: records acked after
//! the last cursor persist come back and are re-applied, which the core rule
//! makes harmless (workers copy current state by key). Torn tails are cut
//! ([`Recovery::torn_tail`] says where); everything else that is wrong
//! (CRC failure with valid data after it, damage in an older segment, a
//! record that does not decrypt, a seq out of place, records missing above
//! the cursor, a damaged cursor file) is an [`Error`] that names the file
//! and offset. Recovery never skips a record silently.
//!
//! One case deserves a note: after a **power loss**, the filesystem may have
//! persisted pages of the final, not-yet-fsynced write out of order, leaving
//! a hole followed by intact records. Those records were never acknowledged
//! (with `always`), but recovery cannot tell such a hole from bit rot in
//! acknowledged data, so it refuses and names the offset; the operator can
//! truncate the file there. (ext4's default `data=ordered` writes appended
//! data before the size that exposes it, which makes this unlikely.)
//!
//! # Learning about entries
//!
//! The journal is a log, not a queue: it does not push entries anywhere.
//! The sync layer keeps its own in-memory work queue (keyed and coalesced
//! per DESIGN.md §2.4): it seeds it from [`Recovery::entries`] at startup
//! and adds each record right after [`Journal::append`] returns its seq.
//! This keeps one source of truth for "what is pending" in the caller, and
//! spares the journal a second copy of every body in memory.
//!
//! `append` is not cancel-safe in one respect: once sent, the request is
//! carried out even if the future is dropped. Such records are kept and
//! handed over by [`Journal::take_orphans`], so that nothing blocks the
//! cursor; callers that never drop append futures can ignore it.
//!
//! # Threads
//!
//! A writer thread (appends, group commit) and a maintenance thread
//! (interval fsync, cursor persistence, segment deletion); see `writer.rs`.
//! Storage sits behind the synchronous [`Store`] trait so a PostgreSQL store
//! can replace the segment files (`store.rs` explains why synchronous).
//! [`Journal`] handles are cheap clones of one `Arc`.
//!
//! # Dead letters
//!
//! [`DeadLetters`] reuses the same framing and segment store in
//! `<dir>/deadletters/` for records the sync layer gave up on.

mod cipher;
mod cursor;
mod deadletters;
mod io;
pub mod record;
mod registrations;
mod salvage;
mod segment;
mod store;
mod writer;

#[cfg(test)]
mod model_tests;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tracing::warn;

pub use cipher::{Cipher, CipherError, KEY_LEN, KeyError};
pub use deadletters::{DEAD_LETTERS_DIR, DeadLetter, DeadLetters, MAX_REASON_BYTES};
pub use io::{DIR_MODE, FILE_MODE, Faults, create_private_dir_all, private_file, replace_file};
pub use record::{EncodeError, FrameError};
pub use registrations::{ClientCredentials, REGISTRATIONS_DIR, Registrations};
pub use salvage::{
    Damage, DamageKind, LogReport, LogSalvage, QUARANTINE_DIR, Report, Salvaged, check, salvage,
};
pub use segment::SegmentStore;
pub use store::{Appended, Recovery, Store, TornTail, Usage};

use cursor::AckTracker;
use writer::{AppendRequest, Maintenance, MaintenanceMsg, State, Writer, WriterMsg, lock};

/// A record's sequence number: its position in the journal, starting at 0.
pub(crate) type Seq = u64;

/// Default segment file size: 64 MiB. Large enough that creating files (and
/// fsyncing the directory) is rare, small enough that a fully applied
/// segment frees its space soon and recovery reads little beyond the cursor.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Default largest body accepted by [`Journal::append`]: 1 MiB. A change
/// record is a key or a token payload (well under 4 KiB), and a client
/// registration with an inline JWK set stays far below 1 MiB; the limit
/// bounds the writer's memory and keeps one record from stalling a whole
/// group commit.
pub(crate) const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Default fdatasync interval for [`SyncPolicy::Interval`]: 5 ms, "every few
/// milliseconds" (DESIGN.md §4): a power loss costs at most this much of
/// acknowledged writes, and the disk sees at most 200 fsyncs a second.
pub(crate) const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(5);

/// Default [`Config::cursor_persist_interval`]: 1 s. A crash replays at most
/// about a second of already applied records (harmless: sync is
/// idempotent), while persisting costs three fsyncs, off the append path.
pub(crate) const DEFAULT_CURSOR_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync before `append` returns (group commit). Survives power loss.
    #[default]
    Always,
    /// `append` returns once the records are written to the OS; fdatasync
    /// at most once per interval. Survives a process kill, not power loss.
    Interval(Duration),
}

/// Journal settings. Build with [`Config::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory holding the segment files, the cursor and the lock.
    pub dir: PathBuf,
    /// Durability policy.
    pub sync: SyncPolicy,
    /// A new segment is started before a write would take the current one
    /// past this size (a single larger group still goes in whole).
    pub segment_bytes: u64,
    /// Largest body `append` accepts.
    pub max_record_bytes: usize,
    /// Longest time between cursor persists while acks keep coming.
    pub cursor_persist_interval: Duration,
    /// Failure injection (tests, rehearsals); inert by default.
    pub faults: Faults,
}

impl Config {
    /// Defaults for a journal in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sync: SyncPolicy::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            cursor_persist_interval: DEFAULT_CURSOR_PERSIST_INTERVAL,
            faults: Faults::default(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: String| Err(Error::InvalidConfig { field, reason });
        if self.segment_bytes == 0 {
            return invalid("journal.segment_bytes", "must be > 0".into());
        }
        let limit = record::MAX_PLAINTEXT - segment::TIMESTAMP_LEN;
        if self.max_record_bytes > limit {
            return invalid(
                "journal.max_record_bytes",
                format!("{} exceeds the format limit {limit}", self.max_record_bytes),
            );
        }
        if self.cursor_persist_interval.is_zero() {
            return invalid("journal.cursor_persist_interval", "must be > 0".into());
        }
        if self.sync == SyncPolicy::Interval(Duration::ZERO) {
            return invalid("journal.sync", "interval must be > 0".into());
        }
        Ok(())
    }
}

/// Journal errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed: creating the directory, opening,
    /// writing, syncing, renaming or deleting a file. Disk full and
    /// permission problems arrive here; the journal stays usable and the
    /// next append tries again.
    #[error("journal: {op} failed for {path}: {source}")]
    Io {
        /// What was being done ("write segment", "sync directory", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error (shared: one failure is reported to every appender
        /// of a group).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A body passed to `append` is larger than `max_record_bytes`.
    #[error("journal record too large: {bytes} bytes, limit {limit}")]
    RecordTooLarge {
        /// The body's size.
        bytes: usize,
        /// [`Config::max_record_bytes`].
        limit: usize,
    },
    /// Recovery found a bad record that a crash cannot explain: in a segment
    /// other than the last, or a record that passes its CRC but does not
    /// decrypt (wrong key or tampering).
    #[error(
        "journal file {path} is corrupt at byte {offset}: {reason}; refusing to open rather than skip records; run `handover journal check` to see the damage and `handover journal salvage` to keep every readable record (README: Durability)"
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: FrameError,
    },
    /// Recovery found a bad record in the last segment followed by a valid
    /// one: not a torn tail, so truncating would drop good records.
    #[error(
        "journal file {path} is corrupt at byte {offset}: {reason}, and a valid record follows at byte {valid_at}, so this is not a torn tail; refusing to open rather than skip records; run `handover journal check` to see the damage and `handover journal salvage` to keep every readable record (README: Durability)"
    )]
    CorruptBeforeValid {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: FrameError,
        /// Byte offset of the next valid-looking record.
        valid_at: u64,
    },
    /// A record passes its checks but carries a seq other than the next one.
    #[error(
        "journal file {path} holds seq {found} at byte {offset} where seq {expected} belongs; refusing to open; run `handover journal check` to see the damage and `handover journal salvage` to keep every readable record (README: Durability)"
    )]
    SeqMismatch {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The seq that should be there.
        expected: Seq,
        /// The seq found.
        found: Seq,
    },
    /// Segment files do not follow each other: records at or above the
    /// cursor are missing (a segment was deleted or never written).
    #[error(
        "journal records {expected}..{found} are missing before {path} (applied cursor {cursor}); refusing to open; run `handover journal check` to see the damage and `handover journal salvage` to keep every readable record (README: Durability)"
    )]
    Gap {
        /// The segment after the gap.
        path: PathBuf,
        /// The first missing seq.
        expected: Seq,
        /// The first seq present after the gap.
        found: Seq,
        /// The persisted cursor.
        cursor: Seq,
    },
    /// A record decrypted but its plaintext is malformed (a writer bug).
    #[error("journal {path} has a malformed record (seq {seq}): {reason}")]
    Payload {
        /// The segment file or log directory.
        path: PathBuf,
        /// The record's seq.
        seq: Seq,
        /// What is malformed.
        reason: &'static str,
    },
    /// The cursor file has the wrong size or fails its checksum.
    #[error(
        "journal cursor file {path} is corrupt: {reason}; run `handover journal salvage` to replace it (README: Durability)"
    )]
    CorruptCursor {
        /// The cursor file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `.seg` file whose name is not a 20-digit sequence number.
    #[error("unexpected journal file {path}: segment names are 20 decimal digits and .seg")]
    BadSegmentName {
        /// The file.
        path: PathBuf,
    },
    /// `handover journal salvage` found no pending record that decrypts,
    /// although their checksums are good: the key is not the one the
    /// journal was written with, and salvaging would discard every record.
    #[error(
        "no pending record in {dir} decrypts with this key, although their checksums are good: is journal.payload_key the key this journal was written with? Nothing was changed"
    )]
    WrongKey {
        /// The log directory.
        dir: PathBuf,
    },
    /// Another journal (in this or another process) has the directory open.
    #[error(
        "journal directory {dir} is locked by another journal (two handover instances sharing it?)"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A [`Config`] value is out of range.
    #[error("invalid journal config: {field}: {reason}")]
    InvalidConfig {
        /// The config field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Encrypting a record failed (the system RNG failed).
    #[error("cannot encode journal record: {0}")]
    Encode(#[from] EncodeError),
    /// The journal was closed, or its writer thread is gone.
    #[error("journal is closed")]
    Closed,
}

/// One record.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number.
    pub seq: Seq,
    /// The caller's body, decrypted.
    pub body: Vec<u8>,
    /// When the writer appended it (wall clock, millisecond precision after
    /// a restart).
    pub appended_at: SystemTime,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies may carry tokens and client secrets: never print them.
        f.debug_struct("Entry")
            .field("seq", &self.seq)
            .field("body_len", &self.body.len())
            .field("appended_at", &self.appended_at)
            .finish()
    }
}

/// One group commit, as reported to [`Observer::on_commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// `append` calls answered by it.
    pub requests: usize,
    /// Records written.
    pub records: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Time in `write`.
    pub write: Duration,
    /// Time in `fdatasync` (`None` under [`SyncPolicy::Interval`]).
    pub fsync: Option<Duration>,
}

/// Hooks for metrics (fsync latency, group size, failures). Called on the
/// journal's threads: keep them cheap and non-blocking.
pub trait Observer: Send + Sync + 'static {
    /// After every successful group commit, before the appenders are
    /// answered.
    fn on_commit(&self, commit: &Commit) {
        let _ = commit;
    }
    /// After every background fdatasync (interval policy, flush, close).
    fn on_sync(&self, fsync: Duration) {
        let _ = fsync;
    }
    /// After a failed write, sync, cursor persist or segment deletion.
    fn on_error(&self, error: &Error) {
        let _ = error;
    }
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoopObserver;

impl Observer for NoopObserver {}

/// A snapshot of the journal's state, for `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// The highest seq handed out, if any.
    pub last_seq: Option<Seq>,
    /// The in-memory applied cursor: every seq below it is acked.
    pub applied_cursor: Seq,
    /// The cursor as last persisted.
    pub persisted_cursor: Seq,
    /// Records appended (or recovered) and not yet acked.
    pub depth: u64,
    /// Age of the oldest unacked record (`None` when depth is 0).
    pub oldest_unacked_age: Option<Duration>,
    /// Bytes of segment files.
    pub bytes_on_disk: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Records waiting in [`Journal::take_orphans`].
    pub orphans: usize,
}

/// A handle to an open journal. Clones share it. Dropping the last handle
/// closes the journal in the background; [`Journal::close`] does it and
/// waits.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Handle>,
}

struct Handle {
    writer: mpsc::Sender<WriterMsg>,
    maintenance: mpsc::Sender<MaintenanceMsg>,
    state: Arc<Mutex<State>>,
    max_record_bytes: usize,
    /// Joined by the test-only `crash`; elsewhere the threads end on their own.
    #[cfg(test)]
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `config.dir`, recovers it,
    /// and starts its threads. Returns the records still to apply.
    ///
    /// Blocking (it reads every segment at or above the cursor): call it at
    /// startup or from `spawn_blocking`.
    pub fn open(config: Config, cipher: Cipher) -> Result<(Journal, Recovery), Error> {
        Self::open_with_observer(config, cipher, Arc::new(NoopObserver))
    }

    /// [`Journal::open`] with an [`Observer`] for metrics.
    pub fn open_with_observer(
        config: Config,
        cipher: Cipher,
        observer: Arc<dyn Observer>,
    ) -> Result<(Journal, Recovery), Error> {
        config.validate()?;
        let store = SegmentStore::open(&config.dir, cipher, config.segment_bytes)?
            .with_faults(config.faults.clone());
        Self::open_with_store(store, &config, observer)
    }

    /// Opens a journal over any [`Store`] (`config.dir` and
    /// `config.segment_bytes` are then the store's business).
    pub(crate) fn open_with_store<S: Store>(
        mut store: S,
        config: &Config,
        observer: Arc<dyn Observer>,
    ) -> Result<(Journal, Recovery), Error> {
        config.validate()?;
        let recovery = store.recover()?;
        let store: Arc<dyn Store> = Arc::new(store);
        let mut groups = std::collections::VecDeque::new();
        for entry in &recovery.entries {
            if groups.back().is_none_or(|&(_, at)| at != entry.appended_at) {
                groups.push_back((entry.seq, entry.appended_at));
            }
        }
        let state = Arc::new(Mutex::new(State {
            next_seq: recovery.next_seq,
            acks: AckTracker::new(recovery.cursor),
            persisted_cursor: recovery.cursor,
            groups,
            usage: store.usage(),
            orphans: Vec::new(),
        }));
        let (writer_tx, writer_rx) = mpsc::channel();
        let (maintenance_tx, maintenance_rx) = mpsc::channel();
        let writer = Writer {
            store: Arc::clone(&store),
            rx: writer_rx,
            state: Arc::clone(&state),
            policy: config.sync,
            observer: Arc::clone(&observer),
            next_seq: recovery.next_seq,
        };
        let maintenance = Maintenance {
            store,
            rx: maintenance_rx,
            state: Arc::clone(&state),
            policy: config.sync,
            observer,
            cursor_interval: config.cursor_persist_interval,
            persisted: recovery.cursor,
        };
        let spawn_error = |err| Error::Io {
            op: "spawn journal thread",
            path: config.dir.clone(),
            source: Arc::new(err),
        };
        let writer_thread = thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(spawn_error)?;
        let maintenance_thread = thread::Builder::new()
            .name("journal-maintenance".into())
            .spawn(move || maintenance.run())
            .map_err(spawn_error)?;
        #[cfg(not(test))]
        drop((writer_thread, maintenance_thread));
        let journal = Journal {
            inner: Arc::new(Handle {
                writer: writer_tx,
                maintenance: maintenance_tx,
                state,
                max_record_bytes: config.max_record_bytes,
                #[cfg(test)]
                threads: Mutex::new(vec![writer_thread, maintenance_thread]),
            }),
        };
        Ok((journal, recovery))
    }

    /// Appends one body; returns its seq once durable per the sync policy.
    pub async fn append(&self, body: Vec<u8>) -> Result<Seq, Error> {
        let seqs = self.append_batch(vec![body]).await?;
        Ok(seqs.start)
    }

    /// Appends bodies as consecutive records, all in the same group commit;
    /// returns their seqs once durable per the sync policy. All or nothing.
    ///
    /// Once the request is sent it is carried out even if this future is
    /// dropped; see [`Journal::take_orphans`].
    pub async fn append_batch(&self, bodies: Vec<Vec<u8>>) -> Result<Range<Seq>, Error> {
        let limit = self.inner.max_record_bytes;
        if let Some(body) = bodies.iter().find(|b| b.len() > limit) {
            return Err(Error::RecordTooLarge {
                bytes: body.len(),
                limit,
            });
        }
        if bodies.is_empty() {
            let next = lock(&self.inner.state).next_seq;
            return Ok(next..next);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(WriterMsg::Append(AppendRequest { bodies, reply }))
            .map_err(|_| Error::Closed)?;
        answer
            .await
            .map_err(|_| Error::Closed)?
            .map(writer::Delivery::accept)
    }

    /// Marks `seq` as applied. Non-blocking; any order; duplicates and seqs
    /// below the cursor are ignored.
    pub fn ack(&self, seq: Seq) {
        let wake = {
            let mut state = lock(&self.inner.state);
            if seq >= state.next_seq {
                drop(state);
                warn!(seq, "ignored an ack for a journal seq never appended");
                return;
            }
            let before = state.acks.cursor();
            if !state.acks.ack(seq) {
                return;
            }
            let after = state.acks.cursor();
            state.trim_groups();
            state
                .usage
                .deletable_at
                .is_some_and(|at| before < at && at <= after)
        };
        if wake {
            // The maintenance thread may be gone after close(); nothing to do then.
            let _ = self.inner.maintenance.send(MaintenanceMsg::Wake);
        }
    }

    /// A snapshot of the journal's state.
    pub fn stats(&self) -> Stats {
        let mut state = lock(&self.inner.state);
        state.trim_groups();
        let cursor = state.acks.cursor();
        let depth = state.next_seq.saturating_sub(cursor) - state.acks.acked_above_cursor();
        let oldest_unacked_age = (depth > 0)
            .then(|| state.groups.front())
            .flatten()
            .map(|&(_, at)| SystemTime::now().duration_since(at).unwrap_or_default());
        Stats {
            last_seq: state.next_seq.checked_sub(1),
            applied_cursor: cursor,
            persisted_cursor: state.persisted_cursor,
            depth,
            oldest_unacked_age,
            bytes_on_disk: state.usage.bytes,
            segments: state.usage.segments,
            orphans: state.orphans.len(),
        }
    }

    /// Records that were written but whose `append` future was dropped
    /// before it learned their seqs. The caller should treat them like
    /// recovered entries (apply, then ack).
    pub(crate) fn take_orphans(&self) -> Vec<Entry> {
        std::mem::take(&mut lock(&self.inner.state).orphans)
    }

    /// fdatasyncs everything appended so far and persists the applied
    /// cursor (shutdown steps 5 and 6, or on demand).
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .maintenance
            .send(MaintenanceMsg::Flush { reply })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Stops the writer (after syncing what it wrote), then persists the
    /// cursor and stops the maintenance thread. When this returns the
    /// directory is unlocked. Appends through other clones fail with
    /// [`Error::Closed`] afterwards.
    pub async fn close(self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        let written = match self.inner.writer.send(WriterMsg::Close { reply }) {
            Ok(()) => answer.await.unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        let (reply, answer) = oneshot::channel();
        let persisted = match self.inner.maintenance.send(MaintenanceMsg::Stop { reply }) {
            Ok(()) => answer.await.unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        written.and(persisted)
    }

    /// Stops both threads at once without syncing or persisting anything,
    /// as a `kill -9` would (the page cache, i.e. everything written, stays),
    /// and waits until they are gone so the directory can be reopened.
    #[cfg(test)]
    pub(crate) fn crash(self) {
        let _ = self.inner.writer.send(WriterMsg::Crash);
        let _ = self.inner.maintenance.send(MaintenanceMsg::Crash);
        let threads = std::mem::take(
            &mut *self
                .inner
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for thread in threads {
            let _ = thread.join();
        }
    }
}
