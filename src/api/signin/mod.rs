//! Browser sign-in (SPEC §11): `/auth/login`, `/auth/step-up`, `/auth/logout` and
//! `/auth/session`, served on the public listeners and never forwarded.
//!
//! Every form carries a CSRF token bound to the browser (a keyed hash of its CSRF cookie, so any
//! replica checks what another issued), and a post whose `Origin` or `Sec-Fetch-Site` names
//! another site is refused before its body is read. Unknown users and wrong passwords get one
//! answer after one password hash.

mod external;
mod pages;
pub(crate) mod passkeys;
pub mod rd;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;

use self::pages::{LoginView, StepUpView, respond, respond_with, see_other};
use crate::api::page::Script;
use crate::api::table::{self, Operation};
use crate::api::{self, BodyError};
use crate::auth::{AuthError, Authenticator, Principal, SignInError};
use crate::body::Body;
use crate::clock::Clock;
use crate::config::Access;
use crate::mfa::service::{Mfa, MfaError};
use crate::path::{self, eq_ignore_case, strip_prefix_ignore_case};
use crate::problem::Problem;
use crate::routes::AccessRules;
use crate::sessions::{Live, Sessions};
use crate::store::{FactorKind, Store};

const LOGIN: &str = "/auth/login";
const STEP_UP: &str = "/auth/step-up";
const LOGOUT: &str = "/auth/logout";
const SESSION: &str = "/auth/session";

/// What the sign-in endpoints answer.
pub const OPERATIONS: [Operation; 14] = [
    Operation::new("GET", LOGIN),
    Operation::new("POST", LOGIN),
    Operation::new("GET", STEP_UP),
    Operation::new("POST", STEP_UP),
    Operation::new("GET", LOGOUT),
    Operation::new("POST", LOGOUT),
    Operation::new("GET", SESSION),
    Operation::new("HEAD", LOGIN),
    Operation::new("HEAD", SESSION),
    Operation::new("GET", PROVIDER),
    Operation::new("GET", CALLBACK),
    Operation::new("POST", BACKCHANNEL_LOGOUT),
    Operation::new("GET", passkeys::PASSKEYS),
    Operation::new("POST", passkeys::PASSKEYS),
];

/// The external provider paths (SPEC §12), as templates.
const PROVIDER: &str = "/auth/login/{id}";
const CALLBACK: &str = "/auth/callback/{id}";
const BACKCHANNEL_LOGOUT: &str = "/auth/backchannel-logout/{id}";

/// What every sign-in path is (`/auth`) or starts with (`/auth/`).
pub const PREFIX: &str = "/auth";

/// A path under `/auth/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    StepUp,
    Logout,
    Session,
    /// `/auth/passkeys`: the signed-in user's passkeys (SPEC §14).
    Passkeys,
    /// `/auth/login/{id}`: a sign-in at an external provider starts.
    Provider,
    /// `/auth/callback/{id}`: the provider sends the browser back.
    Callback,
    /// `/auth/backchannel-logout/{id}`: the provider ends sessions.
    BackchannelLogout,
    /// Any other path under `/auth/`: gatehouse's, so answered 404 rather than forwarded.
    Unknown,
}

impl Endpoint {
    /// The endpoint `key` (a match key) names, when it is `/auth` or under `/auth/`.
    pub fn of(key: &str) -> Option<Endpoint> {
        let rest = strip_prefix_ignore_case(key, PREFIX)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let trimmed = key.strip_suffix('/').unwrap_or(key);
        for (prefix, endpoint) in [
            ("/auth/login/", Endpoint::Provider),
            ("/auth/callback/", Endpoint::Callback),
            ("/auth/backchannel-logout/", Endpoint::BackchannelLogout),
        ] {
            if external::provider_id(key, prefix).is_some() {
                return Some(endpoint);
            }
        }
        Some(
            [
                (LOGIN, Endpoint::Login),
                (STEP_UP, Endpoint::StepUp),
                (LOGOUT, Endpoint::Logout),
                (SESSION, Endpoint::Session),
                (passkeys::PASSKEYS, Endpoint::Passkeys),
            ]
            .into_iter()
            .find(|(p, _)| eq_ignore_case(trimmed, p))
            .map_or(Endpoint::Unknown, |(_, e)| e),
        )
    }

