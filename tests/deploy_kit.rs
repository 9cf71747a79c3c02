//! The operator kit in `deploy/` stays true to the binary: every metric
//! the alert rules and the dashboard name exists in a running handover's
//! `/metrics`, and the rules parse (`promtool check rules`, Debian package
//! `prometheus`, installed by scripts/install-test-deps.sh, which the test
//! runs when promtool is missing).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use http_body_util::BodyExt as _;
use support::proxy::client;
use support::stack::{Stack, TOKEN};

const KIT: &[&str] = &[
    "deploy/prometheus/handover-alerts.yml",
    "deploy/grafana/handover-dashboard.json",
    "deploy/kubernetes/handover.yaml",
];

/// Every `handover_…` metric name a file mentions.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("handover_") {
        let start = at + found;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Whether `/metrics` text has the metric `name` (a sample, or a family
/// registered but not observed yet: its `# TYPE` line).
fn exposes(metrics: &str, name: &str) -> bool {
    let family = ["_bucket", "_sum", "_count", "_total"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    metrics.lines().any(|line| {
        line.split(['{', ' ']).next() == Some(name)
            || line.starts_with(&format!("# TYPE {family} "))
            || line.starts_with(&format!("# TYPE {name} "))
    })
}

async fn call(
    stack: &Stack,
    method: http::Method,
    path: &str,
    body: &str,
) -> (http::StatusCode, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(stack.proxy.url(path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_kit_names_exists() {
    // Labelled families appear once observed: drive a synced change and an
    // untracked one. Answers above 160 bytes cannot be inspected, so a new
    // client's id is lost (untracked) while an update names its client in
    // the path (journaled and applied).
    let stack = Stack::start_with(|config| config.proxy.forward.max_body_bytes = 160).await;
    let metadata = r#"{"redirect_uris":["https://rp.example.com/cb"]}"#;
    let (status, created) = call(&stack, http::Method::POST, "/c2id/clients", metadata).await;
    assert_eq!(status, http::StatusCode::CREATED, "{created}");
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, updated) = call(
        &stack,
        http::Method::PUT,
        &format!("/c2id/clients/{id}"),
        &format!(r#"{{"client_id":"{id}","redirect_uris":["https://rp.example.com/cb2"]}}"#),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{updated}");
    stack.wait_synced().await;
    let request = http::Request::get(stack.proxy.admin_url("/metrics"))
        .body(Default::default())
        .unwrap();
    let response = client().request(request).await.unwrap();
    let metrics = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();

    let mut missing = Vec::new();
    let mut named = 0;
    for file in KIT {
        let text = std::fs::read_to_string(file).unwrap();
        for name in names_in(&text) {
            named += 1;
            if !exposes(&metrics, &name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(named >= 10, "the kit names only {named} metrics");
    assert!(missing.is_empty(), "not in /metrics: {missing:#?}");
}

#[test]
fn the_alert_rules_parse() {
    let find = || {
        ["/usr/bin/promtool", "/usr/local/bin/promtool"]
            .into_iter()
            .find(|path| Path::new(path).exists())
    };
    // Installed by the project's own script when missing, so that the
    // README's one test command runs everything on a fresh machine.
    let promtool = find()
        .or_else(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-test-deps.sh");
            let installed = std::process::Command::new("bash").arg(script).status();
            eprintln!("promtool missing: ran {script}: {installed:?}");
            find()
        })
        .unwrap_or_else(|| {
            panic!(
                "promtool not found and scripts/install-test-deps.sh could not install it: install Debian's prometheus package (apt-get install prometheus)"
            )
        });
    let output = std::process::Command::new(promtool)
        .args(["check", "rules", "deploy/prometheus/handover-alerts.yml"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
}

#[test]
fn the_kit_names_what_pages_an_sre() {
    let rules = std::fs::read_to_string("deploy/prometheus/handover-alerts.yml").unwrap();
    for metric in [
        "handover_sync_lag_seconds",
        "handover_journal_errors_total",
        "handover_sync_dead_letters",
        "handover_fleet_fenced",
        "handover_sync_outage",
        "handover_untracked_changes_total",
    ] {
        assert!(rules.contains(metric), "no alert on {metric}");
    }
    let kube = std::fs::read_to_string("deploy/kubernetes/handover.yaml").unwrap();
    for needle in [
        "path: /readyz",
        "path: /livez",
        "kind: PodDisruptionBudget",
        "secretKeyRef",
        "HANDOVER_STORE_URL",
    ] {
        assert!(
            kube.contains(needle),
            "the Kubernetes example lacks {needle}"
        );
    }
}
