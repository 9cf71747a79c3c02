//! The embedded [`Store`]: append-only segment files in one directory.
//!
//! ```text
//! <dir>/LOCK                          flock'd while a store has the dir open
//! <dir>/cursor                        the persisted applied cursor (cursor.rs)
//! <dir>/00000000000000000000.seg      records 0..k      (fully applied: deleted soon)
//! <dir>/0000000000000000000k.seg      records k..       (the last one is the active one)
//! ```
//!
//! A segment is named after the seq of its first record, zero-padded to 20
//! digits so names sort like numbers. Records in a segment have consecutive
//! seqs, and each segment starts where the previous one ended, except across
//! a gap that lies entirely below the applied cursor (see [`SegmentStore`]'s
//! recovery rules). Each record's plaintext is `appended_at` (unix
//! milliseconds, u64 LE) followed by the body, so the age of a backlog
//! survives a restart.
//!
//! Only the last segment is ever written. Before a newer segment is created
//! the old one is fdatasync'ed, and the directory is fsync'ed after every
//! create and delete: so on any crash, damage can only be in the tail of the
//! last segment, and recovery can treat damage anywhere else as corruption.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::cipher::Cipher;
use super::cursor;
use super::io::{fsync_dir, io_error};
use super::record::{self, FrameError, MIN_LEN, PREFIX_LEN};
use super::store::{Appended, Recovery, Store, TornTail, Usage};
use super::{Entry, Error, Seq};

/// Name of the lock file held (with `flock`) while a store is open.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Extension of segment files.
pub(crate) const SEGMENT_EXTENSION: &str = "seg";

/// Bytes of the `appended_at` prefix in each record's plaintext.
pub(crate) const TIMESTAMP_LEN: usize = 8;

/// Read buffer used while scanning segments at recovery.
const SCAN_BUFFER_BYTES: usize = 256 * 1024;

/// The path of the segment whose first record is `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: Seq) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_EXTENSION}"))
}

pub(super) fn parse_segment_name(path: &Path) -> Option<Result<Seq, Error>> {
    if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXTENSION) {
        return None;
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let valid = stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit());
    Some(
        stem.parse::<Seq>()
            .ok()
            .filter(|_| valid)
            .ok_or_else(|| Error::BadSegmentName {
                path: path.to_path_buf(),
            }),
    )
}

