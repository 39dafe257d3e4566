//! External OpenID providers (SPEC §12): discovery, the authorization request with PKCE, `state`
//! and `nonce`, the code exchange, the ID token's checks, and back-channel logout tokens.
//!
//! Each provider is discovered when gatehouse starts (and when a reload builds a new set); one
//! whose discovery fails is logged by its id and stays unavailable — its button answers a page
//! saying so — while the others work. An unavailable provider is discovered again when somebody
//! asks for it, at most once per [`RETRY`]. Keys are refetched when a token names an unknown
//! `kid`, at most once per [`RETRY`], so forged `kid`s cannot make gatehouse hammer the provider.
//!
//! The OpenID protocol itself (discovery documents, the authorization URL, the token request,
//! the ID token's signature and claims) is the `openidconnect` crate's; gatehouse's HTTP client
//! carries its calls (bounded answers, a timeout, no redirects, the provider's own CA roots).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IdTokenVerifier, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::{OidcConfig, OidcProvider};
use crate::outbound::Outbound;

/// How long an unavailable provider, or a refetch of keys, waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(10);

/// How long one call to a provider may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The event a logout token carries (OpenID Connect Back-Channel Logout 1.0 §2.4).
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How far a logout token's `iat` may be from now, in seconds.
pub const LOGOUT_TOKEN_AGE: i64 = 600;

/// The `amr` values (RFC 8176) that say a second factor was used.
const SECOND_FACTOR_AMR: [&str; 7] = ["mfa", "otp", "hwk", "swk", "sms", "tel", "sc"];

/// Every claim of an ID token that the crate does not read itself (`groups`, `sid`, …).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OtherClaims(HashMap<String, serde_json::Value>);

impl AdditionalClaims for OtherClaims {}

type Token = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// A client of a discovered provider: its authorization endpoint is known, its token endpoint
/// may be.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a provider cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

/// What was learnt from a provider: its metadata and keys.
struct Discovered {
    metadata: CoreProviderMetadata,
    keys: Keys,
}

/// A provider's signing keys, in the two forms they are used in: the crate's (ID tokens) and
/// jsonwebtoken's (logout tokens).
#[derive(Clone)]
struct Keys {
    set: CoreJsonWebKeySet,
    by_kid: HashMap<String, DecodingKey>,
    /// Keys published without a `kid`: tried when a logout token names none.
    anonymous: Vec<DecodingKey>,
}

impl Keys {
    fn new(set: CoreJsonWebKeySet) -> Keys {
        let mut by_kid = HashMap::new();
        let mut anonymous = Vec::new();
        if let Ok(jwks) = serde_json::to_value(&set).and_then(serde_json::from_value::<JwkSet>) {
            for jwk in &jwks.keys {
                let Ok(key) = DecodingKey::from_jwk(jwk) else {
                    continue;
                };
                match &jwk.common.key_id {
                    Some(kid) => {
                        by_kid.insert(kid.clone(), key);
                    }
                    None => anonymous.push(key),
                }
            }
        }
        Keys {
            set,
            by_kid,
            anonymous,
        }
    }
}

/// The sign-in a provider vouched for, once its ID token passed every check.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// `None` when the provider did not say.
    pub email_verified: Option<bool>,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub amr: Vec<String>,
    /// The provider's session id, for back-channel logout.
    pub sid: Option<String>,
}

impl Identity {
    /// Whether the provider says a second factor was used.
    pub fn second_factor(&self) -> bool {
        self.amr
            .iter()
            .any(|m| SECOND_FACTOR_AMR.contains(&m.as_str()))
    }
}

/// Why a callback did not become a sign-in (the page shows a summary; the log has the detail).
#[derive(Debug)]
pub enum RedeemError {
    /// The provider refused the code (expired, used, or not this client's).
    Exchange(String),
    /// The provider answered without an ID token, or with one that failed a check.
    IdToken(String),
    Unavailable(Unavailable),
}

/// Why a back-channel logout token was not taken.
#[derive(Debug)]
pub enum LogoutRefused {
    /// The provider's keys could not be had to check it: it may be sent again.
    Unreachable(String),
    /// The token is not a valid logout token for this client.
    Invalid(String),
}

/// A verified back-channel logout request: the sessions it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub subject: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
}

