//! Passkeys on the sign-in pages (SPEC §14): signing in without a password at `/auth/login`,
//! stepping up at `/auth/step-up`, and the signed-in user's passkeys at `/auth/passkeys` (add,
//! rename, remove). Every post is a form post with this browser's CSRF token: the page's script
//! first posts `action=passkey-options` and gets the WebAuthn options as JSON, then posts the
//! browser's answer with `action=passkey`.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::pages::{self, PasskeysView, respond, respond_with, see_other};
use super::{Form, SignIn, UNAVAILABLE, Visit, rd};
use crate::api::page::Script;
use crate::auth::{Method, Principal};
use crate::body::Body;
use crate::mfa::passkeys::{Ceremony, Registrant};
use crate::mfa::service::MfaError;
use crate::problem::Problem;
use crate::sessions::Live;

/// Where the signed-in user's passkeys are listed.
pub(super) const PASSKEYS: &str = "/auth/passkeys";

/// The problem document answering a refused `passkey-options` post.
fn options_problem(e: &MfaError, instance: &str, request_id: &str) -> Response<Body> {
    let (status, code, title, detail, after) = match e {
        MfaError::Locked(seconds) | MfaError::SendLimited(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-attempts",
            "Too many attempts",
            "Too many attempts. Wait a few minutes, then try again.".to_owned(),
            Some(u64::try_from(*seconds).unwrap_or(1).max(1)),
        ),
        MfaError::NoFactor(_) => (
            StatusCode::FORBIDDEN,
            "no-passkey",
            "No passkey",
            "Your account has no passkey.".to_owned(),
            None,
        ),
        MfaError::AlreadyEnrolled | MfaError::NeedsMfa => (
            StatusCode::FORBIDDEN,
            "needs-second-factor",
            "Second factor needed",
            "Verify it's you with a second factor first, then add the passkey.".to_owned(),
            None,
        ),
        MfaError::TicketGone | MfaError::TicketUnknown => (
            StatusCode::GONE,
            "gone",
            "Gone",
            "This link or page has expired or was already used.".to_owned(),
            None,
        ),
        MfaError::Invalid(why) => (
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            format!("{}.", capitalised(why)),
            None,
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Unavailable",
            UNAVAILABLE.to_owned(),
            Some(1),
        ),
    };
    if status.is_server_error() {
        tracing::warn!(error = ?e, "cannot begin a passkey ceremony");
    }
    let mut response = Problem::new(status, code, title, detail).render(instance, request_id);
    no_store(&mut response);
    if let Some(seconds) = after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The answer to a `passkey-options` post: the ceremony id and the WebAuthn options, or the
/// problem.
pub(crate) fn options_response(
    begun: Result<Ceremony, MfaError>,
    instance: &str,
    request_id: &str,
) -> Response<Body> {
    match begun {
        Ok(ceremony) => {
            let mut doc = ceremony.options;
            if let Value::Object(map) = &mut doc {
                map.insert("ceremony".into(), Value::String(ceremony.id));
            }
            let mut response = crate::body::json(StatusCode::OK, &doc);
            no_store(&mut response);
            response
        }
        Err(e) => options_problem(&e, instance, request_id),
    }
}

/// What the page says when a passkey was refused.
pub(crate) fn refusal_text(e: &MfaError) -> (StatusCode, &'static str, Option<u64>) {
    match e {
        MfaError::Locked(seconds) | MfaError::SendLimited(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts. Wait a few minutes, then try again.",
            Some(u64::try_from(*seconds).unwrap_or(1).max(1)),
        ),
        MfaError::TicketGone => (
            StatusCode::BAD_REQUEST,
            "The passkey request expired or was already used. Try again.",
            None,
        ),
        MfaError::AlreadyEnrolled | MfaError::NeedsMfa => (
            StatusCode::FORBIDDEN,
            "Verify it's you with a second factor first.",
            None,
        ),
        MfaError::Store(_) | MfaError::Internal(_) | MfaError::Delivery(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, Some(1))
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            "That passkey was not accepted.",
            None,
        ),
    }
}

impl SignIn {
    /// The script of a page that offers passkeys: none where they cannot be used.
    fn script(&self) -> Script {
        if self.mfa.passkeys_enabled() {
            Script::Passkeys
        } else {
            Script::None
        }
    }

    /// Counts a ceremony begun from `visit`'s address; `false` when it has begun too many.
    fn may_begin(&self, visit: &Visit<'_>) -> bool {
        let now = self.clock.unix();
        self.starts.reserve(visit.client, now).is_ok() && self.all_starts.take(now)
    }

    fn too_many(&self, visit: &Visit<'_>) -> Response<Body> {
        options_problem(&MfaError::SendLimited(60), visit.path, visit.request_id)
    }

