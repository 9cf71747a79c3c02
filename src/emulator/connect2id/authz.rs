//! The login-page integration APIs: authorization sessions
//! (`/authz-sessions/rest/v3`), direct authorization
//! (`/direct-authz/rest/v2`) and logout sessions
//! (`/logout-sessions/rest/v1`), all guarded by the authz-sessions token.
//!
//! An authorization session walks `auth` → `consent` → `response`:
//! subject authentication creates a subject session in the session store;
//! an SSO start that finds the `sub_sid` session may bump its `last_used`
//! (`Strictness::sso_updates_last_used`); a `request_uri` from `/par` stands
//! in for the request;
//! the consent issues a single-use code (10 minutes) that carries the grant.
//! A long-lived consent is persisted in the authz store only when the code
//! is redeemed at `/token`. Non-redirectable request errors (unknown client,
//! bad redirect URI) answer `200` with `{"type": "error", ...}`; the others
//! redirect with `error=` like the real server.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::clients::ClientInfo;
use super::records::Session;
use super::tokens::{AuthInfo, GrantSpec, issue_code};
use super::web::{self, ApiError, Form, Reply, append_query};
use super::{Api, Expiring, Req, Service, limits, only};
use crate::http::empty_response;

/// How long an authorization or logout session waits for the login page.
const INTERACTION_LIFETIME: u64 = 30 * 60;

/// The subject of an authorization session: its subject session.
#[derive(Debug, Clone)]
struct Subject {
    sid: String,
    session: Session,
}

/// An authorization request in progress.
#[derive(Debug, Clone)]
pub(crate) struct AuthzSession {
    expires: u64,
    client_id: String,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    nonce: Option<String>,
    scope: Vec<String>,
    claims: Vec<String>,
    code_challenge: Option<(String, String)>,
    auth_req: Value,
    subject: Option<Subject>,
    prompt: Value,
}

impl Expiring for AuthzSession {
    fn expires(&self) -> u64 {
        self.expires
    }
}

/// A logout request in progress.
#[derive(Debug, Clone)]
pub(crate) struct LogoutSession {
    expires: u64,
    sid: String,
    end_uri: Option<String>,
    prompt: Value,
}

impl Expiring for LogoutSession {
    fn expires(&self) -> u64 {
        self.expires
    }
}

/// The start of an authorization or logout session.
#[derive(Debug, Deserialize)]
struct Start {
    query: String,
    #[serde(default)]
    sub_sid: Option<String>,
}

/// The claims implied by the standard OpenID scope values.
fn claims_of_scope(scope: &[String]) -> Vec<String> {
    let mut claims = Vec::new();
    for value in scope {
        let names: &[&str] = match value.as_str() {
            "email" => &["email", "email_verified"],
            "profile" => &[
                "name",
                "family_name",
                "given_name",
                "middle_name",
                "nickname",
                "preferred_username",
                "profile",
                "picture",
                "website",
                "gender",
                "birthdate",
                "zoneinfo",
                "locale",
                "updated_at",
            ],
            "address" => &["address"],
            "phone" => &["phone_number", "phone_number_verified"],
            _ => &[],
        };
        claims.extend(names.iter().map(|name| (*name).to_owned()));
    }
    claims
}

/// The `sub_session` member of prompts: the session plus its SID.
pub(crate) fn sub_session_json(sid: &str, session: &Session) -> Value {
    let mut value = json!(session);
    if let Some(object) = value.as_object_mut() {
        object.insert("sid".to_owned(), sid.into());
    }
    value
}

fn prompt_error(error: &str, description: &str) -> Value {
    json!({ "type": "error", "error": error, "error_description": description })
}

fn redirect_response(uri: String) -> Value {
    json!({ "type": "response", "mode": "query", "parameters": { "uri": uri } })
}

/// `POST /authz-sessions/rest/v3`.
pub(super) async fn start_authz(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::AuthzSessions)?;
    only(&req, &Method::POST)?;
    let body = req.body(limits::OTHER).await?;
    let start: Start = web::parse_json(&body)?;
    web::ok_json(&begin(service, &start))
}

