//! `handover demo --target authlete`: the second migration path. A
//! pre-loaded Connect2id source, an Authlete service (emulated) as the
//! target, the proxy in front of the source. The same traffic as the
//! Connect2id demo runs through the proxy while the backfill copies the
//! clients and the refresh tokens of the existing authorization records;
//! every token the source issues is created in Authlete with the same value,
//! rotations replace the pair, revocations remove it. At the end the real
//! verify runs, and every token the simulated users still hold is checked
//! at Authlete (access tokens and refresh tokens must introspect active,
//! for the right client).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::traffic;
use super::{Error, say};
use crate::config::{Config, ServerKind};
use crate::emulator::authlete as emulated;
use crate::emulator::connect2id::{self, Connect2id};
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
}

impl Summary {
    /// No drift, no failed request, every held token valid at Authlete.
    pub fn passed(&self) -> bool {
        super::synced_cleanly(&self.totals, &self.verify, &self.backfill)
            && self.dead_letters == 0
            && self.access_valid == self.held
            && self.refresh_valid == self.refresh_held
    }
}

/// Runs the Authlete demo.
pub async fn run(options: super::Options) -> Result<Summary, Error> {
    let jwks = JwkSet::generate();
    let proxy_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(Error::Bind)?;
    let proxy_addr = proxy_listener.local_addr().map_err(Error::Bind)?;
    let mut source_config = connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks);
    source_config.base_path = "/c2id".to_owned();
    source_config.issuer = Some(format!("http://{proxy_addr}/c2id"));
    source_config.seed = options.records;
    let source = Connect2id::new(source_config)
        .start(
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(Error::Bind)?,
        )
        .await;
    let service = emulated::Authlete::new(emulated::Config {
        access_token: AUTHLETE_TOKEN.to_owned(),
        ..emulated::Config::default()
    });
    let service_id = service.config().service_id;
    let target = service
        .clone()
        .start(
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(Error::Bind)?,
        )
        .await;

    let mut config = Config::for_test(&source.url(), &target.url(), TOKEN);
    config.source.tokens = ApiTokens::single(TOKEN);
    config.target.kind = ServerKind::Authlete;
    config.target.authlete = Some(AuthleteConfig {
        api_version: 3,
        service_id: Some(service_id),
        credentials: AuthleteCredentials::V3 {
            token: Secret::new(AUTHLETE_TOKEN),
        },
        new_primary: None,
        new_primary_ca_file: None,
        refresh_token_duration: DEFAULT_REFRESH_DURATION,
        token_sample: DEFAULT_TOKEN_SAMPLE,
        rate_limit: None,
        owner: None,
    });
    config.sync.datasets = crate::model::Dataset::AUTHLETE.to_vec();
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
    operator.backfill("start", None, None).await?;
    let traffic = Arc::new(traffic::Traffic::new(
        &format!("http://{proxy_addr}/c2id"),
        TOKEN,
    ));
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
    let summary = Summary {
        totals,
        backfill,
        verify,
        held: held.len() as u64,
        access_valid,
        refresh_held,
        refresh_valid,
        dead_letters,
    };
    print(&summary, &service);
    stack.stop().await?;
    source.shutdown().await;
    target.shutdown().await;
    Ok(summary)
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
    let _ = writeln!(out);
    let _ = writeln!(out, "== handover demo summary (Authlete target) ==");
    let _ = writeln!(
        out,
        "client requests      {:>8}   failed {}",
        totals.requests, totals.errors
    );
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
    let backfill: Vec<String> = summary
        .backfill
        .datasets
        .iter()
        .map(|(dataset, p)| format!("{dataset} {} copied, {} live-owned", p.copied, p.skipped))
        .collect();
    let _ = writeln!(
        out,
        "backfill             {} in {:.1}s: {}",
        summary.backfill.state,
        summary.backfill.elapsed_ms as f64 / 1000.0,
        backfill.join(" · ")
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
    let verdict = if summary.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "drift {} · failed client requests {} · dead letters {} → {verdict}",
        summary.verify.drift, totals.errors, summary.dead_letters
    );
}
