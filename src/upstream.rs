//! HTTP clients to the two upstream servers: pooled keep-alive connections,
//! `http` or `https` (rustls, SNI from the URL host, system roots or a CA
//! file, TLS session resumption), a connect timeout, and a gauge of open
//! connections per upstream. The forwarding path speaks what the operator
//! configured ([`Protocol::configured`]: HTTP/1.1, or HTTP/2 with
//! `http2 = true`); the management APIs (sync, backfill, verify) have their
//! own clients, with pools sized for the sync's concurrency, that speak
//! HTTP/2 to a server that offers it over TLS ([`Protocol::management`]:
//! ALPN `h2` and `http/1.1`; over plain TCP h2c only with `http2 = true`,
//! since prior knowledge cannot be negotiated).
//!
//! Each upstream also keeps the [`Feedback`] of its management-API answers
//! (`servers::call` reports every exchange): the latency of recent calls
//! for `/status`, the `Retry-After` a `429` or `503` asked for (no call is
//! sent before it passes), and an [`Observer`] the sync's concurrency
//! limiter registers to learn how loaded the server is.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Mutex;
use std::time::Instant;

use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::http::body::ProxyBody;
use crate::metrics::Metrics;
use crate::model::{BaseUrl, Side};

type Connector = Counting<hyper_rustls::HttpsConnector<HttpConnector>>;

/// Time to establish a TCP (and TLS) connection to an upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle upstream connections are closed after this long.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle upstream connections kept per upstream host.
pub const DEFAULT_POOL_MAX_IDLE: usize = 256;

/// Connection settings of the upstream clients (both servers).
#[derive(Debug, Clone)]
pub struct Config {
    /// Time to connect (TCP and TLS) to an upstream.
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per host (and per pool).
    pub pool_max_idle: usize,
    /// Pools for proxy worker runtimes, besides the shared one (the number
    /// of workers; 0 when the proxy runs on the shared runtime).
    pub worker_pools: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            worker_pools: 0,
        }
    }
}

/// Which HTTP versions to speak to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: ALPN `h2` over TLS, prior knowledge (h2c) over plain
    /// TCP.
    Http2,
    /// What the server offers: over TLS, ALPN `h2` then `http/1.1` (one
    /// multiplexed connection where the server speaks HTTP/2); over plain
    /// TCP, HTTP/1.1.
    Negotiated,
}

impl Protocol {
    /// The forwarding path's: exactly what the operator configured
    /// (`http2 = true` or not), so traffic is forwarded as it always was.
    pub fn configured(http2: bool) -> Self {
        if http2 { Self::Http2 } else { Self::Http1 }
    }

    /// The management APIs': HTTP/2 wherever the server offers it over TLS
    /// (multiplexing removes head-of-line waits and connection set-up at a
    /// distance), h2c over plain TCP only when configured.
    pub fn management(http2: bool) -> Self {
        if http2 { Self::Http2 } else { Self::Negotiated }
    }
}