/// Validates the authorization request and opens the session.
fn begin(service: &Service, start: &Start) -> Value {
    let mut query = Form::parse(&start.query);
    let Some(client_id) = query.get("client_id").map(str::to_owned) else {
        return prompt_error("invalid_request", "Missing client_id parameter");
    };
    // A pushed request (PAR, RFC 9126) stands in for the whole query: it is
    // single use (RN 12.18) and bound to the client that pushed it.
    let pushed_uri = query
        .get("request_uri")
        .filter(|uri| uri.starts_with(super::par::REQUEST_URI_PREFIX))
        .map(str::to_owned);
    if let Some(uri) = pushed_uri {
        match service.take_pushed(&uri, &client_id) {
            Some(pushed) => query = pushed,
            None => {
                return prompt_error(
                    "invalid_request_uri",
                    "Invalid or expired pushed authorization request URI",
                );
            }
        }
    }
    let client_id = client_id.as_str();
    let Some(stored) = service.store.client(client_id) else {
        return prompt_error("invalid_client", "Invalid client_id: client not registered");
    };
    let client = ClientInfo::parse(&stored.info);
    let (redirect_uri, redirect_uri_given) = match query.get("redirect_uri") {
        Some(uri)
            if client
                .redirect_uris
                .iter()
                .any(|registered| registered == uri) =>
        {
            (uri.to_owned(), true)
        }
        Some(_) => {
            return prompt_error(
                "invalid_request",
                "Invalid redirect_uri: not registered for the client",
            );
        }
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => return prompt_error("invalid_request", "Missing redirect_uri parameter"),
    };
    let state = query.get("state").map(str::to_owned);
    let redirect_error = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(state) = &state {
            params.push(("state", state));
        }
        redirect_response(append_query(&redirect_uri, &params))
    };
    match query.get("response_type") {
        Some("code") if client.response_types.iter().any(|rt| rt == "code") => {}
        Some("code") => {
            return redirect_error(
                "unauthorized_client",
                "The client is not registered for response_type code",
            );
        }
        Some(_) => return redirect_error("unsupported_response_type", "Unsupported response_type"),
        None => return redirect_error("invalid_request", "Missing response_type parameter"),
    }
    if !client.allows_grant("authorization_code") {
        return redirect_error(
            "unauthorized_client",
            "The client is not registered for the authorization_code grant",
        );
    }
    let mut scope: Vec<String> = query
        .get("scope")
        .map(|scope| scope.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(allowed) = client.scope_values() {
        // Scope values the client did not register are dropped.
        scope.retain(|value| allowed.contains(value));
    }
    let code_challenge = match (
        query.get("code_challenge"),
        query.get("code_challenge_method"),
    ) {
        (None, _) => None,
        (Some(challenge), None | Some("plain")) => Some((challenge.to_owned(), "plain".to_owned())),
        (Some(challenge), Some("S256")) => Some((challenge.to_owned(), "S256".to_owned())),
        (Some(_), Some(_)) => {
            return redirect_error("invalid_request", "Unsupported code_challenge_method");
        }
    };
    let prompts: Vec<&str> = query
        .get("prompt")
        .map(|prompt| prompt.split_whitespace().collect())
        .unwrap_or_default();
    let now = service.now();
    let max_age: Option<u64> = query.get("max_age").and_then(|age| age.parse().ok());
    let subject = start
        .sub_sid
        .as_deref()
        .and_then(|sid| service.live_session(sid))
        .map(|(key, session)| service.touch_session(key, session))
        .filter(|(_, session)| !session.is_auth_expired(now))
        .filter(|(_, session)| {
            max_age.is_none_or(|age| now <= session.auth_time.unwrap_or(0).saturating_add(age))
        })
        .filter(|_| !prompts.contains(&"login"))
        .map(|(key, session)| Subject {
            sid: service.keys.keyed(&key),
            session,
        });
    if subject.is_none() && prompts.contains(&"none") {
        return redirect_error("login_required", "Login required");
    }
    let sid = service.keys.random_string::<32>();
    let mut session = AuthzSession {
        expires: now + INTERACTION_LIFETIME,
        client_id: client.client_id.clone(),
        redirect_uri,
        redirect_uri_given,
        state,
        nonce: query.get("nonce").map(str::to_owned),
        claims: claims_of_scope(&scope),
        scope,
        code_challenge,
        auth_req: query.to_json(),
        subject,
        prompt: Value::Null,
    };
    session.prompt = if session.subject.is_some() {
        consent_prompt(service, &session, &sid, &client)
    } else {
        json!({
            "type": "auth",
            "sid": sid,
            "display": "page",
            "select_account": false,
            "client": client.summary(),
            "auth_req": session.auth_req,
        })
    };
    let prompt = session.prompt.clone();
    service.authz_sessions.insert(sid, session, now);
    prompt
}

