//! Management calls routed by `Tenant-ID` (multi-tenant edition) or
//! `Issuer` (issuer aliases) change one issuer's state (domain-gaps
//! Q1.21): the journal carries the header, and the sync reads and writes
//! that issuer on both servers.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use handover::api::VerifyRequest;
use handover::model::{Dataset, Tenant};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::c2id::{Http, Reply, Send};
use support::stack::{Servers, Stack, TOKEN};

async fn tenant_stack() -> Stack {
    Stack::start_servers(
        Servers {
            tenants: vec!["acme".to_owned()],
            ..Servers::default()
        },
        |config| config.proxy.forward.trusted_issuer_header = true,
    )
    .await
}

async fn call(url: &str, method: Method, tenant: Option<&str>, json: Option<Value>) -> Reply {
    let headers = tenant
        .map(|id| vec![("tenant-id", id.to_owned())])
        .unwrap_or_default();
    Http::default()
        .send(
            method,
            url,
            Send {
                bearer: Some(TOKEN),
                headers,
                json,
                ..Send::default()
            },
        )
        .await
}

#[tokio::test]
async fn a_tenants_client_is_synced_within_that_tenant() {
    let stack = tenant_stack().await;
    let registered = call(
        &stack.proxy.url("/c2id/clients"),
        Method::POST,
        Some("acme"),
        Some(json!({ "redirect_uris": ["https://app.example/cb"], "client_name": "Acme app" })),
    )
    .await;
    assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
    let id = registered.json()["client_id"].as_str().unwrap().to_owned();
    stack.wait_synced().await;

    let at_target = |tenant| {
        let url = format!("{}/clients/{id}", stack.target.url());
        async move { call(&url, Method::GET, tenant, None).await.status }
    };
    assert_eq!(
        at_target(Some("acme")).await,
        StatusCode::OK,
        "not in the tenant at the target"
    );
    assert_eq!(
        at_target(None).await,
        StatusCode::NOT_FOUND,
        "leaked into the default tenant"
    );
    let dead = stack.admin().dead_letters().await.unwrap();
    assert!(dead.is_empty(), "{dead:?}");

    // A delete in the tenant reaches the target's tenant too.
    let deleted = call(
        &stack.proxy.url(&format!("/c2id/clients/{id}")),
        Method::DELETE,
        Some("acme"),
        None,
    )
    .await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    stack.wait_synced().await;
    assert_eq!(at_target(Some("acme")).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_trusted_routing_headers_nothing_is_scoped() {
    // The proxy strips client-sent routing headers by default: the primary
    // serves the default tenant, and so does the sync.
    let stack = Stack::start_servers(
        Servers {
            tenants: vec!["acme".to_owned()],
            ..Servers::default()
        },
        |_| {},
    )
    .await;
    let registered = call(
        &stack.proxy.url("/c2id/clients"),
        Method::POST,
        Some("acme"),
        Some(json!({ "redirect_uris": ["https://app.example/cb"] })),
    )
    .await;
    let id = registered.json()["client_id"].as_str().unwrap().to_owned();
    stack.wait_synced().await;
    let url = format!("{}/clients/{id}", stack.target.url());
    assert_eq!(
        call(&url, Method::GET, None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_listed_tenant_is_backfilled_and_verified_on_its_own() {
    let stack = Stack::start_servers(
        Servers {
            tenants: vec!["acme".to_owned()],
            ..Servers::default()
        },
        |config| {
            config.proxy.forward.trusted_issuer_header = true;
            config.sync.tenants = vec![Tenant::id("acme")];
        },
    )
    .await;
    // Registered in the tenant before the proxy came (at the source).
    let registered = call(
        &format!("{}/clients", stack.source.url()),
        Method::POST,
        Some("acme"),
        Some(json!({ "redirect_uris": ["https://app.example/cb"] })),
    )
    .await;
    let id = registered.json()["client_id"].as_str().unwrap().to_owned();
    let admin = stack.admin();
    support::cutover::finish_backfill(&admin).await;
    stack.wait_synced().await;
    let at_target = format!("{}/clients/{id}", stack.target.url());
    assert_eq!(
        call(&at_target, Method::GET, Some("acme"), None)
            .await
            .status,
        StatusCode::OK,
        "the tenant's client was not backfilled"
    );

    let verify = |repair| {
        let admin = admin.clone();
        async move {
            admin
                .verify(
                    &VerifyRequest {
                        repair,
                        ..VerifyRequest::default()
                    },
                    |_| {},
                )
                .await
                .unwrap()
        }
    };
    let clean = verify(false).await;
    assert_eq!(clean.drift, 0, "{clean:#?}");
    assert_eq!(
        clean.tenants["acme"][&Dataset::Clients].matching,
        1,
        "{clean:#?}"
    );

    // Lost at the target's tenant: verify sees it there, repair restores it.
    call(&at_target, Method::DELETE, Some("acme"), None).await;
    let drifted = verify(true).await;
    assert_eq!(drifted.drift, 1, "{drifted:#?}");
    assert_eq!(
        drifted.tenants["acme"][&Dataset::Clients].missing_on_target,
        1
    );
    stack.wait_synced().await;
    assert_eq!(
        call(&at_target, Method::GET, Some("acme"), None)
            .await
            .status,
        StatusCode::OK,
        "repair did not restore the tenant's client"
    );
}
