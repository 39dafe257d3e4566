//! Credentials → [`Principal`]. Access-rule decisions live in [`policy`].
//!
//! Schemes (SPEC §3): `Authorization: Bearer` (gatehouse's own JWTs or a trusted issuer's),
//! `Authorization: Basic` (argon2id, with a short cache of successful verifications), and the
//! ApplicationToken header, which adds the `app` method to whatever else authenticated.

pub mod external;
pub mod hashing;
pub mod issuers;
pub mod policy;
pub mod secret;
pub mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderMap;
use http::header::{self, HeaderName};

use crate::clock::Clock;
use crate::config::AuthConfig;
pub use crate::identity::{Method, Principal};
use crate::lockout::{Policy, Reservation};
use crate::sessions::{Presented, Sessions};
use crate::store::{Store, StoreError, User};
use crate::tokens::{self, Tokens};
use issuers::Issuers;

impl Principal {
    /// The one way from a stored user to a principal: every credential (Basic, Bearer of either
    /// kind, WsAccessKey) ends here, so a user who may not sign in is refused whatever they sent.
    pub fn admit(
        user: &User,
        scopes: Vec<String>,
        methods: Vec<Method>,
    ) -> Result<Principal, AuthError> {
        if !user.is_valid {
            return Err(AuthError::Invalid("user disabled".into()));
        }
        Ok(Principal {
            user_id: user.id.to_string(),
            user_name: user.user_name.clone(),
            email: user.email.clone(),
            scopes,
            organizations: user.memberships.clone(),
            methods,
        })
    }
}

/// Wrong passwords (sign-in page and Basic) are counted under a lockout of their own, apart from
/// the second factor's wrong codes (SPEC §10): the user's id with this bit set. Wrong codes lock
/// the factor and wrong passwords the password, each with `mfa.lockout`'s limits, so that neither
/// a right password wipes the count of wrong codes nor wrong codes shut the user's password out.
const PASSWORD_LOCK: u64 = 1 << 62;

/// The lockout that a user's passwords count towards.
fn password_lock(user_id: u64) -> u64 {
    user_id | PASSWORD_LOCK
}

/// The most scopes a user created from a trusted issuer's token starts with.
const MAX_FIRST_SIGHT_SCOPES: usize = 64;

/// The scopes a user created from a trusted issuer's token holds: the token's, as far as they are
/// RFC 6749 §3.3 scope tokens of a sane length, without `mfa` (earned by a second factor, never
/// held), and no more than [`MAX_FIRST_SIGHT_SCOPES`] of them, so that a token cannot make the store
/// keep an unbounded record.
fn first_sight_scopes(asked: &[String]) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in asked {
        let well_formed = (1..=128).contains(&scope.len())
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if well_formed && scope != "mfa" && !scopes.contains(scope) {
            scopes.push(scope.clone());
            if scopes.len() == MAX_FIRST_SIGHT_SCOPES {
                break;
            }
        }
    }
    scopes
}

