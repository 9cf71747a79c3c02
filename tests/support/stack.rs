//! A whole migration in one process: a source and a target Connect2id
//! emulator (same JWK set, same public issuer: the proxy's URL), and the real
//! proxy in front of the source, with drivers for traffic through the proxy
//! and for direct checks on either server. [`AuthleteStack`] is the same with
//! an Authlete service (emulated, v2 or v3 API) as the target.

use std::collections::BTreeMap;
use std::time::Duration;

use handover::api::AdminClient;
use handover::config::{Config, ServerKind};
use handover::emulator::connect2id::{self, Connect2id, Handle};
use handover::emulator::driver::Driver;
use handover::emulator::jwks::JwkSet;
use handover::model::Dataset;
use handover::model::Secret;
use handover::servers::authlete::{
    Config as AuthleteConfig, Credentials as AuthleteCredentials, DEFAULT_REFRESH_DURATION,
    DEFAULT_TOKEN_SAMPLE,
};
use handover::servers::connect2id::ApiTokens;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::TcpListener;

use super::authlete::{self as authlete_support, Version};
use super::proxy::{TestProxy, client, get};

/// The management token of both emulators.
pub const TOKEN: &str = "ztucZS1ZyFKgh0tUEruUtiSTXhnexmd6-stack";

/// The operator's controls of the proxy in a stack (`self.proxy`, started
/// from `self.config`), shared by every stack.
macro_rules! proxy_controls {
    () => {
        /// A client of the proxy's admin API, as the operator CLI uses it.
        pub fn admin(&self) -> AdminClient {
            AdminClient::new(&self.proxy.admin_url(""), Some(TOKEN.to_owned()))
        }

        /// Shuts the proxy down cleanly (its journal directory stays).
        pub async fn stop_proxy(&mut self) {
            self.proxy.stop().await;
        }

        /// Shuts the proxy down cleanly (unless it is already stopped) and
        /// starts a new one on the same journal directory and downstream
        /// address, as a restart or a deploy does. The admin address changes.
        pub async fn restart_proxy(&mut self) {
            restart(&mut self.proxy, &self.config).await;
        }

        /// The journal directory of the running proxy.
        pub fn journal_dir(&self) -> &std::path::Path {
            journal_dir_of(&self.proxy)
        }

        /// Waits until the journal is empty (every change reached the target).
        pub async fn wait_synced(&self) {
            wait_synced(&self.proxy).await;
        }

        /// The current value of a metric line from `/metrics`.
        pub async fn metric(&self, name: &str) -> Option<f64> {
            metric_of(&self.proxy, name).await
        }
    };
}

pub struct Stack {
    pub source: Handle,
    pub target: Handle,
    pub proxy: TestProxy,
    /// Traffic through the proxy.
    pub via_proxy: Driver,
    /// Direct to the source.
    pub at_source: Driver,
    /// Direct to the target.
    pub at_target: Driver,
    pub jwks: JwkSet,
    /// The proxy's config (its journal directory is the proxy's
    /// `journal_dir`), for restarting it.
    pub config: Config,
}

/// How the two emulated servers are set up. By default they share one JWK
/// set (as a migration requires) and the management token [`TOKEN`].
#[derive(Debug, Clone)]
pub struct Servers {
    /// The source's JWK set; `None` generates one.
    pub source_jwks: Option<JwkSet>,
    /// The target's own JWK set; `None` shares the source's.
    pub target_jwks: Option<JwkSet>,
    /// The source's management tokens (the proxy's `source.tokens` too).
    pub source_tokens: connect2id::ApiTokens,
    /// The target's management tokens (the proxy's `target.tokens` too).
    pub target_tokens: connect2id::ApiTokens,
    /// Synthetic records per dataset pre-loaded on the source.
    pub seed: usize,
    /// How strictly both emulators read Connect2id; `None` keeps the
    /// emulator's default.
    pub strictness: Option<connect2id::Strictness>,
    /// The target's own strictness, when it differs from `strictness`.
    pub target_strictness: Option<connect2id::Strictness>,
    /// Tenants of the multi-tenant edition, on both servers (empty: the
    /// regular edition).
    pub tenants: Vec<String>,
}

impl Default for Servers {
    fn default() -> Self {
        Self {
            source_jwks: None,
            target_jwks: None,
            source_tokens: connect2id::ApiTokens::single(TOKEN),
            target_tokens: connect2id::ApiTokens::single(TOKEN),
            seed: 0,
            strictness: None,
            target_strictness: None,
            tenants: Vec::new(),
        }
    }
}

