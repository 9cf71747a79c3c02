//! The applied cursor: the seq below which every record has been applied.
//!
//! Two halves:
//!
//! - [`AckTracker`] (memory): sync workers acknowledge records in any order,
//!   so it keeps the acknowledged seqs above the cursor as a set of ranges and
//!   advances the cursor over the contiguous prefix. Ranges, not single seqs,
//!   because acks mostly arrive nearly in order: memory stays proportional to
//!   the number of holes, not the number of records.
//! - The cursor file (disk): `seq u64 LE | crc32(seq bytes) u32 LE`, 12 bytes,
//!   replaced atomically (write `cursor.tmp`, fdatasync, rename over
//!   `cursor`, fsync the directory), so a crash leaves the old or the new
//!   value, never a torn one. The CRC catches a file damaged some other way.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::io::{fsync_dir, io_error};
use super::{Error, Seq};

/// Name of the cursor file inside a journal directory.
pub(crate) const CURSOR_FILE: &str = "cursor";

/// Name of the temporary file the cursor is written to before the rename.
pub(crate) const CURSOR_TMP_FILE: &str = "cursor.tmp";

const CURSOR_FILE_LEN: usize = 12;

/// Reads the persisted cursor; `None` when the file does not exist (a new
/// journal). A stale `cursor.tmp` from a crash mid-write is ignored: the
/// rename never happened, so `cursor` still holds the previous value.
pub(crate) fn read(dir: &Path) -> Result<Option<Seq>, Error> {
    let path = dir.join(CURSOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error("read cursor", &path, err)),
    };
    let Ok(raw) = <[u8; CURSOR_FILE_LEN]>::try_from(bytes.as_slice()) else {
        return Err(Error::CorruptCursor {
            path,
            reason: format!("{} bytes, expected {CURSOR_FILE_LEN}", bytes.len()),
        });
    };
    let (seq_bytes, crc_bytes) = raw.split_at(8);
    let stored = u32::from_le_bytes(crc_bytes.try_into().expect("split at 8 of 12 leaves 4"));
    let computed = crc32fast::hash(seq_bytes);
    if stored != computed {
        return Err(Error::CorruptCursor {
            path,
            reason: format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        });
    }
    Ok(Some(u64::from_le_bytes(
        seq_bytes.try_into().expect("split at 8 leaves 8"),
    )))
}

/// Atomically replaces the persisted cursor with `cursor`.
pub(crate) fn write(dir: &Path, cursor: Seq) -> Result<(), Error> {
    let tmp = dir.join(CURSOR_TMP_FILE);
    let path = dir.join(CURSOR_FILE);
    let mut bytes = [0u8; CURSOR_FILE_LEN];
    bytes[..8].copy_from_slice(&cursor.to_le_bytes());
    bytes[8..].copy_from_slice(&crc32fast::hash(&cursor.to_le_bytes()).to_le_bytes());
    let mut file: File = super::io::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|err| io_error("create cursor", &tmp, err))?;
    file.write_all(&bytes)
        .map_err(|err| io_error("write cursor", &tmp, err))?;
    // Without this the rename could reach the disk before the data, and a
    // power loss would leave an empty `cursor`.
    file.sync_data()
        .map_err(|err| io_error("sync cursor", &tmp, err))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|err| io_error("rename cursor", &path, err))?;
    fsync_dir(dir)
}

/// Tracks out-of-order acknowledgements and the applied cursor they imply.
#[derive(Debug, Clone, Default)]
pub(crate) struct AckTracker {
    cursor: Seq,
    /// Disjoint, non-adjacent ranges `start -> end` (exclusive) of acked
    /// seqs, all above `cursor`.
    acked: BTreeMap<Seq, Seq>,
    acked_count: u64,
}

impl AckTracker {
    /// A tracker whose cursor starts at `cursor`.
    pub(crate) fn new(cursor: Seq) -> Self {
        Self {
            cursor,
            ..Self::default()
        }
    }

    /// The applied cursor: the smallest seq not yet acknowledged.
    pub(crate) fn cursor(&self) -> Seq {
        self.cursor
    }

    /// Acknowledged seqs above the cursor (waiting for a hole to fill).
    pub(crate) fn acked_above_cursor(&self) -> u64 {
        self.acked_count
    }

