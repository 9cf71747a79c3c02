//! The inspection seam: a hook chooses routes by method and path; only those
//! are buffered (capped, 413 past the cap), seen before forwarding, and seen
//! again with the primary's answer before the client gets it.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use handover::error::{Kind, ProxyError};
use handover::metrics::Metrics;
use handover::proxy::{
    self, BoxFuture, Exchange, Forwarder, Hook, ListenerOptions, RouteId, Ticket,
};
use handover::upstream::FixedPrimary;
use handover::upstream::Upstream;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::proxy::{FakeUpstream, TestProxy, client, send};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    request_body: Bytes,
    authorization: Option<String>,
    status: StatusCode,
    response_body: Option<Bytes>,
}

#[derive(Default)]
struct RecordingHook {
    begun: Mutex<Vec<String>>,
    finished: Arc<Mutex<Vec<Recorded>>>,
}

struct RecordingTicket {
    finished: Arc<Mutex<Vec<Recorded>>>,
}

impl Hook for RecordingHook {
    fn route(&self, method: &Method, path: &str) -> Option<RouteId> {
        (method == Method::POST && path.starts_with("/c2id/clients"))
            .then_some(RouteId(1))
            .or_else(|| (path == "/c2id/refuse").then_some(RouteId(2)))
    }

    fn begin<'a>(
        &'a self,
        route: RouteId,
        request: &'a http::request::Parts,
        _body: &'a Bytes,
    ) -> BoxFuture<'a, Result<Box<dyn Ticket>, ProxyError>> {
        Box::pin(async move {
            if route == RouteId(2) {
                return Err(ProxyError::internal(Kind::Unavailable {
                    reason: "held",
                    retry_after: Duration::from_secs(2),
                }));
            }
            self.begun
                .lock()
                .unwrap()
                .push(request.uri.path().to_owned());
            Ok(Box::new(RecordingTicket {
                finished: Arc::clone(&self.finished),
            }) as Box<dyn Ticket>)
        })
    }
}

impl Ticket for RecordingTicket {
    fn finish<'a>(self: Box<Self>, exchange: Exchange<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // A slow finish (like a durable journal append) must delay the
            // response, not be skipped.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.finished.lock().unwrap().push(Recorded {
                path: exchange.path.to_owned(),
                request_body: exchange.request_body.clone(),
                authorization: exchange
                    .request_headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned()),
                status: exchange.status,
                response_body: exchange.response_body.cloned(),
            });
        })
    }
}

async fn start_with_hook(
    upstream: &FakeUpstream,
    hook: Arc<RecordingHook>,
) -> (std::net::SocketAddr, CancellationToken) {
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.forward.max_body_bytes = 1024;
    let metrics = Metrics::new();
    let source = Arc::new(
        Upstream::new(
            handover::model::Side::Source,
            &config.source.url,
            None,
            handover::upstream::Protocol::Http1,
            &config.upstream,
            &metrics,
        )
        .unwrap(),
    );
    let health = Arc::new(handover::health::Health::new(metrics.health.clone()));
    let forwarder = Arc::new(Forwarder::new(
        config.proxy.forward.clone(),
        Arc::new(FixedPrimary(source)),
        Some(hook as Arc<dyn Hook>),
        health,
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy::run(
        listener,
        forwarder,
        ListenerOptions::from_config(&config.proxy, None),
        metrics,
        stop.clone(),
        Duration::from_secs(1),
    ));
    (addr, stop)
}

#[tokio::test]
async fn inspected_routes_are_seen_whole_before_the_client_gets_the_answer() {
    let upstream = FakeUpstream::echo().await;
    let hook = Arc::new(RecordingHook::default());
    let (addr, _stop) = start_with_hook(&upstream, Arc::clone(&hook)).await;
    let client = client();
    let request = Request::post(format!("http://{addr}/c2id/clients"))
        .header("authorization", "Bearer master")
        .header("transfer-encoding", "chunked")
        .body(Full::from(r#"{"redirect_uris":["https://rp/cb"]}"#))
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::OK);
    // The hook finished before the response was released.
    let finished = hook.finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 1);
    let record = &finished[0];
    assert_eq!(record.path, "/c2id/clients");
    assert_eq!(
        record.request_body,
        r#"{"redirect_uris":["https://rp/cb"]}"#
    );
    assert_eq!(record.authorization.as_deref(), Some("Bearer master"));
    assert_eq!(record.status, StatusCode::OK);
    assert_eq!(record.response_body.as_ref(), Some(&body));
    assert_eq!(hook.begun.lock().unwrap().as_slice(), ["/c2id/clients"]);
}

#[tokio::test]
async fn other_routes_stream_untouched_and_uncapped() {
    let upstream = FakeUpstream::echo().await;
    let hook = Arc::new(RecordingHook::default());
    let (addr, _stop) = start_with_hook(&upstream, Arc::clone(&hook)).await;
    let big = "y".repeat(64 << 10);
    let request = Request::put(format!("http://{addr}/c2id/other"))
        .body(Full::from(big.clone()))
        .unwrap();
    let (parts, body) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["body"].as_str().unwrap().len(), big.len());
    assert!(hook.finished.lock().unwrap().is_empty());
}

#[tokio::test]
async fn inspected_body_over_the_cap_gets_413_and_is_not_forwarded() {
    let upstream = FakeUpstream::echo().await;
    let hook = Arc::new(RecordingHook::default());
    let (addr, _stop) = start_with_hook(&upstream, Arc::clone(&hook)).await;
    let request = Request::post(format!("http://{addr}/c2id/clients"))
        .body(Full::from("z".repeat(4096)))
        .unwrap();
    let (parts, body) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body, "request body too large\n");
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| s.uri.path() != "/c2id/clients")
    );
    assert!(hook.begun.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_hook_refusal_becomes_the_response_and_nothing_is_forwarded() {
    let upstream = FakeUpstream::echo().await;
    let hook = Arc::new(RecordingHook::default());
    let (addr, _stop) = start_with_hook(&upstream, Arc::clone(&hook)).await;
    let request = Request::post(format!("http://{addr}/c2id/refuse"))
        .body(Full::from("a=b"))
        .unwrap();
    let (parts, _) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(parts.headers["retry-after"], "2");
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| s.uri.path() != "/c2id/refuse")
    );
}
