//! The admin API, on its own listener. `GET /livez`, `GET /readyz` and
//! `GET /metrics` are open (load balancers and Prometheus scrape them);
//! everything else needs `Authorization: Bearer <admin token>`, compared in
//! constant time. Without a configured token the admin API only starts on a
//! loopback address (checked by config validation) and the protected
//! endpoints are refused.
//!
//! Operator endpoints (JSON):
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /status` | phase, primary, journal depth and lag, backfill progress, dead letters |
//! | `POST /backfill/start`, `/pause`, `/resume` | control the backfill; optional body `{"rate": N, "concurrency": N}` adjusts it live |
//! | `POST /backfill/settings` | `{"rate": N, "concurrency": N}` only |
//! | `POST /backfill/tokens` | an Authlete target: a tokens file (JSON lines) streamed in the body, created in Authlete |
//! | `POST /verify` | starts a verify (`{"dataset": D, "repair": bool, "list": N}`), answers `202` with its id |
//! | `GET /verify` | the latest verify: state, live progress, report |
//! | `GET /dead-letters` | changes the sync gave up on, with the reason (never their contents) |
//! | `POST /dead-letters/retry` | journals them again and clears the list |
//! | `POST /cutover`, `/rollback` | the fenced flip (`{"dry_run": bool, "max_pause_ms": N, "force": bool}`), answers the step-by-step report; in a fleet, on any instance: it coordinates the rest through the store |
//! | `POST /complete` | stop syncing for good after a cutover |
//! | `POST /shutdown` | the same ordered shutdown as SIGTERM |

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use serde::Deserialize;

use crate::api::{
    DeadLetterView, FlipReport, FlipRequest, JournalStatus, LatencyMs, Status, SyncStatus,
    VerifyReport, VerifyRequest, VerifyState, VerifyStatus,
};
use crate::backfill::{Backfill, Operation};
use crate::cutover::procedure::Cutover;
use crate::health::Health;
use crate::http::{Body, BoxError, json_response, text_response};
use crate::journal::{DeadLetters, Journal};
use crate::metrics::Metrics;
use crate::model::Change;
use crate::model::Secret;
use crate::model::{Dataset, Side};
use crate::servers::Servers;
use crate::sync::Recorder;
use crate::verify::{self, Verifier};

/// The admin listener: loopback only unless an admin token is configured.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:9901";

/// The shortest admin token accepted, in characters. The token guards the
/// cutover and every other phase move; 32 characters of `openssl rand -hex
/// 32` (or of base64) carry 128 bits or more, beyond any online guessing,
/// while a short human-chosen word is not.
pub const MIN_TOKEN_CHARS: usize = 32;

/// The admin listener's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the admin API listens.
    pub listen: std::net::SocketAddr,
    /// Bearer token for the admin API; without one, the admin API only
    /// starts on a loopback address.
    pub token: Option<Secret>,
    /// Most admin connections open at once.
    pub max_connections: usize,
    /// Admin connections with no request for this long are closed.
    pub idle_timeout: std::time::Duration,
}

/// Most admin API connections open at once: operators, a Prometheus
/// scraper and a few load-balancer probes need a handful; the rest of 64 is
/// headroom, and the limit keeps a flood on the admin port from taking file
/// descriptors the proxy needs.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Admin connections with no request for this long are closed: longer than
/// any scrape or probe interval in common use (15–30 s), so keep-alive
/// still saves their reconnects.
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the admin API serves from.
#[derive(Debug)]
pub struct Admin {
    /// Readiness.
    pub health: Arc<Health>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// The bearer token, if configured.
    pub token: Option<Secret>,
    /// Cancelled by `POST /shutdown`: the process-wide shutdown trigger.
    pub shutdown: CancellationToken,
    /// The journal (depth, lag).
    pub journal: Journal,
    /// The dead-letter log.
    pub dead_letters: Arc<DeadLetters>,
    /// Which side is primary.
    pub servers: Arc<Servers>,
    /// The backfill controller.
    pub backfill: Backfill,
    /// Runs verifies.
    pub verifier: Verifier,
    /// Journals repairs and retried dead letters.
    pub recorder: Recorder,
    /// The latest verify.
    pub verify_job: Mutex<Option<VerifyJob>>,
    /// The cutover machinery.
    pub cutover: Arc<Cutover>,
    /// Fleet mode: the shared store, whose depth and dead letters replace
    /// the local journal's in `/status`, metrics and `/dead-letters`.
    pub shared: Option<SharedStore>,
}

