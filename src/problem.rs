//! RFC 9457 problem documents: the error format of proxied routes, the Nexus family and the admin API.
//! <https://www.rfc-editor.org/rfc/rfc9457>

use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::Body;

/// Prefix of every problem `type`; the last segment is the stable code clients match on.
pub const TYPE_BASE: &str = "https://gatehouse.dev/problems/";

/// A rejection ready to be rendered: status, stable code, human title and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable, machine-readable; the last segment of `type`.
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    instance: &'a str,
    #[serde(rename = "requestId")]
    request_id: &'a str,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            code,
            title,
            detail: detail.into(),
        }
    }

    /// Renders the problem as `application/problem+json`. `instance` is the request's path.
    pub fn render(&self, instance: &str, request_id: &str) -> Response<Body> {
        let doc = Document {
            kind: format!("{TYPE_BASE}{}", self.code),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            instance,
            request_id,
        };
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        crate::body::with_type(self.status, "application/problem+json", bytes)
    }
}
