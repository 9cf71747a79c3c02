//! Fleet mode (issue 15, stage 2): two `handover serve` processes share one
//! journal in PostgreSQL. Writers register clients through both while the
//! target is taken down, so both instances hold claims on unfinished work;
//! one is killed with SIGKILL while it holds claims. When the target is
//! back, the survivor takes over the dead instance's claims once their
//! lease expires: every acknowledged write reaches the target, and the
//! shared journal drains to zero.

#![allow(clippy::unwrap_used)]

#[path = "support/pg.rs"]
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover::emulator::connect2id::{self, Connect2id, Handle};
use handover::emulator::driver::Driver;
use handover::emulator::jwks::JwkSet;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_handover");
const TOKEN: &str = "fleet-test-token";
const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_emulator(jwks: &JwkSet, issuer: &str) -> Handle {
    let mut config = connect2id::Config::new(connect2id::ApiTokens::single(TOKEN), jwks.clone());
    config.base_path = "/c2id".to_owned();
    config.issuer = Some(issuer.to_owned());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Connect2id::new(config).start(listener).await
}

/// One `handover serve` process.
struct Instance {
    proxy_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    async fn start(dir: &Path, name: &str, source: &str, target: &str, db_url: &str) -> Self {
        let (proxy_port, admin_port) = (free_port(), free_port());
        let journal = dir.join(format!("journal-{name}"));
        std::fs::create_dir(&journal).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[proxy]
listen = "127.0.0.1:{proxy_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
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
datasets = ["clients"]
retry_initial = "20ms"
retry_max = "200ms"
[store]
kind = "postgres"
url_env = "HANDOVER_STORE_URL"
claim_lease = "1s"
"#,
                journal = journal.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&config)
            .env("HANDOVER_SOURCE_TOKEN", TOKEN)
            .env("HANDOVER_TARGET_TOKEN", TOKEN)
            .env("HANDOVER_JOURNAL_KEY", handover::config::TEST_JOURNAL_KEY)
            .env("HANDOVER_STORE_URL", db_url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut instance = Instance {
            proxy_port,
            child: Some(child),
            log,
        };
        let http = Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let ready = format!("http://127.0.0.1:{admin_port}/readyz");
        let until = Instant::now() + DEADLINE;
        loop {
            let request = http::Request::get(&ready).body(Default::default()).unwrap();
            if let Ok(response) = http.request(request).await
                && response.status() == http::StatusCode::OK
            {
                let _ = response.into_body().collect().await;
                break;
            }
            let exited = instance.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < until,
                "{name} did not become ready; log:\n{}",
                std::fs::read_to_string(&instance.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        instance
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/c2id", self.proxy_port)
    }

    fn kill(&mut self) {
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

/// Registers clients through `driver` until `stop`; returns the ids the
/// client got a success answer for (acknowledged writes).
async fn writer(
    driver: Driver,
    name: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        match driver.register_client(&format!("{name}-{n}")).await {
            Ok(client) => acked.lock().unwrap().push(client.id),
            // The killed instance refuses connections: not acknowledged.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_reaches_the_target_when_an_instance_dies_holding_claims() {
    let db = pg::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_emulator(&jwks, issuer).await;
    let mut a = Instance::start(dir.path(), "a", &source.url(), &target.url(), &db.url).await;
    let b = Instance::start(dir.path(), "b", &source.url(), &target.url(), &db.url).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop_a = Arc::new(AtomicBool::new(false));
    let stop_b = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..2 {
        for (instance, stop, name) in [(&a, &stop_a, "a"), (&b, &stop_b, "b")] {
            writers.push(tokio::spawn(writer(
                Driver::new(instance.url(), TOKEN),
                format!("{name}{i}"),
                Arc::clone(stop),
                Arc::clone(&acked),
            )));
        }
    }
    // Both instances take writes and sync them.
    assert!(
        eventually(DEADLINE, || async { acked.lock().unwrap().len() >= 20 }).await,
        "no load"
    );

    // The target goes down: claimed work cannot finish and stays claimed.
    target.emulator().knobs().set_down(true);
    let client = db.client().await;
    let owner = format!("pid{}-%", a.pid());
    let held = eventually(DEADLINE, || async {
        client
            .query_one(
                "SELECT count(*) FROM handover_journal WHERE claimed_by LIKE $1",
                &[&owner],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
    assert!(held, "instance a never held a claim");
    let before_kill = acked.lock().unwrap().len();
    a.kill();
    stop_a.store(true, Ordering::Release);
    let still_held: i64 = client
        .query_one(
            "SELECT count(*) FROM handover_journal WHERE claimed_by LIKE $1",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    assert!(still_held > 0, "the killed instance's claims vanished");

    target.emulator().knobs().set_down(false);
    // The survivor keeps taking writes.
    assert!(
        eventually(DEADLINE, || async {
            acked.lock().unwrap().len() >= before_kill + 10
        })
        .await,
        "the survivor took no writes; log:\n{}",
        std::fs::read_to_string(&b.log).unwrap_or_default()
    );
    stop_b.store(true, Ordering::Release);
    for writer in writers {
        writer.await.unwrap();
    }

    // The shared journal drains: the dead instance's claims expired and the
    // survivor applied them.
    let drained = eventually(DEADLINE, || async {
        client
            .query_one("SELECT count(*) FROM handover_journal", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
    assert!(
        drained,
        "the shared journal never drained; log of b:\n{}",
        std::fs::read_to_string(&b.log).unwrap_or_default()
    );
    let acked = acked.lock().unwrap().clone();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| target.emulator().client(id).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged clients never reached the target: {missing:?}",
        missing.len(),
        acked.len()
    );
    let dead: i64 = client
        .query_one("SELECT count(*) FROM handover_dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    drop(b);
    let _ = source;
}
