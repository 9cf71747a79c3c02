//! The emulated APIs: route table, request parsing and reply shapes. The
//! rules live in `store.rs`; this module only translates between HTTP and
//! the store. The behaviour of each API is described in the parent
//! module's documentation.

use std::collections::HashSet;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::call::{Call, decode, not_found};
use super::envelope::{self as codes, Reply, action};
use super::store::{
    Client, ClientRequest, ClientType, DEFAULT_ACCESS_TOKEN_DURATION_S,
    DEFAULT_REFRESH_TOKEN_DURATION_S, GrantType, Introspected, RevokeRequest, State, Token,
    TokenCreateRequest, TokenUpdateRequest, Version, duplicate_in_batch, token_hash,
};
use super::{Shared, now_ms};
use crate::http::form;

/// How many batch items are applied between two yields to the runtime, so
/// a huge batch does not starve other requests.
const BATCH_YIELD_EVERY: usize = 256;
/// Default page size of the list APIs (`end` when absent).
const DEFAULT_PAGE_END: usize = 5;

/// One API, with its path parameter.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    TokenCreate,
    TokenCreateBatch,
    BatchStatus(&'a str),
    TokenUpdate,
    TokenDelete(&'a str),
    TokenRevoke,
    TokenList,
    Introspection,
    StandardIntrospection,
    Token,
    Revocation,
    ClientCreate,
    ClientGet(&'a str),
    ClientList,
    ClientUpdate(&'a str),
    ClientDelete(&'a str),
    ClientSecretUpdate(&'a str),
    ClientSecretRefresh(&'a str),
    /// v2 names the service by API key in the path; v3 by the service id
    /// prefix.
    ServiceGet(Option<&'a str>),
    ServiceList,
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const DELETE: &[Method] = &[Method::DELETE];
const GET_POST: &[Method] = &[Method::GET, Method::POST];

/// The API at `segments` (the path after `/api/` or `/api/{serviceId}/`)
/// and the methods it takes, in the lenient reading: every API under both
/// prefixes, a few extra methods, and v2 `service/get` with or without the
/// API key.
fn lenient_route<'a>(segments: &[&'a str]) -> Option<(Route<'a>, &'static [Method])> {
    const UPDATE: &[Method] = &[Method::POST, Method::PUT];
    Some(match segments {
        ["client", "update", id] => (Route::ClientUpdate(id), UPDATE),
        ["client", "secret", "refresh", id] => (Route::ClientSecretRefresh(id), GET_POST),
        ["service", "get"] => (Route::ServiceGet(None), GET),
        ["service", "get", "list"] => (Route::ServiceList, GET),
        ["service", "get", key] => (Route::ServiceGet(Some(key)), GET),
        _ => return common_route(segments),
    })
}

/// The documented reading (v2 and v3 OpenAPI, `authlete-java-common`
/// path constants): one method per API, `service/get/{apiKey}` in v2 and
/// `{serviceId}/service/get` in v3, the service list only without a
/// service id. The batch status keeps `GET` (the SDK) and `POST` (the
/// older spec), which disagree.
fn documented_route<'a>(
    segments: &[&'a str],
    version: Version,
    service_in_path: bool,
) -> Option<(Route<'a>, &'static [Method])> {
    Some(match (version, segments) {
        (_, ["client", "update", id]) => (Route::ClientUpdate(id), POST),
        (_, ["client", "secret", "refresh", id]) => (Route::ClientSecretRefresh(id), GET),
        (_, ["service", "get", "list"]) if !service_in_path => (Route::ServiceList, GET),
        (Version::V2, ["service", "get", key]) if *key != "list" => {
            (Route::ServiceGet(Some(key)), GET)
        }
        (Version::V3, ["service", "get"]) => (Route::ServiceGet(None), GET),
        (_, ["service", ..]) => return None,
        _ => return common_route(segments),
    })
}

/// The APIs both readings agree on.
fn common_route<'a>(segments: &[&'a str]) -> Option<(Route<'a>, &'static [Method])> {
    Some(match segments {
        ["auth", "token", "create"] => (Route::TokenCreate, POST),
        ["auth", "token", "create", "batch"] => (Route::TokenCreateBatch, POST),
        ["auth", "token", "create", "batch", "status", id] => (Route::BatchStatus(id), GET_POST),
        ["auth", "token", "update"] => (Route::TokenUpdate, POST),
        ["auth", "token", "delete", id] => (Route::TokenDelete(id), DELETE),
        ["auth", "token", "revoke"] => (Route::TokenRevoke, POST),
        ["auth", "token", "get", "list"] => (Route::TokenList, GET),
        ["auth", "introspection"] => (Route::Introspection, POST),
        ["auth", "introspection", "standard"] => (Route::StandardIntrospection, POST),
        ["auth", "token"] => (Route::Token, POST),
        ["auth", "revocation"] => (Route::Revocation, POST),
        ["client", "create"] => (Route::ClientCreate, POST),
        ["client", "get", "list"] => (Route::ClientList, GET),
        ["client", "get", id] => (Route::ClientGet(id), GET),
        ["client", "delete", id] => (Route::ClientDelete(id), DELETE),
        ["client", "secret", "update", id] => (Route::ClientSecretUpdate(id), POST),
        _ => return None,
    })
}

/// Runs the API at `segments`; `None` when there is none.
pub(super) fn dispatch(call: &Call<'_>, segments: &[&str]) -> Option<Result<Reply, Reply>> {
    let (route, methods) = if call.config().strictness.documented_paths {
        documented_route(segments, call.version, call.service_in_path)?
    } else {
        lenient_route(segments)?
    };
    if !methods.contains(call.method) {
        return Some(Err(Reply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on this API.", call.method),
        )));
    }
    let v3_only = matches!(route, Route::TokenCreateBatch | Route::BatchStatus(_));
    if v3_only && call.version == Version::V2 {
        let path = format!("/api/{}", segments.join("/"));
        let reply = not_found(&path);
        let message = format!(
            "{} The batch APIs exist in Authlete 3.0 (v3) only.",
            reply.message()
        );
        return Some(Err(Reply::new(
            StatusCode::NOT_FOUND,
            reply.code(),
            message,
        )));
    }
    Some(match route {
        Route::TokenCreate => token_create(call),
        Route::TokenCreateBatch => token_create_batch(call),
        Route::BatchStatus(id) => batch_status(call, id),
        Route::TokenUpdate => token_update(call),
        Route::TokenDelete(id) => token_delete(call, id),
        Route::TokenRevoke => token_revoke(call),
        Route::TokenList => token_list(call),
        Route::Introspection => introspection(call),
        Route::StandardIntrospection => standard_introspection(call),
        Route::Token => token_endpoint(call),
        Route::Revocation => revocation(call),
        Route::ClientCreate => client_create(call),
        Route::ClientGet(id) => client_get(call, id),
        Route::ClientList => client_list(call),
        Route::ClientUpdate(id) => client_update(call, id),
        Route::ClientDelete(id) => client_delete(call, id),
        Route::ClientSecretUpdate(id) => client_secret_update(call, id),
        Route::ClientSecretRefresh(id) => client_secret_refresh(call, id),
        Route::ServiceGet(key) => service_get(call, key),
        Route::ServiceList => service_list(call),
    })
}

// ---- token management ---------------------------------------------------

fn token_create(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: TokenCreateRequest = call.body()?;
    let created =
        call.shared
            .state()
            .create_token(request, call.version, call.config(), now_ms(), false)?;
    let token = &created.token;
    let grant = grant_type_name(token.grant_type).to_ascii_lowercase();
    Ok(Reply::ok(
        codes::TOKEN_CREATE_OK,
        format!(
            "An access token was created successfully: {grant}, client = {}",
            token.client_id
        ),
    )
    .action(action::OK)
    .field("accessToken", &created.access_token)
    .field("refreshToken", &created.refresh_token)
    .field("clientId", token.client_id)
    .field("subject", &token.subject)
    .field("scopes", &token.scopes)
    .field("grantType", token.grant_type)
    .field("tokenType", "Bearer")
    .field("expiresIn", created.expires_in)
    .field("expiresAt", token.access_token_expires_at)
    .field("tokenId", &token.token_id)
    .field("properties", &token.properties))
}

fn token_create_batch(call: &Call<'_>) -> Result<Reply, Reply> {
    let dry_run = call.query("dryRun").is_some_and(|value| value == "true");
    let Value::Array(items) = call.body_value()? else {
        return Err(Reply::new(
            StatusCode::BAD_REQUEST,
            codes::BATCH_MALFORMED,
            "The request body must be a JSON array of token creation requests.",
        ));
    };
    let requests = items
        .into_iter()
        .map(decode::<TokenCreateRequest>)
        .collect::<Result<Vec<_>, _>>()?;
    let request_id = call.shared.state().start_batch(now_ms());
    tokio::spawn(run_batch(
        Arc::clone(call.shared),
        request_id.clone(),
        requests,
        dry_run,
    ));
    Ok(
        Reply::ok(codes::BATCH_ACCEPTED, "Successfully issued a request ID.")
            .field("requestId", request_id),
    )
}

/// Applies a batch in order, stopping at the first failing item, as the
/// real batch does (spec §5.2: FAILED may be partially completed). With
/// `batch_duration` on, nothing is applied before the batch's time in
/// progress has passed, so its tokens appear only with its result.
async fn run_batch(
    shared: Arc<Shared>,
    request_id: String,
    requests: Vec<TokenCreateRequest>,
    dry_run: bool,
) {
    if let Some(duration) = shared.config.strictness.batch_duration {
        tokio::time::sleep(duration.of(requests.len())).await;
    }
    // Hashes claimed by earlier items; only a dry run needs them, as a real
    // run stores each item before checking the next.
    let mut claimed = HashSet::new();
    let mut failure = None;
    for (index, request) in requests.into_iter().enumerate() {
        if let Err(reply) = batch_item(&shared, &request_id, request, dry_run, &mut claimed) {
            failure = Some((
                reply.code(),
                format!("Item {index} failed: {}", reply.message()),
            ));
            break;
        }
        if index % BATCH_YIELD_EVERY == BATCH_YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
    }
    shared.state().finish_batch(&request_id, failure, now_ms());
    tracing::debug!(dry_run, "finished an authlete emulator batch");
}

fn batch_item(
    shared: &Shared,
    request_id: &str,
    request: TokenCreateRequest,
    dry_run: bool,
    claimed: &mut HashSet<(bool, String)>,
) -> Result<(), Reply> {
    let Some(access_token) = request.access_token.clone().filter(|v| !v.is_empty()) else {
        return Err(Reply::bad_request(
            codes::BATCH_ACCESS_TOKEN_MISSING,
            "Each request of a batch must contain 'accessToken'.",
        ));
    };
    let access_hash = token_hash(&access_token);
    let refresh_hash = request
        .refresh_token
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(token_hash);
    if claimed.contains(&(false, access_hash.clone())) {
        return Err(duplicate_in_batch(&shared.config, false));
    }
    if let Some(hash) = &refresh_hash
        && claimed.contains(&(true, hash.clone()))
    {
        return Err(duplicate_in_batch(&shared.config, true));
    }
    let now = now_ms();
    let mut state = shared.state();
    state.create_token(request, Version::V3, &shared.config, now, dry_run)?;
    state.batch_progress(request_id, now);
    if dry_run {
        claimed.insert((false, access_hash));
        if let Some(hash) = refresh_hash {
            claimed.insert((true, hash));
        }
    }
    Ok(())
}

fn batch_status(call: &Call<'_>, request_id: &str) -> Result<Reply, Reply> {
    let state = call.shared.state();
    let Some(status) = state.batch(request_id) else {
        return Err(Reply::new(
            StatusCode::NOT_FOUND,
            codes::BATCH_UNKNOWN,
            format!("The batch request ({request_id}) does not exist."),
        ));
    };
    let mut status = serde_json::to_value(status).unwrap_or(Value::Null);
    // The strict reading of a batch in progress leaves `result` out rather
    // than `null` (see the module docs).
    if call.config().strictness.batch_duration.is_some()
        && let Some(fields) = status.as_object_mut()
        && fields.get("result").is_some_and(Value::is_null)
    {
        fields.remove("result");
    }
    Ok(Reply::ok(
        codes::BATCH_STATUS_OK,
        "Successfully retrieved the status of the batch.",
    )
    .field("status", status))
}

fn token_update(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: TokenUpdateRequest = call.body()?;
    let updated = call
        .shared
        .state()
        .update_token(request, call.config(), now_ms())?;
    let token = &updated.token;
    Ok(Reply::ok(
        codes::TOKEN_UPDATE_OK,
        "The access token was updated successfully.",
    )
    .action(action::OK)
    .field("accessToken", &updated.access_token)
    .field("tokenType", "Bearer")
    .field("accessTokenExpiresAt", token.access_token_expires_at)
    .field("refreshTokenExpiresAt", token.refresh_token_expires_at)
    .field("scopes", &token.scopes)
    .field("properties", &token.properties)
    .field("tokenId", &token.token_id))
}

fn token_delete(call: &Call<'_>, identifier: &str) -> Result<Reply, Reply> {
    if call.shared.state().delete_token(identifier) {
        Ok(Reply::no_content())
    } else {
        Err(Reply::new(
            StatusCode::NOT_FOUND,
            codes::TOKEN_DELETE_UNKNOWN,
            "The specified access token does not exist.",
        ))
    }
}

fn token_revoke(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: RevokeRequest = call.body()?;
    let count =
        call.shared
            .state()
            .revoke_tokens(&request, call.version, &call.config().strictness)?;
    Ok(Reply::ok(
        codes::TOKEN_REVOKE_OK,
        format!("Revoked {count} access token(s)."),
    )
    .field("count", count))
}

fn token_list(call: &Call<'_>) -> Result<Reply, Reply> {
    let (start, end) = page(call)?;
    let subject = call.query("subject").filter(|v| !v.is_empty());
    let client_identifier = call.query("clientIdentifier").filter(|v| !v.is_empty());
    let mut state = call.shared.state();
    let client = match &client_identifier {
        Some(identifier) => Some(state.client(identifier, call.version).cloned().ok_or_else(
            || {
                Reply::new(
                    StatusCode::NOT_FOUND,
                    codes::TOKEN_LIST_CLIENT_UNKNOWN,
                    format!("The client ({identifier}) does not exist."),
                )
            },
        )?),
        None => None,
    };
    let client_id = client.as_ref().map(|client| client.client_id);
    let (tokens, total) = state.list_tokens(client_id, subject.as_deref(), start, end, now_ms());
    let mut reply = Reply::ok(
        codes::TOKEN_LIST_OK,
        format!("Got {} of {total} access token(s).", tokens.len()),
    )
    .field("start", start)
    .field("end", end)
    .field("totalCount", total)
    .field("accessTokens", tokens);
    if let Some(client) = client {
        reply = reply.field("client", client);
    }
    if let Some(subject) = subject {
        reply = reply.field("subject", subject);
    }
    Ok(reply)
}

// ---- endpoint backends ----------------------------------------------------

/// `/auth/introspection` request.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntrospectionRequest {
    token: Option<String>,
    scopes: Option<Vec<String>>,
    subject: Option<String>,
}

fn introspection(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: IntrospectionRequest = call.body()?;
    let Some(value) = request.token.filter(|v| !v.is_empty()) else {
        return Ok(Reply::ok(
            codes::INTROSPECTION_TOKEN_MISSING,
            "The introspection request does not contain 'token'.",
        )
        .action(action::BAD_REQUEST)
        .field("responseContent", "Bearer error=\"invalid_request\""));
    };
    let now = now_ms();
    let mut state = call.shared.state();
    let token = match state.introspect(&value, now) {
        Introspected::Valid(token) => token,
        Introspected::Unknown => {
            return Ok(unauthorized(
                codes::ACCESS_TOKEN_UNKNOWN,
                "The access token does not exist.",
                false,
            ));
        }
        Introspected::Expired => {
            return Ok(unauthorized(
                codes::ACCESS_TOKEN_EXPIRED,
                "The access token has expired.",
                true,
            ));
        }
    };
    let missing_scope = request
        .scopes
        .unwrap_or_default()
        .into_iter()
        .find(|scope| !token.scopes.contains(scope));
    let wrong_subject = request
        .subject
        .filter(|s| !s.is_empty())
        .is_some_and(|s| token.subject.as_deref() != Some(s.as_str()));
    let alias = active_alias(&state, &token, call.version);
    drop(state);
    let reply = if let Some(scope) = missing_scope {
        let message = format!("The access token does not cover the required scope '{scope}'.");
        Reply::ok(codes::ACCESS_TOKEN_INSUFFICIENT, message.clone())
            .action(action::FORBIDDEN)
            .field("sufficient", false)
            .field(
                "responseContent",
                format!(
                    "Bearer error=\"insufficient_scope\",error_description=\"[{}] {message}\",scope=\"{scope}\"",
                    codes::ACCESS_TOKEN_INSUFFICIENT
                ),
            )
    } else if wrong_subject {
        let message = "The access token was issued to another subject.";
        Reply::ok(codes::ACCESS_TOKEN_INSUFFICIENT, message)
            .action(action::FORBIDDEN)
            .field("sufficient", false)
            .field(
                "responseContent",
                format!(
                    "Bearer error=\"invalid_token\",error_description=\"[{}] {message}\"",
                    codes::ACCESS_TOKEN_INSUFFICIENT
                ),
            )
    } else {
        Reply::ok(codes::INTROSPECTION_OK, "The access token is valid.")
            .action(action::OK)
            .field("sufficient", true)
    };
    Ok(reply
        .field("existent", true)
        .field("usable", true)
        .field("refreshable", token.refresh_token_alive(now))
        .field("clientId", token.client_id)
        .field("clientIdAlias", alias)
        .field("clientIdAliasUsed", token.client_id_alias_used)
        .field("subject", &token.subject)
        .field("scopes", &token.scopes)
        .field("expiresAt", token.access_token_expires_at)
        .field("grantType", token.grant_type)
        .field("properties", &token.properties))
}

/// An `UNAUTHORIZED` introspection answer.
fn unauthorized(code: &'static str, message: &str, existed: bool) -> Reply {
    Reply::ok(code, message)
        .action(action::UNAUTHORIZED)
        .field("existent", existed)
        .field("usable", false)
        .field("sufficient", false)
        .field("refreshable", false)
        .field(
            "responseContent",
            format!("Bearer error=\"invalid_token\",error_description=\"[{code}] {message}\""),
        )
}

/// Body of the endpoint backend APIs: the OAuth client's own form
/// (`parameters`) and the client credentials the service extracted.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackendRequest {
    parameters: Option<String>,
    /// A string in Authlete's schema; a number is accepted too.
    client_id: Option<Value>,
    client_secret: Option<String>,
}

fn standard_introspection(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: BackendRequest = call.body()?;
    let pairs = form::parse(request.parameters.as_deref().unwrap_or(""));
    let Some(value) = form::first(&pairs, "token").filter(|v| !v.is_empty()) else {
        return Ok(Reply::oauth_error(
            codes::STANDARD_INTROSPECTION_BAD,
            action::BAD_REQUEST,
            "invalid_request",
            "The introspection request does not contain 'token'.",
        ));
    };
    let refresh_first = form::first(&pairs, "token_type_hint") == Some("refresh_token");
    let mut state = call.shared.state();
    let content = match state.find_active(value, refresh_first, now_ms()) {
        None => json!({ "active": false }),
        Some((token, is_refresh)) => {
            let client_id = if token.client_id_alias_used {
                active_alias(&state, &token, call.version)
            } else {
                None
            }
            .unwrap_or_else(|| token.client_id.to_string());
            let expires_at = if is_refresh {
                token.refresh_token_expires_at
            } else {
                token.access_token_expires_at
            };
            let mut content = json!({
                "active": true,
                "client_id": client_id,
                "scope": token.scopes.join(" "),
                "exp": expires_at / 1000,
                "iat": token.created_at / 1000,
            });
            if let Some(subject) = &token.subject {
                content["sub"] = Value::from(subject.as_str());
            }
            if !is_refresh {
                content["token_type"] = Value::from("Bearer");
            }
            content
        }
    };
    Ok(Reply::ok(
        codes::STANDARD_INTROSPECTION_OK,
        "The introspection request was processed successfully.",
    )
    .action(action::OK)
    .field("responseContent", content.to_string()))
}

/// `/auth/token`. Its OAuth errors (replies the service relays to its
/// client) come back as `Err`, which every caller answers like `Ok`.
pub(super) fn token_endpoint(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: BackendRequest = call.body()?;
    let pairs = parameters(&request, codes::TOKEN_PARAMETERS_MISSING, "token")?;
    let now = now_ms();
    let mut state = call.shared.state();
    let (client, alias_used) = authenticate_client(
        &state,
        call.version,
        &request,
        &pairs,
        codes::TOKEN_CLIENT_INVALID,
    )?;
    match required(
        &pairs,
        "grant_type",
        codes::GRANT_TYPE_PARAMETER_MISSING,
        "token",
    )? {
        "refresh_token" => {}
        other => {
            return Err(Reply::oauth_error(
                codes::GRANT_TYPE_UNSUPPORTED,
                action::BAD_REQUEST,
                "unsupported_grant_type",
                format!("The grant type '{other}' is not supported by the emulator."),
            ));
        }
    }
    let refresh_token = required(
        &pairs,
        "refresh_token",
        codes::REFRESH_TOKEN_PARAMETER_MISSING,
        "token",
    )?;
    let refreshed = state.refresh(client.client_id, refresh_token, call.config(), now)?;
    let alias = active_alias(&state, &refreshed.token, call.version);
    drop(state);
    let token = &refreshed.token;
    let access_duration = DEFAULT_ACCESS_TOKEN_DURATION_S;
    let refresh_duration = (token.refresh_token_expires_at - now) / 1000;
    let content = json!({
        "access_token": refreshed.access_token,
        "refresh_token": refreshed.refresh_token,
        "scope": token.scopes.join(" "),
        "token_type": "Bearer",
        "expires_in": access_duration,
    });
    Ok(Reply::ok(
        codes::REFRESH_OK,
        "The token request (grant_type=refresh_token) was processed successfully.",
    )
    .action(action::OK)
    .field("accessToken", &refreshed.access_token)
    .field("accessTokenDuration", access_duration)
    .field("accessTokenExpiresAt", token.access_token_expires_at)
    .field("refreshToken", &refreshed.refresh_token)
    .field("refreshTokenDuration", refresh_duration)
    .field("refreshTokenExpiresAt", token.refresh_token_expires_at)
    .field("clientId", client.client_id)
    .field("clientIdAlias", alias)
    .field("clientIdAliasUsed", alias_used)
    .field("grantType", GrantType::RefreshToken)
    .field("subject", &token.subject)
    .field("scopes", &token.scopes)
    .field("properties", &token.properties)
    .field("responseContent", content.to_string()))
}

/// `/auth/revocation`; its OAuth errors come back as `Err`, like
/// [`token_endpoint`]'s.
pub(super) fn revocation(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: BackendRequest = call.body()?;
    let pairs = parameters(&request, codes::REVOCATION_MALFORMED, "revocation")?;
    let mut state = call.shared.state();
    let (client, _) = authenticate_client(
        &state,
        call.version,
        &request,
        &pairs,
        codes::REVOCATION_CLIENT_INVALID,
    )?;
    let token = required(&pairs, "token", codes::REVOCATION_MALFORMED, "revocation")?;
    let refresh_first = form::first(&pairs, "token_type_hint") == Some("refresh_token");
    match state.revoke_pair(token, refresh_first, client.client_id) {
        Ok(_) => Ok(Reply::ok(
            codes::REVOCATION_OK,
            "The token has been revoked successfully.",
        )
        .action(action::OK)),
        Err(()) => Ok(Reply::oauth_error(
            codes::REVOCATION_WRONG_CLIENT,
            action::BAD_REQUEST,
            "unauthorized_client",
            "The token was not issued to the client.",
        )),
    }
}

/// The form an endpoint backend call (`what`: "token", "revocation")
/// relays in `parameters`; else the OAuth error `code`.
fn parameters(
    request: &BackendRequest,
    code: &'static str,
    what: &str,
) -> Result<Vec<(String, String)>, Reply> {
    let parameters = request.parameters.as_deref().ok_or_else(|| {
        Reply::oauth_error(
            code,
            action::BAD_REQUEST,
            "invalid_request",
            format!("The {what} request from the service does not contain 'parameters'."),
        )
    })?;
    Ok(form::parse(parameters))
}

/// A form value the `what` request must carry, not empty; else the OAuth
/// error `code`.
fn required<'a>(
    pairs: &'a [(String, String)],
    name: &str,
    code: &'static str,
    what: &str,
) -> Result<&'a str, Reply> {
    form::first(pairs, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Reply::oauth_error(
                code,
                action::BAD_REQUEST,
                "invalid_request",
                format!("The {what} request does not contain '{name}'."),
            )
        })
}