    /// Records that `seq` has been applied. Returns whether the cursor moved.
    /// Acknowledging a seq twice, or one below the cursor, is a no-op (sync
    /// is at-least-once, so duplicates are expected).
    pub(crate) fn ack(&mut self, seq: Seq) -> bool {
        if seq < self.cursor {
            return false;
        }
        if seq == self.cursor {
            self.cursor += 1;
            // The hole is filled: absorb the range that starts right here.
            if let Some(end) = self.acked.remove(&self.cursor) {
                self.acked_count -= end - self.cursor;
                self.cursor = end;
            }
            return true;
        }
        let mut start = seq;
        let mut end = seq + 1;
        if let Some((&prev_start, &prev_end)) = self.acked.range(..=seq).next_back() {
            if prev_end > seq {
                return false; // already acknowledged
            }
            if prev_end == seq {
                start = prev_start;
            }
        }
        if let Some(next_end) = self.acked.remove(&end) {
            end = next_end;
        }
        self.acked.insert(start, end);
        self.acked_count += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acks_advance_the_cursor() {
        let mut t = AckTracker::new(5);
        assert!(t.ack(5));
        assert!(t.ack(6));
        assert_eq!(t.cursor(), 7);
        assert_eq!(t.acked_above_cursor(), 0);
    }

    #[test]
    fn out_of_order_acks_advance_over_the_contiguous_prefix() {
        let mut t = AckTracker::new(0);
        for seq in [3, 1, 2, 5] {
            assert!(!t.ack(seq));
        }
        assert_eq!(t.cursor(), 0);
        assert_eq!(t.acked_above_cursor(), 4);
        assert!(t.ack(0));
        assert_eq!(t.cursor(), 4);
        assert_eq!(t.acked_above_cursor(), 1);
        assert!(t.ack(4));
        assert_eq!(t.cursor(), 6);
        assert_eq!(t.acked_above_cursor(), 0);
    }

    #[test]
    fn duplicate_and_stale_acks_are_ignored() {
        let mut t = AckTracker::new(10);
        assert!(!t.ack(3));
        assert!(!t.ack(12));
        assert!(!t.ack(12));
        assert_eq!(t.acked_above_cursor(), 1);
        assert!(t.ack(10));
        assert!(!t.ack(10));
        assert_eq!(t.cursor(), 11);
    }

    #[test]
    fn ranges_merge_on_both_sides() {
        let mut t = AckTracker::new(0);
        t.ack(2);
        t.ack(4);
        t.ack(3);
        assert_eq!(t.acked.len(), 1);
        assert_eq!(t.acked.get(&2), Some(&5));
        t.ack(1);
        assert_eq!(t.acked.get(&1), Some(&5));
        t.ack(0);
        assert_eq!(t.cursor(), 5);
        assert!(t.acked.is_empty());
    }

    #[test]
    fn random_ack_orders_match_a_naive_model() {
        use proptest::prelude::*;
        proptest!(|(order in Just((0u64..60).collect::<Vec<_>>()).prop_shuffle(),
                    prefix in 0usize..60)| {
            let mut t = AckTracker::new(0);
            let mut naive = std::collections::BTreeSet::new();
            for &seq in &order[..prefix] {
                t.ack(seq);
                naive.insert(seq);
                let mut cursor = 0;
                while naive.contains(&cursor) { cursor += 1; }
                prop_assert_eq!(t.cursor(), cursor);
                prop_assert_eq!(
                    t.acked_above_cursor(),
                    naive.iter().filter(|&&s| s > cursor).count() as u64
                );
            }
        });
    }

    #[test]
    fn cursor_file_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), 7).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(7));
        write(dir.path(), u64::MAX - 1).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(u64::MAX - 1));
        assert!(!dir.path().join(CURSOR_TMP_FILE).exists());
    }

    #[test]
    fn stale_tmp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 3).unwrap();
        fs::write(dir.path().join(CURSOR_TMP_FILE), b"garbage").unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(3));
    }

    #[test]
    fn damaged_cursor_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 3).unwrap();
        let path = dir.path().join(CURSOR_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(matches!(err, Error::CorruptCursor { .. }), "{err}");
        assert!(err.to_string().contains("cursor"), "{err}");
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            read(dir.path()).unwrap_err(),
            Error::CorruptCursor { .. }
        ));
    }
}
