//! Fleet mode (issue 15): PostgreSQL is restarted under load and nothing
//! is lost. Two `handover serve` processes share a throwaway cluster of
//! the test's own (never the shared server) while writers register and
//! rename clients through both; the cluster is stopped (`-m fast`, every
//! session cut) and started again on the same data and port. While it is
//! down clients still get the primary's answers, `/readyz` is false and
//! the changes are kept in memory; once it is back they are journaled,
//! every acknowledged write reaches the target and the shared journal
//! drains.

#![allow(clippy::unwrap_used)]

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::{
    ADMIN_TOKEN, DEADLINE, Instance, Options, TOKEN, eventually, send, start_emulator,
    start_target_emulator,
};
use handover::emulator::driver::Driver;
use handover::emulator::jwks::JwkSet;
use http::{Method, StatusCode};

/// What the writers got acknowledged: each client's last acknowledged
/// name, and the names sent after it without an answer.
type Acked = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Registers clients and renames every other one until `stop`.
async fn writer(
    driver: Driver,
    name: String,
    stop: Arc<AtomicBool>,
    acked: Acked,
    ok: Arc<AtomicU64>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let Ok(client) = driver.register_client(&format!("{name}-{n}")).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        ok.fetch_add(1, Ordering::AcqRel);
        acked
            .lock()
            .unwrap()
            .insert(client.id.clone(), vec![format!("{name}-{n}")]);
        if n % 2 == 0 {
            let renamed = format!("{name}-{n}-renamed");
            let result = driver.update_client(&client, &renamed).await;
            let mut acked = acked.lock().unwrap();
            let names = acked.get_mut(&client.id).unwrap();
            if result.is_ok() {
                ok.fetch_add(1, Ordering::AcqRel);
                *names = vec![renamed];
            } else {
                names.push(renamed);
            }
        }
    }
}

async fn ready(instance: &Instance) -> Option<StatusCode> {
    let url = format!("http://127.0.0.1:{}/readyz", instance.admin_port);
    send(Method::GET, &url, ADMIN_TOKEN, "")
        .await
        .map(|(status, _, _)| status)
}

async fn metric(instance: &Instance, name: &str) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", instance.admin_port);
    let (_, _, body) = send(Method::GET, &url, ADMIN_TOKEN, "").await.unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_no_acknowledged_write() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| pg::Cluster::start(&Default::default()))
            .await
            .unwrap(),
    );
    let url = cluster.database("sslmode=disable connect_timeout=2").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_target_emulator(&jwks, issuer).await;
    // A lease much longer than the outage: the instances keep serving
    // (they fence themselves only after two thirds of it), so the test
    // sees the store-unavailable path, not the fence.
    let options = Options {
        claim_lease: "30s".to_owned(),
        ..Options::default()
    };
    let mut instances = Vec::new();
    for name in ["a", "b"] {
        instances.push(
            Instance::start_with(
                dir.path(),
                name,
                &source.url(),
                &target.url(),
                &url,
                &options,
            )
            .await,
        );
    }

    let acked: Acked = Arc::default();
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        for w in 0..2 {
            writers.push(tokio::spawn(writer(
                Driver::new(instance.url(), TOKEN),
                format!("w{i}{w}"),
                Arc::clone(&stop),
                Arc::clone(&acked),
                Arc::clone(&ok),
            )));
        }
    }
    let count = || ok.load(Ordering::Acquire);
    assert!(
        eventually(DEADLINE, || async { count() >= 40 }).await,
        "no load"
    );

    // Down: every session is cut, no new one accepted.
    let down = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || down.stop())
        .await
        .unwrap();
    let at_stop = count();
    // Clients still get the primary's answers, and the instances say they
    // are not ready.
    assert!(
        eventually(DEADLINE, || async { count() >= at_stop + 40 }).await,
        "no write was answered while PostgreSQL was down; log of a:\n{}",
        std::fs::read_to_string(&instances[0].log).unwrap_or_default()
    );
    for instance in &instances {
        assert!(
            eventually(DEADLINE, || async {
                ready(instance).await == Some(StatusCode::SERVICE_UNAVAILABLE)
            })
            .await,
            "an instance stayed ready without its store"
        );
    }
    let during = count() - at_stop;

    let up = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || up.resume())
        .await
        .unwrap();
    for instance in &instances {
        assert!(
            eventually(DEADLINE, || async {
                ready(instance).await == Some(StatusCode::OK)
            })
            .await,
            "an instance did not become ready again; log:\n{}",
            std::fs::read_to_string(&instance.log).unwrap_or_default()
        );
    }
    let at_resume = count();
    assert!(
        eventually(DEADLINE, || async { count() >= at_resume + 20 }).await,
        "no load after the restart"
    );
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.unwrap();
    }

    // The changes answered during the outage were kept in memory, then
    // journaled; the shared journal drains.
    let mut kept = 0.0;
    for instance in &instances {
        kept += metric(instance, "handover_mirror_unjournaled_total").await;
    }
    assert!(kept > 0.0, "no change was kept in memory during the outage");
    let rejournaled = instances.iter().any(|instance| {
        std::fs::read_to_string(&instance.log)
            .unwrap_or_default()
            .contains("journaled the changes kept in memory")
    });
    assert!(
        rejournaled,
        "the changes kept in memory were never written to the store"
    );
    let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let drained = fleet::journal_drains(&pg).await;
    assert!(
        drained,
        "the shared journal never drained; log of a:\n{}",
        std::fs::read_to_string(&instances[0].log).unwrap_or_default()
    );
    let reasons: Vec<String> = pg
        .query("SELECT reason FROM handover_dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(reasons.is_empty(), "dead letters: {reasons:?}");

    // Every acknowledged write is at the target, with its last name.
    let acked = acked.lock().unwrap().clone();
    let arrived = eventually(DEADLINE, || async {
        acked.iter().all(|(id, names)| {
            target.emulator().client(id).is_some_and(|record| {
                names
                    .iter()
                    .any(|name| record["client_name"].as_str() == Some(name))
            })
        })
    })
    .await;
    let missing: Vec<(&String, &Vec<String>)> = acked
        .iter()
        .filter(|(id, names)| {
            !target.emulator().client(id).is_some_and(|record| {
                names
                    .iter()
                    .any(|name| record["client_name"].as_str() == Some(name))
            })
        })
        .collect();
    assert!(
        arrived,
        "{} of {} acknowledged clients are not at the target as acknowledged: {missing:?}",
        missing.len(),
        acked.len()
    );
    eprintln!(
        "store restart test: {} acknowledged writes, {during} while PostgreSQL was down, {kept} changes kept in memory",
        count()
    );
}
