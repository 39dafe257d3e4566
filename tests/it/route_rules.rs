//! Route rules' `methods`, `source`, `any_scopes`, `factors` and `rate_limit` (SPEC §13), through
//! the real proxy and forward-auth; their check-config messages; `gatehouse routes explain`.

use std::process::Stdio;
use std::time::Duration;

use gatehouse::auth::{Method, Principal};
use gatehouse::config::{Access, AccessRule, Config, Factor, RateLimit};
use serde_json::json;

use crate::harness::*;

fn rule(prefix: &str, access: Access) -> AccessRule {
    AccessRule::new(prefix, access)
}

fn limit(count: u32, secs: u64) -> Option<RateLimit> {
    Some(RateLimit {
        count,
        per: Duration::from_secs(secs),
    })
}

async fn start(adjust: impl FnOnce(&mut Config)) -> (Upstream, Gatehouse) {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, adjust).await;
    (upstream, gh)
}

/// A raw request `method target` with extra header lines.
async fn send(gh: &Gatehouse, method: &str, target: &str, extra: &[&str]) -> RawResponse {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    raw(gh.http_addr(), &head).await
}

/// A bearer token of `user` (as the admin API created it) with `methods` as its `amr`.
fn token(gh: &Gatehouse, user: &serde_json::Value, scopes: &[&str], methods: &[Method]) -> String {
    let principal = Principal {
        user_id: user["id"].to_string(),
        user_name: user["userName"].as_str().unwrap().to_owned(),
        email: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        organizations: vec![],
        methods: methods.to_vec(),
    };
    format!(
        "Authorization: Bearer {}",
        gh.app.tokens.issue_access(&principal).unwrap()
    )
}

#[tokio::test]
async fn methods_pick_the_rule_in_any_letter_case_and_head_follows_get() {
    let (upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            methods: vec!["GET".into()],
            ..rule("/docs/", Access::Public)
        });
    })
    .await;
    for (method, status) in [
        ("GET", 200),
        ("get", 200),
        ("Get", 200),
        ("HEAD", 200),
        ("POST", 401),
        ("post", 401),
        ("DELETE", 401),
    ] {
        let response = send(&gh, method, "/docs/a", &[]).await;
        assert_eq!(response.status, status, "{method}");
    }
    assert_eq!(upstream.hits(), 4);
    // The same on the https listener.
    let client = gh.tls_client(false);
    let get = client.get(gh.https_url("/docs/a")).send().await.unwrap();
    assert_eq!(get.status(), 200);
    let post = client.post(gh.https_url("/docs/a")).send().await.unwrap();
    assert_eq!(post.status(), 401);
}

#[tokio::test]
async fn a_method_override_header_must_pass_the_rule_of_both_methods() {
    let (upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            methods: vec!["GET".into()],
            ..rule("/docs/", Access::Public)
        });
        c.routes.push(AccessRule {
            methods: vec!["DELETE".into()],
            scopes: vec!["admin".into()],
            ..rule("/items/", Access::Authenticated)
        });
    })
    .await;
    for header in [
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: delete",
        "X-Method-Override: Post",
        "x-http-method-override: GET, PUT",
    ] {
        let response = send(&gh, "GET", "/docs/a", &[header]).await;
        assert_eq!(response.status, 401, "{header}");
    }
    let response = send(&gh, "GET", "/docs/a", &["X-HTTP-Method-Override: get"]).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.hits(), 1);

    // A POST that asks to be a DELETE needs the DELETE rule's scope.
    let ada = gh.create_user(json!({"userName": "ada"})).await;
    let root = gh
        .create_user(json!({"userName": "root", "scopes": ["admin"]}))
        .await;
    let plain = token(&gh, &ada, &[], &[Method::Pwd]);
    let admin = token(&gh, &root, &["admin"], &[Method::Pwd]);
    let refused = send(
        &gh,
        "POST",
        "/items/1",
        &[&plain, "X-HTTP-Method-Override: DELETE"],
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_problem(
        403,
        refused.header("content-type"),
        &refused.body,
        "insufficient-scope",
    );
    let passed = send(
        &gh,
        "POST",
        "/items/1",
        &[&admin, "X-HTTP-Method-Override: DELETE"],
    )
    .await;
    assert_eq!(passed.status, 200);
    assert_eq!(send(&gh, "POST", "/items/1", &[&plain]).await.status, 200);
}

