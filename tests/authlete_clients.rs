//! Clients as they are, at an Authlete target (issue 13 item 4), against
//! the strict emulator (typed client metadata, replace-style update):
//! a client of every authentication method arrives with every field that
//! has an Authlete counterpart, under Authlete's names and types, and the
//! client type its method implies (`private_key_jwt` and mTLS clients are
//! confidential); an update at the source keeps what was set at Authlete.
//!
//! Both API generations (`v2::…`, `v3::…`).

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::emulator::authlete::{ClientType, Strictness};
use handover::emulator::driver::REDIRECT_URI;
use serde_json::{Value, json};
use support::authlete::Version;
use support::stack::{AuthleteSetup, AuthleteStack};

macro_rules! in_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Version::V2).await;
                }
            )*
        }
        mod v3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Version::V3).await;
                }
            )*
        }
    };
}

in_both_versions!(
    clients_of_every_authentication_method_arrive_with_every_field_and_the_type_their_method_implies,
    an_update_at_the_source_keeps_the_settings_made_at_authlete,
);

fn strict() -> AuthleteSetup {
    AuthleteSetup {
        authlete: Strictness {
            rate_limit: None,
            ..Strictness::real()
        },
        ..AuthleteSetup::default()
    }
}

fn jwks() -> Value {
    json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})
}

