//! WebSocket peers for the tunnel tests: a real echo application (Python's `websockets`, run from
//! `tests/peers/ws_echo.py`; tests/run.sh installs it) and a WebSocket client (tokio-tungstenite)
//! that reaches gatehouse every way a client can: HTTP/1.1 `Upgrade` on the plaintext or the TLS
//! listener, and HTTP/2 extended CONNECT (RFC 8441) over TLS (ALPN h2) or h2c prior knowledge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::harness::*;

/// The echo application; stopped when dropped (it exits when its standard input closes).
pub struct EchoApp {
    pub addr: SocketAddr,
    events: Arc<Mutex<Vec<Value>>>,
    _child: tokio::process::Child,
    _stdin: tokio::process::ChildStdin,
}

impl EchoApp {
    pub async fn start() -> EchoApp {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ws_echo.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with websockets (tests/run.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(15), lines.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            other => panic!("the echo application did not start: {other:?}"),
        };
        let port = serde_json::from_str::<Value>(&line).unwrap()["port"]
            .as_u64()
            .unwrap_or_else(|| panic!("no port in {line}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let collected = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str(&line) {
                    collected.lock().unwrap().push(event);
                }
            }
        });
        EchoApp {
            addr: SocketAddr::from(([127, 0, 0, 1], port as u16)),
            events,
            _child: child,
            _stdin: stdin,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many `event`s ("open", "close", "page") the application reported so far.
    pub fn count(&self, event: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == event)
            .count()
    }

    /// Waits up to `limit` for the application to have reported `n` `event`s.
    pub async fn reported(&self, event: &str, n: usize, limit: Duration) -> bool {
        let started = Instant::now();
        while self.count(event) < n {
            if started.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        true
    }
}

/// How the client reaches gatehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// HTTP/1.1 `Upgrade: websocket` on `listen.http`.
    Http1,
    /// HTTP/1.1 `Upgrade: websocket` on `listen.https` (ALPN http/1.1).
    Https1,
    /// Extended CONNECT on `listen.https` (ALPN h2).
    H2,
    /// Extended CONNECT on `listen.http`, HTTP/2 with prior knowledge.
    H2c,
}

/// Where gatehouse listens: `http` plaintext, `https` with the certificate `cert` (PEM).
#[derive(Clone)]
pub struct Target {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub cert: Option<Vec<u8>>,
}

impl Target {
    pub fn of(gh: &Gatehouse) -> Target {
        Target {
            http: gh.addrs.http,
            https: gh.addrs.https,
            cert: std::fs::read(gh.dir.path().join("gh.crt")).ok(),
        }
    }

    pub fn http(addr: SocketAddr) -> Target {
        Target {
            http: Some(addr),
            https: None,
            cert: None,
        }
    }
}

/// Gatehouse's answer when it does not open the tunnel.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

impl Refused {
    /// Asserts a problem document with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_problem(status, self.content_type.as_deref(), &self.body, code);
    }
}

/// Any byte stream the WebSocket runs over (TCP, TLS, an HTTP/2 stream).
pub trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

/// An open WebSocket through gatehouse to the echo application.
pub struct Tunnel {
    ws: WebSocketStream<Box<dyn Socket>>,
    /// The application's first message: the handshake request as it received it.
    pub seen: Value,
    // Keeps an HTTP/2 connection's request handle alive with the stream.
    _h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
}

