//! Every metric name, as a constant, and the typed recorders the subsystems
//! use. Names start `handover_`, then the subsystem, then a unit suffix.
//! Labels are low-cardinality: never a path, an id or a token.
//!
//! One [`Metrics`] is built in `app.rs` and handed to each subsystem; there
//! are no global statics. Hot-path handles (per method class and status
//! class) are created once up front so a request only touches atomics.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::{Dataset, Side};

/// Downstream requests answered, by method class and status class.
pub const PROXY_REQUESTS_TOTAL: &str = "handover_proxy_requests_total";
/// Time from receiving a request to having its response head, by method class.
pub const PROXY_REQUEST_DURATION_SECONDS: &str = "handover_proxy_request_duration_seconds";
/// Requests that failed in the proxy, by fault side and kind.
pub const PROXY_ERRORS_TOTAL: &str = "handover_proxy_errors_total";
/// Open downstream connections.
pub const PROXY_CONNECTIONS_OPEN: &str = "handover_proxy_connections_open";
/// Downstream connections accepted.
pub const PROXY_CONNECTIONS_TOTAL: &str = "handover_proxy_connections_total";
/// Downstream connections refused (closed with a 503) because
/// `proxy.max_connections` were open.
pub const PROXY_CONNECTIONS_REFUSED_TOTAL: &str = "handover_proxy_connections_refused_total";
/// Admin API connections refused because `admin.max_connections` were open.
pub const ADMIN_CONNECTIONS_REFUSED_TOTAL: &str = "handover_admin_connections_refused_total";
/// Open upstream connections (pooled, idle or busy), by upstream.
pub const UPSTREAM_CONNECTIONS_OPEN: &str = "handover_upstream_connections_open";
/// Upstream connections established, by upstream.
pub const UPSTREAM_CONNECTIONS_TOTAL: &str = "handover_upstream_connections_total";
/// Management-API calls made by handover (sync, backfill, verify,
/// cutover), by server and outcome.
pub const UPSTREAM_API_REQUESTS_TOTAL: &str = "handover_upstream_api_requests_total";
/// Latency of answered management-API calls, by server.
pub const UPSTREAM_API_SECONDS: &str = "handover_upstream_api_seconds";
/// 1 while the primary answers health probes.
pub const PRIMARY_UP: &str = "handover_primary_up";
/// 1 while `/readyz` reports ready.
pub const READY: &str = "handover_ready";
/// 1 while this instance has fenced itself: in fleet mode it could not
/// renew its membership lease, so it refuses trigger requests.
pub const FLEET_FENCED: &str = "handover_fleet_fenced";
/// Changes applied to the secondary, by dataset.
pub const SYNC_APPLIED_TOTAL: &str = "handover_sync_applied_total";
/// Failed sync attempts that will be retried, by dataset.
pub const SYNC_FAILURES_TOTAL: &str = "handover_sync_failures_total";
/// Changes moved to the dead-letter log, by dataset.
pub const SYNC_DEAD_LETTERED_TOTAL: &str = "handover_sync_dead_lettered_total";
/// Time to apply one change (read at the primary, write at the secondary).
pub const SYNC_APPLY_SECONDS: &str = "handover_sync_apply_seconds";
/// Age of the oldest change not yet applied to the secondary.
pub const SYNC_LAG_SECONDS: &str = "handover_sync_lag_seconds";
/// Records currently in the dead-letter log.
pub const SYNC_DEAD_LETTERS: &str = "handover_sync_dead_letters";
/// 1 while the sync cannot reach the servers (its circuit breaker is
/// open: changes wait in the journal, one probe retries for all).
pub const SYNC_OUTAGE: &str = "handover_sync_outage";
/// The sync's adaptive concurrency limit (jobs allowed at once).
pub const SYNC_CONCURRENCY_LIMIT: &str = "handover_sync_concurrency_limit";
/// Sync jobs running.
pub const SYNC_IN_FLIGHT: &str = "handover_sync_in_flight";
/// Sync jobs waiting for a permit.
pub const SYNC_WAITING: &str = "handover_sync_waiting";
/// Seconds new sync jobs still wait for the secondary's `Retry-After`.
pub const SYNC_THROTTLED_SECONDS: &str = "handover_sync_throttled_seconds";
/// Journal records appended and not yet applied.
pub const JOURNAL_DEPTH: &str = "handover_journal_depth";
/// Bytes of journal segment files.
pub const JOURNAL_SIZE_BYTES: &str = "handover_journal_size_bytes";
/// Time of one journal fdatasync.
pub const JOURNAL_FSYNC_SECONDS: &str = "handover_journal_fsync_seconds";
/// Time a trigger's response waited for its journal append.
pub const JOURNAL_APPEND_SECONDS: &str = "handover_journal_append_seconds";
/// Journal write failures.
pub const JOURNAL_ERRORS_TOTAL: &str = "handover_journal_errors_total";
/// 1 for the current migration phase, by phase.
pub const PHASE: &str = "handover_phase";
/// The current epoch (increments at every flip of the primary).
pub const EPOCH: &str = "handover_epoch";
/// How long trigger requests were held during a flip.
pub const CUTOVER_PAUSE_SECONDS: &str = "handover_cutover_pause_seconds";
/// Flips attempted, by outcome (cut-over, rolled-back, aborted).
pub const CUTOVER_FLIPS_TOTAL: &str = "handover_cutover_flips_total";
/// Trigger requests held at the gate during flips.
pub const CUTOVER_HELD_TOTAL: &str = "handover_cutover_held_total";
/// Held trigger requests released after flips.
pub const CUTOVER_RELEASED_TOTAL: &str = "handover_cutover_released_total";
/// Trigger requests refused with 503 because the hold buffer was full.
pub const CUTOVER_REJECTED_TOTAL: &str = "handover_cutover_rejected_total";
/// Requests replayed at the previous primary after a flip, because the
/// state they need lives only there, by `dataset` (`tokens`: refreshes of
/// tokens the new Authlete-based server does not hold yet).
pub const CUTOVER_FALLBACKS_TOTAL: &str = "handover_cutover_fallbacks_total";
/// Whether each secret key of the new primary was last proven equal to
/// the current primary's by what it does (1) or found different (0), by
/// key (`hmac`, `refresh-token-encrypt`, `access-token`).
pub const CUTOVER_KEY_PARITY: &str = "handover_cutover_key_parity";
/// Trigger exchanges seen, by trigger.
pub const MIRROR_TRIGGERS_TOTAL: &str = "handover_mirror_triggers_total";
/// Changes kept in memory for repair because the journal could not be written.
pub const MIRROR_UNJOURNALED_TOTAL: &str = "handover_mirror_unjournaled_total";
/// Successful triggers whose change could not be named (their response was
/// too large, cut off or malformed), by route: drift that only `verify`
/// finds.
pub const UNTRACKED_CHANGES_TOTAL: &str = "handover_untracked_changes_total";

