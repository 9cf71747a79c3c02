//! The client registration API (`/clients`, RFC 7591 / RFC 7592 style).
//!
//! * `POST /clients` needs the master (clients) token; open registration is
//!   off, as it is by default since Connect2id 14.0. It answers `201`.
//! * `preferred_client_id` / `preferred_client_secret` and the custom `data`
//!   object are privileged: honoured with the master token, refused with
//!   `invalid_client_metadata` when a client updates itself with its
//!   registration access token.
//! * `PUT /clients/{id}` is a full replace that, with the 14.0 defaults
//!   (`Strictness::always_refresh_client_secret_on_update`,
//!   `refresh_access_token_on_update`), issues a new `client_secret` (for
//!   confidential clients) and a new `registration_access_token`; with the
//!   first off, only `refresh_client_secret: true` does. The previous
//!   secret stays valid at the token endpoint for 30 minutes. That grace is
//!   in-memory state and does not travel with an export. Only the current
//!   registration access token is accepted. `preferred_client_secret` on
//!   `PUT` is ignored unless `Strictness::preferred_client_secret_on_update`.
//! * `client_secret_expires_at` is the server's own: computed from
//!   `Strictness::client_secret_lifetime_secs` whenever a secret is minted
//!   or imported, never taken from a request; an expired secret fails
//!   client authentication.
//! * `DELETE /clients/{id}` strictly cascades to the client's long-lived
//!   authorizations and journals a revocation of the client
//!   (`Strictness::client_delete_cascades`).
//! * `GET /clients` streams every client as one JSON array.
//!
//! Unknown metadata is kept as given. `registration_client_uri` is never
//! stored: it is rebuilt from the issuer on every read.

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::store::{Cursor, StoredClient};
use super::web::{self, ApiError, Reply};
use super::{Api, Req, Service, limits};
use crate::http::{Body, empty_response};

/// How long a replaced client secret is still accepted (RN 11.0).
pub(crate) const PREVIOUS_SECRET_GRACE_SECS: u64 = 30 * 60;

/// Longest accepted `preferred_client_id` (RN 14.3).
const MAX_PREFERRED_CLIENT_ID: usize = 80;

/// Token endpoint authentication methods a client may register.
const AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
    "none",
];

/// Members the server sets itself; values sent in a request are ignored.
const SERVER_SET: &[&str] = &[
    "client_id",
    "client_secret",
    "client_id_issued_at",
    "client_secret_expires_at",
    "registration_access_token",
    "registration_client_uri",
    "encoded_client_secret",
];

/// The parts of a client's information the server acts on.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ClientInfo {
    /// Client ID.
    pub(crate) client_id: String,
    /// Current secret (confidential clients).
    #[serde(default)]
    pub(crate) client_secret: Option<String>,
    /// When the current secret expires, epoch seconds (0: never).
    #[serde(default)]
    pub(crate) client_secret_expires_at: Option<u64>,
    /// Registered grant types.
    #[serde(default = "default_grant_types")]
    pub(crate) grant_types: Vec<String>,
    /// Registered response types.
    #[serde(default = "default_response_types")]
    pub(crate) response_types: Vec<String>,
    /// Registered redirection URIs.
    #[serde(default)]
    pub(crate) redirect_uris: Vec<String>,
    /// Registered token endpoint authentication method.
    #[serde(default = "default_auth_method")]
    pub(crate) token_endpoint_auth_method: String,
    /// Registered scope values, space separated.
    #[serde(default)]
    pub(crate) scope: Option<String>,
    /// The token for self-management.
    #[serde(default)]
    pub(crate) registration_access_token: Option<String>,
    /// Display name.
    #[serde(default)]
    pub(crate) client_name: Option<String>,
    /// `web` or `native`.
    #[serde(default)]
    pub(crate) application_type: Option<String>,
    /// Home page.
    #[serde(default)]
    pub(crate) client_uri: Option<String>,
    /// Logo.
    #[serde(default)]
    pub(crate) logo_uri: Option<String>,
}

fn default_grant_types() -> Vec<String> {
    vec!["authorization_code".to_owned()]
}

fn default_response_types() -> Vec<String> {
    vec!["code".to_owned()]
}

fn default_auth_method() -> String {
    "client_secret_basic".to_owned()
}

impl ClientInfo {
    /// Parses stored client information.
    pub(crate) fn parse(info: &str) -> Self {
        serde_json::from_str(info).expect("stored client information is validated on write")
    }

