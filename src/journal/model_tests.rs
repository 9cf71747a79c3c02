//! Journal behaviour tests, including the property test against an
//! in-memory model (STYLE.md §6). They live inside the crate because a
//! faithful crash needs [`Journal::crash`], which stops the threads without
//! persisting anything and is deliberately not public API.
//!
//! # What a "crash" is here, and what the model promises
//!
//! `crash()` stops both journal threads without syncing or persisting the
//! cursor. Everything already written stays in the files, exactly as after a
//! `kill -9` (the page cache belongs to the kernel). The file damage ops
//! then model the two kinds of tail damage honestly:
//!
//! - `CrashMidWrite`: the crash interrupted the write of a group whose
//!   appenders were never answered: the last segment gets a prefix (cut
//!   anywhere, possibly whole) of that group's records, or garbage. No append
//!   that returned `Ok` is affected (its bytes were completely written before
//!   it returned). **The model expects nothing to be lost.** Records of the
//!   torn group that were written completely must come back too (they are
//!   valid; recovery has no business dropping them, and at-least-once sync
//!   makes them harmless), and the next seq must be exactly the one after
//!   them.
//! - `LoseTail(k)`: the last `k` bytes of the last segment vanish. That is
//!   storage losing data the journal had written (and, under `always`,
//!   fsynced): outside the guarantee, no honest journal survives it. What
//!   the model still demands: recovery opens (the cut looks like a torn
//!   tail), every record not reached by the cut comes back intact, and only
//!   the seqs of records the cut reached are ever handed out again.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn cipher() -> Cipher {
    Cipher::new([9; 32])
}

/// [`Journal::open`], waiting out a directory lock held only by a child
/// process: the tmpfs tests below run `mount` and `umount`, and a child
/// forked while a test here had a journal open holds a copy of its lock
/// file's descriptor (so the `flock`) until it execs, which on a loaded
/// machine outlasts that test's `close`. handover never forks; only this
/// test process does. Tests that expect `Locked` call `Journal::open`.
fn open_journal(cfg: Config, cipher: Cipher) -> Result<(Journal, Recovery), Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Journal::open(cfg.clone(), cipher.clone()) {
            Err(Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn config(dir: &Path) -> Config {
    Config::new(dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn bodies(recovery: &Recovery) -> Vec<(Seq, Vec<u8>)> {
    recovery
        .entries
        .iter()
        .map(|e| (e.seq, e.body.clone()))
        .collect()
}

/// Polls `condition` until it holds or a generous deadline passes.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn appended_records_come_back_in_order_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (journal, recovery) = open_journal(config(dir.path()), cipher()).unwrap();
    assert!(recovery.entries.is_empty());
    let a = rt.block_on(journal.append(b"client:a".to_vec())).unwrap();
    let bc = rt
        .block_on(journal.append_batch(vec![b"authz:b".to_vec(), b"session:c".to_vec()]))
        .unwrap();
    assert_eq!(a, 0);
    assert_eq!(bc, 1..3);
    // Out of order: the cursor only moves once 0 is acked too.
    journal.ack(1);
    assert_eq!(journal.stats().applied_cursor, 0);
    journal.ack(0);
    rt.block_on(journal.close()).unwrap();

    let (journal, recovery) = open_journal(config(dir.path()), cipher()).unwrap();
    assert_eq!(bodies(&recovery), vec![(2, b"session:c".to_vec())]);
    assert_eq!(recovery.next_seq, 3);
    assert_eq!(rt.block_on(journal.append(b"d".to_vec())).unwrap(), 3);
}

#[test]
fn cursor_persists_across_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (journal, _) = open_journal(config(dir.path()), cipher()).unwrap();
    for i in 0..5u8 {
        rt.block_on(journal.append(vec![i])).unwrap();
    }
    for seq in [3, 0, 1, 2] {
        journal.ack(seq);
    }
    assert_eq!(journal.stats().applied_cursor, 4);
    rt.block_on(journal.close()).unwrap();
    let (journal, recovery) = open_journal(config(dir.path()), cipher()).unwrap();
    assert_eq!(recovery.cursor, 4);
    assert_eq!(bodies(&recovery), vec![(4, vec![4])]);
    let stats = journal.stats();
    assert_eq!((stats.applied_cursor, stats.persisted_cursor), (4, 4));
    assert_eq!(stats.depth, 1);
}

#[test]
fn acked_records_may_come_back_after_a_crash_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(dir.path());
    cfg.cursor_persist_interval = Duration::from_secs(3600);
    let (journal, _) = open_journal(cfg.clone(), cipher()).unwrap();
    rt.block_on(journal.append(b"x".to_vec())).unwrap();
    journal.ack(0);
    journal.crash();
    let (_journal, recovery) = open_journal(cfg, cipher()).unwrap();
    assert_eq!(bodies(&recovery), vec![(0, b"x".to_vec())]);
}

#[test]
fn applied_segments_are_deleted_after_acks() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 256;
    let (journal, _) = open_journal(cfg.clone(), cipher()).unwrap();
    for i in 0..20u8 {
        rt.block_on(journal.append(vec![i; 40])).unwrap();
    }
    let before = journal.stats();
    assert!(before.segments > 3, "{before:?}");
    assert_eq!(segment_files(dir.path()).len(), before.segments);
    for seq in 0..15 {
        journal.ack(seq);
    }
    // Crossing segment boundaries wakes the maintenance thread at once.
    assert!(eventually(|| journal.stats().segments < before.segments));
    rt.block_on(journal.flush()).unwrap();
    let stats = journal.stats();
    assert_eq!(stats.persisted_cursor, 15);
    assert_eq!(segment_files(dir.path()).len(), stats.segments);
    assert!(stats.bytes_on_disk < before.bytes_on_disk);
    rt.block_on(journal.close()).unwrap();
    let (_journal, recovery) = open_journal(cfg, cipher()).unwrap();
    let seqs: Vec<Seq> = recovery.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (15..20).collect::<Vec<_>>());
}

