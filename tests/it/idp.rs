//! A real OpenID provider for the tests: npm's `oidc-provider` (installed by `tests/run.sh`) run
//! by node with `tests/oidc/provider.mjs` on a loopback port, its development login page, the
//! clients and accounts a test gives it, and a few test-only endpoints for what a compliant
//! provider never does (see the script).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::install_crypto;

/// The running provider; stopped when dropped.
pub struct Idp {
    /// `http://127.0.0.1:<port>`, also its base URL.
    pub issuer: String,
    child: tokio::process::Child,
    // Held open: the provider exits when its stdin closes.
    _stdin: tokio::process::ChildStdin,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

/// Where `oidc-provider` is installed: `GATEHOUSE_TEST_OIDC_PROVIDER` (tests/run.sh sets it),
/// else where tests/run.sh installs it under the target directory.
fn install_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEHOUSE_TEST_OIDC_PROVIDER") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("oidc-provider")
}

impl Idp {
    /// Starts the provider with `config` (clients, accounts, tls_ca_file: see the script) and
    /// waits until it answers.
    pub async fn start(config: Value) -> Idp {
        let install = install_dir();
        assert!(
            install
                .join("node_modules/oidc-provider/package.json")
                .is_file(),
            "{} holds no oidc-provider (tests/run.sh installs it)",
            install.display()
        );
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.mjs");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("provider.json");
        std::fs::write(&file, serde_json::to_vec(&config).unwrap()).unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(&script)
            .arg(&install)
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (tests/run.sh installs npm, which brings it)");
        let stdin = child.stdin.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let collected = logs.clone();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "the OpenID provider did not start ({other:?}): {}",
                logs.lock().unwrap().join("\n")
            ),
        };
        // Anything it prints later is kept with its log (a closed pipe would stop it).
        let collected = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let issuer = serde_json::from_str::<Value>(&line).unwrap()["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("no issuer in {line}"))
            .to_owned();
        install_crypto();
        Idp {
            issuer,
            child,
            _stdin: stdin,
            logs,
            _dir: dir,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// What the provider wrote to its standard error so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    async fn test_post(&self, path: &str, body: Value) -> reqwest::Response {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}: {response:?}");
        response
    }

    async fn test_get(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A logout token with exactly `claims`, signed with the provider's own key.
    pub async fn logout_token(&self, claims: Value) -> String {
        self.sign_logout_token(json!({"claims": claims})).await
    }

    /// A logout token with exactly `claims`, signed by a key the provider does not publish but
    /// under the published key's id.
    pub async fn logout_token_with_foreign_key(&self, claims: Value) -> String {
        self.sign_logout_token(json!({"claims": claims, "key": "foreign"}))
            .await
    }

    async fn sign_logout_token(&self, request: Value) -> String {
        let answer: Value = self
            .test_post("/test/logout-token", request)
            .await
            .json()
            .await
            .unwrap();
        answer["token"].as_str().unwrap().to_owned()
    }

    /// The next ID token the provider issues carries `claims` instead (a null removes a claim).
    pub async fn tamper_next_id_token(&self, claims: Value) {
        self.test_post("/test/tamper", json!({"claims": claims}))
            .await;
    }

    /// The next ID token the provider issues has these `header` fields and is signed with `key`
    /// (`"foreign"`, `{"secret": s}` for an `HS…` alg, anything for `alg: none`).
    pub async fn tamper_next_id_token_header(&self, header: Value, key: Value) {
        self.test_post(
            "/test/tamper",
            json!({"claims": {}, "header": header, "key": key}),
        )
        .await;
    }

    /// A logout token with exactly `claims` and these `header` fields, signed with `key` (as
    /// [`Idp::tamper_next_id_token_header`]).
    pub async fn logout_token_signed(&self, header: Value, claims: Value, key: Value) -> String {
        self.sign_logout_token(json!({"claims": claims, "header": header, "key": key}))
            .await
    }

    /// The next ID token the provider issues is signed by a key it does not publish.
    pub async fn sign_next_id_token_with_foreign_key(&self) {
        self.test_post("/test/tamper", json!({"claims": {}, "key": "foreign"}))
            .await;
    }

    /// Authorization codes issued from now on live `seconds`.
    pub async fn set_code_lifetime(&self, seconds: u64) {
        self.test_post("/test/code-ttl", json!({"seconds": seconds}))
            .await;
    }

    /// Sets the claims of the account `login` (as the accounts of the configuration).
    pub async fn set_account(&self, login: &str, claims: Value) {
        self.test_post("/test/account", json!({"login": login, "claims": claims}))
            .await;
    }

    /// The claims of every ID token issued so far, oldest first.
    pub async fn id_tokens(&self) -> Vec<Value> {
        self.test_get("/test/id-tokens")
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every back-channel logout the provider delivered (or failed to), oldest first:
    /// `{client_id, sub, sid, ok, error?}`.
    pub async fn backchannel_deliveries(&self) -> Vec<Value> {
        self.test_get("/test/backchannel")
            .await
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("OpenID provider's log:\n{}", self.logs().join("\n"));
        }
        let _ = self.child.start_kill();
    }
}

/// A user agent at the provider: follows its redirects, keeps its cookies, signs in at the
/// development login page and consents, until the provider sends the browser back to `home`
/// (the relying party's origin).
pub struct ProviderAgent {
    client: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

/// What the user does at the provider's login page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AtLogin {
    /// Signs in with this login name and consents.
    SignIn(&'static str),
    /// Cancels (the page's "Cancel" link).
    Cancel,
}

impl Default for ProviderAgent {
    fn default() -> Self {
        ProviderAgent::new()
    }
}

impl ProviderAgent {
    pub fn new() -> ProviderAgent {
        install_crypto();
        ProviderAgent {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn keep(&mut self, response: reqwest::Response) -> (u16, String, String) {
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
            let (name, v) = pair.split_once('=').unwrap();
            let expired = attributes
                .to_ascii_lowercase()
                .contains("expires=thu, 01 jan 1970");
            if v.is_empty() || expired {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), v.to_owned());
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, location, response.text().await.unwrap())
    }

    pub async fn get(&mut self, url: &str) -> (u16, String, String) {
        let response = self
            .client
            .get(url)
            .header("accept", "text/html")
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    pub async fn post(&mut self, url: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
        let response = self
            .client
            .post(url)
            .header("accept", "text/html")
            .header("cookie", self.cookie_header())
            .form(fields)
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    /// Starts at `url` (the provider's authorization endpoint with the relying party's
    /// parameters) and does `what` at the login page; returns the URL on `home` the provider
    /// sends the browser to (the relying party's callback).
    pub async fn authorize(&mut self, idp: &Idp, url: &str, what: AtLogin, home: &str) -> String {
        let mut url = url.to_owned();
        for _ in 0..12 {
            if url.starts_with(home) {
                return url;
            }
            let (status, location, body) = self.get(&url).await;
            if (300..400).contains(&status) {
                url = absolute(idp, &location);
                continue;
            }
            assert_eq!(status, 200, "{url}: {body}");
            let action = absolute(idp, &form_action(&body));
            let answer = if body.contains("name=\"prompt\" value=\"login\"") {
                match what {
                    AtLogin::SignIn(login) => {
                        self.post(
                            &action,
                            &[("prompt", "login"), ("login", login), ("password", "any")],
                        )
                        .await
                    }
                    AtLogin::Cancel => self.get(&format!("{action}/abort")).await,
                }
            } else if body.contains("name=\"prompt\" value=\"consent\"") {
                self.post(&action, &[("prompt", "consent")]).await
            } else {
                panic!("an unexpected page at {url}: {body}");
            };
            let (status, location, body) = answer;
            assert!((300..400).contains(&status), "{action}: {status} {body}");
            url = absolute(idp, &location);
        }
        panic!("the provider never sent the browser back to {home}; last at {url}");
    }

    /// Signs out at the provider (its end-session page, confirmed), which notifies every client
    /// of the session through their back-channel logout URIs.
    pub async fn sign_out(&mut self, idp: &Idp) {
        let (status, _, body) = self.get(&idp.url("/session/end")).await;
        assert_eq!(status, 200, "{body}");
        let xsrf = hidden(&body, "xsrf");
        let action = absolute(idp, &form_action(&body));
        let (status, location, body) = self
            .post(&action, &[("xsrf", &xsrf), ("logout", "yes")])
            .await;
        assert!((300..400).contains(&status), "{status} {body}");
        let (status, _, body) = self.get(&absolute(idp, &location)).await;
        assert_eq!(status, 200, "{body}");
    }
}

fn absolute(idp: &Idp, location: &str) -> String {
    if location.starts_with('/') {
        idp.url(location)
    } else {
        location.to_owned()
    }
}

/// The `action` of the page's first form.
fn form_action(body: &str) -> String {
    let start = body
        .find("action=\"")
        .unwrap_or_else(|| panic!("no form: {body}"))
        + "action=\"".len();
    let end = start + body[start..].find('"').unwrap();
    body[start..end]
        .replace("&amp;", "&")
        .replace("&#x2F;", "/")
}

fn hidden(body: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&needle)
        .unwrap_or_else(|| panic!("no hidden `{name}`: {body}"))
        + needle.len();
    let end = start + body[start..].find('"').unwrap();
    body[start..end].to_owned()
}
