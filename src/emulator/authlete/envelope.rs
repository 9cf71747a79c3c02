//! The Authlete response envelope and the result codes the emulator uses.
//!
//! Every Authlete answer, success or error, is a JSON object that starts
//! with `resultCode` and `resultMessage` (`"[A109001] ..."`), plus `action`
//! for the APIs that have one (spec §3.3). A result code reads
//! `A` + three-digit API number + category digit + two-digit sequence; the
//! category (third digit from the right) is 0 success, 1 Authlete error,
//! 2 service error (the caller of the API got it wrong), 3 client error (an
//! OAuth client or resource server presented something bad) (spec §1.3).
//!
//! Codes marked *confirmed* appear in the spec, the seed article or
//! Authlete's published examples; every other code is *inferred*: a
//! plausible value in the right family, chosen here because the real one is
//! not documented. Code that talks to a real Authlete service must not
//! match on inferred codes; the HTTP status and `action` are the stable
//! signal.

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::http::{Body, empty_response, json_response};

// Common to every API.
/// Internal server error (confirmed).
pub(super) const SERVER_ERROR: &str = "A001101";
/// No `Authorization` header (confirmed).
pub(super) const AUTHORIZATION_MISSING: &str = "A001202";
/// The `Authorization` header carries wrong credentials (inferred).
pub(super) const CREDENTIALS_INVALID: &str = "A001203";
/// A v3 token used for another service id (inferred).
pub(super) const SERVICE_FORBIDDEN: &str = "A001204";
/// No such API, including v3-only APIs called on a v2 path (inferred).
pub(super) const API_NOT_FOUND: &str = "A001205";
/// The API exists but not with this method (inferred).
pub(super) const METHOD_NOT_ALLOWED: &str = "A001206";
/// The request body could not be read or parsed (inferred).
pub(super) const REQUEST_MALFORMED: &str = "A001207";
/// The request asks for a feature the emulator does not model (emulator
/// only; a real service never answers this).
pub(super) const NOT_EMULATED: &str = "A001208";
/// The request-rate cap was reached (inferred; Authlete documents neither
/// a limit nor a 429, see `strictness.rs`).
pub(super) const RATE_LIMITED: &str = "A001209";

// /auth/token/create (API 109).
/// Token created (confirmed).
pub(super) const TOKEN_CREATE_OK: &str = "A109001";
/// `grantType` missing (inferred).
pub(super) const GRANT_TYPE_MISSING: &str = "A109201";
/// `grantType` is `REFRESH_TOKEN`, which create refuses (inferred).
pub(super) const GRANT_TYPE_REFRESH: &str = "A109202";
/// Neither `clientId` nor (v3) `clientIdentifier` given (inferred).
pub(super) const CLIENT_ID_MISSING: &str = "A109203";
/// The client named in the request does not exist (inferred).
pub(super) const TOKEN_CLIENT_UNKNOWN: &str = "A109204";
/// `subject` missing for a grant type that needs one (inferred).
pub(super) const SUBJECT_MISSING: &str = "A109205";
/// `subject` not ASCII or longer than 100 characters (inferred).
pub(super) const SUBJECT_INVALID: &str = "A109206";
/// A scope the service does not support (inferred).
pub(super) const SCOPE_UNSUPPORTED: &str = "A109207";
/// The hash of `accessToken` already exists (**invented**: the real code is
/// undocumented, spec §7 question 1; only the lenient
/// `DuplicateToken::InventedCodes` reading answers it, the strict one
/// answers [`SERVER_ERROR`]).
pub(super) const ACCESS_TOKEN_DUPLICATE: &str = "A109208";
/// The hash of `refreshToken` already exists (invented, as above).
pub(super) const REFRESH_TOKEN_DUPLICATE: &str = "A109209";
/// A negative duration (inferred).
pub(super) const DURATION_INVALID: &str = "A109210";
/// v2 `clientId` that is not a number (inferred).
pub(super) const CLIENT_ID_NOT_NUMERIC: &str = "A109211";

