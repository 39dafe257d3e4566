//! The one look of gatehouse's pages (the enrollment page and the sign-in pages, SPEC §11):
//! self-contained HTML with one inline stylesheet allowed by its hash in a strict
//! Content-Security-Policy, no external resources, never cached, never framed. Pages run no
//! script, except the one passkey script (SPEC §14) on the pages that offer passkeys, allowed by
//! a nonce new to each response.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::api::BodyError;
use crate::body::{Body, full};

pub const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
main{max-width:28rem;margin:0 auto;padding:1.5rem}\
section{background:#fff;border-radius:12px;padding:1.5rem;box-shadow:0 1px 3px #0002}\
h1{font-size:1.4rem;margin:0 0 1rem}\
h2{font-size:1.15rem;margin:1.5rem 0 .5rem}\
.qr{display:block;width:100%;max-width:16rem;height:auto;margin:1rem auto}\
code{font-size:1.05rem;word-break:break-all;background:#eef0f4;padding:.2rem .4rem;border-radius:4px}\
label{display:block;font-weight:600;margin-top:1rem}\
input{font-size:1.4rem;letter-spacing:.2em;width:100%;box-sizing:border-box;padding:.6rem;margin:.4rem 0 1rem;border:1px solid #778;border-radius:8px}\
input.text{font-size:1.1rem;letter-spacing:normal}\
a{color:#2451c7}\
.links{margin:1.25rem 0 0;text-align:center}\
button{font-size:1rem;width:100%;padding:.8rem;border:0;border-radius:8px;background:#2451c7;color:#fff;cursor:pointer}\
button.secondary{background:#e3e7f0;color:#1d2330;margin-top:.5rem}\
a.provider{display:block;box-sizing:border-box;width:100%;text-align:center;padding:.8rem;border-radius:8px;background:#e3e7f0;color:#1d2330;text-decoration:none;font-weight:600;margin-top:.5rem}\
.or{text-align:center;color:#4a5060;margin:1.25rem 0 .25rem}\
.error{background:#fde8e8;color:#8a1c1c;padding:.75rem;border-radius:8px}\
.ok{background:#e6f6ea;color:#1b5e2b;padding:.75rem;border-radius:8px}\
ol{columns:2 10rem;column-gap:2rem;font-family:monospace;font-size:1.05rem}";

/// The page's Content-Security-Policy: nothing but the one stylesheet, forms to itself.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            STYLE.as_bytes(),
        ));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        )
    })
}

/// The passkey script: turns the options gatehouse sends into a WebAuthn call and posts the
/// browser's answer with the page's form.
pub const PASSKEY_SCRIPT: &str = include_str!("passkey.js");

/// Whether a page runs the passkey script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    None,
    Passkeys,
}

/// A script nonce: 128 random bits.
fn nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
    Some(STANDARD.encode(bytes))
}

/// A form whose button runs a passkey ceremony of `kind` (`register`, `step-up`, `sign-in`)
/// with the passkey script, posting to `action` with `hidden` (escaped HTML) and `fields`
/// (HTML). The button stays hidden where the script does not run.
pub fn passkey_form(action: &str, hidden: &str, kind: &str, label: &str, fields: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{action}\" class=\"passkey\">{hidden}\
         <input type=\"hidden\" name=\"action\" value=\"passkey\">\
         <input type=\"hidden\" name=\"ceremony\" value=\"\">\
         <input type=\"hidden\" name=\"credential\" value=\"\">{fields}\
         <button id=\"passkey-{kind}\" type=\"button\" class=\"secondary\" data-passkey=\"{kind}\" \
         hidden>{label}</button><p class=\"passkey-status error\" role=\"alert\" hidden></p></form>",
        action = escape(action),
        kind = escape(kind),
        label = escape(label),
    )
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What a page's own address may tell in a `Referer` (and so in an `Origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referrer {
    /// Nothing, not even to this site: for a page whose address is a credential (an enrollment
    /// ticket). A browser then sends `Origin: null` with the page's form posts.
    None,
    /// Only to this site: for pages whose form posts are checked by their `Origin` (sign-in),
    /// which a browser sends as `null` under `no-referrer`.
    SameOrigin,
}

impl Referrer {
    fn policy(self) -> &'static str {
        match self {
            Referrer::None => "no-referrer",
            Referrer::SameOrigin => "same-origin",
        }
    }
}

