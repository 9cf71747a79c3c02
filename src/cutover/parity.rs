//! Secret-key parity, proven by what the keys do (DESIGN.md §6,
//! domain-gaps Q2.7, Q1.9, Q1.20).
//!
//! A Connect2id server publishes only its public keys at `/jwks.json`. The
//! keys that decide whether the new server accepts what the old one issued
//! are secret: the SID HMAC key (`hmac`: every session cookie), the
//! refresh-token encryption key (`refresh-token-encrypt`: every long-lived
//! refresh token), and the keys behind self-contained access tokens
//! (encryption, the pairwise-subject key). A target with the same public
//! keys and other secret ones passes every comparison of published
//! material, then at the flip every SID and refresh token fails and
//! pairwise subjects change. So each key is probed by using it:
//!
//! - `hmac`: live sessions of the primary (the first of its export) are
//!   read at the secondary under the primary's full SID. Not found, but
//!   found among the subject's sessions there under the same key with
//!   another HMAC: the key differs.
//! - `refresh-token-encrypt`: refresh tokens seen in live token responses
//!   (topped up with the `rft` of exported records) are inspected at both
//!   (`/authz-store/rest/v3/inspection`). Known to the primary, its record
//!   on the secondary, yet unknown to the secondary: the key differs.
//! - `access-token`: self-contained access tokens seen in live token
//!   responses are introspected at both with their client's own
//!   credentials: inactive at the secondary or another `sub` there means a
//!   different key (or pairwise-subject key).
//!
//! Values seen in traffic are **secrets held in memory only**: a few dozen
//! of the latest ([`MAX_SAMPLES`] per kind), never logged, journaled or
//! persisted, gone at a restart. The pre-flight runs the probes and refuses
//! the flip on any key found different (not forceable); a background task
//! runs them every [`DEFAULT_PARITY_INTERVAL`] while mirroring and
//! publishes the result in `/status` (`key_parity`) and the
//! `handover_cutover_key_parity` gauge.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::api::{Check, KeyParity, KeyProbe};
use crate::metrics::CutoverMetrics;
use crate::model::{Dataset, Key, Secret, TokenKind, sid_key};
use crate::servers::Servers;
use crate::servers::connect2id::Connect2id;
use crate::servers::export::Export;

/// Latest values kept per kind (refresh tokens, access tokens).
pub const MAX_SAMPLES: usize = 64;
/// Values probed per key at most.
pub const PROBES_PER_KEY: usize = 20;
/// How often the probes run while mirroring.
pub const DEFAULT_PARITY_INTERVAL: Duration = Duration::from_secs(60);

/// The `kid` of the SID HMAC key.
pub const HMAC_KEY: &str = "hmac";
/// The `kid` of the refresh-token encryption key.
pub const REFRESH_TOKEN_KEY: &str = "refresh-token-encrypt";
/// The keys behind self-contained access tokens (no single `kid`).
pub const ACCESS_TOKEN_KEY: &str = "access-token";

/// A self-contained access token and the credentials of its client.
struct AccessSample {
    token: Secret,
    client_auth: Secret,
}

/// Tokens seen in live traffic: the latest few, in memory only.
#[derive(Default)]
pub struct Samples {
    refresh: Mutex<VecDeque<Secret>>,
    access: Mutex<VecDeque<AccessSample>>,
}

impl std::fmt::Debug for Samples {
    // The samples are secrets: only their counts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Samples")
            .field("refresh", &self.refresh.lock().map_or(0, |s| s.len()))
            .field("access", &self.access.lock().map_or(0, |s| s.len()))
            .finish()
    }
}

fn keep<T>(ring: &Mutex<VecDeque<T>>, value: T) {
    let mut ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
    if ring.len() >= MAX_SAMPLES {
        ring.pop_front();
    }
    ring.push_back(value);
}

impl Samples {
    /// Keeps the tokens of a token response the primary just gave: its
    /// refresh token, and its access token if self-contained (with the
    /// client's credentials, to introspect it as the client would).
    pub fn observe(
        &self,
        access_token: Option<&str>,
        refresh_token: Option<&str>,
        client_auth: Option<&str>,
    ) {
        if let Some(token) = refresh_token {
            keep(&self.refresh, Secret::new(token));
        }
        if let (Some(token), Some(auth)) = (access_token, client_auth)
            && crate::triggers::looks_like_jwt(token)
        {
            keep(
                &self.access,
                AccessSample {
                    token: Secret::new(token),
                    client_auth: Secret::new(auth),
                },
            );
        }
    }