#[test]
fn stats_report_depth_and_age_of_the_oldest_unacked_record() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (journal, _) = open_journal(config(dir.path()), cipher()).unwrap();
    let empty = journal.stats();
    assert_eq!(
        (empty.last_seq, empty.depth, empty.oldest_unacked_age),
        (None, 0, None)
    );
    rt.block_on(journal.append_batch(vec![vec![1], vec![2], vec![3]]))
        .unwrap();
    journal.ack(1);
    let stats = journal.stats();
    assert_eq!(stats.last_seq, Some(2));
    assert_eq!(stats.depth, 2);
    assert!(stats.oldest_unacked_age.is_some());
    assert_eq!(stats.segments, 1);
    assert!(stats.bytes_on_disk > 0);
    journal.ack(0);
    journal.ack(2);
    assert_eq!(journal.stats().depth, 0);
    assert_eq!(journal.stats().oldest_unacked_age, None);
    // Acks for seqs never handed out are ignored.
    journal.ack(99);
    assert_eq!(journal.stats().applied_cursor, 3);
}

#[test]
fn backlog_age_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (journal, _) = open_journal(config(dir.path()), cipher()).unwrap();
    rt.block_on(journal.append(b"old".to_vec())).unwrap();
    rt.block_on(journal.close()).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let (journal, recovery) = open_journal(config(dir.path()), cipher()).unwrap();
    let age = journal.stats().oldest_unacked_age.unwrap();
    assert!(age >= Duration::from_millis(25), "{age:?}");
    assert!(recovery.entries[0].appended_at.elapsed().unwrap() >= Duration::from_millis(25));
}

#[test]
fn oversized_body_is_rejected_without_consuming_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(dir.path());
    cfg.max_record_bytes = 10;
    let (journal, _) = open_journal(cfg, cipher()).unwrap();
    let err = rt
        .block_on(journal.append_batch(vec![vec![0; 5], vec![0; 11]]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RecordTooLarge {
                bytes: 11,
                limit: 10
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "journal record too large: 11 bytes, limit 10"
    );
    assert_eq!(rt.block_on(journal.append(vec![0; 10])).unwrap(), 0);
}

#[test]
fn invalid_config_is_refused_with_the_field_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 0;
    let err = Journal::open(cfg, cipher()).unwrap_err();
    assert!(err.to_string().contains("journal.segment_bytes"), "{err}");
    let mut cfg = config(dir.path());
    cfg.max_record_bytes = usize::MAX;
    assert!(matches!(
        Journal::open(cfg, cipher()).unwrap_err(),
        Error::InvalidConfig {
            field: "journal.max_record_bytes",
            ..
        }
    ));
}

#[test]
fn a_second_journal_on_the_same_directory_is_refused_until_close() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (journal, _) = open_journal(config(dir.path()), cipher()).unwrap();
    let err = Journal::open(config(dir.path()), cipher()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    rt.block_on(journal.close()).unwrap();
    assert!(open_journal(config(dir.path()), cipher()).is_ok());
}

