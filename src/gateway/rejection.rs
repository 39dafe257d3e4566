//! Why a request is refused: each [`Rejection`], the status, stable code and message the client
//! sees, and the operator's account of it for the access log.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::api::problem::{Challenge, challenge};
use crate::body::Body;
use crate::path::PathError;
use crate::problem::Problem;

/// Everything a request can be refused for on a proxied route. [`Rejection::problem`] maps each
/// to its status, stable code and message; there is no catch-all arm.
#[derive(Debug)]
pub(super) enum Rejection {
    BadPath(PathError),
    /// More than one `Host`, or a `Host` that names another authority than the request target
    /// (absolute form) or `:authority`: the upstream could read another host than gatehouse did.
    AmbiguousHost,
    BadCredentials(&'static str),
    /// The reason is for the log; the client sees one body for every reason.
    Unauthenticated(Option<String>),
    /// Valid credentials without the ApplicationToken `auth.require_application_token` asks for:
    /// answered like [`Rejection::Unauthenticated`], but never with a sign-in redirect, since no
    /// browser can send the header and signing in again would not help.
    NoApplicationToken,
    AuthUnavailable(String),
    /// Too many passwords are being hashed (SPEC §10).
    HashingBusy,
    /// Too many wrong passwords from the client's address; retry after this many seconds.
    TooManyFailures(u64),
    /// A trusted issuer's token for a subject with no user yet, while the issuer is at its
    /// `max_new_users`; retry after this many seconds.
    NewUsersLimited(u64),
    Internal(String),
    MfaRequired,
    /// A browser navigation that must sign in (or, with `step_up`, add a second factor) first:
    /// 302 to `location`; or, for a forward-auth caller that takes only 401 and 403 (nginx), 401
    /// with the same `Location`.
    Redirect {
        location: String,
        step_up: bool,
        as_401: bool,
    },
    MissingScope(String),
    BodyTooLarge(u64),
    UpstreamUnavailable(String),
    UpstreamTimeout,
    /// A forward-auth request from a peer outside `server.trusted_proxies`.
    UntrustedForwardAuth,
    /// A forward-auth request that describes no request.
    NoForwardedRequest,
    /// A forward-auth request whose headers (or Envoy's path) describe different paths.
    ConflictingForwardedRequest,
    /// A cookie-authenticated upgrade whose `Origin` is missing or not allowed (cross-site
    /// WebSocket hijacking).
    OriginNotAllowed,
    /// The principal (or, anonymous, the client address) has `websocket.max_tunnels_per_user`
    /// tunnels open.
    TooManyTunnels(usize),
    /// `CONNECT` other than an RFC 8441 WebSocket: gatehouse is no forward proxy.
    MethodNotAllowed,
    /// Over the route's `rate_limit`; retry after this many seconds.
    RateLimited(u64),
}

impl Rejection {
    /// The `reason` label of an authentication or policy refusal.
    pub(super) fn auth_failure(&self) -> Option<&'static str> {
        match self {
            Rejection::BadCredentials(_) => Some("malformed"),
            Rejection::Unauthenticated(None) => Some("missing"),
            Rejection::Unauthenticated(Some(_)) => Some("invalid"),
            Rejection::NoApplicationToken => Some("missing"),
            Rejection::AuthUnavailable(_) => Some("unavailable"),
            Rejection::HashingBusy => Some("busy"),
            Rejection::TooManyFailures(_) => Some("throttled"),
            Rejection::NewUsersLimited(_) => Some("new_users_limited"),
            Rejection::MfaRequired => Some("mfa_required"),
            Rejection::Redirect { step_up: false, .. } => Some("missing"),
            Rejection::Redirect { step_up: true, .. } => Some("mfa_required"),
            Rejection::MissingScope(_) => Some("missing_scope"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Rejection {
    /// The operator's view, for the access log: more precise than the client's problem detail.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::BadPath(e) => write!(f, "invalid path: {e}"),
            Rejection::AmbiguousHost => f.write_str("several or conflicting Host values"),
            Rejection::BadCredentials(why) => write!(f, "malformed credentials: {why}"),
            Rejection::Unauthenticated(None) => f.write_str("no credential"),
            Rejection::Unauthenticated(Some(why)) => write!(f, "invalid credential: {why}"),
            Rejection::NoApplicationToken => f.write_str("no ApplicationToken"),
            Rejection::AuthUnavailable(why) => write!(f, "cannot verify credentials: {why}"),
            Rejection::HashingBusy => f.write_str("password hashing at capacity"),
            Rejection::TooManyFailures(_) => {
                f.write_str("too many wrong passwords from this address")
            }
            Rejection::NewUsersLimited(_) => {
                f.write_str("the token's issuer is at its bound on new users")
            }
            Rejection::Internal(why) => write!(f, "internal error: {why}"),
            Rejection::MfaRequired => f.write_str("second factor required"),
            Rejection::Redirect { step_up: false, .. } => {
                f.write_str("no credential: sent to sign in")
            }
            Rejection::Redirect { step_up: true, .. } => {
                f.write_str("second factor required: sent to step up")
            }
            Rejection::MissingScope(scope) => write!(f, "missing scope {scope}"),
            Rejection::BodyTooLarge(limit) => write!(f, "body over {limit} bytes"),
            Rejection::UpstreamUnavailable(reason) => write!(f, "upstream unavailable: {reason}"),
            Rejection::UpstreamTimeout => f.write_str("upstream response timeout"),
            Rejection::UntrustedForwardAuth => f.write_str("forward-auth from an untrusted peer"),
            Rejection::NoForwardedRequest => {
                f.write_str("forward-auth without X-Forwarded-Uri or X-Original-URL")
            }
            Rejection::ConflictingForwardedRequest => {
                f.write_str("forward-auth describing different paths")
            }
            Rejection::OriginNotAllowed => {
                f.write_str("cookie-authenticated upgrade from an origin not allowed")
            }
            Rejection::TooManyTunnels(max) => write!(f, "{max} tunnels already open"),
            Rejection::MethodNotAllowed => f.write_str("CONNECT without a WebSocket protocol"),
            Rejection::RateLimited(_) => f.write_str("over the route's rate_limit"),
        }
    }
}

impl Rejection {
    /// The client's view: status, stable code, title and detail.
    fn problem(&self) -> Problem {
        match self {
            Rejection::BadPath(e) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-path",
                "Invalid request path",
                e.to_string(),
            ),
            Rejection::AmbiguousHost => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-host",
                "Ambiguous host",
                "The request must name one host: one Host header, agreeing with the request \
                 target or :authority.",
            ),
            Rejection::BadCredentials(why) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-credentials",
                "Malformed credentials",
                format!("The request's credentials cannot be read: {why}."),
            ),
            Rejection::Unauthenticated(_) | Rejection::NoApplicationToken => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "This route needs valid credentials.",
            ),
            Rejection::AuthUnavailable(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth-unavailable",
                "Credentials cannot be verified",
                "Gatehouse cannot verify credentials right now; try again shortly.",
            ),
            Rejection::HashingBusy => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too busy",
                "Gatehouse is checking too many passwords right now; try again shortly.",
            ),
            Rejection::TooManyFailures(_) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-failures",
                "Too many failed sign-ins",
                "Too many wrong passwords came from this address; try again later.",
            ),
            Rejection::NewUsersLimited(_) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-new-users",
                "Too many new users",
                "Too many accounts were created from this identity provider's tokens recently; \
                 yours will be created when you try again later.",
            ),
            Rejection::Internal(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "Gatehouse failed to handle the request.",
            ),
            Rejection::MfaRequired => Problem::new(
                StatusCode::FORBIDDEN,
                "mfa-required",
                "Second factor required",
                "This route needs a credential that includes a second factor.",
            ),
            Rejection::Redirect { .. } => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "Sign in to continue: follow the Location header.",
            ),
            Rejection::MissingScope(scope) => Problem::new(
                StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
                format!("This route needs the scope `{scope}`."),
            ),
            Rejection::BodyTooLarge(limit) => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("Request bodies on this route are limited to {limit} bytes."),
            ),
            Rejection::UpstreamUnavailable(_) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-unavailable",
                "Upstream unavailable",
                "The application could not be reached.",
            ),
            Rejection::UpstreamTimeout => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timed out",
                "The application did not answer in time.",
            ),
            Rejection::UntrustedForwardAuth => Problem::new(
                StatusCode::FORBIDDEN,
                "untrusted-forward-auth",
                "Not a trusted proxy",
                "Forward-auth answers only peers listed in server.trusted_proxies.",
            ),
            Rejection::NoForwardedRequest => Problem::new(
                StatusCode::BAD_REQUEST,
                "no-forwarded-request",
                "No request to decide",
                "Send the request to decide in X-Forwarded-Uri (with X-Forwarded-Method) or X-Original-URL.",
            ),
            Rejection::ConflictingForwardedRequest => Problem::new(
                StatusCode::BAD_REQUEST,
                "conflicting-forwarded-request",
                "Conflicting request descriptions",
                "X-Forwarded-Uri, X-Original-URL and the path after /auth/verify must name one path.",
            ),
            Rejection::OriginNotAllowed => Problem::new(
                StatusCode::FORBIDDEN,
                "origin-not-allowed",
                "Origin not allowed",
                "A WebSocket authenticated by the session cookie must be opened from this \
                 site's own pages (or an origin in websocket.allowed_origins).",
            ),
            Rejection::TooManyTunnels(max) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-tunnels",
                "Too many open connections",
                format!(
                    "At most {max} WebSocket connections may be open at once; close one first."
                ),
            ),
            Rejection::MethodNotAllowed => Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "CONNECT is accepted only to open a WebSocket (RFC 8441).",
            ),
            Rejection::RateLimited(seconds) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("Too many requests to this route; try again in {seconds} s."),
            ),
        }
    }

    /// The gRPC status code (and its message) a gRPC client gets for this refusal, by the
    /// HTTP status a problem document would have (gRPC's own mapping, refined where gatehouse
    /// knows more).
    fn grpc_status(&self) -> (u8, &'static str) {
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const PERMISSION_DENIED: u8 = 7;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        const UNAUTHENTICATED: u8 = 16;
        match self {
            Rejection::BadPath(_) => (INVALID_ARGUMENT, "invalid request path"),
            Rejection::AmbiguousHost => (INVALID_ARGUMENT, "ambiguous host"),
            Rejection::BadCredentials(_) => (UNAUTHENTICATED, "malformed credentials"),
            Rejection::Unauthenticated(_)
            | Rejection::NoApplicationToken
            | Rejection::Redirect { step_up: false, .. } => {
                (UNAUTHENTICATED, "authentication required")
            }
            Rejection::AuthUnavailable(_) => (UNAVAILABLE, "credentials cannot be verified"),
            Rejection::HashingBusy => (UNAVAILABLE, "too busy"),
            Rejection::TooManyFailures(_) => (RESOURCE_EXHAUSTED, "too many failed sign-ins"),
            Rejection::NewUsersLimited(_) => (RESOURCE_EXHAUSTED, "too many new users"),
            Rejection::Internal(_) => (INTERNAL, "internal error"),
            Rejection::MfaRequired | Rejection::Redirect { step_up: true, .. } => {
                (PERMISSION_DENIED, "second factor required")
            }
            Rejection::MissingScope(_) => (PERMISSION_DENIED, "insufficient scope"),
            Rejection::BodyTooLarge(_) => (RESOURCE_EXHAUSTED, "request too large"),
            Rejection::UpstreamUnavailable(_) => (UNAVAILABLE, "upstream unavailable"),
            Rejection::UpstreamTimeout => (DEADLINE_EXCEEDED, "upstream timed out"),
            Rejection::UntrustedForwardAuth => (PERMISSION_DENIED, "not a trusted proxy"),
            Rejection::NoForwardedRequest | Rejection::ConflictingForwardedRequest => {
                (INVALID_ARGUMENT, "no request to decide")
            }
            Rejection::OriginNotAllowed => (PERMISSION_DENIED, "origin not allowed"),
            Rejection::TooManyTunnels(_) => (RESOURCE_EXHAUSTED, "too many open connections"),
            Rejection::MethodNotAllowed => (UNIMPLEMENTED, "method not allowed"),
            Rejection::RateLimited(_) => (RESOURCE_EXHAUSTED, "too many requests"),
        }
    }

    /// The status a problem document for this refusal has (what the access log and metrics
    /// report, whichever form the client got).
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Rejection::Redirect { as_401: false, .. } => StatusCode::FOUND,
            other => other.problem().status,
        }
    }
}

