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

use crate::config::Secret;
use crate::health::Health;
use crate::http::{Body, BoxError, json_response, text_response};
use crate::metrics::Metrics;

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

    fn handle_protected(&self, method: &Method, path: &str) -> Response<Body> {
        match (method, path) {
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
