//! An in-memory Connect2id server, faithful to `spec/connect2id.md`, for
//! tests, the demo and rehearsals (`handover emulate --kind connect2id`).
//!
//! # Surface
//!
//! Every path is served under `base_path` (e.g. `/c2id`) and nowhere else:
//! discovery (`/.well-known/openid-configuration`), `/jwks.json`,
//! `/clients`, `/token`, `/token/introspect`, `/token/revoke`,
//! `/authz-sessions/rest/v3`, `/direct-authz/rest/v2`,
//! `/logout-sessions/rest/v1`, `/authz-store/rest/v3/{authorizations,
//! revocation, inspection}` and `/session-store/rest/v2/sessions`, plus the
//! test endpoints `/_emulator/knobs` and `/_emulator/state`. Each management
//! API checks its own bearer token ([`ApiTokens`]); a missing or wrong one
//! gets `401 {"error": "invalid_token"}`. Errors are
//! `{"error", "error_description"}` JSON; every JSON answer carries
//! `Cache-Control: no-store`. The exports (`GET /clients`,
//! `GET /authz-store/rest/v3/authorizations`,
//! `GET /session-store/rest/v2/sessions`) stream chunk by chunk.
//!
//! # Keys and portability
//!
//! All unguessable values derive from the [`JwkSet`]: SIDs, codes and
//! identifier access tokens are `<key>.<hmac>` (HMAC-SHA256 with the `hmac`
//! key, first 16 bytes), refresh tokens are AES-GCM encrypted with
//! `refresh-token-encrypt`, JWTs are signed with the Ed25519 key. Two
//! emulators with the same set accept each other's SIDs, refresh tokens (once
//! the record is imported) and JWTs (when their issuers are equal, as a
//! migration requires); with different sets they do not.
//!
//! # Knobs
//!
//! `/_emulator/*` needs the clients token and ignores the knobs. Every other
//! request: when down, the connection is dropped; then the latency is
//! added; then the error rate may answer `503 {"error": "server_error"}`.
//!
//! # Inferences
//!
//! Where the spec marks a behaviour as inferred or leaves it open, this
//! emulator implements the following (check them against a live server):
//!
//! * Each management API has its own token; `/direct-authz` and
//!   `/logout-sessions` use the authz-sessions token.
//! * The default issuer is `http://<bound address><base_path>`, so that
//!   every endpoint is `issuer + path`.
//! * `POST /clients` answers `201`; `DELETE /clients/{id}` answers `204`;
//!   the master token can read, update and delete any client; an unknown
//!   client is `404 invalid_client`. A `PUT` must repeat the `client_id`.
//!   A client may only authenticate at `/token` with its registered
//!   `token_endpoint_auth_method`.
//! * Refresh tokens are issued when the consent does not say
//!   `refresh_token.issue: false` and the client is registered for the
//!   `refresh_token` grant. Without rotation the refresh response omits
//!   `refresh_token`. A refresh-token `max_idle` counts from `rti`, so it only
//!   behaves as an idle timeout with rotation.
//! * Reusing a rotated-away long-lived refresh token deletes the record and
//!   journals a revocation of the subject and client. The memory of expended
//!   tokens is local (not exported): at another server the same reuse is a
//!   plain `invalid_grant`. A rotated transient token may be reused for 5 s.
//! * Revocation compares whole seconds: a token is revoked when its `iat`
//!   is at or before a matching journal timestamp. New tokens and records
//!   for a subject and client get an `iat` one second after a revocation of
//!   the current second, so they are not born revoked.
//! * `POST /authz-store/rest/v3/authorizations?import=true` stores the record
//!   as given and answers `201` (`200` when it replaced one) with the record
//!   and its `rft`; it does not check that the client exists. Mint answers
//!   `200`. `PUT` keeps `iat` and, unless given, `rts`/`rti`.
//!   `/inspection` accepts `refresh_token`, `access_token` or `token`, and
//!   has nothing for transient refresh tokens (`404`). `/revocation` deletes
//!   matching records whatever the timestamp (which only dates the journal
//!   entry).
//! * Session fields `max_life`, `auth_time`, `creation_time` and `last_used`
//!   use those names; `POST /sessions` answers `201 {"sid": ...}`, with
//!   `SID-Key` replacing any session with that key; `PUT` merges into the
//!   session and answers `204`; changing `fpt` is `400`. The quota counts
//!   all contexts of a subject. `DELETE ?subject=` answers the removed
//!   sessions keyed by SID (`204` with `?quiet=true`).
//! * Without configured issuer aliases, a request with an `Issuer` header
//!   other than the issuer is refused with `400`.
//! * Introspection requires a confidential client; tokens of another issuer
//!   are inactive. Refresh tokens introspect without `token_type`.

