//! The store contract (src/store.rs), run against both stores: the local
//! journal directory and a real PostgreSQL database (tests/support/pg.rs
//! finds or starts one; the test fails, never skips, without one).

#![allow(clippy::unwrap_used)]

#[path = "support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use handover::journal::{self, Cipher};
use handover::store::{self, Handle, Record};

use pg::TestDb;

const HOUR: Duration = Duration::from_secs(3600);

fn cipher() -> Cipher {
    Cipher::new([7; 32])
}

/// One store under test, reopenable.
struct Fixture {
    config: store::Config,
    journal: journal::Config,
    _dir: tempfile::TempDir,
    db: Option<TestDb>,
}

impl Fixture {
    async fn local() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            config: store::Config::default(),
            journal: journal::Config::new(dir.path()),
            _dir: dir,
            db: None,
        }
    }

    async fn postgres() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create().await;
        Fixture {
            config: store::Config::postgres(db.url.clone()),
            journal: journal::Config::new(dir.path()),
            _dir: dir,
            db: Some(db),
        }
    }

    async fn open(&self) -> Handle {
        Handle::open(&self.config, &self.journal, cipher())
            .await
            .unwrap()
    }
}

fn record(lane: &str, body: &str) -> Record {
    Record {
        lane: lane.as_bytes().to_vec(),
        body: body.as_bytes().to_vec(),
    }
}

fn bodies(claimed: &[store::Claimed]) -> Vec<String> {
    claimed
        .iter()
        .map(|c| String::from_utf8(c.body.clone()).unwrap())
        .collect()
}

async fn append_claim_ack(f: Fixture) {
    let store = f.open().await;
    let seqs = store
        .append(vec![
            record("a", "a1"),
            record("b", "b1"),
            record("a", "a2"),
        ])
        .await
        .unwrap();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(store.depth().await.unwrap().records, 3);

    let claimed = store.claim("x", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&claimed), ["a1", "b1", "a2"]);
    assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(claimed[0].lane, claimed[2].lane);
    assert_ne!(claimed[0].lane, claimed[1].lane);
    // Everything is held by x under a live lease.
    assert!(store.claim("y", 10, HOUR).await.unwrap().is_empty());

    store.ack(&[seqs[0], seqs[2]]).await.unwrap();
    assert_eq!(store.depth().await.unwrap().records, 1);
    // b is still x's.
    assert!(store.claim("y", 10, HOUR).await.unwrap().is_empty());
    assert_eq!(store.release("x").await.unwrap(), 1);
    let claimed = store.claim("y", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&claimed), ["b1"]);
    store.ack(&[claimed[0].seq]).await.unwrap();
    // Acking twice, or an unknown seq, is harmless.
    store.ack(&[claimed[0].seq, 999_999]).await.unwrap();
    let depth = store.depth().await.unwrap();
    assert_eq!(depth.records, 0);
    assert_eq!(depth.oldest, None);
    store.close().await.unwrap();
}

async fn a_held_lane_is_never_shared(f: Fixture) {
    let store = f.open().await;
    store
        .append(vec![record("a", "a1"), record("b", "b1")])
        .await
        .unwrap();
    // One lane only: the oldest.
    let first = store.claim("x", 1, HOUR).await.unwrap();
    assert_eq!(bodies(&first), ["a1"]);
    // A change to a held lane waits for the holder, even though the new
    // record itself is unclaimed.
    store.append(vec![record("a", "a2")]).await.unwrap();
    let second = store.claim("y", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&second), ["b1"]);
    assert!(store.claim("y", 10, HOUR).await.unwrap().is_empty());
    store.ack(&[first[0].seq]).await.unwrap();
    store.release("x").await.unwrap();
    let third = store.claim("y", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&third), ["a2"]);
    assert_eq!(store.extend("y", HOUR).await.unwrap(), 2);
    store.close().await.unwrap();
}

