//! What the API families share when they refuse a request: the problem each MFA outcome is
//! answered with, and the challenges a 401 names.

use http::header::{self, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::mfa::service::MfaError;
use crate::problem::Problem;

/// The problem an MFA outcome is answered with, and the seconds its `Retry-After` names. Nexus
/// answers with it, and the enrollment page shows it when nothing more specific fits.
pub fn mfa_problem(e: &MfaError) -> (Problem, Option<i64>) {
    let (status, code, title) = mfa_kind(e);
    let problem = Problem::new(status, code, title, mfa_detail(e));
    (problem, mfa_retry_after(e))
}

/// The status, stable code and title of each MFA outcome.
fn mfa_kind(e: &MfaError) -> (StatusCode, &'static str, &'static str) {
    match e {
        MfaError::UnknownUser => (StatusCode::NOT_FOUND, "user-not-found", "User not found"),
        MfaError::Invalid(_) => (
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
        ),
        MfaError::AlreadyEnrolled => (
            StatusCode::BAD_REQUEST,
            "factor-already-enrolled",
            "A factor is already enrolled",
        ),
        MfaError::NoPendingEnrollment => (
            StatusCode::NOT_FOUND,
            "no-pending-enrollment",
            "No pending enrollment",
        ),
        MfaError::NoFactor(_) => (StatusCode::NOT_FOUND, "no-factor", "No such factor"),
        MfaError::TicketUnknown => (
            StatusCode::NOT_FOUND,
            "ticket-not-found",
            "Enrollment not found",
        ),
        MfaError::TicketGone => (
            StatusCode::GONE,
            "ticket-gone",
            "Enrollment link used or expired",
        ),
        MfaError::WrongCode | MfaError::CodeExpired => {
            (StatusCode::FORBIDDEN, "invalid-code", "Invalid code")
        }
        MfaError::Locked(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "locked",
            "Too many failed attempts",
        ),
        MfaError::SendLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-codes",
            "Too many codes sent",
        ),
        MfaError::NoSuchPhone => (
            StatusCode::BAD_REQUEST,
            "no-such-phone",
            "Unknown user or number",
        ),
        MfaError::InvalidAccessToken => (
            StatusCode::BAD_REQUEST,
            "invalid-access-token",
            "Invalid access token",
        ),
        MfaError::NeedsMfa => (
            StatusCode::FORBIDDEN,
            "mfa-required",
            "Second factor required",
        ),
        MfaError::Delivery(_) => (
            StatusCode::BAD_GATEWAY,
            "delivery-failed",
            "Delivery failed",
        ),
        MfaError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Store unavailable",
        ),
        MfaError::Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        ),
    }
}

/// What each MFA outcome tells the client; the reasons of failures stay in the log.
fn mfa_detail(e: &MfaError) -> String {
    match e {
        MfaError::UnknownUser => "The credential's user no longer exists.".into(),
        MfaError::Invalid(why) => why.clone(),
        MfaError::AlreadyEnrolled => {
            "Adding another factor needs a credential that already includes a second factor.".into()
        }
        MfaError::NoPendingEnrollment => {
            "There is no unexpired enrollment to confirm; start one with mfa-enrollment.".into()
        }
        MfaError::NoFactor(why) => (*why).into(),
        MfaError::TicketUnknown => "This enrollment link is not valid.".into(),
        MfaError::TicketGone => {
            "This enrollment link has been used or has expired; ask for a new one.".into()
        }
        MfaError::WrongCode | MfaError::CodeExpired => {
            "The code is wrong, expired or already used.".into()
        }
        MfaError::Locked(retry) => {
            format!("Verification is locked; try again in {retry} seconds.")
        }
        MfaError::SendLimited(_) => "Wait before asking for another code.".into(),
        MfaError::NoSuchPhone => "No user of that name has that phone number.".into(),
        MfaError::InvalidAccessToken => {
            "`accessToken` must be a valid access token of the same user.".into()
        }
        MfaError::NeedsMfa => "This needs a credential that includes a second factor.".into(),
        MfaError::Delivery(_) => "The code could not be sent; try again.".into(),
        MfaError::Store(_) => "Try again shortly.".into(),
        MfaError::Internal(_) => "The request failed.".into(),
    }
}

/// How long an MFA outcome asks the client to wait, in seconds: only the limits do.
fn mfa_retry_after(e: &MfaError) -> Option<i64> {
    match e {
        MfaError::Locked(retry) | MfaError::SendLimited(retry) => Some(*retry),
        MfaError::UnknownUser
        | MfaError::Invalid(_)
        | MfaError::AlreadyEnrolled
        | MfaError::NoPendingEnrollment
        | MfaError::NoFactor(_)
        | MfaError::TicketUnknown
        | MfaError::TicketGone
        | MfaError::WrongCode
        | MfaError::CodeExpired
        | MfaError::NoSuchPhone
        | MfaError::InvalidAccessToken
        | MfaError::NeedsMfa
        | MfaError::Delivery(_)
        | MfaError::Store(_)
        | MfaError::Internal(_) => None,
    }
}

/// Whom a 401 invites to authenticate, and so which schemes its `WWW-Authenticate` names
/// (RFC 9110 §11.6.1, SPEC §2). <https://www.rfc-editor.org/rfc/rfc9110#section-11.6.1>
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// Users of the public listeners: a Bearer token, or Basic credentials.
    BearerOrBasic,
    /// The Manage family's service accounts: Basic credentials only.
    Basic,
    /// The admin API: the admin token, as a Bearer token of its own realm.
    Admin,
}

impl Challenge {
    /// The challenges, one per scheme, in the order they are offered.
    pub fn schemes(self) -> &'static [&'static str] {
        match self {
            Challenge::BearerOrBasic => &[
                "Bearer realm=\"gatehouse\"",
                "Basic realm=\"gatehouse\", charset=\"UTF-8\"",
            ],
            Challenge::Basic => &["Basic realm=\"gatehouse\", charset=\"UTF-8\""],
            Challenge::Admin => &["Bearer realm=\"gatehouse-admin\""],
        }
    }
}

/// Names the schemes a 401 accepts: one `WWW-Authenticate` header for each of `challenge`'s.
pub fn challenge(headers: &mut HeaderMap, challenge: Challenge) {
    for scheme in challenge.schemes() {
        headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_carry_their_wait_and_codes_share_one_problem() {
        let (locked, retry) = mfa_problem(&MfaError::Locked(30));
        assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            locked.detail,
            "Verification is locked; try again in 30 seconds."
        );
        assert_eq!(retry, Some(30));
        assert_eq!(
            mfa_problem(&MfaError::WrongCode),
            mfa_problem(&MfaError::CodeExpired)
        );
        assert_eq!(mfa_problem(&MfaError::Store("x".into())).1, None);
    }

    #[test]
    fn each_scheme_is_a_header_of_its_own_in_order() {
        let mut headers = HeaderMap::new();
        challenge(&mut headers, Challenge::BearerOrBasic);
        let values: Vec<_> = headers.get_all(header::WWW_AUTHENTICATE).iter().collect();
        assert_eq!(
            values,
            [
                "Bearer realm=\"gatehouse\"",
                "Basic realm=\"gatehouse\", charset=\"UTF-8\""
            ]
        );
    }
}
