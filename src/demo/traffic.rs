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
    grant_ids: AtomicU64,
    events: std::sync::Mutex<Vec<TokenEvent>>,
    /// The latest credentials of every client (secrets rotate on update).
    clients: std::sync::Mutex<std::collections::HashMap<String, RegisteredClient>>,
    /// Tokens held at the end.
    held: std::sync::Mutex<Vec<HeldTokens>>,
    /// Percent of logins whose consent asks for refresh-token rotation.
    rotate_percent: u32,
}

/// A user's grant, kept to refresh, revoke or log out later.
#[derive(Debug)]
struct Grant {
    id: u64,
    client: RegisteredClient,
    sid: String,
    access_token: String,
    refresh_token: Option<String>,
}

/// Tokens a user still holds at the end (their grant not revoked).
#[derive(Debug, Clone)]
pub(crate) struct HeldTokens {
    /// The client.
    pub client_id: String,
    /// The client's latest credentials.
    pub client: RegisteredClient,
    /// The latest access token.
    pub access_token: String,
    /// The current refresh token.
    pub refresh_token: Option<String>,
}

/// What happened to refresh tokens, for the "no gap at the flip" check.
#[derive(Debug, Clone)]
enum TokenEvent {
    /// A refresh returned a new refresh token.
    Rotated {
        at: Instant,
        grant: u64,
        client: RegisteredClient,
        token: String,
    },
    /// A refresh token was used successfully.
    Used {
        at: Instant,
        grant: u64,
        token: String,
    },
    /// The grant was revoked.
    Revoked { grant: u64 },
}

/// The outcome of the "no gap at the flip" check.
#[derive(Debug, Clone, Copy, Default)]
pub struct RotationCheck {
    /// Refresh tokens rotated in the window before the flip.
    pub rotated: u64,
    /// Of those, used successfully after the flip by the simulated users.
    pub used_by_users: u64,
    /// Of those, used successfully by the check itself after the traffic.
    pub used_by_check: u64,
    /// Of those, refused after the flip.
    pub refused: u64,
}