async fn an_expired_lease_returns_the_claim(f: Fixture) {
    let store = f.open().await;
    store
        .append(vec![record("a", "a1"), record("a", "a2")])
        .await
        .unwrap();
    let held = store
        .claim("crashed", 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    // The owner never acks nor releases (it died): once its lease has
    // expired the lane goes to whoever claims next.
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let taken = store.claim("survivor", 10, HOUR).await.unwrap();
        if !taken.is_empty() {
            break taken;
        }
        assert!(
            Instant::now() < deadline,
            "the expired claim never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(bodies(&taken), ["a1", "a2"]);
    // The survivor's live lease keeps it from the crashed owner's return.
    assert!(store.claim("crashed", 10, HOUR).await.unwrap().is_empty());
    store.close().await.unwrap();
}

async fn dead_letters_keep_the_reason_and_retry(f: Fixture) {
    let store = f.open().await;
    store
        .append(vec![record("a", "a1"), record("b", "b1")])
        .await
        .unwrap();
    let claimed = store.claim("x", 10, HOUR).await.unwrap();
    let id = store
        .bury(&claimed[0], "target answered 400 invalid_client")
        .await
        .unwrap();
    assert_eq!(store.depth().await.unwrap().records, 1);
    let letters = store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, id);
    assert_eq!(letters[0].reason, "target answered 400 invalid_client");
    assert_eq!(letters[0].body, b"a1");

    // Listable from a reopened store (any instance, for PostgreSQL).
    store.ack(&[claimed[1].seq]).await.unwrap();
    store.close().await.unwrap();
    let store = f.open().await;
    assert_eq!(store.dead_letters().await.unwrap().len(), 1);
    assert_eq!(store.retry_dead_letters(id).await.unwrap(), 1);
    assert!(store.dead_letters().await.unwrap().is_empty());
    let again = store.claim("y", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&again), ["a1"]);
    assert_eq!(
        again[0].lane, claimed[0].lane,
        "the lane survives the detour"
    );
    assert_eq!(store.retry_dead_letters(u64::MAX).await.unwrap(), 0);
    store.close().await.unwrap();
}

async fn a_reopened_store_has_the_pending_work(f: Fixture) {
    let store = f.open().await;
    let seqs = store
        .append(vec![
            record("a", "a1"),
            record("b", "b1"),
            record("c", "c1"),
        ])
        .await
        .unwrap();
    store.ack(&[seqs[1]]).await.unwrap();
    store.close().await.unwrap();

    let store = f.open().await;
    let claimed = bodies(&store.claim("after-restart", 10, HOUR).await.unwrap());
    if f.db.is_some() {
        // Acks are deletes: exactly the unacked records.
        assert_eq!(claimed, ["a1", "c1"]);
        assert_eq!(store.depth().await.unwrap().records, 2);
    } else {
        // The local journal persists a cursor over the acked prefix, so a
        // record acked out of order may come back (at least once, DESIGN
        // §4); an unacked one always does.
        assert!(
            claimed == ["a1", "c1"] || claimed == ["a1", "b1", "c1"],
            "{claimed:?}"
        );
    }
    let more = store.append(vec![record("d", "d1")]).await.unwrap();
    assert!(more[0] > seqs[2], "seqs keep increasing across a restart");
    store.close().await.unwrap();
}

fn next(phase: &str, epoch: u64, flipped_at_ms: Option<u64>) -> store::NextControl {
    store::NextControl {
        phase: phase.to_owned(),
        epoch,
        flipped_at_ms,
        hold: None,
    }
}

