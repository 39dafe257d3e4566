//! The request id: the client's own when it is plausible, else a new one; one value for the
//! upstream, the client and the access log.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header that carries a request's id to the upstream and back to the client.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's `X-Request-Id` when it is a plausible id (1–128 of `A-Z a-z 0-9 . _ : -`),
/// else a new UUID: one value, sent upstream and back to the client as it is.
pub(super) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID).filter(|id| {
        (1..=128).contains(&id.len())
            && id
                .as_bytes()
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    }) {
        return id.clone();
    }
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(id) {
            h.insert(X_REQUEST_ID, v);
        }
        h
    }

    #[test]
    fn valid_request_id_is_kept() {
        assert_eq!(request_id(&with_id("abc-123_x.y:z")), "abc-123_x.y:z");
    }

    #[test]
    fn invalid_request_id_is_replaced() {
        for bad in ["", "a b", "<script>", &"x".repeat(129)] {
            let id = request_id(&with_id(bad));
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(id.to_str().unwrap_or_default()).is_ok());
        }
    }

    #[test]
    fn requests_without_an_id_get_different_ones() {
        let (a, b) = (request_id(&with_id("")), request_id(&with_id("")));
        assert_ne!(a, b);
    }
}
