//! An in-memory Authlete service: the target of a Connect2id → Authlete
//! migration, faithful to `spec/authlete.md` where the spec is confirmed
//! and explicit about every guess where it is not.
//!
//! Where the team's reading and the real service may differ, the emulator
//! plays either reading: [`Config::strictness`] holds one switch per
//! question, [`Strictness::lenient`] (the default, the reading the product
//! was written against) or [`Strictness::real`] (the documented or, where
//! the material is silent, the most hostile reading). The switch table is
//! in `strictness.rs`; below, *lenient:* / *strict:* mark what a switch
//! changes.
//!
//! One [`Authlete`] is one service, reachable through both API generations
//! at once over the same data:
//!
//! | | paths | authentication |
//! |---|---|---|
//! | v2 | `/api/...` | HTTP Basic, service API key : API secret |
//! | v3 | `/api/{serviceId}/...` | `Authorization: Bearer <service access token>` |
//!
//! A missing `Authorization` header answers 401 `A001202`, wrong
//! credentials (or the wrong scheme for the path) 401 `A001203`. A v3 path
//! whose numeric service id is not this service answers 403 `A001204`
//! after the token checked out (a service access token is scoped to one
//! service); a path that is no API answers 404 `A001205`, and a known path
//! with the wrong method 405 `A001206`. `/api/service/get/list` has no
//! service id in either version; its version follows the scheme of the
//! `Authorization` header.
//!
//! Paths (`documented_paths`). *Strict:* exactly the documented layout and
//! method per version (v2/v3 OpenAPI, `authlete-java-common` path
//! constants): v2 `GET /api/service/get/{apiKey}`, v3
//! `GET /api/{serviceId}/service/get`, the service list only at
//! `/api/service/get/list`, `client/update` by `POST` only,
//! `client/secret/refresh` by `GET` only; anything else is 404 (or 405 for
//! a known path). *Lenient:* also v2 `/api/service/get` (no key), v3
//! `/api/{serviceId}/service/get/list`, `PUT` on `client/update` and `POST`
//! on `client/secret/refresh`.
//!
//! v2 service credentials (`owner_credentials`). The v2 service APIs are
//! documented with the service *owner*'s Basic credentials
//! ([`Config::owner_api_key`] / [`Config::owner_api_secret`]). *Strict:*
//! the service's own key and secret get 401 `A001203` there. *Lenient:*
//! either pair passes.
//!
//! Every answer, 2xx or 4xx, is the Authlete envelope
//! `{"resultCode": "A...", "resultMessage": "[A...] ...", "action": ...}`
//! (`action` where the API has one) plus the API's fields; only `DELETE`s
//! answer a bare 204. Client and service objects get the envelope fields
//! next to theirs (real Authlete returns those bare; the spec's §3.3 says
//! every response extends the envelope, and extra fields are harmless to
//! a reader). The result codes, which of them are confirmed and which
//! inferred, are listed in `envelope.rs`; the anatomy is spec §1.3.
//!
//! # APIs (same logic under both prefixes)
//!
//! - `POST /auth/token/create` (JSON or form; `properties` JSON only):
//!   `grantType` required, `REFRESH_TOKEN` refused. v2 requires a numeric
//!   `clientId` (number or digit string); v3 takes `clientIdentifier` (id
//!   or alias, preferred) or `clientId`. `subject` required except for
//!   `CLIENT_CREDENTIALS` (ignored there) and `JWT_BEARER` (optional);
//!   ASCII, at most 100 characters. With `supported_scopes` set, every
//!   scope must be in it. Durations in seconds, 0 = service default
//!   (3600 s access, 864000 s refresh). `accessToken` / `refreshToken`
//!   import caller-chosen values; **if the hash of either already exists
//!   the call fails**; there is no upsert. How it fails is undocumented
//!   (`duplicate_token`): *lenient:* 400, action `BAD_REQUEST`, the
//!   invented `A109208` (access) or `A109209` (refresh) with a message
//!   saying the hash "already exists"; *strict:* 500, action
//!   `INTERNAL_SERVER_ERROR`, `A001101` "Authlete Server error.", nothing
//!   saying "duplicate" (a client must confirm by introspection).
//!   *Strict* (`documented_aliases`): v3 `clientId` must be numeric like
//!   v2's (an int64 in the schema); only `clientIdentifier` takes an alias.
//!   `IMPLICIT` and `CLIENT_CREDENTIALS` never get a refresh token (a
//!   supplied one is ignored); other grants get the supplied one or a
//!   generated one.
//! - `POST /auth/token/create/batch[?dryRun=true]` (v3 only; v2 answers
//!   404 `A001205`): a JSON array of create requests, each of which must
//!   carry `accessToken`. Answers `A482001` with a `requestId` at once and
//!   works in a background task; items are applied in order and the first
//!   failing one stops the batch (`FAILED`, partially completed, with that
//!   item's result code as `errorCode`, so `A001101` for a duplicate in
//!   the strict reading). `GET` or `POST
//!   /auth/token/create/batch/status/{requestId}` answers `A447001` with
//!   `status.{batchKind, requestId, result, tokenCount, errorCode,
//!   errorDescription, createdAt, modifiedAt}`. A dry run checks every
//!   item (duplicates within the batch included) and stores nothing;
//!   `tokenCount` is then the number that would have been created. How
//!   long a batch stays in progress (`batch_duration`): *lenient:* it runs
//!   as soon as it is accepted, done within milliseconds, `result` `null`
//!   meanwhile; *strict:* it waits `max(1 s, 2 ms a token)` (invented: the
//!   API is documented as asynchronous, spec §5.2, with no figure) before
//!   any item is applied, so none of its tokens exists until it completed,
//!   and meanwhile its status has no `result` key at all, `tokenCount` 0
//!   (the spec is silent on the in-progress shape and the SDK's `Result`
//!   knows only `SUCCEEDED` and `FAILED`: the most hostile plausible
//!   reading, against a client that expects `null` or a third value).
//! - `POST /auth/token/update`: located by `accessToken`, then
//!   `accessTokenHash`, `tokenId`, `refreshToken`, `refreshTokenHash`;
//!   sets `accessTokenExpiresAt` / `refreshTokenExpiresAt` (epoch ms, 0
//!   keeps), `scopes` (unsupported ones dropped), `properties`;
//!   `accessTokenValueUpdated` makes a new access token value. Unknown
//!   token: 404, action `NOT_FOUND`. A past expiry is accepted (the way to
//!   expire a token in a test without waiting).
//! - `DELETE /auth/token/delete/{accessTokenValueOrHash}`: removes the pair,
//!   204; unknown 404 `A313301`.
//! - `POST /auth/token/revoke`: `accessTokenIdentifier`,
//!   `refreshTokenIdentifier` (value or hash), `clientIdentifier` (id or
//!   alias), `subject`; answers `count`. At least one criterion is
//!   required (inferred, 400 `A312201`). A token identifier removes exactly
//!   the one pair holding it; client and/or subject remove every matching
//!   pair. Combined criteria (`documented_revoke_order`): *lenient:* all
//!   given ones must match; *strict:* the first of access token, refresh
//!   token, client/subject wins and the rest are ignored (\[JC\]
//!   `TokenRevokeRequest`), so a client filter does not guard a token
//!   identifier.
//! - `GET /auth/token/get/list?clientIdentifier=&subject=&start=&end=`
//!   (`end` exclusive, default 5): `start`, `end`, `totalCount`, `client`
//!   (when filtered by client), `subject`, `accessTokens[]` with hashes,
//!   never values.
//! - `POST /auth/introspection` (`token`, optional `scopes`, `subject`):
//!   action `OK` with `usable`, `existent`, `sufficient`, `refreshable`,
//!   `subject`, `scopes`, `clientId`, `clientIdAlias`, `clientIdAliasUsed`,
//!   `expiresAt`, `grantType`, `properties`; unknown token `UNAUTHORIZED`
//!   `A057302`; **an expired access token answers `UNAUTHORIZED` and is
//!   deleted** ([KB-EXPIRED]; later calls see "does not exist"). If its
//!   refresh token is still alive the pair stays so that the refresh works
//!   (inferred: the KB speaks of the access token only). A token lacking a
//!   requested scope or subject: `FORBIDDEN`.
//! - `POST /auth/introspection/standard` (`parameters`, an RFC 7662 form;
//!   `token_type_hint=refresh_token` searches refresh tokens first):
//!   action `OK`, `responseContent` = `{"active", "sub", "client_id",
//!   "scope", "exp", ...}`. `client_id` is the alias when the pair was
//!   created with `clientIdAliasUsed` (inferred, spec §7 question 5).
//! - `POST /auth/token` (`parameters` with `grant_type=refresh_token`,
//!   `clientId` / `clientSecret` or `client_id` / `client_secret` in the
//!   parameters): the client is authenticated by numeric id or alias (v2:
//!   alias only if enabled) and, unless `PUBLIC`, by secret, else action
//!   `INVALID_CLIENT`. The refresh token must exist, be unexpired and
//!   belong to the client, else `BAD_REQUEST` / `invalid_grant`. A new
//!   access token replaces the old one; with `refresh_token_kept = false`
//!   (rotation, the default) a new refresh token replaces the presented
//!   one, which becomes unknown; otherwise the same one stays. Other grant
//!   types: `BAD_REQUEST` / `unsupported_grant_type`. A `scope` parameter
//!   is ignored (narrowing on refresh is not emulated).
//! - `POST /auth/revocation` (`parameters` = `token=...&token_type_hint=...`,
//!   client credentials as above): removes **the whole pair** whichever
//!   token is presented ([KB-REVOKE]); action `OK`, no `responseContent`
//!   (the endpoint answers an empty 200). An unknown token is `OK` too (RFC
//!   7009; Authlete does the same). A token of another client:
//!   `BAD_REQUEST` / `unauthorized_client` (inferred).
//! - `POST /client/create` (a `Client`; `clientId`, `clientSecret`,
//!   read-only and unknown fields ignored): generates a numeric `clientId`
//!   (11–14 digits) and an 86-character `clientSecret`. Besides the fields
//!   it interprets it stores every documented writable field (`jwks`,
//!   `jwksUri`, the `tlsClientAuth*` mTLS fields, `tokenAuthSignAlg`,
//!   `idTokenSignAlg` and the other algorithms, `dpopRequired`,
//!   `parRequired`, `subjectType`, `sectorIdentifierUri`,
//!   `singleAccessTokenPerSubject`, ...; list in `metadata.rs`) and
//!   returns it on every read. `typed_client_metadata`: *lenient:* values
//!   as given; *strict:* typed as the schema says (`jwks` is a string),
//!   enums (`tokenAuthMethod`, `responseTypes`, algorithms, `subjectType`)
//!   checked, else 400 `A121202`. Aliases are unique per service and
//!   never equal another client's numeric id (400 `A121201`).
//!   v3: the alias defaults to the id and is always enabled. v2: the alias
//!   counts only with `clientIdAliasEnabled=true` (the emulated service has
//!   aliases enabled).
//! - `GET /client/get/{clientIdOrAlias}`, `GET /client/get/list?start=&end=`
//!   (`end` default 5), `POST /client/update/{clientId}`, `DELETE
//!   /client/delete/{clientIdOrAlias}` (204; **deletes all of its tokens**,
//!   [KB-DELCLIENT]). Get and delete take an alias (the SDK has taken a
//!   string there since 2.51); update keeps id, secret and `createdAt`.
//!   `documented_aliases`: *lenient:* get, update and delete take an
//!   alias too; *strict:* they take the numeric id only (both SDKs format
//!   update `%d`; get and delete are documented with "a client ID", an
//!   alias there is unverified), an alias is 404. `client_update`: *lenient:* fields the body
//!   omits keep their value (merge); *strict:* they are reset, unset or
//!   empty, the v3 alias to the numeric id, the v2 alias to none (the API
//!   takes a full `Client`, spec §4.4), so a partial body wipes settings
//!   made on the Authlete side.
//! - `POST /client/secret/update/{clientIdentifier}` `{"clientSecret"}`:
//!   1–86 characters from `A-Z a-z 0-9 - _`, else 400 naming the rule;
//!   answers `newClientSecret`, `oldClientSecret`.
//!   `/client/secret/refresh/{clientIdentifier}` (`GET`; lenient paths
//!   also `POST`) generates one.
//! - `GET /service/get` (v2 `/api/service/get/{apiKey}`, another key 404
//!   `A126301`; v3 `/api/{id}/service/get`) and `GET /api/service/get/list`:
//!   `apiKey` (v2: the API key, as a number when numeric; v3: the service
//!   id), `supportedScopes` (`[{name}]`, `null` when any scope is accepted),
//!   `supportedGrantTypes` (all, `REFRESH_TOKEN` included),
//!   `refreshTokenKept`, `singleAccessTokenPerSubject`,
//!   `clientIdAliasEnabled` (true), token durations.
//!
//! With `single_access_token_per_subject`, creating or refreshing a token
//! removes the other pairs of the same subject and client (not for client
//! credentials). Whether `/auth/token/create` does that on a real service
//! is undocumented; the emulator assumes it does (spec quick fact 9). The
//! client's own `singleAccessTokenPerSubject` (`client_single_access_token`):
//! *lenient:* stored, ignored; *strict:* has the same effect for that
//! client, whatever the service's flag says (v2 OpenAPI `Client`).
//!
//! # Token storage
//!
//! Only hashes are stored: SHA-256 of the value, base64url without padding
//! (43 characters, [`token_hash`]), the size Authlete's listings show; the
//! real algorithm is undocumented. Expiry is checked against the clock at
//! each use. Pairs whose tokens have all expired are deleted lazily (when a
//! duplicate check meets one, and on listing), standing in for Authlete's
//! periodic deletion of expired tokens.
//!
//! The sweep of unused tokens (`sweep_unused_after`): Authlete deletes
//! pairs nobody used for 90 days, whatever their expiry ([KB-SWEEP]; "use"
//! is a read or update for a request: creation, `/auth/introspection`,
//! `/auth/introspection/standard`, a refresh at `/auth/token`,
//! `/auth/token/update`; a listing is not). *Lenient:* never. *Strict:*
//! after the configured duration (90 days in [`Strictness::real`], a
//! fraction of a second in tests), checked whenever the data is touched,
//! so a swept token is unknown to every API ("does not exist").
//!
//! The rate limit (`rate_limit`): *lenient:* none; *strict:* a cap per
//! fixed window, 429 `A001209` with `Retry-After` (whole seconds) beyond
//! it. Authlete publishes no limit; see `traffic.rs`. [`Authlete::arrivals`]
//! tells when each API call arrived and how it was answered.
//!
//! **Not emulated:** persistent access tokens
//! (`accessTokenPersistent` answers 400 `A001208`); scope-, client- and
//! service-level duration caps; JWT access tokens; DPoP/mTLS binding.
//!
//! # Emulator controls
//!
//! `/_emulator/knobs` (`GET`, `PUT` a [`KnobSettings`](super::KnobSettings)) and
//! `/_emulator/state` (`GET` counts; `?dataset=clients|tokens` dumps the
//! records, tokens as hashes only) take `Authorization: Bearer <v3 access
//! token>`, keep answering while the emulator plays down and are neither
//! rate limited nor logged as arrivals. For every other request: down
//! drops the connection, then the rate limit answers 429, then the latency
//! is added, then the error rate answers 500 `A001101`.

