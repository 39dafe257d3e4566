//! Browser sessions (SPEC §11): records in the store, found by the hash of an id that only the
//! visitor's cookie holds, with an idle and an absolute end, rotated at sign-in and step-up.
//!
//! The store is asked on every request, so a session ended on one replica (logout, sign-out
//! everywhere, password change, MFA reset) is refused by every replica on the next request.
//! `last_seen` is written at most once per [`Sessions::touch_every`], so that a busy session does
//! not cost a store write per request; the idle end is that much coarse.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{self, HeaderValue};

use crate::clock::Clock;
use crate::config::SessionsConfig;
use crate::secrets::Vault;
use crate::store::{Session, Store, StoreResult};

/// Bytes of randomness in a session id and a CSRF cookie.
const ID_BYTES: usize = 32;
/// Length of an id in the cookie: 32 bytes in unpadded base64url.
const ID_CHARS: usize = 43;
/// How often, at most, ended sessions are purged from the store (seconds).
const PURGE_EVERY: i64 = 600;
/// Slots of [`HashedIds`].
const HASHED_SLOTS: usize = 256;

/// A session as a request presents it, once found live.
#[derive(Debug, Clone)]
pub struct Live {
    /// Shared with the store's decoded copy: read, not changed.
    pub session: Arc<Session>,
    /// Unix seconds when it ends unless used again: the earlier of the idle and absolute ends.
    pub ends: i64,
}

/// What the session cookie of a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No session cookie.
    None,
    /// One well-formed id.
    Id(&'a str),
    /// Several different values, or one that cannot be an id: no session.
    Unusable,
}

/// The sessions of this gatehouse: ids, cookies, lookups and ends.
pub struct Sessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    vault: Arc<Vault>,
    cookie_name: String,
    csrf_cookie_name: String,
    /// The cookie that binds a sign-in at an external provider to the browser that started it.
    flow_cookie_name: String,
    idle: i64,
    max_age: i64,
    keep: usize,
    last_purge: AtomicI64,
    hashed: HashedIds,
}

/// An id and its store key, in [`HashedIds`].
type Slot = Option<([u8; ID_CHARS], Box<str>)>;

/// The store keys of ids found live lately. A browser sends its cookie with every request, and
/// the id's SHA-256 was the largest part of a session request's own work; a remembered key costs
/// a few instructions to find its slot and a constant-time comparison. The slots are fixed
/// (one id each, a newer id in the same slot takes it over), so however many ids are presented
/// the memo holds no more; only ids whose session was found are remembered, so a flood of
/// invented ids cannot push out the live ones. The store is still asked on every request: this
/// only spares computing the key it is asked with.
struct HashedIds {
    seed: u64,
    slots: std::sync::Mutex<Vec<Slot>>,
}

impl HashedIds {
    fn new(slots: usize) -> HashedIds {
        HashedIds {
            seed: {
                use std::hash::BuildHasher;
                foldhash::fast::RandomState::default().hash_one(0u64)
            },
            slots: std::sync::Mutex::new(vec![None; slots.max(1)]),
        }
    }

    /// The slot of `id`: its first eight characters, mixed with the seed. Only ids gatehouse
    /// issued (random, found live) are ever held, so nobody outside chooses where they land.
    fn slot(&self, id: &[u8; ID_CHARS], slots: usize) -> usize {
        let mut head = [0u8; 8];
        head.copy_from_slice(&id[..8]);
        let mixed = (u64::from_le_bytes(head) ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Truncation is the point: the high half only picks a slot.
        #[allow(clippy::cast_possible_truncation)]
        let h = (mixed >> 32) as usize;
        h % slots
    }

    /// Runs `f` on the slot of `id` with whether the slot holds `id` itself (compared in
    /// constant time). `None` when `id` cannot be an id or the slots are unusable.
    fn entry<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Slot, bool, &[u8; ID_CHARS]) -> T,
    ) -> Option<T> {
        use subtle::ConstantTimeEq;
        let id: &[u8; ID_CHARS] = id.as_bytes().try_into().ok()?;
        let mut slots = self.slots.lock().ok()?;
        let slot = self.slot(id, slots.len());
        let entry = slots.get_mut(slot)?;
        let holds = entry
            .as_ref()
            .is_some_and(|(held, _)| bool::from(held.ct_eq(id)));
        Some(f(entry, holds, id))
    }

    fn remembered(&self, id: &str) -> Option<String> {
        self.entry(id, |entry, holds, _| {
            entry
                .as_ref()
                .filter(|_| holds)
                .map(|(_, key)| String::from(&**key))
        })
        .flatten()
    }

    /// Remembers `key` as the store key of `id` (whose session was just found live), in place
    /// of the id its slot held.
    fn remember(&self, id: &str, key: &str) {
        self.entry(id, |entry, _, id| {
            wipe(entry);
            *entry = Some((*id, key.into()));
        });
    }

    /// Forgets `id` (its session ended): no id outlives its session here.
    fn forget(&self, id: &str) {
        self.entry(id, |entry, holds, _| {
            if holds {
                wipe(entry);
            }
        });
    }

    /// Forgets the id whose store key is `key` (its session was rotated away; the id itself is
    /// not at hand). Rare, so a scan of every slot.
    fn forget_key(&self, key: &str) {
        if let Ok(mut slots) = self.slots.lock() {
            for entry in slots.iter_mut() {
                if entry.as_ref().is_some_and(|(_, held)| **held == *key) {
                    wipe(entry);
                }
            }
        }
    }
}

