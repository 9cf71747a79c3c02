//! Configuration: one TOML file (`config/handover.example.toml` documents
//! every key), read into raw serde structs ([`FileConfig`], unknown keys
//! refused) and validated into the typed [`Config`] that the rest of the
//! program sees. Validation collects every problem with the field it belongs
//! to, resolves secrets from environment variables or files, and runs before
//! any socket is bound; `main` exits 64 on failure.
//!
//! Secrets (API tokens, the admin token, the journal key) are never written in
//! the file itself: `*_env` names an environment variable, `*_file` a file.

mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use units::{format_duration, parse_duration, parse_size};

pub use crate::model::{BaseUrl, Secret};

use crate::model::Dataset;

use crate::servers::authlete::{
    Config as AuthleteConfig, Credentials as AuthleteCredentials, DEFAULT_REFRESH_DURATION,
    DEFAULT_TOKEN_SAMPLE, Owner as AuthleteOwner,
};
use crate::servers::connect2id::ApiTokens;

use crate::proxy::forward::{
    DEFAULT_BODY_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_UPSTREAM_TIMEOUT,
};
use crate::proxy::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_HEALTH_INTERVAL, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_SHUTDOWN_DELAY,
    DEFAULT_SHUTDOWN_GRACE, Runtime,
};
use crate::upstream::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE};

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with the offending key.
        message: String,
    },
    /// The file parsed but some values are invalid.
    #[error("config file {path}: {problems}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, each naming its field.
        problems: Problems,
    },
}

/// Field-named validation problems, displayed on one line, and the
/// warnings found on the way (which do not fail validation).
#[derive(Debug, Default)]
pub struct Problems {
    errors: Vec<(String, String)>,
    warnings: Vec<String>,
}

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push((field.into(), message.into()));
    }

    fn warn(&mut self, field: &str, message: impl fmt::Display) {
        self.warnings.push(format!("{field}: {message}"));
    }

    fn len(&self) -> usize {
        self.errors.len()
    }

    /// The fields that have a problem, in the order found.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.errors.iter().map(|(field, _)| field.as_str())
    }

    fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (field, message)) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{field}: {message}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The file format.

/// The config file as written. Every table refuses unknown keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// `[proxy]`
    pub proxy: RawProxy,
    /// `[admin]`
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[source]`
    pub source: RawServer,
    /// `[target]`
    pub target: RawServer,
    /// `[journal]`
    pub journal: RawJournal,
    /// `[sync]`
    #[serde(default)]
    pub sync: RawSync,
    /// `[backfill]`
    #[serde(default)]
    pub backfill: RawBackfill,
    /// `[cutover]`
    #[serde(default)]
    pub cutover: RawCutover,
    /// `[store]`
    #[serde(default)]
    pub store: RawStore,
}

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawStore {
    pub kind: Option<String>,
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    pub pool_size: Option<usize>,
    pub connect_timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub claim_lease: Option<String>,
}

/// `[cutover]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawCutover {
    pub max_pause: Option<String>,
    pub max_lag: Option<String>,
    pub verify_ahead: Option<String>,
    pub hold_max_requests: Option<usize>,
    pub hold_max_bytes: Option<String>,
    pub fallback_window: Option<String>,
    pub refresh_fallback_window: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
}

/// `[backfill]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawBackfill {
    pub auto_start: Option<bool>,
    pub concurrency: Option<usize>,
    pub rate: Option<u64>,
    pub count_first: Option<bool>,
}

/// `[journal]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawJournal {
    pub dir: PathBuf,
    pub payload_key_env: Option<String>,
    pub payload_key_file: Option<PathBuf>,
    pub sync: Option<String>,
    pub sync_interval: Option<String>,
    pub segment_bytes: Option<String>,
}

/// `[sync]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawSync {
    pub datasets: Option<Vec<String>>,
    pub tenants: Option<Vec<String>>,
    pub workers: Option<usize>,
    pub max_concurrency: Option<usize>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub request_timeout: Option<String>,
}

/// `[proxy]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawProxy {
    pub listen: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub trusted_issuer_header: bool,
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    #[serde(default)]
    pub preserve_host: bool,
    pub max_body_bytes: Option<String>,
    pub max_header_bytes: Option<String>,
    pub max_headers: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub shutdown_delay: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle: Option<usize>,
    pub health_interval: Option<String>,
    pub runtime: Option<String>,
    pub workers: Option<usize>,
    pub max_connections: Option<usize>,
    pub body_read_timeout: Option<String>,
}

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// `[source]` / `[target]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawServer {
    pub kind: String,
    pub url: String,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub tokens: Option<RawTokens>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub http2: bool,
    // Authlete targets only.
    pub api_version: Option<u8>,
    pub service_id: Option<String>,
    pub access_token_env: Option<String>,
    pub access_token_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub api_secret_env: Option<String>,
    pub api_secret_file: Option<PathBuf>,
    pub new_primary_url: Option<String>,
    pub new_primary_ca_file: Option<PathBuf>,
    pub refresh_token_duration: Option<String>,
    pub token_sample: Option<usize>,
    pub rate_limit: Option<f64>,
    pub owner_api_key_env: Option<String>,
    pub owner_api_key_file: Option<PathBuf>,
    pub owner_api_secret_env: Option<String>,
    pub owner_api_secret_file: Option<PathBuf>,
}

/// `[source.tokens]` / `[target.tokens]`: one token per management API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub(crate) struct RawTokens {
    pub clients_env: Option<String>,
    pub clients_file: Option<PathBuf>,
    pub authz_sessions_env: Option<String>,
    pub authz_sessions_file: Option<PathBuf>,
    pub authz_store_env: Option<String>,
    pub authz_store_file: Option<PathBuf>,
    pub session_store_env: Option<String>,
    pub session_store_file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// The validated form.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The downstream listener and forwarding.
    pub proxy: crate::proxy::Config,
    /// The upstream clients (both servers).
    pub upstream: crate::upstream::Config,
    /// The admin listener.
    pub admin: crate::admin::Config,
    /// The server being migrated from.
    pub source: ServerConfig,
    /// The server being migrated to.
    pub target: ServerConfig,
    /// The durable journal.
    pub journal: crate::journal::Config,
    /// The journal's at-rest encryption key, 64 hex characters (32 bytes).
    pub journal_key: Secret,
    /// The sync workers.
    pub sync: crate::sync::Config,
    /// The backfill.
    pub backfill: crate::backfill::Config,
    /// The cutover.
    pub cutover: crate::cutover::Config,
    /// Where pending work, dead letters and the phase live.
    pub store: crate::store::Config,
    /// Findings that do not stop the proxy (a secret file others can read),
    /// each naming its field: `check` prints them, `serve` logs them.
    pub warnings: Vec<String>,
}

/// What kind of server an upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// A Connect2id server.
    Connect2id,
    /// An Authlete service (targets only).
    Authlete,
}

/// An upstream server (source or target).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server kind.
    pub kind: ServerKind,
    /// The base URL (scheme, authority and the base path of its endpoints,
    /// e.g. `https://c2id.internal/c2id`).
    pub url: BaseUrl,
    /// Management API tokens.
    pub tokens: ApiTokens,
    /// Extra CA certificates (PEM) to trust for `https` upstreams, instead of
    /// the system roots.
    pub ca_file: Option<PathBuf>,
    /// Forward traffic to this upstream over HTTP/2 (ALPN for https, prior
    /// knowledge for http); the management APIs also use h2c over http
    /// (over https they negotiate HTTP/2 whenever the server offers it).
    pub http2: bool,
    /// The Authlete settings, for an Authlete target.
    pub authlete: Option<AuthleteConfig>,
}

// ---------------------------------------------------------------------------
// Loading and validation.

/// Where secrets come from: the process environment in production, a map in
/// tests.
pub trait Env {
    /// The value of an environment variable.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

impl Config {
    /// The journal's cipher, from `journal_key` (validated by [`Config::load`]).
    pub fn journal_cipher(&self) -> Result<crate::journal::Cipher, crate::journal::KeyError> {
        crate::journal::Cipher::from_hex(self.journal_key.expose())
    }