/// The scopes a token's `scope` is worth now (SPEC §10): only those the user still holds, so that
/// removing a scope takes effect on the next request. `mfa` is not granted but earned: it stays
/// when the token's own methods hold a second factor.
pub fn current_scopes<S: AsRef<str>>(
    held: &[String],
    token_scopes: impl IntoIterator<Item = S>,
    methods: &[Method],
) -> Vec<String> {
    let earned = methods.iter().any(|m| m.is_second_factor());
    let mut scopes: Vec<String> = Vec::new();
    for scope in token_scopes {
        let scope = scope.as_ref();
        let counts = held.iter().any(|h| h == scope) || (earned && scope == "mfa");
        if counts && !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    scopes
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 400: two `Authorization` headers, or one that is not a single well-formed credential.
    Malformed(&'static str),
    /// 401, with the same body whatever the reason; the reason is for the log only.
    Invalid(String),
    /// The store could not be asked: fail closed.
    Unavailable(String),
    /// 503 with `Retry-After`: too many passwords are being hashed (SPEC §10).
    Busy,
    /// 429 with `Retry-After` (seconds): too many wrong passwords from this client address.
    Throttled(u64),
    /// 429 with `Retry-After` (seconds): the token's issuer created as many new users as its
    /// `max_new_users` allows within the window, and this subject has no user yet.
    NewUsersLimited(u64),
}

/// Why a sign-in page's password was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInError {
    /// Unknown user, wrong password, or a user who may not sign in: one answer for all; the
    /// reason is for the log.
    Refused(&'static str),
    /// Throttled (the user's lockout or the address's limit), busy or the store unavailable, as
    /// for any credential.
    Auth(AuthError),
}

impl From<AuthError> for SignInError {
    fn from(e: AuthError) -> SignInError {
        SignInError::Auth(e)
    }
}

/// A password the sign-in page accepted: the principal, and the hash the password matched, so
/// that the session started for it can be checked against a password changed meanwhile
/// ([`Authenticator::password_unchanged`]). No `Debug`: it holds the hash.
pub struct SignedIn {
    pub principal: Principal,
    user_id: u64,
    password_hash: String,
}

/// How long a client refused with [`AuthError::Busy`] is told to wait, in seconds.
pub const BUSY_RETRY_AFTER: u64 = 1;

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> AuthError {
        AuthError::Unavailable(e.to_string())
    }
}

/// A credential as sent, before verification. A Bearer token is borrowed from the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Basic { user_name: String, password: String },
    Bearer(&'a str),
}

/// Whether every byte is a character of a JWT (base64url segments separated by dots) or of
/// base64. Branch-free per byte, so the compiler checks a whole vector of bytes at a time.
fn all_token_chars(bytes: &[u8]) -> bool {
    let bad = bytes.iter().fold(0u8, |bad, &b| {
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        let mark = (b == b'-') | (b == b'_') | (b == b'.') | (b == b'~');
        let base64 = (b == b'+') | (b == b'/') | (b == b'=');
        bad | u8::from(!(letter | digit | mark | base64))
    });
    bad == 0
}

/// Reads the `Authorization` header: `Ok(None)` when absent; 400 for two headers, an empty
/// credential, or a value that carries more than one credential (`Bearer x, Basic y`).
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed("more than one Authorization header"));
    }
    let value = value.as_bytes().trim_ascii();
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(space) => (&value[..space], value[space + 1..].trim_ascii()),
        None => (value, &[][..]),
    };
    if rest.is_empty() || !all_token_chars(rest) {
        return Err(AuthError::Malformed(
            "Authorization must carry exactly one credential",
        ));
    }
    // Every byte of `rest` is ASCII (checked above), so this cannot fail.
    let rest = std::str::from_utf8(rest)
        .map_err(|_| AuthError::Malformed("Authorization is not ASCII"))?;
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(Some(Credential::Bearer(rest)));
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::Malformed(
                "Basic credential is not base64 of UTF-8",
            ))?;
        let (user_name, password) = decoded
            .split_once(':')
            .ok_or(AuthError::Malformed("Basic credential has no `:`"))?;
        return Ok(Some(Credential::Basic {
            user_name: user_name.to_owned(),
            password: password.to_owned(),
        }));
    }
    let scheme = std::str::from_utf8(scheme)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(AuthError::Malformed("Authorization is not ASCII"))?;
    Err(AuthError::Invalid(format!("unsupported scheme {scheme}")))
}

