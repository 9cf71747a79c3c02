//! Live sync to an Authlete target, end to end: production traffic goes
//! through the proxy to a Connect2id source; every client appears in
//! Authlete under the same `client_id` (its alias) and secret, every token
//! the source issues is created there with the same value, a rotation
//! replaces the pair, a revocation removes it; replayed triggers, a restart
//! and an Authlete outage change nothing of that; a tokens file backfills the
//! tokens issued before the proxy came.
//!
//! Every behaviour runs against both Authlete API generations the target
//! speaks (`v2::…`: `/api/...` with HTTP Basic, numeric client ids; `v3::…`:
//! `/api/{serviceId}/...` with a Bearer token, aliases), and every check at
//! Authlete goes through the same API generation.
//!
//! The 100,000-token tokens-file backfill is `#[ignore]`d (a few minutes in
//! a debug build); run it with
//! `cargo test --release --test sync_authlete -- --ignored`.

#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use handover::config::TEST_JOURNAL_KEY;
use handover::emulator::authlete::{ClientType, GrantType, token_hash};
use handover::emulator::driver::{Consent, REDIRECT_URI, RegisteredClient, Tokens};
use handover::journal::{self, Cipher, Journal};
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde_json::json;
use support::authlete::Version;
use support::proxy::{client, eventually, get, send};
use support::stack::{AuthleteSetup, AuthleteStack, TOKEN, metric_sum};

/// Runs each named `async fn name(version: Version)` as `v2::name` and
/// `v3::name`.
macro_rules! in_both_versions {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod v2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                $(#[$attr])*
                async fn $name() {
                    super::$name(super::Version::V2).await;
                }
            )*
        }
        mod v3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                $(#[$attr])*
                async fn $name() {
                    super::$name(super::Version::V3).await;
                }
            )*
        }
    };
}

in_both_versions!(
    a_registered_client_exists_at_authlete_under_its_client_id_and_secret_and_follows_updates_and_deletion,
    a_client_authlete_cannot_hold_is_dead_lettered_with_its_tokens_instead_of_retried_forever,
    a_code_exchange_creates_the_same_token_pair_at_authlete_for_the_right_subject_and_scopes,
    a_rotated_refresh_token_works_at_authlete_and_the_expended_ones_do_not,
    revocation_at_the_source_removes_the_pair_at_authlete_and_nothing_else,
    replayed_triggers_and_a_restart_mid_stream_leave_exactly_the_current_tokens_at_authlete,
    authlete_down_then_failing_then_back_catches_up_without_dead_letters,
    a_tokens_file_of_5_000_tokens_backfills_every_token_and_verify_reports_no_drift,
    a_refresh_token_issued_before_the_proxy_and_never_rotated_reaches_authlete_at_its_next_refresh,
    a_refresh_response_that_echoes_the_refresh_token_keeps_it_with_the_new_access_token_at_authlete,
    tokens_of_direct_authorizations_and_authz_store_imports_reach_authlete,
    #[ignore = "100,000 tokens: cargo test --release --test sync_authlete -- --ignored"]
    a_tokens_file_of_100_000_tokens_backfills_every_token_and_verify_reports_no_drift,
);

/// The scopes every login of the driver is granted.
const SCOPES: [&str; 2] = ["openid", "email"];

/// What a user holds after logging in through the proxy: the latest
/// tokens, and the refresh tokens rotation took away.
#[derive(Debug, Clone)]
struct Held {
    client: RegisteredClient,
    subject: String,
    tokens: Tokens,
    expended: Vec<String>,
}

impl Held {
    fn access_token(&self) -> &str {
        &self.tokens.access_token
    }

    fn refresh_token(&self) -> &str {
        self.tokens.refresh_token.as_deref().unwrap()
    }
}

/// A whole login of `subject` at `client` through the proxy and the code
/// exchange.
async fn log_in(
    stack: &AuthleteStack,
    client: &RegisteredClient,
    subject: &str,
    consent: Consent,
) -> Held {
    let login = stack
        .via_proxy
        .login(&client.id, subject, consent)
        .await
        .unwrap();
    let tokens = stack
        .via_proxy
        .exchange_code(client, &login.code)
        .await
        .unwrap();
    assert!(tokens.refresh_token.is_some());
    Held {
        client: client.clone(),
        subject: subject.to_owned(),
        tokens,
        expended: Vec::new(),
    }
}

/// Identifier (not JWT) access tokens: the proxy cannot read the subject
/// off them and resolves it at the source.
fn identifier_tokens() -> Consent {
    Consent {
        jwt_access_token: false,
        ..Consent::default()
    }
}

