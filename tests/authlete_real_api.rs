//! The Authlete API as Authlete documents it, end to end against the
//! strict emulator (`Strictness::real()`, each behaviour below failing
//! without its fix):
//!
//! - the service settings are read where each version has them (v2
//!   `/api/service/get/{apiKey}` with the service owner's credentials, v3
//!   `/api/{serviceId}/service/get`), and every client's own
//!   `singleAccessTokenPerSubject` is checked as well as the service's;
//! - numeric client ids come from `client/get/list`, never from an alias
//!   lookup `client/get/{alias}` the API does not document, also after a
//!   restart emptied the proxy's memory;
//! - a replayed token create, which a real service may refuse with a
//!   generic server error, is confirmed by introspection and counts as done;
//! - `Retry-After` on a 429 holds every later call, and a configured
//!   `[target] rate_limit` keeps the proxy below the service's cap;
//! - `token_only=true` revocation removes that token's pair only.
//!
//! Every behaviour runs in both API generations (`v2::…`, `v3::…`).

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use handover::config::TEST_JOURNAL_KEY;
use handover::emulator::authlete::{RateLimit, Strictness};
use handover::emulator::driver::{Consent, RegisteredClient, Tokens};
use handover::journal::{self, Cipher, Journal};
use handover::servers::authlete::{Authlete, Owner};
use http::StatusCode;
use serde_json::json;
use support::authlete::Version;
use support::stack::{AuthleteSetup, AuthleteStack, proxy_authlete_config};

macro_rules! in_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Version::V2).await;
                }
            )*
        }
        mod v3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Version::V3).await;
                }
            )*
        }
    };
}

in_both_versions!(
    the_service_and_every_clients_single_token_flag_are_checked_on_the_documented_paths,
    tokens_of_clients_created_before_a_restart_reach_authlete_without_alias_lookups,
    a_replayed_create_that_authlete_refuses_with_a_server_error_is_confirmed_by_introspection,
    retry_after_holds_every_call_and_a_configured_rate_cap_avoids_429s,
    a_token_only_revocation_removes_that_pair_and_keeps_the_users_other_tokens,
);

/// The real reading without its rate limit (tested on its own below).
fn real_unlimited() -> Strictness {
    Strictness {
        rate_limit: None,
        ..Strictness::real()
    }
}

fn strict_setup() -> AuthleteSetup {
    AuthleteSetup {
        authlete: real_unlimited(),
        ..AuthleteSetup::default()
    }
}

/// An API client of the stack's Authlete service, as the proxy builds it.
fn api_client(stack_emulator: &support::authlete::Emulator, version: Version) -> Authlete {
    let url = handover::model::BaseUrl::parse(&stack_emulator.handle.url()).unwrap();
    let upstream = handover::upstream::Upstream::new(
        handover::model::Side::Target,
        &url,
        None,
        handover::upstream::Protocol::Http1,
        &handover::upstream::Config::default(),
        &handover::metrics::Metrics::new(),
    )
    .unwrap();
    Authlete::new(
        Arc::new(upstream),
        proxy_authlete_config(stack_emulator, version),
        Duration::from_secs(10),
    )
}