#[tokio::test]
async fn source_limits_a_rule_to_client_networks_and_only_a_trusted_proxy_names_the_client() {
    let routes = |c: &mut Config| {
        c.routes.push(AccessRule {
            source: vec!["127.0.0.1/32".parse().unwrap()],
            ..rule("/lan/", Access::Public)
        });
        c.routes.push(AccessRule {
            source: vec!["10.0.0.0/8".parse().unwrap()],
            ..rule("/vpn/", Access::Public)
        });
    };
    let (_upstream, gh) = start(|c| {
        routes(c);
        c.server.trusted_proxies.clear();
    })
    .await;
    assert_eq!(send(&gh, "GET", "/lan/x", &[]).await.status, 200);
    // Outside the source: the next rule (here proxy.default) applies.
    assert_eq!(send(&gh, "GET", "/vpn/x", &[]).await.status, 401);
    // An untrusted peer cannot name another client.
    for spoof in [
        "X-Forwarded-For: 10.1.2.3",
        "X-Real-IP: 10.1.2.3",
        "Forwarded: for=10.1.2.3",
    ] {
        assert_eq!(
            send(&gh, "GET", "/vpn/x", &[spoof]).await.status,
            401,
            "{spoof}"
        );
    }
    gh.stop().await;

    let (_upstream, gh) = start(|c| {
        routes(c);
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let via = send(&gh, "GET", "/vpn/x", &["X-Forwarded-For: 10.1.2.3"]).await;
    assert_eq!(via.status, 200);
    let mapped = send(&gh, "GET", "/vpn/x", &["X-Forwarded-For: ::ffff:10.1.2.3"]).await;
    assert_eq!(mapped.status, 200);
    let outside = send(&gh, "GET", "/vpn/x", &["X-Forwarded-For: 192.0.2.7"]).await;
    assert_eq!(outside.status, 401);
}

#[tokio::test]
async fn any_scopes_needs_one_of_them_and_scopes_all_of_them() {
    let (_upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            scopes: vec!["staff".into()],
            any_scopes: vec!["billing".into(), "support".into()],
            ..rule("/desk/", Access::Authenticated)
        });
    })
    .await;
    for (i, (scopes, status)) in [
        (&["staff", "support"][..], 200),
        (&["staff", "billing", "support"][..], 200),
        (&["staff"][..], 403),
        (&["support"][..], 403),
        (&[][..], 403),
    ]
    .into_iter()
    .enumerate()
    {
        let user = gh
            .create_user(json!({"userName": format!("user{i}"), "scopes": scopes}))
            .await;
        let credential = token(&gh, &user, scopes, &[Method::Pwd]);
        let response = send(&gh, "GET", "/desk/", &[&credential]).await;
        assert_eq!(response.status, status, "{scopes:?}");
        if status == 403 {
            assert_problem(
                403,
                response.header("content-type"),
                &response.body,
                "insufficient-scope",
            );
        }
    }
}

#[tokio::test]
async fn only_the_named_factors_satisfy_mfa_on_the_route() {
    let (_upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            factors: vec![Factor::Totp],
            ..rule("/otp/", Access::Mfa)
        });
        c.routes.push(AccessRule {
            factors: vec![Factor::Sms, Factor::Idp],
            ..rule("/sms/", Access::Mfa)
        });
        c.routes.push(AccessRule {
            factors: vec![Factor::Webauthn],
            ..rule("/passkey/", Access::Mfa)
        });
    })
    .await;
    let ada = gh.create_user(json!({"userName": "ada"})).await;
    let otp = token(&gh, &ada, &[], &[Method::Pwd, Method::Otp]);
    let sms = token(&gh, &ada, &[], &[Method::Pwd, Method::Sms]);
    let idp = token(&gh, &ada, &[], &[Method::Mfa]);
    for (credential, path, status) in [
        (&otp, "/otp/", 200),
        (&otp, "/sms/", 403),
        (&otp, "/passkey/", 403),
        (&sms, "/otp/", 403),
        (&sms, "/sms/", 200),
        (&idp, "/sms/", 200),
        (&sms, "/secure/", 200),
    ] {
        let response = send(&gh, "GET", path, &[credential]).await;
        assert_eq!(response.status, status, "{path} {credential}");
        if status == 403 {
            assert_problem(
                403,
                response.header("content-type"),
                &response.body,
                "mfa-required",
            );
        }
    }
}

