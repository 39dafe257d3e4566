//! The path that is authorised is the path that is forwarded (SECURITY.md promise 4).

use gatehouse::config::Access;
use gatehouse::path::normalize;
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

/// For generated paths (dot segments plain and encoded, `//`, escapes of every kind) the upstream
/// receives exactly `normalize(p)`, gatehouse answers 400 exactly when `normalize` refuses `p`,
/// and the rule that decides is the normalised path's.
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
            match normalize(&path) {
                Ok(normal) if normal.starts_with("/private/") => {
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
