//! How strictly the emulator reads Connect2id: one switch per behaviour in
//! which a real server may differ from the reading the emulator started
//! with, so that both readings stay testable.
//!
//! The emulator began as the reading most convenient for a proxy (the
//! *lenient* preset, [`Strictness::lenient`]). Reviewing it against the
//! Connect2id release notes 8.0–18.0 (cited *RN x.y*) and the connect2id.com
//! docs showed behaviours where a real server is harder on a migration:
//! randomised refresh-token encryption, idle-expiring SSO sessions, cascading
//! client deletes, and more. Each one is a field here, named after the real
//! server's configuration property where one exists. [`Strictness::real`]
//! turns every one on; where public material is silent, it takes the reading
//! most hostile to a proxy, and the field's doc says so.
//!
//! The default ([`Strictness::default`]) is the real server's behaviour
//! wherever it is known or the hostile reading is the safe assumption:
//! public keys only at `/jwks.json`, random-nonce refresh-token
//! encryption, SSO bumps last-used, sessions idle-expire, an import does
//! not keep a supplied last-used, a client delete cascades, an import for
//! an unknown client is refused, `/inspection` refuses access tokens
//! (`allowDirectInspection=false`), back-channel logout. It differs from
//! [`Strictness::real`] only where the real server's own default is off or
//! a version choice: native SSO stays off (its real default), and the
//! emulator serves the current API versions only. Tests of the other
//! reading select [`Strictness::lenient`] in-process
//! ([`crate::emulator::connect2id::Config::strictness`]), from the command
//! line (`handover emulate --kind connect2id --strictness lenient|real`,
//! `--switches JSON`) or at run time over `/_emulator/strictness`.
//!
//! A switch whose two presets agree (for example `default_rotate`, false in
//! both because false is the real default) is still a switch: it models a
//! deployment configured differently.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default maximum session idle time in minutes (`sessionStore.maxIdleTime`,
/// 14400 = 10 days since RN 14.0).
pub(crate) const DEFAULT_SESSION_MAX_IDLE_MINUTES: i64 = 14_400;

/// How often the real server purges expired sessions, in seconds
/// (`sessionStore.sessionMap.expirationInterval`, 600 000 ms since RN 14.7).
pub(crate) const REAL_SESSION_PURGE_INTERVAL_SECS: u64 = 600;

/// Lifetime of a pushed authorization request in seconds (`op.par.lifetime`,
/// 60 since RN 8.0).
pub(crate) const DEFAULT_PAR_LIFETIME_SECS: u64 = 60;

/// The server major version the strict preset plays: the last one that still
/// serves the pre-17.0 APIs, so a proxy in front of a *source* sees every
/// legacy write path.
pub(crate) const REAL_SERVER_VERSION: u16 = 16;

