//! Fleet tests: `handover serve` processes sharing one PostgreSQL store,
//! in front of in-process Connect2id emulators.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handover::emulator::connect2id::{self, Connect2id, Handle};
use handover::emulator::jwks::JwkSet;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

pub const BIN: &str = env!("CARGO_BIN_EXE_handover");
pub const TOKEN: &str = "fleet-test-token";
/// The admin token every instance is given.
pub const ADMIN_TOKEN: &str = "fleet-admin-token-0123456789abcdef";
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start_emulator(jwks: &JwkSet, issuer: &str) -> Handle {
    start_emulator_with(jwks, issuer, connect2id::Strictness::default()).await
}

/// A target set up as the runbook asks: it takes the source's secret on a
/// client update (`preferred_client_secret`), so a client update reaches
/// it in place, not by delete and create (whose cascade would revoke that
/// client's tokens there).
pub async fn start_target_emulator(jwks: &JwkSet, issuer: &str) -> Handle {
    let strictness = connect2id::Strictness {
        preferred_client_secret_on_update: true,
        ..connect2id::Strictness::default()
    };
    start_emulator_with(jwks, issuer, strictness).await
}

pub async fn start_emulator_with(
    jwks: &JwkSet,
    issuer: &str,
    strictness: connect2id::Strictness,
) -> Handle {
    let mut config = connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks.clone());
    config.base_path = "/c2id".to_owned();
    config.issuer = Some(issuer.to_owned());
    config.strictness = strictness;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Connect2id::new(config).start(listener).await
}

/// How a test instance is configured beyond the addresses.
#[derive(Debug, Clone)]
pub struct Options {
    /// `[store] kind`.
    pub kind: String,
    /// `[sync] datasets`, as a TOML array.
    pub datasets: String,
    /// `[store] claim_lease`: a killed instance's claims return this long
    /// after its last renewal; it fences itself after two thirds of it.
    pub claim_lease: String,
    /// More lines of `[store]` (e.g. `ca_file`).
    pub store_extra: String,
    /// More sections after `[store]` (e.g. `[backfill]`).
    pub sections: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kind: "postgres".to_owned(),
            datasets: r#"["clients"]"#.to_owned(),
            claim_lease: "1s".to_owned(),
            store_extra: String::new(),
            sections: String::new(),
        }
    }
}

/// Writes the config of instance `name`; returns it and its log's path.
fn write_config(
    dir: &Path,
    name: &str,
    source: &str,
    target: &str,
    options: &Options,
    proxy_port: u16,
    admin_port: u16,
) -> (PathBuf, PathBuf) {
    let journal = dir.join(format!("journal-{name}"));
    std::fs::create_dir_all(&journal).unwrap();
    let config = dir.join(format!("{name}.toml"));
    let kind = &options.kind;
    let url_line = if kind == "postgres" {
        "url_env = \"HANDOVER_STORE_URL\""
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:{proxy_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
token_env = "HANDOVER_ADMIN_TOKEN"
[source]
kind = "connect2id"
url = "{source}"
token_env = "HANDOVER_SOURCE_TOKEN"
[target]
kind = "connect2id"
url = "{target}"
token_env = "HANDOVER_TARGET_TOKEN"
[journal]
dir = "{journal}"
payload_key_env = "HANDOVER_JOURNAL_KEY"
[sync]
datasets = {datasets}
retry_initial = "20ms"
retry_max = "200ms"
[store]
kind = "{kind}"
{url_line}
claim_lease = "{lease}"
{extra}
{sections}
"#,
            journal = journal.display(),
            datasets = options.datasets,
            lease = options.claim_lease,
            extra = options.store_extra,
            sections = options.sections,
        ),
    )
    .unwrap();
    let log = dir.join(format!("{name}-{kind}-{proxy_port}.log"));
    (config, log)
}

