//! Forward-auth (SPEC §6): a trusted proxy asks whether the request it describes may pass, and
//! gets the decision the inline proxy would make, with the identity headers to pass on.

use http::Response;
use http::header::{self, HeaderValue};
use http::request::Parts;

use super::rejection::Rejection;
use super::{Arrival, Gateway, Outcome};
use crate::api::table::FORWARD_AUTH_PATH;
use crate::path;
use crate::proxy::forward::{self, DescribeError};

/// What forward-auth requests count as in the request metrics, whatever their answer.
const CLASS: &str = "forward_auth";

impl Gateway {
    /// The decision for the request a trusted proxy describes, as 200 with identity headers, or
    /// the inline proxy's 401/403. The described request comes from `X-Forwarded-Uri` (with
    /// `X-Forwarded-Method`), else `X-Original-URL`, else the path after `/auth/verify` (Envoy's
    /// `ext_authz` with a path prefix); `path` is the forward-auth request's normalised path.
    pub(super) async fn forward_auth(
        &self,
        parts: &Parts,
        path: &str,
        arrival: &Arrival,
    ) -> Outcome {
        if !arrival.trusted {
            return Outcome::refused(CLASS, Rejection::UntrustedForwardAuth);
        }
        let described = match described_path(parts, path) {
            Ok(described) => described,
            Err(rejection) => return Outcome::refused(CLASS, rejection),
        };
        let rule = self.rules.rule_for(&path::match_key(&described));
        let principal = match self.authorise(rule, &parts.headers, arrival.client).await {
            Ok(principal) => principal,
            Err(rejection) => return Outcome::refused(CLASS, rejection),
        };
        let mut response = Response::new(crate::body::empty());
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(principal) = &principal
            && let Err(rejection) = self.set_identity(response.headers_mut(), principal)
        {
            return Outcome::refused(CLASS, rejection);
        }
        Outcome {
            principal,
            ..Outcome::new(CLASS, Ok(response))
        }
    }
}

/// The normalised path of the request being decided, from the describing headers and the
/// forward-auth request's own `path`.
fn described_path(parts: &Parts, path: &str) -> Result<String, Rejection> {
    // Envoy's described path is what follows the endpoint's two segments, taken from the
    // normalised path so that its escapes reach the normaliser again undecoded.
    let described = path
        .match_indices('/')
        .nth(2)
        .map_or("", |(i, _)| &path[i..]);
    let path = format!("{FORWARD_AUTH_PATH}{described}");
    forward::described_path(&parts.headers, &path).map_err(|e| match e {
        DescribeError::Missing => Rejection::NoForwardedRequest,
        DescribeError::Conflicting => Rejection::ConflictingForwardedRequest,
        DescribeError::Path(e) => Rejection::BadPath(e),
    })
}
