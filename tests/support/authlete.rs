//! Drives the Authlete emulator over HTTP: starts it in-process on
//! `127.0.0.1:0` and speaks both API versions with their credentials.

// Each test binary that includes the harness uses a different subset.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use handover::emulator::authlete::{Authlete, Config, Handle};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;

/// A running emulator plus an HTTP client for it.
pub struct Emulator {
    /// In-process handle, for reading state back.
    pub authlete: Authlete,
    /// The server.
    pub handle: Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Which API generation a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `/api/...`, Basic.
    V2,
    /// `/api/{serviceId}/...`, Bearer.
    V3,
}

/// Status and parsed JSON body (`Value::Null` for an empty body).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// `body[key]` as a string, or "" when absent.
    pub fn str(&self, key: &str) -> &str {
        self.body[key].as_str().unwrap_or("")
    }

    /// `resultCode`.
    pub fn code(&self) -> &str {
        self.str("resultCode")
    }

    /// `action`.
    pub fn action(&self) -> &str {
        self.str("action")
    }

    /// `responseContent`, parsed as JSON.
    pub fn content(&self) -> Value {
        serde_json::from_str(self.str("responseContent")).expect("responseContent is JSON")
    }

    /// Asserts a 2xx with `resultCode` and returns self.
    #[track_caller]
    pub fn ok(self, code: &str) -> Self {
        assert!(self.status.is_success(), "unexpected {self:?}");
        assert_eq!(self.code(), code, "unexpected {self:?}");
        self
    }
}

/// A config with a small scope catalogue.
pub fn config() -> Config {
    Config {
        supported_scopes: Some(vec![
            "openid".to_owned(),
            "email".to_owned(),
            "profile".to_owned(),
            "offline_access".to_owned(),
        ]),
        ..Config::default()
    }
}

