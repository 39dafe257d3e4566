//! What a client without credentials can make gatehouse hold (SPEC §10, SECURITY.md promise 13):
//! password hashing is bounded and refused beyond a short queue, wrong passwords are limited per
//! client address, local endpoints' bodies are refused early, read within a timeout and capped
//! across requests, and metrics samples do not wait for a scrape to be freed.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gatehouse::store::sled::SledStore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

const PASSWORD: &str = "ada's own password";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One endpoint that takes Basic, in its family's error format.
struct Target {
    name: &'static str,
    path: &'static str,
    method: reqwest::Method,
}

/// A proxied route, Nexus and Manage: every family whose endpoints take Basic.
fn basic_targets() -> [Target; 3] {
    [
        Target {
            name: "proxied route",
            path: "/private/x",
            method: reqwest::Method::GET,
        },
        Target {
            name: "Nexus",
            path: "/v1/me/mfa-enrollment?isInteractive=true",
            method: reqwest::Method::POST,
        },
        Target {
            name: "Manage",
            path: "/manage/v2/user/send/otp",
            method: reqwest::Method::POST,
        },
    ]
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: String,
}

fn request(
    client: &reqwest::Client,
    gh: &Gatehouse,
    target: &Target,
    auth: &str,
    forwarded_for: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut request = client
        .request(target.method.clone(), gh.http_url(target.path))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(r#"{"userName":"ada","phoneNumber":"+14155550123"}"#);
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    request
}

async fn send(
    client: &reqwest::Client,
    gh: &Gatehouse,
    target: &Target,
    auth: &str,
    forwarded_for: Option<&str>,
) -> Answer {
    answer(request(client, gh, target, auth, forwarded_for)).await
}

/// Sends every request at once.
async fn concurrently(requests: impl Iterator<Item = reqwest::RequestBuilder>) -> Vec<Answer> {
    let tasks: Vec<_> = requests.map(|r| tokio::spawn(answer(r))).collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (retry_after, content_type) = (header("retry-after"), header("content-type"));
    Answer {
        status: response.status().as_u16(),
        retry_after,
        content_type,
        body: response.text().await.unwrap(),
    }
}

/// Checks a refusal is in the family's own format.
fn assert_family_format(target: &Target, answer: &Answer, status: u16, code: &str, errcode: i64) {
    assert_eq!(answer.status, status, "{}: {}", target.name, answer.body);
    if target.name == "Manage" {
        let envelope: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(envelope["errors"][0]["errorCode"], errcode, "{envelope}");
    } else {
        assert_problem(status, answer.content_type.as_deref(), &answer.body, code);
    }
    assert!(
        answer
            .retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)),
        "{}: Retry-After {:?}",
        target.name,
        answer.retry_after
    );
}

