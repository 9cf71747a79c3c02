//! The secret keys are proven equal by what they do, not assumed from the
//! public JWK set (domain-gaps Q2.7, Q1.9, Q1.20): a target with the
//! source's published keys but its own SID HMAC and refresh-token keys is
//! refused before the flip, naming the key, and cannot be forced.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::process::{Command, Output};

use handover::api::{Check, FlipReport, FlipRequest, Outcome};
use handover::emulator::connect2id::Strictness;
use handover::emulator::driver::Consent;
use handover::emulator::jwks::JwkSet;
use support::cutover::{admin, finish_backfill, status};
use support::stack::{Servers, Stack, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_handover");

/// A strict stack with live traffic through the proxy: a session, a
/// long-lived refresh token and a self-contained access token; the
/// backfill done. `secret_keys_differ`: the target got the source's
/// `/jwks.json` keys and its own secret ones.
async fn stack_with_traffic(secret_keys_differ: bool) -> Stack {
    let jwks = JwkSet::generate();
    let target_jwks = secret_keys_differ.then(|| jwks.with_new_secret_keys());
    let stack = Stack::start_servers(
        Servers {
            source_jwks: Some(jwks),
            target_jwks,
            strictness: Some(Strictness::real()),
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    let app = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&app.id, "alice", Consent::default())
        .await
        .unwrap();
    stack
        .via_proxy
        .exchange_code(&app, &login.code)
        .await
        .unwrap();
    stack.wait_synced().await;
    finish_backfill(&admin(&stack.proxy)).await;
    stack
}

async fn dry_run(stack: &Stack, force: bool) -> FlipReport {
    admin(&stack.proxy)
        .flip(
            "/cutover",
            &FlipRequest {
                dry_run: true,
                force,
                ..FlipRequest::default()
            },
        )
        .await
        .unwrap()
}

fn check<'a>(report: &'a FlipReport, name: &str) -> &'a Check {
    report
        .preflight
        .iter()
        .find(|check| check.check.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} check: {report:#?}"))
}

#[tokio::test]
async fn a_target_with_other_secret_keys_is_refused_naming_each_key() {
    let stack = stack_with_traffic(true).await;
    let report = dry_run(&stack, false).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    // The published keys are the same: that check alone would pass.
    assert!(check(&report, "identical JWK sets").ok);
    let hmac = check(&report, "SID HMAC key");
    assert!(!hmac.ok && !hmac.forceable, "{hmac:?}");
    assert!(
        hmac.detail.contains("\"hmac\" key differs"),
        "{}",
        hmac.detail
    );
    let refresh = check(&report, "refresh-token key");
    assert!(!refresh.ok && !refresh.forceable, "{refresh:?}");
    assert!(
        refresh
            .detail
            .contains("\"refresh-token-encrypt\" key differs"),
        "{}",
        refresh.detail
    );
    // Not even with --force.
    assert_eq!(dry_run(&stack, true).await.outcome, Outcome::Refused);

    // The running result: in /status and the metric.
    let parity = status(&admin(&stack.proxy)).await.key_parity.unwrap();
    assert!(!parity.ok, "{parity:?}");
    assert_eq!(
        stack
            .metric("handover_cutover_key_parity{key=\"hmac\"}")
            .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn equal_secret_keys_are_proven_with_figures() {
    let stack = stack_with_traffic(false).await;
    let report = dry_run(&stack, false).await;
    assert_eq!(report.outcome, Outcome::DryRunPassed, "{report:#?}");
    assert_eq!(
        check(&report, "SID HMAC key").detail,
        "probed 1 sessions: 1 found at the target under the source's SID"
    );
    let refresh = &check(&report, "refresh-token key").detail;
    assert!(
        refresh.starts_with("probed ") && refresh.contains("decrypt at the target"),
        "{refresh}"
    );
    assert!(!refresh.contains(": 0 decrypt"), "{refresh}");
    assert_eq!(
        check(&report, "access-token keys").detail,
        "probed 1 self-contained access tokens: 1 active at the target with the same subject"
    );
    let discovery = check(&report, "discovery documents agree");
    assert!(discovery.ok && !discovery.warning, "{discovery:?}");
    assert!(status(&admin(&stack.proxy)).await.key_parity.unwrap().ok);
    assert_eq!(
        stack
            .metric("handover_cutover_key_parity{key=\"refresh-token-encrypt\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_command_exits_1_naming_the_key_that_differs() {
    let stack = stack_with_traffic(true).await;
    let url = stack.proxy.admin_url("");
    let output: Output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["cutover", "--dry-run", "--admin", &url])
            .env("HANDOVER_ADMIN_TOKEN", TOKEN)
            .env_remove("HANDOVER_ADMIN_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[FAIL] SID HMAC key (\"hmac\") equal"),
        "{stdout}"
    );
    assert!(stdout.contains("\"hmac\" key differs"), "{stdout}");
}

/// A client the target could only replace (its update minted a new secret
/// there, so handover deleted and re-created it) lost its tokens to the
/// delete's cascade: its access tokens are inactive at the target with
/// equal keys. The probe says "inconclusive" for them, never "the key
/// differs", which would refuse the cutover without a way to force it.
#[tokio::test]
async fn tokens_of_a_client_replaced_at_the_target_are_not_blamed_on_a_key() {
    let real = Strictness::real();
    let stack = Stack::start_servers(
        Servers {
            // The source keeps the secret on update; the target mints a new
            // one, so its copy is replaced, and the delete cascades.
            strictness: Some(Strictness {
                always_refresh_client_secret_on_update: false,
                ..real
            }),
            target_strictness: Some(Strictness {
                always_refresh_client_secret_on_update: true,
                preferred_client_secret_on_update: false,
                client_delete_cascades: true,
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
        .login_tokens(&app, "dave", consent)
        .await
        .unwrap();
    stack.wait_synced().await;
    let renamed = stack.via_proxy.update_client(&app, "App 2").await.unwrap();
    assert_eq!(renamed.secret, app.secret, "the source kept the secret");
    stack.wait_synced().await;
    finish_backfill(&admin(&stack.proxy)).await;
    // The premise: the token is active at the source, not at the target.
    let at_target = stack
        .at_target
        .introspect(&app, &tokens.access_token)
        .await
        .unwrap();
    assert_eq!(at_target["active"], false, "{at_target}");

    let report = dry_run(&stack, false).await;
    let access = check(&report, "access-token keys");
    assert!(access.ok, "{access:?}");
    assert!(access.detail.contains("inconclusive"), "{}", access.detail);
}

/// A secondary whose token inspection fails (a slow target timing out, a
/// `503`) while it answers everything else proves nothing about its key:
/// the refresh tokens are inconclusive, and the flip is not refused for a
/// key. (A failed call read as "unknown token" once refused a flip to a
/// slow target with equal keys.)
#[tokio::test]
async fn a_failing_inspection_at_the_target_is_not_blamed_on_a_key() {
    let stack = stack_with_traffic(false).await;
    let knobs = stack.target_emulator().knobs();
    knobs.set_error_route(Some("/authz-store/rest/v3/inspection"));
    knobs.set_error_rate(1.0);

    let report = dry_run(&stack, false).await;
    let refresh = check(&report, "refresh-token key");
    assert!(refresh.ok, "{refresh:?}");
    assert!(
        refresh.detail.contains("inconclusive"),
        "{}",
        refresh.detail
    );
    assert!(refresh.detail.contains(": 0 decrypt"), "{}", refresh.detail);
    // Everything else at the target answers: the sessions are still proven.
    assert_eq!(
        check(&report, "SID HMAC key").detail,
        "probed 1 sessions: 1 found at the target under the source's SID"
    );

    knobs.set_error_rate(0.0);
    let report = dry_run(&stack, false).await;
    assert_eq!(report.outcome, Outcome::DryRunPassed, "{report:#?}");
}
