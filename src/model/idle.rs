//! Session idle timers (domain-gaps Q2.5): a Connect2id session ends after
//! `max_idle` minutes without use, counted from its last-used time. That
//! time moves on the primary with every use (an SSO login, a session read)
//! and cannot be imported (a real server sets it to "now" on import), so
//! the secondary's copy keeps the session alive as long as the primary's
//! only if its own last-used time is not earlier. The fields themselves
//! are left out of record comparisons ([`super::Dataset::comparable`]);
//! this is how they are compared instead.

use std::time::Duration;

use serde_json::Value;

/// How far a secondary session's last use may trail the primary's before
/// it counts as behind: longer than the trigger hook's coalescing of
/// session uses and the sync lag, far shorter than any idle limit
/// (minutes to days).
pub const LAST_USED_TOLERANCE: Duration = Duration::from_secs(120);

/// The names a session's last-used time (epoch seconds) goes by.
const LAST_USED_FIELDS: [&str; 3] = ["last_used", "lut", "last_used_time"];

/// A session record's last-used time in epoch seconds, if it shows one.
pub fn last_used(session: &Value) -> Option<u64> {
    LAST_USED_FIELDS
        .iter()
        .find_map(|name| session.get(*name).and_then(Value::as_u64))
}

/// Whether `secondary` was last used more than `tolerance` before
/// `primary`: it would idle out there first. Records without the time say
/// nothing (false).
pub fn behind(primary: &Value, secondary: &Value, tolerance: Duration) -> bool {
    behind_times(last_used(primary), last_used(secondary), tolerance)
}

/// [`behind`] on the two last-used times alone (epoch seconds, `None` for
/// a record that shows none), for a caller that kept only the secondary's
/// time and not its record.
pub fn behind_times(primary: Option<u64>, secondary: Option<u64>, tolerance: Duration) -> bool {
    match (primary, secondary) {
        (Some(primary), Some(secondary)) => secondary.saturating_add(tolerance.as_secs()) < primary,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_secondary_is_behind_only_beyond_the_tolerance() {
        let tolerance = Duration::from_secs(60);
        let primary = json!({"sub": "alice", "last_used": 1_000});
        assert!(behind(&primary, &json!({"last_used": 939}), tolerance));
        assert!(!behind(&primary, &json!({"last_used": 940}), tolerance));
        assert!(!behind(&primary, &json!({"lut": 2_000}), tolerance));
        assert!(!behind(&primary, &json!({"sub": "alice"}), tolerance));
        assert_eq!(last_used(&json!({"last_used_time": 7})), Some(7));
    }
}
