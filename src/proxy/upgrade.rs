//! WebSocket upgrades: which requests ask for one (read before hop-by-hop headers are removed), and
//! the upstream's side of one: a connection of its own, outside the pool, on which an HTTP/1.1
//! upgrade is sent. An HTTP/2 client's extended CONNECT (RFC 8441) becomes such an upgrade too:
//! the WebSocket frames that follow are the same on both protocols.

use std::time::Duration;

use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::headers::strip_hop_by_hop;
use super::pool::{Address, PoolError};
use crate::body::Body;

/// The upgrade a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// HTTP/1.1: `GET` with `Connection: upgrade` and `Upgrade: websocket`.
    WebSocket,
    /// HTTP/2: `CONNECT` with `:protocol` `websocket` (RFC 8441).
    ExtendedConnect,
}

/// The WebSocket upgrade `parts` asks for, if any. An `Upgrade` to any other protocol is not
/// one: its headers are hop-by-hop and removed, and the request goes on as a plain one.
pub fn requested(parts: &Parts) -> Option<Upgrade> {
    if parts.method == Method::CONNECT {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>()?;
        return protocol
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then_some(Upgrade::ExtendedConnect);
    }
    if parts.version != Version::HTTP_11 || parts.method != Method::GET {
        return None;
    }
    let names = |name: HeaderName, token: &str| {
        parts.headers.get_all(name).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    (names(header::CONNECTION, "upgrade") && names(header::UPGRADE, "websocket"))
        .then_some(Upgrade::WebSocket)
}

/// The WebSocket headers a client sends that the upstream needs, kept aside before hop-by-hop
/// removal (none of them is hop-by-hop, but `Connection` may name them).
const CARRIED: [HeaderName; 4] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// The `Sec-WebSocket-*` headers of a request, before anything is removed from it.
pub fn carried_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut carried = Vec::new();
    for name in CARRIED {
        for value in headers.get_all(&name) {
            carried.push((name.clone(), value.clone()));
        }
    }
    carried
}

/// Turns `req` (sanitised, identity set) into the HTTP/1.1 upgrade the upstream gets.
pub fn upstream_request(
    req: &mut Request<Body>,
    kind: Upgrade,
    carried: Vec<(HeaderName, HeaderValue)>,
    target: PathAndQuery,
    host: &HeaderValue,
) -> Result<(), ring::error::Unspecified> {
    *req.method_mut() = Method::GET;
    *req.uri_mut() = Uri::from(target);
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    for name in CARRIED {
        headers.remove(&name);
    }
    for (name, value) in carried {
        headers.append(name, value);
    }
    headers.entry(header::HOST).or_insert_with(|| host.clone());
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if kind == Upgrade::ExtendedConnect {
        // An HTTP/2 client sends no key: the upstream's handshake needs one of gatehouse's.
        headers.insert(header::SEC_WEBSOCKET_KEY, new_key()?);
        headers
            .entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    Ok(())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn new_key() -> Result<HeaderValue, ring::error::Unspecified> {
    let bytes: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new())?.expose();
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
        .map_err(|_| ring::error::Unspecified)
}

/// Sends an upgrade request on a new connection to `address` and returns the upstream's answer:
/// a `101` whose upgrade can be taken, or any other response, which ends the exchange.
pub async fn send(
    address: &Address,
    response_timeout: Duration,
    req: Request<Body>,
) -> Result<Response<Incoming>, UpgradeError> {
    let stream = address.dial().await.map_err(UpgradeError::Unavailable)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpgradeError::Unavailable(PoolError::Http(e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream upgrade connection ended");
        }
    });
    tokio::time::timeout(response_timeout, sender.send_request(req))
        .await
        .map_err(|_| UpgradeError::Timeout)?
        .map_err(|e| UpgradeError::Unavailable(PoolError::Http(e)))
}

/// Why an upgrade got no response from the upstream.
#[derive(Debug)]
pub enum UpgradeError {
    Unavailable(PoolError),
    Timeout,
}

/// The head the client gets for the upstream's `101`: the same for an HTTP/1.1 client; `200`
/// without `Sec-WebSocket-Accept` (the key was gatehouse's) for an HTTP/2 one.
pub fn client_head(
    upstream: &Response<Incoming>,
    kind: Upgrade,
    version: Version,
) -> http::response::Builder {
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    let status = match kind {
        Upgrade::WebSocket => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            StatusCode::SWITCHING_PROTOCOLS
        }
        Upgrade::ExtendedConnect => {
            headers.remove(header::SEC_WEBSOCKET_ACCEPT);
            headers.remove(header::CONTENT_LENGTH);
            StatusCode::OK
        }
    };
    let mut builder = Response::builder().status(status).version(version);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    builder
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().method(method).uri("/ws");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_websocket_upgrades_are_upgrades() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            requested(&parts(Method::GET, &ws)),
            Some(Upgrade::WebSocket)
        );
        assert_eq!(requested(&parts(Method::POST, &ws)), None);
        assert_eq!(
            requested(&parts(Method::GET, &[("upgrade", "websocket")])),
            None
        );
        assert_eq!(
            requested(&parts(
                Method::GET,
                &[("connection", "upgrade"), ("upgrade", "h2c")]
            )),
            None
        );
        assert_eq!(requested(&parts(Method::CONNECT, &[])), None);
        let mut connect = parts(Method::CONNECT, &[]);
        connect
            .extensions
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(requested(&connect), Some(Upgrade::ExtendedConnect));
    }

    #[test]
    fn an_http2_websocket_gets_a_key_of_gatehouse_for_the_upstream() {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat")
            .body(crate::body::empty())
            .unwrap();
        let carried = carried_headers(req.headers());
        upstream_request(
            &mut req,
            Upgrade::ExtendedConnect,
            carried,
            PathAndQuery::from_static("/ws?x=1"),
            &HeaderValue::from_static("app:80"),
        )
        .unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/ws?x=1");
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["sec-websocket-protocol"], "chat");
        let key = req.headers()["sec-websocket-key"].to_str().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .unwrap()
                .len(),
            16
        );
    }
}
