//! `GET|POST /enroll/{ticketId}`: the enrollment page `ticketUrl` points at (SPEC §4.1).
//!
//! Self-contained HTML: no external fonts or images, one inline stylesheet allowed by its hash in
//! a strict Content-Security-Policy. Works without JavaScript: the code is submitted with a plain
//! form post. A passkey ticket (`factor=webauthn`, SPEC §14) is the exception: its page runs the
//! passkey script, allowed by a nonce. The ticket id in the URL is the only credential, so the
//! page is never cached and never sends a referrer.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use qrcode::QrCode;
use qrcode::render::svg;

use crate::api;
use crate::api::page::{
    Referrer, Script, escape, form_failure, page, page_with_script, passkey_form,
};
use crate::api::problem::mfa_problem;
use crate::api::signin::passkeys::options_response;
use crate::api::table::{self, Operation};
use crate::auth::throttle::Throttle;
use crate::body::Body;
use crate::mfa::enroll::TicketView;
use crate::mfa::passkeys::{CEREMONY_TTL, Registrant};
use crate::mfa::service::{Mfa, MfaError};
use crate::store::FactorKind;

/// What every enrollment page's path starts with.
pub const PREFIX: &str = "/enroll/";
const PAGE: &str = "/enroll/{ticketId}";

/// Passkey ceremonies one client address may begin on enrollment pages per
/// [`CEREMONY_TTL`]: each is a record in the store, and the replica's window of ceremonies is
/// shared with every sign-in, so one link is no way to fill it.
pub const PASSKEY_STARTS_PER_ADDRESS: u32 = 30;

/// What the page answers: the page itself, and its forms' posts.
pub const OPERATIONS: [Operation; 3] = [
    Operation::new("GET", PAGE),
    Operation::new("HEAD", PAGE),
    Operation::new("POST", PAGE),
];

fn qr_svg(uri: &str) -> String {
    match QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<svg::Color>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build()
            .replacen(
                "<svg ",
                "<svg class=\"qr\" role=\"img\" aria-label=\"QR code for your authenticator app\" ",
                1,
            )
            .replace("<?xml version=\"1.0\" standalone=\"yes\"?>", ""),
        Err(_) => String::new(),
    }
}

fn code_form(action: &str, digits: usize) -> String {
    format!(
        "<form method=\"post\" action=\"{action}\">\
         <label for=\"code\">Enter the {digits}-digit code</label>\
         <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" pattern=\"[0-9]*\" \
         autocomplete=\"one-time-code\" maxlength=\"8\" required autofocus>\
         <button type=\"submit\">Verify</button></form>"
    )
}

/// The enrollment page's handler.
pub struct EnrollPage {
    mfa: Arc<Mfa>,
    digits: usize,
    /// Passkey ceremonies begun per client address.
    passkey_starts: Throttle,
}

impl EnrollPage {
    pub fn new(mfa: Arc<Mfa>, digits: u8) -> EnrollPage {
        EnrollPage {
            mfa,
            digits: usize::from(digits),
            passkey_starts: Throttle::new(
                PASSKEY_STARTS_PER_ADDRESS,
                std::time::Duration::from_secs(CEREMONY_TTL.unsigned_abs()),
            ),
        }
    }

    /// The ticket id when `path` is an enrollment page path: every `/enroll/{segment}` is, so a
    /// malformed id is answered as an unknown ticket rather than forwarded to the application.
    pub fn ticket_id(path: &str) -> Option<&str> {
        // Most paths are not: the prefix decides before anything is split.
        crate::path::strip_prefix_ignore_case(path, PREFIX)?;
        let [id] = table::captures(PAGE, path)?[..] else {
            return None;
        };
        Some(id).filter(|id| !id.is_empty())
    }

    /// Whether `id` can be a ticket id at all: 256 bits in URL-safe base64, as tickets are
    /// issued. Nothing else (a WS opt-in registration's guessable number above all) is served.
    fn plausible(id: &str) -> bool {
        crate::mfa::codes::is_ticket_id(id)
    }

