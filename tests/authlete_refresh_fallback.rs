//! The refresh fallback after a cutover to an Authlete-based server: a
//! refresh token that never passed the proxy during mirroring (its client
//! was idle, and the exported copy is not the string the client holds)
//! is refused by the new server; the proxy replays that refresh at the old
//! Connect2id, creates what it issued at Authlete before the client hears
//! back, and the next refresh works at the new server directly. Revoking a
//! token at the new server revokes it at the old one too, so the fallback
//! never brings it back. The window survives a restart, is shown in
//! `status`, and closes when it is over.
//!
//! The source plays Connect2id as shipped: no rotation unless the consent
//! says so, refresh tokens sealed with a random nonce.

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use handover::api::FlipRequest;
use handover::emulator::driver::{Consent, RegisteredClient};
use support::authlete::Version;
use support::cutover::finish_backfill;
use support::stack::{AuthleteSetup, AuthleteStack};

use handover::emulator::driver::Tokens;

macro_rules! in_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Version::V2).await;
                }
            )*
        }
        mod v3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Version::V3).await;
                }
            )*
        }
    };
}

in_both_versions!(
    every_refresh_token_clients_hold_works_after_the_flip_against_the_strict_emulators,
    a_mirrored_refresh_token_swept_at_authlete_before_the_flip_still_works_after_it,
    refresh_tokens_never_seen_during_mirroring_work_after_the_flip_first_through_the_old_server_then_at_the_new_one,
    a_refresh_token_revoked_at_the_new_server_is_not_brought_back_by_the_fallback,
    once_the_refresh_fallback_window_is_over_the_old_server_is_no_longer_asked,
);

/// Connect2id as shipped, an Authlete service with a new authorization
/// server in front of it.
fn setup() -> AuthleteSetup {
    let mut source = handover::emulator::connect2id::Strictness::lenient();
    source.random_refresh_token_nonce = true;
    source.default_rotate = false;
    AuthleteSetup {
        source,
        front: true,
        ..AuthleteSetup::default()
    }
}

/// A login straight at the source (before the proxy came, or by a client
/// that stays idle until after the flip): returns the refresh token.
async fn held_before(
    stack: &AuthleteStack,
    client: &RegisteredClient,
    subject: &str,
    rotate: bool,
) -> String {
    let consent = Consent {
        rotate,
        ..Consent::default()
    };
    let login = stack
        .at_source
        .login(&client.id, subject, consent)
        .await
        .unwrap();
    let tokens = stack
        .at_source
        .exchange_code(client, &login.code)
        .await
        .unwrap();
    tokens.refresh_token.unwrap()
}

async fn cut_over(stack: &AuthleteStack) {
    finish_backfill(&stack.admin()).await;
    let report = stack
        .admin()
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        handover::api::Outcome::CutOver,
        "{report:#?}"
    );
}

/// The refresh fallbacks counted so far.
async fn token_fallbacks(stack: &AuthleteStack) -> f64 {
    stack
        .metric("handover_cutover_fallbacks_total{dataset=\"tokens\"}")
        .await
        .unwrap_or(0.0)
}

