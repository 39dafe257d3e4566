//! The per-request pipeline of the public listeners (SPEC §2):
//! sanitise headers → normalise the path → route rule → authenticate → decide → forward.
//!
//! [`Gateway::handle`] never fails: every refusal becomes a problem document, and every request
//! leaves one access-log line.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;

use std::sync::Arc;

use crate::api::enroll::EnrollPage;
use crate::api::manage::Manage;
use crate::api::nexus::Nexus;
use crate::api::table::{FORWARD_AUTH_PATH, JWKS_PATH};
use crate::api::ws::endpoints::Ws;
use crate::app::App;
use crate::auth::policy::{self, Decision};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::body::{Body, BoxError, full};
use crate::meter::Meter;
use crate::path::{self, PathError};
use crate::problem::Problem;
use crate::proxy::forward::{self, ForwardError, Origin, Upstream};
use crate::proxy::headers::IdentityHeaders;
use crate::proxy::headers::Sanitizer;
use crate::routes::{self, RouteTable};
use crate::telemetry::{self, AccessRecord};
use crate::tokens::Tokens;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Everything a request can be refused for on a proxied route. [`Rejection::problem`] maps each
/// to its status, stable code and message; there is no catch-all arm.
#[derive(Debug)]
enum Rejection {
    BadPath(PathError),
    /// More than one `Host`, or a `Host` that names another authority than the request target
    /// (absolute form) or `:authority`: the upstream could read another host than gatehouse did.
    AmbiguousHost,
    BadCredentials(&'static str),
    /// The reason is for the log; the client sees one body for every reason.
    Unauthenticated(Option<String>),
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
}

impl Rejection {
    /// The `reason` label of an authentication or policy refusal.
    fn auth_failure(&self) -> Option<&'static str> {
        match self {
            Rejection::BadCredentials(_) => Some("malformed"),
            Rejection::Unauthenticated(None) => Some("missing"),
            Rejection::Unauthenticated(Some(_)) => Some("invalid"),
            Rejection::AuthUnavailable(_) => Some("unavailable"),
            Rejection::HashingBusy => Some("busy"),
            Rejection::TooManyFailures(_) => Some("throttled"),
            Rejection::NewUsersLimited(_) => Some("new_users_limited"),
            Rejection::MfaRequired => Some("mfa_required"),
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
        }
    }
}

impl Rejection {
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
            Rejection::Unauthenticated(_) => Problem::new(
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
        }
    }
}

/// What one request came to, for the response and the access log.
struct Outcome {
    response: Result<Response<Body>, Rejection>,
    path: String,
    upstream_latency: Option<Duration>,
    principal: Option<Principal>,
    /// A request id of the endpoint's own, replacing the client's (the Manage family's).
    request_id: Option<String>,
    /// The route's access, or what answered instead (metrics label).
    class: &'static str,
}

/// The public listeners' request handler.
pub struct Gateway {
    routes: RouteTable,
    sanitizer: Sanitizer,
    upstream: Upstream,
    trusted_proxies: Vec<IpNet>,
    max_body: Option<u64>,
    auth: Arc<Authenticator>,
    tokens: Arc<Tokens>,
    identity: IdentityHeaders,
    require_app: bool,
    assertion_audience: String,
    nexus: Option<Nexus>,
    ws: Option<Ws>,
    manage: Option<Manage>,
    enroll: EnrollPage,
    meter: Arc<Meter>,
    bodies: Arc<crate::api::Bodies>,
}

impl Gateway {
    /// Keeps removing from clients the identity header names `previous` removed (see
    /// [`Sanitizer::keep_removing`]); a reload's new pipeline takes them from the one it replaces.
    pub fn keep_removing_identity_of(&mut self, previous: &Gateway) {
        self.sanitizer.keep_removing(&previous.sanitizer);
    }

