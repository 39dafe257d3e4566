//! Header hygiene: no client-sent identity header reaches the upstream, and the client cannot
//! remove the headers gatehouse sets (SECURITY.md promises 2 and 3).

use crate::harness::*;

/// Every identity header name of every preset, folded to lower case with `-`.
const IDENTITY: &[&str] = &[
    "x-auth-user",
    "x-auth-user-id",
    "x-auth-email",
    "x-auth-scopes",
    "x-auth-methods",
    "x-auth-assertion",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "remote-user",
    "remote-email",
    "remote-groups",
];

fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let spoofed = [
        "X-Auth-User: admin",
        "x-auth-user: admin2",
        "X-AUTH-USER: admin3",
        "X_Auth_User: admin4",
        "x.auth.user: admin5",
        "X-Auth-User-Id: 1",
        "X_AUTH_EMAIL: root@example.com",
        "X-Auth-Scopes: admin",
        "X-Auth-Scopes: superuser",
        "x-auth-methods: pwd,otp",
        "X-Auth-Assertion: eyJhbGciOiJub25lIn0.e30.",
        "Remote-User: admin",
        "remote_groups: admins",
        "X-Forwarded-User: admin",
        "X-Forwarded-Email: root@example.com",
        "X_Forwarded_Preferred_Username: admin",
    ];
    // On a public route, and on the same public route through TLS with HTTP/2.
    let response = raw_get(gh.http_addr(), "/public/whoami", &spoofed).await;
    assert_eq!(response.status, 200);
    let mut seen = vec![upstream.last()];

    let mut request = gh.tls_client(true).get(gh.https_url("/public/whoami"));
    for line in &spoofed {
        let (name, value) = line.split_once(": ").unwrap();
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    seen.push(upstream.last());

    for request in seen {
        for name in request.headers.keys() {
            assert!(
                !IDENTITY.contains(&folded(name.as_str()).as_str()),
                "{name} reached the upstream: {:?}",
                request.headers
            );
        }
    }
}

#[tokio::test]
async fn spoofed_identity_headers_on_protected_routes_do_not_authenticate() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let response = raw_get(
        gh.http_addr(),
        "/private/x",
        &[
            "X-Auth-User: admin",
            "X-Auth-Methods: pwd,otp",
            "Remote-User: admin",
        ],
    )
    .await;
    assert_eq!(response.status, 401);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn connection_header_cannot_strip_what_gatehouse_sets() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let response = raw_get(
        gh.http_addr(),
        "/public/x",
        &["Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, X-Auth-User, Host"],
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers.contains_key("x-forwarded-host"));
    assert!(seen.headers.contains_key("x-request-id"));
    assert!(response.header("x-request-id").is_some());
}

#[tokio::test]
async fn hop_by_hop_headers_and_the_ones_connection_names_are_not_forwarded() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    raw_get(
        gh.http_addr(),
        "/public/x",
        &[
            "Connection: keep-alive, X-Internal-Secret",
            "X-Internal-Secret: 1",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Upgrade: websocket",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "X-Kept: yes",
        ],
    )
    .await;
    let seen = upstream.last();
    for name in [
        "x-internal-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!seen.headers.contains_key(name), "{name} was forwarded");
    }
    assert_eq!(seen.headers["x-kept"], "yes");
}

#[tokio::test]
async fn configured_header_names_are_stripped_too() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.identity_headers.user = "x-webauth-user".into();
    })
    .await;
    raw_get(gh.http_addr(), "/public/x", &["X_WebAuth_User: admin"]).await;
    assert!(!upstream.last().headers.contains_key("x-webauth-user"));
}