async fn refresh_tokens_never_seen_during_mirroring_work_after_the_flip_first_through_the_old_server_then_at_the_new_one(
    version: Version,
) {
    let mut stack = AuthleteStack::start_with(version, setup(), |_| {}).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;
    // Two users idle during the whole mirroring: one whose refresh token
    // never rotates (the default), one whose rotates.
    let kept = held_before(&stack, &client, "mia", false).await;
    let rotating = held_before(&stack, &client, "ned", true).await;
    cut_over(&stack).await;
    // A restart of the proxy after the flip keeps the fallback open.
    stack.restart_proxy().await;
    for token in [&kept, &rotating] {
        assert!(
            stack
                .authlete
                .authlete
                .token_by_refresh_token(token)
                .is_none(),
            "Authlete never got it"
        );
    }

    // The first refresh after the flip: the new server does not know the
    // token, the old one answers, and Authlete holds the result before the
    // client hears back.
    let first = stack.via_proxy.refresh(&client, &kept).await.unwrap();
    assert!(first.refresh_token.is_none(), "no rotation at the source");
    assert!(
        stack
            .authlete
            .authlete
            .token_by_refresh_token(&kept)
            .is_some(),
        "created at Authlete before the response was released"
    );
    let info = stack
        .authlete
        .introspect_in(version, &first.access_token)
        .await;
    assert_eq!(info.body["usable"], true, "{info:?}");
    assert_eq!(info.body["subject"], "mia");
    let rotated = stack.via_proxy.refresh(&client, &rotating).await.unwrap();
    let rotated = rotated.refresh_token.expect("the consent rotates");
    assert!(
        stack
            .authlete
            .authlete
            .token_by_refresh_token(&rotated)
            .is_some()
    );
    assert_eq!(token_fallbacks(&stack).await, 2.0);

    // The next refreshes go to the new server and work there: no
    // fallback needed any more.
    for token in [&kept, &rotated] {
        let next = stack.via_proxy.refresh(&client, token).await.unwrap();
        assert!(next.refresh_token.is_some(), "Authlete rotates");
    }
    assert_eq!(token_fallbacks(&stack).await, 2.0);

    // The operator sees the fallback in use and how long it stays open.
    let status = stack.admin().status().await.unwrap();
    let fallback = status.fallback.clone().expect("a flip happened");
    assert_eq!(fallback.previous, handover::model::Side::Source);
    assert_eq!(
        fallback.used.get(&handover::model::Dataset::Tokens),
        Some(&2)
    );
    let window = handover::servers::authlete::DEFAULT_REFRESH_DURATION.as_millis() as u64;
    assert_eq!(
        fallback.refresh_open_until_ms,
        Some(fallback.flipped_at_ms + window)
    );
    let text = handover::cli::render_status(&status);
    assert!(text.contains("used tokens 2"), "{text}");
    assert_eq!(stack.dead_letters().await, 0);
}

async fn a_refresh_token_revoked_at_the_new_server_is_not_brought_back_by_the_fallback(
    version: Version,
) {
    let stack = AuthleteStack::start_with(version, setup(), |_| {}).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;
    let token = held_before(&stack, &client, "oscar", false).await;
    cut_over(&stack).await;

    // The client revokes it at the new server (which never had it)...
    stack
        .via_proxy
        .revoke(&client, &token, "refresh_token")
        .await
        .unwrap();
    // ... and the old server, still running, revoked it too: a refresh
    // is refused everywhere, and nothing reaches Authlete.
    let refused = stack.via_proxy.refresh(&client, &token).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(stack.at_source.refresh(&client, &token).await.is_err());
    assert!(
        stack
            .authlete
            .authlete
            .token_by_refresh_token(&token)
            .is_none()
    );
}

async fn once_the_refresh_fallback_window_is_over_the_old_server_is_no_longer_asked(
    version: Version,
) {
    let stack = AuthleteStack::start_with(version, setup(), |config| {
        config.cutover.refresh_fallback_window = Some(Duration::from_millis(300));
    })
    .await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;
    let token = held_before(&stack, &client, "pat", false).await;
    cut_over(&stack).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let refused = stack.via_proxy.refresh(&client, &token).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(token_fallbacks(&stack).await, 0.0);
    // The old server would still have taken it: the window closed it.
    assert!(stack.at_source.refresh(&client, &token).await.is_ok());
}

/// Both emulators in their strict reading: Connect2id as shipped and as
/// hostile as its unknowns allow (random-nonce refresh tokens, no rotation
/// by default, ...), Authlete as documented (paths, no alias lookups,
/// replace-style update, 429 with Retry-After, generic duplicate errors,
/// the sweep of unused tokens).
fn strict_setup() -> AuthleteSetup {
    AuthleteSetup {
        source: handover::emulator::connect2id::Strictness::real(),
        authlete: handover::emulator::authlete::Strictness::real(),
        front: true,
        ..AuthleteSetup::default()
    }
}

/// A login through the proxy: what the client holds.
async fn log_in(
    stack: &AuthleteStack,
    client: &RegisteredClient,
    subject: &str,
    rotate: bool,
) -> Tokens {
    let consent = Consent {
        rotate,
        ..Consent::default()
    };
    let login = stack
        .via_proxy
        .login(&client.id, subject, consent)
        .await
        .unwrap();
    stack
        .via_proxy
        .exchange_code(client, &login.code)
        .await
        .unwrap()
}

