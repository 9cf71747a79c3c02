//! The subject session store API (`/session-store/rest/v2`).
//!
//! A SID is `<key>.<hmac>`: only the key is stored, and every use of a SID
//! recomputes the HMAC with the JWK set's `hmac` key, so a SID with a bad
//! HMAC is simply not found and a server with the same JWK set accepts the
//! same SIDs. `POST` with `SID-Key` imports a session under a preset key.
//!
//! * `GET` with `SID` bumps `last_used` (the idle timer) unless
//!   `?skip_last_used_update=true`; so may an SSO start
//!   (`Strictness::sso_updates_last_used`); `GET` with no selector is the
//!   export, `404` without `Strictness::session_export`;
//! * `POST` keeps a supplied `last_used` leniently and resets it to "now"
//!   strictly (`Strictness::import_resets_last_used`);
//! * at most five sessions per subject: storing a sixth closes the oldest
//!   (by `creation_time`), also on import;
//! * a session past `max_life` or `max_idle` (minutes; new sessions default
//!   to `Strictness::session_max_idle_minutes`) is gone: removed when
//!   touched, by `POST /purge` and by the background purge;
//! * every end of a session (delete, logout, quota, expiry) goes through
//!   `Service::session_ended`, which sends back-channel logouts when on;
//! * `fpt` cannot change after creation.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::records::Session;
use super::seed::{DEFAULT_AUTH_LIFE, DEFAULT_MAX_LIFE};
use super::store::Cursor;
use super::web::{self, ApiError, Form, Reply};
use super::{Api, Req, Service, limits, only};
use crate::http::{Body, empty_response};

impl Service {
    /// Stores a new session (under `key`, or a fresh 256-bit key), filling
    /// in the server defaults; returns its SID and the stored session.
    pub(crate) fn open_session(
        &self,
        mut session: Session,
        key: Option<String>,
    ) -> (String, Session) {
        let now = self.now();
        session.ctx.get_or_insert_with(|| "web".to_owned());
        let created = *session.creation_time.get_or_insert(now);
        session.auth_time.get_or_insert(created);
        session.last_used.get_or_insert(now);
        session.max_life.get_or_insert(DEFAULT_MAX_LIFE);
        session.auth_life.get_or_insert(DEFAULT_AUTH_LIFE);
        session
            .max_idle
            .get_or_insert(self.strict().session_max_idle_minutes);
        let key = key.unwrap_or_else(|| self.keys.random_string::<32>());
        let closed = self.store.put_session(&key, &session);
        if !closed.is_empty() {
            tracing::debug!(
                closed = closed.len(),
                "session quota reached, closed the oldest sessions of the subject"
            );
        }
        for (closed_key, closed_session) in &closed {
            self.session_ended(closed_key, closed_session, "quota");
        }
        (self.keys.keyed(&key), session)
    }

    /// The live session with this SID: its key and the session. An expired
    /// session is deleted on the way (and its end notified).
    pub(crate) fn live_session(&self, sid: &str) -> Option<(String, Session)> {
        let key = self.keys.verify_keyed(sid)?;
        let session = self.store.session(key)?;
        if session.is_expired(self.now()) {
            if let Some(session) = self.store.remove_session(key) {
                self.session_ended(key, &session, "expired");
            }
            return None;
        }
        Some((key.to_owned(), session))
    }

    /// An SSO use of a live session: bumps `last_used` when the strictness
    /// says SSO counts as use (`Strictness::sso_updates_last_used`).
    pub(crate) fn touch_session(&self, key: String, session: Session) -> (String, Session) {
        if !self.strict().sso_updates_last_used {
            return (key, session);
        }
        let now = self.now();
        let touched = self.store.modify_session(&key, |slot| {
            let current = slot.as_mut()?;
            current.last_used = Some(now);
            Some(current.clone())
        });
        (key, touched.unwrap_or(session))
    }

