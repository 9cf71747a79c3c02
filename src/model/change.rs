//! The journal record: one change the sync must apply. Its JSON form is the
//! on-disk format of the journal and of the dead letters (pinned by
//! `tests/golden.rs`): extend it only with optional fields.

use serde::{Deserialize, Serialize};

use super::{Dataset, Key, Side, Tenant};

/// Which kind of token a [`Change::Resolve`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A refresh token.
    Refresh,
    /// An access token.
    Access,
}

impl TokenKind {
    /// The other kind: a token presented with the wrong hint is tried as
    /// the other kind.
    pub fn other(self) -> Self {
        match self {
            Self::Refresh => Self::Access,
            Self::Access => Self::Refresh,
        }
    }
}

/// One journaled change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// Copy the current state of a key from the primary (or from `from`).
    Sync {
        /// The key.
        key: Key,
        /// Read from this side instead of the primary: a record created
        /// on the previous primary right after a flip (see
        /// `cutover::procedure::DEFAULT_FALLBACK_WINDOW`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Side>,
    },
    /// Re-sync every session of a subject (after `DELETE ?subject=`).
    SubjectSessions {
        /// The subject.
        subject: String,
    },
    /// A revocation event, replayed with the primary's timestamp.
    Revocation {
        /// Revoked subject.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Revoked client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Revoked actor (token exchange).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// Epoch seconds: tokens issued before are revoked.
        timestamp: u64,
    },
    /// Create, rotate or revoke tokens at an Authlete target.
    Token {
        /// The event.
        event: TokenEvent,
    },
    /// A token revocation (`/token/revoke`) the primary answered, to be
    /// replayed at the secondary exactly as the client sent it. Used when
    /// no record resolves the token (a self-contained refresh token, a
    /// native SSO `device_secret`): the primary journaled a revocation that
    /// no export carries. The one exception to "never replay": a
    /// revocation mints nothing, and repeating it is harmless.
    RevokeToken {
        /// The client, as far as the request names it (lanes, logs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// The request's form body: the token, its hint, maybe the
        /// client's credentials. A secret: journaled encrypted, never
        /// logged.
        form: String,
        /// The request's `Authorization` header (the client's
        /// credentials), if it had one. A secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization: Option<String>,
    },
    /// A change made in one issuer of a server that routes by `Tenant-ID`
    /// or `Issuer` (multi-tenant edition, issuer aliases): applied with
    /// the same headers on both sides. Records without it are the default
    /// issuer's (every record written before this variant existed).
    Scoped {
        /// The routing headers the trigger carried.
        tenant: Tenant,
        /// The change, within that issuer (never itself scoped).
        inner: Box<Change>,
    },
    /// Find the authorization a token belongs to (at the primary), then
    /// copy it.
    Resolve {
        /// The token value (a secret: journaled encrypted, never logged).
        token: String,
        /// Refresh or access token.
        kind: TokenKind,
        /// Look the token up on this side instead of the primary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Side>,
    },
}

impl Change {
    /// The journal record body of this change (its JSON): the one encoder
    /// of the journal's and the dead letters' on-disk format.
    pub fn to_record(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a change serialises: plain strings and integers")
    }