async fn control_is_compare_and_set(f: Fixture) {
    let store = f.open().await;
    let initial = store.control().await.unwrap();
    assert_eq!(
        (initial.phase.as_str(), initial.epoch, initial.version),
        ("mirroring", 1, 0)
    );
    assert_eq!(initial.hold, None);
    let written = store
        .set_control(0, &next("cutting-over", 1, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written.version, 1);
    // A second writer that read version 0 loses.
    assert!(
        store
            .set_control(0, &next("cutting-over", 1, None))
            .await
            .unwrap()
            .is_none()
    );
    store
        .set_control(1, &next("cut-over", 2, Some(1_700_000_000_000)))
        .await
        .unwrap()
        .unwrap();
    store.close().await.unwrap();
    let store = f.open().await;
    let read = store.control().await.unwrap();
    assert_eq!(read.phase, "cut-over");
    assert_eq!(read.epoch, 2);
    assert_eq!(read.flipped_at_ms, Some(1_700_000_000_000));
    assert_eq!(read.version, 2);
    store.close().await.unwrap();
}

async fn a_hold_is_published_acknowledged_and_expires(f: Fixture) {
    let store = f.open().await;
    let member = store::Member {
        instance: "b".to_owned(),
        admin_url: "http://b:9901".to_owned(),
        version: "0.1.0".to_owned(),
        phase: "mirroring".to_owned(),
        backfill: String::new(),
    };
    store.renew_member(&member, HOUR).await.unwrap();
    let mut hold = next("cutting-over", 1, None);
    hold.hold = Some(store::NewHold {
        coordinator: "a".to_owned(),
        lasting: Duration::from_millis(300),
    });
    let published = store.set_control(0, &hold).await.unwrap().unwrap();
    let id = published.hold.as_ref().unwrap().id;
    assert_eq!(id, published.version, "a hold is named by its version");
    let read = store.control().await.unwrap();
    let seen = read.hold.clone().unwrap();
    assert_eq!((seen.id, seen.coordinator.as_str()), (id, "a"));
    assert!(!seen.expired);

    // Members acknowledge it; an unknown instance cannot.
    for ack in [store::HoldAck::Held, store::HoldAck::Verified { keys: 7 }] {
        assert!(store.ack_hold("b", id, &ack).await.unwrap());
        let members = store.members().await.unwrap();
        assert_eq!(members[0].hold_ack, Some((id, ack)));
    }
    assert!(
        !store
            .ack_hold("nobody", id, &store::HoldAck::Held)
            .await
            .unwrap()
    );
    let failed = store::HoldAck::Failed("in-flight writes did not finish".to_owned());
    assert_eq!(store::HoldAck::decode(&failed.encode()), failed);
    // A renewal keeps the acknowledgement.
    store.renew_member(&member, HOUR).await.unwrap();
    assert!(store.members().await.unwrap()[0].hold_ack.is_some());

    // Its time runs out by the store's clock.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.control().await.unwrap().hold.unwrap().expired {
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ending it clears it.
    let ended = store
        .set_control(read.version, &next("mirroring", 1, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.hold, None);
    assert_eq!(store.control().await.unwrap().hold, None);
    store.close().await.unwrap();
}

async fn members_hold_leases(f: Fixture) {
    let store = f.open().await;
    let member = |name: &str| store::Member {
        instance: name.to_owned(),
        admin_url: format!("http://{name}:9901"),
        version: "0.1.0".to_owned(),
        phase: "mirroring".to_owned(),
        backfill: "done".to_owned(),
    };
    store.renew_member(&member("a"), HOUR).await.unwrap();
    store
        .renew_member(&member("b"), Duration::from_millis(1))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = store.members().await.unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].member, member("a"));
        assert!(members[0].live);
        if !members[1].live {
            break;
        }
        assert!(Instant::now() < deadline, "b's lease never expired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Renewing brings it back; leaving removes it.
    store.renew_member(&member("b"), HOUR).await.unwrap();
    assert!(store.members().await.unwrap().iter().all(|m| m.live));
    store.leave("a").await.unwrap();
    let left: Vec<String> = store
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.member.instance)
        .collect();
    assert_eq!(left, ["b"]);
    store.close().await.unwrap();
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::local().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

both!(
    append_claim_ack,
    a_held_lane_is_never_shared,
    an_expired_lease_returns_the_claim,
    dead_letters_keep_the_reason_and_retry,
    a_reopened_store_has_the_pending_work,
    control_is_compare_and_set,
    a_hold_is_published_acknowledged_and_expires,
    members_hold_leases,
);

// PostgreSQL only: what sharing one database across instances adds.

#[tokio::test]
async fn instances_starting_at_once_on_an_empty_database_both_come_up() {
    let f = Fixture::postgres().await;
    let (a, b, c) = tokio::join!(f.open(), f.open(), f.open());
    let probed = store::probe(&f.config).await.unwrap();
    assert_eq!(probed.found, store::SCHEMA_VERSION);
    // All three share one journal.
    let seqs = a.append(vec![record("k", "from a")]).await.unwrap();
    let claimed = b.claim("b", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&claimed), ["from a"]);
    assert!(c.claim("c", 10, HOUR).await.unwrap().is_empty());
    c.ack(&seqs).await.unwrap();
    assert_eq!(a.depth().await.unwrap().records, 0);
}