    /// Records that `client_id` received an ID token in the session `sid`,
    /// for its back-channel logout (only when that is on).
    pub(crate) fn record_relying_party(&self, sid: &str, client_id: &str) {
        if !self.strict().backchannel_logout {
            return;
        }
        let Some(key) = self.keys.verify_keyed(sid) else {
            return;
        };
        self.store.modify_session(key, |slot| {
            let Some(session) = slot.as_mut() else {
                return;
            };
            let rps = session
                .extra
                .entry(RELYING_PARTIES.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = rps
                && !list.iter().any(|rp| rp.as_str() == Some(client_id))
            {
                list.push(client_id.into());
            }
        });
    }

    /// Removes every expired session of this tenant; returns how many.
    pub(crate) fn purge_expired_sessions(&self) -> usize {
        let now = self.now();
        let mut expired = Vec::new();
        let mut cursor = Cursor::Start;
        loop {
            let (chunk, next) = self.store.sessions_chunk(&cursor);
            expired.extend(
                chunk
                    .into_iter()
                    .filter(|(_, session)| session.is_expired(now))
                    .map(|(key, _)| key),
            );
            if matches!(next, Cursor::Done) {
                break;
            }
            cursor = next;
        }
        let mut removed = 0;
        for key in expired {
            if let Some(session) = self.store.remove_session(&key) {
                self.session_ended(&key, &session, "expired");
                removed += 1;
            }
        }
        removed
    }

    /// [`Service::purge_expired_sessions`] for every tenant.
    pub(crate) fn purge_all_expired_sessions(self: &Arc<Self>) -> usize {
        self.all_tenants()
            .iter()
            .map(|tenant| tenant.purge_expired_sessions())
            .sum()
    }
}

/// The session member listing the relying parties that received an ID token
/// in it (the name is inferred: the real one is not public).
pub(crate) const RELYING_PARTIES: &str = "rps";

/// The background purge of expired sessions, at the interval the strictness
/// says (`sessionStore.sessionMap.expirationInterval`); the interval is read
/// again after every wait so a change at run time takes effect.
pub(super) async fn reap(service: Arc<Service>, cancel: CancellationToken) {
    loop {
        let interval = service.strict().session_purge_interval_secs;
        let wait = Duration::from_secs(interval.max(1));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if interval > 0 && service.strict().session_purge_interval_secs > 0 {
            let removed = service.purge_all_expired_sessions();
            if removed > 0 {
                tracing::debug!(removed, "purged expired sessions");
            }
        }
    }
}

/// `POST /session-store/rest/v2/purge` (RN 14.7): purges the expired
/// sessions now (form `sessions`, default true) and answers `204`.
pub(super) async fn purge(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::SessionStore)?;
    only(&req, &Method::POST)?;
    let body = req.body(limits::OTHER).await?;
    let form = Form::parse_bytes(&body)?;
    if form.get("sessions") != Some("false") {
        service.purge_expired_sessions();
    }
    Ok(empty_response(StatusCode::NO_CONTENT))
}

fn not_found() -> ApiError {
    ApiError::not_found("not_found", "Not found: no such session")
}

/// The key of the `SID` header's session.
fn sid_header(req: &Req) -> Option<&str> {
    web::header_str(&req.headers, "sid")
}

/// `/session-store/rest/v2/sessions`.
pub(super) async fn sessions(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::SessionStore)?;
    match req.method {
        Method::POST => {
            let body = req.body(limits::OTHER).await?;
            create(service, &req, &body)
        }
        Method::GET => get(service, &req),
        Method::PUT => {
            let body = req.body(limits::OTHER).await?;
            update(service, &req, &body)
        }
        Method::DELETE => delete(service, &req),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_session(body: &[u8]) -> Result<Session, ApiError> {
    let session: Session = serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid_request(format!("Invalid session: {err}")))?;
    if session.sub.is_empty() {
        return Err(ApiError::invalid_request("Invalid session: empty sub"));
    }
    Ok(session)
}

/// `POST /sessions`: create, or import with `SID-Key`. A supplied
/// `last_used` is kept leniently and replaced by "now" strictly
/// (`Strictness::import_resets_last_used`).
fn create(service: &Service, req: &Req, body: &[u8]) -> Reply {
    let mut session = parse_session(body)?;
    if service.strict().import_resets_last_used {
        session.last_used = None;
    }
    let key = match web::header_str(&req.headers, "sid-key") {
        Some(key) if key.contains('.') || key.contains(char::is_whitespace) => {
            return Err(ApiError::invalid_request(
                "Invalid SID-Key: must be a SID without its HMAC",
            ));
        }
        Some(key) => Some(key.to_owned()),
        None => None,
    };
    let (sid, _) = service.open_session(session, key);
    web::json_with(StatusCode::CREATED, &json!({ "sid": sid }))
}

fn get(service: &Arc<Service>, req: &Req) -> Reply {
    let now = service.now();
    if let Some(sid) = sid_header(req) {
        let Some((key, _)) = service.live_session(sid) else {
            return Err(not_found());
        };
        let skip = req.query.flag("skip_last_used_update");
        let session = service.store.modify_session(&key, |slot| {
            let session = slot.as_mut()?;
            if !skip {
                session.last_used = Some(now);
            }
            Some(session.clone())
        });
        return match session {
            Some(session) => web::ok_json(&json!(session)),
            None => Err(not_found()),
        };
    }
    if let Some(subject) = req.query.get("subject") {
        let ctx = req.query.get("ctx");
        let mut out = Map::new();
        for (key, session) in service.store.sessions_of_subject(subject) {
            if session.is_expired(now) || ctx.is_some_and(|ctx| session.ctx.as_deref() != Some(ctx))
            {
                continue;
            }
            out.insert(service.keys.keyed(&key), json!(session));
        }
        return web::ok_json(&Value::Object(out));
    }
    if !service.strict().session_export {
        return Err(not_found());
    }
    Ok(export(service))
}

