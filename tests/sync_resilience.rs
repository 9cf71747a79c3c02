//! The sync under a bad secondary, bad answers and restarts: a target that
//! is down, slow or answers garbage never hurts the primary path and never
//! loses a change; malformed source answers and oversized trigger bodies
//! are handled without crashing or journaling nonsense; a backlog survives
//! a clean restart.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use handover::config::{Config, TEST_JOURNAL_KEY};
use handover::emulator::connect2id::{self, Connect2id, Handle};
use handover::emulator::driver::Consent;
use handover::emulator::jwks::JwkSet;
use handover::journal::{Cipher, DEAD_LETTERS_DIR, DeadLetters};
use handover::model::Dataset;
use handover::model::{Change, Key};
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use support::proxy::{FakeUpstream, TestProxy, client, eventually, get, send};
use support::stack::{Stack, TOKEN, differences, metric, metric_sum, snapshot, wait_drained};

/// Asserts the target holds exactly the source's records (ignoring the
/// fields that legitimately differ); returns how many there are.
fn assert_converged(stack: &Stack) -> usize {
    let drift = differences(stack.source_emulator(), stack.target_emulator());
    assert!(drift.is_empty(), "drift:\n{}", drift.join("\n"));
    snapshot(stack.source_emulator()).len()
}

async fn readyz(proxy: &TestProxy) -> StatusCode {
    get(&client(), &proxy.admin_url("/readyz")).await.0.status
}

/// Mixed production traffic through the proxy, every step of which must
/// succeed: per client a registration, per user a login, a code exchange
/// and two refreshes with rotation; the first user of the first client logs
/// out and the first client is updated (its secret rotates).
async fn traffic(stack: &Stack, clients: usize, users: usize) {
    for c in 0..clients {
        let app = stack
            .via_proxy
            .register_client(&format!("App {c}"))
            .await
            .expect("registration answered");
        for u in 0..users {
            let subject = format!("user-{c}-{u}");
            let login = stack
                .via_proxy
                .login(&app.id, &subject, Consent::default())
                .await
                .expect("login answered");
            let tokens = stack
                .via_proxy
                .exchange_code(&app, &login.code)
                .await
                .expect("code exchange answered");
            let mut refresh = tokens.refresh_token.expect("a refresh token");
            for _ in 0..2 {
                let rotated = stack
                    .via_proxy
                    .refresh(&app, &refresh)
                    .await
                    .expect("refresh answered");
                let next = rotated.refresh_token.expect("rotation");
                assert_ne!(next, refresh);
                refresh = next;
            }
            if u == 0 && c == 0 {
                stack
                    .via_proxy
                    .logout(&login.sid)
                    .await
                    .expect("logout answered");
            }
        }
        if c == 0 {
            stack
                .via_proxy
                .update_client(&app, "App 0 v2")
                .await
                .expect("update answered");
        }
        assert_eq!(readyz(&stack.proxy).await, StatusCode::OK);
    }
}

#[tokio::test]
async fn target_down_for_a_while_then_back_converges_without_client_errors() {
    let stack = Stack::start().await;
    stack.target_emulator().knobs().set_down(true);

    traffic(&stack, 3, 2).await;
    assert_eq!(readyz(&stack.proxy).await, StatusCode::OK);

    // The changes wait in the journal, and the sync keeps trying.
    let grew = eventually(Duration::from_secs(10), || async {
        stack.metric("handover_journal_depth").await > Some(0.0)
    })
    .await;
    assert!(
        grew,
        "the journal depth never grew while the target was down"
    );
    let failing = eventually(Duration::from_secs(10), || async {
        let (_, body) = get(&client(), &stack.proxy.admin_url("/metrics")).await;
        metric_sum(
            &String::from_utf8_lossy(&body),
            "handover_sync_failures_total",
        ) > 0.0
    })
    .await;
    assert!(
        failing,
        "no sync failures counted while the target was down"
    );
    assert_eq!(stack.target_emulator().counts().clients, 0);
    assert_eq!(readyz(&stack.proxy).await, StatusCode::OK);
    // Every key failed at once: the sync stops trying key by key and says
    // so (one probe retries for all).
    let outage = eventually(Duration::from_secs(10), || async {
        stack.metric("handover_sync_outage").await == Some(1.0)
    })
    .await;
    assert!(outage, "the outage was never reported");

    stack.target_emulator().knobs().set_down(false);
    stack.wait_synced().await;
    assert_eq!(stack.metric("handover_sync_outage").await, Some(0.0));
    let records = assert_converged(&stack);
    // 3 clients, 6 authorizations, 5 sessions (one logged out).
    assert_eq!(records, 14);
}

