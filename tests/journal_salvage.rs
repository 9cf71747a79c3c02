//! The documented way out of mid-journal corruption: a journal with a
//! corrupt record in the middle keeps the proxy from starting, with an
//! error that names `handover journal salvage`; `handover journal check`
//! reports the segment, offset and count (exit 1) and changes nothing;
//! `handover journal salvage` copies the damaged segment to quarantine,
//! keeps every readable record and says what `verify --repair` will fix;
//! then the proxy starts and every readable record is still pending.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use handover::config::{Config, TEST_JOURNAL_KEY};
use handover::journal::{self, Journal, QUARANTINE_DIR};
use http::StatusCode;
use support::proxy::{FakeUpstream, TestProxy, client, eventually, get};

const BIN: &str = env!("CARGO_BIN_EXE_handover");
const CHANGES: usize = 12;
const DAMAGED: usize = 5;

fn body(index: usize) -> Vec<u8> {
    format!(r#"{{"change":"sync","key":{{"dataset":"clients","client_id":"app-{index}"}}}}"#)
        .into_bytes()
}

fn run(action: &str, config: &Path) -> Output {
    Command::new(BIN)
        .args(["journal", action, "-c"])
        .arg(config)
        .env("HANDOVER_SOURCE_TOKEN", "s")
        .env("HANDOVER_TARGET_TOKEN", "t")
        .env("HANDOVER_JOURNAL_KEY", TEST_JOURNAL_KEY)
        .output()
        .unwrap()
}

fn explain(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn config_file(journal: &Path) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"
[proxy]
listen = "127.0.0.1:0"
[admin]
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
dir = "{}"
payload_key_env = "HANDOVER_JOURNAL_KEY"
"#,
        journal.display()
    )
    .unwrap();
    file
}

/// Every record recovery hands out, in order (bodies).
async fn pending(config: &Config) -> Vec<Vec<u8>> {
    let (journal, recovery) =
        Journal::open(config.journal.clone(), config.journal_cipher().unwrap()).unwrap();
    journal.close().await.unwrap();
    recovery.entries.into_iter().map(|e| e.body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_is_salvaged_and_the_proxy_starts_with_every_readable_record_pending()
 {
    // The primary answers the readiness probe and refuses every management
    // call as overloaded: the sync retries and nothing leaves the journal.
    let primary = FakeUpstream::start(|request: http::Request<hyper::body::Incoming>| async move {
        let status = if request
            .uri()
            .path()
            .ends_with("/.well-known/openid-configuration")
        {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        handover::http::json_response(status, &serde_json::json!({}))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    let mut config = TestProxy::config_for(&primary.url());
    config.journal.dir = journal_dir.clone();

    let (journal, _) =
        Journal::open(config.journal.clone(), config.journal_cipher().unwrap()).unwrap();
    for index in 0..CHANGES {
        journal.append(body(index)).await.unwrap();
    }
    journal.close().await.unwrap();

    // Flip bytes inside record DAMAGED (its ciphertext): its checksum fails
    // and valid records follow, which no crash explains.
    let segment = journal_dir.join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut offset = 0;
    for _ in 0..DAMAGED {
        offset += journal::record::parse(&bytes[offset..]).unwrap().frame_len;
    }
    for byte in &mut bytes[offset + 40..offset + 44] {
        *byte ^= 0x5a;
    }
    std::fs::write(&segment, &bytes).unwrap();

    // The proxy refuses to start, and says how out.
    let listeners = handover::app::Listeners {
        proxy: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        handover::app::run(listeners, config.clone(), std::future::pending()),
    )
    .await
    .expect("the proxy started on a corrupt journal")
    .unwrap_err()
    .to_string();
    assert!(refused.contains("handover journal salvage"), "{refused}");
    assert!(refused.contains(&format!("at byte {offset}")), "{refused}");

    // check: segment, offset, count; exit 1; nothing changed.
    let file = config_file(&journal_dir);
    let checked = run("check", file.path());
    let stdout = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert_eq!(checked.status.code(), Some(1), "{}", explain(&checked));
    assert!(
        stdout.contains(&format!(
            "00000000000000000000.seg at byte {offset}: corrupt ("
        )),
        "{}",
        explain(&checked)
    );
    assert!(stdout.contains("1 records, 1 pending"), "{stdout}");
    assert!(stdout.contains("handover journal salvage"), "{stdout}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);

    // salvage: the original goes to quarantine byte for byte.
    let salvaged = run("salvage", file.path());
    let stdout = String::from_utf8_lossy(&salvaged.stdout).into_owned();
    assert_eq!(salvaged.status.code(), Some(0), "{}", explain(&salvaged));
    assert!(
        stdout.contains(&format!("kept {} pending records", CHANGES - 1)),
        "{stdout}"
    );
    assert!(stdout.contains("lost 1"), "{stdout}");
    assert!(stdout.contains("handover verify --repair"), "{stdout}");
    let quarantined: Vec<_> = std::fs::read_dir(journal_dir.join(QUARANTINE_DIR))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("00000000000000000000.seg"))
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(std::fs::read(&quarantined[0]).unwrap(), bytes);
    let checked = run("check", file.path());
    assert_eq!(checked.status.code(), Some(0), "{}", explain(&checked));

    // Every readable record, in order.
    let expected: Vec<Vec<u8>> = (0..CHANGES).filter(|&i| i != DAMAGED).map(body).collect();
    assert_eq!(pending(&config).await, expected);

    // The proxy starts on it and owes all of them.
    let mut proxy = TestProxy::start_with_journal(config.clone()).await;
    proxy.wait_ready().await;
    let http = client();
    let depth_url = proxy.admin_url("/metrics");
    let owed = eventually(Duration::from_secs(10), || async {
        let (_, body) = get(&http, &depth_url).await;
        support::stack::metric(&String::from_utf8_lossy(&body), "handover_journal_depth")
            == Some((CHANGES - 1) as f64)
    })
    .await;
    assert!(owed, "the journal depth is not {}", CHANGES - 1);
    proxy.stop().await;
    assert_eq!(pending(&config).await, expected);
}
