//! The limit on failed passwords per client address (SPEC §10): after
//! `auth.failed_password_limit` wrong passwords from one address within
//! `auth.failed_password_window`, that address's passwords are refused (429) without being hashed
//! until the window ends.
//!
//! An attempt reserves its failure before the password is hashed and gives it back when the
//! password was right, so that concurrent guesses cannot overtake the count. The addresses kept
//! are bounded: the least used are evicted beyond [`MAX_ADDRESSES`], and each is forgotten when
//! its window has passed.

use std::net::IpAddr;
use std::time::Duration;

/// How many client addresses are remembered at most.
pub const MAX_ADDRESSES: u64 = 100_000;

/// Refused: too many failures from this address; retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub u64);

/// One address's window: when it began (Unix seconds) and the failures reserved in it.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    failures: u32,
}

pub struct Throttle {
    limit: u32,
    window: i64,
    windows: moka::sync::Cache<IpAddr, Window>,
}

impl Throttle {
    /// `limit` 0 turns the limit off.
    pub fn new(limit: u32, window: Duration) -> Throttle {
        Throttle {
            limit,
            window: i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1),
            windows: moka::sync::Cache::builder()
                .max_capacity(MAX_ADDRESSES)
                .time_to_idle(window.max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// Reserves one failure for `client` at `now` (Unix seconds), or refuses the attempt when the
    /// address has used up its window.
    pub fn reserve(&self, client: IpAddr, now: i64) -> Result<(), Throttled> {
        if self.limit == 0 {
            return Ok(());
        }
        let window = self.window;
        let entry = self.windows.entry(key(client)).and_upsert_with(|old| {
            match old.map(|e| e.into_value()) {
                Some(w) if now - w.start < window => Window {
                    start: w.start,
                    failures: w.failures.saturating_add(1),
                },
                _ => Window {
                    start: now,
                    failures: 1,
                },
            }
        });
        let w = entry.into_value();
        if w.failures > self.limit {
            let left = (w.start + window - now).max(1);
            return Err(Throttled(u64::try_from(left).unwrap_or(1)));
        }
        Ok(())
    }

    /// Refuses `client` at `now` when its window is used up, reserving nothing: for attempts that
    /// need no hash (a credential verified recently), which must not tell a throttled address
    /// that its guess was right.
    pub fn check(&self, client: IpAddr, now: i64) -> Result<(), Throttled> {
        if self.limit == 0 {
            return Ok(());
        }
        match self.windows.get(&key(client)) {
            Some(w) if now - w.start < self.window && w.failures >= self.limit => {
                let left = (w.start + self.window - now).max(1);
                Err(Throttled(u64::try_from(left).unwrap_or(1)))
            }
            _ => Ok(()),
        }
    }

    /// Gives back a failure reserved by [`Throttle::reserve`]: the password was right, or it was
    /// never checked.
    pub fn release(&self, client: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let key = key(client);
        if self.windows.contains_key(&key) {
            self.windows.entry(key).and_upsert_with(|old| {
                let mut w = old.map(|e| e.into_value()).unwrap_or(Window {
                    start: 0,
                    failures: 0,
                });
                w.failures = w.failures.saturating_sub(1);
                w
            });
        }
    }
}

/// The key of an address: IPv4 (also IPv4-mapped IPv6) as it is; IPv6 by its /64, since one
/// client commonly holds a whole /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_address_is_refused_after_the_limit_until_its_window_ends() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.reserve(a, 1000), Ok(()));
        }
        assert_eq!(t.reserve(a, 1010), Err(Throttled(50)));
        assert_eq!(t.reserve(b, 1010), Ok(()));
        assert_eq!(t.reserve(a, 1060), Ok(()));
    }

    #[test]
    fn a_used_up_address_is_refused_by_the_check_too() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.check(a, 1000), Ok(()));
        t.reserve(a, 1000).unwrap();
        assert_eq!(t.check(a, 1000), Ok(()));
        t.reserve(a, 1000).unwrap();
        assert_eq!(t.check(a, 1010), Err(Throttled(50)));
        assert_eq!(t.check(a, 1060), Ok(()));
    }

    #[test]
    fn right_passwords_give_their_reservation_back() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(t.reserve(a, 1000), Ok(()));
            t.release(a);
        }
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_window_and_mapped_ipv4_is_ipv4() {
        let t = Throttle::new(1, Duration::from_secs(60));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let two: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(t.reserve(one, 1000), Ok(()));
        assert!(t.reserve(two, 1000).is_err());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(t.reserve(v4, 1000), Ok(()));
        assert!(t.reserve(mapped, 1000).is_err());
    }

    #[test]
    fn a_zero_limit_never_refuses() {
        let t = Throttle::new(0, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(t.reserve(a, 1000), Ok(()));
        }
    }
}
