//! Identity headers (SPEC §6): the names in force, and each recent principal's values, set in one
//! place after [`crate::hygiene`] has removed whatever a client sent under any identity name.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub use crate::hygiene::{
    IdentityHeaderNames, Preset, Sanitizer, removed_from_clients, strip_hop_by_hop,
};
use crate::identity::{ASSERTION_TTL, Principal};

/// The identity header values of one principal, the signed assertion last: in the order of
/// [`IdentityHeaders`]'s names, `None` for a value that is absent or cannot be a header value.
type Values = [Option<HeaderValue>; 6];

/// How long a principal's prepared values are reused: half the assertion's lifetime, so that the
/// upstream never receives an assertion with less than half of it left.
const PREPARED_TTL: Duration = Duration::from_secs(ASSERTION_TTL.unsigned_abs() / 2);

/// Principals whose values are kept prepared at most.
const PREPARED_MAX: usize = 10_000;

/// The identity header names, parsed once, and each recent principal's values, ready to send
/// (SPEC §6).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// user, user id, email, scopes, methods, assertion; `None` for a name `http` cannot carry
    /// (configuration validation rejects those, so this is only a guard).
    names: [Option<HeaderName>; 6],
    /// By [`prepared_key`]: a principal's requests within [`PREPARED_TTL`] send the same values
    /// without building, validating or signing any of them again. The assertion's audience is
    /// not in the key: each gateway (rebuilt on reload) has one audience and its own cache.
    prepared: Arc<Prepared>,
}

/// Principals' values by [`prepared_key`], each with the moment it is no longer used.
type Prepared = quick_cache::sync::Cache<
    Vec<u8>,
    (Instant, Arc<Values>),
    quick_cache::UnitWeighter,
    foldhash::fast::RandomState,
>;

