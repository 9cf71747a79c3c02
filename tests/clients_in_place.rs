//! Clients change in place on the target and self-managing clients keep
//! working across the flip (domain-gaps Q1.2, Q1.3, Q1.4): a delete on a
//! real Connect2id may cascade to the client's authorizations and revoke
//! its tokens, registration access tokens cannot be imported, and a
//! rotated secret stays valid on the source for 30 minutes.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::api::{FlipRequest, Outcome};
use handover::emulator::connect2id::Strictness;
use handover::emulator::driver::{Consent, RegisteredClient};
use support::cutover::{admin, finish_backfill};
use support::stack::{Servers, Stack};

/// A target as the README asks for it: strict (its deletes cascade), but
/// keeping a client's secret on update.
fn keeping_target(preferred_secret_on_update: bool) -> Strictness {
    let mut strictness = Strictness::real();
    strictness.always_refresh_client_secret_on_update = false;
    strictness.preferred_client_secret_on_update = preferred_secret_on_update;
    strictness
}

async fn stack_with(source: Strictness, target: Strictness) -> Stack {
    Stack::start_servers(
        Servers {
            strictness: Some(source),
            target_strictness: Some(target),
            ..Servers::default()
        },
        |_| {},
    )
    .await
}

/// A client with a long-lived authorization of `subject`; its refresh token.
async fn authorized_client(stack: &Stack, subject: &str) -> (RegisteredClient, String) {
    let app = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&app.id, subject, Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(&app, &login.code)
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .target_emulator()
            .authorization(subject, &app.id)
            .is_some()
    );
    (app, tokens.refresh_token.unwrap())
}

fn registration_token(client: &RegisteredClient) -> String {
    client.record["registration_access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_secret_rotation_reaches_the_target_without_deleting_the_client() {
    // The source rotates the secret on every update (the 14.0 default);
    // the target takes the source's new secret on update.
    let stack = stack_with(Strictness::real(), keeping_target(true)).await;
    let (app, refresh_token) = authorized_client(&stack, "alice").await;

    let updated = stack.via_proxy.update_client(&app, "App v2").await.unwrap();
    assert_ne!(updated.secret, app.secret);
    stack.wait_synced().await;

    let on_target = stack.at_target.get_client(&app.id).await.unwrap().unwrap();
    assert_eq!(on_target["client_secret"], updated.secret.as_str());
    assert_eq!(on_target["client_name"], "App v2");
    assert!(
        stack
            .target_emulator()
            .authorization("alice", &app.id)
            .is_some(),
        "the update deleted the client's authorization on the target"
    );
    assert!(
        stack.target_emulator().revocations().is_empty(),
        "the update revoked the client's tokens on the target"
    );
    // The relying party's refresh token works at the target with the new
    // secret.
    stack
        .at_target
        .refresh(&updated, &refresh_token)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_metadata_change_is_applied_in_place_on_the_target() {
    // Neither server rotates on update; the target does not take a
    // preferred secret on update (the hostile reading): an in-place update
    // is the only way that keeps the authorization.
    let mut source = Strictness::real();
    source.always_refresh_client_secret_on_update = false;
    let stack = stack_with(source, keeping_target(false)).await;
    let (app, refresh_token) = authorized_client(&stack, "bob").await;

    let updated = stack.via_proxy.update_client(&app, "App v2").await.unwrap();
    assert_eq!(updated.secret, app.secret);
    stack.wait_synced().await;

    let on_target = stack.at_target.get_client(&app.id).await.unwrap().unwrap();
    assert_eq!(on_target["client_name"], "App v2");
    assert_eq!(on_target["client_secret"], app.secret.as_str());
    assert!(
        stack
            .target_emulator()
            .authorization("bob", &app.id)
            .is_some(),
        "the update deleted the client's authorization on the target"
    );
    stack
        .at_target
        .refresh(&updated, &refresh_token)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_self_managing_client_keeps_managing_itself_across_the_flip_and_back() {
    let stack = stack_with(Strictness::real(), keeping_target(true)).await;
    let app = stack.via_proxy.register_client("Self").await.unwrap();
    stack.wait_synced().await;
    finish_backfill(&admin(&stack.proxy)).await;
    let source_token = registration_token(&app);

    let report = admin(&stack.proxy)
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::CutOver, "{report:#?}");

    // The client still holds the source's registration access token.
    let read = stack
        .via_proxy
        .read_own_registration(&app.id, &source_token)
        .await
        .unwrap();
    assert!(
        read.is_some(),
        "the new primary refused the client's registration access token"
    );
    // It updates itself at the new primary and gets the new primary's token.
    let updated = stack
        .via_proxy
        .update_own_registration(&app, &source_token, "Self v2")
        .await
        .unwrap();
    let target_token = registration_token(&updated);
    assert_ne!(target_token, source_token);
    stack.wait_synced().await;
    let again = stack
        .via_proxy
        .read_own_registration(&app.id, &target_token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again["client_name"], "Self v2");

    // Rolled back, the token the target gave still works at the source.
    let report = admin(&stack.proxy)
        .flip("/rollback", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    let back = stack
        .via_proxy
        .read_own_registration(&app.id, &target_token)
        .await
        .unwrap();
    assert_eq!(back.unwrap()["client_name"], "Self v2");
}

#[tokio::test]
async fn the_pre_flight_warns_of_clients_still_in_their_previous_secret_grace() {
    let stack = stack_with(Strictness::real(), keeping_target(true)).await;
    let app = stack.via_proxy.register_client("Rotating").await.unwrap();
    stack
        .via_proxy
        .update_client(&app, "Rotating v2")
        .await
        .unwrap();
    stack.wait_synced().await;
    finish_backfill(&admin(&stack.proxy)).await;

    let report = admin(&stack.proxy)
        .flip(
            "/cutover",
            &FlipRequest {
                dry_run: true,
                ..FlipRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::DryRunPassed, "{report:#?}");
    let check = report
        .preflight
        .iter()
        .find(|check| check.check == "no client in its previous-secret grace")
        .unwrap_or_else(|| panic!("no grace check: {report:#?}"));
    assert!(check.ok && check.warning, "{check:?}");
    assert!(check.detail.starts_with("1 client"), "{}", check.detail);
}
