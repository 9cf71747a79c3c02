//! Fleet mode (issue 15, stage 3): membership by lease and self-fencing.
//!
//! An instance reaches PostgreSQL through a TCP relay the test severs:
//! once it cannot renew its lease it fences itself (trigger requests get
//! `503` with `Retry-After`, reads keep flowing, `/readyz` false) and
//! lifts the fence when the database is back. Two processes flip together
//! through the store, and a dead one stops counting once its lease expires.

#![allow(clippy::unwrap_used)]

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/pg.rs"]
mod pg;
#[path = "support/relay.rs"]
mod relay;

use fleet::{ADMIN_TOKEN, DEADLINE, Instance, TOKEN, eventually, send, start_emulator};
use handover::emulator::jwks::JwkSet;
use http::{Method, StatusCode};

const CLIENT: &str = r#"{"redirect_uris":["https://rp.example.com/cb"]}"#;

async fn register(instance: &Instance) -> Option<(StatusCode, http::HeaderMap, String)> {
    send(
        Method::POST,
        &format!("{}/clients", instance.url()),
        TOKEN,
        CLIENT,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_store_fences_itself_and_recovers() {
    let db = pg::TestDb::create().await;
    let relay = relay::Relay::start(db.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_emulator(&jwks, issuer).await;
    let a = Instance::start(
        dir.path(),
        "a",
        &source.url(),
        &target.url(),
        &db.url_via(relay.addr),
    )
    .await;

    // Registered with a live lease.
    let client = db.client().await;
    let live = eventually(DEADLINE, || async {
        client
            .query_one(
                "SELECT count(*) FROM handover_members WHERE lease_until > now() AND instance LIKE $1",
                &[&format!("pid{}-%", a.pid())],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(live, "the instance never registered");
    let (status, _, body) = register(&a).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();

    relay.sever();
    // Fenced: triggers refused with Retry-After, never forwarded.
    let before = source.emulator().clients().len();
    let fenced = eventually(DEADLINE, || async {
        matches!(register(&a).await, Some((StatusCode::SERVICE_UNAVAILABLE, headers, _))
            if headers.contains_key(http::header::RETRY_AFTER))
    })
    .await;
    assert!(
        fenced,
        "the cut-off instance kept taking triggers; log:\n{}",
        std::fs::read_to_string(&a.log).unwrap_or_default()
    );
    let (status, _, _) = register(&a).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Reads keep flowing.
    let (status, _, body) = send(Method::GET, &format!("{}/clients/{id}", a.url()), TOKEN, "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = send(
        Method::GET,
        &format!("http://127.0.0.1:{}/readyz", a.admin_port),
        ADMIN_TOKEN,
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("fenced"), "{body}");
    let metrics = send(
        Method::GET,
        &format!("http://127.0.0.1:{}/metrics", a.admin_port),
        ADMIN_TOKEN,
        "",
    )
    .await
    .unwrap()
    .2;
    assert!(metrics.contains("handover_fleet_fenced 1"), "{metrics}");

    relay.restore();
    let recovered = eventually(DEADLINE, || async {
        matches!(register(&a).await, Some((StatusCode::CREATED, _, _)))
    })
    .await;
    assert!(recovered, "the fence was never lifted");
    // Refused triggers never reached the primary: one created before the
    // cut, the ones after the fence lifted.
    assert!(source.emulator().clients().len() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_flip_together_and_a_dead_one_stops_counting_when_its_lease_expires() {
    let db = pg::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_emulator(&jwks, issuer).await;
    let a = Instance::start(dir.path(), "a", &source.url(), &target.url(), &db.url).await;
    let mut b = Instance::start(dir.path(), "b", &source.url(), &target.url(), &db.url).await;
    let flip = |instance: &Instance, path: &'static str| {
        let url = format!("http://127.0.0.1:{}{path}", instance.admin_port);
        async move {
            // No backfill in this test: forced past that check only.
            let (_, _, body) = send(Method::POST, &url, ADMIN_TOKEN, r#"{"force":true}"#)
                .await
                .unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let status = |instance: &Instance| {
        let url = format!("http://127.0.0.1:{}/status", instance.admin_port);
        async move {
            let (_, _, body) = send(Method::GET, &url, ADMIN_TOKEN, "").await.unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    // /status on either instance shows the fleet (refreshed every second).
    let both = eventually(DEADLINE, || async {
        status(&b).await["fleet"]["instances"]
            .as_array()
            .is_some_and(|all| all.iter().filter(|m| m["live"] == true).count() == 2)
    })
    .await;
    assert!(both, "{}", status(&b).await);
    let seen = status(&b).await;
    assert!(
        seen["fleet"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["instance"] == seen["fleet"]["this"]),
        "{seen}"
    );

    // `handover cutover` on b: both instances hold, then flip together.
    let report = flip(&b, "/cutover").await;
    assert_eq!(report["outcome"], "cut-over", "{report:#}");
    let held = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["step"] == "every instance held")
        .cloned()
        .unwrap();
    assert!(
        held["detail"]
            .as_str()
            .unwrap()
            .starts_with("2 instances with a live lease"),
        "{held}"
    );
    for instance in [&a, &b] {
        let flipped = eventually(DEADLINE, || async {
            let now = status(instance).await;
            now["phase"] == "cut-over" && now["epoch"] == 2 && now["primary"] == "target"
        })
        .await;
        assert!(flipped, "{}", status(instance).await);
    }
    // a writes to the new primary.
    let (code, _, _) = register(&a).await.unwrap();
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(
        target.emulator().clients().len(),
        1,
        "the write went to the target"
    );

    // b dies; once its lease (1 s) expires the rollback on a goes on
    // without it.
    b.kill();
    let report = flip(&a, "/rollback").await;
    assert_eq!(report["outcome"], "rolled-back", "{report:#}");
    let now = status(&a).await;
    assert_eq!(
        (now["phase"].as_str(), now["epoch"].as_u64()),
        (Some("mirroring"), Some(3)),
        "{now}"
    );
}
