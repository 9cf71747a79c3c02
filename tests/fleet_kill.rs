//! Fleet mode (issue 15): three `handover serve` processes share one
//! journal in PostgreSQL under a mixed trigger load: client registrations
//! and updates, logins with long-lived consent (a session and an
//! authorization each), code exchanges and refreshes with rotation. The
//! target goes down so claims pile up; one instance is killed with SIGKILL
//! while it holds claims. When the target is back the survivors take the
//! dead instance's lanes over once their lease expires, and every
//! acknowledged write is at the target: each client with its last
//! acknowledged metadata, each session and authorization, and the last
//! rotated refresh token of each user works there (the core promise). The
//! shared journal drains to zero, nothing is dead-lettered, and no client
//! exists twice at the target.

#![allow(clippy::unwrap_used)]

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fleet::{
    DEADLINE, Instance, Options, TOKEN, eventually, start_emulator, start_target_emulator,
};
use handover::emulator::driver::{Consent, Driver, RegisteredClient, Tokens};
use handover::emulator::jwks::JwkSet;

/// Writers per instance.
const WRITERS: usize = 2;

/// What a writer knows of a client it registered.
#[derive(Debug)]
struct ClientState {
    /// Its last acknowledged form (name, secret).
    latest: RegisteredClient,
    /// The names the target may show: the last acknowledged one, and any
    /// sent after it without an answer (the primary may have applied
    /// them, and then the sync reads them).
    names: Vec<String>,
    /// An update went unanswered: its secret may have rotated at the
    /// primary, so its users' tokens are not checked.
    uncertain: bool,
}

/// Everything one writer got acknowledged.
#[derive(Debug, Default)]
struct Ledger {
    clients: HashMap<String, ClientState>,
    /// (subject, client_id) of each completed login.
    authorizations: Vec<(String, String)>,
    /// The session of each completed login.
    sessions: Vec<String>,
    /// (client_id, the last refresh token) of each user whose whole chain
    /// (exchange, two rotations) was acknowledged.
    parked: Vec<(String, String)>,
}

/// Acknowledged operations, all writers together.
#[derive(Debug, Default)]
struct Count {
    ok: AtomicU64,
}

impl Count {
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Acquire)
    }
    fn add(&self) {
        self.ok.fetch_add(1, Ordering::AcqRel);
    }
}

