//! The path that is authorised is the path that is forwarded (SECURITY.md promise 4).

use gatehouse::config::Access;
use gatehouse::path::{match_key, normalize};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use crate::harness::*;

#[tokio::test]
async fn dot_segments_cannot_escape_a_public_prefix() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for target in [
        "/public/../private/x",
        "/public/%2e%2e/private/x",
        "/public/%2E%2E/private/x",
        "/public/.%2e/private/x",
        "/public/%2e./private/x",
        "/public/./../private/x",
        "/public//../../private/x",
        "/public/a/../../secure/x",
    ] {
        let response = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(response.status, 401, "{target}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn the_normalised_path_is_what_the_upstream_receives() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for (target, forwarded) in [
        ("//public//a///b", "/public/a/b"),
        ("/public/a/./b/../c?x=../y", "/public/a/c?x=../y"),
        ("/private/../public/%7euser/%41", "/public/~user/A"),
        ("/public/%e2%82%ac%20", "/public/%E2%82%AC%20"),
    ] {
        let response = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(upstream.last().target, forwarded, "{target}");
    }
}

#[tokio::test]
async fn encoded_slash_backslash_and_nul_are_refused_with_400() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for target in [
        "/public/..%2Fprivate/x",
        "/public/%2f..%2fprivate",
        "/public/..%5Cprivate",
        "/public/%5c",
        "/public/a%00b",
        "/public/%zz",
    ] {
        let response = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(response.status, 400, "{target}");
        assert_problem(
            400,
            response.header("content-type"),
            &response.body,
            "invalid-path",
        );
    }
    // A raw backslash is not even a valid request line; still 400, still not forwarded.
    let response = raw_get(gh.http_addr(), "/public/..\\private", &[]).await;
    assert_eq!(response.status, 400);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn query_never_matches_a_rule() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for target in [
        "/private/x?/public/",
        "/private?x=/public/../",
        "/?/public/",
    ] {
        let response = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(response.status, 401, "{target}");
    }
    assert_eq!(upstream.hits(), 0);
    let response = raw_get(gh.http_addr(), "/public/a?../../private/x", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.last().target, "/public/a?../../private/x");
}

#[tokio::test]
async fn path_headers_from_untrusted_peers_do_not_change_the_decision() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| c.server.trusted_proxies.clear()).await;
    let response = raw_get(
        gh.http_addr(),
        "/private/x",
        &[
            "X-Original-URL: /public/x",
            "X-Rewrite-URL: /public/x",
            "X-Forwarded-Uri: /public/x",
        ],
    )
    .await;
    assert_eq!(response.status, 401);
    assert_eq!(upstream.hits(), 0);
}

/// For generated paths (dot segments plain and encoded, `//`, escapes of every kind, `;`
/// parameters, letter case) the upstream receives exactly `normalize(p)`, gatehouse answers 400
/// exactly when `normalize` refuses `p`, and the rule that decides is the one for the normalised
/// path without its parameters, in any letter case, `/private/` covering `/private`.
#[test]
fn generated_paths_reach_the_upstream_exactly_as_normalised() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, gh) = runtime.block_on(async {
        let upstream = Upstream::start().await;
        // Every path is public but `/private/`, so a path that escapes it is forwarded.
        let gh = Gatehouse::start_with(&upstream, |c| c.proxy.default = Access::Public).await;
        (upstream, gh)
    });
    let atom = prop::sample::select(vec![
        "a",
        "public",
        "private",
        "PRIVATE",
        "Private",
        "private;a=b",
        ";x",
        "..;",
        "%2e%2e;x",
        ".;",
        "%3B",
        "a%3bb",
        ".",
        "..",
        "",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2e.",
        "%41",
        "%7e",
        "%20",
        "%e2%82%ac",
        "%25",
        "~x",
        "a.b",
        "%2F",
        "%5c",
        "%00",
        "%zz",
        "%",
    ]);
    let paths = prop::collection::vec(atom, 0..8).prop_map(|atoms| format!("/{}", atoms.join("/")));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&paths, |path| {
            let hits = upstream.hits();
            let response = runtime.block_on(raw_get(gh.http_addr(), &path, &[]));
            let protected = |normal: &str| {
                let key = match_key(normal).to_ascii_lowercase();
                key == "/private" || key.starts_with("/private/")
            };
            match normalize(&path) {
                Ok(normal) if protected(&normal) => {
                    prop_assert_eq!(response.status, 401, "{}", path);
                    prop_assert_eq!(upstream.hits(), hits, "{}", path);
                }
                Ok(normal) => {
                    prop_assert_eq!(response.status, 200, "{}", path);
                    prop_assert_eq!(upstream.hits(), hits + 1, "{}", path);
                    prop_assert_eq!(upstream.last().target, normal, "{}", path);
                }
                Err(_) => {
                    prop_assert_eq!(response.status, 400, "{}", path);
                    prop_assert_eq!(upstream.hits(), hits, "{}", path);
                }
            }
            Ok(())
        })
        .unwrap();
    runtime.block_on(gh.stop());
}

