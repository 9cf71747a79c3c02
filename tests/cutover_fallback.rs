//! State that lives only on the previous primary right after a flip (a
//! login in progress, an authorization code) is served from it, and what
//! that creates is on the new primary before the client hears back: the
//! next request, which goes to the new primary, finds it.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use bytes::Bytes;
use handover::api::FlipRequest;
use handover::emulator::driver::{Consent, REDIRECT_URI};
use handover::http::form;
use http::{Method, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use support::cutover::{admin, finish_backfill};
use support::proxy::{client, send};
use support::stack::{Stack, TOKEN};

/// Starts a stack with the backfill done, ready for a cutover.
async fn ready_stack() -> Stack {
    let stack = Stack::start().await;
    finish_backfill(&admin(&stack.proxy)).await;
    stack
}

async fn cut_over(stack: &Stack) {
    let report = admin(&stack.proxy)
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        handover::api::Outcome::CutOver,
        "{report:#?}"
    );
}

/// One login-page-backend call through the proxy.
async fn authz_call(stack: &Stack, method: Method, path: &str, body: Value) -> Value {
    let request = http::Request::builder()
        .method(method)
        .uri(
            stack
                .proxy
                .url(&format!("/c2id/authz-sessions/rest/v3{path}")),
        )
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (parts, body) = send(&client(), request).await;
    assert_eq!(
        parts.status,
        StatusCode::OK,
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_issued_before_the_flip_gives_tokens_that_refresh_at_the_new_primary_at_once() {
    let stack = ready_stack().await;
    let app = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&app.id, "alice", Consent::default())
        .await
        .unwrap();
    stack.wait_synced().await;
    cut_over(&stack).await;
    // A slow previous primary makes the sync's read from it slower than the
    // relying party's next request: only waiting for the sync closes the gap.
    stack
        .source_emulator()
        .knobs()
        .set_latency(Duration::from_millis(300));

    // The code lives on the source only: the exchange is replayed there.
    let tokens = stack
        .via_proxy
        .exchange_code(&app, &login.code)
        .await
        .unwrap();
    // Its authorization is on the target before the tokens were released...
    assert!(
        stack
            .target_emulator()
            .authorization("alice", &app.id)
            .is_some(),
        "the authorization behind the tokens is not on the new primary yet"
    );
    // ...so the relying party's very next refresh, at the target, works.
    let refreshed = stack
        .via_proxy
        .refresh(&app, tokens.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    assert!(refreshed.refresh_token.is_some());
    assert!(
        stack.metric("handover_cutover_fallbacks_total").await >= Some(1.0),
        "the exchange was not replayed at the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_started_before_the_flip_finishes_after_it() {
    let stack = ready_stack().await;
    let app = stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;

    // The browser arrives before the flip: the authorization session is
    // created at the source.
    let query = form::encode([
        ("response_type", "code"),
        ("client_id", app.id.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid email"),
        ("state", "s"),
    ]);
    let prompt = authz_call(&stack, Method::POST, "", json!({ "query": query })).await;
    let authz_sid = prompt["sid"].as_str().unwrap().to_owned();

    cut_over(&stack).await;
    stack
        .source_emulator()
        .knobs()
        .set_latency(Duration::from_millis(100));

    // The user authenticates after it: the new primary has never seen this
    // authorization session, the previous one finishes it.
    let consent_prompt = authz_call(
        &stack,
        Method::PUT,
        &format!("/{authz_sid}"),
        json!({ "sub": "bob", "acr": "https://loa.c2id.com/basic", "amr": ["pwd"] }),
    )
    .await;
    let sid = consent_prompt["sub_session"]["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    // The session (the browser's SID cookie) already works at the target.
    assert!(
        stack.at_target.get_session(&sid).await.unwrap().is_some(),
        "the new session is not on the new primary yet"
    );
    let done = authz_call(
        &stack,
        Method::PUT,
        &format!("/{authz_sid}"),
        json!({
            "scope": ["openid", "email"],
            "long_lived": true,
            "refresh_token": { "issue": true, "rotate": true },
            "access_token": { "encoding": "SELF_CONTAINED", "lifetime": 600 },
        }),
    )
    .await;
    let uri = done["parameters"]["uri"].as_str().unwrap();
    let pairs = form::parse(uri.split_once('?').unwrap().1);
    let code = form::first(&pairs, "code").unwrap().to_owned();

    let tokens = stack.via_proxy.exchange_code(&app, &code).await.unwrap();
    let refreshed = stack
        .via_proxy
        .refresh(&app, tokens.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    assert!(refreshed.refresh_token.is_some());
    // Three replays: authentication and consent (a login session), the
    // code exchange (an authorization).
    assert_eq!(
        stack
            .metric("handover_cutover_fallbacks_total{dataset=\"sessions\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        stack
            .metric("handover_cutover_fallbacks_total{dataset=\"authorizations\"}")
            .await,
        Some(1.0)
    );
    stack.wait_synced().await;
    assert!(
        stack
            .target_emulator()
            .authorization("bob", &app.id)
            .is_some()
    );
}