mod authz;
mod authz_store;
mod clients;
mod keys;
mod seed;
mod sessions;
mod store;
mod tokens;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::keys::{Keys, constant_time_eq};
use self::seed::Seeder;
use self::store::{Cursor, Store};
use self::web::{ApiError, Form, Reply};
use super::jwks::{self, JwkSet};
use super::{KnobSettings, Knobs};
use crate::http::{Body, BoxError, ReadBodyError, read_body};

pub use self::store::{Counts, RevocationEntry};

/// The bearer tokens of the management APIs. Connect2id configures one per
/// API; a proxy must hold the right one for each.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiTokens {
    /// `/clients` (the "master token"); also guards `/_emulator/*`.
    pub clients: String,
    /// `/authz-sessions`, `/direct-authz` and `/logout-sessions`.
    pub authz_sessions: String,
    /// `/authz-store`.
    pub authz_store: String,
    /// `/session-store`.
    pub session_store: String,
}

impl std::fmt::Debug for ApiTokens {
    // Tokens are secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiTokens { .. }")
    }
}

impl ApiTokens {
    /// The same token for every API.
    pub fn single(token: impl Into<String>) -> Self {
        let token = token.into();
        Self {
            clients: token.clone(),
            authz_sessions: token.clone(),
            authz_store: token.clone(),
            session_store: token,
        }
    }
}

/// How to build an emulated Connect2id server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Management API tokens.
    pub tokens: ApiTokens,
    /// The server JWK set; share it between emulators to make their SIDs
    /// and tokens interchangeable.
    pub jwks: JwkSet,
    /// Synthetic records per dataset (clients, authorizations, sessions).
    pub seed: usize,
    /// The issuer URL; defaults to `http://<bound address><base_path>`.
    pub issuer: Option<String>,
    /// The path every endpoint is served under: `""` or e.g. `"/c2id"`.
    pub base_path: String,
}

impl Config {
    /// A configuration with no seed, the default issuer and no base path.
    pub fn new(tokens: ApiTokens, jwks: JwkSet) -> Self {
        Self {
            tokens,
            jwks,
            seed: 0,
            issuer: None,
            base_path: String::new(),
        }
    }
}

/// An in-memory, thread-safe emulated Connect2id server. Cheap to clone:
/// clones share the same server.
#[derive(Debug, Clone)]
pub struct Connect2id {
    service: Arc<Service>,
}

/// A running emulator. Dropping it stops the server without waiting.
#[derive(Debug)]
pub struct Handle {
    /// The bound address.
    pub addr: SocketAddr,
    emulator: Connect2id,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Handle {
    /// The base URL: `http://<addr><base_path>`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.emulator.service.base_path)
    }

    /// The emulator, for knobs and read-back.
    pub fn emulator(&self) -> &Connect2id {
        &self.emulator
    }

