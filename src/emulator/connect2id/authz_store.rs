//! The authorization store API (`/authz-store/rest/v3`): long-lived
//! authorizations keyed by subject and client, the revocation journal and
//! token inspection.
//!
//! * `POST /authorizations` mints: it stores the record (replacing the same
//!   subject and client) with fresh refresh-token material and answers a
//!   code, or tokens with `?return=tokens`.
//! * `POST /authorizations?import=true` stores the record exactly as given
//!   (keeping `rts`, `rti`, `iat`; `rft` is ignored) and mints nothing, so
//!   the refresh token of the source keeps working here when the JWK sets
//!   match. Leniently the client need not be registered here; strictly it
//!   must (`Strictness::import_requires_client`, else `400 invalid_client`).
//! * Every record read carries `rft`, a refresh token rebuilt from `rts`:
//!   the same string every time leniently, a new one every time strictly
//!   (`Strictness::random_refresh_token_nonce`); all of them work.
//! * `/inspection` with an access token is refused strictly
//!   (`authzStore.accessToken.allowDirectInspection=false`).
//! * `POST /revocation` deletes the matching records and journals the
//!   revocation: tokens of that subject / client issued at or before the
//!   timestamp (default now) are revoked.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::clients::ClientInfo;
use super::records::Authorization;
use super::store::Cursor;
use super::tokens::{DEFAULT_ACCESS_TOKEN_LIFETIME, DEFAULT_ID_TOKEN_LIFETIME, Grant, issue_code};
use super::web::{self, ApiError, Form, Reply};
use super::{Api, Req, Service, limits, only};
use crate::http::{Body, empty_response};

fn not_found() -> ApiError {
    ApiError::not_found("not_found", "Not found: no matching authorization")
}

/// Parses a record body; `rft` is output only and ignored.
fn parse_record(body: &[u8]) -> Result<Authorization, ApiError> {
    let mut object = web::parse_object(body)?;
    object.remove("rft");
    let record: Authorization = serde_json::from_value(Value::Object(object))
        .map_err(|err| ApiError::invalid_request(format!("Invalid authorization: {err}")))?;
    if record.sub.is_empty() || record.cid.is_empty() {
        return Err(ApiError::invalid_request(
            "Invalid authorization: empty sub or cid",
        ));
    }
    Ok(record)
}

/// `/authz-store/rest/v3/authorizations`.
pub(super) async fn authorizations(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::AuthzStore)?;
    match req.method {
        Method::POST => {
            let body = req.body(limits::OTHER).await?;
            let record = parse_record(&body)?;
            if req.query.flag("import") {
                import(service, record)
            } else {
                mint(service, record, req.query.get("return") == Some("tokens"))
            }
        }
        Method::PUT => {
            let body = req.body(limits::OTHER).await?;
            update(service, parse_record(&body)?)
        }
        Method::GET => get(service, &req),
        Method::DELETE => {
            let (Some(sub), Some(cid)) = (req.query.get("subject"), req.query.get("client_id"))
            else {
                return Err(ApiError::invalid_request(
                    "Missing subject or client_id parameter",
                ));
            };
            match service.store.remove_authorization(sub, cid) {
                Some(_) => Ok(empty_response(StatusCode::NO_CONTENT)),
                None => Err(not_found()),
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Stores an imported record as given. Strictly the client must be
/// registered (`Strictness::import_requires_client`).
fn import(service: &Service, record: Authorization) -> Reply {
    if service.strict().import_requires_client && service.store.client(&record.cid).is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            format!("Invalid client: {} is not registered", record.cid),
        ));
    }
    let replaced = service.store.put_authorization(&record).is_some();
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    web::json_with(status, &service.authorization_output(&record))
}