/// Splits a record plaintext into (`appended_at`, body).
fn decode_payload(plaintext: Vec<u8>) -> Option<(SystemTime, Vec<u8>)> {
    let ms = u64::from_le_bytes(*plaintext.first_chunk::<TIMESTAMP_LEN>()?);
    let body = plaintext[TIMESTAMP_LEN..].to_vec();
    Some((SystemTime::UNIX_EPOCH + Duration::from_millis(ms), body))
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
struct SegmentMeta {
    first_seq: Seq,
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
struct Active {
    /// Shared so that the maintenance thread can fdatasync it without
    /// holding the store's lock, which the writer needs to append.
    file: Arc<File>,
    first_seq: Seq,
    /// Length of the valid prefix: everything up to the last whole batch.
    len: u64,
    /// Length known to be fdatasync'ed.
    synced: u64,
    /// Bumped whenever the file is cut back, so that a concurrent sync that
    /// started before the cut does not vouch for bytes written after it.
    generation: u64,
    /// A failed write could not be truncated away; the next append retries
    /// the truncation before writing anything.
    needs_repair: bool,
}

#[derive(Debug)]
struct Inner {
    /// Ordered by `first_seq`; the last one is the active segment.
    segments: Vec<SegmentMeta>,
    active: Option<Active>,
    next_seq: Seq,
}

/// Segment files in one directory. See the module doc for the layout.
///
/// Recovery rules ([`Store::recover`]):
///
/// 1. Segments whose records all lie below the persisted cursor are deleted
///    unread (their deletion was merely pending).
/// 2. Every remaining record must pass its CRC and carry the expected seq.
///    Records at or above the cursor are decrypted; one that does not
///    decrypt (wrong key, tampering) is an error, never skipped.
/// 3. A bad record in the **last** segment with nothing valid after it is a
///    torn tail: the file is truncated at its offset (logged with path,
///    offset and size) and fsync'ed.
/// 4. A bad record with a valid record anywhere after it, or a bad record in
///    any other segment, is corruption: recovery refuses, naming the file and
///    byte offset.
/// 5. Missing seqs between segments are accepted only below the cursor
///    (records that were applied and then lost, e.g. `interval` sync and a
///    power loss after the cursor was persisted); otherwise recovery refuses.
#[derive(Debug)]
pub struct SegmentStore {
    dir: PathBuf,
    cipher: Cipher,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// Held for the store's lifetime: two journals appending to one directory
    /// would interleave records and destroy both.
    _lock: File,
    /// Failure injection (inert unless a test turns it on).
    faults: super::io::Faults,
}

impl SegmentStore {
    /// Opens (creating it if needed) the journal directory `dir` and locks
    /// it. Nothing is read until [`Store::recover`].
    pub fn open(
        dir: impl Into<PathBuf>,
        cipher: Cipher,
        segment_bytes: u64,
    ) -> Result<Self, Error> {
        let dir = dir.into();
        if !dir.is_dir() {
            super::io::create_private_dir_all(&dir)
                .map_err(|err| io_error("create directory", &dir, err))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = super::io::private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|err| io_error("open lock file", &lock_path, err))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { dir }),
            Err(fs::TryLockError::Error(err)) => {
                return Err(io_error("lock", &lock_path, err));
            }
        }
        Ok(Self {
            dir,
            cipher,
            segment_bytes: segment_bytes.max(1),
            inner: Mutex::new(Inner {
                segments: Vec::new(),
                active: None,
                next_seq: 0,
            }),
            _lock: lock,
            faults: super::io::Faults::default(),
        })
    }

    /// Writes fail while `faults` says the disk is full.
    pub fn with_faults(mut self, faults: super::io::Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves `Inner` consistent enough:
        // every mutation is a single assignment after the I/O succeeded.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn list_segments(&self) -> Result<Vec<SegmentMeta>, Error> {
        let mut segments = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|err| io_error("list directory", &self.dir, err))?;
        for entry in entries {
            let entry = entry.map_err(|err| io_error("list directory", &self.dir, err))?;
            let path = entry.path();
            let Some(first_seq) = parse_segment_name(&path) else {
                continue;
            };
            let first_seq = first_seq?;
            let bytes = entry
                .metadata()
                .map_err(|err| io_error("stat segment", &path, err))?
                .len();
            segments.push(SegmentMeta {
                first_seq,
                path,
                bytes,
            });
        }
        segments.sort_by_key(|s| s.first_seq);
        Ok(segments)
    }

    /// Scans one segment, pushing records at or above `cursor` to `entries`.
    /// Returns the seq after its last record and the torn tail it removed.
    fn scan_segment(
        &self,
        segment: &mut SegmentMeta,
        is_last: bool,
        cursor: Seq,
        entries: &mut Vec<Entry>,
    ) -> Result<(Seq, Option<TornTail>), Error> {
        let path = segment.path.clone();
        let file = File::open(&path).map_err(|err| io_error("open segment", &path, err))?;
        let file_len = segment.bytes;
        let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
        let read_err = |err| io_error("read segment", &path, err);
        let mut offset = 0u64;
        let mut expected = segment.first_seq;
        let mut frame = Vec::new();
        'records: while offset < file_len {
            let available = usize::try_from(file_len - offset).unwrap_or(usize::MAX);
            let bad: FrameError = 'frame: {
                let mut prefix = [0u8; PREFIX_LEN];
                if available < PREFIX_LEN {
                    break 'frame FrameError::Incomplete {
                        needed: PREFIX_LEN,
                        available,
                    };
                }
                reader.read_exact(&mut prefix).map_err(read_err)?;
                let total = match record::frame_len(&prefix) {
                    Ok(total) => total,
                    Err(err) => break 'frame err,
                };
                if total > available {
                    break 'frame FrameError::Incomplete {
                        needed: total,
                        available,
                    };
                }
                frame.clear();
                frame.extend_from_slice(&prefix);
                frame.resize(total, 0);
                reader
                    .read_exact(&mut frame[PREFIX_LEN..])
                    .map_err(read_err)?;
                let parsed = match record::parse(&frame) {
                    Ok(parsed) => parsed,
                    Err(err) => break 'frame err,
                };
                if parsed.seq != expected {
                    return Err(Error::SeqMismatch {
                        path,
                        offset,
                        expected,
                        found: parsed.seq,
                    });
                }
                // Records below the cursor were applied: their CRC is
                // checked (corruption is reported wherever it is) but they
                // are not decrypted.
                if parsed.seq >= cursor {
                    let plaintext = parsed.open(&self.cipher).map_err(|reason| Error::Corrupt {
                        path: path.clone(),
                        offset,
                        reason,
                    })?;
                    let Some((appended_at, body)) = decode_payload(plaintext) else {
                        return Err(Error::Payload {
                            path,
                            seq: parsed.seq,
                            reason: "plaintext shorter than its timestamp",
                        });
                    };
                    entries.push(Entry {
                        seq: parsed.seq,
                        body,
                        appended_at,
                    });
                }
                offset += total as u64;
                expected += 1;
                continue 'records;
            };
            drop(reader);
            let torn = self.classify_bad_record(segment, is_last, offset, expected, bad)?;
            return Ok((expected, Some(torn)));
        }
        Ok((expected, None))
    }

    /// Decides whether the bad record at `offset` is a torn tail (truncate)
    /// or corruption (refuse).
    fn classify_bad_record(
        &self,
        segment: &mut SegmentMeta,
        is_last: bool,
        offset: u64,
        expected: Seq,
        reason: FrameError,
    ) -> Result<TornTail, Error> {
        let path = &segment.path;
        if !is_last {
            // Older segments were fdatasync'ed before the next one was
            // created: a crash cannot have damaged them.
            return Err(Error::Corrupt {
                path: path.clone(),
                offset,
                reason,
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|err| io_error("open segment", path, err))?;
        let mut rest = Vec::new();
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut rest))
            .map_err(|err| io_error("read segment", path, err))?;
        if let Some(at) = find_valid_frame(&rest, expected) {
            return Err(Error::CorruptBeforeValid {
                path: path.clone(),
                offset,
                reason,
                valid_at: offset + at as u64,
            });
        }
        let discarded_bytes = rest.len() as u64;
        warn!(
            path = %path.display(),
            offset,
            discarded_bytes,
            reason = %reason,
            "truncating torn journal tail"
        );
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(|err| io_error("truncate torn tail", path, err))?;
        segment.bytes = offset;
        Ok(TornTail {
            path: path.clone(),
            offset,
            discarded_bytes,
        })
    }

    /// Creates (or reuses, if a previous attempt left it empty) the segment
    /// starting at `first_seq` and makes its directory entry durable.
    fn create_segment(&self, first_seq: Seq) -> Result<(SegmentMeta, Active), Error> {
        let path = segment_path(&self.dir, first_seq);
        let file = super::io::private_file()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|err| io_error("create segment", &path, err))?;
        let len = file
            .metadata()
            .map_err(|err| io_error("stat segment", &path, err))?
            .len();
        if len != 0 {
            // Only possible if someone else writes here (the lock keeps
            // other journals out): refuse rather than append after unknown
            // data.
            return Err(io_error(
                "create segment",
                &path,
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("segment already exists with {len} bytes"),
                ),
            ));
        }
        fsync_dir(&self.dir)?;
        Ok((
            SegmentMeta {
                first_seq,
                path,
                bytes: 0,
            },
            Active {
                file: Arc::new(file),
                first_seq,
                len: 0,
                synced: 0,
                generation: 0,
                needs_repair: false,
            },
        ))
    }

    fn open_active(path: &Path, first_seq: Seq, len: u64) -> Result<Active, Error> {
        // O_APPEND: after a failed write is truncated away, the next write
        // lands at the new end without any seek bookkeeping.
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|err| io_error("open segment", path, err))?;
        // A kill can leave written but never fsynced records (a group whose
        // fsync did not finish, or `interval` data). Recovery hands them out
        // as pending, so make them durable before anyone acts on them.
        file.sync_data()
            .map_err(|err| io_error("sync segment", path, err))?;
        Ok(Active {
            file: Arc::new(file),
            first_seq,
            len,
            synced: len,
            generation: 0,
            needs_repair: false,
        })
    }

    fn encode_batch(&self, entries: &[Entry]) -> Result<Vec<u8>, Error> {
        let size: usize = entries
            .iter()
            .map(|e| PREFIX_LEN + MIN_LEN as usize + TIMESTAMP_LEN + e.body.len())
            .sum();
        let mut buf = Vec::with_capacity(size);
        let mut plaintext = Vec::new();
        for entry in entries {
            plaintext.clear();
            plaintext.extend_from_slice(&unix_ms(entry.appended_at).to_le_bytes());
            plaintext.extend_from_slice(&entry.body);
            record::encode_into(&mut buf, entry.seq, &plaintext, &self.cipher)?;
        }
        Ok(buf)
    }
}

