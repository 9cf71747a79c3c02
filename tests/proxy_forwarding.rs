//! Pass-through behaviour: methods, statuses, headers, bodies, paths and
//! queries reach the primary and come back unchanged; hop-by-hop headers do
//! not; forwarding headers are set; issuer headers are scrubbed.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use support::proxy::{FakeUpstream, TestProxy, client, get, h2c_client, send};

fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn every_method_passes_through_with_exact_status_headers_and_body() {
    let upstream = FakeUpstream::start(|request: Request<Incoming>| async move {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let status = match method.as_str() {
            "POST" => StatusCode::CREATED,
            "DELETE" => StatusCode::NO_CONTENT,
            "PUT" => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        };
        let mut response = http::Response::builder()
            .status(status)
            .header("x-upstream-method", method.as_str())
            .header("x-upstream-path", path)
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; HttpOnly")
            .header("cache-control", "no-store");
        if status == StatusCode::NO_CONTENT {
            return response.body(handover::http::empty()).unwrap();
        }
        response = response.header("content-type", "application/octet-stream");
        response.body(handover::http::full(body)).unwrap()
    })
    .await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client = client();
    for (method, status) in [
        ("GET", StatusCode::OK),
        ("POST", StatusCode::CREATED),
        ("PUT", StatusCode::ACCEPTED),
        ("DELETE", StatusCode::NO_CONTENT),
        ("PATCH", StatusCode::OK),
    ] {
        let body = format!("payload of {method}");
        let request = Request::builder()
            .method(method)
            .uri(proxy.url("/c2id/clients/abc?x=1&y=%20z"))
            .body(Full::from(body.clone()))
            .unwrap();
        let (parts, bytes) = send(&client, request).await;
        assert_eq!(parts.status, status, "{method}");
        assert_eq!(parts.headers["x-upstream-method"], method);
        assert_eq!(parts.headers["x-upstream-path"], "/c2id/clients/abc");
        assert_eq!(parts.headers["cache-control"], "no-store");
        let cookies: Vec<_> = parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly"]);
        if status != StatusCode::NO_CONTENT {
            assert_eq!(bytes, body.as_bytes());
        }
    }
    // The readiness probe also reaches the upstream; count only ours.
    let seen: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|s| s.uri.path() != "/.well-known/openid-configuration")
        .collect();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|s| s.uri == "/c2id/clients/abc?x=1&y=%20z"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let request = Request::get(proxy.url("/userinfo"))
        .header("host", "login.example.com")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers, gzip")
        .header("upgrade", "h2c")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=198.51.100.1")
        .header("issuer", "https://attacker.example")
        .header("tenant-id", "other-tenant")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let (parts, bytes) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen = json(&bytes);
    let headers = seen["headers"].as_object().unwrap();
    for gone in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authorization",
        "upgrade",
        "forwarded",
        "issuer",
        "tenant-id",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the upstream: {headers:?}"
        );
    }
    assert_eq!(headers["te"], "trailers");
    assert_eq!(headers["x-end-to-end"], "kept");
    // Untrusted client-sent forwarding headers are replaced, not appended.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "login.example.com");
    // Host is the upstream's own authority unless preserve_host is set.
    assert_eq!(headers["host"], upstream.addr.to_string());
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn trusted_infrastructure_keeps_issuer_and_appends_forwarding_chain() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.forward.trusted_issuer_header = true;
    config.proxy.forward.trust_forwarded_headers = true;
    config.proxy.forward.preserve_host = true;
    let proxy = TestProxy::start(config).await;
    let request = Request::get(proxy.url("/.well-known/openid-configuration"))
        .header("host", "login.example.com")
        .header("issuer", "https://alias.example.com")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-proto", "https")
        .body(Full::default())
        .unwrap();
    let (_, bytes) = send(&client(), request).await;
    let seen = json(&bytes);
    assert_eq!(seen["headers"]["issuer"], "https://alias.example.com");
    assert_eq!(
        seen["headers"]["x-forwarded-for"],
        "198.51.100.1, 127.0.0.1"
    );
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["host"], "login.example.com");
}

#[tokio::test]
async fn chunked_request_reaches_an_http1_upstream_intact() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    // A raw chunked request, as a browser or SDK streaming a body sends it.
    let raw = "POST /c2id/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n\
               9\r\ngrant_typ\r\n11\r\ne=refresh_token&x\r\n0\r\n\r\n";
    let response = raw_exchange(proxy.addr, raw.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(seen["body"], "grant_type=refresh_token&x");
    assert_eq!(seen["method"], "POST");
}

#[tokio::test]
async fn h2_downstream_is_forwarded_to_an_http1_upstream() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client = h2c_client();
    let request = Request::post(proxy.url("/c2id/clients?q=1"))
        .header("content-type", "application/json")
        .body(Full::from(r#"{"client_name":"h2"}"#))
        .unwrap();
    let (parts, bytes) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.version, http::Version::HTTP_2);
    let seen = json(&bytes);
    assert_eq!(seen["uri"], "/c2id/clients?q=1");
    assert_eq!(seen["body"], r#"{"client_name":"h2"}"#);
    assert_eq!(upstream.requests()[0].version, http::Version::HTTP_11);
    // The :authority of the h2 request is what X-Forwarded-Host reports.
    assert_eq!(seen["headers"]["x-forwarded-host"], proxy.addr.to_string());
}

#[tokio::test]
async fn responses_stream_trailers_through() {
    let upstream = FakeUpstream::start(|_request: Request<Incoming>| async move {
        let (mut tx, body) = handover::http::channel_body(4);
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"part one;"))
                .await
                .unwrap();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            tx.send_trailers(trailers).await.unwrap();
        });
        // hyper's HTTP/1 server only sends trailers declared up front.
        http::Response::builder()
            .header("trailer", "x-checksum")
            .body(body)
            .unwrap()
    })
    .await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client = h2c_client();
    let response = client
        .request(
            Request::get(proxy.url("/stream"))
                .header("te", "trailers")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "part one;");
    assert_eq!(trailers.unwrap()["x-checksum"], "abc123");
}

#[tokio::test]
async fn metrics_count_requests_by_method_and_status_class() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client = client();
    for _ in 0..3 {
        get(&client, &proxy.url("/jwks.json")).await;
    }
    send(
        &client,
        Request::post(proxy.url("/token"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let (parts, text) = get(&client, &proxy.admin_url("/metrics")).await;
    assert_eq!(parts.status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.contains(
            "handover_proxy_requests_total{method_class=\"read\",status_class=\"2xx\"} 3"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "handover_proxy_requests_total{method_class=\"write\",status_class=\"2xx\"} 1"
        )
    );
    assert!(text.contains("handover_proxy_request_duration_seconds_bucket"));
    assert!(text.contains("handover_upstream_connections_open{upstream=\"source\"}"));
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}
