//! Reading the parts of an exchange: JSON and form bodies, headers, client
//! authentication, JWT claims, and the small builders the rows share.

use base64::Engine;
use http::HeaderMap;
use serde_json::Value;

use super::Input;
use crate::http::form;
use crate::model::{Change, Key, TokenKind};

fn json(bytes: Option<&bytes::Bytes>) -> Option<Value> {
    serde_json::from_slice(bytes?).ok()
}

pub(super) fn request_json(input: &Input<'_>) -> Option<Value> {
    serde_json::from_slice(input.exchange.request_body).ok()
}

pub(super) fn response_json(input: &Input<'_>) -> Option<Value> {
    json(input.exchange.response_body)
}

pub(super) fn form_body(body: &[u8]) -> Vec<(String, String)> {
    form::parse(&String::from_utf8_lossy(body))
}

pub(super) fn query(input: &Input<'_>) -> Vec<(String, String)> {
    form::parse(input.exchange.query.unwrap_or_default())
}

pub(super) fn string_field(value: &Value, name: &str) -> Option<String> {
    value
        .get(name)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub(super) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

pub(super) fn session(sid: String) -> Change {
    Change::sync(Key::Session { sid })
}

pub(super) fn authorization(subject: String, client_id: String) -> Change {
    Change::sync(Key::Authorization { subject, client_id })
}

/// A SID inside an authz-session, direct-authz or logout response:
/// `sub_session.sid`, else `sub_sid`.
pub(super) fn response_sid(value: &Value) -> Option<String> {
    value
        .get("sub_session")
        .and_then(|s| string_field(s, "sid"))
        .or_else(|| string_field(value, "sub_sid"))
}

/// Whether a token has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("ey")
}

/// The subject and client of an ID token (`sub`, and `azp` or the single
/// `aud`), read without checking the signature like
/// [`jwt_subject_and_client`].
pub(super) fn id_token_subject_and_client(token: &str) -> Option<(String, String)> {
    let claims = jwt_claims(token)?;
    let subject = string_field(&claims, "sub")?;
    let client = string_field(&claims, "azp").or_else(|| match claims.get("aud")? {
        Value::String(aud) => Some(aud.clone()),
        Value::Array(auds) if auds.len() == 1 => auds[0].as_str().map(str::to_owned),
        _ => None,
    })?;
    Some((subject, client))
}

/// The claims of a JWT, read from its payload without checking the
/// signature: the primary has just issued it, and the sync reads the state
/// it names from the primary anyway.
fn jwt_claims(token: &str) -> Option<Value> {
    if !looks_like_jwt(token) {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The session (`sid` claim) an ID token names, read like [`jwt_claims`].
pub(super) fn id_token_sid(token: &str) -> Option<String> {
    string_field(&jwt_claims(token)?, "sid")
}

/// The subject of a JWT (an access token or an ID token).
pub(super) fn jwt_subject(token: &str) -> Option<String> {
    string_field(&jwt_claims(token)?, "sub")
}

/// The subject and client of a JWT access token (see [`jwt_claims`]).
pub fn jwt_subject_and_client(token: &str) -> Option<(String, String)> {
    let claims = jwt_claims(token)?;
    let subject = string_field(&claims, "sub")?;
    let client = string_field(&claims, "cid").or_else(|| string_field(&claims, "client_id"))?;
    Some((subject, client))
}

/// The authorization behind an issued token pair: from a JWT access token,
/// else resolved at the primary from the refresh token (preferred: it finds
/// the long-lived record directly) or the access token.
pub(super) fn authorization_of_tokens(
    access_token: Option<&str>,
    refresh_token: Option<&str>,
) -> Option<Change> {
    if let Some((subject, client_id)) = access_token.and_then(jwt_subject_and_client) {
        return Some(authorization(subject, client_id));
    }
    if let Some(token) = refresh_token {
        return Some(Change::Resolve {
            token: token.to_owned(),
            kind: TokenKind::Refresh,
            from: None,
        });
    }
    access_token.map(|token| Change::Resolve {
        token: token.to_owned(),
        kind: TokenKind::Access,
        from: None,
    })
}

/// The SID in a session-store create response: `{"sid": ...}`, a JSON
/// string, or the bare SID as text.
pub(super) fn created_sid(body: Option<&bytes::Bytes>) -> Option<String> {
    let body = body?;
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::String(sid)) => Some(sid),
        Ok(value) => string_field(&value, "sid"),
        Err(_) => {
            let text = std::str::from_utf8(body).ok()?.trim();
            (!text.is_empty() && !text.contains(char::is_whitespace)).then(|| text.to_owned())
        }
    }
}

/// The client of a token-endpoint request: HTTP Basic (form-encoded id,
/// RFC 6749 §2.3.1) or the `client_id` form parameter.
pub fn client_of(headers: &HeaderMap, form_pairs: &[(String, String)]) -> Option<String> {
    if let Some(basic) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim())
        && let Ok(text) = String::from_utf8(decoded)
        && let Some((id, _)) = text.split_once(':')
    {
        return form::parse(&format!("id={id}"))
            .first()
            .map(|(_, v)| v.clone());
    }
    form::first(form_pairs, "client_id").map(str::to_owned)
}

/// The client authentication of a token request as a Basic header value:
/// the request's own, or built from `client_secret_post` parameters.
pub(super) fn client_auth_of(
    headers: &HeaderMap,
    form_pairs: &[(String, String)],
) -> Option<String> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && value.starts_with("Basic ")
    {
        return Some(value.to_owned());
    }
    let id = form::first(form_pairs, "client_id")?;
    let secret = form::first(form_pairs, "client_secret")?;
    Some(form::basic_auth(id, secret))
}
