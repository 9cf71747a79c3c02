//! The one body type of the forwarding path, both directions: nothing, a
//! buffered chunk, or a hyper stream (optionally after an already-read
//! prefix). An enum rather than a boxed trait object, so streaming a body
//! through costs no allocation per request.
//!
//! A body may carry a [`Guard`]: dropped when the body is finished or
//! abandoned, which is how the proxy knows a response is truly done (for
//! idle accounting and graceful drain).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Told once when a body is done (finished or dropped).
pub(crate) trait Done: Send + Sync {
    /// The body it guarded is done.
    fn done(&self);
}

/// What a body tells when it is done: a shared handle (an `Arc` of the
/// connection's state), so attaching it to a response allocates nothing.
pub(crate) struct Guard(std::sync::Arc<dyn Done>);

impl Guard {
    /// A guard that tells `to` when dropped.
    pub(crate) fn new(to: std::sync::Arc<dyn Done>) -> Self {
        Self(to)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// A forwarding-path body.
pub struct ProxyBody {
    kind: Kind,
    _guard: Option<Guard>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Stream { .. } => "stream",
        };
        f.debug_struct("ProxyBody").field("kind", &kind).finish()
    }
}

impl ProxyBody {
    /// No body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Empty,
            _guard: None,
        }
    }

    /// A buffered body.
    pub fn full(bytes: Bytes) -> Self {
        let kind = if bytes.is_empty() {
            Kind::Empty
        } else {
            Kind::Full(Some(bytes))
        };
        Self { kind, _guard: None }
    }

    /// A streamed body.
    pub fn stream(body: Incoming) -> Self {
        Self {
            kind: Kind::Stream {
                prefix: None,
                rest: body,
            },
            _guard: None,
        }
    }

    /// A streamed body whose first bytes were already read.
    pub(crate) fn prefixed(prefix: Bytes, rest: Incoming) -> Self {
        Self {
            kind: Kind::Stream {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
            _guard: None,
        }
    }

    /// Attaches a guard dropped when the body is done.
    pub(crate) fn with_guard(mut self, guard: Guard) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}
