//! What clients see when something goes wrong: an unreachable or slow
//! primary, ambiguous framing, slow or idle clients.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::proxy::{FakeUpstream, TestProxy, client, delayed_response, eventually, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_all(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut buffer)).await;
    (
        String::from_utf8_lossy(&buffer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn unreachable_primary_gives_502_with_a_generic_body_and_readiness_false() {
    // Bind then drop a listener: nothing listens on that port any more.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::start(TestProxy::config_for(&format!("http://{dead}"))).await;
    let client = client();
    let (parts, body) = get(&client, &proxy.url("/c2id/token")).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "bad gateway\n");
    assert!(!String::from_utf8_lossy(&body).contains(&dead.port().to_string()));
    let ready_url = proxy.admin_url("/readyz");
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&client, &ready_url).await.0.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let (_, body) = get(&client, &ready_url).await;
    assert!(String::from_utf8_lossy(&body).contains("primary unreachable"));
    let (_, metrics) = get(&client, &proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("handover_proxy_errors_total{fault=\"primary\",kind=\"connect\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("handover_primary_up 0"));
}

#[tokio::test]
async fn readiness_recovers_when_the_primary_comes_back() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&client, &proxy.admin_url("/readyz")).await.0.status == StatusCode::OK
        })
        .await
    );
    let (parts, body) = get(&client, &proxy.admin_url("/livez")).await;
    assert_eq!(
        (parts.status, body.as_ref()),
        (StatusCode::OK, b"ok\n".as_ref())
    );
}

#[tokio::test]
async fn slow_primary_gives_504() {
    let upstream = FakeUpstream::start(|_| delayed_response(Duration::from_secs(5))).await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.forward.upstream_timeout = Duration::from_millis(200);
    let proxy = TestProxy::start(config).await;
    let started = Instant::now();
    let (parts, body) = get(&client(), &proxy.url("/userinfo")).await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "gateway timeout\n");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected_with_400() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /c2id/token HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let (response, _) = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.to_ascii_lowercase().contains("connection: close"));
    // Neither the ambiguous request nor what it tried to smuggle reached
    // the upstream.
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| s.uri.path() == "/.well-known/openid-configuration"),
        "{:?}",
        upstream.requests()
    );
}

#[tokio::test]
async fn conflicting_content_lengths_are_rejected_with_400() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /c2id/clients HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
        .await
        .unwrap();
    let (response, _) = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[tokio::test]
async fn slow_header_read_closes_the_connection() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.header_read_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // A slowloris client: a head that never completes.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let (response, elapsed) = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "connection not closed: {elapsed:?}"
    );
    assert!(!response.contains("200"), "{response}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.idle_timeout = Duration::from_millis(400);
    let proxy = TestProxy::start(config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (response, elapsed) = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "idle connection not closed: {elapsed:?}"
    );
}