/// The client of an endpoint backend call: identified by `clientId` (or
/// `client_id` in the parameters) as numeric id or alias, and, unless it is
/// a public client, authenticated by secret. Also whether the alias was
/// used. Else the OAuth error `code` (`invalid_client`).
fn authenticate_client(
    state: &State,
    version: Version,
    request: &BackendRequest,
    pairs: &[(String, String)],
    code: &'static str,
) -> Result<(Client, bool), Reply> {
    let identified = || {
        let identifier = match &request.client_id {
            Some(Value::String(text)) if !text.is_empty() => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => form::first(pairs, "client_id")?.to_owned(),
        };
        let client = state.client(&identifier, version)?;
        let secret = request
            .client_secret
            .as_deref()
            .or_else(|| form::first(pairs, "client_secret"));
        let authenticated =
            client.client_type == Some(ClientType::Public) || secret == Some(&client.client_secret);
        let alias_used = identifier != client.client_id.to_string();
        authenticated.then(|| (client.clone(), alias_used))
    };
    identified().ok_or_else(|| {
        Reply::oauth_error(
            code,
            action::INVALID_CLIENT,
            "invalid_client",
            "Client authentication failed.",
        )
    })
}

/// The alias a token's client answers to in this API version.
fn active_alias(state: &State, token: &Token, version: Version) -> Option<String> {
    let client = state.client_by_id(token.client_id)?;
    let active = version == Version::V3 || client.client_id_alias_enabled;
    client.client_id_alias.clone().filter(|_| active)
}

