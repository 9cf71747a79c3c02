//! The catalogue's row functions: each a pure function from one kind of
//! exchange to the changes it made (and, for a target that learns tokens
//! from their values, the token event).

use serde_json::Value;

use super::parse::{
    authorization, authorization_of_tokens, client_auth_of, client_of, created_sid, form_body,
    header, jwt_subject_and_client, query, request_json, response_json, response_sid, session,
    string_field,
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
        if let Some(change) = authorization_of_tokens(
            form::first(&pairs, "access_token"),
            form::first(&pairs, "refresh_token"),
        ) {
            changes.push(change);
        }
    }
    Outcome::of(changes)
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
    let Some(response) = response_json(input) else {
        return Outcome::default();
    };
    let access = response.get("access_token").and_then(Value::as_str);
    // A rotated refresh token is in the response; without rotation the
    // client keeps the one it sent.
    let refresh = response
        .get("refresh_token")
        .and_then(Value::as_str)
        .or_else(|| {
            (grant == "refresh_token")
                .then(|| form::first(&request, "refresh_token"))
                .flatten()
        });
    Outcome::of(
        authorization_of_tokens(access, refresh)
            .into_iter()
            .collect(),
    )
}

pub(super) fn token_revoked(input: &Input<'_>) -> Outcome {
    let Some((subject, client_id)) = input.resolved.authorization.clone() else {
        // Unknown or transient token: nothing persisted changed.
        return Outcome::default();
    };
    let request = form_body(input.exchange.request_body);
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
    }
}

pub(super) fn logout_confirmed(input: &Input<'_>) -> Outcome {
    Outcome {
        changes: Vec::new(),
        logout: input.captures.first().map(|logout_sid| LogoutHint::Lookup {
            logout_sid: logout_sid.clone(),
        }),
    }
}

// Token events, for a target that learns tokens only from their values
// (Authlete).

/// A token response: the tokens it issued, the refresh token it replaced.
pub(super) fn tokens_issued_event(input: &Input<'_>) -> Option<TokenEvent> {
    let exchange = input.exchange;
    let request = form_body(exchange.request_body);
    let grant = form::first(&request, "grant_type")?.to_owned();
    let client_id = client_of(exchange.request_headers, &request)?;
    let response: Value = serde_json::from_slice(exchange.response_body?).ok()?;
    let access_token = string_field(&response, "access_token")?;
    let refresh_token = string_field(&response, "refresh_token");
    let sent_refresh = (grant == "refresh_token")
        .then(|| form::first(&request, "refresh_token").map(str::to_owned))
        .flatten();
    let replaced_refresh = match (&sent_refresh, &refresh_token) {
        (Some(sent), Some(new)) if sent != new => Some(sent.clone()),
        _ => None,
    };
    let scopes = response
        .get("scope")
        .and_then(Value::as_str)
        .or_else(|| form::first(&request, "scope"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let subject = jwt_subject_and_client(&access_token).map(|(subject, _)| subject);
    // Only needed when the subject is not readable from the token.
    let client_auth = subject
        .is_none()
        .then(|| client_auth_of(exchange.request_headers, &request))
        .flatten();
    Some(TokenEvent::Issued {
        subject,
        client_auth,
        grant_type: grant,
        client_id,
        scopes,
        expires_in: response
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        refresh_expires_in: response
            .get("refresh_token_expires_in")
            .and_then(Value::as_u64),
        access_token,
        refresh_token,
        replaced_refresh,
    })
}

/// `/token/revoke`: the token, and its authorization when resolved.
pub(super) fn token_revoked_event(input: &Input<'_>) -> Option<TokenEvent> {
    let request = form_body(input.exchange.request_body);
    let resolved = input.resolved;
    Some(TokenEvent::Revoked {
        client_id: client_of(input.exchange.request_headers, &request)
            .or_else(|| resolved.authorization.as_ref().map(|(_, c)| c.clone())),
        subject: resolved.authorization.as_ref().map(|(s, _)| s.clone()),
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
