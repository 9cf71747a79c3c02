//! Grants and tokens: the `/token` endpoint (`authorization_code`,
//! `refresh_token`, `client_credentials`), `/token/introspect` and
//! `/token/revoke`, plus the issuing logic shared with the authorization
//! session, direct authorization and authz-store APIs.
//!
//! A grant is carried in the authz-store record shape (short field names)
//! whether it is long-lived or transient, so one path issues tokens for
//! both:
//!
//! * long-lived: the record is persisted (replacing the same subject and
//!   client) and its refresh token is the AES-GCM encryption of `{sub, cid,
//!   rts}` (plus the device session key under native SSO), so a token is
//!   rebuilt from the record and works on any server holding the record and
//!   the same JWK set. Leniently the nonce is derived, so the rebuilt token
//!   equals the one the client holds; strictly it is random, so it does not
//!   (`Strictness::random_refresh_token_nonce`) but is equally accepted;
//! * transient: the refresh token is a JWE of the whole record plus `iat`,
//!   `exp` and `jti`; nothing is stored.
//!
//! Native SSO (`Strictness::native_sso`) opens a device session at the code
//! grant and binds the grant's refresh token to it; revoking the
//! `device_secret` ends it.
//!
//! Access tokens are Ed25519-signed JWTs (`SELF_CONTAINED`) or
//! `<key>.<hmac>` identifiers kept in memory (`IDENTIFIER`, never exported,
//! as on the real server). Revocation compares whole seconds: a token is
//! revoked when its `iat` is at or before a matching journal timestamp.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::clients::ClientInfo;
use super::keys::{constant_time_eq, sha256_b64};
use super::records::{Authorization, Session};
use super::web::{self, ApiError, Form, Reply, percent_decode};
use super::{Expiring, Req, Service, limits};
use crate::http::empty_response;

/// Default access token lifetime in seconds.
pub(crate) const DEFAULT_ACCESS_TOKEN_LIFETIME: i64 = 600;
/// Default ID token lifetime in seconds.
pub(crate) const DEFAULT_ID_TOKEN_LIFETIME: i64 = 600;
/// Authorization code lifetime in seconds.
pub(crate) const CODE_LIFETIME: u64 = 600;
/// How long a rotated transient refresh token may still be used
/// (`authzStore.refreshToken.rotatedReuseGracePeriod`, 5 s).
const ROTATED_REUSE_GRACE: u64 = 5;
/// How long a rotated-away long-lived refresh token is remembered for replay
/// detection. The real server keeps it longer; a day bounds the memory of a
/// load test.
const EXPENDED_RETENTION: u64 = 24 * 3600;

/// An authorization code: the grant it carries and its checks.
#[derive(Debug, Clone)]
pub(crate) struct CodeGrant {
    pub(crate) expires: u64,
    pub(crate) grant: Grant,
    /// Whether redeeming it persists the record (false for codes minted by
    /// the authz store, whose record already exists).
    pub(crate) persist: bool,
    /// The redirect URI the authorization request named explicitly.
    pub(crate) redirect_uri: Option<String>,
    /// PKCE challenge and method.
    pub(crate) code_challenge: Option<(String, String)>,
}

impl Expiring for CodeGrant {
    fn expires(&self) -> u64 {
        self.expires
    }
}

/// An identifier access token.
#[derive(Debug, Clone)]
pub(crate) struct IdentifierToken {
    sub: String,
    cid: String,
    scope: Vec<String>,
    aud: Vec<String>,
    iat: u64,
    exp: u64,
}

impl Expiring for IdentifierToken {
    fn expires(&self) -> u64 {
        self.exp
    }
}

/// A refresh token that was rotated away, for replay detection.
#[derive(Debug, Clone)]
pub(crate) struct Expended {
    at: u64,
    expires: u64,
}

impl Expiring for Expended {
    fn expires(&self) -> u64 {
        self.expires
    }
}

/// How the subject authenticated, for ID tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthInfo {
    pub(crate) sid: Option<String>,
    pub(crate) auth_time: Option<u64>,
    pub(crate) acr: Option<String>,
    pub(crate) amr: Option<Vec<String>>,
}

/// What an ID token needs beyond the authorization.
#[derive(Debug, Clone, Copy)]
struct IdTokenParams<'a> {
    lifetime: i64,
    auth: Option<&'a AuthInfo>,
    nonce: Option<&'a str>,
}

impl IdTokenParams<'_> {
    /// An ID token refreshed at the token endpoint (`idr`), with no login
    /// context.
    fn refreshed() -> Self {
        Self {
            lifetime: DEFAULT_ID_TOKEN_LIFETIME,
            auth: None,
            nonce: None,
        }
    }
}

/// A grant about to be turned into tokens.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The grant in authz-store record form.
    pub(crate) record: Authorization,
    pub(crate) long_lived: bool,
    pub(crate) id_token_lifetime: i64,
    pub(crate) auth: Option<AuthInfo>,
    pub(crate) nonce: Option<String>,
}