    /// Stops accepting connections and waits for in-flight requests.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Why `handover emulate --kind connect2id` could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `--jwks` file could not be loaded.
    #[error(transparent)]
    Jwks(#[from] jwks::Error),
    /// The listen address could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address from `--listen`.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// `--base-path` is not empty and not of the form `/segment[/...]`.
    #[error("invalid base path {value:?}: it must be empty or start with '/' and not end with '/'")]
    BasePath {
        /// The value given.
        value: String,
    },
    /// A new `--jwks` file could not be written.
    #[error("cannot write the JWK set to {path}: {source}")]
    WriteJwks {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `--error-rate` is outside 0.0..=1.0.
    #[error("invalid error rate {value}: it must be between 0.0 and 1.0")]
    ErrorRate {
        /// The value given.
        value: f64,
    },
}

/// Writes a file readable by its owner only (it holds private keys).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// The options of `handover emulate --kind connect2id`.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--listen ADDR`.
    pub listen: SocketAddr,
    /// `--api-token TOKEN`: one token for every management API.
    pub api_token: String,
    /// `--seed N`.
    pub seed: usize,
    /// `--jwks FILE`; a fresh set is generated when absent.
    pub jwks: Option<PathBuf>,
    /// `--base-path /c2id`.
    pub base_path: String,
    /// `--issuer URL`; defaults to `http://<bound address><base_path>`.
    pub issuer: Option<String>,
    /// `--latency-ms N`.
    pub latency_ms: u64,
    /// `--error-rate F`.
    pub error_rate: f64,
}

/// Runs a standalone emulator until `shutdown` is cancelled.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), Error> {
    let base_path = options.base_path.clone();
    if !base_path.is_empty() && (!base_path.starts_with('/') || base_path.ends_with('/')) {
        return Err(Error::BasePath { value: base_path });
    }
    if !(0.0..=1.0).contains(&options.error_rate) {
        return Err(Error::ErrorRate {
            value: options.error_rate,
        });
    }
    let jwks = match &options.jwks {
        Some(path) if path.exists() => JwkSet::load(path)?,
        Some(path) => {
            // A rehearsal starts one emulator with a new file, then the
            // other with the same file: both share the keys.
            let jwks = JwkSet::generate();
            write_private(path, jwks.to_json().as_bytes()).map_err(|source| Error::WriteJwks {
                path: path.clone(),
                source,
            })?;
            tracing::info!(path = %path.display(), "wrote a new JWK set; give the same file to the other server");
            jwks
        }
        None => {
            tracing::warn!(
                "generated a fresh JWK set: SIDs and tokens will not be accepted by any other server"
            );
            JwkSet::generate()
        }
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: options.listen,
            source,
        })?;
    let emulator = Connect2id::new(Config {
        tokens: ApiTokens::single(options.api_token),
        jwks,
        seed: options.seed,
        issuer: options.issuer,
        base_path,
    });
    emulator.knobs().apply(&KnobSettings {
        latency_ms: Some(options.latency_ms),
        error_rate: Some(options.error_rate),
        down: None,
    });
    let handle = emulator.start(listener).await;
    tracing::info!(
        addr = %handle.addr,
        url = %handle.url(),
        issuer = %handle.emulator().issuer().unwrap_or_default(),
        seed = options.seed,
        "connect2id emulator listening"
    );
    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(())
}

impl Connect2id {
    /// Builds an emulator; nothing listens until [`Connect2id::start`].
    pub fn new(config: Config) -> Self {
        let clock = Clock::default();
        let keys = Arc::new(Keys::new(&config.jwks));
        let seeder = Seeder::new(keys.clone(), config.seed, clock.now());
        let base_path = config.base_path.trim_end_matches('/').to_owned();
        let issuer = OnceLock::new();
        if let Some(configured) = &config.issuer {
            let _ = issuer.set(configured.trim_end_matches('/').to_owned());
        }
        let service = Service {
            tokens: config.tokens,
            jwks: config.jwks,
            base_path,
            issuer,
            keys,
            store: Store::new(seeder),
            knobs: Knobs::default(),
            clock,
            authz_sessions: Ephemeral::default(),
            logout_sessions: Ephemeral::default(),
            codes: Ephemeral::default(),
            access_tokens: Ephemeral::default(),
            expended: Ephemeral::default(),
        };
        Self {
            service: Arc::new(service),
        }
    }

    /// Serves on `listener` until the handle is shut down or dropped. The
    /// listener is already bound, so the emulator is reachable as soon as
    /// this returns.
    pub async fn start(self, listener: TcpListener) -> Handle {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let _ = self
            .service
            .issuer
            .set(format!("http://{addr}{}", self.service.base_path));
        let cancel = CancellationToken::new();
        let service = self.service.clone();
        let handler = move |request: Request<Incoming>, _peer: SocketAddr| {
            let service = service.clone();
            async move { service.handle(request).await }
        };
        let task = tokio::spawn(crate::http::serve(listener, handler, cancel.clone()));
        Handle {
            addr,
            emulator: self,
            cancel,
            task: Some(task),
        }
    }

