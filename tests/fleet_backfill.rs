//! The backfill in a fleet (issue 15, "shared control state"): one runner
//! at a time fleet-wide, checkpoints and progress in the shared store,
//! status from any instance, a dead runner's pass resumed elsewhere from
//! the shared checkpoint, and live writes through another instance winning
//! over the runner's older exported copies. `handover serve` processes on
//! one PostgreSQL database, in front of in-process Connect2id emulators.

#![allow(clippy::unwrap_used)]

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;

use std::sync::Mutex;

use fleet::{
    ADMIN_TOKEN, DEADLINE, Instance, Options, TOKEN, eventually, journal_drains,
    start_target_emulator,
};
use handover::api::{AdminClient, BackfillState, Status, VerifyRequest};
use handover::emulator::connect2id::{self, Connect2id, Handle};
use handover::emulator::driver::{Consent, Driver};
use handover::emulator::jwks::JwkSet;
use handover::model::Dataset;
use tokio::net::TcpListener;

const ISSUER: &str = "http://127.0.0.1:1/c2id";

/// What every test here runs its instances against: a database, a source
/// seeded with generated clients, a target, a directory for the instances.
struct Setup {
    db: pg::TestDb,
    dir: tempfile::TempDir,
    source: Handle,
    target: Handle,
}

impl Setup {
    /// With `seed` generated clients at the source.
    async fn new(seed: usize) -> Self {
        let jwks = JwkSet::generate();
        Self {
            db: pg::TestDb::create().await,
            dir: tempfile::tempdir().unwrap(),
            source: seeded_source(&jwks, seed).await,
            target: start_target_emulator(&jwks, ISSUER).await,
        }
    }

    /// A `handover serve` instance named `name` in front of both.
    async fn start(&self, name: &str, options: &Options) -> Instance {
        let (source, target) = (self.source.url(), self.target.url());
        Instance::start_with(
            self.dir.path(),
            name,
            &source,
            &target,
            &self.db.url,
            options,
        )
        .await
    }
}

/// A source holding `seed` generated clients.
async fn seeded_source(jwks: &JwkSet, seed: usize) -> Handle {
    let mut config = connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks.clone());
    config.base_path = "/c2id".to_owned();
    config.issuer = Some(ISSUER.to_owned());
    config.seed = seed;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Connect2id::new(config).start(listener).await
}

fn admin(instance: &Instance) -> AdminClient {
    AdminClient::new(
        &format!("http://127.0.0.1:{}", instance.admin_port),
        Some(ADMIN_TOKEN.to_owned()),
    )
}

async fn status(instance: &Instance) -> Status {
    admin(instance).status().await.unwrap()
}

/// Clients only, and `sections` (e.g. `[backfill]`). The lease is long
/// enough that a busy two-core machine running these instances side by
/// side does not let a runner's lease lapse between renewals (which would
/// hand the backfill to another instance mid-run); short enough that a
/// killed runner's lease runs out within the test.
fn options(sections: &str) -> Options {
    Options {
        claim_lease: "3s".to_owned(),
        sections: sections.to_owned(),
        ..Options::default()
    }
}

/// Settled records of the clients' shared checkpoint, as the database has
/// it (0 before the first checkpoint).
async fn shared_settled(pg: &tokio_postgres::Client) -> u64 {
    let row = pg
        .query_opt(
            "SELECT checkpoint FROM handover_backfill_checkpoints WHERE dataset = 'clients'",
            &[],
        )
        .await
        .unwrap();
    row.map_or(0, |row| {
        let checkpoint: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
        checkpoint["settled"].as_u64().unwrap()
    })
}

/// Settled records of the clients as `status` shows them.
fn settled(status: &Status) -> u64 {
    let clients = &status.backfill.datasets[&Dataset::Clients];
    clients.copied + clients.skipped + clients.failed
}