mod call;
mod endpoints;
mod envelope;
mod front;
mod metadata;
mod server;
mod store;
mod strictness;
mod traffic;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Knobs;
use store::State;
pub use store::{
    ApplicationType, Client, ClientType, GrantType, Pair, Property, Token, token_hash,
};
pub use strictness::{
    BatchDuration, ClientUpdate, DuplicateToken, REAL_BATCH_DURATION, REAL_RATE_LIMIT,
    REAL_SWEEP_UNUSED_AFTER, RateLimit, Strictness, Switch, UnknownSwitch,
};
pub use traffic::{ARRIVAL_LOG_CAPACITY, Arrival};
use traffic::{ArrivalLog, Limiter};

/// The service id `handover emulate --kind authlete` uses unless told
/// otherwise (the example id of `DESIGN.md`).
pub const DEFAULT_SERVICE_ID: u64 = 715_948_317;

/// Settings of the emulated service.
#[derive(Clone)]
pub struct Config {
    /// The service id (v3 path segment; `apiKey` in service objects).
    pub service_id: u64,
    /// v2 Basic user name.
    pub api_key: String,
    /// v2 Basic password.
    pub api_secret: String,
    /// v3 Bearer token (a service access token); also guards
    /// `/_emulator/*`.
    pub access_token: String,
    /// Scopes tokens may carry; `None` accepts any scope.
    pub supported_scopes: Option<Vec<String>>,
    /// `refreshTokenKept`: false rotates refresh tokens on `/auth/token`.
    pub refresh_token_kept: bool,
    /// `singleAccessTokenPerSubject`.
    pub single_access_token_per_subject: bool,
    /// v2 Basic user name of the service *owner*, which the v2 service
    /// APIs take when [`Strictness::owner_credentials`] is on.
    pub owner_api_key: String,
    /// v2 Basic password of the service owner.
    pub owner_api_secret: String,
    /// Which reading of the API the emulator plays.
    pub strictness: Strictness,
}