#[tokio::test]
async fn a_change_made_after_a_flip_is_never_claimed_by_an_instance_behind_it() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    store
        .append_in(vec![record("k", "made at epoch 2")], 2)
        .await
        .unwrap();
    // An instance that has not followed the flip yet would read the old
    // primary: it takes nothing from that lane.
    assert!(
        store
            .claim_through("behind", 10, HOUR, 1)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim_through("caught-up", 10, HOUR, 2).await.unwrap();
    assert_eq!(bodies(&claimed), ["made at epoch 2"]);
}

#[tokio::test]
async fn probe_reports_an_empty_database_as_version_zero() {
    let f = Fixture::postgres().await;
    let probed = store::probe(&f.config).await.unwrap();
    assert_eq!((probed.found, probed.supported), (0, store::SCHEMA_VERSION));
}

#[tokio::test]
async fn concurrent_claimers_split_the_lanes_without_sharing_one() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    let mut records = Vec::new();
    for round in 0..5 {
        for lane in 0..40 {
            records.push(record(&format!("lane-{lane}"), &format!("{lane}/{round}")));
        }
    }
    let total = records.len();
    store.append(records).await.unwrap();
    let claimers = ["x", "y", "z"].map(|owner| {
        let store = f.config.clone();
        let journal = f.journal.clone();
        tokio::spawn(async move {
            let store = Handle::open(&store, &journal, cipher()).await.unwrap();
            let mut got = Vec::new();
            loop {
                let batch = store.claim(owner, 3, HOUR).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch);
            }
            got
        })
    });
    let mut seen_lanes = std::collections::HashMap::new();
    let mut seen_seqs = std::collections::HashSet::new();
    for (i, claimer) in claimers.into_iter().enumerate() {
        for claimed in claimer.await.unwrap() {
            assert!(
                seen_seqs.insert(claimed.seq),
                "seq {} claimed twice",
                claimed.seq
            );
            let owner = seen_lanes.entry(claimed.lane).or_insert(i);
            assert_eq!(*owner, i, "a lane was handed to two claimers");
        }
    }
    assert_eq!(seen_seqs.len(), total);
    assert_eq!(seen_lanes.len(), 40);
}

/// Several instances (stores of their own, distinct owners) claim, hold
/// briefly and ack in a loop while records keep arriving on a few hot
/// lanes: no lane is ever held by two owners at once, and every record
/// appended is acked exactly once. A holder's interval here runs from
/// its claim's answer to its ack's call, within the database's (commit
/// to commit), so an overlap seen here is a real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_lanes_claimed_by_several_instances_never_have_two_owners() {
    const HOT_LANES: usize = 3;
    const INSTANCES: usize = 4;
    let f = Fixture::postgres().await;
    let appending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let appender = {
        let store = f.open().await;
        let appending = std::sync::Arc::clone(&appending);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut seqs = Vec::new();
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(2) {
                let batch = (0..HOT_LANES)
                    .map(|lane| record(&format!("hot-{lane}"), &format!("{lane}/{n}")))
                    .collect();
                seqs.extend(store.append(batch).await.unwrap());
                n += 1;
            }
            appending.store(false, std::sync::atomic::Ordering::Release);
            seqs
        })
    };
    let mut claimers = Vec::new();
    for i in 0..INSTANCES {
        let store = f.open().await;
        let appending = std::sync::Arc::clone(&appending);
        claimers.push(tokio::spawn(async move {
            let owner = format!("instance-{i}");
            let mut held = Vec::new();
            let mut acked = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "the journal never drained");
                let claimed = store.claim(&owner, 2, HOUR).await.unwrap();
                if claimed.is_empty() {
                    if !appending.load(std::sync::atomic::Ordering::Acquire)
                        && store.depth().await.unwrap().records == 0
                    {
                        return (held, acked);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let from = Instant::now();
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..4))).await;
                let seqs: Vec<_> = claimed.iter().map(|c| c.seq).collect();
                let until = Instant::now();
                let mut lanes: Vec<_> = claimed.iter().map(|c| c.lane).collect();
                lanes.sort_unstable();
                lanes.dedup();
                held.extend(lanes.into_iter().map(|lane| (lane, i, from, until)));
                store.ack(&seqs).await.unwrap();
                acked.extend(seqs);
            }
        }));
    }
    let mut appended = appender.await.unwrap();
    appended.sort_unstable();
    let mut holds = Vec::new();
    let mut acked = std::collections::HashMap::new();
    for claimer in claimers {
        let (held, seqs) = claimer.await.unwrap();
        holds.extend(held);
        for seq in seqs {
            *acked.entry(seq).or_insert(0) += 1;
        }
    }
    holds.sort_by_key(|&(lane, _, from, _)| (lane, from));
    for pair in holds.windows(2) {
        let (lane, first, _, until) = pair[0];
        let (next_lane, second, from, _) = pair[1];
        assert!(
            lane != next_lane || until <= from,
            "a lane was held by instance-{first} and instance-{second} at once"
        );
    }
    let twice: Vec<_> = acked.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "acked more than once: {twice:?}");
    let mut acked: Vec<_> = acked.into_keys().collect();
    acked.sort_unstable();
    assert_eq!(acked, appended, "every appended record acked, nothing else");
    assert!(
        holds.len() > 10,
        "the claimers took turns only {} times",
        holds.len()
    );
}