/// Overwrites the id an entry holds before it is dropped or replaced.
fn wipe(entry: &mut Slot) {
    if let Some((held, _)) = entry.as_mut() {
        held.fill(0);
        std::hint::black_box(&held);
    }
    *entry = None;
}

/// A fresh random id, as the cookie carries it (256 bits in unpadded base64url).
pub fn new_id() -> Result<String, String> {
    let mut bytes = [0u8; ID_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system random source failed".to_owned())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The store's key for an id: SHA-256 in lower-case hex. The id has 256 random bits, so an
/// unkeyed hash is enough to make a stolen store useless for signing in.
pub fn id_hash(id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// Whether `value` has the form of an id gatehouse issues.
fn well_formed(value: &str) -> bool {
    value.len() == ID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Every value of the cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4). A header
/// is read as UTF-8, not only as visible ASCII: browsers send every cookie of the host in one
/// header, the application's own among them, and those may hold UTF-8.
fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, value) = pair.split_once('=')?;
            // ASCII whitespace only, as browsers trim names before they check a `__Host-`
            // prefix: a name padded with other spaces is another site's cookie, not ours.
            (n.trim_ascii() == name).then(|| value.trim_ascii().trim_matches('"'))
        })
}

/// The one value of the cookie `name`: `Presented::Unusable` when the request carries two
/// different ones (a cookie planted beside the real one must not be chosen between) or one that
/// is not an id.
fn presented<'h>(headers: &'h HeaderMap, name: &'h str) -> Presented<'h> {
    let mut values = cookie_values(headers, name);
    let Some(first) = values.next() else {
        return Presented::None;
    };
    if values.any(|other| other != first) || !well_formed(first) {
        return Presented::Unusable;
    }
    Presented::Id(first)
}

/// `Cookie` without the cookies named `names`; `None` when nothing is left.
pub fn without_cookies(value: &str, names: &[&str]) -> Option<String> {
    let mut kept: Option<String> = None;
    for pair in value.split(';').map(str::trim_ascii) {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim_ascii();
        if pair.is_empty() || names.contains(&name) {
            continue;
        }
        match kept.as_mut() {
            Some(kept) => {
                kept.push_str("; ");
                kept.push_str(pair);
            }
            None => kept = Some(pair.to_owned()),
        }
    }
    kept
}

impl Sessions {
    pub fn new(
        config: &SessionsConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        vault: Arc<Vault>,
    ) -> Sessions {
        let seconds = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Sessions {
            store,
            clock,
            vault,
            csrf_cookie_name: format!("{}-csrf", config.cookie_name),
            flow_cookie_name: format!("{}-oidc", config.cookie_name),
            cookie_name: config.cookie_name.clone(),
            idle: seconds(config.idle_timeout),
            max_age: seconds(config.max_age),
            keep: config.max_per_user,
            last_purge: AtomicI64::new(0),
            hashed: HashedIds::new(HASHED_SLOTS),
        }
    }

    /// What the request's session cookie holds.
    pub fn presented<'h>(&'h self, headers: &'h HeaderMap) -> Presented<'h> {
        presented(headers, &self.cookie_name)
    }

    /// The names of gatehouse's own cookies: the session's, the CSRF cookie's and the external
    /// sign-in's.
    fn names(&self) -> [&str; 3] {
        [
            self.cookie_name.as_str(),
            self.csrf_cookie_name.as_str(),
            self.flow_cookie_name.as_str(),
        ]
    }

    /// How long `last_seen` may lag: a minute, or less for short idle timeouts.
    fn touch_every(&self) -> i64 {
        (self.idle / 10).clamp(1, 60)
    }