    /// `POST /auth/login` with `action=passkey-options` or `action=passkey`.
    pub(super) async fn login_with_passkey(
        &self,
        parts: &Parts,
        form: &Form,
        visit: &Visit<'_>,
    ) -> Response<Body> {
        let target = rd::target(form.get("rd"));
        if form.get("action") == "passkey-options" {
            if !self.may_begin(visit) {
                return self.too_many(visit);
            }
            self.sessions.purge_when_due(self.clock.unix()).await;
            return options_response(self.mfa.begin_sign_in().await, visit.path, visit.request_id);
        }
        let retry = |status: StatusCode, text: &str, after: Option<u64>| {
            let (token, set) = self.csrf(&parts.headers);
            let mut response = respond_with(
                status,
                "Sign in",
                &pages::login(&pages::LoginView {
                    csrf: &token,
                    rd: &target,
                    user: "",
                    error: Some(text),
                    providers: &self.provider_buttons(),
                    passkeys: self.mfa.passkeys_enabled(),
                }),
                set.as_slice(),
                self.script(),
            );
            if let Some(seconds) = after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        };
        let (user, passkey_id) = match self
            .mfa
            .finish_sign_in(form.get("ceremony"), form.get("credential"))
            .await
        {
            Ok(found) => found,
            Err((name, e)) => {
                tracing::info!(reason = ?e, "passkey sign-in refused");
                self.audit(
                    "signin.failed",
                    name.as_deref(),
                    Some(format!("passkey: {e:?}")),
                )
                .await;
                let (status, text, after) = refusal_text(&e);
                return retry(status, text, after);
            }
        };
        // The same admission as every credential (a disabled user is refused).
        let methods = vec![Method::Hwk, Method::User];
        if let Err(e) = Principal::admit(&user, user.scopes.clone(), methods) {
            tracing::info!(reason = ?e, "passkey sign-in refused");
            self.audit(
                "signin.failed",
                Some(&user.user_name),
                Some("passkey: the user may not sign in".into()),
            )
            .await;
            return retry(
                StatusCode::UNAUTHORIZED,
                "That passkey was not accepted.",
                None,
            );
        }
        let previous = match self.sessions.presented(&parts.headers) {
            crate::sessions::Presented::Id(id) => Some(id),
            _ => None,
        };
        let amr = vec![
            Method::Hwk.as_str().to_owned(),
            Method::User.as_str().to_owned(),
        ];
        let id = match self.sessions.start(user.id, amr, previous, None).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a session");
                return retry(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, Some(1));
            }
        };
        // Disabling the user or resetting their factors ends their sessions; one stored after
        // that end, by a sign-in that read the user and passkey before it, is ended here.
        let still = self.still_signs_in(user.id, &passkey_id).await;
        match self.keep_or_end(&id, still).await {
            Ok(true) => {}
            Ok(false) => {
                return retry(
                    StatusCode::UNAUTHORIZED,
                    "That passkey was not accepted.",
                    None,
                );
            }
            Err(_) => return retry(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, Some(1)),
        }
        self.audit("signin", Some(&user.user_name), Some("amr hwk,user".into()))
            .await;
        see_other(&target, self.sessions.cookie(&id).as_slice())
    }

    /// Whether the user may still sign in and still holds the passkey `passkey_id`.
    async fn still_signs_in(
        &self,
        user_id: u64,
        passkey_id: &str,
    ) -> Result<bool, crate::store::StoreError> {
        let valid = self
            .store
            .user_by_id(user_id)
            .await?
            .is_some_and(|u| u.is_valid);
        Ok(valid
            && self
                .store
                .passkey(passkey_id)
                .await?
                .is_some_and(|p| p.user_id == user_id))
    }

    /// `POST /auth/step-up` with `action=passkey-options` or `action=passkey`.
    pub(super) async fn step_up_with_passkey(
        &self,
        parts: &Parts,
        form: &Form,
        principal: &Principal,
        live: &Live,
        visit: &Visit<'_>,
    ) -> Response<Body> {
        let target = rd::target(form.get("rd"));
        if form.get("action") == "passkey-options" {
            if !self.may_begin(visit) {
                return self.too_many(visit);
            }
            return options_response(
                self.mfa.begin_step_up(principal).await,
                visit.path,
                visit.request_id,
            );
        }
        match self
            .mfa
            .finish_step_up(principal, form.get("ceremony"), form.get("credential"))
            .await
        {
            Ok(method) => self.stepped_up(principal, live, method, &target).await,
            Err(e) => {
                let (status, text, after) = refusal_text(&e);
                if status.is_server_error() {
                    tracing::warn!(error = ?e, "passkey step-up failure");
                }
                let mut response = self
                    .show_step_up(
                        parts,
                        visit.client,
                        principal,
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

    /// `GET /auth/passkeys`: the signed-in user's passkeys, and a button to add one.
    pub(super) async fn passkeys_page(&self, parts: &Parts) -> Response<Body> {
        let Some((principal, _)) = self.signed_in(&parts.headers).await else {
            return crate::body::redirect(StatusCode::FOUND, &rd::login_url(PASSKEYS));
        };
        self.show_passkeys(parts, &principal, None, None, StatusCode::OK)
            .await
    }

    pub(super) async fn show_passkeys(
        &self,
        parts: &Parts,
        principal: &Principal,
        error: Option<&str>,
        notice: Option<&str>,
        status: StatusCode,
    ) -> Response<Body> {
        let passkeys = match self.mfa.passkeys(principal).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = ?e, "cannot list passkeys");
                return respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Please try again",
                    &pages::message(UNAVAILABLE),
                    &[],
                );
            }
        };
        let (token, set) = self.csrf(&parts.headers);
        let content = pages::passkeys(&PasskeysView {
            user: &principal.user_name,
            passkeys: &passkeys,
            csrf: &token,
            error,
            notice,
            enabled: self.mfa.passkeys_enabled(),
            recovery_codes: None,
        });
        respond_with(
            status,
            "Passkeys",
            &content,
            set.as_slice(),
            Script::Passkeys,
        )
    }

    /// `POST /auth/passkeys`: add (`passkey-options`, then `passkey`), `rename` or `remove`.
    pub(super) async fn passkeys_post(
        &self,
        parts: &Parts,
        body: Incoming,
        visit: &Visit<'_>,
    ) -> Response<Body> {
        if let Err(refusal) = self.not_forged(parts, visit) {
            return self.refused(refusal);
        }
        let Some((principal, _)) = self.signed_in(&parts.headers).await else {
            return see_other(&rd::login_url(PASSKEYS), &[]);
        };
        let form = match self.read_form(parts, body, visit).await {
            Ok(form) => form,
            Err(refusal) => return self.refused(refusal),
        };
        let outcome = match form.get("action") {
            "passkey-options" => {
                if !self.may_begin(visit) {
                    return self.too_many(visit);
                }
                let begun = self
                    .mfa
                    .begin_registration(Registrant::Session(&principal), form.get("name"))
                    .await;
                return options_response(begun, visit.path, visit.request_id);
            }
            "passkey" => match self
                .mfa
                .finish_registration(
                    Registrant::Session(&principal),
                    form.get("ceremony"),
                    form.get("credential"),
                )
                .await
            {
                Ok(confirmed) => {
                    if let Some(codes) = confirmed.recovery_codes {
                        return self.first_passkey(parts, &principal, codes).await;
                    }
                    Ok("Your passkey was added.")
                }
                Err(e) => Err(e),
            },
            "rename" => self
                .mfa
                .rename_passkey(&principal, form.get("id"), form.get("name"))
                .await
                .map(|()| "The passkey was renamed."),
            "remove" => self
                .mfa
                .remove_passkey(&principal, form.get("id"))
                .await
                .map(|()| "The passkey was removed."),
            _ => Err(MfaError::Invalid("unknown action".into())),
        };
        match outcome {
            Ok(notice) => {
                self.show_passkeys(parts, &principal, None, Some(notice), StatusCode::OK)
                    .await
            }
            Err(e) => {
                let (status, text) = match &e {
                    MfaError::NeedsMfa => (
                        StatusCode::FORBIDDEN,
                        "This is your last second factor: verify it's you with it first \
                         (Verify it's you), then remove it."
                            .to_owned(),
                    ),
                    MfaError::NoFactor(_) => (
                        StatusCode::NOT_FOUND,
                        "You have no such passkey.".to_owned(),
                    ),
                    MfaError::Invalid(why) => {
                        (StatusCode::BAD_REQUEST, format!("{}.", capitalised(why)))
                    }
                    other => {
                        let (status, text, _) = refusal_text(other);
                        (status, text.to_owned())
                    }
                };
                if status.is_server_error() {
                    tracing::warn!(error = ?e, "passkey page failure");
                }
                self.show_passkeys(parts, &principal, Some(&text), None, status)
                    .await
            }
        }
    }

    /// The page after a user's first factor, a passkey: the recovery codes, shown once.
    async fn first_passkey(
        &self,
        parts: &Parts,
        principal: &Principal,
        codes: Vec<String>,
    ) -> Response<Body> {
        let passkeys = self.mfa.passkeys(principal).await.unwrap_or_default();
        let (token, set) = self.csrf(&parts.headers);
        let content = pages::passkeys(&PasskeysView {
            user: &principal.user_name,
            passkeys: &passkeys,
            csrf: &token,
            error: None,
            notice: Some("Your passkey was added."),
            enabled: self.mfa.passkeys_enabled(),
            recovery_codes: Some(&codes),
        });
        respond_with(
            StatusCode::OK,
            "Passkeys",
            &content,
            set.as_slice(),
            Script::Passkeys,
        )
    }
}
