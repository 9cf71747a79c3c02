//! The admin API's contract (DESIGN.md §7), typed: every request and answer
//! of the operator endpoints, and [`AdminClient`], the client the CLI, the
//! demo and the tests use. The server (`admin.rs`) answers with these types
//! and the CLI reads them, so neither end defines the other's wire format.
//! `tests/golden.rs` pins their JSON byte for byte: other versions' CLIs and
//! operators' scripts read it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Dataset, Phase, Side};

// ---------------------------------------------------------------------------
// GET /status

/// `GET /status`, the operator's one-look view (DESIGN.md §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The migration phase.
    pub phase: Phase,
    /// Increments at every flip of the primary.
    pub epoch: u64,
    /// Which side serves traffic.
    pub primary: Side,
    /// Whether `/readyz` reports ready.
    pub ready: bool,
    /// The journal.
    pub journal: JournalStatus,
    /// The backfill.
    pub backfill: BackfillStatus,
    /// What the operator must act on (changes that could not be tracked),
    /// one sentence each; empty when all is well.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The sync's concurrency and the secondary's observed latency: tells
    /// "the target is slow" from "we are throttled".
    #[serde(default)]
    pub sync: SyncStatus,
    /// The latest functional proof that the secondary holds the primary's
    /// secret keys (absent before the first probe, and for an Authlete
    /// target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_parity: Option<KeyParity>,
    /// The fallback to the previous primary after a flip (requests whose
    /// state lives only there are replayed at it); absent before any flip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackStatus>,
    /// Fleet mode (`[store] kind = "postgres"`): the instances sharing the
    /// store; absent with a local journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// The fleet part of [`Status`]: every registered instance and its lease.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetStatus {
    /// This instance's name.
    pub this: String,
    /// Every registered instance, by name.
    pub instances: Vec<FleetMember>,
}

/// One instance of the fleet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetMember {
    /// Its name (unique per running process).
    pub instance: String,
    /// Its admin API.
    pub admin_url: String,
    /// Its handover version.
    pub version: String,
    /// The phase it saw at its last renewal.
    pub phase: String,
    /// Time since its last renewal.
    pub lease_age_ms: u64,
    /// Whether its lease is live.
    pub live: bool,
}

/// The sync part of [`Status`]: how hard it may push the server it writes
/// to (the secondary), and how that server answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The server the sync writes to now.
    pub secondary: Side,
    /// Jobs allowed at once right now (the adaptive limit).
    pub concurrency_limit: usize,
    /// The most the limit may reach (`sync.max_concurrency`).
    pub max_concurrency: usize,
    /// Jobs running (each holding one permit).
    pub in_flight: usize,
    /// Jobs waiting for a permit.
    pub waiting: usize,
    /// Latency of the secondary's recent management-API answers (the last
    /// 30 s), in milliseconds.
    pub latency_ms: LatencyMs,
    /// The minimum latency the limit is judged against, in milliseconds
    /// (0 until known).
    pub min_latency_ms: f64,
    /// Milliseconds new jobs still wait for the server's `Retry-After` (0:
    /// not throttled).
    pub throttled_ms: u64,
    /// Answers `429`/`503` from the secondary since start.
    pub overloaded: u64,
    /// Changes applied per second, over the last 10 seconds.
    pub rate: f64,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Answers counted.
    pub samples: usize,
}

/// The running result of the secret-key parity probes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyParity {
    /// Whether no key was found different.
    pub ok: bool,
    /// When the probes ran (epoch milliseconds).
    pub checked_at_ms: u64,
    /// One entry per secret key.
    pub keys: Vec<KeyProbe>,
}

/// What probing one secret key found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyProbe {
    /// The key, by its JWK `kid` where it has one (`hmac`,
    /// `refresh-token-encrypt`), else what it protects (`access-token`).
    pub key: String,
    /// Values probed (sessions, refresh tokens, access tokens).
    pub probed: u64,
    /// Of those, accepted by the secondary as by the primary.
    pub equal: u64,
    /// Of those, refused or read differently by the secondary: the key
    /// differs.
    pub differ: u64,
    /// Probes that proved nothing (the value expired or is not synced yet).
    #[serde(default)]
    pub inconclusive: u64,
}

