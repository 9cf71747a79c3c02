//! The proxy's [`Hook`]: turns forwarded trigger exchanges into journaled
//! changes and hands them to the sync workers.
//!
//! For each trigger ([`crate::triggers`]):
//!
//! 1. before forwarding, resolve what the exchange will destroy
//!    (`/token/revoke`: the token's subject and client, read from a JWT or
//!    inspected at the primary);
//! 2. after the primary answered, extract the changed keys, append them to
//!    the journal and wait until they are durable; only then is the
//!    downstream response released;
//! 3. give them to the sync workers.
//!
//! Keys an exchange merely *used* (an SSO login or a read moved a
//! session's last-used time) are journaled like changes but coalesced: at
//! most once per key per [`USE_COALESCING`].
//!
//! A journal that cannot be written never fails the client's request: the
//! primary already did the work. Readiness turns false (the operator is
//! paged), the changes are synced from memory right away (best effort) and
//! kept for the next successful append, which journals them again.
//!
//! During a flip, trigger requests wait at the cutover [`Gate`] before
//! being forwarded. Right after a flip (for `cutover.fallback_window`, or
//! the longest access-token lifetime seen in token responses if longer),
//! requests whose state lives only on the previous primary (a login in
//! progress, an authorization code, an identifier access token) are
//! replayed there when the new primary does not know it, and whatever they
//! change is synced from the previous primary *before* the answer is
//! released (bounded by [`FALLBACK_SETTLE_LIMIT`]): users in the middle of
//! a login at the moment of the flip do not see an error, and the tokens a
//! relying party gets for a code minted before the flip work at the new
//! primary at once (its very next refresh goes there). In `completed` the
//! hook steps aside entirely: a plain pass-through.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::cutover::gate::{Gate, Pass};
use crate::cutover::parity::Samples;
use crate::cutover::{Phase, Phases};
use crate::error::{Kind, ProxyError};
use crate::metrics::{CutoverMetrics, JournalMetrics};
use crate::model::Side;
use crate::model::{Change, Key, Tenant, TokenKind};
use crate::proxy::{BoxFuture, Exchange, Hook, RouteId, Ticket};
use crate::servers::Servers;
use crate::sync::{Apply, Recorder};
use crate::triggers::{Catalogue, Fallback, LogoutHint, Resolved, jwt_subject_and_client};
use crate::verify::LiveSample;

/// Most remembered logout sessions (logout session id → SID).
pub(crate) const MAX_LOGOUT_HINTS: usize = 100_000;
/// How long a logout hint is kept: a logout confirmation comes within
/// seconds of its start.
pub(crate) const LOGOUT_HINT_TTL: Duration = Duration::from_secs(3600);
/// How long an answer of the previous primary (the fallback right after a
/// flip) waits for its changes to reach the new primary before it is
/// released anyway: long enough for a healthy sync (milliseconds), short
/// enough that a down secondary does not stall the client (the change
/// stays journaled and keeps retrying).
pub(crate) const FALLBACK_SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// How long a key merely *used* (a session's SSO login or read: its
/// last-used time moved) is not journaled again after it was: well inside
/// [`crate::model::idle::LAST_USED_TOLERANCE`], so the secondary's copy
/// never trails by more than that, while a busy session costs one journal
/// record per window instead of one per login.
pub const USE_COALESCING: Duration = Duration::from_secs(30);
/// Most used keys remembered for coalescing; beyond it the oldest are
/// forgotten (and may be journaled again early, which is harmless).
pub const MAX_COALESCED_USES: usize = 100_000;

/// What a client refused by the write gate is told to wait before trying
/// again: a flip holds writes for well under a second.
const GATE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The trigger hook.
#[derive(Clone)]
pub(crate) struct TriggerHook {
    inner: Arc<Inner>,
}

