//! The downstream side's runtimes: per-core workers (each its own
//! `SO_REUSEPORT` listener, or a shared accept queue when the listener was
//! bound without it) and the shared runtime all serve every connection and
//! drain at shutdown.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use handover::proxy::Runtime;
use support::proxy::{FakeUpstream, TestProxy, client, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request per fresh connection and returns the status lines.
async fn one_request_per_connection(addr: SocketAddr, connections: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = format!(
                "GET /c2id/jwks.json?n={i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&response)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        }));
    }
    let mut lines = Vec::new();
    for task in tasks {
        lines.push(task.await.unwrap());
    }
    lines
}

async fn connections_total(proxy: &TestProxy) -> String {
    let (_, metrics) = get(&client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&metrics)
        .lines()
        .find(|line| line.starts_with("handover_proxy_connections_total"))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_on_reuseport_sockets_answer_every_connection() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.runtime = Runtime::PerCore { workers: 3 };
    // Bound as `serve` binds it: the workers add their own sockets.
    let listener = handover::proxy::bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let proxy = TestProxy::start_on_with_journal_dir(listener, config).await;
    let lines = one_request_per_connection(proxy.addr, 40).await;
    assert!(
        lines.iter().all(|line| line.starts_with("HTTP/1.1 200")),
        "{lines:?}"
    );
    assert_eq!(
        connections_total(&proxy).await,
        "handover_proxy_connections_total 40"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn per_core_workers_share_a_listener_bound_without_reuseport() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.runtime = Runtime::PerCore { workers: 2 };
    let proxy = TestProxy::start(config).await;
    let lines = one_request_per_connection(proxy.addr, 20).await;
    assert!(
        lines.iter().all(|line| line.starts_with("HTTP/1.1 200")),
        "{lines:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_shared_runtime_serves_too() {
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.runtime = Runtime::Shared;
    let proxy = TestProxy::start(config).await;
    let lines = one_request_per_connection(proxy.addr, 20).await;
    assert!(
        lines.iter().all(|line| line.starts_with("HTTP/1.1 200")),
        "{lines:?}"
    );
    proxy.shutdown().await;
}

async fn upstream_connections_total(proxy: &TestProxy) -> u64 {
    let (_, metrics) = get(&client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|line| {
            line.strip_prefix("handover_upstream_connections_total{upstream=\"source\"} ")
                .map(|n| n.parse().unwrap())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = FakeUpstream::echo().await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client = client();
    for i in 0..20 {
        let (parts, _) = get(&client, &proxy.url(&format!("/jwks.json?n={i}"))).await;
        assert_eq!(parts.status, http::StatusCode::OK);
    }
    // One connection for the requests (one client connection, one
    // worker), one for the readiness probe, one spare for a race.
    let opened = upstream_connections_total(&proxy).await;
    assert!((1..=3).contains(&opened), "{opened} upstream connections");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used_again() {
    // An upstream that closes every connection shortly after answering on
    // it with keep-alive (as one with a short keep-alive timeout does).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            });
        }
    });
    let proxy = TestProxy::start(TestProxy::config_for(&format!("http://{addr}"))).await;
    let client = client();
    for i in 0..5 {
        let (parts, body) = get(&client, &proxy.url(&format!("/jwks.json?n={i}"))).await;
        assert_eq!(parts.status, http::StatusCode::OK, "request {i}");
        assert_eq!(body, "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
