//! Builds every subsystem from the validated [`Config`], runs them under one
//! root cancellation token, and shuts them down in a fixed order.
//!
//! # Start-up
//!
//! The journal is opened (and recovered) before anything listens: its
//! backlog from before a restart goes to the sync workers first, so a crash
//! between a client's acknowledgement and the sync never loses the change.
//!
//! # Shutdown order
//!
//! 1. `/readyz` turns false (load balancers stop sending new traffic), then
//!    wait `proxy.shutdown_delay` for them to notice.
//! 2. Stop accepting downstream connections.
//! 3. Drain in-flight requests (every connection finishes what it has and
//!    closes; HTTP/2 gets GOAWAY), bounded by `proxy.shutdown_grace`;
//!    connections still busy after that are closed. Every trigger that
//!    finished has its changes in the journal by now.
//! 4. Stop the background tasks (readiness probe, metrics publisher).
//! 5. Flush the journal (fdatasync).
//! 6. Stop the sync workers (unfinished work stays in the journal for the
//!    next start) and close the journal, persisting the applied cursor.
//! 7. Stop the admin API last, so `/readyz` and `/metrics` answer to the end.
//!
//! A critical task that fails cancels the root token, so the process shuts
//! down as a whole instead of half-running.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{self, Admin};
use crate::backfill::Backfill;
use crate::config::Config;
use crate::cutover::credentials::Credentials;
use crate::cutover::gate::Gate;
use crate::cutover::parity::{DEFAULT_PARITY_INTERVAL, Parity, Samples};
use crate::cutover::procedure::{self, Cutover};
use crate::cutover::{Phase, Phases};
use crate::health::{self, Health};
use crate::journal::{self, Cipher, DeadLetters, Journal};
use crate::metrics::{JournalMetrics, Metrics};
use crate::model::Side;
use crate::proxy::{self, Forwarder, Hook, ListenerOptions};
use crate::servers::Servers;
use crate::servers::authlete::Authlete;
use crate::servers::connect2id::Connect2id;
use crate::sync::{self, Recorder};
use crate::trigger_hook::CutoverParts;
use crate::trigger_hook::TriggerHook;
use crate::upstream::PrimarySelector;
use crate::upstream::{self, Protocol, Upstream};
use crate::verify::Verifier;

/// How long stopping the sync workers may take before they are abandoned
/// (their work stays in the journal).
const SYNC_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often journal and lag gauges are refreshed.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    /// The journal could not be opened or recovered.
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// The shared store could not be opened (unreachable, schema too new).
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The journal key is malformed.
    #[error("journal key: {0}")]
    JournalKey(#[from] journal::KeyError),
    /// The persisted phase could not be read.
    #[error(transparent)]
    Phase(#[from] crate::cutover::Error),
}

/// The bound sockets. Bound by the caller (after config validation), so tests
/// can bind port 0 and learn the addresses before the proxy runs.
#[derive(Debug)]
pub struct Listeners {
    /// Downstream traffic.
    pub proxy: TcpListener,
    /// The admin API.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses from the config.
    pub async fn bind(config: &Config) -> Result<Self, Error> {
        let reuseport =
            matches!(config.proxy.runtime, proxy::Runtime::PerCore { workers } if workers > 1);
        let proxy = proxy::bind(config.proxy.listen, reuseport).map_err(|source| Error::Bind {
            what: "proxy.listen",
            addr: config.proxy.listen,
            source,
        })?;
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| Error::Bind {
                what: "admin.listen",
                addr: config.admin.listen,
                source,
            })?;
        Ok(Self { proxy, admin })
    }
}

/// Feeds journal events into the metrics.
struct JournalObserver(JournalMetrics);

impl journal::Observer for JournalObserver {
    fn on_commit(&self, commit: &journal::Commit) {
        if let Some(fsync) = commit.fsync {
            self.0.fsync_seconds.observe(fsync.as_secs_f64());
        }
    }

