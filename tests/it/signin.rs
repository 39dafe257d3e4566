//! Browser sign-in and sessions (SPEC §11) over plain HTTP: what a browser does, one request at a
//! time, with the cookie jar kept here (the session cookie is `Secure`, so a client's own jar
//! would not send it over the plaintext listener). The same flow in a real Chromium is in
//! `signin_browser`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;
use crate::mfa::{secret_from, ticket_path, totp, wrong_code};

pub const PASSWORD: &str = "correct horse battery";
pub const SESSION_COOKIE: &str = "__Host-gatehouse";
pub const CSRF_COOKIE: &str = "__Host-gatehouse-csrf";

/// One answer, its body read.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `Set-Cookie` of the cookie `name`, whole.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The value of the hidden input `name` of the page's first form that has one.
    pub fn hidden(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&needle)
            .unwrap_or_else(|| panic!("no hidden `{name}` in the page: {}", self.body))
            + needle.len();
        let end = start + self.body[start..].find('"').unwrap();
        self.body[start..end].replace("&amp;", "&")
    }

    /// The text of the element with id `error`.
    pub fn error(&self) -> Option<String> {
        let start = self.body.find("id=\"error\"")?;
        let open = start + self.body[start..].find('>')? + 1;
        let close = open + self.body[open..].find('<')?;
        Some(self.body[open..close].to_owned())
    }
}

/// A browser, reduced to what sign-in needs: a cookie jar, `Accept: text/html`, and its
/// `Origin` on posts.
pub struct Visitor {
    client: reqwest::Client,
    base: String,
    pub cookies: BTreeMap<String, String>,
}

impl Visitor {
    pub fn new(addr: SocketAddr) -> Visitor {
        install_crypto();
        Visitor {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: format!("http://{addr}"),
            cookies: BTreeMap::new(),
        }
    }

    pub fn session(&self) -> Option<String> {
        self.cookies.get(SESSION_COOKIE).cloned()
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn keep(&mut self, response: reqwest::Response) -> Page {
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
            let (name, v) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), v.to_owned());
            }
        }
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Page {
            status,
            headers,
            body: response.text().await.unwrap(),
        }
    }

    /// A navigation to `path`.
    pub async fn get(&mut self, path: &str) -> Page {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    /// A form post from this site's page.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_from(path, fields, &self.base.clone()).await
    }

    /// A form post whose `Origin` is `origin`.
    pub async fn post_from(&mut self, path: &str, fields: &[(&str, &str)], origin: &str) -> Page {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .header("origin", origin)
            .header("cookie", self.cookie_header())
            .form(fields)
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    /// Opens the sign-in page for `rd` and posts `user` and `password`.
    pub async fn sign_in(&mut self, user: &str, password: &str, rd: &str) -> Page {
        let page = self
            .get(&format!("/auth/login?rd={}", urlencoding(rd)))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = page.hidden("csrf");
        let rd = page.hidden("rd");
        self.post(
            "/auth/login",
            &[
                ("csrf", &csrf),
                ("rd", &rd),
                ("user", user),
                ("password", password),
            ],
        )
        .await
    }

    /// Opens the step-up page for `rd` and posts `code`.
    pub async fn step_up(&mut self, code: &str, rd: &str) -> Page {
        let page = self
            .get(&format!("/auth/step-up?rd={}", urlencoding(rd)))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = page.hidden("csrf");
        self.post(
            "/auth/step-up",
            &[("csrf", &csrf), ("rd", rd), ("code", code)],
        )
        .await
    }

    /// Opens the sign-out page and confirms.
    pub async fn sign_out(&mut self) -> Page {
        let page = self.get("/auth/logout").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = page.hidden("csrf");
        self.post("/auth/logout", &[("csrf", &csrf)]).await
    }
}

/// A client that reports redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn urlencoding(s: &str) -> String {
    url_escape(s)
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Creates `name` with the test password (and the `read` scope).
pub async fn user(gh: &Gatehouse, name: &str) -> Value {
    gh.create_user(json!({"userName": name, "password": PASSWORD, "scopes": ["read"]}))
        .await
}

