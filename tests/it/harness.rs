//! Test harness: a real upstream that records what reaches it, gatehouse's real server on port 0
//! (in-process, or the real binary as a child process), and clients for every protocol.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::app::App;
use gatehouse::body::{Body, full};
use gatehouse::clock::SystemClock;
use gatehouse::config::{self, Config, Secret};
use gatehouse::server::BoundAddrs;
use gatehouse::store::Store;
use gatehouse::store::sled::SledStore;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct UpstreamState {
    hits: AtomicUsize,
    connections: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    delay: Mutex<Duration>,
    /// Lets a `/stream` response send its second chunk.
    release: tokio::sync::Notify,
}

/// A response body fed chunk by chunk from a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = gatehouse::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A real HTTP/1.1 application: answers 200, echoes POST bodies, records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most recent request received.
    pub fn last(&self) -> Seen {
        self.state
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    /// Every request received, oldest first.
    pub fn all(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Lets the pending `/stream` response finish.
    pub fn release(&self) {
        self.state.release.notify_one();
    }

    /// Makes the upstream wait this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(state: &Arc<UpstreamState>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if parts.uri.path().ends_with("/stream") {
        // "first" now, "second" only once the test calls `release`.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first")).await;
            state.release.notified().await;
            let _ = tx.send(Bytes::from_static(b"second")).await;
        });
        return Response::new(ChannelBody(rx).boxed_unsync());
    }
    let reply = if parts.method == http::Method::POST {
        body
    } else {
        Bytes::from_static(b"upstream ok")
    };
    Response::builder()
        .header("x-upstream", "1")
        .header("connection", "x-upstream-private")
        .header("x-upstream-private", "hop")
        .body(full(reply))
        .unwrap()
}

/// The base test configuration: every listener on port 0, a self-signed certificate in `dir`,
/// and three routes: `/public/` public, `/private/` authenticated, `/secure/` mfa. It is a
/// development configuration (self-signed certificate, generated master key, SMS outbox).
pub fn base_config(dir: &std::path::Path, upstream: &str) -> String {
    format!(
        r#"
[server]
environment = "development"
public_url = "https://localhost"
[listen]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[tls]
cert = "{dir}/gh.crt"
key = "{dir}/gh.key"
self_signed = true
[upstream]
url = "{upstream}"
[store]
path = "{dir}/data"
[proxy]
default = "authenticated"
[[routes]]
path_prefix = "/public/"
access = "public"
[[routes]]
path_prefix = "/private/"
access = "authenticated"
[[routes]]
path_prefix = "/secure/"
access = "mfa"
"#,
        dir = dir.display()
    )
}

/// The admin token the in-process server is configured with.
pub const ADMIN_TOKEN: &str = "KpSImazd7ffx1EnVv70SKY9TBgK80Yni";

/// Gatehouse's real server, running in this test's runtime.
pub struct Gatehouse {
    pub addrs: BoundAddrs,
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Gatehouse {
    /// Starts with [`base_config`] in front of `upstream`.
    pub async fn start(upstream: &Upstream) -> Gatehouse {
        Gatehouse::start_with(upstream, |_| {}).await
    }

    /// Starts with [`base_config`] changed by `adjust`.
    pub async fn start_with(upstream: &Upstream, adjust: impl FnOnce(&mut Config)) -> Gatehouse {
        Gatehouse::start_url(&upstream.url(), adjust).await
    }

    pub async fn start_url(upstream: &str, adjust: impl FnOnce(&mut Config)) -> Gatehouse {
        Gatehouse::start_store(upstream, adjust, |config| {
            Arc::new(SledStore::open(&config.store.path).unwrap())
        })
        .await
    }

    /// Starts with the store `open` makes from the final configuration.
    pub async fn start_store(
        upstream: &str,
        adjust: impl FnOnce(&mut Config),
        open: impl FnOnce(&Config) -> Arc<dyn Store>,
    ) -> Gatehouse {
        let dir = tempfile::tempdir().unwrap();
        let toml = base_config(dir.path(), upstream);
        Gatehouse::start_toml(dir, &toml, adjust, open).await
    }

    /// Starts with the configuration `toml` (whose files are in `dir`, which the instance then
    /// keeps) changed by `adjust`, on the store `open` makes from the final configuration.
    pub async fn start_toml(
        dir: tempfile::TempDir,
        toml: &str,
        adjust: impl FnOnce(&mut Config),
        open: impl FnOnce(&Config) -> Arc<dyn Store>,
    ) -> Gatehouse {
        let mut config = config::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}"));
        config.admin.token = Some(Secret::new(ADMIN_TOKEN));
        adjust(&mut config);
        let store = open(&config);
        let app = Arc::new(
            App::with_store(config, store, Arc::new(SystemClock))
                .await
                .unwrap(),
        );
        let (server, _reloadable) = app.bind().await.unwrap();
        let addrs = server.addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Gatehouse {
            addrs,
            app,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.http.unwrap())
    }

