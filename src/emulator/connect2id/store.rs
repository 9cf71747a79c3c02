//! The persistent datasets of the emulated server: clients, long-lived
//! authorizations, subject sessions and the revocation journal.
//!
//! Memory is what makes `--seed 1000000` possible. Each dataset is an
//! [`Overlay`]: records written over HTTP live in a `BTreeMap` as compact
//! JSON text, while seeded records are *virtual*, regenerated on demand from
//! their index (see `seed.rs`), until they are changed or deleted, which
//! writes them into the map or marks their index as a tombstone. Invariant:
//! a seeded index is alive only if it is below the seed count, not a
//! tombstone, and therefore not in the map.
//!
//! Exports walk a dataset in chunks with a [`Cursor`] (map keys in order,
//! then seeded indices), taking the lock once per chunk, so a streamed
//! export never copies the dataset and never holds a lock across an
//! `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use super::records::{Authorization, Session};
use super::seed::Seeder;

/// Records per export chunk: small enough to keep lock hold times short.
pub(crate) const CHUNK_RECORDS: usize = 256;

/// Maximum sessions per subject (`sessionStore.quotaPerSubject`, default 5).
pub(crate) const SESSION_QUOTA: usize = 5;

/// Where an export walk stands.
#[derive(Debug, Clone)]
pub(crate) enum Cursor<K> {
    /// Nothing read yet.
    Start,
    /// The map part, after this key.
    After(K),
    /// The seeded part, from this index.
    Seeded(u32),
    /// Finished.
    Done,
}

/// How a dataset's seeded records are named and generated.
pub(crate) trait Seeds<K, V> {
    /// How many records were seeded.
    fn count(&self) -> u32;
    /// The index of the seeded record with this key, if it is one.
    fn index_of(&self, key: &K) -> Option<u32>;
    /// The seeded record at `index` (below [`Seeds::count`]).
    fn generate(&self, index: u32) -> (K, V);
}

/// Written records over virtual seeded ones.
#[derive(Debug)]
pub(crate) struct Overlay<K, V> {
    explicit: BTreeMap<K, V>,
    tombstones: HashSet<u32>,
}