/// Gives `name` a confirmed authenticator app through the API; returns its secret.
pub async fn enroll_totp(gh: &Gatehouse, name: &str) -> Vec<u8> {
    let client = http1_client();
    let enrollment: Value = client
        .post(gh.http_url("/v1/me/mfa-enrollment?factor=otp&isInteractive=true"))
        .basic_auth(name, Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let html = client
        .get(gh.http_url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = secret_from(&html);
    let response = client
        .post(gh.http_url("/v1/me/verify-enrollment-otp"))
        .basic_auth(name, Some(PASSWORD))
        .json(&json!({"otp": totp(&secret, 0)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    secret
}

/// `/auth/session` for the session `cookie`: status and JSON (Null when none).
pub async fn session_json(gh: &Gatehouse, cookie: &str) -> (u16, Value) {
    let response = http1_client()
        .get(gh.http_url("/auth/session"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_navigation_without_credentials_is_sent_to_sign_in_and_api_clients_keep_401() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let mut browser = Visitor::new(gh.http_addr());
    let page = browser.get("/private/report?year=2026&q=a%20b").await;
    assert_eq!(page.status, 302);
    assert_eq!(
        page.location(),
        "/auth/login?rd=%2Fprivate%2Freport%3Fyear%3D2026%26q%3Da%2520b"
    );
    // The path is the normalised one, in any spelling.
    let page = browser.get("/public/../private//x").await;
    assert_eq!(page.location(), "/auth/login?rd=%2Fprivate%2Fx");

    let client = http1_client();
    for accept in ["application/json", "*/*"] {
        let response = client
            .get(gh.http_url("/private/x"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{accept}");
        assert!(response.headers().contains_key("www-authenticate"));
    }
    // A navigation that sends credentials wants their verdict, not a page.
    let response = client
        .get(gh.http_url("/private/x"))
        .header("accept", "text/html")
        .basic_auth("nobody", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // A form post is not a navigation.
    let response = client
        .post(gh.http_url("/private/x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn signing_in_lands_on_the_page_with_identity_and_the_session_cookie_stays_with_gatehouse() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.cookies.insert("app".into(), "theirs".into());
    let page = browser.sign_in("ada", PASSWORD, "/private/page?x=1").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), "/private/page?x=1");
    let cookie = page.set_cookie(SESSION_COOKIE).expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    let id = browser.session().unwrap();
    assert_eq!(id.len(), 43, "256 bits in base64url");

    let page = browser.get("/private/page?x=1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(seen.headers["x-auth-methods"], "pwd");
    assert!(seen.headers.contains_key("x-auth-assertion"));
    let cookies = seen.headers["cookie"].to_str().unwrap();
    assert_eq!(
        cookies, "app=theirs",
        "only the app's own cookie goes upstream"
    );

    let (status, session) = session_json(&gh, &id).await;
    assert_eq!(status, 200);
    assert_eq!(session["user"], "ada");
    assert_eq!(session["methods"], json!(["pwd"]));
    assert!(session["expiresAt"].as_str().unwrap().ends_with('Z'));
    // The store holds the id only as a hash.
    let stored = gh
        .app
        .store
        .session(&gatehouse::sessions::id_hash(&id))
        .await
        .unwrap()
        .expect("the session is stored under the id's hash");
    assert_ne!(stored.id_hash, id);
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_page_and_no_session() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let wrong = browser.sign_in("ada", "not the password", "/").await;
    let unknown = browser.sign_in("ghost", "not the password", "/").await;
    let disabled_scheme = browser.sign_in("ada", "", "/").await;
    for page in [&wrong, &unknown, &disabled_scheme] {
        assert_eq!(page.status, 401, "{}", page.body);
        assert_eq!(
            page.error().as_deref(),
            Some("The user name or password is not right.")
        );
        assert!(page.set_cookie(SESSION_COOKIE).is_none());
    }
    // Alike but for the name typed and the passkey script's nonce, new to each page.
    let plain = |body: &str| match body.split_once("<script nonce=\"") {
        Some((before, rest)) => format!("{before}{}", &rest[rest.find('"').unwrap()..]),
        None => body.to_owned(),
    };
    assert_eq!(
        plain(&wrong.body.replace("value=\"ada\"", "")),
        plain(&unknown.body.replace("value=\"ghost\"", "")),
        "one page for both"
    );
    assert!(browser.session().is_none());
}

#[tokio::test]
async fn forged_form_posts_are_refused_and_start_no_session() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let page = browser.get("/auth/login").await;
    let csrf = page.hidden("csrf");
    let form = |token: &str| {
        vec![
            ("csrf", token.to_owned()),
            ("user", "ada".to_owned()),
            ("password", PASSWORD.to_owned()),
        ]
    };
    // Another site's page posting with the victim's cookies.
    for origin in [
        "https://evil.example",
        "null",
        "http://localhost.evil.example",
    ] {
        let fields = form(&csrf);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = browser.post_from("/auth/login", &fields, origin).await;
        assert_eq!(page.status, 403, "{origin}");
    }
    // No token, or another browser's token.
    let other = Visitor::new(gh.http_addr())
        .get("/auth/login")
        .await
        .hidden("csrf");
    for token in ["", "x", other.as_str()] {
        let fields = form(token);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = browser.post("/auth/login", &fields).await;
        assert_eq!(page.status, 403, "token {token:?}");
    }
    // No CSRF cookie at all: refused before the body is read.
    let mut stranger = Visitor::new(gh.http_addr());
    let fields = form(&csrf);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(stranger.post("/auth/login", &fields).await.status, 403);
    // A cross-site fetch, however it names its origin.
    let response = http1_client()
        .post(gh.http_url("/auth/login"))
        .header(
            "cookie",
            format!("{CSRF_COOKIE}={}", browser.cookies[CSRF_COOKIE]),
        )
        .header("sec-fetch-site", "cross-site")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(browser.session().is_none());
    assert!(stranger.session().is_none());
    // The same form from this site's page signs in.
    let page = browser.post("/auth/login", &fields).await;
    assert_eq!(page.status, 303, "{}", page.body);
}

#[tokio::test]
async fn hostile_rd_values_land_on_this_site() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    for rd in [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        " //evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/%2F%2Fevil.example",
        "\\\\evil.example",
        "http:evil.example",
    ] {
        let mut browser = Visitor::new(gh.http_addr());
        let page = browser
            .get(&format!("/auth/login?rd={}", urlencoding(rd)))
            .await;
        assert_eq!(page.hidden("rd"), "/", "{rd:?}");
        // Posted directly, whatever the page said.
        let csrf = page.hidden("csrf");
        let page = browser
            .post(
                "/auth/login",
                &[
                    ("csrf", &csrf),
                    ("rd", rd),
                    ("user", "ada"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(page.status, 303);
        assert_eq!(page.location(), "/", "{rd:?}");
    }
}

#[tokio::test]
async fn an_mfa_route_sends_a_password_session_to_step_up_and_a_code_rotates_the_session() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let secret = enroll_totp(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    // Signing in for an mfa route goes on to step-up.
    let page = browser.sign_in("ada", PASSWORD, "/secure/vault").await;
    assert_eq!(page.location(), "/auth/step-up?rd=%2Fsecure%2Fvault");
    let first = browser.session().unwrap();
    // A navigation with the password-only session is sent to step up; an API call gets 403.
    let page = browser.get("/secure/vault").await;
    assert_eq!(page.status, 302);
    assert_eq!(page.location(), "/auth/step-up?rd=%2Fsecure%2Fvault");
    let response = http1_client()
        .get(gh.http_url("/secure/vault"))
        .header("cookie", format!("{SESSION_COOKIE}={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    let wrong = browser
        .step_up(wrong_code(&totp(&secret, 1)), "/secure/vault")
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.error().is_some());
    // The enrollment used this step's code: the next one.
    let page = browser.step_up(&totp(&secret, 1), "/secure/vault").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), "/secure/vault");
    let second = browser.session().unwrap();
    assert_ne!(first, second, "the id is rotated at step-up");
    let page = browser.get("/secure/vault").await;
    assert_eq!(page.status, 200);
    assert_eq!(upstream.last().headers["x-auth-methods"], "pwd,otp");
    // The id held before step-up is dead.
    assert_eq!(session_json(&gh, &first).await.0, 401);
    assert_eq!(
        session_json(&gh, &second).await.1["methods"],
        json!(["pwd", "otp"])
    );
}

#[tokio::test]
async fn sign_in_rotates_a_session_id_the_browser_held_before() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    user(&gh, "bob").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("bob", PASSWORD, "/").await;
    let planted = browser.session().unwrap();
    browser.sign_in("ada", PASSWORD, "/").await;
    let mine = browser.session().unwrap();
    assert_ne!(planted, mine);
    assert_eq!(session_json(&gh, &planted).await.0, 401);
    assert_eq!(session_json(&gh, &mine).await.1["user"], "ada");
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server_and_clears_the_cookie() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    assert_eq!(browser.get("/private/x").await.status, 200);
    let page = browser.sign_out().await;
    assert_eq!(page.status, 200, "{}", page.body);
    let cleared = page
        .set_cookie(SESSION_COOKIE)
        .expect("the cookie is cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old id, replayed, is dead.
    assert_eq!(session_json(&gh, &id).await.0, 401);
    let response = no_redirects()
        .get(gh.http_url("/private/x"))
        .header("accept", "text/html")
        .header("cookie", format!("{SESSION_COOKIE}={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let response = http1_client()
        .get(gh.http_url("/private/x"))
        .header("cookie", format!("{SESSION_COOKIE}={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Logout with rd goes there.
    browser.sign_in("ada", PASSWORD, "/").await;
    let page = browser.get("/auth/logout?rd=/public/bye").await;
    let csrf = page.hidden("csrf");
    let page = browser
        .post("/auth/logout", &[("csrf", &csrf), ("rd", "/public/bye")])
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), "/public/bye");
    assert!(browser.session().is_none());
}

#[tokio::test]
async fn wrong_passwords_lock_the_user_even_when_they_arrive_at_once() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.mfa.lockout.max_failures = 3;
        c.auth.failed_password_limit = 1000;
    })
    .await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let csrf = browser.get("/auth/login").await.hidden("csrf");
    let cookie = format!("{CSRF_COOKIE}={}", browser.cookies[CSRF_COOKIE]);
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = gh.http_url("/auth/login");
        let cookie = cookie.clone();
        let csrf = csrf.clone();
        attempts.spawn(async move {
            http1_client()
                .post(url)
                .header("cookie", cookie)
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("user", "ada"),
                    ("password", &format!("wrong {i}")),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let statuses = attempts.join_all().await;
    let compared = statuses.iter().filter(|s| **s == 401).count();
    assert!(compared <= 3, "at most max_failures compared: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    // Locked: even the right password is refused for now.
    let page = browser.sign_in("ada", PASSWORD, "/").await;
    assert_eq!(page.status, 429, "{}", page.body);
    assert!(page.headers.contains_key("retry-after"));
    assert!(browser.session().is_none());
}

#[tokio::test]
async fn an_idle_session_ends() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.sessions.idle_timeout = Duration::from_secs(4);
    })
    .await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    // Used within the idle timeout, it lives on past it (whole seconds, so a margin of two).
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(session_json(&gh, &id).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(session_json(&gh, &id).await.0, 401);
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_age_however_busy() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.sessions.max_age = Duration::from_secs(2);
    })
    .await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    assert_eq!(session_json(&gh, &id).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(session_json(&gh, &id).await.0, 401);
}

#[tokio::test]
async fn forward_auth_redirects_navigations_and_tells_nginx_where_with_a_401() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let verify = |accept: &'static str, extra: Option<(&'static str, &'static str)>| {
        let mut request = client
            .get(gh.http_url("/auth/verify"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/private/doc?id=7")
            .header("x-forwarded-host", "app.example")
            .header("accept", accept);
        if let Some((k, v)) = extra {
            request = request.header(k, v);
        }
        request.send()
    };
    let response = verify("text/html", None).await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "/auth/login?rd=%2Fprivate%2Fdoc%3Fid%3D7"
    );
    let response = verify("text/html", Some(("x-forwarded-auth-response", "401")))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["location"],
        "/auth/login?rd=%2Fprivate%2Fdoc%3Fid%3D7"
    );
    let response = verify("application/json", None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(!response.headers().contains_key("location"));

    // With a session, forward-auth answers 200 and the identity.
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let response = client
        .get(gh.http_url("/auth/verify"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/private/doc")
        .header("cookie", format!("{SESSION_COOKIE}={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-auth-user"], "ada");
    // An mfa route described for a password-only session: to step-up.
    let response = client
        .get(gh.http_url("/auth/verify"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/secure/doc")
        .header("accept", "text/html")
        .header("cookie", format!("{SESSION_COOKIE}={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "/auth/step-up?rd=%2Fsecure%2Fdoc"
    );
}

#[tokio::test]
async fn paths_under_auth_are_never_forwarded() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.proxy.default = gatehouse::config::Access::Public;
    })
    .await;
    let client = http1_client();
    for path in ["/auth/other", "/AUTH/LOGIN/x", "/auth", "/auth/callback/x"] {
        let response = client.get(gh.http_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let response = client
        .delete(gh.http_url("/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert!(response.headers().contains_key("allow"));
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn the_pages_are_self_contained_and_never_framed() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let mut browser = Visitor::new(gh.http_addr());
    for path in ["/auth/login", "/auth/logout"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 200);
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert_eq!(page.headers["cache-control"], "no-store");
        // The sign-in page runs the passkey script, inline, by the nonce its policy names.
        match page.body.split_once("<script nonce=\"") {
            Some((_, rest)) => {
                assert_eq!(path, "/auth/login");
                let nonce = rest.split('"').next().unwrap();
                assert!(
                    csp.contains(&format!("script-src 'nonce-{nonce}'")),
                    "{csp}"
                );
                assert!(!csp.contains("unsafe-inline"), "{csp}");
                assert_eq!(page.body.matches("<script").count(), 1, "{path}");
                assert!(!rest.split('>').next().unwrap().contains("src="));
            }
            None => {
                assert!(!page.body.contains("<script"), "{path}");
                assert!(!csp.contains("script-src"), "{csp}");
            }
        }
        assert!(!page.body.contains("http://") && !page.body.contains("https://"));
        let csrf = page.set_cookie(CSRF_COOKIE);
        if let Some(csrf) = csrf {
            assert!(csrf.contains("HttpOnly") && csrf.contains("Secure"));
            assert!(csrf.contains("SameSite=Strict"));
        }
    }
    assert!(browser.cookies.contains_key(CSRF_COOKIE));
}

#[tokio::test]
async fn a_session_cookie_does_not_authenticate_gatehouses_own_apis() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let client = http1_client();
    for path in [
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=true",
        "/v1/me/recovery-codes",
        "/manage/v2/user/send/otp",
    ] {
        let response = client
            .post(gh.http_url(path))
            .header("cookie", format!("{SESSION_COOKIE}={id}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(
            [400, 401].contains(&response.status().as_u16()),
            "{path}: {}",
            response.status()
        );
    }
    assert!(
        gh.app
            .store
            .newest_pending_ticket(1, 0)
            .await
            .unwrap()
            .is_none(),
        "no ticket was made with the cookie"
    );
}

/// Confirms an enrollment ticket through its page with `code`; the page's HTML.
async fn confirm_on_page(gh: &Gatehouse, path: &str, code: &str) -> String {
    http1_client()
        .post(gh.http_url(path))
        .form(&[("code", code)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The digits of a 6-digit code in the last text message the webhook received.
fn texted_code(provider: &Upstream) -> String {
    let sms: Value = serde_json::from_slice(&provider.last().body).unwrap();
    sms["body"]
        .as_str()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn step_up_takes_a_texted_code_after_the_send_button_and_a_recovery_code() {
    let upstream = Upstream::start().await;
    let provider = Upstream::start().await;
    let sms_url = format!("{}/sms", provider.url());
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.sms.kind = "webhook".into();
        c.sms.url = Some(sms_url);
    })
    .await;
    user(&gh, "ada").await;
    // Ada's authenticator app, confirmed on its page, which shows the recovery codes.
    let enrollment: Value = http1_client()
        .post(gh.http_url("/v1/me/mfa-enrollment?factor=otp&isInteractive=true"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let html = http1_client()
        .get(gh.http_url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = secret_from(&html);
    let done = confirm_on_page(&gh, &path, &totp(&secret, 0)).await;
    let start = done
        .find("<ol id=\"recovery-codes\">")
        .expect("recovery codes")
        + 23;
    let recovery = done[start..]
        .split("<li>")
        .nth(1)
        .unwrap()
        .split("</li>")
        .next()
        .unwrap()
        .to_owned();
    // Bob's one factor is his phone.
    gh.create_user(json!({"userName": "bob", "password": PASSWORD, "phone": "+14155550123"}))
        .await;
    let enrollment: Value = http1_client()
        .post(gh.http_url("/v1/me/mfa-enrollment?factor=sms&isInteractive=true"))
        .basic_auth("bob", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sms_path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());

    // The recovery code steps a session up.
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/secure/x").await;
    let page = browser.step_up(&recovery, "/secure/x").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), "/secure/x");
    assert_eq!(browser.get("/secure/x").await.status, 200);
    // Used once: another session cannot use it again.
    let mut other = Visitor::new(gh.http_addr());
    other.sign_in("ada", PASSWORD, "/").await;
    assert_eq!(other.step_up(&recovery, "/").await.status, 401);

    // With a confirmed SMS factor, the step-up page offers its send button, and the texted code
    // steps the session up.
    let html = http1_client()
        .post(gh.http_url(&sms_path))
        .form(&[("action", "send")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("sent"), "{html}");
    confirm_on_page(&gh, &sms_path, &texted_code(&provider)).await;
    let mut phone = Visitor::new(gh.http_addr());
    phone.sign_in("bob", PASSWORD, "/").await;
    let page = phone.get("/auth/step-up?rd=/secure/y").await;
    assert!(page.body.contains("value=\"send-sms\""), "{}", page.body);
    let csrf = page.hidden("csrf");
    let page = phone
        .post(
            "/auth/step-up",
            &[("csrf", &csrf), ("rd", "/secure/y"), ("action", "send-sms")],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"notice\""), "{}", page.body);
    let page = phone.step_up(&texted_code(&provider), "/secure/y").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        session_json(&gh, &phone.session().unwrap()).await.1["methods"],
        json!(["pwd", "sms"])
    );
}

#[tokio::test]
async fn wrong_passwords_from_one_address_are_limited_on_the_sign_in_page() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.failed_password_limit = 3;
        c.mfa.lockout.max_failures = 1000;
    })
    .await;
    user(&gh, "ada").await;
    user(&gh, "bob").await;
    let mut browser = Visitor::new(gh.http_addr());
    for name in ["ada", "bob", "ghost"] {
        assert_eq!(browser.sign_in(name, "wrong", "/").await.status, 401);
    }
    // The address is limited, whoever it names and whatever the password.
    let page = browser.sign_in("bob", PASSWORD, "/").await;
    assert_eq!(page.status, 429, "{}", page.body);
    assert!(page.headers.contains_key("retry-after"));
    assert!(browser.session().is_none());
}

#[tokio::test]
async fn forms_posted_to_a_url_with_rd_land_there_when_the_form_names_none() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let page = browser.get("/auth/login").await;
    let csrf = page.hidden("csrf");
    // Sign-in: `rd` only in the URL the form is posted to.
    let landed = browser
        .post(
            "/auth/login?rd=%2Fprivate%2Fdocs%3Fa%3D1",
            &[("csrf", &csrf), ("user", "ada"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(landed.status, 303, "{}", landed.body);
    assert_eq!(landed.location(), "/private/docs?a=1");
    // The form's own `rd` wins over the URL's, and an empty one gives way to it.
    let page = browser.get("/auth/logout").await;
    let csrf = page.hidden("csrf");
    let out = browser
        .post(
            "/auth/logout?rd=%2Fbye",
            &[("csrf", &csrf), ("rd", "/public/signed-out")],
        )
        .await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(out.location(), "/public/signed-out");
    browser.sign_in("ada", PASSWORD, "/").await;
    let page = browser.get("/auth/logout").await;
    let csrf = page.hidden("csrf");
    let out = browser
        .post("/auth/logout?rd=%2Fbye", &[("csrf", &csrf), ("rd", "")])
        .await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(out.location(), "/bye");
    // Off-site values are checked as the form's are.
    browser.sign_in("ada", PASSWORD, "/").await;
    let page = browser.get("/auth/logout").await;
    let csrf = page.hidden("csrf");
    let out = browser
        .post("/auth/logout?rd=%2F%2Fevil.example", &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(out.location().starts_with('/') && !out.location().starts_with("//"));
}
