//! The Authlete emulator, black-box over HTTP: both API versions, the
//! token import semantics the migration relies on (hash-only storage,
//! duplicates refused, pair revocation, rotation), client management and
//! the emulator knobs.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use handover::emulator::authlete::{Config, Error, Options, Strictness, run, token_hash};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::authlete::{Emulator, Reply, Version, form, start};
use tokio_util::sync::CancellationToken;

const V2: Version = Version::V2;
const V3: Version = Version::V3;

/// The harness's service in the lenient reading, which these tests
/// describe whatever `Config::default()` picks (the strict reading is in
/// `emulator_authlete_strict.rs`).
fn config() -> Config {
    Config {
        strictness: Strictness::lenient(),
        ..support::authlete::config()
    }
}

#[tokio::test]
async fn v2_basic_and_v3_bearer_authenticate_and_bad_credentials_get_401() {
    let emu = start(config()).await;
    let service_id = emu.authlete.config().service_id;

    let v2 = emu.get(V2, "/service/get").await.ok("A126001");
    assert_eq!(v2.body["apiKey"], json!(service_id));
    let v3 = emu.get(V3, "/service/get").await.ok("A126001");
    assert_eq!(v3.body["refreshTokenKept"], json!(false));
    assert_eq!(v3.body["singleAccessTokenPerSubject"], json!(false));
    assert_eq!(v3.body["clientIdAliasEnabled"], json!(true));
    assert!(
        v3.body["supportedGrantTypes"]
            .as_array()
            .expect("grant types")
            .contains(&json!("REFRESH_TOKEN"))
    );
    assert!(
        v3.body["supportedScopes"]
            .as_array()
            .expect("scopes")
            .contains(&json!({"name": "openid"}))
    );

    // The service list has no service id in either version.
    for auth in [emu.basic(), emu.bearer()] {
        let list = emu
            .send(
                Method::GET,
                "/api/service/get/list",
                Some(&auth),
                None,
                Bytes::new(),
            )
            .await
            .ok("A127001");
        assert_eq!(list.body["services"][0]["apiKey"], json!(service_id));
    }

    let v2_path = emu.path(V2, "/service/get");
    let v3_path = emu.path(V3, "/service/get");
    let missing = emu
        .send(Method::GET, &v2_path, None, None, Bytes::new())
        .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.code(), "A001202");
    assert!(missing.str("resultMessage").starts_with("[A001202] "));

    use base64::Engine as _;
    let wrong_secret = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{service_id}:nope"))
    );
    for (path, auth) in [
        (&v2_path, wrong_secret.as_str()),
        (&v2_path, emu.bearer().as_str()), // v2 paths take Basic only
        (&v3_path, "Bearer wrong-token"),
        (&v3_path, emu.basic().as_str()), // v3 paths take Bearer only
    ] {
        let reply = emu
            .send(Method::GET, path, Some(auth), None, Bytes::new())
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path} {reply:?}");
        assert_eq!(reply.code(), "A001203");
    }

    let other_service = emu
        .send(
            Method::GET,
            &format!("/api/{}/service/get", service_id + 1),
            Some(&emu.bearer()),
            None,
            Bytes::new(),
        )
        .await;
    assert_eq!(other_service.status, StatusCode::FORBIDDEN);
    assert_eq!(other_service.code(), "A001204");

    let no_such_api = emu.get(V3, "/no/such/api").await;
    assert_eq!(no_such_api.status, StatusCode::NOT_FOUND);
    assert_eq!(no_such_api.code(), "A001205");
    let wrong_method = emu.get(V3, "/auth/token/create").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn client_create_assigns_id_and_secret_and_enforces_unique_aliases() {
    let emu = start(config()).await;
    let created = emu
        .create_client(
            V3,
            json!({
                "clientName": "Legacy RP",
                "clientIdAlias": "c2id-rp-1",
                "clientType": "CONFIDENTIAL",
                "applicationType": "WEB",
                "grantTypes": ["AUTHORIZATION_CODE", "REFRESH_TOKEN"],
                "responseTypes": ["CODE"],
                "redirectUris": ["https://rp.example.com/cb"],
                "tokenAuthMethod": "CLIENT_SECRET_BASIC",
                "attributes": [{"key": "origin", "value": "c2id"}],
                "clientId": 42,
                "clientSecret": "chosen-by-caller",
                "someFieldTheEmulatorDoesNotKnow": {"x": 1},
            }),
        )
        .await;
    assert_eq!(created["resultCode"], json!("A121001"));
    let client_id = created["clientId"].as_u64().expect("numeric id");
    assert_ne!(client_id, 42, "clientId is read-only");
    assert!((10_000_000_000..100_000_000_000_000).contains(&client_id));
    let secret = created["clientSecret"].as_str().expect("secret");
    assert_eq!(secret.len(), 86, "generated secrets are 86 base64url chars");
    assert_ne!(secret, "chosen-by-caller", "clientSecret is read-only");
    assert_eq!(created["clientIdAlias"], json!("c2id-rp-1"));
    assert_eq!(created["clientIdAliasEnabled"], json!(true));
    assert_eq!(
        created["redirectUris"],
        json!(["https://rp.example.com/cb"])
    );
    assert!(created["createdAt"].as_i64().expect("createdAt") > 0);

    // v3 default alias: the numeric id, always enabled.
    let plain = emu.create_client(V3, json!({"clientName": "plain"})).await;
    assert_eq!(
        plain["clientIdAlias"],
        json!(plain["clientId"].as_u64().expect("id").to_string())
    );

    let duplicate = emu
        .post(V3, "/client/create", &json!({"clientIdAlias": "c2id-rp-1"}))
        .await;
    assert_eq!(duplicate.status, StatusCode::BAD_REQUEST);
    assert_eq!(duplicate.code(), "A121201");
    let bad_enum = emu
        .post(V3, "/client/create", &json!({"clientType": "SOMETIMES"}))
        .await;
    assert_eq!(bad_enum.status, StatusCode::BAD_REQUEST);

    // Get by numeric id (both versions) and by alias.
    let by_id = emu
        .get(V2, &format!("/client/get/{client_id}"))
        .await
        .ok("A122001");
    assert_eq!(by_id.body["clientName"], json!("Legacy RP"));
    let by_alias = emu.get(V3, "/client/get/c2id-rp-1").await.ok("A122001");
    assert_eq!(by_alias.body["clientId"], json!(client_id));
    let unknown = emu.get(V3, "/client/get/123").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // v2: the alias counts only when the client enables it.
    let v2_disabled = emu
        .create_client(V2, json!({"clientIdAlias": "v2-off"}))
        .await;
    assert_eq!(v2_disabled["clientIdAliasEnabled"], json!(false));
    assert_eq!(
        emu.get(V2, "/client/get/v2-off").await.status,
        StatusCode::NOT_FOUND
    );
    emu.create_client(
        V2,
        json!({"clientIdAlias": "v2-on", "clientIdAliasEnabled": true}),
    )
    .await;
    emu.get(V2, "/client/get/v2-on").await.ok("A122001");

    // List: creation order, end exclusive and 5 by default.
    for i in 0..4 {
        emu.create_client(V3, json!({"clientName": format!("filler-{i}")}))
            .await;
    }
    let page = emu.get(V3, "/client/get/list").await.ok("A125001");
    assert_eq!(page.body["totalCount"], json!(8));
    assert_eq!(page.body["clients"].as_array().expect("clients").len(), 5);
    assert_eq!(page.body["clients"][0]["clientId"], json!(client_id));
    let tail = emu.get(V3, "/client/get/list?start=6&end=100").await;
    assert_eq!(tail.body["clients"].as_array().expect("clients").len(), 2);

    // Update keeps id, secret and createdAt; in the lenient reading the
    // fields the body omits keep their value (the replacing reading is in
    // emulator_authlete_strict.rs).
    let updated = emu
        .post(
            V3,
            &format!("/client/update/{client_id}"),
            &json!({"clientName": "Renamed", "clientIdAlias": "c2id-rp-1b"}),
        )
        .await
        .ok("A123001");
    assert_eq!(updated.body["clientSecret"], json!(secret));
    assert_eq!(updated.body["createdAt"], created["createdAt"]);
    assert_eq!(updated.body["clientName"], json!("Renamed"));
    assert_eq!(
        updated.body["redirectUris"],
        json!(["https://rp.example.com/cb"])
    );
    assert!(emu.authlete.client_by_alias("c2id-rp-1").is_none());
    assert_eq!(
        emu.authlete
            .client_by_alias("c2id-rp-1b")
            .map(|c| c.client_id),
        Some(client_id)
    );
}

