//! Operations: `/metrics`, forward-auth (`/auth/verify`) in-process and behind a real nginx.

use serde_json::json;

use crate::harness::*;

const PASSWORD: &str = "correct horse battery";

/// The value of one sample (`name{labels}` exactly as rendered), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn metrics(gh: &Gatehouse) -> String {
    let response = http1_client()
        .get(gh.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_requests_by_class_and_status_and_auth_failures_by_reason() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let client = http1_client();
    for _ in 0..2 {
        let r = client.get(gh.http_url("/private/")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = client
        .get(gh.http_url("/private/"))
        .basic_auth("ada", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(gh.http_url("/private/"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(gh.http_url("/public/")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let text = metrics(&gh).await;
    let expect = [
        (
            "gatehouse_requests_total{class=\"authenticated\",status=\"401\"}",
            3.0,
        ),
        (
            "gatehouse_requests_total{class=\"authenticated\",status=\"200\"}",
            1.0,
        ),
        (
            "gatehouse_requests_total{class=\"public\",status=\"200\"}",
            1.0,
        ),
        ("gatehouse_auth_failures_total{reason=\"missing\"}", 2.0),
        ("gatehouse_auth_failures_total{reason=\"invalid\"}", 1.0),
        ("gatehouse_upstream_latency_seconds_count", 2.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), value, "{series} in\n{text}");
    }
    assert!(text.contains("# TYPE gatehouse_upstream_latency_seconds histogram"));
    assert_eq!(upstream.hits(), 2, "scraping is not a request to the app");
}

#[tokio::test]
async fn forward_auth_answers_the_route_decision_with_identity_headers() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com", "scopes": ["read"]}))
        .await;
    let client = http1_client();
    let verify = |uri: &'static str| {
        client
            .get(gh.http_url("/auth/verify"))
            .header("x-forwarded-method", "POST")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example")
            .header("x-forwarded-uri", uri)
    };

    let anonymous = verify("/private/orders?id=1").send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().get("www-authenticate").is_some());
    let body = anonymous.text().await.unwrap();
    assert!(body.contains("/problems/unauthenticated"), "{body}");

    let public = verify("/public/page").send().await.unwrap();
    assert_eq!(public.status(), 200);
    assert!(public.headers().get("x-auth-user").is_none());

    let allowed = verify("/private/orders")
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let h = allowed.headers();
    assert_eq!(h["x-auth-user"], "ada");
    assert_eq!(h["x-auth-email"], "ada@example.com");
    assert_eq!(h["x-auth-scopes"], "read");
    assert!(h["x-auth-assertion"].to_str().unwrap().split('.').count() == 3);

    // The path decided is the normalised one: dot segments cannot smuggle a public prefix.
    let smuggled = verify("/public/../secure/admin")
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(smuggled.status(), 403, "/secure/ needs a second factor");

    let nothing = client
        .get(gh.http_url("/auth/verify"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status(), 400, "no described request");

    // Envoy's ext_authz sends the original path after the prefix.
    let envoy = client
        .post(gh.http_url("/auth/verify/private/orders"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(envoy.status(), 200);
    assert_eq!(upstream.hits(), 0, "forward-auth never forwards");
}

#[tokio::test]
async fn forward_auth_refuses_peers_that_are_not_trusted_proxies() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| c.server.trusted_proxies = vec![]).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let response = http1_client()
        .get(gh.http_url("/auth/verify"))
        .header("x-forwarded-uri", "/private/")
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("x-auth-user").is_none());
    let body = response.text().await.unwrap();
    assert!(body.contains("untrusted-forward-auth"), "{body}");
}

/// A real nginx (Debian's, installed by tests/run.sh) running `deploy/forward-auth`'s template in
/// front of `app`, asking `gatehouse` with `auth_request`.
pub struct Nginx {
    child: tokio::process::Child,
    port: u16,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(gatehouse: std::net::SocketAddr, app: &str) -> Nginx {
        let prefix = tempfile::tempdir().unwrap();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/forward-auth/nginx.conf.template"),
        )
        .unwrap();
        let conf = template
            .replace("@LISTEN_PORT@", &port.to_string())
            .replace("@GATEHOUSE_ADDR@", &gatehouse.to_string())
            .replace("@APP_ADDR@", app.trim_start_matches("http://"))
            .replace("@PREFIX@", &prefix.path().display().to_string());
        let file = prefix.path().join("nginx.conf");
        std::fs::write(&file, conf).unwrap();
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is installed (tests/run.sh installs nginx-light)");
        let error_log = prefix.path().join("error.log");
        // One process, so that killing it leaves no orphaned workers behind.
        let child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&file)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "master_process off;"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Nginx {
                    child,
                    port,
                    _prefix: prefix,
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(&error_log).unwrap_or_default()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn nginx_auth_request_in_front_of_an_app_uses_gatehouse_forward_auth() {
    let app = Upstream::start().await;
    // Gatehouse's own upstream is never used in forward-auth mode.
    let gh = Gatehouse::start_url("http://127.0.0.1:9", |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com"}))
        .await;
    let nginx = Nginx::start(gh.http_addr(), &app.url()).await;
    let client = http1_client();

    let anonymous = client
        .get(nginx.url("/private/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().get("www-authenticate").is_some());
    assert_eq!(app.hits(), 0, "nothing reaches the app unauthenticated");

    let allowed = client
        .get(nginx.url("/private/orders?id=7"))
        .basic_auth("ada", Some(PASSWORD))
        .header("x-auth-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let seen = app.last();
    assert_eq!(seen.target, "/private/orders?id=7");
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(seen.headers["x-auth-email"], "ada@example.com");
    assert!(seen.headers["x-auth-assertion"].len() > 20);
    assert!(seen.headers.get("authorization").is_none());

    let mfa = client
        .get(nginx.url("/secure/panel"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(mfa.status(), 403);

    let public = client
        .get(nginx.url("/public/page"))
        .header("x-auth-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    let seen = app.last();
    assert!(
        seen.headers.get("x-auth-user").is_none_or(|v| v.is_empty()),
        "a client's identity header never reaches the app: {:?}",
        seen.headers.get("x-auth-user")
    );
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn one_worker_thread_serves_proxies_and_reloads() {
    let upstream = Upstream::start().await;
    let config = |access: &str| {
        process_config(
            &upstream.url(),
            &format!(
                "[server]\nworker_threads = 1\n[[routes]]\npath_prefix = \"/private/\"\naccess = \"{access}\"\n"
            ),
        )
    };
    let gh = Process::start(&config("authenticated"), &[]).await;
    let client = http1_client();
    let mut statuses = Vec::new();
    for path in ["/public/a", "/private/b"] {
        statuses.push(
            client
                .get(gh.http_url(path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 401]);
    std::fs::write(gh.dir.path().join("gatehouse.toml"), config("public")).unwrap();
    gh.signal("HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if client
            .get(gh.http_url("/private/b"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reloaded, "{}", gh.logs().join("\n"));
    assert_eq!(upstream.hits(), 2);
}

/// Waits until a log line contains `needle` (the reader of the child's stdout may lag behind).
async fn logged(gh: &Process, needle: &str) -> Vec<String> {
    for _ in 0..200 {
        let logs = gh.logs();
        if logs.iter().any(|l| l.contains(needle)) {
            return logs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{needle} never logged: {}", gh.logs().join("\n"));
}

#[tokio::test]
async fn client_values_neither_forge_log_lines_nor_leak_enrollment_tickets_in_either_format() {
    const TOKEN: &str = "PTlaNrTUkwWzrmiBMKG-gReMXJdCja47";
    const TICKET: &str = "Zm9yZ2VkLXRpY2tldC1zZWNyZXQtMDEyMzQ1Njc4OWFi";
    let upstream = Upstream::start().await;
    for format in ["text", "json"] {
        let config = process_config(&upstream.url(), "")
            .replace("format = \"json\"", &format!("format = \"{format}\""));
        let gh = Process::start(&config, &[("GATEHOUSE_ADMIN_TOKEN", TOKEN)]).await;
        let addr = gh.addrs["listen.http"];
        let forged = "\n2026-01-01T00:00:00.000000Z  INFO gatehouse::access: FORGED\r\u{1b}[2K";
        let client = http1_client();

        // Through the admin API, a trusted-issuer-free way to hand gatehouse a name.
        let created = client
            .post(format!(
                "http://{}/admin/v1/users",
                gh.addrs["listen.admin"]
            ))
            .bearer_auth(TOKEN)
            .json(&json!({"userName": format!("ada{forged}"), "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 400);
        // A Basic user name may hold any byte once decoded.
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("ada{forged}:pw"),
        );
        let refused = client
            .get(gh.http_url("/private/x"))
            .header("authorization", format!("Basic {basic}"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        // Paths and queries with encoded and raw (non-ASCII) control characters.
        for target in [
            "/public/a%0AFORGED%0D%1B",
            "/public/a?q=%0AFORGED&token=s3cret",
            "/public/a?q=\u{85}FORGED\u{2028}FORGED",
            "/public/\u{85}FORGED",
        ] {
            raw(
                addr,
                &format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
            )
            .await;
        }
        // Every spelling that reaches the enrollment page.
        for path in [
            format!("/enroll/{TICKET}"),
            format!("/enroll/{TICKET}/qr.svg"),
            format!("/ENROLL/{TICKET}"),
            format!("/%65nroll/{TICKET}"),
            format!("//enroll/./{TICKET}"),
        ] {
            client.get(gh.http_url(&path)).send().await.unwrap();
        }
        let sentinel = format!("/public/sentinel-{format}");
        client.get(gh.http_url(&sentinel)).send().await.unwrap();
        let logs = logged(&gh, &sentinel).await;

        for line in &logs {
            assert!(!line.contains(TICKET), "{format}: ticket logged: {line}");
            assert!(!line.contains("s3cret"), "{format}: token logged: {line}");
            assert!(
                !line.contains(['\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{2028}']),
                "{format}: raw control character: {line:?}"
            );
            match format {
                "json" => {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {line:?}"));
                }
                _ => assert!(
                    line.starts_with(|c: char| c.is_ascii_digit()) && line.contains("Z "),
                    "not a log line of its own: {line:?}"
                ),
            }
        }
        let redacted = logs
            .iter()
            .filter(|l| l.contains("/enroll/REDACTED") || l.contains("/ENROLL/REDACTED"))
            .count();
        assert!(redacted >= 4, "{format}: {}", logs.join("\n"));
    }
}
