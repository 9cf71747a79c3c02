//! A Connect2id client record as an Authlete `Client` (spec/authlete.md §4,
//! domain-gaps Q3.12–3.14): every Connect2id (RFC 7591, OpenID Connect
//! Registration, RFC 8705, RFC 9449, RFC 9126, JARM, CIBA) field that has
//! an Authlete counterpart is mapped; the ones without are reported by
//! name, never by value.
//!
//! - **Client type** follows the authentication method: `none` is
//!   `PUBLIC`, every other method (the secret ones, `private_key_jwt`, the
//!   mTLS ones; absent means `client_secret_basic`) is `CONFIDENTIAL`. A
//!   `private_key_jwt` client has no secret and is confidential all the same.
//! - **Names and shapes** are Authlete's: algorithms as its enum names
//!   (`RSA-OAEP-256` → `RSA_OAEP_256`, `none` → `NONE`), `jwks` as a string
//!   holding the JWK Set JSON (the schema's type), enums upper case. A value
//!   Authlete has no name for is reported like a field without counterpart.
//! - **Managed fields.** The Authlete fields this mapping writes are the
//!   source's to decide: an update overlays them on the client Authlete
//!   holds (read, overlay, write: Authlete's update replaces the whole
//!   client, spec §4.4), so settings made on the Authlete side in other
//!   fields survive, and a managed field the source no longer has is
//!   removed. `extension` is shared: only its `requestableScopes*` keys
//!   are managed.
//! - **Secrets.** The plaintext `client_secret` is set separately
//!   (`/client/secret/update`), within Authlete's rules. A record carrying
//!   only `encoded_client_secret` comes from a Connect2id with a hashing
//!   client-secret codec: the plaintext is gone, and sending the hash as the
//!   secret would make every authentication fail after the flip while
//!   verify said "secret matches". A client that authenticates with its
//!   secret is then refused ([`Refusal::HashedSecret`]); one that does not
//!   (`private_key_jwt`, mTLS, `none`) needs no secret and is copied.

use serde_json::{Map, Value};

/// Characters Authlete accepts in a client secret: at most this many.
pub(crate) const SECRET_MAX_LEN: usize = 86;

/// Why a Connect2id client cannot be copied to Authlete as it is. The
/// texts say why and what to do; they never quote the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The source holds only a hash of the secret.
    HashedSecret,
    /// The secret breaks Authlete's character or length rule.
    SecretOutsideRules,
}

impl Refusal {
    /// The reason, for the dead letter.
    pub(crate) fn reason(&self, alias: &str) -> String {
        match self {
            Self::HashedSecret => format!(
                "client {alias} authenticates with a client secret, but the source stores only its hash (encoded_client_secret: a hashing client-secret codec), and Authlete needs the secret itself; give the client a new secret (rotate it at the source, or set one at Authlete with /client/secret/update and hand it to the client) or move it to private_key_jwt or mTLS, then retry the dead letter"
            ),
            Self::SecretOutsideRules => format!(
                "the source client secret of {alias} cannot be stored in Authlete (only A-Z a-z 0-9 - _ and at most {SECRET_MAX_LEN} characters are allowed); give the client a new secret that does, then retry the dead letter"
            ),
        }
    }
}

/// A mapped client: the Authlete fields, the plaintext secret to set (if
/// any), and the source fields with no counterpart (names only).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mapped {
    /// The managed Authlete fields, by Authlete name.
    pub fields: Map<String, Value>,
    /// The secret to set with `/client/secret/update`.
    pub secret: Option<String>,
    /// Source fields (or values) Authlete has no counterpart for.
    pub unmapped: Vec<String>,
}

