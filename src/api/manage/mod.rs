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
use crate::api::route::{self, Route};
use crate::api::{self, BodyError};
use crate::auth::{self, AuthError, Authenticator, Credential, Principal};
use crate::body::Body;
use crate::clock::Clock;
use crate::config::ManageApi;
use crate::mfa::phone::Caller;
use crate::mfa::service::{Mfa, MfaError};
use crate::store::Store;

/// The scope a service account needs.
pub const SCOPE: &str = "manage.otp.verify";

const CLIENT_IP: HeaderName = HeaderName::from_static("clientip");

/// Longest `userName` and `otp` accepted (longer ones are not names or codes).
const MAX_USER_NAME: usize = 256;
const MAX_OTP: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    SendOtp,
    ValidateOtp,
}

/// The endpoints and what they answer, below the family's base path.
const ENDPOINTS: [(Route, Endpoint); 2] = [
    (Route::new("POST", "/v2/user/send/otp"), Endpoint::SendOtp),
    (
        Route::new("POST", "/v2/user/validate/otp"),
        Endpoint::ValidateOtp,
    ),
];

/// Every operation of the family, below its base path.
pub fn routes() -> Vec<Route> {
    route::routes_of(&ENDPOINTS)
}

impl Endpoint {
    fn template(self) -> &'static str {
        route::template_of(&ENDPOINTS, &self)
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
struct Fields {
    user_name: String,
    phone_number: String,
    otp: Option<String>,
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

    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix(&self.base)?;
        ENDPOINTS
            .iter()
            .find(|(r, _)| r.path == rest)
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
        let allowed = route::check_method(&routes(), endpoint.template(), &parts.method);
        let result = match &allowed {
            Ok(()) => self.answer(endpoint, parts, body).await,
            Err(allow) => Err(Failure::new(
                ErrorCode::MethodNotAllowed,
                format!("This endpoint answers {allow}."),
            )),
        };
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
    ) -> Result<Option<proto::User>, Failure> {
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
                    .map_err(|e| failure(&e))?;
                Ok(None)
            }
            Endpoint::ValidateOtp => {
                let otp = fields.otp.unwrap_or_default();
                let user = self
                    .mfa
                    .validate_phone_code(&fields.user_name, &fields.phone_number, &otp, caller)
                    .await
                    .map_err(|e| failure(&e))?;
                Ok(Some(proto::User::from(&user)))
            }
        }
    }

    /// The caller: Basic credentials of an account holding [`SCOPE`].
    async fn service_account(&self, parts: &Parts) -> Result<Principal, Failure> {
        let unauthorized = |why: &str| Failure::new(ErrorCode::Unauthorized, why);
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
            Err(_) => return Err(unauthorized("The Authorization header is malformed.")),
        }
        let principal = match self.auth.authenticate(&parts.headers).await {
            Ok(Some(principal)) => principal,
            Ok(None) | Err(AuthError::Invalid(_)) | Err(AuthError::Malformed(_)) => {
                return Err(unauthorized("The user name or password is wrong."));
            }
            Err(AuthError::Unavailable(why)) => {
                tracing::error!(error = %why, "manage: credentials could not be checked");
                return Err(internal());
            }
        };
        if !principal.scopes.iter().any(|s| s == SCOPE) {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!("The account lacks the scope `{SCOPE}`."),
            ));
        }
        Ok(principal)
    }

    /// Counts one request for `ip`; 429 beyond `apis.manage.client_ip_limit` per window.
    async fn count_client(&self, ip: IpAddr) -> Result<(), Failure> {
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
            .retry_after(window)),
            Err(e) => {
                tracing::error!(error = %e, "manage: the client limit could not be counted");
                Err(internal())
            }
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
    let bytes = api::read_body(body).await.map_err(|e| match e {
        BodyError::TooLarge => Failure::new(ErrorCode::TooLarge, "The body is larger than 1 MiB."),
        _ => invalid("The body could not be read."),
    })?;
    let fields = match endpoint {
        Endpoint::SendOtp => {
            let r: proto::SendOtpRequest = decode(encoding, &bytes)?;
            Fields {
                user_name: r.user_name,
                phone_number: r.phone_number,
                otp: None,
            }
        }
        Endpoint::ValidateOtp => {
            let r: proto::ValidateOtpRequest = decode(encoding, &bytes)?;
            Fields {
                user_name: r.user_name,
                phone_number: r.phone_number,
                otp: Some(r.otp),
            }
        }
    };
    if fields.user_name.trim().is_empty() || fields.user_name.len() > MAX_USER_NAME {
        return Err(invalid(format!(
            "userName must be 1 to {MAX_USER_NAME} characters."
        )));
    }
    if fields.phone_number.trim().is_empty() {
        return Err(invalid("phoneNumber is required."));
    }
    if let Some(otp) = &fields.otp
        && (otp.trim().is_empty() || otp.len() > MAX_OTP)
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
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("The body is not the JSON expected: {e}."))),
        Encoding::Protobuf => T::decode(bytes).map_err(|e| {
            invalid(format!(
                "The body is not the protobuf message expected: {e}."
            ))
        }),
    }
}

fn failure(e: &MfaError) -> Failure {
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
        MfaError::Delivery(why) => {
            tracing::warn!(error = %why, "manage: the code could not be texted");
            Failure::new(
                ErrorCode::DeliveryFailed,
                "The text message could not be sent; try again.",
            )
        }
        other => {
            tracing::error!(error = ?other, "manage: request failed");
            internal()
        }
    }
}