impl IdentityHeaders {
    pub fn new(names: &IdentityHeaderNames) -> IdentityHeaders {
        IdentityHeaders {
            names: names
                .all()
                .map(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
            prepared: Arc::new(quick_cache::sync::Cache::with(
                // Grown as principals come: an idle gatehouse reserves little.
                64,
                PREPARED_MAX as u64,
                quick_cache::UnitWeighter,
                foldhash::fast::RandomState::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            )),
        }
    }

    /// Sets the identity headers for `principal`, with an assertion from `assertion` when none
    /// is prepared for exactly this principal. Called after [`Sanitizer::clean_request`], so each
    /// header is inserted over nothing: there is exactly one copy of each, gatehouse's.
    pub fn set<E>(
        &self,
        headers: &mut HeaderMap,
        principal: &Principal,
        assertion: impl FnOnce() -> Result<HeaderValue, E>,
    ) -> Result<(), E> {
        let key = prepared_key(principal);
        let now = Instant::now();
        let values = match self.prepared.get(key.as_slice()) {
            Some((until, values)) if now < until => values,
            _ => {
                let values = Arc::new(values(principal, assertion()?));
                self.prepared
                    .insert(key, (now + PREPARED_TTL, values.clone()));
                values
            }
        };
        for (name, value) in self.names.iter().zip(values.iter()) {
            let Some(name) = name else {
                continue;
            };
            match value {
                Some(v) => {
                    headers.insert(name.clone(), v.clone());
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        Ok(())
    }
}

/// Everything the values derive from, each part preceded by its length, so that no two
/// principals share a key whatever their names, emails or scopes contain.
fn prepared_key(principal: &Principal) -> Vec<u8> {
    fn part(key: &mut Vec<u8>, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        key.extend_from_slice(&len.to_le_bytes());
        key.extend_from_slice(bytes);
    }
    let mut key = Vec::with_capacity(128);
    part(&mut key, principal.user_id.as_bytes());
    part(&mut key, principal.user_name.as_bytes());
    match &principal.email {
        Some(email) => part(&mut key, email.as_bytes()),
        None => key.push(0xff),
    }
    part(&mut key, &principal.scopes.len().to_le_bytes());
    for scope in &principal.scopes {
        part(&mut key, scope.as_bytes());
    }
    for method in &principal.methods {
        part(&mut key, method.as_str().as_bytes());
    }
    key
}

fn values(principal: &Principal, assertion: HeaderValue) -> Values {
    let scopes = principal.scopes.join(" ");
    let mut methods = String::new();
    for (i, m) in principal.methods.iter().enumerate() {
        if i > 0 {
            methods.push(',');
        }
        methods.push_str(m.as_str());
    }
    let value = |v: &str| HeaderValue::from_str(v).ok();
    [
        value(&principal.user_name),
        value(&principal.user_id),
        principal.email.as_deref().and_then(value),
        value(&scopes),
        value(&methods),
        Some(assertion),
    ]
}

#[cfg(test)]
mod identity_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::Method;

    fn ada() -> Principal {
        Principal {
            user_id: "7".into(),
            user_name: "ada".into(),
            email: None,
            scopes: vec!["read".into(), "write".into()],
            organizations: vec![],
            methods: vec![Method::Pwd, Method::Otp],
        }
    }

    /// Sets `principal`'s headers into a fresh map; `signed` counts the assertions asked for.
    fn set(identity: &IdentityHeaders, principal: &Principal, signed: &mut u32) -> HeaderMap {
        let mut h = HeaderMap::new();
        identity
            .set(&mut h, principal, || {
                *signed += 1;
                Ok::<_, ()>(HeaderValue::from_str(&format!("jwt-{signed}")).unwrap())
            })
            .unwrap();
        h
    }

    #[test]
    fn identity_headers_carry_the_principal_under_the_preset_names() {
        let mut h = HeaderMap::new();
        h.insert("remote-email", HeaderValue::from_static("stale"));
        IdentityHeaders::new(&Preset::Authelia.names())
            .set(&mut h, &ada(), || {
                Ok::<_, ()>(HeaderValue::from_static("jwt"))
            })
            .unwrap();
        assert_eq!(h["remote-user"], "ada");
        assert_eq!(h["remote-groups"], "read write");
        assert_eq!(h["remote-methods"], "pwd,otp");
        assert_eq!(h["remote-assertion"], "jwt");
        assert!(!h.contains_key("remote-email"));
    }

    #[test]
    fn a_principal_seen_again_gets_the_same_assertion_without_signing() {
        let identity = IdentityHeaders::new(&Preset::Gatehouse.names());
        let mut signed = 0;
        let first = set(&identity, &ada(), &mut signed);
        let again = set(&identity, &ada(), &mut signed);
        assert_eq!(signed, 1);
        assert_eq!(first, again);
        assert_eq!(again["x-auth-assertion"], "jwt-1");
    }

    #[test]
    fn prepared_values_are_kept_for_a_bounded_number_of_principals() {
        let identity = IdentityHeaders::new(&Preset::Gatehouse.names());
        let mut signed = 0;
        for i in 0..(PREPARED_MAX + 2_000) {
            let principal = Principal {
                user_id: i.to_string(),
                ..ada()
            };
            set(&identity, &principal, &mut signed);
        }
        assert!(
            identity.prepared.len() <= PREPARED_MAX,
            "{}",
            identity.prepared.len()
        );
    }

    #[test]
    fn prepared_values_are_not_used_past_their_time() {
        let identity = IdentityHeaders::new(&Preset::Gatehouse.names());
        let mut signed = 0;
        set(&identity, &ada(), &mut signed);
        // As though PREPARED_TTL had passed since they were prepared.
        let key = prepared_key(&ada());
        let (_, values) = identity.prepared.get(key.as_slice()).unwrap();
        identity
            .prepared
            .insert(key, (Instant::now() - Duration::from_millis(1), values));
        let again = set(&identity, &ada(), &mut signed);
        assert_eq!(signed, 2, "a new assertion is signed");
        assert_eq!(again["x-auth-assertion"], "jwt-2");
    }

    #[test]
    fn any_change_to_the_principal_gets_new_values_and_a_new_assertion() {
        let identity = IdentityHeaders::new(&Preset::Gatehouse.names());
        let mut signed = 0;
        set(&identity, &ada(), &mut signed);
        let changes: [fn(&mut Principal); 6] = [
            |p| p.user_name = "ada.l".into(),
            |p| p.email = Some("ada@example.com".into()),
            |p| p.scopes.push("admin".into()),
            |p| {
                p.methods.pop();
            },
            |p| p.user_id = "8".into(),
            // The same words split differently are a different principal.
            |p| p.scopes = vec!["read write".into()],
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut changed = ada();
            change(&mut changed);
            let h = set(&identity, &changed, &mut signed);
            assert_eq!(signed, u32::try_from(i).unwrap() + 2, "change {i}");
            assert_eq!(h["x-auth-assertion"], format!("jwt-{signed}").as_str());
        }
        assert_eq!(set(&identity, &ada(), &mut signed)["x-auth-user"], "ada");
        assert_eq!(
            signed, 7,
            "the original principal's values are still prepared"
        );
    }

    #[test]
    fn an_assertion_that_cannot_be_signed_sets_nothing_and_is_not_remembered() {
        let identity = IdentityHeaders::new(&Preset::Gatehouse.names());
        let mut h = HeaderMap::new();
        let refused = identity.set(&mut h, &ada(), || Err::<HeaderValue, _>("no key"));
        assert_eq!(refused, Err("no key"));
        assert!(h.is_empty());
        let mut signed = 0;
        set(&identity, &ada(), &mut signed);
        assert_eq!(signed, 1);
    }
}