/// Whether Authlete takes this client secret (spec §4.3).
pub(crate) fn secret_acceptable(secret: &str) -> bool {
    !secret.is_empty()
        && secret.len() <= SECRET_MAX_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How a source value becomes an Authlete value.
#[derive(Debug, Clone, Copy)]
enum Conv {
    /// As it is (strings, arrays of strings, booleans, integers).
    Same,
    /// A JWS algorithm.
    Jws,
    /// A JWE key-management algorithm.
    JweAlg,
    /// A JWE content-encryption algorithm.
    JweEnc,
    /// `public` / `pairwise`.
    SubjectType,
    /// `poll` / `ping` / `push`.
    DeliveryMode,
}

/// Source field, Authlete field, conversion.
const FIELDS: &[(&str, &str, Conv)] = &[
    ("client_name", "clientName", Conv::Same),
    ("redirect_uris", "redirectUris", Conv::Same),
    ("client_uri", "clientUri", Conv::Same),
    ("logo_uri", "logoUri", Conv::Same),
    ("tos_uri", "tosUri", Conv::Same),
    ("policy_uri", "policyUri", Conv::Same),
    ("contacts", "contacts", Conv::Same),
    ("jwks_uri", "jwksUri", Conv::Same),
    ("software_id", "softwareId", Conv::Same),
    ("software_version", "softwareVersion", Conv::Same),
    ("initiate_login_uri", "loginUri", Conv::Same),
    ("request_uris", "requestUris", Conv::Same),
    ("default_max_age", "defaultMaxAge", Conv::Same),
    ("default_acr_values", "defaultAcrs", Conv::Same),
    ("require_auth_time", "authTimeRequired", Conv::Same),
    ("subject_type", "subjectType", Conv::SubjectType),
    ("sector_identifier_uri", "sectorIdentifierUri", Conv::Same),
    // RFC 8705 mutual TLS.
    (
        "tls_client_auth_subject_dn",
        "tlsClientAuthSubjectDn",
        Conv::Same,
    ),
    ("tls_client_auth_san_dns", "tlsClientAuthSanDns", Conv::Same),
    ("tls_client_auth_san_uri", "tlsClientAuthSanUri", Conv::Same),
    ("tls_client_auth_san_ip", "tlsClientAuthSanIp", Conv::Same),
    (
        "tls_client_auth_san_email",
        "tlsClientAuthSanEmail",
        Conv::Same,
    ),
    (
        "tls_client_certificate_bound_access_tokens",
        "tlsClientCertificateBoundAccessTokens",
        Conv::Same,
    ),
    // RFC 9449 DPoP, RFC 9126 PAR, RFC 9101 JAR.
    ("dpop_bound_access_tokens", "dpopRequired", Conv::Same),
    (
        "require_pushed_authorization_requests",
        "parRequired",
        Conv::Same,
    ),
    (
        "require_signed_request_object",
        "requestObjectRequired",
        Conv::Same,
    ),
    // Algorithms.
    (
        "token_endpoint_auth_signing_alg",
        "tokenAuthSignAlg",
        Conv::Jws,
    ),
    ("id_token_signed_response_alg", "idTokenSignAlg", Conv::Jws),
    (
        "id_token_encrypted_response_alg",
        "idTokenEncryptionAlg",
        Conv::JweAlg,
    ),
    (
        "id_token_encrypted_response_enc",
        "idTokenEncryptionEnc",
        Conv::JweEnc,
    ),
    ("userinfo_signed_response_alg", "userInfoSignAlg", Conv::Jws),
    (
        "userinfo_encrypted_response_alg",
        "userInfoEncryptionAlg",
        Conv::JweAlg,
    ),
    (
        "userinfo_encrypted_response_enc",
        "userInfoEncryptionEnc",
        Conv::JweEnc,
    ),
    ("request_object_signing_alg", "requestSignAlg", Conv::Jws),
    (
        "request_object_encryption_alg",
        "requestEncryptionAlg",
        Conv::JweAlg,
    ),
    (
        "request_object_encryption_enc",
        "requestEncryptionEnc",
        Conv::JweEnc,
    ),
    (
        "authorization_signed_response_alg",
        "authorizationSignAlg",
        Conv::Jws,
    ),
    (
        "authorization_encrypted_response_alg",
        "authorizationEncryptionAlg",
        Conv::JweAlg,
    ),
    (
        "authorization_encrypted_response_enc",
        "authorizationEncryptionEnc",
        Conv::JweEnc,
    ),
    // CIBA.
    (
        "backchannel_token_delivery_mode",
        "bcDeliveryMode",
        Conv::DeliveryMode,
    ),
    (
        "backchannel_client_notification_endpoint",
        "bcNotificationEndpoint",
        Conv::Same,
    ),
    (
        "backchannel_authentication_request_signing_alg",
        "bcRequestSignAlg",
        Conv::Jws,
    ),
    (
        "backchannel_user_code_parameter",
        "bcUserCodeRequired",
        Conv::Same,
    ),
    // RFC 9396.
    (
        "authorization_details_types",
        "authorizationDetailsTypes",
        Conv::Same,
    ),
];

/// Authlete's `jws_alg` names.
const JWS_ALG: &[&str] = &[
    "NONE", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512", "ES256K", "EdDSA",
];
/// Authlete's `jwe_alg` names.
const JWE_ALG: &[&str] = &[
    "RSA1_5",
    "RSA_OAEP",
    "RSA_OAEP_256",
    "A128KW",
    "A192KW",
    "A256KW",
    "DIR",
    "ECDH_ES",
    "ECDH_ES_A128KW",
    "ECDH_ES_A192KW",
    "ECDH_ES_A256KW",
    "A128GCMKW",
    "A192GCMKW",
    "A256GCMKW",
    "PBES2_HS256_A128KW",
    "PBES2_HS384_A192KW",
    "PBES2_HS512_A256KW",
];
/// Authlete's `jwe_enc` names.
const JWE_ENC: &[&str] = &[
    "A128CBC_HS256",
    "A192CBC_HS384",
    "A256CBC_HS512",
    "A128GCM",
    "A192GCM",
    "A256GCM",
];

/// Source fields that are credentials or server bookkeeping: handled
/// elsewhere (the secret) or regenerated by Authlete, so neither mapped
/// nor reported.
const BOOKKEEPING: &[&str] = &[
    "client_secret",
    "encoded_client_secret",
    "client_secret_expires_at",
    "client_id_issued_at",
    "registration_access_token",
    "registration_client_uri",
];

/// Every Authlete field [`map`] may write, besides `extension`'s managed
/// keys: an update removes those the source no longer has.
fn managed_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(_, name, _)| *name).chain([
        "clientIdAlias",
        "clientIdAliasEnabled",
        "clientType",
        "applicationType",
        "grantTypes",
        "responseTypes",
        "tokenAuthMethod",
        "jwks",
    ])
}