/// The fallback part of [`Status`]: how long the previous primary is still
/// asked, and how often it was. An SRE completes the migration once the
/// refresh fallback is no longer used (or its window is over).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackStatus {
    /// The previous primary.
    pub previous: Side,
    /// When the primary flipped (epoch ms).
    pub flipped_at_ms: u64,
    /// Until when logins in progress, codes and identifier access tokens
    /// are served from the previous primary (epoch ms).
    pub open_until_ms: u64,
    /// An Authlete target: until when a refresh the new server refuses is
    /// replayed at the old Connect2id (epoch ms; absent for a Connect2id
    /// target, or after a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_open_until_ms: Option<u64>,
    /// Requests replayed at the previous primary since the start, by
    /// dataset (`tokens`: refreshes of refresh tokens Authlete did not
    /// hold).
    pub used: BTreeMap<Dataset, u64>,
}

/// The journal part of [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JournalStatus {
    /// Changes journaled and not yet applied to the secondary.
    pub depth: u64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_age_ms: u64,
    /// How far the secondary is behind the primary, in milliseconds: the
    /// age of the oldest change not yet applied (0 when caught up).
    pub lag_ms: u64,
    /// Changes the sync gave up on (see `GET /dead-letters`).
    pub dead_letters: u64,
    /// The last sequence number handed out.
    #[serde(default)]
    pub last_seq: Option<u64>,
    /// Every record below this sequence number is applied.
    #[serde(default)]
    pub applied_cursor: u64,
    /// Bytes of journal files on disk.
    #[serde(default)]
    pub bytes_on_disk: u64,
    /// Successful triggers whose change could not be named (response too
    /// large, cut off or malformed) since the last verify that covered
    /// them (see `warnings`).
    #[serde(default)]
    pub untracked: u64,
}

/// The backfill part of [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackfillStatus {
    /// Where the backfill is.
    pub state: BackfillState,
    /// Records per second allowed (0 = unlimited).
    #[serde(default)]
    pub rate_limit: u64,
    /// Writes in flight at once.
    #[serde(default)]
    pub concurrency: usize,
    /// Time spent in the current (or last) pass, in milliseconds.
    #[serde(default)]
    pub elapsed_ms: u64,
    /// Per-dataset progress.
    pub datasets: BTreeMap<Dataset, DatasetProgress>,
    /// A fleet: the instance running the backfill, when one does. On the
    /// other instances, `datasets` is the runner's shared checkpoint
    /// (written about once a second). Absent with a local journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<BackfillRunner>,
}

/// The instance of a fleet that runs the backfill.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRunner {
    /// Its name in the fleet.
    pub instance: String,
    /// Its admin API (pause, resume and settings go there).
    pub admin_url: String,
}

/// The backfill's overall state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    /// Never started (or nothing to do).
    #[default]
    Idle,
    /// Copying.
    Running,
    /// Paused by the operator.
    Paused,
    /// Every dataset copied.
    Done,
    /// An export failed after retries; `start` resumes from the checkpoints.
    Failed,
}

impl BackfillState {
    /// The `/status` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Whether the backfill has stopped by itself (done or failed).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

impl std::fmt::Display for BackfillState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One dataset's backfill progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatasetProgress {
    /// Records in the export, when known.
    pub total: u64,
    /// Records written to the secondary.
    pub copied: u64,
    /// Records not written because live traffic changed them after the
    /// export began (the sync path copied their current state instead).
    #[serde(default)]
    pub skipped: u64,
    /// Records that could not be copied (see the dead letters).
    pub failed: u64,
    /// Records with nothing to copy, by reason (an Authlete target's
    /// `tokens`: authorizations whose export carries no refresh-token
    /// value, `value_not_exported`, or that issue none, `no_refresh_token`).
    /// Settled, never counted as copied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_copied: BTreeMap<String, u64>,
    /// Of `copied`, values taken from the export that the client may not
    /// hold (Connect2id can rebuild a refresh token into another string):
    /// confirmed only by verify's live sample.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unconfirmed: u64,
    /// Records per second, recently.
    pub rate: f64,
    /// Estimated seconds to go.
    pub eta_s: u64,
    /// Why the dataset failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DatasetProgress {
    /// Records settled (copied, left to the live sync, or failed).
    pub fn settled(&self) -> u64 {
        self.copied + self.skipped + self.failed + self.not_copied.values().sum::<u64>()
    }

