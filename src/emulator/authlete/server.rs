//! The HTTP front of the emulator: knobs, API version and authentication,
//! body decoding, and the `/_emulator/*` controls. The APIs themselves are
//! in `endpoints.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::call::{Call, not_found};
use super::envelope::{self as codes, Reply};
use super::store::Version;
use super::traffic::{self, Arrival};
use super::{Config, Shared, endpoints};
use crate::emulator::KnobSettings;
use crate::http::form;
use crate::http::{Body, BoxError, ReadBodyError, json_response, read_body};

/// Largest request body accepted: room for a batch of tens of thousands of
/// token-create requests.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Serves one request. `Err` drops the connection: that is how "down" is
/// played. Every API call (not the controls) goes into the arrival log.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let (parts, body) = request.into_parts();
    if parts.uri.path().starts_with("/_emulator/") {
        let body = match read(body).await? {
            Ok(body) => body,
            Err(reply) => return Ok(reply.into_response()),
        };
        return Ok(control(&shared, &parts, &body).unwrap_or_else(Reply::into_response));
    }
    let arrived = Instant::now();
    let result = serve_api(&shared, &parts, body).await;
    let (status, retry_after) = match &result {
        Ok(response) => (
            Some(response.status()),
            response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
                .map(Duration::from_secs),
        ),
        Err(_) => (None, None),
    };
    shared.arrivals().record(Arrival {
        at: arrived,
        method: parts.method.clone(),
        path: traffic::redacted(parts.uri.path()),
        status,
        retry_after,
    });
    result
}

/// One API call: down, rate limit, latency, error rate, then the API.
async fn serve_api(
    shared: &Arc<Shared>,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<Body>, BoxError> {
    if shared.knobs.is_down() {
        return Err("the authlete emulator plays a service that is down".into());
    }
    if let Some(limit) = shared.config.strictness.rate_limit
        && let Err(wait) = shared.limiter().admit(limit, Instant::now())
    {
        return Ok(Reply::new(
            StatusCode::TOO_MANY_REQUESTS,
            codes::RATE_LIMITED,
            format!(
                "Too many requests: at most {} per {} ms.",
                limit.requests,
                limit.per.as_millis()
            ),
        )
        .retry_after(wait.as_secs())
        .into_response());
    }
    let latency = shared.knobs.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if shared.knobs.should_fail(parts.uri.path()) {
        return Ok(Reply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::SERVER_ERROR,
            "Authlete Server error.",
        )
        .into_response());
    }
    let body = match read(body).await? {
        Ok(body) => body,
        Err(reply) => return Ok(reply.into_response()),
    };
    let reply = api(shared, parts, &body).unwrap_or_else(|reply| reply);
    Ok(reply.into_response())
}

/// The whole body; `Ok(Err)` answers 413 for one too large.
async fn read(body: Incoming) -> Result<Result<Bytes, Reply>, BoxError> {
    match read_body(body, MAX_BODY_BYTES).await {
        Ok(body) => Ok(Ok(body)),
        Err(ReadBodyError::TooLarge { limit }) => Ok(Err(Reply::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::REQUEST_MALFORMED,
            format!("The request body is larger than {limit} bytes."),
        ))),
        Err(ReadBodyError::Io(err)) => Err(err),
    }
}

/// Version, credentials, service id, then the API.
fn api(shared: &Arc<Shared>, parts: &Parts, body: &Bytes) -> Result<Reply, Reply> {
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix("/api/") else {
        return Err(not_found(path));
    };
    let segments: Vec<String> = rest.split('/').map(form::decode_segment).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (version, service, route) = match segments.split_first() {
        Some((first, route)) if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) => {
            (Version::V3, Some(*first), route)
        }
        // No service id in either version: the scheme tells them apart.
        _ if segments == ["service", "get", "list"] => {
            let version =
                if scheme(&parts.headers).is_some_and(|(s, _)| s.eq_ignore_ascii_case("bearer")) {
                    Version::V3
                } else {
                    Version::V2
                };
            (version, None, &segments[..])
        }
        _ => (Version::V2, None, &segments[..]),
    };
    let owner_api = version == Version::V2 && route.starts_with(&["service", "get"]);
    if owner_api {
        authenticate_owner(&parts.headers, &shared.config)?;
    } else {
        authenticate(&parts.headers, version, &shared.config)?;
    }
    if let Some(service) = service
        && service.parse::<u64>() != Ok(shared.config.service_id)
    {
        return Err(Reply::new(
            StatusCode::FORBIDDEN,
            codes::SERVICE_FORBIDDEN,
            format!("The access token is not allowed to access the service ({service})."),
        ));
    }
    let call = Call {
        shared,
        version,
        service_in_path: service.is_some(),
        method: &parts.method,
        query: parts.uri.query().unwrap_or(""),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok()),
        body,
    };
    endpoints::dispatch(&call, route).ok_or_else(|| not_found(path))?
}

