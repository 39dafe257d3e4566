//! Sign-in through external OpenID providers (SPEC §12): `GET /auth/login/{id}` starts it,
//! `GET /auth/callback/{id}` finishes it, `POST /auth/backchannel-logout/{id}` ends its
//! sessions when the provider says so.
//!
//! A start stores the flow (state hash, nonce, PKCE verifier, `rd`) and binds it to the browser
//! with a cookie holding the `state`; the callback needs that cookie to name the `state` it
//! carries, and takes the flow from the store once (on any replica), so that a callback URL is
//! worth nothing in another browser or a second time. Every refusal at the callback is a page
//! saying what to do next, a log line and an audit event, and no session.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::pages::{self, respond, see_other};
use super::{SignIn, Visit, rd};
use crate::api;
use crate::auth::external::{LinkError, NewUserLimit, Profile};
use crate::body::Body;
use crate::oidc::{Identity, Provider, RedeemError};
use crate::store::{IdpLink, LoginFlow, User};

/// How long a sign-in at a provider may take, from the button to the callback (seconds).
pub const FLOW_TTL: i64 = 600;

/// Sign-ins one client address may start per [`FLOW_TTL`]: each is a record in the store until
/// its callback or its end.
pub const STARTS_PER_ADDRESS: u32 = 120;

/// Sign-ins one replica starts per [`FLOW_TTL`], from all addresses together: the bound on the
/// flows it can make the store hold however many addresses ask (an IPv6 network has many).
pub const STARTS_PER_REPLICA: u32 = 20_000;

/// A count of starts in the current window of [`FLOW_TTL`].
#[derive(Default)]
pub(super) struct StartWindow(std::sync::Mutex<(i64, u32)>);

impl StartWindow {
    /// Counts one start at `now`; `false` (nothing counted) when the window is full.
    pub(super) fn take(&self, now: i64) -> bool {
        let mut window = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now - window.0 >= FLOW_TTL {
            *window = (now, 0);
        }
        if window.1 >= STARTS_PER_REPLICA {
            return false;
        }
        window.1 += 1;
        true
    }
}

/// The provider id in `path` after `prefix` (`/auth/callback/` …): one non-empty segment.
pub(super) fn provider_id<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = crate::path::strip_prefix_ignore_case(path, prefix)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// A refused callback: status, what the page says, and what the log says.
struct Refused {
    status: StatusCode,
    text: &'static str,
    reason: String,
}

impl Refused {
    fn new(status: StatusCode, text: &'static str, reason: impl Into<String>) -> Refused {
        Refused {
            status,
            text,
            reason: reason.into(),
        }
    }
}

const STALE: &str = "This sign-in link is not valid any more: it was used already, it took too \
                     long, or it was started in another browser. Start again from the sign-in page.";
const PROVIDER_FAILED: &str = "The identity provider did not confirm the sign-in. Start again \
                               from the sign-in page; if it keeps failing, tell your administrator.";
const DECLINED: &str = "The sign-in was cancelled at the identity provider. Start again from the \
                        sign-in page when you are ready.";
const NOT_ALLOWED: &str = "Your account at the identity provider may not sign in here. Ask your \
                           administrator for access, or sign in with another account.";
const BUSY: &str = "Too many new accounts are signing in right now. Try again in a few minutes.";
const UNREACHABLE: &str = "The identity provider cannot be reached right now. Try again in a \
                           moment, or sign in another way.";
const STORE_DOWN: &str = "Signing in is not possible right now. Try again in a moment.";

impl SignIn {
    /// The buttons of the sign-in page: `(id, name)` of every provider.
    pub(super) fn provider_buttons(&self) -> Vec<(String, String)> {
        self.providers
            .all()
            .iter()
            .map(|p| (p.config.id.clone(), p.config.name.clone()))
            .collect()
    }

    fn provider(&self, path: &str, prefix: &str) -> Option<Arc<Provider>> {
        provider_id(path, prefix).and_then(|id| self.providers.get(id).cloned())
    }

