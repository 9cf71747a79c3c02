//! `handover cutover` as an operator runs it, against a proxy running in
//! this process: the dry run's exit code says whether the checks pass, the
//! real flip prints its report as JSON for scripts.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::process::{Command, Output};

use handover::api::FlipReport;
use support::cutover::{admin, finish_backfill, status};
use support::stack::{Stack, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_handover");

/// Runs the binary off the runtime (the proxy it talks to runs on it).
async fn handover(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("HANDOVER_ADMIN_TOKEN", TOKEN)
            .env_remove("HANDOVER_ADMIN_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cutover_command_dry_runs_then_flips_and_prints_json() {
    let stack = Stack::start().await;
    let admin = admin(&stack.proxy);
    let url = stack.proxy.admin_url("");

    // Refused: the backfill has not run. Exit 1, the failed check named.
    let refused = handover(&["cutover", "--dry-run", "--admin", &url]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(stdout.contains("REFUSED"), "{}", text(&refused));
    assert!(
        stdout.contains("[WARN] backfill finished: backfill idle"),
        "{}",
        text(&refused)
    );

    // The checks pass: exit 0, and nothing happened.
    finish_backfill(&admin).await;
    let passed = handover(&["cutover", "--dry-run", "--admin", &url]).await;
    assert_eq!(passed.status.code(), Some(0), "{}", text(&passed));
    assert!(
        String::from_utf8_lossy(&passed.stdout).contains("DRY-RUN-PASSED"),
        "{}",
        text(&passed)
    );
    assert_eq!(
        status(&admin).await.phase,
        handover::model::Phase::Mirroring
    );

    // The flip, for a script.
    let flipped = handover(&["cutover", "--json", "--admin", &url]).await;
    assert_eq!(flipped.status.code(), Some(0), "{}", text(&flipped));
    let reports: Vec<FlipReport> = serde_json::from_slice(&flipped.stdout).unwrap();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    eprintln!(
        "handover cutover --json: {} · pause {} ms",
        report.outcome, report.pause_ms
    );
    assert_eq!(
        (
            report.outcome.as_str(),
            report.epoch,
            report.primary.as_str()
        ),
        ("cut-over", 2, "target"),
        "{}",
        text(&flipped)
    );
    assert!(
        report.steps.iter().any(|s| s.step == "release writes"),
        "{report:#?}"
    );
    let now = status(&admin).await;
    assert_eq!((now.phase.as_str(), now.epoch), ("cut-over", 2));

    // Again: already cut over, so refused, exit 1, still valid JSON.
    let again = handover(&["cutover", "--json", "--admin", &url]).await;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let reports: Vec<FlipReport> = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(reports[0].outcome, handover::api::Outcome::Refused);
    assert!(
        reports[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("while cut-over")),
        "{:?}",
        reports[0]
    );
}