#[tokio::test]
async fn over_the_rate_limit_a_request_gets_429_with_retry_after_until_the_bucket_refills() {
    let (upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            rate_limit: limit(2, 1),
            ..rule("/search/", Access::Public)
        });
    })
    .await;
    assert_eq!(send(&gh, "GET", "/search/a", &[]).await.status, 200);
    assert_eq!(send(&gh, "GET", "/search/b", &[]).await.status, 200);
    let limited = send(&gh, "GET", "/search/c", &[]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_problem(
        429,
        limited.header("content-type"),
        &limited.body,
        "rate-limited",
    );
    // Other routes are not limited.
    assert_eq!(send(&gh, "GET", "/public/", &[]).await.status, 200);
    assert_eq!(upstream.hits(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(&gh, "GET", "/search/d", &[]).await.status, 200);
}

#[tokio::test]
async fn each_user_has_a_bucket_and_refused_requests_take_no_token() {
    let (_upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            rate_limit: limit(2, 60),
            ..rule("/reports/", Access::Authenticated)
        });
    })
    .await;
    let ada = gh.create_user(json!({"userName": "ada"})).await;
    let bob = gh.create_user(json!({"userName": "bob"})).await;
    let (ada, bob) = (
        token(&gh, &ada, &[], &[Method::Pwd]),
        token(&gh, &bob, &[], &[Method::Pwd]),
    );
    // Anonymous requests are refused before they are counted.
    for _ in 0..5 {
        assert_eq!(send(&gh, "GET", "/reports/", &[]).await.status, 401);
    }
    assert_eq!(send(&gh, "GET", "/reports/", &[&ada]).await.status, 200);
    assert_eq!(send(&gh, "GET", "/reports/", &[&ada]).await.status, 200);
    for _ in 0..3 {
        let limited = send(&gh, "GET", "/reports/", &[&ada]).await;
        assert_eq!(limited.status, 429);
        let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
    }
    // Bob, from the same address, has his own bucket.
    assert_eq!(send(&gh, "GET", "/reports/", &[&bob]).await.status, 200);
    assert_eq!(send(&gh, "GET", "/reports/", &[&bob]).await.status, 200);
    assert_eq!(send(&gh, "GET", "/reports/", &[&bob]).await.status, 429);
    // One audit record per key per minute, however many refusals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = gh.audit_events(100).await;
    let limited = events.iter().filter(|e| *e == "rate_limited").count();
    assert_eq!(limited, 2, "{events:?}");
}