// ---- clients ---------------------------------------------------------------

/// `/client/secret/update` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretUpdateRequest {
    client_secret: Option<String>,
}

fn client_create(call: &Call<'_>) -> Result<Reply, Reply> {
    let request: ClientRequest = call.body()?;
    let client = call.shared.state().create_client(
        request,
        call.version,
        &call.config().strictness,
        now_ms(),
    )?;
    Ok(Reply::ok(
        codes::CLIENT_CREATE_OK,
        "The client was created successfully.",
    )
    .fields(client))
}

/// With `documented_aliases`, `client/get/{clientId}` and
/// `client/delete/{clientId}` take the numeric id only: both are
/// documented with "a client ID" and no alias, and whether a real service
/// resolves an alias there is unverified (spec §4.2, §7 q4), so the strict
/// reading names no client by alias.
fn numeric_client_id(call: &Call<'_>, identifier: &str) -> Result<(), Reply> {
    if call.config().strictness.documented_aliases && identifier.parse::<u64>().is_err() {
        return Err(Reply::new(
            StatusCode::NOT_FOUND,
            codes::CLIENT_UNKNOWN,
            format!("The client ({identifier}) does not exist."),
        ));
    }
    Ok(())
}

fn client_get(call: &Call<'_>, identifier: &str) -> Result<Reply, Reply> {
    numeric_client_id(call, identifier)?;
    let state = call.shared.state();
    let client = state.client(identifier, call.version).ok_or_else(|| {
        Reply::new(
            StatusCode::NOT_FOUND,
            codes::CLIENT_UNKNOWN,
            format!("The client ({identifier}) does not exist."),
        )
    })?;
    Ok(Reply::ok(codes::CLIENT_GET_OK, "The client was found.").fields(client))
}