    fn template(self) -> &'static str {
        match self {
            Endpoint::Login => LOGIN,
            Endpoint::StepUp => STEP_UP,
            Endpoint::Logout => LOGOUT,
            Endpoint::Session | Endpoint::Unknown => SESSION,
            Endpoint::Passkeys => passkeys::PASSKEYS,
            Endpoint::Provider => PROVIDER,
            Endpoint::Callback => CALLBACK,
            Endpoint::BackchannelLogout => BACKCHANNEL_LOGOUT,
        }
    }
}

/// What the gateway knows of the request that the pages need.
pub struct Visit<'a> {
    /// This request's own origin (`https://host:port`), as the browser names it.
    pub origin: Option<&'a str>,
    pub client: IpAddr,
    /// The request's normalised path, for problem documents.
    pub path: &'a str,
    pub request_id: &'a str,
}

/// The sign-in pages' handler.
pub struct SignIn {
    auth: Arc<Authenticator>,
    sessions: Arc<Sessions>,
    mfa: Arc<Mfa>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rules: AccessRules,
    /// The origin of `server.public_url`, also accepted as the origin of a form post.
    public_origin: Option<String>,
    /// The external OpenID providers of this configuration.
    providers: Arc<crate::oidc::Providers>,
    /// External sign-ins started per client address.
    starts: crate::auth::throttle::Throttle,
    /// External sign-ins started from every address together.
    all_starts: external::StartWindow,
}

/// The fields of a posted form.
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Why a form post is refused before it is acted on.
enum Refusal {
    /// Another site's post, or one without this browser's CSRF token.
    Forged,
    Body(BodyError),
}

impl SignIn {
    pub fn new(services: &api::services::Services, config: &crate::config::Config) -> SignIn {
        SignIn {
            auth: services.auth.clone(),
            sessions: services.sessions.clone(),
            mfa: services.mfa.clone(),
            store: services.store.clone(),
            clock: services.clock.clone(),
            rules: AccessRules::new(&config.routes, config.proxy.default),
            public_origin: origin_of(&config.server.public_url),
            providers: {
                let providers =
                    crate::oidc::Providers::new(&config.oidc, &config.server.public_url);
                providers.discover_in_background();
                Arc::new(providers)
            },
            starts: crate::auth::throttle::Throttle::new(
                external::STARTS_PER_ADDRESS,
                std::time::Duration::from_secs(external::FLOW_TTL.unsigned_abs()),
            ),
            all_starts: external::StartWindow::default(),
        }
    }