/// The behaviour switches. `Copy`, so a handler reads one consistent
/// snapshot per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strictness {
    /// Refresh tokens of long-lived authorizations are AES-GCM sealed with a
    /// **random** nonce, so the token a client receives, the `rft` of every
    /// export and every re-encryption differ as strings while all decrypt to
    /// the same record. Off: a nonce derived from the plaintext, so they are
    /// all equal. No configuration property: RN 14.0 (authz-store/203) says
    /// a record read by refresh token must echo the submitted token "instead
    /// of recreating it from the persisted `rts`", which only matters if the
    /// recreated value differs.
    pub random_refresh_token_nonce: bool,
    /// `authzStore.refreshToken.defaultRotate`: whether refresh tokens rotate
    /// when the consent, direct authorization or authz-store record does not
    /// say. The real default is false (RN 14.0) in both presets.
    pub default_rotate: bool,
    /// An SSO use of a session bumps its `last_used` (the idle timer): a
    /// `POST /authz-sessions/rest/v3` (or `/direct-authz`) carrying the
    /// session's `sub_sid` that finds it. RN 15.3 only says the update is
    /// skipped "where appropriate"; an SSO login is the session's main use,
    /// and a bump the proxy never sees is the hostile reading. `GET` of a
    /// session by SID bumps in both readings (unless
    /// `skip_last_used_update=true`, RN 15.3).
    pub sso_updates_last_used: bool,
    /// `POST /session-store/rest/v2/sessions` (including an import with
    /// `SID-Key`) ignores a supplied `last_used`: it becomes "now", like the
    /// other timestamps the server keeps itself. `creation_time` is still
    /// kept (6.5 migration guide).
    pub import_resets_last_used: bool,
    /// `sessionStore.maxIdleTime` in minutes: the idle limit of new sessions
    /// that do not state `max_idle`. Short values make idle expiry testable.
    pub session_max_idle_minutes: i64,
    /// `sessionStore.sessionMap.expirationInterval` in seconds: how often a
    /// background task purges expired sessions (and sends their back-channel
    /// logouts); 0 runs none. Expired sessions are also removed when touched
    /// and by `POST /session-store/rest/v2/purge`.
    pub session_purge_interval_secs: u64,
    /// `DELETE /clients/{id}` also deletes the client's long-lived
    /// authorizations and journals a revocation of the client at the delete
    /// time, so every token of the client issued until then is revoked,
    /// including records re-imported later with an older `rti`. The real
    /// behaviour is undocumented; this is the hostile reading (domain-gaps
    /// 1.2).
    pub client_delete_cascades: bool,
    /// `POST /authz-store/rest/v3/authorizations?import=true` for a client
    /// that is not registered is refused with `400 invalid_client` (the code
    /// the direct authorization API gives an unknown client). Undocumented;
    /// the hostile reading, since sync lanes may deliver the record first.
    pub import_requires_client: bool,
    /// `authzStore.accessToken.allowDirectInspection`: whether
    /// `/authz-store/rest/v3/inspection` accepts an access token. False is
    /// the real default since RN 14.0; then an `access_token` parameter, or a
    /// `token` that is not a refresh token, is refused with `400
    /// invalid_request` (the answer of a disabled feature is undocumented).
    pub allow_direct_inspection: bool,
    /// The server's major version, for the legacy API paths it serves.
    /// `None`: the emulator's own surface, current APIs only. `Some(v)`:
    /// `/authz-store/rest/v2` (still served by 18.x, JSP) and, below 17,
    /// `/authz-sessions/rest/v1`, `/authz-sessions/rest/v2` and
    /// `/direct-authz/rest/v1` (removed in RN 17.0). The legacy paths answer
    /// like their current versions: their older JSON shapes are not public.
    pub server_version: Option<u16>,
    /// `op.sso.nativeClientGroup.enable` (`op.sso.device.enable` before 18):
    /// OpenID Connect Native SSO (RN 16.0). A code grant whose scope has
    /// `openid` and `device_sso` opens a device session (ctx `NCG`, `device`
    /// before 18) and answers its `device_secret`; the refresh token is bound
    /// to it. Revoking the `device_secret` ends the session and disables the
    /// bound refresh tokens. The real default is false; the strict preset
    /// enables it because it creates state a proxy must carry.
    pub native_sso: bool,
    /// `op.reg.alwaysRefreshClientSecretOnUpdate`: every `PUT
    /// /clients/{id}` of a confidential client mints a new secret (true
    /// since RN 14.0). When false, only `refresh_client_secret: true` in the
    /// body does (RN 12.9).
    pub always_refresh_client_secret_on_update: bool,
    /// `op.reg.refreshAccessTokenOnUpdate`: every `PUT /clients/{id}` mints
    /// a new registration access token (true since RN 14.0). Only the
    /// current one is accepted on `/clients/{id}`.
    pub refresh_access_token_on_update: bool,
    /// Whether `preferred_client_secret` is honoured on `PUT /clients/{id}`
    /// with the master token. The docs name it for registration only; the
    /// hostile reading (false) leaves delete + create as the only way to set
    /// a target's secret.
    pub preferred_client_secret_on_update: bool,
    /// `op.reg.clientSecretLifetime` in seconds (0: secrets never expire,
    /// the real default since RN 14.0). A new secret's
    /// `client_secret_expires_at` is computed from it on registration,
    /// import and rotation; a supplied value is never carried over.
    pub client_secret_lifetime_secs: u64,
    /// `op.par.lifetime` in seconds: how long a pushed authorization
    /// request's `request_uri` is usable (single use since RN 12.18).
    pub par_lifetime_secs: u64,
    /// OpenID Connect back-channel logout: the relying parties that received
    /// an ID token in a session are recorded on it (member `rps`, name
    /// inferred, so it travels with an export), and when the session ends
    /// (deleted, logged out, closed by the quota, idle or lifetime expiry)
    /// each one with a `backchannel_logout_uri` is sent a logout token
    /// (RN 14.9, 15.6, 15.7). Discovery advertises it.
    pub backchannel_logout: bool,
    /// A refresh that does not rotate echoes the presented refresh token in
    /// its response (RFC 6749 §6 lets a server return it or not). Off: the
    /// response has no `refresh_token`. Undocumented for Connect2id; both
    /// presets leave it off, tests turn it on to prove a proxy keeps the
    /// echoed token instead of mistaking it for a new one.
    pub echo_kept_refresh_token: bool,
    /// Every authorization record read (the export, `GET`, the answer of a
    /// `PUT`) carries its refresh token as `rft`. The member name is
    /// inferred (spec §3.3) and RN 14.0 only says a record read *by*
    /// refresh token echoes it. Off: only `/inspection` by refresh token
    /// answers it, so an export carries no refresh-token value at all.
    /// Both presets leave it on (the emulator's reading so far); tests turn
    /// it off to prove a backfill does not claim copies it cannot make.
    pub records_carry_refresh_token: bool,
    /// `GET /session-store/rest/v2/sessions` with no selector answers every
    /// live session (the migration export, spec §6: per the migration
    /// guide, not re-read). Off: that `GET` is answered `404`, as by a
    /// server without the listing. Both presets leave it on (the only
    /// reading the public material gives); tests turn it off to prove a
    /// reader falls back where it can.
    pub session_export: bool,
}

