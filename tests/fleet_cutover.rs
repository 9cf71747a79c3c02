//! Fleet mode (issue 15): the lease-fenced cutover. Instances of the real
//! proxy (in-process, on port 0) share one PostgreSQL store in front of the
//! same Connect2id emulators; `handover cutover` on any of them publishes a
//! hold in the store, waits until every instance with a live lease has held
//! and verified, drains the shared journal and flips by compare-and-set.

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;
#[path = "support/relay.rs"]
mod relay;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::eventually;
use handover::api::{AdminClient, FlipRequest, Outcome};
use handover::config::TEST_JOURNAL_KEY;
use handover::emulator::driver::Driver;
use handover::journal::Cipher;
use handover::store;
use support::cutover::{Load, admin, finish_backfill, status};
use support::fleet_stack::{LEASE, another, fleet_stack, flip_settling};

/// The detail of the report's step `name`.
fn step<'a>(report: &'a handover::api::FlipReport, name: &str) -> &'a str {
    report
        .steps
        .iter()
        .find(|step| step.step == name)
        .map_or("", |step| step.detail.as_str())
}

/// Waits until `admin` reports the phase, epoch and primary.
async fn shows(admin: &AdminClient, phase: &str, epoch: u64, primary: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        let now = status(admin).await;
        now.phase.as_str() == phase && now.epoch == epoch && now.primary.as_str() == primary
    })
    .await
}

/// A flip under this test's load with a pause bound of 10 s: on a debug
/// build with three instances, their load and both emulators sharing two
/// busy cores, the drain and the verify of the keys synced during the hold
/// took 0.5–1.8 s, near the default 2 s bound. What these tests prove is
/// the fleet's coordination and zero client errors; the bound's own abort
/// is `a_live_instance_that_never_acknowledges_blocks_the_flip_and_nothing_changes`'s
/// and `cutover_abort.rs`'s subject.
fn unhurried() -> FlipRequest {
    FlipRequest {
        max_pause_ms: Some(10_000),
        ..FlipRequest::default()
    }
}

