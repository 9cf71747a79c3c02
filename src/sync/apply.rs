//! What the sync does to the secondary, per kind of target: one [`Apply`]
//! chosen once in `app.rs`, so the engine (lanes, retries, the breaker)
//! never asks which kind of server it writes to.
//!
//! - [`Connect2idCopy`]: a Connect2id secondary gets the primary's current
//!   record by key, with the import semantics (same identifiers, secrets and
//!   token material), or a delete when the primary no longer has it. It
//!   works in both directions (the reverse sync after a cutover).
//! - `super::authlete::AuthleteApply`: an Authlete target gets clients and
//!   the token values the source issued; nothing flows back.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::model::{Change, Key, Side, Tenant};
use crate::servers::ApiError;
use crate::servers::Servers;
use crate::servers::connect2id::{ClientWrite, Connect2id, registration_access_token};
use crate::store::Registrations;

/// A boxed future, for the object-safe [`Apply`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Writes changes to the secondary. Implementations are stateless between
/// calls: the engine retries a failed attempt as a whole.
pub trait Apply: Send + Sync + std::fmt::Debug + 'static {
    /// One attempt at a change. Returns follow-up changes (a resolved
    /// token's authorization, a subject's sessions), which the engine puts
    /// in their own lanes.
    fn apply<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<Vec<Change>, ApiError>>;

    /// Writes a record the backfill exported from the primary.
    fn write_exported<'a>(
        &'a self,
        key: &'a Key,
        record: &'a Value,
    ) -> BoxFuture<'a, Result<(), ApiError>>;

    /// The server changes are written to now, whose concurrency limiter
    /// the engine's jobs take their permits from.
    fn secondary(&self) -> Side;

    /// Whether changes flow to the secondary now (nothing flows back to
    /// the source after a cutover to an Authlete-based server).
    fn is_active(&self) -> bool {
        true
    }

    /// Whether the secondary learns tokens only from their values, so the
    /// trigger hook must journal them ([`Change::Token`]).
    fn needs_token_values(&self) -> bool {
        false
    }
}

/// Copies Connect2id records from the primary to the secondary.
#[derive(Debug)]
pub struct Connect2idCopy {
    servers: Arc<Servers>,
    /// Each client's registration access token on each side, and when its
    /// secret last changed (what no record copy carries).
    registrations: Option<Arc<Registrations>>,
}

impl Connect2idCopy {
    /// A copier between the two servers (whichever is primary at the time).
    pub fn new(servers: Arc<Servers>) -> Self {
        Self {
            servers,
            registrations: None,
        }
    }

    /// Keeps `registrations` up to date with every client copied.
    pub fn with_registrations(mut self, registrations: Arc<Registrations>) -> Self {
        self.registrations = Some(registrations);
        self
    }

    /// Copies the current state of `key` from side `read` to the other.
    /// Returns follow-ups: the authorizations of a client the secondary
    /// replaced (a cascading delete may have removed them there).
    async fn sync_key(
        &self,
        read: Side,
        key: &Key,
        tenant: Option<&Tenant>,
    ) -> Result<Vec<Change>, ApiError> {
        let (from, to) = (self.api(read, tenant), self.api(read.other(), tenant));
        let (from, to) = (from.as_ref(), to.as_ref());
        let Key::Client { client_id } = key else {
            sync_key(from, to, key).await?;
            return Ok(Vec::new());
        };
        let Some(record) = from.get_client(client_id).await? else {
            to.delete_client(client_id).await?;
            self.forget_client(client_id).await?;
            return Ok(Vec::new());
        };
        let copied = to.upsert_client(&record).await?;
        self.remember_client(read, &record, &copied.copy, copied.secret_changed)
            .await?;
        if copied.write != ClientWrite::Replaced {
            return Ok(Vec::new());
        }
        let origin = (read != self.servers.primary_side()).then_some(read);
        Ok(from
            .list_authorizations(("client_id", client_id))
            .await?
            .iter()
            .filter_map(Key::of_authorization)
            .map(|key| Change::Sync { key, from: origin })
            .collect())
    }

