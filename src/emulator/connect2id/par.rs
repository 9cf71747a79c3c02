//! Pushed authorization requests (`POST /par`, RFC 9126; Connect2id since
//! RN 8.0).
//!
//! A client authenticates as at the token endpoint and pushes its whole
//! authorization request; it gets back a `request_uri`
//! (`urn:ietf:params:oauth:request_uri:<random>`) that lives
//! `op.par.lifetime` seconds (`Strictness::par_lifetime_secs`, 60 by
//! default). The login page then starts the authorization session with just
//! `client_id` and `request_uri` in its query; the pushed request stands in
//! for it, once (RN 12.18 invalidates a URI after use) and only for the
//! client that pushed it.
//!
//! Pushed requests are in-memory state that no export carries: a `/par` on
//! one server followed by the session start on another fails with
//! `invalid_request_uri`, which is what a proxy flipping between them meets.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::tokens::{authenticate, form_body};
use super::web::{self, ApiError, Form, Reply};
use super::{Expiring, Req, Service};

/// The prefix of every `request_uri` this server issues.
pub(crate) const REQUEST_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";

/// A pushed request waiting for its authorization session.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    expires: u64,
    client_id: String,
    /// The pushed parameters, as a query string.
    query: String,
}

impl Expiring for Pushed {
    fn expires(&self) -> u64 {
        self.expires
    }
}

/// `POST /par`.
pub(super) async fn push(service: &Arc<Service>, mut req: Req) -> Reply {
    let form = form_body(&mut req).await?;
    let client = authenticate(service, &req.headers, &form)?;
    if form.get("request_uri").is_some() {
        return Err(ApiError::invalid_request(
            "A pushed request must not contain a request_uri",
        ));
    }
    if form.get("response_type").is_none() {
        return Err(ApiError::invalid_request("Missing response_type parameter"));
    }
    // Client authentication parameters are not part of the request
    // (RN 13.1).
    let query = form
        .pairs()
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "client_secret" | "client_assertion" | "client_assertion_type"
            )
        })
        .map(|(name, value)| {
            format!(
                "{}={}",
                web::percent_encode(name),
                web::percent_encode(value)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let now = service.now();
    let lifetime = service.strict().par_lifetime_secs;
    let id = service.keys.random_string::<32>();
    service.pushed.insert(
        id.clone(),
        Pushed {
            expires: now + lifetime,
            client_id: client.client_id,
            query,
        },
        now,
    );
    web::json_with(
        StatusCode::CREATED,
        &json!({
            "request_uri": format!("{REQUEST_URI_PREFIX}{id}"),
            "expires_in": lifetime,
        }),
    )
}

impl Service {
    /// The pushed request behind `request_uri`, consumed, if it is live and
    /// was pushed by `client_id`.
    pub(crate) fn take_pushed(&self, request_uri: &str, client_id: &str) -> Option<Form> {
        let id = request_uri.strip_prefix(REQUEST_URI_PREFIX)?;
        let pushed = self.pushed.take(id, self.now())?;
        (pushed.client_id == client_id).then(|| {
            let mut query = Form::parse(&pushed.query);
            query.set_default("client_id", client_id);
            query
        })
    }
}