impl Default for Config {
    /// A service for tests: [`DEFAULT_SERVICE_ID`], fixed throwaway
    /// credentials, any scope, rotation on, one token per subject off,
    /// [`Strictness::lenient`].
    fn default() -> Self {
        Self {
            service_id: DEFAULT_SERVICE_ID,
            api_key: DEFAULT_SERVICE_ID.to_string(),
            api_secret: "emulator-api-secret".to_owned(),
            access_token: "emulator-access-token".to_owned(),
            supported_scopes: None,
            refresh_token_kept: false,
            single_access_token_per_subject: false,
            owner_api_key: DEFAULT_OWNER_API_KEY.to_owned(),
            owner_api_secret: "emulator-owner-secret".to_owned(),
            strictness: Strictness::lenient(),
        }
    }
}

/// The service owner's API key unless configured otherwise.
pub(crate) const DEFAULT_OWNER_API_KEY: &str = "emulator-owner";

impl fmt::Debug for Config {
    // Credentials stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("service_id", &self.service_id)
            .field("api_key", &self.api_key)
            .field("supported_scopes", &self.supported_scopes)
            .field("refresh_token_kept", &self.refresh_token_kept)
            .field(
                "single_access_token_per_subject",
                &self.single_access_token_per_subject,
            )
            .field("owner_api_key", &self.owner_api_key)
            .field("strictness", &self.strictness)
            .finish_non_exhaustive()
    }
}

