//! In-repo stand-ins for the upstream servers: a Connect2id server and an
//! Authlete service, faithful to `spec/connect2id.md` and `spec/authlete.md`.
//! They back every integration test, the demo and operator rehearsals
//! (`handover emulate`).
//!
//! Both emulators share the test [`Knobs`]: added latency, an error rate and a
//! "down" switch, settable in-process or over HTTP at `/_emulator/knobs`
//! (bearer-protected with the emulator's API token), so a test or a rehearsal
//! can play a slow, failing or unreachable upstream.

pub mod authlete;
pub mod connect2id;
pub mod driver;
pub mod jwks;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Behaviour switches shared by both emulators, for tests and rehearsals.
#[derive(Debug, Default)]
pub struct Knobs {
    latency_us: AtomicU64,
    error_rate_ppm: AtomicU32,
    down: AtomicBool,
}

/// The JSON form of [`Knobs`] used by `/_emulator/knobs`; absent fields are
/// left unchanged on `PUT`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnobSettings {
    /// Added latency per request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Fraction of requests (0.0 to 1.0) answered with `503`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// When true, every request except `/_emulator/*` has its connection
    /// dropped without an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<bool>,
}

impl Knobs {
    /// Adds `latency` before every answer.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(micros, Ordering::Relaxed);
    }

    /// The added latency.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// Answers this fraction of requests (clamped to 0.0..=1.0) with `503`.
    pub fn set_error_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        self.error_rate_ppm.store(ppm, Ordering::Relaxed);
    }

    /// The configured error rate.
    pub fn error_rate(&self) -> f64 {
        f64::from(self.error_rate_ppm.load(Ordering::Relaxed)) / 1_000_000.0
    }

    /// Plays a server that is down (connections dropped) or back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Whether the server plays down.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Draws whether this request should fail with `503`.
    pub(crate) fn should_fail(&self) -> bool {
        let ppm = self.error_rate_ppm.load(Ordering::Relaxed);
        ppm > 0 && fastrand::u32(0..1_000_000) < ppm
    }

    /// Applies a partial update.
    pub fn apply(&self, settings: &KnobSettings) {
        if let Some(ms) = settings.latency_ms {
            self.set_latency(Duration::from_millis(ms));
        }
        if let Some(rate) = settings.error_rate {
            self.set_error_rate(rate);
        }
        if let Some(down) = settings.down {
            self.set_down(down);
        }
    }

    /// The current settings.
    pub fn settings(&self) -> KnobSettings {
        KnobSettings {
            latency_ms: Some(u64::try_from(self.latency().as_millis()).unwrap_or(u64::MAX)),
            error_rate: Some(self.error_rate()),
            down: Some(self.is_down()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_apply_partial_updates() {
        let knobs = Knobs::default();
        knobs.apply(&KnobSettings {
            latency_ms: Some(5),
            ..KnobSettings::default()
        });
        knobs.apply(&KnobSettings {
            down: Some(true),
            ..KnobSettings::default()
        });
        assert_eq!(knobs.latency(), Duration::from_millis(5));
        assert!(knobs.is_down());
        assert!(!knobs.should_fail());
        knobs.set_error_rate(1.0);
        assert!(knobs.should_fail());
    }
}
