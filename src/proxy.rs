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
//!
//! # Runtimes
//!
//! By default ([`Runtime::PerCore`]) the downstream side runs on its own
//! threads, one single-threaded tokio runtime per core, each with its own
//! listening socket on the same port (`SO_REUSEPORT`, the kernel spreads
//! connections) and its own upstream connection pool: a request is
//! accepted, forwarded and answered on one thread, with no hand-off to
//! another (the process model of nginx, HAProxy and pingora). Measured
//! pinned to one core, this halves the wake-ups per request; on two cores
//! it removes the futex and eventfd wake-ups that tokio's work-stealing
//! scheduler needs when the downstream connection and the pooled upstream
//! connection sit on different workers (benches/README.md §7). The sync
//! engine, the journal and the admin API stay on the main multi-threaded
//! runtime. [`Runtime::Shared`] serves downstream on that main runtime as
//! well.

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
pub use hook::{BoxFuture, Exchange, Hook, Rewriter, RouteId, Ticket, Unseen};

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

/// Most downstream connections open at once. An identity provider's
/// clients are browsers and back ends with keep-alive: a few thousand cover
/// a busy site, and the limit keeps a flood of connections from exhausting
/// file descriptors (each costs one downstream and, while busy, one
/// upstream descriptor; raise `LimitNOFILE` above twice this).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// How the downstream side uses the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `workers` threads, each with a single-threaded runtime, its own
    /// `SO_REUSEPORT` listener and its own upstream pool (the default, one
    /// per core).
    PerCore {
        /// How many; at least 1.
        workers: usize,
    },
    /// Downstream connections are tasks of the main multi-threaded runtime
    /// (work stealing across its threads).
    Shared,
}

impl Runtime {
    /// One worker per core this process may run on (its CPU affinity, so
    /// `taskset -c 1` gives one).
    pub fn per_core() -> Self {
        Self::PerCore {
            workers: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        }
    }

    /// How many upstream pools the request path uses (one per worker), or
    /// 0 when requests use the shared pool.
    pub fn worker_pools(self) -> usize {
        match self {
            Self::PerCore { workers } => workers,
            Self::Shared => 0,
        }
    }
}

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
    /// Most downstream connections open at once; past it a new connection
    /// gets a 503 and is closed.
    pub max_connections: usize,
    /// Threads and runtimes of the downstream side.
    pub runtime: Runtime,
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            runtime: Runtime::per_core(),
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
    /// `peer`'s IP as an `X-Forwarded-For` value, made once per connection.
    pub client_ip: http::HeaderValue,
    /// Framing verdicts of this connection's HTTP/1 requests.
    pub verdicts: Arc<framing::Verdicts>,
    activity: Activity,
}

/// In-flight accounting for the idle timeout.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the connection last became idle;
    /// `u64::MAX` until its first request, which must start within the
    /// head-read timeout of the accept.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(NO_REQUEST_YET),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a request has started on this connection.
    fn started(&self) -> bool {
        self.idle_since_ms.load(Ordering::Acquire) != NO_REQUEST_YET
            || self.in_flight.load(Ordering::Acquire) > 0
    }

    /// When the connection will have been idle for `idle` (or, before its
    /// first request, when `first` has passed since the accept), or `None`
    /// if a request is in flight.
    fn idle_deadline(&self, idle: Duration, first: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.idle_since_ms.load(Ordering::Acquire) {
            NO_REQUEST_YET => Some(self.epoch + first),
            since => Some(self.epoch + Duration::from_millis(since) + idle),
        }
    }
}

/// `Activity::idle_since_ms` of a connection that has not started a request.
const NO_REQUEST_YET: u64 = u64::MAX;

/// Keeps a request counted as in flight until the response body is done.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// `None` once handed to the response body ([`Self::into_guard`]).
    conn: Option<Arc<ConnInfo>>,
}

