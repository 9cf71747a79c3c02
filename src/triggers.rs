//! The trigger catalogue: which forwarded requests change state on the
//! primary, and which keys they changed. One table ([`CATALOGUE`]), one row
//! per request shape, each row a pure function from the exchange (method,
//! path under the base path, request head and body, response status, head
//! and body) to the [`Change`]s to journal.
//!
//! The rule (DESIGN.md §2): never replay a minting request. (The one
//! request replayed is a token revocation nothing resolves: it mints
//! nothing.) A row names the
//! *key* whose current state must be copied; the sync worker reads that
//! state from the primary. Where the key is not on the exchange (a refresh
//! token, an identifier access token) the row emits a [`Change::Resolve`]
//! and the worker looks the token up at the primary's authz-store
//! `/inspection` endpoint. Events that are not state (a revocation with its
//! timestamp) are carried as payload.
//!
//! Rows follow `spec/connect2id.md` §8 and §4.1:
//!
//! | method | path (under the base path) | changes |
//! |---|---|---|
//! | POST | `/clients` | client, `client_id` from the response |
//! | PUT, DELETE | `/clients/{id}` | client `{id}` |
//! | POST | `/authz-sessions/rest/v3` | *used*: the session in `sub_sid` (an SSO login bumps its last-used time), a federation client (entity-ID `client_id`, registered on first use); the authorization of tokens answered at once (implicit, hybrid) |
//! | GET | `/session-store/rest/v2/sessions` with `SID` | *used*: the session (unless `skip_last_used_update=true`) |
//! | PUT | `/authz-sessions/rest/v3/{sid}` | session from `sub_session.sid` / `sub_sid`; for an implicit long-lived consent, the authorization of the issued access token |
//! | POST | `/token` (code, refresh, password, token exchange, CIBA, device, JWT bearer) | the authorization: from a JWT access token's `sub` + `cid`, else resolved from the (new) refresh token or the access token; with a native SSO `device_secret`, the subject's sessions (the device session opened) |
//! | POST | `/token/revoke` | the token is resolved *before* forwarding (the record is gone after); then a revocation event and the authorization; when nothing resolves (a self-contained token, a native SSO `device_secret`) the revocation request itself, replayed at the secondary |
//! | POST | `/direct-authz/rest/v2` | the authorization (`sub` + `client_id` of the request, else the access token) and the session in `sub_sid` |
//! | POST, PUT, DELETE | `/authz-store/rest/v3/authorizations` | the authorization (`sub` + `cid` of the body, or the query); for an Authlete target a DELETE revokes the subject's tokens at the client |
//! | POST | `/authz-store/rest/v3/revocation` | a revocation event with its timestamp (and the authorization) |
//! | POST, PUT, DELETE | `/session-store/rest/v2/sessions` | the session (`SID` header or the created SID); all of a subject's sessions for `DELETE ?subject=` |
//! | PUT | `/session-store/rest/v2/sessions/subject-auth-life` | the session |
//! | POST | `/logout-sessions/rest/v1` | the session in `sub_sid`; remembers logout session → SID |
//! | PUT | `/logout-sessions/rest/v1/{sid}` | the remembered session |
//!
//! *Used* keys are synced like changed ones, but the hook coalesces them
//! (one sync per key per window): a session's last-used time only needs to
//! stay within [`crate::model::idle::LAST_USED_TOLERANCE`] of the
//! primary's.
//!
//! Not triggers, by decision: `POST /session-store/rest/v2/purge` (expired
//! sessions expire on the secondary by the same times), and
//! `/token/introspect?revoke=true` (identifier access tokens have no import
//! path, spec §8).

mod parse;
mod rows;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;

use self::rows::*;
use crate::http::form;
use crate::model::{Change, Dataset, Key, TokenEvent, TokenKind};
use crate::proxy::{Exchange, RouteId};

pub use self::parse::{client_of, jwt_subject_and_client, looks_like_jwt};

/// What a row needs before the request is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Nothing.
    Nothing,
    /// Resolve the token in the request body to its authorization now: the
    /// primary deletes the record while answering.
    ResolveRevokedToken,
}

/// A token to resolve before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenToResolve {
    /// The token value.
    pub token: String,
    /// The client's `token_type_hint`.
    pub kind: TokenKind,
}

/// What a row learned before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Subject and client of the token, if found.
    pub authorization: Option<(String, String)>,
}

/// A hint kept across requests for the logout flow: the confirmation `PUT`
/// carries only the logout session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutHint {
    /// Logout session `logout_sid` will end subject session `sid`.
    Remember {
        /// The logout session id.
        logout_sid: String,
        /// The subject session SID.
        sid: String,
    },
    /// Look up which subject session logout session `logout_sid` ends.
    Lookup {
        /// The logout session id.
        logout_sid: String,
    },
}

/// What one exchange changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Changes to journal.
    pub changes: Vec<Change>,
    /// Keys the exchange merely *used*, which may have changed them on the
    /// primary (a session's last-used time; a federation client registered
    /// on first use). Frequent and rarely urgent: the hook journals a sync
    /// of each at most once per coalescing window.
    pub used: Vec<Key>,
    /// Logout bookkeeping.
    pub logout: Option<LogoutHint>,
}

impl Outcome {
    pub(crate) fn of(changes: Vec<Change>) -> Self {
        Self {
            changes,
            used: Vec::new(),
            logout: None,
        }
    }
}

