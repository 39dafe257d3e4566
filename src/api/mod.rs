//! Endpoints gatehouse answers itself, and what their handlers share.

pub mod admin;
pub mod enroll;
pub mod manage;
pub mod nexus;
pub mod operations;
pub mod page;
pub mod problem;
pub mod services;
pub mod signin;
pub mod table;
pub mod ws;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;
pub use crate::body::{json, with_type};

/// Largest request body a local endpoint reads by default (SPEC §2, `server.max_body_bytes`):
/// 413 beyond.
pub const MAX_LOCAL_BODY: usize = crate::config::DEFAULT_MAX_BODY_BYTES;

/// `bytes` as an answer names a size: `1 MiB`, `64 KiB`, else `1000 bytes`.
pub fn size_text(bytes: usize) -> String {
    match bytes {
        0 => "0 bytes".to_owned(),
        b if b % (1024 * 1024) == 0 => format!("{} MiB", b / (1024 * 1024)),
        b if b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
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
    /// 413: over `server.max_body_bytes`, this many bytes.
    TooLarge(usize),
    Unreadable,
    /// 408: the body did not arrive within `server.body_read_timeout`.
    TimedOut,
    /// 503: the bodies held across all requests reached `server.max_buffered_bytes`.
    Busy,
    /// Not the JSON expected; the message names what was wrong.
    Invalid(String),
}

/// What a listener tells the local endpoints about a request, as a request extension: who sent
/// it (as far as gatehouse believes) and the reader its body must go through.
#[derive(Clone)]
pub struct Context {
    pub client: IpAddr,
    pub bodies: Arc<Bodies>,
}

/// The first value of the query parameter `name` (compared exactly), form-decoded (`%40` is `@`,
/// `+` a space).
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The client address of a request; unknown addresses share one (so they share one limit).
pub fn client(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<Context>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.client)
}

/// The one reader of local endpoints' request bodies (SPEC §10): at most `server.max_body_bytes`
/// per request, the whole body within a timeout, and at most a budget of bytes held across every
/// request at once. Bytes are counted against the budget as they arrive and given back when the
/// [`Buffered`] body is dropped.
pub struct Bodies {
    timeout: Duration,
    budget: Arc<Semaphore>,
    limit: usize,
    /// The largest body of one request.
    max_body: usize,
}

/// A request body read by [`Bodies`]; its bytes count against the budget until it is dropped.
pub struct Buffered {
    bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Buffered {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Bodies {
    /// A reader of bodies up to `max_body` bytes each, `max_buffered` across all requests.
    pub fn new(timeout: Duration, max_buffered: usize, max_body: usize) -> Bodies {
        let limit = max_buffered.min(Semaphore::MAX_PERMITS);
        Bodies {
            timeout,
            budget: Arc::new(Semaphore::new(limit)),
            limit,
            // Within the budget and what one hold can count (u32).
            max_body: max_body.min(limit).min(u32::MAX as usize),
        }
    }

    /// Bytes held by bodies read so far and not yet dropped.
    pub fn buffered(&self) -> usize {
        self.limit - self.budget.available_permits()
    }

    /// Reads `body`, refusing at once one whose `Content-Length` is over the largest body.
    pub async fn read(
        &self,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Buffered, BodyError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body as u64) {
            return Err(BodyError::TooLarge(self.max_body));
        }
        tokio::time::timeout(self.timeout, self.collect(body, declared))
            .await
            .unwrap_or(Err(BodyError::TimedOut))
    }

    /// Collects the body's data. What counts against the budget is the memory held, the buffer's
    /// capacity, not only the bytes in it: a growing buffer holds up to twice what it has read.
    async fn collect<B>(&self, mut body: B, declared: Option<u64>) -> Result<Buffered, BodyError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        let mut bytes: Vec<u8> = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        // The buffer grows no larger than the declared length. It is not allocated up front:
        // a client that declares a megabyte and sends a byte must not hold a megabyte of budget.
        let ceiling = declared
            .and_then(|len| usize::try_from(len).ok())
            .map_or(self.max_body, |len| len.min(self.max_body));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Unreadable)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let needed = bytes.len() + data.len();
            if needed > self.max_body {
                return Err(BodyError::TooLarge(self.max_body));
            }
            if needed > bytes.capacity() {
                let target = bytes.capacity().saturating_mul(2).min(ceiling).max(needed);
                // Counted before it is allocated; a larger allocation than asked is counted too.
                self.hold(&mut held, target - bytes.capacity())?;
                bytes.reserve_exact(target - bytes.len());
                self.hold(&mut held, bytes.capacity().saturating_sub(target))?;
            }
            bytes.extend_from_slice(&data);
        }
        Ok(Buffered {
            bytes: Bytes::from(bytes),
            _held: held,
        })
    }

    /// Counts `n` more bytes against the budget, or refuses when it is spent.
    fn hold(&self, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> Result<(), BodyError> {
        // At most the largest body, so it fits in u32.
        let n = u32::try_from(n).map_err(|_| BodyError::TooLarge(self.max_body))?;
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| BodyError::Busy)?;
        match held.as_mut() {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }

    /// Reads a whole request's JSON body (the admin API's handlers take the request).
    pub async fn read_json<T: DeserializeOwned>(
        &self,
        req: Request<Incoming>,
    ) -> Result<T, BodyError> {
        let (parts, body) = req.into_parts();
        let bytes = self.read(&parts.headers, body).await?;
        decode_json(&bytes).map_err(BodyError::Invalid)
    }
}