    /// The latency, error-rate and down switches.
    pub fn knobs(&self) -> &Knobs {
        &self.service.knobs
    }

    /// The issuer URL (known once started unless configured).
    pub fn issuer(&self) -> Option<String> {
        self.service.issuer.get().cloned()
    }

    /// The server JWK set.
    pub fn jwks(&self) -> &JwkSet {
        &self.service.jwks
    }

    /// Moves the emulator's clock forward, to test expiry without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.service
            .clock
            .offset
            .fetch_add(by.as_secs(), Ordering::Relaxed);
    }

    /// The emulator's current time in epoch seconds.
    pub fn now(&self) -> u64 {
        self.service.now()
    }

    /// Record counts per dataset.
    pub fn counts(&self) -> Counts {
        self.service.store.counts()
    }

    /// Every client's information, as `GET /clients/{id}` shows it.
    pub fn clients(&self) -> Vec<Value> {
        let mut out = Vec::new();
        self.service.walk_clients(|client| out.push(client));
        out
    }

    /// One client's information, as `GET /clients/{id}` shows it.
    pub fn client(&self, id: &str) -> Option<Value> {
        let stored = self.service.store.client(id)?;
        serde_json::from_str(&self.service.client_output(id, &stored.info)).ok()
    }

    /// Every long-lived authorization, with `rft`, as the authz store
    /// exports it.
    pub fn authorizations(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = Cursor::Start;
        loop {
            let (chunk, next) = self.service.store.authorizations_chunk(&cursor);
            out.extend(
                chunk
                    .iter()
                    .map(|record| self.service.authorization_output(record)),
            );
            if matches!(next, Cursor::Done) {
                return out;
            }
            cursor = next;
        }
    }

    /// The long-lived authorization of `sub` for `client_id`, with `rft`.
    pub fn authorization(&self, sub: &str, client_id: &str) -> Option<Value> {
        let record = self.service.store.authorization(sub, client_id)?;
        Some(self.service.authorization_output(&record))
    }

    /// Every live session keyed by SID. Does not touch last-used times.
    pub fn sessions(&self) -> Map<String, Value> {
        let now = self.service.now();
        let mut out = Map::new();
        let mut cursor = Cursor::Start;
        loop {
            let (chunk, next) = self.service.store.sessions_chunk(&cursor);
            for (key, session) in chunk {
                if !session.is_expired(now) {
                    out.insert(self.service.keys.keyed(&key), json!(session));
                }
            }
            if matches!(next, Cursor::Done) {
                return out;
            }
            cursor = next;
        }
    }

    /// The live session with this SID (its HMAC must verify). Does not touch
    /// its last-used time.
    pub fn session(&self, sid: &str) -> Option<Value> {
        let key = self.service.keys.verify_keyed(sid)?;
        let session = self.service.store.session(key)?;
        (!session.is_expired(self.service.now())).then(|| json!(session))
    }

    /// The revocation journal, oldest first.
    pub fn revocations(&self) -> Vec<RevocationEntry> {
        self.service.store.revocations()
    }
}

/// The server's clock: system time plus an offset tests can advance.
#[derive(Debug, Default)]
struct Clock {
    offset: AtomicU64,
}

impl Clock {
    fn now(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        system + self.offset.load(Ordering::Relaxed)
    }
}

/// Short-lived server state that is never exported (authorization and
/// logout sessions, codes, identifier access tokens, expended refresh
/// tokens): a concurrent map pruned of expired entries as it grows.
#[derive(Debug)]
struct Ephemeral<V> {
    map: DashMap<String, V>,
    prune_at: AtomicUsize,
}

/// Entries of an [`Ephemeral`] map know when they expire.
trait Expiring {
    /// Epoch seconds after which the entry is gone.
    fn expires(&self) -> u64;
}

/// Entries kept before the first prune of an [`Ephemeral`] map.
const PRUNE_FLOOR: usize = 10_000;

impl<V> Default for Ephemeral<V> {
    fn default() -> Self {
        Self {
            map: DashMap::new(),
            prune_at: AtomicUsize::new(PRUNE_FLOOR),
        }
    }
}

