//! The admin API, on its own listener. `GET /livez`, `GET /readyz` and
//! `GET /metrics` are open (load balancers and Prometheus scrape them);
//! everything else needs `Authorization: Bearer <admin token>`, compared in
//! constant time. Without a configured token the admin API only starts on a
//! loopback address (checked by config validation) and the protected
//! endpoints are refused.
//!
//! `POST /shutdown` starts the same ordered shutdown as SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::health::Health;
use crate::http::{Body, BoxError, json_response, text_response};
use crate::journal::{DeadLetters, Journal};
use crate::metrics::Metrics;
use crate::routing::Routing;

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
    pub routing: Arc<Routing>,
}

/// `GET /status`, the operator's one-look view (DESIGN.md §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The migration phase.
    pub phase: String,
    /// Increments at every flip of the primary.
    pub epoch: u64,
    /// `source` or `target`.
    pub primary: String,
    /// Whether `/readyz` reports ready.
    pub ready: bool,
    /// The journal.
    pub journal: JournalStatus,
    /// The backfill.
    pub backfill: BackfillStatus,
}

/// The journal part of [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JournalStatus {
    /// Changes journaled and not yet applied to the secondary.
    pub depth: u64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_age_ms: u64,
    /// How far the secondary is behind the primary, in milliseconds: the
    /// age of the oldest change not yet applied (0 when caught up).
    pub lag_ms: u64,
    /// Changes the sync gave up on (see `GET /dead-letters`).
    pub dead_letters: u64,
    /// The last sequence number handed out.
    #[serde(default)]
    pub last_seq: Option<u64>,
    /// Every record below this sequence number is applied.
    #[serde(default)]
    pub applied_cursor: u64,
    /// Bytes of journal files on disk.
    #[serde(default)]
    pub bytes_on_disk: u64,
}

/// The backfill part of [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackfillStatus {
    /// `idle`, `running`, `paused`, `done` or `failed`.
    pub state: String,
    /// Per-dataset progress.
    pub datasets: std::collections::BTreeMap<String, DatasetProgress>,
}

/// One dataset's backfill progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatasetProgress {
    /// Records in the export, when known.
    pub total: u64,
    /// Records copied (or skipped because live traffic owns them).
    pub copied: u64,
    /// Records that could not be copied.
    pub failed: u64,
    /// Records per second, recently.
    pub rate: f64,
    /// Estimated seconds to go.
    pub eta_s: u64,
}

/// Serves the admin API until `stop` is cancelled.
pub async fn run(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    crate::http::serve(
        listener,
        move |request, peer| {
            let admin = Arc::clone(&admin);
            async move { Ok::<_, BoxError>(admin.handle(request, peer).await) }
        },
        stop,
    )
    .await;
}

impl Admin {
    async fn handle(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
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
            (method, path) => {
                if let Err(response) = self.authorize(&request) {
                    return response;
                }
                self.handle_protected(&method, path)
            }
        }
    }

    /// The journal gauges, fresh for a scrape.
    fn refresh_gauges(&self) {
        let stats = self.journal.stats();
        let journal = &self.metrics.journal;
        journal
            .depth
            .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
        journal
            .size_bytes
            .set(i64::try_from(stats.bytes_on_disk).unwrap_or(i64::MAX));
        self.metrics.sync.lag_seconds.set(
            stats
                .oldest_unacked_age
                .map_or(0.0, |age| age.as_secs_f64()),
        );
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let stats = self.journal.stats();
        let age_ms = stats
            .oldest_unacked_age
            .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        Status {
            phase: "mirroring".to_owned(),
            epoch: 1,
            primary: self.routing.primary_side().as_str().to_owned(),
            ready: self.health.readiness().ready,
            journal: JournalStatus {
                depth: stats.depth,
                oldest_age_ms: age_ms,
                lag_ms: age_ms,
                dead_letters: self.dead_letters.len() as u64,
                last_seq: stats.last_seq,
                applied_cursor: stats.applied_cursor,
                bytes_on_disk: stats.bytes_on_disk,
            },
            backfill: BackfillStatus {
                state: "idle".to_owned(),
                datasets: std::collections::BTreeMap::new(),
            },
        }
    }

    fn handle_protected(&self, method: &Method, path: &str) -> Response<Body> {
        match (method, path) {
            (&Method::GET, "/status") => json_response(StatusCode::OK, &self.status()),
            (&Method::POST, "/shutdown") => {
                tracing::info!("shutdown requested through the admin API");
                self.shutdown.cancel();
                json_response(StatusCode::ACCEPTED, &json!({"shutting_down": true}))
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
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
        if constant_time_eq(presented.as_bytes(), expected.expose().as_bytes()) {
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

/// Compares two secrets in time independent of where they differ: both are
/// hashed first, so even the length of the expected value does not leak.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, presented);
    let b = ring::digest::digest(&ring::digest::SHA256, expected);
    let diff = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}
