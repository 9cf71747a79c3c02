//! An Authlete service as the target (`spec/authlete.md`, the second seed
//! document, DESIGN.md §3).
//!
//! Authlete keeps existing tokens valid only if it is told their exact
//! values: every access and refresh token the source issues is created in
//! Authlete with `/auth/token/create` and the observed values; a rotation
//! creates the new pair, then deletes the old one; a refresh that keeps its
//! refresh token (no rotation) creates the new access token with the kept
//! refresh token in place of the pair that held it, so a refresh token
//! issued before the proxy came reaches Authlete at its first use; a
//! revocation removes the pair. A value Authlete already holds ("already exists") counts as
//! success, so replays after a crash are harmless.
//!
//! Clients are created with `clientIdAlias` = the Connect2id `client_id`
//! (v2: with the alias enabled) and the source's secret set with
//! `/client/secret/update`; every Connect2id field with an Authlete
//! counterpart is mapped, the rest reported by name, and an update reads
//! the client, overlays the mapped fields and writes it back, so settings
//! made at Authlete survive (`clients.rs`). A secret Authlete cannot hold
//! (a hashed one, or one outside its rules) is a permanent failure:
//! dead-lettered with the reason and what to do.
//!
//! v2 (`/api/...`, HTTP Basic with the service API key and secret, numeric
//! client ids) and v3 (`/api/{serviceId}/...`, Bearer token, client ids or
//! aliases) are both spoken.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Request, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub(crate) mod clients;

use super::ApiError;
use crate::http::body::ProxyBody;
use crate::model::{BaseUrl, Secret};
use crate::upstream::Upstream;

/// Largest Authlete answer read.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The pause before a token batch's status is asked again after the first
/// look (which comes at once); it doubles up to [`BATCH_POLL_MAX`]. A
/// batch of 500 takes a real service seconds (spec §5.2: asynchronous),
/// and every look counts against its rate limit like any other call, so
/// a tight loop (the 20 ms it once was, `research/domain-gaps.md` 3.18)
/// would spend the migration's budget on asking.
const BATCH_POLL_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between two looks at a token batch's status.
const BATCH_POLL_MAX: Duration = Duration::from_secs(4);

/// A token to create in Authlete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    /// Authlete grant type (`AUTHORIZATION_CODE`, `PASSWORD`, ...).
    pub grant_type: String,
    /// The Connect2id `client_id` (the Authlete alias).
    pub client_id: String,
    /// The subject (absent for client credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The access token value (absent: Authlete generates one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Seconds the access token has left (0 = the service default).
    #[serde(default)]
    pub access_token_duration: u64,
    /// The refresh token value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Seconds the refresh token has left (0 = the service default).
    #[serde(default)]
    pub refresh_token_duration: u64,
}

/// Maps a Connect2id / OAuth grant type to Authlete's name. `REFRESH_TOKEN`
/// is not accepted by `/auth/token/create`: a refresh keeps the grant of
/// its family, which the proxy does not see, so it is recorded as
/// `AUTHORIZATION_CODE` (the usual origin of refresh tokens).
pub(crate) fn authlete_grant(grant_type: &str) -> &'static str {
    // The names are a client's `grantTypes` (one table); "implicit" is the
    // access token of an implicit or hybrid flow: Authlete gives such a
    // pair no refresh token, as the flow does not.
    match grant_type {
        "refresh_token" => "AUTHORIZATION_CODE",
        other => clients::grant_name(other).unwrap_or("AUTHORIZATION_CODE"),
    }
}

/// What a client upsert did.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientOutcome {
    /// Source fields with no Authlete equivalent (names only).
    pub unmapped: Vec<String>,
}

/// Token information from Authlete introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Subject.
    pub subject: Option<String>,
    /// The client id or alias Authlete reports.
    pub client_id: String,
    /// Scopes.
    pub scopes: Vec<String>,
}

/// Service settings relevant to the migration, checked at start-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceCheck {
    /// Problems found (empty: fine).
    pub warnings: Vec<String>,
}

/// How handover authenticates to Authlete.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// v2: HTTP Basic with the service API key and secret.
    V2 {
        /// The service API key.
        key: Secret,
        /// The service API secret.
        secret: Secret,
    },
    /// v3: a service (or organization) access token.
    V3 {
        /// The bearer token.
        token: Secret,
    },
}

/// The v2 service *owner's* API key and secret: what v2's
/// `/api/service/get/{apiKey}` takes (v2 OpenAPI `ServiceOwnerCredentials`).
#[derive(Debug, Clone)]
pub struct Owner {
    /// The service owner's API key.
    pub key: Secret,
    /// The service owner's API secret.
    pub secret: Secret,
}

