//! HTTP clients to the two upstream servers, shared by the forwarding path
//! and the sync, backfill and verify machinery: pooled keep-alive
//! connections, `http` or `https` (rustls, SNI from the URL host, system
//! roots or a CA file), HTTP/1.1 by default and HTTP/2 when configured
//! (ALPN over TLS, prior knowledge over plain TCP), a connect timeout, and a
//! gauge of open connections per upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
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
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle upstream connections are closed after this long.
pub(crate) const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle upstream connections kept per upstream host.
pub(crate) const DEFAULT_POOL_MAX_IDLE: usize = 256;

/// Connection settings of the upstream clients (both servers).
#[derive(Debug, Clone)]
pub struct Config {
    /// Time to connect (TCP and TLS) to an upstream.
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per host.
    pub pool_max_idle: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
        }
    }
}

/// One upstream server: its base URL and a pooled client.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Source or target.
    pub side: Side,
    /// Base URL (scheme, authority, base path).
    pub url: BaseUrl,
    /// Whether requests go out as HTTP/2.
    pub http2: bool,
    client: Client<Connector, ProxyBody>,
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
    /// or the system roots; HTTP/2 only when `http2`).
    pub fn new(
        side: Side,
        url: &BaseUrl,
        ca_file: Option<&std::path::Path>,
        http2: bool,
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
        let https = if http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let (open, total) = metrics.upstream.handles(side);
        let connector = Counting {
            inner: https,
            open,
            total,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(http2)
            .build(connector);
        Ok(Self {
            side,
            url: url.clone(),
            http2,
            client,
        })
    }

    /// The HTTP version requests to this upstream must carry.
    pub fn version(&self) -> http::Version {
        if self.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
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
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(Error::Timeout { upstream, timeout }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => {
                let message = crate::telemetry::error_chain(&err);
                if err.is_connect() {
                    Err(Error::Connect { upstream, message })
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

/// Wraps a connector so every connection it makes is counted while open.
#[derive(Debug, Clone)]
pub(crate) struct Counting<C> {
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