/// One client per authentication method, with the fields that method
/// needs, and the Authlete fields each must arrive as.
fn clients() -> Vec<(Value, Vec<(&'static str, Value)>)> {
    let common = |method: &str| {
        json!({
            "client_name": format!("{method} client"),
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
            "id_token_signed_response_alg": "ES256",
            "scope": "openid email",
        })
    };
    let with = |mut base: Value, extra: Value| {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    vec![
        (
            common("client_secret_basic"),
            vec![("idTokenSignAlg", json!("ES256"))],
        ),
        (
            with(
                common("client_secret_post"),
                json!({"require_pushed_authorization_requests": true}),
            ),
            vec![("parRequired", json!(true))],
        ),
        (
            with(
                common("client_secret_jwt"),
                json!({"token_endpoint_auth_signing_alg": "HS256"}),
            ),
            vec![("tokenAuthSignAlg", json!("HS256"))],
        ),
        (
            with(
                common("private_key_jwt"),
                json!({"jwks": jwks(), "token_endpoint_auth_signing_alg": "ES256", "dpop_bound_access_tokens": true}),
            ),
            vec![
                ("jwks", Value::String(jwks().to_string())),
                ("tokenAuthSignAlg", json!("ES256")),
                ("dpopRequired", json!(true)),
            ],
        ),
        (
            with(
                common("tls_client_auth"),
                json!({"tls_client_auth_subject_dn": "CN=shop,O=Example", "tls_client_certificate_bound_access_tokens": true}),
            ),
            vec![
                ("tlsClientAuthSubjectDn", json!("CN=shop,O=Example")),
                ("tlsClientCertificateBoundAccessTokens", json!(true)),
            ],
        ),
        (
            with(
                common("self_signed_tls_client_auth"),
                json!({"jwks_uri": "https://rp.example.com/jwks.json"}),
            ),
            vec![("jwksUri", json!("https://rp.example.com/jwks.json"))],
        ),
        (
            with(common("none"), json!({"application_type": "native"})),
            vec![("applicationType", json!("NATIVE"))],
        ),
    ]
}

async fn assert_no_dead_letters(stack: &AuthleteStack) {
    let admin = stack.admin();
    let count = admin.status().await.unwrap().journal.dead_letters;
    if count > 0 {
        let letters = admin.dead_letters().await.unwrap();
        panic!("{count} dead letters: {letters:#?}");
    }
}

/// The Authlete client with this alias, as its API returns it.
async fn at_authlete(stack: &AuthleteStack, alias: &str) -> Value {
    let id = stack
        .authlete
        .authlete
        .client_by_alias(alias)
        .unwrap_or_else(|| panic!("{alias} not at Authlete"))
        .client_id;
    stack
        .authlete
        .get(stack.version, &format!("/client/get/{id}"))
        .await
        .ok("A122001")
        .body
}

async fn clients_of_every_authentication_method_arrive_with_every_field_and_the_type_their_method_implies(
    version: Version,
) {
    let stack = AuthleteStack::start_with(version, strict(), |_| {}).await;
    let mut registered = Vec::new();
    for (metadata, expected) in clients() {
        let record = stack
            .via_proxy
            .register_client_metadata(metadata)
            .await
            .unwrap();
        registered.push((record, expected));
    }
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    for (record, expected) in &registered {
        let alias = record["client_id"].as_str().unwrap();
        let method = record["token_endpoint_auth_method"].as_str().unwrap();
        let copy = stack.authlete.authlete.client_by_alias(alias).unwrap();
        let kind = if method == "none" {
            ClientType::Public
        } else {
            ClientType::Confidential
        };
        assert_eq!(copy.client_type, Some(kind), "{method}");
        assert_eq!(
            copy.token_auth_method.as_deref(),
            Some(method.to_ascii_uppercase().as_str())
        );
        let body = at_authlete(&stack, alias).await;
        for (name, value) in expected {
            assert_eq!(&body[*name], value, "{method}: {name} in {body}");
        }
        assert_eq!(body["clientName"], format!("{method} client"));
        assert_eq!(body["redirectUris"], json!([REDIRECT_URI]));
        assert_eq!(
            body["extension"]["requestableScopes"],
            json!(["openid", "email"])
        );
        match record["client_secret"].as_str() {
            Some(secret) => assert_eq!(copy.client_secret, secret, "{method}"),
            None => assert_eq!(method, "none"),
        }
    }
    // Verify compares every mapped field and finds nothing lost.
    let report = stack
        .admin()
        .verify(&handover::api::VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    let clients = &report.datasets[&handover::model::Dataset::Clients];
    assert_eq!(clients.mismatched, 0, "{report:?}");
    assert_eq!(clients.matching, registered.len() as u64, "{report:?}");
}

async fn an_update_at_the_source_keeps_the_settings_made_at_authlete(version: Version) {
    let stack = AuthleteStack::start_with(version, strict(), |_| {}).await;
    let shop = stack.via_proxy.register_client("Shop").await.unwrap();
    stack.wait_synced().await;

    // An operator sets what Connect2id has no word for, at Authlete: a
    // full client body, as Authlete's update takes it.
    let mut held = at_authlete(&stack, &shop.id).await;
    let id = held["clientId"].as_u64().unwrap();
    held["pkceRequired"] = json!(true);
    held["extension"]["accessTokenDuration"] = json!(600);
    for envelope in ["resultCode", "resultMessage"] {
        held.as_object_mut().unwrap().remove(envelope);
    }
    stack
        .authlete
        .post(version, &format!("/client/update/{id}"), &held)
        .await
        .ok("A123001");

    let renamed = stack
        .via_proxy
        .update_client(&shop, "Shop renamed")
        .await
        .unwrap();
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    let body = at_authlete(&stack, &shop.id).await;
    assert_eq!(body["clientName"], "Shop renamed");
    assert_eq!(
        body["pkceRequired"], true,
        "Authlete-side setting kept: {body}"
    );
    assert_eq!(body["extension"]["accessTokenDuration"], 600, "{body}");
    assert_eq!(
        body["extension"]["requestableScopes"],
        json!(["openid", "email", "profile"])
    );
    assert_eq!(body["clientIdAlias"], shop.id.as_str());
    assert_eq!(body["clientType"], "CONFIDENTIAL");
    let copy = stack.authlete.authlete.client_by_alias(&shop.id).unwrap();
    assert_eq!(
        copy.client_secret, renamed.secret,
        "the rotated secret follows"
    );
}
