//! The data of one emulated Authlete service (clients, token records and
//! batch jobs) and the rules Authlete applies to them.
//!
//! Invariants:
//! - Token values are never stored, only their hashes ([`token_hash`]); the
//!   `by_access` / `by_refresh` / `by_token_id` indexes always point at a
//!   live record, and a record's hashes are in exactly those indexes.
//! - Client ids and aliases are unique across the service; an alias never
//!   equals another client's numeric id, so an identifier resolves to at
//!   most one client.
//! - Every method is synchronous and takes `now` (epoch milliseconds): the
//!   HTTP layer holds the lock only for in-memory work, never across an
//!   `.await`.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Config;
use super::envelope::{self as codes, Reply, action};
use super::metadata;
use super::strictness::{ClientUpdate, DuplicateToken, Strictness};

/// Access token lifetime when a request says 0 (the service default).
pub(super) const DEFAULT_ACCESS_TOKEN_DURATION_S: i64 = 3_600;
/// Refresh token lifetime when a request says 0: Authlete's console
/// default of 10 days.
pub(super) const DEFAULT_REFRESH_TOKEN_DURATION_S: i64 = 864_000;
/// Longest subject Authlete accepts (spec §1.2).
const MAX_SUBJECT_CHARS: usize = 100;
/// Longest client secret `/client/secret/update` accepts (spec §4.3).
const MAX_CLIENT_SECRET_CHARS: usize = 86;

/// Which Authlete API generation a request came through. They share the
/// data; they differ in authentication, paths and a few rules (aliases,
/// `clientIdentifier`, batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    /// Authlete 2.x: `/api/...`, HTTP Basic.
    V2,
    /// Authlete 3.0: `/api/{serviceId}/...`, Bearer.
    V3,
}

/// An OAuth grant type as Authlete spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GrantType {
    /// `authorization_code`.
    AuthorizationCode,
    /// The implicit flow; never gets a refresh token.
    Implicit,
    /// Resource owner password credentials.
    Password,
    /// `client_credentials`; no subject, never a refresh token.
    ClientCredentials,
    /// `refresh_token`; refused by `/auth/token/create`.
    RefreshToken,
    /// Client-initiated backchannel authentication.
    Ciba,
    /// Device authorization grant.
    DeviceCode,
    /// RFC 8693 token exchange.
    TokenExchange,
    /// RFC 7523 JWT bearer; subject optional.
    JwtBearer,
    /// OpenID4VCI pre-authorized code.
    PreAuthorizedCode,
}

impl GrantType {
    /// Every grant type, as the emulated service advertises them.
    pub(super) const ALL: [Self; 10] = [
        Self::AuthorizationCode,
        Self::Implicit,
        Self::Password,
        Self::ClientCredentials,
        Self::RefreshToken,
        Self::Ciba,
        Self::DeviceCode,
        Self::TokenExchange,
        Self::JwtBearer,
        Self::PreAuthorizedCode,
    ];

    /// Whether a token of this grant type can carry a refresh token.
    fn allows_refresh_token(self) -> bool {
        !matches!(self, Self::Implicit | Self::ClientCredentials)
    }
}

/// `clientType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientType {
    /// Cannot keep a secret; not authenticated at the token endpoint.
    Public,
    /// Has a secret that `/auth/token` and `/auth/revocation` check.
    Confidential,
}

/// `applicationType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplicationType {
    /// A web application.
    Web,
    /// A native application.
    Native,
}

/// A `{key, value}` pair (`Client.attributes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// The key.
    pub key: String,
    /// The value.
    #[serde(default)]
    pub value: String,
}

/// A token property (`{key, value, hidden}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    /// The key.
    pub key: String,
    /// The value.
    #[serde(default)]
    pub value: String,
    /// Hidden from OAuth clients (visible to the service).
    #[serde(default)]
    pub hidden: bool,
}

/// A client as the emulated service stores and returns it: the subset of
/// Authlete's `Client` the migration uses.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// Sequence number within the service (creation order).
    pub number: u64,
    /// The Authlete-assigned numeric client id.
    pub client_id: u64,
    /// The client secret (86 base64url characters when generated).
    pub client_secret: String,
    /// The alias clients use as `client_id` (v3: defaults to the numeric
    /// id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id_alias: Option<String>,
    /// Whether the alias is honoured (v2; always true for v3 clients).
    pub client_id_alias_enabled: bool,
    /// `developer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub developer: Option<String>,
    /// `clientName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// `description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `clientType`; anything but `PUBLIC` is authenticated by secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_type: Option<ClientType>,
    /// `applicationType`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_type: Option<ApplicationType>,
    /// `grantTypes`.
    pub grant_types: Vec<GrantType>,
    /// `responseTypes` (kept as given).
    pub response_types: Vec<String>,
    /// `redirectUris`.
    pub redirect_uris: Vec<String>,
    /// `tokenAuthMethod` (kept as given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_auth_method: Option<String>,
    /// `attributes`.
    pub attributes: Vec<Pair>,
    /// Every other documented writable `Client` field the request set
    /// (`jwks`, `jwksUri`, `tlsClientAuthSubjectDn`, `tokenAuthSignAlg`,
    /// `idTokenSignAlg`, `dpopRequired`, `parRequired`, `subjectType`,
    /// `sectorIdentifierUri`, `singleAccessTokenPerSubject`, ...; the list
    /// is in `metadata.rs`), under its documented name, as given.
    #[serde(flatten)]
    pub metadata: BTreeMap<String, Value>,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last modification time, epoch ms.
    pub modified_at: i64,
}

impl Client {
    /// This client with every writable field from `request`: the ones it
    /// omits unset or empty, null metadata dropped. Number, ids, secret and
    /// creation time stay. A creation, or an update by replacement.
    fn written(
        self,
        request: ClientRequest,
        (alias, enabled): (Option<String>, bool),
        mut metadata: BTreeMap<String, Value>,
        now: i64,
    ) -> Client {
        metadata.retain(|_, value| !value.is_null());
        Client {
            client_id_alias: alias,
            client_id_alias_enabled: enabled,
            developer: request.developer,
            client_name: request.client_name,
            description: request.description,
            client_type: request.client_type,
            application_type: request.application_type,
            grant_types: request.grant_types.unwrap_or_default(),
            response_types: request.response_types.unwrap_or_default(),
            redirect_uris: request.redirect_uris.unwrap_or_default(),
            token_auth_method: request.token_auth_method,
            attributes: request.attributes.unwrap_or_default(),
            metadata,
            modified_at: now,
            ..self
        }
    }

    /// The client-level `singleAccessTokenPerSubject` flag.
    pub fn single_access_token_per_subject(&self) -> bool {
        self.metadata.get("singleAccessTokenPerSubject") == Some(&Value::Bool(true))
    }
}

impl std::fmt::Debug for Client {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("number", &self.number)
            .field("client_id", &self.client_id)
            .field("client_id_alias", &self.client_id_alias)
            .field("client_id_alias_enabled", &self.client_id_alias_enabled)
            .field("client_name", &self.client_name)
            .field("client_type", &self.client_type)
            .field("grant_types", &self.grant_types)
            .finish_non_exhaustive()
    }
}

