//! A source older than 17.0 still serves the legacy API versions its old
//! integrations call (domain-gaps Q1.12b): `/direct-authz/rest/v1`,
//! `/authz-sessions/rest/v1|v2` (removed in 17.0) and `/authz-store/rest/v2`
//! (still served next to v3). Writes through them are triggers like their
//! current versions.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::emulator::connect2id::Strictness;
use http::Method;
use serde_json::json;
use support::c2id::{Http, form};
use support::stack::{Servers, Stack, TOKEN};

/// Both servers play a 16.x Connect2id (the legacy paths are served).
async fn old_servers() -> Stack {
    Stack::start_servers(
        Servers {
            strictness: Some(Strictness {
                server_version: Some(16),
                ..Strictness::lenient()
            }),
            ..Servers::default()
        },
        |_| {},
    )
    .await
}

#[tokio::test]
async fn writes_through_legacy_api_versions_reach_the_target() {
    let stack = old_servers().await;
    let app = stack.via_proxy.register_client("Old app").await.unwrap();
    stack.wait_synced().await;
    let http = Http::default();

    // A direct authorization through v1 creates a long-lived authorization.
    let direct = http
        .json(
            Method::POST,
            &stack.proxy.url("/c2id/direct-authz/rest/v1"),
            TOKEN,
            json!({
                "sub": "jon",
                "client_id": app.id,
                "scope": ["openid"],
                "long_lived": true,
                "refresh_token": { "issue": true },
            }),
        )
        .await;
    assert!(direct.json()["access_token"].is_string(), "{direct:?}");
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_authorization("jon", &app.id)
            .await
            .unwrap()
            .is_some(),
        "a direct authorization through /direct-authz/rest/v1 did not reach the target"
    );

    // Deleting it through authz-store v2 deletes it at the target.
    let query = form(&[("subject", "jon"), ("client_id", &app.id)]);
    let deleted = http
        .send(
            Method::DELETE,
            &stack
                .proxy
                .url(&format!("/c2id/authz-store/rest/v2/authorizations?{query}")),
            support::c2id::Send {
                bearer: Some(TOKEN),
                ..Default::default()
            },
        )
        .await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    assert!(
        stack
            .at_source
            .get_authorization("jon", &app.id)
            .await
            .unwrap()
            .is_none()
    );
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_authorization("jon", &app.id)
            .await
            .unwrap()
            .is_none(),
        "a delete through /authz-store/rest/v2 did not reach the target"
    );
}