/// The start of a sign-in: where to send the browser, and what its callback must match.
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// One configured provider.
pub struct Provider {
    pub config: OidcProvider,
    redirect: String,
    /// `Err` when the client cannot be built (an unreadable `ca_file`).
    http: Result<Outbound, String>,
    discovered: ArcSwapOption<Discovered>,
    /// When discovery was last tried; held while it runs.
    discovering: Mutex<Option<Instant>>,
    /// When keys were last refetched; held while they are.
    refetching: Mutex<Option<Instant>>,
}

/// The providers of one configuration.
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

/// The callback URL of provider `id` under `public_url`.
pub fn redirect_uri(public_url: &str, id: &str) -> String {
    format!("{}/auth/callback/{id}", public_url.trim_end_matches('/'))
}

impl Providers {
    pub fn new(config: &OidcConfig, public_url: &str) -> Providers {
        let list = config
            .providers
            .iter()
            .map(|p| {
                let http = match &p.ca_file {
                    Some(path) => Outbound::with_roots(CALL_TIMEOUT, path),
                    None => Outbound::new(CALL_TIMEOUT, true),
                };
                Arc::new(Provider {
                    redirect: redirect_uri(public_url, &p.id),
                    config: p.clone(),
                    http,
                    discovered: ArcSwapOption::empty(),
                    discovering: Mutex::new(None),
                    refetching: Mutex::new(None),
                })
            })
            .collect();
        Providers { list }
    }

    pub fn all(&self) -> &[Arc<Provider>] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The provider with this id (letter case aside, as paths are matched).
    pub fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.list
            .iter()
            .find(|p| p.config.id.eq_ignore_ascii_case(id))
    }

    /// Discovers every provider in the background (on the runtime this is called on, if any),
    /// logging each failure by the provider's id.
    pub fn discover_in_background(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for provider in &self.list {
            let provider = provider.clone();
            runtime.spawn(async move {
                let _ = provider.ready().await;
            });
        }
    }
}

impl Provider {
    fn http(&self) -> Result<&Outbound, Unavailable> {
        self.http.as_ref().map_err(|e| Unavailable(e.clone()))
    }

    /// The provider's metadata and keys, discovering them when that has not been done (and was
    /// not tried within [`RETRY`]).
    async fn ready(&self) -> Result<Arc<Discovered>, Unavailable> {
        if let Some(found) = self.discovered.load_full() {
            return Ok(found);
        }
        let mut tried = self.discovering.lock().await;
        if let Some(found) = self.discovered.load_full() {
            return Ok(found);
        }
        if tried.is_some_and(|at| at.elapsed() < RETRY) {
            return Err(Unavailable("discovery failed recently".into()));
        }
        *tried = Some(Instant::now());
        match self.discover().await {
            Ok(found) => {
                tracing::info!(provider = %self.config.id, issuer = %self.config.issuer, "OpenID provider discovered");
                let found = Arc::new(found);
                self.discovered.store(Some(found.clone()));
                Ok(found)
            }
            Err(e) => {
                tracing::warn!(provider = %self.config.id, issuer = %self.config.issuer, error = %e.0, "cannot discover OpenID provider");
                Err(e)
            }
        }
    }