    /// Whether the client is registered for `grant_type`.
    pub(crate) fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|grant| grant == grant_type)
    }

    /// Whether the client has no secret.
    pub(crate) fn is_public(&self) -> bool {
        self.token_endpoint_auth_method == "none"
    }

    /// The registered scope values, if the client registered any.
    pub(crate) fn scope_values(&self) -> Option<Vec<String>> {
        self.scope
            .as_ref()
            .map(|scope| scope.split_whitespace().map(str::to_owned).collect())
    }

    /// The client summary shown to the login page in authorization prompts.
    pub(crate) fn summary(&self) -> Value {
        let mut summary = Map::new();
        summary.insert("client_id".to_owned(), self.client_id.clone().into());
        let client_type = if self.is_public() {
            "public"
        } else {
            "confidential"
        };
        summary.insert("client_type".to_owned(), client_type.into());
        summary.insert(
            "application_type".to_owned(),
            self.application_type
                .clone()
                .unwrap_or_else(|| "web".to_owned())
                .into(),
        );
        for (name, value) in [
            ("name", &self.client_name),
            ("uri", &self.client_uri),
            ("logo_uri", &self.logo_uri),
        ] {
            if let Some(value) = value {
                summary.insert(name.to_owned(), value.clone().into());
            }
        }
        Value::Object(summary)
    }
}

/// `/clients`: create and list.
pub(super) async fn collection(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::Clients)?;
    match req.method {
        Method::POST => {
            let body = req.body(limits::CLIENTS).await?;
            create(service, &body)
        }
        Method::GET => Ok(export(service)),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn invalid_metadata(description: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_client_metadata",
        description,
    )
}

/// Removes an optional string member.
fn take_string(metadata: &mut Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match metadata.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid_metadata(format!(
            "Invalid {name}: must be a string"
        ))),
    }
}

/// Checks the metadata the server acts on and fills in the defaults for
/// grant types, response types and the authentication method.
fn validate(metadata: &mut Map<String, Value>) -> Result<(), ApiError> {
    let string_array = |name: &str, value: &Value| -> Result<Vec<String>, ApiError> {
        value
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| invalid_metadata(format!("Invalid {name}: must be an array of strings")))
    };
    let grant_types = match metadata.get("grant_types") {
        None | Some(Value::Null) => default_grant_types(),
        Some(value) => string_array("grant_types", value)?,
    };
    metadata.insert("grant_types".to_owned(), grant_types.clone().into());
    let response_types = match metadata.get("response_types") {
        None | Some(Value::Null) => default_response_types(),
        Some(value) => string_array("response_types", value)?,
    };
    metadata.insert("response_types".to_owned(), response_types.into());
    let method = match metadata.get("token_endpoint_auth_method") {
        None | Some(Value::Null) => default_auth_method(),
        Some(Value::String(method)) if AUTH_METHODS.contains(&method.as_str()) => method.clone(),
        Some(_) => {
            return Err(invalid_metadata(
                "Invalid token_endpoint_auth_method: unsupported method",
            ));
        }
    };
    metadata.insert("token_endpoint_auth_method".to_owned(), method.into());
    let redirect_uris = match metadata.get("redirect_uris") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => string_array("redirect_uris", value).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                "Invalid redirect_uris: must be an array of URIs",
            )
        })?,
    };
    let redirecting = grant_types
        .iter()
        .any(|grant| grant == "authorization_code" || grant == "implicit");
    if redirecting && redirect_uris.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "Missing redirect_uris for the authorization_code grant",
        ));
    }
    if let Some(bad) = redirect_uris.iter().find(|uri| !web::is_redirect_uri(uri)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            format!("Invalid redirect_uri: {bad}"),
        ));
    }
    if metadata
        .get("scope")
        .is_some_and(|scope| !scope.is_string())
    {
        return Err(invalid_metadata("Invalid scope: must be a string"));
    }
    if metadata.get("data").is_some_and(|data| !data.is_object()) {
        return Err(invalid_metadata("Invalid data: must be a JSON object"));
    }
    Ok(())
}

