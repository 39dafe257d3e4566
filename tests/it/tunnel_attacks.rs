//! Attacks on WebSocket tunnels, streaming re-authorisation and gRPC over h2c (SPEC §13,
//! SECURITY.md promises 1–4, 13, 14, 16): route-decision bypasses, cross-site WebSocket
//! hijacking, identity spoofing, revocation escapes and exhaustion. Each test passes only while
//! the defence holds.
//!
//! The application here is a raw socket server, so that the tests see (and choose) every byte:
//! `/…/ws` switches protocols and echoes, `/…/sse` streams an event every 100 ms whatever the
//! request asked for, `/…/refuse` answers 403, anything else 200.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::*;
use crate::signin::{PASSWORD, SESSION_COOKIE, Visitor, user};

/// How long an exchange may outlive its credential with `proxy.reauth_interval = "1s"`.
const CLOSES_WITHIN: Duration = Duration::from_secs(5);

/// An application on a raw socket that records every request head it reads.
struct RawApp {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl RawApp {
    async fn start() -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(app_connection(stream, seen.clone()));
            }
        });
        RawApp { addr, heads, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Whether any request head the application read has this request line start.
    fn saw(&self, start: &str) -> bool {
        self.heads().iter().any(|h| h.starts_with(start))
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a head; returns the head and whatever came after it.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn app_connection(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let Some((head, rest)) = read_head(&mut stream).await else {
        return;
    };
    heads.lock().unwrap().push(head.clone());
    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let path = target.split('?').next().unwrap_or_default();
    if path.ends_with("/ws") || path.ends_with("/switch") {
        let _ = stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )
            .await;
        let _ = stream.write_all(&rest).await;
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    } else if path.ends_with("/sse") {
        let _ = stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            )
            .await;
        for _ in 0..600 {
            let event = b"data: tick\n\n";
            let chunk = format!("{:x}\r\n", event.len());
            if stream.write_all(chunk.as_bytes()).await.is_err()
                || stream.write_all(event).await.is_err()
                || stream.write_all(b"\r\n").await.is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else if path.ends_with("/refuse") {
        let _ = stream
            .write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
            )
            .await;
    } else {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    }
}

/// Gatehouse in front of `app` (base configuration), re-checking credentials every second.
async fn start(app: &RawApp, adjust: impl FnOnce(&mut gatehouse::config::Config)) -> Gatehouse {
    Gatehouse::start_url(&app.url(), |c| {
        c.proxy.reauth_interval = Duration::from_secs(1);
        adjust(c);
    })
    .await
}

/// `name` signed in through the sign-in page: the browser and its session cookie header.
async fn signed_in(gh: &Gatehouse, name: &str) -> (Visitor, String) {
    let mut visitor = Visitor::new(gh.http_addr());
    let page = visitor.sign_in(name, PASSWORD, "/private/").await;
    assert_eq!(page.status, 303, "{}", page.body);
    let session = visitor.session().expect("a session cookie");
    (visitor, format!("Cookie: {SESSION_COOKIE}={session}"))
}

fn basic(name: &str) -> String {
    use base64::Engine;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{PASSWORD}"))
    )
}