    /// Reads and validates `path`, resolving secrets from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::load_with_env(path, &ProcessEnv)
    }

    /// Reads and validates `path`, resolving secrets from `env`.
    pub(crate) fn load_with_env(path: &Path, env: &dyn Env) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses and validates config text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path, env: &dyn Env) -> Result<Self, Error> {
        let file: FileConfig = toml::from_str(text).map_err(|err| Error::Parse {
            path: path.to_owned(),
            message: one_line(&err.to_string()),
        })?;
        file.validate(env).map_err(|problems| Error::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// A config for tests: plain HTTP on ephemeral loopback ports, forwarding
    /// to `source`, with `target` as the secondary; every token is `token`.
    pub fn for_test(source: &str, target: &str, token: &str) -> Self {
        let server = |url: &str| ServerConfig {
            kind: ServerKind::Connect2id,
            url: BaseUrl::parse(url).expect("test URLs are valid"),
            tokens: ApiTokens::single(token),
            ca_file: None,
            http2: false,
            authlete: None,
        };
        let proxy = crate::proxy::Config::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        let worker_pools = proxy.runtime.worker_pools();
        Self {
            proxy,
            upstream: crate::upstream::Config {
                worker_pools,
                ..crate::upstream::Config::default()
            },
            admin: crate::admin::Config {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                token: Some(Secret::new(token)),
                max_connections: crate::admin::DEFAULT_MAX_CONNECTIONS,
                idle_timeout: crate::admin::DEFAULT_IDLE_TIMEOUT,
            },
            source: server(source),
            target: server(target),
            journal: crate::journal::Config::new(
                std::env::temp_dir().join("handover-test-journal"),
            ),
            journal_key: Secret::new(TEST_JOURNAL_KEY),
            sync: crate::sync::Config {
                // Fast retries: tests wait for recoveries.
                retry_initial: Duration::from_millis(20),
                retry_max: Duration::from_millis(500),
                ..crate::sync::Config::default()
            },
            backfill: crate::backfill::Config::default(),
            cutover: crate::cutover::Config::default(),
            store: crate::store::Config::default(),
            warnings: Vec::new(),
        }
    }
}

/// The journal key `Config::for_test` uses (tests only; never in a file).
pub const TEST_JOURNAL_KEY: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

impl FileConfig {
    /// Validates every field, collecting all problems.
    pub(crate) fn validate(self, env: &dyn Env) -> Result<Config, Problems> {
        let mut problems = Problems::default();
        let proxy = validate_proxy(self.proxy, &mut problems);
        let upstream = proxy.as_ref().map(|(_, upstream)| upstream.clone());
        let proxy = proxy.map(|(proxy, _)| proxy);
        let admin = validate_admin(self.admin, env, &mut problems);
        let source = validate_server("source", self.source, env, &mut problems);
        let target = validate_target(self.target, source.as_ref(), env, &mut problems);
        let journal = validate_journal(self.journal, env, &mut problems);
        let authlete_target = target
            .as_ref()
            .is_some_and(|t| t.kind == ServerKind::Authlete);
        let sync = validate_sync(self.sync, authlete_target, &mut problems);
        let backfill = validate_backfill(self.backfill, &mut problems);
        let mut cutover = validate_cutover(self.cutover, &mut problems);
        let store = validate_store(self.store, env, &mut problems);
        validate_refresh_fallback(&mut cutover, target.as_ref(), &mut problems);
        if let (Some(source), Some(target)) = (&source, &target)
            && source.url == target.url
        {
            problems.push("target.url", "must differ from source.url");
        }
        if let (Some(proxy), Some(admin)) = (&proxy, &admin)
            && proxy.listen == admin.listen
            && proxy.listen.port() != 0
        {
            problems.push("admin.listen", "must differ from proxy.listen");
        }
        match (proxy, upstream, admin, source, target, journal, sync) {
            (
                Some(proxy),
                Some(upstream),
                Some(admin),
                Some(source),
                Some(target),
                Some(journal),
                Some(sync),
            ) if problems.is_empty() => Ok(Config {
                proxy,
                upstream,
                admin,
                source,
                target,
                journal: journal.0,
                journal_key: journal.1,
                sync,
                backfill,
                cutover,
                store,
                warnings: problems.warnings,
            }),
            _ => Err(problems),
        }
    }
}

fn validate_proxy(
    raw: RawProxy,
    problems: &mut Problems,
) -> Option<(crate::proxy::Config, crate::upstream::Config)> {
    let start = problems.len();
    let listen = socket_addr("proxy.listen", &raw.listen, problems);
    if let Some(cert) = &raw.tls_cert {
        readable_file("proxy.tls_cert", cert, problems);
    }
    if let Some(key) = &raw.tls_key {
        readable_file("proxy.tls_key", key, problems);
        warn_if_shared("proxy.tls_key", key, problems);
    }
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), Some(key)) => {
            if problems.len() == start {
                tls_material(&cert, &key, problems);
            }
            Some(crate::tls::Files { cert, key })
        }
        (None, None) => None,
        (Some(_), None) => {
            problems.push("proxy.tls_key", "required when proxy.tls_cert is set");
            None
        }
        (None, Some(_)) => {
            problems.push("proxy.tls_cert", "required when proxy.tls_key is set");
            None
        }
    };
    let max_body_bytes = size(
        "proxy.max_body_bytes",
        raw.max_body_bytes,
        DEFAULT_MAX_BODY_BYTES as u64,
        problems,
    );
    let max_header_bytes = size(
        "proxy.max_header_bytes",
        raw.max_header_bytes,
        DEFAULT_MAX_HEADER_BYTES as u64,
        problems,
    );
    // hyper refuses read buffers below 8 KiB.
    if max_header_bytes < 8 << 10 {
        problems.push("proxy.max_header_bytes", "must be at least 8KiB");
    }
    let max_headers = raw.max_headers.unwrap_or(DEFAULT_MAX_HEADERS);
    if max_headers == 0 {
        problems.push("proxy.max_headers", "must be > 0");
    }
    let mut timeout = |field: &str, value: Option<String>, default: Duration| {
        let value = duration(field, value, default, problems);
        if value.is_zero() {
            problems.push(field, "must be > 0");
        }
        value
    };
    let header_read_timeout = timeout(
        "proxy.header_read_timeout",
        raw.header_read_timeout,
        DEFAULT_HEADER_READ_TIMEOUT,
    );
    let idle_timeout = timeout("proxy.idle_timeout", raw.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    let body_read_timeout = timeout(
        "proxy.body_read_timeout",
        raw.body_read_timeout,
        DEFAULT_BODY_READ_TIMEOUT,
    );
    let connect_timeout = timeout(
        "proxy.connect_timeout",
        raw.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let upstream_timeout = timeout(
        "proxy.upstream_timeout",
        raw.upstream_timeout,
        DEFAULT_UPSTREAM_TIMEOUT,
    );
    let shutdown_grace = timeout(
        "proxy.shutdown_grace",
        raw.shutdown_grace,
        DEFAULT_SHUTDOWN_GRACE,
    );
    let pool_idle_timeout = timeout(
        "proxy.pool_idle_timeout",
        raw.pool_idle_timeout,
        DEFAULT_POOL_IDLE_TIMEOUT,
    );
    let health_interval = timeout(
        "proxy.health_interval",
        raw.health_interval,
        DEFAULT_HEALTH_INTERVAL,
    );
    let shutdown_delay = duration(
        "proxy.shutdown_delay",
        raw.shutdown_delay,
        DEFAULT_SHUTDOWN_DELAY,
        problems,
    );
    if max_body_bytes == 0 {
        problems.push("proxy.max_body_bytes", "must be > 0");
    }
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        problems.push("proxy.max_connections", "must be > 0");
    }
    let runtime = match (raw.runtime.as_deref(), raw.workers) {
        (None | Some("per-core"), None) => Runtime::per_core(),
        (None | Some("per-core"), Some(0)) => {
            problems.push("proxy.workers", "must be > 0");
            Runtime::per_core()
        }
        (None | Some("per-core"), Some(workers)) => Runtime::PerCore { workers },
        (Some("shared"), None) => Runtime::Shared,
        (Some("shared"), Some(_)) => {
            problems.push("proxy.workers", "applies to runtime = \"per-core\" only");
            Runtime::Shared
        }
        (Some(_), _) => {
            problems.push("proxy.runtime", "must be \"per-core\" or \"shared\"");
            Runtime::Shared
        }
    };
    if problems.len() > start {
        return None;
    }
    Some((
        crate::proxy::Config {
            listen: listen?,
            tls,
            max_header_bytes: usize::try_from(max_header_bytes).ok()?,
            max_headers,
            header_read_timeout,
            idle_timeout,
            shutdown_grace,
            shutdown_delay,
            health_interval,
            max_connections,
            runtime,
            forward: crate::proxy::forward::Config {
                body_read_timeout,
                trusted_issuer_header: raw.trusted_issuer_header,
                trust_forwarded_headers: raw.trust_forwarded_headers,
                preserve_host: raw.preserve_host,
                max_body_bytes: usize::try_from(max_body_bytes).ok()?,
                upstream_timeout,
            },
        },
        crate::upstream::Config {
            connect_timeout,
            pool_idle_timeout,
            pool_max_idle: raw.pool_max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
            worker_pools: runtime.worker_pools(),
        },
    ))
}