    fn no_provider(&self) -> Response<Body> {
        respond(
            StatusCode::NOT_FOUND,
            "Not found",
            &pages::message("There is no such way to sign in here."),
            &[],
        )
    }

    /// `GET /auth/login/{id}`: a new flow, and the redirect to the provider.
    pub(super) async fn start_external(&self, parts: &Parts, visit: &Visit<'_>) -> Response<Body> {
        let Some(provider) = self.provider(visit.path, "/auth/login/") else {
            return self.no_provider();
        };
        let target = rd::target(&api::query_value(parts.uri.query(), "rd").unwrap_or_default());
        let now = self.clock.unix();
        if self.starts.reserve(visit.client, now).is_err() || !self.all_starts.take(now) {
            let mut response = respond(
                StatusCode::TOO_MANY_REQUESTS,
                "Please wait",
                &pages::message("Too many sign-ins were started. Wait a few minutes."),
                &[],
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(60u32));
            return response;
        }
        let authorization = match provider.authorize().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(provider = %provider.config.id, error = %e.0, "OpenID provider unavailable");
                let mut response = respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Please try again",
                    &pages::retry(UNREACHABLE, &target),
                    &[],
                );
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(crate::oidc::RETRY.as_secs()),
                );
                return response;
            }
        };
        let flow = LoginFlow {
            state_hash: crate::sessions::id_hash(&authorization.state),
            provider: provider.config.id.clone(),
            nonce: authorization.nonce,
            pkce_verifier: authorization.pkce_verifier,
            rd: target.clone(),
            expires: now.saturating_add(FLOW_TTL),
        };
        if let Err(e) = self.store.create_login_flow(flow).await {
            tracing::warn!(error = %e, "cannot store an external sign-in");
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                &pages::retry(STORE_DOWN, &target),
                &[],
            );
        }
        self.sessions.purge_when_due(now).await;
        let mut response = crate::body::redirect(StatusCode::FOUND, &authorization.url);
        if let Some(cookie) = self
            .sessions
            .flow_cookie_header(&authorization.state, FLOW_TTL)
        {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    }

    /// `GET /auth/callback/{id}`.
    pub(super) async fn callback(&self, parts: &Parts, visit: &Visit<'_>) -> Response<Body> {
        let Some(provider) = self.provider(visit.path, "/auth/callback/") else {
            return self.no_provider();
        };
        let query = parts.uri.query();
        let mut cookies: Vec<HeaderValue> =
            self.sessions.clearing_flow_cookie().into_iter().collect();
        let (target, outcome) = self.finish(&provider, parts, query, visit.client).await;
        match outcome {
            Ok(session) => {
                cookies.extend(self.sessions.cookie(&session));
                see_other(&target, &cookies)
            }
            Err(refused) => {
                tracing::warn!(provider = %provider.config.id, reason = %refused.reason, "external sign-in refused");
                self.audit(
                    "signin.failed",
                    None,
                    Some(format!("oidc {}: {}", provider.config.id, refused.reason)),
                )
                .await;
                let mut response = respond(
                    refused.status,
                    "Sign-in failed",
                    &pages::retry(refused.text, &target),
                    &cookies,
                );
                if refused.status == StatusCode::TOO_MANY_REQUESTS
                    || refused.status == StatusCode::SERVICE_UNAVAILABLE
                {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(60u32));
                }
                response
            }
        }
    }

    /// The callback's work: where the browser goes next, and the new session's id or why none.
    async fn finish(
        &self,
        provider: &Provider,
        parts: &Parts,
        query: Option<&str>,
        client: IpAddr,
    ) -> (String, Result<String, Refused>) {
        let param = |name: &str| api::query_value(query, name).filter(|v| !v.is_empty());
        let Some(state) = param("state") else {
            return (
                "/".into(),
                Err(Refused::new(StatusCode::BAD_REQUEST, STALE, "no state")),
            );
        };
        // The flow is taken (and so voided) whatever the callback says, once it is this browser's.
        let bound = self
            .sessions
            .flow_cookie(&parts.headers)
            .is_some_and(|cookie| crate::secrets::same(cookie, &state));
        if !bound {
            return (
                "/".into(),
                Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    STALE,
                    "the state is not the one this browser's cookie holds",
                )),
            );
        }
        let now = self.clock.unix();
        let flow = match self
            .store
            .take_login_flow(&crate::sessions::id_hash(&state), now)
            .await
        {
            Ok(Some(flow)) => flow,
            Ok(None) => {
                return (
                    "/".into(),
                    Err(Refused::new(
                        StatusCode::BAD_REQUEST,
                        STALE,
                        "unknown, used or expired state",
                    )),
                );
            }
            Err(e) => {
                return (
                    "/".into(),
                    Err(Refused::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        STORE_DOWN,
                        format!("store: {e}"),
                    )),
                );
            }
        };
        let target = rd::target(&flow.rd);
        if !flow.provider.eq_ignore_ascii_case(&provider.config.id) {
            return (
                target,
                Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    STALE,
                    format!("the flow was started for provider {}", flow.provider),
                )),
            );
        }
        if let Some(error) = param("error") {
            let (status, text) = if error == "access_denied" {
                (StatusCode::FORBIDDEN, DECLINED)
            } else {
                (StatusCode::BAD_REQUEST, PROVIDER_FAILED)
            };
            let described = param("error_description").unwrap_or_default();
            let reason = format!(
                "the provider answered {}: {}",
                printable(&error),
                printable(&described)
            );
            return (target, Err(Refused::new(status, text, reason)));
        }
        let Some(code) = param("code") else {
            return (
                target,
                Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    PROVIDER_FAILED,
                    "no code",
                )),
            );
        };
        let identity = match provider
            .redeem(&code, &flow.pkce_verifier, &flow.nonce)
            .await
        {
            Ok(identity) => identity,
            Err(RedeemError::Exchange(why)) => {
                return (
                    target,
                    Err(Refused::new(
                        StatusCode::BAD_REQUEST,
                        PROVIDER_FAILED,
                        format!("code exchange: {why}"),
                    )),
                );
            }
            Err(RedeemError::IdToken(why)) => {
                return (
                    target,
                    Err(Refused::new(
                        StatusCode::BAD_REQUEST,
                        PROVIDER_FAILED,
                        format!("ID token: {why}"),
                    )),
                );
            }
            Err(RedeemError::Unavailable(why)) => {
                return (
                    target,
                    Err(Refused::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        UNREACHABLE,
                        why.0,
                    )),
                );
            }
        };
        let session = self
            .admit(provider, &identity, parts, &target, client)
            .await;
        match session {
            Ok((id, next)) => (next, Ok(id)),
            Err(refused) => (target, Err(refused)),
        }
    }

    /// The user of a verified identity, under the provider's rules, and a new session for them:
    /// its id and where the browser goes next.
    async fn admit(
        &self,
        provider: &Provider,
        identity: &Identity,
        parts: &Parts,
        target: &str,
        client: IpAddr,
    ) -> Result<(String, String), Refused> {
        let config = &provider.config;
        if let Err(why) = allowed(config, identity) {
            return Err(Refused::new(StatusCode::FORBIDDEN, NOT_ALLOWED, why));
        }
        let profile = Profile::from_claims(
            &identity.issuer,
            &identity.subject,
            identity.preferred_username.as_deref(),
            identity.email.as_deref(),
            identity.name.as_deref(),
            Vec::new(),
        );
        let limit = NewUserLimit {
            max: config.max_new_users,
            window: config.new_users_window,
        };
        let user = match self.auth.external_sign_in(&profile, limit).await {
            Ok(user) => user,
            Err(LinkError::Refused(why)) => {
                return Err(Refused::new(
                    StatusCode::FORBIDDEN,
                    NOT_ALLOWED,
                    format!("profile refused: {why}"),
                ));
            }
            Err(LinkError::Limited(_)) => {
                return Err(Refused::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    BUSY,
                    "new users over the provider's limit",
                ));
            }
            Err(LinkError::Store(e)) => {
                return Err(Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    STORE_DOWN,
                    format!("store: {e}"),
                ));
            }
        };
        let user = self.scopes_from_groups(config, identity, user).await?;
        if !user.is_valid {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                NOT_ALLOWED,
                "user disabled",
            ));
        }
        let methods = if config.trust_idp_mfa && identity.second_factor() {
            vec!["mfa".to_owned()]
        } else {
            Vec::new()
        };
        let previous = match self.sessions.presented(&parts.headers) {
            crate::sessions::Presented::Id(id) => Some(id),
            _ => None,
        };
        let link = IdpLink {
            provider: config.id.clone(),
            sid: identity.sid.clone(),
        };
        let id = self
            .sessions
            .start(user.id, methods.clone(), previous, Some(link))
            .await
            .map_err(|e| {
                Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    STORE_DOWN,
                    format!("cannot start a session: {e}"),
                )
            })?;
        // Disabling a user ends their sessions; one stored after that end, by a sign-in that
        // read the user before it, is ended here, or enabling the user again would revive it.
        let still_valid = self
            .store
            .user_by_id(user.id)
            .await
            .map(|u| u.is_some_and(|u| u.is_valid));
        match self.keep_or_end(&id, still_valid).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(Refused::new(
                    StatusCode::FORBIDDEN,
                    NOT_ALLOWED,
                    "user disabled",
                ));
            }
            Err(e) => {
                return Err(Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    STORE_DOWN,
                    format!("store: {e}"),
                ));
            }
        }
        let mut detail = format!("oidc {}", config.id);
        if !methods.is_empty() {
            detail.push_str(" amr mfa");
        }
        self.audit("signin", Some(&user.user_name), Some(detail))
            .await;
        let next = if methods.is_empty()
            && self.needs_step_up(target, client)
            && self.has_factor(user.id).await
        {
            rd::step_up_url(target)
        } else {
            target.to_owned()
        };
        Ok((id, next))
    }

    /// With `scopes_from_groups`, the user's scopes follow the provider's groups at each
    /// sign-in: scopes no mapping names are kept, mapped ones are those of the groups now held.
    async fn scopes_from_groups(
        &self,
        config: &crate::config::OidcProvider,
        identity: &Identity,
        user: User,
    ) -> Result<User, Refused> {
        if config.scopes_from_groups.is_empty() {
            return Ok(user);
        }
        let mapped: Vec<String> = config
            .scopes_from_groups
            .values()
            .flatten()
            .cloned()
            .collect();
        let granted: Vec<String> = identity
            .groups
            .iter()
            .filter_map(|group| config.scopes_from_groups.get(group))
            .flatten()
            .cloned()
            .collect();
        let change = move |u: &mut User| {
            u.scopes.retain(|s| !mapped.contains(s));
            for scope in &granted {
                if !u.scopes.contains(scope) {
                    u.scopes.push(scope.clone());
                }
            }
        };
        // Written only when the scopes change (as a set).
        let mut changed = user.clone();
        change(&mut changed);
        let (mut now, mut then) = (changed.scopes, user.scopes.clone());
        now.sort();
        then.sort();
        if now == then {
            return Ok(user);
        }
        self.store
            .modify_user(&user.user_name, self.clock.unix(), &change)
            .await
            .map_err(|e| {
                Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    STORE_DOWN,
                    format!("cannot update the user's scopes: {e}"),
                )
            })
    }

    /// `POST /auth/backchannel-logout/{id}` (OpenID Connect Back-Channel Logout 1.0 §2.5).
    pub(super) async fn backchannel_logout(
        &self,
        parts: &Parts,
        body: Incoming,
        visit: &Visit<'_>,
    ) -> Response<Body> {
        let Some(provider) = self.provider(visit.path, "/auth/backchannel-logout/") else {
            return crate::problem::Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "There is no provider with this id.",
            )
            .render(visit.path, visit.request_id);
        };
        let bytes = match api::read_body(parts, body).await {
            Ok(bytes) => bytes,
            Err(api::BodyError::TooLarge(limit)) => {
                let why = format!("the body is larger than {}", api::size_text(limit));
                return logout_answer(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", &why);
            }
            Err(api::BodyError::Busy) => return logout_unavailable("bodies held at their limit"),
            Err(_) => return logout_refused("the request body cannot be read"),
        };
        let tokens: Vec<String> = form_urlencoded::parse(&bytes)
            .filter(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
            .collect();
        let [token] = tokens.as_slice() else {
            return logout_refused("expected one logout_token");
        };
        let id = &provider.config.id;
        let now = self.clock.unix();
        let logout = match provider.verify_logout(token, now).await {
            Ok(logout) => logout,
            Err(crate::oidc::LogoutRefused::Unreachable(why)) => {
                return logout_unavailable(&format!("the provider's keys: {why}"));
            }
            Err(crate::oidc::LogoutRefused::Invalid(why)) => {
                tracing::warn!(provider = %id, reason = %why, "back-channel logout refused");
                return logout_refused(&why);
            }
        };
        let user = match &logout.subject {
            Some(sub) => match self
                .store
                .user_by_external(&provider.config.issuer, sub)
                .await
            {
                Ok(user) => user,
                Err(e) => return logout_unavailable(&e.to_string()),
            },
            None => None,
        };
        // Each token ends sessions once: its jti is remembered for longer than the token can be
        // accepted (an iat up to LOGOUT_TOKEN_AGE ahead, and as long again after it). Taken once
        // nothing but the ending itself can fail, and given back if that fails, so that the
        // provider's next try of the same token does what this one could not.
        let key = format!("oidc-logout:{id}:{}", crate::sessions::id_hash(&logout.jti));
        match self
            .store
            .count_send(&key, now, 2 * crate::oidc::LOGOUT_TOKEN_AGE + 60, 1)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(provider = %id, "back-channel logout token replayed");
                return logout_refused("this logout token was used already");
            }
            Err(e) => return logout_unavailable(&e.to_string()),
        }
        if logout.subject.is_some() && user.is_none() {
            // A subject gatehouse never saw has no sessions here, whatever `sid` comes with it:
            // a token naming both names one person's session, never another's.
            return logout_done();
        }
        let ended = match self
            .store
            .delete_idp_sessions(id, user.as_ref().map(|u| u.id), logout.sid.as_deref())
            .await
        {
            Ok(n) => n,
            Err(e) => {
                if let Err(again) = self.store.forget_sends(&key).await {
                    tracing::warn!(error = %again, "cannot give a logout token back");
                }
                return logout_unavailable(&e.to_string());
            }
        };
        tracing::info!(provider = %id, sessions = ended, "back-channel logout");
        self.audit(
            "signin.logout",
            user.as_ref().map(|u| u.user_name.as_str()),
            Some(format!("oidc {id} back-channel: {ended} sessions")),
        )
        .await;
        logout_done()
    }
}