    pub fn https_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.addrs.https.unwrap().port()
        )
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addrs.http.unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.admin)
    }

    /// Calls the admin API with the admin token; returns status and JSON body (Null when empty).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = http1_client()
            .request(method, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, json)
    }

    /// The names of the newest `limit` audit events, newest first, read through the admin API.
    pub async fn audit_events(&self, limit: usize) -> Vec<String> {
        let (status, events) = self
            .admin("GET", &format!("/admin/v1/audit?limit={limit}"), None)
            .await;
        assert_eq!(status, 200, "{events}");
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Creates a user through the admin API.
    pub async fn create_user(&self, body: serde_json::Value) -> serde_json::Value {
        let (status, user) = self.admin("POST", "/admin/v1/users", Some(body)).await;
        assert_eq!(status, 201, "{user}");
        user
    }

    /// A client that trusts this instance's generated certificate; `h2` selects HTTP/2 by ALPN.
    pub fn tls_client(&self, h2: bool) -> reqwest::Client {
        install_crypto();
        let pem = std::fs::read(self.dir.path().join("gh.crt")).unwrap();
        let builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .resolve("localhost", self.addrs.https.unwrap());
        let builder = if h2 { builder } else { builder.http1_only() };
        builder.build().unwrap()
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP/1.1 client.
pub fn http1_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder().http1_only().build().unwrap()
}

/// An h2c (HTTP/2 with prior knowledge, no TLS) client.
pub fn h2c_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` verbatim (it must end with a blank line and ask for `Connection: close`) and
/// reads the whole response. For requests no well-behaved client would send.
pub async fn raw(addr: SocketAddr, head: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A GET of `target` over a raw socket with extra header lines.
pub async fn raw_get(addr: SocketAddr, target: &str, extra: &[&str]) -> RawResponse {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    raw(addr, &head).await
}

/// Asserts a problem document with the given status and code.
pub fn assert_problem(status: u16, content_type: Option<&str>, body: &str, code: &str) {
    assert_eq!(
        content_type,
        Some("application/problem+json"),
        "body: {body}"
    );
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["status"], status, "{doc}");
    assert_eq!(
        doc["type"].as_str().unwrap(),
        format!("https://gatehouse.dev/problems/{code}"),
        "{doc}"
    );
    assert!(
        doc["title"].is_string() && doc["detail"].is_string(),
        "{doc}"
    );
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// The real `gatehouse` binary, started as a child process (JSON or text logs).
pub struct Process {
    pub child: tokio::process::Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Working directory: the config file and the store (`data/`).
    pub dir: tempfile::TempDir,
}

/// The variable that lets a test's gatehouse use development-only settings (SPEC §10).
pub const DEVELOPMENT: (&str, &str) = ("GATEHOUSE_SERVER__ENVIRONMENT", "development");

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"))
}

impl Process {
    /// Starts `gatehouse --config <file> serve` with `config` as the file and waits until the
    /// public and admin listeners report their addresses. It runs with
    /// `GATEHOUSE_SERVER__ENVIRONMENT=development` (test configurations use a generated master
    /// key and the SMS outbox) unless `env` says otherwise.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Process {
        Process::spawn(config, &[DEVELOPMENT], env).await
    }

    /// Like [`Process::start`] with no `GATEHOUSE_SERVER__ENVIRONMENT`: the file alone decides.
    pub async fn start_as_configured(config: &str, env: &[(&str, &str)]) -> Process {
        Process::spawn(config, &[], env).await
    }

    async fn spawn(config: &str, base: &[(&str, &str)], env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.toml");
        std::fs::write(&file, config).unwrap();
        let mut child = tokio::process::Command::new(binary())
            .arg("--config")
            .arg(&file)
            .arg("serve")
            .env_remove(DEVELOPMENT.0)
            .envs(base.iter().copied())
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (found_tx, found_rx) = oneshot::channel();
        let collected = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut addrs = HashMap::new();
            let mut found_tx = Some(found_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((key, addr)) = listening(&line) {
                    addrs.insert(key, addr);
                    if addrs.contains_key("listen.admin")
                        && addrs.contains_key("listen.http")
                        && let Some(tx) = found_tx.take()
                    {
                        let _ = tx.send(addrs.clone());
                    }
                }
                collected.lock().unwrap().push(line);
            }
        });
        let addrs = tokio::time::timeout(Duration::from_secs(30), found_rx)
            .await
            .expect("gatehouse reported its listeners within 30 s")
            .expect("gatehouse exited before listening");
        Process {
            child,
            addrs,
            logs,
            dir,
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs["listen.http"])
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap();
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

/// The listener and address a "listening" line reports, in the JSON or the text format
/// (`… listening listener="listen.http" addr=127.0.0.1:8080`).
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        if v["message"] != "listening" {
            return None;
        }
        let key = v["listener"].as_str()?.to_owned();
        return Some((key, v["addr"].as_str()?.parse().ok()?));
    }
    let fields = line.split_once(" listening ")?.1;
    let key = fields.split_once("listener=\"")?.1.split('"').next()?;
    let addr = fields.split_once("addr=")?.1.split(' ').next()?;
    Some((key.to_owned(), addr.parse().ok()?))
}

/// A configuration for [`Process`]: plaintext and admin listeners only, JSON logs.
pub fn process_config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[listen]
https = ""
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[upstream]
url = "{upstream}"
[[routes]]
path_prefix = "/public/"
access = "public"
[log]
format = "json"
{extra}
"#
    )
}