#[tokio::test]
async fn client_secret_update_enforces_charset_and_length() {
    let emu = start(config()).await;
    let (client_id, original) = emu.confidential_client("rp").await;

    let updated = emu
        .post(
            V3,
            "/client/secret/update/rp",
            &json!({"clientSecret": "legacy-Secret_0123"}),
        )
        .await
        .ok("A149001");
    assert_eq!(updated.body["newClientSecret"], json!("legacy-Secret_0123"));
    assert_eq!(updated.body["oldClientSecret"], json!(original));
    assert_eq!(
        emu.authlete.client(client_id).map(|c| c.client_secret),
        Some("legacy-Secret_0123".to_owned())
    );

    let charset = emu
        .post(
            V2,
            &format!("/client/secret/update/{client_id}"),
            &json!({"clientSecret": "has+plus/slash="}),
        )
        .await;
    assert_eq!(charset.status, StatusCode::BAD_REQUEST);
    assert_eq!(charset.code(), "A149201");
    assert!(
        charset
            .str("resultMessage")
            .contains("A-Z, a-z, 0-9, '-' and '_'")
    );

    let longest = "x".repeat(86);
    emu.post(
        V3,
        "/client/secret/update/rp",
        &json!({"clientSecret": longest}),
    )
    .await
    .ok("A149001");
    let too_long = emu
        .post(
            V3,
            "/client/secret/update/rp",
            &json!({"clientSecret": "x".repeat(87)}),
        )
        .await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_long.code(), "A149202");
    assert!(too_long.str("resultMessage").contains("maximum is 86"));
    assert_eq!(
        emu.authlete.client(client_id).map(|c| c.client_secret),
        Some(longest.clone()),
        "rejected updates change nothing"
    );

    let refreshed = emu.get(V3, "/client/secret/refresh/rp").await.ok("A148001");
    assert_eq!(refreshed.str("newClientSecret").len(), 86);
    assert_eq!(refreshed.body["oldClientSecret"], json!(longest));

    let unknown = emu
        .post(
            V3,
            "/client/secret/update/nobody",
            &json!({"clientSecret": "abc"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn imported_token_introspects_with_subject_scopes_and_client() {
    let emu = start(config()).await;
    let (client_id, _) = emu.confidential_client("rp").await;
    let created = emu
        .post(
            V3,
            "/auth/token/create",
            &json!({
                "grantType": "AUTHORIZATION_CODE",
                "clientIdentifier": "rp",
                "subject": "alice",
                "scopes": ["openid", "email"],
                "accessToken": "c2id-access-token-1",
                "accessTokenDuration": 512,
                "refreshToken": "c2id-refresh-token-1",
                "refreshTokenDuration": 2_591_488,
                "clientIdAliasUsed": true,
                "properties": [{"key": "migrated_from", "value": "c2id", "hidden": true}],
            }),
        )
        .await
        .ok("A109001");
    assert_eq!(created.action(), "OK");
    assert!(created.str("resultMessage").contains("authorization_code"));
    assert_eq!(created.str("accessToken"), "c2id-access-token-1");
    assert_eq!(created.str("refreshToken"), "c2id-refresh-token-1");
    assert_eq!(created.body["clientId"], json!(client_id));
    assert_eq!(created.body["subject"], json!("alice"));
    assert_eq!(created.body["scopes"], json!(["openid", "email"]));
    assert_eq!(created.body["grantType"], json!("AUTHORIZATION_CODE"));
    assert_eq!(created.body["tokenType"], json!("Bearer"));
    assert_eq!(created.body["expiresIn"], json!(512));
    assert!(!created.str("tokenId").is_empty());
    assert_eq!(created.body["properties"][0]["hidden"], json!(true));
    let expires_at = created.body["expiresAt"].as_i64().expect("expiresAt in ms");
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    assert!(
        (expires_at - now_ms - 512_000).abs() < 10_000,
        "{expires_at} vs {now_ms}"
    );

    for version in [V2, V3] {
        let info = emu
            .post(
                version,
                "/auth/introspection",
                &json!({"token": "c2id-access-token-1"}),
            )
            .await
            .ok("A056001");
        assert_eq!(info.action(), "OK");
        assert_eq!(info.body["usable"], json!(true));
        assert_eq!(info.body["existent"], json!(true));
        assert_eq!(info.body["refreshable"], json!(true));
        assert_eq!(info.body["subject"], json!("alice"));
        assert_eq!(info.body["scopes"], json!(["openid", "email"]));
        assert_eq!(info.body["clientId"], json!(client_id));
        assert_eq!(info.body["clientIdAlias"], json!("rp"));
        assert_eq!(info.body["clientIdAliasUsed"], json!(true));
        assert_eq!(info.body["expiresAt"], json!(expires_at));
        assert_eq!(info.body["properties"][0]["key"], json!("migrated_from"));
    }
    let insufficient = emu
        .post(
            V3,
            "/auth/introspection",
            &json!({"token": "c2id-access-token-1", "scopes": ["profile"]}),
        )
        .await;
    assert_eq!(insufficient.action(), "FORBIDDEN");

    let unknown = emu.introspect("never-issued").await.ok("A057302");
    assert_eq!(unknown.action(), "UNAUTHORIZED");
    assert_eq!(unknown.body["existent"], json!(false));

    // RFC 7662 flavour, with the refresh token too.
    let standard = emu
        .post(
            V3,
            "/auth/introspection/standard",
            &json!({"parameters": form(&[("token", "c2id-refresh-token-1"), ("token_type_hint", "refresh_token")])}),
        )
        .await
        .ok("A146001");
    let content = standard.content();
    assert_eq!(content["active"], json!(true));
    assert_eq!(content["sub"], json!("alice"));
    assert_eq!(content["client_id"], json!("rp"), "alias used at creation");
    assert_eq!(content["scope"], json!("openid email"));
    let inactive = emu
        .post(
            V3,
            "/auth/introspection/standard",
            &json!({"parameters": "token=nope"}),
        )
        .await;
    assert_eq!(inactive.content(), json!({"active": false}));

    // Only hashes are stored.
    let stored = emu
        .authlete
        .token_by_access_token("c2id-access-token-1")
        .expect("stored");
    assert_eq!(
        stored.access_token_hash.as_deref(),
        Some(token_hash("c2id-access-token-1").as_str())
    );
    assert_eq!(
        stored.refresh_token_hash.as_deref(),
        Some(token_hash("c2id-refresh-token-1").as_str())
    );
}

#[tokio::test]
async fn duplicate_access_or_refresh_token_is_rejected() {
    let emu = start(config()).await;
    emu.confidential_client("rp").await;
    emu.import_pair("rp", "alice", "at-1", "rt-1")
        .await
        .ok("A109001");

    let same_at = emu.import_pair("rp", "alice", "at-1", "rt-2").await;
    assert_eq!(same_at.status, StatusCode::BAD_REQUEST);
    assert_eq!(same_at.code(), "A109208");
    assert_eq!(same_at.action(), "BAD_REQUEST");

    let same_rt = emu.import_pair("rp", "bob", "at-2", "rt-1").await;
    assert_eq!(same_rt.status, StatusCode::BAD_REQUEST);
    assert_eq!(same_rt.code(), "A109209");
    assert_eq!(same_rt.action(), "BAD_REQUEST");

    assert_eq!(
        emu.authlete.token_count(),
        1,
        "no upsert, no partial insert"
    );
    let kept = emu.authlete.token_by_access_token("at-1").expect("kept");
    assert_eq!(kept.refresh_token_hash, Some(token_hash("rt-1")));
}

#[tokio::test]
async fn v2_requires_numeric_client_id_and_v3_accepts_alias() {
    let emu = start(config()).await;
    let (client_id, _) = emu.confidential_client("rp").await;
    let request = |client: Value| {
        let mut body = json!({"grantType": "PASSWORD", "subject": "alice"});
        if let (Value::Object(body), Value::Object(client)) = (&mut body, client) {
            body.extend(client);
        }
        body
    };

    let v2_alias = emu
        .post(
            V2,
            "/auth/token/create",
            &request(json!({"clientIdentifier": "rp"})),
        )
        .await;
    assert_eq!(v2_alias.status, StatusCode::BAD_REQUEST);
    assert_eq!(v2_alias.code(), "A109203", "v2 requires clientId");
    let v2_alias_as_id = emu
        .post(
            V2,
            "/auth/token/create",
            &request(json!({"clientId": "rp"})),
        )
        .await;
    assert_eq!(v2_alias_as_id.code(), "A109211");
    emu.post(
        V2,
        "/auth/token/create",
        &request(json!({"clientId": client_id})),
    )
    .await
    .ok("A109001");
    // The seed article sends clientId as a string.
    emu.post(
        V2,
        "/auth/token/create",
        &request(json!({"clientId": client_id.to_string()})),
    )
    .await
    .ok("A109001");

    let v3_alias = emu
        .post(
            V3,
            "/auth/token/create",
            &request(json!({"clientIdentifier": "rp"})),
        )
        .await
        .ok("A109001");
    assert_eq!(v3_alias.body["clientId"], json!(client_id));
    emu.post(
        V3,
        "/auth/token/create",
        &request(json!({"clientIdentifier": client_id.to_string()})),
    )
    .await
    .ok("A109001");
    emu.post(
        V3,
        "/auth/token/create",
        &request(json!({"clientId": client_id})),
    )
    .await
    .ok("A109001");
    let v3_none = emu
        .post(V3, "/auth/token/create", &request(json!({})))
        .await;
    assert_eq!(v3_none.code(), "A109203");
    let unknown = emu
        .post(
            V3,
            "/auth/token/create",
            &request(json!({"clientIdentifier": "ghost"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.code(), "A109204");
}

#[tokio::test]
async fn token_create_validates_grant_subject_scopes_and_refresh_rules() {
    let emu = start(config()).await;
    let emu = &emu;
    emu.confidential_client("rp").await;
    let create = |body: Value| async move {
        let mut request = json!({"clientIdentifier": "rp"});
        if let (Value::Object(request), Value::Object(body)) = (&mut request, body) {
            request.extend(body);
        }
        emu.post(V3, "/auth/token/create", &request).await
    };

    let cases = [
        (json!({"subject": "a"}), "A109201"),
        (
            json!({"grantType": "REFRESH_TOKEN", "subject": "a"}),
            "A109202",
        ),
        (json!({"grantType": "AUTHORIZATION_CODE"}), "A109205"),
        (
            json!({"grantType": "AUTHORIZATION_CODE", "subject": "ålice"}),
            "A109206",
        ),
        (
            json!({"grantType": "AUTHORIZATION_CODE", "subject": "a".repeat(101)}),
            "A109206",
        ),
        (
            json!({"grantType": "AUTHORIZATION_CODE", "subject": "a", "scopes": ["admin"]}),
            "A109207",
        ),
        (
            json!({"grantType": "AUTHORIZATION_CODE", "subject": "a", "accessTokenDuration": -1}),
            "A109210",
        ),
    ];
    for (body, code) in cases {
        let reply = create(body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body} {reply:?}");
        assert_eq!(reply.code(), code, "{body}");
        assert_eq!(reply.action(), "BAD_REQUEST");
    }
    create(json!({"grantType": "AUTHORIZATION_CODE", "subject": "a".repeat(100)}))
        .await
        .ok("A109001");

    // Client credentials: no subject needed (ignored), never a refresh token.
    let cc = create(
        json!({"grantType": "CLIENT_CREDENTIALS", "subject": "ignored", "refreshToken": "cc-rt"}),
    )
    .await
    .ok("A109001");
    assert_eq!(cc.body["refreshToken"], Value::Null);
    assert_eq!(cc.body["subject"], Value::Null);
    assert!(emu.authlete.token_by_refresh_token("cc-rt").is_none());
    let implicit = create(json!({"grantType": "IMPLICIT", "subject": "a"}))
        .await
        .ok("A109001");
    assert_eq!(implicit.body["refreshToken"], Value::Null);

    // No values given: both generated (43 base64url chars), service default
    // durations.
    let generated = create(json!({"grantType": "AUTHORIZATION_CODE", "subject": "a"}))
        .await
        .ok("A109001");
    assert_eq!(generated.str("accessToken").len(), 43);
    assert_eq!(generated.str("refreshToken").len(), 43);
    assert_eq!(generated.body["expiresIn"], json!(3600));
    assert!(
        emu.authlete
            .token_by_refresh_token(generated.str("refreshToken"))
            .is_some()
    );

    // Form bodies are accepted too.
    let formed = emu
        .post_form(
            V3,
            "/auth/token/create",
            &form(&[
                ("grantType", "AUTHORIZATION_CODE"),
                ("clientIdentifier", "rp"),
                ("subject", "form-user"),
                ("scopes", "openid profile"),
                ("accessToken", "form-at"),
                ("accessTokenDuration", "60"),
            ]),
        )
        .await
        .ok("A109001");
    assert_eq!(formed.body["scopes"], json!(["openid", "profile"]));
    assert_eq!(formed.body["expiresIn"], json!(60));
}

#[tokio::test]
async fn refresh_rotates_the_refresh_token_by_default() {
    let emu = start(config()).await;
    let (client_id, secret) = emu.confidential_client("rp").await;
    emu.import_pair("rp", "alice", "at-0", "rt-0")
        .await
        .ok("A109001");

    let first = emu.refresh("rp", &secret, "rt-0").await.ok("A053001");
    assert_eq!(first.action(), "OK");
    let at_1 = first.str("accessToken").to_owned();
    let rt_1 = first.str("refreshToken").to_owned();
    assert_ne!(rt_1, "rt-0", "rotation issues a new refresh token");
    assert_eq!(first.body["subject"], json!("alice"));
    assert_eq!(first.body["scopes"], json!(["openid", "email"]));
    assert_eq!(first.body["clientId"], json!(client_id));
    assert_eq!(first.body["clientIdAliasUsed"], json!(true));
    let content = first.content();
    assert_eq!(content["access_token"], json!(at_1));
    assert_eq!(content["refresh_token"], json!(rt_1));
    assert_eq!(content["token_type"], json!("Bearer"));
    assert_eq!(content["scope"], json!("openid email"));

    // The old refresh token and the old access token are gone.
    let old = emu.refresh("rp", &secret, "rt-0").await.ok("A053302");
    assert_eq!(old.action(), "BAD_REQUEST");
    assert_eq!(old.content()["error"], json!("invalid_grant"));
    emu.introspect("at-0").await.ok("A057302");
    emu.introspect(&at_1).await.ok("A056001");

    // The new one works, by numeric id too.
    let second = emu
        .refresh(&client_id.to_string(), &secret, &rt_1)
        .await
        .ok("A053001");
    assert_eq!(second.body["clientIdAliasUsed"], json!(false));
    assert_eq!(emu.authlete.token_count(), 1);

    // Client authentication and ownership.
    let wrong_secret = emu.refresh("rp", "wrong", second.str("refreshToken")).await;
    assert_eq!(wrong_secret.action(), "INVALID_CLIENT");
    assert_eq!(wrong_secret.content()["error"], json!("invalid_client"));
    let (_, other_secret) = emu.confidential_client("other").await;
    let foreign = emu
        .refresh("other", &other_secret, second.str("refreshToken"))
        .await
        .ok("A053304");
    assert_eq!(foreign.content()["error"], json!("invalid_grant"));
    let unsupported = emu
        .post(
            V3,
            "/auth/token",
            &json!({"clientId": "rp", "clientSecret": secret, "parameters": "grant_type=password&username=a&password=b"}),
        )
        .await;
    assert_eq!(unsupported.action(), "BAD_REQUEST");
    assert_eq!(
        unsupported.content()["error"],
        json!("unsupported_grant_type")
    );

    // Credentials may also come inside the parameters (client_secret_post).
    emu.post(
        V2,
        "/auth/token",
        &json!({"parameters": form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", second.str("refreshToken")),
            ("client_id", &client_id.to_string()),
            ("client_secret", &secret),
        ])}),
    )
    .await
    .ok("A053001");
}

#[tokio::test]
async fn refresh_keeps_the_refresh_token_when_the_service_keeps_it() {
    let emu = start(Config {
        refresh_token_kept: true,
        ..config()
    })
    .await;
    assert_eq!(
        emu.get(V3, "/service/get").await.body["refreshTokenKept"],
        json!(true)
    );
    let (_, secret) = emu.confidential_client("rp").await;
    emu.import_pair("rp", "alice", "at-0", "rt-kept")
        .await
        .ok("A109001");

    let first = emu.refresh("rp", &secret, "rt-kept").await.ok("A053001");
    assert_eq!(first.str("refreshToken"), "rt-kept");
    let second = emu.refresh("rp", &secret, "rt-kept").await.ok("A053001");
    assert_eq!(second.str("refreshToken"), "rt-kept");
    assert_ne!(first.str("accessToken"), second.str("accessToken"));
    // Each refresh replaces the coupled access token.
    emu.introspect("at-0").await.ok("A057302");
    emu.introspect(first.str("accessToken")).await.ok("A057302");
    emu.introspect(second.str("accessToken"))
        .await
        .ok("A056001");
}

#[tokio::test]
async fn revocation_removes_the_whole_pair() {
    let emu = start(config()).await;
    let (client_id, secret) = emu.confidential_client("rp").await;
    emu.import_pair("rp", "alice", "at-a", "rt-a")
        .await
        .ok("A109001");
    emu.import_pair("rp", "alice", "at-b", "rt-b")
        .await
        .ok("A109001");
    let revoke = |token: &'static str, hint: &'static str, client: String, secret: String| {
        let emu = &emu;
        async move {
            emu.post(
                V3,
                "/auth/revocation",
                &json!({
                    "parameters": form(&[("token", token), ("token_type_hint", hint)]),
                    "clientId": client,
                    "clientSecret": secret,
                }),
            )
            .await
        }
    };

    let bad = revoke("rt-a", "refresh_token", "rp".into(), "wrong".into()).await;
    assert_eq!(bad.action(), "INVALID_CLIENT");
    assert_eq!(emu.authlete.token_count(), 2);

    // Revoking the refresh token kills its access token too ...
    let ok = revoke("rt-a", "refresh_token", "rp".into(), secret.clone())
        .await
        .ok("A113001");
    assert_eq!(ok.action(), "OK");
    emu.introspect("at-a").await.ok("A057302");
    // ... and revoking the access token kills its refresh token.
    revoke(
        "at-b",
        "access_token",
        client_id.to_string(),
        secret.clone(),
    )
    .await
    .ok("A113001");
    emu.refresh("rp", &secret, "rt-b").await.ok("A053302");
    assert_eq!(emu.authlete.token_count(), 0);

    // RFC 7009: an unknown token is not an error.
    revoke("never-issued", "", "rp".into(), secret.clone())
        .await
        .ok("A113001");

    // Another client's token is refused and stays.
    emu.import_pair("rp", "alice", "at-c", "rt-c")
        .await
        .ok("A109001");
    let (_, other_secret) = emu.confidential_client("other").await;
    let foreign = revoke("at-c", "", "other".into(), other_secret).await;
    assert_eq!(foreign.action(), "BAD_REQUEST");
    emu.introspect("at-c").await.ok("A056001");
}

#[tokio::test]
async fn token_delete_answers_204_then_404_and_revoke_counts() {
    let emu = start(config()).await;
    emu.confidential_client("rp").await;
    emu.import_pair("rp", "alice", "del-at-1", "del-rt-1")
        .await
        .ok("A109001");
    emu.import_pair("rp", "alice", "del-at-2", "del-rt-2")
        .await
        .ok("A109001");

    let by_value = emu.delete(V3, "/auth/token/delete/del-at-1").await;
    assert_eq!(by_value.status, StatusCode::NO_CONTENT);
    assert_eq!(by_value.body, Value::Null);
    assert!(
        emu.authlete.token_by_refresh_token("del-rt-1").is_none(),
        "pair removed"
    );
    let again = emu.delete(V3, "/auth/token/delete/del-at-1").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.code(), "A313301");

    let hash = token_hash("del-at-2");
    assert_eq!(
        emu.delete(V2, &format!("/auth/token/delete/{hash}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(emu.authlete.token_count(), 0);

    // Administrative revoke: every given criterion must match.
    emu.confidential_client("other").await;
    emu.import_pair("rp", "alice", "r-1", "r-rt-1")
        .await
        .ok("A109001");
    emu.import_pair("rp", "alice", "r-2", "r-rt-2")
        .await
        .ok("A109001");
    emu.import_pair("rp", "bob", "r-3", "r-rt-3")
        .await
        .ok("A109001");
    emu.import_pair("other", "alice", "r-4", "r-rt-4")
        .await
        .ok("A109001");
    let by_rt_hash = emu
        .post(
            V3,
            "/auth/token/revoke",
            &json!({"refreshTokenIdentifier": token_hash("r-rt-3")}),
        )
        .await
        .ok("A312001");
    assert_eq!(by_rt_hash.body["count"], json!(1));
    let by_user = emu
        .post(
            V2,
            "/auth/token/revoke",
            &json!({"clientIdentifier": "rp", "subject": "alice"}),
        )
        .await
        .ok("A312001");
    assert_eq!(by_user.body["count"], json!(2));
    assert_eq!(
        by_user.str("resultMessage"),
        "[A312001] Revoked 2 access token(s)."
    );
    assert!(emu.authlete.token_by_access_token("r-4").is_some());
    let nothing = emu.post(V3, "/auth/token/revoke", &json!({})).await;
    assert_eq!(nothing.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn token_list_shows_hashes_never_values() {
    let emu = start(config()).await;
    let (client_id, _) = emu.confidential_client("rp").await;
    emu.confidential_client("other").await;
    for i in 0..7 {
        emu.import_pair(
            "rp",
            "alice",
            &format!("list-at-{i}"),
            &format!("list-rt-{i}"),
        )
        .await
        .ok("A109001");
    }
    emu.import_pair("rp", "bob", "list-at-bob", "list-rt-bob")
        .await
        .ok("A109001");
    emu.import_pair("other", "alice", "list-at-x", "list-rt-x")
        .await
        .ok("A109001");

    let page = emu
        .get(V3, "/auth/token/get/list?clientIdentifier=rp&subject=alice")
        .await
        .ok("A111001");
    assert_eq!(page.body["totalCount"], json!(7));
    assert_eq!(page.body["start"], json!(0));
    assert_eq!(page.body["end"], json!(5));
    assert_eq!(page.body["client"]["clientId"], json!(client_id));
    assert_eq!(page.body["subject"], json!("alice"));
    let entries = page.body["accessTokens"].as_array().expect("entries");
    assert_eq!(entries.len(), 5);
    assert_eq!(
        entries[0]["accessTokenHash"],
        json!(token_hash("list-at-0"))
    );
    assert_eq!(
        entries[0]["refreshTokenHash"],
        json!(token_hash("list-rt-0"))
    );
    assert_eq!(
        entries[0]["accessTokenHash"].as_str().map(str::len),
        Some(43)
    );
    for key in [
        "clientId",
        "subject",
        "grantType",
        "scopes",
        "accessTokenExpiresAt",
        "refreshTokenExpiresAt",
        "createdAt",
        "lastRefreshedAt",
    ] {
        assert!(!entries[0][key].is_null(), "{key} missing");
    }
    let text = page.body.to_string();
    assert!(
        !text.contains("list-at-") && !text.contains("list-rt-"),
        "raw values leaked"
    );

    let rest = emu
        .get(
            V2,
            &format!("/auth/token/get/list?clientIdentifier={client_id}&start=5&end=50"),
        )
        .await
        .ok("A111001");
    assert_eq!(rest.body["totalCount"], json!(8));
    assert_eq!(rest.body["accessTokens"].as_array().map(Vec::len), Some(3));
    let all = emu
        .get(V3, "/auth/token/get/list?end=100")
        .await
        .ok("A111001");
    assert_eq!(all.body["totalCount"], json!(9));
    let unknown = emu
        .get(V3, "/auth/token/get/list?clientIdentifier=ghost")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // The state dump shows hashes only as well.
    let dump = emu
        .control(Method::GET, "/_emulator/state?dataset=tokens", None)
        .await;
    assert_eq!(dump.status, StatusCode::OK);
    assert_eq!(dump.body["tokens"].as_array().map(Vec::len), Some(9));
    assert!(!dump.body.to_string().contains("list-at-"));
}

#[tokio::test]
async fn client_delete_removes_its_tokens() {
    let emu = start(config()).await;
    let (client_id, _) = emu.confidential_client("doomed").await;
    emu.confidential_client("survivor").await;
    emu.import_pair("doomed", "alice", "d-at-1", "d-rt-1")
        .await
        .ok("A109001");
    emu.import_pair("doomed", "bob", "d-at-2", "d-rt-2")
        .await
        .ok("A109001");
    emu.import_pair("survivor", "alice", "s-at-1", "s-rt-1")
        .await
        .ok("A109001");

    let deleted = emu.delete(V3, &format!("/client/delete/{client_id}")).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(emu.authlete.token_count(), 1);
    emu.introspect("d-at-1").await.ok("A057302");
    emu.introspect("s-at-1").await.ok("A056001");
    assert!(emu.authlete.client_by_alias("doomed").is_none());
    assert_eq!(
        emu.delete(V3, &format!("/client/delete/{client_id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // The alias is free again.
    emu.confidential_client("doomed").await;
}

/// Polls a batch until it has a result, with a deadline.
async fn batch_result(emu: &Emulator, request_id: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = emu
            .get(V3, &format!("/auth/token/create/batch/status/{request_id}"))
            .await
            .ok("A447001");
        if !reply.body["status"]["result"].is_null() {
            return reply;
        }
        assert!(Instant::now() < deadline, "batch did not finish: {reply:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn batch_create_runs_in_background_and_stops_at_a_duplicate() {
    let emu = start(config()).await;
    emu.confidential_client("rp").await;
    let item = |i: u32| {
        json!({
            "grantType": "AUTHORIZATION_CODE", "clientIdentifier": "rp", "subject": format!("user-{i}"),
            "scopes": ["openid"], "accessToken": format!("b-at-{i}"), "refreshToken": format!("b-rt-{i}"),
        })
    };

    let accepted = emu
        .post(
            V3,
            "/auth/token/create/batch",
            &json!([item(1), item(2), item(3)]),
        )
        .await
        .ok("A482001");
    let request_id = accepted.str("requestId").to_owned();
    assert!(!request_id.is_empty());
    let done = batch_result(&emu, &request_id).await;
    let status = &done.body["status"];
    assert_eq!(status["batchKind"], json!("CREATE"));
    assert_eq!(status["requestId"], json!(request_id));
    assert_eq!(status["result"], json!("SUCCEEDED"));
    assert_eq!(status["tokenCount"], json!(3));
    assert!(status["createdAt"].as_i64().is_some() && status["modifiedAt"].as_i64().is_some());
    emu.introspect("b-at-2").await.ok("A056001");

    // A duplicate stops the batch there: FAILED, partially completed.
    let failing = emu
        .post(
            V3,
            "/auth/token/create/batch",
            &json!([item(4), item(2), item(5)]),
        )
        .await
        .ok("A482001");
    let failed = batch_result(&emu, failing.str("requestId")).await;
    let status = &failed.body["status"];
    assert_eq!(status["result"], json!("FAILED"));
    assert_eq!(status["tokenCount"], json!(1));
    assert_eq!(status["errorCode"], json!("A109208"));
    assert!(
        status["errorDescription"]
            .as_str()
            .expect("description")
            .contains("Item 1")
    );
    emu.introspect("b-at-4").await.ok("A056001");
    emu.introspect("b-at-5").await.ok("A057302");

    // Dry run: checked, counted, not stored (duplicates within it caught).
    let dry = emu
        .post(
            V3,
            "/auth/token/create/batch?dryRun=true",
            &json!([item(6), item(7)]),
        )
        .await
        .ok("A482001");
    let dry = batch_result(&emu, dry.str("requestId")).await;
    assert_eq!(dry.body["status"]["result"], json!("SUCCEEDED"));
    assert_eq!(dry.body["status"]["tokenCount"], json!(2));
    assert!(emu.authlete.token_by_access_token("b-at-6").is_none());
    let dry_dup = emu
        .post(
            V3,
            "/auth/token/create/batch?dryRun=true",
            &json!([item(8), item(8)]),
        )
        .await
        .ok("A482001");
    let dry_dup = batch_result(&emu, dry_dup.str("requestId")).await;
    assert_eq!(dry_dup.body["status"]["result"], json!("FAILED"));

    // Batch items must carry accessToken.
    let no_value = emu
        .post(
            V3,
            "/auth/token/create/batch",
            &json!([{"grantType": "PASSWORD", "clientIdentifier": "rp", "subject": "x"}]),
        )
        .await
        .ok("A482001");
    let no_value = batch_result(&emu, no_value.str("requestId")).await;
    assert_eq!(no_value.body["status"]["errorCode"], json!("A482202"));

    // v2 has no batch API; unknown ids and non-arrays are errors.
    let v2 = emu
        .post(V2, "/auth/token/create/batch", &json!([item(9)]))
        .await;
    assert_eq!(v2.status, StatusCode::NOT_FOUND);
    assert!(v2.str("resultMessage").contains("v3"));
    let unknown = emu.get(V3, "/auth/token/create/batch/status/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let not_array = emu.post(V3, "/auth/token/create/batch", &item(9)).await;
    assert_eq!(not_array.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn introspecting_an_expired_access_token_deletes_it() {
    let emu = start(config()).await;
    let (_, secret) = emu.confidential_client("rp").await;
    emu.import_pair("rp", "alice", "exp-at", "exp-rt")
        .await
        .ok("A109001");

    // Expire the access token (update takes epoch ms; 1 is long past).
    let updated = emu
        .post(
            V3,
            "/auth/token/update",
            &json!({"accessToken": "exp-at", "accessTokenExpiresAt": 1, "scopes": ["openid", "admin"],
                    "properties": [{"key": "k", "value": "v"}]}),
        )
        .await
        .ok("A135001");
    assert_eq!(updated.action(), "OK");
    assert_eq!(updated.body["accessTokenExpiresAt"], json!(1));
    assert_eq!(
        updated.body["scopes"],
        json!(["openid"]),
        "unsupported scope dropped"
    );
    assert_eq!(updated.body["properties"][0]["key"], json!("k"));

    let first = emu.introspect("exp-at").await.ok("A057303");
    assert_eq!(first.action(), "UNAUTHORIZED");
    assert_eq!(first.body["usable"], json!(false));
    let second = emu.introspect("exp-at").await.ok("A057302");
    assert_eq!(second.action(), "UNAUTHORIZED");
    assert!(emu.authlete.token_by_access_token("exp-at").is_none());
    // The refresh token was still valid: the pair lives on and refreshes.
    assert!(emu.authlete.token_by_refresh_token("exp-rt").is_some());
    emu.refresh("rp", &secret, "exp-rt").await.ok("A053001");

    // Without a live refresh token the whole pair goes.
    let cc = emu
        .post(
            V3,
            "/auth/token/create",
            &json!({"grantType": "CLIENT_CREDENTIALS", "clientIdentifier": "rp", "accessToken": "cc-at"}),
        )
        .await
        .ok("A109001");
    emu.post(
        V2,
        "/auth/token/update",
        &json!({"tokenId": cc.str("tokenId"), "accessTokenExpiresAt": 1}),
    )
    .await
    .ok("A135001");
    let before = emu.authlete.token_count();
    emu.introspect("cc-at").await.ok("A057303");
    assert_eq!(emu.authlete.token_count(), before - 1);

    let missing = emu
        .post(V3, "/auth/token/update", &json!({"accessToken": "nope"}))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.action(), "NOT_FOUND");
}

#[tokio::test]
async fn single_access_token_per_subject_replaces_older_tokens() {
    let emu = start(Config {
        single_access_token_per_subject: true,
        ..config()
    })
    .await;
    emu.confidential_client("rp").await;
    emu.confidential_client("other").await;
    emu.import_pair("rp", "alice", "s-at-1", "s-rt-1")
        .await
        .ok("A109001");
    emu.import_pair("other", "alice", "s-at-x", "s-rt-x")
        .await
        .ok("A109001");
    emu.import_pair("rp", "bob", "s-at-b", "s-rt-b")
        .await
        .ok("A109001");
    emu.import_pair("rp", "alice", "s-at-2", "s-rt-2")
        .await
        .ok("A109001");

    emu.introspect("s-at-1").await.ok("A057302");
    emu.introspect("s-at-2").await.ok("A056001");
    emu.introspect("s-at-x").await.ok("A056001");
    emu.introspect("s-at-b").await.ok("A056001");
    assert_eq!(emu.authlete.token_count(), 3);
}

#[tokio::test]
async fn knobs_play_down_latency_and_errors() {
    let emu = start(config()).await;

    // The controls need the v3 token.
    let anonymous = emu
        .send(Method::GET, "/_emulator/knobs", None, None, Bytes::new())
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Errors: 500 with the server-error envelope.
    let set = emu
        .control(
            Method::PUT,
            "/_emulator/knobs",
            Some(&json!({"error_rate": 1.0})),
        )
        .await;
    assert_eq!(set.body["error_rate"], json!(1.0));
    let failed = emu.get(V3, "/service/get").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.code(), "A001101");
    emu.control(
        Method::PUT,
        "/_emulator/knobs",
        Some(&json!({"error_rate": 0.0})),
    )
    .await;
    emu.get(V3, "/service/get").await.ok("A126001");

    // Down: connections dropped, controls still answer.
    emu.control(
        Method::PUT,
        "/_emulator/knobs",
        Some(&json!({"down": true})),
    )
    .await;
    let path = emu.path(V3, "/service/get");
    let dropped = emu
        .try_send(Method::GET, &path, Some(&emu.bearer()), None, Bytes::new())
        .await;
    assert!(
        dropped.is_err(),
        "down must drop the connection: {dropped:?}"
    );
    let state = emu.control(Method::GET, "/_emulator/state", None).await;
    assert_eq!(state.status, StatusCode::OK);
    assert_eq!(state.body["tokens"], json!(0));
    let knobs = emu.control(Method::GET, "/_emulator/knobs", None).await;
    assert_eq!(knobs.body["down"], json!(true));
    emu.control(
        Method::PUT,
        "/_emulator/knobs",
        Some(&json!({"down": false})),
    )
    .await;
    emu.get(V3, "/service/get").await.ok("A126001");

    // Latency: added before the answer.
    emu.authlete.knobs().set_latency(Duration::from_millis(150));
    let started = Instant::now();
    emu.get(V2, "/service/get").await.ok("A126001");
    assert!(started.elapsed() >= Duration::from_millis(150));
    emu.authlete.knobs().set_latency(Duration::ZERO);

    let bad = emu
        .control(Method::PUT, "/_emulator/knobs", Some(&json!({"speed": 1})))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    emu.handle.shutdown().await;
}

#[tokio::test]
async fn standalone_run_reports_bind_failures_and_stops_on_shutdown() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let busy = run(Options::new(addr, "token"), CancellationToken::new()).await;
    assert!(
        matches!(busy, Err(Error::Bind { addr: a, .. }) if a == addr),
        "{busy:?}"
    );

    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let options = Options::new("127.0.0.1:0".parse().expect("addr"), "token");
    tokio::time::timeout(Duration::from_secs(10), run(options, shutdown))
        .await
        .expect("run returns after shutdown")
        .expect("run succeeded");
}