/// The writable part of a `Client` in `/client/create` and
/// `/client/update`. Every field is optional so that an update can tell
/// "omitted" from "set"; `clientId`, `clientSecret`, read-only and unknown
/// fields end up in `extra` and are dropped, as Authlete treats them as
/// read-only or unknown.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClientRequest {
    client_id_alias: Option<String>,
    client_id_alias_enabled: Option<bool>,
    developer: Option<String>,
    client_name: Option<String>,
    description: Option<String>,
    client_type: Option<ClientType>,
    application_type: Option<ApplicationType>,
    grant_types: Option<Vec<GrantType>>,
    response_types: Option<Vec<String>>,
    redirect_uris: Option<Vec<String>>,
    token_auth_method: Option<String>,
    attributes: Option<Vec<Pair>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl ClientRequest {
    /// The documented metadata fields of the request (`null` included: it
    /// clears a field on merge), checked against the schema when
    /// `typed`, and the typed fields whose values Authlete restricts.
    fn metadata(&self, typed: bool) -> Result<BTreeMap<String, Value>, Reply> {
        let invalid = |message: String| {
            Reply::new(
                StatusCode::BAD_REQUEST,
                codes::CLIENT_METADATA_INVALID,
                message,
            )
        };
        if typed {
            if let Some(method) = &self.token_auth_method {
                metadata::check_one_of(
                    "tokenAuthMethod",
                    metadata::CLIENT_AUTH_METHOD,
                    &Value::from(method.as_str()),
                )
                .map_err(invalid)?;
            }
            for response_type in self.response_types.iter().flatten() {
                metadata::check_one_of(
                    "responseTypes",
                    metadata::RESPONSE_TYPE,
                    &Value::from(response_type.as_str()),
                )
                .map_err(invalid)?;
            }
        }
        let mut fields = BTreeMap::new();
        for (name, value) in &self.extra {
            if !metadata::is_documented(name) {
                continue;
            }
            if typed {
                metadata::check(name, value).map_err(invalid)?;
            }
            fields.insert(name.clone(), value.clone());
        }
        Ok(fields)
    }
}

/// One token record: an access token and the refresh token issued with it
/// (Authlete keeps them as one pair). Only hashes are held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    /// Authlete 3.0 token identifier.
    pub token_id: String,
    /// Hash of the access token; `None` once an expired access token was
    /// removed by introspection while its refresh token lives on.
    pub access_token_hash: Option<String>,
    /// Hash of the refresh token, if the pair has one.
    pub refresh_token_hash: Option<String>,
    /// Numeric id of the client the pair was issued to.
    pub client_id: u64,
    /// Resource owner; `None` for client credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Grant type the pair was created with.
    pub grant_type: GrantType,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry, epoch ms.
    pub access_token_expires_at: i64,
    /// Refresh token expiry, epoch ms; 0 without a refresh token.
    pub refresh_token_expires_at: i64,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last `/auth/token` refresh, epoch ms (creation time until then).
    pub last_refreshed_at: i64,
    /// Extra properties.
    pub properties: Vec<Property>,
    /// Whether the pair pretends the client used its alias.
    pub client_id_alias_used: bool,
    /// Last time Authlete read or updated the pair for a request
    /// (creation, introspection, refresh, `/auth/token/update`), epoch ms:
    /// what the sweep of unused tokens looks at ([KB-SWEEP]). Not part of
    /// Authlete's listings.
    #[serde(skip)]
    pub last_used_at: i64,
}

impl Token {
    /// Whether the access token exists and has not expired.
    pub(super) fn access_token_alive(&self, now: i64) -> bool {
        self.access_token_hash.is_some() && self.access_token_expires_at > now
    }

    /// Whether the refresh token exists and has not expired.
    pub(super) fn refresh_token_alive(&self, now: i64) -> bool {
        self.refresh_token_hash.is_some() && self.refresh_token_expires_at > now
    }

    /// Nothing in the pair is usable any more; Authlete deletes such
    /// records (spec §5.3), the emulator lazily when it touches them.
    fn dead(&self, now: i64) -> bool {
        !self.access_token_alive(now) && !self.refresh_token_alive(now)
    }
}

/// `/auth/token/create` request (also each batch item). Unknown fields are
/// ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenCreateRequest {
    grant_type: Option<GrantType>,
    /// Number or numeric string (the seed article sends a string).
    client_id: Option<Value>,
    client_identifier: Option<String>,
    subject: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default)]
    access_token_duration: i64,
    #[serde(default)]
    refresh_token_duration: i64,
    properties: Option<Vec<Property>>,
    #[serde(default)]
    client_id_alias_used: bool,
    pub(super) access_token: Option<String>,
    pub(super) refresh_token: Option<String>,
    #[serde(default)]
    access_token_persistent: bool,
}

/// What `/auth/token/create` made.
#[derive(Debug)]
pub(super) struct Created {
    /// The stored record.
    pub(super) token: Token,
    /// The access token value (given or generated).
    pub(super) access_token: String,
    /// The refresh token value, if the grant type allows one.
    pub(super) refresh_token: Option<String>,
    /// Access token lifetime in seconds.
    pub(super) expires_in: i64,
}

/// `/auth/token/update` request.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenUpdateRequest {
    access_token: Option<String>,
    access_token_hash: Option<String>,
    refresh_token: Option<String>,
    refresh_token_hash: Option<String>,
    token_id: Option<String>,
    #[serde(default)]
    access_token_expires_at: i64,
    #[serde(default)]
    refresh_token_expires_at: i64,
    scopes: Option<Vec<String>>,
    properties: Option<Vec<Property>>,
    #[serde(default)]
    access_token_persistent: bool,
    #[serde(default)]
    access_token_value_updated: bool,
}

/// What `/auth/token/update` changed.
#[derive(Debug)]
pub(super) struct Updated {
    /// The record after the update.
    pub(super) token: Token,
    /// The access token value: the one in the request, or the new one with
    /// `accessTokenValueUpdated`. Unknown when located by hash or id.
    pub(super) access_token: Option<String>,
}

/// Criteria of `/auth/token/revoke`; every given one must match.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RevokeRequest {
    access_token_identifier: Option<String>,
    refresh_token_identifier: Option<String>,
    client_identifier: Option<String>,
    subject: Option<String>,
}

/// Result of looking up an access token for `/auth/introspection`.
#[derive(Debug)]
pub(super) enum Introspected {
    /// Usable; the record as it stands.
    Valid(Token),
    /// Existed but had expired; it has now been removed.
    Expired,
    /// No such access token.
    Unknown,
}

/// What a successful refresh issued.
#[derive(Debug)]
pub(super) struct Refreshed {
    /// The record after the refresh.
    pub(super) token: Token,
    /// The new access token value.
    pub(super) access_token: String,
    /// The refresh token value the client holds now (new on rotation).
    pub(super) refresh_token: String,
}

/// Progress of one `/auth/token/create/batch` request (`TokenBatchStatus`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BatchStatus {
    batch_kind: &'static str,
    request_id: String,
    /// `None` while the batch is still running.
    result: Option<&'static str>,
    token_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<String>,
    created_at: i64,
    modified_at: i64,
}

/// Everything one emulated service holds.
#[derive(Debug, Default)]
pub(super) struct State {
    /// By `number`, so listings come in creation order.
    clients: BTreeMap<u64, Client>,
    client_numbers: HashMap<u64, u64>,
    aliases: HashMap<String, u64>,
    next_client_number: u64,
    /// By an internal sequence, so listings come in creation order.
    tokens: BTreeMap<u64, Token>,
    by_access: HashMap<String, u64>,
    by_refresh: HashMap<String, u64>,
    by_token_id: HashMap<String, u64>,
    next_token_seq: u64,
    /// A lower bound of every pair's `last_used_at`, so that the sweep of
    /// unused tokens scans only when something may be due.
    earliest_use: i64,
    batches: HashMap<String, BatchStatus>,
}

