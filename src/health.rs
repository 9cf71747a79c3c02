//! Liveness and readiness. `/readyz` is for load balancers: it turns false
//! while the primary is unreachable (probed every `proxy.health_interval`,
//! and marked down at once when a forwarded request cannot connect), while
//! the journal cannot be written, and from the first moment of shutdown, so
//! the balancer stops sending traffic before the listener closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::HealthMetrics;
use crate::upstream::PrimarySelector;

/// Readiness inputs.
#[derive(Debug)]
pub struct Health {
    primary_up: AtomicBool,
    journal_ok: AtomicBool,
    shutting_down: AtomicBool,
    fenced: AtomicBool,
    metrics: HealthMetrics,
}

/// The readiness answer.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Whether the proxy should receive traffic.
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<&'static str>,
}

impl Health {
    /// Starts optimistic about the primary (the first probe runs at once)
    /// and the journal.
    pub fn new(metrics: HealthMetrics) -> Self {
        let health = Self {
            primary_up: AtomicBool::new(true),
            journal_ok: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            metrics,
        };
        health.publish();
        health
    }

    /// The primary answered a request.
    pub(crate) fn primary_answered(&self) {
        if !self.primary_up.swap(true, Ordering::AcqRel) {
            tracing::info!("primary reachable again");
            self.publish();
        }
    }

    /// A connection to the primary failed.
    pub(crate) fn primary_unreachable(&self) {
        if self.primary_up.swap(false, Ordering::AcqRel) {
            tracing::warn!("primary unreachable; readiness false");
            self.publish();
        }
    }

    /// Records whether the journal accepts writes.
    pub(crate) fn set_journal_ok(&self, ok: bool) {
        if self.journal_ok.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!("journal writable again");
            } else {
                tracing::error!("journal not writable; readiness false");
            }
            self.publish();
        }
    }

    /// Records whether this instance fenced itself (fleet mode: its lease
    /// could not be renewed).
    pub fn set_fenced(&self, fenced: bool) {
        if self.fenced.swap(fenced, Ordering::AcqRel) != fenced {
            self.publish();
        }
    }

    /// Shutdown started: readiness is false from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.publish();
    }

    /// The current readiness.
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.shutting_down.load(Ordering::Acquire) {
            reasons.push("shutting down");
        }
        if !self.primary_up.load(Ordering::Acquire) {
            reasons.push("primary unreachable");
        }
        if !self.journal_ok.load(Ordering::Acquire) {
            reasons.push("journal not writable");
        }
        if self.fenced.load(Ordering::Acquire) {
            reasons.push("fenced: fleet lease not renewed");
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }

    fn publish(&self) {
        self.metrics
            .primary_up
            .set(i64::from(self.primary_up.load(Ordering::Acquire)));
        self.metrics.ready.set(i64::from(self.readiness().ready));
        self.metrics
            .fenced
            .set(i64::from(self.fenced.load(Ordering::Acquire)));
    }
}

/// Probes the primary every `interval` until `stop` is cancelled.
pub(crate) async fn run_probe(
    health: Arc<Health>,
    primary: Arc<dyn PrimarySelector>,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let upstream = primary.primary();
        match upstream.probe(interval.max(Duration::from_secs(1))).await {
            Ok(()) => health.primary_answered(),
            Err(err) => {
                tracing::debug!(error = %err, "primary probe failed");
                health.primary_unreachable();
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