/// Refreshes through the proxy and returns the refresh token the client
/// holds afterwards (the same one unless rotated).
async fn refresh(
    stack: &AuthleteStack,
    client: &RegisteredClient,
    held: &str,
) -> Result<String, String> {
    let tokens = stack
        .via_proxy
        .refresh(client, held)
        .await
        .map_err(|err| format!("{err:?}"))?;
    Ok(tokens.refresh_token.unwrap_or_else(|| held.to_owned()))
}

async fn every_refresh_token_clients_hold_works_after_the_flip_against_the_strict_emulators(
    version: Version,
) {
    let stack = AuthleteStack::start_with(version, strict_setup(), |_| {}).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;
    // (who, refresh token held at the flip)
    let mut held: Vec<(String, String)> = Vec::new();
    for rotate in [false, true] {
        let tag = if rotate { "rotating" } else { "kept" };
        // Idle during the whole mirroring period: logged in before the
        // proxy came and never seen since.
        let idle = format!("idle-{tag}");
        held.push((
            idle.clone(),
            held_before(&stack, &client, &idle, rotate).await,
        ));
        // Logged in before the proxy, refreshing while it mirrors.
        let old = format!("old-active-{tag}");
        let token = held_before(&stack, &client, &old, rotate).await;
        let token = refresh(&stack, &client, &token).await.unwrap();
        let token = refresh(&stack, &client, &token).await.unwrap();
        held.push((old, token));
        // Logged in through the proxy, then idle.
        let new_idle = format!("new-idle-{tag}");
        let tokens = log_in(&stack, &client, &new_idle, rotate).await;
        held.push((new_idle, tokens.refresh_token.unwrap()));
        // Logged in through the proxy and refreshing.
        let new_active = format!("new-active-{tag}");
        let tokens = log_in(&stack, &client, &new_active, rotate).await;
        let token = refresh(&stack, &client, tokens.refresh_token.as_deref().unwrap())
            .await
            .unwrap();
        held.push((new_active, token));
    }
    stack.wait_synced().await;
    assert_eq!(stack.dead_letters().await, 0);
    cut_over(&stack).await;

    // After the flip every client refreshes with what it holds, twice:
    // the first may go through the fallback, the second must not need it.
    let mut failures = Vec::new();
    for (who, token) in &held {
        match refresh(&stack, &client, token).await {
            Ok(next) => {
                if let Err(err) = refresh(&stack, &client, &next).await {
                    failures.push(format!("{who} (second refresh): {err}"));
                }
            }
            Err(err) => failures.push(format!("{who}: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "held before the flip: {}; failed after it: {failures:#?}",
        held.len()
    );
    // Only the tokens Authlete could not have had needed the old server:
    // the idle ones issued before the proxy came.
    assert_eq!(token_fallbacks(&stack).await, 2.0);
    assert_eq!(stack.dead_letters().await, 0);
}

async fn a_mirrored_refresh_token_swept_at_authlete_before_the_flip_still_works_after_it(
    version: Version,
) {
    // Authlete's 90-day sweep of unused tokens, time-compressed.
    let sweep = Duration::from_millis(800);
    let mut setup = strict_setup();
    setup.authlete.sweep_unused_after = Some(sweep);
    let stack = AuthleteStack::start_with(version, setup, |_| {}).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let tokens = log_in(&stack, &client, "quinn", false).await;
    let token = tokens.refresh_token.unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .authlete
            .authlete
            .token_by_refresh_token(&token)
            .is_some(),
        "mirrored"
    );
    // quinn stays away longer than the sweep allows.
    tokio::time::sleep(sweep + Duration::from_millis(300)).await;
    assert!(
        stack
            .authlete
            .authlete
            .token_by_refresh_token(&token)
            .is_none(),
        "swept at Authlete"
    );
    cut_over(&stack).await;

    // The new server refuses it; the old one (still running, inside the
    // window) answers, and Authlete holds it again.
    let next = refresh(&stack, &client, &token).await.unwrap();
    assert_eq!(token_fallbacks(&stack).await, 1.0);
    assert!(
        stack
            .authlete
            .authlete
            .token_by_refresh_token(&next)
            .is_some()
    );
    refresh(&stack, &client, &next).await.unwrap();
    assert_eq!(
        token_fallbacks(&stack).await,
        1.0,
        "the next one works at the new server"
    );
}
