//! Golden tests: the formats other processes and other versions read.
//!
//! - The journal record body (the `Change` JSON) is the on-disk format of the
//!   journal and of the dead letters: a handover of the next version must read
//!   what this one wrote, and anything that stops parsing is dead-lettered at
//!   start-up. `tests/golden/changes.jsonl` pins it variant by variant, and
//!   `tests/golden/journal/` is a journal directory (segments, cursor, dead
//!   letters) written by an earlier build, encrypted with
//!   `config::TEST_JOURNAL_KEY`, that must still recover.
//! - The admin API's JSON (DESIGN.md §7: `/status`, the flip report, the
//!   verify report, dead letters, the token import) is read by the CLI of
//!   other versions and by operators' scripts. Each answer is built from its
//!   typed form and compared byte for byte with `tests/golden/*.json`.
//!
//! Regenerate the journal fixture only for a deliberate format change:
//! `cargo test --test golden -- --ignored write_journal_fixture`.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use handover::api::AdminClient;
use handover::api::{
    BackfillState, BackfillStatus, Check, DatasetProgress, DatasetReport, DeadLetterView,
    FlipReport, JournalStatus, KeyParity, KeyProbe, LatencyMs, Outcome, Status, Step, SyncStatus,
    TokenImport, VerifyReport,
};
use handover::config::TEST_JOURNAL_KEY;
use handover::journal::{self, Cipher, DeadLetters, Journal};
use handover::model::{Change, Key, TokenEvent, TokenKind};
use handover::model::{Dataset, Phase, Side};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// One of each journal record shape (every variant and optional field).
fn changes() -> Vec<Change> {
    vec![
        Change::sync(Key::Client {
            client_id: "app-1".into(),
        }),
        Change::sync(Key::Authorization {
            subject: "alice".into(),
            client_id: "app-1".into(),
        }),
        Change::sync(Key::Session {
            sid: "WYBeZ9nSXkFp.bhRrKk4jXNGqL2oVAvm0nw".into(),
        })
        .reading_from(Side::Source),
        Change::SubjectSessions {
            subject: "bob".into(),
        },
        Change::Revocation {
            subject: Some("alice".into()),
            client_id: Some("app-1".into()),
            actor: None,
            timestamp: 1_764_000_000,
        },
        Change::Revocation {
            subject: None,
            client_id: None,
            actor: Some("svc".into()),
            timestamp: 1_764_000_001,
        },
        Change::Resolve {
            token: "rt-opaque-value".into(),
            kind: TokenKind::Refresh,
            from: None,
        },
        Change::Resolve {
            token: "at-opaque-value".into(),
            kind: TokenKind::Access,
            from: Some(Side::Target),
        },
        Change::Token {
            event: TokenEvent::Issued {
                grant_type: "refresh_token".into(),
                client_id: "app-1".into(),
                subject: Some("alice".into()),
                scopes: vec!["openid".into(), "email".into()],
                access_token: "at-1".into(),
                expires_in: 600,
                refresh_token: Some("rt-2".into()),
                refresh_expires_in: Some(86_400),
                replaced_refresh: Some("rt-1".into()),
                kept_refresh: None,
                issued_by: None,
                client_auth: Some("Basic YXBwLTE6czNjcmV0".into()),
            },
        },
        Change::Token {
            event: TokenEvent::Issued {
                grant_type: "client_credentials".into(),
                client_id: "m2m".into(),
                subject: None,
                scopes: Vec::new(),
                access_token: "at-2".into(),
                expires_in: 0,
                refresh_token: None,
                refresh_expires_in: None,
                replaced_refresh: None,
                kept_refresh: None,
                issued_by: None,
                client_auth: None,
            },
        },
        Change::Token {
            event: TokenEvent::Revoked {
                client_id: Some("app-1".into()),
                subject: None,
                token: Some("rt-2".into()),
            },
        },
        Change::RevokeToken {
            client_id: Some("app-1".into()),
            form: "token=rt-3&token_type_hint=refresh_token".into(),
            authorization: Some("Basic YXBwLTE6czNjcmV0".into()),
        },
        Change::RevokeToken {
            client_id: None,
            form: "token=ds-1&token_type_hint=device_secret&client_id=app-2&client_secret=s".into(),
            authorization: None,
        },
    ]
}

