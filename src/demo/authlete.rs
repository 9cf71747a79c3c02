//! `handover demo --target authlete`: the second migration path. A
//! pre-loaded Connect2id source as shipped (no refresh-token rotation
//! unless a consent asks, refresh tokens sealed with a random nonce), an
//! Authlete service (emulated, its documented reading: paths, numeric ids,
//! replace-style client update, generic duplicate errors, typed client
//! metadata) as the target with a new authorization server built on it,
//! the proxy in front of the source.
//!
//! Before the proxy mirrors anything, some users log in straight at the
//! source and stay idle until after the flip. Clients of every
//! authentication method register through the proxy. The demo traffic
//! (most consents without rotation) runs through the proxy while the
//! backfill copies clients and what refresh tokens the export carries;
//! every token the source issues is created in Authlete with the same
//! value, a refresh that keeps its token captures it, rotations replace
//! the pair, revocations remove it. Then the real verify, the check of
//! every token users hold at Authlete, the cutover to the new server, and
//! every refresh token held before the flip used once after it (a token
//! the new server does not know goes through the refresh fallback to the
//! old Connect2id). The summary counts held and working refresh tokens,
//! fallbacks used and clients mapped with no field lost.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::traffic;
use super::{Error, loopback, say};
use crate::config::{Config, ServerKind};
use crate::emulator::authlete as emulated;
use crate::emulator::connect2id::{self, Connect2id};
use crate::emulator::driver::{Consent, Driver, RegisteredClient};
use crate::emulator::jwks::JwkSet;
use crate::model::Secret;
use crate::servers::authlete::{
    Config as AuthleteConfig, Credentials as AuthleteCredentials, DEFAULT_REFRESH_DURATION,
    DEFAULT_TOKEN_SAMPLE,
};
use crate::servers::connect2id::ApiTokens;

const TOKEN: &str = "demo-management-token-0123456789abcdef";
const AUTHLETE_TOKEN: &str = "demo-authlete-service-access-token";

/// The outcome of the Authlete demo.
#[derive(Debug, Clone)]
pub struct Summary {
    /// What the traffic did.
    pub totals: traffic::Totals,
    /// The backfill at its end.
    pub backfill: crate::api::BackfillStatus,
    /// The final verify (clients by alias, a sample of refresh tokens).
    pub verify: crate::api::VerifyReport,
    /// Tokens the users still held at the end.
    pub held: u64,
    /// Of those, access tokens active at Authlete.
    pub access_valid: u64,
    /// Refresh tokens held.
    pub refresh_held: u64,
    /// Of those, active at Authlete.
    pub refresh_valid: u64,
    /// Changes the sync gave up on.
    pub dead_letters: u64,
    /// Clients of every authentication method registered through the proxy.
    pub method_clients: u64,
    /// Of those, at Authlete with every field (none without counterpart,
    /// none differing) and their secret.
    pub method_clients_whole: u64,
    /// The cutover.
    pub cutover: crate::api::FlipReport,
    /// Refresh tokens users held at the flip (the idle users' included).
    pub refresh_before_flip: u64,
    /// Of those, the users held by idle users (never seen while mirroring).
    pub refresh_idle: u64,
    /// Of those, refreshed successfully after the flip.
    pub refresh_after_flip: u64,
    /// Refreshes the fallback to the old server answered.
    pub fallbacks: u64,
}

impl Summary {
    /// No drift, no failed request, every held token valid at Authlete.
    pub fn passed(&self) -> bool {
        super::synced_cleanly(&self.totals, &self.verify, &self.backfill)
            && self.dead_letters == 0
            && self.access_valid == self.held
            && self.refresh_valid == self.refresh_held
            && self.method_clients_whole == self.method_clients
            && self.cutover.outcome == crate::api::Outcome::CutOver
            && self.refresh_after_flip == self.refresh_before_flip
    }
}