#[tokio::test]
async fn the_database_never_sees_a_key_or_body_in_clear() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    let claimed = {
        store
            .append(vec![record(
                "refresh-token:SECRET-LANE-VALUE",
                "SECRET-BODY-VALUE",
            )])
            .await
            .unwrap();
        store.claim("x", 1, HOUR).await.unwrap()
    };
    store
        .bury(&claimed[0], "target answered 500")
        .await
        .unwrap();
    store
        .append(vec![record(
            "session:SECRET-LANE-VALUE",
            "SECRET-BODY-VALUE",
        )])
        .await
        .unwrap();
    let client = f.db.as_ref().unwrap().client().await;
    let mut stored: Vec<Vec<u8>> = Vec::new();
    for row in client
        .query("SELECT lane, record FROM handover_journal", &[])
        .await
        .unwrap()
    {
        stored.push(row.get(0));
        stored.push(row.get(1));
    }
    for row in client
        .query(
            "SELECT lane, record, reason FROM handover_dead_letters",
            &[],
        )
        .await
        .unwrap()
    {
        stored.push(row.get(0));
        stored.push(row.get(1));
        stored.push(row.get::<_, String>(2).into_bytes());
    }
    assert_eq!(stored.len(), 5);
    for bytes in stored {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("SECRET"),
            "clear text in the database: {text}"
        );
    }
    // And the store reads them back.
    let claimed = store.claim("y", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&claimed), ["SECRET-BODY-VALUE"]);
}

