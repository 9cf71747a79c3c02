//! `handover check` with `[store] kind = "postgres"`: it connects, reads
//! the schema version without changing anything, and exits 69 when the
//! database cannot be reached, never echoing the URL.

#![allow(clippy::unwrap_used)]

#[path = "support/pg.rs"]
mod pg;

use std::io::Write as _;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_handover");
const KEY: &str = handover::config::TEST_JOURNAL_KEY;

fn config_text() -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
[source]
kind = "connect2id"
url = "http://127.0.0.1:8/c2id"
token_env = "HANDOVER_SOURCE_TOKEN"
[target]
kind = "connect2id"
url = "http://127.0.0.1:9/c2id"
token_env = "HANDOVER_TARGET_TOKEN"
[journal]
dir = "{journal}"
payload_key_env = "HANDOVER_JOURNAL_KEY"
[store]
kind = "postgres"
url_env = "HANDOVER_STORE_URL"
connect_timeout = "3s"
"#,
        journal = tempfile::tempdir().unwrap().keep().display()
    )
}

fn check(url: &str) -> (Option<i32>, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config_text().as_bytes()).unwrap();
    let output = Command::new(BIN)
        .args(["check", "-c"])
        .arg(file.path())
        .env("HANDOVER_JOURNAL_KEY", KEY)
        .env("HANDOVER_SOURCE_TOKEN", "source")
        .env("HANDOVER_TARGET_TOKEN", "target")
        .env("HANDOVER_STORE_URL", url)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_reads_the_schema_version_and_changes_nothing() {
    let db = pg::TestDb::create().await;
    let (code, stderr) = check(&db.url);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("schema version 0") && stderr.contains("migrates it at start"),
        "{stderr}"
    );
    // check left the database empty.
    let client = db.client().await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'handover%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);

    // Once a store has opened it, the version is current.
    let dir = tempfile::tempdir().unwrap();
    let store = handover::store::Handle::open(
        &handover::store::Config::postgres(db.url.clone()),
        &handover::journal::Config::new(dir.path()),
        handover::journal::Cipher::from_hex(KEY).unwrap(),
    )
    .await
    .unwrap();
    store.close().await.unwrap();
    let (code, stderr) = check(&db.url);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "schema version {} is current",
            handover::store::SCHEMA_VERSION
        )),
        "{stderr}"
    );

    // A schema from a newer handover is refused (exit 1).
    client
        .execute("UPDATE handover_schema SET version = version + 1", &[])
        .await
        .unwrap();
    let (code, stderr) = check(&db.url);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("upgrade handover"), "{stderr}");
}

#[test]
fn check_exits_69_when_the_database_is_unreachable_and_never_echoes_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, stderr) = check(&format!(
        "postgres://handover:pw-SECRET@127.0.0.1:{port}/db?sslmode=disable"
    ));
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains("store: PostgreSQL connect failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-SECRET"), "{stderr}");
}
