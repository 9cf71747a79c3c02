//! Forwarding one downstream request to the primary and its answer back:
//! framing check, header hygiene, `X-Forwarded-*`, body streaming (or
//! buffering for inspected routes), the upstream deadline, and the error
//! response when the primary fails.
//!
//! The path and query are forwarded unchanged (DESIGN.md §7: the issuer URL
//! appears in tokens and discovery documents, so public paths must equal the
//! source's). Only the scheme and authority change to the primary's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::framing::Verdict;
use super::headers::{self, Hop};
use super::hook::{Exchange, Hook, Rewriter, Ticket, Unseen};
use super::{ConnInfo, InFlight};
use crate::error::{Fault, Kind, ProxyError};
use crate::health::Health;
use crate::http::body::ProxyBody;
use crate::metrics::{MethodClass, Metrics};
use crate::upstream::PrimarySelector;
use crate::upstream::{self};

/// `X-Request-Id`: kept when the client sent one, generated otherwise, and
/// passed to the primary so its logs and ours line up.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest request body buffered for inspection. Connect2id caps `/clients`
/// bodies at 250,000 characters and token requests at 50,000, so 1 MiB
/// covers every trigger with room to spare.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Time an upstream has to start answering a forwarded request.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a client has to send a whole buffered (trigger) request body,
/// counted from the end of its head. Trigger bodies are forms and JSON
/// documents of a few KiB; even the 1 MiB cap arrives well within this on
/// a 1 Mbit/s link, while a client trickling a byte a second is cut off.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Forwarding settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keep client-sent `Issuer` / `Tenant-ID` headers (only behind trusted
    /// infrastructure that sets them itself).
    pub trusted_issuer_header: bool,
    /// Append to client-sent `X-Forwarded-*` (behind a trusted load
    /// balancer) instead of replacing them.
    pub trust_forwarded_headers: bool,
    /// Forward the downstream `Host` instead of the upstream's authority.
    pub preserve_host: bool,
    /// Largest buffered (trigger) request body and inspected response;
    /// larger requests get `413`.
    pub max_body_bytes: usize,
    /// Time for the primary to start answering.
    pub upstream_timeout: Duration,
    /// Time for a client to send a whole buffered request body.
    pub body_read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trusted_issuer_header: false,
            trust_forwarded_headers: false,
            preserve_host: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