fn validate_admin(
    raw: RawAdmin,
    env: &dyn Env,
    problems: &mut Problems,
) -> Option<crate::admin::Config> {
    let listen_text = raw
        .listen
        .unwrap_or_else(|| crate::admin::DEFAULT_LISTEN.to_owned());
    let listen = socket_addr("admin.listen", &listen_text, problems);
    let token_field = if raw.token_file.is_some() && raw.token_env.is_none() {
        "admin.token_file"
    } else {
        "admin.token_env"
    };
    let token = match (raw.token_env, raw.token_file) {
        (None, None) => None,
        (env_name, file) => secret(
            "admin.token",
            env_name.as_deref(),
            file.as_deref(),
            env,
            problems,
        ),
    };
    if let Some(token) = &token {
        let chars = token.expose().chars().count();
        if chars < crate::admin::MIN_TOKEN_CHARS {
            problems.push(
                token_field,
                format!(
                    "the admin token has {chars} characters; at least {} are required (for example `openssl rand -hex 32`)",
                    crate::admin::MIN_TOKEN_CHARS
                ),
            );
            return None;
        }
    }
    let listen = listen?;
    if token.is_none() && !listen.ip().is_loopback() {
        problems.push(
            "admin.token_env",
            format!(
                "an admin token is required when admin.listen ({listen}) is not a loopback address"
            ),
        );
        return None;
    }
    let idle_timeout = duration(
        "admin.idle_timeout",
        raw.idle_timeout,
        crate::admin::DEFAULT_IDLE_TIMEOUT,
        problems,
    );
    if idle_timeout.is_zero() {
        problems.push("admin.idle_timeout", "must be > 0");
    }
    let max_connections = raw
        .max_connections
        .unwrap_or(crate::admin::DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        problems.push("admin.max_connections", "must be > 0");
    }
    Some(crate::admin::Config {
        listen,
        token,
        max_connections,
        idle_timeout,
    })
}

fn validate_target(
    raw: RawServer,
    source: Option<&ServerConfig>,
    env: &dyn Env,
    problems: &mut Problems,
) -> Option<ServerConfig> {
    if raw.kind != "authlete" {
        return validate_server("target", raw, env, problems);
    }
    let start = problems.len();
    let url = match BaseUrl::parse(&raw.url) {
        Ok(url) => Some(url),
        Err(message) => {
            problems.push("target.url", message);
            None
        }
    };
    if raw.token_env.is_some() || raw.token_file.is_some() || raw.tokens.is_some() {
        problems.push(
            "target.token_env",
            "an Authlete target takes api_key_env/api_secret_env (v2) or access_token_env (v3), not Connect2id tokens",
        );
    }
    let api_version = match raw.api_version {
        Some(version @ (2 | 3)) => Some(version),
        Some(other) => {
            problems.push("target.api_version", format!("{other} is not 2 or 3"));
            None
        }
        None => {
            problems.push(
                "target.api_version",
                "required for kind = \"authlete\" (2 or 3)",
            );
            None
        }
    };
    let service_id = match raw.service_id.as_deref().map(str::parse::<u64>) {
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            problems.push(
                "target.service_id",
                "must be the numeric Authlete service id",
            );
            None
        }
        None => None,
    };
    let credentials = match api_version {
        Some(3) => {
            if service_id.is_none() && raw.service_id.is_none() {
                problems.push("target.service_id", "required for Authlete API v3");
            }
            secret(
                "target.access_token",
                raw.access_token_env.as_deref(),
                raw.access_token_file.as_deref(),
                env,
                problems,
            )
            .map(|token| AuthleteCredentials::V3 { token })
        }
        Some(_) => {
            let key = secret(
                "target.api_key",
                raw.api_key_env.as_deref(),
                raw.api_key_file.as_deref(),
                env,
                problems,
            );
            let secret = secret(
                "target.api_secret",
                raw.api_secret_env.as_deref(),
                raw.api_secret_file.as_deref(),
                env,
                problems,
            );
            key.zip(secret)
                .map(|(key, secret)| AuthleteCredentials::V2 { key, secret })
        }
        None => None,
    };
    // v2's service API (`/api/service/get/{apiKey}`) takes the service
    // *owner's* key and secret: optional, both or neither, v2 only.
    let owner_given = raw.owner_api_key_env.is_some()
        || raw.owner_api_key_file.is_some()
        || raw.owner_api_secret_env.is_some()
        || raw.owner_api_secret_file.is_some();
    let owner = if !owner_given {
        None
    } else if api_version == Some(3) {
        problems.push(
            "target.owner_api_key_env",
            "only applies to Authlete API v2 (v3 reads the service with its access token)",
        );
        None
    } else {
        let key = secret(
            "target.owner_api_key",
            raw.owner_api_key_env.as_deref(),
            raw.owner_api_key_file.as_deref(),
            env,
            problems,
        );
        let secret = secret(
            "target.owner_api_secret",
            raw.owner_api_secret_env.as_deref(),
            raw.owner_api_secret_file.as_deref(),
            env,
            problems,
        );
        key.zip(secret)
            .map(|(key, secret)| AuthleteOwner { key, secret })
    };
    let rate_limit = match raw.rate_limit {
        Some(rate) if !(rate > 0.0 && rate.is_finite()) => {
            problems.push(
                "target.rate_limit",
                "must be a positive number of requests per second",
            );
            None
        }
        other => other,
    };
    let new_primary = match raw.new_primary_url.as_deref().map(BaseUrl::parse) {
        Some(Ok(url)) => Some(url),
        Some(Err(message)) => {
            problems.push("target.new_primary_url", message);
            None
        }
        None => None,
    };
    for (field, file) in [
        ("target.ca_file", &raw.ca_file),
        ("target.new_primary_ca_file", &raw.new_primary_ca_file),
    ] {
        if let Some(path) = file {
            ca_material(field, path, problems);
        }
    }
    let refresh_token_duration = duration(
        "target.refresh_token_duration",
        raw.refresh_token_duration,
        DEFAULT_REFRESH_DURATION,
        problems,
    );
    if problems.len() > start {
        return None;
    }
    Some(ServerConfig {
        kind: ServerKind::Authlete,
        url: url?,
        // Authlete has its own credentials; keeping the source's management
        // tokens here makes "credentials follow the primary" a no-op: calls
        // to the new authorization server pass their tokens unchanged.
        tokens: source.map(|s| s.tokens.clone())?,
        ca_file: raw.ca_file,
        http2: raw.http2,
        authlete: Some(AuthleteConfig {
            api_version: api_version?,
            service_id,
            credentials: credentials?,
            new_primary,
            new_primary_ca_file: raw.new_primary_ca_file,
            refresh_token_duration,
            token_sample: raw.token_sample.unwrap_or(DEFAULT_TOKEN_SAMPLE),
            rate_limit,
            owner,
        }),
    })
}

