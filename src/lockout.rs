//! Failure counting and lockout (SPEC §5, §10): `max_failures` failed attempts within `window`
//! lock the user's factors for `duration`; a right code clears the count, a right password gives
//! back only its own attempt; asking for a new code does neither. Counting comes before checking:
//! an attempt reserves its failure before its code is compared, so however many attempts arrive
//! at once, at most `max_failures` codes are compared.

use serde::{Deserialize, Serialize};

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

impl LockoutState {
    /// Seconds until the lock ends, when locked at `now`.
    pub fn retry_after(&self, now: i64) -> Option<i64> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Reserves one attempt at `now`: counts its failure in advance, unless the user is locked or
    /// the window already holds `max_failures` failures (then the attempt is refused and no code
    /// may be compared). The failure that reaches the limit sets the lock at once, so that
    /// attempts arriving while it is being checked are refused; a success clears both.
    pub fn reserve(&mut self, now: i64, policy: Policy) -> Reservation {
        if let Some(retry_after) = self.retry_after(now) {
            return Reservation::Refused { retry_after };
        }
        if self.locked_until.take().is_some() {
            // An expired lock starts a clean slate.
            self.failures.clear();
        }
        self.failures.retain(|t| now - t < policy.window);
        let limit = policy.max_failures as usize;
        if self.failures.len() >= limit {
            // Only when the limit was lowered since these failures were counted.
            self.locked_until = Some(now.saturating_add(policy.duration));
            return Reservation::Refused {
                retry_after: policy.duration,
            };
        }
        self.failures.push(now);
        if self.failures.len() >= limit {
            self.locked_until = Some(now.saturating_add(policy.duration));
            return Reservation::Granted {
                locks: Some(policy.duration),
            };
        }
        Reservation::Granted { locks: None }
    }

    /// Gives back the one attempt reserved at `reserved_at` whose credential proved right, and
    /// nothing else: the failures other attempts counted stay counted. A right password must not
    /// wipe the wrong codes before it, or whoever holds the password could guess the second
    /// factor without end (SPEC §10). The lock goes only when this attempt's reservation set it
    /// (`locks`, as [`Reservation::Granted`] reported it), and has not been set anew since.
    pub fn release(&mut self, reserved_at: i64, locks: Option<i64>) {
        if let Some(i) = self.failures.iter().rposition(|t| *t == reserved_at) {
            self.failures.remove(i);
        }
        if let Some(duration) = locks
            && self.locked_until == Some(reserved_at.saturating_add(duration))
        {
            self.locked_until = None;
        }
    }
}

/// The outcome of [`LockoutState::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The code may be compared; its failure is already counted. `locks` holds the lock's length
    /// in seconds when this attempt's failure is the one that locked the user.
    Granted { locks: Option<i64> },
    /// Locked: no code may be compared for this many more seconds.
    Refused { retry_after: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        max_failures: 5,
        window: 300,
        duration: 900,
    };

    fn reserve_n(s: &mut LockoutState, n: usize, now: i64) -> Vec<Reservation> {
        (0..n).map(|_| s.reserve(now, POLICY)).collect()
    }

    #[test]
    fn five_failures_in_the_window_lock_for_the_duration() {
        let mut s = LockoutState::default();
        for i in 0..4 {
            assert_eq!(
                s.reserve(1000 + i, POLICY),
                Reservation::Granted { locks: None }
            );
            assert_eq!(s.retry_after(1000 + i), None);
        }
        assert_eq!(
            s.reserve(1004, POLICY),
            Reservation::Granted { locks: Some(900) }
        );
        assert_eq!(s.retry_after(1004), Some(900));
        assert_eq!(s.retry_after(1904), None);
    }

    #[test]
    fn no_more_than_max_failures_attempts_are_granted_at_once() {
        let mut s = LockoutState::default();
        let outcomes = reserve_n(&mut s, 100, 1000);
        let granted = outcomes
            .iter()
            .filter(|r| matches!(r, Reservation::Granted { .. }))
            .count();
        assert_eq!(granted, 5);
        assert_eq!(outcomes[4], Reservation::Granted { locks: Some(900) });
        assert!(
            outcomes[5..]
                .iter()
                .all(|r| *r == Reservation::Refused { retry_after: 900 })
        );
        assert_eq!(s.failures.len(), 5, "refused attempts count nothing more");
    }

    #[test]
    fn a_locked_user_is_refused_until_the_lock_ends_then_starts_afresh() {
        let mut s = LockoutState::default();
        reserve_n(&mut s, 5, 1000);
        assert_eq!(
            s.reserve(1899, POLICY),
            Reservation::Refused { retry_after: 1 }
        );
        assert_eq!(
            s.reserve(1900, POLICY),
            Reservation::Granted { locks: None }
        );
        assert_eq!(s.failures, vec![1900]);
        assert_eq!(s.locked_until, None);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut s = LockoutState::default();
        for i in 0..4 {
            s.reserve(1000 + i * 100, POLICY);
        }
        assert_eq!(
            s.reserve(1400, POLICY),
            Reservation::Granted { locks: None }
        );
        assert_eq!(s.retry_after(1400), None, "{s:?}");
        assert_eq!(s.failures, vec![1200, 1300, 1400]);
    }

    #[test]
    fn a_released_attempt_leaves_the_other_failures_counted() {
        let mut s = LockoutState::default();
        reserve_n(&mut s, 3, 1000);
        assert_eq!(
            s.reserve(1001, POLICY),
            Reservation::Granted { locks: None }
        );
        s.release(1001, None);
        assert_eq!(s.failures, vec![1000, 1000, 1000]);
        // The attempt that set the lock takes it away when it was right...
        reserve_n(&mut s, 1, 1002);
        let locks = s.reserve(1003, POLICY);
        assert_eq!(locks, Reservation::Granted { locks: Some(900) });
        s.release(1003, Some(900));
        assert_eq!(s.failures.len(), 4);
        assert_eq!(s.retry_after(1003), None);
        // ...and the next wrong one locks again.
        assert_eq!(
            s.reserve(1004, POLICY),
            Reservation::Granted { locks: Some(900) }
        );
        // A lock another attempt set stays.
        s.release(1004, None);
        assert_eq!(s.retry_after(1004), Some(900));
    }

    #[test]
    fn a_lowered_limit_refuses_and_locks_a_full_window() {
        let mut s = LockoutState {
            failures: vec![1000, 1001, 1002],
            locked_until: None,
        };
        let lower = Policy {
            max_failures: 2,
            ..POLICY
        };
        assert_eq!(
            s.reserve(1003, lower),
            Reservation::Refused { retry_after: 900 }
        );
        assert_eq!(s.retry_after(1003), Some(900));
    }
}
