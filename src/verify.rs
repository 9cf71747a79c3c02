//! Verify: proves the primary and the secondary agree, dataset by dataset
//! (DESIGN.md §5), while production keeps running.
//!
//! For each dataset:
//!
//! 1. The primary's export is streamed; each record is looked up on the
//!    secondary by key and compared with the fields that legitimately
//!    differ removed ([`crate::model::Dataset::comparable`]): `matching`,
//!    `mismatched` or `missing_on_target`. A session is also `mismatched`
//!    (and `idle_expiry_behind`) when the secondary last used it earlier
//!    than the primary beyond [`crate::model::idle::LAST_USED_TOLERANCE`]:
//!    it would idle out there first; its repair touches it. A key with sync work queued or
//!    running is `in_flight`, not drift. A record that differs is read again
//!    from both sides before it counts, so a change that landed during the
//!    verify is not reported.
//! 2. The secondary's export is streamed; a key the primary's export did
//!    not contain (a Bloom filter of the primary's keys: a few bits per key,
//!    no false negatives) is looked up on the primary: absent there, it is
//!    `extra_on_target`. The filter's rare false positives could hide an
//!    extra record; the counts catch that (records on the secondary minus
//!    those found in step 1 must equal the extras found), and when they
//!    disagree an exact pass looks up every secondary key on the primary.
//!
//! Memory stays flat: both exports are streamed and only the filter
//! (about 2.5 MB per million keys) and the first `list` drifted keys are
//! kept. `repair` journals a sync of every drifted key, which copies the
//! primary's current state (or deletes an extra record).

pub mod live;
pub mod sessions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{DatasetReport, VerifyReport, VerifyRequest};
use crate::model::{Change, Dataset, Key, Tenant, idle};
use crate::servers::ApiError;
use crate::servers::Servers;
use crate::servers::connect2id::Connect2id;
use crate::servers::export::Export;
use crate::sync::Recorder;
use crate::sync::SyncHandle;

/// Lookups in flight at once by default.
pub(crate) const DEFAULT_CONCURRENCY: usize = 32;
/// Drifted keys listed per dataset by default.
pub const DEFAULT_LIST: usize = 20;
/// A refresh token seen in live traffic this recently may still be on its
/// way to the target while the sync is busy: in flight, not refused.
pub const LIVE_SETTLE: Duration = Duration::from_secs(5);

pub use live::LiveSample;
pub use sessions::SessionsAlive;

/// Why a verify could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An export or a lookup failed.
    #[error("{dataset}: {message}")]
    Dataset {
        /// The dataset.
        dataset: Dataset,
        /// What failed.
        message: String,
    },
    /// An unknown dataset was asked for.
    #[error("unknown or disabled dataset {0:?}")]
    UnknownDataset(Dataset),
    /// Stopped by shutdown.
    #[error("verify stopped")]
    Stopped,
}

/// Live progress of a running verify.
#[derive(Debug, Default)]
pub struct Progress {
    /// The dataset being verified.
    pub dataset: std::sync::Mutex<Option<Dataset>>,
    /// Records looked at in it so far.
    pub scanned: AtomicU64,
}

/// Everything verify needs.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Both servers.
    pub servers: Arc<Servers>,
    /// To tell in-flight keys.
    pub sync: SyncHandle,
    /// To journal repairs.
    pub recorder: Recorder,
    /// Enabled datasets.
    pub datasets: Vec<Dataset>,
    /// Lookups in flight.
    pub concurrency: usize,
    /// Refresh tokens seen in live traffic (an Authlete target).
    pub live: Option<Arc<LiveSample>>,
    /// Tenants besides the default one (`sync.tenants`), each compared
    /// on its own (Connect2id targets).
    pub tenants: Vec<Tenant>,
    /// Shutdown.
    pub stop: CancellationToken,
}