fn validate_server(
    side: &str,
    raw: RawServer,
    env: &dyn Env,
    problems: &mut Problems,
) -> Option<ServerConfig> {
    let start = problems.len();
    let kind = match raw.kind.as_str() {
        "connect2id" => Some(ServerKind::Connect2id),
        "authlete" => {
            problems.push(
                format!("{side}.kind"),
                "only the target can be an Authlete service",
            );
            None
        }
        other => {
            let expected = if side == "target" {
                "\"connect2id\" or \"authlete\""
            } else {
                "\"connect2id\""
            };
            problems.push(
                format!("{side}.kind"),
                format!("unknown kind {other:?} (expected {expected})"),
            );
            None
        }
    };
    let authlete_only = [
        ("api_version", raw.api_version.is_some()),
        ("service_id", raw.service_id.is_some()),
        (
            "access_token_env",
            raw.access_token_env.is_some() || raw.access_token_file.is_some(),
        ),
        (
            "api_key_env",
            raw.api_key_env.is_some() || raw.api_key_file.is_some(),
        ),
        (
            "api_secret_env",
            raw.api_secret_env.is_some() || raw.api_secret_file.is_some(),
        ),
        ("new_primary_url", raw.new_primary_url.is_some()),
        (
            "refresh_token_duration",
            raw.refresh_token_duration.is_some(),
        ),
        ("token_sample", raw.token_sample.is_some()),
        ("rate_limit", raw.rate_limit.is_some()),
        (
            "owner_api_key_env",
            raw.owner_api_key_env.is_some() || raw.owner_api_key_file.is_some(),
        ),
        (
            "owner_api_secret_env",
            raw.owner_api_secret_env.is_some() || raw.owner_api_secret_file.is_some(),
        ),
    ];
    for (field, present) in authlete_only {
        if present {
            problems.push(
                format!("{side}.{field}"),
                "only applies to kind = \"authlete\" targets",
            );
        }
    }
    let url = match BaseUrl::parse(&raw.url) {
        Ok(url) => Some(url),
        Err(message) => {
            problems.push(format!("{side}.url"), message);
            None
        }
    };
    if let Some(ca) = &raw.ca_file {
        ca_material(&format!("{side}.ca_file"), ca, problems);
    }
    let tokens = api_tokens(side, &raw, env, problems);
    if problems.len() > start {
        return None;
    }
    Some(ServerConfig {
        kind: kind?,
        url: url?,
        tokens: tokens?,
        ca_file: raw.ca_file,
        http2: raw.http2,
        authlete: None,
    })
}

fn api_tokens(
    side: &str,
    raw: &RawServer,
    env: &dyn Env,
    problems: &mut Problems,
) -> Option<ApiTokens> {
    let single = match (&raw.token_env, &raw.token_file) {
        (None, None) => None,
        (env_name, file) => Some(secret(
            &format!("{side}.token"),
            env_name.as_deref(),
            file.as_deref(),
            env,
            problems,
        )),
    };
    let per_api = raw.tokens.as_ref();
    if single.is_none() && per_api.is_none() {
        problems.push(
            format!("{side}.token_env"),
            "set token_env (one token for every management API) or a [".to_owned()
                + side
                + ".tokens] table",
        );
        return None;
    }
    let empty = RawTokens::default();
    let per_api = per_api.unwrap_or(&empty);
    let mut pick = |api: &str, env_name: &Option<String>, file: &Option<PathBuf>| {
        if env_name.is_some() || file.is_some() {
            secret(
                &format!("{side}.tokens.{api}"),
                env_name.as_deref(),
                file.as_deref(),
                env,
                problems,
            )
        } else if let Some(single) = &single {
            single.clone()
        } else {
            problems.push(
                format!("{side}.tokens.{api}_env"),
                format!("no token for the {api} API (set it, or {side}.token_env for all APIs)"),
            );
            None
        }
    };
    let clients = pick("clients", &per_api.clients_env, &per_api.clients_file);
    let authz_sessions = pick(
        "authz_sessions",
        &per_api.authz_sessions_env,
        &per_api.authz_sessions_file,
    );
    let authz_store = pick(
        "authz_store",
        &per_api.authz_store_env,
        &per_api.authz_store_file,
    );
    let session_store = pick(
        "session_store",
        &per_api.session_store_env,
        &per_api.session_store_file,
    );
    Some(ApiTokens {
        clients: clients?,
        authz_sessions: authz_sessions?,
        authz_store: authz_store?,
        session_store: session_store?,
    })
}

fn validate_journal(
    raw: RawJournal,
    env: &dyn Env,
    problems: &mut Problems,
) -> Option<(crate::journal::Config, Secret)> {
    let start = problems.len();
    let key = secret(
        "journal.payload_key",
        raw.payload_key_env.as_deref(),
        raw.payload_key_file.as_deref(),
        env,
        problems,
    );
    if let Some(key) = &key
        && let Err(err) = crate::journal::Cipher::from_hex(key.expose())
    {
        let field = if raw.payload_key_env.is_some() {
            "journal.payload_key_env"
        } else {
            "journal.payload_key_file"
        };
        problems.push(field, err.to_string());
    }
    let interval = duration(
        "journal.sync_interval",
        raw.sync_interval,
        crate::journal::DEFAULT_SYNC_INTERVAL,
        problems,
    );
    let sync = match raw.sync.as_deref() {
        None | Some("always") => crate::journal::SyncPolicy::Always,
        Some("interval") if interval.is_zero() => {
            problems.push("journal.sync_interval", "must be > 0");
            crate::journal::SyncPolicy::Always
        }
        Some("interval") => crate::journal::SyncPolicy::Interval(interval),
        Some(other) => {
            problems.push(
                "journal.sync",
                format!("{other:?} is not \"always\" or \"interval\""),
            );
            crate::journal::SyncPolicy::Always
        }
    };
    let segment_bytes = size(
        "journal.segment_bytes",
        raw.segment_bytes,
        crate::journal::DEFAULT_SEGMENT_BYTES,
        problems,
    );
    if segment_bytes < 1 << 20 {
        problems.push("journal.segment_bytes", "must be at least 1MiB");
    }
    if let Err(message) = writable_dir(&raw.dir) {
        problems.push("journal.dir", message);
    }
    if problems.len() > start {
        return None;
    }
    let mut journal = crate::journal::Config::new(raw.dir);
    journal.sync = sync;
    journal.segment_bytes = segment_bytes;
    Some((journal, key?))
}