#[tokio::test]
async fn a_wrong_journal_key_is_refused_not_skipped() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    store.append(vec![record("a", "a1")]).await.unwrap();
    let other = Handle::open(&f.config, &f.journal, Cipher::new([8; 32]))
        .await
        .unwrap();
    let err = other.claim("x", 10, HOUR).await.unwrap_err();
    assert!(
        matches!(
            err,
            store::Error::Corrupt {
                place: "journal",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_an_error_naming_no_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/test?sslmode=disable");
    let dir = tempfile::tempdir().unwrap();
    let err = Handle::open(
        &store::Config::postgres(url),
        &journal::Config::new(dir.path()),
        cipher(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, store::Error::Postgres { op: "connect", .. }),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// Waits (bounded, not timed) until `changes` says its listener is
/// connected; returns the notices heard so far.
async fn listening(changes: &mut tokio::sync::watch::Receiver<store::Changes>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = *changes.borrow_and_update();
        if seen.listening {
            return seen.notices;
        }
        assert!(Instant::now() < deadline, "the listener never connected");
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

/// Waits (bounded) until `changes` heard more than `after` notices.
async fn announced(changes: &mut tokio::sync::watch::Receiver<store::Changes>, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = changes.borrow_and_update().notices;
        if seen > after {
            return seen;
        }
        assert!(Instant::now() < deadline, "no change was announced");
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

// The fleet's backfill (PostgreSQL only: a local store's single instance
// keeps its checkpoint files).

fn stored(dataset: &str, settled: u64) -> store::StoredCheckpoint {
    store::StoredCheckpoint {
        dataset: dataset.to_owned(),
        checkpoint: format!(r#"{{"done":false,"settled":{settled}}}"#),
        rate: 10.0,
        error: None,
    }
}

#[tokio::test]
async fn a_change_of_control_or_an_acknowledgement_is_announced_to_every_instance() {
    let f = Fixture::postgres().await;
    let (a, b) = tokio::join!(f.open(), f.open());
    let mut heard = b.changes().expect("a PostgreSQL store announces changes");
    let before = listening(&mut heard).await;

    // Only notifications move the count: nothing here polls.
    let mut hold = next("cutting-over", 1, None);
    hold.hold = Some(store::NewHold {
        coordinator: "a".to_owned(),
        lasting: HOUR,
    });
    let published = a.set_control(0, &hold).await.unwrap().unwrap();
    let after_hold = announced(&mut heard, before).await;

    let member = store::Member {
        instance: "b".to_owned(),
        admin_url: "http://b:9901".to_owned(),
        version: "0.1.0".to_owned(),
        phase: "mirroring".to_owned(),
        backfill: String::new(),
    };
    b.renew_member(&member, HOUR).await.unwrap();
    let id = published.hold.unwrap().id;
    assert!(b.ack_hold("b", id, &store::HoldAck::Held).await.unwrap());
    let mut heard_by_a = a.changes().unwrap();
    listening(&mut heard_by_a).await;
    announced(&mut heard, after_hold).await;

    // One instance has nobody to hear from.
    let local = Fixture::local().await;
    assert!(local.open().await.changes().is_none());
}

#[tokio::test]
async fn a_listener_that_lost_its_connection_listens_again() {
    let f = Fixture::postgres().await;
    let (a, b) = tokio::join!(f.open(), f.open());
    let mut heard = b.changes().unwrap();
    listening(&mut heard).await;

    // The database ends both listeners' sessions (a failover, an idle
    // timeout, an operator's pg_terminate_backend).
    let db = f.db.as_ref().unwrap().client().await;
    let ended = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query = $1",
            &[&format!("LISTEN {}", store::CHANGES_CHANNEL)],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(ended >= 1, "no listener found to end");
    // It connects again (counted as a notice: what was announced meanwhile
    // must be read), then hears changes as before.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lost = false;
    loop {
        let seen = *heard.borrow_and_update();
        lost |= !seen.listening;
        if lost && seen.listening {
            break;
        }
        assert!(Instant::now() < deadline, "the listener did not come back");
        let _ = tokio::time::timeout(Duration::from_millis(200), heard.changed()).await;
    }
    let before = heard.borrow_and_update().notices;
    a.set_control(0, &next("cutting-over", 1, None))
        .await
        .unwrap()
        .unwrap();
    announced(&mut heard, before).await;
}

#[tokio::test]
async fn one_backfill_runner_at_a_time_until_its_lease_expires() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    let backfill = store.backfill_store().unwrap();
    assert!(
        Fixture::local()
            .await
            .open()
            .await
            .backfill_store()
            .is_none()
    );
    let lease = Duration::from_millis(300);
    assert_eq!(backfill.take_runner("a", lease).await.unwrap(), None);
    // Taking it again is renewing it.
    assert_eq!(backfill.take_runner("a", lease).await.unwrap(), None);
    let held = backfill.take_runner("b", lease).await.unwrap().unwrap();
    assert_eq!((held.instance.as_str(), held.live), ("a", true));
    assert!(backfill.renew_runner("a", lease).await.unwrap());
    assert_eq!(backfill.begin_pass("b", 0, 1).await.unwrap(), None);
    assert_eq!(backfill.begin_pass("a", 0, 1).await.unwrap(), Some(false));
    assert!(
        backfill
            .save_checkpoint("a", &stored("clients", 5))
            .await
            .unwrap()
    );
    // Only the runner writes.
    assert!(
        !backfill
            .save_checkpoint("b", &stored("clients", 1))
            .await
            .unwrap()
    );

    // a stops renewing (it died): b takes over, and a is fenced out.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert!(!backfill.read().await.unwrap().runner.unwrap().live);
    assert_eq!(backfill.take_runner("b", lease).await.unwrap(), None);
    assert!(!backfill.renew_runner("a", lease).await.unwrap());
    assert!(
        !backfill
            .save_checkpoint("a", &stored("clients", 2))
            .await
            .unwrap()
    );
    let update = store::BackfillUpdate {
        state: "running".to_owned(),
        rate_limit: 0,
        concurrency: 1,
        release: true,
    };
    assert!(!backfill.publish("a", &update).await.unwrap());
    // b resumes a's pass: its checkpoint is there.
    assert_eq!(backfill.begin_pass("b", 0, 1).await.unwrap(), Some(false));
    let shared = backfill.read().await.unwrap();
    assert_eq!(shared.checkpoints, [stored("clients", 5)]);
    assert_eq!(shared.runner.unwrap().instance, "b");
    assert!(shared.watching);
}

#[tokio::test]
async fn a_backfill_write_never_takes_a_key_live_traffic_touched_during_the_pass() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    let backfill = store.backfill_store().unwrap();
    // Before the pass: applied changes leave no mark.
    let early = store.append(vec![record("early", "e")]).await.unwrap();
    store.ack(&early).await.unwrap();
    assert_eq!(backfill.take_runner("r", HOUR).await.unwrap(), None);
    assert_eq!(backfill.begin_pass("r", 0, 1).await.unwrap(), Some(false));

    // A change of "live" during the pass, applied and deleted by now.
    let seqs = store.append(vec![record("live", "l1")]).await.unwrap();
    assert_eq!(bodies(&store.claim("x", 10, HOUR).await.unwrap()), ["l1"]);
    store.ack(&seqs).await.unwrap();
    assert_eq!(store.depth().await.unwrap().records, 0);
    assert_eq!(
        backfill
            .claim_for_backfill("r", b"live", b"sync", HOUR)
            .await
            .unwrap(),
        None
    );
    assert!(
        backfill
            .claim_for_backfill("r", b"early", b"sync", HOUR)
            .await
            .unwrap()
            .is_some()
    );

    // A key the backfill holds: a live change arriving meanwhile waits,
    // then goes to a claimer once the copy is written.
    let held = backfill
        .claim_for_backfill("r", b"quiet", b"sync quiet", HOUR)
        .await
        .unwrap()
        .unwrap();
    store.append(vec![record("quiet", "q1")]).await.unwrap();
    let others = store.claim("x", 10, HOUR).await.unwrap();
    assert!(bodies(&others).is_empty(), "{:?}", bodies(&others));
    store.ack(&[held]).await.unwrap();
    assert_eq!(bodies(&store.claim("x", 10, HOUR).await.unwrap()), ["q1"]);
    // And the key is touched now: no second copy.
    assert_eq!(
        backfill
            .claim_for_backfill("r", b"quiet", b"sync", HOUR)
            .await
            .unwrap(),
        None
    );

    // A runner that dies mid-write: its record returns to the pool and
    // whoever claims it syncs the key.
    let orphan = backfill
        .claim_for_backfill(
            "dead",
            b"orphan",
            b"sync orphan",
            Duration::from_millis(100),
        )
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let claimed = store.claim("y", 10, HOUR).await.unwrap();
    assert_eq!(bodies(&claimed), ["sync orphan"]);
    assert_eq!(claimed[0].seq, orphan);

    // The marks name no key in clear.
    let client = f.db.as_ref().unwrap().client().await;
    for row in client
        .query("SELECT lane FROM handover_backfill_touched", &[])
        .await
        .unwrap()
    {
        let lane: Vec<u8> = row.get(0);
        assert!(!String::from_utf8_lossy(&lane).contains("live"));
        assert_eq!(lane.len(), 16);
    }
}

#[tokio::test]
async fn a_pass_done_forgets_its_marks_and_the_next_start_is_a_new_pass() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    let backfill = store.backfill_store().unwrap();
    assert_eq!(backfill.take_runner("r", HOUR).await.unwrap(), None);
    assert_eq!(backfill.begin_pass("r", 0, 1).await.unwrap(), Some(false));
    store.append(vec![record("k", "live")]).await.unwrap();
    assert!(
        backfill
            .save_checkpoint("r", &stored("clients", 9))
            .await
            .unwrap()
    );
    let done = store::BackfillUpdate {
        state: "done".to_owned(),
        rate_limit: 5,
        concurrency: 2,
        release: true,
    };
    assert!(backfill.publish("r", &done).await.unwrap());
    let shared = backfill.read().await.unwrap();
    assert_eq!(shared.state, "done");
    assert_eq!(shared.runner, None);
    assert!(!shared.watching);
    assert_eq!((shared.rate_limit, shared.concurrency), (5, 2));
    assert!(shared.elapsed_ms.is_some());
    // Not watching: appends leave no mark.
    let client = f.db.as_ref().unwrap().client().await;
    let marks = "SELECT count(*) FROM handover_backfill_touched";
    assert_eq!(
        client.query_one(marks, &[]).await.unwrap().get::<_, i64>(0),
        0
    );
    store.append(vec![record("k2", "live")]).await.unwrap();
    assert_eq!(
        client.query_one(marks, &[]).await.unwrap().get::<_, i64>(0),
        0
    );

    // Another instance starts a new pass: the old checkpoints go.
    assert_eq!(backfill.take_runner("s", HOUR).await.unwrap(), None);
    assert_eq!(backfill.begin_pass("s", 0, 1).await.unwrap(), Some(true));
    assert!(backfill.read().await.unwrap().checkpoints.is_empty());
    assert_ne!(
        backfill.key_hash(b"client:a"),
        backfill.key_hash(b"client:b")
    );
    assert_eq!(backfill.key_hash(b"client:a").len(), 32);
}

#[tokio::test]
async fn a_key_resolved_elsewhere_while_a_copy_is_written_is_synced_again_after_it() {
    let f = Fixture::postgres().await;
    let store = f.open().await;
    let backfill = store.backfill_store().unwrap();
    assert_eq!(backfill.take_runner("r", HOUR).await.unwrap(), None);
    assert_eq!(backfill.begin_pass("r", 0, 1).await.unwrap(), Some(false));

    // Another instance resolves a change to the key while the copy is
    // being written (no record on the key's lane): the copy's record goes
    // back to the pool, a sync of the key.
    let seq = backfill
        .claim_for_backfill("r", b"k", b"sync k", HOUR)
        .await
        .unwrap()
        .unwrap();
    backfill.mark_touched(&[b"k", b"other"]).await.unwrap();
    assert!(backfill.finish_backfill_write(seq, b"k").await.unwrap());
    assert_eq!(
        bodies(&store.claim("x", 10, HOUR).await.unwrap()),
        ["sync k"]
    );

    // Untouched: the record is simply gone.
    let seq = backfill
        .claim_for_backfill("r", b"quiet", b"sync quiet", HOUR)
        .await
        .unwrap()
        .unwrap();
    assert!(!backfill.finish_backfill_write(seq, b"quiet").await.unwrap());
    assert!(store.claim("x", 10, HOUR).await.unwrap().is_empty());
    assert_eq!(store.depth().await.unwrap().records, 1);
    // The other marked key is not copied either.
    assert_eq!(
        backfill
            .claim_for_backfill("r", b"other", b"sync", HOUR)
            .await
            .unwrap(),
        None
    );
}

/// A fleet upgraded from schema 4 after its backfill finished keeps it
/// finished: before the shared backfill table each member reported its own,
/// and the migration carries a finished one over (else the cutover
/// pre-flight would ask for a second pass of the whole source).
#[tokio::test]
async fn a_backfill_finished_before_the_upgrade_stays_finished() {
    for (reported, expected) in [("done", "done"), ("running", "idle"), ("", "idle")] {
        let f = Fixture::postgres().await;
        let store = f.open().await;
        store
            .renew_member(
                &store::Member {
                    instance: "a".to_owned(),
                    admin_url: "http://a:9901".to_owned(),
                    version: "0.1.0".to_owned(),
                    phase: "mirroring".to_owned(),
                    backfill: reported.to_owned(),
                },
                HOUR,
            )
            .await
            .unwrap();
        store.close().await.unwrap();
        // The database as the previous build left it: schema 4, no shared
        // backfill tables.
        let db = f.db.as_ref().unwrap().client().await;
        db.batch_execute(
            "DROP TABLE handover_backfill, handover_backfill_checkpoints, handover_backfill_touched;
             UPDATE handover_schema SET version = 4",
        )
        .await
        .unwrap();
        let upgraded = f.open().await;
        assert_eq!(
            store::probe(&f.config).await.unwrap().found,
            store::SCHEMA_VERSION
        );
        let shared = upgraded.backfill_store().unwrap().read().await.unwrap();
        assert_eq!(shared.state, expected, "a member reported {reported:?}");
        assert!(shared.checkpoints.is_empty());
    }
}
