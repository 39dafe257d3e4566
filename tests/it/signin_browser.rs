//! Browser sign-in (SPEC §11) in a real headless Chromium over the https listener, where the
//! `Secure` session cookie lives: the redirect to sign-in, step-up, logout, hostile `rd` values
//! and a real cross-site form post. Every page is checked by axe-core and, with
//! `GATEHOUSE_SCREENSHOTS=1`, photographed into `docs/screenshots/` (see `browser`). The same
//! flow one request at a time is in `signin`.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::browser::Browser;
use crate::harness::*;
use crate::mfa::totp;
use crate::signin::{CSRF_COOKIE, PASSWORD, SESSION_COOKIE, enroll_totp, urlencoding, user};

/// Gatehouse with `/app/` for any signed-in user and `/admin/` for a second factor, and `ada`
/// with a password.
async fn start() -> (Upstream, Gatehouse) {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        for (prefix, access) in [
            ("/app/", gatehouse::config::Access::Authenticated),
            ("/admin/", gatehouse::config::Access::Mfa),
        ] {
            c.routes.push(gatehouse::config::AccessRule {
                path_prefix: prefix.into(),
                access,
                scopes: vec![],
                ..Default::default()
            });
        }
    })
    .await;
    user(&gh, "ada").await;
    (upstream, gh)
}

/// The path and query of `url` when it is on `gh`'s https listener; `None` for anywhere else.
fn local(gh: &Gatehouse, url: &str) -> Option<String> {
    let origin = gh.https_url("");
    url.strip_prefix(&origin)
        .filter(|rest| rest.starts_with('/'))
        .map(str::to_owned)
}

/// Fills in and submits the sign-in form the browser shows.
async fn submit(browser: &Browser, name: &str, password: &str) {
    browser.type_into("#user", name).await;
    browser.type_into("#password", password).await;
    browser.click("#sign-in").await;
}

/// Signs in with the form the browser shows; returns where the browser lands.
async fn sign_in(browser: &Browser, gh: &Gatehouse, name: &str, password: &str) -> String {
    submit(browser, name, password).await;
    browser
        .url_once(|url| !local(gh, url).is_some_and(|p| p.starts_with("/auth/login")))
        .await
}

/// What a plain HTTP client (no cookie jar, no redirects followed) gets for `path` with `cookie`
/// as the session cookie: status and `Location`.
async fn replay(gh: &Gatehouse, path: &str, cookie: &str, accept: &str) -> (u16, String) {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(gh.http_url(path))
        .header("accept", accept)
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), location)
}

#[tokio::test]
async fn signing_in_from_a_protected_page_lands_back_on_it_and_the_session_cookie_stays_here() {
    let (upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/app/page?x=1")).await;
    assert_eq!(
        local(&gh, &browser.url().await).as_deref(),
        Some("/auth/login?rd=%2Fapp%2Fpage%3Fx%3D1")
    );
    browser.assert_accessible("the sign-in page").await;
    browser.screenshots("signin").await;
    // The application's own cookie, beside gatehouse's.
    browser.add_cookie("app", "theirs").await;

    let landed = sign_in(&browser, &gh, "ada", PASSWORD).await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/app/page?x=1"));
    assert!(
        browser
            .source_containing("upstream ok")
            .await
            .contains("upstream ok")
    );
    let session = browser
        .cookie(SESSION_COOKIE)
        .await
        .expect("a session cookie");
    assert_eq!(session.len(), 43, "256 bits in base64url");

    let seen = upstream
        .all()
        .into_iter()
        .rfind(|s| s.target == "/app/page?x=1")
        .expect("the upstream saw the page");
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(seen.headers["x-auth-methods"], "pwd");
    // Over HTTP/2 the browser may send each cookie in a header of its own: all of them count.
    let cookies: Vec<&str> = seen
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies.join("; "),
        "app=theirs",
        "only the app's own cookie goes upstream"
    );
    browser.quit().await;
}