#[test]
fn appends_after_close_fail_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (journal, _) = open_journal(config(dir.path()), cipher()).unwrap();
    let other = journal.clone();
    rt.block_on(journal.close()).unwrap();
    assert!(matches!(
        rt.block_on(other.append(vec![1])),
        Err(Error::Closed)
    ));
    assert!(matches!(rt.block_on(other.flush()), Err(Error::Closed)));
}

#[test]
fn mid_file_corruption_refuses_to_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (journal, _) = open_journal(config(dir.path()), cipher()).unwrap();
    for i in 0..4u8 {
        rt.block_on(journal.append(vec![i; 100])).unwrap();
    }
    rt.block_on(journal.close()).unwrap();
    let path = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&path).unwrap();
    let frame = record::parse(&bytes).unwrap().frame_len;
    let offset = 2 * frame; // record 2 of 4; all frames have the same size
    bytes[offset + 50] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let err = Journal::open(config(dir.path()), cipher()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::CorruptBeforeValid { .. }), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("byte {offset}")), "{message}");
    // The refusal changed nothing on disk.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

/// An observer that counts commits and, on the first one, stalls like a
/// slow fsync so that the other appenders pile up behind it.
#[derive(Default)]
struct CountingObserver {
    commits: AtomicUsize,
    records: AtomicUsize,
    largest_group: AtomicUsize,
    stall_first: Duration,
}

impl Observer for CountingObserver {
    fn on_commit(&self, commit: &Commit) {
        if self.commits.fetch_add(1, Ordering::SeqCst) == 0 {
            std::thread::sleep(self.stall_first);
        }
        self.records.fetch_add(commit.records, Ordering::SeqCst);
        self.largest_group
            .fetch_max(commit.requests, Ordering::SeqCst);
        assert!(commit.fsync.is_some(), "sync = always fsyncs every commit");
    }
}

#[test]
fn group_commit_needs_fewer_fsyncs_than_appends() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(CountingObserver {
        stall_first: Duration::from_millis(50),
        ..CountingObserver::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (journal, _) =
        Journal::open_with_observer(config(dir.path()), cipher(), observer.clone()).unwrap();
    const APPENDERS: usize = 64;
    let seqs = rt.block_on(async {
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|i| {
                let journal = journal.clone();
                tokio::spawn(async move { journal.append(format!("key {i}").into_bytes()).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap());
        }
        seqs
    });
    seqs.iter().for_each(|&s| assert!(s < APPENDERS as u64));
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), APPENDERS, "every append got its own seq");
    let commits = observer.commits.load(Ordering::SeqCst);
    assert_eq!(observer.records.load(Ordering::SeqCst), APPENDERS);
    assert!(
        commits < APPENDERS,
        "{commits} commits for {APPENDERS} appends"
    );
    assert!(observer.largest_group.load(Ordering::SeqCst) > 1);
}

/// Blocks every commit until released, to hold a group in flight.
struct GateObserver {
    gate: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Observer for GateObserver {
    fn on_commit(&self, _: &Commit) {
        let _ = self.gate.lock().unwrap().recv();
    }
}

/// A journal in `dir` whose every commit waits for a `()` on the sender.
fn gated_journal(dir: &Path) -> (Journal, std::sync::mpsc::Sender<()>) {
    let (release, gate) = std::sync::mpsc::channel();
    let observer = Arc::new(GateObserver {
        gate: Mutex::new(gate),
    });
    let (journal, _) = Journal::open_with_observer(config(dir), cipher(), observer).unwrap();
    (journal, release)
}

/// Polls `append` once, so that its request reaches the writer (whose
/// commit the gate holds).
async fn send_only<F: std::future::Future + Unpin>(append: &mut F) {
    tokio::select! {
        biased;
        _ = append => panic!("the gate holds the commit"),
        () = std::future::ready(()) => {}
    }
}

#[test]
fn a_dropped_append_future_leaves_an_orphan_not_a_stuck_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, release) = gated_journal(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let mut append = std::pin::pin!(journal.append(b"lost caller".to_vec()));
        // Send the request, then give up on it.
        send_only(&mut append).await;
    });
    release.send(()).unwrap();
    assert!(eventually(|| journal.stats().orphans == 1));
    let orphans = journal.take_orphans();
    assert_eq!(orphans.len(), 1);
    assert_eq!(
        (orphans[0].seq, &orphans[0].body[..]),
        (0, &b"lost caller"[..])
    );
    journal.ack(0);
    assert_eq!(journal.stats().depth, 0);
    drop(release);
}