/// The consent prompt: what the client asks for, split into what a
/// persisted long-lived authorization already covers and what is new.
fn consent_prompt(
    service: &Service,
    session: &AuthzSession,
    sid: &str,
    client: &ClientInfo,
) -> Value {
    let Some(subject) = &session.subject else {
        return Value::Null;
    };
    let existing = service
        .store
        .authorization(&subject.session.sub, &session.client_id);
    let (consented_scope, consented_claims) = existing
        .map(|record| {
            (
                record.scp.unwrap_or_default(),
                record.clm.unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let split = |requested: &[String], consented: &[String]| -> (Vec<String>, Vec<String>) {
        requested
            .iter()
            .cloned()
            .partition(|value| !consented.contains(value))
    };
    let (new_scope, old_scope) = split(&session.scope, &consented_scope);
    let (new_claims, old_claims) = split(&session.claims, &consented_claims);
    json!({
        "type": "consent",
        "sid": sid,
        "display": "page",
        "sub_session": sub_session_json(&subject.sid, &subject.session),
        "client": client.summary(),
        "scope": { "new": new_scope, "consented": old_scope },
        "claims": {
            "new": { "essential": [], "voluntary": new_claims },
            "consented": { "essential": [], "voluntary": old_claims },
        },
        "auth_req": session.auth_req,
    })
}

/// Subject authentication submitted by the login page.
#[derive(Debug, Deserialize)]
struct SubjectAuth {
    sub: String,
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    amr: Option<Vec<String>>,
    #[serde(default)]
    auth_time: Option<u64>,
    #[serde(default)]
    claims: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    ctx: Option<String>,
}

/// `GET`, `PUT` and `DELETE /authz-sessions/rest/v3/{sid}`.
pub(super) async fn authz_session(service: &Arc<Service>, mut req: Req, sid: &str) -> Reply {
    service.require(&req.headers, Api::AuthzSessions)?;
    let now = service.now();
    let Some(mut session) = service.authz_sessions.get(sid, now) else {
        return Err(ApiError::not_found(
            "invalid_session",
            "Invalid authorization session ID",
        ));
    };
    match req.method {
        Method::GET => web::ok_json(&session.prompt),
        Method::DELETE => {
            service.authz_sessions.remove(sid);
            let error = req.query.get("error").unwrap_or("access_denied").to_owned();
            let description = req
                .query
                .get("error_description")
                .unwrap_or("Access denied by resource owner or authorization server")
                .to_owned();
            let mut params = vec![
                ("error", error.as_str()),
                ("error_description", description.as_str()),
            ];
            if let Some(state) = &session.state {
                params.push(("state", state));
            }
            web::ok_json(&redirect_response(append_query(
                &session.redirect_uri,
                &params,
            )))
        }
        Method::PUT => {
            let body = req.body(limits::OTHER).await?;
            let body = web::parse_object(&body)?;
            let Some(stored) = service.store.client(&session.client_id) else {
                service.authz_sessions.remove(sid);
                return web::ok_json(&prompt_error(
                    "invalid_client",
                    "The client is no longer registered",
                ));
            };
            let client = ClientInfo::parse(&stored.info);
            if body.contains_key("sub") {
                authenticate_subject(service, sid, &mut session, &client, body, now)
            } else {
                consent(service, sid, &session, body)
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Subject authentication: opens a subject session and moves on to the
/// consent prompt.
fn authenticate_subject(
    service: &Service,
    sid: &str,
    session: &mut AuthzSession,
    client: &ClientInfo,
    body: Map<String, Value>,
    now: u64,
) -> Reply {
    let auth: SubjectAuth = serde_json::from_value(Value::Object(body)).map_err(|err| {
        ApiError::invalid_request(format!("Invalid subject authentication: {err}"))
    })?;
    if auth.sub.is_empty() {
        return Err(ApiError::invalid_request(
            "Invalid subject authentication: empty sub",
        ));
    }
    let subject_session = Session {
        sub: auth.sub,
        ctx: auth.ctx,
        acr: auth.acr,
        amr: auth.amr,
        auth_time: auth.auth_time,
        claims: auth.claims,
        data: auth.data,
        ..Session::default()
    };
    let (subject_sid, subject_session) = service.open_session(subject_session, None);
    session.subject = Some(Subject {
        sid: subject_sid,
        session: subject_session,
    });
    session.prompt = consent_prompt(service, session, sid, client);
    let prompt = session.prompt.clone();
    service
        .authz_sessions
        .insert(sid.to_owned(), session.clone(), now);
    web::ok_json(&prompt)
}

/// The consent: issues the code and ends the authorization session.
fn consent(
    service: &Service,
    sid: &str,
    session: &AuthzSession,
    body: Map<String, Value>,
) -> Reply {
    let Some(subject) = &session.subject else {
        return Err(ApiError::invalid_request(
            "Consent before subject authentication",
        ));
    };
    let spec: GrantSpec = serde_json::from_value(Value::Object(body))
        .map_err(|err| ApiError::invalid_request(format!("Invalid consent: {err}")))?;
    let mut grant = spec.into_grant(
        &subject.session.sub,
        &session.client_id,
        &session.scope,
        &session.claims,
        service.strict().default_rotate,
    )?;
    grant.auth = Some(AuthInfo {
        sid: Some(subject.sid.clone()),
        auth_time: subject.session.auth_time,
        acr: subject.session.acr.clone(),
        amr: subject.session.amr.clone(),
    });
    grant.nonce = session.nonce.clone();
    let code = issue_code(
        service,
        grant,
        true,
        session
            .redirect_uri_given
            .then(|| session.redirect_uri.clone()),
        session.code_challenge.clone(),
    );
    service.authz_sessions.remove(sid);
    let mut params = vec![("code", code.as_str())];
    if let Some(state) = &session.state {
        params.push(("state", state));
    }
    let mut response = redirect_response(append_query(&session.redirect_uri, &params));
    response["sub_sid"] = subject.sid.clone().into();
    web::ok_json(&response)
}

/// A direct authorization request.
#[derive(Debug, Deserialize)]
struct DirectRequest {
    sub: String,
    client_id: String,
    #[serde(default)]
    sub_session: Option<Map<String, Value>>,
    #[serde(default)]
    sub_sid: Option<String>,
    #[serde(flatten)]
    spec: GrantSpec,
}

/// `POST /direct-authz/rest/v2`: tokens without user interaction,
/// optionally opening a subject session.
pub(super) async fn direct(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::AuthzSessions)?;
    only(&req, &Method::POST)?;
    let body = req.body(limits::OTHER).await?;
    let request: DirectRequest = web::parse_json(&body)?;
    let Some(stored) = service.store.client(&request.client_id) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Invalid client_id: client not registered",
        ));
    };
    let client = ClientInfo::parse(&stored.info);
    let mut grant = request.spec.into_grant(
        &request.sub,
        &request.client_id,
        &[],
        &[],
        service.strict().default_rotate,
    )?;
    let subject = if let Some(mut fields) = request.sub_session {
        match fields.get("sub") {
            None => {
                fields.insert("sub".to_owned(), request.sub.clone().into());
            }
            Some(Value::String(sub)) if *sub == request.sub => {}
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "Invalid sub_session: sub differs from the authorized subject",
                ));
            }
        }
        let session: Session = serde_json::from_value(Value::Object(fields))
            .map_err(|err| ApiError::invalid_request(format!("Invalid sub_session: {err}")))?;
        Some(service.open_session(session, None))
    } else {
        request
            .sub_sid
            .as_deref()
            .and_then(|sid| service.live_session(sid))
            .filter(|(_, session)| session.sub == request.sub)
            .map(|(key, session)| service.touch_session(key, session))
            .map(|(key, session)| (service.keys.keyed(&key), session))
    };
    if let Some((sid, session)) = &subject {
        grant.auth = Some(AuthInfo {
            sid: Some(sid.clone()),
            auth_time: session.auth_time,
            acr: session.acr.clone(),
            amr: session.amr.clone(),
        });
    }
    let mut response = service.authorize(&grant, &client, true)?;
    if let Some((sid, _)) = subject {
        response["sub_sid"] = sid.into();
    }
    web::ok_json(&response)
}