/// The proxy's form of an emulator's management tokens.
pub fn proxy_tokens(tokens: &connect2id::ApiTokens) -> ApiTokens {
    ApiTokens {
        clients: Secret::new(&tokens.clients),
        authz_sessions: Secret::new(&tokens.authz_sessions),
        authz_store: Secret::new(&tokens.authz_store),
        session_store: Secret::new(&tokens.session_store),
    }
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts everything; `adjust` may change the proxy config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_servers(Servers::default(), adjust).await
    }

    /// Starts everything with `seed` synthetic records per dataset on the
    /// source (records that existed before the proxy came: the backfill's
    /// work); the target starts empty. `adjust` may change the proxy config.
    pub async fn start_seeded(seed: usize, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_servers(
            Servers {
                seed,
                ..Servers::default()
            },
            adjust,
        )
        .await
    }

    /// Starts everything with the servers set up as `servers` says (the
    /// drivers use each side's clients token); `adjust` may change the
    /// proxy config.
    pub async fn start_servers(servers: Servers, adjust: impl FnOnce(&mut Config)) -> Self {
        let jwks = servers.source_jwks.clone().unwrap_or_else(JwkSet::generate);
        let target_jwks = servers.target_jwks.clone().unwrap_or_else(|| jwks.clone());
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = issuer_of(&proxy_listener);
        let emulator =
            |jwks: &JwkSet, tokens: &connect2id::ApiTokens| c2id_config(&issuer, jwks, tokens);
        let mut source_config = emulator(&jwks, &servers.source_tokens);
        source_config.seed = servers.seed;
        let mut target_config = emulator(&target_jwks, &servers.target_tokens);
        if let Some(strictness) = servers.strictness {
            source_config.strictness = strictness;
            target_config.strictness = strictness;
        }
        if let Some(strictness) = servers.target_strictness {
            target_config.strictness = strictness;
        }
        source_config.tenants = servers.tenants.clone();
        target_config.tenants = servers.tenants.clone();
        let source = start_emulator(source_config).await;
        let target = start_emulator(target_config).await;
        let mut config = Config::for_test(&source.url(), &target.url(), TOKEN);
        config.source.tokens = proxy_tokens(&servers.source_tokens);
        config.target.tokens = proxy_tokens(&servers.target_tokens);
        adjust(&mut config);
        let mut proxy = TestProxy::start_on_with_journal_dir(proxy_listener, config.clone()).await;
        let via_proxy = Driver::new(proxy.url("/c2id"), &servers.source_tokens.clients);
        let at_source = Driver::new(source.url(), &servers.source_tokens.clients);
        let at_target = Driver::new(target.url(), &servers.target_tokens.clients);
        proxy.wait_ready().await;
        Self {
            source,
            target,
            proxy,
            via_proxy,
            at_source,
            at_target,
            jwks,
            config,
        }
    }

    pub fn source_emulator(&self) -> &Connect2id {
        self.source.emulator()
    }

    pub fn target_emulator(&self) -> &Connect2id {
        self.target.emulator()
    }

    /// Lets time pass on both servers (their clocks move together, as two
    /// servers' wall clocks do).
    pub fn advance_clocks(&self, by: Duration) {
        self.source_emulator().advance_clock(by);
        self.target_emulator().advance_clock(by);
    }

    proxy_controls!();
}

/// The issuer both emulated Connect2id servers announce: the proxy's URL.
pub fn issuer_of(proxy_listener: &TcpListener) -> String {
    format!("http://{}/c2id", proxy_listener.local_addr().unwrap())
}

/// An emulated Connect2id server under `/c2id` with the proxy's issuer.
pub fn c2id_config(
    issuer: &str,
    jwks: &JwkSet,
    tokens: &connect2id::ApiTokens,
) -> connect2id::Config {
    let mut config = connect2id::Config::new(tokens.clone(), jwks.clone());
    config.base_path = "/c2id".to_owned();
    config.issuer = Some(issuer.to_owned());
    config
}