impl Traffic {
    /// Traffic against the provider at `base` (through the proxy).
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            driver: Driver::new(base, token),
            counters: Counters::default(),
            grant_ids: AtomicU64::new(0),
            events: std::sync::Mutex::new(Vec::new()),
            clients: std::sync::Mutex::new(std::collections::HashMap::new()),
            held: std::sync::Mutex::new(Vec::new()),
            rotate_percent: 50,
        }
    }

    /// The same traffic with `percent` of logins asking for rotation (the
    /// rest take the server's default; Connect2id's is no rotation).
    pub(crate) fn with_rotate_percent(mut self, percent: u32) -> Self {
        self.rotate_percent = percent.min(100);
        self
    }

    fn event(&self, event: TokenEvent) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }

    /// Checks that every refresh token rotated in `[from, until)` (the last
    /// moments before the flip) and still current at `until` works after
    /// the flip: either a user refreshed with it after `until`, or the check
    /// refreshes with it now (through the proxy, i.e. at the new primary).
    /// Revoked grants are left out.
    pub(crate) async fn check_rotations(&self, from: Instant, until: Instant) -> RotationCheck {
        let events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
        let mut check = RotationCheck::default();
        for (index, event) in events.iter().enumerate() {
            let TokenEvent::Rotated {
                at,
                grant,
                client,
                token,
            } = event
            else {
                continue;
            };
            if *at < from || *at >= until {
                continue;
            }
            let later = &events[index + 1..];
            if later
                .iter()
                .any(|e| matches!(e, TokenEvent::Revoked { grant: g } if g == grant))
            {
                continue;
            }
            let used_at = later.iter().find_map(|e| match e {
                TokenEvent::Used {
                    at,
                    grant: g,
                    token: t,
                } if g == grant && t == token => Some(*at),
                _ => None,
            });
            match used_at {
                // Rotated again before the flip: not current at the flip.
                Some(at) if at < until => continue,
                Some(_) => {
                    check.rotated += 1;
                    check.used_by_users += 1;
                    continue;
                }
                None => check.rotated += 1,
            }
            // The app uses its current secret (it rotates on updates).
            let client = self
                .clients
                .lock()
                .ok()
                .and_then(|clients| clients.get(&client.id).cloned())
                .unwrap_or_else(|| client.clone());
            match self.driver.refresh(&client, token).await {
                Ok(_) => check.used_by_check += 1,
                Err(err) => {
                    check.refused += 1;
                    tracing::warn!(error = %err, "a refresh token rotated before the flip was refused after it");
                }
            }
        }
        check
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
                        rotate: fastrand::u32(0..100) < self.rotate_percent,
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
                            id: self.grant_ids.fetch_add(1, Ordering::Relaxed),
                            client: client.clone(),
                            sid: login.sid,
                            access_token: tokens.access_token,
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
                            grant.access_token.clone_from(&tokens.access_token);
                            self.event(TokenEvent::Used {
                                at: Instant::now(),
                                grant: grant.id,
                                token: token.clone(),
                            });
                            if let Some(rotated) = tokens.refresh_token {
                                self.event(TokenEvent::Rotated {
                                    at: Instant::now(),
                                    grant: grant.id,
                                    client: grant.client.clone(),
                                    token: rotated.clone(),
                                });
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
                        if let Ok(mut clients) = self.clients.lock() {
                            clients.insert(updated.id.clone(), updated.clone());
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
                    self.event(TokenEvent::Revoked { grant: grant.id });
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
                    // Logging out ends the session, not the grant: the
                    // app keeps its tokens.
                    let grant = grants.swap_remove(fastrand::usize(..grants.len()));
                    self.count(2, self.driver.logout(&grant.sid).await, &c.logouts);
                    self.keep(&grant);
                }
            }
        }
        for grant in &grants {
            self.keep(grant);
        }
    }

    fn keep(&self, grant: &Grant) {
        if let Ok(mut held) = self.held.lock() {
            held.push(HeldTokens {
                client_id: grant.client.id.clone(),
                client: grant.client.clone(),
                access_token: grant.access_token.clone(),
                refresh_token: grant.refresh_token.clone(),
            });
        }
    }

    /// Tokens users still held at the end of the traffic.
    pub(crate) fn held_tokens(&self) -> Vec<HeldTokens> {
        let mut held = self.held.lock().map(|h| h.clone()).unwrap_or_default();
        // A grant kept at a logout holds the client's credentials of that
        // moment; the app has rolled out every secret since.
        if let Ok(clients) = self.clients.lock() {
            for tokens in &mut held {
                if let Some(latest) = clients.get(&tokens.client_id) {
                    tokens.client = latest.clone();
                }
            }
        }
        held
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
    traffic: Arc<Traffic>,
    admin: AdminProbe,
    users: usize,
    duration: Duration,
) -> Vec<Duration> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..users {
        let traffic = Arc::clone(&traffic);
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
pub(crate) fn progress_done() {
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
    pub async fn status(&self) -> Option<crate::api::Status> {
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
            .map(|(dataset, p)| format!("{dataset} {:.0}%", 100.0 * p.fraction()))
            .collect::<Vec<_>>()
            .join(" · ");
        Sample {
            depth: status.journal.depth,
            lag: Duration::from_millis(status.journal.lag_ms),
            backfill: format!("{} ({backfill})", status.backfill.state),
        }
    }

    /// Waits until the backfill is done (or failed), showing progress.
    pub(crate) async fn wait_backfill(&self, timeout: Duration) -> crate::api::BackfillStatus {
        let until = Instant::now() + timeout;
        let mut last = crate::api::BackfillStatus::default();
        while Instant::now() < until {
            if let Some(status) = self.status().await {
                last = status.backfill;
                if last.state == crate::api::BackfillState::Done
                    || last.state == crate::api::BackfillState::Failed
                {
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