// /auth/token/update (API 135).
/// Token updated (confirmed).
pub(super) const TOKEN_UPDATE_OK: &str = "A135001";
/// No locator (`accessToken`, hashes, `tokenId`) given (inferred).
pub(super) const TOKEN_LOCATOR_MISSING: &str = "A135201";
/// The located token does not exist (inferred).
pub(super) const TOKEN_UPDATE_UNKNOWN: &str = "A135301";

// /auth/token/delete (API 313) and /auth/token/revoke (API 312).
/// Delete of a token that does not exist (inferred from a third-party
/// mapping of Authlete's message "The specified access token does not
/// exist").
pub(super) const TOKEN_DELETE_UNKNOWN: &str = "A313301";
/// Tokens revoked (confirmed).
pub(super) const TOKEN_REVOKE_OK: &str = "A312001";
/// Revoke without any criterion (inferred; refusing protects against
/// revoking the whole service by mistake).
pub(super) const REVOKE_CRITERIA_MISSING: &str = "A312201";
/// Revoke naming a client that does not exist (inferred).
pub(super) const REVOKE_CLIENT_UNKNOWN: &str = "A312301";

// /auth/token/get/list (API 111, inferred).
/// Token list returned (inferred).
pub(super) const TOKEN_LIST_OK: &str = "A111001";
/// `start`/`end` not numbers or `end < start` (inferred).
pub(super) const RANGE_INVALID: &str = "A111201";
/// List filtered by a client that does not exist (inferred).
pub(super) const TOKEN_LIST_CLIENT_UNKNOWN: &str = "A111301";

// /auth/token/create/batch (API 482) and its status (API 447).
/// Batch accepted (confirmed).
pub(super) const BATCH_ACCEPTED: &str = "A482001";
/// Batch body is not a JSON array of requests (inferred).
pub(super) const BATCH_MALFORMED: &str = "A482201";
/// Batch item without `accessToken`, which batch items require
/// (requirement confirmed by the generated Go docs; code inferred).
pub(super) const BATCH_ACCESS_TOKEN_MISSING: &str = "A482202";
/// Batch status returned (confirmed).
pub(super) const BATCH_STATUS_OK: &str = "A447001";
/// Unknown batch request id (inferred).
pub(super) const BATCH_UNKNOWN: &str = "A447301";

// /auth/introspection (API 056/057) and /auth/introspection/standard.
/// The access token is valid (confirmed).
pub(super) const INTROSPECTION_OK: &str = "A056001";
/// `token` missing (inferred).
pub(super) const INTROSPECTION_TOKEN_MISSING: &str = "A056201";
/// The access token does not exist (confirmed).
pub(super) const ACCESS_TOKEN_UNKNOWN: &str = "A057302";
/// The access token has expired and was deleted (inferred).
pub(super) const ACCESS_TOKEN_EXPIRED: &str = "A057303";
/// The token lacks a requested scope or belongs to another subject
/// (inferred).
pub(super) const ACCESS_TOKEN_INSUFFICIENT: &str = "A057304";
/// Standard introspection processed (inferred).
pub(super) const STANDARD_INTROSPECTION_OK: &str = "A146001";
/// Standard introspection without `parameters` or `token` (inferred).
pub(super) const STANDARD_INTROSPECTION_BAD: &str = "A146201";

// /auth/revocation (API 113).
/// Revocation processed (confirmed by Authlete's published example).
pub(super) const REVOCATION_OK: &str = "A113001";
/// No `parameters` or no `token` in them (inferred).
pub(super) const REVOCATION_MALFORMED: &str = "A113201";
/// Client authentication failed (inferred).
pub(super) const REVOCATION_CLIENT_INVALID: &str = "A113301";
/// The token was issued to another client (inferred).
pub(super) const REVOCATION_WRONG_CLIENT: &str = "A113302";