#[tokio::test]
async fn slow_target_does_not_slow_the_primary_path() {
    let stack = Stack::start().await;
    let latency = Duration::from_secs(2);
    stack.target_emulator().knobs().set_latency(latency);

    let mut slowest = (Duration::ZERO, "");
    let mut time = |started: Instant, what: &'static str| {
        let took = started.elapsed();
        if took > slowest.0 {
            slowest = (took, what);
        }
    };
    for c in 0..2 {
        let started = Instant::now();
        let app = stack
            .via_proxy
            .register_client(&format!("App {c}"))
            .await
            .unwrap();
        time(started, "registration");
        let started = Instant::now();
        let login = stack
            .via_proxy
            .login(&app.id, &format!("user-{c}"), Consent::default())
            .await
            .unwrap();
        time(started, "login (three requests)");
        let started = Instant::now();
        let tokens = stack
            .via_proxy
            .exchange_code(&app, &login.code)
            .await
            .unwrap();
        time(started, "code exchange");
        let started = Instant::now();
        stack
            .via_proxy
            .refresh(&app, &tokens.refresh_token.unwrap())
            .await
            .unwrap();
        time(started, "refresh");
    }
    eprintln!(
        "slowest trigger with a {latency:?} target: {} in {:?}",
        slowest.1, slowest.0
    );
    // Loose on purpose: the journal append is local, the target is 2 s away.
    assert!(
        slowest.0 < Duration::from_secs(1),
        "the slowest trigger ({}) took {:?} with a target latency of {latency:?}",
        slowest.1,
        slowest.0
    );
    stack.wait_synced().await;
    assert_converged(&stack);
}