    /// A change from a journal record body. Fails for a record written by
    /// another version of handover (or not a change at all).
    pub fn from_record(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// The dataset the change belongs to (what `sync.datasets` enables and
    /// metrics count it against).
    pub fn dataset(&self) -> Dataset {
        match self {
            Self::Sync { key, .. } => key.dataset(),
            Self::SubjectSessions { .. } => Dataset::Sessions,
            Self::Revocation { .. } | Self::RevokeToken { .. } | Self::Resolve { .. } => {
                Dataset::Authorizations
            }
            Self::Token { .. } => Dataset::Tokens,
            Self::Scoped { inner, .. } => inner.dataset(),
        }
    }

    /// The change within `tenant`'s issuer (`None`: the default issuer,
    /// the change as it is). A scoped change is re-scoped, never nested.
    pub fn scoped(self, tenant: Option<Tenant>) -> Self {
        match (tenant, self) {
            (None, change) => change,
            (Some(tenant), Self::Scoped { inner, .. }) => Self::Scoped { tenant, inner },
            (Some(tenant), change) => Self::Scoped {
                tenant,
                inner: Box::new(change),
            },
        }
    }

    /// A sync change for `key`.
    pub fn sync(key: Key) -> Self {
        Self::Sync { key, from: None }
    }

    /// The same change, reading from `side` rather than the primary.
    pub fn reading_from(self, side: Side) -> Self {
        match self {
            Self::Sync { key, .. } => Self::Sync {
                key,
                from: Some(side),
            },
            Self::Resolve { token, kind, .. } => Self::Resolve {
                token,
                kind,
                from: Some(side),
            },
            Self::Token { mut event } => {
                if let TokenEvent::Issued { issued_by, .. } = &mut event {
                    *issued_by = Some(side);
                }
                Self::Token { event }
            }
            Self::Scoped { tenant, inner } => Self::Scoped {
                tenant,
                inner: Box::new(inner.reading_from(side)),
            },
            other => other,
        }
    }

    /// A short description safe for logs.
    pub(crate) fn redacted(&self) -> String {
        match self {
            Self::Sync { key, .. } => key.redacted(),
            Self::SubjectSessions { subject } => format!("sessions of {subject}"),
            Self::Revocation {
                subject, client_id, ..
            } => format!(
                "revocation of {}|{}",
                subject.as_deref().unwrap_or("*"),
                client_id.as_deref().unwrap_or("*")
            ),
            Self::RevokeToken { client_id, .. } => format!(
                "token revocation by {}",
                client_id.as_deref().unwrap_or("*")
            ),
            Self::Resolve { kind, .. } => format!("{kind:?} token to resolve").to_lowercase(),
            Self::Scoped { tenant, inner } => {
                format!("{} in {}", inner.redacted(), tenant.label())
            }
            Self::Token { event } => match event {
                TokenEvent::Issued {
                    client_id,
                    grant_type,
                    ..
                } => format!("tokens issued to {client_id} ({grant_type})"),
                TokenEvent::Revoked { client_id, .. } => {
                    format!("tokens revoked at {}", client_id.as_deref().unwrap_or("*"))
                }
            },
        }
    }
}

/// A token event for an Authlete target: Authlete keeps tokens valid only if
/// told their exact values, so these are payload (journaled encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TokenEvent {
    /// A token response from the source.
    Issued {
        /// The OAuth grant type of the request.
        grant_type: String,
        /// The client.
        client_id: String,
        /// The subject, when readable from the access token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Granted scopes.
        #[serde(default)]
        scopes: Vec<String>,
        /// The access token.
        access_token: String,
        /// Its lifetime in seconds.
        #[serde(default)]
        expires_in: u64,
        /// A new refresh token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh_token: Option<String>,
        /// Its lifetime in seconds, when the source said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh_expires_in: Option<u64>,
        /// The refresh token this response replaced (a rotation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced_refresh: Option<String>,
        /// The refresh token the client presented and keeps: the refresh
        /// did not rotate it (Connect2id's default), so it appears in no
        /// response (or the response echoed it). Authlete may never have
        /// seen it (issued before the proxy came): it is created there with
        /// this response's access token, in place of the pair holding it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_refresh: Option<String>,
        /// Issued by this side when it was no longer primary: the old
        /// Connect2id answering a refresh (or a code) the new
        /// authorization server did not know, right after a cutover to an
        /// Authlete-based one. Created at Authlete although nothing else
        /// flows there any more, so that the next refresh works at the new
        /// server directly.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issued_by: Option<Side>,
        /// The client's own credentials as an `Authorization: Basic`
        /// value, to ask the source whose an identifier access token is
        /// (its introspection endpoint takes client authentication). A
        /// secret: journaled encrypted, never logged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_auth: Option<String>,
    },
    /// A revocation at the source.
    Revoked {
        /// The client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// The subject.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// The token the client revoked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
}

impl TokenEvent {
    /// The lane of the token family: a delete never overtakes the create it
    /// follows.
    pub(crate) fn family(&self) -> String {
        let (client, subject) = match self {
            Self::Issued {
                client_id, subject, ..
            } => (Some(client_id.as_str()), subject.as_deref()),
            Self::Revoked {
                client_id, subject, ..
            } => (client_id.as_deref(), subject.as_deref()),
        };
        match (client, subject) {
            (Some(client_id), Some(subject)) => Key::Authorization {
                subject: subject.to_owned(),
                client_id: client_id.to_owned(),
            }
            .identity(),
            (client, _) => format!("tokens:{}", client.unwrap_or("*")),
        }
    }
}