/// The offset in `rest` (past its first byte) of a frame that passes its
/// CRC and has a plausible seq (at or after `expected`), if any. Used to tell
/// a torn tail (nothing valid after the damage) from mid-file corruption.
pub(super) fn find_valid_frame(rest: &[u8], expected: Seq) -> Option<usize> {
    let min_frame = PREFIX_LEN + MIN_LEN as usize;
    let max_seq = expected.saturating_add((rest.len() / min_frame) as u64 + 1);
    (1..rest.len()).find(|&at| {
        let tail = &rest[at..];
        let Some(prefix) = tail.first_chunk::<PREFIX_LEN>() else {
            return false;
        };
        // Cheap checks first: a CRC over a random length at every offset
        // would be quadratic.
        let Ok(total) = record::frame_len(prefix) else {
            return false;
        };
        if total > tail.len() {
            return false;
        }
        let seq = u64::from_le_bytes(
            *tail[PREFIX_LEN..]
                .first_chunk::<8>()
                .expect("total >= MIN_LEN covers the seq"),
        );
        (expected..=max_seq).contains(&seq) && record::parse(tail).is_ok()
    })
}

impl Active {
    /// Cuts the file back to the last whole batch after a failed write or
    /// sync, so no half record is ever followed by new records.
    fn roll_back(&mut self, path: &Path) {
        self.generation += 1;
        self.synced = self.synced.min(self.len);
        match self.file.set_len(self.len) {
            Ok(()) => self.needs_repair = false,
            Err(err) => {
                warn!(path = %path.display(), offset = self.len, error = %err,
                    "failed to truncate a failed journal write; retrying before the next append");
                self.needs_repair = true;
            }
        }
    }
}

