//! Forwarding to the upstream application: pooled connections, `X-Forwarded-*`, timeouts.
//! Bodies stream both ways; nothing here buffers them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Request, Response, Uri, Version};

use super::headers::strip_hop_by_hop;
use super::pool::{Address, H2c, Pool, PoolError};
use super::upgrade::{self, Upgrade, UpgradeError};
use crate::body::Body;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::path::PathError;

/// Why the upstream gave no response.
#[derive(Debug)]
pub enum ForwardError {
    /// Refused, unreachable, not connected within `upstream.connect_timeout`, or the exchange
    /// failed before a response head.
    Unavailable(PoolError),
    /// No response head within `upstream.response_timeout`.
    Timeout,
}

/// What the connection told us about the client, as the forwarding headers need it.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Whether `peer` is in `server.trusted_proxies`.
    pub trusted: bool,
}

/// How gatehouse reaches its application: kept-alive HTTP/1.1 connections to `upstream.url`,
/// one HTTP/2 connection when `upstream.protocol` asks for it, and a connection of its own for
/// each WebSocket upgrade.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
    /// Present unless `upstream.protocol` is `http1`.
    h2c: Option<Arc<H2c>>,
    protocol: UpstreamProtocol,
    host: HeaderValue,
    /// `http://host:port`, the scheme and authority of HTTP/2 requests.
    authority: Authority,
    address: Address,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Upstream {
        let authority = config
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("127.0.0.1"));
        let address = Address::new(
            authority.host(),
            authority.port_u16().unwrap_or(80),
            config.connect_timeout,
        );
        let pool = Pool::new(address.clone(), IDLE_TIMEOUT);
        let h2c = (config.protocol != UpstreamProtocol::Http1)
            .then(|| Arc::new(H2c::new(address.clone())));
        Upstream {
            pool: Arc::new(pool),
            h2c,
            protocol: config.protocol,
            host: HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1")),
            authority,
            address,
            response_timeout: config.response_timeout,
        }
    }

    /// Whether a request goes over HTTP/2: always with `h2c`, for gRPC calls with `auto`.
    fn over_h2c(&self, grpc: bool) -> Option<&Arc<H2c>> {
        match self.protocol {
            UpstreamProtocol::Http1 => None,
            UpstreamProtocol::H2c => self.h2c.as_ref(),
            UpstreamProtocol::Auto => self.h2c.as_ref().filter(|_| grpc),
        }
    }

    /// Sends a WebSocket upgrade (`req` sanitised, identity set) on a connection of its own and
    /// returns the upstream's answer: a `101` to take the upgrade of, or a refusal to pass on.
    pub async fn upgrade(
        &self,
        mut req: Request<Body>,
        kind: Upgrade,
        carried: Vec<(HeaderName, HeaderValue)>,
        path_and_query: PathAndQuery,
    ) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        upgrade::upstream_request(&mut req, kind, carried, path_and_query, &self.host).map_err(
            |_| {
                ForwardError::Unavailable(PoolError::Connect(std::io::Error::other(
                    "no randomness for a WebSocket key",
                )))
            },
        )?;
        upgrade::send(&self.address, self.response_timeout, req)
            .await
            .map_err(|e| match e {
                UpgradeError::Timeout => ForwardError::Timeout,
                UpgradeError::Unavailable(e) => ForwardError::Unavailable(e),
            })
    }

    /// Sends `req` (already sanitised, path already normalised) to the upstream and returns its
    /// response head with a streaming body.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        path_and_query: PathAndQuery,
        grpc: bool,
    ) -> Result<Response<Body>, ForwardError> {
        if let Some(h2c) = self.over_h2c(grpc) {
            return Box::pin(self.forward_h2c(h2c, req, path_and_query, grpc)).await;
        }
        *req.uri_mut() = Uri::from(path_and_query);
        // The upstream speaks HTTP/1.1 whatever the client spoke; an HTTP/2 request names its
        // host in the URI, which HTTP/1.1 carries in `Host`.
        let client_version = req.version();
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        let response = tokio::time::timeout(self.response_timeout, self.pool.send(req))
            .await
            .map_err(|_| ForwardError::Timeout)?
            .map_err(ForwardError::Unavailable)?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The client is answered in its own version (SPEC §2): an HTTP/1.0 upstream must not
        // turn an HTTP/1.1 client's answer into `HTTP/1.0` and close its connection.
        parts.version = client_version;
        Ok(Response::from_parts(parts, body))
    }
}

