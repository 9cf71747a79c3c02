//! `handover demo`: the whole product on one machine, zero config. A source
//! Connect2id emulator pre-loaded with records (as a production server has
//! before the migration starts), an empty target (same JWK set, same public
//! issuer), and the real proxy in front of the source. Realistic traffic
//! runs through the proxy (client registrations and updates, logins that
//! create sessions, long-lived consents and code exchanges, refreshes with
//! rotation, revocations, logouts) while the backfill copies the
//! pre-existing records, with a live progress line; then the journal
//! drains, the real `verify` compares the two servers dataset by dataset,
//! and a summary is printed. Exits non-zero if any drift remains or any
//! client request failed.

pub mod authlete;
pub mod scenarios;
pub mod traffic;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::emulator::connect2id::{self, Connect2id};
use crate::emulator::jwks::JwkSet;
use crate::model::Dataset;
use crate::servers::connect2id::ApiTokens;

pub use traffic::Totals;

/// The sync lag under which the demo's cutover starts (the pre-flight's
/// default bound is 1 s).
const CAUGHT_UP_LAG_MS: u64 = 300;

/// Demo settings (`handover demo --help`).
#[derive(Debug, Clone)]
pub struct Options {
    /// How long traffic runs.
    pub duration: Duration,
    /// Concurrent simulated users.
    pub users: usize,
    /// Records of each dataset on the source before the proxy starts.
    pub records: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(8),
            users: 16,
            records: 3000,
        }
    }
}

