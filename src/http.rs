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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "failed to accept connection");
                    // Back off briefly: accept errors are usually EMFILE.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request| handler(request, peer));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SERVE_DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the drain timeout");
    }
}