/// The header lines of a WebSocket handshake.
const UPGRADE: [&str; 4] = [
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// An exchange kept open on a raw socket: the response head and the connection.
struct Open {
    status: u16,
    head: String,
    stream: TcpStream,
}

impl Open {
    /// Whether the connection ends (EOF or error) within `limit`.
    async fn ends_within(&mut self, limit: Duration) -> bool {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(limit, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    /// Sends `text` through the tunnel and reads it back.
    async fn echo(&mut self, text: &str) -> String {
        self.stream.write_all(text.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; text.len()];
        tokio::time::timeout(Duration::from_secs(5), self.stream.read_exact(&mut buf))
            .await
            .expect("echo within 5 s")
            .unwrap();
        String::from_utf8(buf).unwrap()
    }
}

/// Sends a GET of `target` with `lines` and reads the response head, leaving the connection open.
async fn open(addr: SocketAddr, target: &str, lines: &[&str]) -> Open {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n");
    for line in lines {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    open_raw(addr, &head).await
}

async fn open_raw(addr: SocketAddr, request: &str) -> Open {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, _) = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
        .await
        .expect("a response head within 10 s")
        .expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Open {
        status,
        head,
        stream,
    }
}

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Route decision
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upgrade_path_spellings_are_decided_on_the_normalised_path() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    for target in [
        "/public/../private/ws",
        "/public/%2e%2e/private/ws",
        "/PUBLIC/..%2fprivate/ws",
        "/public/%2E%2E/private/ws?x=/public/ws",
        "//private/ws",
        "/private;x=1/ws",
        "http://localhost/private/ws",
    ] {
        let refused = open(gh.http_addr(), target, &UPGRADE).await;
        assert!(
            refused.status == 401 || refused.status == 400,
            "{target}: {}",
            refused.head
        );
    }
    assert!(app.heads().is_empty(), "{:?}", app.heads());
    gh.stop().await;
}

#[tokio::test]
async fn upgrade_to_another_protocol_is_forwarded_as_a_plain_request() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    let plain = open(
        gh.http_addr(),
        "/public/plain",
        &[
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAAP__",
        ],
    )
    .await;
    assert_ne!(plain.status, 101, "{}", plain.head);
    let head = app.heads().pop().unwrap().to_ascii_lowercase();
    assert!(!head.contains("upgrade:"), "{head}");
    assert!(!head.contains("http2-settings"), "{head}");
    gh.stop().await;
}

#[tokio::test]
async fn pipelined_request_after_a_refused_upgrade_gets_its_own_decision() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    let mut request = String::from("GET /public/refuse HTTP/1.1\r\nHost: localhost\r\n");
    for line in UPGRADE {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str(
        "\r\nGET /private/secret HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let mut first = open_raw(gh.http_addr(), &request).await;
    assert_eq!(first.status, 403, "{}", first.head);
    let mut rest = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(10), first.stream.read_to_end(&mut rest)).await;
    // Answered in its own right (401), or not at all (the connection closed): never forwarded.
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 401"),
        "{rest}"
    );
    assert!(!app.saw("GET /private/secret"), "{:?}", app.heads());
    gh.stop().await;
}

/// An application that answers `101` to a request gatehouse forwarded as a plain one (no
/// WebSocket upgrade was decided) must not get a raw pipe to the client, nor leave its pooled
/// connection switched for the next request.
#[tokio::test]
async fn upstream_switching_protocols_on_a_plain_request_opens_no_tunnel() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    let mut switched = open(
        gh.http_addr(),
        "/public/switch",
        &["Connection: Upgrade", "Upgrade: h2c"],
    )
    .await;
    let piped = async {
        switched
            .stream
            .write_all(b"GET /private/secret HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buf = vec![0u8; 64];
        let n = switched.stream.read(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let echoed = tokio::time::timeout(Duration::from_secs(3), piped).await;
    assert!(
        !matches!(&echoed, Ok(Ok(text)) if text.starts_with("GET /private/secret")),
        "status {}: the client's bytes reached the application raw: {echoed:?}",
        switched.status
    );
    gh.stop().await;
}

#[tokio::test]
async fn http1_connect_is_refused_and_reaches_nothing() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    for request in [
        format!(
            "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n",
            app.addr, app.addr
        ),
        "CONNECT /public/ws HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
    ] {
        let refused = open_raw(gh.http_addr(), &request).await;
        assert!(
            refused.status == 405 || refused.status == 400,
            "{request}: {}",
            refused.head
        );
    }
    assert!(app.heads().is_empty(), "{:?}", app.heads());
    gh.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Cross-site WebSocket hijacking
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cookie_upgrade_from_any_other_origin_spelling_is_refused() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let (_visitor, cookie) = signed_in(&gh, "ada").await;
    for origin in [
        None,
        Some("Origin: null"),
        Some("Origin: https://localhost/"),
        Some("Origin: https://localhost/app"),
        Some("Origin: http://localhost"),
        Some("Origin: https://localhost:8443"),
        Some("Origin: https://localhost.evil.example"),
        Some("Origin: https://evil.example#https://localhost"),
        Some("Origin: https://localhost@evil.example"),
        Some("Origin: https://evil.example, https://localhost"),
        Some("Origin: "),
        Some("Sec-WebSocket-Origin: https://localhost"),
    ] {
        let mut lines = with(&UPGRADE, &[cookie.as_str()]);
        lines.extend(origin);
        let refused = open(gh.http_addr(), "/private/ws", &lines).await;
        assert_eq!(refused.status, 403, "{origin:?}: {}", refused.head);
    }
    assert!(app.heads().is_empty(), "{:?}", app.heads());
    // The own origin, in any letter case and with its default port, is allowed.
    let lines = with(
        &UPGRADE,
        &[cookie.as_str(), "Origin: HTTPS://LocalHost:443"],
    );
    let mut tunnel = open(gh.http_addr(), "/private/ws", &lines).await;
    assert_eq!(tunnel.status, 101, "{}", tunnel.head);
    assert_eq!(tunnel.echo("hi").await, "hi");
    gh.stop().await;
}

/// Browsers send one `Origin`; a request with two comes from no browser, and whichever copy the
/// check reads, the other may be what the application reads.
#[tokio::test]
async fn cookie_upgrade_with_two_origin_headers_is_refused() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let (_visitor, cookie) = signed_in(&gh, "ada").await;
    let lines = with(
        &UPGRADE,
        &[
            cookie.as_str(),
            "Origin: https://localhost",
            "Origin: https://evil.example",
        ],
    );
    let refused = open(gh.http_addr(), "/private/ws", &lines).await;
    assert_eq!(refused.status, 403, "{}", refused.head);
    assert!(app.heads().is_empty(), "{:?}", app.heads());
    gh.stop().await;
}

