//! Small HTTP plumbing shared by the admin API, the emulators and the
//! management-API clients: one boxed body type, JSON/text response helpers,
//! a size-capped body reader, and a plain (h1 + h2c) accept loop with
//! graceful shutdown.
//!
//! The proxy's downstream listener does not use [`serve`]: it needs TLS, the
//! framing sniffer and idle accounting, and lives in `proxy.rs`.

pub mod body;
pub mod form;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The error type carried by [`Body`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body used by every in-process HTTP server except the proxy's
/// forwarding path.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body fed from a channel: the returned sender pushes chunks, and dropping
/// it ends the body. Used for streamed exports (millions of records) so that
/// memory stays flat.
pub fn channel_body(buffer: usize) -> (http_body_util::channel::Sender<Bytes, BoxError>, Body) {
    let (tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(buffer);
    (tx, body.boxed_unsync())
}

/// A JSON response with `Cache-Control: no-store` (every JSON document here
/// may carry secrets or state that must not be cached).
pub fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response<Body> {
    // Serialising our own in-memory types cannot fail unless a map key is
    // not a string; answer 500 rather than panic.
    let Ok(bytes) = serde_json::to_vec(value) else {
        return text_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
    };
    json_body_response(status, full(bytes))
}

/// A JSON response around an already serialised or streamed `body`, with
/// the same headers as [`json_response`].
pub fn json_body_response(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A plain-text response.
pub fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An empty response with the given status.
pub fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadBodyError {
    /// The body is larger than the limit the caller set.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The connection failed while the body was being read.
    #[error("failed to read body: {0}")]
    Io(BoxError),
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ReadBodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            if err.is::<http_body_util::LengthLimitError>() {
                Err(ReadBodyError::TooLarge { limit })
            } else {
                Err(ReadBodyError::Io(err))
            }
        }
    }
}

/// How long [`serve`] waits for in-flight connections after `shutdown` fires.
pub(crate) const SERVE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on a [`serve_limited`] listener's connections.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Most connections open at once; past it a connection gets a 503 and
    /// is closed (`None`: no limit).
    pub max_connections: Option<usize>,
    /// A connection whose last request started this long ago (or that
    /// sent none since its accept) is closed; a request still in flight
    /// finishes first (`None`: kept open).
    pub idle_timeout: Option<Duration>,
    /// Counts refused connections.
    pub refused: Option<prometheus_client::metrics::counter::Counter>,
}

/// Serves `handler` on `listener` (HTTP/1.1 and h2c prior knowledge) until
/// `shutdown` is cancelled, then lets in-flight requests finish for up to
/// [`SERVE_DRAIN_TIMEOUT`].
///
/// A handler that returns `Err` makes hyper drop the connection without an
/// answer; the emulators use that to play a server that is down.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(http::Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    serve_limited(listener, handler, shutdown, Limits::default()).await;
}

/// The next connection on `listener` (`what` names it in the log), or
/// `None` once `stop` is cancelled. An accept error is logged and retried
/// after a short pause: they are usually EMFILE, which a tight loop would
/// only repeat.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &'static str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(err) => {
                    tracing::warn!(error = %err, "failed to accept {what}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// [`serve`] with bounds on the connections (the admin API's).
pub async fn serve_limited<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
    limits: Limits,
) where
    H: Fn(http::Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let tracker = tokio_util::task::TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    while let Some((stream, peer)) = accept(&listener, &shutdown, "connection").await {
        let slot = OpenSlot::take(&open);
        if limits.max_connections.is_some_and(|max| slot.before >= max) {
            if let Some(refused) = &limits.refused {
                refused.inc();
            }
            let _ = stream.try_write(REFUSED_RESPONSE);
            tracing::debug!(peer = %peer, "refused a connection: too many open");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let epoch = std::time::Instant::now();
        let last_request_ms = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&last_request_ms);
        let service = hyper::service::service_fn(move |request| {
            seen.store(elapsed_ms(epoch), Ordering::Relaxed);
            handler(request, peer)
        });
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        let idle_timeout = limits.idle_timeout;
        tracker.spawn(async move {
            let _slot = slot;
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                let idle_at = idle_timeout.map(|idle| {
                    epoch + Duration::from_millis(last_request_ms.load(Ordering::Relaxed)) + idle
                });
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(err) = result {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                        return;
                    }
                    () = shutdown.cancelled(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    () = sleep_until_or_never(idle_at), if !closing => {
                        // A request may have started while this slept.
                        let last = Duration::from_millis(last_request_ms.load(Ordering::Relaxed));
                        if idle_timeout.is_some_and(|idle| epoch.elapsed() >= last + idle) {
                            // Anything in flight finishes; then it closes.
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SERVE_DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the drain timeout");
    }
}

fn elapsed_ms(epoch: std::time::Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_until_or_never(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One counted open connection of [`serve_limited`].
struct OpenSlot {
    open: Arc<AtomicUsize>,
    /// Connections open before this one.
    before: usize,
}

impl OpenSlot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        Self {
            before: open.fetch_add(1, Ordering::AcqRel),
            open: Arc::clone(open),
        }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Written to a connection past the limit, without reading its request.
const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\nretry-after: 1\r\nconnection: close\r\n\r\nservice unavailable, retry later\n";