    fn on_sync(&self, fsync: Duration) {
        self.0.fsync_seconds.observe(fsync.as_secs_f64());
    }

    fn on_error(&self, _error: &journal::Error) {
        self.0.errors.inc();
    }
}

/// Runs everything until `shutdown` completes (or `POST /shutdown`, or a
/// critical failure), then shuts down in the documented order.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::new(metrics.health.clone()));
    let tls = match &config.proxy.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            &files.cert,
            &files.key,
        )?)),
        None => None,
    };

    // The journal first: its backlog is work owed from before a restart.
    let cipher = Cipher::from_hex(config.journal_key.expose())?;
    let (journal, recovery) = Journal::open_with_observer(
        config.journal.clone(),
        cipher.clone(),
        Arc::new(JournalObserver(metrics.journal.clone())),
    )?;
    let dead_letters = Arc::new(DeadLetters::open(&config.journal.dir, cipher.clone())?);
    // Fleet mode: the trigger path appends to the shared store and every
    // instance's sync claims from it (the local journal then stays empty).
    let shared_store = match &config.store.kind {
        crate::store::Kind::Local => None,
        crate::store::Kind::Postgres { .. } => {
            Some(crate::store::Handle::open(&config.store, &config.journal, cipher.clone()).await?)
        }
    };
    // This process's name in the fleet: claims and the membership lease.
    let instance = format!("pid{}-{:08x}", std::process::id(), fastrand::u32(..));
    let shared_view = shared_store
        .as_ref()
        .map(|store| crate::admin::SharedStore {
            store: store.clone(),
            glance: Arc::new(std::sync::Mutex::new(crate::store::Glance::default())),
            instance: instance.clone(),
            members: Arc::new(std::sync::Mutex::new(Vec::new())),
        });
    // The client credential map follows the store: shared by the fleet in
    // PostgreSQL, beside the journal otherwise.
    let registrations = Arc::new(
        crate::store::Registrations::open(shared_store.as_ref(), &config.journal.dir, cipher)
            .await?,
    );
    metrics
        .sync
        .dead_letters
        .set(i64::try_from(dead_letters.len()).unwrap_or(i64::MAX));

    let source = Arc::new(Upstream::new(
        Side::Source,
        &config.source.url,
        config.source.ca_file.as_deref(),
        Protocol::configured(config.source.http2),
        &config.upstream,
        &metrics,
    )?);
    // The management APIs (sync, backfill, verify, cutover) have their own
    // clients: HTTP/2 where the server offers it, and a pool that keeps a
    // connection per job the sync's concurrency may reach, so growing it
    // does not churn connections.
    let management = upstream::Config {
        pool_max_idle: config
            .upstream
            .pool_max_idle
            .max(config.sync.max_concurrency),
        ..config.upstream.clone()
    };
    let management_upstream = |server: &crate::config::ServerConfig, side: Side| {
        Upstream::new(
            side,
            &server.url,
            server.ca_file.as_deref(),
            Protocol::management(server.http2),
            &management,
            &metrics,
        )
        .map(Arc::new)
    };
    let source_api = management_upstream(&config.source, Side::Source)?;
    // For an Authlete target, traffic goes to the new authorization server
    // after a cutover, and the sync talks to the Authlete API.
    let target_traffic = match config
        .target
        .authlete
        .as_ref()
        .and_then(|a| a.new_primary.clone())
    {
        Some(url) => {
            let mut server = config.target.clone();
            server.url = url;
            server.ca_file = config
                .target
                .authlete
                .as_ref()
                .and_then(|a| a.new_primary_ca_file.clone());
            server
        }
        None => config.target.clone(),
    };
    let target = Arc::new(Upstream::new(
        Side::Target,
        &target_traffic.url,
        target_traffic.ca_file.as_deref(),
        Protocol::configured(target_traffic.http2),
        &config.upstream,
        &metrics,
    )?);
    // For an Authlete target this is the new authorization server's: the
    // Authlete API gets its own below.
    let target_api = management_upstream(&target_traffic, Side::Target)?;
    // The sync's concurrency limiters learn from each server's
    // management-API answers.
    let limits = sync::Limits::new(&config.sync);
    source_api
        .feedback()
        .observe_with(Arc::clone(limits.of(Side::Source)) as Arc<dyn crate::upstream::Observer>);
    let timeout = config.sync.request_timeout;
    // The phase decides who is primary: a restart after a flip keeps it.
    let phases = Arc::new(Phases::load(&config.journal.dir)?);
    // Fleet mode: register before serving anything (a flip waits for every
    // registered instance), then take the fleet's phase: the store's, not
    // this disk's.
    let member = crate::store::Member {
        instance: instance.clone(),
        admin_url: format!("http://{}", config.admin.listen),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        phase: phases.phase().as_str().to_owned(),
        backfill: String::new(),
    };
    if let Some(store) = &shared_store {
        store
            .renew_member(&member, config.store.claim_lease)
            .await?;
        let control = store.control().await?;
        if let Some(state) = procedure::fleet_state(&control)
            && state != phases.current()
        {
            phases.adopt(state)?;
        }
    }
    let mut servers = Servers::new(
        Arc::clone(&source),
        Arc::clone(&target),
        Connect2id::new(
            Arc::clone(&source_api),
            config.source.tokens.clone(),
            timeout,
        ),
        Connect2id::new(
            Arc::clone(&target_api),
            config.target.tokens.clone(),
            timeout,
        ),
        phases.current().phase.primary(),
    );
    // The fallback windows count from the flip, also across a restart.
    if let Some(at) = phases.current().flipped_at_ms {
        servers.mark_flip_at(std::time::UNIX_EPOCH + Duration::from_millis(at));
    }
    if let Some(settings) = &config.target.authlete {
        let api = management_upstream(&config.target, Side::Target)?;
        api.feedback()
            .observe_with(Arc::clone(limits.of(Side::Target)) as Arc<dyn crate::upstream::Observer>);
        let authlete = Arc::new(Authlete::new(api, settings.clone(), timeout));
        check_authlete(Arc::clone(&authlete));
        servers = servers.with_authlete(authlete);
    }
    if servers.authlete().is_none() {
        target_api
            .feedback()
            .observe_with(Arc::clone(limits.of(Side::Target)) as Arc<dyn crate::upstream::Observer>);
    }
    let servers = Arc::new(servers);
    // What the sync does to the secondary, chosen once by its kind.
    let apply: Arc<dyn sync::Apply> = match servers.authlete() {
        Some(authlete) => Arc::new(sync::AuthleteApply::new(
            Arc::clone(&servers),
            Arc::clone(authlete),
        )),
        None => Arc::new(
            sync::Connect2idCopy::new(Arc::clone(&servers))
                .with_registrations(Arc::clone(&registrations)),
        ),
    };
    let gate = Arc::new(Gate::new(
        config.cutover.hold_max_requests,
        config.cutover.hold_max_bytes,
        metrics.cutover.held.clone(),
        metrics.cutover.rejected.clone(),
    ));

    let root = CancellationToken::new();
    let tracker = TaskTracker::new();

    let sync_stop = CancellationToken::new();
    let sync_tracker = TaskTracker::new();
    let (store_acks, store_ack_queue) = tokio::sync::mpsc::unbounded_channel();
    let sync = sync::spawn(
        config.sync.clone(),
        limits,
        Arc::clone(&apply),
        match &shared_store {
            Some(_) => sync::AckSink::Store(store_acks),
            None => sync::AckSink::Journal(journal.clone()),
        },
        Arc::clone(&dead_letters),
        shared_store.clone().map(|store| sync::Shared {
            store,
            owner: instance.clone(),
            lease: config.store.claim_lease,
        }),
        metrics.sync.clone(),
        &sync_tracker,
        sync_stop.clone(),
    );
    let epoch = {
        let phases = Arc::clone(&phases);
        sync::Epoch::new(move || phases.current().epoch)
    };
    let claimer = shared_store.as_ref().map(|store| {
        sync::claimer::Claimer::new(
            store.clone(),
            sync.clone(),
            instance.clone(),
            config.store.claim_lease,
        )
        .with_epoch(epoch.clone())
    });
    let recorder = Recorder::with_shared(
        config.sync.datasets.clone(),
        journal.clone(),
        shared_store
            .as_ref()
            .zip(claimer.as_ref())
            .map(|(store, claimer)| sync::SharedJournal {
                store: store.clone(),
                wake: claimer.waker(),
                epoch: epoch.clone(),
            }),
        sync.clone(),
        Arc::clone(&dead_letters),
        Arc::clone(&health),
        metrics.journal.clone(),
    );
    if shared_store.is_some() {
        // The sync acknowledges to the shared store: what the local journal
        // still owes moves there first (its seqs mean nothing there).
        recorder.adopt(recovery.entries).await;
    } else {
        recorder.resume(recovery.entries);
    }

    let backfill_stop = CancellationToken::new();
    let mut backfill = Backfill::new(
        config.backfill.clone(),
        config.sync.datasets.clone(),
        config.journal.dir.join("backfill"),
        Arc::clone(&servers),
        sync.clone(),
        backfill_stop.clone(),
    )
    .with_tenants(config.sync.tenants.clone(), recorder.clone());
    // A fleet: one runner at a time, checkpoints and progress shared.
    if let Some(store) = shared_store.as_ref().and_then(|s| s.backfill_store()) {
        backfill = backfill.in_fleet(
            store,
            instance.clone(),
            member.admin_url.clone(),
            config.store.claim_lease,
        );
    }

    // Secret-key parity is proven between two Connect2id servers only.
    let samples = Arc::new(Samples::default());
    let parity = config.target.authlete.is_none().then(|| {
        Arc::new(Parity::new(
            Arc::clone(&servers),
            Arc::clone(&samples),
            metrics.cutover.clone(),
        ))
    });
    // Refresh tokens clients hold, seen in live traffic, for verify
    // against an Authlete target (memory only).
    let live_sample = servers.authlete().map(|authlete| {
        Arc::new(crate::verify::LiveSample::new(
            authlete.config().token_sample,
        ))
    });
    let trigger_hook = TriggerHook::new(
        &config.source.url.base_path,
        recorder.clone(),
        Arc::clone(&apply),
        Arc::clone(&servers),
        metrics.journal.clone(),
        live_sample.clone(),
        CutoverParts {
            phases: Arc::clone(&phases),
            gate: Arc::clone(&gate),
            fallback_window: config.cutover.fallback_window,
            tenant_headers: config.proxy.forward.trusted_issuer_header,
            samples: parity.as_ref().map(|_| Arc::clone(&samples)),
            refresh_fallback_window: config.cutover.refresh_fallback_window,
            metrics: metrics.cutover.clone(),
        },
    );
    let verifier = Verifier {
        servers: Arc::clone(&servers),
        sync: sync.clone(),
        recorder: recorder.clone(),
        datasets: config.sync.datasets.clone(),
        concurrency: crate::verify::DEFAULT_CONCURRENCY,
        live: live_sample.clone(),
        tenants: config.sync.tenants.clone(),
        stop: backfill_stop.clone(),
    };
    let cutover = Arc::new(Cutover::new(
        Arc::clone(&phases),
        Arc::clone(&gate),
        Arc::clone(&servers),
        journal.clone(),
        sync.clone(),
        backfill.clone(),
        Arc::clone(&dead_letters),
        recorder.clone(),
        metrics.cutover.clone(),
        config.cutover.clone(),
        procedure::Environment {
            target_serves_traffic: config
                .target
                .authlete
                .as_ref()
                .is_none_or(|authlete| authlete.new_primary.is_some()),
            verifier: verifier.clone(),
            registrations: Arc::clone(&registrations),
            parity: parity.clone(),
            shared: shared_store
                .as_ref()
                .map(|store| procedure::Fleet::new(store.clone(), instance.clone())),
        },
    ));
    // Management tokens come from this config, the same on every instance
    // of a fleet; registration tokens from the map the fleet shares.
    let credentials = Arc::new(
        Credentials::new(
            &config.source.url.base_path,
            config.source.tokens.clone(),
            config.target.tokens.clone(),
        )
        .with_registrations(Arc::clone(&registrations), Arc::clone(&phases)),
    );
    let primary: Arc<dyn PrimarySelector> = Arc::clone(&servers) as Arc<dyn PrimarySelector>;
    let forwarder = Arc::new(
        Forwarder::new(
            config.proxy.forward.clone(),
            Arc::clone(&primary),
            Some(Arc::new(trigger_hook.clone()) as Arc<dyn Hook>),
            Arc::clone(&health),
            metrics.clone(),
        )
        .with_rewriter(credentials),
    );

    let admin_stop = CancellationToken::new();
    let admin = Arc::new(Admin {
        health: Arc::clone(&health),
        metrics: metrics.clone(),
        token: config.admin.token.clone(),
        shutdown: root.clone(),
        journal: journal.clone(),
        dead_letters: Arc::clone(&dead_letters),
        servers: Arc::clone(&servers),
        backfill: backfill.clone(),
        verifier,
        recorder: recorder.clone(),
        verify_job: std::sync::Mutex::new(None),
        cutover: Arc::clone(&cutover),
        shared: shared_view.clone(),
    });
    let admin_task = tracker.spawn(
        admin::run(
            listeners.admin,
            admin,
            crate::http::Limits {
                max_connections: Some(config.admin.max_connections),
                idle_timeout: Some(config.admin.idle_timeout),
                refused: Some(metrics.proxy.admin_connections_refused.clone()),
            },
            admin_stop.clone(),
        )
        .instrument(tracing::info_span!("admin")),
    );

    let background_stop = root.child_token();
    tracker.spawn(
        health::run_probe(
            Arc::clone(&health),
            Arc::clone(&primary),
            config.proxy.health_interval,
            background_stop.clone(),
        )
        .instrument(tracing::info_span!("health")),
    );
    // Changes a failed append left in memory are journaled as soon as the
    // journal takes them, with or without traffic.
    tracker.spawn(
        recorder
            .clone()
            .keep_journaling(background_stop.clone())
            .instrument(tracing::info_span!("journal")),
    );
    tracker.spawn(
        publish_stats(
            journal.clone(),
            recorder.clone(),
            shared_view.clone(),
            metrics.clone(),
            background_stop.clone(),
        )
        .instrument(tracing::info_span!("stats")),
    );

    if let Some(store) = &shared_store {
        tracker.spawn(
            keep_membership(
                store.clone(),
                member,
                Arc::clone(&cutover),
                config.store.claim_lease,
                Arc::clone(&health),
                background_stop.clone(),
            )
            .instrument(tracing::info_span!("fleet")),
        );
        // Holds, flips and aborts published by whichever instance runs them.
        tracker.spawn(
            Arc::clone(&cutover)
                .follow(background_stop.clone())
                .instrument(tracing::info_span!("fleet")),
        );
    }
    // Fleet mode: take a share of the shared journal, keep the claims
    // alive, and delete what was applied (until after the sync stopped).
    let acks_stop = CancellationToken::new();
    let acks_task = claimer.map(|claimer| {
        tracker.spawn(
            claimer
                .clone()
                .run(background_stop.clone())
                .instrument(tracing::info_span!("claim", owner = claimer.owner())),
        );
        tracker.spawn(
            claimer
                .clone()
                .renew(background_stop.clone())
                .instrument(tracing::info_span!("claim")),
        );
        tracker.spawn(
            claimer
                .ack_batches(store_ack_queue, acks_stop.clone())
                .instrument(tracing::info_span!("claim")),
        )
    });

    if let Some(parity) = parity {
        let phases = Arc::clone(&phases);
        tracker.spawn(
            parity
                .run(
                    DEFAULT_PARITY_INTERVAL,
                    move || phases.current().phase != Phase::Completed,
                    background_stop.clone(),
                )
                .instrument(tracing::info_span!("key_parity")),
        );
    }

    let proxy_stop = CancellationToken::new();
    let proxy_addr = listeners.proxy.local_addr().ok();
    let proxy_task = tracker.spawn(
        proxy::run(
            listeners.proxy,
            forwarder,
            ListenerOptions::from_config(&config.proxy, tls),
            metrics.clone(),
            proxy_stop.clone(),
            config.proxy.shutdown_grace,
        )
        .instrument(tracing::info_span!("proxy")),
    );
    tracker.close();
    if config.backfill.auto_start {
        backfill.start_automatically().await;
    }
    // A fleet: the fleet's backfill for status and membership; with
    // auto_start, taking over a pass whose runner died.
    if shared_store.is_some() {
        tracker.spawn(
            backfill
                .clone()
                .follow(background_stop.clone())
                .instrument(tracing::info_span!("backfill")),
        );
    }
    tracing::info!(
        proxy = ?proxy_addr,
        primary = %config.source.url,
        secondary = %config.target.url,
        tls = config.proxy.tls.is_some(),
        backlog = journal.stats().depth,
        "handover started"
    );

    tokio::select! {
        () = shutdown => tracing::info!("shutdown signal received"),
        () = root.cancelled() => tracing::info!("shutdown requested"),
    }
    root.cancel();

    // 1. Not ready any more; give load balancers time to notice.
    health.begin_shutdown();
    if !config.proxy.shutdown_delay.is_zero() {
        tokio::time::sleep(config.proxy.shutdown_delay).await;
    }
    // 2–3. Stop accepting and drain in-flight requests (bounded by the grace).
    proxy_stop.cancel();
    let _ = proxy_task.await;
    tracing::info!("downstream drained");
    // 4. Background tasks; the backfill stops at a checkpoint.
    background_stop.cancel();
    backfill_stop.cancel();
    backfill.wait_finished(Duration::from_secs(5)).await;
    // 5. Flush the journal.
    if let Err(err) = journal.flush().await {
        tracing::error!(error = %err, "cannot flush the journal at shutdown");
    }
    // 6. Stop the sync workers, then close the journal (persists the cursor).
    sync_stop.cancel();
    sync_tracker.close();
    if tokio::time::timeout(SYNC_STOP_TIMEOUT, sync_tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            jobs = sync_tracker.len(),
            "sync jobs still running at the stop deadline; their changes stay in the journal"
        );
    }
    // Acknowledge what the sync finished, give back what it did not.
    acks_stop.cancel();
    if let Some(task) = acks_task {
        let _ = task.await;
    }
    drop(sync);
    drop(trigger_hook);
    drop(recorder);
    if let Some(store) = shared_store
        && let Err(err) = store.close().await
    {
        tracing::error!(error = %err, "cannot close the shared store cleanly");
    }
    if let Err(err) = journal.close().await {
        tracing::error!(error = %err, "cannot close the journal cleanly");
    }
    // 7. Admin last.
    admin_stop.cancel();
    let _ = admin_task.await;
    tracker.wait().await;
    tracing::info!("handover stopped");
    Ok(())
}