/// Why the demo failed to run (drift is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket could not be bound.
    #[error("cannot bind a loopback port: {0}")]
    Bind(std::io::Error),
    /// The journal directory could not be created.
    #[error("cannot create a temporary journal directory: {0}")]
    TempDir(std::io::Error),
    /// The proxy failed to start.
    #[error("the proxy failed: {0}")]
    Proxy(#[from] crate::app::Error),
    /// The proxy never became ready.
    #[error("the proxy did not become ready")]
    NotReady,
    /// The admin API failed.
    #[error("admin API: {0}")]
    Admin(#[from] crate::api::Error),
    /// A step the demo's own scenario needs (a login before the proxy
    /// mirrors, a client registration) failed.
    #[error("demo scenario: {0}")]
    Scenario(String),
}

/// The demo's outcome.
#[derive(Debug, Clone)]
pub struct Summary {
    /// What the traffic did.
    pub totals: Totals,
    /// Changes applied to the target, per dataset.
    pub synced: Vec<(&'static str, u64)>,
    /// The backfill at its end.
    pub backfill: crate::api::BackfillStatus,
    /// How long the backfill took.
    pub backfill_time: Duration,
    /// The cutover under load.
    pub cutover: crate::api::FlipReport,
    /// Refresh tokens rotated just before the flip, used after it.
    pub rotations: traffic::RotationCheck,
    /// The final verify, through the admin API.
    pub verify: crate::api::VerifyReport,
    /// The emulators compared directly, record by record (a second
    /// opinion, independent of the proxy's own verify).
    pub drift: Vec<DatasetDrift>,
    /// 99th percentile of the sync lag sampled during traffic.
    pub lag_p99: Duration,
    /// Time from the end of traffic to an empty journal.
    pub drain: Duration,
    /// SSO-only users, revoked tokens and self-managing clients across
    /// the flip.
    pub scenarios: scenarios::Counts,
}

impl Summary {
    /// Whether the demo succeeded: no drift (by verify and by direct
    /// comparison), backfill done, cut over, no failed client request, no
    /// refresh token rotated before the flip refused after it.
    pub fn passed(&self) -> bool {
        synced_cleanly(&self.totals, &self.verify, &self.backfill)
            && self.cutover.outcome == crate::api::Outcome::CutOver
            && self.rotations.refused == 0
            && self.scenarios.all_kept()
            && self.drift.iter().all(|d| d.drifted() == 0)
    }
}

/// What every demo must show: no failed client request, no drift by
/// handover's own verify, the backfill done.
fn synced_cleanly(
    totals: &traffic::Totals,
    verify: &crate::api::VerifyReport,
    backfill: &crate::api::BackfillStatus,
) -> bool {
    totals.errors == 0 && verify.passed() && backfill.state == crate::api::BackfillState::Done
}

/// One dataset's comparison.
#[derive(Debug, Clone)]
pub struct DatasetDrift {
    /// The dataset.
    pub dataset: Dataset,
    /// Records on the source.
    pub source: usize,
    /// Records equal on both.
    pub matching: usize,
    /// Records on both but different.
    pub mismatched: usize,
    /// On the source only.
    pub missing_on_target: usize,
    /// On the target only.
    pub extra_on_target: usize,
}

impl DatasetDrift {
    /// Records that differ in any way.
    pub fn drifted(&self) -> usize {
        self.mismatched + self.missing_on_target + self.extra_on_target
    }
}

const TOKEN: &str = "demo-management-token-0123456789abcdef";

/// Runs the demo, printing progress to stderr and the summary to stdout.
pub async fn run(options: Options) -> Result<Summary, Error> {
    let jwks = JwkSet::generate();
    let proxy_listener = loopback().await?;
    let proxy_addr = proxy_listener.local_addr().map_err(Error::Bind)?;
    let issuer = format!("http://{proxy_addr}/c2id");
    let emulator_config = || {
        let mut config =
            connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks.clone());
        config.base_path = "/c2id".to_owned();
        config.issuer = Some(issuer.clone());
        // The real server's behaviour, with a short idle limit so that the
        // SSO-only users' sessions would idle out within the demo.
        config.strictness = connect2id::Strictness {
            session_max_idle_minutes: scenarios::SESSION_MAX_IDLE_MINUTES,
            ..connect2id::Strictness::default()
        };
        config
    };
    let mut source_config = emulator_config();
    source_config.seed = options.records;
    let source = Connect2id::new(source_config)
        .start(loopback().await?)
        .await;
    // The target as the runbook asks for it: it takes the source's secret
    // on an in-place update (`preferred_client_secret` on `PUT`), so no
    // client is deleted and re-created there (a cascading delete would
    // revoke the client's tokens on the target only).
    let mut target_config = emulator_config();
    target_config.strictness.preferred_client_secret_on_update = true;
    let target = Connect2id::new(target_config)
        .start(loopback().await?)
        .await;

    let mut config = Config::for_test(&source.url(), &target.url(), TOKEN);
    config.source.tokens = ApiTokens::single(TOKEN);
    config.target.tokens = ApiTokens::single(TOKEN);
    config.sync.retry_initial = crate::sync::DEFAULT_RETRY_INITIAL;
    config.sync.retry_max = Duration::from_secs(2);
    let stack = Stack::start(config, proxy_listener).await?;
    let (admin, operator) = (stack.admin.clone(), stack.operator());

    say(&format!(
        "handover demo: source {} → proxy http://{proxy_addr}/c2id → target {}",
        source.url(),
        target.url()
    ));
    say(&format!(
        "the source already holds {} clients, {} long-lived authorizations and {} sessions; the target is empty",
        options.records, options.records, options.records
    ));
    say(&format!(
        "driving {} users for {}s through the proxy (registrations, logins, consents, refreshes with rotation, revocations, logouts) while the backfill copies what existed before",
        options.users,
        options.duration.as_secs()
    ));
    let base = format!("http://{proxy_addr}/c2id");
    let servers = [source.emulator(), target.emulator()];
    let via_proxy = crate::emulator::driver::Driver::new(base.clone(), TOKEN);
    say(&format!(
        "first: SSO-only users log in and come back twice as the servers' clocks skip past the target's {} min idle limit; self-contained refresh tokens are revoked; self-managing clients register",
        scenarios::SESSION_MAX_IDLE_MINUTES
    ));
    let prepared = scenarios::prepare(&via_proxy, &admin, servers)
        .await
        .map_err(Error::Scenario)?;
    let traffic = Arc::new(traffic::Traffic::new(&base, TOKEN));
    operator.backfill("start", None, None).await?;
    let traffic_started = Instant::now();
    let load = tokio::spawn(traffic::run(
        Arc::clone(&traffic),
        admin.clone(),
        options.users,
        options.duration,
    ));

    // Cut over under load, as the runbook says: once the backfill is done,
    // a little more than half the traffic has run, and the sync has caught
    // up with what the backfill journaled (its lag well under the
    // pre-flight's bound). Past 85 % of the traffic the flip is tried
    // anyway, and a refusal is reported as it is.
    let cutover_at = traffic_started + options.duration.mul_f64(0.55);
    let latest = traffic_started + options.duration.mul_f64(0.85);
    let caught_up = Duration::from_millis(CAUGHT_UP_LAG_MS);
    let backfill = loop {
        let Some(status) = admin.status().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let backfill = status.backfill;
        let now = Instant::now();
        let settled = backfill.state == crate::api::BackfillState::Done
            || backfill.state == crate::api::BackfillState::Failed;
        let lag = Duration::from_millis(status.journal.lag_ms);
        if settled && now >= cutover_at && (lag <= caught_up || now >= latest) {
            break backfill;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let backfill_time = Duration::from_millis(backfill.elapsed_ms);
    traffic::progress_done();
    say("cutting over to the target under load: hold writes, drain, verify, flip, release");
    let cutover_started = Instant::now();
    let mut cutover = operator
        .flip("/cutover", &crate::api::FlipRequest::default())
        .await?;
    // An SRE refused only because the sync is a moment behind the load
    // tries again; the demo does so while its traffic runs.
    let traffic_ends = traffic_started + options.duration;
    while cutover.outcome == crate::api::Outcome::Refused
        && cutover
            .preflight
            .iter()
            .all(|check| check.ok || check.check == "sync lag")
        && Instant::now() + Duration::from_millis(200) < traffic_ends
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cutover = operator
            .flip("/cutover", &crate::api::FlipRequest::default())
            .await?;
    }
    say(&format!(
        "  {} at epoch {}: writes held {} ms, {} requests held and released to the {}",
        cutover.outcome, cutover.epoch, cutover.pause_ms, cutover.held, cutover.primary
    ));
    for check in cutover.preflight.iter().filter(|check| !check.ok) {
        say(&format!(
            "  pre-flight failed: {}: {}",
            check.check, check.detail
        ));
    }
    if let Some(reason) = &cutover.reason {
        say(&format!("  reason: {reason}"));
    }
    let lag_samples = load.await.unwrap_or_default();
    let totals = traffic.totals();

    say("traffic stopped; waiting for the journal to drain");
    let drain_started = Instant::now();
    admin.wait_drained(Duration::from_secs(60)).await;
    let drain = drain_started.elapsed();

    say("checking that refresh tokens rotated in the last second before the flip work after it");
    let rotations = traffic
        .check_rotations(cutover_started - Duration::from_secs(1), cutover_started)
        .await;
    admin.wait_drained(Duration::from_secs(60)).await;

    say(
        "after the flip: the clocks skip on; SSO-only users come back, revoked tokens are tried, self-managing clients update themselves",
    );
    let scenarios = scenarios::count(&via_proxy, servers, &prepared).await;
    admin.wait_drained(Duration::from_secs(60)).await;

    say("verifying: every record of the new primary compared with the old one");
    let verify = operator
        .verify(&crate::api::VerifyRequest::default(), |status| {
            traffic::progress(&format!(
                "  verifying {}: {} records",
                status.dataset.map_or("", Dataset::as_str),
                status.scanned
            ));
        })
        .await?;
    traffic::progress_done();
    let drift = compare(source.emulator(), target.emulator());
    let synced = admin.synced().await;
    let summary = Summary {
        totals,
        synced,
        backfill,
        backfill_time,
        cutover,
        rotations,
        verify,
        drift,
        lag_p99: percentile(&lag_samples, 0.99),
        drain,
        scenarios,
    };
    print_summary(&summary);

    stack.stop().await?;
    source.shutdown().await;
    target.shutdown().await;
    Ok(summary)
}

/// handover itself, running in-process for a demo: a temporary journal,
/// an admin listener on a free port, the app spawned and ready.
pub(crate) struct Stack {
    /// Reads `/status` and waits for the sync.
    pub(crate) admin: traffic::AdminProbe,
    admin_url: String,
    stop: oneshot::Sender<()>,
    app: tokio::task::JoinHandle<Result<(), crate::app::Error>>,
    // Held so the journal outlives the app; removed on drop.
    _journal_dir: tempfile::TempDir,
}

impl Stack {
    /// Starts handover with `config` (its journal directory and key are
    /// chosen here) on `proxy_listener`, and waits until it is ready.
    pub(crate) async fn start(
        mut config: Config,
        proxy_listener: TcpListener,
    ) -> Result<Self, Error> {
        let journal_dir = tempfile::tempdir().map_err(Error::TempDir)?;
        config.journal.dir = journal_dir.path().to_owned();
        config.journal_key = crate::config::Secret::new(random_key());
        let admin_listener = loopback().await?;
        let admin_addr = admin_listener.local_addr().map_err(Error::Bind)?;
        let listeners = crate::app::Listeners {
            proxy: proxy_listener,
            admin: admin_listener,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let app = tokio::spawn(crate::app::run(listeners, config, async move {
            let _ = stopped.await;
        }));
        let admin = traffic::AdminProbe::new(admin_addr, TOKEN);
        if !admin.wait_ready(Duration::from_secs(10)).await {
            return Err(Error::NotReady);
        }
        Ok(Self {
            admin,
            admin_url: format!("http://{admin_addr}"),
            stop,
            app,
            _journal_dir: journal_dir,
        })
    }

    /// The operator's client of the admin API.
    pub(crate) fn operator(&self) -> crate::api::AdminClient {
        crate::api::AdminClient::new(&self.admin_url, Some(TOKEN.to_owned()))
    }

    /// Shuts handover down in order and returns its result.
    pub(crate) async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        if let Ok(result) = self.app.await {
            result?;
        }
        Ok(())
    }
}

pub(crate) fn random_key() -> String {
    let mut key = [0u8; 32];
    // The system RNG failing is not recoverable here; fall back to fastrand
    // (the demo's journal lives in a temp dir for seconds).
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
        key.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares every dataset of two emulators record by record.
pub(crate) fn compare(source: &Connect2id, target: &Connect2id) -> Vec<DatasetDrift> {
    let clients = |e: &Connect2id| {
        e.clients()
            .into_iter()
            .filter_map(|c| Some((c.get("client_id")?.as_str()?.to_owned(), c)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let authorizations = |e: &Connect2id| {
        e.authorizations()
            .into_iter()
            .filter_map(|a| {
                let key = format!("{}|{}", a.get("sub")?.as_str()?, a.get("cid")?.as_str()?);
                Some((key, a))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let sessions = |e: &Connect2id| {
        e.sessions()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    vec![
        diff(Dataset::Clients, &clients(source), &clients(target)),
        diff(
            Dataset::Authorizations,
            &authorizations(source),
            &authorizations(target),
        ),
        diff(Dataset::Sessions, &sessions(source), &sessions(target)),
    ]
}

fn diff(
    dataset: Dataset,
    source: &std::collections::BTreeMap<String, serde_json::Value>,
    target: &std::collections::BTreeMap<String, serde_json::Value>,
) -> DatasetDrift {
    let mut drift = DatasetDrift {
        dataset,
        source: source.len(),
        matching: 0,
        mismatched: 0,
        missing_on_target: 0,
        extra_on_target: 0,
    };
    for (key, record) in source {
        match target.get(key) {
            None => drift.missing_on_target += 1,
            Some(other) if dataset.comparable(record) == dataset.comparable(other) => {
                drift.matching += 1
            }
            Some(_) => drift.mismatched += 1,
        }
    }
    drift.extra_on_target = target.keys().filter(|k| !source.contains_key(*k)).count();
    drift
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A listener on a free loopback port (the demo runs everything locally).
async fn loopback() -> Result<TcpListener, Error> {
    TcpListener::bind("127.0.0.1:0").await.map_err(Error::Bind)
}

pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The summary's first lines, shared by both demos: its title (with
/// `target` after "summary") and the client requests made.
fn write_heading(out: &mut impl std::io::Write, target: &str, totals: &traffic::Totals) {
    let _ = writeln!(out);
    let _ = writeln!(out, "== handover demo summary{target} ==");
    let _ = writeln!(
        out,
        "client requests      {:>8}   failed {}",
        totals.requests, totals.errors
    );
}

/// The summary's backfill line, shared by both demos.
fn write_backfill(
    out: &mut impl std::io::Write,
    backfill: &crate::api::BackfillStatus,
    took: Duration,
) {
    let datasets: Vec<String> = backfill
        .datasets
        .iter()
        .map(|(dataset, p)| format!("{dataset} {} copied, {} live-owned", p.copied, p.skipped))
        .collect();
    let _ = writeln!(
        out,
        "backfill             {} in {:.1}s: {}",
        backfill.state,
        took.as_secs_f64(),
        datasets.join(" · ")
    );
}

fn print_summary(summary: &Summary) {
    let mut out = std::io::stdout().lock();
    let totals = &summary.totals;
    write_heading(&mut out, "", totals);
    let _ = writeln!(
        out,
        "  registrations {} · updates {} · deletes {} · logins {} · code exchanges {} · refreshes {} (failed {}) · revocations {} · logouts {}",
        totals.registrations,
        totals.updates,
        totals.deletes,
        totals.logins,
        totals.exchanges,
        totals.refreshes,
        totals.failed_refreshes,
        totals.revocations,
        totals.logouts
    );
    let synced: Vec<String> = summary
        .synced
        .iter()
        .map(|(dataset, count)| format!("{dataset} {count}"))
        .collect();
    let _ = writeln!(out, "keys synced          {}", synced.join(" · "));
    let _ = writeln!(
        out,
        "sync lag p99         {:>8.1} ms   drained {:.1} ms after traffic stopped",
        summary.lag_p99.as_secs_f64() * 1000.0,
        summary.drain.as_secs_f64() * 1000.0
    );
    write_backfill(&mut out, &summary.backfill, summary.backfill_time);
    let cutover = &summary.cutover;
    let _ = writeln!(
        out,
        "cutover              {} at epoch {} (primary {}): write pause {} ms, held {} · released {} · refused {}",
        cutover.outcome,
        cutover.epoch,
        cutover.primary,
        cutover.pause_ms,
        cutover.held,
        cutover.released,
        cutover.rejected
    );
    let rotations = &summary.rotations;
    let _ = writeln!(
        out,
        "no gap at the flip   {} refresh tokens rotated in the last second before the flip (still current at it): {} used by their users after it, {} by the check, {} refused",
        rotations.rotated, rotations.used_by_users, rotations.used_by_check, rotations.refused
    );
    let counts = &summary.scenarios;
    let _ = writeln!(
        out,
        "sso-only users kept {}/{} · revoked tokens still revoked {}/{} · self-managing clients updated after the flip {}/{}",
        counts.sso_kept,
        counts.sso_users,
        counts.still_revoked,
        counts.revoked,
        counts.self_updated,
        counts.self_managing
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "verify after the cutover (handover's own, through the admin API):"
    );
    let _ = write!(out, "{}", crate::cli::render_report(&summary.verify));
    let direct: usize = summary.drift.iter().map(DatasetDrift::drifted).sum();
    let _ = writeln!(
        out,
        "direct comparison of the two emulators: {} records, drift {direct}",
        summary.drift.iter().map(|d| d.source).sum::<usize>()
    );
    let _ = writeln!(out);
    let verdict = if summary.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "drift {} · failed client requests {} · failed refreshes {} · write pause {} ms → {verdict}",
        summary.verify.drift, totals.errors, totals.failed_refreshes, summary.cutover.pause_ms
    );
}