/// Reads `iss` from a JWT without verifying it, to choose who verifies it.
pub(crate) fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// Verifies credentials against the store, gatehouse's keys and the trusted issuers.
pub struct Authenticator {
    store: Arc<dyn Store>,
    tokens: Arc<Tokens>,
    /// Replaced whole when a reload changes `auth.trusted_issuers`.
    issuers: arc_swap::ArcSwap<Issuers>,
    app_header: HeaderName,
    /// Successful Basic verifications: keyed hash of the credential → the password hash it
    /// matched. A changed password no longer equals the cached hash, so the entry stops counting.
    basic_cache: moka::sync::Cache<[u8; 32], Arc<str>>,
    cache_key: ring::hmac::Key,
    clock: Arc<dyn Clock>,
    /// Every password hash and verification runs here, within `auth.max_concurrent_hashes`.
    hashes: hashing::Hashes,
    failures: throttle::Throttle,
    /// Password verifications running now, by credential, shared by every request that
    /// presents the same one meanwhile. Entries leave when their verification ends, so the map
    /// holds no more than the requests in flight.
    inflight: std::sync::Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<bool>>>>,
    /// Users of trusted issuers, by `(iss, sub)`, created on first sight within each issuer's
    /// bound.
    external: external::ExternalUsers,
    /// Browser sessions: the session cookie is a credential like the others.
    sessions: Arc<Sessions>,
    /// The users' lockout (`mfa.lockout`), which wrong passwords count towards too.
    lockout: Policy,
}