    async fn discover(&self) -> Result<Discovered, Unavailable> {
        let http = self.http()?;
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| Unavailable(format!("issuer: {e}")))?;
        let call = Carrier(http);
        let metadata = CoreProviderMetadata::discover_async(issuer, &call)
            .await
            .map_err(|e| Unavailable(error_chain(&e)))?;
        let keys = Keys::new(metadata.jwks().clone());
        Ok(Discovered { metadata, keys })
    }

    /// Fetches the provider's keys again, unless that was done within [`RETRY`]; whether new
    /// keys were stored.
    async fn refetch_keys(&self, discovered: &Discovered) -> bool {
        let mut fetched = self.refetching.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < RETRY) {
            return false;
        }
        *fetched = Some(Instant::now());
        let Ok(http) = self.http() else {
            return false;
        };
        let call = Carrier(http);
        match CoreJsonWebKeySet::fetch_async(discovered.metadata.jwks_uri(), &call).await {
            Ok(set) => {
                tracing::info!(provider = %self.config.id, "refetched OpenID provider keys");
                self.discovered.store(Some(Arc::new(Discovered {
                    metadata: discovered.metadata.clone(),
                    keys: Keys::new(set),
                })));
                true
            }
            Err(e) => {
                tracing::warn!(provider = %self.config.id, error = %error_chain(&e), "cannot refetch OpenID provider keys");
                false
            }
        }
    }

    fn client(&self, discovered: &Discovered) -> Result<Client, Unavailable> {
        let redirect =
            RedirectUrl::new(self.redirect.clone()).map_err(|e| Unavailable(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            discovered.metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().to_owned(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// A new authorization request: code flow, PKCE S256, fresh `state` and `nonce`.
    pub async fn authorize(&self) -> Result<Authorization, Unavailable> {
        let discovered = self.ready().await?;
        let client = self.client(&discovered)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            // 256 bits, the form of every id the browser holds (see `sessions::well_formed`).
            || CsrfToken::new_random_len(32),
            || Nonce::new_random_len(32),
        );
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges `code` for tokens and checks the ID token: signature (keys refetched once on an
    /// unknown `kid`), `iss`, `aud` (and `azp`), `exp`, `nonce`.
    pub async fn redeem(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Identity, RedeemError> {
        let discovered = self.ready().await.map_err(RedeemError::Unavailable)?;
        let client = self.client(&discovered).map_err(RedeemError::Unavailable)?;
        let http = self.http().map_err(RedeemError::Unavailable)?;
        let call = Carrier(http);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| RedeemError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&call)
            .await
            .map_err(|e| RedeemError::Exchange(error_chain(&e)))?;
        let raw = openidconnect::TokenResponse::id_token(&response)
            .ok_or_else(|| RedeemError::IdToken("the provider sent no ID token".into()))?
            .to_string();
        let token: Token = raw
            .parse()
            .map_err(|e| RedeemError::IdToken(format!("malformed ID token: {e}")))?;
        let nonce = Nonce::new(nonce.to_owned());
        let checked = match self.check_id_token(&discovered, &token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.refetch_keys(&discovered).await => {
                let again = self.ready().await.map_err(RedeemError::Unavailable)?;
                self.check_id_token(&again, &token, &nonce)
            }
            other => other,
        };
        let claims = checked.map_err(|e| RedeemError::IdToken(e.to_string()))?;
        Ok(claims)
    }

    fn check_id_token(
        &self,
        discovered: &Discovered,
        token: &Token,
        nonce: &Nonce,
    ) -> Result<Identity, ClaimsVerificationError> {
        let issuer = discovered.metadata.issuer().clone();
        let algorithms: Vec<CoreJwsSigningAlgorithm> = discovered
            .metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| asymmetric(a))
            .cloned()
            .collect();
        let algorithms = if algorithms.is_empty() {
            vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]
        } else {
            algorithms
        };
        let verifier: IdTokenVerifier<'_, _> = IdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            issuer,
            discovered.keys.set.clone(),
        )
        .set_allowed_algs(algorithms);
        let claims = token.claims(&verifier, nonce)?;
        let other = &claims.additional_claims().0;
        let groups = match other.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        let amr = claims
            .auth_method_refs()
            .map(|list| list.iter().map(|m| m.to_string()).collect())
            .unwrap_or_default();
        Ok(Identity {
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified(),
            preferred_username: claims.preferred_username().map(|u| u.to_string()),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
            groups,
            amr,
            sid: other
                .get("sid")
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty() && s.len() <= 255)
                .map(str::to_owned),
        })
    }

    /// Verifies a back-channel logout token (Back-Channel Logout 1.0 §2.6): an asymmetric
    /// signature by one of the provider's keys (refetched once on an unknown `kid`), `iss`, `aud`
    /// naming this client, `iat` within [`LOGOUT_TOKEN_AGE`] of `now`, `exp` when present, the
    /// logout event, `sid` or `sub`, a `jti`, and no `nonce`.
    pub async fn verify_logout(&self, token: &str, now: i64) -> Result<Logout, LogoutRefused> {
        let discovered = self
            .ready()
            .await
            .map_err(|e| LogoutRefused::Unreachable(e.0))?;
        self.check_logout(discovered, token, now)
            .await
            .map_err(LogoutRefused::Invalid)
    }

    async fn check_logout(
        &self,
        discovered: Arc<Discovered>,
        token: &str,
        now: i64,
    ) -> Result<Logout, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err("not an asymmetric signature".into());
        }
        let typ_ok = header
            .typ
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case("logout+jwt") || t.eq_ignore_ascii_case("JWT"));
        if !typ_ok {
            return Err("not a logout token (typ)".into());
        }
        let claims = match self.logout_claims(&discovered, &header, token) {
            Err(LogoutKey::Unknown) if self.refetch_keys(&discovered).await => {
                let again = self.ready().await.map_err(|e| e.0)?;
                self.logout_claims(&again, &header, token)
            }
            other => other,
        }
        .map_err(|e| match e {
            LogoutKey::Unknown => "signed with an unknown key".to_owned(),
            LogoutKey::Invalid(why) => why,
        })?;
        if claims.nonce.is_some() {
            return Err("a logout token must not carry a nonce".into());
        }
        let event = claims
            .events
            .as_ref()
            .and_then(|e| e.as_object())
            .and_then(|e| e.get(LOGOUT_EVENT));
        if !event.is_some_and(serde_json::Value::is_object) {
            return Err("no back-channel logout event".into());
        }
        let iat = claims.iat.ok_or("no iat")?;
        if (now - iat).abs() > LOGOUT_TOKEN_AGE {
            return Err("iat too far from now".into());
        }
        if claims.exp.is_some_and(|exp| exp <= now - 60) {
            return Err("expired".into());
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 255)
            .ok_or("no jti")?;
        let subject = claims.sub.filter(|s| !s.is_empty());
        let sid = claims.sid.filter(|s| !s.is_empty() && s.len() <= 255);
        if subject.is_none() && sid.is_none() {
            return Err("neither sid nor sub".into());
        }
        Ok(Logout { subject, sid, jti })
    }

    /// The claims of a logout token that one of the provider's keys verifies (the one its `kid`
    /// names, else any).
    fn logout_claims(
        &self,
        discovered: &Discovered,
        header: &jsonwebtoken::Header,
        token: &str,
    ) -> Result<LogoutClaims, LogoutKey> {
        let keys: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => vec![discovered.keys.by_kid.get(kid).ok_or(LogoutKey::Unknown)?],
            None => discovered.keys.anonymous.iter().collect(),
        };
        if keys.is_empty() {
            return Err(LogoutKey::Unknown);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["iss", "aud", "iat"]);
        validation.set_issuer(&[discovered.metadata.issuer().as_str()]);
        validation.set_audience(&[&self.config.client_id]);
        let mut last = LogoutKey::Unknown;
        for key in keys {
            match jsonwebtoken::decode::<LogoutClaims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = LogoutKey::Invalid(match e.kind() {
                        ErrorKind::InvalidIssuer => "wrong iss".into(),
                        ErrorKind::InvalidAudience => "wrong aud".into(),
                        ErrorKind::MissingRequiredClaim(c) => format!("no {c}"),
                        ErrorKind::InvalidSignature => "bad signature".into(),
                        other => format!("invalid token: {other:?}"),
                    });
                }
            }
        }
        Err(last)
    }
}