#[tokio::test]
async fn cookie_with_a_bogus_authorization_is_not_tunnelled_from_another_origin() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let (_visitor, cookie) = signed_in(&gh, "ada").await;
    for authorization in [
        "Authorization: Bearer not-a-token",
        "Authorization: Negotiate abc",
        "Authorization: Basic",
        "authorization: basic Og==",
    ] {
        let lines = with(
            &UPGRADE,
            &[
                cookie.as_str(),
                authorization,
                "Origin: https://evil.example",
            ],
        );
        let refused = open(gh.http_addr(), "/private/ws", &lines).await;
        assert!(
            refused.status == 400 || refused.status == 401 || refused.status == 403,
            "{authorization}: {}",
            refused.head
        );
    }
    assert!(app.heads().is_empty(), "{:?}", app.heads());
    gh.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Identity and credentials
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_identity_headers_and_credentials_never_reach_the_upstream_of_a_tunnel() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let (_visitor, cookie) = signed_in(&gh, "ada").await;
    let spoofs = [
        "X-Auth-User: root",
        "x-auth-user: root",
        "X_Auth_User: root",
        "X.Auth.User: root",
        "X-Auth-User-Id: 0",
        "X-Auth-Assertion: forged",
        "Connection: X-Auth-User",
    ];
    let auth = basic("ada");
    // Basic on a private route, the cookie on a private route, and nothing on a public one.
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("/private/ws?WsAccessKey=k1&a=1", vec![auth.as_str()]),
        (
            "/private/ws?wsaccesskey=k1",
            vec![cookie.as_str(), "Origin: https://localhost"],
        ),
        ("/public/ws?WSACCESSKEY=k1", vec![cookie.as_str()]),
    ];
    for (target, credentials) in cases {
        let lines = with(&with(&UPGRADE, &spoofs), &credentials);
        let mut tunnel = open(gh.http_addr(), target, &lines).await;
        assert_eq!(tunnel.status, 101, "{target}: {}", tunnel.head);
        assert_eq!(tunnel.echo("x").await, "x");
        let head = app.heads().pop().unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("root"), "{target}: {head}");
        assert!(!lower.contains("forged"), "{target}: {head}");
        assert!(!lower.contains("x_auth"), "{target}: {head}");
        assert!(!lower.contains("x.auth"), "{target}: {head}");
        assert!(!lower.contains("x-auth-user-id: 0\r"), "{target}: {head}");
        assert!(!lower.contains("authorization:"), "{target}: {head}");
        assert!(
            !lower.contains(&SESSION_COOKIE.to_ascii_lowercase()),
            "{target}: {head}"
        );
        assert!(!lower.contains("wsaccesskey"), "{target}: {head}");
        if target.starts_with("/private/") {
            assert!(lower.contains("x-auth-user: ada\r"), "{target}: {head}");
        } else {
            assert!(!lower.contains("x-auth-user"), "{target}: {head}");
        }
    }
    gh.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Re-authorisation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn streaming_response_ends_after_logout() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let (mut visitor, cookie) = signed_in(&gh, "ada").await;
    let mut stream = open(gh.http_addr(), "/private/sse", &[cookie.as_str()]).await;
    assert_eq!(stream.status, 200, "{}", stream.head);
    assert!(!stream.ends_within(Duration::from_millis(1500)).await);
    let page = visitor.sign_out().await;
    assert!(page.status < 400, "{}", page.body);
    assert!(
        stream.ends_within(CLOSES_WITHIN).await,
        "the stream outlived its session"
    );
    gh.stop().await;
}