/// The `extension` keys [`map`] manages (the client's `scope`).
const EXTENSION_KEYS: [&str; 2] = ["requestableScopesEnabled", "requestableScopes"];

/// Maps a Connect2id client record, or says why Authlete cannot hold it.
pub(crate) fn map(record: &Value, api_version: u8) -> Result<Mapped, Refusal> {
    let empty = Map::new();
    let source = record.as_object().unwrap_or(&empty);
    let method = source
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("client_secret_basic");
    let secret = match (
        source.get("client_secret").and_then(Value::as_str),
        source.get("encoded_client_secret").is_some(),
    ) {
        (Some(secret), _) if !secret_acceptable(secret) => {
            return Err(Refusal::SecretOutsideRules);
        }
        (Some(secret), _) => Some(secret.to_owned()),
        (None, true) if method.starts_with("client_secret_") => {
            return Err(Refusal::HashedSecret);
        }
        (None, _) => None,
    };
    let mut fields = Map::new();
    let mut unmapped = Vec::new();
    fields.insert(
        "clientType".into(),
        if method == "none" {
            "PUBLIC"
        } else {
            "CONFIDENTIAL"
        }
        .into(),
    );
    for (name, value) in source {
        if value.is_null() {
            continue;
        }
        if let Some((_, field, conv)) = FIELDS.iter().find(|(from, _, _)| from == name) {
            match convert(*conv, value) {
                Some(value) => {
                    fields.insert((*field).into(), value);
                }
                None => unmapped.push(format!("{name} (value)")),
            }
            continue;
        }
        match name.as_str() {
            "client_id" => {
                fields.insert("clientIdAlias".into(), value.clone());
                if api_version < 3 {
                    fields.insert("clientIdAliasEnabled".into(), true.into());
                }
            }
            "grant_types" => {
                let (names, lost) = names_of(value, grant_name);
                fields.insert("grantTypes".into(), names);
                if lost {
                    unmapped.push(format!("{name} (value)"));
                }
            }
            "response_types" => {
                let (names, lost) = names_of(value, response_type_name);
                fields.insert("responseTypes".into(), names);
                if lost {
                    unmapped.push(format!("{name} (value)"));
                }
            }
            "token_endpoint_auth_method" => match value.as_str().and_then(auth_method_name) {
                Some(method) => {
                    fields.insert("tokenAuthMethod".into(), method.into());
                }
                None => unmapped.push(format!("{name} (value)")),
            },
            "application_type" => {
                let kind = if value.as_str() == Some("native") {
                    "NATIVE"
                } else {
                    "WEB"
                };
                fields.insert("applicationType".into(), kind.into());
            }
            // Authlete's schema holds the JWK Set as a JSON string.
            "jwks" => {
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                fields.insert("jwks".into(), text.into());
            }
            // The scope values the client may request: Authlete's
            // requestable scopes, enabled.
            "scope" => {
                let scopes: Vec<Value> = value
                    .as_str()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(Value::from)
                    .collect();
                let mut extension = Map::new();
                extension.insert("requestableScopesEnabled".into(), true.into());
                extension.insert("requestableScopes".into(), scopes.into());
                fields.insert("extension".into(), extension.into());
            }
            bookkeeping if BOOKKEEPING.contains(&bookkeeping) => {}
            other => unmapped.push(other.to_owned()),
        }
    }
    unmapped.sort();
    Ok(Mapped {
        fields,
        secret,
        unmapped,
    })
}

