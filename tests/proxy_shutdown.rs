//! Graceful shutdown: readiness turns false first, in-flight requests
//! finish, new connections are refused, then `app::run` returns.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::proxy::{FakeUpstream, TestProxy, client, delayed_response, eventually, get, send};

#[tokio::test]
async fn shutdown_finishes_an_in_flight_slow_request() {
    let upstream = FakeUpstream::start(|request: Request<hyper::body::Incoming>| async move {
        if request.uri().path() == "/slow" {
            delayed_response(Duration::from_millis(800)).await
        } else {
            handover::http::text_response(StatusCode::OK, "fast\n")
        }
    })
    .await;
    let mut proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let slow_url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move {
        send(
            &client(),
            Request::get(slow_url).body(Full::default()).unwrap(),
        )
        .await
    });
    // Wait until the upstream has the request, then signal shutdown.
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.requests().iter().any(|s| s.uri.path() == "/slow")
        })
        .await
    );
    proxy.begin_shutdown();
    // Readiness is false while draining; the admin API still answers.
    let admin = client();
    let ready_url = proxy.admin_url("/readyz");
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(&admin, &ready_url).await.0.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let (parts, body) = in_flight.await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "slow but complete\n");
    let addr = proxy.addr;
    tokio::time::timeout(Duration::from_secs(10), proxy.join())
        .await
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}

#[tokio::test]
async fn requests_still_busy_after_the_grace_are_cut() {
    let upstream = FakeUpstream::start(|_| delayed_response(Duration::from_secs(30))).await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.shutdown_grace = Duration::from_millis(300);
    let mut proxy = TestProxy::start(config).await;
    let url = proxy.url("/forever");
    let in_flight = tokio::spawn(async move {
        client()
            .request(Request::get(url).body(Full::default()).unwrap())
            .await
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream
                .requests()
                .iter()
                .any(|s| s.uri.path() == "/forever")
        })
        .await
    );
    proxy.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), proxy.join())
        .await
        .unwrap();
    assert!(in_flight.await.unwrap().is_err());
}

#[tokio::test]
async fn admin_shutdown_endpoint_needs_the_token_and_stops_the_proxy() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client = client();
    let url = proxy.admin_url("/shutdown");
    let (parts, _) = send(&client, Request::post(&url).body(Full::default()).unwrap()).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    let (parts, _) = send(
        &client,
        Request::post(&url)
            .header("authorization", "Bearer wrong")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    let (parts, _) = send(
        &client,
        Request::post(&url)
            .header("authorization", "Bearer test-token")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::ACCEPTED);
    tokio::time::timeout(Duration::from_secs(10), proxy.join())
        .await
        .unwrap();
}