/// The token settings of a consent or a direct authorization, with the
/// long names of the integration APIs.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GrantSpec {
    #[serde(default)]
    scope: Option<Value>,
    #[serde(default)]
    claims: Option<Value>,
    #[serde(default)]
    audience: Option<Vec<String>>,
    #[serde(default)]
    long_lived: Option<bool>,
    #[serde(default)]
    refresh_token: Option<RefreshSpec>,
    #[serde(default)]
    access_token: Option<AccessSpec>,
    #[serde(default)]
    id_token: Option<IdTokenSpec>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    claims_data: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RefreshSpec {
    #[serde(default)]
    issue: Option<bool>,
    #[serde(default)]
    lifetime: Option<i64>,
    #[serde(default)]
    rotate: Option<bool>,
    #[serde(default)]
    max_idle: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct AccessSpec {
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    lifetime: Option<i64>,
    #[serde(default)]
    sub_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct IdTokenSpec {
    #[serde(default)]
    lifetime: Option<i64>,
    #[serde(default)]
    allow_refresh: Option<bool>,
}

/// Resolves a `scope` or `claims` consent value: an array, `"*"` for
/// everything requested, or absent for everything requested.
fn consented(
    value: Option<Value>,
    requested: &[String],
    name: &str,
) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(requested.to_vec()),
        Some(Value::String(star)) if star == "*" => Ok(requested.to_vec()),
        Some(Value::String(list)) => Ok(list.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(ApiError::invalid_request(format!(
                    "Invalid {name}: must be strings"
                ))),
            })
            .collect(),
        Some(_) => Err(ApiError::invalid_request(format!("Invalid {name}"))),
    }
}

fn non_negative(value: Option<i64>, default: i64, name: &str) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(value) if value >= 0 => Ok(value),
        Some(_) => Err(ApiError::invalid_request(format!(
            "Invalid {name}: must not be negative"
        ))),
    }
}

impl GrantSpec {
    /// Builds the grant for `sub` and `cid`. `requested_*` are what the
    /// client asked for, used for `"*"` and absent values.
    pub(crate) fn into_grant(
        self,
        sub: &str,
        cid: &str,
        requested_scope: &[String],
        requested_claims: &[String],
        default_rotate: bool,
    ) -> Result<Grant, ApiError> {
        let scope = consented(self.scope, requested_scope, "scope")?;
        let claims = consented(self.claims, requested_claims, "claims")?;
        let refresh = self.refresh_token.unwrap_or_default();
        let access = self.access_token.unwrap_or_default();
        let id_token = self.id_token.unwrap_or_default();
        let encoding = access
            .encoding
            .unwrap_or_else(|| "SELF_CONTAINED".to_owned());
        if encoding != "SELF_CONTAINED" && encoding != "IDENTIFIER" {
            return Err(ApiError::invalid_request(
                "Invalid access_token.encoding: must be SELF_CONTAINED or IDENTIFIER",
            ));
        }
        let sub_type = access.sub_type.unwrap_or_else(|| "PUBLIC".to_owned());
        let record = Authorization {
            sub: sub.to_owned(),
            cid: cid.to_owned(),
            scp: Some(scope),
            clm: Some(claims),
            aud: self.audience.filter(|aud| !aud.is_empty()),
            // Issued by default; only to clients registered for the
            // refresh_token grant (checked when the grant completes).
            irt: Some(refresh.issue.unwrap_or(true)),
            rtl: Some(non_negative(refresh.lifetime, 0, "refresh_token.lifetime")?),
            // `authzStore.refreshToken.defaultRotate` when the consent is
            // silent (RN 14.0).
            rtr: Some(refresh.rotate.unwrap_or(default_rotate)),
            rtm: Some(non_negative(refresh.max_idle, 0, "refresh_token.max_idle")?),
            idr: Some(id_token.allow_refresh.unwrap_or(false)),
            ate: Some(encoding),
            atl: Some(non_negative(
                access.lifetime,
                DEFAULT_ACCESS_TOKEN_LIFETIME,
                "access_token.lifetime",
            )?),
            ats: Some(sub_type),
            dat: self.data,
            cld: self.claims_data,
            ..Authorization::default()
        };
        Ok(Grant {
            record,
            long_lived: self.long_lived.unwrap_or(false),
            id_token_lifetime: non_negative(
                id_token.lifetime,
                DEFAULT_ID_TOKEN_LIFETIME,
                "id_token.lifetime",
            )?,
            auth: None,
            nonce: None,
        })
    }
}

/// The member of a refresh token naming the native SSO device session it is
/// bound to (the SID key of the session).
const DEVICE_SESSION_MEMBER: &str = "dsk";

/// The member of a transient refresh token naming its tenant (absent for
/// the default tenant).
const TENANT_MEMBER: &str = "tnt";

/// A decoded refresh token.
enum RefreshToken {
    /// Points at a long-lived record.
    LongLived {
        sub: String,
        cid: String,
        rts: String,
        /// The device session it is bound to (native SSO).
        dsk: Option<String>,
    },
    /// Carries a transient authorization (with `iat`, `exp`, a `jti` and
    /// any device session key in `extra`).
    Transient(Box<Authorization>),
}

/// The plaintext of a long-lived refresh token.
#[derive(Deserialize)]
struct LongLivedPlaintext {
    sub: String,
    cid: String,
    rts: String,
    #[serde(default)]
    dsk: Option<String>,
}

/// What a refresh of a long-lived authorization came to.
enum Refreshed {
    Issued(Box<Authorization>, Option<String>, u64),
    Invalid(&'static str),
    Replayed,
}

fn unauthorized_client(grant_type: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        format!("The client is not registered for the {grant_type} grant"),
    )
}

fn lifetime_u64(seconds: i64) -> u64 {
    u64::try_from(seconds).unwrap_or(0)
}

/// When the refresh token of a long-lived record expires (`rtl` counts
/// from `rti`), if it does.
fn long_lived_expiry(record: &Authorization) -> Option<u64> {
    let lifetime = record.rtl.unwrap_or(0);
    let issued = record.rti.or(record.iat).unwrap_or(0);
    (lifetime > 0).then(|| issued + lifetime_u64(lifetime))
}