/// The mixed load of one writer through one instance, until `stop`. A
/// failed step (the killed instance refuses connections; a fenced one
/// answers 503) is not acknowledged, and ends the iteration.
async fn writer(driver: Driver, name: String, stop: Arc<AtomicBool>, count: Arc<Count>) -> Ledger {
    let mut ledger = Ledger::default();
    let mut current: Option<String> = None;
    let mut iteration = 0usize;
    while !stop.load(Ordering::Acquire) {
        iteration += 1;
        if current.is_none() || iteration.is_multiple_of(4) {
            let client_name = format!("{name}-{iteration}");
            match driver.register_client(&client_name).await {
                Ok(client) => {
                    count.add();
                    current = Some(client.id.clone());
                    ledger.clients.insert(
                        client.id.clone(),
                        ClientState {
                            latest: client,
                            names: vec![client_name],
                            uncertain: false,
                        },
                    );
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let id = current.clone().expect("registered above");
        let client = ledger.clients[&id].latest.clone();
        let subject = format!("{name}-user-{iteration}");
        let Ok(login) = driver.login(&id, &subject, Consent::default()).await else {
            continue;
        };
        count.add();
        ledger.sessions.push(login.sid.clone());
        // A code flow's long-lived authorization is persisted when its
        // code is redeemed (spec §3: the grant completes at /token): it is
        // acknowledged with the exchange's answer, not the login's. An
        // exchange the killed instance forwarded but never answered may
        // have made one at the source that nobody acknowledged.
        let Ok(tokens) = driver.exchange_code(&client, &login.code).await else {
            continue;
        };
        count.add();
        ledger.authorizations.push((subject.clone(), id.clone()));
        let Some(mut refresh) = tokens.refresh_token else {
            panic!("a code exchange issued no refresh token");
        };
        let mut chain = true;
        for _ in 0..2 {
            match driver.refresh(&client, &refresh).await {
                Ok(Tokens {
                    refresh_token: Some(next),
                    ..
                }) => {
                    assert_ne!(next, refresh, "the refresh token did not rotate");
                    count.add();
                    refresh = next;
                }
                Ok(_) => panic!("a rotating refresh issued no refresh token"),
                Err(_) => {
                    chain = false;
                    break;
                }
            }
        }
        if chain {
            ledger.parked.push((id.clone(), refresh));
        }
        if iteration.is_multiple_of(3) {
            let new_name = format!("{name}-{iteration}-renamed");
            let state = ledger.clients.get_mut(&id).unwrap();
            match driver.update_client(&state.latest, &new_name).await {
                Ok(updated) => {
                    count.add();
                    state.latest = updated;
                    state.names = vec![new_name];
                    state.uncertain = false;
                }
                Err(_) => {
                    state.names.push(new_name);
                    state.uncertain = true;
                }
            }
        }
    }
    ledger
}

async fn count_rows(client: &tokio_postgres::Client, sql: &str, owner: Option<&str>) -> i64 {
    let row = match owner {
        Some(owner) => client.query_one(sql, &[&owner]).await,
        None => client.query_one(sql, &[]).await,
    };
    row.unwrap().get(0)
}

const CLAIMED_BY: &str = "SELECT count(*) FROM handover_journal WHERE claimed_by LIKE $1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_under_mixed_load_lose_nothing_when_one_dies_holding_claims() {
    let db = pg::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_target_emulator(&jwks, issuer).await;
    // Long enough that a busy two-core machine does not fence an instance
    // (two thirds of it without a renewal); short enough that the killed
    // instance's claims return within the test.
    let options = Options {
        datasets: r#"["clients", "authorizations", "sessions"]"#.to_owned(),
        claim_lease: "3s".to_owned(),
        ..Options::default()
    };
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push(
            Instance::start_with(
                dir.path(),
                name,
                &source.url(),
                &target.url(),
                &db.url,
                &options,
            )
            .await,
        );
    }

    let count = Arc::new(Count::default());
    let stops: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut writers = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        for w in 0..WRITERS {
            writers.push((
                i,
                tokio::spawn(writer(
                    Driver::new(instance.url(), TOKEN),
                    format!("w{i}{w}"),
                    Arc::clone(&stops[i]),
                    Arc::clone(&count),
                )),
            ));
        }
    }
    // Every instance takes writes, and they reach the target.
    assert!(
        eventually(DEADLINE, || async { count.ok() >= 100 }).await,
        "no load"
    );

    // The target goes down: claimed work cannot finish and stays claimed.
    target.emulator().knobs().set_down(true);
    let pg = db.client().await;
    let owner = format!("pid{}-%", instances[0].pid());
    let held = eventually(DEADLINE, || async {
        count_rows(&pg, CLAIMED_BY, Some(&owner)).await > 0
    })
    .await;
    assert!(held, "instance a never held a claim");
    // More writes pile up behind the claims.
    let before_kill = count.ok();
    assert!(
        eventually(DEADLINE, || async { count.ok() >= before_kill + 60 }).await,
        "no load while the target is down"
    );
    let at_kill = count.ok();
    instances[0].kill();
    stops[0].store(true, Ordering::Release);
    let still_held = count_rows(&pg, CLAIMED_BY, Some(&owner)).await;
    assert!(still_held > 0, "the killed instance's claims vanished");

    // The target comes back; the survivors keep taking writes.
    target.emulator().knobs().set_down(false);
    assert!(
        eventually(DEADLINE, || async { count.ok() >= at_kill + 100 }).await,
        "the survivors took no writes; log of b:\n{}",
        std::fs::read_to_string(&instances[1].log).unwrap_or_default()
    );
    for stop in &stops {
        stop.store(true, Ordering::Release);
    }
    let mut ledgers = Vec::new();
    for (i, writer) in writers {
        ledgers.push((i, writer.await.unwrap()));
    }

    // The shared journal drains: the dead instance's claims expired and
    // the survivors applied them.
    let drained = eventually(DEADLINE, || async {
        count_rows(&pg, "SELECT count(*) FROM handover_journal", None).await == 0
    })
    .await;
    assert!(
        drained,
        "the shared journal never drained; log of b:\n{}",
        std::fs::read_to_string(&instances[1].log).unwrap_or_default()
    );
    let dead = count_rows(&pg, "SELECT count(*) FROM handover_dead_letters", None).await;
    assert_eq!(dead, 0, "dead letters");

    // Every acknowledged write is at the target.
    let at_target = Driver::new(target.url(), TOKEN);
    let (mut clients, mut sessions, mut authorizations, mut tokens) = (0, 0, 0, 0);
    for (instance, ledger) in &ledgers {
        for (id, state) in &ledger.clients {
            let record = target.emulator().client(id).unwrap_or_else(|| {
                panic!("client {id} (through instance {instance}) never reached the target")
            });
            let name = record["client_name"].as_str().unwrap_or_default();
            assert!(
                state.names.iter().any(|n| n == name),
                "client {id} is {name:?} at the target, acknowledged as {:?}",
                state.names
            );
            clients += 1;
        }
        for sid in &ledger.sessions {
            assert!(
                target.emulator().session(sid).is_some(),
                "a session (through instance {instance}) never reached the target"
            );
            sessions += 1;
        }
        for (subject, client_id) in &ledger.authorizations {
            assert!(
                target
                    .emulator()
                    .authorization(subject, client_id)
                    .is_some(),
                "the authorization of {subject} at {client_id} (through instance {instance}) never reached the target"
            );
            authorizations += 1;
        }
        for (client_id, refresh) in &ledger.parked {
            let state = &ledger.clients[client_id];
            if state.uncertain {
                continue;
            }
            let rotated = at_target
                .refresh(&state.latest, refresh)
                .await
                .unwrap_or_else(|err| {
                    panic!(
                        "the last refresh token of a user of {client_id} (through instance {instance}) fails at the target: {err}"
                    )
                });
            assert!(rotated.refresh_token.is_some());
            tokens += 1;
        }
    }
    // Zero duplicates that matter: no client twice at the target (a
    // replayed registration would mint a second client of the same name),
    // and none the primary does not have.
    let mut names = HashSet::new();
    for record in target.emulator().clients() {
        let id = record["client_id"].as_str().unwrap().to_owned();
        assert!(
            source.emulator().client(&id).is_some(),
            "client {id} exists at the target only"
        );
        let name = record["client_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            names.insert(name.clone()),
            "client {name:?} twice at the target"
        );
    }
    eprintln!(
        "fleet kill test: {} acknowledged operations ({at_kill} before the kill), {still_held} records claimed by the killed instance at the kill; checked at the target: {clients} clients, {sessions} sessions, {authorizations} authorizations, {tokens} last refresh tokens",
        count.ok()
    );
    assert!(
        tokens > 0 && ledgers.iter().any(|(i, l)| *i == 0 && !l.parked.is_empty()),
        "no refresh chain was checked"
    );
}
