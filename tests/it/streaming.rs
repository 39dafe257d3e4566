//! Streaming through gatehouse (SPEC §13): server-sent events arrive event by event, big uploads
//! and downloads pass without being held in memory, and a stream on an authenticated route ends
//! with its session. The upstream is a real aiohttp application (tests/peers/sse_upstream.py).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::store::sled::SledStore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::python_peer::PythonPeer;
use crate::signin::{SESSION_COOKIE, Visitor};

const MIB: u64 = 1 << 20;
/// How much gatehouse's resident memory may grow while a big body passes through it.
const RSS_GROWTH_BOUND: u64 = 64 * MIB;
/// How long a stream may outlive its session: `proxy.reauth_interval` ("1s") plus slack for a
/// loaded machine. The default interval (30 s) would fail it.
const REAUTH_BOUND: Duration = Duration::from_secs(5);
const PASSWORD: &str = "correct horse battery";

/// Reads `response` until what arrived so far (`got`) contains `want`.
async fn read_until(response: &mut reqwest::Response, got: &mut String, want: &str) {
    while !got.contains(want) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("{want:?} did not arrive within 10 s; got {got:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before {want:?}; got {got:?}"));
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// The upstream's own view of its SSE streams.
async fn upstream_streams(upstream: &PythonPeer) -> Value {
    http1_client()
        .get(format!("{}/streams", upstream.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Lets the upstream's pending `/events` stream write its next event.
async fn next_event(upstream: &PythonPeer) {
    let response = http1_client()
        .get(format!("{}/next", upstream.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn sse_events_reach_the_client_one_by_one() {
    let upstream = PythonPeer::start("sse_upstream.py").await;
    let gh = Gatehouse::start_url(&upstream.url(), |_| {}).await;
    let cases = [
        ("HTTP/1.1", http1_client(), gh.http_url("/public/events")),
        ("h2c", h2c_client(), gh.http_url("/public/events")),
        (
            "HTTP/2 over TLS",
            gh.tls_client(true),
            gh.https_url("/public/events"),
        ),
    ];
    for (protocol, client, url) in cases {
        let mut response = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(url).header("accept", "text/event-stream").send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{protocol}: no response head while the stream is open"))
        .unwrap();
        assert_eq!(response.status(), 200, "{protocol}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut got = String::new();
        // Each event is read before the upstream is allowed to write the next one.
        for i in 1..=3 {
            if i > 1 {
                next_event(&upstream).await;
            }
            read_until(&mut response, &mut got, &format!("data: event {i}\n\n")).await;
            assert!(
                !got.contains(&format!("event {}", i + 1)),
                "{protocol}: {got}"
            );
        }
        assert_eq!(
            got,
            "id: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\nid: 3\ndata: event 3\n\n"
        );
        // Over HTTP/2 the end may come as an empty DATA frame first.
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(10), response.chunk()).await {
                Err(_) => panic!("{protocol}: the finished stream did not end"),
                Ok(Ok(Some(chunk))) if chunk.is_empty() => continue,
                Ok(end) => break end,
            }
        };
        assert!(matches!(end, Ok(None)), "{protocol}: {end:?}");
    }
    assert_eq!(
        upstream_streams(&upstream).await["ended"],
        json!(["completed", "completed", "completed"])
    );
}

#[tokio::test]
async fn sse_stream_on_an_authenticated_route_is_aborted_after_logout() {
    let upstream = PythonPeer::start("sse_upstream.py").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_config(dir.path(), &upstream.url())
        .replace("[proxy]\n", "[proxy]\nreauth_interval = \"1s\"\n");
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    for (protocol, client) in [("HTTP/1.1", http1_client()), ("h2c", h2c_client())] {
        let mut browser = Visitor::new(gh.http_addr());
        browser.sign_in("ada", PASSWORD, "/").await;
        let session = browser.session().expect("signed in");
        let mut response = client
            .get(gh.http_url("/private/ticks"))
            .header("accept", "text/event-stream")
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{protocol}");
        let mut got = String::new();
        // Ticks come 0.2 s apart: the stream outlives two re-authorisations (1 s) untouched.
        read_until(&mut response, &mut got, "data: tick 12\n\n").await;
        let page = browser.sign_out().await;
        assert_eq!(page.status, 200, "{}", page.body);
        let ended = Instant::now();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
                Err(_) => panic!("{protocol}: the stream outlived the session by 30 s"),
                Ok(Ok(Some(_))) => continue,
                Ok(end) => break end,
            }
        };
        assert!(
            ended.elapsed() < REAUTH_BOUND,
            "{protocol}: the stream outlived the session by {:?}",
            ended.elapsed()
        );
        // Aborted, not ended: a client must not take the cut stream for a complete one.
        assert!(end.is_err(), "{protocol}: the stream ended cleanly");
    }
    // The upstream's side of each stream is closed too.
    let started = Instant::now();
    while upstream_streams(&upstream).await["open"] != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the upstream still streams to nobody"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A field of /proc/`pid`/status in bytes (VmRSS: resident now, VmHWM: resident at its peak).
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Gatehouse as its own process (so its memory is its own) in front of the streaming upstream.
async fn start_process(upstream: &PythonPeer) -> (Process, u32, SocketAddr) {
    let gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let pid = gh.child.id().unwrap();
    let addr = gh.addrs["listen.http"];
    (gh, pid, addr)
}

/// POSTs `size` bytes to the upstream's counting endpoint over HTTP/1.1, from one reused
/// 1 MiB buffer; returns the response.
async fn upload(addr: SocketAddr, size: u64) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /public/upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'u'; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        stream.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("a response within 30 s of the last byte")
        .unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn large_upload_is_not_held_in_memory() {
    let upstream = PythonPeer::start("sse_upstream.py").await;
    let (_gh, pid, addr) = start_process(&upstream).await;
    // A first upload sets up what every request uses (connections, buffers).
    let response = upload(addr, MIB).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let before = memory(pid, "VmRSS");
    let size = 300 * MIB;
    let response = upload(addr, size).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("{{\"bytes\": {size}}}")),
        "{response}"
    );
    let growth = memory(pid, "VmHWM").saturating_sub(before);
    assert!(
        growth < RSS_GROWTH_BOUND,
        "gatehouse grew by {} MiB while a {} MiB body passed",
        growth / MIB,
        size / MIB
    );
}

/// The largest buffer the kernel gives a TCP socket for `which` (`tcp_rmem` or `tcp_wmem`).
fn kernel_buffer_max(which: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{which}")).unwrap();
    text.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// What the upstream's download has handed to its socket so far.
async fn upstream_written(upstream: &PythonPeer) -> u64 {
    let doc: Value = http1_client()
        .get(format!("{}/written", upstream.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["bytes"].as_u64().unwrap()
}

#[tokio::test]
async fn slow_reader_does_not_grow_memory() {
    let upstream = PythonPeer::start("sse_upstream.py").await;
    let (_gh, pid, addr) = start_process(&upstream).await;
    let warm = http1_client()
        .get(format!("http://{addr}/public/download?bytes={MIB}"))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.bytes().await.unwrap().len() as u64, MIB);
    let before = memory(pid, "VmRSS");

    let size = 500 * MIB;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /public/download?bytes={size} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut received: Vec<u8> = Vec::new();
    let body_start = loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head");
        received.extend_from_slice(&buf[..n]);
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..body_start]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = (received.len() - body_start) as u64;
    while body < 8 * MIB {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        body += n as u64;
    }

    // The client stops reading. The upstream could write the rest in about a second; it must be
    // held back instead, with gatehouse holding no more than a bounded amount in between.
    let started = Instant::now();
    let mut last = upstream_written(&upstream).await;
    let mut unchanged_since = Instant::now();
    while unchanged_since.elapsed() < Duration::from_secs(1) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the upstream kept writing for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = upstream_written(&upstream).await;
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        }
    }
    // In between: the kernel's buffers of two connections, and what gatehouse holds.
    let in_flight = 2 * (kernel_buffer_max("tcp_rmem") + kernel_buffer_max("tcp_wmem"));
    assert!(
        last < body + in_flight + RSS_GROWTH_BOUND,
        "the upstream wrote {} MiB while the client had read {} MiB",
        last / MIB,
        body / MIB
    );
    let growth = memory(pid, "VmRSS").saturating_sub(before);
    assert!(
        growth < RSS_GROWTH_BOUND,
        "gatehouse grew by {} MiB for a paused reader",
        growth / MIB
    );

    // Reading again, the rest arrives, complete.
    let rest = tokio::time::timeout(Duration::from_secs(90), async {
        let mut rest = 0u64;
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return rest;
            }
            rest += n as u64;
        }
    })
    .await
    .expect("the download finishes within 90 s");
    assert_eq!(body + rest, size);
    let growth = memory(pid, "VmHWM").saturating_sub(before);
    assert!(
        growth < RSS_GROWTH_BOUND,
        "gatehouse grew by {} MiB while {} MiB passed",
        growth / MIB,
        size / MIB
    );
}