impl Service {
    /// The refresh token of a long-lived authorization, built from its
    /// `rts`. Leniently the same record always yields the same token;
    /// strictly every call yields a new string that opens to the same
    /// record (`Strictness::random_refresh_token_nonce`).
    pub(crate) fn long_lived_refresh_token(&self, sub: &str, cid: &str, rts: &str) -> String {
        self.bound_refresh_token(sub, cid, rts, None)
    }

    /// [`Service::long_lived_refresh_token`] bound to a native SSO device
    /// session.
    fn bound_refresh_token(&self, sub: &str, cid: &str, rts: &str, dsk: Option<&str>) -> String {
        let mut plaintext = json!({ "sub": sub, "cid": cid, "rts": rts });
        if let Some(dsk) = dsk {
            plaintext[DEVICE_SESSION_MEMBER] = dsk.into();
        }
        let plaintext = plaintext.to_string();
        if self.strict().random_refresh_token_nonce {
            self.keys.seal_random(plaintext.as_bytes())
        } else {
            self.keys.seal_deterministic(plaintext.as_bytes())
        }
    }

    /// Whether the device session a refresh token is bound to (if any) is
    /// still live: revoking its `device_secret` or its expiry disables the
    /// token (RN 16.0).
    fn device_session_live(&self, dsk: Option<&str>) -> bool {
        dsk.is_none_or(|key| {
            self.store
                .session(key)
                .is_some_and(|session| !session.is_expired(self.now()))
        })
    }

    /// A self-contained refresh token for a transient authorization, issued
    /// at `iat`, and its expiry; `exp` keeps the original expiry on
    /// rotation.
    fn transient_refresh_token(
        &self,
        record: &Authorization,
        iat: u64,
        exp: Option<u64>,
    ) -> (String, Option<u64>) {
        let mut claims = record.clone();
        claims.iat = Some(iat);
        claims.exp = exp.or_else(|| {
            let lifetime = claims.rtl.unwrap_or(0);
            (lifetime > 0).then(|| iat + lifetime_u64(lifetime))
        });
        claims
            .extra
            .insert("jti".to_owned(), self.keys.random_string::<16>().into());
        // Tenants share the emulator's keys (a real tenant has its own), so
        // the token names its tenant.
        if let Some(tenant) = &self.tenant {
            claims
                .extra
                .insert(TENANT_MEMBER.to_owned(), tenant.clone().into());
        }
        (self.keys.encrypt_jwe(&json!(claims)), claims.exp)
    }

    fn decode_refresh_token(&self, token: &str) -> Option<RefreshToken> {
        if token.contains('.') {
            let claims: Box<Authorization> =
                serde_json::from_value(self.keys.decrypt_jwe(token)?).ok()?;
            let tenant = claims.extra.get(TENANT_MEMBER).and_then(Value::as_str);
            return (tenant == self.tenant.as_deref()).then_some(RefreshToken::Transient(claims));
        }
        let plaintext = self.keys.open_sealed(token)?;
        let LongLivedPlaintext { sub, cid, rts, dsk } = serde_json::from_slice(&plaintext).ok()?;
        Some(RefreshToken::LongLived { sub, cid, rts, dsk })
    }

    /// Completes a grant: persists a long-lived record (when `persist`) and
    /// issues the tokens. Refresh tokens go only to clients registered for
    /// the `refresh_token` grant.
    pub(crate) fn authorize(
        &self,
        grant: &Grant,
        client: &ClientInfo,
        persist: bool,
    ) -> Result<Value, ApiError> {
        self.authorize_bound(grant, client, persist, None)
    }

    /// [`Service::authorize`] with the refresh token bound to a native SSO
    /// device session (its SID key).
    fn authorize_bound(
        &self,
        grant: &Grant,
        client: &ClientInfo,
        persist: bool,
        device: Option<&str>,
    ) -> Result<Value, ApiError> {
        let now = self.now();
        let (sub, cid) = (&grant.record.sub, &grant.record.cid);
        let iat = self.store.issue_time(sub, cid, now);
        let issue_refresh =
            grant.record.irt.unwrap_or(false) && client.allows_grant("refresh_token");
        let (record, refresh_token, refresh_expiry) = if grant.long_lived {
            let record = if persist {
                let mut record = grant.record.clone();
                record.irt = Some(issue_refresh);
                record.iat = Some(iat);
                record.uat = Some(iat);
                record.rti = issue_refresh.then_some(iat);
                record.rts = issue_refresh.then(|| self.keys.random_string::<32>());
                self.store.put_authorization(&record);
                record
            } else {
                self.store
                    .authorization(sub, cid)
                    .ok_or_else(|| ApiError::invalid_grant("The authorization no longer exists"))?
            };
            let refresh = match (&record.rts, record.irt) {
                // An imported record may lack `irt`: its `rts` says enough.
                (Some(rts), None | Some(true)) => {
                    Some(self.bound_refresh_token(sub, cid, rts, device))
                }
                _ => None,
            };
            let expiry = long_lived_expiry(&record);
            (record, refresh, expiry)
        } else {
            let mut record = grant.record.clone();
            record.irt = Some(issue_refresh);
            if let Some(device) = device {
                record
                    .extra
                    .insert(DEVICE_SESSION_MEMBER.to_owned(), device.into());
            }
            let (refresh, expiry) = if issue_refresh {
                let (token, expiry) = self.transient_refresh_token(&record, iat, None);
                (Some(token), expiry)
            } else {
                (None, None)
            };
            (record, refresh, expiry)
        };
        let response = self.token_response(
            &record,
            iat,
            refresh_token,
            refresh_expiry,
            Some(IdTokenParams {
                lifetime: grant.id_token_lifetime,
                auth: grant.auth.as_ref(),
                nonce: grant.nonce.as_deref(),
            }),
        );
        // The session now has a relying party to notify at logout.
        if response.get("id_token").is_some()
            && let Some(sid) = grant.auth.as_ref().and_then(|auth| auth.sid.as_deref())
        {
            self.record_relying_party(sid, cid);
        }
        Ok(response)
    }

