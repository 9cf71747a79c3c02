//! The operator commands of the real binary (`handover status`, `backfill`,
//! `verify`) against a proxy running in-process: what they print, that
//! `--json` is parseable, and their exit codes (DESIGN.md §7: 0 success,
//! 1 the operation ran and found a problem, 69 the admin API could not be
//! reached).
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use handover::api::Status;
use handover::api::VerifyReport;
use support::stack::{Stack, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_handover");

/// Runs `handover <args> --admin <admin>` with `token` in
/// `HANDOVER_ADMIN_TOKEN`, off the runtime (the proxy keeps serving).
async fn handover(admin: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args(["--admin", admin])
        .env_remove("HANDOVER_ADMIN_URL")
        .env_remove("HANDOVER_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("HANDOVER_ADMIN_TOKEN", token);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn explain(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn status_backfill_and_verify_commands_print_json_and_exit_by_drift() {
    const SEED: u64 = 40;
    let stack = Stack::start_seeded(SEED as usize, |_| {}).await;
    let admin = stack.proxy.admin_url("");
    let run = |args: &'static [&'static str]| handover(&admin, Some(TOKEN), args);

    let output = run(&["status", "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    let status: Status = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(status.phase, handover::model::Phase::Mirroring);
    assert_eq!(status.primary, handover::model::Side::Source);
    assert_eq!(status.backfill.state, handover::api::BackfillState::Idle);

    let output = run(&["status"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    assert!(
        stdout(&output).contains("backfill idle"),
        "{}",
        explain(&output)
    );

    let output = run(&["backfill", "start"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    assert!(stdout(&output).contains("backfill"), "{}", explain(&output));
    let client = stack.admin();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.status().await.unwrap().backfill.state != handover::api::BackfillState::Done {
        assert!(tokio::time::Instant::now() < give_up, "backfill not done");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let output = run(&["status", "--json"]).await;
    let status: Status = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(status.backfill.state, handover::api::BackfillState::Done);
    assert_eq!(status.backfill.datasets["sessions"].copied, SEED);

    // No drift: exit 0.
    let output = run(&["verify"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    assert!(stdout(&output).contains("drift 0"), "{}", explain(&output));
    let output = run(&["verify", "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    let report: VerifyReport = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(report.drift, 0);
    assert_eq!(report.datasets["clients"].matching, SEED);

    // Drift made on the target behind the proxy's back: exit 1.
    let client_id = stack.source_emulator().clients()[7]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.at_target.delete_client(&client_id).await.unwrap();
    let output = run(&["verify", "--json"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    let report: VerifyReport = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(report.drift, 1);
    assert_eq!(report.datasets["clients"].missing_on_target, 1);
    let output = run(&["verify"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    let text = stdout(&output);
    assert!(text.contains("drift 1"), "{}", explain(&output));
    assert!(
        text.contains(&format!("drifted clients: client:{client_id}")),
        "{}",
        explain(&output)
    );

    // --repair still reports what it found, then the drift is gone.
    let output = run(&["verify", "--repair"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    assert!(
        stdout(&output).contains("repair journaled for 1 clients keys"),
        "{}",
        explain(&output)
    );
    stack.wait_synced().await;
    let output = run(&["verify", "--dataset", "clients"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    assert!(stack.target_emulator().client(&client_id).is_some());
}

#[tokio::test]
async fn operator_commands_without_the_admin_token_exit_1_and_say_why() {
    let stack = Stack::start().await;
    let admin = stack.proxy.admin_url("");
    for token in [None, Some("not-the-token")] {
        for args in [&["status"][..], &["backfill", "start"], &["verify"]] {
            let output = handover(&admin, token, args).await;
            assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("401"), "{}", explain(&output));
            assert!(
                stderr.contains("HANDOVER_ADMIN_TOKEN"),
                "{}",
                explain(&output)
            );
        }
    }
    // Nothing was started.
    assert_eq!(
        stack.admin().status().await.unwrap().backfill.state,
        handover::api::BackfillState::Idle
    );
}

#[tokio::test]
async fn operator_commands_exit_69_when_the_admin_api_is_unreachable() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("http://127.0.0.1:{port}");
    for args in [
        &["status"][..],
        &["backfill", "start"],
        &["verify"],
        &["dead-letters"],
        &["cutover", "--dry-run"],
        &["rollback"],
    ] {
        let output = handover(&admin, Some(TOKEN), args).await;
        // Not 1: that means the operation ran and found drift or a problem.
        assert_eq!(output.status.code(), Some(69), "{}", explain(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("cannot reach the admin API"),
            "{}",
            explain(&output)
        );
    }
}