/// Shapes added after the journal fixture was written (optional fields
/// only: the fixture still recovers as [`changes`]).
fn newer_changes() -> Vec<Change> {
    vec![
        Change::Token {
            event: TokenEvent::Issued {
                grant_type: "refresh_token".into(),
                client_id: "app-1".into(),
                subject: None,
                scopes: vec!["openid".into()],
                access_token: "at-3".into(),
                expires_in: 600,
                refresh_token: None,
                refresh_expires_in: None,
                replaced_refresh: None,
                kept_refresh: Some("rt-held".into()),
                issued_by: None,
                client_auth: None,
            },
        },
        Change::Sync {
            key: Key::Client {
                client_id: "app-t".into(),
            },
            from: None,
        }
        .scoped(Some(handover::model::Tenant::id("acme"))),
    ]
}

#[test]
fn change_json_is_the_journal_record_format() {
    let text = std::fs::read_to_string(golden("changes.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut changes = changes();
    changes.extend(newer_changes());
    assert_eq!(lines.len(), changes.len(), "one golden line per change");
    for (line, change) in lines.iter().zip(&changes) {
        assert_eq!(&serde_json::to_string(change).unwrap(), line);
        assert_eq!(&serde_json::from_str::<Change>(line).unwrap(), change);
    }
}

/// How many of [`changes`] the journal fixture was written with.
const FIXTURE_CHANGES: usize = 11;

/// Records and dead letters written by an earlier build still recover.
#[test]
fn journal_written_by_an_earlier_build_recovers() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&golden("journal"), dir.path());
    let cipher = Cipher::from_hex(TEST_JOURNAL_KEY).unwrap();
    let (journal, recovery) =
        Journal::open(journal::Config::new(dir.path()), cipher.clone()).unwrap();
    let recovered: Vec<Change> = recovery
        .entries
        .iter()
        .map(|entry| serde_json::from_slice(&entry.body).unwrap())
        .collect();
    // The fixture holds the record shapes of the build that wrote it;
    // shapes added since are pinned by `changes.jsonl` alone.
    assert_eq!(recovered.len(), FIXTURE_CHANGES);
    assert_eq!(recovered, changes()[..FIXTURE_CHANGES]);
    drop(journal);
    let letters = DeadLetters::open(dir.path(), cipher).unwrap().list();
    assert_eq!(letters.len(), 2);
    assert_eq!(
        letters[0].reason,
        "target refused clients: 400 invalid_client_metadata"
    );
    assert_eq!(
        serde_json::from_slice::<Change>(&letters[0].body).unwrap(),
        changes()[0]
    );
    assert_eq!(
        serde_json::from_slice::<Change>(&letters[1].body).unwrap(),
        changes()[8]
    );
}

/// Writes `tests/golden/journal` (run by hand for a deliberate change).
#[tokio::test]
#[ignore = "regenerates the journal fixture"]
async fn write_journal_fixture() {
    let out = golden("journal");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let cipher = Cipher::from_hex(TEST_JOURNAL_KEY).unwrap();
    let (journal, _) = Journal::open(journal::Config::new(&out), cipher.clone()).unwrap();
    let bodies = changes()
        .iter()
        .map(|c| serde_json::to_vec(c).unwrap())
        .collect();
    journal.append_batch(bodies).await.unwrap();
    journal.close().await.unwrap();
    let letters = DeadLetters::open(&out, cipher).unwrap();
    letters
        .push(
            "target refused clients: 400 invalid_client_metadata",
            &serde_json::to_vec(&changes()[0]).unwrap(),
        )
        .unwrap();
    letters
        .push(
            "Authlete refused the token: A109208",
            &serde_json::to_vec(&changes()[8]).unwrap(),
        )
        .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn assert_golden<T: serde::Serialize + serde::de::DeserializeOwned>(name: &str, value: &T) {
    let expected = std::fs::read_to_string(golden(name)).unwrap();
    let actual = serde_json::to_string_pretty(value).unwrap();
    assert_eq!(actual.trim_end(), expected.trim_end(), "{name} changed");
    // And the CLI of this version reads it back to the same bytes.
    let again: T = serde_json::from_str(&expected).unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&again).unwrap().trim_end(),
        expected.trim_end()
    );
}

