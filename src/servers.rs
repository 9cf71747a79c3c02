//! The two servers, and which one is primary right now.
//!
//! [`Servers`] holds both sides' upstream clients and management-API
//! clients (one module per kind: [`connect2id`], [`authlete`]). The source is
//! primary until cutover, the target after; the forwarding path, the sync
//! workers and the admin API all read it here, so a flip is one atomic store
//! seen by everyone. The clients write with the import semantics that make a
//! record on the secondary identical to the primary's (same identifiers,
//! secrets and token material), never a replay of the request that minted
//! it; the Connect2id client also reads the primary (hence "servers", not
//! "target").

pub mod authlete;
pub mod connect2id;
pub mod export;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};

use crate::http::body::ProxyBody;
use crate::telemetry::redact;

use self::authlete::Authlete;
use self::connect2id::Connect2id;
use crate::model::Side;
use crate::upstream::PrimarySelector;
use crate::upstream::Upstream;
use crate::upstream::Verdict;

/// Both servers, and which one is primary.
#[derive(Debug)]
pub struct Servers {
    source: Arc<Upstream>,
    target: Arc<Upstream>,
    source_api: Connect2id,
    target_api: Connect2id,
    target_is_primary: AtomicBool,
    /// When the primary last flipped.
    flipped_at: std::sync::Mutex<Option<std::time::SystemTime>>,
    /// The Authlete service, when the target is one (the target upstream is
    /// then the new authorization server, and `target_api` is not used).
    authlete: Option<Arc<Authlete>>,
}

impl Servers {
    /// Both servers, with `primary` serving traffic.
    pub fn new(
        source: Arc<Upstream>,
        target: Arc<Upstream>,
        source_api: Connect2id,
        target_api: Connect2id,
        primary: Side,
    ) -> Self {
        Self {
            source,
            target,
            source_api,
            target_api,
            target_is_primary: AtomicBool::new(primary == Side::Target),
            flipped_at: std::sync::Mutex::new(None),
            authlete: None,
        }
    }

    /// Makes the target an Authlete service.
    pub(crate) fn with_authlete(mut self, authlete: Arc<Authlete>) -> Self {
        self.authlete = Some(authlete);
        self
    }

    /// The Authlete service, when the target is one.
    pub fn authlete(&self) -> Option<&Arc<Authlete>> {
        self.authlete.as_ref()
    }

    /// Whether changes flow to an Authlete service right now: only while
    /// the source is primary (nothing syncs back from Authlete).
    pub(crate) fn syncs_to_authlete(&self) -> bool {
        self.authlete.is_some() && self.primary_side() == Side::Source
    }

    /// The side serving traffic.
    pub(crate) fn primary_side(&self) -> Side {
        if self.target_is_primary.load(Ordering::Acquire) {
            Side::Target
        } else {
            Side::Source
        }
    }

    /// Makes `side` the primary.
    pub(crate) fn set_primary(&self, side: Side) {
        self.target_is_primary
            .store(side == Side::Target, Ordering::Release);
    }

    /// Records that the primary just flipped (see [`Servers::previous_within`]).
    pub fn mark_flip(&self) {
        self.mark_flip_at(std::time::SystemTime::now());
    }

    /// Records when the primary last flipped (a restart reads it from the
    /// persisted phase).
    pub fn mark_flip_at(&self, at: std::time::SystemTime) {
        if let Ok(mut flipped) = self.flipped_at.lock() {
            *flipped = Some(at);
        }
    }

    /// When the primary last flipped, if it did since the process started
    /// or the persisted phase said so.
    pub fn flipped_at(&self) -> Option<std::time::SystemTime> {
        *self.flipped_at.lock().ok()?
    }

    /// The previous primary, if the primary flipped less than `window` ago:
    /// state that lives only there (logins in progress, authorization codes,
    /// identifier access tokens) is still served from it. Wall-clock time,
    /// as the flip instant survives restarts; a clock set back counts as no
    /// time passed.
    pub fn previous_within(&self, window: std::time::Duration) -> Option<Side> {
        let at = self.flipped_at()?;
        let elapsed = at.elapsed().unwrap_or_default();
        (elapsed < window).then(|| self.primary_side().other())
    }

    /// The management APIs of a side.
    pub fn api(&self, side: Side) -> &Connect2id {
        match side {
            Side::Source => &self.source_api,
            Side::Target => &self.target_api,
        }
    }

    /// The primary's management APIs (read current state here).
    pub(crate) fn primary_api(&self) -> &Connect2id {
        self.api(self.primary_side())
    }

    /// The secondary's management APIs (write the state here).
    pub(crate) fn secondary_api(&self) -> &Connect2id {
        self.api(self.primary_side().other())
    }

    /// The upstream handover's own management-API calls to `side` go
    /// through (the Authlete API's, for an Authlete target): its
    /// `Feedback` is how that server answers the sync.
    pub fn management(&self, side: Side) -> &Arc<Upstream> {
        match (&self.authlete, side) {
            (Some(authlete), Side::Target) => authlete.upstream(),
            _ => self.api(side).upstream(),
        }
    }

