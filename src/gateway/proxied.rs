//! A request for the application: authorise → strip credentials → identity headers → limits →
//! forward. Each step either lets the request on or refuses it; the body is never buffered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::live::{self, Admitted, Presented, Rechecked};
use super::rejection::Rejection;
use super::request_id::X_REQUEST_ID;
use super::{Arrival, Gateway, Outcome};
use crate::auth::Principal;
use crate::body::{Body, BoxError};
use crate::origin;
use crate::path::PathError;
use crate::proxy::forward::{self, ForwardError, Origin};
use crate::proxy::tunnel::{Credential, Rechecks, Tunnel};
use crate::proxy::upgrade::{self, Upgrade};
use crate::server::listener::KeepOpen;

impl Gateway {
    /// Forwards the request when the access rule for `key` lets it pass, as `path` (the
    /// normalised path), with the identity of its principal if it has one.
    pub(super) async fn proxied(
        &self,
        mut parts: Parts,
        body: Incoming,
        path: &str,
        key: &str,
        arrival: &Arrival,
    ) -> Outcome {
        // The rule of the request's method, and of each method an override header names.
        let mut methods = crate::routes::acted_methods(&[parts.method.as_str()], &parts.headers);
        // An HTTP/2 WebSocket (RFC 8441 CONNECT) reaches the upstream as an HTTP/1.1 GET upgrade:
        // it must pass the GET rule too.
        if parts.method == http::Method::CONNECT
            && arrival.upgrade.is_some()
            && !methods.iter().any(|m| m.eq_ignore_ascii_case("GET"))
        {
            methods.push(std::borrow::Cow::Borrowed("GET"));
        }
        let rules = self.rules.rules_for_request(key, &methods, arrival.client);
        let class = rules.first().map_or("authenticated", |r| r.access.as_str());
        let grpc = arrival.grpc;
        let refused = |rejection| Outcome {
            grpc,
            ..Outcome::refused(class, rejection)
        };
        let principal = match self.authorise(&rules, &parts.headers, arrival.client).await {
            Ok(principal) => principal,
            Err(rejection) => {
                let target = match &arrival.query {
                    Some(query) => format!("{path}?{query}"),
                    None => path.to_owned(),
                };
                let rejection =
                    self.for_navigation(rejection, &parts.method, &parts.headers, &target, false);
                return refused(rejection);
            }
        };
        let admitted = |principal: &Option<Principal>, presented: Option<Presented>| {
            let (principal, presented) = (principal.as_ref()?, presented?);
            Some(Arc::new(Admitted {
                auth: self.auth.clone(),
                policy: self.policy.clone(),
                key: key.to_owned(),
                methods: methods.clone(),
                credentials: presented.into_headers(self.auth.application_header()),
                client: arrival.client,
                user_id: principal.user_id.clone(),
            }))
        };
        let ambient = principal.as_ref().and_then(|_| ambient(&parts.headers));
        // What the principal was admitted with, for the checks while the exchange lives: the
        // credential headers as they are taken off the request (shared values: nothing is
        // copied unless the exchange turns out to last), and its cookies as they came.
        let cookies = principal
            .as_ref()
            .map(|_| Presented::cookies(&parts.headers));
        // The session id is gatehouse's alone, on every route.
        self.sessions.strip_cookies(&mut parts.headers);
        let mut presented = None;
        if let Some(principal) = &principal {
            let (authorization, app) = self.strip_credentials(&mut parts.headers);
            presented = cookies.map(|cookies| Presented {
                authorization,
                app,
                cookies,
            });
            if let Err(rejection) = self.set_identity(&mut parts.headers, principal) {
                return refused(rejection);
            }
        }
        if let Some((kind, carried)) = &arrival.upgrade {
            let upgrade = Upgrading {
                kind: *kind,
                carried: carried.clone(),
                ambient,
            };
            let admitted = admitted(&principal, presented);
            let outcome =
                Box::pin(self.tunnel(parts, path, upgrade, principal, admitted, arrival)).await;
            return Outcome {
                grpc,
                ..Outcome { class, ..outcome }
            };
        }
        let body = match self.limited(&parts.headers, body) {
            Ok(body) => body,
            Err(rejection) => {
                return Outcome {
                    principal,
                    ..refused(rejection)
                };
            }
        };
        self.set_upstream_headers(&mut parts, arrival);
        let Some(target) = upstream_target(&parts.uri, path) else {
            let rejection = Rejection::BadPath(PathError::BadEscape);
            return Outcome {
                principal,
                ..refused(rejection)
            };
        };
        let (mut response, latency) = self
            .forward(Request::from_parts(parts, body), target, grpc)
            .await;
        if let Ok(response) = &mut response {
            self.sessions.strip_set_cookies(response.headers_mut());
            if live::is_long_lived(response.body())
                && let Some(admitted) = admitted(&principal, presented)
            {
                let body = std::mem::take(response.body_mut());
                *response.body_mut() = Rechecked::new(
                    body,
                    admitted,
                    self.reauth_interval,
                    grpc,
                    self.meter.clone(),
                )
                .boxed_unsync();
            }
        }
        Outcome {
            principal,
            upstream_latency: Some(latency),
            grpc,
            ..Outcome::new(class, response)
        }
    }