/// Adds a new authorization with fresh refresh-token material and answers a
/// code or tokens for it.
fn mint(service: &Service, mut record: Authorization, return_tokens: bool) -> Reply {
    let Some(stored) = service.store.client(&record.cid) else {
        return Err(ApiError::invalid_request(format!(
            "Invalid authorization: client {} is not registered",
            record.cid
        )));
    };
    let client = ClientInfo::parse(&stored.info);
    let now = service.now();
    let iat = service.store.issue_time(&record.sub, &record.cid, now);
    record.iat = Some(iat);
    record.uat = Some(iat);
    record.scp.get_or_insert_with(Vec::new);
    record.irt.get_or_insert(false);
    record.rtr.get_or_insert(service.strict().default_rotate);
    record.rtl.get_or_insert(0);
    record.rtm.get_or_insert(0);
    record.idr.get_or_insert(false);
    record
        .ate
        .get_or_insert_with(|| "SELF_CONTAINED".to_owned());
    record.atl.get_or_insert(DEFAULT_ACCESS_TOKEN_LIFETIME);
    record.ats.get_or_insert_with(|| "PUBLIC".to_owned());
    if record.irt == Some(true) {
        record.rti = Some(iat);
        record.rts = Some(service.keys.random_string::<32>());
    } else {
        record.rti = None;
        record.rts = None;
    }
    service.store.put_authorization(&record);
    let grant = Grant {
        record,
        long_lived: true,
        id_token_lifetime: DEFAULT_ID_TOKEN_LIFETIME,
        auth: None,
        nonce: None,
    };
    if return_tokens {
        let response = service.authorize(&grant, &client, false)?;
        web::ok_json(&response)
    } else {
        let code = issue_code(service, grant, false, None, None);
        web::ok_json(&json!({ "code": code }))
    }
}

/// Updates an existing record; `iat`, and `rts`/`rti` unless given, are
/// kept. Answers the record with its (current format) refresh token.
fn update(service: &Service, given: Authorization) -> Reply {
    let now = service.now();
    let random_rts = service.keys.random_string::<32>();
    let updated =
        service
            .store
            .modify_authorization(&given.sub.clone(), &given.cid.clone(), |slot| {
                let current = slot.as_ref()?;
                let mut next = given;
                next.iat = current.iat;
                next.uat = Some(now);
                next.rts = next.rts.or_else(|| current.rts.clone());
                next.rti = next.rti.or(current.rti);
                if next.irt == Some(true) && next.rts.is_none() {
                    next.rts = Some(random_rts);
                    next.rti = Some(now);
                }
                *slot = Some(next.clone());
                Some(next)
            });
    match updated {
        Some(record) => web::ok_json(&service.authorization_output(&record)),
        None => Err(not_found()),
    }
}

fn get(service: &Arc<Service>, req: &Req) -> Reply {
    let records = match (req.query.get("subject"), req.query.get("client_id")) {
        (Some(sub), Some(cid)) => {
            return match service.store.authorization(sub, cid) {
                Some(record) => web::ok_json(&service.authorization_output(&record)),
                None => Err(not_found()),
            };
        }
        (Some(sub), None) => service.store.authorizations_of_subject(sub),
        (None, Some(cid)) => service.store.authorizations_of_client(cid),
        (None, None) => return Ok(export(service)),
    };
    Ok(web::streamed_array(
        records
            .iter()
            .map(|record| service.authorization_output(record))
            .collect(),
    ))
}

/// Streams every long-lived authorization as one JSON array.
pub(super) fn export(service: &Arc<Service>) -> http::Response<Body> {
    let service = service.clone();
    web::stream_export(b"[", b"]", move |cursor: &Cursor<(String, String)>| {
        let (chunk, next) = service.store.authorizations_chunk(cursor);
        let items = chunk
            .iter()
            .map(|record| service.authorization_output(record).to_string())
            .collect();
        (items, next)
    })
}

/// Reads a form body (the revocation and inspection resources take forms).
async fn form_body(req: &mut Req) -> Result<Form, ApiError> {
    only(req, &Method::POST)?;
    let body = req.body(limits::OTHER).await?;
    Form::parse_bytes(&body)
}

