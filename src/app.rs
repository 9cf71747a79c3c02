//! Builds every subsystem from the validated [`Config`], runs them under one
//! root cancellation token, and shuts them down in a fixed order.
//!
//! # Shutdown order
//!
//! 1. `/readyz` turns false (load balancers stop sending new traffic), then
//!    wait `proxy.shutdown_delay` for them to notice.
//! 2. Stop accepting downstream connections.
//! 3. Drain in-flight requests (every connection finishes what it has and
//!    closes; HTTP/2 gets GOAWAY), bounded by `proxy.shutdown_grace`;
//!    connections still busy after that are closed.
//! 4. Stop the readiness probe.
//! 5. Stop the admin API last, so `/readyz` and `/metrics` answer to the end.
//!
//! A critical task that fails cancels the root token, so the process shuts
//! down as a whole instead of half-running.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::health::{self, Health};
use crate::metrics::{self, Metrics};
use crate::proxy::forward::{FixedPrimary, PrimarySelector, Settings};
use crate::proxy::{self, Forwarder, ListenerOptions};
use crate::upstream::Upstream;

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
        let proxy = TcpListener::bind(config.proxy.listen)
            .await
            .map_err(|source| Error::Bind {
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
    let source = Arc::new(Upstream::new(
        metrics::Upstream::Source,
        &config.source,
        &config.proxy,
        &metrics,
    )?);
    let primary: Arc<dyn PrimarySelector> = Arc::new(FixedPrimary(Arc::clone(&source)));
    let forwarder = Arc::new(Forwarder::new(
        Settings::from_config(&config.proxy),
        Arc::clone(&primary),
        None,
        Arc::clone(&health),
        metrics.clone(),
    ));

    let root = CancellationToken::new();
    let tracker = TaskTracker::new();

    let admin_stop = CancellationToken::new();
    let admin = Arc::new(Admin {
        health: Arc::clone(&health),
        metrics: metrics.clone(),
        token: config.admin.token.clone(),
        shutdown: root.clone(),
    });
    let admin_task = tracker.spawn(
        admin::run(listeners.admin, admin, admin_stop.clone())
            .instrument(tracing::info_span!("admin")),
    );

    let probe_stop = root.child_token();
    let probe_task = tracker.spawn(
        health::run_probe(
            Arc::clone(&health),
            Arc::clone(&primary),
            config.proxy.health_interval,
            probe_stop.clone(),
        )
        .instrument(tracing::info_span!("health")),
    );

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
    tracing::info!(
        proxy = ?proxy_addr,
        primary = %config.source.url,
        tls = config.proxy.tls.is_some(),
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
    // 4. Background tasks.
    probe_stop.cancel();
    let _ = probe_task.await;
    // 5. Admin last.
    admin_stop.cancel();
    let _ = admin_task.await;
    tracker.wait().await;
    tracing::info!("handover stopped");
    Ok(())
}