    fn refresh_tokens(&self) -> Vec<Secret> {
        self.refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .take(PROBES_PER_KEY)
            .cloned()
            .collect()
    }

    fn access_tokens(&self) -> Vec<(Secret, Secret)> {
        self.access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .take(PROBES_PER_KEY)
            .map(|sample| (sample.token.clone(), sample.client_auth.clone()))
            .collect()
    }
}

/// One probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Equal,
    Differ,
    Inconclusive,
}

fn tally(key: &str, verdicts: &[Verdict]) -> KeyProbe {
    let count = |wanted| verdicts.iter().filter(|v| **v == wanted).count() as u64;
    KeyProbe {
        key: key.to_owned(),
        probed: verdicts.len() as u64,
        equal: count(Verdict::Equal),
        differ: count(Verdict::Differ),
        inconclusive: count(Verdict::Inconclusive),
    }
}

/// The parity prover.
#[derive(Debug)]
pub struct Parity {
    servers: Arc<Servers>,
    samples: Arc<Samples>,
    metrics: CutoverMetrics,
    last: Mutex<Option<KeyParity>>,
}

impl Parity {
    /// A prover between the two servers, fed by `samples`.
    pub fn new(servers: Arc<Servers>, samples: Arc<Samples>, metrics: CutoverMetrics) -> Self {
        Self {
            servers,
            samples,
            metrics,
            last: Mutex::new(None),
        }
    }

    /// The latest result, for `/status`.
    pub fn status(&self) -> Option<KeyParity> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Probes every secret key of the secondary against the primary's now,
    /// and publishes the result.
    pub async fn probe(&self) -> Vec<KeyProbe> {
        let primary = self.servers.primary_api();
        let secondary = self.servers.secondary_api();
        let (sessions, refresh, access) = tokio::join!(
            probe_sessions(primary, secondary),
            probe_refresh_tokens(primary, secondary, self.samples.refresh_tokens()),
            probe_access_tokens(primary, secondary, self.samples.access_tokens()),
        );
        let probes = vec![
            tally(HMAC_KEY, &sessions),
            tally(REFRESH_TOKEN_KEY, &refresh),
            tally(ACCESS_TOKEN_KEY, &access),
        ];
        for probe in &probes {
            let key = match probe.key.as_str() {
                HMAC_KEY => HMAC_KEY,
                REFRESH_TOKEN_KEY => REFRESH_TOKEN_KEY,
                _ => ACCESS_TOKEN_KEY,
            };
            self.metrics.set_key_parity(key, probe.differ == 0);
        }
        let checked_at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(KeyParity {
            ok: probes.iter().all(|probe| probe.differ == 0),
            checked_at_ms,
            keys: probes.clone(),
        });
        probes
    }

    /// Runs the probes every `interval` until `stop`, unless `active`
    /// says there is no secondary to prove (completed, or an Authlete
    /// target).
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        active: impl Fn() -> bool + Send,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if !active() {
                continue;
            }
            let probes = tokio::select! {
                () = stop.cancelled() => return,
                probes = self.probe() => probes,
            };
            if let Some(differs) = probes.iter().find(|probe| probe.differ > 0) {
                tracing::error!(
                    key = differs.key.as_str(),
                    differ = differs.differ,
                    probed = differs.probed,
                    "the secondary's secret key differs from the primary's: a cutover now would log users out"
                );
            }
        }
    }
}

/// The pre-flight checks of a probe: one per key, never forceable.
pub fn checks(probes: &[KeyProbe], new_primary: &str, old_primary: &str) -> Vec<Check> {
    probes
        .iter()
        .map(|probe| {
            let (title, what, proof, consequence) = match probe.key.as_str() {
                HMAC_KEY => (
                    "SID HMAC key (\"hmac\") equal",
                    "sessions",
                    format!("found at the {new_primary} under the {old_primary}'s SID"),
                    "every session cookie",
                ),
                REFRESH_TOKEN_KEY => (
                    "refresh-token key (\"refresh-token-encrypt\") equal",
                    "refresh tokens",
                    format!("decrypt at the {new_primary}"),
                    "every long-lived refresh token",
                ),
                _ => (
                    "access-token keys equal",
                    "self-contained access tokens",
                    format!("active at the {new_primary} with the same subject"),
                    "every self-contained access token (or pairwise subject)",
                ),
            };
            let title = title.to_owned();
            let mut detail = format!("probed {} {what}: {} {proof}", probe.probed, probe.equal);
            if probe.inconclusive > 0 {
                detail.push_str(&format!(
                    "; {} inconclusive (expired or not synced yet)",
                    probe.inconclusive
                ));
            }
            if probe.probed == 0 {
                detail = format!("nothing to probe yet: no {what} seen");
            }
            if probe.differ == 0 {
                Check::pass(title, detail)
            } else {
                Check::fail(
                    title,
                    format!(
                        "the {new_primary}'s \"{}\" key differs from the {old_primary}'s: {} of {} {what} refused there ({consequence} would fail after the flip); give the {new_primary} the {old_primary}'s key",
                        probe.key, probe.differ, probe.probed
                    ),
                    false,
                )
            }
        })
        .collect()
}

