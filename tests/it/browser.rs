//! The enrollment page in a real headless browser: Debian's Chromium driven over the W3C WebDriver
//! protocol by chromedriver (both installed by `tests/run.sh`). Every state of the page is also
//! checked by axe-core (npm, installed by `tests/run.sh`) and, with `GATEHOUSE_SCREENSHOTS=1`,
//! photographed into `docs/screenshots/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::*;
use crate::mfa::{totp, wrong_code};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The viewport sizes screenshots are taken at: a laptop and a phone.
const SIZES: [(&str, u32, u32); 2] = [("desktop", 1280, 800), ("phone", 390, 844)];

pub struct Browser {
    base: String,
    session: String,
    client: reqwest::Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `javascript` false disables scripts.
    /// Certificate errors are ignored, so the https listener's self-signed certificate serves
    /// (the session cookie is `Secure`).
    pub async fn start(javascript: bool) -> Browser {
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
                "--no-first-run", "--window-size=412,915", "--ignore-certificate-errors",
                "--hide-scrollbars", "--force-device-scale-factor=1",
                // Another site for cross-site tests, served on this machine; and no fetch off
                // the machine (the test OpenID provider's pages import a web font).
                "--host-resolver-rules=MAP evil.example 127.0.0.1, MAP fonts.googleapis.com ~NOTFOUND",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        if !javascript {
            options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let created: Value = client
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:chromeOptions": options,
            }}}))
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
        let browser = Browser {
            base,
            session,
            client,
            driver,
            _profile: profile,
        };
        // axe takes a few seconds on a busy machine.
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({"script": 60_000})),
            )
            .await;
        browser
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// The address of the page the browser shows.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The value of the browser's cookie `name`, if it holds one for the current page.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let all = self.call(reqwest::Method::GET, "/cookie", None).await;
        all.as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str())
            .map(str::to_owned)
    }

    /// Forgets every cookie of the current page's site.
    pub async fn delete_cookies(&self) {
        self.call(reqwest::Method::DELETE, "/cookie", None).await;
    }

    /// Sets a cookie for the current page's site, as the site's own script would.
    pub async fn add_cookie(&self, name: &str, value: &str) {
        self.call(
            reqwest::Method::POST,
            "/cookie",
            Some(json!({"cookie": {"name": name, "value": value, "path": "/", "secure": true}})),
        )
        .await;
    }

    /// The address the browser shows once `done` holds for it (a click on a submit button may
    /// return before the next page loads), or the last address seen after 10 s.
    pub async fn url_once(&self, done: impl Fn(&str) -> bool) -> String {
        let mut url = self.url().await;
        for _ in 0..100 {
            if done(&url) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            url = self.url().await;
        }
        url
    }

    /// The HTTP status of the page the browser shows, as its Navigation Timing entry reports it.
    pub async fn status(&self) -> u16 {
        let status = self
            .execute(
                "return performance.getEntriesByType('navigation')[0].responseStatus;",
                &[],
                false,
            )
            .await;
        status
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or_else(|| panic!("no status: {status}"))
    }

    pub async fn find(&self, css: &str) -> String {
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

    pub async fn text(&self, css: &str) -> String {
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

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The page source once it contains `needle` (a form post may still be loading when a click
    /// returns), or the last source seen after 10 s.
    pub async fn source_containing(&self, needle: &str) -> String {
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

    /// Runs `script` (a function body) in the page through WebDriver; the page's own
    /// Content-Security-Policy does not apply to it (chromedriver evaluates it over the DevTools
    /// protocol), so it works on pages that allow no script at all.
    pub async fn execute(&self, script: &str, args: &[Value], asynchronous: bool) -> Value {
        let path = if asynchronous {
            "/execute/async"
        } else {
            "/execute/sync"
        };
        self.call(
            reqwest::Method::POST,
            path,
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The serious and critical accessibility violations axe-core finds on the current page,
    /// one line each: rule, impact, what it asks, and the elements at fault.
    pub async fn accessibility_violations(&self) -> Vec<String> {
        let axe = std::fs::read_to_string(axe_path()).unwrap_or_else(|e| {
            panic!(
                "{} (tests/run.sh installs axe-core): {e}",
                axe_path().display()
            )
        });
        let loaded = self
            .execute(&format!("{axe}\n;return typeof window.axe;"), &[], false)
            .await;
        assert_eq!(loaded, "object", "axe-core could not be injected: {loaded}");
        let found = self
            .execute(
                "const done = arguments[arguments.length - 1];\
                 axe.run(document, {resultTypes: ['violations']})\
                   .then(r => done(r.violations\
                     .filter(v => v.impact === 'serious' || v.impact === 'critical')\
                     .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at '\
                       + v.nodes.map(n => n.target.join(' ') + ' [' + n.failureSummary + ']').join('; '))))\
                   .catch(e => done(['axe failed: ' + e]));",
                &[],
                true,
            )
            .await;
        found
            .as_array()
            .unwrap_or_else(|| panic!("axe answered {found}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Asserts that axe-core finds no serious or critical violation on the current page.
    pub async fn assert_accessible(&self, what: &str) {
        let violations = self.accessibility_violations().await;
        assert!(
            violations.is_empty(),
            "{what} at {}:\n{}",
            self.url().await,
            violations.join("\n")
        );
    }

    /// With `GATEHOUSE_SCREENSHOTS=1`: saves the current page, as a laptop and as a phone show
    /// it, to `docs/screenshots/<name>-desktop.png` and `<name>-phone.png`. Otherwise nothing,
    /// so that test runs do not rewrite tracked files.
    pub async fn screenshots(&self, name: &str) {
        if std::env::var("GATEHOUSE_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        for (label, width, height) in SIZES {
            // The viewport itself at this size (a window's size would include its frame).
            self.devtools(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": label == "phone"}),
            )
            .await;
            // Let the layout settle at the new width.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
            let png = base64::engine::general_purpose::STANDARD
                .decode(png.as_str().unwrap())
                .unwrap();
            std::fs::write(dir.join(format!("{name}-{label}.png")), png).unwrap();
        }
        self.devtools("Emulation.clearDeviceMetricsOverride", json!({}))
            .await;
    }

    /// Sends a DevTools protocol command through chromedriver.
    pub async fn devtools(&self, command: &str, params: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": command, "params": params})),
        )
        .await
    }

    /// Ends the browser session.
    pub async fn quit(&self) {
        self.call(reqwest::Method::DELETE, "", None).await;
    }
}

/// axe.min.js: where `GATEHOUSE_TEST_AXE` says (tests/run.sh sets it), else where tests/run.sh
/// installs it under the target directory.
fn axe_path() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEHOUSE_TEST_AXE") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("axe/node_modules/axe-core/axe.min.js")
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn enroll_in_browser(javascript: bool) {
    // axe-core is a script: it runs where the browser runs scripts (the page has none of its own,
    // so what it checks is the same page either way).
    let check = async |browser: &Browser, what: &str| {
        if javascript {
            browser.assert_accessible(what).await;
        }
    };
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
    check(&browser, "the enrollment page").await;
    browser.screenshots("enroll").await;
    let secret = browser.text("#secret").await;
    let secret = totp_rs::Secret::try_from_base32(secret.trim()).unwrap();
    let secret = secret.as_ref().to_vec();

    // A wrong code first: the page says so, as an alert, and offers the form again.
    browser
        .type_into("#code", wrong_code(&totp(&secret, 0)))
        .await;
    browser.click("button[type=submit]").await;
    let retry = browser.source_containing("not right").await;
    assert!(retry.contains("not right"), "{retry}");
    assert_eq!(
        browser.text("[role=alert]").await,
        "That code is not right. Check it and try again."
    );
    check(&browser, "the enrollment page after a wrong code").await;
    browser.screenshots("enroll-error").await;

    browser.type_into("#code", &totp(&secret, 0)).await;
    browser.click("button[type=submit]").await;
    let done = browser.source_containing("all set").await;
    assert!(done.contains("all set"), "{done}");
    assert_eq!(browser.text("#recovery-codes").await.lines().count(), 10);
    check(&browser, "the enrollment's all-set page").await;
    browser.screenshots("enroll-done").await;
    browser.quit().await;
}

#[tokio::test]
async fn the_accessibility_check_finds_a_field_without_a_label() {
    let browser = Browser::start(true).await;
    browser
        .open(
            "data:text/html,<!doctype html><html lang=en><title>t</title><main><input id=x></main>",
        )
        .await;
    let violations = browser.accessibility_violations().await;
    assert!(
        violations.iter().any(|v| v.starts_with("label (critical)")),
        "{violations:?}"
    );
    browser.quit().await;
}

#[tokio::test]
async fn enrollment_page_works_in_a_real_browser() {
    enroll_in_browser(true).await;
}

#[tokio::test]
async fn enrollment_page_works_in_a_real_browser_without_javascript() {
    enroll_in_browser(false).await;
}