/// One catalogue row.
#[derive(Debug)]
pub struct Row {
    /// The method.
    pub method: Method,
    /// The path under the base path; `{}` matches one segment.
    pub path: &'static str,
    /// A name for logs and metrics.
    pub name: &'static str,
    /// What to do before forwarding.
    pub before: Before,
    extract: fn(&Input<'_>) -> Outcome,
    /// The token event, for a target that learns tokens only from their
    /// values (Authlete); `None` for rows that issue or end no token.
    token_event: Option<fn(&Input<'_>) -> Option<TokenEvent>>,
    /// Whether the changed keys (or the token values) are read from the
    /// primary's response, so that an uninspectable response may leave a
    /// change untracked.
    pub reads_response: bool,
}

impl Row {
    /// Whether the row produces no token event (nothing an Authlete
    /// target needs the token values of).
    pub fn token_event_is_none(&self) -> bool {
        self.token_event.is_none()
    }
}

/// A row's view of the exchange.
pub(crate) struct Input<'a> {
    pub(crate) exchange: &'a Exchange<'a>,
    /// Path segments matched by `{}`.
    pub(crate) captures: Vec<String>,
    pub(crate) resolved: &'a Resolved,
    /// The primary's clock for this exchange (epoch seconds).
    pub(crate) now: u64,
}

macro_rules! row {
    // `events:` is optional: the row's token-event fn for an Authlete target.
    ($method:ident, $path:literal, $name:literal, $extract:expr $(, events: $event:expr)?) => {
        row!(
            $method,
            $path,
            $name,
            Before::Nothing,
            $extract,
            row!(@event $($event)?),
            false
        )
    };
    ($method:ident, $path:literal, $name:literal, reads_response: $extract:expr $(, events: $event:expr)?) => {
        row!(
            $method,
            $path,
            $name,
            Before::Nothing,
            $extract,
            row!(@event $($event)?),
            true
        )
    };
    (@event) => {
        None
    };
    (@event $event:expr) => {
        Some($event)
    };
    ($method:ident, $path:literal, $name:literal, $before:expr, $extract:expr, $event:expr, $reads:expr) => {
        Row {
            method: Method::$method,
            path: $path,
            name: $name,
            before: $before,
            extract: $extract,
            token_event: $event,
            reads_response: $reads,
        }
    };
}

/// The catalogue.
pub static CATALOGUE: &[Row] = &[
    row!(POST, "/clients", "client_create", reads_response: client_created),
    row!(
        POST,
        "/authz-sessions/rest/v3",
        "authz_session_start",
        authz_session_start
    ),
    row!(
        GET,
        "/session-store/rest/v2/sessions",
        "session_read",
        session_read
    ),
    row!(PUT, "/clients/{}", "client_update", client_in_path),
    row!(DELETE, "/clients/{}", "client_delete", client_in_path),
    row!(
        PUT,
        "/authz-sessions/rest/v3/{}",
        "authz_session_step",
        reads_response: authz_session_step,
        events: authz_session_tokens_event
    ),
    row!(
        POST,
        "/token",
        "token",
        reads_response: token_issued,
        events: tokens_issued_event
    ),
    row!(
        POST,
        "/token/revoke",
        "token_revoke",
        Before::ResolveRevokedToken,
        token_revoked,
        Some(token_revoked_event),
        false
    ),
    row!(
        POST,
        "/direct-authz/rest/v2",
        "direct_authz",
        reads_response: direct_authz,
        events: direct_authz_event
    ),
    row!(
        POST,
        "/authz-store/rest/v3/authorizations",
        "authz_store_add",
        authz_in_body,
        events: authz_store_tokens_event
    ),
    row!(
        PUT,
        "/authz-store/rest/v3/authorizations",
        "authz_store_update",
        authz_in_body
    ),
    row!(
        DELETE,
        "/authz-store/rest/v3/authorizations",
        "authz_store_delete",
        authz_in_query,
        events: authorization_deleted_event
    ),
    row!(
        POST,
        "/authz-store/rest/v3/revocation",
        "authz_store_revocation",
        authz_store_revocation,
        events: revocation_event
    ),
    row!(
        POST,
        "/session-store/rest/v2/sessions",
        "session_create",
        reads_response: session_created
    ),
    row!(
        PUT,
        "/session-store/rest/v2/sessions",
        "session_update",
        session_in_header
    ),
    row!(
        DELETE,
        "/session-store/rest/v2/sessions",
        "session_delete",
        session_deleted
    ),
    row!(
        PUT,
        "/session-store/rest/v2/sessions/subject-auth-life",
        "session_auth_life",
        session_in_header
    ),
    row!(
        POST,
        "/logout-sessions/rest/v1",
        "logout_start",
        reads_response: logout_started
    ),
    row!(
        PUT,
        "/logout-sessions/rest/v1/{}",
        "logout_confirm",
        logout_confirmed
    ),
];

/// Requests whose state may live only on the previous primary right after
/// a flip (a login in progress, an authorization code, an identifier access
/// token), and how to tell that the new primary does not know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `POST /authz-sessions/rest/v3` with a pushed request's `request_uri`
    /// (PAR, 60 s life): `{"type": "error", "error": "invalid_request_uri"}`.
    PushedStart,
    /// `/authz-sessions/rest/v3/{sid}`: 404.
    AuthzSession,
    /// `/logout-sessions/rest/v1/{sid}`: 404.
    LogoutSession,
    /// `/token` with a code, CIBA or device grant: `invalid_grant`.
    Token,
    /// `/token/introspect`: `active: false`.
    Introspect,
    /// `/userinfo`: 401.
    UserInfo,
    /// `/token` with the refresh grant, after a cutover to an
    /// Authlete-based server, for the refresh fallback window:
    /// `invalid_grant` (a refresh token Authlete never got: its client was
    /// idle during the whole mirroring).
    Refresh,
}

/// The `request_uri` of a pushed authorization request (RFC 9126 §2.2).
const PUSHED_REQUEST_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";

/// Grants whose unknown code lives on the previous primary.
const FALLBACK_GRANTS: [&str; 3] = [
    "authorization_code",
    "urn:openid:params:grant-type:ciba",
    "urn:ietf:params:oauth:grant-type:device_code",
];

/// The fallback table: methods (empty = any), path under the base path.
static FALLBACKS: &[(&[Method], &str, Fallback)] = &[
    (
        &[Method::POST],
        "/authz-sessions/rest/v3",
        Fallback::PushedStart,
    ),
    (&[], "/authz-sessions/rest/v3/{}", Fallback::AuthzSession),
    (&[], "/logout-sessions/rest/v1/{}", Fallback::LogoutSession),
    (&[Method::POST], "/token", Fallback::Token),
    (&[Method::POST], "/token/introspect", Fallback::Introspect),
    (
        &[Method::GET, Method::POST],
        "/userinfo",
        Fallback::UserInfo,
    ),
];

impl Fallback {
    /// Whether the request is one the previous primary may alone know
    /// (for `/token`: only grants that redeem a code; for the refresh
    /// fallback: the refresh grant).
    pub fn applies(self, body: &[u8]) -> bool {
        let grant = || {
            let pairs = parse::form_body(body);
            form::first(&pairs, "grant_type").map(str::to_owned)
        };
        match self {
            Self::Token => grant().is_some_and(|grant| FALLBACK_GRANTS.contains(&grant.as_str())),
            Self::Refresh => grant().as_deref() == Some("refresh_token"),
            Self::PushedStart => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|start| {
                    let query = start.get("query")?.as_str()?.to_owned();
                    let pairs = form::parse(&query);
                    form::first(&pairs, "request_uri")
                        .map(|uri| uri.starts_with(PUSHED_REQUEST_URI_PREFIX))
                })
                .unwrap_or(false),
            _ => true,
        }
    }

    /// The dataset of the state the fallback reaches for (the label of
    /// `handover_cutover_fallbacks_total`).
    pub fn dataset(self) -> Dataset {
        match self {
            Self::PushedStart | Self::AuthzSession | Self::LogoutSession => Dataset::Sessions,
            Self::Token => Dataset::Authorizations,
            Self::Introspect | Self::UserInfo | Self::Refresh => Dataset::Tokens,
        }
    }

    /// Whether the new primary's answer says it does not know the state.
    pub fn unknown_here(self, status: StatusCode, body: Option<&Bytes>) -> bool {
        let json = || body.and_then(|b| serde_json::from_slice::<Value>(b).ok());
        match self {
            Self::PushedStart => {
                status == StatusCode::OK
                    && json().is_some_and(|v| {
                        v.get("type").and_then(Value::as_str) == Some("error")
                            && v.get("error").and_then(Value::as_str) == Some("invalid_request_uri")
                    })
            }
            Self::AuthzSession | Self::LogoutSession => status == StatusCode::NOT_FOUND,
            Self::Token | Self::Refresh => {
                status == StatusCode::BAD_REQUEST
                    && json().is_some_and(|v| {
                        v.get("error").and_then(Value::as_str) == Some("invalid_grant")
                    })
            }
            Self::Introspect => {
                status == StatusCode::OK
                    && json()
                        .is_some_and(|v| v.get("active").and_then(Value::as_bool) == Some(false))
            }
            Self::UserInfo => status == StatusCode::UNAUTHORIZED,
        }
    }
}

/// The tokens of a successful token response, with the client's own
/// credentials (secrets: for in-memory probes only).
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedTokens {
    /// `access_token`.
    pub access_token: Option<String>,
    /// `refresh_token`.
    pub refresh_token: Option<String>,
    /// The client's authentication as an `Authorization: Basic` value.
    pub client_auth: Option<String>,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedTokens { .. }")
    }
}

/// The catalogue bound to a server's base path.
#[derive(Debug, Clone)]
pub struct Catalogue {
    base_path: String,
}

impl Catalogue {
    /// A catalogue for endpoints under `base_path` (`""` or e.g. `/c2id`).
    pub fn new(base_path: &str) -> Self {
        Self {
            base_path: base_path.trim_end_matches('/').to_owned(),
        }
    }

