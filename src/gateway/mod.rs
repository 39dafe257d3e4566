//! The per-request pipeline of the public listeners (SPEC §2): sanitise headers → read and
//! classify the target (`target`) → answer it → finish (request id, metrics, one access-log line).
//! Gatehouse answers its own endpoints here and forward-auth in `forward_auth`; everything else is
//! the application's (`proxied`: access rule → authenticate → decide → forward).
//!
//! [`Gateway::handle`] never fails: every refusal becomes a problem document (`rejection`), and
//! every request leaves one access-log line.

mod access;
mod forward_auth;
mod live;
mod proxied;
mod rejection;
mod request_id;
mod target;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use ipnet::IpNet;

use std::sync::Arc;

use self::rejection::{Rejection, render};
pub use self::request_id::X_REQUEST_ID;
use self::request_id::request_id;
use self::target::{Claimed, Target};
use crate::api::enroll::EnrollPage;
use crate::api::manage::Manage;
use crate::api::nexus::Nexus;
use crate::api::services::Services;
use crate::api::signin::{SignIn, Visit};
use crate::api::ws::endpoints::Ws;
use crate::auth::{Authenticator, Principal};
use crate::body::{Body, full};
use crate::hygiene::Sanitizer;
use crate::meter::Meter;
use crate::path;
use crate::proxy::forward::{self, Upstream};
use crate::proxy::headers::IdentityHeaders;
use crate::proxy::tunnel::Limits as TunnelLimits;
use crate::proxy::upgrade::{self, Upgrade};
use crate::routes::AccessRules;
use crate::server::tunnels::Tunnels;
use crate::sessions::Sessions;
use crate::telemetry::{self, AccessRecord};
use crate::tokens::Tokens;

pub use crate::server::ConnInfo;

/// What the gateway knows of a request as it arrives: what the access log reports of it, and
/// the connection facts the answering steps need.
struct Arrival {
    started: Instant,
    conn: ConnInfo,
    /// Whether the peer is in `server.trusted_proxies`.
    trusted: bool,
    /// The client's address as gatehouse believes it (see [`Gateway::client`]).
    client: IpAddr,
    request_id: HeaderValue,
    method: Method,
    query: Option<String>,
    /// The WebSocket upgrade the request asks for, with its `Sec-WebSocket-*` headers.
    upgrade: Option<(Upgrade, Vec<(http::HeaderName, HeaderValue)>)>,
    /// Whether the request is a gRPC call, refused in gRPC's terms.
    grpc: bool,
}

impl Arrival {
    /// A refusal before the request is routed (`raw_path` as it came). A gRPC call gets it as a
    /// gRPC status, unless it may be a forward-auth call (its path begins with the forward-auth
    /// path, as every proxy's call does): a gRPC refusal is an HTTP 200, which a forward-auth
    /// caller would take for an allow.
    fn unrouted(&self, rejection: Rejection, raw_path: &str) -> Outcome {
        let forward_auth =
            crate::routes::strip_prefix_ignore_case(raw_path, crate::api::table::FORWARD_AUTH_PATH)
                .is_some();
        Outcome {
            grpc: self.grpc && !forward_auth,
            ..Outcome::refused("invalid", rejection)
        }
    }
}

/// What one request came to, for the response and the access log.
struct Outcome {
    response: Result<Response<Body>, Rejection>,
    /// The access of the path's rule, or what answered instead (metrics label).
    class: &'static str,
    principal: Option<Principal>,
    upstream_latency: Option<Duration>,
    /// A request id of the endpoint's own, replacing the client's (the Manage family's).
    request_id: Option<String>,
    /// A refusal is written as a gRPC status.
    grpc: bool,
}

impl Outcome {
    /// A response or a refusal, with nothing more to report.
    fn new(class: &'static str, response: Result<Response<Body>, Rejection>) -> Outcome {
        Outcome {
            response,
            class,
            principal: None,
            upstream_latency: None,
            request_id: None,
            grpc: false,
        }
    }

    /// A refusal, with nothing more to report.
    fn refused(class: &'static str, rejection: Rejection) -> Outcome {
        Outcome::new(class, Err(rejection))
    }

    /// An answer of one of gatehouse's own endpoints.
    fn local(response: Response<Body>) -> Outcome {
        Outcome::new("local", Ok(response))
    }
}

/// The public listeners' request handler.
pub struct Gateway {
    rules: AccessRules,
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
    /// The prefixes of gatehouse's own endpoints.
    claimed: Claimed,
    enroll: EnrollPage,
    signin: SignIn,
    sessions: Arc<Sessions>,
    meter: Arc<Meter>,
    bodies: Arc<crate::api::Bodies>,
    tunnels: Arc<Tunnels>,
    /// The rules in force, as long-lived exchanges are checked against them.
    policy: Arc<arc_swap::ArcSwap<crate::routes::Policy>>,
    /// Origins from which a cookie-authenticated upgrade is accepted: `server.public_url`'s and
    /// `websocket.allowed_origins`.
    upgrade_origins: Vec<String>,
    tunnel_limits: TunnelLimits,
    max_tunnels_per_user: usize,
    reauth_interval: Duration,
    /// Where `rate_limited` is audited.
    store: Arc<dyn crate::store::Store>,
    clock: Arc<dyn crate::clock::Clock>,
}

