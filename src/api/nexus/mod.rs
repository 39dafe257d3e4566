//! The Nexus family (seeds 000, 001 and their companions, SPEC §4.1): MFA enrollment and
//! verification under `apis.nexus.base_path`. Errors are problem documents.

pub mod domains;
mod error;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use self::domains::{self as domains_api, DomainPath};
use self::error::NexusError;
use crate::api;
use crate::api::problem::{Challenge, challenge};
use crate::api::table::{self, Operation};
use crate::auth::{self, AuthError, Authenticator, Credential, Method as AuthMethod, Principal};
use crate::body::Body;
use crate::domains::{DomainError, Domains};
use crate::mfa::service::{Mfa, MfaError};
use crate::mfa::verify::{Codes, Granted};
use crate::problem::Problem;
use crate::store::FactorKind;

/// The Nexus endpoints gatehouse serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    MfaEnrollment,
    VerifyEnrollmentOtp,
    VerifyOtp,
    MfaChallenge,
    RecoveryCodes,
    Domains(DomainPath),
}

/// The `/v1/me/…` endpoints and what they answer, below the family's base path.
const ENDPOINTS: [(Operation, Endpoint); 5] = [
    (
        Operation::new("POST", "/v1/me/mfa-enrollment"),
        Endpoint::MfaEnrollment,
    ),
    (
        Operation::new("POST", "/v1/me/verify-enrollment-otp"),
        Endpoint::VerifyEnrollmentOtp,
    ),
    (
        Operation::new("POST", "/v1/me/verify-otp"),
        Endpoint::VerifyOtp,
    ),
    (
        Operation::new("POST", "/v1/me/mfa-challenge"),
        Endpoint::MfaChallenge,
    ),
    (
        Operation::new("POST", "/v1/me/recovery-codes"),
        Endpoint::RecoveryCodes,
    ),
];

/// What every path of the family starts with, below its base path.
const VERSION_PREFIX: &str = "/v1/";

/// Every operation of the family (the `/v1/me/…` endpoints and the domains), below its base path.
pub fn operations() -> Vec<Operation> {
    let mut all = table::operations_of(&ENDPOINTS);
    all.extend(domains_api::OPERATIONS);
    all
}

/// The body of verify-enrollment-otp and verify-otp (seed 000): every field nullable.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerifyBody {
    pub(crate) oob: Option<String>,
    pub(crate) otp: Option<String>,
    pub(crate) access_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse<'a> {
    scope: &'a str,
    expires_in: i32,
    token_type: &'static str,
    access_token: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnrollmentResponse<'a> {
    ticket_id: &'a str,
    email_sent: bool,
    ticket_url: &'a str,
}

pub struct Nexus {
    base: String,
    auth: Arc<Authenticator>,
    mfa: Arc<Mfa>,
    domains: Arc<Domains>,
}

impl Nexus {
    pub fn new(
        base: &str,
        auth: Arc<Authenticator>,
        mfa: Arc<Mfa>,
        domains: Arc<Domains>,
    ) -> Nexus {
        Nexus {
            base: base.to_owned(),
            auth,
            mfa,
            domains,
        }
    }

    /// What every path of the family starts with (as [`Self::endpoint`] matches it first).
    pub fn prefix(&self) -> String {
        format!("{}{VERSION_PREFIX}", self.base)
    }