/// The hash under which a token value is stored: SHA-256, base64url
/// without padding (43 characters). Authlete's listings show hashes of
/// this size but the algorithm is undocumented (spec §1.4), so code talking
/// to a real service must not compute them.
pub fn token_hash(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        value.as_bytes(),
    ))
}

/// `bytes` random bytes as base64url: 32 give a 43-character token value,
/// 64 an 86-character client secret, as Authlete generates them.
pub(super) fn random_value(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    if ring::rand::SystemRandom::new().fill(&mut buffer).is_err() {
        // The OS RNG failing is near impossible; an emulator may fall back
        // to a non-cryptographic source rather than fail the request.
        fastrand::fill(&mut buffer);
    }
    URL_SAFE_NO_PAD.encode(buffer)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

fn client_unknown(identifier: &str) -> Reply {
    Reply::new(
        StatusCode::NOT_FOUND,
        codes::CLIENT_UNKNOWN,
        format!("The client ({identifier}) does not exist."),
    )
}

impl State {
    // ---- clients ------------------------------------------------------

    /// `/client/create`: assigns id, secret and (v3) the default alias.
    pub(super) fn create_client(
        &mut self,
        request: ClientRequest,
        version: Version,
        strictness: &Strictness,
        now: i64,
    ) -> Result<Client, Reply> {
        let metadata = request.metadata(strictness.typed_client_metadata)?;
        let client_id = self.fresh_client_id();
        let alias = Self::alias_of(&request, client_id, version);
        if let Some(alias) = &alias.0 {
            self.check_alias_free(alias, None)?;
        }
        self.next_client_number += 1;
        let number = self.next_client_number;
        let client = Client {
            number,
            client_id,
            client_secret: random_value(64),
            created_at: now,
            ..Client::default()
        }
        .written(request, alias, metadata, now);
        self.client_numbers.insert(client_id, number);
        Ok(self.put_client(client))
    }

    /// `/client/update/{id}`: keeps id, secret and creation time, and
    /// either overlays the fields the body names on the stored client
    /// ([`ClientUpdate::Merge`]) or replaces every writable field, omitted
    /// ones becoming unset, empty or (v3 alias) the numeric id
    /// ([`ClientUpdate::Replace`]). With `documented_aliases` the
    /// identifier must be the numeric client id, as both SDKs format the
    /// path (`/client/update/%d`); an alias names no client there.
    pub(super) fn update_client(
        &mut self,
        identifier: &str,
        request: ClientRequest,
        version: Version,
        strictness: &Strictness,
        now: i64,
    ) -> Result<Client, Reply> {
        let number = if strictness.documented_aliases {
            identifier
                .parse::<u64>()
                .ok()
                .and_then(|id| self.client_numbers.get(&id).copied())
        } else {
            self.find_client(identifier, version)
        }
        .ok_or_else(|| client_unknown(identifier))?;
        let Some(current) = self.clients.get(&number) else {
            return Err(client_unknown(identifier));
        };
        let metadata = request.metadata(strictness.typed_client_metadata)?;
        let client = match strictness.client_update {
            ClientUpdate::Replace => {
                let alias = Self::alias_of(&request, current.client_id, version);
                current.clone().written(request, alias, metadata, now)
            }
            ClientUpdate::Merge => {
                let alias = non_empty(request.client_id_alias.clone())
                    .or_else(|| current.client_id_alias.clone());
                let enabled = match version {
                    Version::V3 => true,
                    Version::V2 => request
                        .client_id_alias_enabled
                        .unwrap_or(current.client_id_alias_enabled),
                };
                let mut merged = current.metadata.clone();
                for (name, value) in metadata {
                    if value.is_null() {
                        merged.remove(&name);
                    } else {
                        merged.insert(name, value);
                    }
                }
                let current = current.clone();
                Client {
                    client_id_alias: alias,
                    client_id_alias_enabled: enabled,
                    developer: request.developer.or(current.developer),
                    client_name: request.client_name.or(current.client_name),
                    description: request.description.or(current.description),
                    client_type: request.client_type.or(current.client_type),
                    application_type: request.application_type.or(current.application_type),
                    grant_types: request.grant_types.unwrap_or(current.grant_types),
                    response_types: request.response_types.unwrap_or(current.response_types),
                    redirect_uris: request.redirect_uris.unwrap_or(current.redirect_uris),
                    token_auth_method: request.token_auth_method.or(current.token_auth_method),
                    attributes: request.attributes.unwrap_or(current.attributes),
                    metadata: merged,
                    modified_at: now,
                    ..current
                }
            }
        };
        if let Some(alias) = &client.client_id_alias {
            self.check_alias_free(alias, Some(number))?;
        }
        if let Some(old) = self
            .clients
            .get(&number)
            .and_then(|current| current.client_id_alias.clone())
        {
            self.aliases.remove(&old);
        }
        Ok(self.put_client(client))
    }

    /// Stores `client` under its number, and its alias.
    fn put_client(&mut self, client: Client) -> Client {
        if let Some(alias) = &client.client_id_alias {
            self.aliases.insert(alias.clone(), client.number);
        }
        self.clients.insert(client.number, client.clone());
        client
    }

    /// `/client/delete/{id}`: removes the client and every token issued to
    /// it ([KB-DELCLIENT]). Returns how many token records went.
    pub(super) fn delete_client(
        &mut self,
        identifier: &str,
        version: Version,
    ) -> Result<usize, Reply> {
        let number = self
            .find_client(identifier, version)
            .ok_or_else(|| client_unknown(identifier))?;
        let Some(client) = self.clients.remove(&number) else {
            return Err(client_unknown(identifier));
        };
        self.client_numbers.remove(&client.client_id);
        if let Some(alias) = &client.client_id_alias {
            self.aliases.remove(alias);
        }
        Ok(self.remove_tokens_where(|token| token.client_id == client.client_id))
    }

    /// `/client/secret/update` (`Some(secret)`, validated) or
    /// `/client/secret/refresh` (`None`: generate). Returns `(new, old)`.
    pub(super) fn set_client_secret(
        &mut self,
        identifier: &str,
        version: Version,
        secret: Option<String>,
    ) -> Result<(String, String), Reply> {
        let number = self
            .find_client(identifier, version)
            .ok_or_else(|| client_unknown(identifier))?;
        let new = match secret {
            None => random_value(64),
            Some(secret) => validate_client_secret(secret)?,
        };
        let Some(client) = self.clients.get_mut(&number) else {
            return Err(client_unknown(identifier));
        };
        let old = std::mem::replace(&mut client.client_secret, new.clone());
        Ok((new, old))
    }

    /// The client an identifier names: a numeric id first, then an alias
    /// (v2 honours an alias only when the client enabled it; v3 always).
    pub(super) fn client(&self, identifier: &str, version: Version) -> Option<&Client> {
        self.find_client(identifier, version)
            .and_then(|number| self.clients.get(&number))
    }

    /// The client with this numeric id.
    pub(super) fn client_by_id(&self, client_id: u64) -> Option<&Client> {
        self.client_numbers
            .get(&client_id)
            .and_then(|number| self.clients.get(number))
    }

    /// The client with this alias, whatever the API version.
    pub(super) fn client_by_alias(&self, alias: &str) -> Option<&Client> {
        self.aliases
            .get(alias)
            .and_then(|number| self.clients.get(number))
    }

    /// Clients `start..end` in creation order, and the total.
    pub(super) fn list_clients(&self, start: usize, end: usize) -> (Vec<Client>, usize) {
        let page = self
            .clients
            .values()
            .skip(start)
            .take(end.saturating_sub(start))
            .cloned()
            .collect();
        (page, self.clients.len())
    }

    /// Every client, in creation order.
    pub(super) fn clients(&self) -> Vec<Client> {
        self.clients.values().cloned().collect()
    }

    fn find_client(&self, identifier: &str, version: Version) -> Option<u64> {
        if let Ok(client_id) = identifier.parse::<u64>()
            && let Some(number) = self.client_numbers.get(&client_id)
        {
            return Some(*number);
        }
        let number = *self.aliases.get(identifier)?;
        let client = self.clients.get(&number)?;
        (version == Version::V3 || client.client_id_alias_enabled).then_some(number)
    }

    fn alias_of(
        request: &ClientRequest,
        client_id: u64,
        version: Version,
    ) -> (Option<String>, bool) {
        let alias = non_empty(request.client_id_alias.clone());
        match version {
            // v3: aliases are always on and default to the numeric id.
            Version::V3 => (Some(alias.unwrap_or_else(|| client_id.to_string())), true),
            Version::V2 => (alias, request.client_id_alias_enabled.unwrap_or(false)),
        }
    }

    fn check_alias_free(&self, alias: &str, except: Option<u64>) -> Result<(), Reply> {
        let by_alias = self.aliases.get(alias).copied();
        let by_id = alias
            .parse::<u64>()
            .ok()
            .and_then(|id| self.client_numbers.get(&id).copied());
        match by_alias.or(by_id) {
            Some(owner) if Some(owner) != except => Err(Reply::new(
                StatusCode::BAD_REQUEST,
                codes::CLIENT_ALIAS_IN_USE,
                format!("The client ID alias ({alias}) is already in use by another client."),
            )),
            _ => Ok(()),
        }
    }

    fn fresh_client_id(&self) -> u64 {
        loop {
            // 11 to 14 digits, like the ids Authlete hands out.
            let id = fastrand::u64(10_000_000_000..100_000_000_000_000);
            if !self.client_numbers.contains_key(&id) && !self.aliases.contains_key(&id.to_string())
            {
                return id;
            }
        }
    }

    // ---- tokens -------------------------------------------------------

    /// `/auth/token/create`. With `dry_run` everything is checked and
    /// nothing stored.
    pub(super) fn create_token(
        &mut self,
        request: TokenCreateRequest,
        version: Version,
        config: &Config,
        now: i64,
        dry_run: bool,
    ) -> Result<Created, Reply> {
        let grant_type = match request.grant_type {
            None => {
                return Err(Reply::bad_request(
                    codes::GRANT_TYPE_MISSING,
                    "The request does not contain 'grantType'.",
                ));
            }
            Some(GrantType::RefreshToken) => {
                return Err(Reply::bad_request(
                    codes::GRANT_TYPE_REFRESH,
                    "REFRESH_TOKEN cannot be used as 'grantType' of a token creation request.",
                ));
            }
            Some(grant_type) => grant_type,
        };
        if request.access_token_persistent {
            return Err(Reply::bad_request(
                codes::NOT_EMULATED,
                "'accessTokenPersistent' is not supported by the emulator.",
            ));
        }
        let client_id = self.token_client(&request, version, &config.strictness)?;
        let subject = match grant_type {
            // Ignored for client credentials (spec §1.2).
            GrantType::ClientCredentials => None,
            _ => non_empty(request.subject),
        };
        match &subject {
            None if !matches!(
                grant_type,
                GrantType::ClientCredentials | GrantType::JwtBearer
            ) =>
            {
                return Err(Reply::bad_request(
                    codes::SUBJECT_MISSING,
                    "The request does not contain 'subject'.",
                ));
            }
            Some(subject) if !subject.is_ascii() || subject.chars().count() > MAX_SUBJECT_CHARS => {
                return Err(Reply::bad_request(
                    codes::SUBJECT_INVALID,
                    format!(
                        "'subject' must consist of ASCII characters only and be at most {MAX_SUBJECT_CHARS} characters long."
                    ),
                ));
            }
            _ => {}
        }
        let scopes = request.scopes.unwrap_or_default();
        if let Some(supported) = &config.supported_scopes
            && let Some(scope) = scopes.iter().find(|scope| !supported.contains(scope))
        {
            return Err(Reply::bad_request(
                codes::SCOPE_UNSUPPORTED,
                format!("The scope '{scope}' is not supported by the service."),
            ));
        }
        if request.access_token_duration < 0 || request.refresh_token_duration < 0 {
            return Err(Reply::bad_request(
                codes::DURATION_INVALID,
                "'accessTokenDuration' and 'refreshTokenDuration' must not be negative.",
            ));
        }
        let access_duration = match request.access_token_duration {
            0 => DEFAULT_ACCESS_TOKEN_DURATION_S,
            seconds => seconds,
        };
        let refresh_duration = match request.refresh_token_duration {
            0 => DEFAULT_REFRESH_TOKEN_DURATION_S,
            seconds => seconds,
        };

        let access_token = non_empty(request.access_token).unwrap_or_else(|| random_value(32));
        let access_hash = token_hash(&access_token);
        if self.holds(Index::Access, &access_hash, now) {
            return Err(duplicate(config, Index::Access));
        }
        // IMPLICIT and CLIENT_CREDENTIALS never get a refresh token, even
        // if the request supplies one; otherwise Authlete generates one
        // when none is supplied (spec §2.8).
        let refresh_token = grant_type
            .allows_refresh_token()
            .then(|| non_empty(request.refresh_token).unwrap_or_else(|| random_value(32)));
        let refresh_hash = refresh_token.as_deref().map(token_hash);
        if let Some(hash) = &refresh_hash
            && self.holds(Index::Refresh, hash, now)
        {
            return Err(duplicate(config, Index::Refresh));
        }

        let token = Token {
            token_id: random_value(16),
            access_token_hash: Some(access_hash),
            refresh_token_hash: refresh_hash,
            client_id,
            subject,
            grant_type,
            scopes,
            access_token_expires_at: now.saturating_add(access_duration.saturating_mul(1000)),
            refresh_token_expires_at: if refresh_token.is_some() {
                now.saturating_add(refresh_duration.saturating_mul(1000))
            } else {
                0
            },
            created_at: now,
            last_refreshed_at: now,
            properties: request.properties.unwrap_or_default(),
            client_id_alias_used: request.client_id_alias_used,
            last_used_at: now,
        };
        if !dry_run {
            self.enforce_single_token(config, &token);
            self.insert_token(token.clone());
        }
        Ok(Created {
            token,
            access_token,
            refresh_token,
            expires_in: access_duration,
        })
    }

    /// `/auth/token/update`.
    pub(super) fn update_token(
        &mut self,
        request: TokenUpdateRequest,
        config: &Config,
        now: i64,
    ) -> Result<Updated, Reply> {
        if request.access_token_persistent {
            return Err(Reply::bad_request(
                codes::NOT_EMULATED,
                "'accessTokenPersistent' is not supported by the emulator.",
            ));
        }
        let located = if let Some(value) = non_empty(request.access_token.clone()) {
            self.by_access.get(&token_hash(&value))
        } else if let Some(hash) = non_empty(request.access_token_hash) {
            self.by_access.get(&hash)
        } else if let Some(id) = non_empty(request.token_id) {
            self.by_token_id.get(&id)
        } else if let Some(value) = non_empty(request.refresh_token) {
            self.by_refresh.get(&token_hash(&value))
        } else if let Some(hash) = non_empty(request.refresh_token_hash) {
            self.by_refresh.get(&hash)
        } else {
            return Err(Reply::bad_request(
                codes::TOKEN_LOCATOR_MISSING,
                "The request contains none of 'accessToken', 'accessTokenHash', 'tokenId', 'refreshToken' and 'refreshTokenHash'.",
            ));
        };
        let Some(seq) = located.copied() else {
            return Err(Reply::new(
                StatusCode::NOT_FOUND,
                codes::TOKEN_UPDATE_UNKNOWN,
                "The specified access token does not exist.",
            )
            .action(action::NOT_FOUND));
        };
        let mut access_token = non_empty(request.access_token);
        let new_access = request.access_token_value_updated.then(|| random_value(32));
        let Some(token) = self.tokens.get_mut(&seq) else {
            return Err(Reply::new(
                StatusCode::NOT_FOUND,
                codes::TOKEN_UPDATE_UNKNOWN,
                "The specified access token does not exist.",
            )
            .action(action::NOT_FOUND));
        };
        token.last_used_at = now;
        if request.access_token_expires_at > 0 {
            token.access_token_expires_at = request.access_token_expires_at;
        }
        if request.refresh_token_expires_at > 0 && token.refresh_token_hash.is_some() {
            token.refresh_token_expires_at = request.refresh_token_expires_at;
        }
        if let Some(scopes) = request.scopes {
            // Unsupported scopes are dropped silently (spec §2.1).
            token.scopes = scopes
                .into_iter()
                .filter(|scope| {
                    config
                        .supported_scopes
                        .as_ref()
                        .is_none_or(|supported| supported.contains(scope))
                })
                .collect();
        }
        if let Some(properties) = request.properties {
            token.properties = properties;
        }
        let old_hash = match &new_access {
            Some(value) => token.access_token_hash.replace(token_hash(value)),
            None => None,
        };
        let token = token.clone();
        if let Some(value) = new_access {
            if let Some(old) = old_hash {
                self.by_access.remove(&old);
            }
            self.by_access.insert(token_hash(&value), seq);
            access_token = Some(value);
        }
        Ok(Updated {
            token,
            access_token,
        })
    }

    /// `/auth/token/delete/{id}` (value or hash of an access token). Removes
    /// the whole pair; false when there was none.
    pub(super) fn delete_token(&mut self, identifier: &str) -> bool {
        match self.locate(Index::Access, identifier) {
            Some(seq) => self.remove_token(seq).is_some(),
            None => false,
        }
    }

    /// `/auth/token/revoke`: removes every pair matching all given
    /// criteria, or with `documented_revoke_order` the pairs matching the
    /// first criterion in the documented order (access token, refresh
    /// token, client and/or subject); returns how many.
    pub(super) fn revoke_tokens(
        &mut self,
        request: &RevokeRequest,
        version: Version,
        strictness: &Strictness,
    ) -> Result<usize, Reply> {
        let access = request
            .access_token_identifier
            .as_deref()
            .filter(|v| !v.is_empty());
        let refresh = request
            .refresh_token_identifier
            .as_deref()
            .filter(|v| !v.is_empty());
        let client = request
            .client_identifier
            .as_deref()
            .filter(|v| !v.is_empty());
        let subject = request.subject.as_deref().filter(|v| !v.is_empty());
        if access.is_none() && refresh.is_none() && client.is_none() && subject.is_none() {
            return Err(Reply::bad_request(
                codes::REVOKE_CRITERIA_MISSING,
                "The request contains none of 'accessTokenIdentifier', 'refreshTokenIdentifier', 'clientIdentifier' and 'subject'.",
            ));
        }
        // The documented order: the first criterion given decides alone,
        // except that client and subject combine ([JC]
        // `TokenRevokeRequest`). An identifier that is not a client is
        // not looked at when a token identifier came first.
        let (access, refresh, client, subject) = if strictness.documented_revoke_order {
            match (access, refresh) {
                (Some(access), _) => (Some(access), None, None, None),
                (None, Some(refresh)) => (None, Some(refresh), None, None),
                (None, None) => (None, None, client, subject),
            }
        } else {
            (access, refresh, client, subject)
        };
        let client_id = match client {
            Some(identifier) => Some(
                self.client(identifier, version)
                    .map(|client| client.client_id)
                    .ok_or_else(|| {
                        Reply::new(
                            StatusCode::NOT_FOUND,
                            codes::REVOKE_CLIENT_UNKNOWN,
                            format!("The client ({identifier}) does not exist."),
                        )
                    })?,
            ),
            None => None,
        };
        let by_access = access.map(|value| self.locate(Index::Access, value));
        let by_refresh = refresh.map(|value| self.locate(Index::Refresh, value));
        let matching: Vec<u64> = self
            .tokens
            .iter()
            .filter(|(seq, token)| {
                by_access.is_none_or(|found| found == Some(**seq))
                    && by_refresh.is_none_or(|found| found == Some(**seq))
                    && client_id.is_none_or(|id| token.client_id == id)
                    && subject.is_none_or(|s| token.subject.as_deref() == Some(s))
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &matching {
            self.remove_token(*seq);
        }
        Ok(matching.len())
    }

    /// Deletes the pairs nobody used for `after` milliseconds or more,
    /// whatever their expiry ([KB-SWEEP]); returns how many. Authlete
    /// sweeps in the background at times of its choosing: the emulator
    /// deletes a pair the first time it looks after the pair became due,
    /// the earliest a real sweep could, which is the reading least kind to
    /// a client counting on the grace of a slow sweeper.
    pub(super) fn sweep_unused(&mut self, now: i64, after: i64) -> usize {
        let cutoff = now.saturating_sub(after);
        if self.earliest_use > cutoff {
            return 0;
        }
        let swept = self.remove_tokens_where(|token| token.last_used_at <= cutoff);
        self.earliest_use = self
            .tokens
            .values()
            .map(|token| token.last_used_at)
            .min()
            .unwrap_or(i64::MAX);
        swept
    }

    /// `/auth/token/get/list`: pairs `start..end` matching the filters, and
    /// the total. Dead pairs are purged first, as Authlete deletes expired
    /// tokens.
    pub(super) fn list_tokens(
        &mut self,
        client_id: Option<u64>,
        subject: Option<&str>,
        start: usize,
        end: usize,
        now: i64,
    ) -> (Vec<Token>, usize) {
        self.remove_tokens_where(|token| token.dead(now));
        let matching = self.tokens.values().filter(|token| {
            client_id.is_none_or(|id| token.client_id == id)
                && subject.is_none_or(|s| token.subject.as_deref() == Some(s))
        });
        let total = matching.clone().count();
        let page = matching
            .skip(start)
            .take(end.saturating_sub(start))
            .cloned()
            .collect();
        (page, total)
    }

    /// `/auth/introspection`. An expired access token is removed on the
    /// first look ([KB-EXPIRED]); its pair survives if the refresh token is
    /// still alive, so a refresh keeps working (inferred: the KB speaks of
    /// the access token only).
    pub(super) fn introspect(&mut self, access_token: &str, now: i64) -> Introspected {
        let hash = token_hash(access_token);
        let Some(seq) = self.by_access.get(&hash).copied() else {
            return Introspected::Unknown;
        };
        let Some(token) = self.tokens.get_mut(&seq) else {
            return Introspected::Unknown;
        };
        if token.access_token_expires_at > now {
            token.last_used_at = now;
            return Introspected::Valid(token.clone());
        }
        if token.refresh_token_alive(now) {
            token.access_token_hash = None;
            self.by_access.remove(&hash);
        } else {
            self.remove_token(seq);
        }
        Introspected::Expired
    }

    /// The live pair a token value (or hash) belongs to, for
    /// `/auth/introspection/standard`: the refresh token table is searched
    /// first when `refresh_first`. Returns the pair and whether the value
    /// was its refresh token. Nothing is deleted; a pair found counts as
    /// used.
    pub(super) fn find_active(
        &mut self,
        value: &str,
        refresh_first: bool,
        now: i64,
    ) -> Option<(Token, bool)> {
        let order = if refresh_first {
            [Index::Refresh, Index::Access]
        } else {
            [Index::Access, Index::Refresh]
        };
        let (seq, is_refresh) = order.into_iter().find_map(|index| {
            let seq = self.locate(index, value)?;
            let token = self.tokens.get(&seq)?;
            let alive = match index {
                Index::Access => token.access_token_alive(now),
                Index::Refresh => token.refresh_token_alive(now),
            };
            alive.then_some((seq, index == Index::Refresh))
        })?;
        let token = self.tokens.get_mut(&seq)?;
        token.last_used_at = now;
        Some((token.clone(), is_refresh))
    }

    /// `/auth/revocation`: removes the pair the token belongs to, whichever
    /// of the two it is ([KB-REVOKE]). `Ok(false)` for an unknown token
    /// (RFC 7009: not an error); `Err(())` when the pair belongs to
    /// another client.
    pub(super) fn revoke_pair(
        &mut self,
        value: &str,
        refresh_first: bool,
        client_id: u64,
    ) -> Result<bool, ()> {
        let order = if refresh_first {
            [Index::Refresh, Index::Access]
        } else {
            [Index::Access, Index::Refresh]
        };
        let Some(seq) = order
            .into_iter()
            .find_map(|index| self.locate(index, value))
        else {
            return Ok(false);
        };
        match self.tokens.get(&seq) {
            Some(token) if token.client_id != client_id => Err(()),
            Some(_) => Ok(self.remove_token(seq).is_some()),
            None => Ok(false),
        }
    }

    /// `/auth/token` with `grant_type=refresh_token`, for an authenticated
    /// client. Issues a new access token (the old one dies: a refresh
    /// always invalidates its coupled access token) and, unless the service
    /// keeps refresh tokens, a new refresh token replacing the presented
    /// one.
    pub(super) fn refresh(
        &mut self,
        client_id: u64,
        refresh_token: &str,
        config: &Config,
        now: i64,
    ) -> Result<Refreshed, Reply> {
        let hash = token_hash(refresh_token);
        let Some(seq) = self.by_refresh.get(&hash).copied() else {
            return Err(Reply::oauth_error(
                codes::REFRESH_TOKEN_UNKNOWN,
                action::BAD_REQUEST,
                "invalid_grant",
                "The refresh token does not exist.",
            ));
        };
        let Some(mut token) = self.tokens.get(&seq).cloned() else {
            return Err(Reply::oauth_error(
                codes::REFRESH_TOKEN_UNKNOWN,
                action::BAD_REQUEST,
                "invalid_grant",
                "The refresh token does not exist.",
            ));
        };
        if token.refresh_token_expires_at <= now {
            return Err(Reply::oauth_error(
                codes::REFRESH_TOKEN_EXPIRED,
                action::BAD_REQUEST,
                "invalid_grant",
                "The refresh token has expired.",
            ));
        }
        if token.client_id != client_id {
            return Err(Reply::oauth_error(
                codes::REFRESH_TOKEN_WRONG_CLIENT,
                action::BAD_REQUEST,
                "invalid_grant",
                "The refresh token was not issued to the client.",
            ));
        }
        self.remove_token(seq);
        let access_token = random_value(32);
        token.access_token_hash = Some(token_hash(&access_token));
        token.access_token_expires_at =
            now.saturating_add(DEFAULT_ACCESS_TOKEN_DURATION_S.saturating_mul(1000));
        let refresh_token = if config.refresh_token_kept {
            refresh_token.to_owned()
        } else {
            let value = random_value(32);
            token.refresh_token_hash = Some(token_hash(&value));
            token.refresh_token_expires_at =
                now.saturating_add(DEFAULT_REFRESH_TOKEN_DURATION_S.saturating_mul(1000));
            value
        };
        token.last_refreshed_at = now;
        token.last_used_at = now;
        self.enforce_single_token(config, &token);
        self.insert_token_at(seq, token.clone());
        Ok(Refreshed {
            token,
            access_token,
            refresh_token,
        })
    }

    /// The pair holding this access token value.
    pub(super) fn token_by_access_token(&self, value: &str) -> Option<&Token> {
        self.by_access
            .get(&token_hash(value))
            .and_then(|seq| self.tokens.get(seq))
    }

    /// The pair holding this refresh token value.
    pub(super) fn token_by_refresh_token(&self, value: &str) -> Option<&Token> {
        self.by_refresh
            .get(&token_hash(value))
            .and_then(|seq| self.tokens.get(seq))
    }

    /// Every pair, in creation order.
    pub(super) fn tokens(&self) -> Vec<Token> {
        self.tokens.values().cloned().collect()
    }

    /// How many pairs are stored.
    pub(super) fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Whether a hash is taken in an index by a pair that is not dead. A
    /// dead holder is purged here: Authlete would have swept it already.
    fn holds(&mut self, index: Index, hash: &str, now: i64) -> bool {
        let map = match index {
            Index::Access => &self.by_access,
            Index::Refresh => &self.by_refresh,
        };
        let Some(seq) = map.get(hash).copied() else {
            return false;
        };
        if self.tokens.get(&seq).is_some_and(|token| token.dead(now)) {
            self.remove_token(seq);
            return false;
        }
        true
    }

    /// A value or a hash, in that order (Authlete's `*Identifier`
    /// parameters accept both).
    fn locate(&self, index: Index, identifier: &str) -> Option<u64> {
        let map = match index {
            Index::Access => &self.by_access,
            Index::Refresh => &self.by_refresh,
        };
        map.get(&token_hash(identifier))
            .or_else(|| map.get(identifier))
            .copied()
    }

    fn token_client(
        &self,
        request: &TokenCreateRequest,
        version: Version,
        strictness: &Strictness,
    ) -> Result<u64, Reply> {
        let numeric = match &request.client_id {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) => Some(number.to_string()),
            Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
            Some(_) => Some(String::new()),
        };
        let numeric = numeric.filter(|text| text != "0");
        let identifier = match version {
            Version::V2 => {
                let Some(text) = numeric else {
                    return Err(Reply::bad_request(
                        codes::CLIENT_ID_MISSING,
                        "The request does not contain 'clientId'.",
                    ));
                };
                if text.parse::<u64>().is_err() {
                    return Err(Reply::bad_request(
                        codes::CLIENT_ID_NOT_NUMERIC,
                        "'clientId' must be a numeric client ID.",
                    ));
                }
                text
            }
            Version::V3 => match non_empty(request.client_identifier.clone()).or(numeric) {
                // `clientId` is an int64 in the schema; only
                // `clientIdentifier` may carry an alias.
                Some(text)
                    if strictness.documented_aliases
                        && non_empty(request.client_identifier.clone()).is_none()
                        && text.parse::<u64>().is_err() =>
                {
                    return Err(Reply::bad_request(
                        codes::CLIENT_ID_NOT_NUMERIC,
                        "'clientId' must be a numeric client ID; use 'clientIdentifier' for an alias.",
                    ));
                }
                Some(text) => text,
                None => {
                    return Err(Reply::bad_request(
                        codes::CLIENT_ID_MISSING,
                        "The request contains neither 'clientId' nor 'clientIdentifier'.",
                    ));
                }
            },
        };
        let client = match version {
            // v2 `clientId` is numeric only: no alias lookup.
            Version::V2 => identifier
                .parse::<u64>()
                .ok()
                .and_then(|id| self.client_by_id(id)),
            Version::V3 => self.client(&identifier, version),
        };
        client.map(|client| client.client_id).ok_or_else(|| {
            Reply::bad_request(
                codes::TOKEN_CLIENT_UNKNOWN,
                format!("The client ({identifier}) does not exist."),
            )
        })
    }

    /// `singleAccessTokenPerSubject` (the service's, or with
    /// `client_single_access_token` the client's): issuing a token for a
    /// subject and client invalidates the others of that subject and client
    /// (not for client credentials). Whether `/auth/token/create` triggers
    /// it is undocumented; the emulator assumes it does (spec quick fact 9).
    fn enforce_single_token(&mut self, config: &Config, token: &Token) {
        let by_client = config.strictness.client_single_access_token
            && self
                .client_by_id(token.client_id)
                .is_some_and(Client::single_access_token_per_subject);
        if !(config.single_access_token_per_subject || by_client)
            || token.grant_type == GrantType::ClientCredentials
        {
            return;
        }
        let Some(subject) = token.subject.clone() else {
            return;
        };
        let client_id = token.client_id;
        self.remove_tokens_where(|other| {
            other.client_id == client_id && other.subject.as_deref() == Some(subject.as_str())
        });
    }

    fn insert_token(&mut self, token: Token) {
        self.next_token_seq += 1;
        let seq = self.next_token_seq;
        self.insert_token_at(seq, token);
    }

    fn insert_token_at(&mut self, seq: u64, token: Token) {
        if let Some(hash) = &token.access_token_hash {
            self.by_access.insert(hash.clone(), seq);
        }
        if let Some(hash) = &token.refresh_token_hash {
            self.by_refresh.insert(hash.clone(), seq);
        }
        self.by_token_id.insert(token.token_id.clone(), seq);
        self.earliest_use = self.earliest_use.min(token.last_used_at);
        self.tokens.insert(seq, token);
    }

    fn remove_token(&mut self, seq: u64) -> Option<Token> {
        let token = self.tokens.remove(&seq)?;
        if let Some(hash) = &token.access_token_hash {
            self.by_access.remove(hash);
        }
        if let Some(hash) = &token.refresh_token_hash {
            self.by_refresh.remove(hash);
        }
        self.by_token_id.remove(&token.token_id);
        Some(token)
    }

    fn remove_tokens_where(&mut self, predicate: impl Fn(&Token) -> bool) -> usize {
        let doomed: Vec<u64> = self
            .tokens
            .iter()
            .filter(|(_, token)| predicate(token))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &doomed {
            self.remove_token(*seq);
        }
        doomed.len()
    }

    // ---- batches ------------------------------------------------------

    /// Registers a new batch request and returns its id.
    pub(super) fn start_batch(&mut self, now: i64) -> String {
        let request_id = random_value(16);
        self.batches.insert(
            request_id.clone(),
            BatchStatus {
                batch_kind: "CREATE",
                request_id: request_id.clone(),
                result: None,
                token_count: 0,
                error_code: None,
                error_description: None,
                created_at: now,
                modified_at: now,
            },
        );
        request_id
    }

    /// Records one more token created by a batch.
    pub(super) fn batch_progress(&mut self, request_id: &str, now: i64) {
        if let Some(status) = self.batches.get_mut(request_id) {
            status.token_count += 1;
            status.modified_at = now;
        }
    }

    /// Marks a batch finished: `None` for success, or the failing item's
    /// result code and description (the batch stops there, partially
    /// completed).
    pub(super) fn finish_batch(
        &mut self,
        request_id: &str,
        failure: Option<(&'static str, String)>,
        now: i64,
    ) {
        if let Some(status) = self.batches.get_mut(request_id) {
            status.result = Some(if failure.is_some() {
                "FAILED"
            } else {
                "SUCCEEDED"
            });
            if let Some((code, description)) = failure {
                status.error_code = Some(code);
                status.error_description = Some(description);
            }
            status.modified_at = now;
        }
    }

    /// A batch's status.
    pub(super) fn batch(&self, request_id: &str) -> Option<&BatchStatus> {
        self.batches.get(request_id)
    }

    /// How many batches were requested.
    pub(super) fn batch_count(&self) -> usize {
        self.batches.len()
    }
}

/// Which token table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Index {
    Access,
    Refresh,
}

/// The answer to a token value whose hash is already held, as the
/// service's [`DuplicateToken`] reading says.
fn duplicate(config: &Config, index: Index) -> Reply {
    match (config.strictness.duplicate_token, index) {
        (DuplicateToken::ServerError, _) => server_error(),
        (DuplicateToken::InventedCodes, Index::Access) => Reply::bad_request(
            codes::ACCESS_TOKEN_DUPLICATE,
            "The access token cannot be inserted because its hash value already exists.",
        ),
        (DuplicateToken::InventedCodes, Index::Refresh) => Reply::bad_request(
            codes::REFRESH_TOKEN_DUPLICATE,
            "The refresh token cannot be inserted because its hash value already exists.",
        ),
    }
}

/// Authlete's generic failure: 500, `A001101`, action
/// `INTERNAL_SERVER_ERROR`.
pub(super) fn server_error() -> Reply {
    Reply::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        codes::SERVER_ERROR,
        "Authlete Server error.",
    )
    .action(action::INTERNAL_SERVER_ERROR)
}

/// The duplicate answer for a dry-run batch item repeating a value of an
/// earlier item of the same batch.
pub(super) fn duplicate_in_batch(config: &Config, refresh: bool) -> Reply {
    duplicate(
        config,
        if refresh {
            Index::Refresh
        } else {
            Index::Access
        },
    )
}

/// Applies the `/client/secret/update` rules: 1 to 86 characters from
/// `A-Z a-z 0-9 - _` (spec §4.3).
fn validate_client_secret(secret: String) -> Result<String, Reply> {
    if secret.is_empty() {
        return Err(Reply::new(
            StatusCode::BAD_REQUEST,
            codes::CLIENT_SECRET_MISSING,
            "The request does not contain a non-empty 'clientSecret'.",
        ));
    }
    if let Some(bad) = secret
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(Reply::new(
            StatusCode::BAD_REQUEST,
            codes::CLIENT_SECRET_CHARSET,
            format!(
                "The new client secret contains a character ({bad:?}) outside the allowed set: A-Z, a-z, 0-9, '-' and '_'."
            ),
        ));
    }
    let length = secret.chars().count();
    if length > MAX_CLIENT_SECRET_CHARS {
        return Err(Reply::new(
            StatusCode::BAD_REQUEST,
            codes::CLIENT_SECRET_TOO_LONG,
            format!(
                "The new client secret is {length} characters long; the maximum is {MAX_CLIENT_SECRET_CHARS}."
            ),
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            strictness: Strictness::lenient(),
            ..Config::default()
        }
    }

    fn request(json: serde_json::Value) -> TokenCreateRequest {
        serde_json::from_value(json).expect("valid request")
    }

    fn client(state: &mut State, version: Version, alias: Option<&str>) -> Client {
        let request: ClientRequest = serde_json::from_value(serde_json::json!({
            "clientIdAlias": alias,
            "clientIdAliasEnabled": true,
        }))
        .expect("valid client");
        state
            .create_client(request, version, &Strictness::lenient(), 1_000)
            .expect("created")
    }

    #[test]
    fn token_hash_is_43_base64url_characters() {
        let hash = token_hash("existingAccessTokenValue");
        assert_eq!(hash.len(), 43);
        assert!(
            hash.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(random_value(32).len(), 43);
        assert_eq!(random_value(64).len(), 86);
    }

    #[test]
    fn duplicate_hashes_are_refused_until_the_holder_is_dead() {
        let mut state = State::default();
        let c = client(&mut state, Version::V3, Some("c1"));
        let make = |at: &str, rt: &str| {
            request(serde_json::json!({
                "grantType": "AUTHORIZATION_CODE", "clientIdentifier": "c1",
                "subject": "alice", "accessToken": at, "refreshToken": rt,
                "accessTokenDuration": 10, "refreshTokenDuration": 20,
            }))
        };
        let created = state
            .create_token(make("at1", "rt1"), Version::V3, &config(), 0, false)
            .expect("first create");
        assert_eq!(created.token.client_id, c.client_id);
        let dup_at = state
            .create_token(make("at1", "rt2"), Version::V3, &config(), 0, false)
            .expect_err("duplicate access token");
        assert_eq!(dup_at.code(), codes::ACCESS_TOKEN_DUPLICATE);
        let dup_rt = state
            .create_token(make("at2", "rt1"), Version::V3, &config(), 0, false)
            .expect_err("duplicate refresh token");
        assert_eq!(dup_rt.code(), codes::REFRESH_TOKEN_DUPLICATE);
        // Once both tokens expired (20 s), the hashes are free again.
        state
            .create_token(make("at1", "rt1"), Version::V3, &config(), 21_000, false)
            .expect("dead pair swept");
        assert_eq!(state.token_count(), 1);
    }

    #[test]
    fn alias_rules_differ_between_versions() {
        let mut state = State::default();
        let v3 = client(&mut state, Version::V3, None);
        assert_eq!(v3.client_id_alias, Some(v3.client_id.to_string()));
        let request: ClientRequest =
            serde_json::from_value(serde_json::json!({"clientIdAlias": "legacy"})).expect("json");
        let v2 = state
            .create_client(request, Version::V2, &Strictness::lenient(), 0)
            .expect("created");
        assert!(!v2.client_id_alias_enabled);
        assert!(state.client("legacy", Version::V2).is_none());
        assert!(state.client("legacy", Version::V3).is_some());
        let taken: ClientRequest =
            serde_json::from_value(serde_json::json!({"clientIdAlias": "legacy"})).expect("json");
        assert!(
            state
                .create_client(taken, Version::V3, &Strictness::lenient(), 0)
                .is_err()
        );
        let numeric: ClientRequest =
            serde_json::from_value(serde_json::json!({"clientIdAlias": v3.client_id.to_string()}))
                .expect("json");
        assert!(
            state
                .create_client(numeric, Version::V2, &Strictness::lenient(), 0)
                .is_err()
        );
    }

    #[test]
    fn client_secret_rules() {
        assert!(validate_client_secret("abc-DEF_123".to_owned()).is_ok());
        assert!(validate_client_secret("a".repeat(86)).is_ok());
        let long = validate_client_secret("a".repeat(87)).expect_err("too long");
        assert_eq!(long.code(), codes::CLIENT_SECRET_TOO_LONG);
        let bad = validate_client_secret("abc+def".to_owned()).expect_err("charset");
        assert_eq!(bad.code(), codes::CLIENT_SECRET_CHARSET);
        assert!(validate_client_secret(String::new()).is_err());
    }

    #[test]
    fn the_sweep_deletes_pairs_unused_for_long_enough_and_use_postpones_it() {
        let mut state = State::default();
        client(&mut state, Version::V3, Some("c1"));
        for (at, rt) in [("at1", "rt1"), ("at2", "rt2")] {
            let req = request(serde_json::json!({
                "grantType": "AUTHORIZATION_CODE", "clientIdentifier": "c1",
                "subject": "bob", "accessToken": at, "refreshToken": rt,
            }));
            state
                .create_token(req, Version::V3, &config(), 0, false)
                .expect("created");
        }
        assert_eq!(state.sweep_unused(999, 1_000), 0);
        assert!(matches!(
            state.introspect("at1", 500),
            Introspected::Valid(_)
        ));
        assert_eq!(state.sweep_unused(1_000, 1_000), 1, "at2 unused since 0");
        assert!(state.token_by_refresh_token("rt2").is_none());
        assert_eq!(state.sweep_unused(1_499, 1_000), 0, "at1 used at 500");
        assert!(state.find_active("rt1", true, 1_400).is_some());
        assert_eq!(state.sweep_unused(2_399, 1_000), 0, "rt1 used at 1400");
        assert_eq!(state.sweep_unused(2_400, 1_000), 1);
        assert_eq!(state.token_count(), 0);
    }

    #[test]
    fn revoke_criteria_combine_or_follow_the_documented_order() {
        let strict = Strictness::real();
        let lenient = Strictness::lenient();
        for strictness in [lenient, strict] {
            let mut state = State::default();
            client(&mut state, Version::V3, Some("c1"));
            client(&mut state, Version::V3, Some("c2"));
            for (alias, at) in [("c1", "a"), ("c1", "b"), ("c2", "c")] {
                let req = request(serde_json::json!({
                    "grantType": "AUTHORIZATION_CODE", "clientIdentifier": alias,
                    "subject": "bob", "accessToken": at,
                }));
                state
                    .create_token(req, Version::V3, &config(), 0, false)
                    .expect("created");
            }
            let revoke = |json| -> RevokeRequest { serde_json::from_value(json).expect("json") };
            // Token "c" belongs to c2: a c1 filter stops it only when
            // criteria combine.
            let guarded = state
                .revoke_tokens(
                    &revoke(
                        serde_json::json!({"accessTokenIdentifier": "c", "clientIdentifier": "c1"}),
                    ),
                    Version::V3,
                    &strictness,
                )
                .expect("revoked");
            assert_eq!(guarded, usize::from(strictness.documented_revoke_order));
            let all = state
                .revoke_tokens(
                    &revoke(serde_json::json!({"clientIdentifier": "c1", "subject": "bob"})),
                    Version::V3,
                    &strictness,
                )
                .expect("revoked");
            assert_eq!(all, 2);
        }
    }

    #[test]
    fn expired_access_token_is_removed_but_a_live_refresh_token_survives() {
        let mut state = State::default();
        client(&mut state, Version::V3, Some("c1"));
        let req = request(serde_json::json!({
            "grantType": "AUTHORIZATION_CODE", "clientIdentifier": "c1", "subject": "bob",
            "accessToken": "at", "refreshToken": "rt", "accessTokenDuration": 1,
        }));
        state
            .create_token(req, Version::V3, &config(), 0, false)
            .expect("created");
        assert!(matches!(
            state.introspect("at", 500),
            Introspected::Valid(_)
        ));
        assert!(matches!(
            state.introspect("at", 1_000),
            Introspected::Expired
        ));
        assert!(matches!(
            state.introspect("at", 1_000),
            Introspected::Unknown
        ));
        assert!(state.token_by_refresh_token("rt").is_some());
    }
}
