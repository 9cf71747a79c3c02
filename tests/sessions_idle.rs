//! Sessions of users who come back only through single sign-on stay alive
//! on the target as long as on the source (domain-gaps Q2.5, Q1.6): on a
//! real Connect2id an SSO start (`POST /authz-sessions/rest/v3` with
//! `sub_sid`) and a session `GET` bump the session's last-used time, and an
//! import does not carry it. Both emulators run the strict reading with a
//! short `maxIdleTime`, and their clocks move together.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use handover::api::{FlipRequest, Outcome, VerifyRequest};
use handover::emulator::connect2id::Strictness;
use handover::emulator::driver::Consent;
use handover::model::Dataset;
use http::{Method, StatusCode, header};
use support::cutover::{admin, finish_backfill};
use support::proxy::{client, send};
use support::stack::{Servers, Stack, TOKEN};

/// `sessionStore.maxIdleTime` of both servers in these tests.
const MAX_IDLE: Duration = Duration::from_secs(10 * 60);

fn strict() -> Strictness {
    let mut strictness = Strictness::real();
    strictness.session_max_idle_minutes = 10;
    strictness
}

async fn strict_stack() -> Stack {
    Stack::start_servers(
        Servers {
            strictness: Some(strict()),
            ..Servers::default()
        },
        |_| {},
    )
    .await
}

/// Registers a client and logs `subject` in through the proxy; the SID.
async fn logged_in(stack: &Stack, subject: &str) -> (String, String) {
    let app = stack.via_proxy.register_client("App").await.unwrap();
    let login = stack
        .via_proxy
        .login(&app.id, subject, Consent::default())
        .await
        .unwrap();
    stack.wait_synced().await;
    (app.id, login.sid)
}

fn last_used(session: &serde_json::Value) -> u64 {
    session["last_used"].as_u64().unwrap()
}

#[tokio::test]
async fn an_sso_login_keeps_the_session_alive_on_the_target() {
    let stack = strict_stack().await;
    let (client_id, sid) = logged_in(&stack, "alice").await;

    // Eight minutes later the user comes back: the login page finds the
    // session by the cookie's SID, no password asked.
    stack.advance_clocks(MAX_IDLE * 4 / 5);
    let prompt = stack.via_proxy.sso_start(&client_id, &sid).await.unwrap();
    assert_eq!(prompt["type"], "consent", "{prompt}");
    stack.wait_synced().await;

    // Another eight: idle for 16 minutes since the login, 8 since the SSO.
    stack.advance_clocks(MAX_IDLE * 4 / 5);
    assert!(
        stack.at_source.get_session(&sid).await.unwrap().is_some(),
        "the source keeps the session of a user who came back"
    );
    assert!(
        stack.at_target.get_session(&sid).await.unwrap().is_some(),
        "the target let the session idle out although the user came back through SSO"
    );
}

#[tokio::test]
async fn reading_a_session_through_the_proxy_keeps_it_alive_on_the_target() {
    let stack = strict_stack().await;
    let (_, sid) = logged_in(&stack, "bob").await;

    stack.advance_clocks(MAX_IDLE * 4 / 5);
    // The login page reads the session (without skip_last_used_update): a
    // use of it, which extends its idle timer on the source.
    assert!(stack.via_proxy.use_session(&sid).await.unwrap().is_some());
    stack.wait_synced().await;

    stack.advance_clocks(MAX_IDLE * 4 / 5);
    assert!(stack.at_source.get_session(&sid).await.unwrap().is_some());
    assert!(
        stack.at_target.get_session(&sid).await.unwrap().is_some(),
        "the target let a session idle out that the source kept alive"
    );
}

