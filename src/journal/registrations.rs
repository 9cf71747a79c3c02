//! What each client's credentials are on each server, beyond what a record
//! copy can carry (domain-gaps Q1.3, Q1.4): its RFC 7592 registration
//! access token on the source and on the target (each server mints its
//! own; there is no import), and when its secret last changed (the previous
//! secret stays valid on the server that rotated it, and only there, for 30
//! minutes). The proxy swaps a self-managing client's token for the
//! primary's after a flip, as it does for management tokens.
//!
//! Built on the journal's [`SegmentStore`] in `<journal dir>/registrations/`,
//! so every entry is encrypted at rest (the tokens are bearer secrets) and
//! survives a torn tail. Each write appends the client's whole entry (or a
//! tombstone); the newest wins on recovery. When the log holds many more
//! entries than there are clients it is compacted: the live entries are
//! appended again and everything before them is dropped. Writes are rare
//! (client changes) and fdatasync'ed; calls block on disk I/O, so async
//! code calls them from `spawn_blocking`.
//!
//! This is the map of one instance (a local store). A fleet on a
//! PostgreSQL store shares one map in the database instead
//! (`store::Registrations`, which puts either behind one type); an instance
//! switched to it hands this log's entries over at start ([`Registrations::entries`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::cipher::Cipher;
use super::segment::SegmentStore;
use super::store::Store;
use super::{Entry, Error, Seq};

/// Subdirectory of the journal directory holding the map.
pub const REGISTRATIONS_DIR: &str = "registrations";

/// Segment size: 1 MiB (entries are a few hundred bytes).
const SEGMENT_BYTES: u64 = 1024 * 1024;

/// Entries beyond twice the live ones (plus this) trigger a compaction.
const COMPACTION_SLACK: usize = 1024;

/// One client's credentials as the servers issued them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredentials {
    /// The registration access token the source holds for the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The registration access token the target holds for the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// When the client's secret last changed (epoch seconds), as seen by
    /// the sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_changed_at: Option<u64>,
}

impl std::fmt::Debug for ClientCredentials {
    // Tokens are secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("source", &self.source.as_ref().map(|_| ".."))
            .field("target", &self.target.as_ref().map(|_| ".."))
            .field("secret_changed_at", &self.secret_changed_at)
            .finish()
    }
}

/// The persisted form of one log entry.
#[derive(Serialize, Deserialize)]
struct Record {
    client_id: String,
    /// `None`: the client is gone (a tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<ClientCredentials>,
}

#[derive(Debug)]
struct Inner {
    store: SegmentStore,
    clients: HashMap<String, ClientCredentials>,
    next_seq: Seq,
    /// Entries in the log since its cursor.
    logged: usize,
}

/// The client credential map.
#[derive(Debug)]
pub struct Registrations {
    inner: Mutex<Inner>,
}

