//! The management-API clients' transport to a distant server: HTTP/2 where
//! the server offers it over TLS (ALPN), HTTP/1.1 otherwise, the forwarding
//! path unchanged, and TLS sessions resumed on new connections.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use handover::http::body::ProxyBody;
use handover::metrics::Metrics;
use handover::model::{BaseUrl, Side};
use handover::upstream::{self, Protocol, Upstream};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::proxy::TestCert;
use tokio::net::TcpListener;

/// What a TLS test server saw: per connection the negotiated ALPN and
/// whether the handshake resumed a session; per request its version.
#[derive(Debug, Default)]
struct Seen {
    handshakes: Vec<(Option<Vec<u8>>, rustls::HandshakeKind)>,
    versions: Vec<Version>,
}

/// A TLS server offering `alpn`, answering 200 `{}` to everything.
async fn tls_server(cert: &TestCert, alpn: &[&[u8]]) -> (u16, Arc<Mutex<Seen>>) {
    let mut config =
        (*handover::tls::server_config(&cert.files.cert, &cert.files.key).unwrap()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&record);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                {
                    let (_, connection) = tls.get_ref();
                    seen.lock().unwrap().handshakes.push((
                        connection.alpn_protocol().map(<[u8]>::to_vec),
                        connection.handshake_kind().unwrap(),
                    ));
                }
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        seen.lock().unwrap().versions.push(request.version());
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(StatusCode::OK)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, seen)
}

fn upstream(cert: &TestCert, port: u16, protocol: Protocol, pool_max_idle: usize) -> Upstream {
    let url = BaseUrl::parse(&format!("https://localhost:{port}/c2id")).unwrap();
    let config = upstream::Config {
        pool_max_idle,
        ..upstream::Config::default()
    };
    Upstream::new(
        Side::Target,
        &url,
        Some(&cert.files.cert),
        protocol,
        &config,
        &Metrics::new(),
    )
    .unwrap()
}

async fn call(upstream: &Upstream) {
    let uri = upstream.url.endpoint("/clients/x").unwrap();
    let response = upstream
        .send(
            Request::get(uri).body(ProxyBody::empty()).unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    handover::http::read_body(response.into_body(), 1024)
        .await
        .unwrap();
}

#[tokio::test]
async fn management_calls_speak_http2_where_the_server_offers_it_over_tls() {
    let cert = TestCert::generate();
    let (port, seen) = tls_server(&cert, &[b"h2", b"http/1.1"]).await;
    let management = upstream(&cert, port, Protocol::management(false), 256);
    for _ in 0..3 {
        call(&management).await;
    }
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.versions, [Version::HTTP_2; 3]);
        // One multiplexed connection.
        assert_eq!(seen.handshakes.len(), 1);
        assert_eq!(seen.handshakes[0].0.as_deref(), Some(&b"h2"[..]));
    }

    // The forwarding path keeps speaking what was configured.
    let (port, seen) = tls_server(&cert, &[b"h2", b"http/1.1"]).await;
    let traffic = upstream(&cert, port, Protocol::configured(false), 256);
    call(&traffic).await;
    assert_eq!(seen.lock().unwrap().versions, [Version::HTTP_11]);
}

#[tokio::test]
async fn management_calls_fall_back_to_http1_where_the_server_offers_only_that() {
    let cert = TestCert::generate();
    let (port, seen) = tls_server(&cert, &[b"http/1.1"]).await;
    let management = upstream(&cert, port, Protocol::management(false), 256);
    call(&management).await;
    call(&management).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.versions, [Version::HTTP_11; 2]);
    assert_eq!(
        seen.handshakes.len(),
        1,
        "the keep-alive connection is reused"
    );
}

#[tokio::test]
async fn new_connections_resume_the_tls_session() {
    let cert = TestCert::generate();
    let (port, seen) = tls_server(&cert, &[b"http/1.1"]).await;
    // No idle connection is kept: every call opens a new one.
    let upstream = upstream(&cert, port, Protocol::Http1, 0);
    for _ in 0..3 {
        call(&upstream).await;
        // The server may close its side of the idle connection first.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap();
    let kinds: Vec<rustls::HandshakeKind> = seen.handshakes.iter().map(|(_, kind)| *kind).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0], rustls::HandshakeKind::Full);
    assert!(
        kinds[1..]
            .iter()
            .all(|kind| *kind == rustls::HandshakeKind::Resumed),
        "{kinds:?}"
    );
}
