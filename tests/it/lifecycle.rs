//! Account lifecycle (SPEC §13): disabling and enabling users, revoking their tokens. A disabled
//! user is refused by every credential (Basic, the sign-in page, gatehouse's and trusted issuers'
//! Bearer tokens, ApplicationToken-bound calls, WS access keys, session cookies, forward-auth)
//! exactly as an invalid credential is, their sessions end, and their tunnels close; a revocation
//! refuses every token issued before it and none issued after, on every replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gatehouse::store::postgres::PgStore;
use gatehouse::store::sled::SledStore;
use gatehouse::store::{NewUser, Store, WsKey};
use serde_json::{Value, json};

use crate::harness::*;
use crate::keys::{TestKey, now};
use crate::mfa::totp;
use crate::pg::Database;
use crate::signin::{PASSWORD, SESSION_COOKIE, Visitor, enroll_totp, user};
use crate::websocket::{EchoApp, Via, opened};

/// How long a tunnel may outlive its credential with `proxy.reauth_interval = "1s"`.
const CLOSES_WITHIN: Duration = Duration::from_secs(5);

fn basic(name: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
    )
}

/// A token gatehouse issued for `user` (an admin API user document), with `pwd` as its method.
fn bearer(gh: &Gatehouse, user: &Value) -> String {
    let principal = gatehouse::auth::Principal {
        user_id: user["id"].to_string(),
        user_name: user["userName"].as_str().unwrap().to_owned(),
        email: None,
        scopes: vec!["read".into()],
        organizations: vec![],
        methods: vec![gatehouse::auth::Method::Pwd],
    };
    format!("Bearer {}", gh.app.tokens.issue_access(&principal).unwrap())
}