/// The SID HMAC key: the first live sessions of the primary's export, read
/// at the secondary under the primary's SID.
async fn probe_sessions(primary: &Connect2id, secondary: &Connect2id) -> Vec<Verdict> {
    let sessions = first_records(primary, Dataset::Sessions, PROBES_PER_KEY, |key, _| {
        matches!(key, Key::Session { .. })
    })
    .await;
    let mut probes = tokio::task::JoinSet::new();
    for (key, record) in sessions {
        let Key::Session { sid } = key else { continue };
        let secondary = secondary.clone();
        probes.spawn(async move {
            match secondary.get_session(&sid).await {
                Ok(Some(_)) => Verdict::Equal,
                Ok(None) => {
                    let subject = record
                        .get("sub")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    match secondary.subject_sessions(subject).await {
                        Ok(sessions)
                            if sessions
                                .keys()
                                .any(|other| sid_key(other) == sid_key(&sid) && *other != sid) =>
                        {
                            Verdict::Differ
                        }
                        _ => Verdict::Inconclusive,
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "session probe failed");
                    Verdict::Inconclusive
                }
            }
        });
    }
    collect(probes).await
}

/// The verdicts of probes run at once.
async fn collect(mut probes: tokio::task::JoinSet<Verdict>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    while let Some(joined) = probes.join_next().await {
        verdicts.push(joined.unwrap_or(Verdict::Inconclusive));
    }
    verdicts
}

/// The refresh-token encryption key: live refresh tokens, topped up with
/// exported `rft` values, inspected at both.
async fn probe_refresh_tokens(
    primary: &Connect2id,
    secondary: &Connect2id,
    mut tokens: Vec<Secret>,
) -> Vec<Verdict> {
    if tokens.len() < PROBES_PER_KEY {
        let wanted = PROBES_PER_KEY - tokens.len();
        let exported = first_records(primary, Dataset::Authorizations, wanted, |_, record| {
            record.get("rft").and_then(Value::as_str).is_some()
        })
        .await;
        tokens.extend(
            exported.iter().filter_map(|(_, record)| {
                record.get("rft").and_then(Value::as_str).map(Secret::new)
            }),
        );
    }
    let mut probes = tokio::task::JoinSet::new();
    for token in tokens {
        let (primary, secondary) = (primary.clone(), secondary.clone());
        probes.spawn(async move {
            let token = token.expose();
            let Ok(Some(record)) = primary.inspect(token, TokenKind::Refresh).await else {
                // Rotated away, revoked or self-contained since: proves
                // nothing.
                return Verdict::Inconclusive;
            };
            // Only an answer "unknown token" counts against the key: a
            // failed call (a slow or busy secondary timing out, a `503`)
            // says nothing about it.
            match secondary.inspect(token, TokenKind::Refresh).await {
                Ok(Some(_)) => return Verdict::Equal,
                Ok(None) => {}
                Err(_) => return Verdict::Inconclusive,
            }
            // Unknown there. A key, if the secondary holds the very record
            // the token belongs to; else the sync has not caught up (or the
            // record moved on meanwhile): look again, then decide.
            let Some(Key::Authorization { subject, client_id }) = Key::of_authorization(&record)
            else {
                return Verdict::Inconclusive;
            };
            // A client replaced there by delete and create may have taken
            // its tokens with it (a delete that cascades revokes them):
            // no key's doing.
            if secondary.client_was_replaced(&client_id) {
                return Verdict::Inconclusive;
            }
            let same = |copy: &Value| {
                Dataset::Authorizations.comparable(copy)
                    == Dataset::Authorizations.comparable(&record)
            };
            match secondary.get_authorization(&subject, &client_id).await {
                Ok(Some(copy)) if same(&copy) => {}
                _ => return Verdict::Inconclusive,
            }
            match secondary.inspect(token, TokenKind::Refresh).await {
                Ok(Some(_)) => return Verdict::Equal,
                Ok(None) => {}
                Err(_) => return Verdict::Inconclusive,
            }
            match primary.get_authorization(&subject, &client_id).await {
                Ok(Some(now)) if same(&now) => Verdict::Differ,
                _ => Verdict::Inconclusive,
            }
        });
    }
    collect(probes).await
}

