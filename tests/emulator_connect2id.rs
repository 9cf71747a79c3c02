//! Black-box tests of the Connect2id emulator over HTTP.

// Helpers outside #[test] functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use handover::emulator::connect2id::{ApiTokens, Config, Handle};
use handover::emulator::jwks::JwkSet;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::c2id::{Http, Reply, Send, TOKEN, config, form, start};

const REDIRECT: &str = "https://app.example.com/cb";

// ---- helpers ----

/// The emulator in the lenient reading, for tests of what only it does:
/// refresh tokens encrypted with a deterministic nonce (the client's
/// string, an export's `rft` and every re-encryption are equal) and access
/// tokens accepted at `/inspection`. The real server's reading of both
/// (the default) is tested side by side in `emulator_connect2id_strict.rs`.
fn lenient_config(jwks: &JwkSet) -> Config {
    let mut config = config(jwks);
    config.strictness = handover::emulator::connect2id::Strictness::lenient();
    config
}

/// Registers a client with the master token.
async fn register(http: &Http, base: &str, body: Value) -> Value {
    http.json(Method::POST, &format!("{base}/clients"), TOKEN, body)
        .await
        .expect(StatusCode::CREATED)
        .json()
}

/// A confidential web client for the code and refresh grants.
async fn web_client(http: &Http, base: &str) -> Value {
    register(
        http,
        base,
        json!({
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "Test App",
        }),
    )
    .await
}

fn id(client: &Value) -> &str {
    client["client_id"].as_str().unwrap()
}

fn secret(client: &Value) -> &str {
    client["client_secret"].as_str().unwrap()
}

fn query_param(uri: &str, name: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            value
                .replace("%2E", ".")
                .replace("%2D", "-")
                .replace("%5F", "_")
        })
    })
}

/// Starts an authorization session for the client.
async fn start_authz(http: &Http, base: &str, query: &str, sub_sid: Option<&str>) -> Value {
    let mut body = json!({ "query": query });
    if let Some(sid) = sub_sid {
        body["sub_sid"] = sid.into();
    }
    http.json(
        Method::POST,
        &format!("{base}/authz-sessions/rest/v3"),
        TOKEN,
        body,
    )
    .await
    .expect(StatusCode::OK)
    .json()
}

fn authz_query(client_id: &str, scope: &str) -> String {
    form(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st-1"),
        ("nonce", "n-1"),
    ])
}

/// A full login of `sub`: authz session, authentication, consent. Returns
/// the final response (with the code in `parameters.uri`).
async fn login(http: &Http, base: &str, client_id: &str, sub: &str, consent: Value) -> Value {
    let prompt = start_authz(http, base, &authz_query(client_id, "openid email"), None).await;
    assert_eq!(prompt["type"], "auth", "{prompt}");
    let sid = prompt["sid"].as_str().unwrap().to_owned();
    let url = format!("{base}/authz-sessions/rest/v3/{sid}");
    let consent_prompt = http
        .json(
            Method::PUT,
            &url,
            TOKEN,
            json!({ "sub": sub, "acr": "1", "amr": ["pwd"] }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(consent_prompt["type"], "consent", "{consent_prompt}");
    assert_eq!(consent_prompt["sub_session"]["sub"], sub);
    let response = http
        .json(Method::PUT, &url, TOKEN, consent)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(response["type"], "response", "{response}");
    assert_eq!(response["sub_sid"], consent_prompt["sub_session"]["sid"]);
    response
}

fn code_of(response: &Value) -> String {
    let uri = response["parameters"]["uri"].as_str().unwrap();
    assert!(uri.starts_with(REDIRECT), "{uri}");
    assert_eq!(query_param(uri, "state").as_deref(), Some("st-1"));
    query_param(uri, "code").expect("code in redirect")
}

async fn redeem(http: &Http, base: &str, client: &Value, code: &str) -> Reply {
    http.post_form_basic(
        &format!("{base}/token"),
        id(client),
        secret(client),
        vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await
}

/// Logs in and redeems the code; returns the token response.
async fn login_tokens(http: &Http, base: &str, client: &Value, sub: &str, consent: Value) -> Value {
    let response = login(http, base, id(client), sub, consent).await;
    redeem(http, base, client, &code_of(&response))
        .await
        .expect(StatusCode::OK)
        .json()
}

async fn refresh(http: &Http, base: &str, client: &Value, token: &str) -> Reply {
    http.post_form_basic(
        &format!("{base}/token"),
        id(client),
        secret(client),
        vec![("grant_type", "refresh_token"), ("refresh_token", token)],
    )
    .await
}

async fn introspect(http: &Http, base: &str, client: &Value, token: &str) -> Value {
    http.post_form_basic(
        &format!("{base}/token/introspect"),
        id(client),
        secret(client),
        vec![("token", token)],
    )
    .await
    .expect(StatusCode::OK)
    .json()
}

fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let claims = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&header).unwrap(),
        serde_json::from_slice(&claims).unwrap(),
    )
}

fn long_lived(rotate: bool) -> Value {
    json!({
        "scope": ["openid", "email"],
        "long_lived": true,
        "refresh_token": { "issue": true, "rotate": rotate },
        "access_token": { "encoding": "SELF_CONTAINED", "lifetime": 600 },
    })
}

async fn authorization(http: &Http, base: &str, sub: &str, cid: &str) -> Reply {
    http.get(
        &format!(
            "{base}/authz-store/rest/v3/authorizations?{}",
            form(&[("subject", sub), ("client_id", cid)])
        ),
        TOKEN,
    )
    .await
}

async fn create_session(http: &Http, base: &str, body: Value, sid_key: Option<&str>) -> String {
    let mut send = Send {
        bearer: Some(TOKEN),
        json: Some(body),
        ..Send::default()
    };
    if let Some(key) = sid_key {
        send.headers.push(("SID-Key", key.to_owned()));
    }
    let reply = http
        .send(
            Method::POST,
            &format!("{base}/session-store/rest/v2/sessions"),
            send,
        )
        .await
        .expect(StatusCode::CREATED);
    reply.json()["sid"].as_str().unwrap().to_owned()
}

async fn session_request(
    http: &Http,
    method: Method,
    url: &str,
    sid: &str,
    body: Option<Value>,
) -> Reply {
    let send = Send {
        bearer: Some(TOKEN),
        headers: vec![("SID", sid.to_owned())],
        json: body,
        ..Send::default()
    };
    http.send(method, url, send).await
}

fn sessions_url(handle: &Handle) -> String {
    format!("{}/session-store/rest/v2/sessions", handle.url())
}

// ---- management API authentication, discovery ----