    /// Answers the page: shows it, takes its forms' posts, or refuses another method.
    pub async fn handle(
        &self,
        parts: &Parts,
        body: Incoming,
        ticket_id: &str,
        client: IpAddr,
    ) -> Response<Body> {
        if !Self::plausible(ticket_id)
            && matches!(parts.method, Method::GET | Method::HEAD | Method::POST)
        {
            return gone_or_unknown(&MfaError::TicketUnknown);
        }
        let action = format!("{PREFIX}{ticket_id}");
        match parts.method {
            Method::GET | Method::HEAD => self.show(ticket_id, &action, None).await,
            Method::POST => self.post(parts, body, ticket_id, &action, client).await,
            _ => {
                let mut response = page(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Not allowed",
                    "<p>Open the link in a browser.</p>",
                );
                if let Err(allow) = table::check_method(&OPERATIONS, PAGE, &parts.method)
                    && let Ok(v) = HeaderValue::from_str(&allow)
                {
                    response.headers_mut().insert(header::ALLOW, v);
                }
                response
            }
        }
    }

    /// Takes a form post; a failure that is nothing the visitor did is logged here.
    async fn post(
        &self,
        parts: &Parts,
        body: Incoming,
        ticket_id: &str,
        action: &str,
        client: IpAddr,
    ) -> Response<Body> {
        // A form for a ticket that cannot be used is not worth reading (SPEC §10).
        if let Err(e) = self.mfa.check_ticket(ticket_id).await {
            return gone_or_unknown(&e);
        }
        let form = match api::read_body(parts, body).await {
            Ok(bytes) => bytes,
            Err(e) => return form_failure(&e),
        };
        match self.submit(ticket_id, action, &form, client).await {
            Ok(response) => response,
            Err(e) => {
                if Shown::of(&e) == Shown::Problem {
                    tracing::warn!(error = ?e, "enrollment page failure");
                }
                self.failure(ticket_id, action, &e).await
            }
        }
    }