/// Starts an emulator on an ephemeral port; it is ready when this returns
/// (the listener is bound before the server task starts).
pub async fn start(config: Config) -> Emulator {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let authlete = Authlete::new(config);
    let handle = authlete.clone().start(listener).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    Emulator {
        authlete,
        handle,
        client,
    }
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Emulator {
    /// The v3 Bearer header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.authlete.config().access_token)
    }

    /// The v2 Basic header value.
    pub fn basic(&self) -> String {
        use base64::Engine as _;
        let config = self.authlete.config();
        let pair = format!("{}:{}", config.api_key, config.api_secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// The full path of an API for a version (`rest` starts with `/`).
    pub fn path(&self, version: Version, rest: &str) -> String {
        match version {
            Version::V2 => format!("/api{rest}"),
            Version::V3 => format!("/api/{}{rest}", self.authlete.config().service_id),
        }
    }

    /// Sends one request; `Err` when the connection failed (down).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.handle.url()));
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        if let Some(value) = content_type {
            request = request.header(header::CONTENT_TYPE, value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .expect("emulator answered within 10 s")?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Ok(Reply { status, body })
    }

    /// Sends one request that must get an answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_send(method, path, authorization, content_type, body)
            .await
            .expect("the emulator answered")
    }

    /// Credentials for a version.
    fn auth(&self, version: Version) -> String {
        match version {
            Version::V2 => self.basic(),
            Version::V3 => self.bearer(),
        }
    }

    /// `GET` an API.
    pub async fn get(&self, version: Version, rest: &str) -> Reply {
        let path = self.path(version, rest);
        self.send(
            Method::GET,
            &path,
            Some(&self.auth(version)),
            None,
            Bytes::new(),
        )
        .await
    }

    /// `POST` JSON to an API.
    pub async fn post(&self, version: Version, rest: &str, body: &Value) -> Reply {
        let path = self.path(version, rest);
        self.send(
            Method::POST,
            &path,
            Some(&self.auth(version)),
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    /// `POST` a form to an API.
    pub async fn post_form(&self, version: Version, rest: &str, body: &str) -> Reply {
        let path = self.path(version, rest);
        self.send(
            Method::POST,
            &path,
            Some(&self.auth(version)),
            Some("application/x-www-form-urlencoded"),
            body.to_owned(),
        )
        .await
    }

    /// `DELETE` an API.
    pub async fn delete(&self, version: Version, rest: &str) -> Reply {
        let path = self.path(version, rest);
        self.send(
            Method::DELETE,
            &path,
            Some(&self.auth(version)),
            None,
            Bytes::new(),
        )
        .await
    }

    /// Creates a client and returns it (asserting success).
    pub async fn create_client(&self, version: Version, client: Value) -> Value {
        let reply = self.post(version, "/client/create", &client).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body
    }

    /// A confidential v3 client with this alias; returns `(client_id,
    /// client_secret)`.
    pub async fn confidential_client(&self, alias: &str) -> (u64, String) {
        let client = self
            .create_client(
                Version::V3,
                serde_json::json!({
                    "clientName": alias,
                    "clientIdAlias": alias,
                    "clientType": "CONFIDENTIAL",
                    "grantTypes": ["AUTHORIZATION_CODE", "REFRESH_TOKEN"],
                    "tokenAuthMethod": "CLIENT_SECRET_BASIC",
                }),
            )
            .await;
        (
            client["clientId"].as_u64().expect("numeric clientId"),
            client["clientSecret"].as_str().expect("secret").to_owned(),
        )
    }

    /// Imports a token pair for a client alias through v3.
    pub async fn import_pair(&self, alias: &str, subject: &str, at: &str, rt: &str) -> Reply {
        self.post(
            Version::V3,
            "/auth/token/create",
            &serde_json::json!({
                "grantType": "AUTHORIZATION_CODE",
                "clientIdentifier": alias,
                "subject": subject,
                "scopes": ["openid", "email"],
                "accessToken": at,
                "refreshToken": rt,
            }),
        )
        .await
    }

    /// `/auth/introspection` of an access token through v3.
    pub async fn introspect(&self, access_token: &str) -> Reply {
        self.post(
            Version::V3,
            "/auth/introspection",
            &serde_json::json!({ "token": access_token }),
        )
        .await
    }

    /// `/auth/token` refresh through v3, with client credentials.
    pub async fn refresh(&self, client_id: &str, secret: &str, refresh_token: &str) -> Reply {
        self.post(
            Version::V3,
            "/auth/token",
            &serde_json::json!({
                "clientId": client_id,
                "clientSecret": secret,
                "parameters": form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]),
            }),
        )
        .await
    }

    /// `/auth/introspection` of an access token through `version`.
    pub async fn introspect_in(&self, version: Version, access_token: &str) -> Reply {
        self.post(
            version,
            "/auth/introspection",
            &serde_json::json!({ "token": access_token }),
        )
        .await
    }

    /// `/auth/introspection/standard` of a refresh token through
    /// `version`: the RFC 7662 answer (`responseContent`).
    pub async fn introspect_refresh_in(&self, version: Version, refresh_token: &str) -> Value {
        self.post(
            version,
            "/auth/introspection/standard",
            &serde_json::json!({
                "parameters": form(&[("token", refresh_token), ("token_type_hint", "refresh_token")]),
            }),
        )
        .await
        .ok("A146001")
        .content()
    }

    /// `/auth/token` refresh through `version`, with client credentials.
    pub async fn refresh_in(
        &self,
        version: Version,
        client_id: &str,
        secret: &str,
        refresh_token: &str,
    ) -> Reply {
        self.post(
            version,
            "/auth/token",
            &serde_json::json!({
                "clientId": client_id,
                "clientSecret": secret,
                "parameters": form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]),
            }),
        )
        .await
    }

    /// Emulator controls (`/_emulator/...`) with the v3 token.
    pub async fn control(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let body = body.map(Value::to_string).unwrap_or_default();
        self.send(
            method,
            path,
            Some(&self.bearer()),
            Some("application/json"),
            body,
        )
        .await
    }
}
