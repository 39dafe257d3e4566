//! The Manage family (seed 004 and its companion), under `apis.manage.base_path`:
//! `POST /v2/user/send/otp` texts a code to a user's registered number and
//! `POST /v2/user/validate/otp` checks it. Callers are service accounts (Basic, scope
//! `manage.otp.verify`) acting for their own users; the optional `clientIp` header names the end
//! user's address for the per-IP limit and the audit log. Every answer is the envelope of
//! [`envelope`], in JSON or protobuf.

pub mod envelope;
pub mod proto;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::request::Parts;
use http::{HeaderName, Response};
use hyper::body::Incoming;
use prost::Message;
use serde::de::DeserializeOwned;

use self::envelope::{Encoding, ErrorCode, Failure, Shape};
use crate::api::table::{self, Operation};
use crate::api::{self, BodyError};
use crate::auth::{self, AuthError, Authenticator, Credential, Principal};
use crate::body::Body;
use crate::clock::Clock;
use crate::config::ManageApi;
use crate::mfa::phone_login::Caller;
use crate::mfa::service::{Mfa, MfaError};
use crate::store::{Store, StoreError};

/// The scope a service account needs.
pub const SCOPE: &str = "manage.otp.verify";

const CLIENT_IP: HeaderName = HeaderName::from_static("clientip");

/// Longest `userName` and `otp` accepted, in characters as the OpenAPI document counts them
/// (longer ones are not names or codes).
const MAX_USER_NAME: usize = 256;
const MAX_OTP: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    SendOtp,
    ValidateOtp,
}

/// The endpoints and what they answer, below the family's base path.
const ENDPOINTS: [(Operation, Endpoint); 2] = [
    (
        Operation::new("POST", "/v2/user/send/otp"),
        Endpoint::SendOtp,
    ),
    (
        Operation::new("POST", "/v2/user/validate/otp"),
        Endpoint::ValidateOtp,
    ),
];

/// Every operation of the family, below its base path.
pub fn operations() -> Vec<Operation> {
    table::operations_of(&ENDPOINTS)
}

impl Endpoint {
    fn template(self) -> &'static str {
        table::template_of(&ENDPOINTS, &self)
    }
}