#[tokio::test]
async fn a_target_answering_garbage_dead_letters_the_change_and_loses_nothing() {
    let jwks = JwkSet::generate();
    let mut source_config =
        connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks.clone());
    source_config.base_path = "/c2id".to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source: Handle = Connect2id::new(source_config).start(listener).await;
    let garbage = FakeUpstream::start(|_| async {
        let mut response = handover::http::text_response(StatusCode::OK, "{not json");
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    })
    .await;
    let mut config = Config::for_test(&source.url(), &format!("{}/c2id", garbage.url()), TOKEN);
    config.sync.datasets = vec![Dataset::Clients];
    let mut proxy = TestProxy::start(config.clone()).await;
    proxy.wait_ready().await;

    let request = Request::post(proxy.url("/c2id/clients"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            json!({"client_name": "Shop", "redirect_uris": ["https://shop.example.com/cb"]})
                .to_string(),
        )))
        .unwrap();
    let (parts, body) = send(&client(), request).await;
    // The source's answer, unchanged by the sync's trouble.
    assert_eq!(parts.status, StatusCode::CREATED);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let client_id = answer["client_id"].as_str().unwrap();
    let on_source = source.emulator().client(client_id).unwrap();
    assert_eq!(answer["client_secret"], on_source["client_secret"]);
    assert_eq!(
        Dataset::Clients.comparable(&answer),
        Dataset::Clients.comparable(&on_source)
    );

    let metrics_url = proxy.admin_url("/metrics");
    let dead_lettered = eventually(Duration::from_secs(10), || async {
        let (_, body) = get(&client(), &metrics_url).await;
        metric(
            &String::from_utf8_lossy(&body),
            "handover_sync_dead_lettered_total{dataset=\"clients\"}",
        ) == Some(1.0)
    })
    .await;
    assert!(dead_lettered, "the change was not dead-lettered");
    // Given up, not retried forever: the journal drains, and the target saw
    // the attempt.
    assert!(wait_drained(&metrics_url, Duration::from_secs(20)).await);
    assert!(!garbage.requests().is_empty());
    let dir = proxy.journal_dir.take().unwrap();
    let letters = dir.path().join(DEAD_LETTERS_DIR);
    let stored: u64 = std::fs::read_dir(&letters)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(stored > 0, "nothing written under {}", letters.display());
    proxy.shutdown().await;

    // A restart finds the dead letter.
    config.journal.dir = dir.path().to_owned();
    let mut restarted = TestProxy::start_with_journal(config).await;
    restarted.wait_ready().await;
    let (_, body) = get(&client(), &restarted.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &String::from_utf8_lossy(&body),
            "handover_sync_dead_letters"
        ),
        Some(1.0)
    );
    restarted.shutdown().await;

    // It names the client and why.
    let letters =
        DeadLetters::open(dir.path(), Cipher::from_hex(TEST_JOURNAL_KEY).unwrap()).unwrap();
    let letters = letters.list();
    assert_eq!(letters.len(), 1);
    let change: Change = serde_json::from_slice(&letters[0].body).unwrap();
    assert_eq!(
        change,
        Change::sync(Key::Client {
            client_id: client_id.to_owned()
        })
    );
    assert!(
        letters[0].reason.contains("malformed JSON"),
        "{}",
        letters[0].reason
    );
}