    /// Records a client's registration access tokens as read on side
    /// `read` (`record`) and as written on the other (`copy`).
    async fn remember_client(
        &self,
        read: Side,
        record: &Value,
        copy: &Value,
        secret_changed: bool,
    ) -> Result<(), ApiError> {
        let Some(registrations) = &self.registrations else {
            return Ok(());
        };
        let Some(client_id) = record.get("client_id").and_then(Value::as_str) else {
            return Ok(());
        };
        let read_token = registration_access_token(record).map(str::to_owned);
        let written_token = registration_access_token(copy).map(str::to_owned);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        registrations
            .update(client_id, move |entry| {
                let (read_slot, written_slot) = match read {
                    Side::Source => (&mut entry.source, &mut entry.target),
                    Side::Target => (&mut entry.target, &mut entry.source),
                };
                if read_token.is_some() {
                    read_slot.clone_from(&read_token);
                }
                if written_token.is_some() {
                    written_slot.clone_from(&written_token);
                }
                if secret_changed {
                    entry.secret_changed_at = Some(now);
                }
            })
            .await
            .map_err(unpersisted)
    }

    async fn forget_client(&self, client_id: &str) -> Result<(), ApiError> {
        let Some(registrations) = &self.registrations else {
            return Ok(());
        };
        registrations.forget(client_id).await.map_err(unpersisted)
    }

    /// The management APIs of `side`, routed to `tenant`'s issuer.
    fn api(&self, side: Side, tenant: Option<&Tenant>) -> Cow<'_, Connect2id> {
        match tenant {
            None => Cow::Borrowed(self.servers.api(side)),
            Some(tenant) => Cow::Owned(self.servers.api(side).in_tenant(tenant)),
        }
    }

    /// Applies a change; a scoped one within its issuer, its follow-ups
    /// scoped alike.
    async fn apply_change(&self, change: &Change) -> Result<Vec<Change>, ApiError> {
        match change {
            Change::Scoped { tenant, inner } => Ok(self
                .apply_in(Some(tenant), inner)
                .await?
                .into_iter()
                .map(|follow_up| follow_up.scoped(Some(tenant.clone())))
                .collect()),
            change => self.apply_in(None, change).await,
        }
    }

    async fn apply_in(
        &self,
        tenant: Option<&Tenant>,
        change: &Change,
    ) -> Result<Vec<Change>, ApiError> {
        let primary = self.api(self.servers.primary_side(), tenant);
        let secondary = self.api(self.servers.primary_side().other(), tenant);
        let (primary, secondary) = (primary.as_ref(), secondary.as_ref());
        match change {
            // `Change::scoped` never nests scopes.
            Change::Scoped { .. } => Ok(Vec::new()),
            Change::Token { .. } => Ok(Vec::new()),
            Change::RevokeToken {
                form,
                authorization,
                ..
            } => {
                replay_revocation(secondary, form, authorization.as_deref()).await?;
                Ok(Vec::new())
            }
            Change::Sync { key, from } => {
                let read = from.unwrap_or_else(|| self.servers.primary_side());
                self.sync_key(read, key, tenant).await
            }
            Change::SubjectSessions { subject } => {
                // Independent reads: both at once.
                let (on_primary, on_secondary) = tokio::join!(
                    primary.subject_sessions(subject),
                    secondary.subject_sessions(subject)
                );
                let mut sids: Vec<String> = on_primary?.into_keys().collect();
                sids.extend(on_secondary?.into_keys());
                sids.sort();
                sids.dedup();
                Ok(sids
                    .into_iter()
                    .map(|sid| Change::sync(Key::Session { sid }))
                    .collect())
            }
            Change::Revocation {
                subject,
                client_id,
                actor,
                timestamp,
            } => {
                secondary
                    .revoke(
                        subject.as_deref(),
                        client_id.as_deref(),
                        actor.as_deref(),
                        *timestamp,
                    )
                    .await?;
                // The secondary removed every matching record, including any
                // the primary re-created since: re-read what the primary has.
                let records = match (subject, client_id) {
                    (Some(subject), Some(client_id)) => {
                        return Ok(vec![Change::sync(Key::Authorization {
                            subject: subject.clone(),
                            client_id: client_id.clone(),
                        })]);
                    }
                    (Some(subject), None) => {
                        primary.list_authorizations(("subject", subject)).await?
                    }
                    (None, Some(client_id)) => {
                        primary
                            .list_authorizations(("client_id", client_id))
                            .await?
                    }
                    (None, None) => Vec::new(),
                };
                Ok(records
                    .iter()
                    .filter_map(Key::of_authorization)
                    .map(Change::sync)
                    .collect())
            }
            Change::Resolve { token, kind, from } => {
                let read = from.map(|side| self.api(side, tenant));
                let primary = read.as_deref().unwrap_or(primary);
                let mut record = primary.inspect(token, *kind).await?;
                if record.is_none() {
                    // A token of the other kind than guessed.
                    record = primary.inspect(token, kind.other()).await?;
                }
                // No record: a transient authorization (nothing persisted)
                // or a token already gone.
                Ok(record
                    .as_ref()
                    .and_then(Key::of_authorization)
                    .map(|key| Change::Sync { key, from: *from })
                    .into_iter()
                    .collect())
            }
        }
    }
}

