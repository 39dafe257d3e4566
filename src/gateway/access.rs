//! The decision proxied requests and forward-auth share: credentials → principal → the access
//! rule's verdict, and the identity headers that go with an allowed principal.

use std::net::IpAddr;

use http::{HeaderMap, Method};

use super::Gateway;
use super::rejection::Rejection;
use crate::api::signin::rd;
use crate::auth::policy::{self, Decision};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::config::{Access, AccessRule};
use crate::ratelimit::Key;

impl Gateway {
    /// Authenticates the request (except when every rule is public, where credentials are not
    /// even looked at), applies each of `rules` (the rules of every method the request may be
    /// acted on as), then takes a token from each rule's `rate_limit` bucket: the principal whose
    /// identity goes upstream, if any. A refused request takes no token.
    pub(super) async fn authorise(
        &self,
        rules: &[&AccessRule],
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Option<Principal>, Rejection> {
        let principal = decide(&self.auth, rules, self.require_app, headers, client).await?;
        self.limit(rules, principal.as_ref(), client)?;
        Ok(principal)
    }

    /// Takes a token from the bucket of `principal` (anonymous: of the client's address) of each
    /// rule with a `rate_limit`; over a limit, the refusal says when to retry, and the key's first
    /// refusal in a minute is audited (`rate_limited`).
    fn limit(
        &self,
        rules: &[&AccessRule],
        principal: Option<&Principal>,
        client: IpAddr,
    ) -> Result<(), Rejection> {
        let policy = self.policy.load();
        for rule in rules {
            let Some(limit) = policy.limits.of(rule) else {
                continue;
            };
            let key = match principal {
                Some(p) => Key::User(p.user_id.clone()),
                None => Key::client(client),
            };
            if let Err(limited) = limit.check(&key) {
                if limited.audit {
                    let (store, clock) = (self.store.clone(), self.clock.clone());
                    let user = principal.map(|p| p.user_name.clone());
                    let detail = format!("route {}: {key}", rule.path_prefix);
                    tokio::spawn(async move {
                        crate::audit::record(
                            store.as_ref(),
                            clock.as_ref(),
                            "rate_limited",
                            user.as_deref(),
                            Some(detail),
                        )
                        .await;
                    });
                }
                return Err(Rejection::RateLimited(limited.retry_after));
            }
        }
        Ok(())
    }

    /// `rejection` as a browser navigation gets it (SPEC §11): a `GET` or `HEAD` that accepts
    /// `text/html` and sends no `Authorization` is sent to sign in, or to step up, and comes back
    /// to `target` (path and query); anything else keeps the refusal.
    pub(super) fn for_navigation(
        &self,
        rejection: Rejection,
        method: &Method,
        headers: &HeaderMap,
        target: &str,
        as_401: bool,
    ) -> Rejection {
        if !is_navigation(method, headers) {
            return rejection;
        }
        let target = rd::target(target);
        match rejection {
            Rejection::Unauthenticated(_) => Rejection::Redirect {
                location: rd::login_url(&target),
                step_up: false,
                as_401,
            },
            Rejection::MfaRequired => Rejection::Redirect {
                location: rd::step_up_url(&target),
                step_up: true,
                as_401,
            },
            other => other,
        }
    }

    /// Writes the principal's identity headers, with an assertion, into `headers`.
    pub(super) fn set_identity(
        &self,
        headers: &mut HeaderMap,
        principal: &Principal,
    ) -> Result<(), Rejection> {
        self.identity
            .set(headers, principal, || {
                self.tokens.assertion(principal, &self.assertion_audience)
            })
            .map_err(|e| Rejection::Internal(format!("cannot sign the assertion: {e}")))
    }
}

/// The decision on a request to routes with `rules` (SPEC §5, §13): it must pass each. Also what
/// a long-lived exchange's credential is checked again with.
pub(super) async fn decide(
    auth: &Authenticator,
    rules: &[&AccessRule],
    require_app: bool,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Option<Principal>, Rejection> {
    let principal = if rules.iter().all(|r| r.access == Access::Public) {
        None
    } else {
        auth.authenticate_browser(headers, client)
            .await
            .map_err(|e| match e {
                AuthError::Malformed(why) => Rejection::BadCredentials(why),
                AuthError::Invalid(why) => Rejection::Unauthenticated(Some(why)),
                AuthError::Unavailable(why) => Rejection::AuthUnavailable(why),
                AuthError::Busy => Rejection::HashingBusy,
                AuthError::Throttled(seconds) => Rejection::TooManyFailures(seconds),
                AuthError::NewUsersLimited(seconds) => Rejection::NewUsersLimited(seconds),
            })?
    };
    for rule in rules {
        match policy::decide_rule(rule, principal.as_ref(), require_app) {
            Decision::Allow => {}
            Decision::Unauthenticated if principal.is_some() => {
                return Err(Rejection::NoApplicationToken);
            }
            Decision::Unauthenticated => return Err(Rejection::Unauthenticated(None)),
            Decision::MfaRequired => return Err(Rejection::MfaRequired),
            Decision::MissingScope(scope) => return Err(Rejection::MissingScope(scope)),
        }
    }
    Ok(principal)
}

/// Whether a request is a browser navigation: `GET` or `HEAD`, `Accept` naming `text/html`, and
/// no `Authorization` (an API client that sends credentials wants their verdict, not a page).
pub(super) fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && !headers.contains_key(http::header::AUTHORIZATION)
        && headers
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|v| accepts_html(v.as_bytes()))
}

/// Whether an `Accept` value names `text/html` (in any letter case).
fn accepts_html(value: &[u8]) -> bool {
    const HTML: &[u8] = b"text/html";
    value
        .windows(HTML.len())
        .any(|w| w.eq_ignore_ascii_case(HTML))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::{ACCEPT, AUTHORIZATION};

    #[test]
    fn only_html_gets_and_heads_without_authorization_are_navigations() {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(is_navigation(&Method::GET, &h));
        assert!(is_navigation(&Method::HEAD, &h));
        assert!(!is_navigation(&Method::POST, &h));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(!is_navigation(&Method::GET, &h));
        let mut json = HeaderMap::new();
        json.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!is_navigation(&Method::GET, &json));
        assert!(!is_navigation(&Method::GET, &HeaderMap::new()));
    }
}
