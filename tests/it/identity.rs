//! Credentials, route decisions and identity headers (SECURITY.md promises 1, 2, 6, 10).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::json;

use crate::harness::*;
use crate::keys::{self, TestKey};

const PASSWORD: &str = "correct horse battery";

/// A gatehouse whose signing key the test knows, with `/ops/` needing the `ops` scope.
async fn start(
    upstream: &Upstream,
    key: &TestKey,
    adjust: impl FnOnce(&mut gatehouse::config::Config),
) -> Gatehouse {
    let pem = key.pem();
    Gatehouse::start_with(upstream, |c| {
        // Beside the store, in the instance's own temporary directory.
        let key_file = c.store.path.with_file_name("signing.pem");
        std::fs::write(&key_file, &pem).unwrap();
        c.tokens.signing_key_file = Some(key_file);
        c.routes.push(gatehouse::config::AccessRule {
            path_prefix: "/ops/".into(),
            access: gatehouse::config::Access::Authenticated,
            scopes: vec!["ops".into()],
            ..Default::default()
        });
        adjust(c);
    })
    .await
}

/// The `kid` gatehouse publishes for its signing key.
async fn published_kid(gh: &Gatehouse) -> String {
    let jwks: JwkSet = http1_client()
        .get(gh.http_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks.keys[0].common.key_id.clone().unwrap()
}

fn claims(gh: &Gatehouse, sub: &str, amr: &[&str], scope: &str) -> serde_json::Value {
    let now = keys::now();
    json!({
        "iss": gh.app.config.tokens.issuer, "aud": "gatehouse", "sub": sub,
        "iat": now, "nbf": now, "exp": now + 300, "jti": "t1", "scope": scope, "amr": amr,
    })
}

async fn get(gh: &Gatehouse, path: &str, headers: &[(&str, String)]) -> (u16, String) {
    let mut request = http1_client().get(gh.http_url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_credentials_are_forwarded_as_identity_headers() {
    let upstream = Upstream::start().await;
    let gh = start(&upstream, &TestKey::generate(), |_| {}).await;
    let user = gh
        .create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com", "scopes": ["read"]}))
        .await;
    for _ in 0..2 {
        let (status, _) = get(
            &gh,
            "/private/x",
            &[
                ("authorization", basic("ada", PASSWORD)),
                ("x-auth-user", "root".into()),
            ],
        )
        .await;
        assert_eq!(status, 200);
    }
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(
        seen.headers["x-auth-user-id"],
        user["id"].to_string().as_str()
    );
    assert_eq!(seen.headers["x-auth-email"], "ada@example.com");
    assert_eq!(seen.headers["x-auth-scopes"], "read");
    assert_eq!(seen.headers["x-auth-methods"], "pwd");
    assert_eq!(seen.headers.get_all("x-auth-user").iter().count(), 1);
    assert!(
        !seen.headers.contains_key("authorization"),
        "the password travelled upstream"
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_identical_401_bodies() {
    let upstream = Upstream::start().await;
    let gh = start(&upstream, &TestKey::generate(), |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let same_id = ("x-request-id", "same-id".to_owned());
    let (s1, wrong) = get(
        &gh,
        "/private/x",
        &[
            ("authorization", basic("ada", "wrong password")),
            same_id.clone(),
        ],
    )
    .await;
    let (s2, unknown) = get(
        &gh,
        "/private/x",
        &[("authorization", basic("nobody", PASSWORD)), same_id],
    )
    .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong, unknown);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn changed_password_stops_working_at_once() {
    let upstream = Upstream::start().await;
    let gh = start(&upstream, &TestKey::generate(), |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let old = ("authorization", basic("ada", PASSWORD));
    assert_eq!(
        get(&gh, "/private/x", std::slice::from_ref(&old)).await.0,
        200
    );
    let (status, _) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"password": "a new long password"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(get(&gh, "/private/x", &[old]).await.0, 401);
    let new = ("authorization", basic("ada", "a new long password"));
    assert_eq!(get(&gh, "/private/x", &[new]).await.0, 200);
}

#[tokio::test]
async fn gatehouse_issued_token_is_accepted() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let user = gh
        .create_user(json!({"userName": "ada", "scopes": ["read"]}))
        .await;
    let principal = gatehouse::auth::Principal {
        user_id: user["id"].to_string(),
        user_name: "ada".into(),
        email: None,
        scopes: vec!["read".into()],
        organizations: vec![],
        methods: vec![gatehouse::auth::Method::Pwd, gatehouse::auth::Method::Otp],
    };
    let token = gh.app.tokens.issue_access(&principal).unwrap();
    let (status, _) = get(
        &gh,
        "/secure/x",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().headers["x-auth-methods"], "pwd,otp");
}

#[tokio::test]
async fn forged_and_invalid_bearer_tokens_are_refused() {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let gh = start(&upstream, &key, |_| {}).await;
    let user = gh.create_user(json!({"userName": "ada"})).await;
    let sub = user["id"].to_string();
    let kid = published_kid(&gh).await;
    let good = claims(&gh, &sub, &["pwd"], "");
    // The test's key is gatehouse's: a correctly signed token passes, so each refusal below is
    // down to the one thing that is wrong with it.
    let (status, _) = get(
        &gh,
        "/private/x",
        &[("authorization", format!("Bearer {}", key.sign(&kid, &good)))],
    )
    .await;
    assert_eq!(status, 200);

    let other = TestKey::generate();
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        change(&mut c);
        key.sign(&kid, &c)
    };
    let now = keys::now();
    let corpus = [
        (
            "alg none",
            keys::unsigned(&json!({"alg": "none", "kid": kid}), &good),
        ),
        (
            "alg none without kid",
            keys::unsigned(&json!({"alg": "none"}), &good),
        ),
        (
            "HS256 with the public key",
            keys::hs256(&kid, &key.public, &good),
        ),
        ("unknown kid", other.sign("unknown-kid", &good)),
        ("another key under our kid", other.sign(&kid, &good)),
        (
            "kid with path characters",
            key.sign("../../../dev/null", &good),
        ),
        ("expired", with(&|c| c["exp"] = json!(now - 120))),
        ("future nbf", with(&|c| c["nbf"] = json!(now + 600))),
        ("wrong aud", with(&|c| c["aud"] = json!("someone-else"))),
        (
            "wrong iss",
            with(&|c| c["iss"] = json!("https://evil.example")),
        ),
        (
            "missing exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "missing nbf",
            with(&|c| {
                c.as_object_mut().unwrap().remove("nbf");
            }),
        ),
        ("unknown user", with(&|c| c["sub"] = json!("999999"))),
        ("truncated signature", {
            let t = key.sign(&kid, &good);
            t[..t.len() - 4].to_owned()
        }),
        ("not a JWT", "abc".to_owned()),
    ];
    for (name, token) in corpus {
        let (status, body) = get(
            &gh,
            "/private/x",
            &[("authorization", format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(status, 401, "{name}: {body}");
    }
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn malformed_authorization_is_400() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let (status, _) = get(
        &gh,
        "/private/x",
        &[("authorization", "Bearer a.b.c, Basic YTpi".into())],
    )
    .await;
    assert_eq!(status, 400);
    let response = raw_get(
        gh.http_addr(),
        "/private/x",
        &["Authorization: Bearer a.b.c", "Authorization: Basic YTpi"],
    )
    .await;
    assert_eq!(response.status, 400);
    assert_problem(
        400,
        response.header("content-type"),
        &response.body,
        "invalid-credentials",
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn missing_scope_or_second_factor_is_403() {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let gh = start(&upstream, &key, |_| {}).await;
    let user = gh
        .create_user(json!({"userName": "ada", "password": PASSWORD, "scopes": ["read"]}))
        .await;
    let pwd = ("authorization", basic("ada", PASSWORD));
    let response = http1_client()
        .get(gh.http_url("/secure/x"))
        .header("authorization", basic("ada", PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_problem(
        403,
        Some(&content_type),
        &response.text().await.unwrap(),
        "mfa-required",
    );
    let (status, body) = get(&gh, "/ops/x", std::slice::from_ref(&pwd)).await;
    assert_eq!(status, 403);
    assert!(body.contains("insufficient-scope"), "{body}");
    assert_eq!(upstream.hits(), 0);

    // With the scope and with a second factor, both pass.
    gh.admin(
        "PATCH",
        "/admin/v1/users/ada",
        Some(json!({"scopes": ["read", "ops"]})),
    )
    .await;
    assert_eq!(get(&gh, "/ops/x", &[pwd]).await.0, 200);
    let kid = published_kid(&gh).await;
    let mfa = key.sign(
        &kid,
        &claims(&gh, &user["id"].to_string(), &["pwd", "otp"], "read"),
    );
    assert_eq!(
        get(
            &gh,
            "/secure/x",
            &[("authorization", format!("Bearer {mfa}"))]
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn required_application_token_must_accompany_the_credential() {
    let upstream = Upstream::start().await;
    let gh = start(&upstream, &TestKey::generate(), |c| {
        c.auth.require_application_token = true
    })
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let (_, app) = gh
        .admin(
            "POST",
            "/admin/v1/applications",
            Some(json!({"name": "web"})),
        )
        .await;
    let token = app["token"].as_str().unwrap().to_owned();
    let auth = ("authorization", basic("ada", PASSWORD));
    assert_eq!(
        get(&gh, "/private/x", std::slice::from_ref(&auth)).await.0,
        401
    );
    assert_eq!(
        get(
            &gh,
            "/private/x",
            &[auth.clone(), ("applicationtoken", "gha_wrong".into())]
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get(&gh, "/private/x", &[("applicationtoken", token.clone())])
            .await
            .0,
        401
    );
    assert_eq!(upstream.hits(), 0);
    assert_eq!(
        get(&gh, "/private/x", &[auth, ("ApplicationToken", token)])
            .await
            .0,
        200
    );
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-methods"], "pwd,app");
    assert!(!seen.headers.contains_key("applicationtoken"));
}

#[tokio::test]
async fn every_preset_names_the_identity_headers_and_the_assertion_verifies() {
    let upstream = Upstream::start().await;
    for (preset, user_header, assertion_header) in [
        ("gatehouse", "x-auth-user", "x-auth-assertion"),
        (
            "oauth2-proxy",
            "x-forwarded-preferred-username",
            "x-forwarded-access-token",
        ),
        ("authelia", "remote-user", "remote-assertion"),
    ] {
        let gh = start(&upstream, &TestKey::generate(), |c| {
            c.identity_headers = gatehouse::proxy::headers::Preset::from_name(preset)
                .unwrap()
                .names();
            c.upstream.audience = "billing-app".into();
        })
        .await;
        let user = gh
            .create_user(
                json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com"}),
            )
            .await;
        let (status, _) = get(
            &gh,
            "/private/x",
            &[("authorization", basic("ada", PASSWORD))],
        )
        .await;
        assert_eq!(status, 200, "{preset}");
        let seen = upstream.last();
        assert_eq!(
            seen.headers[user_header], "ada",
            "{preset}: {:?}",
            seen.headers
        );

        // The assertion verifies against the JWKS gatehouse publishes.
        let assertion = seen.headers[assertion_header].to_str().unwrap().to_owned();
        let jwks: JwkSet = http1_client()
            .get(gh.http_url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(&assertion).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&["billing-app"]);
        validation.set_issuer(&[gh.app.config.tokens.issuer.as_str()]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &assertion,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(
            data.claims["sub"],
            user["id"].to_string().as_str(),
            "{preset}"
        );
        assert_eq!(data.claims["email"], "ada@example.com");
        assert_eq!(data.claims["amr"], json!(["pwd"]));
        let lifetime = data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap();
        assert!(lifetime <= 60, "{lifetime}");
        gh.stop().await;
    }
}

/// A trusted issuer's JWKS endpoint whose keys the test can replace; counts fetches.
struct Idp {
    addr: std::net::SocketAddr,
    jwks: Arc<std::sync::Mutex<serde_json::Value>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(jwks: serde_json::Value) -> Idp {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let jwks = Arc::new(std::sync::Mutex::new(jwks));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (jwks.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let body = served.lock().unwrap().to_string();
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
        Idp {
            addr,
            jwks,
            fetches,
        }
    }
}

/// `https://idp.test` trusted with the keys `idp` serves, with the default bound on new users.
fn trusted_idp(idp: &Idp) -> gatehouse::config::TrustedIssuer {
    gatehouse::config::TrustedIssuer {
        issuer: "https://idp.test".into(),
        jwks_url: format!("http://{}/jwks", idp.addr).parse().unwrap(),
        audience: "gatehouse-app".into(),
        algorithms: vec!["EdDSA".into()],
        max_new_users: 100,
        new_users_window: Duration::from_secs(3600),
    }
}

fn external_claims(sub: &str) -> serde_json::Value {
    let now = keys::now();
    json!({
        "iss": "https://idp.test", "aud": "gatehouse-app", "sub": sub, "exp": now + 300,
        "preferred_username": "erin", "email": "erin@example.com", "scope": "read write",
    })
}

#[tokio::test]
async fn trusted_issuer_tokens_map_to_users_and_rotation_is_picked_up() {
    let upstream = Upstream::start().await;
    let k1 = TestKey::generate();
    let idp = Idp::start(json!({"keys": [k1.jwk("k1")]})).await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.jwks_min_refresh = Duration::from_secs(2);
        c.auth.trusted_issuers.push(trusted_idp(&idp));
    })
    .await;
    let bearer = |t: String| ("authorization", format!("Bearer {t}"));

    let (status, body) = get(
        &gh,
        "/private/x",
        &[bearer(k1.sign("k1", &external_claims("ext-1")))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-user"], "erin");
    // The user is created holding the scopes of the token that created it...
    assert_eq!(seen.headers["x-auth-scopes"], "read write");
    // ...and once an administrator takes `write` away, the same token is worth only `read`.
    let (status, _) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/erin",
            Some(json!({"scopes": ["read", "admin"]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = get(
        &gh,
        "/private/x",
        &[bearer(k1.sign("k1", &external_claims("ext-1")))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.last().headers["x-auth-scopes"], "read");
    let user = gh
        .app
        .store
        .user_by_external("https://idp.test", "ext-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.email.as_deref(), Some("erin@example.com"));

    // Wrong audience, and an algorithm the issuer is not allowed: refused.
    let mut wrong_aud = external_claims("ext-1");
    wrong_aud["aud"] = json!("other");
    assert_eq!(
        get(&gh, "/private/x", &[bearer(k1.sign("k1", &wrong_aud))])
            .await
            .0,
        401
    );
    assert_eq!(
        get(
            &gh,
            "/private/x",
            &[bearer(keys::hs256(
                "k1",
                &k1.public,
                &external_claims("ext-1")
            ))]
        )
        .await
        .0,
        401
    );

    // The issuer rotates to k2: the unknown kid triggers one new fetch, and the token passes.
    let k2 = TestKey::generate();
    *idp.jwks.lock().unwrap() = json!({"keys": [k2.jwk("k2")]});
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = get(
        &gh,
        "/private/x",
        &[bearer(k2.sign("k2", &external_claims("ext-1")))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Same subject, same user: no second account.
    assert_eq!(
        upstream.last().headers["x-auth-user-id"],
        user.id.to_string().as_str()
    );

    // A burst of unknown kids right after a fetch costs no more than one further fetch.
    let before = idp.fetches.load(Ordering::SeqCst);
    for i in 0..20 {
        let token = k2.sign(&format!("forged-{i}"), &external_claims("ext-1"));
        assert_eq!(get(&gh, "/private/x", &[bearer(token)]).await.0, 401);
    }
    let after = idp.fetches.load(Ordering::SeqCst);
    assert!(
        after - before <= 1,
        "{} fetches for 20 unknown kids",
        after - before
    );
}

#[tokio::test]
async fn a_changed_email_reaches_the_upstream_in_headers_and_assertion_at_once() {
    let upstream = Upstream::start().await;
    let gh = start(&upstream, &TestKey::generate(), |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com"}))
        .await;
    let credentials = [("authorization", basic("ada", PASSWORD))];
    let sent = || {
        let seen = upstream.last();
        let assertion = seen.headers["x-auth-assertion"]
            .to_str()
            .unwrap()
            .to_owned();
        let audience = &gh.app.config.upstream.audience;
        let claims = gh.app.tokens.verify(&assertion, audience).unwrap();
        (seen.headers["x-auth-email"].clone(), claims.email)
    };
    assert_eq!(get(&gh, "/private/x", &credentials).await.0, 200);
    assert_eq!(
        sent(),
        (
            "ada@example.com".parse().unwrap(),
            Some("ada@example.com".into())
        )
    );

    let (status, _) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"email": "ada@example.org"})),
        )
        .await;
    assert_eq!(status, 200);
    // The next request, well within the assertion's reuse window, carries the new address in
    // both places: a header and an assertion that disagree would leave the app to pick one.
    assert_eq!(get(&gh, "/private/x", &credentials).await.0, 200);
    assert_eq!(
        sent(),
        (
            "ada@example.org".parse().unwrap(),
            Some("ada@example.org".into())
        )
    );
}

/// Runs the test function `$name` once per store backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sled() {
                    super::$name(crate::factors::Backend::Sled).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(crate::factors::Backend::Postgres).await;
                }
            }
        )*
    };
}

on_both_backends!(
    removed_scope_is_refused_on_the_next_request_and_step_up_does_not_restore_it,
    disabled_user_is_refused_on_every_credential,
);

/// [`start`] on `backend`: the test's key signs, `/ops/` needs `ops`, SMS goes nowhere useful.
async fn start_on(
    backend: crate::factors::Backend,
    upstream: &Upstream,
    key: &TestKey,
    adjust: impl FnOnce(&mut gatehouse::config::Config),
) -> (Gatehouse, Option<crate::pg::Database>) {
    let pem = key.pem();
    backend
        .start(upstream, |c| {
            let key_file = c.store.path.with_file_name("signing.pem");
            std::fs::write(&key_file, &pem).unwrap();
            c.tokens.signing_key_file = Some(key_file);
            c.routes.push(gatehouse::config::AccessRule {
                path_prefix: "/ops/".into(),
                access: gatehouse::config::Access::Authenticated,
                scopes: vec!["ops".into()],
                ..Default::default()
            });
            adjust(c);
        })
        .await
}

/// Enrolls `ada` in an authenticator app (Basic, the page); returns the secret.
async fn enroll_totp(gh: &Gatehouse, extra: &[(&str, String)]) -> (Vec<u8>, serde_json::Value) {
    use crate::mfa::{secret_from, ticket_path, totp};
    let client = http1_client();
    let mut request = client
        .post(gh.http_url("/v1/me/mfa-enrollment?factor=otp&isInteractive=true"))
        .header("authorization", basic("ada", PASSWORD));
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    let enrollment: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let html = client
        .get(gh.http_url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = secret_from(&html);
    let mut request = client
        .post(gh.http_url("/v1/me/verify-enrollment-otp"))
        .header("authorization", basic("ada", PASSWORD))
        .json(&json!({"otp": totp(&secret, 0)}));
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    (secret, response.json().await.unwrap())
}

/// Forward-auth's decision for `GET {uri}` with `headers`: the status and `X-Auth-Scopes`.
async fn verify(gh: &Gatehouse, uri: &str, headers: &[(&str, String)]) -> (u16, Option<String>) {
    let mut request = http1_client()
        .get(gh.http_url("/auth/verify"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", uri);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let scopes = response
        .headers()
        .get("x-auth-scopes")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), scopes)
}

fn scopes_of(granted: &serde_json::Value) -> Vec<String> {
    granted["scope"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

async fn removed_scope_is_refused_on_the_next_request_and_step_up_does_not_restore_it(
    backend: crate::factors::Backend,
) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let (gh, _db) = start_on(backend, &upstream, &key, |_| {}).await;
    let user = gh
        .create_user(json!({"userName": "ada", "password": PASSWORD, "scopes": ["read", "ops"]}))
        .await;
    let sub = user["id"].to_string();
    let kid = published_kid(&gh).await;
    let token = key.sign(&kid, &claims(&gh, &sub, &["pwd"], "read ops"));
    let bearer = ("authorization", format!("Bearer {token}"));
    assert_eq!(
        get(&gh, "/ops/x", std::slice::from_ref(&bearer)).await.0,
        200
    );
    assert_eq!(upstream.last().headers["x-auth-scopes"], "read ops");

    let (secret, granted) = enroll_totp(&gh, &[]).await;
    assert!(scopes_of(&granted).contains(&"ops".to_owned()));
    let stepped = granted["accessToken"].as_str().unwrap().to_owned();

    let (status, _) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"scopes": ["read"]})),
        )
        .await;
    assert_eq!(status, 200);
    for token in [&token, &stepped] {
        let bearer = ("authorization", format!("Bearer {token}"));
        let (status, body) = get(&gh, "/ops/x", std::slice::from_ref(&bearer)).await;
        assert_eq!(status, 403, "{body}");
        let (status, _) = verify(&gh, "/ops/x", std::slice::from_ref(&bearer)).await;
        assert_eq!(status, 403, "forward-auth");
        let (status, scopes) = verify(&gh, "/private/x", std::slice::from_ref(&bearer)).await;
        assert_eq!(status, 200);
        assert!(!scopes.unwrap().split(' ').any(|s| s == "ops"));
        let (status, _) = get(&gh, "/private/x", &[bearer]).await;
        assert_eq!(status, 200);
        let scopes = upstream.last().headers["x-auth-scopes"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!scopes.split(' ').any(|s| s == "ops"), "{scopes}");
    }

    // Stepping the old session up issues the scopes the user holds now.
    let response = http1_client()
        .post(gh.http_url("/v1/me/verify-otp"))
        .header("authorization", basic("ada", PASSWORD))
        .json(&json!({"otp": crate::mfa::totp(&secret, 1), "accessToken": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let granted: serde_json::Value = response.json().await.unwrap();
    assert!(
        !scopes_of(&granted).contains(&"ops".to_owned()),
        "{granted}"
    );
    let bearer = (
        "authorization",
        format!("Bearer {}", granted["accessToken"].as_str().unwrap()),
    );
    assert_eq!(
        get(&gh, "/ops/x", std::slice::from_ref(&bearer)).await.0,
        403
    );
    assert_eq!(get(&gh, "/secure/x", &[bearer]).await.0, 200);
    assert_eq!(upstream.last().headers["x-auth-scopes"], "read mfa");
}

async fn disabled_user_is_refused_on_every_credential(backend: crate::factors::Backend) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let (gh, _db) = start_on(backend, &upstream, &key, |_| {}).await;
    let user = gh
        .create_user(
            json!({"userName": "ada", "password": PASSWORD, "scopes": ["manage.otp.verify"]}),
        )
        .await;
    gh.admin(
        "POST",
        "/admin/v1/files/12/members",
        Some(json!({"userName": "ada"})),
    )
    .await;
    let (_, ws_key) = gh
        .admin(
            "POST",
            "/admin/v1/ws-keys",
            Some(json!({"userName": "ada", "fileId": 12})),
        )
        .await;
    let ws_key = ws_key["key"].as_str().unwrap().to_owned();
    let kid = published_kid(&gh).await;
    let token = key.sign(
        &kid,
        &claims(&gh, &user["id"].to_string(), &["pwd"], "manage.otp.verify"),
    );
    let bearer = ("authorization", format!("Bearer {token}"));
    let password = ("authorization", basic("ada", PASSWORD));
    let ws_status = |gh: &Gatehouse| {
        let url = gh.http_url(&format!(
            "/User/verify-2fa-opt-in?FileId=12&WsAccessKey={ws_key}"
        ));
        async move {
            http1_client()
                .post(url)
                .json(&json!({"ProviderUserId": 1, "Otp": "123456"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let manage_status = |gh: &Gatehouse| {
        let request = http1_client()
            .post(gh.http_url("/manage/v2/user/send/otp"))
            .header("authorization", basic("ada", PASSWORD))
            .json(&json!({"userName": "nobody", "phoneNumber": "+14155550123"}));
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // Every credential works while the user is valid.
    assert_eq!(
        get(&gh, "/private/x", std::slice::from_ref(&bearer))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&gh, "/private/x", std::slice::from_ref(&password))
            .await
            .0,
        200
    );
    assert_eq!(ws_status(&gh).await, 400, "the key is accepted");
    assert_ne!(manage_status(&gh).await, 401);

    let patch = gatehouse::store::UserPatch {
        is_valid: Some(false),
        ..Default::default()
    };
    gh.app
        .store
        .update_user("ada", patch, 1_767_225_600)
        .await
        .unwrap();
    assert_eq!(
        verify(&gh, "/private/x", std::slice::from_ref(&bearer))
            .await
            .0,
        401
    );
    assert_eq!(get(&gh, "/private/x", &[bearer]).await.0, 401);
    assert_eq!(
        get(&gh, "/private/x", std::slice::from_ref(&password))
            .await
            .0,
        401
    );
    assert_eq!(ws_status(&gh).await, 401);
    assert_eq!(manage_status(&gh).await, 401);
    let response = http1_client()
        .post(gh.http_url("/v1/me/mfa-enrollment?isInteractive=true"))
        .header("authorization", basic("ada", PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn amr_app_in_a_token_does_not_stand_for_the_application_token_header() {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let k1 = TestKey::generate();
    let idp = Idp::start(json!({"keys": [k1.jwk("k1")]})).await;
    let gh = start(&upstream, &key, |c| {
        c.auth.require_application_token = true;
        c.auth.trusted_issuers.push(trusted_idp(&idp));
    })
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com"}))
        .await;
    let (_, app) = gh
        .admin(
            "POST",
            "/admin/v1/applications",
            Some(json!({"name": "web"})),
        )
        .await;
    let app_header = (
        "applicationtoken",
        app["token"].as_str().unwrap().to_owned(),
    );

    // A token issued to a call that carried the ApplicationToken does not carry `app`.
    let (_, granted) = enroll_totp(&gh, std::slice::from_ref(&app_header)).await;
    let issued = granted["accessToken"].as_str().unwrap().to_owned();
    let payload = issued.split('.').nth(1).unwrap();
    let claims_of_issued: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims_of_issued["amr"], json!(["pwd", "otp"]));

    // Tokens claiming `app` (gatehouse's own key, and a trusted issuer) count for nothing.
    let ada = gh.app.store.user_by_name("ada").await.unwrap().unwrap();
    let kid = published_kid(&gh).await;
    let own = key.sign(
        &kid,
        &claims(&gh, &ada.id.to_string(), &["pwd", "otp", "app"], ""),
    );
    let external = k1.sign(
        "k1",
        &json!({
            "iss": "https://idp.test", "aud": "gatehouse-app", "sub": "ext-app",
            "exp": keys::now() + 300, "preferred_username": "erin", "amr": ["app"],
        }),
    );
    for token in [&issued, &own, &external] {
        let bearer = ("authorization", format!("Bearer {token}"));
        let (status, body) = get(&gh, "/private/x", std::slice::from_ref(&bearer)).await;
        assert_eq!(status, 401, "{body}");
        let (status, _) = verify(&gh, "/private/x", std::slice::from_ref(&bearer)).await;
        assert_eq!(status, 401, "forward-auth");
        let with_header = [bearer, app_header.clone()];
        assert_eq!(verify(&gh, "/private/x", &with_header).await.0, 200);
        let (status, body) = get(&gh, "/private/x", &with_header).await;
        assert_eq!(status, 200, "{body}");
    }

    // The Nexus family's "Bearer and ApplicationToken" alike.
    let response = http1_client()
        .post(gh.http_url("/v1/me/recovery-codes"))
        .bearer_auth(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = http1_client()
        .post(gh.http_url("/v1/me/recovery-codes"))
        .bearer_auth(&own)
        .header(app_header.0, &app_header.1)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Names an issuer might send that break the admin API's rules: surrounding or inner
/// whitespace, control characters, an invisible character, a decomposed (non-NFC) form, `/`,
/// and one character too many.
pub(crate) fn names_breaking_the_rules() -> Vec<String> {
    vec![
        "hank ".into(),
        " hank".into(),
        "hank\t".into(),
        "hank\u{a0}".into(),
        "hank\nX-Auth-User: root".into(),
        "hank\r".into(),
        "hank\u{1b}[31m".into(),
        "hank\u{0}".into(),
        "hank\u{200b}".into(),
        "zoe\u{308}".into(),
        "a/b".into(),
        "h".repeat(129),
    ]
}

pub(crate) fn admin_path(name: &str) -> String {
    let encoded =
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!("/admin/v1/users/{encoded}")
}

#[tokio::test]
async fn names_from_a_trusted_issuer_that_break_the_admin_rules_are_refused_and_never_stored() {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let idp = Idp::start(json!({"keys": [key.jwk("k1")]})).await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.trusted_issuers.push(trusted_idp(&idp));
    })
    .await;
    let bearer = |claims: &serde_json::Value| {
        (
            "authorization",
            format!("Bearer {}", key.sign("k1", claims)),
        )
    };

    let mut cases: Vec<(String, serde_json::Value)> = Vec::new();
    for (i, name) in names_breaking_the_rules().into_iter().enumerate() {
        // As preferred_username; and, with neither preferred_username nor email, as the subject.
        let mut claims = external_claims(&format!("bad-{i}"));
        claims["preferred_username"] = json!(name);
        cases.push((format!("preferred_username {name:?}"), claims));
        let mut claims = external_claims(&name);
        claims.as_object_mut().unwrap().remove("preferred_username");
        claims.as_object_mut().unwrap().remove("email");
        cases.push((format!("sub {name:?}"), claims));
    }
    for (i, email) in [
        "erin@example.com\r\nX-Auth-User: root",
        "erin\t@example.com",
        "erin@example.com ",
    ]
    .into_iter()
    .enumerate()
    {
        let mut claims = external_claims(&format!("bad-email-{i}"));
        claims["preferred_username"] = json!(format!("erin{i}"));
        claims["email"] = json!(email);
        cases.push((format!("email {email:?}"), claims));
    }
    let mut claims = external_claims("bad-display-name");
    claims["preferred_username"] = json!("erin-display");
    claims["name"] = json!("Erin\nforged");
    cases.push(("name with a newline".into(), claims));

    for (what, claims) in &cases {
        let (status, body) = get(&gh, "/private/x", &[bearer(claims)]).await;
        assert_eq!(status, 401, "{what}: {body}");
        let sub = claims["sub"].as_str().unwrap();
        assert!(
            gh.app
                .store
                .user_by_external("https://idp.test", sub)
                .await
                .unwrap()
                .is_none(),
            "{what}: stored"
        );
        if let Some(name) = claims["preferred_username"].as_str() {
            // 404, or 400 where the name cannot even be spelled in a path (`/`, NUL); the
            // store lookup above is what proves nothing was kept.
            let (status, user) = gh.admin("GET", &admin_path(name), None).await;
            assert!(matches!(status, 400 | 404), "{what}: {user}");
        }
    }
    assert_eq!(upstream.hits(), 0);
    // Nor under the name the upstream would have read once the header lost its whitespace.
    assert_eq!(gh.admin("GET", "/admin/v1/users/hank", None).await.0, 404);

    // A name within the rules is stored exactly as the upstream reads it.
    let mut claims = external_claims("good");
    claims["preferred_username"] = json!("hank");
    let (status, body) = get(&gh, "/private/x", &[bearer(&claims)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.last().headers["x-auth-user"], "hank");
    let (status, user) = gh.admin("GET", "/admin/v1/users/hank", None).await;
    assert_eq!(status, 200);
    assert_eq!(user["userName"], "hank");
}

on_both_backends!(
    names_taken_first_never_stop_a_subject_from_getting_its_user,
    two_subjects_with_one_preferred_name_get_two_users,
    an_admin_taking_the_name_at_the_same_moment_never_fails_the_token,
    new_users_beyond_the_issuers_bound_are_refused_until_the_window_ends,
    concurrent_first_requests_of_one_subject_make_one_user,
    a_subject_the_store_cannot_keep_is_refused_and_nothing_is_stored,
);

/// Gatehouse trusting `idp` with at most `max_new_users` per `window`: on PostgreSQL two
/// replicas sharing one database, on sled the one instance. Requests are spread over them.
async fn replicas_trusting(
    backend: crate::factors::Backend,
    upstream: &Upstream,
    idp: &Idp,
    max_new_users: u32,
    window: Duration,
) -> (Vec<Gatehouse>, Option<crate::pg::Database>) {
    let adjust = |c: &mut gatehouse::config::Config| {
        // One master key for the replicas, as they share the signing keys it seals.
        c.secrets.master_key = Some(gatehouse::config::Secret::new(
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ));
        let mut issuer = trusted_idp(idp);
        issuer.max_new_users = max_new_users;
        issuer.new_users_window = window;
        c.auth.trusted_issuers.push(issuer);
    };
    match backend {
        crate::factors::Backend::Sled => {
            (vec![Gatehouse::start_with(upstream, adjust).await], None)
        }
        crate::factors::Backend::Postgres => {
            use gatehouse::store::Store;
            let db = crate::pg::Database::on_shared_server().await;
            let mut replicas = Vec::new();
            for _ in 0..2 {
                let store: Arc<dyn Store> = Arc::new(
                    gatehouse::store::postgres::PgStore::connect(&db.url(), 4)
                        .await
                        .unwrap(),
                );
                replicas
                    .push(Gatehouse::start_store(&upstream.url(), adjust, move |_| store).await);
            }
            (replicas, Some(db))
        }
    }
}

/// What a request with a token of the test issuer came to.
#[derive(Debug)]
struct Outcome {
    status: u16,
    body: String,
    /// The user id and name the upstream was told, when it was reached.
    user: Option<(String, String)>,
}

/// A request with a token of the test issuer for `sub`, whose `preferred_username` is `name`, to
/// a path of its own under `/private/` (so that the upstream's record of it can be found among
/// concurrent ones): the request and its path.
fn subject_request(
    gh: &Gatehouse,
    key: &TestKey,
    sub: &str,
    name: &str,
) -> (reqwest::RequestBuilder, String) {
    let mut claims = external_claims(sub);
    claims["preferred_username"] = json!(name);
    let path = format!("/private/{}", uuid::Uuid::new_v4().simple());
    let request = http1_client().get(gh.http_url(&path)).header(
        "authorization",
        format!("Bearer {}", key.sign("k1", &claims)),
    );
    (request, path)
}

/// Sends a [`subject_request`] and reads what it came to. A 429 is checked to be the problem
/// document with `Retry-After`.
async fn outcome(upstream: &Upstream, request: reqwest::RequestBuilder, path: &str) -> Outcome {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (retry_after, content_type) = (header("retry-after"), header("content-type"));
    let body = response.text().await.unwrap();
    if status == 429 {
        assert_problem(429, content_type.as_deref(), &body, "too-many-new-users");
        assert!(retry_after.is_some(), "429 without Retry-After: {body}");
    }
    Outcome {
        status,
        body,
        user: seen_user(upstream, path),
    }
}

/// The user id and name the upstream was told with the request for `path`.
fn seen_user(upstream: &Upstream, path: &str) -> Option<(String, String)> {
    upstream
        .all()
        .into_iter()
        .find(|seen| seen.target == path)
        .map(|seen| {
            let header = |name: &str| seen.headers[name].to_str().unwrap().to_owned();
            (header("x-auth-user-id"), header("x-auth-user"))
        })
}

async fn as_subject(
    gh: &Gatehouse,
    upstream: &Upstream,
    key: &TestKey,
    sub: &str,
    name: &str,
) -> Outcome {
    let (request, path) = subject_request(gh, key, sub, name);
    outcome(upstream, request, &path).await
}

/// The users the store holds (read through the first replica), by `(iss, sub)` where linked.
async fn stored_users(gh: &Gatehouse) -> Vec<gatehouse::store::User> {
    gh.app.store.export().await.unwrap().users
}

/// The fallback name the first release gave a subject whose preferred name was taken: computable
/// by anyone who knows the subject.
fn predictable_name(preferred: &str, iss: &str, sub: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{iss}\0{sub}").as_bytes());
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    format!("{preferred}#{}", &encoded[..8])
}

async fn names_taken_first_never_stop_a_subject_from_getting_its_user(
    backend: crate::factors::Backend,
) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let idp = Idp::start(json!({"keys": [key.jwk("k1")]})).await;
    let (replicas, _db) =
        replicas_trusting(backend, &upstream, &idp, 100, Duration::from_secs(3600)).await;
    // Someone who knows the victim's `sub` registers both names the victim could have had.
    let guessed = predictable_name("erin", "https://idp.test", "victim");
    for name in ["erin", guessed.as_str()] {
        replicas[0].create_user(json!({"userName": name})).await;
    }

    let first = as_subject(&replicas[0], &upstream, &key, "victim", "erin").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let (id, name) = first.user.unwrap();
    assert!(name.starts_with("erin#") && name != guessed, "{name}");
    // The link is the identity: the same user on the next request, on every replica.
    for gh in replicas.iter().chain(&replicas) {
        let again = as_subject(gh, &upstream, &key, "victim", "erin").await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.user.unwrap(), (id.clone(), name.clone()));
    }
    // The names registered first still belong to those who registered them.
    for taken in ["erin", guessed.as_str()] {
        let (status, user) = replicas[0].admin("GET", &admin_path(taken), None).await;
        assert_eq!(status, 200, "{user}");
        assert_ne!(user["id"].to_string().trim_matches('"'), id, "{user}");
    }
    assert_eq!(stored_users(&replicas[0]).await.len(), 3);
}

async fn two_subjects_with_one_preferred_name_get_two_users(backend: crate::factors::Backend) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let idp = Idp::start(json!({"keys": [key.jwk("k1")]})).await;
    let (replicas, _db) =
        replicas_trusting(backend, &upstream, &idp, 100, Duration::from_secs(3600)).await;
    let a = as_subject(&replicas[0], &upstream, &key, "sub-a", "erin").await;
    let b = as_subject(replicas.last().unwrap(), &upstream, &key, "sub-b", "erin").await;
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    let (a, b) = (a.user.unwrap(), b.user.unwrap());
    assert_ne!(a.0, b.0);
    assert_eq!(a.1, "erin");
    assert!(b.1.starts_with("erin#"), "{b:?}");
    for (sub, user) in [("sub-a", &a), ("sub-b", &b)] {
        let again = as_subject(&replicas[0], &upstream, &key, sub, "erin").await;
        assert_eq!(again.user.as_ref(), Some(user), "{sub}");
    }
}

async fn an_admin_taking_the_name_at_the_same_moment_never_fails_the_token(
    backend: crate::factors::Backend,
) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let idp = Idp::start(json!({"keys": [key.jwk("k1")]})).await;
    let (replicas, _db) =
        replicas_trusting(backend, &upstream, &idp, 100, Duration::from_secs(3600)).await;
    for round in 0..8 {
        let name = format!("zed{round}");
        let gh = &replicas[round % replicas.len()];
        let sub = format!("zed-sub-{round}");
        let (token, (admin_status, admin_user)) = tokio::join!(
            as_subject(gh, &upstream, &key, &sub, &name),
            replicas[0].admin("POST", "/admin/v1/users", Some(json!({"userName": name}))),
        );
        assert_eq!(token.status, 200, "round {round}: {}", token.body);
        let (_, token_name) = token.user.unwrap();
        match admin_status {
            // The administrator got the name: the subject's user has another.
            201 => assert_ne!(token_name, name, "round {round}"),
            409 => assert_eq!(token_name, name, "round {round}"),
            other => panic!("round {round}: admin answered {other}: {admin_user}"),
        }
    }
}

async fn new_users_beyond_the_issuers_bound_are_refused_until_the_window_ends(
    backend: crate::factors::Backend,
) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let idp = Idp::start(json!({"keys": [key.jwk("k1")]})).await;
    // A window short enough to wait out, long enough that the first creations are still in it
    // when the fourth subject comes, however slow the machine.
    let (replicas, _db) =
        replicas_trusting(backend, &upstream, &idp, 3, Duration::from_secs(4)).await;
    let on = |i: usize| &replicas[i % replicas.len()];
    for i in 0..3 {
        let created = as_subject(on(i), &upstream, &key, &format!("n{i}"), &format!("n{i}")).await;
        assert_eq!(created.status, 200, "n{i}: {}", created.body);
    }
    let hits = upstream.hits();

    // The fourth new subject, on any replica (the count is the store's): 429, nothing stored.
    for i in 0..replicas.len() {
        let refused = as_subject(on(i), &upstream, &key, "n3", "n3").await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        let doc: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert!(
            doc["detail"].as_str().unwrap().contains("try again later"),
            "{doc}"
        );
    }
    assert_eq!(
        upstream.hits(),
        hits,
        "a refused request reached the upstream"
    );
    assert_eq!(stored_users(&replicas[0]).await.len(), 3);
    assert!(
        replicas[0]
            .app
            .store
            .user_by_external("https://idp.test", "n3")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        replicas[0].admin("GET", "/admin/v1/users/n3", None).await.0,
        404
    );
    // Users the issuer already has keep working meanwhile, on every replica.
    for i in 0..3 {
        for gh in &replicas {
            let known = as_subject(gh, &upstream, &key, &format!("n{i}"), "renamed").await;
            assert_eq!(known.status, 200, "n{i}: {}", known.body);
        }
    }
    // The refusal is counted where operators look.
    let metrics = http1_client()
        .get(replicas[0].admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gatehouse_auth_failures_total{reason=\"new_users_limited\"}"),
        "{metrics}"
    );

    // Once the window has passed, the subject gets its user.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let outcome = as_subject(on(1), &upstream, &key, "n3", "n3").await;
        if outcome.status == 200 {
            assert_eq!(outcome.user.unwrap().1, "n3");
            break;
        }
        assert_eq!(outcome.status, 429, "{}", outcome.body);
        assert!(tokio::time::Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored_users(&replicas[0]).await.len(), 4);
}

async fn concurrent_first_requests_of_one_subject_make_one_user(backend: crate::factors::Backend) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let idp = Idp::start(json!({"keys": [key.jwk("k1")]})).await;
    // A bound below the number of requests: a burst of one subject is one new user.
    let (replicas, _db) =
        replicas_trusting(backend, &upstream, &idp, 3, Duration::from_secs(3600)).await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (request, path) = subject_request(&replicas[i % replicas.len()], &key, "burst", "erin");
        burst.spawn(async move { (request.send().await.unwrap().status().as_u16(), path) });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(done) = burst.join_next().await {
        let (status, path) = done.unwrap();
        assert_eq!(status, 200);
        ids.insert(seen_user(&upstream, &path).unwrap().0);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let linked: Vec<_> = stored_users(&replicas[0])
        .await
        .into_iter()
        .filter(|u| u.external.as_ref().is_some_and(|e| e.subject == "burst"))
        .collect();
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0].id.to_string(), *ids.first().unwrap());
    // The burst left room within the bound for another new subject.
    let next = as_subject(&replicas[0], &upstream, &key, "after-burst", "erin").await;
    assert_eq!(next.status, 200, "{}", next.body);
}

async fn a_subject_the_store_cannot_keep_is_refused_and_nothing_is_stored(
    backend: crate::factors::Backend,
) {
    let upstream = Upstream::start().await;
    let key = TestKey::generate();
    let idp = Idp::start(json!({"keys": [key.jwk("k1")]})).await;
    let (replicas, _db) =
        replicas_trusting(backend, &upstream, &idp, 100, Duration::from_secs(3600)).await;
    // A well-formed name, but a subject with a NUL (PostgreSQL cannot hold one), another control
    // character, or longer than OpenID Connect's 255.
    for sub in ["erin\u{0}x", "erin\u{7f}", "", &"s".repeat(256)] {
        let refused = as_subject(&replicas[0], &upstream, &key, sub, "erin").await;
        assert_eq!(refused.status, 401, "{sub:?}: {}", refused.body);
    }
    assert_eq!(upstream.hits(), 0);
    assert!(stored_users(&replicas[0]).await.is_empty());
    let longest = "s".repeat(255);
    let accepted = as_subject(&replicas[0], &upstream, &key, &longest, "erin").await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
}
