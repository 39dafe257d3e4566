//! Gatehouse's own JWTs: access tokens, identity assertions for the upstream, and the JWKS.
//!
//! Keys are Ed25519 (EdDSA, RFC 8037), generated at first start and kept in the store, or loaded from
//! `tokens.signing_key_file`. The newest key signs; every stored key verifies, so tokens signed by a
//! previous key stay valid until they expire.

use std::sync::Arc;
use std::time::Duration;

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
}

impl Key {
    fn from_pkcs8(pkcs8: &[u8]) -> Result<Key, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        Ok(Key {
            kid: URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]),
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding: DecodingKey::from_ed_der(&public),
            public,
        })
    }
}

/// Issues and verifies gatehouse's tokens.
pub struct Tokens {
    /// Oldest first; the last one signs.
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    access_ttl: i64,
    clock: Arc<dyn Clock>,
    /// Access tokens whose signature and claims were verified, keyed by the token itself: a hit
    /// is an exact match of every byte, so no other string can stand for a verified token. A hit
    /// skips the signature check only: the token's times are checked again on every use. Only
    /// verified tokens are ever inserted, so the fast seeded hash cannot be flooded from outside.
    verified: moka::sync::Cache<Arc<str>, Arc<Claims>, foldhash::fast::RandomState>,
}

/// How long a verified access token is remembered (its own `exp` still applies on every use).
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// The memory remembered tokens may take: a token counts with its length plus
/// [`CLAIMS_WEIGHT`] (about 25 000 tokens of 1 KiB).
const VERIFIED_BYTES: u64 = 32 << 20;
const CLAIMS_WEIGHT: u32 = 256;

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
    Key::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("tokens.signing_key_file: {} is {e}", path.display()))?;
    Ok(der.secret_pkcs8_der().to_vec())
}

impl Tokens {
    /// Loads the signing keys (generating the first one when the store has none).
    /// Keys kept in the store are sealed with the master key (`vault`).
    pub async fn load(
        config: &TokensConfig,
        store: &dyn Store,
        vault: &Vault,
        clock: Arc<dyn Clock>,
    ) -> Result<Tokens, String> {
        let mut pkcs8s: Vec<Vec<u8>> = Vec::new();
        if let Some(path) = &config.signing_key_file {
            pkcs8s.push(read_signing_key_file(path)?);
        } else {
            let mut stored = store.signing_keys().await.map_err(|e| e.to_string())?;
            if stored.is_empty() {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| "cannot generate a signing key".to_owned())?;
                let key = Key::from_pkcs8(doc.as_ref())?;
                stored = store
                    .init_signing_key(SigningKey {
                        v: SCHEMA_VERSION,
                        kid: key.kid.clone(),
                        pkcs8: vault.seal(doc.as_ref(), SIGNING_KEY_CONTEXT)?,
                        created: clock::rfc3339(clock.now()),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                if stored.iter().any(|k| k.kid == key.kid) {
                    tracing::info!(kid = %key.kid, "generated a token signing key");
                }
            }
            for key in stored {
                pkcs8s.push(
                    vault
                        .open(&key.pkcs8, SIGNING_KEY_CONTEXT)
                        .map_err(|e| format!("signing key {}: {e}", key.kid))?,
                );
            }
        }
        let keys = pkcs8s
            .iter()
            .map(|p| Key::from_pkcs8(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tokens {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: i64::try_from(config.access_ttl.as_secs()).unwrap_or(3600),
            clock,
            verified: moka::sync::Cache::builder()
                .weigher(|token: &Arc<str>, _| {
                    u32::try_from(token.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(CLAIMS_WEIGHT)
                })
                .max_capacity(VERIFIED_BYTES)
                .time_to_live(VERIFIED_TTL)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Lifetime of access tokens in seconds.
    pub fn access_ttl(&self) -> i64 {
        self.access_ttl
    }

    fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let key = self.keys.last().ok_or(TokenError::UnknownKey)?;
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
        self.verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// An access token verified before: its claims if it is still within its times, `None` when
    /// it was never seen (then [`Tokens::verify_access`] decides).
    pub fn remembered(&self, token: &str) -> Option<Result<Arc<Claims>, TokenError>> {
        let claims = self.verified.get(token)?;
        Some(check_times(claims.exp, Some(claims.nbf), self.clock.unix()).map(|()| claims))
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
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
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

    /// The public keys as a JWK Set (RFC 7517), for `GET /.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| {
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

    fn vault() -> Vault {
        Vault::from_master(&[5u8; 32]).unwrap()
    }

    fn config() -> TokensConfig {
        TokensConfig {
            issuer: "https://gh.test".into(),
            audience: "gatehouse".into(),
            access_ttl: Duration::from_secs(3600),
            signing_key_file: None,
        }
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
        let store = SledStore::temporary().unwrap();
        let clock = FixedClock::at(1_800_000_000);
        let tokens = Tokens::load(&config(), &store, &vault(), clock.clone())
            .await
            .unwrap();
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
        let tokens = Tokens::load(&config(), &store, &vault(), clock.clone())
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
        let store = SledStore::temporary().unwrap();
        let tokens = Tokens::load(&config(), &store, &vault(), FixedClock::at(1_800_000_000))
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
    async fn signing_key_is_generated_once_and_kept() {
        let store = SledStore::temporary().unwrap();
        let clock = FixedClock::at(1_800_000_000);
        let first = Tokens::load(&config(), &store, &vault(), clock.clone())
            .await
            .unwrap();
        let token = first.issue_access(&principal()).unwrap();
        let second = Tokens::load(&config(), &store, &vault(), clock)
            .await
            .unwrap();
        assert!(second.verify_access(&token).is_ok());
        assert_eq!(first.jwks(), second.jwks());
    }

    #[tokio::test]
    async fn signing_key_is_sealed_at_rest_and_needs_the_master_key() {
        let store = SledStore::temporary().unwrap();
        let clock = FixedClock::at(1_800_000_000);
        let tokens = Tokens::load(&config(), &store, &vault(), clock.clone())
            .await
            .unwrap();
        let stored = store.signing_keys().await.unwrap().remove(0);
        assert!(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&stored.pkcs8).is_err());
        let other = Vault::from_master(&[6u8; 32]).unwrap();
        assert!(
            Tokens::load(&config(), &store, &other, clock)
                .await
                .is_err()
        );
        drop(tokens);
    }

    #[tokio::test]
    async fn assertions_name_the_principal_for_their_audience_for_a_minute() {
        let store = SledStore::temporary().unwrap();
        let tokens = Tokens::load(&config(), &store, &vault(), FixedClock::at(1_800_000_000))
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
        let store = SledStore::temporary().unwrap();
        let now = 1_800_000_000;
        let tokens = Tokens::load(&config(), &store, &vault(), FixedClock::at(now))
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
        let store = SledStore::temporary().unwrap();
        let clock = FixedClock::at(1_800_000_000);
        let tokens = Tokens::load(&config(), &store, &vault(), clock)
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

    #[test]
    fn path_like_kids_are_implausible() {
        assert!(plausible_kid("abc_DEF-123"));
        for bad in ["", "../../etc/passwd", "a/b", "a b", "%2e"] {
            assert!(!plausible_kid(bad), "{bad}");
        }
    }
}