    /// Sends a code, or confirms the one entered, as the form asks.
    async fn submit(
        &self,
        ticket_id: &str,
        action: &str,
        form: &[u8],
        client: IpAddr,
    ) -> Result<Response<Body>, MfaError> {
        let field = |name: &str| {
            form_urlencoded::parse(form)
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        match field("action").as_deref() {
            Some("passkey-options") => {
                if let Err(throttled) = self.passkey_starts.reserve(client, self.mfa.now()) {
                    let seconds = i64::try_from(throttled.0).unwrap_or(CEREMONY_TTL);
                    return Ok(options_response(
                        Err(MfaError::SendLimited(seconds)),
                        action,
                        "",
                    ));
                }
                let begun = self
                    .mfa
                    .begin_registration(
                        Registrant::Ticket(ticket_id),
                        &field("name").unwrap_or_default(),
                    )
                    .await;
                return Ok(options_response(begun, action, ""));
            }
            Some("passkey") => {
                let finished = self
                    .mfa
                    .finish_registration(
                        Registrant::Ticket(ticket_id),
                        &field("ceremony").unwrap_or_default(),
                        &field("credential").unwrap_or_default(),
                    )
                    .await;
                return match finished {
                    Ok(confirmed) => Ok(all_set(confirmed.recovery_codes)),
                    Err(MfaError::Invalid(why)) => {
                        let text = format!("The passkey was not registered: {why}. Try again.");
                        let mut response =
                            self.show(ticket_id, action, Some(("error", &text))).await;
                        if response.status() == StatusCode::OK {
                            *response.status_mut() = StatusCode::BAD_REQUEST;
                        }
                        Ok(response)
                    }
                    Err(e) => Err(e),
                };
            }
            _ => {}
        }
        if field("action").as_deref() == Some("send") {
            self.mfa.send_enrollment_code(ticket_id).await?;
            return Ok(self
                .show(ticket_id, action, Some(("ok", "We sent you a code.")))
                .await);
        }
        let code = field("code").unwrap_or_default();
        let confirmed = self.mfa.confirm_ticket(ticket_id, &code).await?;
        Ok(all_set(confirmed.recovery_codes))
    }

    async fn show(
        &self,
        ticket_id: &str,
        action: &str,
        notice: Option<(&str, &str)>,
    ) -> Response<Body> {
        match self.mfa.ticket_view(ticket_id).await {
            Ok(view) => {
                let script = if view.kind == FactorKind::Webauthn {
                    Script::Passkeys
                } else {
                    Script::None
                };
                page_with_script(
                    StatusCode::OK,
                    "Set up two-step verification",
                    &self.body(&view, action, notice),
                    Referrer::None,
                    script,
                )
            }
            Err(e) => gone_or_unknown(&e),
        }
    }

    fn body(&self, view: &TicketView, action: &str, notice: Option<(&str, &str)>) -> String {
        let mut content = String::new();
        if let Some((class, text)) = notice {
            // An error is announced at once (the sign-in pages' `#error` does the same); other
            // notices politely.
            let (id, role) = if class == "error" {
                ("error", "alert")
            } else {
                ("notice", "status")
            };
            content.push_str(&format!(
                "<p id=\"{id}\" class=\"{class}\" role=\"{role}\">{}</p>",
                escape(text)
            ));
        }
        match (view.kind, &view.secret) {
            (FactorKind::Webauthn, _) => {
                content.push_str(&format!(
                    "<p>Create a passkey for <strong>{}</strong>: your device keeps it, and \
                     unlocks it with your fingerprint, face, PIN or security key.</p>\
                     <noscript><p class=\"error\">Creating a passkey needs JavaScript.</p></noscript>",
                    escape(&view.account),
                ));
                content.push_str(&passkey_form(
                    action,
                    "",
                    "register",
                    "Create a passkey",
                    "<label for=\"passkey-name\">Name (for example, the device)</label>\
                     <input id=\"passkey-name\" name=\"name\" class=\"text\" type=\"text\" \
                     maxlength=\"64\" autocomplete=\"off\" value=\"Passkey\">",
                ));
            }
            (FactorKind::Otp, Some((secret, uri))) => {
                content.push_str(&format!(
                    "<p>Scan this code with your authenticator app for <strong>{}</strong>.</p>{}\
                     <p>Can't scan? Enter this key instead:<br><code id=\"secret\">{}</code></p>",
                    escape(&view.account),
                    qr_svg(uri),
                    escape(secret)
                ));
                content.push_str(&code_form(action, self.digits));
            }
            _ => {
                let to = view.destination.clone().unwrap_or_default();
                content.push_str(&format!(
                    "<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"action\" value=\"send\">\
                     <button type=\"submit\" class=\"secondary\">Send a code to {}</button></form>",
                    escape(&to)
                ));
                content.push_str(&code_form(action, 6));
            }
        }
        content
    }

    /// The page of an MFA outcome of a form post.
    async fn failure(&self, ticket_id: &str, action: &str, e: &MfaError) -> Response<Body> {
        match Shown::of(e) {
            Shown::Retry => {
                let mut response = self
                    .show(
                        ticket_id,
                        action,
                        Some(("error", "That code is not right. Check it and try again.")),
                    )
                    .await;
                if response.status() == StatusCode::OK {
                    *response.status_mut() = StatusCode::FORBIDDEN;
                }
                response
            }
            Shown::Wait(retry) => {
                let minutes = (retry + 59) / 60;
                let mut response = page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Please wait",
                    &format!(
                        "<p class=\"error\">Too many attempts. Try again in about {minutes} min.</p>"
                    ),
                );
                if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
                response
            }
            Shown::Unusable => gone_or_unknown(e),
            Shown::Problem => problem_page(e),
        }
    }
}

/// How the page shows an MFA outcome of a form post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The form again, with a note that the code was not right.
    Retry,
    /// A page asking the visitor to wait this many seconds.
    Wait(i64),
    /// The page of a link that cannot be used.
    Unusable,
    /// The problem's status, title and detail: nothing the visitor can put right.
    Problem,
}

