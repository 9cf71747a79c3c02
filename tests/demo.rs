//! The demo, as the README's first command runs it (shorter): backfill and
//! a cutover under traffic through the proxy, then zero drift, zero failed
//! requests and no refresh token lost at the flip.

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_with_zero_drift_and_zero_failures() {
    // Long enough that the sync catches up with the backfill's journaling
    // before the flip on a debug build sharing two cores with the other
    // demo (the pre-flight refuses a lag over 1 s).
    let summary = handover::demo::run(handover::demo::Options {
        duration: Duration::from_secs(4),
        users: 4,
        records: 300,
    })
    .await
    .unwrap();
    assert_eq!(summary.totals.errors, 0, "{summary:?}");
    assert_eq!(
        summary.backfill.state,
        handover::api::BackfillState::Done,
        "{summary:?}"
    );
    assert_eq!(summary.verify.drift, 0, "{summary:?}");
    assert_eq!(
        summary.cutover.outcome,
        handover::api::Outcome::CutOver,
        "{summary:?}"
    );
    assert_eq!(summary.cutover.primary, handover::model::Side::Target);
    assert_eq!(summary.rotations.refused, 0, "{summary:?}");
    let counts = &summary.scenarios;
    assert_eq!((counts.sso_kept, counts.sso_users), (40, 40), "{counts:?}");
    assert_eq!(
        (counts.still_revoked, counts.revoked),
        (12, 12),
        "{counts:?}"
    );
    assert_eq!(
        (counts.self_updated, counts.self_managing),
        (3, 3),
        "{counts:?}"
    );
    for dataset in summary.verify.datasets.values() {
        assert!(dataset.matching >= 300, "{dataset:?}");
    }
    assert!(
        summary.totals.logins > 0 && summary.totals.refreshes > 0,
        "{summary:?}"
    );
    for dataset in &summary.drift {
        assert_eq!(dataset.drifted(), 0, "{dataset:?}");
        assert!(dataset.source > 0, "{dataset:?}");
    }
    assert!(summary.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authlete_demo_ends_with_every_held_token_valid_at_authlete() {
    let summary = handover::demo::authlete::run(handover::demo::Options {
        duration: Duration::from_secs(2),
        users: 4,
        records: 300,
    })
    .await
    .unwrap();
    assert_eq!(summary.totals.errors, 0, "{summary:?}");
    assert_eq!(
        summary.backfill.state,
        handover::api::BackfillState::Done,
        "{summary:?}"
    );
    assert_eq!(summary.verify.drift, 0, "{summary:?}");
    assert_eq!(summary.dead_letters, 0, "{summary:?}");
    assert!(summary.held > 0 && summary.refresh_held > 0, "{summary:?}");
    assert_eq!(summary.access_valid, summary.held, "{summary:?}");
    assert_eq!(summary.refresh_valid, summary.refresh_held, "{summary:?}");
    let clients = &summary.verify.datasets["clients"];
    assert!(clients.matching >= 300, "{clients:?}");
    // Every authentication method, no field lost; every refresh token
    // held at the flip works after it, the idle users' through the
    // fallback.
    assert_eq!(summary.method_clients, 7, "{summary:?}");
    assert_eq!(summary.method_clients_whole, 7, "{summary:?}");
    assert_eq!(
        summary.cutover.outcome,
        handover::api::Outcome::CutOver,
        "{summary:?}"
    );
    assert!(summary.refresh_idle > 0, "{summary:?}");
    assert_eq!(
        summary.refresh_after_flip, summary.refresh_before_flip,
        "{summary:?}"
    );
    assert!(summary.fallbacks >= summary.refresh_idle, "{summary:?}");
    assert!(summary.passed());
}
