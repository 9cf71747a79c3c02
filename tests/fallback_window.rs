//! The fallback after a flip lasts at least as long as the longest access
//! token the source issued (domain-gaps Q2.3): an identifier access token
//! has no import path, so it is known only to the server that issued it,
//! and a relying party introspects it at the new primary until it expires.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use handover::api::{FlipRequest, Outcome};
use handover::emulator::driver::Consent;
use support::cutover::{admin, finish_backfill};
use support::stack::Stack;

#[tokio::test]
async fn an_identifier_access_token_issued_before_the_flip_is_introspected_until_it_expires() {
    // A configured window far shorter than the tokens' lifetime (the
    // driver's consents issue 600 s access tokens).
    let stack = Stack::start_with(|config| {
        config.cutover.fallback_window = Duration::from_millis(1);
    })
    .await;
    finish_backfill(&admin(&stack.proxy)).await;
    let app = stack.via_proxy.register_client("App").await.unwrap();
    let consent = Consent {
        jwt_access_token: false,
        ..Consent::default()
    };
    let tokens = stack
        .via_proxy
        .login_tokens(&app, "alice", consent)
        .await
        .unwrap();
    stack.wait_synced().await;
    let report = admin(&stack.proxy)
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::CutOver, "{report:#?}");

    // The new primary never saw the identifier token ...
    let at_target = stack
        .at_target
        .introspect(&app, &tokens.access_token)
        .await
        .unwrap();
    assert_eq!(at_target["active"], false, "{at_target}");
    // ... yet through the proxy it stays active: the window is the token's
    // lifetime, not the configured millisecond.
    let via_proxy = stack
        .via_proxy
        .introspect(&app, &tokens.access_token)
        .await
        .unwrap();
    assert_eq!(via_proxy["active"], true, "{via_proxy}");
}
