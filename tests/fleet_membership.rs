//! Fleet mode (issue 15, stage 3): membership by lease and self-fencing.
//!
//! An instance reaches PostgreSQL through a TCP relay the test severs:
//! once it cannot renew its lease it fences itself (trigger requests get
//! `503` with `Retry-After`, reads keep flowing, `/readyz` false) and
//! lifts the fence when the database is back. While two instances hold
//! live leases, the cutover pre-flight refuses (the fleet-wide cutover is
//! not built yet: scale to one to cut over).

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
async fn the_cutover_preflight_refuses_while_another_instance_holds_a_live_lease() {
    let db = pg::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet::generate();
    let issuer = "http://127.0.0.1:1/c2id";
    let source = start_emulator(&jwks, issuer).await;
    let target = start_emulator(&jwks, issuer).await;
    let a = Instance::start(dir.path(), "a", &source.url(), &target.url(), &db.url).await;
    let mut b = Instance::start(dir.path(), "b", &source.url(), &target.url(), &db.url).await;
    let cutover = |instance: &Instance| {
        let url = format!("http://127.0.0.1:{}/cutover", instance.admin_port);
        async move {
            let (_, _, body) = send(Method::POST, &url, ADMIN_TOKEN, "{}").await.unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let fleet_check = |report: &serde_json::Value| {
        report["preflight"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["check"] == "no other instance with a live lease")
            .cloned()
            .unwrap()
    };
    let both_live = eventually(DEADLINE, || async {
        let report = cutover(&a).await;
        fleet_check(&report)["ok"] == false
    })
    .await;
    assert!(both_live, "a did not see b's lease");
    let report = cutover(&a).await;
    assert_eq!(report["outcome"], "refused", "{report}");
    let detail = fleet_check(&report)["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("scale to one instance"), "{detail}");

    // /status on either instance shows the fleet (refreshed every second).
    let status_url = format!("http://127.0.0.1:{}/status", b.admin_port);
    let status = || async {
        let (_, _, body) = send(Method::GET, &status_url, ADMIN_TOKEN, "")
            .await
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let both = eventually(DEADLINE, || async {
        status().await["fleet"]["instances"]
            .as_array()
            .is_some_and(|all| all.iter().filter(|m| m["live"] == true).count() == 2)
    })
    .await;
    assert!(both, "{}", status().await);
    let status = status().await;
    assert!(
        status["fleet"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["instance"] == status["fleet"]["this"]),
        "{status}"
    );

    // b dies; once its lease expires a is the only live instance and this
    // check passes (the cutover may still be refused for other reasons).
    b.kill();
    let alone = eventually(DEADLINE, || async {
        fleet_check(&cutover(&a).await)["ok"] == true
    })
    .await;
    assert!(alone, "b's expired lease still counted");
}
