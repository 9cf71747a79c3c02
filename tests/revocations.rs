//! Revocations never come back to life on the target (domain-gaps Q1.11,
//! Q1.17): revoking a self-contained (transient) refresh token leaves no
//! record to sync, only a revocation-journal entry on the source, and a
//! native SSO `device_secret` names a device session that is created at
//! `/token`. Both emulators run the strict reading (native SSO on).
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::emulator::connect2id::Strictness;
use handover::emulator::driver::Consent;
use support::stack::{Servers, Stack};

async fn strict_stack() -> Stack {
    Stack::start_servers(
        Servers {
            strictness: Some(Strictness::real()),
            ..Servers::default()
        },
        |_| {},
    )
    .await
}

#[tokio::test]
async fn a_revoked_self_contained_refresh_token_stays_revoked_at_the_target() {
    let stack = strict_stack().await;
    let app = stack.via_proxy.register_client("App").await.unwrap();
    // A transient consent: the refresh token is self-contained, nothing is
    // persisted for it on either server.
    let consent = Consent {
        long_lived: false,
        rotate: false,
        jwt_access_token: true,
    };
    let tokens = stack
        .via_proxy
        .login_tokens(&app, "alice", consent)
        .await
        .unwrap();
    let refresh_token = tokens.refresh_token.clone().unwrap();
    stack.wait_synced().await;
    // The target accepts it as it is (same keys), before the revocation.
    stack.at_target.refresh(&app, &refresh_token).await.unwrap();

    stack
        .via_proxy
        .revoke(&app, &refresh_token, "refresh_token")
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(stack.at_source.refresh(&app, &refresh_token).await.is_err());
    let at_target = stack.at_target.refresh(&app, &refresh_token).await;
    assert_eq!(
        at_target.as_ref().err().and_then(|err| err.status()),
        Some(400),
        "the revoked refresh token still works at the target: {at_target:?}"
    );
    // Revoking it revoked the client's other tokens for the subject too.
    let introspected = stack
        .at_target
        .introspect(&app, &tokens.access_token)
        .await
        .unwrap();
    assert_eq!(introspected["active"], false, "{introspected}");
}

#[tokio::test]
async fn a_native_sso_device_session_reaches_the_target_and_its_revocation_too() {
    let stack = strict_stack().await;
    let app = stack
        .via_proxy
        .register_client_scoped("Native", "openid email device_sso")
        .await
        .unwrap();
    let login = stack
        .via_proxy
        .login_scope(&app.id, "bob", "openid device_sso", Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(&app, &login.code)
        .await
        .unwrap();
    let device_secret = tokens.response["device_secret"]
        .as_str()
        .expect("native SSO answers a device secret")
        .to_owned();
    let refresh_token = tokens.refresh_token.clone().unwrap();
    stack.wait_synced().await;

    // The device session the token endpoint opened is on the target, so
    // the refresh token bound to it works there.
    assert!(
        stack
            .at_target
            .get_session(&device_secret)
            .await
            .unwrap()
            .is_some(),
        "the device session is not on the target"
    );
    let refreshed = stack.at_target.refresh(&app, &refresh_token).await.unwrap();
    let refresh_token = refreshed.refresh_token.unwrap_or(refresh_token);

    stack
        .via_proxy
        .revoke(&app, &device_secret, "device_secret")
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_session(&device_secret)
            .await
            .unwrap()
            .is_none(),
        "the revoked device session lives on at the target"
    );
    assert!(stack.at_target.refresh(&app, &refresh_token).await.is_err());
}

/// A client revokes with the secret it had before an update rotated it
/// (the source still takes it: the previous secret's grace), while the
/// target, which took the new secret by delete and create, holds no such
/// grace and refuses the old one. The replay is then made with the
/// target's current credentials for that client, not dead-lettered, and
/// the revoked token stays revoked there.
#[tokio::test]
async fn a_revocation_with_a_secret_rotated_since_is_replayed_with_the_targets_credentials() {
    let real = Strictness::real();
    let stack = Stack::start_servers(
        Servers {
            strictness: Some(real),
            // No previous-secret grace on the target (its copy of an
            // updated client is deleted and created), and nothing revoked
            // there by that delete: only the replay can revoke the token.
            target_strictness: Some(Strictness {
                preferred_client_secret_on_update: false,
                client_delete_cascades: false,
                ..real
            }),
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    let app = stack.via_proxy.register_client("App").await.unwrap();
    let consent = Consent {
        long_lived: false,
        rotate: false,
        jwt_access_token: true,
    };
    let tokens = stack
        .via_proxy
        .login_tokens(&app, "carol", consent)
        .await
        .unwrap();
    let refresh_token = tokens.refresh_token.clone().unwrap();
    // The update rotates the secret on both servers.
    let updated = stack.via_proxy.update_client(&app, "App 2").await.unwrap();
    assert_ne!(
        updated.secret, app.secret,
        "the update did not rotate the secret"
    );
    stack.wait_synced().await;

    // Revoked with the old secret: the source takes it (grace).
    stack
        .via_proxy
        .revoke(&app, &refresh_token, "refresh_token")
        .await
        .unwrap();
    stack.wait_synced().await;
    assert_eq!(
        stack.metric("handover_sync_dead_letters").await,
        Some(0.0),
        "the replayed revocation was dead-lettered"
    );
    let at_target = stack.at_target.refresh(&updated, &refresh_token).await;
    assert_eq!(
        at_target.as_ref().err().and_then(|err| err.status()),
        Some(400),
        "the revoked refresh token still works at the target: {at_target:?}"
    );
}
