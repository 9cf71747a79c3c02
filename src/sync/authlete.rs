//! The sync's write policy for an Authlete target (spec/authlete.md):
//! clients are copied with their Connect2id identifiers as aliases, and
//! tokens are created from the values the source issued (Authlete keeps a
//! token valid only if told its exact value), a rotation creating the new
//! pair before revoking the old. Authorization records and sessions have no
//! Authlete counterpart. Nothing flows back after a cutover.

use std::sync::Arc;

use serde_json::Value;

use super::apply::{Apply, BoxFuture};
use crate::model::{Change, Key, Side, TokenEvent, TokenKind};
use crate::servers::ApiError;
use crate::servers::Servers;
use crate::servers::authlete::{Authlete, TokenSpec, authlete_grant};
use crate::servers::connect2id::Connect2id;

/// Applies changes to an Authlete target, reading from the Connect2id
/// source.
#[derive(Debug)]
pub struct AuthleteApply {
    servers: Arc<Servers>,
    authlete: Arc<Authlete>,
}

impl AuthleteApply {
    /// The policy for `authlete`, the target of `servers`.
    pub fn new(servers: Arc<Servers>, authlete: Arc<Authlete>) -> Self {
        Self { servers, authlete }
    }
}

impl Apply for AuthleteApply {
    fn apply<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<Vec<Change>, ApiError>> {
        Box::pin(async move {
            let fallback_tokens = matches!(
                change,
                Change::Token {
                    event: TokenEvent::Issued {
                        issued_by: Some(Side::Source),
                        ..
                    }
                }
            );
            if !self.is_active() && !fallback_tokens {
                // After a cutover to an Authlete-based server nothing flows
                // back to the Connect2id source; only what the old server
                // issued in a fallback (a refresh the new server did not
                // know) still goes to Authlete.
                return Ok(Vec::new());
            }
            authlete_change(&self.authlete, self.servers.api(Side::Source), change).await
        })
    }

    fn write_exported<'a>(
        &'a self,
        key: &'a Key,
        record: &'a Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(write_exported_authlete(&self.authlete, key, record))
    }

    fn secondary(&self) -> Side {
        // Nothing flows back to the source: Authlete is the only server
        // this policy writes to.
        Side::Target
    }

    fn is_active(&self) -> bool {
        self.servers.syncs_to_authlete()
    }

    fn needs_token_values(&self) -> bool {
        true
    }
}

/// Applies a change to an Authlete target, reading from the Connect2id
/// `source` where the change names a key.
async fn authlete_change(
    authlete: &Authlete,
    source: &Connect2id,
    change: &Change,
) -> Result<Vec<Change>, ApiError> {
    match change {
        Change::Sync {
            key: Key::Client { client_id },
            ..
        } => match source.get_client(client_id).await? {
            Some(record) => {
                let outcome = authlete.upsert_client(&record).await?;
                if !outcome.unmapped.is_empty() {
                    tracing::info!(client = %client_id, unmapped = ?outcome.unmapped, "client copied to Authlete; these fields have no Authlete equivalent");
                }
                Ok(Vec::new())
            }
            None => authlete.delete_client(client_id).await.map(|()| Vec::new()),
        },
        Change::Token {
            event: event @ TokenEvent::Issued { .. },
        } => issue(authlete, source, event).await.map(|()| Vec::new()),
        Change::Token {
            event:
                TokenEvent::Revoked {
                    client_id,
                    subject,
                    token,
                },
        } => {
            if client_id.is_some() && subject.is_some() {
                // Connect2id revokes every token of the client for the subject.
                authlete
                    .revoke_grant(client_id.as_deref(), subject.as_deref())
                    .await?;
            } else if let Some(token) = token {
                // Which kind of token it is is unknown; both revocations
                // are independent: at once.
                let (refresh, access) = tokio::join!(
                    authlete.revoke_refresh_token(token),
                    authlete.revoke_access_token(token)
                );
                refresh?;
                access?;
            } else {
                authlete
                    .revoke_grant(client_id.as_deref(), subject.as_deref())
                    .await?;
            }
            Ok(Vec::new())
        }
        // One issuer of a multi-tenant source: read there; an Authlete
        // service is one issuer, so every tenant's clients and tokens land
        // in the one service configured (README, "Tenants").
        Change::Scoped { tenant, inner } => {
            let source = source.in_tenant(tenant);
            Box::pin(authlete_change(authlete, &source, inner)).await
        }
        // Authorization records and sessions have no Authlete counterpart.
        _ => Ok(Vec::new()),
    }
}

