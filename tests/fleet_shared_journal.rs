//! Fleet mode (issue 15, stage 2): two `handover serve` processes share one
//! journal in PostgreSQL. Writers register clients through both while the
//! target is taken down, so both instances hold claims on unfinished work;
//! one is killed with SIGKILL while it holds claims. When the target is
//! back, the survivor takes over the dead instance's claims once their
//! lease expires: every acknowledged write reaches the target, and the
//! shared journal drains to zero.

#![allow(clippy::unwrap_used)]

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::{DEADLINE, Instance, TOKEN, eventually, start_emulator};
use handover::emulator::driver::Driver;
use handover::emulator::jwks::JwkSet;

/// Registers clients through `driver` until `stop`; returns the ids the
/// client got a success answer for (acknowledged writes).
async fn writer(
    driver: Driver,
    name: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        match driver.register_client(&format!("{name}-{n}")).await {
            Ok(client) => acked.lock().unwrap().push(client.id),
            // The killed instance refuses connections: not acknowledged.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_reaches_the_target_when_an_instance_dies_holding_claims() {
    let db = pg::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_emulator(&jwks, issuer).await;
    let mut a = Instance::start(dir.path(), "a", &source.url(), &target.url(), &db.url).await;
    let b = Instance::start(dir.path(), "b", &source.url(), &target.url(), &db.url).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop_a = Arc::new(AtomicBool::new(false));
    let stop_b = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..2 {
        for (instance, stop, name) in [(&a, &stop_a, "a"), (&b, &stop_b, "b")] {
            writers.push(tokio::spawn(writer(
                Driver::new(instance.url(), TOKEN),
                format!("{name}{i}"),
                Arc::clone(stop),
                Arc::clone(&acked),
            )));
        }
    }
    // Both instances take writes and sync them.
    assert!(
        eventually(DEADLINE, || async { acked.lock().unwrap().len() >= 20 }).await,
        "no load"
    );

    // The target goes down: claimed work cannot finish and stays claimed.
    target.emulator().knobs().set_down(true);
    let client = db.client().await;
    let owner = format!("pid{}-%", a.pid());
    let held = eventually(DEADLINE, || async {
        client
            .query_one(
                "SELECT count(*) FROM handover_journal WHERE claimed_by LIKE $1",
                &[&owner],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
    assert!(held, "instance a never held a claim");
    let before_kill = acked.lock().unwrap().len();
    a.kill();
    stop_a.store(true, Ordering::Release);
    let still_held: i64 = client
        .query_one(
            "SELECT count(*) FROM handover_journal WHERE claimed_by LIKE $1",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    assert!(still_held > 0, "the killed instance's claims vanished");

    // Any instance reports the shared depth, not its own (empty) journal.
    assert!(
        eventually(DEADLINE, || async {
            b.journal_depth().await.is_some_and(|depth| depth > 0.0)
        })
        .await,
        "b's metrics never showed the shared backlog"
    );
    target.emulator().knobs().set_down(false);
    // The survivor keeps taking writes.
    assert!(
        eventually(DEADLINE, || async {
            acked.lock().unwrap().len() >= before_kill + 10
        })
        .await,
        "the survivor took no writes; log:\n{}",
        std::fs::read_to_string(&b.log).unwrap_or_default()
    );
    stop_b.store(true, Ordering::Release);
    for writer in writers {
        writer.await.unwrap();
    }

    // The shared journal drains: the dead instance's claims expired and the
    // survivor applied them.
    let drained = fleet::journal_drains(&client).await;
    assert!(
        drained,
        "the shared journal never drained; log of b:\n{}",
        std::fs::read_to_string(&b.log).unwrap_or_default()
    );
    assert!(
        eventually(DEADLINE, || async { b.journal_depth().await == Some(0.0) }).await,
        "b's metrics never showed the drained shared journal"
    );
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "fleet kill test: {} acknowledged writes ({before_kill} before the kill), {still_held} records claimed by the killed instance at the kill",
        acked.len()
    );
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| target.emulator().client(id).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged clients never reached the target: {missing:?}",
        missing.len(),
        acked.len()
    );
    let dead: i64 = client
        .query_one("SELECT count(*) FROM handover_dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    drop(b);
    let _ = source;
}

/// An instance switched from its own journal to the shared one brings its
/// backlog along: the changes it owed reach the target through the fleet,
/// and its local journal is acknowledged (the next start owes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_backlog_moves_to_the_shared_journal_when_switching_to_postgres() {
    let db = pg::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_emulator(&jwks, issuer).await;
    target.emulator().knobs().set_down(true);
    let mut local = Instance::start_kind(
        dir.path(),
        "a",
        &source.url(),
        &target.url(),
        &db.url,
        "local",
    )
    .await;
    let driver = Driver::new(local.url(), TOKEN);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            driver
                .register_client(&format!("owed-{n}"))
                .await
                .unwrap()
                .id,
        );
    }
    // Acknowledged, journaled locally, not on the target: killed.
    local.kill();
    assert!(ids.iter().all(|id| target.emulator().client(id).is_none()));

    target.emulator().knobs().set_down(false);
    let mut shared = Instance::start(dir.path(), "a", &source.url(), &target.url(), &db.url).await;
    let log = std::fs::read_to_string(&shared.log).unwrap();
    assert!(
        log.contains("moved the local journal's backlog to the shared journal"),
        "{log}"
    );
    let arrived = eventually(DEADLINE, || async {
        ids.iter().all(|id| target.emulator().client(id).is_some())
    })
    .await;
    assert!(arrived, "the owed changes never reached the target");
    let client = db.client().await;
    let drained = fleet::journal_drains(&client).await;
    assert!(drained);

    // A clean stop persists the local cursor: the next start owes nothing.
    shared.stop().await;
    let again = Instance::start(dir.path(), "a", &source.url(), &target.url(), &db.url).await;
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(!log.contains("moved the local journal's backlog"), "{log}");
}
