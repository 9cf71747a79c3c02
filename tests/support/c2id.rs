//! Helpers for tests against the in-process Connect2id emulator: start it on
//! `127.0.0.1:0` and talk to it over real HTTP.

#![allow(dead_code)] // Each test crate uses a different subset.

use std::time::Duration;

use bytes::Bytes;
use handover::emulator::connect2id::{ApiTokens, Config, Connect2id, Handle};
use handover::emulator::jwks::JwkSet;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The management token used when one token serves every API.
pub(crate) const TOKEN: &str = "ztucZS1ZyFKgh0tUEruUtiSTXhnexmd6-test";

/// A configuration with [`TOKEN`] for every API.
pub(crate) fn config(jwks: &JwkSet) -> Config {
    Config::new(ApiTokens::single(TOKEN), jwks.clone())
}

/// Starts an emulator on an ephemeral port; it is reachable on return.
pub(crate) async fn start(config: Config) -> Handle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    Connect2id::new(config).start(listener).await
}

/// A response read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body text if it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the status, showing the body on failure, and returns self.
    #[track_caller]
    pub(crate) fn expect(self, status: StatusCode) -> Self {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// The `error` member of an error body.
    pub(crate) fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// An HTTP client for the emulator.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http();
        Self { client }
    }
}

/// What to send.
#[derive(Debug, Default)]
pub(crate) struct Send<'a> {
    pub(crate) bearer: Option<&'a str>,
    pub(crate) basic: Option<(&'a str, &'a str)>,
    pub(crate) headers: Vec<(&'a str, String)>,
    pub(crate) json: Option<Value>,
    pub(crate) form: Option<Vec<(&'a str, &'a str)>>,
}

/// Percent-encodes a form value.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Encodes pairs as a form / query string.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Http {
    /// Sends a request and reads the whole answer.
    pub(crate) async fn send(&self, method: Method, url: &str, send: Send<'_>) -> Reply {
        self.try_send(method, url, send)
            .await
            .unwrap_or_else(|err| panic!("request to {url} failed: {err}"))
    }

    /// Sends a request; `Err` when the connection failed.
    pub(crate) async fn try_send(
        &self,
        method: Method,
        url: &str,
        send: Send<'_>,
    ) -> Result<Reply, String> {
        let mut builder = Request::builder().method(method).uri(url);
        if let Some(token) = send.bearer {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if let Some((id, secret)) = send.basic {
            use base64::Engine as _;
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                encode(id),
                encode(secret)
            ));
            builder = builder.header("authorization", format!("Basic {credentials}"));
        }
        for (name, value) in &send.headers {
            builder = builder.header(*name, value.as_str());
        }
        let body = if let Some(json) = &send.json {
            builder = builder.header("content-type", "application/json");
            Bytes::from(json.to_string())
        } else if let Some(pairs) = &send.form {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
            Bytes::from(form(pairs))
        } else {
            Bytes::new()
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|err| err.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| err.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET` with a bearer token.
    pub(crate) async fn get(&self, url: &str, bearer: &str) -> Reply {
        let send = Send {
            bearer: Some(bearer),
            ..Send::default()
        };
        self.send(Method::GET, url, send).await
    }

    /// A JSON request with a bearer token.
    pub(crate) async fn json(&self, method: Method, url: &str, bearer: &str, body: Value) -> Reply {
        let send = Send {
            bearer: Some(bearer),
            json: Some(body),
            ..Send::default()
        };
        self.send(method, url, send).await
    }

    /// A form `POST` authenticated with HTTP Basic.
    pub(crate) async fn post_form_basic(
        &self,
        url: &str,
        id: &str,
        secret: &str,
        pairs: Vec<(&str, &str)>,
    ) -> Reply {
        let send = Send {
            basic: Some((id, secret)),
            form: Some(pairs),
            ..Send::default()
        };
        self.send(Method::POST, url, send).await
    }

    /// A form `POST` with a bearer token.
    pub(crate) async fn post_form_bearer(
        &self,
        url: &str,
        bearer: &str,
        pairs: Vec<(&str, &str)>,
    ) -> Reply {
        let send = Send {
            bearer: Some(bearer),
            form: Some(pairs),
            ..Send::default()
        };
        self.send(Method::POST, url, send).await
    }
}
