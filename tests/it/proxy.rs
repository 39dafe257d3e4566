//! Forwarding: protocols, path and query, forwarding headers, errors from the upstream.

use std::time::Duration;

use http::Version;

use crate::harness::*;

#[tokio::test]
async fn public_route_is_forwarded_with_path_and_query_over_http1() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let response = http1_client()
        .get(gh.http_url("/public/a/b?x=1&y=%20z&next=/private/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.text().await.unwrap(), "upstream ok");
    let seen = upstream.last();
    assert_eq!(seen.target, "/public/a/b?x=1&y=%20z&next=/private/");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], gh.http_addr().to_string());
    assert_eq!(seen.headers["x-request-id"], request_id.as_str());
}

#[tokio::test]
async fn public_route_is_forwarded_over_h2c() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let response = h2c_client()
        .get(gh.http_url("/public/h2c?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    let seen = upstream.last();
    assert_eq!(seen.target, "/public/h2c?q=1");
    // The upstream speaks HTTP/1.1 and still learns the host the client asked for.
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], gh.http_addr().to_string());
}

#[tokio::test]
async fn public_route_is_forwarded_over_tls_with_http2() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let response = gh
        .tls_client(true)
        .get(gh.https_url("/public/tls?q=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    let seen = upstream.last();
    assert_eq!(seen.target, "/public/tls?q=%2F");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn tls_listener_serves_http1_when_alpn_asks_for_it() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let response = gh
        .tls_client(false)
        .get(gh.https_url("/public/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);
}

#[tokio::test]
async fn request_and_response_bodies_stream_through_unchanged() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let response = h2c_client()
        .post(gh.http_url("/public/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), body);
    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.len(), body.len());
}

#[tokio::test]
async fn response_body_reaches_the_client_before_the_upstream_finishes_it() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for client in [http1_client(), h2c_client()] {
        let mut response = client
            .get(gh.http_url("/public/stream"))
            .send()
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("the first chunk was held back until the body ended")
            .unwrap();
        assert_eq!(first.as_deref(), Some(&b"first"[..]));
        upstream.release();
        let mut rest = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            rest.extend_from_slice(&chunk);
        }
        assert_eq!(rest, b"second");
    }
}

#[tokio::test]
async fn protected_routes_without_credentials_get_401_and_never_reach_upstream() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for path in ["/private/x", "/secure/x", "/unmatched", "/", "/publicx"] {
        let response = http1_client().get(gh.http_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let challenges: Vec<_> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(
            challenges.iter().any(|c| c.starts_with("Bearer ")),
            "{challenges:?}"
        );
        assert!(
            challenges.iter().any(|c| c.starts_with("Basic ")),
            "{challenges:?}"
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        assert_problem(401, Some(&content_type), &body, "unauthenticated");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn client_request_id_is_kept_when_valid_and_replaced_when_not() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let client = http1_client();
    let response = client
        .get(gh.http_url("/public/id"))
        .header("x-request-id", "trace-42.a:b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42.a:b");
    assert_eq!(upstream.last().headers["x-request-id"], "trace-42.a:b");

    client
        .get(gh.http_url("/public/id"))
        .header("x-request-id", "<script>alert(1)</script>")
        .send()
        .await
        .unwrap();
    let forwarded = upstream.last().headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&forwarded).is_ok(), "{forwarded}");
}

#[tokio::test]
async fn upstream_down_answers_502_problem() {
    let dead = closed_port().await;
    let gh = Gatehouse::start_url(&format!("http://{dead}"), |_| {}).await;
    let response = http1_client()
        .get(gh.http_url("/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_problem(
        502,
        Some(&content_type),
        &response.text().await.unwrap(),
        "upstream-unavailable",
    );
}

#[tokio::test]
async fn upstream_that_does_not_accept_in_time_answers_502() {
    // A listener with a full accept queue that never accepts: the kernel drops further SYNs,
    // so connecting hangs as it does for a host that does not answer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            queued.push(s);
        }
    }
    let gh = Gatehouse::start_url(&format!("http://{addr}"), |c| {
        c.upstream.connect_timeout = Duration::from_millis(300);
        c.upstream.response_timeout = Duration::from_secs(20);
    })
    .await;
    let started = std::time::Instant::now();
    let response = http1_client()
        .get(gh.http_url("/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop((listener, queued));
}

#[tokio::test]
async fn slow_upstream_answers_504_problem() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(5));
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.upstream.response_timeout = Duration::from_millis(500);
    })
    .await;
    let response = http1_client()
        .get(gh.http_url("/public/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_problem(
        504,
        Some(&content_type),
        &response.text().await.unwrap(),
        "upstream-timeout",
    );
}