fn client_list(call: &Call<'_>) -> Result<Reply, Reply> {
    let (start, end) = page(call)?;
    let (clients, total) = call.shared.state().list_clients(start, end);
    Ok(Reply::ok(
        codes::CLIENT_LIST_OK,
        format!("Got {} of {total} client(s).", clients.len()),
    )
    .field("start", start)
    .field("end", end)
    .field("totalCount", total)
    .field("clients", clients))
}

fn client_update(call: &Call<'_>, identifier: &str) -> Result<Reply, Reply> {
    let request: ClientRequest = call.body()?;
    let client = call.shared.state().update_client(
        identifier,
        request,
        call.version,
        &call.config().strictness,
        now_ms(),
    )?;
    Ok(Reply::ok(
        codes::CLIENT_UPDATE_OK,
        "The client was updated successfully.",
    )
    .fields(client))
}

fn client_delete(call: &Call<'_>, identifier: &str) -> Result<Reply, Reply> {
    numeric_client_id(call, identifier)?;
    let tokens = call
        .shared
        .state()
        .delete_client(identifier, call.version)?;
    tracing::debug!(tokens, "deleted an emulated client and its tokens");
    Ok(Reply::no_content())
}

fn client_secret_update(call: &Call<'_>, identifier: &str) -> Result<Reply, Reply> {
    let request: SecretUpdateRequest = call.body()?;
    let secret = request.client_secret.unwrap_or_default();
    let (new, old) =
        call.shared
            .state()
            .set_client_secret(identifier, call.version, Some(secret))?;
    Ok(Reply::ok(
        codes::CLIENT_SECRET_UPDATE_OK,
        "The client secret was updated successfully.",
    )
    .field("newClientSecret", new)
    .field("oldClientSecret", old))
}