    /// The token endpoint response for `record` issued at `iat`. The access
    /// token never outlives the refresh token (RN 15.0). An ID token is
    /// added when `id_token` is given and `openid` was granted.
    fn token_response(
        &self,
        record: &Authorization,
        iat: u64,
        refresh_token: Option<String>,
        refresh_expiry: Option<u64>,
        id_token: Option<IdTokenParams<'_>>,
    ) -> Value {
        let scope = record.scp.clone().unwrap_or_default();
        let mut lifetime = lifetime_u64(
            record
                .atl
                .filter(|l| *l > 0)
                .unwrap_or(DEFAULT_ACCESS_TOKEN_LIFETIME),
        );
        if let Some(expiry) = refresh_expiry {
            lifetime = lifetime.min(expiry.saturating_sub(iat).max(1));
        }
        let access_token = self.mint_access_token(record, iat, lifetime);
        let mut response = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope.join(" "),
        });
        if let Some(token) = refresh_token {
            response["refresh_token"] = token.into();
            if let Some(expiry) = refresh_expiry {
                response["refresh_token_expires_in"] = expiry.saturating_sub(iat).into();
            }
        }
        if let Some(params) = id_token
            && scope.iter().any(|value| value == "openid")
        {
            response["id_token"] = self.id_token(record, iat, params).into();
        }
        response
    }

    fn mint_access_token(&self, record: &Authorization, iat: u64, lifetime: u64) -> String {
        let exp = iat + lifetime;
        let scope = record.scp.clone().unwrap_or_default();
        let aud = record.aud.clone().unwrap_or_default();
        if record.ate.as_deref() == Some("IDENTIFIER") {
            let value = self.keys.new_keyed();
            let key = value
                .rsplit_once('.')
                .map(|(key, _)| key.to_owned())
                .expect("keyed identifiers contain a dot");
            let token = IdentifierToken {
                sub: record.sub.clone(),
                cid: record.cid.clone(),
                scope,
                aud,
                iat,
                exp,
            };
            self.access_tokens.insert(key, token, self.now());
            return value;
        }
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": record.sub,
            "cid": record.cid,
            "scp": scope,
            "iat": iat,
            "exp": exp,
            "jti": self.keys.random_string::<16>(),
        });
        if !aud.is_empty() {
            claims["aud"] = aud.into();
        }
        if let Some(clm) = record.clm.as_ref().filter(|clm| !clm.is_empty()) {
            claims["clm"] = clm.clone().into();
        }
        if let Some(dat) = &record.dat {
            claims["dat"] = dat.clone();
        }
        self.keys.sign_jwt("at+jwt", &claims)
    }

    fn id_token(&self, record: &Authorization, iat: u64, params: IdTokenParams<'_>) -> String {
        let IdTokenParams {
            lifetime,
            auth,
            nonce,
        } = params;
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": record.sub,
            "aud": record.cid,
            "iat": iat,
            "exp": iat + lifetime_u64(lifetime),
        });
        if let Some(auth) = auth {
            if let Some(sid) = &auth.sid {
                claims["sid"] = sid.clone().into();
            }
            if let Some(auth_time) = auth.auth_time {
                claims["auth_time"] = auth_time.into();
            }
            if let Some(acr) = &auth.acr {
                claims["acr"] = acr.clone().into();
            }
            if let Some(amr) = &auth.amr {
                claims["amr"] = amr.clone().into();
            }
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        self.keys.sign_jwt("JWT", &claims)
    }

    /// Introspection of any token this server issues.
    fn introspection(&self, token: &str) -> Value {
        let inactive = json!({ "active": false });
        let now = self.now();
        let active = |sub: &str, cid: &str, scope: &[String], iat: u64, exp: Option<u64>| {
            let mut value = json!({
                "active": true,
                "scope": scope.join(" "),
                "client_id": cid,
                "sub": sub,
                "iat": iat,
                "iss": self.issuer(),
            });
            if let Some(exp) = exp {
                value["exp"] = exp.into();
            }
            value
        };
        match token.matches('.').count() {
            2 => {
                let Some(claims) = self.keys.verify_jwt(token) else {
                    return inactive;
                };
                let text =
                    |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
                let number =
                    |name: &str| claims.get(name).and_then(Value::as_u64).unwrap_or_default();
                let (sub, cid, iat, exp) = (text("sub"), text("cid"), number("iat"), number("exp"));
                // Tokens of another issuer (alias) are reported inactive.
                if cid.is_empty()
                    || text("iss") != self.issuer()
                    || now >= exp
                    || self.store.is_revoked(sub, cid, iat)
                {
                    return inactive;
                }
                let scope: Vec<String> = claims
                    .get("scp")
                    .and_then(|scp| serde_json::from_value(scp.clone()).ok())
                    .unwrap_or_default();
                let mut value = active(sub, cid, &scope, iat, Some(exp));
                value["token_type"] = "Bearer".into();
                if let Some(aud) = claims.get("aud") {
                    value["aud"] = aud.clone();
                }
                value
            }
            1 => {
                let Some(token) = self
                    .keys
                    .verify_keyed(token)
                    .and_then(|key| self.access_tokens.get(key, now))
                else {
                    return inactive;
                };
                if self.store.is_revoked(&token.sub, &token.cid, token.iat) {
                    return inactive;
                }
                let mut value = active(
                    &token.sub,
                    &token.cid,
                    &token.scope,
                    token.iat,
                    Some(token.exp),
                );
                value["token_type"] = "Bearer".into();
                if !token.aud.is_empty() {
                    value["aud"] = token.aud.clone().into();
                }
                value
            }
            _ => match self.decode_refresh_token(token) {
                Some(RefreshToken::LongLived { sub, cid, rts, dsk }) => {
                    let Some(record) = self.store.authorization(&sub, &cid) else {
                        return inactive;
                    };
                    if self.check_long_lived(&record, &rts, now).is_err()
                        || !self.device_session_live(dsk.as_deref())
                    {
                        return inactive;
                    }
                    active(
                        &sub,
                        &cid,
                        record.scp.as_deref().unwrap_or_default(),
                        record.rti.or(record.iat).unwrap_or(0),
                        long_lived_expiry(&record),
                    )
                }
                Some(RefreshToken::Transient(claims)) => {
                    if self.check_transient(&claims, now).is_err() {
                        return inactive;
                    }
                    active(
                        &claims.sub,
                        &claims.cid,
                        claims.scp.as_deref().unwrap_or_default(),
                        claims.iat.unwrap_or(0),
                        claims.exp,
                    )
                }
                None => inactive,
            },
        }
    }

    /// Whether a long-lived refresh token with material `rts` is currently
    /// valid for `record` (not expended, expired or revoked).
    fn check_long_lived(
        &self,
        record: &Authorization,
        rts: &str,
        now: u64,
    ) -> Result<(), &'static str> {
        if record.rts.as_deref() != Some(rts) {
            return Err("Invalid refresh token");
        }
        if record.irt == Some(false) {
            return Err("The authorization does not allow refresh tokens");
        }
        if record.exp.is_some_and(|exp| now >= exp) {
            return Err("The authorization has expired");
        }
        let rti = record.rti.or(record.iat).unwrap_or(0);
        if self.store.is_revoked(&record.sub, &record.cid, rti) {
            return Err("The refresh token has been revoked");
        }
        if long_lived_expiry(record).is_some_and(|expiry| now >= expiry) {
            return Err("Expired refresh token");
        }
        // Idle time counts from the last issue of the refresh token, which
        // moves on every use only when it rotates.
        let max_idle = record.rtm.unwrap_or(0);
        if max_idle > 0 && now >= rti + lifetime_u64(max_idle) {
            return Err("Expired refresh token (max idle time)");
        }
        Ok(())
    }

    /// Whether a transient refresh token is valid apart from replay.
    fn check_transient(&self, claims: &Authorization, now: u64) -> Result<(), &'static str> {
        if claims.exp.is_some_and(|exp| now >= exp) {
            return Err("Expired refresh token");
        }
        let device = claims
            .extra
            .get(DEVICE_SESSION_MEMBER)
            .and_then(Value::as_str);
        if !self.device_session_live(device) {
            return Err("The device session of the refresh token has ended");
        }
        if self
            .store
            .is_revoked(&claims.sub, &claims.cid, claims.iat.unwrap_or(0))
        {
            return Err("The refresh token has been revoked");
        }
        if let Some(expended) = claims
            .extra
            .get("jti")
            .and_then(Value::as_str)
            .and_then(|jti| self.expended.get(&format!("T:{jti}"), now))
            && now > expended.at + ROTATED_REUSE_GRACE
        {
            return Err("The refresh token has been used already");
        }
        Ok(())
    }

    /// The long-lived record behind a currently valid refresh token.
    pub(crate) fn inspect_refresh_token(&self, token: &str) -> Option<Authorization> {
        let RefreshToken::LongLived { sub, cid, rts, dsk } = self.decode_refresh_token(token)?
        else {
            // Transient authorizations have no record.
            return None;
        };
        let record = self.store.authorization(&sub, &cid)?;
        self.check_long_lived(&record, &rts, self.now()).ok()?;
        self.device_session_live(dsk.as_deref()).then_some(record)
    }

    /// The long-lived record of the subject and client of a currently
    /// valid access token.
    pub(crate) fn inspect_access_token(&self, token: &str) -> Option<Authorization> {
        if !matches!(token.matches('.').count(), 1 | 2) {
            return None;
        }
        let introspection = self.introspection(token);
        if introspection.get("active") != Some(&Value::Bool(true)) {
            return None;
        }
        let sub = introspection.get("sub")?.as_str()?;
        let cid = introspection.get("client_id")?.as_str()?;
        self.store.authorization(sub, cid)
    }

    /// The subject and client a token was issued for, valid or not, for
    /// revocation; an identifier access token is deleted on the way.
    fn token_owner(&self, token: &str) -> Option<(String, String)> {
        match token.matches('.').count() {
            2 => {
                let claims = self.keys.verify_jwt(token)?;
                let sub = claims.get("sub")?.as_str()?.to_owned();
                let cid = claims.get("cid")?.as_str()?.to_owned();
                Some((sub, cid))
            }
            1 => {
                let key = self.keys.verify_keyed(token)?;
                let (_, access) = self.access_tokens.map.remove(key)?;
                Some((access.sub, access.cid))
            }
            _ => match self.decode_refresh_token(token)? {
                RefreshToken::LongLived { sub, cid, .. } => Some((sub, cid)),
                RefreshToken::Transient(claims) => Some((claims.sub, claims.cid)),
            },
        }
    }

    /// Opens a native SSO device session for the subject of a code grant
    /// (RN 16.0): a session of its own context, sharing the web session's
    /// authentication. Its SID is the `device_secret`; returns that and the
    /// SID key the refresh token is bound to.
    fn open_device_session(&self, grant: &Grant) -> (String, String) {
        let strict = self.strict();
        let auth = grant.auth.clone().unwrap_or_default();
        let web = auth
            .sid
            .as_deref()
            .and_then(|sid| self.live_session(sid))
            .map(|(_, session)| session);
        let session = Session {
            sub: grant.record.sub.clone(),
            ctx: Some(strict.device_session_ctx().to_owned()),
            acr: auth.acr,
            amr: auth.amr,
            auth_time: auth.auth_time,
            claims: web.and_then(|session| session.claims),
            ..Session::default()
        };
        let (secret, _) = self.open_session(session, None);
        let key = secret
            .rsplit_once('.')
            .map(|(key, _)| key.to_owned())
            .expect("SIDs contain a dot");
        (secret, key)
    }

    /// Ends the native SSO device session of a `device_secret`; whether
    /// there was one.
    fn end_device_session(&self, secret: &str) -> bool {
        let Some(key) = self.keys.verify_keyed(secret) else {
            return false;
        };
        let is_device = self
            .store
            .session(key)
            .is_some_and(|session| matches!(session.ctx.as_deref(), Some("NCG" | "device")));
        if !is_device {
            return false;
        }
        match self.store.remove_session(key) {
            Some(session) => {
                self.session_ended(key, &session, "device_secret revoked");
                true
            }
            None => false,
        }
    }
}