    /// The share settled, 0 to 1 (0 while the total is unknown or zero).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            (self.settled() as f64 / self.total as f64).min(1.0)
        }
    }
}

// ---------------------------------------------------------------------------
// POST /verify, GET /verify

/// What to verify.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// One dataset, or every enabled one.
    #[serde(default)]
    pub dataset: Option<Dataset>,
    /// Journal a sync of every drifted key.
    #[serde(default)]
    pub repair: bool,
    /// List at most this many drifted keys per dataset (never their
    /// contents; session ids shortened).
    #[serde(default)]
    pub list: Option<usize>,
}

/// One dataset's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatasetReport {
    /// Records on the primary.
    pub primary: u64,
    /// Records on the secondary.
    pub secondary: u64,
    /// Equal on both.
    pub matching: u64,
    /// On both, different.
    pub mismatched: u64,
    /// On the primary only.
    pub missing_on_target: u64,
    /// On the secondary only.
    pub extra_on_target: u64,
    /// Keys with sync work pending: not drift.
    pub in_flight: u64,
    /// Sessions equal on both sides but last used earlier on the secondary
    /// than on the primary by more than the tolerance: they would idle out
    /// there first. Counted in `mismatched` (drift) while the source is the
    /// primary; after a cutover counted in `matching` (a rollback's
    /// pre-flight touches them, and the new primary's times of sessions
    /// unused since their import are the import's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_expiry_behind: u64,
    /// The first drifted keys, shortened for logs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted_keys: Vec<String>,
    /// Syncs journaled by `repair`.
    #[serde(default)]
    pub repaired: u64,
    /// An Authlete target's `tokens`: the two refresh-token samples, with
    /// what Authlete accepted of each (the counts above add them up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<TokenSamples>,
}

/// For `skip_serializing_if` on counters that are usually zero.
fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl DatasetReport {
    /// Records that differ in any way.
    pub fn drift(&self) -> u64 {
        self.mismatched + self.missing_on_target + self.extra_on_target
    }
}

/// The refresh tokens verify introspected at an Authlete target.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenSamples {
    /// Refresh tokens seen in live traffic (the strings clients hold; kept
    /// in memory only): the measure that matters.
    pub live: Share,
    /// Refresh-token values of the source's export (unconfirmed: a
    /// Connect2id may rebuild a token into another string than the
    /// client's).
    pub exported: Share,
}

/// One sample and what the target accepted of it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Share {
    /// Tokens in the sample.
    pub sampled: u64,
    /// Tokens the target accepted (active, same client).
    pub accepted: u64,
    /// Tokens still being synced: neither accepted nor refused.
    pub in_flight: u64,
}

impl Share {
    /// Tokens checked (sampled, not in flight).
    pub fn checked(&self) -> u64 {
        self.sampled.saturating_sub(self.in_flight)
    }