async fn the_service_and_every_clients_single_token_flag_are_checked_on_the_documented_paths(
    version: Version,
) {
    let emulator = support::authlete::start(handover::emulator::authlete::Config {
        strictness: real_unlimited(),
        single_access_token_per_subject: true,
        ..support::authlete::config()
    })
    .await;
    emulator
        .create_client(
            version,
            json!({"clientIdAlias": "shop", "clientIdAliasEnabled": true, "singleAccessTokenPerSubject": true}),
        )
        .await;
    emulator
        .create_client(
            version,
            json!({"clientIdAlias": "news", "clientIdAliasEnabled": true}),
        )
        .await;

    let mut api = api_client(&emulator, version);
    let check = api.check_service().await.unwrap();
    let text = check.warnings.join("\n");
    let client_warning = check
        .warnings
        .iter()
        .find(|w| w.contains("client(s)"))
        .unwrap_or_else(|| panic!("no client warning: {text}"));
    assert!(client_warning.contains("shop"), "{client_warning}");
    assert!(!client_warning.contains("news"), "{client_warning}");
    match version {
        Version::V3 => assert!(
            text.contains("singleAccessTokenPerSubject is on:"),
            "the service flag is read: {text}"
        ),
        Version::V2 => {
            // Without the owner's credentials v2 cannot read the service,
            // and says so instead of failing.
            assert!(text.contains("owner"), "{text}");
            assert!(!text.contains("singleAccessTokenPerSubject is on:"));
            let service = emulator.authlete.config();
            let mut config = proxy_authlete_config(&emulator, version);
            config.owner = Some(Owner {
                key: handover::model::Secret::new(&service.owner_api_key),
                secret: handover::model::Secret::new(&service.owner_api_secret),
            });
            api = Authlete::new(Arc::clone(api.upstream()), config, Duration::from_secs(10));
            let check = api.check_service().await.unwrap();
            let text = check.warnings.join("\n");
            assert!(
                text.contains("singleAccessTokenPerSubject is on:"),
                "the service flag is read with the owner's credentials: {text}"
            );
            assert!(!text.contains("were not checked"), "{text}");
        }
    }
    // Only documented paths were called: nothing answered 404 or 405.
    let wrong: Vec<_> = emulator
        .authlete
        .arrivals()
        .into_iter()
        .filter(|a| {
            matches!(
                a.status,
                Some(StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED)
            )
        })
        .map(|a| format!("{} {}", a.method, a.path))
        .collect();
    assert!(wrong.is_empty(), "undocumented calls: {wrong:?}");
}

/// A whole login through the proxy and the code exchange.
async fn log_in(stack: &AuthleteStack, client: &RegisteredClient, subject: &str) -> Tokens {
    let login = stack
        .via_proxy
        .login(&client.id, subject, Consent::default())
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(client, &login.code)
        .await
        .unwrap();
    assert!(tokens.refresh_token.is_some());
    tokens
}

async fn assert_no_dead_letters(stack: &AuthleteStack) {
    let admin = stack.admin();
    let count = admin.status().await.unwrap().journal.dead_letters;
    if count > 0 {
        let letters = admin.dead_letters().await.unwrap();
        panic!("{count} dead letters: {letters:#?}");
    }
}

/// Asserts both tokens of a login are active at Authlete for `client`.
async fn assert_held(stack: &AuthleteStack, client: &RegisteredClient, tokens: &Tokens) {
    let access = stack
        .authlete
        .introspect_in(stack.version, &tokens.access_token)
        .await;
    assert_eq!(access.action(), "OK", "{access:?}");
    assert_eq!(access.body["clientIdAlias"], client.id.as_str());
    let refresh = stack
        .authlete
        .introspect_refresh_in(stack.version, tokens.refresh_token.as_deref().unwrap())
        .await;
    assert_eq!(refresh["active"], true, "{refresh}");
    assert_eq!(refresh["client_id"], client.id.as_str());
}

/// Asserts Authlete holds both tokens of a login as one pair, read in
/// process (no API call: the rate limit counts those too).
fn assert_stored(stack: &AuthleteStack, tokens: &Tokens) {
    let emulator = &stack.authlete.authlete;
    let by_access = emulator
        .token_by_access_token(&tokens.access_token)
        .expect("access token at Authlete");
    let by_refresh = emulator
        .token_by_refresh_token(tokens.refresh_token.as_deref().unwrap())
        .expect("refresh token at Authlete");
    assert_eq!(by_access.token_id, by_refresh.token_id);
}

