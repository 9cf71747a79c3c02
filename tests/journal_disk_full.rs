//! A journal that cannot be written (disk full), then can again: client
//! traffic is never failed, each change is synced from memory once (not
//! once per later trigger), kept once, journaled when the journal recovers
//! (then applied once more from the journal), and readiness returns by
//! itself, without waiting for traffic.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use handover::journal::Faults;
use http::StatusCode;
use support::proxy::{client, eventually, get};
use support::stack::{Stack, metric, metric_sum};

/// Changes made while the disk is full.
const CHANGES: usize = 40;

async fn metrics(stack: &Stack) -> String {
    let (_, body) = get(&client(), &stack.proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&body).into_owned()
}

async fn applied(stack: &Stack) -> f64 {
    metric_sum(&metrics(stack).await, "handover_sync_applied_total")
}

async fn ready(stack: &Stack) -> bool {
    let (parts, _) = get(&client(), &stack.proxy.admin_url("/readyz")).await;
    parts.status == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_costs_at_most_two_applies_per_change_and_readiness_returns_without_traffic() {
    let faults = Faults::default();
    let stack = Stack::start_with(|config| config.journal.faults = faults.clone()).await;
    let warm = stack.via_proxy.register_client("before").await.unwrap();
    stack.wait_synced().await;
    let before = applied(&stack).await;

    faults.set_disk_full(true);
    let mut ids = Vec::new();
    for i in 0..CHANGES {
        // Clients see no error: the primary did the work.
        let client = stack
            .via_proxy
            .register_client(&format!("disk full {i}"))
            .await
            .unwrap();
        ids.push(client.id);
    }
    assert!(!ready(&stack).await, "readiness stays true on a full disk");
    // Every change reaches the target from memory meanwhile.
    let copied = eventually(Duration::from_secs(20), || async {
        ids.iter()
            .all(|id| stack.target_emulator().client(id).is_some())
    })
    .await;
    assert!(
        copied,
        "changes made while the disk was full were not synced"
    );
    let text = metrics(&stack).await;
    let during = metric_sum(&text, "handover_sync_applied_total") - before;
    assert!(
        during <= CHANGES as f64,
        "{during} applies for {CHANGES} changes while the disk was full"
    );
    // Counted once each, not once per later trigger.
    assert_eq!(
        metric(&text, "handover_mirror_unjournaled_total"),
        Some(CHANGES as f64)
    );

    // Space again, and no traffic at all: readiness comes back by itself.
    faults.set_disk_full(false);
    let back = eventually(Duration::from_secs(5), || ready(&stack)).await;
    assert!(back, "/readyz did not turn 200 after the journal recovered");
    // The kept changes were journaled and drain like any other.
    stack.wait_synced().await;
    let total = applied(&stack).await - before;
    eprintln!("{CHANGES} changes on a full disk: {during} applies meanwhile, {total} in all");
    assert!(
        total <= 2.0 * CHANGES as f64,
        "{total} applies for {CHANGES} changes in all"
    );
    assert!(stack.target_emulator().client(&warm.id).is_some());
}