/// Authenticates the client of a token, introspection or revocation
/// request: HTTP Basic, `client_secret_post`, or `client_id` alone for
/// public clients. The method used must be the registered one. A secret
/// replaced by an update is accepted for 30 minutes.
pub(crate) fn authenticate(
    service: &Service,
    headers: &HeaderMap,
    form: &Form,
) -> Result<ClientInfo, ApiError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, credentials) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| credentials.trim())
        });
    let (id, secret, method) = if let Some(credentials) = basic {
        let decoded = STANDARD
            .decode(credentials)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| ApiError::invalid_client(None))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| ApiError::invalid_client(None))?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded before encoding.
        (
            percent_decode(id),
            Some(percent_decode(secret)),
            "client_secret_basic",
        )
    } else if let Some(secret) = form.get("client_secret") {
        let id = form
            .get("client_id")
            .ok_or_else(|| ApiError::invalid_client(None))?;
        (id.to_owned(), Some(secret.to_owned()), "client_secret_post")
    } else if let Some(id) = form.get("client_id") {
        (id.to_owned(), None, "none")
    } else {
        return Err(ApiError::invalid_client(None));
    };
    if form.get("client_id").is_some_and(|given| given != id) {
        return Err(ApiError::invalid_client(Some(&id)));
    }
    let stored = service
        .store
        .client(&id)
        .ok_or_else(|| ApiError::invalid_client(Some(&id)))?;
    let info = ClientInfo::parse(&stored.info);
    if info.token_endpoint_auth_method != method {
        return Err(ApiError::invalid_client(Some(&id)));
    }
    if let Some(secret) = secret {
        let now = service.now();
        let current = info
            .client_secret
            .as_deref()
            .is_some_and(|expected| constant_time_eq(expected.as_bytes(), secret.as_bytes()));
        let previous = stored
            .previous_secret
            .as_ref()
            .is_some_and(|(expected, until)| {
                now < *until && constant_time_eq(expected.as_bytes(), secret.as_bytes())
            });
        if !current && !previous {
            return Err(ApiError::invalid_client(Some(&id)));
        }
        // `client_secret_expires_at` (0: never), from
        // `op.reg.clientSecretLifetime`.
        if current
            && !previous
            && info
                .client_secret_expires_at
                .is_some_and(|expiry| expiry > 0 && now >= expiry)
        {
            return Err(ApiError::invalid_client(Some(&id)));
        }
    }
    Ok(info)
}