impl Shown {
    fn of(e: &MfaError) -> Shown {
        match e {
            MfaError::WrongCode => Shown::Retry,
            MfaError::Locked(retry) | MfaError::SendLimited(retry) => Shown::Wait(*retry),
            MfaError::TicketGone | MfaError::TicketUnknown | MfaError::AlreadyEnrolled => {
                Shown::Unusable
            }
            MfaError::UnknownUser
            | MfaError::Invalid(_)
            | MfaError::NoPendingEnrollment
            | MfaError::NoFactor(_)
            | MfaError::CodeExpired
            | MfaError::NoSuchPhone
            | MfaError::InvalidAccessToken
            | MfaError::NeedsMfa
            | MfaError::Delivery(_)
            | MfaError::Store(_)
            | MfaError::Internal(_) => Shown::Problem,
        }
    }
}

/// The page of a confirmed enrollment, with the recovery codes when this one made them.
fn all_set(recovery_codes: Option<Vec<String>>) -> Response<Body> {
    let mut content = String::from(
        "<p class=\"ok\">Two-step verification is set up. You can close this page.</p>",
    );
    if let Some(codes) = recovery_codes {
        content.push_str(
            "<h2>Recovery codes</h2><p>Keep these somewhere safe. Each works once if you lose \
             your device. They are shown only now.</p><ol id=\"recovery-codes\">",
        );
        for c in codes {
            content.push_str(&format!("<li>{}</li>", escape(&c)));
        }
        content.push_str("</ol>");
    }
    page(StatusCode::OK, "You're all set", &content)
}

/// A page with the status, title and detail of an MFA outcome's problem.
fn problem_page(e: &MfaError) -> Response<Body> {
    let (problem, _) = mfa_problem(e);
    page(
        problem.status,
        problem.title,
        &format!("<p class=\"error\">{}</p>", escape(&problem.detail)),
    )
}

fn gone_or_unknown(e: &MfaError) -> Response<Body> {
    match e {
        MfaError::TicketGone => page(
            StatusCode::GONE,
            "This link has expired",
            "<p class=\"error\">This setup link was already used or has expired. Ask for a new one.</p>",
        ),
        MfaError::TicketUnknown => page(
            StatusCode::NOT_FOUND,
            "Link not found",
            "<p class=\"error\">This setup link is not valid. Check that you copied all of it.</p>",
        ),
        MfaError::AlreadyEnrolled => page(
            StatusCode::GONE,
            "This link can no longer be used",
            "<p class=\"error\">Two-step verification was set up on this account after this link \
             was made. To add another method, sign in with your second factor and ask for a new \
             link.</p>",
        ),
        MfaError::UnknownUser
        | MfaError::Invalid(_)
        | MfaError::NoPendingEnrollment
        | MfaError::NoFactor(_)
        | MfaError::WrongCode
        | MfaError::CodeExpired
        | MfaError::NoSuchPhone
        | MfaError::Locked(_)
        | MfaError::SendLimited(_)
        | MfaError::InvalidAccessToken
        | MfaError::NeedsMfa
        | MfaError::Delivery(_)
        | MfaError::Store(_)
        | MfaError::Internal(_) => problem_page(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_segment_under_enroll_is_the_page() {
        assert_eq!(
            EnrollPage::ticket_id("/enroll/abc_DEF-1"),
            Some("abc_DEF-1")
        );
        assert_eq!(EnrollPage::ticket_id("/enroll/%C2%84"), Some("%C2%84"));
        assert!(EnrollPage::plausible(&format!(
            "abc_DEF-1{}",
            "A".repeat(34)
        )));
        assert!(!EnrollPage::plausible("abc_DEF-1"));
        assert!(!EnrollPage::plausible("ws-optin-123456"));
        assert!(!EnrollPage::plausible("%C2%84"));
        assert!(!EnrollPage::plausible(&"A".repeat(65)));
        assert_eq!(EnrollPage::ticket_id("/enroll/"), None);
        assert_eq!(EnrollPage::ticket_id("/enroll/a/b"), None);
        assert_eq!(EnrollPage::ticket_id("/enrollx"), None);
    }
}