    /// The pipeline for `config` (the app's own, or a reloaded one) around the app's state.
    pub fn new(app: &App, config: &crate::config::Config) -> Gateway {
        Gateway {
            routes: RouteTable::new(&config.routes, config.proxy.default),
            sanitizer: Sanitizer::new(&config.identity_headers),
            upstream: Upstream::new(&config.upstream),
            trusted_proxies: config.server.trusted_proxies.clone(),
            max_body: config.proxy.max_body,
            auth: app.auth.clone(),
            tokens: app.tokens.clone(),
            identity: IdentityHeaders::new(&config.identity_headers),
            require_app: config.auth.require_application_token,
            assertion_audience: config.upstream.audience.clone(),
            enroll: EnrollPage::new(app.mfa.clone(), config.mfa.totp.digits),
            meter: app.meter.clone(),
            bodies: app.bodies.clone(),
            ws: config.apis.ws.enabled.then(|| {
                Ws::new(
                    &config.apis.ws.base_path,
                    app.auth.clone(),
                    app.mfa.clone(),
                    app.store.clone(),
                )
            }),
            manage: config.apis.manage.family.enabled.then(|| {
                Manage::new(
                    &config.apis.manage,
                    app.auth.clone(),
                    app.mfa.clone(),
                    app.store.clone(),
                    app.clock.clone(),
                )
            }),
            nexus: config.apis.nexus.enabled.then(|| {
                Nexus::new(
                    &config.apis.nexus.base_path,
                    app.auth.clone(),
                    app.mfa.clone(),
                    app.domains.clone(),
                )
            }),
        }
    }

    /// Authenticates the request (except on public routes, where credentials are not even looked
    /// at) and applies `rule`: the principal whose identity goes upstream, if any.
    async fn authorise(
        &self,
        rule: &crate::config::Route,
        headers: &http::HeaderMap,
        client: IpAddr,
    ) -> Result<Option<Principal>, Rejection> {
        let principal = if rule.access == crate::config::Access::Public {
            None
        } else {
            self.auth
                .authenticate(headers, client)
                .await
                .map_err(|e| match e {
                    AuthError::Malformed(why) => Rejection::BadCredentials(why),
                    AuthError::Invalid(why) => Rejection::Unauthenticated(Some(why)),
                    AuthError::Unavailable(why) => Rejection::AuthUnavailable(why),
                    AuthError::Busy => Rejection::HashingBusy,
                    AuthError::Throttled(seconds) => Rejection::TooManyFailures(seconds),
                    AuthError::NewUsersLimited(seconds) => Rejection::NewUsersLimited(seconds),
                })?
        };
        match policy::decide_route(rule, principal.as_ref(), self.require_app) {
            Decision::Allow => Ok(principal),
            Decision::Unauthenticated => Err(Rejection::Unauthenticated(None)),
            Decision::MfaRequired => Err(Rejection::MfaRequired),
            Decision::MissingScope(scope) => Err(Rejection::MissingScope(scope)),
        }
    }

    /// Writes the principal's identity headers, with an assertion, into `headers`.
    fn set_identity(
        &self,
        headers: &mut http::HeaderMap,
        principal: &Principal,
    ) -> Result<(), Rejection> {
        self.identity
            .set(headers, principal, || {
                self.tokens.assertion(principal, &self.assertion_audience)
            })
            .map_err(|e| Rejection::Internal(format!("cannot sign the assertion: {e}")))
    }

    /// Forward-auth (SPEC §6): the decision for the request a trusted proxy describes, as 200 with
    /// identity headers, or the inline proxy's 401/403. The described request comes from
    /// `X-Forwarded-Uri` (with `X-Forwarded-Method`), else `X-Original-URL`, else the path after
    /// `/auth/verify` (Envoy's `ext_authz` with a path prefix).
    async fn forward_auth(
        &self,
        parts: &http::request::Parts,
        path: &str,
        conn: ConnInfo,
        trusted: bool,
        outcome: &mut Outcome,
    ) {
        outcome.class = "forward_auth";
        if !trusted {
            outcome.response = Err(Rejection::UntrustedForwardAuth);
            return;
        }
        let described = match forward::described_path(&parts.headers, path) {
            Ok(described) => described,
            Err(e) => {
                outcome.response = Err(match e {
                    forward::DescribeError::Missing => Rejection::NoForwardedRequest,
                    forward::DescribeError::Conflicting => Rejection::ConflictingForwardedRequest,
                    forward::DescribeError::Path(e) => Rejection::BadPath(e),
                });
                return;
            }
        };
        let rule = self.routes.rule_for(&path::match_key(&described));
        let client = self.client(conn, &parts.headers, trusted);
        let principal = match self.authorise(rule, &parts.headers, client).await {
            Ok(principal) => principal,
            Err(rejection) => {
                outcome.response = Err(rejection);
                return;
            }
        };
        let mut response = Response::new(crate::body::empty());
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(principal) = &principal
            && let Err(rejection) = self.set_identity(response.headers_mut(), principal)
        {
            outcome.response = Err(rejection);
            return;
        }
        outcome.principal = principal;
        outcome.response = Ok(response);
    }

