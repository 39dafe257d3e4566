//! The `rate_limit` of `[[routes]]` (SPEC §13): a token bucket per rule, per user (per client
//! address for anonymous requests, IPv6 by /64), with governor's GCRA.
//!
//! Memory is bounded whatever clients do: each rule holds at most [`MAX_KEYS`] buckets; a key
//! that finds no room shares one overflow bucket (so a flood of new addresses is limited
//! together, and the users already counted keep their own buckets), and buckets that have refilled
//! are dropped every [`SWEEP_EVERY`] (governor's `retain_recent`). The `rate_limited` audit
//! record is written at most once per key per minute, for at most [`AUDITED_KEYS`] keys a minute (the
//! rest share one record).
//!
//! Buckets live in memory: limits are per replica. A reload keeps the buckets of the rules whose
//! `path_prefix` and `rate_limit` are unchanged; a rule whose limit changed starts afresh.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{AccessRule, RateLimit};

/// The most buckets one rule holds (besides the shared overflow bucket).
pub const MAX_KEYS: usize = 100_000;

/// How often buckets that have refilled are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The least time between two `rate_limited` audit records of one key.
pub const AUDIT_EVERY: Duration = Duration::from_secs(60);

/// The most keys of one rule audited within [`AUDIT_EVERY`]: beyond them, refusals share the
/// overflow key's record, so that a client holding many addresses (an IPv6 /48 is 65 536 keys)
/// writes a bounded number of records.
pub const AUDITED_KEYS: usize = 100;

/// Whose bucket a request takes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An authenticated user, by id.
    User(String),
    /// An anonymous client: an IPv4 address or an IPv6 /64.
    Client(IpAddr),
    /// Every key that found no room.
    Overflow,
}

impl Key {
    /// The key of an anonymous client at `ip` (an IPv4-mapped address as its IPv4 one; IPv6 by
    /// /64, a subscriber's usual allocation).
    pub fn client(ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Key::Client(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Key::Client(v4),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::User(id) => write!(f, "user {id}"),
            Key::Client(IpAddr::V6(v6)) => write!(f, "client {v6}/64"),
            Key::Client(ip) => write!(f, "client {ip}"),
            Key::Overflow => f.write_str("overflow"),
        }
    }
}

/// governor's keyed state, bounded: a key it has no room for is measured as [`Key::Overflow`].
struct Bounded {
    map: Mutex<HashMap<Key, Nanos>>,
    cap: usize,
}

impl StateStore for Bounded {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if map.contains_key(key) || map.len() < self.cap {
            key
        } else {
            &Key::Overflow
        };
        let (out, tat) = f(map.get(key).copied())?;
        map.insert(key.clone(), tat);
        Ok(out)
    }
}

impl ShrinkableKeyedStateStore<Key> for Bounded {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, tat| *tat > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request over the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Seconds until the bucket has a token again (at least 1): `Retry-After`.
    pub retry_after: u64,
    /// Whether this refusal is to be audited (the key's first in [`AUDIT_EVERY`]).
    pub audit: bool,
}

/// The buckets of one rule.
pub struct RuleLimit {
    limit: RateLimit,
    limiter: RateLimiter<Key, Bounded, DefaultClock>,
    cap: usize,
    last_sweep: Mutex<Instant>,
    audited: Mutex<HashMap<Key, Instant>>,
}

impl RuleLimit {
    pub fn new(limit: RateLimit) -> RuleLimit {
        RuleLimit::with_cap(limit, MAX_KEYS)
    }