/// The shared store as the admin API sees it: the handle, and its latest
/// glance (refreshed in the background, so `/status` and a scrape never
/// wait for the database).
#[derive(Debug, Clone)]
pub struct SharedStore {
    /// The store.
    pub store: crate::store::Handle,
    /// Its latest depth and dead-letter count.
    pub glance: Arc<Mutex<crate::store::Glance>>,
    /// This instance's name in the fleet.
    pub instance: String,
    /// The members at the latest refresh.
    pub members: Arc<Mutex<Vec<crate::store::MemberStatus>>>,
}

impl SharedStore {
    /// The fleet as `/status` shows it.
    pub fn fleet(&self) -> crate::api::FleetStatus {
        let members = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::api::FleetStatus {
            this: self.instance.clone(),
            instances: members
                .iter()
                .map(|m| crate::api::FleetMember {
                    instance: m.member.instance.clone(),
                    admin_url: m.member.admin_url.clone(),
                    version: m.member.version.clone(),
                    phase: m.member.phase.clone(),
                    lease_age_ms: m.lease_age_ms,
                    live: m.live,
                })
                .collect(),
        }
    }

    /// The latest glance.
    pub fn latest(&self) -> crate::store::Glance {
        *self
            .glance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A verify started through the API.
#[derive(Debug, Clone)]
pub struct VerifyJob {
    /// Sequential id.
    pub id: u64,
    /// What was asked.
    pub request: VerifyRequest,
    /// Live progress.
    pub progress: Arc<verify::Progress>,
    /// The outcome, once finished.
    pub outcome: Option<Result<VerifyReport, String>>,
}

/// Body of the backfill control endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillSettings {
    rate: Option<u64>,
    concurrency: Option<usize>,
}

/// Largest operator request body.
const MAX_ADMIN_BODY: usize = 64 << 10;

/// Serves the admin API until `stop` is cancelled.
pub async fn run(
    listener: TcpListener,
    admin: Arc<Admin>,
    limits: crate::http::Limits,
    stop: CancellationToken,
) {
    crate::http::serve_limited(
        listener,
        move |request, peer| {
            let admin = Arc::clone(&admin);
            async move { Ok::<_, BoxError>(admin.handle(request, peer).await) }
        },
        stop,
        limits,
    )
    .await;
}

impl Admin {
    async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match (method, path.as_str()) {
            (Method::GET, "/livez") => text_response(StatusCode::OK, "ok\n"),
            (Method::GET, "/readyz") => {
                let readiness = self.health.readiness();
                let status = if readiness.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(status, &readiness)
            }
            (Method::GET, "/metrics") => {
                self.refresh_gauges();
                let mut response = text_response(StatusCode::OK, &self.metrics.encode());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (Method::POST, "/backfill/tokens") => {
                if let Err(response) = self.authorize(&request) {
                    return response;
                }
                let Some(authlete) = self.servers.authlete().cloned() else {
                    return json_response(
                        StatusCode::CONFLICT,
                        &json!({"error": "conflict", "error_description": "a tokens file applies to an Authlete target only"}),
                    );
                };
                // Streamed: a tokens file can hold millions of lines.
                match crate::backfill::import_tokens(authlete, request.into_body()).await {
                    Ok(report) => json_response(StatusCode::OK, &report),
                    Err(err) => bad_request(&err.to_string()),
                }
            }
            (method, path) => {
                if let Err(response) = self.authorize(&request) {
                    return response;
                }
                let body = match crate::http::read_body(request.into_body(), MAX_ADMIN_BODY).await {
                    Ok(body) => body,
                    Err(err) => return bad_request(&err.to_string()),
                };
                self.handle_protected(&method, path, &body).await
            }
        }
    }