#[tokio::test]
async fn management_apis_require_their_own_bearer_token() {
    let tokens = ApiTokens {
        clients: "clients-token-0123456789abcdef0123".to_owned(),
        authz_sessions: "authz-sessions-token-0123456789abc".to_owned(),
        authz_store: "authz-store-token-0123456789abcdef".to_owned(),
        session_store: "session-store-token-0123456789abcd".to_owned(),
    };
    let emulator = start(Config::new(tokens.clone(), JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let cases = [
        ("/clients", &tokens.clients),
        ("/authz-store/rest/v3/authorizations", &tokens.authz_store),
        ("/session-store/rest/v2/sessions", &tokens.session_store),
        ("/_emulator/state", &tokens.clients),
    ];
    for (path, token) in cases {
        let url = format!("{base}{path}");
        let missing = http.send(Method::GET, &url, Send::default()).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(missing.error(), "invalid_token");
        assert_eq!(missing.headers["cache-control"], "no-store");
        let wrong = http.get(&url, &tokens.authz_sessions).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        http.get(&url, token).await.expect(StatusCode::OK);
    }
    let authz = http
        .json(
            Method::POST,
            &format!("{base}/authz-sessions/rest/v3"),
            &tokens.clients,
            json!({ "query": "client_id=x" }),
        )
        .await;
    assert_eq!(authz.status, StatusCode::UNAUTHORIZED);
    let authz = http
        .json(
            Method::POST,
            &format!("{base}/authz-sessions/rest/v3"),
            &tokens.authz_sessions,
            json!({ "query": "client_id=x" }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(authz.json()["type"], "error");
}

#[tokio::test]
async fn discovery_and_jwks_are_served_under_the_base_path() {
    let jwks = JwkSet::generate();
    let mut config = config(&jwks);
    config.base_path = "/c2id".to_owned();
    let emulator = start(config).await;
    let http = Http::default();
    let base = emulator.url();
    assert!(base.ends_with("/c2id"));
    let discovery = http
        .send(
            Method::GET,
            &format!("{base}/.well-known/openid-configuration"),
            Send::default(),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(discovery["issuer"], base);
    assert_eq!(discovery["authorization_endpoint"], format!("{base}/login"));
    assert_eq!(discovery["token_endpoint"], format!("{base}/token"));
    assert_eq!(discovery["jwks_uri"], format!("{base}/jwks.json"));
    assert_eq!(
        discovery["registration_endpoint"],
        format!("{base}/clients")
    );
    assert_eq!(
        discovery["introspection_endpoint"],
        format!("{base}/token/introspect")
    );
    assert_eq!(
        discovery["revocation_endpoint"],
        format!("{base}/token/revoke")
    );
    assert!(discovery["end_session_endpoint"].is_string());
    assert!(
        discovery["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("refresh_token"))
    );

    let keys = http
        .send(Method::GET, &format!("{base}/jwks.json"), Send::default())
        .await
        .expect(StatusCode::OK)
        .json();
    let public: Value = serde_json::from_str(&jwks.public_json()).unwrap();
    assert_eq!(keys, public);
    assert!(keys.to_string().find("\"d\"").is_none());
    assert!(!keys.to_string().contains("oct"));

    // Nothing outside the base path.
    let root = format!("http://{}/.well-known/openid-configuration", emulator.addr);
    let outside = http.send(Method::GET, &root, Send::default()).await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    let clients = http
        .get(&format!("http://{}/clients", emulator.addr), TOKEN)
        .await;
    assert_eq!(clients.status, StatusCode::NOT_FOUND);
}

// ---- clients ----

#[tokio::test]
async fn client_lifecycle_rotates_credentials_on_update() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = register(
        &http,
        &base,
        json!({
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "client_credentials"],
            "client_name": "Lifecycle",
            "x_custom_metadata": { "kept": [1, 2] },
        }),
    )
    .await;
    let client_id = id(&client).to_owned();
    assert!((10..=20).contains(&client_id.len()), "{client_id}");
    assert_eq!(secret(&client).len(), 43);
    assert_eq!(client["client_secret_expires_at"], 0);
    assert!(client["client_id_issued_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(client["response_types"], json!(["code"]));
    assert_eq!(client["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(client["x_custom_metadata"], json!({ "kept": [1, 2] }));
    assert_eq!(
        client["registration_client_uri"],
        format!("{base}/clients/{client_id}")
    );
    let rat = client["registration_access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Read with the master token and with the registration access token.
    let url = format!("{base}/clients/{client_id}");
    assert_eq!(
        http.get(&url, TOKEN).await.expect(StatusCode::OK).json(),
        client
    );
    assert_eq!(
        http.get(&url, &rat).await.expect(StatusCode::OK).json(),
        client
    );
    assert_eq!(
        http.get(&url, "not-the-token").await.status,
        StatusCode::UNAUTHORIZED
    );

    // The secret works at the token endpoint.
    let cc = |secret: String| {
        let http = http.clone();
        let url = format!("{base}/token");
        let client_id = client_id.clone();
        async move {
            http.post_form_basic(
                &url,
                &client_id,
                &secret,
                vec![("grant_type", "client_credentials")],
            )
            .await
        }
    };
    cc(secret(&client).to_owned()).await.expect(StatusCode::OK);

    // A full replace with the registration access token rotates both the
    // secret and the registration access token.
    let mut update = client.clone();
    update["client_name"] = "Renamed".into();
    update.as_object_mut().unwrap().remove("x_custom_metadata");
    let updated = http
        .json(Method::PUT, &url, &rat, update)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(updated["client_name"], "Renamed");
    assert!(updated.get("x_custom_metadata").is_none(), "PUT replaces");
    assert_eq!(updated["client_id"], client_id);
    assert_eq!(
        updated["client_id_issued_at"],
        client["client_id_issued_at"]
    );
    assert_ne!(updated["client_secret"], client["client_secret"]);
    assert_ne!(
        updated["registration_access_token"],
        client["registration_access_token"]
    );
    assert_eq!(http.get(&url, &rat).await.status, StatusCode::UNAUTHORIZED);
    let new_rat = updated["registration_access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    http.get(&url, &new_rat).await.expect(StatusCode::OK);

    // Old and new secrets both work for 30 minutes, then only the new one.
    cc(secret(&updated).to_owned()).await.expect(StatusCode::OK);
    cc(secret(&client).to_owned()).await.expect(StatusCode::OK);
    emulator
        .emulator()
        .advance_clock(Duration::from_secs(31 * 60));
    let old = cc(secret(&client).to_owned()).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    assert_eq!(old.error(), "invalid_client");
    assert_eq!(old.json()["client_auth_id"], client_id);
    cc(secret(&updated).to_owned()).await.expect(StatusCode::OK);

    // The body must name the client being updated.
    let mut wrong = updated.clone();
    wrong["client_id"] = "someone-else".into();
    let refused = http.json(Method::PUT, &url, TOKEN, wrong).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    // Delete.
    let deleted = http
        .send(
            Method::DELETE,
            &url,
            Send {
                bearer: Some(TOKEN),
                ..Send::default()
            },
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = http.get(&url, TOKEN).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.error(), "invalid_client");
    assert!(emulator.emulator().client(&client_id).is_none());
}

#[tokio::test]
async fn client_metadata_is_validated() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let url = format!("{base}/clients");
    let cases = [
        (
            json!({ "grant_types": ["authorization_code"] }),
            "invalid_redirect_uri",
        ),
        (
            json!({ "redirect_uris": ["not a uri"] }),
            "invalid_redirect_uri",
        ),
        (
            json!({ "redirect_uris": ["https://x.example/cb#frag"] }),
            "invalid_redirect_uri",
        ),
        (
            json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "magic" }),
            "invalid_client_metadata",
        ),
        (
            json!({ "redirect_uris": [REDIRECT], "preferred_client_id": "x".repeat(81) }),
            "invalid_client_metadata",
        ),
        (
            json!({ "redirect_uris": [REDIRECT], "grant_types": "authorization_code" }),
            "invalid_client_metadata",
        ),
    ];
    for (body, error) in cases {
        let reply = http.json(Method::POST, &url, TOKEN, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error(), error, "{body}");
    }
    // No redirect URIs needed without a redirecting grant.
    register(
        &http,
        &base,
        json!({ "grant_types": ["client_credentials"] }),
    )
    .await;
    // A public client gets no secret.
    let public = register(
        &http,
        &base,
        json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none" }),
    )
    .await;
    assert!(public.get("client_secret").is_none());
    // Server-set values in the request are ignored.
    let ignored = register(
        &http,
        &base,
        json!({ "redirect_uris": [REDIRECT], "client_id": "mine", "client_secret": "mine" }),
    )
    .await;
    assert_ne!(ignored["client_id"], "mine");
    assert_ne!(ignored["client_secret"], "mine");
    // An oversized body is a 400, not a 500.
    let huge = json!({ "redirect_uris": [REDIRECT], "pad": "x".repeat(300_000) });
    assert_eq!(
        http.json(Method::POST, &url, TOKEN, huge).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn preferred_credentials_are_privileged() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let secret_value = "ahL7AhthchiNg6beAo5HeijeThae3deiChab7ajiVuip2eodesoBie0ufohtiiK4";
    let client = register(
        &http,
        &base,
        json!({
            "preferred_client_id": "s6BhdRkqt3",
            "preferred_client_secret": secret_value,
            "redirect_uris": [REDIRECT],
            "grant_types": ["client_credentials", "authorization_code"],
            "data": { "tenant": "a" },
        }),
    )
    .await;
    assert_eq!(client["client_id"], "s6BhdRkqt3");
    assert_eq!(client["client_secret"], secret_value);
    assert!(client.get("preferred_client_id").is_none());
    http.post_form_basic(
        &format!("{base}/token"),
        "s6BhdRkqt3",
        secret_value,
        vec![("grant_type", "client_credentials")],
    )
    .await
    .expect(StatusCode::OK);

    // The same ID again is refused.
    let again = http
        .json(
            Method::POST,
            &format!("{base}/clients"),
            TOKEN,
            json!({ "preferred_client_id": "s6BhdRkqt3", "redirect_uris": [REDIRECT] }),
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.error(), "invalid_client_metadata");

    // The client itself may not use privileged parameters.
    let url = format!("{base}/clients/s6BhdRkqt3");
    let rat = client["registration_access_token"].as_str().unwrap();
    let mut body = client.clone();
    body["preferred_client_secret"] = "chosen-by-the-client".into();
    let refused = http.json(Method::PUT, &url, rat, body).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.error(), "invalid_client_metadata");
    let mut body = client.clone();
    body["data"] = json!({ "tenant": "b" });
    let refused = http.json(Method::PUT, &url, rat, body).await;
    assert_eq!(refused.error(), "invalid_client_metadata");
    // Unchanged data is fine, and the master token may change it.
    http.json(Method::PUT, &url, rat, client.clone())
        .await
        .expect(StatusCode::OK);
    let mut body = client.clone();
    body["data"] = json!({ "tenant": "b" });
    let updated = http
        .json(Method::PUT, &url, TOKEN, body)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(updated["data"], json!({ "tenant": "b" }));
}

#[tokio::test]
async fn client_list_is_a_streamed_json_array() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let empty = http
        .get(&format!("{base}/clients"), TOKEN)
        .await
        .expect(StatusCode::OK);
    assert_eq!(empty.json(), json!([]));
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(id(&web_client(&http, &base).await).to_owned());
    }
    let listed = http
        .get(&format!("{base}/clients"), TOKEN)
        .await
        .expect(StatusCode::OK);
    assert!(listed.headers.get("content-length").is_none(), "streamed");
    assert_eq!(listed.headers["cache-control"], "no-store");
    let listed = listed.json();
    let mut listed_ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|client| {
            assert!(client["registration_client_uri"].is_string());
            id(client).to_owned()
        })
        .collect();
    listed_ids.sort();
    ids.sort();
    assert_eq!(listed_ids, ids);
}

// ---- login, tokens ----

#[tokio::test]
async fn login_issues_a_signed_jwt_access_token_and_id_token() {
    let jwks = JwkSet::generate();
    let emulator = start(lenient_config(&jwks)).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let response = login(&http, &base, id(&client), "alice", long_lived(false)).await;
    let code = code_of(&response);
    let tokens = redeem(&http, &base, &client, &code)
        .await
        .expect(StatusCode::OK);
    assert_eq!(tokens.headers["cache-control"], "no-store");
    let tokens = tokens.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "openid email");
    assert_eq!(tokens["expires_in"], 600);
    assert!(tokens["refresh_token"].is_string());

    let (header, claims) = jwt_parts(tokens["access_token"].as_str().unwrap());
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], jwks.signing_kid());
    assert_eq!(claims["iss"], base);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["cid"], id(&client));
    assert_eq!(claims["scp"], json!(["openid", "email"]));
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
    assert!(claims["jti"].is_string());

    let (_, id_token) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token["sub"], "alice");
    assert_eq!(id_token["aud"], id(&client));
    assert_eq!(id_token["nonce"], "n-1");
    assert_eq!(id_token["sid"], response["sub_sid"]);
    assert_eq!(id_token["amr"], json!(["pwd"]));

    let active = introspect(
        &http,
        &base,
        &client,
        tokens["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(active["active"], true);
    assert_eq!(active["sub"], "alice");
    assert_eq!(active["client_id"], id(&client));
    assert_eq!(active["scope"], "openid email");
    assert_eq!(active["iss"], base);
    assert_eq!(active["token_type"], "Bearer");
    let rt = introspect(
        &http,
        &base,
        &client,
        tokens["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(rt["active"], true);
    assert_eq!(rt["sub"], "alice");
    assert_eq!(
        introspect(&http, &base, &client, "garbage").await["active"],
        false
    );

    // Codes are single use.
    let reused = redeem(&http, &base, &client, &code).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(reused.error(), "invalid_grant");

    // The long-lived consent was persisted when the code was redeemed, and
    // its rft is the refresh token the client holds.
    let record = authorization(&http, &base, "alice", id(&client))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(record["scp"], json!(["openid", "email"]));
    assert_eq!(record["rft"], tokens["refresh_token"]);
    assert!(record["rts"].is_string());
    assert_eq!(record["rtr"], false);

    // An access token expires.
    emulator.emulator().advance_clock(Duration::from_secs(601));
    let expired = introspect(
        &http,
        &base,
        &client,
        tokens["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(expired["active"], false);
}

#[tokio::test]
async fn code_redemption_checks_client_redirect_uri_and_pkce() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let other = web_client(&http, &base).await;

    let code = code_of(&login(&http, &base, id(&client), "bob", long_lived(false)).await);
    let stolen = redeem(&http, &base, &other, &code).await;
    assert_eq!(stolen.error(), "invalid_grant");

    let code = code_of(&login(&http, &base, id(&client), "bob", long_lived(false)).await);
    let wrong_uri = http
        .post_form_basic(
            &format!("{base}/token"),
            id(&client),
            secret(&client),
            vec![
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://evil.example/cb"),
            ],
        )
        .await;
    assert_eq!(wrong_uri.error(), "invalid_grant");

    // Wrong client secret, unknown client.
    let bad = http
        .post_form_basic(
            &format!("{base}/token"),
            id(&client),
            "wrong",
            vec![("grant_type", "authorization_code"), ("code", "x")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.error(), "invalid_client");
    let unknown = http
        .post_form_basic(
            &format!("{base}/token"),
            "nobody",
            "x",
            vec![("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.json()["client_auth_id"], "nobody");
    // client_secret_post is refused for a client_secret_basic client.
    let post = http
        .send(
            Method::POST,
            &format!("{base}/token"),
            Send {
                form: Some(vec![
                    ("grant_type", "authorization_code"),
                    ("code", "x"),
                    ("client_id", id(&client)),
                    ("client_secret", secret(&client)),
                ]),
                ..Send::default()
            },
        )
        .await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED);

    // PKCE with a public client.
    let public = register(
        &http,
        &base,
        json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none" }),
    )
    .await;
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let query = form(&[
        ("response_type", "code"),
        ("client_id", id(&public)),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", "st-1"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let prompt = start_authz(&http, &base, &query, None).await;
    let url = format!(
        "{base}/authz-sessions/rest/v3/{}",
        prompt["sid"].as_str().unwrap()
    );
    http.json(Method::PUT, &url, TOKEN, json!({ "sub": "carol" }))
        .await
        .expect(StatusCode::OK);
    let done = http
        .json(Method::PUT, &url, TOKEN, json!({ "scope": ["openid"] }))
        .await
        .json();
    let code = code_of(&done);
    let public_token = |verifier: &'static str, code: String| {
        let http = http.clone();
        let url = format!("{base}/token");
        let client_id = id(&public).to_owned();
        async move {
            let pairs = vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
                ("client_id", client_id.as_str()),
                ("code_verifier", verifier),
            ];
            http.send(
                Method::POST,
                &url,
                Send {
                    form: Some(pairs),
                    ..Send::default()
                },
            )
            .await
        }
    };
    let wrong = public_token("wrong-verifier-wrong-verifier-wrong-verifier", code.clone()).await;
    assert_eq!(wrong.error(), "invalid_grant");
    // A failed redemption still used the code up.
    let code = code_of(&{
        let prompt = start_authz(&http, &base, &query, None).await;
        let url = format!(
            "{base}/authz-sessions/rest/v3/{}",
            prompt["sid"].as_str().unwrap()
        );
        http.json(Method::PUT, &url, TOKEN, json!({ "sub": "carol" }))
            .await
            .expect(StatusCode::OK);
        http.json(Method::PUT, &url, TOKEN, json!({ "scope": ["openid"] }))
            .await
            .json()
    });
    let ok = public_token(verifier, code)
        .await
        .expect(StatusCode::OK)
        .json();
    assert!(ok["access_token"].is_string());
    assert!(
        ok.get("refresh_token").is_none(),
        "not registered for refresh_token"
    );
}

#[tokio::test]
async fn identifier_access_tokens_are_introspected_locally() {
    let jwks = JwkSet::generate();
    let emulator = start(config(&jwks)).await;
    let other = start(config(&jwks)).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let mut consent = long_lived(false);
    consent["access_token"] = json!({ "encoding": "IDENTIFIER", "lifetime": 300 });
    let tokens = login_tokens(&http, &base, &client, "dave", consent).await;
    let access_token = tokens["access_token"].as_str().unwrap();
    assert_eq!(access_token.matches('.').count(), 1, "<key>.<hmac>");
    assert_eq!(tokens["expires_in"], 300);
    let active = introspect(&http, &base, &client, access_token).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["sub"], "dave");
    // Identifier tokens live only where they were issued.
    let imported = http
        .json(
            Method::POST,
            &format!("{}/clients", other.url()),
            TOKEN,
            json!({
                "preferred_client_id": id(&client),
                "preferred_client_secret": secret(&client),
                "redirect_uris": [REDIRECT],
            }),
        )
        .await
        .expect(StatusCode::CREATED)
        .json();
    let elsewhere = introspect(&http, &other.url(), &imported, access_token).await;
    assert_eq!(elsewhere["active"], false);
    let record = authorization(&http, &base, "dave", id(&client))
        .await
        .json();
    assert_eq!(record["ate"], "IDENTIFIER");
    assert_eq!(record["atl"], 300);
}

#[tokio::test]
async fn existing_session_goes_straight_to_consent() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let first = login(&http, &base, id(&client), "erin", long_lived(false)).await;
    let sub_sid = first["sub_sid"].as_str().unwrap();
    redeem(&http, &base, &client, &code_of(&first))
        .await
        .expect(StatusCode::OK);

    let prompt = start_authz(
        &http,
        &base,
        &authz_query(id(&client), "openid email profile"),
        Some(sub_sid),
    )
    .await;
    assert_eq!(prompt["type"], "consent", "{prompt}");
    assert_eq!(prompt["sub_session"]["sid"], sub_sid);
    assert_eq!(prompt["sub_session"]["sub"], "erin");
    assert_eq!(prompt["scope"]["consented"], json!(["openid", "email"]));
    assert_eq!(prompt["scope"]["new"], json!(["profile"]));
    assert_eq!(prompt["client"]["client_id"], id(&client));
    assert_eq!(prompt["client"]["name"], "Test App");

    // GET reads the session; DELETE denies.
    let url = format!(
        "{base}/authz-sessions/rest/v3/{}",
        prompt["sid"].as_str().unwrap()
    );
    assert_eq!(
        http.get(&url, TOKEN).await.expect(StatusCode::OK).json(),
        prompt
    );
    let denied = http
        .send(
            Method::DELETE,
            &url,
            Send {
                bearer: Some(TOKEN),
                ..Send::default()
            },
        )
        .await
        .expect(StatusCode::OK)
        .json();
    let uri = denied["parameters"]["uri"].as_str().unwrap();
    assert_eq!(query_param(uri, "error").as_deref(), Some("access_denied"));
    assert_eq!(http.get(&url, TOKEN).await.status, StatusCode::NOT_FOUND);

    // prompt=login forces authentication; a forged SID is ignored.
    let query = format!("{}&prompt=login", authz_query(id(&client), "openid"));
    assert_eq!(
        start_authz(&http, &base, &query, Some(sub_sid)).await["type"],
        "auth"
    );
    let forged = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAA",
        sub_sid.rsplit_once('.').unwrap().0
    );
    assert_eq!(
        start_authz(
            &http,
            &base,
            &authz_query(id(&client), "openid"),
            Some(&forged)
        )
        .await["type"],
        "auth"
    );
    // prompt=none without a session redirects with login_required.
    let query = format!("{}&prompt=none", authz_query(id(&client), "openid"));
    let none = start_authz(&http, &base, &query, None).await;
    assert_eq!(none["type"], "response");
    let uri = none["parameters"]["uri"].as_str().unwrap();
    assert_eq!(query_param(uri, "error").as_deref(), Some("login_required"));
}

#[tokio::test]
async fn bad_authorization_requests_are_errors_or_error_redirects() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let unknown = start_authz(&http, &base, &authz_query("nobody", "openid"), None).await;
    assert_eq!(unknown["type"], "error");
    assert_eq!(unknown["error"], "invalid_client");
    let query = form(&[
        ("response_type", "code"),
        ("client_id", id(&client)),
        ("redirect_uri", "https://evil.example/cb"),
    ]);
    let bad_uri = start_authz(&http, &base, &query, None).await;
    assert_eq!(bad_uri["type"], "error");
    let query = form(&[
        ("response_type", "token"),
        ("client_id", id(&client)),
        ("redirect_uri", REDIRECT),
        ("state", "st-1"),
    ]);
    let bad_type = start_authz(&http, &base, &query, None).await;
    assert_eq!(bad_type["type"], "response");
    let uri = bad_type["parameters"]["uri"].as_str().unwrap();
    assert_eq!(
        query_param(uri, "error").as_deref(),
        Some("unsupported_response_type")
    );
    assert_eq!(query_param(uri, "state").as_deref(), Some("st-1"));
    // Consent before authentication is refused.
    let prompt = start_authz(&http, &base, &authz_query(id(&client), "openid"), None).await;
    let url = format!(
        "{base}/authz-sessions/rest/v3/{}",
        prompt["sid"].as_str().unwrap()
    );
    let early = http
        .json(Method::PUT, &url, TOKEN, json!({ "scope": ["openid"] }))
        .await;
    assert_eq!(early.status, StatusCode::BAD_REQUEST);
    let missing = http
        .get(&format!("{base}/authz-sessions/rest/v3/nope"), TOKEN)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

// ---- refresh ----

#[tokio::test]
async fn rotated_refresh_token_replay_revokes_the_authorization() {
    let emulator = start(lenient_config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let tokens = login_tokens(&http, &base, &client, "frank", long_lived(true)).await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let before = authorization(&http, &base, "frank", id(&client))
        .await
        .json();
    assert_eq!(before["rtr"], true);

    let refreshed = refresh(&http, &base, &client, &first)
        .await
        .expect(StatusCode::OK)
        .json();
    let second = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert!(refreshed["access_token"].is_string());
    let after = authorization(&http, &base, "frank", id(&client))
        .await
        .json();
    assert_ne!(after["rts"], before["rts"]);
    assert_eq!(after["rft"], second.as_str());
    assert!(after["rti"].as_u64() >= before["rti"].as_u64());

    let third = refresh(&http, &base, &client, &second)
        .await
        .expect(StatusCode::OK)
        .json();
    let third = third["refresh_token"].as_str().unwrap().to_owned();

    // Replaying an expended token revokes the whole authorization.
    let replay = refresh(&http, &base, &client, &first).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.error(), "invalid_grant");
    assert_eq!(
        authorization(&http, &base, "frank", id(&client))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        refresh(&http, &base, &client, &third).await.error(),
        "invalid_grant"
    );
    let access = introspect(
        &http,
        &base,
        &client,
        refreshed["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(
        access["active"], false,
        "access tokens of the grant are revoked too"
    );
    let journal = emulator.emulator().revocations();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].subject.as_deref(), Some("frank"));
    assert_eq!(journal[0].client_id.as_deref(), Some(id(&client)));

    // A new login right after works: its tokens are not born revoked.
    let fresh = login_tokens(&http, &base, &client, "frank", long_lived(true)).await;
    let fresh_rt = fresh["refresh_token"].as_str().unwrap();
    assert_eq!(
        introspect(
            &http,
            &base,
            &client,
            fresh["access_token"].as_str().unwrap()
        )
        .await["active"],
        true
    );
    refresh(&http, &base, &client, fresh_rt)
        .await
        .expect(StatusCode::OK);
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_refresh_token() {
    let emulator = start(lenient_config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let tokens = login_tokens(&http, &base, &client, "gina", long_lived(false)).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    let before = authorization(&http, &base, "gina", id(&client))
        .await
        .json();
    for _ in 0..3 {
        let refreshed = refresh(&http, &base, &client, rt)
            .await
            .expect(StatusCode::OK)
            .json();
        assert!(refreshed.get("refresh_token").is_none());
        assert!(refreshed["access_token"].is_string());
    }
    assert_eq!(
        authorization(&http, &base, "gina", id(&client))
            .await
            .json(),
        before
    );
    // Another client cannot use it.
    let other = web_client(&http, &base).await;
    assert_eq!(
        refresh(&http, &base, &other, rt).await.error(),
        "invalid_grant"
    );
}

#[tokio::test]
async fn refresh_token_lifetime_is_enforced() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let mut consent = long_lived(true);
    consent["refresh_token"]["lifetime"] = 3600.into();
    let tokens = login_tokens(&http, &base, &client, "hank", consent).await;
    assert_eq!(tokens["refresh_token_expires_in"], 3600);
    emulator.emulator().advance_clock(Duration::from_secs(1800));
    let refreshed = refresh(
        &http,
        &base,
        &client,
        tokens["refresh_token"].as_str().unwrap(),
    )
    .await
    .expect(StatusCode::OK)
    .json();
    // Rotation keeps the absolute expiry.
    let remaining = refreshed["refresh_token_expires_in"].as_u64().unwrap();
    assert!((1799..=1800).contains(&remaining), "{remaining}");
    emulator.emulator().advance_clock(Duration::from_secs(1801));
    let expired = refresh(
        &http,
        &base,
        &client,
        refreshed["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(expired.error(), "invalid_grant");
}

#[tokio::test]
async fn transient_refresh_tokens_are_self_contained() {
    let jwks = JwkSet::generate();
    let emulator = start(config(&jwks)).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let consent = json!({
        "scope": ["openid"],
        "long_lived": false,
        "refresh_token": { "rotate": true, "lifetime": 86400 },
    });
    let tokens = login_tokens(&http, &base, &client, "ivan", consent).await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(first.split('.').count(), 5, "a JWE");
    assert_eq!(
        authorization(&http, &base, "ivan", id(&client))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(emulator.emulator().counts().authorizations, 0);

    // Works on a second server with the same keys: nothing is stored.
    let twin = start(config(&jwks)).await;
    let twin_client = register(
        &http,
        &twin.url(),
        json!({
            "preferred_client_id": id(&client),
            "preferred_client_secret": secret(&client),
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
        }),
    )
    .await;
    refresh(&http, &twin.url(), &twin_client, &first)
        .await
        .expect(StatusCode::OK);

    let second = refresh(&http, &base, &client, &first)
        .await
        .expect(StatusCode::OK)
        .json();
    let second = second["refresh_token"].as_str().unwrap().to_owned();
    // Reuse within the 5 s grace period is tolerated ...
    refresh(&http, &base, &client, &first)
        .await
        .expect(StatusCode::OK);
    // ... after it, it revokes the grant, including the newer token.
    emulator.emulator().advance_clock(Duration::from_secs(6));
    assert_eq!(
        refresh(&http, &base, &client, &first).await.error(),
        "invalid_grant"
    );
    assert_eq!(
        refresh(&http, &base, &client, &second).await.error(),
        "invalid_grant"
    );
    assert_eq!(emulator.emulator().revocations().len(), 1);
}

#[tokio::test]
async fn token_revocation_revokes_the_grant_and_deletes_the_record() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let tokens = login_tokens(&http, &base, &client, "judy", long_lived(false)).await;
    let access_token = tokens["access_token"].as_str().unwrap();
    let rt = tokens["refresh_token"].as_str().unwrap();
    let revoke = |token: String, client: Value| {
        let http = http.clone();
        let url = format!("{base}/token/revoke");
        async move {
            http.post_form_basic(&url, id(&client), secret(&client), vec![("token", &token)])
                .await
        }
    };
    // Another client's revocation does nothing (but still answers 200).
    let other = web_client(&http, &base).await;
    revoke(access_token.to_owned(), other.clone())
        .await
        .expect(StatusCode::OK);
    authorization(&http, &base, "judy", id(&client))
        .await
        .expect(StatusCode::OK);
    revoke("not-a-token".to_owned(), client.clone())
        .await
        .expect(StatusCode::OK);

    revoke(access_token.to_owned(), client.clone())
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        authorization(&http, &base, "judy", id(&client))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        introspect(&http, &base, &client, access_token).await["active"],
        false
    );
    assert_eq!(introspect(&http, &base, &client, rt).await["active"], false);
    assert_eq!(
        refresh(&http, &base, &client, rt).await.error(),
        "invalid_grant"
    );

    let fresh = login_tokens(&http, &base, &client, "judy", long_lived(false)).await;
    assert_eq!(
        introspect(
            &http,
            &base,
            &client,
            fresh["access_token"].as_str().unwrap()
        )
        .await["active"],
        true
    );
    refresh(
        &http,
        &base,
        &client,
        fresh["refresh_token"].as_str().unwrap(),
    )
    .await
    .expect(StatusCode::OK);
}

// ---- authz store ----

/// Imports a client into `to` with the same credentials.
async fn import_client(http: &Http, to: &str, client: &Value) -> Value {
    let mut body = client.clone();
    let object = body.as_object_mut().unwrap();
    for name in [
        "client_id_issued_at",
        "registration_access_token",
        "registration_client_uri",
        "client_secret_expires_at",
    ] {
        object.remove(name);
    }
    let client_id = object.remove("client_id").unwrap();
    object.insert("preferred_client_id".to_owned(), client_id);
    if let Some(secret) = object.remove("client_secret") {
        object.insert("preferred_client_secret".to_owned(), secret);
    }
    register(http, to, body).await
}

#[tokio::test]
async fn imported_authorization_keeps_the_refresh_token_working() {
    let jwks = JwkSet::generate();
    let shared_issuer = "https://login.example.com/c2id".to_owned();
    let mut source_config = lenient_config(&jwks);
    source_config.issuer = Some(shared_issuer.clone());
    let source = start(source_config).await;
    let mut target_config = lenient_config(&jwks);
    target_config.issuer = Some(shared_issuer);
    let target = start(target_config).await;
    let stranger = start(lenient_config(&JwkSet::generate())).await;
    let http = Http::default();
    let client = web_client(&http, &source.url()).await;
    let tokens = login_tokens(&http, &source.url(), &client, "kate", long_lived(true)).await;
    let rt = tokens["refresh_token"].as_str().unwrap();

    let mut record = authorization(&http, &source.url(), "kate", id(&client))
        .await
        .json();
    assert_eq!(record["rft"], rt);
    record["x_unknown"] = json!({ "kept": true });
    for server in [&target, &stranger] {
        import_client(&http, &server.url(), &client).await;
        let url = format!(
            "{}/authz-store/rest/v3/authorizations?import=true",
            server.url()
        );
        let imported = http
            .json(Method::POST, &url, TOKEN, record.clone())
            .await
            .expect(StatusCode::CREATED)
            .json();
        assert_eq!(imported["rts"], record["rts"]);
        // Importing again replaces.
        http.json(Method::POST, &url, TOKEN, record.clone())
            .await
            .expect(StatusCode::OK);
    }
    let on_target = authorization(&http, &target.url(), "kate", id(&client))
        .await
        .json();
    assert_eq!(on_target, record, "stored exactly as given, same rft");

    // The JWT access token of the source is valid at the target.
    assert_eq!(
        introspect(
            &http,
            &target.url(),
            &client,
            tokens["access_token"].as_str().unwrap()
        )
        .await["active"],
        true
    );
    assert_eq!(
        introspect(
            &http,
            &stranger.url(),
            &client,
            tokens["access_token"].as_str().unwrap()
        )
        .await["active"],
        false
    );

    // Same JWK set: the source's refresh token works at the target.
    let refreshed = refresh(&http, &target.url(), &client, rt)
        .await
        .expect(StatusCode::OK)
        .json();
    assert!(
        refreshed["refresh_token"].is_string(),
        "rotation happens at the target"
    );
    // Different JWK set: it does not.
    assert_eq!(
        refresh(&http, &stranger.url(), &client, rt).await.error(),
        "invalid_grant"
    );
    assert_eq!(
        stranger.emulator().counts().authorizations,
        1,
        "a failed decrypt revokes nothing"
    );
}

#[tokio::test]
async fn authz_store_mints_updates_lists_and_deletes() {
    let emulator = start(lenient_config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let cid = id(&client).to_owned();
    let url = format!("{base}/authz-store/rest/v3/authorizations");

    // Mint returns a code by default, redeemable at /token.
    let minted = http
        .json(
            Method::POST,
            &url,
            TOKEN,
            json!({ "sub": "liam", "cid": cid, "scp": ["openid"], "irt": true }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    let code = minted["code"].as_str().unwrap();
    let tokens = http
        .post_form_basic(
            &format!("{base}/token"),
            &cid,
            secret(&client),
            vec![("grant_type", "authorization_code"), ("code", code)],
        )
        .await
        .expect(StatusCode::OK)
        .json();
    let record = authorization(&http, &base, "liam", &cid).await.json();
    assert_eq!(tokens["refresh_token"], record["rft"]);
    assert_eq!(record["ate"], "SELF_CONTAINED");

    // ?return=tokens returns tokens directly and replaces the record.
    let direct = http
        .json(
            Method::POST,
            &format!("{url}?return=tokens"),
            TOKEN,
            json!({ "sub": "liam", "cid": cid, "scp": ["openid", "email"], "irt": true }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert!(direct["access_token"].is_string());
    let replaced = authorization(&http, &base, "liam", &cid).await.json();
    assert_eq!(replaced["scp"], json!(["openid", "email"]));
    assert_eq!(direct["refresh_token"], replaced["rft"]);
    assert_ne!(replaced["rts"], record["rts"]);
    assert_eq!(
        refresh(
            &http,
            &base,
            &client,
            tokens["refresh_token"].as_str().unwrap()
        )
        .await
        .error(),
        "invalid_grant"
    );

    // Update keeps the refresh token material and answers rft.
    let mut update = replaced.clone();
    update["scp"] = json!(["openid"]);
    update.as_object_mut().unwrap().remove("rts");
    let updated = http
        .json(Method::PUT, &url, TOKEN, update)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(updated["scp"], json!(["openid"]));
    assert_eq!(updated["rft"], replaced["rft"]);
    let missing = http
        .json(
            Method::PUT,
            &url,
            TOKEN,
            json!({ "sub": "nobody", "cid": cid }),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // Lists by subject and client, one record with both.
    http.json(
        Method::POST,
        &format!("{url}?import=true"),
        TOKEN,
        json!({ "sub": "mia", "cid": cid, "scp": ["openid"] }),
    )
    .await
    .expect(StatusCode::CREATED);
    let by_client = http
        .get(&format!("{url}?client_id={cid}"), TOKEN)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(by_client.as_array().unwrap().len(), 2);
    let by_subject = http
        .get(&format!("{url}?subject=mia"), TOKEN)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(by_subject.as_array().unwrap().len(), 1);
    assert!(
        by_subject[0].get("rft").is_none(),
        "no refresh token material, no rft"
    );
    let all = http.get(&url, TOKEN).await.expect(StatusCode::OK);
    assert!(all.headers.get("content-length").is_none(), "streamed");
    assert_eq!(all.json().as_array().unwrap().len(), 2);

    let delete = |query: String| {
        let http = http.clone();
        let url = format!("{url}?{query}");
        async move {
            http.send(
                Method::DELETE,
                &url,
                Send {
                    bearer: Some(TOKEN),
                    ..Send::default()
                },
            )
            .await
        }
    };
    assert_eq!(
        delete(format!("subject=mia&client_id={cid}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(format!("subject=mia&client_id={cid}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(emulator.emulator().counts().authorizations, 1);
}

#[tokio::test]
async fn revocation_honours_timestamp_and_quiet() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let cid = id(&client).to_owned();
    let url = format!("{base}/authz-store/rest/v3/revocation");
    let tokens = login_tokens(&http, &base, &client, "noah", long_lived(false)).await;
    let access_token = tokens["access_token"].as_str().unwrap();

    // A revocation dated in the past deletes the record but leaves tokens
    // issued after its timestamp alone.
    let past = (emulator.emulator().now() - 100).to_string();
    let removed = http
        .post_form_bearer(&url, TOKEN, vec![("subject", "noah"), ("timestamp", &past)])
        .await
        .expect(StatusCode::OK);
    let removed = removed.json();
    assert_eq!(removed.as_array().unwrap().len(), 1);
    assert_eq!(removed[0]["sub"], "noah");
    assert_eq!(
        introspect(&http, &base, &client, access_token).await["active"],
        true
    );

    // Now dated: the tokens are revoked. Nothing left to remove: 204.
    let none = http
        .post_form_bearer(&url, TOKEN, vec![("subject", "noah"), ("client_id", &cid)])
        .await;
    assert_eq!(none.status, StatusCode::NO_CONTENT);
    assert_eq!(
        introspect(&http, &base, &client, access_token).await["active"],
        false
    );

    // quiet=true answers 204 even when records were removed.
    login_tokens(&http, &base, &client, "olga", long_lived(false)).await;
    let quiet = http
        .post_form_bearer(
            &format!("{url}?quiet=true"),
            TOKEN,
            vec![("client_id", &cid)],
        )
        .await;
    assert_eq!(quiet.status, StatusCode::NO_CONTENT);
    assert_eq!(
        authorization(&http, &base, "olga", &cid).await.status,
        StatusCode::NOT_FOUND
    );

    let journal = http
        .get(
            &format!("{base}/_emulator/state?dataset=revocations"),
            TOKEN,
        )
        .await
        .json();
    assert_eq!(journal.as_array().unwrap().len(), 3);
    assert_eq!(journal[0]["timestamp"].as_u64().unwrap().to_string(), past);
    assert_eq!(
        http.post_form_bearer(&url, TOKEN, vec![]).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn inspection_finds_the_record_behind_a_token() {
    let emulator = start(lenient_config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let tokens = login_tokens(&http, &base, &client, "pia", long_lived(true)).await;
    let url = format!("{base}/authz-store/rest/v3/inspection");
    let rt = tokens["refresh_token"].as_str().unwrap();
    let by_rt = http
        .post_form_bearer(&url, TOKEN, vec![("refresh_token", rt)])
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(by_rt["sub"], "pia");
    assert_eq!(by_rt["cid"], id(&client));
    assert_eq!(by_rt["rft"], rt);
    let by_token = http
        .post_form_bearer(&url, TOKEN, vec![("token", rt)])
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(by_token["sub"], "pia");
    let by_at = http
        .post_form_bearer(
            &url,
            TOKEN,
            vec![("access_token", tokens["access_token"].as_str().unwrap())],
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(by_at["rft"], rt);
    // Once rotated, the old token finds nothing (and is not revoked by a
    // read).
    let next = refresh(&http, &base, &client, rt).await.json();
    assert_eq!(
        http.post_form_bearer(&url, TOKEN, vec![("refresh_token", rt)])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    refresh(
        &http,
        &base,
        &client,
        next["refresh_token"].as_str().unwrap(),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(
        http.post_form_bearer(&url, TOKEN, vec![("token", "junk")])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

// ---- session store ----

#[tokio::test]
async fn session_store_creates_reads_updates_and_deletes() {
    let emulator = start(config(&JwkSet::generate())).await;
    let http = Http::default();
    let url = sessions_url(&emulator);
    let sid = create_session(
        &http,
        &emulator.url(),
        json!({ "sub": "quinn", "amr": ["pwd"], "data": { "n": 1 }, "fpt": "fp1", "x_extra": 7 }),
        None,
    )
    .await;
    let (key, mac) = sid.rsplit_once('.').unwrap();
    assert_eq!(key.len(), 43);
    assert_eq!(mac.len(), 22);

    let session = session_request(&http, Method::GET, &url, &sid, None)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(session["sub"], "quinn");
    assert_eq!(session["ctx"], "web");
    assert_eq!(session["x_extra"], 7);
    assert_eq!(session["max_idle"], 14_400);
    let created = session["last_used"].as_u64().unwrap();

    // GET bumps last_used unless told not to.
    emulator.emulator().advance_clock(Duration::from_secs(120));
    let skip = format!("{url}?skip_last_used_update=true");
    let skipped = session_request(&http, Method::GET, &skip, &sid, None)
        .await
        .json();
    assert_eq!(skipped["last_used"].as_u64().unwrap(), created);
    let bumped = session_request(&http, Method::GET, &url, &sid, None)
        .await
        .json();
    assert_eq!(bumped["last_used"].as_u64().unwrap(), created + 120);

    // PUT updates; fpt is immutable.
    let put = session_request(
        &http,
        Method::PUT,
        &url,
        &sid,
        Some(json!({ "sub": "quinn", "data": { "n": 2 } })),
    )
    .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let after = session_request(&http, Method::GET, &url, &sid, None)
        .await
        .json();
    assert_eq!(after["data"], json!({ "n": 2 }));
    assert_eq!(after["fpt"], "fp1");
    assert_eq!(after["creation_time"], session["creation_time"]);
    let fpt = session_request(
        &http,
        Method::PUT,
        &url,
        &sid,
        Some(json!({ "sub": "quinn", "fpt": "other" })),
    )
    .await;
    assert_eq!(fpt.status, StatusCode::BAD_REQUEST);

    let auth_life = session_request(
        &http,
        Method::PUT,
        &format!("{url}/subject-auth-life"),
        &sid,
        Some(json!({ "auth_life": 60 })),
    )
    .await;
    assert_eq!(auth_life.status, StatusCode::NO_CONTENT);
    assert_eq!(
        session_request(&http, Method::GET, &url, &sid, None)
            .await
            .json()["auth_life"],
        60
    );

    // A SID with a bad HMAC is not found.
    let forged = format!("{key}.AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(
        session_request(&http, Method::GET, &url, &forged, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        session_request(&http, Method::DELETE, &url, &forged, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let by_subject = http
        .get(&format!("{url}?subject=quinn"), TOKEN)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(
        by_subject.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![&sid]
    );

    assert_eq!(
        session_request(&http, Method::DELETE, &url, &sid, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        session_request(&http, Method::GET, &url, &sid, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        session_request(&http, Method::DELETE, &url, &sid, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Missing sub.
    let bad = http
        .json(Method::POST, &url, TOKEN, json!({ "acr": "1" }))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sids_are_portable_between_servers_with_the_same_jwks() {
    let jwks = JwkSet::generate();
    let source = start(config(&jwks)).await;
    let target = start(config(&jwks)).await;
    let stranger = start(config(&JwkSet::generate())).await;
    let http = Http::default();
    let sid = create_session(
        &http,
        &source.url(),
        json!({ "sub": "rita", "creation_time": 1_795_000_000, "auth_time": 1_795_000_000, "max_life": -1, "max_idle": -1 }),
        None,
    )
    .await;
    let export = http
        .get(&sessions_url(&source), TOKEN)
        .await
        .expect(StatusCode::OK);
    assert!(export.headers.get("content-length").is_none(), "streamed");
    let export = export.json();
    let session = export[&sid].clone();
    assert_eq!(session["creation_time"], 1_795_000_000);

    // Import with SID-Key: the same SID on the target, creation time kept.
    let key = sid.rsplit_once('.').unwrap().0;
    let imported = create_session(&http, &target.url(), session.clone(), Some(key)).await;
    assert_eq!(imported, sid);
    let on_target = session_request(
        &http,
        Method::GET,
        &format!("{}?skip_last_used_update=true", sessions_url(&target)),
        &sid,
        None,
    )
    .await
    .expect(StatusCode::OK)
    .json();
    assert_eq!(on_target, session);

    // Another key set computes another HMAC: the source SID is unknown.
    let elsewhere = create_session(&http, &stranger.url(), session, Some(key)).await;
    assert_ne!(elsewhere, sid);
    assert_eq!(
        session_request(&http, Method::GET, &sessions_url(&stranger), &sid, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // The target accepts the source SID for a login too.
    let client = web_client(&http, &target.url()).await;
    let prompt = start_authz(
        &http,
        &target.url(),
        &authz_query(id(&client), "openid"),
        Some(&sid),
    )
    .await;
    assert_eq!(prompt["type"], "consent");
}

#[tokio::test]
async fn sixth_session_of_a_subject_closes_the_oldest() {
    let emulator = start(config(&JwkSet::generate())).await;
    let http = Http::default();
    let now = emulator.emulator().now();
    let mut sids = Vec::new();
    for age in (0..5).rev() {
        let body = json!({ "sub": "sam", "creation_time": now - 100 * (age + 1) });
        sids.push(create_session(&http, &emulator.url(), body, None).await);
    }
    create_session(&http, &emulator.url(), json!({ "sub": "other" }), None).await;
    let sixth = create_session(&http, &emulator.url(), json!({ "sub": "sam" }), None).await;
    let url = sessions_url(&emulator);
    let live = http.get(&format!("{url}?subject=sam"), TOKEN).await.json();
    let live = live.as_object().unwrap();
    assert_eq!(live.len(), 5);
    assert!(!live.contains_key(&sids[0]), "the oldest was closed");
    assert!(live.contains_key(&sixth));
    assert_eq!(emulator.emulator().counts().sessions, 6);

    // DELETE ?subject= ends them all and answers them.
    let deleted = http
        .send(
            Method::DELETE,
            &format!("{url}?subject=sam"),
            Send {
                bearer: Some(TOKEN),
                ..Send::default()
            },
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(deleted.as_object().unwrap().len(), 5);
    assert_eq!(emulator.emulator().counts().sessions, 1);
}

#[tokio::test]
async fn sessions_expire_by_idle_time_and_lifetime() {
    let emulator = start(config(&JwkSet::generate())).await;
    let http = Http::default();
    let url = sessions_url(&emulator);
    let idle = create_session(
        &http,
        &emulator.url(),
        json!({ "sub": "tom", "max_idle": 2 }),
        None,
    )
    .await;
    let life = create_session(
        &http,
        &emulator.url(),
        json!({ "sub": "una", "max_life": 5, "max_idle": -1 }),
        None,
    )
    .await;
    emulator.emulator().advance_clock(Duration::from_secs(90));
    session_request(&http, Method::GET, &url, &idle, None)
        .await
        .expect(StatusCode::OK);
    emulator.emulator().advance_clock(Duration::from_secs(90));
    session_request(&http, Method::GET, &url, &idle, None)
        .await
        .expect(StatusCode::OK);
    session_request(&http, Method::GET, &url, &life, None)
        .await
        .expect(StatusCode::OK);
    emulator.emulator().advance_clock(Duration::from_secs(150));
    assert_eq!(
        session_request(&http, Method::GET, &url, &idle, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    emulator.emulator().advance_clock(Duration::from_secs(60));
    assert_eq!(
        session_request(&http, Method::GET, &url, &life, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(http.get(&url, TOKEN).await.json(), json!({}));
}

// ---- direct authz, logout ----

#[tokio::test]
async fn direct_authz_issues_tokens_and_opens_a_session() {
    let emulator = start(lenient_config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let client = web_client(&http, &base).await;
    let response = http
        .json(
            Method::POST,
            &format!("{base}/direct-authz/rest/v2"),
            TOKEN,
            json!({
                "sub": "vera",
                "client_id": id(&client),
                "scope": ["openid", "email"],
                "long_lived": true,
                "refresh_token": { "rotate": true },
                "access_token": { "lifetime": 120 },
                "sub_session": { "amr": ["mfa"] },
            }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(response["expires_in"], 120);
    assert!(response["id_token"].is_string());
    let sub_sid = response["sub_sid"].as_str().unwrap();
    let session = session_request(&http, Method::GET, &sessions_url(&emulator), sub_sid, None)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(session["sub"], "vera");
    assert_eq!(session["amr"], json!(["mfa"]));
    let record = authorization(&http, &base, "vera", id(&client))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(record["rft"], response["refresh_token"]);
    assert_eq!(record["rtr"], true);
    let unknown = http
        .json(
            Method::POST,
            &format!("{base}/direct-authz/rest/v2"),
            TOKEN,
            json!({ "sub": "x", "client_id": "nobody" }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.error(), "invalid_client");
}

#[tokio::test]
async fn logout_confirmation_ends_the_subject_session() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let sid = create_session(&http, &base, json!({ "sub": "walt" }), None).await;
    let url = format!("{base}/logout-sessions/rest/v1");
    let query = form(&[
        ("post_logout_redirect_uri", "https://app.example.com/bye"),
        ("state", "s"),
    ]);
    let confirm = http
        .json(
            Method::POST,
            &url,
            TOKEN,
            json!({ "query": query, "sub_sid": sid }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(confirm["type"], "confirm");
    assert_eq!(confirm["sub_session"]["sid"], sid);
    let logout_url = format!("{url}/{}", confirm["sid"].as_str().unwrap());
    let end = http
        .json(
            Method::PUT,
            &logout_url,
            TOKEN,
            json!({ "confirm_logout": true }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(end["type"], "end");
    assert_eq!(
        end["post_logout_redirect_uri"],
        "https://app.example.com/bye?state=s"
    );
    assert_eq!(
        session_request(&http, Method::GET, &sessions_url(&emulator), &sid, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http.get(&logout_url, TOKEN).await.status,
        StatusCode::NOT_FOUND
    );

    // No session: straight to the end.
    let end = http
        .json(
            Method::POST,
            &url,
            TOKEN,
            json!({ "query": query, "sub_sid": sid }),
        )
        .await
        .json();
    assert_eq!(end["type"], "end");

    // Declining or cancelling keeps the session.
    let kept = create_session(&http, &base, json!({ "sub": "walt" }), None).await;
    for method in [Method::PUT, Method::DELETE] {
        let confirm = http
            .json(
                Method::POST,
                &url,
                TOKEN,
                json!({ "query": "", "sub_sid": kept }),
            )
            .await
            .json();
        let logout_url = format!("{url}/{}", confirm["sid"].as_str().unwrap());
        let send = Send {
            bearer: Some(TOKEN),
            json: Some(json!({ "confirm_logout": false })),
            ..Send::default()
        };
        assert!(
            http.send(method, &logout_url, send)
                .await
                .status
                .is_success()
        );
        session_request(&http, Method::GET, &sessions_url(&emulator), &kept, None)
            .await
            .expect(StatusCode::OK);
    }
}

// ---- knobs, seeding ----

#[tokio::test]
async fn knobs_play_down_slow_and_failing() {
    let emulator = start(config(&JwkSet::generate())).await;
    let base = emulator.url();
    let http = Http::default();
    let knobs = format!("{base}/_emulator/knobs");
    let clients = format!("{base}/clients");

    http.json(Method::PUT, &knobs, TOKEN, json!({ "down": true }))
        .await
        .expect(StatusCode::OK);
    let dropped = http
        .try_send(
            Method::GET,
            &clients,
            Send {
                bearer: Some(TOKEN),
                ..Send::default()
            },
        )
        .await;
    assert!(dropped.is_err(), "connection dropped: {dropped:?}");
    // The test endpoints still answer.
    let state = http
        .get(&format!("{base}/_emulator/state"), TOKEN)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(state["counts"]["clients"], 0);
    http.json(
        Method::PUT,
        &knobs,
        TOKEN,
        json!({ "down": false, "latency_ms": 150 }),
    )
    .await
    .expect(StatusCode::OK);

    let started = Instant::now();
    http.get(&clients, TOKEN).await.expect(StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let settings = http
        .json(
            Method::PUT,
            &knobs,
            TOKEN,
            json!({ "latency_ms": 0, "error_rate": 1.0 }),
        )
        .await
        .json();
    assert_eq!(settings["error_rate"], 1.0);
    let failed = http.get(&clients, TOKEN).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failed.error(), "server_error");
    assert_eq!(http.get(&knobs, TOKEN).await.json()["error_rate"], 1.0);
    emulator.emulator().knobs().set_error_rate(0.0);
    http.get(&clients, TOKEN).await.expect(StatusCode::OK);

    // Knobs are bearer-protected and reject unknown settings.
    assert_eq!(
        http.send(Method::GET, &knobs, Send::default()).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http.json(Method::PUT, &knobs, TOKEN, json!({ "speed": 1 }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn seeded_records_are_deterministic_and_usable() {
    let jwks = JwkSet::generate();
    let mut seeded = lenient_config(&jwks);
    seeded.seed = 40;
    let emulator = start(seeded.clone()).await;
    let twin = start(seeded).await;
    let base = emulator.url();
    let http = Http::default();
    let counts = emulator.emulator().counts();
    assert_eq!(
        (counts.clients, counts.authorizations, counts.sessions),
        (40, 40, 40)
    );

    let clients = http
        .get(&format!("{base}/clients"), TOKEN)
        .await
        .expect(StatusCode::OK)
        .json();
    let clients = clients.as_array().unwrap();
    assert_eq!(clients.len(), 40);
    assert!(
        clients
            .iter()
            .any(|c| c["token_endpoint_auth_method"] == "none")
    );
    let twin_clients = http
        .get(&format!("{}/clients", twin.url()), TOKEN)
        .await
        .json();
    let strip = |list: &Value| -> Vec<Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|client| {
                let mut client = client.clone();
                client
                    .as_object_mut()
                    .unwrap()
                    .remove("registration_client_uri");
                client
            })
            .collect()
    };
    assert_eq!(strip(&twin_clients), strip(&Value::Array(clients.clone())));

    let authorizations = http
        .get(&format!("{base}/authz-store/rest/v3/authorizations"), TOKEN)
        .await
        .json();
    let authorizations = authorizations.as_array().unwrap();
    assert_eq!(authorizations.len(), 40);
    assert!(authorizations.iter().any(|a| a["rtr"] == true));
    let sessions = http.get(&sessions_url(&emulator), TOKEN).await.json();
    assert_eq!(sessions.as_object().unwrap().len(), 40);

    // A seeded refresh token works with its seeded client; the rotation
    // materialises the record without duplicating it.
    let record = authorizations
        .iter()
        .find(|record| {
            let client = clients
                .iter()
                .find(|c| c["client_id"] == record["cid"])
                .unwrap();
            record["rtr"] == true && client["token_endpoint_auth_method"] == "client_secret_basic"
        })
        .expect("a rotating record of a basic-auth client");
    let client = clients
        .iter()
        .find(|c| c["client_id"] == record["cid"])
        .unwrap();
    let refreshed = refresh(&http, &base, client, record["rft"].as_str().unwrap())
        .await
        .expect(StatusCode::OK)
        .json();
    let sub = record["sub"].as_str().unwrap();
    let after = authorization(&http, &base, sub, id(client)).await.json();
    assert_eq!(after["rft"], refreshed["refresh_token"]);
    assert_eq!(emulator.emulator().counts().authorizations, 40);
    let by_client = http
        .get(
            &format!(
                "{base}/authz-store/rest/v3/authorizations?client_id={}",
                id(client)
            ),
            TOKEN,
        )
        .await
        .json();
    assert!(
        by_client
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["sub"] == sub)
    );

    // A seeded SID works and a seeded client can be deleted.
    let (sid, session) = sessions.as_object().unwrap().iter().next().unwrap();
    let read = session_request(
        &http,
        Method::GET,
        &format!("{}?skip_last_used_update=true", sessions_url(&emulator)),
        sid,
        None,
    )
    .await
    .json();
    assert_eq!(&read, session);
    let url = format!("{base}/clients/{}", id(&clients[0]));
    assert_eq!(
        http.send(
            Method::DELETE,
            &url,
            Send {
                bearer: Some(TOKEN),
                ..Send::default()
            }
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(emulator.emulator().counts().clients, 39);
    assert_eq!(http.get(&url, TOKEN).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn state_dumps_each_dataset() {
    let jwks = JwkSet::generate();
    let mut seeded = lenient_config(&jwks);
    seeded.seed = 3;
    let emulator = start(seeded).await;
    let http = Http::default();
    let state = |dataset: &str| {
        let http = http.clone();
        let url = format!("{}/_emulator/state?dataset={dataset}", emulator.url());
        async move { http.get(&url, TOKEN).await.expect(StatusCode::OK).json() }
    };
    assert_eq!(state("clients").await.as_array().unwrap().len(), 3);
    assert_eq!(state("authorizations").await.as_array().unwrap().len(), 3);
    assert_eq!(state("sessions").await.as_object().unwrap().len(), 3);
    assert_eq!(state("revocations").await, json!([]));
    let summary = http
        .get(&format!("{}/_emulator/state", emulator.url()), TOKEN)
        .await
        .json();
    assert_eq!(
        summary["counts"],
        json!({ "clients": 3, "authorizations": 3, "sessions": 3, "revocations": 0 })
    );
    assert_eq!(summary["seed"], 3);
    let unknown = http
        .get(
            &format!("{}/_emulator/state?dataset=nope", emulator.url()),
            TOKEN,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    // Read-back matches the HTTP view.
    assert_eq!(
        Value::Array(emulator.emulator().clients()),
        state("clients").await
    );
    assert_eq!(
        Value::Array(emulator.emulator().authorizations()),
        state("authorizations").await
    );
    assert_eq!(
        Value::Object(emulator.emulator().sessions()),
        state("sessions").await
    );
}

#[tokio::test]
async fn unknown_issuer_header_is_refused() {
    let emulator = start(config(&JwkSet::generate())).await;
    let http = Http::default();
    let url = format!("{}/clients", emulator.url());
    let send = |issuer: String| Send {
        bearer: Some(TOKEN),
        headers: vec![("Issuer", issuer)],
        ..Send::default()
    };
    let refused = http
        .send(
            Method::GET,
            &url,
            send("https://alias.example.com".to_owned()),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    http.send(Method::GET, &url, send(emulator.url()))
        .await
        .expect(StatusCode::OK);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let emulator = start(config(&JwkSet::generate())).await;
    let http = Http::default();
    let url = format!("{}/jwks.json", emulator.url());
    http.send(Method::GET, &url, Send::default())
        .await
        .expect(StatusCode::OK);
    emulator.shutdown().await;
    // A new connection is refused once the listener is gone.
    let fresh = Http::default();
    assert!(
        fresh
            .try_send(Method::GET, &url, Send::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn emulate_command_reports_bad_options() {
    use handover::emulator::connect2id::{Error, Options, Strictness, run};
    use tokio_util::sync::CancellationToken;

    let options = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_token: TOKEN.to_owned(),
        seed: 0,
        jwks: None,
        base_path: "/c2id".to_owned(),
        issuer: None,
        latency_ms: 0,
        error_rate: 0.0,
        strictness: Strictness::default(),
        tenants: Vec::new(),
        issuer_aliases: Vec::new(),
    };
    let bad_base = Options {
        base_path: "c2id/".to_owned(),
        ..options.clone()
    };
    let err = run(bad_base, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, Error::BasePath { .. }), "{err}");
    let duplicate_tenant = Options {
        tenants: vec!["acme".to_owned(), "acme".to_owned()],
        ..options.clone()
    };
    let err = run(duplicate_tenant, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tenant { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    // A file that does not exist is created with a new set; one that cannot
    // be created is an error naming it.
    let missing = dir.path().join("no-such-dir").join("missing.json");
    let err = run(
        Options {
            base_path: "/c2id".to_owned(),
            jwks: Some(missing),
            ..options.clone()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");

    let mut set: Value = serde_json::from_str(&JwkSet::generate().to_json()).unwrap();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|key| key["kid"] != "hmac");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, set.to_string()).unwrap();
    let err = run(
        Options {
            jwks: Some(file),
            ..options.clone()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("\"hmac\""), "{err}");

    // Good options: serves until cancelled.
    let jwks_file = dir.path().join("good.json");
    std::fs::write(&jwks_file, JwkSet::generate().to_json()).unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        Options {
            jwks: Some(jwks_file),
            seed: 2,
            ..options
        },
        cancel.clone(),
    ));
    cancel.cancel();
    task.await.unwrap().unwrap();
}