/// `PUT /sessions` with `SID`: updates the session. `creation_time` and
/// `fpt` are kept; absent fields keep their current values.
fn update(service: &Service, req: &Req, body: &[u8]) -> Reply {
    let Some((key, _)) = sid_header(req).and_then(|sid| service.live_session(sid)) else {
        return Err(not_found());
    };
    let given = parse_session(body)?;
    let now = service.now();
    let outcome = service.store.modify_session(&key, |slot| {
        let Some(current) = slot.as_mut() else {
            return Err(not_found());
        };
        if given.fpt.is_some() && given.fpt != current.fpt {
            return Err(ApiError::invalid_request(
                "Invalid session: fpt cannot change",
            ));
        }
        let mut next = given.clone();
        next.creation_time = current.creation_time;
        next.fpt = current.fpt.clone();
        next.ctx = next.ctx.or_else(|| current.ctx.clone());
        next.acr = next.acr.or_else(|| current.acr.clone());
        next.amr = next.amr.or_else(|| current.amr.clone());
        next.auth_time = next.auth_time.or(current.auth_time);
        next.max_life = next.max_life.or(current.max_life);
        next.auth_life = next.auth_life.or(current.auth_life);
        next.max_idle = next.max_idle.or(current.max_idle);
        next.claims = next.claims.or_else(|| current.claims.clone());
        next.data = next.data.or_else(|| current.data.clone());
        next.jkt = next.jkt.or_else(|| current.jkt.clone());
        for (name, value) in &current.extra {
            next.extra
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
        next.last_used = Some(now);
        *current = next;
        Ok(())
    });
    outcome.map(|()| empty_response(StatusCode::NO_CONTENT))
}

/// `DELETE /sessions` with `SID`, or `?subject=` for all of a subject's
/// sessions (answered with them, or `204` with `?quiet=true`).
fn delete(service: &Service, req: &Req) -> Reply {
    if let Some(sid) = sid_header(req) {
        let Some(key) = service.keys.verify_keyed(sid) else {
            return Err(not_found());
        };
        return match service.store.remove_session(key) {
            Some(session) => {
                service.session_ended(key, &session, "deleted");
                Ok(empty_response(StatusCode::NO_CONTENT))
            }
            None => Err(not_found()),
        };
    }
    let Some(subject) = req.query.get("subject") else {
        return Err(ApiError::invalid_request(
            "Missing SID header or subject parameter",
        ));
    };
    let mut removed = Map::new();
    for (key, _) in service.store.sessions_of_subject(subject) {
        if let Some(session) = service.store.remove_session(&key) {
            service.session_ended(&key, &session, "deleted");
            removed.insert(service.keys.keyed(&key), json!(session));
        }
    }
    if req.query.flag("quiet") {
        return Ok(empty_response(StatusCode::NO_CONTENT));
    }
    web::ok_json(&Value::Object(removed))
}

/// `PUT /sessions/subject-auth-life` with `SID` and `{"auth_life": minutes}`.
pub(super) async fn auth_life(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::SessionStore)?;
    only(&req, &Method::PUT)?;
    let body = req.body(limits::OTHER).await?;
    let body = web::parse_object(&body)?;
    let Some(minutes) = body.get("auth_life").and_then(Value::as_i64) else {
        return Err(ApiError::invalid_request("Missing or invalid auth_life"));
    };
    let Some((key, _)) = sid_header(&req).and_then(|sid| service.live_session(sid)) else {
        return Err(not_found());
    };
    // 0 means the configured default.
    let minutes = if minutes == 0 {
        DEFAULT_AUTH_LIFE
    } else {
        minutes
    };
    let updated = service.store.modify_session(&key, |slot| {
        slot.as_mut()
            .map(|session| session.auth_life = Some(minutes))
    });
    match updated {
        Some(()) => Ok(empty_response(StatusCode::NO_CONTENT)),
        None => Err(not_found()),
    }
}

/// Streams every live session as one JSON object keyed by SID.
pub(super) fn export(service: &Arc<Service>) -> http::Response<Body> {
    let service = service.clone();
    web::stream_export(b"{", b"}", move |cursor: &Cursor<String>| {
        let now = service.now();
        let (chunk, next) = service.store.sessions_chunk(cursor);
        let items = chunk
            .into_iter()
            .filter(|(_, session)| !session.is_expired(now))
            .map(|(key, session)| {
                format!(
                    "{}:{}",
                    Value::String(service.keys.keyed(&key)),
                    json!(session)
                )
            })
            .collect();
        (items, next)
    })
}
