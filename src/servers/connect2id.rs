//! A Connect2id server's management APIs, as the sync reads and writes them.
//! The same type serves the primary (reads) and the secondary (writes with
//! the import semantics, DESIGN.md §3):
//!
//! - clients: `client_id` → `preferred_client_id`, `client_secret` (or a
//!   codec's `encoded_client_secret`) → `preferred_client_secret`;
//!   `client_id_issued_at`, `registration_access_token` and
//!   `registration_client_uri` dropped (the server regenerates them).
//!   A changed client is updated in place (`PUT` with the master token,
//!   `preferred_client_secret` when the secret changed): a delete may
//!   cascade to the client's authorizations and revoke its tokens on a real
//!   server. That needs a secondary that keeps a secret on update
//!   (`op.reg.alwaysRefreshClientSecretOnUpdate=false`) and, for a changed
//!   secret, takes `preferred_client_secret` on update (undocumented);
//!   where the answer shows another secret the client is replaced
//!   (`DELETE`, then `POST` with the preferred values) as the last resort.
//! - authorizations: `POST /authorizations?import=true` with the record as
//!   read (it replaces the record with the same subject and client).
//! - sessions: updated in place with `PUT` (never deleted and re-created: a
//!   delete sends back-channel logout notifications), without reading the
//!   secondary first; a `404` means the session is new there, and it is
//!   imported with `POST` and `SID-Key` = the SID up to its last `.`, so
//!   the secondary recomputes the same SID HMAC.
//!
//! Every other field passes through untouched. Session reads use
//! `skip_last_used_update=true` so that syncing does not extend anyone's
//! idle timer; a session the secondary last used earlier than the primary
//! is *touched* there (read without the flag), since no write can carry the
//! last-used time (a real server sets it to "now" on import).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::ApiError;
use crate::http::body::ProxyBody;
use crate::http::form;
use crate::model::{Dataset, Secret, Side, Tenant, TokenKind, idle, sid_key};

use crate::upstream::{self, Upstream};

/// Largest single-record answer read into memory (exports stream instead).
pub(crate) const MAX_RECORD_RESPONSE_BYTES: usize = 4 << 20;

/// Bearer tokens for the Connect2id management APIs (each API has its own
/// token configuration on the server; `spec/connect2id.md` §1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokens {
    /// `/clients` (the registration "master token").
    pub clients: Secret,
    /// `/authz-sessions`, `/direct-authz`, `/logout-sessions`.
    pub authz_sessions: Secret,
    /// `/authz-store`.
    pub authz_store: Secret,
    /// `/session-store`.
    pub session_store: Secret,
}

impl ApiTokens {
    /// The token of one API.
    pub fn of(&self, api: Api) -> &Secret {
        match api {
            Api::Clients => &self.clients,
            Api::AuthzSessions => &self.authz_sessions,
            Api::AuthzStore => &self.authz_store,
            Api::SessionStore => &self.session_store,
        }
    }

    /// The same token for every API.
    pub fn single(token: &str) -> Self {
        Self {
            clients: Secret::new(token),
            authz_sessions: Secret::new(token),
            authz_store: Secret::new(token),
            session_store: Secret::new(token),
        }
    }
}

/// The management APIs of one Connect2id server.
#[derive(Debug, Clone)]
pub struct Connect2id {
    upstream: Arc<Upstream>,
    tokens: ApiTokens,
    timeout: Duration,
    /// Clients replaced here by delete and create.
    replaced: Arc<std::sync::atomic::AtomicU64>,
    /// Which clients those were: a delete may have revoked their tokens
    /// here, which the key-parity probes must not blame on a key.
    replaced_ids: Arc<dashmap::DashSet<Box<str>>>,
    /// The issuer every call is routed to (`None`: the default one).
    tenant: Option<Arc<Tenant>>,
}

/// How a client reached this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWrite {
    /// It held an equal one.
    Unchanged,
    /// Imported (it had none).
    Created,
    /// Updated in place.
    Updated,
    /// Deleted and imported again: the update could not give it the
    /// secret. Its authorizations may be gone here (a cascading delete).
    Replaced,
}

/// The outcome of [`Connect2id::upsert_client`].
#[derive(Debug, Clone)]
pub struct ClientCopy {
    /// What it took.
    pub write: ClientWrite,
    /// The client as this server now holds it (with its own registration
    /// access token).
    pub copy: Value,
    /// Whether the secret differs from the one this server held before.
    pub secret_changed: bool,
}