/// A gRPC client's refusal: HTTP 200 with the status in the headers and no message (gRPC's
/// "trailers-only" response), as a gRPC client reads it rather than a problem document.
pub(super) fn render_grpc(rejection: &Rejection) -> Response<Body> {
    let (code, message) = rejection.grpc_status();
    let mut response = Response::new(crate::body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    // Every message is plain ASCII without `%`: no percent-encoding needed.
    headers.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    response
}

pub(super) const GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
pub(super) const GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`), whose client
/// reads refusals as gRPC statuses and which `upstream.protocol = "auto"` sends over HTTP/2.
/// gRPC-Web (`application/grpc-web…`) is not: it travels over HTTP/1.1, and its clients read HTTP
/// statuses.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= GRPC.len()
            && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// The problem document for `rejection`, with `Retry-After` when the client may try again later
/// and the challenges of a 401.
pub(super) fn render(rejection: &Rejection, path: &str, request_id: &str) -> Response<Body> {
    if let Rejection::Redirect {
        location,
        as_401: false,
        ..
    } = rejection
    {
        return crate::body::redirect(StatusCode::FOUND, location);
    }
    let mut response = rejection.problem().render(path, request_id);
    let retry_after = match rejection {
        Rejection::HashingBusy => Some(crate::auth::BUSY_RETRY_AFTER),
        Rejection::TooManyFailures(seconds)
        | Rejection::NewUsersLimited(seconds)
        | Rejection::RateLimited(seconds) => Some(*seconds),
        _ => None,
    };
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if matches!(
        rejection,
        Rejection::Unauthenticated(_) | Rejection::NoApplicationToken | Rejection::Redirect { .. }
    ) {
        challenge(response.headers_mut(), Challenge::BearerOrBasic);
    }
    if let Rejection::Redirect { location, .. } = rejection
        && let Ok(v) = HeaderValue::from_str(location)
    {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_map_to_their_statuses() {
        let cases = [
            (Rejection::BadPath(PathError::EncodedSlash), 400),
            (Rejection::AmbiguousHost, 400),
            (Rejection::BadCredentials("two"), 400),
            (Rejection::Unauthenticated(None), 401),
            (Rejection::AuthUnavailable("down".into()), 503),
            (Rejection::Internal("x".into()), 500),
            (Rejection::MfaRequired, 403),
            (Rejection::MissingScope("x".into()), 403),
            (Rejection::BodyTooLarge(1), 413),
            (Rejection::UpstreamUnavailable("refused".into()), 502),
            (Rejection::UpstreamTimeout, 504),
            (Rejection::OriginNotAllowed, 403),
            (Rejection::TooManyTunnels(1), 429),
            (Rejection::RateLimited(3), 429),
            (Rejection::MethodNotAllowed, 405),
        ];
        for (rejection, status) in cases {
            assert_eq!(rejection.problem().status.as_u16(), status, "{rejection:?}");
        }
    }

    #[test]
    fn grpc_refusals_carry_their_status_in_headers() {
        let cases = [
            (Rejection::Unauthenticated(None), "16"),
            (Rejection::MissingScope("x".into()), "7"),
            (Rejection::MfaRequired, "7"),
            (Rejection::TooManyFailures(5), "8"),
            (Rejection::RateLimited(5), "8"),
            (Rejection::UpstreamUnavailable("down".into()), "14"),
            (Rejection::UpstreamTimeout, "4"),
        ];
        for (rejection, code) in cases {
            let response = render_grpc(&rejection);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["grpc-status"], code, "{rejection:?}");
            assert_eq!(response.headers()["content-type"], "application/grpc");
            assert!(hyper::body::Body::is_end_stream(response.body()));
        }
    }

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        let is = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&h)
        };
        assert!(is("application/grpc"));
        assert!(is("application/grpc+proto"));
        assert!(is("Application/GRPC+json"));
        assert!(!is("application/grpc-web+proto"));
        assert!(!is("application/grpcx"));
        assert!(!is("application/json"));
    }
}
