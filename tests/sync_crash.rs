//! Crash safety of the real binary (DESIGN.md §4): a write the primary
//! acknowledged to a client is never lost to the secondary, even if the
//! proxy is killed at any instant.
//!
//! `handover serve` runs as a child process in front of two in-process
//! Connect2id emulators. Concurrent writers register clients and log users
//! in through it while the test SIGKILLs it at random instants and restarts
//! it on the same journal directory and ports. A write counts as
//! acknowledged only when the client got its success answer; after the last
//! restart has drained its journal, every acknowledged write must be on the
//! target.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use handover::emulator::connect2id::{self, Connect2id, Handle};
use handover::emulator::driver::{Consent, Driver, RegisteredClient};
use handover::emulator::jwks::JwkSet;
use handover::model::Dataset;
use http::StatusCode;
use support::proxy::{client, eventually};
use support::stack::{TOKEN, wait_drained};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_handover");
/// How many times the proxy is killed.
const KILLS: usize = 5;
/// Concurrent writers; the first `LOGIN_WRITERS` also log users in.
const WRITERS: usize = 8;
const LOGIN_WRITERS: usize = 3;
/// A kill comes this long (uniformly drawn, in ms) after the proxy is ready.
const KILL_AFTER_MS: std::ops::Range<u64> = 100..800;
/// How long one start (spawn until `/readyz` answers 200) may take, retries
/// included.
const START_DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `handover serve` child process, restartable on the same config
/// (ports and journal directory).
struct ProxyProcess {
    config: PathBuf,
    log: PathBuf,
    admin_port: u16,
    child: Option<Child>,
    /// Successful starts so far.
    starts: usize,
}

