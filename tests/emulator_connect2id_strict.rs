//! Black-box tests of the Connect2id emulator's strictness switches: for
//! each behaviour in which a real server may differ from the emulator's
//! lenient reading, one test proves both readings over real HTTP.

// Helpers outside #[test] functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use handover::emulator::connect2id::{Config, Handle, Preset, Strictness, strictness_from_flags};
use handover::emulator::jwks::JwkSet;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::c2id::{Http, Reply, Send, TOKEN, config, form, start};

const REDIRECT: &str = "https://app.example.com/cb";

// ---- helpers ----

fn preset(strict: bool) -> Strictness {
    if strict {
        Strictness::real()
    } else {
        Strictness::lenient()
    }
}

fn config_with(jwks: &JwkSet, strictness: Strictness) -> Config {
    let mut config = config(jwks);
    config.strictness = strictness;
    config
}

async fn start_with(strictness: Strictness) -> Handle {
    start(config_with(&JwkSet::generate(), strictness)).await
}

/// Source and target: the same keys and issuer, as a migration requires.
async fn source_and_target(strictness: Strictness) -> (Handle, Handle) {
    let jwks = JwkSet::generate();
    let issuer = "https://login.example.com/c2id".to_owned();
    let mut source = config_with(&jwks, strictness);
    source.issuer = Some(issuer.clone());
    let mut target = config_with(&jwks, strictness);
    target.issuer = Some(issuer);
    (start(source).await, start(target).await)
}

async fn register(http: &Http, base: &str, body: Value) -> Value {
    http.json(Method::POST, &format!("{base}/clients"), TOKEN, body)
        .await
        .expect(StatusCode::CREATED)
        .json()
}

async fn web_client(http: &Http, base: &str) -> Value {
    register(
        http,
        base,
        json!({
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "Strict App",
        }),
    )
    .await
}

/// Registers `client` (as another server answered it) here with the same
/// credentials, as a migration imports it.
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
    ])
}

