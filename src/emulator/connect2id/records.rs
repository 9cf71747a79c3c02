//! The records of the emulated server's authz store and session store, as
//! stored: shared by the store and by the seeder that generates them, so
//! that neither imports the other.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A long-lived authorization with the authz-store short field names.
/// Every field but `sub` and `cid` is optional so that an imported record
/// is stored exactly as given; unknown fields are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Authorization {
    /// Subject.
    pub(crate) sub: String,
    /// Client ID.
    pub(crate) cid: String,
    /// Actor (token exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) act: Option<String>,
    /// Consented scope values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scp: Option<Vec<String>>,
    /// Consented claim names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) clm: Option<Vec<String>>,
    /// Issue time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iat: Option<u64>,
    /// Last update time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) uat: Option<u64>,
    /// Expiry of the authorization itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) exp: Option<u64>,
    /// Access token audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) aud: Option<Vec<String>>,
    /// Whether refresh tokens are issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) irt: Option<bool>,
    /// Refresh token lifetime in seconds relative to `rti` (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rtl: Option<i64>,
    /// Refresh token issue time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rti: Option<u64>,
    /// Whether refresh tokens rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rtr: Option<bool>,
    /// Refresh token maximum idle time in seconds (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rtm: Option<i64>,
    /// Whether ID tokens may be refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idr: Option<bool>,
    /// Refresh token material: the current refresh token is rebuilt from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rts: Option<String>,
    /// Access token encoding (`SELF_CONTAINED` or `IDENTIFIER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ate: Option<String>,
    /// Access token lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) atl: Option<i64>,
    /// Access token subject type (`PUBLIC` or `PAIRWISE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ats: Option<String>,
    /// Custom authorization data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dat: Option<Value>,
    /// Claims data for claims sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cld: Option<Value>,
    /// Fields this emulator does not interpret, kept as given.
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

impl Authorization {
    /// Parses stored JSON text.
    pub(super) fn from_stored(text: &str) -> Self {
        serde_json::from_str(text).expect("stored authorizations are serialised by this module")
    }

    /// The compact JSON text stored for this record.
    pub(super) fn to_stored(&self) -> Box<str> {
        serde_json::to_string(self)
            .expect("serialising an authorization cannot fail")
            .into_boxed_str()
    }
}

/// A subject (end-user) session. Times are epoch seconds, lifetimes are
/// minutes (`-1`: unlimited). Unknown fields are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Session {
    /// Subject.
    pub(crate) sub: String,
    /// Context (`web`, `NCG`, `NIA` or custom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ctx: Option<String>,
    /// Authentication context class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) acr: Option<String>,
    /// Authentication methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) amr: Option<Vec<String>>,
    /// Authentication time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth_time: Option<u64>,
    /// Creation time, kept on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) creation_time: Option<u64>,
    /// Last use, which drives the idle expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_used: Option<u64>,
    /// Maximum lifetime in minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_life: Option<i64>,
    /// Authentication lifetime in minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth_life: Option<i64>,
    /// Maximum idle time in minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_idle: Option<i64>,
    /// Subject claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) claims: Option<Value>,
    /// Free-form data of the login page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Value>,
    /// User-agent fingerprint, immutable after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fpt: Option<String>,
    /// JWK thumbprint binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jkt: Option<String>,
    /// Fields this emulator does not interpret, kept as given.
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

impl Session {
    /// Parses stored JSON text.
    pub(super) fn from_stored(text: &str) -> Self {
        serde_json::from_str(text).expect("stored sessions are serialised by this module")
    }

    /// The compact JSON text stored for this session.
    pub(super) fn to_stored(&self) -> Box<str> {
        serde_json::to_string(self)
            .expect("serialising a session cannot fail")
            .into_boxed_str()
    }

    /// Whether the session has ended by its maximum lifetime or idle time.
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        let past = |start: Option<u64>, minutes: Option<i64>| match (start, minutes) {
            (Some(start), Some(minutes)) if minutes > 0 => {
                now >= start.saturating_add(minutes.unsigned_abs() * 60)
            }
            _ => false,
        };
        past(self.creation_time, self.max_life)
            || past(self.last_used.or(self.creation_time), self.max_idle)
    }

    /// Whether the authentication is too old to be reused for a login.
    pub(crate) fn is_auth_expired(&self, now: u64) -> bool {
        match (self.auth_time, self.auth_life) {
            (Some(start), Some(minutes)) if minutes > 0 => {
                now >= start.saturating_add(minutes.unsigned_abs() * 60)
            }
            _ => false,
        }
    }
}
