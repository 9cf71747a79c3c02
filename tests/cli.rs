//! The binary as an operator runs it: config validation before any socket
//! is bound (exit 64, one line naming the field), and a clean exit on
//! SIGTERM.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::proxy::{FakeUpstream, client, eventually, get};

const BIN: &str = env!("CARGO_BIN_EXE_handover");

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_text(proxy_port: u16, admin_port: u16, source: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:{proxy_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[source]
kind = "connect2id"
url = "{source}/c2id"
token_env = "HANDOVER_SOURCE_TOKEN"
[target]
kind = "connect2id"
url = "http://127.0.0.1:9/c2id"
token_env = "HANDOVER_TARGET_TOKEN"
[journal]
dir = "{journal}"
payload_key_env = "HANDOVER_JOURNAL_KEY"
"#,
        journal = tempfile::tempdir().unwrap().keep().display()
    )
}

const KEY: &str = handover::config::TEST_JOURNAL_KEY;
/// An admin token of the shortest accepted length.
const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// `handover check` on the example config as shipped, except the journal
/// in a scratch directory and what `edit` changes.
fn check_example(edit: impl FnOnce(String) -> String) -> std::process::Output {
    let journal = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("config/handover.example.toml")
        .unwrap()
        .replace(
            "dir = \"/var/lib/handover\"",
            &format!("dir = \"{}\"", journal.path().display()),
        );
    let file = config_file(&edit(text));
    Command::new(BIN)
        .args(["check", "-c"])
        .arg(file.path())
        .env("HANDOVER_JOURNAL_KEY", KEY)
        .env("HANDOVER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HANDOVER_SOURCE_TOKEN", "source")
        .env("HANDOVER_TARGET_TOKEN", "target")
        .env("HANDOVER_AUTHLETE_TOKEN", "authlete")
        .output()
        .unwrap()
}

#[test]
fn the_example_config_is_valid() {
    let output = check_example(|text| text);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_example_configs_authlete_target_is_valid_once_uncommented() {
    // The commented `[target]` block replaces the Connect2id one, with the
    // datasets an Authlete target has.
    let output = check_example(|text| {
        let connect2id = text.find("[target]\n").unwrap();
        let authlete = text.find("# [target]\n# kind = \"authlete\"").unwrap();
        let journal = text.find("\n[journal]").unwrap();
        let block: Vec<&str> = text[authlete..journal]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect();
        format!(
            "{}{}{}",
            &text[..connect2id],
            block.join("\n"),
            &text[journal..]
        )
        .replace(
            r#"datasets = ["clients", "authorizations", "sessions"]"#,
            r#"datasets = ["clients", "tokens"]"#,
        )
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn bad_config_exits_64_naming_the_field_before_binding() {
    let port = free_port();
    let text = config_text(port, free_port(), "http://127.0.0.1:9")
        .replace("[admin]", "max_body_bytes = \"lots\"\n[admin]");
    let file = config_file(&text);
    let output = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(file.path())
        .env("HANDOVER_SOURCE_TOKEN", "s")
        .env("HANDOVER_TARGET_TOKEN", "t")
        .env("HANDOVER_JOURNAL_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("proxy.max_body_bytes"), "{stderr}");
    // Nothing was bound.
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn missing_secret_and_unknown_key_exit_64() {
    let file = config_file(&config_text(free_port(), free_port(), "http://127.0.0.1:9"));
    let output = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(file.path())
        .env_remove("HANDOVER_SOURCE_TOKEN")
        .env("HANDOVER_TARGET_TOKEN", "t")
        .env("HANDOVER_JOURNAL_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("source.token_env: environment variable HANDOVER_SOURCE_TOKEN is not set"),
        "{stderr}"
    );

    let text = config_text(free_port(), free_port(), "http://127.0.0.1:9")
        .replace("[source]", "[source]\nurll = \"x\"");
    let file = config_file(&text);
    let output = Command::new(BIN)
        .args(["check", "-c"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("urll"));
}

/// Runs `handover <command> -c FILE` with the secrets of `config_text`.
fn run_config(command: &str, file: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args([command, "-c"])
        .arg(file)
        .env("HANDOVER_SOURCE_TOKEN", "s")
        .env("HANDOVER_TARGET_TOKEN", "t")
        .env("HANDOVER_JOURNAL_KEY", KEY)
        .output()
        .unwrap()
}

#[test]
fn check_and_serve_load_tls_material_alike_and_exit_64_on_bad_material() {
    let cert = support::proxy::TestCert::generate();
    let dir = cert.dir.path();
    let garbage = dir.join("garbage.key");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
    let other = dir.join("other.key");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    for (key, says) in [
        (dir.to_owned(), "no usable private key"),
        (garbage, "no usable private key"),
        (other, "does not match the certificate"),
    ] {
        let port = free_port();
        let text = config_text(port, free_port(), "http://127.0.0.1:9").replace(
            "[admin]",
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n[admin]",
                cert.files.cert.display(),
                key.display()
            ),
        );
        let file = config_file(&text);
        for command in ["check", "serve"] {
            let output = run_config(command, file.path());
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
            assert!(stderr.contains("proxy.tls_key"), "{command}: {stderr}");
            assert!(stderr.contains(says), "{command}: {stderr}");
        }
        // Nothing was bound.
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}

#[cfg(unix)]
#[test]
fn check_warns_about_a_secret_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("journal.key");
    std::fs::write(&key_file, KEY).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = config_text(free_port(), free_port(), "http://127.0.0.1:8").replace(
        "payload_key_env = \"HANDOVER_JOURNAL_KEY\"",
        &format!("payload_key_file = \"{}\"", key_file.display()),
    );
    let file = config_file(&text);
    let output = run_config("check", file.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: journal.payload_key_file:") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains(KEY), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let output = Command::new(BIN).args(["serve"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn serve_forwards_and_exits_0_on_sigterm() {
    let upstream = FakeUpstream::echo().await;
    let (proxy_port, admin_port) = (free_port(), free_port());
    let file = config_file(&config_text(proxy_port, admin_port, &upstream.url()));
    let mut child = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(file.path())
        .env("HANDOVER_SOURCE_TOKEN", "s")
        .env("HANDOVER_TARGET_TOKEN", "t")
        .env("HANDOVER_JOURNAL_KEY", KEY)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = client();
    let ready = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready_ok = eventually(Duration::from_secs(20), || async {
        match client
            .request(http::Request::get(&ready).body(Default::default()).unwrap())
            .await
        {
            Ok(response) => response.status() == http::StatusCode::OK,
            Err(_) => false,
        }
    })
    .await;
    assert!(ready_ok, "proxy never became ready");
    let (parts, _) = get(
        &client,
        &format!("http://127.0.0.1:{proxy_port}/c2id/jwks.json"),
    )
    .await;
    assert_eq!(parts.status, http::StatusCode::OK);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
