//! Several replicas sharing one PostgreSQL store (`store.backend = "postgres"`): state started
//! through one gatehouse process is finished through another, codes are single use across them,
//! failures add up to one lockout, and a database outage fails closed and recovers by itself.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;
use crate::mfa::{secret_from, ticket_path, totp, wrong_code};
use crate::pg::{Database, PrivateServer, eventually};

const PASSWORD: &str = "correct horse battery";
const ADMIN_TOKEN: &str = "Q6L3n-D8u1CQbPo0ADeOB19-YlLKkm4L";
const MASTER_KEY: &str = "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=";

/// A gatehouse process on the shared store, with its own data directory for local files.
async fn replica(upstream: &Upstream, url: &str, max_failures: u32) -> Process {
    let extra = format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n[mfa.lockout]\nmax_failures = {max_failures}\n[[routes]]\npath_prefix = \"/private/\"\naccess = \"authenticated\"\n"
    );
    let env = [
        ("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("GATEHOUSE_MASTER_KEY", MASTER_KEY),
    ];
    Process::start(&process_config(&upstream.url(), &extra), &env).await
}

async fn create_user(gh: &Process, name: &str) -> Value {
    let response = http1_client()
        .post(format!("http://{}/admin/v1/users", gh.addrs["listen.admin"]))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"userName": name, "password": PASSWORD, "email": format!("{name}@example.com")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn post(gh: &Process, path: &str, user: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http1_client()
        .post(gh.http_url(path))
        .basic_auth(user, Some(PASSWORD));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Enrolls an authenticator app for `user` through `start` and confirms it through `finish`.
async fn enroll_across(start: &Process, finish: &Process, user: &str) -> Vec<u8> {
    let (status, enrollment) = post(
        start,
        "/v1/me/mfa-enrollment?isInteractive=true",
        user,
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrollment}");
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let html = http1_client()
        .get(finish.http_url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = secret_from(&html);
    let (status, granted) = post(
        finish,
        "/v1/me/verify-enrollment-otp",
        user,
        Some(json!({"otp": totp(&secret, 0)})),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    secret
}

#[tokio::test]
async fn two_replicas_share_enrollments_single_use_codes_and_one_lockout() {
    let upstream = Upstream::start().await;
    let db = Database::on_shared_server().await;
    let a = replica(&upstream, &db.url(), 5).await;
    let b = replica(&upstream, &db.url(), 5).await;
    create_user(&a, "ada").await;

    // Started through A, finished through B.
    let secret = enroll_across(&a, &b, "ada").await;

    // A token issued by B is accepted by A (one signing key for both).
    let (status, granted) = post(
        &b,
        "/v1/me/verify-otp",
        "ada",
        Some(json!({"otp": totp(&secret, 1)})),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    let token = granted["accessToken"].as_str().unwrap();
    let through_a = http1_client()
        .get(a.http_url("/private/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(through_a.status(), 200);

    // That code was used through B: A refuses it.
    let (status, _) = post(
        &a,
        "/v1/me/verify-otp",
        "ada",
        Some(json!({"otp": totp(&secret, 1)})),
    )
    .await;
    assert_eq!(
        status, 403,
        "a code accepted by one replica is refused by the other"
    );

    // Failures through both add up: the replayed code above and two more on A, two on B, make
    // the five that lock the user on both.
    let wrong = wrong_code(&totp(&secret, 0));
    for (replica, expected) in [(&b, 403), (&a, 403), (&b, 403), (&a, 429)] {
        let (status, _) = post(
            replica,
            "/v1/me/verify-otp",
            "ada",
            Some(json!({"otp": wrong})),
        )
        .await;
        assert_eq!(status, expected);
    }
    let (status, _) = post(
        &b,
        "/v1/me/verify-otp",
        "ada",
        Some(json!({"otp": totp(&secret, 0)})),
    )
    .await;
    assert_eq!(
        status, 429,
        "locked on the other replica too, even for the right code"
    );
}

#[tokio::test]
async fn fifty_concurrent_wrong_guesses_split_across_replicas_are_all_counted() {
    let upstream = Upstream::start().await;
    let db = Database::on_shared_server().await;
    let a = replica(&upstream, &db.url(), 100).await;
    let b = replica(&upstream, &db.url(), 100).await;
    let user = create_user(&a, "bob").await;
    let secret = enroll_across(&b, &a, "bob").await;
    let wrong = wrong_code(&totp(&secret, 0));

    let urls = [
        a.http_url("/v1/me/verify-otp"),
        b.http_url("/v1/me/verify-otp"),
    ];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = urls[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            http1_client()
                .post(url)
                .basic_auth("bob", Some(PASSWORD))
                .json(&json!({"otp": wrong}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 403);
    }
    let store = gatehouse::store::postgres::PgStore::connect(&db.url(), 2)
        .await
        .unwrap();
    use gatehouse::store::Store;
    let state = store.lockout(user["id"].as_u64().unwrap()).await.unwrap();
    assert_eq!(state.failures.len(), 50);
}

#[tokio::test]
async fn a_database_outage_fails_closed_and_recovers_by_itself() {
    let upstream = Upstream::start().await;
    let server = PrivateServer::start().await;
    let db = Database::create(&server.server_url()).await;
    let gh = replica(&upstream, &db.url(), 5).await;
    create_user(&gh, "ada").await;
    let client = http1_client();
    let ready = || {
        let url = format!("http://{}/readyz", gh.addrs["listen.admin"]);
        let client = client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let private = || {
        client
            .get(gh.http_url("/private/data"))
            .basic_auth("ada", Some(PASSWORD))
            .send()
    };
    assert_eq!(ready().await, 200);
    assert_eq!(private().await.unwrap().status(), 200);
    let forwarded = upstream.hits();

    server.stop();
    assert_eq!(ready().await, 503, "not ready without the database");
    assert_eq!(private().await.unwrap().status(), 503);
    let (status, _) = post(&gh, "/v1/me/mfa-enrollment?isInteractive=true", "ada", None).await;
    assert_eq!(status, 503, "local endpoints answer 503");
    assert_eq!(
        upstream.hits(),
        forwarded,
        "nothing is forwarded on a protected route"
    );
    let public = client
        .get(gh.http_url("/public/page"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200, "public routes need no store");

    server.resume().await;
    assert!(
        eventually(Duration::from_secs(20), || async { ready().await == 200 }).await,
        "ready again once the database is back"
    );
    assert_eq!(private().await.unwrap().status(), 200);
}

#[tokio::test]
async fn gatehouse_migrate_copies_a_sled_store_into_postgres() {
    use gatehouse::store::*;
    let dir = tempfile::tempdir().unwrap();
    let now = "2026-01-01T00:00:00Z";
    let now_unix = 1_767_225_600;
    {
        let sled = gatehouse::store::sled::SledStore::open(dir.path()).unwrap();
        let ada = sled
            .create_user(
                NewUser {
                    user_name: "ada".into(),
                    password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
                    email: Some("ada@example.com".into()),
                    phone: Some("+14155550123".into()),
                    scopes: vec!["read".into()],
                    ..NewUser::default()
                },
                now_unix,
            )
            .await
            .unwrap();
        sled.create_user(
            NewUser {
                user_name: "bob".into(),
                ..NewUser::default()
            },
            now_unix,
        )
        .await
        .unwrap();
        sled.create_organization(Organization {
            v: SCHEMA_VERSION,
            id: 7,
            name: "Analytical Engines".into(),
            created: now.into(),
        })
        .await
        .unwrap();
        sled.set_membership(
            "ada",
            Membership {
                organization_id: 7,
                role: Role::Admin,
            },
            now_unix,
        )
        .await
        .unwrap();
        let ticket = Ticket {
            v: SCHEMA_VERSION,
            id: "ticket-1".into(),
            user_id: ada.id,
            kind: FactorKind::Otp,
            sealed_secret: Some(vec![9, 9, 9]),
            destination: None,
            created_at: 1000,
            expires_at: 4_000_000_000,
            used: false,
            second_factor: false,
        };
        sled.create_ticket(ticket.clone()).await.unwrap();
        let factor = Factor {
            v: SCHEMA_VERSION,
            user_id: ada.id,
            kind: FactorKind::Otp,
            sealed_secret: Some(vec![9, 9, 9]),
            destination: None,
            last_step: None,
            created: now.into(),
        };
        assert!(
            sled.confirm_ticket(
                "ticket-1",
                factor,
                Some(vec!["r1".into(), "r2".into()]),
                1500
            )
            .await
            .unwrap()
        );
        assert!(sled.accept_totp_step(ada.id, 42).await.unwrap());
        sled.create_ticket(Ticket {
            id: "ticket-2".into(),
            used: false,
            ..ticket
        })
        .await
        .unwrap();
        let mut domain = sled
            .create_domain(Domain {
                v: SCHEMA_VERSION,
                organization_id: 7,
                domain_id: 0,
                domain: "example.com".into(),
                authentication_method: None,
                created: now.into(),
                created_by: "ada".into(),
                modified: now.into(),
                modified_by: "ada".into(),
                is_verified: false,
                verification_code: None,
                verification_code_expires: None,
                verification_code_expires_at: None,
                verification_method: None,
                owner_organization_id: 7,
            })
            .await
            .unwrap();
        domain.is_verified = true;
        sled.save_domain(domain).await.unwrap();
        sled.add_signing_key(SigningKey {
            v: SCHEMA_VERSION,
            kid: "k1".into(),
            pkcs8: vec![1, 2, 3],
            created: now.into(),
            activates: 0,
        })
        .await
        .unwrap();
        sled.append_audit(AuditEvent {
            time: now.into(),
            event: "mfa.factor.confirmed".into(),
            user_name: Some("ada".into()),
            detail: None,
            ..Default::default()
        })
        .await
        .unwrap();
        sled.flush().await.unwrap();
    }
    let expected = gatehouse::store::sled::SledStore::open(dir.path())
        .unwrap()
        .export()
        .await
        .unwrap();

    let db = Database::on_shared_server().await;
    let output = tokio::process::Command::new(binary())
        .arg("migrate")
        .arg("--from")
        .arg(dir.path())
        .arg("--to")
        .arg(db.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("2 users, 1 factors"), "{stdout}");

    let pg = gatehouse::store::postgres::PgStore::connect(&db.url(), 2)
        .await
        .unwrap();
    assert_eq!(
        pg.export().await.unwrap(),
        expected,
        "everything arrives unchanged"
    );
    // Ids carry on where the old store stopped, and the copied state still works.
    let carol = pg
        .create_user(
            NewUser {
                user_name: "carol".into(),
                ..NewUser::default()
            },
            now_unix,
        )
        .await
        .unwrap();
    assert!(expected.users.iter().all(|u| u.id < carol.id));
    let ada = pg.user_by_name("ada").await.unwrap().unwrap();
    assert!(
        !pg.accept_totp_step(ada.id, 42).await.unwrap(),
        "the used step stays used"
    );
    assert!(pg.consume_recovery_code(ada.id, "r2").await.unwrap());
    assert!(matches!(
        pg.create_user(
            NewUser {
                user_name: "ADA".into(),
                ..NewUser::default()
            },
            now_unix,
        )
        .await,
        Err(StoreError::Conflict(_))
    ));

    // A second run refuses to write over a store that already has users.
    let again = tokio::process::Command::new(binary())
        .arg("migrate")
        .arg("--from")
        .arg(dir.path())
        .arg("--to")
        .arg(db.url())
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

/// Both replicas' `gatehouse_otp_verifications_total`, summed: (accepted, rejected, locked).
async fn otp_counts(replicas: &[&Process]) -> (u64, u64, u64) {
    let mut sum = (0, 0, 0);
    for gh in replicas {
        let metrics = http1_client()
            .get(format!("http://{}/metrics", gh.addrs["listen.admin"]))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (a, r, l) = crate::mfa::otp_counts(&metrics);
        sum = (sum.0 + a, sum.1 + r, sum.2 + l);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_wrong_codes_across_replicas_compare_at_most_max_failures() {
    let upstream = Upstream::start().await;
    let db = Database::on_shared_server().await;
    let a = replica(&upstream, &db.url(), 5).await;
    let b = replica(&upstream, &db.url(), 5).await;
    create_user(&a, "cy").await;
    // Through both, so that each has checked the password once before the burst.
    let secret = enroll_across(&a, &b, "cy").await;
    let right = totp(&secret, 1);
    let wrong = wrong_code(&right);
    let before = otp_counts(&[&a, &b]).await;

    let urls = [
        a.http_url("/v1/me/verify-otp"),
        b.http_url("/v1/me/verify-otp"),
    ];
    let requests = (0..100)
        .map(|i| {
            let url = urls[i % 2].clone();
            async move {
                http1_client()
                    .post(url)
                    .basic_auth("cy", Some(PASSWORD))
                    .json(&json!({"otp": wrong}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .collect();
    let statuses = crate::mfa::at_once(requests).await;
    assert_eq!(crate::mfa::tally(&statuses), [(403, 4), (429, 96)]);
    assert_eq!(
        otp_counts(&[&a, &b]).await,
        (before.0, before.1 + 5, before.2 + 95),
        "only max_failures codes were compared, on both replicas together"
    );
    for gh in [&a, &b] {
        let (status, _) = post(gh, "/v1/me/verify-otp", "cy", Some(json!({"otp": right}))).await;
        assert_eq!(status, 429, "the right code is refused on every replica");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_enrollment_codes_across_replicas_compare_at_most_max_failures() {
    let upstream = Upstream::start().await;
    let db = Database::on_shared_server().await;
    let a = replica(&upstream, &db.url(), 5).await;
    let b = replica(&upstream, &db.url(), 5).await;
    create_user(&a, "di").await;
    let (status, enrollment) =
        post(&a, "/v1/me/mfa-enrollment?isInteractive=true", "di", None).await;
    assert_eq!(status, 200, "{enrollment}");
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let html = http1_client()
        .get(b.http_url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let right = totp(&secret_from(&html), 0);
    let wrong = wrong_code(&right);
    // B checks di's password once before the burst, as A did.
    assert_eq!(
        post(&b, "/v1/me/verify-enrollment-otp", "di", Some(json!({})))
            .await
            .0,
        400
    );
    let before = otp_counts(&[&a, &b]).await;

    let urls = [
        a.http_url("/v1/me/verify-enrollment-otp"),
        b.http_url("/v1/me/verify-enrollment-otp"),
    ];
    let requests = (0..100)
        .map(|i| {
            let url = urls[i % 2].clone();
            async move {
                http1_client()
                    .post(url)
                    .basic_auth("di", Some(PASSWORD))
                    .json(&json!({"otp": wrong}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .collect();
    let statuses = crate::mfa::at_once(requests).await;
    assert_eq!(crate::mfa::tally(&statuses), [(403, 4), (429, 96)]);
    assert_eq!(
        otp_counts(&[&a, &b]).await,
        (before.0, before.1 + 5, before.2 + 95)
    );
    for gh in [&a, &b] {
        let (status, _) = post(
            gh,
            "/v1/me/verify-enrollment-otp",
            "di",
            Some(json!({"otp": right})),
        )
        .await;
        assert_eq!(status, 429, "the right code is refused on every replica");
    }
}

#[tokio::test]
async fn a_session_started_on_one_replica_lives_and_ends_on_both() {
    use crate::signin::{SESSION_COOKIE, Visitor};
    let upstream = Upstream::start().await;
    let db = Database::on_shared_server().await;
    let a = replica(&upstream, &db.url(), 5).await;
    let b = replica(&upstream, &db.url(), 5).await;
    create_user(&a, "ada").await;
    let session = |gh: &Process, id: String| {
        let url = gh.http_url("/auth/session");
        async move {
            http1_client()
                .get(url)
                .header("cookie", format!("{SESSION_COOKIE}={id}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // The sign-in page from A, the post to B: the CSRF token holds on every replica.
    let mut on_a = Visitor::new(a.addrs["listen.http"]);
    let page = on_a.get("/auth/login?rd=/private/x").await;
    let csrf = page.hidden("csrf");
    let mut on_b = Visitor::new(b.addrs["listen.http"]);
    on_b.cookies = on_a.cookies.clone();
    let page = on_b
        .post(
            "/auth/login",
            &[
                ("csrf", csrf.as_str()),
                ("rd", "/private/x"),
                ("user", "ada"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let first = on_b.session().unwrap();
    on_a.cookies = on_b.cookies.clone();
    assert_eq!(on_a.get("/private/x").await.status, 200);
    assert_eq!(upstream.last().headers["x-auth-user"], "ada");

    // Signed out through A: B refuses the id on the next request.
    on_a.sign_out().await;
    assert_eq!(session(&b, first.clone()).await, 401);

    // Two sessions, ended everywhere by one admin call on A.
    let mut one = Visitor::new(a.addrs["listen.http"]);
    one.sign_in("ada", PASSWORD, "/").await;
    let mut two = Visitor::new(b.addrs["listen.http"]);
    two.sign_in("ada", PASSWORD, "/").await;
    let (one, two) = (one.session().unwrap(), two.session().unwrap());
    assert_eq!(session(&b, one.clone()).await, 200);
    assert_eq!(session(&a, two.clone()).await, 200);
    let response = http1_client()
        .delete(format!(
            "http://{}/admin/v1/users/ada/sessions",
            a.addrs["listen.admin"]
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    for (gh, id) in [(&a, &one), (&b, &one), (&a, &two), (&b, &two)] {
        assert_eq!(session(gh, id.clone()).await, 401);
    }
}

#[tokio::test]
async fn concurrent_step_ups_of_one_session_across_replicas_rotate_it_once() {
    use crate::signin::{CSRF_COOKIE, SESSION_COOKIE, Visitor};
    let upstream = Upstream::start().await;
    let db = Database::on_shared_server().await;
    let a = replica(&upstream, &db.url(), 50).await;
    let b = replica(&upstream, &db.url(), 50).await;
    create_user(&a, "ada").await;
    let secret = enroll_across(&a, &b, "ada").await;
    let mut browser = Visitor::new(a.addrs["listen.http"]);
    browser.sign_in("ada", PASSWORD, "/").await;
    let page = browser.get("/auth/step-up?rd=/").await;
    let csrf = page.hidden("csrf");
    let cookie = format!(
        "{SESSION_COOKIE}={}; {CSRF_COOKIE}={}",
        browser.session().unwrap(),
        browser.cookies[CSRF_COOKIE]
    );
    // The same session steps up with two different right codes at once, on both replicas:
    // however they interleave, at most one new session comes out of it.
    let mut attempts = tokio::task::JoinSet::new();
    for (i, gh) in [&a, &b, &a, &b].into_iter().enumerate() {
        let url = gh.http_url("/auth/step-up");
        let origin = format!("http://{}", gh.addrs["listen.http"]);
        let cookie = cookie.clone();
        let csrf = csrf.clone();
        let code = totp(&secret, i64::try_from(i % 2).unwrap());
        attempts.spawn(async move {
            let response = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .post(url)
                .header("cookie", cookie)
                .header("origin", origin)
                .form(&[("csrf", csrf.as_str()), ("rd", "/"), ("code", &code)])
                .send()
                .await
                .unwrap();
            response
                .headers()
                .get_all("set-cookie")
                .iter()
                .any(|v| v.to_str().unwrap().starts_with(SESSION_COOKIE))
        });
    }
    let rotated = attempts
        .join_all()
        .await
        .into_iter()
        .filter(|new_cookie| *new_cookie)
        .count();
    assert!(rotated <= 1, "{rotated} sessions came out of one");
}
