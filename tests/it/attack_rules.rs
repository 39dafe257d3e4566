//! Attacks on route rules (`methods`, `source`, `factors`, `rate_limit`) and on the audit trail.

use gatehouse::config::{Access, AccessRule, Config};

use crate::harness::*;

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

#[tokio::test]
async fn envoy_forward_auth_without_a_method_header_is_decided_with_its_own_method() {
    // Envoy's ext_authz (HTTP service, with a path prefix) sends the check with the original
    // request's method and path and no X-Forwarded-Method: a POST must get the POST rule.
    let (_upstream, gh) = start(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.proxy.default = Access::Public;
        c.routes.push(AccessRule {
            methods: vec!["POST".into(), "DELETE".into()],
            ..AccessRule::new("/admin/", Access::Authenticated)
        });
    })
    .await;
    for method in ["POST", "delete"] {
        let response = send(&gh, method, "/auth/verify/admin/users", &[]).await;
        assert_eq!(response.status, 401, "{method}");
    }
    // The described method still wins when a proxy names one.
    let described = ["X-Forwarded-Uri: /admin/users", "X-Forwarded-Method: GET"];
    assert_eq!(
        send(&gh, "GET", "/auth/verify", &described).await.status,
        200
    );
    assert_eq!(
        send(&gh, "GET", "/auth/verify/admin/users", &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_method_override_header_spelt_with_underscores_or_dots_must_pass_both_rules() {
    // CGI-style upstreams (PHP, Rack, WSGI servers that keep such headers) read
    // `X_HTTP_Method_Override` as `X-HTTP-Method-Override` and act on the DELETE.
    let (upstream, gh) = start(|c| {
        c.proxy.default = Access::Public;
        c.routes.push(AccessRule {
            methods: vec!["DELETE".into()],
            ..AccessRule::new("/admin/", Access::Authenticated)
        });
    })
    .await;
    for header in [
        "X_HTTP_Method_Override: DELETE",
        "X.HTTP.Method.Override: DELETE",
        "x_http_method: DELETE",
        "X-Method_Override: DELETE",
    ] {
        let response = send(&gh, "POST", "/admin/users/1", &[header]).await;
        assert_eq!(response.status, 401, "{header}");
    }
    assert_eq!(upstream.hits(), 0);
    assert_eq!(send(&gh, "POST", "/admin/users/1", &[]).await.status, 200);
}

#[tokio::test]
async fn clients_with_many_addresses_cannot_flood_the_audit_trail_with_rate_limited_records() {
    // One subscriber's /48 holds 65 536 /64s, each its own bucket: each key's first refusal in a
    // minute must not be one record each without bound.
    let (_upstream, gh) = start(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.routes.push(AccessRule {
            rate_limit: Some(gatehouse::config::RateLimit {
                count: 1,
                per: std::time::Duration::from_secs(3600),
            }),
            ..AccessRule::new("/search/", Access::Public)
        });
    })
    .await;
    let mut refused = 0;
    for i in 0..250u32 {
        let from = format!("X-Forwarded-For: 2001:db8:1:{i:x}::1");
        for _ in 0..2 {
            if send(&gh, "GET", "/search/", &[&from]).await.status == 429 {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 250);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let events = gh.audit_events(1000).await;
    let limited = events.iter().filter(|e| *e == "rate_limited").count();
    assert!(
        (1..=gatehouse::ratelimit::AUDITED_KEYS + 1).contains(&limited),
        "{limited}"
    );
}

/// Two rules of one prefix that differ in `methods`: each method gets its own rule, in any letter
/// case, `HEAD` follows `GET`, and an override header must pass the rule of both methods.
#[tokio::test]
async fn rules_of_one_prefix_split_by_method_each_decide_their_methods() {
    let (upstream, gh) = start(|c| {
        c.proxy.default = Access::Public;
        c.routes.push(AccessRule {
            methods: vec!["GET".into()],
            ..AccessRule::new("/api/", Access::Public)
        });
        c.routes
            .push(AccessRule::new("/api/", Access::Authenticated));
    })
    .await;
    for method in ["GET", "get", "HEAD"] {
        let response = send(&gh, method, "/api/items", &[]).await;
        assert_eq!(response.status, 200, "{method}");
    }
    for method in ["POST", "post", "DELETE", "PUT"] {
        let response = send(&gh, method, "/api/items", &["Content-Length: 0"]).await;
        assert_eq!(response.status, 401, "{method}");
    }
    let overridden = send(
        &gh,
        "GET",
        "/api/items",
        &["X-HTTP-Method-Override: DELETE"],
    )
    .await;
    assert_eq!(overridden.status, 401);
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn forward_auth_naming_no_method_where_rules_have_methods_is_warned_about_once() {
    // nginx's auth_request checks with GET: without X-Forwarded-Method, a POST to a path whose
    // GET is public would be decided as that GET. Gatehouse says so in its log.
    let upstream = Upstream::start().await;
    let extra = "[[routes]]\npath_prefix = \"/docs/\"\naccess = \"public\"\nmethods = [\"GET\"]\n";
    let gh = Process::start(&process_config(&upstream.url(), extra), &[]).await;
    let client = http1_client();
    let verify = |headers: &[(&str, &str)]| {
        let mut request = client.get(gh.http_url("/auth/verify"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    const NEEDLE: &str = "name no X-Forwarded-Method";
    let warnings = |gh: &Process| gh.logs().iter().filter(|l| l.contains(NEEDLE)).count();
    // Named methods, Envoy's path after /auth/verify, and paths without method rules: no warning.
    let named = [
        ("x-forwarded-uri", "/docs/a"),
        ("x-forwarded-method", "POST"),
    ];
    assert_eq!(verify(&named).await.unwrap().status(), 401);
    let original = [("x-original-url", "/docs/a"), ("x-original-method", "GET")];
    assert_eq!(verify(&original).await.unwrap().status(), 200);
    let envoy = client.get(gh.http_url("/auth/verify/docs/a")).send();
    assert_eq!(envoy.await.unwrap().status(), 200);
    let elsewhere = [("x-forwarded-uri", "/public/x")];
    assert_eq!(verify(&elsewhere).await.unwrap().status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(warnings(&gh), 0, "{}", gh.logs().join("\n"));
    // A described path with method rules and no method: decided as the check's GET, and said.
    let unnamed = [("x-forwarded-uri", "/docs/a")];
    for _ in 0..3 {
        assert_eq!(verify(&unnamed).await.unwrap().status(), 200);
    }
    let mut waited = 0;
    while warnings(&gh) == 0 {
        assert!(waited < 100, "never warned: {}", gh.logs().join("\n"));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(warnings(&gh), 1, "{}", gh.logs().join("\n"));
}