pub struct Manage {
    base: String,
    client_ip_limit: u32,
    client_ip_window: Duration,
    auth: Arc<Authenticator>,
    mfa: Arc<Mfa>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

/// The fields both endpoints read, whichever encoding they came in.
pub(crate) struct Fields {
    pub(crate) user_name: String,
    pub(crate) phone_number: String,
    pub(crate) otp: Option<String>,
}

/// Everything a Manage request can fail with, before it becomes the envelope's error.
#[derive(Debug)]
enum ManageError {
    /// Refused for what the request is or says; the failure is the answer.
    Refused(Failure),
    /// The credentials could not be checked.
    Credentials(String),
    /// The request could not be counted against the `clientIp` limit.
    ClientLimit(StoreError),
    /// The MFA use case refused or failed.
    Mfa(MfaError),
}

impl From<Failure> for ManageError {
    fn from(failure: Failure) -> ManageError {
        ManageError::Refused(failure)
    }
}

impl ManageError {
    /// The failure the caller is told about.
    fn failure(self) -> Failure {
        match self {
            ManageError::Refused(failure) => failure,
            ManageError::Credentials(_) | ManageError::ClientLimit(_) => internal(),
            ManageError::Mfa(e) => mfa_failure(&e),
        }
    }
}

/// Logs a failure that is gatehouse's or a provider's rather than the caller's: the answer says
/// only that the request failed, so the reason is kept here.
fn log(e: &ManageError) {
    match e {
        ManageError::Credentials(why) => {
            tracing::error!(error = %why, "manage: credentials could not be checked");
        }
        ManageError::ClientLimit(e) => {
            tracing::error!(error = %e, "manage: the client limit could not be counted");
        }
        ManageError::Mfa(MfaError::Delivery(why)) => {
            tracing::warn!(error = %why, "manage: the code could not be texted");
        }
        ManageError::Mfa(e) if mfa_failure(e).code == ErrorCode::Internal => {
            tracing::error!(error = ?e, "manage: request failed");
        }
        ManageError::Mfa(_) | ManageError::Refused(_) => {}
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(ErrorCode::InvalidInput, message)
}

fn internal() -> Failure {
    Failure::new(
        ErrorCode::Internal,
        "The request could not be completed; nothing was changed. Try again.",
    )
}

/// 503: password hashing or the body budget is at capacity (SPEC §10).
fn busy() -> Failure {
    Failure::new(
        ErrorCode::Busy,
        "Gatehouse is at capacity; nothing was changed. Try again shortly.",
    )
    .retry_after(crate::auth::BUSY_RETRY_AFTER as i64)
}

impl Manage {
    pub fn new(
        config: &ManageApi,
        auth: Arc<Authenticator>,
        mfa: Arc<Mfa>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Manage {
        Manage {
            base: config.family.base_path.clone(),
            client_ip_limit: config.client_ip_limit,
            client_ip_window: config.client_ip_window,
            auth,
            mfa,
            store,
            clock,
        }
    }

    /// Every path of the family (as the prefix that [`Self::endpoint`] matches first).
    pub fn prefixes(&self) -> Vec<String> {
        table::paths_below(&self.base, &ENDPOINTS)
    }

    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let rest = crate::path::strip_prefix_ignore_case(path, &self.base)?;
        ENDPOINTS
            .iter()
            .find(|(r, _)| crate::path::eq_ignore_case(rest, r.path))
            .map(|(_, e)| *e)
    }

    /// Answers one request; `request_id` becomes its `apiRequestId`.
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: Incoming,
        request_id: &str,
    ) -> Response<Body> {
        let encoding = Encoding::for_accept(api::header_str(&parts.headers, header::ACCEPT));
        let shape = match endpoint {
            Endpoint::SendOtp => Shape::Plain,
            Endpoint::ValidateOtp => Shape::WithUser,
        };
        let allowed = table::check_method(&operations(), endpoint.template(), &parts.method);
        let result = match &allowed {
            Ok(()) => self.answer(endpoint, parts, body).await,
            Err(allow) => Err(ManageError::Refused(Failure::new(
                ErrorCode::MethodNotAllowed,
                format!("This endpoint answers {allow}."),
            ))),
        };
        if let Err(e) = &result {
            log(e);
        }
        let result = result.map_err(ManageError::failure);
        let mut response = envelope::encode(result, shape, encoding, request_id);
        if let Err(allow) = allowed
            && let Ok(v) = header::HeaderValue::from_str(&allow)
        {
            response.headers_mut().insert(header::ALLOW, v);
        }
        response
    }

    async fn answer(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: Incoming,
    ) -> Result<Option<proto::User>, ManageError> {
        let principal = self.service_account(parts).await?;
        let client_ip = client_ip(&parts.headers)?;
        if let Some(ip) = client_ip {
            self.count_client(ip).await?;
        }
        let fields = read_fields(endpoint, parts, body).await?;
        let caller = Caller {
            service: &principal.user_name,
            client_ip,
        };
        match endpoint {
            Endpoint::SendOtp => {
                self.mfa
                    .send_phone_code(&fields.user_name, &fields.phone_number, caller)
                    .await
                    .map_err(ManageError::Mfa)?;
                Ok(None)
            }
            Endpoint::ValidateOtp => {
                let otp = fields.otp.unwrap_or_default();
                let user = self
                    .mfa
                    .validate_phone_code(&fields.user_name, &fields.phone_number, &otp, caller)
                    .await
                    .map_err(ManageError::Mfa)?;
                Ok(Some(proto::User::from(&user)))
            }
        }
    }

    /// The caller: Basic credentials of an account holding [`SCOPE`].
    async fn service_account(&self, parts: &Parts) -> Result<Principal, ManageError> {
        let unauthorized =
            |why: &str| ManageError::Refused(Failure::new(ErrorCode::Unauthorized, why));
        match auth::credential(&parts.headers) {
            Ok(Some(Credential::Basic { .. })) => {}
            Ok(Some(Credential::Bearer(_))) => {
                return Err(unauthorized(
                    "This API takes the Basic credentials of a service account.",
                ));
            }
            Ok(None) => {
                return Err(unauthorized(
                    "Send the Basic credentials of a service account.",
                ));
            }
            Err(
                AuthError::Malformed(_)
                | AuthError::Invalid(_)
                | AuthError::Unavailable(_)
                | AuthError::Busy
                | AuthError::Throttled(_)
                | AuthError::NewUsersLimited(_),
            ) => return Err(unauthorized("The Authorization header is malformed.")),
        }
        let principal = match self
            .auth
            .authenticate(&parts.headers, api::client(parts))
            .await
        {
            Ok(Some(principal)) => principal,
            Ok(None) | Err(AuthError::Invalid(_)) | Err(AuthError::Malformed(_)) => {
                return Err(unauthorized("The user name or password is wrong."));
            }
            Err(AuthError::Busy) => return Err(busy().into()),
            Err(AuthError::Throttled(seconds)) => {
                return Err(Failure::new(
                    ErrorCode::RateLimited,
                    "Too many wrong passwords from this address; try again later.",
                )
                .retry_after(i64::try_from(seconds).unwrap_or(i64::MAX))
                .into());
            }
            // Only Basic reaches here (checked above); a token's issuer never creates a user.
            Err(AuthError::NewUsersLimited(seconds)) => {
                return Err(Failure::new(
                    ErrorCode::RateLimited,
                    "Too many new users; try again later.",
                )
                .retry_after(i64::try_from(seconds).unwrap_or(i64::MAX))
                .into());
            }
            Err(AuthError::Unavailable(why)) => return Err(ManageError::Credentials(why)),
        };
        if !principal.scopes.iter().any(|s| s == SCOPE) {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!("The account lacks the scope `{SCOPE}`."),
            )
            .into());
        }
        Ok(principal)
    }

    /// Counts one request for `ip`; 429 beyond `apis.manage.client_ip_limit` per window.
    async fn count_client(&self, ip: IpAddr) -> Result<(), ManageError> {
        if self.client_ip_limit == 0 {
            return Ok(());
        }
        let window = i64::try_from(self.client_ip_window.as_secs()).unwrap_or(i64::MAX);
        match self
            .store
            .count_send(
                &format!("ip:{ip}"),
                self.clock.unix(),
                window,
                self.client_ip_limit,
            )
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::new(
                ErrorCode::RateLimited,
                "Too many requests for this clientIp; try again later.",
            )
            .retry_after(window)
            .into()),
            Err(e) => Err(ManageError::ClientLimit(e)),
        }
    }
}