/// `handover serve -c config`, logging to `log`.
fn spawn(config: &Path, log: &Path, db_url: &str) -> Child {
    Command::new(BIN)
        .args(["serve", "-c"])
        .arg(config)
        .env("HANDOVER_SOURCE_TOKEN", TOKEN)
        .env("HANDOVER_TARGET_TOKEN", TOKEN)
        .env("HANDOVER_JOURNAL_KEY", handover::config::TEST_JOURNAL_KEY)
        .env("HANDOVER_STORE_URL", db_url)
        .env("HANDOVER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

/// One `handover serve` process.
pub struct Instance {
    pub proxy_port: u16,
    pub admin_port: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Instance {
    pub async fn start(dir: &Path, name: &str, source: &str, target: &str, db_url: &str) -> Self {
        Self::start_kind(dir, name, source, target, db_url, "postgres").await
    }

    /// Like [`Instance::start`] with `[store] kind = kind`, reusing the
    /// journal directory of an earlier instance of the same `name`.
    pub async fn start_kind(
        dir: &Path,
        name: &str,
        source: &str,
        target: &str,
        db_url: &str,
        kind: &str,
    ) -> Self {
        let options = Options {
            kind: kind.to_owned(),
            ..Options::default()
        };
        Self::start_with(dir, name, source, target, db_url, &options).await
    }

    /// Like [`Instance::start`], configured as `options` says.
    pub async fn start_with(
        dir: &Path,
        name: &str,
        source: &str,
        target: &str,
        db_url: &str,
        options: &Options,
    ) -> Self {
        let http = Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let until = Instant::now() + DEADLINE;
        // A free port is only free until somebody binds it: a test running
        // beside this one may take it between our probe and the child's
        // bind. Such a start is tried again on other ports.
        'start: loop {
            let (proxy_port, admin_port) = (free_port(), free_port());
            let (config, log) =
                write_config(dir, name, source, target, options, proxy_port, admin_port);
            let child = spawn(&config, &log, db_url);
            let mut instance = Instance {
                proxy_port,
                admin_port,
                child: Some(child),
                log,
            };
            let ready = format!("http://127.0.0.1:{admin_port}/readyz");
            loop {
                let request = http::Request::get(&ready).body(Default::default()).unwrap();
                if let Ok(response) = http.request(request).await
                    && response.status() == http::StatusCode::OK
                {
                    let _ = response.into_body().collect().await;
                    return instance;
                }
                let exited = instance.child.as_mut().unwrap().try_wait().unwrap();
                let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
                if exited.is_some() && log.contains("cannot listen on") && Instant::now() < until {
                    instance.child = None;
                    continue 'start;
                }
                assert!(
                    exited.is_none() && Instant::now() < until,
                    "{name} did not become ready; log:\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Starts an instance that is expected to refuse to start; returns its
    /// exit code and its log once it exited (the test fails if it is
    /// still running after [`DEADLINE`]).
    pub async fn start_failing(
        dir: &Path,
        name: &str,
        source: &str,
        target: &str,
        db_url: &str,
        options: &Options,
    ) -> (Option<i32>, String) {
        let (config, log) =
            write_config(dir, name, source, target, options, free_port(), free_port());
        let mut child = spawn(&config, &log, db_url);
        let until = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} kept running; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (
            status.code(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/c2id", self.proxy_port)
    }

    /// `handover_journal_depth` as this instance's /metrics reports it.
    pub async fn journal_depth(&self) -> Option<f64> {
        let http = Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = http::Request::get(format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .body(Default::default())
            .unwrap();
        let response = http.request(request).await.ok()?;
        let body = response.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|line| line.strip_prefix("handover_journal_depth "))
            .and_then(|value| value.trim().parse().ok())
    }

    /// SIGTERM, then wait: a clean stop.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let until = Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "the instance did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the shared journal of `pg`'s database is empty (every
/// instance's records applied); false after [`DEADLINE`].
pub async fn journal_drains(pg: &tokio_postgres::Client) -> bool {
    eventually(DEADLINE, || async {
        pg.query_one("SELECT count(*) FROM handover_journal", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await
}

pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP client for the tests' own requests.
pub fn http()
-> Client<hyper_util::client::legacy::connect::HttpConnector, http_body_util::Full<bytes::Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request; returns the status, the headers and the body.
pub async fn send(
    method: http::Method,
    url: &str,
    token: &str,
    body: &str,
) -> Option<(http::StatusCode, http::HeaderMap, String)> {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let response = http().request(request).await.ok()?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