/// Found by benches/distance.sh: under load, clients that time out drop
/// their request between the writer's answer and the trigger hook reading
/// it; those records stayed unsynced (journal depth stuck above 0, the
/// cutover refused for lag) until a restart.
#[test]
fn an_append_future_dropped_after_the_answer_leaves_an_orphan_not_a_stuck_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, release) = gated_journal(dir.path());
    let rt = runtime();
    let mut lost = Box::pin(journal.append(b"answered, never read".to_vec()));
    // Send the request, and keep the future.
    rt.block_on(send_only(&mut lost));
    // Two commits may pass. The writer answers a group before it takes the
    // next request, so once a later append is answered, the first one's
    // answer is in its channel, unread.
    release.send(()).unwrap();
    release.send(()).unwrap();
    let second = rt.block_on(journal.append(b"read".to_vec())).unwrap();
    assert_eq!(second, 1);
    assert_eq!(journal.stats().orphans, 0);
    drop(lost);
    assert_eq!(journal.stats().orphans, 1);
    let orphans = journal.take_orphans();
    assert_eq!(
        (orphans[0].seq, &orphans[0].body[..]),
        (0, &b"answered, never read"[..])
    );
    journal.ack(0);
    journal.ack(1);
    assert_eq!(journal.stats().depth, 0);
    drop(release);
}

#[test]
fn interval_policy_answers_before_fsync_and_loses_nothing_to_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(dir.path());
    cfg.sync = SyncPolicy::Interval(Duration::from_secs(3600));
    let (journal, _) = open_journal(cfg.clone(), cipher()).unwrap();
    for i in 0..10u8 {
        rt.block_on(journal.append(vec![i])).unwrap();
    }
    journal.crash();
    let (_journal, recovery) = open_journal(cfg, cipher()).unwrap();
    assert_eq!(recovery.entries.len(), 10);
}

#[test]
fn entry_debug_does_not_print_the_body() {
    let entry = Entry {
        seq: 1,
        body: b"refresh-token-secret".to_vec(),
        appended_at: SystemTime::UNIX_EPOCH,
    };
    let printed = format!("{entry:?}");
    assert!(!printed.contains("secret"), "{printed}");
    assert!(printed.contains("body_len: 20"), "{printed}");
}

/// A tiny tmpfs, for running out of space for real. Needs root (or
/// CAP_SYS_ADMIN); tests using it skip, saying why, where that is missing.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(bytes: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Self { dir })
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a failed assertion left files open): detach it
            // rather than leak a mount.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn disk_full_fails_the_append_and_the_journal_recovers_when_space_returns() {
    let fs_ = match TinyFs::mount(128 * 1024) {
        Ok(fs_) => fs_,
        Err(why) => {
            eprintln!("skipping disk-full test: cannot mount a small tmpfs: {why}");
            return;
        }
    };
    let dir = fs_.dir.path().join("journal");
    let rt = runtime();
    let (journal, _) = open_journal(config(&dir), cipher()).unwrap();
    // Leave a little room, then fill it.
    let ballast = fs_.dir.path().join("ballast");
    let mut file = fs::File::create(&ballast).unwrap();
    let _ = file.write_all(&vec![0; 100 * 1024]);
    drop(file);
    let mut ok = Vec::new();
    let err = loop {
        let body = vec![ok.len() as u8; 3000];
        match rt.block_on(journal.append(body.clone())) {
            Ok(seq) => ok.push((seq, body)),
            Err(err) => break err,
        }
        assert!(ok.len() < 1000, "the disk never filled up");
    };
    let Error::Io { source, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(source.raw_os_error(), Some(28), "ENOSPC expected: {err}");
    // Still full: fails again, and the writer thread is still alive.
    assert!(rt.block_on(journal.append(vec![0; 3000])).is_err());
    fs::remove_file(&ballast).unwrap();
    let seq = rt.block_on(journal.append(vec![7; 3000])).unwrap();
    assert_eq!(seq, ok.len() as u64, "failed appends consumed no seq");
    ok.push((seq, vec![7; 3000]));
    journal.crash();
    let (journal, recovery) = open_journal(config(&dir), cipher()).unwrap();
    assert_eq!(
        recovery.torn_tail, None,
        "the partial write was truncated at once"
    );
    assert_eq!(bodies(&recovery), ok);
    // Close (not just drop) so no file is open when the tmpfs is unmounted.
    rt.block_on(journal.close()).unwrap();
}

