//! A scripted actor that drives an OpenID provider through its public and
//! management APIs, the way production traffic does: an admin tool
//! registering clients, the login page backend running authorization
//! sessions, relying parties exchanging codes, refreshing, revoking and
//! logging out. The demo's traffic, the integration tests and the
//! benchmarks all use it, pointed at the proxy (or straight at a server).
//!
//! It speaks to whatever base URL it is given (e.g.
//! `http://127.0.0.1:8443/c2id`), so the same script runs against the
//! source, the target or the proxy in front of either.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::http::form;

/// The redirect URI the driver registers and uses.
pub const REDIRECT_URI: &str = "https://rp.example.com/callback";

/// Deadline for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request never got an answer.
    #[error("{operation}: {message}")]
    Transport {
        /// The step.
        operation: &'static str,
        /// What failed.
        message: String,
    },
    /// The server answered with an unexpected status.
    #[error("{operation}: HTTP {status}: {error}")]
    Status {
        /// The step.
        operation: &'static str,
        /// The status.
        status: u16,
        /// The OAuth error code, if any (never the body: it may hold tokens).
        error: String,
    },
    /// The answer lacked something the flow needs.
    #[error("{operation}: {message}")]
    Protocol {
        /// The step.
        operation: &'static str,
        /// What was missing.
        message: String,
    },
}

impl Error {
    /// The HTTP status, for status errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A registered client.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    /// `client_id`.
    pub id: String,
    /// `client_secret`.
    pub secret: String,
    /// The whole registration response.
    pub record: Value,
}

/// What the user consents to.
#[derive(Debug, Clone, Copy)]
pub struct Consent {
    /// Persist the authorization (a long-lived authorization record).
    pub long_lived: bool,
    /// Rotate the refresh token on every use.
    pub rotate: bool,
    /// Self-contained (JWT) access tokens, else identifiers.
    pub jwt_access_token: bool,
}

impl Default for Consent {
    fn default() -> Self {
        Self {
            long_lived: true,
            rotate: true,
            jwt_access_token: true,
        }
    }
}

/// A completed login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The subject session id (the SID cookie).
    pub sid: String,
    /// The authorization code.
    pub code: String,
}

/// A token response.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// `access_token`.
    pub access_token: String,
    /// `refresh_token`, when issued.
    pub refresh_token: Option<String>,
    /// The whole response.
    pub response: Value,
}

/// The actor.
#[derive(Debug, Clone)]
pub struct Driver {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn json(&self, operation: &'static str) -> Result<Value, Error> {
        serde_json::from_slice(&self.body).map_err(|err| Error::Protocol {
            operation,
            message: format!("answer is not JSON: {err}"),
        })
    }
}

impl Driver {
    /// A driver for the provider at `base` (its issuer base URL), using
    /// `management_token` for the management APIs.
    pub fn new(base: impl Into<String>, management_token: impl Into<String>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build_http();
        Self {
            client,
            base: base.into().trim_end_matches('/').to_owned(),
            token: management_token.into(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Answer, Error> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let body = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::default(),
        };
        let request = builder.body(body).map_err(|err| Error::Protocol {
            operation,
            message: err.to_string(),
        })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| Error::Transport {
                    operation,
                    message: crate::telemetry::error_chain(&err),
                })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| Error::Transport {
                    operation,
                    message: err.to_string(),
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::Transport {
                operation,
                message: format!("no answer within {REQUEST_TIMEOUT:?}"),
            })?
    }

    fn bearer(&self) -> (&'static str, String) {
        ("authorization", format!("Bearer {}", self.token))
    }