/// Reads a token-endpoint style form body.
pub(crate) async fn form_body(req: &mut Req) -> Result<Form, ApiError> {
    if req.method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let body = req.body(limits::TOKEN).await?;
    let form = Form::parse_bytes(&body)?;
    if form.has_repeats() {
        return Err(ApiError::invalid_request("Repeated request parameter"));
    }
    Ok(form)
}

/// `POST /token`.
pub(super) async fn token(service: &Arc<Service>, mut req: Req) -> Reply {
    let form = form_body(&mut req).await?;
    let client = authenticate(service, &req.headers, &form)?;
    let response = match form.get("grant_type") {
        Some("authorization_code") => code_grant(service, &client, &form)?,
        Some("refresh_token") => refresh_grant(service, &client, &form)?,
        Some("client_credentials") => client_credentials(service, &client, &form)?,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("Unsupported grant type: {other}"),
            ));
        }
        None => return Err(ApiError::invalid_request("Missing grant_type")),
    };
    web::ok_json(&response)
}

fn code_grant(service: &Service, client: &ClientInfo, form: &Form) -> Result<Value, ApiError> {
    if !client.allows_grant("authorization_code") {
        return Err(unauthorized_client("authorization_code"));
    }
    let code = form
        .get("code")
        .ok_or_else(|| ApiError::invalid_request("Missing code"))?;
    let now = service.now();
    let code = service
        .keys
        .verify_keyed(code)
        .and_then(|key| service.codes.take(key, now))
        .ok_or_else(|| ApiError::invalid_grant("Invalid or expired authorization code"))?;
    if code.grant.record.cid != client.client_id {
        return Err(ApiError::invalid_grant(
            "The code was issued to another client",
        ));
    }
    if let Some(expected) = &code.redirect_uri
        && form.get("redirect_uri") != Some(expected.as_str())
    {
        return Err(ApiError::invalid_grant("Invalid redirect_uri"));
    }
    if let Some((challenge, method)) = &code.code_challenge {
        let verifier = form
            .get("code_verifier")
            .ok_or_else(|| ApiError::invalid_grant("Missing code_verifier"))?;
        let computed = if method == "S256" {
            sha256_b64(verifier.as_bytes())
        } else {
            verifier.to_owned()
        };
        if !constant_time_eq(computed.as_bytes(), challenge.as_bytes()) {
            return Err(ApiError::invalid_grant("Invalid code_verifier"));
        }
    }
    let strict = service.strict();
    let scope = code.grant.record.scp.as_deref().unwrap_or_default();
    let device_sso = strict.native_sso
        && scope.iter().any(|value| value == "openid")
        && scope.iter().any(|value| value == "device_sso")
        && code.grant.auth.is_some();
    if !device_sso {
        return service.authorize(&code.grant, client, code.persist);
    }
    let (device_secret, key) = service.open_device_session(&code.grant);
    let mut response = service.authorize_bound(&code.grant, client, code.persist, Some(&key))?;
    response["device_secret"] = device_secret.into();
    Ok(response)
}