// ---------------------------------------------------------------------------
// The model test.

#[derive(Debug, Clone)]
enum Damage {
    /// A prefix (cut at this fraction of its length, possibly all of it) of
    /// the frames of an unanswered group with these bodies.
    TornGroup(Vec<Vec<u8>>, prop::sample::Index),
    /// Arbitrary bytes.
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Ack(prop::sample::Index),
    AckAll,
    Flush,
    Restart { clean: bool },
    CrashMidWrite(Damage),
    LoseTail(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let body = prop::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        6 => prop::collection::vec(body, 1..4).prop_map(Op::Append),
        4 => any::<prop::sample::Index>().prop_map(Op::Ack),
        1 => Just(Op::AckAll),
        1 => Just(Op::Flush),
        2 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
        2 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 1..4),
              any::<prop::sample::Index>())
            .prop_map(|(bodies, cut)| Op::CrashMidWrite(Damage::TornGroup(bodies, cut))),
        1 => prop::collection::vec(any::<u8>(), 1..64)
            .prop_map(|g| Op::CrashMidWrite(Damage::Garbage(g))),
        1 => (1usize..300).prop_map(Op::LoseTail),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    segment_bytes: u64,
    sync: SyncPolicy,
    cursor_persist_interval: Duration,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![
            Just(120u64),
            Just(400),
            Just(4096),
            Just(DEFAULT_SEGMENT_BYTES)
        ],
        prop_oneof![
            Just(SyncPolicy::Always),
            Just(SyncPolicy::Interval(Duration::from_millis(1)))
        ],
        prop_oneof![
            Just(Duration::from_millis(1)),
            Just(Duration::from_secs(3600))
        ],
    )
        .prop_map(|(segment_bytes, sync, cursor_persist_interval)| Setup {
            segment_bytes,
            sync,
            cursor_persist_interval,
        })
}

/// What the journal must hold.
#[derive(Debug, Default)]
struct Model {
    /// Appended with `Ok` (or recovered) and not acked: must come back.
    pending: BTreeMap<Seq, Vec<u8>>,
    /// Acked since the last restart: may come back (at-least-once).
    acked: BTreeMap<Seq, Vec<u8>>,
    /// The seq the next append must get.
    next_seq: Seq,
}

