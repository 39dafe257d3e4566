//! WebSocket tunnels (SPEC §13): upgrades over HTTP/1.1 and HTTP/2 extended CONNECT (RFC 8441)
//! through both listeners to a real echo application (`websocket::EchoApp`), the same access
//! decision as any request, the `Origin` check of cookie-authenticated upgrades, re-authorisation
//! that closes a tunnel once its credential ends (logout, sign-out everywhere, a deleted user, an
//! expired token, another replica's logout), idle and lifetime limits, the per-user cap, graceful
//! shutdown, metrics, and a real Chromium page whose socket closes after logout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::store::sled::SledStore;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::harness::*;
use crate::keys::{TestKey, now};
use crate::pg::{Database, eventually};
use crate::signin::{PASSWORD, SESSION_COOKIE, Visitor, user};
use crate::websocket::{
    EchoApp, Refused, Target, Tunnel, Via, h2_connect_answer, open, open_at, opened, refused,
};

/// How long a tunnel may outlive its credential with `proxy.reauth_interval = "1s"`: the
/// interval, and slack for a busy machine.
const CLOSES_WITHIN: Duration = Duration::from_secs(5);

/// The `Origin` of `server.public_url` in the base configuration.
const OWN_ORIGIN: &str = "https://localhost";

/// The base configuration in front of `app`, with `proxy` added to `[proxy]` (TOML lines) and
/// `extra` appended (TOML).
fn config(dir: &std::path::Path, app: &EchoApp, proxy: &str, extra: &str) -> String {
    let base = base_config(dir, &app.url()).replace(
        "default = \"authenticated\"",
        &format!("default = \"authenticated\"\n{proxy}"),
    );
    format!("{base}\n{extra}\n")
}

/// The echo application and gatehouse in front of it (see [`config`]), on a sled store.
async fn start(proxy: &str, extra: &str) -> (EchoApp, Gatehouse) {
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), &app, proxy, extra);
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    (app, gh)
}

/// Gatehouse re-checking credentials every second.
async fn start_reauth(extra: &str) -> (EchoApp, Gatehouse) {
    start("reauth_interval = \"1s\"", extra).await
}

fn basic(name: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{PASSWORD}"))
    )
}

/// A token gatehouse issued for `user` (a user document of the admin API) with these methods.
fn bearer(gh: &Gatehouse, user: &Value, methods: Vec<gatehouse::auth::Method>) -> String {
    let principal = gatehouse::auth::Principal {
        user_id: user["id"].to_string(),
        user_name: user["userName"].as_str().unwrap().to_owned(),
        email: None,
        scopes: vec!["read".into()],
        organizations: vec![],
        methods,
    };
    format!("Bearer {}", gh.app.tokens.issue_access(&principal).unwrap())
}

/// `name` signed in through the sign-in page: the browser and its session cookie.
async fn signed_in(gh: &Gatehouse, name: &str) -> (Visitor, String) {
    let mut visitor = Visitor::new(gh.http_addr());
    let page = visitor.sign_in(name, PASSWORD, "/private/").await;
    assert_eq!(page.status, 303, "{}", page.body);
    let session = visitor.session().expect("a session cookie");
    (visitor, session)
}