/// Latency buckets from 100 µs to 10 s: the proxy's own overhead sits in the
/// first buckets, upstream latency in the rest.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Read or write, from the method: enough to tell triggers' share of
/// traffic without a label per method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    /// `GET`, `HEAD`, `OPTIONS`.
    Read,
    /// Everything else.
    Write,
}

impl MethodClass {
    /// Classifies a method.
    pub fn of(method: &http::Method) -> Self {
        match *method {
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => Self::Read,
            _ => Self::Write,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method_class: &'static str,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    fault: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatasetLabels {
    dataset: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiOutcomeLabels {
    upstream: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: &'static str,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// All metrics of one process.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Proxy request path.
    pub proxy: ProxyMetrics,
    /// Upstream connection pools.
    pub upstream: UpstreamMetrics,
    /// Health and readiness.
    pub health: HealthMetrics,
    /// Sync workers.
    pub sync: SyncMetrics,
    /// The journal and the trigger path.
    pub journal: JournalMetrics,
    /// Phases and flips.
    pub cutover: CutoverMetrics,
}

/// Phase and flip recorders.
#[derive(Debug, Clone)]
pub struct CutoverMetrics {
    phase: Family<PhaseLabels, Gauge>,
    epoch: Gauge,
    pause_seconds: Histogram,
    flips: Family<OutcomeLabels, Counter>,
    /// Requests held at the gate.
    pub held: Counter,
    released: Counter,
    /// Requests refused with 503 (hold buffer full).
    pub rejected: Counter,
    /// Requests replayed at the previous primary, by the dataset of the
    /// state they needed.
    fallbacks: Family<DatasetLabels, Counter>,
    key_parity: Family<KeyLabels, Gauge>,
}

impl CutoverMetrics {
    /// Counts a request replayed at the previous primary because the state
    /// it needs (of `dataset`) lives only there.
    pub fn record_fallback(&self, dataset: Dataset) {
        self.fallbacks
            .get_or_create(&DatasetLabels {
                dataset: dataset.as_str(),
            })
            .inc();
    }

    /// Requests replayed at the previous primary for `dataset` so far.
    pub fn fallbacks(&self, dataset: Dataset) -> u64 {
        self.fallbacks
            .get_or_create(&DatasetLabels {
                dataset: dataset.as_str(),
            })
            .get()
    }

    /// Publishes the current phase and epoch.
    pub fn set_phase(&self, phase: &'static str, epoch: u64) {
        for name in [
            "mirroring",
            "cutting-over",
            "cut-over",
            "rolling-back",
            "completed",
        ] {
            self.phase
                .get_or_create(&PhaseLabels { phase: name })
                .set(i64::from(name == phase));
        }
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// Publishes the latest parity probe of one secret key.
    pub fn set_key_parity(&self, key: &'static str, equal: bool) {
        self.key_parity
            .get_or_create(&KeyLabels { key })
            .set(i64::from(equal));
    }

    /// Records a flip (or an aborted one).
    pub fn record_flip(&self, outcome: &str, pause: Duration, released: u64, _rejected: u64) {
        let outcome = match outcome {
            "cut-over" => "cut-over",
            "rolled-back" => "rolled-back",
            _ => "aborted",
        };
        self.flips.get_or_create(&OutcomeLabels { outcome }).inc();
        self.pause_seconds.observe(pause.as_secs_f64());
        self.released.inc_by(released);
    }
}

/// Sync recorders.
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    applied: Family<DatasetLabels, Counter>,
    failures: Family<DatasetLabels, Counter>,
    dead_lettered: Family<DatasetLabels, Counter>,
    apply_seconds: Family<DatasetLabels, Histogram>,
    /// Age of the oldest unapplied change.
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Records in the dead-letter log.
    pub dead_letters: Gauge,
    /// 1 while the sync's circuit breaker is open.
    pub outage: Gauge,
    concurrency_limit: Gauge,
    in_flight: Gauge,
    waiting: Gauge,
    throttled_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl SyncMetrics {
    /// One change applied.
    pub fn record_applied(&self, dataset: Dataset, elapsed: Duration) {
        let labels = DatasetLabels {
            dataset: dataset.as_str(),
        };
        self.applied.get_or_create(&labels).inc();
        self.apply_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// One failed attempt (to be retried).
    pub fn record_failure(&self, dataset: Dataset) {
        self.failures
            .get_or_create(&DatasetLabels {
                dataset: dataset.as_str(),
            })
            .inc();
    }

    /// One change dead-lettered.
    pub fn record_dead_letter(&self, dataset: Dataset) {
        self.dead_lettered
            .get_or_create(&DatasetLabels {
                dataset: dataset.as_str(),
            })
            .inc();
    }

    /// Publishes the concurrency limiter's state (at a scrape).
    pub fn refresh_concurrency(
        &self,
        limit: usize,
        in_flight: usize,
        waiting: usize,
        throttled_for: Option<Duration>,
    ) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.concurrency_limit.set(gauge(limit));
        self.in_flight.set(gauge(in_flight));
        self.waiting.set(gauge(waiting));
        self.throttled_seconds
            .set(throttled_for.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// Applied count of a dataset (for summaries).
    pub fn applied(&self, dataset: Dataset) -> u64 {
        self.applied
            .get_or_create(&DatasetLabels {
                dataset: dataset.as_str(),
            })
            .get()
    }
}

/// Journal and trigger-path recorders.
#[derive(Debug, Clone)]
pub struct JournalMetrics {
    /// Records not yet applied.
    pub depth: Gauge,
    /// Bytes on disk.
    pub size_bytes: Gauge,
    /// fdatasync latency.
    pub fsync_seconds: Histogram,
    /// Append latency as the trigger's response sees it.
    pub append_seconds: Histogram,
    /// Write failures.
    pub errors: Counter,
    triggers: Family<TriggerLabels, Counter>,
    /// Changes kept in memory because the journal failed.
    pub unjournaled: Counter,
    untracked: Family<RouteLabels, Counter>,
}

impl Metrics {
    /// Refreshes the journal gauges and the sync lag from the journal's
    /// counters (periodically, and right before a scrape): records not yet
    /// applied, bytes on disk, and the age of the oldest unapplied record.
    pub fn refresh_journal(&self, depth: u64, bytes_on_disk: u64, oldest: Option<Duration>) {
        self.journal
            .depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.journal
            .size_bytes
            .set(i64::try_from(bytes_on_disk).unwrap_or(i64::MAX));
        self.sync
            .lag_seconds
            .set(oldest.map_or(0.0, |age| age.as_secs_f64()));
    }
}

impl JournalMetrics {
    /// One trigger exchange seen.
    pub fn record_trigger(&self, trigger: &'static str) {
        self.triggers
            .get_or_create(&TriggerLabels { trigger })
            .inc();
    }

    /// One successful trigger whose change could not be named.
    pub fn record_untracked(&self, route: &'static str) {
        self.untracked.get_or_create(&RouteLabels { route }).inc();
    }
}

/// Request-path recorders.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    // [method class][status class]
    requests: [[Counter; 5]; 2],
    durations: [Histogram; 2],
    errors: Family<ErrorLabels, Counter>,
    /// Open downstream connections.
    pub connections_open: Gauge,
    /// Downstream connections accepted.
    pub connections_total: Counter,
    /// Downstream connections refused at `proxy.max_connections`.
    pub connections_refused: Counter,
    /// Admin connections refused at `admin.max_connections`.
    pub admin_connections_refused: Counter,
}

impl ProxyMetrics {
    /// Records one answered request.
    pub fn record_request(&self, class: MethodClass, status: http::StatusCode, elapsed: Duration) {
        let status_index = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        let class_index = class as usize;
        self.requests[class_index][status_index].inc();
        self.durations[class_index].observe(elapsed.as_secs_f64());
    }

    /// Records a request that failed in the proxy.
    pub fn record_error(&self, fault: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { fault, kind })
            .inc();
    }
}

/// Upstream pool recorders.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    open: Family<UpstreamLabels, Gauge>,
    total: Family<UpstreamLabels, Counter>,
    api_requests: Family<ApiOutcomeLabels, Counter>,
    api_seconds: Family<UpstreamLabels, Histogram>,
}

/// The management-API recorders of one upstream.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// Calls answered (any status but 429 and 503).
    pub answered: Counter,
    /// Calls answered 429 or 503.
    pub overloaded: Counter,
    /// Calls without an answer in time.
    pub timed_out: Counter,
    /// Calls that found no connection.
    pub unreachable: Counter,
    /// Latency of answered calls.
    pub seconds: Histogram,
}

impl UpstreamMetrics {
    /// The open-connections gauge and the established-connections counter of
    /// one upstream.
    pub fn handles(&self, upstream: Side) -> (Gauge, Counter) {
        let labels = UpstreamLabels {
            upstream: upstream.as_str(),
        };
        (
            self.open.get_or_create(&labels).clone(),
            self.total.get_or_create(&labels).clone(),
        )
    }

    /// The management-API recorders of one upstream.
    pub fn api(&self, upstream: Side) -> ApiMetrics {
        let side = upstream.as_str();
        let outcome = |outcome: &'static str| {
            self.api_requests
                .get_or_create(&ApiOutcomeLabels {
                    upstream: side,
                    outcome,
                })
                .clone()
        };
        ApiMetrics {
            answered: outcome("answered"),
            overloaded: outcome("overloaded"),
            timed_out: outcome("timed_out"),
            unreachable: outcome("unreachable"),
            seconds: self
                .api_seconds
                .get_or_create(&UpstreamLabels { upstream: side })
                .clone(),
        }
    }
}

/// Health recorders.
#[derive(Debug, Clone)]
pub struct HealthMetrics {
    /// 1 while the primary answers.
    pub primary_up: Gauge,
    /// 1 while ready.
    pub ready: Gauge,
    /// 1 while this instance is fenced (fleet lease not renewed).
    pub fenced: Gauge,
}

/// Registers a counter under its full exposition name (prometheus-client
/// appends `_total` itself).
/// Latency histograms by label set, each with [`LATENCY_BUCKETS`].
fn latency_family<L: Clone + std::hash::Hash + Eq>() -> Family<L, Histogram> {
    Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS))
}

