//! A server that is the secondary must not send back-channel logouts
//! (domain-gaps Q1.16, Q2.5): it ends sessions on its own (idle expiry by
//! its own clock, the deletes the sync applies) and would notify relying
//! parties of logouts the primary never made. The pre-flight warns about a
//! server that advertises back-channel logout, naming it.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::api::{FlipReport, FlipRequest};
use handover::emulator::connect2id::Strictness;
use support::cutover::{admin, finish_backfill};
use support::stack::{Servers, Stack};

async fn dry_run(target_backchannel: bool) -> FlipReport {
    let stack = Stack::start_servers(
        Servers {
            strictness: Some(Strictness::lenient()),
            target_strictness: Some(Strictness {
                backchannel_logout: target_backchannel,
                ..Strictness::lenient()
            }),
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    finish_backfill(&admin(&stack.proxy)).await;
    admin(&stack.proxy)
        .flip(
            "/cutover",
            &FlipRequest {
                dry_run: true,
                ..FlipRequest::default()
            },
        )
        .await
        .unwrap()
}

fn backchannel_check(report: &FlipReport) -> &handover::api::Check {
    report
        .preflight
        .iter()
        .find(|check| check.check == "secondary sends no back-channel logouts")
        .unwrap_or_else(|| panic!("no back-channel check: {report:#?}"))
}

#[tokio::test]
async fn the_pre_flight_warns_of_a_target_that_sends_back_channel_logouts() {
    let report = dry_run(true).await;
    let check = backchannel_check(&report);
    assert!(check.warning, "{check:?}");
    assert!(check.detail.contains("the target"), "{check:?}");
    assert!(!check.detail.contains("the source"), "{check:?}");
}

#[tokio::test]
async fn no_warning_when_neither_server_sends_back_channel_logouts() {
    let report = dry_run(false).await;
    let check = backchannel_check(&report);
    assert!(check.ok && !check.warning, "{check:?}");
}