#[tokio::test]
async fn parallel_requests_never_pass_more_than_the_limit() {
    let (upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            rate_limit: limit(5, 60),
            ..rule("/burst/", Access::Public)
        });
    })
    .await;
    let client = http1_client();
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let request = client.get(gh.http_url(&format!("/burst/{i}")));
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .collect();
    let mut tasks = Vec::new();
    for request in requests {
        tasks.push(tokio::spawn(request));
    }
    let mut passed = 0;
    for task in tasks {
        match task.await.unwrap() {
            200 => passed += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(passed, 5);
    assert_eq!(upstream.hits(), 5);
}

#[tokio::test]
async fn forward_auth_decides_with_the_described_method_and_answers_429_over_the_limit() {
    let (_upstream, gh) = start(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.routes.push(AccessRule {
            methods: vec!["GET".into()],
            ..rule("/docs/", Access::Public)
        });
        c.routes.push(AccessRule {
            rate_limit: limit(1, 60),
            ..rule("/search/", Access::Public)
        });
    })
    .await;
    let verify = |extra: &[&str]| {
        let mut lines = vec!["X-Forwarded-Uri: /docs/a"];
        lines.extend_from_slice(extra);
        lines.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for (extra, status) in [
        (verify(&["X-Forwarded-Method: GET"]), 200),
        (verify(&["X-Forwarded-Method: get"]), 200),
        (verify(&["X-Forwarded-Method: HEAD"]), 200),
        (verify(&[]), 200),
        (verify(&["X-Forwarded-Method: POST"]), 401),
        (verify(&["X-Original-Method: POST"]), 401),
        (
            verify(&["X-Forwarded-Method: GET", "X-Original-Method: POST"]),
            401,
        ),
        (
            verify(&["X-Forwarded-Method: GET", "X-HTTP-Method-Override: PUT"]),
            401,
        ),
    ] {
        let lines: Vec<&str> = extra.iter().map(String::as_str).collect();
        let response = send(&gh, "GET", "/auth/verify", &lines).await;
        assert_eq!(response.status, status, "{extra:?}");
    }
    let search = ["X-Forwarded-Uri: /search/?q=1", "X-Forwarded-Method: GET"];
    assert_eq!(send(&gh, "GET", "/auth/verify", &search).await.status, 200);
    let limited = send(&gh, "GET", "/auth/verify", &search).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
}

#[tokio::test]
async fn a_grpc_call_over_the_limit_gets_resource_exhausted() {
    let (_upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            rate_limit: limit(1, 60),
            ..rule("/svc.Api/", Access::Public)
        });
    })
    .await;
    let grpc = ["Content-Type: application/grpc", "TE: trailers"];
    let _ = send(&gh, "POST", "/svc.Api/Call", &grpc).await;
    let limited = send(&gh, "POST", "/svc.Api/Call", &grpc).await;
    assert_eq!(limited.status, 200);
    assert_eq!(limited.header("grpc-status"), Some("8"));
}

