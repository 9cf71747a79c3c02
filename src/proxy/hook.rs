//! The proxy's seam: every trait through which the request path calls out,
//! in the order of a request's life (like pingora's one proxy trait):
//!
//! 1. [`Hook::route`]: for every request, from method and path alone:
//!    inspect this exchange or stream it untouched? (cheap; no I/O)
//! 2. [`Hook::begin`]: an inspected request, buffered, before it is
//!    forwarded: may hold it (a flip in progress), look something up at the
//!    primary, or refuse it. Returns the request's [`Ticket`].
//! 3. `upstream::PrimarySelector::primary`: which server gets it.
//! 4. [`Rewriter::rewrite`]: adjust the headers for that server
//!    (management credentials follow the primary; a lookup only for the
//!    rare request that needs one).
//! 5. [`Ticket::redirect`]: with the primary's answer: replay at another
//!    server instead (state that lives only on the previous primary).
//! 6. [`Ticket::finish`] with the whole [`Exchange`] (or
//!    [`Ticket::abandon`] when no exchange happened); the downstream
//!    response is released when `finish` returns, which is how "the
//!    response waits for the journal" is enforced.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::error::ProxyError;
use crate::model::Side;
use crate::upstream::Upstream;

/// A boxed future, for the object-safe hook traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A route the hook asked to inspect. Opaque to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub u16);

/// Why the hook did not get the primary's response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unseen {
    /// Larger than the inspection cap (`proxy.max_body_bytes`); the client
    /// got it whole, streamed.
    TooLarge,
    /// The body broke off or timed out after the status arrived; the
    /// client's answer failed, but the primary may have made the change.
    Cut,
}

impl Unseen {
    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Cut => "cut",
        }
    }
}

/// A completed exchange with the primary, as the hook sees it.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request path (unchanged from downstream).
    pub path: &'a str,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// The request headers as the downstream client sent them (before
    /// hygiene: client authentication lives in `Authorization`).
    pub request_headers: &'a HeaderMap,
    /// The buffered request body.
    pub request_body: &'a Bytes,
    /// The primary's status.
    pub status: StatusCode,
    /// The primary's response headers.
    pub response_headers: &'a HeaderMap,
    /// The primary's response body, or `None` when the hook cannot see it
    /// (`response_unseen` says why).
    pub response_body: Option<&'a Bytes>,
    /// Why `response_body` is `None`.
    pub response_unseen: Option<Unseen>,
    /// Which upstream answered (the primary, or the previous primary when
    /// the ticket redirected the request there).
    pub answered_by: Side,
}

/// Observes (and may hold or refuse) inspected exchanges.
pub trait Hook: Send + Sync + 'static {
    /// Whether a request must be buffered and inspected. Called for every
    /// request: keep it cheap.
    fn route(&self, method: &Method, path: &str) -> Option<RouteId>;

    /// Called with the buffered request before it is forwarded. An error
    /// refuses the request with that error's status; the request is then not
    /// forwarded at all.
    fn begin<'a>(
        &'a self,
        route: RouteId,
        request: &'a http::request::Parts,
        body: &'a Bytes,
    ) -> BoxFuture<'a, Result<Box<dyn Ticket>, ProxyError>>;
}

/// The hook's state for one inspected request.
pub trait Ticket: Send {
    /// Called with the primary's answer before `finish`: `Some(upstream)`
    /// replays the request there instead (state that lives only on the
    /// previous primary right after a flip). The default keeps the answer.
    fn redirect(&mut self, status: StatusCode, body: Option<&Bytes>) -> Option<Arc<Upstream>> {
        let _ = (status, body);
        None
    }

    /// Called with the completed exchange (whatever the primary's status,
    /// and also when the response body broke off after the status: the
    /// change may have happened); the downstream response is released when
    /// this returns.
    fn finish<'a>(self: Box<Self>, exchange: Exchange<'a>) -> BoxFuture<'a, ()>;

    /// Called instead of `finish` when no exchange happened (the primary
    /// was unreachable).
    fn abandon(self: Box<Self>) {}
}

/// Adjusts a request for the upstream that will receive it (management
/// credentials follow the primary after a flip).
pub trait Rewriter: Send + Sync + 'static {
    /// Rewrites `headers` of a request to `path` bound for `to`. What can be
    /// decided from memory is done before it returns `None`, so the common
    /// request costs no allocation and no I/O; a rewrite that must look
    /// something up (a self-managing client's token in the fleet's shared
    /// map) returns the rest as a future, which the proxy awaits before
    /// forwarding. That future never fails the request: what it cannot
    /// find, it leaves as it was.
    fn rewrite<'a>(
        &'a self,
        path: &'a str,
        headers: &'a mut HeaderMap,
        to: Side,
    ) -> Option<BoxFuture<'a, ()>>;
}
