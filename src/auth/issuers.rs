//! Trusted external issuers (`auth.trusted_issuers`): their JWKS is fetched over HTTPS or HTTP,
//! cached, and fetched again when a token names an unknown `kid` — at most once per
//! `auth.jwks_min_refresh`, so a stream of forged `kid`s cannot make gatehouse hammer the issuer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::config::TrustedIssuer;
use crate::outbound::Outbound;
use crate::tokens::{TokenError, check_times};

/// The claims gatehouse reads from an external token.
#[derive(Debug, Clone, Deserialize)]
pub struct ExternalClaims {
    pub iss: String,
    pub sub: String,
    pub exp: i64,
    #[serde(default)]
    pub nbf: Option<i64>,
    /// When the issuer issued the token; compared with the user's revocation cut-off.
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    /// Space-separated (RFC 8693 `scope`).
    #[serde(default)]
    pub scope: Option<String>,
    /// A list, as some providers send it.
    #[serde(default)]
    pub scp: Option<Vec<String>>,
    #[serde(default)]
    pub amr: Vec<String>,
}

impl ExternalClaims {
    pub fn scopes(&self) -> Vec<String> {
        match (&self.scope, &self.scp) {
            (Some(s), _) => s.split_whitespace().map(str::to_owned).collect(),
            (None, Some(list)) => list.clone(),
            (None, None) => Vec::new(),
        }
    }
}

struct Issuer {
    config: TrustedIssuer,
    algorithms: Vec<Algorithm>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the JWKS was last fetched (successfully or not).
    fetched: Mutex<Option<Instant>>,
}

/// All trusted issuers and the client that fetches their keys.
pub struct Issuers {
    issuers: Vec<Issuer>,
    client: Outbound,
    min_refresh: Duration,
    clock: Arc<dyn crate::clock::Clock>,
}

/// An external `kid`: printable, and nothing that could walk a path.
pub(crate) fn plausible_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && !kid.contains("..")
        && kid.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'=')
        })
}

impl Issuers {
    pub fn new(
        configs: &[TrustedIssuer],
        min_refresh: Duration,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Issuers, String> {
        let client = Outbound::new(Duration::from_secs(5), !configs.is_empty())?;
        let issuers = configs
            .iter()
            .map(|c| Issuer {
                algorithms: c.algorithms.iter().filter_map(|a| a.parse().ok()).collect(),
                config: c.clone(),
                keys: RwLock::new(HashMap::new()),
                fetched: Mutex::new(None),
            })
            .collect();
        Ok(Issuers {
            issuers,
            client,
            min_refresh,
            clock,
        })
    }

    /// Whether `iss` is one of the trusted issuers.
    pub fn trusts(&self, iss: &str) -> bool {
        self.issuers.iter().any(|i| i.config.issuer == iss)
    }

    /// How many users tokens of the trusted issuer `iss` may create, and per how long.
    pub fn new_user_limit(&self, iss: &str) -> Option<super::external::NewUserLimit> {
        self.issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .map(|i| super::external::NewUserLimit {
                max: i.config.max_new_users,
                window: i.config.new_users_window,
            })
    }

    /// Verifies a token from the trusted issuer `iss`: an allowed algorithm, a known `kid`, the
    /// signature, `iss`, `aud`, `exp` and (when present) `nbf`.
    pub async fn verify(&self, iss: &str, token: &str) -> Result<ExternalClaims, TokenError> {
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| TokenError::WrongClaims("iss".into()))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(TokenError::BadSignature);
        }
        let kid = header
            .kid
            .as_deref()
            .filter(|k| plausible_kid(k))
            .ok_or(TokenError::UnknownKey)?;
        // Bound first: a guard in the `match` scrutinee would be held into `refresh`, which writes.
        let known = issuer.keys.read().await.get(kid).cloned();
        let key = match known {
            Some(key) => key,
            None => {
                self.refresh(issuer).await;
                issuer
                    .keys
                    .read()
                    .await
                    .get(kid)
                    .cloned()
                    .ok_or(TokenError::UnknownKey)?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&[&issuer.config.audience]);
        let data =
            jsonwebtoken::decode::<ExternalClaims>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidIssuer => TokenError::WrongClaims("iss".into()),
                    ErrorKind::InvalidAudience => TokenError::WrongClaims("aud".into()),
                    ErrorKind::MissingRequiredClaim(c) => {
                        TokenError::WrongClaims(format!("missing {c}"))
                    }
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidKeyFormat => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                }
            })?;
        check_times(data.claims.exp, data.claims.nbf, self.clock.unix())?;
        Ok(data.claims)
    }

    /// Fetches the issuer's JWKS unless that was done less than `min_refresh` ago.
    async fn refresh(&self, issuer: &Issuer) {
        let mut fetched = issuer.fetched.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return;
        }
        *fetched = Some(Instant::now());
        match self.fetch(&issuer.config).await {
            Ok(set) => {
                let keys: HashMap<String, DecodingKey> = set
                    .keys
                    .iter()
                    .filter_map(|jwk| {
                        let kid = jwk.common.key_id.clone()?;
                        DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
                    })
                    .collect();
                tracing::info!(issuer = %issuer.config.issuer, keys = keys.len(), "fetched JWKS");
                *issuer.keys.write().await = keys;
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.config.issuer, error = %e, "cannot fetch JWKS");
            }
        }
    }

    async fn fetch(&self, config: &TrustedIssuer) -> Result<JwkSet, String> {
        let request = Request::get(config.jwks_url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.client.send(request).await?;
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("not a JWK Set: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_external_kids_are_refused() {
        assert!(plausible_kid("2024-rsa.key_1"));
        for bad in ["../keys/a", "a/b", "a\\b", "", "a b"] {
            assert!(!plausible_kid(bad), "{bad}");
        }
    }
}