    /// The accepted share of the checked tokens; `None` when nothing was
    /// checked: not measured, which is never a success.
    pub fn ratio(&self) -> Option<f64> {
        let checked = self.checked();
        (checked > 0).then(|| self.accepted as f64 / checked as f64)
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ratio() {
            Some(ratio) => write!(
                f,
                "{}/{} accepted ({:.1}%)",
                self.accepted,
                self.checked(),
                ratio * 100.0
            )?,
            None => f.write_str("not measured (empty sample)")?,
        }
        if self.in_flight > 0 {
            write!(f, ", {} in flight", self.in_flight)?;
        }
        Ok(())
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Per dataset.
    pub datasets: BTreeMap<Dataset, DatasetReport>,
    /// Sum of drift over all datasets.
    pub drift: u64,
    /// Which side was compared as the primary.
    pub primary: Side,
    /// What could not be measured, with why (an Authlete target without a
    /// live refresh-token sample): a verify that measured nothing for a
    /// dataset has not passed, whatever the drift.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_measured: Vec<String>,
    /// Per tenant of a multi-tenant Connect2id (`sync.tenants`, by
    /// `Tenant-ID`), per dataset; their drift is in `drift` too.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, BTreeMap<Dataset, DatasetReport>>,
}

impl VerifyReport {
    /// No drift, and every dataset measured.
    pub fn passed(&self) -> bool {
        self.drift == 0 && self.not_measured.is_empty()
    }
}

/// `GET /verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyStatus {
    /// The job id.
    pub id: u64,
    /// Where the verify is.
    pub state: VerifyState,
    /// The dataset being verified (none before the first starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Dataset>,
    /// Records looked at in it so far.
    pub scanned: u64,
    /// The report, when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<VerifyReport>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a verify started through the API is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyState {
    /// Still comparing.
    Running,
    /// Finished: the report is there.
    Done,
    /// Could not finish: the error says why.
    Failed,
}

/// One entry of `GET /dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// Its sequence number in the dead-letter log.
    pub seq: u64,
    /// What the change was about (session ids shortened, tokens omitted).
    pub change: String,
    /// Why the sync gave up.
    pub reason: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------
// POST /cutover, /rollback, /complete (and the two-phase variants)

/// What the operator asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlipRequest {
    /// Run the pre-flight checks only.
    #[serde(default)]
    pub dry_run: bool,
    /// Bound on the write pause, in milliseconds (default 2000).
    #[serde(default)]
    pub max_pause_ms: Option<u64>,
    /// Cut over despite dead letters.
    #[serde(default)]
    pub force: bool,
}

/// One pre-flight check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// The figure or the reason.
    pub detail: String,
    /// Whether `force` overrides a failure.
    #[serde(default)]
    pub forceable: bool,
    /// A passing check with something the operator should know before the
    /// flip (it never refuses one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
}

impl Check {
    /// A passing check.
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            forceable: false,
            warning: false,
        }
    }

    /// A failed check; `forceable` if `--force` may override it.
    pub fn fail(check: impl Into<String>, detail: impl Into<String>, forceable: bool) -> Self {
        Self {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            forceable,
            warning: false,
        }
    }

    /// A passing check that warns.
    pub fn warn(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            forceable: false,
            warning: true,
        }
    }
}

/// One step of the flip.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// The step.
    pub step: String,
    /// Whether it completed.
    pub ok: bool,
    /// Milliseconds since the hold began.
    pub at_ms: u64,
    /// The figure.
    pub detail: String,
}

/// How a flip (or a phase move) ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Flipped to the target.
    CutOver,
    /// Flipped back to the source.
    RolledBack,
    /// Syncing stopped for good.
    Completed,
    /// Held, drained and verified; waiting for commit or abort (one of
    /// several instances driven together).
    Prepared,
    /// Started but undone (pause bound exceeded, a step failed, or asked
    /// to): held requests went to the old primary, nothing was lost.
    Aborted,
    /// Not started: a pre-flight check failed or the phase does not allow
    /// it. The default: nothing happened.
    #[default]
    Refused,
    /// `--dry-run`: every pre-flight check passed; nothing was changed.
    DryRunPassed,
    /// The instance could not be asked (set by the CLI, never by a server).
    Unreachable,
}

