//! Bounded resources: header read timeout, header limits, body limit (SECURITY.md promise 8).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test]
async fn trickling_client_is_disconnected_after_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(gh.http_addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut closed = false;
    // One header line every 200 ms: the request head never completes.
    for i in 0..50 {
        if stream
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // hyper may answer 408 before closing; keep reading until EOF.
                continue;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the trickling connection stayed open");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let lines: Vec<String> = (0..150).map(|i| format!("X-H-{i}: {i}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let response = raw_get(gh.http_addr(), "/public/x", &lines).await;
    assert_eq!(response.status, 431);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let big = format!("X-Big: {}", "a".repeat(100 * 1024));
    let response = raw_get(gh.http_addr(), "/public/x", &[&big]).await;
    assert_eq!(response.status, 431);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn proxied_body_over_proxy_max_body_is_413() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| c.proxy.max_body = Some(1024)).await;
    let client = http1_client();
    let response = client
        .post(gh.http_url("/public/upload"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(upstream.hits(), 0);
    let response = client
        .post(gh.http_url("/public/upload"))
        .body(vec![b'x'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn stalled_tls_handshake_is_closed() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.tls_handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(gh.addrs.https.unwrap()).await.unwrap();
    let started = Instant::now();
    // Half a ClientHello record header, then nothing.
    stream.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the stalled handshake was not closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}
