//! A sample of the refresh tokens clients hold, taken from live traffic,
//! for verify against an Authlete target.
//!
//! The backfill copies the refresh-token value the source's export carries,
//! which need not be the string the client holds (Connect2id may rebuild
//! it), so sampling the export proves nothing about clients. The trigger
//! hook therefore records the refresh token each token response leaves the
//! client holding (a new one, or the one it kept) into a fixed-size
//! reservoir (every token seen has the same chance to be in it); a rotation
//! or a revocation takes the old token out. Verify introspects the sample at
//! Authlete.
//!
//! The sample lives in memory only: the values are secrets and are never
//! written anywhere, logged or shown (entries print without them). A
//! restart starts an empty sample, which verify reports as "not measured".

use std::sync::Mutex;
use std::time::Instant;

use crate::model::{Secret, TokenEvent};

/// One refresh token seen in live traffic.
#[derive(Debug, Clone)]
pub struct LiveToken {
    /// The client holding it.
    pub client_id: String,
    /// Its subject, when the exchange named it.
    pub subject: Option<String>,
    /// The value (a secret).
    pub refresh_token: Secret,
    /// When it was seen: the sync may still be creating it at the target.
    pub seen_at: Instant,
}

/// A reservoir sample of refresh tokens seen in live traffic.
#[derive(Debug)]
pub struct LiveSample {
    capacity: usize,
    inner: Mutex<Reservoir>,
}

#[derive(Debug, Default)]
struct Reservoir {
    /// Tokens offered so far.
    seen: u64,
    entries: Vec<LiveToken>,
}

impl LiveSample {
    /// An empty sample keeping at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Reservoir::default()),
        }
    }

    /// Takes in what a token event tells about the tokens clients hold.
    pub fn observe(&self, event: &TokenEvent) {
        let Ok(mut reservoir) = self.inner.lock() else {
            return;
        };
        match event {
            TokenEvent::Issued {
                client_id,
                subject,
                refresh_token,
                replaced_refresh,
                kept_refresh,
                ..
            } => {
                if let Some(old) = replaced_refresh {
                    reservoir.remove(old);
                }
                let Some(held) = refresh_token.as_ref().or(kept_refresh.as_ref()) else {
                    return;
                };
                if kept_refresh.is_some() {
                    // Seen before: keep one entry per token, fresh.
                    reservoir.remove(held);
                }
                let token = LiveToken {
                    client_id: client_id.clone(),
                    subject: subject.clone(),
                    refresh_token: Secret::new(held.clone()),
                    seen_at: Instant::now(),
                };
                reservoir.offer(token, self.capacity);
            }
            TokenEvent::Revoked {
                token: Some(token), ..
            } => reservoir.remove(token),
            TokenEvent::Revoked { .. } => {}
        }
    }

    /// The tokens in the sample now.
    pub fn snapshot(&self) -> Vec<LiveToken> {
        self.inner
            .lock()
            .map(|r| r.entries.clone())
            .unwrap_or_default()
    }

    /// Tokens offered to the sample so far.
    pub fn seen(&self) -> u64 {
        self.inner.lock().map_or(0, |r| r.seen)
    }
}

impl Reservoir {
    fn offer(&mut self, token: LiveToken, capacity: usize) {
        self.seen += 1;
        if self.entries.len() < capacity {
            self.entries.push(token);
            return;
        }
        // Algorithm R: the n-th token replaces a random entry with
        // probability capacity / n.
        let slot = fastrand::u64(..self.seen);
        if let Ok(slot) = usize::try_from(slot)
            && slot < capacity
        {
            self.entries[slot] = token;
        }
    }

    fn remove(&mut self, token: &str) {
        self.entries
            .retain(|entry| !entry.refresh_token.matches(token.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(
        client: &str,
        new: Option<&str>,
        replaced: Option<&str>,
        kept: Option<&str>,
    ) -> TokenEvent {
        TokenEvent::Issued {
            grant_type: "refresh_token".into(),
            client_id: client.into(),
            subject: Some("alice".into()),
            scopes: Vec::new(),
            access_token: "at".into(),
            expires_in: 60,
            refresh_token: new.map(str::to_owned),
            refresh_expires_in: None,
            replaced_refresh: replaced.map(str::to_owned),
            kept_refresh: kept.map(str::to_owned),
            client_auth: None,
            issued_by: None,
        }
    }

    fn values(sample: &LiveSample) -> Vec<String> {
        let mut values: Vec<String> = sample
            .snapshot()
            .iter()
            .map(|t| t.refresh_token.expose().to_owned())
            .collect();
        values.sort();
        values
    }

    #[test]
    fn the_sample_follows_what_clients_hold() {
        let sample = LiveSample::new(10);
        sample.observe(&issued("app", Some("rt-1"), None, None));
        sample.observe(&issued("app", None, None, Some("rt-k")));
        assert_eq!(values(&sample), ["rt-1", "rt-k"]);
        // A rotation replaces the token; a kept one stays once.
        sample.observe(&issued("app", Some("rt-2"), Some("rt-1"), None));
        sample.observe(&issued("app", None, None, Some("rt-k")));
        assert_eq!(values(&sample), ["rt-2", "rt-k"]);
        sample.observe(&TokenEvent::Revoked {
            client_id: Some("app".into()),
            subject: None,
            token: Some("rt-2".into()),
        });
        assert_eq!(values(&sample), ["rt-k"]);
        // No value ever prints.
        assert!(!format!("{:?}", sample.snapshot()).contains("rt-k"));
    }

    #[test]
    fn the_reservoir_stays_bounded_and_takes_late_tokens_too() {
        let sample = LiveSample::new(5);
        for i in 0..1000 {
            sample.observe(&issued("app", Some(&format!("rt-{i}")), None, None));
        }
        assert_eq!(sample.snapshot().len(), 5);
        assert_eq!(sample.seen(), 1000);
        let late = values(&sample)
            .iter()
            .filter(|v| v[3..].parse::<u32>().unwrap() >= 5)
            .count();
        assert!(late > 0, "only the first tokens were kept");
    }
}