impl Store for SegmentStore {
    fn recover(&mut self) -> Result<Recovery, Error> {
        let persisted = cursor::read(&self.dir)?;
        let mut segments = self.list_segments()?;
        let cursor = match persisted {
            Some(cursor) => cursor,
            None => {
                let first = segments.first().map_or(0, |s| s.first_seq);
                if first > 0 {
                    warn!(dir = %self.dir.display(), first_seq = first,
                        "replaying every journal record present: cursor file missing");
                }
                first
            }
        };

        // Rule 1: segments entirely below the cursor.
        let applied = segments
            .windows(2)
            .take_while(|pair| pair[1].first_seq <= cursor)
            .count();
        if applied > 0 {
            for segment in segments.drain(..applied) {
                match fs::remove_file(&segment.path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io_error("delete applied segment", &segment.path, err)),
                }
            }
            fsync_dir(&self.dir)?;
        }

        let mut entries = Vec::new();
        let mut torn_tail = None;
        let mut log_end: Option<Seq> = None;
        let count = segments.len();
        for (i, segment) in segments.iter_mut().enumerate() {
            // Rule 5: the records that must exist are [cursor, next_seq).
            let expected = log_end.unwrap_or(cursor);
            if log_end.is_some_and(|end| segment.first_seq < end) {
                // Overlaps the previous segment: its first record cannot
                // carry the seq its name promises and the one that belongs.
                return Err(Error::SeqMismatch {
                    path: segment.path.clone(),
                    offset: 0,
                    expected,
                    found: segment.first_seq,
                });
            }
            // Missing seqs are fine only below the cursor (applied).
            if segment.first_seq > expected && segment.first_seq > cursor {
                return Err(Error::Gap {
                    path: segment.path.clone(),
                    expected,
                    found: segment.first_seq,
                    cursor,
                });
            }
            let (end, torn) = self.scan_segment(segment, i + 1 == count, cursor, &mut entries)?;
            log_end = Some(end);
            torn_tail = torn_tail.or(torn);
        }