/// A Connect2id management API: each has its own bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/clients`.
    Clients,
    /// `/authz-sessions`, `/direct-authz` and `/logout-sessions`.
    AuthzSessions,
    /// `/authz-store`.
    AuthzStore,
    /// `/session-store`.
    SessionStore,
}

/// The management APIs by path prefix under the base path.
const API_PREFIXES: [(&str, Api); 6] = [
    ("/clients", Api::Clients),
    ("/authz-sessions/", Api::AuthzSessions),
    ("/direct-authz/", Api::AuthzSessions),
    ("/logout-sessions/", Api::AuthzSessions),
    ("/authz-store/", Api::AuthzStore),
    ("/session-store/", Api::SessionStore),
];

impl Api {
    fn name(self) -> &'static str {
        match self {
            Self::Clients => "clients",
            Self::AuthzSessions => "authz-sessions",
            Self::AuthzStore => "authz-store",
            Self::SessionStore => "session-store",
        }
    }

    /// The management API a path under the base path belongs to.
    pub(crate) fn of_path(relative: &str) -> Option<Self> {
        API_PREFIXES
            .iter()
            .find(|(prefix, _)| {
                relative.starts_with(prefix) || relative == prefix.trim_end_matches('/')
            })
            .map(|(_, api)| *api)
    }
}