/// Export requests (`GET /clients`) the source answered while recording.
fn exports(source: &Handle) -> usize {
    source
        .emulator()
        .knobs()
        .calls()
        .iter()
        .filter(|call| call.method == http::Method::GET && call.route == "/clients")
        .count()
}

async fn wait_done(instance: &Instance) -> Status {
    let last = Mutex::new(None);
    let done = eventually(DEADLINE, || async {
        let now = status(instance).await;
        let done = now.backfill.state == BackfillState::Done;
        *last.lock().unwrap() = Some(now);
        done
    })
    .await;
    let last = last.into_inner().unwrap().unwrap();
    assert!(done, "the backfill did not finish: {:?}", last.backfill);
    last
}

/// The shared journal drains, then a verify from `instance` finds no drift.
async fn assert_no_drift(db: &pg::TestDb, instance: &Instance) {
    let pg = db.client().await;
    assert!(
        journal_drains(&pg).await,
        "the shared journal never drained"
    );
    let report = admin(instance)
        .verify(&VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.drift, 0, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_elsewhere_is_refused_naming_the_runner_and_any_instance_shows_its_progress()
{
    let setup = Setup::new(400).await;
    let db = &setup.db;
    let a = setup.start("a", &options("")).await;
    let b = setup.start("b", &options("")).await;

    // Slow enough that b is asked while a runs.
    admin(&a).backfill("start", Some(40), None).await.unwrap();
    let runner = format!("pid{}-", a.pid());
    let a_admin = format!("http://127.0.0.1:{}", a.admin_port);
    for operation in ["start", "pause", "settings"] {
        let err = admin(&b)
            .backfill(operation, Some(1000), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("409") && err.contains(&runner) && err.contains(&a_admin),
            "{operation} on b: {err}"
        );
    }

    // b shows the fleet's backfill: a runs it, and its progress moves.
    let seen = Mutex::new(None);
    let progressing = eventually(DEADLINE, || async {
        let now = status(&b).await;
        let moving = now.backfill.state == BackfillState::Running && settled(&now) >= 40;
        *seen.lock().unwrap() = Some(now);
        moving
    })
    .await;
    let seen = seen.into_inner().unwrap().unwrap();
    assert!(
        progressing,
        "b never showed a's progress: {:?}",
        seen.backfill
    );
    let shown = seen.backfill.runner.clone().unwrap();
    assert!(shown.instance.starts_with(&runner), "{shown:?}");
    assert_eq!(shown.admin_url, a_admin);
    assert!(
        settled(&seen) < 400,
        "b showed the backfill finished while a ran it: {:?}",
        seen.backfill
    );
    // b's refused settings did not reach a.
    assert_eq!(status(&a).await.backfill.rate_limit, 40);

    // The runner's own settings apply; every instance sees the end.
    admin(&a).backfill("settings", Some(0), None).await.unwrap();
    for instance in [&a, &b] {
        let done = wait_done(instance).await;
        assert_eq!(settled(&done), 400, "{:?}", done.backfill);
        assert_eq!(done.backfill.runner, None);
    }
    assert_no_drift(db, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_start_on_two_instances_runs_one_backfill() {
    let setup = Setup::new(300).await;
    let (db, source) = (&setup.db, &setup.source);
    source.emulator().knobs().record_calls(true);
    let auto = options("[backfill]\nauto_start = true\nrate = 150\n");
    let (a, b) = tokio::join!(setup.start("a", &auto), setup.start("b", &auto),);

    // Both name the same runner while it runs.
    let agreed = eventually(DEADLINE, || async {
        let (sa, sb) = (status(&a).await, status(&b).await);
        sa.backfill.state == BackfillState::Running
            && sa.backfill.runner.is_some()
            && sa.backfill.runner == sb.backfill.runner
    })
    .await;
    assert!(agreed, "a and b never named one runner");
    for instance in [&a, &b] {
        assert_eq!(settled(&wait_done(instance).await), 300);
    }
    // One runner read the source: one counting pass and one copying
    // pass of the export, not two of each.
    assert_eq!(exports(source), 2, "export requests at the source");
    assert_no_drift(db, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_resumes_a_killed_runners_pass_from_the_shared_checkpoint() {
    let setup = Setup::new(600).await;
    let db = &setup.db;
    let mut a = setup.start("a", &options("")).await;
    let b = setup.start("b", &options("")).await;
    let pg = db.client().await;

    admin(&a).backfill("start", Some(100), None).await.unwrap();
    assert!(
        eventually(DEADLINE, || async { shared_settled(&pg).await >= 150 }).await,
        "no shared checkpoint"
    );
    let killed = format!("pid{}-", a.pid());
    a.kill();
    let at_kill = shared_settled(&pg).await;
    assert!(at_kill < 600, "a finished before it was killed");

    // b takes over once a's lease expired (refused while it is live).
    let refused = Mutex::new(Vec::new());
    let started = eventually(DEADLINE, || async {
        match admin(&b).backfill("start", Some(0), None).await {
            Ok(_) => true,
            Err(err) => {
                refused.lock().unwrap().push(err.to_string());
                false
            }
        }
    })
    .await;
    let refused = refused.into_inner().unwrap();
    assert!(started, "b never took over: {refused:?}");
    for err in &refused {
        assert!(err.contains(&killed), "{err}");
    }
    let resumed = status(&b).await;
    assert!(
        settled(&resumed) >= at_kill,
        "b restarted the count: {} settled, {at_kill} at the kill",
        settled(&resumed)
    );
    let done = wait_done(&b).await;
    assert_eq!(settled(&done), 600, "{:?}", done.backfill);
    let log = std::fs::read_to_string(&b.log).unwrap();
    let resume_at = log
        .lines()
        .find(|line| line.contains("backfill copying"))
        .and_then(|line| line.split("resume_at=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("b logged no resume point:\n{log}"));
    assert!(
        resume_at >= at_kill,
        "b resumed at {resume_at}, {at_kill} at the kill"
    );
    assert_no_drift(db, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_writes_through_another_instance_win_over_the_runners_exported_copies() {
    let setup = Setup::new(0).await;
    let (db, source, target) = (&setup.db, &setup.source, &setup.target);
    // Clients that exist before handover: only the backfill copies them.
    let at_source = Driver::new(source.url(), TOKEN);
    let mut clients = Vec::new();
    for n in 0..120 {
        clients.push(
            at_source
                .register_client(&format!("old-{n}"))
                .await
                .unwrap(),
        );
    }
    let a = setup.start("a", &options("")).await;
    let b = setup.start("b", &options("")).await;

    // a copies slowly: its export (one chunk of the source's) is read
    // whole when it opens, then written 20 records a second.
    admin(&a).backfill("start", Some(20), None).await.unwrap();
    assert!(
        eventually(DEADLINE, || async { settled(&status(&a).await) >= 10 }).await,
        "the backfill did not get going"
    );
    // Live traffic through b renames the clients a has read but not yet
    // written; whichever instance claims those changes syncs them.
    let via_b = Driver::new(b.url(), TOKEN);
    let mut renamed = Vec::new();
    for (n, client) in clients.iter().enumerate().skip(60) {
        let name = format!("old-{n}-new");
        via_b.update_client(client, &name).await.unwrap();
        renamed.push((client.id.clone(), name));
    }
    admin(&a).backfill("settings", Some(0), None).await.unwrap();
    let done = wait_done(&a).await;
    assert_eq!(settled(&done), 120, "{:?}", done.backfill);
    let skipped = done.backfill.datasets[&Dataset::Clients].skipped;
    assert!(
        skipped > 0,
        "no exported copy was skipped: {:?}",
        done.backfill
    );

    assert_no_drift(db, &b).await;
    // The newest read landed last: the target has the new names.
    for (id, name) in &renamed {
        let record = target.emulator().client(id).unwrap();
        assert_eq!(
            record["client_name"].as_str(),
            Some(name.as_str()),
            "client {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auto_start_a_survivor_takes_over_when_the_runner_dies() {
    let setup = Setup::new(500).await;
    let db = &setup.db;
    let auto = options("[backfill]\nauto_start = true\nrate = 100\n");
    let mut instances = [setup.start("a", &auto).await, setup.start("b", &auto).await];
    let pg = db.client().await;
    assert!(
        eventually(DEADLINE, || async { shared_settled(&pg).await >= 100 }).await,
        "no shared checkpoint"
    );
    let runner = status(&instances[0]).await.backfill.runner.unwrap();
    let dead = instances
        .iter()
        .position(|i| runner.instance.starts_with(&format!("pid{}-", i.pid())))
        .unwrap();
    instances[dead].kill();
    let at_kill = shared_settled(&pg).await;
    let survivor = &instances[1 - dead];

    // Nobody asks: the survivor sees the pass without a live runner and
    // resumes it from the shared checkpoint.
    let done = wait_done(survivor).await;
    assert_eq!(settled(&done), 500, "{:?}", done.backfill);
    let log = std::fs::read_to_string(&survivor.log).unwrap();
    assert!(
        log.contains("took over the fleet's backfill"),
        "the survivor did not take over:\n{log}"
    );
    let resume_at = log
        .lines()
        .filter(|line| line.contains("backfill copying"))
        .filter_map(|line| line.split("resume_at=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .next_back()
        .unwrap();
    assert!(
        resume_at >= at_kill,
        "resumed at {resume_at}, {at_kill} at the kill"
    );
    assert_no_drift(db, survivor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotated_through_another_instance_during_the_copy_work_at_the_target() {
    let setup = Setup::new(0).await;
    let (db, source, target) = (&setup.db, &setup.source, &setup.target);
    // Users who consented before handover: only the backfill copies their
    // authorizations.
    let at_source = Driver::new(source.url(), TOKEN);
    let client = at_source.register_client("app").await.unwrap();
    let mut refresh_tokens = Vec::new();
    for n in 0..60 {
        let login = at_source
            .login(&client.id, &format!("user-{n}"), Consent::default())
            .await
            .unwrap();
        let tokens = at_source.exchange_code(&client, &login.code).await.unwrap();
        refresh_tokens.push(tokens.refresh_token.unwrap());
    }
    let both = Options {
        datasets: r#"["clients", "authorizations"]"#.to_owned(),
        ..options("")
    };
    let a = setup.start("a", &both).await;
    let b = setup.start("b", &both).await;

    admin(&a).backfill("start", Some(15), None).await.unwrap();
    let copying = eventually(DEADLINE, || async {
        let now = status(&a).await;
        now.backfill
            .datasets
            .get(&Dataset::Authorizations)
            .is_some_and(|p| p.copied + p.skipped >= 5)
    })
    .await;
    assert!(copying, "the authorizations' copy did not get going");
    // Users of the second half refresh through b: their authorizations
    // rotate after a read them.
    let via_b = Driver::new(b.url(), TOKEN);
    let mut rotated = Vec::new();
    for token in &refresh_tokens[30..] {
        let next = via_b.refresh(&client, token).await.unwrap();
        rotated.push(next.refresh_token.unwrap());
    }
    admin(&a).backfill("settings", Some(0), None).await.unwrap();
    wait_done(&a).await;
    assert_no_drift(db, &b).await;
    // The last rotated refresh token of each works at the target.
    let at_target = Driver::new(target.url(), TOKEN);
    for (n, token) in rotated.iter().enumerate() {
        at_target
            .refresh(&client, token)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "user-{}'s rotated refresh token at the target: {err}",
                    n + 30
                )
            });
    }
}