fn client_secret_refresh(call: &Call<'_>, identifier: &str) -> Result<Reply, Reply> {
    let (new, old) = call
        .shared
        .state()
        .set_client_secret(identifier, call.version, None)?;
    Ok(Reply::ok(
        codes::CLIENT_SECRET_REFRESH_OK,
        "The client secret was refreshed successfully.",
    )
    .field("newClientSecret", new)
    .field("oldClientSecret", old))
}

// ---- service ---------------------------------------------------------------

/// The service settings a client of the API may check at start-up.
fn service(call: &Call<'_>) -> Value {
    let config = call.config();
    let scopes = config.supported_scopes.as_ref().map(|scopes| {
        scopes
            .iter()
            .map(|name| json!({ "name": name }))
            .collect::<Vec<_>>()
    });
    // v2 identifies the service by its API key (numeric on real services);
    // v3 by the service id, which Authlete also reports as `apiKey`.
    let api_key = match call.version {
        Version::V2 => config
            .api_key
            .parse::<u64>()
            .map_or_else(|_| Value::from(config.api_key.as_str()), Value::from),
        Version::V3 => Value::from(config.service_id),
    };
    json!({
        "apiKey": api_key,
        "serviceName": "handover emulated Authlete service",
        "supportedScopes": scopes,
        "supportedGrantTypes": GrantType::ALL,
        "refreshTokenKept": config.refresh_token_kept,
        "refreshTokenDurationKept": false,
        "refreshTokenDurationReset": false,
        "singleAccessTokenPerSubject": config.single_access_token_per_subject,
        "tokenExpirationLinked": false,
        "clientIdAliasEnabled": true,
        "accessTokenDuration": DEFAULT_ACCESS_TOKEN_DURATION_S,
        "refreshTokenDuration": DEFAULT_REFRESH_TOKEN_DURATION_S,
    })
}