/// Forwards requests to the primary.
pub struct Forwarder {
    config: Config,
    primary: Arc<dyn PrimarySelector>,
    hook: Option<Arc<dyn Hook>>,
    rewriter: Option<Arc<dyn Rewriter>>,
    health: Arc<Health>,
    metrics: Metrics,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("config", &self.config)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Forwarder {
    /// A forwarder to whatever `primary` selects, observed by `hook`.
    pub fn new(
        config: Config,
        primary: Arc<dyn PrimarySelector>,
        hook: Option<Arc<dyn Hook>>,
        health: Arc<Health>,
        metrics: Metrics,
    ) -> Self {
        Self {
            config,
            primary,
            hook,
            rewriter: None,
            health,
            metrics,
        }
    }

    /// Adds a request rewriter.
    pub(crate) fn with_rewriter(mut self, rewriter: Arc<dyn Rewriter>) -> Self {
        self.rewriter = Some(rewriter);
        self
    }

    /// Answers one downstream request. Never fails: errors become responses.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        conn: &Arc<ConnInfo>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let in_flight = InFlight::start(conn);
        let class = MethodClass::of(request.method());
        let (request_id, log_id) = request_id(request.headers());
        // A debug span: at the default `info` level it costs nothing per
        // request (formatting its fields was ~4% of the proxy's CPU); the
        // failure lines below carry the request id themselves.
        let method = request.method().clone();
        let span = tracing::debug_span!(
            "request",
            method = %method,
            route_class = class.as_str(),
            request_id = log_id.as_str(),
            status = tracing::field::Empty,
            fault = tracing::field::Empty,
        );
        // Instrumenting moves the request's future into a wrapper and
        // enters the span at every poll; with the span disabled (the
        // default level) there is nothing to enter.
        let result = if span.is_disabled() {
            self.forward(request, conn, request_id).await
        } else {
            tracing::Instrument::instrument(self.forward(request, conn, request_id), span.clone())
                .await
        };
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                span.record("fault", error.fault.as_str());
                self.metrics
                    .proxy
                    .record_error(error.fault.as_str(), error.kind_label());
                let _entered = span.enter();
                let id = log_id.as_str();
                match error.fault {
                    Fault::Primary | Fault::Internal => {
                        tracing::warn!(%method, request_id = id, error = %error, "request failed");
                    }
                    Fault::Downstream => {
                        tracing::info!(%method, request_id = id, error = %error, "request refused");
                    }
                }
                error_response(&error)
            }
        };
        span.record("status", response.status().as_u16());
        self.metrics
            .proxy
            .record_request(class, response.status(), started.elapsed());
        let (parts, body) = response.into_parts();
        let body = match in_flight.into_guard() {
            Some(guard) => body.with_guard(guard),
            None => body,
        };
        Response::from_parts(parts, body)
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
        request_id: HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if let Some(Verdict::Ambiguous(reason)) = conn.verdicts.next() {
            return Err(ProxyError::downstream(Kind::AmbiguousFraming(reason)));
        }
        let (parts, body) = request.into_parts();
        check_host(&parts)?;
        let route = self.hook.as_ref().and_then(|hook| {
            hook.route(&parts.method, parts.uri.path())
                .map(|route| (hook, route))
        });
        match route {
            None => self.pass_through(parts, body, conn, request_id).await,
            // The inspected path keeps a ticket, the hook's view, a replay
            // copy, buffered bodies and possibly a second exchange: several
            // KiB of future. Boxed, so that pass-through requests (almost
            // all of them) neither carry nor move it (benches/README.md §7,
            // lever 3).
            Some((hook, route)) => {
                Box::pin(self.inspect(hook.as_ref(), route, parts, body, conn, request_id)).await
            }
        }
    }

    /// Everything that is not inspected: both bodies stream.
    async fn pass_through(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        conn: &ConnInfo,
        request_id: HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let path_and_query = path_and_query(&parts);
        self.clean_request_headers(&mut parts, conn, request_id);
        let primary = self.primary.primary();
        self.aim(&mut parts, &primary, path_and_query).await?;
        let response = self
            .send(
                &primary,
                Request::from_parts(parts, ProxyBody::stream(body)),
            )
            .await?;
        let (mut response_parts, response_body) = response.into_parts();
        headers::strip_hop_by_hop(&mut response_parts.headers);
        Ok(Response::from_parts(
            response_parts,
            ProxyBody::stream(response_body),
        ))
    }

    /// Points `parts` at `upstream` (`path_and_query` unchanged) and lets
    /// the rewriter adapt it to that side.
    async fn aim(
        &self,
        parts: &mut http::request::Parts,
        upstream: &upstream::Upstream,
        path_and_query: http::uri::PathAndQuery,
    ) -> Result<(), ProxyError> {
        parts.uri = upstream.url.uri(path_and_query).map_err(|err| {
            ProxyError::downstream(Kind::BadRequest(format!("unforwardable path: {err}")))
        })?;
        if let Some(rewriter) = &self.rewriter
            && let Some(lookup) =
                rewriter.rewrite(parts.uri.path(), &mut parts.headers, upstream.side)
        {
            lookup.await;
        }
        Ok(())
    }

    /// Sends to `upstream` within the upstream deadline, noting in the
    /// health state whether it answered.
    async fn send(
        &self,
        upstream: &upstream::Upstream,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match upstream.send(request, self.config.upstream_timeout).await {
            Ok(response) => {
                self.health.primary_answered();
                Ok(response)
            }
            Err(err) => Err(self.upstream_error(err)),
        }
    }

    /// A request the hook inspects: buffered both ways, held or refused
    /// by the hook before it goes, reported to it after the answer.
    async fn inspect(
        &self,
        hook: &dyn Hook,
        route: super::RouteId,
        mut parts: http::request::Parts,
        body: Incoming,
        conn: &ConnInfo,
        request_id: HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let path_and_query = path_and_query(&parts);
        // The hook sees the client's own headers (client authentication
        // lives in `Authorization`).
        let original_headers = parts.headers.clone();
        self.clean_request_headers(&mut parts, conn, request_id);
        let read = crate::http::read_body(body, self.config.max_body_bytes);
        let request_body = tokio::time::timeout(self.config.body_read_timeout, read)
            .await
            .map_err(|_| ProxyError::downstream(Kind::BodyTimeout(self.config.body_read_timeout)))?
            .map_err(|err| match err {
                crate::http::ReadBodyError::TooLarge { limit } => {
                    ProxyError::downstream(Kind::BodyTooLarge { limit })
                }
                crate::http::ReadBodyError::Io(err) => {
                    ProxyError::downstream(Kind::DownstreamBody(err.to_string()))
                }
            })?;
        let mut view = parts.clone_without_extensions();
        view.headers = original_headers;
        let mut ticket = hook.begin(route, &view, &request_body).await?;
        // A buffered body has a known length now; a chunked framing header
        // from downstream no longer applies.
        parts.headers.remove(header::CONTENT_LENGTH);

        // The primary is chosen after the hook returned: a held write is
        // released to whichever server is primary by then.
        let primary = self.primary.primary();
        if let Err(err) = self.aim(&mut parts, &primary, path_and_query.clone()).await {
            ticket.abandon();
            return Err(err);
        }
        // Inspected requests may be replayed elsewhere: keep a copy.
        let replay = parts.clone_without_extensions();
        let upstream_request = Request::from_parts(parts, ProxyBody::full(request_body.clone()));
        let response = match self.send(&primary, upstream_request).await {
            Ok(response) => response,
            Err(err) => {
                ticket.abandon();
                return Err(err);
            }
        };
        let (mut response_parts, response_body) = response.into_parts();
        headers::strip_hop_by_hop(&mut response_parts.headers);
        let (mut buffered, mut body) = match self.buffer_response(response_body).await {
            Ok(read) => read,
            Err(err) => {
                // The status is in, so the primary may have made the
                // change: the hook must hear of it even without the body.
                finish(
                    ticket,
                    &view,
                    &request_body,
                    &response_parts,
                    None,
                    primary.side,
                )
                .await;
                return Err(err);
            }
        };
        let mut answered_by = primary.side;
        if let Some(previous) = ticket.redirect(response_parts.status, buffered.as_ref()) {
            // State that lives only on the previous primary: ask it.
            let mut parts = replay;
            if self
                .aim(&mut parts, &previous, path_and_query)
                .await
                .is_ok()
            {
                let request = Request::from_parts(parts, ProxyBody::full(request_body.clone()));
                match previous.send(request, self.config.upstream_timeout).await {
                    Ok(response) => {
                        let (mut parts, body_stream) = response.into_parts();
                        headers::strip_hop_by_hop(&mut parts.headers);
                        let (replayed, replayed_body) = match self
                            .buffer_response(body_stream)
                            .await
                        {
                            Ok(read) => read,
                            Err(err) => {
                                finish(ticket, &view, &request_body, &parts, None, previous.side)
                                    .await;
                                return Err(err);
                            }
                        };
                        response_parts = parts;
                        buffered = replayed;
                        body = replayed_body;
                        answered_by = previous.side;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "the previous primary could not take a replayed request; keeping the primary's answer");
                    }
                }
            }
        }
        finish(
            ticket,
            &view,
            &request_body,
            &response_parts,
            Some(buffered.as_ref()),
            answered_by,
        )
        .await;
        Ok(Response::from_parts(response_parts, body))
    }

    fn clean_request_headers(
        &self,
        parts: &mut http::request::Parts,
        conn: &ConnInfo,
        request_id: HeaderValue,
    ) {
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let headers = &mut parts.headers;
        let present = headers::Present::scan(headers);
        headers::strip_hop_by_hop_present(headers, present);
        if present.issuer {
            headers::scrub_issuer(headers, self.config.trusted_issuer_header);
        }
        headers::set_forwarded_present(
            headers,
            Hop {
                client_ip: &conn.client_ip,
                proto: if conn.tls { "https" } else { "http" },
                host: host.as_ref(),
            },
            self.config.trust_forwarded_headers,
            present.forwarded,
        );
        // The 100-continue handshake already happened downstream.
        if present.expect {
            headers.remove(header::EXPECT);
        }
        headers.insert(X_REQUEST_ID, request_id);
        if self.config.preserve_host {
            if let Some(host) = host {
                headers.insert(header::HOST, host);
            }
        } else {
            // The upstream client sets Host from the upstream URI.
            headers.remove(header::HOST);
        }
    }

    /// Reads an inspected response up to the cap. Past the cap the hook gets
    /// no body and the client still gets everything, streamed.
    async fn buffer_response(
        &self,
        mut body: Incoming,
    ) -> Result<(Option<Bytes>, ProxyBody), ProxyError> {
        let limit = self.config.max_body_bytes;
        let mut buffer = BytesMut::new();
        let deadline = tokio::time::Instant::now() + self.config.upstream_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ProxyError::primary(Kind::Timeout(
                        self.config.upstream_timeout,
                    )));
                }
                Ok(None) => {
                    let bytes = buffer.freeze();
                    return Ok((Some(bytes.clone()), ProxyBody::full(bytes)));
                }
                Ok(Some(Err(err))) => {
                    return Err(ProxyError::primary(Kind::Upstream(format!(
                        "response body: {err}"
                    ))));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers on an inspected response are dropped: these are JSON
            // management answers, which carry none.
            if let Ok(data) = frame.into_data() {
                buffer.extend_from_slice(&data);
                if buffer.len() > limit {
                    tracing::warn!(
                        limit,
                        "inspected response larger than the cap; streaming it uninspected"
                    );
                    return Ok((None, ProxyBody::prefixed(buffer.freeze(), body)));
                }
            }
        }
    }

    fn upstream_error(&self, err: upstream::Error) -> ProxyError {
        match err {
            upstream::Error::Connect { message, .. } => {
                self.health.primary_unreachable();
                ProxyError::primary(Kind::Connect(message))
            }
            upstream::Error::Timeout { timeout, .. } => ProxyError::primary(Kind::Timeout(timeout)),
            upstream::Error::Exchange { message, .. } => {
                ProxyError::primary(Kind::Upstream(message))
            }
            upstream::Error::Build { message, .. } => {
                ProxyError::downstream(Kind::BadRequest(message))
            }
            // The request body we were streaming is the downstream's: a
            // malformed chunk or a client gone mid-body is its fault.
            upstream::Error::RequestBody { message, .. } => {
                ProxyError::downstream(Kind::DownstreamBody(message))
            }
        }
    }
}