/// `POST /clients`.
fn create(service: &Service, body: &[u8]) -> Reply {
    let mut metadata = web::parse_object(body)?;
    for name in SERVER_SET {
        metadata.remove(*name);
    }
    let preferred_id = take_string(&mut metadata, "preferred_client_id")?;
    let preferred_secret = take_string(&mut metadata, "preferred_client_secret")?;
    validate(&mut metadata)?;
    let id = match preferred_id {
        Some(id) if id.is_empty() || id.chars().count() > MAX_PREFERRED_CLIENT_ID => {
            return Err(invalid_metadata(format!(
                "Invalid preferred_client_id: must be 1 to {MAX_PREFERRED_CLIENT_ID} characters"
            )));
        }
        Some(id) if id.chars().any(char::is_control) => {
            return Err(invalid_metadata(
                "Invalid preferred_client_id: control characters",
            ));
        }
        Some(id) => id,
        None => service.keys.random_string::<10>(),
    };
    let public = metadata
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        == Some("none");
    let now = service.now();
    metadata.insert("client_id".to_owned(), id.clone().into());
    metadata.insert("client_id_issued_at".to_owned(), now.into());
    if !public {
        let secret = preferred_secret.unwrap_or_else(|| service.keys.random_string::<32>());
        metadata.insert("client_secret".to_owned(), secret.into());
        metadata.insert(
            "client_secret_expires_at".to_owned(),
            secret_expiry(service, now).into(),
        );
    }
    metadata.insert(
        "registration_access_token".to_owned(),
        service.keys.new_keyed().into(),
    );
    let info = Value::Object(metadata).to_string();
    let client = StoredClient {
        info: info.clone().into_boxed_str(),
        previous_secret: None,
    };
    if !service.store.insert_client(&id, client) {
        return Err(invalid_metadata(format!(
            "Invalid preferred_client_id: client {id} is already registered"
        )));
    }
    Ok(output(service, StatusCode::CREATED, &id, &info))
}

fn output(service: &Service, status: StatusCode, id: &str, info: &str) -> Response<Body> {
    web::raw_json(status, service.client_output(id, info))
}

