//! What a request is for: its target read once, then classified in one order (SPEC §2).
//!
//! A request whose path cannot be normalised, or that names its host ambiguously, is refused
//! before anything else looks at it. The rest is classified by the path's match key, first claim
//! wins: forward-auth, the sign-in pages (everything else under `/auth/`), the JWK Set, an enrollment page, then each enabled API family (WS, Manage,
//! Nexus); every other request is the application's and goes through its access rule.

use http::Method;
use http::header;
use http::request::Parts;

use super::rejection::Rejection;
use crate::api::enroll::EnrollPage;
use crate::api::manage::{self, Manage};
use crate::api::nexus::{self, Nexus};
use crate::api::signin;
use crate::api::table::{FORWARD_AUTH_PATH, JWKS_PATH};
use crate::api::ws::endpoints::{self as ws, Ws};
use crate::path::{self, eq_ignore_case, strip_prefix_ignore_case};

/// What a request's target names.
pub(super) enum Target<'a> {
    /// Forward-auth's endpoint, or Envoy's variant with the described path below it (SPEC §6).
    ForwardAuth,
    /// A sign-in page, or another path under `/auth/` (SPEC §11).
    SignIn(signin::Endpoint),
    /// The JWK Set of gatehouse's token keys (`GET` and `HEAD`; other methods are proxied).
    Jwks,
    /// An enrollment page, with its ticket id.
    Enroll(&'a str),
    Ws(&'a Ws, ws::Endpoint),
    Manage(&'a Manage, manage::Endpoint),
    Nexus(&'a Nexus, nexus::Endpoint),
    /// The application's, under the access rule for its path.
    Proxied,
}

impl<'a> Target<'a> {
    /// The target that `key` (a normalised path's [`path::match_key`]) names for `method`, among
    /// gatehouse's own endpoints and the API families that are enabled.
    pub(super) fn classify(
        method: &Method,
        key: &'a str,
        ws: Option<&'a Ws>,
        manage: Option<&'a Manage>,
        nexus: Option<&'a Nexus>,
    ) -> Target<'a> {
        if strip_prefix_ignore_case(key, FORWARD_AUTH_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            return Target::ForwardAuth;
        }
        if let Some(endpoint) = signin::Endpoint::of(key) {
            return Target::SignIn(endpoint);
        }
        if eq_ignore_case(key, JWKS_PATH) && matches!(*method, Method::GET | Method::HEAD) {
            return Target::Jwks;
        }
        if let Some(ticket_id) = EnrollPage::ticket_id(key) {
            return Target::Enroll(ticket_id);
        }
        if let Some(ws) = ws
            && let Some(endpoint) = ws.endpoint(key)
        {
            return Target::Ws(ws, endpoint);
        }
        if let Some(manage) = manage
            && let Some(endpoint) = manage.endpoint(key)
        {
            return Target::Manage(manage, endpoint);
        }
        if let Some(nexus) = nexus
            && let Some(endpoint) = nexus.endpoint(key)
        {
            return Target::Nexus(nexus, endpoint);
        }
        Target::Proxied
    }
}

/// The request's normalised path; or, for a request that cannot be read, why, with the path to
/// report it under (the request's own when it does not normalise).
pub(super) fn readable_path(parts: &Parts) -> Result<String, (String, Rejection)> {
    let path = match path::normalize(parts.uri.path()) {
        Ok(path) => path,
        Err(e) => return Err((parts.uri.path().to_owned(), Rejection::BadPath(e))),
    };
    if ambiguous_host(parts) {
        return Err((path, Rejection::AmbiguousHost));
    }
    Ok(path)
}

/// Whether the request names its host more than once, or in two ways that disagree (RFC 9112
/// §3.2, RFC 9113 §8.3.1): several `Host` fields, a `Host` that is not an authority, or one that
/// differs from an absolute-form target's or HTTP/2's `:authority`.
fn ambiguous_host(parts: &Parts) -> bool {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return false;
    };
    // An empty `Host` is allowed for a target without an authority (RFC 9112 §3.2).
    let malformed = !host.is_empty() && http::uri::Authority::try_from(host.as_bytes()).is_err();
    if hosts.next().is_some() || malformed {
        return true;
    }
    parts.uri.authority().is_some_and(|authority| {
        !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes())
    })
}
