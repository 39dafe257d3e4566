//! Endpoints gatehouse answers itself, and what their handlers share.

pub mod admin;
pub mod domains;
pub mod enroll;
pub mod manage;
pub mod nexus;
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