// /auth/token (API 053: refresh_token grant).
/// Refresh processed (confirmed, seed article).
pub(super) const REFRESH_OK: &str = "A053001";
/// No `parameters` (inferred).
pub(super) const TOKEN_PARAMETERS_MISSING: &str = "A053201";
/// No `grant_type` (inferred).
pub(super) const GRANT_TYPE_PARAMETER_MISSING: &str = "A053202";
/// A grant type the emulator's token endpoint does not process (inferred).
pub(super) const GRANT_TYPE_UNSUPPORTED: &str = "A053203";
/// No `refresh_token` (inferred).
pub(super) const REFRESH_TOKEN_PARAMETER_MISSING: &str = "A053204";
/// Client authentication failed (inferred).
pub(super) const TOKEN_CLIENT_INVALID: &str = "A053301";
/// The refresh token does not exist (inferred).
pub(super) const REFRESH_TOKEN_UNKNOWN: &str = "A053302";
/// The refresh token has expired (inferred).
pub(super) const REFRESH_TOKEN_EXPIRED: &str = "A053303";
/// The refresh token was issued to another client (inferred).
pub(super) const REFRESH_TOKEN_WRONG_CLIENT: &str = "A053304";

// Client management (inferred families except A149001).
/// Client created (inferred).
pub(super) const CLIENT_CREATE_OK: &str = "A121001";
/// The alias is taken by another client (inferred).
pub(super) const CLIENT_ALIAS_IN_USE: &str = "A121201";
/// A client field has the wrong JSON type or a value outside its enum
/// (inferred; only with `typed_client_metadata`).
pub(super) const CLIENT_METADATA_INVALID: &str = "A121202";
/// Client returned (inferred).
pub(super) const CLIENT_GET_OK: &str = "A122001";
/// Client does not exist (inferred; shared by get, update, delete and the
/// secret APIs).
pub(super) const CLIENT_UNKNOWN: &str = "A122301";
/// Client updated (inferred).
pub(super) const CLIENT_UPDATE_OK: &str = "A123001";
/// Client list returned (inferred).
pub(super) const CLIENT_LIST_OK: &str = "A125001";
/// Client secret refreshed (inferred).
pub(super) const CLIENT_SECRET_REFRESH_OK: &str = "A148001";
/// Client secret updated (confirmed).
pub(super) const CLIENT_SECRET_UPDATE_OK: &str = "A149001";
/// New secret has characters outside `A-Z a-z 0-9 - _` (inferred code; the
/// rule is confirmed).
pub(super) const CLIENT_SECRET_CHARSET: &str = "A149201";
/// New secret longer than 86 characters (inferred code; rule confirmed).
pub(super) const CLIENT_SECRET_TOO_LONG: &str = "A149202";
/// New secret missing or empty (inferred).
pub(super) const CLIENT_SECRET_MISSING: &str = "A149203";

// Service (inferred).
/// Service settings returned (inferred).
pub(super) const SERVICE_GET_OK: &str = "A126001";
/// Service list returned (inferred).
pub(super) const SERVICE_LIST_OK: &str = "A127001";
/// v2 `/service/get/{apiKey}` naming another service (inferred).
pub(super) const SERVICE_UNKNOWN: &str = "A126301";

/// `action` values (spec §1.3, §2).
pub(super) mod action {
    /// Success.
    pub(crate) const OK: &str = "OK";
    /// The caller's request was wrong.
    pub(crate) const BAD_REQUEST: &str = "BAD_REQUEST";
    /// The token or client does not exist (`/auth/token/update`).
    pub(crate) const NOT_FOUND: &str = "NOT_FOUND";
    /// The presented access token is unusable (introspection).
    pub(crate) const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// The token is valid but not good enough (introspection).
    pub(crate) const FORBIDDEN: &str = "FORBIDDEN";
    /// Client authentication failed (`/auth/token`, `/auth/revocation`).
    pub(crate) const INVALID_CLIENT: &str = "INVALID_CLIENT";
    /// An error on Authlete's side.
    pub(crate) const INTERNAL_SERVER_ERROR: &str = "INTERNAL_SERVER_ERROR";
}