    /// The upstream of a side.
    pub fn upstream(&self, side: Side) -> &Arc<Upstream> {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

impl PrimarySelector for Servers {
    fn primary(&self) -> Arc<Upstream> {
        Arc::clone(self.upstream(self.primary_side()))
    }
}

/// A management API failure, classified for retry. Every text in it that
/// quotes a server (its error body, a parser's complaint, a transport
/// error) has passed through [`crate::telemetry::redact`]: the variants
/// reach logs, dead letters, the admin API and the CLI as they are.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Worth retrying: unreachable, timed out, 5xx, 429.
    #[error("{0}")]
    Transient(String),
    /// The server answered, but the write needs another record there
    /// first (an authorization whose client has not arrived: lanes deliver
    /// clients and authorizations independently). Retried on the lane's own
    /// backoff; not an outage of the server.
    #[error("{0}")]
    Awaiting(String),
    /// Our token was refused: an operator must fix the config; retried
    /// (the record is not lost) but loud.
    #[error("{server} refused the {api} API token ({status})")]
    Credentials {
        /// Source or target.
        server: Side,
        /// Which management API.
        api: &'static str,
        /// 401 or 403.
        status: u16,
    },
    /// The server refused the request itself; retrying the same request
    /// will not help (dead-letter it).
    #[error("{server} answered {status} to {operation}: {error}")]
    Rejected {
        /// Source or target.
        server: Side,
        /// What we tried.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` and description, redacted and shortened
        /// ([`crate::telemetry::redact::error_body`]).
        error: String,
    },
    /// A record the target cannot hold as it is (a hashed client secret, a
    /// secret outside Authlete's rules); `reason` says why and what to do,
    /// and quotes no secret. Retrying will not help (dead-letter it).
    #[error("{what} cannot be copied to the target: {reason}")]
    Unmigratable {
        /// What (a client, by id).
        what: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The server answered success with a body we cannot parse.
    #[error("{server} answered {operation} with malformed JSON: {message}")]
    Malformed {
        /// Source or target.
        server: Side,
        /// What we tried.
        operation: &'static str,
        /// The parser's complaint.
        message: String,
    },
}

impl ApiError {
    /// A transient failure whose text quotes a server (redacted here).
    pub fn transient_quoting(text: &str) -> Self {
        Self::Transient(redact::shorten(&redact::text(text)))
    }

    /// A body that does not parse: `message` is the parser's complaint,
    /// which may quote the body (redacted here).
    pub fn malformed(server: Side, operation: &'static str, message: &str) -> Self {
        Self::Malformed {
            server,
            operation,
            message: redact::shorten(&redact::text(message)),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Transient(_) | Self::Awaiting(_) | Self::Credentials { .. }
        )
    }
}

/// The one management-API call path of both kinds of server: waits out
/// any `Retry-After` the server gave, sends `request`, reads the answer (at
/// most `limit` bytes, within `timeout`), reports the exchange to the
/// upstream's [`crate::upstream::Feedback`] (latency, overload) and
/// classifies failures for retry: unreachable, timed out, 5xx, 408 and 429
/// are transient; 401 and 403 mean our token for `api` was refused. Any
/// other status is the caller's to interpret. `detail` describes an error
/// body for the log (Authlete's envelope message); it is redacted here.
pub(crate) async fn call(
    upstream: &Upstream,
    api: &'static str,
    request: Request<ProxyBody>,
    timeout: Duration,
    limit: usize,
    detail: fn(&[u8]) -> String,
) -> Result<(StatusCode, Bytes), ApiError> {
    let side = upstream.side;
    let feedback = upstream.feedback();
    feedback.wait_turn().await;
    let started = tokio::time::Instant::now();
    let response = match upstream.send(request, timeout).await {
        Ok(response) => response,
        Err(err) => {
            let verdict = if matches!(err, crate::upstream::Error::Timeout { .. }) {
                Verdict::TimedOut
            } else {
                Verdict::Unreachable
            };
            feedback.record(started.elapsed(), verdict);
            return Err(ApiError::transient_quoting(&err.to_string()));
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(crate::upstream::parse_retry_after);
    let body =
        match tokio::time::timeout(timeout, crate::http::read_body(response.into_body(), limit))
            .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(err)) => {
                feedback.record(started.elapsed(), Verdict::Unreachable);
                return Err(ApiError::transient_quoting(&format!(
                    "{side} answer: {err}"
                )));
            }
            Err(_) => {
                feedback.record(started.elapsed(), Verdict::TimedOut);
                return Err(ApiError::Transient(format!(
                    "{side} answer not read within {timeout:?}"
                )));
            }
        };
    let overloaded =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    feedback.record(
        started.elapsed(),
        if overloaded {
            Verdict::Overloaded { retry_after }
        } else {
            Verdict::Answered
        },
    );
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(ApiError::Credentials {
            server: side,
            api,
            status: status.as_u16(),
        });
    }
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        let detail = redact::shorten(&redact::text(&detail(&body)));
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        return Err(ApiError::Transient(format!(
            "{side} answered {}{detail}",
            status.as_u16()
        )));
    }
    Ok((status, body))
}
