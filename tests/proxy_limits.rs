//! Connections and requests are bounded: a silent connection is closed one
//! head-read timeout after the accept, a trickled trigger body gets 408,
//! connections past `proxy.max_connections` get a 503 and are counted, a
//! malformed chunked body is the downstream's fault (400), and a request
//! without exactly one `Host` is refused (RFC 9112 §3.2), and so is an
//! HTTP/2 request whose `Host` differs from its `:authority`.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::{Duration, Instant};

use support::proxy::{FakeUpstream, TestProxy, client, get};
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

async fn metrics(proxy: &TestProxy) -> String {
    let (_, body) = get(&client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&body).into_owned()
}

async fn exchange(proxy: &TestProxy, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_all(&mut stream, Duration::from_secs(10)).await.0
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_read_timeout() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.header_read_timeout = Duration::from_millis(300);
    config.proxy.idle_timeout = Duration::from_secs(60);
    let proxy = TestProxy::start(config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (response, elapsed) = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(response.is_empty(), "{response}");
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(8),
        "a silent connection was held for the idle timeout: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_trigger_body_trickled_byte_by_byte_gets_408_and_a_close() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.forward.body_read_timeout = Duration::from_millis(500);
    let proxy = TestProxy::start(config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /clients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let mut buffer = Vec::new();
    trickle.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buffer)).await;
    let response = String::from_utf8_lossy(&buffer);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.to_ascii_lowercase().contains("connection: close"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| s.uri.path() != "/clients")
    );
    assert!(
        metrics(&proxy)
            .await
            .contains("handover_proxy_errors_total{fault=\"downstream\",kind=\"body_timeout\"} 1")
    );
}

#[tokio::test]
async fn connections_past_the_limit_get_503_and_are_counted() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.max_connections = 2;
    let proxy = TestProxy::start(config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        // A full exchange proves the connection was admitted (and is open).
        stream
            .write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    let (response, _) = read_all(&mut third, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("retry-after: 1"), "{response}");
    let text = metrics(&proxy).await;
    assert!(
        text.contains("handover_proxy_connections_refused_total 1"),
        "{text}"
    );
    // A slot frees when a connection closes.
    drop(held.pop());
    let mut admitted = false;
    for _ in 0..50 {
        let response = exchange(
            &proxy,
            b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if response.starts_with("HTTP/1.1 200") {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "no connection admitted after one closed");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_downstreams_fault() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let response = exchange(
        &proxy,
        b"POST /c2id/token-introspect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz-not-hex\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    let text = metrics(&proxy).await;
    assert!(
        text.contains(
            "handover_proxy_errors_total{fault=\"downstream\",kind=\"downstream_body\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("fault=\"primary\""), "{text}");
}

#[tokio::test]
async fn a_request_without_exactly_one_host_is_refused() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    for request in [
        &b"GET /jwks.json HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /jwks.json HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET /jwks.json HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    ] {
        let response = exchange(&proxy, request).await;
        assert!(
            response.starts_with("HTTP/1.1 400") || response.starts_with("HTTP/1.0 400"),
            "{}: {response}",
            String::from_utf8_lossy(request)
        );
    }
    // Only the readiness probe reached the upstream.
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| s.uri.path() == "/.well-known/openid-configuration"),
        "{:?}",
        upstream.requests()
    );
    // HTTP/1.0 may omit Host.
    let response = exchange(&proxy, b"GET /jwks.json HTTP/1.0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
}

#[tokio::test]
async fn an_http2_host_that_differs_from_the_authority_is_refused() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let h2 = support::proxy::h2c_client();
    let authority = format!("{}", proxy.addr);
    for (host, status) in [
        (None, http::StatusCode::OK),
        (Some(authority.to_uppercase()), http::StatusCode::OK),
        (
            Some("evil.example".to_owned()),
            http::StatusCode::BAD_REQUEST,
        ),
    ] {
        let mut request = http::Request::get(proxy.url("/jwks.json"));
        if let Some(host) = &host {
            request = request.header(http::header::HOST, host);
        }
        let request = request.body(Default::default()).unwrap();
        let (parts, _) = support::proxy::send(&h2, request).await;
        assert_eq!(parts.status, status, "{host:?}");
        assert_eq!(parts.version, http::Version::HTTP_2);
    }
    let forwarded: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|seen| seen.uri.path() == "/jwks.json")
        .collect();
    assert_eq!(forwarded.len(), 2, "{forwarded:?}");
}

#[tokio::test]
async fn idle_admin_connections_are_closed() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.admin.idle_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(config).await;
    // Silent from the accept, and idle after a request.
    let mut silent = TcpStream::connect(proxy.admin).await.unwrap();
    let (response, elapsed) = read_all(&mut silent, Duration::from_secs(10)).await;
    assert!(response.is_empty(), "{response}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let mut used = TcpStream::connect(proxy.admin).await.unwrap();
    used.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (response, elapsed) = read_all(&mut used, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
}

#[tokio::test]
async fn admin_connections_past_the_limit_get_503_and_are_counted() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.admin.max_connections = 2;
    let proxy = TestProxy::start(config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.admin).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = TcpStream::connect(proxy.admin).await.unwrap();
    let (response, _) = read_all(&mut third, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    drop(held);
    let mut text = String::new();
    for _ in 0..50 {
        let (status, body) = {
            let (parts, body) = get(&client(), &proxy.admin_url("/metrics")).await;
            (parts.status, body)
        };
        if status == http::StatusCode::OK {
            text = String::from_utf8_lossy(&body).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("handover_admin_connections_refused_total 1"),
        "{text}"
    );
}