#[test]
fn status_json_is_stable() {
    let mut datasets = std::collections::BTreeMap::new();
    datasets.insert(
        Dataset::Clients,
        DatasetProgress {
            total: 3000,
            copied: 1200,
            skipped: 3,
            failed: 1,
            not_copied: Default::default(),
            unconfirmed: 0,
            rate: 812.5,
            eta_s: 2,
            error: None,
        },
    );
    datasets.insert(
        Dataset::Sessions,
        DatasetProgress {
            total: 10,
            copied: 0,
            skipped: 0,
            failed: 0,
            not_copied: Default::default(),
            unconfirmed: 0,
            rate: 0.0,
            eta_s: 0,
            error: Some("export failed: source answered 503".into()),
        },
    );
    let status = Status {
        phase: Phase::Mirroring,
        epoch: 1,
        primary: Side::Source,
        ready: true,
        journal: JournalStatus {
            depth: 12,
            oldest_age_ms: 40,
            lag_ms: 40,
            dead_letters: 2,
            last_seq: Some(1041),
            applied_cursor: 1030,
            bytes_on_disk: 65_536,
            untracked: 1,
        },
        backfill: BackfillStatus {
            state: BackfillState::Running,
            rate_limit: 0,
            concurrency: 32,
            elapsed_ms: 1500,
            datasets,
            runner: None,
        },
        warnings: vec!["1 change could not be tracked since Thu, 03 Dec 2026 10:42:31 GMT (a trigger's response was too large, cut off or malformed); run `handover verify --repair`".into()],
        sync: SyncStatus {
            secondary: Side::Target,
            concurrency_limit: 120,
            max_concurrency: 1024,
            in_flight: 96,
            waiting: 4,
            latency_ms: LatencyMs {
                p50: 101.5,
                p99: 140.25,
                samples: 2048,
            },
            min_latency_ms: 100.5,
            throttled_ms: 0,
            overloaded: 3,
            rate: 950.5,
        },
        key_parity: Some(KeyParity {
            ok: false,
            checked_at_ms: 1_764_000_000_000,
            keys: vec![
                KeyProbe {
                    key: "hmac".into(),
                    probed: 50,
                    equal: 50,
                    differ: 0,
                    inconclusive: 0,
                },
                KeyProbe {
                    key: "refresh-token-encrypt".into(),
                    probed: 50,
                    equal: 0,
                    differ: 48,
                    inconclusive: 2,
                },
            ],
        }),
        fallback: None,
        fleet: None,
    };
    assert_golden("status.json", &status);
}

#[test]
fn flip_report_json_is_stable() {
    let report = FlipReport {
        outcome: Outcome::CutOver,
        phase: Phase::CutOver,
        epoch: 2,
        primary: Side::Target,
        preflight: vec![
            Check {
                check: "target healthy".into(),
                ok: true,
                detail: "answered in 3 ms".into(),
                forceable: false,
                warning: false,
            },
            Check {
                check: "dead letters".into(),
                ok: false,
                detail: "2 dead letters".into(),
                forceable: true,
                warning: false,
            },
        ],
        steps: vec![Step {
            step: "drain".into(),
            ok: true,
            at_ms: 41,
            detail: "journal depth 0".into(),
        }],
        pause_ms: 120,
        held: 16,
        released: 16,
        rejected: 0,
        reason: None,
    };
    assert_golden("flip_report.json", &report);
    let refused = FlipReport {
        outcome: Outcome::Refused,
        phase: Phase::Mirroring,
        epoch: 1,
        primary: Side::Source,
        reason: Some("pre-flight failed: dead letters".into()),
        ..FlipReport::default()
    };
    assert_golden("flip_report_refused.json", &refused);
    for (outcome, text) in [
        (Outcome::CutOver, "cut-over"),
        (Outcome::RolledBack, "rolled-back"),
        (Outcome::Completed, "completed"),
        (Outcome::Prepared, "prepared"),
        (Outcome::Aborted, "aborted"),
        (Outcome::Refused, "refused"),
        (Outcome::DryRunPassed, "dry-run-passed"),
        (Outcome::Unreachable, "unreachable"),
    ] {
        assert_eq!(serde_json::to_value(outcome).unwrap(), text);
        assert_eq!(outcome.as_str(), text);
    }
}

#[test]
fn verify_report_json_is_stable() {
    let mut report = VerifyReport {
        primary: Side::Source,
        drift: 3,
        ..VerifyReport::default()
    };
    report.datasets.insert(
        Dataset::Clients,
        DatasetReport {
            primary: 100,
            secondary: 99,
            matching: 97,
            mismatched: 1,
            missing_on_target: 2,
            extra_on_target: 0,
            in_flight: 1,
            idle_expiry_behind: 0,
            drifted_keys: vec!["client:app-7".into(), "session:WYBeZ9…".into()],
            repaired: 0,
            samples: None,
        },
    );
    assert_golden("verify_report.json", &report);
}