#[tokio::test]
async fn upstream_hop_by_hop_response_headers_are_not_passed_to_the_client() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let response = http1_client()
        .get(gh.http_url("/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-upstream"], "1");
    assert!(response.headers().get("x-upstream-private").is_none());
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| c.server.trusted_proxies.clear()).await;
    raw_get(
        gh.http_addr(),
        "/public/x",
        &[
            "X-Forwarded-For: 203.0.113.7",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: evil.example",
            "X-Original-URL: /private/x",
            "Forwarded: for=203.0.113.7",
            "X-Real-IP: 203.0.113.7",
        ],
    )
    .await;
    let seen = upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "app.test");
    for name in ["x-original-url", "forwarded", "x-real-ip"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    raw_get(
        gh.http_addr(),
        "/public/x",
        &[
            "X-Forwarded-For: 203.0.113.7",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: app.example",
        ],
    )
    .await;
    let seen = upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
}

#[tokio::test]
async fn admin_listener_answers_health_and_readiness() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let client = http1_client();
    let admin = gh.addrs.admin;
    for path in ["/healthz", "/readyz"] {
        let response = client
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // Any other path needs the admin token before it is even looked up.
    let response = client
        .get(format!("http://{admin}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .get(format!("http://{admin}/nope"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    gh.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let client = http1_client();
    for i in 0..10 {
        let response = client
            .get(gh.http_url(&format!("/public/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "upstream ok");
    }
    assert_eq!(upstream.hits(), 10);
    assert_eq!(upstream.connections(), 1, "one kept-alive connection");
}

#[tokio::test]
async fn a_response_still_streaming_does_not_hold_up_other_requests() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let client = http1_client();
    let mut streaming = client
        .get(gh.http_url("/public/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), "first");
    // The streaming response's connection is busy: this request takes another.
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(gh.http_url("/public/meanwhile")).send(),
    )
    .await
    .expect("a request waited for another's response body")
    .unwrap();
    assert_eq!(other.text().await.unwrap(), "upstream ok");
    upstream.release();
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), "second");
    assert!(streaming.chunk().await.unwrap().is_none());
    assert_eq!(upstream.connections(), 2);
    // Both connections are back in the pool once their responses ended.
    for _ in 0..4 {
        let response = client
            .get(gh.http_url("/public/again"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "upstream ok");
    }
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn an_upstream_that_closes_idle_connections_costs_no_request() {
    // Answers one request per connection as if it kept it alive, and closes it soon after.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            });
        }
    });
    let gh = Gatehouse::start_url(&format!("http://{addr}"), |_| {}).await;
    let client = http1_client();
    for i in 0..5 {
        let response = client
            .get(gh.http_url(&format!("/public/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
        // By the next request, the connection this one used has been closed while idle.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    server.abort();
}

#[tokio::test]
async fn two_host_headers_or_a_conflicting_host_are_400_and_never_forwarded() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let addr = gh.http_addr();
    for head in [
        "GET /public/x HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: app.test\r\nhost: app.test\r\nConnection: close\r\n\r\n",
        "GET http://app.test/public/x HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: app.test, evil.test\r\nConnection: close\r\n\r\n",
        "GET /private/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET /auth/verify HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Forwarded-Uri: /public/\r\n\
         Connection: close\r\n\r\n",
    ] {
        let response = raw(addr, head).await;
        assert_eq!(response.status, 400, "{head}");
        assert_problem(
            400,
            response.header("content-type"),
            &response.body,
            "invalid-host",
        );
    }
    // One host, named the same way twice (absolute form and Host), is fine.
    let response = raw(
        addr,
        "GET http://app.test/public/x HTTP/1.1\r\nHost: APP.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.hits(), 1);

    // HTTP/2: `Host` must agree with `:authority`, over h2c and over TLS.
    let h2c = h2c_client()
        .get(gh.http_url("/public/x"))
        .header("host", "evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(h2c.status(), 400);
    let tls = gh.tls_client(true);
    let response = tls
        .get(gh.https_url("/public/x"))
        .header("host", "evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 400);
    let agreeing = format!("localhost:{}", gh.addrs.https.unwrap().port());
    let response = tls
        .get(gh.https_url("/public/x"))
        .header("host", agreeing)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // HTTP/1.1 over TLS with two Host fields.
    let response = gh
        .tls_client(false)
        .get(gh.https_url("/public/x"))
        .header("host", "a.test")
        .header("host", "b.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(upstream.hits(), 2);
}

/// A raw TCP application that answers every request `HTTP/1.0 200 OK` and closes.
async fn http10_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold app")
                    .await;
            });
        }
    });
    addr
}

/// Reads one response with a `Content-Length` or chunked body off `stream`: head and body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            match length {
                Some(n) if body.len() >= n => return (head.to_owned(), body[..n].to_owned()),
                None if body.ends_with("0\r\n\r\n") => {
                    return (head.to_owned(), body.to_owned());
                }
                _ => {}
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed after {:?}", text);
        data.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn http11_clients_are_answered_http11_when_the_upstream_speaks_http10() {
    use tokio::io::AsyncWriteExt;
    let upstream = http10_upstream().await;
    let gh = Gatehouse::start_url(&format!("http://{upstream}"), |_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(gh.http_addr())
        .await
        .unwrap();
    // Two requests on one connection: the first answer must not close it.
    for _ in 0..2 {
        stream
            .write_all(b"GET /public/x HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body.contains("old app"), "{body}");
    }
    let response = http1_client()
        .get(gh.http_url("/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(response.text().await.unwrap(), "old app");
}

#[tokio::test]
async fn head_on_answers_gatehouse_writes_itself_has_no_body_over_every_protocol() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let clients = [
        ("h1", http1_client(), gh.http_url("")),
        ("h2c", h2c_client(), gh.http_url("")),
        ("h2 TLS", gh.tls_client(true), gh.https_url("")),
        ("h1 TLS", gh.tls_client(false), gh.https_url("")),
    ];
    for (protocol, client, base) in &clients {
        for (path, headers, status) in [
            ("/.well-known/jwks.json", vec![], 200),
            ("/enroll/no-such-ticket", vec![], 404),
            ("/private/x", vec![], 401),
            ("/public/a%2Fb", vec![], 400),
            ("/auth/verify", vec![("x-forwarded-uri", "/private/x")], 401),
            ("/auth/verify", vec![], 400),
            ("/v1/me/mfa-enrollment", vec![], 405),
        ] {
            let mut request = client.head(format!("{base}{path}"));
            for (name, value) in &headers {
                request = request.header(*name, *value);
            }
            let what = format!("{protocol} HEAD {path}");
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(response.status(), status, "{what}");
            let length = response
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body = response
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(body.is_empty(), "{what}");
            assert!(length.is_some_and(|n| n > 0), "{what}: {length:?}");
        }
    }
    // The admin listener (HTTP/1.1 and h2c) too.
    for client in [http1_client(), h2c_client()] {
        for (path, status) in [
            ("/healthz", 200),
            ("/metrics", 200),
            ("/admin/v1/audit", 401),
        ] {
            let response = client.head(gh.admin_url(path)).send().await.unwrap();
            assert_eq!(response.status(), status, "{path}");
            assert!(response.bytes().await.unwrap().is_empty(), "{path}");
        }
    }
    // A proxied HEAD keeps the application's answer.
    let response = h2c_client()
        .head(gh.http_url("/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().method, "HEAD");
}
