//! The demo's simulated production: users who register and update clients,
//! log in, consent, exchange codes, refresh (with rotation), revoke and log
//! out, all through the proxy; plus a probe of the proxy's admin API for the
//! progress line.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::emulator::driver::{Consent, Driver, Error as DriverError, RegisteredClient};

/// What the traffic did.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// HTTP requests sent through the proxy.
    pub requests: u64,
    /// Requests that failed (any non-success the flow did not expect).
    pub errors: u64,
    /// Client registrations.
    pub registrations: u64,
    /// Client updates (secret rotations).
    pub updates: u64,
    /// Client deletions.
    pub deletes: u64,
    /// Logins (each creates a session).
    pub logins: u64,
    /// Code exchanges.
    pub exchanges: u64,
    /// Refreshes.
    pub refreshes: u64,
    /// Refreshes refused.
    pub failed_refreshes: u64,
    /// Token revocations.
    pub revocations: u64,
    /// Logouts.
    pub logouts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    registrations: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    logins: AtomicU64,
    exchanges: AtomicU64,
    refreshes: AtomicU64,
    failed_refreshes: AtomicU64,
    revocations: AtomicU64,
    logouts: AtomicU64,
}

/// The shared traffic state.
#[derive(Debug)]
pub struct Traffic {
    driver: Driver,
    counters: Counters,
}

/// A user's grant, kept to refresh, revoke or log out later.
#[derive(Debug)]
struct Grant {
    client: RegisteredClient,
    sid: String,
    refresh_token: Option<String>,
}

impl Traffic {
    /// Traffic against the provider at `base` (through the proxy).
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            driver: Driver::new(base, token),
            counters: Counters::default(),
        }
    }

    /// A snapshot of the counters.
    pub fn totals(&self) -> Totals {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Totals {
            requests: get(&c.requests),
            errors: get(&c.errors),
            registrations: get(&c.registrations),
            updates: get(&c.updates),
            deletes: get(&c.deletes),
            logins: get(&c.logins),
            exchanges: get(&c.exchanges),
            refreshes: get(&c.refreshes),
            failed_refreshes: get(&c.failed_refreshes),
            revocations: get(&c.revocations),
            logouts: get(&c.logouts),
        }
    }

    fn count<T>(
        &self,
        requests: u64,
        result: Result<T, DriverError>,
        what: &AtomicU64,
    ) -> Option<T> {
        self.counters
            .requests
            .fetch_add(requests, Ordering::Relaxed);
        match result {
            Ok(value) => {
                what.fetch_add(1, Ordering::Relaxed);
                Some(value)
            }
            Err(err) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "demo request failed");
                None
            }
        }
    }

    /// One user: a client of their own (an app they use), then a random mix
    /// of actions until `deadline`.
    async fn user(&self, index: usize, deadline: Instant) {
        let c = &self.counters;
        let Some(mut client) = self.count(
            1,
            self.driver
                .register_client(&format!("Demo App {index}"))
                .await,
            &c.registrations,
        ) else {
            return;
        };
        let mut grants: Vec<Grant> = Vec::new();
        let mut serial = 0usize;
        while Instant::now() < deadline {
            serial += 1;
            let roll = fastrand::u32(0..100);
            match roll {
                // Log in, consent, exchange the code.
                0..=29 => {
                    let subject = format!("user-{index}-{serial}");
                    let consent = Consent {
                        long_lived: fastrand::u32(0..10) < 8,
                        rotate: fastrand::bool(),
                        jwt_access_token: fastrand::u32(0..10) < 7,
                    };
                    let Some(login) = self.count(
                        3,
                        self.driver.login(&client.id, &subject, consent).await,
                        &c.logins,
                    ) else {
                        continue;
                    };
                    if let Some(tokens) = self.count(
                        1,
                        self.driver.exchange_code(&client, &login.code).await,
                        &c.exchanges,
                    ) {
                        grants.push(Grant {
                            client: client.clone(),
                            sid: login.sid,
                            refresh_token: tokens.refresh_token,
                        });
                    }
                }
                // Refresh one of my grants (rotating or not).
                30..=64 => {
                    let Some(grant) = pick(&mut grants) else {
                        continue;
                    };
                    let Some(token) = grant.refresh_token.clone() else {
                        continue;
                    };
                    self.counters.requests.fetch_add(1, Ordering::Relaxed);
                    match self.driver.refresh(&grant.client, &token).await {
                        Ok(tokens) => {
                            c.refreshes.fetch_add(1, Ordering::Relaxed);
                            if let Some(rotated) = tokens.refresh_token {
                                grant.refresh_token = Some(rotated);
                            }
                        }
                        Err(err) => {
                            c.refreshes.fetch_add(1, Ordering::Relaxed);
                            c.failed_refreshes.fetch_add(1, Ordering::Relaxed);
                            c.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %err, "demo refresh failed");
                        }
                    }
                }
                // Update my client (the source rotates its secret).
                65..=71 => {
                    if let Some(updated) = self.count(
                        1,
                        self.driver
                            .update_client(&client, &format!("Demo App {index} v{serial}"))
                            .await,
                        &c.updates,
                    ) {
                        // The app rolls out its new secret (the old one is
                        // only honoured for 30 minutes, and only the last one).
                        for grant in grants.iter_mut().filter(|g| g.client.id == updated.id) {
                            grant.client = updated.clone();
                        }
                        client = updated;
                    }
                }
                // A short-lived client: register and delete.
                72..=76 => {
                    if let Some(temporary) = self.count(
                        1,
                        self.driver
                            .register_client(&format!("Temp {index}-{serial}"))
                            .await,
                        &c.registrations,
                    ) {
                        self.count(
                            1,
                            self.driver.delete_client(&temporary.id).await,
                            &c.deletes,
                        );
                    }
                }
                // Revoke a grant.
                77..=84 => {
                    if grants.is_empty() {
                        continue;
                    }
                    let grant = grants.swap_remove(fastrand::usize(..grants.len()));
                    if let Some(token) = &grant.refresh_token {
                        self.count(
                            1,
                            self.driver
                                .revoke(&grant.client, token, "refresh_token")
                                .await,
                            &c.revocations,
                        );
                    }
                }
                // Log out of a session.
                _ => {
                    if grants.is_empty() {
                        continue;
                    }
                    let grant = grants.swap_remove(fastrand::usize(..grants.len()));
                    self.count(2, self.driver.logout(&grant.sid).await, &c.logouts);
                }
            }
        }
    }
}