fn convert(conv: Conv, value: &Value) -> Option<Value> {
    let enumerated = |names: &[&'static str], name: String| {
        names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(&name))
            .map(|n| Value::from(*n))
    };
    match conv {
        Conv::Same => Some(value.clone()),
        Conv::Jws | Conv::JweAlg | Conv::JweEnc => {
            // JOSE names to Authlete's: `RSA-OAEP-256` → `RSA_OAEP_256`,
            // `ECDH-ES+A128KW` → `ECDH_ES_A128KW`, `none` → `NONE`.
            let name = value.as_str()?.replace(['-', '+'], "_");
            let names = match conv {
                Conv::Jws => JWS_ALG,
                Conv::JweAlg => JWE_ALG,
                _ => JWE_ENC,
            };
            enumerated(names, name)
        }
        Conv::SubjectType => enumerated(&["PUBLIC", "PAIRWISE"], value.as_str()?.to_owned()),
        Conv::DeliveryMode => enumerated(&["POLL", "PING", "PUSH"], value.as_str()?.to_owned()),
    }
}

/// The Authlete names of a list of values, and whether any had none.
fn names_of(value: &Value, map: fn(&str) -> Option<&'static str>) -> (Value, bool) {
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    let names: Vec<Value> = items
        .iter()
        .filter_map(Value::as_str)
        .filter_map(map)
        .map(Value::from)
        .collect();
    let lost = names.len() != items.len();
    (Value::Array(names), lost)
}

/// Authlete's name for an OAuth grant type; `None` when it has none.
pub(super) fn grant_name(grant: &str) -> Option<&'static str> {
    Some(match grant {
        "authorization_code" => "AUTHORIZATION_CODE",
        "refresh_token" => "REFRESH_TOKEN",
        "implicit" => "IMPLICIT",
        "password" => "PASSWORD",
        "client_credentials" => "CLIENT_CREDENTIALS",
        "urn:ietf:params:oauth:grant-type:token-exchange" => "TOKEN_EXCHANGE",
        "urn:openid:params:grant-type:ciba" => "CIBA",
        "urn:ietf:params:oauth:grant-type:device_code" => "DEVICE_CODE",
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => "JWT_BEARER",
        _ => return None,
    })
}

fn response_type_name(response_type: &str) -> Option<&'static str> {
    let mut parts: Vec<&str> = response_type.split_whitespace().collect();
    parts.sort_unstable();
    Some(match parts.as_slice() {
        ["none"] => "NONE",
        ["code"] => "CODE",
        ["token"] => "TOKEN",
        ["id_token"] => "ID_TOKEN",
        ["code", "token"] => "CODE_TOKEN",
        ["code", "id_token"] => "CODE_ID_TOKEN",
        ["id_token", "token"] => "ID_TOKEN_TOKEN",
        ["code", "id_token", "token"] => "CODE_ID_TOKEN_TOKEN",
        _ => return None,
    })
}