/// Uses the refresh token through the proxy; the source rotates it.
async fn rotate(stack: &AuthleteStack, held: &mut Held) {
    let old = held.refresh_token().to_owned();
    let tokens = stack.via_proxy.refresh(&held.client, &old).await.unwrap();
    let new = tokens.refresh_token.as_deref().expect("rotation");
    assert_ne!(new, old);
    held.expended.push(old);
    held.tokens = tokens;
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Asserts the access token introspects usable at Authlete (through the
/// stack's API version) for the held subject, scopes and client, and that
/// the refresh token is known there, in the same pair.
async fn assert_valid_at_authlete(stack: &AuthleteStack, held: &Held) {
    let who = format!("{} at {}", held.subject, held.client.id);
    let copy = stack
        .authlete
        .authlete
        .client_by_alias(&held.client.id)
        .unwrap_or_else(|| panic!("{who}: no client at Authlete"));
    let info = stack
        .authlete
        .introspect_in(stack.version, held.access_token())
        .await;
    assert_eq!(info.action(), "OK", "{who}: access token: {info:?}");
    assert_eq!(info.body["usable"], true, "{who}: {info:?}");
    assert_eq!(info.body["subject"], held.subject.as_str(), "{who}");
    assert_eq!(info.body["scopes"], json!(SCOPES), "{who}");
    assert_eq!(info.body["clientIdAlias"], held.client.id.as_str(), "{who}");
    assert_eq!(info.body["clientId"], copy.client_id, "{who}");
    assert_eq!(info.body["refreshable"], true, "{who}");

    let refresh = stack
        .authlete
        .introspect_refresh_in(stack.version, held.refresh_token())
        .await;
    assert_eq!(refresh["active"], true, "{who}: refresh token: {refresh}");
    assert_eq!(refresh["sub"], held.subject.as_str(), "{who}");
    assert_eq!(refresh["client_id"], held.client.id.as_str(), "{who}");
    assert_eq!(refresh["scope"], SCOPES.join(" "), "{who}");

    let by_access = stack
        .authlete
        .authlete
        .token_by_access_token(held.access_token())
        .unwrap();
    let by_refresh = stack
        .authlete
        .authlete
        .token_by_refresh_token(held.refresh_token())
        .unwrap();
    assert_eq!(
        by_access.token_id, by_refresh.token_id,
        "{who}: the access and refresh token are one pair"
    );
    assert_eq!(
        by_access.refresh_token_hash.as_deref(),
        Some(token_hash(held.refresh_token()).as_str())
    );
}

/// Asserts Authlete no longer knows the pair of `held`: the access token
/// does not introspect, the refresh token is refused at the token endpoint.
async fn assert_gone_at_authlete(stack: &AuthleteStack, held: &Held) {
    let who = format!("{} at {}", held.subject, held.client.id);
    let info = stack
        .authlete
        .introspect_in(stack.version, held.access_token())
        .await;
    assert_eq!(info.action(), "UNAUTHORIZED", "{who}: {info:?}");
    assert_eq!(info.body["existent"], false, "{who}: {info:?}");
    assert_refused_at_authlete(stack, &held.client, held.refresh_token()).await;
}

/// Asserts Authlete's token endpoint refuses a refresh token
/// (`invalid_grant`), and that it holds no pair with it.
async fn assert_refused_at_authlete(
    stack: &AuthleteStack,
    client: &RegisteredClient,
    refresh_token: &str,
) {
    assert!(
        stack
            .authlete
            .authlete
            .token_by_refresh_token(refresh_token)
            .is_none(),
        "a refresh token of {} is still held at Authlete",
        client.id
    );
    let refused = stack
        .authlete
        .refresh_in(stack.version, &client.id, &client.secret, refresh_token)
        .await;
    assert_eq!(refused.action(), "BAD_REQUEST", "{refused:?}");
    assert_eq!(refused.content()["error"], "invalid_grant");
}

/// Asserts Authlete holds exactly these clients (each once, with its
/// current secret) and exactly one pair per held login, each valid, and
/// none of the refresh tokens rotation took away.
async fn assert_authlete_holds_exactly(
    stack: &AuthleteStack,
    clients: &[RegisteredClient],
    held: &[Held],
) {
    let at_authlete = stack.authlete.authlete.clients();
    assert_eq!(
        at_authlete.len(),
        clients.len(),
        "clients at Authlete: {at_authlete:?}"
    );
    for client in clients {
        let copies: Vec<_> = at_authlete
            .iter()
            .filter(|c| c.client_id_alias.as_deref() == Some(client.id.as_str()))
            .collect();
        assert_eq!(copies.len(), 1, "{}: {copies:?}", client.id);
        assert_eq!(copies[0].client_secret, client.secret, "{}", client.id);
    }
    assert_eq!(
        stack.authlete.authlete.token_count(),
        held.len(),
        "one token pair per login, no duplicates, no leftovers"
    );
    for login in held {
        assert_valid_at_authlete(stack, login).await;
        for expended in &login.expended {
            assert_refused_at_authlete(stack, &login.client, expended).await;
        }
    }
}

/// Asserts the sync gave up on nothing (showing why it did otherwise).
async fn assert_no_dead_letters(stack: &AuthleteStack) {
    let admin = stack.admin();
    let count = admin.status().await.unwrap().journal.dead_letters;
    if count > 0 {
        let letters = admin.dead_letters().await.unwrap();
        panic!("{count} dead letters: {letters:#?}");
    }
}

/// A management API call through the proxy (the login page backend or an
/// admin tool), with the source's bearer token.
async fn manage_via_proxy(
    stack: &AuthleteStack,
    method: Method,
    path_and_query: &str,
    form: Option<&str>,
) -> StatusCode {
    let mut request = Request::builder()
        .method(method)
        .uri(stack.proxy.url(&format!("/c2id{path_and_query}")))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if form.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let request = request
        .body(Full::new(Bytes::from(form.unwrap_or_default().to_owned())))
        .unwrap();
    let (parts, _) = send(&client(), request).await;
    parts.status
}

/// Changes the running proxy's sync applied to Authlete.
async fn applied(stack: &AuthleteStack) -> f64 {
    let (_, body) = get(&client(), &stack.proxy.admin_url("/metrics")).await;
    metric_sum(
        &String::from_utf8_lossy(&body),
        "handover_sync_applied_total",
    )
}

/// Waits until the sync has counted at least one failed attempt (the
/// target refused or could not be reached).
async fn wait_sync_failing(stack: &AuthleteStack) {
    let metrics_url = stack.proxy.admin_url("/metrics");
    let failing = eventually(Duration::from_secs(10), || async {
        let (_, body) = get(&client(), &metrics_url).await;
        metric_sum(
            &String::from_utf8_lossy(&body),
            "handover_sync_failures_total",
        ) > 0.0
    })
    .await;
    assert!(failing, "the sync never failed while Authlete was down");
}

// ---- 1. clients ----

async fn a_registered_client_exists_at_authlete_under_its_client_id_and_secret_and_follows_updates_and_deletion(
    version: Version,
) {
    let stack = AuthleteStack::start(version).await;
    let client = stack.via_proxy.register_client("Shop").await.unwrap();
    stack.wait_synced().await;

    let copy = stack
        .authlete
        .authlete
        .client_by_alias(&client.id)
        .expect("the client at Authlete under its client_id");
    assert_eq!(copy.client_secret, client.secret);
    assert_eq!(copy.client_name.as_deref(), Some("Shop"));
    assert_eq!(copy.redirect_uris, [REDIRECT_URI]);
    assert_eq!(
        copy.grant_types,
        [GrantType::AuthorizationCode, GrantType::RefreshToken]
    );
    assert_eq!(copy.response_types, ["CODE"]);
    assert_eq!(
        copy.token_auth_method.as_deref(),
        Some("CLIENT_SECRET_BASIC")
    );
    assert_eq!(copy.client_type, Some(ClientType::Confidential));
    // v2 honours an alias only where it is enabled on the client.
    assert!(copy.client_id_alias_enabled);
    // The same through the API of the version the proxy speaks.
    let read = stack
        .authlete
        .get(version, &format!("/client/get/{}", copy.client_id))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.body["clientIdAlias"], client.id.as_str());
    assert_eq!(read.body["clientSecret"], client.secret.as_str());
    assert_eq!(read.body["redirectUris"], json!([REDIRECT_URI]));

    // The source rotates the secret on update: Authlete gets the same new
    // one, on the same client (updated, not created again).
    let updated = stack
        .via_proxy
        .update_client(&client, "Shop v2")
        .await
        .unwrap();
    assert_ne!(updated.secret, client.secret);
    stack.wait_synced().await;
    let clients = stack.authlete.authlete.clients();
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0].client_id, copy.client_id);
    assert_eq!(clients[0].client_secret, updated.secret);
    assert_eq!(clients[0].client_name.as_deref(), Some("Shop v2"));

    // A token of the client, then the deletion: the client and its tokens
    // are gone from Authlete.
    let alice = log_in(&stack, &updated, "alice", Consent::default()).await;
    stack.wait_synced().await;
    assert_valid_at_authlete(&stack, &alice).await;
    stack.via_proxy.delete_client(&client.id).await.unwrap();
    stack.wait_synced().await;
    assert!(
        stack
            .authlete
            .authlete
            .client_by_alias(&client.id)
            .is_none()
    );
    assert!(stack.authlete.authlete.clients().is_empty());
    assert_eq!(stack.authlete.authlete.token_count(), 0);
    let read = stack
        .authlete
        .get(version, &format!("/client/get/{}", copy.client_id))
        .await;
    assert_eq!(read.status, StatusCode::NOT_FOUND, "{read:?}");
    assert_no_dead_letters(&stack).await;
}