/// `GET path` on the plaintext listener with these headers: status and body.
async fn get(gh: &Gatehouse, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http1_client().get(gh.http_url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The status and problem `type` a request gets: what a client can tell refusals apart by.
async fn refusal(gh: &Gatehouse, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, body) = get(gh, path, headers).await;
    let kind = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or(body);
    (status, kind)
}

async fn set_disabled(gh: &Gatehouse, name: &str, disabled: bool) -> Value {
    let (status, user) = gh
        .admin(
            "PATCH",
            &format!("/admin/v1/users/{name}"),
            Some(json!({ "disabled": disabled })),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["disabled"], json!(disabled), "{user}");
    assert_eq!(user["isValid"], json!(!disabled), "{user}");
    user
}

async fn revoke(gh: &Gatehouse, name: &str) -> u16 {
    gh.admin(
        "POST",
        &format!("/admin/v1/users/{name}/tokens/revoke"),
        None,
    )
    .await
    .0
}

/// A WsAccessKey of `name` for FileId 12 (granted here).
async fn ws_key(gh: &Gatehouse, name: &str) -> String {
    let (status, _) = gh
        .admin(
            "POST",
            "/admin/v1/files/12/members",
            Some(json!({ "userName": name })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, key) = gh
        .admin(
            "POST",
            "/admin/v1/ws-keys",
            Some(json!({ "userName": name, "fileId": 12 })),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

/// The status of a WS family opt-in made with `key`.
async fn ws_opt_in(gh: &Gatehouse, key: &str) -> u16 {
    http1_client()
        .post(gh.http_url(&format!("/User/2fa-opt-in?FileId=12&WsAccessKey={key}")))
        .header("content-type", "application/json")
        .body(json!({"MobileNumber": "+14155550123"}).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `name` signed in through the sign-in page: the session cookie's value.
async fn signed_in(gh: &Gatehouse, name: &str) -> String {
    let mut visitor = Visitor::new(gh.http_addr());
    let page = visitor.sign_in(name, PASSWORD, "/private/").await;
    assert_eq!(page.status, 303, "{}", page.body);
    visitor.session().expect("a session cookie")
}

/// The forward-auth decision for a request to `/private/doc` carrying `headers`.
async fn verify(gh: &Gatehouse, headers: &[(&str, &str)]) -> u16 {
    let mut request = http1_client()
        .get(gh.http_url("/auth/verify"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/private/doc")
        .header("x-forwarded-host", "app.example");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn disabled_user_is_refused_by_every_credential_like_an_invalid_one_until_enabled() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let ada = user(&gh, "ada").await;
    user(&gh, "bob").await;
    let (status, app) = gh
        .admin(
            "POST",
            "/admin/v1/applications",
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(status, 201);
    let app_token = app["token"].as_str().unwrap().to_owned();
    let key = ws_key(&gh, "ada").await;
    let token = bearer(&gh, &ada);
    let cookie = format!("{SESSION_COOKIE}={}", signed_in(&gh, "ada").await);
    let ada_basic = basic("ada", PASSWORD);
    let credentials: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("basic", vec![("authorization", &ada_basic)]),
        ("bearer", vec![("authorization", &token)]),
        (
            "bearer with application token",
            vec![("authorization", &token), ("applicationtoken", &app_token)],
        ),
        ("session cookie", vec![("cookie", &cookie)]),
    ];
    for (what, headers) in &credentials {
        assert_eq!(get(&gh, "/private/x", headers).await.0, 200, "{what}");
        assert_eq!(verify(&gh, headers).await, 200, "{what}");
    }
    assert_eq!(ws_opt_in(&gh, &key).await, 200);

    let disabled = set_disabled(&gh, "ada", true).await;
    assert_eq!(disabled["userName"], "ada");
    assert_eq!(
        gh.admin("GET", "/admin/v1/users/ada", None).await.1["disabled"],
        true
    );

    // Every credential is refused, and the refusal is the one a wrong credential gets.
    let wrong = basic("ada", "not the password");
    let invalid = refusal(&gh, "/private/x", &[("authorization", &wrong)]).await;
    assert_eq!(invalid.0, 401);
    for (what, headers) in &credentials {
        assert_eq!(refusal(&gh, "/private/x", headers).await, invalid, "{what}");
        assert_eq!(verify(&gh, headers).await, 401, "{what}");
    }
    assert_eq!(
        ws_opt_in(&gh, &key).await,
        ws_opt_in(&gh, "ghk_unknown").await
    );
    // The sign-in page answers a disabled user's right password as it answers a wrong one.
    let mut visitor = Visitor::new(gh.http_addr());
    let right = visitor.sign_in("ada", PASSWORD, "/private/").await;
    let mut other = Visitor::new(gh.http_addr());
    let wrong_page = other.sign_in("ada", "not the password", "/private/").await;
    assert_eq!(right.status, wrong_page.status);
    assert!(visitor.session().is_none());
    // Gatehouse's own APIs refuse the user as well, as they refuse a wrong password.
    let nexus = |authorization: String| {
        http1_client()
            .post(gh.http_url("/v1/me/verify-otp"))
            .header("authorization", authorization)
            .json(&json!({"otp": "000000"}))
            .send()
    };
    let refused = nexus(ada_basic.clone()).await.unwrap();
    let wrong_answer = nexus(wrong.clone()).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.status(), wrong_answer.status());
    // Others are not affected.
    let bob = basic("bob", PASSWORD);
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &bob)]).await.0,
        200
    );

    // Enabled again: the credentials work, except the session, which ended with the disable.
    set_disabled(&gh, "ada", false).await;
    for (what, headers) in &credentials[..3] {
        assert_eq!(get(&gh, "/private/x", headers).await.0, 200, "{what}");
    }
    assert_eq!(
        get(&gh, "/private/x", &[("cookie", &cookie)]).await.0,
        401,
        "a session ended by the disable came back"
    );
    assert_eq!(ws_opt_in(&gh, &key).await, 200);
    let fresh = format!("{SESSION_COOKIE}={}", signed_in(&gh, "ada").await);
    assert_eq!(get(&gh, "/private/x", &[("cookie", &fresh)]).await.0, 200);

    let events = gh.audit_events(50).await;
    assert!(events.contains(&"user.disabled".to_owned()), "{events:?}");
    assert!(events.contains(&"user.enabled".to_owned()), "{events:?}");
    // `isValid` stays read-only, and `disabled` is not taken at creation.
    let (status, _) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"isValid": false})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = gh
        .admin(
            "POST",
            "/admin/v1/users",
            Some(json!({"userName": "carol", "disabled": true})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        gh.admin(
            "PATCH",
            "/admin/v1/users/nobody",
            Some(json!({"disabled": true}))
        )
        .await
        .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_ins_racing_a_disable_leave_no_session_that_enabling_would_revive() {
    let upstream = Upstream::start().await;
    let gh = Arc::new(Gatehouse::start(&upstream).await);
    user(&gh, "ada").await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let gh = gh.clone();
        tasks.push(tokio::spawn(async move {
            let mut visitor = Visitor::new(gh.http_addr());
            visitor.sign_in("ada", PASSWORD, "/private/").await;
            visitor.session()
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    set_disabled(&gh, "ada", true).await;
    let mut cookies = Vec::new();
    for task in tasks {
        cookies.extend(task.await.unwrap());
    }
    set_disabled(&gh, "ada", false).await;
    for cookie in cookies {
        let cookie = format!("{SESSION_COOKIE}={cookie}");
        assert_eq!(
            get(&gh, "/private/x", &[("cookie", &cookie)]).await.0,
            401,
            "a session started around the disable outlived it"
        );
    }
}

#[tokio::test]
async fn revoked_tokens_are_refused_and_tokens_issued_right_after_are_accepted() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let ada = user(&gh, "ada").await;
    let bob = user(&gh, "bob").await;
    let secret = enroll_totp(&gh, "ada").await;
    let key = ws_key(&gh, "ada").await;
    let old = bearer(&gh, &ada);
    let bobs = bearer(&gh, &bob);
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &old)]).await.0,
        200
    );
    let cookie = format!("{SESSION_COOKIE}={}", signed_in(&gh, "ada").await);

    assert_eq!(revoke(&gh, "ada").await, 204);
    let invalid = refusal(
        &gh,
        "/private/x",
        &[("authorization", "Bearer not.a.token")],
    )
    .await;
    assert_eq!(
        refusal(&gh, "/private/x", &[("authorization", &old)]).await,
        invalid
    );
    // A token issued right after the revocation, within its second most likely, is accepted.
    let granted: Value = http1_client()
        .post(gh.http_url("/v1/me/verify-otp"))
        .basic_auth("ada", Some(PASSWORD))
        .json(&json!({"otp": totp(&secret, 1)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = format!("Bearer {}", granted["accessToken"].as_str().unwrap());
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &new)]).await.0,
        200
    );
    // The old token cannot be used to carry its methods into a step-up either.
    let response = http1_client()
        .post(gh.http_url("/v1/me/verify-otp"))
        .basic_auth("ada", Some(PASSWORD))
        .json(&json!({"otp": totp(&secret, 2), "accessToken": old.trim_start_matches("Bearer ")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "invalid-access-token");
    // WS access keys are per-user tokens: gone. Passwords and sessions are not tokens.
    assert_eq!(
        ws_opt_in(&gh, &key).await,
        ws_opt_in(&gh, "ghk_unknown").await
    );
    let ada_basic = basic("ada", PASSWORD);
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &ada_basic)])
            .await
            .0,
        200
    );
    assert_eq!(get(&gh, "/private/x", &[("cookie", &cookie)]).await.0, 200);
    // Others' tokens are not affected.
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &bobs)]).await.0,
        200
    );
    assert_eq!(revoke(&gh, "nobody").await, 404);
    assert!(
        gh.audit_events(20)
            .await
            .contains(&"tokens.revoked".to_owned())
    );
}

