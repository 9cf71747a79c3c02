//! The writable `Client` fields Authlete documents beyond the few the
//! emulator interprets, with the JSON type its schema gives each (v2 and v3
//! OpenAPI `Client` / `client`).
//!
//! The emulator stores these under their documented names and returns them
//! on every read, so a test can check that a client mapping loses nothing.
//! A name outside this list (a misspelling, a Connect2id name such as
//! `jwks_uri`) is dropped silently, which is what Authlete does with
//! unknown JSON properties as far as anyone can tell (inferred): a mapping
//! that uses a wrong name shows up as a field missing on read.
//!
//! With `typed_client_metadata` each value must also have the schema's
//! type, and enum-typed values one of the enum's names. The trap this
//! catches: `jwks` is a **string** holding the JWK Set JSON, not an object,
//! and algorithm names are Authlete's (`RS256`, `RSA_OAEP_256`,
//! `A128CBC_HS256`), not always the JOSE ones (`RSA-OAEP-256`).
//! `null` is accepted for every field: it means "not set".

use serde_json::Value;

/// The JSON shape of one documented field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A string.
    Text,
    /// A boolean.
    Flag,
    /// An integer.
    Integer,
    /// An array of strings.
    Texts,
    /// An array of `{tag, value}` objects (localised metadata).
    Tagged,
    /// A JSON object.
    Object,
    /// One of these names.
    OneOf(&'static [&'static str]),
}

/// `jws_alg` in the OpenAPI files.
const JWS_ALG: &[&str] = &[
    "NONE", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512", "ES256K", "EdDSA",
];
/// `jwe_alg`.
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
/// `jwe_enc`.
const JWE_ENC: &[&str] = &[
    "A128CBC_HS256",
    "A192CBC_HS384",
    "A256CBC_HS512",
    "A128GCM",
    "A192GCM",
    "A256GCM",
];
/// `subject_type`.
const SUBJECT_TYPE: &[&str] = &["PUBLIC", "PAIRWISE"];
/// `client_auth_method`: the values of `tokenAuthMethod`.
pub(super) const CLIENT_AUTH_METHOD: &[&str] = &[
    "NONE",
    "CLIENT_SECRET_BASIC",
    "CLIENT_SECRET_POST",
    "CLIENT_SECRET_JWT",
    "PRIVATE_KEY_JWT",
    "TLS_CLIENT_AUTH",
    "SELF_SIGNED_TLS_CLIENT_AUTH",
    "ATTEST_JWT_CLIENT_AUTH",
];
/// `response_type`: the values of `responseTypes`.
pub(super) const RESPONSE_TYPE: &[&str] = &[
    "NONE",
    "CODE",
    "TOKEN",
    "ID_TOKEN",
    "CODE_TOKEN",
    "CODE_ID_TOKEN",
    "ID_TOKEN_TOKEN",
    "CODE_ID_TOKEN_TOKEN",
];

/// Every documented writable field the emulator does not model with a
/// field of its own, and its shape. Read-only fields Authlete computes
/// (`number`, `clientSecret`, `derivedSectorIdentifier`, `createdAt`,
/// `dynamicallyRegistered`, `trustChain*`, ...) are not here: a request
/// cannot set them.
const FIELDS: &[(&str, Kind)] = &[
    ("clientNames", Kind::Tagged),
    ("descriptions", Kind::Tagged),
    ("logoUri", Kind::Text),
    ("logoUris", Kind::Tagged),
    ("contacts", Kind::Texts),
    ("tlsClientCertificateBoundAccessTokens", Kind::Flag),
    ("softwareId", Kind::Text),
    ("softwareVersion", Kind::Text),
    ("authorizationSignAlg", Kind::OneOf(JWS_ALG)),
    ("authorizationEncryptionAlg", Kind::OneOf(JWE_ALG)),
    ("authorizationEncryptionEnc", Kind::OneOf(JWE_ENC)),
    ("tokenAuthSignAlg", Kind::OneOf(JWS_ALG)),
    ("selfSignedCertificateKeyId", Kind::Text),
    ("tlsClientAuthSubjectDn", Kind::Text),
    ("tlsClientAuthSanDns", Kind::Text),
    ("tlsClientAuthSanUri", Kind::Text),
    ("tlsClientAuthSanIp", Kind::Text),
    ("tlsClientAuthSanEmail", Kind::Text),
    ("parRequired", Kind::Flag),
    ("requestObjectRequired", Kind::Flag),
    ("requestSignAlg", Kind::OneOf(JWS_ALG)),
    ("requestEncryptionAlg", Kind::OneOf(JWE_ALG)),
    ("requestEncryptionEnc", Kind::OneOf(JWE_ENC)),
    ("requestUris", Kind::Texts),
    ("defaultMaxAge", Kind::Integer),
    ("defaultAcrs", Kind::Texts),
    ("idTokenSignAlg", Kind::OneOf(JWS_ALG)),
    ("idTokenEncryptionAlg", Kind::OneOf(JWE_ALG)),
    ("idTokenEncryptionEnc", Kind::OneOf(JWE_ENC)),
    ("authTimeRequired", Kind::Flag),
    ("subjectType", Kind::OneOf(SUBJECT_TYPE)),
    ("sectorIdentifierUri", Kind::Text),
    ("jwksUri", Kind::Text),
    ("jwks", Kind::Text),
    ("userInfoSignAlg", Kind::OneOf(JWS_ALG)),
    ("userInfoEncryptionAlg", Kind::OneOf(JWE_ALG)),
    ("userInfoEncryptionEnc", Kind::OneOf(JWE_ENC)),
    ("loginUri", Kind::Text),
    ("tosUri", Kind::Text),
    ("tosUris", Kind::Tagged),
    ("policyUri", Kind::Text),
    ("policyUris", Kind::Tagged),
    ("clientUri", Kind::Text),
    ("clientUris", Kind::Tagged),
    ("bcDeliveryMode", Kind::Text),
    ("bcNotificationEndpoint", Kind::Text),
    ("bcRequestSignAlg", Kind::OneOf(JWS_ALG)),
    ("bcUserCodeRequired", Kind::Flag),
    ("extension", Kind::Object),
    ("authorizationDetailsTypes", Kind::Texts),
    ("customMetadata", Kind::Text),
    ("frontChannelRequestObjectEncryptionRequired", Kind::Flag),
    ("requestObjectEncryptionAlgMatchRequired", Kind::Flag),
    ("requestObjectEncryptionEncMatchRequired", Kind::Flag),
    ("digestAlgorithm", Kind::Text),
    ("singleAccessTokenPerSubject", Kind::Flag),
    ("pkceRequired", Kind::Flag),
    ("pkceS256Required", Kind::Flag),
    ("dpopRequired", Kind::Flag),
    ("rsRequestSigned", Kind::Flag),
    ("rsSignedRequestKeyId", Kind::Text),
    ("clientRegistrationTypes", Kind::Texts),
    ("organizationName", Kind::Text),
    ("signedJwksUri", Kind::Text),
    ("entityId", Kind::Text),
    ("trustAnchorId", Kind::Text),
    ("fapiModes", Kind::Texts),
    ("responseModes", Kind::Texts),
    ("credentialResponseEncryptionRequired", Kind::Flag),
    ("mtlsEndpointAliasesUsed", Kind::Flag),
    ("inScopeForTokenMigration", Kind::Flag),
];

