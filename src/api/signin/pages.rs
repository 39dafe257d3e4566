//! The sign-in pages' HTML, in the look the enrollment page shares ([`crate::api::page`]).
//! Every value from outside is escaped here; the callers pass plain text.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::api::page::{Referrer, Script, escape, page_with_script, passkey_form};
use crate::body::Body;
use crate::store::{FactorKind, Passkey};

/// A form's hidden fields: the CSRF token and where to go afterwards.
fn hidden(csrf: &str, rd: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"rd\" value=\"{}\">",
        escape(csrf),
        escape(rd)
    )
}

/// An error announced to assistive technology as soon as the page shows it.
fn error(text: &str) -> String {
    format!(
        "<p id=\"error\" class=\"error\" role=\"alert\">{}</p>",
        escape(text)
    )
}

/// A notice announced politely.
fn notice(text: &str) -> String {
    format!(
        "<p id=\"notice\" class=\"ok\" role=\"status\">{}</p>",
        escape(text)
    )
}

/// What the sign-in page shows.
pub(super) struct LoginView<'a> {
    pub csrf: &'a str,
    pub rd: &'a str,
    /// The user name typed before, kept in its field.
    pub user: &'a str,
    pub error: Option<&'a str>,
    /// The external providers' buttons: id and label.
    pub providers: &'a [(String, String)],
    /// Whether the passkey button is offered.
    pub passkeys: bool,
}

/// The sign-in page.
pub(super) fn login(view: &LoginView<'_>) -> String {
    let LoginView {
        csrf,
        rd,
        user,
        error: problem,
        providers,
        passkeys,
    } = *view;
    let mut content = String::new();
    if let Some(text) = problem {
        content.push_str(&error(text));
    }
    content.push_str(&format!(
        "<form method=\"post\" action=\"/auth/login\">{hidden}\
         <label for=\"user\">User name</label>\
         <input id=\"user\" name=\"user\" class=\"text\" type=\"text\" autocomplete=\"username\" \
         autocapitalize=\"none\" spellcheck=\"false\" required{focus_user} value=\"{user}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" class=\"text\" type=\"password\" \
         autocomplete=\"current-password\" required{focus_password}>\
         <button id=\"sign-in\" type=\"submit\">Sign in</button></form>",
        hidden = hidden(csrf, rd),
        user = escape(user),
        focus_user = if user.is_empty() { " autofocus" } else { "" },
        focus_password = if user.is_empty() { "" } else { " autofocus" },
    ));
    if passkeys {
        content.push_str(&passkey_form(
            "/auth/login",
            &hidden(csrf, rd),
            "sign-in",
            "Sign in with a passkey",
            "",
        ));
    }
    if !providers.is_empty() {
        // Links, not forms: the page's CSP allows forms to post to itself only, and a form's
        // redirect to the provider would be blocked.
        content.push_str("<p class=\"or\">or sign in with</p>");
        for (id, name) in providers {
            let href = format!("/auth/login/{id}?rd={}", super::rd::encode(rd));
            content.push_str(&format!(
                "<a class=\"provider\" id=\"provider-{id}\" href=\"{href}\">{name}</a>",
                id = escape(id),
                href = escape(&href),
                name = escape(name),
            ));
        }
    }
    content
}

/// A refusal with a way back: the text, and a link that starts the sign-in again for `rd`.
pub(super) fn retry(text: &str, rd: &str) -> String {
    format!(
        "{}<p class=\"links\"><a id=\"try-again\" href=\"{}\">Try again</a></p>",
        error(text),
        escape(&super::rd::login_url(rd))
    )
}

/// What the step-up page offers for the user's factors.
pub(super) struct StepUpView<'a> {
    pub user: &'a str,
    /// The user's factors that the target takes.
    pub factors: &'a [FactorKind],
    /// Whether the target takes a recovery code.
    pub recovery: bool,
    pub csrf: &'a str,
    pub rd: &'a str,
    pub error: Option<&'a str>,
    pub notice: Option<&'a str>,
}