/// A JWKS endpoint for a trusted issuer.
async fn jwks_server(jwks: Value) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = jwks.to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            gatehouse::body::full(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn trusted_issuer_tokens_are_revoked_by_their_iat_and_refused_while_disabled() {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let jwks = jwks_server(json!({"keys": [key.jwk("k1")]})).await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth
            .trusted_issuers
            .push(gatehouse::config::TrustedIssuer {
                issuer: "https://idp.test".into(),
                jwks_url: format!("http://{jwks}/jwks").parse().unwrap(),
                audience: "gatehouse-app".into(),
                algorithms: vec!["EdDSA".into()],
                max_new_users: 100,
                new_users_window: Duration::from_secs(3600),
            });
    })
    .await;
    let token = |iat: Option<i64>| {
        let mut claims = json!({
            "iss": "https://idp.test", "aud": "gatehouse-app", "sub": "ext-1",
            "exp": now() + 300, "preferred_username": "erin", "scope": "read",
        });
        if let Some(iat) = iat {
            claims["iat"] = json!(iat);
        }
        format!("Bearer {}", key.sign("k1", &claims))
    };
    let before = token(Some(now() - 10));
    let without_iat = token(None);
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &before)])
            .await
            .0,
        200
    );
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &without_iat)])
            .await
            .0,
        200
    );

    set_disabled(&gh, "erin", true).await;
    let fresh = token(Some(now()));
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &fresh)]).await.0,
        401
    );
    set_disabled(&gh, "erin", false).await;
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &fresh)]).await.0,
        200
    );

    assert_eq!(revoke(&gh, "erin").await, 204);
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &before)])
            .await
            .0,
        401
    );
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &without_iat)])
            .await
            .0,
        401
    );
    // The issuer's next token, issued after the revocation's second, is accepted.
    let after = token(Some(now() + 1));
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &after)]).await.0,
        200
    );
}