/// The path and query a request is forwarded with, unchanged.
fn path_and_query(parts: &http::request::Parts) -> http::uri::PathAndQuery {
    parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
}

/// Hands the exchange to the hook. `response_body` is what was buffered:
/// `Some(None)` when the body was larger than the cap, `None` when it broke
/// off.
async fn finish(
    ticket: Box<dyn Ticket>,
    request: &http::request::Parts,
    request_body: &Bytes,
    response: &http::response::Parts,
    response_body: Option<Option<&Bytes>>,
    answered_by: crate::model::Side,
) {
    let (response_body, response_unseen) = match response_body {
        Some(Some(body)) => (Some(body), None),
        Some(None) => (None, Some(Unseen::TooLarge)),
        None => (None, Some(Unseen::Cut)),
    };
    let exchange = Exchange {
        method: &request.method,
        path: request.uri.path(),
        query: request.uri.query(),
        request_headers: &request.headers,
        request_body,
        status: response.status,
        response_headers: &response.headers,
        response_body,
        response_unseen,
        answered_by,
    };
    ticket.finish(exchange).await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, and any request with
/// more than one, is refused with 400 (an HTTP/1.0 request may lack
/// `Host`). HTTP/2 carries the authority in `:authority` (RFC 9113
/// §8.3.1): a `Host` that names another authority is refused too, since
/// the proxy and the upstream could otherwise read different hosts.
fn check_host(parts: &http::request::Parts) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::downstream(Kind::BadRequest(
            "more than one Host header".into(),
        ))),
        (None, _) if parts.version == http::Version::HTTP_11 => Err(ProxyError::downstream(
            Kind::BadRequest("no Host header in an HTTP/1.1 request".into()),
        )),
        (Some(host), None) if parts.version == http::Version::HTTP_2 => {
            match parts.uri.authority() {
                Some(authority)
                    if !host
                        .as_bytes()
                        .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
                {
                    Err(ProxyError::downstream(Kind::BadRequest(
                        "Host differs from :authority".into(),
                    )))
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

trait CloneParts {
    fn clone_without_extensions(&self) -> http::request::Parts;
}

impl CloneParts for http::request::Parts {
    fn clone_without_extensions(&self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        parts
    }
}

fn request_id(headers: &http::HeaderMap) -> (HeaderValue, LogId) {
    if let Some(id) = headers.get(X_REQUEST_ID)
        && id.len() <= 128
    {
        return (id.clone(), LogId::Sent(id.clone()));
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 16];
    let random = fastrand::u64(..);
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
    }
    let value = HeaderValue::from_bytes(&id).expect("hex digits are a valid header value");
    (value, LogId::Made(id))
}

/// The request id as the request's log lines show it. A generated id is
/// kept as its digits: cloning the freshly made header value would turn
/// its bytes into shared storage, an allocation per request. A client's
/// id is a slice of the connection's read buffer, already shared.
enum LogId {
    Made([u8; 16]),
    Sent(HeaderValue),
}

impl LogId {
    fn as_str(&self) -> &str {
        match self {
            Self::Made(digits) => std::str::from_utf8(digits).unwrap_or_default(),
            Self::Sent(value) => value.to_str().unwrap_or_default(),
        }
    }
}

/// The response for a failed request: the mapped status and a generic body.
fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(
        error.public_message().as_bytes(),
    )));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(retry_after) = error.retry_after() {
        let seconds = retry_after.as_secs().max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            headers.insert(header::RETRY_AFTER, value);
        }
    }
    if matches!(
        error.kind,
        Kind::AmbiguousFraming(_) | Kind::BodyTimeout(_) | Kind::DownstreamBody(_)
    ) {
        // RFC 9112 §6.3: close after answering a CL+TE request; after a
        // body that was cut, malformed or too slow the connection's framing
        // is lost as well.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn error_responses_are_generic() {
        let error = ProxyError::primary(Kind::Connect(
            "tcp connect error: 10.0.0.5:8080 refused".into(),
        ));
        let response = error_response(&error);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let error = ProxyError::downstream(Kind::AmbiguousFraming("both"));
        assert_eq!(
            error_response(&error).headers()[header::CONNECTION],
            "close"
        );
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut headers = http::HeaderMap::new();
        let (made, log) = request_id(&headers);
        assert_eq!(made.len(), 16);
        assert_eq!(log.as_str(), made.to_str().unwrap());
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        let (kept, log) = request_id(&headers);
        assert_eq!(kept, "abc");
        assert_eq!(log.as_str(), "abc");
    }
}