/// Gatehouse with `/admin/` (mfa, scope `admin`) beside the base rules, a user `plain` (password,
/// no second factor, no scope) and a user `boss` with a token carrying `otp` and `admin`.
async fn with_admin_rule(upstream: &Upstream) -> (Gatehouse, String, String) {
    let gh = Gatehouse::start_with(upstream, |c| {
        c.routes.push(gatehouse::config::AccessRule {
            path_prefix: "/admin/".into(),
            access: Access::Mfa,
            scopes: vec!["admin".into()],
            ..Default::default()
        });
    })
    .await;
    gh.create_user(serde_json::json!({"userName": "plain", "password": "correct horse battery"}))
        .await;
    let boss = gh
        .create_user(serde_json::json!({"userName": "boss", "scopes": ["admin"]}))
        .await;
    let principal = gatehouse::auth::Principal {
        user_id: boss["id"].to_string(),
        user_name: "boss".into(),
        email: None,
        scopes: vec!["admin".into()],
        organizations: vec![],
        methods: vec![gatehouse::auth::Method::Pwd, gatehouse::auth::Method::Otp],
    };
    let token = gh.app.tokens.issue_access(&principal).unwrap();
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("plain:correct horse battery")
    };
    (
        gh,
        format!("Authorization: Basic {basic}"),
        format!("Authorization: Bearer {token}"),
    )
}

/// Spellings of paths under `/admin/` that a lenient upstream serves as `/admin/…`.
const ADMIN_SPELLINGS: &[&str] = &[
    "/admin/x",
    "/ADMIN/x",
    "/Admin/x",
    "/admin",
    "/Admin",
    "/ADMIN",
    "/admin/",
    "/admin;a=b/x",
    "/admin;/x",
    "/Admin;jsessionid=1",
    "/%61dmin/x",
    "/%41DMIN/x",
    "//admin//x",
    "/public/../admin/x",
    "/public/..;/admin/x",
    "/public/..;a=b/admin/x",
    "/public/%2e%2e;/admin/x",
    "/public/%2E%2E;x/ADMIN;y/x",
    "/public/.;/..;/admin",
    "/;x/admin/x",
];

#[tokio::test]
async fn admin_rule_cannot_be_sidestepped_by_case_slash_or_parameters() {
    let upstream = Upstream::start().await;
    let (gh, plain, boss) = with_admin_rule(&upstream).await;
    for target in ADMIN_SPELLINGS {
        let anonymous = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(anonymous.status, 401, "anonymous {target}");
        let user = raw_get(gh.http_addr(), target, &[&plain]).await;
        assert_eq!(user.status, 403, "plain user {target}: {}", user.body);
        assert_problem(403, user.header("content-type"), &user.body, "mfa-required");
    }
    assert_eq!(upstream.hits(), 0);

    // Authorised, the upstream gets the resolved path: never `..;`, never an escape of `;`.
    for (target, forwarded) in [
        ("/public/..;/admin/x", "/admin/x"),
        ("/public/%2e%2e;/admin/x", "/admin/x"),
        ("/ADMIN/x", "/ADMIN/x"),
        ("/admin;a=b/x", "/admin;a=b/x"),
        ("/admin", "/admin"),
    ] {
        let response = raw_get(gh.http_addr(), target, &[&boss]).await;
        assert_eq!(response.status, 200, "{target}: {}", response.body);
        assert_eq!(upstream.last().target, forwarded, "{target}");
    }
}