#[tokio::test]
async fn tunnels_of_a_disabled_user_or_a_revoked_token_close_and_others_stay_open() {
    let app = EchoApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_config(dir.path(), &app.url()).replace(
        "default = \"authenticated\"",
        "default = \"authenticated\"\nreauth_interval = \"1s\"",
    );
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    let ada = user(&gh, "ada").await;
    user(&gh, "bob").await;
    let ada_basic = basic("ada", PASSWORD);
    let bob_basic = basic("bob", PASSWORD);
    let token = bearer(&gh, &ada);
    let mut by_token = opened(&gh, Via::Http1, "/private/a", &[("authorization", &token)]).await;
    let mut by_password = opened(
        &gh,
        Via::H2c,
        "/private/b",
        &[("authorization", &ada_basic)],
    )
    .await;
    let mut bobs = opened(
        &gh,
        Via::Http1,
        "/private/c",
        &[("authorization", &bob_basic)],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(by_token.echo("a").await.as_deref(), Ok("a"));

    // A revocation ends the token's tunnel, not the password's.
    assert_eq!(revoke(&gh, "ada").await, 204);
    assert!(
        by_token.ends_within(CLOSES_WITHIN).await,
        "outlived the revocation"
    );
    assert!(app.reported("close", 1, CLOSES_WITHIN).await);
    assert_eq!(by_password.echo("b").await.as_deref(), Ok("b"));

    // Disabling ends the rest of the user's tunnels.
    set_disabled(&gh, "ada", true).await;
    assert!(
        by_password.ends_within(CLOSES_WITHIN).await,
        "outlived the disable"
    );
    assert!(app.reported("close", 2, CLOSES_WITHIN).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bobs.echo("c").await.as_deref(), Ok("c"));
}

/// Two in-process replicas on one PostgreSQL database.
async fn replicas(upstream: &Upstream, db: &Database) -> (Gatehouse, Gatehouse) {
    let replica = || async {
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url(), 4).await.unwrap());
        Gatehouse::start_store(
            &upstream.url(),
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
    (a, b)
}

#[tokio::test]
async fn disable_and_revoke_on_one_replica_are_refused_on_the_other_at_once() {
    let db = Database::on_shared_server().await;
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &db).await;
    let ada = user(&a, "ada").await;
    let ada_basic = basic("ada", PASSWORD);
    let token = bearer(&a, &ada);
    let cookie = format!("{SESSION_COOKIE}={}", signed_in(&a, "ada").await);
    for headers in [
        [("authorization", ada_basic.as_str())],
        [("authorization", token.as_str())],
        [("cookie", cookie.as_str())],
    ] {
        assert_eq!(get(&b, "/private/x", &headers).await.0, 200);
    }

    set_disabled(&a, "ada", true).await;
    for headers in [
        [("authorization", ada_basic.as_str())],
        [("authorization", token.as_str())],
        [("cookie", cookie.as_str())],
    ] {
        assert_eq!(get(&b, "/private/x", &headers).await.0, 401);
    }
    set_disabled(&b, "ada", false).await;
    assert_eq!(
        get(&a, "/private/x", &[("authorization", &token)]).await.0,
        200
    );

    assert_eq!(revoke(&a, "ada").await, 204);
    assert_eq!(
        get(&b, "/private/x", &[("authorization", &token)]).await.0,
        401
    );
    assert_eq!(
        get(&b, "/private/x", &[("authorization", &ada_basic)])
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_disables_enables_and_revocations_lose_no_change() {
    let db = Database::on_shared_server().await;
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &db).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let ada = user(&a, "ada").await;
    let token = bearer(&a, &ada);
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let gh = if i % 2 == 0 { a.clone() } else { b.clone() };
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let status = if i % 4 == 3 {
                revoke(&gh, "ada").await
            } else {
                gh.admin(
                    "PATCH",
                    "/admin/v1/users/ada",
                    Some(json!({"disabled": i % 4 == 0, "nickName": format!("n{i}")})),
                )
                .await
                .0
            };
            assert!(status == 200 || status == 204, "{status}");
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 8);
    // The revocations stand whatever the order: the old token stays refused once enabled.
    set_disabled(&a, "ada", false).await;
    assert_eq!(
        get(&b, "/private/x", &[("authorization", &token)]).await.0,
        401
    );
    let ada_basic = basic("ada", PASSWORD);
    assert_eq!(
        get(&b, "/private/x", &[("authorization", &ada_basic)])
            .await
            .0,
        200
    );
}