    fn with_cap(limit: RateLimit, cap: usize) -> RuleLimit {
        let count = NonZeroU32::new(limit.count).unwrap_or(NonZeroU32::MIN);
        let quota = match limit.per.as_secs() {
            1 => Quota::per_second(count),
            60 => Quota::per_minute(count),
            _ => Quota::per_hour(count),
        };
        let state = Bounded {
            map: Mutex::new(HashMap::new()),
            cap,
        };
        RuleLimit {
            limit,
            limiter: RateLimiter::new(quota, state, DefaultClock::default()),
            cap,
            last_sweep: Mutex::new(Instant::now()),
            audited: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `key`'s bucket, or says how long until there is one.
    pub fn check(&self, key: &Key) -> Result<(), Limited> {
        self.sweep(false);
        let Err(not_until) = self.limiter.check_key(key) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(self.limiter.clock().now());
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Err(Limited {
            retry_after: retry_after.max(1),
            audit: self.first_refusal(key),
        })
    }

    /// How many buckets are held (the overflow bucket included).
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    /// Drops the buckets that have refilled, every [`SWEEP_EVERY`] (or now, with `force`).
    fn sweep(&self, force: bool) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if !force && last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        drop(last);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let mut audited = self.audited.lock().unwrap_or_else(PoisonError::into_inner);
        audited.retain(|_, at| at.elapsed() < AUDIT_EVERY);
        audited.shrink_to_fit();
    }

    /// Whether `key` was not refused in the last [`AUDIT_EVERY`] (and now is, from here on).
    fn first_refusal(&self, key: &Key) -> bool {
        let mut audited = self.audited.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if audited.contains_key(key) || audited.len() < self.cap.min(AUDITED_KEYS) {
            key
        } else {
            &Key::Overflow
        };
        match audited.get(key) {
            Some(at) if at.elapsed() < AUDIT_EVERY => false,
            _ => {
                audited.insert(key.clone(), Instant::now());
                true
            }
        }
    }
}

/// The buckets of every rule with a `rate_limit`, each by the rule's match-key prefix and match
/// conditions (`methods`, `source`): rules of one prefix differ in those, and each has buckets of
/// its own.
#[derive(Default)]
pub struct Limits {
    rules: Vec<(AccessRule, Arc<RuleLimit>)>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|(r, _)| &r.path_prefix))
            .finish()
    }
}

/// Whether two rules are one rule to the limiter: the same match-key prefix and conditions.
fn same_rule(a: &AccessRule, b: &AccessRule) -> bool {
    a.path_prefix == b.path_prefix && a.methods == b.methods && a.source == b.source
}

impl Limits {
    /// The buckets for `rules`, taken from `previous` for each rule whose prefix, conditions and
    /// limit are unchanged.
    pub fn new(rules: &[AccessRule], previous: Option<&Limits>) -> Limits {
        let mut held = Vec::new();
        for rule in rules {
            let Some(limit) = rule.rate_limit else {
                continue;
            };
            let mut rule = rule.clone();
            rule.path_prefix = crate::path::match_key(&rule.path_prefix).into_owned();
            let kept = previous
                .and_then(|p| p.rules.iter().find(|(r, _)| same_rule(r, &rule)))
                .map(|(_, l)| l)
                .filter(|l| l.limit == limit)
                .cloned();
            held.push((
                rule,
                kept.unwrap_or_else(|| Arc::new(RuleLimit::new(limit))),
            ));
        }
        Limits { rules: held }
    }