impl<K, V> Default for Overlay<K, V> {
    fn default() -> Self {
        Self {
            explicit: BTreeMap::new(),
            tombstones: HashSet::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Overlay<K, V> {
    fn seeded_alive(&self, index: u32, seeds: &impl Seeds<K, V>) -> bool {
        index < seeds.count() && !self.tombstones.contains(&index)
    }

    fn seeded_index(&self, key: &K, seeds: &impl Seeds<K, V>) -> Option<u32> {
        seeds
            .index_of(key)
            .filter(|index| self.seeded_alive(*index, seeds))
    }

    /// The record with this key.
    pub(crate) fn get(&self, key: &K, seeds: &impl Seeds<K, V>) -> Option<V> {
        if let Some(value) = self.explicit.get(key) {
            return Some(value.clone());
        }
        let index = self.seeded_index(key, seeds)?;
        Some(seeds.generate(index).1)
    }

    /// Whether a record with this key exists.
    pub(crate) fn contains(&self, key: &K, seeds: &impl Seeds<K, V>) -> bool {
        self.explicit.contains_key(key) || self.seeded_index(key, seeds).is_some()
    }

    /// Stores a record, replacing any with the same key.
    pub(crate) fn insert(&mut self, key: K, value: V, seeds: &impl Seeds<K, V>) {
        if let Some(index) = seeds.index_of(&key).filter(|i| *i < seeds.count()) {
            self.tombstones.insert(index);
        }
        self.explicit.insert(key, value);
    }

    /// Removes a record, returning it.
    pub(crate) fn remove(&mut self, key: &K, seeds: &impl Seeds<K, V>) -> Option<V> {
        if let Some(value) = self.explicit.remove(key) {
            return Some(value);
        }
        let index = self.seeded_index(key, seeds)?;
        self.tombstones.insert(index);
        Some(seeds.generate(index).1)
    }

    /// How many records exist.
    pub(crate) fn len(&self, seeds: &impl Seeds<K, V>) -> usize {
        let seeded = seeds.count() as usize - self.tombstones.len();
        self.explicit.len() + seeded
    }

    /// The written records whose keys fall in `range`.
    fn range<R: std::ops::RangeBounds<K>>(&self, range: R) -> impl Iterator<Item = (&K, &V)> {
        self.explicit.range(range)
    }

    /// Up to `max` records from `cursor` on, and the cursor after them.
    pub(crate) fn chunk(
        &self,
        cursor: &Cursor<K>,
        max: usize,
        seeds: &impl Seeds<K, V>,
    ) -> (Vec<(K, V)>, Cursor<K>) {
        let mut out = Vec::new();
        match cursor {
            Cursor::Start | Cursor::After(_) => {
                let lower = match cursor {
                    Cursor::After(key) => Bound::Excluded(key),
                    _ => Bound::Unbounded,
                };
                out.extend(
                    self.explicit
                        .range((lower, Bound::Unbounded))
                        .take(max)
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                let next = match out.last() {
                    Some((key, _)) if out.len() == max => Cursor::After(key.clone()),
                    _ => Cursor::Seeded(0),
                };
                (out, next)
            }
            Cursor::Seeded(start) => {
                let count = seeds.count();
                let mut index = *start;
                while index < count && out.len() < max {
                    if !self.tombstones.contains(&index) {
                        out.push(seeds.generate(index));
                    }
                    index += 1;
                }
                let next = if index >= count {
                    Cursor::Done
                } else {
                    Cursor::Seeded(index)
                };
                (out, next)
            }
            Cursor::Done => (out, Cursor::Done),
        }
    }
}

/// A registered client: its client information as JSON text (everything
/// but `registration_client_uri`, which is rebuilt from the issuer), plus
/// the previous secret while it is still accepted after a rotation.
#[derive(Debug, Clone)]
pub(crate) struct StoredClient {
    /// The client information JSON object.
    pub(crate) info: Box<str>,
    /// The secret replaced by the last update and until when it is valid.
    pub(crate) previous_secret: Option<(Box<str>, u64)>,
}

/// One entry of the revocation journal: tokens of the matching subject /
/// client / actor issued at or before `timestamp` are revoked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationEntry {
    /// The revoked subject, if the revocation named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The revoked client, if the revocation named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The revoked actor, if the revocation named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Epoch seconds: tokens issued at or before it are revoked.
    pub timestamp: u64,
}

/// The revocation journal with lookup maps for token checks.
#[derive(Debug, Default)]
struct Journal {
    entries: Vec<RevocationEntry>,
    by_pair: HashMap<(String, String), u64>,
    by_subject: HashMap<String, u64>,
    by_client: HashMap<String, u64>,
}

impl Journal {
    fn latest(&self, sub: &str, cid: &str) -> Option<u64> {
        let pair = self.by_pair.get(&(sub.to_owned(), cid.to_owned()));
        [pair, self.by_subject.get(sub), self.by_client.get(cid)]
            .into_iter()
            .flatten()
            .copied()
            .max()
    }

    fn latest_for_entry(&self, entry: &RevocationEntry) -> Option<u64> {
        match (&entry.subject, &entry.client_id) {
            (Some(sub), Some(cid)) => self.by_pair.get(&(sub.clone(), cid.clone())).copied(),
            (Some(sub), None) => self.by_subject.get(sub).copied(),
            (None, Some(cid)) => self.by_client.get(cid).copied(),
            (None, None) => None,
        }
    }

    fn add(&mut self, entry: RevocationEntry) {
        let ts = entry.timestamp;
        let slot = match (&entry.subject, &entry.client_id) {
            (Some(sub), Some(cid)) => {
                Some(self.by_pair.entry((sub.clone(), cid.clone())).or_insert(ts))
            }
            (Some(sub), None) => Some(self.by_subject.entry(sub.clone()).or_insert(ts)),
            (None, Some(cid)) => Some(self.by_client.entry(cid.clone()).or_insert(ts)),
            // Actor-only revocations remove records but cannot be matched
            // against tokens, which carry no actor here.
            (None, None) => None,
        };
        if let Some(slot) = slot {
            *slot = (*slot).max(ts);
        }
        self.entries.push(entry);
    }
}

/// The seeded clients of a [`Seeder`].
struct ClientSeeds<'a>(&'a Seeder);

impl Seeds<String, StoredClient> for ClientSeeds<'_> {
    fn count(&self) -> u32 {
        self.0.count()
    }
    fn index_of(&self, key: &String) -> Option<u32> {
        self.0.client_index(key)
    }
    fn generate(&self, index: u32) -> (String, StoredClient) {
        let (id, info) = self.0.client(index);
        let client = StoredClient {
            info: info.into_boxed_str(),
            previous_secret: None,
        };
        (id, client)
    }
}

/// The seeded authorizations of a [`Seeder`].
struct AuthzSeeds<'a>(&'a Seeder);