/// Runs the binary with `args` in `dir` (a development configuration).
fn run(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(binary())
        .args(args)
        .env(DEVELOPMENT.0, DEVELOPMENT.1)
        .env_remove("GATEHOUSE_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn check_config_names_each_bad_route_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        r#"
[upstream]
url = "http://127.0.0.1:1"
[[routes]]
path_prefix = "/a/"
access = "authenticated"
rate_limit = "100/d"
methods = ["GET", "BAD METHOD", "GTE"]
[[routes]]
path_prefix = "/b/"
access = "authenticated"
factors = ["totp"]
any_scopes = []
[[routes]]
path_prefix = "/c/"
access = "mfa"
source = ["10.0.0.0/8", "not-an-ip", "10.0.0.0/33"]
factors = ["fingerprint"]
rate_limit = "0/s"
"#,
    )
    .unwrap();
    let out = run(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for message in [
        "routes[0].rate_limit: expected N/s, N/m or N/h",
        "routes[0].methods[1]: `BAD METHOD` is not a method name",
        "routes[0].methods[2]: unknown method `GTE`; expected one of GET, HEAD",
        "routes[1].factors: only with access = \"mfa\"",
        "routes[1].any_scopes: is an empty list",
        "routes[2].source[1]: not a CIDR",
        "routes[2].source[2]: not a CIDR",
        "routes[2].factors[0]: expected one of `totp`",
        "routes[2].rate_limit: expected N/s, N/m or N/h",
    ] {
        assert!(stderr.contains(message), "{message} not in:\n{stderr}");
    }
    assert!(!stderr.contains("source[0]"), "{stderr}");
}

fn explain_config(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("explain.toml");
    std::fs::write(
        &file,
        r#"
[upstream]
url = "http://127.0.0.1:1"
[proxy]
default = "authenticated"
[[routes]]
path_prefix = "/docs/"
access = "public"
methods = ["GET"]
[[routes]]
path_prefix = "/docs/internal/"
access = "public"
source = ["10.0.0.0/8"]
rate_limit = "10/m"
[[routes]]
path_prefix = "/admin/"
access = "mfa"
factors = ["totp"]
scopes = ["admin"]
"#,
    )
    .unwrap();
    file
}

#[test]
fn routes_explain_names_the_rule_and_why_longer_ones_do_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = explain_config(dir.path());
    let config = file.to_str().unwrap();
    let out = run(
        &[
            "--config",
            config,
            "routes",
            "explain",
            "get",
            "/docs/./internal/x",
        ],
        &[],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("path: /docs/internal/x"), "{stdout}");
    assert!(
        stdout.contains("routes[1] (path_prefix = \"/docs/internal/\"): does not apply: the client address is outside its `source`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("routes[0] (path_prefix = \"/docs/\"): applies"),
        "{stdout}"
    );

    let inside = run(
        &[
            "--config",
            config,
            "routes",
            "explain",
            "GET",
            "/docs/internal/x",
            "--source",
            "10.1.1.1",
        ],
        &[],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&inside.stdout);
    assert_eq!(inside.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("routes[1] (path_prefix = \"/docs/internal/\"): applies"),
        "{stdout}"
    );
    assert!(stdout.contains("rate_limit = \"10/m\""), "{stdout}");

    // A POST falls to proxy.default; so does a GET overridden to DELETE.
    for args in [
        &["POST", "/docs/x"][..],
        &[
            "GET",
            "/docs/x",
            "--header",
            "X-HTTP-Method-Override: DELETE",
        ][..],
    ] {
        let mut all = vec!["--config", config, "routes", "explain"];
        all.extend_from_slice(args);
        let out = run(&all, &[], dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}");
        assert!(
            stdout.contains("the method is not in its `methods`"),
            "{stdout}"
        );
        assert!(stdout.contains("proxy.default: applies"), "{stdout}");
        assert!(stdout.contains("an anonymous request: refused"), "{stdout}");
    }

    // Usage and configuration errors exit 2.
    let bad_path = run(
        &["--config", config, "routes", "explain", "GET", "/a%2fb"],
        &[],
        dir.path(),
    );
    assert_eq!(bad_path.status.code(), Some(2));
    let no_config = run(
        &["--config", "missing.toml", "routes", "explain", "GET", "/"],
        &[],
        dir.path(),
    );
    assert_eq!(no_config.status.code(), Some(2));
    let no_token = run(
        &[
            "--config", config, "routes", "explain", "GET", "/admin/", "--user", "ada",
        ],
        &[],
        dir.path(),
    );
    assert_eq!(no_token.status.code(), Some(2));
}

#[tokio::test]
async fn routes_explain_looks_the_user_up_through_the_admin_api() {
    let (_upstream, gh) = start(|_| {}).await;
    gh.create_user(json!({"userName": "ada", "scopes": ["admin"]}))
        .await;
    gh.create_user(json!({"userName": "bob"})).await;
    let dir = tempfile::tempdir().unwrap();
    let file = explain_config(dir.path());
    let config = file.to_str().unwrap().to_owned();
    let admin_url = gh.admin_url("");
    let explain = |user: &str, factor: Option<&str>| {
        let mut args = vec![
            "--config".to_owned(),
            config.clone(),
            "routes".into(),
            "explain".into(),
            "GET".into(),
            "/admin/users".into(),
            "--user".into(),
            user.to_owned(),
        ];
        if let Some(f) = factor {
            args.extend(["--factor".to_owned(), f.to_owned()]);
        }
        let dir = dir.path().to_owned();
        let admin_url = admin_url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run(
                    &args,
                    &[
                        ("GATEHOUSE_ADMIN_URL", admin_url.as_str()),
                        ("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN),
                    ],
                    &dir,
                )
            })
            .await
            .unwrap()
        }
    };
    let out = explain("ada", Some("totp")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("user ada: would pass"), "{stdout}");

    let out = explain("ada", Some("sms")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("needs one of the second factors totp"),
        "{stdout}"
    );

    let out = explain("bob", Some("totp")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("user bob: refused: missing the scope `admin`"),
        "{stdout}"
    );

    let out = explain("nobody", None).await;
    assert_eq!(out.status.code(), Some(2));
}