/// What the emulator's HTTP front and its handle share.
#[derive(Debug)]
struct Shared {
    config: Config,
    knobs: Knobs,
    state: Mutex<State>,
    limiter: Mutex<Limiter>,
    arrivals: Mutex<ArrivalLog>,
}

impl Shared {
    /// The service data, with the tokens unused for too long swept first
    /// when the sweep is on, so that nothing (HTTP or in-process) sees a
    /// token the real service would have deleted. A panic while the lock
    /// was held cannot leave the maps half-updated in a way that matters to
    /// an emulator, so a poisoned lock is simply taken over.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(after) = self.config.strictness.sweep_unused_after {
            let after = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
            let swept = state.sweep_unused(now_ms(), after);
            if swept > 0 {
                tracing::debug!(swept, "swept unused tokens from the authlete emulator");
            }
        }
        state
    }

    /// The rate limiter (see [`lock`]).
    fn limiter(&self) -> MutexGuard<'_, Limiter> {
        lock(&self.limiter)
    }

    /// The arrival log (see [`lock`]).
    fn arrivals(&self) -> MutexGuard<'_, ArrivalLog> {
        lock(&self.arrivals)
    }
}

/// Takes a lock, taking over a poisoned one: a counter or a log cannot be
/// left in a state that matters.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One emulated Authlete service. Cloning is cheap and every clone sees
/// the same data, so a test can keep one to read state back while the
/// server runs.
#[derive(Clone)]
pub struct Authlete {
    shared: Arc<Shared>,
}