/// The reader of requests that reach a handler without a [`Context`] (the admission webhook,
/// which serves on a listener of its own): the defaults of `server.*`.
fn standalone() -> &'static Bodies {
    static BODIES: OnceLock<Bodies> = OnceLock::new();
    BODIES.get_or_init(|| Bodies::new(Duration::from_secs(10), 64 * 1024 * 1024, MAX_LOCAL_BODY))
}

/// Reads a local endpoint's request body through the request's [`Bodies`].
pub async fn read_body(parts: &Parts, body: Incoming) -> Result<Buffered, BodyError> {
    match parts.extensions.get::<Context>() {
        Some(context) => context.bodies.read(&parts.headers, body).await,
        None => standalone().read(&parts.headers, body).await,
    }
}

/// Reads and decodes a JSON body.
pub async fn read_json<T: DeserializeOwned>(parts: &Parts, body: Incoming) -> Result<T, BodyError> {
    let bytes = read_body(parts, body).await?;
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

    #[tokio::test]
    async fn a_body_larger_than_the_whole_budget_is_too_large_not_busy() {
        let bodies = Bodies::new(Duration::from_secs(10), 64 * 1024, MAX_LOCAL_BODY);
        let body = Chunks([Bytes::from(vec![b'a'; 100 * 1024])].into());
        assert!(matches!(
            bodies.collect(body, None).await,
            Err(BodyError::TooLarge(limit)) if limit == 64 * 1024
        ));
        assert_eq!(bodies.buffered(), 0);
    }

    #[test]
    fn sizes_are_named_in_the_largest_whole_unit() {
        assert_eq!(size_text(1024 * 1024), "1 MiB");
        assert_eq!(size_text(4096), "4 KiB");
        assert_eq!(size_text(1500), "1500 bytes");
        assert_eq!(size_text(0), "0 bytes");
    }

    /// A body that yields its chunks one frame at a time.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
        }
    }

    /// 528 KiB in 16 KiB frames: a growing buffer for it ends at 1 MiB.
    fn just_over_half_a_mib() -> Chunks {
        Chunks(
            (0..33)
                .map(|_| Bytes::from(vec![b'a'; 16 * 1024]))
                .collect(),
        )
    }

    #[tokio::test]
    async fn the_body_budget_counts_the_memory_held_not_only_the_bytes_read() {
        let bodies = Bodies::new(Duration::from_secs(10), 1536 * 1024, MAX_LOCAL_BODY);
        let first = bodies.collect(just_over_half_a_mib(), None).await.unwrap();
        assert_eq!(first.len(), 528 * 1024);
        // The first body's buffer holds 1 MiB: a second one no longer fits in 1.5 MiB.
        assert!(bodies.buffered() >= MAX_LOCAL_BODY);
        assert!(matches!(
            bodies.collect(just_over_half_a_mib(), None).await,
            Err(BodyError::Busy)
        ));
        drop(first);
        assert_eq!(bodies.buffered(), 0);
        // With the length declared, the buffer grows no larger than it and both fit.
        let declared = Some(528 * 1024);
        let a = bodies
            .collect(just_over_half_a_mib(), declared)
            .await
            .unwrap();
        let b = bodies
            .collect(just_over_half_a_mib(), declared)
            .await
            .unwrap();
        assert_eq!((a.len(), b.len()), (528 * 1024, 528 * 1024));
        assert_eq!(bodies.buffered(), 2 * 528 * 1024);
        drop((a, b));
        assert_eq!(bodies.buffered(), 0);
        // A declared length is not held before its bytes arrive.
        let one = Chunks([Bytes::from(vec![b'a'; 1024])].into());
        let small = bodies.collect(one, Some(1024 * 1024)).await.unwrap();
        assert_eq!(bodies.buffered(), 1024);
        drop(small);
    }

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
