//! The backfill and verify, end to end: records that existed on the source
//! before the proxy came are copied to the target through the admin API,
//! live writes made while an export streams win over the exported copies,
//! a restart resumes from the checkpoint, and verify finds (and repairs)
//! drift made behind the proxy's back.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use handover::api::AdminClient;
use handover::api::Status;
use handover::api::{VerifyReport as Report, VerifyRequest};
use handover::config::Config;
use handover::emulator::connect2id::{self, Connect2id};
use handover::emulator::driver::RegisteredClient;
use handover::emulator::jwks::JwkSet;
use handover::model::Dataset;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::proxy::{FakeUpstream, HttpClient, TestProxy, client, get, send};
use support::stack::{Stack, TOKEN, differences, metric};

const DATASETS: [&str; 3] = ["clients", "authorizations", "sessions"];

/// Polls `/status` until `until` holds; panics with the last status after
/// `deadline`.
async fn wait_status(
    admin: &AdminClient,
    deadline: Duration,
    what: &str,
    until: impl Fn(&Status) -> bool,
) -> Status {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        let status = admin.status().await.unwrap();
        if until(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{what}: not within {deadline:?}; last status {}",
            serde_json::to_string_pretty(&status).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the backfill is no longer running; returns the status.
async fn wait_backfill_finished(admin: &AdminClient, deadline: Duration) -> Status {
    wait_status(admin, deadline, "the backfill finishes", |status| {
        matches!(status.backfill.state.as_str(), "done" | "failed" | "idle")
    })
    .await
}

/// Records of `dataset` settled by the backfill so far.
fn settled(status: &Status, dataset: &str) -> u64 {
    let progress = &status.backfill.datasets[dataset];
    progress.copied + progress.skipped + progress.failed
}

async fn verify(admin: &AdminClient, request: VerifyRequest) -> Report {
    admin.verify(&request, |_| {}).await.unwrap()
}

fn assert_no_drift(report: &Report) {
    assert_eq!(
        report.drift,
        0,
        "verify found drift: {}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

/// Compares the emulators' records directly (not through verify).
fn assert_converged(stack: &Stack) {
    assert_converged_where(stack, |_| true);
}

/// Like [`assert_converged`], for the keys `compared` selects.
fn assert_converged_where(stack: &Stack, compared: impl Fn(&str) -> bool) {
    let drift: Vec<String> = differences(stack.source_emulator(), stack.target_emulator())
        .into_iter()
        .filter(|line| compared(line))
        .collect();
    assert!(drift.is_empty(), "drift:\n{}", drift.join("\n"));
}

#[tokio::test]
async fn backfill_copies_every_seeded_record_and_verify_reports_zero_drift() {
    const SEED: u64 = 300;
    let stack = Stack::start_seeded(SEED as usize, |_| {}).await;
    let admin = stack.admin();
    assert_eq!(
        admin.status().await.unwrap().backfill.state,
        handover::api::BackfillState::Idle
    );
    assert_eq!(stack.target_emulator().counts().clients, 0);

    admin.backfill("start", None, None).await.unwrap();
    let status = wait_backfill_finished(&admin, Duration::from_secs(30)).await;
    assert_eq!(
        status.backfill.state,
        handover::api::BackfillState::Done,
        "{status:?}"
    );
    for dataset in DATASETS {
        let progress = &status.backfill.datasets[dataset];
        assert_eq!(progress.total, SEED, "{dataset}: {progress:?}");
        assert_eq!(progress.copied, SEED, "{dataset}: {progress:?}");
        assert_eq!(progress.skipped, 0, "{dataset}: {progress:?}");
        assert_eq!(progress.failed, 0, "{dataset}: {progress:?}");
        assert_eq!(progress.error, None, "{dataset}");
    }

    let report = verify(&admin, VerifyRequest::default()).await;
    assert_no_drift(&report);
    assert_eq!(report.primary, handover::model::Side::Source);
    for dataset in DATASETS {
        let result = &report.datasets[dataset];
        assert_eq!(result.primary, SEED, "{dataset}: {result:?}");
        assert_eq!(result.secondary, SEED, "{dataset}: {result:?}");
        assert_eq!(result.matching, SEED, "{dataset}: {result:?}");
        assert_eq!(result.in_flight, 0, "{dataset}: {result:?}");
    }

    // Not just verify's word: the emulators hold the same records.
    let counts = stack.target_emulator().counts();
    assert_eq!(
        (counts.clients, counts.authorizations, counts.sessions),
        (SEED as usize, SEED as usize, SEED as usize),
        "{counts:?}"
    );
    assert_converged(&stack);
}

/// A management API call with the stack's token; returns the status and
/// the body.
async fn management(
    http: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Bytes) {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = match body {
        Some(value) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(value.to_string()))
        }
        None => Full::default(),
    };
    let (parts, bytes) = send(http, request.body(body).unwrap()).await;
    (parts.status, bytes)
}

/// A seeded client as the driver needs it, read from an emulator.
fn registered(record: Value) -> RegisteredClient {
    RegisteredClient {
        id: record["client_id"].as_str().unwrap().to_owned(),
        secret: record["client_secret"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        record,
    }
}

#[tokio::test]
async fn verify_finds_drift_injected_behind_the_proxys_back_and_repair_fixes_it() {
    const SEED: u64 = 100;
    let stack = Stack::start_seeded(SEED as usize, |_| {}).await;
    let admin = stack.admin();
    admin.backfill("start", None, None).await.unwrap();
    let status = wait_backfill_finished(&admin, Duration::from_secs(30)).await;
    assert_eq!(status.backfill.state, handover::api::BackfillState::Done);
    assert_no_drift(&verify(&admin, VerifyRequest::default()).await);

    // Drift made directly on the target, where the proxy cannot see it.
    let http = client();
    let clients = stack.source_emulator().clients();
    let confidential: Vec<Value> = clients
        .iter()
        .filter(|c| c.get("client_secret").is_some())
        .cloned()
        .collect();
    // A changed client (the target rotates its secret and renames it).
    let tampered = registered(
        stack
            .target_emulator()
            .client(confidential[10]["client_id"].as_str().unwrap())
            .unwrap(),
    );
    stack
        .at_target
        .update_client(&tampered, "Renamed behind the proxy")
        .await
        .unwrap();
    // A client deleted on the target only.
    let deleted = confidential[20]["client_id"].as_str().unwrap().to_owned();
    stack.at_target.delete_client(&deleted).await.unwrap();
    // A client that exists on the target only.
    let extra = stack
        .at_target
        .register_client("Only on the target")
        .await
        .unwrap();
    // An authorization deleted on the target only.
    let authorization = stack.source_emulator().authorizations()[30].clone();
    let (subject, authz_client) = (
        authorization["sub"].as_str().unwrap(),
        authorization["cid"].as_str().unwrap(),
    );
    let (status, _) = management(
        &http,
        Method::DELETE,
        &format!(
            "{}/authz-store/rest/v3/authorizations?subject={subject}&client_id={authz_client}",
            stack.target.url()
        ),
        &[],
        None,
    )
    .await;
    assert!(status.is_success(), "{status}");
    assert!(
        stack
            .target_emulator()
            .authorization(subject, authz_client)
            .is_none()
    );
    // A session changed on the target only.
    let sessions = stack.source_emulator().sessions();
    let (sid, session) = sessions.iter().nth(40).unwrap();
    let (status, _) = management(
        &http,
        Method::PUT,
        &format!("{}/session-store/rest/v2/sessions", stack.target.url()),
        &[("SID", sid)],
        Some(json!({"sub": session["sub"], "data": {"tampered": true}})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let report = verify(
        &admin,
        VerifyRequest {
            list: Some(10),
            ..VerifyRequest::default()
        },
    )
    .await;
    let text = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(report.drift, 5, "{text}");
    let clients_report = &report.datasets["clients"];
    assert_eq!(
        (
            clients_report.mismatched,
            clients_report.missing_on_target,
            clients_report.extra_on_target
        ),
        (1, 1, 1),
        "{text}"
    );
    assert_eq!(clients_report.matching, SEED - 2, "{text}");
    let mut listed = clients_report.drifted_keys.clone();
    listed.sort();
    let mut expected = vec![
        format!("client:{}", tampered.id),
        format!("client:{deleted}"),
        format!("client:{}", extra.id),
    ];
    expected.sort();
    assert_eq!(listed, expected, "{text}");

    let authorizations = &report.datasets["authorizations"];
    assert_eq!(
        (
            authorizations.mismatched,
            authorizations.missing_on_target,
            authorizations.extra_on_target
        ),
        (0, 1, 0),
        "{text}"
    );
    assert_eq!(
        authorizations.drifted_keys,
        vec![format!("authz:{subject}|{authz_client}")]
    );

    let sessions_report = &report.datasets["sessions"];
    assert_eq!(
        (
            sessions_report.mismatched,
            sessions_report.missing_on_target,
            sessions_report.extra_on_target
        ),
        (1, 0, 0),
        "{text}"
    );
    // The session is named, but never by its SID (a bearer credential).
    let [shown] = sessions_report.drifted_keys.as_slice() else {
        panic!("one drifted session expected: {text}");
    };
    let sid_key = sid.rsplit_once('.').unwrap().0;
    assert!(shown.starts_with("session:"), "{shown}");
    assert!(
        sid_key.starts_with(shown.trim_start_matches("session:").trim_end_matches('…')),
        "{shown}"
    );
    assert!(
        !text.contains(sid_key),
        "the report shows a SID key: {text}"
    );
    assert!(shown.chars().count() < "session:".len() + 12, "{shown}");

    // Repair journals a sync of every drifted key: the source's state wins.
    let repair = verify(
        &admin,
        VerifyRequest {
            repair: true,
            ..VerifyRequest::default()
        },
    )
    .await;
    assert_eq!(repair.drift, 5);
    let repaired: u64 = repair.datasets.values().map(|d| d.repaired).sum();
    assert_eq!(repaired, 5);
    stack.wait_synced().await;
    assert_no_drift(&verify(&admin, VerifyRequest::default()).await);
    assert_converged(&stack);
    assert!(stack.target_emulator().client(&extra.id).is_none());
    let restored = stack.target_emulator().client(&tampered.id).unwrap();
    assert_eq!(restored["client_secret"], confidential[10]["client_secret"]);
}

#[tokio::test]
async fn the_admin_api_refuses_missing_or_wrong_tokens() {
    let stack = Stack::start().await;
    let http = client();
    let protected = [
        (Method::GET, "/status"),
        (Method::POST, "/backfill/start"),
        (Method::POST, "/backfill/settings"),
        (Method::POST, "/verify"),
        (Method::GET, "/verify"),
        (Method::GET, "/dead-letters"),
        (Method::POST, "/dead-letters/retry"),
    ];
    let call = |method: Method, path: &str, token: Option<&str>| {
        let mut request = Request::builder()
            .method(method)
            .uri(stack.proxy.admin_url(path));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::<Bytes>::default()).unwrap();
        let http = http.clone();
        async move { send(&http, request).await }
    };
    for (method, path) in &protected {
        for token in [None, Some("wrong-token"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let (parts, body) = call(method.clone(), path, token).await;
            assert_eq!(
                parts.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(parts.headers[header::WWW_AUTHENTICATE], "Bearer");
            let error: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(error["error"], "invalid_token");
        }
    }
    // Refused calls changed nothing.
    let status = stack.admin().status().await.unwrap();
    assert_eq!(status.backfill.state, handover::api::BackfillState::Idle);

    for (method, path) in &protected {
        let (parts, body) = call(method.clone(), path, Some(TOKEN)).await;
        assert!(
            parts.status.is_success(),
            "{method} {path} with the token: {} {}",
            parts.status,
            String::from_utf8_lossy(&body)
        );
    }
    for path in ["/livez", "/readyz", "/metrics"] {
        let (parts, _) = call(Method::GET, path, None).await;
        assert_eq!(parts.status, StatusCode::OK, "{path}");
    }
}

/// The seeded sessions in export order (by index: subject `user<index>`).
fn sessions_in_export_order(stack: &Stack) -> Vec<(String, Value)> {
    let mut sessions: Vec<(String, Value)> =
        stack.source_emulator().sessions().into_iter().collect();
    sessions.sort_by(|a, b| a.1["sub"].as_str().cmp(&b.1["sub"].as_str()));
    sessions
}

/// Records per second while live writes race the backfill: slow enough
/// that it cannot reach the changed records ([`AHEAD`]) meanwhile.
const CRAWL: u64 = 10;
/// Where the live writes go, relative to the backfill: far enough ahead not
/// to be reached at [`CRAWL`] speed, near enough that the source has
/// already streamed them (its export runs ahead of the reader by at least
/// its 128 KiB of buffered chunks, about 150 records).
const AHEAD: std::ops::Range<usize> = 40..140;

/// Slows the running backfill down to a crawl once `dataset` has settled
/// `at_least` records, so the records just ahead of it are read from the
/// export but not yet written; returns how many it had settled.
async fn crawl_once(admin: &AdminClient, dataset: &str, at_least: u64) -> u64 {
    let status = wait_status(
        admin,
        Duration::from_secs(30),
        &format!("{dataset} reaches {at_least}"),
        |status| settled(status, dataset) >= at_least,
    )
    .await;
    assert_eq!(status.backfill.state, handover::api::BackfillState::Running);
    admin.backfill("settings", Some(CRAWL), None).await.unwrap();
    let status = admin.status().await.unwrap();
    settled(&status, dataset)
}

#[tokio::test]
async fn live_writes_win_over_the_export() {
    const SEED: usize = 500;
    const RATE: u64 = 200;
    let stack = Stack::start_seeded(SEED, |_| {}).await;
    let admin = stack.admin();
    let http = client();
    let proxy_sessions = stack.proxy.url("/c2id/session-store/rest/v2/sessions");
    // Seeded authorizations belong to the first ceil(sqrt(N)) clients.
    let authz_clients = (SEED as f64).sqrt().ceil() as usize;
    admin.backfill("start", Some(RATE), None).await.unwrap();

    // ---- clients, while their export streams ----
    let clients = stack.source_emulator().clients();
    let at = crawl_once(&admin, "clients", 100).await as usize;
    // Ahead of the backfill (the export already carries the old version)
    // and behind it (already copied); never a client that holds the
    // seeded authorizations.
    let ahead = (at + AHEAD.start..at + AHEAD.end).step_by(4);
    let behind = (authz_clients + 5..at - 30).step_by(4);
    let mut updated = Vec::new();
    let mut deleted_clients = Vec::new();
    // Keys changed ahead of the backfill, per dataset: their exported
    // copies are older than the source.
    let mut ahead_touched = [0; 3];
    for (n, index) in ahead.chain(behind).enumerate() {
        let record = &clients[index];
        let confidential = record.get("client_secret").is_some();
        if index > at && (n % 3 == 2 || confidential) {
            ahead_touched[0] += 1;
        }
        if n % 3 == 2 {
            let id = record["client_id"].as_str().unwrap();
            stack.via_proxy.delete_client(id).await.unwrap();
            deleted_clients.push(id.to_owned());
        } else if confidential {
            let old = registered(record.clone());
            let new = stack
                .via_proxy
                .update_client(&old, &format!("Updated during the backfill {index}"))
                .await
                .unwrap();
            assert_ne!(new.secret, old.secret);
            updated.push(new);
        }
    }
    admin.backfill("settings", Some(RATE), None).await.unwrap();

    // ---- authorizations ----
    let authorizations = stack.source_emulator().authorizations();
    let at = crawl_once(&admin, "authorizations", 100).await as usize;
    let usable = |index: &usize| {
        // Confidential clients authenticating with client_secret_basic,
        // as the driver does.
        let client = index % authz_clients;
        client % 5 != 4 && client % 7 != 6
    };
    let ahead = (at + AHEAD.start..at + AHEAD.end).filter(usable);
    let behind = (0..at - 30).filter(usable);
    let mut refreshed = Vec::new();
    let mut revoked = Vec::new();
    for index in ahead.step_by(3).chain(behind.step_by(9)) {
        let record = &authorizations[index];
        if index > at {
            ahead_touched[1] += 1;
        }
        let (subject, client_id) = (
            record["sub"].as_str().unwrap().to_owned(),
            record["cid"].as_str().unwrap().to_owned(),
        );
        let app = registered(stack.source_emulator().client(&client_id).unwrap());
        let refresh_token = record["rft"].as_str().unwrap();
        if index % 3 == 0 {
            // A rotating authorization: the refresh changes the record.
            let tokens = stack.via_proxy.refresh(&app, refresh_token).await.unwrap();
            assert_ne!(tokens.refresh_token.as_deref(), Some(refresh_token));
            refreshed.push((subject, client_id));
        } else {
            stack
                .via_proxy
                .revoke(&app, refresh_token, "refresh_token")
                .await
                .unwrap();
            revoked.push((subject, client_id));
        }
    }
    admin.backfill("settings", Some(RATE), None).await.unwrap();

    // ---- sessions ----
    let sessions = sessions_in_export_order(&stack);
    let at = crawl_once(&admin, "sessions", 100).await as usize;
    let ahead = (at + AHEAD.start..at + AHEAD.end).step_by(4);
    let behind = (0..at - 30).step_by(7);
    let mut ended = Vec::new();
    let mut changed = Vec::new();
    for (n, index) in ahead.chain(behind).enumerate() {
        let (sid, session) = &sessions[index];
        if index > at {
            ahead_touched[2] += 1;
        }
        match n % 3 {
            0 => {
                stack.via_proxy.logout(sid).await.unwrap();
                ended.push(sid.clone());
            }
            1 => {
                let (status, _) = management(
                    &http,
                    Method::DELETE,
                    &proxy_sessions,
                    &[("SID", sid)],
                    None,
                )
                .await;
                assert_eq!(status, StatusCode::NO_CONTENT);
                ended.push(sid.clone());
            }
            _ => {
                let data = json!({"changed_during_backfill": index});
                let (status, _) = management(
                    &http,
                    Method::PUT,
                    &proxy_sessions,
                    &[("SID", sid)],
                    Some(json!({"sub": session["sub"], "data": data})),
                )
                .await;
                assert_eq!(status, StatusCode::NO_CONTENT);
                changed.push((sid.clone(), data));
            }
        }
    }
    admin.backfill("settings", Some(0), None).await.unwrap();

    let status = wait_backfill_finished(&admin, Duration::from_secs(60)).await;
    assert_eq!(
        status.backfill.state,
        handover::api::BackfillState::Done,
        "{status:?}"
    );
    stack.wait_synced().await;
    eprintln!(
        "touched {} clients, {} authorizations, {} sessions ({ahead_touched:?} ahead of the backfill); backfill {}",
        updated.len() + deleted_clients.len(),
        refreshed.len() + revoked.len(),
        ended.len() + changed.len(),
        serde_json::to_string(&status.backfill.datasets).unwrap()
    );

    // The live changes are on the target, and nothing was resurrected.
    let target = stack.target_emulator();
    for app in &updated {
        let on_target = target.client(&app.id).unwrap();
        assert_eq!(
            on_target["client_secret"],
            app.secret.as_str(),
            "{}",
            app.id
        );
        assert_eq!(on_target["client_name"], app.record["client_name"]);
    }
    for id in &deleted_clients {
        assert!(target.client(id).is_none(), "deleted client {id} came back");
    }
    for (subject, client_id) in &refreshed {
        let on_source = stack
            .source_emulator()
            .authorization(subject, client_id)
            .unwrap();
        let on_target = target.authorization(subject, client_id).unwrap();
        assert_eq!(on_target["rts"], on_source["rts"], "{subject}|{client_id}");
    }
    for (subject, client_id) in &revoked {
        assert!(
            target.authorization(subject, client_id).is_none(),
            "revoked authorization {subject}|{client_id} came back"
        );
    }
    for sid in &ended {
        assert!(target.session(sid).is_none(), "ended session came back");
    }
    for (sid, data) in &changed {
        assert_eq!(&target.session(sid).unwrap()["data"], data);
    }

    // The exported copies of the keys live traffic changed ahead of the
    // backfill were not written, and no other copy was held back.
    for (dataset, ahead) in DATASETS.into_iter().zip(ahead_touched) {
        let progress = &status.backfill.datasets[dataset];
        assert!(progress.skipped > 0, "{dataset}: {progress:?}");
        assert_eq!(progress.skipped, ahead, "{dataset}: {progress:?}");
        assert_eq!(progress.failed, 0, "{dataset}: {progress:?}");
    }
    assert_no_drift(&verify(&admin, VerifyRequest::default()).await);
    assert_converged(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_interrupted_by_a_restart_resumes_from_its_checkpoint() {
    const SEED: u64 = 2000;
    const APPLIED: &str = "handover_sync_applied_total{dataset=\"clients\"}";
    let mut stack = Stack::start_seeded(SEED as usize, |config| {
        config.sync.datasets = vec![Dataset::Clients];
    })
    .await;
    // A slow target keeps many writes in flight: some finish out of
    // order, some are cut off by the shutdown.
    stack
        .target_emulator()
        .knobs()
        .set_latency(Duration::from_millis(10));
    let admin = stack.admin();
    admin.backfill("start", Some(1000), None).await.unwrap();
    let status = wait_status(
        &admin,
        Duration::from_secs(30),
        "a quarter of the clients copied",
        |status| status.backfill.datasets["clients"].copied >= SEED / 4,
    )
    .await;
    let progress = &status.backfill.datasets["clients"];
    assert_eq!(status.backfill.state, handover::api::BackfillState::Running);
    assert!(progress.copied < SEED, "{progress:?}");

    // A clean shutdown stops the backfill at a checkpoint.
    stack.stop_proxy().await;
    let checkpoint_file = stack.journal_dir().join("backfill").join("clients.json");
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(&checkpoint_file).unwrap()).unwrap();
    let settled = checkpoint["settled"].as_u64().unwrap();
    assert!(settled > 0 && settled < SEED, "{checkpoint}");
    assert_eq!(checkpoint["done"], false, "{checkpoint}");
    assert_eq!(checkpoint["total"], SEED, "{checkpoint}");
    assert!(
        stack.target_emulator().counts().clients as u64 >= settled,
        "the checkpoint claims more than the target holds"
    );

    stack.target_emulator().knobs().set_latency(Duration::ZERO);
    stack.restart_proxy().await;
    let admin = stack.admin();
    let status = admin.status().await.unwrap();
    assert_eq!(
        status.backfill.state,
        handover::api::BackfillState::Idle,
        "{status:?}"
    );
    assert_eq!(stack.metric(APPLIED).await, None);
    admin.backfill("start", None, None).await.unwrap();
    let status = wait_backfill_finished(&admin, Duration::from_secs(30)).await;
    assert_eq!(
        status.backfill.state,
        handover::api::BackfillState::Done,
        "{status:?}"
    );

    // Only what was not settled before the restart was written again.
    let written = stack.metric(APPLIED).await.unwrap() as u64;
    assert_eq!(
        written,
        SEED - settled,
        "settled {settled} before the restart"
    );
    let progress = &status.backfill.datasets["clients"];
    assert_eq!(progress.total, SEED, "{progress:?}");
    assert_eq!(
        progress.copied + progress.skipped + progress.failed,
        SEED,
        "{progress:?}"
    );
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(&checkpoint_file).unwrap()).unwrap();
    assert_eq!(checkpoint["done"], true, "{checkpoint}");

    let report = verify(&admin, VerifyRequest::default()).await;
    assert_no_drift(&report);
    assert_eq!(report.datasets["clients"].matching, SEED);
    assert_converged_where(&stack, |key| key.starts_with("client:"));
}

/// What the fake source of the malformed-export test serves.
struct BrokenSource {
    /// The clients, exported and served by id.
    records: Vec<Value>,
    /// The export breaks after the first three records while true.
    broken: AtomicBool,
    /// Becomes true when the test has seen the first records copied: only
    /// then does a broken export send its garbage, so the failure comes
    /// mid-stream, after real progress.
    release: tokio::sync::watch::Sender<bool>,
}

impl BrokenSource {
    /// The export's leading part, before the break.
    fn head(&self) -> String {
        let records: Vec<String> = self.records[..3].iter().map(Value::to_string).collect();
        format!("[{},", records.join(","))
    }

    fn export(self: Arc<Self>) -> http::Response<handover::http::Body> {
        let (mut sender, body) = handover::http::channel_body(4);
        tokio::spawn(async move {
            if self.broken.load(Ordering::SeqCst) {
                let _ = sender.send_data(Bytes::from(self.head())).await;
                let mut release = self.release.subscribe();
                let _ = release.wait_for(|released| *released).await;
                let _ = sender
                    .send_data(Bytes::from_static(GARBAGE.as_bytes()))
                    .await;
            } else {
                let records: Vec<String> = self.records.iter().map(Value::to_string).collect();
                let _ = sender
                    .send_data(Bytes::from(format!("[{}]", records.join(","))))
                    .await;
            }
        });
        let mut response = http::Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> http::Response<handover::http::Body> {
        let path = request.uri().path();
        if request.method() != Method::GET {
            return handover::http::json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({}));
        }
        match path {
            "/c2id/clients" => self.export(),
            "/c2id/jwks.json" => {
                handover::http::json_response(StatusCode::OK, &json!({"keys": []}))
            }
            "/c2id/.well-known/openid-configuration" => {
                handover::http::json_response(StatusCode::OK, &json!({"issuer": "fake"}))
            }
            _ => {
                let record = path
                    .strip_prefix("/c2id/clients/")
                    .and_then(|id| self.records.iter().find(|r| r["client_id"] == id));
                match record {
                    Some(record) => handover::http::json_response(StatusCode::OK, record),
                    None => handover::http::json_response(
                        StatusCode::NOT_FOUND,
                        &json!({"error": "invalid_client"}),
                    ),
                }
            }
        }
    }
}

/// Not JSON: what a broken export sends after its third record.
const GARBAGE: &str = "}{\"client_id\": \"cut";

#[tokio::test]
async fn a_malformed_export_fails_the_backfill_clearly_and_stays_resumable() {
    const APPLIED: &str = "handover_sync_applied_total{dataset=\"clients\"}";
    // Six realistic clients, generated by a seeded (never started) emulator.
    let mut seeded =
        connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), JwkSet::generate());
    seeded.seed = 6;
    let source = Arc::new(BrokenSource {
        records: Connect2id::new(seeded).clients(),
        broken: AtomicBool::new(true),
        release: tokio::sync::watch::channel(false).0,
    });
    let fake = {
        let source = Arc::clone(&source);
        FakeUpstream::start(move |request| Arc::clone(&source).handle(request)).await
    };
    let mut target_config =
        connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), JwkSet::generate());
    target_config.base_path = "/c2id".to_owned();
    let target = Connect2id::new(target_config)
        .start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await;
    let mut config = Config::for_test(&format!("{}/c2id", fake.url()), &target.url(), TOKEN);
    config.sync.datasets = vec![Dataset::Clients];
    // Stream the export once (no counting pass), so the break comes after
    // real progress.
    config.backfill.count_first = false;
    let mut proxy = TestProxy::start(config).await;
    proxy.wait_ready().await;
    let admin = AdminClient::new(&proxy.admin_url(""), Some(TOKEN.to_owned()));

    admin.backfill("start", None, None).await.unwrap();
    wait_status(
        &admin,
        Duration::from_secs(10),
        "three clients copied",
        |status| status.backfill.datasets["clients"].copied == 3,
    )
    .await;
    source.release.send_replace(true);
    // Retried a few times, then failed.
    let status = wait_status(
        &admin,
        Duration::from_secs(30),
        "the backfill fails",
        |status| status.backfill.state != handover::api::BackfillState::Running,
    )
    .await;
    assert_eq!(
        status.backfill.state,
        handover::api::BackfillState::Failed,
        "{status:?}"
    );
    let progress = &status.backfill.datasets["clients"];
    let error = progress
        .error
        .as_deref()
        .expect("the dataset names its error");
    let offset = source.head().len();
    eprintln!("the failed backfill says: {error}");
    assert!(error.contains("clients"), "{error}");
    assert!(
        error.contains(&format!("byte {offset}")),
        "{error} (expected byte {offset})"
    );
    assert_eq!(progress.copied, 3, "{progress:?}");
    assert_eq!(target.emulator().counts().clients, 3);

    // The proxy keeps serving meanwhile.
    let http = client();
    let (parts, _) = get(&http, &proxy.url("/c2id/jwks.json")).await;
    assert_eq!(parts.status, StatusCode::OK);
    let (parts, _) = get(&http, &proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, StatusCode::OK);

    // Fixed at the source: start resumes after the three copied records.
    source.broken.store(false, Ordering::SeqCst);
    admin.backfill("start", None, None).await.unwrap();
    let status = wait_backfill_finished(&admin, Duration::from_secs(30)).await;
    assert_eq!(
        status.backfill.state,
        handover::api::BackfillState::Done,
        "{status:?}"
    );
    let progress = &status.backfill.datasets["clients"];
    assert_eq!((progress.copied, progress.failed), (6, 0), "{progress:?}");
    assert_eq!(progress.error, None);
    let (_, body) = get(&http, &proxy.admin_url("/metrics")).await;
    assert_eq!(
        metric(&String::from_utf8_lossy(&body), APPLIED),
        Some(6.0),
        "a record was written twice"
    );
    for record in &source.records {
        let id = record["client_id"].as_str().unwrap();
        let on_target = target.emulator().client(id).expect("copied");
        assert_eq!(
            Dataset::Clients.comparable(&on_target),
            Dataset::Clients.comparable(record)
        );
    }
    let report = verify(&admin, VerifyRequest::default()).await;
    assert_no_drift(&report);
    assert_eq!(report.datasets["clients"].matching, 6);
    proxy.shutdown().await;
}