    /// The client's address as gatehouse believes it: the socket peer, or from a trusted proxy
    /// the nearest untrusted address it names in `X-Forwarded-For`.
    fn client(&self, conn: ConnInfo, headers: &http::HeaderMap, trusted: bool) -> IpAddr {
        let peer = conn.peer.ip().to_canonical();
        if trusted {
            forward::forwarded_client(peer, headers, &self.trusted_proxies)
        } else {
            peer
        }
    }

    /// What local endpoints learn of the request: its client and the body reader.
    fn local(&self, parts: &mut http::request::Parts, conn: ConnInfo, trusted: bool) {
        let client = self.client(conn, &parts.headers, trusted);
        parts.extensions.insert(crate::api::Context {
            client,
            bodies: self.bodies.clone(),
        });
    }

    fn is_trusted(&self, peer: SocketAddr) -> bool {
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Handles one request from a public listener. Never fails.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let trusted = self.is_trusted(conn.peer);
        self.sanitizer.clean_request(&mut parts.headers, trusted);
        let request_id = request_id(&parts.headers);

        let method = parts.method.clone();
        let query = parts.uri.query().map(str::to_owned);
        let client = self.client(conn, &parts.headers, trusted);
        let mut outcome = self.route(parts, body, conn, trusted, &request_id).await;
        let request_id = outcome
            .request_id
            .take()
            .and_then(|id| HeaderValue::from_str(&id).ok())
            .unwrap_or(request_id);
        let id = request_id.to_str().unwrap_or_default();
        if let Err(rejection) = &outcome.response
            && let Some(reason) = rejection.auth_failure()
        {
            self.meter.auth_failure(reason);
        }
        if let Some(latency) = outcome.upstream_latency {
            self.meter.upstream_latency(latency);
        }
        let (mut response, error) = match outcome.response {
            Ok(response) => (response, None),
            Err(rejection) => (
                render(&rejection, &outcome.path, id),
                Some(rejection.to_string()),
            ),
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID, request_id.clone());
        self.meter
            .request(outcome.class, response.status().as_u16());
        telemetry::access(&AccessRecord {
            method: method.as_str(),
            path: &outcome.path,
            query: query.as_deref(),
            status: response.status().as_u16(),
            client,
            latency: started.elapsed(),
            upstream_latency: outcome.upstream_latency,
            request_id: id,
            user_id: outcome.principal.as_ref().map(|p| p.user_id.as_str()),
            error: error.as_deref(),
        });
        response
    }