    /// The path under the base path (without a trailing slash), if the
    /// request is for this server's endpoints at all.
    fn relative<'p>(&self, path: &'p str) -> Option<&'p str> {
        let relative = path.strip_prefix(self.base_path.as_str())?;
        if !relative.starts_with('/') {
            return None;
        }
        Some(if relative.len() > 1 {
            relative.trim_end_matches('/')
        } else {
            relative
        })
    }

    /// The row matching a request, if it is a trigger. Cheap, called for
    /// every request: a prefix check and a segment comparison over a short
    /// table, without allocating.
    pub fn route(&self, method: &Method, path: &str) -> Option<RouteId> {
        if *method == Method::HEAD || *method == Method::OPTIONS {
            return None;
        }
        let relative = self.relative(path)?;
        let (prefix, rest) = current_form(relative);
        CATALOGUE
            .iter()
            .position(|row| row.method == *method && fits_current(row.path, prefix, rest))
            .and_then(|index| u16::try_from(index).ok())
            .map(RouteId)
    }

    /// The route id of a request inspected only for the fallback to the
    /// previous primary (no row: not a trigger).
    pub const FALLBACK_ONLY: RouteId = RouteId(u16::MAX);

    /// Whether a request may need the previous primary right after a flip.
    pub fn fallback(&self, method: &Method, path: &str) -> Option<Fallback> {
        let relative = self.relative(path)?;
        let (prefix, rest) = current_form(relative);
        FALLBACKS
            .iter()
            .find(|(methods, pattern, _)| {
                (methods.is_empty() || methods.contains(method))
                    && fits_current(pattern, prefix, rest)
            })
            .map(|(_, _, fallback)| *fallback)
    }

    /// Whether a request is a refresh the old Connect2id may alone know
    /// after a cutover to an Authlete-based server.
    pub fn refresh_fallback(&self, method: &Method, path: &str, body: &[u8]) -> Option<Fallback> {
        (self.fallback(method, path) == Some(Fallback::Token) && Fallback::Refresh.applies(body))
            .then_some(Fallback::Refresh)
    }

    /// The row of a route.
    pub fn row(&self, route: RouteId) -> Option<&'static Row> {
        CATALOGUE.get(usize::from(route.0))
    }

    /// The token a row must resolve before forwarding, if any.
    pub fn token_to_resolve(&self, route: RouteId, body: &[u8]) -> Option<TokenToResolve> {
        if self.row(route)?.before != Before::ResolveRevokedToken {
            return None;
        }
        let pairs = parse::form_body(body);
        let token = form::first(&pairs, "token")?.to_owned();
        let kind = match form::first(&pairs, "token_type_hint") {
            Some("access_token") => TokenKind::Access,
            Some("refresh_token") => TokenKind::Refresh,
            // A native SSO device secret names no authorization.
            Some("device_secret") => return None,
            // No hint: a JWT is an access token; anything else is tried as a
            // refresh token first by the resolver.
            _ if looks_like_jwt(&token) => TokenKind::Access,
            _ => TokenKind::Refresh,
        };
        Some(TokenToResolve { token, kind })
    }

    /// What an exchange changed. Only successful (2xx) exchanges change
    /// anything.
    pub fn extract(
        &self,
        route: RouteId,
        exchange: &Exchange<'_>,
        resolved: &Resolved,
        now: u64,
    ) -> Outcome {
        match self.input(route, exchange, resolved, now) {
            Some((row, input)) => (row.extract)(&input),
            None => Outcome::default(),
        }
    }

    /// Why a successful trigger's response could not be inspected, when its
    /// row reads the response: too large, cut off, or not JSON. Then the
    /// changes extracted from the rest of the exchange may be all that can
    /// be known, or nothing.
    pub fn uninspected(&self, route: RouteId, exchange: &Exchange<'_>) -> Option<&'static str> {
        let row = self.row(route)?;
        if !row.reads_response || !exchange.status.is_success() {
            return None;
        }
        match (exchange.response_body, exchange.response_unseen) {
            (None, Some(unseen)) => Some(unseen.as_str()),
            (None, None) => Some("missing"),
            (Some(body), _) => serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .is_err()
                .then_some("malformed"),
        }
    }

    /// The tokens a successful `/token` exchange issued.
    pub fn issued_tokens(&self, route: RouteId, exchange: &Exchange<'_>) -> Option<IssuedTokens> {
        let resolved = Resolved::default();
        let (row, input) = self.input(route, exchange, &resolved, 0)?;
        if row.name != "token" {
            return None;
        }
        let response: Value = serde_json::from_slice(exchange.response_body?).ok()?;
        let field = |name| {
            response
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let request = parse::form_body(exchange.request_body);
        Some(IssuedTokens {
            access_token: field("access_token"),
            refresh_token: field("refresh_token"),
            client_auth: parse::client_auth_of(input.exchange.request_headers, &request),
        })
    }

    /// The lifetime (`expires_in`, seconds) of an access token a successful
    /// token or direct-authorization response issued. An identifier access
    /// token lives only on the server that issued it (no import path), so
    /// the fallback after a flip must last as long as the longest one.
    pub fn access_token_lifetime(&self, route: RouteId, exchange: &Exchange<'_>) -> Option<u64> {
        let resolved = Resolved::default();
        let (row, _) = self.input(route, exchange, &resolved, 0)?;
        if !matches!(row.name, "token" | "direct_authz") {
            return None;
        }
        let response: Value = serde_json::from_slice(exchange.response_body?).ok()?;
        response.get("access_token")?;
        response.get("expires_in")?.as_u64()
    }

    /// The token event of an exchange, for a target that learns tokens
    /// only from their values.
    pub fn token_event(
        &self,
        route: RouteId,
        exchange: &Exchange<'_>,
        resolved: &Resolved,
    ) -> Option<TokenEvent> {
        let (row, input) = self.input(route, exchange, resolved, 0)?;
        (row.token_event?)(&input)
    }

    /// A row's view of a successful (2xx) exchange; only those change
    /// anything.
    fn input<'a>(
        &self,
        route: RouteId,
        exchange: &'a Exchange<'a>,
        resolved: &'a Resolved,
        now: u64,
    ) -> Option<(&'static Row, Input<'a>)> {
        if !exchange.status.is_success() {
            return None;
        }
        let row = self.row(route)?;
        let relative = self.relative(exchange.path).unwrap_or(exchange.path);
        let (prefix, rest) = current_form(relative);
        let captures = row
            .path
            .strip_prefix(prefix)
            .and_then(|pattern| matches(pattern, rest))
            .unwrap_or_default();
        Some((
            row,
            Input {
                exchange,
                captures,
                resolved,
                now,
            },
        ))
    }
}

/// Legacy API versions a source may still serve, each with the current
/// version its rows are written for: (legacy prefix, current prefix).
/// `/authz-store/rest/v2` is still served next to v3 (JSP of 18.x); the
/// other three were removed in 17.0 (RN 17.0), so a source older than 17 —
/// the common case for a migration — has integrations calling them. Their
/// requests name the same keys in the same places as the current versions
/// (v2 of the authz-session API is a rewrite filter over v3 since 5.0), so
/// the current rows read them.
pub const LEGACY_PREFIXES: [(&str, &str); 4] = [
    ("/authz-store/rest/v2", "/authz-store/rest/v3"),
    ("/authz-sessions/rest/v1", "/authz-sessions/rest/v3"),
    ("/authz-sessions/rest/v2", "/authz-sessions/rest/v3"),
    ("/direct-authz/rest/v1", "/direct-authz/rest/v2"),
];

/// A relative path in its current form, without allocating: the current
/// prefix a legacy prefix stands for (`""` for a current path) and the
/// rest of the path after the prefix.
fn current_form(relative: &str) -> (&'static str, &str) {
    for (legacy, current) in LEGACY_PREFIXES {
        if let Some(rest) = relative.strip_prefix(legacy)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return (current, rest);
        }
    }
    ("", relative)
}

/// Whether a pattern matches a path given in its current form.
fn fits_current(pattern: &str, prefix: &str, rest: &str) -> bool {
    pattern
        .strip_prefix(prefix)
        .is_some_and(|pattern| fits(pattern, rest))
}