fn refresh_grant(service: &Service, client: &ClientInfo, form: &Form) -> Result<Value, ApiError> {
    if !client.allows_grant("refresh_token") {
        return Err(unauthorized_client("refresh_token"));
    }
    let token = form
        .get("refresh_token")
        .ok_or_else(|| ApiError::invalid_request("Missing refresh_token"))?;
    let now = service.now();
    match service.decode_refresh_token(token) {
        None => Err(ApiError::invalid_grant("Invalid refresh token")),
        Some(RefreshToken::LongLived { sub, cid, rts, dsk }) => {
            if cid != client.client_id {
                return Err(ApiError::invalid_grant("Invalid refresh token"));
            }
            if !service.device_session_live(dsk.as_deref()) {
                return Err(ApiError::invalid_grant(
                    "The device session of the refresh token has ended",
                ));
            }
            let issue_at = service.store.issue_time(&sub, &cid, now);
            let expended_key = format!("L:{rts}");
            let outcome = service.store.modify_authorization(&sub, &cid, |slot| {
                let Some(record) = slot.as_mut() else {
                    return Refreshed::Invalid("Invalid refresh token");
                };
                if record.rts.as_deref() != Some(rts.as_str())
                    && service.expended.get(&expended_key, now).is_some()
                {
                    // Replay of a rotated-away token: revoke the grant.
                    *slot = None;
                    return Refreshed::Replayed;
                }
                if let Err(reason) = service.check_long_lived(record, &rts, now) {
                    return Refreshed::Invalid(reason);
                }
                if record.rtr != Some(true) {
                    let echo = service
                        .strict()
                        .echo_kept_refresh_token
                        .then(|| token.to_owned());
                    return Refreshed::Issued(Box::new(record.clone()), echo, issue_at);
                }
                service.expended.insert(
                    expended_key.clone(),
                    Expended {
                        at: now,
                        expires: now + EXPENDED_RETENTION,
                    },
                    now,
                );
                if let Some(expiry) = long_lived_expiry(record) {
                    // The new token keeps the absolute expiry: rtl becomes
                    // the remaining lifetime relative to the new rti.
                    record.rtl = Some(
                        i64::try_from(expiry.saturating_sub(issue_at))
                            .unwrap_or(i64::MAX)
                            .max(1),
                    );
                }
                let new_rts = service.keys.random_string::<32>();
                let token = service.bound_refresh_token(&sub, &cid, &new_rts, dsk.as_deref());
                record.rts = Some(new_rts);
                record.rti = Some(issue_at);
                record.uat = Some(issue_at);
                Refreshed::Issued(Box::new(record.clone()), Some(token), issue_at)
            });
            match outcome {
                Refreshed::Replayed => {
                    service
                        .store
                        .revoke(Some(&sub), Some(&cid), None, None, now);
                    tracing::debug!("refresh token replay detected, authorization revoked");
                    Err(ApiError::invalid_grant(
                        "Invalid refresh token: reuse detected, the authorization is revoked",
                    ))
                }
                Refreshed::Invalid(reason) => Err(ApiError::invalid_grant(reason)),
                Refreshed::Issued(record, token, iat) => {
                    let expiry = long_lived_expiry(&record);
                    let id_token = (record.idr == Some(true)).then(IdTokenParams::refreshed);
                    Ok(service.token_response(&record, iat, token, expiry, id_token))
                }
            }
        }
        Some(RefreshToken::Transient(claims)) => {
            if claims.cid != client.client_id {
                return Err(ApiError::invalid_grant("Invalid refresh token"));
            }
            let Some(jti) = claims.extra.get("jti").and_then(Value::as_str) else {
                return Err(ApiError::invalid_grant("Invalid refresh token"));
            };
            let expended_key = format!("T:{jti}");
            let expired = claims.exp.is_some_and(|exp| now >= exp);
            if let Some(expended) = service.expended.get(&expended_key, now)
                && now > expended.at + ROTATED_REUSE_GRACE
                && !expired
            {
                // Reuse past the grace period revokes the grant.
                service
                    .store
                    .revoke(Some(&claims.sub), Some(&claims.cid), None, None, now);
                return Err(ApiError::invalid_grant(
                    "Invalid refresh token: reuse detected, the authorization is revoked",
                ));
            }
            service
                .check_transient(&claims, now)
                .map_err(ApiError::invalid_grant)?;
            let issue_at = service.store.issue_time(&claims.sub, &claims.cid, now);
            let token = if claims.rtr == Some(true) {
                if service.expended.get(&expended_key, now).is_none() {
                    let expires = claims
                        .exp
                        .unwrap_or(now + EXPENDED_RETENTION)
                        .max(now + ROTATED_REUSE_GRACE + 1);
                    service
                        .expended
                        .insert(expended_key, Expended { at: now, expires }, now);
                }
                let mut next = claims.clone();
                next.extra.remove("jti");
                Some(
                    service
                        .transient_refresh_token(&next, issue_at, claims.exp)
                        .0,
                )
            } else {
                service
                    .strict()
                    .echo_kept_refresh_token
                    .then(|| token.to_owned())
            };
            let id_token = (claims.idr == Some(true)).then(IdTokenParams::refreshed);
            Ok(service.token_response(&claims, issue_at, token, claims.exp, id_token))
        }
    }
}

