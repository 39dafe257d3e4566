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
use crate::api::enroll::{self, EnrollPage};
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
    /// gatehouse's own endpoints and the API families that are enabled (`claimed`: their
    /// prefixes).
    pub(super) fn classify(
        method: &Method,
        key: &'a str,
        claimed: &Claimed,
        ws: Option<&'a Ws>,
        manage: Option<&'a Manage>,
        nexus: Option<&'a Nexus>,
    ) -> Target<'a> {
        if !claimed.may_claim(key) {
            return Target::Proxied;
        }
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

/// The first two characters, folded ([`path::fold`]), of each path prefix that gatehouse's own
/// endpoints claim. Every claimant in [`Target::classify`] begins by matching its prefix in any
/// letter case ([`strip_prefix_ignore_case`]), which compares folded characters, so a key whose
/// first two characters fold to no prefix's is the application's: most requests are classified
/// by this one look instead of asking each claimant in turn.
pub(super) struct Claimed(Option<Vec<(char, char)>>);

impl Claimed {
    /// The prefixes of forward-auth, the sign-in pages, the JWK Set, the enrollment pages and the
    /// enabled API families.
    pub(super) fn new(ws: Option<&Ws>, manage: Option<&Manage>, nexus: Option<&Nexus>) -> Claimed {
        let families: Vec<String> = ws
            .map(Ws::prefixes)
            .into_iter()
            .chain(manage.map(Manage::prefixes))
            .flatten()
            .chain(nexus.map(Nexus::prefix))
            .collect();
        let fixed = [FORWARD_AUTH_PATH, signin::PREFIX, JWKS_PATH, enroll::PREFIX];
        Claimed::of(fixed.into_iter().chain(families.iter().map(String::as_str)))
    }

    fn of<'p>(prefixes: impl IntoIterator<Item = &'p str>) -> Claimed {
        let mut pairs = Vec::new();
        for prefix in prefixes {
            let mut chars = prefix.chars().map(path::fold);
            match (chars.next(), chars.next()) {
                (Some(a), Some(b)) => {
                    if !pairs.contains(&(a, b)) {
                        pairs.push((a, b));
                    }
                }
                // A prefix this short may claim any path.
                _ => return Claimed(None),
            }
        }
        Claimed(Some(pairs))
    }

    /// Whether one of gatehouse's own endpoints may claim `key`.
    fn may_claim(&self, key: &str) -> bool {
        let Some(pairs) = &self.0 else {
            return true;
        };
        let mut chars = key.chars().map(path::fold);
        match (chars.next(), chars.next()) {
            (Some(a), Some(b)) => pairs.contains(&(a, b)),
            _ => true,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIXES: [&str; 6] = [
        FORWARD_AUTH_PATH,
        signin::PREFIX,
        JWKS_PATH,
        enroll::PREFIX,
        "/manage",
        "/v1/",
    ];

    #[test]
    fn a_path_no_prefix_begins_like_is_the_applications_at_once() {
        let claimed = Claimed::of(PREFIXES);
        // A path as short as "/" is left to the claimants.
        for key in [
            "/public/x",
            "/",
            "/x",
            "/public/v1/",
            "/a",
            "/QX",
            "/enroll",
        ] {
            let expected = ["/", "/a", "/enroll"].contains(&key);
            assert_eq!(claimed.may_claim(key), expected, "{key}");
        }
    }

    #[test]
    fn any_spelling_that_may_match_a_prefix_is_still_asked() {
        let claimed = Claimed::of(PREFIXES);
        for key in [
            "/auth/login",
            "/AUTH/verify",
            "/Auth",
            "/.WELL-KNOWN/jwks.json",
            "/Enroll/abc",
            "/MANAGE/x",
            "/V1/me",
            "/v",
        ] {
            assert!(claimed.may_claim(key), "{key}");
        }
        // Characters that fold to a prefix's letters (the long s, the Kelvin sign).
        let claimed = Claimed::of(["/svc", "/k"]);
        assert!(claimed.may_claim("/\u{17f}vc"));
        assert!(claimed.may_claim("/\u{212a}"));
        assert!(!claimed.may_claim("/t"));
    }

    #[test]
    fn a_family_at_the_root_leaves_every_path_to_be_asked() {
        for short in ["", "/"] {
            let claimed = Claimed::of(["/auth", short]);
            assert!(claimed.may_claim("/public/x"), "{short:?}");
        }
    }

    #[test]
    fn the_prefilter_never_changes_a_classification() {
        let name = |target: Target<'_>| match target {
            Target::ForwardAuth => "forward-auth",
            Target::SignIn(_) => "sign-in",
            Target::Jwks => "jwks",
            Target::Enroll(_) => "enroll",
            Target::Ws(..) => "ws",
            Target::Manage(..) => "manage",
            Target::Nexus(..) => "nexus",
            Target::Proxied => "proxied",
        };
        let claimed = Claimed::new(None, None, None);
        for key in [
            "/auth/verify",
            "/auth/verify/x",
            "/AUTH/Login",
            "/auth",
            "/authx",
            "/.well-known/jwks.json",
            "/.well-known/other",
            "/enroll/abc",
            "/ENROLL/abc",
            "/public/",
            "/",
            "/a",
            "/\u{17f}",
        ] {
            assert_eq!(
                name(Target::classify(
                    &Method::GET,
                    key,
                    &claimed,
                    None,
                    None,
                    None
                )),
                name(Target::classify(
                    &Method::GET,
                    key,
                    &Claimed(None),
                    None,
                    None,
                    None
                )),
                "{key}"
            );
        }
    }
}