struct Inner {
    catalogue: Catalogue,
    phases: Arc<Phases>,
    gate: Arc<Gate>,
    fallback_window: Duration,
    /// The longest `expires_in` (seconds) of an access token the primary
    /// issued through the proxy: the fallback window is at least that long.
    longest_access_token: AtomicU64,
    /// Whether downstream `Tenant-ID` / `Issuer` headers reach the primary
    /// (`proxy.trusted_issuer_header`): then a trigger that carries one
    /// changed that issuer's state, and its changes are scoped to it.
    tenant_headers: bool,
    refresh_fallback_window: Option<Duration>,
    cutover_metrics: CutoverMetrics,
    recorder: Recorder,
    apply: Arc<dyn Apply>,
    servers: Arc<Servers>,
    metrics: JournalMetrics,
    logout: Mutex<LogoutHints>,
    uses: Mutex<RecentUses>,
    samples: Option<Arc<Samples>>,
    /// Refresh tokens clients hold, for verify (an Authlete target).
    live: Option<Arc<LiveSample>>,
}

impl std::fmt::Debug for TriggerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerHook")
            .field("recorder", &self.inner.recorder)
            .finish_non_exhaustive()
    }
}

impl TriggerHook {
    /// A hook recognising triggers under `base_path`, recording what they
    /// changed with `recorder`.
    pub(crate) fn new(
        base_path: &str,
        recorder: Recorder,
        apply: Arc<dyn Apply>,
        servers: Arc<Servers>,
        metrics: JournalMetrics,
        live: Option<Arc<LiveSample>>,
        cutover: CutoverParts,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalogue: Catalogue::new(base_path),
                phases: cutover.phases,
                gate: cutover.gate,
                fallback_window: cutover.fallback_window,
                longest_access_token: AtomicU64::new(0),
                tenant_headers: cutover.tenant_headers,
                refresh_fallback_window: cutover.refresh_fallback_window,
                cutover_metrics: cutover.metrics,
                recorder,
                apply,
                servers,
                metrics,
                logout: Mutex::new(LogoutHints::default()),
                uses: Mutex::new(RecentUses::default()),
                samples: cutover.samples,
                live,
            }),
        }
    }
}

/// What the trigger hook needs from the cutover machinery.
#[derive(Debug, Clone)]
pub(crate) struct CutoverParts {
    /// The phase.
    pub phases: Arc<Phases>,
    /// The write gate.
    pub gate: Arc<Gate>,
    /// How long after a flip the previous primary is asked for state it
    /// alone holds.
    pub fallback_window: Duration,
    /// An Authlete target: how long after the flip refreshes the new server
    /// refuses are replayed at the old Connect2id.
    pub refresh_fallback_window: Option<Duration>,
    /// Counts replays at the previous primary.
    pub metrics: CutoverMetrics,
    /// Whether downstream `Tenant-ID` / `Issuer` headers are forwarded
    /// (`proxy.trusted_issuer_header`), so triggers are scoped by them.
    pub tenant_headers: bool,
    /// Where tokens seen in live token responses are kept (in memory) for
    /// the secret-key parity probes; `None` for an Authlete target.
    pub samples: Option<Arc<Samples>>,
}

impl Hook for TriggerHook {
    fn route(&self, method: &Method, path: &str) -> Option<RouteId> {
        let inner = &self.inner;
        if inner.phases.phase() == Phase::Completed {
            return None;
        }
        if let Some(route) = inner.catalogue.route(method, path) {
            return Some(route);
        }
        // Only right after a flip: everything else streams untouched.
        inner
            .servers
            .previous_within(inner.fallback_window())
            .or_else(|| inner.refresh_previous())?;
        inner
            .catalogue
            .fallback(method, path)
            .map(|_| Catalogue::FALLBACK_ONLY)
    }

    fn begin<'a>(
        &'a self,
        route: RouteId,
        request: &'a http::request::Parts,
        body: &'a Bytes,
    ) -> BoxFuture<'a, Result<Box<dyn Ticket>, ProxyError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let trigger = route != Catalogue::FALLBACK_ONLY;
            // Triggers wait here while a flip holds writes.
            let pass = if trigger {
                Some(inner.gate.pass(body.len()).await.map_err(|refused| {
                    ProxyError::internal(Kind::Unavailable {
                        reason: refused.reason(),
                        retry_after: GATE_RETRY_AFTER,
                    })
                })?)
            } else {
                None
            };
            let mut resolved = Resolved::default();
            if trigger && let Some(token) = inner.catalogue.token_to_resolve(route, body) {
                let tenant = inner.tenant_of(&request.headers);
                resolved.authorization = inner
                    .resolve_before_forwarding(&token.token, token.kind, tenant.as_ref())
                    .await;
            }
            let (method, path) = (&request.method, request.uri.path());
            let previous = inner.servers.previous_within(inner.fallback_window());
            let fallback = previous
                .and_then(|_| {
                    inner
                        .catalogue
                        .fallback(method, path)
                        .filter(|fallback| fallback.applies(body))
                })
                .zip(previous)
                .or_else(|| {
                    let old = inner.refresh_previous()?;
                    Some((inner.catalogue.refresh_fallback(method, path, body)?, old))
                });
            Ok(Box::new(TriggerTicket {
                inner: Arc::clone(inner),
                route,
                resolved,
                fallback,
                _pass: pass,
            }) as Box<dyn Ticket>)
        })
    }
}