impl Outcome {
    /// The wire name (`cut-over`, `dry-run-passed`, ...), also the metric
    /// label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CutOver => "cut-over",
            Self::RolledBack => "rolled-back",
            Self::Completed => "completed",
            Self::Prepared => "prepared",
            Self::Aborted => "aborted",
            Self::Refused => "refused",
            Self::DryRunPassed => "dry-run-passed",
            Self::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The outcome, as the command prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlipReport {
    /// How it ended.
    pub outcome: Outcome,
    /// The phase after.
    pub phase: Phase,
    /// The epoch after.
    pub epoch: u64,
    /// The primary after.
    pub primary: Side,
    /// Pre-flight checks.
    pub preflight: Vec<Check>,
    /// Steps of the flip.
    pub steps: Vec<Step>,
    /// How long trigger requests were held, in milliseconds.
    pub pause_ms: u64,
    /// Requests held.
    pub held: u64,
    /// Requests released after the hold.
    pub released: u64,
    /// Requests refused because the hold buffer was full.
    pub rejected: u64,
    /// Why it did not flip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FlipReport {
    /// Whether the operation did what was asked.
    pub fn succeeded(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::CutOver
                | Outcome::RolledBack
                | Outcome::Completed
                | Outcome::Prepared
                | Outcome::DryRunPassed
        )
    }
}

// ---------------------------------------------------------------------------
// GET /dead-letters, POST /backfill/tokens

/// What a tokens-file import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenImport {
    /// Lines read.
    pub lines: u64,
    /// Tokens created (or already held: replays count).
    pub created: u64,
    /// Lines skipped because every token in them had expired.
    pub expired: u64,
    /// Lines that are not a valid token line.
    pub invalid: u64,
    /// Tokens Authlete refused.
    pub failed: u64,
    /// Tokens per second.
    pub rate: f64,
    /// The first problems, by line number (never token values).
    pub errors: Vec<String>,
}

// ---------------------------------------------------------------------------
// The client

/// The default admin API address.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The admin API refused the request.
    #[error("the admin API answered {status}: {message}")]
    Refused {
        /// The status.
        status: u16,
        /// The error description.
        message: String,
    },
    /// The answer was not what this version expects.
    #[error("unexpected answer from the admin API: {0}")]
    Unexpected(String),
}