/// The step-up page.
pub(super) fn step_up(view: &StepUpView<'_>) -> String {
    let mut content = format!(
        "<p>Signed in as <strong>{}</strong>. This page needs a second step.</p>",
        escape(view.user)
    );
    if let Some(text) = view.error {
        content.push_str(&error(text));
    }
    if let Some(text) = view.notice {
        content.push_str(&notice(text));
    }
    if view.factors.is_empty() {
        content.push_str(
            "<p class=\"error\" role=\"alert\">Your account has no second factor set up. Ask \
             your administrator for a setup link.</p>",
        );
    } else {
        if view.factors.contains(&FactorKind::Webauthn) {
            content.push_str(&passkey_form(
                "/auth/step-up",
                &hidden(view.csrf, view.rd),
                "step-up",
                "Use a passkey",
                "",
            ));
        }
        let sent = view
            .factors
            .iter()
            .any(|k| matches!(k, FactorKind::Sms | FactorKind::Email));
        let what = if view.factors.contains(&FactorKind::Otp) {
            "Code from your authenticator app, a code we sent you, or a recovery code"
        } else if sent {
            "The code we sent you, or a recovery code"
        } else {
            "A recovery code"
        };
        let codes = sent || view.factors.contains(&FactorKind::Otp) || view.recovery;
        if codes {
            content.push_str(&format!(
                "<form method=\"post\" action=\"/auth/step-up\">{hidden}\
             <label for=\"code\">{what}</label>\
             <input id=\"code\" name=\"code\" type=\"text\" autocomplete=\"one-time-code\" \
             autocapitalize=\"none\" spellcheck=\"false\" maxlength=\"32\" required autofocus>\
             <button id=\"verify\" type=\"submit\">Verify</button></form>",
                hidden = hidden(view.csrf, view.rd),
            ));
        }
        for kind in view.factors {
            let (value, label) = match kind {
                FactorKind::Sms => ("send-sms", "Text me a code"),
                FactorKind::Email => ("send-email", "Email me a code"),
                FactorKind::Otp | FactorKind::Webauthn => continue,
            };
            content.push_str(&format!(
                "<form method=\"post\" action=\"/auth/step-up\">{hidden}\
                 <button id=\"{value}\" type=\"submit\" class=\"secondary\" name=\"action\" \
                 value=\"{value}\">{label}</button></form>",
                hidden = hidden(view.csrf, view.rd),
            ));
        }
    }
    content.push_str(
        "<p class=\"links\"><a id=\"manage-passkeys\" href=\"/auth/passkeys\">Passkeys</a> · \
         <a href=\"/auth/logout\">Sign out</a></p>",
    );
    content
}

/// The logout confirmation.
pub(super) fn logout(csrf: &str, rd: &str, user: Option<&str>) -> String {
    let who = match user {
        Some(name) => format!("<p>Signed in as <strong>{}</strong>.</p>", escape(name)),
        None => "<p>This browser has no session.</p>".to_owned(),
    };
    let manage = if user.is_some() {
        "<p class=\"links\"><a id=\"manage-passkeys\" href=\"/auth/passkeys\">Passkeys</a></p>"
    } else {
        ""
    };
    format!(
        "{who}<form method=\"post\" action=\"/auth/logout\">{hidden}\
         <button id=\"sign-out\" type=\"submit\">Sign out</button></form>{manage}",
        hidden = hidden(csrf, rd),
    )
}

/// The page after signing out.
pub(super) fn signed_out() -> String {
    "<p class=\"ok\" role=\"status\">You have signed out.</p>\
     <p class=\"links\"><a href=\"/auth/login\">Sign in again</a> · \
     <a id=\"manage-passkeys\" href=\"/auth/passkeys\">Passkeys</a></p>"
        .to_owned()
}

/// A page with one message, announced as an error.
pub(super) fn message(text: &str) -> String {
    format!(
        "{}<p class=\"links\"><a href=\"/auth/login\">Go to sign-in</a></p>",
        error(text)
    )
}

/// What the passkeys page shows.
pub(super) struct PasskeysView<'a> {
    pub user: &'a str,
    pub passkeys: &'a [Passkey],
    pub csrf: &'a str,
    pub error: Option<&'a str>,
    pub notice: Option<&'a str>,
    /// Whether passkeys can be added here (`server.public_url` names a host).
    pub enabled: bool,
    /// Recovery codes made with the user's first factor, shown once.
    pub recovery_codes: Option<&'a [String]>,
}