/// Shuts `proxy` down cleanly (unless it is already stopped) and starts a
/// new one from `config` on the same journal directory and downstream
/// address, as a restart or a deploy does. The admin address changes.
async fn restart(proxy: &mut TestProxy, config: &Config) {
    proxy.stop().await;
    let dir = proxy
        .journal_dir
        .take()
        .expect("the stack owns the journal");
    let mut config = config.clone();
    config.journal.dir = dir.path().to_owned();
    config.proxy.listen = proxy.addr;
    *proxy = TestProxy::start_with_journal(config).await;
    proxy.journal_dir = Some(dir);
    proxy.wait_ready().await;
}

fn journal_dir_of(proxy: &TestProxy) -> &std::path::Path {
    proxy
        .journal_dir
        .as_ref()
        .expect("the stack owns the journal")
        .path()
}

/// Waits until the proxy's journal is empty (every change reached the
/// target).
async fn wait_synced(proxy: &TestProxy) {
    let drained = wait_drained(&proxy.admin_url("/metrics"), Duration::from_secs(30)).await;
    assert!(drained, "the journal did not drain");
}

async fn metric_of(proxy: &TestProxy, name: &str) -> Option<f64> {
    let (_, body) = get(&client(), &proxy.admin_url("/metrics")).await;
    metric(&String::from_utf8_lossy(&body), name)
}

/// A migration to Authlete in one process: a Connect2id source emulator
/// (public issuer: the proxy's URL), an Authlete service emulator as the
/// target, spoken to in one API version, and the real proxy in front of the
/// source syncing clients and tokens to it.
pub struct AuthleteStack {
    pub source: Handle,
    /// The Authlete service, with helpers for its API (both versions).
    pub authlete: authlete_support::Emulator,
    /// The new authorization server built on it, when set up (traffic
    /// goes there after a cutover).
    pub front: Option<handover::emulator::authlete::Handle>,
    /// The API version the proxy speaks to Authlete (and the checks use).
    pub version: Version,
    pub proxy: TestProxy,
    /// Traffic through the proxy.
    pub via_proxy: Driver,
    /// Direct to the source.
    pub at_source: Driver,
    /// The proxy's config, for restarting it.
    pub config: Config,
}

impl AuthleteStack {
    /// Starts everything, the source empty.
    pub async fn start(version: Version) -> Self {
        Self::start_seeded(version, 0).await
    }

    /// Starts everything with `seed` synthetic records per dataset on the
    /// source (clients, and long-lived authorizations with refresh tokens:
    /// the backfill's work); Authlete starts empty.
    pub async fn start_seeded(version: Version, seed: usize) -> Self {
        Self::start_with(
            version,
            AuthleteSetup {
                seed,
                ..AuthleteSetup::default()
            },
            |_| {},
        )
        .await
    }

    /// Starts everything as `setup` says; `adjust` may change the proxy
    /// config.
    pub async fn start_with(
        version: Version,
        setup: AuthleteSetup,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let jwks = JwkSet::generate();
        let tokens = connect2id::ApiTokens::single(TOKEN);
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut source_config = c2id_config(&issuer_of(&proxy_listener), &jwks, &tokens);
        source_config.seed = setup.seed;
        source_config.strictness = setup.source;
        let source = start_emulator(source_config).await;
        let authlete = authlete_support::start(handover::emulator::authlete::Config {
            strictness: setup.authlete,
            ..authlete_support::config()
        })
        .await;
        let mut config = Config::for_test(&source.url(), &authlete.handle.url(), TOKEN);
        config.target.kind = ServerKind::Authlete;
        let mut settings = proxy_authlete_config(&authlete, version);
        let front = if setup.front {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front = authlete
                .authlete
                .clone()
                .start_front(listener, "/c2id")
                .await;
            settings.new_primary = Some(handover::model::BaseUrl::parse(&front.url()).unwrap());
            Some(front)
        } else {
            None
        };
        config.cutover.refresh_fallback_window = Some(settings.refresh_token_duration);
        config.target.authlete = Some(settings);
        config.sync.datasets = Dataset::AUTHLETE.to_vec();
        adjust(&mut config);
        let mut proxy = TestProxy::start_on_with_journal_dir(proxy_listener, config.clone()).await;
        let via_proxy = Driver::new(proxy.url("/c2id"), TOKEN);
        let at_source = Driver::new(source.url(), TOKEN);
        proxy.wait_ready().await;
        Self {
            source,
            authlete,
            front,
            version,
            proxy,
            via_proxy,
            at_source,
            config,
        }
    }

    pub fn source_emulator(&self) -> &Connect2id {
        self.source.emulator()
    }

    proxy_controls!();