/// The additions of an Authlete target: the two refresh-token samples and
/// what was not measured; the backfill's reasons for records not copied
/// and its unconfirmed values; the fallback after the flip.
#[test]
fn authlete_verify_and_status_json_are_stable() {
    let mut report = VerifyReport {
        primary: Side::Source,
        drift: 1,
        not_measured: vec!["tokens: no refresh token seen in live traffic could be checked".into()],
        ..VerifyReport::default()
    };
    report.datasets.insert(
        Dataset::Tokens,
        DatasetReport {
            primary: 100,
            secondary: 100,
            matching: 99,
            mismatched: 0,
            missing_on_target: 1,
            extra_on_target: 0,
            in_flight: 0,
            drifted_keys: vec!["authz:alice|app-1".into()],
            repaired: 0,
            idle_expiry_behind: 0,
            samples: Some(handover::api::TokenSamples {
                live: handover::api::Share::default(),
                exported: handover::api::Share {
                    sampled: 100,
                    accepted: 99,
                    in_flight: 0,
                },
            }),
        },
    );
    assert_golden("verify_report_authlete.json", &report);
    let mut datasets = std::collections::BTreeMap::new();
    datasets.insert(
        Dataset::Tokens,
        DatasetProgress {
            total: 1000,
            copied: 400,
            skipped: 0,
            failed: 0,
            not_copied: [
                ("no_refresh_token".to_owned(), 100),
                ("value_not_exported".to_owned(), 500),
            ]
            .into_iter()
            .collect(),
            unconfirmed: 400,
            rate: 0.0,
            eta_s: 0,
            error: None,
        },
    );
    let status = Status {
        phase: Phase::CutOver,
        epoch: 2,
        primary: Side::Target,
        ready: true,
        journal: JournalStatus::default(),
        backfill: BackfillStatus {
            state: BackfillState::Done,
            rate_limit: 0,
            concurrency: 32,
            elapsed_ms: 900,
            datasets,
            runner: None,
        },
        warnings: vec![],
        sync: SyncStatus::default(),
        key_parity: None,
        fallback: Some(handover::api::FallbackStatus {
            previous: Side::Source,
            flipped_at_ms: 1_764_000_000_000,
            open_until_ms: 1_764_000_600_000,
            refresh_open_until_ms: Some(1_771_776_000_000),
            used: [(Dataset::Tokens, 42)].into_iter().collect(),
        }),
        fleet: None,
    };
    assert_golden("status_authlete.json", &status);
}

#[test]
fn dead_letters_and_token_import_json_are_stable() {
    let letters = vec![DeadLetterView {
        seq: 0,
        change: "client:app-1".into(),
        reason: "target refused clients: 400 invalid_client_metadata".into(),
        at_ms: 1_764_000_000_123,
    }];
    assert_golden("dead_letters.json", &letters);
    let import = TokenImport {
        lines: 20_002,
        created: 20_000,
        expired: 1,
        invalid: 1,
        failed: 0,
        rate: 22_723.5,
        errors: vec!["line 17: not JSON".into()],
    };
    assert_golden("token_import.json", &import);
}

/// The live `/status` of a fresh proxy has exactly the golden shape (the
/// figures of a fresh proxy, with the volatile ones masked).
#[tokio::test]
async fn live_status_has_the_golden_shape() {
    let upstream = support::proxy::FakeUpstream::echo().await;
    let mut proxy =
        support::proxy::TestProxy::start(support::proxy::TestProxy::config_for(&upstream.url()))
            .await;
    proxy.wait_ready().await;
    let client = AdminClient::new(&proxy.admin_url(""), Some("test-token".to_owned()));
    let mut status: serde_json::Value =
        serde_json::to_value(client.status().await.unwrap()).unwrap();
    for volatile in ["bytes_on_disk", "oldest_age_ms", "lag_ms"] {
        status["journal"][volatile] = serde_json::json!(0);
    }
    status["sync"]["latency_ms"] = serde_json::json!({"p50": 0.0, "p99": 0.0, "samples": 0});
    status["sync"]["min_latency_ms"] = serde_json::json!(0.0);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("status_fresh.json")).unwrap())
            .unwrap();
    assert_eq!(status, expected);
    proxy.stop().await;
    upstream.stop().await;
}