    async fn route(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        conn: ConnInfo,
        trusted: bool,
        request_id: &HeaderValue,
    ) -> Outcome {
        let mut outcome = Outcome {
            response: Err(Rejection::Unauthenticated(None)),
            path: String::new(),
            upstream_latency: None,
            principal: None,
            request_id: None,
            class: "local",
        };
        outcome.path = match path::normalize(parts.uri.path()) {
            Ok(path) => path,
            Err(e) => {
                outcome.response = Err(Rejection::BadPath(e));
                outcome.path = parts.uri.path().to_owned();
                outcome.class = "invalid";
                return outcome;
            }
        };
        if ambiguous_host(&parts) {
            outcome.response = Err(Rejection::AmbiguousHost);
            outcome.class = "invalid";
            return outcome;
        }
        let path = outcome.path.as_str();
        // Local endpoints and route rules see the path without `;` parameters, in any letter
        // case (SPEC §2); the upstream gets `path` itself.
        let key = path::match_key(path);
        let key = key.as_ref();

        if routes::strip_prefix_ignore_case(key, FORWARD_AUTH_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            // Envoy's described path is what follows the endpoint's two segments, taken from the
            // normalised path so that its escapes reach the normaliser again undecoded.
            let described = path
                .match_indices('/')
                .nth(2)
                .map_or("", |(i, _)| &path[i..]);
            let path = format!("{FORWARD_AUTH_PATH}{described}");
            self.forward_auth(&parts, &path, conn, trusted, &mut outcome)
                .await;
            return outcome;
        }
        if routes::eq_ignore_case(key, JWKS_PATH)
            && matches!(parts.method, http::Method::GET | http::Method::HEAD)
        {
            outcome.response = Ok(self.jwks());
            return outcome;
        }
        if let Some(ticket_id) = EnrollPage::ticket_id(key) {
            self.local(&mut parts, conn, trusted);
            outcome.response = Ok(self.enroll.handle(&parts, body, ticket_id).await);
            return outcome;
        }
        if let Some(ws) = &self.ws
            && let Some(endpoint) = ws.endpoint(key)
        {
            self.local(&mut parts, conn, trusted);
            outcome.response = Ok(ws.handle(endpoint, &parts, body).await);
            return outcome;
        }
        if let Some(manage) = &self.manage
            && let Some(endpoint) = manage.endpoint(key)
        {
            self.local(&mut parts, conn, trusted);
            // Every Manage answer carries a fresh `apiRequestId`, also the request's id.
            let id = uuid::Uuid::new_v4().to_string();
            outcome.response = Ok(manage.handle(endpoint, &parts, body, &id).await);
            outcome.request_id = Some(id);
            return outcome;
        }
        if let Some(nexus) = &self.nexus
            && let Some(endpoint) = nexus.endpoint(key)
        {
            self.local(&mut parts, conn, trusted);
            outcome.response = Ok(nexus
                .handle(
                    endpoint,
                    &parts,
                    body,
                    key,
                    request_id.to_str().unwrap_or_default(),
                )
                .await);
            return outcome;
        }

        let rule = self.routes.rule_for(key);
        outcome.class = rule.access.as_str();
        let client = self.client(conn, &parts.headers, trusted);
        let principal = match self.authorise(rule, &parts.headers, client).await {
            Ok(principal) => principal,
            Err(rejection) => {
                outcome.response = Err(rejection);
                return outcome;
            }
        };
        if let Some(principal) = &principal {
            // Credentials gatehouse consumed do not travel on: the upstream gets the assertion.
            parts.headers.remove(header::AUTHORIZATION);
            parts.headers.remove(self.auth.application_header());
            if let Err(rejection) = self.set_identity(&mut parts.headers, principal) {
                outcome.response = Err(rejection);
                return outcome;
            }
        }
        outcome.principal = principal;

        let body = match self.max_body {
            Some(limit) => {
                if content_length(&parts.headers).is_some_and(|len| len > limit) {
                    outcome.response = Err(Rejection::BodyTooLarge(limit));
                    return outcome;
                }
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                Limited::new(body, limit).boxed_unsync()
            }
            None => body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
        };

        let host = forward::requested_host(&parts.uri, &parts.headers);
        if !parts.headers.contains_key(header::HOST)
            && let Some(v) = &host
        {
            parts.headers.insert(header::HOST, v.clone());
        }
        let origin = Origin {
            peer: conn.peer,
            tls: conn.tls,
            trusted,
        };
        self.sanitizer.clean_upstream(&mut parts.headers, trusted);
        forward::set_forwarding_headers(&mut parts.headers, origin, host);
        parts.headers.insert(X_REQUEST_ID, request_id.clone());

        // The request's own path and query, shared rather than copied, when gatehouse changes
        // neither (the usual case).
        let query = parts.uri.query();
        let target = if path == parts.uri.path() && !query.is_some_and(has_access_key) {
            parts.uri.path_and_query().cloned()
        } else {
            let target = match query.map(without_access_keys) {
                Some(q) if !q.is_empty() => format!("{path}?{q}"),
                _ => path.to_owned(),
            };
            PathAndQuery::try_from(target).ok()
        };
        let Some(target) = target else {
            outcome.response = Err(Rejection::BadPath(PathError::BadEscape));
            return outcome;
        };
        let sent = Instant::now();
        let result = self
            .upstream
            .forward(Request::from_parts(parts, body), target)
            .await;
        outcome.upstream_latency = Some(sent.elapsed());
        outcome.response = result.map_err(|e| match e {
            ForwardError::Timeout => Rejection::UpstreamTimeout,
            ForwardError::Unavailable(e) => Rejection::UpstreamUnavailable(error_chain(&e)),
        });
        outcome
    }
}