    /// Changes the sync gave up on.
    pub async fn dead_letters(&self) -> u64 {
        self.admin().status().await.unwrap().journal.dead_letters
    }
}

/// How the servers of an [`AuthleteStack`] are set up.
#[derive(Debug, Clone, Default)]
pub struct AuthleteSetup {
    /// Synthetic records per dataset pre-loaded on the source.
    pub seed: usize,
    /// The Connect2id source's reading.
    pub source: connect2id::Strictness,
    /// The Authlete service's reading.
    pub authlete: handover::emulator::authlete::Strictness,
    /// Start a new authorization server built on the service (the
    /// proxy's `target.new_primary_url`), so that a cutover can happen.
    pub front: bool,
}

/// The proxy's `[target]` Authlete settings for `emulator` in `version`
/// (v2: API key and secret, Basic, no service id; v3: service id and
/// access token, Bearer), as `demo --target authlete` builds them.
pub fn proxy_authlete_config(
    emulator: &authlete_support::Emulator,
    version: Version,
) -> AuthleteConfig {
    let service = emulator.authlete.config();
    let (api_version, service_id, credentials) = match version {
        Version::V2 => (
            2,
            None,
            AuthleteCredentials::V2 {
                key: Secret::new(&service.api_key),
                secret: Secret::new(&service.api_secret),
            },
        ),
        Version::V3 => (
            3,
            Some(service.service_id),
            AuthleteCredentials::V3 {
                token: Secret::new(&service.access_token),
            },
        ),
    };
    AuthleteConfig {
        api_version,
        service_id,
        credentials,
        new_primary: None,
        new_primary_ca_file: None,
        refresh_token_duration: DEFAULT_REFRESH_DURATION,
        token_sample: DEFAULT_TOKEN_SAMPLE,
        rate_limit: None,
        owner: None,
    }
}

/// Waits until the proxy whose metrics are at `metrics_url` has drained its
/// journal (`handover_journal_depth 0`, refreshed on every scrape: a change
/// is journaled before its client gets an answer and leaves the journal only
/// once it reached the target); false if that does not happen within
/// `deadline`.
pub async fn wait_drained(metrics_url: &str, deadline: Duration) -> bool {
    let http = client();
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let request = http::Request::get(metrics_url)
            .body(Default::default())
            .unwrap();
        if let Ok(response) = http.request(request).await
            && let Ok(body) = response.into_body().collect().await
        {
            let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            if metric(&text, "handover_journal_depth") == Some(0.0) {
                return true;
            }
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn start_emulator(config: connect2id::Config) -> Handle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Connect2id::new(config).start(listener).await
}

/// A metric's value in Prometheus text (the first line starting with
/// `name` followed by a space or `{`; pass the full `name{labels}` to pick a
/// series).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The sum of every series of a metric (0 when it has none yet).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .sum()
}

/// Every record of every dataset of an emulator, in comparable form (the
/// fields that legitimately differ removed), by key.
pub fn snapshot(emulator: &Connect2id) -> BTreeMap<String, Value> {
    let mut records = BTreeMap::new();
    for client in emulator.clients() {
        let id = client["client_id"].as_str().unwrap().to_owned();
        records.insert(format!("client:{id}"), Dataset::Clients.comparable(&client));
    }
    for authorization in emulator.authorizations() {
        let key = format!(
            "authz:{}|{}",
            authorization["sub"].as_str().unwrap(),
            authorization["cid"].as_str().unwrap()
        );
        records.insert(key, Dataset::Authorizations.comparable(&authorization));
    }
    for (sid, session) in emulator.sessions() {
        records.insert(
            format!("session:{sid}"),
            Dataset::Sessions.comparable(&session),
        );
    }
    records
}

/// How the target's records differ from the source's, one line per key
/// (empty when they agree).
pub fn differences(source: &Connect2id, target: &Connect2id) -> Vec<String> {
    let source = snapshot(source);
    let target = snapshot(target);
    let mut drift = Vec::new();
    for (key, record) in &source {
        match target.get(key) {
            None => drift.push(format!("{key}: missing on target")),
            Some(other) if other != record => {
                drift.push(format!(
                    "{key}: differs\n  source {record}\n  target {other}"
                ));
            }
            Some(_) => {}
        }
    }
    for key in target.keys().filter(|key| !source.contains_key(*key)) {
        drift.push(format!("{key}: extra on target"));
    }
    drift
}