thread_local! {
    /// Which pool this thread's requests use: 0 the shared one, `i + 1`
    /// proxy worker `i`'s.
    static POOL: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as proxy worker `index`: its requests use that
/// worker's pools from now on.
pub fn enter_worker(index: usize) {
    POOL.with(|pool| pool.set(index + 1));
}

/// One upstream server: its base URL and a pooled client.
#[derive(Debug)]
pub struct Upstream {
    /// Source or target.
    pub side: Side,
    /// Base URL (scheme, authority, base path).
    pub url: BaseUrl,
    /// The HTTP versions spoken.
    pub protocol: Protocol,
    transport: Transport,
    feedback: Arc<Feedback>,
}

#[derive(Debug)]
enum Transport {
    /// The shared pool first, then one per worker.
    Http1(Box<H1>),
    /// HTTP/2 or negotiated (hyper-util's client, which multiplexes): the
    /// shared client first, then one per worker.
    Client(Box<[Client<Connector, ProxyBody>]>),
}

/// Why a request to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be established (refused, DNS, TLS handshake,
    /// connect timeout).
    #[error("cannot connect to {upstream}: {message}")]
    Connect {
        /// Source or target.
        upstream: &'static str,
        /// The cause chain.
        message: String,
    },
    /// The exchange failed after connecting (reset, malformed response).
    #[error("request to {upstream} failed: {message}")]
    Exchange {
        /// Source or target.
        upstream: &'static str,
        /// The cause chain.
        message: String,
    },
    /// No answer within the deadline.
    #[error("{upstream} did not answer within {timeout:?}")]
    Timeout {
        /// Source or target.
        upstream: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// The request body failed while being sent (a streamed downstream
    /// body that was malformed or cut: the sender's fault, not the
    /// upstream's).
    #[error("request body to {upstream} failed: {message}")]
    RequestBody {
        /// Source or target.
        upstream: &'static str,
        /// The cause chain.
        message: String,
    },
    /// The request could not be built (invalid path).
    #[error("invalid request to {upstream}: {message}")]
    Build {
        /// Source or target.
        upstream: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl Error {
    /// Whether retrying later may succeed (everything here is transient
    /// except a request we could not even build).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Build { .. })
    }
}

impl Upstream {
    /// Builds the client for the server at `url` (TLS trusting `ca_file`
    /// or the system roots), speaking `protocol`.
    pub fn new(
        side: Side,
        url: &BaseUrl,
        ca_file: Option<&std::path::Path>,
        protocol: Protocol,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<Self, crate::tls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = crate::tls::client_config(ca_file)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = match protocol {
            Protocol::Http1 => builder.enable_http1().wrap_connector(http),
            Protocol::Http2 => builder.enable_http2().wrap_connector(http),
            Protocol::Negotiated => builder.enable_all_versions().wrap_connector(http),
        };
        let (open, total) = metrics.upstream.handles(side);
        let connector = Counting {
            inner: https,
            open,
            total,
        };
        let transport = if protocol == Protocol::Http1 {
            Transport::Http1(Box::new(H1::new(url, connector, config)))
        } else {
            Transport::Client(
                (0..=config.worker_pools)
                    .map(|_| {
                        Client::builder(TokioExecutor::new())
                            .pool_idle_timeout(config.pool_idle_timeout)
                            .pool_max_idle_per_host(config.pool_max_idle)
                            .pool_timer(TokioTimer::new())
                            .timer(TokioTimer::new())
                            .http2_only(protocol == Protocol::Http2)
                            .build(connector.clone())
                    })
                    .collect(),
            )
        };
        Ok(Self {
            side,
            url: url.clone(),
            protocol,
            transport,
            feedback: Arc::new(Feedback::with_metrics(metrics.upstream.api(side))),
        })
    }

    /// What this server's management-API answers say about its load.
    pub fn feedback(&self) -> &Feedback {
        &self.feedback
    }

    /// The HTTP version requests to this upstream must carry (a
    /// negotiated HTTP/2 connection takes HTTP/1.1 requests as they are).
    pub fn version(&self) -> http::Version {
        match self.protocol {
            Protocol::Http2 => http::Version::HTTP_2,
            Protocol::Http1 | Protocol::Negotiated => http::Version::HTTP_11,
        }
    }

    /// Sends a request whose URI is already absolute, waiting at most
    /// `timeout` for the response head.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Error> {
        *request.version_mut() = self.version();
        let upstream = self.side.as_str();
        let pool = POOL.with(Cell::get);
        let clients = match &self.transport {
            Transport::Http1(h1) => {
                let deadline = tokio::time::Instant::now() + timeout;
                let timed_out = || Error::Timeout { upstream, timeout };
                // The common case, a ready pooled connection, awaits
                // hyper's own future under the deadline and nothing else:
                // every layer of future around it is copied when it is
                // built (a pass-through request moved ~8 KB through the
                // layers this replaced, benches/README.md §7). Connecting
                // and retrying are boxed, off that path.
                let request = h1.prepare(request);
                let pool = h1.pool(pool);
                let unsent = match pool.start(None, request, h1) {
                    Err(unsent) => unsent,
                    Ok(sending) => match tokio::time::timeout_at(deadline, sending).await {
                        Err(_) => return Err(timed_out()),
                        Ok(Ok(response)) => return Ok(response),
                        Ok(Err(mut err)) => match err.take_message() {
                            // Not even started (closed while idle): once
                            // more, on another or a new connection.
                            Some(unsent) => unsent,
                            None => {
                                return Err(
                                    Failure::Exchange(err.into_error()).into_error(upstream)
                                );
                            }
                        },
                    },
                };
                return match tokio::time::timeout_at(deadline, Box::pin(h1.send(pool, unsent)))
                    .await
                {
                    Err(_) => Err(timed_out()),
                    Ok(result) => result.map_err(|failure| failure.into_error(upstream)),
                };
            }
            Transport::Client(clients) => clients,
        };
        let client = clients.get(pool).unwrap_or(&clients[0]);
        match tokio::time::timeout(timeout, client.request(request)).await {
            Err(_) => Err(Error::Timeout { upstream, timeout }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => {
                let message = crate::telemetry::error_chain(&err);
                if err.is_connect() {
                    Err(Error::Connect { upstream, message })
                } else if request_body_failed(&err) {
                    Err(Error::RequestBody { upstream, message })
                } else {
                    Err(Error::Exchange { upstream, message })
                }
            }
        }
    }

    /// Whether the upstream answers HTTP at all (any status), within
    /// `timeout`: the readiness probe.
    pub async fn probe(&self, timeout: Duration) -> Result<(), Error> {
        let uri = self
            .url
            .endpoint("/.well-known/openid-configuration")
            .map_err(|err| Error::Build {
                upstream: self.side.as_str(),
                message: err.to_string(),
            })?;
        let request = Request::get(uri)
            .body(ProxyBody::empty())
            .map_err(|err| Error::Build {
                upstream: self.side.as_str(),
                message: err.to_string(),
            })?;
        let response = self.send(request, timeout).await?;
        // Drain so the connection goes back to the pool.
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        Ok(())
    }
}

/// HTTP/1.1 connections to one upstream: a pool per worker plus the shared
/// one (see the module doc).
#[derive(Debug)]
struct H1 {
    pools: Box<[H1Pool]>,
    connector: Connector,
    /// `scheme://authority/`: what the connector dials.
    origin: Uri,
    /// The `Host` a request gets when it has none (as hyper-util sets it:
    /// the port only when it is not the scheme's default).
    host: HeaderValue,
    idle_timeout: Duration,
    max_idle: usize,
}

#[derive(Debug, Default)]
struct H1Pool {
    /// Most recently used last.
    connections: Mutex<Vec<Pooled>>,
}

#[derive(Debug)]
struct Pooled {
    sender: SendRequest<ProxyBody>,
    last_used: Instant,
}

/// Why an HTTP/1 exchange failed, before it is named for an upstream.
enum Failure {
    Connect(String),
    Exchange(hyper::Error),
}

impl Failure {
    fn into_error(self, upstream: &'static str) -> Error {
        match self {
            Self::Connect(message) => Error::Connect { upstream, message },
            Self::Exchange(err) => {
                let message = crate::telemetry::error_chain(&err);
                if err.is_user() {
                    Error::RequestBody { upstream, message }
                } else {
                    Error::Exchange { upstream, message }
                }
            }
        }
    }
}

impl H1 {
    fn new(url: &BaseUrl, connector: Connector, config: &Config) -> Self {
        let origin = url
            .uri(http::uri::PathAndQuery::from_static("/"))
            .unwrap_or_else(|_| Uri::from_static("http://invalid/"));
        let default_port = match origin.scheme_str() {
            Some("https") => 443,
            _ => 80,
        };
        let host_text = match (origin.host(), origin.port_u16()) {
            (Some(host), Some(port)) if port != default_port => format!("{host}:{port}"),
            (Some(host), _) => host.to_owned(),
            (None, _) => String::new(),
        };
        Self {
            pools: (0..=config.worker_pools)
                .map(|_| H1Pool::default())
                .collect(),
            connector,
            host: HeaderValue::from_str(&host_text)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            origin,
            idle_timeout: config.pool_idle_timeout,
            max_idle: config.pool_max_idle,
        }
    }

    /// `request` as a connection-level client must send it: origin form
    /// (it writes the URI as given), with a `Host`.
    fn prepare(&self, mut request: Request<ProxyBody>) -> Request<ProxyBody> {
        if request.uri().scheme().is_some() {
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.host.clone());
        }
        request
    }

    /// Pool `index`'s connections (the shared pool for an unknown index).
    fn pool(&self, index: usize) -> &H1Pool {
        self.pools.get(index).unwrap_or(&self.pools[0])
    }

    /// Sends a prepared `request` on `pool`: on a ready pooled connection,
    /// else on a new one; a pooled connection that closed before taking
    /// the request gives it back for another try.
    async fn send(
        &self,
        pool: &H1Pool,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, Failure> {
        loop {
            let (sending, fresh) = match pool.start(None, request, self) {
                Ok(sending) => (sending, false),
                Err(unsent) => {
                    // Boxed: connecting (the connector, TLS, the
                    // handshake) is a large future needed only for a new
                    // connection, which pooled requests would otherwise
                    // carry and move.
                    let sender = Box::pin(self.connect()).await?;
                    match pool.start(Some(sender), unsent, self) {
                        Ok(sending) => (sending, true),
                        Err(_) => {
                            return Err(Failure::Connect("the connection pool is poisoned".into()));
                        }
                    }
                }
            };
            match sending.await {
                Ok(response) => return Ok(response),
                Err(mut err) => match err.take_message() {
                    // Not even started on a pooled connection (closed while
                    // idle): once more, on another or a new one.
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(Failure::Exchange(err.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, Failure> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
            .await
            .map_err(|err| Failure::Connect(crate::telemetry::error_chain(err.as_ref())))?;
        let io = tower_service::Service::call(&mut connector, self.origin.clone())
            .await
            .map_err(|err| Failure::Connect(crate::telemetry::error_chain(err.as_ref())))?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|err| Failure::Connect(crate::telemetry::error_chain(&err)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// What starting a request on a connection ends in.
type Started = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>>;

impl H1Pool {
    /// Starts `request` on `fresh` (kept in the pool when fewer than
    /// `max_idle` are), or else on the most recently used ready
    /// connection; gives the request back when none is ready. Closed and
    /// expired connections met on the way are dropped. One function for
    /// both, so that both return hyper's one future type (no box).
    // The request comes back by value when no connection is ready: moving
    // it is what a box would cost to avoid.
    #[allow(clippy::result_large_err)]
    fn start(
        &self,
        fresh: Option<SendRequest<ProxyBody>>,
        request: Request<ProxyBody>,
        h1: &H1,
    ) -> Result<impl Future<Output = Started> + Send + use<>, Request<ProxyBody>> {
        let Ok(mut connections) = self.connections.lock() else {
            return Err(request);
        };
        let now = Instant::now();
        if let Some(mut sender) = fresh {
            let sending = sender.try_send_request(request);
            if connections.len() < h1.max_idle {
                connections.push(Pooled {
                    sender,
                    last_used: now,
                });
            }
            return Ok(sending);
        }
        let mut index = connections.len();
        while index > 0 {
            index -= 1;
            let pooled = &mut connections[index];
            if pooled.sender.is_closed()
                || now.saturating_duration_since(pooled.last_used) > h1.idle_timeout
            {
                // Everything after `index` was looked at already.
                connections.swap_remove(index);
                continue;
            }
            if pooled.sender.is_ready() {
                pooled.last_used = now;
                return Ok(pooled.sender.try_send_request(request));
            }
        }
        Err(request)
    }
}

/// Whether hyper failed the exchange because the request body we gave it
/// returned an error (hyper calls that a "user" error).
fn request_body_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(error) = source {
        if let Some(hyper_error) = error.downcast_ref::<hyper::Error>() {
            return hyper_error.is_user();
        }
        source = error.source();
    }
    false
}

/// Wraps a connector so every connection it makes is counted while open.
#[derive(Debug, Clone)]
pub struct Counting<C> {
    inner: C,
    open: Gauge,
    total: Counter,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<C> tower_service::Service<Uri> for Counting<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = C::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let open = self.open.clone();
        let total = self.total.clone();
        Box::pin(async move {
            let io = connecting.await?;
            total.inc();
            open.inc();
            Ok(Counted {
                io,
                _open: OpenGuard(open),
            })
        })
    }
}

#[derive(Debug)]
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection that decrements the open gauge when dropped.
#[derive(Debug)]
pub struct Counted<T> {
    io: T,
    _open: OpenGuard,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// Which upstream currently is the primary.
pub trait PrimarySelector: Send + Sync + 'static {
    /// The upstream that should receive a request now.
    fn primary(&self) -> Arc<Upstream>;
}

/// A fixed primary (no cutover machinery).
#[derive(Debug)]
pub struct FixedPrimary(pub Arc<Upstream>);

impl PrimarySelector for FixedPrimary {
    fn primary(&self) -> Arc<Upstream> {
        Arc::clone(&self.0)
    }
}

/// How one management-API exchange went, as load feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server answered (success or a refusal that is not about load).
    Answered,
    /// The server said it is overloaded (`429`, `503`), maybe with the
    /// time to wait (`Retry-After`).
    Overloaded {
        /// The delay the server asked for.
        retry_after: Option<Duration>,
    },
    /// No answer within the deadline: as good a sign of overload as a
    /// `503`, without a delay to honour.
    TimedOut,
    /// No connection or a broken one: an outage, not load (the sync's
    /// circuit breaker deals with it).
    Unreachable,
}

/// Learns from every management-API exchange with one server (the sync's
/// concurrency limiter).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One exchange took `elapsed` and ended with `verdict`.
    fn observe(&self, elapsed: Duration, verdict: Verdict);
}

/// The longest `Retry-After` honoured: a server asking for more is waited
/// for this long, then asked again (a typo of an hour must not stall a
/// migration unseen; the wait is logged).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Latency samples kept for the percentiles in `/status`.
const LATENCY_SAMPLES: usize = 2048;
/// Samples older than this do not count in the percentiles.
const LATENCY_MAX_AGE: Duration = Duration::from_secs(30);

/// The management-API feedback of one upstream: recent latencies, the
/// `Retry-After` gate and the registered [`Observer`].
#[derive(Debug, Default)]
pub struct Feedback {
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
    /// No call is sent before this instant (a `Retry-After`).
    not_before: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Recent answered calls: when, and how long they took.
    latencies: std::sync::Mutex<std::collections::VecDeque<(tokio::time::Instant, Duration)>>,
    /// Answers that said the server is overloaded.
    overloaded: std::sync::atomic::AtomicU64,
    metrics: Option<crate::metrics::ApiMetrics>,
    /// A configured cap on the request rate, if any.
    pace: std::sync::Mutex<Option<Pace>>,
}

/// A request-rate cap as a virtual clock: each call reserves the next free
/// slot, one `interval` after the previous one, and waits for it. Calls
/// never come closer than `interval` on average, bursts included, and no
/// call is refused: it waits.
#[derive(Debug, Clone, Copy)]
struct Pace {
    interval: Duration,
    next: tokio::time::Instant,
}

/// Latency percentiles of recent calls.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Calls counted.
    pub samples: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Feedback {
    /// Feedback that also counts every exchange in `metrics`.
    pub fn with_metrics(metrics: crate::metrics::ApiMetrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    /// Registers the observer of every later exchange (once; a second
    /// registration is ignored and reported as `false`).
    pub fn observe_with(&self, observer: Arc<dyn Observer>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Caps the rate of calls to `per_second` (a configured limit, e.g.
    /// `[target] rate_limit`): [`wait_turn`](Self::wait_turn) spaces calls
    /// at least `1 / per_second` apart. Not positive: no cap.
    pub fn set_rate_limit(&self, per_second: f64) {
        if let Ok(mut pace) = self.pace.lock() {
            *pace = (per_second > 0.0 && per_second.is_finite()).then(|| Pace {
                interval: Duration::from_secs_f64(1.0 / per_second),
                next: tokio::time::Instant::now(),
            });
        }
    }

    /// Waits until a `Retry-After` the server gave has passed, then for the
    /// call's slot under the configured rate cap. Every call waits here
    /// first, so the server is never called sooner than it asked, nor
    /// faster than configured, whoever calls.
    pub async fn wait_turn(&self) {
        loop {
            let at = self.not_before.lock().ok().and_then(|at| *at);
            match at {
                Some(at) if tokio::time::Instant::now() < at => {
                    tokio::time::sleep_until(at).await;
                }
                _ => break,
            }
        }
        let slot = self.pace.lock().ok().and_then(|mut pace| {
            let pace = pace.as_mut()?;
            let at = pace.next.max(tokio::time::Instant::now());
            pace.next = at + pace.interval;
            Some(at)
        });
        if let Some(at) = slot {
            tokio::time::sleep_until(at).await;
        }
    }

    /// The instant before which no call may be sent, if one is pending.
    pub fn not_before(&self) -> Option<tokio::time::Instant> {
        let at = self.not_before.lock().ok().and_then(|at| *at)?;
        (at > tokio::time::Instant::now()).then_some(at)
    }

    /// Records one exchange: the gate, the latency window, the observer.
    pub fn record(&self, elapsed: Duration, verdict: Verdict) {
        let now = tokio::time::Instant::now();
        if let Some(metrics) = &self.metrics {
            match verdict {
                Verdict::Answered => {
                    metrics.answered.inc();
                    metrics.seconds.observe(elapsed.as_secs_f64());
                }
                Verdict::Overloaded { .. } => {
                    metrics.overloaded.inc();
                }
                Verdict::TimedOut => {
                    metrics.timed_out.inc();
                }
                Verdict::Unreachable => {
                    metrics.unreachable.inc();
                }
            }
        }
        match verdict {
            Verdict::Answered => {
                if let Ok(mut window) = self.latencies.lock() {
                    if window.len() >= LATENCY_SAMPLES {
                        window.pop_front();
                    }
                    window.push_back((now, elapsed));
                }
            }
            Verdict::Overloaded { retry_after } => {
                self.overloaded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(delay) = retry_after {
                    if delay > MAX_RETRY_AFTER {
                        tracing::warn!(asked = ?delay, honoured = ?MAX_RETRY_AFTER, "the server asked for a longer Retry-After than handover honours");
                    }
                    let at = now + delay.min(MAX_RETRY_AFTER);
                    if let Ok(mut not_before) = self.not_before.lock()
                        && not_before.is_none_or(|current| current < at)
                    {
                        *not_before = Some(at);
                    }
                }
            }
            Verdict::TimedOut | Verdict::Unreachable => {}
        }
        if let Some(observer) = self.observer.get() {
            observer.observe(elapsed, verdict);
        }
    }

    /// Latency percentiles of the calls answered in the last 30 seconds.
    pub fn latency(&self) -> LatencySummary {
        let now = tokio::time::Instant::now();
        let mut samples: Vec<Duration> = match self.latencies.lock() {
            Ok(window) => window
                .iter()
                .filter(|(at, _)| now.saturating_duration_since(*at) <= LATENCY_MAX_AGE)
                .map(|(_, elapsed)| *elapsed)
                .collect(),
            Err(_) => return LatencySummary::default(),
        };
        if samples.is_empty() {
            return LatencySummary::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        LatencySummary {
            samples: samples.len(),
            p50: at(0.5),
            p99: at(0.99),
        }
    }

    /// Answers so far that said the server is overloaded.
    pub fn overloaded_total(&self) -> u64 {
        self.overloaded.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP date.
pub fn parse_retry_after(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let value = http::HeaderValue::from_static("3");
        assert_eq!(parse_retry_after(&value), Some(Duration::from_secs(3)));
        let past = http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let parsed = parse_retry_after(&http::HeaderValue::from_str(&future).unwrap()).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static("soon")),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_cap_spaces_calls_and_retry_after_still_comes_first() {
        let feedback = Feedback::default();
        feedback.set_rate_limit(10.0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            feedback.wait_turn().await;
        }
        // Five calls at 10/s: the first at once, the fifth 400 ms later.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        feedback.record(
            Duration::from_millis(1),
            Verdict::Overloaded {
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        let asked = tokio::time::Instant::now();
        feedback.wait_turn().await;
        assert!(asked.elapsed() >= Duration::from_secs(2));
        feedback.set_rate_limit(0.0);
        let uncapped = tokio::time::Instant::now();
        for _ in 0..100 {
            feedback.wait_turn().await;
        }
        assert_eq!(uncapped.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn no_call_passes_the_gate_before_retry_after() {
        let feedback = Feedback::default();
        feedback.record(
            Duration::from_millis(5),
            Verdict::Overloaded {
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        // A shorter one later does not shorten the wait.
        feedback.record(
            Duration::from_millis(5),
            Verdict::Overloaded {
                retry_after: Some(Duration::from_secs(1)),
            },
        );
        let before = tokio::time::Instant::now();
        feedback.wait_turn().await;
        assert_eq!(before.elapsed(), Duration::from_secs(2));
        assert_eq!(feedback.not_before(), None);
        assert_eq!(feedback.overloaded_total(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_percentiles_cover_recent_answers_only() {
        let feedback = Feedback::default();
        for ms in 1..=100 {
            feedback.record(Duration::from_millis(ms), Verdict::Answered);
        }
        let summary = feedback.latency();
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.p50, Duration::from_millis(50));
        assert_eq!(summary.p99, Duration::from_millis(99));
        tokio::time::advance(LATENCY_MAX_AGE + Duration::from_secs(1)).await;
        assert_eq!(feedback.latency().samples, 0);
    }
}