struct TriggerTicket {
    inner: Arc<Inner>,
    route: RouteId,
    resolved: Resolved,
    /// What to watch for, and the previous primary to ask.
    fallback: Option<(Fallback, Side)>,
    /// Held until the changes are journaled (the flip waits for it).
    _pass: Option<Pass>,
}

impl Ticket for TriggerTicket {
    fn redirect(
        &mut self,
        status: StatusCode,
        body: Option<&Bytes>,
    ) -> Option<Arc<crate::upstream::Upstream>> {
        let (fallback, previous) = self.fallback?;
        if !fallback.unknown_here(status, body) {
            return None;
        }
        self.inner
            .cutover_metrics
            .record_fallback(fallback.dataset());
        tracing::debug!(fallback = ?fallback, "replaying at the previous primary");
        Some(Arc::clone(self.inner.servers.upstream(previous)))
    }

    fn finish<'a>(self: Box<Self>, exchange: Exchange<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let Some(row) = inner.catalogue.row(self.route) else {
                // Inspected only for the fallback; not a trigger.
                return;
            };
            inner.metrics.record_trigger(row.name);
            if let Some(lifetime) = inner.catalogue.access_token_lifetime(self.route, &exchange) {
                inner.observe_access_token_lifetime(lifetime);
            }
            if let Some(samples) = &inner.samples
                && let Some(tokens) = inner.catalogue.issued_tokens(self.route, &exchange)
            {
                samples.observe(
                    tokens.access_token.as_deref(),
                    tokens.refresh_token.as_deref(),
                    tokens.client_auth.as_deref(),
                );
            }
            let now = primary_clock(&exchange);
            let outcome = inner
                .catalogue
                .extract(self.route, &exchange, &self.resolved, now);
            let mut changes = outcome.changes;
            if let Some(hint) = outcome.logout {
                changes.extend(inner.logout_hint(hint));
            }
            if !outcome.used.is_empty()
                && let Ok(mut uses) = inner.uses.lock()
            {
                let now = Instant::now();
                changes.extend(
                    outcome
                        .used
                        .into_iter()
                        .filter(|key| uses.admit(key.identity(), now))
                        .map(Change::sync),
                );
            }
            let answered = exchange.answered_by;
            let by_previous = answered != inner.servers.primary_side();
            if row.name == "token_revoke" && !by_previous && exchange.status.is_success() {
                inner.revoke_at_old_server(&exchange).await;
            }
            // After a cutover to an Authlete-based server nothing flows any
            // more, except the tokens the old Connect2id issued in a
            // fallback: the next refresh must find them at Authlete.
            let fallback_tokens = by_previous && inner.apply.needs_token_values();
            if !inner.apply.is_active() && !fallback_tokens {
                return;
            }
            let mut named = !changes.is_empty();
            if inner.apply.needs_token_values() {
                let event = inner
                    .catalogue
                    .token_event(self.route, &exchange, &self.resolved);
                // The token values themselves are the change here.
                named = named && (event.is_some() || row.token_event_is_none());
                if let (Some(live), Some(event)) = (&inner.live, &event) {
                    live.observe(event);
                }
                changes.extend(event.map(|event| Change::Token { event }));
            }
            // Journal what the rest of the exchange still names (the key
            // in the path, the token sent); if nothing, never only a log
            // line: counted, and remembered until a verify covers it.
            if let Some(reason) = inner.catalogue.uninspected(self.route, &exchange) {
                if named {
                    tracing::warn!(
                        route = row.name,
                        reason,
                        "trigger response not inspected; journaling what the request names"
                    );
                } else {
                    inner.recorder.record_untracked(row.name, reason);
                }
            }
            // A trigger routed to one issuer changed that issuer's state.
            if let Some(tenant) = inner.tenant_of(exchange.request_headers) {
                changes = changes
                    .into_iter()
                    .map(|change| change.scoped(Some(tenant.clone())))
                    .collect();
            }
            // Answered by the previous primary: what changed lives there.
            if by_previous {
                changes = changes
                    .into_iter()
                    .map(|change| change.reading_from(answered))
                    .collect();
                // The client's next request goes to the new primary: it
                // must already hold what this answer created (the
                // authorization behind freshly issued tokens, the session).
                inner
                    .recorder
                    .record_settled(changes, FALLBACK_SETTLE_LIMIT)
                    .await;
            } else {
                inner.recorder.record(changes).await;
            }
        })
    }
}

