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
