//! Fleet mode (issue 15): a self-managing client keeps managing itself
//! across the flip whichever instance its calls reach. Its registration
//! access tokens are remembered by the sync wherever that ran, in the map
//! the fleet shares in PostgreSQL; an instance that never synced the client
//! still swaps the token the client holds for the new primary's.

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;
mod support;

use std::time::Duration;

use fleet::eventually;
use handover::api::{AdminClient, FlipRequest, Outcome};
use handover::emulator::driver::{Driver, RegisteredClient};
use support::cutover::{admin, finish_backfill, status};
use support::fleet_stack::{another, fleet_stack, flip_settling};

async fn shows(admin: &AdminClient, phase: &str, primary: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        let now = status(admin).await;
        now.phase.as_str() == phase && now.primary.as_str() == primary
    })
    .await
}

fn registration_token(client: &RegisteredClient) -> String {
    client.record["registration_access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_managing_client_synced_by_one_instance_manages_itself_through_another() {
    let db = pg::TestDb::create().await;
    let stack = fleet_stack(&db.url).await;
    let admin_a = admin(&stack.proxy);

    // Registered through a, synced and backfilled while a is the whole
    // fleet: b never synced this client, so only the shared map can tell
    // it the client's tokens.
    let app = stack.via_proxy.register_client("Self").await.unwrap();
    let source_token = registration_token(&app);
    assert!(fleet::journal_drains(&db.client().await).await);
    finish_backfill(&admin_a).await;
    assert!(stack.target_emulator().client(&app.id).is_some());

    let b = another(&stack, &db.url).await;
    let admin_b = admin(&b);
    let via_b = Driver::new(b.url("/c2id"), support::stack::TOKEN);
    let report = flip_settling(&admin_b, "/cutover", &FlipRequest::default()).await;
    assert_eq!(report.outcome, Outcome::CutOver, "{report:#?}");
    assert!(shows(&admin_b, "cut-over", "target").await);

    // The client still holds the source's registration access token; its
    // calls reach b, which swaps it for the target's.
    let read = via_b
        .read_own_registration(&app.id, &source_token)
        .await
        .unwrap();
    assert!(
        read.is_some(),
        "the new primary refused the client's original registration access token through b"
    );
    let updated = via_b
        .update_own_registration(&app, &source_token, "Self v2")
        .await
        .unwrap();
    let target_token = registration_token(&updated);
    assert_ne!(target_token, source_token);
    assert_eq!(
        stack.target_emulator().client(&app.id).unwrap()["client_name"],
        "Self v2"
    );

    // The update syncs back to the source (on whichever instance claims
    // it); after a rollback, a's swap knows the source's new token for the
    // one the target gave.
    assert!(fleet::journal_drains(&db.client().await).await);
    let report = flip_settling(&admin_a, "/rollback", &FlipRequest::default()).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    assert!(shows(&admin_a, "mirroring", "source").await);
    let back = stack
        .via_proxy
        .read_own_registration(&app.id, &target_token)
        .await
        .unwrap();
    assert_eq!(back.unwrap()["client_name"], "Self v2");
}
