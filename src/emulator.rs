//! In-repo stand-ins for the upstream servers: a Connect2id server and an
//! Authlete service, faithful to `spec/connect2id.md` and `spec/authlete.md`.
//! They back every integration test, the demo and operator rehearsals
//! (`handover emulate`).
//!
//! Both emulators share the test [`Knobs`]: added latency, an error rate, a
//! throttle (`429` with `Retry-After`) and a "down" switch, settable in-process or over HTTP at `/_emulator/knobs`
//! (bearer-protected with the emulator's API token), so a test or a rehearsal
//! can play a slow, failing or unreachable upstream.

pub mod authlete;
pub mod connect2id;
pub mod driver;
pub mod jwks;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Behaviour switches shared by both emulators, for tests and rehearsals.
#[derive(Debug, Default)]
pub struct Knobs {
    latency_us: AtomicU64,
    error_rate_ppm: AtomicU32,
    /// The one route the error rate applies to (a route as
    /// [`Call::route`] names it); every route when `None`.
    error_route: Mutex<Option<String>>,
    /// `Retry-After` seconds of a `429` answered to every request; 0: off.
    throttle_secs: AtomicU64,
    down: AtomicBool,
    /// When each request was answered and whether it was throttled, kept
    /// only while [`Knobs::record_calls`] is on (a test's evidence).
    calls: Mutex<Option<Vec<Call>>>,
}

/// One request an emulator answered, as recorded by [`Knobs::record_calls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// When the answer was sent.
    pub at: Instant,
    /// Whether it was the throttle's `429`.
    pub throttled: bool,
    /// The request's method.
    pub method: http::Method,
    /// The request's path below the base path, with identifiers in it
    /// replaced by a placeholder (`/clients/{id}`): what a test counts
    /// calls by.
    pub route: String,
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
    /// The one route the error rate applies to: a Connect2id route as
    /// recorded calls name it (`/clients/{id}`,
    /// `/authz-store/rest/v3/inspection`), an Authlete request path; an
    /// empty string: every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_route: Option<String>,
    /// When above 0, every request is answered `429` with this
    /// `Retry-After` (seconds); 0 turns the throttle off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_secs: Option<u64>,
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

    /// Confines the error rate to one route (as [`Call::route`] names it),
    /// or spreads it over every route again (`None`): a server whose one
    /// endpoint fails while the rest answers.
    pub fn set_error_route(&self, route: Option<&str>) {
        *self
            .error_route
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = route.map(str::to_owned);
    }

    /// The route the error rate is confined to, if any.
    pub fn error_route(&self) -> Option<String> {
        self.error_route
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Answers every request `429` with `Retry-After: retry_after` (whole
    /// seconds, at least 1), or stops throttling (`None`).
    pub fn set_throttle(&self, retry_after: Option<Duration>) {
        let secs = retry_after.map_or(0, |after| after.as_secs().max(1));
        self.throttle_secs.store(secs, Ordering::Relaxed);
    }

    /// The `Retry-After` seconds of the throttle, when it is on.
    pub(crate) fn throttled(&self) -> Option<u64> {
        Some(self.throttle_secs.load(Ordering::Relaxed)).filter(|secs| *secs > 0)
    }

    /// Starts (or stops and forgets) recording when each request is
    /// answered.
    pub fn record_calls(&self, on: bool) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = on.then(Vec::new);
    }

    /// The requests answered since recording started, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Records an answer to `method` on `route` (when recording).
    pub(crate) fn answered(&self, throttled: bool, method: &http::Method, route: &str) {
        if let Some(calls) = self
            .calls
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .as_mut()
        {
            calls.push(Call {
                at: Instant::now(),
                throttled,
                method: method.clone(),
                route: route.to_owned(),
            });
        }
    }

    /// Plays a server that is down (connections dropped) or back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Whether the server plays down.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Draws whether this request, on `route`, should fail with `503`.
    pub(crate) fn should_fail(&self, route: &str) -> bool {
        let ppm = self.error_rate_ppm.load(Ordering::Relaxed);
        ppm > 0
            && self
                .error_route
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .as_deref()
                .is_none_or(|only| only == route)
            && fastrand::u32(0..1_000_000) < ppm
    }

    /// Applies a partial update.
    pub fn apply(&self, settings: &KnobSettings) {
        if let Some(ms) = settings.latency_ms {
            self.set_latency(Duration::from_millis(ms));
        }
        if let Some(rate) = settings.error_rate {
            self.set_error_rate(rate);
        }
        if let Some(route) = &settings.error_route {
            self.set_error_route(Some(route.as_str()).filter(|route| !route.is_empty()));
        }
        if let Some(secs) = settings.throttle_secs {
            self.set_throttle((secs > 0).then(|| Duration::from_secs(secs)));
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
            error_route: Some(self.error_route().unwrap_or_default()),
            throttle_secs: Some(self.throttled().unwrap_or(0)),
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
        assert!(!knobs.should_fail("/clients"));
        knobs.set_error_rate(1.0);
        assert!(knobs.should_fail("/clients"));
        knobs.apply(&KnobSettings {
            error_route: Some("/authz-store/rest/v3/inspection".into()),
            ..KnobSettings::default()
        });
        assert!(knobs.should_fail("/authz-store/rest/v3/inspection"));
        assert!(!knobs.should_fail("/clients"));
        knobs.apply(&KnobSettings {
            error_route: Some(String::new()),
            ..KnobSettings::default()
        });
        assert!(knobs.should_fail("/clients"));
        assert_eq!(knobs.throttled(), None);
        knobs.apply(&KnobSettings {
            throttle_secs: Some(3),
            ..KnobSettings::default()
        });
        assert_eq!(knobs.throttled(), Some(3));
        knobs.set_throttle(None);
        assert_eq!(knobs.throttled(), None);
    }
}