impl fmt::Debug for Authlete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authlete")
            .field("service_id", &self.shared.config.service_id)
            .finish_non_exhaustive()
    }
}

impl Authlete {
    /// An empty service.
    pub fn new(config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                knobs: Knobs::default(),
                state: Mutex::new(State::default()),
                limiter: Mutex::new(Limiter::default()),
                arrivals: Mutex::new(ArrivalLog::default()),
            }),
        }
    }

    /// Serves the HTTP API on `listener` until [`Handle::shutdown`].
    pub async fn start(self, listener: TcpListener) -> Handle {
        let addr = listener
            .local_addr()
            .expect("a bound TCP listener has a local address");
        let shutdown = CancellationToken::new();
        let shared = self.shared;
        let handler = move |request, _peer| server::handle(Arc::clone(&shared), request);
        let task = tokio::spawn(crate::http::serve(listener, handler, shutdown.clone()));
        Handle {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Serves a new authorization server built on this service on
    /// `listener`, its endpoints under `base_path` (see `front.rs`): the
    /// server traffic goes to after a cutover to Authlete.
    pub async fn start_front(self, listener: TcpListener, base_path: &str) -> Handle {
        let addr = listener
            .local_addr()
            .expect("a bound TCP listener has a local address");
        let shutdown = CancellationToken::new();
        let shared = self.shared;
        let base_path: Arc<str> = Arc::from(base_path.trim_end_matches('/'));
        let handler = move |request, _peer| {
            front::handle(Arc::clone(&shared), Arc::clone(&base_path), request)
        };
        let task = tokio::spawn(crate::http::serve(listener, handler, shutdown.clone()));
        Handle {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// The behaviour switches (latency, error rate, down).
    pub fn knobs(&self) -> &Knobs {
        &self.shared.knobs
    }

    /// The service settings.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Every client, in creation order.
    pub fn clients(&self) -> Vec<Client> {
        self.shared.state().clients()
    }

    /// The client with this numeric id.
    pub fn client(&self, client_id: u64) -> Option<Client> {
        self.shared.state().client_by_id(client_id).cloned()
    }

    /// The client with this alias (enabled or not).
    pub fn client_by_alias(&self, alias: &str) -> Option<Client> {
        self.shared.state().client_by_alias(alias).cloned()
    }

    /// How many token pairs are stored.
    pub fn token_count(&self) -> usize {
        self.shared.state().token_count()
    }

    /// Every token pair (hashes only), in creation order.
    pub fn tokens(&self) -> Vec<Token> {
        self.shared.state().tokens()
    }

    /// The pair holding this access token value, expired or not.
    pub fn token_by_access_token(&self, value: &str) -> Option<Token> {
        self.shared.state().token_by_access_token(value).cloned()
    }

    /// The pair holding this refresh token value, expired or not.
    pub fn token_by_refresh_token(&self, value: &str) -> Option<Token> {
        self.shared.state().token_by_refresh_token(value).cloned()
    }

    /// The API calls that arrived, oldest first (the last
    /// [`ARRIVAL_LOG_CAPACITY`]), with when and how they were answered.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals().entries()
    }
}

/// A running emulator. Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct Handle {
    /// Where the emulator listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Handle {
    /// `http://addr`, the base URL for both API versions.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (bounded by
    /// [`crate::http::SERVE_DRAIN_TIMEOUT`]) and waits for the server task.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
        {
            tracing::warn!(error = %err, "failed to join the authlete emulator task");
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Options of `handover emulate --kind authlete`.
#[derive(Clone)]
pub struct Options {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The v3 Bearer token (`--api-token`).
    pub api_token: String,
    /// v2 Basic user name; defaults to the service id.
    pub api_key: Option<String>,
    /// v2 Basic password; defaults to the API token.
    pub api_secret: Option<String>,
    /// The service id; [`DEFAULT_SERVICE_ID`] by default.
    pub service_id: u64,
    /// Supported scopes; `None` accepts any.
    pub supported_scopes: Option<Vec<String>>,
    /// `refreshTokenKept`.
    pub refresh_token_kept: bool,
    /// `singleAccessTokenPerSubject`.
    pub single_access_token_per_subject: bool,
    /// Added latency per request (`--latency-ms`).
    pub latency_ms: u64,
    /// Fraction of requests failing with 500 (`--error-rate`).
    pub error_rate: f64,
    /// v2 service owner key (`--owner-api-key`); [`DEFAULT_OWNER_API_KEY`]
    /// by default.
    pub owner_api_key: Option<String>,
    /// v2 service owner secret (`--owner-api-secret`); the API token by
    /// default.
    pub owner_api_secret: Option<String>,
    /// The reading of the API (`--strictness`, `--strict`, `--lenient`).
    pub strictness: Strictness,
}

impl Options {
    /// Defaults for everything but the address and the token.
    pub fn new(listen: SocketAddr, api_token: impl Into<String>) -> Self {
        Self {
            listen,
            api_token: api_token.into(),
            api_key: None,
            api_secret: None,
            service_id: DEFAULT_SERVICE_ID,
            supported_scopes: None,
            refresh_token_kept: false,
            single_access_token_per_subject: false,
            latency_ms: 0,
            error_rate: 0.0,
            owner_api_key: None,
            owner_api_secret: None,
            strictness: Strictness::lenient(),
        }
    }

    fn into_config(self) -> Config {
        Config {
            service_id: self.service_id,
            api_key: self.api_key.unwrap_or_else(|| self.service_id.to_string()),
            api_secret: self.api_secret.unwrap_or_else(|| self.api_token.clone()),
            supported_scopes: self.supported_scopes,
            refresh_token_kept: self.refresh_token_kept,
            single_access_token_per_subject: self.single_access_token_per_subject,
            owner_api_key: self
                .owner_api_key
                .unwrap_or_else(|| DEFAULT_OWNER_API_KEY.to_owned()),
            owner_api_secret: self
                .owner_api_secret
                .unwrap_or_else(|| self.api_token.clone()),
            access_token: self.api_token,
            strictness: self.strictness,
        }
    }
}

impl fmt::Debug for Options {
    // Credentials stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("listen", &self.listen)
            .field("service_id", &self.service_id)
            .field("strictness", &self.strictness)
            .finish_non_exhaustive()
    }
}

/// Why the standalone emulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs a standalone emulator until `shutdown` is cancelled
/// (`handover emulate --kind authlete`).
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), Error> {
    let addr = options.listen;
    let knobs = crate::emulator::KnobSettings {
        latency_ms: Some(options.latency_ms),
        error_rate: Some(options.error_rate),
        ..crate::emulator::KnobSettings::default()
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let authlete = Authlete::new(options.into_config());
    authlete.knobs().apply(&knobs);
    let handle = authlete.clone().start(listener).await;
    let service_id = authlete.config().service_id;
    tracing::info!(
        addr = %handle.addr,
        service_id,
        v2 = %format_args!("{}/api", handle.url()),
        v3 = %format_args!("{}/api/{service_id}", handle.url()),
        strictness = ?authlete.config().strictness,
        "started the authlete emulator"
    );
    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(())
}

/// The current time in epoch milliseconds, Authlete's unit for instants.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