impl Apply for Connect2idCopy {
    fn apply<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<Vec<Change>, ApiError>> {
        Box::pin(self.apply_change(change))
    }

    fn write_exported<'a>(
        &'a self,
        key: &'a Key,
        record: &'a Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let secondary = self.servers.secondary_api();
            let Key::Client { .. } = key else {
                return write_exported(self.servers.primary_api(), secondary, key, record).await;
            };
            // The one-request import first (the usual case: the record is
            // new), the full upsert when the secondary refuses it.
            let (copy, secret_changed) = match secondary.import_client(record).await {
                Err(ApiError::Rejected { .. }) => {
                    let copied = secondary.upsert_client(record).await?;
                    (copied.copy, copied.secret_changed)
                }
                other => (other?, false),
            };
            self.remember_client(self.servers.primary_side(), record, &copy, secret_changed)
                .await
        })
    }

    fn secondary(&self) -> Side {
        self.servers.primary_side().other()
    }
}

/// Runs a registration-map write off the async threads (it fdatasyncs).
/// A registration map write that failed (the disk, or the shared store
/// unreachable) fails the sync job like a failed server call: the engine
/// retries it, reading the client again, so the credential is not lost.
fn unpersisted(err: crate::store::Error) -> ApiError {
    ApiError::Transient(format!("cannot persist the registration map: {err}"))
}

