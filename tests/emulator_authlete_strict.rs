//! The Authlete emulator's strictness switches, black-box over HTTP: for
//! each switch, the lenient reading (the default, what the product was
//! written against) and the strict one (what Authlete documents, or the
//! most hostile reading where it is silent), through v2 and v3 where the
//! versions differ. The switch table is in
//! `src/emulator/authlete/strictness.rs`.
// `full_client`'s literal is deeper than `json!`'s default recursion.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use handover::emulator::authlete::{
    ClientUpdate, Config, DuplicateToken, RateLimit, Strictness, Switch, token_hash,
};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::authlete::{Emulator, Reply, Version, config, form, start};

const V2: Version = Version::V2;
const V3: Version = Version::V3;

// ---- harness -------------------------------------------------------------

/// The test config with this reading.
fn with(strictness: Strictness) -> Config {
    Config {
        strictness,
        ..config()
    }
}

/// The lenient reading with one switch strict.
fn only(switch: Switch) -> Config {
    let mut strictness = Strictness::lenient();
    strictness.set(switch, true);
    with(strictness)
}

/// Both readings of one switch, lenient first. Neither depends on which
/// reading `Config::default()` picks.
fn both(switch: Switch) -> [(bool, Config); 2] {
    [(false, with(Strictness::lenient())), (true, only(switch))]
}

