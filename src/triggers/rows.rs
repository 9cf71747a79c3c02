//! The catalogue's row functions: each a pure function from one kind of
//! exchange to the changes it made (and, for a target that learns tokens
//! from their values, the token event).

use serde_json::Value;

use super::parse::{
    authorization, authorization_of_tokens, client_auth_of, client_of, created_sid, form_body,
    header, id_token_sid, id_token_subject_and_client, jwt_subject, jwt_subject_and_client, query,
    request_json, response_json, response_sid, session, string_field,
};
use super::{Input, LogoutHint, Outcome};
use crate::http::form;
use crate::model::{Change, Key, TokenEvent};

pub(super) fn client_created(input: &Input<'_>) -> Outcome {
    let client_id = response_json(input).and_then(|v| string_field(&v, "client_id"));
    Outcome::of(
        client_id
            .map(|client_id| Change::sync(Key::Client { client_id }))
            .into_iter()
            .collect(),
    )
}

pub(super) fn client_in_path(input: &Input<'_>) -> Outcome {
    Outcome::of(
        input
            .captures
            .first()
            .map(|client_id| {
                Change::sync(Key::Client {
                    client_id: client_id.clone(),
                })
            })
            .into_iter()
            .collect(),
    )
}

pub(super) fn authz_session_step(input: &Input<'_>) -> Outcome {
    let Some(response) = response_json(input) else {
        return Outcome::default();
    };
    let mut changes: Vec<Change> = response_sid(&response).map(session).into_iter().collect();
    // An implicit or hybrid flow with a long-lived consent persists the
    // authorization at the end of the authorization endpoint (spec §4.1):
    // the tokens are in the redirect URI.
    let long_lived = request_json(input)
        .and_then(|v| v.get("long_lived").and_then(Value::as_bool))
        .unwrap_or(false);
    if long_lived && response.get("type").and_then(Value::as_str) == Some("response") {
        changes.extend(authorization_of_redirect(&response));
    }
    Outcome::of(changes)
}

/// `POST /authz-sessions/rest/v3`, the start of an authorization session.
/// Three side effects on a real server (spec §4.1, domain-gaps Q1.6):
///
/// - a `sub_sid` the server found is an SSO use of that session: its
///   last-used time moved (a *use*, coalesced by the hook);
/// - a request that needs no interaction (persisted consent, implicit or
///   hybrid flow) is answered at once with tokens in the redirect URI, from
///   the long-lived authorization;
/// - a client identified by an OpenID Federation entity ID is registered
///   on first use (automatic registration, RN 10.1).
pub(super) fn authz_session_start(input: &Input<'_>) -> Outcome {
    let Some(response) = response_json(input) else {
        return Outcome::default();
    };
    let kind = response.get("type").and_then(Value::as_str);
    if kind == Some("error") {
        return Outcome::default();
    }
    let request = request_json(input);
    let mut outcome = Outcome::default();
    if let Some(sub_sid) = request.as_ref().and_then(|r| string_field(r, "sub_sid")) {
        // The server names the session it found; without it (a redirect
        // answered at once) the one the login page passed.
        let sid = response_sid(&response).unwrap_or(sub_sid);
        outcome.used.push(Key::Session { sid });
    }
    if kind == Some("response") {
        outcome.changes.extend(authorization_of_redirect(&response));
    }
    let client_id = request
        .as_ref()
        .and_then(|r| string_field(r, "query"))
        .and_then(|query| form::first(&form::parse(&query), "client_id").map(str::to_owned))
        .filter(|id| id.starts_with("https://"));
    if let Some(client_id) = client_id {
        outcome.used.push(Key::Client { client_id });
    }
    outcome
}

/// `GET /session-store/rest/v2/sessions` of one session (`SID` header)
/// without `skip_last_used_update=true`: a use of the session (RN 15.3).
pub(super) fn session_read(input: &Input<'_>) -> Outcome {
    let skipped = form::first(&query(input), "skip_last_used_update") == Some("true");
    let mut outcome = Outcome::default();
    if !skipped && let Some(sid) = header(input.exchange.request_headers, "sid") {
        outcome.used.push(Key::Session { sid });
    }
    outcome
}

