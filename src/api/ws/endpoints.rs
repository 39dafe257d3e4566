//! `POST User/2fa-opt-in` and `POST User/verify-2fa-opt-in` (seed 003 and its companion).
//! Every answer, errors included, is a `BaseResponseModel` in the negotiated format.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::negotiate::{self, Format};
use super::xml::{self, Link};
use crate::api::table::{self, Operation};
use crate::api::{self, BodyError};
use crate::auth::{self, AuthError, Authenticator, Credential, Principal};
use crate::body::{Body, full};
use crate::mfa::service::{Mfa, MfaError};
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    OptIn,
    VerifyOptIn,
}

/// The endpoints and what they answer, below the family's base path; paths match in any letter
/// case (the seed's service is ASP.NET's).
const ENDPOINTS: [(Operation, Endpoint); 2] = [
    (Operation::new("POST", "/User/2fa-opt-in"), Endpoint::OptIn),
    (
        Operation::new("POST", "/User/verify-2fa-opt-in"),
        Endpoint::VerifyOptIn,
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

/// An answer before encoding.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    message: String,
    links: Vec<Link>,
    provider_user_id: Option<i64>,
    retry_after: Option<i64>,
}

impl Answer {
    fn new(status: StatusCode, message: impl Into<String>) -> Answer {
        Answer {
            status,
            message: message.into(),
            links: Vec::new(),
            provider_user_id: None,
            retry_after: None,
        }
    }

    /// Asks the caller to wait this many seconds (429, 503).
    fn retry_after(mut self, seconds: u64) -> Answer {
        self.retry_after = Some(i64::try_from(seconds).unwrap_or(i64::MAX));
        self
    }

    /// 503: gatehouse is at capacity (password hashing or buffered bodies, SPEC §10).
    fn busy() -> Answer {
        Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Gatehouse is at capacity; try again shortly.",
        )
        .retry_after(auth::BUSY_RETRY_AFTER)
    }

    fn link(mut self, rel: &str, href: &str, title: &str) -> Answer {
        self.links.push(Link {
            rel: rel.into(),
            href: href.into(),
            method: "POST".into(),
            title: title.into(),
        });
        self
    }
}

pub struct Ws {
    /// Lower-cased base path (paths match case-insensitively).
    base: String,
    auth: Arc<Authenticator>,
    mfa: Arc<Mfa>,
    store: Arc<dyn Store>,
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.into_owned())
}