/// An Authlete target's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// 2 or 3.
    pub api_version: u8,
    /// The service id in v3 paths.
    pub service_id: Option<u64>,
    /// Credentials.
    pub credentials: Credentials,
    /// The new authorization server (built on Authlete) that takes the
    /// traffic after a cutover; no cutover without it.
    pub new_primary: Option<BaseUrl>,
    /// CA certificates for the new authorization server.
    pub new_primary_ca_file: Option<std::path::PathBuf>,
    /// Lifetime given to mirrored refresh tokens whose remaining lifetime is
    /// unknown or unbounded on the source.
    pub refresh_token_duration: Duration,
    /// Refresh tokens sampled by verify.
    pub token_sample: usize,
    /// A cap on the requests per second sent to the Authlete API (`None`:
    /// only the adaptive limit and `Retry-After` pace them).
    pub rate_limit: Option<f64>,
    /// v2: the service owner's credentials, for the start-up check of the
    /// service settings (v2 reads a service only with them).
    pub owner: Option<Owner>,
}

/// Default lifetime of a mirrored refresh token whose source lifetime is
/// unbounded: 90 days, Authlete's own sweep of unused tokens (spec §5.3)
/// makes longer pointless.
pub const DEFAULT_REFRESH_DURATION: Duration = Duration::from_secs(90 * 86_400);
/// Refresh tokens verify samples on an Authlete target.
pub const DEFAULT_TOKEN_SAMPLE: usize = 100;

/// Clients read per page of `client/get/list` when the alias map is
/// (re)built.
const CLIENT_PAGE: usize = 100;
/// A miss in the alias map rebuilds it from `client/get/list` at most this
/// often: another instance (a fleet) may have created the client since.
const IDS_RELOAD_AFTER: Duration = Duration::from_secs(5);

/// The Authlete API client.
#[derive(Debug)]
pub struct Authlete {
    upstream: Arc<Upstream>,
    config: Config,
    timeout: Duration,
    /// Alias → numeric client id, built from `client/get/list` (the
    /// documented way to learn ids; `client/get`, `update` and `delete`
    /// take the numeric id) and kept up to date by creates.
    ids: DashMap<String, u64>,
    /// When the alias map was last built from the list (`None`: never).
    ids_loaded: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Authlete {
    /// A client of the Authlete service behind `upstream`.
    pub fn new(upstream: Arc<Upstream>, config: Config, timeout: Duration) -> Self {
        if let Some(rate) = config.rate_limit {
            upstream.feedback().set_rate_limit(rate);
        }
        Self {
            upstream,
            config,
            timeout,
            ids: DashMap::new(),
            ids_loaded: tokio::sync::Mutex::new(None),
        }
    }

    /// The upstream of the Authlete API.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn path(&self, api: &str) -> String {
        match self.config.service_id {
            Some(service) if self.config.api_version >= 3 => format!("/api/{service}{api}"),
            _ => format!("/api{api}"),
        }
    }

    fn authorization(&self) -> String {
        match &self.config.credentials {
            Credentials::V2 { key, secret } => basic(key, secret),
            Credentials::V3 { token } => format!("Bearer {}", token.expose()),
        }
    }

    /// Calls an API; returns the status and the envelope.
    async fn call(
        &self,
        method: Method,
        api: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), ApiError> {
        self.call_as(method, api, body, self.authorization()).await
    }

    /// [`call`](Self::call), an answer other than 2xx being `what`'s
    /// refusal.
    async fn call_ok(
        &self,
        method: Method,
        api: &str,
        body: Option<Value>,
        what: &'static str,
    ) -> Result<Value, ApiError> {
        let (status, answer) = self.call(method, api, body).await?;
        if !status.is_success() {
            return Err(Self::rejected(what, status, &answer));
        }
        Ok(answer)
    }

