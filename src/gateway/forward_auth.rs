//! Forward-auth (SPEC §6): a trusted proxy asks whether the request it describes may pass, and
//! gets the decision the inline proxy would make, with the identity headers to pass on.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response};

use super::rejection::Rejection;
use super::{Arrival, Gateway, Outcome};
use crate::api::table::FORWARD_AUTH_PATH;
use crate::path;
use crate::proxy::forward::{self, DescribeError};

/// What forward-auth requests count as in the request metrics, whatever their answer.
const CLASS: &str = "forward_auth";

impl Gateway {
    /// The decision for the request a trusted proxy describes, as 200 with identity headers (and
    /// `Cookie`: the request's cookies without gatehouse's), or the inline proxy's 401/403. The described request comes from `X-Forwarded-Uri` (with
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
        // The described method (as each describing header names it), and any the described
        // request's override headers name: the request must pass the rule of each.
        let named = described_methods(&parts.headers, &parts.method);
        let named: Vec<&str> = named.iter().map(String::as_str).collect();
        let methods = crate::routes::acted_methods(&named, &parts.headers);
        let key = path::match_key(&described);
        if method_undescribed(&parts.headers)
            && self
                .rules
                .candidates(&key)
                .any(|(_, rule)| !rule.methods.is_empty())
        {
            warn_method_undescribed(&parts.method);
        }
        let rules = self.rules.rules_for_request(&key, &methods, arrival.client);
        let principal = match self.authorise(&rules, &parts.headers, arrival.client).await {
            Ok(principal) => principal,
            Err(rejection) => {
                let method = described_method(&parts.headers, &parts.method);
                let target = match described_query(&parts.headers) {
                    Some(query) => format!("{described}?{query}"),
                    None => described,
                };
                let rejection = self.for_navigation(
                    rejection,
                    &method,
                    &parts.headers,
                    &target,
                    wants_401(&parts.headers),
                );
                return Outcome::refused(CLASS, rejection);
            }
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
        // The request's cookies without gatehouse's, for a proxy that sets the forwarded
        // request's `Cookie` from this answer (Traefik's authResponseHeaders, nginx's
        // auth_request_set): the session id never reaches the application (SPEC §11).
        if let Some(cookies) = self.sessions.app_cookies(&parts.headers) {
            response.headers_mut().insert(header::COOKIE, cookies);
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

/// The described request's methods, as `X-Forwarded-Method` (Traefik, Caddy) and
/// `X-Original-Method` (nginx's usual `proxy_set_header`) name them, each value once; when neither
/// is sent, `own`, the forward-auth request's method: Envoy's `ext_authz` checks with the
/// original request's method, and nginx's `auth_request` and Traefik check with `GET`.
/// [`crate::routes::acted_methods`] drops repeats.
fn described_methods(headers: &HeaderMap, own: &Method) -> Vec<String> {
    let mut methods: Vec<String> = [X_FORWARDED_METHOD, X_ORIGINAL_METHOD]
        .into_iter()
        .flat_map(|name| headers.get_all(name))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if methods.is_empty() {
        methods.push(own.as_str().to_owned());
    }
    methods
}

/// Whether a proxy describes the request by its URI (`X-Forwarded-Uri`, `X-Original-URL`: nginx,
/// Traefik, Caddy) but names no method: the check's own method stands in for it, which for
/// nginx's `auth_request` is always `GET`. (Envoy describes by the path after `/auth/verify` and
/// checks with the original method.)
fn method_undescribed(headers: &HeaderMap) -> bool {
    let named = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().is_empty())
    };
    !named(X_FORWARDED_METHOD)
        && !named(X_ORIGINAL_METHOD)
        && (named(X_FORWARDED_URI) || named(X_ORIGINAL_URL))
}

/// Says, at most once an hour, that forward-auth requests meet rules with `methods` but name
/// no method, so every method is decided as the check's own (`own`): a proxy that checks with
/// `GET` lets a `POST` through a rule that makes only `GET` public.
fn warn_method_undescribed(own: &Method) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(3600)) {
        return;
    }
    *last = Some(std::time::Instant::now());
    tracing::warn!(
        method = %own,
        "forward-auth requests name no X-Forwarded-Method, and rules with `methods` apply to \
         the paths they describe: every request is decided as {own}; have the proxy send the \
         method (nginx: proxy_set_header X-Forwarded-Method $request_method)"
    );
}

/// The described request's method (`X-Forwarded-Method`; the forward-auth request's own, `own`,
/// when absent, as [`described_methods`]).
fn described_method(headers: &HeaderMap, own: &Method) -> Method {
    headers
        .get(X_FORWARDED_METHOD)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| own.clone())
}

/// The described request's query, from `X-Forwarded-Uri` or `X-Original-URL`.
fn described_query(headers: &HeaderMap) -> Option<String> {
    [X_FORWARDED_URI, X_ORIGINAL_URL]
        .into_iter()
        .flat_map(|name| headers.get_all(name))
        .filter_map(|v| v.to_str().ok())
        .find(|v| !v.is_empty())
        .and_then(|v| v.split_once('?'))
        .map(|(_, query)| query.split('#').next().unwrap_or_default().to_owned())
        .filter(|q| !q.is_empty())
}

/// Whether the caller takes only 2xx, 401 and 403 (nginx's `auth_request`), and so wants a
/// sign-in redirect as 401 with `Location` (`X-Forwarded-Auth-Response: 401`).
fn wants_401(headers: &HeaderMap) -> bool {
    headers
        .get(X_FORWARDED_AUTH_RESPONSE)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"401")
}

const X_FORWARDED_METHOD: &str = "x-forwarded-method";
const X_ORIGINAL_METHOD: &str = "x-original-method";
const X_FORWARDED_URI: &str = "x-forwarded-uri";
const X_ORIGINAL_URL: &str = "x-original-url";
const X_FORWARDED_AUTH_RESPONSE: &str = "x-forwarded-auth-response";