impl Ws {
    pub fn new(base: &str, auth: Arc<Authenticator>, mfa: Arc<Mfa>, store: Arc<dyn Store>) -> Ws {
        Ws {
            base: base.to_ascii_lowercase(),
            auth,
            mfa,
            store,
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

    pub async fn handle(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: Incoming,
    ) -> Response<Body> {
        let accept = api::header_str(&parts.headers, header::ACCEPT);
        let Some(format) = negotiate::response_format(accept) else {
            let answer = Answer::new(
                StatusCode::NOT_ACCEPTABLE,
                "Acceptable formats: application/json, text/json, application/xml, text/xml.",
            );
            return encode(answer, Format::Json("application/json"));
        };
        let allowed = table::check_method(&operations(), endpoint.template(), &parts.method);
        let mut answer = match allowed {
            Ok(()) => match self.answer(endpoint, parts, body).await {
                Ok(answer) | Err(answer) => answer,
            },
            Err(ref allow) => Answer::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("This endpoint answers {allow}."),
            ),
        };
        if answer.links.is_empty() {
            // Every answer links somewhere; the query is left out (it may carry a WsAccessKey).
            answer = answer.link("self", parts.uri.path(), "This endpoint");
        }
        let mut response = encode(answer, format);
        if let Err(allow) = allowed
            && let Ok(v) = HeaderValue::from_str(&allow)
        {
            response.headers_mut().insert(header::ALLOW, v);
        }
        response
    }

    fn links(&self, file_id: i64) -> (String, String) {
        (
            format!("{}/User/verify-2fa-opt-in?FileId={file_id}", self.base),
            format!("{}/User/2fa-opt-in?FileId={file_id}", self.base),
        )
    }

    async fn answer(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: Incoming,
    ) -> Result<Answer, Answer> {
        let query = parts.uri.query();
        let file_id = match query_param(query, "FileId") {
            None => return Err(Answer::new(StatusCode::BAD_REQUEST, "FileId is required.")),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map_err(|_| Answer::new(StatusCode::BAD_REQUEST, "FileId must be an integer."))?,
        };
        let principal = self.caller(parts, file_id).await?;
        let content_type = api::header_str(&parts.headers, header::CONTENT_TYPE);
        let Some(format) = negotiate::request_format(content_type) else {
            return Err(Answer::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send application/json, text/json, application/xml or text/xml.",
            ));
        };
        let bytes = api::read_body(parts, body).await.map_err(|e| match e {
            BodyError::TooLarge(limit) => Answer::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The body is larger than {}.", api::size_text(limit)),
            ),
            BodyError::TimedOut => Answer::new(
                StatusCode::REQUEST_TIMEOUT,
                "The body did not arrive in time.",
            ),
            BodyError::Busy => Answer::busy(),
            BodyError::Unreadable | BodyError::Invalid(_) => {
                Answer::new(StatusCode::BAD_REQUEST, "The body could not be read.")
            }
        })?;
        let root = match endpoint {
            Endpoint::OptIn => "OptIn2FARequest",
            Endpoint::VerifyOptIn => "Verify2FAOptInRequest",
        };
        let fields = read_fields(&bytes, format, root)?;
        let (verify, resend) = self.links(file_id);
        let self_link = match endpoint {
            Endpoint::OptIn => resend.clone(),
            Endpoint::VerifyOptIn => verify.clone(),
        };
        match endpoint {
            Endpoint::OptIn => {
                let number = fields
                    .get("MobileNumber")
                    .and_then(|v| v.as_str())
                    .filter(|n| crate::notify::sms::valid_e164(n))
                    .ok_or_else(|| {
                        Answer::new(
                            StatusCode::BAD_REQUEST,
                            "MobileNumber must be an E.164 number such as +14155550123.",
                        )
                        .link("self", &self_link, "Try again")
                    })?
                    .to_owned();
                let provider_user_id = self
                    .mfa
                    .sms_opt_in(&principal, &number)
                    .await
                    .map_err(|e| mfa_answer(&e, &resend, &self_link))?;
                let mut answer =
                    Answer::new(StatusCode::OK, "A code was sent to the mobile number.")
                        .link("verify", &verify, "Verify the code")
                        .link("resend", &resend, "Send a new code")
                        .link("self", &self_link, "This request");
                answer.provider_user_id = Some(provider_user_id);
                Ok(answer)
            }
            Endpoint::VerifyOptIn => {
                let provider_user_id = fields.get("ProviderUserId").and_then(integer);
                let otp = fields
                    .get("Otp")
                    .and_then(|v| v.as_str())
                    .filter(|o| !o.is_empty());
                let (Some(provider_user_id), Some(otp)) = (provider_user_id, otp) else {
                    return Err(Answer::new(
                        StatusCode::BAD_REQUEST,
                        "ProviderUserId (an integer) and Otp are required.",
                    )
                    .link("resend", &resend, "Send a new code"));
                };
                self.mfa
                    .sms_opt_in_verify(&principal, provider_user_id, otp)
                    .await
                    .map_err(|e| mfa_answer(&e, &resend, &self_link))?;
                Ok(Answer::new(
                    StatusCode::OK,
                    "Two-factor authentication by SMS is now enabled.",
                )
                .link("self", &self_link, "This request"))
            }
        }
    }

    /// Bearer (preferred) or the legacy `WsAccessKey`, which must belong to `file_id`.
    async fn caller(&self, parts: &Parts, file_id: i64) -> Result<Principal, Answer> {
        let unauthorized = || {
            Answer::new(
                StatusCode::UNAUTHORIZED,
                "Send a Bearer token or a WsAccessKey.",
            )
        };
        let forbidden = || Answer::new(StatusCode::FORBIDDEN, "No access to this FileId.");
        let unavailable = || Answer::new(StatusCode::SERVICE_UNAVAILABLE, "Try again shortly.");
        match auth::credential(&parts.headers) {
            Ok(Some(Credential::Bearer(_))) => {
                let client = api::client(parts);
                let principal = match self.auth.authenticate(&parts.headers, client).await {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(auth::AuthError::Invalid(_)) => return Err(unauthorized()),
                    Err(auth::AuthError::Malformed(_)) => {
                        return Err(Answer::new(
                            StatusCode::BAD_REQUEST,
                            "Malformed Authorization header.",
                        ));
                    }
                    Err(auth::AuthError::Unavailable(_)) => return Err(unavailable()),
                    Err(auth::AuthError::Busy) => return Err(Answer::busy()),
                    Err(auth::AuthError::Throttled(seconds)) => {
                        return Err(Answer::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "Too many failed sign-ins; try again later.",
                        )
                        .retry_after(seconds));
                    }
                    Err(auth::AuthError::NewUsersLimited(seconds)) => {
                        return Err(Answer::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "Too many new users; try again later.",
                        )
                        .retry_after(seconds));
                    }
                };
                let id = principal
                    .user_id
                    .parse::<u64>()
                    .map_err(|_| unauthorized())?;
                let user = self
                    .store
                    .shared_user_by_id(id)
                    .await
                    .map_err(|_| unavailable())?
                    .ok_or_else(unauthorized)?;
                if user.files.contains(&file_id) {
                    Ok(principal)
                } else {
                    Err(forbidden())
                }
            }
            Ok(Some(Credential::Basic { .. })) => Err(unauthorized()),
            Err(
                AuthError::Malformed(_)
                | AuthError::Invalid(_)
                | AuthError::Unavailable(_)
                | AuthError::Busy
                | AuthError::Throttled(_)
                | AuthError::NewUsersLimited(_),
            ) => Err(Answer::new(
                StatusCode::BAD_REQUEST,
                "Malformed Authorization header.",
            )),
            Ok(None) => {
                let key = query_param(parts.uri.query(), "WsAccessKey").ok_or_else(unauthorized)?;
                let (principal, key_file) = match self.auth.ws_access_key(&key).await {
                    Ok(Some(found)) => found,
                    Ok(None) | Err(auth::AuthError::Invalid(_) | auth::AuthError::Malformed(_)) => {
                        return Err(unauthorized());
                    }
                    // A key is a hash lookup: neither the hashing bound nor the password
                    // throttle applies, but an answer for them would be this one.
                    Err(
                        auth::AuthError::Unavailable(_)
                        | auth::AuthError::Busy
                        | auth::AuthError::Throttled(_)
                        | auth::AuthError::NewUsersLimited(_),
                    ) => return Err(unavailable()),
                };
                if key_file != file_id {
                    return Err(forbidden());
                }
                Ok(principal)
            }
        }
    }
}