impl Gateway {
    /// Keeps removing from clients the identity header names `previous` removed (see
    /// [`Sanitizer::keep_removing`]); a reload's new pipeline takes them from the one it replaces.
    pub fn keep_removing_identity_of(&mut self, previous: &Gateway) {
        self.sanitizer.keep_removing(&previous.sanitizer);
    }

    /// The pipeline for `config` (the app's own, or a reloaded one) around the app's services.
    pub fn new(services: &Services, config: &crate::config::Config) -> Gateway {
        let ws = config.apis.ws.enabled.then(|| {
            Ws::new(
                &config.apis.ws.base_path,
                services.auth.clone(),
                services.mfa.clone(),
                services.store.clone(),
            )
        });
        let manage = config.apis.manage.family.enabled.then(|| {
            Manage::new(
                &config.apis.manage,
                services.auth.clone(),
                services.mfa.clone(),
                services.store.clone(),
                services.clock.clone(),
            )
        });
        let nexus = config.apis.nexus.enabled.then(|| {
            Nexus::new(
                &config.apis.nexus.base_path,
                services.auth.clone(),
                services.mfa.clone(),
                services.domains.clone(),
            )
        });
        Gateway {
            rules: AccessRules::new(&config.routes, config.proxy.default),
            sanitizer: Sanitizer::new(&config.identity_headers),
            upstream: Upstream::new(&config.upstream),
            trusted_proxies: config.server.trusted_proxies.clone(),
            max_body: config.proxy.max_body,
            auth: services.auth.clone(),
            tokens: services.tokens.clone(),
            identity: IdentityHeaders::new(&config.identity_headers),
            require_app: config.auth.require_application_token,
            assertion_audience: config.upstream.audience.clone(),
            enroll: EnrollPage::new(services.mfa.clone(), config.mfa.totp.digits),
            signin: SignIn::new(services, config),
            sessions: services.sessions.clone(),
            meter: services.meter.clone(),
            bodies: services.bodies.clone(),
            tunnels: services.tunnels.clone(),
            policy: services.policy.clone(),
            upgrade_origins: crate::origin::of_url(&config.server.public_url)
                .into_iter()
                .chain(config.websocket.allowed_origins.iter().cloned())
                .collect(),
            tunnel_limits: TunnelLimits {
                idle: config.websocket.idle_timeout,
                lifetime: config.websocket.max_lifetime,
            },
            max_tunnels_per_user: config.websocket.max_tunnels_per_user,
            reauth_interval: config.proxy.reauth_interval,
            store: services.store.clone(),
            clock: services.clock.clone(),
            claimed: Claimed::new(ws.as_ref(), manage.as_ref(), nexus.as_ref()),
            ws,
            manage,
            nexus,
        }
    }

