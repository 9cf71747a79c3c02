//! An in-memory Connect2id server, faithful to `spec/connect2id.md`, for
//! tests, the demo and rehearsals (`handover emulate --kind connect2id`).
//!
//! # Surface
//!
//! Every path is served under `base_path` (e.g. `/c2id`) and nowhere else:
//! discovery (`/.well-known/openid-configuration`), `/jwks.json`,
//! `/clients`, `/par`, `/token`, `/token/introspect`, `/token/revoke`,
//! `/authz-sessions/rest/v3`, `/direct-authz/rest/v2`,
//! `/logout-sessions/rest/v1`, `/authz-store/rest/v3/{authorizations,
//! revocation, inspection}`, `/session-store/rest/v2/sessions` and
//! `/session-store/rest/v2/purge`, the legacy versions a configured
//! [`Strictness::server_version`] serves, plus the test endpoints
//! `/_emulator/knobs`, `/_emulator/strictness` and `/_emulator/state`. Each
//! management API checks its own bearer token ([`ApiTokens`]); a missing or
//! wrong one gets `401 {"error": "invalid_token"}`. Errors are
//! `{"error", "error_description"}` JSON; every JSON answer carries
//! `Cache-Control: no-store`. The exports (`GET /clients`,
//! `GET /authz-store/rest/v3/authorizations`,
//! `GET /session-store/rest/v2/sessions`) stream chunk by chunk.
//!
//! With [`Config::tenants`] it plays the multi-tenant edition: each tenant
//! has its own stores and issuer and is chosen per request by `Tenant-ID`
//! (or its issuer in `Issuer`); with [`Config::issuer_aliases`] an `Issuer`
//! header naming an alias serves the request under that issuer over the
//! default tenant's stores. Neither header: the default tenant.
//!
//! # Keys and portability
//!
//! All unguessable values derive from the [`JwkSet`]: SIDs, codes and
//! identifier access tokens are `<key>.<hmac>` (HMAC-SHA256 with the `hmac`
//! key, first 16 bytes), refresh tokens are AES-GCM encrypted with
//! `refresh-token-encrypt`, JWTs are signed with the Ed25519 key. Two
//! emulators with the same set accept each other's SIDs, refresh tokens (once
//! the record is imported) and JWTs (when their issuers are equal, as a
//! migration requires); with different sets they do not. `/jwks.json`
//! publishes the public members of the asymmetric keys only.
//!
//! # Knobs and strictness
//!
//! `/_emulator/*` needs the clients token and ignores the knobs. Every other
//! request: when down, the connection is dropped; then the latency is
//! added; then the error rate may answer `503 {"error": "server_error"}`.
//!
//! [`Strictness`] holds one switch per behaviour in which a real server may
//! be harder on a migration than the emulator's first reading; the lenient
//! preset is the default, [`Strictness::real`] turns them all on. It is set
//! in [`Config::strictness`], by `--strictness real` / `--switches JSON`, or over
//! `GET`/`PUT /_emulator/strictness` (a partial JSON object).
//!
//! # Inferences
//!
//! Where the spec marks a behaviour as inferred or leaves it open, this
//! emulator implements the following (check them against a live server).
//! "Leniently" and "strictly" name the two readings of a [`Strictness`]
//! switch; everything else holds in both.
//!
//! * Each management API has its own token; `/direct-authz` and
//!   `/logout-sessions` use the authz-sessions token.
//! * The default issuer is `http://<bound address><base_path>`, so that
//!   every endpoint is `issuer + path`. A tenant's issuer is
//!   `<default issuer>/<tenant id>`; its endpoints are still reached at the
//!   default address, with the header.
//! * `POST /clients` answers `201`; `DELETE /clients/{id}` answers `204`;
//!   the master token can read, update and delete any client; an unknown
//!   client is `404 invalid_client`. A `PUT` must repeat the `client_id`.
//!   A client may only authenticate at `/token` with its registered
//!   `token_endpoint_auth_method`. Only the current registration access
//!   token works on `/clients/{id}`.
//! * `PUT /clients/{id}` mints a new secret when
//!   `always_refresh_client_secret_on_update` (both readings, the 14.0
//!   default) or the body has `refresh_client_secret: true`, and a new
//!   registration access token when `refresh_access_token_on_update` (both
//!   readings). `preferred_client_secret` on `PUT` is ignored in both
//!   readings (`preferred_client_secret_on_update` off): only registration
//!   documents it. `client_secret_expires_at` is never taken from a request,
//!   import included: the server computes it from
//!   `client_secret_lifetime_secs` (0: never, both readings).
//! * Deleting a client leniently leaves its authorizations; strictly
//!   (`client_delete_cascades`) deletes them and journals a revocation of
//!   the client at the delete time.
//! * Refresh tokens are issued when the consent does not say
//!   `refresh_token.issue: false` and the client is registered for the
//!   `refresh_token` grant. A consent, direct authorization or minted record
//!   that does not say rotates per `default_rotate` (false in both readings,
//!   the real default). Without rotation the refresh response omits
//!   `refresh_token`. A refresh-token `max_idle` counts from `rti`, so it
//!   only behaves as an idle timeout with rotation.
//! * A long-lived refresh token is `{sub, cid, rts}` sealed with AES-GCM.
//!   Leniently the nonce derives from the plaintext, so the client's token
//!   and every `rft` are the same string; strictly
//!   (`random_refresh_token_nonce`) each sealing has a random nonce and a
//!   different string, and any of them is accepted wherever the record and
//!   key are.
//! * Reusing a rotated-away long-lived refresh token deletes the record and
//!   journals a revocation of the subject and client. The memory of expended
//!   tokens is local (not exported): at another server the same reuse is a
//!   plain `invalid_grant`. A rotated transient token may be reused for 5 s.
//! * Revocation compares whole seconds: a token is revoked when its `iat`
//!   is at or before a matching journal timestamp. New tokens and records
//!   for a subject and client get an `iat` one second after a revocation of
//!   the current second, so they are not born revoked.
//! * `/token/revoke` of a transient (self-contained) refresh token or a JWT
//!   access token journals a revocation of its subject and client; a server
//!   that did not see the revocation still accepts the token (it needs
//!   nothing imported), in both readings.
//! * Native SSO (`native_sso`, strictly): a code grant with scope `openid
//!   device_sso` opens a device session whose SID is the `device_secret`;
//!   refresh tokens of that grant carry the session's key and fail once it
//!   has ended. `/token/revoke` of a `device_secret` (hint `device_secret`,
//!   or no hint and no other token matches) ends the session, for any
//!   authenticated client of the group.
//! * `POST /authz-store/rest/v3/authorizations?import=true` stores the record
//!   as given and answers `201` (`200` when it replaced one) with the record
//!   and its `rft`; leniently it does not check that the client exists,
//!   strictly (`import_requires_client`) an unknown client is
//!   `400 invalid_client`. Mint answers `200`. `PUT` keeps `iat` and, unless
//!   given, `rts`/`rti`. `/inspection` accepts `refresh_token`,
//!   `access_token` or `token`, and has nothing for transient refresh tokens
//!   (`404`); strictly (`allow_direct_inspection` off) an access token is
//!   `400 invalid_request`. `/revocation` deletes matching records whatever
//!   the timestamp (which only dates the journal entry). v2's `/revocation`
//!   answers `404` where v3 answers `204`.
//! * Legacy paths (`server_version`, strictly 16) answer exactly like their
//!   current versions.
//! * Session fields `max_life`, `auth_time`, `creation_time` and `last_used`
//!   use those names; `POST /sessions` answers `201 {"sid": ...}`, with
//!   `SID-Key` replacing any session with that key; leniently it keeps a
//!   supplied `last_used`, strictly (`import_resets_last_used`) it becomes
//!   now; `PUT` merges into the session and answers `204`; changing `fpt` is
//!   `400`. The quota counts all contexts of a subject. `DELETE ?subject=`
//!   answers the removed sessions keyed by SID (`204` with `?quiet=true`).
//!   `GET` by SID bumps `last_used` unless `skip_last_used_update=true`;
//!   strictly (`sso_updates_last_used`) so does an SSO start or direct
//!   authorization that finds the session by `sub_sid`. New sessions idle
//!   out after `session_max_idle_minutes` unless they say `max_idle`.
//!   `POST /purge` answers `204`.
//! * Back-channel logout (`backchannel_logout`, strictly): relying parties
//!   that got an ID token in a session are listed in its `rps` member (an
//!   inferred name), which an export carries; every end of the session
//!   (delete, logout, quota, expiry when touched or purged, device secret
//!   revoked) POSTs a `logout+jwt` to each one's `backchannel_logout_uri`.
//! * PAR: `POST /par` answers `201 {request_uri, expires_in}`; the
//!   `request_uri` is single use, bound to its client, lives
//!   `par_lifetime_secs`; an unknown, expired or foreign one gives the
//!   authorization session start `{"type": "error", "error":
//!   "invalid_request_uri"}`.
//! * An `Issuer` header that is neither the issuer, a configured alias nor a
//!   tenant's issuer is refused with `400`; so is an unknown `Tenant-ID` in
//!   the multi-tenant edition (the regular edition ignores the header), and
//!   a `Tenant-ID` and `Issuer` that disagree. Access tokens, codes and
//!   authorization flows are bound to the issuer they were issued under;
//!   clients, authorizations (so long-lived refresh tokens), sessions and
//!   the revocation journal are shared by an issuer's aliases, and separate
//!   between tenants (a transient refresh token names its tenant, since the
//!   emulator's tenants share one JWK set).
//! * Introspection requires a confidential client; tokens of another issuer
//!   are inactive. Refresh tokens introspect without `token_type`.