struct Harness {
    dir: tempfile::TempDir,
    config: Config,
    rt: tokio::runtime::Runtime,
    journal: Option<Journal>,
    model: Model,
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.segment_bytes = setup.segment_bytes;
        config.sync = setup.sync;
        config.cursor_persist_interval = setup.cursor_persist_interval;
        let (journal, recovery) = open_journal(config.clone(), cipher()).unwrap();
        assert!(recovery.entries.is_empty());
        Self {
            dir,
            config,
            rt: runtime(),
            journal: Some(journal),
            model: Model::default(),
        }
    }

    fn journal(&self) -> &Journal {
        self.journal.as_ref().expect("open between ops")
    }

    fn last_segment(&self) -> PathBuf {
        segment_files(self.dir.path())
            .pop()
            .expect("an open journal always has an active segment")
    }

    fn run(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(bodies) => {
                let seqs = self
                    .rt
                    .block_on(self.journal().append_batch(bodies.clone()))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(seqs.start, self.model.next_seq, "seqs are consecutive");
                prop_assert_eq!(seqs.end - seqs.start, bodies.len() as u64);
                self.model.pending.extend(seqs.clone().zip(bodies));
                self.model.next_seq = seqs.end;
            }
            Op::Ack(index) => {
                if !self.model.pending.is_empty() {
                    let seq = *self
                        .model
                        .pending
                        .keys()
                        .nth(index.index(self.model.pending.len()))
                        .unwrap();
                    self.journal().ack(seq);
                    let body = self.model.pending.remove(&seq).unwrap();
                    self.model.acked.insert(seq, body);
                }
            }
            Op::AckAll => {
                for (seq, body) in std::mem::take(&mut self.model.pending) {
                    self.journal().ack(seq);
                    self.model.acked.insert(seq, body);
                }
            }
            Op::Flush => {
                self.rt
                    .block_on(self.journal().flush())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if self.model.pending.is_empty() {
                    // Everything applied and persisted: only the active
                    // segment may remain.
                    let stats = self.journal().stats();
                    prop_assert_eq!(stats.persisted_cursor, self.model.next_seq);
                    prop_assert_eq!(stats.segments, 1);
                    prop_assert_eq!(segment_files(self.dir.path()).len(), 1);
                }
            }
            Op::Restart { clean } => {
                self.stop(clean);
                self.reopen(None)?;
            }
            Op::CrashMidWrite(damage) => {
                self.stop(false);
                let junk = match damage {
                    Damage::TornGroup(bodies, cut) => {
                        let mut frames = Vec::new();
                        let mut ends = Vec::new();
                        for (seq, body) in (self.model.next_seq..).zip(&bodies) {
                            // Plaintext as the segment store writes it:
                            // appended_at (here the epoch) then the body.
                            let mut plaintext = vec![0; 8];
                            plaintext.extend_from_slice(body);
                            record::encode_into(&mut frames, seq, &plaintext, &cipher()).unwrap();
                            ends.push(frames.len());
                        }
                        let cut = 1 + cut.index(frames.len());
                        frames.truncate(cut);
                        for (body, end) in bodies.into_iter().zip(ends) {
                            if end <= cut {
                                self.model.pending.insert(self.model.next_seq, body);
                                self.model.next_seq += 1;
                            }
                        }
                        frames
                    }
                    Damage::Garbage(bytes) => bytes,
                };
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(self.last_segment())
                    .unwrap();
                file.write_all(&junk).unwrap();
                drop(file);
                self.reopen(None)?;
            }
            Op::LoseTail(cut) => {
                self.stop(false);
                let path = self.last_segment();
                let bytes = fs::read(&path).unwrap();
                let new_len = bytes.len().saturating_sub(cut);
                let mut lost = Vec::new();
                let mut at = 0;
                while at < bytes.len() {
                    let frame = record::parse(&bytes[at..]).unwrap();
                    if at + frame.frame_len > new_len {
                        lost.push(frame.seq);
                    }
                    at += frame.frame_len;
                }
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(new_len as u64)
                    .unwrap();
                for seq in &lost {
                    self.model.pending.remove(seq);
                    self.model.acked.remove(seq);
                }
                self.reopen(lost.first().copied())?;
            }
        }
        let stats = self.journal().stats();
        prop_assert_eq!(stats.depth, self.model.pending.len() as u64, "depth");
        Ok(())
    }

    fn stop(&mut self, clean: bool) {
        let journal = self.journal.take().expect("open between ops");
        if clean {
            self.rt.block_on(journal.close()).unwrap();
        } else {
            journal.crash();
        }
    }

    /// Reopens and checks the recovered entries against the model.
    /// `first_lost` is the first seq a `LoseTail` cut reached, if any.
    fn reopen(&mut self, first_lost: Option<Seq>) -> Result<(), TestCaseError> {
        let (journal, recovery) = open_journal(self.config.clone(), cipher())
            .map_err(|e| TestCaseError::fail(format!("recovery refused: {e}")))?;
        self.journal = Some(journal);
        let seqs: Vec<Seq> = recovery.entries.iter().map(|e| e.seq).collect();
        prop_assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seq order: {:?}",
            seqs
        );
        let recovered: BTreeMap<Seq, Vec<u8>> = recovery
            .entries
            .iter()
            .map(|e| (e.seq, e.body.clone()))
            .collect();
        for (seq, body) in &self.model.pending {
            prop_assert_eq!(recovered.get(seq), Some(body), "pending seq {} lost", seq);
        }
        for (seq, body) in &recovered {
            let known = self
                .model
                .pending
                .get(seq)
                .or_else(|| self.model.acked.get(seq));
            prop_assert_eq!(
                known,
                Some(body),
                "seq {} was never appended with this body",
                seq
            );
        }
        match first_lost {
            None => prop_assert_eq!(recovery.next_seq, self.model.next_seq),
            Some(first_lost) => {
                // Only the seqs the cut reached may be handed out again.
                prop_assert!(recovery.next_seq >= first_lost);
                prop_assert!(recovery.next_seq <= self.model.next_seq);
                self.model.next_seq = recovery.next_seq;
            }
        }
        if let Some(&last) = seqs.last() {
            prop_assert!(last < recovery.next_seq);
        }
        // The caller re-applies what came back: it is all pending again.
        self.model.pending = recovered;
        self.model.acked.clear();
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises it for a longer soak.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn journal_matches_the_model(setup in setup(), ops in prop::collection::vec(op(), 1..40)) {
        let mut harness = Harness::new(&setup);
        for op in ops {
            harness.run(op)?;
        }
        // A final crash and restart must still hold everything.
        harness.stop(false);
        harness.reopen(None)?;
    }
}