impl InFlight {
    /// Marks a request in flight on `conn`.
    pub(crate) fn start(conn: &Arc<ConnInfo>) -> Self {
        conn.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            conn: Some(Arc::clone(conn)),
        }
    }

    /// Hands the count to the response body: the request stays in flight
    /// until that body is done.
    pub(crate) fn into_guard(mut self) -> Option<crate::http::body::Guard> {
        let conn: Arc<dyn crate::http::body::Done> = self.conn.take()?;
        Some(crate::http::body::Guard::new(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            crate::http::body::Done::done(conn.as_ref());
        }
    }
}

impl crate::http::body::Done for ConnInfo {
    /// A request of this connection is done.
    fn done(&self) {
        let activity = &self.activity;
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
    /// Most downstream connections open at once (all workers together).
    pub max_connections: usize,
    /// Threads and runtimes.
    pub runtime: Runtime,
}

impl std::fmt::Debug for ListenerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerOptions")
            .field("tls", &self.tls.is_some())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("runtime", &self.runtime)
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
            max_connections: config.max_connections,
            runtime: config.runtime,
        }
    }
}

/// Binds the downstream listening socket, with `SO_REUSEPORT` when
/// `reuseport` (so that the per-core workers can bind theirs to the same
/// address).
pub fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if reuseport {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuseport;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pending connections the kernel queues per listening socket (nginx's
/// default on Linux is 511; the kernel caps it at `somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// Runs the downstream side until `stop` is cancelled, then drains: every
/// connection finishes its in-flight requests and closes, within `grace`;
/// connections still open after that are dropped.
///
/// With [`Runtime::PerCore`] this starts the worker threads (the first
/// takes `listener`, the others bind their own on its address, or share
/// it when it was not bound with `SO_REUSEPORT`) and waits for all of them.
pub async fn run(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    options: ListenerOptions,
    metrics: Metrics,
    stop: CancellationToken,
    grace: Duration,
) {
    let workers = match options.runtime {
        Runtime::Shared => {
            serve_listener(listener, forwarder, Arc::new(options), metrics, stop, grace).await;
            return;
        }
        Runtime::PerCore { workers } => workers.max(1),
    };
    let listeners = match worker_listeners(listener, workers) {
        Ok(listeners) => listeners,
        Err(err) => {
            tracing::error!(error = %err, "cannot set up the per-core listeners");
            return;
        }
    };
    let options = Arc::new(options);
    let mut done = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let (finished, wait) = tokio::sync::oneshot::channel::<()>();
        let forwarder = Arc::clone(&forwarder);
        let options = Arc::clone(&options);
        let metrics = metrics.clone();
        let stop = stop.clone();
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name(format!("handover-proxy-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(error = %err, worker = index, "cannot start a proxy worker runtime");
                        return;
                    }
                };
                crate::upstream::enter_worker(index);
                runtime.block_on(
                    async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(listener) => listener,
                            Err(err) => {
                                tracing::error!(error = %err, "cannot register the listener");
                                return;
                            }
                        };
                        serve_listener(listener, forwarder, options, metrics, stop, grace).await;
                    }
                    .instrument(tracing::debug_span!(parent: &span, "worker", index)),
                );
                let _ = finished.send(());
            });
        match spawned {
            Ok(_) => done.push(wait),
            Err(err) => {
                tracing::error!(error = %err, worker = index, "cannot start a proxy worker thread")
            }
        }
    }
    for wait in done {
        let _ = wait.await;
    }
}

/// One listening socket per worker: the given one, then sockets bound to
/// its address with `SO_REUSEPORT` or, when the kernel refuses that (the
/// first was bound without it), duplicates of the first (the workers then
/// share one accept queue).
fn worker_listeners(
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = listener.local_addr()?;
    let first = listener.into_std()?;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 1..workers {
        let extra = match bind(addr, true) {
            Ok(own) => own.into_std()?,
            Err(err) => {
                tracing::debug!(error = %err, "no SO_REUSEPORT socket for a worker; sharing the listener");
                first.try_clone()?
            }
        };
        listeners.push(extra);
    }
    listeners.insert(0, first);
    Ok(listeners)
}

