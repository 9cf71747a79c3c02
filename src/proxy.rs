//! The downstream side: accept loop, TLS termination, one hyper-util
//! connection (HTTP/1.1 or HTTP/2, by ALPN over TLS or by preface on plain
//! TCP) per client, idle and drain handling, and the seam where the sync
//! machinery observes forwarded exchanges.
//!
//! # The seam
//!
//! A [`Hook`] decides per request, from the method and path alone, whether
//! the exchange must be inspected ([`Hook::route`]). Only those requests are
//! buffered (capped at `proxy.max_body_bytes`, `413` past it); everything
//! else streams both ways untouched. For an inspected request the hook gets
//! the buffered request before it is forwarded ([`Hook::begin`], which may
//! hold it, resolve something at the primary, or refuse it) and the whole
//! exchange after the primary answered ([`Ticket::finish`]); the downstream
//! response is released only when `finish` returns, which is how "the
//! response waits for the journal" is enforced.
//!
//! # Connections and drain
//!
//! Each connection task owns its hyper connection so that it can start a
//! graceful shutdown itself: when the proxy stops (every connection
//! finishes its in-flight requests and closes; HTTP/2 gets a GOAWAY) and
//! when the connection has had no request in flight for
//! `proxy.idle_timeout`. hyper's own `header_read_timeout` bounds how long a
//! client may take to send a request head (slowloris); the TLS handshake
//! gets the same bound.

pub mod forward;
pub mod framing;
pub mod headers;
pub mod hook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::Metrics;

pub use forward::Forwarder;
pub use hook::{BoxFuture, Exchange, Hook, Rewriter, RouteId, Ticket};

/// Largest downstream request head. Browsers send a few KiB; large cookies
/// push it to tens of KiB.
pub(crate) const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// Most header lines accepted per downstream request (hyper's default).
pub(crate) const DEFAULT_MAX_HEADERS: usize = 100;
/// Time a downstream client has to send a complete request head: long enough
/// for a slow mobile link, short enough to shed slowloris connections.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Downstream keep-alive connections with no request in flight are closed
/// after this long. Longer than the common 60 s load-balancer idle timeout,
/// so the balancer, not the proxy, closes first and never races a request.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Time in-flight requests get to finish after a shutdown signal.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Pause between `/readyz` turning false and the listener closing, so that a
/// load balancer polling readiness stops sending traffic first. Zero by
/// default: set it to your balancer's health-check interval.
pub(crate) const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// How often the primary's reachability is probed for `/readyz`.
pub(crate) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// The downstream listener's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where downstream clients connect.
    pub listen: SocketAddr,
    /// TLS certificate and key (PEM); plain HTTP when absent.
    pub tls: Option<crate::tls::Files>,
    /// Largest downstream request head.
    pub max_header_bytes: usize,
    /// Most header lines per downstream request.
    pub max_headers: usize,
    /// Time to receive a complete request head.
    pub header_read_timeout: Duration,
    /// Idle downstream keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// Time in-flight requests get at shutdown.
    pub shutdown_grace: Duration,
    /// Pause between readiness turning false and the listener closing.
    pub shutdown_delay: Duration,
    /// How often the primary's reachability is probed for `/readyz`.
    pub health_interval: Duration,
    /// Forwarding each request.
    pub forward: forward::Config,
}

impl Config {
    /// Defaults, listening on `listen` in plain HTTP.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            shutdown_delay: DEFAULT_SHUTDOWN_DELAY,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            forward: forward::Config::default(),
        }
    }
}

/// Per-connection facts the forwarder needs.
#[derive(Debug)]
pub struct ConnInfo {
    /// The downstream peer.
    pub peer: SocketAddr,
    /// Whether TLS was terminated here.
    pub tls: bool,
    /// Framing verdicts of this connection's HTTP/1 requests.
    pub verdicts: Arc<framing::Verdicts>,
    activity: Activity,
}

/// In-flight accounting for the idle timeout.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the connection last became idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the connection will have been idle for `timeout`, or `None` if a
    /// request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.epoch + since + timeout)
    }
}

/// Keeps a request counted as in flight until the response body is done.
#[derive(Debug)]
pub(crate) struct InFlight {
    conn: Arc<ConnInfo>,
}