impl Authenticator {
    pub fn new(
        config: &AuthConfig,
        store: Arc<dyn Store>,
        tokens: Arc<Tokens>,
        sessions: Arc<Sessions>,
        lockout: Policy,
        clock: Arc<dyn Clock>,
    ) -> Result<Authenticator, String> {
        let rng = ring::rand::SystemRandom::new();
        let cache_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| "the system random source failed".to_owned())?;
        Ok(Authenticator {
            external: external::ExternalUsers::new(store.clone(), clock.clone()),
            store,
            tokens,
            issuers: arc_swap::ArcSwap::from_pointee(Issuers::new(
                &config.trusted_issuers,
                config.jwks_min_refresh,
                clock.clone(),
            )?),
            app_header: HeaderName::from_bytes(config.application_token_header.as_bytes())
                .map_err(|e| format!("auth.application_token_header: {e}"))?,
            basic_cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.basic_cache_ttl.max(Duration::from_millis(1)))
                .build(),
            cache_key,
            clock,
            hashes: hashing::Hashes::new(config.max_concurrent_hashes, config.max_queued_hashes)?,
            failures: throttle::Throttle::new(
                config.failed_password_limit,
                config.failed_password_window,
            ),
            inflight: std::sync::Mutex::new(HashMap::new()),
            sessions,
            lockout,
        })
    }

    /// The trusted issuers of a reloaded configuration, for [`Authenticator::trust`].
    pub fn issuers_for(&self, config: &AuthConfig) -> Result<Issuers, String> {
        Issuers::new(
            &config.trusted_issuers,
            config.jwks_min_refresh,
            self.clock.clone(),
        )
    }

    /// Trusts `issuers` from now on instead of the current ones (their keys are fetched anew).
    pub fn trust(&self, issuers: Issuers) {
        self.issuers.store(Arc::new(issuers));
    }

    /// The header that carries the ApplicationToken.
    pub fn application_header(&self) -> &HeaderName {
        &self.app_header
    }

    /// The password hashing threads (tests and the admin API's own hashing use them too).
    pub fn hashes(&self) -> &hashing::Hashes {
        &self.hashes
    }

    /// Hashes a new password within the same bound as verifications.
    pub async fn hash_password(&self, password: String) -> Result<String, AuthError> {
        self.hashes
            .run(move || secret::hash_password(&password))
            .await
            .map_err(|hashing::Busy| AuthError::Busy)?
            .map_err(AuthError::Unavailable)
    }

    /// The principal the request's credentials prove, `None` when it carries none.
    /// A valid ApplicationToken adds [`Method::App`]; an invalid one refuses the request.
    /// `client` is the address failed passwords are counted against.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Option<Principal>, AuthError> {
        self.authenticate_from(headers, client, false).await
    }

    /// [`Authenticator::authenticate`], where a request without `Authorization` may also be
    /// authenticated by its session cookie: for the application's routes and forward-auth only.
    /// gatehouse's own APIs never take the cookie, so that no other site's page can make a
    /// browser call them with it.
    pub async fn authenticate_browser(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Option<Principal>, AuthError> {
        self.authenticate_from(headers, client, true).await
    }

    /// Whether the request's credential, refused, was a Bearer token gatehouse itself signed
    /// (signature and times valid) whose user no longer exists, sent beside a valid
    /// ApplicationToken: the Nexus family answers that 404 (SPEC §4.1), where every other
    /// refusal stays 401. Read only after a refusal, so it costs nothing on accepted requests;
    /// the claims come from what the refusal verified (a token that failed verification was
    /// never remembered), so no signature is checked twice. A token revoked before its user was
    /// deleted is answered 404 too: nothing of the user is left to tell.
    pub async fn names_a_deleted_user(&self, headers: &HeaderMap) -> Result<bool, AuthError> {
        let Ok(Some(Credential::Bearer(token))) = credential(headers) else {
            return Ok(false);
        };
        let Some(Ok(claims)) = self.tokens.remembered(token) else {
            return Ok(false);
        };
        let Some(app) = headers.get(&self.app_header).and_then(|v| v.to_str().ok()) else {
            return Ok(false);
        };
        if !self.application_known(app).await? {
            return Ok(false);
        }
        Ok(match claims.sub.parse::<u64>() {
            Ok(id) => self.store.shared_user_by_id(id).await?.is_none(),
            Err(_) => false,
        })
    }

    /// Whether `token` (an ApplicationToken header's value, surrounding whitespace ignored) is
    /// a registered application's.
    async fn application_known(&self, token: &str) -> Result<bool, AuthError> {
        let hash = secret::hash_token(token.trim());
        Ok(self.store.application_by_token_hash(&hash).await?.is_some())
    }

    async fn authenticate_from(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        cookie: bool,
    ) -> Result<Option<Principal>, AuthError> {
        let mut principal = match credential(headers)? {
            None if cookie => self.session(headers).await?.map(|(principal, _)| principal),
            None => None,
            Some(Credential::Basic {
                user_name,
                password,
            }) => Some(Box::pin(self.basic(&user_name, password, client)).await?),
            Some(Credential::Bearer(token)) => Some(self.bearer(token).await?),
        };
        if let Some(value) = headers.get(&self.app_header) {
            let token = value
                .to_str()
                .map_err(|_| AuthError::Invalid("ApplicationToken is not ASCII".into()))?;
            if !self.application_known(token).await? {
                return Err(AuthError::Invalid("unknown application token".into()));
            }
            if let Some(p) = principal.as_mut()
                && !p.methods.contains(&Method::App)
            {
                p.methods.push(Method::App);
            }
        }
        Ok(principal)
    }

    /// The principal of the request's session cookie with the live session, `None` without
    /// one; an unknown, ended or ambiguous cookie is refused like any invalid credential.
    pub async fn session(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(Principal, crate::sessions::Live)>, AuthError> {
        let id = match self.sessions.presented(headers) {
            Presented::None => return Ok(None),
            Presented::Unusable => {
                return Err(AuthError::Invalid("unusable session cookie".into()));
            }
            Presented::Id(id) => id,
        };
        let live = self
            .sessions
            .find(id)
            .await?
            .ok_or_else(|| AuthError::Invalid("unknown or ended session".into()))?;
        let user = self
            .store
            .shared_user_by_id(live.session.user_id)
            .await?
            .ok_or_else(|| AuthError::Invalid("session of an unknown user".into()))?;
        let methods = tokens::methods_from_amr(&live.session.methods);
        // The user's scopes as they are now, and `mfa` when the session earned it.
        let mut scopes = user.scopes.clone();
        scopes.retain(|s| s != "mfa");
        if methods.iter().any(|m| m.is_second_factor()) {
            scopes.push("mfa".to_owned());
        }
        Ok(Some((Principal::admit(&user, scopes, methods)?, live)))
    }

    /// The sessions whose cookie this authenticator reads.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// A WS family `WsAccessKey`: the principal of the user it is bound to (no second factor:
    /// the key is a single secret) and the FileId it is bound to; `None` for an unknown key.
    pub async fn ws_access_key(&self, key: &str) -> Result<Option<(Principal, i64)>, AuthError> {
        let Some(record) = self.store.ws_key(&secret::hash_token(key.trim())).await? else {
            return Ok(None);
        };
        let Some(user) = self.store.shared_user_by_id(record.user_id).await? else {
            return Ok(None);
        };
        let principal = Principal::admit(&user, user.scopes.clone(), Vec::new())?;
        Ok(Some((principal, record.file_id)))
    }

    /// Verifies a password. A credential verified recently is recognised without a hash, unless
    /// the user is locked meanwhile. Any other attempt first reserves a failure for `client` and
    /// one under the user's lockout (SPEC §10), which a right password gives back; concurrent
    /// attempts with the same credential share one hash and one reservation, so a burst of
    /// identical requests costs one argon2 run, whether the password is right or wrong.
    async fn basic(
        &self,
        user_name: &str,
        password: String,
        client: IpAddr,
    ) -> Result<Principal, AuthError> {
        let (key, found) = self.password_holder(user_name, &password, client).await?;
        let Some((user, hash)) = found else {
            self.verify_nothing(key, client, password).await?;
            return Err(AuthError::Invalid("unknown user or no password".into()));
        };
        let cached = self.basic_cache.get(&key).is_some_and(|h| *h == *hash);
        if cached {
            // A locked user refuses the right password too (SPEC §10), the remembered one as
            // well: else, while it stays remembered, every wrong guess would be told 429 and the
            // right one 200, without a hash or a counted failure.
            if let Some(seconds) = self
                .store
                .lockout(password_lock(user.id))
                .await?
                .retry_after(self.clock.unix())
            {
                return Err(AuthError::Throttled(
                    u64::try_from(seconds).unwrap_or(1).max(1),
                ));
            }
        } else {
            // Guessed passwords count towards the user's lockout whichever way they come (SPEC
            // §10): Basic as much as the sign-in page.
            // A disabled user's right password is as wrong as any: its attempt stays counted,
            // or the lockout's count would tell it from the wrong ones.
            let check = hash.clone();
            let valid = user.is_valid;
            let ok = self
                .verify_once(
                    key,
                    &hash,
                    client,
                    Some(password_lock(user.id)),
                    move || secret::verify_password(&password, &check) && valid,
                )
                .await?;
            if !ok {
                return Err(AuthError::Invalid(
                    if valid {
                        "wrong password"
                    } else {
                        "user disabled"
                    }
                    .into(),
                ));
            }
            self.basic_cache.insert(key, hash.into());
        }
        Principal::admit(&user, user.scopes.clone(), vec![Method::Pwd])
    }

    /// Checks a password typed on the sign-in page (SPEC §11). Within the per-address limit, a
    /// known user's attempt first reserves a failure in the store under the user's lockout
    /// (SPEC §10), which a right password gives back (that one failure only); an unknown user
    /// costs the same hash, so both refusals look and take the same. A disabled user is refused
    /// like a wrong password.
    pub async fn sign_in(
        &self,
        user_name: &str,
        password: String,
        client: IpAddr,
    ) -> Result<SignedIn, SignInError> {
        let (key, found) = self.password_holder(user_name, &password, client).await?;
        let Some((user, hash)) = found else {
            self.verify_nothing(key, client, password).await?;
            // The same store work as a wrong password's counted failure, so that the answer
            // takes as long.
            self.store.flush().await.map_err(AuthError::from)?;
            return Err(SignInError::Refused("unknown user or no password"));
        };
        let stored_hash = hash.clone();
        // A disabled user's right password is as wrong as any: its attempt stays counted, or the
        // lockout's count would tell it from the wrong ones.
        let valid = user.is_valid;
        let ok = self
            .verify_once(
                key,
                &stored_hash,
                client,
                Some(password_lock(user.id)),
                move || secret::verify_password(&password, &hash) && valid,
            )
            .await?;
        if !ok {
            return Err(SignInError::Refused(if valid {
                "wrong password"
            } else {
                "user disabled"
            }));
        }
        let principal = Principal::admit(&user, user.scopes.clone(), vec![Method::Pwd])
            .map_err(|_| SignInError::Refused("user disabled"))?;
        Ok(SignedIn {
            principal,
            user_id: user.id,
            password_hash: stored_hash,
        })
    }

    /// Within the per-address limit, the credential's cache key and the user it names with their
    /// password hash (`None` for an unknown user or one without a password).
    async fn password_holder(
        &self,
        user_name: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<([u8; 32], Option<(User, String)>), AuthError> {
        self.failures
            .check(client, self.clock.unix())
            .map_err(|throttle::Throttled(seconds)| AuthError::Throttled(seconds))?;
        let user = self.store.user_by_name(user_name).await?;
        let key = self.cache_key_for(user_name, password);
        let found = user.and_then(|u| {
            let hash = u.password_hash.clone()?;
            Some((u, hash))
        });
        Ok((key, found))
    }

    /// The hash an unknown user's password costs, so that refusing it takes as long as refusing
    /// a wrong one; counted as a failure for `client`.
    async fn verify_nothing(
        &self,
        key: [u8; 32],
        client: IpAddr,
        password: String,
    ) -> Result<(), AuthError> {
        self.verify_once(key, "", client, None, move || {
            secret::verify_nothing(&password);
            false
        })
        .await
        .map(|_| ())
    }

    /// Whether the user of `signed_in` still has the password it was checked against, and may
    /// still sign in. Asked after its session is stored: a password change writes the new hash
    /// before it ends the user's sessions, so a session stored before that end is ended by it,
    /// and one stored after is seen here.
    pub async fn password_unchanged(&self, signed_in: &SignedIn) -> Result<bool, AuthError> {
        Ok(self
            .store
            .user_by_id(signed_in.user_id)
            .await?
            .is_some_and(|u| {
                u.is_valid && u.password_hash.as_deref() == Some(signed_in.password_hash.as_str())
            }))
    }

    /// Runs `verify` for the credential `key` against the stored hash `against` on the hashing
    /// threads, once for every caller that asks while it runs. Only callers that read the same
    /// hash share the outcome: one that read a changed password's new hash must not be told
    /// what the old one said. The one that runs it reserves a failure for `client` first, and
    /// one under the lockout of `user` (SPEC §10) when the password is a user's, and gives each
    /// back when the password was right; a burst of one credential costs one reservation.
    async fn verify_once(
        &self,
        key: [u8; 32],
        against: &str,
        client: IpAddr,
        user: Option<u64>,
        verify: impl FnOnce() -> bool + Send + 'static,
    ) -> Result<bool, AuthError> {
        let key = {
            let mut ctx = ring::hmac::Context::with_key(&self.cache_key);
            ctx.update(&key);
            ctx.update(against.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.sign().as_ref());
            out
        };
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(key).or_default().clone()
        };
        let result = cell
            .get_or_try_init(|| async {
                self.failures
                    .reserve(client, self.clock.unix())
                    .map_err(|throttle::Throttled(seconds)| AuthError::Throttled(seconds))?;
                let reserved = match user {
                    Some(id) => match self.reserve_for(id).await {
                        Ok(reserved) => Some((id, reserved)),
                        Err(e) => {
                            self.failures.release(client);
                            return Err(e);
                        }
                    },
                    None => None,
                };
                let ok = match self.hashes.run(verify).await {
                    Ok(ok) => ok,
                    Err(hashing::Busy) => {
                        self.failures.release(client);
                        if let Some((id, (at, locks))) = reserved {
                            self.store.release_attempt(id, at, locks).await?;
                        }
                        return Err(AuthError::Busy);
                    }
                };
                if ok {
                    self.failures.release(client);
                    if let Some((id, (at, locks))) = reserved {
                        // Only this attempt is given back: the count also holds the user's
                        // wrong second-factor codes, which a right password must not wipe.
                        self.store.release_attempt(id, at, locks).await?;
                    }
                } else if reserved.is_some() {
                    // The reserved failure stays counted, durably before the answer.
                    self.store.flush().await?;
                }
                Ok(ok)
            })
            .await
            .copied();
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        result
    }

    /// Reserves one attempt under the user's lockout: when it was reserved and whether its
    /// failure locks the user; 429 (as `Throttled`) while the user is locked.
    async fn reserve_for(&self, user_id: u64) -> Result<(i64, Option<i64>), AuthError> {
        let now = self.clock.unix();
        match self
            .store
            .reserve_attempt(user_id, now, self.lockout)
            .await?
        {
            Reservation::Granted { locks } => Ok((now, locks)),
            Reservation::Refused { retry_after } => Err(AuthError::Throttled(
                u64::try_from(retry_after).unwrap_or(1).max(1),
            )),
        }
    }

    fn cache_key_for(&self, user_name: &str, password: &str) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.cache_key);
        ctx.update(user_name.to_lowercase().as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    async fn bearer(&self, token: &str) -> Result<Principal, AuthError> {
        // A token of ours seen before needs neither its issuer read nor its signature checked.
        let remembered = self.tokens.remembered(token);
        // `None` for a remembered token, which can only be one of ours.
        let iss = match remembered {
            Some(_) => None,
            None => Some(
                unverified_issuer(token)
                    .ok_or_else(|| AuthError::Invalid("malformed token".into()))?,
            ),
        };
        if iss.as_deref().is_none_or(|iss| iss == self.tokens.issuer()) {
            let claims = remembered
                .unwrap_or_else(|| self.tokens.verify_access(token))
                .map_err(|e| AuthError::Invalid(e.to_string()))?;
            let user = match claims.sub.parse::<u64>() {
                Ok(id) => self.store.shared_user_by_id(id).await?,
                Err(_) => None,
            };
            let user =
                user.ok_or_else(|| AuthError::Invalid("token for an unknown user".into()))?;
            if !user.accepts_token_issued(claims.iat) {
                return Err(AuthError::Invalid("token revoked".into()));
            }
            let methods = tokens::methods_from_amr(&claims.amr);
            let scopes = current_scopes(&user.scopes, claims.scope.split_whitespace(), &methods);
            return Principal::admit(&user, scopes, methods);
        }
        let Some(iss) = iss else {
            return Err(AuthError::Invalid("token from an untrusted issuer".into()));
        };
        // A trusted issuer's token (its keys fetched, its user found or created) is the rare
        // case: on the heap, so that every request's future stays small.
        Box::pin(self.issued_elsewhere(iss, token)).await
    }

    /// [`Authenticator::bearer`] for a token another issuer signed.
    async fn issued_elsewhere(&self, iss: String, token: &str) -> Result<Principal, AuthError> {
        let issuers = self.issuers.load_full();
        if issuers.trusts(&iss) {
            let claims = issuers
                .verify(&iss, token)
                .await
                .map_err(|e| AuthError::Invalid(e.to_string()))?;
            let limit = issuers
                .new_user_limit(&iss)
                .ok_or_else(|| AuthError::Invalid("token from an untrusted issuer".into()))?;
            let user = self.external_user(&claims, limit).await?;
            // A revocation (SPEC §13) covers the trusted issuers' tokens too, by their `iat`:
            // one without `iat` cannot show it came after, so it is refused once the user's
            // tokens were ever revoked. A token the issuer signed within the second of the
            // revocation is refused as well (its `iat` cannot tell before from after); the
            // client's next token, a second later, is accepted.
            if user.tokens_not_before > 0
                && !claims.iat.is_some_and(|iat| user.accepts_token_issued(iat))
            {
                return Err(AuthError::Invalid("token revoked".into()));
            }
            let methods = tokens::methods_from_amr(&claims.amr);
            let scopes = current_scopes(&user.scopes, claims.scopes(), &methods);
            return Principal::admit(&user, scopes, methods);
        }
        Err(AuthError::Invalid("token from an untrusted issuer".into()))
    }

    /// The user of an external provider's sign-in (SPEC §12), found or created by `(iss, sub)`
    /// within `limit` like a trusted issuer's (a new user starts with no scopes).
    pub async fn external_sign_in(
        &self,
        profile: &external::Profile,
        limit: external::NewUserLimit,
    ) -> Result<User, external::LinkError> {
        self.external.find_or_create(profile, limit).await
    }

    /// The user a trusted issuer's subject maps to, created on first sight (SPEC §3): named
    /// after `preferred_username`, else `email`, else `sub`.
    async fn external_user(
        &self,
        claims: &issuers::ExternalClaims,
        limit: external::NewUserLimit,
    ) -> Result<User, AuthError> {
        let profile = external::Profile::from_claims(
            &claims.iss,
            &claims.sub,
            claims.preferred_username.as_deref(),
            claims.email.as_deref(),
            claims.name.as_deref(),
            first_sight_scopes(&claims.scopes()),
        );
        self.external
            .find_or_create(&profile, limit)
            .await
            .map_err(|e| match e {
                external::LinkError::Refused(why) => {
                    AuthError::Invalid(format!("the issuer's claims are refused: {why}"))
                }
                external::LinkError::Limited(seconds) => AuthError::NewUsersLimited(seconds),
                external::LinkError::Store(e) => e.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn with_auth(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn two_authorization_headers_are_malformed() {
        let h = with_auth(&["Bearer a.b.c", "Basic YTpi"]);
        assert!(matches!(credential(&h), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn mixed_schemes_in_one_header_are_malformed() {
        for v in [
            "Bearer a.b.c, Basic YTpi",
            "Basic YTpi Bearer",
            "Bearer",
            "Basic !!",
        ] {
            assert!(
                matches!(credential(&with_auth(&[v])), Err(AuthError::Malformed(_))),
                "{v}"
            );
        }
    }

    #[test]
    fn token_characters_are_exactly_base64url_base64_and_dots() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b);
            assert_eq!(all_token_chars(&[b'a', b, b'z']), expected, "byte {b}");
        }
        assert!(all_token_chars(&[b'A'; 1000]));
    }

    #[test]
    fn a_user_first_seen_holds_the_tokens_well_formed_scopes_but_never_mfa() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            first_sight_scopes(&v(&["read", "mfa", "read", "bad\"scope", "", "write"])),
            v(&["read", "write"])
        );
        let many: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
        assert_eq!(first_sight_scopes(&many).len(), MAX_FIRST_SIGHT_SCOPES);
    }

    #[test]
    fn a_token_is_worth_only_the_scopes_the_user_still_holds() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let held = v(&["read", "ops"]);
        assert_eq!(
            current_scopes(&held, v(&["read", "admin", "read"]), &[Method::Pwd]),
            v(&["read"])
        );
        // `mfa` is earned by the token's own second factor, not granted.
        assert_eq!(
            current_scopes(&held, v(&["ops", "mfa"]), &[Method::Pwd]),
            v(&["ops"])
        );
        assert_eq!(
            current_scopes(&held, v(&["ops", "mfa"]), &[Method::Pwd, Method::Otp]),
            v(&["ops", "mfa"])
        );
        assert!(current_scopes(&[], v(&["read"]), &[Method::Otp]).is_empty());
    }

    #[test]
    fn basic_and_bearer_are_read() {
        assert_eq!(
            credential(&with_auth(&["Basic YWRhOnM6M2NyZXQ="])).unwrap(),
            Some(Credential::Basic {
                user_name: "ada".into(),
                password: "s:3cret".into()
            })
        );
        assert_eq!(
            credential(&with_auth(&["bearer x.y.z"])).unwrap(),
            Some(Credential::Bearer("x.y.z"))
        );
        assert_eq!(credential(&HeaderMap::new()).unwrap(), None);
    }
}