#[tokio::test]
async fn encoded_semicolon_is_refused_with_400() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for target in ["/public/a%3Bb", "/public/..%3b/private/x", "/private%3B/x"] {
        let response = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(response.status, 400, "{target}");
        assert_problem(
            400,
            response.header("content-type"),
            &response.body,
            "invalid-path",
        );
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn forward_auth_applies_the_same_matching_rules() {
    let upstream = Upstream::start().await;
    let (gh, plain, boss) = with_admin_rule(&upstream).await;
    for target in ADMIN_SPELLINGS {
        for header in ["X-Forwarded-Uri", "X-Original-URL"] {
            let described = format!("{header}: {target}");
            let anonymous = raw_get(gh.http_addr(), "/auth/verify", &[&described]).await;
            assert_eq!(anonymous.status, 401, "anonymous {described}");
            let user = raw_get(gh.http_addr(), "/auth/verify", &[&described, &plain]).await;
            assert_eq!(user.status, 403, "plain user {described}");
            let allowed = raw_get(gh.http_addr(), "/auth/verify", &[&described, &boss]).await;
            assert_eq!(allowed.status, 200, "boss {described}");
        }
        // Envoy's variant, the described path after the endpoint's own.
        let envoy = raw_get(gh.http_addr(), &format!("/AUTH/verify{target}"), &[&plain]).await;
        assert_eq!(envoy.status, 403, "/AUTH/verify{target}");
    }
    let refused = raw_get(
        gh.http_addr(),
        "/auth/verify",
        &["X-Forwarded-Uri: /public/..%3B/admin/x"],
    )
    .await;
    assert_eq!(refused.status, 400);
    // Envoy's variant keeps the described path's escapes for its own normalisation.
    for target in [
        "/auth/verify/public/100%25",
        "/Auth;x/verify/public/a%20b;c",
    ] {
        let public = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(public.status, 200, "{target}");
    }
    // A public path stays public through forward-auth.
    let public = raw_get(
        gh.http_addr(),
        "/auth/verify",
        &["X-Forwarded-Uri: /PUBLIC;x/a"],
    )
    .await;
    assert_eq!(public.status, 200);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn local_endpoints_match_in_any_letter_case_and_with_parameters() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for target in [
        "/.well-known/jwks.json",
        "/.WELL-KNOWN/JWKS.json",
        "/.well-known;x/jwks.json",
    ] {
        let response = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(response.status, 200, "{target}");
        assert!(response.body.contains("\"keys\""), "{target}");
    }
    // The enrollment page answers unknown tickets itself in every spelling.
    for target in [
        "/enroll/unknown-ticket",
        "/ENROLL/unknown-ticket",
        "/Enroll;x/unknown-ticket",
    ] {
        let response = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(response.status, 404, "{target}");
    }
    assert_eq!(upstream.hits(), 0);
}

/// ingress-nginx describes the request in `X-Original-URL` and passes the client's own headers on
/// to the auth service, so a client's `X-Forwarded-Uri` arrives beside it; Traefik sets
/// `X-Forwarded-Uri` and passes a client's `X-Original-URL` on. Whichever one gatehouse preferred,
/// the client could pick the path that is decided: two descriptions that disagree are refused.
#[tokio::test]
async fn forward_auth_refuses_descriptions_that_disagree() {
    let upstream = Upstream::start().await;
    let (gh, plain, _boss) = with_admin_rule(&upstream).await;
    for headers in [
        vec![
            "X-Original-URL: https://app.test/admin/x",
            "X-Forwarded-Uri: /public/x",
        ],
        vec!["X-Forwarded-Uri: /admin/x", "X-Original-URL: /public/x"],
        vec!["X-Forwarded-Uri: /public/x", "X-Forwarded-Uri: /admin/x"],
        vec!["X-Original-URL: /public/x", "X-Original-URL: /admin/x"],
    ] {
        for credentials in [None, Some(plain.as_str())] {
            let mut extra = headers.clone();
            extra.extend(credentials);
            let response = raw_get(gh.http_addr(), "/auth/verify", &extra).await;
            assert_eq!(response.status, 400, "{extra:?}: {}", response.body);
        }
    }
    // Envoy's described path beside a header that names another.
    let response = raw_get(
        gh.http_addr(),
        "/auth/verify/admin/x",
        &["X-Forwarded-Uri: /public/x"],
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.body);
    // Descriptions that agree once normalised are one description.
    let response = raw_get(
        gh.http_addr(),
        "/auth/verify",
        &[
            "X-Original-URL: https://app.test/public/./x?a=b",
            "X-Forwarded-Uri: /PUBLIC/../public/x",
        ],
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(upstream.hits(), 0);
}

/// Java's `equalsIgnoreCase` and `Character.toLowerCase`, which Spring's case-insensitive path
/// matching uses, read `İ` (U+0130) and `ı` (U+0131) as `i`, `ſ` (U+017F) as `s` and the Kelvin
/// sign (U+212A) as `k`: such an upstream serves `/adm%C4%B0n/x` as `/admin/x`.
#[tokio::test]
async fn admin_rule_cannot_be_sidestepped_by_letters_that_fold_to_ascii() {
    let upstream = Upstream::start().await;
    let (gh, plain, boss) = with_admin_rule(&upstream).await;
    for target in [
        "/adm%C4%B0n/x",
        "/ADM%C4%B1N/x",
        "/adm%c4%b1n",
        "/public/../adm%C4%B0n;a=b/x",
    ] {
        let anonymous = raw_get(gh.http_addr(), target, &[]).await;
        assert_eq!(anonymous.status, 401, "anonymous {target}");
        let user = raw_get(gh.http_addr(), target, &[&plain]).await;
        assert_eq!(user.status, 403, "plain user {target}: {}", user.body);
        let described = format!("X-Forwarded-Uri: {target}");
        let user = raw_get(gh.http_addr(), "/auth/verify", &[&described, &plain]).await;
        assert_eq!(user.status, 403, "forward-auth {target}: {}", user.body);
    }
    assert_eq!(upstream.hits(), 0);
    let response = raw_get(gh.http_addr(), "/adm%C4%B0n/x", &[&boss]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(upstream.last().target, "/adm%C4%B0n/x");
}

/// nginx decides on the path before a raw `#` and passes the whole target on; an application that
/// reads past it (Go's router cleans `/public/x#/../../admin/x` to `/admin/x`) would serve another
/// path than the one decided, so a described path holding `#` is refused.
#[tokio::test]
async fn forward_auth_refuses_a_described_path_with_a_fragment() {
    let upstream = Upstream::start().await;
    let (gh, _plain, _boss) = with_admin_rule(&upstream).await;
    for header in ["X-Forwarded-Uri", "X-Original-URL"] {
        let described = format!("{header}: /public/x#/../../admin/x");
        let response = raw_get(gh.http_addr(), "/auth/verify", &[&described]).await;
        assert_eq!(response.status, 400, "{described}: {}", response.body);
    }
    // A `#` in the query is the query's business.
    let response = raw_get(
        gh.http_addr(),
        "/auth/verify",
        &["X-Forwarded-Uri: /public/x?a=#/../../admin/x"],
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
}

/// ASP.NET on IIS removes a cookieless session segment (`/(S(…))/`) from the path before routing,
/// so `/(S(x))/admin/x` is its `/admin/x`.
#[tokio::test]
async fn admin_rule_cannot_be_sidestepped_by_an_asp_net_session_segment() {
    let upstream = Upstream::start().await;
    let (gh, plain, boss) = with_admin_rule(&upstream).await;
    for target in [
        "/(S(x))/admin/x",
        "/(A(1)F(2))/Admin",
        "/%28S%28x%29%29/admin/x",
        "/public/../(S(x));a/admin/x",
    ] {
        let user = raw_get(gh.http_addr(), target, &[&plain]).await;
        assert_eq!(user.status, 403, "plain user {target}: {}", user.body);
        let described = format!("X-Forwarded-Uri: {target}");
        let user = raw_get(gh.http_addr(), "/auth/verify", &[&described, &plain]).await;
        assert_eq!(user.status, 403, "forward-auth {target}: {}", user.body);
    }
    assert_eq!(upstream.hits(), 0);
    let response = raw_get(gh.http_addr(), "/(S(x))/admin/x", &[&boss]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(upstream.last().target, "/(S(x))/admin/x");
}