    /// Answers one request to `endpoint`.
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: Incoming,
        visit: &Visit<'_>,
    ) -> Response<Body> {
        let m = &parts.method;
        match (endpoint, m) {
            (Endpoint::Login, &Method::GET | &Method::HEAD) => self.login_page(parts),
            (Endpoint::Login, &Method::POST) => self.login(parts, body, visit).await,
            (Endpoint::StepUp, &Method::GET) => self.step_up_page(parts, visit).await,
            (Endpoint::StepUp, &Method::POST) => self.step_up(parts, body, visit).await,
            (Endpoint::Logout, &Method::GET) => self.logout_page(parts).await,
            (Endpoint::Logout, &Method::POST) => self.logout(parts, body, visit).await,
            (Endpoint::Session, &Method::GET | &Method::HEAD) => self.session(parts, visit).await,
            (Endpoint::Passkeys, &Method::GET) => self.passkeys_page(parts).await,
            (Endpoint::Passkeys, &Method::POST) => self.passkeys_post(parts, body, visit).await,
            (Endpoint::Provider, &Method::GET) => self.start_external(parts, visit).await,
            (Endpoint::Callback, &Method::GET) => self.callback(parts, visit).await,
            (Endpoint::BackchannelLogout, &Method::POST) => {
                self.backchannel_logout(parts, body, visit).await
            }
            (Endpoint::Unknown, _) => Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "Gatehouse has no page at this path.",
            )
            .render(visit.path, visit.request_id),
            (endpoint, _) => {
                let mut response = Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "Method not allowed",
                    format!("{} does not take {m}.", endpoint.template()),
                )
                .render(visit.path, visit.request_id);
                if let Err(allow) = table::check_method(&OPERATIONS, endpoint.template(), m)
                    && let Ok(v) = HeaderValue::from_str(&allow)
                {
                    response.headers_mut().insert(header::ALLOW, v);
                }
                response
            }
        }
    }

    /// The browser's CSRF cookie, or a new one with its `Set-Cookie`; and the form token for it.
    fn csrf(&self, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
        let (cookie, set) = match self.sessions.csrf_cookie(headers) {
            Some(cookie) => (cookie.to_owned(), None),
            None => match self.sessions.new_csrf_cookie() {
                Ok((cookie, set)) => (cookie, Some(set)),
                // Without randomness no form can be trusted; the post will be refused.
                Err(_) => (String::new(), None),
            },
        };
        (self.sessions.csrf_token(&cookie), set)
    }

    /// A page with a form, setting the CSRF cookie when the browser has none; with
    /// `passkeys`, a page that offers them, running the passkey script.
    fn form_page(
        &self,
        status: StatusCode,
        title: &str,
        content: &str,
        csrf_cookie: Option<HeaderValue>,
        passkeys: bool,
    ) -> Response<Body> {
        let script = if passkeys && self.mfa.passkeys_enabled() {
            Script::Passkeys
        } else {
            Script::None
        };
        respond_with(status, title, content, csrf_cookie.as_slice(), script)
    }

    /// Reads a form post, refusing another site's and one without this browser's token. The
    /// origin is checked, and the CSRF cookie looked for, before the body is read.
    async fn read_form(
        &self,
        parts: &Parts,
        body: Incoming,
        visit: &Visit<'_>,
    ) -> Result<Form, Refusal> {
        self.not_forged(parts, visit)?;
        let cookie = self.sessions.csrf_cookie(&parts.headers).map(str::to_owned);
        let bytes = api::read_body(parts, body).await.map_err(Refusal::Body)?;
        let mut form = Form(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        );
        // `rd` comes with the form (the pages put it there), else from the URL the form was
        // posted to (`POST /auth/step-up?rd=…`); either way it is checked where it is used.
        if form.get("rd").is_empty()
            && let Some(rd) = api::query_value(parts.uri.query(), "rd")
        {
            form.0.retain(|(k, _)| k != "rd");
            form.0.push(("rd".to_owned(), rd));
        }
        if !self
            .sessions
            .csrf_valid(cookie.as_deref(), form.get("csrf"))
        {
            return Err(Refusal::Forged);
        }
        Ok(form)
    }

    /// What a post's headers alone show of a forgery: another site's `Origin` or
    /// `Sec-Fetch-Site`, or no CSRF cookie (403 whatever else the post lacks). Forms that need a
    /// session check this before sending a browser without one to sign in, so that a forged post
    /// is refused alike with and without a session.
    fn not_forged(&self, parts: &Parts, visit: &Visit<'_>) -> Result<(), Refusal> {
        if !self.same_origin(&parts.headers, visit.origin)
            || self.sessions.csrf_cookie(&parts.headers).is_none()
        {
            return Err(Refusal::Forged);
        }
        Ok(())
    }

    /// Whether a post comes from this site: `Sec-Fetch-Site`, when sent, says same-origin (or
    /// none, a navigation the user typed), and `Origin`, when sent, is this request's own origin
    /// or the public URL's.
    fn same_origin(&self, headers: &HeaderMap, own: Option<&str>) -> bool {
        let single = |name: header::HeaderName| {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(v), None) => v.to_str().map(Some).map_err(|_| ()),
                (Some(_), Some(_)) => Err(()),
            }
        };
        let site = single(header::HeaderName::from_static("sec-fetch-site"));
        let site_ok = match site {
            Ok(None) => true,
            Ok(Some(v)) => v.eq_ignore_ascii_case("same-origin") || v.eq_ignore_ascii_case("none"),
            Err(()) => false,
        };
        let origin_ok = match single(header::ORIGIN) {
            Ok(None) => true,
            Ok(Some(origin)) => {
                let origin = origin.trim_end_matches('/');
                own.is_some_and(|own| origin.eq_ignore_ascii_case(own))
                    || self
                        .public_origin
                        .as_deref()
                        .is_some_and(|p| origin.eq_ignore_ascii_case(p))
            }
            Err(()) => false,
        };
        site_ok && origin_ok
    }

    /// The page for a refused form post.
    fn refused(&self, refusal: Refusal) -> Response<Body> {
        match refusal {
            Refusal::Forged => respond(
                StatusCode::FORBIDDEN,
                "Request refused",
                &pages::message(
                    "This form did not come from this site's page, or the page is too old. \
                     Go back, reload the page and try again.",
                ),
                &[],
            ),
            Refusal::Body(e) => crate::api::page::form_failure(&e),
        }
    }

    fn login_page(&self, parts: &Parts) -> Response<Body> {
        let target = rd::target(&api::query_value(parts.uri.query(), "rd").unwrap_or_default());
        let (token, set) = self.csrf(&parts.headers);
        self.form_page(
            StatusCode::OK,
            "Sign in",
            &pages::login(&LoginView {
                csrf: &token,
                rd: &target,
                user: "",
                error: None,
                providers: &self.provider_buttons(),
                passkeys: self.mfa.passkeys_enabled(),
            }),
            set,
            true,
        )
    }

    async fn login(&self, parts: &Parts, body: Incoming, visit: &Visit<'_>) -> Response<Body> {
        let form = match self.read_form(parts, body, visit).await {
            Ok(form) => form,
            Err(refusal) => return self.refused(refusal),
        };
        if matches!(form.get("action"), "passkey-options" | "passkey") {
            return self.login_with_passkey(parts, &form, visit).await;
        }
        let target = rd::target(form.get("rd"));
        let user_name = form.get("user").trim();
        let password = form.get("password").to_owned();
        let retry = |status: StatusCode, text: &str, retry_after: Option<u64>| {
            let (token, set) = self.csrf(&parts.headers);
            let mut response = self.form_page(
                status,
                "Sign in",
                &pages::login(&LoginView {
                    csrf: &token,
                    rd: &target,
                    user: user_name,
                    error: Some(text),
                    providers: &self.provider_buttons(),
                    passkeys: self.mfa.passkeys_enabled(),
                }),
                set,
                true,
            );
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        };
        if user_name.is_empty() || user_name.len() > 256 || password.len() > 1024 {
            return retry(StatusCode::UNAUTHORIZED, WRONG_PASSWORD, None);
        }
        let signed_in = match self.auth.sign_in(user_name, password, visit.client).await {
            Ok(signed_in) => signed_in,
            Err(e) => {
                let (status, text, after) = sign_in_failure(&e);
                tracing::info!(reason = ?e, "sign-in refused");
                // The name is kept when it names a user: an unknown one may be a password
                // typed into the wrong field, and no event holds a secret.
                let known = match &e {
                    SignInError::Refused(reason) => *reason != "unknown user or no password",
                    SignInError::Auth(_) => false,
                };
                self.audit(
                    "signin.failed",
                    known.then_some(user_name),
                    Some(format!("{e:?}")),
                )
                .await;
                return retry(status, text, after);
            }
        };
        let principal = &signed_in.principal;
        let Ok(user_id) = principal.user_id.parse::<u64>() else {
            return retry(StatusCode::INTERNAL_SERVER_ERROR, UNAVAILABLE, None);
        };
        let previous = match self.sessions.presented(&parts.headers) {
            crate::sessions::Presented::Id(id) => Some(id),
            _ => None,
        };
        let id = match self
            .sessions
            .start(user_id, vec!["pwd".to_owned()], previous, None)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a session");
                return retry(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, Some(1));
            }
        };
        // The password was checked against the hash read before it: a change since then must not
        // leave this session alive (the change ended the user's sessions before this one existed).
        let unchanged = self.auth.password_unchanged(&signed_in).await;
        match self.keep_or_end(&id, unchanged).await {
            Ok(true) => {}
            Ok(false) => return retry(StatusCode::UNAUTHORIZED, WRONG_PASSWORD, None),
            Err(_) => return retry(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, Some(1)),
        }
        self.audit("signin", Some(&principal.user_name), Some("amr pwd".into()))
            .await;
        let next = if self.needs_step_up(&target, visit.client) && self.has_factor(user_id).await {
            rd::step_up_url(&target)
        } else {
            target
        };
        see_other(&next, self.sessions.cookie(&id).as_slice())
    }

    /// The session `id` a sign-in just stored, kept when `check` (what the sign-in rests on,
    /// read again after the session exists) still holds, else ended: a disable, password change
    /// or factor reset that ended the user's sessions before this one was stored must not leave
    /// it alive (enabling the user again would revive it). `Ok(true)`: kept; otherwise ended,
    /// and the check's error, if any, is passed on.
    async fn keep_or_end<E: std::fmt::Debug>(
        &self,
        id: &str,
        check: Result<bool, E>,
    ) -> Result<bool, E> {
        match check {
            Ok(true) => Ok(true),
            failed => {
                if let Err(e) = &failed {
                    tracing::warn!(error = ?e, "cannot check a sign-in again once its session is stored");
                }
                if let Err(e) = self.sessions.end(id).await {
                    tracing::warn!(error = %e, "cannot end a session");
                }
                failed
            }
        }
    }

    /// Whether `target`'s route asks for a second factor.
    fn needs_step_up(&self, target: &str, client: IpAddr) -> bool {
        self.target_rule(target, client).access == Access::Mfa
    }

    /// The rule a browser's navigation (`GET`) from `client` to `target` meets.
    fn target_rule(&self, target: &str, client: IpAddr) -> &crate::config::AccessRule {
        let path = target.split('?').next().unwrap_or_default();
        self.rules
            .rule_for_request(&path::match_key(path), "GET", client)
    }

    async fn has_factor(&self, user_id: u64) -> bool {
        self.store
            .factors(user_id)
            .await
            .is_ok_and(|f| !f.is_empty())
    }

    /// The live session of the request and its principal, if any.
    async fn signed_in(&self, headers: &HeaderMap) -> Option<(Principal, Live)> {
        match self.auth.session(headers).await {
            Ok(found) => found,
            Err(e) => {
                if let AuthError::Unavailable(why) = &e {
                    tracing::warn!(error = %why, "cannot read a session");
                }
                None
            }
        }
    }

    async fn step_up_page(&self, parts: &Parts, visit: &Visit<'_>) -> Response<Body> {
        let target = rd::target(&api::query_value(parts.uri.query(), "rd").unwrap_or_default());
        let Some((principal, _)) = self.signed_in(&parts.headers).await else {
            return crate::body::redirect(
                StatusCode::FOUND,
                &rd::login_url(&rd::step_up_url(&target)),
            );
        };
        self.show_step_up(
            parts,
            visit.client,
            &principal,
            &target,
            (None, None),
            StatusCode::OK,
        )
        .await
    }

    /// The step-up page for `principal`, going on to `target`, with the factors the target's
    /// rule (for `client`) takes, and an `(error, notice)` to show.
    async fn show_step_up(
        &self,
        parts: &Parts,
        client: IpAddr,
        principal: &Principal,
        target: &str,
        (error, notice): (Option<&str>, Option<&str>),
        status: StatusCode,
    ) -> Response<Body> {
        let mut factors = self.factor_kinds(principal).await;
        // Only the factors the target's route takes (`factors`, SPEC §13): another one would
        // send the browser straight back here.
        let wanted = &self.target_rule(target, client).factors;
        if !wanted.is_empty() {
            factors.retain(|kind| wanted.iter().any(|f| satisfies(*kind, *f)));
        }
        let (token, set) = self.csrf(&parts.headers);
        let content = pages::step_up(&StepUpView {
            user: &principal.user_name,
            factors: &factors,
            recovery: wanted.is_empty()
                || wanted
                    .iter()
                    .any(|f| matches!(f, crate::config::Factor::Recovery)),
            csrf: &token,
            rd: target,
            error,
            notice,
        });
        let passkeys = factors.contains(&FactorKind::Webauthn);
        self.form_page(status, "Verify it's you", &content, set, passkeys)
    }

    async fn factor_kinds(&self, principal: &Principal) -> Vec<FactorKind> {
        let Ok(id) = principal.user_id.parse::<u64>() else {
            return Vec::new();
        };
        let mut kinds: Vec<FactorKind> = self
            .store
            .factors(id)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.kind)
            .collect();
        kinds.dedup();
        kinds
    }

    async fn step_up(&self, parts: &Parts, body: Incoming, visit: &Visit<'_>) -> Response<Body> {
        if let Err(refusal) = self.not_forged(parts, visit) {
            return self.refused(refusal);
        }
        let Some((principal, live)) = self.signed_in(&parts.headers).await else {
            return see_other(&rd::login_url(STEP_UP), &[]);
        };
        let form = match self.read_form(parts, body, visit).await {
            Ok(form) => form,
            Err(refusal) => return self.refused(refusal),
        };
        if matches!(form.get("action"), "passkey-options" | "passkey") {
            return self
                .step_up_with_passkey(parts, &form, &principal, &live, visit)
                .await;
        }
        let target = rd::target(form.get("rd"));
        let send = match form.get("action") {
            "send-sms" => Some((FactorKind::Sms, "We sent a code to your phone.")),
            "send-email" => Some((FactorKind::Email, "We sent a code to your email address.")),
            _ => None,
        };
        let outcome = match send {
            Some((kind, sent)) => match self.mfa.challenge(&principal, kind).await {
                Ok(()) => Ok(sent),
                Err(e) => Err(e),
            },
            None => match self.mfa.step_up(&principal, form.get("code")).await {
                Ok(method) => return self.stepped_up(&principal, &live, method, &target).await,
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(sent) => {
                self.show_step_up(
                    parts,
                    visit.client,
                    &principal,
                    &target,
                    (None, Some(sent)),
                    StatusCode::OK,
                )
                .await
            }
            Err(e) => {
                let (status, text, after) = step_up_failure(&e);
                if status.is_server_error() {
                    tracing::warn!(error = ?e, "step-up failure");
                }
                let mut response = self
                    .show_step_up(
                        parts,
                        visit.client,
                        &principal,
                        &target,
                        (Some(text), None),
                        status,
                    )
                    .await;
                if let Some(seconds) = after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
        }
    }

    /// The session after a second factor: its id rotated, its methods with the factor's.
    async fn stepped_up(
        &self,
        principal: &Principal,
        live: &Live,
        method: crate::auth::Method,
        target: &str,
    ) -> Response<Body> {
        let mut methods = live.session.methods.clone();
        if !methods.iter().any(|m| m == method.as_str()) {
            methods.push(method.as_str().to_owned());
        }
        let amr = methods.join(",");
        match self.sessions.rotate(live, methods).await {
            Ok(Some(id)) => {
                self.audit(
                    "signin.step_up",
                    Some(&principal.user_name),
                    Some(format!("amr {amr}")),
                )
                .await;
                see_other(target, self.sessions.cookie(&id).as_slice())
            }
            Ok(None) => see_other(&rd::login_url(target), &[]),
            Err(e) => {
                tracing::warn!(error = %e, "cannot rotate a session");
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Please try again",
                    &pages::message(UNAVAILABLE),
                    &[],
                )
            }
        }
    }

    async fn logout_page(&self, parts: &Parts) -> Response<Body> {
        let raw = api::query_value(parts.uri.query(), "rd").unwrap_or_default();
        let target = if raw.is_empty() {
            String::new()
        } else {
            rd::target(&raw)
        };
        let user = self
            .signed_in(&parts.headers)
            .await
            .map(|(p, _)| p.user_name);
        let (token, set) = self.csrf(&parts.headers);
        self.form_page(
            StatusCode::OK,
            "Sign out",
            &pages::logout(&token, &target, user.as_deref()),
            set,
            false,
        )
    }

    async fn logout(&self, parts: &Parts, body: Incoming, visit: &Visit<'_>) -> Response<Body> {
        let form = match self.read_form(parts, body, visit).await {
            Ok(form) => form,
            Err(refusal) => return self.refused(refusal),
        };
        let user = self
            .signed_in(&parts.headers)
            .await
            .map(|(p, _)| p.user_name);
        if let crate::sessions::Presented::Id(id) = self.sessions.presented(&parts.headers)
            && let Err(e) = self.sessions.end(id).await
        {
            tracing::warn!(error = %e, "cannot end a session");
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                &pages::message(UNAVAILABLE),
                &[],
            );
        }
        if let Some(name) = &user {
            self.audit("signin.logout", Some(name), None).await;
        }
        let clear = self.sessions.clearing_cookie();
        match form.get("rd") {
            "" => respond(
                StatusCode::OK,
                "Signed out",
                &pages::signed_out(),
                clear.as_slice(),
            ),
            raw => see_other(&rd::target(raw), clear.as_slice()),
        }
    }

    async fn session(&self, parts: &Parts, visit: &Visit<'_>) -> Response<Body> {
        let Some((principal, live)) = self.signed_in(&parts.headers).await else {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Not signed in",
                "This browser has no live session.",
            )
            .render(visit.path, visit.request_id);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        };
        let ends = time::OffsetDateTime::from_unix_timestamp(live.ends)
            .map(crate::clock::rfc3339)
            .unwrap_or_default();
        let doc = serde_json::json!({
            "user": principal.user_name,
            "methods": live.session.methods,
            "expiresAt": ends,
        });
        let mut response = crate::body::json(StatusCode::OK, &doc);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    async fn audit(&self, event: &str, user: Option<&str>, detail: Option<String>) {
        crate::audit::record(
            self.store.as_ref(),
            self.clock.as_ref(),
            event,
            user,
            detail,
        )
        .await;
    }
}