#[tokio::test]
async fn wrong_passwords_beyond_the_hashing_queue_get_503_with_retry_after_in_every_family() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.max_concurrent_hashes = 1;
        c.auth.max_queued_hashes = 2;
        c.auth.failed_password_limit = 0;
        // Guesses count towards the user's lockout too; here only the hashing bound is tested.
        c.mfa.lockout.max_failures = 1000;
    })
    .await;
    gh.create_user(
        json!({"userName": "ada", "password": PASSWORD, "scopes": ["manage.otp.verify"]}),
    )
    .await;
    let client = http1_client();
    for target in basic_targets() {
        // Different guesses: the same credential sent at once is verified once for all.
        let wrong: Vec<String> = (0..24)
            .map(|i| basic("ada", &format!("guess {i}")))
            .collect();
        let answers = concurrently(
            wrong
                .iter()
                .map(|w| request(&client, &gh, &target, w, None)),
        )
        .await;
        let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
        assert!(
            !busy.is_empty(),
            "{}: no refusal among {:?}",
            target.name,
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        for answer in &busy {
            assert_family_format(&target, answer, 503, "busy", 5030);
        }
        assert!(
            answers.iter().all(|a| a.status == 503 || a.status == 401),
            "{}: {:?}",
            target.name,
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
    }
    assert_eq!(gh.app.auth.hashes().peak_in_flight(), 1);
    assert_eq!(upstream.hits(), 0);
    // Once the burst is over, the right password works again.
    let answer = send(
        &client,
        &gh,
        &basic_targets()[0],
        &basic("ada", PASSWORD),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn wrong_passwords_from_one_address_get_429_while_other_addresses_still_sign_in() {
    let upstream = Upstream::start().await;
    // Loopback is a trusted proxy by default, so X-Forwarded-For names the client.
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.failed_password_limit = 3;
        c.auth.failed_password_window = Duration::from_secs(600);
        // Guesses count towards the user's lockout too; here only the per-address limit is tested.
        c.mfa.lockout.max_failures = 1000;
    })
    .await;
    gh.create_user(
        json!({"userName": "ada", "password": PASSWORD, "scopes": ["manage.otp.verify"]}),
    )
    .await;
    let client = http1_client();
    for (i, target) in basic_targets().iter().enumerate() {
        let attacker = format!("198.51.100.{}", 10 + i);
        let other = format!("203.0.113.{}", 10 + i);
        let wrong = basic("ada", "not the password");
        let right = basic("ada", PASSWORD);
        for _ in 0..3 {
            let answer = send(&client, &gh, target, &wrong, Some(&attacker)).await;
            assert_eq!(answer.status, 401, "{}: {}", target.name, answer.body);
        }
        let answer = send(&client, &gh, target, &wrong, Some(&attacker)).await;
        assert_family_format(target, &answer, 429, "too-many-failures", 4291);
        // The right password from that address is refused the same way: no oracle.
        let answer = send(&client, &gh, target, &right, Some(&attacker)).await;
        assert_family_format(target, &answer, 429, "too-many-failures", 4291);
        // Another address is not affected, and a proxy in front does not hide the client.
        let answer = send(&client, &gh, target, &right, Some(&other)).await;
        assert!(
            ![401, 429, 503].contains(&answer.status),
            "{}: {} {}",
            target.name,
            answer.status,
            answer.body
        );
        let answer = send(
            &client,
            &gh,
            target,
            &right,
            Some(&format!("{attacker}, 127.0.0.1")),
        )
        .await;
        assert_eq!(answer.status, 429, "{}: {}", target.name, answer.body);
    }
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_escape_the_failed_password_limit_with_x_forwarded_for() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.trusted_proxies = vec!["192.0.2.0/24".parse().unwrap()];
        c.auth.failed_password_limit = 2;
        c.auth.failed_password_window = Duration::from_secs(600);
    })
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let client = http1_client();
    let target = &basic_targets()[0];
    let wrong = basic("ada", "not the password");
    let mut statuses = Vec::new();
    for i in 0..5 {
        let spoofed = format!("198.51.100.{i}");
        statuses.push(
            send(&client, &gh, target, &wrong, Some(&spoofed))
                .await
                .status,
        );
    }
    assert_eq!(statuses, [401, 401, 429, 429, 429]);
}

/// The peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The deploy manifests give gatehouse 128 MiB; argon2 takes 19 MiB per password.
#[tokio::test]
async fn many_concurrent_wrong_passwords_keep_the_real_binary_well_under_128_mib() {
    let upstream = Upstream::start().await;
    let gh = Process::start(
        &process_config(
            &upstream.url(),
            "[auth]\nmax_concurrent_hashes = 2\nfailed_password_limit = 0\n",
        ),
        &[],
    )
    .await;
    let client = http1_client();
    let pid = gh.child.id().unwrap();
    // Serve a few requests first, so that lazy initialisation is behind the baseline.
    for _ in 0..5 {
        let response = client.get(gh.http_url("/public/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let baseline = peak_rss_kib(pid);
    let mut statuses = Vec::new();
    for round in 0..3 {
        let answers = concurrently((0..64).map(|i| {
            client.get(gh.http_url("/private/x")).header(
                "authorization",
                basic("nobody", &format!("guess {round}.{i}")),
            )
        }))
        .await;
        statuses.extend(answers.into_iter().map(|a| a.status));
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    // Two hashing threads of 19 MiB each, and room for the connections; the 64 hashes at once
    // this replaced took over 1 GiB.
    let peak = peak_rss_kib(pid);
    assert!(
        peak < baseline + 2 * 20 * 1024 + 16 * 1024 && peak < 120 * 1024,
        "peak RSS {} MiB (from {} MiB) with 64 concurrent wrong passwords",
        peak / 1024,
        baseline / 1024
    );
    // Only the warm-up requests reached the application.
    assert_eq!(upstream.hits(), 5);
}

/// Sends a request head announcing a 1 MiB body and a few bytes of it, and returns the status
/// gatehouse answers with while the rest is still unsent.
async fn answer_before_the_body(addr: std::net::SocketAddr, path: &str, headers: &[&str]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n",
        1024 * 1024
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'a'; 1024]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("gatehouse waited for the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"))
}

#[tokio::test]
async fn requests_that_cannot_succeed_are_answered_before_their_body_is_read() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let addr = gh.http_addr();
    let form = "Content-Type: application/x-www-form-urlencoded";
    let json = "Content-Type: application/json";
    let unknown = "A".repeat(43);
    assert_eq!(
        answer_before_the_body(addr, &format!("/enroll/{unknown}"), &[form]).await,
        404
    );
    assert_eq!(
        answer_before_the_body(addr, "/enroll/x", &[form]).await,
        404
    );
    assert_eq!(
        answer_before_the_body(addr, "/v1/me/verify-otp", &[json]).await,
        401
    );
    assert_eq!(
        answer_before_the_body(addr, "/manage/v2/user/validate/otp", &[json]).await,
        401
    );
    assert_eq!(
        answer_before_the_body(
            addr,
            "/v1/me/verify-otp",
            &[json, "Authorization: Bearer a.b.c"]
        )
        .await,
        401
    );
}

/// The head of a POST of `path` with `framing` (the body's length or its chunking, and any
/// connection header) and `headers`.
fn post_head(path: &str, framing: &str, headers: &[String]) -> String {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: app.test\r\n{framing}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Sends a head announcing `length` bytes and `sent` of them, then keeps the connection open.
async fn stalled_body(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[String],
    length: usize,
    sent: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = post_head(path, &format!("Content-Length: {length}"), headers);
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; sent]).await.unwrap();
    stream
}