/// Replays a client's token revocation at the secondary. When the
/// secondary refuses the credentials the client revoked with, its secret
/// changed since (rotated on the primary and synced before the replay ran):
/// the revocation is replayed once more with the credentials the secondary
/// holds for that client now, so that the revoked token does not come back
/// to life there. A client that authenticates otherwise than with a secret
/// (`private_key_jwt`, mTLS) cannot be re-authenticated: that refusal stays.
async fn replay_revocation(
    secondary: &Connect2id,
    form: &str,
    authorization: Option<&str>,
) -> Result<(), ApiError> {
    let refused = match secondary.replay_revocation(form, authorization).await {
        Err(refused @ ApiError::Rejected { status: 401, .. }) => refused,
        other => return other,
    };
    let pairs = crate::http::form::parse(form);
    let mut headers = http::HeaderMap::new();
    if let Some(value) = authorization.and_then(|value| http::HeaderValue::from_str(value).ok()) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let Some(client_id) = crate::triggers::client_of(&headers, &pairs) else {
        return Err(refused);
    };
    let Some(secret) = secondary
        .get_client(&client_id)
        .await?
        .and_then(|record| record.get("client_secret")?.as_str().map(str::to_owned))
    else {
        return Err(refused);
    };
    let form = crate::http::form::encode(
        pairs
            .iter()
            .filter(|(name, _)| name != "client_secret" && name != "client_id")
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    let current = crate::http::form::basic_auth(&client_id, &secret);
    secondary.replay_revocation(&form, Some(&current)).await
}

/// Imports an authorization at the secondary. A server that checks the
/// client of an import refuses one whose client has not arrived yet
/// (domain-gaps Q1.13): clients and authorizations travel in different
/// lanes, and the backfill may reach an authorization before its client.
/// While the primary has the client, that refusal is a wait
/// ([`ApiError::Awaiting`], retried), not a dead letter; a refusal with the
/// client present on the secondary (or gone from the primary) is the
/// record's own.
async fn import_authorization(
    primary: &Connect2id,
    secondary: &Connect2id,
    client_id: &str,
    record: &Value,
) -> Result<(), ApiError> {
    match secondary.import_authorization(record).await {
        // The code a Connect2id answers for an unknown client elsewhere
        // (the direct authorization API); what an import answers is not
        // documented (README, "Known limits").
        Err(refused @ ApiError::Rejected { status: 400, .. }) if matches!(&refused, ApiError::Rejected { error, .. } if error.starts_with("invalid_client")) =>
        {
            if secondary.get_client(client_id).await?.is_some() {
                // The client may have arrived between the refusal and the
                // lookup (its own lane runs at the same time): once more
                // decides; a refusal now is the record's own.
                return secondary.import_authorization(record).await;
            }
            if primary.get_client(client_id).await?.is_none() {
                return Err(refused);
            }
            Err(ApiError::Awaiting(format!(
                "client {client_id} is not on the {} yet",
                secondary.server()
            )))
        }
        other => other,
    }
}

/// Writes an exported authorization or session to the secondary with the
/// import semantics, trying the one-request import first (the usual case:
/// the record is new) and falling back to the full upsert when the
/// secondary refuses it.
async fn write_exported(
    primary: &Connect2id,
    secondary: &Connect2id,
    key: &Key,
    record: &Value,
) -> Result<(), ApiError> {
    match key {
        Key::Client { .. } => Ok(()),
        Key::Authorization { client_id, .. } => {
            import_authorization(primary, secondary, client_id, record).await
        }
        Key::Session { sid } => match secondary.import_session(sid, record).await {
            Err(ApiError::Rejected { .. }) => secondary.upsert_session(sid, record).await,
            other => other,
        },
    }
}

/// Copies the current state of `key` from `primary` to `secondary`, in as
/// few round trips to the secondary as its API allows (README, "Round
/// trips per key"): authorizations are imported (an upsert by subject and
/// client) and sessions updated in place without reading the secondary
/// first; a client is read on both sides at once, because writing one is
/// not idempotent (an update may mint a secret, a re-create may revoke its
/// tokens), so an unchanged one is left alone.
async fn sync_key(primary: &Connect2id, secondary: &Connect2id, key: &Key) -> Result<(), ApiError> {
    match key {
        // Clients go through `Connect2idCopy::sync_key` (their credentials
        // are remembered on the way).
        Key::Client { .. } => Ok(()),
        Key::Authorization { subject, client_id } => {
            match primary.get_authorization(subject, client_id).await? {
                Some(record) => import_authorization(primary, secondary, client_id, &record).await,
                None => secondary.delete_authorization(subject, client_id).await,
            }
        }
        Key::Session { sid } => match primary.get_session(sid).await? {
            Some(session) => secondary.upsert_session(sid, &session).await,
            None => secondary.delete_session(sid).await,
        },
    }
}