/// The passkeys page: the user's passkeys (rename, remove) and the button that adds one.
pub(super) fn passkeys(view: &PasskeysView<'_>) -> String {
    let mut content = format!(
        "<p>Signed in as <strong>{}</strong>.</p>",
        escape(view.user)
    );
    if let Some(text) = view.error {
        content.push_str(&error(text));
    }
    if let Some(text) = view.notice {
        content.push_str(&notice(text));
    }
    if let Some(codes) = view.recovery_codes {
        content.push_str(
            "<h2>Recovery codes</h2><p>Keep these codes somewhere safe. Each one works once, if \
             you lose your passkeys. They are shown only now.</p><ol id=\"recovery-codes\">",
        );
        for code in codes {
            content.push_str(&format!("<li><code>{}</code></li>", escape(code)));
        }
        content.push_str("</ol>");
    }
    content.push_str("<h2>Your passkeys</h2>");
    if view.passkeys.is_empty() {
        content.push_str("<p id=\"no-passkeys\">You have no passkey yet.</p>");
    } else {
        content.push_str("<ul id=\"passkeys\">");
        for (i, passkey) in view.passkeys.iter().enumerate() {
            let used = passkey.last_used.as_deref().map_or_else(
                || "never used".to_owned(),
                |t| format!("last used {}", day(t)),
            );
            let id = escape(&passkey.id);
            content.push_str(&format!(
                "<li class=\"passkey\" data-id=\"{id}\"><strong>{name}</strong> <small>added {created}, {used}</small>\
                 <form method=\"post\" action=\"/auth/passkeys\">{hidden}\
                 <input type=\"hidden\" name=\"action\" value=\"rename\">\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <label for=\"rename-{i}\">New name for {name}</label>\
                 <input id=\"rename-{i}\" name=\"name\" class=\"text\" type=\"text\" \
                 maxlength=\"64\" required value=\"{name}\">\
                 <button id=\"rename-button-{i}\" type=\"submit\" class=\"secondary\">Rename</button></form>\
                 <form method=\"post\" action=\"/auth/passkeys\">{hidden}\
                 <input type=\"hidden\" name=\"action\" value=\"remove\">\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <button id=\"remove-{i}\" type=\"submit\" class=\"secondary\">Remove {name}</button>\
                 </form></li>",
                name = escape(&passkey.name),
                created = day(&passkey.created),
                hidden = hidden(view.csrf, ""),
            ));
        }
        content.push_str("</ul>");
    }
    content.push_str("<h2>Add a passkey</h2>");
    if view.enabled {
        content.push_str("<noscript><p>Adding a passkey needs JavaScript.</p></noscript>");
        content.push_str(&passkey_form(
            "/auth/passkeys",
            &hidden(view.csrf, ""),
            "register",
            "Add a passkey",
            "<label for=\"passkey-name\">Name (for example, the device)</label>\
             <input id=\"passkey-name\" name=\"name\" class=\"text\" type=\"text\" \
             maxlength=\"64\" autocomplete=\"off\" value=\"Passkey\">",
        ));
    } else {
        content.push_str(
            "<p>Passkeys cannot be used here: the site's public address is not a host name.</p>",
        );
    }
    content.push_str(
        "<p class=\"links\"><a href=\"/auth/step-up\">Verify it's you</a> · \
         <a href=\"/auth/logout\">Sign out</a></p>",
    );
    content
}

/// The date of an RFC 3339 time.
fn day(time: &str) -> String {
    escape(time.get(..10).unwrap_or(time))
}

/// A complete page with its status and, when given, the cookies it sets.
pub(super) fn respond(
    status: StatusCode,
    title: &str,
    content: &str,
    cookies: &[HeaderValue],
) -> Response<Body> {
    respond_with(status, title, content, cookies, Script::None)
}

/// [`respond`], running `script`.
pub(super) fn respond_with(
    status: StatusCode,
    title: &str,
    content: &str,
    cookies: &[HeaderValue],
    script: Script,
) -> Response<Body> {
    // Same-origin, so that the browser names this site in the `Origin` of the form posts.
    let mut response = page_with_script(status, title, content, Referrer::SameOrigin, script);
    for cookie in cookies {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

/// A redirect after a form post (303, so the browser follows with GET).
pub(super) fn see_other(location: &str, cookies: &[HeaderValue]) -> Response<Body> {
    let mut response = crate::body::redirect(StatusCode::SEE_OTHER, location);
    for cookie in cookies {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_outside_are_escaped() {
        let html = login(&LoginView {
            csrf: "t\"",
            rd: "/x\"><script>",
            user: "<b>",
            error: Some("<i>"),
            providers: &[("corp".into(), "<em>Corp</em>".into())],
            passkeys: true,
        });
        assert!(!html.contains("<em>"));
        assert!(html.contains("href=\"/auth/login/corp?rd=%2Fx%22%3E%3Cscript%3E\""));
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>"));
        assert!(!html.contains("<i>"));
        assert!(html.contains("&lt;b&gt;"));
        let html = step_up(&StepUpView {
            user: "<u>",
            factors: &[FactorKind::Sms],
            recovery: true,
            csrf: "c",
            rd: "/",
            error: None,
            notice: None,
        });
        assert!(!html.contains("<u>"));
        assert!(html.contains("value=\"send-sms\""));
    }
}