impl<V: Expiring + Clone> Ephemeral<V> {
    fn insert(&self, key: String, value: V, now: u64) {
        self.map.insert(key, value);
        let len = self.map.len();
        if len >= self.prune_at.load(Ordering::Relaxed) {
            self.map.retain(|_, entry| entry.expires() > now);
            // Amortise: the next prune waits until the map doubles.
            self.prune_at
                .store((self.map.len() * 2).max(PRUNE_FLOOR), Ordering::Relaxed);
        }
    }

    fn get(&self, key: &str, now: u64) -> Option<V> {
        let value = self.map.get(key)?.clone();
        if value.expires() <= now {
            self.map.remove(key);
            return None;
        }
        Some(value)
    }

    /// Removes and returns a live entry (single use).
    fn take(&self, key: &str, now: u64) -> Option<V> {
        let (_, value) = self.map.remove(key)?;
        (value.expires() > now).then_some(value)
    }

    fn remove(&self, key: &str) {
        self.map.remove(key);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// A parsed request whose body is read on demand, after authorization.
#[derive(Debug)]
struct Req {
    method: Method,
    headers: HeaderMap,
    query: Form,
    body: Option<Incoming>,
}

/// Body size limits in bytes, from the Connect2id defaults.
mod limits {
    /// `/clients` bodies (`op.reg.httpMaxRequestSize`, 250 000 characters).
    pub(super) const CLIENTS: usize = 250_000;
    /// Token, introspection and revocation bodies (50 000 characters).
    pub(super) const TOKEN: usize = 50_000;
    /// Every other management API.
    pub(super) const OTHER: usize = 1_000_000;
}

impl Req {
    /// Reads the body, refusing more than `limit` bytes with `400`.
    async fn body(&mut self, limit: usize) -> Result<Bytes, ApiError> {
        let Some(body) = self.body.take() else {
            return Ok(Bytes::new());
        };
        read_body(body, limit).await.map_err(|err| match err {
            ReadBodyError::TooLarge { limit } => ApiError::invalid_request(format!(
                "The request body exceeds the maximum size of {limit} bytes"
            )),
            ReadBodyError::Io(_) => ApiError::invalid_request("The request body could not be read"),
        })
    }
}

/// The shared state behind a [`Connect2id`].
struct Service {
    tokens: ApiTokens,
    jwks: JwkSet,
    base_path: String,
    issuer: OnceLock<String>,
    keys: Arc<Keys>,
    store: Store,
    knobs: Knobs,
    clock: Clock,
    authz_sessions: Ephemeral<authz::AuthzSession>,
    logout_sessions: Ephemeral<authz::LogoutSession>,
    codes: Ephemeral<tokens::CodeGrant>,
    access_tokens: Ephemeral<tokens::IdentifierToken>,
    expended: Ephemeral<tokens::Expended>,
}

impl std::fmt::Debug for Service {
    // The stores hold secrets (client secrets, codes, tokens): show only
    // what identifies the server.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect2id")
            .field("issuer", &self.issuer.get())
            .field("base_path", &self.base_path)
            .field("counts", &self.store.counts())
            .finish_non_exhaustive()
    }
}

/// The route of a path with identifiers replaced, for logs: paths carry
/// authorization and logout session IDs, which must not be logged.
fn route_template(route: &str) -> &str {
    const TEMPLATES: &[(&str, &str)] = &[
        ("/clients/", "/clients/{id}"),
        ("/authz-sessions/rest/v3/", "/authz-sessions/rest/v3/{sid}"),
        (
            "/logout-sessions/rest/v1/",
            "/logout-sessions/rest/v1/{sid}",
        ),
    ];
    TEMPLATES
        .iter()
        .find(|(prefix, _)| route.starts_with(prefix))
        .map_or(route, |(_, template)| template)
}

/// Which management API a path belongs to, for its bearer token.
#[derive(Debug, Clone, Copy)]
enum Api {
    Clients,
    AuthzSessions,
    AuthzStore,
    SessionStore,
}

impl Service {
    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn issuer(&self) -> &str {
        self.issuer.get().map_or("", String::as_str)
    }