    /// The journal and concurrency gauges, fresh for a scrape.
    fn refresh_gauges(&self) {
        let stats = self.journal.stats();
        match &self.shared {
            Some(shared) => {
                let glance = shared.latest();
                self.metrics
                    .refresh_journal(glance.depth.records, 0, age_of(glance.depth.oldest));
            }
            None => self.metrics.refresh_journal(
                stats.depth,
                stats.bytes_on_disk,
                stats.oldest_unacked_age,
            ),
        }
        let snapshot = self.cutover.sync.limiter().snapshot();
        self.metrics.sync.refresh_concurrency(
            snapshot.limit,
            snapshot.in_flight,
            snapshot.waiting,
            snapshot.throttled_for,
        );
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let mut stats = self.journal.stats();
        let mut dead_letters = self.dead_letters.len() as u64;
        if let Some(shared) = &self.shared {
            let glance = shared.latest();
            stats.depth = glance.depth.records;
            stats.oldest_unacked_age = age_of(glance.depth.oldest);
            dead_letters = glance.dead_letters;
        }
        let age_ms = stats
            .oldest_unacked_age
            .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        let phase = self.cutover.phases.current();
        let untracked = self.recorder.untracked();
        Status {
            phase: phase.phase,
            epoch: phase.epoch,
            primary: self.servers.primary_side(),
            ready: self.health.readiness().ready,
            journal: JournalStatus {
                depth: stats.depth,
                oldest_age_ms: age_ms,
                lag_ms: age_ms,
                dead_letters,
                last_seq: stats.last_seq,
                applied_cursor: stats.applied_cursor,
                bytes_on_disk: stats.bytes_on_disk,
                untracked: untracked.count,
            },
            backfill: self.backfill.status(),
            warnings: untracked.warning().into_iter().collect(),
            key_parity: self
                .cutover
                .environment
                .parity
                .as_ref()
                .and_then(|parity| parity.status()),
            fallback: self.fallback_status(),
            sync: self.sync_status(),
            fleet: self.shared.as_ref().map(SharedStore::fleet),
        }
    }

    /// The sync's concurrency and the secondary's answers.
    fn sync_status(&self) -> SyncStatus {
        let sync = &self.cutover.sync;
        let secondary = sync.secondary();
        let limiter = sync.limiter();
        let snapshot = limiter.snapshot();
        let feedback = self.servers.management(secondary).feedback();
        let latency = feedback.latency();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        SyncStatus {
            secondary,
            concurrency_limit: snapshot.limit,
            max_concurrency: limiter.bounds().max,
            in_flight: snapshot.in_flight,
            waiting: snapshot.waiting,
            latency_ms: LatencyMs {
                p50: ms(latency.p50),
                p99: ms(latency.p99),
                samples: latency.samples,
            },
            min_latency_ms: snapshot.min_latency.map_or(0.0, ms),
            throttled_ms: snapshot
                .throttled_for
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            overloaded: feedback.overloaded_total(),
            rate: sync.rate(),
        }
    }

