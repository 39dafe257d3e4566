//! Connections (SPEC §10): a connection that sends nothing, or stops sending, is closed after
//! `server.header_read_timeout` whatever the protocol; connections are capped per listener and
//! per client address, the refused one closed at once while the others keep working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::harness::*;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and an empty SETTINGS frame: all a client must send before its first HEADERS.
pub const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// A closed connection is seen within this time once the server's deadline has passed.
pub const DEADLINE: Duration = Duration::from_secs(6);

/// A TLS connection to `addr` (certificate for `localhost`, trusted from `ca_pem`) that offers
/// only `alpn` and has completed its handshake.
pub async fn tls_connect(addr: SocketAddr, ca_pem: &[u8], alpn: &[u8]) -> TlsStream<TcpStream> {
    let tls = try_tls_connect(addr, ca_pem, alpn).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// Like [`tls_connect`], an error when the server closes the connection first.
pub async fn try_tls_connect(
    addr: SocketAddr,
    ca_pem: &[u8],
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Whether the server closes `io` within `deadline`, whatever it writes first (an HTTP/2 SETTINGS
/// or GOAWAY frame, a 408).
pub async fn closed_within(mut io: impl AsyncRead + Unpin, deadline: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(deadline, async {
        while let Ok(n) = io.read(&mut buf).await
            && n > 0
        {}
    })
    .await
    .is_ok()
}

/// A client connection driven by hyper: requests on it, and whether it has ended.
pub struct Conn {
    send: Sender,
    ended: JoinHandle<()>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    pub async fn h1(io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) -> Conn {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        let ended = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            send: Sender::H1(send),
            ended,
        }
    }

    pub async fn h2(io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) -> Conn {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        let ended = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            send: Sender::H2(send),
            ended,
        }
    }

    /// `GET path` on this connection: the status and body.
    pub async fn get(&mut self, path: &str) -> (u16, Bytes) {
        let response = match &mut self.send {
            Sender::H1(send) => {
                let request = http::Request::get(path)
                    .header("host", "localhost")
                    .body(Empty::new())
                    .unwrap();
                send.ready().await.unwrap();
                send.send_request(request).await.unwrap()
            }
            Sender::H2(send) => {
                let request = http::Request::get(format!("https://localhost{path}"))
                    .body(Empty::new())
                    .unwrap();
                send.ready().await.unwrap();
                send.send_request(request).await.unwrap()
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    /// Whether the server ends the connection within `deadline`.
    pub async fn ended_within(&mut self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, &mut self.ended)
            .await
            .is_ok()
    }
}

/// An upstream, a gatehouse in front of it whose `server.header_read_timeout` is one second, and
/// the certificate of its TLS listener.
async fn with_one_second_timeout() -> (Upstream, Gatehouse, Vec<u8>) {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let pem = certificate(&gh);
    (upstream, gh, pem)
}

fn certificate(gh: &Gatehouse) -> Vec<u8> {
    std::fs::read(gh.dir.path().join("gh.crt")).unwrap()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout_on_every_protocol()
{
    let (upstream, gh, pem) = with_one_second_timeout().await;
    let http = gh.http_addr();
    let https = gh.addrs.https.unwrap();
    let admin = gh.addrs.admin;
    let mut kinds = tokio::task::JoinSet::new();
    let plain = |name: &'static str, addr: SocketAddr, sent: &'static [u8]| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        (name, closed_within(tcp, DEADLINE).await)
    };
    kinds.spawn(plain("plaintext, no bytes", http, b""));
    kinds.spawn(plain("admin, no bytes", admin, b""));
    kinds.spawn(plain("h2c, half a preface", http, &H2_PREFACE[..10]));
    kinds.spawn(plain("h2c, preface without SETTINGS", http, H2_PREFACE));
    kinds.spawn(plain(
        "h2c, preface and SETTINGS, no HEADERS",
        http,
        H2_PREFACE_AND_SETTINGS,
    ));
    kinds.spawn(plain("HTTP/1.1, half a request line", http, b"GET /pub"));
    // The TLS handshake timeout is the default 10 s; the first request is due within 1 s anyway.
    kinds.spawn(plain("TLS, no ClientHello", https, b""));
    kinds.spawn(plain("TLS, half a ClientHello", https, &[0x16, 0x03, 0x01]));
    for (name, alpn, sent) in [
        ("TLS h2, silent", &b"h2"[..], &b""[..]),
        ("TLS http/1.1, silent", b"http/1.1", b""),
        ("TLS h2, half a preface", b"h2", &H2_PREFACE[..10]),
        (
            "TLS h2, preface and SETTINGS, no HEADERS",
            b"h2",
            H2_PREFACE_AND_SETTINGS,
        ),
    ] {
        let pem = pem.clone();
        kinds.spawn(async move {
            let mut tls = tls_connect(https, &pem, alpn).await;
            tls.write_all(sent).await.unwrap();
            tls.flush().await.unwrap();
            (name, closed_within(tls, DEADLINE).await)
        });
    }
    let mut open = Vec::new();
    while let Some(kind) = kinds.join_next().await {
        let (name, closed) = kind.unwrap();
        if !closed {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "still open after {DEADLINE:?}: {open:?}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_its_last_response_on_both_protocols() {
    let (upstream, gh, pem) = with_one_second_timeout().await;
    let (http, https) = (gh.http_addr(), gh.addrs.https.unwrap());
    // Every answer takes longer than the timeout: a request in flight keeps its connection,
    // only the time without one counts.
    upstream.set_delay(Duration::from_millis(1500));
    let mut kinds = tokio::task::JoinSet::new();
    for (name, tls, h2) in [
        ("h2c", false, true),
        ("h2", true, true),
        ("HTTP/1.1", false, false),
        ("TLS HTTP/1.1", true, false),
    ] {
        let pem = pem.clone();
        kinds.spawn(async move {
            let mut conn = match (tls, h2) {
                (false, true) => Conn::h2(TcpStream::connect(http).await.unwrap()).await,
                (true, true) => Conn::h2(tls_connect(https, &pem, b"h2").await).await,
                (false, false) => Conn::h1(TcpStream::connect(http).await.unwrap()).await,
                (true, false) => Conn::h1(tls_connect(https, &pem, b"http/1.1").await).await,
            };
            for _ in 0..2 {
                assert_eq!(conn.get("/public/slow").await.0, 200, "{name}");
            }
            (name, conn.ended_within(DEADLINE).await)
        });
    }
    while let Some(kind) = kinds.join_next().await {
        let (name, ended) = kind.unwrap();
        assert!(ended, "{name} stayed open while idle");
    }
}

/// A connection used again and again within the timeout stays open however long it lives, and
/// once it goes quiet it is closed a timeout after its last response.
#[tokio::test]
async fn a_connection_in_steady_use_stays_open_and_closes_once_it_goes_quiet() {
    let (_upstream, gh, pem) = with_one_second_timeout().await;
    let (http, https) = (gh.http_addr(), gh.addrs.https.unwrap());
    for (name, h2) in [("h2", true), ("HTTP/1.1", false)] {
        let mut conn = if h2 {
            Conn::h2(tls_connect(https, &pem, b"h2").await).await
        } else {
            Conn::h1(TcpStream::connect(http).await.unwrap()).await
        };
        // Three timeouts' worth of requests, each well within the timeout of the one before.
        for _ in 0..10 {
            assert_eq!(conn.get("/public/x").await.0, 200, "{name}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let quiet = tokio::time::Instant::now();
        assert!(conn.ended_within(DEADLINE).await, "{name} stayed open");
        assert!(
            quiet.elapsed() >= Duration::from_millis(500),
            "{name} closed {:?} after its last request",
            quiet.elapsed()
        );
    }
}

/// The longest timeouts the configuration accepts (100 years) still serve every protocol: the
/// deadlines computed from them do not overflow.
#[tokio::test]
async fn the_longest_accepted_timeouts_still_serve_every_protocol() {
    let upstream = Upstream::start().await;
    let longest = humantime::parse_duration("100y").unwrap();
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.header_read_timeout = longest;
        c.server.send_timeout = longest;
        c.server.tls_handshake_timeout = longest;
        c.server.body_read_timeout = longest;
    })
    .await;
    let pem = certificate(&gh);
    let (http, https) = (gh.http_addr(), gh.addrs.https.unwrap());
    for (name, mut conn) in [
        (
            "h2c",
            Conn::h2(TcpStream::connect(http).await.unwrap()).await,
        ),
        ("h2", Conn::h2(tls_connect(https, &pem, b"h2").await).await),
        (
            "HTTP/1.1",
            Conn::h1(TcpStream::connect(http).await.unwrap()).await,
        ),
        (
            "TLS HTTP/1.1",
            Conn::h1(tls_connect(https, &pem, b"http/1.1").await).await,
        ),
    ] {
        for _ in 0..2 {
            assert_eq!(conn.get("/public/x").await.0, 200, "{name}");
        }
    }
    assert_eq!(upstream.hits(), 8);
}

/// Opens `n` connections to `addr` that each answer a request, and keeps them.
async fn usable_connections(addr: SocketAddr, n: usize) -> Vec<Conn> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut conn = Conn::h1(TcpStream::connect(addr).await.unwrap()).await;
        assert_eq!(conn.get("/public/x").await.0, 200);
        conns.push(conn);
    }
    conns
}

/// Whether a new connection to `addr` is closed by the server before it has sent anything.
async fn refused(addr: SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    closed_within(tcp, Duration::from_secs(2)).await
}

/// Waits (up to [`DEADLINE`]) until a new connection to `addr` is admitted and answers.
async fn admitted_again(addr: SocketAddr) {
    let started = tokio::time::Instant::now();
    loop {
        let tcp = TcpStream::connect(addr).await.unwrap();
        if let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
        {
            tokio::spawn(conn);
            let request = http::Request::get("/public/x")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            if let Ok(response) = send.send_request(request).await {
                assert_eq!(response.status(), 200);
                return;
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no connection admitted after one closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn refused_total(gh: &Gatehouse, listener: &str, reason: &str) -> u64 {
    let text = http1_client()
        .get(gh.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(
        "gatehouse_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_client_over_max_connections_per_ip_is_closed_at_once_while_its_others_keep_working() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| c.server.max_connections_per_ip = 3).await;
    let http = gh.http_addr();
    let mut kept = usable_connections(http, 3).await;
    assert!(refused(http).await, "a fourth connection was admitted");
    for conn in &mut kept {
        assert_eq!(conn.get("/public/x").await.0, 200);
    }
    // Closing one makes room for one.
    drop(kept.pop());
    admitted_again(http).await;

    // Over TLS the refusal comes before the handshake.
    let https = gh.addrs.https.unwrap();
    let pem = certificate(&gh);
    let mut tls = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::h2(tls_connect(https, &pem, b"h2").await).await;
        assert_eq!(conn.get("/public/x").await.0, 200);
        tls.push(conn);
    }
    assert!(refused(https).await, "a fourth TLS connection was admitted");
    assert_eq!(tls[0].get("/public/x").await.0, 200);
    assert!(refused_total(&gh, "listen.http", "max_connections_per_ip").await >= 1);
    assert!(refused_total(&gh, "listen.https", "max_connections_per_ip").await >= 1);
}

#[tokio::test]
async fn max_connections_caps_each_listener_on_its_own() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.max_connections = 2;
        c.server.max_connections_per_ip = 2;
    })
    .await;
    let http = gh.http_addr();
    let mut kept = usable_connections(http, 2).await;
    assert!(refused(http).await, "a third connection was admitted");
    // The admin listener counts its own connections.
    let admin = http1_client()
        .get(gh.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    for conn in &mut kept {
        assert_eq!(conn.get("/public/x").await.0, 200);
    }
    drop(kept.pop());
    admitted_again(http).await;
    assert!(refused_total(&gh, "listen.http", "max_connections").await >= 1);
}

#[tokio::test]
async fn reaching_a_cap_is_logged_once_naming_the_listener_and_the_setting() {
    let upstream = Upstream::start().await;
    let gh = Process::start(
        &process_config(&upstream.url(), ""),
        &[("GATEHOUSE_SERVER__MAX_CONNECTIONS_PER_IP", "2")],
    )
    .await;
    let http = gh.addrs["listen.http"];
    let _kept = usable_connections(http, 2).await;
    for _ in 0..20 {
        assert!(refused(http).await);
    }
    let warnings = || {
        gh.logs()
            .into_iter()
            .filter(|l| l.contains("connection refused"))
            .collect::<Vec<_>>()
    };
    let started = tokio::time::Instant::now();
    while warnings().is_empty() && started.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warnings = warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let line: serde_json::Value = serde_json::from_str(&warnings[0]).unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["listener"], "listen.http", "{line}");
    assert_eq!(line["cap"], "server.max_connections_per_ip", "{line}");
    assert_eq!(line["limit"], 2, "{line}");
}

/// An HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A client that asks for `path` over HTTP/2 with a flow-control window of zero, so that it
/// takes no byte of the response's data, and answers the server's SETTINGS and PINGs as a live
/// client does. Returns whether the server closed the connection within `deadline`.
async fn h2_reader_taking_nothing(
    mut io: impl AsyncRead + AsyncWrite + Unpin,
    scheme: u8,
    path: &str,
    deadline: Duration,
) -> bool {
    let mut hello = H2_PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0.
    hello.extend(h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    // :method GET, :scheme, :path, :authority (HPACK, literals without indexing).
    let mut block = vec![0x82, scheme, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(b"\x01\x09localhost");
    hello.extend(h2_frame(1, 0x5, 1, &block));
    io.write_all(&hello).await.unwrap();
    io.flush().await.unwrap();
    tokio::time::timeout(deadline, async {
        let mut head = [0u8; 9];
        while io.read_exact(&mut head).await.is_ok() {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0; len];
            if io.read_exact(&mut payload).await.is_err() {
                break;
            }
            let answer = match (head[3], head[4] & 1) {
                (4, 0) => h2_frame(4, 1, 0, &[]),
                (6, 0) => h2_frame(6, 1, 0, &payload),
                _ => continue,
            };
            if io.write_all(&answer).await.is_err() {
                break;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_client_that_takes_no_response_data_is_closed_after_the_send_timeout() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.send_timeout = Duration::from_secs(1);
    })
    .await;
    let pem = certificate(&gh);
    let (http, https) = (gh.http_addr(), gh.addrs.https.unwrap());
    // No credentials: the 401 problem document is what the client never takes. The header read
    // timeout (10 s) and the server's PINGs (every 30 s) would keep it open forever otherwise.
    let h2c = h2_reader_taking_nothing(
        TcpStream::connect(http).await.unwrap(),
        0x86,
        "/private/x",
        DEADLINE,
    );
    let h2 = async {
        let tls = tls_connect(https, &pem, b"h2").await;
        h2_reader_taking_nothing(tls, 0x87, "/private/x", DEADLINE).await
    };
    // HTTP/1.1: an upstream's large answer (the echo of a POST) to a client that reads nothing.
    let h1 = async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(http).await.unwrap();
        let body = vec![b'x'; 16 << 20];
        let head = format!(
            "POST /public/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body).await.unwrap();
        // Reads nothing until the deadline; by then the server has given up on the answer, so
        // reading now finds it cut short (kept, it would arrive whole).
        tokio::time::sleep(DEADLINE).await;
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 16];
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(n) = tcp.read(&mut buf).await
                && n > 0
            {
                received += n;
            }
        })
        .await;
        ended.is_ok() && received < body.len()
    };
    let (h2c, h2, h1) = tokio::join!(h2c, h2, h1);
    assert!(h2c, "h2c stayed open");
    assert!(h2, "TLS h2 stayed open");
    assert!(h1, "HTTP/1.1 stayed open");
}

#[tokio::test]
async fn a_response_waiting_on_its_upstream_is_not_cut_by_the_send_timeout() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.send_timeout = Duration::from_secs(1);
    })
    .await;
    let mut tcp = TcpStream::connect(gh.http_addr()).await.unwrap();
    tcp.write_all(b"GET /public/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    // The client reads everything; the upstream is silent for three send timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    upstream.release();
    let rest = tokio::time::timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&seen).contains("second") {
            let n = tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(rest.is_ok(), "no second part");
    assert!(
        String::from_utf8_lossy(&seen).contains("second"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}