// ---- 2. code exchange ----

async fn a_client_authlete_cannot_hold_is_dead_lettered_with_its_tokens_instead_of_retried_forever(
    version: Version,
) {
    let stack = AuthleteStack::start(version).await;
    // A secret with characters Authlete refuses ('.' and '~'), set with the
    // master token as an admin tool migrating its own clients would.
    let request = Request::post(stack.proxy.url("/c2id/clients"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            json!({
                "client_name": "Legacy",
                "redirect_uris": [REDIRECT_URI],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
                "scope": "openid email",
                "preferred_client_secret": "legacy.secret~with-dots.and.tildes-0123456789",
            })
            .to_string(),
        )))
        .unwrap();
    let (parts, body) = send(&client(), request).await;
    assert!(parts.status.is_success(), "{}", parts.status);
    let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let legacy = RegisteredClient {
        id: record["client_id"].as_str().unwrap().to_owned(),
        secret: record["client_secret"].as_str().unwrap().to_owned(),
        record,
    };
    // Its users log in at the source all the same.
    let held = log_in(&stack, &legacy, "carol", Consent::default()).await;

    // The client and its tokens are given up with the reason, and the
    // journal drains: the tokens do not wait forever behind a client that
    // can never arrive.
    let admin = stack.admin();
    let settled = eventually(Duration::from_secs(20), || async {
        let status = admin.status().await.unwrap();
        status.journal.dead_letters >= 2 && status.journal.depth == 0
    })
    .await;
    let letters = admin.dead_letters().await.unwrap();
    assert!(settled, "not settled; dead letters: {letters:#?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason.contains("cannot be stored in Authlete")),
        "{letters:#?}"
    );
    assert!(
        letters.iter().all(|l| !l.reason.contains(&legacy.secret)
            && !l.change.contains(held.refresh_token())),
        "a secret reached the dead-letter log: {letters:#?}"
    );
    assert!(
        stack
            .authlete
            .authlete
            .client_by_alias(&legacy.id)
            .is_none()
    );
}