impl ProxyProcess {
    /// Spawns the proxy and waits until `/readyz` answers 200. A start that
    /// fails (the port is briefly unavailable after a kill) is retried until
    /// [`START_DEADLINE`].
    async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let http = client();
        let ready_url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let until = Instant::now() + START_DEADLINE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            let mut child = Command::new(BIN)
                .args(["--log-format", "json", "serve", "-c"])
                .arg(&self.config)
                .env("HANDOVER_SOURCE_TOKEN", TOKEN)
                .env("HANDOVER_TARGET_TOKEN", TOKEN)
                .env("HANDOVER_JOURNAL_KEY", handover::config::TEST_JOURNAL_KEY)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            let ready = eventually(until.saturating_duration_since(Instant::now()), || async {
                let request = http::Request::get(&ready_url)
                    .body(Default::default())
                    .unwrap();
                match http.request(request).await {
                    Ok(response) => response.status() == StatusCode::OK,
                    // Not listening yet, or exited: `try_wait` below tells.
                    Err(_) => false,
                }
            });
            // Stop polling as soon as the child has exited.
            let exited = async {
                loop {
                    if child.try_wait().unwrap().is_some() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let ready = tokio::select! {
                ready = ready => ready,
                () = exited => false,
            };
            if ready {
                self.child = Some(child);
                self.starts += 1;
                return;
            }
            let _ = child.kill();
            let status = child.wait().unwrap();
            assert!(
                Instant::now() < until,
                "the proxy did not become ready within {START_DEADLINE:?} \
                 ({attempts} attempts, last exit {status}); log:\n{}",
                log_tail(&self.log)
            );
            // Retry pacing, not a readiness wait: the port may still be held.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, then reap (the journal lock and the ports are free after).
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn config_text(
    proxy_port: u16,
    admin_port: u16,
    source: &str,
    target: &str,
    journal: &Path,
    sync_policy: &str,
) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:{proxy_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[source]
kind = "connect2id"
url = "{source}"
token_env = "HANDOVER_SOURCE_TOKEN"
[target]
kind = "connect2id"
url = "{target}"
token_env = "HANDOVER_TARGET_TOKEN"
[journal]
dir = "{journal}"
payload_key_env = "HANDOVER_JOURNAL_KEY"
sync = {sync_policy}
[sync]
datasets = ["clients", "authorizations", "sessions"]
retry_initial = "20ms"
retry_max = "500ms"
"#,
        journal = journal.display()
    )
}

async fn start_emulator(jwks: &JwkSet, issuer: &str) -> Handle {
    let mut config = connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks.clone());
    config.base_path = "/c2id".to_owned();
    config.issuer = Some(issuer.to_owned());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Connect2id::new(config).start(listener).await
}

/// A login whose answers all reached the client.
struct AckedLogin {
    subject: String,
    client_id: String,
    sid: String,
    /// The code exchange was acknowledged.
    exchanged: bool,
    /// ...and so was the refresh after it, the last write to the
    /// authorization: the target must hold exactly the source's record.
    refreshed: bool,
}

/// What one writer got acknowledged, and how many of its writes failed.
#[derive(Default)]
struct Tally {
    clients: Vec<RegisteredClient>,
    logins: Vec<AckedLogin>,
    /// Refused connections: the proxy was down.
    refused: usize,
    /// Every other failure: the request was in flight at a kill.
    interrupted: usize,
}

impl Tally {
    fn failed(&mut self, err: &handover::emulator::driver::Error) {
        if err.to_string().contains("onnection refused") {
            self.refused += 1;
        } else {
            self.interrupted += 1;
        }
    }
}

/// Writes through the proxy until `stop`; connection errors (the proxy was
/// killed) are "not acknowledged" and the writer carries on.
async fn writer(
    id: usize,
    driver: Driver,
    logins: bool,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let client = match driver.register_client(&format!("crash-{id}-{n}")).await {
            Ok(client) => client,
            Err(err) => {
                tally.failed(&err);
                // Pacing while the proxy is down, not a readiness wait.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        tally.clients.push(client.clone());
        acked.fetch_add(1, Ordering::Release);
        if !logins {
            continue;
        }
        let subject = format!("user-{id}-{n}");
        let login = match driver.login(&client.id, &subject, Consent::default()).await {
            Ok(login) => login,
            Err(err) => {
                tally.failed(&err);
                continue;
            }
        };
        acked.fetch_add(1, Ordering::Release);
        let mut acked_login = AckedLogin {
            subject,
            client_id: client.id.clone(),
            sid: login.sid,
            exchanged: false,
            refreshed: false,
        };
        match driver.exchange_code(&client, &login.code).await {
            Ok(tokens) => {
                acked_login.exchanged = true;
                acked.fetch_add(1, Ordering::Release);
                if let Some(refresh) = tokens.refresh_token {
                    match driver.refresh(&client, &refresh).await {
                        Ok(_) => {
                            acked_login.refreshed = true;
                            acked.fetch_add(1, Ordering::Release);
                        }
                        Err(err) => tally.failed(&err),
                    }
                }
            }
            Err(err) => tally.failed(&err),
        }
        tally.logins.push(acked_login);
    }
    tally
}

/// The applied cursor the journal last persisted (`<dir>/cursor`: seq u64
/// LE, crc32 u32 LE; written atomically), if any.
fn persisted_cursor(journal: &Path) -> Option<u64> {
    let bytes = std::fs::read(journal.join("cursor")).ok()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// What each start recovered: (persisted cursor, records pending above it),
/// and how many torn tails were cut, from the proxy's JSON log.
fn recoveries(log: &Path) -> (Vec<(u64, u64)>, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut recovered = Vec::new();
    let mut torn = 0;
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match event["message"].as_str() {
            Some("recovered journal")
                if !event["dir"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with(handover::journal::DEAD_LETTERS_DIR) =>
            {
                recovered.push((
                    event["cursor"].as_u64().unwrap_or_default(),
                    event["pending"].as_u64().unwrap_or_default(),
                ));
            }
            Some("truncating torn journal tail") => torn += 1,
            _ => {}
        }
    }
    (recovered, torn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_the_proxy_is_killed_at_random_instants() {
    kill_under_load(r#""always""#).await;
}

/// `sync = "interval"` answers before the fdatasync: the page cache
/// survives a killed process, so nothing acknowledged is lost either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_fsync_also_loses_no_acknowledged_write_when_the_proxy_is_killed() {
    kill_under_load(r#""interval""#).await;
}

/// The crash scenario with the journal's `sync` policy (a TOML string).
async fn kill_under_load(sync_policy: &str) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).unwrap();
    let (proxy_port, admin_port) = (free_port(), free_port());
    let issuer = format!("http://127.0.0.1:{proxy_port}/c2id");
    let jwks = JwkSet::generate();
    let source = start_emulator(&jwks, &issuer).await;
    let target = start_emulator(&jwks, &issuer).await;
    // A slightly slow target: the sync trails the writers, so every kill
    // leaves journaled changes that have not reached the target yet.
    target
        .emulator()
        .knobs()
        .set_latency(Duration::from_millis(10));
    let config = dir.path().join("handover.toml");
    std::fs::write(
        &config,
        config_text(
            proxy_port,
            admin_port,
            &source.url(),
            &target.url(),
            &journal,
            sync_policy,
        ),
    )
    .unwrap();
    let mut proxy = ProxyProcess {
        config,
        log: dir.path().join("handover.log"),
        admin_port,
        child: None,
        starts: 0,
    };
    proxy.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            tokio::spawn(writer(
                id,
                Driver::new(&issuer, TOKEN),
                id < LOGIN_WRITERS,
                Arc::clone(&stop),
                Arc::clone(&acked),
            ))
        })
        .collect();

    for kill in 0..KILLS {
        if kill % 2 == 0 {
            // Every other incarnation lives until it has persisted a new
            // applied cursor (about once a second), so the next start
            // recovers from a cursor above 0 instead of replaying all.
            let before = persisted_cursor(&journal);
            let advanced = eventually(Duration::from_secs(15), || async {
                persisted_cursor(&journal) > before
            })
            .await;
            assert!(advanced, "the applied cursor was never persisted");
        }
        // The kill instant, not a readiness wait.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(KILL_AFTER_MS))).await;
        proxy.kill();
        proxy.start().await;
    }
    // The last incarnation takes writes too before the writers stop.
    let before = acked.load(Ordering::Acquire);
    let more = eventually(Duration::from_secs(15), || async {
        acked.load(Ordering::Acquire) >= before + 2 * WRITERS
    })
    .await;
    assert!(
        more,
        "no writes acknowledged after the last restart; log:\n{}",
        log_tail(&proxy.log)
    );
    stop.store(true, Ordering::Release);
    let mut tallies = Vec::new();
    for writer in writers {
        tallies.push(writer.await.unwrap());
    }

    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");
    assert!(
        wait_drained(&metrics_url, Duration::from_secs(30)).await,
        "the journal did not drain after the last restart; log:\n{}",
        log_tail(&proxy.log)
    );

    let on_source = source.emulator();
    let on_target = target.emulator();
    let mut lost = Vec::new();
    let (mut clients, mut sessions, mut authorizations, mut refreshes) = (0, 0, 0, 0);
    let (mut refused, mut interrupted) = (0, 0);
    for tally in &tallies {
        refused += tally.refused;
        interrupted += tally.interrupted;
        for client in &tally.clients {
            clients += 1;
            match on_target.client(&client.id) {
                Some(record) if record["client_secret"] == client.secret.as_str() => {}
                Some(_) => lost.push(format!("client {}: other secret on target", client.id)),
                None => lost.push(format!("client {}: missing on target", client.id)),
            }
        }
        for login in &tally.logins {
            sessions += 1;
            if on_target.session(&login.sid).is_none() {
                lost.push(format!("session of {}: missing on target", login.subject));
            }
            if !login.exchanged {
                continue;
            }
            authorizations += 1;
            let target_record = on_target.authorization(&login.subject, &login.client_id);
            match (target_record, login.refreshed) {
                (None, _) => lost.push(format!(
                    "authorization of {}: missing on target",
                    login.subject
                )),
                (Some(record), true) => {
                    refreshes += 1;
                    let source_record = on_source
                        .authorization(&login.subject, &login.client_id)
                        .unwrap();
                    if Dataset::Authorizations.comparable(&record)
                        != Dataset::Authorizations.comparable(&source_record)
                    {
                        lost.push(format!(
                            "authorization of {}: the rotation did not reach the target",
                            login.subject
                        ));
                    }
                }
                (Some(_), false) => {}
            }
        }
    }
    let acknowledged = clients + sessions + authorizations + refreshes;
    let (recovered, torn) = recoveries(&proxy.log);
    eprintln!(
        "crash test (sync = {sync_policy}): {KILLS} kills, {} starts; {acknowledged} writes acknowledged \
         ({clients} client registrations, {sessions} logins, {authorizations} code exchanges, \
         {refreshes} rotations); not acknowledged: {interrupted} in flight at a kill, \
         {refused} refused while down; {} lost; recoveries (cursor, pending): {:?}; \
         torn tails cut: {torn}; {:.1} s",
        proxy.starts,
        lost.len(),
        recovered.get(1..).unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {lost:#?}\nlog:\n{}",
        log_tail(&proxy.log)
    );
    assert_eq!(proxy.starts, KILLS + 1);
    assert!(
        clients > 0 && sessions > 0 && refreshes > 0,
        "too few writes"
    );
    assert!(
        recovered
            .iter()
            .any(|&(cursor, pending)| cursor > 0 && pending > 0),
        "no start recovered pending records above a persisted cursor: {recovered:?}"
    );
}