impl Upstream {
    /// [`Upstream::forward`] over the shared HTTP/2 connection: the host the client named
    /// becomes `:authority`, and a gRPC call keeps `TE: trailers`, which gRPC servers require.
    async fn forward_h2c(
        &self,
        h2c: &H2c,
        mut req: Request<Body>,
        path_and_query: PathAndQuery,
        grpc: bool,
    ) -> Result<Response<Body>, ForwardError> {
        let client_version = req.version();
        let authority = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|v| Authority::try_from(v.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ForwardError::Unavailable(PoolError::Connect(std::io::Error::other(e))))?;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        if grpc {
            req.headers_mut()
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let response = tokio::time::timeout(self.response_timeout, h2c.send(req))
            .await
            .map_err(|_| ForwardError::Timeout)?
            .map_err(ForwardError::Unavailable)?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = client_version;
        Ok(Response::from_parts(parts, body))
    }
}

/// How long a kept-alive upstream connection may stay unused and still be reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. From a trusted proxy its values are kept (the
/// peer is appended to `X-Forwarded-For`); from anyone else they were already removed and are
/// set from the socket. `host` is the authority the client asked for.
pub fn set_forwarding_headers(headers: &mut HeaderMap, origin: Origin, host: Option<HeaderValue>) {
    let peer_ip = match origin.peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let prior = origin
        .trusted
        .then(|| headers.get(X_FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .filter(|prior| !prior.trim().is_empty());
    let value = match prior {
        Some(prior) => {
            HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("{prior}, {peer_ip}")))
        }
        None => match peer_ip {
            IpAddr::V4(v4) => HeaderValue::from_bytes(dotted_quad(v4).as_slice()),
            IpAddr::V6(v6) => HeaderValue::from_str(&v6.to_string()),
        },
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(origin.trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        let proto = if origin.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(origin.trusted && headers.contains_key(X_FORWARDED_HOST)) {
        match host {
            Some(v) => {
                headers.insert(X_FORWARDED_HOST, v);
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

/// `a.b.c.d` without the formatting machinery, which costs more than the rest of this header.
fn dotted_quad(ip: std::net::Ipv4Addr) -> DottedQuad {
    let mut out = DottedQuad {
        bytes: [0; 15],
        len: 0,
    };
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
    out
}

struct DottedQuad {
    bytes: [u8; 15],
    len: usize,
}

impl DottedQuad {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The authority the client asked for: `Host` (HTTP/1.1) or `:authority` (HTTP/2).
pub fn requested_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(header::HOST)
        .filter(|v| v.to_str().is_ok())
        .cloned()
        .or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
}

/// Why a forward-auth call describes no usable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescribeError {
    /// Nothing describes a request.
    Missing,
    /// Two descriptions name different paths: a proxy passes its clients' own headers on beside
    /// the one it sets (ingress-nginx sets `X-Original-URL` and forwards a client's
    /// `X-Forwarded-Uri`; Traefik the reverse), so preferring either would let the client pick
    /// the path that is decided.
    Conflicting,
    /// A description whose path cannot be used.
    Path(PathError),
}

/// The normalised path of the request a forward-auth call describes (from a trusted proxy):
/// every `X-Forwarded-Uri` and `X-Original-URL` (a path or an absolute URL) and what follows
/// `/auth/verify` in `path` (Envoy's `ext_authz` with a path prefix) must name the same path once
/// normalised. The query never counts.
pub fn described_path(headers: &HeaderMap, path: &str) -> Result<String, DescribeError> {
    let mut targets: Vec<String> = Vec::new();
    // An empty value describes nothing (nginx's `proxy_set_header X-Original-URL ""` sends none).
    let values = |name| headers.get_all(name).into_iter().filter(|v| !v.is_empty());
    for value in values(X_FORWARDED_URI) {
        targets.push(text(value)?.to_owned());
    }
    for value in values(X_ORIGINAL_URL) {
        let url = text(value)?;
        if url.starts_with('/') {
            targets.push(url.to_owned());
        } else {
            let uri: Uri = url
                .parse()
                .map_err(|_| DescribeError::Path(PathError::BadEscape))?;
            targets.push(uri.path().to_owned());
        }
    }
    if let Some(rest) =
        crate::routes::strip_prefix_ignore_case(path, crate::api::table::FORWARD_AUTH_PATH)
        && rest.starts_with('/')
    {
        targets.push(rest.to_owned());
    }
    let mut described: Option<String> = None;
    for target in targets {
        let raw = target.split('?').next().unwrap_or_default();
        if !raw.starts_with('/') {
            return Err(DescribeError::Path(PathError::NotAbsolute));
        }
        // A request target has no fragment; a proxy that copies one into the header may also
        // pass it on to an application that reads the path beyond the `#`, so it is not cut off.
        if raw.contains('#') {
            return Err(DescribeError::Path(PathError::Fragment));
        }
        let normal = crate::path::normalize(raw).map_err(DescribeError::Path)?;
        match &described {
            Some(first) if *first != normal => return Err(DescribeError::Conflicting),
            Some(_) => {}
            None => described = Some(normal),
        }
    }
    described.ok_or(DescribeError::Missing)
}

/// A describing header's text (UTF-8, as a proxy copies a request target with non-ASCII bytes).
fn text(value: &HeaderValue) -> Result<&str, DescribeError> {
    std::str::from_utf8(value.as_bytes()).map_err(|_| DescribeError::Path(PathError::BadEscape))
}

pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
pub const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client behind a trusted `peer`: walking `X-Forwarded-For` from the right, the first
/// address outside `trusted` (the ones to its left could be written by anyone). All trusted: the
/// leftmost. An entry that is not an address stops the walk at the last address believed.
pub fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let entry = entry.trim();
        let Some(ip) = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        else {
            return client;
        };
        client = ip.to_canonical();
        if !trusted.iter().any(|net| net.contains(&client)) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn origin(trusted: bool) -> Origin {
        Origin {
            peer: "10.1.2.3:5555".parse().unwrap(),
            tls: true,
            trusted,
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_forwarded_address() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let client = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
            }
            forwarded_client(peer, &h, &trusted).to_string()
        };
        assert_eq!(client(&[]), "10.1.2.3");
        assert_eq!(
            client(&["198.51.100.7, 203.0.113.9, 10.9.9.9"]),
            "203.0.113.9"
        );
        assert_eq!(client(&["198.51.100.7", "203.0.113.9:4711"]), "203.0.113.9");
        assert_eq!(client(&["10.5.5.5, 10.6.6.6"]), "10.5.5.5");
        assert_eq!(client(&["203.0.113.9, garbage, 10.6.6.6"]), "10.6.6.6");
        assert_eq!(client(&["::ffff:203.0.113.9"]), "203.0.113.9");
    }

    #[test]
    fn trusted_proxy_chain_is_extended() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        set_forwarding_headers(
            &mut h,
            origin(true),
            Some(HeaderValue::from_static("app.example")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.9, 10.1.2.3");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "app.example");
    }

    #[test]
    fn ipv4_peers_are_written_like_their_display() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.9.10",
            "255.255.255.255",
            "192.168.100.1",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(dotted_quad(ip).as_slice(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn untrusted_peer_gets_socket_values() {
        let mut h = HeaderMap::new();
        set_forwarding_headers(
            &mut h,
            origin(false),
            Some(HeaderValue::from_static("app.example")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }

    fn described(pairs: &[(&str, &str)], path: &str) -> Result<String, DescribeError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        described_path(&h, path)
    }

    #[test]
    fn forward_auth_describes_the_request_by_uri_header_url_or_path_suffix() {
        let verify = crate::api::table::FORWARD_AUTH_PATH;
        assert_eq!(
            described(
                &[("x-forwarded-uri", "/admin/../private/x?next=/public/")],
                verify
            ),
            Ok("/private/x".into())
        );
        assert_eq!(
            described(
                &[("x-original-url", "https://app.example/private/?a=b")],
                verify
            ),
            Ok("/private/".into())
        );
        assert_eq!(
            described(&[("x-original-url", "/public/%2e%2e/private/")], verify),
            Ok("/private/".into())
        );
        assert_eq!(
            described(&[], "/auth/verify/private/y"),
            Ok("/private/y".into())
        );
        assert_eq!(described(&[], verify), Err(DescribeError::Missing));
        assert_eq!(
            described(&[("x-forwarded-uri", "/a%2Fb")], verify),
            Err(DescribeError::Path(PathError::EncodedSlash))
        );
        assert_eq!(
            described(&[("x-forwarded-uri", "private")], verify),
            Err(DescribeError::Path(PathError::NotAbsolute))
        );
        assert_eq!(
            described(
                &[
                    ("x-original-url", "https://app.example/private/x"),
                    ("x-forwarded-uri", "/public/x")
                ],
                verify
            ),
            Err(DescribeError::Conflicting)
        );
        assert_eq!(
            described(
                &[
                    ("x-forwarded-uri", "/public/x"),
                    ("x-forwarded-uri", "/private/x")
                ],
                verify
            ),
            Err(DescribeError::Conflicting)
        );
        assert_eq!(
            described(
                &[("x-forwarded-uri", "/public/x")],
                "/auth/verify/private/x"
            ),
            Err(DescribeError::Conflicting)
        );
        assert_eq!(
            described(
                &[
                    ("x-original-url", "https://app.example/public/x?a"),
                    ("x-forwarded-uri", "/public/./x")
                ],
                "/auth/verify/public/x"
            ),
            Ok("/public/x".into())
        );
    }
}
