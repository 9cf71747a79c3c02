//! Everything handover writes in its journal directory is private to its
//! user, whatever the umask: files 0600 (journal segments, the lock, the
//! cursor, dead letters, backfill checkpoints, the phase state), directories
//! 0700.
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use handover::api::{FlipRequest, Outcome};
use support::cutover::{admin, finish_backfill};
use support::stack::Stack;

/// Every entry under `dir` with its permission bits.
fn modes(dir: &Path, out: &mut Vec<(String, bool, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        out.push((entry.path().display().to_string(), metadata.is_dir(), mode));
        if metadata.is_dir() {
            modes(&entry.path(), out);
        }
    }
}

#[tokio::test]
async fn journal_files_are_created_0600_and_directories_0700() {
    let stack = Stack::start().await;
    let client = stack.via_proxy.register_client("modes").await.unwrap();
    stack.wait_synced().await;
    let admin = admin(&stack.proxy);
    finish_backfill(&admin).await;
    let report = admin
        .flip("/cutover", &FlipRequest::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::CutOver, "{report:?}");
    stack.via_proxy.delete_client(&client.id).await.unwrap();
    stack.wait_synced().await;

    let mut found = Vec::new();
    modes(stack.journal_dir(), &mut found);
    let files = found.iter().filter(|(_, is_dir, _)| !is_dir).count();
    assert!(files >= 4, "{found:?}");
    for (path, is_dir, mode) in &found {
        let expected = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, expected, "{path} is {mode:04o}");
    }
}