/// Creates `dir` if needed and checks that files can be created in it.
fn writable_dir(dir: &Path) -> Result<(), String> {
    crate::journal::create_private_dir_all(dir)
        .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let probe = dir.join(format!(".handover-probe-{}", std::process::id()));
    crate::journal::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"probe"))
        .map_err(|err| format!("{} is not writable: {err}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The highest `sync.max_concurrency` accepted: each job may hold an
/// HTTP/1.1 connection to the secondary.
const MAX_SYNC_CONCURRENCY: usize = 16_384;

fn validate_sync(
    raw: RawSync,
    authlete: bool,
    problems: &mut Problems,
) -> Option<crate::sync::Config> {
    let start = problems.len();
    let allowed: &[Dataset] = if authlete {
        &Dataset::AUTHLETE
    } else {
        &Dataset::CONNECT2ID
    };
    let datasets = match raw.datasets {
        None => allowed.to_vec(),
        Some(names) => {
            let mut seen: Vec<Dataset> = Vec::new();
            for name in names {
                let dataset = name.parse::<Dataset>().ok();
                if let Some(dataset) = dataset.filter(|d| allowed.contains(d)) {
                    if seen.contains(&dataset) {
                        problems.push("sync.datasets", format!("dataset {name:?} listed twice"));
                    } else {
                        seen.push(dataset);
                    }
                } else {
                    let allowed: Vec<&str> = allowed.iter().map(|d| d.as_str()).collect();
                    let target = if authlete {
                        "an Authlete"
                    } else {
                        "a Connect2id"
                    };
                    problems.push(
                        "sync.datasets",
                        format!("dataset {name:?} does not apply to {target} target (expected one of {allowed:?})"),
                    );
                }
            }
            if seen.is_empty() && problems.len() == start {
                problems.push("sync.datasets", "must name at least one dataset");
            }
            seen
        }
    };
    let mut tenants: Vec<crate::model::Tenant> = Vec::new();
    for id in raw.tenants.unwrap_or_default() {
        let usable =
            !id.is_empty() && id.len() <= 255 && id.bytes().all(|byte| byte.is_ascii_graphic());
        if !usable {
            problems.push(
                "sync.tenants",
                format!("tenant {id:?} is not a Tenant-ID header value (visible ASCII, 1..=255)"),
            );
        } else if tenants
            .iter()
            .any(|t| t.tenant_id.as_deref() == Some(id.as_str()))
        {
            problems.push("sync.tenants", format!("tenant {id:?} listed twice"));
        } else {
            tenants.push(crate::model::Tenant::id(id));
        }
    }
    let workers = raw.workers.unwrap_or(crate::sync::DEFAULT_WORKERS);
    if workers == 0 || workers > 1024 {
        problems.push("sync.workers", "must be between 1 and 1024");
    }
    let max_concurrency = raw
        .max_concurrency
        .unwrap_or(crate::sync::DEFAULT_MAX_CONCURRENCY.max(workers));
    if max_concurrency == 0 || max_concurrency > MAX_SYNC_CONCURRENCY {
        problems.push(
            "sync.max_concurrency",
            format!("must be between 1 and {MAX_SYNC_CONCURRENCY}"),
        );
    } else if max_concurrency < workers {
        problems.push(
            "sync.max_concurrency",
            "must be at least sync.workers (the concurrency the sync starts with)",
        );
    }
    let retry_initial = duration(
        "sync.retry_initial",
        raw.retry_initial,
        crate::sync::DEFAULT_RETRY_INITIAL,
        problems,
    );
    let retry_max = duration(
        "sync.retry_max",
        raw.retry_max,
        crate::sync::DEFAULT_RETRY_MAX,
        problems,
    );
    if retry_initial.is_zero() {
        problems.push("sync.retry_initial", "must be > 0");
    }
    if retry_max < retry_initial {
        problems.push("sync.retry_max", "must be at least sync.retry_initial");
    }
    let request_timeout = duration(
        "sync.request_timeout",
        raw.request_timeout,
        crate::sync::DEFAULT_REQUEST_TIMEOUT,
        problems,
    );
    if request_timeout.is_zero() {
        problems.push("sync.request_timeout", "must be > 0");
    }
    if problems.len() > start {
        return None;
    }
    Some(crate::sync::Config {
        datasets,
        tenants,
        workers,
        max_concurrency,
        retry_initial,
        retry_max,
        request_timeout,
    })
}

fn validate_backfill(raw: RawBackfill, problems: &mut Problems) -> crate::backfill::Config {
    let concurrency = raw
        .concurrency
        .unwrap_or(crate::backfill::DEFAULT_CONCURRENCY);
    if concurrency == 0 || concurrency > 4096 {
        problems.push("backfill.concurrency", "must be between 1 and 4096");
    }
    crate::backfill::Config {
        auto_start: raw.auto_start.unwrap_or(false),
        concurrency,
        rate: raw.rate.unwrap_or(0),
        count_first: raw.count_first.unwrap_or(true),
    }
}

fn validate_cutover(raw: RawCutover, problems: &mut Problems) -> crate::cutover::Config {
    let defaults = crate::cutover::Config::default();
    let max_pause = duration(
        "cutover.max_pause",
        raw.max_pause,
        defaults.max_pause,
        problems,
    );
    if max_pause < Duration::from_millis(10) || max_pause > Duration::from_secs(60) {
        problems.push("cutover.max_pause", "must be between 10ms and 60s");
    }
    let max_lag = duration("cutover.max_lag", raw.max_lag, defaults.max_lag, problems);
    let verify_ahead = duration(
        "cutover.verify_ahead",
        raw.verify_ahead,
        defaults.verify_ahead,
        problems,
    );
    let hold_max_requests = raw.hold_max_requests.unwrap_or(defaults.hold_max_requests);
    if hold_max_requests == 0 {
        problems.push("cutover.hold_max_requests", "must be > 0");
    }
    let hold_max_bytes = size(
        "cutover.hold_max_bytes",
        raw.hold_max_bytes,
        defaults.hold_max_bytes as u64,
        problems,
    );
    let fallback_window = duration(
        "cutover.fallback_window",
        raw.fallback_window,
        defaults.fallback_window,
        problems,
    );
    // The static peer list is gone: one way to run a fleet.
    if !raw.peers.is_empty() {
        problems.push(
            "cutover.peers",
            "was removed: several instances share a [store] kind = \"postgres\" and coordinate the cutover through it (README, \"Running several instances\"); delete this key",
        );
    }
    let refresh_fallback_window = raw.refresh_fallback_window.map(|text| {
        duration(
            "cutover.refresh_fallback_window",
            Some(text),
            Duration::ZERO,
            problems,
        )
    });
    crate::cutover::Config {
        max_pause,
        max_lag,
        verify_ahead,
        hold_max_requests,
        hold_max_bytes: usize::try_from(hold_max_bytes).unwrap_or(usize::MAX),
        fallback_window,
        refresh_fallback_window,
    }
}

/// `cutover.refresh_fallback_window` applies to an Authlete target only (a
/// Connect2id target decrypts the source's refresh tokens itself), defaults
/// to the lifetime of its mirrored refresh tokens and may not exceed it: a
/// refresh token the old server still honours after that has no copy at
/// Authlete that could live as long.
fn validate_refresh_fallback(
    cutover: &mut crate::cutover::Config,
    target: Option<&ServerConfig>,
    problems: &mut Problems,
) {
    let Some(target) = target else { return };
    match (&target.authlete, cutover.refresh_fallback_window) {
        (None, Some(_)) => problems.push(
            "cutover.refresh_fallback_window",
            "only applies to kind = \"authlete\" targets (a Connect2id target takes the source's refresh tokens as they are)",
        ),
        (None, None) => {}
        (Some(authlete), window) => {
            let lifetime = authlete.refresh_token_duration;
            let window = window.unwrap_or(lifetime);
            if window > lifetime {
                problems.push(
                    "cutover.refresh_fallback_window",
                    format!(
                        "must not exceed target.refresh_token_duration ({}s): no refresh token mirrored at Authlete lives longer",
                        lifetime.as_secs()
                    ),
                );
            }
            cutover.refresh_fallback_window = Some(window);
        }
    }
}

fn validate_store(raw: RawStore, env: &dyn Env, problems: &mut Problems) -> crate::store::Config {
    let mut config = crate::store::Config::default();
    let has_url = raw.url_env.is_some() || raw.url_file.is_some();
    match raw.kind.as_deref() {
        None | Some("local") => {
            if has_url {
                problems.push(
                    "store.url_env",
                    "a connection URL is only used with kind = \"postgres\"",
                );
            }
        }
        Some("postgres") => {
            if has_url {
                if let Some(url) = secret(
                    "store.url",
                    raw.url_env.as_deref(),
                    raw.url_file.as_deref(),
                    env,
                    problems,
                ) {
                    // Never repeat the value or the parser's words about it:
                    // the URL may carry a password.
                    if !crate::store::url_parses(url.expose()) {
                        let field = if raw.url_env.is_some() {
                            "store.url_env"
                        } else {
                            "store.url_file"
                        };
                        problems.push(
                            field,
                            "is not a PostgreSQL connection URL (postgres://user@host:5432/db?sslmode=require) or key=value string",
                        );
                    }
                    config.kind = crate::store::Kind::Postgres { url };
                }
            } else {
                problems.push(
                    "store.url_env",
                    "kind = \"postgres\" needs the connection URL: set url_env or url_file",
                );
            }
        }
        Some(other) => problems.push(
            "store.kind",
            format!("{other:?} is not \"local\" or \"postgres\""),
        ),
    }
    match raw.pool_size {
        Some(0) => problems.push("store.pool_size", "must be > 0"),
        Some(size) => config.pool_size = size,
        None => {}
    }
    config.connect_timeout = duration(
        "store.connect_timeout",
        raw.connect_timeout,
        crate::store::DEFAULT_CONNECT_TIMEOUT,
        problems,
    );
    if config.connect_timeout.is_zero() {
        problems.push("store.connect_timeout", "must be > 0");
    }
    config.claim_lease = duration(
        "store.claim_lease",
        raw.claim_lease,
        crate::store::DEFAULT_CLAIM_LEASE,
        problems,
    );
    if config.claim_lease < Duration::from_secs(1) {
        problems.push(
            "store.claim_lease",
            "must be at least 1s (claims are renewed every third of it)",
        );
    }
    config.ca_file = raw.ca_file;
    config
}

/// Resolves a secret from `<field>_env` or `<field>_file` (exactly one).
fn secret(
    field: &str,
    env_name: Option<&str>,
    file: Option<&Path>,
    env: &dyn Env,
    problems: &mut Problems,
) -> Option<Secret> {
    match (env_name, file) {
        (Some(_), Some(_)) => {
            problems.push(
                format!("{field}_env"),
                format!("set {field}_env or {field}_file, not both"),
            );
            None
        }
        (Some(name), None) if !looks_like_variable_name(name) => {
            // Never repeat the value: it is most likely the secret itself.
            let noun = if field.ends_with("key") {
                "key"
            } else if field.ends_with("url") {
                "URL"
            } else {
                "token"
            };
            problems.push(
                format!("{field}_env"),
                format!(
                    "the value of {field}_env is not a variable name; did you paste the {noun} itself? Put it in an environment variable (or a file, {field}_file) and name that here"
                ),
            );
            None
        }
        (Some(name), None) => match env.var(name) {
            Some(value) if !value.trim().is_empty() => Some(Secret::new(value.trim())),
            Some(_) => {
                problems.push(
                    format!("{field}_env"),
                    format!("environment variable {name} is empty"),
                );
                None
            }
            None => {
                problems.push(
                    format!("{field}_env"),
                    format!("environment variable {name} is not set"),
                );
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(value) if !value.trim().is_empty() => {
                warn_if_shared(&format!("{field}_file"), path, problems);
                Some(Secret::new(value.trim()))
            }
            Ok(_) => {
                problems.push(
                    format!("{field}_file"),
                    format!("{} is empty", path.display()),
                );
                None
            }
            Err(err) => {
                problems.push(
                    format!("{field}_file"),
                    format!("cannot read {}: {err}", path.display()),
                );
                None
            }
        },
        (None, None) => {
            problems.push(format!("{field}_env"), "required");
            None
        }
    }
}

fn socket_addr(field: &str, text: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(
                field,
                format!("{text:?} is not an address like 0.0.0.0:8443"),
            );
            None
        }
    }
}

fn duration(
    field: &str,
    value: Option<String>,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    match value {
        None => default,
        Some(text) => parse_duration(&text).unwrap_or_else(|message| {
            problems.push(field, message);
            default
        }),
    }
}

fn size(field: &str, value: Option<String>, default: u64, problems: &mut Problems) -> u64 {
    match value {
        None => default,
        Some(text) => parse_size(&text).unwrap_or_else(|message| {
            problems.push(field, message);
            default
        }),
    }
}

fn readable_file(field: &str, path: &Path, problems: &mut Problems) {
    if let Err(err) = std::fs::File::open(path) {
        problems.push(field, format!("cannot read {}: {err}", path.display()));
    }
}

/// Whether `name` can be an environment variable's name rather than a
/// pasted secret: a shell identifier, and not secret-shaped (16 or more
/// characters with digits and either no `_` or mixed case, as tokens and
/// hex keys are and `HANDOVER_SOURCE_TOKEN_2` is not).
fn looks_like_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    let has = |test: fn(&char) -> bool| name.chars().any(|c| test(&c));
    let secret_shaped = name.len() >= 16
        && has(char::is_ascii_digit)
        && (!name.contains('_')
            || (has(char::is_ascii_lowercase) && has(char::is_ascii_uppercase)));
    identifier && !secret_shaped
}