fn auth_method_name(method: &str) -> Option<&'static str> {
    Some(match method {
        "none" => "NONE",
        "client_secret_basic" => "CLIENT_SECRET_BASIC",
        "client_secret_post" => "CLIENT_SECRET_POST",
        "client_secret_jwt" => "CLIENT_SECRET_JWT",
        "private_key_jwt" => "PRIVATE_KEY_JWT",
        "tls_client_auth" => "TLS_CLIENT_AUTH",
        "self_signed_tls_client_auth" => "SELF_SIGNED_TLS_CLIENT_AUTH",
        _ => return None,
    })
}

/// Fields of an Authlete answer that are no part of a `Client` (the
/// envelope) or that Authlete computes.
const NOT_WRITABLE: &[&str] = &["resultCode", "resultMessage", "action"];

/// The body of `/client/update`: the client Authlete holds, with the
/// managed fields replaced by `mapped` (those `mapped` lacks removed) and
/// `extension`'s managed keys likewise; every other field as it is.
pub(crate) fn overlay(current: &Value, mapped: &Mapped) -> Value {
    let mut body = current.as_object().cloned().unwrap_or_default();
    for name in NOT_WRITABLE {
        body.remove(*name);
    }
    for name in managed_names() {
        body.remove(name);
    }
    for (name, value) in &mapped.fields {
        if name != "extension" {
            body.insert(name.clone(), value.clone());
        }
    }
    let mut extension = body
        .remove("extension")
        .and_then(|e| e.as_object().cloned())
        .unwrap_or_default();
    for key in EXTENSION_KEYS {
        extension.remove(key);
    }
    if let Some(Value::Object(managed)) = mapped.fields.get("extension") {
        extension.extend(managed.clone());
    }
    if !extension.is_empty() {
        body.insert("extension".into(), extension.into());
    }
    Value::Object(body)
}