/// A client of one proxy's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client of the admin API at `base` with the bearer `token`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The admin URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let (status, value, text) = self.call_raw(method, path, body).await?;
        if !status.is_success() {
            let message = value
                .get("error_description")
                .or_else(|| value.get("error"))
                .and_then(Value::as_str)
                .map_or_else(|| text.trim().to_owned(), str::to_owned);
            let hint = if status == StatusCode::UNAUTHORIZED {
                " (set HANDOVER_ADMIN_TOKEN)"
            } else {
                ""
            };
            return Err(Error::Refused {
                status: status.as_u16(),
                message: format!("{message}{hint}"),
            });
        }
        Ok(value)
    }

    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value, String), Error> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::default(),
        };
        let request = builder.body(body).map_err(|err| Error::Unreachable {
            url: url.clone(),
            message: err.to_string(),
        })?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| Error::Unreachable {
                url: url.clone(),
                message: "no answer within 30s".to_owned(),
            })?
            .map_err(|err| Error::Unreachable {
                url: url.clone(),
                message: crate::telemetry::error_chain(&err),
            })?;
        read_answer(&url, response).await
    }

    fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Error> {
        serde_json::from_value(value).map_err(|err| Error::Unexpected(err.to_string()))
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Status, Error> {
        Self::decode(self.call(Method::GET, "/status", None).await?)
    }

    /// `POST /backfill/{operation}` with optional settings.
    pub async fn backfill(
        &self,
        operation: &str,
        rate: Option<u64>,
        concurrency: Option<usize>,
    ) -> Result<Value, Error> {
        let mut body = serde_json::Map::new();
        if let Some(rate) = rate {
            body.insert("rate".to_owned(), rate.into());
        }
        if let Some(concurrency) = concurrency {
            body.insert("concurrency".to_owned(), concurrency.into());
        }
        let body = (!body.is_empty()).then_some(Value::Object(body));
        self.call(Method::POST, &format!("/backfill/{operation}"), body)
            .await
    }

    /// Starts a verify and waits for it, calling `progress` while it runs.
    pub async fn verify(
        &self,
        request: &VerifyRequest,
        mut progress: impl FnMut(&VerifyStatus),
    ) -> Result<VerifyReport, Error> {
        let started = self
            .call(
                Method::POST,
                "/verify",
                Some(
                    serde_json::to_value(request)
                        .map_err(|err| Error::Unexpected(err.to_string()))?,
                ),
            )
            .await?;
        let id = started
            .get("id")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let status: VerifyStatus =
                Self::decode(self.call(Method::GET, "/verify", None).await?)?;
            if status.id != id {
                return Err(Error::Unexpected(format!(
                    "verify {id} was replaced by verify {}",
                    status.id
                )));
            }
            match status.state {
                VerifyState::Done => {
                    return status.report.ok_or_else(|| {
                        Error::Unexpected("a finished verify without a report".to_owned())
                    });
                }
                VerifyState::Failed => {
                    return Err(Error::Refused {
                        status: 500,
                        message: format!("verify failed: {}", status.error.unwrap_or_default()),
                    });
                }
                _ => progress(&status),
            }
        }
    }

    /// `POST` a flip endpoint (`/cutover`, `/rollback`, `/complete`,
    /// `/cutover/prepare`, `/cutover/commit`, `/cutover/abort`). Refusals
    /// and aborts come back as reports, not errors.
    pub async fn flip(&self, path: &str, request: &FlipRequest) -> Result<FlipReport, Error> {
        let body =
            serde_json::to_value(request).map_err(|err| Error::Unexpected(err.to_string()))?;
        let (status, value, text) = self.call_raw(Method::POST, path, Some(body)).await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            return Self::decode(value);
        }
        let message = value
            .get("error_description")
            .and_then(Value::as_str)
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        Err(Error::Refused {
            status: status.as_u16(),
            message,
        })
    }

    /// Streams a tokens file to `POST /backfill/tokens`.
    pub async fn upload_tokens(&self, path: &std::path::Path) -> Result<TokenImport, Error> {
        use tokio::io::AsyncReadExt as _;
        let url = format!("{}/backfill/tokens", self.base);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|err| Error::Unexpected(format!("cannot read {}: {err}", path.display())))?;
        let (mut sender, body) = crate::http::channel_body(8);
        let feeder = tokio::spawn(async move {
            let mut buffer = vec![0u8; 256 << 10];
            loop {
                match file.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if sender
                            .send_data(Bytes::copy_from_slice(&buffer[..n]))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(err) => {
                        sender.abort(Box::new(err));
                        break;
                    }
                }
            }
        });
        let client: Client<HttpConnector, crate::http::Body> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut builder = Request::post(&url).header(header::CONTENT_TYPE, "application/x-ndjson");
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(body)
            .map_err(|err| Error::Unexpected(err.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|err| Error::Unreachable {
                url: url.clone(),
                message: crate::telemetry::error_chain(&err),
            })?;
        let (status, value, text) = read_answer(&url, response).await?;
        let _ = feeder.await;
        if !status.is_success() {
            let message = value
                .get("error_description")
                .and_then(Value::as_str)
                .map_or_else(|| text.trim().to_owned(), str::to_owned);
            return Err(Error::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Self::decode(value)
    }

    /// `GET /dead-letters`.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterView>, Error> {
        Self::decode(self.call(Method::GET, "/dead-letters", None).await?)
    }

    /// `POST /dead-letters/retry`.
    pub async fn retry_dead_letters(&self) -> Result<u64, Error> {
        let answer = self.call(Method::POST, "/dead-letters/retry", None).await?;
        Ok(answer
            .get("retried")
            .and_then(Value::as_u64)
            .unwrap_or_default())
    }
}

/// Reads an admin API answer whole: its status, its JSON (`Null` when it is
/// not JSON) and its text (for messages that are not JSON).
async fn read_answer(
    url: &str,
    response: http::Response<hyper::body::Incoming>,
) -> Result<(StatusCode, Value, String), Error> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|err| Error::Unreachable {
            url: url.to_owned(),
            message: err.to_string(),
        })?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, value, String::from_utf8_lossy(&bytes).into_owned()))
}
