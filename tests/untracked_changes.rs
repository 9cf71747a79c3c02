//! No silent untracked change: a successful trigger whose response cannot
//! be inspected (larger than the inspection cap, cut off, malformed) is
//! journaled by what the rest of the exchange names (the key in the path,
//! the refresh token sent); when nothing is left to name, it is counted in
//! `handover_untracked_changes_total{route}`, `/status` carries a warning,
//! `handover status` prints it, and the cutover pre-flight refuses until a
//! verify covers it.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use bytes::Bytes;
use handover::api::{AdminClient, FlipRequest};
use handover::http::{Body, BoxError};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use support::proxy::{FakeUpstream, TestProxy, client, get};
use support::stack::metric;

/// The inspection cap of this test's proxy.
const CAP: usize = 4096;
const ADMIN_TOKEN: &str = "untracked-test-admin-token-0123456789";

/// A primary whose management answers cannot be inspected.
async fn primary(request: Request<Incoming>) -> Response<Body> {
    let (parts, _) = request.into_parts();
    let json = |status: StatusCode, text: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(handover::http::full(text))
            .unwrap()
    };
    let huge = || "x".repeat(2 * CAP);
    match (parts.method.clone(), parts.uri.path()) {
        // Larger than the cap: the new client's id is in the part nobody saw.
        (Method::POST, "/c2id/clients") => json(
            StatusCode::CREATED,
            format!(r#"{{"padding":"{}","client_id":"lost-1"}}"#, huge()),
        ),
        // Larger than the cap too, but the key is in the path.
        (Method::PUT, "/c2id/clients/kept-1") => json(
            StatusCode::OK,
            format!(r#"{{"padding":"{}","client_id":"kept-1"}}"#, huge()),
        ),
        // Malformed: the code's tokens are unreadable.
        (Method::POST, "/c2id/token") => json(StatusCode::OK, "<html>oops</html>".to_owned()),
        // Cut off after the status: the created session's id is lost.
        (Method::POST, "/c2id/session-store/rest/v2/sessions") => {
            let (mut sender, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
            tokio::spawn(async move {
                let _ = sender.send_data(Bytes::from_static(b"{\"sid\":\"")).await;
                sender.abort("primary went away".into());
            });
            Response::builder()
                .status(StatusCode::CREATED)
                .header("content-type", "application/json")
                .body(body.boxed_unsync())
                .unwrap()
        }
        _ => json(StatusCode::NOT_FOUND, "{}".to_owned()),
    }
}

async fn call(proxy: &TestProxy, method: Method, path: &str, body: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .header("authorization", "Bearer management")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    match client().request(request).await {
        Ok(response) => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        }
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninspectable_trigger_responses_are_journaled_or_counted_and_named_never_only_logged() {
    let primary = FakeUpstream::start(primary).await;
    let mut config = TestProxy::config_for(&format!("{}/c2id", primary.url()));
    config.proxy.forward.max_body_bytes = CAP;
    config.admin.token = Some(handover::model::Secret::new(ADMIN_TOKEN));
    let mut proxy = TestProxy::start(config).await;
    proxy.wait_ready().await;

    // Clients get the primary's answers in full.
    assert_eq!(
        call(&proxy, Method::POST, "/c2id/clients", "{}").await,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&proxy, Method::PUT, "/c2id/clients/kept-1", "{}").await,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &proxy,
            Method::POST,
            "/c2id/token",
            "grant_type=authorization_code&code=c1"
        )
        .await,
        StatusCode::OK
    );
    // A refresh names its authorization by the token it sent.
    assert_eq!(
        call(
            &proxy,
            Method::POST,
            "/c2id/token",
            "grant_type=refresh_token&refresh_token=rt-1"
        )
        .await,
        StatusCode::OK
    );
    // The cut-off answer fails for the client, but may have made a session.
    assert_ne!(
        call(
            &proxy,
            Method::POST,
            "/c2id/session-store/rest/v2/sessions",
            "{}"
        )
        .await,
        StatusCode::CREATED
    );

    let (_, metrics) = get(&client(), &proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let untracked = |route: &str| {
        metric(
            &metrics,
            &format!("handover_untracked_changes_total{{route=\"{route}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(untracked("client_create"), 1.0, "{metrics}");
    assert_eq!(untracked("token"), 1.0, "{metrics}");
    assert_eq!(untracked("session_create"), 1.0, "{metrics}");
    assert_eq!(untracked("client_update"), 0.0, "{metrics}");

    let admin = AdminClient::new(&proxy.admin_url(""), Some(ADMIN_TOKEN.to_owned()));
    let status = admin.status().await.unwrap();
    // What could be named was journaled (two records): the client in the
    // path and the refresh's authorization, to be resolved by its token.
    assert_eq!(status.journal.last_seq, Some(1), "{status:?}");
    assert_eq!(status.journal.untracked, 3);
    assert_eq!(status.warnings.len(), 1, "{:?}", status.warnings);
    assert!(
        status.warnings[0].starts_with("3 changes could not be tracked since "),
        "{}",
        status.warnings[0]
    );
    assert!(status.warnings[0].contains("handover verify"));

    // The operator's screen says it too.
    let output = tokio::task::spawn_blocking({
        let admin_url = proxy.admin_url("");
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_handover"))
                .args(["status", "--admin", &admin_url])
                .env("HANDOVER_ADMIN_TOKEN", ADMIN_TOKEN)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("WARNING: 3 changes could not be tracked"),
        "{printed}"
    );

    // And the cutover pre-flight names it.
    let report = admin
        .flip(
            "/cutover",
            &FlipRequest {
                dry_run: true,
                ..FlipRequest::default()
            },
        )
        .await
        .unwrap();
    let check = report
        .preflight
        .iter()
        .find(|check| check.check == "nothing left untracked")
        .unwrap_or_else(|| panic!("no untracked check in {:?}", report.preflight));
    assert!(!check.ok && check.forceable, "{check:?}");
    assert!(
        check
            .detail
            .contains("3 changes could not be tracked since"),
        "{check:?}"
    );
}