/// A complete page: `title` as its heading, `content` (HTML, escaped by the caller) below; it
/// sends no referrer.
pub fn page(status: StatusCode, title: &str, content: &str) -> Response<Body> {
    page_with(status, title, content, Referrer::None)
}

/// A complete page with the given referrer policy.
pub fn page_with(
    status: StatusCode,
    title: &str,
    content: &str,
    referrer: Referrer,
) -> Response<Body> {
    page_with_script(status, title, content, referrer, Script::None)
}

/// A complete page with the given referrer policy and, when asked, the passkey script. Without
/// randomness for a nonce the page goes without the script (passkey buttons stay hidden).
pub fn page_with_script(
    status: StatusCode,
    title: &str,
    content: &str,
    referrer: Referrer,
    script: Script,
) -> Response<Body> {
    let policy = referrer.policy();
    let nonce = match script {
        Script::Passkeys => nonce(),
        Script::None => None,
    };
    let tag = match &nonce {
        Some(n) => format!("<script nonce=\"{n}\">{PASSKEY_SCRIPT}</script>"),
        None => String::new(),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"referrer\" content=\"{policy}\">\
         <title>{title} · Gatehouse</title><style>{STYLE}</style></head>\
         <body><main><section><h1>{title}</h1>{content}</section></main>{tag}</body></html>",
        title = escape(title)
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static(policy));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let policy = match &nonce {
        Some(n) => format!("{}; script-src 'nonce-{n}'; connect-src 'self'", csp()),
        None => csp().to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&policy) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

/// The page for a form that could not be read (every page's form shares it).
pub fn form_failure(e: &BodyError) -> Response<Body> {
    let too_large;
    let (status, title, text) = match e {
        BodyError::TooLarge(limit) => {
            too_large = format!("The form is larger than {}.", crate::api::size_text(*limit));
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                too_large.as_str(),
            )
        }
        BodyError::TimedOut => (
            StatusCode::REQUEST_TIMEOUT,
            "Request too slow",
            "The form did not arrive in time. Try again.",
        ),
        BodyError::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "The service is busy. Try again in a moment.",
        ),
        BodyError::Unreadable | BodyError::Invalid(_) => (
            StatusCode::BAD_REQUEST,
            "Request not readable",
            "The form could not be read.",
        ),
    };
    let mut response = page(status, title, &format!("<p class=\"error\">{text}</p>"));
    if matches!(e, BodyError::Busy) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::auth::BUSY_RETRY_AFTER),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn only_pages_that_ask_for_it_name_this_site_in_a_referrer() {
        for (referrer, policy) in [
            (Referrer::None, "no-referrer"),
            (Referrer::SameOrigin, "same-origin"),
        ] {
            let response = page_with(StatusCode::OK, "t", "", referrer);
            assert_eq!(response.headers()[header::REFERRER_POLICY], policy);
        }
        assert_eq!(
            page(StatusCode::OK, "t", "").headers()[header::REFERRER_POLICY],
            "no-referrer"
        );
    }

    #[test]
    fn only_a_passkey_page_runs_a_script_and_only_by_its_own_nonce() {
        let with = |script| page_with_script(StatusCode::OK, "t", "", Referrer::None, script);
        let plain = with(Script::None);
        assert!(
            !plain.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src")
        );
        let nonces: Vec<String> = (0..2)
            .map(|_| {
                let response = with(Script::Passkeys);
                let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let nonce = policy
                    .split("'nonce-")
                    .nth(1)
                    .and_then(|rest| rest.split('\'').next())
                    .unwrap()
                    .to_owned();
                assert!(policy.contains("connect-src 'self'"));
                assert!(!policy.contains("unsafe-inline"));
                nonce
            })
            .collect();
        assert_ne!(nonces[0], nonces[1]);
        assert!(nonces[0].len() >= 22);
    }

    #[test]
    fn policy_allows_no_script_and_pins_the_stylesheet() {
        let policy = csp();
        assert!(policy.starts_with("default-src 'none'"));
        assert!(!policy.contains("script-src"));
        assert!(policy.contains("style-src 'sha256-"));
        assert!(policy.contains("frame-ancestors 'none'"));
    }
}