impl Verifier {
    /// Runs a verify.
    pub async fn run(
        &self,
        request: &VerifyRequest,
        progress: &Progress,
    ) -> Result<VerifyReport, Error> {
        let datasets: Vec<Dataset> = match &request.dataset {
            Some(dataset) if self.datasets.contains(dataset) => vec![*dataset],
            Some(dataset) => return Err(Error::UnknownDataset(*dataset)),
            None => self.datasets.clone(),
        };
        let list = request.list.unwrap_or(DEFAULT_LIST);
        let mut report = VerifyReport {
            primary: self.servers.primary_side(),
            ..VerifyReport::default()
        };
        for &dataset in &datasets {
            if let Ok(mut current) = progress.dataset.lock() {
                *current = Some(dataset);
            }
            progress.scanned.store(0, Ordering::Relaxed);
            let result = self
                .dataset(dataset, None, request.repair, list, progress)
                .await?;
            if let Some(samples) = &result.samples
                && samples.live.ratio().is_none()
            {
                report.not_measured.push(format!(
                    "{dataset}: no refresh token seen in live traffic could be checked at the target (none passed the proxy since it started); the export's values alone prove nothing about the tokens clients hold"
                ));
            }
            report.drift += result.drift();
            report.datasets.insert(dataset, result);
        }
        if self.servers.authlete().is_none() {
            for tenant in &self.tenants {
                let mut per_dataset = BTreeMap::new();
                for &dataset in &datasets {
                    progress.scanned.store(0, Ordering::Relaxed);
                    let result = self
                        .dataset(dataset, Some(tenant), request.repair, list, progress)
                        .await?;
                    report.drift += result.drift();
                    per_dataset.insert(dataset, result);
                }
                let name = tenant.tenant_id.clone().unwrap_or_else(|| tenant.label());
                report.tenants.insert(name, per_dataset);
            }
        }
        Ok(report)
    }

    async fn dataset(
        &self,
        dataset: Dataset,
        tenant: Option<&Tenant>,
        repair: bool,
        list: usize,
        progress: &Progress,
    ) -> Result<DatasetReport, Error> {
        if let Some(authlete) = self.servers.authlete() {
            return self
                .authlete_dataset(authlete, dataset, repair, list, progress)
                .await;
        }
        let (primary, secondary) = match tenant {
            Some(tenant) => (
                self.servers.primary_api().in_tenant(tenant),
                self.servers.secondary_api().in_tenant(tenant),
            ),
            None => (
                self.servers.primary_api().clone(),
                self.servers.secondary_api().clone(),
            ),
        };
        let state = Arc::new(Tally {
            list,
            ..Tally::default()
        });
        // Pass 1: every primary record, looked up on the secondary.
        let mut filter = ScalableBloom::new();
        let mut primary_count = 0u64;
        self.stream(&primary, dataset, progress, |key, record| {
            primary_count += 1;
            filter.insert(&key.identity());
            let (primary, secondary, state, busy) = (
                primary.clone(),
                secondary.clone(),
                Arc::clone(&state),
                self.busy(),
            );
            Some(Box::pin(async move {
                compare_one(dataset, &primary, &secondary, &busy, &state, key, record).await
            }))
        })
        .await?;

        // Pass 2: every secondary record the primary's export lacked.
        let mut secondary_count = 0u64;
        self.stream(&secondary, dataset, progress, |key, _record| {
            secondary_count += 1;
            if filter.contains(&key.identity()) {
                return None;
            }
            let (primary, state, busy) = (primary.clone(), Arc::clone(&state), self.busy());
            Some(Box::pin(async move {
                check_extra(&primary, &busy, &state, key).await
            }))
        })
        .await?;

        // The counts must add up; if not, an extra record hid behind a
        // filter false positive: look every secondary key up.
        let found = state.found_on_secondary.load(Ordering::Relaxed);
        let accounted = found
            + state.extra.load(Ordering::Relaxed)
            + state.new_on_primary.load(Ordering::Relaxed);
        if secondary_count > accounted {
            tracing::info!(
                dataset = dataset.as_str(),
                secondary_count,
                accounted,
                "counts disagree; checking every secondary key on the primary"
            );
            state.extra.store(0, Ordering::Relaxed);
            state.new_on_primary.store(0, Ordering::Relaxed);
            if let Ok(mut drifted) = state.drifted.lock() {
                drifted.clear();
            }
            if let Ok(mut repairs) = state.repairs.lock() {
                repairs.clear();
            }
            self.stream(&secondary, dataset, progress, |key, _record| {
                let (primary, state, busy) = (primary.clone(), Arc::clone(&state), self.busy());
                Some(Box::pin(async move {
                    check_extra(&primary, &busy, &state, key).await
                }))
            })
            .await?;
        }

        let drifted = state.drifted.lock().map(|d| d.clone()).unwrap_or_default();
        let mut report = DatasetReport {
            primary: primary_count,
            secondary: secondary_count,
            matching: state.matching.load(Ordering::Relaxed),
            mismatched: state.mismatched.load(Ordering::Relaxed),
            missing_on_target: state.missing.load(Ordering::Relaxed),
            extra_on_target: state.extra.load(Ordering::Relaxed),
            in_flight: state.in_flight.load(Ordering::Relaxed),
            idle_expiry_behind: state.idle_behind.load(Ordering::Relaxed),
            drifted_keys: drifted.iter().map(Key::redacted).collect(),
            repaired: 0,
            samples: None,
        };
        if repair {
            let repairs = state.repairs.lock().map(|r| r.clone()).unwrap_or_default();
            report.repaired = repairs.len() as u64;
            for chunk in repairs.chunks(1000) {
                self.recorder
                    .record(
                        chunk
                            .iter()
                            .cloned()
                            .map(|key| Change::sync(key).scoped(tenant.cloned()))
                            .collect(),
                    )
                    .await;
            }
            let unlisted = report.drift().saturating_sub(report.repaired);
            if unlisted > 0 {
                tracing::warn!(
                    dataset = dataset.as_str(),
                    unlisted,
                    "more drifted keys than kept for repair; run verify --repair again after this one settles"
                );
            }
        }
        Ok(report)
    }