/// An answer, classified.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Connect2id {
    /// The management APIs of `upstream`, authenticated with `tokens`, each
    /// call bounded by `timeout`.
    pub fn new(upstream: Arc<Upstream>, tokens: ApiTokens, timeout: Duration) -> Self {
        Self {
            upstream,
            tokens,
            timeout,
            replaced: Arc::default(),
            replaced_ids: Arc::default(),
            tenant: None,
        }
    }

    /// The same APIs, every call routed to `tenant`'s issuer (with its
    /// `Tenant-ID` / `Issuer` headers).
    pub fn in_tenant(&self, tenant: &Tenant) -> Self {
        Self {
            tenant: Some(Arc::new(tenant.clone())),
            ..self.clone()
        }
    }

    /// Source or target.
    pub fn server(&self) -> Side {
        self.upstream.side
    }

    /// The upstream behind these APIs.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    fn token(&self, api: Api) -> &str {
        self.tokens.of(api).expose()
    }

    fn request(
        &self,
        api: Api,
        method: Method,
        endpoint: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Request<ProxyBody>, ApiError> {
        let uri =
            self.upstream.url.endpoint(endpoint).map_err(|err| {
                ApiError::Transient(format!("invalid endpoint {endpoint}: {err}"))
            })?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token(api)))
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                ProxyBody::full(Bytes::from(bytes))
            }
            None => ProxyBody::empty(),
        };
        builder
            .body(body)
            .map_err(|err| ApiError::Transient(format!("cannot build request: {err}")))
    }

    /// Adds the routing headers of this client's tenant, if any.
    fn route_to_tenant(&self, request: &mut Request<ProxyBody>) -> Result<(), ApiError> {
        let Some(tenant) = &self.tenant else {
            return Ok(());
        };
        for (name, value) in tenant.headers() {
            let value = http::HeaderValue::from_str(value).map_err(|_| ApiError::Rejected {
                server: self.server(),
                operation: "route a call to a tenant",
                status: 0,
                error: format!("the {name} header value is not a valid header value"),
            })?;
            request
                .headers_mut()
                .insert(http::HeaderName::from_static(name), value);
        }
        Ok(())
    }

    /// Sends a request and reads the (bounded) answer.
    async fn call(&self, api: Api, mut request: Request<ProxyBody>) -> Result<Answer, ApiError> {
        self.route_to_tenant(&mut request)?;
        let (status, body) = super::call(
            &self.upstream,
            api.name(),
            request,
            self.timeout,
            MAX_RECORD_RESPONSE_BYTES,
            |_| String::new(),
        )
        .await?;
        Ok(Answer { status, body })
    }

    fn rejected(&self, operation: &'static str, answer: &Answer) -> ApiError {
        ApiError::Rejected {
            server: self.server(),
            operation,
            status: answer.status.as_u16(),
            error: crate::telemetry::redact::error_body(&answer.body),
        }
    }

    fn parse(&self, operation: &'static str, body: &[u8]) -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|err| ApiError::malformed(self.server(), operation, &err.to_string()))
    }

    /// `GET` that maps 404 to `None`.
    async fn get_optional(
        &self,
        api: Api,
        operation: &'static str,
        request: Request<ProxyBody>,
    ) -> Result<Option<Value>, ApiError> {
        let answer = self.call(api, request).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => self.parse(operation, &answer.body).map(Some),
            _ => Err(self.rejected(operation, &answer)),
        }
    }

    /// A write that must succeed; its JSON answer (`null` when empty).
    async fn write_answer(
        &self,
        api: Api,
        operation: &'static str,
        request: Request<ProxyBody>,
    ) -> Result<Value, ApiError> {
        let answer = self.call(api, request).await?;
        if !answer.status.is_success() {
            return Err(self.rejected(operation, &answer));
        }
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        self.parse(operation, &answer.body)
    }

    /// A write that must succeed (or, for deletes, find nothing).
    async fn write(
        &self,
        api: Api,
        operation: &'static str,
        request: Request<ProxyBody>,
        missing_ok: bool,
    ) -> Result<(), ApiError> {
        let answer = self.call(api, request).await?;
        if answer.status.is_success() || (missing_ok && answer.status == StatusCode::NOT_FOUND) {
            Ok(())
        } else {
            Err(self.rejected(operation, &answer))
        }
    }

    // ---- clients ----

    /// One client, or `None`.
    pub async fn get_client(&self, client_id: &str) -> Result<Option<Value>, ApiError> {
        let request = self.request(Api::Clients, Method::GET, &client_path(client_id), None)?;
        self.get_optional(Api::Clients, "GET /clients/{id}", request)
            .await
    }

    /// Deletes a client (absent is fine).
    pub async fn delete_client(&self, client_id: &str) -> Result<(), ApiError> {
        let request = self.request(Api::Clients, Method::DELETE, &client_path(client_id), None)?;
        self.write(Api::Clients, "DELETE /clients/{id}", request, true)
            .await
    }

    /// Creates a client with the identifiers and secret of `record` (a
    /// record as read from another server); this server's answer (with the
    /// registration access token it minted).
    pub async fn import_client(&self, record: &Value) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(&client_import_form(record))
            .map_err(|err| ApiError::Transient(err.to_string()))?;
        let request = self.request(
            Api::Clients,
            Method::POST,
            "/clients",
            Some(("application/json", body)),
        )?;
        self.write_answer(Api::Clients, "POST /clients", request)
            .await
    }

    /// Updates a client in place (`PUT /clients/{id}` with the master
    /// token) to the metadata of `record`, asking for `record`'s secret with
    /// `preferred_client_secret` when it differs from `current_secret`;
    /// this server's answer. Whether the server keeps or takes the secret
    /// depends on its settings: the caller checks the answer.
    pub async fn update_client(
        &self,
        record: &Value,
        current_secret: Option<&str>,
    ) -> Result<Value, ApiError> {
        let client_id = record
            .get("client_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let body = serde_json::to_vec(&client_update_form(record, current_secret))
            .map_err(|err| ApiError::Transient(err.to_string()))?;
        let request = self.request(
            Api::Clients,
            Method::PUT,
            &client_path(client_id),
            Some(("application/json", body)),
        )?;
        self.write_answer(Api::Clients, "PUT /clients/{id}", request)
            .await
    }

    /// Makes this server hold `record` (read from the primary): nothing if
    /// it already holds an equal one, else an in-place update, and a
    /// replacement (delete, then create with the same id and secret) only
    /// when the update did not leave the client with `record`'s secret.
    /// A delete may cascade to the client's authorizations and revoke its
    /// tokens on a real server (domain-gaps Q1.2), so it is the last
    /// resort, counted in [`Connect2id::clients_replaced`].
    pub async fn upsert_client(&self, record: &Value) -> Result<ClientCopy, ApiError> {
        let client_id = record
            .get("client_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let existing = match self.get_client(client_id).await? {
            Some(existing) => existing,
            None => match self.import_client(record).await {
                Ok(copy) => {
                    return Ok(ClientCopy {
                        write: ClientWrite::Created,
                        copy,
                        secret_changed: false,
                    });
                }
                // Created there since the read (a change delivered twice,
                // at least once, after a store outage, synced by two
                // instances at once): the import refuses the taken id, and
                // the client is brought up to date like any existing one.
                Err(refused @ ApiError::Rejected { status: 400, .. }) => {
                    match self.get_client(client_id).await? {
                        Some(existing) => existing,
                        None => return Err(refused),
                    }
                }
                Err(other) => return Err(other),
            },
        };
        let secret_changed = client_secret(&existing) != client_secret(record);
        if Dataset::Clients.comparable(&existing) == Dataset::Clients.comparable(record) {
            return Ok(ClientCopy {
                write: ClientWrite::Unchanged,
                copy: existing,
                secret_changed,
            });
        }
        let reason = match self.update_client(record, client_secret(&existing)).await {
            Ok(updated) if client_secret(&updated) == client_secret(record) => {
                return Ok(ClientCopy {
                    write: ClientWrite::Updated,
                    copy: updated,
                    secret_changed,
                });
            }
            Ok(_) if secret_changed => {
                "it did not take the new secret on update (preferred_client_secret)"
            }
            Ok(_) => "it minted a new secret on update (op.reg.alwaysRefreshClientSecretOnUpdate)",
            Err(ApiError::Rejected { .. }) => "it refused the update",
            Err(other) => return Err(other),
        };
        tracing::warn!(
            server = %self.server(),
            client_id,
            reason,
            "replacing a client by delete and create: its authorizations may be deleted and its tokens revoked there"
        );
        self.delete_client(client_id).await?;
        let copy = self.import_client(record).await?;
        self.replaced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.replaced_ids.insert(client_id.into());
        Ok(ClientCopy {
            write: ClientWrite::Replaced,
            copy,
            secret_changed,
        })
    }

    /// How many clients this process replaced here by delete and create
    /// (see [`Connect2id::upsert_client`]).
    pub fn clients_replaced(&self) -> u64 {
        self.replaced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this process replaced `client_id` here by delete and
    /// create (its tokens issued before may have been revoked by it).
    pub(crate) fn client_was_replaced(&self, client_id: &str) -> bool {
        self.replaced_ids.contains(client_id)
    }

    // ---- authorizations ----

    /// The long-lived authorization of `subject` for `client_id`, or `None`.
    pub async fn get_authorization(
        &self,
        subject: &str,
        client_id: &str,
    ) -> Result<Option<Value>, ApiError> {
        let endpoint = authorization_endpoint(subject, client_id);
        let request = self.request(Api::AuthzStore, Method::GET, &endpoint, None)?;
        self.get_optional(
            Api::AuthzStore,
            "GET /authz-store/rest/v3/authorizations",
            request,
        )
        .await
    }

    /// Every long-lived authorization of a subject (or of a client).
    pub(crate) async fn list_authorizations(
        &self,
        selector: (&str, &str),
    ) -> Result<Vec<Value>, ApiError> {
        let endpoint = format!(
            "/authz-store/rest/v3/authorizations?{}",
            form::encode([selector])
        );
        let request = self.request(Api::AuthzStore, Method::GET, &endpoint, None)?;
        match self
            .get_optional(
                Api::AuthzStore,
                "GET /authz-store/rest/v3/authorizations",
                request,
            )
            .await?
        {
            None => Ok(Vec::new()),
            Some(Value::Array(records)) => Ok(records),
            Some(_) => Err(ApiError::Malformed {
                server: self.server(),
                operation: "GET /authz-store/rest/v3/authorizations",
                message: "expected a JSON array".to_owned(),
            }),
        }
    }

    /// Stores `record` as given (`import=true`: nothing minted).
    pub async fn import_authorization(&self, record: &Value) -> Result<(), ApiError> {
        let body =
            serde_json::to_vec(record).map_err(|err| ApiError::Transient(err.to_string()))?;
        let request = self.request(
            Api::AuthzStore,
            Method::POST,
            "/authz-store/rest/v3/authorizations?import=true",
            Some(("application/json", body)),
        )?;
        self.write(
            Api::AuthzStore,
            "POST /authz-store/rest/v3/authorizations?import=true",
            request,
            false,
        )
        .await
    }

    /// Deletes one authorization (absent is fine).
    pub(crate) async fn delete_authorization(
        &self,
        subject: &str,
        client_id: &str,
    ) -> Result<(), ApiError> {
        let endpoint = authorization_endpoint(subject, client_id);
        let request = self.request(Api::AuthzStore, Method::DELETE, &endpoint, None)?;
        self.write(
            Api::AuthzStore,
            "DELETE /authz-store/rest/v3/authorizations",
            request,
            true,
        )
        .await
    }

    /// Replays a revocation with the primary's timestamp.
    pub async fn revoke(
        &self,
        subject: Option<&str>,
        client_id: Option<&str>,
        actor: Option<&str>,
        timestamp: u64,
    ) -> Result<(), ApiError> {
        let timestamp = timestamp.to_string();
        let mut pairs = vec![("timestamp", timestamp.as_str())];
        pairs.extend(subject.map(|v| ("subject", v)));
        pairs.extend(client_id.map(|v| ("client_id", v)));
        pairs.extend(actor.map(|v| ("actor", v)));
        let body = form::encode(pairs).into_bytes();
        let request = self.request(
            Api::AuthzStore,
            Method::POST,
            "/authz-store/rest/v3/revocation?quiet=true",
            Some(("application/x-www-form-urlencoded", body)),
        )?;
        self.write(
            Api::AuthzStore,
            "POST /authz-store/rest/v3/revocation",
            request,
            true,
        )
        .await
    }

    /// The authorization record a token belongs to, or `None` (unknown,
    /// expired, or a transient authorization that has no record).
    pub async fn inspect(&self, token: &str, kind: TokenKind) -> Result<Option<Value>, ApiError> {
        let name = match kind {
            TokenKind::Refresh => "refresh_token",
            TokenKind::Access => "access_token",
        };
        let body = form::encode([(name, token)]).into_bytes();
        let request = self.request(
            Api::AuthzStore,
            Method::POST,
            "/authz-store/rest/v3/inspection",
            Some(("application/x-www-form-urlencoded", body)),
        )?;
        let answer = self.call(Api::AuthzStore, request).await?;
        match answer.status {
            // Unknown tokens: 404, or 400 on servers that call it invalid.
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
            status if status.is_success() => self
                .parse("POST /authz-store/rest/v3/inspection", &answer.body)
                .map(Some),
            _ => Err(self.rejected("POST /authz-store/rest/v3/inspection", &answer)),
        }
    }

    /// Introspects a token as its client (`/token/introspect` with the
    /// client's own `Authorization: Basic` value): the subject of an active
    /// token, `None` when inactive.
    pub(crate) async fn subject_via_introspection(
        &self,
        token: &str,
        client_auth: &str,
    ) -> Result<Option<String>, ApiError> {
        let uri = self
            .upstream
            .url
            .endpoint("/token/introspect")
            .map_err(|err| ApiError::Transient(format!("invalid endpoint: {err}")))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::AUTHORIZATION, client_auth)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(ProxyBody::full(Bytes::from(form::encode([(
                "token", token,
            )]))))
            .map_err(|err| ApiError::Transient(format!("cannot build request: {err}")))?;
        let answer = match self.call(Api::AuthzStore, request).await {
            // The client's credentials, not ours: a retry will not help.
            Err(ApiError::Credentials { status, .. }) => {
                return Err(ApiError::Rejected {
                    server: self.server(),
                    operation: "POST /token/introspect",
                    status,
                    error: "the client's credentials were refused (secret rotated since?)"
                        .to_owned(),
                });
            }
            other => other?,
        };
        if !answer.status.is_success() {
            return Err(self.rejected("POST /token/introspect", &answer));
        }
        let value = self.parse("POST /token/introspect", &answer.body)?;
        if value.get("active").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        Ok(value.get("sub").and_then(Value::as_str).map(str::to_owned))
    }

    /// Replays a client's token revocation here (`POST /token/revoke` with
    /// the client's own form and `Authorization`): revoking mints nothing.
    /// A refusal of the client's credentials (not ours) is final.
    pub async fn replay_revocation(
        &self,
        form: &str,
        authorization: Option<&str>,
    ) -> Result<(), ApiError> {
        let operation = "POST /token/revoke (replayed)";
        let uri = self
            .upstream
            .url
            .endpoint("/token/revoke")
            .map_err(|err| ApiError::Transient(format!("invalid endpoint: {err}")))?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(authorization) = authorization {
            let mut value =
                http::HeaderValue::from_str(authorization).map_err(|_| ApiError::Rejected {
                    server: self.server(),
                    operation,
                    status: 0,
                    error: "the client's Authorization header is not a valid header value"
                        .to_owned(),
                })?;
            value.set_sensitive(true);
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = builder
            .body(ProxyBody::full(Bytes::from(form.to_owned())))
            .map_err(|err| ApiError::Transient(format!("cannot build request: {err}")))?;
        let answer = match self.call(Api::AuthzStore, request).await {
            Err(ApiError::Credentials { status, .. }) => {
                return Err(ApiError::Rejected {
                    server: self.server(),
                    operation,
                    status,
                    error: "the client's credentials were refused (secret rotated since?)"
                        .to_owned(),
                });
            }
            other => other?,
        };
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(self.rejected(operation, &answer))
        }
    }

    // ---- sessions ----

    /// One session by SID, without bumping its idle timer.
    pub async fn get_session(&self, sid: &str) -> Result<Option<Value>, ApiError> {
        let mut request = self.request(
            Api::SessionStore,
            Method::GET,
            "/session-store/rest/v2/sessions?skip_last_used_update=true",
            None,
        )?;
        insert_sid(&mut request, "sid", sid)?;
        self.get_optional(
            Api::SessionStore,
            "GET /session-store/rest/v2/sessions",
            request,
        )
        .await
    }

    /// Every session of a subject, keyed by SID.
    pub(crate) async fn subject_sessions(
        &self,
        subject: &str,
    ) -> Result<BTreeMap<String, Value>, ApiError> {
        let endpoint = format!(
            "/session-store/rest/v2/sessions?{}",
            form::encode([("subject", subject), ("skip_last_used_update", "true")])
        );
        let request = self.request(Api::SessionStore, Method::GET, &endpoint, None)?;
        match self
            .get_optional(
                Api::SessionStore,
                "GET /session-store/rest/v2/sessions?subject",
                request,
            )
            .await?
        {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => Ok(map.into_iter().collect()),
            Some(Value::Array(items)) => Ok(items
                .into_iter()
                .filter_map(|item| {
                    let sid = item.get("sid")?.as_str()?.to_owned();
                    Some((sid, item))
                })
                .collect()),
            Some(_) => Err(ApiError::Malformed {
                server: self.server(),
                operation: "GET /session-store/rest/v2/sessions?subject",
                message: "expected a JSON object keyed by SID".to_owned(),
            }),
        }
    }

    /// Uses a session the way a session read by the login page does
    /// (`GET` without `skip_last_used_update`): the server sets its
    /// last-used time to now (RN 15.3). Whether it was found.
    pub async fn touch_session(&self, sid: &str) -> Result<bool, ApiError> {
        let mut request = self.request(
            Api::SessionStore,
            Method::GET,
            "/session-store/rest/v2/sessions",
            None,
        )?;
        insert_sid(&mut request, "sid", sid)?;
        Ok(self
            .get_optional(
                Api::SessionStore,
                "GET /session-store/rest/v2/sessions (touch)",
                request,
            )
            .await?
            .is_some())
    }

    /// Makes this server hold `session` under `sid`: update if it exists,
    /// else import with `SID-Key`. A session this server last used earlier
    /// than `session` says (beyond [`idle::LAST_USED_TOLERANCE`]) is touched
    /// too: an import or update cannot set the last-used time, and the
    /// copy must not idle out before the original.
    pub async fn upsert_session(&self, sid: &str, session: &Value) -> Result<(), ApiError> {
        let Some(existing) = self.get_session(sid).await? else {
            return self.import_session(sid, session).await;
        };
        let behind = idle::behind(session, &existing, idle::LAST_USED_TOLERANCE);
        if Dataset::Sessions.comparable(&existing) == Dataset::Sessions.comparable(session) {
            if behind {
                self.touch_session(sid).await?;
            }
            return Ok(());
        }
        let body =
            serde_json::to_vec(session).map_err(|err| ApiError::Transient(err.to_string()))?;
        let mut request = self.request(
            Api::SessionStore,
            Method::PUT,
            "/session-store/rest/v2/sessions",
            Some(("application/json", body)),
        )?;
        insert_sid(&mut request, "sid", sid)?;
        self.write(
            Api::SessionStore,
            "PUT /session-store/rest/v2/sessions",
            request,
            false,
        )
        .await?;
        // Whether an update counts as a use is undocumented: make sure.
        if behind {
            self.touch_session(sid).await?;
        }
        Ok(())
    }

    /// Imports a session under `sid` (`POST` with `SID-Key`).
    pub(crate) async fn import_session(&self, sid: &str, session: &Value) -> Result<(), ApiError> {
        let body =
            serde_json::to_vec(session).map_err(|err| ApiError::Transient(err.to_string()))?;
        let mut request = self.request(
            Api::SessionStore,
            Method::POST,
            "/session-store/rest/v2/sessions",
            Some(("application/json", body)),
        )?;
        insert_sid(&mut request, "sid-key", sid_key(sid))?;
        self.write(
            Api::SessionStore,
            "POST /session-store/rest/v2/sessions",
            request,
            false,
        )
        .await
    }

    /// Ends a session (absent is fine).
    pub(crate) async fn delete_session(&self, sid: &str) -> Result<(), ApiError> {
        let mut request = self.request(
            Api::SessionStore,
            Method::DELETE,
            "/session-store/rest/v2/sessions",
            None,
        )?;
        insert_sid(&mut request, "sid", sid)?;
        self.write(
            Api::SessionStore,
            "DELETE /session-store/rest/v2/sessions",
            request,
            true,
        )
        .await
    }

    // ---- exports ----

    /// Starts streaming a dataset export: `GET /clients` (array),
    /// `GET /authz-store/rest/v3/authorizations` (array) or
    /// `GET /session-store/rest/v2/sessions` (object keyed by SID).
    pub async fn export(&self, dataset: Dataset) -> Result<Incoming, ApiError> {
        let (api, endpoint) = match dataset {
            Dataset::Clients => (Api::Clients, "/clients"),
            // An Authlete target's tokens come from the authorization records.
            Dataset::Authorizations | Dataset::Tokens => {
                (Api::AuthzStore, "/authz-store/rest/v3/authorizations")
            }
            Dataset::Sessions => (Api::SessionStore, "/session-store/rest/v2/sessions"),
        };
        let mut request = self.request(api, Method::GET, endpoint, None)?;
        self.route_to_tenant(&mut request)?;
        // Exports of millions of records take long: only the head has a
        // deadline here; the body is read by the caller at its own pace.
        let response = self
            .upstream
            .send(request, self.timeout)
            .await
            .map_err(|err: upstream::Error| ApiError::Transient(err.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let body = crate::http::read_body(response.into_body(), 64 << 10)
            .await
            .unwrap_or_default();
        let answer = Answer { status, body };
        match status.as_u16() {
            401 | 403 => Err(ApiError::Credentials {
                server: self.server(),
                api: api.name(),
                status: status.as_u16(),
            }),
            code if code >= 500 || code == 429 => Err(ApiError::Transient(format!(
                "{} answered {code}",
                self.server()
            ))),
            _ => Err(self.rejected("export", &answer)),
        }
    }
}

fn client_path(client_id: &str) -> String {
    format!("/clients/{}", form::encode_segment(client_id))
}

fn insert_sid(
    request: &mut Request<ProxyBody>,
    name: &'static str,
    value: &str,
) -> Result<(), ApiError> {
    let value = http::HeaderValue::from_str(value)
        .map_err(|_| ApiError::Transient("session id is not a valid header value".to_owned()))?;
    request.headers_mut().insert(name, value);
    Ok(())
}

/// A client's secret as a record shows it: `client_secret`, else a secret
/// codec's `encoded_client_secret`.
pub fn client_secret(record: &Value) -> Option<&str> {
    record
        .get("client_secret")
        .or_else(|| record.get("encoded_client_secret"))
        .and_then(Value::as_str)
}

/// A client's registration access token as a record shows it.
pub fn registration_access_token(record: &Value) -> Option<&str> {
    record
        .get("registration_access_token")
        .and_then(Value::as_str)
}

/// A client record in the form `PUT /clients/{id}` takes (RFC 7592: the
/// whole metadata with `client_id`; what each server generates itself
/// dropped), asking for the record's secret with `preferred_client_secret`
/// when it is not `current_secret` already.
pub fn client_update_form(record: &Value, current_secret: Option<&str>) -> Value {
    let Value::Object(fields) = record else {
        return record.clone();
    };
    let mut out = Map::with_capacity(fields.len());
    for (name, value) in fields {
        match name.as_str() {
            "client_secret"
            | "encoded_client_secret"
            | "client_id_issued_at"
            | "client_secret_expires_at"
            | "registration_access_token"
            | "registration_client_uri" => {}
            _ => {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    if let Some(secret) = client_secret(record).filter(|secret| Some(*secret) != current_secret) {
        out.insert("preferred_client_secret".to_owned(), secret.into());
    }
    Value::Object(out)
}

/// A client record in the form `POST /clients` imports (migration guide,
/// step 1).
pub(crate) fn client_import_form(record: &Value) -> Value {
    let Value::Object(fields) = record else {
        return record.clone();
    };
    let mut out = Map::with_capacity(fields.len());
    for (name, value) in fields {
        match name.as_str() {
            "client_id" => {
                out.insert("preferred_client_id".to_owned(), value.clone());
            }
            "client_secret" => {
                out.insert("preferred_client_secret".to_owned(), value.clone());
            }
            // A secret codec exports the encoded form, which the target's
            // codec accepts on import (spec §2.4).
            "encoded_client_secret" => {
                if !fields.contains_key("client_secret") {
                    out.insert("preferred_client_secret".to_owned(), value.clone());
                }
            }
            "client_id_issued_at" | "registration_access_token" | "registration_client_uri" => {}
            _ => {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// The path of `subject`'s long-lived authorization at `client_id`.
fn authorization_endpoint(subject: &str, client_id: &str) -> String {
    format!(
        "/authz-store/rest/v3/authorizations?{}",
        form::encode([("subject", subject), ("client_id", client_id)])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_import_renames_credentials_and_drops_regenerated_fields() {
        let record = json!({
            "client_id": "s6BhdRkqt3",
            "client_secret": "ahL7AhthchiNg6beAo5HeijeThae3deiChab7ajiVuip2eodesoBie0ufohtiiK4",
            "client_id_issued_at": 1504187117,
            "client_secret_expires_at": 0,
            "registration_client_uri": "https://c2id.example.com/clients/s6BhdRkqt3",
            "registration_access_token": "7ykDWJO481cGp66GddfsNMwwp2TptkTUH1XdgAFx9Yk.Kg",
            "redirect_uris": ["https://client.example.org/cb"],
            "data": {"tier": "gold"},
        });
        assert_eq!(
            client_import_form(&record),
            json!({
                "preferred_client_id": "s6BhdRkqt3",
                "preferred_client_secret": "ahL7AhthchiNg6beAo5HeijeThae3deiChab7ajiVuip2eodesoBie0ufohtiiK4",
                "client_secret_expires_at": 0,
                "redirect_uris": ["https://client.example.org/cb"],
                "data": {"tier": "gold"},
            })
        );
    }

    #[test]
    fn an_update_asks_for_the_secret_only_when_it_changed() {
        let record = json!({
            "client_id": "s6BhdRkqt3",
            "client_secret": "new-secret",
            "client_id_issued_at": 1504187117,
            "client_secret_expires_at": 0,
            "registration_access_token": "7ykDWJO481cGp66GddfsNMwwp2TptkTUH1XdgAFx9Yk.Kg",
            "registration_client_uri": "https://c2id.example.com/clients/s6BhdRkqt3",
            "client_name": "Shop",
        });
        assert_eq!(
            client_update_form(&record, Some("old-secret")),
            json!({"client_id": "s6BhdRkqt3", "client_name": "Shop", "preferred_client_secret": "new-secret"})
        );
        assert_eq!(
            client_update_form(&record, Some("new-secret")),
            json!({"client_id": "s6BhdRkqt3", "client_name": "Shop"})
        );
        assert_eq!(
            client_secret(&json!({"encoded_client_secret": "h"})),
            Some("h")
        );
    }

    #[test]
    fn encoded_secrets_are_imported_as_preferred_secret() {
        let record = json!({"client_id": "a", "encoded_client_secret": "$2a$10$hash"});
        assert_eq!(
            client_import_form(&record),
            json!({"preferred_client_id": "a", "preferred_client_secret": "$2a$10$hash"})
        );
    }

    #[test]
    fn comparison_ignores_regenerated_fields_only() {
        let a = json!({"client_id": "a", "client_secret": "s", "client_id_issued_at": 1});
        let b = json!({"client_id": "a", "client_secret": "s", "client_id_issued_at": 2});
        let c = json!({"client_id": "a", "client_secret": "t", "client_id_issued_at": 2});
        assert_eq!(
            Dataset::Clients.comparable(&a),
            Dataset::Clients.comparable(&b)
        );
        assert_ne!(
            Dataset::Clients.comparable(&a),
            Dataset::Clients.comparable(&c)
        );
        let s1 = json!({"sub": "alice", "last_used": 1});
        let s2 = json!({"sub": "alice", "last_used": 2});
        assert_eq!(
            Dataset::Sessions.comparable(&s1),
            Dataset::Sessions.comparable(&s2)
        );
    }
}
