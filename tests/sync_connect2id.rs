//! Live sync to a Connect2id target, end to end: production traffic goes
//! through the proxy to the source; every change appears on the target with
//! the same identifiers, secrets and token material.

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::emulator::driver::Consent;
use handover::model::Dataset;
use support::stack::Stack;

#[tokio::test]
async fn client_registration_update_and_delete_reach_the_target_with_the_same_secret() {
    let stack = Stack::start().await;
    let client = stack.via_proxy.register_client("Shop").await.unwrap();
    stack.wait_synced().await;
    let on_target = stack
        .at_target
        .get_client(&client.id)
        .await
        .unwrap()
        .expect("client on target");
    assert_eq!(on_target["client_secret"], client.secret.as_str());
    assert_eq!(on_target["client_name"], "Shop");

    // The source rotates the secret on update: the target gets the *same* new one.
    let updated = stack
        .via_proxy
        .update_client(&client, "Shop v2")
        .await
        .unwrap();
    assert_ne!(updated.secret, client.secret);
    stack.wait_synced().await;
    let on_source = stack
        .at_source
        .get_client(&client.id)
        .await
        .unwrap()
        .unwrap();
    let on_target = stack
        .at_target
        .get_client(&client.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_target["client_secret"], updated.secret.as_str());
    assert_eq!(
        Dataset::Clients.comparable(&on_source),
        Dataset::Clients.comparable(&on_target)
    );

    stack.via_proxy.delete_client(&client.id).await.unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_client(&client.id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_login_session_is_accepted_by_the_target() {
    let stack = Stack::start().await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&client.id, "alice", Consent::default())
        .await
        .unwrap();
    stack.wait_synced().await;
    // The browser's SID cookie works at the target: same key, same HMAC.
    let session = stack
        .at_target
        .get_session(&login.sid)
        .await
        .unwrap()
        .expect("session on target");
    assert_eq!(session["sub"], "alice");
}

#[tokio::test]
async fn a_long_lived_consent_becomes_the_same_authorization_on_the_target() {
    let stack = Stack::start().await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&client.id, "bob", Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(&client, &login.code)
        .await
        .unwrap();
    assert!(tokens.refresh_token.is_some());
    stack.wait_synced().await;
    let on_source = stack
        .at_source
        .get_authorization("bob", &client.id)
        .await
        .unwrap()
        .unwrap();
    let on_target = stack
        .at_target
        .get_authorization("bob", &client.id)
        .await
        .unwrap()
        .expect("authorization on target");
    assert_eq!(
        Dataset::Authorizations.comparable(&on_source),
        Dataset::Authorizations.comparable(&on_target)
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_works_at_the_target_and_the_old_one_does_not() {
    let stack = Stack::start().await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&client.id, "carol", Consent::default())
        .await
        .unwrap();
    let first = stack
        .via_proxy
        .exchange_code(&client, &login.code)
        .await
        .unwrap();
    let old_refresh = first.refresh_token.unwrap();
    let rotated = stack
        .via_proxy
        .refresh(&client, &old_refresh)
        .await
        .unwrap();
    let new_refresh = rotated
        .refresh_token
        .expect("rotation issues a new refresh token");
    assert_ne!(new_refresh, old_refresh);
    stack.wait_synced().await;

    // The freshly rotated token is known to the target...
    let at_target = stack
        .at_target
        .refresh(&client, &new_refresh)
        .await
        .unwrap();
    assert!(at_target.refresh_token.is_some());
    // ...and the expended one is refused there.
    let refused = stack
        .at_target
        .refresh(&client, &old_refresh)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(400), "{refused}");
}

#[tokio::test]
async fn token_revocation_deletes_the_authorization_on_the_target() {
    let stack = Stack::start().await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&client.id, "dave", Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(&client, &login.code)
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_authorization("dave", &client.id)
            .await
            .unwrap()
            .is_some()
    );

    let refresh = tokens.refresh_token.unwrap();
    stack
        .via_proxy
        .revoke(&client, &refresh, "refresh_token")
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_source
            .get_authorization("dave", &client.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        stack
            .at_target
            .get_authorization("dave", &client.id)
            .await
            .unwrap()
            .is_none()
    );
    // The revocation was replayed with the source's timestamp.
    let revocations = stack.target_emulator().revocations();
    assert!(
        revocations
            .iter()
            .any(|r| r.subject.as_deref() == Some("dave")),
        "{revocations:?}"
    );
}

