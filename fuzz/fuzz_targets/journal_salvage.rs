//! `handover journal check` and `salvage` on journals damaged at random:
//! a journal of real records (rolled over several segments, with a
//! cursor) gets bytes flipped, inserted, copied over, cut off, or whole
//! segments removed. Checks: neither command panics; after a salvage that
//! succeeded, `check` finds the journal clean, recovery (what `serve`
//! runs) opens it, and it hands out exactly as many records as `check`
//! counted readable and pending, each one an original pending record, in
//! their original order.
#![no_main]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use handover::journal::{Cipher, Entry, SegmentStore, Store};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Edit {
    Flip {
        file: u8,
        at: u16,
        xor: u8,
    },
    Insert {
        file: u8,
        at: u16,
        bytes: Vec<u8>,
    },
    Copy {
        from: u8,
        from_at: u16,
        len: u8,
        to: u8,
        to_at: u16,
    },
    Truncate {
        file: u8,
        keep: u16,
    },
    Remove {
        file: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    records: u8,
    body_len: u8,
    records_per_segment: u8,
    cursor: Option<u8>,
    edits: Vec<Edit>,
}

fn body(seq: u64, len: u8) -> Vec<u8> {
    let mut body = format!("change-{seq}-").into_bytes();
    body.resize(body.len() + usize::from(len % 64), b'x');
    body
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn pick(files: &[PathBuf], index: u8) -> Option<&PathBuf> {
    (!files.is_empty()).then(|| &files[usize::from(index) % files.len()])
}

fn edit(dir: &Path, edit: &Edit) {
    let files = segments(dir);
    let read = |path: &PathBuf| std::fs::read(path).unwrap_or_default();
    match edit {
        Edit::Flip { file, at, xor } => {
            if let Some(path) = pick(&files, *file) {
                let mut bytes = read(path);
                if !bytes.is_empty() {
                    let at = usize::from(*at) % bytes.len();
                    bytes[at] ^= xor | 1;
                    std::fs::write(path, bytes).unwrap();
                }
            }
        }
        Edit::Insert {
            file,
            at,
            bytes: new,
        } => {
            if let Some(path) = pick(&files, *file) {
                let mut bytes = read(path);
                let at = usize::from(*at) % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
                std::fs::write(path, bytes).unwrap();
            }
        }
        Edit::Copy {
            from,
            from_at,
            len,
            to,
            to_at,
        } => {
            if let (Some(source), Some(target)) = (pick(&files, *from), pick(&files, *to)) {
                let source = read(source);
                let mut bytes = read(target);
                if !source.is_empty() {
                    let start = usize::from(*from_at) % source.len();
                    let end = (start + usize::from(*len) * 4).min(source.len());
                    let at = usize::from(*to_at) % (bytes.len() + 1);
                    bytes.splice(at..at, source[start..end].iter().copied());
                    std::fs::write(target, bytes).unwrap();
                }
            }
        }
        Edit::Truncate { file, keep } => {
            if let Some(path) = pick(&files, *file) {
                let mut bytes = read(path);
                bytes.truncate(usize::from(*keep) % (bytes.len() + 1));
                std::fs::write(path, bytes).unwrap();
            }
        }
        Edit::Remove { file } => {
            if let Some(path) = pick(&files, *file) {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let cipher = Cipher::new([9; 32]);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("journal");
    let records = u64::from(input.records % 40);
    let frame = 8 + 37 + 8 + body(0, input.body_len).len() as u64 + 2;
    let segment_bytes = frame * u64::from(input.records_per_segment % 8 + 1);
    {
        let mut store = SegmentStore::open(&dir, cipher.clone(), segment_bytes).unwrap();
        store.recover().unwrap();
        for seq in 0..records {
            let entry = Entry {
                seq,
                body: body(seq, input.body_len),
                appended_at: SystemTime::UNIX_EPOCH + Duration::from_millis(seq),
            };
            store.append(&[entry], false).unwrap();
        }
    }
    let cursor = input.cursor.map_or(0, |c| u64::from(c) % (records + 1));
    if input.cursor.is_some() {
        let mut file = cursor.to_le_bytes().to_vec();
        file.extend_from_slice(&crc32fast::hash(&cursor.to_le_bytes()).to_le_bytes());
        std::fs::write(dir.join("cursor"), file).unwrap();
    }
    for change in input.edits.iter().take(8) {
        edit(&dir, change);
    }

    let Ok(before) = handover::journal::check(&dir, &cipher) else {
        return;
    };
    let Ok(_salvaged) = handover::journal::salvage(&dir, &cipher, "fuzz") else {
        return;
    };
    let after = handover::journal::check(&dir, &cipher).expect("a salvaged journal can be read");
    assert!(
        after.clean(),
        "salvage left damage: {after:#?}\nbefore: {before:#?}"
    );
    let mut store = SegmentStore::open(&dir, cipher.clone(), segment_bytes).unwrap();
    let recovery = store.recover().expect("recovery opens a salvaged journal");
    assert_eq!(
        recovery.entries.len() as u64,
        before.logs[0].pending,
        "before: {before:#?}"
    );
    let originals: Vec<Vec<u8>> = (cursor..records)
        .map(|seq| body(seq, input.body_len))
        .collect();
    let mut from = 0;
    for entry in &recovery.entries {
        let at = originals[from..]
            .iter()
            .position(|original| *original == entry.body)
            .unwrap_or_else(|| {
                panic!(
                    "record {:?} is not an original pending one, in order",
                    String::from_utf8_lossy(&entry.body)
                )
            });
        from += at + 1;
    }
});