fn service_get(call: &Call<'_>, api_key: Option<&str>) -> Result<Reply, Reply> {
    if let Some(key) = api_key
        && key != call.config().api_key
    {
        return Err(Reply::new(
            StatusCode::NOT_FOUND,
            codes::SERVICE_UNKNOWN,
            format!("The service ({key}) does not exist."),
        ));
    }
    Ok(Reply::ok(codes::SERVICE_GET_OK, "The service was found.").fields(service(call)))
}

fn service_list(call: &Call<'_>) -> Result<Reply, Reply> {
    Ok(Reply::ok(codes::SERVICE_LIST_OK, "Got 1 of 1 service(s).")
        .field("start", 0)
        .field("end", 1)
        .field("totalCount", 1)
        .field("services", [service(call)]))
}

// ---- helpers ---------------------------------------------------------------

/// `start` (default 0) and `end` (exclusive, default 5) of a list API.
fn page(call: &Call<'_>) -> Result<(usize, usize), Reply> {
    let parse = |name: &str, default: usize| match call.query(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(text) => text.parse::<usize>().map_err(|_| {
            Reply::new(
                StatusCode::BAD_REQUEST,
                codes::RANGE_INVALID,
                format!("'{name}' must be a non-negative integer."),
            )
        }),
    };
    let start = parse("start", 0)?;
    let end = parse("end", DEFAULT_PAGE_END)?;
    if end < start {
        return Err(Reply::new(
            StatusCode::BAD_REQUEST,
            codes::RANGE_INVALID,
            "'end' must not be less than 'start'.",
        ));
    }
    Ok((start, end))
}

/// The wire name of a grant type (`AUTHORIZATION_CODE`).
fn grant_type_name(grant_type: GrantType) -> String {
    match serde_json::to_value(grant_type) {
        Ok(Value::String(name)) => name,
        _ => format!("{grant_type:?}"),
    }
}
