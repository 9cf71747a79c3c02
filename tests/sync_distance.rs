//! A target far away (issue 14): the sync's concurrency is not a fixed pool
//! bound to `workers / round trip`, it grows while the target answers
//! steadily; and a target that says `429` with `Retry-After` is not called
//! again before that time has passed.
//!
//! No assertion here is on speed: the first test checks what a fixed pool
//! could never show (more jobs at once than it has workers), the second a
//! lower bound a busy machine can only make later.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::stack::{Stack, differences};

/// The pool the sync starts with in these tests, small so that a target
/// 50 ms away could not keep up with it alone.
const WORKERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_50_ms_away_gets_more_jobs_at_once_than_the_pool_started_with() {
    let stack = Stack::start_with(|config| {
        config.sync.workers = WORKERS;
        config.sync.max_concurrency = 256;
    })
    .await;
    stack
        .target_emulator()
        .knobs()
        .set_latency(Duration::from_millis(50));

    // Watch the sync's concurrency while the writes arrive and drain.
    let admin = stack.admin();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let done = done.clone();
        async move {
            let (mut limit, mut in_flight) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                let sync = admin.status().await.unwrap().sync;
                limit = limit.max(sync.concurrency_limit);
                in_flight = in_flight.max(sync.in_flight);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (limit, in_flight)
        }
    });

    // 240 client registrations (2 target round trips each), 24 at a time:
    // far more than 4 jobs of 100 ms can take.
    let registrations = (0..24).map(|writer| {
        let driver = stack.via_proxy.clone();
        tokio::spawn(async move {
            for n in 0..10 {
                driver
                    .register_client(&format!("distant {writer}-{n}"))
                    .await
                    .unwrap();
            }
        })
    });
    for registration in registrations.collect::<Vec<_>>() {
        registration.await.unwrap();
    }
    stack.wait_synced().await;
    done.store(true, Ordering::Relaxed);
    let (limit, in_flight) = watcher.await.unwrap();

    assert!(
        limit > WORKERS && in_flight > WORKERS,
        "the concurrency never grew past the {WORKERS} jobs it started with \
         (highest limit {limit}, most jobs at once {in_flight})"
    );
    let drift = differences(stack.source_emulator(), stack.target_emulator());
    assert!(drift.is_empty(), "{drift:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_429_is_not_called_before_its_retry_after() {
    const RETRY_AFTER: Duration = Duration::from_secs(2);
    let stack = Stack::start().await;
    let knobs = stack.target_emulator().knobs();
    knobs.record_calls(true);
    knobs.set_throttle(Some(RETRY_AFTER));

    // One key, so one job: every call the target sees after a 429 was sent
    // after the proxy read that 429.
    stack.via_proxy.register_client("throttled").await.unwrap();
    let throttled_twice = async {
        while knobs.calls().iter().filter(|call| call.throttled).count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), throttled_twice)
        .await
        .expect("the sync never called the throttled target twice");
    knobs.set_throttle(None);
    stack.wait_synced().await;
    let calls = knobs.calls();
    knobs.record_calls(false);

    for pair in calls.windows(2) {
        let (answer, next) = (&pair[0], &pair[1]);
        if answer.throttled {
            let waited = next.at.duration_since(answer.at);
            assert!(
                waited >= RETRY_AFTER,
                "the target was called {waited:?} after a 429 asking for {RETRY_AFTER:?}"
            );
        }
    }
    assert!(
        calls.iter().any(|call| !call.throttled),
        "no call went through after the throttle ended"
    );
    let drift = differences(stack.source_emulator(), stack.target_emulator());
    assert!(drift.is_empty(), "{drift:#?}");
}