    /// Streams one side's export; `each` turns a record into an optional
    /// lookup, run with bounded concurrency. The first failed lookup fails
    /// the pass.
    async fn stream<F>(
        &self,
        server: &Connect2id,
        dataset: Dataset,
        progress: &Progress,
        mut each: F,
    ) -> Result<(), Error>
    where
        F: FnMut(Key, Value) -> Option<Lookup>,
    {
        let fail = |message: String| Error::Dataset { dataset, message };
        let mut export = Export::open(server, dataset)
            .await
            .map_err(|err| fail(err.to_string()))?;
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks: tokio::task::JoinSet<Result<(), ApiError>> = tokio::task::JoinSet::new();
        let collect =
            |tasks: &mut tokio::task::JoinSet<Result<(), ApiError>>| -> Result<(), Error> {
                while let Some(result) = tasks.try_join_next() {
                    if let Ok(Err(err)) = result {
                        return Err(fail(format!("lookup failed: {err}")));
                    }
                }
                Ok(())
            };
        loop {
            let records = tokio::select! {
                () = self.stop.cancelled() => return Err(Error::Stopped),
                next = export.next() => next.map_err(|err| fail(err.to_string()))?,
            };
            let Some(records) = records else { break };
            for member in records {
                progress.scanned.fetch_add(1, Ordering::Relaxed);
                let Some(key) = member.key else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<Value>(&member.json) else {
                    return Err(fail(format!(
                        "malformed record in the export from {}",
                        server.server()
                    )));
                };
                if let Some(lookup) = each(key, record) {
                    let permit = Arc::clone(&permits)
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Stopped)?;
                    tasks.spawn(async move {
                        let result = lookup.await;
                        drop(permit);
                        result
                    });
                }
                collect(&mut tasks)?;
            }
        }
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(err)) = result {
                return Err(fail(format!("lookup failed: {err}")));
            }
        }
        Ok(())
    }
}