/// What the store keeps for a revocation and a disable, on `store` (read back through `twin`,
/// another handle on the same state).
async fn revocation_is_stored(store: Arc<dyn Store>, twin: Arc<dyn Store>) {
    let ada = store
        .create_user(
            NewUser {
                user_name: "ada".into(),
                ..Default::default()
            },
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(ada.tokens_not_before, 0);
    assert!(ada.accepts_token_issued(1));
    let bob = store
        .create_user(
            NewUser {
                user_name: "bob".into(),
                ..Default::default()
            },
            1_000,
        )
        .await
        .unwrap();
    for (user, hash) in [(ada.id, "k1"), (ada.id, "k2"), (bob.id, "k3")] {
        store
            .create_ws_key(WsKey {
                v: 1,
                key_hash: hash.into(),
                user_id: user,
                file_id: 12,
                created: "2026-01-01T00:00:00Z".into(),
            })
            .await
            .unwrap();
    }
    store
        .modify_user("ADA", 2_000, &|u| u.revoke_tokens(2_000))
        .await
        .unwrap();
    // A later revocation from a replica whose clock lags does not move the cut-off back, and
    // still refuses what was issued since the first (at most at its cut-off).
    store
        .modify_user("ada", 1_500, &|u| u.revoke_tokens(1_500))
        .await
        .unwrap();
    let seen = twin.user_by_name("ada").await.unwrap().unwrap();
    assert_eq!(seen.tokens_not_before, 2_002);
    assert!(!seen.accepts_token_issued(2_001));
    assert!(seen.accepts_token_issued(seen.token_iat(2_000)));
    assert_eq!(
        twin.shared_user_by_id(ada.id)
            .await
            .unwrap()
            .unwrap()
            .tokens_not_before,
        2_002
    );
    assert_eq!(store.delete_user_ws_keys(ada.id).await.unwrap(), 2);
    assert!(twin.ws_key("k1").await.unwrap().is_none());
    assert!(twin.ws_key("k2").await.unwrap().is_none());
    assert!(twin.ws_key("k3").await.unwrap().is_some());
    assert_eq!(store.delete_user_ws_keys(ada.id).await.unwrap(), 0);

    let patch = gatehouse::store::UserPatch {
        is_valid: Some(false),
        ..Default::default()
    };
    store.update_user("ada", patch, 3_000).await.unwrap();
    let seen = twin.user_by_id(ada.id).await.unwrap().unwrap();
    assert!(seen.disabled());
    assert_eq!(seen.tokens_not_before, 2_002, "a disable keeps the cut-off");
    assert!(!twin.user_by_id(bob.id).await.unwrap().unwrap().disabled());
}

#[tokio::test]
async fn revocation_and_disable_are_stored_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    revocation_is_stored(store.clone(), store).await;
}

#[tokio::test]
async fn revocation_and_disable_are_stored_on_postgres() {
    let db = Database::on_shared_server().await;
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url(), 4).await.unwrap());
    let twin: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url(), 4).await.unwrap());
    revocation_is_stored(store, twin).await;
}