/// Creates at Authlete the tokens a source response issued.
///
/// - A new pair (a code exchange, a rotation, a direct authorization): the
///   pair is created, then the pair of the refresh token it replaced is
///   removed (create first: if that fails, the old pair still works).
/// - A refresh that kept its refresh token (no rotation, Connect2id's
///   default): the client holds a refresh token that appears in no
///   response and that Authlete may never have seen (issued before the
///   proxy came, or only in a backfilled form that differs). It is created
///   with the new access token, its subject, scopes and remaining lifetime
///   read from the source's record, in place of the pair that held it
///   (removed first: Authlete refuses a value it holds). Every refresh
///   token in use during mirroring reaches Authlete this way ("lazy
///   capture").
async fn issue(
    authlete: &Authlete,
    source: &Connect2id,
    event: &TokenEvent,
) -> Result<(), ApiError> {
    let TokenEvent::Issued {
        grant_type,
        client_id,
        subject,
        scopes,
        access_token,
        expires_in,
        refresh_token,
        refresh_expires_in,
        replaced_refresh,
        kept_refresh,
        client_auth,
        ..
    } = event
    else {
        return Ok(());
    };
    let grant = authlete_grant(grant_type);
    // The source's record of a kept refresh token: its remaining lifetime
    // is in no response.
    let kept_record = match kept_refresh {
        Some(kept) => source.inspect(kept, TokenKind::Refresh).await?,
        None => None,
    };
    let subject = match subject.clone().or_else(|| {
        kept_record
            .as_ref()
            .and_then(|r| r.get("sub").and_then(Value::as_str).map(str::to_owned))
    }) {
        Some(subject) => Some(subject),
        None if grant == "CLIENT_CREDENTIALS" => None,
        None => match resolve_subject(
            source,
            client_id,
            access_token,
            refresh_token
                .as_deref()
                .or(kept_refresh.as_deref())
                .or(replaced_refresh.as_deref()),
            client_auth.as_deref(),
        )
        .await?
        {
            Resolution::Subject(subject) => Some(subject),
            Resolution::Gone => {
                // Revoked at the source (or its client deleted) since it was
                // issued: nothing to create, and the pair it replaced (or
                // the one holding the kept token) is dead too.
                for old in [replaced_refresh, kept_refresh].into_iter().flatten() {
                    authlete.revoke_refresh_token(old).await?;
                }
                tracing::debug!(client_id = %client_id, "tokens no longer active at the source; not created");
                return Ok(());
            }
            Resolution::Unknown => {
                return Err(ApiError::Rejected {
                    server: crate::model::Side::Source,
                    operation: "inspection",
                    status: 404,
                    error: "the subject of an identifier access token could not be resolved (transient authorization, client not using a secret); Authlete needs it".to_owned(),
                });
            }
        },
    };
    let default_refresh = authlete.config().refresh_token_duration.as_secs();
    let refresh_token_duration = match (refresh_expires_in, &kept_record) {
        (Some(seconds), _) => *seconds,
        (None, Some(record)) => {
            crate::servers::authlete::remaining_refresh_lifetime(record, unix_now())
                .unwrap_or(Some(default_refresh))
                .unwrap_or(default_refresh)
        }
        (None, None) => default_refresh,
    };
    let spec = TokenSpec {
        grant_type: grant.to_owned(),
        client_id: client_id.clone(),
        subject,
        scopes: scopes.clone(),
        access_token: Some(access_token.clone()),
        access_token_duration: *expires_in,
        refresh_token: refresh_token.clone().or_else(|| kept_refresh.clone()),
        refresh_token_duration,
    };
    if let Some(kept) = kept_refresh {
        authlete.revoke_refresh_token(kept).await?;
    }
    if let Err(err) = authlete.create_token(&spec).await {
        // The client's own sync runs in another lane and may not have
        // reached Authlete yet (both waited out an outage, or a restart
        // handed them over together): v3 then refuses the token for good
        // ("client does not exist"), which used to dead-letter it. Retry
        // until the client is there, unless the source deleted it meanwhile
        // (its tokens are dead then) or Authlete can never hold it (its
        // tokens neither: dead-lettered with the client's reason, not
        // retried forever behind it).
        if authlete.client(client_id).await?.is_none() {
            let Some(record) = source.get_client(client_id).await? else {
                tracing::debug!(client_id = %client_id, "client deleted at the source; tokens not created");
                return Ok(());
            };
            crate::servers::authlete::storable(client_id, &record, authlete.config().api_version)?;
            return Err(ApiError::Transient(format!(
                "client {client_id} is not in Authlete yet"
            )));
        }
        if err.is_transient() {
            return Err(err);
        }
        // Refused, yet the client is there: it may have arrived between the
        // refusal and the lookup. Once more decides; a refusal now is the
        // token's own.
        authlete.create_token(&spec).await?;
    }
    if let Some(old) = replaced_refresh {
        authlete.revoke_refresh_token(old).await?;
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whose identifier access token is it, by the source's own account.
enum Resolution {
    Subject(String),
    /// The source no longer has the tokens (revoked, client deleted).
    Gone,
    /// The source could not say (no record, no client secret to ask with).
    Unknown,
}

/// Resolves the subject of an identifier access token at the source: the
/// long-lived authorization behind its refresh token, else its own record,
/// else the token introspection endpoint as the client (a transient
/// authorization has no record). The client may have rotated its secret
/// between the request and now; its current secret is then read from the
/// source's registration and the introspection asked once more.
async fn resolve_subject(
    source: &Connect2id,
    client_id: &str,
    access_token: &str,
    refresh_token: Option<&str>,
    client_auth: Option<&str>,
) -> Result<Resolution, ApiError> {
    for (token, kind) in [
        (refresh_token, TokenKind::Refresh),
        (Some(access_token), TokenKind::Access),
    ] {
        let Some(token) = token else { continue };
        if let Some(record) = source.inspect(token, kind).await?
            && let Some(subject) = record.get("sub").and_then(Value::as_str)
        {
            return Ok(Resolution::Subject(subject.to_owned()));
        }
    }
    let Some(auth) = client_auth else {
        return Ok(Resolution::Unknown);
    };
    let answer = match source.subject_via_introspection(access_token, auth).await {
        Err(ApiError::Rejected { status: 401, .. }) => {
            let Some(client) = source.get_client(client_id).await? else {
                return Ok(Resolution::Gone);
            };
            let Some(secret) = client.get("client_secret").and_then(Value::as_str) else {
                return Ok(Resolution::Unknown);
            };
            let auth = crate::http::form::basic_auth(client_id, secret);
            source
                .subject_via_introspection(access_token, &auth)
                .await?
        }
        other => other?,
    };
    Ok(answer.map_or(Resolution::Gone, Resolution::Subject))
}

/// Writes an exported record to an Authlete target: a client, or the
/// refresh token of a long-lived authorization record (`rft`, with
/// Authlete generating the access token, which nobody holds).
async fn write_exported_authlete(
    authlete: &Authlete,
    key: &Key,
    record: &Value,
) -> Result<(), ApiError> {
    match key {
        Key::Client { .. } => authlete.upsert_client(record).await.map(|_| ()),
        Key::Authorization { subject, client_id } => {
            match crate::servers::authlete::spec_of_record(record, authlete.config()) {
                Some(spec)
                    if spec.subject.as_deref() == Some(subject.as_str())
                        && spec.client_id == *client_id =>
                {
                    authlete.create_token(&spec).await
                }
                // No refresh token (or an expired one) in the record: nothing to copy.
                _ => Ok(()),
            }
        }
        Key::Session { .. } => Ok(()),
    }
}
