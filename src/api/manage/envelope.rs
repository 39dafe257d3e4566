//! The Manage envelope `{errors, warnings, apiRequestId}` (plus `user` on a successful
//! validation), its stable `errorCode` values, and its two encodings.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use prost::Message;

use super::proto;
use crate::api;
use crate::api::problem::{Challenge, challenge};
use crate::body::Body;

/// Every failure the family reports, with its stable `errorCode`. The numbers start with the
/// HTTP status they come with; they are documented in the README and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed body, a missing or mistyped field, a bad `clientIp` or `phoneNumber`.
    InvalidInput,
    /// A wrong or already used code.
    InvalidOtp,
    /// The right code, too late.
    OtpExpired,
    /// No user of that name has that phone number.
    UserPhoneMismatch,
    Unauthorized,
    Forbidden,
    MethodNotAllowed,
    /// The body did not arrive within `server.body_read_timeout`.
    BodyTimeout,
    TooLarge,
    UnsupportedMediaType,
    /// Too many failed codes: the user is locked out for a while.
    Locked,
    /// Too many codes sent to the user or number, or requests for the `clientIp`.
    RateLimited,
    /// The store or another internal part failed; nothing was changed.
    Internal,
    /// The SMS provider did not take the message.
    DeliveryFailed,
    /// Gatehouse is at capacity (password hashing or buffered bodies); nothing was changed.
    Busy,
}

impl ErrorCode {
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::InvalidInput => 4000,
            ErrorCode::InvalidOtp => 4001,
            ErrorCode::OtpExpired => 4002,
            ErrorCode::UserPhoneMismatch => 4003,
            ErrorCode::Unauthorized => 4010,
            ErrorCode::Forbidden => 4030,
            ErrorCode::MethodNotAllowed => 4050,
            ErrorCode::BodyTimeout => 4080,
            ErrorCode::TooLarge => 4130,
            ErrorCode::UnsupportedMediaType => 4150,
            ErrorCode::Locked => 4290,
            ErrorCode::RateLimited => 4291,
            ErrorCode::Internal => 5000,
            ErrorCode::DeliveryFailed => 5020,
            ErrorCode::Busy => 5030,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidInput
            | ErrorCode::InvalidOtp
            | ErrorCode::OtpExpired
            | ErrorCode::UserPhoneMismatch => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Locked | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::DeliveryFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "Invalid input",
            ErrorCode::InvalidOtp => "Invalid OTP",
            ErrorCode::OtpExpired => "OTP expired",
            ErrorCode::UserPhoneMismatch => "Unknown user or phone number",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::BodyTimeout => "Request body too slow",
            ErrorCode::TooLarge => "Request too large",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::Locked => "Locked out",
            ErrorCode::RateLimited => "Too many requests",
            ErrorCode::Internal => "Internal error",
            ErrorCode::DeliveryFailed => "SMS not delivered",
            ErrorCode::Busy => "Too busy",
        }
    }
}

/// A failure: its code, what to tell the caller, and how long to wait (429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<i64>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: i64) -> Failure {
        self.retry_after = Some(seconds);
        self
    }
}

/// How an answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

const PROTOBUF_TYPES: [&str; 2] = ["application/x-protobuf", "application/protobuf"];

impl Encoding {
    fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }

    /// The answer's encoding for an `Accept` header: protobuf when the client rates it at least
    /// as high as anything JSON would satisfy, JSON otherwise (also for types neither satisfies).
    pub fn for_accept(accept: Option<&str>) -> Encoding {
        let mut protobuf = 0.0_f32;
        let mut json = 0.0_f32;
        for (media, quality) in api::media_ranges(accept.unwrap_or_default()) {
            if PROTOBUF_TYPES.contains(&media.as_str()) {
                protobuf = protobuf.max(quality);
            } else if matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
                json = json.max(quality);
            }
        }
        if protobuf > 0.0 && protobuf >= json {
            Encoding::Protobuf
        } else {
            Encoding::Json
        }
    }

    /// The encoding of a request body from its `Content-Type`; `None` (415) for other types.
    /// A body without one is read as JSON.
    pub fn for_content_type(content_type: Option<&str>) -> Option<Encoding> {
        let Some(value) = content_type else {
            return Some(Encoding::Json);
        };
        let essence = api::essence(value);
        if essence == "application/json" {
            Some(Encoding::Json)
        } else if PROTOBUF_TYPES.contains(&essence.as_str()) {
            Some(Encoding::Protobuf)
        } else {
            None
        }
    }
}

