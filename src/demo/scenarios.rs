//! The demo's scenarios that only the real server's behaviour exposes
//! (issue 12), each counted in the summary:
//!
//! - **SSO-only users.** Users who logged in once and come back only
//!   through single sign-on (`POST /authz-sessions/rest/v3` with their
//!   session): each visit moves the session's idle timer on the source.
//!   The servers' clocks are moved forward past the target's idle limit
//!   (a short `maxIdleTime`) before the flip, and once more after it: a
//!   session the target had not kept alive is gone there, and its user
//!   would have to log in again.
//! - **Revoked self-contained refresh tokens.** Revoked through the proxy
//!   before the flip; a self-contained token leaves only an entry in the
//!   source's revocation journal. After the flip the new primary must still
//!   refuse them.
//! - **Self-managing clients** (RFC 7592): after the flip each updates its
//!   own registration through the proxy with the registration access token
//!   the *source* gave it.

use std::time::Duration;

use serde_json::Value;

use super::traffic::AdminProbe;
use crate::emulator::connect2id::Connect2id;
use crate::emulator::driver::{Consent, Driver, RegisteredClient};

/// SSO-only users.
const SSO_USERS: usize = 40;
/// Revoked self-contained refresh tokens.
const REVOKED_TOKENS: usize = 12;
/// Self-managing clients.
const SELF_MANAGING_CLIENTS: usize = 3;

/// The servers' `sessionStore.maxIdleTime` in the demo, in minutes: short,
/// so that skipping the servers' clocks ahead makes sessions idle out.
pub(crate) const SESSION_MAX_IDLE_MINUTES: i64 = 5;

/// How far the clocks move between two SSO visits: more than half the idle
/// limit, so two steps without a visit the target saw end a session there.
const VISIT_EVERY: Duration = Duration::from_secs(170);

/// What the scenarios set up before the flip.
#[derive(Debug)]
pub(crate) struct Prepared {
    sso_client: RegisteredClient,
    sso_sessions: Vec<String>,
    revoked: Vec<(RegisteredClient, String)>,
    self_managing: Vec<(RegisteredClient, String)>,
}

/// The scenarios' outcome, counted after the flip.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// SSO-only users whose session the new primary still had.
    pub sso_kept: usize,
    /// SSO-only users.
    pub sso_users: usize,
    /// Revoked refresh tokens the new primary refused.
    pub still_revoked: usize,
    /// Revoked refresh tokens.
    pub revoked: usize,
    /// Self-managing clients whose update through the proxy succeeded.
    pub self_updated: usize,
    /// Self-managing clients.
    pub self_managing: usize,
}

impl Counts {
    /// Whether every scenario kept every user, token and client.
    pub fn all_kept(&self) -> bool {
        self.sso_kept == self.sso_users
            && self.still_revoked == self.revoked
            && self.self_updated == self.self_managing
    }
}