/// Runs the Authlete demo.
pub async fn run(options: super::Options) -> Result<Summary, Error> {
    let jwks = JwkSet::generate();
    let proxy_listener = loopback().await?;
    let proxy_addr = proxy_listener.local_addr().map_err(Error::Bind)?;
    let mut source_config = connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks);
    source_config.base_path = "/c2id".to_owned();
    source_config.issuer = Some(format!("http://{proxy_addr}/c2id"));
    source_config.seed = options.records;
    // Connect2id as shipped: no rotation unless the consent asks for it,
    // refresh tokens sealed with a random nonce (the exported value is not
    // the client's string).
    source_config.strictness.default_rotate = false;
    source_config.strictness.random_refresh_token_nonce = true;
    let source = Connect2id::new(source_config)
        .start(loopback().await?)
        .await;
    let service = emulated::Authlete::new(emulated::Config {
        access_token: AUTHLETE_TOKEN.to_owned(),
        // The documented reading; no invented rate limit (the demo's
        // pace is its own) and no 90-day sweep in a demo of seconds.
        strictness: emulated::Strictness {
            rate_limit: None,
            sweep_unused_after: None,
            ..emulated::Strictness::real()
        },
        ..emulated::Config::default()
    });
    let service_id = service.config().service_id;
    let target = service.clone().start(loopback().await?).await;

    // The new authorization server built on the service: traffic goes
    // there after the cutover.
    let front = service
        .clone()
        .start_front(loopback().await?, "/c2id")
        .await;
    let new_primary = crate::model::BaseUrl::parse(&front.url()).map_err(Error::Scenario)?;

    let mut config = Config::for_test(&source.url(), &target.url(), TOKEN);
    config.source.tokens = ApiTokens::single(TOKEN);
    config.target.kind = ServerKind::Authlete;
    config.target.authlete = Some(AuthleteConfig {
        api_version: 3,
        service_id: Some(service_id),
        credentials: AuthleteCredentials::V3 {
            token: Secret::new(AUTHLETE_TOKEN),
        },
        new_primary: Some(new_primary),
        new_primary_ca_file: None,
        refresh_token_duration: DEFAULT_REFRESH_DURATION,
        token_sample: DEFAULT_TOKEN_SAMPLE,
        rate_limit: None,
        owner: None,
    });
    config.sync.datasets = crate::model::Dataset::AUTHLETE.to_vec();
    config.cutover.refresh_fallback_window = Some(DEFAULT_REFRESH_DURATION);
    config.sync.retry_max = Duration::from_secs(2);
    let stack = super::Stack::start(config, proxy_listener).await?;
    let (admin, operator) = (stack.admin.clone(), stack.operator());

    say(&format!(
        "handover demo (Authlete target): source {} → proxy http://{proxy_addr}/c2id → Authlete {}/api/{service_id}",
        source.url(),
        target.url()
    ));
    say(&format!(
        "the source holds {} clients and {} long-lived authorizations with refresh tokens; Authlete is empty",
        options.records, options.records
    ));
    say(&format!(
        "driving {} users for {}s through the proxy while the backfill copies clients and refresh tokens",
        options.users,
        options.duration.as_secs()
    ));
    let via_proxy = Driver::new(format!("http://{proxy_addr}/c2id"), TOKEN);
    let idle = idle_users(&source.url(), &via_proxy, options.users).await?;
    say(&format!(
        "{} users logged in at the source before the proxy mirrored anything ({} of them with rotation); they stay idle until after the flip",
        idle.len(),
        idle.iter().filter(|(_, _, rotate)| *rotate).count()
    ));
    let method_clients = register_every_method(&via_proxy).await?;
    say(&format!(
        "{} clients registered through the proxy, one per authentication method",
        method_clients.len()
    ));
    operator.backfill("start", None, None).await?;
    let traffic = Arc::new(
        traffic::Traffic::new(&format!("http://{proxy_addr}/c2id"), TOKEN)
            .with_rotate_percent(ROTATE_PERCENT),
    );
    traffic::run(
        Arc::clone(&traffic),
        admin.clone(),
        options.users,
        options.duration,
    )
    .await;
    let totals = traffic.totals();

    say("traffic stopped; waiting for the backfill and the journal");
    let backfill = admin.wait_backfill(Duration::from_secs(600)).await;
    admin.wait_drained(Duration::from_secs(60)).await;
    let started = Instant::now();
    say("verifying: clients by alias, a sample of refresh tokens introspected at Authlete");
    let verify = operator
        .verify(&crate::api::VerifyRequest::default(), |_| {})
        .await?;
    let dead_letters = admin.status().await.map_or(0, |s| s.journal.dead_letters);

    say("checking every token the users still hold at Authlete");
    let held = traffic.held_tokens();
    let checker = crate::servers::authlete::Authlete::new(
        Arc::new(authlete_upstream(&target.url())?),
        AuthleteConfig {
            api_version: 3,
            service_id: Some(service_id),
            credentials: AuthleteCredentials::V3 {
                token: Secret::new(AUTHLETE_TOKEN),
            },
            new_primary: None,
            new_primary_ca_file: None,
            refresh_token_duration: DEFAULT_REFRESH_DURATION,
            token_sample: 0,
            rate_limit: None,
            owner: None,
        },
        Duration::from_secs(10),
    );
    let (mut access_valid, mut refresh_held, mut refresh_valid) = (0u64, 0u64, 0u64);
    for tokens in &held {
        if let Ok(Some(info)) = checker.introspect(&tokens.access_token, false).await
            && info.client_id == tokens.client_id
        {
            access_valid += 1;
        }
        if let Some(refresh) = &tokens.refresh_token {
            refresh_held += 1;
            if let Ok(Some(info)) = checker.introspect(refresh, true).await
                && info.client_id == tokens.client_id
            {
                refresh_valid += 1;
            }
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "checked held tokens");

    say(
        "checking that every client of every authentication method is at Authlete with every field",
    );
    let mut method_clients_whole = 0u64;
    for record in &method_clients {
        let alias = record
            .get("client_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let lost = crate::servers::authlete::clients::map(record, 3)
            .map(|mapped| mapped.unmapped)
            .unwrap_or_else(|refusal| vec![format!("{refusal:?}")]);
        match checker.client(alias).await {
            Ok(Some(copy))
                if lost.is_empty()
                    && crate::servers::authlete::client_drift(record, &copy, 3).is_none() =>
            {
                method_clients_whole += 1;
            }
            other => say(&format!(
                "  client {alias}: lost {lost:?}, at Authlete: {}",
                match other {
                    Ok(Some(copy)) => crate::servers::authlete::client_drift(record, &copy, 3)
                        .unwrap_or_else(|| "as expected".to_owned()),
                    Ok(None) => "missing".to_owned(),
                    Err(err) => err.to_string(),
                }
            )),
        }
    }

    say("cutting over to the new authorization server built on Authlete");
    let cutover = operator
        .flip("/cutover", &crate::api::FlipRequest::default())
        .await?;
    say(&format!(
        "  {} at epoch {} (primary {}): write pause {} ms",
        cutover.outcome, cutover.epoch, cutover.primary, cutover.pause_ms
    ));

    say("every refresh token users held at the flip, used once after it");
    let mut before = Vec::new();
    for tokens in &held {
        if let Some(refresh) = &tokens.refresh_token {
            before.push((tokens.client.clone(), refresh.clone()));
        }
    }
    let refresh_idle = idle.len() as u64;
    before.extend(idle.into_iter().map(|(client, token, _)| (client, token)));
    let (mut refresh_after_flip, mut refused) = (0u64, 0u64);
    for (client, token) in &before {
        match via_proxy.refresh(client, token).await {
            Ok(_) => refresh_after_flip += 1,
            Err(err) => {
                if refused < 3 {
                    say(&format!(
                        "  refused after the flip at client {}: {err}",
                        client.id
                    ));
                }
                refused += 1;
            }
        }
    }
    let fallbacks = admin
        .status()
        .await
        .and_then(|status| status.fallback)
        .and_then(|fallback| fallback.used.get(&crate::model::Dataset::Tokens).copied())
        .unwrap_or(0);
    let summary = Summary {
        totals,
        backfill,
        verify,
        held: held.len() as u64,
        access_valid,
        refresh_held,
        refresh_valid,
        dead_letters,
        method_clients: method_clients.len() as u64,
        method_clients_whole,
        cutover,
        refresh_before_flip: before.len() as u64,
        refresh_idle,
        refresh_after_flip,
        fallbacks,
    };
    print(&summary, &service);
    stack.stop().await?;
    source.shutdown().await;
    front.shutdown().await;
    target.shutdown().await;
    Ok(summary)
}

/// Percent of the demo traffic's consents that ask for rotation: most
/// users get Connect2id's default, no rotation.
const ROTATE_PERCENT: u32 = 20;

/// Users who logged in at the source before the proxy came and stay idle
/// until after the flip, `users` of them (one in four with rotation), at
/// one client registered through the proxy: (client, refresh token,
/// rotates).
async fn idle_users(
    source: &str,
    via_proxy: &Driver,
    users: usize,
) -> Result<Vec<(RegisteredClient, String, bool)>, Error> {
    let at_source = Driver::new(source, TOKEN);
    let client = via_proxy
        .register_client("Idle App")
        .await
        .map_err(|err| Error::Scenario(err.to_string()))?;
    let mut idle = Vec::with_capacity(users);
    for index in 0..users {
        let rotate = index % 4 == 3;
        let consent = Consent {
            rotate,
            ..Consent::default()
        };
        let login = at_source
            .login(&client.id, &format!("idle-{index}"), consent)
            .await
            .map_err(|err| Error::Scenario(err.to_string()))?;
        let tokens = at_source
            .exchange_code(&client, &login.code)
            .await
            .map_err(|err| Error::Scenario(err.to_string()))?;
        if let Some(refresh) = tokens.refresh_token {
            idle.push((client.clone(), refresh, rotate));
        }
    }
    Ok(idle)
}

/// One client per token endpoint authentication method, with the fields
/// that method brings (keys, certificate names, algorithms, DPoP and PAR
/// requirements): the registration responses.
async fn register_every_method(via_proxy: &Driver) -> Result<Vec<serde_json::Value>, Error> {
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "demo",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
    let extras = [
        (
            "client_secret_basic",
            serde_json::json!({"id_token_signed_response_alg": "ES256"}),
        ),
        (
            "client_secret_post",
            serde_json::json!({"require_pushed_authorization_requests": true}),
        ),
        (
            "client_secret_jwt",
            serde_json::json!({"token_endpoint_auth_signing_alg": "HS256"}),
        ),
        (
            "private_key_jwt",
            serde_json::json!({"jwks": jwks, "token_endpoint_auth_signing_alg": "ES256", "dpop_bound_access_tokens": true}),
        ),
        (
            "tls_client_auth",
            serde_json::json!({"tls_client_auth_subject_dn": "CN=demo,O=Example", "tls_client_certificate_bound_access_tokens": true}),
        ),
        (
            "self_signed_tls_client_auth",
            serde_json::json!({"jwks_uri": "https://rp.example.com/jwks.json"}),
        ),
        ("none", serde_json::json!({"application_type": "native"})),
    ];
    let mut records = Vec::with_capacity(extras.len());
    for (method, extra) in extras {
        let mut metadata = serde_json::json!({
            "client_name": format!("Demo {method} client"),
            "redirect_uris": [crate::emulator::driver::REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
            "scope": "openid email",
        });
        if let (Some(fields), Some(extra)) = (metadata.as_object_mut(), extra.as_object()) {
            fields.extend(extra.clone());
        }
        records.push(
            via_proxy
                .register_client_metadata(metadata)
                .await
                .map_err(|err| Error::Scenario(err.to_string()))?,
        );
    }
    Ok(records)
}

fn authlete_upstream(url: &str) -> Result<crate::upstream::Upstream, Error> {
    let config = Config::for_test(url, "http://127.0.0.1:9", TOKEN);
    crate::upstream::Upstream::new(
        crate::model::Side::Target,
        &config.source.url,
        config.source.ca_file.as_deref(),
        crate::upstream::Protocol::management(config.source.http2),
        &config.upstream,
        &crate::metrics::Metrics::new(),
    )
    .map_err(|err| Error::Proxy(crate::app::Error::Tls(err)))
}

fn print(summary: &Summary, service: &emulated::Authlete) {
    let mut out = std::io::stdout().lock();
    let totals = &summary.totals;
    super::write_heading(&mut out, " (Authlete target)", totals);
    let _ = writeln!(
        out,
        "  registrations {} · updates {} · logins {} · code exchanges {} · refreshes {} · revocations {}",
        totals.registrations,
        totals.updates,
        totals.logins,
        totals.exchanges,
        totals.refreshes,
        totals.revocations
    );
    super::write_backfill(
        &mut out,
        &summary.backfill,
        Duration::from_millis(summary.backfill.elapsed_ms),
    );
    let _ = writeln!(
        out,
        "authlete holds       {} clients, {} token pairs",
        service.clients().len(),
        service.token_count()
    );
    let _ = writeln!(out);
    let _ = write!(out, "{}", crate::cli::render_report(&summary.verify));
    let _ = writeln!(
        out,
        "tokens held by users {}: access tokens valid at Authlete {}/{} · refresh tokens valid {}/{}",
        summary.held,
        summary.access_valid,
        summary.held,
        summary.refresh_valid,
        summary.refresh_held
    );
    let _ = writeln!(
        out,
        "clients              {} of {} (one per authentication method) mapped with no field lost",
        summary.method_clients_whole, summary.method_clients
    );
    let cutover = &summary.cutover;
    let _ = writeln!(
        out,
        "cutover              {} at epoch {} (primary {}): write pause {} ms",
        cutover.outcome, cutover.epoch, cutover.primary, cutover.pause_ms
    );
    let _ = writeln!(
        out,
        "refresh tokens       held before the flip: {}; work after it: {} ({} held by users idle during the whole mirroring) · fallbacks used: {}",
        summary.refresh_before_flip,
        summary.refresh_after_flip,
        summary.refresh_idle,
        summary.fallbacks
    );
    let verdict = if summary.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "drift {} · failed client requests {} · dead letters {} → {verdict}",
        summary.verify.drift, totals.errors, summary.dead_letters
    );
}