enum LogoutKey {
    Unknown,
    Invalid(String),
}

#[derive(Debug, Deserialize)]
struct LogoutClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    nonce: Option<serde_json::Value>,
    #[serde(default)]
    events: Option<serde_json::Value>,
}

fn asymmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    use CoreJwsSigningAlgorithm as A;
    matches!(
        alg,
        A::RsaSsaPkcs1V15Sha256
            | A::RsaSsaPkcs1V15Sha384
            | A::RsaSsaPkcs1V15Sha512
            | A::RsaSsaPssSha256
            | A::RsaSsaPssSha384
            | A::RsaSsaPssSha512
            | A::EcdsaP256Sha256
            | A::EcdsaP384Sha384
            | A::EdDsa
    )
}

/// An error with its sources, for a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `openidconnect` crate's calls, carried by gatehouse's client.
struct Carrier<'a>(&'a Outbound);

type CallFuture<'c> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<openidconnect::HttpResponse, std::io::Error>>
            + Send
            + 'c,
    >,
>;

impl<'c> openidconnect::AsyncHttpClient<'c> for Carrier<'_> {
    type Error = std::io::Error;
    type Future = CallFuture<'c>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        let http = self.0;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let response = http
                .exchange(request)
                .await
                .map_err(std::io::Error::other)?;
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        })
    }
}