#[tokio::test]
async fn a_user_record_written_before_revocations_existed_reads_with_no_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let ada = store
        .create_user(
            NewUser {
                user_name: "ada".into(),
                ..Default::default()
            },
            1_000,
        )
        .await
        .unwrap();
    let mut old = serde_json::to_value(&ada).unwrap();
    old.as_object_mut().unwrap().remove("tokens_not_before");
    let read: gatehouse::store::User = serde_json::from_value(old).unwrap();
    assert_eq!(read.tokens_not_before, 0);
    assert!(read.accepts_token_issued(0));
}

/// Reads `response` until what arrived so far contains `want`.
async fn read_until(response: &mut reqwest::Response, got: &mut String, want: &str) {
    while !got.contains(want) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("{want:?} did not arrive within 10 s; got {got:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before {want:?}; got {got:?}"));
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// Waits for `response` to end; whether it ended within [`CLOSES_WITHIN`], and cut off rather
/// than complete.
async fn aborted_within_bound(response: &mut reqwest::Response) -> bool {
    let started = std::time::Instant::now();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => continue,
            Ok(end) => break end,
        }
    };
    started.elapsed() < CLOSES_WITHIN && end.is_err()
}

#[tokio::test]
async fn event_streams_of_a_disabled_user_or_a_revoked_token_are_cut_off() {
    let upstream = crate::python_peer::PythonPeer::start("sse_upstream.py").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_config(dir.path(), &upstream.url())
        .replace("[proxy]\n", "[proxy]\nreauth_interval = \"1s\"\n");
    let gh = Gatehouse::start_toml(
        dir,
        &toml,
        |_| {},
        |c| Arc::new(SledStore::open(&c.store.path).unwrap()),
    )
    .await;
    let ada = user(&gh, "ada").await;
    user(&gh, "bob").await;
    let stream = |authorization: String| {
        h2c_client()
            .get(gh.http_url("/private/ticks"))
            .header("accept", "text/event-stream")
            .header("authorization", authorization)
            .send()
    };
    let mut by_token = stream(bearer(&gh, &ada)).await.unwrap();
    let mut by_password = stream(basic("ada", PASSWORD)).await.unwrap();
    let mut bobs = stream(basic("bob", PASSWORD)).await.unwrap();
    for response in [&by_token, &by_password, &bobs] {
        assert_eq!(response.status(), 200);
    }
    let (mut a, mut b, mut c) = (String::new(), String::new(), String::new());
    // Ticks come 0.2 s apart: the streams outlive a re-authorisation untouched.
    read_until(&mut by_token, &mut a, "data: tick 7\n\n").await;
    read_until(&mut by_password, &mut b, "data: tick 7\n\n").await;

    assert_eq!(revoke(&gh, "ada").await, 204);
    assert!(
        aborted_within_bound(&mut by_token).await,
        "the token's stream outlived the revocation"
    );
    read_until(&mut by_password, &mut b, "data: tick 20\n\n").await;

    set_disabled(&gh, "ada", true).await;
    assert!(
        aborted_within_bound(&mut by_password).await,
        "the stream outlived the disable"
    );
    read_until(&mut bobs, &mut c, "data: tick 40\n\n").await;
}

/// Runs `gatehouse admin …` against `gh`'s admin listener: whether it succeeded, and its output.
async fn cli(gh: &Gatehouse, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(binary())
        .arg("admin")
        .args(["--url", &gh.admin_url("")])
        .args(args)
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn the_cli_disables_enables_and_revokes_tokens() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let ada = user(&gh, "ada").await;
    let token = bearer(&gh, &ada);
    let ada_basic = basic("ada", PASSWORD);

    let (ok, out) = cli(&gh, &["user", "disable", "ada"]).await;
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["disabled"], true);
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &ada_basic)])
            .await
            .0,
        401
    );
    let (ok, out) = cli(&gh, &["user", "enable", "ada"]).await;
    assert!(ok, "{out}");
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &token)]).await.0,
        200
    );
    let (ok, out) = cli(&gh, &["user", "revoke-tokens", "ada"]).await;
    assert!(ok, "{out}");
    assert_eq!(
        get(&gh, "/private/x", &[("authorization", &token)]).await.0,
        401
    );
    let (ok, out) = cli(&gh, &["user", "revoke-tokens", "nobody"]).await;
    assert!(!ok);
    assert!(out.contains("404"), "{out}");
}
