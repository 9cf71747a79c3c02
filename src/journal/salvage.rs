//! The way out of a damaged journal (`handover journal check|salvage`).
//!
//! Recovery ([`super::SegmentStore`]) refuses to open a journal whose damage
//! a crash cannot explain: a bad record in the middle of a segment, in an
//! older segment, records missing above the cursor, a damaged cursor file.
//! That is right for `serve` (it must never skip a change silently) but
//! leaves the operator with a proxy that will not start. This module is
//! the documented way out, offline (the journal directory is locked, so the
//! proxy must be stopped):
//!
//! - [`check`] reads every segment of the journal, the dead letters and the
//!   registrations without changing a byte and reports each damaged place:
//!   segment, byte offset, bytes and records affected, and whether pending
//!   (unapplied) records are among them.
//! - [`salvage`] keeps every readable pending record: it copies each
//!   segment it must rewrite into `<journal dir>/quarantine/<time>/` (never
//!   deleting one that is not safely copied there first), writes one clean
//!   segment with the readable records in their order, and moves the
//!   cursor forward over the records that were lost.
//!
//! # Numbering
//!
//! A segment's records carry consecutive seqs and recovery refuses missing
//! seqs above the cursor, so the readable records are renumbered: they keep
//! their order and take the seqs just *below* the first record that stays
//! untouched (or below the old end of the log), and the cursor moves up to
//! the first of them. Seqs therefore never go backwards: the next append
//! gets the seq it would have got, the cursor only moves forward, and no
//! record applied before is handed out again. (Seqs are authenticated, so
//! the records are decrypted and encrypted again with their new seq; the
//! plaintext, including the time of the original append, is unchanged.)
//!
//! # Crash safety
//!
//! The order of the steps makes an interrupted salvage safe to run again:
//! the originals are copied to the quarantine directory and fsync'ed; the
//! clean segment is written under a temporary name and fsync'ed; it is
//! renamed into place (while an original still overlaps it, recovery
//! refuses to open); the originals are removed; the cursor is written last
//! (before that, the records between the old cursor and the clean segment
//! are a gap above the cursor, which recovery refuses). No intermediate
//! state opens with records silently missing.
//!
//! # Wrong key
//!
//! A journal opened with another key than it was written with fails to
//! decrypt everywhere. Salvage refuses when no pending record of a log
//! decrypts while some have a good checksum: that is a key problem, not
//! damage, and "salvaging" would quarantine every record.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::cipher::Cipher;
use super::io::{create_private_dir_all, fsync_dir, io_error, private_file};
use super::record::{self, FrameError};
use super::segment::{LOCK_FILE, TIMESTAMP_LEN, find_valid_frame, parse_segment_name};
use super::{DEAD_LETTERS_DIR, Error, REGISTRATIONS_DIR, Seq, cursor};

/// Subdirectory of the journal directory that receives the segments
/// salvage takes out of service, one subdirectory per run.
pub const QUARANTINE_DIR: &str = "quarantine";

/// What kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The end of the last segment: a write cut short by a crash (never
    /// acknowledged). `serve` cuts it by itself.
    TornTail,
    /// Bytes that are not a valid record, with valid records after them or
    /// in a segment that is not the last: what a crash cannot explain.
    Corrupt,
    /// A record with a good checksum that does not decrypt (another key,
    /// or tampering).
    Undecryptable,
    /// A record in the wrong place (a seq out of order), or seqs missing
    /// between segments.
    OutOfPlace,
}

impl DamageKind {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TornTail => "torn tail",
            Self::Corrupt => "corrupt",
            Self::Undecryptable => "does not decrypt",
            Self::OutOfPlace => "out of place",
        }
    }
}

/// One damaged place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset of the damage in the segment.
    pub offset: u64,
    /// Bytes affected.
    pub bytes: u64,
    /// Records that cannot be read because of it (for a torn tail, the
    /// one write that was cut short).
    pub records: u64,
    /// What it is.
    pub kind: DamageKind,
    /// Details (the frame error, the seqs).
    pub reason: String,
    /// How many of those records were pending (at or above the applied
    /// cursor): 0 when every one of them was applied already, or for a
    /// torn tail (a write that was never acknowledged).
    pub pending: u64,
}

