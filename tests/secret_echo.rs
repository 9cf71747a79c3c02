//! No secret from the traffic reaches an operator's screen, even through a
//! target that repeats every input in its errors: the logs at `trace`,
//! `GET /dead-letters`, `GET /status`, `GET /metrics` and the CLI's
//! `dead-letters` and `status` all carry the upstream's error code and a
//! redacted description, never a token, a client secret or a session id.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use handover::emulator::connect2id::ApiTokens;
use handover::emulator::driver::{Consent, Driver};
use handover::emulator::jwks::JwkSet;
use handover::http::Body;
use handover::model::{Dataset, Secret};
use handover::servers::authlete::{
    Config as AuthleteConfig, Credentials as AuthleteCredentials, DEFAULT_REFRESH_DURATION,
    DEFAULT_TOKEN_SAMPLE,
};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::TcpListener;

use support::proxy::{FakeUpstream, TestProxy, client, eventually, get, send};
use support::stack::{c2id_config, issuer_of, proxy_tokens, start_emulator};

const SOURCE_TOKEN: &str = "Src9mgmtTokenQ2x7vPz4LrWk8sNd3Hy6";
const TARGET_TOKEN: &str = "Tgt4mgmtTokenZ8c1bVn5MxQe2Rj7Ku9Ws";
const ADMIN_TOKEN: &str = "Adm3adminTokenK5h8pLq2WzXc7Vb4Nm1Ty";

/// Every log line of this test binary, at `trace`, from every crate.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything a request carried, as one line, in one of four spellings
/// (taken in turn, so every cut of a long description still quotes
/// secrets): the body first; the headers first; every string in the
/// body and every header value bare, longest first; every field and
/// header as `name=value`, longest value first.
async fn everything(request: Request<Incoming>) -> String {
    static TURN: AtomicUsize = AtomicUsize::new(0);
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let head = format!("{} {}", parts.method, parts.uri);
    let mut fields: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_owned()))
        .collect();
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) {
        collect_strings(&map, &mut fields);
    }
    fields.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
    let headers = || {
        fields
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match TURN.fetch_add(1, Ordering::Relaxed) % 4 {
        0 => format!("{body_text} in {head} {}", headers()),
        1 => format!("{} in {head} {body_text}", headers()),
        2 => fields
            .iter()
            .map(|(_, value)| value.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => fields
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&"),
    }
}

fn collect_strings(map: &serde_json::Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (name, value) in map {
        match value {
            Value::String(text) => out.push((name.clone(), text.clone())),
            Value::Object(inner) => collect_strings(inner, out),
            _ => {}
        }
    }
}

/// Every request the echoing target received, as it echoed them.
fn echoed() -> &'static Mutex<String> {
    static ECHOED: OnceLock<Mutex<String>> = OnceLock::new();
    ECHOED.get_or_init(Mutex::default)
}

/// A Connect2id target that holds nothing (`GET` answers 404, so every
/// change is written with its full record) and refuses every write with an
/// OAuth error whose description repeats the request (the error code
/// first, as a real server would put it).
async fn echoing_connect2id(request: Request<Incoming>) -> Response<Body> {
    let is_read = request.method() == http::Method::GET;
    let echo = everything(request).await;
    echoed().lock().unwrap().push_str(&echo);
    if is_read {
        return handover::http::json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "error_description": format!("Not found: {echo}")}),
        );
    }
    handover::http::json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({
            "error": "invalid_request",
            "error_description": format!("Bad request: {echo}"),
            "request": echo,
        }),
    )
}

/// Runs the `handover` binary against the admin API.
async fn cli(args: &[&str], admin: &str) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_handover"));
    command
        .args(args)
        .args(["--admin", admin])
        .env("HANDOVER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "trace");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `GET` on the admin API with the token.
async fn admin_get(proxy: &TestProxy, path: &str) -> String {
    let request = Request::get(proxy.admin_url(path))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Default::default())
        .unwrap();
    let (parts, body) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::OK, "GET {path}");
    String::from_utf8_lossy(&body).into_owned()
}

/// Asserts that no secret appears in `text` (named `place`).
fn assert_clean(place: &str, text: &str, secrets: &[(&str, String)]) {
    for (what, secret) in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "the {what} appears in {place}:\n{}",
            excerpt(text, secret)
        );
    }
}