/// Accepts on one listener and serves its connections on the current
/// runtime until `stop`, then drains them within `grace`.
async fn serve_listener(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    options: Arc<ListenerOptions>,
    metrics: Metrics,
    stop: CancellationToken,
    grace: Duration,
) {
    let builder = Arc::new(connection_builder(&options));
    let tracker = TaskTracker::new();
    let force = CancellationToken::new();
    while let Some((stream, peer)) =
        crate::http::accept(&listener, &stop, "downstream connection").await
    {
        let accepted = Instant::now();
        let Some(open) = OpenConnection::admit(&metrics, options.max_connections) else {
            refuse(&stream, options.tls.is_some(), &metrics);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.proxy.connections_total.inc();
        let span =
            tracing::debug_span!("connection", peer.addr = %peer, tls = options.tls.is_some());
        let task = serve_tcp(
            stream,
            Accepted {
                peer,
                at: accepted,
                _open: open,
            },
            Arc::clone(&builder),
            Arc::clone(&forwarder),
            Arc::clone(&options),
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

/// The hyper connection settings of the downstream side.
fn connection_builder(options: &ListenerOptions) -> auto::Builder<TokioExecutor> {
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
    builder
}

#[allow(clippy::too_many_arguments)]
async fn serve_tcp(
    stream: TcpStream,
    accepted: Accepted,
    builder: Arc<auto::Builder<TokioExecutor>>,
    forwarder: Arc<Forwarder>,
    options: Arc<ListenerOptions>,
    stop: CancellationToken,
    force: CancellationToken,
) {
    match &options.tls {
        None => {
            serve_io(
                stream, accepted, false, &builder, forwarder, &options, stop, force,
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
                tls_stream, accepted, true, &builder, forwarder, &options, stop, force,
            )
            .await;
        }
    }
}

/// A connection just accepted, counted as open until dropped.
struct Accepted {
    peer: SocketAddr,
    /// When it was accepted: the first request head is due one head-read
    /// timeout after this.
    at: Instant,
    _open: OpenConnection,
}

/// Counts a connection in `handover_proxy_connections_open` while it lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    /// Counts a new connection, or `None` when `max` are open already (the
    /// gauge is shared by every worker, so the limit is the process's).
    fn admit(metrics: &Metrics, max: usize) -> Option<Self> {
        let gauge = &metrics.proxy.connections_open;
        let before = gauge.inc();
        if usize::try_from(before).unwrap_or(0) >= max {
            gauge.dec();
            return None;
        }
        Some(Self(gauge.clone()))
    }
}

/// The answer to a connection past `proxy.max_connections`: a 503 written
/// straight to the socket (without reading the request: the point is not
/// to spend anything on it), then close. Over TLS there is no handshake to
/// spend either: the connection is just closed.
fn refuse(stream: &TcpStream, tls: bool, metrics: &Metrics) {
    metrics.proxy.connections_refused.inc();
    if !tls {
        let _ = stream.try_write(REFUSED_RESPONSE);
    }
    tracing::debug!("refused a downstream connection: proxy.max_connections reached");
}

const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\nretry-after: 1\r\nconnection: close\r\n\r\nservice unavailable, retry later\n";

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_io<I>(
    io: I,
    accepted: Accepted,
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
        peer: accepted.peer,
        client_ip: headers::client_ip_value(accepted.peer.ip()),
        tls,
        verdicts,
        activity: Activity::new(accepted.at),
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
    // A connection that sends nothing is closed one head-read timeout after
    // the accept (hyper's own timer starts only at the first byte).
    let deadline = |activity: &Activity| {
        activity.idle_deadline(options.idle_timeout, options.header_read_timeout)
    };
    loop {
        let idle_deadline = if shutting_down {
            None
        } else {
            deadline(&conn_info.activity)
        };
        // While a request is in flight there is no idle deadline, and before
        // the first one the deadline is the head-read one; re-check
        // periodically so that a finished request starts the idle clock.
        let recheck = Instant::now() + options.idle_timeout.min(Duration::from_secs(1));
        let wake_at = match idle_deadline {
            Some(deadline) if conn_info.activity.started() => deadline,
            Some(deadline) => deadline.min(recheck),
            None => recheck,
        };
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
                if let Some(deadline) = deadline(&conn_info.activity)
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