    /// The fallback to the previous primary, once the primary flipped.
    fn fallback_status(&self) -> Option<crate::api::FallbackStatus> {
        let cutover = &self.cutover;
        let flipped = cutover.servers.flipped_at()?;
        let epoch_ms = |at: std::time::SystemTime| {
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let previous = cutover.servers.primary_side().other();
        let refresh_open_until_ms = cutover
            .config
            .refresh_fallback_window
            .filter(|_| previous == Side::Source)
            .map(|window| epoch_ms(flipped + window));
        let used = Dataset::ALL
            .into_iter()
            .map(|dataset| (dataset, cutover.metrics.fallbacks(dataset)))
            .filter(|(_, count)| *count > 0)
            .collect();
        Some(crate::api::FallbackStatus {
            previous,
            flipped_at_ms: epoch_ms(flipped),
            open_until_ms: epoch_ms(flipped + cutover.config.fallback_window),
            refresh_open_until_ms,
            used,
        })
    }

    async fn handle_protected(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Response<Body> {
        match (method, path) {
            (&Method::GET, "/status") => {
                // A fleet: the backfill's shared progress as of now.
                self.backfill.refresh().await;
                json_response(StatusCode::OK, &self.status())
            }
            (
                &Method::POST,
                "/backfill/start" | "/backfill/pause" | "/backfill/resume" | "/backfill/settings",
            ) => {
                let settings: BackfillSettings = match json_or_default(body) {
                    Ok(settings) => settings,
                    Err(response) => return response,
                };
                let operation = match path {
                    "/backfill/start" => Operation::Start,
                    "/backfill/pause" => Operation::Pause,
                    "/backfill/resume" => Operation::Resume,
                    _ => Operation::Settings,
                };
                let result = self
                    .backfill
                    .control(operation, settings.rate, settings.concurrency)
                    .await;
                match result {
                    Ok(_) => {
                        tracing::info!(operation = path, "backfill control");
                        json_response(StatusCode::OK, &self.backfill.status())
                    }
                    Err(err @ crate::backfill::Error::Invalid(_)) => bad_request(&err.to_string()),
                    Err(err @ crate::backfill::Error::Store(_)) => {
                        tracing::error!(operation = path, error = %err, "backfill control failed");
                        json_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &json!({"error": "unavailable", "error_description": err.to_string()}),
                        )
                    }
                    Err(err) => json_response(
                        StatusCode::CONFLICT,
                        &json!({"error": "conflict", "error_description": err.to_string()}),
                    ),
                }
            }
            (&Method::POST, "/verify") => {
                let request: VerifyRequest = match json_or_default(body) {
                    Ok(request) => request,
                    Err(response) => return response,
                };
                self.start_verify(request)
            }
            (&Method::GET, "/verify") => match self.verify_status() {
                Some(status) => json_response(StatusCode::OK, &status),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "not_found", "error_description": "no verify has run"}),
                ),
            },
            (&Method::POST, "/cutover" | "/rollback") => {
                let request: FlipRequest = match json_or_default(body) {
                    Ok(request) => request,
                    Err(response) => return response,
                };
                let report = if path == "/cutover" {
                    self.cutover.cutover(&request).await
                } else {
                    self.cutover.rollback(&request).await
                };
                json_response(flip_status(&report), &report)
            }
            (&Method::POST, "/complete") => {
                let report = self.cutover.complete().await;
                json_response(flip_status(&report), &report)
            }
            (&Method::GET, "/dead-letters") => match &self.shared {
                Some(shared) => match shared.store.dead_letters().await {
                    Ok(letters) => {
                        let views: Vec<DeadLetterView> = letters
                            .into_iter()
                            .map(|letter| {
                                view(letter.id, &letter.body, &letter.reason, letter.dead_at)
                            })
                            .collect();
                        json_response(StatusCode::OK, &views)
                    }
                    Err(err) => store_unavailable(&err),
                },
                None => json_response(StatusCode::OK, &self.dead_letter_views()),
            },
            (&Method::POST, "/dead-letters/retry") => self.retry_dead_letters().await,
            (&Method::POST, "/shutdown") => {
                tracing::info!("shutdown requested through the admin API");
                self.shutdown.cancel();
                json_response(StatusCode::ACCEPTED, &json!({"shutting_down": true}))
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    fn start_verify(self: &Arc<Self>, request: VerifyRequest) -> Response<Body> {
        let Ok(mut slot) = self.verify_job.lock() else {
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal_error"}),
            );
        };
        if let Some(job) = slot.as_ref()
            && job.outcome.is_none()
        {
            return json_response(
                StatusCode::CONFLICT,
                &json!({"error": "conflict", "error_description": format!("verify {} is still running", job.id), "id": job.id}),
            );
        }
        let id = slot.as_ref().map_or(1, |job| job.id + 1);
        let progress = Arc::new(verify::Progress::default());
        *slot = Some(VerifyJob {
            id,
            request: request.clone(),
            progress: Arc::clone(&progress),
            outcome: None,
        });
        drop(slot);
        let admin = Arc::clone(self);
        let started = std::time::SystemTime::now();
        tokio::spawn(async move {
            tracing::info!(id, dataset = ?request.dataset, repair = request.repair, "verify started");
            let outcome = admin
                .verifier
                .run(&request, &progress)
                .await
                .map_err(|err| err.to_string());
            match &outcome {
                Ok(report) => {
                    tracing::info!(id, drift = report.drift, "verify finished");
                    // Every dataset compared, and any drift found repaired
                    // (or none): what could not be tracked before it is
                    // accounted for.
                    if request.dataset.is_none() && (request.repair || report.drift == 0) {
                        admin.recorder.verified_since(started);
                    }
                }
                Err(err) => tracing::warn!(id, error = %err, "verify failed"),
            }
            if let Ok(mut slot) = admin.verify_job.lock()
                && let Some(job) = slot.as_mut()
                && job.id == id
            {
                job.outcome = Some(outcome);
            }
        });
        json_response(StatusCode::ACCEPTED, &json!({"id": id, "state": "running"}))
    }