    /// The live session the id names, its `last_seen` moved on when due; `None` when it is
    /// unknown or has ended (an ended one is deleted on the way).
    pub async fn find(&self, id: &str) -> StoreResult<Option<Live>> {
        let remembered = self.hashed.remembered(id);
        let fresh = remembered.is_none();
        let hash = remembered.unwrap_or_else(|| id_hash(id));
        let live = self.live(&hash).await?;
        match (&live, fresh) {
            (Some(_), true) => self.hashed.remember(id, &hash),
            // Ended since (here or on another replica): the id is worth nothing now, and is
            // not kept.
            (None, false) => self.hashed.forget(id),
            _ => {}
        }
        Ok(live)
    }

    /// [`Sessions::find`] by the id's store key.
    async fn live(&self, hash: &str) -> StoreResult<Option<Live>> {
        let Some(session) = self.store.shared_session(hash).await? else {
            return Ok(None);
        };
        let now = self.clock.unix();
        let ends = self.ends(&session);
        if ends <= now {
            self.store.delete_session(hash).await?;
            return Ok(None);
        }
        if now - session.last_seen >= self.touch_every() {
            // Gone meanwhile (ended on another replica): not live, whatever was read before.
            if !self.store.touch_session(hash, now).await? {
                return Ok(None);
            }
            let session = Arc::new(Session {
                last_seen: now,
                ..Session::clone(&session)
            });
            let ends = self.ends(&session);
            return Ok(Some(Live { session, ends }));
        }
        Ok(Some(Live { session, ends }))
    }

    /// When `session` ends unless used again.
    fn ends(&self, session: &Session) -> i64 {
        session
            .expires
            .min(session.last_seen.saturating_add(self.idle))
    }

    /// A new session for the user, replacing `previous` (the id the browser held, if any) so that
    /// an id planted before sign-in is worth nothing after it. Returns the new id.
    pub async fn start(
        &self,
        user_id: u64,
        methods: Vec<String>,
        previous: Option<&str>,
        idp: Option<crate::store::IdpLink>,
    ) -> StoreResult<String> {
        let id = new_id().map_err(crate::store::StoreError::Backend)?;
        let now = self.clock.unix();
        let session = Session {
            id_hash: id_hash(&id),
            user_id,
            methods,
            created: now,
            last_seen: now,
            expires: now.saturating_add(self.max_age),
            idp,
        };
        if let Some(previous) = previous {
            self.hashed.forget(previous);
            self.store.delete_session(&id_hash(previous)).await?;
        }
        self.store.create_session(session, self.keep).await?;
        self.purge_when_due(now).await;
        Ok(id)
    }

    /// Rotates `live` to a new id with `methods` (step-up), keeping its absolute end. `None` when
    /// the session ended meanwhile (another request rotated or ended it).
    pub async fn rotate(&self, live: &Live, methods: Vec<String>) -> StoreResult<Option<String>> {
        let id = new_id().map_err(crate::store::StoreError::Backend)?;
        let now = self.clock.unix();
        self.hashed.forget_key(&live.session.id_hash);
        let session = Session {
            id_hash: id_hash(&id),
            methods,
            last_seen: now,
            ..Session::clone(&live.session)
        };
        if self
            .store
            .replace_session(&live.session.id_hash, session)
            .await?
        {
            Ok(Some(id))
        } else {
            Ok(None)
        }
    }

    /// Ends the session with this id (logout).
    pub async fn end(&self, id: &str) -> StoreResult<()> {
        self.hashed.forget(id);
        self.store.delete_session(&id_hash(id)).await?;
        self.store.flush().await
    }

    /// Deletes ended sessions and ended sign-ins at external providers, at most once per
    /// [`PURGE_EVERY`] (called where either is created); a failure is logged only.
    pub async fn purge_when_due(&self, now: i64) {
        let last = self.last_purge.load(Ordering::Relaxed);
        if now - last < PURGE_EVERY
            || self
                .last_purge
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(e) = self
            .store
            .purge_sessions(now, now.saturating_sub(self.idle))
            .await
        {
            tracing::warn!(error = %e, "cannot purge ended sessions");
        }
        if let Err(e) = self.store.purge_login_flows(now).await {
            tracing::warn!(error = %e, "cannot purge ended external sign-ins");
        }
    }