/// `POST /logout-sessions/rest/v1`.
pub(super) async fn start_logout(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::AuthzSessions)?;
    only(&req, &Method::POST)?;
    let body = req.body(limits::OTHER).await?;
    let start: Start = web::parse_json(&body)?;
    let query = Form::parse(&start.query);
    let end_uri = query
        .get("post_logout_redirect_uri")
        .map(|uri| match query.get("state") {
            Some(state) => append_query(uri, &[("state", state)]),
            None => uri.to_owned(),
        });
    let subject = start
        .sub_sid
        .as_deref()
        .and_then(|sid| service.live_session(sid));
    let Some((key, session)) = subject else {
        let mut end = json!({ "type": "end" });
        if let Some(uri) = end_uri {
            end["post_logout_redirect_uri"] = uri.into();
        }
        return web::ok_json(&end);
    };
    let now = service.now();
    let sid = service.keys.random_string::<32>();
    let subject_sid = service.keys.keyed(&key);
    let prompt = json!({
        "type": "confirm",
        "sid": sid,
        "display": "page",
        "sub_session": sub_session_json(&subject_sid, &session),
    });
    let logout = LogoutSession {
        expires: now + INTERACTION_LIFETIME,
        sid: subject_sid,
        end_uri,
        prompt: prompt.clone(),
    };
    service.logout_sessions.insert(sid, logout, now);
    web::ok_json(&prompt)
}

