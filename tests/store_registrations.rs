//! The client credential map in a PostgreSQL store (issue 15): shared by
//! every instance of a fleet, updated slot by slot under a row lock, always
//! read fresh, sealed at rest, and still answering lookups from what an
//! instance knows when the database does not.

#![allow(clippy::unwrap_used)]

#[path = "support/pg.rs"]
mod pg;
#[path = "support/relay.rs"]
mod relay;

use std::sync::Arc;

use handover::journal::{self, Cipher};
use handover::store::{self, Handle, Registrations};

use pg::TestDb;

fn cipher() -> Cipher {
    Cipher::new([7; 32])
}

/// One instance's view: its store handle and its map (its own journal
/// directory, like a real instance).
struct Instance {
    _dir: tempfile::TempDir,
    map: Arc<Registrations>,
}

async fn instance(url: &str) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let store = Handle::open(
        &store::Config::postgres(url),
        &journal::Config::new(dir.path()),
        cipher(),
    )
    .await
    .unwrap();
    let map = Registrations::open(Some(&store), dir.path(), cipher())
        .await
        .unwrap();
    Instance {
        _dir: dir,
        map: Arc::new(map),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn instances_updating_different_slots_of_one_client_at_once_keep_every_write() {
    let db = TestDb::create().await;
    let (a, b, c) = tokio::join!(instance(&db.url), instance(&db.url), instance(&db.url));
    // Each client's entry is written by three instances at once, each its
    // own slot: first with no row there (two first writes must not fail on
    // each other), then again over the existing row (without the row lock,
    // a read-modify-write would put back the slot another instance had
    // just changed).
    let clients: Vec<String> = (0..60).map(|n| format!("client-{n}")).collect();
    for round in 0..2u64 {
        let mut writes = Vec::new();
        for client in &clients {
            for (slot, map) in [&a.map, &b.map, &c.map].into_iter().enumerate() {
                let (map, client) = (Arc::clone(map), client.clone());
                writes.push(tokio::spawn(async move {
                    map.update(&client, move |entry| match slot {
                        0 => entry.source = Some(format!("source-{round}")),
                        1 => entry.target = Some(format!("target-{round}")),
                        _ => entry.secret_changed_at = Some(round),
                    })
                    .await
                    .unwrap();
                }));
            }
        }
        for write in writes {
            write.await.unwrap();
        }
    }
    for client in &clients {
        for map in [&a.map, &b.map, &c.map] {
            let entry = map.lookup(client).await.unwrap();
            assert_eq!(entry.source.as_deref(), Some("source-1"), "{client}");
            assert_eq!(entry.target.as_deref(), Some("target-1"), "{client}");
            assert_eq!(entry.secret_changed_at, Some(1), "{client}");
        }
    }
}

#[tokio::test]
async fn every_instance_sees_the_latest_entry_and_a_forgotten_client_is_gone() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(instance(&db.url), instance(&db.url));
    a.map
        .update("app", |entry| {
            entry.source = Some("rat-source-1".into());
            entry.target = Some("rat-target-1".into());
        })
        .await
        .unwrap();
    let seen = b.map.lookup("app").await.unwrap();
    assert_eq!(seen.target.as_deref(), Some("rat-target-1"));

    // Another instance replaces the target's token: b never answers with
    // the one it read before.
    a.map
        .update("app", |entry| entry.target = Some("rat-target-2".into()))
        .await
        .unwrap();
    let seen = b.map.lookup("app").await.unwrap();
    assert_eq!(seen.source.as_deref(), Some("rat-source-1"));
    assert_eq!(seen.target.as_deref(), Some("rat-target-2"));

    a.map.forget("app").await.unwrap();
    assert!(b.map.lookup("app").await.is_none());
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM handover_registrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn recent_secret_changes_are_counted_over_the_fleet() {
    let db = TestDb::create().await;
    let (a, b, c) = tokio::join!(instance(&db.url), instance(&db.url), instance(&db.url));
    a.map
        .update("one", |entry| entry.secret_changed_at = Some(100))
        .await
        .unwrap();
    b.map
        .update("two", |entry| entry.secret_changed_at = Some(200))
        .await
        .unwrap();
    b.map
        .update("three", |entry| entry.source = Some("s".into()))
        .await
        .unwrap();
    // c synced none of them.
    let changes = c.map.secret_changes(150).await.unwrap();
    assert_eq!((changes.since, changes.latest), (1, Some(200)));
    let changes = c.map.secret_changes(50).await.unwrap();
    assert_eq!(changes.since, 2);
}

#[tokio::test]
async fn the_database_never_sees_a_registration_token_or_client_id_in_clear() {
    let db = TestDb::create().await;
    let a = instance(&db.url).await;
    a.map
        .update("client-SECRET-ID", |entry| {
            entry.source = Some("SECRET-RAT-AT-SOURCE".into());
            entry.target = Some("SECRET-RAT-AT-TARGET".into());
            entry.secret_changed_at = Some(1_700_000_000);
        })
        .await
        .unwrap();
    let rows = db
        .client()
        .await
        .query(
            "SELECT client, entry, secret_changed_at FROM handover_registrations",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    for column in [rows[0].get::<_, Vec<u8>>(0), rows[0].get(1)] {
        let text = String::from_utf8_lossy(&column);
        assert!(
            !text.contains("SECRET"),
            "clear text in the database: {text}"
        );
    }
    // The time of the change is kept in clear, for the pre-flight's count.
    assert_eq!(rows[0].get::<_, Option<i64>>(2), Some(1_700_000_000));

    // An entry is bound to its client: one moved under another client's
    // tag (a writer bug, tampering) is refused, not handed out as that
    // client's tokens or overwritten.
    a.map
        .update("other-client", |entry| {
            entry.source = Some("SECRET-OTHER".into())
        })
        .await
        .unwrap();
    let pg = db.client().await;
    pg.execute(
        "UPDATE handover_registrations SET entry = (
             SELECT entry FROM handover_registrations WHERE client = $1)
         WHERE client = $2",
        &[
            &cipher().tag(b"other-client").as_slice(),
            &cipher().tag(b"client-SECRET-ID").as_slice(),
        ],
    )
    .await
    .unwrap();
    let err = a
        .map
        .update("client-SECRET-ID", |entry| entry.source = None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, store::Error::UnreadableRegistration { .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("SECRET"), "{err}");
}

#[tokio::test]
async fn an_unreachable_database_leaves_lookups_with_what_the_instance_knows() {
    let db = TestDb::create().await;
    let relay = relay::Relay::start(db.addr()).await;
    let a = instance(&db.url_via(relay.addr)).await;
    let b = instance(&db.url).await;
    a.map
        .update("mine", |entry| entry.target = Some("rat-target".into()))
        .await
        .unwrap();
    b.map
        .update("read-by-a", |entry| entry.target = Some("rat-other".into()))
        .await
        .unwrap();
    assert!(a.map.lookup("read-by-a").await.is_some());

    relay.sever();
    // What a wrote or read is still there for the swap.
    let mine = a.map.lookup("mine").await.unwrap();
    assert_eq!(mine.target.as_deref(), Some("rat-target"));
    let read = a.map.lookup("read-by-a").await.unwrap();
    assert_eq!(read.target.as_deref(), Some("rat-other"));
    assert!(a.map.lookup("never-seen").await.is_none());
    // A write fails (the sync retries it) instead of pretending.
    let err = a
        .map
        .update("mine", |entry| entry.source = Some("rat-source".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, store::Error::Postgres { .. }), "{err}");

    relay.restore();
    a.map
        .update("mine", |entry| entry.source = Some("rat-source".into()))
        .await
        .unwrap();
    let both = b.map.lookup("mine").await.unwrap();
    assert_eq!(
        (both.source.as_deref(), both.target.as_deref()),
        (Some("rat-source"), Some("rat-target"))
    );
}

#[tokio::test]
async fn an_instance_switching_to_postgres_brings_its_map_along() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let local = journal::Registrations::open(dir.path(), cipher()).unwrap();
        local
            .update("kept-locally", |entry| {
                entry.source = Some("rat-source".into());
                entry.target = Some("rat-target".into());
            })
            .unwrap();
    }
    let store = Handle::open(
        &store::Config::postgres(db.url.clone()),
        &journal::Config::new(dir.path()),
        cipher(),
    )
    .await
    .unwrap();
    Registrations::open(Some(&store), dir.path(), cipher())
        .await
        .unwrap();

    let other = instance(&db.url).await;
    let entry = other.map.lookup("kept-locally").await.unwrap();
    assert_eq!(entry.target.as_deref(), Some("rat-target"));
    // Moved, not copied: the local log owes nothing at the next start.
    let local = journal::Registrations::open(dir.path(), cipher()).unwrap();
    assert!(local.is_empty());
}