impl Default for Strictness {
    /// The real server's behaviour (see the module doc): [`Strictness::real`]
    /// with native SSO off (the real default) and no legacy API versions.
    fn default() -> Self {
        Self {
            native_sso: false,
            server_version: None,
            ..Self::real()
        }
    }
}

impl Strictness {
    /// The reading the emulator started with, easiest on a proxy.
    pub const fn lenient() -> Self {
        Self {
            random_refresh_token_nonce: false,
            default_rotate: false,
            sso_updates_last_used: false,
            import_resets_last_used: false,
            session_max_idle_minutes: DEFAULT_SESSION_MAX_IDLE_MINUTES,
            session_purge_interval_secs: 0,
            client_delete_cascades: false,
            import_requires_client: false,
            allow_direct_inspection: true,
            server_version: None,
            native_sso: false,
            always_refresh_client_secret_on_update: true,
            refresh_access_token_on_update: true,
            preferred_client_secret_on_update: false,
            client_secret_lifetime_secs: 0,
            par_lifetime_secs: DEFAULT_PAR_LIFETIME_SECS,
            backchannel_logout: false,
            echo_kept_refresh_token: false,
            records_carry_refresh_token: true,
            session_export: true,
        }
    }

    /// Every strict behaviour on: the real server's defaults, and the
    /// reading most hostile to a proxy where the real behaviour is unknown.
    pub const fn real() -> Self {
        Self {
            random_refresh_token_nonce: true,
            default_rotate: false,
            sso_updates_last_used: true,
            import_resets_last_used: true,
            session_max_idle_minutes: DEFAULT_SESSION_MAX_IDLE_MINUTES,
            session_purge_interval_secs: REAL_SESSION_PURGE_INTERVAL_SECS,
            client_delete_cascades: true,
            import_requires_client: true,
            allow_direct_inspection: false,
            server_version: Some(REAL_SERVER_VERSION),
            native_sso: true,
            always_refresh_client_secret_on_update: true,
            refresh_access_token_on_update: true,
            preferred_client_secret_on_update: false,
            client_secret_lifetime_secs: 0,
            par_lifetime_secs: DEFAULT_PAR_LIFETIME_SECS,
            backchannel_logout: true,
            echo_kept_refresh_token: false,
            records_carry_refresh_token: true,
            session_export: true,
        }
    }

