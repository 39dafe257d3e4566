//! The upstream connection pool: a connection carries one user's exchange after another's only
//! when the last exchange ended on a message boundary. The upstream here is raw TCP that
//! misbehaves on purpose: bytes it sends beyond its response (the "attacker's" response) are held
//! back until the next request arrives on that connection, as a slow or racing upstream does, so
//! that reusing the connection hands them to whoever sends next.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// What a user who got the attacker's bytes would read.
const FAKE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nATTACKER";

struct RawUpstream {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Requests that arrived on a connection after a misbehaving exchange on it.
    reused: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let reused = Arc::new(AtomicUsize::new(0));
        let (a, r) = (accepted.clone(), reused.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, r.clone()));
            }
        });
        RawUpstream {
            addr,
            accepted,
            reused,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves requests one after another on `stream`. Paths:
/// - `/public/head`: to `HEAD`, a head announcing a body, and then the body anyway (held back);
/// - `/public/nocontent`: `204`, then a body (held back);
/// - `/public/notmodified`: `304`, then a body (held back);
/// - `/public/close`: `Connection: close`, then more (held back) on a connection kept open;
/// - `/public/old`: an HTTP/1.0 response, then more (held back);
/// - `/public/extra`: more bytes than `Content-Length`, in the same write;
/// - `/public/early`: answered at once, the request body left unread (the rest of the stream is
///   read as requests, as a server that answers early and does not drain does);
/// - `/public/smuggled`: answered only when the next request arrives (held back);
/// - anything else: the target echoed in the body, the request body read.
async fn serve(mut stream: TcpStream, reused: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut held: Option<&'static [u8]> = None;
    let mut misbehaved = false;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if misbehaved {
            reused.fetch_add(1, Ordering::SeqCst);
        }
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let target = words.next().unwrap_or("").to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if let Some(bytes) = held.take() {
            let _ = stream.write_all(bytes).await;
        }
        let mut body_unread = length;
        let out: Vec<u8> = match target.as_str() {
            "/public/head" if method == "HEAD" => {
                held = Some(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nATTACKER");
                b"HTTP/1.1 200 OK\r\ncontent-length: 38\r\n\r\n".to_vec()
            }
            "/public/nocontent" => {
                held = Some(FAKE);
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
            }
            "/public/notmodified" => {
                held = Some(FAKE);
                b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec()
            }
            "/public/close" => {
                held = Some(FAKE);
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec()
            }
            "/public/old" => {
                held = Some(FAKE);
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
            }
            "/public/extra" => {
                [&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..], FAKE].concat()
            }
            "/public/early" => {
                body_unread = 0;
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly".to_vec()
            }
            "/public/smuggled" => {
                held = Some(FAKE);
                Vec::new()
            }
            _ => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    target.len()
                )
                .into_bytes();
                out.extend_from_slice(target.as_bytes());
                out
            }
        };
        // The early answer's unread body arrives next as the attacker's own request.
        misbehaved = held.is_some() || target == "/public/extra";
        while buf.len() < body_unread {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_unread);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Users' requests, each must read its own answer.
async fn users(gh: &Gatehouse, from: usize, count: usize) {
    let client = http1_client();
    let mut tasks = Vec::new();
    for i in from..from + count {
        let client = client.clone();
        let url = gh.http_url(&format!("/public/user/{i}"));
        tasks.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(
                body,
                format!("/public/user/{i}"),
                "user {i} read another's bytes"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// One misbehaving exchange, then users one at a time and concurrently, interleaved with more
/// misbehaving exchanges: nobody reads bytes meant for another, and no connection carries a
/// request after a misbehaving exchange.
async fn misbehaving_exchange_never_reaches_the_next_user(method: reqwest::Method, path: &str) {
    let upstream = RawUpstream::start().await;
    let gh = Gatehouse::start_url(&upstream.url(), |_| {}).await;
    let attacker = http1_client();
    let attack = || async {
        let response = attacker
            .request(method.clone(), gh.http_url(path))
            .send()
            .await
            .unwrap();
        let _ = response.bytes().await;
    };
    attack().await;
    users(&gh, 0, 1).await;
    assert_eq!(upstream.reused.load(Ordering::SeqCst), 0);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    for round in 0..5 {
        let (_, ()) = tokio::join!(attack(), users(&gh, 100 * (round + 1), 20));
        attack().await;
        users(&gh, 100 * (round + 1) + 50, 20).await;
    }
    assert_eq!(upstream.reused.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn body_written_on_head_response_is_never_read_by_the_next_user() {
    misbehaving_exchange_never_reaches_the_next_user(reqwest::Method::HEAD, "/public/head").await;
}

#[tokio::test]
async fn body_written_after_204_is_never_read_by_the_next_user() {
    misbehaving_exchange_never_reaches_the_next_user(reqwest::Method::GET, "/public/nocontent")
        .await;
}

#[tokio::test]
async fn body_written_after_304_is_never_read_by_the_next_user() {
    misbehaving_exchange_never_reaches_the_next_user(reqwest::Method::GET, "/public/notmodified")
        .await;
}

#[tokio::test]
async fn bytes_after_connection_close_are_never_read_by_the_next_user() {
    misbehaving_exchange_never_reaches_the_next_user(reqwest::Method::GET, "/public/close").await;
}

#[tokio::test]
async fn bytes_after_http10_response_are_never_read_by_the_next_user() {
    misbehaving_exchange_never_reaches_the_next_user(reqwest::Method::GET, "/public/old").await;
}

#[tokio::test]
async fn bytes_beyond_content_length_are_never_read_by_the_next_user() {
    misbehaving_exchange_never_reaches_the_next_user(reqwest::Method::GET, "/public/extra").await;
}

/// The attacker's request body, sent only after the upstream answered, is a request the upstream
/// reads from the connection: its answer must not reach the next user.
#[tokio::test]
async fn request_body_answered_early_is_never_read_as_a_request_for_the_next_user() {
    let upstream = RawUpstream::start().await;
    let gh = Gatehouse::start_url(&upstream.url(), |_| {}).await;
    let smuggled = b"GET /public/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    for round in 0..3 {
        let mut attacker = TcpStream::connect(gh.http_addr()).await.unwrap();
        let head = format!(
            "POST /public/early HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
            smuggled.len()
        );
        attacker.write_all(head.as_bytes()).await.unwrap();
        // The whole early answer, before sending the body.
        let mut seen = Vec::new();
        while !seen.ends_with(b"early") {
            let mut chunk = [0u8; 1024];
            let n = attacker.read(&mut chunk).await.unwrap();
            assert!(n > 0, "gatehouse closed before the early answer");
            seen.extend_from_slice(&chunk[..n]);
        }
        attacker.write_all(smuggled).await.unwrap();
        users(&gh, round * 100, 1).await;
        users(&gh, round * 100 + 10, 20).await;
        drop(attacker);
    }
    assert_eq!(upstream.reused.load(Ordering::SeqCst), 0);
}

/// Well-behaved exchanges keep using one connection.
#[tokio::test]
async fn well_behaved_exchanges_reuse_the_upstream_connection() {
    let upstream = RawUpstream::start().await;
    let gh = Gatehouse::start_url(&upstream.url(), |_| {}).await;
    for i in 0..10 {
        users(&gh, i, 1).await;
    }
    let client = http1_client();
    for i in 0..5 {
        let response = client
            .post(gh.http_url(&format!("/public/user/p{i}")))
            .body("a request body")
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), format!("/public/user/p{i}"));
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}