    /// `Set-Cookie` for a session id.
    pub fn cookie(&self, id: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}={id}; HttpOnly; Secure; SameSite=Lax; Path=/",
            self.cookie_name
        ))
        .ok()
    }

    /// `Set-Cookie` that makes the browser forget its session cookie.
    pub fn clearing_cookie(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}=; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=0",
            self.cookie_name
        ))
        .ok()
    }

    /// The `state` of the external sign-in this browser started, when it has a well-formed one.
    pub fn flow_cookie<'h>(&'h self, headers: &'h HeaderMap) -> Option<&'h str> {
        match presented(headers, &self.flow_cookie_name) {
            Presented::Id(value) => Some(value),
            Presented::None | Presented::Unusable => None,
        }
    }

    /// `Set-Cookie` binding an external sign-in's `state` to this browser for `max_age` seconds.
    /// `SameSite=Lax`: the provider's redirect back is a cross-site top-level navigation.
    pub fn flow_cookie_header(&self, state: &str, max_age: i64) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}={state}; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age={max_age}",
            self.flow_cookie_name
        ))
        .ok()
    }

    /// `Set-Cookie` that makes the browser forget its external sign-in.
    pub fn clearing_flow_cookie(&self) -> Option<HeaderValue> {
        self.flow_cookie_header("", 0)
    }

    /// The browser's CSRF cookie value, when it has a well-formed one.
    pub fn csrf_cookie<'h>(&'h self, headers: &'h HeaderMap) -> Option<&'h str> {
        match presented(headers, &self.csrf_cookie_name) {
            Presented::Id(value) => Some(value),
            Presented::None | Presented::Unusable => None,
        }
    }

    /// A new CSRF cookie value and its `Set-Cookie`.
    pub fn new_csrf_cookie(&self) -> Result<(String, HeaderValue), String> {
        let value = new_id()?;
        let header = HeaderValue::from_str(&format!(
            "{}={value}; HttpOnly; Secure; SameSite=Strict; Path=/",
            self.csrf_cookie_name
        ))
        .map_err(|e| e.to_string())?;
        Ok((value, header))
    }

    /// The token a form carries for the browser holding the CSRF cookie `cookie`: keyed with the
    /// master key, so every replica checks what any replica issued.
    pub fn csrf_token(&self, cookie: &str) -> String {
        self.vault.code_hash("csrf", cookie)
    }

    /// Whether `token` is the form token for the browser's CSRF cookie.
    pub fn csrf_valid(&self, cookie: Option<&str>, token: &str) -> bool {
        cookie.is_some_and(|c| crate::secrets::same(&self.csrf_token(c), token))
    }

    /// Removes the session and CSRF cookies from the `Cookie` headers (what goes upstream).
    pub fn strip_cookies(&self, headers: &mut HeaderMap) {
        let names = self.names();
        // Most requests have no cookie of ours: look before rewriting anything.
        let ours = headers
            .get_all(header::COOKIE)
            .iter()
            .any(|v| names.iter().any(|n| contains(v.as_bytes(), n.as_bytes())));
        if !ours {
            return;
        }
        let kept = self.app_cookies(headers);
        headers.remove(header::COOKIE);
        if let Some(v) = kept {
            headers.insert(header::COOKIE, v);
        }
    }

    /// The request's cookies without the session and CSRF cookies, as one `Cookie` value;
    /// `None` when nothing is left. A header that is not UTF-8 cannot be read as cookies (nor
    /// was a session read from it): not known to be free of ours, it is left out.
    pub fn app_cookies(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let names = self.names();
        let kept: Vec<String> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .filter_map(|v| without_cookies(v, &names))
            .collect();
        if kept.is_empty() {
            return None;
        }
        HeaderValue::from_bytes(kept.join("; ").as_bytes()).ok()
    }

    /// Removes from an upstream response every `Set-Cookie` of gatehouse's cookies: only
    /// gatehouse sets its session and CSRF cookies, so no application can plant one in a browser.
    pub fn strip_set_cookies(&self, headers: &mut HeaderMap) {
        let names = self.names();
        let ours = |value: &HeaderValue| {
            let name = set_cookie_name(value.as_bytes());
            names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        };
        if !headers.get_all(header::SET_COOKIE).iter().any(ours) {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !ours(v))
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

/// The name a browser sends the cookie of a `Set-Cookie` value under (RFC 6265bis §5.6, §5.7.3):
/// the name before the first `=`, or, for a cookie without a name, the name in its value, since
/// the browser sends such a cookie's value alone (`=n=v` comes back as `Cookie: n=v`).
fn set_cookie_name(value: &[u8]) -> &[u8] {
    let pair = value.split(|&b| b == b';').next().unwrap_or_default();
    let mut parts = pair.splitn(2, |&b| b == b'=');
    let name = parts.next().unwrap_or_default().trim_ascii();
    match parts.next() {
        Some(rest) if name.is_empty() => rest
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii(),
        _ => name,
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::COOKIE,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    const ID: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

    #[test]
    fn the_session_cookie_is_read_from_any_cookie_header() {
        let name = "__Host-gatehouse";
        assert_eq!(presented(&cookies(&[]), name), Presented::None);
        assert_eq!(
            presented(&cookies(&[&format!("a=1; {name}={ID}; b=2")]), name),
            Presented::Id(ID)
        );
        assert_eq!(
            presented(&cookies(&["a=1", &format!("{name}={ID}")]), name),
            Presented::Id(ID)
        );
    }

    #[test]
    fn two_different_session_cookies_or_a_malformed_one_are_unusable() {
        let name = "__Host-gatehouse";
        let other = "bcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR";
        assert_eq!(
            presented(&cookies(&[&format!("{name}={ID}; {name}={other}")]), name),
            Presented::Unusable
        );
        assert_eq!(
            presented(&cookies(&[&format!("{name}=short")]), name),
            Presented::Unusable
        );
        // The same value twice is one cookie.
        assert_eq!(
            presented(
                &cookies(&[&format!("{name}={ID}"), &format!("{name}={ID}")]),
                name
            ),
            Presented::Id(ID)
        );
    }

    #[test]
    fn a_name_padded_with_unicode_space_is_not_ours() {
        let name = "__Host-gatehouse";
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(format!("\u{a0}{name}={ID}; x=Jos\u{e9}").as_bytes())
                .unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(presented(&h, name), Presented::None);
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(format!("\t{name}={ID}").as_bytes())
                .unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(presented(&h, name), Presented::Id(ID));
    }

    #[test]
    fn only_our_cookies_are_removed_from_what_goes_upstream() {
        let names = ["__Host-gatehouse", "__Host-gatehouse-csrf"];
        assert_eq!(
            without_cookies(
                &format!("app=1; __Host-gatehouse={ID}; __Host-gatehouse-csrf=x; theme=dark"),
                &names
            ),
            Some("app=1; theme=dark".into())
        );
        assert_eq!(
            without_cookies(&format!("__Host-gatehouse={ID}"), &names),
            None
        );
        assert_eq!(
            without_cookies("__Host-gatehousex=1", &names),
            Some("__Host-gatehousex=1".into())
        );
    }

    #[test]
    fn ids_hash_to_hex_sha256() {
        assert_eq!(
            id_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let hash = id_hash(ID);
        assert_eq!(hash.len(), 64);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(hash, id_hash("another"));
        let id = new_id().unwrap_or_default();
        assert!(well_formed(&id), "{id}");
    }

    #[test]
    fn remembered_id_keys_are_exact_and_bounded() {
        let memo = HashedIds::new(4);
        let ids: Vec<String> = (0..64).map(|_| new_id().unwrap_or_default()).collect();
        assert!(ids.iter().all(|id| well_formed(id)));
        assert_eq!(
            memo.remembered(&ids[0]),
            None,
            "nothing is remembered before it is found"
        );
        for id in &ids {
            memo.remember(id, &id_hash(id));
        }
        // Four slots hold at most four ids, and each remembered key is that id's own.
        let held: Vec<&String> = ids
            .iter()
            .filter(|id| memo.remembered(id).is_some())
            .collect();
        assert!(!held.is_empty() && held.len() <= 4, "{}", held.len());
        for id in held {
            assert_eq!(memo.remembered(id), Some(id_hash(id)));
        }
        // An id one character away from a remembered one is not it.
        let last = &ids[63];
        assert_eq!(memo.remembered(last), Some(id_hash(last)));
        let mut near = last.clone().into_bytes();
        near[ID_CHARS - 1] = if near[ID_CHARS - 1] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let near = String::from_utf8(near).unwrap_or_default();
        assert_eq!(memo.remembered(&near), None);
        // Only ids of an issued id's length are kept.
        memo.remember("short", &id_hash("short"));
        assert_eq!(memo.remembered("short"), None);
        // An ended session's id is forgotten, by the id or by its store key.
        memo.forget(&near);
        assert_eq!(
            memo.remembered(last),
            Some(id_hash(last)),
            "another id is not forgotten"
        );
        memo.forget(last);
        assert_eq!(memo.remembered(last), None);
        memo.remember(last, &id_hash(last));
        memo.forget_key(&id_hash(last));
        assert_eq!(memo.remembered(last), None);
        let slots = memo.slots.lock().map(|s| s.clone()).unwrap_or_default();
        assert!(
            slots
                .iter()
                .flatten()
                .all(|(held, _)| held != last.as_bytes())
        );
    }
}
