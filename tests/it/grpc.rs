//! gRPC through gatehouse (SPEC §13): a real grpcio upstream over h2c and a real grpcio client on
//! both listeners (h2c on listen.http, TLS on listen.https). Identity as metadata, trailers passed
//! through, gatehouse's own refusals answered as gRPC statuses, streams re-authorised.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse::store::sled::SledStore;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::*;
use crate::keys::{self, TestKey};
use crate::python_peer::{GrpcClient, GrpcOutcome, PythonPeer};
use crate::signin::{SESSION_COOKIE, Visitor};

const PROBE: &str = "gatehouse.test.Probe";
/// The same methods under a service whose route needs the `ops` scope.
const OPS: &str = "gatehouse.test.Ops";
const PASSWORD: &str = "correct horse battery";
/// How long a stream may outlive its credential: `proxy.reauth_interval` ("1s") plus slack for a
/// loaded machine. The default interval (30 s) would fail it.
const REAUTH_BOUND: Duration = Duration::from_secs(5);

/// [`base_config`] with `upstream.protocol`, `proxy.reauth_interval = "1s"`, a route for
/// [`OPS`] needing the `ops` scope, and `extra` appended.
fn grpc_config(dir: &std::path::Path, upstream: &str, protocol: &str, extra: &str) -> String {
    let base = base_config(dir, upstream)
        .replace(
            "[upstream]\n",
            &format!("[upstream]\nprotocol = \"{protocol}\"\n"),
        )
        .replace("[proxy]\n", "[proxy]\nreauth_interval = \"1s\"\n");
    format!(
        "{base}\n[[routes]]\npath_prefix = \"/{OPS}/\"\naccess = \"authenticated\"\nscopes = [\"ops\"]\n{extra}"
    )
}