/// An application that ignores `Upgrade` answers the upgrade request with an ordinary
/// (streaming) response; that response must be watched like any other.
#[tokio::test]
async fn upgrade_headers_do_not_exempt_a_streaming_response_from_reauthorisation() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let (mut visitor, cookie) = signed_in(&gh, "ada").await;
    let lines = with(&UPGRADE, &[cookie.as_str(), "Origin: https://localhost"]);
    let mut stream = open(gh.http_addr(), "/private/sse", &lines).await;
    assert_eq!(stream.status, 200, "{}", stream.head);
    assert!(!stream.ends_within(Duration::from_millis(1500)).await);
    let page = visitor.sign_out().await;
    assert!(page.status < 400, "{}", page.body);
    assert!(
        stream.ends_within(CLOSES_WITHIN).await,
        "the stream outlived its session because the request asked for an upgrade"
    );
    gh.stop().await;
}

#[tokio::test]
async fn tunnel_opened_with_basic_closes_after_the_password_changes() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let auth = basic("ada");
    let mut tunnel = open(
        gh.http_addr(),
        "/private/ws",
        &with(&UPGRADE, &[auth.as_str()]),
    )
    .await;
    assert_eq!(tunnel.status, 101, "{}", tunnel.head);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tunnel.echo("still").await, "still");
    let (status, body) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(serde_json::json!({"password": "another long passphrase"})),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    assert!(
        tunnel.ends_within(CLOSES_WITHIN).await,
        "the tunnel outlived its password"
    );
    gh.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Exhaustion
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_tunnels_are_capped_per_client_address() {
    let app = RawApp::start().await;
    let gh = start(&app, |c| c.websocket.max_tunnels_per_user = 2).await;
    let mut open_tunnels = Vec::new();
    for _ in 0..2 {
        let tunnel = open(gh.http_addr(), "/public/ws", &UPGRADE).await;
        assert_eq!(tunnel.status, 101, "{}", tunnel.head);
        open_tunnels.push(tunnel);
    }
    let refused = open(gh.http_addr(), "/public/ws", &UPGRADE).await;
    assert_eq!(refused.status, 429, "{}", refused.head);
    gh.stop().await;
}

/// One IPv6 subscriber holds a whole /64 (the connection caps and the sign-in throttle count
/// by /64): the anonymous tunnel cap must not grow with the addresses it rotates through.
#[tokio::test]
async fn anonymous_tunnels_are_capped_per_ipv6_prefix_not_per_address() {
    let app = RawApp::start().await;
    // The socket peer (127.0.0.1) is a trusted proxy by default: the client is what it names.
    let gh = start(&app, |c| c.websocket.max_tunnels_per_user = 2).await;
    let mut statuses = Vec::new();
    let mut open_tunnels = Vec::new();
    for i in 1..=4 {
        let xff = format!("X-Forwarded-For: 2001:db8:1:2::{i:x}");
        let tunnel = open(
            gh.http_addr(),
            "/public/ws",
            &with(&UPGRADE, &[xff.as_str()]),
        )
        .await;
        statuses.push(tunnel.status);
        open_tunnels.push(tunnel);
    }
    assert_eq!(statuses, [101, 101, 429, 429]);
    gh.stop().await;
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn grpc_call_with_an_unreadable_path_is_refused_as_a_grpc_status() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    for path in ["/pkg.Svc%2FMethod", "/pkg.Svc/Me%00thod"] {
        let response = h2c_client()
            .post(gh.http_url(path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let grpc_status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            (status, content_type.as_deref(), grpc_status.as_deref()),
            (200, Some("application/grpc"), Some("3")),
            "{path}"
        );
    }
    assert!(app.heads().is_empty());
    gh.stop().await;
}

/// An HTTP/2 application for the h2c tests: `/…/big` streams 4 MiB, anything else answers a
/// few bytes at once.
async fn h2c_app() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                        let body = if req.uri().path().ends_with("/big") {
                            Full::new(Bytes::from(vec![7u8; 4 << 20])).boxed()
                        } else {
                            Full::new(Bytes::from_static(b"\0\0\0\0\0")).boxed()
                        };
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Every client's gRPC calls share one HTTP/2 connection to the application: a client that
/// stops reading its responses must not stall everyone else's.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_other_clients_grpc_calls() {
    let (app, task) = h2c_app().await;
    let gh = Gatehouse::start_url(&format!("http://{app}"), |c| {
        c.upstream.protocol = gatehouse::config::UpstreamProtocol::H2c;
    })
    .await;
    // The attacker: an HTTP/2 client with a small window that reads nothing.
    let stream = TcpStream::connect(gh.http_addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut held = Vec::new();
    for _ in 0..3 {
        let request = http::Request::post("http://localhost/public/pkg.Svc/big")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        held.push(response);
    }
    // Let the application's data pile up behind the attacker's unread streams.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let call = async {
        let response = h2c_client()
            .post(gh.http_url("/public/pkg.Svc/Unary"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0])
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap()
    };
    let answered = tokio::time::timeout(Duration::from_secs(5), call).await;
    assert!(
        answered.is_ok(),
        "another client's call stalled behind the unread streams"
    );
    drop(held);
    task.abort();
    gh.stop().await;
}