/// The `clientIp` header: absent, or one IP address (IPv4-mapped IPv6 as IPv4).
fn client_ip(headers: &http::HeaderMap) -> Result<Option<IpAddr>, Failure> {
    let mut values = headers.get_all(CLIENT_IP).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("Send clientIp once."));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map(|ip| Some(ip.to_canonical()))
        .ok_or_else(|| invalid("clientIp must be an IPv4 or IPv6 address."))
}

async fn read_fields(endpoint: Endpoint, parts: &Parts, body: Incoming) -> Result<Fields, Failure> {
    let content_type = api::header_str(&parts.headers, header::CONTENT_TYPE);
    let Some(encoding) = Encoding::for_content_type(content_type) else {
        return Err(Failure::new(
            ErrorCode::UnsupportedMediaType,
            "Send application/json or application/x-protobuf.",
        ));
    };
    let bytes = api::read_body(parts, body).await.map_err(|e| match e {
        BodyError::TooLarge(limit) => Failure::new(
            ErrorCode::TooLarge,
            format!("The body is larger than {}.", api::size_text(limit)),
        ),
        BodyError::TimedOut => {
            Failure::new(ErrorCode::BodyTimeout, "The body did not arrive in time.")
        }
        BodyError::Busy => busy(),
        BodyError::Unreadable | BodyError::Invalid(_) => invalid("The body could not be read."),
    })?;
    parse_fields(endpoint, encoding, &bytes)
}

/// Decodes and checks the body of `endpoint`.
pub(crate) fn parse_fields(
    endpoint: Endpoint,
    encoding: Encoding,
    bytes: &[u8],
) -> Result<Fields, Failure> {
    let fields = match endpoint {
        Endpoint::SendOtp => {
            let r: proto::SendOtpRequest = decode(encoding, bytes)?;
            Fields {
                user_name: r.user_name,
                phone_number: r.phone_number,
                otp: None,
            }
        }
        Endpoint::ValidateOtp => {
            let r: proto::ValidateOtpRequest = decode(encoding, bytes)?;
            Fields {
                user_name: r.user_name,
                phone_number: r.phone_number,
                otp: Some(r.otp),
            }
        }
    };
    if fields.user_name.trim().is_empty() || fields.user_name.chars().count() > MAX_USER_NAME {
        return Err(invalid(format!(
            "userName must be 1 to {MAX_USER_NAME} characters."
        )));
    }
    if fields.phone_number.trim().is_empty() {
        return Err(invalid("phoneNumber is required."));
    }
    if let Some(otp) = &fields.otp
        && (otp.trim().is_empty() || otp.chars().count() > MAX_OTP)
    {
        return Err(invalid(format!("otp must be 1 to {MAX_OTP} characters.")));
    }
    Ok(fields)
}

fn decode<T: DeserializeOwned + Message + Default>(
    encoding: Encoding,
    bytes: &[u8],
) -> Result<T, Failure> {
    match encoding {
        Encoding::Json => api::decode_json(bytes)
            .map_err(|e| invalid(format!("The body is not the JSON expected: {e}."))),
        Encoding::Protobuf => T::decode(bytes).map_err(|e| {
            invalid(format!(
                "The body is not the protobuf message expected: {e}."
            ))
        }),
    }
}

