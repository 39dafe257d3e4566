//! Gatehouse's own JWTs: access tokens, identity assertions for the upstream, and the JWKS.
//!
//! Keys are Ed25519 (EdDSA, RFC 8037), generated at first start and kept in the store, or loaded from
//! `tokens.signing_key_file`. Keys in the store rotate (SPEC §13): the next key is published in the
//! JWKS `tokens.key_prepublish` before its `activates` time, from which it signs (chosen by the
//! clock, so every replica switches at once); the key it replaces is retired and stays published,
//! and verifies, until the last token it signed has expired. Every replica rereads the keys from
//! the store in the background ([`Tokens::keep_fresh`]); requests only read the current set.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::clock::{self, Clock};
use crate::config::TokensConfig;
pub use crate::identity::ASSERTION_TTL;
use crate::identity::{Method, Principal};
use crate::secrets::Vault;
use crate::store::{SCHEMA_VERSION, SigningKey, Store};

/// Opens the stored keys (oldest first), reusing the keys of `current` already open.
fn open_keys(
    stored: &[SigningKey],
    vault: &Vault,
    current: Option<&KeySet>,
) -> Result<KeySet, String> {
    let mut keys = Vec::with_capacity(stored.len());
    for (i, stored) in stored.iter().enumerate() {
        if keys
            .iter()
            .any(|(_, k): &(usize, Arc<Key>)| k.kid == stored.kid)
        {
            continue;
        }
        let known = current.and_then(|set| {
            set.keys
                .iter()
                .find(|k| k.kid == stored.kid && k.activates == stored.activates)
        });
        let key = match known {
            Some(key) => key.clone(),
            None => {
                let pkcs8 = vault
                    .open(&stored.pkcs8, SIGNING_KEY_CONTEXT)
                    .map_err(|e| format!("signing key {}: {e}", stored.kid))?;
                Arc::new(Key::from_pkcs8(&pkcs8, stored.activates, &stored.created)?)
            }
        };
        keys.push((i, key));
    }
    keys.sort_by_key(|(i, k)| (k.activates, *i));
    Ok(KeySet {
        keys: keys.into_iter().map(|(_, k)| k).collect(),
    })
}

/// What stored signing keys are sealed for.
const SIGNING_KEY_CONTEXT: &[u8] = b"token-signing-key";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: i64 = 60;

/// Claims of the tokens gatehouse issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// Space-separated scopes.
    pub scope: String,
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// Why a token was refused. Every variant answers 401; the distinction is for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongClaims(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed => f.write_str("malformed token"),
            TokenError::UnknownKey => f.write_str("unknown signing key"),
            TokenError::BadSignature => f.write_str("bad signature or algorithm"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not yet valid"),
            TokenError::WrongClaims(why) => write!(f, "wrong claims: {why}"),
        }
    }
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: Vec<u8>,
    /// Unix seconds from which the key signs.
    activates: i64,
    /// RFC 3339 (empty for the key of `tokens.signing_key_file`).
    created: String,
}

impl Key {
    fn from_pkcs8(pkcs8: &[u8], activates: i64, created: &str) -> Result<Key, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        Ok(Key {
            kid: URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]),
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding: DecodingKey::from_ed_der(&public),
            public,
            activates,
            created: created.to_owned(),
        })
    }
}

/// The keys known at one time, ordered by `activates` (stored order among equals).
struct KeySet {
    keys: Vec<Arc<Key>>,
}

impl KeySet {
    /// The key that signs at `now`: the newest whose `activates` has come, else the oldest.
    fn signer(&self, now: i64) -> Option<&Arc<Key>> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.activates <= now)
            .or_else(|| self.keys.first())
    }

    /// When the key at `index` stopped signing (the next key's `activates`, once come).
    fn retired(&self, index: usize, now: i64) -> Option<i64> {
        self.keys
            .get(index + 1..)?
            .iter()
            .map(|k| k.activates)
            .find(|&a| a <= now)
    }

    /// The keys still published at `now`, with when each was retired: every key but those
    /// retired longer ago than `lifetime` (the longest a token they signed can be valid).
    fn published(&self, now: i64, lifetime: i64) -> impl Iterator<Item = (&Arc<Key>, Option<i64>)> {
        self.keys.iter().enumerate().filter_map(move |(i, k)| {
            let retired = self.retired(i, now);
            match retired {
                Some(r) if r.saturating_add(lifetime) < now => None,
                _ => Some((k, retired)),
            }
        })
    }
}

/// What the JWKS and `GET /admin/v1/keys` say about one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub kid: String,
    /// RFC 3339.
    pub created: String,
    /// Unix seconds from which it signs.
    pub activates: i64,
    /// Unix seconds from which a newer key signs, once that has come.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired: Option<i64>,
    /// Unix seconds after which it is no longer published nor accepted (once retired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// `pending` (published, not signing yet), `active` (signing), `retired` (verifying what
    /// it signed) or `expired` (no longer published; kept until deleted).
    pub state: &'static str,
}