async fn a_code_exchange_creates_the_same_token_pair_at_authlete_for_the_right_subject_and_scopes(
    version: Version,
) {
    let stack = AuthleteStack::start(version).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    // A JWT access token (the subject is in it) and an identifier one (the
    // proxy asks the source whose it is).
    let alice = log_in(&stack, &client, "alice", Consent::default()).await;
    let bob = log_in(&stack, &client, "bob", identifier_tokens()).await;
    assert_eq!(alice.access_token().split('.').count(), 3, "a JWT");
    assert_ne!(bob.access_token().split('.').count(), 3, "an identifier");
    stack.wait_synced().await;

    assert_eq!(stack.authlete.authlete.token_count(), 2);
    for held in [&alice, &bob] {
        assert_valid_at_authlete(&stack, held).await;
        // The access token lives as long at Authlete as at the source.
        let expires_in = held.tokens.response["expires_in"].as_i64().unwrap();
        let info = stack
            .authlete
            .introspect_in(version, held.access_token())
            .await;
        let expires_at = info.body["expiresAt"].as_i64().unwrap();
        let expected = now_ms() + expires_in * 1000;
        assert!(
            (expires_at - expected).abs() < 30_000,
            "{}: expires at {expires_at}, the source said in {expires_in}s",
            held.subject
        );
    }
    assert_no_dead_letters(&stack).await;
}

// ---- 3. rotation ----

async fn a_rotated_refresh_token_works_at_authlete_and_the_expended_ones_do_not(version: Version) {
    let stack = AuthleteStack::start(version).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let mut carol = log_in(&stack, &client, "carol", Consent::default()).await;
    let mut dan = log_in(&stack, &client, "dan", identifier_tokens()).await;
    for _ in 0..2 {
        rotate(&stack, &mut carol).await;
        rotate(&stack, &mut dan).await;
    }
    stack.wait_synced().await;

    // One pair per user: each rotation replaced the pair.
    assert_eq!(stack.authlete.authlete.token_count(), 2);
    for held in [&carol, &dan] {
        assert_valid_at_authlete(&stack, held).await;
        assert_eq!(held.expended.len(), 2);
        for expended in &held.expended {
            assert_refused_at_authlete(&stack, &held.client, expended).await;
        }
        // The freshly rotated one works at Authlete's token endpoint, with
        // the client authenticating by its Connect2id id and secret.
        let refreshed = stack
            .authlete
            .refresh_in(version, &client.id, &client.secret, held.refresh_token())
            .await
            .ok("A053001");
        assert_eq!(refreshed.action(), "OK");
        assert_eq!(refreshed.body["subject"], held.subject.as_str());
        assert_eq!(refreshed.body["scopes"], json!(SCOPES));
        let content = refreshed.content();
        assert!(content["access_token"].as_str().is_some(), "{content}");
        assert_ne!(content["refresh_token"], held.refresh_token());
    }
    assert_no_dead_letters(&stack).await;
}

// ---- 3b. refresh tokens that are never rotated ----

/// A source as Connect2id ships: no rotation unless the consent says so,
/// and refresh tokens sealed with a random nonce (an exported copy is not
/// the string the client holds); `echo` makes a non-rotating refresh echo
/// the token in its response.
fn no_rotation_source(echo: bool) -> AuthleteSetup {
    let mut source = handover::emulator::connect2id::Strictness::lenient();
    source.random_refresh_token_nonce = true;
    source.default_rotate = false;
    source.echo_kept_refresh_token = echo;
    AuthleteSetup {
        source,
        ..AuthleteSetup::default()
    }
}

/// A login straight at the source, as before the proxy came: Authlete has
/// never seen these tokens.
async fn log_in_before_the_proxy(
    stack: &AuthleteStack,
    client: &RegisteredClient,
    subject: &str,
    consent: Consent,
) -> Held {
    let login = stack
        .at_source
        .login(&client.id, subject, consent)
        .await
        .unwrap();
    let tokens = stack
        .at_source
        .exchange_code(client, &login.code)
        .await
        .unwrap();
    assert!(tokens.refresh_token.is_some());
    Held {
        client: client.clone(),
        subject: subject.to_owned(),
        tokens,
        expended: Vec::new(),
    }
}

/// Uses the refresh token through the proxy; the source does not rotate
/// it (the client keeps it, whether or not the response echoes it).
async fn refresh_kept(stack: &AuthleteStack, held: &mut Held) {
    let kept = held.refresh_token().to_owned();
    let mut tokens = stack.via_proxy.refresh(&held.client, &kept).await.unwrap();
    if let Some(echoed) = &tokens.refresh_token {
        assert_eq!(echoed, &kept, "no rotation");
    }
    tokens.refresh_token = Some(kept);
    held.tokens = tokens;
}

async fn a_refresh_token_issued_before_the_proxy_and_never_rotated_reaches_authlete_at_its_next_refresh(
    version: Version,
) {
    kept_refresh_tokens_reach_authlete(version, false).await;
}

async fn a_refresh_response_that_echoes_the_refresh_token_keeps_it_with_the_new_access_token_at_authlete(
    version: Version,
) {
    kept_refresh_tokens_reach_authlete(version, true).await;
}