fn pick(grants: &mut [Grant]) -> Option<&mut Grant> {
    if grants.is_empty() {
        None
    } else {
        let index = fastrand::usize(..grants.len());
        grants.get_mut(index)
    }
}

/// Runs `users` users until `duration` passes, printing a progress line each
/// second; returns the sync lag samples.
pub async fn run(
    traffic: &Arc<Traffic>,
    admin: &AdminProbe,
    users: usize,
    duration: Duration,
) -> Vec<Duration> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..users {
        let traffic = Arc::clone(traffic);
        tasks.spawn(async move { traffic.user(index, deadline).await });
    }
    let mut samples = Vec::new();
    let mut last_print = Instant::now();
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let sample = admin.sample().await;
                samples.push(sample.lag);
                if last_print.elapsed() >= Duration::from_secs(1) {
                    last_print = Instant::now();
                    let totals = traffic.totals();
                    progress(&format!(
                        "  {:>4.1}s  requests {:>6}  failed {:>3}  journal depth {:>4}  lag {:>5.1} ms  backfill {}",
                        started.elapsed().as_secs_f64(),
                        totals.requests,
                        totals.errors,
                        sample.depth,
                        sample.lag.as_secs_f64() * 1000.0,
                        sample.backfill,
                    ));
                }
            }
        }
    }
    progress_done();
    samples
}

/// A progress line: rewritten in place on a terminal, one line per update
/// otherwise (logs, CI).
pub fn progress(line: &str) {
    use std::io::IsTerminal as _;
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    } else {
        let _ = writeln!(err, "{line}");
    }
}

/// Ends a run of progress lines.
pub fn progress_done() {
    use std::io::IsTerminal as _;
    if std::io::stderr().is_terminal() {
        let _ = writeln!(std::io::stderr());
    }
}

/// What the progress line shows.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Journal records not yet applied.
    pub depth: u64,
    /// Age of the oldest.
    pub lag: Duration,
    /// Backfill progress, e.g. `clients 100% · authorizations 40%`.
    pub backfill: String,
}

/// Reads the proxy's admin API.
#[derive(Debug, Clone)]
pub struct AdminProbe {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

impl AdminProbe {
    /// A probe of the admin API at `addr`.
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
            token: token.to_owned(),
        }
    }

    async fn get(&self, path: &str) -> Option<(http::StatusCode, String)> {
        let request = http::Request::get(format!("{}{path}", self.base))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Full::default())
            .ok()?;
        let response = self.client.request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some((status, _)) = self.get("/readyz").await
                && status.is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The proxy's `/status`.
    pub async fn status(&self) -> Option<crate::admin::Status> {
        let (status, text) = self.get("/status").await?;
        if !status.is_success() {
            return None;
        }
        serde_json::from_str(&text).ok()
    }

    /// The current depth, lag and backfill progress.
    pub async fn sample(&self) -> Sample {
        let Some(status) = self.status().await else {
            return Sample::default();
        };
        let backfill = status
            .backfill
            .datasets
            .iter()
            .map(|(dataset, p)| {
                let done = p.copied + p.skipped + p.failed;
                let percent = if p.total == 0 {
                    0.0
                } else {
                    100.0 * done as f64 / p.total as f64
                };
                format!("{dataset} {percent:.0}%")
            })
            .collect::<Vec<_>>()
            .join(" · ");
        Sample {
            depth: status.journal.depth,
            lag: Duration::from_millis(status.journal.lag_ms),
            backfill: format!("{} ({backfill})", status.backfill.state),
        }
    }

    /// Waits until the backfill is done (or failed), showing progress.
    pub async fn wait_backfill(&self, timeout: Duration) -> crate::admin::BackfillStatus {
        let until = Instant::now() + timeout;
        let mut last = crate::admin::BackfillStatus::default();
        while Instant::now() < until {
            if let Some(status) = self.status().await {
                last = status.backfill;
                if last.state == "done" || last.state == "failed" {
                    break;
                }
                progress(&format!("  backfill {}", self.sample().await.backfill));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        progress_done();
        last
    }

    /// Changes applied per dataset.
    pub async fn synced(&self) -> Vec<(&'static str, u64)> {
        let text = self
            .get("/metrics")
            .await
            .map(|(_, t)| t)
            .unwrap_or_default();
        ["clients", "authorizations", "sessions"]
            .into_iter()
            .map(|dataset| {
                let series = format!(
                    "{}{{dataset=\"{dataset}\"}}",
                    crate::metrics::SYNC_APPLIED_TOTAL
                );
                (dataset, metric(&text, &series).unwrap_or(0.0) as u64)
            })
            .collect()
    }

    /// Waits until the journal is empty.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.status().await.is_some_and(|s| s.journal.depth == 0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

/// A metric's value from Prometheus text (the line starting with `name`
/// followed by a space or `{`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