/// The outcome of [`Tokens::rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub kid: String,
    /// Unix seconds from which it signs.
    pub activates: i64,
    /// `false` when a key was already pending: that one is returned and no key was added.
    pub added: bool,
}

/// Why a rotation did not happen.
#[derive(Debug)]
pub enum RotateError {
    /// The key comes from `tokens.signing_key_file`, not from the store.
    KeyFile,
    Store(crate::store::StoreError),
    Other(String),
}

impl std::fmt::Display for RotateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RotateError::KeyFile => f.write_str(
                "the signing key comes from tokens.signing_key_file, not from the store",
            ),
            RotateError::Store(e) => e.fmt(f),
            RotateError::Other(why) => f.write_str(why),
        }
    }
}

/// Where keys kept in the store come from (absent with `tokens.signing_key_file`).
struct Keeper {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
}

/// Issues and verifies gatehouse's tokens.
pub struct Tokens {
    /// The current keys; replaced whole by a refresh from the store, read on every request.
    set: ArcSwap<KeySet>,
    keeper: Option<Keeper>,
    issuer: String,
    audience: String,
    access_ttl: i64,
    /// `tokens.key_prepublish` in seconds.
    prepublish: i64,
    /// `tokens.rotate_every` in seconds.
    rotate_every: Option<i64>,
    clock: Arc<dyn Clock>,
    /// Set when a token named a `kid` this replica does not know: the upkeep task refreshes
    /// the keys (at most once per [`MIN_REFRESH`]).
    unknown_kid: Arc<tokio::sync::Notify>,
    /// Access tokens whose signature and claims were verified, keyed by the token itself: a hit
    /// is an exact match of every byte, so no other string can stand for a verified token. A hit
    /// skips the signature check only: the token's times are checked again on every use. Only
    /// verified tokens are ever inserted, so the fast seeded hash cannot be flooded from outside.
    verified:
        quick_cache::sync::Cache<Arc<str>, Remembered, TokenWeight, foldhash::fast::RandomState>,
}

/// A verified access token's claims and when they stop being remembered (unix seconds, by the
/// tokens' clock).
#[derive(Clone)]
struct Remembered {
    claims: Arc<Claims>,
    until: i64,
}

/// What a remembered token counts towards [`VERIFIED_BYTES`].
#[derive(Clone)]
struct TokenWeight;

impl quick_cache::Weighter<Arc<str>, Remembered> for TokenWeight {
    fn weight(&self, token: &Arc<str>, _: &Remembered) -> u64 {
        u64::try_from(token.len())
            .unwrap_or(u64::MAX)
            .saturating_add(CLAIMS_WEIGHT)
    }
}

/// How long a verified access token is remembered (its own `exp` still applies on every use).
const VERIFIED_TTL: i64 = 300;

/// The memory remembered tokens may take: a token counts with its length plus
/// [`CLAIMS_WEIGHT`] (about 25 000 tokens of 1 KiB).
const VERIFIED_BYTES: u64 = 32 << 20;
const CLAIMS_WEIGHT: u64 = 256;

/// The shortest time between two refreshes of the keys from the store.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest time between two refreshes of the keys from the store.
const MAX_REFRESH: Duration = Duration::from_secs(30);
/// The shortest time, in seconds, between storing the next key and signing with it, whatever
/// `tokens.key_prepublish` says: two of the shortest refresh periods, so that every replica has
/// read the key (and verifies and publishes it) before any replica signs with it.
const MIN_LEAD: i64 = 2;

/// A `kid` as gatehouse writes them: base64url, nothing that could be a path or a query.
pub(crate) fn plausible_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The PKCS#8 Ed25519 key in `tokens.signing_key_file`, or why it cannot sign.
pub fn read_signing_key_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "tokens.signing_key_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("tokens.signing_key_file: not a PKCS#8 PEM key: {e}"))?;
    Key::from_pkcs8(der.secret_pkcs8_der(), 0, "")
        .map_err(|e| format!("tokens.signing_key_file: {} is {e}", path.display()))?;
    Ok(der.secret_pkcs8_der().to_vec())
}

/// A fresh key, sealed for the store, signing from `activates`.
fn new_stored_key(vault: &Vault, now: i64, activates: i64) -> Result<SigningKey, String> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate a signing key".to_owned())?;
    let key = Key::from_pkcs8(doc.as_ref(), activates, "")?;
    let created = time::OffsetDateTime::from_unix_timestamp(now)
        .map(clock::rfc3339)
        .map_err(|_| format!("the time {now} is out of range"))?;
    Ok(SigningKey {
        v: SCHEMA_VERSION,
        kid: key.kid,
        pkcs8: vault.seal(doc.as_ref(), SIGNING_KEY_CONTEXT)?,
        created,
        activates,
    })
}