    /// A WebSocket upgrade the route's rule let pass (headers already sanitised, identity set):
    /// checked for its origin and its principal's tunnels, sent to the upstream on a connection of
    /// its own and, once the upstream switches protocols, tunnelled.
    async fn tunnel(
        &self,
        mut parts: Parts,
        path: &str,
        upgrade: Upgrading,
        principal: Option<Principal>,
        admitted: Option<Arc<Admitted>>,
        arrival: &Arrival,
    ) -> Outcome {
        let refused = |principal, rejection| Outcome {
            principal,
            ..Outcome::refused("", rejection)
        };
        if let Some(ambient) = upgrade.ambient
            && !self.origin_allowed(&parts.headers, ambient)
        {
            return refused(principal, Rejection::OriginNotAllowed);
        }
        let owner = match &principal {
            Some(principal) => principal.user_id.clone(),
            // An IPv6 client holds a /64, as the connection caps count it.
            None => format!(
                "address {}",
                crate::server::caps::Client::of(arrival.client)
            ),
        };
        let Some(slot) = self.tunnels.admit(owner, self.max_tunnels_per_user) else {
            return refused(
                principal,
                Rejection::TooManyTunnels(self.max_tunnels_per_user),
            );
        };
        let Some(client_side) = parts.extensions.remove::<OnUpgrade>() else {
            return refused(
                principal,
                Rejection::Internal("the connection cannot be upgraded".into()),
            );
        };
        let hold = parts
            .extensions
            .remove::<KeepOpen>()
            .map(|hold| Box::new(hold) as Box<dyn Send>);
        let version = parts.version;
        self.set_upstream_headers(&mut parts, arrival);
        let Some(target) = upstream_target(&parts.uri, path) else {
            return refused(principal, Rejection::BadPath(PathError::BadEscape));
        };
        let sent = Instant::now();
        let request = Request::from_parts(parts, crate::body::empty());
        let result = self
            .upstream
            .upgrade(request, upgrade.kind, upgrade.carried, target)
            .await;
        let latency = sent.elapsed();
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                return Outcome {
                    upstream_latency: Some(latency),
                    ..refused(principal, forward_rejection(e))
                };
            }
        };
        let response = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_side = hyper::upgrade::on(&mut response);
            let head = upgrade::client_head(&response, upgrade.kind, version);
            let tunnel = Tunnel {
                slot,
                limits: self.tunnel_limits,
                rechecks: admitted.map(|admitted| {
                    Rechecks::new(admitted as Arc<dyn Credential>, self.reauth_interval)
                }),
                hold,
            };
            tokio::spawn(tunnel.run(client_side, upstream_side));
            head.body(crate::body::empty())
                .map_err(|e| Rejection::Internal(e.to_string()))
        } else {
            // Refused by the upstream: its answer goes to the client, and nothing is tunnelled;
            // if it streams, it is watched like any other.
            let (mut head, body) = response.into_parts();
            crate::proxy::headers::strip_hop_by_hop(&mut head.headers);
            head.version = version;
            let mut body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
            if let Some(admitted) = admitted
                && live::is_long_lived(&body)
            {
                body = Rechecked::new(
                    body,
                    admitted,
                    self.reauth_interval,
                    false,
                    self.meter.clone(),
                )
                .boxed_unsync();
            }
            Ok(Response::from_parts(head, body))
        };
        let response = response.map(|mut response| {
            self.sessions.strip_set_cookies(response.headers_mut());
            response
        });
        Outcome {
            principal,
            upstream_latency: Some(latency),
            ..Outcome::new("", response)
        }
    }

    /// Credentials gatehouse consumed do not travel on: the upstream gets the assertion.
    fn strip_credentials(
        &self,
        headers: &mut HeaderMap,
    ) -> (Option<HeaderValue>, Option<HeaderValue>) {
        (
            headers.remove(header::AUTHORIZATION),
            headers.remove(self.auth.application_header()),
        )
    }

    /// The body within `proxy.max_body`: refused when its declared length is over the limit,
    /// cut off when it sends more.
    fn limited(&self, headers: &HeaderMap, body: Incoming) -> Result<Body, Rejection> {
        match self.max_body {
            Some(limit) => {
                if content_length(headers).is_some_and(|len| len > limit) {
                    return Err(Rejection::BodyTooLarge(limit));
                }
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                Ok(Limited::new(body, limit).boxed_unsync())
            }
            None => Ok(body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()),
        }
    }

    /// The headers the upstream reads: `Host` (from the request target when the client sent
    /// none), nothing it must not take from a client, `X-Forwarded-*` and the request id.
    fn set_upstream_headers(&self, parts: &mut Parts, arrival: &Arrival) {
        let host = forward::requested_host(&parts.uri, &parts.headers);
        if !parts.headers.contains_key(header::HOST)
            && let Some(v) = &host
        {
            parts.headers.insert(header::HOST, v.clone());
        }
        let origin = Origin {
            peer: arrival.conn.peer,
            tls: arrival.conn.tls,
            trusted: arrival.trusted,
        };
        self.sanitizer
            .clean_upstream(&mut parts.headers, arrival.trusted);
        forward::set_forwarding_headers(&mut parts.headers, origin, host);
        parts
            .headers
            .insert(X_REQUEST_ID, arrival.request_id.clone());
    }

    /// The upstream's response, or why there is none, and how long it took to come.
    async fn forward(
        &self,
        request: Request<Body>,
        target: PathAndQuery,
        grpc: bool,
    ) -> (Result<Response<Body>, Rejection>, Duration) {
        let sent = Instant::now();
        let result = self.upstream.forward(request, target, grpc).await;
        let latency = sent.elapsed();
        (result.map_err(forward_rejection), latency)
    }
}