    /// The latest verify.
    pub(crate) fn verify_status(&self) -> Option<VerifyStatus> {
        let slot = self.verify_job.lock().ok()?;
        let job = slot.as_ref()?;
        let (state, report, error) = match &job.outcome {
            None => (VerifyState::Running, None, None),
            Some(Ok(report)) => (VerifyState::Done, Some(report.clone()), None),
            Some(Err(err)) => (VerifyState::Failed, None, Some(err.clone())),
        };
        Some(VerifyStatus {
            id: job.id,
            state,
            dataset: job.progress.dataset.lock().map_or(None, |d| *d),
            scanned: job
                .progress
                .scanned
                .load(std::sync::atomic::Ordering::Relaxed),
            report,
            error,
        })
    }

    fn dead_letter_views(&self) -> Vec<DeadLetterView> {
        self.dead_letters
            .list()
            .into_iter()
            .map(|letter| view(letter.seq, &letter.body, &letter.reason, letter.appended_at))
            .collect()
    }

    async fn retry_dead_letters(&self) -> Response<Body> {
        if let Some(shared) = &self.shared {
            // One transaction moves them back to the shared journal, where
            // any instance claims them.
            return match shared.store.retry_dead_letters(u64::MAX).await {
                Ok(retried) => {
                    tracing::info!(retried, "dead letters retried");
                    json_response(StatusCode::OK, &json!({"retried": retried}))
                }
                Err(err) => store_unavailable(&err),
            };
        }
        let letters = self.dead_letters.list();
        let Some(last) = letters.iter().map(|l| l.seq).max() else {
            return json_response(StatusCode::OK, &json!({"retried": 0}));
        };
        let changes: Vec<Change> = letters
            .iter()
            .filter_map(|letter| Change::from_record(&letter.body).ok())
            .collect();
        let retried = changes.len();
        // Journal first, then clear: a crash in between retries twice,
        // which is harmless; the reverse could lose them.
        self.recorder.record(changes).await;
        let letters = Arc::clone(&self.dead_letters);
        let cleared = tokio::task::spawn_blocking(move || letters.clear_through(last)).await;
        match cleared {
            Ok(Ok(())) => {
                self.metrics
                    .sync
                    .dead_letters
                    .set(i64::try_from(self.dead_letters.len()).unwrap_or(i64::MAX));
                tracing::info!(retried, "dead letters retried");
                json_response(StatusCode::OK, &json!({"retried": retried}))
            }
            Ok(Err(err)) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal_error", "error_description": format!("journaled again, but the dead-letter log could not be cleared: {err}")}),
            ),
            Err(_) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal_error"}),
            ),
        }
    }

    #[allow(clippy::result_large_err)]
    fn authorize(&self, request: &Request<Incoming>) -> Result<(), Response<Body>> {
        let Some(expected) = &self.token else {
            return Err(json_response(
                StatusCode::FORBIDDEN,
                &json!({"error": "forbidden", "error_description": "no admin token is configured (admin.token_env)"}),
            ));
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if expected.matches(presented.as_bytes()) {
            Ok(())
        } else {
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_token", "error_description": "missing or wrong admin bearer token"}),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Err(response)
        }
    }
}

/// `200` when the flip did what was asked; `409` when it was refused or
/// aborted (the report says why).
fn flip_status(report: &FlipReport) -> StatusCode {
    if report.succeeded() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    }
}

/// An optional JSON request body: empty means the defaults; malformed is
/// the client's fault (`400`, saying why).
#[allow(clippy::result_large_err)]
fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, Response<Body>> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|err| bad_request(&format!("invalid JSON body: {err}")))
}

fn bad_request(description: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": "invalid_request", "error_description": description}),
    )
}

/// A dead letter as the API shows it.
fn view(seq: u64, body: &[u8], reason: &str, at: std::time::SystemTime) -> DeadLetterView {
    DeadLetterView {
        seq,
        change: Change::from_record(body).map_or_else(
            |_| "(unreadable record)".to_owned(),
            |change| change.redacted(),
        ),
        // Letters written by a version that did not redact.
        reason: crate::telemetry::redact::text(reason),
        at_ms: at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// How old something appended at `at` is.
fn age_of(at: Option<std::time::SystemTime>) -> Option<std::time::Duration> {
    at.map(|at| {
        std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default()
    })
}

/// The shared store could not answer (its fault, not the operator's).
fn store_unavailable(err: &crate::store::Error) -> Response<Body> {
    tracing::error!(error = %err, "the shared store did not answer");
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "store_unavailable", "error_description": "the shared store (PostgreSQL) did not answer; see the log"}),
    )
}