/// No call named a client by its alias where the API takes a numeric id.
fn assert_no_alias_lookups(stack: &AuthleteStack, aliases: &[&str]) {
    for arrival in stack.authlete.authlete.arrivals() {
        for alias in aliases {
            assert!(
                !(arrival.path.contains("/client/get/")
                    || arrival.path.contains("/client/delete/"))
                    || !arrival.path.ends_with(&format!("/{alias}")),
                "alias lookup: {} {}",
                arrival.method,
                arrival.path
            );
        }
    }
}

async fn tokens_of_clients_created_before_a_restart_reach_authlete_without_alias_lookups(
    version: Version,
) {
    let mut stack = AuthleteStack::start_with(version, strict_setup(), |_| {}).await;
    let shop = stack.via_proxy.register_client("Shop").await.unwrap();
    let first = log_in(&stack, &shop, "alice").await;
    stack.wait_synced().await;
    assert_held(&stack, &shop, &first).await;

    // A deploy: the new process knows no numeric client id.
    stack.restart_proxy().await;
    let second = log_in(&stack, &shop, "bob").await;
    stack
        .via_proxy
        .update_client(&shop, "Shop renamed")
        .await
        .unwrap();
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    assert_held(&stack, &shop, &second).await;
    assert_held(&stack, &shop, &first).await;
    let copies: Vec<_> = stack
        .authlete
        .authlete
        .clients()
        .into_iter()
        .filter(|c| c.client_id_alias.as_deref() == Some(shop.id.as_str()))
        .collect();
    assert_eq!(copies.len(), 1, "updated in place, not created twice");
    assert_eq!(copies[0].client_name.as_deref(), Some("Shop renamed"));
    assert_no_alias_lookups(&stack, &[shop.id.as_str()]);
}

async fn journal_records(dir: &Path) -> Vec<Vec<u8>> {
    let (journal, recovery) = Journal::open(
        journal::Config::new(dir),
        Cipher::from_hex(TEST_JOURNAL_KEY).unwrap(),
    )
    .unwrap();
    journal.close().await.unwrap();
    recovery
        .entries
        .into_iter()
        .map(|entry| entry.body)
        .collect()
}

/// Appends `records` to the (stopped) proxy's journal, as an at-least-once
/// redelivery after a crash would hand them to the sync once more.
async fn journal_again(dir: &Path, records: Vec<Vec<u8>>) {
    let (journal, recovery) = Journal::open(
        journal::Config::new(dir),
        Cipher::from_hex(TEST_JOURNAL_KEY).unwrap(),
    )
    .unwrap();
    assert!(recovery.entries.is_empty(), "the journal was drained");
    journal.append_batch(records).await.unwrap();
    journal.close().await.unwrap();
}

async fn a_replayed_create_that_authlete_refuses_with_a_server_error_is_confirmed_by_introspection(
    version: Version,
) {
    let mut stack = AuthleteStack::start_with(version, strict_setup(), |_| {}).await;
    // Authlete unreachable while the triggers happen: the journal keeps
    // the whole stream.
    stack.authlete.authlete.knobs().set_down(true);
    let shop = stack.via_proxy.register_client("Shop").await.unwrap();
    let alice = log_in(&stack, &shop, "alice").await;
    stack.stop_proxy().await;
    let stream = journal_records(stack.journal_dir()).await;
    assert_eq!(stream.len(), 2, "the client and the code exchange");
    stack.authlete.authlete.knobs().set_down(false);
    stack.restart_proxy().await;
    stack.wait_synced().await;
    assert_held(&stack, &shop, &alice).await;

    // The same stream once more: the create of a value Authlete holds
    // answers 500 `A001101` in the strict reading, nothing saying
    // "duplicate".
    stack.stop_proxy().await;
    journal_again(stack.journal_dir(), stream).await;
    stack.restart_proxy().await;
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    assert_held(&stack, &shop, &alice).await;
    assert_eq!(stack.authlete.authlete.token_count(), 1);
    let refused = stack
        .authlete
        .authlete
        .arrivals()
        .into_iter()
        .filter(|a| {
            a.path.ends_with("/auth/token/create")
                && a.status == Some(StatusCode::INTERNAL_SERVER_ERROR)
        })
        .count();
    assert!(refused >= 1, "the replay met the duplicate answer");
}