mod authz;
mod authz_store;
mod backchannel;
mod clients;
mod keys;
mod par;
mod records;
mod seed;
mod sessions;
mod store;
mod strictness;
mod tokens;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
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

pub use self::backchannel::BackchannelLogout;
pub use self::store::{Counts, RevocationEntry};
pub use self::strictness::Strictness;

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
    /// How strictly to read Connect2id (see [`Strictness`]); changeable
    /// later with [`Connect2id::set_strictness`].
    pub strictness: Strictness,
    /// Multi-tenant edition: the IDs of the tenants besides the default one.
    /// Each has its own stores and issuer (`<issuer>/<id>`) and is selected
    /// by the `Tenant-ID` header (or its issuer in `Issuer`); a request with
    /// neither goes to the default tenant. Empty: the regular edition, which
    /// ignores `Tenant-ID`.
    pub tenants: Vec<String>,
    /// Issuer aliases of the default tenant (`op.issuer.aliases`, RN 12.3,
    /// mode `MIGRATION`), selected by an `Issuer` header equal to one: the
    /// stores are shared, tokens and flows are bound to the alias.
    pub issuer_aliases: Vec<String>,
}

impl Config {
    /// A configuration with no seed, the default issuer, no base path, the
    /// default strictness and a single tenant.
    pub fn new(tokens: ApiTokens, jwks: JwkSet) -> Self {
        Self {
            tokens,
            jwks,
            seed: 0,
            issuer: None,
            base_path: String::new(),
            strictness: Strictness::default(),
            tenants: Vec::new(),
            issuer_aliases: Vec::new(),
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
    reaper: Option<JoinHandle<()>>,
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
        for task in [self.task.take(), self.reaper.take()].into_iter().flatten() {
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
    /// `--strictness` is not a JSON object of known switches.
    #[error("invalid --strictness: {reason}")]
    Strictness {
        /// What was wrong.
        reason: String,
    },
    /// A `--tenant` or `--issuer-alias` is empty or given twice.
    #[error("invalid tenant or issuer alias {value:?}: it must be non-empty and unique")]
    Tenant {
        /// The value given.
        value: String,
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
    /// `--strictness real` and `--switches JSON`.
    pub strictness: Strictness,
    /// `--tenant ID`, repeatable.
    pub tenants: Vec<String>,
    /// `--issuer-alias URL`, repeatable.
    pub issuer_aliases: Vec<String>,
}

/// A `--strictness` preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// None given: [`Strictness::default`], the real server's behaviour.
    Default,
    /// `lenient`: [`Strictness::lenient`].
    Lenient,
    /// `real`: [`Strictness::real`].
    Real,
}

/// The strictness chosen on the command line: the `--strictness` preset,
/// with `--switches` overrides on top.
pub fn strictness_from_flags(preset: Preset, overrides: Option<&str>) -> Result<Strictness, Error> {
    let base = match preset {
        Preset::Default => Strictness::default(),
        Preset::Lenient => Strictness::lenient(),
        Preset::Real => Strictness::real(),
    };
    let Some(text) = overrides else {
        return Ok(base);
    };
    let value: Value = serde_json::from_str(text).map_err(|err| Error::Strictness {
        reason: err.to_string(),
    })?;
    base.with_overrides(&value)
        .map_err(|reason| Error::Strictness { reason })
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
    options
        .strictness
        .validate()
        .map_err(|reason| Error::Strictness { reason })?;
    let mut seen = std::collections::HashSet::new();
    if let Some(bad) = options
        .tenants
        .iter()
        .chain(&options.issuer_aliases)
        .find(|value| value.trim().is_empty() || !seen.insert(value.as_str()))
    {
        return Err(Error::Tenant { value: bad.clone() });
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
        strictness: options.strictness,
        tenants: options.tenants,
        issuer_aliases: options.issuer_aliases,
    });
    emulator.knobs().apply(&KnobSettings {
        latency_ms: Some(options.latency_ms),
        error_rate: Some(options.error_rate),
        ..crate::emulator::KnobSettings::default()
    });
    let handle = emulator.start(listener).await;
    tracing::info!(
        addr = %handle.addr,
        url = %handle.url(),
        issuer = %handle.emulator().issuer().unwrap_or_default(),
        seed = options.seed,
        strictness = ?handle.emulator().strictness(),
        "connect2id emulator listening"
    );
    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(())
}

impl Connect2id {
    /// Builds an emulator; nothing listens until [`Connect2id::start`].
    pub fn new(config: Config) -> Self {
        let clock = Arc::new(Clock::default());
        let keys = Arc::new(Keys::new(&config.jwks));
        let shared = Shared {
            tokens: config.tokens,
            jwks: config.jwks,
            base_path: config.base_path.trim_end_matches('/').to_owned(),
            keys: keys.clone(),
            knobs: Arc::new(Knobs::default()),
            clock: clock.clone(),
            strictness: Arc::new(RwLock::new(config.strictness)),
            backchannel: Arc::new(backchannel::Notifier::default()),
        };
        let seeder = Seeder::new(keys.clone(), config.seed, clock.now());
        let store = Arc::new(Store::new(seeder));
        let expended = Arc::new(Ephemeral::default());
        let configured = config
            .issuer
            .as_deref()
            .map(|issuer| issuer.trim_end_matches('/').to_owned());
        let tenants = config
            .tenants
            .iter()
            .map(|id| {
                let seeder = Seeder::new(keys.clone(), 0, clock.now());
                let tenant = Service::new(
                    &shared,
                    Some(id.clone()),
                    Arc::new(Store::new(seeder)),
                    Arc::new(Ephemeral::default()),
                    Routes::default(),
                );
                if let Some(issuer) = &configured {
                    let _ = tenant.issuer.set(format!("{issuer}/{id}"));
                }
                (id.clone(), Arc::new(tenant))
            })
            .collect();
        // An alias shares the default tenant's stores and expended-token
        // memory (MIGRATION mode), but has its own flows and identifier
        // access tokens: RN 13.0 forbids switching issuer mid-flow and
        // reports tokens of another alias inactive.
        let aliases = config
            .issuer_aliases
            .iter()
            .map(|alias| {
                let alias = alias.trim_end_matches('/').to_owned();
                let service = Service::new(
                    &shared,
                    None,
                    store.clone(),
                    expended.clone(),
                    Routes::default(),
                );
                let _ = service.issuer.set(alias.clone());
                (alias, Arc::new(service))
            })
            .collect();
        let service = Service::new(&shared, None, store, expended, Routes { tenants, aliases });
        if let Some(issuer) = configured {
            let _ = service.issuer.set(issuer);
        }
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
        for (id, tenant) in &self.service.routes.tenants {
            let _ = tenant.issuer.set(format!("{}/{id}", self.service.issuer()));
        }
        let cancel = CancellationToken::new();
        let service = self.service.clone();
        let handler = move |request: Request<Incoming>, _peer: SocketAddr| {
            let service = service.clone();
            async move { service.handle(request).await }
        };
        let task = tokio::spawn(crate::http::serve(listener, handler, cancel.clone()));
        let reaper = tokio::spawn(sessions::reap(self.service.clone(), cancel.clone()));
        Handle {
            addr,
            emulator: self,
            cancel,
            task: Some(task),
            reaper: Some(reaper),
        }
    }

    /// The tenant with this ID (multi-tenant edition), for read-back.
    pub fn tenant(&self, id: &str) -> Option<Connect2id> {
        self.service
            .routes
            .tenants
            .iter()
            .find(|(tenant, _)| tenant == id)
            .map(|(_, service)| Connect2id {
                service: service.clone(),
            })
    }

    /// The current strictness, shared by every tenant and alias.
    pub fn strictness(&self) -> Strictness {
        self.service.strict()
    }

    /// Changes the strictness for requests from now on.
    pub fn set_strictness(&self, strictness: Strictness) {
        *self
            .service
            .strictness
            .write()
            .unwrap_or_else(PoisonError::into_inner) = strictness;
    }

    /// Every back-channel logout notification sent so far (all tenants),
    /// oldest first, with its delivery outcome once known.
    pub fn backchannel_logouts(&self) -> Vec<BackchannelLogout> {
        self.service.backchannel.notifications()
    }

    /// Removes every expired session of every tenant now, as the real
    /// server's purge task does (sending their back-channel logouts);
    /// returns how many were removed.
    pub fn purge_expired_sessions(&self) -> usize {
        self.service.purge_all_expired_sessions()
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

/// What every tenant and issuer alias of one emulator shares.
struct Shared {
    tokens: ApiTokens,
    jwks: JwkSet,
    base_path: String,
    keys: Arc<Keys>,
    knobs: Arc<Knobs>,
    clock: Arc<Clock>,
    strictness: Arc<RwLock<Strictness>>,
    backchannel: Arc<backchannel::Notifier>,
}

/// The other tenants and issuer aliases, reachable from the default tenant.
#[derive(Default)]
struct Routes {
    tenants: Vec<(String, Arc<Service>)>,
    aliases: Vec<(String, Arc<Service>)>,
}

/// The state behind a [`Connect2id`]: one tenant (or issuer alias) of it.
struct Service {
    tokens: ApiTokens,
    jwks: JwkSet,
    base_path: String,
    issuer: OnceLock<String>,
    /// `None` for the default tenant.
    tenant: Option<String>,
    keys: Arc<Keys>,
    store: Arc<Store>,
    knobs: Arc<Knobs>,
    clock: Arc<Clock>,
    strictness: Arc<RwLock<Strictness>>,
    backchannel: Arc<backchannel::Notifier>,
    authz_sessions: Ephemeral<authz::AuthzSession>,
    logout_sessions: Ephemeral<authz::LogoutSession>,
    codes: Ephemeral<tokens::CodeGrant>,
    access_tokens: Ephemeral<tokens::IdentifierToken>,
    expended: Arc<Ephemeral<tokens::Expended>>,
    pushed: Ephemeral<par::Pushed>,
    routes: Routes,
}

impl std::fmt::Debug for Service {
    // The stores hold secrets (client secrets, codes, tokens): show only
    // what identifies the server.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect2id")
            .field("issuer", &self.issuer.get())
            .field("tenant", &self.tenant)
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
        ("/authz-sessions/rest/v2/", "/authz-sessions/rest/v2/{sid}"),
        ("/authz-sessions/rest/v1/", "/authz-sessions/rest/v1/{sid}"),
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

/// Which management API a path belongs to, for its bearer token. The
/// emulator keeps its own reading of the API on purpose (not the proxy's
/// `servers::connect2id::Api`): a table shared by both would hide a shared
/// mistake.
#[derive(Debug, Clone, Copy)]
enum Api {
    Clients,
    AuthzSessions,
    AuthzStore,
    SessionStore,
}

impl Service {
    fn new(
        shared: &Shared,
        tenant: Option<String>,
        store: Arc<Store>,
        expended: Arc<Ephemeral<tokens::Expended>>,
        routes: Routes,
    ) -> Self {
        Self {
            tokens: shared.tokens.clone(),
            jwks: shared.jwks.clone(),
            base_path: shared.base_path.clone(),
            issuer: OnceLock::new(),
            tenant,
            keys: shared.keys.clone(),
            store,
            knobs: shared.knobs.clone(),
            clock: shared.clock.clone(),
            strictness: shared.strictness.clone(),
            backchannel: shared.backchannel.clone(),
            authz_sessions: Ephemeral::default(),
            logout_sessions: Ephemeral::default(),
            codes: Ephemeral::default(),
            access_tokens: Ephemeral::default(),
            expended,
            pushed: Ephemeral::default(),
            routes,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// A snapshot of the strictness for this request.
    fn strict(&self) -> Strictness {
        *self
            .strictness
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The tenant or issuer alias a request is for: by `Tenant-ID` (in the
    /// multi-tenant edition) or `Issuer`, else this, the default tenant. An
    /// unknown tenant or issuer is `400`, as the real server answers an
    /// unknown `Issuer` (RN 12.3); a proxy must scrub client-sent ones.
    fn route(self: &Arc<Self>, headers: &HeaderMap) -> Result<Arc<Self>, ApiError> {
        let tenants = &self.routes.tenants;
        let by_tenant = match web::header_str(headers, "tenant-id") {
            // The regular edition has no notion of tenants.
            Some(_) if tenants.is_empty() => None,
            Some(id) => Some(
                tenants
                    .iter()
                    .find(|(tenant, _)| tenant == id)
                    .map(|(_, service)| service.clone())
                    .ok_or_else(|| ApiError::invalid_request("Unknown tenant"))?,
            ),
            None => None,
        };
        let by_issuer = match web::header_str(headers, "issuer") {
            Some(issuer) => {
                let issuer = issuer.trim_end_matches('/');
                let found = if issuer == self.issuer() {
                    Some(self.clone())
                } else {
                    tenants
                        .iter()
                        .chain(&self.routes.aliases)
                        .map(|(_, service)| service)
                        .find(|service| service.issuer() == issuer)
                        .cloned()
                };
                Some(found.ok_or_else(|| ApiError::invalid_request("Unknown issuer"))?)
            }
            None => None,
        };
        match (by_tenant, by_issuer) {
            (Some(tenant), Some(issuer)) if !Arc::ptr_eq(&tenant, &issuer) => Err(
                ApiError::invalid_request("The Issuer does not belong to the tenant"),
            ),
            (Some(tenant), _) => Ok(tenant),
            (None, Some(issuer)) => Ok(issuer),
            (None, None) => Ok(self.clone()),
        }
    }

    /// Every tenant's service, the default one first (aliases share the
    /// default's stores).
    fn all_tenants(self: &Arc<Self>) -> Vec<Arc<Self>> {
        std::iter::once(self.clone())
            .chain(
                self.routes
                    .tenants
                    .iter()
                    .map(|(_, service)| service.clone()),
            )
            .collect()
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
    fn authorization_output(&self, record: &records::Authorization) -> Value {
        let mut value = json!(record);
        if let Some(rts) = &record.rts
            && self.strict().records_carry_refresh_token
        {
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
            let reply = match self.route(&req.headers) {
                Ok(service) => service.emulator_api(name, req).await,
                Err(err) => Err(err),
            };
            return Ok(reply.unwrap_or_else(ApiError::into_response));
        }
        if self.knobs.is_down() {
            return Err("the emulator is playing down".into());
        }
        let latency = self.knobs.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(retry_after) = self.knobs.throttled() {
            self.knobs
                .answered(true, &req.method, route_template(&route));
            let mut response = ApiError::throttled().into_response();
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, retry_after.into());
            return Ok(response);
        }
        self.knobs
            .answered(false, &req.method, route_template(&route));
        if self.knobs.should_fail(route_template(&route)) {
            return Ok(ApiError::unavailable().into_response());
        }
        let service = match self.route(&req.headers) {
            Ok(service) => service,
            Err(err) => return Ok(err.into_response()),
        };
        let reply = service.dispatch(&route, req).await;
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
        let strict = self.strict();
        // Legacy versions answer like their current counterparts (see
        // `Strictness::server_version`); unserved ones are plain 404s.
        let rewritten = legacy_route(route, &strict);
        let route = rewritten.as_deref().unwrap_or(route);
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
            "/par" => par::push(self, req).await,
            "/authz-sessions/rest/v3" => authz::start_authz(self, req).await,
            "/direct-authz/rest/v2" => authz::direct(self, req).await,
            "/logout-sessions/rest/v1" => authz::start_logout(self, req).await,
            "/authz-store/rest/v3/authorizations" => authz_store::authorizations(self, req).await,
            "/authz-store/rest/v3/revocation" => authz_store::revocation(self, req, false).await,
            "/authz-store/rest/v2/revocation" => authz_store::revocation(self, req, true).await,
            "/authz-store/rest/v3/inspection" => authz_store::inspection(self, req).await,
            "/session-store/rest/v2/sessions" => sessions::sessions(self, req).await,
            "/session-store/rest/v2/sessions/subject-auth-life" => {
                sessions::auth_life(self, req).await
            }
            "/session-store/rest/v2/purge" => sessions::purge(self, req).await,
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
        let strict = self.strict();
        let mut metadata = json!({
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
            "backchannel_logout_supported": strict.backchannel_logout,
            "pushed_authorization_request_endpoint": format!("{issuer}/par"),
        });
        // Members the real server omits when the feature is off.
        if strict.backchannel_logout {
            metadata["backchannel_logout_session_supported"] = true.into();
        }
        if strict.native_sso {
            metadata["native_sso_supported"] = true.into();
        }
        metadata
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
            ("strictness", &Method::GET) => web::ok_json(&json!(self.strict())),
            ("strictness", &Method::PUT) => {
                let body = req.body(limits::OTHER).await?;
                let overrides: Value = web::parse_json(&body)?;
                let next = self
                    .strict()
                    .with_overrides(&overrides)
                    .map_err(ApiError::invalid_request)?;
                *self
                    .strictness
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = next;
                web::ok_json(&json!(next))
            }
            ("state", &Method::GET) => match req.query.get("dataset") {
                None => web::ok_json(&json!({
                    "issuer": self.issuer(),
                    "tenant": self.tenant,
                    "seed": self.store.seeder().count(),
                    "counts": self.store.counts(),
                    "strictness": self.strict(),
                    "ephemeral": {
                        "authz_sessions": self.authz_sessions.len(),
                        "logout_sessions": self.logout_sessions.len(),
                        "codes": self.codes.len(),
                        "access_tokens": self.access_tokens.len(),
                        "expended_refresh_tokens": self.expended.len(),
                        "pushed_authorization_requests": self.pushed.len(),
                    },
                })),
                Some("backchannel_logouts") => {
                    web::ok_json(&json!(self.backchannel.notifications()))
                }
                Some("clients") => Ok(clients::export(self)),
                Some("authorizations") => Ok(authz_store::export(self)),
                Some("sessions") => Ok(sessions::export(self)),
                Some("revocations") => web::ok_json(&json!(self.store.revocations())),
                Some(other) => Err(ApiError::invalid_request(format!(
                    "Unknown dataset {other:?}"
                ))),
            },
            ("knobs" | "state" | "strictness", _) => Err(ApiError::method_not_allowed()),
            _ => Err(ApiError::not_found("not_found", "Not found")),
        }
    }
}

/// The current route a legacy one answers as, when this server version
/// serves it (see [`Strictness::server_version`]); a legacy route it does not
/// serve becomes one that is not found.
fn legacy_route(route: &str, strict: &Strictness) -> Option<String> {
    const NOT_SERVED: &str = "/not-served";
    // (legacy prefix, current prefix, served?)
    let versions: [(&str, &str, bool); 4] = [
        // v2 revocation answers 404 where v3 answers 204 (RN 10.0), so it
        // keeps its own route; the other v2 resources answer like v3.
        (
            "/authz-store/rest/v2",
            "/authz-store/rest/v3",
            strict.serves_authz_store_v2(),
        ),
        (
            "/authz-sessions/rest/v1",
            "/authz-sessions/rest/v3",
            strict.serves_pre17_apis(),
        ),
        (
            "/authz-sessions/rest/v2",
            "/authz-sessions/rest/v3",
            strict.serves_pre17_apis(),
        ),
        (
            "/direct-authz/rest/v1",
            "/direct-authz/rest/v2",
            strict.serves_pre17_apis(),
        ),
    ];
    for (legacy, current, served) in versions {
        let Some(rest) = route.strip_prefix(legacy) else {
            continue;
        };
        if !rest.is_empty() && !rest.starts_with('/') {
            continue;
        }
        if !served {
            return Some(NOT_SERVED.to_owned());
        }
        if route == "/authz-store/rest/v2/revocation" {
            return Some(route.to_owned());
        }
        return Some(format!("{current}{rest}"));
    }
    None
}

/// Refuses any method but `method`.
fn only(req: &Req, method: &Method) -> Result<(), ApiError> {
    if req.method == *method {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}