impl Seeds<(String, String), Box<str>> for AuthzSeeds<'_> {
    fn count(&self) -> u32 {
        self.0.count()
    }
    fn index_of(&self, key: &(String, String)) -> Option<u32> {
        self.0.authorization_index(&key.0, &key.1)
    }
    fn generate(&self, index: u32) -> ((String, String), Box<str>) {
        let record = self.0.authorization(index);
        ((record.sub.clone(), record.cid.clone()), record.to_stored())
    }
}

/// The seeded sessions of a [`Seeder`].
struct SessionSeeds<'a>(&'a Seeder);

impl Seeds<String, Box<str>> for SessionSeeds<'_> {
    fn count(&self) -> u32 {
        self.0.count()
    }
    fn index_of(&self, key: &String) -> Option<u32> {
        self.0.session_index(key)
    }
    fn generate(&self, index: u32) -> (String, Box<str>) {
        let (key, session) = self.0.session(index);
        (key, session.to_stored())
    }
}

/// Long-lived authorizations keyed by (subject, client), with a client
/// index for the written ones.
#[derive(Debug, Default)]
struct AuthzTable {
    overlay: Overlay<(String, String), Box<str>>,
    by_client: HashMap<String, BTreeSet<String>>,
}

impl AuthzTable {
    fn insert(&mut self, record: &Authorization, seeds: &AuthzSeeds<'_>) {
        self.by_client
            .entry(record.cid.clone())
            .or_default()
            .insert(record.sub.clone());
        let key = (record.sub.clone(), record.cid.clone());
        self.overlay.insert(key, record.to_stored(), seeds);
    }

    fn remove(&mut self, sub: &str, cid: &str, seeds: &AuthzSeeds<'_>) -> Option<Authorization> {
        if let Some(subjects) = self.by_client.get_mut(cid) {
            subjects.remove(sub);
            if subjects.is_empty() {
                self.by_client.remove(cid);
            }
        }
        let key = (sub.to_owned(), cid.to_owned());
        self.overlay
            .remove(&key, seeds)
            .map(|text| Authorization::from_stored(&text))
    }
}

/// Subject sessions keyed by SID key, with a subject index for the written
/// ones.
#[derive(Debug, Default)]
struct SessionTable {
    overlay: Overlay<String, Box<str>>,
    by_subject: HashMap<String, BTreeSet<String>>,
}

impl SessionTable {
    fn insert(&mut self, key: &str, session: &Session, seeds: &SessionSeeds<'_>) {
        if let Some(old) = self.overlay.explicit.get(key) {
            let old = Session::from_stored(old);
            if old.sub != session.sub {
                self.unindex(&old.sub, key);
            }
        }
        self.by_subject
            .entry(session.sub.clone())
            .or_default()
            .insert(key.to_owned());
        self.overlay
            .insert(key.to_owned(), session.to_stored(), seeds);
    }

    fn unindex(&mut self, sub: &str, key: &str) {
        if let Some(keys) = self.by_subject.get_mut(sub) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_subject.remove(sub);
            }
        }
    }

    fn remove(&mut self, key: &str, seeds: &SessionSeeds<'_>) -> Option<Session> {
        let session = Session::from_stored(&self.overlay.remove(&key.to_owned(), seeds)?);
        self.unindex(&session.sub, key);
        Some(session)
    }

    fn of_subject(
        &self,
        sub: &str,
        seeder: &Seeder,
        seeds: &SessionSeeds<'_>,
    ) -> Vec<(String, Session)> {
        let mut out: Vec<(String, Session)> = self
            .by_subject
            .get(sub)
            .into_iter()
            .flatten()
            .filter_map(|key| {
                let text = self.overlay.explicit.get(key)?;
                Some((key.clone(), Session::from_stored(text)))
            })
            .collect();
        if let Some(index) = seeder.subject_index(sub) {
            let key = seeder.session_key(index);
            if let Some(text) = self
                .overlay
                .seeded_index(&key, seeds)
                .map(|i| seeds.generate(i).1)
            {
                out.push((key, Session::from_stored(&text)));
            }
        }
        out
    }
}