/// Whether a pattern matches a relative path (no allocation).
fn fits(pattern: &str, path: &str) -> bool {
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return true,
            (Some("{}"), Some(segment)) if !segment.is_empty() => {}
            (Some(expected), Some(segment)) if expected == segment => {}
            _ => return false,
        }
    }
}

/// Matches a pattern against a relative path, returning the `{}` captures
/// (percent-decoded).
fn matches(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut captures = Vec::new();
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(captures),
            (Some("{}"), Some(segment)) if !segment.is_empty() => {
                captures.push(form::decode_segment(segment));
            }
            (Some(expected), Some(segment)) if expected == segment => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse::{authorization, session};
    use super::*;
    use crate::model::Key;
    use base64::Engine as _;
    use bytes::Bytes;
    use http::HeaderMap;
    use http::StatusCode;

    const JWT_PAYLOAD: &str = r#"{"sub":"alice","cid":"s6BhdRkqt3","scp":["openid","email"],"iss":"https://c2id.example.com","exp":1900000000}"#;

    fn jwt() -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            engine.encode(r#"{"alg":"EdDSA","kid":"sig-1"}"#),
            engine.encode(JWT_PAYLOAD),
            engine.encode("signature")
        )
    }

    struct Case {
        method: Method,
        path: &'static str,
        headers: Vec<(&'static str, String)>,
        request: String,
        status: u16,
        response: String,
        resolved: Resolved,
        unseen: Option<crate::proxy::Unseen>,
    }

    impl Case {
        fn new(method: Method, path: &'static str) -> Self {
            Self {
                method,
                path,
                headers: Vec::new(),
                request: String::new(),
                status: 200,
                response: String::new(),
                resolved: Resolved::default(),
                unseen: None,
            }
        }
        fn unseen(mut self, status: u16, why: crate::proxy::Unseen) -> Self {
            self.status = status;
            self.unseen = Some(why);
            self
        }
        fn request(mut self, body: &str) -> Self {
            self.request = body.to_owned();
            self
        }
        fn response(mut self, status: u16, body: &str) -> Self {
            self.status = status;
            self.response = body.to_owned();
            self
        }
        fn header(mut self, name: &'static str, value: &str) -> Self {
            self.headers.push((name, value.to_owned()));
            self
        }
        fn resolved(mut self, subject: &str, client: &str) -> Self {
            self.resolved.authorization = Some((subject.to_owned(), client.to_owned()));
            self
        }

        fn with_exchange<T>(&self, f: impl FnOnce(&Catalogue, RouteId, &Exchange<'_>) -> T) -> T {
            let catalogue = Catalogue::new("/c2id");
            let (path, query) = match self.path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (self.path, None),
            };
            let route = catalogue
                .route(&self.method, path)
                .unwrap_or_else(|| panic!("{} {} is not a trigger", self.method, self.path));
            let mut request_headers = HeaderMap::new();
            for (name, value) in &self.headers {
                request_headers.insert(*name, value.parse().unwrap());
            }
            let request_body = Bytes::from(self.request.clone());
            let response_body = Bytes::from(self.response.clone());
            let response_headers = HeaderMap::new();
            let exchange = Exchange {
                method: &self.method,
                path,
                query,
                request_headers: &request_headers,
                request_body: &request_body,
                status: StatusCode::from_u16(self.status).unwrap(),
                response_headers: &response_headers,
                response_body: self.unseen.is_none().then_some(&response_body),
                response_unseen: self.unseen,
                answered_by: crate::model::Side::Source,
            };
            f(&catalogue, route, &exchange)
        }

        fn run(&self) -> Outcome {
            self.with_exchange(|catalogue, route, exchange| {
                catalogue.extract(route, exchange, &self.resolved, 1_700_000_000)
            })
        }

        fn uninspected(&self) -> Option<&'static str> {
            self.with_exchange(|catalogue, route, exchange| catalogue.uninspected(route, exchange))
        }

        fn token_event(&self) -> Option<TokenEvent> {
            self.with_exchange(|catalogue, route, exchange| {
                catalogue.token_event(route, exchange, &self.resolved)
            })
        }

        fn changes(&self) -> Vec<Change> {
            self.run().changes
        }
    }

    fn client(id: &str) -> Change {
        Change::sync(Key::Client {
            client_id: id.into(),
        })
    }
    fn authz(sub: &str, cid: &str) -> Change {
        authorization(sub.into(), cid.into())
    }
    fn sess(sid: &str) -> Change {
        session(sid.into())
    }
    /// A revocation of alice's authorizations (at `client_id`, else all).
    fn revocation(client_id: Option<&str>, timestamp: u64) -> Change {
        Change::Revocation {
            subject: Some("alice".into()),
            client_id: client_id.map(str::to_owned),
            actor: None,
            timestamp,
        }
    }
    fn to_resolve(token: &str, kind: TokenKind) -> Change {
        Change::Resolve {
            token: token.into(),
            kind,
            from: None,
        }
    }

    #[test]
    fn a_redeemed_code_whose_id_token_names_a_session_changes_that_session() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let id_token = format!(
            "{}.{}.{}",
            engine.encode(r#"{"alg":"RS256"}"#),
            engine.encode(r#"{"sub":"alice","aud":"s6","sid":"K1.H1"}"#),
            engine.encode("signature")
        );
        let response = format!(r#"{{"access_token":"{}","id_token":"{id_token}"}}"#, jwt());
        let changes = Case::new(Method::POST, "/c2id/token")
            .request("grant_type=authorization_code&code=c1")
            .response(200, &response)
            .changes();
        assert!(changes.contains(&sess("K1.H1")), "{changes:?}");
        // A refresh adds no relying party: no session change.
        let changes = Case::new(Method::POST, "/c2id/token")
            .request("grant_type=refresh_token&refresh_token=r1")
            .response(200, &response)
            .changes();
        assert!(!changes.contains(&sess("K1.H1")), "{changes:?}");
    }

    #[test]
    fn legacy_api_versions_route_like_their_current_versions() {
        let catalogue = Catalogue::new("/c2id");
        let name = |method: Method, path: &str| {
            catalogue
                .route(&method, path)
                .and_then(|route| catalogue.row(route))
                .map(|row| row.name)
        };
        for (method, legacy, current) in [
            (
                Method::POST,
                "/c2id/authz-store/rest/v2/authorizations",
                "authz_store_add",
            ),
            (
                Method::DELETE,
                "/c2id/authz-store/rest/v2/authorizations",
                "authz_store_delete",
            ),
            (
                Method::POST,
                "/c2id/authz-store/rest/v2/revocation",
                "authz_store_revocation",
            ),
            (
                Method::POST,
                "/c2id/authz-sessions/rest/v1",
                "authz_session_start",
            ),
            (
                Method::PUT,
                "/c2id/authz-sessions/rest/v2/abc",
                "authz_session_step",
            ),
            (
                Method::PUT,
                "/c2id/authz-sessions/rest/v1/abc/",
                "authz_session_step",
            ),
            (Method::POST, "/c2id/direct-authz/rest/v1", "direct_authz"),
        ] {
            assert_eq!(name(method, legacy), Some(current), "{legacy}");
        }
        // Versions that never existed, or a prefix that only looks alike.
        assert_eq!(name(Method::POST, "/c2id/direct-authz/rest/v3"), None);
        assert_eq!(name(Method::POST, "/c2id/authz-sessions/rest/v1x"), None);
        assert_eq!(
            name(Method::POST, "/c2id/authz-store/rest/v1/authorizations"),
            None
        );
        // The fallbacks of a login in progress cover the legacy paths too.
        assert_eq!(
            catalogue.fallback(&Method::PUT, "/c2id/authz-sessions/rest/v2/abc"),
            Some(Fallback::AuthzSession)
        );
        // The rows read the keys off the legacy exchange.
        let changes = Case::new(
            Method::DELETE,
            "/c2id/authz-store/rest/v2/authorizations?subject=alice&client_id=s6",
        )
        .response(204, "")
        .changes();
        assert!(changes.contains(&authz("alice", "s6")), "{changes:?}");
        assert_eq!(current_form("/clients/abc"), ("", "/clients/abc"));
        assert_eq!(
            current_form("/authz-sessions/rest/v2/abc"),
            ("/authz-sessions/rest/v3", "/abc")
        );
    }

    #[test]
    fn reads_and_unknown_paths_are_not_triggers() {
        let catalogue = Catalogue::new("/c2id");
        assert_eq!(catalogue.route(&Method::GET, "/c2id/clients"), None);
        assert_eq!(
            catalogue.route(&Method::POST, "/clients"),
            None,
            "outside the base path"
        );
        assert_eq!(catalogue.route(&Method::POST, "/c2idx/clients"), None);
        assert_eq!(
            catalogue.route(&Method::POST, "/c2id/token/introspect"),
            None
        );
        assert_eq!(
            catalogue.route(&Method::POST, "/c2id/session-store/rest/v2/purge"),
            None
        );
        assert!(catalogue.route(&Method::POST, "/c2id/clients/").is_some());
        assert!(
            Catalogue::new("")
                .route(&Method::POST, "/clients")
                .is_some()
        );
    }

    #[test]
    fn client_registration_takes_the_key_from_the_response() {
        let case = Case::new(Method::POST, "/c2id/clients")
            .request(r#"{"redirect_uris":["https://client.example.org/cb"],"client_name":"My App"}"#)
            .response(
                201,
                r#"{"client_id":"s6BhdRkqt3","client_secret":"ahL7AhthchiNg6beAo5HeijeThae3deiChab7ajiVuip2eodesoBie0ufohtiiK4","client_id_issued_at":1504187117,"registration_access_token":"7ykDWJO481cGp66GddfsNMwwp2TptkTUH1XdgAFx9Yk.Kg","redirect_uris":["https://client.example.org/cb"]}"#,
            );
        assert_eq!(case.changes(), [client("s6BhdRkqt3")]);
        // A refused registration changes nothing.
        let refused = Case::new(Method::POST, "/c2id/clients").response(
            400,
            r#"{"error":"invalid_client_metadata","error_description":"Invalid redirect_uris"}"#,
        );
        assert!(refused.changes().is_empty());
    }

    #[test]
    fn client_update_and_delete_take_the_key_from_the_path() {
        let update = Case::new(Method::PUT, "/c2id/clients/s6BhdRkqt3")
            .request(
                r#"{"client_id":"s6BhdRkqt3","redirect_uris":["https://client.example.org/cb2"]}"#,
            )
            .response(
                200,
                r#"{"client_id":"s6BhdRkqt3","client_secret":"new-secret"}"#,
            );
        assert_eq!(update.changes(), [client("s6BhdRkqt3")]);
        let delete =
            Case::new(Method::DELETE, "/c2id/clients/urn%3Aexample%3Aclient").response(204, "");
        assert_eq!(delete.changes(), [client("urn:example:client")]);
    }

    #[test]
    fn subject_authentication_creates_a_session() {
        let case = Case::new(Method::PUT, "/c2id/authz-sessions/rest/v3/g6f5K6Kf6EY11zC00errCf64yLtg9lLANAcnXQk2xUE")
            .request(r#"{"sub":"alice","acr":"https://loa.c2id.com/basic","amr":["pwd"]}"#)
            .response(
                200,
                r#"{"type":"consent","sid":"g6f5K6Kf6EY11zC00errCf64yLtg9lLANAcnXQk2xUE","sub_session":{"sid":"N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q","sub":"alice","auth_time":1700000000},"scope":{"new":["openid","email"],"consented":[]}}"#,
            );
        assert_eq!(
            case.changes(),
            [sess("N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q")]
        );
    }

    #[test]
    fn consent_final_response_names_the_session_and_implicit_tokens() {
        let code_flow = Case::new(Method::PUT, "/c2id/authz-sessions/rest/v3/abc")
            .request(r#"{"scope":["openid"],"long_lived":true,"refresh_token":{"issue":true,"rotate":true}}"#)
            .response(
                200,
                r#"{"type":"response","mode":"query","parameters":{"uri":"https://client.example.org/cb?code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj"},"sub_sid":"N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q"}"#,
            );
        // The code flow's authorization is persisted at /token, not here.
        assert_eq!(
            code_flow.changes(),
            [sess("N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q")]
        );
        let uri = format!(
            "https://client.example.org/cb#access_token={}&token_type=Bearer",
            jwt()
        );
        let implicit = Case::new(Method::PUT, "/c2id/authz-sessions/rest/v3/abc")
            .request(r#"{"scope":["openid"],"long_lived":true}"#)
            .response(
                200,
                &format!(
                    r#"{{"type":"response","mode":"fragment","parameters":{{"uri":"{uri}"}}}}"#
                ),
            );
        assert_eq!(implicit.changes(), [authz("alice", "s6BhdRkqt3")]);
    }

    #[test]
    fn token_grants_name_the_authorization() {
        let jwt = jwt();
        let code = Case::new(Method::POST, "/c2id/token")
            .request("grant_type=authorization_code&code=SplxlOBeZQQYbYS6WxSbIA&redirect_uri=https%3A%2F%2Fclient.example.org%2Fcb")
            .response(200, &format!(r#"{{"access_token":"{jwt}","token_type":"Bearer","expires_in":600,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA"}}"#));
        assert_eq!(code.changes(), [authz("alice", "s6BhdRkqt3")]);

        // A refresh names the refresh token to resolve (the rotated one, else
        // the one used); a grant with only an identifier access token names
        // that token.
        let identifier = "2YotnFZFEjr1zCsicMWpAA.uZcHEFTDXTHkRjXgrjIRsA";
        let without_refresh =
            format!(r#"{{"access_token":"{identifier}","token_type":"Bearer","expires_in":600}}"#);
        for (request, response, expected) in [
            (
                "grant_type=refresh_token&refresh_token=old-refresh-token",
                format!(
                    r#"{{"access_token":"{identifier}","token_type":"Bearer","expires_in":600,"refresh_token":"new-refresh-token"}}"#
                ),
                to_resolve("new-refresh-token", TokenKind::Refresh),
            ),
            (
                "grant_type=refresh_token&refresh_token=kept-refresh-token&client_id=public-app",
                without_refresh.clone(),
                to_resolve("kept-refresh-token", TokenKind::Refresh),
            ),
            (
                "grant_type=password&username=alice&password=secret&scope=openid",
                without_refresh,
                to_resolve(identifier, TokenKind::Access),
            ),
        ] {
            let case = Case::new(Method::POST, "/c2id/token")
                .request(request)
                .response(200, &response);
            assert_eq!(case.changes(), [expected], "{request}");
        }

        for grant in [
            "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
            "urn%3Aopenid%3Aparams%3Agrant-type%3Aciba",
        ] {
            let case = Case::new(Method::POST, "/c2id/token")
                .request(&format!("grant_type={grant}&subject_token=x&auth_req_id=y"))
                .response(
                    200,
                    &format!(r#"{{"access_token":"{jwt}","token_type":"Bearer"}}"#),
                );
            assert_eq!(case.changes(), [authz("alice", "s6BhdRkqt3")], "{grant}");
        }

        let client_credentials = Case::new(Method::POST, "/c2id/token")
            .request("grant_type=client_credentials&scope=read")
            .response(200, r#"{"access_token":"x.y","token_type":"Bearer"}"#);
        assert!(client_credentials.changes().is_empty());
        let failed = Case::new(Method::POST, "/c2id/token")
            .request("grant_type=refresh_token&refresh_token=expended")
            .response(400, r#"{"error":"invalid_grant"}"#);
        assert!(failed.changes().is_empty());
    }

    #[test]
    fn token_revocation_uses_what_was_resolved_before_forwarding() {
        let catalogue = Catalogue::new("/c2id");
        let route = catalogue
            .route(&Method::POST, "/c2id/token/revoke")
            .unwrap();
        assert_eq!(
            catalogue.token_to_resolve(
                route,
                b"token=45ghiukldjahdnhzdauz&token_type_hint=refresh_token"
            ),
            Some(TokenToResolve {
                token: "45ghiukldjahdnhzdauz".into(),
                kind: TokenKind::Refresh
            })
        );
        assert_eq!(
            catalogue
                .token_to_resolve(route, &jwt_form())
                .map(|t| t.kind),
            Some(TokenKind::Access)
        );
        let case = Case::new(Method::POST, "/c2id/token/revoke")
            .request("token=45ghiukldjahdnhzdauz&token_type_hint=refresh_token")
            .response(200, "")
            .resolved("alice", "s6BhdRkqt3");
        assert_eq!(
            case.changes(),
            [
                revocation(Some("s6BhdRkqt3"), 1_700_000_000),
                authz("alice", "s6BhdRkqt3")
            ]
        );
        // Nothing resolved (a self-contained token, a device secret): the
        // revocation itself is replayed at the secondary.
        let unknown = Case::new(Method::POST, "/c2id/token/revoke")
            .header("authorization", "Basic YXBwOnM=")
            .request("token=transient&token_type_hint=refresh_token")
            .response(200, "");
        assert_eq!(
            unknown.changes(),
            [Change::RevokeToken {
                client_id: Some("app".into()),
                form: "token=transient&token_type_hint=refresh_token".into(),
                authorization: Some("Basic YXBwOnM=".into()),
            }]
        );
        assert_eq!(
            catalogue.token_to_resolve(route, b"token=ds&token_type_hint=device_secret"),
            None
        );
    }

    #[test]
    fn a_token_only_revocation_revokes_that_token_by_value_at_authlete() {
        let event = |form: &str| {
            Case::new(Method::POST, "/c2id/token/revoke")
                .request(form)
                .response(200, "")
                .resolved("alice", "s6BhdRkqt3")
                .token_event()
        };
        // Every token of alice at the client: Connect2id's default.
        assert_eq!(
            event("token=rt1&token_type_hint=refresh_token"),
            Some(TokenEvent::Revoked {
                client_id: Some("s6BhdRkqt3".into()),
                subject: Some("alice".into()),
                token: Some("rt1".into()),
            })
        );
        // `token_only=true` (19.9): that token only, so no subject.
        assert_eq!(
            event("token=rt1&token_type_hint=refresh_token&token_only=true"),
            Some(TokenEvent::Revoked {
                client_id: Some("s6BhdRkqt3".into()),
                subject: None,
                token: Some("rt1".into()),
            })
        );
    }

    fn jwt_form() -> Vec<u8> {
        format!("token={}", jwt()).into_bytes()
    }

    #[test]
    fn direct_authorization_names_authorization_and_session() {
        let case = Case::new(Method::POST, "/c2id/direct-authz/rest/v2")
            .request(r#"{"sub":"alice","client_id":"s6BhdRkqt3","scope":["openid"],"long_lived":true,"sub_session":{"sub":"alice","amr":["pwd"]}}"#)
            .response(200, r#"{"access_token":"x","refresh_token":"y","sub_sid":"Key123.Hmac456"}"#);
        assert_eq!(
            case.changes(),
            [authz("alice", "s6BhdRkqt3"), sess("Key123.Hmac456")]
        );
    }

    #[test]
    fn authz_store_writes_name_the_record() {
        let add = Case::new(
            Method::POST,
            "/c2id/authz-store/rest/v3/authorizations?return=tokens",
        )
        .request(r#"{"sub":"alice","cid":"s6BhdRkqt3","scp":["openid"],"irt":true}"#)
        .response(200, r#"{"access_token":"x","refresh_token":"y"}"#);
        assert_eq!(add.changes(), [authz("alice", "s6BhdRkqt3")]);
        let update = Case::new(Method::PUT, "/c2id/authz-store/rest/v3/authorizations")
            .request(r#"{"sub":"alice","cid":"s6BhdRkqt3","scp":["openid","email"]}"#);
        assert_eq!(update.changes(), [authz("alice", "s6BhdRkqt3")]);
        let delete = Case::new(
            Method::DELETE,
            "/c2id/authz-store/rest/v3/authorizations?subject=alice&client_id=s6BhdRkqt3",
        )
        .response(204, "");
        assert_eq!(delete.changes(), [authz("alice", "s6BhdRkqt3")]);
    }

    #[test]
    fn store_revocation_is_a_payload_with_the_timestamp() {
        let case = Case::new(
            Method::POST,
            "/c2id/authz-store/rest/v3/revocation?quiet=true",
        )
        .request("subject=alice&timestamp=1699999000")
        .response(204, "");
        assert_eq!(case.changes(), [revocation(None, 1_699_999_000)]);
        let both = Case::new(Method::POST, "/c2id/authz-store/rest/v3/revocation")
            .request("subject=alice&client_id=s6BhdRkqt3")
            .response(200, r#"[{"sub":"alice","cid":"s6BhdRkqt3"}]"#);
        assert_eq!(
            both.changes(),
            [
                revocation(Some("s6BhdRkqt3"), 1_700_000_000),
                authz("alice", "s6BhdRkqt3")
            ]
        );
    }

    #[test]
    fn session_store_writes_name_the_session() {
        let created = Case::new(Method::POST, "/c2id/session-store/rest/v2/sessions")
            .request(r#"{"sub":"alice","ctx":"web","auth_life":43200}"#)
            .response(
                201,
                r#"{"sid":"N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q"}"#,
            );
        assert_eq!(
            created.changes(),
            [sess("N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q")]
        );
        let created_text = Case::new(Method::POST, "/c2id/session-store/rest/v2/sessions")
            .request(r#"{"sub":"alice"}"#)
            .response(201, "a-wwPf7tckz2wbzpIEVtug.egmsAdB_sg3Au1hoD6InnA");
        assert_eq!(
            created_text.changes(),
            [sess("a-wwPf7tckz2wbzpIEVtug.egmsAdB_sg3Au1hoD6InnA")]
        );
        let update = Case::new(Method::PUT, "/c2id/session-store/rest/v2/sessions")
            .header("sid", "K.H")
            .request(r#"{"sub":"alice","data":{"theme":"dark"}}"#);
        assert_eq!(update.changes(), [sess("K.H")]);
        let delete = Case::new(Method::DELETE, "/c2id/session-store/rest/v2/sessions")
            .header("sid", "K.H")
            .response(204, "");
        assert_eq!(delete.changes(), [sess("K.H")]);
        let by_subject = Case::new(
            Method::DELETE,
            "/c2id/session-store/rest/v2/sessions?subject=alice",
        )
        .response(200, "{}");
        assert_eq!(
            by_subject.changes(),
            [Change::SubjectSessions {
                subject: "alice".into()
            }]
        );
        let auth_life = Case::new(
            Method::PUT,
            "/c2id/session-store/rest/v2/sessions/subject-auth-life",
        )
        .header("sid", "K.H")
        .request(r#"{"auth_life":-1}"#)
        .response(204, "");
        assert_eq!(auth_life.changes(), [sess("K.H")]);
    }

    #[test]
    fn an_sso_start_uses_the_session_and_may_register_or_issue() {
        let sso = Case::new(Method::POST, "/c2id/authz-sessions/rest/v3")
            .request(r#"{"query":"response_type=code&client_id=app","sub_sid":"K.H"}"#)
            .response(
                200,
                r#"{"type":"consent","sid":"a1","sub_session":{"sid":"K.H","sub":"alice"}}"#,
            );
        let outcome = sso.run();
        assert!(outcome.changes.is_empty());
        assert_eq!(outcome.used, [Key::Session { sid: "K.H".into() }]);
        // No session passed, or none found: nothing used.
        let fresh = Case::new(Method::POST, "/c2id/authz-sessions/rest/v3")
            .request(r#"{"query":"response_type=code&client_id=app"}"#)
            .response(200, r#"{"type":"auth","sid":"a2"}"#);
        assert_eq!(fresh.run(), Outcome::default());
        let refused = Case::new(Method::POST, "/c2id/authz-sessions/rest/v3")
            .request(r#"{"query":"client_id=app&request_uri=urn:x","sub_sid":"K.H"}"#)
            .response(200, r#"{"type":"error","error":"invalid_request_uri"}"#);
        assert_eq!(refused.run(), Outcome::default());
        // Persisted consent and an implicit flow: tokens at once.
        let implicit = Case::new(Method::POST, "/c2id/authz-sessions/rest/v3")
            .request(r#"{"query":"response_type=id_token%20token&client_id=app","sub_sid":"K.H"}"#)
            .response(200, &format!(r#"{{"type":"response","mode":"fragment","parameters":{{"uri":"https://rp.example.com/cb#access_token={}&token_type=Bearer"}}}}"#, jwt()));
        let outcome = implicit.run();
        assert_eq!(outcome.changes, [authz("alice", "s6BhdRkqt3")]);
        assert_eq!(outcome.used, [Key::Session { sid: "K.H".into() }]);
        // An OpenID Federation entity registers itself on first use.
        let federation = Case::new(Method::POST, "/c2id/authz-sessions/rest/v3")
            .request(r#"{"query":"response_type=code&client_id=https%3A%2F%2Frp.example.org"}"#)
            .response(200, r#"{"type":"auth","sid":"a3"}"#);
        assert_eq!(
            federation.run().used,
            [Key::Client {
                client_id: "https://rp.example.org".into()
            }]
        );
    }

    #[test]
    fn a_session_read_is_a_use_unless_it_skips_the_update() {
        let catalogue = Catalogue::new("/c2id");
        assert!(
            catalogue
                .route(&Method::GET, "/c2id/session-store/rest/v2/sessions")
                .is_some()
        );
        assert!(catalogue.route(&Method::GET, "/c2id/clients").is_none());
        assert!(catalogue.route(&Method::GET, "/c2id/userinfo").is_none());
        let read = Case::new(Method::GET, "/c2id/session-store/rest/v2/sessions")
            .header("sid", "K.H")
            .response(200, r#"{"sub":"alice"}"#);
        assert_eq!(read.run().used, [Key::Session { sid: "K.H".into() }]);
        let peek = Case::new(
            Method::GET,
            "/c2id/session-store/rest/v2/sessions?skip_last_used_update=true",
        )
        .header("sid", "K.H")
        .response(200, r#"{"sub":"alice"}"#);
        assert_eq!(peek.run(), Outcome::default());
        let export =
            Case::new(Method::GET, "/c2id/session-store/rest/v2/sessions").response(200, "{}");
        assert_eq!(export.run(), Outcome::default());
    }

    #[test]
    fn a_pushed_request_unknown_to_the_new_primary_is_replayed_at_the_old() {
        let catalogue = Catalogue::new("/c2id");
        let fallback = catalogue
            .fallback(&Method::POST, "/c2id/authz-sessions/rest/v3")
            .unwrap();
        assert_eq!(fallback, Fallback::PushedStart);
        let pushed = br#"{"query":"client_id=app&request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3Aabc"}"#;
        assert!(fallback.applies(pushed));
        assert!(!fallback.applies(br#"{"query":"client_id=app&response_type=code"}"#));
        let unknown = Bytes::from_static(br#"{"type":"error","error":"invalid_request_uri"}"#);
        assert!(fallback.unknown_here(StatusCode::OK, Some(&unknown)));
        let other = Bytes::from_static(br#"{"type":"error","error":"invalid_client"}"#);
        assert!(!fallback.unknown_here(StatusCode::OK, Some(&other)));
    }

    #[test]
    fn logout_remembers_then_resolves_the_session() {
        let start = Case::new(Method::POST, "/c2id/logout-sessions/rest/v1")
            .request(r#"{"query":"id_token_hint=eyJ...&post_logout_redirect_uri=https%3A%2F%2Fclient.example.org","sub_sid":"K.H"}"#)
            .response(200, r#"{"type":"confirm","sid":"logout-1","sub_session":{"sid":"K.H","sub":"alice"}}"#);
        let outcome = start.run();
        assert_eq!(outcome.changes, [sess("K.H")]);
        assert_eq!(
            outcome.logout,
            Some(LogoutHint::Remember {
                logout_sid: "logout-1".into(),
                sid: "K.H".into()
            })
        );
        let confirm = Case::new(Method::PUT, "/c2id/logout-sessions/rest/v1/logout-1")
            .request(r#"{"confirm_logout":true}"#)
            .response(200, r#"{"type":"end"}"#);
        assert_eq!(
            confirm.run().logout,
            Some(LogoutHint::Lookup {
                logout_sid: "logout-1".into()
            })
        );
    }

    #[test]
    fn uninspectable_responses_of_rows_that_read_them_are_named() {
        use crate::proxy::Unseen;
        let created = || Case::new(Method::POST, "/c2id/clients").request("{}");
        assert_eq!(
            created().unseen(201, Unseen::TooLarge).uninspected(),
            Some("too_large")
        );
        assert_eq!(
            created().unseen(201, Unseen::Cut).uninspected(),
            Some("cut")
        );
        assert_eq!(
            created().response(201, "<html>").uninspected(),
            Some("malformed")
        );
        assert_eq!(
            created()
                .response(201, r#"{"client_id":"c1"}"#)
                .uninspected(),
            None
        );
        // A refusal changed nothing; a row that reads only the request
        // loses nothing.
        assert_eq!(created().unseen(400, Unseen::TooLarge).uninspected(), None);
        let updated = Case::new(Method::PUT, "/c2id/clients/c1").unseen(200, Unseen::TooLarge);
        assert_eq!(updated.uninspected(), None);
        assert_eq!(updated.changes(), [client("c1")]);
        // Nothing to journal: the created client's id was in the response.
        assert!(created().unseen(201, Unseen::TooLarge).changes().is_empty());
    }

    #[test]
    fn a_refresh_without_a_readable_response_still_names_its_authorization() {
        let refresh = Case::new(Method::POST, "/c2id/token")
            .request("grant_type=refresh_token&refresh_token=rt-1")
            .unseen(200, crate::proxy::Unseen::Cut);
        assert_eq!(refresh.uninspected(), Some("cut"));
        assert_eq!(refresh.changes(), [to_resolve("rt-1", TokenKind::Refresh)]);
        let code = Case::new(Method::POST, "/c2id/token")
            .request("grant_type=authorization_code&code=c")
            .response(200, "not json");
        assert_eq!(code.uninspected(), Some("malformed"));
        assert!(code.changes().is_empty());
    }

    #[test]
    fn keys_redact_session_ids_and_serialise_stably() {
        let key = Key::Session {
            sid: "N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q".into(),
        };
        assert_eq!(key.identity(), "session:N4ICV2CQmTu6KLbrJKQSXw");
        assert_eq!(key.redacted(), "session:N4ICV2…");
        let change = Change::sync(key);
        let json = serde_json::to_string(&change).unwrap();
        assert_eq!(
            json,
            r#"{"change":"sync","key":{"dataset":"sessions","sid":"N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q"}}"#
        );
        assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), change);
        assert!(
            !to_resolve("secret", TokenKind::Refresh)
                .redacted()
                .contains("secret")
        );
    }

    fn token_exchange_event(
        request: &str,
        response: &str,
        basic: Option<&str>,
    ) -> Option<TokenEvent> {
        let mut case = Case::new(Method::POST, "/c2id/token")
            .request(request)
            .response(200, response);
        if let Some(credentials) = basic {
            let value = base64::engine::general_purpose::STANDARD.encode(credentials);
            case = case.header("authorization", &format!("Basic {value}"));
        }
        case.token_event()
    }

    /// A `TokenEvent::Issued` with nothing replaced, kept or remembered.
    fn issued(
        grant_type: &str,
        client_id: &str,
        subject: &str,
        scopes: &[&str],
        access_token: &str,
        expires_in: u64,
        refresh_token: Option<&str>,
    ) -> TokenEvent {
        TokenEvent::Issued {
            grant_type: grant_type.into(),
            client_id: client_id.into(),
            subject: Some(subject.into()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            access_token: access_token.into(),
            expires_in,
            refresh_token: refresh_token.map(str::to_owned),
            refresh_expires_in: None,
            replaced_refresh: None,
            kept_refresh: None,
            issued_by: None,
            client_auth: None,
        }
    }

    #[test]
    fn token_responses_become_authlete_token_events() {
        let jwt = jwt();
        let code = token_exchange_event(
            "grant_type=authorization_code&code=abc&redirect_uri=x",
            &format!(
                r#"{{"access_token":"{jwt}","token_type":"Bearer","expires_in":600,"refresh_token":"rt-1","scope":"openid email"}}"#
            ),
            Some("s6BhdRkqt3:secret"),
        );
        assert_eq!(
            code,
            Some(issued(
                "authorization_code",
                "s6BhdRkqt3",
                "alice",
                &["openid", "email"],
                &jwt,
                600,
                Some("rt-1"),
            ))
        );
        let rotated = token_exchange_event(
            "grant_type=refresh_token&refresh_token=rt-1&client_id=public-app",
            r#"{"access_token":"at-2","expires_in":600,"refresh_token":"rt-2"}"#,
            None,
        )
        .unwrap();
        let TokenEvent::Issued {
            client_id,
            replaced_refresh,
            refresh_token,
            ..
        } = &rotated
        else {
            panic!("{rotated:?}");
        };
        assert_eq!(client_id, "public-app");
        assert_eq!(replaced_refresh.as_deref(), Some("rt-1"));
        assert_eq!(refresh_token.as_deref(), Some("rt-2"));
        assert_eq!(rotated.family(), "tokens:public-app");
        let kept = token_exchange_event(
            "grant_type=refresh_token&refresh_token=rt-1",
            r#"{"access_token":"at-3","expires_in":600}"#,
            Some("app:s"),
        )
        .unwrap();
        let TokenEvent::Issued {
            refresh_token: None,
            replaced_refresh: None,
            kept_refresh: Some(kept_refresh),
            ..
        } = &kept
        else {
            panic!("no rotation: the client keeps the token it sent: {kept:?}");
        };
        assert_eq!(kept_refresh, "rt-1");
        // An echo of the sent token is no new token either: it must not be
        // created again (a duplicate), but kept with the new access token.
        let echoed = token_exchange_event(
            "grant_type=refresh_token&refresh_token=rt-1",
            r#"{"access_token":"at-4","expires_in":600,"refresh_token":"rt-1","refresh_token_expires_in":99}"#,
            Some("app:s"),
        )
        .unwrap();
        let TokenEvent::Issued {
            access_token,
            refresh_token: None,
            replaced_refresh: None,
            kept_refresh: Some(kept_refresh),
            refresh_expires_in: None,
            ..
        } = &echoed
        else {
            panic!("an echoed refresh token is kept, not issued: {echoed:?}");
        };
        assert_eq!(
            (access_token.as_str(), kept_refresh.as_str()),
            ("at-4", "rt-1")
        );
    }

    /// The token event of a JSON exchange at `path` (query included).
    fn json_event(
        method: Method,
        path_and_query: &'static str,
        request: &str,
        response: &str,
    ) -> Option<TokenEvent> {
        Case::new(method, path_and_query)
            .request(request)
            .response(200, response)
            .token_event()
    }

    #[test]
    fn tokens_minted_outside_the_token_endpoint_become_authlete_token_events() {
        let direct = json_event(
            Method::POST,
            "/c2id/direct-authz/rest/v2",
            r#"{"sub":"alice","client_id":"app","scope":["openid","email"],"long_lived":true}"#,
            r#"{"access_token":"at-d","token_type":"Bearer","expires_in":600,"refresh_token":"rt-d","sub_sid":"K.H"}"#,
        );
        assert_eq!(
            direct,
            Some(issued(
                "direct_authz",
                "app",
                "alice",
                &["openid", "email"],
                "at-d",
                600,
                Some("rt-d"),
            ))
        );
        let import = r#"{"sub":"bob","cid":"app","scp":["openid"],"irt":true}"#;
        let tokens =
            r#"{"access_token":"at-s","expires_in":60,"refresh_token":"rt-s","scope":"openid"}"#;
        let stored = json_event(
            Method::POST,
            "/c2id/authz-store/rest/v3/authorizations?return=tokens",
            import,
            tokens,
        )
        .unwrap();
        assert!(
            matches!(&stored, TokenEvent::Issued { subject: Some(s), client_id, refresh_token: Some(r), .. } if s == "bob" && client_id == "app" && r == "rt-s"),
            "{stored:?}"
        );
        assert_eq!(
            json_event(
                Method::POST,
                "/c2id/authz-store/rest/v3/authorizations",
                import,
                r#"{"code":"c"}"#
            ),
            None,
            "a code, no tokens"
        );
        // An implicit or hybrid flow: the tokens are in the redirect URI;
        // an identifier access token is named by the ID token next to it.
        let id_token = format!(
            "eyJhbGciOiJub25lIn0.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"sub":"carol","aud":"spa","iss":"https://op"}"#)
        );
        let hybrid = json_event(
            Method::PUT,
            "/c2id/authz-sessions/rest/v3/XYZ",
            r#"{"scope":["openid"],"long_lived":false}"#,
            &format!(
                r#"{{"type":"response","mode":"fragment","parameters":{{"uri":"https://spa.example/cb#code=c&access_token=at-i&token_type=Bearer&expires_in=300&scope=openid+email&id_token={id_token}"}}}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            hybrid,
            issued(
                "implicit",
                "spa",
                "carol",
                &["openid", "email"],
                "at-i",
                300,
                None
            )
        );
        assert_eq!(
            json_event(
                Method::PUT,
                "/c2id/authz-sessions/rest/v3/XYZ",
                "{}",
                r#"{"type":"response","mode":"query","parameters":{"uri":"https://app.example/cb?code=c&state=s"}}"#,
            ),
            None,
            "a code flow issues no token here"
        );
    }

    #[test]
    fn deleting_an_authorization_revokes_its_tokens_at_authlete() {
        let event = |path_and_query, status| {
            Case::new(Method::DELETE, path_and_query)
                .response(status, "")
                .token_event()
        };
        assert_eq!(
            event(
                "/c2id/authz-store/rest/v3/authorizations?subject=alice&client_id=app",
                204
            ),
            Some(TokenEvent::Revoked {
                client_id: Some("app".into()),
                subject: Some("alice".into()),
                token: None,
            })
        );
        assert_eq!(
            event(
                "/c2id/authz-store/rest/v3/authorizations?subject=alice&client_id=app",
                404
            ),
            None
        );
        assert_eq!(
            event(
                "/c2id/authz-store/rest/v3/authorizations?subject=alice",
                204
            ),
            None
        );
    }

    #[test]
    fn jwt_claims_are_read_without_verification() {
        assert_eq!(
            jwt_subject_and_client(&jwt()),
            Some(("alice".into(), "s6BhdRkqt3".into()))
        );
        assert_eq!(jwt_subject_and_client("not.a.jwt"), None);
        assert_eq!(
            jwt_subject_and_client("2YotnFZFEjr1zCsicMWpAA.uZcHEFTDXTHkRjXgrjIRsA"),
            None
        );
    }
}
