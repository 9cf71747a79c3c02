//! The client credential map where the store keeps it: each client's RFC
//! 7592 registration access token on the source and on the target, and when
//! its secret last changed (see `journal::Registrations` for why they are
//! kept). The sync writes it, the proxy swaps a self-managing client's
//! token for the primary's from it, the cutover pre-flight counts recent
//! secret changes in it.
//!
//! One type, two backings, so no caller asks which store runs:
//!
//! - **local** (a local store, one instance): the encrypted log under the
//!   journal directory, as before.
//! - **shared** (a PostgreSQL store): the table `handover_registrations`,
//!   shared by the fleet. The sync of a client may run on one instance and
//!   the client's next `/clients/{id}` call reach another: every lookup
//!   reads the table, so an entry another instance wrote a moment ago is
//!   found and a token it replaced is never used. Tokens reach the database
//!   only sealed with the journal key, the client_id only as its tag.
//!   Updates are read-modify-write under the row's lock: instances updating
//!   different parts of one entry at once keep both. The instance also
//!   remembers in memory every entry it wrote or read, for one purpose
//!   only: when the database does not answer (or not within
//!   [`LOOKUP_TIMEOUT`]) a lookup falls back to that, so a client's call is
//!   never refused because of our store. Writes never fall back: a failed
//!   write fails the sync job, which retries it (the credential is read
//!   again from the servers then).
//!
//! An instance that switches from a local to a PostgreSQL store brings its
//! map along at start, like its journal's backlog: its entries are copied
//! to the table (an entry another instance already put there wins) and
//! removed from the local log.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::postgres::Postgres;
use super::{Error, Handle};
use crate::journal::{self, Cipher, ClientCredentials};

/// Longest wait for the shared map on a client's `/clients/{id}` call
/// before the swap falls back to what this instance knows: 2 s. A healthy
/// database answers such a primary-key read in well under a millisecond;
/// this bound only keeps an unreachable one (whose connection attempt
/// alone may take `[store] connect_timeout`) from holding the client's
/// registration call for long.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The client credential map. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Registrations {
    backing: Backing,
}

#[derive(Debug)]
enum Backing {
    Local(Arc<journal::Registrations>),
    Shared {
        store: Arc<Postgres>,
        /// Entries this instance wrote or read, for lookups while the
        /// database does not answer (memory only; never authoritative).
        known: Mutex<HashMap<String, ClientCredentials>>,
    },
}

impl Registrations {
    /// The map of `store`: the shared table of a PostgreSQL store (taking
    /// over the entries of the local log under `journal_dir`), or that
    /// local log for a local store or none.
    pub async fn open(
        store: Option<&Handle>,
        journal_dir: &Path,
        cipher: Cipher,
    ) -> Result<Self, Error> {
        let dir = journal_dir.to_owned();
        let local = tokio::task::spawn_blocking(move || journal::Registrations::open(&dir, cipher))
            .await
            .map_err(|_| Error::Closed)??;
        let local = Arc::new(local);
        let Some(Handle::Postgres(store)) = store else {
            return Ok(Self::local(local));
        };
        let entries = local.entries();
        if !entries.is_empty() {
            let inserted = store.adopt_registrations(&entries).await?;
            let moved: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            let log = Arc::clone(&local);
            tokio::task::spawn_blocking(move || {
                moved.iter().try_for_each(|client_id| log.forget(client_id))
            })
            .await
            .map_err(|_| Error::Closed)??;
            tracing::info!(
                clients = entries.len(),
                inserted,
                "moved the local registration map to the shared store"
            );
        }
        Ok(Self {
            backing: Backing::Shared {
                store: Arc::clone(store),
                known: Mutex::new(entries.into_iter().collect()),
            },
        })
    }

    /// A map on the local log `map` alone.
    pub fn local(map: Arc<journal::Registrations>) -> Self {
        Self {
            backing: Backing::Local(map),
        }
    }

    /// The credentials known for a client, as fresh as the store has them.
    /// Never fails: a shared map that does not answer within
    /// [`LOOKUP_TIMEOUT`] gives what this instance last wrote or read.
    pub async fn lookup(&self, client_id: &str) -> Option<ClientCredentials> {
        match &self.backing {
            Backing::Local(map) => map.get(client_id),
            Backing::Shared { store, known } => {
                let read = tokio::time::timeout(LOOKUP_TIMEOUT, store.registration(client_id))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Postgres {
                            op: "read registration",
                            message: format!("no answer within {LOOKUP_TIMEOUT:?}"),
                        })
                    });
                let mut known = lock(known);
                match read {
                    Ok(Some(entry)) => {
                        known.insert(client_id.to_owned(), entry.clone());
                        Some(entry)
                    }
                    Ok(None) => {
                        known.remove(client_id);
                        None
                    }
                    Err(err) => {
                        tracing::warn!(
                            error = %err,
                            "cannot read the shared registration map; using what this instance knows"
                        );
                        known.get(client_id).cloned()
                    }
                }
            }
        }
    }

    /// Changes a client's entry with `change` (starting from an empty one)
    /// and persists it. `change` may run more than once (on the entry as
    /// first read, then under the row's lock): it sets values, it does not
    /// count.
    pub async fn update(
        &self,
        client_id: &str,
        change: impl Fn(&mut ClientCredentials) + Send + 'static,
    ) -> Result<(), Error> {
        match &self.backing {
            Backing::Local(map) => {
                let (map, client_id) = (Arc::clone(map), client_id.to_owned());
                tokio::task::spawn_blocking(move || map.update(&client_id, change))
                    .await
                    .map_err(|_| Error::Closed)??;
            }
            Backing::Shared { store, known } => {
                let written = store.update_registration(client_id, change).await?;
                lock(known).insert(client_id.to_owned(), written);
            }
        }
        Ok(())
    }

    /// Forgets a client (deleted on both servers).
    pub async fn forget(&self, client_id: &str) -> Result<(), Error> {
        match &self.backing {
            Backing::Local(map) => {
                let (map, client_id) = (Arc::clone(map), client_id.to_owned());
                tokio::task::spawn_blocking(move || map.forget(&client_id))
                    .await
                    .map_err(|_| Error::Closed)??;
            }
            Backing::Shared { store, known } => {
                store.forget_registration(client_id).await?;
                lock(known).remove(client_id);
            }
        }
        Ok(())
    }

    /// How many clients' secrets changed at or after `since` (epoch s),
    /// fleet-wide, and the latest change seen.
    pub async fn secret_changes(&self, since: u64) -> Result<SecretChanges, Error> {
        match &self.backing {
            Backing::Local(map) => Ok(SecretChanges {
                since: map.secrets_changed_since(since) as u64,
                latest: map.latest_secret_change(),
            }),
            Backing::Shared { store, .. } => {
                let (count, latest) = store.secret_changes(since).await?;
                Ok(SecretChanges {
                    since: count,
                    latest,
                })
            }
        }
    }
}

/// Recent secret changes, as [`Registrations::secret_changes`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretChanges {
    /// Clients whose secret changed at or after the time asked about.
    pub since: u64,
    /// The latest change of any client's secret (epoch s).
    pub latest: Option<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
