//! Endpoints gatehouse answers itself, and what their handlers share.

pub mod admin;
pub mod domains;
pub mod enroll;
pub mod manage;
pub mod nexus;
pub mod route;
pub mod ws;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::body::{Body, full};

/// Largest request body a local endpoint reads (SPEC §2): 413 beyond.
pub const MAX_LOCAL_BODY: usize = 1024 * 1024;

/// A response with `bytes` as its body, never cached.
pub fn with_type(status: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `value` as `application/json`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    with_type(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// A header's value as text, when present and visible ASCII.
pub fn header_str(headers: &http::HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The media type of a `Content-Type` value: lower case, without parameters such as `charset`.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The media ranges of an `Accept` value, lower case, each with its quality (1 when not given).
pub fn media_ranges(accept: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    accept.split(',').map(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        (media, quality)
    })
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Unreadable,
    /// Not the JSON expected; the message names what was wrong.
    Invalid(String),
}

/// Reads a body of at most [`MAX_LOCAL_BODY`] bytes.
pub async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_LOCAL_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// Reads and decodes a JSON body.
pub async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, BodyError> {
    let bytes = read_body(body).await?;
    decode_json(&bytes).map_err(BodyError::Invalid)
}

/// Deepest nesting of arrays and objects a JSON request body may have. Every body gatehouse
/// reads is flat; serde_json's own limit (128) applies only to values it builds, while the
/// fields a type ignores are skipped at any depth.
pub const MAX_JSON_DEPTH: usize = 32;

/// Decodes a JSON request body, refusing one nested deeper than [`MAX_JSON_DEPTH`] (SECURITY.md
/// promise 8), wherever the nesting is, and one that is not UTF-8 (RFC 8259 §8.1): serde_json
/// checks the strings it keeps, not those it skips.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if !json_depth_within(bytes, MAX_JSON_DEPTH) {
        return Err(format!(
            "the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels"
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Whether the brackets of `bytes` (outside strings) nest at most `max` deep. Malformed JSON
/// may pass: the parser refuses it next.
pub fn json_depth_within(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// `204 No Content`.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(crate::body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Bytes that are often nearly JSON: brackets, escapes and the families' field names.
    pub(crate) fn json_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        let fragment = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            " ",
            "null",
            "true",
            "0",
            "-1.5e308",
            "1e400",
            "\"otp\"",
            "\"oob\"",
            "\"accessToken\"",
            "\"domain\"",
            "\"authenticationMethod\"",
            "\"userName\"",
            "\"phoneNumber\"",
            "\"Otp\"",
            "\"ProviderUserId\"",
            "\"MobileNumber\"",
            "\\",
            "\\u0000",
            "\\ud800",
            "\u{e9}",
            "\u{feff}",
            "\"+14155550123\"",
        ]);
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            prop::collection::vec(fragment, 0..48).prop_map(|f| f.concat().into_bytes()),
        ]
    }

    fn nested(kinds: &[bool], leaf: &str) -> String {
        let mut json = serde_json::to_string(leaf).unwrap();
        for &array in kinds.iter().rev() {
            json = if array {
                format!("[{json}]")
            } else {
                format!("{{{}:{json}}}", serde_json::to_string(leaf).unwrap())
            };
        }
        json
    }

    #[test]
    fn json_nested_deeper_than_the_limit_is_refused_wherever_it_is() {
        let at_limit = nested(&[true; MAX_JSON_DEPTH], "x");
        assert!(decode_json::<Value>(at_limit.as_bytes()).is_ok());
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        for body in [
            nested(&[true; MAX_JSON_DEPTH + 1], "x"),
            deep.clone(),
            "[".repeat(100_000),
            "{\"a\":".repeat(100_000),
            format!(r#"{{"otp":"1","ignored":{deep}}}"#),
        ] {
            assert!(decode_json::<Value>(body.as_bytes()).is_err());
            // A type that ignores unknown fields still refuses them when they nest too deep.
            assert!(decode_json::<serde::de::IgnoredAny>(body.as_bytes()).is_err());
        }
    }

    /// Found by fuzzing (`nexus_json`): invalid UTF-8 in a string of a field the body type
    /// ignores was skipped unchecked, so a body that is not JSON decoded.
    #[test]
    fn json_bodies_that_are_not_utf8_are_refused_even_in_ignored_fields() {
        let body = b"{\"otp\":\"123456\",\"oob\":null,\"accessToken\":\"eyJhbGciOi\xcaFZERTQSJ9.e30.c2ln\"}";
        assert!(serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok());
        assert!(decode_json::<serde::de::IgnoredAny>(body).is_err());
        assert!(decode_json::<Value>(body).is_err());
    }

    proptest! {
        #[test]
        fn json_is_refused_exactly_when_it_nests_deeper_than_the_limit(
            kinds in prop::collection::vec(any::<bool>(), 0..2 * MAX_JSON_DEPTH),
            leaf in r#"[\[\]{}"\\a-z]{0,12}"#,
        ) {
            let body = nested(&kinds, &leaf);
            let decoded = decode_json::<Value>(body.as_bytes());
            prop_assert_eq!(decoded.is_ok(), kinds.len() <= MAX_JSON_DEPTH, "{}", body);
        }

        #[test]
        fn json_decoding_never_panics_on_arbitrary_bytes(bytes in json_like_bytes()) {
            let _ = decode_json::<Value>(&bytes);
        }
    }
}
