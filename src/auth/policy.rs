//! Access rules applied to a principal: the one place that decides whether a request may pass.

use super::{Method, Principal};
use crate::config::{Access, AccessRule, Factor};

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
    decide_rule(
        &AccessRule {
            scopes: scopes.to_vec(),
            ..AccessRule::new("/", access)
        },
        principal,
        require_app,
    )
}

/// The verdict of a matched [`AccessRule`] for `principal`: `access` (with `factors`: only those
/// second factors satisfy `mfa`), every one of `scopes`, and at least one of `any_scopes`.
pub fn decide_rule(
    rule: &AccessRule,
    principal: Option<&Principal>,
    require_app: bool,
) -> Decision {
    if rule.access == Access::Public {
        return Decision::Allow;
    }
    let Some(principal) = principal else {
        return Decision::Unauthenticated;
    };
    if require_app && !principal.methods.contains(&Method::App) {
        return Decision::Unauthenticated;
    }
    if rule.access == Access::Mfa && !has_factor(principal, &rule.factors) {
        return Decision::MfaRequired;
    }
    if let Some(missing) = rule.scopes.iter().find(|s| !principal.scopes.contains(s)) {
        return Decision::MissingScope(missing.clone());
    }
    if !rule.any_scopes.is_empty() && !rule.any_scopes.iter().any(|s| principal.scopes.contains(s))
    {
        // Read in "This route needs the scope `a` or `b`."
        return Decision::MissingScope(rule.any_scopes.join("` or `"));
    }
    Decision::Allow
}

/// Whether the principal authenticated with a second factor `factors` accepts (any second factor
/// when it names none).
fn has_factor(principal: &Principal, factors: &[Factor]) -> bool {
    if factors.is_empty() {
        return principal.methods.iter().any(|m| m.is_second_factor());
    }
    factors
        .iter()
        .any(|f| principal.methods.contains(&f.method()))
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

    #[test]
    fn one_of_the_any_scopes_is_enough() {
        let rule = AccessRule {
            any_scopes: vec!["a".into(), "b".into()],
            ..AccessRule::new("/", Access::Authenticated)
        };
        let p = principal(&[Method::Pwd], &["b"]);
        assert_eq!(decide_rule(&rule, Some(&p), false), Decision::Allow);
        let none = principal(&[Method::Pwd], &["c"]);
        assert_eq!(
            decide_rule(&rule, Some(&none), false),
            Decision::MissingScope("a` or `b".into())
        );
    }

    #[test]
    fn only_the_named_factors_satisfy_mfa() {
        let rule = AccessRule {
            factors: vec![Factor::Totp, Factor::Idp],
            ..AccessRule::new("/", Access::Mfa)
        };
        for (methods, decision) in [
            (&[Method::Pwd, Method::Otp][..], Decision::Allow),
            (&[Method::Mfa][..], Decision::Allow),
            (&[Method::Pwd, Method::Sms][..], Decision::MfaRequired),
            (&[Method::Pwd, Method::Email][..], Decision::MfaRequired),
            (&[Method::Pwd][..], Decision::MfaRequired),
        ] {
            let p = principal(methods, &[]);
            assert_eq!(decide_rule(&rule, Some(&p), false), decision, "{methods:?}");
        }
        let webauthn = AccessRule {
            factors: vec![Factor::Webauthn],
            ..AccessRule::new("/", Access::Mfa)
        };
        let otp = principal(&[Method::Pwd, Method::Otp], &[]);
        assert_eq!(
            decide_rule(&webauthn, Some(&otp), false),
            Decision::MfaRequired
        );
    }
}
