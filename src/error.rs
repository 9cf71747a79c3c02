//! Request-path errors. Every [`ProxyError`] records whose fault it was, and
//! [`ProxyError::status`] is the one place that maps a fault and kind to an
//! HTTP status. The downstream client sees a short generic body; the full
//! error (with the upstream's cause) goes to the log only.
//!
//! Sync and secondary failures are not request-path errors: they never
//! change the downstream response (DESIGN.md §2).

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// Who caused a request to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The downstream client sent something we refuse.
    Downstream,
    /// The primary server could not be reached or misbehaved.
    Primary,
    /// The proxy itself (a bug, or a deliberate refusal such as a full hold
    /// buffer).
    Internal,
}

impl Fault {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downstream => "downstream",
            Self::Primary => "primary",
            Self::Internal => "internal",
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Kind {
    /// The request carried both `Content-Length` and `Transfer-Encoding`, or
    /// conflicting lengths: a request-smuggling shape.
    #[error("ambiguous message framing: {0}")]
    AmbiguousFraming(&'static str),
    /// The request was malformed in a way hyper accepted but we cannot
    /// forward (for example an unencodable URI).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A buffered request body exceeded the configured cap.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap (`proxy.max_body_bytes`).
        limit: usize,
    },
    /// The downstream body stream failed while being read (malformed
    /// chunked encoding, the client went away mid-body).
    #[error("downstream body read failed: {0}")]
    DownstreamBody(String),
    /// A buffered request body did not arrive in time (`proxy.body_read_timeout`).
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    /// No connection to the primary could be established.
    #[error("cannot connect to the primary: {0}")]
    Connect(String),
    /// The primary did not start answering in time.
    #[error("the primary did not answer within {0:?}")]
    Timeout(Duration),
    /// The primary broke the exchange (reset, malformed response).
    #[error("the primary failed the exchange: {0}")]
    Upstream(String),
    /// The proxy refuses the request for now (write hold buffer full, or
    /// shutting down); the client should retry after the given delay.
    #[error("temporarily unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: &'static str,
        /// Suggested `Retry-After`.
        retry_after: Duration,
    },
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A failed downstream request.
#[derive(Debug)]
pub struct ProxyError {
    /// Whose fault it was.
    pub fault: Fault,
    /// What happened.
    pub kind: Kind,
}

impl ProxyError {
    /// A downstream-caused error.
    pub fn downstream(kind: Kind) -> Self {
        Self {
            fault: Fault::Downstream,
            kind,
        }
    }

    /// A primary-caused error.
    pub fn primary(kind: Kind) -> Self {
        Self {
            fault: Fault::Primary,
            kind,
        }
    }

    /// A proxy-caused error.
    pub fn internal(kind: Kind) -> Self {
        Self {
            fault: Fault::Internal,
            kind,
        }
    }

    /// The one mapping from fault and kind to the status the client sees.
    pub fn status(&self) -> StatusCode {
        match (&self.fault, &self.kind) {
            (_, Kind::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            (Fault::Downstream, Kind::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            (Fault::Downstream, Kind::BodyTimeout(_)) => StatusCode::REQUEST_TIMEOUT,
            (Fault::Downstream, _) => StatusCode::BAD_REQUEST,
            (Fault::Primary, Kind::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            (Fault::Primary, _) => StatusCode::BAD_GATEWAY,
            (Fault::Internal, _) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short, generic body: never the cause, which may name internal hosts.
    pub(crate) fn public_message(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad request\n",
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large\n",
            StatusCode::REQUEST_TIMEOUT => "request body too slow\n",
            StatusCode::BAD_GATEWAY => "bad gateway\n",
            StatusCode::GATEWAY_TIMEOUT => "gateway timeout\n",
            StatusCode::SERVICE_UNAVAILABLE => "service unavailable, retry later\n",
            _ => "internal error\n",
        }
    }

    /// The `Retry-After` to send, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::Unavailable { retry_after, .. } => Some(retry_after),
            _ => None,
        }
    }

    /// A low-cardinality metric label for the kind.
    pub(crate) fn kind_label(&self) -> &'static str {
        match self.kind {
            Kind::AmbiguousFraming(_) => "ambiguous_framing",
            Kind::BadRequest(_) => "bad_request",
            Kind::BodyTooLarge { .. } => "body_too_large",
            Kind::DownstreamBody(_) => "downstream_body",
            Kind::BodyTimeout(_) => "body_timeout",
            Kind::Connect(_) => "connect",
            Kind::Timeout(_) => "timeout",
            Kind::Upstream(_) => "upstream",
            Kind::Unavailable { .. } => "unavailable",
            Kind::Internal(_) => "internal",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} fault: {}", self.fault.as_str(), self.kind)
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_from_fault_to_status() {
        let cases = [
            (ProxyError::downstream(Kind::AmbiguousFraming("cl+te")), 400),
            (ProxyError::downstream(Kind::BodyTooLarge { limit: 1 }), 413),
            (
                ProxyError::downstream(Kind::BodyTimeout(Duration::from_secs(1))),
                408,
            ),
            (
                ProxyError::downstream(Kind::DownstreamBody("invalid chunk size".into())),
                400,
            ),
            (ProxyError::primary(Kind::Connect("refused".into())), 502),
            (
                ProxyError::primary(Kind::Timeout(Duration::from_secs(1))),
                504,
            ),
            (ProxyError::primary(Kind::Upstream("reset".into())), 502),
            (
                ProxyError::internal(Kind::Unavailable {
                    reason: "hold buffer full",
                    retry_after: Duration::from_secs(1),
                }),
                503,
            ),
            (ProxyError::internal(Kind::Internal("bug".into())), 500),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert!(!error.public_message().contains("refused"));
        }
    }
}