#[tokio::test]
async fn verify_reports_an_idle_expiry_behind_the_source_and_repair_catches_up() {
    let stack = strict_stack().await;
    let (_, sid) = logged_in(&stack, "carol").await;
    let admin = stack.admin();

    // A use the proxy never saw (a server-side session read behind its
    // back): the source's idle timer moves, the target's does not.
    stack.advance_clocks(MAX_IDLE / 2);
    stack.at_source.use_session(&sid).await.unwrap().unwrap();

    let sessions = Some(Dataset::Sessions);
    let report = admin
        .verify(
            &VerifyRequest {
                dataset: sessions,
                ..VerifyRequest::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    let found = &report.datasets[&Dataset::Sessions];
    assert_eq!(found.idle_expiry_behind, 1, "{found:?}");
    assert_eq!(found.mismatched, 1, "{found:?}");
    assert_eq!(report.drift, 1);

    let repaired = admin
        .verify(
            &VerifyRequest {
                dataset: sessions,
                repair: true,
                ..VerifyRequest::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(repaired.datasets[&Dataset::Sessions].repaired, 1);
    stack.wait_synced().await;
    let after = admin
        .verify(
            &VerifyRequest {
                dataset: sessions,
                ..VerifyRequest::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(after.drift, 0, "{after:?}");

    let source = stack.at_source.get_session(&sid).await.unwrap().unwrap();
    let target = stack.at_target.get_session(&sid).await.unwrap().unwrap();
    assert!(last_used(&target) >= last_used(&source));
}

/// The pre-flight check on live sessions, from a dry-run cutover.
async fn sessions_check(stack: &Stack) -> (handover::api::FlipReport, handover::api::Check) {
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
    let check = report
        .preflight
        .iter()
        .find(|check| check.check == "live sessions alive on the target")
        .cloned()
        .unwrap_or_else(|| panic!("no live-session check: {report:#?}"));
    (report, check)
}

#[tokio::test]
async fn the_cutover_pre_flight_proves_every_live_source_session_alive_on_the_target() {
    let stack = strict_stack().await;
    let (_, behind) = logged_in(&stack, "dave").await;
    let app = stack.via_proxy.register_client("Other").await.unwrap();
    let gone = stack
        .via_proxy
        .login(&app.id, "erin", Consent::default())
        .await
        .unwrap()
        .sid;
    stack.wait_synced().await;
    finish_backfill(&admin(&stack.proxy)).await;

    // Behind the proxy's back: one session used on the source, one lost on
    // the target.
    stack.advance_clocks(MAX_IDLE / 2);
    stack.at_source.use_session(&behind).await.unwrap().unwrap();
    let request = http::Request::builder()
        .method(Method::DELETE)
        .uri(format!(
            "{}/session-store/rest/v2/sessions",
            stack.target.url()
        ))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header("sid", gone.as_str())
        .body(Default::default())
        .unwrap();
    let (parts, _) = send(&client(), request).await;
    assert_eq!(parts.status, StatusCode::NO_CONTENT);

    // The pass catches the behind one up, and journals the missing one's
    // re-sync and waits for it (a session may only be late): found again,
    // it counts as alive, and the dry run passes at once.
    let (report, check) = sessions_check(&stack).await;
    assert!(check.ok, "{check:?}");
    assert!(
        check.detail.starts_with("2 live sessions: 2 alive"),
        "{}",
        check.detail
    );
    assert!(check.detail.contains("1 touched"), "{}", check.detail);
    assert_eq!(report.outcome, Outcome::DryRunPassed, "{report:#?}");
    let source = stack.at_source.get_session(&behind).await.unwrap().unwrap();
    let target = stack.at_target.get_session(&behind).await.unwrap().unwrap();
    assert!(last_used(&target) >= last_used(&source));
    // Nothing but the check's re-sync brings the lost one back.
    assert!(
        stack.at_target.get_session(&gone).await.unwrap().is_some(),
        "the session lost on the target was not re-synced"
    );
}

/// The sessions the key-parity check reads at the target in every
/// pre-flight (the SID key probe), besides the live-session check's calls.
const PARITY_PROBES: usize = handover::cutover::parity::PROBES_PER_KEY;

/// The session-store calls the target answered while `pass` ran.
async fn session_store_calls_during<F: std::future::Future>(
    stack: &Stack,
    pass: F,
) -> (F::Output, Vec<handover::emulator::Call>) {
    let knobs = stack.target_emulator().knobs();
    knobs.record_calls(true);
    let output = pass.await;
    let calls = knobs.calls();
    knobs.record_calls(false);
    let calls = calls
        .into_iter()
        .filter(|call| call.route.starts_with("/session-store/"))
        .collect();
    (output, calls)
}

/// A stack whose source holds `live` sessions (seeded), all copied to the
/// target by the backfill.
async fn backfilled_sessions(live: usize) -> Stack {
    let stack = Stack::start_servers(
        Servers {
            seed: live,
            strictness: Some(strict()),
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    finish_backfill(&admin(&stack.proxy)).await;
    stack
}

/// Lets time pass, then uses `count` of the source's sessions behind the
/// proxy's back: their copies on the target are now behind. Their SIDs.
async fn use_some_on_the_source(stack: &Stack, count: usize) -> Vec<String> {
    stack.advance_clocks(MAX_IDLE / 2);
    let sids: Vec<String> = stack
        .source_emulator()
        .sessions()
        .keys()
        .take(count)
        .cloned()
        .collect();
    for sid in &sids {
        stack.at_source.use_session(sid).await.unwrap().unwrap();
    }
    sids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_flight_costs_the_target_one_export_and_a_touch_per_session_behind() {
    const LIVE: usize = 300;
    const BEHIND: usize = 7;
    let stack = backfilled_sessions(LIVE).await;

    // All in step: the target is asked for its export, not for each
    // session (besides the key-parity check's fixed sample).
    let ((report, check), calls) = session_store_calls_during(&stack, sessions_check(&stack)).await;
    assert!(check.ok, "{check:?}");
    assert_eq!(report.outcome, Outcome::DryRunPassed, "{report:#?}");
    assert!(
        check.detail.starts_with(&format!(
            "{LIVE} live sessions: {LIVE} alive on the target (0 touched"
        )),
        "{}",
        check.detail
    );
    assert_eq!(
        calls.len(),
        1 + PARITY_PROBES,
        "the target's session store was called {} times for {LIVE} sessions in step",
        calls.len(),
    );
    assert!(calls.iter().all(|call| call.method == Method::GET));

    // Some behind: one touch each, and nothing more.
    let behind = use_some_on_the_source(&stack, BEHIND).await;
    let ((_, check), calls) = session_store_calls_during(&stack, sessions_check(&stack)).await;
    assert!(check.ok, "{check:?}");
    assert!(
        check.detail.starts_with(&format!(
            "{LIVE} live sessions: {LIVE} alive on the target ({BEHIND} touched"
        )),
        "{}",
        check.detail
    );
    assert_eq!(
        calls.len(),
        1 + PARITY_PROBES + BEHIND,
        "expected the export and {BEHIND} touches, got {} calls",
        calls.len() - PARITY_PROBES
    );
    caught_up(&stack, &behind).await;
}

/// Each of `behind` is no nearer to its idle expiry on the target than on
/// the source: the pre-flight touched it there.
async fn caught_up(stack: &Stack, behind: &[String]) {
    for sid in behind {
        let source = stack.at_source.get_session(sid).await.unwrap().unwrap();
        let target = stack.at_target.get_session(sid).await.unwrap().unwrap();
        assert!(
            last_used(&target) >= last_used(&source),
            "a session behind was not touched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_flight_reads_each_session_at_a_target_without_the_session_export() {
    const LIVE: usize = 40;
    const BEHIND: usize = 3;
    let stack = backfilled_sessions(LIVE).await;
    let behind = use_some_on_the_source(&stack, BEHIND).await;
    let target = stack.target_emulator();
    target.set_strictness(Strictness {
        session_export: false,
        ..target.strictness()
    });

    let ((report, check), calls) = session_store_calls_during(&stack, sessions_check(&stack)).await;
    assert!(check.ok, "{check:?}");
    assert_eq!(report.outcome, Outcome::DryRunPassed, "{report:#?}");
    assert!(
        check.detail.starts_with(&format!(
            "{LIVE} live sessions: {LIVE} alive on the target ({BEHIND} touched"
        )),
        "{}",
        check.detail
    );
    // The refused export, a read of each session, a touch of each behind.
    assert_eq!(
        calls.len(),
        1 + LIVE + BEHIND + PARITY_PROBES,
        "{} calls",
        calls.len()
    );
    caught_up(&stack, &behind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pushed_before_the_flip_is_usable_after_it() {
    let stack = strict_stack().await;
    let app = stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;
    finish_backfill(&admin(&stack.proxy)).await;

    // The relying party pushes its request (PAR) a moment before the
    // flip: only the source knows the request_uri.
    let request_uri = stack
        .via_proxy
        .push_authorization_request(&app)
        .await
        .unwrap();
    let report = admin(&stack.proxy)
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::CutOver, "{report:#?}");

    // The browser reaches the login page after it.
    let prompt = stack
        .via_proxy
        .start_pushed(&app.id, &request_uri)
        .await
        .unwrap();
    assert_eq!(prompt["type"], "auth", "{prompt}");
}