/// The base configuration in front of `app` with a one-second re-check, `/private/` given
/// `private` (TOML lines of its rule).
fn reloadable_config(dir: &std::path::Path, app: &RawApp, private: &str) -> String {
    base_config(dir, &app.url())
        .replace(
            "default = \"authenticated\"",
            "default = \"authenticated\"\nreauth_interval = \"1s\"",
        )
        .replace(
            "path_prefix = \"/private/\"\naccess = \"authenticated\"",
            &format!("path_prefix = \"/private/\"\n{private}"),
        )
}

/// A reload that makes a route stricter applies to the tunnels already open on it, as it does
/// to the next request: a credential that no longer passes the route's rule ends its tunnel.
#[tokio::test]
async fn tunnel_closes_when_a_reload_makes_its_route_require_what_its_credential_lacks() {
    let app = RawApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = reloadable_config(dir.path(), &app, "access = \"authenticated\"");
    let mut config = gatehouse::config::from_toml_str(&toml).unwrap();
    config.admin.token = Some(gatehouse::config::Secret::new(ADMIN_TOKEN));
    let store = Arc::new(gatehouse::store::sled::SledStore::open(&config.store.path).unwrap());
    let gh_app = Arc::new(
        gatehouse::app::App::with_store(config, store, Arc::new(gatehouse::clock::SystemClock))
            .await
            .unwrap(),
    );
    let (server, reloadable) = gh_app.bind().await.unwrap();
    let addr = server.addrs().http.unwrap();
    let admin = server.addrs().admin;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let created = http1_client()
        .post(format!("http://{admin}/admin/v1/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"userName": "ada", "password": PASSWORD, "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let auth = basic("ada");
    let mut tunnel = open(addr, "/private/ws", &with(&UPGRADE, &[auth.as_str()])).await;
    assert_eq!(tunnel.status, 101, "{}", tunnel.head);

    let stricter = reloadable_config(
        dir.path(),
        &app,
        "access = \"authenticated\"\nscopes = [\"admin\"]",
    );
    let path = dir.path().join("gatehouse.toml");
    assert!(gatehouse::reload::reload(
        &reloadable,
        &path,
        "test",
        Ok(stricter.as_bytes())
    ));
    // The next upgrade is refused under the new rule…
    let refused = open(addr, "/private/ws", &with(&UPGRADE, &[auth.as_str()])).await;
    assert_eq!(refused.status, 403, "{}", refused.head);
    // …and the open tunnel ends with it.
    assert!(
        tunnel.ends_within(CLOSES_WITHIN).await,
        "the tunnel outlived the rule that admitted it"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

/// Re-checking an old password is no guess: the tunnels a password change ends must not count
/// as failed sign-ins, or whoever holds a few tunnels with the old password (the very holder the
/// change is meant to shut out) locks the account's owner out with the new one.
#[tokio::test]
async fn tunnels_ended_by_a_password_change_do_not_lock_out_the_new_password() {
    let app = RawApp::start().await;
    let gh = start(&app, |_| {}).await;
    user(&gh, "ada").await;
    let old = basic("ada");
    let mut tunnels = Vec::new();
    for _ in 0..8 {
        let tunnel = open(
            gh.http_addr(),
            "/private/ws",
            &with(&UPGRADE, &[old.as_str()]),
        )
        .await;
        assert_eq!(tunnel.status, 101, "{}", tunnel.head);
        tunnels.push(tunnel);
    }
    let new_password = "another long passphrase";
    let (status, body) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(serde_json::json!({"password": new_password})),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    for tunnel in &mut tunnels {
        assert!(tunnel.ends_within(Duration::from_secs(15)).await);
    }
    let response = http1_client()
        .get(gh.http_url("/private/x"))
        .basic_auth("ada", Some(new_password))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    gh.stop().await;
}