    fn basic(client: &RegisteredClient) -> (&'static str, String) {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form::encode_component(&client.id),
            form::encode_component(&client.secret)
        ));
        ("authorization", format!("Basic {credentials}"))
    }

    fn expect(answer: Answer, operation: &'static str, ok: &[StatusCode]) -> Result<Answer, Error> {
        if ok.contains(&answer.status) {
            return Ok(answer);
        }
        let error = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        Err(Error::Status {
            operation,
            status: answer.status.as_u16(),
            error,
        })
    }

    async fn json_call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Value,
        ok: &[StatusCode],
    ) -> Result<Value, Error> {
        self.json_call_as(operation, method, path, self.bearer(), body, ok)
            .await
    }

    /// [`Driver::json_call`] with another `authorization` than the
    /// management token (a client's registration access token).
    async fn json_call_as(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        authorization: (&'static str, String),
        body: Value,
        ok: &[StatusCode],
    ) -> Result<Value, Error> {
        let answer = self
            .send(
                operation,
                method,
                path,
                &[authorization],
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await?;
        Self::expect(answer, operation, ok)?.json(operation)
    }

    /// GETs a JSON record; `Ok(None)` when the answer is one of `absent`
    /// (the record is gone, or the credentials may no longer read it).
    async fn read(
        &self,
        operation: &'static str,
        path: &str,
        headers: &[(&str, String)],
        absent: &[StatusCode],
    ) -> Result<Option<Value>, Error> {
        let answer = self
            .send(operation, Method::GET, path, headers, None)
            .await?;
        if absent.contains(&answer.status) {
            return Ok(None);
        }
        Self::expect(answer, operation, &[StatusCode::OK])?
            .json(operation)
            .map(Some)
    }

    // ---- clients (an admin tool) ----

    /// Registers a confidential web client for the code and refresh grants.
    pub async fn register_client(&self, name: &str) -> Result<RegisteredClient, Error> {
        self.register_client_scoped(name, "openid email profile")
            .await
    }

    /// Registers a confidential web client for the code and refresh grants
    /// that may ask for the scope values in `scope`.
    pub async fn register_client_scoped(
        &self,
        name: &str,
        scope: &str,
    ) -> Result<RegisteredClient, Error> {
        let record = self
            .json_call(
                "register client",
                Method::POST,
                "/clients",
                json!({
                    "client_name": name,
                    "redirect_uris": [REDIRECT_URI],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                    "scope": scope,
                }),
                &[StatusCode::OK, StatusCode::CREATED],
            )
            .await?;
        client_of(record, "register client")
    }

    /// Registers a client with exactly these metadata; the registration
    /// response (a public client has no secret, so no [`RegisteredClient`]).
    pub async fn register_client_metadata(&self, metadata: Value) -> Result<Value, Error> {
        self.json_call(
            "register client",
            Method::POST,
            "/clients",
            metadata,
            &[StatusCode::OK, StatusCode::CREATED],
        )
        .await
    }

    /// Updates a client's metadata (the server rotates its secret).
    pub async fn update_client(
        &self,
        client: &RegisteredClient,
        name: &str,
    ) -> Result<RegisteredClient, Error> {
        let body = renamed(client, name, &[]);
        let record = self
            .json_call(
                "update client",
                Method::PUT,
                &format!("/clients/{}", form::encode_segment(&client.id)),
                body,
                &[StatusCode::OK],
            )
            .await?;
        client_of(record, "update client")
    }

    /// Deletes a client.
    pub async fn delete_client(&self, client_id: &str) -> Result<(), Error> {
        let answer = self
            .send(
                "delete client",
                Method::DELETE,
                &format!("/clients/{}", form::encode_segment(client_id)),
                &[self.bearer()],
                None,
            )
            .await?;
        Self::expect(
            answer,
            "delete client",
            &[StatusCode::NO_CONTENT, StatusCode::OK],
        )
        .map(|_| ())
    }

    /// Reads a client (management API).
    pub async fn get_client(&self, client_id: &str) -> Result<Option<Value>, Error> {
        self.read(
            "read client",
            &format!("/clients/{}", form::encode_segment(client_id)),
            &[self.bearer()],
            &[StatusCode::NOT_FOUND],
        )
        .await
    }

    /// Reads its own registration as a self-managing client does (RFC
    /// 7592): with its registration access token, not the master token.
    /// `Ok(None)` when the token is refused (401) or the client is gone.
    pub async fn read_own_registration(
        &self,
        client_id: &str,
        registration_token: &str,
    ) -> Result<Option<Value>, Error> {
        self.read(
            "read own registration",
            &format!("/clients/{}", form::encode_segment(client_id)),
            &[("authorization", format!("Bearer {registration_token}"))],
            &[StatusCode::UNAUTHORIZED, StatusCode::NOT_FOUND],
        )
        .await
    }

    /// Updates its own registration with its registration access token
    /// (RFC 7592): the answer carries its new credentials.
    pub async fn update_own_registration(
        &self,
        client: &RegisteredClient,
        registration_token: &str,
        name: &str,
    ) -> Result<RegisteredClient, Error> {
        // A client may not name its own secret (a privileged field).
        let body = renamed(client, name, &["client_secret"]);
        let record = self
            .json_call_as(
                "update own registration",
                Method::PUT,
                &format!("/clients/{}", form::encode_segment(&client.id)),
                ("authorization", format!("Bearer {registration_token}")),
                body,
                &[StatusCode::OK],
            )
            .await?;
        client_of(record, "update own registration")
    }

    // ---- logins (the login page backend) ----

    /// A whole login of `subject` at `client_id`: authorization session,
    /// subject authentication (creates the session), consent. Returns the
    /// session id and the code.
    pub async fn login(
        &self,
        client_id: &str,
        subject: &str,
        consent: Consent,
    ) -> Result<Login, Error> {
        self.login_scope(client_id, subject, "openid email", consent)
            .await
    }

    /// [`Driver::login`] asking for (and consenting to) `scope`.
    pub async fn login_scope(
        &self,
        client_id: &str,
        subject: &str,
        scope: &str,
        consent: Consent,
    ) -> Result<Login, Error> {
        let query = form::encode([
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT_URI),
            ("scope", scope),
            ("state", "demo-state"),
            ("nonce", "demo-nonce"),
        ]);
        let prompt = self
            .json_call(
                "start authorization",
                Method::POST,
                "/authz-sessions/rest/v3",
                json!({ "query": query }),
                &[StatusCode::OK],
            )
            .await?;
        let authz_sid = string(&prompt, "sid", "start authorization")?;
        let path = format!("/authz-sessions/rest/v3/{authz_sid}");
        let consent_prompt = self
            .json_call(
                "authenticate",
                Method::PUT,
                &path,
                json!({ "sub": subject, "acr": "https://loa.c2id.com/basic", "amr": ["pwd"] }),
                &[StatusCode::OK],
            )
            .await?;
        let sid = consent_prompt
            .get("sub_session")
            .and_then(|s| s.get("sid"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Protocol {
                operation: "authenticate",
                message: "no sub_session.sid in the consent prompt".to_owned(),
            })?;
        let encoding = if consent.jwt_access_token {
            "SELF_CONTAINED"
        } else {
            "IDENTIFIER"
        };
        let response = self
            .json_call(
                "consent",
                Method::PUT,
                &path,
                json!({
                    "scope": scope.split_whitespace().collect::<Vec<_>>(),
                    "long_lived": consent.long_lived,
                    "refresh_token": { "issue": true, "rotate": consent.rotate },
                    "access_token": { "encoding": encoding, "lifetime": 600 },
                }),
                &[StatusCode::OK],
            )
            .await?;
        let uri = response
            .get("parameters")
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let params = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let pairs = form::parse(params);
        let code = form::first(&pairs, "code")
            .map(str::to_owned)
            .ok_or_else(|| Error::Protocol {
                operation: "consent",
                message: "no code in the redirect URI".to_owned(),
            })?;
        Ok(Login { sid, code })
    }

    /// A returning user: the login page starts an authorization session
    /// with the SID from the browser's cookie (`sub_sid`), and the server
    /// finds the session (single sign-on). Returns the prompt (`consent`
    /// when the session was found, `auth` when it was not).
    pub async fn sso_start(&self, client_id: &str, sid: &str) -> Result<Value, Error> {
        let query = form::encode([
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid email"),
            ("state", "demo-state"),
        ]);
        self.json_call(
            "start authorization with a session",
            Method::POST,
            "/authz-sessions/rest/v3",
            json!({ "query": query, "sub_sid": sid }),
            &[StatusCode::OK],
        )
        .await
    }

    /// Pushes an authorization request (`POST /par`, RFC 9126) as the
    /// client; returns its `request_uri`.
    pub async fn push_authorization_request(
        &self,
        client: &RegisteredClient,
    ) -> Result<String, Error> {
        let answer = self
            .token_call(
                "push authorization request",
                "/par",
                client,
                &[
                    ("response_type", "code"),
                    ("client_id", client.id.as_str()),
                    ("redirect_uri", REDIRECT_URI),
                    ("scope", "openid email"),
                    ("state", "demo-state"),
                ],
            )
            .await?;
        let response = Self::expect(
            answer,
            "push authorization request",
            &[StatusCode::CREATED, StatusCode::OK],
        )?
        .json("push authorization request")?;
        string(&response, "request_uri", "push authorization request")
    }

    /// The login page starts an authorization session from a pushed
    /// request: only `client_id` and `request_uri` in the query. Returns
    /// the prompt.
    pub async fn start_pushed(&self, client_id: &str, request_uri: &str) -> Result<Value, Error> {
        let query = form::encode([("client_id", client_id), ("request_uri", request_uri)]);
        self.json_call(
            "start pushed authorization",
            Method::POST,
            "/authz-sessions/rest/v3",
            json!({ "query": query }),
            &[StatusCode::OK],
        )
        .await
    }

    /// Ends a subject session through the logout API (start, confirm).
    pub async fn logout(&self, sid: &str) -> Result<(), Error> {
        let started = self
            .json_call(
                "start logout",
                Method::POST,
                "/logout-sessions/rest/v1",
                json!({ "query": "", "sub_sid": sid }),
                &[StatusCode::OK],
            )
            .await?;
        if started.get("type").and_then(Value::as_str) != Some("confirm") {
            return Ok(());
        }
        let logout_sid = string(&started, "sid", "start logout")?;
        self.json_call(
            "confirm logout",
            Method::PUT,
            &format!("/logout-sessions/rest/v1/{logout_sid}"),
            json!({ "confirm_logout": true }),
            &[StatusCode::OK],
        )
        .await
        .map(|_| ())
    }

    /// Reads a session (management API, without bumping its idle timer).
    pub async fn get_session(&self, sid: &str) -> Result<Option<Value>, Error> {
        self.read(
            "read session",
            "/session-store/rest/v2/sessions?skip_last_used_update=true",
            &[self.bearer(), ("sid", sid.to_owned())],
            &[StatusCode::NOT_FOUND],
        )
        .await
    }

    /// Reads a session the way the login page does, which counts as a use
    /// of it (bumps its idle timer).
    pub async fn use_session(&self, sid: &str) -> Result<Option<Value>, Error> {
        self.read(
            "use session",
            "/session-store/rest/v2/sessions",
            &[self.bearer(), ("sid", sid.to_owned())],
            &[StatusCode::NOT_FOUND],
        )
        .await
    }

    /// Reads a long-lived authorization (management API).
    pub async fn get_authorization(
        &self,
        subject: &str,
        client_id: &str,
    ) -> Result<Option<Value>, Error> {
        let path = format!(
            "/authz-store/rest/v3/authorizations?{}",
            form::encode([("subject", subject), ("client_id", client_id)])
        );
        self.read(
            "read authorization",
            &path,
            &[self.bearer()],
            &[StatusCode::NOT_FOUND],
        )
        .await
    }

    // ---- tokens (relying parties) ----

    async fn token_call(
        &self,
        operation: &'static str,
        path: &str,
        client: &RegisteredClient,
        pairs: &[(&str, &str)],
    ) -> Result<Answer, Error> {
        self.send(
            operation,
            Method::POST,
            path,
            &[Self::basic(client)],
            Some((
                "application/x-www-form-urlencoded",
                form::encode(pairs.iter().copied()).into_bytes(),
            )),
        )
        .await
    }

    /// A login of `subject` at `client` and the exchange of its code: the
    /// tokens a relying party ends up holding.
    pub async fn login_tokens(
        &self,
        client: &RegisteredClient,
        subject: &str,
        consent: Consent,
    ) -> Result<Tokens, Error> {
        let login = self.login(&client.id, subject, consent).await?;
        self.exchange_code(client, &login.code).await
    }

    /// Exchanges an authorization code.
    pub async fn exchange_code(
        &self,
        client: &RegisteredClient,
        code: &str,
    ) -> Result<Tokens, Error> {
        let answer = self
            .token_call(
                "exchange code",
                "/token",
                client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", REDIRECT_URI),
                ],
            )
            .await?;
        tokens_of(
            Self::expect(answer, "exchange code", &[StatusCode::OK])?,
            "exchange code",
        )
    }

    /// Uses a refresh token.
    pub async fn refresh(
        &self,
        client: &RegisteredClient,
        refresh_token: &str,
    ) -> Result<Tokens, Error> {
        let answer = self
            .token_call(
                "refresh",
                "/token",
                client,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
            )
            .await?;
        tokens_of(
            Self::expect(answer, "refresh", &[StatusCode::OK])?,
            "refresh",
        )
    }

    /// Revokes just one refresh token (`token_only=true`, Connect2id
    /// 19.9+), not the whole authorization.
    pub async fn revoke_token_only(
        &self,
        client: &RegisteredClient,
        token: &str,
    ) -> Result<(), Error> {
        self.revoke_with(
            client,
            &[
                ("token", token),
                ("token_type_hint", "refresh_token"),
                ("token_only", "true"),
            ],
        )
        .await
    }

    /// Revokes a token (RFC 7009).
    pub async fn revoke(
        &self,
        client: &RegisteredClient,
        token: &str,
        hint: &str,
    ) -> Result<(), Error> {
        self.revoke_with(client, &[("token", token), ("token_type_hint", hint)])
            .await
    }

    async fn revoke_with(
        &self,
        client: &RegisteredClient,
        pairs: &[(&str, &str)],
    ) -> Result<(), Error> {
        let answer = self
            .token_call("revoke", "/token/revoke", client, pairs)
            .await?;
        Self::expect(answer, "revoke", &[StatusCode::OK]).map(|_| ())
    }

    /// Introspects a token as the client.
    pub async fn introspect(&self, client: &RegisteredClient, token: &str) -> Result<Value, Error> {
        let answer = self
            .token_call(
                "introspect",
                "/token/introspect",
                client,
                &[("token", token)],
            )
            .await?;
        Self::expect(answer, "introspect", &[StatusCode::OK])?.json("introspect")
    }

    /// The public JWK set.
    pub async fn jwks(&self) -> Result<Value, Error> {
        let answer = self
            .send("read JWK set", Method::GET, "/jwks.json", &[], None)
            .await?;
        Self::expect(answer, "read JWK set", &[StatusCode::OK])?.json("read JWK set")
    }
}

fn string(value: &Value, name: &str, operation: &'static str) -> Result<String, Error> {
    value
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Protocol {
            operation,
            message: format!("no {name} in the answer"),
        })
}

fn client_of(record: Value, operation: &'static str) -> Result<RegisteredClient, Error> {
    Ok(RegisteredClient {
        id: string(&record, "client_id", operation)?,
        secret: string(&record, "client_secret", operation)?,
        record,
    })
}

fn tokens_of(answer: Answer, operation: &'static str) -> Result<Tokens, Error> {
    let response = answer.json(operation)?;
    Ok(Tokens {
        access_token: string(&response, "access_token", operation)?,
        refresh_token: response
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_owned),
        response,
    })
}

/// `client`'s registration as an update body that renames it: without the
/// fields the server sets itself (and without `also`).
fn renamed(client: &RegisteredClient, name: &str, also: &[&str]) -> Value {
    let mut body = client.record.clone();
    if let Some(fields) = body.as_object_mut() {
        for regenerated in [
            "client_id_issued_at",
            "registration_access_token",
            "registration_client_uri",
            "client_secret_expires_at",
        ]
        .iter()
        .chain(also)
        {
            fields.remove(*regenerated);
        }
    }
    body["client_name"] = name.into();
    body
}