/// Gatehouse in front of `upstream` with `upstream.protocol = protocol`.
async fn start(upstream: &str, protocol: &str, extra: &str) -> Gatehouse {
    let dir = tempfile::tempdir().unwrap();
    let toml = grpc_config(dir.path(), upstream, protocol, extra);
    Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The grpcio client on the h2c listener and on the TLS listener.
fn clients(gh: &Gatehouse) -> [(&'static str, GrpcClient); 2] {
    [
        ("h2c", GrpcClient::h2c(gh.http_addr())),
        (
            "tls",
            GrpcClient::tls(gh.addrs.https.unwrap(), &gh.dir.path().join("gh.crt")),
        ),
    ]
}

/// How many calls of `method` the upstream has started.
fn calls(upstream: &PythonPeer, method: &str) -> usize {
    let line = format!("call {method}");
    upstream.printed().iter().filter(|l| **l == line).count()
}

/// One port in front of two upstreams, the way one upstream speaking both protocols would be:
/// connections opening with the HTTP/2 preface (prior knowledge) go to `h2`, the rest to `http1`.
struct Splitter {
    addr: SocketAddr,
    h2: Arc<AtomicUsize>,
    http1: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Splitter {
    async fn start(h2: SocketAddr, http1: SocketAddr) -> Splitter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (h2_count, http1_count) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counts = (h2_count.clone(), http1_count.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let counts = counts.clone();
                tokio::spawn(async move {
                    let target = if opens_with_h2_preface(&client).await {
                        counts.0.fetch_add(1, Ordering::SeqCst);
                        h2
                    } else {
                        counts.1.fetch_add(1, Ordering::SeqCst);
                        http1
                    };
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Splitter {
            addr,
            h2: h2_count,
            http1: http1_count,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Splitter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the first bytes on `stream` are the HTTP/2 connection preface (RFC 9113 §3.4).
async fn opens_with_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let Ok(n) = stream.peek(&mut buf).await else {
            return false;
        };
        if n == 0 || buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The metadata the upstream's `Who` saw, from a call that must have succeeded.
fn seen_metadata(outcome: &GrpcOutcome) -> &Value {
    assert_eq!(outcome.code, "OK", "{outcome:?}");
    &outcome.messages[0]["metadata"]
}

fn assert_identity(outcome: &GrpcOutcome, user: &Value) {
    let seen = seen_metadata(outcome);
    assert_eq!(seen["x-auth-user"], "ada", "{seen}");
    assert_eq!(seen["x-auth-user-id"], user["id"].to_string(), "{seen}");
    assert!(seen["x-auth-assertion"].is_string(), "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");
}

/// A gRPC request made by hand over h2c: `path` with an empty JSON message; returns the status,
/// the response headers and the body.
async fn raw_grpc(
    gh: &Gatehouse,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut request = h2c_client()
        .post(gh.http_url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0, 0, 0, 0, 2, b'{', b'}']);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// Gatehouse's own refusal as gRPC: HTTP 200, `application/grpc`, trailers-only with `status`.
fn assert_grpc_refusal(status: u16, headers: &http::HeaderMap, body: &[u8], grpc_status: &str) {
    assert_eq!(status, 200, "{headers:?}");
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/grpc"),
        "{content_type}"
    );
    assert_eq!(headers["grpc-status"], grpc_status, "{headers:?}");
    assert!(!headers["grpc-message"].is_empty(), "{headers:?}");
    assert!(body.is_empty(), "{}", String::from_utf8_lossy(body));
}

#[tokio::test]
async fn grpc_unary_call_through_gatehouse_carries_identity_to_an_h2c_upstream() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    let ada = gh
        .create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    for (listener, client) in clients(&gh) {
        let outcome = client
            .metadata("authorization", &basic("ada", PASSWORD))
            .metadata("x-auth-user", "root")
            .call(PROBE, "Who", &json!({}))
            .await;
        assert_identity(&outcome, &ada);
        assert_eq!(calls(&upstream, "Who"), 1 + usize::from(listener == "tls"));
    }
}

#[tokio::test]
async fn grpc_unary_call_through_gatehouse_carries_identity_to_an_auto_upstream() {
    let grpc = PythonPeer::start("grpc_upstream.py").await;
    let http1 = Upstream::start().await;
    let splitter = Splitter::start(grpc.addr(), http1.addr).await;
    let gh = start(&splitter.url(), "auto", "").await;
    let ada = gh
        .create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    for (_, client) in clients(&gh) {
        let outcome = client
            .metadata("authorization", &basic("ada", PASSWORD))
            .call(PROBE, "Who", &json!({}))
            .await;
        assert_identity(&outcome, &ada);
    }
    assert!(splitter.h2.load(Ordering::SeqCst) >= 1);
    assert_eq!(http1.hits(), 0, "a gRPC call went over HTTP/1.1");
}

#[tokio::test]
async fn under_auto_requests_that_are_not_grpc_still_go_over_http1() {
    let grpc = PythonPeer::start("grpc_upstream.py").await;
    let http1 = Upstream::start().await;
    let splitter = Splitter::start(grpc.addr(), http1.addr).await;
    let gh = start(&splitter.url(), "auto", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let outcome = GrpcClient::h2c(gh.http_addr())
        .metadata("authorization", &basic("ada", PASSWORD))
        .call(PROBE, "Who", &json!({}))
        .await;
    assert_eq!(outcome.code, "OK", "{outcome:?}");
    // The same client protocols, plain requests: each reaches the upstream as HTTP/1.1.
    let clients = [http1_client(), h2c_client(), gh.tls_client(true)];
    for (i, client) in clients.iter().enumerate() {
        let url = if i == 2 {
            gh.https_url("/private/plain")
        } else {
            gh.http_url("/private/plain")
        };
        let response = client
            .post(url)
            .header("authorization", basic("ada", PASSWORD))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "{}");
        let seen = http1.last();
        assert_eq!(seen.version, http::Version::HTTP_11);
        assert_eq!(seen.headers["x-auth-user"], "ada");
    }
    assert_eq!(http1.hits(), 3);
    assert!(splitter.h2.load(Ordering::SeqCst) >= 1);
    assert!(splitter.http1.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn grpc_server_streaming_call_delivers_every_message() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let expected: Vec<Value> = (0..200).map(|i| json!({"i": i})).collect();
    for (listener, client) in clients(&gh) {
        let client = client.metadata("authorization", &basic("ada", PASSWORD));
        let outcome = client
            .call(PROBE, "Count", &json!({"n": 200, "delay": 0}))
            .await;
        assert_eq!(outcome.code, "OK", "{listener}: {outcome:?}");
        assert_eq!(outcome.messages, expected, "{listener}");
        // Messages written apart arrive apart: the first before the upstream writes the last.
        let mut call = client.start(PROBE, "Count", &json!({"n": 3, "delay": 0.5}));
        let started = Instant::now();
        assert_eq!(call.message(Duration::from_secs(10)).await, json!({"i": 0}));
        assert!(started.elapsed() < Duration::from_secs(10));
        let first_at = started.elapsed();
        let outcome = call.finish(Duration::from_secs(10)).await;
        assert_eq!(outcome.code, "OK", "{outcome:?}");
        assert!(started.elapsed() >= first_at + Duration::from_millis(900));
    }
}

#[tokio::test]
async fn upstream_grpc_status_and_message_pass_through() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let cases = [
        ("NOT_FOUND", "no such probe"),
        // grpc-message is percent-encoded on the wire (gRPC over HTTP/2, "Responses").
        ("FAILED_PRECONDITION", "décalé: 100% ☕"),
        ("UNAUTHENTICATED", "the upstream's own refusal"),
    ];
    for (listener, client) in clients(&gh) {
        let client = client.metadata("authorization", &basic("ada", PASSWORD));
        for (code, message) in cases {
            let outcome = client
                .call(PROBE, "Fail", &json!({"code": code, "message": message}))
                .await;
            assert_eq!(outcome.code, code, "{listener}: {outcome:?}");
            assert_eq!(outcome.details, message, "{listener}: {outcome:?}");
            assert_eq!(
                outcome.trailing_metadata["x-probe-trailer"], "kept",
                "{listener}: {outcome:?}"
            );
        }
    }
    assert_eq!(calls(&upstream, "Fail"), 6);
}

#[tokio::test]
async fn grpc_call_without_credentials_is_unauthenticated() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    for (listener, client) in clients(&gh) {
        for client in [
            client.clone(),
            client.metadata("authorization", &basic("ada", "wrong password")),
        ] {
            let outcome = client.call(PROBE, "Who", &json!({})).await;
            assert_eq!(outcome.code, "UNAUTHENTICATED", "{listener}: {outcome:?}");
            // grpcio names the HTTP status when it maps one: gatehouse must answer as gRPC.
            assert!(
                !outcome.details.is_empty() && !outcome.details.contains("http2 header"),
                "{listener}: {outcome:?}"
            );
        }
    }
    let (status, headers, body) = raw_grpc(&gh, &format!("/{PROBE}/Who"), &[]).await;
    assert_grpc_refusal(status, &headers, &body, "16");
    assert_eq!(calls(&upstream, "Who"), 0);
}

#[tokio::test]
async fn grpc_call_without_scope_is_permission_denied() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    gh.create_user(json!({"userName": "grace", "password": PASSWORD, "scopes": ["ops"]}))
        .await;
    for (listener, client) in clients(&gh) {
        let outcome = client
            .clone()
            .metadata("authorization", &basic("ada", PASSWORD))
            .call(OPS, "Who", &json!({}))
            .await;
        assert_eq!(outcome.code, "PERMISSION_DENIED", "{listener}: {outcome:?}");
        assert!(
            !outcome.details.is_empty() && !outcome.details.contains("http2 header"),
            "{listener}: {outcome:?}"
        );
        let outcome = client
            .metadata("authorization", &basic("grace", PASSWORD))
            .call(OPS, "Who", &json!({}))
            .await;
        assert_eq!(seen_metadata(&outcome)["x-auth-user"], "grace");
    }
    let ada = basic("ada", PASSWORD);
    let (status, headers, body) =
        raw_grpc(&gh, &format!("/{OPS}/Who"), &[("authorization", &ada)]).await;
    assert_grpc_refusal(status, &headers, &body, "7");
    assert_eq!(
        calls(&upstream, "Who"),
        2,
        "only grace's calls reach the upstream"
    );
}

#[tokio::test]
async fn gatehouses_own_refusals_of_grpc_calls_are_grpc_statuses() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = grpc_config(dir.path(), &upstream.url(), "h2c", "")
        .replace("[upstream]\n", "[upstream]\nresponse_timeout = \"1s\"\n");
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let client = GrpcClient::h2c(gh.http_addr()).metadata("authorization", &basic("ada", PASSWORD));
    let cases = [
        // /secure/ needs a second factor; ada signed in with a password only.
        ("secure", "Who", json!({}), "PERMISSION_DENIED"),
        // The upstream answers after 3 s; upstream.response_timeout is 1 s.
        (PROBE, "Who", json!({"delay": 3}), "DEADLINE_EXCEEDED"),
    ];
    for (service, method, request, code) in cases {
        let outcome = client.call(service, method, &request).await;
        assert_eq!(outcome.code, code, "/{service}/{method}: {outcome:?}");
        assert!(
            !outcome.details.is_empty() && !outcome.details.contains("http2 header"),
            "/{service}/{method}: {outcome:?}"
        );
    }
    assert_eq!(
        calls(&upstream, "Who"),
        1,
        "only the slow call reaches the upstream"
    );

    let down = start(&format!("http://{}", closed_port().await), "h2c", "").await;
    down.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let outcome = GrpcClient::h2c(down.http_addr())
        .metadata("authorization", &basic("ada", PASSWORD))
        .call(PROBE, "Who", &json!({}))
        .await;
    assert_eq!(outcome.code, "UNAVAILABLE", "{outcome:?}");
    assert!(!outcome.details.contains("http2 header"), "{outcome:?}");
    let (status, headers, body) = raw_grpc(
        &down,
        &format!("/{PROBE}/Who"),
        &[("authorization", &basic("ada", PASSWORD))],
    )
    .await;
    assert_grpc_refusal(status, &headers, &body, "14");
}

#[tokio::test]
async fn grpc_call_with_an_unreadable_path_is_invalid_argument() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let ada = basic("ada", PASSWORD);
    // An encoded slash: refused before any route is chosen.
    let outcome = GrpcClient::h2c(gh.http_addr())
        .metadata("authorization", &ada)
        .call(PROBE, "a%2FWho", &json!({}))
        .await;
    assert_eq!(outcome.code, "INVALID_ARGUMENT", "{outcome:?}");
    let (status, headers, body) = raw_grpc(
        &gh,
        &format!("/{PROBE}/a%2FWho"),
        &[("authorization", &ada)],
    )
    .await;
    assert_grpc_refusal(status, &headers, &body, "3");
    assert_eq!(calls(&upstream, "Who"), 0);
}

/// Starts an endless `Count` with `client`, checks that it keeps streaming across several
/// re-authorisations while the credential is good, then runs `end_credential` and expects the
/// call to end UNAUTHENTICATED within [`REAUTH_BOUND`], and the upstream's call to be cancelled.
async fn assert_stream_ends_with_its_credential(
    upstream: &PythonPeer,
    client: &GrpcClient,
    end_credential: impl std::future::Future<Output = ()>,
) {
    let mut call = client.start(PROBE, "Count", &json!({"n": 0, "delay": 0.1}));
    // 25 messages, 0.1 s apart: the stream outlives two re-authorisations (1 s) untouched.
    for i in 0..25 {
        assert_eq!(call.message(Duration::from_secs(10)).await, json!({"i": i}));
    }
    end_credential.await;
    let ended = Instant::now();
    let outcome = call.finish(Duration::from_secs(30)).await;
    assert!(
        ended.elapsed() < REAUTH_BOUND,
        "the stream outlived its credential by {:?}",
        ended.elapsed()
    );
    assert_eq!(outcome.code, "UNAUTHENTICATED", "{outcome:?}");
    assert!(
        upstream
            .wait_printed("count ended cancelled", Duration::from_secs(10))
            .await,
        "the upstream's call was not cancelled: {:?}",
        upstream.printed()
    );
}

#[tokio::test]
async fn grpc_stream_ends_unauthenticated_when_its_user_is_deleted() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let client = GrpcClient::h2c(gh.http_addr()).metadata("authorization", &basic("ada", PASSWORD));
    assert_stream_ends_with_its_credential(&upstream, &client, async {
        assert_eq!(gh.admin("DELETE", "/admin/v1/users/ada", None).await.0, 204);
    })
    .await;
}

#[tokio::test]
async fn grpc_stream_ends_unauthenticated_after_session_logout() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let gh = start(&upstream.url(), "h2c", "").await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let session = browser.session().expect("signed in");
    let client = GrpcClient::tls(gh.addrs.https.unwrap(), &gh.dir.path().join("gh.crt"))
        .metadata("cookie", &format!("{SESSION_COOKIE}={session}"));
    assert_stream_ends_with_its_credential(&upstream, &client, async {
        let page = browser.sign_out().await;
        assert_eq!(page.status, 200, "{}", page.body);
    })
    .await;
}