    /// Whether the request carries the bearer token of `api`.
    fn authorized(&self, headers: &HeaderMap, api: Api) -> bool {
        let expected = match api {
            Api::Clients => &self.tokens.clients,
            Api::AuthzSessions => &self.tokens.authz_sessions,
            Api::AuthzStore => &self.tokens.authz_store,
            Api::SessionStore => &self.tokens.session_store,
        };
        web::bearer(headers)
            .is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes()))
    }

    fn require(&self, headers: &HeaderMap, api: Api) -> Result<(), ApiError> {
        if self.authorized(headers, api) {
            Ok(())
        } else {
            Err(ApiError::invalid_token())
        }
    }

    /// Client information as served: the stored JSON plus
    /// `registration_client_uri`, which is rebuilt from the issuer and never
    /// stored.
    fn client_output(&self, id: &str, info: &str) -> String {
        let uri = format!("{}/clients/{}", self.issuer(), web::percent_encode(id));
        let body = info.trim_end().strip_suffix('}').unwrap_or(info);
        let separator = if body.trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        format!(
            "{body}{separator}\"registration_client_uri\":{}}}",
            Value::String(uri)
        )
    }

    /// Calls `each` with every client's information.
    fn walk_clients(&self, mut each: impl FnMut(Value)) {
        let mut cursor = Cursor::Start;
        loop {
            let (chunk, next) = self.store.clients_chunk(&cursor);
            for (id, client) in chunk {
                if let Ok(value) = serde_json::from_str(&self.client_output(&id, &client.info)) {
                    each(value);
                }
            }
            if matches!(next, Cursor::Done) {
                return;
            }
            cursor = next;
        }
    }

    /// An authorization as the authz store shows it: the record plus `rft`,
    /// the current refresh token rebuilt from `rts`.
    fn authorization_output(&self, record: &store::Authorization) -> Value {
        let mut value = json!(record);
        if let Some(rts) = &record.rts {
            value["rft"] =
                Value::String(self.long_lived_refresh_token(&record.sub, &record.cid, rts));
        }
        value
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, BoxError> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let Some(route) = self.route_of(path) else {
            return Ok(ApiError::not_found("not_found", "Not found").into_response());
        };
        let route = route.to_owned();
        let req = Req {
            method: parts.method,
            headers: parts.headers,
            query: Form::parse(parts.uri.query().unwrap_or("")),
            body: Some(body),
        };
        // The test endpoints stay reachable while the server plays down, so
        // a test can bring it back.
        if let Some(name) = route.strip_prefix("/_emulator/") {
            let reply = self.emulator_api(name, req).await;
            return Ok(reply.unwrap_or_else(ApiError::into_response));
        }
        if self.knobs.is_down() {
            return Err("the emulator is playing down".into());
        }
        let latency = self.knobs.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.knobs.should_fail() {
            return Ok(ApiError::unavailable().into_response());
        }
        // Issuer aliases are not configured here, so any Issuer header
        // other than the issuer is unknown: 400, as on the real server. A
        // proxy must scrub client-sent Issuer headers.
        if let Some(alias) = web::header_str(&req.headers, "issuer")
            && alias.trim_end_matches('/') != self.issuer()
        {
            return Ok(ApiError::invalid_request("Unknown issuer").into_response());
        }
        let reply = self.dispatch(&route, req).await;
        let response = reply.unwrap_or_else(|err| {
            tracing::debug!(
                route = route_template(&route),
                status = %err.status(),
                "connect2id emulator refused a request"
            );
            err.into_response()
        });
        Ok(response)
    }

    /// The path below the base path, or `None` outside it.
    fn route_of<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.base_path.is_empty() {
            return Some(path);
        }
        let rest = path.strip_prefix(self.base_path.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    async fn dispatch(self: &Arc<Self>, route: &str, req: Req) -> Reply {
        match route {
            "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => {
                only(&req, &Method::GET)?;
                web::ok_json(&self.discovery())
            }
            "/jwks.json" => {
                only(&req, &Method::GET)?;
                Ok(web::raw_json(StatusCode::OK, self.jwks.public_json()))
            }
            "/clients" => clients::collection(self, req).await,
            "/token" => tokens::token(self, req).await,
            "/token/introspect" => tokens::introspect(self, req).await,
            "/token/revoke" => tokens::revoke(self, req).await,
            "/authz-sessions/rest/v3" => authz::start_authz(self, req).await,
            "/direct-authz/rest/v2" => authz::direct(self, req).await,
            "/logout-sessions/rest/v1" => authz::start_logout(self, req).await,
            "/authz-store/rest/v3/authorizations" => authz_store::authorizations(self, req).await,
            "/authz-store/rest/v3/revocation" => authz_store::revocation(self, req).await,
            "/authz-store/rest/v3/inspection" => authz_store::inspection(self, req).await,
            "/session-store/rest/v2/sessions" => sessions::sessions(self, req).await,
            "/session-store/rest/v2/sessions/subject-auth-life" => {
                sessions::auth_life(self, req).await
            }
            _ => {
                if let Some(id) = route.strip_prefix("/clients/") {
                    clients::item(self, req, &web::percent_decode(id)).await
                } else if let Some(sid) = route.strip_prefix("/authz-sessions/rest/v3/") {
                    authz::authz_session(self, req, sid).await
                } else if let Some(sid) = route.strip_prefix("/logout-sessions/rest/v1/") {
                    authz::logout_session(self, req, sid).await
                } else {
                    Err(ApiError::not_found("not_found", "Not found"))
                }
            }
        }
    }

    /// The OpenID provider metadata.
    fn discovery(&self) -> Value {
        let issuer = self.issuer();
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/login"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks.json"),
            "registration_endpoint": format!("{issuer}/clients"),
            "introspection_endpoint": format!("{issuer}/token/introspect"),
            "revocation_endpoint": format!("{issuer}/token/revoke"),
            "end_session_endpoint": format!("{issuer}/logout"),
            "scopes_supported": ["openid", "email", "profile", "address", "phone", "offline_access"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "claims_supported": ["sub", "iss", "auth_time", "acr", "amr", "sid", "email", "email_verified", "name", "given_name", "family_name", "locale"],
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "frontchannel_logout_supported": false,
            "backchannel_logout_supported": false,
        })
    }

    /// `/_emulator/knobs` and `/_emulator/state`, guarded by the clients
    /// token.
    async fn emulator_api(self: &Arc<Self>, name: &str, mut req: Req) -> Reply {
        self.require(&req.headers, Api::Clients)?;
        match (name, &req.method) {
            ("knobs", &Method::GET) => web::ok_json(&json!(self.knobs.settings())),
            ("knobs", &Method::PUT) => {
                let body = req.body(limits::OTHER).await?;
                let settings: KnobSettings = web::parse_json(&body)?;
                if settings
                    .error_rate
                    .is_some_and(|rate| !(0.0..=1.0).contains(&rate))
                {
                    return Err(ApiError::invalid_request(
                        "error_rate must be within 0.0..=1.0",
                    ));
                }
                self.knobs.apply(&settings);
                web::ok_json(&json!(self.knobs.settings()))
            }
            ("state", &Method::GET) => match req.query.get("dataset") {
                None => web::ok_json(&json!({
                    "issuer": self.issuer(),
                    "seed": self.store.seeder().count(),
                    "counts": self.store.counts(),
                    "ephemeral": {
                        "authz_sessions": self.authz_sessions.len(),
                        "logout_sessions": self.logout_sessions.len(),
                        "codes": self.codes.len(),
                        "access_tokens": self.access_tokens.len(),
                        "expended_refresh_tokens": self.expended.len(),
                    },
                })),
                Some("clients") => Ok(clients::export(self)),
                Some("authorizations") => Ok(authz_store::export(self)),
                Some("sessions") => Ok(sessions::export(self)),
                Some("revocations") => web::ok_json(&json!(self.store.revocations())),
                Some(other) => Err(ApiError::invalid_request(format!(
                    "Unknown dataset {other:?}"
                ))),
            },
            ("knobs" | "state", _) => Err(ApiError::method_not_allowed()),
            _ => Err(ApiError::not_found("not_found", "Not found")),
        }
    }
}

/// Refuses any method but `method`.
fn only(req: &Req, method: &Method) -> Result<(), ApiError> {
    if req.method == *method {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}