fn client_credentials(
    service: &Service,
    client: &ClientInfo,
    form: &Form,
) -> Result<Value, ApiError> {
    if !client.allows_grant("client_credentials") {
        return Err(unauthorized_client("client_credentials"));
    }
    let requested: Option<Vec<String>> = form
        .get("scope")
        .map(|scope| scope.split_whitespace().map(str::to_owned).collect());
    let scope = match (requested, client.scope_values()) {
        (Some(requested), Some(allowed)) => {
            if let Some(bad) = requested.iter().find(|value| !allowed.contains(value)) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("Scope not registered for the client: {bad}"),
                ));
            }
            requested
        }
        (Some(requested), None) => requested,
        (None, allowed) => allowed.unwrap_or_default(),
    };
    let record = Authorization {
        sub: client.client_id.clone(),
        cid: client.client_id.clone(),
        scp: Some(scope),
        ate: Some("SELF_CONTAINED".to_owned()),
        atl: Some(DEFAULT_ACCESS_TOKEN_LIFETIME),
        ..Authorization::default()
    };
    let iat = service
        .store
        .issue_time(&record.sub, &record.cid, service.now());
    Ok(service.token_response(&record, iat, None, None, None))
}

/// `POST /token/introspect`: any confidential client may introspect.
pub(super) async fn introspect(service: &Arc<Service>, mut req: Req) -> Reply {
    let form = form_body(&mut req).await?;
    let client = authenticate(service, &req.headers, &form)?;
    if client.is_public() {
        return Err(ApiError::invalid_client(Some(&client.client_id)));
    }
    let token = form
        .get("token")
        .ok_or_else(|| ApiError::invalid_request("Missing token"))?;
    web::ok_json(&service.introspection(token))
}

/// `POST /token/revoke`: revoking any token of the calling client revokes
/// every token of that client for the same subject and deletes the
/// long-lived authorization. Always `200` (RFC 7009), also for unknown
/// tokens and tokens of other clients.
pub(super) async fn revoke(service: &Arc<Service>, mut req: Req) -> Reply {
    let form = form_body(&mut req).await?;
    let client = authenticate(service, &req.headers, &form)?;
    let token = form
        .get("token")
        .ok_or_else(|| ApiError::invalid_request("Missing token"))?;
    let native_sso = service.strict().native_sso;
    // A device secret ends its device session (RN 16.0); it is shared by
    // the client group, so any authenticated client may end it.
    if native_sso
        && form.get("token_type_hint") == Some("device_secret")
        && service.end_device_session(token)
    {
        return Ok(empty_response(StatusCode::OK));
    }
    match service.token_owner(token) {
        Some((sub, cid)) if cid == client.client_id => {
            let now = service.now();
            service
                .store
                .revoke(Some(&sub), Some(&cid), None, None, now);
            service.store.remove_authorization(&sub, &cid);
        }
        Some(_) => {}
        None => {
            // Without a hint the server tells the token kinds apart itself.
            if native_sso && form.get("token_type_hint").is_none() {
                service.end_device_session(token);
            }
        }
    }
    Ok(empty_response(StatusCode::OK))
}

/// Issues an authorization code for `grant`.
pub(crate) fn issue_code(
    service: &Service,
    grant: Grant,
    persist: bool,
    redirect_uri: Option<String>,
    code_challenge: Option<(String, String)>,
) -> String {
    let now = service.now();
    let code = service.keys.new_keyed();
    let key = code
        .rsplit_once('.')
        .map(|(key, _)| key.to_owned())
        .expect("keyed identifiers contain a dot");
    let entry = CodeGrant {
        expires: now + CODE_LIFETIME,
        grant,
        persist,
        redirect_uri,
        code_challenge,
    };
    service.codes.insert(key, entry, now);
    code
}