/// Sets the scenarios up through the proxy (`via_proxy`) before the
/// traffic: logins, revocations, registrations; then two rounds of SSO
/// visits, each after the clocks moved on by [`VISIT_EVERY`].
pub(crate) async fn prepare(
    via_proxy: &Driver,
    admin: &AdminProbe,
    servers: [&Connect2id; 2],
) -> Result<Prepared, String> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |err: crate::emulator::driver::Error| format!("{what}: {err}")
    };
    let sso_client = via_proxy
        .register_client("SSO portal")
        .await
        .map_err(failed("register the SSO client"))?;
    let mut sso_sessions = Vec::with_capacity(SSO_USERS);
    for n in 0..SSO_USERS {
        let login = via_proxy
            .login(&sso_client.id, &format!("sso-user-{n}"), Consent::default())
            .await
            .map_err(failed("log an SSO user in"))?;
        sso_sessions.push(login.sid);
    }

    let revoking = via_proxy
        .register_client("Revoking app")
        .await
        .map_err(failed("register the revoking client"))?;
    let transient = Consent {
        long_lived: false,
        rotate: false,
        jwt_access_token: true,
    };
    let mut revoked = Vec::with_capacity(REVOKED_TOKENS);
    for n in 0..REVOKED_TOKENS {
        let login = via_proxy
            .login(&revoking.id, &format!("revoked-user-{n}"), transient)
            .await
            .map_err(failed("log a user in"))?;
        let tokens = via_proxy
            .exchange_code(&revoking, &login.code)
            .await
            .map_err(failed("redeem a code"))?;
        let refresh = tokens
            .refresh_token
            .ok_or("a transient consent issued no refresh token")?;
        via_proxy
            .revoke(&revoking, &refresh, "refresh_token")
            .await
            .map_err(failed("revoke a refresh token"))?;
        revoked.push((revoking.clone(), refresh));
    }

    let mut self_managing = Vec::with_capacity(SELF_MANAGING_CLIENTS);
    for n in 0..SELF_MANAGING_CLIENTS {
        let client = via_proxy
            .register_client(&format!("Self-managing app {n}"))
            .await
            .map_err(failed("register a self-managing client"))?;
        let token = client
            .record
            .get("registration_access_token")
            .and_then(Value::as_str)
            .ok_or("a registration answered no registration access token")?
            .to_owned();
        self_managing.push((client, token));
    }
    admin.wait_drained(Duration::from_secs(30)).await;

    let prepared = Prepared {
        sso_client,
        sso_sessions,
        revoked,
        self_managing,
    };
    // Two visits, the clocks moving on before each: the second comes more
    // than the idle limit after the logins.
    for _ in 0..2 {
        advance(servers, VISIT_EVERY);
        let kept = visit(via_proxy, &prepared).await;
        if kept < prepared.sso_sessions.len() {
            return Err(format!(
                "{kept} of {} SSO users found their session at the source",
                prepared.sso_sessions.len()
            ));
        }
        admin.wait_drained(Duration::from_secs(30)).await;
    }
    Ok(prepared)
}

/// After the flip: one more SSO visit (the clocks moved on again), each
/// revoked token tried, each self-managing client updating itself, all
/// through the proxy (to the new primary).
pub(crate) async fn count(
    via_proxy: &Driver,
    servers: [&Connect2id; 2],
    prepared: &Prepared,
) -> Counts {
    advance(servers, VISIT_EVERY);
    let sso_kept = visit(via_proxy, prepared).await;
    let mut still_revoked = 0;
    for (client, refresh) in &prepared.revoked {
        let refused = via_proxy
            .refresh(client, refresh)
            .await
            .err()
            .and_then(|err| err.status());
        if refused == Some(400) {
            still_revoked += 1;
        }
    }
    let mut self_updated = 0;
    for (n, (client, token)) in prepared.self_managing.iter().enumerate() {
        let name = format!("Self-managing app {n}, updated after the flip");
        if via_proxy
            .update_own_registration(client, token, &name)
            .await
            .is_ok()
        {
            self_updated += 1;
        }
    }
    Counts {
        sso_kept,
        sso_users: prepared.sso_sessions.len(),
        still_revoked,
        revoked: prepared.revoked.len(),
        self_updated,
        self_managing: prepared.self_managing.len(),
    }
}

/// Every SSO user comes back; returns how many found their session (the
/// server went on to consent instead of asking them to log in).
async fn visit(via_proxy: &Driver, prepared: &Prepared) -> usize {
    let mut kept = 0;
    for sid in &prepared.sso_sessions {
        let answer = via_proxy.sso_start(&prepared.sso_client.id, sid).await;
        let prompt = answer
            .as_ref()
            .ok()
            .and_then(|v| v.get("type"))
            .and_then(Value::as_str);
        if matches!(prompt, Some("consent" | "response")) {
            kept += 1;
        }
    }
    kept
}

/// Moves both servers' clocks on together, as two servers' wall clocks do.
fn advance(servers: [&Connect2id; 2], by: Duration) {
    for server in servers {
        server.advance_clock(by);
    }
}
