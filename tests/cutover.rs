//! The phases around the fenced flip: the pre-flight refuses mismatched
//! key sets, the flip survives a restart, a rollback keeps what was written
//! on the target, `complete` stops syncing, and management credentials
//! follow the primary. (Several instances: tests/fleet_cutover.rs.)
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use handover::api::AdminClient;
use handover::api::{FlipReport, FlipRequest};
use handover::emulator::connect2id::ApiTokens;
use handover::emulator::driver::{Consent, Driver};
use handover::emulator::jwks::JwkSet;
use serde_json::Value;
use support::cutover::{admin, finish_backfill, status};
use support::proxy::TestProxy;
use support::stack::{Servers, Stack, metric_sum};

/// Starts a stack with the backfill done, ready for a cutover.
async fn ready_stack() -> Stack {
    let stack = Stack::start().await;
    finish_backfill(&admin(&stack.proxy)).await;
    stack
}

async fn cut_over(admin: &AdminClient) -> FlipReport {
    let report = admin
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        handover::api::Outcome::CutOver,
        "{report:#?}"
    );
    report
}

/// (phase, epoch, primary) from `GET /status`.
async fn phase(admin: &AdminClient) -> (String, u64, String) {
    let status = status(admin).await;
    (
        status.phase.to_string(),
        status.epoch,
        status.primary.to_string(),
    )
}

fn expect(phase: &str, epoch: u64, primary: &str) -> (String, u64, String) {
    (phase.to_owned(), epoch, primary.to_owned())
}

/// `kid` → key of a published JWK set.
fn keys_by_kid(set: &Value) -> BTreeMap<String, Value> {
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| (key["kid"].as_str().unwrap().to_owned(), key.clone()))
        .collect()
}

#[tokio::test]
async fn preflight_refuses_different_jwk_sets_naming_the_key_ids() {
    let stack = Stack::start_servers(
        Servers {
            target_jwks: Some(JwkSet::generate()),
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    let admin = admin(&stack.proxy);
    finish_backfill(&admin).await;
    let (source, target) = (
        keys_by_kid(&stack.at_source.jwks().await.unwrap()),
        keys_by_kid(&stack.at_target.jwks().await.unwrap()),
    );
    let differing: Vec<&String> = source
        .keys()
        .chain(target.keys())
        .filter(|kid| source.get(*kid) != target.get(*kid))
        .collect();
    assert!(!differing.is_empty());

    let report = admin
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        handover::api::Outcome::Refused,
        "{report:#?}"
    );
    let check = report
        .preflight
        .iter()
        .find(|check| check.check == "identical JWK sets")
        .expect("a JWK set check");
    assert!(!check.ok, "{check:?}");
    assert!(!check.forceable, "a key mismatch cannot be forced");
    for kid in &differing {
        assert!(
            check.detail.contains(kid.as_str()),
            "{kid} not named: {}",
            check.detail
        );
    }
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("identical JWK sets"),
        "{report:#?}"
    );
    // Every other check passed: this one alone refused.
    assert!(
        report
            .preflight
            .iter()
            .all(|c| c.ok || c.check == "identical JWK sets"),
        "{report:#?}"
    );
    assert!(report.steps.is_empty(), "writes were held: {report:#?}");

    // A dry run reports the same, and so does `force`: it cannot override this.
    for request in [
        FlipRequest {
            dry_run: true,
            ..FlipRequest::default()
        },
        FlipRequest {
            force: true,
            ..FlipRequest::default()
        },
    ] {
        let again = admin.flip("/cutover", &request).await.unwrap();
        assert_eq!(
            again.outcome,
            handover::api::Outcome::Refused,
            "{request:?}: {again:#?}"
        );
        let same = again
            .preflight
            .iter()
            .find(|c| c.check == "identical JWK sets")
            .unwrap();
        assert_eq!((same.ok, &same.detail), (check.ok, &check.detail));
    }
    assert_eq!(phase(&admin).await, expect("mirroring", 1, "source"));
}

#[tokio::test]
async fn a_restart_in_cut_over_keeps_the_target_as_primary() {
    let mut stack = ready_stack().await;
    let before = stack.via_proxy.register_client("Before").await.unwrap();
    cut_over(&admin(&stack.proxy)).await;

    let dir = stack.proxy.journal_dir.take().unwrap();
    let addr = stack.proxy.addr;
    stack.proxy.shutdown().await;
    let mut config = stack.config.clone();
    config.journal.dir = dir.path().to_owned();
    config.proxy.listen = addr;
    stack.proxy = TestProxy::start_with_journal(config).await;
    stack.proxy.journal_dir = Some(dir);
    stack.proxy.wait_ready().await;
    let admin = admin(&stack.proxy);
    assert_eq!(phase(&admin).await, expect("cut-over", 2, "target"));

    // With the source unreachable, a registration can only be the target's.
    stack.source_emulator().knobs().set_down(true);
    let after = stack.via_proxy.register_client("After").await.unwrap();
    let on_target = stack.at_target.get_client(&after.id).await.unwrap();
    assert_eq!(
        on_target.expect("on the target at once")["client_secret"],
        after.secret.as_str()
    );
    // The client from before the flip is served by the target too.
    assert!(
        stack
            .via_proxy
            .get_client(&before.id)
            .await
            .unwrap()
            .is_some()
    );

    // And it syncs back to the source once that is reachable again.
    stack.source_emulator().knobs().set_down(false);
    stack.wait_synced().await;
    let on_source = stack.at_source.get_client(&after.id).await.unwrap();
    assert_eq!(
        on_source.expect("synced back to the source")["client_secret"],
        after.secret.as_str()
    );
}