async fn kept_refresh_tokens_reach_authlete(version: Version, echo: bool) {
    let stack = AuthleteStack::start_with(version, no_rotation_source(echo), |_| {}).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let no_rotation = Consent {
        rotate: false,
        ..Consent::default()
    };
    let identifiers = Consent {
        rotate: false,
        ..identifier_tokens()
    };
    let mut ivan = log_in_before_the_proxy(&stack, &client, "ivan", no_rotation).await;
    let mut judy = log_in_before_the_proxy(&stack, &client, "judy", identifiers).await;
    stack.wait_synced().await;
    assert_eq!(stack.authlete.authlete.token_count(), 0, "never seen");

    // Their first refresh through the proxy: the refresh token they hold
    // (in no response) is created at Authlete with the new access token.
    refresh_kept(&stack, &mut ivan).await;
    refresh_kept(&stack, &mut judy).await;
    stack.wait_synced().await;
    assert_authlete_holds_exactly(
        &stack,
        std::slice::from_ref(&client),
        &[ivan.clone(), judy.clone()],
    )
    .await;

    // The next refresh replaces the pair: the new access token with the
    // same refresh token, the previous access token retired.
    let before = ivan.access_token().to_owned();
    refresh_kept(&stack, &mut ivan).await;
    stack.wait_synced().await;
    assert_authlete_holds_exactly(
        &stack,
        std::slice::from_ref(&client),
        &[ivan.clone(), judy.clone()],
    )
    .await;
    let old = stack.authlete.introspect_in(version, &before).await;
    assert_eq!(old.body["existent"], false, "{old:?}");

    // The refresh token keeps the source's remaining lifetime (unbounded
    // there: the configured default), not a fresh guess per refresh.
    let pair = stack
        .authlete
        .authlete
        .token_by_refresh_token(ivan.refresh_token())
        .unwrap();
    let lifetime_ms = pair.refresh_token_expires_at - now_ms();
    let default_ms =
        i64::try_from(handover::servers::authlete::DEFAULT_REFRESH_DURATION.as_millis()).unwrap();
    assert!(
        (lifetime_ms - default_ms).abs() < 60_000,
        "{lifetime_ms} ms"
    );

    // After the flip, Authlete's token endpoint takes what they hold.
    for held in [&ivan, &judy] {
        let refreshed = stack
            .authlete
            .refresh_in(version, &client.id, &client.secret, held.refresh_token())
            .await;
        assert_eq!(refreshed.action(), "OK", "{}: {refreshed:?}", held.subject);
        assert_eq!(refreshed.body["subject"], held.subject.as_str());
    }
    assert_no_dead_letters(&stack).await;
}

async fn tokens_of_direct_authorizations_and_authz_store_imports_reach_authlete(version: Version) {
    let stack = AuthleteStack::start(version).await;
    let http = client();
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let call = |path: &'static str, body: serde_json::Value| {
        let request = Request::post(stack.proxy.url(&format!("/c2id{path}")))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let http = http.clone();
        async move {
            let (parts, body) = send(&http, request).await;
            assert!(parts.status.is_success(), "{path}: {}", parts.status);
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }
    };
    let direct = call(
        "/direct-authz/rest/v2",
        json!({
            "sub": "kate",
            "client_id": client.id,
            "scope": SCOPES,
            "long_lived": true,
            "refresh_token": { "issue": true },
            "access_token": { "encoding": "IDENTIFIER", "lifetime": 600 },
        }),
    )
    .await;
    let imported = call(
        "/authz-store/rest/v3/authorizations?return=tokens",
        json!({
            "sub": "leo",
            "cid": client.id,
            "scp": SCOPES,
            "irt": true,
            "ate": "IDENTIFIER",
        }),
    )
    .await;
    stack.wait_synced().await;
    let held: Vec<Held> = [("kate", direct), ("leo", imported)]
        .into_iter()
        .map(|(subject, response)| Held {
            client: client.clone(),
            subject: subject.to_owned(),
            tokens: Tokens {
                access_token: response["access_token"].as_str().unwrap().to_owned(),
                refresh_token: response["refresh_token"].as_str().map(str::to_owned),
                response,
            },
            expended: Vec::new(),
        })
        .collect();
    assert_authlete_holds_exactly(&stack, std::slice::from_ref(&client), &held).await;
    assert_no_dead_letters(&stack).await;
}

// ---- 4. revocation ----