/// Asserts what the application received for `user`: identity headers, no credentials, the
/// forwarding headers, and the WebSocket handshake headers.
fn assert_identity(tunnel: &Tunnel, user: &Value, proto: &str) {
    assert_eq!(tunnel.header("x-auth-user").as_deref(), Some("ada"));
    assert_eq!(
        tunnel.header("x-auth-user-id"),
        Some(user["id"].to_string())
    );
    assert!(
        tunnel.header("x-auth-assertion").is_some(),
        "{}",
        tunnel.seen
    );
    assert_eq!(tunnel.header("authorization"), None, "{}", tunnel.seen);
    assert_eq!(
        tunnel.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(tunnel.header("x-forwarded-proto").as_deref(), Some(proto));
    assert_eq!(
        tunnel
            .header("upgrade")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(
        tunnel.header("sec-websocket-version").as_deref(),
        Some("13")
    );
    assert!(tunnel.header("sec-websocket-key").is_some());
}

/// Asserts that text and binary messages come back unchanged, a large one included.
async fn assert_echoes(tunnel: &mut Tunnel) {
    assert_eq!(tunnel.echo("hello").await.unwrap(), "hello");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(tunnel.echo_binary(data.clone()).await.unwrap(), data);
    assert_eq!(tunnel.echo("ünïcode ✓").await.unwrap(), "ünïcode ✓");
}

/// Asserts that `tunnel` still carries messages after `wait`.
async fn assert_still_open_after(tunnel: &mut Tunnel, wait: Duration) {
    tokio::time::sleep(wait).await;
    assert_eq!(
        tunnel.echo("still here").await.as_deref(),
        Ok("still here"),
        "the tunnel closed while its credential was still good"
    );
}

/// Asserts that the tunnel ends within [`CLOSES_WITHIN`] and that the application saw its
/// connection end as well (`closes` in all).
async fn assert_closed(app: &EchoApp, tunnel: &mut Tunnel, closes: usize, what: &str) {
    assert!(
        tunnel.ends_within(CLOSES_WITHIN).await,
        "the tunnel outlived {what}"
    );
    assert!(
        app.reported("close", closes, CLOSES_WITHIN).await,
        "the application's side of the tunnel outlived {what}"
    );
}

#[tokio::test]
async fn websocket_echo_through_http_listener() {
    let (app, gh) = start("", "").await;
    let ada = user(&gh, "ada").await;
    let mut tunnel = opened(
        &gh,
        Via::Http1,
        "/private/chat?room=1",
        &[("authorization", &basic("ada")), ("x-auth-user", "root")],
    )
    .await;
    assert_eq!(tunnel.seen["path"], "/private/chat?room=1");
    assert_identity(&tunnel, &ada, "http");
    assert_echoes(&mut tunnel).await;
    assert_eq!(app.count("open"), 1);
    tunnel.close().await;
    assert!(app.reported("close", 1, CLOSES_WITHIN).await);
}

#[tokio::test]
async fn websocket_echo_through_https_listener() {
    let (app, gh) = start("", "").await;
    let ada = user(&gh, "ada").await;
    let (_, session) = signed_in(&gh, "ada").await;
    let cookie = format!("app=theirs; {SESSION_COOKIE}={session}; theme=dark");
    let mut tunnel = opened(
        &gh,
        Via::Https1,
        "/private/chat",
        &[("cookie", &cookie), ("origin", OWN_ORIGIN)],
    )
    .await;
    assert_identity(&tunnel, &ada, "https");
    assert_eq!(
        tunnel.received("cookie").join("; "),
        "app=theirs; theme=dark",
        "only the application's own cookies go upstream"
    );
    assert_echoes(&mut tunnel).await;
    assert_eq!(app.count("open"), 1);
}

#[tokio::test]
async fn websocket_echo_over_http2_tls() {
    let (app, gh) = start("", "").await;
    let ada = user(&gh, "ada").await;
    let token = bearer(&gh, &ada, vec![gatehouse::auth::Method::Pwd]);
    let mut tunnel = opened(
        &gh,
        Via::H2,
        "/private/chat?room=2",
        &[("authorization", &token)],
    )
    .await;
    // An HTTP/1.1 upgrade upstream, with a key gatehouse made.
    assert_eq!(tunnel.seen["path"], "/private/chat?room=2");
    assert_identity(&tunnel, &ada, "https");
    assert_echoes(&mut tunnel).await;
    // Several tunnels share one HTTP/2 connection's worth of streams independently.
    let mut second = opened(&gh, Via::H2, "/private/b", &[("authorization", &token)]).await;
    assert_eq!(second.echo("two").await.unwrap(), "two");
    assert_eq!(tunnel.echo("one").await.unwrap(), "one");
    assert_eq!(app.count("open"), 2);
}

#[tokio::test]
async fn websocket_echo_over_h2c() {
    let (app, gh) = start("", "").await;
    let ada = user(&gh, "ada").await;
    let mut tunnel = opened(
        &gh,
        Via::H2c,
        "/private/chat",
        &[("authorization", &basic("ada"))],
    )
    .await;
    assert_identity(&tunnel, &ada, "http");
    assert_echoes(&mut tunnel).await;
    assert_eq!(app.count("open"), 1);
}

#[tokio::test]
async fn upgrade_without_credentials_is_refused_with_401() {
    let (app, gh) = start("", "").await;
    user(&gh, "ada").await;
    let wrong = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ada:wrong password")
        )
    };
    for via in [Via::Http1, Via::Https1, Via::H2, Via::H2c] {
        refused(&gh, via, "/private/chat", &[])
            .await
            .assert_problem(401, "unauthenticated");
        refused(&gh, via, "/private/chat", &[("authorization", &wrong)])
            .await
            .assert_problem(401, "unauthenticated");
        // A made-up session cookie is no credential either, from any origin.
        let cookie = format!("{SESSION_COOKIE}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let refusal = refused(
            &gh,
            via,
            "/private/chat",
            &[("cookie", &cookie), ("origin", OWN_ORIGIN)],
        )
        .await;
        assert_eq!(refusal.status, 401, "{via:?}: {refusal:?}");
    }
    assert_eq!(
        app.count("open") + app.count("page"),
        0,
        "a refused upgrade reached upstream"
    );
}

