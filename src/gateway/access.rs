//! The decision proxied requests and forward-auth share: credentials → principal → the access
//! rule's verdict, and the identity headers that go with an allowed principal.

use std::net::IpAddr;

use http::HeaderMap;

use super::Gateway;
use super::rejection::Rejection;
use crate::auth::policy::{self, Decision};
use crate::auth::{AuthError, Principal};
use crate::config::{Access, AccessRule};

impl Gateway {
    /// Authenticates the request (except on public routes, where credentials are not even looked
    /// at) and applies `rule`: the principal whose identity goes upstream, if any.
    pub(super) async fn authorise(
        &self,
        rule: &AccessRule,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Option<Principal>, Rejection> {
        let principal = if rule.access == Access::Public {
            None
        } else {
            self.auth
                .authenticate(headers, client)
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
        match policy::decide_rule(rule, principal.as_ref(), self.require_app) {
            Decision::Allow => Ok(principal),
            Decision::Unauthenticated => Err(Rejection::Unauthenticated(None)),
            Decision::MfaRequired => Err(Rejection::MfaRequired),
            Decision::MissingScope(scope) => Err(Rejection::MissingScope(scope)),
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