async fn status_of(stream: &mut TcpStream) -> u16 {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
        .await
        .expect("no answer within 15 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"))
}

#[tokio::test]
async fn a_body_slower_than_the_body_read_timeout_is_answered_408_in_every_family() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    gh.create_user(
        json!({"userName": "ada", "password": PASSWORD, "scopes": ["manage.otp.verify"]}),
    )
    .await;
    let auth = format!("Authorization: {}", basic("ada", PASSWORD));
    let json = "Content-Type: application/json".to_owned();
    for (addr, path, headers) in [
        (
            gh.http_addr(),
            "/v1/me/verify-otp",
            vec![auth.clone(), json.clone()],
        ),
        (
            gh.http_addr(),
            "/manage/v2/user/validate/otp",
            vec![auth.clone(), json.clone()],
        ),
        (
            gh.addrs.admin,
            "/admin/v1/users",
            vec![format!("Authorization: Bearer {ADMIN_TOKEN}"), json.clone()],
        ),
    ] {
        let mut stream = stalled_body(addr, path, &headers, 100, 10).await;
        assert_eq!(status_of(&mut stream).await, 408, "{path}");
    }
}

#[tokio::test]
async fn bodies_beyond_max_buffered_bytes_get_503_and_the_budget_comes_back() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.server.max_buffered_bytes = 64 * 1024;
        // A larger body could never be held: the configuration refuses more.
        c.server.max_body_bytes = 64 * 1024;
    })
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let auth = format!("Authorization: {}", basic("ada", PASSWORD));
    let json = "Content-Type: application/json".to_owned();
    let headers = [auth, json];
    // One slow request holds most of the budget.
    let holder = stalled_body(
        gh.http_addr(),
        "/v1/me/verify-otp",
        &headers,
        64 * 1024,
        60 * 1024,
    )
    .await;
    let mut waited = 0;
    while gh.app.bodies.buffered() < 60 * 1024 {
        assert!(waited < 1000, "the first body was never buffered");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let client = http1_client();
    let send = || {
        client
            .post(gh.http_url("/v1/me/verify-otp"))
            .header("authorization", basic("ada", PASSWORD))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"otp":"123456","pad":"{}"}}"#,
                " ".repeat(16 * 1024)
            ))
    };
    for answer in concurrently((0..4).map(|_| send())).await {
        assert_family_format(&basic_targets()[1], &answer, 503, "busy", 0);
    }
    assert!(gh.app.bodies.buffered() <= 64 * 1024);
    drop(holder);
    let mut waited = 0;
    while gh.app.bodies.buffered() > 0 {
        assert!(waited < 1000, "the budget never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let answer = answer(send()).await;
    assert_ne!(answer.status, 503, "{}", answer.body);
}

#[tokio::test]
async fn histogram_samples_are_freed_without_a_metrics_scrape() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let client = http1_client();
    for _ in 0..50 {
        let response = client.get(gh.http_url("/public/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // The upkeep timer runs every few seconds; nobody reads /metrics here.
    let mut waited = 0;
    while gh.app.meter.pending_samples() > 0 {
        assert!(waited < 300, "histogram samples were never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
}

/// A request body that sends one chunk and then never ends.
struct Endless(bool);

impl hyper::body::Body for Endless {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from(
            vec![b'a'; 16 * 1024],
        )))))
    }
}