    /// Handles one request from a public listener. Never fails.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let trusted = self.is_trusted(conn.peer);
        // Read before hop-by-hop headers go: they are what asks for an upgrade.
        let upgrade =
            upgrade::requested(&parts).map(|kind| (kind, upgrade::carried_headers(&parts.headers)));
        self.sanitizer.clean_request(&mut parts.headers, trusted);
        let arrival = Arrival {
            started,
            conn,
            trusted,
            request_id: request_id(&parts.headers),
            method: parts.method.clone(),
            query: parts.uri.query().map(str::to_owned),
            client: self.client(conn, &parts.headers, trusted),
            grpc: rejection::is_grpc(&parts.headers),
            upgrade,
        };
        // Gatehouse is no forward proxy: a CONNECT is a WebSocket or nothing.
        if parts.method == Method::CONNECT && arrival.upgrade.is_none() {
            let path = parts.uri.path().to_owned();
            let outcome = arrival.unrouted(Rejection::MethodNotAllowed, &path);
            return self.finish(arrival, &path, outcome);
        }
        let path = match target::readable_path(&parts) {
            Ok(path) => path,
            Err((path, rejection)) => {
                let outcome = arrival.unrouted(rejection, parts.uri.path());
                return self.finish(arrival, &path, outcome);
            }
        };
        // Local endpoints and access rules see the path without `;` parameters, in any letter
        // case (SPEC §2); the upstream gets `path` itself.
        let key = path::match_key(&path);
        // Audit events this request causes name its client and id.
        crate::audit::set_current(crate::audit::Request {
            client: Some(arrival.client),
            request_id: Some(arrival.request_id.clone()),
        });
        let target = Target::classify(
            &parts.method,
            &key,
            &self.claimed,
            self.ws.as_ref(),
            self.manage.as_ref(),
            self.nexus.as_ref(),
        );
        let outcome = match target {
            Target::ForwardAuth => Box::pin(self.forward_auth(&parts, &path, &arrival)).await,
            Target::SignIn(endpoint) => {
                self.local(&mut parts, arrival.client);
                let origin = self.origin(&parts, &arrival);
                let visit = Visit {
                    origin: origin.as_deref(),
                    client: arrival.client,
                    path: &path,
                    request_id: arrival.request_id.to_str().unwrap_or_default(),
                };
                Outcome::local(Box::pin(self.signin.handle(endpoint, &parts, body, &visit)).await)
            }
            Target::Jwks => Outcome::local(self.jwks()),
            Target::Enroll(ticket_id) => {
                self.local(&mut parts, arrival.client);
                Outcome::local(
                    Box::pin(self.enroll.handle(&parts, body, ticket_id, arrival.client)).await,
                )
            }
            Target::Ws(ws, endpoint) => {
                self.local(&mut parts, arrival.client);
                Outcome::local(Box::pin(ws.handle(endpoint, &parts, body)).await)
            }
            Target::Manage(manage, endpoint) => {
                self.local(&mut parts, arrival.client);
                // Every Manage answer carries a fresh `apiRequestId`, also the request's id.
                let id = uuid::Uuid::new_v4().to_string();
                crate::audit::set_current(crate::audit::Request {
                    client: Some(arrival.client),
                    request_id: HeaderValue::from_str(&id).ok(),
                });
                let response = Box::pin(manage.handle(endpoint, &parts, body, &id)).await;
                Outcome {
                    request_id: Some(id),
                    ..Outcome::local(response)
                }
            }
            Target::Nexus(nexus, endpoint) => {
                self.local(&mut parts, arrival.client);
                let id = arrival.request_id.to_str().unwrap_or_default();
                Outcome::local(Box::pin(nexus.handle(endpoint, &parts, body, &key, id)).await)
            }
            Target::Proxied => self.proxied(parts, body, &path, &key, &arrival).await,
        };
        self.finish(arrival, &path, outcome)
    }

    /// The response for `outcome`, with its request id, once it is counted and logged.
    fn finish(&self, arrival: Arrival, path: &str, outcome: Outcome) -> Response<Body> {
        let request_id = outcome
            .request_id
            .and_then(|id| HeaderValue::from_str(&id).ok())
            .unwrap_or(arrival.request_id);
        let id = request_id.to_str().unwrap_or_default();
        if let Err(rejection) = &outcome.response
            && let Some(reason) = rejection.auth_failure()
        {
            self.meter.auth_failure(reason);
        }
        if let Some(latency) = outcome.upstream_latency {
            self.meter.upstream_latency(latency);
        }
        let (mut response, error, status) = match outcome.response {
            Ok(response) => {
                let status = response.status();
                (response, None, status)
            }
            // A gRPC client reads a status in headers, not a document; the log and metrics
            // still report the refusal's HTTP status.
            Err(rejection) if outcome.grpc => (
                rejection::render_grpc(&rejection),
                Some(rejection.to_string()),
                rejection.status(),
            ),
            Err(rejection) => {
                let response = render(&rejection, path, id);
                let status = response.status();
                (response, Some(rejection.to_string()), status)
            }
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID, request_id.clone());
        self.meter.request(outcome.class, status.as_u16());
        telemetry::access(&AccessRecord {
            method: arrival.method.as_str(),
            path,
            query: arrival.query.as_deref(),
            status: status.as_u16(),
            client: arrival.client,
            latency: arrival.started.elapsed(),
            upstream_latency: outcome.upstream_latency,
            request_id: id,
            user_id: outcome.principal.as_ref().map(|p| p.user_id.as_str()),
            error: error.as_deref(),
        });
        response
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
    fn local(&self, parts: &mut Parts, client: IpAddr) {
        parts.extensions.insert(crate::api::Context {
            client,
            bodies: self.bodies.clone(),
        });
    }

    /// The request's own origin as the browser names it: the scheme it reached gatehouse with
    /// (or, from a trusted proxy, `X-Forwarded-Proto`) and its host (or `X-Forwarded-Host`).
    fn origin(&self, parts: &Parts, arrival: &Arrival) -> Option<String> {
        let forwarded = |name: &str| {
            arrival
                .trusted
                .then(|| parts.headers.get(name))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let scheme = forwarded("x-forwarded-proto").unwrap_or(if arrival.conn.tls {
            "https"
        } else {
            "http"
        });
        let host = match forwarded("x-forwarded-host") {
            Some(host) => host.to_owned(),
            None => forward::requested_host(&parts.uri, &parts.headers)?
                .to_str()
                .ok()?
                .to_owned(),
        };
        Some(format!("{scheme}://{host}").to_ascii_lowercase())
    }

    /// Whether the peer is in `server.trusted_proxies` (an IPv4-mapped address as its IPv4 one).
    fn is_trusted(&self, peer: SocketAddr) -> bool {
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The JWK Set of gatehouse's token keys.
    fn jwks(&self) -> Response<Body> {
        let bytes = serde_json::to_vec(&self.tokens.jwks()).unwrap_or_default();
        let mut response = Response::new(full(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        // Caches may keep it for at most half of `tokens.key_prepublish` (and 5 minutes), so
        // that they hold the next key before it signs.
        if let Ok(value) = HeaderValue::from_str(&format!("max-age={}", self.tokens.jwks_max_age()))
        {
            response.headers_mut().insert(header::CACHE_CONTROL, value);
        }
        response
    }
}