/// The access-token keys: live self-contained access tokens introspected
/// at both with their client's credentials.
async fn probe_access_tokens(
    primary: &Connect2id,
    secondary: &Connect2id,
    samples: Vec<(Secret, Secret)>,
) -> Vec<Verdict> {
    let mut probes = tokio::task::JoinSet::new();
    for (token, client_auth) in samples {
        let (primary, secondary) = (primary.clone(), secondary.clone());
        probes.spawn(async move {
            let (token, auth) = (token.expose(), client_auth.expose());
            let Ok(Some(subject)) = primary.subject_via_introspection(token, auth).await else {
                return Verdict::Inconclusive;
            };
            match secondary.subject_via_introspection(token, auth).await {
                Ok(Some(other)) if other == subject => Verdict::Equal,
                Ok(Some(_)) => Verdict::Differ,
                Ok(None) => {
                    // Inactive there: a key, unless the client is not there
                    // yet, the token was revoked meanwhile, or the client
                    // was replaced there by delete and create (a delete
                    // that cascades revokes its tokens: no key's doing).
                    let Some((_, client_id)) = crate::triggers::jwt_subject_and_client(token)
                    else {
                        return Verdict::Inconclusive;
                    };
                    if secondary.client_was_replaced(&client_id) {
                        return Verdict::Inconclusive;
                    }
                    let client_there =
                        matches!(secondary.get_client(&client_id).await, Ok(Some(_)));
                    let still_active = matches!(
                        primary.subject_via_introspection(token, auth).await,
                        Ok(Some(_))
                    );
                    if client_there && still_active {
                        Verdict::Differ
                    } else {
                        Verdict::Inconclusive
                    }
                }
                Err(_) => Verdict::Inconclusive,
            }
        });
    }
    collect(probes).await
}

/// The first `wanted` records of a dataset's export that `select` keeps
/// (the rest of the export is not read).
async fn first_records(
    server: &Connect2id,
    dataset: Dataset,
    wanted: usize,
    select: impl Fn(&Key, &Value) -> bool,
) -> Vec<(Key, Value)> {
    let mut found = Vec::new();
    if wanted == 0 {
        return found;
    }
    let mut export = match Export::open(server, dataset).await {
        Ok(export) => export,
        Err(err) => {
            tracing::warn!(error = %err, dataset = dataset.as_str(), "cannot read the export to probe keys");
            return found;
        }
    };
    while let Ok(Some(records)) = export.next().await {
        for record in records {
            let Some(key) = record.key else { continue };
            let Ok(value) = serde_json::from_slice::<Value>(&record.json) else {
                continue;
            };
            if select(&key, &value) {
                found.push((key, value));
                if found.len() >= wanted {
                    return found;
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_the_latest_few_and_never_print_them() {
        let samples = Samples::default();
        for i in 0..(MAX_SAMPLES + 10) {
            samples.observe(None, Some(&format!("rt-{i}")), None);
        }
        samples.observe(Some("opaque.identifier"), None, Some("Basic x"));
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.c2ln";
        samples.observe(Some(jwt), None, Some("Basic x"));
        let refresh = samples.refresh_tokens();
        assert_eq!(refresh.len(), PROBES_PER_KEY);
        assert_eq!(refresh[0].expose(), format!("rt-{}", MAX_SAMPLES + 9));
        assert_eq!(samples.access_tokens().len(), 1);
        let printed = format!("{samples:?}");
        assert!(!printed.contains("rt-"), "{printed}");
    }

    #[test]
    fn a_key_found_different_fails_unforceably_and_names_the_key() {
        let probes = [
            tally(HMAC_KEY, &[Verdict::Equal, Verdict::Differ]),
            tally(REFRESH_TOKEN_KEY, &[Verdict::Equal, Verdict::Inconclusive]),
            tally(ACCESS_TOKEN_KEY, &[]),
        ];
        let checks = checks(&probes, "target", "source");
        assert!(!checks[0].ok && !checks[0].forceable);
        assert!(
            checks[0].detail.contains("\"hmac\" key differs"),
            "{}",
            checks[0].detail
        );
        assert!(checks[1].ok);
        assert_eq!(
            checks[1].detail,
            "probed 2 refresh tokens: 1 decrypt at the target; 1 inconclusive (expired or not synced yet)"
        );
        assert!(checks[2].ok && checks[2].detail.starts_with("nothing to probe yet"));
    }
}
