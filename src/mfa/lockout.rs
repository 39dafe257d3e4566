//! Failure counting and lockout (SPEC §5): `max_failures` failed attempts within `window` lock the
//! user's factors for `duration`; a success clears the count; asking for a new code does not.

use serde::{Deserialize, Serialize};

use crate::config::LockoutConfig;

/// The stored state of one user's lockout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutState {
    /// Unix times of recent failures, oldest first.
    pub failures: Vec<i64>,
    /// Locked until this Unix time.
    pub locked_until: Option<i64>,
}

/// The limits, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_failures: u32,
    pub window: i64,
    pub duration: i64,
}

impl Policy {
    pub fn from_config(c: &LockoutConfig) -> Policy {
        let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Policy {
            max_failures: c.max_failures,
            window: secs(c.window),
            duration: secs(c.duration),
        }
    }
}

impl LockoutState {
    /// Seconds until the lock ends, when locked at `now`.
    pub fn retry_after(&self, now: i64) -> Option<i64> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts one failure at `now`; locks when the limit is reached.
    pub fn record_failure(&mut self, now: i64, policy: Policy) {
        if self.retry_after(now).is_none() && self.locked_until.is_some() {
            // An expired lock starts a clean slate.
            self.locked_until = None;
            self.failures.clear();
        }
        self.failures.retain(|t| now - t < policy.window);
        self.failures.push(now);
        if self.failures.len() >= policy.max_failures as usize {
            self.locked_until = Some(now + policy.duration);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        max_failures: 5,
        window: 300,
        duration: 900,
    };

    #[test]
    fn five_failures_in_the_window_lock_for_the_duration() {
        let mut s = LockoutState::default();
        for i in 0..4 {
            s.record_failure(1000 + i, POLICY);
            assert_eq!(s.retry_after(1000 + i), None);
        }
        s.record_failure(1004, POLICY);
        assert_eq!(s.retry_after(1004), Some(900));
        assert_eq!(s.retry_after(1904), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut s = LockoutState::default();
        for i in 0..4 {
            s.record_failure(1000 + i * 100, POLICY);
        }
        s.record_failure(1400, POLICY);
        assert_eq!(s.retry_after(1400), None, "{s:?}");
    }
}