impl Verifier {
    /// Verify against an Authlete target: clients by alias (mapped fields
    /// and secret); for tokens, two samples introspected at Authlete. The
    /// refresh tokens seen in live traffic (the strings clients hold) must
    /// be active for their client: a refusal is drift. The refresh-token
    /// values of the source's export (a random sample) are reported as a
    /// share only: they are unconfirmed, a Connect2id may rebuild each into
    /// another string at every read.
    async fn authlete_dataset(
        &self,
        authlete: &Arc<crate::servers::authlete::Authlete>,
        dataset: Dataset,
        repair: bool,
        list: usize,
        progress: &Progress,
    ) -> Result<DatasetReport, Error> {
        let source = self.servers.api(crate::model::Side::Source).clone();
        let state = Arc::new(Tally {
            list,
            ..Tally::default()
        });
        let fail = |message: String| Error::Dataset { dataset, message };
        let mut report = DatasetReport::default();
        let mut sample: Vec<(Key, crate::servers::authlete::TokenSpec)> = Vec::new();
        if dataset == Dataset::Clients {
            let version = authlete.config().api_version;
            let mut filter = ScalableBloom::new();
            let mut primary_count = 0u64;
            self.stream(&source, dataset, progress, |key, record| {
                primary_count += 1;
                filter.insert(&key.identity());
                let (authlete, state, sync) =
                    (Arc::clone(authlete), Arc::clone(&state), self.sync.clone());
                Some(Box::pin(async move {
                    let Key::Client { client_id } = &key else {
                        return Ok(());
                    };
                    if sync.is_busy(&key) {
                        state.in_flight.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    match authlete.client(client_id).await? {
                        None => {
                            state.missing.fetch_add(1, Ordering::Relaxed);
                            state.drifted(&key);
                        }
                        Some(copy) => {
                            state.found_on_secondary.fetch_add(1, Ordering::Relaxed);
                            if crate::servers::authlete::client_drift(&record, &copy, version)
                                .is_some()
                            {
                                state.mismatched.fetch_add(1, Ordering::Relaxed);
                                state.drifted(&key);
                            } else {
                                state.matching.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(())
                }))
            })
            .await?;
            // Extra clients: Authlete's, a page at a time.
            let mut start = 0;
            let mut secondary = 0u64;
            loop {
                let (page, total) = authlete
                    .clients_page(start, start + 100)
                    .await
                    .map_err(|err| fail(err.to_string()))?;
                if page.is_empty() {
                    break;
                }
                start += page.len();
                for client in &page {
                    secondary += 1;
                    let Some(alias) = client.get("clientIdAlias").and_then(Value::as_str) else {
                        continue;
                    };
                    let key = Key::Client {
                        client_id: alias.to_owned(),
                    };
                    if filter.contains(&key.identity()) {
                        continue;
                    }
                    if source
                        .get_client(alias)
                        .await
                        .map_err(|err| fail(err.to_string()))?
                        .is_none()
                    {
                        state.extra.fetch_add(1, Ordering::Relaxed);
                        state.drifted(&key);
                    }
                }
                if start as u64 >= total {
                    break;
                }
            }
            report.primary = primary_count;
            report.secondary = secondary;
        } else {
            // Reservoir-sample refresh tokens from the authorization records.
            let wanted = authlete.config().token_sample.max(1);
            let mut seen = 0u64;
            let mut considered = 0u64;
            self.stream(&source, dataset, progress, |key, record| {
                considered += 1;
                let spec = crate::servers::authlete::spec_of_record(&record, authlete.config())?;
                seen += 1;
                if sample.len() < wanted {
                    sample.push((key, spec));
                } else {
                    let slot = fastrand::u64(..seen) as usize;
                    if slot < wanted {
                        sample[slot] = (key, spec);
                    }
                }
                None
            })
            .await?;
            // The exported values are unconfirmed (a Connect2id may rebuild
            // a token into a new string at every read, so even a perfect
            // copy can miss here): their share is reported, not counted as
            // drift. What clients hold is the live sample's business.
            let exported_accepted = Arc::new(AtomicU64::new(0));
            let exported_in_flight = Arc::new(AtomicU64::new(0));
            let mut checks = tokio::task::JoinSet::new();
            for (key, spec) in sample.iter().cloned() {
                let (authlete, sync) = (Arc::clone(authlete), self.sync.clone());
                let (accepted, in_flight) = (
                    Arc::clone(&exported_accepted),
                    Arc::clone(&exported_in_flight),
                );
                checks.spawn(async move {
                    if sync.is_busy(&key) {
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        return Ok::<(), ApiError>(());
                    }
                    let token = spec.refresh_token.clone().unwrap_or_default();
                    if let Some(info) = authlete.introspect(&token, true).await? {
                        let mut scopes = info.scopes.clone();
                        let mut wanted = spec.scopes.clone();
                        scopes.sort();
                        wanted.sort();
                        if info.subject == spec.subject
                            && info.client_id == spec.client_id
                            && scopes == wanted
                        {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                });
            }
            while let Some(joined) = checks.join_next().await {
                if let Ok(Err(err)) = joined {
                    return Err(fail(format!("introspection failed: {err}")));
                }
            }
            let exported = crate::api::Share {
                sampled: sample.len() as u64,
                accepted: exported_accepted.load(Ordering::Relaxed),
                in_flight: exported_in_flight.load(Ordering::Relaxed),
            };
            let live = self
                .check_live(authlete, &state)
                .await
                .map_err(|err| fail(format!("introspection failed: {err}")))?;
            tracing::info!(
                records = considered,
                with_refresh_tokens = seen,
                exported = %exported,
                live = %live,
                "refresh token samples verified"
            );
            report.primary = live.sampled;
            report.secondary =
                state.matching.load(Ordering::Relaxed) + state.mismatched.load(Ordering::Relaxed);
            report.samples = Some(crate::api::TokenSamples { live, exported });
        }
        let drifted = state.drifted.lock().map(|d| d.clone()).unwrap_or_default();
        report.matching = state.matching.load(Ordering::Relaxed);
        report.mismatched = state.mismatched.load(Ordering::Relaxed);
        report.missing_on_target = state.missing.load(Ordering::Relaxed);
        report.extra_on_target = state.extra.load(Ordering::Relaxed);
        report.in_flight = state.in_flight.load(Ordering::Relaxed);
        report.drifted_keys = drifted.iter().map(Key::redacted).collect();
        if repair {
            // Clients re-sync by key (journaled); a sampled token is copied
            // again from its record (idempotent: the old pair goes first).
            let repairs = state.repairs.lock().map(|r| r.clone()).unwrap_or_default();
            report.repaired = repairs.len() as u64;
            let mut clients = Vec::new();
            for key in repairs {
                match &key {
                    Key::Client { .. } => clients.push(Change::sync(key)),
                    // A refresh token a client holds that Authlete refuses
                    // has no record to copy it from: its next refresh
                    // creates it (lazy capture), or the fallback after the
                    // flip does.
                    Key::Authorization { .. } | Key::Session { .. } => {}
                }
            }
            self.recorder.record(clients).await;
        }
        Ok(report)
    }
}

impl Verifier {
    fn busy(&self) -> Busy {
        Busy {
            sync: self.sync.clone(),
            recorder: self.recorder.clone(),
        }
    }

    /// Introspects the refresh tokens of the live sample at Authlete: each
    /// must be active for its client. Counted into `state` like the
    /// exported sample (a refused one is drift: a client holds it).
    async fn check_live(
        &self,
        authlete: &Arc<crate::servers::authlete::Authlete>,
        state: &Arc<Tally>,
    ) -> Result<crate::api::Share, ApiError> {
        let sample = self
            .live
            .as_ref()
            .map(|live| live.snapshot())
            .unwrap_or_default();
        let mut share = crate::api::Share {
            sampled: sample.len() as u64,
            ..crate::api::Share::default()
        };
        let mut checks = tokio::task::JoinSet::new();
        for token in sample {
            if token.seen_at.elapsed() < LIVE_SETTLE && self.sync.busy_lanes() > 0 {
                share.in_flight += 1;
                state.in_flight.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let authlete = Arc::clone(authlete);
            checks.spawn(async move {
                let info = authlete
                    .introspect(token.refresh_token.expose(), true)
                    .await?;
                Ok::<_, ApiError>((token, info))
            });
        }
        while let Some(joined) = checks.join_next().await {
            let Ok(result) = joined else { continue };
            let (token, info) = result?;
            let key = match &token.subject {
                Some(subject) => Key::Authorization {
                    subject: subject.clone(),
                    client_id: token.client_id.clone(),
                },
                None => Key::Client {
                    client_id: token.client_id.clone(),
                },
            };
            match info {
                Some(info) if info.client_id == token.client_id => {
                    share.accepted += 1;
                    state.matching.fetch_add(1, Ordering::Relaxed);
                }
                Some(_) => {
                    state.mismatched.fetch_add(1, Ordering::Relaxed);
                    state.drifted(&key);
                }
                None => {
                    state.missing.fetch_add(1, Ordering::Relaxed);
                    state.drifted(&key);
                }
            }
        }
        Ok(share)
    }
}

/// One lookup of a verify pass.
type Lookup = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send>>;

#[derive(Debug, Default)]
struct Tally {
    list: usize,
    matching: AtomicU64,
    mismatched: AtomicU64,
    missing: AtomicU64,
    extra: AtomicU64,
    in_flight: AtomicU64,
    found_on_secondary: AtomicU64,
    new_on_primary: AtomicU64,
    idle_behind: AtomicU64,
    drifted: std::sync::Mutex<Vec<Key>>,
    repairs: std::sync::Mutex<Vec<Key>>,
}

/// Most keys kept for repair per dataset in one verify.
const MAX_REPAIRS: usize = 1_000_000;

impl Tally {
    fn drifted(&self, key: &Key) {
        if let Ok(mut drifted) = self.drifted.lock()
            && drifted.len() < self.list
        {
            drifted.push(key.clone());
        }
        if let Ok(mut repairs) = self.repairs.lock()
            && repairs.len() < MAX_REPAIRS
        {
            repairs.push(key.clone());
        }
    }
}

async fn read_secondary(
    dataset: Dataset,
    secondary: &Connect2id,
    key: &Key,
) -> Result<Option<Value>, ApiError> {
    let _ = dataset;
    match key {
        Key::Client { client_id } => secondary.get_client(client_id).await,
        Key::Authorization { subject, client_id } => {
            secondary.get_authorization(subject, client_id).await
        }
        Key::Session { sid } => secondary.get_session(sid).await,
    }
}

/// Whether a key's sync is under way: here (its lane busy or queued) or,
/// in a fleet, anywhere (a change of it still in the shared journal). The
/// fleet-wide look costs a query, so it is made only for keys that
/// differ.
#[derive(Clone)]
struct Busy {
    sync: SyncHandle,
    recorder: crate::sync::Recorder,
}

impl Busy {
    async fn now(&self, key: &Key) -> bool {
        self.sync.is_busy(key) || self.recorder.pending_in_store(key).await
    }
}

async fn compare_one(
    dataset: Dataset,
    primary: &Connect2id,
    secondary: &Connect2id,
    busy: &Busy,
    tally: &Tally,
    key: Key,
    record: Value,
) -> Result<(), ApiError> {
    let on_secondary = read_secondary(dataset, secondary, &key).await?;
    if on_secondary.is_some() {
        tally.found_on_secondary.fetch_add(1, Ordering::Relaxed);
    }
    if busy.sync.is_busy(&key) {
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    if let Some(other) = &on_secondary
        && verdict(dataset, &record, other) == Verdict::Equal
    {
        tally.matching.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    // Different or missing: read both sides again, in case the record
    // changed while the export streamed.
    let now_primary = read_secondary(dataset, primary, &key).await?;
    let now_secondary = read_secondary(dataset, secondary, &key).await?;
    if busy.now(&key).await {
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    match (now_primary, now_secondary) {
        (Some(p), Some(s)) => match verdict(dataset, &p, &s) {
            Verdict::Equal => {
                tally.matching.fetch_add(1, Ordering::Relaxed);
            }
            // After a cutover the old server is the secondary, kept only
            // for a rollback, whose pre-flight touches every session last
            // used earlier there; and the new primary's last-used times
            // of sessions nobody used since are those of their import
            // (a real server sets "now"), not uses. Reported, not drift.
            Verdict::IdleBehind if primary.server() == crate::model::Side::Target => {
                tally.idle_behind.fetch_add(1, Ordering::Relaxed);
                tally.matching.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::IdleBehind => {
                tally.idle_behind.fetch_add(1, Ordering::Relaxed);
                tally.mismatched.fetch_add(1, Ordering::Relaxed);
                tally.drifted(&key);
            }
            Verdict::Differs => {
                tally.mismatched.fetch_add(1, Ordering::Relaxed);
                tally.drifted(&key);
            }
        },
        (None, None) => {
            // Deleted on both meanwhile: nothing to compare.
        }
        (Some(_), None) => {
            tally.missing.fetch_add(1, Ordering::Relaxed);
            tally.drifted(&key);
        }
        (None, Some(_)) => {
            // Deleted on the primary since the export: the secondary keeps
            // a record the primary no longer has.
            tally.extra.fetch_add(1, Ordering::Relaxed);
            tally.drifted(&key);
        }
    }
    Ok(())
}

/// How a secondary record compares with the primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Equal,
    /// Equal, but a session last used earlier on the secondary: it would
    /// idle out there first.
    IdleBehind,
    Differs,
}

fn verdict(dataset: Dataset, primary: &Value, secondary: &Value) -> Verdict {
    if dataset.comparable(primary) != dataset.comparable(secondary) {
        Verdict::Differs
    } else if dataset == Dataset::Sessions
        && idle::behind(primary, secondary, idle::LAST_USED_TOLERANCE)
    {
        Verdict::IdleBehind
    } else {
        Verdict::Equal
    }
}

async fn check_extra(
    primary: &Connect2id,
    busy: &Busy,
    tally: &Tally,
    key: Key,
) -> Result<(), ApiError> {
    if busy.now(&key).await {
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        tally.new_on_primary.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let on_primary = match &key {
        Key::Client { client_id } => primary.get_client(client_id).await?,
        Key::Authorization { subject, client_id } => {
            primary.get_authorization(subject, client_id).await?
        }
        Key::Session { sid } => primary.get_session(sid).await?,
    };
    if on_primary.is_some() {
        // Created on the primary after its export streamed past: compared
        // next time, not drift now.
        tally.new_on_primary.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.extra.fetch_add(1, Ordering::Relaxed);
        tally.drifted(&key);
    }
    Ok(())
}

/// A Bloom filter that grows: a list of fixed filters, each twice the
/// capacity of the previous, at 20 bits and 14 hashes per key (false
/// positive rate about 1 in 10,000).
#[derive(Debug)]
struct ScalableBloom {
    filters: Vec<Bloom>,
}

#[derive(Debug)]
struct Bloom {
    bits: Vec<u64>,
    capacity: u64,
    count: u64,
}

const BITS_PER_KEY: u64 = 20;
const HASHES: u64 = 14;
const FIRST_CAPACITY: u64 = 1 << 16;

impl Bloom {
    fn new(capacity: u64) -> Self {
        let words = (capacity * BITS_PER_KEY).div_ceil(64) as usize;
        Self {
            bits: vec![0; words.max(1)],
            capacity,
            count: 0,
        }
    }

    fn positions(&self, key: &str) -> impl Iterator<Item = u64> + use<> {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let bytes = digest.as_ref();
        let h1 = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
        let h2 = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()) | 1;
        let size = self.bits.len() as u64 * 64;
        (0..HASHES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % size)
    }

    fn insert(&mut self, key: &str) {
        for bit in self.positions(key).collect::<Vec<_>>() {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.count += 1;
    }

    fn contains(&self, key: &str) -> bool {
        self.positions(key)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

impl ScalableBloom {
    fn new() -> Self {
        Self {
            filters: vec![Bloom::new(FIRST_CAPACITY)],
        }
    }

    fn insert(&mut self, key: &str) {
        let full = self.filters.last().is_none_or(|f| f.count >= f.capacity);
        if full {
            let capacity = self
                .filters
                .last()
                .map_or(FIRST_CAPACITY, |f| f.capacity * 2);
            self.filters.push(Bloom::new(capacity));
        }
        if let Some(filter) = self.filters.last_mut() {
            filter.insert(key);
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.filters.iter().any(|f| f.contains(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_has_no_false_negatives_and_few_false_positives() {
        let mut filter = ScalableBloom::new();
        for i in 0..200_000 {
            filter.insert(&format!("client:{i}"));
        }
        assert!((0..200_000).all(|i| filter.contains(&format!("client:{i}"))));
        let false_positives = (0..100_000)
            .filter(|i| filter.contains(&format!("other:{i}")))
            .count();
        assert!(
            false_positives < 100,
            "{false_positives} false positives in 100000"
        );
        assert!(filter.filters.len() > 1, "the filter grew");
    }

    #[test]
    fn drift_sums_the_three_kinds() {
        let report = DatasetReport {
            mismatched: 1,
            missing_on_target: 2,
            extra_on_target: 3,
            in_flight: 10,
            ..DatasetReport::default()
        };
        assert_eq!(report.drift(), 6);
    }
}
