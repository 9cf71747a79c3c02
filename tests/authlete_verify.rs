//! Honest backfill and verify against an Authlete target.
//!
//! - The backfill copies the refresh-token value a source's export carries,
//!   and says it is unconfirmed (a Connect2id may rebuild the token into
//!   another string than the client holds); a record without a value is
//!   counted by reason, never as a copy.
//! - Verify introspects two samples at Authlete: the refresh tokens seen in
//!   live traffic (the strings clients hold, kept in memory only) and the
//!   exported values, and reports each with its size. An empty live sample
//!   is "not measured", which fails the verify whatever the drift; a live
//!   token Authlete refuses is drift.

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use handover::api::{BackfillState, VerifyRequest};
use handover::emulator::driver::{Consent, RegisteredClient};
use support::authlete::Version;
use support::proxy::eventually;
use support::stack::{AuthleteSetup, AuthleteStack};

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
    a_backfill_counts_records_without_a_refresh_token_value_by_reason_and_never_as_copies,
    verify_measures_the_refresh_tokens_clients_hold_and_an_empty_live_sample_is_not_a_pass,
);

/// Connect2id as shipped: no rotation, refresh tokens sealed with a random
/// nonce (an export's copy is another string than the client's).
fn shipped(seed: usize, records_carry_refresh_token: bool) -> AuthleteSetup {
    let mut source = handover::emulator::connect2id::Strictness::lenient();
    source.random_refresh_token_nonce = true;
    source.default_rotate = false;
    source.records_carry_refresh_token = records_carry_refresh_token;
    AuthleteSetup {
        seed,
        source,
        ..AuthleteSetup::default()
    }
}

async fn run_backfill(stack: &AuthleteStack) -> handover::api::BackfillStatus {
    let admin = stack.admin();
    admin.backfill("start", None, None).await.unwrap();
    let done = eventually(Duration::from_secs(30), || async {
        admin.status().await.unwrap().backfill.state == BackfillState::Done
    })
    .await;
    assert!(done, "the backfill did not finish");
    stack.wait_synced().await;
    admin.status().await.unwrap().backfill
}

async fn a_backfill_counts_records_without_a_refresh_token_value_by_reason_and_never_as_copies(
    version: Version,
) {
    const SEED: usize = 12;
    // An export without refresh-token values: nothing can be copied.
    let stack = AuthleteStack::start_with(version, shipped(SEED, false), |_| {}).await;
    let backfill = run_backfill(&stack).await;
    let tokens = &backfill.datasets[&handover::model::Dataset::Tokens];
    assert_eq!(tokens.copied, 0, "{tokens:?}");
    assert_eq!(tokens.unconfirmed, 0);
    assert_eq!(
        tokens.not_copied.get("value_not_exported"),
        Some(&(SEED as u64)),
        "{tokens:?}"
    );
    assert_eq!(tokens.settled(), SEED as u64, "settled, for the ETA");
    assert_eq!(stack.authlete.authlete.token_count(), 0);
    let text = handover::cli::render_status(&stack.admin().status().await.unwrap());
    assert!(
        text.contains(&format!("not copied: value_not_exported {SEED}")),
        "{text}"
    );

    // With values, each is a copy, and an unconfirmed one.
    let stack = AuthleteStack::start_with(version, shipped(SEED, true), |_| {}).await;
    let backfill = run_backfill(&stack).await;
    let tokens = &backfill.datasets[&handover::model::Dataset::Tokens];
    assert_eq!(tokens.copied, SEED as u64, "{tokens:?}");
    assert_eq!(tokens.unconfirmed, SEED as u64);
    assert!(tokens.not_copied.is_empty(), "{tokens:?}");
}

/// A login straight at the source: the refresh token is the client's
/// alone until it passes the proxy.
async fn held_before(stack: &AuthleteStack, client: &RegisteredClient, subject: &str) -> String {
    let consent = Consent {
        rotate: false,
        ..Consent::default()
    };
    let login = stack
        .at_source
        .login(&client.id, subject, consent)
        .await
        .unwrap();
    stack
        .at_source
        .exchange_code(client, &login.code)
        .await
        .unwrap()
        .refresh_token
        .unwrap()
}

async fn verify_measures_the_refresh_tokens_clients_hold_and_an_empty_live_sample_is_not_a_pass(
    version: Version,
) {
    let stack = AuthleteStack::start_with(version, shipped(0, true), |_| {}).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;
    let alice = held_before(&stack, &client, "alice").await;
    let bob = held_before(&stack, &client, "bob").await;
    let backfill = run_backfill(&stack).await;
    assert_eq!(
        backfill.datasets[&handover::model::Dataset::Tokens].copied,
        2
    );
    let admin = stack.admin();
    let request = VerifyRequest {
        dataset: Some(handover::model::Dataset::Tokens),
        ..VerifyRequest::default()
    };

    // The backfill copied both exported values, yet neither is the string
    // the users hold, nor what the export says now (every read rebuilds
    // another one): the exported share is shown, not counted as drift,
    // and with no live sample nothing proves the users' tokens work.
    let report = admin.verify(&request, |_| {}).await.unwrap();
    let samples = report.datasets[&handover::model::Dataset::Tokens]
        .samples
        .unwrap();
    assert_eq!(
        (samples.exported.sampled, samples.exported.accepted),
        (2, 0)
    );
    assert_eq!(samples.live.sampled, 0);
    assert_eq!(report.drift, 0);
    assert!(!report.passed(), "an empty live sample is not a pass");
    assert_eq!(report.not_measured.len(), 1, "{report:?}");
    let text = handover::cli::render_report(&report);
    assert!(
        text.contains("refresh tokens seen in live traffic not measured"),
        "{text}"
    );
    for token in [&alice, &bob] {
        assert!(
            stack
                .authlete
                .authlete
                .token_by_refresh_token(token)
                .is_none()
        );
    }

    // Their refreshes pass the proxy: the live sample now holds what they
    // hold, and Authlete accepts it.
    for token in [&alice, &bob] {
        stack.via_proxy.refresh(&client, token).await.unwrap();
    }
    stack.wait_synced().await;
    let report = admin.verify(&request, |_| {}).await.unwrap();
    let samples = report.datasets[&handover::model::Dataset::Tokens]
        .samples
        .unwrap();
    assert_eq!((samples.live.sampled, samples.live.accepted), (2, 2));
    assert!(report.passed(), "{report:?}");

    // A token a client holds that Authlete lost (swept, deleted by hand) is
    // drift, named by its authorization.
    let deleted = stack
        .authlete
        .post(
            version,
            "/auth/token/revoke",
            &serde_json::json!({ "refreshTokenIdentifier": bob }),
        )
        .await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    let report = admin.verify(&request, |_| {}).await.unwrap();
    let tokens = &report.datasets[&handover::model::Dataset::Tokens];
    let samples = tokens.samples.unwrap();
    assert_eq!((samples.live.sampled, samples.live.accepted), (2, 1));
    assert_eq!(report.drift, 1, "{report:?}");
    assert!(
        tokens.drifted_keys.iter().any(|key| key.contains("bob")),
        "{tokens:?}"
    );
    assert!(!report.passed());
}