/// Whether Authlete documents a writable `Client` field of this name that
/// the emulator keeps as metadata.
pub(super) fn is_documented(name: &str) -> bool {
    FIELDS.iter().any(|(field, _)| *field == name)
}

/// Checks a documented field's value against the schema; the error names
/// the field and what it must be.
pub(super) fn check(name: &str, value: &Value) -> Result<(), String> {
    let Some((_, kind)) = FIELDS.iter().find(|(field, _)| *field == name) else {
        return Ok(());
    };
    check_kind(name, *kind, value)
}

/// Checks a value that must be one of `names` (or null).
pub(super) fn check_one_of(
    name: &str,
    names: &'static [&'static str],
    value: &Value,
) -> Result<(), String> {
    check_kind(name, Kind::OneOf(names), value)
}

fn check_kind(name: &str, kind: Kind, value: &Value) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let tagged = |item: &Value| {
        item.as_object().is_some_and(|object| {
            object.get("tag").is_none_or(Value::is_string)
                && object.get("value").is_none_or(Value::is_string)
        })
    };
    let fits = match kind {
        Kind::Text => value.is_string(),
        Kind::Flag => value.is_boolean(),
        Kind::Integer => value.is_i64() || value.is_u64(),
        Kind::Texts => value
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_string)),
        Kind::Tagged => value
            .as_array()
            .is_some_and(|items| items.iter().all(tagged)),
        Kind::Object => value.is_object(),
        Kind::OneOf(names) => value.as_str().is_some_and(|text| names.contains(&text)),
    };
    if fits {
        return Ok(());
    }
    let expected = match kind {
        Kind::Text => "a string".to_owned(),
        Kind::Flag => "a boolean".to_owned(),
        Kind::Integer => "an integer".to_owned(),
        Kind::Texts => "an array of strings".to_owned(),
        Kind::Tagged => "an array of {tag, value} objects".to_owned(),
        Kind::Object => "an object".to_owned(),
        Kind::OneOf(names) => format!("one of {}", names.join(", ")),
    };
    Err(format!("'{name}' must be {expected}."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_checked_against_the_documented_shapes() {
        assert!(check("jwks", &json!("{\"keys\":[]}")).is_ok());
        let object = check("jwks", &json!({"keys": []})).expect_err("jwks is a string");
        assert!(object.contains("'jwks' must be a string"), "{object}");
        assert!(check("idTokenSignAlg", &json!("RS256")).is_ok());
        assert!(check("idTokenEncryptionAlg", &json!("RSA-OAEP-256")).is_err());
        assert!(check("idTokenEncryptionAlg", &json!("RSA_OAEP_256")).is_ok());
        assert!(check("dpopRequired", &json!("true")).is_err());
        assert!(check("defaultMaxAge", &json!(3600)).is_ok());
        assert!(check("clientNames", &json!([{"tag": "de", "value": "Laden"}])).is_ok());
        assert!(check("subjectType", &Value::Null).is_ok());
        assert!(
            check_one_of(
                "tokenAuthMethod",
                CLIENT_AUTH_METHOD,
                &json!("private_key_jwt")
            )
            .is_err()
        );
        assert!(is_documented("tlsClientAuthSubjectDn"));
        assert!(!is_documented("jwks_uri"));
        assert!(!is_documented("clientSecret"));
    }
}