#[tokio::test]
async fn rollback_after_writes_on_the_target_keeps_them_on_the_source() {
    const BACKLOG: usize = 120;
    let stack = Stack::start_with(|config| {
        // The reverse sync is kept slow below; the lag it builds up is the
        // point of this test, not a reason to refuse.
        config.cutover.max_lag = Duration::from_secs(30);
    })
    .await;
    let admin = admin(&stack.proxy);
    finish_backfill(&admin).await;
    let older = stack.via_proxy.register_client("Older").await.unwrap();
    stack.wait_synced().await;
    cut_over(&admin).await;
    // Only the reverse sync talks to the source now: slow it down, so the
    // rollback finds a backlog longer than its own pre-flight and checks,
    // and must drain it.
    stack
        .source_emulator()
        .knobs()
        .set_latency(Duration::from_millis(200));

    // Writes on the target: a registration, an update (new secret), a
    // login with long-lived consent, a code exchange and two rotations.
    let app = stack.via_proxy.register_client("New").await.unwrap();
    let older = stack
        .via_proxy
        .update_client(&older, "Older v2")
        .await
        .unwrap();
    let login = stack
        .via_proxy
        .login(&app.id, "carol", Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(&app, &login.code)
        .await
        .unwrap();
    let mut refresh = tokens.refresh_token.unwrap();
    for _ in 0..2 {
        refresh = stack
            .via_proxy
            .refresh(&app, &refresh)
            .await
            .unwrap()
            .refresh_token
            .unwrap();
    }
    assert!(
        stack.target_emulator().client(&app.id).is_some(),
        "the writes did not go to the target"
    );
    let mut backlog = Vec::new();
    for n in 0..BACKLOG {
        backlog.push(
            stack
                .via_proxy
                .register_client(&format!("Backlog {n}"))
                .await
                .unwrap(),
        );
    }

    assert!(
        stack.metric("handover_journal_depth").await > Some(0.0),
        "the reverse sync is already done: nothing to drain"
    );

    let report = admin
        .flip(
            "/rollback",
            &FlipRequest {
                max_pause_ms: Some(20_000),
                ..FlipRequest::default()
            },
        )
        .await
        .unwrap();
    eprintln!(
        "rollback: {} · pause {} ms · held {}",
        report.outcome, report.pause_ms, report.held
    );
    for step in &report.steps {
        eprintln!("  {:>5} ms  {}  {}", step.at_ms, step.step, step.detail);
    }
    assert_eq!(
        report.outcome,
        handover::api::Outcome::RolledBack,
        "{report:#?}"
    );
    stack.source_emulator().knobs().set_latency(Duration::ZERO);
    assert_eq!(
        (report.phase.as_str(), report.epoch, report.primary.as_str()),
        ("mirroring", 3, "source")
    );
    assert_eq!(phase(&admin).await, expect("mirroring", 3, "source"));

    // The rollback drained the reverse sync: the source has it all now,
    // without waiting for anything.
    assert_eq!(status(&admin).await.journal.depth, 0);
    for client in backlog.iter().chain([&app, &older]) {
        let on_source = stack.source_emulator().client(&client.id).unwrap();
        assert_eq!(on_source["client_secret"], client.secret.as_str());
    }
    assert_eq!(
        stack.source_emulator().client(&older.id).unwrap()["client_name"],
        "Older v2"
    );
    assert_eq!(
        stack
            .at_source
            .get_session(&login.sid)
            .await
            .unwrap()
            .unwrap()["sub"],
        "carol"
    );
    assert!(
        stack
            .source_emulator()
            .authorization("carol", &app.id)
            .is_some()
    );
    let drift = admin
        .verify(&handover::api::VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(drift.primary, handover::model::Side::Source);
    assert_eq!(drift.drift, 0, "{drift:#?}");
    // The refresh token last rotated on the target works at the source.
    let rotated = stack.at_source.refresh(&app, &refresh).await.unwrap();
    assert!(rotated.refresh_token.is_some());
}

#[tokio::test]
async fn complete_stops_syncing_and_passes_through() {
    let stack = ready_stack().await;
    let admin = admin(&stack.proxy);
    cut_over(&admin).await;

    let report = admin
        .flip("/complete", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        handover::api::Outcome::Completed,
        "{report:#?}"
    );
    assert_eq!(phase(&admin).await, expect("completed", 2, "target"));
    let journaled = status(&admin).await.journal.last_seq;
    let metrics = || async {
        let (_, body) = support::proxy::get(
            &support::proxy::client(),
            &stack.proxy.admin_url("/metrics"),
        )
        .await;
        metric_sum(
            &String::from_utf8_lossy(&body),
            "handover_mirror_triggers_total",
        )
    };
    let triggers = metrics().await;

    // Production traffic still works, against the target.
    let app = stack.via_proxy.register_client("Completed").await.unwrap();
    let login = stack
        .via_proxy
        .login(&app.id, "dana", Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(&app, &login.code)
        .await
        .unwrap();
    stack
        .via_proxy
        .refresh(&app, &tokens.refresh_token.unwrap())
        .await
        .unwrap();
    assert!(stack.target_emulator().client(&app.id).is_some());

    // Nothing was seen as a trigger, nothing journaled: nothing can sync.
    assert_eq!(metrics().await, triggers);
    assert_eq!(status(&admin).await.journal.last_seq, journaled);
    assert!(stack.source_emulator().client(&app.id).is_none());
    assert!(stack.source_emulator().session(&login.sid).is_none());
    // There is no way back from here.
    let refused = admin
        .flip("/rollback", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(
        refused.outcome,
        handover::api::Outcome::Refused,
        "{refused:#?}"
    );
    assert_eq!(phase(&admin).await, expect("completed", 2, "target"));
}

/// One token per management API, all different from the other side's.
fn tokens(side: &str) -> ApiTokens {
    ApiTokens {
        clients: format!("{side}-clients-token"),
        authz_sessions: format!("{side}-authz-sessions-token"),
        authz_store: format!("{side}-authz-store-token"),
        session_store: format!("{side}-session-store-token"),
    }
}

#[tokio::test]
async fn management_credentials_follow_the_primary() {
    let source = tokens("source");
    let stack = Stack::start_servers(
        Servers {
            source_tokens: source.clone(),
            target_tokens: tokens("target"),
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    let admin = admin(&stack.proxy);
    finish_backfill(&admin).await;
    // The login page backend and an admin tool hold the source's tokens,
    // one per API, and keep them across the flip.
    let base = stack.proxy.url("/c2id");
    let clients_api = Driver::new(&base, &source.clients);
    let login_page = Driver::new(&base, &source.authz_sessions);
    let authz_store = Driver::new(&base, &source.authz_store);
    let session_store = Driver::new(&base, &source.session_store);
    let before = clients_api.register_client("Before").await.unwrap();
    stack.wait_synced().await;
    cut_over(&admin).await;
    // Only the target can answer now.
    stack.source_emulator().knobs().set_down(true);

    let app = clients_api.register_client("After").await.unwrap();
    assert!(stack.target_emulator().client(&app.id).is_some());
    assert!(clients_api.get_client(&before.id).await.unwrap().is_some());
    let login = login_page
        .login(&app.id, "erin", Consent::default())
        .await
        .unwrap();
    login_page.exchange_code(&app, &login.code).await.unwrap();
    assert_eq!(
        session_store
            .get_session(&login.sid)
            .await
            .unwrap()
            .expect("the session, read with the source's session-store token")["sub"],
        "erin"
    );
    assert!(
        authz_store
            .get_authorization("erin", &app.id)
            .await
            .unwrap()
            .is_some()
    );
    // A token of another API is not swapped: the target refuses it.
    let wrong = Driver::new(&base, &source.session_store);
    let refused = wrong.register_client("Wrong token").await.unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused}");
    // The target's own token still passes untouched.
    let own = Driver::new(&base, "target-clients-token");
    assert!(own.get_client(&app.id).await.unwrap().is_some());
    stack.source_emulator().knobs().set_down(false);
}

#[tokio::test]
async fn a_recent_key_found_different_before_the_hold_is_checked_again_in_it_and_aborts() {
    let stack = ready_stack().await;
    let admin = admin(&stack.proxy);
    let client = stack.via_proxy.register_client("Shop").await.unwrap();
    stack.wait_synced().await;
    // Someone changes the client at the target behind the sync's back.
    stack
        .at_target
        .update_client(&client, "Changed at the target")
        .await
        .unwrap();
    let report = admin
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        handover::api::Outcome::Aborted,
        "{report:#?}"
    );
    let verify = report
        .steps
        .iter()
        .find(|step| step.step == "verify recent keys")
        .expect("a verify step");
    assert!(!verify.ok, "{report:#?}");
    assert!(verify.detail.contains("1 keys differ"), "{report:#?}");
    assert_eq!(phase(&admin).await, expect("mirroring", 1, "source"));
}

#[tokio::test]
async fn recent_keys_are_verified_before_the_hold_and_what_synced_since_during_it() {
    let stack = ready_stack().await;
    let admin = admin(&stack.proxy);
    for n in 0..20 {
        stack
            .via_proxy
            .register_client(&format!("App {n}"))
            .await
            .unwrap();
    }
    stack.wait_synced().await;
    let report = cut_over(&admin).await;
    let verify = report
        .steps
        .iter()
        .find(|step| step.step == "verify recent keys")
        .expect("a verify step");
    // Nothing synced between the verify before the hold and the hold.
    assert!(
        verify
            .detail
            .starts_with("0 keys equal on both sides during the hold; 20 verified"),
        "{report:#?}"
    );
}