/// Seconds of a configured duration.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Tokens {
    /// Loads the signing keys (generating the first one when the store has none).
    /// Keys kept in the store are sealed with the master key (`vault`); call
    /// [`Tokens::keep_fresh`] to follow rotations made elsewhere.
    pub async fn load(
        config: &TokensConfig,
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        clock: Arc<dyn Clock>,
    ) -> Result<Tokens, String> {
        let (set, keeper) = if let Some(path) = &config.signing_key_file {
            let key = Key::from_pkcs8(&read_signing_key_file(path)?, 0, "")?;
            let set = KeySet {
                keys: vec![Arc::new(key)],
            };
            (set, None)
        } else {
            let mut stored = store.signing_keys().await.map_err(|e| e.to_string())?;
            if stored.is_empty() {
                let now = clock.unix();
                let first = new_stored_key(&vault, now, now)?;
                let kid = first.kid.clone();
                stored = store
                    .init_signing_key(first)
                    .await
                    .map_err(|e| e.to_string())?;
                if stored.iter().any(|k| k.kid == kid) {
                    tracing::info!(kid = %kid, "generated a token signing key");
                }
            }
            let set = open_keys(&stored, &vault, None)?;
            (set, Some(Keeper { store, vault }))
        };
        Ok(Tokens {
            set: ArcSwap::from_pointee(set),
            keeper,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: i64::try_from(config.access_ttl.as_secs()).unwrap_or(3600),
            prepublish: secs(config.key_prepublish),
            rotate_every: config.rotate_every.map(secs),
            clock,
            unknown_kid: Arc::new(tokio::sync::Notify::new()),
            verified: quick_cache::sync::Cache::with_options(
                quick_cache::OptionsBuilder::new()
                    // Grown as tokens come: nothing reserved up front.
                    .estimated_items_capacity(64)
                    .weight_capacity(VERIFIED_BYTES)
                    .build()
                    .map_err(|e| format!("the remembered tokens' cache: {e:?}"))?,
                TokenWeight,
                foldhash::fast::RandomState::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            ),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Lifetime of access tokens in seconds.
    pub fn access_ttl(&self) -> i64 {
        self.access_ttl
    }

    /// The longest a token signed by one key can be accepted after the key stopped signing:
    /// the longer of an access token's and an assertion's lifetime, plus the leeway on `exp`.
    fn lifetime(&self) -> i64 {
        self.access_ttl.max(ASSERTION_TTL).saturating_add(LEEWAY)
    }

    /// How long after it is stored the next key signs: `tokens.key_prepublish`, but never
    /// less than [`MIN_LEAD`], or a replica would sign with a key the others do not know yet
    /// and refuse what it signs (a logout for its users).
    fn lead(&self) -> i64 {
        self.prepublish.max(MIN_LEAD)
    }

    /// Rereads the keys from the store (keys already open are kept as they are). A failure
    /// leaves the current keys in place.
    pub async fn refresh(&self) -> Result<(), String> {
        let Some(keeper) = &self.keeper else {
            return Ok(());
        };
        let stored = keeper
            .store
            .signing_keys()
            .await
            .map_err(|e| e.to_string())?;
        if stored.is_empty() {
            return Err("the store holds no signing key".into());
        }
        let current = self.set.load_full();
        let set = open_keys(&stored, &keeper.vault, Some(&current))?;
        self.set.store(Arc::new(set));
        Ok(())
    }

    /// Adds the next signing key, published now and signing `tokens.key_prepublish` from now,
    /// unless a key is still pending: then that key is the answer and nothing is added, so
    /// concurrent rotations (on any replica) leave one pending key.
    pub async fn rotate(&self) -> Result<Rotation, RotateError> {
        let keeper = self.keeper.as_ref().ok_or(RotateError::KeyFile)?;
        let now = self.clock.unix();
        let activates = now.saturating_add(self.lead());
        let key = new_stored_key(&keeper.vault, now, activates).map_err(RotateError::Other)?;
        let newest = keeper
            .store
            .rotate_signing_key(key.clone(), now)
            .await
            .map_err(RotateError::Store)?;
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "cannot reread the signing keys after a rotation");
        }
        Ok(Rotation {
            added: newest.kid == key.kid,
            kid: newest.kid,
            activates: newest.activates,
        })
    }

    /// With `tokens.rotate_every`: adds the next key when the newest one has signed for
    /// `rotate_every` less `key_prepublish`, so that it signs `rotate_every` after that one.
    /// The store's conditional insert makes one replica's rotation stop the others'.
    async fn rotate_when_due(&self) -> Result<Option<Rotation>, RotateError> {
        let (Some(every), Some(keeper)) = (self.rotate_every, &self.keeper) else {
            return Ok(None);
        };
        let now = self.clock.unix();
        // A newest key that activates later than this is recent enough.
        let unless_after = now.saturating_add(self.prepublish).saturating_sub(every);
        let newest_known = self
            .set
            .load()
            .keys
            .last()
            .map_or(i64::MIN, |k| k.activates);
        if newest_known > unless_after {
            return Ok(None);
        }
        let newest = keeper
            .store
            .signing_keys()
            .await
            .map_err(RotateError::Store)?;
        let activates = crate::store::newest_signing_key(&newest)
            .map_or(now, |k| k.activates.saturating_add(every))
            .max(now.saturating_add(self.lead()));
        let key = new_stored_key(&keeper.vault, now, activates).map_err(RotateError::Other)?;
        let newest = keeper
            .store
            .rotate_signing_key(key.clone(), unless_after)
            .await
            .map_err(RotateError::Store)?;
        Ok(Some(Rotation {
            added: newest.kid == key.kid,
            kid: newest.kid,
            activates: newest.activates,
        }))
    }

    /// Deletes from the store the keys no longer published.
    async fn delete_expired(&self) -> Result<(), String> {
        let Some(keeper) = &self.keeper else {
            return Ok(());
        };
        let expired: Vec<String> = self
            .keys()
            .into_iter()
            .filter(|k| k.state == "expired")
            .map(|k| k.kid)
            .collect();
        for kid in expired {
            keeper
                .store
                .delete_signing_key(&kid)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(kid = %kid, "deleted an expired token signing key");
        }
        Ok(())
    }

    /// Every known key and its times, oldest first.
    pub fn keys(&self) -> Vec<KeyInfo> {
        let set = self.set.load();
        let now = self.clock.unix();
        let lifetime = self.lifetime();
        let signer = set.signer(now).map(|k| k.kid.clone());
        set.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let retired = set.retired(i, now);
                let expires = retired.map(|r| r.saturating_add(lifetime));
                let state = if signer.as_deref() == Some(k.kid.as_str()) {
                    "active"
                } else if k.activates > now {
                    "pending"
                } else if expires.is_some_and(|e| e < now) {
                    "expired"
                } else {
                    "retired"
                };
                KeyInfo {
                    kid: k.kid.clone(),
                    created: k.created.clone(),
                    activates: k.activates,
                    retired,
                    expires,
                    state,
                }
            })
            .collect()
    }

    /// Keeps the keys in step with the store for as long as `self` lives: rereads them every
    /// quarter of `tokens.key_prepublish` (1 s to 30 s) and soon after a token names an unknown
    /// `kid`, rotates with `tokens.rotate_every`, and deletes keys no longer published.
    pub fn keep_fresh(self: &Arc<Self>) {
        if self.keeper.is_none() {
            return;
        }
        let every = Duration::from_secs(u64::try_from(self.prepublish / 4).unwrap_or(0))
            .clamp(MIN_REFRESH, MAX_REFRESH);
        let unknown_kid = self.unknown_kid.clone();
        // Only a weak reference between rounds: the tokens (and the store they hold) go when
        // the app does.
        let tokens = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = tokens.upgrade() else {
                    return;
                };
                this.upkeep().await;
                drop(this);
                tokio::time::sleep(MIN_REFRESH).await;
                tokio::select! {
                    () = tokio::time::sleep(every.saturating_sub(MIN_REFRESH)) => {}
                    () = unknown_kid.notified() => {}
                }
            }
        });
    }

    /// One round of [`Tokens::keep_fresh`].
    async fn upkeep(&self) {
        match self.rotate_when_due().await {
            Ok(Some(rotation)) if rotation.added => {
                if let Some(keeper) = &self.keeper {
                    crate::audit::record(
                        keeper.store.as_ref(),
                        self.clock.as_ref(),
                        "keys.rotated",
                        None,
                        Some(format!(
                            "kid {} activates {} (tokens.rotate_every)",
                            rotation.kid, rotation.activates
                        )),
                    )
                    .await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot rotate the token signing key"),
        }
        if let Err(e) = self.delete_expired().await {
            tracing::warn!(error = %e, "cannot delete expired token signing keys");
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "cannot reread the token signing keys");
        }
    }

    fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let set = self.set.load();
        let key = set
            .signer(self.clock.unix())
            .ok_or(TokenError::UnknownKey)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|_| TokenError::Malformed)
    }

    fn claims(&self, principal: &Principal, audience: &str, ttl: i64) -> Claims {
        let now = self.clock.unix();
        Claims {
            iss: self.issuer.clone(),
            sub: principal.user_id.clone(),
            aud: audience.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: principal.scopes.join(" "),
            amr: principal
                .methods
                .iter()
                .map(|m| m.as_str().to_owned())
                .collect(),
            name: Some(principal.user_name.clone()),
            email: principal.email.clone(),
        }
    }

    /// An access token for `principal` (its scopes and methods become `scope` and `amr`). An
    /// ApplicationToken counts only on the request that carries it, so `app` is never written.
    pub fn issue_access(&self, principal: &Principal) -> Result<String, TokenError> {
        let mut claims = self.claims(principal, &self.audience, self.access_ttl);
        claims.amr.retain(|m| m != Method::App.as_str());
        self.sign(&claims)
    }

    /// [`Tokens::issue_access`] for a user whose tokens were revoked up to `not_before`
    /// ([`crate::store::User::token_iat`]): `iat` is never earlier, so that a token issued
    /// within the second of a revocation is not taken for one issued before it. `nbf` and `exp`
    /// stay as the clock reads.
    pub fn issue_access_after(
        &self,
        principal: &Principal,
        not_before: i64,
    ) -> Result<String, TokenError> {
        let mut claims = self.claims(principal, &self.audience, self.access_ttl);
        claims.amr.retain(|m| m != Method::App.as_str());
        claims.iat = claims.iat.max(not_before);
        self.sign(&claims)
    }

    /// A short-lived JWT for the upstream carrying the same facts as the identity headers, as
    /// the value of its header. Signed afresh each call: the gateway keeps one per principal
    /// for half its lifetime ([`crate::proxy::headers::IdentityHeaders`]).
    pub fn assertion(
        &self,
        principal: &Principal,
        audience: &str,
    ) -> Result<http::HeaderValue, TokenError> {
        let token = self.sign(&self.claims(principal, audience, ASSERTION_TTL))?;
        http::HeaderValue::from_str(&token).map_err(|_| TokenError::Malformed)
    }

    /// Verifies an access token gatehouse issued: EdDSA only, a known `kid`, `iss`, `aud`,
    /// `exp` and `nbf` (with [`LEEWAY`]) all present and right. A token verified before is
    /// recognised by its every byte, so its signature is checked once, not on every request.
    pub fn verify_access(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        if let Some(remembered) = self.remembered(token) {
            return remembered;
        }
        let claims = Arc::new(self.verify(token, &self.audience)?);
        let remembered = Remembered {
            claims: claims.clone(),
            until: self.clock.unix().saturating_add(VERIFIED_TTL),
        };
        self.verified.insert(token.into(), remembered);
        Ok(claims)
    }

    /// An access token verified before: its claims if it is still within its times, `None` when
    /// it was never seen (then [`Tokens::verify_access`] decides).
    pub fn remembered(&self, token: &str) -> Option<Result<Arc<Claims>, TokenError>> {
        let remembered = self.verified.get(token)?;
        let now = self.clock.unix();
        if now >= remembered.until {
            self.verified.remove(token);
            return None;
        }
        let claims = remembered.claims;
        Some(check_times(claims.exp, Some(claims.nbf), now).map(|()| claims))
    }

    /// Verifies a gatehouse token for the given audience (access tokens, assertions).
    pub fn verify(&self, token: &str, audience: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::BadSignature);
        }
        let kid = header
            .kid
            .as_deref()
            .filter(|k| plausible_kid(k))
            .ok_or(TokenError::UnknownKey)?;
        let set = self.set.load();
        let Some((key, _)) = set
            .published(self.clock.unix(), self.lifetime())
            .find(|(k, _)| k.kid == kid)
        else {
            if self.keeper.is_some() && !set.keys.iter().any(|k| k.kid == kid) {
                // Perhaps a key another replica just added: the upkeep task rereads the keys
                // (at most once a second however many tokens ask).
                self.unknown_kid.notify_one();
            }
            return Err(TokenError::UnknownKey);
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        TokenError::BadSignature
                    }
                    ErrorKind::InvalidIssuer => TokenError::WrongClaims("iss".into()),
                    ErrorKind::InvalidAudience => TokenError::WrongClaims("aud".into()),
                    ErrorKind::MissingRequiredClaim(c) => {
                        TokenError::WrongClaims(format!("missing {c}"))
                    }
                    _ => TokenError::Malformed,
                }
            })?;
        check_times(data.claims.exp, Some(data.claims.nbf), self.clock.unix())?;
        Ok(data.claims)
    }

    /// How long, in seconds, a JWKS answer may be cached: half of `tokens.key_prepublish`, at
    /// most 5 minutes, so that a cache refreshed that often knows the next key before it signs.
    pub fn jwks_max_age(&self) -> i64 {
        (self.prepublish / 2).clamp(0, 300)
    }

    /// The public keys as a JWK Set (RFC 7517), for `GET /.well-known/jwks.json`: the keys
    /// that sign or will sign, and the retired ones until what they signed has expired.
    pub fn jwks(&self) -> serde_json::Value {
        let set = self.set.load();
        let keys: Vec<serde_json::Value> = set
            .published(self.clock.unix(), self.lifetime())
            .map(|(k, _)| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": k.kid,
                    "x": URL_SAFE_NO_PAD.encode(&k.public),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// `exp` and `nbf` against `now`, with [`LEEWAY`]. Both come from signed tokens, but a signer
/// may still write any `i64`: the leeway saturates rather than overflow.
pub fn check_times(exp: i64, nbf: Option<i64>, now: i64) -> Result<(), TokenError> {
    if exp.saturating_add(LEEWAY) < now {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf.saturating_sub(LEEWAY) > now) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// The authentication methods named in an `amr` claim that gatehouse knows.
pub fn methods_from_amr(amr: &[String]) -> Vec<Method> {
    amr.iter()
        .filter_map(|m| match m.as_str() {
            "pwd" => Some(Method::Pwd),
            "otp" => Some(Method::Otp),
            "sms" => Some(Method::Sms),
            "email" => Some(Method::Email),
            "hwk" => Some(Method::Hwk),
            "user" => Some(Method::User),
            "mfa" => Some(Method::Mfa),
            // "Bearer and ApplicationToken" is decided on the header of the request itself
            // (SPEC §10): a token saying `app` proves nothing.
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::FixedClock;
    use crate::store::sled::SledStore;

    fn vault() -> Arc<Vault> {
        Arc::new(Vault::from_master(&[5u8; 32]).unwrap())
    }

    fn config() -> TokensConfig {
        TokensConfig {
            issuer: "https://gh.test".into(),
            audience: "gatehouse".into(),
            access_ttl: Duration::from_secs(3600),
            signing_key_file: None,
            rotate_every: None,
            key_prepublish: Duration::from_secs(3600),
        }
    }

    /// Tokens on a fresh store, by `clock`.
    async fn loaded(clock: Arc<FixedClock>) -> Tokens {
        let store = Arc::new(SledStore::temporary().unwrap());
        Tokens::load(&config(), store, vault(), clock)
            .await
            .unwrap()
    }

    fn principal() -> Principal {
        Principal {
            user_id: "42".into(),
            user_name: "ada".into(),
            email: Some("ada@example.com".into()),
            scopes: vec!["read".into()],
            organizations: vec![],
            methods: vec![Method::Pwd, Method::Otp],
        }
    }

    #[tokio::test]
    async fn issued_token_verifies_until_it_expires() {
        let clock = FixedClock::at(1_800_000_000);
        let tokens = loaded(clock.clone()).await;
        let token = tokens.issue_access(&principal()).unwrap();
        let claims = tokens.verify_access(&token).unwrap();
        assert_eq!(claims.sub, "42");
        assert_eq!(claims.amr, vec!["pwd", "otp"]);
        clock.advance(3600 + LEEWAY);
        assert!(tokens.verify_access(&token).is_ok());
        clock.advance(1);
        assert_eq!(tokens.verify_access(&token), Err(TokenError::Expired));
    }

    #[tokio::test]
    async fn a_token_issued_within_the_second_of_a_revocation_outlives_it() {
        let store = SledStore::temporary().unwrap();
        let clock = FixedClock::at(1_800_000_000);
        let tokens = Tokens::load(
            &config(),
            std::sync::Arc::new(store),
            vault(),
            clock.clone(),
        )
        .await
        .unwrap();
        let mut user = crate::store::User::new(42, Default::default(), "now");
        let before = tokens.issue_access(&principal()).unwrap();
        // Revoked in the same second the first token was issued in.
        user.revoke_tokens(clock.unix());
        let after = tokens
            .issue_access_after(&principal(), user.tokens_not_before)
            .unwrap();
        let before = tokens.verify_access(&before).unwrap();
        let after = tokens.verify_access(&after).unwrap();
        assert!(!user.accepts_token_issued(before.iat));
        assert!(user.accepts_token_issued(after.iat));
        // A second revocation within the same second refuses the token issued since the first.
        let mut again = user.clone();
        again.revoke_tokens(clock.unix());
        assert!(!again.accepts_token_issued(after.iat));
        // Only `iat` moves: the token is valid at once and lives as long as any.
        assert_eq!(after.nbf, clock.unix());
        assert_eq!(after.exp, clock.unix() + 3600);
        // Without a revocation, `iat` is the clock's.
        assert_eq!(
            tokens
                .verify_access(&tokens.issue_access_after(&principal(), 0).unwrap())
                .unwrap()
                .iat,
            clock.unix()
        );
    }

    #[tokio::test]
    async fn a_remembered_token_does_not_vouch_for_a_forged_twin() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let tokens = Tokens::load(
            &config(),
            store.clone(),
            vault(),
            FixedClock::at(1_800_000_000),
        )
        .await
        .unwrap();
        let token = tokens.issue_access(&principal()).unwrap();
        assert!(tokens.verify_access(&token).is_ok());
        // Same header and claims, another signature: verified on its own, and refused.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let mut forged_signature = signature.as_bytes().to_vec();
        forged_signature[0] = if forged_signature[0] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let forged = format!("{signed}.{}", String::from_utf8(forged_signature).unwrap());
        assert_eq!(tokens.verify_access(&forged), Err(TokenError::BadSignature));
    }

    #[tokio::test]
    async fn verified_tokens_are_remembered_for_a_while_and_within_their_bytes() {
        let clock = FixedClock::at(1_800_000_000);
        let tokens = loaded(clock.clone()).await;
        let token = tokens.issue_access(&principal()).unwrap();
        assert!(tokens.remembered(&token).is_none(), "not verified yet");
        assert!(tokens.verify_access(&token).is_ok());
        assert!(matches!(tokens.remembered(&token), Some(Ok(_))));
        clock.advance(VERIFIED_TTL - 1);
        assert!(matches!(tokens.remembered(&token), Some(Ok(_))));
        // Past its time it is verified again (and still valid: the token lives an hour).
        clock.advance(1);
        assert!(tokens.remembered(&token).is_none());
        assert!(tokens.verify_access(&token).is_ok());
        assert!(matches!(tokens.remembered(&token), Some(Ok(_))));

        // However many (large) tokens are remembered, their weight stays within the bound.
        let claims = tokens.verify_access(&token).unwrap();
        let padding = "x".repeat(64 << 10);
        for i in 0..2_000 {
            let remembered = Remembered {
                claims: claims.clone(),
                until: clock.unix() + VERIFIED_TTL,
            };
            tokens
                .verified
                .insert(format!("{i}.{padding}").into(), remembered);
        }
        assert!(tokens.verified.weight() <= VERIFIED_BYTES);
        assert!(tokens.verified.len() < 2_000, "{}", tokens.verified.len());
    }

    #[tokio::test]
    async fn signing_key_is_generated_once_and_kept() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let first = Tokens::load(&config(), store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let token = first.issue_access(&principal()).unwrap();
        let second = Tokens::load(&config(), store.clone(), vault(), clock)
            .await
            .unwrap();
        assert!(second.verify_access(&token).is_ok());
        assert_eq!(first.jwks(), second.jwks());
    }

    #[tokio::test]
    async fn signing_key_is_sealed_at_rest_and_needs_the_master_key() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let tokens = Tokens::load(&config(), store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let stored = store.signing_keys().await.unwrap().remove(0);
        assert!(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&stored.pkcs8).is_err());
        let other = Vault::from_master(&[6u8; 32]).unwrap();
        assert!(
            Tokens::load(&config(), store.clone(), Arc::new(other), clock)
                .await
                .is_err()
        );
        drop(tokens);
    }

    #[tokio::test]
    async fn assertions_name_the_principal_for_their_audience_for_a_minute() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let tokens = Tokens::load(
            &config(),
            store.clone(),
            vault(),
            FixedClock::at(1_800_000_000),
        )
        .await
        .unwrap();
        let a = tokens.assertion(&principal(), "upstream").unwrap();
        let claims = tokens.verify(a.to_str().unwrap(), "upstream").unwrap();
        assert_eq!(claims.exp - claims.iat, ASSERTION_TTL);
        assert_eq!(claims.sub, principal().user_id);
        assert_eq!(claims.name, Some(principal().user_name));
        assert!(tokens.verify(a.to_str().unwrap(), "elsewhere").is_err());
    }

    /// A validly signed token whose `exp` is `i64::MAX` made the leeway overflow: a panic in
    /// debug builds, a wrapped "expired" in release ones (input replayed through the
    /// `jwt_header` fuzz target's signed form).
    #[tokio::test]
    async fn signed_times_at_the_ends_of_the_range_are_judged_without_overflow() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let now = 1_800_000_000;
        let tokens = Tokens::load(&config(), store.clone(), vault(), FixedClock::at(now))
            .await
            .unwrap();
        let signed = |exp: i64, nbf: i64| {
            let mut claims = tokens.claims(&principal(), "gatehouse", 0);
            (claims.exp, claims.nbf) = (exp, nbf);
            tokens.sign(&claims).unwrap()
        };
        assert!(tokens.verify(&signed(i64::MAX, now), "gatehouse").is_ok());
        assert_eq!(
            tokens.verify(&signed(i64::MAX, i64::MAX), "gatehouse"),
            Err(TokenError::NotYetValid)
        );
        // jsonwebtoken reads a negative `exp` or `nbf` as missing; a trusted issuer's optional
        // `nbf` still reaches `check_times` as it is.
        assert_eq!(check_times(i64::MAX, Some(i64::MIN), i64::MIN), Ok(()));
        assert_eq!(
            check_times(i64::MIN, None, i64::MAX),
            Err(TokenError::Expired)
        );
    }

    #[tokio::test]
    async fn app_is_neither_read_from_amr_nor_issued() {
        let amr: Vec<String> = ["pwd", "app", "otp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(methods_from_amr(&amr), vec![Method::Pwd, Method::Otp]);
        let store = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let tokens = Tokens::load(&config(), store.clone(), vault(), clock)
            .await
            .unwrap();
        let mut with_app = principal();
        with_app.methods.push(Method::App);
        let token = tokens.issue_access(&with_app).unwrap();
        assert_eq!(
            tokens.verify_access(&token).unwrap().amr,
            vec!["pwd", "otp"]
        );
    }

    fn kids(tokens: &Tokens) -> Vec<String> {
        tokens.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    fn header_kid(token: &str) -> String {
        jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
    }

    #[tokio::test]
    async fn the_next_key_signs_from_its_activation_and_the_old_one_verifies_until_its_tokens_expired()
     {
        let store = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let config = TokensConfig {
            access_ttl: Duration::from_secs(600),
            key_prepublish: Duration::from_secs(100),
            ..config()
        };
        let tokens = Tokens::load(&config, store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let first = kids(&tokens);
        let rotation = tokens.rotate().await.unwrap();
        assert!(rotation.added);
        assert_eq!(rotation.activates, 1_800_000_100);
        // Published at once, signing only from `activates`; assertions alike.
        assert_eq!(kids(&tokens), [first[0].clone(), rotation.kid.clone()]);
        clock.advance(99);
        let old = tokens.issue_access(&principal()).unwrap();
        assert_eq!(header_kid(&old), first[0]);
        let assertion = tokens.assertion(&principal(), "up").unwrap();
        assert_eq!(header_kid(assertion.to_str().unwrap()), first[0]);
        clock.advance(1);
        let new = tokens.issue_access(&principal()).unwrap();
        assert_eq!(header_kid(&new), rotation.kid);
        let assertion = tokens.assertion(&principal(), "up").unwrap();
        assert_eq!(header_kid(assertion.to_str().unwrap()), rotation.kid);
        // The old key is retired at +100 and published until +100 + 600 + 60.
        assert!(tokens.verify(&old, "gatehouse").is_ok());
        clock.advance(660);
        assert_eq!(kids(&tokens).len(), 2);
        let states: Vec<&str> = tokens.keys().iter().map(|k| k.state).collect();
        assert_eq!(states, ["retired", "active"]);
        clock.advance(1);
        assert_eq!(kids(&tokens), std::slice::from_ref(&rotation.kid));
        assert_eq!(
            tokens.verify(&old, "gatehouse"),
            Err(TokenError::UnknownKey)
        );
        // The expired key leaves the store at the next upkeep.
        tokens.upkeep().await;
        let stored: Vec<String> = store
            .signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(stored, [rotation.kid]);
    }

    #[tokio::test]
    async fn a_rotation_while_a_key_is_pending_returns_that_key() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let tokens = Tokens::load(&config(), store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let first = tokens.rotate().await.unwrap();
        clock.advance(3599);
        let second = tokens.rotate().await.unwrap();
        assert_eq!(
            (second.kid.as_str(), second.added),
            (first.kid.as_str(), false)
        );
        clock.advance(1);
        let third = tokens.rotate().await.unwrap();
        assert!(third.added);
        assert_eq!(third.activates, 1_800_003_600 + 3600);
        assert_eq!(store.signing_keys().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn another_replicas_rotation_is_learnt_by_a_refresh() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let config = TokensConfig {
            key_prepublish: Duration::ZERO,
            ..config()
        };
        let a = Tokens::load(&config, store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let b = Tokens::load(&config, store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let rotation = a.rotate().await.unwrap();
        // Even without a prepublish period, the key signs only once every replica has had
        // the time to read it.
        assert_eq!(rotation.activates, 1_800_000_000 + MIN_LEAD);
        assert_ne!(
            header_kid(&a.issue_access(&principal()).unwrap()),
            rotation.kid
        );
        clock.advance(MIN_LEAD);
        let token = a.issue_access(&principal()).unwrap();
        assert_eq!(header_kid(&token), rotation.kid);
        assert_eq!(b.verify_access(&token), Err(TokenError::UnknownKey));
        b.refresh().await.unwrap();
        assert!(b.verify_access(&token).is_ok());
        assert_eq!(kids(&a), kids(&b));
    }

    #[tokio::test]
    async fn rotate_every_adds_the_next_key_once_per_period() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let clock = FixedClock::at(1_800_000_000);
        let config = TokensConfig {
            key_prepublish: Duration::from_secs(10),
            rotate_every: Some(Duration::from_secs(100)),
            ..config()
        };
        let a = Tokens::load(&config, store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let b = Tokens::load(&config, store.clone(), vault(), clock.clone())
            .await
            .unwrap();
        let mut added = Vec::new();
        for _ in 0..30 {
            for tokens in [&a, &b] {
                if let Some(rotation) = tokens.rotate_when_due().await.unwrap()
                    && rotation.added
                {
                    added.push(rotation.activates - 1_800_000_000);
                }
            }
            clock.advance(10);
        }
        assert_eq!(added, [100, 200, 300]);
    }

    #[tokio::test]
    async fn a_key_from_a_file_is_not_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(doc.as_ref())
        );
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pem).unwrap();
        let config = TokensConfig {
            signing_key_file: Some(path),
            ..config()
        };
        let store = Arc::new(SledStore::temporary().unwrap());
        let tokens = Tokens::load(
            &config,
            store.clone(),
            vault(),
            FixedClock::at(1_800_000_000),
        )
        .await
        .unwrap();
        assert!(matches!(tokens.rotate().await, Err(RotateError::KeyFile)));
        assert!(store.signing_keys().await.unwrap().is_empty());
        assert_eq!(tokens.keys()[0].state, "active");
    }

    #[test]
    fn path_like_kids_are_implausible() {
        assert!(plausible_kid("abc_DEF-123"));
        for bad in ["", "../../etc/passwd", "a/b", "a b", "%2e"] {
            assert!(!plausible_kid(bad), "{bad}");
        }
    }
}
