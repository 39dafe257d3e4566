//! Access rules applied to a principal: the one place that decides whether a request may pass.

use super::{Method, Principal};
use crate::config::{Access, AccessRule};

/// The outcome of applying an access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward (with identity when there is a principal and the route is not public).
    Allow,
    /// 401: no (valid) credential on a route that needs one.
    Unauthenticated,
    /// 403: authenticated, but without the second factor the route requires.
    MfaRequired,
    /// 403: authenticated, but missing a scope the route requires.
    MissingScope(String),
}

/// The rule's verdict for `principal` (`None` when the request carries no credential).
/// With `require_app`, only a principal that also presented a valid ApplicationToken counts.
pub fn decide(
    access: Access,
    scopes: &[String],
    principal: Option<&Principal>,
    require_app: bool,
) -> Decision {
    if access == Access::Public {
        return Decision::Allow;
    }
    let Some(principal) = principal else {
        return Decision::Unauthenticated;
    };
    if require_app && !principal.methods.contains(&Method::App) {
        return Decision::Unauthenticated;
    }
    if access == Access::Mfa && !principal.methods.iter().any(|m| m.is_second_factor()) {
        return Decision::MfaRequired;
    }
    match scopes.iter().find(|s| !principal.scopes.contains(s)) {
        Some(missing) => Decision::MissingScope(missing.clone()),
        None => Decision::Allow,
    }
}

/// [`decide`] for a matched [`AccessRule`].
pub fn decide_rule(
    rule: &AccessRule,
    principal: Option<&Principal>,
    require_app: bool,
) -> Decision {
    decide(rule.access, &rule.scopes, principal, require_app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(methods: &[Method], scopes: &[&str]) -> Principal {
        Principal {
            user_id: "1".into(),
            user_name: "ada".into(),
            email: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            organizations: vec![],
            methods: methods.to_vec(),
        }
    }

    #[test]
    fn public_routes_pass_without_credentials() {
        assert_eq!(decide(Access::Public, &[], None, false), Decision::Allow);
    }

    #[test]
    fn protected_routes_need_a_principal() {
        assert_eq!(
            decide(Access::Authenticated, &[], None, false),
            Decision::Unauthenticated
        );
        assert_eq!(
            decide(Access::Mfa, &[], None, false),
            Decision::Unauthenticated
        );
    }

    #[test]
    fn mfa_routes_need_a_second_factor() {
        let pwd = principal(&[Method::Pwd], &[]);
        assert_eq!(
            decide(Access::Mfa, &[], Some(&pwd), false),
            Decision::MfaRequired
        );
        let app = principal(&[Method::Pwd, Method::App], &[]);
        assert_eq!(
            decide(Access::Mfa, &[], Some(&app), false),
            Decision::MfaRequired
        );
        let otp = principal(&[Method::Pwd, Method::Otp], &[]);
        assert_eq!(decide(Access::Mfa, &[], Some(&otp), false), Decision::Allow);
    }

    #[test]
    fn required_application_token_must_have_been_presented() {
        let pwd = principal(&[Method::Pwd], &[]);
        assert_eq!(
            decide(Access::Authenticated, &[], Some(&pwd), true),
            Decision::Unauthenticated
        );
        let app = principal(&[Method::Pwd, Method::App], &[]);
        assert_eq!(
            decide(Access::Authenticated, &[], Some(&app), true),
            Decision::Allow
        );
    }

    #[test]
    fn every_required_scope_must_be_held() {
        let p = principal(&[Method::Pwd], &["read"]);
        let need = vec!["read".to_string(), "admin".to_string()];
        assert_eq!(
            decide(Access::Authenticated, &need, Some(&p), false),
            Decision::MissingScope("admin".into())
        );
    }
}