/// `/clients/{id}`: read, update and delete with the master token or the
/// client's registration access token.
pub(super) async fn item(service: &Arc<Service>, mut req: Req, id: &str) -> Reply {
    let Some(token) = web::bearer(&req.headers).map(str::to_owned) else {
        return Err(ApiError::invalid_token());
    };
    let master = service.authorized(&req.headers, Api::Clients);
    let stored = service.store.client(id);
    let Some(stored) = stored else {
        // Without the master token, do not reveal whether the ID exists.
        return Err(if master {
            ApiError::not_found("invalid_client", "Invalid client: not found")
        } else {
            ApiError::invalid_token()
        });
    };
    let info = ClientInfo::parse(&stored.info);
    if !master {
        let own = info
            .registration_access_token
            .as_deref()
            .is_some_and(|expected| {
                super::keys::constant_time_eq(expected.as_bytes(), token.as_bytes())
            });
        if !own {
            return Err(ApiError::invalid_token());
        }
    }
    match req.method {
        Method::GET => Ok(output(service, StatusCode::OK, id, &stored.info)),
        Method::PUT => {
            let body = req.body(limits::CLIENTS).await?;
            update(service, id, &stored, &body, master)
        }
        Method::DELETE => {
            if service.store.remove_client(id) {
                if service.strict().client_delete_cascades {
                    cascade_delete(service, id);
                }
                Ok(empty_response(StatusCode::NO_CONTENT))
            } else {
                Err(ApiError::not_found(
                    "invalid_client",
                    "Invalid client: not found",
                ))
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// What a client delete also does, strictly: its long-lived authorizations
/// go, and the revocation journal records the client at the delete time, so
/// every token of the client issued until then is revoked here, including
/// records imported again later with their original issue times.
fn cascade_delete(service: &Service, client_id: &str) {
    let records = service.store.authorizations_of_client(client_id);
    for record in &records {
        service.store.remove_authorization(&record.sub, &record.cid);
    }
    service
        .store
        .revoke(None, Some(client_id), None, None, service.now());
    tracing::debug!(
        authorizations = records.len(),
        "cascaded a client delete to its authorizations and revoked its tokens"
    );
}

/// `client_secret_expires_at` for a secret minted now: from
/// `op.reg.clientSecretLifetime` (0: never).
fn secret_expiry(service: &Service, now: u64) -> u64 {
    match service.strict().client_secret_lifetime_secs {
        0 => 0,
        lifetime => now + lifetime,
    }
}

/// `PUT /clients/{id}`: full replace with credential rotation.
fn update(service: &Service, id: &str, current: &StoredClient, body: &[u8], master: bool) -> Reply {
    let mut metadata = web::parse_object(body)?;
    match metadata.get("client_id").and_then(Value::as_str) {
        Some(given) if given == id => {}
        _ => {
            return Err(ApiError::invalid_request(
                "The client_id in the body must match the client being updated",
            ));
        }
    }
    let current_info: Map<String, Value> =
        serde_json::from_str(&current.info).expect("stored client information is a JSON object");
    if !master {
        let privileged = ["preferred_client_id", "preferred_client_secret"]
            .iter()
            .any(|name| metadata.contains_key(*name))
            || metadata
                .get("data")
                .is_some_and(|data| Some(data) != current_info.get("data"));
        if privileged {
            return Err(invalid_metadata(
                "Setting preferred_client_id, preferred_client_secret or data requires the master token",
            ));
        }
    }
    let strict = service.strict();
    let preferred_secret = take_string(&mut metadata, "preferred_client_secret")?
        .filter(|_| master && strict.preferred_client_secret_on_update);
    let refresh_requested = metadata.get("refresh_client_secret") == Some(&Value::Bool(true));
    for name in SERVER_SET.iter().chain(&[
        "preferred_client_id",
        "preferred_client_secret",
        "refresh_client_secret",
    ]) {
        metadata.remove(*name);
    }
    validate(&mut metadata)?;
    let now = service.now();
    let public = metadata
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        == Some("none");
    metadata.insert("client_id".to_owned(), id.into());
    metadata.insert(
        "client_id_issued_at".to_owned(),
        current_info
            .get("client_id_issued_at")
            .cloned()
            .unwrap_or_else(|| now.into()),
    );
    let current_secret = current_info.get("client_secret").and_then(Value::as_str);
    // A new secret: the preferred one where honoured, else a random one
    // when every update refreshes it (RN 14.0) or the body asks (RN 12.9).
    let new_secret = if public {
        None
    } else if let Some(secret) = preferred_secret {
        Some(secret)
    } else if strict.always_refresh_client_secret_on_update
        || refresh_requested
        || current_secret.is_none()
    {
        Some(service.keys.random_string::<32>())
    } else {
        None
    };
    if !public {
        match &new_secret {
            Some(secret) => {
                metadata.insert("client_secret".to_owned(), secret.clone().into());
                metadata.insert(
                    "client_secret_expires_at".to_owned(),
                    secret_expiry(service, now).into(),
                );
            }
            None => {
                for name in ["client_secret", "client_secret_expires_at"] {
                    if let Some(value) = current_info.get(name) {
                        metadata.insert(name.to_owned(), value.clone());
                    }
                }
            }
        }
    }
    let registration_access_token = if strict.refresh_access_token_on_update {
        Some(service.keys.new_keyed().into())
    } else {
        current_info.get("registration_access_token").cloned()
    };
    if let Some(token) = registration_access_token {
        metadata.insert("registration_access_token".to_owned(), token);
    }
    let info = Value::Object(metadata).to_string();
    // The replaced secret stays valid for 30 minutes (RN 11.0); an update
    // that keeps the secret keeps the earlier grace.
    let previous_secret = match (&new_secret, current_secret) {
        (Some(new), Some(old)) if new != old => {
            Some((Box::from(old), now + PREVIOUS_SECRET_GRACE_SECS))
        }
        _ => current.previous_secret.clone(),
    };
    let next = StoredClient {
        info: info.clone().into_boxed_str(),
        previous_secret,
    };
    let stored = service
        .store
        .update_client(id, |_| Some((next, ())))
        .is_some();
    if !stored {
        return Err(ApiError::not_found(
            "invalid_client",
            "Invalid client: not found",
        ));
    }
    Ok(output(service, StatusCode::OK, id, &info))
}

/// Streams every client as one JSON array, chunk by chunk.
pub(super) fn export(service: &Arc<Service>) -> Response<Body> {
    let service = service.clone();
    web::stream_export(b"[", b"]", move |cursor: &Cursor<String>| {
        let (chunk, next) = service.store.clients_chunk(cursor);
        let items = chunk
            .iter()
            .map(|(id, client)| service.client_output(id, &client.info))
            .collect();
        (items, next)
    })
}