#[tokio::test]
async fn logout_deletes_the_session_on_the_target() {
    let stack = Stack::start().await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&client.id, "erin", Consent::default())
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_session(&login.sid)
            .await
            .unwrap()
            .is_some()
    );
    stack.via_proxy.logout(&login.sid).await.unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_source
            .get_session(&login.sid)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        stack
            .at_target
            .get_session(&login.sid)
            .await
            .unwrap()
            .is_none()
    );
}

/// A client with a long-lived authorization of `subject` on both sides;
/// returns the client and the refresh token.
async fn client_with_authorization(
    stack: &Stack,
    subject: &str,
) -> (handover::emulator::driver::RegisteredClient, String) {
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&client.id, subject, Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(&client, &login.code)
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_authorization(subject, &client.id)
            .await
            .unwrap()
            .is_some()
    );
    (client, tokens.refresh_token.unwrap())
}

/// After a client update: the target holds the source's client, still has
/// the subject's authorization, and its refresh token still works there
/// (no cascade of a delete revoked it).
async fn assert_updated_in_place(
    stack: &Stack,
    client: &handover::emulator::driver::RegisteredClient,
    subject: &str,
    refresh_token: &str,
) {
    let on_source = stack
        .at_source
        .get_client(&client.id)
        .await
        .unwrap()
        .unwrap();
    let on_target = stack
        .at_target
        .get_client(&client.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_target["client_name"], "App v2");
    assert_eq!(on_target["client_secret"], on_source["client_secret"]);
    assert!(
        stack
            .at_target
            .get_authorization(subject, &client.id)
            .await
            .unwrap()
            .is_some(),
        "the target lost the client's authorization"
    );
    let current = handover::emulator::driver::RegisteredClient {
        id: client.id.clone(),
        secret: on_source["client_secret"].as_str().unwrap().to_owned(),
        record: on_source.clone(),
    };
    stack
        .at_target
        .refresh(&current, refresh_token)
        .await
        .expect("the refresh token still works at the target");
}

#[tokio::test]
async fn a_changed_client_is_updated_in_place_so_a_cascading_target_keeps_its_authorizations() {
    use handover::emulator::connect2id::Strictness;
    let stack = Stack::start().await;
    // Neither server mints a secret on update; a delete at the target
    // would take the client's authorizations and revoke its tokens.
    let keeps_secret = Strictness {
        always_refresh_client_secret_on_update: false,
        ..Strictness::lenient()
    };
    stack.source_emulator().set_strictness(keeps_secret);
    stack.target_emulator().set_strictness(Strictness {
        client_delete_cascades: true,
        ..keeps_secret
    });
    let (client, refresh_token) = client_with_authorization(&stack, "erin").await;
    let updated = stack
        .via_proxy
        .update_client(&client, "App v2")
        .await
        .unwrap();
    assert_eq!(updated.secret, client.secret);
    stack.wait_synced().await;
    assert_updated_in_place(&stack, &client, "erin", &refresh_token).await;
}

#[tokio::test]
async fn a_rotated_secret_is_set_in_place_where_the_target_takes_it_on_update() {
    use handover::emulator::connect2id::Strictness;
    let stack = Stack::start().await;
    // The source mints a new secret on update (its default); the target
    // takes `preferred_client_secret` on update and cascades deletes.
    stack.target_emulator().set_strictness(Strictness {
        preferred_client_secret_on_update: true,
        client_delete_cascades: true,
        ..Strictness::lenient()
    });
    let (client, refresh_token) = client_with_authorization(&stack, "frank").await;
    let updated = stack
        .via_proxy
        .update_client(&client, "App v2")
        .await
        .unwrap();
    assert_ne!(updated.secret, client.secret);
    stack.wait_synced().await;
    assert_updated_in_place(&stack, &client, "frank", &refresh_token).await;
}