impl Gateway {
    /// Whether an upgrade authenticated by a credential its browser sends by itself comes from
    /// an allowed origin: exactly one `Origin`, and an allowed one. Without any `Origin`, a Basic
    /// upgrade is no browser's (a browser always sends one with a WebSocket) and passes; a
    /// cookie one does not.
    fn origin_allowed(&self, headers: &HeaderMap, ambient: Ambient) -> bool {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) => ambient == Ambient::Basic,
            (Some(origin), None) => origin::is_allowed(origin.as_bytes(), &self.upgrade_origins),
            (Some(_), Some(_)) => false,
        }
    }
}

/// A credential a browser sends by itself, with a cross-site WebSocket handshake too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ambient {
    /// The session cookie (no `Authorization`: SPEC §11).
    Cookie,
    /// `Authorization: Basic`, which browsers cache and resend.
    Basic,
}

/// The ambient credential that authenticated a request, if it was one; `None` for a Bearer token,
/// which only a script that chose it can send.
fn ambient(headers: &HeaderMap) -> Option<Ambient> {
    match headers.get(header::AUTHORIZATION) {
        None => Some(Ambient::Cookie),
        Some(v) => {
            let v = v.as_bytes();
            (v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"basic ")).then_some(Ambient::Basic)
        }
    }
}

/// What an upgrade asks for, as [`Gateway::tunnel`] needs it.
struct Upgrading {
    kind: Upgrade,
    carried: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Authenticated by a credential its browser sends by itself: the `Origin` must be allowed.
    ambient: Option<Ambient>,
}

/// The refusal for an upstream that gave no response.
fn forward_rejection(e: ForwardError) -> Rejection {
    match e {
        ForwardError::Timeout => Rejection::UpstreamTimeout,
        ForwardError::Unavailable(e) => Rejection::UpstreamUnavailable(error_chain(&e)),
    }
}

/// The path and query the upstream gets: the request's own, shared rather than copied, when
/// gatehouse changes neither (the usual case); else `path` with the query less its `WsAccessKey`
/// parameters. `None` when that is no valid target.
fn upstream_target(uri: &Uri, path: &str) -> Option<PathAndQuery> {
    let query = uri.query();
    if path == uri.path() && !query.is_some_and(has_access_key) {
        return uri.path_and_query().cloned();
    }
    let target = match query.map(without_access_keys) {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    };
    PathAndQuery::try_from(target).ok()
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

/// The length the request declares, when it declares one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