/// The scheme and the credentials of the `Authorization` header.
fn scheme(headers: &HeaderMap) -> Option<(&str, &str)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    Some((scheme, credentials.trim()))
}

/// v2: Basic key:secret. v3: Bearer access token.
fn authenticate(headers: &HeaderMap, version: Version, config: &Config) -> Result<(), Reply> {
    let challenge = match version {
        Version::V2 => "Basic realm=\"Authlete\"",
        Version::V3 => "Bearer realm=\"Authlete\"",
    };
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(Reply::new(
            StatusCode::UNAUTHORIZED,
            codes::AUTHORIZATION_MISSING,
            "The request does not contain an Authorization header.",
        )
        .challenge(challenge));
    }
    let valid = match (version, scheme(headers)) {
        (Version::V2, Some(_)) => basic_pair(headers)
            .is_some_and(|(key, secret)| key == config.api_key && secret == config.api_secret),
        (Version::V3, Some((scheme, token))) if scheme.eq_ignore_ascii_case("bearer") => {
            token == config.access_token
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(Reply::new(
            StatusCode::UNAUTHORIZED,
            codes::CREDENTIALS_INVALID,
            "The credentials in the Authorization header are invalid.",
        )
        .challenge(challenge))
    }
}

/// The v2 service APIs (`/api/service/get/{apiKey}`,
/// `/api/service/get/list`) are documented with the service *owner*'s
/// Basic credentials. With `owner_credentials` only those pass; otherwise
/// the service's own key and secret pass too, as they always did here.
fn authenticate_owner(headers: &HeaderMap, config: &Config) -> Result<(), Reply> {
    let owner = basic_pair(headers).is_some_and(|(key, secret)| {
        key == config.owner_api_key && secret == config.owner_api_secret
    });
    if owner {
        return Ok(());
    }
    authenticate(headers, Version::V2, config)?;
    if config.strictness.owner_credentials {
        return Err(Reply::new(
            StatusCode::UNAUTHORIZED,
            codes::CREDENTIALS_INVALID,
            "The service APIs take the credentials of the service owner, not those of a service.",
        )
        .challenge("Basic realm=\"Authlete\""));
    }
    Ok(())
}

/// The key and secret of a Basic `Authorization` header.
fn basic_pair(headers: &HeaderMap) -> Option<(String, String)> {
    let (scheme, credentials) = scheme(headers)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(credentials).ok()?).ok()?;
    let (key, secret) = decoded.split_once(':')?;
    Some((key.to_owned(), secret.to_owned()))
}

/// `/_emulator/knobs` and `/_emulator/state`.
fn control(shared: &Shared, parts: &Parts, body: &Bytes) -> Result<Response<Body>, Reply> {
    authenticate(&parts.headers, Version::V3, &shared.config)?;
    let path = parts.uri.path();
    let method = &parts.method;
    match path {
        "/_emulator/knobs" if method == Method::GET => {
            Ok(json_response(StatusCode::OK, &shared.knobs.settings()))
        }
        "/_emulator/knobs" if method == Method::PUT || method == Method::POST => {
            let settings: KnobSettings = serde_json::from_slice(body).map_err(|err| {
                Reply::new(
                    StatusCode::BAD_REQUEST,
                    codes::REQUEST_MALFORMED,
                    format!("The knob settings could not be parsed: {err}."),
                )
            })?;
            shared.knobs.apply(&settings);
            tracing::info!(?settings, "changed the authlete emulator knobs");
            Ok(json_response(StatusCode::OK, &shared.knobs.settings()))
        }
        "/_emulator/state" if method == Method::GET => {
            let pairs = form::parse(parts.uri.query().unwrap_or(""));
            let state = shared.state();
            let document = match form::first(&pairs, "dataset") {
                None => serde_json::json!({
                    "clients": state.clients().len(),
                    "tokens": state.token_count(),
                    "batches": state.batch_count(),
                }),
                Some("clients") => serde_json::json!({ "clients": state.clients() }),
                Some("tokens") => serde_json::json!({ "tokens": state.tokens() }),
                Some(other) => {
                    return Err(Reply::new(
                        StatusCode::BAD_REQUEST,
                        codes::REQUEST_MALFORMED,
                        format!("Unknown dataset '{other}'; expected 'clients' or 'tokens'."),
                    ));
                }
            };
            Ok(json_response(StatusCode::OK, &document))
        }
        "/_emulator/knobs" | "/_emulator/state" => Err(Reply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}."),
        )),
        _ => Err(not_found(path)),
    }
}
