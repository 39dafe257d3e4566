//! Browser sign-in (SPEC §11) through a real nginx running `deploy/forward-auth`'s template in
//! front of an app: the redirect to gatehouse's sign-in page, the pages served through nginx, the
//! session's identity reaching the app without gatehouse's cookies, and the shipped nginx.conf
//! being the template that is tested here.
//!
//! nginx listens on plain HTTP, so the `Secure` cookies are kept by the test's own jar (the
//! `Visitor` of `signin`), as a browser would over https.

use crate::harness::*;
use crate::ops::Nginx;
use crate::signin::{CSRF_COOKIE, PASSWORD, SESSION_COOKIE, Visitor, user};

/// The header `name` of the request the app saw last, when it was sent.
fn seen_header(app: &Upstream, name: &str) -> Option<String> {
    app.last()
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Gatehouse (its own upstream unused, as in forward-auth mode) with user `ada`, and nginx in
/// front of `app` asking it.
async fn deployment(app: &Upstream) -> (Gatehouse, Nginx) {
    let gh = Gatehouse::start_url("http://127.0.0.1:9", |_| {}).await;
    user(&gh, "ada").await;
    let nginx = Nginx::start(gh.http_addr(), &app.url()).await;
    (gh, nginx)
}

#[tokio::test]
async fn a_browser_is_sent_through_nginx_to_sign_in_and_comes_back_with_its_identity() {
    let app = Upstream::start().await;
    let (_gh, nginx) = deployment(&app).await;
    let mut browser = Visitor::new(nginx.addr());
    browser.cookies.insert("app".into(), "theirs".into());

    let page = browser.get("/private/orders?id=7").await;
    assert_eq!(page.status, 302, "{}", page.body);
    // The path gatehouse wrote, not an absolute URL of nginx's making.
    assert_eq!(
        page.location(),
        "/auth/login?rd=%2Fprivate%2Forders%3Fid%3D7"
    );
    assert_eq!(app.hits(), 0, "nothing reaches the app before signing in");

    let form = browser.get(page.location()).await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.set_cookie(CSRF_COOKIE).is_some(), "{:?}", form.headers);
    let rd = form.hidden("rd");
    assert_eq!(rd, "/private/orders?id=7");
    let csrf = form.hidden("csrf");
    // Posted as a browser does, with the Origin of the page: gatehouse learns the origin nginx
    // serves from X-Forwarded-Proto and X-Forwarded-Host.
    let signed_in = browser
        .post(
            "/auth/login",
            &[
                ("csrf", &csrf),
                ("rd", &rd),
                ("user", "ada"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location(), "/private/orders?id=7");
    assert!(signed_in.set_cookie(SESSION_COOKIE).is_some());
    assert!(browser.session().is_some());

    let page = browser.get(signed_in.location()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body, "upstream ok");
    let seen = app.last();
    assert_eq!(seen.target, "/private/orders?id=7");
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(seen.headers["x-auth-methods"], "pwd");
    assert!(seen.headers["x-auth-assertion"].len() > 20);
    assert_eq!(
        seen_header(&app, "cookie").as_deref(),
        Some("app=theirs"),
        "gatehouse's cookies stay between the browser and gatehouse"
    );

    // The session as a single-page app reads it, through nginx.
    let session = browser.get("/auth/session").await;
    assert_eq!(session.status, 200, "{}", session.body);
    let session: serde_json::Value = serde_json::from_str(&session.body).unwrap();
    assert_eq!(session["user"], "ada");

    // The passkeys page the step-up and sign-out pages link to is served by gatehouse too.
    let passkeys = browser.get("/auth/passkeys").await;
    assert_eq!(passkeys.status, 200, "{}", passkeys.body);
    assert!(passkeys.body.contains("Your passkeys"), "{}", passkeys.body);

    // An mfa route with a password-only session: to step-up, also through nginx's 401.
    let page = browser.get("/secure/panel").await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.location(), "/auth/step-up?rd=%2Fsecure%2Fpanel");

    // Signing out through nginx ends the session: the old id is sent to sign in again.
    let id = browser.session().unwrap();
    let out = browser.sign_out().await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(browser.session().is_none(), "the cookie is cleared");
    browser.cookies.insert(SESSION_COOKIE.into(), id);
    let hits = app.hits();
    let page = browser.get("/private/orders").await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(app.hits(), hits);
}

#[tokio::test]
async fn api_clients_through_nginx_keep_the_401_with_its_challenge() {
    let app = Upstream::start().await;
    let (_gh, nginx) = deployment(&app).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, accept) in [
        (reqwest::Method::GET, "application/json"),
        (reqwest::Method::GET, "*/*"),
        // Not a navigation, whatever it accepts.
        (reqwest::Method::POST, "text/html"),
    ] {
        let response = client
            .request(method.clone(), nginx.url("/private/orders"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {accept}");
        let challenge = response.headers().get("www-authenticate");
        assert!(challenge.is_some(), "{method} {accept}: {response:?}");
        assert!(
            response.headers().get("location").is_none(),
            "{method} {accept}"
        );
    }
    // A navigation that carries credentials wants their verdict, not the sign-in page.
    let response = client
        .get(nginx.url("/private/orders"))
        .header("accept", "text/html")
        .basic_auth("ada", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("location").is_none());
    assert_eq!(app.hits(), 0);
}

/// nginx is a trusted peer of gatehouse, so a client must not be able to reach `/auth/verify`
/// through it with X-Forwarded-* headers of its own choosing: in no spelling does the answer
/// carry a verdict's identity headers, and each request either is refused by nginx or reaches the
/// app as the app's own path (judged by gatehouse as that path).
#[tokio::test]
async fn a_client_cannot_have_another_path_judged_through_nginx() {
    let app = Upstream::start().await;
    let (_gh, nginx) = deployment(&app).await;
    let mut browser = Visitor::new(nginx.addr());
    let page = browser.sign_in("ada", PASSWORD, "/").await;
    assert_eq!(page.status, 303, "{}", page.body);
    let id = browser.session().unwrap();

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in [
        "/auth/verify",
        "/auth/verify?x=1",
        "/auth//verify",
        "/auth/./verify",
        "/auth/login/../verify",
        "/auth/%76erify",
        "/auth/verify;p=1",
        "/auth/verify/",
        "/auth/verify/private/orders",
        "/AUTH/VERIFY",
        "/auth/Verify",
        "/Auth/verify/private/orders",
        "//auth/verify",
    ] {
        let hits = app.hits();
        let response = client
            .get(nginx.url(path))
            .header("cookie", format!("{SESSION_COOKIE}={id}"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/private/orders")
            .header("x-original-url", "http://app.example/private/orders")
            .header("x-forwarded-host", "app.example")
            .send()
            .await
            .unwrap();
        for name in ["x-auth-user", "x-auth-assertion", "x-auth-methods"] {
            assert!(
                response.headers().get(name).is_none(),
                "{path}: {name} in {response:?}"
            );
        }
        if app.hits() == hits {
            assert_eq!(response.status(), 404, "{path}");
        } else {
            assert_eq!(app.last().target, path, "the app's own path");
        }
    }
}

#[tokio::test]
async fn nginx_forwards_the_apps_cookies_without_gatehouses() {
    let app = Upstream::start().await;
    let (_gh, nginx) = deployment(&app).await;
    let mut browser = Visitor::new(nginx.addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let csrf = browser.cookies[CSRF_COOKIE].clone();
    let s = format!("{SESSION_COOKIE}={id}");
    let c = format!("{CSRF_COOKIE}={csrf}");
    let client = http1_client();
    for (sent, forwarded) in [
        (vec![s.clone()], None),
        (vec![format!("{s}; {c}")], None),
        (vec![format!("{c};{s}")], None),
        (vec![format!("a=1; {s}; {c}; b=2")], Some("a=1; b=2")),
        (vec![format!("{c}; a=1;{s}")], Some("a=1")),
        (vec![format!("{s};z=3")], Some("z=3")),
        // Only the cookies of exactly these names.
        (
            vec![format!(
                "x{SESSION_COOKIE}=keep; {s}; {SESSION_COOKIE}-other=keep"
            )],
            Some("x__Host-gatehouse=keep; __Host-gatehouse-other=keep"),
        ),
        // Several Cookie headers (as HTTP/2 clients send them) arrive as one.
        (vec!["a=1".into(), s.clone(), c.clone()], Some("a=1")),
    ] {
        let mut request = client.get(nginx.url("/private/x"));
        for value in &sent {
            request = request.header("cookie", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{sent:?}");
        let seen = app.last();
        assert_eq!(seen.headers["x-auth-user"], "ada", "{sent:?}");
        let cookies: Vec<&str> = seen
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, Vec::from_iter(forwarded), "{sent:?}");
    }
}

/// The paths of sign-in at an OpenID Connect provider (SPEC §12) are passed to gatehouse: its own
/// answer (no provider is configured here, so its 404 for an unknown one, with its request id),
/// neither nginx's 404 nor the application's.
#[tokio::test]
async fn openid_provider_paths_reach_gatehouse_through_nginx() {
    let app = Upstream::start().await;
    let (_gh, nginx) = deployment(&app).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path) in [
        (
            reqwest::Method::GET,
            "/auth/login/corp?rd=%2Fprivate%2Forders",
        ),
        (reqwest::Method::GET, "/auth/callback/x?code=c&state=s"),
        (reqwest::Method::GET, "/auth/callback/Corp_2-b"),
        (reqwest::Method::POST, "/auth/backchannel-logout/x"),
    ] {
        let response = client
            .request(method.clone(), nginx.url(path))
            .header("accept", "text/html")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("logout_token=x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        assert!(
            response.headers().contains_key("x-request-id"),
            "{method} {path}: gatehouse's answer, not nginx's: {response:?}"
        );
    }
    assert_eq!(app.hits(), 0, "none of them is the application's");
}

/// The nginx.conf operators copy is the template these tests run, with its addresses filled in:
/// from the `upstream` block on, the two differ only in the listener and the addresses.
#[test]
fn the_shipped_nginx_conf_is_the_tested_template() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/forward-auth");
    let body = |file: &str| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let at = text.find("    upstream gatehouse {").unwrap();
        text[at..].to_owned()
    };
    let template = body("nginx.conf.template")
        .replace("listen 127.0.0.1:@LISTEN_PORT@;", "listen 80;")
        .replace("@GATEHOUSE_ADDR@", "127.0.0.1:4180")
        .replace("@APP_ADDR@", "127.0.0.1:3000");
    assert!(!template.contains("@PREFIX@"));
    assert_eq!(body("nginx.conf"), template);
}
