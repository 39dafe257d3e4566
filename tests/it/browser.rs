//! The enrollment page in a real headless browser: Debian's Chromium driven over the W3C WebDriver
//! protocol by chromedriver (both installed by `tests/run.sh`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    base: String,
    session: String,
    client: reqwest::Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `javascript` false disables scripts.
    async fn start(javascript: bool) -> Browser {
        let port = closed_port().await.port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver (tests/run.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let client = http1_client();
        let started = Instant::now();
        while client.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut options = json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=412,915",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        if !javascript {
            options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let created: Value = client
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            base,
            session,
            client,
            driver,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                None,
            )
            .await;
        text.as_str().unwrap().to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The page source once it contains `needle` (a form post may still be loading when a click
    /// returns), or the last source seen after 10 s.
    async fn source_containing(&self, needle: &str) -> String {
        let mut source = self.source().await;
        for _ in 0..100 {
            if source.contains(needle) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            source = self.source().await;
        }
        source
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn enroll_in_browser(javascript: bool) {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    gh.create_user(
        json!({"userName": "ada", "password": "correct horse battery", "email": "ada@example.com"}),
    )
    .await;
    let enrollment: Value = http1_client()
        .post(gh.http_url("/v1/me/mfa-enrollment?isInteractive=true"))
        .basic_auth("ada", Some("correct horse battery"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = enrollment["ticketUrl"].as_str().unwrap();
    let path = &url[url.find("/enroll/").unwrap()..];

    let browser = Browser::start(javascript).await;
    browser.open(&gh.http_url(path)).await;
    let page = browser.source().await;
    assert!(page.contains("<svg"), "the QR code renders");
    let secret = browser.text("#secret").await;
    let secret = totp_rs::Secret::try_from_base32(secret.trim()).unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(secret.as_ref().to_vec())
        .build()
        .unwrap();

    // A wrong code first: the page says so and offers the form again.
    browser.type_into("#code", "000000").await;
    browser.click("button[type=submit]").await;
    let right = totp.generate(crate::keys::now() as u64).to_string();
    if right != "000000" {
        let retry = browser.source_containing("not right").await;
        assert!(retry.contains("not right"), "{retry}");
    }
    browser.type_into("#code", &right).await;
    browser.click("button[type=submit]").await;
    let done = browser.source_containing("all set").await;
    assert!(done.contains("all set"), "{done}");
    assert_eq!(browser.text("#recovery-codes").await.lines().count(), 10);
    browser.call(reqwest::Method::DELETE, "", None).await;
}

#[tokio::test]
async fn enrollment_page_works_in_a_real_browser() {
    enroll_in_browser(true).await;
}

#[tokio::test]
async fn enrollment_page_works_in_a_real_browser_without_javascript() {
    enroll_in_browser(false).await;
}