/// Which message an answer is: validate/otp's carries `user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Plain,
    WithUser,
}

/// Encodes a finished answer: `Ok` carries the user of a successful validation, if any.
pub fn encode(
    result: Result<Option<proto::User>, Failure>,
    shape: Shape,
    encoding: Encoding,
    request_id: &str,
) -> Response<Body> {
    let (status, errors, user, retry_after) = match result {
        Ok(user) => (StatusCode::OK, Vec::new(), user, None),
        Err(f) => (
            f.code.status(),
            vec![proto::Error {
                error_code: f.code.code(),
                error_title: f.code.title().to_owned(),
                error_message: f.message,
            }],
            None,
            f.retry_after,
        ),
    };
    let api_request_id = request_id.to_owned();
    let bytes = match shape {
        Shape::WithUser => {
            let message = proto::ValidateOtpResponse {
                errors,
                warnings: Vec::new(),
                api_request_id,
                user,
            };
            match encoding {
                Encoding::Json => serde_json::to_vec(&message).unwrap_or_default(),
                Encoding::Protobuf => message.encode_to_vec(),
            }
        }
        Shape::Plain => {
            let message = proto::Response {
                errors,
                warnings: Vec::new(),
                api_request_id,
            };
            match encoding {
                Encoding::Json => serde_json::to_vec(&message).unwrap_or_default(),
                Encoding::Protobuf => message.encode_to_vec(),
            }
        }
    };
    let mut response = api::with_type(status, encoding.media_type(), bytes);
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if status == StatusCode::UNAUTHORIZED {
        challenge(headers, Challenge::Basic);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_is_chosen_only_when_asked_for_at_least_as_much_as_json() {
        for (accept, want) in [
            (None, Encoding::Json),
            (Some("application/json"), Encoding::Json),
            (Some("*/*"), Encoding::Json),
            (Some("text/html"), Encoding::Json),
            (Some("application/x-protobuf"), Encoding::Protobuf),
            (Some("Application/X-Protobuf; q=0.9"), Encoding::Protobuf),
            (Some("application/protobuf"), Encoding::Protobuf),
            (
                Some("application/x-protobuf, application/json"),
                Encoding::Protobuf,
            ),
            (
                Some("application/json, application/x-protobuf;q=0.5"),
                Encoding::Json,
            ),
            (Some("application/x-protobuf;q=0"), Encoding::Json),
        ] {
            assert_eq!(Encoding::for_accept(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn request_bodies_are_json_or_protobuf() {
        assert_eq!(Encoding::for_content_type(None), Some(Encoding::Json));
        assert_eq!(
            Encoding::for_content_type(Some("application/json; charset=utf-8")),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::for_content_type(Some("application/x-protobuf")),
            Some(Encoding::Protobuf)
        );
        assert_eq!(Encoding::for_content_type(Some("text/xml")), None);
    }

    #[test]
    fn error_codes_start_with_their_status_and_are_unique() {
        let all = [
            ErrorCode::InvalidInput,
            ErrorCode::InvalidOtp,
            ErrorCode::OtpExpired,
            ErrorCode::UserPhoneMismatch,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::MethodNotAllowed,
            ErrorCode::TooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::Locked,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
            ErrorCode::DeliveryFailed,
        ];
        let mut codes: Vec<i32> = all.iter().map(|c| c.code()).collect();
        for c in all {
            assert_eq!(c.code() / 10, i32::from(c.status().as_u16()), "{c:?}");
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
