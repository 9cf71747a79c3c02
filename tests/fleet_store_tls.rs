//! Fleet mode (issue 15): the PostgreSQL store over TLS. A throwaway
//! cluster of the test's own serves `ssl = on` with a certificate made
//! here; an instance configured with `sslmode=require` and `[store]
//! ca_file` opens the store over TLS and syncs a write through it. With
//! another CA the instance refuses to start with an error that says what
//! failed, and never echoes the connection URL or its password. Without a
//! CA, `require` encrypts without checking the certificate (libpq's
//! meaning) and `verify-full` checks it against the system roots.

#![allow(clippy::unwrap_used)]

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;

use fleet::{DEADLINE, Instance, Options, TOKEN, eventually, start_emulator};
use handover::emulator::driver::Driver;
use handover::emulator::jwks::JwkSet;

/// A self-signed certificate named `name` for the cluster's address:
/// (certificate PEM, key PEM).
fn certificate(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Sent in the URL; trust authentication never asks for it, so only an
/// error message or a log line could show it.
const PASSWORD: &str = "never-shown-Pw-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_opens_over_tls_with_the_configured_ca_and_refuses_another() {
    let (cert, key) = certificate("handover test database");
    let tls = pg::ClusterOptions {
        tls: Some((cert.clone(), key)),
    };
    let cluster = tokio::task::spawn_blocking(move || pg::Cluster::start(&tls))
        .await
        .unwrap();
    let url = cluster
        .database(&format!("sslmode=require password={PASSWORD}"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("db-ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_emulator(&jwks, issuer).await;

    let options = Options {
        store_extra: format!("ca_file = \"{}\"", ca.display()),
        ..Options::default()
    };
    let instance = Instance::start_with(
        dir.path(),
        "a",
        &source.url(),
        &target.url(),
        &url,
        &options,
    )
    .await;
    let client = Driver::new(instance.url(), TOKEN)
        .register_client("over-tls")
        .await
        .unwrap();
    assert!(
        eventually(DEADLINE, || async {
            target.emulator().client(&client.id).is_some()
        })
        .await,
        "the write never reached the target; log:\n{}",
        std::fs::read_to_string(&instance.log).unwrap_or_default()
    );
    // Every connection of the instance is encrypted.
    let admin = cluster.database("sslmode=disable").await;
    let (pg, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = pg
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'handover'",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(encrypted > 0, "no TLS connection from the instance");
    assert_eq!(plain, 0, "unencrypted connections from the instance");
    drop(instance);

    // Another CA: the certificate is refused, and the error says so.
    let (other, _) = certificate("another CA");
    let wrong = dir.path().join("other-ca.pem");
    std::fs::write(&wrong, other).unwrap();
    let options = Options {
        store_extra: format!("ca_file = \"{}\"", wrong.display()),
        ..Options::default()
    };
    let (code, log) = Instance::start_failing(
        dir.path(),
        "b",
        &source.url(),
        &target.url(),
        &url,
        &options,
    )
    .await;
    assert_ne!(code, Some(0), "{log}");
    eprintln!(
        "wrong CA refused: {}",
        log.lines()
            .find(|line| line.contains("store:"))
            .unwrap_or(&log)
    );
    assert!(log.contains("store: PostgreSQL connect failed"), "{log}");
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(
        log.contains(&format!(
            "checked against store.ca_file {}",
            wrong.display()
        )),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "the password leaked: {log}");
    assert!(!log.contains(&url), "the URL leaked: {log}");
    assert!(!log.contains("dbname"), "the URL leaked: {log}");

    // libpq's meaning of sslmode: `require` without a CA encrypts without
    // checking the certificate (a self-signed one is fine)...
    let unverified = Instance::start_with(
        dir.path(),
        "c",
        &source.url(),
        &target.url(),
        &url,
        &Options::default(),
    )
    .await;
    let client = Driver::new(unverified.url(), TOKEN)
        .register_client("over-unverified-tls")
        .await
        .unwrap();
    assert!(
        eventually(DEADLINE, || async {
            target.emulator().client(&client.id).is_some()
        })
        .await
    );
    drop(unverified);
    // ... and `verify-full` checks it: against the system roots here, which
    // do not know this certificate.
    let verify_full = url.replace("sslmode=require", "sslmode=verify-full");
    let (code, log) = Instance::start_failing(
        dir.path(),
        "d",
        &source.url(),
        &target.url(),
        &verify_full,
        &Options::default(),
    )
    .await;
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(log.contains("the system's root certificates"), "{log}");
    assert!(!log.contains(PASSWORD), "the password leaked: {log}");
}