/// The logout confirmation.
#[derive(Debug, Deserialize)]
struct Confirm {
    #[serde(default)]
    confirm_logout: bool,
}

/// `GET`, `PUT` and `DELETE /logout-sessions/rest/v1/{sid}`.
pub(super) async fn logout_session(service: &Arc<Service>, mut req: Req, sid: &str) -> Reply {
    service.require(&req.headers, Api::AuthzSessions)?;
    let now = service.now();
    let Some(logout) = service.logout_sessions.get(sid, now) else {
        return Err(ApiError::not_found(
            "invalid_session",
            "Invalid logout session ID",
        ));
    };
    match req.method {
        Method::GET => web::ok_json(&logout.prompt),
        Method::DELETE => {
            service.logout_sessions.remove(sid);
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Method::PUT => {
            let body = req.body(limits::OTHER).await?;
            let confirm: Confirm = web::parse_json(&body)?;
            service.logout_sessions.remove(sid);
            let mut end = json!({ "type": "end" });
            if confirm.confirm_logout
                && let Some(key) = service.keys.verify_keyed(&logout.sid)
                && let Some(session) = service.store.remove_session(key)
            {
                service.session_ended(key, &session, "logout");
                end["sub_session"] = sub_session_json(&logout.sid, &session);
                end["frontchannel_logout_uris"] = json!([]);
            }
            if let Some(uri) = logout.end_uri {
                end["post_logout_redirect_uri"] = uri.into();
            }
            web::ok_json(&end)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}