/// The authorization behind tokens returned in a redirect URI (implicit or
/// hybrid flow: in the fragment, or the query for `response_mode=query`).
fn authorization_of_redirect(response: &Value) -> Option<Change> {
    let uri = response
        .get("parameters")
        .and_then(|p| p.get("uri"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let params = uri
        .split_once(['#', '?'])
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let pairs = form::parse(params);
    authorization_of_tokens(
        form::first(&pairs, "access_token"),
        form::first(&pairs, "refresh_token"),
    )
}

/// Grants whose success may create or update a long-lived authorization
/// (spec §4.1 (b)).
const AUTHORIZATION_GRANTS: [&str; 7] = [
    "authorization_code",
    "refresh_token",
    "password",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:openid:params:grant-type:ciba",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
];

pub(super) fn token_issued(input: &Input<'_>) -> Outcome {
    let request = form_body(input.exchange.request_body);
    let Some(grant) = form::first(&request, "grant_type") else {
        return Outcome::default();
    };
    if !AUTHORIZATION_GRANTS.contains(&grant) {
        return Outcome::default();
    }
    // Without a readable response (too large, cut off, malformed) a
    // refresh still names its authorization by the token it sent.
    let response = response_json(input);
    let access = response
        .as_ref()
        .and_then(|r| r.get("access_token"))
        .and_then(Value::as_str);
    // A rotated refresh token is in the response; without rotation the
    // client keeps the one it sent.
    let refresh = response
        .as_ref()
        .and_then(|r| r.get("refresh_token"))
        .and_then(Value::as_str)
        .or_else(|| {
            (grant == "refresh_token")
                .then(|| form::first(&request, "refresh_token"))
                .flatten()
        });
    let mut changes: Vec<Change> = authorization_of_tokens(access, refresh)
        .into_iter()
        .collect();
    // The first ID token a client gets in a session (a code redeemed)
    // makes it one of the session's relying parties, recorded on the
    // session for back-channel logout (spec §6.4): the session changed.
    // Later refreshes add nothing.
    if grant == "authorization_code"
        && let Some(sid) = response
            .as_ref()
            .and_then(|r| r.get("id_token"))
            .and_then(Value::as_str)
            .and_then(id_token_sid)
    {
        changes.push(session(sid));
    }
    // Native SSO (RN 16.0): a `device_secret` in the answer means the
    // server opened a device session for the subject, which only a session
    // listing names (its SID is not on the exchange).
    if response
        .as_ref()
        .is_some_and(|r| r.get("device_secret").is_some())
        && let Some(subject) = access.and_then(jwt_subject).or_else(|| {
            response
                .as_ref()?
                .get("id_token")
                .and_then(Value::as_str)
                .and_then(jwt_subject)
        })
    {
        changes.push(Change::SubjectSessions { subject });
    }
    Outcome::of(changes)
}

pub(super) fn token_revoked(input: &Input<'_>) -> Outcome {
    let request = form_body(input.exchange.request_body);
    let Some((subject, client_id)) = input.resolved.authorization.clone() else {
        // No record to re-read: a self-contained token (the primary
        // journaled a revocation no export carries), a native SSO
        // `device_secret` (its device session ended), or a token unknown
        // to the primary. Revoking mints nothing: replay the request at the
        // secondary (a no-op there for an unknown token).
        return Outcome::of(vec![Change::RevokeToken {
            client_id: client_of(input.exchange.request_headers, &request),
            form: String::from_utf8_lossy(input.exchange.request_body).into_owned(),
            authorization: header(input.exchange.request_headers, "authorization"),
        }]);
    };
    let mut changes = Vec::new();
    // 19.9+: `token_only=true` revokes just that refresh token; the record
    // stays (and is re-read).
    if form::first(&request, "token_only") != Some("true") {
        changes.push(Change::Revocation {
            subject: Some(subject.clone()),
            client_id: Some(client_id.clone()),
            actor: None,
            timestamp: input.now,
        });
    }
    changes.push(authorization(subject, client_id));
    Outcome::of(changes)
}

pub(super) fn direct_authz(input: &Input<'_>) -> Outcome {
    let request = request_json(input);
    let response = response_json(input);
    let mut changes = Vec::new();
    let from_request = request.as_ref().and_then(|r| {
        let subject = string_field(r, "sub")?;
        let client_id = string_field(r, "client_id")?;
        Some(authorization(subject, client_id))
    });
    let change = from_request.or_else(|| {
        let response = response.as_ref()?;
        authorization_of_tokens(
            response.get("access_token").and_then(Value::as_str),
            response.get("refresh_token").and_then(Value::as_str),
        )
    });
    changes.extend(change);
    if let Some(sid) = response.as_ref().and_then(response_sid) {
        changes.push(session(sid));
    }
    Outcome::of(changes)
}

pub(super) fn authz_in_body(input: &Input<'_>) -> Outcome {
    let key = request_json(input).and_then(|body| {
        let subject = string_field(&body, "sub")?;
        let client_id = string_field(&body, "cid")?;
        Some(authorization(subject, client_id))
    });
    Outcome::of(key.into_iter().collect())
}

pub(super) fn authz_in_query(input: &Input<'_>) -> Outcome {
    let pairs = query(input);
    let key = form::first(&pairs, "subject")
        .zip(form::first(&pairs, "client_id"))
        .map(|(subject, client_id)| authorization(subject.to_owned(), client_id.to_owned()));
    Outcome::of(key.into_iter().collect())
}

pub(super) fn authz_store_revocation(input: &Input<'_>) -> Outcome {
    // Form parameters, possibly in the query too.
    let mut pairs = form_body(input.exchange.request_body);
    pairs.extend(query(input));
    let field = |name| {
        form::first(&pairs, name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let subject = field("subject");
    let client_id = field("client_id");
    let actor = field("actor");
    if subject.is_none() && client_id.is_none() && actor.is_none() {
        return Outcome::default();
    }
    let timestamp = field("timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(input.now);
    let mut changes = vec![Change::Revocation {
        subject: subject.clone(),
        client_id: client_id.clone(),
        actor,
        timestamp,
    }];
    if let (Some(subject), Some(client_id)) = (subject, client_id) {
        changes.push(authorization(subject, client_id));
    }
    Outcome::of(changes)
}

pub(super) fn session_created(input: &Input<'_>) -> Outcome {
    Outcome::of(
        created_sid(input.exchange.response_body)
            .map(session)
            .into_iter()
            .collect(),
    )
}

pub(super) fn session_in_header(input: &Input<'_>) -> Outcome {
    let sid = header(input.exchange.request_headers, "sid").or_else(|| {
        // subject-auth-life may carry the SID in the body.
        request_json(input).and_then(|v| string_field(&v, "sid"))
    });
    Outcome::of(sid.map(session).into_iter().collect())
}

pub(super) fn session_deleted(input: &Input<'_>) -> Outcome {
    if let Some(sid) = header(input.exchange.request_headers, "sid") {
        return Outcome::of(vec![session(sid)]);
    }
    let pairs = query(input);
    Outcome::of(
        form::first(&pairs, "subject")
            .map(|subject| Change::SubjectSessions {
                subject: subject.to_owned(),
            })
            .into_iter()
            .collect(),
    )
}

pub(super) fn logout_started(input: &Input<'_>) -> Outcome {
    let request_sid = request_json(input).and_then(|v| string_field(&v, "sub_sid"));
    let response = response_json(input);
    let response_sid = response.as_ref().and_then(response_sid);
    let logout_sid = response.as_ref().and_then(|v| string_field(v, "sid"));
    let sid = response_sid.or(request_sid);
    Outcome {
        logout: logout_sid
            .zip(sid.clone())
            .map(|(logout_sid, sid)| LogoutHint::Remember { logout_sid, sid }),
        // Re-read now too: a logout without confirmation ends the session
        // right away.
        changes: sid.map(session).into_iter().collect(),
        used: Vec::new(),
    }
}

pub(super) fn logout_confirmed(input: &Input<'_>) -> Outcome {
    Outcome {
        changes: Vec::new(),
        used: Vec::new(),
        logout: input.captures.first().map(|logout_sid| LogoutHint::Lookup {
            logout_sid: logout_sid.clone(),
        }),
    }
}

// Token events, for a target that learns tokens only from their values
// (Authlete).

/// A token response: the tokens it issued, the refresh token it replaced
/// (a rotation) or the one the client keeps (no rotation).
pub(super) fn tokens_issued_event(input: &Input<'_>) -> Option<TokenEvent> {
    let exchange = input.exchange;
    let request = form_body(exchange.request_body);
    let grant = form::first(&request, "grant_type")?.to_owned();
    let client_id = client_of(exchange.request_headers, &request)?;
    let response: Value = serde_json::from_slice(exchange.response_body?).ok()?;
    let sent_refresh = (grant == "refresh_token")
        .then(|| form::first(&request, "refresh_token"))
        .flatten();
    let access_token = string_field(&response, "access_token")?;
    let subject = jwt_subject_and_client(&access_token).map(|(subject, _)| subject);
    // Only needed when the subject is not readable from the token.
    let client_auth = subject
        .is_none()
        .then(|| client_auth_of(exchange.request_headers, &request))
        .flatten();
    let fallback_scope = form::first(&request, "scope").map(scope_list);
    issued_event(Issued {
        grant_type: grant,
        client_id,
        subject,
        response: &response,
        fallback_scopes: fallback_scope,
        sent_refresh,
        client_auth,
    })
}

/// A direct authorization (`/direct-authz/rest/v2`): a token response for
/// the `sub` and `client_id` of the request, minted without `/token`.
pub(super) fn direct_authz_event(input: &Input<'_>) -> Option<TokenEvent> {
    json_request_event(input, "direct_authz", "client_id", "scope")
}

/// An authz-store import with `?return=tokens`: the tokens of the new
/// record, for its `sub` and `cid`.
pub(super) fn authz_store_tokens_event(input: &Input<'_>) -> Option<TokenEvent> {
    let pairs = query(input);
    if form::first(&pairs, "return") != Some("tokens") {
        return None;
    }
    json_request_event(input, "authz_store", "cid", "scp")
}

/// The tokens answering a JSON request that names the subject in `sub`,
/// the client in `client_field` and the scopes in `scope_field`.
fn json_request_event(
    input: &Input<'_>,
    grant_type: &str,
    client_field: &str,
    scope_field: &str,
) -> Option<TokenEvent> {
    let request = request_json(input)?;
    let response = response_json(input)?;
    issued_event(Issued {
        grant_type: grant_type.to_owned(),
        client_id: string_field(&request, client_field)?,
        subject: string_field(&request, "sub"),
        fallback_scopes: request.get(scope_field).map(json_scopes),
        response: &response,
        sent_refresh: None,
        client_auth: None,
    })
}

/// The end of an implicit or hybrid flow (`PUT /authz-sessions/rest/v3/
/// {sid}` answering `type=response`): the access token is in the redirect
/// URI (fragment or query), minted without `/token`. Its client and subject
/// come from a JWT access token, else the ID token issued with it (`aud`,
/// `sub`); an identifier access token without an ID token names neither and
/// is left to the fallback after the flip.
pub(super) fn authz_session_tokens_event(input: &Input<'_>) -> Option<TokenEvent> {
    let response = response_json(input)?;
    if response.get("type").and_then(Value::as_str) != Some("response") {
        return None;
    }
    let uri = response
        .get("parameters")
        .and_then(|p| p.get("uri"))
        .and_then(Value::as_str)?;
    let params = form::parse(uri.split_once(['#', '?']).map(|(_, rest)| rest)?);
    let access_token = form::first(&params, "access_token")?.to_owned();
    let (subject, client_id) = jwt_subject_and_client(&access_token)
        .or_else(|| form::first(&params, "id_token").and_then(id_token_subject_and_client))?;
    let mut fragment = serde_json::Map::new();
    for (name, value) in &params {
        let value = match name.as_str() {
            "expires_in" => value.parse::<u64>().map_or(Value::Null, Value::from),
            _ => Value::from(value.clone()),
        };
        fragment.insert(name.clone(), value);
    }
    issued_event(Issued {
        grant_type: "implicit".to_owned(),
        client_id,
        subject: Some(subject),
        response: &Value::Object(fragment),
        fallback_scopes: None,
        sent_refresh: None,
        client_auth: None,
    })
}

/// What a token event is built from.
struct Issued<'a> {
    grant_type: String,
    client_id: String,
    subject: Option<String>,
    /// The token response (JSON members).
    response: &'a Value,
    /// Scopes when the response names none (the request's).
    fallback_scopes: Option<Vec<String>>,
    /// The refresh token a refresh request presented.
    sent_refresh: Option<&'a str>,
    client_auth: Option<String>,
}

fn issued_event(issued: Issued<'_>) -> Option<TokenEvent> {
    let response = issued.response;
    let access_token = string_field(response, "access_token")?;
    let issued_refresh = string_field(response, "refresh_token");
    // Without rotation the client keeps the refresh token it sent; a
    // response may echo it (RFC 6749 §6 allows both). An echo is no new
    // token: creating it again would be refused as a duplicate.
    let (refresh_token, replaced_refresh, kept_refresh) =
        match (issued.sent_refresh, issued_refresh) {
            (Some(sent), Some(new)) if sent != new => (Some(new), Some(sent.to_owned()), None),
            (Some(sent), _) => (None, None, Some(sent.to_owned())),
            (None, new) => (new, None, None),
        };
    let scopes = match response.get("scope") {
        Some(Value::String(scope)) => scope_list(scope),
        Some(Value::Array(_)) => json_scopes(&response["scope"]),
        _ => issued.fallback_scopes.unwrap_or_default(),
    };
    Some(TokenEvent::Issued {
        subject: issued.subject,
        client_auth: issued.client_auth,
        grant_type: issued.grant_type,
        client_id: issued.client_id,
        scopes,
        expires_in: response
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        refresh_expires_in: refresh_token
            .as_ref()
            .and_then(|_| response.get("refresh_token_expires_in"))
            .and_then(Value::as_u64),
        access_token,
        refresh_token,
        replaced_refresh,
        kept_refresh,
        issued_by: None,
    })
}

fn scope_list(scope: &str) -> Vec<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

/// Scopes as a JSON array or a space-separated string.
fn json_scopes(value: &Value) -> Vec<String> {
    match value {
        Value::String(scope) => scope_list(scope),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `/token/revoke`: the token, and its authorization when resolved.
pub(super) fn token_revoked_event(input: &Input<'_>) -> Option<TokenEvent> {
    let request = form_body(input.exchange.request_body);
    let resolved = input.resolved;
    // 19.9+: `token_only=true` revokes just that token, not the
    // authorization: no subject, so that the target revokes by value.
    let token_only = form::first(&request, "token_only") == Some("true");
    Some(TokenEvent::Revoked {
        client_id: client_of(input.exchange.request_headers, &request)
            .or_else(|| resolved.authorization.as_ref().map(|(_, c)| c.clone())),
        subject: resolved
            .authorization
            .as_ref()
            .filter(|_| !token_only)
            .map(|(s, _)| s.clone()),
        token: form::first(&request, "token").map(str::to_owned),
    })
}

/// Deleting a long-lived authorization ends its refresh token at
/// Connect2id (the record holds it); without this event the pair stayed
/// valid at Authlete, the authorization record itself having no Authlete
/// counterpart to sync.
pub(super) fn authorization_deleted_event(input: &Input<'_>) -> Option<TokenEvent> {
    let query = form::parse(input.exchange.query.unwrap_or_default());
    let field = |name| {
        form::first(&query, name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Some(TokenEvent::Revoked {
        client_id: Some(field("client_id")?),
        subject: Some(field("subject")?),
        token: None,
    })
}

/// An authz-store revocation by subject and/or client.
pub(super) fn revocation_event(input: &Input<'_>) -> Option<TokenEvent> {
    let request = form_body(input.exchange.request_body);
    let field = |name| {
        form::first(&request, name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let (subject, client_id) = (field("subject"), field("client_id"));
    (subject.is_some() || client_id.is_some()).then_some(TokenEvent::Revoked {
        client_id,
        subject,
        token: None,
    })
}