#[tokio::test]
async fn grpc_stream_ends_unauthenticated_when_its_token_expires() {
    let upstream = PythonPeer::start("grpc_upstream.py").await;
    let key = TestKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing.pem");
    std::fs::write(&key_file, key.pem()).unwrap();
    let extra = format!("[tokens]\nsigning_key_file = \"{}\"\n", key_file.display());
    let toml = grpc_config(dir.path(), &upstream.url(), "h2c", &extra);
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    let ada = gh.create_user(json!({"userName": "ada"})).await;
    let jwks: Value = http1_client()
        .get(gh.http_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    // Valid for about four more seconds: `exp` 56 s ago, and gatehouse allows 60 s of clock skew.
    let now = keys::now();
    let exp = now - gatehouse::tokens::LEEWAY + 4;
    let token = key.sign(
        kid,
        &json!({
            "iss": gh.app.config.tokens.issuer, "aud": "gatehouse", "sub": ada["id"].to_string(),
            "iat": now - 120, "nbf": now - 120, "exp": exp, "jti": "stream-1", "scope": "", "amr": ["pwd"],
        }),
    );
    let client =
        GrpcClient::h2c(gh.http_addr()).metadata("authorization", &format!("Bearer {token}"));
    let mut call = client.start(PROBE, "Count", &json!({"n": 0, "delay": 0.1}));
    assert_eq!(call.message(Duration::from_secs(10)).await, json!({"i": 0}));
    let outcome = call.finish(Duration::from_secs(30)).await;
    assert_eq!(outcome.code, "UNAUTHENTICATED", "{outcome:?}");
    let expired_at = exp + gatehouse::tokens::LEEWAY + 1;
    assert!(
        keys::now() <= expired_at + REAUTH_BOUND.as_secs() as i64,
        "the stream outlived its token by {} s",
        keys::now() - expired_at
    );
    assert!(
        keys::now() >= expired_at - 1,
        "the stream ended before its token expired"
    );
    assert!(
        upstream
            .wait_printed("count ended cancelled", Duration::from_secs(10))
            .await
    );
}
