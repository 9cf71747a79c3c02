//! One decoded API call of the Authlete emulator: the body as JSON (form
//! bodies converted), typed decoding and the shared error replies. The
//! HTTP front (`server.rs`) builds a [`Call`]; the APIs (`endpoints.rs`)
//! read it, so that neither imports the other.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::envelope::{self as codes, Reply};
use super::store::Version;
use super::{Config, Shared};
use crate::http::form;

/// Form fields whose JSON type is not a string, so that a form body
/// decodes to the same request as its JSON twin.
const FORM_INTEGER_FIELDS: [&str; 4] = [
    "accessTokenDuration",
    "refreshTokenDuration",
    "accessTokenExpiresAt",
    "refreshTokenExpiresAt",
];
const FORM_BOOLEAN_FIELDS: [&str; 4] = [
    "clientIdAliasUsed",
    "accessTokenPersistent",
    "accessTokenValueUpdated",
    "clientIdAliasEnabled",
];
/// Form fields holding a space-separated list.
const FORM_LIST_FIELDS: [&str; 1] = ["scopes"];

/// One request to an API, after version and credentials were settled.
#[derive(Debug)]
pub(super) struct Call<'a> {
    /// The emulator.
    pub(super) shared: &'a Arc<Shared>,
    /// Which API generation the path and credentials belong to.
    pub(super) version: Version,
    /// Whether the path named a service id (every v3 API but
    /// `/api/service/get/list`).
    pub(super) service_in_path: bool,
    /// The HTTP method.
    pub(super) method: &'a Method,
    pub(super) query: &'a str,
    pub(super) content_type: Option<&'a str>,
    pub(super) body: &'a [u8],
}

impl Call<'_> {
    /// The service settings.
    pub(super) fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The body as JSON (a form body is converted field by field); an
    /// empty body is an empty object.
    pub(super) fn body_value(&self) -> Result<Value, Reply> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Map::new()));
        }
        let is_form = self
            .content_type
            .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            return Ok(form_to_json(&String::from_utf8_lossy(self.body)));
        }
        serde_json::from_slice(self.body).map_err(|err| {
            Reply::new(
                StatusCode::BAD_REQUEST,
                codes::REQUEST_MALFORMED,
                format!("The request body could not be parsed as JSON: {err}."),
            )
        })
    }

    /// The body as a typed request.
    pub(super) fn body<T: DeserializeOwned>(&self) -> Result<T, Reply> {
        decode(self.body_value()?)
    }

    /// The first value of a query parameter.
    pub(super) fn query(&self, name: &str) -> Option<String> {
        let pairs = form::parse(self.query);
        form::first(&pairs, name).map(str::to_owned)
    }
}

/// A JSON value as a typed request; a mismatch is the caller's fault.
pub(super) fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Reply> {
    serde_json::from_value(value).map_err(|err| {
        Reply::new(
            StatusCode::BAD_REQUEST,
            codes::REQUEST_MALFORMED,
            format!("The request could not be parsed: {err}."),
        )
    })
}

/// 404 for a path that is no API.
pub(super) fn not_found(path: &str) -> Reply {
    Reply::new(
        StatusCode::NOT_FOUND,
        codes::API_NOT_FOUND,
        format!("The API ({path}) does not exist."),
    )
}

/// A form body as the JSON object its JSON twin would be.
fn form_to_json(body: &str) -> Value {
    let mut object = Map::new();
    for (name, value) in form::parse(body) {
        let json = if FORM_INTEGER_FIELDS.contains(&name.as_str()) {
            value
                .parse::<i64>()
                .map_or_else(|_| Value::String(value.clone()), Value::from)
        } else if FORM_BOOLEAN_FIELDS.contains(&name.as_str()) {
            value
                .parse::<bool>()
                .map_or_else(|_| Value::String(value.clone()), Value::Bool)
        } else if FORM_LIST_FIELDS.contains(&name.as_str()) {
            Value::from(value.split_whitespace().collect::<Vec<_>>())
        } else {
            Value::String(value)
        };
        object.insert(name, json);
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_like_json() {
        let value = form_to_json(
            "grantType=AUTHORIZATION_CODE&clientId=123&scopes=openid+email&accessTokenDuration=60&clientIdAliasUsed=true",
        );
        assert_eq!(
            value,
            serde_json::json!({
                "grantType": "AUTHORIZATION_CODE",
                "clientId": "123",
                "scopes": ["openid", "email"],
                "accessTokenDuration": 60,
                "clientIdAliasUsed": true,
            })
        );
    }
}