    /// A copy with some switches replaced by the members of a JSON object
    /// (as `--strictness` and `PUT /_emulator/strictness` take them).
    pub(crate) fn with_overrides(self, overrides: &Value) -> Result<Self, String> {
        let Value::Object(changes) = overrides else {
            return Err("the strictness overrides must be a JSON object".to_owned());
        };
        let mut merged = serde_json::to_value(self).map_err(|err| err.to_string())?;
        if let Value::Object(current) = &mut merged {
            for (name, value) in changes {
                if !current.contains_key(name) {
                    return Err(format!("unknown strictness switch {name:?}"));
                }
                current.insert(name.clone(), value.clone());
            }
        }
        let next: Self = serde_json::from_value(merged).map_err(|err| err.to_string())?;
        next.validate()?;
        Ok(next)
    }

    /// Checks the values that have a range.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.session_max_idle_minutes == 0 {
            return Err("session_max_idle_minutes must not be 0 (-1: unlimited)".to_owned());
        }
        if self.par_lifetime_secs == 0 {
            return Err("par_lifetime_secs must be positive".to_owned());
        }
        Ok(())
    }

    /// Whether `/authz-store/rest/v2` is served.
    pub(crate) fn serves_authz_store_v2(&self) -> bool {
        self.server_version.is_some()
    }

    /// Whether the APIs removed in 17.0 are served.
    pub(crate) fn serves_pre17_apis(&self) -> bool {
        self.server_version.is_some_and(|version| version < 17)
    }

    /// The `ctx` of a native SSO device session (`device` before 18.0).
    pub(crate) fn device_session_ctx(&self) -> &'static str {
        match self.server_version {
            Some(version) if version < 18 => "device",
            _ => "NCG",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn presets_differ_only_where_the_readings_differ() {
        let (lenient, real) = (Strictness::lenient(), Strictness::real());
        let default = Strictness::default();
        assert!(default.random_refresh_token_nonce && default.sso_updates_last_used);
        assert!(default.import_resets_last_used && default.client_delete_cascades);
        assert!(default.import_requires_client && !default.allow_direct_inspection);
        assert!(default.backchannel_logout && default.session_purge_interval_secs > 0);
        assert!(!default.native_sso && default.server_version.is_none());
        assert!(real.random_refresh_token_nonce && !lenient.random_refresh_token_nonce);
        assert!(!real.allow_direct_inspection && lenient.allow_direct_inspection);
        assert_eq!(real.default_rotate, lenient.default_rotate);
        assert!(real.serves_pre17_apis() && !lenient.serves_authz_store_v2());
        assert_eq!(real.device_session_ctx(), "device");
    }

    #[test]
    fn overrides_change_named_switches_only() {
        let changed = Strictness::lenient()
            .with_overrides(&json!({ "backchannel_logout": true, "server_version": 18 }))
            .unwrap();
        assert!(changed.backchannel_logout);
        assert!(changed.serves_authz_store_v2() && !changed.serves_pre17_apis());
        assert_eq!(changed.device_session_ctx(), "NCG");
        assert!(!changed.random_refresh_token_nonce);
        let err = Strictness::lenient()
            .with_overrides(&json!({ "no_such": true }))
            .unwrap_err();
        assert!(err.contains("no_such"), "{err}");
        assert!(
            Strictness::lenient()
                .with_overrides(&json!({ "session_max_idle_minutes": 0 }))
                .is_err()
        );
        assert!(Strictness::lenient().with_overrides(&json!([])).is_err());
    }
}
