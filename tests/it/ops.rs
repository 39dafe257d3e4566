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