#[tokio::test]
async fn http2_streams_posting_to_unknown_enrollment_tickets_are_answered_without_their_bodies() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let stream = TcpStream::connect(gh.http_addr()).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for i in 0..60 {
        let mut sender = sender.clone();
        let request = http::Request::post(format!("http://app.test/enroll/guess{i}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", 1024 * 1024)
            .body(Endless(false))
            .unwrap();
        streams.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            sender
                .send_request(request)
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for stream in streams {
        let status = tokio::time::timeout(Duration::from_secs(10), stream)
            .await
            .expect("a stream waited for its body")
            .unwrap();
        assert_eq!(status, 404);
    }
    assert_eq!(gh.app.bodies.buffered(), 0);
}

/// A client that opens many connections at once with one right password (a job's first burst)
/// is neither queued out nor throttled: the credential is verified once for all of them.
#[tokio::test]
async fn a_burst_of_one_right_password_is_verified_once_and_signs_every_request_in() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.max_concurrent_hashes = 1;
        c.auth.max_queued_hashes = 1;
        c.auth.failed_password_limit = 2;
    })
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let client = http1_client();
    let right = basic("ada", PASSWORD);
    let answers = concurrently((0..40).map(|_| {
        client
            .get(gh.http_url("/private/x"))
            .header("authorization", &right)
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(upstream.hits(), 40);
}

/// `body` posted to `path` on `addr` with `headers`, its length declared or in chunks, on a
/// connection of its own: the answer's status and body.
async fn posted(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[String],
    body: &[u8],
    chunked: bool,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let framing = match chunked {
        true => "Transfer-Encoding: chunked".to_owned(),
        false => format!("Content-Length: {}", body.len()),
    };
    let mut request =
        post_head(path, &format!("Connection: close\r\n{framing}"), headers).into_bytes();
    match chunked {
        true => {
            for chunk in body.chunks(1000) {
                request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                request.extend_from_slice(chunk);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
        }
        false => request.extend_from_slice(body),
    }
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer))
        .await
        .expect("no answer within 15 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    (status, text)
}

#[tokio::test]
async fn bodies_over_server_max_body_bytes_are_413_in_every_family_and_smaller_ones_are_read() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A provider whose back-channel logouts are posted here; its issuer is never reached before
    // the body is read.
    let toml = format!(
        "{}\n[[oidc.providers]]\nid = \"corp\"\nname = \"Corp\"\nissuer = \"http://{}\"\n\
         client_id = \"gatehouse\"\nclient_secret = \"corp-secret-5Tq8Lm2Xv7Rb\"\n",
        base_config(dir.path(), &upstream.url()),
        closed_port().await
    );
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |c| c.server.max_body_bytes = 4 * 1024,
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    gh.create_user(
        json!({"userName": "ada", "password": PASSWORD, "scopes": ["manage.otp.verify"]}),
    )
    .await;
    let auth = format!("Authorization: {}", basic("ada", PASSWORD));
    let json = "Content-Type: application/json".to_owned();
    let admin = format!("Authorization: Bearer {ADMIN_TOKEN}");
    // Each endpoint, a body within the limit and what it answers to it once read.
    let padded = |body: &str, to: usize| format!("{body}{}", " ".repeat(to - body.len()));
    for (addr, path, headers, within, read) in [
        (
            gh.http_addr(),
            "/v1/me/verify-otp",
            vec![auth.clone(), json.clone()],
            padded(r#"{"otp":"123456"}"#, 4 * 1024),
            404,
        ),
        (
            gh.http_addr(),
            "/manage/v2/user/validate/otp",
            vec![auth.clone(), json.clone()],
            padded(
                r#"{"userName":"ada","phoneNumber":"+14155550123","otp":"123456"}"#,
                4 * 1024,
            ),
            400,
        ),
        (
            gh.addrs.admin,
            "/admin/v1/users",
            vec![admin.clone(), json.clone()],
            padded(r#"{"userName":"bob"}"#, 4 * 1024),
            201,
        ),
        (
            gh.http_addr(),
            "/auth/backchannel-logout/corp",
            vec!["Content-Type: application/x-www-form-urlencoded".to_owned()],
            format!("logout_token=a.b.c&pad={}", "x".repeat(4 * 1024 - 23)),
            // Read, then the provider's keys cannot be fetched: try again later.
            503,
        ),
    ] {
        for chunked in [false, true] {
            let over = format!("{within} ");
            let (status, answer) = posted(addr, path, &headers, over.as_bytes(), chunked).await;
            assert_eq!(status, 413, "{path} (chunked: {chunked}): {answer}");
            assert!(answer.contains("4 KiB"), "{path}: {answer}");
        }
        let (status, answer) = posted(addr, path, &headers, within.as_bytes(), false).await;
        assert_eq!(status, read, "{path}: {answer}");
    }
    assert!(gh.app.store.user_by_name("bob").await.unwrap().is_some());
    assert_eq!(gh.app.bodies.buffered(), 0);
}
