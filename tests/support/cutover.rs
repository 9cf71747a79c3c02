//! Cutover helpers: the operator's admin client, a finished backfill, and
//! continuous mixed production load through the proxy that counts every
//! failed client request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover::api::AdminClient;
use handover::api::Status;
use handover::emulator::driver::{Consent, Driver, RegisteredClient, Tokens};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::proxy::{TestProxy, eventually};
use super::stack::TOKEN;

/// The operator's client of a proxy's admin API.
pub fn admin(proxy: &TestProxy) -> AdminClient {
    AdminClient::new(&proxy.admin_url(""), Some(TOKEN.to_owned()))
}

/// `GET /status`.
pub async fn status(admin: &AdminClient) -> Status {
    admin.status().await.unwrap()
}

/// Starts the backfill and waits until it is `done` (at once with an
/// unseeded source): the forward cutover's pre-flight requires it.
pub async fn finish_backfill(admin: &AdminClient) {
    admin.backfill("start", None, None).await.unwrap();
    let done = eventually(Duration::from_secs(20), || async {
        status(admin).await.backfill.state == handover::api::BackfillState::Done
    })
    .await;
    assert!(done, "the backfill did not finish");
}

/// A refresh token taken out of the load: never used again by it.
#[derive(Debug, Clone)]
pub struct Parked {
    pub client_id: String,
    pub refresh_token: String,
    /// When its rotation was answered.
    pub at: Instant,
}

/// What one load worker leaves behind.
#[derive(Debug, Default)]
pub struct WorkerOutcome {
    /// The latest form (secret) of every client it registered.
    pub clients: HashMap<String, RegisteredClient>,
    /// One refresh token per completed iteration, in order.
    pub parked: Vec<Parked>,
}

/// Counts of the load, shared by the workers.
#[derive(Debug, Default)]
pub struct Stats {
    /// Client operations answered as expected (a login counts once).
    pub ok: AtomicU64,
    /// Client operations that failed.
    pub failed: AtomicU64,
    /// What failed, and when relative to the start of the load.
    pub failures: Mutex<Vec<String>>,
    pub registrations: AtomicU64,
    pub logins: AtomicU64,
    pub exchanges: AtomicU64,
    pub refreshes: AtomicU64,
    pub updates: AtomicU64,
}

impl Stats {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} failed ({} registrations, {} logins, {} code exchanges, {} refreshes, {} client updates)",
            self.ok(),
            self.failed(),
            self.registrations.load(Ordering::Relaxed),
            self.logins.load(Ordering::Relaxed),
            self.exchanges.load(Ordering::Relaxed),
            self.refreshes.load(Ordering::Relaxed),
            self.updates.load(Ordering::Relaxed),
        )
    }
}

/// Continuous mixed load through the proxy: each worker registers a
/// client, then loops over a login with long-lived consent, the code
/// exchange, two refreshes with rotation (parking the last refresh token),
/// and now and then a client update (the secret rotates) or a new
/// registration. Every operation that does not succeed is counted.
pub struct Load {
    stop: CancellationToken,
    pub stats: Arc<Stats>,
    started: Instant,
    workers: Vec<JoinHandle<WorkerOutcome>>,
}

impl Load {
    pub fn start(driver: &Driver, workers: usize) -> Self {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let started = Instant::now();
        let workers = (0..workers)
            .map(|worker| {
                let driver = driver.clone();
                let stop = stop.clone();
                let stats = Arc::clone(&stats);
                tokio::spawn(async move { run_worker(worker, driver, stop, stats, started).await })
            })
            .collect();
        Self {
            stop,
            stats,
            started,
            workers,
        }
    }

    /// Waits until at least `ok` operations succeeded in all (false after
    /// `deadline`).
    pub async fn wait_ok(&self, ok: u64, deadline: Duration) -> bool {
        eventually(deadline, || async { self.stats.ok() >= ok }).await
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the workers after their current operation and collects them.
    pub async fn stop(self) -> Vec<WorkerOutcome> {
        self.stop.cancel();
        let mut outcomes = Vec::new();
        for worker in self.workers {
            outcomes.push(worker.await.unwrap());
        }
        outcomes
    }
}

fn failed(stats: &Stats, started: Instant, worker: usize, what: String) {
    stats.failed.fetch_add(1, Ordering::Relaxed);
    stats.failures.lock().unwrap().push(format!(
        "worker {worker} at {} ms: {what}",
        started.elapsed().as_millis()
    ));
}

async fn run_worker(
    worker: usize,
    driver: Driver,
    stop: CancellationToken,
    stats: Arc<Stats>,
    started: Instant,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome::default();
    let mut current: Option<RegisteredClient> = None;
    let mut iteration = 0usize;
    while !stop.is_cancelled() {
        iteration += 1;
        // A registration first, then every fifth iteration.
        if current.is_none() || iteration.is_multiple_of(5) {
            match driver
                .register_client(&format!("Load {worker}.{iteration}"))
                .await
            {
                Ok(client) => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    stats.registrations.fetch_add(1, Ordering::Relaxed);
                    outcome.clients.insert(client.id.clone(), client.clone());
                    current = Some(client);
                }
                Err(err) => {
                    failed(&stats, started, worker, err.to_string());
                    continue;
                }
            }
        }
        let Some(client) = current.clone() else {
            continue;
        };
        let subject = format!("user-{worker}-{iteration}");
        let login = match driver.login(&client.id, &subject, Consent::default()).await {
            Ok(login) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.logins.fetch_add(1, Ordering::Relaxed);
                login
            }
            Err(err) => {
                failed(&stats, started, worker, err.to_string());
                continue;
            }
        };
        let tokens = match driver.exchange_code(&client, &login.code).await {
            Ok(tokens) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.exchanges.fetch_add(1, Ordering::Relaxed);
                tokens
            }
            Err(err) => {
                failed(&stats, started, worker, err.to_string());
                continue;
            }
        };
        let Some(mut refresh) = tokens.refresh_token else {
            failed(
                &stats,
                started,
                worker,
                "code exchange: no refresh token".to_owned(),
            );
            continue;
        };
        let mut chain_ok = true;
        for _ in 0..2 {
            match driver.refresh(&client, &refresh).await {
                Ok(Tokens {
                    refresh_token: Some(next),
                    ..
                }) if next != refresh => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    stats.refreshes.fetch_add(1, Ordering::Relaxed);
                    refresh = next;
                }
                Ok(_) => {
                    failed(&stats, started, worker, "refresh: not rotated".to_owned());
                    chain_ok = false;
                    break;
                }
                Err(err) => {
                    failed(&stats, started, worker, err.to_string());
                    chain_ok = false;
                    break;
                }
            }
        }
        if chain_ok {
            outcome.parked.push(Parked {
                client_id: client.id.clone(),
                refresh_token: refresh,
                at: Instant::now(),
            });
        }
        if iteration.is_multiple_of(3) {
            match driver
                .update_client(&client, &format!("Load {worker}.{iteration} v2"))
                .await
            {
                Ok(updated) => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    stats.updates.fetch_add(1, Ordering::Relaxed);
                    outcome.clients.insert(updated.id.clone(), updated.clone());
                    current = Some(updated);
                }
                Err(err) => failed(&stats, started, worker, err.to_string()),
            }
        }
    }
    outcome
}
