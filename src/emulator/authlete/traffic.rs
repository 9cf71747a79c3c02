//! The request-rate cap and the log of when API calls arrived.
//!
//! The cap counts requests in fixed windows: the first request after a
//! window ended opens a new one, and once `requests` were admitted in a
//! window every further request is refused with 429 and a `Retry-After`
//! of the whole seconds left in the window (at least 1, the smallest the
//! header can say). A refused request does not count, so a client that
//! waits `Retry-After` is always admitted. Authlete publishes no limit and
//! no 429 behaviour (spec §5.1); this is the plainest behaviour a rate
//! limiting gateway has, chosen so that a test can tell a client that
//! honours `Retry-After` from one that does not.
//!
//! The arrival log keeps the last [`ARRIVAL_LOG_CAPACITY`] API calls
//! (not the `/_emulator/*` controls) with their instant and answer, so a
//! test can assert how long a client waited between a 429 and its retry.
//! Paths that carry a token value are redacted: the log may end up in a
//! test's failure message.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use super::strictness::RateLimit;

/// How many arrivals the log keeps; older ones are dropped, so a
/// long-running `handover emulate` does not grow without bound.
pub const ARRIVAL_LOG_CAPACITY: usize = 4_096;

/// One API call as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// When the request arrived (before any added latency).
    pub at: Instant,
    /// The method.
    pub method: Method,
    /// The path, with a token value in it replaced by `{token}`.
    pub path: String,
    /// The status answered; `None` when the connection was dropped
    /// (the emulator played down).
    pub status: Option<StatusCode>,
    /// The `Retry-After` sent with a 429.
    pub retry_after: Option<Duration>,
}

/// The fixed-window counter behind [`RateLimit`].
#[derive(Debug, Default)]
pub(super) struct Limiter {
    window_start: Option<Instant>,
    admitted: u32,
}

impl Limiter {
    /// Admits a request arriving at `now`, or says how long to wait.
    pub(super) fn admit(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let start = match self.window_start {
            Some(start) if now.duration_since(start) < limit.per => start,
            _ => {
                self.window_start = Some(now);
                self.admitted = 0;
                now
            }
        };
        if self.admitted < limit.requests {
            self.admitted += 1;
            return Ok(());
        }
        let left = limit.per.saturating_sub(now.duration_since(start));
        Err(retry_after(left))
    }
}

/// `left` rounded up to whole seconds, at least one.
fn retry_after(left: Duration) -> Duration {
    let mut seconds = left.as_secs();
    if left.subsec_nanos() > 0 {
        seconds += 1;
    }
    Duration::from_secs(seconds.max(1))
}

/// The bounded log of arrivals.
#[derive(Debug, Default)]
pub(super) struct ArrivalLog {
    entries: VecDeque<Arrival>,
}

impl ArrivalLog {
    /// Records one call, dropping the oldest beyond the capacity.
    pub(super) fn record(&mut self, arrival: Arrival) {
        if self.entries.len() == ARRIVAL_LOG_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(arrival);
    }

    /// Every kept arrival, oldest first.
    pub(super) fn entries(&self) -> Vec<Arrival> {
        self.entries.iter().cloned().collect()
    }
}

/// The path as the log keeps it: `/auth/token/delete/{value}` carries an
/// access token (or its hash), which must not leak into test output.
pub(super) fn redacted(path: &str) -> String {
    match path.find("/auth/token/delete/") {
        Some(at) => format!("{}/auth/token/delete/{{token}}", &path[..at]),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_admits_its_quota_then_says_how_long_is_left() {
        let limit = RateLimit {
            requests: 2,
            per: Duration::from_millis(2_500),
        };
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.admit(limit, t0), Ok(()));
        assert_eq!(limiter.admit(limit, t0), Ok(()));
        assert_eq!(
            limiter.admit(limit, t0 + Duration::from_millis(100)),
            Err(Duration::from_secs(3))
        );
        // Refusals do not count, and the window's end admits again.
        assert_eq!(
            limiter.admit(limit, t0 + Duration::from_millis(2_000)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(
            limiter.admit(limit, t0 + Duration::from_millis(2_500)),
            Ok(())
        );
        assert_eq!(retry_after(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(retry_after(Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn token_values_stay_out_of_the_log() {
        assert_eq!(
            redacted("/api/715948317/auth/token/delete/secret-at"),
            "/api/715948317/auth/token/delete/{token}"
        );
        assert_eq!(redacted("/api/auth/token/create"), "/api/auth/token/create");
        let mut log = ArrivalLog::default();
        for _ in 0..ARRIVAL_LOG_CAPACITY + 3 {
            log.record(Arrival {
                at: Instant::now(),
                method: Method::GET,
                path: String::new(),
                status: None,
                retry_after: None,
            });
        }
        assert_eq!(log.entries().len(), ARRIVAL_LOG_CAPACITY);
    }
}