/// Field values from a JSON object or a flat XML element, as JSON values.
pub(crate) fn read_fields(
    bytes: &[u8],
    format: Format,
    root: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, Answer> {
    match format {
        Format::Json(_) => match api::decode_json::<serde_json::Value>(bytes) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(Answer::new(
                StatusCode::BAD_REQUEST,
                "The body must be a JSON object.",
            )),
            Err(e) => Err(Answer::new(
                StatusCode::BAD_REQUEST,
                format!("The body is not valid JSON: {e}"),
            )),
        },
        Format::Xml(_) => xml::read_flat(bytes, root)
            .map(|fields| {
                fields
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect()
            })
            .map_err(|e| {
                Answer::new(
                    StatusCode::BAD_REQUEST,
                    format!("The body is not acceptable XML: {e}"),
                )
            }),
    }
}

/// An integer given as a JSON number or as text (XML has no numbers).
fn integer(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn mfa_answer(e: &MfaError, resend: &str, self_link: &str) -> Answer {
    match e {
        MfaError::WrongCode
        | MfaError::CodeExpired
        | MfaError::TicketGone
        | MfaError::TicketUnknown => Answer::new(
            StatusCode::BAD_REQUEST,
            "The code is wrong, expired or already used.",
        )
        .link("resend", resend, "Send a new code"),
        MfaError::Locked(retry) | MfaError::SendLimited(retry) => {
            let mut answer = Answer::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts; try again later.",
            );
            answer.retry_after = Some(*retry);
            answer
        }
        MfaError::Delivery(_) => Answer::new(
            StatusCode::BAD_GATEWAY,
            "The text message could not be sent.",
        )
        .link("resend", resend, "Send a new code"),
        MfaError::Invalid(why) => {
            Answer::new(StatusCode::BAD_REQUEST, why.clone()).link("self", self_link, "Try again")
        }
        MfaError::Store(_) => Answer::new(StatusCode::SERVICE_UNAVAILABLE, "Try again shortly."),
        MfaError::AlreadyEnrolled => Answer::new(
            StatusCode::FORBIDDEN,
            "A second factor is already enrolled: adding another needs a Bearer token that \
             includes it (verify-otp gives one).",
        ),
        MfaError::UnknownUser
        | MfaError::NoPendingEnrollment
        | MfaError::NoFactor(_)
        | MfaError::NoSuchPhone
        | MfaError::InvalidAccessToken
        | MfaError::NeedsMfa
        | MfaError::Internal(_) => {
            Answer::new(StatusCode::INTERNAL_SERVER_ERROR, "The request failed.")
        }
    }
}

