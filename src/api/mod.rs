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
    serde_json::from_slice(&bytes).map_err(|e| BodyError::Invalid(e.to_string()))
}

/// `204 No Content`.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(crate::body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