/// What [`check`] found in one log (the journal, the dead letters or the
/// registrations: each is a directory of segments with its own cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    /// "journal", "dead letters" or "registrations".
    pub name: &'static str,
    /// Its directory.
    pub dir: PathBuf,
    /// The persisted cursor, if the file exists and is sound.
    pub cursor: Option<Seq>,
    /// Why the cursor file could not be read, if it is damaged.
    pub cursor_problem: Option<String>,
    /// Segment files.
    pub segments: usize,
    /// Records read in full (checksum good; decrypted when pending).
    pub readable: u64,
    /// Of those, records at or above the cursor (still owed).
    pub pending: u64,
    /// Every damaged place, in file order.
    pub damage: Vec<Damage>,
    /// No pending record decrypts although some have good checksums: the
    /// key is wrong, not the files.
    pub wrong_key: bool,
}

impl LogReport {
    /// Whether anything is wrong.
    pub fn clean(&self) -> bool {
        self.damage.is_empty() && self.cursor_problem.is_none() && !self.wrong_key
    }

    /// Records lost from the pending ones.
    pub fn lost_pending(&self) -> u64 {
        self.damage.iter().map(|d| d.pending).sum()
    }
}

/// What [`check`] found in a journal directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One per log that exists, the journal first.
    pub logs: Vec<LogReport>,
}

impl Report {
    /// Whether every log is clean.
    pub fn clean(&self) -> bool {
        self.logs.iter().all(LogReport::clean)
    }
}

/// What [`salvage`] did to one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSalvage {
    /// "journal", "dead letters" or "registrations".
    pub name: &'static str,
    /// The segments taken out of service (their copies are in the
    /// quarantine directory under the same file name).
    pub quarantined: Vec<PathBuf>,
    /// The clean segment written, if any record was kept.
    pub written: Option<PathBuf>,
    /// Pending records kept (renumbered, in their order).
    pub kept: u64,
    /// Pending records that could not be read.
    pub lost: u64,
    /// The cursor before and after.
    pub cursor: (Seq, Seq),
}

/// What [`salvage`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// The damage found before anything was changed.
    pub before: Report,
    /// Where the originals went (`None` when nothing needed salvaging).
    pub quarantine: Option<PathBuf>,
    /// One per log that was rewritten.
    pub logs: Vec<LogSalvage>,
}

/// The logs under a journal directory: (name, directory).
fn logs(journal_dir: &Path) -> [(&'static str, PathBuf); 3] {
    [
        ("journal", journal_dir.to_path_buf()),
        ("dead letters", journal_dir.join(DEAD_LETTERS_DIR)),
        ("registrations", journal_dir.join(REGISTRATIONS_DIR)),
    ]
}

/// Takes the lock a running journal holds, so neither command reads or
/// rewrites files under a live proxy.
fn lock(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let file = private_file()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|err| io_error("open lock file", &path, err))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(err)) => Err(io_error("lock", &path, err)),
    }
}

/// Reads every segment of every log under `journal_dir` and reports the
/// damage, changing nothing. Fails when the directory is locked (a
/// running proxy) or cannot be read.
pub fn check(journal_dir: &Path, cipher: &Cipher) -> Result<Report, Error> {
    let mut reports = Vec::new();
    for (name, dir) in logs(journal_dir) {
        if !dir.is_dir() {
            continue;
        }
        let _lock = lock(&dir)?;
        reports.push(scan(name, &dir, cipher)?.report);
    }
    Ok(Report { logs: reports })
}

/// A readable record.
struct Readable {
    /// `appended_at` ‖ body, as stored.
    plaintext: Vec<u8>,
    /// Index of its segment.
    segment: usize,
}