#[tokio::test]
async fn an_admin_page_takes_a_password_session_through_step_up_and_each_step_rotates_the_id() {
    let (upstream, gh) = start().await;
    let secret = enroll_totp(&gh, "ada").await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/admin/x")).await;
    let landed = sign_in(&browser, &gh, "ada", PASSWORD).await;
    assert_eq!(
        local(&gh, &landed).as_deref(),
        Some("/auth/step-up?rd=%2Fadmin%2Fx")
    );
    let password_only = browser.cookie(SESSION_COOKIE).await.unwrap();
    browser.assert_accessible("the step-up page").await;
    browser.screenshots("step-up").await;

    // The enrollment used this step's code: the next step's, within the allowed skew.
    browser.type_into("#code", &totp(&secret, 1)).await;
    browser.click("#verify").await;
    let landed = browser
        .url_once(|url| local(&gh, url).as_deref() == Some("/admin/x"))
        .await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/admin/x"));
    let stepped_up = browser.cookie(SESSION_COOKIE).await.unwrap();
    assert_ne!(stepped_up, password_only, "the id is rotated at step-up");
    let seen = upstream
        .all()
        .into_iter()
        .rfind(|s| s.target == "/admin/x")
        .expect("the upstream saw the page");
    let methods = seen.headers["x-auth-methods"].to_str().unwrap();
    assert!(methods.split(',').any(|m| m == "otp"), "{methods}");
    assert_eq!(
        replay(&gh, "/auth/session", &password_only, "*/*").await.0,
        401
    );

    // Signing in again, with a session in the browser, rotates the id too.
    browser
        .open(&gh.https_url("/auth/login?rd=%2Fapp%2F"))
        .await;
    let landed = sign_in(&browser, &gh, "ada", PASSWORD).await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/app/"));
    let again = browser.cookie(SESSION_COOKIE).await.unwrap();
    assert_ne!(again, stepped_up, "the id is rotated at sign-in");
    assert_eq!(
        replay(&gh, "/auth/session", &stepped_up, "*/*").await.0,
        401
    );
    browser.quit().await;
}

#[tokio::test]
async fn signing_out_in_the_browser_ends_the_session_for_every_client() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/app/")).await;
    sign_in(&browser, &gh, "ada", PASSWORD).await;
    let session = browser.cookie(SESSION_COOKIE).await.unwrap();
    assert_eq!(replay(&gh, "/auth/session", &session, "*/*").await.0, 200);

    browser.open(&gh.https_url("/auth/logout")).await;
    assert!(browser.source().await.contains("id=\"sign-out\""));
    browser.assert_accessible("the sign-out page").await;
    browser.screenshots("logout").await;
    browser.click("#sign-out").await;
    let page = browser.source_containing("signed out").await;
    assert!(page.contains("signed out"), "{page}");
    assert_eq!(browser.status().await, 200);
    assert_eq!(browser.cookie(SESSION_COOKIE).await, None);
    browser.assert_accessible("the signed-out page").await;
    browser.screenshots("signed-out").await;

    // The old id, replayed by another client, is dead on the server.
    assert_eq!(replay(&gh, "/auth/session", &session, "*/*").await.0, 401);
    let (status, location) = replay(&gh, "/app/", &session, "text/html").await;
    assert_eq!(status, 302);
    assert_eq!(location, "/auth/login?rd=%2Fapp%2F");
    browser.quit().await;
}

#[tokio::test]
async fn hostile_rd_values_never_take_the_browser_off_site() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    for rd in [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "/%2F%2Fevil.example",
        " //evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
    ] {
        for tampered in [false, true] {
            browser.open(&gh.https_url("/")).await;
            browser.delete_cookies().await;
            browser
                .open(&gh.https_url(&format!("/auth/login?rd={}", urlencoding(rd))))
                .await;
            if tampered {
                // The form posts the value itself, whatever the page made of it.
                browser
                    .execute(
                        "document.querySelector('input[name=rd]').value = arguments[0];",
                        &[Value::from(rd)],
                        false,
                    )
                    .await;
            }
            let landed = sign_in(&browser, &gh, "ada", PASSWORD).await;
            let path = local(&gh, &landed)
                .unwrap_or_else(|| panic!("{rd:?} (tampered: {tampered}) went to {landed}"));
            assert!(!path.starts_with("/auth/"), "{rd:?}: {path}");
            assert!(
                !path.starts_with("//") && !path.contains('\\'),
                "{rd:?}: {path}"
            );
        }
    }
    browser.quit().await;
}