/// Basic credentials of the service owner.
fn owner(emu: &Emulator) -> String {
    let config = emu.authlete.config();
    let pair = format!("{}:{}", config.owner_api_key, config.owner_api_secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Credentials of a version.
fn auth(emu: &Emulator, version: Version) -> String {
    match version {
        V2 => emu.basic(),
        V3 => emu.bearer(),
    }
}

/// Sends a request with these credentials; the JSON body if any.
async fn call(
    emu: &Emulator,
    method: Method,
    path: &str,
    authorization: &str,
    body: Option<&Value>,
) -> Reply {
    let (content_type, bytes) = match body {
        Some(body) => (Some("application/json"), Bytes::from(body.to_string())),
        None => (None, Bytes::new()),
    };
    emu.send(method, path, Some(authorization), content_type, bytes)
        .await
}

/// `GET base + path` with headers kept (the harness drops them).
async fn get_with_headers(
    base: &str,
    path: &str,
    authorization: &str,
) -> (StatusCode, HeaderMap, Value) {
    request(base, Method::GET, path, authorization, None).await
}

/// Any request to `base + path`, JSON in and out, headers kept.
async fn request(
    base: &str,
    method: Method,
    path: &str,
    authorization: &str,
    body: Option<&Value>,
) -> (StatusCode, HeaderMap, Value) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(header::AUTHORIZATION, authorization);
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let bytes = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
    let request = builder.body(Full::new(bytes)).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answered within 10 s")
        .expect("connected");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

/// A confidential client with an alias (enabled, for v2), created through
/// `version`: `(numeric id, secret)`.
async fn client_in(emu: &Emulator, version: Version, alias: &str, extra: Value) -> (u64, String) {
    let mut body = json!({
        "clientName": alias,
        "clientIdAlias": alias,
        "clientIdAliasEnabled": true,
        "clientType": "CONFIDENTIAL",
        "grantTypes": ["AUTHORIZATION_CODE", "REFRESH_TOKEN", "CLIENT_CREDENTIALS"],
        "redirectUris": ["https://rp.example.com/cb"],
        "tokenAuthMethod": "CLIENT_SECRET_BASIC",
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let created = emu.create_client(version, body).await;
    (
        created["clientId"].as_u64().expect("numeric clientId"),
        created["clientSecret"].as_str().expect("secret").to_owned(),
    )
}

/// `/auth/token/create` through `version`: v2 names the client by numeric
/// id, v3 by alias.
async fn create_token(
    emu: &Emulator,
    version: Version,
    client: (u64, &str),
    subject: &str,
    access_token: &str,
    refresh_token: Option<&str>,
) -> Reply {
    let mut body = json!({
        "grantType": "AUTHORIZATION_CODE",
        "subject": subject,
        "scopes": ["openid"],
        "accessToken": access_token,
    });
    match version {
        V2 => body["clientId"] = json!(client.0),
        V3 => body["clientIdentifier"] = json!(client.1),
    }
    if let Some(refresh_token) = refresh_token {
        body["refreshToken"] = json!(refresh_token);
    }
    emu.post(version, "/auth/token/create", &body).await
}

/// Whether the emulator still holds a pair for this access token, read
/// in-process so that the look does not count as a use.
fn holds(emu: &Emulator, access_token: &str) -> bool {
    emu.authlete.token_by_access_token(access_token).is_some()
}

// ---- 1. paths ----------------------------------------------------------------

#[tokio::test]
async fn undocumented_paths_and_methods_answer_404_or_405_only_when_strict() {
    for (strict, config) in both(Switch::Paths) {
        let emu = start(config).await;
        let api_key = emu.authlete.config().api_key.clone();
        let (id, _) = client_in(&emu, V3, "rp", json!({})).await;
        let expect = |lenient: StatusCode| {
            if strict {
                StatusCode::NOT_FOUND
            } else {
                lenient
            }
        };

        // v2 `service/get` is `/api/service/get/{apiKey}`.
        let bare = emu.get(V2, "/service/get").await;
        assert_eq!(bare.status, expect(StatusCode::OK), "{strict} {bare:?}");
        emu.get(V2, &format!("/service/get/{api_key}"))
            .await
            .ok("A126001");
        let wrong_key = emu.get(V2, "/service/get/123").await;
        assert_eq!(wrong_key.status, StatusCode::NOT_FOUND);
        assert_eq!(wrong_key.code(), "A126301");
        // v3 `service/get` has the id in the prefix, and no key after it.
        emu.get(V3, "/service/get").await.ok("A126001");
        let keyed = emu.get(V3, &format!("/service/get/{api_key}")).await;
        assert_eq!(keyed.status, expect(StatusCode::OK), "{strict} {keyed:?}");
        // The service list has no service id in either version.
        let scoped_list = emu.get(V3, "/service/get/list").await;
        assert_eq!(
            scoped_list.status,
            expect(StatusCode::OK),
            "{scoped_list:?}"
        );
        call(
            &emu,
            Method::GET,
            "/api/service/get/list",
            &emu.bearer(),
            None,
        )
        .await
        .ok("A127001");

        // One documented method per API.
        let method = |lenient: StatusCode| {
            if strict {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                lenient
            }
        };
        for version in [V2, V3] {
            let path = emu.path(version, &format!("/client/update/{id}"));
            let put = call(
                &emu,
                Method::PUT,
                &path,
                &auth(&emu, version),
                Some(&json!({"clientName": "put"})),
            )
            .await;
            assert_eq!(put.status, method(StatusCode::OK), "{version:?} {put:?}");
            let path = emu.path(version, &format!("/client/secret/refresh/{id}"));
            let post = call(&emu, Method::POST, &path, &auth(&emu, version), None).await;
            assert_eq!(post.status, method(StatusCode::OK), "{version:?} {post:?}");
            emu.get(version, &format!("/client/secret/refresh/{id}"))
                .await
                .ok("A148001");
        }
        // The batch APIs are v3-only in both readings.
        let batch = emu.post(V2, "/auth/token/create/batch", &json!([])).await;
        assert_eq!(batch.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn v2_service_apis_take_only_the_owner_credentials_when_strict() {
    for (strict, config) in both(Switch::OwnerCredentials) {
        let emu = start(config).await;
        let api_key = emu.authlete.config().api_key.clone();
        let get = format!("/api/service/get/{api_key}");
        for path in [get.as_str(), "/api/service/get/list"] {
            let as_owner = call(&emu, Method::GET, path, &owner(&emu), None).await;
            assert_eq!(as_owner.status, StatusCode::OK, "{path} {as_owner:?}");
            let as_service = call(&emu, Method::GET, path, &emu.basic(), None).await;
            if strict {
                assert_eq!(as_service.status, StatusCode::UNAUTHORIZED, "{path}");
                assert_eq!(as_service.code(), "A001203");
            } else {
                assert_eq!(as_service.status, StatusCode::OK, "{path} {as_service:?}");
            }
        }
        // Everything else keeps the service's own credentials; v3 is
        // unchanged.
        let others = call(
            &emu,
            Method::GET,
            "/api/client/get/list",
            &owner(&emu),
            None,
        )
        .await;
        assert_eq!(others.status, StatusCode::UNAUTHORIZED);
        emu.get(V2, "/client/get/list").await.ok("A125001");
        emu.get(V3, "/service/get").await.ok("A126001");
    }
}

// ---- 2. aliases ----------------------------------------------------------------

#[tokio::test]
async fn client_aliases_work_only_where_documented_when_strict() {
    for (strict, config) in both(Switch::Aliases) {
        for version in [V2, V3] {
            let emu = start(config.clone()).await;
            let (id, _) = client_in(&emu, version, "rp", json!({})).await;

            // Get (and delete, below) take an alias only when lenient:
            // both are documented with "a client ID".
            let got = emu.get(version, "/client/get/rp").await;
            if strict {
                assert_eq!(got.status, StatusCode::NOT_FOUND, "{version:?}");
                assert_eq!(got.code(), "A122301");
            } else {
                assert_eq!(got.ok("A122001").body["clientId"], json!(id));
            }
            let got = emu
                .get(version, &format!("/client/get/{id}"))
                .await
                .ok("A122001");
            assert_eq!(got.body["clientIdAlias"], "rp");

            // Update takes the numeric id only.
            let by_alias = emu
                .post(version, "/client/update/rp", &json!({"clientName": "x"}))
                .await;
            if strict {
                assert_eq!(by_alias.status, StatusCode::NOT_FOUND, "{version:?}");
                assert_eq!(by_alias.code(), "A122301");
            } else {
                by_alias.ok("A123001");
            }
            emu.post(
                version,
                &format!("/client/update/{id}"),
                &json!({"clientName": "y"}),
            )
            .await
            .ok("A123001");

            // Token creation: `clientId` is numeric (v2 always); only v3's
            // `clientIdentifier` takes an alias.
            let alias_as_id = emu
                .post(
                    version,
                    "/auth/token/create",
                    &json!({"grantType": "PASSWORD", "subject": "alice", "clientId": "rp"}),
                )
                .await;
            if strict || version == V2 {
                assert_eq!(alias_as_id.status, StatusCode::BAD_REQUEST, "{version:?}");
                assert_eq!(alias_as_id.code(), "A109211");
            } else {
                alias_as_id.ok("A109001");
            }
            if version == V3 {
                emu.post(
                    V3,
                    "/auth/token/create",
                    &json!({"grantType": "PASSWORD", "subject": "alice", "clientIdentifier": "rp"}),
                )
                .await
                .ok("A109001");
            }
            // Revoke and list name the client by `clientIdentifier`.
            emu.post(
                version,
                "/auth/token/revoke",
                &json!({"clientIdentifier": "rp"}),
            )
            .await
            .ok("A312001");
            emu.get(version, "/auth/token/get/list?clientIdentifier=rp")
                .await
                .ok("A111001");
            let by_alias = emu.delete(version, "/client/delete/rp").await.status;
            if strict {
                assert_eq!(by_alias, StatusCode::NOT_FOUND, "{version:?}");
                assert_eq!(
                    emu.delete(version, &format!("/client/delete/{id}"))
                        .await
                        .status,
                    StatusCode::NO_CONTENT
                );
            } else {
                assert_eq!(by_alias, StatusCode::NO_CONTENT);
            }
        }
    }
}

// ---- 3. client/update ----------------------------------------------------------

#[tokio::test]
async fn a_partial_client_update_keeps_omitted_fields_when_lenient_and_wipes_them_when_strict() {
    for (strict, config) in both(Switch::ReplaceUpdate) {
        for version in [V2, V3] {
            let emu = start(config.clone()).await;
            let settings = json!({
                "jwks": "{\"keys\":[]}",
                "tokenAuthSignAlg": "ES256",
                "dpopRequired": true,
                "extension": {"accessTokenDuration": 600},
            });
            let (id, _) = client_in(&emu, version, "rp", settings.clone()).await;

            let updated = emu
                .post(
                    version,
                    &format!("/client/update/{id}"),
                    &json!({"clientName": "Renamed"}),
                )
                .await
                .ok("A123001");
            assert_eq!(updated.body["clientName"], "Renamed");
            let read = emu
                .get(version, &format!("/client/get/{id}"))
                .await
                .ok("A122001");
            let alias_lookup = emu.get(version, "/client/get/rp").await;
            if strict {
                for name in ["jwks", "tokenAuthSignAlg", "dpopRequired", "extension"] {
                    assert!(
                        read.body.get(name).is_none(),
                        "{version:?} {name}: {read:?}"
                    );
                }
                assert_eq!(read.body["redirectUris"], json!([]));
                assert!(read.body.get("tokenAuthMethod").is_none());
                assert!(read.body.get("clientType").is_none());
                // The alias is reset too: v3 to the numeric id, v2 to none.
                match version {
                    V3 => assert_eq!(read.body["clientIdAlias"], json!(id.to_string())),
                    V2 => assert!(read.body.get("clientIdAlias").is_none(), "{read:?}"),
                }
                assert_eq!(alias_lookup.status, StatusCode::NOT_FOUND);
            } else {
                for name in ["jwks", "tokenAuthSignAlg", "dpopRequired", "extension"] {
                    assert_eq!(read.body[name], settings[name], "{version:?} {name}");
                }
                assert_eq!(
                    read.body["redirectUris"],
                    json!(["https://rp.example.com/cb"])
                );
                assert_eq!(read.body["clientIdAlias"], "rp");
                alias_lookup.ok("A122001");
            }

            // Read-modify-write keeps everything under both readings.
            let mut whole = read.body.clone();
            whole["jwks"] = json!("{\"keys\":[{\"kty\":\"OKP\"}]}");
            whole["clientIdAlias"] = json!("rp2");
            emu.post(version, &format!("/client/update/{id}"), &whole)
                .await
                .ok("A123001");
            let again = emu
                .get(version, &format!("/client/get/{id}"))
                .await
                .ok("A122001");
            assert_eq!(again.body["clientName"], "Renamed");
            assert_eq!(again.body["redirectUris"], read.body["redirectUris"]);
            assert_eq!(again.body["jwks"], whole["jwks"]);
            assert_eq!(again.body["clientIdAlias"], "rp2");
        }
    }
    assert_eq!(
        Strictness::real().client_update,
        ClientUpdate::Replace,
        "the real preset replaces"
    );
}

// ---- 4. rate limit -----------------------------------------------------------------

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after_and_a_client_that_waits_gets_through() {
    let limit = RateLimit {
        requests: 3,
        per: Duration::from_secs(2),
    };
    let emu = start(with(Strictness {
        rate_limit: Some(limit),
        ..Strictness::lenient()
    }))
    .await;
    let base = emu.handle.url();
    // The quota counts v2 and v3 alike.
    for version in [V2, V3, V2] {
        let path = emu.path(version, "/client/get/list");
        let (status, _, _) = get_with_headers(&base, &path, &auth(&emu, version)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let path = emu.path(V3, "/client/get/list");
    let (status, headers, body) = get_with_headers(&base, &path, &emu.bearer()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["resultCode"], "A001209");
    let retry_after: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let wait = Duration::from_secs(retry_after);

    // An impatient retry is refused again; one that waited gets through.
    let (status, _, _) = get_with_headers(&base, &path, &emu.bearer()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(wait).await;
    let (status, _, _) = get_with_headers(&base, &path, &emu.bearer()).await;
    assert_eq!(status, StatusCode::OK);

    // The arrival log tells the two retries apart.
    let arrivals = emu.authlete.arrivals();
    let statuses: Vec<u16> = arrivals
        .iter()
        .map(|a| a.status.map_or(0, |s| s.as_u16()))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 200]);
    assert_eq!(arrivals[3].retry_after, Some(wait));
    let waited = |refused: usize| {
        arrivals[refused + 1]
            .at
            .duration_since(arrivals[refused].at)
    };
    let honours = |refused: usize| {
        arrivals[refused]
            .retry_after
            .is_some_and(|retry| waited(refused) >= retry)
    };
    assert!(!honours(3), "the impatient retry came at once");
    assert!(honours(4), "the last retry waited Retry-After");
}

#[tokio::test]
async fn without_a_rate_limit_nothing_is_refused_and_arrivals_are_still_logged() {
    let emu = start(with(Strictness::lenient())).await;
    for _ in 0..30 {
        emu.get(V3, "/client/get/list").await.ok("A125001");
    }
    let no_api = emu.get(V3, "/auth/token/delete-not/at-secret").await;
    assert_eq!(no_api.status, StatusCode::NOT_FOUND);
    emu.delete(V3, "/auth/token/delete/at-secret").await;
    let arrivals = emu.authlete.arrivals();
    assert_eq!(arrivals.len(), 32);
    assert!(arrivals.iter().all(|a| a.retry_after.is_none()));
    // Token values in paths stay out of the log.
    let last = arrivals.last().unwrap();
    assert!(
        last.path.ends_with("/auth/token/delete/{token}"),
        "{last:?}"
    );
    assert!(Strictness::real().rate_limit.is_some());
}

// ---- 5. sweep of unused tokens -----------------------------------------------------

#[tokio::test]
async fn tokens_unused_for_the_sweep_duration_are_deleted_and_use_keeps_them() {
    let sweep = Duration::from_secs(1);
    for strict in [false, true] {
        let emu = start(with(Strictness {
            sweep_unused_after: strict.then_some(sweep),
            ..Strictness::lenient()
        }))
        .await;
        let (id, secret) = client_in(&emu, V3, "rp", json!({})).await;
        create_token(&emu, V3, (id, "rp"), "alice", "at-used", Some("rt-used"))
            .await
            .ok("A109001");
        let created = Instant::now();
        create_token(&emu, V2, (id, "rp"), "bob", "at-idle", Some("rt-idle"))
            .await
            .ok("A109001");

        // Use one pair every 100 ms (introspection, alternately v2 and v3,
        // and standard introspection of its refresh token) until the other
        // is gone, or 2.5 sweep durations passed.
        let deadline = created + sweep * 5 / 2;
        let mut round = 0;
        while holds(&emu, "at-idle") && Instant::now() < deadline {
            let version = if round % 2 == 0 { V2 } else { V3 };
            emu.introspect_in(version, "at-used").await.ok("A056001");
            emu.introspect_refresh_in(version, "rt-used").await;
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let idle_for = created.elapsed();
        assert!(holds(&emu, "at-used"), "{strict}: the used pair survives");
        emu.introspect("at-used").await.ok("A056001");
        if strict {
            assert!(!holds(&emu, "at-idle"), "swept within {idle_for:?}");
            // (The emulator's clock counts whole milliseconds.)
            let early = Duration::from_millis(5);
            assert!(
                idle_for + early >= sweep,
                "not before its time: {idle_for:?}"
            );
            // Gone for every API: "does not exist", and its refresh
            // token no longer refreshes.
            for version in [V2, V3] {
                let gone = emu.introspect_in(version, "at-idle").await;
                assert_eq!(gone.action(), "UNAUTHORIZED");
                assert_eq!(gone.code(), "A057302");
                let refresh = emu
                    .refresh_in(version, &id.to_string(), &secret, "rt-idle")
                    .await;
                assert_eq!(refresh.content()["error"], "invalid_grant");
            }
            assert!(emu.authlete.token_by_refresh_token("rt-idle").is_none());
        } else {
            assert!(holds(&emu, "at-idle"), "the lenient reading never sweeps");
            emu.introspect_in(V2, "at-idle").await.ok("A056001");
        }
    }
}

// ---- 6. duplicate token values --------------------------------------------------------

#[tokio::test]
async fn a_duplicate_token_gets_an_invented_code_when_lenient_and_a_generic_server_error_when_strict()
 {
    for (strict, config) in both(Switch::ResultCodes) {
        for version in [V2, V3] {
            let emu = start(config.clone()).await;
            let (id, _) = client_in(&emu, version, "rp", json!({})).await;
            create_token(&emu, version, (id, "rp"), "alice", "at-1", Some("rt-1"))
                .await
                .ok("A109001");
            for (at, rt, invented) in [("at-1", "rt-2", "A109208"), ("at-2", "rt-1", "A109209")] {
                let dup = create_token(&emu, version, (id, "rp"), "alice", at, Some(rt)).await;
                let message = dup.str("resultMessage").to_ascii_lowercase();
                if strict {
                    assert_eq!(dup.status, StatusCode::INTERNAL_SERVER_ERROR, "{dup:?}");
                    assert_eq!(dup.code(), "A001101");
                    assert_eq!(dup.action(), "INTERNAL_SERVER_ERROR");
                    assert!(
                        !message.contains("exist"),
                        "nothing says duplicate: {message}"
                    );
                } else {
                    assert_eq!(dup.status, StatusCode::BAD_REQUEST);
                    assert_eq!(dup.code(), invented);
                    assert_eq!(dup.action(), "BAD_REQUEST");
                    assert!(message.contains("already exists"), "{message}");
                }
            }
            // What a client can rely on in either reading: the value is
            // held, as introspection confirms, and nothing was upserted.
            emu.introspect_in(version, "at-1").await.ok("A056001");
            let refresh = emu.introspect_refresh_in(version, "rt-1").await;
            assert_eq!(refresh["active"], true);
            assert_eq!(emu.authlete.token_count(), 1);
        }

        // A batch stops at the duplicate with the same code.
        let emu = start(config).await;
        client_in(&emu, V3, "rp", json!({})).await;
        let item = |at: &str| json!({"grantType": "PASSWORD", "clientIdentifier": "rp", "subject": "s", "accessToken": at});
        let accepted = emu
            .post(
                V3,
                "/auth/token/create/batch",
                &json!([item("b-1"), item("b-1")]),
            )
            .await
            .ok("A482001");
        let status = batch_result(&emu, accepted.str("requestId")).await;
        assert_eq!(status.body["status"]["result"], "FAILED");
        let expected = if strict { "A001101" } else { "A109208" };
        assert_eq!(status.body["status"]["errorCode"], expected);
    }
    assert_eq!(
        Strictness::real().duplicate_token,
        DuplicateToken::ServerError
    );
}

/// Polls a batch until it has a result, with a deadline. A strict batch
/// stays in progress for a second, so the looks are spaced (and a 429 of
/// the real preset's rate limit is one more look).
async fn batch_result(emu: &Emulator, request_id: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = emu
            .get(V3, &format!("/auth/token/create/batch/status/{request_id}"))
            .await;
        if reply.status != StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.status.is_success(), "unexpected {reply:?}");
            assert_eq!(reply.code(), "A447001", "unexpected {reply:?}");
            if !reply.body["status"]["result"].is_null() {
                return reply;
            }
        }
        assert!(Instant::now() < deadline, "batch did not finish: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- 6b. the batch's time in progress -------------------------------------

#[tokio::test]
async fn a_batch_runs_at_once_when_lenient_and_stays_in_progress_without_result_or_tokens_when_strict()
 {
    for (strict, config) in both(Switch::SlowBatch) {
        let emu = start(config).await;
        client_in(&emu, V3, "rp", json!({})).await;
        let item = |at: &str| json!({"grantType": "PASSWORD", "clientIdentifier": "rp", "subject": "s", "accessToken": at});
        let accepted = emu
            .post(
                V3,
                "/auth/token/create/batch",
                &json!([item("slow-1"), item("slow-2")]),
            )
            .await
            .ok("A482001");
        let request_id = accepted.str("requestId").to_owned();
        if strict {
            // Well within the second the batch stays in progress: no
            // `result` key at all (not null), nothing counted, no token.
            let running = emu
                .get(V3, &format!("/auth/token/create/batch/status/{request_id}"))
                .await
                .ok("A447001");
            let status = running.body["status"].as_object().unwrap();
            assert!(!status.contains_key("result"), "{running:?}");
            assert_eq!(status["tokenCount"], 0, "{running:?}");
            assert_eq!(status["requestId"], request_id.as_str());
            assert_eq!(emu.authlete.token_count(), 0, "no token before the result");
            let unknown = emu.introspect_in(V3, "slow-1").await;
            assert_eq!(unknown.code(), "A057302", "{unknown:?}");
        }
        let done = batch_result(&emu, &request_id).await;
        assert_eq!(
            done.body["status"]["result"], "SUCCEEDED",
            "strict: {strict}"
        );
        assert_eq!(done.body["status"]["tokenCount"], 2);
        assert_eq!(emu.authlete.token_count(), 2);
        emu.introspect_in(V3, "slow-2").await.ok("A056001");
    }
    assert_eq!(
        Strictness::real().batch_duration,
        Some(handover::emulator::authlete::REAL_BATCH_DURATION)
    );
}

// ---- 7. client-level singleAccessTokenPerSubject -------------------------------------

#[tokio::test]
async fn the_clients_single_access_token_per_subject_revokes_older_tokens_only_when_strict() {
    for (strict, config) in both(Switch::ClientSingleToken) {
        for version in [V2, V3] {
            let emu = start(config.clone()).await;
            assert!(!emu.authlete.config().single_access_token_per_subject);
            let single = client_in(
                &emu,
                version,
                "single",
                json!({"singleAccessTokenPerSubject": true}),
            )
            .await
            .0;
            let plain = client_in(&emu, version, "plain", json!({})).await.0;
            let copy = emu.authlete.client(single).unwrap();
            assert!(copy.single_access_token_per_subject());

            create_token(
                &emu,
                version,
                (single, "single"),
                "alice",
                "a-1",
                Some("r-1"),
            )
            .await
            .ok("A109001");
            create_token(&emu, version, (single, "single"), "bob", "b-1", None)
                .await
                .ok("A109001");
            create_token(&emu, version, (plain, "plain"), "alice", "p-1", None)
                .await
                .ok("A109001");
            create_token(&emu, version, (plain, "plain"), "alice", "p-2", None)
                .await
                .ok("A109001");
            let mut cc = json!({"grantType": "CLIENT_CREDENTIALS", "accessToken": "cc-1"});
            match version {
                V2 => cc["clientId"] = json!(single),
                V3 => cc["clientIdentifier"] = json!("single"),
            }
            emu.post(version, "/auth/token/create", &cc)
                .await
                .ok("A109001");
            create_token(&emu, version, (single, "single"), "alice", "a-2", None)
                .await
                .ok("A109001");

            assert_eq!(holds(&emu, "a-1"), !strict, "{version:?}");
            assert!(
                emu.authlete.token_by_refresh_token("r-1").is_some() != strict,
                "the pair goes with its access token"
            );
            for kept in ["a-2", "b-1", "p-1", "p-2", "cc-1"] {
                assert!(holds(&emu, kept), "{version:?} {kept}");
            }
        }
    }
}

// ---- 8. client metadata ----------------------------------------------------------------

/// A client using every field a faithful Connect2id mapping needs, under
/// Authlete's names and types.
fn full_client() -> Value {
    json!({
        "clientName": "Full",
        "clientIdAlias": "full",
        "clientIdAliasEnabled": true,
        "clientType": "CONFIDENTIAL",
        "applicationType": "WEB",
        "grantTypes": ["AUTHORIZATION_CODE", "REFRESH_TOKEN"],
        "responseTypes": ["CODE"],
        "redirectUris": ["https://rp.example.com/cb"],
        "tokenAuthMethod": "PRIVATE_KEY_JWT",
        "tokenAuthSignAlg": "PS256",
        "jwks": "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"x\",\"y\":\"y\"}]}",
        "jwksUri": "https://rp.example.com/jwks.json",
        "tlsClientAuthSubjectDn": "CN=rp.example.com,O=Example",
        "tlsClientAuthSanDns": "rp.example.com",
        "tlsClientAuthSanUri": "https://rp.example.com",
        "tlsClientAuthSanIp": "192.0.2.1",
        "tlsClientAuthSanEmail": "ops@rp.example.com",
        "tlsClientCertificateBoundAccessTokens": true,
        "selfSignedCertificateKeyId": "kid-1",
        "idTokenSignAlg": "ES256",
        "idTokenEncryptionAlg": "RSA_OAEP_256",
        "idTokenEncryptionEnc": "A128CBC_HS256",
        "userInfoSignAlg": "RS256",
        "requestSignAlg": "PS256",
        "authorizationSignAlg": "ES256",
        "dpopRequired": true,
        "parRequired": true,
        "requestObjectRequired": false,
        "pkceRequired": true,
        "subjectType": "PAIRWISE",
        "sectorIdentifierUri": "https://rp.example.com/sector.json",
        "defaultMaxAge": 3600,
        "defaultAcrs": ["urn:acr:1"],
        "authTimeRequired": true,
        "contacts": ["ops@rp.example.com"],
        "clientUri": "https://rp.example.com",
        "logoUri": "https://rp.example.com/logo.png",
        "tosUri": "https://rp.example.com/tos",
        "policyUri": "https://rp.example.com/policy",
        "clientNames": [{"tag": "de", "value": "Voll"}],
        "requestUris": ["https://rp.example.com/request.jwt"],
        "singleAccessTokenPerSubject": false,
        "extension": {"accessTokenDuration": 600, "refreshTokenDuration": 86400},
        "attributes": [{"key": "origin", "value": "c2id"}],
    })
}

#[tokio::test]
async fn every_documented_client_field_is_stored_and_returned_under_both_readings() {
    let wanted = full_client();
    for strictness in [Strictness::lenient(), Strictness::real()] {
        for version in [V2, V3] {
            let emu = start(with(strictness.clone())).await;
            let mut body = wanted.clone();
            // Names Authlete does not have are dropped, not stored.
            body["jwks_uri"] = json!("https://wrong.example.com");
            body["token_endpoint_auth_method"] = json!("private_key_jwt");
            let created = emu.create_client(version, body).await;
            let id = created["clientId"].as_u64().unwrap();
            for other in [V2, V3] {
                let read = emu
                    .get(other, &format!("/client/get/{id}"))
                    .await
                    .ok("A122001");
                for (name, value) in wanted.as_object().unwrap() {
                    assert_eq!(&read.body[name], value, "{version:?}/{other:?} {name}");
                }
                assert!(read.body.get("jwks_uri").is_none());
                assert!(read.body.get("token_endpoint_auth_method").is_none());
            }
            let listed = emu.get(version, "/client/get/list").await.ok("A125001");
            assert_eq!(
                listed.body["clients"][0]["tlsClientAuthSubjectDn"],
                wanted["tlsClientAuthSubjectDn"]
            );
        }
    }
}

#[tokio::test]
async fn client_metadata_is_kept_as_given_when_lenient_and_typed_when_strict() {
    let wrong = [
        ("jwks", json!({"keys": []}), "'jwks' must be a string"),
        (
            "tokenAuthMethod",
            json!("private_key_jwt"),
            "'tokenAuthMethod' must be one of",
        ),
        (
            "idTokenEncryptionAlg",
            json!("RSA-OAEP-256"),
            "must be one of",
        ),
        ("dpopRequired", json!("true"), "must be a boolean"),
        ("subjectType", json!("pairwise"), "PUBLIC, PAIRWISE"),
        (
            "responseTypes",
            json!(["code"]),
            "'responseTypes' must be one of",
        ),
    ];
    for (strict, config) in both(Switch::TypedClientMetadata) {
        let emu = start(config).await;
        let (id, _) = client_in(&emu, V3, "rp", json!({})).await;
        for (name, value, message) in &wrong {
            let body = Value::Object([((*name).to_owned(), value.clone())].into_iter().collect());
            for version in [V2, V3] {
                let create = emu.post(version, "/client/create", &body).await;
                let update = emu
                    .post(version, &format!("/client/update/{id}"), &body)
                    .await;
                for reply in [create, update] {
                    if strict {
                        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}: {reply:?}");
                        assert_eq!(reply.code(), "A121202");
                        assert!(reply.str("resultMessage").contains(message), "{reply:?}");
                    } else {
                        assert!(reply.status.is_success(), "{name}: {reply:?}");
                        assert_eq!(&reply.body[*name], value, "kept as given");
                    }
                }
            }
        }
    }
}

// ---- 9. revocation of one token vs all ---------------------------------------------------

#[tokio::test]
async fn revoking_by_value_removes_one_pair_and_by_subject_and_client_all_and_only_strict_ignores_extra_criteria()
 {
    for (strict, config) in both(Switch::RevokeOrder) {
        for version in [V2, V3] {
            let emu = start(config.clone()).await;
            let (c1, secret) = client_in(&emu, version, "c1", json!({})).await;
            let c2 = client_in(&emu, version, "c2", json!({})).await.0;
            for (at, rt) in [("a1", "r1"), ("a2", "r2"), ("a3", "r3"), ("a4", "r4")] {
                create_token(&emu, version, (c1, "c1"), "alice", at, Some(rt))
                    .await
                    .ok("A109001");
            }
            create_token(&emu, version, (c1, "c1"), "bob", "b1", None)
                .await
                .ok("A109001");
            create_token(&emu, version, (c2, "c2"), "alice", "x1", Some("y1"))
                .await
                .ok("A109001");
            let api = &emu;
            let revoke = |body: Value| async move {
                api.post(version, "/auth/token/revoke", &body)
                    .await
                    .ok("A312001")
                    .body["count"]
                    .as_u64()
                    .unwrap()
            };

            // One token by value (or hash) removes exactly its pair.
            assert_eq!(revoke(json!({"refreshTokenIdentifier": "r1"})).await, 1);
            assert!(!holds(&emu, "a1") && holds(&emu, "a2"));
            assert_eq!(
                revoke(json!({"accessTokenIdentifier": token_hash("a2")})).await,
                1
            );
            assert!(!holds(&emu, "a2") && holds(&emu, "a3"));
            // So do `/auth/token/delete` and RFC 7009 revocation.
            assert_eq!(
                emu.delete(version, "/auth/token/delete/a3").await.status,
                StatusCode::NO_CONTENT
            );
            emu.post(
                version,
                "/auth/revocation",
                &json!({
                    "clientId": c1.to_string(),
                    "clientSecret": secret,
                    "parameters": form(&[("token", "r4"), ("token_type_hint", "refresh_token")]),
                }),
            )
            .await
            .ok("A113001");
            assert!(!holds(&emu, "a3") && !holds(&emu, "a4") && holds(&emu, "b1"));

            // A client filter next to a token identifier guards it only
            // when criteria combine.
            let guarded =
                revoke(json!({"refreshTokenIdentifier": "y1", "clientIdentifier": "c1"})).await;
            assert_eq!(guarded, u64::from(strict), "{version:?}");
            assert_eq!(holds(&emu, "x1"), !strict);

            // Subject and client remove every pair of the grant, and only
            // those.
            for (at, rt) in [("a5", "r5"), ("a6", "r6")] {
                create_token(&emu, version, (c1, "c1"), "alice", at, Some(rt))
                    .await
                    .ok("A109001");
            }
            assert_eq!(
                revoke(json!({"clientIdentifier": "c1", "subject": "alice"})).await,
                2
            );
            assert!(holds(&emu, "b1"));
        }
    }
}

// ---- the real preset, end to end -----------------------------------------------------------

#[tokio::test]
async fn the_real_preset_serves_every_documented_api_the_product_needs() {
    for version in [V2, V3] {
        let emu = start(with(Strictness::real())).await;
        let api_key = emu.authlete.config().api_key.clone();
        let service = match version {
            V2 => {
                let path = format!("/api/service/get/{api_key}");
                call(&emu, Method::GET, &path, &owner(&emu), None).await
            }
            V3 => emu.get(V3, "/service/get").await,
        };
        service.ok("A126001");
        let (id, secret) = client_in(&emu, version, "rp", json!({})).await;
        assert_eq!(
            emu.get(version, "/client/get/rp").await.status,
            StatusCode::NOT_FOUND
        );
        emu.get(version, &format!("/client/get/{id}"))
            .await
            .ok("A122001");
        emu.get(version, "/client/get/list").await.ok("A125001");
        let mut whole = emu.get(version, &format!("/client/get/{id}")).await.body;
        whole["clientName"] = json!("Renamed");
        emu.post(version, &format!("/client/update/{id}"), &whole)
            .await
            .ok("A123001");
        emu.post(
            version,
            "/client/secret/update/rp",
            &json!({"clientSecret": secret}),
        )
        .await
        .ok("A149001");
        create_token(&emu, version, (id, "rp"), "alice", "at-1", Some("rt-1"))
            .await
            .ok("A109001");
        emu.post(
            version,
            "/auth/token/update",
            &json!({"accessToken": "at-1", "scopes": ["openid"]}),
        )
        .await
        .ok("A135001");
        emu.get(
            version,
            "/auth/token/get/list?clientIdentifier=rp&subject=alice",
        )
        .await
        .ok("A111001");
        emu.introspect_in(version, "at-1").await.ok("A056001");
        assert_eq!(
            emu.introspect_refresh_in(version, "rt-1").await["active"],
            true
        );
        let refreshed = emu
            .refresh_in(version, &id.to_string(), &secret, "rt-1")
            .await
            .ok("A053001");
        let new_rt = refreshed.str("refreshToken").to_owned();
        emu.post(
            version,
            "/auth/token/revoke",
            &json!({"refreshTokenIdentifier": new_rt}),
        )
        .await
        .ok("A312001");
        create_token(&emu, version, (id, "rp"), "alice", "at-2", None)
            .await
            .ok("A109001");
        assert_eq!(
            emu.delete(version, "/auth/token/delete/at-2").await.status,
            StatusCode::NO_CONTENT
        );
        if version == V3 {
            let accepted = emu
                .post(
                    V3,
                    "/auth/token/create/batch?dryRun=true",
                    &json!([{"grantType": "PASSWORD", "clientIdentifier": "rp", "subject": "s", "accessToken": "b-1"}]),
                )
                .await
                .ok("A482001");
            let status = batch_result(&emu, accepted.str("requestId")).await;
            assert_eq!(status.body["status"]["result"], "SUCCEEDED");
        }
        emu.get(version, &format!("/client/secret/refresh/{id}"))
            .await
            .ok("A148001");
        assert_eq!(
            emu.delete(version, &format!("/client/delete/{id}"))
                .await
                .status,
            StatusCode::NO_CONTENT
        );
    }
}

// ---- `handover emulate --kind authlete` flags -------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_handover");
const CLI_TOKEN: &str = "cli-token";

/// A standalone emulator process, killed when dropped.
struct Standalone {
    child: std::process::Child,
    base: String,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `handover emulate --kind authlete` with `flags` on a free port,
/// and waits (polling, with a deadline) until it accepts connections.
async fn emulate(flags: &[&str]) -> Standalone {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(BIN)
        .args(["emulate", "--kind", "authlete", "--listen", &listen])
        .args(["--api-token", CLI_TOKEN])
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let standalone = Standalone {
        child,
        base: format!("http://{listen}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "emulate did not listen on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    standalone
}

#[tokio::test]
async fn emulate_flags_pick_the_preset_and_override_single_switches() {
    let service_id = handover::emulator::authlete::DEFAULT_SERVICE_ID;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{service_id}:{CLI_TOKEN}"))
    );
    let bearer = format!("Bearer {CLI_TOKEN}");

    // Lenient preset, two switches strict.
    let one = emulate(&["--strict", "paths", "--rate-limit", "3/10s"]).await;
    let (bare, _, _) = get_with_headers(&one.base, "/api/service/get", &basic).await;
    assert_eq!(bare.as_u16(), 404, "paths strict");
    let keyed = format!("/api/service/get/{service_id}");
    let (service, _, _) = get_with_headers(&one.base, &keyed, &basic).await;
    assert_eq!(service.as_u16(), 200, "owner credentials still lenient");
    let (third, _, _) = get_with_headers(&one.base, &keyed, &basic).await;
    assert_eq!(third.as_u16(), 200);
    let (limited, headers, _) = get_with_headers(&one.base, &keyed, &basic).await;
    assert_eq!(limited, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key(header::RETRY_AFTER));
    drop(one);

    // Real preset, three switches back to lenient.
    let two = emulate(&[
        "--strictness",
        "real",
        "--lenient",
        "paths",
        "--lenient",
        "owner-credentials",
        "--lenient",
        "rate-limit",
    ])
    .await;
    for _ in 0..60 {
        let (bare, _, _) = get_with_headers(&two.base, "/api/service/get", &basic).await;
        assert_eq!(
            bare.as_u16(),
            200,
            "paths and owner credentials lenient, no cap"
        );
    }
    let v3 = |path: &str| format!("/api/{service_id}{path}");
    let (created, _, client) = request(
        &two.base,
        Method::POST,
        &v3("/client/create"),
        &bearer,
        Some(&json!({"clientIdAlias": "rp"})),
    )
    .await;
    assert_eq!(created.as_u16(), 200, "{client}");
    let token = json!({"grantType": "PASSWORD", "clientIdentifier": "rp", "subject": "s", "accessToken": "at"});
    let path = v3("/auth/token/create");
    let (first, _, _) = request(&two.base, Method::POST, &path, &bearer, Some(&token)).await;
    assert_eq!(first.as_u16(), 200);
    let (again, _, body) = request(&two.base, Method::POST, &path, &bearer, Some(&token)).await;
    assert_eq!(again.as_u16(), 500, "result codes strict: {body}");
    assert_eq!(body["resultCode"], "A001101");
    drop(two);

    // A switch that is not one is refused, naming the ones there are.
    let refused = std::process::Command::new(BIN)
        .args(["emulate", "--kind", "authlete", "--api-token", CLI_TOKEN])
        .args(["--strict", "nope"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("slow-batch"), "{stderr}");
}