async fn retry_after_holds_every_call_and_a_configured_rate_cap_avoids_429s(version: Version) {
    let cap = RateLimit {
        requests: 8,
        per: Duration::from_secs(1),
    };
    let limited = AuthleteSetup {
        authlete: Strictness {
            rate_limit: Some(cap),
            ..Strictness::real()
        },
        ..AuthleteSetup::default()
    };

    // No cap configured: the service answers 429 with Retry-After, and
    // no call follows within the time it asked for.
    let stack = AuthleteStack::start_with(version, limited.clone(), |_| {}).await;
    let shop = stack.via_proxy.register_client("Shop").await.unwrap();
    let mut logins = Vec::new();
    for index in 0..6 {
        logins.push(log_in(&stack, &shop, &format!("user-{index}")).await);
    }
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    for tokens in &logins {
        assert_stored(&stack, tokens);
    }
    let arrivals = stack.authlete.authlete.arrivals();
    let throttled: Vec<_> = arrivals
        .iter()
        .filter(|a| a.status == Some(StatusCode::TOO_MANY_REQUESTS))
        .collect();
    assert!(!throttled.is_empty(), "the cap was reached");
    // A call already on its way when the 429 was answered may still
    // arrive just after it; one sent later must wait for Retry-After.
    let in_transit = Duration::from_millis(200);
    for answer in &throttled {
        let asked = answer.retry_after.expect("429 carries Retry-After");
        let early: Vec<_> = arrivals
            .iter()
            .filter(|a| a.at > answer.at + in_transit && a.at < answer.at + asked)
            .map(|a| format!("{} {}", a.method, a.path))
            .collect();
        assert!(early.is_empty(), "called before Retry-After: {early:?}");
    }

    // A rate cap below the service's: no 429 at all.
    let capped = AuthleteStack::start_with(version, limited, |config| {
        config.target.authlete.as_mut().unwrap().rate_limit = Some(6.0);
    })
    .await;
    let news = capped.via_proxy.register_client("News").await.unwrap();
    let mut logins = Vec::new();
    for index in 0..6 {
        logins.push(log_in(&capped, &news, &format!("user-{index}")).await);
    }
    capped.wait_synced().await;
    assert_no_dead_letters(&capped).await;
    for tokens in &logins {
        assert_stored(&capped, tokens);
    }
    let throttled = capped
        .authlete
        .authlete
        .arrivals()
        .into_iter()
        .filter(|a| a.status == Some(StatusCode::TOO_MANY_REQUESTS))
        .count();
    assert_eq!(throttled, 0, "the configured cap kept below the service's");
}

async fn a_token_only_revocation_removes_that_pair_and_keeps_the_users_other_tokens(
    version: Version,
) {
    let stack = AuthleteStack::start_with(version, strict_setup(), |_| {}).await;
    let shop = stack.via_proxy.register_client("Shop").await.unwrap();
    let phone = log_in(&stack, &shop, "alice").await;
    stack.wait_synced().await;
    // alice holds another pair at the same client at Authlete (her
    // laptop's, issued before the proxy came).
    stack
        .authlete
        .import_pair(
            &shop.id,
            "alice",
            "laptop-access-token",
            "laptop-refresh-token",
        )
        .await
        .ok("A109001");

    stack
        .via_proxy
        .revoke_token_only(&shop, phone.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    let gone = stack
        .authlete
        .introspect_refresh_in(stack.version, phone.refresh_token.as_deref().unwrap())
        .await;
    assert_eq!(gone["active"], false, "the revoked token's pair: {gone}");
    let kept = stack
        .authlete
        .introspect_refresh_in(stack.version, "laptop-refresh-token")
        .await;
    assert_eq!(kept["active"], true, "alice's other pair stays: {kept}");
}