#[tokio::test]
async fn connect_other_than_a_websocket_is_refused_with_405() {
    let (app, gh) = start("", "").await;
    user(&gh, "ada").await;
    let credential = basic("ada");
    let upstream = app.addr.to_string();
    let mut answers = Vec::new();
    for via in [Via::H2, Via::H2c] {
        // A forward proxy's CONNECT, and an extended CONNECT for another protocol.
        let plain =
            h2_connect_answer(&gh, via, &upstream, None, &[("authorization", &credential)]).await;
        answers.push((format!("{via:?} CONNECT {upstream}"), plain));
        let other = h2_connect_answer(
            &gh,
            via,
            "/private/chat",
            Some("connect-udp"),
            &[("authorization", &credential)],
        )
        .await;
        answers.push((format!("{via:?} CONNECT :protocol connect-udp"), other));
    }
    let http1 = raw(
        gh.http_addr(),
        &format!(
            "CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\nAuthorization: {credential}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    answers.push((
        format!("HTTP/1.1 CONNECT {upstream}"),
        Refused {
            status: http1.status,
            content_type: http1.header("content-type").map(str::to_owned),
            body: http1.body.clone(),
        },
    ));
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(_, answer)| {
            answer.status != 405
                || !answer
                    .body
                    .contains("https://gatehouse.dev/problems/method-not-allowed")
        })
        .map(|(what, answer)| format!("{what}: {} {}", answer.status, answer.body))
        .collect();
    assert!(wrong.is_empty(), "not 405:\n{}", wrong.join("\n"));
    assert_eq!(app.count("open") + app.count("page"), 0);
}