        let next_seq = log_end.map_or(cursor, |end| end.max(cursor));
        let reuse_last = segments.last().is_some_and(|last| {
            log_end == Some(next_seq) && (last.bytes > 0 || last.first_seq == next_seq)
        });
        let active = if reuse_last {
            let last = segments.last().expect("reuse_last implies a last segment");
            Self::open_active(&last.path, last.first_seq, last.bytes)?
        } else {
            if let Some(end) = log_end.filter(|&end| end < next_seq) {
                warn!(dir = %self.dir.display(), log_end = end, cursor,
                    "starting the journal at its cursor, which is ahead of the log: the missing \
                     records were applied before they were lost (sync = interval and a power loss?)");
            }
            // An empty last segment with the wrong name would break the
            // "a segment starts with its name" rule once written to.
            if let Some(last) = segments.pop_if(|last| last.bytes == 0) {
                fs::remove_file(&last.path)
                    .map_err(|err| io_error("delete empty segment", &last.path, err))?;
            }
            let (meta, active) = self.create_segment(next_seq)?;
            segments.push(meta);
            active
        };
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        inner.active = Some(active);
        inner.segments = segments;
        inner.next_seq = next_seq;
        info!(
            dir = %self.dir.display(),
            cursor,
            next_seq,
            pending = entries.len(),
            segments = inner.segments.len(),
            "recovered journal"
        );
        Ok(Recovery {
            cursor,
            next_seq,
            entries,
            torn_tail,
        })
    }

    fn append(&self, entries: &[Entry], sync: bool) -> Result<Appended, Error> {
        let Some(first) = entries.first() else {
            return Ok(Appended {
                bytes: 0,
                write: Duration::ZERO,
                sync: None,
            });
        };
        let buf = self.encode_batch(entries)?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        debug_assert_eq!(first.seq, inner.next_seq, "appends must be consecutive");
        let mut active = inner.active.take().ok_or(Error::Closed)?;
        let result = (|| {
            let path = inner
                .segments
                .last()
                .map(|s| s.path.clone())
                .ok_or(Error::Closed)?;
            if active.needs_repair {
                active.roll_back(&path);
                if active.needs_repair {
                    return Err(io_error(
                        "truncate failed write",
                        &path,
                        io::Error::other("previous truncation failed"),
                    ));
                }
            }
            if active.len > 0 && active.len + buf.len() as u64 > self.segment_bytes {
                // Recovery treats damage outside the last segment as
                // corruption, so the old one must be durable first.
                if active.synced < active.len {
                    active
                        .file
                        .sync_data()
                        .map_err(|err| io_error("sync segment", &path, err))?;
                    active.synced = active.len;
                }
                let (meta, new_active) = self.create_segment(first.seq)?;
                inner.segments.push(meta);
                active = new_active;
            }
            let path = inner
                .segments
                .last()
                .map(|s| s.path.clone())
                .ok_or(Error::Closed)?;
            let started = Instant::now();
            if let Err(err) = self
                .faults
                .check_write()
                .and_then(|()| (&*active.file).write_all(&buf))
            {
                active.roll_back(&path);
                return Err(io_error("write segment", &path, err));
            }
            let write = started.elapsed();
            let synced = if sync {
                let started = Instant::now();
                if let Err(err) = active.file.sync_data() {
                    // Err must mean "not in the journal": cut the batch off
                    // (the appenders are told it failed).
                    active.roll_back(&path);
                    return Err(io_error("sync segment", &path, err));
                }
                active.len += buf.len() as u64;
                active.synced = active.len;
                Some(started.elapsed())
            } else {
                active.len += buf.len() as u64;
                None
            };
            Ok(Appended {
                bytes: buf.len() as u64,
                write,
                sync: synced,
            })
        })();
        if let (Ok(_), Some(last)) = (&result, inner.segments.last_mut()) {
            last.bytes = active.len;
            inner.next_seq = first.seq + entries.len() as u64;
        }
        inner.active = Some(active);
        result
    }

    fn sync(&self) -> Result<(), Error> {
        let (file, path, first_seq, generation, target) = {
            let inner = self.lock();
            let Some(active) = inner.active.as_ref().filter(|a| a.synced < a.len) else {
                return Ok(());
            };
            let path = inner
                .segments
                .last()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            (
                Arc::clone(&active.file),
                path,
                active.first_seq,
                active.generation,
                active.len,
            )
        };
        // Outside the lock: under `interval` the writer keeps appending
        // while this runs.
        file.sync_data()
            .map_err(|err| io_error("sync segment", &path, err))?;
        let mut inner = self.lock();
        if let Some(active) = inner.active.as_mut()
            && active.first_seq == first_seq
            && active.generation == generation
        {
            active.synced = active.synced.max(target);
        }
        Ok(())
    }

    fn persist_cursor(&self, cursor: Seq) -> Result<(), Error> {
        cursor::write(&self.dir, cursor)
    }

    fn delete_applied(&self, cursor: Seq) -> Result<usize, Error> {
        let doomed: Vec<PathBuf> = {
            let inner = self.lock();
            inner
                .segments
                .windows(2)
                .take_while(|pair| pair[1].first_seq <= cursor)
                .map(|pair| pair[0].path.clone())
                .collect()
        };
        let mut deleted = 0;
        let mut result = Ok(());
        for path in &doomed {
            match fs::remove_file(path) {
                Ok(()) => deleted += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => deleted += 1,
                Err(err) => {
                    result = Err(io_error("delete applied segment", path, err));
                    break;
                }
            }
        }
        if deleted > 0 {
            // Only the oldest segments are ever deleted and only the writer
            // adds segments (at the end), so the first `deleted` entries are
            // still the ones removed.
            self.lock().segments.drain(..deleted);
            fsync_dir(&self.dir)?;
        }
        result.map(|()| deleted)
    }

    fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage {
            bytes: inner.segments.iter().map(|s| s.bytes).sum(),
            segments: inner.segments.len(),
            deletable_at: inner.segments.get(1).map(|s| s.first_seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new([3; 32])
    }

    fn entry(seq: Seq, body: &[u8]) -> Entry {
        Entry {
            seq,
            body: body.to_vec(),
            appended_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + seq),
        }
    }

    fn open(dir: &Path, segment_bytes: u64) -> (SegmentStore, Recovery) {
        let mut store = SegmentStore::open(dir, cipher(), segment_bytes).unwrap();
        let recovery = store.recover().unwrap();
        (store, recovery)
    }

    fn append(store: &SegmentStore, seqs: std::ops::Range<Seq>) {
        let entries: Vec<Entry> = seqs
            .map(|s| entry(s, format!("body {s}").as_bytes()))
            .collect();
        store.append(&entries, true).unwrap();
    }

    /// A store whose `count` records were appended one at a time (so small
    /// segments roll between them).
    fn one_record_a_segment(dir: &Path, segment_bytes: u64, count: Seq) -> SegmentStore {
        let (store, _) = open(dir, segment_bytes);
        for seq in 0..count {
            append(&store, seq..seq + 1);
        }
        store
    }

    /// Why recovering `dir` fails.
    fn recover_err(dir: &Path, segment_bytes: u64) -> Error {
        let mut store = SegmentStore::open(dir, cipher(), segment_bytes).unwrap();
        store.recover().unwrap_err()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXTENSION))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn empty_directory_recovers_to_nothing_and_creates_the_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, recovery) = open(dir.path(), 1024);
        assert_eq!(recovery, Recovery::default());
        assert_eq!(segment_files(dir.path()), vec![segment_path(dir.path(), 0)]);
    }

    #[test]
    fn records_round_trip_with_bodies_and_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), 1 << 20);
        append(&store, 0..3);
        append(&store, 3..5);
        drop(store);
        let (_store, recovery) = open(dir.path(), 1 << 20);
        let expected: Vec<Entry> = (0..5)
            .map(|s| entry(s, format!("body {s}").as_bytes()))
            .collect();
        assert_eq!(recovery.entries, expected);
        assert_eq!(recovery.next_seq, 5);
    }

    #[test]
    fn second_store_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SegmentStore::open(dir.path(), cipher(), 1024).unwrap();
        let err = SegmentStore::open(dir.path(), cipher(), 1024).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
    }

    #[test]
    fn segments_roll_past_the_size_limit_and_are_named_by_first_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_record_a_segment(dir.path(), 200, 6);
        let files = segment_files(dir.path());
        assert!(files.len() > 1, "{files:?}");
        assert_eq!(store.usage().segments, files.len());
        drop(store);
        let (_store, recovery) = open(dir.path(), 200);
        assert_eq!(recovery.entries.len(), 6);
    }

    #[test]
    fn torn_tail_in_the_last_segment_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), 1 << 20);
        append(&store, 0..3);
        drop(store);
        let path = segment_path(dir.path(), 0);
        let good_len = fs::metadata(&path).unwrap().len();
        // Half of the next record, as a crash mid-write leaves it.
        let next = record::encode(3, b"0123456789abcdef", &cipher()).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&next[..next.len() / 2]).unwrap();
        drop(file);
        let (store, recovery) = open(dir.path(), 1 << 20);
        assert_eq!(recovery.entries.len(), 3);
        assert_eq!(recovery.next_seq, 3);
        let torn = recovery.torn_tail.unwrap();
        assert_eq!(torn.offset, good_len);
        assert_eq!(torn.discarded_bytes, next.len() as u64 / 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
        // The reused seq gets a new record.
        append(&store, 3..4);
        drop(store);
        let (_store, recovery) = open(dir.path(), 1 << 20);
        assert_eq!(recovery.entries.last().unwrap().body, b"body 3");
    }

    #[test]
    fn bad_record_followed_by_a_valid_one_is_corruption_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), 1 << 20);
        append(&store, 0..3);
        drop(store);
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        let first_len = record::parse(&bytes).unwrap().frame_len;
        bytes[first_len + 40] ^= 0x01; // inside record 1's ciphertext
        fs::write(&path, &bytes).unwrap();
        let err = recover_err(dir.path(), 1 << 20);
        let Error::CorruptBeforeValid {
            path: p,
            offset,
            valid_at,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(p, &path);
        assert_eq!(*offset, first_len as u64);
        assert!(*valid_at > *offset);
        let message = err.to_string();
        assert!(message.contains("00000000000000000000.seg"), "{message}");
        assert!(message.contains(&format!("byte {first_len}")), "{message}");
        // Nothing was truncated.
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn bad_record_in_an_older_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_record_a_segment(dir.path(), 150, 4);
        drop(store);
        let files = segment_files(dir.path());
        assert!(files.len() >= 2);
        let first = &files[0];
        let len = fs::metadata(first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(first)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let err = recover_err(dir.path(), 150);
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains(&first.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn wrong_key_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), 1 << 20);
        append(&store, 0..2);
        drop(store);
        let mut store = SegmentStore::open(dir.path(), Cipher::new([4; 32]), 1 << 20).unwrap();
        let err = store.recover().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    reason: FrameError::Decrypt,
                    offset: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("wrong journal key"), "{err}");
    }

    #[test]
    fn record_with_an_unexpected_seq_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), 1 << 20);
        append(&store, 0..1);
        drop(store);
        let path = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&record::encode(5, &[0; 8], &cipher()).unwrap())
            .unwrap();
        drop(file);
        let err = recover_err(dir.path(), 1 << 20);
        assert!(
            matches!(
                err,
                Error::SeqMismatch {
                    expected: 1,
                    found: 5,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn applied_segments_are_deleted_and_cursor_respected() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_record_a_segment(dir.path(), 150, 6);
        let before = store.usage().segments;
        store.persist_cursor(4).unwrap();
        let deleted = store.delete_applied(4).unwrap();
        assert!(deleted > 0);
        assert_eq!(store.usage().segments, before - deleted);
        assert!(store.usage().deletable_at.is_none_or(|at| at > 4));
        drop(store);
        let (_store, recovery) = open(dir.path(), 150);
        assert_eq!(recovery.cursor, 4);
        let seqs: Vec<Seq> = recovery.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
    }

    #[test]
    fn missing_unapplied_segment_is_a_gap_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_record_a_segment(dir.path(), 150, 6);
        drop(store);
        let files = segment_files(dir.path());
        assert!(files.len() >= 3, "{files:?}");
        fs::remove_file(&files[1]).unwrap();
        let err = recover_err(dir.path(), 150);
        assert!(matches!(err, Error::Gap { .. }), "{err}");
    }

    #[test]
    fn overlapping_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), 1 << 20);
        append(&store, 0..3);
        drop(store);
        fs::write(segment_path(dir.path(), 2), b"").unwrap();
        let err = recover_err(dir.path(), 1 << 20);
        assert!(
            matches!(
                err,
                Error::SeqMismatch {
                    expected: 3,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn cursor_ahead_of_the_log_starts_a_new_segment_at_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), 1 << 20);
        append(&store, 0..2);
        // As if records 2..10 were appended, applied, the cursor persisted,
        // and then the records lost to a power loss under `interval` sync.
        store.persist_cursor(10).unwrap();
        drop(store);
        let (store, recovery) = open(dir.path(), 1 << 20);
        assert!(recovery.entries.is_empty());
        assert_eq!(recovery.next_seq, 10);
        append(&store, 10..11);
        drop(store);
        let (_store, recovery) = open(dir.path(), 1 << 20);
        assert_eq!(recovery.entries.len(), 1);
        assert_eq!(recovery.entries[0].seq, 10);
    }

    #[test]
    fn find_valid_frame_ignores_garbage_and_finds_real_records() {
        let c = cipher();
        let mut rest = vec![0xAB; 100];
        assert_eq!(find_valid_frame(&rest, 7), None);
        let at = rest.len();
        rest.extend(record::encode(8, b"x", &c).unwrap());
        assert_eq!(find_valid_frame(&rest, 7), Some(at));
        // A valid frame with an implausibly old seq is not evidence.
        let mut old = vec![0; 3];
        old.extend(record::encode(1, b"x", &c).unwrap());
        assert_eq!(find_valid_frame(&old, 7), None);
    }

    #[test]
    fn bad_segment_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("12.seg"), b"").unwrap();
        let mut store = SegmentStore::open(dir.path(), cipher(), 1024).unwrap();
        assert!(matches!(
            store.recover().unwrap_err(),
            Error::BadSegmentName { .. }
        ));
    }
}
