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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::model::{Change, Key};
use crate::servers::ApiError;
use crate::servers::Servers;
use crate::servers::connect2id::Connect2id;

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
}

impl Connect2idCopy {
    /// A copier between the two servers (whichever is primary at the time).
    pub fn new(servers: Arc<Servers>) -> Self {
        Self { servers }
    }

    async fn apply_change(&self, change: &Change) -> Result<Vec<Change>, ApiError> {
        let primary = self.servers.primary_api();
        let secondary = self.servers.secondary_api();
        match change {
            Change::Token { .. } => Ok(Vec::new()),
            Change::Sync { key, from } => {
                let read = from.unwrap_or_else(|| self.servers.primary_side());
                sync_key(self.servers.api(read), self.servers.api(read.other()), key).await?;
                Ok(Vec::new())
            }
            Change::SubjectSessions { subject } => {
                let mut sids: Vec<String> = primary
                    .subject_sessions(subject)
                    .await?
                    .into_keys()
                    .collect();
                sids.extend(secondary.subject_sessions(subject).await?.into_keys());
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
                let primary = from.map_or(primary, |side| self.servers.api(side));
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
        Box::pin(write_exported(self.servers.secondary_api(), key, record))
    }
}

/// Writes an exported record to the secondary with the import semantics,
/// trying the one-request import first (the usual case: the record is new)
/// and falling back to the full upsert when the secondary refuses it.
async fn write_exported(secondary: &Connect2id, key: &Key, record: &Value) -> Result<(), ApiError> {
    match key {
        Key::Client { .. } => match secondary.import_client(record).await {
            Err(ApiError::Rejected { .. }) => secondary.upsert_client(record).await,
            other => other,
        },
        Key::Authorization { .. } => secondary.import_authorization(record).await,
        Key::Session { sid } => match secondary.import_session(sid, record).await {
            Err(ApiError::Rejected { .. }) => secondary.upsert_session(sid, record).await,
            other => other,
        },
    }
}

/// Copies the current state of `key` from `primary` to `secondary`.
async fn sync_key(primary: &Connect2id, secondary: &Connect2id, key: &Key) -> Result<(), ApiError> {
    match key {
        Key::Client { client_id } => match primary.get_client(client_id).await? {
            Some(record) => secondary.upsert_client(&record).await,
            None => secondary.delete_client(client_id).await,
        },
        Key::Authorization { subject, client_id } => {
            match primary.get_authorization(subject, client_id).await? {
                Some(record) => secondary.import_authorization(&record).await,
                None => secondary.delete_authorization(subject, client_id).await,
            }
        }
        Key::Session { sid } => match primary.get_session(sid).await? {
            Some(session) => secondary.upsert_session(sid, &session).await,
            None => secondary.delete_session(sid).await,
        },
    }
}