impl Tunnel {
    /// The values of the request header `name` the application received, in order.
    pub fn received(&self, name: &str) -> Vec<String> {
        self.seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|pair| pair[1].as_str().unwrap().to_owned())
            .collect()
    }

    /// The single value of the request header `name` the application received.
    pub fn header(&self, name: &str) -> Option<String> {
        let values = self.received(name);
        assert!(values.len() <= 1, "{name} received twice: {values:?}");
        values.into_iter().next()
    }

    /// Sends `text` and returns the echo (an error when the tunnel is gone).
    pub async fn echo(&mut self, text: &str) -> Result<String, String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
        let answer = self.next_text().await?;
        Ok(answer)
    }

    /// Sends `data` as a binary message and returns the echo.
    pub async fn echo_binary(&mut self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        self.ws
            .send(Message::binary(data))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match self.next().await? {
                Message::Binary(data) => return Ok(data.to_vec()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    }

    async fn next(&mut self) -> Result<Message, String> {
        match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await {
            Err(_) => Err("no message within 10 s".into()),
            Ok(None) => Err("closed".into()),
            Ok(Some(Err(e))) => Err(e.to_string()),
            Ok(Some(Ok(message))) => Ok(message),
        }
    }

    async fn next_text(&mut self) -> Result<String, String> {
        loop {
            match self.next().await? {
                Message::Text(text) => return Ok(text.to_string()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    }

    /// Whether the tunnel ends (end of stream, a reset, or a close frame) within `limit`,
    /// without the test sending anything.
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        let ending = async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => continue,
                }
            }
        };
        tokio::time::timeout(limit, ending).await.is_ok()
    }

    /// Closes the tunnel from the client's side (close handshake).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// A client TLS configuration that trusts only `cert` (PEM) and offers `alpn`.
fn tls_config(cert: &[u8], alpn: &[u8]) -> rustls::ClientConfig {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

async fn tls(target: &Target, alpn: &[u8]) -> Box<dyn Socket> {
    let addr = target.https.expect("an https listener");
    let config = tls_config(target.cert.as_deref().expect("its certificate"), alpn);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(alpn),
        "ALPN not agreed"
    );
    Box::new(stream)
}

/// Opens a WebSocket to `path` on `gh` with extra request `headers` (`Authorization`, `Cookie`,
/// `Origin`, ...).
pub async fn open(
    gh: &Gatehouse,
    via: Via,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Tunnel, Refused> {
    open_at(&Target::of(gh), via, path, headers).await
}

/// Like [`open`], against listeners given by address.
pub async fn open_at(
    target: &Target,
    via: Via,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Tunnel, Refused> {
    match via {
        Via::Http1 => {
            let addr = target.http.expect("an http listener");
            let tcp: Box<dyn Socket> = Box::new(TcpStream::connect(addr).await.unwrap());
            upgrade(tcp, &format!("ws://{addr}{path}"), headers).await
        }
        Via::Https1 => {
            let port = target.https.expect("an https listener").port();
            let stream = tls(target, b"http/1.1").await;
            upgrade(stream, &format!("wss://localhost:{port}{path}"), headers).await
        }
        Via::H2 => {
            let port = target.https.expect("an https listener").port();
            let stream = tls(target, b"h2").await;
            connect(stream, &format!("https://localhost:{port}{path}"), headers).await
        }
        Via::H2c => {
            let addr = target.http.expect("an http listener");
            let tcp: Box<dyn Socket> = Box::new(TcpStream::connect(addr).await.unwrap());
            connect(tcp, &format!("http://{addr}{path}"), headers).await
        }
    }
}

/// The HTTP/1.1 opening handshake (RFC 6455 §4), then the application's first message.
async fn upgrade(
    stream: Box<dyn Socket>,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Tunnel, Refused> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let ws = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("a handshake answer within 10 s")
    {
        Ok((ws, _response)) => ws,
        Err(tungstenite::Error::Http(response)) => {
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            return Err(Refused {
                status: response.status().as_u16(),
                content_type,
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned(),
            });
        }
        Err(e) => panic!("handshake failed: {e}"),
    };
    Tunnel::started(ws, None).await
}

/// Extended CONNECT (RFC 8441 §4) on a new HTTP/2 connection, then the application's first
/// message.
async fn connect(
    stream: Box<dyn Socket>,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Tunnel, Refused> {
    let (response, sender) = h2_connect(stream, url, Some("websocket"), headers).await;
    if response.status() != 200 {
        return Err(Refused::read(response).await);
    }
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let socket: Box<dyn Socket> = Box::new(TokioIo::new(upgraded));
    let ws = WebSocketStream::from_raw_socket(socket, Role::Client, None).await;
    Tunnel::started(ws, Some(sender)).await
}

/// A `CONNECT` to `url` on a new HTTP/2 connection over `stream`, extended with `protocol`
/// (`:protocol`) when given, else a plain one (`url` then is `host:port`).
async fn h2_connect(
    stream: Box<dyn Socket>,
    url: &str,
    protocol: Option<&'static str>,
    headers: &[(&str, &str)],
) -> (
    http::Response<hyper::body::Incoming>,
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
) {
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(url);
    if let Some(protocol) = protocol {
        request = request
            .header("sec-websocket-version", "13")
            .extension(hyper::ext::Protocol::from_static(protocol));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer to CONNECT within 10 s")
        .unwrap_or_else(|e| {
            panic!("CONNECT failed (is SETTINGS_ENABLE_CONNECT_PROTOCOL sent?): {e:?}")
        });
    (response, sender)
}

/// The answer to a `CONNECT` on gatehouse over HTTP/2 (`via` [`Via::H2`] or [`Via::H2c`]):
/// to `target` (`host:port`) when `protocol` is `None`, else an extended CONNECT with that
/// `:protocol` to `target` as a path.
pub async fn h2_connect_answer(
    gh: &Gatehouse,
    via: Via,
    target: &str,
    protocol: Option<&'static str>,
    headers: &[(&str, &str)],
) -> Refused {
    let (stream, url) = match via {
        Via::H2 => {
            let port = gh.addrs.https.unwrap().port();
            (
                tls(&Target::of(gh), b"h2").await,
                format!("https://localhost:{port}{target}"),
            )
        }
        Via::H2c => {
            let addr = gh.http_addr();
            let tcp: Box<dyn Socket> = Box::new(TcpStream::connect(addr).await.unwrap());
            (tcp, format!("http://{addr}{target}"))
        }
        other => panic!("{other:?} is not HTTP/2"),
    };
    let url = if protocol.is_some() {
        url
    } else {
        target.to_owned()
    };
    let (response, _sender) = h2_connect(stream, &url, protocol, headers).await;
    Refused::read(response).await
}

impl Refused {
    async fn read(response: http::Response<hyper::body::Incoming>) -> Refused {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Refused {
            status,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

impl Tunnel {
    async fn started(
        ws: WebSocketStream<Box<dyn Socket>>,
        h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
    ) -> Result<Tunnel, Refused> {
        let mut tunnel = Tunnel {
            ws,
            seen: Value::Null,
            _h2: h2,
        };
        let first = tunnel
            .next_text()
            .await
            .unwrap_or_else(|e| panic!("the application's first message: {e}"));
        tunnel.seen = serde_json::from_str(&first).unwrap();
        Ok(tunnel)
    }
}

/// Opens a tunnel that must open.
pub async fn opened(gh: &Gatehouse, via: Via, path: &str, headers: &[(&str, &str)]) -> Tunnel {
    open(gh, via, path, headers)
        .await
        .unwrap_or_else(|refused| panic!("{via:?} {path} refused: {refused:?}"))
}

/// Opens a tunnel that must be refused.
pub async fn refused(gh: &Gatehouse, via: Via, path: &str, headers: &[(&str, &str)]) -> Refused {
    match open(gh, via, path, headers).await {
        Ok(tunnel) => panic!("{via:?} {path} opened: {}", tunnel.seen),
        Err(refused) => refused,
    }
}