struct Scan {
    report: LogReport,
    /// Segment files in seq order: (first seq, path).
    segments: Vec<(Seq, PathBuf)>,
    /// Indexes of segments with damage.
    damaged: Vec<usize>,
    /// Readable pending records, in order.
    pending: Vec<Readable>,
    /// The cursor to reason with (the persisted one, or the first seq
    /// present when the file is missing or damaged).
    cursor: Seq,
    /// One past the highest seq the log ever held.
    end: Seq,
}

fn list_segments(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, Error> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|err| io_error("list directory", dir, err))?;
    for entry in entries {
        let path = entry
            .map_err(|err| io_error("list directory", dir, err))?
            .path();
        if let Some(first) = parse_segment_name(&path) {
            segments.push((first?, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// The seq of a frame that passed [`record::parse`].
fn scan(name: &'static str, dir: &Path, cipher: &Cipher) -> Result<Scan, Error> {
    let (persisted, cursor_problem) = match cursor::read(dir) {
        Ok(cursor) => (cursor, None),
        Err(Error::CorruptCursor { reason, .. }) => (None, Some(reason)),
        Err(err) => return Err(err),
    };
    let segments = list_segments(dir)?;
    let cursor = persisted.unwrap_or_else(|| segments.first().map_or(0, |(first, _)| *first));
    let mut report = LogReport {
        name,
        dir: dir.to_path_buf(),
        cursor: persisted,
        cursor_problem,
        segments: segments.len(),
        readable: 0,
        pending: 0,
        damage: Vec::new(),
        wrong_key: false,
    };
    let mut damaged = Vec::new();
    let mut pending = Vec::new();
    let mut undecryptable_pending = 0u64;
    // The seq the next record must carry.
    let mut expected: Option<Seq> = None;
    let mut end = cursor;
    let count = segments.len();
    for (index, (first_seq, path)) in segments.iter().enumerate() {
        let before = report.damage.len();
        let is_last = index + 1 == count;
        match expected {
            Some(want) if *first_seq != want => {
                let (lost, reason) = if *first_seq > want {
                    (
                        first_seq - want,
                        format!("records {want}..{first_seq} are missing before this segment"),
                    )
                } else {
                    (
                        0,
                        format!(
                            "starts at seq {first_seq}, overlapping the previous segment (which ends before {want})"
                        ),
                    )
                };
                report.damage.push(Damage {
                    segment: path.clone(),
                    offset: 0,
                    bytes: 0,
                    records: lost,
                    kind: DamageKind::OutOfPlace,
                    reason,
                    pending: first_seq.saturating_sub(want.max(cursor)),
                });
            }
            None if *first_seq > cursor => {
                // Records [cursor, first) should be here and are not.
                report.damage.push(Damage {
                    segment: path.clone(),
                    offset: 0,
                    bytes: 0,
                    records: first_seq - cursor,
                    kind: DamageKind::OutOfPlace,
                    reason: format!(
                        "records {cursor}..{first_seq} are missing before the first segment"
                    ),
                    pending: first_seq - cursor,
                });
            }
            _ => {}
        }
        let mut want = expected.map_or(*first_seq, |e| e.max(*first_seq));
        let bytes = fs::read(path).map_err(|err| io_error("read segment", path, err))?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            let bad: FrameError = match record::parse(rest) {
                Ok(frame) => {
                    let seq = frame.seq;
                    let frame_len = frame.frame_len;
                    if seq != want {
                        if seq > want {
                            report.damage.push(Damage {
                                segment: path.clone(),
                                offset: offset as u64,
                                bytes: 0,
                                records: seq - want,
                                kind: DamageKind::OutOfPlace,
                                reason: format!("records {want}..{seq} are missing here"),
                                pending: seq.saturating_sub(want.max(cursor)),
                            });
                        } else {
                            report.damage.push(Damage {
                                segment: path.clone(),
                                offset: offset as u64,
                                bytes: frame_len as u64,
                                records: 1,
                                kind: DamageKind::OutOfPlace,
                                reason: format!("holds seq {seq} where seq {want} belongs"),
                                pending: 0,
                            });
                            offset += frame_len;
                            continue;
                        }
                    }
                    if seq >= cursor {
                        match frame.open(cipher) {
                            Ok(plaintext) if plaintext.len() >= TIMESTAMP_LEN => {
                                report.readable += 1;
                                report.pending += 1;
                                pending.push(Readable {
                                    plaintext,
                                    segment: index,
                                });
                            }
                            Ok(_) => report.damage.push(Damage {
                                segment: path.clone(),
                                offset: offset as u64,
                                bytes: frame_len as u64,
                                records: 1,
                                kind: DamageKind::Corrupt,
                                reason: format!("seq {seq}: plaintext shorter than its timestamp"),
                                pending: 1,
                            }),
                            Err(reason) => {
                                undecryptable_pending += 1;
                                report.damage.push(Damage {
                                    segment: path.clone(),
                                    offset: offset as u64,
                                    bytes: frame_len as u64,
                                    records: 1,
                                    kind: DamageKind::Undecryptable,
                                    reason: format!("seq {seq}: {reason}"),
                                    pending: 1,
                                });
                            }
                        }
                    } else {
                        report.readable += 1;
                    }
                    offset += frame_len;
                    want = seq + 1;
                    continue;
                }
                Err(bad) => bad,
            };
            // Not a record here: skip to the next one that is, if any.
            match find_frame(rest, want) {
                Some((at, seq)) => {
                    report.damage.push(Damage {
                        segment: path.clone(),
                        offset: offset as u64,
                        bytes: at as u64,
                        records: seq - want,
                        kind: DamageKind::Corrupt,
                        reason: format!(
                            "{bad}; the next valid record (seq {seq}) is at byte {}",
                            offset + at
                        ),
                        pending: seq.saturating_sub(want.max(cursor)),
                    });
                    want = seq;
                    offset += at;
                }
                None => {
                    let torn = is_last;
                    report.damage.push(Damage {
                        segment: path.clone(),
                        offset: offset as u64,
                        bytes: rest.len() as u64,
                        // A torn tail is one write cut short; corruption up to
                        // the end of an older segment loses the records up to
                        // the next segment's first seq (counted there as
                        // missing), so count none twice.
                        records: u64::from(torn),
                        kind: if torn {
                            DamageKind::TornTail
                        } else {
                            DamageKind::Corrupt
                        },
                        reason: if torn {
                            format!("{bad}, nothing valid after it (a write cut short by a crash; serve cuts it)")
                        } else {
                            format!("{bad}, nothing valid after it in a segment that is not the last")
                        },
                        pending: 0,
                    });
                    break;
                }
            }
        }
        if report.damage.len() > before {
            damaged.push(index);
        }
        expected = Some(want);
        end = end.max(want);
    }
    report.wrong_key = undecryptable_pending > 0 && pending.is_empty();
    Ok(Scan {
        report,
        segments,
        damaged,
        pending,
        cursor,
        end,
    })
}

/// The offset (past the first byte) and seq of the next frame in `rest`
/// that passes its checksum and carries a plausible seq.
fn find_frame(rest: &[u8], expected: Seq) -> Option<(usize, Seq)> {
    let at = find_valid_frame(rest, expected)?;
    Some((at, record::parse(&rest[at..]).ok()?.seq))
}

/// Salvages every damaged log under `journal_dir`: see the module doc.
/// `stamp` names the quarantine subdirectory (the caller passes the time).
pub fn salvage(journal_dir: &Path, cipher: &Cipher, stamp: &str) -> Result<Salvaged, Error> {
    let mut scans = Vec::new();
    let mut locks = Vec::new();
    for (name, dir) in logs(journal_dir) {
        if !dir.is_dir() {
            continue;
        }
        locks.push(lock(&dir)?);
        scans.push(scan(name, &dir, cipher)?);
    }
    let before = Report {
        logs: scans.iter().map(|scan| scan.report.clone()).collect(),
    };
    if let Some(log) = before.logs.iter().find(|log| log.wrong_key) {
        return Err(Error::WrongKey {
            dir: log.dir.clone(),
        });
    }
    if before.clean() {
        return Ok(Salvaged {
            before,
            quarantine: None,
            logs: Vec::new(),
        });
    }
    let quarantine = journal_dir.join(QUARANTINE_DIR).join(stamp);
    let mut done = Vec::new();
    for scan in scans.iter().filter(|scan| !scan.report.clean()) {
        let target = if scan.report.dir == journal_dir {
            quarantine.clone()
        } else {
            quarantine.join(scan.report.dir.file_name().unwrap_or_default())
        };
        done.push(rewrite(scan, &target, cipher)?);
    }
    drop(locks);
    Ok(Salvaged {
        before,
        quarantine: Some(quarantine),
        logs: done,
    })
}

/// Copies `from` to `to` and makes the copy durable.
fn copy_durably(from: &Path, to: &Path) -> Result<(), Error> {
    let mut source = File::open(from).map_err(|err| io_error("open segment", from, err))?;
    let mut copy = private_file()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|err| io_error("create quarantine copy", to, err))?;
    io::copy(&mut source, &mut copy).map_err(|err| io_error("copy segment", to, err))?;
    copy.sync_all()
        .map_err(|err| io_error("sync quarantine copy", to, err))
}

fn rewrite(scan: &Scan, quarantine: &Path, cipher: &Cipher) -> Result<LogSalvage, Error> {
    let dir = &scan.report.dir;
    // Everything up to the last damaged segment is rewritten; the segments
    // after it stay as they are, and the clean one ends where they begin.
    let last_damaged = scan.damaged.iter().copied().max();
    let (rewritten, end) = match last_damaged {
        Some(last) => (
            &scan.segments[..=last],
            scan.segments
                .get(last + 1)
                .map_or(scan.end, |(first, _)| *first),
        ),
        // Only the cursor file is damaged.
        None => (&scan.segments[..0], scan.cursor),
    };
    let kept: Vec<&Readable> = scan
        .pending
        .iter()
        .filter(|record| last_damaged.is_some_and(|last| record.segment <= last))
        .collect();
    let kept_count = kept.len() as u64;
    let first = end.saturating_sub(kept_count);
    let new_cursor = scan.cursor.max(first);

    create_private_dir_all(quarantine)
        .map_err(|err| io_error("create quarantine directory", quarantine, err))?;
    for (_, path) in rewritten {
        let name = path.file_name().unwrap_or_default();
        copy_durably(path, &quarantine.join(name))?;
    }
    let cursor_path = dir.join(cursor::CURSOR_FILE);
    if scan.report.cursor_problem.is_some() {
        copy_durably(&cursor_path, &quarantine.join(cursor::CURSOR_FILE))?;
    }
    fsync_dir(quarantine)?;

    let written = if kept.is_empty() {
        None
    } else {
        let mut buf = Vec::new();
        for (record, seq) in kept.iter().zip(first..) {
            record::encode_into(&mut buf, seq, &record.plaintext, cipher)?;
        }
        let tmp = dir.join(format!("salvage-{first:020}.tmp"));
        let mut file = private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|err| io_error("create salvaged segment", &tmp, err))?;
        file.write_all(&buf)
            .and_then(|()| file.sync_all())
            .map_err(|err| io_error("write salvaged segment", &tmp, err))?;
        let path = super::segment::segment_path(dir, first);
        fs::rename(&tmp, &path).map_err(|err| io_error("rename salvaged segment", &path, err))?;
        fsync_dir(dir)?;
        Some(path)
    };
    for (_, path) in rewritten {
        if Some(path) == written.as_ref() {
            continue; // replaced by the rename, its copy is in quarantine
        }
        fs::remove_file(path).map_err(|err| io_error("remove quarantined segment", path, err))?;
    }
    fsync_dir(dir)?;
    cursor::write(dir, new_cursor)?;
    Ok(LogSalvage {
        name: scan.report.name,
        quarantined: rewritten.iter().map(|(_, path)| path.clone()).collect(),
        written,
        kept: kept_count,
        lost: scan.report.lost_pending(),
        cursor: (scan.cursor, new_cursor),
    })
}

#[cfg(test)]
mod tests {
    use super::super::record::{MIN_LEN, PREFIX_LEN};
    use super::super::segment::SegmentStore;
    use super::super::store::Store;
    use super::super::{Entry, segment::segment_path};
    use super::*;
    use std::time::SystemTime;

    fn cipher() -> Cipher {
        Cipher::new([3; 32])
    }

    fn entry(seq: Seq) -> Entry {
        Entry {
            seq,
            body: format!("change-{seq}").into_bytes(),
            appended_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(seq),
        }
    }

    /// Appends `seqs` in batches of one, rolling segments at `segment_bytes`.
    fn write(dir: &Path, seqs: std::ops::Range<Seq>, segment_bytes: u64) {
        let mut store = SegmentStore::open(dir, cipher(), segment_bytes).unwrap();
        store.recover().unwrap();
        for seq in seqs {
            store.append(&[entry(seq)], true).unwrap();
        }
    }

    fn recover(dir: &Path) -> Result<Vec<(Seq, Vec<u8>)>, Error> {
        let mut store = SegmentStore::open(dir, cipher(), 1 << 20)?;
        Ok(store
            .recover()?
            .entries
            .into_iter()
            .map(|e| (e.seq, e.body))
            .collect())
    }

    /// The byte offset of record `index` in a segment.
    fn offset_of(path: &Path, index: usize) -> usize {
        let bytes = fs::read(path).unwrap();
        let mut offset = 0;
        for _ in 0..index {
            offset += record::parse(&bytes[offset..]).unwrap().frame_len;
        }
        offset
    }

    fn flip(path: &Path, at: usize) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at] ^= 0xff;
        fs::write(path, bytes).unwrap();
    }

    fn bodies(range: impl Iterator<Item = Seq>) -> Vec<Vec<u8>> {
        range.map(|seq| entry(seq).body).collect()
    }

    #[test]
    fn a_clean_journal_checks_clean_and_salvage_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 0..5, 1 << 20);
        let report = check(dir.path(), &cipher()).unwrap();
        assert!(report.clean(), "{report:?}");
        assert_eq!(report.logs[0].pending, 5);
        let salvaged = salvage(dir.path(), &cipher(), "t").unwrap();
        assert_eq!(salvaged.quarantine, None);
        assert!(!dir.path().join(QUARANTINE_DIR).exists());
        assert_eq!(recover(dir.path()).unwrap().len(), 5);
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_reported_and_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 0..10, 1 << 20);
        let segment = segment_path(dir.path(), 0);
        let at = offset_of(&segment, 4);
        flip(&segment, at + 20);
        let original = fs::read(&segment).unwrap();
        assert!(matches!(
            recover(dir.path()).unwrap_err(),
            Error::CorruptBeforeValid { .. }
        ));

        let report = check(dir.path(), &cipher()).unwrap();
        let log = &report.logs[0];
        assert_eq!(log.damage.len(), 1, "{log:?}");
        let damage = &log.damage[0];
        assert_eq!(damage.segment, segment);
        assert_eq!(damage.offset, at as u64);
        assert_eq!(
            (damage.records, damage.kind, damage.pending),
            (1, DamageKind::Corrupt, 1)
        );
        assert_eq!(log.pending, 9);
        // check changed nothing.
        assert_eq!(fs::read(&segment).unwrap(), original);

        let salvaged = salvage(dir.path(), &cipher(), "t").unwrap();
        let quarantine = dir.path().join(QUARANTINE_DIR).join("t");
        assert_eq!(salvaged.quarantine.as_deref(), Some(quarantine.as_path()));
        assert_eq!(
            fs::read(quarantine.join(segment.file_name().unwrap())).unwrap(),
            original
        );
        let log = &salvaged.logs[0];
        assert_eq!((log.kept, log.lost, log.cursor), (9, 1, (0, 1)));
        let recovered = recover(dir.path()).unwrap();
        let kept: Vec<Vec<u8>> = recovered.iter().map(|(_, body)| body.clone()).collect();
        assert_eq!(kept, bodies((0..4).chain(5..10)));
        // Seqs never go back: the next append is where it would have been.
        assert_eq!(recovered.last().unwrap().0, 9);
        assert!(check(dir.path(), &cipher()).unwrap().clean());
    }

    #[test]
    fn damage_in_an_older_segment_keeps_the_later_segments_untouched() {
        let dir = tempfile::tempdir().unwrap();
        // Tiny segments: about three records each.
        let frame = PREFIX_LEN + MIN_LEN as usize + TIMESTAMP_LEN + 8;
        write(dir.path(), 0..12, 3 * frame as u64);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 3, "{segments:?}");
        let (second_first, second) = segments[1].clone();
        let (third_first, third) = segments[2].clone();
        let untouched = fs::read(&third).unwrap();
        flip(&second, offset_of(&second, 1) + 3);
        let report = check(dir.path(), &cipher()).unwrap();
        assert_eq!(report.logs[0].lost_pending(), 1, "{report:?}");
        salvage(dir.path(), &cipher(), "t").unwrap();
        assert_eq!(fs::read(&third).unwrap(), untouched);
        let recovered = recover(dir.path()).unwrap();
        let lost = second_first + 1;
        let kept: Vec<Vec<u8>> = recovered.iter().map(|(_, body)| body.clone()).collect();
        assert_eq!(kept, bodies((0..12).filter(|&seq| seq != lost)));
        assert_eq!(
            recovered[usize::try_from(third_first).unwrap() - 1].0,
            third_first
        );
    }

    #[test]
    fn a_torn_tail_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 0..3, 1 << 20);
        let segment = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&segment).unwrap();
        bytes.truncate(bytes.len() - 5);
        fs::write(&segment, bytes).unwrap();
        let report = check(dir.path(), &cipher()).unwrap();
        assert_eq!(report.logs[0].damage[0].kind, DamageKind::TornTail);
        assert_eq!(report.logs[0].pending, 2);
    }

    #[test]
    fn the_wrong_key_is_refused_not_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 0..3, 1 << 20);
        let other = Cipher::new([4; 32]);
        let report = check(dir.path(), &other).unwrap();
        assert!(report.logs[0].wrong_key);
        assert!(matches!(
            salvage(dir.path(), &other, "t").unwrap_err(),
            Error::WrongKey { .. }
        ));
        assert_eq!(recover(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn applied_records_that_are_damaged_cost_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 0..6, 1 << 20);
        cursor::write(dir.path(), 3).unwrap();
        let segment = segment_path(dir.path(), 0);
        flip(&segment, offset_of(&segment, 1) + 12);
        let report = check(dir.path(), &cipher()).unwrap();
        assert_eq!(report.logs[0].damage.len(), 1);
        assert_eq!(report.logs[0].damage[0].pending, 0);
        let salvaged = salvage(dir.path(), &cipher(), "t").unwrap();
        assert_eq!((salvaged.logs[0].kept, salvaged.logs[0].lost), (3, 0));
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(
            recovered.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
    }

    #[test]
    fn the_dead_letters_are_checked_and_salvaged_too() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 0..2, 1 << 20);
        let letters = dir.path().join(DEAD_LETTERS_DIR);
        write(&letters, 0..4, 1 << 20);
        let segment = segment_path(&letters, 0);
        flip(&segment, offset_of(&segment, 1) + 30);
        let report = check(dir.path(), &cipher()).unwrap();
        assert!(report.logs[0].clean());
        assert_eq!(report.logs[1].name, "dead letters");
        assert_eq!(report.logs[1].lost_pending(), 1);
        let salvaged = salvage(dir.path(), &cipher(), "t").unwrap();
        assert!(
            dir.path()
                .join(QUARANTINE_DIR)
                .join("t")
                .join(DEAD_LETTERS_DIR)
                .join(segment.file_name().unwrap())
                .is_file()
        );
        assert_eq!(salvaged.logs.len(), 1);
        assert_eq!(recover(&letters).unwrap().len(), 3);
        assert_eq!(recover(dir.path()).unwrap().len(), 2);
    }
}