fn excerpt(text: &str, secret: &str) -> String {
    let at = text.find(secret).unwrap_or(0);
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(200)
        .map_or(0, |(i, _)| i);
    let end = (at + secret.len() + 200).min(text.len());
    let end = (end..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..end].to_owned()
}

/// Which target the echo plays.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Connect2id,
    Authlete,
}

/// An Authlete service that refuses every call with an error envelope
/// whose message repeats the request, every other time with a 500 (which
/// the sync logs and retries) and else a 400 (which it dead-letters).
async fn echoing_authlete(request: Request<Incoming>) -> Response<Body> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let echo = everything(request).await;
    echoed().lock().unwrap().push_str(&echo);
    let status = if CALLS.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    handover::http::json_response(
        status,
        &serde_json::json!({
            "resultCode": "A001201",
            "resultMessage": format!("[A001201] Bad request: {echo}"),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_from_an_echoing_connect2id_target_reaches_any_output() {
    echo_round(Kind::Connect2id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_from_an_echoing_authlete_target_reaches_any_output() {
    echo_round(Kind::Authlete).await;
}

/// Traffic through the proxy to a target that echoes every input, then
/// every output an operator sees, checked for every secret of the
/// traffic: logs at `trace`, `/dead-letters`, `/status`, `/metrics`, and
/// the CLI's `dead-letters` and `status`.
async fn echo_round(kind: Kind) {
    let logs = captured_logs();
    let target = match kind {
        Kind::Connect2id => FakeUpstream::start(echoing_connect2id).await,
        Kind::Authlete => FakeUpstream::start(echoing_authlete).await,
    };
    let jwks = JwkSet::generate();
    let source_tokens = ApiTokens::single(SOURCE_TOKEN);
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = start_emulator(c2id_config(
        &issuer_of(&proxy_listener),
        &jwks,
        &source_tokens,
    ))
    .await;
    let mut config = handover::config::Config::for_test(&source.url(), &target.url(), SOURCE_TOKEN);
    config.source.tokens = proxy_tokens(&source_tokens);
    config.target.tokens = proxy_tokens(&ApiTokens::single(TARGET_TOKEN));
    config.admin.token = Some(Secret::new(ADMIN_TOKEN));
    if kind == Kind::Authlete {
        config.target.kind = handover::config::ServerKind::Authlete;
        config.target.authlete = Some(AuthleteConfig {
            api_version: 3,
            service_id: Some(715_948_317),
            credentials: AuthleteCredentials::V3 {
                token: Secret::new(TARGET_TOKEN),
            },
            new_primary: None,
            new_primary_ca_file: None,
            refresh_token_duration: DEFAULT_REFRESH_DURATION,
            token_sample: DEFAULT_TOKEN_SAMPLE,
            rate_limit: None,
            owner: None,
        });
        config.sync.datasets = Dataset::AUTHLETE.to_vec();
    }
    let mut proxy = TestProxy::start_on_with_journal_dir(proxy_listener, config).await;
    proxy.wait_ready().await;

    // Traffic that mints every kind of secret: a client secret (and its
    // registration token), a session id, a code, access and refresh
    // tokens, a rotated refresh token, a rotated client secret.
    let via_proxy = Driver::new(proxy.url("/c2id"), SOURCE_TOKEN);
    let registered = via_proxy.register_client("echo").await.unwrap();
    let login = via_proxy
        .login(&registered.id, "alice", Consent::default())
        .await
        .unwrap();
    let tokens = via_proxy
        .exchange_code(&registered, &login.code)
        .await
        .unwrap();
    let first_refresh = tokens.refresh_token.clone().unwrap();
    let rotated = via_proxy
        .refresh(&registered, &first_refresh)
        .await
        .unwrap();
    let updated = via_proxy
        .update_client(&registered, "echo 2")
        .await
        .unwrap();

    let mut secrets: Vec<(&str, String)> = vec![
        ("source management token", SOURCE_TOKEN.to_owned()),
        ("target management token", TARGET_TOKEN.to_owned()),
        ("admin token", ADMIN_TOKEN.to_owned()),
        ("journal key", handover::config::TEST_JOURNAL_KEY.to_owned()),
        ("client secret", registered.secret.clone()),
        ("session id", login.sid.clone()),
        ("authorization code", login.code.clone()),
        ("access token", tokens.access_token.clone()),
        ("refresh token", first_refresh),
        ("rotated access token", rotated.access_token.clone()),
    ];
    if let Some(refresh) = rotated.refresh_token.clone() {
        secrets.push(("rotated refresh token", refresh));
    }
    secrets.push(("rotated client secret", updated.secret.clone()));
    if let Some(token) = registered
        .record
        .get("registration_access_token")
        .and_then(Value::as_str)
    {
        secrets.push(("registration access token", token.to_owned()));
    }
    // The SID key the import sends in `SID-Key` (the SID up to its last
    // dot) is a secret too.
    if let Some((sid_key, _)) = login.sid.rsplit_once('.') {
        secrets.push(("session id key", sid_key.to_owned()));
    }

    // The target refuses every change: each ends as a dead letter.
    let http = client();
    // (An Authlete target that never holds the client keeps the tokens
    // retrying: there the round ends once the tokens were offered.)
    let access_token = tokens.access_token.clone();
    let settled = eventually(Duration::from_secs(30), || async {
        let (_, body) = get(&http, &proxy.admin_url("/metrics")).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        let dead = support::stack::metric(&text, "handover_sync_dead_letters").unwrap_or(0.0);
        match kind {
            Kind::Connect2id => {
                support::stack::metric(&text, "handover_journal_depth") == Some(0.0) && dead >= 3.0
            }
            Kind::Authlete => {
                let failures = support::stack::metric_sum(&text, "handover_sync_failures_total");
                (dead >= 1.0 || failures >= 2.0)
                    && echoed().lock().unwrap().contains(access_token.as_str())
            }
        }
    })
    .await;
    assert!(settled, "the refused changes were not dead-lettered");
    // The echo carried the secrets back: the target saw our token and the
    // secrets of the records it was sent.
    let echoed = echoed().lock().unwrap().clone();
    for (what, secret) in &secrets {
        let expected: &[&str] = match kind {
            Kind::Connect2id => &[
                "target management token",
                "client secret",
                "rotated client secret",
                "session id key",
            ],
            Kind::Authlete => &["target management token", "access token", "refresh token"],
        };
        if expected.contains(what) {
            assert!(
                echoed.contains(secret.as_str()),
                "the target never saw the {what}"
            );
        }
    }
    drop(target);

    let dead_letters = admin_get(&proxy, "/dead-letters").await;
    let letters: Vec<Value> = serde_json::from_str(&dead_letters).unwrap();
    assert!(kind == Kind::Authlete || !letters.is_empty());
    for letter in &letters {
        let reason = letter["reason"].as_str().unwrap();
        eprintln!("dead letter: {reason}");
        // The upstream's error code survives, so the operator knows why.
        let code = match kind {
            Kind::Connect2id => "invalid_request",
            Kind::Authlete => "A001201",
        };
        assert!(reason.contains(code), "{reason}");
    }
    let status = admin_get(&proxy, "/status").await;
    let (_, metrics) = get(&http, &proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let admin = proxy.admin_url("");
    let cli_letters = cli(&["dead-letters"], &admin).await;
    let cli_letters_json = cli(&["dead-letters", "--json"], &admin).await;
    let cli_status = cli(&["status"], &admin).await;
    if !letters.is_empty() {
        assert!(cli_letters.contains("answered"), "{cli_letters}");
    }

    proxy.shutdown().await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("sync gave up") || logs.contains("sync failed; retrying"),
        "the refusals were not logged"
    );

    assert_clean("the logs at trace", &logs, &secrets);
    assert_clean("GET /dead-letters", &dead_letters, &secrets);
    assert_clean("GET /status", &status, &secrets);
    assert_clean("GET /metrics", &metrics, &secrets);
    assert_clean("`handover dead-letters`", &cli_letters, &secrets);
    assert_clean(
        "`handover dead-letters --json`",
        &cli_letters_json,
        &secrets,
    );
    assert_clean("`handover status`", &cli_status, &secrets);
}