fn encode(answer: Answer, format: Format) -> Response<Body> {
    let bytes = match format {
        Format::Json(_) => {
            let mut object =
                serde_json::json!({ "StatusMessage": answer.message, "_links": answer.links });
            if let Some(id) = answer.provider_user_id {
                object["ProviderUserId"] = serde_json::json!(id);
            }
            serde_json::to_vec(&object).unwrap_or_default()
        }
        Format::Xml(_) => {
            let extra: Vec<(&str, String)> = answer
                .provider_user_id
                .map(|id| vec![("ProviderUserId", id.to_string())])
                .unwrap_or_default();
            xml::write_base_response(&answer.message, &answer.links, &extra)
        }
    };
    let mut response = Response::new(full(bytes));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    let content_type = format!("{}; charset=utf-8", format.media_type());
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(retry) = answer.retry_after
        && let Ok(v) = HeaderValue::from_str(&retry.to_string())
    {
        headers.insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::tests::json_like_bytes;
    use crate::api::ws::xml::tests::xml_like_bytes;
    use proptest::prelude::*;

    const JSON: Format = Format::Json("application/json");
    const XML: Format = Format::Xml("application/xml");
    const ROOT: &str = "Verify2FAOptInRequest";

    #[test]
    fn deeply_nested_ws_bodies_are_refused_with_400() {
        let json_deep = "[".repeat(100_000) + &"]".repeat(100_000);
        for body in [
            "[".repeat(100_000),
            format!(r#"{{"Otp":"1","ignored":{json_deep}}}"#),
        ] {
            let refused = read_fields(body.as_bytes(), JSON, ROOT).err().unwrap();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        }
        let xml_deep = format!(
            "<{ROOT}>{}{}</{ROOT}>",
            "<a>".repeat(100_000),
            "</a>".repeat(100_000)
        );
        let xml_open = format!("<{ROOT}>{}", "<a>".repeat(100_000));
        for body in [xml_deep, xml_open] {
            let refused = read_fields(body.as_bytes(), XML, ROOT).err().unwrap();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        }
    }

    proptest! {
        #[test]
        fn ws_bodies_decode_or_fail_with_400_without_panicking(
            json in json_like_bytes(),
            xml in xml_like_bytes(),
        ) {
            for (bytes, format) in [(&json, JSON), (&xml, XML), (&xml, JSON), (&json, XML)] {
                if let Err(answer) = read_fields(bytes, format, ROOT) {
                    prop_assert_eq!(answer.status, StatusCode::BAD_REQUEST);
                }
            }
        }

        #[test]
        fn the_same_fields_read_alike_from_json_and_xml(
            provider_user_id in any::<i64>(),
            otp in "[!-~]{1,12}",
        ) {
            let json = serde_json::json!({ "ProviderUserId": provider_user_id, "Otp": otp });
            let xml = format!(
                "<{ROOT}><ProviderUserId> {provider_user_id} </ProviderUserId><Otp>{}</Otp></{ROOT}>",
                otp.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
            );
            let from_json = read_fields(&serde_json::to_vec(&json).unwrap(), JSON, ROOT).ok().unwrap();
            let from_xml = read_fields(xml.as_bytes(), XML, ROOT).ok().unwrap();
            for fields in [&from_json, &from_xml] {
                prop_assert_eq!(fields.get("ProviderUserId").and_then(integer), Some(provider_user_id));
                prop_assert_eq!(fields.get("Otp").and_then(|v| v.as_str()), Some(otp.as_str()));
            }
        }
    }
}