/// `POST /authz-store/rest/v3/revocation` (and v2's, which answers `404`
/// instead of `204` when no long-lived record matched, RN 10.0).
pub(super) async fn revocation(service: &Arc<Service>, mut req: Req, v2: bool) -> Reply {
    service.require(&req.headers, Api::AuthzStore)?;
    let form = form_body(&mut req).await?;
    let subject = form.get("subject");
    let client_id = form.get("client_id");
    let actor = form.get("actor");
    if subject.is_none() && client_id.is_none() && actor.is_none() {
        return Err(ApiError::invalid_request(
            "Missing subject, client_id or actor parameter",
        ));
    }
    let timestamp =
        match form.get("timestamp") {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                ApiError::invalid_request("Invalid timestamp: must be epoch seconds")
            })?),
        };
    let quiet = req.query.flag("quiet") || form.flag("quiet");
    let candidates: Vec<Authorization> = match (subject, client_id) {
        (Some(sub), Some(cid)) => service.store.authorization(sub, cid).into_iter().collect(),
        (Some(sub), None) => service.store.authorizations_of_subject(sub),
        (None, Some(cid)) => service.store.authorizations_of_client(cid),
        (None, None) => all_authorizations(service),
    };
    let mut removed = Vec::new();
    for record in candidates {
        if actor.is_some_and(|actor| record.act.as_deref() != Some(actor)) {
            continue;
        }
        if let Some(record) = service.store.remove_authorization(&record.sub, &record.cid) {
            removed.push(json!(record));
        }
    }
    let now = service.now();
    service
        .store
        .revoke(subject, client_id, actor, timestamp, now);
    if v2 && removed.is_empty() {
        return Err(not_found());
    }
    if quiet || removed.is_empty() {
        return Ok(empty_response(StatusCode::NO_CONTENT));
    }
    Ok(web::streamed_array(removed))
}

/// Every record, for an actor-only revocation (rare; walks the dataset).
fn all_authorizations(service: &Service) -> Vec<Authorization> {
    let mut out = Vec::new();
    let mut cursor = Cursor::Start;
    loop {
        let (chunk, next) = service.store.authorizations_chunk(&cursor);
        out.extend(chunk.into_iter().filter(|record| record.act.is_some()));
        if matches!(next, Cursor::Done) {
            return out;
        }
        cursor = next;
    }
}

/// `POST /authz-store/rest/v3/inspection`: the record behind a refresh or
/// access token. A refresh token lookup echoes the submitted token as
/// `rft` (RN 14.0).
pub(super) async fn inspection(service: &Arc<Service>, mut req: Req) -> Reply {
    service.require(&req.headers, Api::AuthzStore)?;
    let form = form_body(&mut req).await?;
    let (token, kind) = if let Some(token) = form.get("refresh_token") {
        (token, Some(true))
    } else if let Some(token) = form.get("access_token") {
        (token, Some(false))
    } else if let Some(token) = form.get("token") {
        (token, None)
    } else {
        return Err(ApiError::invalid_request(
            "Missing token, refresh_token or access_token parameter",
        ));
    };
    let direct = service.strict().allow_direct_inspection;
    if kind == Some(false) && !direct {
        return Err(direct_inspection_disabled());
    }
    if kind != Some(false)
        && let Some(record) = service.inspect_refresh_token(token)
    {
        let mut value = json!(record);
        value["rft"] = token.into();
        return web::ok_json(&value);
    }
    if kind != Some(true) {
        if !direct {
            // A `token` that is no refresh token would need an access token
            // lookup, which the server does not allow.
            return Err(direct_inspection_disabled());
        }
        if let Some(record) = service.inspect_access_token(token) {
            return web::ok_json(&service.authorization_output(&record));
        }
    }
    Err(not_found())
}

/// The answer when `authzStore.accessToken.allowDirectInspection` is false.
fn direct_inspection_disabled() -> ApiError {
    ApiError::invalid_request("Direct access token inspection is not allowed")
}