impl Inner {
    /// The old Connect2id, while refreshes are replayed there: after a
    /// cutover to an Authlete-based server, for the refresh fallback window
    /// (the hook steps aside at `complete`).
    /// The issuer a downstream request was routed to, when its routing
    /// headers reach the primary.
    fn tenant_of(&self, headers: &http::HeaderMap) -> Option<Tenant> {
        if !self.tenant_headers {
            return None;
        }
        Tenant::of_headers(headers)
    }

    /// How long after a flip the previous primary is asked for state it
    /// alone holds: the configured window, or the longest access-token
    /// lifetime seen issued if that is longer (an identifier access token
    /// issued just before the flip is introspected at the previous primary
    /// until it expires; domain-gaps Q2.3).
    fn fallback_window(&self) -> Duration {
        let observed = Duration::from_secs(self.longest_access_token.load(Ordering::Relaxed));
        self.fallback_window.max(observed)
    }

    /// Records the lifetime of an access token the primary issued.
    fn observe_access_token_lifetime(&self, seconds: u64) {
        let previous = self
            .longest_access_token
            .fetch_max(seconds, Ordering::Relaxed);
        if seconds > previous && Duration::from_secs(seconds) > self.fallback_window {
            tracing::info!(
                lifetime_s = seconds,
                configured_s = self.fallback_window.as_secs(),
                "extended the fallback window to the longest access-token lifetime issued"
            );
        }
    }

    fn refresh_previous(&self) -> Option<Side> {
        self.refresh_fallback_window
            .and_then(|window| self.servers.previous_within(window))
            .filter(|side| *side == Side::Source)
    }

    /// A revocation the new server took is sent to the old Connect2id too
    /// while the refresh fallback is open: otherwise the fallback would
    /// bring a revoked refresh token back (the old server still honours
    /// it, and its answer is created at Authlete). Best effort, bounded; a
    /// failure is logged, the client keeps the new server's answer.
    async fn revoke_at_old_server(&self, exchange: &Exchange<'_>) {
        let Some(old) = self.refresh_previous() else {
            return;
        };
        let upstream = self.servers.upstream(old);
        let path_and_query = match exchange.query {
            Some(query) => format!("{}?{query}", exchange.path),
            None => exchange.path.to_owned(),
        };
        let Ok(uri) = upstream.url.uri(path_and_query) else {
            return;
        };
        let mut request = http::Request::post(uri);
        for name in [http::header::AUTHORIZATION, http::header::CONTENT_TYPE] {
            if let Some(value) = exchange.request_headers.get(&name) {
                request = request.header(name, value);
            }
        }
        let Ok(request) = request.body(crate::http::body::ProxyBody::full(
            exchange.request_body.clone(),
        )) else {
            return;
        };
        match upstream.send(request, FALLBACK_SETTLE_LIMIT).await {
            Ok(response) if response.status().is_success() => {
                tracing::debug!("revocation copied to the old server");
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "the old server refused a copied revocation; the token may still refresh there until complete");
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot copy a revocation to the old server; the token may still refresh there until complete");
            }
        }
    }

    async fn resolve_before_forwarding(
        &self,
        token: &str,
        kind: TokenKind,
        tenant: Option<&Tenant>,
    ) -> Option<(String, String)> {
        if let Some(pair) = jwt_subject_and_client(token) {
            return Some(pair);
        }
        let primary = match tenant {
            Some(tenant) => std::borrow::Cow::Owned(self.servers.primary_api().in_tenant(tenant)),
            None => std::borrow::Cow::Borrowed(self.servers.primary_api()),
        };
        for kind in [kind, kind.other()] {
            match primary.inspect(token, kind).await {
                Ok(Some(record)) => {
                    if let Some(Key::Authorization { subject, client_id }) =
                        Key::of_authorization(&record)
                    {
                        return Some((subject, client_id));
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    // Forward anyway: the client's revocation must not fail
                    // because we could not look ahead. Verify will find the
                    // record left on the secondary.
                    tracing::warn!(error = %err, "cannot resolve a revoked token before forwarding");
                    return None;
                }
            }
        }
        None
    }

    fn logout_hint(&self, hint: LogoutHint) -> Option<Change> {
        let mut hints = self.logout.lock().ok()?;
        match hint {
            LogoutHint::Remember { logout_sid, sid } => {
                hints.insert(logout_sid, sid);
                None
            }
            LogoutHint::Lookup { logout_sid } => hints
                .take(&logout_sid)
                .map(|sid| Change::sync(Key::Session { sid })),
        }
    }
}