    /// The buckets of `rule` (as [`crate::routes::AccessRules`] holds it), if it has a limit.
    /// A request decided with the rules of just before a reload that changed the rule's
    /// conditions gets the buckets of a rule of its prefix: a limited rule is never left without.
    pub fn of(&self, rule: &AccessRule) -> Option<&Arc<RuleLimit>> {
        rule.rate_limit?;
        self.rules
            .iter()
            .find(|(r, _)| same_rule(r, rule))
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|(r, _)| r.path_prefix == rule.path_prefix)
            })
            .map(|(_, l)| l)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limit(count: u32, secs: u64) -> RateLimit {
        RateLimit {
            count,
            per: Duration::from_secs(secs),
        }
    }

    #[test]
    fn rules_of_one_prefix_have_buckets_of_their_own_kept_across_a_reload() {
        use crate::config::Access;
        let post = AccessRule {
            methods: vec!["POST".into()],
            rate_limit: Some(limit(5, 60)),
            ..AccessRule::new("/login/", Access::Public)
        };
        let any = AccessRule {
            rate_limit: Some(limit(600, 60)),
            ..AccessRule::new("/login/", Access::Public)
        };
        let rules = [post.clone(), any.clone()];
        let limits = Limits::new(&rules, None);
        let (of_post, of_any) = (limits.of(&post).unwrap(), limits.of(&any).unwrap());
        assert_eq!(of_post.limit, limit(5, 60));
        assert_eq!(of_any.limit, limit(600, 60));
        let ada = Key::User("ada".into());
        for _ in 0..5 {
            assert_eq!(of_post.check(&ada), Ok(()));
        }
        assert!(of_post.check(&ada).is_err(), "POST has its own 5/m");
        assert_eq!(of_any.check(&ada), Ok(()));
        // A reload keeps each rule's buckets: the spent POST bucket stays spent.
        let again = Limits::new(&rules, Some(&limits));
        assert!(again.of(&post).unwrap().check(&ada).is_err());
        assert!(Arc::ptr_eq(again.of(&any).unwrap(), of_any));
        // A rule as it was before a reload changed its conditions still finds a bucket.
        let stale = AccessRule {
            methods: vec!["PUT".into()],
            ..post.clone()
        };
        assert!(again.of(&stale).is_some());
    }

    #[test]
    fn a_bucket_lets_its_count_through_then_says_when_to_retry() {
        let l = RuleLimit::new(limit(3, 60));
        let ada = Key::User("ada".into());
        for _ in 0..3 {
            assert_eq!(l.check(&ada), Ok(()));
        }
        let refused = l.check(&ada).unwrap_err();
        assert!((1..=20).contains(&refused.retry_after), "{refused:?}");
        assert!(refused.audit);
        // Audited once per minute per key.
        assert!(!l.check(&ada).unwrap_err().audit);
        // Another key has its own bucket.
        assert_eq!(l.check(&Key::User("bob".into())), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_addresses_are_ipv4() {
        assert_eq!(
            Key::client("2001:db8:1:2::1".parse().unwrap()),
            Key::client("2001:db8:1:2:ffff::9".parse().unwrap())
        );
        assert_ne!(
            Key::client("2001:db8:1:2::1".parse().unwrap()),
            Key::client("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            Key::client("::ffff:192.0.2.1".parse().unwrap()),
            Key::client("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn the_key_space_is_bounded_and_new_keys_share_the_overflow_bucket() {
        let l = RuleLimit::with_cap(limit(2, 3600), 50);
        for i in 0..1000u32 {
            let _ = l.check(&Key::client(IpAddr::from(i.to_be_bytes())));
        }
        assert!(l.keys() <= 51, "{}", l.keys());
        // The keys that had room keep their own buckets.
        assert_eq!(
            l.check(&Key::client(IpAddr::from(0u32.to_be_bytes()))),
            Ok(())
        );
        // The rest were limited together.
        assert!(
            l.check(&Key::client(IpAddr::from(999u32.to_be_bytes())))
                .is_err()
        );
        let audited = l.audited.lock().unwrap().len();
        assert!(audited <= 51, "{audited}");
    }

    #[test]
    fn refilled_buckets_are_dropped_by_a_sweep() {
        let l = RuleLimit::new(limit(1000, 1));
        for i in 0..100u32 {
            l.check(&Key::User(i.to_string())).unwrap();
        }
        assert_eq!(l.keys(), 100);
        std::thread::sleep(Duration::from_millis(50));
        l.sweep(true);
        assert_eq!(l.keys(), 0);
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_limits() {
        let rule = |p: &str, count| AccessRule {
            rate_limit: Some(limit(count, 60)),
            ..AccessRule::new(p, crate::config::Access::Public)
        };
        let before = Limits::new(&[rule("/a/", 1), rule("/b/", 1)], None);
        let of = |limits: &Limits, p: &str, count| limits.of(&rule(p, count)).unwrap().clone();
        of(&before, "/a/", 1).check(&Key::Overflow).unwrap();
        of(&before, "/b/", 1).check(&Key::Overflow).unwrap();
        let after = Limits::new(&[rule("/a/", 1), rule("/b/", 2)], Some(&before));
        assert!(of(&after, "/a/", 1).check(&Key::Overflow).is_err());
        assert!(of(&after, "/b/", 2).check(&Key::Overflow).is_ok());
    }
}