const UNAVAILABLE: &str = "Signing in is not possible right now. Try again in a moment.";
const WRONG_PASSWORD: &str = "The user name or password is not right.";

/// Status, text and `Retry-After` of a refused password.
fn sign_in_failure(e: &SignInError) -> (StatusCode, &'static str, Option<u64>) {
    const WRONG: &str = WRONG_PASSWORD;
    const WAIT: &str = "Too many attempts. Wait a few minutes, then try again.";
    match e {
        SignInError::Refused(_)
        | SignInError::Auth(
            AuthError::Invalid(_) | AuthError::Malformed(_) | AuthError::NewUsersLimited(_),
        ) => (StatusCode::UNAUTHORIZED, WRONG, None),
        SignInError::Auth(AuthError::Throttled(seconds)) => {
            (StatusCode::TOO_MANY_REQUESTS, WAIT, Some(*seconds))
        }
        SignInError::Auth(AuthError::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
            Some(crate::auth::BUSY_RETRY_AFTER),
        ),
        SignInError::Auth(AuthError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, Some(1))
        }
    }
}

/// Status, text and `Retry-After` of a refused step-up.
fn step_up_failure(e: &MfaError) -> (StatusCode, &'static str, Option<u64>) {
    match e {
        MfaError::WrongCode | MfaError::CodeExpired | MfaError::Invalid(_) => (
            StatusCode::UNAUTHORIZED,
            "That code is not right. Check it and try again.",
            None,
        ),
        MfaError::Locked(seconds) | MfaError::SendLimited(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts. Wait a few minutes, then try again.",
            Some(u64::try_from(*seconds).unwrap_or(1).max(1)),
        ),
        MfaError::NoFactor(_) => (
            StatusCode::FORBIDDEN,
            "Your account has no such second factor.",
            None,
        ),
        MfaError::Delivery(_) => (
            StatusCode::BAD_GATEWAY,
            "The code could not be sent. Try again in a moment.",
            None,
        ),
        MfaError::UnknownUser
        | MfaError::NoPendingEnrollment
        | MfaError::NoSuchPhone
        | MfaError::InvalidAccessToken
        | MfaError::NeedsMfa
        | MfaError::TicketGone
        | MfaError::TicketUnknown
        | MfaError::AlreadyEnrolled
        | MfaError::Store(_)
        | MfaError::Internal(_) => (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, None),
    }
}

