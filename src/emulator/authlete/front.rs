//! A new authorization server built on the emulated service: where traffic
//! goes after the cutover of a Connect2id → Authlete migration
//! (`target.new_primary_url`). It serves the endpoints a relying party uses
//! with the tokens it already holds, the way an Authlete-based server does:
//! the client's request goes to the service's endpoint backend as
//! `parameters` with the client's credentials, and the answer is the
//! backend's `responseContent`, with the status its `action` calls for.
//!
//! | path (under the base path) | backend | answer |
//! |---|---|---|
//! | `POST /token` | `/auth/token` (the emulated backend takes the refresh grant) | `OK` 200, `BAD_REQUEST` 400, `INVALID_CLIENT` 401, else 500 |
//! | `POST /token/revoke` | `/auth/revocation` | `OK` 200 (empty), `BAD_REQUEST` 400, `INVALID_CLIENT` 401, else 500 |
//!
//! Anything else answers 404. The backends are called in-process: the
//! service's rate limit and knobs do not apply to the front, and the front
//! never plays down (shut it down to do that).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::call::Call;
use super::envelope::{Reply, action};
use super::store::Version;
use super::{Shared, endpoints};
use crate::http::{Body, BoxError, empty_response, json_response, read_body};

/// Largest request body the front reads.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Serves one request of the front under `base_path`.
pub(super) async fn handle(
    shared: Arc<Shared>,
    base_path: Arc<str>,
    request: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let (parts, body) = request.into_parts();
    let endpoint = parts
        .uri
        .path()
        .strip_prefix(&*base_path)
        .map(|rest| rest.trim_end_matches('/'));
    let revoke = match endpoint {
        Some("/token") => false,
        Some("/token/revoke") => true,
        _ => return Ok(oauth_error(StatusCode::NOT_FOUND, "not_found")),
    };
    if parts.method != Method::POST {
        return Ok(oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
        ));
    }
    let body = read_body(body, MAX_BODY_BYTES).await?;
    let reply = backend(&shared, &parts.headers, &body, revoke);
    Ok(answer(&reply, revoke))
}

/// Calls the endpoint backend with the client's request.
fn backend(shared: &Arc<Shared>, headers: &HeaderMap, body: &Bytes, revoke: bool) -> Reply {
    let mut request = json!({ "parameters": String::from_utf8_lossy(body) });
    if let Some((id, secret)) = client_credentials(headers) {
        request["clientId"] = id.into();
        request["clientSecret"] = secret.into();
    }
    let request = request.to_string();
    let call = Call {
        shared,
        version: Version::V3,
        service_in_path: true,
        method: &Method::POST,
        query: "",
        content_type: Some("application/json"),
        body: request.as_bytes(),
    };
    let result = if revoke {
        endpoints::revocation(&call)
    } else {
        endpoints::token_endpoint(&call)
    };
    result.unwrap_or_else(|reply| reply)
}

/// The client's HTTP Basic credentials (each form-encoded, RFC 6749
/// §2.3.1); a client authenticating in the form is read by the backend
/// from the parameters.
fn client_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(credentials.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |text: &str| {
        crate::http::form::parse(&format!("v={text}"))
            .pop()
            .map_or_else(String::new, |(_, value)| value)
    };
    Some((decode(id), decode(secret)))
}

/// The OAuth answer to the client, from the backend's action.
fn answer(reply: &Reply, revoke: bool) -> Response<Body> {
    let status = match reply.action_name() {
        Some(action::OK) => StatusCode::OK,
        Some(action::BAD_REQUEST) => StatusCode::BAD_REQUEST,
        Some(action::INVALID_CLIENT) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::OK && revoke {
        return empty_response(StatusCode::OK);
    }
    let content = reply
        .field_value("responseContent")
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .unwrap_or_else(|| json!({ "error": "server_error" }));
    let mut response = json_response(status, &content);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

fn oauth_error(status: StatusCode, error: &str) -> Response<Body> {
    json_response(status, &json!({ "error": error }))
}