/// Whether the provider's user may sign in: `allowed_email_domains` (a verified email, or one
/// the provider does not call unverified, at one of the domains) and `allowed_groups`.
fn allowed(config: &crate::config::OidcProvider, identity: &Identity) -> Result<(), String> {
    if !config.allowed_email_domains.is_empty() {
        let Some(email) = &identity.email else {
            return Err("no email, and allowed_email_domains is set".into());
        };
        if identity.email_verified == Some(false) {
            return Err("the email is not verified".into());
        }
        let domain = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        if !config.allowed_email_domains.contains(&domain) {
            return Err(format!(
                "email domain {} is not allowed",
                printable(&domain)
            ));
        }
    }
    if !config.allowed_groups.is_empty()
        && !identity
            .groups
            .iter()
            .any(|g| config.allowed_groups.contains(g))
    {
        return Err("in none of the allowed groups".into());
    }
    Ok(())
}

/// At most 200 printable characters of a value from outside, for a log line.
fn printable(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

fn logout_done() -> Response<Body> {
    let mut response = Response::new(crate::body::empty());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn logout_refused(why: &str) -> Response<Body> {
    logout_answer(StatusCode::BAD_REQUEST, "invalid_request", why)
}

fn logout_unavailable(why: &str) -> Response<Body> {
    tracing::warn!(error = %why, "back-channel logout failed");
    logout_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "try again",
    )
}

/// A back-channel logout's error answer (OAuth's `error` and `error_description`), not cached.
fn logout_answer(status: StatusCode, error: &str, why: &str) -> Response<Body> {
    let doc = serde_json::json!({"error": error, "error_description": why});
    let mut response = crate::body::json(status, &doc);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_starts_a_bounded_number_of_sign_ins_per_window() {
        let window = StartWindow::default();
        for _ in 0..STARTS_PER_REPLICA {
            assert!(window.take(1000));
        }
        assert!(!window.take(1000));
        assert!(!window.take(1000 + FLOW_TTL - 1));
        assert!(window.take(1000 + FLOW_TTL));
    }

    #[test]
    fn a_provider_id_is_one_segment_after_its_prefix() {
        assert_eq!(
            provider_id("/auth/callback/corp", "/auth/callback/"),
            Some("corp")
        );
        assert_eq!(
            provider_id("/AUTH/Callback/corp/", "/auth/callback/"),
            Some("corp")
        );
        assert_eq!(provider_id("/auth/callback/", "/auth/callback/"), None);
        assert_eq!(provider_id("/auth/callback/a/b", "/auth/callback/"), None);
    }

    fn identity(email: Option<&str>, verified: Option<bool>, groups: &[&str]) -> Identity {
        Identity {
            issuer: "https://idp".into(),
            subject: "s".into(),
            email: email.map(str::to_owned),
            email_verified: verified,
            preferred_username: None,
            name: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            amr: vec![],
            sid: None,
        }
    }

    fn provider() -> crate::config::OidcProvider {
        crate::config::OidcProvider {
            id: "corp".into(),
            name: "Corp".into(),
            issuer: "https://idp".into(),
            client_id: "gatehouse".into(),
            client_secret: crate::config::Secret::new("s"),
            client_secret_file: None,
            scopes: vec!["openid".into()],
            allowed_email_domains: vec![],
            allowed_groups: vec![],
            groups_claim: "groups".into(),
            scopes_from_groups: Default::default(),
            trust_idp_mfa: false,
            ca_file: None,
            max_new_users: 100,
            new_users_window: std::time::Duration::from_secs(3600),
        }
    }

    #[test]
    fn allowed_domains_match_the_whole_domain_of_a_verified_email() {
        let mut config = provider();
        config.allowed_email_domains = vec!["example.com".into()];
        assert!(allowed(&config, &identity(Some("a@example.com"), Some(true), &[])).is_ok());
        assert!(allowed(&config, &identity(Some("a@EXAMPLE.com"), None, &[])).is_ok());
        for refused in [
            identity(Some("a@example.com"), Some(false), &[]),
            identity(Some("a@evil-example.com"), Some(true), &[]),
            identity(Some("a@example.com.evil"), Some(true), &[]),
            identity(Some("a@sub.example.com"), Some(true), &[]),
            identity(Some("example.com"), Some(true), &[]),
            identity(None, None, &[]),
        ] {
            assert!(allowed(&config, &refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn allowed_groups_need_one_of_them() {
        let mut config = provider();
        config.allowed_groups = vec!["staff".into()];
        assert!(allowed(&config, &identity(None, None, &["x", "staff"])).is_ok());
        assert!(allowed(&config, &identity(None, None, &["Staff"])).is_err());
        assert!(allowed(&config, &identity(None, None, &[])).is_err());
    }
}