/// SPEC §6's list of headers no client may send upstream, folded, with names of no preset among
/// them (`X-Auth-Groups`, `Remote-Name`, oauth2-proxy's `X-Auth-Request-*`) and the path claims.
const NEVER_FORWARDED: &[&str] = &[
    "x-auth-user",
    "x-auth-user-id",
    "x-auth-email",
    "x-auth-scopes",
    "x-auth-methods",
    "x-auth-assertion",
    "x-auth-groups",
    "x-auth-roles",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-methods",
    "x-auth-anything-else",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "remote-user",
    "remote-user-id",
    "remote-email",
    "remote-groups",
    "remote-name",
    "remote-methods",
    "remote-assertion",
    "x-original-url",
    "x-rewrite-url",
];

/// `name` as a client may spell it so that some server or framework reads it as `name`.
fn spellings(name: &str) -> [String; 6] {
    let title: String = name
        .split('-')
        .map(|w| {
            let mut w = w.to_owned();
            w[..1].make_ascii_uppercase();
            w
        })
        .collect::<Vec<_>>()
        .join("-");
    [
        name.to_owned(),
        name.to_ascii_uppercase(),
        title.clone(),
        title.replace('-', "_"),
        name.replace('-', "."),
        // Mixed separators.
        name.replacen('-', "_", 1).replacen('-', ".", 1),
    ]
}

#[tokio::test]
async fn no_header_of_the_spec_list_reaches_the_upstream_in_any_spelling_preset_or_route() {
    const PASSWORD: &str = "correct horse battery";
    let upstream = Upstream::start().await;
    for preset in ["gatehouse", "oauth2-proxy", "authelia"] {
        for trusted in [true, false] {
            let gh = Gatehouse::start_with(&upstream, |c| {
                c.identity_headers = gatehouse::proxy::headers::Preset::from_name(preset)
                    .unwrap()
                    .names();
                if !trusted {
                    c.server.trusted_proxies.clear();
                }
            })
            .await;
            gh.create_user(serde_json::json!({"userName": "ada", "password": PASSWORD}))
                .await;
            let basic = format!(
                "Authorization: Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("ada:{PASSWORD}")
                )
            );
            for path in ["/public/x", "/private/x"] {
                for spelling in 0..6 {
                    // Every name twice: each copy must go.
                    let mut lines: Vec<String> = NEVER_FORWARDED
                        .iter()
                        .flat_map(|n| {
                            let s = &spellings(n)[spelling];
                            [format!("{s}: spoofed-1"), format!("{s}: spoofed-2")]
                        })
                        .collect();
                    lines.push(basic.clone());
                    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                    let at = format!("{preset}, trusted {trusted}, {path}, spelling {spelling}");
                    let response = raw_get(gh.http_addr(), path, &lines).await;
                    assert_eq!(response.status, 200, "{at}: {}", response.body);
                    let seen = upstream.last();
                    for (name, value) in &seen.headers {
                        assert!(
                            !value.as_bytes().starts_with(b"spoofed"),
                            "{at}: {name} reached the upstream"
                        );
                        let name = folded(name.as_str());
                        assert!(
                            name != "x-original-url" && name != "x-rewrite-url",
                            "{at}: {name} reached the upstream"
                        );
                    }
                }
            }
            gh.stop().await;
        }
    }
}

#[tokio::test]
async fn forward_auth_still_reads_path_claims_that_inline_routes_never_forward() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for (claim, path, status) in [
        ("X-Original-URL", "/private/x", 401),
        ("X-Original-URL", "/public/x", 200),
    ] {
        let line = format!("{claim}: {path}");
        let response = raw_get(gh.http_addr(), "/auth/verify", &[&line]).await;
        assert_eq!(response.status, status, "{line}");
    }
    assert_eq!(upstream.hits(), 0);
    // Inline, from the same trusted peer: the claim is not believed and not forwarded.
    let response = raw_get(
        gh.http_addr(),
        "/public/x",
        &["X-Original-URL: /private/x", "X-Rewrite-URL: /private/x"],
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.target, "/public/x");
    assert!(!seen.headers.contains_key("x-original-url"));
    assert!(!seen.headers.contains_key("x-rewrite-url"));
}
