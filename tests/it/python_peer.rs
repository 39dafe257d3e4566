//! Real peers written in Python (tests/peers/): servers that print their port when ready, and the
//! gRPC client (grpcio) that prints what a call returned.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// tests/peers/`script`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// A Python server from tests/peers/ on a free loopback port; stopped when dropped.
pub struct PythonPeer {
    pub port: u16,
    /// Everything it printed after its port, in order.
    lines: Arc<Mutex<Vec<String>>>,
    _child: Child,
}

impl PythonPeer {
    /// Starts `script` and waits for the port it prints once it serves.
    pub async fn start(name: &str) -> PythonPeer {
        let mut child = Command::new("python3")
            .arg(script(name))
            // The peers end when their stdin closes, should the test process die unkindly.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (tests/run.sh installs grpcio and aiohttp)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name} printed no port within 30 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("{name} exited before serving"));
        let port = first.trim().parse().unwrap();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let collected = printed.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        PythonPeer {
            port,
            lines: printed,
            _child: child,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it has printed so far (after its port).
    pub fn printed(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `limit` for a printed line equal to `line`.
    pub async fn wait_printed(&self, line: &str, limit: Duration) -> bool {
        let start = tokio::time::Instant::now();
        while start.elapsed() < limit {
            if self.printed().iter().any(|l| l == line) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// How a gRPC call ended, as the grpcio client saw it.
#[derive(Debug)]
pub struct GrpcOutcome {
    /// The status code's name: "OK", "UNAUTHENTICATED", ...
    pub code: String,
    pub details: String,
    pub messages: Vec<Value>,
    pub trailing_metadata: Value,
}

/// The grpcio client of tests/peers/grpc_client.py, aimed at one listener.
#[derive(Clone)]
pub struct GrpcClient {
    target: String,
    tls_root: Option<PathBuf>,
    metadata: Vec<String>,
}

impl GrpcClient {
    /// Insecure channel: HTTP/2 with prior knowledge (h2c).
    pub fn h2c(addr: std::net::SocketAddr) -> GrpcClient {
        GrpcClient {
            target: addr.to_string(),
            tls_root: None,
            metadata: Vec::new(),
        }
    }

    /// TLS channel trusting only `root` (a PEM file), expecting a certificate for "localhost".
    pub fn tls(addr: std::net::SocketAddr, root: &Path) -> GrpcClient {
        GrpcClient {
            target: addr.to_string(),
            tls_root: Some(root.to_owned()),
            metadata: Vec::new(),
        }
    }

    /// Adds one metadata entry to every call.
    pub fn metadata(mut self, name: &str, value: &str) -> GrpcClient {
        self.metadata.push(format!("{name}={value}"));
        self
    }

    /// Starts `method` of `service` (e.g. "gatehouse.test.Probe") with `request`.
    pub fn start(&self, service: &str, method: &str, request: &Value) -> GrpcCall {
        let mut command = Command::new("python3");
        command
            .arg(script("grpc_client.py"))
            .arg(&self.target)
            .arg(method)
            .arg(request.to_string())
            .args(["--service", service]);
        if let Some(root) = &self.tls_root {
            command.arg("--tls").arg(root);
        }
        for entry in &self.metadata {
            command.arg("--metadata").arg(entry);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with grpcio (tests/run.sh installs it)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        GrpcCall {
            _child: child,
            lines,
        }
    }

    /// Calls `method` and waits (at most 60 s) for the outcome.
    pub async fn call(&self, service: &str, method: &str, request: &Value) -> GrpcOutcome {
        self.start(service, method, request)
            .finish(Duration::from_secs(60))
            .await
    }
}

/// A call in progress: its messages as they arrive, then its outcome.
pub struct GrpcCall {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

/// What the client printed next: a message, or the outcome.
enum Printed {
    Message(Value),
    Outcome(GrpcOutcome),
}

impl GrpcCall {
    async fn next(&mut self, limit: Duration) -> Option<Printed> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .ok()?
            .unwrap()
            .expect("the gRPC client exited without printing an outcome");
        let doc: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(message) = doc.get("message") {
            return Some(Printed::Message(message.clone()));
        }
        Some(Printed::Outcome(GrpcOutcome {
            code: doc["code"].as_str().unwrap().to_owned(),
            details: doc["details"].as_str().unwrap_or_default().to_owned(),
            messages: doc["messages"].as_array().unwrap().clone(),
            trailing_metadata: doc["trailing_metadata"].clone(),
        }))
    }

    /// The next streamed message; panics if the call ends first or none comes within `limit`.
    pub async fn message(&mut self, limit: Duration) -> Value {
        match self.next(limit).await {
            Some(Printed::Message(message)) => message,
            Some(Printed::Outcome(outcome)) => panic!("the call ended: {outcome:?}"),
            None => panic!("no message within {limit:?}"),
        }
    }

    /// Skips any further messages and returns the outcome; panics if none comes within `limit`.
    pub async fn finish(mut self, limit: Duration) -> GrpcOutcome {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Printed::Message(_)) => continue,
                Some(Printed::Outcome(outcome)) => return outcome,
                None => panic!("the call did not end within {limit:?}"),
            }
        }
    }
}