/// The primary's clock for an exchange (its `Date` header), so replayed
/// revocations carry the primary's timestamp; ours if it sent none.
fn primary_clock(exchange: &Exchange<'_>) -> u64 {
    exchange
        .response_headers
        .get(http::header::DATE)
        .and_then(|date| date.to_str().ok())
        .and_then(|date| httpdate::parse_http_date(date).ok())
        .unwrap_or_else(SystemTime::now)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logout session id → SID, bounded by count and age.
#[derive(Debug, Default)]
struct LogoutHints {
    map: HashMap<String, (String, Instant)>,
    order: VecDeque<String>,
}

impl LogoutHints {
    fn insert(&mut self, logout_sid: String, sid: String) {
        while self.order.len() >= MAX_LOGOUT_HINTS
            || self
                .order
                .front()
                .and_then(|oldest| self.map.get(oldest))
                .is_some_and(|(_, at)| at.elapsed() > LOGOUT_HINT_TTL)
        {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
        if self
            .map
            .insert(logout_sid.clone(), (sid, Instant::now()))
            .is_none()
        {
            self.order.push_back(logout_sid);
        }
    }

    fn take(&mut self, logout_sid: &str) -> Option<String> {
        self.map.remove(logout_sid).map(|(sid, _)| sid)
    }
}

/// Keys recently journaled as *used*, for coalescing: identity → when.
#[derive(Debug, Default)]
struct RecentUses {
    map: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl RecentUses {
    /// Whether a use of `identity` at `now` is to be journaled: not if one
    /// was within [`USE_COALESCING`].
    fn admit(&mut self, identity: String, now: Instant) -> bool {
        while let Some((oldest, at)) = self.order.front() {
            let stale = now.saturating_duration_since(*at) >= USE_COALESCING;
            if !stale && self.order.len() < MAX_COALESCED_USES {
                break;
            }
            if self.map.get(oldest) == Some(at) {
                self.map.remove(oldest);
            }
            self.order.pop_front();
        }
        if self
            .map
            .get(&identity)
            .is_some_and(|at| now.saturating_duration_since(*at) < USE_COALESCING)
        {
            return false;
        }
        self.map.insert(identity.clone(), now);
        self.order.push_back((identity, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_of_a_key_are_journaled_once_per_window() {
        let mut uses = RecentUses::default();
        let start = Instant::now();
        assert!(uses.admit("session:K".into(), start));
        assert!(!uses.admit("session:K".into(), start + USE_COALESCING / 2));
        assert!(uses.admit("session:L".into(), start + USE_COALESCING / 2));
        assert!(uses.admit("session:K".into(), start + USE_COALESCING));
        assert!(!uses.admit("session:K".into(), start + USE_COALESCING * 3 / 2));
        assert!(uses.map.len() <= 2);
    }

    #[test]
    fn logout_hints_are_bounded_and_single_use() {
        let mut hints = LogoutHints::default();
        hints.insert("l1".into(), "K.H".into());
        assert_eq!(hints.take("l1").as_deref(), Some("K.H"));
        assert_eq!(hints.take("l1"), None);
        for i in 0..MAX_LOGOUT_HINTS + 10 {
            hints.insert(format!("l{i}"), "s".into());
        }
        assert!(hints.map.len() <= MAX_LOGOUT_HINTS);
    }
}
