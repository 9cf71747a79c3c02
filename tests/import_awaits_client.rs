//! A target that checks the client of an authorization import refuses one
//! whose client has not arrived yet (domain-gaps Q1.13, the strict
//! emulator's `import_requires_client`). Clients and authorizations travel
//! in different lanes, so that refusal is a wait, retried until the client
//! is there, never a dead letter.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::emulator::connect2id::Strictness;
use handover::emulator::driver::Consent;
use support::stack::{Servers, Stack};

#[tokio::test]
async fn an_authorization_waits_for_its_client_instead_of_dead_lettering() {
    let stack = Stack::start_servers(
        Servers {
            strictness: Some(Strictness {
                import_requires_client: true,
                ..Strictness::lenient()
            }),
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    // A client registered before the proxy came (not synced yet: the
    // backfill has not run).
    let app = stack.at_source.register_client("Before").await.unwrap();
    let consent = Consent {
        long_lived: true,
        ..Consent::default()
    };
    // A login through the proxy persists an authorization of that client
    // (at the code exchange): its sync reaches a target that does not know
    // the client.
    let login = stack
        .via_proxy
        .login(&app.id, "alice", consent)
        .await
        .unwrap();
    stack
        .via_proxy
        .exchange_code(&app, &login.code)
        .await
        .unwrap();
    let refused_for_now =
        support::proxy::eventually(std::time::Duration::from_secs(10), || async {
            let (_, body) = support::proxy::get(
                &support::proxy::client(),
                &stack.proxy.admin_url("/metrics"),
            )
            .await;
            support::stack::metric_sum(
                &String::from_utf8_lossy(&body),
                "handover_sync_failures_total",
            ) > 0.0
        })
        .await;
    assert!(refused_for_now, "the import was never refused");
    assert!(stack.at_target.get_client(&app.id).await.unwrap().is_none());

    // The client arrives (an update through the proxy syncs it); the
    // waiting authorization follows it without an operator.
    stack
        .via_proxy
        .update_client(&app, "Renamed")
        .await
        .unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .at_target
            .get_authorization("alice", &app.id)
            .await
            .unwrap()
            .is_some(),
        "the authorization never reached the target"
    );
    let dead = stack.admin().dead_letters().await.unwrap();
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
}