    /// The endpoint a normalised path names, if any.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let rest = crate::path::strip_prefix_ignore_case(path, &self.base)?;
        // Every proxied request is asked this: most are turned away by one comparison.
        crate::path::strip_prefix_ignore_case(rest, VERSION_PREFIX)?;
        ENDPOINTS
            .iter()
            .find(|(r, _)| crate::path::eq_ignore_case(rest, r.path))
            .map(|(_, e)| e.clone())
            .or_else(|| DomainPath::parse(rest).map(Endpoint::Domains))
    }

    /// Handles a request for `endpoint`; never fails (errors become problem documents).
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: Incoming,
        path: &str,
        request_id: &str,
    ) -> Response<Body> {
        let allowed = match &endpoint {
            Endpoint::Domains(domain) => domain.allows(&parts.method),
            Endpoint::MfaEnrollment
            | Endpoint::VerifyEnrollmentOtp
            | Endpoint::VerifyOtp
            | Endpoint::MfaChallenge
            | Endpoint::RecoveryCodes => {
                let template = table::template_of(&ENDPOINTS, &endpoint);
                table::check_method(&operations(), template, &parts.method)
            }
        };
        if let Err(allow) = allowed {
            let mut response = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("This endpoint answers {allow}."),
            )
            .render(path, request_id);
            if let Ok(v) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, v);
            }
            return response;
        }
        match self.dispatch(endpoint, parts, body).await {
            Ok(response) => response,
            Err(e) => {
                let (problem, retry_after) = e.problem();
                if let NexusError::Mfa(
                    MfaError::Internal(why) | MfaError::Store(why) | MfaError::Delivery(why),
                )
                | NexusError::Domain(
                    DomainError::Internal(why)
                    | DomainError::Store(why)
                    | DomainError::DnsFailed(why),
                ) = &e
                {
                    tracing::error!(error = %why, path, "nexus request failed");
                }
                let mut response = problem.render(path, request_id);
                if let Some(seconds) = retry_after
                    && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
                {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
                if problem.status == StatusCode::UNAUTHORIZED {
                    challenge(response.headers_mut(), Challenge::BearerOrBasic);
                }
                response
            }
        }
    }

    /// "Bearer and ApplicationToken, or Basic" (SPEC §4.1).
    async fn principal(&self, parts: &Parts) -> Result<Principal, NexusError> {
        let credential = auth::credential(&parts.headers).map_err(NexusError::Auth)?;
        let principal = match self
            .auth
            .authenticate(&parts.headers, api::client(parts))
            .await
        {
            Ok(principal) => principal.ok_or(NexusError::NoCredential)?,
            // "404 when the principal's user no longer exists" (SPEC §4.1): a token of ours,
            // with its ApplicationToken, whose user was deleted since it was issued.
            Err(AuthError::Invalid(why)) => {
                return Err(match self.auth.names_a_deleted_user(&parts.headers).await {
                    Ok(true) => NexusError::Mfa(MfaError::UnknownUser),
                    Ok(false) => NexusError::Auth(AuthError::Invalid(why)),
                    Err(e) => NexusError::Auth(e),
                });
            }
            Err(e) => return Err(NexusError::Auth(e)),
        };
        if matches!(credential, Some(Credential::Bearer(_)))
            && !principal.methods.contains(&AuthMethod::App)
        {
            return Err(NexusError::Auth(AuthError::Invalid(
                "a Bearer token needs an ApplicationToken beside it".into(),
            )));
        }
        Ok(principal)
    }

    async fn dispatch(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: Incoming,
    ) -> Result<Response<Body>, NexusError> {
        let principal = self.principal(parts).await?;
        let query = parts.uri.query();
        match endpoint {
            Endpoint::MfaEnrollment => {
                let kind = match crate::api::query_value(query, "factor") {
                    None => self.mfa.default_factor(),
                    Some(f) => FactorKind::parse(&f).ok_or_else(|| {
                        NexusError::Query(format!(
                            "`factor` must be otp, sms, email or webauthn, not `{f}`"
                        ))
                    })?,
                };
                let interactive = match crate::api::query_value(query, "isInteractive") {
                    None => false,
                    Some(v) if v.eq_ignore_ascii_case("true") => true,
                    Some(v) if v.eq_ignore_ascii_case("false") => false,
                    Some(v) => {
                        return Err(NexusError::Query(format!(
                            "`isInteractive` must be true or false, not `{v}`"
                        )));
                    }
                };
                let enrollment = self
                    .mfa
                    .enroll(&principal, kind, interactive)
                    .await
                    .map_err(NexusError::Mfa)?;
                Ok(api::json(
                    StatusCode::OK,
                    &EnrollmentResponse {
                        ticket_id: &enrollment.ticket_id,
                        email_sent: enrollment.email_sent,
                        ticket_url: &enrollment.ticket_url,
                    },
                ))
            }
            Endpoint::VerifyEnrollmentOtp | Endpoint::VerifyOtp => {
                let body: VerifyBody = api::read_json(parts, body)
                    .await
                    .map_err(NexusError::Body)?;
                let codes = Codes {
                    otp: body.otp,
                    oob: body.oob,
                    access_token: body.access_token,
                };
                let granted = if endpoint == Endpoint::VerifyOtp {
                    self.mfa.verify(&principal, &codes).await
                } else {
                    self.mfa.verify_enrollment(&principal, &codes).await
                }
                .map_err(NexusError::Mfa)?;
                Ok(token_response(&granted))
            }
            Endpoint::MfaChallenge => {
                let kind = match crate::api::query_value(query, "factor")
                    .as_deref()
                    .and_then(FactorKind::parse)
                {
                    Some(kind @ (FactorKind::Sms | FactorKind::Email)) => kind,
                    _ => return Err(NexusError::Query("`factor` must be sms or email".into())),
                };
                self.mfa
                    .challenge(&principal, kind)
                    .await
                    .map_err(NexusError::Mfa)?;
                Ok(api::json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({ "sent": true }),
                ))
            }
            Endpoint::Domains(domain) => self.domain(domain, &principal, parts, body).await,
            Endpoint::RecoveryCodes => {
                let codes = self
                    .mfa
                    .replace_recovery_codes(&principal)
                    .await
                    .map_err(NexusError::Mfa)?;
                Ok(api::json(
                    StatusCode::OK,
                    &serde_json::json!({ "recoveryCodes": codes }),
                ))
            }
        }
    }
}