impl InFlight {
    /// Marks a request in flight on `conn`.
    pub(crate) fn start(conn: &Arc<ConnInfo>) -> Self {
        conn.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            conn: Arc::clone(conn),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.conn.activity;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity
                .idle_since_ms
                .store(activity.now_ms(), Ordering::Release);
        }
    }
}

/// Downstream listener settings.
#[derive(Clone)]
pub struct ListenerOptions {
    /// TLS termination, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Request-head deadline (also bounds the TLS handshake).
    pub header_read_timeout: Duration,
    /// Idle keep-alive deadline.
    pub idle_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl std::fmt::Debug for ListenerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerOptions")
            .field("tls", &self.tls.is_some())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ListenerOptions {
    /// Options from the validated config.
    pub fn from_config(config: &Config, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        Self {
            tls,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_header_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
        }
    }
}

/// Runs the downstream listener until `stop` is cancelled, then drains:
/// every connection finishes its in-flight requests and closes, within
/// `grace`; connections still open after that are dropped.
pub async fn run(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    options: ListenerOptions,
    metrics: Metrics,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192))
        .max_headers(options.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let options = Arc::new(options);
    let tracker = TaskTracker::new();
    let force = CancellationToken::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "failed to accept downstream connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        metrics.proxy.connections_total.inc();
        let span =
            tracing::debug_span!("connection", peer.addr = %peer, tls = options.tls.is_some());
        let task = serve_tcp(
            stream,
            peer,
            Arc::clone(&builder),
            Arc::clone(&forwarder),
            Arc::clone(&options),
            metrics.clone(),
            stop.clone(),
            force.clone(),
        );
        tracker.spawn(task.instrument(span));
    }
    drop(listener);
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        tracing::info!(connections = open, grace = ?grace, "draining downstream connections");
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            "downstream connections still busy after the shutdown grace; closing them"
        );
        force.cancel();
        tracker.wait().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    forwarder: Arc<Forwarder>,
    options: Arc<ListenerOptions>,
    metrics: Metrics,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let _open = OpenConnection::new(&metrics);
    match &options.tls {
        None => {
            serve_io(
                stream, peer, false, &builder, forwarder, &options, stop, force,
            )
            .await
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(options.header_read_timeout, acceptor.accept(stream));
            let tls_stream = tokio::select! {
                () = force.cancelled() => return,
                result = handshake => match result {
                    Ok(Ok(tls_stream)) => tls_stream,
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                },
            };
            serve_io(
                tls_stream, peer, true, &builder, forwarder, &options, stop, force,
            )
            .await;
        }
    }
}

struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(metrics: &Metrics) -> Self {
        metrics.proxy.connections_open.inc();
        Self(metrics.proxy.connections_open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    builder: &auto::Builder<TokioExecutor>,
    forwarder: Arc<Forwarder>,
    options: &ListenerOptions,
    stop: CancellationToken,
    force: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let verdicts = Arc::new(framing::Verdicts::default());
    let io = framing::SniffedIo::new(io, options.max_header_bytes, Arc::clone(&verdicts));
    let conn_info = Arc::new(ConnInfo {
        peer,
        tls,
        verdicts,
        activity: Activity::new(),
    });
    let service_conn = Arc::clone(&conn_info);
    let service = hyper::service::service_fn(move |request| {
        let forwarder = Arc::clone(&forwarder);
        let conn = Arc::clone(&service_conn);
        async move { Ok::<_, std::convert::Infallible>(forwarder.handle(request, &conn).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        let idle_deadline = if shutting_down {
            None
        } else {
            conn_info.activity.idle_deadline(options.idle_timeout)
        };
        // While a request is in flight there is no idle deadline; re-check
        // periodically so a finished request starts the idle clock.
        let wake_at = idle_deadline
            .unwrap_or_else(|| Instant::now() + options.idle_timeout.min(Duration::from_secs(1)));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %crate::telemetry::error_chain(err.as_ref()), "downstream connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            () = force.cancelled() => return,
            () = tokio::time::sleep_until(wake_at.into()), if !shutting_down => {
                if let Some(deadline) = conn_info.activity.idle_deadline(options.idle_timeout)
                    && Instant::now() >= deadline
                {
                    tracing::debug!("closing idle downstream connection");
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