/// A store handle of the test's own, to look at and write the shared state
/// the way another instance would.
async fn open_store(db: &pg::TestDb) -> store::Handle {
    let dir = tempfile::tempdir().unwrap();
    let journal = handover::journal::Config::new(dir.path());
    store::Handle::open(
        &store::Config::postgres(db.url.clone()),
        &journal,
        Cipher::from_hex(TEST_JOURNAL_KEY).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_cut_over_under_load_and_roll_back_with_zero_client_errors() {
    let db = pg::TestDb::create().await;
    let stack = fleet_stack(&db.url).await;
    let b = another(&stack, &db.url).await;
    let c = another(&stack, &db.url).await;
    let admins = [admin(&stack.proxy), admin(&b), admin(&c)];
    finish_backfill(&admins[0]).await;

    // Load through all three: registrations, logins with long-lived
    // consent, refreshes with rotation, client updates.
    let via_b = Driver::new(b.url("/c2id"), support::stack::TOKEN);
    let via_c = Driver::new(c.url("/c2id"), support::stack::TOKEN);
    let loads = [
        Load::start(&stack.via_proxy, 3),
        Load::start(&via_b, 3),
        Load::start(&via_c, 2),
    ];
    for load in &loads {
        assert!(
            load.wait_ok(60, Duration::from_secs(60)).await,
            "the load did not get going: {}",
            load.stats.summary()
        );
    }

    // `handover cutover` on b coordinates all three.
    let before_flip = Instant::now();
    let report = flip_settling(&admins[1], "/cutover", &unhurried()).await;
    eprintln!(
        "fleet cutover: {} · pause {} ms · held here {}",
        report.outcome, report.pause_ms, report.held
    );
    for step in &report.steps {
        eprintln!("  {:>5} ms  {}  {}", step.at_ms, step.step, step.detail);
    }
    assert_eq!(report.outcome, Outcome::CutOver, "{report:#?}");
    assert_eq!(report.epoch, 2);
    let held = step(&report, "every instance held");
    assert!(
        held.starts_with("3 instances with a live lease"),
        "{report:#?}"
    );
    assert_eq!(report.rejected, 0);
    for admin in &admins {
        assert!(
            shows(admin, "cut-over", 2, "target").await,
            "{:?}",
            status(admin).await
        );
    }
    let ok_at_flip: Vec<u64> = loads.iter().map(|load| load.stats.ok()).collect();
    for (load, ok) in loads.iter().zip(&ok_at_flip) {
        assert!(
            load.wait_ok(ok + 40, Duration::from_secs(60)).await,
            "the load stalled after the flip: {}",
            load.stats.summary()
        );
    }

    // `handover rollback` on c, still under load.
    let report = flip_settling(&admins[2], "/rollback", &unhurried()).await;
    eprintln!(
        "fleet rollback: {} · pause {} ms",
        report.outcome, report.pause_ms
    );
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    assert_eq!(report.epoch, 3);
    for admin in &admins {
        assert!(
            shows(admin, "mirroring", 3, "source").await,
            "{:?}",
            status(admin).await
        );
    }

    let mut outcomes = Vec::new();
    for load in loads {
        let stats = Arc::clone(&load.stats);
        outcomes.extend(load.stop().await);
        eprintln!("load: {}", stats.summary());
        assert_eq!(
            stats.failed(),
            0,
            "client requests failed:\n{}",
            stats.failures().join("\n")
        );
    }

    // The fleet's journal drains (any instance's workers apply any
    // instance's records).
    assert!(
        fleet::journal_drains(&db.client().await).await,
        "the shared journal never drained"
    );
    let drift = admins[0]
        .verify(&handover::api::VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(drift.drift, 0, "{drift:#?}");

    // The last refresh token each worker rotated before the cutover works
    // at the target (the core promise), whichever instance synced it.
    for (worker, outcome) in outcomes.iter().enumerate() {
        let Some(parked) = outcome
            .parked
            .iter()
            .rev()
            .find(|parked| parked.at < before_flip)
        else {
            continue;
        };
        let client = &outcome.clients[&parked.client_id];
        // Rolled back: the source is primary again and has it too.
        stack
            .at_source
            .refresh(client, &parked.refresh_token)
            .await
            .unwrap_or_else(|err| panic!("worker {worker}'s last pre-flip token: {err}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_that_never_acknowledges_blocks_the_flip_and_nothing_changes() {
    let db = pg::TestDb::create().await;
    let stack = fleet_stack(&db.url).await;
    let b = another(&stack, &db.url).await;
    let (admin_a, admin_b) = (admin(&stack.proxy), admin(&b));
    finish_backfill(&admin_a).await;

    // An instance registered with a live lease that takes no part (stalled,
    // or partitioned from the load balancer but not from the store).
    let store = open_store(&db).await;
    let silent = store::Member {
        instance: "silent".to_owned(),
        admin_url: "http://198.51.100.7:9901".to_owned(),
        version: "0.1.0".to_owned(),
        phase: "mirroring".to_owned(),
        backfill: String::new(),
    };
    store
        .renew_member(&silent, Duration::from_secs(3600))
        .await
        .unwrap();

    let report = admin_a
        .flip(
            "/cutover",
            &FlipRequest {
                max_pause_ms: Some(600),
                ..FlipRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Aborted, "{report:#?}");
    let reason = report.reason.clone().unwrap();
    assert!(reason.contains("silent (not yet held)"), "{reason}");
    for admin in [&admin_a, &admin_b] {
        assert!(shows(admin, "mirroring", 1, "source").await);
    }
    let control = store.control().await.unwrap();
    assert_eq!((control.phase.as_str(), control.epoch), ("mirroring", 1));
    assert_eq!(control.hold, None);
    // Writes go on, to the source, through both.
    for via in [
        &stack.via_proxy,
        &Driver::new(b.url("/c2id"), support::stack::TOKEN),
    ] {
        let app = via.register_client("after the abort").await.unwrap();
        assert!(stack.source_emulator().client(&app.id).is_some());
    }

    // It leaves (a clean stop): the same flip goes through.
    store.leave("silent").await.unwrap();
    let report = flip_settling(&admin_a, "/cutover", &FlipRequest::default()).await;
    assert_eq!(report.outcome, Outcome::CutOver, "{report:#?}");
    for admin in [&admin_a, &admin_b] {
        assert!(shows(admin, "cut-over", 2, "target").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_whose_coordinator_died_expires_and_held_writes_go_to_the_old_primary() {
    let db = pg::TestDb::create().await;
    let stack = fleet_stack(&db.url).await;
    let admin_a = admin(&stack.proxy);

    // A coordinator publishes a hold and dies before flipping.
    let store = open_store(&db).await;
    let control = store.control().await.unwrap();
    store
        .set_control(
            control.version,
            &store::NextControl {
                phase: "cutting-over".to_owned(),
                epoch: control.epoch,
                flipped_at_ms: None,
                hold: Some(store::NewHold {
                    coordinator: "died-mid-flip".to_owned(),
                    lasting: Duration::from_millis(1500),
                }),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        shows(&admin_a, "cutting-over", 1, "source").await,
        "the instance did not take part in the hold"
    );

    // A write meanwhile waits at the gate, then goes to the source once an
    // instance aborts the expired hold.
    let started = Instant::now();
    let app = stack
        .via_proxy
        .register_client("held during a dead flip")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the write was not held"
    );
    assert!(stack.source_emulator().client(&app.id).is_some());
    let control = store.control().await.unwrap();
    assert_eq!((control.phase.as_str(), control.epoch), ("mirroring", 1));
    assert_eq!(control.hold, None);
    assert!(shows(&admin_a, "mirroring", 1, "source").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_store_is_waited_for_until_its_lease_expires_then_follows() {
    let db = pg::TestDb::create().await;
    let relay = relay::Relay::start(db.addr()).await;
    let stack = fleet_stack(&db.url).await;
    let cut_off = another(&stack, &db.url_via(relay.addr)).await;
    let (admin_a, admin_c) = (admin(&stack.proxy), admin(&cut_off));
    finish_backfill(&admin_a).await;
    let via_c = Driver::new(cut_off.url("/c2id"), support::stack::TOKEN);

    // Cut off right before the flip: its lease is live for up to LEASE,
    // and the flip must not complete without it until it expires.
    let severed = Instant::now();
    relay.sever();
    let report = flip_settling(
        &admin_a,
        "/cutover",
        &FlipRequest {
            max_pause_ms: Some(LEASE.as_millis() as u64 * 4),
            ..FlipRequest::default()
        },
    )
    .await;
    eprintln!(
        "cutover with an instance cut off: {} · pause {} ms",
        report.outcome, report.pause_ms
    );
    assert_eq!(report.outcome, Outcome::CutOver, "{report:#?}");
    assert!(
        severed.elapsed() >= LEASE / 2,
        "the flip did not wait for the cut-off instance's lease"
    );
    let held = step(&report, "every instance held");
    assert!(
        held.starts_with("1 instance with a live lease"),
        "{report:#?}"
    );

    // Meanwhile it fenced itself: no trigger reaches a stale primary.
    let refused = via_c.register_client("while cut off").await;
    assert!(refused.is_err(), "a fenced instance took a trigger");

    // Back: it takes the fleet's phase before taking a trigger again.
    relay.restore();
    assert!(shows(&admin_c, "cut-over", 2, "target").await);
    let app = eventually(Duration::from_secs(20), || async {
        via_c.register_client("after the fence").await.is_ok()
    })
    .await;
    assert!(app, "the fence was never lifted");
    let clients = stack.target_emulator().clients();
    assert!(
        clients
            .iter()
            .any(|client| client["client_name"] == "after the fence"),
        "the write after the fence did not go to the new primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_a_key_still_in_the_shared_journal_as_in_flight_not_drift() {
    let db = pg::TestDb::create().await;
    let stack = fleet_stack(&db.url).await;
    let admin_a = admin(&stack.proxy);
    finish_backfill(&admin_a).await;

    // A client the target lacks, whose change waits in the shared journal
    // (appended at an epoch no instance has reached, so none takes it:
    // as if another instance's sync of it were still running). Its lane is
    // the key's identity, as the sync names it.
    let client = stack
        .at_source
        .register_client("pending elsewhere")
        .await
        .unwrap();
    let key = handover::model::Key::Client {
        client_id: client.id.clone(),
    };
    let store = open_store(&db).await;
    store
        .append_in(
            vec![store::Record {
                lane: format!("client:{}", client.id).into_bytes(),
                body: handover::model::Change::sync(key).to_record(),
            }],
            99,
        )
        .await
        .unwrap();
    let report = admin_a
        .verify(&handover::api::VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    let clients = &report.datasets[&handover::model::Dataset::Clients];
    assert_eq!(report.drift, 0, "{report:#?}");
    assert_eq!(clients.in_flight, 1, "{report:#?}");

    // Once nothing of it is pending, the same difference is drift.
    let control = store.control().await.unwrap();
    assert_eq!(control.epoch, 1);
    let db_client = db.client().await;
    db_client
        .execute("DELETE FROM handover_journal", &[])
        .await
        .unwrap();
    let report = admin_a
        .verify(&handover::api::VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.drift, 1, "{report:#?}");
}