impl Nexus {
    async fn domain(
        &self,
        path: DomainPath,
        principal: &Principal,
        parts: &Parts,
        body: Incoming,
    ) -> Result<Response<Body>, NexusError> {
        let ids = |org: &str, domain: Option<&str>| -> Result<(i64, i64), NexusError> {
            let org = domains_api::id(org, "organizationId").map_err(NexusError::Problem)?;
            let domain = match domain {
                Some(d) => domains_api::id(d, "domainId").map_err(NexusError::Problem)?,
                None => 0,
            };
            Ok((org, domain))
        };
        let d = &self.domains;
        match path {
            DomainPath::Collection { organization } => {
                let (org, _) = ids(&organization, None)?;
                if parts.method == Method::GET {
                    let list = d.list(principal, org).await.map_err(NexusError::Domain)?;
                    return Ok(domains_api::list_response(&list));
                }
                let body: domains_api::CreateBody = api::read_json(parts, body)
                    .await
                    .map_err(NexusError::Body)?;
                let name = body
                    .domain
                    .ok_or_else(|| NexusError::Query("`domain` is required".into()))?;
                let created = d
                    .create(principal, org, &name, body.authentication_method)
                    .await
                    .map_err(NexusError::Domain)?;
                Ok(domains_api::domain_response(StatusCode::CREATED, &created))
            }
            DomainPath::Item {
                organization,
                domain,
            } => {
                let (org, id) = ids(&organization, Some(&domain))?;
                if parts.method == Method::DELETE {
                    d.delete(principal, org, id)
                        .await
                        .map_err(NexusError::Domain)?;
                    return Ok(api::no_content());
                }
                let found = d
                    .read(principal, org, id)
                    .await
                    .map_err(NexusError::Domain)?;
                Ok(domains_api::domain_response(StatusCode::OK, &found))
            }
            DomainPath::GenerateCode {
                organization,
                domain,
            } => {
                let (org, id) = ids(&organization, Some(&domain))?;
                let updated = d
                    .generate_code(principal, org, id)
                    .await
                    .map_err(NexusError::Domain)?;
                Ok(domains_api::domain_response(StatusCode::CREATED, &updated))
            }
            DomainPath::Verify {
                organization,
                domain,
            } => {
                let (org, id) = ids(&organization, Some(&domain))?;
                let verified = d
                    .verify(principal, org, id)
                    .await
                    .map_err(NexusError::Domain)?;
                Ok(domains_api::domain_response(StatusCode::OK, &verified))
            }
        }
    }
}

fn token_response(granted: &Granted) -> Response<Body> {
    api::json(
        StatusCode::OK,
        &TokenResponse {
            scope: &granted.scope,
            expires_in: i32::try_from(granted.expires_in).unwrap_or(i32::MAX),
            token_type: "Bearer",
            access_token: &granted.access_token,
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::tests::json_like_bytes;
    use proptest::prelude::*;

    #[test]
    fn every_operation_is_under_the_version_prefix() {
        for operation in operations() {
            assert!(
                operation.path.starts_with(VERSION_PREFIX),
                "{}",
                operation.path
            );
        }
    }

    #[test]
    fn deeply_nested_verify_bodies_are_refused() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        for body in [
            "[".repeat(100_000),
            deep.clone(),
            format!(r#"{{"otp":"123456","ignored":{deep}}}"#),
            format!(r#"{{"otp":{}}}"#, "{\"a\":".repeat(100_000)),
        ] {
            assert!(api::decode_json::<VerifyBody>(body.as_bytes()).is_err());
        }
    }

    proptest! {
        #[test]
        fn verify_bodies_decode_or_fail_without_panicking(bytes in json_like_bytes()) {
            let _ = api::decode_json::<VerifyBody>(&bytes);
        }

        #[test]
        fn verify_body_fields_read_back_as_sent(
            otp in proptest::option::of("\\PC{0,12}"),
            oob in proptest::option::of("\\PC{0,12}"),
            access_token in proptest::option::of("[A-Za-z0-9._-]{0,40}"),
            extra in proptest::option::of("\\PC{0,12}"),
        ) {
            let mut body = serde_json::json!({ "otp": otp, "oob": oob, "accessToken": access_token });
            if let Some(extra) = extra {
                body["someFutureField"] = serde_json::json!([{ "x": extra }]);
            }
            let decoded: VerifyBody = api::decode_json(&serde_json::to_vec(&body).unwrap()).unwrap();
            prop_assert_eq!(decoded.otp, otp);
            prop_assert_eq!(decoded.oob, oob);
            prop_assert_eq!(decoded.access_token, access_token);
        }
    }
}