/// The failure each MFA outcome is answered with; those the caller cannot act on are internal.
fn mfa_failure(e: &MfaError) -> Failure {
    match e {
        MfaError::Invalid(why) => invalid(format!("{why}.")),
        MfaError::NoSuchPhone => Failure::new(
            ErrorCode::UserPhoneMismatch,
            "No user of that name has that phone number.",
        ),
        MfaError::WrongCode => Failure::new(
            ErrorCode::InvalidOtp,
            "The code is wrong or was already used.",
        ),
        MfaError::CodeExpired => Failure::new(
            ErrorCode::OtpExpired,
            "The code has expired; ask for a new one.",
        ),
        MfaError::Locked(retry) => Failure::new(
            ErrorCode::Locked,
            format!("Too many failed codes; try again in {retry} seconds."),
        )
        .retry_after(*retry),
        MfaError::SendLimited(retry) => Failure::new(
            ErrorCode::RateLimited,
            "Too many codes were sent; wait before asking for another.",
        )
        .retry_after(*retry),
        MfaError::Delivery(_) => Failure::new(
            ErrorCode::DeliveryFailed,
            "The text message could not be sent; try again.",
        ),
        MfaError::UnknownUser
        | MfaError::AlreadyEnrolled
        | MfaError::NoPendingEnrollment
        | MfaError::NoFactor(_)
        | MfaError::TicketUnknown
        | MfaError::TicketGone
        | MfaError::InvalidAccessToken
        | MfaError::NeedsMfa
        | MfaError::Store(_)
        | MfaError::Internal(_) => internal(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::tests::json_like_bytes;
    use proptest::prelude::*;

    const BOTH: [Endpoint; 2] = [Endpoint::SendOtp, Endpoint::ValidateOtp];

    /// What `parse_fields` promises to accept: names and codes of sensible length.
    fn acceptable(user_name: &str, phone_number: &str, otp: Option<&str>) -> bool {
        !user_name.trim().is_empty()
            && user_name.chars().count() <= MAX_USER_NAME
            && !phone_number.trim().is_empty()
            && otp.is_none_or(|o| !o.trim().is_empty() && o.chars().count() <= MAX_OTP)
    }

    #[test]
    fn deeply_nested_manage_bodies_are_refused() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        for json in [
            "[".repeat(100_000),
            deep.clone(),
            format!(r#"{{"userName":{deep},"phoneNumber":"1"}}"#),
        ] {
            for endpoint in BOTH {
                let refused = parse_fields(endpoint, Encoding::Json, json.as_bytes());
                assert_eq!(refused.err().map(|f| f.code), Some(ErrorCode::InvalidInput));
            }
        }
        // Unknown field 9 as a start-group tag, 100 000 times: groups nested that deep.
        let groups = vec![(9 << 3) | 3; 100_000];
        for endpoint in BOTH {
            let refused = parse_fields(endpoint, Encoding::Protobuf, &groups);
            assert_eq!(refused.err().map(|f| f.code), Some(ErrorCode::InvalidInput));
        }
    }

    proptest! {
        #[test]
        fn manage_bodies_decode_or_fail_without_panicking(
            json in json_like_bytes(),
            protobuf in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            for endpoint in BOTH {
                let _ = parse_fields(endpoint, Encoding::Json, &json);
                let _ = parse_fields(endpoint, Encoding::Protobuf, &protobuf);
            }
        }

        #[test]
        fn requests_read_back_as_sent_in_both_encodings_or_are_refused_as_invalid(
            user_name in "\\PC{0,300}",
            phone_number in "[ +0-9]{0,16}",
            otp in "[ 0-9a-z]{0,70}",
        ) {
            let request = proto::ValidateOtpRequest {
                user_name: user_name.clone(),
                phone_number: phone_number.clone(),
                otp: otp.clone(),
            };
            let json = serde_json::json!({
                "userName": user_name,
                "phoneNumber": phone_number,
                "otp": otp,
            });
            for (encoding, bytes) in [
                (Encoding::Protobuf, request.encode_to_vec()),
                (Encoding::Json, serde_json::to_vec(&json).unwrap()),
            ] {
                match parse_fields(Endpoint::ValidateOtp, encoding, &bytes) {
                    Ok(fields) => {
                        prop_assert!(acceptable(&user_name, &phone_number, Some(otp.as_str())));
                        prop_assert_eq!(&fields.user_name, &user_name);
                        prop_assert_eq!(&fields.phone_number, &phone_number);
                        prop_assert_eq!(fields.otp.as_deref(), Some(otp.as_str()));
                    }
                    Err(failure) => {
                        prop_assert!(!acceptable(&user_name, &phone_number, Some(otp.as_str())));
                        prop_assert_eq!(failure.code, ErrorCode::InvalidInput);
                    }
                }
            }
        }
    }
}