/// Management-API calls the proxy made to the target so far.
async fn target_calls(stack: &Stack) -> f64 {
    let mut total = 0.0;
    for outcome in ["answered", "overloaded", "timed_out", "unreachable"] {
        total += stack
            .metric(&format!(
                "handover_upstream_api_requests_total{{upstream=\"target\",outcome=\"{outcome}\"}}"
            ))
            .await
            .unwrap_or(0.0);
    }
    total
}

/// Sends a management call through the proxy (a trigger) and waits until
/// the sync applied it; returns the answer and the calls it cost at the
/// target.
async fn through_proxy(
    stack: &Stack,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: serde_json::Value,
) -> (serde_json::Value, f64) {
    let before = target_calls(stack).await;
    let mut request = http::Request::builder()
        .method(method)
        .uri(stack.proxy.url(path))
        .header("authorization", format!("Bearer {}", support::stack::TOKEN))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let (parts, answer) = support::proxy::send(&support::proxy::client(), request).await;
    assert!(parts.status.is_success(), "{path}: {}", parts.status);
    stack.wait_synced().await;
    let answer = serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null);
    (answer, target_calls(stack).await - before)
}

#[tokio::test]
async fn each_kind_of_key_costs_the_documented_round_trips_at_the_target() {
    use handover::emulator::connect2id::Strictness;
    use serde_json::json;
    let stack = Stack::start().await;
    let keeps_secret = Strictness {
        always_refresh_client_secret_on_update: false,
        ..Strictness::lenient()
    };
    stack.source_emulator().set_strictness(keeps_secret);
    stack.target_emulator().set_strictness(keeps_secret);
    let clients = "/c2id/clients";

    // A new client: read (at once on both sides), import.
    let (client, calls) = through_proxy(
        &stack,
        http::Method::POST,
        clients,
        &[],
        json!({"redirect_uris": ["https://rp.example.com/cb"], "client_name": "A"}),
    )
    .await;
    assert_eq!(calls, 2.0, "new client");
    let id = client["client_id"].as_str().unwrap().to_owned();
    // A changed client: read, update in place.
    let mut body = client.clone();
    for server_set in [
        "client_id_issued_at",
        "registration_access_token",
        "registration_client_uri",
        "client_secret_expires_at",
    ] {
        body.as_object_mut().unwrap().remove(server_set);
    }
    body["client_name"] = "B".into();
    let (_, calls) = through_proxy(
        &stack,
        http::Method::PUT,
        &format!("{clients}/{id}"),
        &[],
        body,
    )
    .await;
    assert_eq!(calls, 2.0, "changed client");

    // An authorization: imported (an upsert), no read at the target.
    let record = json!({"sub": "alice", "cid": id, "scp": ["openid"], "irt": true});
    let (_, calls) = through_proxy(
        &stack,
        http::Method::POST,
        "/c2id/authz-store/rest/v3/authorizations?import=true",
        &[],
        record,
    )
    .await;
    assert_eq!(calls, 1.0, "authorization");

    // A new session: read (missing), imported.
    let (created, calls) = through_proxy(
        &stack,
        http::Method::POST,
        "/c2id/session-store/rest/v2/sessions",
        &[],
        json!({"sub": "alice"}),
    )
    .await;
    assert_eq!(calls, 2.0, "new session");
    let sid = created["sid"].as_str().unwrap().to_owned();
    // A changed session: read, then updated in place. The read stays: it
    // tells whether the target's copy was last used earlier than the
    // source's, which no write can set (it is then touched, issue 12).
    let (_, calls) = through_proxy(
        &stack,
        http::Method::PUT,
        "/c2id/session-store/rest/v2/sessions",
        &[("sid", sid.as_str())],
        json!({"sub": "alice", "data": {"step": 2}}),
    )
    .await;
    assert_eq!(calls, 2.0, "changed session");
    let on_target = stack.at_target.get_session(&sid).await.unwrap().unwrap();
    assert_eq!(on_target["data"]["step"], 2);

    // A deleted client: gone at the source, so only a delete at the target
    // (idempotent: no read first).
    let before = target_calls(&stack).await;
    stack.via_proxy.delete_client(&id).await.unwrap();
    stack.wait_synced().await;
    assert_eq!(target_calls(&stack).await - before, 1.0, "deleted client");
}