/// Counts of records per dataset.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Registered clients.
    pub clients: usize,
    /// Long-lived authorizations.
    pub authorizations: usize,
    /// Subject sessions (including ones that expired but were not yet
    /// touched).
    pub sessions: usize,
    /// Revocation journal entries.
    pub revocations: usize,
}

/// Reads a lock, ignoring poisoning: every critical section leaves the data
/// consistent before anything can panic.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a lock, ignoring poisoning (see [`read`]).
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// All persistent datasets of one emulated server.
#[derive(Debug)]
pub(crate) struct Store {
    seeder: Seeder,
    clients: RwLock<Overlay<String, StoredClient>>,
    authorizations: RwLock<AuthzTable>,
    sessions: RwLock<SessionTable>,
    journal: RwLock<Journal>,
}

impl Store {
    /// An empty store over `seeder`'s virtual records.
    pub(crate) fn new(seeder: Seeder) -> Self {
        Self {
            seeder,
            clients: RwLock::default(),
            authorizations: RwLock::default(),
            sessions: RwLock::default(),
            journal: RwLock::default(),
        }
    }

    /// The seeder behind the virtual records.
    pub(crate) fn seeder(&self) -> &Seeder {
        &self.seeder
    }

    /// Record counts.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            clients: read(&self.clients).len(&ClientSeeds(&self.seeder)),
            authorizations: read(&self.authorizations)
                .overlay
                .len(&AuthzSeeds(&self.seeder)),
            sessions: read(&self.sessions)
                .overlay
                .len(&SessionSeeds(&self.seeder)),
            revocations: read(&self.journal).entries.len(),
        }
    }

    // ---- clients ----

    /// The client with this ID.
    pub(crate) fn client(&self, id: &str) -> Option<StoredClient> {
        read(&self.clients).get(&id.to_owned(), &ClientSeeds(&self.seeder))
    }

    /// Registers a client unless the ID is taken; returns whether it was.
    pub(crate) fn insert_client(&self, id: &str, client: StoredClient) -> bool {
        let seeds = ClientSeeds(&self.seeder);
        let mut clients = write(&self.clients);
        if clients.contains(&id.to_owned(), &seeds) {
            return false;
        }
        clients.insert(id.to_owned(), client, &seeds);
        true
    }

    /// Replaces an existing client with what `update` makes of it; `None`
    /// when there is no such client or `update` declines.
    pub(crate) fn update_client<R>(
        &self,
        id: &str,
        update: impl FnOnce(StoredClient) -> Option<(StoredClient, R)>,
    ) -> Option<R> {
        let seeds = ClientSeeds(&self.seeder);
        let mut clients = write(&self.clients);
        let current = clients.get(&id.to_owned(), &seeds)?;
        let (next, result) = update(current)?;
        clients.insert(id.to_owned(), next, &seeds);
        Some(result)
    }

    /// Deletes a client; returns whether it existed.
    pub(crate) fn remove_client(&self, id: &str) -> bool {
        write(&self.clients)
            .remove(&id.to_owned(), &ClientSeeds(&self.seeder))
            .is_some()
    }

    /// One export chunk of clients, by client ID.
    pub(crate) fn clients_chunk(
        &self,
        cursor: &Cursor<String>,
    ) -> (Vec<(String, StoredClient)>, Cursor<String>) {
        read(&self.clients).chunk(cursor, CHUNK_RECORDS, &ClientSeeds(&self.seeder))
    }

    // ---- authorizations ----

    /// The long-lived authorization of `sub` for `cid`.
    pub(crate) fn authorization(&self, sub: &str, cid: &str) -> Option<Authorization> {
        let key = (sub.to_owned(), cid.to_owned());
        read(&self.authorizations)
            .overlay
            .get(&key, &AuthzSeeds(&self.seeder))
            .map(|text| Authorization::from_stored(&text))
    }

    /// Stores an authorization, replacing the one with the same subject and
    /// client; returns the replaced one.
    pub(crate) fn put_authorization(&self, record: &Authorization) -> Option<Authorization> {
        let seeds = AuthzSeeds(&self.seeder);
        let mut table = write(&self.authorizations);
        let previous = table.remove(&record.sub, &record.cid, &seeds);
        table.insert(record, &seeds);
        previous
    }

    /// Deletes the authorization of `sub` for `cid`, returning it.
    pub(crate) fn remove_authorization(&self, sub: &str, cid: &str) -> Option<Authorization> {
        write(&self.authorizations).remove(sub, cid, &AuthzSeeds(&self.seeder))
    }

    /// Reads and rewrites one authorization atomically: `change` sees the
    /// current record and leaves the record to store (or `None` to delete).
    pub(crate) fn modify_authorization<R>(
        &self,
        sub: &str,
        cid: &str,
        change: impl FnOnce(&mut Option<Authorization>) -> R,
    ) -> R {
        let seeds = AuthzSeeds(&self.seeder);
        let mut table = write(&self.authorizations);
        let key = (sub.to_owned(), cid.to_owned());
        let current = table
            .overlay
            .get(&key, &seeds)
            .map(|text| Authorization::from_stored(&text));
        let mut next = current.clone();
        let result = change(&mut next);
        if next != current {
            table.remove(sub, cid, &seeds);
            if let Some(record) = &next {
                table.insert(record, &seeds);
            }
        }
        result
    }

    /// The authorizations of a subject.
    pub(crate) fn authorizations_of_subject(&self, sub: &str) -> Vec<Authorization> {
        let seeds = AuthzSeeds(&self.seeder);
        let table = read(&self.authorizations);
        let lower = (sub.to_owned(), String::new());
        let mut out: Vec<Authorization> = table
            .overlay
            .range(lower..)
            .take_while(|((record_sub, _), _)| record_sub == sub)
            .map(|(_, text)| Authorization::from_stored(text))
            .collect();
        if let Some(index) = self.seeder.subject_index(sub) {
            let key = self.seeder.authorization_key(index);
            if let Some(text) = table
                .overlay
                .seeded_index(&key, &seeds)
                .map(|i| seeds.generate(i).1)
            {
                out.push(Authorization::from_stored(&text));
            }
        }
        out
    }

    /// The authorizations of a client.
    pub(crate) fn authorizations_of_client(&self, cid: &str) -> Vec<Authorization> {
        let seeds = AuthzSeeds(&self.seeder);
        let table = read(&self.authorizations);
        let mut out: Vec<Authorization> = table
            .by_client
            .get(cid)
            .into_iter()
            .flatten()
            .filter_map(|sub| table.overlay.explicit.get(&(sub.clone(), cid.to_owned())))
            .map(|text| Authorization::from_stored(text))
            .collect();
        for index in self.seeder.authorization_indices_of_client(cid) {
            if table.overlay.seeded_alive(index, &seeds) {
                out.push(Authorization::from_stored(&seeds.generate(index).1));
            }
        }
        out
    }

    /// One export chunk of authorizations.
    pub(crate) fn authorizations_chunk(
        &self,
        cursor: &Cursor<(String, String)>,
    ) -> (Vec<Authorization>, Cursor<(String, String)>) {
        let (chunk, next) = read(&self.authorizations).overlay.chunk(
            cursor,
            CHUNK_RECORDS,
            &AuthzSeeds(&self.seeder),
        );
        let records = chunk
            .into_iter()
            .map(|(_, text)| Authorization::from_stored(&text))
            .collect();
        (records, next)
    }

    // ---- sessions ----

    /// The session with this SID key (expired or not).
    pub(crate) fn session(&self, key: &str) -> Option<Session> {
        read(&self.sessions)
            .overlay
            .get(&key.to_owned(), &SessionSeeds(&self.seeder))
            .map(|text| Session::from_stored(&text))
    }

    /// Stores a session under `key` (replacing one with the same key) and
    /// enforces the per-subject quota by closing the oldest other sessions
    /// of the subject; returns the closed ones.
    pub(crate) fn put_session(&self, key: &str, session: &Session) -> Vec<(String, Session)> {
        let seeds = SessionSeeds(&self.seeder);
        let mut table = write(&self.sessions);
        let mut others: Vec<(String, Session)> = table
            .of_subject(&session.sub, &self.seeder, &seeds)
            .into_iter()
            .filter(|(other, _)| other != key)
            .collect();
        let mut closed = Vec::new();
        if others.len() >= SESSION_QUOTA {
            // Oldest first; the key breaks ties so the choice is stable.
            others.sort_by(|(ka, a), (kb, b)| (a.creation_time, ka).cmp(&(b.creation_time, kb)));
            let excess = others.len() + 1 - SESSION_QUOTA;
            for (other, _) in others.into_iter().take(excess) {
                if let Some(old) = table.remove(&other, &seeds) {
                    closed.push((other, old));
                }
            }
        }
        table.insert(key, session, &seeds);
        closed
    }

    /// Reads and rewrites one session atomically (see
    /// [`Store::modify_authorization`]).
    pub(crate) fn modify_session<R>(
        &self,
        key: &str,
        change: impl FnOnce(&mut Option<Session>) -> R,
    ) -> R {
        let seeds = SessionSeeds(&self.seeder);
        let mut table = write(&self.sessions);
        let current = table
            .overlay
            .get(&key.to_owned(), &seeds)
            .map(|text| Session::from_stored(&text));
        let mut next = current.clone();
        let result = change(&mut next);
        if next != current {
            match &next {
                Some(session) => table.insert(key, session, &seeds),
                None => {
                    table.remove(key, &seeds);
                }
            }
        }
        result
    }

    /// Deletes a session, returning it.
    pub(crate) fn remove_session(&self, key: &str) -> Option<Session> {
        write(&self.sessions).remove(key, &SessionSeeds(&self.seeder))
    }

    /// The sessions of a subject, by SID key.
    pub(crate) fn sessions_of_subject(&self, sub: &str) -> Vec<(String, Session)> {
        read(&self.sessions).of_subject(sub, &self.seeder, &SessionSeeds(&self.seeder))
    }

    /// One export chunk of sessions, by SID key.
    pub(crate) fn sessions_chunk(
        &self,
        cursor: &Cursor<String>,
    ) -> (Vec<(String, Session)>, Cursor<String>) {
        let (chunk, next) =
            read(&self.sessions)
                .overlay
                .chunk(cursor, CHUNK_RECORDS, &SessionSeeds(&self.seeder));
        let sessions = chunk
            .into_iter()
            .map(|(key, text)| (key, Session::from_stored(&text)))
            .collect();
        (sessions, next)
    }

    // ---- revocation journal ----

    /// Appends a revocation. Without an explicit timestamp the entry is
    /// stamped `now`, or one second after the previous entry for the same
    /// selector if that is not earlier, so that it also covers tokens issued
    /// after that previous revocation within the same second (see
    /// [`Store::issue_time`]).
    pub(crate) fn revoke(
        &self,
        subject: Option<&str>,
        client_id: Option<&str>,
        actor: Option<&str>,
        timestamp: Option<u64>,
        now: u64,
    ) -> RevocationEntry {
        let mut journal = write(&self.journal);
        let mut entry = RevocationEntry {
            subject: subject.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
            actor: actor.map(str::to_owned),
            timestamp: now,
        };
        entry.timestamp = match timestamp {
            Some(given) => given,
            None => match journal.latest_for_entry(&entry) {
                Some(previous) if previous >= now => previous + 1,
                _ => now,
            },
        };
        journal.add(entry.clone());
        entry
    }

    /// The latest revocation that applies to tokens of `sub` for `cid`.
    pub(crate) fn revoked_until(&self, sub: &str, cid: &str) -> Option<u64> {
        read(&self.journal).latest(sub, cid)
    }

    /// Whether a token of `sub` for `cid` issued at `iat` is revoked.
    pub(crate) fn is_revoked(&self, sub: &str, cid: &str, iat: u64) -> bool {
        self.revoked_until(sub, cid).is_some_and(|ts| iat <= ts)
    }

    /// The issue time for a new token or record of `sub` for `cid`: `now`,
    /// or one second after the latest applicable revocation if that is not
    /// earlier. Revocation compares whole seconds (`iat <= timestamp`), so
    /// without this a token minted in the same second as a revocation would
    /// be born revoked.
    pub(crate) fn issue_time(&self, sub: &str, cid: &str, now: u64) -> u64 {
        match self.revoked_until(sub, cid) {
            Some(ts) if ts >= now => ts + 1,
            _ => now,
        }
    }

    /// Every journal entry, oldest first.
    pub(crate) fn revocations(&self) -> Vec<RevocationEntry> {
        read(&self.journal).entries.clone()
    }
}