fn register_counter<M: prometheus_client::registry::Metric>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) {
    let base = name.strip_suffix("_total").unwrap_or(name);
    registry.register(base, help, metric);
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();

        let requests_family = Family::<RequestLabels, Counter>::default();
        register_counter(
            &mut registry,
            PROXY_REQUESTS_TOTAL,
            "Downstream requests answered, by method class and status class",
            requests_family.clone(),
        );
        let durations_family = latency_family::<MethodLabels>();
        registry.register(
            PROXY_REQUEST_DURATION_SECONDS,
            "Time from receiving a request to having its response head",
            durations_family.clone(),
        );
        let classes = [MethodClass::Read, MethodClass::Write];
        let requests = classes.map(|class| {
            STATUS_CLASSES.map(|status_class| {
                requests_family
                    .get_or_create(&RequestLabels {
                        method_class: class.as_str(),
                        status_class,
                    })
                    .clone()
            })
        });
        let durations = classes.map(|class| {
            durations_family
                .get_or_create(&MethodLabels {
                    method_class: class.as_str(),
                })
                .clone()
        });
        let errors = Family::<ErrorLabels, Counter>::default();
        register_counter(
            &mut registry,
            PROXY_ERRORS_TOTAL,
            "Requests that failed in the proxy, by fault side and kind",
            errors.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            PROXY_CONNECTIONS_OPEN,
            "Open downstream connections",
            connections_open.clone(),
        );
        let connections_total = Counter::default();
        register_counter(
            &mut registry,
            PROXY_CONNECTIONS_TOTAL,
            "Downstream connections accepted",
            connections_total.clone(),
        );
        let connections_refused = Counter::default();
        register_counter(
            &mut registry,
            PROXY_CONNECTIONS_REFUSED_TOTAL,
            "Downstream connections refused with a 503 because proxy.max_connections were open",
            connections_refused.clone(),
        );
        let admin_connections_refused = Counter::default();
        register_counter(
            &mut registry,
            ADMIN_CONNECTIONS_REFUSED_TOTAL,
            "Admin API connections refused because admin.max_connections were open",
            admin_connections_refused.clone(),
        );

        let open = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            UPSTREAM_CONNECTIONS_OPEN,
            "Open upstream connections (idle or busy), by upstream",
            open.clone(),
        );
        let total = Family::<UpstreamLabels, Counter>::default();
        register_counter(
            &mut registry,
            UPSTREAM_CONNECTIONS_TOTAL,
            "Upstream connections established, by upstream",
            total.clone(),
        );

        let api_requests = Family::<ApiOutcomeLabels, Counter>::default();
        register_counter(
            &mut registry,
            UPSTREAM_API_REQUESTS_TOTAL,
            "Management-API calls handover made, by upstream and outcome (answered, overloaded: 429/503, timed_out, unreachable)",
            api_requests.clone(),
        );
        let api_seconds = latency_family::<UpstreamLabels>();
        registry.register(
            UPSTREAM_API_SECONDS,
            "Latency of answered management-API calls, by upstream",
            api_seconds.clone(),
        );

        let primary_up = Gauge::default();
        registry.register(
            PRIMARY_UP,
            "1 while the primary answers health probes",
            primary_up.clone(),
        );
        let ready = Gauge::default();
        registry.register(READY, "1 while /readyz reports ready", ready.clone());
        let fenced = Gauge::default();
        registry.register(
            FLEET_FENCED,
            "1 while this instance is fenced (fleet lease not renewed)",
            fenced.clone(),
        );

        let sync = SyncMetrics {
            applied: Family::default(),
            failures: Family::default(),
            dead_lettered: Family::default(),
            apply_seconds: latency_family(),
            lag_seconds: Gauge::default(),
            dead_letters: Gauge::default(),
            outage: Gauge::default(),
            concurrency_limit: Gauge::default(),
            in_flight: Gauge::default(),
            waiting: Gauge::default(),
            throttled_seconds: Gauge::default(),
        };
        registry.register(
            SYNC_CONCURRENCY_LIMIT,
            "Sync jobs allowed at once against the secondary (the adaptive limit)",
            sync.concurrency_limit.clone(),
        );
        registry.register(
            SYNC_IN_FLIGHT,
            "Sync jobs running against the secondary",
            sync.in_flight.clone(),
        );
        registry.register(
            SYNC_WAITING,
            "Sync jobs waiting for a permit",
            sync.waiting.clone(),
        );
        registry.register(
            SYNC_THROTTLED_SECONDS,
            "Seconds new sync jobs still wait for the secondary's Retry-After",
            sync.throttled_seconds.clone(),
        );
        register_counter(
            &mut registry,
            SYNC_APPLIED_TOTAL,
            "Changes applied to the secondary, by dataset",
            sync.applied.clone(),
        );
        register_counter(
            &mut registry,
            SYNC_FAILURES_TOTAL,
            "Failed sync attempts that will be retried, by dataset",
            sync.failures.clone(),
        );
        register_counter(
            &mut registry,
            SYNC_DEAD_LETTERED_TOTAL,
            "Changes moved to the dead-letter log, by dataset",
            sync.dead_lettered.clone(),
        );
        registry.register(
            SYNC_APPLY_SECONDS,
            "Time to apply one change",
            sync.apply_seconds.clone(),
        );
        registry.register(
            SYNC_LAG_SECONDS,
            "Age of the oldest change not yet applied to the secondary",
            sync.lag_seconds.clone(),
        );
        registry.register(
            SYNC_DEAD_LETTERS,
            "Records currently in the dead-letter log",
            sync.dead_letters.clone(),
        );
        registry.register(
            SYNC_OUTAGE,
            "1 while the sync cannot reach the servers and waits for one probe",
            sync.outage.clone(),
        );

        let journal = JournalMetrics {
            depth: Gauge::default(),
            size_bytes: Gauge::default(),
            fsync_seconds: Histogram::new(LATENCY_BUCKETS),
            append_seconds: Histogram::new(LATENCY_BUCKETS),
            errors: Counter::default(),
            triggers: Family::default(),
            unjournaled: Counter::default(),
            untracked: Family::default(),
        };
        registry.register(
            JOURNAL_DEPTH,
            "Journal records appended and not yet applied",
            journal.depth.clone(),
        );
        registry.register(
            JOURNAL_SIZE_BYTES,
            "Bytes of journal segment files",
            journal.size_bytes.clone(),
        );
        registry.register(
            JOURNAL_FSYNC_SECONDS,
            "Time of one journal fdatasync",
            journal.fsync_seconds.clone(),
        );
        registry.register(
            JOURNAL_APPEND_SECONDS,
            "Time a trigger response waited for its journal append",
            journal.append_seconds.clone(),
        );
        register_counter(
            &mut registry,
            JOURNAL_ERRORS_TOTAL,
            "Journal write failures",
            journal.errors.clone(),
        );
        register_counter(
            &mut registry,
            MIRROR_TRIGGERS_TOTAL,
            "Trigger exchanges seen, by trigger",
            journal.triggers.clone(),
        );
        register_counter(
            &mut registry,
            MIRROR_UNJOURNALED_TOTAL,
            "Changes kept in memory for repair because the journal could not be written",
            journal.unjournaled.clone(),
        );
        register_counter(
            &mut registry,
            UNTRACKED_CHANGES_TOTAL,
            "Successful triggers whose change could not be named (response too large, cut off or malformed), by route",
            journal.untracked.clone(),
        );

        let cutover = CutoverMetrics {
            phase: Family::default(),
            epoch: Gauge::default(),
            pause_seconds: Histogram::new(LATENCY_BUCKETS),
            flips: Family::default(),
            held: Counter::default(),
            released: Counter::default(),
            rejected: Counter::default(),
            fallbacks: Family::default(),
            key_parity: Family::default(),
        };
        registry.register(
            PHASE,
            "1 for the current migration phase",
            cutover.phase.clone(),
        );
        registry.register(
            EPOCH,
            "The current epoch (increments at every flip)",
            cutover.epoch.clone(),
        );
        registry.register(
            CUTOVER_PAUSE_SECONDS,
            "How long trigger requests were held during a flip",
            cutover.pause_seconds.clone(),
        );
        register_counter(
            &mut registry,
            CUTOVER_FLIPS_TOTAL,
            "Flips attempted, by outcome",
            cutover.flips.clone(),
        );
        register_counter(
            &mut registry,
            CUTOVER_HELD_TOTAL,
            "Trigger requests held at the gate during flips",
            cutover.held.clone(),
        );
        register_counter(
            &mut registry,
            CUTOVER_RELEASED_TOTAL,
            "Held trigger requests released after flips",
            cutover.released.clone(),
        );
        register_counter(
            &mut registry,
            CUTOVER_REJECTED_TOTAL,
            "Trigger requests refused with 503 because the hold buffer was full",
            cutover.rejected.clone(),
        );
        register_counter(
            &mut registry,
            CUTOVER_FALLBACKS_TOTAL,
            "Requests replayed at the previous primary after a flip, by dataset",
            cutover.fallbacks.clone(),
        );
        registry.register(
            CUTOVER_KEY_PARITY,
            "1 when the secondary's secret key was last proven equal to the primary's, 0 when it differs",
            cutover.key_parity.clone(),
        );

        Self {
            registry: Arc::new(registry),
            sync,
            journal,
            cutover,
            proxy: ProxyMetrics {
                requests,
                durations,
                errors,
                connections_open,
                connections_total,
                connections_refused,
                admin_connections_refused,
            },
            upstream: UpstreamMetrics {
                open,
                total,
                api_requests,
                api_seconds,
            },
            health: HealthMetrics {
                primary_up,
                ready,
                fenced,
            },
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_the_documented_names() {
        let metrics = Metrics::new();
        metrics.proxy.record_request(
            MethodClass::Write,
            http::StatusCode::CREATED,
            Duration::from_millis(3),
        );
        metrics.proxy.record_error("primary", "connect");
        let (open, total) = metrics.upstream.handles(Side::Source);
        open.inc();
        total.inc();
        let text = metrics.encode();
        for name in [
            PROXY_REQUESTS_TOTAL,
            PROXY_REQUEST_DURATION_SECONDS,
            PROXY_ERRORS_TOTAL,
            UPSTREAM_CONNECTIONS_OPEN,
            UPSTREAM_CONNECTIONS_TOTAL,
            PRIMARY_UP,
            READY,
            FLEET_FENCED,
            SYNC_OUTAGE,
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(
            "handover_proxy_requests_total{method_class=\"write\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains("handover_upstream_connections_open{upstream=\"source\"} 1"));
    }
}
