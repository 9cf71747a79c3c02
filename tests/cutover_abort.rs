//! A cutover that cannot finish inside its pause bound gives up cleanly
//! (held writes go to the source, nothing changes, nothing is lost), and a
//! full hold buffer refuses with `503` and `Retry-After` instead of
//! queueing without bound.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use handover::api::FlipRequest;
use http::{StatusCode, header};
use http_body_util::Full;
use serde_json::json;
use support::cutover::{Load, admin, finish_backfill, status};
use support::proxy::{client, eventually, send};
use support::stack::{Stack, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_slower_than_the_pause_bound_aborts_with_zero_client_errors() {
    let stack = Stack::start_with(|config| {
        // The sync lag under a 600 ms target would fail the pre-flight's
        // lag check; this test is about the pause bound, past the checks.
        config.cutover.max_lag = Duration::from_secs(30);
    })
    .await;
    let admin = admin(&stack.proxy);
    finish_backfill(&admin).await;

    let load = Load::start(&stack.via_proxy, 8);
    assert!(
        load.wait_ok(100, Duration::from_secs(30)).await,
        "the load did not get going: {}",
        load.stats.summary()
    );
    // Each sync to the target now outlasts the whole pause bound.
    stack
        .target_emulator()
        .knobs()
        .set_latency(Duration::from_millis(600));
    let in_flight = eventually(Duration::from_secs(10), || async {
        stack.metric("handover_journal_depth").await > Some(0.0)
    })
    .await;
    assert!(in_flight, "no trigger in flight to the slow target");

    let report = admin
        .flip(
            "/cutover",
            &FlipRequest {
                max_pause_ms: Some(300),
                ..FlipRequest::default()
            },
        )
        .await
        .unwrap();
    let ok_at_abort = load.stats.ok();
    eprintln!(
        "aborted cutover: {} · reason {:?} · pause {} ms · held {} · released {}",
        report.outcome, report.reason, report.pause_ms, report.held, report.released
    );
    assert_eq!(
        report.outcome,
        handover::api::Outcome::Aborted,
        "{report:#?}"
    );
    let reason = report.reason.clone().expect("an aborted report says why");
    assert!(reason.contains("not drained"), "{reason}");
    assert!(
        report
            .steps
            .iter()
            .any(|step| step.step == "drain journal" && !step.ok),
        "{report:#?}"
    );
    assert!(
        !report.steps.iter().any(|step| step.step == "flip primary"),
        "{report:#?}"
    );
    // Bounded: the pause ends at the bound, not when the target catches up
    // (hundreds of syncs at 600 ms each, 16 at a time: many seconds).
    assert!(
        (300..1000).contains(&report.pause_ms),
        "pause {} ms",
        report.pause_ms
    );
    assert_eq!(report.released, report.held);
    assert_eq!(
        (report.phase.as_str(), report.epoch, report.primary.as_str()),
        ("mirroring", 1, "source")
    );
    let now = status(&admin).await;
    assert_eq!(
        (now.phase.as_str(), now.epoch, now.primary.as_str()),
        ("mirroring", 1, "source")
    );

    // Writes keep flowing to the source.
    assert!(
        load.wait_ok(ok_at_abort + 100, Duration::from_secs(30))
            .await,
        "the load stalled after the abort: {}",
        load.stats.summary()
    );
    let stats = Arc::clone(&load.stats);
    load.stop().await;
    eprintln!("load: {}", stats.summary());
    assert_eq!(
        stats.failed(),
        0,
        "client requests failed:\n{}",
        stats.failures().join("\n")
    );

    // Nothing lost: once the target is fast again, it has everything.
    stack.target_emulator().knobs().set_latency(Duration::ZERO);
    stack.wait_synced().await;
    let drift = admin
        .verify(&handover::api::VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(drift.primary, handover::model::Side::Source);
    assert_eq!(drift.drift, 0, "{drift:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hold_buffer_refuses_with_503_and_retry_after() {
    const BURST: usize = 6;
    let stack = Stack::start_with(|config| {
        config.cutover.hold_max_requests = 1;
        // Every recently synced key is verified during the hold, none
        // before it: the slow source below keeps the gate closed.
        config.cutover.verify_ahead = Duration::ZERO;
    })
    .await;
    let admin = admin(&stack.proxy);
    finish_backfill(&admin).await;

    // A slow source keeps the gate closed for about a second: the final
    // check reads every key synced shortly before the hold on both sides,
    // and this one was synced right before the pre-flight began.
    stack
        .source_emulator()
        .knobs()
        .set_latency(Duration::from_millis(1000));
    stack.via_proxy.register_client("App").await.unwrap();
    stack.wait_synced().await;
    let cutover = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.flip("/cutover", &FlipRequest::default()).await })
    };
    let holding = eventually(Duration::from_secs(10), || async {
        status(&admin).await.phase == handover::model::Phase::CuttingOver
    })
    .await;
    assert!(
        holding,
        "the cutover never started holding writes: {:#?}",
        cutover.await
    );

    let http = client();
    let registrations = (0..BURST).map(|n| {
        let http = http.clone();
        let request = http::Request::post(stack.proxy.url("/c2id/clients"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                json!({"client_name": format!("Burst {n}"), "redirect_uris": ["https://rp.example.com/cb"]})
                    .to_string(),
            )))
            .unwrap();
        tokio::spawn(async move { send(&http, request).await.0 })
    });
    let mut answers = Vec::new();
    for registration in registrations.collect::<Vec<_>>() {
        answers.push(registration.await.unwrap());
    }
    let report = cutover.await.unwrap().unwrap();
    eprintln!(
        "hold buffer of 1: {} · pause {} ms · held {} · rejected {} · answers {:?}",
        report.outcome,
        report.pause_ms,
        report.held,
        report.rejected,
        answers
            .iter()
            .map(|a| a.status.as_u16())
            .collect::<Vec<_>>()
    );

    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!refused.is_empty(), "no 503 from a full hold buffer");
    for answer in &refused {
        assert_eq!(
            answer
                .headers
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..]),
            "a 503 without Retry-After: {:?}",
            answer.headers
        );
    }
    // Everything else was held (at most one) and then served.
    assert!(
        answers
            .iter()
            .all(|a| a.status == StatusCode::SERVICE_UNAVAILABLE || a.status == StatusCode::CREATED),
        "{answers:?}"
    );
    assert!(report.held <= 1, "{report:#?}");
    assert_eq!(report.rejected, refused.len() as u64, "{report:#?}");
    assert_eq!(
        report.outcome,
        handover::api::Outcome::CutOver,
        "{report:#?}"
    );
    assert_eq!(
        stack.metric("handover_cutover_rejected_total").await,
        Some(refused.len() as f64)
    );
}
