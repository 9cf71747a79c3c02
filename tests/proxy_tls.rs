//! TLS termination with a certificate generated at test time; HTTP/2 and
//! HTTP/1.1 negotiated by ALPN.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use support::proxy::{FakeUpstream, TestCert, TestProxy};

fn tls_client(
    cert: &TestCert,
    http2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert_der.clone()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector)
}

async fn tls_round_trip(http2: bool) {
    let cert = TestCert::generate();
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.tls = Some(cert.files.clone());
    let proxy = TestProxy::start(config).await;
    let client = tls_client(&cert, http2);
    let url = format!(
        "https://localhost:{}/c2id/authz-sessions/rest/v3?x=1",
        proxy.addr.port()
    );
    let response = client
        .request(
            Request::post(url)
                .body(Full::from("{\"query\":\"a=b\"}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let expected_version = if http2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    assert_eq!(response.version(), expected_version);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["uri"], "/c2id/authz-sessions/rest/v3?x=1");
    assert_eq!(seen["body"], "{\"query\":\"a=b\"}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn tls_downstream_over_http2() {
    tls_round_trip(true).await;
}

#[tokio::test]
async fn tls_downstream_over_http1() {
    tls_round_trip(false).await;
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_is_refused() {
    let cert = TestCert::generate();
    let upstream = FakeUpstream::echo().await;
    let mut config = TestProxy::config_for(&upstream.url());
    config.proxy.tls = Some(cert.files.clone());
    let proxy = TestProxy::start(config).await;
    let result = support::proxy::client()
        .request(Request::get(proxy.url("/")).body(Full::default()).unwrap())
        .await;
    assert!(result.is_err());
}