/// Checks the Authlete service settings the migration depends on, in the
/// background (logged; the proxy starts regardless).
fn check_authlete(authlete: Arc<Authlete>) {
    tokio::spawn(async move {
        match authlete.check_service().await {
            Ok(check) if check.warnings.is_empty() => {
                tracing::info!("Authlete service settings checked")
            }
            Ok(check) => {
                for warning in check.warnings {
                    tracing::warn!(warning = %warning, "Authlete service setting");
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot read the Authlete service settings"),
        }
    });
}

/// Fleet mode: registers this instance and renews its lease every sixth
/// of the lease until `stop`, then leaves. When no renewal succeeded for
/// two thirds of the lease, the instance fences itself (trigger requests
/// get `503` with `Retry-After`, reads still flow, `/readyz` false) until
/// one succeeds: by the time its lease expires and the rest of the fleet
/// may treat it as gone, it has stopped writing.
async fn keep_membership(
    store: crate::store::Handle,
    member: crate::store::Member,
    cutover: Arc<Cutover>,
    lease: Duration,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let tick = lease / 6;
    let mut last_renewal = std::time::Instant::now();
    let mut fenced = false;
    let phase_changed = cutover
        .environment
        .shared
        .as_ref()
        .map(|fleet| Arc::clone(&fleet.phase_changed))
        .unwrap_or_default();
    loop {
        let current = crate::store::Member {
            phase: cutover.phases.phase().as_str().to_owned(),
            backfill: cutover.backfill.state().as_str().to_owned(),
            ..member.clone()
        };
        match tokio::time::timeout(tick, store.renew_member(&current, lease)).await {
            Ok(Ok(())) => {
                last_renewal = std::time::Instant::now();
                // The fleet may have flipped while this instance was cut
                // off: take its phase before a trigger flows again.
                if fenced && let Ok(Ok(control)) = tokio::time::timeout(tick, store.control()).await
                {
                    cutover.adopt(&control);
                    fenced = false;
                    cutover.gate.set_fenced(false);
                    health.set_fenced(false);
                    tracing::info!("fleet lease renewed; fence lifted");
                }
            }
            failed => {
                if !fenced && last_renewal.elapsed() >= lease * 2 / 3 {
                    fenced = true;
                    cutover.gate.set_fenced(true);
                    health.set_fenced(true);
                    let error = match failed {
                        Ok(Err(err)) => err.to_string(),
                        _ => "the store did not answer in time".to_owned(),
                    };
                    tracing::error!(
                        error,
                        "cannot renew the fleet lease; fenced: trigger requests are refused until it is renewed"
                    );
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(tick) => {}
            () = phase_changed.notified() => {}
        }
    }
    if let Ok(Err(err)) = tokio::time::timeout(tick, store.leave(&member.instance)).await {
        tracing::warn!(error = %err, "cannot leave the fleet; the lease expires on its own");
    }
}

/// Refreshes the journal and lag gauges until `stop`.
async fn publish_stats(
    journal: Journal,
    recorder: Recorder,
    shared: Option<crate::admin::SharedStore>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        match &shared {
            Some(shared) => match shared.store.glance().await {
                Ok(glance) => {
                    *shared
                        .glance
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = glance;
                    let age = glance.depth.oldest.map(|at| {
                        std::time::SystemTime::now()
                            .duration_since(at)
                            .unwrap_or_default()
                    });
                    metrics.refresh_journal(glance.depth.records, 0, age);
                    metrics
                        .sync
                        .dead_letters
                        .set(i64::try_from(glance.dead_letters).unwrap_or(i64::MAX));
                    if let Ok(members) = shared.store.members().await {
                        *shared
                            .members
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = members;
                    }
                }
                Err(err) => tracing::debug!(error = %err, "cannot read the shared store's depth"),
            },
            None => {
                let stats = journal.stats();
                metrics.refresh_journal(stats.depth, stats.bytes_on_disk, stats.oldest_unacked_age);
            }
        }
        // A dropped append future leaves its records with the journal:
        // sync them like any other.
        recorder.pick_up_orphans();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(STATS_INTERVAL) => {}
        }
    }
}
