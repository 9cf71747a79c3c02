//! What the journal needs from durable storage, as a trait: the embedded
//! segment files implement it today ([`super::segment::SegmentStore`]), a
//! PostgreSQL table can implement it for fleet mode (DESIGN.md §4) without
//! touching the group-commit, ack and cursor logic in `journal.rs`.
//!
//! The trait is **synchronous**. Every call comes from one of the journal's
//! two dedicated OS threads (the writer, which appends and syncs, and the
//! maintenance thread, which persists the cursor and deletes applied
//! records), never from an async task, so blocking file I/O is exactly what
//! those threads are for and no `spawn_blocking` hop sits on the append path.
//! A PostgreSQL store would use a blocking client on those same threads (or
//! a small runtime of its own); the calls are coarse (one per group commit),
//! so that costs nothing measurable.
//!
//! Contract every implementation keeps:
//!
//! - [`Store::recover`] is called once, before anything else, and returns the
//!   persisted cursor and every record at or above it, in seq order. It
//!   repairs what a crash can leave (a torn tail) and refuses, with an error
//!   naming the place, what a crash cannot explain (corruption in the middle,
//!   missing records).
//! - [`Store::append`] writes a whole batch or nothing: when it returns
//!   `Err`, no part of the batch may be visible to a later append or (as far
//!   as the store can ensure) to recovery. When it returns `Ok` with
//!   `sync = true`, the batch survives power loss.
//! - [`Store::persist_cursor`] is atomic: after a crash recovery sees the old
//!   or the new cursor, never a mix.
//! - [`Store::delete_applied`] only frees records below a cursor that was
//!   already persisted, so a crash in between cannot lose unapplied records.
//! - `append`/`sync` (writer thread) and `persist_cursor`/`delete_applied`
//!   (maintenance thread) may run concurrently; hence `&self` and `Sync`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{Entry, Error, Seq};

/// What recovery found, returned by [`Store::recover`] and by
/// [`super::Journal::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The persisted applied cursor: every record below it has been applied.
    pub cursor: Seq,
    /// The sequence number the next append gets.
    pub next_seq: Seq,
    /// Every record with `seq >= cursor`, in seq order. Records acknowledged
    /// after the last cursor persist come back too (at-least-once).
    pub entries: Vec<Entry>,
    /// The torn tail recovery cut off, if any.
    pub torn_tail: Option<TornTail>,
}

/// A torn tail removed by recovery: the bytes of a write that a crash cut
/// short. They were never acknowledged as durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the first byte removed (the file's new length).
    pub offset: u64,
    /// How many bytes were removed.
    pub discarded_bytes: u64,
}

/// Space used by a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of record data on disk (or in the table).
    pub bytes: u64,
    /// Number of segment files (0 for stores without segments).
    pub segments: usize,
    /// The smallest persisted cursor at which [`Store::delete_applied`] would
    /// free something, if any: for segments, the first seq of the second
    /// segment. Lets the journal persist the cursor as soon as a segment
    /// becomes fully applied instead of waiting for the timer.
    pub deletable_at: Option<Seq>,
}

/// Timings of one [`Store::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Bytes written.
    pub bytes: u64,
    /// Time spent writing.
    pub write: Duration,
    /// Time spent in `fdatasync` (`None` when not asked to sync).
    pub sync: Option<Duration>,
}

/// Durable storage for journal records. See the module doc for the contract.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Scans what is stored, repairs a torn tail, and returns the persisted
    /// cursor and the records at or above it. Called once, before any other
    /// method.
    fn recover(&mut self) -> Result<Recovery, Error>;

    /// Writes `entries` (consecutive seqs, starting at the `next_seq` the
    /// store expects) as one batch, and makes them durable first if `sync`.
    /// All or nothing.
    fn append(&self, entries: &[Entry], sync: bool) -> Result<Appended, Error>;

    /// Makes every appended record durable. Cheap when nothing is pending.
    fn sync(&self) -> Result<(), Error>;

    /// Atomically records that every seq below `cursor` has been applied.
    fn persist_cursor(&self, cursor: Seq) -> Result<(), Error>;

    /// Frees storage that holds only records below `cursor`, which must have
    /// been persisted with [`Store::persist_cursor`]. Returns how many units
    /// (segments) were freed.
    fn delete_applied(&self, cursor: Seq) -> Result<usize, Error>;

    /// Current space usage.
    fn usage(&self) -> Usage;
}