    /// [`call`](Self::call) with other credentials.
    async fn call_as(
        &self,
        method: Method,
        api: &str,
        body: Option<Value>,
        authorization: String,
    ) -> Result<(StatusCode, Value), ApiError> {
        let uri = self
            .upstream
            .url
            .uri(format!("{}{}", self.upstream.url.base_path, self.path(api)))
            .map_err(|err| ApiError::Transient(format!("invalid Authlete path {api}: {err}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, authorization)
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                ProxyBody::full(Bytes::from(value.to_string()))
            }
            None => ProxyBody::empty(),
        };
        let request = builder
            .body(body)
            .map_err(|err| ApiError::Transient(format!("cannot build request: {err}")))?;
        let (status, bytes) = super::call(
            &self.upstream,
            "authlete",
            request,
            self.timeout,
            MAX_ANSWER_BYTES,
            envelope_message,
        )
        .await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|err| {
                ApiError::malformed(crate::model::Side::Target, "authlete", &err.to_string())
            })?
        };
        Ok((status, value))
    }

    /// Success, or already gone (a delete or revoke that was applied
    /// before, or whose object the source never had here).
    fn done_or_gone(
        operation: &'static str,
        status: StatusCode,
        envelope: &Value,
    ) -> Result<(), ApiError> {
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(Self::rejected(operation, status, envelope))
        }
    }

    fn rejected(operation: &'static str, status: StatusCode, envelope: &Value) -> ApiError {
        ApiError::Rejected {
            server: crate::model::Side::Target,
            operation,
            status: status.as_u16(),
            error: crate::telemetry::redact::error_json(envelope),
        }
    }

    // ---- service ----

    /// Reads the service: v3 `GET /api/{serviceId}/service/get` with the
    /// access token; v2 `GET /api/service/get/{apiKey}` with the service
    /// owner's credentials (v2 OpenAPI), `None` when none are configured.
    async fn read_service(&self) -> Result<Option<Value>, ApiError> {
        let (status, service) = match (&self.config.credentials, &self.config.owner) {
            (Credentials::V3 { .. }, _) => self.call(Method::GET, "/service/get", None).await?,
            (Credentials::V2 { key, .. }, Some(owner)) => {
                let api = format!(
                    "/service/get/{}",
                    crate::http::form::encode_segment(key.expose())
                );
                self.call_as(Method::GET, &api, None, basic(&owner.key, &owner.secret))
                    .await?
            }
            (Credentials::V2 { .. }, None) => return Ok(None),
        };
        if !status.is_success() {
            return Err(Self::rejected("service/get", status, &service));
        }
        Ok(Some(service))
    }

    /// Checks the settings the migration depends on, of the service and of
    /// every client (`singleAccessTokenPerSubject` exists on both), and
    /// builds the alias map on the way.
    pub async fn check_service(&self) -> Result<ServiceCheck, ApiError> {
        let mut warnings = Vec::new();
        match self.read_service().await? {
            Some(service) => warnings.extend(service_warnings(&service, self.config.api_version)),
            None => warnings.push(
                "the service settings were not checked: Authlete v2 reads a service (/api/service/get/{apiKey}) only with the service owner's credentials; set target.owner_api_key_env and target.owner_api_secret_env".to_owned(),
            ),
        }
        let single = self.load_client_ids(true).await?;
        if !single.is_empty() {
            warnings.push(format!(
                "singleAccessTokenPerSubject is on for {} client(s) ({}): creating a mirrored token would invalidate the subject's other tokens at that client; turn it off on those clients during the migration",
                single.len(),
                single.join(", ")
            ));
        }
        Ok(ServiceCheck { warnings })
    }

    /// (Re)builds the alias map from `client/get/list` (`always`, or when
    /// it was last built more than [`IDS_RELOAD_AFTER`] ago); returns the
    /// aliases of the clients with their own `singleAccessTokenPerSubject`
    /// on (empty when the map was fresh enough to keep).
    async fn load_client_ids(&self, always: bool) -> Result<Vec<String>, ApiError> {
        let mut loaded = self.ids_loaded.lock().await;
        if !always && loaded.is_some_and(|at| at.elapsed() < IDS_RELOAD_AFTER) {
            return Ok(Vec::new());
        }
        let mut seen = std::collections::HashSet::new();
        let mut single = Vec::new();
        let mut start = 0;
        loop {
            let (clients, total) = self.clients_page(start, start + CLIENT_PAGE).await?;
            for client in &clients {
                let Some(id) = client.get("clientId").and_then(Value::as_u64) else {
                    continue;
                };
                let alias = client
                    .get("clientIdAlias")
                    .and_then(Value::as_str)
                    .map_or_else(|| id.to_string(), str::to_owned);
                if client
                    .get("singleAccessTokenPerSubject")
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    single.push(alias.clone());
                }
                self.ids.insert(alias.clone(), id);
                seen.insert(alias);
            }
            start += clients.len();
            if clients.is_empty() || start as u64 >= total {
                break;
            }
        }
        // Clients deleted since (by another instance, or by hand).
        self.ids.retain(|alias, _| seen.contains(alias));
        *loaded = Some(tokio::time::Instant::now());
        Ok(single)
    }

    // ---- clients ----

    /// The numeric id of the client with `alias`, and the client, if it
    /// exists. The id comes from the alias map (built from
    /// `client/get/list`, rebuilt on a miss at most every
    /// [`IDS_RELOAD_AFTER`]): Authlete documents `client/get/{clientId}`
    /// with the numeric id, and no alias lookup.
    async fn client_id_of(&self, alias: &str) -> Result<Option<(u64, Value)>, ApiError> {
        for attempt in 0..2 {
            let id = match self.ids.get(alias).map(|id| *id) {
                Some(id) => id,
                None if attempt == 0 => {
                    self.load_client_ids(false).await?;
                    match self.ids.get(alias).map(|id| *id) {
                        Some(id) => id,
                        None => return Ok(None),
                    }
                }
                None => return Ok(None),
            };
            let (status, client) = self
                .call(Method::GET, &format!("/client/get/{id}"), None)
                .await?;
            if status.is_success()
                && client.get("clientIdAlias").and_then(Value::as_str) == Some(alias)
            {
                return Ok(Some((id, client)));
            }
            if status.is_success()
                || status == StatusCode::NOT_FOUND
                || status == StatusCode::BAD_REQUEST
            {
                // Deleted, or its alias changed: the map is stale.
                self.ids.remove(alias);
                continue;
            }
            return Err(Self::rejected("client/get", status, &client));
        }
        Ok(None)
    }

    /// The client with `alias` as Authlete holds it.
    pub async fn client(&self, alias: &str) -> Result<Option<Value>, ApiError> {
        Ok(self.client_id_of(alias).await?.map(|(_, client)| client))
    }

    /// Creates or updates the client of a Connect2id record, then sets its
    /// secret.
    pub(crate) async fn upsert_client(&self, record: &Value) -> Result<ClientOutcome, ApiError> {
        let alias = record
            .get("client_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Malformed {
                server: crate::model::Side::Source,
                operation: "client record",
                message: "no client_id".to_owned(),
            })?
            .to_owned();
        let mapped = storable(&alias, record, self.config.api_version)?;
        let secret = mapped.secret.as_deref();
        let unmapped = mapped.unmapped.clone();
        let existing = self.client_id_of(&alias).await?;
        let id = match existing {
            Some((id, current)) => {
                // Read, overlay, write: Authlete's update replaces the
                // client, so what the mapping does not manage is sent back
                // as Authlete holds it.
                if !clients::differing(&current, &mapped).is_empty() {
                    let mut body = clients::overlay(&current, &mapped);
                    body["clientId"] = id.into();
                    self.call_ok(
                        Method::POST,
                        &format!("/client/update/{id}"),
                        Some(body),
                        "client/update",
                    )
                    .await?;
                }
                let current_secret = current.get("clientSecret").and_then(Value::as_str);
                if secret.is_none() || current_secret == secret {
                    return Ok(ClientOutcome { unmapped });
                }
                id
            }
            None => {
                let body = Value::Object(mapped.fields.clone());
                let (status, created) = self
                    .call(Method::POST, "/client/create", Some(body))
                    .await?;
                if !status.is_success() {
                    // Possibly created meanwhile by another instance (the
                    // alias is taken): learn its id and try again.
                    self.load_client_ids(false).await?;
                    if self.ids.contains_key(&alias) {
                        return Err(ApiError::Transient(format!(
                            "client {alias} appeared in Authlete while being created"
                        )));
                    }
                    return Err(Self::rejected("client/create", status, &created));
                }
                let id = created
                    .get("clientId")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| ApiError::Malformed {
                        server: crate::model::Side::Target,
                        operation: "client/create",
                        message: "no clientId in the answer".to_owned(),
                    })?;
                self.ids.insert(alias.clone(), id);
                id
            }
        };
        if let Some(secret) = secret {
            let identifier = if self.config.api_version >= 3 {
                alias.clone()
            } else {
                id.to_string()
            };
            self.call_ok(
                Method::POST,
                &format!(
                    "/client/secret/update/{}",
                    crate::http::form::encode_segment(&identifier)
                ),
                Some(json!({ "clientSecret": secret })),
                "client/secret/update",
            )
            .await?;
        }
        Ok(ClientOutcome { unmapped })
    }

    /// Deletes the client with `alias` (absent is fine). Authlete deletes
    /// its tokens with it.
    pub async fn delete_client(&self, alias: &str) -> Result<(), ApiError> {
        let Some((id, _)) = self.client_id_of(alias).await? else {
            return Ok(());
        };
        let (status, answer) = self
            .call(Method::DELETE, &format!("/client/delete/{id}"), None)
            .await?;
        self.ids.remove(alias);
        Self::done_or_gone("client/delete", status, &answer)
    }

    /// Every client, a page at a time (for verify).
    pub(crate) async fn clients_page(
        &self,
        start: usize,
        end: usize,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let page = self
            .call_ok(
                Method::GET,
                &format!("/client/get/list?start={start}&end={end}"),
                None,
                "client/get/list",
            )
            .await?;
        let clients = page
            .get("clients")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let total = page
            .get("totalCount")
            .and_then(Value::as_u64)
            .unwrap_or(clients.len() as u64);
        Ok((clients, total))
    }

    // ---- tokens ----

    /// The `/auth/token/create` body of a spec.
    fn create_body(&self, spec: &TokenSpec) -> Result<Value, ApiError> {
        let mut body = Map::new();
        body.insert("grantType".into(), spec.grant_type.clone().into());
        if self.config.api_version >= 3 {
            body.insert("clientIdentifier".into(), spec.client_id.clone().into());
        } else {
            // v2 takes only the numeric id.
            let id = self.ids.get(&spec.client_id).map(|id| *id).ok_or_else(|| {
                ApiError::Transient(format!(
                    "client {} is not known in Authlete yet",
                    spec.client_id
                ))
            })?;
            body.insert("clientId".into(), id.into());
        }
        body.insert("clientIdAliasUsed".into(), true.into());
        if let Some(subject) = &spec.subject {
            body.insert("subject".into(), subject.clone().into());
        }
        body.insert("scopes".into(), spec.scopes.clone().into());
        if let Some(access) = &spec.access_token {
            body.insert("accessToken".into(), access.clone().into());
        }
        body.insert(
            "accessTokenDuration".into(),
            spec.access_token_duration.into(),
        );
        if let Some(refresh) = &spec.refresh_token {
            body.insert("refreshToken".into(), refresh.clone().into());
        }
        body.insert(
            "refreshTokenDuration".into(),
            spec.refresh_token_duration.into(),
        );
        body.insert(
            "properties".into(),
            json!([{ "key": "migrated_from", "value": "connect2id", "hidden": true }]),
        );
        Ok(Value::Object(body))
    }

    async fn ensure_client_id(&self, alias: &str) -> Result<(), ApiError> {
        if self.config.api_version < 3 && !self.ids.contains_key(alias) {
            self.client_id_of(alias).await?;
        }
        Ok(())
    }

    /// Creates a token with the observed values. Values Authlete already
    /// holds count as success (a replay).
    ///
    /// Authlete documents that a value it holds is refused, not how (spec
    /// §7 q1; a real service may even answer 5xx): a failed create is
    /// never matched against a guessed result code. Instead Authlete is
    /// asked, by introspection, whether it holds every value of the spec;
    /// then the create was a replay, otherwise the failure stands.
    pub async fn create_token(&self, spec: &TokenSpec) -> Result<(), ApiError> {
        self.ensure_client_id(&spec.client_id).await?;
        let body = self.create_body(spec)?;
        let failure = match self
            .call(Method::POST, "/auth/token/create", Some(body))
            .await
        {
            Ok((status, answer))
                if status.is_success()
                    && answer
                        .get("action")
                        .and_then(Value::as_str)
                        .is_none_or(|a| a == "OK") =>
            {
                return Ok(());
            }
            Ok((status, answer)) => Self::rejected("auth/token/create", status, &answer),
            // A 5xx or 429 may hide a duplicate as well.
            Err(err @ ApiError::Transient(_)) => err,
            Err(err) => return Err(err),
        };
        if self.holds(spec).await {
            return Ok(());
        }
        Err(failure)
    }

    /// Whether Authlete holds every token value of `spec`, active, for
    /// the spec's client (false when it cannot say).
    async fn holds(&self, spec: &TokenSpec) -> bool {
        let values = [
            (spec.access_token.as_deref(), false),
            (spec.refresh_token.as_deref(), true),
        ];
        let mut any = false;
        for (value, refresh) in values {
            let Some(value) = value else { continue };
            any = true;
            match self.introspect(value, refresh).await {
                Ok(Some(info)) if self.same_client(&info.client_id, &spec.client_id) => {}
                _ => return false,
            }
        }
        any
    }

    /// Whether the client id introspection reports (the alias, or the
    /// numeric id) is the client with `alias`.
    fn same_client(&self, reported: &str, alias: &str) -> bool {
        reported == alias
            || self
                .ids
                .get(alias)
                .is_some_and(|id| id.to_string() == reported)
    }

    /// Creates many tokens: the v3 batch API (asynchronous; polled), else
    /// one by one. A failed batch (it may be partly applied) is retried
    /// item by item, where duplicates count as success.
    pub(crate) async fn create_tokens(&self, specs: &[TokenSpec]) -> Result<(), ApiError> {
        if specs.is_empty() {
            return Ok(());
        }
        if self.config.api_version >= 3 && specs.iter().all(|s| s.access_token.is_some()) {
            match self.create_batch(specs).await {
                Ok(true) => return Ok(()),
                Ok(false) => tracing::debug!(
                    tokens = specs.len(),
                    "token batch failed; creating one by one"
                ),
                Err(err) => {
                    tracing::debug!(error = %err, "token batch unavailable; creating one by one")
                }
            }
        }
        for spec in specs {
            self.create_token(spec).await?;
        }
        Ok(())
    }

    /// Runs one batch; `Ok(true)` when it succeeded entirely, `Ok(false)`
    /// when it failed or no outcome was known by the deadline (the caller
    /// then creates one by one, duplicates counting as success).
    ///
    /// The status is looked at right away (a small batch may be done
    /// already), then after pauses of [`BATCH_POLL_FIRST`] doubling up to
    /// [`BATCH_POLL_MAX`]: a real service takes seconds for a large batch,
    /// and each look counts against its rate limit like any other call.
    ///
    /// A transient failure (429, 5xx, no answer) of the submission or of a
    /// look is asked again after the next pause, not taken for the
    /// batch's failure: the shared call path already holds every later
    /// call until a `Retry-After` has passed, as for any other API, and
    /// falling back to one-by-one creation would send hundreds of calls to
    /// a service that just asked for fewer. Only the deadline ends the
    /// wait. A re-submitted batch that had been applied fails on its
    /// duplicates, which the one-by-one fallback then confirms.
    async fn create_batch(&self, specs: &[TokenSpec]) -> Result<bool, ApiError> {
        let bodies: Vec<Value> = specs
            .iter()
            .map(|s| self.create_body(s))
            .collect::<Result<_, _>>()?;
        let batch = Value::Array(bodies);
        let deadline = tokio::time::Instant::now() + self.timeout.max(Duration::from_secs(30));
        let mut pause = BATCH_POLL_FIRST;
        let mut request_id: Option<String> = None;
        loop {
            let answer = match &request_id {
                None => {
                    self.call_ok(
                        Method::POST,
                        "/auth/token/create/batch",
                        Some(batch.clone()),
                        "auth/token/create/batch",
                    )
                    .await
                }
                Some(id) => {
                    self.call_ok(
                        Method::GET,
                        &format!("/auth/token/create/batch/status/{id}"),
                        None,
                        "auth/token/create/batch/status",
                    )
                    .await
                }
            };
            match answer {
                Ok(answer) if request_id.is_none() => {
                    let Some(id) = answer.get("requestId").and_then(Value::as_str) else {
                        return Ok(false);
                    };
                    request_id = Some(id.to_owned());
                    // The first look comes at once.
                    continue;
                }
                Ok(answer) => match answer
                    .get("status")
                    .and_then(|s| s.get("result"))
                    .and_then(Value::as_str)
                {
                    Some("SUCCEEDED") => return Ok(true),
                    Some("FAILED") => return Ok(false),
                    // Absent or null: still running.
                    _ => {}
                },
                Err(err @ ApiError::Transient(_)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(err);
                    }
                    tracing::debug!(
                        error = %err,
                        submitted = request_id.is_some(),
                        "token batch call failed; asking again"
                    );
                }
                Err(err) => return Err(err),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(BATCH_POLL_MAX);
        }
    }

    /// Removes the pair holding a refresh token (absent is fine).
    pub(crate) async fn revoke_refresh_token(&self, refresh_token: &str) -> Result<(), ApiError> {
        self.revoke(json!({ "refreshTokenIdentifier": refresh_token }))
            .await
    }

    /// Removes the pair holding an access token (absent is fine).
    pub(crate) async fn revoke_access_token(&self, access_token: &str) -> Result<(), ApiError> {
        self.revoke(json!({ "accessTokenIdentifier": access_token }))
            .await
    }

    /// Removes every token of a subject at a client (Connect2id's
    /// revocation semantics), or of a subject, or of a client.
    pub(crate) async fn revoke_grant(
        &self,
        client_id: Option<&str>,
        subject: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut body = Map::new();
        if let Some(client) = client_id {
            body.insert("clientIdentifier".into(), client.into());
        }
        if let Some(subject) = subject {
            body.insert("subject".into(), subject.into());
        }
        if body.is_empty() {
            return Ok(());
        }
        self.revoke(Value::Object(body)).await
    }

    async fn revoke(&self, body: Value) -> Result<(), ApiError> {
        let (status, answer) = self
            .call(Method::POST, "/auth/token/revoke", Some(body))
            .await?;
        Self::done_or_gone("auth/token/revoke", status, &answer)
    }

    /// Introspects a token (`refresh` picks the hint) through the standard
    /// introspection backend; `None` when inactive.
    pub async fn introspect(
        &self,
        token: &str,
        refresh: bool,
    ) -> Result<Option<TokenInfo>, ApiError> {
        let hint = if refresh {
            "refresh_token"
        } else {
            "access_token"
        };
        let parameters = crate::http::form::encode([("token", token), ("token_type_hint", hint)]);
        let answer = self
            .call_ok(
                Method::POST,
                "/auth/introspection/standard",
                Some(json!({ "parameters": parameters })),
                "auth/introspection/standard",
            )
            .await?;
        let content: Value = answer
            .get("responseContent")
            .and_then(Value::as_str)
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or(Value::Null);
        if content.get("active").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        Ok(Some(TokenInfo {
            subject: content
                .get("sub")
                .and_then(Value::as_str)
                .map(str::to_owned),
            client_id: content
                .get("client_id")
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                .unwrap_or_default(),
            scopes: content
                .get("scope")
                .and_then(Value::as_str)
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        }))
    }
}