/// One answer of the emulated API: status, envelope and extra fields.
///
/// Handlers return `Result<Reply, Reply>` so that `?` works for the error
/// path; both sides render the same way.
#[derive(Debug)]
pub(super) struct Reply {
    status: StatusCode,
    code: &'static str,
    message: String,
    action: Option<&'static str>,
    fields: Map<String, Value>,
    challenge: Option<&'static str>,
    retry_after: Option<u64>,
}

impl Reply {
    /// A reply with the given status, result code and message.
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            action: None,
            fields: Map::new(),
            challenge: None,
            retry_after: None,
        }
    }

    /// A 200 reply.
    pub(super) fn ok(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, code, message)
    }

    /// A 400 reply with action `BAD_REQUEST`, the shape of every rejected
    /// management call that has an action.
    pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message).action(action::BAD_REQUEST)
    }

    /// A 204 reply: no body at all, as `DELETE` answers.
    pub(super) fn no_content() -> Self {
        Self::new(StatusCode::NO_CONTENT, "", "")
    }

    /// A 200 reply from an endpoint backend API (`/auth/token`,
    /// `/auth/revocation`, ...) telling the service to answer its OAuth
    /// client with an RFC 6749 error, carried in `responseContent`.
    pub(super) fn oauth_error(
        code: &'static str,
        action: &'static str,
        error: &str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        let content = serde_json::json!({
            "error": error,
            "error_description": format!("[{code}] {message}"),
        });
        Self::ok(code, message)
            .action(action)
            .field("responseContent", content.to_string())
    }

    /// Sets `action`.
    pub(super) fn action(mut self, action: &'static str) -> Self {
        self.action = Some(action);
        self
    }

    /// Adds one field next to the envelope.
    pub(super) fn field(mut self, key: &str, value: impl Serialize) -> Self {
        // Serialising plain data (strings, numbers, our derived types)
        // cannot fail; a failure would drop only this field.
        if let Ok(value) = serde_json::to_value(value) {
            self.fields.insert(key.to_owned(), value);
        }
        self
    }

    /// Adds every field of `value`, which must serialise to an object.
    pub(super) fn fields(mut self, value: impl Serialize) -> Self {
        if let Ok(Value::Object(map)) = serde_json::to_value(value) {
            self.fields.extend(map);
        }
        self
    }

    /// Adds a `WWW-Authenticate` challenge (401 answers).
    pub(super) fn challenge(mut self, scheme: &'static str) -> Self {
        self.challenge = Some(scheme);
        self
    }

    /// Adds `Retry-After: seconds` (429 answers).
    pub(super) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The action, if the API has one (the front maps it to a status).
    pub(super) fn action_name(&self) -> Option<&'static str> {
        self.action
    }

    /// A field next to the envelope.
    pub(super) fn field_value(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The result code (for the batch status, which reports the code of the
    /// item that failed).
    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    /// The human part of the result message.
    pub(super) fn message(&self) -> &str {
        &self.message
    }

    /// Renders the reply: `resultCode` and `resultMessage` first, then
    /// `action`, then the fields.
    pub(super) fn into_response(self) -> Response<Body> {
        if self.status == StatusCode::NO_CONTENT {
            return empty_response(StatusCode::NO_CONTENT);
        }
        let mut body = Map::new();
        body.insert("resultCode".to_owned(), Value::from(self.code));
        body.insert(
            "resultMessage".to_owned(),
            Value::from(format!("[{}] {}", self.code, self.message)),
        );
        if let Some(action) = self.action {
            body.insert("action".to_owned(), Value::from(action));
        }
        body.extend(self.fields);
        let mut response = json_response(self.status, &body);
        if let Some(scheme) = self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