/// A full login of `sub` asking for `scope`; the final response.
async fn login_scope(
    http: &Http,
    base: &str,
    client_id: &str,
    sub: &str,
    scope: &str,
    consent: Value,
) -> Value {
    let prompt = start_authz(http, base, &authz_query(client_id, scope), None).await;
    assert_eq!(prompt["type"], "auth", "{prompt}");
    let url = format!(
        "{base}/authz-sessions/rest/v3/{}",
        prompt["sid"].as_str().unwrap()
    );
    let consent_prompt = http
        .json(
            Method::PUT,
            &url,
            TOKEN,
            json!({ "sub": sub, "amr": ["pwd"] }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(consent_prompt["type"], "consent", "{consent_prompt}");
    let response = http
        .json(Method::PUT, &url, TOKEN, consent)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(response["type"], "response", "{response}");
    response
}

fn code_of(response: &Value) -> String {
    let uri = response["parameters"]["uri"].as_str().unwrap();
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

/// Logs `sub` in for `openid email` and redeems the code.
async fn login_tokens(http: &Http, base: &str, client: &Value, sub: &str, consent: Value) -> Value {
    let response = login_scope(http, base, id(client), sub, "openid email", consent).await;
    let mut tokens = redeem(http, base, client, &code_of(&response))
        .await
        .expect(StatusCode::OK)
        .json();
    tokens["sub_sid"] = response["sub_sid"].clone();
    tokens
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

async fn revoke(http: &Http, base: &str, client: &Value, pairs: Vec<(&str, &str)>) {
    http.post_form_basic(
        &format!("{base}/token/revoke"),
        id(client),
        secret(client),
        pairs,
    )
    .await
    .expect(StatusCode::OK);
}

fn long_lived(rotate: Option<bool>) -> Value {
    let mut refresh = json!({ "issue": true });
    if let Some(rotate) = rotate {
        refresh["rotate"] = rotate.into();
    }
    json!({
        "scope": ["openid", "email"],
        "long_lived": true,
        "refresh_token": refresh,
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

async fn import_authorization(http: &Http, base: &str, record: &Value) -> Reply {
    http.json(
        Method::POST,
        &format!("{base}/authz-store/rest/v3/authorizations?import=true"),
        TOKEN,
        record.clone(),
    )
    .await
}

async fn inspect(http: &Http, base: &str, name: &str, token: &str) -> Reply {
    http.post_form_bearer(
        &format!("{base}/authz-store/rest/v3/inspection"),
        TOKEN,
        vec![(name, token)],
    )
    .await
}

fn sessions_url(base: &str) -> String {
    format!("{base}/session-store/rest/v2/sessions")
}

async fn session_request(http: &Http, method: Method, url: &str, sid: &str) -> Reply {
    let send = Send {
        bearer: Some(TOKEN),
        headers: vec![("SID", sid.to_owned())],
        ..Send::default()
    };
    http.send(method, url, send).await
}

/// Reads a session without bumping its idle timer.
async fn peek_session(http: &Http, base: &str, sid: &str) -> Reply {
    let url = format!("{}?skip_last_used_update=true", sessions_url(base));
    session_request(http, Method::GET, &url, sid).await
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
    http.send(Method::POST, &sessions_url(base), send)
        .await
        .expect(StatusCode::CREATED)
        .json()["sid"]
        .as_str()
        .unwrap()
        .to_owned()
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

async fn delete(http: &Http, url: &str, bearer: &str) -> Reply {
    let send = Send {
        bearer: Some(bearer),
        ..Send::default()
    };
    http.send(Method::DELETE, url, send).await
}

/// Polls `check` until it holds, failing after five seconds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Decodes `%XX` escapes (logout tokens arrive form-encoded).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A relying party's back-channel logout endpoint: records every body.
struct LogoutReceiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    _stop: tokio_util::sync::DropGuard,
}

impl LogoutReceiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let handler = move |request: Request<Incoming>, _peer: SocketAddr| {
            let seen = seen.clone();
            async move {
                let body = handover::http::read_body(request.into_body(), 1 << 16).await?;
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let response: Response<handover::http::Body> =
                    handover::http::empty_response(StatusCode::OK);
                Ok::<_, handover::http::BoxError>(response)
            }
        };
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(handover::http::serve(listener, handler, stop.clone()));
        Self {
            url: format!("http://{addr}/logout"),
            bodies,
            _stop: stop.drop_guard(),
        }
    }

    fn tokens(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|body| {
                let encoded = body.strip_prefix("logout_token=").unwrap();
                percent_decode(encoded)
            })
            .collect()
    }
}

// ---- 1. /jwks.json ----

#[tokio::test]
async fn jwks_publishes_only_public_asymmetric_keys_in_both_readings() {
    let mut set: Value = serde_json::from_str(&JwkSet::generate().to_json()).unwrap();
    let keys = set["keys"].as_array_mut().unwrap();
    keys.push(json!({
        "kty": "RSA", "kid": "rsa-1", "use": "sig", "n": "bW9kdWx1cw", "e": "AQAB",
        "d": "cHJpdmF0ZQ", "p": "cA", "q": "cQ", "dp": "ZHA", "dq": "ZHE", "qi": "cWk",
    }));
    keys.push(json!({ "kty": "oct", "kid": "subject-encrypt", "k": "c2VjcmV0LTE" }));
    keys.push(json!({ "kty": "oct", "kid": "at-dir", "use": "enc", "k": "c2VjcmV0LTI" }));
    keys.push(json!({ "kty": "weird", "kid": "odd", "k": "c2VjcmV0LTM" }));
    let jwks = JwkSet::from_json(&set.to_string()).unwrap();
    for strict in [false, true] {
        let emulator = start(config_with(&jwks, preset(strict))).await;
        let http = Http::default();
        let published = http
            .send(
                Method::GET,
                &format!("{}/jwks.json", emulator.url()),
                Send::default(),
            )
            .await
            .expect(StatusCode::OK)
            .json();
        let keys = published["keys"].as_array().unwrap();
        let kinds: Vec<(&str, &str)> = keys
            .iter()
            .map(|key| (key["kid"].as_str().unwrap(), key["kty"].as_str().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [("sig-1", "OKP"), ("rsa-1", "RSA")],
            "strict={strict}"
        );
        for key in keys {
            for member in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(key.get(member).is_none(), "{member} published: {key}");
            }
        }
        assert_eq!(keys[1]["n"], "bW9kdWx1cw");
    }
}

// ---- 2. refresh tokens: random nonce, default rotation ----

#[tokio::test]
async fn refresh_token_strings_are_stable_leniently_and_all_differ_strictly() {
    for strict in [false, true] {
        let (source, target) = source_and_target(preset(strict)).await;
        let stranger = start_with(preset(strict)).await;
        let http = Http::default();
        let client = web_client(&http, &source.url()).await;
        let tokens = login_tokens(&http, &source.url(), &client, "ann", long_lived(None)).await;
        let held = tokens["refresh_token"].as_str().unwrap().to_owned();
        let first = authorization(&http, &source.url(), "ann", id(&client))
            .await
            .expect(StatusCode::OK)
            .json();
        let second = source.emulator().authorization("ann", id(&client)).unwrap();
        let exported = [
            first["rft"].as_str().unwrap().to_owned(),
            second["rft"].as_str().unwrap().to_owned(),
        ];
        if strict {
            assert_ne!(exported[0], held, "the export recreates the token");
            assert_ne!(exported[0], exported[1], "every read recreates it");
        } else {
            assert_eq!(exported[0], held);
            assert_eq!(exported[1], held);
        }

        // Every string is accepted here: inspection echoes what it was
        // given, the non-rotating refresh grant works.
        for token in [&held, &exported[0], &exported[1]] {
            let found = inspect(&http, &source.url(), "refresh_token", token)
                .await
                .expect(StatusCode::OK)
                .json();
            assert_eq!(found["rft"], token.as_str());
            assert_eq!(found["rts"], first["rts"]);
            let refreshed = refresh(&http, &source.url(), &client, token)
                .await
                .expect(StatusCode::OK)
                .json();
            assert!(refreshed.get("refresh_token").is_none(), "no rotation");
        }

        // ... and by any server with the key once the record is imported,
        // from whichever export.
        import_client(&http, &target.url(), &client).await;
        import_client(&http, &stranger.url(), &client).await;
        for server in [&target, &stranger] {
            import_authorization(&http, &server.url(), &first)
                .await
                .expect(StatusCode::CREATED);
        }
        let on_target = target.emulator().authorization("ann", id(&client)).unwrap();
        assert_eq!(on_target["rts"], first["rts"]);
        assert_eq!(on_target["rft"] == first["rft"], !strict);
        for token in [&held, &exported[1]] {
            refresh(&http, &target.url(), &client, token)
                .await
                .expect(StatusCode::OK);
            inspect(&http, &target.url(), "refresh_token", token)
                .await
                .expect(StatusCode::OK);
            assert_eq!(
                refresh(&http, &stranger.url(), &client, token)
                    .await
                    .error(),
                "invalid_grant",
                "another key opens nothing"
            );
        }
    }
}

#[tokio::test]
async fn default_rotate_decides_when_the_consent_is_silent() {
    let rotating = Strictness {
        default_rotate: true,
        ..Strictness::lenient()
    };
    for (strictness, rotates) in [
        (Strictness::lenient(), false),
        (Strictness::real(), false),
        (rotating, true),
    ] {
        let emulator = start_with(strictness).await;
        let base = emulator.url();
        let http = Http::default();
        let client = web_client(&http, &base).await;
        let silent = login_tokens(&http, &base, &client, "bob", long_lived(None)).await;
        let refreshed = refresh(
            &http,
            &base,
            &client,
            silent["refresh_token"].as_str().unwrap(),
        )
        .await
        .expect(StatusCode::OK)
        .json();
        assert_eq!(refreshed.get("refresh_token").is_some(), rotates);
        let record = emulator
            .emulator()
            .authorization("bob", id(&client))
            .unwrap();
        assert_eq!(record["rtr"], rotates);
        // The consent's own choice wins over the server default.
        let explicit = login_tokens(&http, &base, &client, "cid", long_lived(Some(false))).await;
        let refreshed = refresh(
            &http,
            &base,
            &client,
            explicit["refresh_token"].as_str().unwrap(),
        )
        .await
        .expect(StatusCode::OK)
        .json();
        assert!(refreshed.get("refresh_token").is_none());
    }
}

// ---- 3. sessions ----

#[tokio::test]
async fn sso_start_bumps_last_used_only_strictly() {
    for strict in [false, true] {
        let emulator = start_with(preset(strict)).await;
        let base = emulator.url();
        let http = Http::default();
        let client = web_client(&http, &base).await;
        let tokens = login_tokens(&http, &base, &client, "dora", long_lived(None)).await;
        let sid = tokens["sub_sid"].as_str().unwrap();
        let before = peek_session(&http, &base, sid).await.json()["last_used"]
            .as_u64()
            .unwrap();
        emulator.emulator().advance_clock(Duration::from_secs(100));
        let prompt =
            start_authz(&http, &base, &authz_query(id(&client), "openid"), Some(sid)).await;
        assert_eq!(prompt["type"], "consent", "SSO found the session");
        let after = peek_session(&http, &base, sid).await.json()["last_used"]
            .as_u64()
            .unwrap();
        assert_eq!(after, if strict { before + 100 } else { before });
        // GET by SID bumps in both readings.
        emulator.emulator().advance_clock(Duration::from_secs(10));
        session_request(&http, Method::GET, &sessions_url(&base), sid)
            .await
            .expect(StatusCode::OK);
        let bumped = peek_session(&http, &base, sid).await.json()["last_used"]
            .as_u64()
            .unwrap();
        assert_eq!(bumped, before + 110);
    }
}

#[tokio::test]
async fn idle_sessions_expire_and_sso_keeps_them_alive_only_strictly() {
    for strict in [false, true] {
        let strictness = Strictness {
            session_max_idle_minutes: 1,
            ..preset(strict)
        };
        let emulator = start_with(strictness).await;
        let base = emulator.url();
        let http = Http::default();
        let client = web_client(&http, &base).await;
        let tokens = login_tokens(&http, &base, &client, "eve", long_lived(None)).await;
        let sid = tokens["sub_sid"].as_str().unwrap();
        assert_eq!(peek_session(&http, &base, sid).await.json()["max_idle"], 1);
        let sso = authz_query(id(&client), "openid");

        emulator.emulator().advance_clock(Duration::from_secs(40));
        assert_eq!(
            start_authz(&http, &base, &sso, Some(sid)).await["type"],
            "consent"
        );
        emulator.emulator().advance_clock(Duration::from_secs(40));
        // 80 s since the login, 40 s since the SSO use.
        let alive = peek_session(&http, &base, sid).await;
        if strict {
            alive.expect(StatusCode::OK);
        } else {
            assert_eq!(alive.status, StatusCode::NOT_FOUND, "idle since the login");
            assert_eq!(
                start_authz(&http, &base, &sso, Some(sid)).await["type"],
                "auth"
            );
            continue;
        }
        // Strictly too, a session nobody uses idles out: gone from GET and
        // from SSO.
        emulator.emulator().advance_clock(Duration::from_secs(61));
        assert_eq!(
            peek_session(&http, &base, sid).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            start_authz(&http, &base, &sso, Some(sid)).await["type"],
            "auth"
        );
    }
}

#[tokio::test]
async fn session_import_keeps_last_used_only_leniently() {
    for strict in [false, true] {
        let emulator = start_with(preset(strict)).await;
        let base = emulator.url();
        let http = Http::default();
        let now = emulator.emulator().now();
        let key = "imported-session-key-0123456789abcdefghijklm";
        let sid = create_session(
            &http,
            &base,
            json!({
                "sub": "fay", "creation_time": now - 5000, "last_used": now - 1000,
                "auth_time": now - 5000, "max_idle": 14_400,
            }),
            Some(key),
        )
        .await;
        assert!(sid.starts_with(key));
        let session = peek_session(&http, &base, &sid)
            .await
            .expect(StatusCode::OK)
            .json();
        assert_eq!(
            session["creation_time"],
            now - 5000,
            "kept in both readings"
        );
        let last_used = session["last_used"].as_u64().unwrap();
        if strict {
            assert!(last_used >= now, "reset to now: {last_used} < {now}");
        } else {
            assert_eq!(last_used, now - 1000);
        }
    }
}

#[tokio::test]
async fn expired_sessions_are_purged_in_the_background_only_with_an_interval() {
    let purging = start_with(Strictness {
        session_purge_interval_secs: 1,
        ..Strictness::real()
    })
    .await;
    let idle = start_with(Strictness::lenient()).await;
    let http = Http::default();
    for emulator in [&purging, &idle] {
        create_session(
            &http,
            &emulator.url(),
            json!({ "sub": "pia", "max_idle": 1 }),
            None,
        )
        .await;
        emulator.emulator().advance_clock(Duration::from_secs(61));
        assert_eq!(
            emulator.emulator().counts().sessions,
            1,
            "expired, not yet removed"
        );
    }
    eventually("the background purge", || {
        purging.emulator().counts().sessions == 0
    })
    .await;
    // The same second passed for the other one, whose interval is 0.
    assert_eq!(idle.emulator().counts().sessions, 1);
    assert_eq!(idle.emulator().purge_expired_sessions(), 1);
    assert_eq!(idle.emulator().counts().sessions, 0);
}

// ---- 4. client delete ----

#[tokio::test]
async fn client_delete_cascades_and_revokes_only_strictly() {
    for strict in [false, true] {
        let emulator = start_with(preset(strict)).await;
        let base = emulator.url();
        let http = Http::default();
        let client = web_client(&http, &base).await;
        let tokens = login_tokens(&http, &base, &client, "gus", long_lived(None)).await;
        let record = authorization(&http, &base, "gus", id(&client))
            .await
            .expect(StatusCode::OK)
            .json();
        emulator.emulator().advance_clock(Duration::from_secs(5));
        delete(&http, &format!("{base}/clients/{}", id(&client)), TOKEN)
            .await
            .expect(StatusCode::NO_CONTENT);
        let after = authorization(&http, &base, "gus", id(&client)).await;
        let journal = emulator.emulator().revocations();
        if strict {
            assert_eq!(after.status, StatusCode::NOT_FOUND, "cascaded");
            assert_eq!(journal.len(), 1);
            assert_eq!(journal[0].client_id.as_deref(), Some(id(&client)));
            assert_eq!(journal[0].subject, None, "the whole client");
        } else {
            after.expect(StatusCode::OK);
            assert!(journal.is_empty());
        }

        // Delete + create (how a proxy replays a client change) and the
        // record re-imported with its original times: strictly the client's
        // tokens from before the delete stay revoked.
        import_client(&http, &base, &client).await;
        import_authorization(&http, &base, &record).await;
        let rt = tokens["refresh_token"].as_str().unwrap();
        let at = tokens["access_token"].as_str().unwrap();
        if strict {
            assert_eq!(
                refresh(&http, &base, &client, rt).await.error(),
                "invalid_grant"
            );
            assert_eq!(introspect(&http, &base, &client, at).await["active"], false);
        } else {
            refresh(&http, &base, &client, rt)
                .await
                .expect(StatusCode::OK);
            assert_eq!(introspect(&http, &base, &client, at).await["active"], true);
        }
        // New tokens of the re-created client work in both readings.
        let fresh = login_tokens(&http, &base, &client, "gus", long_lived(None)).await;
        refresh(
            &http,
            &base,
            &client,
            fresh["refresh_token"].as_str().unwrap(),
        )
        .await
        .expect(StatusCode::OK);
    }
}

// ---- 5. import for an unknown client ----

#[tokio::test]
async fn authorization_import_for_an_unknown_client_is_refused_only_strictly() {
    for strict in [false, true] {
        let emulator = start_with(preset(strict)).await;
        let http = Http::default();
        let record = json!({ "sub": "hal", "cid": "not-registered", "scp": ["openid"], "iat": 1 });
        let reply = import_authorization(&http, &emulator.url(), &record).await;
        if strict {
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            assert_eq!(reply.error(), "invalid_client");
            assert_eq!(emulator.emulator().counts().authorizations, 0);
        } else {
            reply.expect(StatusCode::CREATED);
        }
        // Once the client exists, both readings import.
        register(
            &http,
            &emulator.url(),
            json!({ "preferred_client_id": "not-registered", "grant_types": ["client_credentials"] }),
        )
        .await;
        let again = import_authorization(&http, &emulator.url(), &record).await;
        assert!(again.status.is_success(), "{:?}", again.status);
    }
}

// ---- 6. direct access token inspection ----

#[tokio::test]
async fn access_token_inspection_is_refused_only_strictly() {
    for strict in [false, true] {
        let emulator = start_with(preset(strict)).await;
        let base = emulator.url();
        let http = Http::default();
        let client = web_client(&http, &base).await;
        let tokens = login_tokens(&http, &base, &client, "ivy", long_lived(None)).await;
        let at = tokens["access_token"].as_str().unwrap();
        for name in ["access_token", "token"] {
            let reply = inspect(&http, &base, name, at).await;
            if strict {
                assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}");
                assert_eq!(reply.error(), "invalid_request");
            } else {
                assert_eq!(reply.expect(StatusCode::OK).json()["sub"], "ivy");
            }
        }
        let rt = tokens["refresh_token"].as_str().unwrap();
        for name in ["refresh_token", "token"] {
            inspect(&http, &base, name, rt).await.expect(StatusCode::OK);
        }
    }
}

// ---- 7. tenants and issuer aliases ----

#[tokio::test]
async fn tenants_have_their_own_stores_and_issuers() {
    let mut config = config(&JwkSet::generate());
    config.tenants = vec!["acme".to_owned()];
    let emulator = start(config).await;
    let base = emulator.url();
    let http = Http::default();
    let with = |headers: Vec<(&'static str, String)>, json: Option<Value>| Send {
        bearer: Some(TOKEN),
        headers,
        json,
        ..Send::default()
    };
    let acme = || vec![("Tenant-ID", "acme".to_owned())];
    let created = http
        .send(
            Method::POST,
            &format!("{base}/clients"),
            with(
                acme(),
                Some(json!({ "grant_types": ["client_credentials"], "client_name": "Acme" })),
            ),
        )
        .await
        .expect(StatusCode::CREATED)
        .json();
    let acme_issuer = format!("{base}/acme");
    assert_eq!(
        created["registration_client_uri"],
        format!("{acme_issuer}/clients/{}", id(&created))
    );
    // Without the header: the default tenant, which does not have it.
    let default_clients = http.get(&format!("{base}/clients"), TOKEN).await.json();
    assert_eq!(default_clients, json!([]));
    let acme_clients = http
        .send(Method::GET, &format!("{base}/clients"), with(acme(), None))
        .await
        .json();
    assert_eq!(acme_clients.as_array().unwrap().len(), 1);
    assert_eq!(emulator.emulator().counts().clients, 0);
    assert_eq!(
        emulator.emulator().tenant("acme").unwrap().counts().clients,
        1
    );

    // Discovery and tokens carry the tenant's issuer; the tenant is also
    // chosen by its issuer in `Issuer`.
    let discovery_url = format!("{base}/.well-known/openid-configuration");
    let discovery = http
        .send(Method::GET, &discovery_url, with(acme(), None))
        .await
        .json();
    assert_eq!(discovery["issuer"], acme_issuer);
    let by_issuer = http
        .send(
            Method::GET,
            &discovery_url,
            with(vec![("Issuer", acme_issuer.clone())], None),
        )
        .await
        .json();
    assert_eq!(by_issuer["issuer"], acme_issuer);
    let token = http
        .send(
            Method::POST,
            &format!("{base}/token"),
            Send {
                basic: Some((id(&created), secret(&created))),
                headers: acme(),
                form: Some(vec![("grant_type", "client_credentials")]),
                ..Send::default()
            },
        )
        .await
        .expect(StatusCode::OK)
        .json();
    let (_, claims) = jwt_parts(token["access_token"].as_str().unwrap());
    assert_eq!(claims["iss"], acme_issuer);
    // The same client does not exist in the default tenant.
    let elsewhere = http
        .post_form_basic(
            &format!("{base}/token"),
            id(&created),
            secret(&created),
            vec![("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::UNAUTHORIZED);

    // Unknown tenants and disagreeing headers are refused.
    let unknown = http
        .send(
            Method::GET,
            &discovery_url,
            with(vec![("Tenant-ID", "nope".to_owned())], None),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let conflict = http
        .send(
            Method::GET,
            &discovery_url,
            with(
                vec![("Tenant-ID", "acme".to_owned()), ("Issuer", base.clone())],
                None,
            ),
        )
        .await;
    assert_eq!(conflict.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_regular_edition_ignores_tenant_id() {
    let emulator = start_with(Strictness::real()).await;
    let http = Http::default();
    let send = Send {
        bearer: Some(TOKEN),
        headers: vec![("Tenant-ID", "acme".to_owned())],
        ..Send::default()
    };
    let discovery = http
        .send(
            Method::GET,
            &format!("{}/.well-known/openid-configuration", emulator.url()),
            send,
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(discovery["issuer"], emulator.url());
}

#[tokio::test]
async fn issuer_aliases_share_the_stores_but_bind_access_tokens() {
    let alias = "https://alias.example.com/c2id".to_owned();
    let mut config = config(&JwkSet::generate());
    config.issuer_aliases = vec![alias.clone()];
    let emulator = start(config).await;
    let base = emulator.url();
    let http = Http::default();
    // Registered without the header, used under the alias: one store.
    let client = register(
        &http,
        &base,
        json!({ "grant_types": ["client_credentials"], "client_name": "Both" }),
    )
    .await;
    let token = http
        .send(
            Method::POST,
            &format!("{base}/token"),
            Send {
                basic: Some((id(&client), secret(&client))),
                headers: vec![("Issuer", alias.clone())],
                form: Some(vec![("grant_type", "client_credentials")]),
                ..Send::default()
            },
        )
        .await
        .expect(StatusCode::OK)
        .json();
    let at = token["access_token"].as_str().unwrap();
    assert_eq!(jwt_parts(at).1["iss"], alias, "minted under the alias");
    let under_alias = http
        .send(
            Method::POST,
            &format!("{base}/token/introspect"),
            Send {
                basic: Some((id(&client), secret(&client))),
                headers: vec![("Issuer", alias.clone())],
                form: Some(vec![("token", at)]),
                ..Send::default()
            },
        )
        .await
        .json();
    assert_eq!(under_alias["active"], true);
    assert_eq!(introspect(&http, &base, &client, at).await["active"], false);
    // Discovery under the alias; an unknown issuer is still refused.
    let discovery_url = format!("{base}/.well-known/openid-configuration");
    let send = |issuer: &str| Send {
        headers: vec![("Issuer", issuer.to_owned())],
        ..Send::default()
    };
    let discovery = http
        .send(Method::GET, &discovery_url, send(&alias))
        .await
        .json();
    assert_eq!(discovery["issuer"], alias);
    assert_eq!(discovery["token_endpoint"], format!("{alias}/token"));
    let unknown = http
        .send(
            Method::GET,
            &discovery_url,
            send("https://other.example.com"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

// ---- 8. legacy API paths ----

#[tokio::test]
async fn legacy_api_paths_follow_the_server_version() {
    let v18 = Strictness {
        server_version: Some(18),
        ..Strictness::real()
    };
    for (strictness, v2_store, pre17) in [
        (Strictness::lenient(), false, false),
        (Strictness::real(), true, true),
        (v18, true, false),
    ] {
        let emulator = start_with(strictness).await;
        let base = emulator.url();
        let http = Http::default();
        let client = register(
            &http,
            &base,
            json!({ "redirect_uris": [REDIRECT], "grant_types": ["authorization_code"] }),
        )
        .await;
        let list = http
            .get(&format!("{base}/authz-store/rest/v2/authorizations"), TOKEN)
            .await;
        let revoked = http
            .post_form_bearer(
                &format!("{base}/authz-store/rest/v2/revocation"),
                TOKEN,
                vec![("subject", "nobody")],
            )
            .await;
        if v2_store {
            assert_eq!(list.expect(StatusCode::OK).json(), json!([]));
            assert_eq!(revoked.status, StatusCode::NOT_FOUND, "v2: no match is 404");
        } else {
            assert_eq!(list.status, StatusCode::NOT_FOUND);
            assert_eq!(revoked.status, StatusCode::NOT_FOUND);
        }
        let v3 = http
            .post_form_bearer(
                &format!("{base}/authz-store/rest/v3/revocation"),
                TOKEN,
                vec![("subject", "nobody")],
            )
            .await;
        assert_eq!(v3.status, StatusCode::NO_CONTENT, "v3: no match is 204");

        let direct = http
            .json(
                Method::POST,
                &format!("{base}/direct-authz/rest/v1"),
                TOKEN,
                json!({ "sub": "jon", "client_id": id(&client), "scope": ["openid"] }),
            )
            .await;
        let start_v1 = http
            .json(
                Method::POST,
                &format!("{base}/authz-sessions/rest/v1"),
                TOKEN,
                json!({ "query": authz_query(id(&client), "openid") }),
            )
            .await;
        if pre17 {
            assert!(direct.expect(StatusCode::OK).json()["access_token"].is_string());
            let prompt = start_v1.expect(StatusCode::OK).json();
            assert_eq!(prompt["type"], "auth");
            let sid = prompt["sid"].as_str().unwrap();
            http.get(&format!("{base}/authz-sessions/rest/v2/{sid}"), TOKEN)
                .await
                .expect(StatusCode::OK);
        } else {
            assert_eq!(direct.status, StatusCode::NOT_FOUND);
            assert_eq!(start_v1.status, StatusCode::NOT_FOUND);
        }
    }
}

// ---- 9. transient revocation, native SSO ----

#[tokio::test]
async fn a_revoked_transient_token_lives_on_at_a_server_that_did_not_see_the_revoke() {
    for strict in [false, true] {
        let (source, target) = source_and_target(preset(strict)).await;
        let http = Http::default();
        let client = web_client(&http, &source.url()).await;
        import_client(&http, &target.url(), &client).await;
        let transient = json!({
            "scope": ["openid", "email"], "long_lived": false,
            "refresh_token": { "issue": true },
        });
        let tokens = login_tokens(&http, &source.url(), &client, "kim", transient).await;
        let rt = tokens["refresh_token"].as_str().unwrap();
        let at = tokens["access_token"].as_str().unwrap();
        assert_eq!(
            target.emulator().counts().authorizations,
            0,
            "nothing to import"
        );

        source.emulator().advance_clock(Duration::from_secs(2));
        revoke(&http, &source.url(), &client, vec![("token", rt)]).await;
        let journal = source.emulator().revocations();
        assert_eq!(journal.len(), 1);
        assert_eq!(journal[0].subject.as_deref(), Some("kim"));
        assert_eq!(journal[0].client_id.as_deref(), Some(id(&client)));
        assert_eq!(
            refresh(&http, &source.url(), &client, rt).await.error(),
            "invalid_grant"
        );
        assert_eq!(
            introspect(&http, &source.url(), &client, at).await["active"],
            false
        );

        // The target never saw the revocation: the same tokens still work.
        refresh(&http, &target.url(), &client, rt)
            .await
            .expect(StatusCode::OK);
        assert_eq!(
            introspect(&http, &target.url(), &client, at).await["active"],
            true
        );
        // Replaying the revoke there closes the gap.
        revoke(&http, &target.url(), &client, vec![("token", at)]).await;
        assert_eq!(
            introspect(&http, &target.url(), &client, at).await["active"],
            false
        );
    }
}

#[tokio::test]
async fn device_secret_comes_with_native_sso_and_its_revocation_ends_the_device_session() {
    for strict in [false, true] {
        let (source, target) = source_and_target(preset(strict)).await;
        let http = Http::default();
        let base = source.url();
        let client = web_client(&http, &base).await;
        import_client(&http, &target.url(), &client).await;
        let consent = json!({
            "scope": ["openid", "device_sso"], "long_lived": true,
            "refresh_token": { "issue": true },
        });
        let response = login_scope(
            &http,
            &base,
            id(&client),
            "lou",
            "openid device_sso",
            consent,
        )
        .await;
        let tokens = redeem(&http, &base, &client, &code_of(&response))
            .await
            .expect(StatusCode::OK)
            .json();
        let rt = tokens["refresh_token"].as_str().unwrap();
        if !strict {
            assert!(tokens.get("device_secret").is_none(), "native SSO is off");
            continue;
        }
        let device_secret = tokens["device_secret"].as_str().unwrap();
        let device = peek_session(&http, &base, device_secret)
            .await
            .expect(StatusCode::OK)
            .json();
        assert_eq!(device["ctx"], "device", "the 16.x context name");
        assert_eq!(device["sub"], "lou");
        refresh(&http, &base, &client, rt)
            .await
            .expect(StatusCode::OK);

        // A target that imported the record and the device session accepts
        // the bound refresh token; one without the session does not.
        let record = source.emulator().authorization("lou", id(&client)).unwrap();
        import_authorization(&http, &target.url(), &record)
            .await
            .expect(StatusCode::CREATED);
        assert_eq!(
            refresh(&http, &target.url(), &client, rt).await.error(),
            "invalid_grant",
            "device session missing"
        );
        let key = device_secret.rsplit_once('.').unwrap().0;
        create_session(&http, &target.url(), device.clone(), Some(key)).await;
        refresh(&http, &target.url(), &client, rt)
            .await
            .expect(StatusCode::OK);

        // Revoking the device secret ends the session and disables the
        // refresh token here, not at the target.
        revoke(
            &http,
            &base,
            &client,
            vec![
                ("token", device_secret),
                ("token_type_hint", "device_secret"),
            ],
        )
        .await;
        assert_eq!(
            peek_session(&http, &base, device_secret).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            refresh(&http, &base, &client, rt).await.error(),
            "invalid_grant"
        );
        refresh(&http, &target.url(), &client, rt)
            .await
            .expect(StatusCode::OK);
        assert!(
            source.emulator().revocations().is_empty(),
            "no journal entry: access tokens stay valid"
        );
    }
}

// ---- 10. client updates ----

#[tokio::test]
async fn client_updates_follow_the_rotation_switches() {
    let keeping = Strictness {
        always_refresh_client_secret_on_update: false,
        refresh_access_token_on_update: false,
        ..Strictness::real()
    };
    for (strictness, rotates) in [
        (Strictness::lenient(), true),
        (Strictness::real(), true),
        (keeping, false),
    ] {
        let emulator = start_with(strictness).await;
        let base = emulator.url();
        let http = Http::default();
        // The server mints the registration access token on create and
        // import; a supplied one is ignored in every reading.
        let client = register(
            &http,
            &base,
            json!({
                "grant_types": ["client_credentials"],
                "client_name": "Rot",
                "registration_access_token": "supplied-by-the-caller",
            }),
        )
        .await;
        let url = format!("{base}/clients/{}", id(&client));
        let rat = client["registration_access_token"].as_str().unwrap();
        assert_ne!(rat, "supplied-by-the-caller");
        assert_eq!(
            http.get(&url, "supplied-by-the-caller").await.status,
            StatusCode::UNAUTHORIZED
        );
        let mut body = client.clone();
        body["client_name"] = "Renamed".into();
        let updated = http
            .json(Method::PUT, &url, rat, body.clone())
            .await
            .expect(StatusCode::OK)
            .json();
        assert_eq!(updated["client_secret"] != client["client_secret"], rotates);
        assert_eq!(
            updated["registration_access_token"] != client["registration_access_token"],
            rotates
        );
        // Only the current registration access token works.
        let current_rat = updated["registration_access_token"].as_str().unwrap();
        http.get(&url, current_rat).await.expect(StatusCode::OK);
        if rotates {
            assert_eq!(http.get(&url, rat).await.status, StatusCode::UNAUTHORIZED);
        }
        // `refresh_client_secret: true` always mints one (RN 12.9).
        body["refresh_client_secret"] = true.into();
        let forced = http
            .json(Method::PUT, &url, TOKEN, body.clone())
            .await
            .expect(StatusCode::OK)
            .json();
        assert_ne!(forced["client_secret"], updated["client_secret"]);
    }
}

#[tokio::test]
async fn preferred_client_secret_on_update_is_ignored_unless_switched_on() {
    let honouring = Strictness {
        preferred_client_secret_on_update: true,
        ..Strictness::real()
    };
    for (strictness, honoured) in [
        (Strictness::lenient(), false),
        (Strictness::real(), false),
        (honouring, true),
    ] {
        let emulator = start_with(strictness).await;
        let base = emulator.url();
        let http = Http::default();
        let client = register(
            &http,
            &base,
            json!({ "grant_types": ["client_credentials"] }),
        )
        .await;
        let url = format!("{base}/clients/{}", id(&client));
        let mut body = client.clone();
        body["preferred_client_secret"] = "chosen-secret-0123456789abcdefghijklmnop".into();
        let updated = http
            .json(Method::PUT, &url, TOKEN, body)
            .await
            .expect(StatusCode::OK)
            .json();
        assert_eq!(
            updated["client_secret"] == "chosen-secret-0123456789abcdefghijklmnop",
            honoured
        );
    }
}

#[tokio::test]
async fn client_secret_expiry_comes_from_the_server_lifetime_not_the_request() {
    let expiring = Strictness {
        client_secret_lifetime_secs: 3600,
        ..Strictness::real()
    };
    for (strictness, lifetime) in [(Strictness::lenient(), 0), (expiring, 3600)] {
        let emulator = start_with(strictness).await;
        let base = emulator.url();
        let http = Http::default();
        let now = emulator.emulator().now();
        let client = register(
            &http,
            &base,
            json!({
                "grant_types": ["client_credentials"],
                "preferred_client_secret": "imported-secret-0123456789abcdefghijklmn",
                "client_secret_expires_at": now + 10,
            }),
        )
        .await;
        let expected = if lifetime == 0 { 0 } else { now + lifetime };
        let expires = client["client_secret_expires_at"].as_u64().unwrap();
        assert!(
            expires == expected || expires == expected + 1,
            "{expires} vs {expected}"
        );
        emulator.emulator().advance_clock(Duration::from_secs(3601));
        let reply = http
            .post_form_basic(
                &format!("{base}/token"),
                id(&client),
                secret(&client),
                vec![("grant_type", "client_credentials")],
            )
            .await;
        if lifetime == 0 {
            reply.expect(StatusCode::OK);
        } else {
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
            assert_eq!(reply.error(), "invalid_client");
        }
    }
}

// ---- 11. PAR ----

async fn push(http: &Http, base: &str, client: &Value) -> Reply {
    http.post_form_basic(
        &format!("{base}/par"),
        id(client),
        secret(client),
        vec![
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", "openid email"),
            ("state", "pushed-state"),
        ],
    )
    .await
}

#[tokio::test]
async fn pushed_authorization_requests_are_single_use_bound_and_expire() {
    let longer = Strictness {
        par_lifetime_secs: 300,
        ..Strictness::real()
    };
    for (strictness, lifetime) in [(Strictness::lenient(), 60), (longer, 300)] {
        let (source, target) = source_and_target(strictness).await;
        let base = source.url();
        let http = Http::default();
        let client = web_client(&http, &base).await;
        let other = web_client(&http, &base).await;
        let pushed = push(&http, &base, &client)
            .await
            .expect(StatusCode::CREATED)
            .json();
        assert_eq!(pushed["expires_in"], lifetime);
        let uri = pushed["request_uri"].as_str().unwrap().to_owned();
        assert!(uri.starts_with("urn:ietf:params:oauth:request_uri:"));
        let query = form(&[("client_id", id(&client)), ("request_uri", &uri)]);
        let prompt = start_authz(&http, &base, &query, None).await;
        assert_eq!(prompt["type"], "auth", "{prompt}");
        assert_eq!(prompt["auth_req"]["scope"], "openid email");
        assert_eq!(prompt["auth_req"]["state"], "pushed-state");
        // Single use.
        let again = start_authz(&http, &base, &query, None).await;
        assert_eq!(again["error"], "invalid_request_uri");

        // Another client cannot use it; it expires; another server never
        // knew it.
        let foreign = push(&http, &base, &client).await.json()["request_uri"]
            .as_str()
            .unwrap()
            .to_owned();
        let stolen = form(&[("client_id", id(&other)), ("request_uri", &foreign)]);
        assert_eq!(
            start_authz(&http, &base, &stolen, None).await["error"],
            "invalid_request_uri"
        );
        let late = push(&http, &base, &client).await.json()["request_uri"]
            .as_str()
            .unwrap()
            .to_owned();
        let moved = push(&http, &base, &client).await.json()["request_uri"]
            .as_str()
            .unwrap()
            .to_owned();
        import_client(&http, &target.url(), &client).await;
        let at_target = form(&[("client_id", id(&client)), ("request_uri", &moved)]);
        assert_eq!(
            start_authz(&http, &target.url(), &at_target, None).await["error"],
            "invalid_request_uri"
        );
        source
            .emulator()
            .advance_clock(Duration::from_secs(lifetime + 1));
        let expired = form(&[("client_id", id(&client)), ("request_uri", &late)]);
        assert_eq!(
            start_authz(&http, &base, &expired, None).await["error"],
            "invalid_request_uri"
        );
    }
}

// ---- 12. back-channel logout ----

#[tokio::test]
async fn backchannel_logout_is_sent_only_strictly() {
    for strict in [false, true] {
        let receiver = LogoutReceiver::start().await;
        let strictness = Strictness {
            session_max_idle_minutes: 1,
            ..preset(strict)
        };
        let emulator = start_with(strictness).await;
        let base = emulator.url();
        let http = Http::default();
        let discovery = http
            .send(
                Method::GET,
                &format!("{base}/.well-known/openid-configuration"),
                Send::default(),
            )
            .await
            .json();
        assert_eq!(discovery["backchannel_logout_supported"], strict);
        let client = register(
            &http,
            &base,
            json!({
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
                "backchannel_logout_uri": receiver.url,
            }),
        )
        .await;

        // A session ended by the session store API.
        let tokens = login_tokens(&http, &base, &client, "max", long_lived(None)).await;
        let sid = tokens["sub_sid"].as_str().unwrap();
        let exported = emulator.emulator().session(sid).unwrap();
        assert_eq!(exported.get("rps").is_some(), strict, "{exported}");
        session_request(&http, Method::DELETE, &sessions_url(&base), sid)
            .await
            .expect(StatusCode::NO_CONTENT);

        // A session that idles out and is purged.
        let idle = login_tokens(&http, &base, &client, "ned", long_lived(None)).await;
        let idle_sid = idle["sub_sid"].as_str().unwrap();
        emulator.emulator().advance_clock(Duration::from_secs(61));
        http.post_form_bearer(
            &format!("{base}/session-store/rest/v2/purge"),
            TOKEN,
            vec![],
        )
        .await
        .expect(StatusCode::NO_CONTENT);
        assert_eq!(
            peek_session(&http, &base, idle_sid).await.status,
            StatusCode::NOT_FOUND
        );

        let sent = emulator.emulator().backchannel_logouts();
        if !strict {
            assert!(sent.is_empty(), "{sent:?}");
            continue;
        }
        let reasons: Vec<&str> = sent.iter().map(|notice| notice.reason.as_str()).collect();
        assert_eq!(reasons, ["deleted", "expired"]);
        assert!(sent.iter().all(|notice| notice.client_id == id(&client)));
        eventually("two delivered logout tokens", || {
            receiver.tokens().len() == 2
        })
        .await;
        eventually("delivery outcomes recorded", || {
            emulator
                .emulator()
                .backchannel_logouts()
                .iter()
                .all(|notice| notice.status == Some(200))
        })
        .await;
        let tokens = receiver.tokens();
        let (header, claims) = jwt_parts(&tokens[0]);
        assert_eq!(header["typ"], "logout+jwt");
        assert_eq!(claims["aud"], id(&client));
        assert_eq!(claims["sub"], "max");
        assert_eq!(claims["sid"], sid);
        assert_eq!(claims["iss"], base);
        assert!(
            claims["events"]
                .get("http://schemas.openid.net/event/backchannel-logout")
                .is_some()
        );
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            300
        );
        assert_eq!(jwt_parts(&tokens[1]).1["sub"], "ned");
        // Counted in the state dump too.
        let state = http
            .get(
                &format!("{base}/_emulator/state?dataset=backchannel_logouts"),
                TOKEN,
            )
            .await
            .json();
        assert_eq!(state.as_array().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn an_imported_session_carries_its_relying_parties_to_the_target() {
    let receiver = LogoutReceiver::start().await;
    let (source, target) = source_and_target(Strictness::real()).await;
    let http = Http::default();
    let client = register(
        &http,
        &source.url(),
        json!({
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code"],
            "backchannel_logout_uri": receiver.url,
        }),
    )
    .await;
    import_client(&http, &target.url(), &client).await;
    let response = login_scope(
        &http,
        &source.url(),
        id(&client),
        "ola",
        "openid",
        json!({ "scope": ["openid"] }),
    )
    .await;
    redeem(&http, &source.url(), &client, &code_of(&response))
        .await
        .expect(StatusCode::OK);
    let sid = response["sub_sid"].as_str().unwrap();
    let session = source.emulator().session(sid).unwrap();
    create_session(
        &http,
        &target.url(),
        session,
        Some(sid.rsplit_once('.').unwrap().0),
    )
    .await;
    // The target ends its copy (an expiry, a quota, a mirrored delete): it
    // notifies the relying party although the source session lives on.
    session_request(&http, Method::DELETE, &sessions_url(&target.url()), sid)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(target.emulator().backchannel_logouts().len(), 1);
    assert!(source.emulator().session(sid).is_some());
    eventually("the target's logout token", || receiver.tokens().len() == 1).await;
}

// ---- switching ----

#[tokio::test]
async fn strictness_is_switchable_over_http_and_from_flags() {
    let emulator = start(config(&JwkSet::generate())).await;
    let http = Http::default();
    let url = format!("{}/_emulator/strictness", emulator.url());
    let current = http.get(&url, TOKEN).await.expect(StatusCode::OK).json();
    assert_eq!(
        current,
        serde_json::to_value(Strictness::default()).unwrap()
    );
    assert_ne!(
        Strictness::default(),
        Strictness::lenient(),
        "the real server's behaviour is the default"
    );
    let changed = http
        .json(
            Method::PUT,
            &url,
            TOKEN,
            json!({ "allow_direct_inspection": false }),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(changed["allow_direct_inspection"], false);
    assert!(!emulator.emulator().strictness().allow_direct_inspection);
    let bad = http
        .json(Method::PUT, &url, TOKEN, json!({ "no_such": 1 }))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        http.get(&url, "wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    emulator.emulator().set_strictness(Strictness::real());
    assert_eq!(
        http.get(&url, TOKEN).await.json(),
        serde_json::to_value(Strictness::real()).unwrap()
    );

    assert_eq!(
        strictness_from_flags(Preset::Real, None).unwrap(),
        Strictness::real()
    );
    assert_eq!(
        strictness_from_flags(Preset::Default, None).unwrap(),
        Strictness::default()
    );
    assert_eq!(
        strictness_from_flags(Preset::Lenient, None).unwrap(),
        Strictness::lenient()
    );
    let mixed =
        strictness_from_flags(Preset::Lenient, Some(r#"{"backchannel_logout": true}"#)).unwrap();
    assert!(mixed.backchannel_logout && !mixed.random_refresh_token_nonce);
    assert!(strictness_from_flags(Preset::Real, Some("not json")).is_err());
    assert!(strictness_from_flags(Preset::Real, Some(r#"{"nope": 1}"#)).is_err());
}