async fn revocation_at_the_source_removes_the_pair_at_authlete_and_nothing_else(version: Version) {
    let stack = AuthleteStack::start(version).await;
    let client = stack.via_proxy.register_client("App").await.unwrap();
    let dave = log_in(&stack, &client, "dave", Consent::default()).await;
    let erin = log_in(&stack, &client, "erin", identifier_tokens()).await;
    let frank = log_in(&stack, &client, "frank", Consent::default()).await;
    let grace = log_in(&stack, &client, "grace", Consent::default()).await;
    let heidi = log_in(&stack, &client, "heidi", Consent::default()).await;
    stack.wait_synced().await;
    assert_eq!(stack.authlete.authlete.token_count(), 5);

    // The client revokes dave's refresh token and erin's access token
    // (RFC 7009, `/token/revoke`: Connect2id deletes the authorization).
    stack
        .via_proxy
        .revoke(&client, dave.refresh_token(), "refresh_token")
        .await
        .unwrap();
    stack
        .via_proxy
        .revoke(&client, erin.access_token(), "access_token")
        .await
        .unwrap();
    // The login page backend revokes frank's authorization...
    let status = manage_via_proxy(
        &stack,
        Method::POST,
        "/authz-store/rest/v3/revocation",
        Some(&format!("subject=frank&client_id={}", client.id)),
    )
    .await;
    assert!(status.is_success(), "{status}");
    // ...and an admin tool deletes grace's long-lived authorization.
    let status = manage_via_proxy(
        &stack,
        Method::DELETE,
        &format!(
            "/authz-store/rest/v3/authorizations?subject=grace&client_id={}",
            client.id
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    stack.wait_synced().await;

    for held in [&dave, &erin, &frank, &grace] {
        // Dead at the source...
        let refused = stack
            .at_source
            .refresh(&client, held.refresh_token())
            .await
            .unwrap_err();
        assert_eq!(refused.status(), Some(400), "{}: {refused}", held.subject);
        // ...and gone from Authlete.
        assert_gone_at_authlete(&stack, held).await;
    }
    // heidi's pair at the same client is untouched.
    assert_eq!(stack.authlete.authlete.token_count(), 1);
    assert_valid_at_authlete(&stack, &heidi).await;
    assert_no_dead_letters(&stack).await;
}

// ---- 5. replays, restarts, outages ----

/// Every record in the (stopped) proxy's journal, in order.
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

async fn replayed_triggers_and_a_restart_mid_stream_leave_exactly_the_current_tokens_at_authlete(
    version: Version,
) {
    let mut stack = AuthleteStack::start(version).await;
    // Authlete unreachable: every change stays in the journal, so the
    // journal ends up holding the whole stream of triggers.
    stack.authlete.authlete.knobs().set_down(true);
    let shop = stack.via_proxy.register_client("Shop").await.unwrap();
    let news = stack.via_proxy.register_client("News").await.unwrap();
    let mut held = Vec::new();
    for (index, client) in [&shop, &news, &shop, &news].into_iter().enumerate() {
        let consent = if index == 1 {
            identifier_tokens()
        } else {
            Consent::default()
        };
        let mut login = log_in(&stack, client, &format!("user-{index}"), consent).await;
        rotate(&stack, &mut login).await;
        held.push(login);
    }
    wait_sync_failing(&stack).await;

    // A deploy in the middle of the stream; logins and refreshes go on
    // through the new process.
    stack.restart_proxy().await;
    for login in &mut held {
        rotate(&stack, login).await;
    }
    for index in 4..6 {
        let mut login = log_in(&stack, &shop, &format!("user-{index}"), Consent::default()).await;
        rotate(&stack, &mut login).await;
        held.push(login);
    }
    stack.stop_proxy().await;
    let stream = journal_records(stack.journal_dir()).await;
    // 2 clients, per login an exchange and its rotations.
    assert_eq!(
        stream.len(),
        2 + 4 * 3 + 2 * 2,
        "the whole stream is journaled"
    );
    assert_eq!(stack.authlete.authlete.token_count(), 0);
    assert!(stack.authlete.authlete.clients().is_empty());

    // Authlete is back: the restarted proxy syncs the whole backlog.
    stack.authlete.authlete.knobs().set_down(false);
    stack.restart_proxy().await;
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    assert_authlete_holds_exactly(&stack, &[shop.clone(), news.clone()], &held).await;

    // The same triggers delivered once more (what a crash after Authlete
    // took them and before the journal heard so replays): creations that
    // Authlete already holds count as done, rotations and deletions land
    // where they did.
    stack.stop_proxy().await;
    let replayed = stream.len();
    journal_again(stack.journal_dir(), stream).await;
    stack.restart_proxy().await;
    stack.wait_synced().await;
    assert_eq!(
        applied(&stack).await,
        replayed as f64,
        "the new process applied every replayed change once"
    );
    assert_no_dead_letters(&stack).await;
    assert_authlete_holds_exactly(&stack, &[shop, news], &held).await;
}

async fn authlete_down_then_failing_then_back_catches_up_without_dead_letters(version: Version) {
    let stack = AuthleteStack::start(version).await;
    let shop = stack.via_proxy.register_client("Shop").await.unwrap();
    let mut held = vec![log_in(&stack, &shop, "ivan", Consent::default()).await];
    stack.wait_synced().await;

    // Down: connections dropped. A new client and its first logins happen
    // meanwhile (their tokens cannot be created before the client is).
    stack.authlete.authlete.knobs().set_down(true);
    let news = stack.via_proxy.register_client("News").await.unwrap();
    held.push(log_in(&stack, &news, "judy", Consent::default()).await);
    held.push(log_in(&stack, &news, "ken", identifier_tokens()).await);
    for login in &mut held {
        rotate(&stack, login).await;
    }
    wait_sync_failing(&stack).await;
    assert_eq!(stack.authlete.authlete.clients().len(), 1);

    // Back, but answering 500 to a third of the calls.
    stack.authlete.authlete.knobs().set_down(false);
    stack.authlete.authlete.knobs().set_error_rate(0.3);
    held.push(log_in(&stack, &shop, "leo", Consent::default()).await);
    for login in &mut held {
        rotate(&stack, login).await;
    }
    stack.authlete.authlete.knobs().set_error_rate(0.0);
    stack.wait_synced().await;
    assert_no_dead_letters(&stack).await;
    assert_authlete_holds_exactly(&stack, &[shop, news], &held).await;
}

// ---- 6. tokens file ----

async fn a_tokens_file_of_5_000_tokens_backfills_every_token_and_verify_reports_no_drift(
    version: Version,
) {
    tokens_file_backfill(version, 5_000).await;
}

async fn a_tokens_file_of_100_000_tokens_backfills_every_token_and_verify_reports_no_drift(
    version: Version,
) {
    tokens_file_backfill(version, 100_000).await;
}

/// Records per dataset pre-loaded on the source for the tokens-file tests.
const SEED: usize = 40;
/// Lines of the tokens file whose tokens have all expired.
const EXPIRED_LINES: usize = 10;

/// The source holds [`SEED`] clients and long-lived authorizations; the
/// backfill copies them; then a tokens file of `tokens` live token pairs of
/// those clients (plus [`EXPIRED_LINES`] expired ones) is uploaded through
/// the admin API as `handover backfill --tokens-file` does.
async fn tokens_file_backfill(version: Version, tokens: usize) {
    // The lenient reading of the source: its exports' refresh tokens equal
    // what the clients hold (a deterministic nonce), which the checks of
    // the exported values below rely on. The real reading (a random nonce,
    // exported values that no client holds) is the subject of the
    // live-sample tests of `authlete_verify.rs`.
    let stack = AuthleteStack::start_with(
        version,
        AuthleteSetup {
            seed: SEED,
            source: handover::emulator::connect2id::Strictness::lenient(),
            ..AuthleteSetup::default()
        },
        |_| {},
    )
    .await;
    let admin = stack.admin();
    support::cutover::finish_backfill(&admin).await;
    stack.wait_synced().await;
    let clients: Vec<String> = stack
        .source_emulator()
        .clients()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(clients.len(), SEED);
    let before = stack.authlete.authlete.token_count();
    assert!(
        before > 0,
        "the backfill copied the records' refresh tokens"
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let line = |index: usize, expires_at: u64| {
        json!({
            "client_id": clients[index % clients.len()],
            "subject": format!("file-user-{index}"),
            "scopes": SCOPES,
            "grant_type": "authorization_code",
            "access_token": format!("tf-at-{index}-{}", fastrand::u64(..)),
            "access_token_expires_at": expires_at,
            "refresh_token": format!("tf-rt-{index}-{}", fastrand::u64(..)),
            "refresh_token_expires_at": expires_at + 86_400,
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut lines = Vec::with_capacity(tokens);
    for index in 0..tokens {
        let line = line(index, now + 3_600);
        writeln!(file, "{line}").unwrap();
        lines.push(line);
    }
    for index in tokens..tokens + EXPIRED_LINES {
        writeln!(file, "{}", line(index, now - 86_400 * 2)).unwrap();
    }
    file.flush().unwrap();
    drop(file);

    let started = Instant::now();
    let report = admin.upload_tokens(&path).await.unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "tokens file ({version:?}): {tokens} tokens in {:.2}s = {:.0} records/s (the proxy counted {:.0} tokens/s)",
        elapsed.as_secs_f64(),
        tokens as f64 / elapsed.as_secs_f64(),
        report.rate
    );
    assert_eq!(report.lines, (tokens + EXPIRED_LINES) as u64, "{report:?}");
    assert_eq!(report.created, tokens as u64, "{report:?}");
    assert_eq!(report.expired, EXPIRED_LINES as u64, "{report:?}");
    assert_eq!(report.invalid, 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(stack.authlete.authlete.token_count(), before + tokens);

    // A sample, through the API: each pair usable for its subject, scopes
    // and client, with its expiry.
    for line in lines.iter().step_by((tokens / 40).max(1)) {
        let access = line["access_token"].as_str().unwrap();
        let info = stack.authlete.introspect_in(version, access).await;
        assert_eq!(info.action(), "OK", "{info:?}");
        assert_eq!(info.body["subject"], line["subject"]);
        assert_eq!(info.body["clientIdAlias"], line["client_id"]);
        assert_eq!(info.body["scopes"], json!(SCOPES));
        let expires_at = info.body["expiresAt"].as_i64().unwrap();
        let wanted = line["access_token_expires_at"].as_i64().unwrap() * 1000;
        assert!(
            (expires_at - wanted).abs() < 60_000,
            "{expires_at} vs {wanted}"
        );
        let refresh = stack
            .authlete
            .introspect_refresh_in(version, line["refresh_token"].as_str().unwrap())
            .await;
        assert_eq!(refresh["active"], true, "{refresh}");
        assert_eq!(refresh["sub"], line["subject"]);
    }
    // Nothing of the expired lines was created.
    assert!(
        stack
            .authlete
            .authlete
            .tokens()
            .iter()
            .all(|t| t.subject.as_deref() != Some(&format!("file-user-{tokens}")))
    );

    let verify = admin
        .verify(&handover::api::VerifyRequest::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(
        verify.drift,
        0,
        "{}",
        serde_json::to_string_pretty(&verify).unwrap()
    );
    assert_eq!(verify.datasets["clients"].matching, SEED as u64);
    // The exported values (deterministic here) are all at Authlete; no
    // refresh passed the proxy, so what clients hold is not measured.
    let samples = verify.datasets["tokens"].samples.unwrap();
    assert!(samples.exported.sampled > 0, "{verify:?}");
    assert_eq!(samples.exported.accepted, samples.exported.sampled);
    assert_eq!(samples.live.sampled, 0);
    assert!(
        !verify.passed() && verify.not_measured.len() == 1,
        "{verify:?}"
    );
    assert_no_dead_letters(&stack).await;
}

// ---- the v3 token batch: asynchronous, polled with back-off ---------------
//
// Authlete runs a batch in the background (spec §5.2). These runs give the
// tokens-file import (`backfill::import_tokens`, what `POST
// /backfill/tokens` runs) an emulator whose batches stay in progress for
// the invented `REAL_BATCH_DURATION` (a second for 500 tokens), and count
// at the emulator what the client sent: the status looks of a batch, and
// whether it fell back to creating tokens one by one.

/// An emulated v3 service with one client (`shop`), read as `strictness`.
async fn batch_service(
    strictness: handover::emulator::authlete::Strictness,
) -> support::authlete::Emulator {
    let emulator = support::authlete::start(handover::emulator::authlete::Config {
        strictness,
        ..support::authlete::config()
    })
    .await;
    emulator
        .create_client(Version::V3, json!({"clientIdAlias": "shop"}))
        .await;
    emulator
}

/// Imports `tokens` live token pairs of `shop` through the v3 API client
/// the proxy builds, the way `POST /backfill/tokens` does.
async fn import_into(
    emulator: &support::authlete::Emulator,
    tokens: usize,
) -> handover::api::TokenImport {
    let url = handover::model::BaseUrl::parse(&emulator.handle.url()).unwrap();
    let upstream = handover::upstream::Upstream::new(
        handover::model::Side::Target,
        &url,
        None,
        handover::upstream::Protocol::Http1,
        &handover::upstream::Config::default(),
        &handover::metrics::Metrics::new(),
    )
    .unwrap();
    let api = handover::servers::authlete::Authlete::new(
        std::sync::Arc::new(upstream),
        support::stack::proxy_authlete_config(emulator, Version::V3),
        Duration::from_secs(10),
    );
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3_600;
    let mut file = String::new();
    for index in 0..tokens {
        let line = json!({
            "client_id": "shop",
            "subject": format!("batch-user-{index}"),
            "scopes": ["openid"],
            "access_token": format!("batch-at-{index}-{}", fastrand::u64(..)),
            "access_token_expires_at": expires,
            "refresh_token": format!("batch-rt-{index}-{}", fastrand::u64(..)),
            "refresh_token_expires_at": expires + 86_400,
        });
        file.push_str(&line.to_string());
        file.push('\n');
    }
    handover::backfill::import_tokens(std::sync::Arc::new(api), Full::new(Bytes::from(file)))
        .await
        .unwrap()
}

/// What the emulator saw of the import's token calls.
#[derive(Debug, Default)]
struct BatchCalls {
    /// Batches accepted (`POST .../auth/token/create/batch` answered 2xx).
    accepted: usize,
    /// Looks at a batch's status, whatever the answer.
    looks: usize,
    /// Batch calls (submissions or looks) answered 429.
    refused: usize,
    /// Single creates: the fallback to one by one.
    single: usize,
}

fn batch_calls(emulator: &support::authlete::Emulator) -> BatchCalls {
    let mut calls = BatchCalls::default();
    for arrival in emulator.authlete.arrivals() {
        let ok = arrival.status.is_some_and(|s| s.is_success());
        let refused = arrival.status == Some(StatusCode::TOO_MANY_REQUESTS);
        if arrival.path.ends_with("/auth/token/create/batch") {
            calls.accepted += usize::from(ok);
            calls.refused += usize::from(refused);
        } else if arrival.path.contains("/auth/token/create/batch/status/") {
            calls.looks += 1;
            calls.refused += usize::from(refused);
        } else if arrival.path.ends_with("/auth/token/create") {
            calls.single += 1;
        }
    }
    calls
}

/// Every token of the import made it, none refused.
fn assert_all_created(
    emulator: &support::authlete::Emulator,
    report: &handover::api::TokenImport,
    tokens: usize,
) {
    assert_eq!(report.created, tokens as u64, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(emulator.authlete.token_count(), tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_a_batch_in_progress_for_a_second_is_looked_at_a_few_times_not_every_20_ms() {
    use handover::emulator::authlete::{Strictness, Switch};
    let mut strictness = Strictness::lenient();
    strictness.set(Switch::SlowBatch, true);
    let emulator = batch_service(strictness).await;
    let tokens = 2 * handover::backfill::TOKEN_BATCH;
    let report = import_into(&emulator, tokens).await;
    assert_all_created(&emulator, &report, tokens);
    let calls = batch_calls(&emulator);
    assert_eq!(calls.accepted, 2, "{calls:?}");
    assert_eq!(calls.single, 0, "no fallback to one by one: {calls:?}");
    // Each batch is in progress for a second: looked at right away, then
    // after 0.5 s and 1.5 s (a tight 20 ms loop: ~50 looks a batch). The
    // bound leaves room for a slow machine.
    assert!(
        calls.looks >= 2 && calls.looks <= 2 * 5,
        "status looks for 2 batches: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_the_real_readings_rate_limit_does_not_turn_batches_into_one_by_one_creation() {
    let emulator = batch_service(handover::emulator::authlete::Strictness::real()).await;
    // As many batches as the import runs at once: a client polling each
    // every 20 ms meets the 50 requests/s cap and falls back.
    let tokens = handover::backfill::TOKEN_BATCHES_IN_FLIGHT * handover::backfill::TOKEN_BATCH;
    let report = import_into(&emulator, tokens).await;
    assert_all_created(&emulator, &report, tokens);
    let calls = batch_calls(&emulator);
    assert_eq!(
        calls.accepted,
        handover::backfill::TOKEN_BATCHES_IN_FLIGHT,
        "{calls:?}"
    );
    assert_eq!(calls.single, 0, "no fallback to one by one: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_a_429_on_a_batch_call_is_waited_out_instead_of_creating_one_by_one() {
    use handover::emulator::authlete::{RateLimit, Strictness};
    // A cap so low that four batches' submissions and first looks cannot
    // all pass in one window: some batch call meets a 429.
    let emulator = batch_service(Strictness {
        rate_limit: Some(RateLimit {
            requests: 3,
            per: Duration::from_secs(1),
        }),
        ..Strictness::real()
    })
    .await;
    let tokens = handover::backfill::TOKEN_BATCHES_IN_FLIGHT * handover::backfill::TOKEN_BATCH;
    let report = import_into(&emulator, tokens).await;
    assert_all_created(&emulator, &report, tokens);
    let calls = batch_calls(&emulator);
    assert!(calls.refused > 0, "the cap was met: {calls:?}");
    assert_eq!(
        calls.accepted,
        handover::backfill::TOKEN_BATCHES_IN_FLIGHT,
        "{calls:?}"
    );
    assert_eq!(calls.single, 0, "no fallback to one by one: {calls:?}");
}