#[tokio::test]
async fn malformed_json_from_the_source_is_forwarded_unchanged() {
    const TRUNCATED: &str = r#"{"client_id": "#;
    let source = FakeUpstream::start(|request: Request<hyper::body::Incoming>| async move {
        if request.method() == Method::POST && request.uri().path() == "/c2id/clients" {
            let mut response = handover::http::text_response(StatusCode::CREATED, TRUNCATED);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        } else {
            handover::http::json_response(StatusCode::OK, &json!({}))
        }
    })
    .await;
    let config = Config::for_test(
        &format!("{}/c2id", source.url()),
        "http://127.0.0.1:9/c2id",
        TOKEN,
    );
    let mut proxy = TestProxy::start(config).await;
    proxy.wait_ready().await;

    let request = Request::post(proxy.url("/c2id/clients"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"client_name": "Shop"}"#)))
        .unwrap();
    let (parts, body) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(body, TRUNCATED);

    // Counted as a trigger, but nothing to journal: a journaled change
    // would be retried against the dead target and fail.
    let metrics_url = proxy.admin_url("/metrics");
    assert!(wait_drained(&metrics_url, Duration::from_secs(20)).await);
    let (_, body) = get(&client(), &metrics_url).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(metric_sum(&text, "handover_mirror_triggers_total"), 1.0);
    assert_eq!(metric(&text, "handover_journal_depth"), Some(0.0));
    assert_eq!(metric_sum(&text, "handover_sync_failures_total"), 0.0);
    assert_eq!(metric_sum(&text, "handover_sync_applied_total"), 0.0);
    assert_eq!(metric_sum(&text, "handover_journal_errors_total"), 0.0);

    // Still serving.
    assert_eq!(readyz(&proxy).await, StatusCode::OK);
    let (parts, _) = get(&client(), &proxy.url("/c2id/jwks.json")).await;
    assert_eq!(parts.status, StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_trigger_body_over_the_cap_gets_413_and_changes_nothing() {
    let stack = Stack::start_with(|config| config.proxy.forward.max_body_bytes = 1024).await;
    let padding = "x".repeat(4096);
    let body = json!({
        "client_name": "Big",
        "redirect_uris": ["https://big.example.com/cb"],
        "padding": padding,
    })
    .to_string();
    assert!(body.len() > 4096);
    let request = Request::post(stack.proxy.url("/c2id/clients"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (parts, _) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(stack.source_emulator().clients().is_empty());

    // The cap is what refused it: a small registration goes through.
    let app = stack.via_proxy.register_client("Small").await.unwrap();
    stack.wait_synced().await;
    assert_eq!(stack.source_emulator().clients().len(), 1);
    assert!(stack.target_emulator().client(&app.id).is_some());
    assert_eq!(stack.metric("handover_journal_depth").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_survives_a_clean_restart_with_a_backlog() {
    let mut stack = Stack::start().await;
    stack.target_emulator().knobs().set_down(true);
    traffic(&stack, 2, 2).await;
    let backlog = eventually(Duration::from_secs(10), || async {
        stack.metric("handover_journal_depth").await > Some(0.0)
    })
    .await;
    assert!(backlog, "no backlog while the target was down");

    let dir = stack.proxy.journal_dir.take().unwrap();
    let addr = stack.proxy.addr;
    stack.proxy.shutdown().await;
    // Nothing reached the target before the restart: whatever arrives
    // there now comes from the journal.
    assert_eq!(
        snapshot(stack.target.emulator()),
        BTreeMap::new(),
        "the target received changes while down"
    );
    stack.target.emulator().knobs().set_down(false);

    let mut config = stack.config.clone();
    config.journal.dir = dir.path().to_owned();
    config.proxy.listen = addr;
    stack.proxy = TestProxy::start_with_journal(config).await;
    stack.proxy.journal_dir = Some(dir);
    stack.proxy.wait_ready().await;
    stack.wait_synced().await;
    // 2 clients, 4 authorizations, 3 sessions (one logged out).
    assert_eq!(assert_converged(&stack), 9);
}

/// SIGTERM while changes sit in their retry backoff (the target is down)
/// must leave them in the journal, however the sync tasks wake up. Several
/// shutdowns, each with one more change waiting, on a multi-threaded
/// runtime like the binary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_waiting_for_a_retry_survive_clean_shutdowns() {
    const ROUNDS: usize = 5;
    let mut stack = Stack::start().await;
    stack.target_emulator().knobs().set_down(true);
    let dir = stack.proxy.journal_dir.take().unwrap();
    let mut config = stack.config.clone();
    config.journal.dir = dir.path().to_owned();
    config.proxy.listen = stack.proxy.addr;
    let mut registered = Vec::new();
    for round in 0..ROUNDS {
        registered.push(
            stack
                .via_proxy
                .register_client(&format!("App {round}"))
                .await
                .unwrap(),
        );
        // Wait until the sync has tried and failed (the change is in its
        // backoff), then stop.
        let metrics_url = stack.proxy.admin_url("/metrics");
        let failed = eventually(Duration::from_secs(10), || async {
            let (_, body) = get(&client(), &metrics_url).await;
            metric_sum(
                &String::from_utf8_lossy(&body),
                "handover_sync_failures_total",
            ) > 0.0
        })
        .await;
        assert!(failed, "the sync never tried the down target");
        stack.proxy.shutdown().await;
        stack.proxy = TestProxy::start_with_journal(config.clone()).await;
        stack.proxy.wait_ready().await;
    }
    stack.target_emulator().knobs().set_down(false);
    stack.wait_synced().await;
    let lost: Vec<&str> = registered
        .iter()
        .filter(|app| stack.target_emulator().client(&app.id).is_none())
        .map(|app| app.id.as_str())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {ROUNDS} changes lost: {lost:?}",
        lost.len()
    );
    stack.proxy.journal_dir = Some(dir);
    assert_converged(&stack);
}