impl Registrations {
    /// Opens (creating if needed) the map under `journal_dir`.
    pub fn open(journal_dir: &Path, cipher: Cipher) -> Result<Self, Error> {
        let dir = journal_dir.join(REGISTRATIONS_DIR);
        let mut store = SegmentStore::open(&dir, cipher, SEGMENT_BYTES)?;
        let recovery = store.recover()?;
        let mut clients = HashMap::new();
        let logged = recovery.entries.len();
        for entry in recovery.entries {
            let record: Record =
                serde_json::from_slice(&entry.body).map_err(|err| Error::Payload {
                    path: dir.clone(),
                    seq: entry.seq,
                    reason: if err.is_syntax() || err.is_eof() {
                        "registration entry is not JSON"
                    } else {
                        "registration entry has the wrong shape"
                    },
                })?;
            match record.credentials {
                Some(credentials) => clients.insert(record.client_id, credentials),
                None => clients.remove(&record.client_id),
            };
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                store,
                clients,
                next_seq: recovery.next_seq,
                logged,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The credentials known for a client.
    pub fn get(&self, client_id: &str) -> Option<ClientCredentials> {
        self.lock().clients.get(client_id).cloned()
    }

    /// Changes a client's entry with `change` (starting from an empty one)
    /// and persists it if it changed.
    pub fn update(
        &self,
        client_id: &str,
        change: impl FnOnce(&mut ClientCredentials),
    ) -> Result<(), Error> {
        let mut inner = self.lock();
        let current = inner.clients.get(client_id).cloned().unwrap_or_default();
        let mut next = current.clone();
        change(&mut next);
        if next == current && inner.clients.contains_key(client_id) {
            return Ok(());
        }
        append(&mut inner, client_id, Some(&next))?;
        inner.clients.insert(client_id.to_owned(), next);
        compact_if_due(&mut inner)
    }

    /// Forgets a client (deleted on both servers).
    pub fn forget(&self, client_id: &str) -> Result<(), Error> {
        let mut inner = self.lock();
        if !inner.clients.contains_key(client_id) {
            return Ok(());
        }
        append(&mut inner, client_id, None)?;
        inner.clients.remove(client_id);
        compact_if_due(&mut inner)
    }

    /// How many clients' secrets changed at or after `since` (epoch s).
    pub fn secrets_changed_since(&self, since: u64) -> usize {
        self.lock()
            .clients
            .values()
            .filter(|c| c.secret_changed_at.is_some_and(|at| at >= since))
            .count()
    }

    /// The latest secret change seen, if any.
    pub fn latest_secret_change(&self) -> Option<u64> {
        self.lock()
            .clients
            .values()
            .filter_map(|c| c.secret_changed_at)
            .max()
    }

    /// Every client's entry, in no particular order (a PostgreSQL store
    /// takes them over at start: `store::Registrations`).
    pub fn entries(&self) -> Vec<(String, ClientCredentials)> {
        self.lock()
            .clients
            .iter()
            .map(|(client_id, credentials)| (client_id.clone(), credentials.clone()))
            .collect()
    }

    /// Clients in the map.
    pub fn len(&self) -> usize {
        self.lock().clients.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn append(
    inner: &mut Inner,
    client_id: &str,
    credentials: Option<&ClientCredentials>,
) -> Result<(), Error> {
    let record = Record {
        client_id: client_id.to_owned(),
        credentials: credentials.cloned(),
    };
    let entry = Entry {
        seq: inner.next_seq,
        body: serde_json::to_vec(&record).expect("a registration entry serialises"),
        appended_at: SystemTime::now(),
    };
    inner.store.append(std::slice::from_ref(&entry), true)?;
    inner.next_seq += 1;
    inner.logged += 1;
    Ok(())
}

/// Rewrites the live entries and drops everything before them once the
/// log is much longer than the map.
fn compact_if_due(inner: &mut Inner) -> Result<(), Error> {
    if inner.logged <= inner.clients.len() * 2 + COMPACTION_SLACK {
        return Ok(());
    }
    let first = inner.next_seq;
    let now = SystemTime::now();
    let entries: Vec<Entry> = inner
        .clients
        .iter()
        .enumerate()
        .map(|(offset, (client_id, credentials))| Entry {
            seq: first + offset as Seq,
            body: serde_json::to_vec(&Record {
                client_id: client_id.clone(),
                credentials: Some(credentials.clone()),
            })
            .expect("a registration entry serialises"),
            appended_at: now,
        })
        .collect();
    inner.store.append(&entries, true)?;
    inner.next_seq = first + entries.len() as Seq;
    inner.store.persist_cursor(first)?;
    inner.store.delete_applied(first)?;
    inner.logged = entries.len();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new([7; 32])
    }

    #[test]
    fn entries_survive_a_reopen_and_tombstones_forget() {
        let dir = tempfile::tempdir().unwrap();
        {
            let map = Registrations::open(dir.path(), cipher()).unwrap();
            map.update("a", |c| c.source = Some("rat-source".into()))
                .unwrap();
            map.update("a", |c| c.target = Some("rat-target".into()))
                .unwrap();
            map.update("b", |c| c.secret_changed_at = Some(100))
                .unwrap();
            map.forget("b").unwrap();
        }
        let map = Registrations::open(dir.path(), cipher()).unwrap();
        let a = map.get("a").unwrap();
        assert_eq!(a.source.as_deref(), Some("rat-source"));
        assert_eq!(a.target.as_deref(), Some("rat-target"));
        assert!(map.get("b").is_none());
        assert_eq!(map.len(), 1);
        // At rest the tokens are encrypted.
        for file in std::fs::read_dir(dir.path().join(REGISTRATIONS_DIR)).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            assert!(!bytes.windows(10).any(|w| w == b"rat-source"));
        }
    }

    #[test]
    fn a_long_log_is_compacted_without_losing_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let map = Registrations::open(dir.path(), cipher()).unwrap();
            for round in 0..(COMPACTION_SLACK + 20) {
                map.update("hot", |c| c.secret_changed_at = Some(round as u64))
                    .unwrap();
            }
            map.update("cold", |c| c.source = Some("s".into())).unwrap();
            assert!(map.lock().logged < COMPACTION_SLACK);
        }
        let map = Registrations::open(dir.path(), cipher()).unwrap();
        assert_eq!(
            map.get("hot").unwrap().secret_changed_at,
            Some((COMPACTION_SLACK + 19) as u64)
        );
        assert!(map.get("cold").is_some());
        assert_eq!(map.secrets_changed_since(COMPACTION_SLACK as u64), 1);
    }
}