/// Why the backfill did not copy the refresh token of an exported
/// authorization record (counted per reason in the backfill report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCopied {
    /// The authorization issues no refresh token (`irt` false, no
    /// refresh-token material): nothing to copy.
    NoRefreshToken,
    /// The record holds refresh-token material (`rts`) but no token value
    /// (`rft`): Connect2id rebuilds the value on demand and the export did
    /// not carry it. Only lazy capture and the refresh fallback reach it.
    ValueNotExported,
    /// The refresh token expired.
    Expired,
    /// The record names no subject or client.
    Unnamed,
}

impl NotCopied {
    /// The report's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRefreshToken => "no_refresh_token",
            Self::ValueNotExported => "value_not_exported",
            Self::Expired => "expired",
            Self::Unnamed => "no_subject_or_client",
        }
    }
}

/// The token of a Connect2id long-lived authorization record, for the
/// backfill: its exported refresh token (`rft`) with the remaining
/// lifetime (`rtl` counts from `rti`; 0 means unbounded), or why there is
/// none to copy.
///
/// The exported value is *unconfirmed*: Connect2id may rebuild it from the
/// record's material (`rts`) instead of echoing what the client holds (RN
/// 14.0, authz-store/203; always with randomised encryption), so a copy
/// proves nothing about the client's token. Verify's live sample does.
pub fn refresh_token_of_record(record: &Value, config: &Config) -> Result<TokenSpec, NotCopied> {
    let (Some(subject), Some(client)) = (
        record.get("sub").and_then(Value::as_str),
        record.get("cid").and_then(Value::as_str),
    ) else {
        return Err(NotCopied::Unnamed);
    };
    let Some(refresh) = record.get("rft").and_then(Value::as_str) else {
        let material = record.get("rts").and_then(Value::as_str).is_some()
            || record.get("irt").and_then(Value::as_bool) == Some(true);
        return Err(if material {
            NotCopied::ValueNotExported
        } else {
            NotCopied::NoRefreshToken
        });
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let duration = remaining_refresh_lifetime(record, now)
        .ok_or(NotCopied::Expired)?
        .unwrap_or(config.refresh_token_duration.as_secs());
    Ok(TokenSpec {
        grant_type: "AUTHORIZATION_CODE".to_owned(),
        client_id: client.to_owned(),
        subject: Some(subject.to_owned()),
        scopes: record
            .get("scp")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        access_token: None,
        access_token_duration: 0,
        refresh_token: Some(refresh.to_owned()),
        refresh_token_duration: duration,
    })
}

/// [`refresh_token_of_record`], when there is one.
pub fn spec_of_record(record: &Value, config: &Config) -> Option<TokenSpec> {
    refresh_token_of_record(record, config).ok()
}

/// Seconds the refresh token of a Connect2id long-lived authorization
/// record has left at `now` (epoch seconds): `rtl` counts from `rti` (else
/// `iat`). `Some(None)`: unbounded (`rtl` 0 or absent); `None`: expired.
pub fn remaining_refresh_lifetime(record: &Value, now: u64) -> Option<Option<u64>> {
    let lifetime = record.get("rtl").and_then(Value::as_u64).unwrap_or(0);
    if lifetime == 0 {
        return Some(None);
    }
    let issued = record
        .get("rti")
        .or_else(|| record.get("iat"))
        .and_then(Value::as_u64)
        .unwrap_or(now);
    let expires = issued.saturating_add(lifetime);
    (expires > now).then(|| Some(expires - now))
}

fn basic(key: &Secret, secret: &Secret) -> String {
    use base64::Engine as _;
    let pair = format!("{}:{}", key.expose(), secret.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// What a service's settings mean for the migration.
fn service_warnings(service: &Value, api_version: u8) -> Vec<String> {
    let mut warnings = Vec::new();
    if service
        .get("singleAccessTokenPerSubject")
        .and_then(Value::as_bool)
        == Some(true)
    {
        warnings.push(
            "singleAccessTokenPerSubject is on: creating a mirrored token would invalidate the subject's other tokens; turn it off during the migration".to_owned(),
        );
    }
    if api_version == 2
        && service.get("clientIdAliasEnabled").and_then(Value::as_bool) == Some(false)
    {
        warnings.push("clientIdAliasEnabled is off on the service: Connect2id client ids (aliases) will not work".to_owned());
    }
    let grants: Vec<&str> = service
        .get("supportedGrantTypes")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !grants.is_empty() && !grants.contains(&"REFRESH_TOKEN") {
        warnings.push(
            "the service does not support REFRESH_TOKEN: mirrored refresh tokens would be dropped"
                .to_owned(),
        );
    }
    warnings
}

fn envelope_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("resultMessage")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Whether Authlete can hold the client of a Connect2id record, and its
/// mapping if so. A refusal is permanent (dead-lettered), with a reason
/// that says why and what to do.
pub(crate) fn storable(
    alias: &str,
    record: &Value,
    api_version: u8,
) -> Result<clients::Mapped, ApiError> {
    clients::map(record, api_version).map_err(|refusal| ApiError::Unmigratable {
        what: format!("client {alias}"),
        reason: refusal.reason(alias),
    })
}

/// The fields verify compares between a Connect2id client and its Authlete
/// copy: the mapped ones, and the secret.
pub(crate) fn client_drift(record: &Value, authlete: &Value, api_version: u8) -> Option<String> {
    let mapped = match clients::map(record, api_version) {
        Ok(mapped) => mapped,
        Err(refusal) => return Some(format!("cannot be copied: {refusal:?}")),
    };
    let differing = clients::differing(authlete, &mapped);
    if !differing.is_empty() {
        return Some(format!("differs in {differing:?}"));
    }
    if mapped.secret.is_some()
        && authlete.get("clientSecret").and_then(Value::as_str) != mapped.secret.as_deref()
    {
        return Some("secret differs".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_settings_that_break_the_migration_are_warned_about() {
        let fine = json!({"singleAccessTokenPerSubject": false, "clientIdAliasEnabled": true, "supportedGrantTypes": ["AUTHORIZATION_CODE", "REFRESH_TOKEN"]});
        assert!(service_warnings(&fine, 2).is_empty());
        let single = json!({"singleAccessTokenPerSubject": true});
        assert!(service_warnings(&single, 3)[0].contains("singleAccessTokenPerSubject"));
        let no_alias = json!({"clientIdAliasEnabled": false});
        assert_eq!(service_warnings(&no_alias, 2).len(), 1);
        assert!(service_warnings(&no_alias, 3).is_empty());
        let no_refresh = json!({"supportedGrantTypes": ["AUTHORIZATION_CODE"]});
        assert!(service_warnings(&no_refresh, 3)[0].contains("REFRESH_TOKEN"));
    }

    #[test]
    fn grants_map_to_authlete_names() {
        assert_eq!(authlete_grant("authorization_code"), "AUTHORIZATION_CODE");
        assert_eq!(authlete_grant("refresh_token"), "AUTHORIZATION_CODE");
        assert_eq!(authlete_grant("client_credentials"), "CLIENT_CREDENTIALS");
        assert_eq!(
            authlete_grant("urn:ietf:params:oauth:grant-type:token-exchange"),
            "TOKEN_EXCHANGE"
        );
    }
}