#[tokio::test]
async fn public_route_upgrade_works_without_credentials_and_without_identity_headers() {
    let (app, gh) = start("", "").await;
    for via in [Via::Http1, Via::Https1, Via::H2, Via::H2c] {
        let mut tunnel = opened(
            &gh,
            via,
            "/public/feed",
            &[
                ("x-auth-user", "root"),
                ("x-auth-user-id", "1"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await;
        let identity: Vec<&Value> = tunnel.seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str().unwrap().starts_with("x-auth-"))
            .collect();
        assert!(identity.is_empty(), "{via:?}: {identity:?}");
        // Extended as for any request (loopback is a trusted proxy in the base configuration).
        assert_eq!(
            tunnel.header("x-forwarded-for").as_deref(),
            Some("203.0.113.9, 127.0.0.1")
        );
        assert_eq!(tunnel.echo("anyone").await.unwrap(), "anyone");
    }
    assert_eq!(app.count("open"), 4);
}

#[tokio::test]
async fn upgrade_on_an_mfa_route_without_a_second_factor_is_refused_with_403() {
    let (app, gh) = start("", "").await;
    let ada = user(&gh, "ada").await;
    for via in [Via::Http1, Via::H2] {
        refused(
            &gh,
            via,
            "/secure/console",
            &[("authorization", &basic("ada"))],
        )
        .await
        .assert_problem(403, "mfa-required");
    }
    let (_, session) = signed_in(&gh, "ada").await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let refusal = refused(
        &gh,
        Via::Http1,
        "/secure/console",
        &[("cookie", &cookie), ("origin", OWN_ORIGIN)],
    )
    .await;
    assert_eq!(refusal.status, 403, "{refusal:?}");
    assert_eq!(app.count("open") + app.count("page"), 0);

    // With a second factor it opens.
    let token = bearer(
        &gh,
        &ada,
        vec![gatehouse::auth::Method::Pwd, gatehouse::auth::Method::Otp],
    );
    let mut tunnel = opened(
        &gh,
        Via::H2,
        "/secure/console",
        &[("authorization", &token)],
    )
    .await;
    assert_eq!(tunnel.header("x-auth-methods").as_deref(), Some("pwd,otp"));
    assert_eq!(tunnel.echo("root shell").await.unwrap(), "root shell");
}

#[tokio::test]
async fn cookie_authenticated_upgrade_from_other_origin_is_refused() {
    let (app, gh) = start(
        "",
        "[websocket]\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    user(&gh, "ada").await;
    let (_, session) = signed_in(&gh, "ada").await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    for via in [Via::Http1, Via::Https1, Via::H2, Via::H2c] {
        for origin in [
            Some("https://evil.example"),
            Some("http://localhost"),
            Some("https://localhost:8443"),
            Some("https://localhost.evil.example"),
            Some("https://app.example.evil"),
            Some("null"),
            None,
        ] {
            let mut headers = vec![("cookie", cookie.as_str())];
            headers.extend(origin.map(|o| ("origin", o)));
            refused(&gh, via, "/private/chat", &headers)
                .await
                .assert_problem(403, "origin-not-allowed");
        }
    }
    assert_eq!(
        app.count("open") + app.count("page"),
        0,
        "a hijacking attempt reached upstream"
    );
}

#[tokio::test]
async fn cookie_authenticated_upgrade_from_public_url_or_allowed_origin_is_tunnelled() {
    let (app, gh) = start(
        "",
        "[websocket]\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    user(&gh, "ada").await;
    let (_, session) = signed_in(&gh, "ada").await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    for via in [Via::Http1, Via::H2] {
        for origin in [OWN_ORIGIN, "HTTPS://LocalHost", "https://app.example"] {
            let mut tunnel = opened(
                &gh,
                via,
                "/private/chat",
                &[("cookie", &cookie), ("origin", origin)],
            )
            .await;
            assert_eq!(tunnel.header("x-auth-user").as_deref(), Some("ada"));
            assert_eq!(tunnel.echo(origin).await.unwrap(), origin);
            tunnel.close().await;
        }
    }
    assert_eq!(app.count("open"), 6);
}

#[tokio::test]
async fn bearer_upgrades_are_not_origin_checked_and_basic_ones_only_with_an_origin() {
    let (app, gh) = start("", "").await;
    let ada = user(&gh, "ada").await;
    let token = bearer(&gh, &ada, vec![gatehouse::auth::Method::Pwd]);
    let basic = basic("ada");
    for via in [Via::Http1, Via::H2] {
        // A script's token: no browser sends one by itself.
        for origin in [None, Some("https://evil.example")] {
            let mut headers = vec![("authorization", token.as_str())];
            headers.extend(origin.map(|o| ("origin", o)));
            let mut tunnel = opened(&gh, via, "/private/api", &headers).await;
            assert_eq!(tunnel.echo("ok").await.unwrap(), "ok");
            tunnel.close().await;
        }
        // Basic credentials a browser cached are resent on a cross-site handshake, which always
        // has an Origin; without one, the client is no browser.
        for origin in [None, Some(OWN_ORIGIN)] {
            let mut headers = vec![("authorization", basic.as_str())];
            headers.extend(origin.map(|o| ("origin", o)));
            let mut tunnel = opened(&gh, via, "/private/api", &headers).await;
            assert_eq!(tunnel.echo("ok").await.unwrap(), "ok");
            tunnel.close().await;
        }
        refused(
            &gh,
            via,
            "/private/api",
            &[
                ("authorization", &basic),
                ("origin", "https://evil.example"),
            ],
        )
        .await
        .assert_problem(403, "origin-not-allowed");
    }
    assert_eq!(app.count("open"), 8);
}

#[tokio::test]
async fn tunnel_closes_after_logout() {
    let (app, gh) = start_reauth("").await;
    user(&gh, "ada").await;
    let (mut visitor, session) = signed_in(&gh, "ada").await;
    let (_, other_session) = signed_in(&gh, "ada").await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let headers = [("cookie", cookie.as_str()), ("origin", OWN_ORIGIN)];
    let mut http1 = opened(&gh, Via::Http1, "/private/a", &headers).await;
    let mut h2 = opened(&gh, Via::H2, "/private/b", &headers).await;
    // The same user's other session (another browser) is not signed out.
    let other_cookie = format!("{SESSION_COOKIE}={other_session}");
    let mut other = opened(
        &gh,
        Via::Https1,
        "/private/c",
        &[("cookie", &other_cookie), ("origin", OWN_ORIGIN)],
    )
    .await;

    // Three re-checks pass while the session lives.
    assert_still_open_after(&mut http1, Duration::from_millis(3200)).await;
    assert_eq!(h2.echo("h2").await.unwrap(), "h2");

    let page = visitor.sign_out().await;
    assert!(page.status < 400, "{}", page.body);
    assert_closed(&app, &mut http1, 1, "logout").await;
    assert_closed(&app, &mut h2, 2, "logout").await;
    assert_eq!(other.echo("other").await.unwrap(), "other");
    // The ended session opens nothing new.
    refused(&gh, Via::Http1, "/private/a", &headers)
        .await
        .assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn tunnel_closes_after_sign_out_everywhere() {
    let (app, gh) = start_reauth("").await;
    user(&gh, "ada").await;
    user(&gh, "bob").await;
    let (_, session) = signed_in(&gh, "ada").await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let mut ada = opened(
        &gh,
        Via::Https1,
        "/private/a",
        &[("cookie", &cookie), ("origin", OWN_ORIGIN)],
    )
    .await;
    let (_, bobs) = signed_in(&gh, "bob").await;
    let bobs = format!("{SESSION_COOKIE}={bobs}");
    let mut bob = opened(
        &gh,
        Via::H2,
        "/private/b",
        &[("cookie", &bobs), ("origin", OWN_ORIGIN)],
    )
    .await;
    assert_still_open_after(&mut ada, Duration::from_millis(1500)).await;

    let (status, _) = gh
        .admin("DELETE", "/admin/v1/users/ada/sessions", None)
        .await;
    assert_eq!(status, 204);
    assert_closed(&app, &mut ada, 1, "sign-out everywhere").await;
    assert_still_open_after(&mut bob, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn tunnel_closes_after_the_user_is_deleted() {
    let (app, gh) = start_reauth("").await;
    let ada_user = user(&gh, "ada").await;
    user(&gh, "bob").await;
    let token = bearer(&gh, &ada_user, vec![gatehouse::auth::Method::Pwd]);
    let mut basic_tunnel = opened(
        &gh,
        Via::Http1,
        "/private/a",
        &[("authorization", &basic("ada"))],
    )
    .await;
    let mut token_tunnel = opened(&gh, Via::H2c, "/private/b", &[("authorization", &token)]).await;
    let mut bob = opened(
        &gh,
        Via::Http1,
        "/private/c",
        &[("authorization", &basic("bob"))],
    )
    .await;
    assert_still_open_after(&mut basic_tunnel, Duration::from_millis(1500)).await;

    assert_eq!(gh.admin("DELETE", "/admin/v1/users/ada", None).await.0, 204);
    assert_closed(&app, &mut basic_tunnel, 1, "the user").await;
    assert_closed(&app, &mut token_tunnel, 2, "the user").await;
    assert_eq!(bob.echo("bob").await.unwrap(), "bob");
}

/// The `kid` gatehouse publishes for its signing key.
async fn published_kid(gh: &Gatehouse) -> String {
    let jwks: Value = http1_client()
        .get(gh.http_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tunnel_closes_after_the_bearer_tokens_exp() {
    let key = TestKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing.pem");
    std::fs::write(&key_file, key.pem()).unwrap();
    let (app, gh) = start_reauth(&format!(
        "[tokens]\nsigning_key_file = \"{}\"\n",
        key_file.display()
    ))
    .await;
    let ada = user(&gh, "ada").await;
    let kid = published_kid(&gh).await;
    let token = |exp: i64| {
        let claims = json!({
            "iss": gh.app.config.tokens.issuer, "aud": "gatehouse", "sub": ada["id"].to_string(),
            "iat": now() - 120, "nbf": now() - 120, "exp": exp, "jti": uuid::Uuid::new_v4().to_string(),
            "scope": "read", "amr": ["pwd"],
        });
        format!("Bearer {}", key.sign(&kid, &claims))
    };
    // Accepted for three more seconds (past `exp`, within the tolerated clock skew).
    let short = token(now() - gatehouse::tokens::LEEWAY + 3);
    let long = token(now() + 600);
    let opened_at = Instant::now();
    let mut expiring = opened(&gh, Via::H2, "/private/a", &[("authorization", &short)]).await;
    let mut lasting = opened(&gh, Via::Http1, "/private/b", &[("authorization", &long)]).await;
    assert_eq!(expiring.echo("before exp").await.unwrap(), "before exp");
    assert!(
        expiring
            .ends_within(Duration::from_secs(3) + CLOSES_WITHIN)
            .await,
        "the tunnel outlived its token"
    );
    assert!(
        opened_at.elapsed() >= Duration::from_secs(1),
        "closed before the token expired"
    );
    assert!(app.reported("close", 1, CLOSES_WITHIN).await);
    assert_eq!(lasting.echo("after").await.unwrap(), "after");
}

#[tokio::test]
async fn tunnel_on_one_replica_closes_after_logout_on_another() {
    let db = Database::on_shared_server().await;
    let app = EchoApp::start().await;
    let replica = || async {
        let dir = tempfile::tempdir().unwrap();
        let toml = config(dir.path(), &app, "reauth_interval = \"1s\"", "");
        let store: Arc<dyn gatehouse::store::Store> = Arc::new(
            gatehouse::store::postgres::PgStore::connect(&db.url(), 4)
                .await
                .unwrap(),
        );
        Gatehouse::start_toml(
            dir,
            &toml,
            |c| {
                // One master key for both: they share the signing keys it seals.
                c.secrets.master_key = Some(gatehouse::config::Secret::new(
                    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                ));
            },
            |_| store,
        )
        .await
    };
    let a = replica().await;
    let b = replica().await;
    user(&a, "ada").await;
    let (visitor, session) = signed_in(&a, "ada").await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let headers = [("cookie", cookie.as_str()), ("origin", OWN_ORIGIN)];
    let mut on_a = opened(&a, Via::Http1, "/private/a", &headers).await;
    // The session is good on B as well.
    let mut on_b = opened(&b, Via::H2, "/private/b", &headers).await;
    assert_still_open_after(&mut on_a, Duration::from_millis(2200)).await;

    // Signed out through B.
    let mut at_b = Visitor::new(b.http_addr());
    at_b.cookies = visitor.cookies.clone();
    let page = at_b.sign_out().await;
    assert!(page.status < 400, "{}", page.body);
    assert_closed(&app, &mut on_b, 1, "logout on the same replica").await;
    assert_closed(&app, &mut on_a, 2, "logout on another replica").await;
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_idle_timeout() {
    let (app, gh) = start("", "[websocket]\nidle_timeout = \"2s\"\n").await;
    let mut tunnel = opened(&gh, Via::Http1, "/public/a", &[]).await;
    let mut h2 = opened(&gh, Via::H2, "/public/b", &[]).await;
    // Traffic keeps it open past the timeout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(tunnel.echo("tick").await.unwrap(), "tick");
        assert_eq!(h2.echo("tick").await.unwrap(), "tick");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let silent_since = Instant::now();
    assert!(tunnel.ends_within(Duration::from_secs(6)).await);
    assert!(h2.ends_within(Duration::from_secs(2)).await);
    assert!(
        silent_since.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout"
    );
    assert!(app.reported("close", 2, CLOSES_WITHIN).await);
    let metrics = metrics(&gh).await;
    assert_eq!(
        series(&metrics, "gatehouse_tunnels_closed_total{reason=\"idle\"}"),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn tunnel_is_closed_at_max_lifetime() {
    let (app, gh) = start("", "[websocket]\nmax_lifetime = \"3s\"\n").await;
    let opened_at = Instant::now();
    let mut tunnel = opened(&gh, Via::H2c, "/public/a", &[]).await;
    // Busy all along: the lifetime, not idleness, ends it.
    let ended = loop {
        if tunnel.echo("busy").await.is_err() {
            break opened_at.elapsed();
        }
        assert!(
            opened_at.elapsed() < Duration::from_secs(10),
            "the tunnel outlived max_lifetime"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        ended >= Duration::from_millis(2500),
        "closed after {ended:?}"
    );
    assert!(app.reported("close", 1, CLOSES_WITHIN).await);
    let metrics = metrics(&gh).await;
    assert_eq!(
        series(
            &metrics,
            "gatehouse_tunnels_closed_total{reason=\"lifetime\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn too_many_tunnels_per_user_are_refused_with_429_and_a_closed_tunnel_frees_its_slot() {
    let (app, gh) = start("", "[websocket]\nmax_tunnels_per_user = 2\n").await;
    user(&gh, "ada").await;
    user(&gh, "bob").await;
    let ada = [("authorization", basic("ada"))];
    let ada: Vec<(&str, &str)> = ada.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = opened(&gh, Via::Http1, "/private/1", &ada).await;
    let mut second = opened(&gh, Via::H2, "/private/2", &ada).await;
    for via in [Via::Http1, Via::Https1, Via::H2, Via::H2c] {
        refused(&gh, via, "/private/3", &ada)
            .await
            .assert_problem(429, "too-many-tunnels");
    }
    // Another user has slots of their own.
    let mut bob = opened(
        &gh,
        Via::Http1,
        "/private/bob",
        &[("authorization", &basic("bob"))],
    )
    .await;
    assert_eq!(bob.echo("bob").await.unwrap(), "bob");
    assert_eq!(app.count("open"), 3);

    // Closing one frees its slot.
    first.close().await;
    let mut third = None;
    for _ in 0..50 {
        match open(&gh, Via::Http1, "/private/3", &ada).await {
            Ok(tunnel) => {
                third = Some(tunnel);
                break;
            }
            Err(refusal) => assert_eq!(refusal.status, 429, "{refusal:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut third = third.expect("a closed tunnel's slot was never freed");
    assert_eq!(third.echo("3").await.unwrap(), "3");
    assert_eq!(second.echo("2").await.unwrap(), "2");

    // Anonymous tunnels count per client address.
    let _anonymous = [
        opened(&gh, Via::Http1, "/public/1", &[]).await,
        opened(&gh, Via::H2c, "/public/2", &[]).await,
    ];
    refused(&gh, Via::Http1, "/public/3", &[])
        .await
        .assert_problem(429, "too-many-tunnels");
}

#[tokio::test]
async fn graceful_shutdown_keeps_tunnels_open_until_the_grace_ends() {
    let app = EchoApp::start().await;
    let mut gh = Process::start(
        &process_config(&app.url(), "[server]\nshutdown_grace = \"3s\"\n"),
        &[],
    )
    .await;
    let target = Target::http(gh.addrs["listen.http"]);
    let mut http1 = open_at(&target, Via::Http1, "/public/a", &[])
        .await
        .unwrap();
    let mut h2c = open_at(&target, Via::H2c, "/public/b", &[]).await.unwrap();
    gh.signal("TERM");
    let signalled = Instant::now();

    // During the grace period the tunnels carry on; new connections are refused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(http1.echo("draining").await.unwrap(), "draining");
    assert_eq!(h2c.echo("draining").await.unwrap(), "draining");
    assert!(
        tokio::net::TcpStream::connect(target.http.unwrap())
            .await
            .is_err(),
        "new connections are accepted while draining"
    );

    assert!(http1.ends_within(Duration::from_secs(6)).await);
    assert!(h2c.ends_within(Duration::from_secs(1)).await);
    assert!(
        signalled.elapsed() >= Duration::from_millis(2500),
        "closed after {:?}, before the grace ended",
        signalled.elapsed()
    );
    assert!(app.reported("close", 2, CLOSES_WITHIN).await);
    let status = tokio::time::timeout(Duration::from_secs(5), gh.child.wait())
        .await
        .expect("exited after the grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

async fn metrics(gh: &Gatehouse) -> String {
    http1_client()
        .get(gh.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name` (with its labels, as rendered), 0 when absent.
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn tunnel_metrics_count_open_tunnels_bytes_and_closes_by_reason() {
    let (app, gh) = start_reauth("").await;
    user(&gh, "ada").await;
    let (mut visitor, session) = signed_in(&gh, "ada").await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let mut tunnel = opened(
        &gh,
        Via::Http1,
        "/private/a",
        &[("cookie", &cookie), ("origin", OWN_ORIGIN)],
    )
    .await;
    let by_client = opened(&gh, Via::Http1, "/public/b", &[]).await;
    let before = metrics(&gh).await;
    assert_eq!(series(&before, "gatehouse_tunnels_open"), 2.0, "{before}");

    let data = vec![7u8; 50_000];
    assert_eq!(tunnel.echo_binary(data).await.unwrap().len(), 50_000);
    // The client goes away without a close handshake (in a close handshake the application,
    // the server, closes the connection first, RFC 6455 §7.1.1).
    drop(by_client);
    let page = visitor.sign_out().await;
    assert!(page.status < 400, "{}", page.body);
    assert_closed(&app, &mut tunnel, 2, "logout").await;

    let started = Instant::now();
    let after = loop {
        let after = metrics(&gh).await;
        if series(&after, "gatehouse_tunnels_open") == 0.0 || started.elapsed() > CLOSES_WITHIN {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(series(&after, "gatehouse_tunnels_open"), 0.0, "{after}");
    for direction in ["client_to_upstream", "upstream_to_client"] {
        let bytes = series(
            &after,
            &format!("gatehouse_tunnel_bytes_total{{direction=\"{direction}\"}}"),
        );
        assert!(bytes >= 50_000.0, "{direction}: {bytes}\n{after}");
    }
    assert_eq!(
        series(
            &after,
            "gatehouse_tunnels_closed_total{reason=\"credential\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        series(&after, "gatehouse_tunnels_closed_total{reason=\"client\"}"),
        1.0,
        "{after}"
    );
}

#[tokio::test]
async fn chromium_page_websocket_echoes_and_closes_after_logout() {
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The https listener on a port known beforehand, so that `server.public_url` (the origin
    // the page's socket is checked against) names it.
    let port = closed_port().await.port();
    let toml = config(dir.path(), &app, "reauth_interval = \"1s\"", "")
        .replace(
            "public_url = \"https://localhost\"",
            &format!("public_url = \"https://localhost:{port}\""),
        )
        .replace(
            "https = \"127.0.0.1:0\"",
            &format!("https = \"127.0.0.1:{port}\""),
        );
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    user(&gh, "ada").await;

    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/private/echo/page")).await;
    assert!(
        browser.url().await.contains("/auth/login"),
        "{}",
        browser.url().await
    );
    browser.type_into("#user", "ada").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    browser
        .url_once(|url| url.ends_with("/private/echo/page"))
        .await;
    let shown = &browser;
    let echoed = eventually(Duration::from_secs(10), || async move {
        shown.text("#echo").await == "hello from the page"
    })
    .await;
    assert!(
        echoed,
        "the page's socket never echoed: {}",
        browser.source().await
    );
    assert_eq!(app.count("open"), 1);
    // What the application received, as the page shows it: the user, and no session cookie.
    let handshake: Value = serde_json::from_str(&browser.text("#handshake").await).unwrap();
    let received = |name: &str| -> Vec<String> {
        handshake["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(received("x-auth-user"), ["ada"], "{handshake}");
    assert!(
        received("cookie")
            .iter()
            .all(|c| !c.contains(SESSION_COOKIE)),
        "{handshake}"
    );
    assert_eq!(received("origin"), [format!("https://localhost:{port}")]);

    // Signed out elsewhere (another tab): the page, still open, sees its socket close.
    let session = browser.cookie(SESSION_COOKIE).await.expect("a session");
    let mut other_tab = Visitor::new(gh.http_addr());
    other_tab.cookies.insert(SESSION_COOKIE.into(), session);
    let page = other_tab.sign_out().await;
    assert!(page.status < 400, "{}", page.body);
    let closed = eventually(CLOSES_WITHIN, || async move {
        shown.text("#state").await == "closed"
    })
    .await;
    assert!(
        closed,
        "the page's socket outlived the logout: {}",
        browser.source().await
    );
    assert!(app.reported("close", 1, CLOSES_WITHIN).await);
    browser.quit().await;
}