/// The managed fields where the Authlete client differs from `mapped` (an
/// absent field equals an absent or `null`, empty one), by Authlete name.
pub(crate) fn differing(current: &Value, mapped: &Mapped) -> Vec<String> {
    let unset = |value: Option<&Value>| match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::String(text)) => text.is_empty(),
        _ => false,
    };
    let same = |a: Option<&Value>, b: Option<&Value>| (unset(a) && unset(b)) || a == b;
    let mut names: Vec<String> = managed_names()
        // The v2 alias switch is echoed as Authlete likes it; v3 ignores it.
        .filter(|name| *name != "clientIdAliasEnabled")
        .filter(|name| !same(current.get(*name), mapped.fields.get(*name)))
        .map(str::to_owned)
        .collect();
    let extension = |value: Option<&Value>, key: &str| {
        value
            .and_then(|e| e.get(key))
            .cloned()
            .filter(|v| v != &Value::Bool(false))
    };
    for key in EXTENSION_KEYS {
        let held = extension(current.get("extension"), key);
        let wanted = extension(mapped.fields.get("extension"), key);
        if !same(held.as_ref(), wanted.as_ref()) {
            names.push(format!("extension.{key}"));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mapped(record: Value) -> Mapped {
        map(&record, 3).expect("mappable")
    }

    fn field(record: Value, name: &str) -> Option<Value> {
        mapped(record).fields.get(name).cloned()
    }

    #[test]
    fn every_renamed_field_reaches_its_authlete_name() {
        for (from, to, conv) in FIELDS {
            let value = match conv {
                Conv::Same => json!("x"),
                Conv::Jws => json!("ES256"),
                Conv::JweAlg => json!("RSA-OAEP-256"),
                Conv::JweEnc => json!("A128GCM"),
                Conv::SubjectType => json!("pairwise"),
                Conv::DeliveryMode => json!("poll"),
            };
            let record = json!({ *from: value });
            let out = mapped(record);
            assert!(out.fields.contains_key(*to), "{from} -> {to}: {out:?}");
            assert!(out.unmapped.is_empty(), "{from}: {:?}", out.unmapped);
        }
    }

    #[test]
    fn jwks_becomes_the_json_string_authletes_schema_has() {
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]});
        let value = field(json!({"jwks": jwks}), "jwks").unwrap();
        let text = value.as_str().expect("a string");
        assert_eq!(serde_json::from_str::<Value>(text).unwrap(), jwks);
        assert_eq!(
            field(json!({"jwks_uri": "https://rp/jwks"}), "jwksUri"),
            Some(json!("https://rp/jwks"))
        );
    }

    #[test]
    fn mtls_fields_are_kept() {
        let out = mapped(json!({
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": "CN=shop,O=Example",
            "tls_client_auth_san_dns": "shop.example.com",
            "tls_client_certificate_bound_access_tokens": true,
        }));
        assert_eq!(out.fields["tokenAuthMethod"], "TLS_CLIENT_AUTH");
        assert_eq!(out.fields["tlsClientAuthSubjectDn"], "CN=shop,O=Example");
        assert_eq!(out.fields["tlsClientAuthSanDns"], "shop.example.com");
        assert_eq!(out.fields["tlsClientCertificateBoundAccessTokens"], true);
        assert_eq!(out.fields["clientType"], "CONFIDENTIAL");
    }

    #[test]
    fn algorithms_take_authletes_names() {
        for (metadata, value, name, expected) in [
            (
                "token_endpoint_auth_signing_alg",
                "PS256",
                "tokenAuthSignAlg",
                "PS256",
            ),
            (
                "id_token_signed_response_alg",
                "none",
                "idTokenSignAlg",
                "NONE",
            ),
            (
                "id_token_signed_response_alg",
                "EdDSA",
                "idTokenSignAlg",
                "EdDSA",
            ),
            (
                "id_token_encrypted_response_alg",
                "ECDH-ES+A128KW",
                "idTokenEncryptionAlg",
                "ECDH_ES_A128KW",
            ),
            (
                "userinfo_encrypted_response_enc",
                "A128CBC-HS256",
                "userInfoEncryptionEnc",
                "A128CBC_HS256",
            ),
            (
                "request_object_signing_alg",
                "RS256",
                "requestSignAlg",
                "RS256",
            ),
            (
                "authorization_signed_response_alg",
                "ES384",
                "authorizationSignAlg",
                "ES384",
            ),
        ] {
            assert_eq!(
                field(json!({ metadata: value }), name),
                Some(json!(expected)),
                "{metadata}: {value}"
            );
        }
        let unknown = mapped(json!({"id_token_signed_response_alg": "XS999"}));
        assert!(!unknown.fields.contains_key("idTokenSignAlg"));
        assert_eq!(unknown.unmapped, ["id_token_signed_response_alg (value)"]);
    }

    #[test]
    fn dpop_par_and_signed_requests_are_required_as_at_the_source() {
        let out = mapped(json!({
            "dpop_bound_access_tokens": true,
            "require_pushed_authorization_requests": true,
            "require_signed_request_object": false,
        }));
        assert_eq!(out.fields["dpopRequired"], true);
        assert_eq!(out.fields["parRequired"], true);
        assert_eq!(out.fields["requestObjectRequired"], false);
    }

    #[test]
    fn pairwise_settings_are_kept() {
        let out = mapped(json!({
            "subject_type": "pairwise",
            "sector_identifier_uri": "https://rp/sector.json",
        }));
        assert_eq!(out.fields["subjectType"], "PAIRWISE");
        assert_eq!(out.fields["sectorIdentifierUri"], "https://rp/sector.json");
        assert_eq!(
            field(json!({"subject_type": "public"}), "subjectType"),
            Some(json!("PUBLIC"))
        );
    }

    #[test]
    fn the_client_type_follows_the_authentication_method() {
        for (method, kind) in [
            ("none", "PUBLIC"),
            ("client_secret_basic", "CONFIDENTIAL"),
            ("client_secret_post", "CONFIDENTIAL"),
            ("client_secret_jwt", "CONFIDENTIAL"),
            ("private_key_jwt", "CONFIDENTIAL"),
            ("tls_client_auth", "CONFIDENTIAL"),
            ("self_signed_tls_client_auth", "CONFIDENTIAL"),
        ] {
            let out = mapped(json!({"token_endpoint_auth_method": method}));
            assert_eq!(out.fields["clientType"], kind, "{method}");
        }
        // Absent: RFC 7591's default, client_secret_basic.
        assert_eq!(field(json!({}), "clientType"), Some(json!("CONFIDENTIAL")));
    }

    #[test]
    fn core_fields_map_as_before() {
        let record = json!({
            "client_id": "s6BhdRkqt3",
            "client_secret": "ahL7AhthchiNg6beAo5HeijeThae3deiChab7ajiVuip2eodesoBie0ufohtiiK4",
            "client_name": "Shop",
            "redirect_uris": ["https://shop.example.com/cb"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code", "code id_token"],
            "token_endpoint_auth_method": "client_secret_basic",
            "application_type": "web",
            "scope": "openid email",
            "data": {"tier": "gold"},
            "client_id_issued_at": 1,
        });
        let v2 = map(&record, 2).unwrap();
        assert_eq!(v2.fields["clientIdAlias"], "s6BhdRkqt3");
        assert_eq!(v2.fields["clientIdAliasEnabled"], true);
        assert_eq!(
            v2.fields["grantTypes"],
            json!(["AUTHORIZATION_CODE", "REFRESH_TOKEN"])
        );
        assert_eq!(v2.fields["responseTypes"], json!(["CODE", "CODE_ID_TOKEN"]));
        assert_eq!(v2.fields["tokenAuthMethod"], "CLIENT_SECRET_BASIC");
        assert_eq!(v2.fields["applicationType"], "WEB");
        assert_eq!(
            v2.fields["extension"],
            json!({"requestableScopesEnabled": true, "requestableScopes": ["openid", "email"]})
        );
        assert_eq!(v2.unmapped, ["data"], "reported by name only");
        assert!(!v2.fields.contains_key("clientSecret"));
        assert_eq!(v2.secret.as_deref(), record["client_secret"].as_str());
        assert!(
            !map(&record, 3)
                .unwrap()
                .fields
                .contains_key("clientIdAliasEnabled")
        );
    }

    #[test]
    fn a_hashed_secret_is_refused_when_the_client_authenticates_with_it() {
        let hashed = json!({"client_id": "c", "encoded_client_secret": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"});
        assert_eq!(map(&hashed, 3), Err(Refusal::HashedSecret));
        let reason = Refusal::HashedSecret.reason("c");
        assert!(
            reason.contains("hash") && reason.contains("new secret"),
            "{reason}"
        );
        assert!(
            !reason.contains("9f86d0"),
            "the reason never quotes the secret"
        );
        // A client that does not use its secret is copied without one.
        let jwt = json!({"client_id": "c", "token_endpoint_auth_method": "private_key_jwt", "encoded_client_secret": "9f86"});
        let out = map(&jwt, 3).unwrap();
        assert_eq!(out.secret, None);
        assert_eq!(out.fields["clientType"], "CONFIDENTIAL");
    }

    #[test]
    fn secrets_outside_authletes_rules_are_refused() {
        assert!(secret_acceptable("ahL7AhthchiNg6beAo5-_"));
        assert!(!secret_acceptable("has.dot"));
        assert!(!secret_acceptable(&"a".repeat(87)));
        assert!(!secret_acceptable(""));
        assert_eq!(
            map(&json!({"client_secret": "has.dot"}), 3),
            Err(Refusal::SecretOutsideRules)
        );
    }

    #[test]
    fn an_update_overlays_the_managed_fields_and_keeps_authlete_side_settings() {
        let current = json!({
            "resultCode": "A122001",
            "clientId": 1234,
            "clientIdAlias": "shop",
            "clientName": "Old name",
            "jwksUri": "https://old/jwks",
            "pkceRequired": true,
            "extension": {"accessTokenDuration": 600, "requestableScopesEnabled": true, "requestableScopes": ["old"]},
        });
        let out =
            mapped(json!({"client_id": "shop", "client_name": "New name", "scope": "openid"}));
        let body = overlay(&current, &out);
        assert_eq!(body["clientName"], "New name");
        assert_eq!(body["clientId"], 1234);
        assert_eq!(
            body["pkceRequired"], true,
            "an Authlete-side setting survives"
        );
        assert!(body.get("jwksUri").is_none(), "gone at the source: removed");
        assert!(body.get("resultCode").is_none());
        assert_eq!(
            body["extension"],
            json!({"accessTokenDuration": 600, "requestableScopesEnabled": true, "requestableScopes": ["openid"]})
        );
        assert!(
            differing(&body, &out).is_empty(),
            "{:?}",
            differing(&body, &out)
        );
        assert_eq!(
            differing(&current, &out),
            [
                "clientName",
                "jwksUri",
                "clientType",
                "extension.requestableScopes"
            ]
        );
    }
}