/// Warns when a secret file can be read by the group or by others.
fn warn_if_shared(field: &str, path: &Path, problems: &mut Problems) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o044 != 0 {
                problems.warn(
                    field,
                    format!(
                        "{} holds a secret but is readable by {} (mode {mode:04o}); chmod 600 it",
                        path.display(),
                        if mode & 0o004 != 0 {
                            "everyone"
                        } else {
                            "its group"
                        }
                    ),
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (field, path, problems);
}

/// Loads the downstream TLS material as `serve` does (both files parse,
/// the key matches the certificate), so that `check` finds what would stop
/// the proxy.
fn tls_material(cert: &Path, key: &Path, problems: &mut Problems) {
    use crate::tls::Error;
    match crate::tls::server_config(cert, key) {
        Ok(_) => {}
        Err(Error::Pem {
            what: "certificates",
            message,
            ..
        }) => problems.push(
            "proxy.tls_cert",
            format!("{} has no usable certificate: {message}", cert.display()),
        ),
        Err(Error::Pem { message, .. }) => problems.push(
            "proxy.tls_key",
            format!("{} has no usable private key: {message}", key.display()),
        ),
        Err(Error::Rustls(rustls::Error::InconsistentKeys(_))) => problems.push(
            "proxy.tls_key",
            format!(
                "{} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
        ),
        Err(err) => problems.push("proxy.tls_key", err.to_string()),
    }
}

/// Loads a CA bundle as the upstream clients do.
fn ca_material(field: &str, path: &Path, problems: &mut Problems) {
    if let Err(err) = crate::tls::client_config(Some(path)) {
        problems.push(field, err.to_string());
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [proxy]
        listen = "127.0.0.1:8443"
        [source]
        kind = "connect2id"
        url = "http://127.0.0.1:18080/c2id"
        token_env = "SRC"
        [target]
        kind = "connect2id"
        url = "http://127.0.0.1:18081/c2id"
        token_env = "DST"
        [journal]
        dir = "/tmp/handover-config-tests"
        payload_key_env = "KEY"
    "#;

    const ADMIN_TOKEN: &str = "admin-token-with-at-least-32-characters";

    fn env() -> [(&'static str, &'static str); 4] {
        [
            ("SRC", "source-token"),
            ("DST", "target-token"),
            ("ADMIN", ADMIN_TOKEN),
            ("KEY", TEST_JOURNAL_KEY),
        ]
    }

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("test.toml"), &env())
    }

    fn problem_fields(text: &str) -> Vec<String> {
        match parse(text) {
            Err(Error::Invalid { problems, .. }) => problems.fields().map(str::to_owned).collect(),
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn proxy_runtime_is_per_core_unless_told() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.proxy.runtime, Runtime::per_core());
        assert_eq!(
            config.upstream.worker_pools,
            config.proxy.runtime.worker_pools()
        );
        let text = MINIMAL.replace("[proxy]", "[proxy]\nworkers = 3");
        let config = parse(&text).unwrap();
        assert_eq!(config.proxy.runtime, Runtime::PerCore { workers: 3 });
        assert_eq!(config.upstream.worker_pools, 3);
        let text = MINIMAL.replace("[proxy]", "[proxy]\nruntime = \"shared\"");
        let config = parse(&text).unwrap();
        assert_eq!(config.proxy.runtime, Runtime::Shared);
        assert_eq!(config.upstream.worker_pools, 0);
        for (extra, field) in [
            ("workers = 0", "proxy.workers"),
            ("runtime = \"shared\"\nworkers = 2", "proxy.workers"),
            ("runtime = \"threads\"", "proxy.runtime"),
        ] {
            let text = MINIMAL.replace("[proxy]", &format!("[proxy]\n{extra}"));
            assert_eq!(problem_fields(&text), [field], "{extra}");
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.proxy.forward.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(config.proxy.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(
            config.admin.listen,
            crate::admin::DEFAULT_LISTEN.parse().unwrap()
        );
        assert_eq!(config.source.url.base_path, "/c2id");
        assert_eq!(config.source.tokens, ApiTokens::single("source-token"));
        assert!(config.admin.token.is_none());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let text = MINIMAL.replace("[proxy]", "[proxy]\nlisten_adress = \"x\"");
        match parse(&text) {
            Err(Error::Parse { message, .. }) => {
                assert!(message.contains("listen_adress"), "{message}")
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn every_problem_names_its_field() {
        let text = MINIMAL
            .replace(
                "listen = \"127.0.0.1:8443\"",
                "listen = \"nowhere\"\nmax_body_bytes = \"0B\"\nidle_timeout = \"5\"",
            )
            .replace("token_env = \"DST\"", "token_env = \"MISSING\"");
        let fields = problem_fields(&text);
        assert_eq!(
            fields,
            [
                "proxy.listen",
                "proxy.idle_timeout",
                "proxy.max_body_bytes",
                "target.token_env"
            ]
        );
    }

    #[test]
    fn missing_secret_says_which_variable() {
        let text = MINIMAL.replace(
            "token_env = \"DST\"",
            "token_env = \"HANDOVER_TARGET_TOKEN\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("target.token_env: environment variable HANDOVER_TARGET_TOKEN is not set"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn admin_on_public_address_needs_a_token() {
        let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
        assert_eq!(problem_fields(&text), ["admin.token_env"]);
        let text =
            format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_env = \"ADMIN\"\n");
        assert_eq!(
            parse(&text).unwrap().admin.token,
            Some(Secret::new(ADMIN_TOKEN))
        );
    }

    #[test]
    fn per_api_tokens_override_the_single_token() {
        let text = MINIMAL.replace(
            "token_env = \"SRC\"",
            "token_env = \"SRC\"\ntokens = { session_store_env = \"ADMIN\" }",
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.source.tokens.session_store, Secret::new(ADMIN_TOKEN));
        assert_eq!(config.source.tokens.clients, Secret::new("source-token"));
        let text = MINIMAL.replace("token_env = \"SRC\"", "tokens = { clients_env = \"SRC\" }");
        assert_eq!(
            problem_fields(&text),
            [
                "source.tokens.authz_sessions_env",
                "source.tokens.authz_store_env",
                "source.tokens.session_store_env"
            ]
        );
    }

    #[test]
    fn the_concurrency_cap_is_at_least_the_starting_concurrency() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.sync.workers, crate::sync::DEFAULT_WORKERS);
        assert_eq!(
            config.sync.max_concurrency,
            crate::sync::DEFAULT_MAX_CONCURRENCY
        );
        let text = format!("{MINIMAL}\n[sync]\nworkers = 32\nmax_concurrency = 8\n");
        assert_eq!(problem_fields(&text), ["sync.max_concurrency"]);
        let text = format!("{MINIMAL}\n[sync]\nmax_concurrency = 0\n");
        assert_eq!(problem_fields(&text), ["sync.max_concurrency"]);
        let fixed = parse(&format!(
            "{MINIMAL}\n[sync]\nworkers = 32\nmax_concurrency = 32\n"
        ))
        .unwrap();
        assert_eq!(
            fixed.sync.bounds(),
            crate::sync::Bounds {
                initial: 32,
                max: 32
            }
        );
    }

    #[test]
    fn journal_key_and_datasets_are_checked() {
        let text = MINIMAL.replace("payload_key_env = \"KEY\"", "payload_key_env = \"SRC\"");
        assert_eq!(problem_fields(&text), ["journal.payload_key_env"]);
        let text =
            format!("{MINIMAL}\n[sync]\ndatasets = [\"clients\", \"tokens\"]\nworkers = 0\n");
        assert_eq!(problem_fields(&text), ["sync.datasets", "sync.workers"]);
        let text = format!("{MINIMAL}\n[sync]\ntenants = [\"acme\", \"acme\", \"a b\"]\n");
        assert_eq!(problem_fields(&text), ["sync.tenants", "sync.tenants"]);
        let text = format!("{MINIMAL}\n[sync]\ntenants = [\"acme\"]\n");
        assert_eq!(
            parse(&text).unwrap().sync.tenants,
            [crate::model::Tenant::id("acme")]
        );
        let text = MINIMAL.replace(
            "payload_key_env = \"KEY\"",
            "payload_key_env = \"KEY\"\nsync = \"sometimes\"",
        );
        assert_eq!(problem_fields(&text), ["journal.sync"]);
        let config = parse(&MINIMAL.replace(
            "payload_key_env = \"KEY\"",
            "payload_key_env = \"KEY\"\nsync = \"interval\"",
        ))
        .unwrap();
        assert_eq!(
            config.journal.sync,
            crate::journal::SyncPolicy::Interval(crate::journal::DEFAULT_SYNC_INTERVAL)
        );
        assert_eq!(config.sync.datasets, Dataset::CONNECT2ID);
    }

    #[test]
    fn source_and_target_must_differ() {
        let text = MINIMAL.replace("18081", "18080");
        assert_eq!(problem_fields(&text), ["target.url"]);
    }

    #[test]
    fn tls_needs_both_files() {
        let text = MINIMAL.replace("[source]", "tls_cert = \"/nonexistent.pem\"\n[source]");
        assert_eq!(problem_fields(&text), ["proxy.tls_cert", "proxy.tls_key"]);
    }

    #[test]
    fn a_secret_pasted_where_a_variable_name_belongs_is_not_repeated() {
        let pasted_key = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        for (field, pasted) in [
            ("payload_key_env = \"KEY\"", pasted_key),
            ("payload_key_env = \"KEY\"", TEST_JOURNAL_KEY),
            ("token_env = \"DST\"", "Sup3rS3cretValue-xyz"),
            ("token_env = \"DST\"", "Zq3vW9xKp2Lr8sT4uY6aB1cD5eF7gH0"),
        ] {
            let name = field.split(" = ").next().unwrap();
            let text = MINIMAL.replace(field, &format!("{name} = \"{pasted}\""));
            let err = parse(&text).unwrap_err().to_string();
            assert!(!err.contains(pasted), "{err}");
            assert!(
                err.contains("is not a variable name; did you paste the"),
                "{err}"
            );
        }
        let text = MINIMAL.replace(
            "payload_key_env = \"KEY\"",
            &format!("payload_key_env = \"{pasted_key}\""),
        );
        assert!(
            parse(&text).unwrap_err().to_string().contains(
                "journal.payload_key_env: the value of journal.payload_key_env is not a variable name; did you paste the key itself?"
            )
        );
        // Conventional names are still named when unset.
        for name in ["HANDOVER_SOURCE_TOKEN_2", "handover_key", "K"] {
            assert!(looks_like_variable_name(name), "{name}");
        }
    }

    #[test]
    fn admin_tokens_shorter_than_32_characters_are_refused() {
        let env = [
            ("SRC", "source-token"),
            ("DST", "target-token"),
            ("ADMIN", "0123456789abcdef0123456789abcde"),
            ("KEY", TEST_JOURNAL_KEY),
        ];
        let text = format!("{MINIMAL}\n[admin]\ntoken_env = \"ADMIN\"\n");
        let err = Config::parse(&text, Path::new("test.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin.token_env: the admin token has 31 characters; at least 32"),
            "{err}"
        );
        assert!(!err.contains("0123456789abcdef"), "{err}");
        assert!(parse(&text).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_readable_by_others_are_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, ADMIN_TOKEN).unwrap();
        let text = format!("{MINIMAL}\n[admin]\ntoken_file = \"{}\"\n", file.display());
        for (mode, warned) in [
            (0o600, None),
            (0o640, Some("its group")),
            (0o644, Some("everyone")),
        ] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let config = parse(&text).unwrap();
            match warned {
                None => assert!(config.warnings.is_empty(), "{:?}", config.warnings),
                Some(whom) => {
                    assert_eq!(config.warnings.len(), 1);
                    let warning = &config.warnings[0];
                    assert!(warning.starts_with("admin.token_file: "), "{warning}");
                    assert!(warning.contains(whom), "{warning}");
                    assert!(!warning.contains(ADMIN_TOKEN), "{warning}");
                }
            }
        }
    }

    #[test]
    fn the_removed_peer_list_is_refused_with_where_to_go() {
        let text =
            format!("{MINIMAL}\n[cutover]\npeers = [\"https://handover-2.internal:9901\"]\n");
        assert_eq!(problem_fields(&text), ["cutover.peers"]);
        let Err(err) = parse(&text) else {
            panic!("accepted a peer list")
        };
        assert!(err.to_string().contains("[store] kind"), "{err}");
        // An empty list (as earlier example files had) is harmless.
        assert!(parse(&format!("{MINIMAL}\n[cutover]\npeers = []\n")).is_ok());
    }

    #[test]
    fn store_is_local_by_default_and_postgres_needs_a_url_that_is_never_echoed() {
        let config = parse(MINIMAL).unwrap();
        assert!(matches!(config.store.kind, crate::store::Kind::Local));
        assert_eq!(config.store.pool_size, crate::store::DEFAULT_POOL_SIZE);

        assert_eq!(
            problem_fields(&format!("{MINIMAL}\n[store]\nkind = \"postgres\"\n")),
            ["store.url_env"]
        );
        assert_eq!(
            problem_fields(&format!("{MINIMAL}\n[store]\nkind = \"etcd\"\n")),
            ["store.kind"]
        );
        assert_eq!(
            problem_fields(&format!("{MINIMAL}\n[store]\nurl_env = \"SRC\"\n")),
            ["store.url_env"]
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.url");
        std::fs::write(
            &file,
            "postgres://handover:pw-SECRET@db.internal/handover\n",
        )
        .unwrap();
        let text = format!(
            "{MINIMAL}\n[store]\nkind = \"postgres\"\nurl_file = \"{}\"\npool_size = 3\nconnect_timeout = \"2s\"\n",
            file.display()
        );
        let config = parse(&text).unwrap();
        let crate::store::Kind::Postgres { url } = &config.store.kind else {
            panic!("expected a PostgreSQL store");
        };
        assert_eq!(
            url.expose(),
            "postgres://handover:pw-SECRET@db.internal/handover"
        );
        assert_eq!(config.store.pool_size, 3);
        assert_eq!(config.store.connect_timeout, Duration::from_secs(2));
        assert!(!format!("{config:?}").contains("pw-SECRET"));

        // Not a URL: the message names the field, never the value.
        std::fs::write(&file, "postgres://u:pw-SECRET@host:notaport/db").unwrap();
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("store.url_file"), "{err}");
        assert!(!err.contains("pw-SECRET"), "{err}");
        assert_eq!(
            problem_fields(&format!("{MINIMAL}\n[store]\npool_size = 0\n")),
            ["store.pool_size"]
        );
    }

    /// A certificate and key for `localhost`, and a second key.
    fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let paths = (
            dir.join("tls.crt"),
            dir.join("tls.key"),
            dir.join("other.key"),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        std::fs::write(&paths.2, other.serialize_pem()).unwrap();
        #[cfg(unix)]
        for path in [&paths.1, &paths.2] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        paths
    }

    #[test]
    fn tls_material_is_loaded_as_serve_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, other) = tls_files(dir.path());
        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "not a key").unwrap();
        let with = |cert: &Path, key: &Path| {
            MINIMAL.replace(
                "[source]",
                &format!(
                    "tls_cert = \"{}\"\ntls_key = \"{}\"\n[source]",
                    cert.display(),
                    key.display()
                ),
            )
        };
        assert!(parse(&with(&cert, &key)).is_ok());
        for (cert_file, key_file, field, says) in [
            (&cert, dir.path(), "proxy.tls_key", "no usable private key"),
            (
                &cert,
                garbage.as_path(),
                "proxy.tls_key",
                "no usable private key",
            ),
            (
                &cert,
                other.as_path(),
                "proxy.tls_key",
                "does not match the certificate",
            ),
            (
                &key,
                key.as_path(),
                "proxy.tls_cert",
                "no usable certificate",
            ),
        ] {
            let text = with(cert_file, key_file);
            assert_eq!(problem_fields(&text), [field], "{}", key_file.display());
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("PRIVATE KEY"), "{err}");
        }
    }

    #[test]
    fn an_authlete_rate_limit_is_positive_and_owner_credentials_are_v2_only() {
        let target = |extra: &str, version: u8| {
            let credentials = if version == 3 {
                "service_id = \"1\"\naccess_token_env = \"DST\""
            } else {
                "api_key_env = \"DST\"\napi_secret_env = \"DST\""
            };
            MINIMAL.replace(
                "kind = \"connect2id\"\n        url = \"http://127.0.0.1:18081/c2id\"\n        token_env = \"DST\"",
                &format!("kind = \"authlete\"\nurl = \"http://127.0.0.1:18081\"\napi_version = {version}\n{credentials}\n{extra}"),
            )
        };
        let config = parse(&target("rate_limit = 12.5", 3)).unwrap();
        assert_eq!(config.target.authlete.unwrap().rate_limit, Some(12.5));
        assert_eq!(
            parse(&target("", 3))
                .unwrap()
                .target
                .authlete
                .unwrap()
                .rate_limit,
            None
        );
        assert_eq!(
            problem_fields(&target("rate_limit = 0", 3)),
            ["target.rate_limit"]
        );
        assert_eq!(
            problem_fields(&target("rate_limit = -1", 2)),
            ["target.rate_limit"]
        );
        let owner = "owner_api_key_env = \"DST\"\nowner_api_secret_env = \"DST\"";
        let v2 = parse(&target(owner, 2)).unwrap();
        assert!(v2.target.authlete.unwrap().owner.is_some());
        assert_eq!(
            problem_fields(&target(owner, 3)),
            ["target.owner_api_key_env"]
        );
        let connect2id =
            MINIMAL.replace("token_env = \"DST\"", "token_env = \"DST\"\nrate_limit = 5");
        assert!(problem_fields(&connect2id).contains(&"target.rate_limit".to_owned()));
    }

    #[test]
    fn the_refresh_fallback_window_defaults_to_the_refresh_token_lifetime_and_may_not_exceed_it() {
        let authlete = MINIMAL.replace(
            "kind = \"connect2id\"\n        url = \"http://127.0.0.1:18081/c2id\"\n        token_env = \"DST\"",
            "kind = \"authlete\"\nurl = \"http://127.0.0.1:18081\"\napi_version = 3\nservice_id = \"1\"\naccess_token_env = \"DST\"\nrefresh_token_duration = \"30d\"",
        );
        assert_ne!(authlete, MINIMAL);
        let config = parse(&authlete).unwrap();
        assert_eq!(
            config.cutover.refresh_fallback_window,
            Some(Duration::from_secs(30 * 86_400))
        );
        let shorter = format!("{authlete}\n[cutover]\nrefresh_fallback_window = \"7d\"\n");
        assert_eq!(
            parse(&shorter).unwrap().cutover.refresh_fallback_window,
            Some(Duration::from_secs(7 * 86_400))
        );
        let longer = format!("{authlete}\n[cutover]\nrefresh_fallback_window = \"31d\"\n");
        assert_eq!(problem_fields(&longer), ["cutover.refresh_fallback_window"]);
        let connect2id = format!("{MINIMAL}\n[cutover]\nrefresh_fallback_window = \"1d\"\n");
        assert_eq!(
            problem_fields(&connect2id),
            ["cutover.refresh_fallback_window"]
        );
        assert_eq!(
            parse(MINIMAL).unwrap().cutover.refresh_fallback_window,
            None
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(..)");
    }
}