/// Another site (`http://evil.example:<port>/`, which the browser resolves to this machine)
/// whose page holds a form that posts `fields` to gatehouse's sign-in.
async fn other_site(
    action: String,
    fields: Vec<(&'static str, String)>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let inputs: String = fields
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{k}\" value=\"{v}\">"))
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><title>Win a prize</title><main>\
         <form method=\"post\" action=\"{action}\">{inputs}<button id=\"go\">Claim</button></form>\
         </main></html>"
    );
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_sign_in_form_posted_from_another_site_is_refused() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let csrf = browser
        .execute(
            "return document.querySelector('input[name=csrf]').value;",
            &[],
            false,
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();
    let csrf_cookie = browser.cookie(CSRF_COOKIE).await.expect("a CSRF cookie");

    // A real cross-site post from the browser, even with a valid token in it.
    let (port, site) = other_site(
        gh.https_url("/auth/login"),
        vec![
            ("csrf", csrf.clone()),
            ("rd", "/app/".into()),
            ("user", "ada".into()),
            ("password", PASSWORD.into()),
        ],
    )
    .await;
    browser.open(&format!("http://evil.example:{port}/")).await;
    browser.click("#go").await;
    browser.url_once(|url| local(&gh, url).is_some()).await;
    assert_eq!(browser.status().await, 403);
    assert_eq!(browser.cookie(SESSION_COOKIE).await, None);
    site.abort();

    // The same form by a plain client: another `Origin`, or no token, is refused; only the
    // form from this site's page with its token signs in.
    install_crypto();
    let pem = std::fs::read(gh.dir.path().join("gh.crt")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("localhost", gh.addrs.https.unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |origin: String, token: &str| {
        let mut fields = vec![("user", "ada"), ("password", PASSWORD), ("rd", "/app/")];
        if !token.is_empty() {
            fields.push(("csrf", token));
        }
        client
            .post(gh.https_url("/auth/login"))
            .header("origin", origin)
            .header("cookie", format!("{CSRF_COOKIE}={csrf_cookie}"))
            .form(&fields)
            .send()
    };
    let own = gh.https_url("");
    let evil = post("https://evil.example".into(), &csrf).await.unwrap();
    assert_eq!(evil.status(), 403);
    let tokenless = post(own.clone(), "").await.unwrap();
    assert_eq!(tokenless.status(), 403);
    let genuine = post(own, &csrf).await.unwrap();
    assert_eq!(genuine.headers().get("location").unwrap(), "/app/");
    assert_eq!(genuine.status(), 303);
    browser.quit().await;
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_show_the_same_page() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    let mut shown = Vec::new();
    for name in ["ada", "ghost"] {
        browser.delete_cookies().await;
        browser
            .open(&gh.https_url("/auth/login?rd=%2Fapp%2F"))
            .await;
        submit(&browser, name, "not the password").await;
        let page = browser.source_containing("id=\"error\"").await;
        assert!(page.contains("role=\"alert\""), "{page}");
        shown.push((
            browser.status().await,
            browser.text("main").await,
            browser.text("#error").await,
        ));
        assert_eq!(browser.cookie(SESSION_COOKIE).await, None);
    }
    assert_eq!(shown[0].0, 401);
    assert_eq!(shown[0], shown[1], "one page for both");
    browser
        .assert_accessible("the sign-in page with an error")
        .await;
    browser.screenshots("signin-error").await;
    browser.quit().await;
}

#[tokio::test]
async fn the_session_document_describes_the_browsers_session() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/app/")).await;
    sign_in(&browser, &gh, "ada", PASSWORD).await;
    browser.open(&gh.https_url("/auth/session")).await;
    let text = browser.text("body").await;
    let session: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(session["user"], "ada");
    assert_eq!(session["methods"], json!(["pwd"]));
    assert!(session["expiresAt"].as_str().unwrap().ends_with('Z'));
    browser.quit().await;
}