/// Waits until the process has logged a line containing `message` at least `count` times.
async fn wait_for_log(gh: &Process, message: &str, count: usize) {
    for _ in 0..100 {
        let seen = gh.logs().iter().filter(|l| l.contains(message)).count();
        if seen >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{message:?} not logged:\n{}", gh.logs().join("\n"));
}

#[tokio::test]
async fn a_reload_applies_new_conditions_and_keeps_the_buckets_of_unchanged_limits() {
    let upstream = Upstream::start().await;
    let config = |search_limit: &str, docs_methods: &str| {
        process_config(
            &upstream.url(),
            &format!(
                "[[routes]]\npath_prefix = \"/search/\"\naccess = \"public\"\n\
                 rate_limit = \"{search_limit}\"\n\
                 [[routes]]\npath_prefix = \"/docs/\"\naccess = \"public\"\n\
                 methods = {docs_methods}\n"
            ),
        )
    };
    let gh = Process::start(&config("1/m", r#"["GET"]"#), &[]).await;
    let file = gh.dir.path().join("gatehouse.toml");
    let client = http1_client();
    let url = |path: &str| format!("http://{}{path}", gh.addrs["listen.http"]);
    let get = |path: &str| client.get(url(path)).send();
    assert_eq!(get("/search/").await.unwrap().status(), 200);
    assert_eq!(get("/search/").await.unwrap().status(), 429);
    let post = client.post(url("/docs/")).send().await.unwrap();
    assert_eq!(post.status(), 401);

    std::fs::write(&file, config("1/m", r#"["GET", "POST"]"#)).unwrap();
    gh.signal("HUP");
    wait_for_log(&gh, "configuration reloaded", 1).await;
    let post = client.post(url("/docs/")).send().await.unwrap();
    assert_eq!(post.status(), 200, "the new methods apply");
    assert_eq!(
        get("/search/").await.unwrap().status(),
        429,
        "an unchanged limit keeps its buckets"
    );

    std::fs::write(&file, config("5/m", r#"["GET", "POST"]"#)).unwrap();
    gh.signal("HUP");
    wait_for_log(&gh, "rate_limit 1/m -> 5/m", 1).await;
    assert_eq!(
        get("/search/").await.unwrap().status(),
        200,
        "a changed limit starts afresh"
    );
}

#[tokio::test]
async fn a_session_without_a_named_factor_is_sent_to_step_up() {
    use crate::mfa::totp;
    use crate::signin::{PASSWORD, Visitor, enroll_totp, user};
    let (upstream, gh) = start(|c| {
        c.routes.push(AccessRule {
            factors: vec![Factor::Sms],
            ..rule("/texted/", Access::Mfa)
        });
        c.routes.push(AccessRule {
            factors: vec![Factor::Totp],
            ..rule("/app/", Access::Mfa)
        });
    })
    .await;
    user(&gh, "ada").await;
    let secret = enroll_totp(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/app/x").await;
    let page = browser.step_up(&totp(&secret, 1), "/app/x").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(browser.get("/app/x").await.status, 200);
    assert_eq!(upstream.last().headers["x-auth-methods"], "pwd,otp");
    // The TOTP session lacks the texted code this route names: sent to step up.
    let page = browser.get("/texted/x").await;
    assert_eq!(page.status, 302);
    assert_eq!(page.location(), "/auth/step-up?rd=%2Ftexted%2Fx");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn an_http2_websocket_must_pass_the_rule_of_get_too() {
    use crate::websocket::{EchoApp, Via, opened, refused};
    let app = EchoApp::start().await;
    let gh = Gatehouse::start_url(&app.url(), |c| {
        c.proxy.default = Access::Public;
        c.routes.push(AccessRule {
            methods: vec!["GET".into()],
            ..rule("/ws/", Access::Authenticated)
        });
    })
    .await;
    // The HTTP/1.1 upgrade is a GET; the HTTP/2 one a CONNECT that reaches the application as a
    // GET: both get the GET rule.
    for via in [Via::Http1, Via::H2c, Via::H2] {
        refused(&gh, via, "/ws/echo", &[])
            .await
            .assert_problem(401, "unauthenticated");
    }
    opened(&gh, Via::H2c, "/open/echo", &[]).await;
}