impl Gateway {
    fn jwks(&self) -> Response<Body> {
        let bytes = serde_json::to_vec(&self.tokens.jwks()).unwrap_or_default();
        let mut response = Response::new(full(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        );
        response
    }
}

/// Whether the request names its host more than once, or in two ways that disagree (RFC 9112
/// §3.2, RFC 9113 §8.3.1): several `Host` fields, a `Host` that is not an authority, or one that
/// differs from an absolute-form target's or HTTP/2's `:authority`.
fn ambiguous_host(parts: &http::request::Parts) -> bool {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return false;
    };
    // An empty `Host` is allowed for a target without an authority (RFC 9112 §3.2).
    let malformed = !host.is_empty() && http::uri::Authority::try_from(host.as_bytes()).is_err();
    if hosts.next().is_some() || malformed {
        return true;
    }
    parts.uri.authority().is_some_and(|authority| {
        !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes())
    })
}

/// Whether a query parameter (`name=value` or `name`) is a `WsAccessKey` (any letter case): a
/// legacy credential that the upstream must never see.
fn is_access_key(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or_default();
    name.eq_ignore_ascii_case("wsaccesskey")
}

/// Whether the query has a `WsAccessKey` parameter.
fn has_access_key(query: &str) -> bool {
    query.split('&').any(is_access_key)
}

/// The query without `WsAccessKey` parameters.
fn without_access_keys(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !is_access_key(pair))
        .collect::<Vec<_>>()
        .join("&")
}

fn render(rejection: &Rejection, path: &str, request_id: &str) -> Response<Body> {
    let mut response = rejection.problem().render(path, request_id);
    let retry_after = match rejection {
        Rejection::HashingBusy => Some(crate::auth::BUSY_RETRY_AFTER),
        Rejection::TooManyFailures(seconds) | Rejection::NewUsersLimited(seconds) => Some(*seconds),
        _ => None,
    };
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if matches!(rejection, Rejection::Unauthenticated(_)) {
        for challenge in CHALLENGES {
            response.headers_mut().append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
    }
    response
}

/// The schemes a client may answer a 401 with.
const CHALLENGES: [&str; 2] = [
    "Bearer realm=\"gatehouse\"",
    "Basic realm=\"gatehouse\", charset=\"UTF-8\"",
];

/// An error and its sources on one line (hyper's outer errors say little on their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The client's `X-Request-Id` when it is a plausible id (1–128 of `A-Z a-z 0-9 . _ : -`),
/// else a new UUID: one value, sent upstream and back to the client as it is.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
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
    fn ws_access_keys_are_removed_from_forwarded_queries() {
        assert_eq!(
            without_access_keys("FileId=1&wsaccesskey=k&x=2"),
            "FileId=1&x=2"
        );
        assert_eq!(without_access_keys("WsAccessKey=k"), "");
        assert_eq!(without_access_keys("a=1"), "a=1");
        assert!(has_access_key("a=1&WSACCESSKEY=k"));
        assert!(!has_access_key("a=1&wsaccesskeys=k"));
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
        ];
        for (rejection, status) in cases {
            assert_eq!(rejection.problem().status.as_u16(), status, "{rejection:?}");
        }
    }
}
