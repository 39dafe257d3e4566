//! What a Nexus request can fail with, and the problem document each failure is answered with.

use http::StatusCode;

use super::domains::domain_problem;
use crate::api::BodyError;
use crate::api::problem::mfa_problem;
use crate::auth::{self, AuthError};
use crate::domains::DomainError;
use crate::mfa::service::MfaError;
use crate::problem::Problem;

/// Everything a Nexus request can fail with, before it is rendered.
#[derive(Debug)]
pub(super) enum NexusError {
    Auth(AuthError),
    NoCredential,
    Body(BodyError),
    Query(String),
    Mfa(MfaError),
    Domain(DomainError),
    Problem(Problem),
}

impl NexusError {
    /// The problem the error is answered with, and the seconds its `Retry-After` names.
    pub(super) fn problem(&self) -> (Problem, Option<i64>) {
        let p = |status, code, title, detail: &str| Problem::new(status, code, title, detail);
        match self {
            NexusError::Auth(AuthError::Malformed(why)) => (
                p(
                    StatusCode::BAD_REQUEST,
                    "invalid-credentials",
                    "Malformed credentials",
                    why,
                ),
                None,
            ),
            NexusError::Auth(AuthError::Invalid(_)) | NexusError::NoCredential => (
                p(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                    "Send Bearer and ApplicationToken, or Basic credentials.",
                ),
                None,
            ),
            NexusError::Auth(AuthError::Unavailable(_)) | NexusError::Mfa(MfaError::Store(_)) => (
                p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Store unavailable",
                    "Try again shortly; nothing was changed.",
                ),
                None,
            ),
            NexusError::Auth(AuthError::Busy) | NexusError::Body(BodyError::Busy) => (
                p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "Too busy",
                    "Gatehouse is at capacity; try again shortly.",
                ),
                Some(auth::BUSY_RETRY_AFTER as i64),
            ),
            NexusError::Auth(AuthError::Throttled(seconds)) => (
                p(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-failures",
                    "Too many failed sign-ins",
                    "Too many wrong passwords came from this address; try again later.",
                ),
                Some(i64::try_from(*seconds).unwrap_or(i64::MAX)),
            ),
            NexusError::Auth(AuthError::NewUsersLimited(seconds)) => (
                p(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-new-users",
                    "Too many new users",
                    "Too many accounts were created from this identity provider's tokens \
                     recently; yours will be created when you try again later.",
                ),
                Some(i64::try_from(*seconds).unwrap_or(i64::MAX)),
            ),
            NexusError::Body(BodyError::TimedOut) => (
                p(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "Request body too slow",
                    "The request body did not arrive in time.",
                ),
                None,
            ),
            NexusError::Body(BodyError::TooLarge(limit)) => (
                p(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "Request body too large",
                    &format!(
                        "Request bodies are limited to {}.",
                        crate::api::size_text(*limit)
                    ),
                ),
                None,
            ),
            NexusError::Body(BodyError::Unreadable) => (
                p(
                    StatusCode::BAD_REQUEST,
                    "invalid-request",
                    "Invalid request",
                    "The body could not be read.",
                ),
                None,
            ),
            NexusError::Body(BodyError::Invalid(why)) => (
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-request",
                    "Invalid request",
                    format!("The body is not the JSON expected: {why}"),
                ),
                None,
            ),
            NexusError::Query(why) => (
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-request",
                    "Invalid request",
                    why.clone(),
                ),
                None,
            ),
            NexusError::Mfa(e) => mfa_problem(e),
            NexusError::Domain(e) => (domain_problem(e), None),
            NexusError::Problem(p) => (p.clone(), None),
        }
    }
}