/// Whether stepping up with a factor of `kind` gives what a route's `factors` entry `wanted`
/// names (a TOTP factor's form takes recovery codes too).
fn satisfies(kind: FactorKind, wanted: crate::config::Factor) -> bool {
    use crate::config::Factor;
    matches!(
        (kind, wanted),
        (FactorKind::Otp, Factor::Totp | Factor::Recovery)
            | (FactorKind::Sms, Factor::Sms)
            | (FactorKind::Email, Factor::Email)
            | (FactorKind::Webauthn, Factor::Webauthn)
    )
}

/// The origin (`scheme://host[:port]`) of a URL, lower-cased.
fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_auth_are_sign_in_endpoints_in_any_case() {
        assert_eq!(Endpoint::of("/auth/login"), Some(Endpoint::Login));
        assert_eq!(Endpoint::of("/AUTH/Login"), Some(Endpoint::Login));
        assert_eq!(Endpoint::of("/auth/login/"), Some(Endpoint::Login));
        assert_eq!(Endpoint::of("/auth/step-up"), Some(Endpoint::StepUp));
        assert_eq!(Endpoint::of("/auth/logout"), Some(Endpoint::Logout));
        assert_eq!(Endpoint::of("/auth/session"), Some(Endpoint::Session));
        assert_eq!(Endpoint::of("/auth/other"), Some(Endpoint::Unknown));
        assert_eq!(Endpoint::of("/auth"), Some(Endpoint::Unknown));
        assert_eq!(Endpoint::of("/auth/login/x"), Some(Endpoint::Provider));
        assert_eq!(Endpoint::of("/auth/login/x/y"), Some(Endpoint::Unknown));
        assert_eq!(
            Endpoint::of("/auth/Callback/corp"),
            Some(Endpoint::Callback)
        );
        assert_eq!(Endpoint::of("/auth/callback"), Some(Endpoint::Unknown));
        assert_eq!(
            Endpoint::of("/auth/backchannel-logout/corp/"),
            Some(Endpoint::BackchannelLogout)
        );
        assert_eq!(Endpoint::of("/authx"), None);
        assert_eq!(Endpoint::of("/app/auth/login"), None);
    }

    #[test]
    fn origins_are_scheme_and_authority() {
        assert_eq!(
            origin_of("https://Gate.Example:8443/x"),
            Some("https://gate.example:8443".into())
        );
        assert_eq!(origin_of("not a url"), None);
    }
}
