//! Dead letters: records the sync layer gave up on (after its retries), kept
//! durably with the reason until an operator retries them
//! (`POST /dead-letters/retry`, DESIGN.md §7).
//!
//! Built on the journal's own [`SegmentStore`] in `<journal dir>/deadletters/`,
//! so it inherits the framing, encryption, torn-tail repair and corruption
//! checks. The plaintext body of each record is
//! `reason_len u16 LE | reason (UTF-8) | body`.
//!
//! It is small and rare, so it is synchronous and simple: every push
//! fdatasyncs, the list lives in memory, and "clearing" persists the cursor
//! past the cleared records. Calls block on disk I/O; call them from
//! `spawn_blocking` in async code. Retrying is crash-safe when done in this
//! order: [`DeadLetters::list`], re-append the bodies to the main journal,
//! then [`DeadLetters::clear_through`]. A crash in between re-queues them
//! twice, which at-least-once sync tolerates; the other order could lose them.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::cipher::Cipher;
use super::segment::SegmentStore;
use super::store::Store;
use super::{Entry, Error, Seq};

/// Subdirectory of the journal directory holding dead letters.
pub const DEAD_LETTERS_DIR: &str = "deadletters";

/// Segment size for dead letters: 1 MiB. They are few; small segments let
/// cleared ones be deleted soon.
const DEAD_LETTER_SEGMENT_BYTES: u64 = 1024 * 1024;

/// Longest reason kept, in bytes (longer ones are cut at a char boundary).
pub const MAX_REASON_BYTES: usize = 4096;

/// One dead letter.
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its seq in the dead-letter log (not the main journal).
    pub seq: Seq,
    /// Why the sync layer gave up (an error message; no secrets).
    pub reason: String,
    /// The original journal body.
    pub body: Vec<u8>,
    /// When it was dead-lettered.
    pub appended_at: SystemTime,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("seq", &self.seq)
            .field("reason", &self.reason)
            .field("body_len", &self.body.len())
            .field("appended_at", &self.appended_at)
            .finish()
    }
}

#[derive(Debug)]
struct Inner {
    store: SegmentStore,
    letters: Vec<DeadLetter>,
    next_seq: Seq,
}

/// The dead-letter log.
#[derive(Debug)]
pub struct DeadLetters {
    inner: Mutex<Inner>,
}

impl DeadLetters {
    /// Opens (creating if needed) the dead-letter log under `journal_dir`.
    pub fn open(journal_dir: &Path, cipher: Cipher) -> Result<Self, Error> {
        let dir = journal_dir.join(DEAD_LETTERS_DIR);
        let mut store = SegmentStore::open(&dir, cipher, DEAD_LETTER_SEGMENT_BYTES)?;
        let recovery = store.recover()?;
        let letters = recovery
            .entries
            .into_iter()
            .map(|entry| decode(entry, &dir))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            inner: Mutex::new(Inner {
                store,
                letters,
                next_seq: recovery.next_seq,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Durably records `body` with `reason`. Returns its dead-letter seq.
    pub fn push(&self, reason: &str, body: &[u8]) -> Result<Seq, Error> {
        let mut cut = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let reason = &reason[..cut];
        let reason_len = u16::try_from(reason.len()).expect("MAX_REASON_BYTES fits in u16");
        let mut plaintext = Vec::with_capacity(2 + reason.len() + body.len());
        plaintext.extend_from_slice(&reason_len.to_le_bytes());
        plaintext.extend_from_slice(reason.as_bytes());
        plaintext.extend_from_slice(body);
        let mut inner = self.lock();
        let entry = Entry {
            seq: inner.next_seq,
            body: plaintext,
            appended_at: SystemTime::now(),
        };
        inner.store.append(std::slice::from_ref(&entry), true)?;
        inner.next_seq += 1;
        inner.letters.push(DeadLetter {
            seq: entry.seq,
            reason: reason.to_owned(),
            body: body.to_vec(),
            appended_at: entry.appended_at,
        });
        Ok(entry.seq)
    }

    /// Every dead letter not yet cleared, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.lock().letters.clone()
    }

    /// Number of dead letters not yet cleared.
    pub fn len(&self) -> usize {
        self.lock().letters.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Durably clears every dead letter with `seq <= through` (after they
    /// were re-queued for retry).
    pub(crate) fn clear_through(&self, through: Seq) -> Result<(), Error> {
        let mut inner = self.lock();
        let cursor = through.saturating_add(1).min(inner.next_seq);
        inner.store.persist_cursor(cursor)?;
        inner.letters.retain(|letter| letter.seq >= cursor);
        inner.store.delete_applied(cursor)?;
        Ok(())
    }
}

fn decode(entry: Entry, dir: &Path) -> Result<DeadLetter, Error> {
    let malformed = |reason| Error::Payload {
        path: dir.to_path_buf(),
        seq: entry.seq,
        reason,
    };
    let body = &entry.body;
    let Some(len) = body
        .first_chunk::<2>()
        .map(|b| usize::from(u16::from_le_bytes(*b)))
    else {
        return Err(malformed("dead letter shorter than its reason length"));
    };
    let Some(reason) = body.get(2..2 + len) else {
        return Err(malformed("dead letter shorter than its reason"));
    };
    let Ok(reason) = std::str::from_utf8(reason) else {
        return Err(malformed("dead letter reason is not UTF-8"));
    };
    Ok(DeadLetter {
        seq: entry.seq,
        reason: reason.to_owned(),
        body: body[2 + len..].to_vec(),
        appended_at: entry.appended_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new([5; 32])
    }

    #[test]
    fn dead_letters_survive_a_restart_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::open(dir.path(), cipher()).unwrap();
        assert!(letters.is_empty());
        assert_eq!(letters.push("target answered 400", b"client:a").unwrap(), 0);
        assert_eq!(letters.push("timeout", b"session:b").unwrap(), 1);
        drop(letters);

        let letters = DeadLetters::open(dir.path(), cipher()).unwrap();
        let listed = letters.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].reason, "target answered 400");
        assert_eq!(listed[0].body, b"client:a");
        assert_eq!(listed[1].seq, 1);

        letters.clear_through(0).unwrap();
        assert_eq!(letters.len(), 1);
        drop(letters);
        let letters = DeadLetters::open(dir.path(), cipher()).unwrap();
        assert_eq!(letters.list()[0].body, b"session:b");
        letters.clear_through(u64::MAX).unwrap();
        assert!(letters.is_empty());
        assert_eq!(letters.push("again", b"x").unwrap(), 2);
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::open(dir.path(), cipher()).unwrap();
        let reason = "é".repeat(MAX_REASON_BYTES);
        letters.push(&reason, b"x").unwrap();
        let kept = &letters.list()[0].reason;
        assert!(kept.len() <= MAX_REASON_BYTES);
        assert!(reason.starts_with(kept.as_str()));
    }

    #[test]
    fn dead_letters_live_beside_the_journal_without_disturbing_it() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::open(dir.path(), cipher()).unwrap();
        letters.push("r", b"body").unwrap();
        let mut main = SegmentStore::open(dir.path(), cipher(), 1024).unwrap();
        assert!(main.recover().unwrap().entries.is_empty());
    }
}
