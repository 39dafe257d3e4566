//! Browser sign-in and sessions (SPEC §10, §11) under attack: what a hostile site, a hostile
//! client or a racing request can make of the sign-in pages, the session cookie and `rd`.

use std::time::Duration;

use proptest::prelude::*;

use crate::harness::*;
use crate::mfa::{totp, wrong_code};
use crate::signin::{CSRF_COOKIE, PASSWORD, SESSION_COOKIE, Visitor, enroll_totp, user};

/// The status of `/auth/session` for the session id `id`.
async fn session_status(gh: &Gatehouse, id: &str) -> u16 {
    http1_client()
        .get(gh.http_url("/auth/session"))
        .header("cookie", format!("{SESSION_COOKIE}={id}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Posts a wrong code on the step-up page; the status.
async fn wrong_step_up(browser: &mut Visitor, secret: &[u8]) -> u16 {
    browser
        .step_up(wrong_code(&totp(secret, 0)), "/secure/x")
        .await
        .status
}

/// SPEC §10: at most `max_failures` wrong codes are compared per window. Signing in again with
/// the right password gives back the password's own attempt; it must not wipe the wrong codes
/// counted before it, or whoever holds the password guesses the second factor without end.
#[tokio::test]
async fn a_right_password_does_not_reset_the_count_of_wrong_second_factor_codes() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.mfa.lockout.max_failures = 3;
        c.auth.failed_password_limit = 1000;
    })
    .await;
    user(&gh, "ada").await;
    let secret = enroll_totp(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let mut compared = 0;
    for _ in 0..3 {
        if browser.sign_in("ada", PASSWORD, "/").await.status != 303 {
            break;
        }
        for _ in 0..2 {
            if wrong_step_up(&mut browser, &secret).await == 401 {
                compared += 1;
            }
        }
    }
    assert!(
        compared < 3,
        "{compared} wrong codes answered as wrong (not locked) with max_failures 3"
    );
    // Locked: the right code is refused too.
    let page = browser.step_up(&totp(&secret, 1), "/secure/x").await;
    assert_eq!(page.status, 429, "{}", page.body);
}

/// Posts the sign-in form with the test password, in the background.
fn spawn_sign_in(
    gh: &Gatehouse,
    browser: &Visitor,
    csrf: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = gh.http_url("/auth/login");
    let cookie = format!("{CSRF_COOKIE}={}", browser.cookies[CSRF_COOKIE]);
    let csrf = csrf.to_owned();
    tokio::spawn(async move {
        no_redirects_client()
            .post(url)
            .header("cookie", cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("rd", "/"),
                ("user", "ada"),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap()
    })
}

/// A sign-in whose password was checked against the old hash must not leave a live session when
/// the password changes (and the user's sessions are ended) before the session is stored; nor
/// may a sign-in that starts after the change, with the old password, share the verification
/// of one still running against the old hash.
#[tokio::test]
async fn a_sign_in_that_straddles_a_password_change_leaves_no_session() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.max_concurrent_hashes = 1;
    })
    .await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let page = browser.get("/auth/login").await;
    let csrf = page.hidden("csrf");
    // Hold the one hashing thread, so that the sign-in reads the user and then waits.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let hashes = gh.app.auth.clone();
    let blocker = tokio::spawn(async move {
        hashes
            .hashes()
            .run(move || {
                let _ = held.recv_timeout(Duration::from_secs(20));
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = spawn_sign_in(&gh, &browser, &csrf);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What a password change does (PATCH /admin/v1/users/ada): a new hash, then every session
    // of the user ended.
    let hash = gatehouse::auth::secret::hash_password("a brand new password").unwrap();
    gh.app
        .store
        .update_user(
            "ada",
            gatehouse::store::UserPatch {
                password_hash: Some(hash),
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap();
    let id = gh.app.store.user_by_name("ada").await.unwrap().unwrap().id;
    gh.app.store.delete_user_sessions(id).await.unwrap();
    let after = spawn_sign_in(&gh, &browser, &csrf);
    tokio::time::sleep(Duration::from_millis(300)).await;
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for (which, sign_in) in [("before", before), ("after", after)] {
        let response = sign_in.await.unwrap();
        let status = response.status().as_u16();
        assert!([303, 401].contains(&status), "{which}: {status}");
        let session = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{SESSION_COOKIE}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        if let Some(id) = session.filter(|id| !id.is_empty()) {
            assert_eq!(
                session_status(&gh, &id).await,
                401,
                "{which} the change: a session signed in with the old password outlived it"
            );
        }
    }
}

/// A forged post to any form is 403, whether or not the browser has a live session: the forms
/// that need one (step-up, passkeys) refuse the forgery before they would send a browser without
/// a session to sign in. A post that is not forged and has no session is sent to sign in.
#[tokio::test]
async fn forged_posts_are_403_on_every_form_with_or_without_a_session() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let token = browser.get("/auth/login").await.hidden("csrf");
    let csrf_cookie = browser.cookies[CSRF_COOKIE].clone();
    let own = format!("http://{}", gh.http_addr());
    let made_up = format!("{SESSION_COOKIE}={}", "A".repeat(43));
    let client = no_redirects_client();
    let forms = [
        "/auth/login",
        "/auth/step-up",
        "/auth/logout",
        "/auth/passkeys",
    ];
    for path in forms {
        // (cookie, extra headers) of a forged post.
        let forged: Vec<(String, Vec<(&str, &str)>)> = vec![
            (String::new(), vec![("origin", "https://evil.example")]),
            (String::new(), vec![]),
            (made_up.clone(), vec![("origin", "https://evil.example")]),
            (made_up.clone(), vec![]),
            (
                format!("{made_up}; {CSRF_COOKIE}={csrf_cookie}"),
                vec![("origin", "https://evil.example")],
            ),
            (
                format!("{CSRF_COOKIE}={csrf_cookie}"),
                vec![("sec-fetch-site", "cross-site")],
            ),
        ];
        for (cookie, headers) in &forged {
            let mut request = client
                .post(gh.http_url(path))
                .form(&[("csrf", token.as_str()), ("action", "rename")]);
            if !cookie.is_empty() {
                request = request.header("cookie", cookie);
            }
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 403, "{path} {cookie:?} {headers:?}");
            assert!(response.headers().get("set-cookie").is_none(), "{path}");
        }
    }
    // Not forged, no session: the forms that need one send the browser to sign in.
    for path in ["/auth/step-up", "/auth/passkeys"] {
        let response = client
            .post(gh.http_url(path))
            .header("cookie", format!("{made_up}; {CSRF_COOKIE}={csrf_cookie}"))
            .header("origin", &own)
            .form(&[("csrf", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{path}");
        let location = response.headers()["location"].to_str().unwrap();
        assert!(location.starts_with("/auth/login"), "{path}: {location}");
    }
}

fn no_redirects_client() -> reqwest::Client {
    crate::signin::no_redirects()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// However `rd` is spelled, the page the browser lands on is on this origin: the target,
    /// resolved as a browser resolves a `Location` (WHATWG URL), keeps the scheme and host.
    #[test]
    fn rd_never_leaves_the_origin_however_it_is_spelled(
        parts in prop::collection::vec(prop::sample::select(vec![
            "/", "//", "\\", "%2f", "%2F", "%5c", "%5C", "%09", "\t", "\n", "\r", " ", ".", "..",
            "%2e", "%2E%2e", "@", ":", "evil.example", "?", "#", "%", "%25", "\u{ff0f}",
            "\u{2215}", "\u{ff3c}", "\u{3000}", "\u{0085}", "\u{2028}", ";", "http:", "https:",
            "javascript:", "x", "%0a", "%00", "\0", "&", "=", "+", "%20", "\u{feff}",
        ]), 0..10)
    ) {
        let rd: String = parts.concat();
        let target = gatehouse::api::signin::rd::target(&rd);
        prop_assert!(target.starts_with('/'), "{rd:?} -> {target:?}");
        let base = reqwest::Url::parse("https://gate.example/app/page").unwrap();
        let landed = base.join(&target).unwrap();
        prop_assert_eq!(landed.scheme(), "https", "{:?} -> {:?}", rd, target);
        prop_assert_eq!(landed.host_str(), Some("gate.example"), "{:?} -> {:?}", rd, target);
        prop_assert_eq!(landed.port(), None, "{:?} -> {:?}", rd, target);
        prop_assert!(landed.username().is_empty(), "{rd:?} -> {target:?}");
        // The login URL built from it carries it as one parameter.
        let login = base.join(&gatehouse::api::signin::rd::login_url(&target)).unwrap();
        let back: Vec<(String, String)> = login.query_pairs().into_owned().collect();
        prop_assert_eq!(back, vec![("rd".to_owned(), target.clone())]);
    }
}

/// The session (and CSRF) cookie is gatehouse's: in no spelling a browser or client could send it
/// does it reach the application, over HTTP/1.1 or split into several HTTP/2 cookie fields.
#[tokio::test]
async fn the_session_cookie_never_reaches_the_upstream_in_any_spelling() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let csrf = browser.cookies[CSRF_COOKIE].clone();
    let s = format!("{SESSION_COOKIE}={id}");
    let c = format!("{CSRF_COOKIE}={csrf}");
    let cases: Vec<Vec<String>> = vec![
        vec![s.clone()],
        vec![format!("a=1; {s}; {c}; b=2")],
        vec![format!("a=1;{s};b=2")],
        vec![format!("a=1;  {s}  ; b=2")],
        vec![format!("a=1; {SESSION_COOKIE} ={id}")],
        vec![format!("a=1; {SESSION_COOKIE}=\"{id}\"")],
        vec![format!("{s}; {s}")],
        vec!["a=1".into(), s.clone(), "b=2".into(), c.clone()],
        vec![format!("a=1; {s}"), format!("{s}; b=2")],
    ];
    for (client, label) in [(http1_client(), "http/1.1"), (h2c_client(), "h2c")] {
        for sent in &cases {
            let mut request = client.get(gh.http_url("/private/x"));
            for value in sent {
                request = request.header("cookie", value);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            if status != 200 {
                // Refused (say, an ambiguous cookie): nothing reached the app.
                continue;
            }
            let seen = upstream.last();
            for value in seen.headers.get_all("cookie") {
                let value = value.to_str().unwrap();
                assert!(
                    !value.contains(&id) && !value.contains(&csrf),
                    "{label} {sent:?}: the app got {value:?}"
                );
            }
        }
    }
}

/// A browser sends all its cookies for the host in one `Cookie` field, the application's own
/// among them, and those may hold UTF-8: the session beside them is still the session, and the
/// application's cookie still reaches it.
#[tokio::test]
async fn the_session_is_read_beside_an_application_cookie_holding_utf8() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let value = reqwest::header::HeaderValue::from_bytes(
        format!("name=Jos\u{e9}; {SESSION_COOKIE}={id}").as_bytes(),
    )
    .unwrap();
    let response = http1_client()
        .get(gh.http_url("/private/x"))
        .header("cookie", value)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(
        seen.headers["cookie"].as_bytes(),
        "name=Jos\u{e9}".as_bytes()
    );
}

/// Another site's page, or a client naming its origin in any odd way, cannot post the sign-in,
/// step-up or sign-out forms, even with a valid token: nothing is signed in, sent or ended.
#[tokio::test]
async fn posts_from_another_site_are_refused_however_they_name_it() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let csrf_cookie = browser.cookies[CSRF_COOKIE].clone();
    let token = browser.get("/auth/logout").await.hidden("csrf");
    let own = format!("http://{}", gh.http_addr());
    let cookie = format!("{SESSION_COOKIE}={id}; {CSRF_COOKIE}={csrf_cookie}");
    let hostile: Vec<Vec<(&str, String)>> = vec![
        vec![("origin", "https://evil.example".into())],
        vec![("origin", "null".into())],
        vec![("origin", format!("{own}.evil.example"))],
        vec![("origin", format!("{own}@evil.example"))],
        vec![("origin", own.replace("http://", "https://"))],
        vec![
            ("origin", own.clone()),
            ("origin", "https://evil.example".into()),
        ],
        vec![("origin", format!("{own}, https://evil.example"))],
        vec![("sec-fetch-site", "cross-site".into())],
        vec![("sec-fetch-site", "same-site".into())],
        vec![("sec-fetch-site", "CROSS-SITE".into())],
        vec![
            ("sec-fetch-site", "same-origin".into()),
            ("sec-fetch-site", "cross-site".into()),
        ],
        vec![
            ("origin", own.clone()),
            ("sec-fetch-site", "cross-site".into()),
        ],
    ];
    let client = no_redirects_client();
    for headers in &hostile {
        for (path, fields) in [
            ("/auth/logout", vec![("csrf", token.as_str())]),
            (
                "/auth/login",
                vec![
                    ("csrf", token.as_str()),
                    ("user", "ada"),
                    ("password", PASSWORD),
                ],
            ),
            (
                "/auth/step-up",
                vec![("csrf", token.as_str()), ("code", "000000")],
            ),
        ] {
            let mut request = client
                .post(gh.http_url(path))
                .header("cookie", &cookie)
                .form(&fields);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let response = request.send().await.unwrap();
            assert!(
                [403, 303].contains(&response.status().as_u16()),
                "{path} {headers:?}: {}",
                response.status()
            );
            assert!(
                response.headers().get("set-cookie").is_none(),
                "{path} {headers:?}"
            );
        }
    }
    assert_eq!(session_status(&gh, &id).await, 200, "still signed in");
    // One browser's token is worth nothing with another browser's CSRF cookie.
    let mut other = Visitor::new(gh.http_addr());
    let other_token = other.get("/auth/login").await.hidden("csrf");
    let response = client
        .post(gh.http_url("/auth/logout"))
        .header("cookie", &cookie)
        .header("origin", &own)
        .form(&[("csrf", other_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(session_status(&gh, &id).await, 200, "still signed in");
}

/// The step-up checks the code against the session's own user: another user's right code,
/// or a recovery code of theirs, proves nothing.
#[tokio::test]
async fn a_code_of_another_user_does_not_step_up_a_session() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    user(&gh, "bob").await;
    enroll_totp(&gh, "ada").await;
    let bobs = enroll_totp(&gh, "bob").await;
    let mut browser = Visitor::new(gh.http_addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let page = browser.step_up(&totp(&bobs, 1), "/secure/x").await;
    assert_eq!(page.status, 401, "{}", page.body);
    let response = browser.get("/secure/x").await;
    assert_eq!(response.status, 302, "still not stepped up");
}

/// The lockout counts the user, whatever letter case or padding names them on the form.
#[tokio::test]
async fn wrong_passwords_count_for_the_user_in_any_spelling_of_the_name() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.mfa.lockout.max_failures = 3;
        c.auth.failed_password_limit = 1000;
    })
    .await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    for name in ["ADA", " Ada", "aDa\t"] {
        let page = browser.sign_in(name, "wrong", "/").await;
        assert!(
            [401, 429].contains(&page.status),
            "{name:?}: {}",
            page.status
        );
    }
    let page = browser.sign_in("ada", PASSWORD, "/").await;
    assert_eq!(page.status, 429, "{}", page.body);
}

/// The sign-in page's answer for a name says nothing about whether the user exists: the same
/// status, page and headers for an unknown name and a known one, also once the known one is
/// locked.
#[tokio::test]
#[ignore = "open: the lockout is an oracle for which user names exist (see the report)"]
async fn a_locked_user_cannot_be_told_from_an_unknown_one() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.mfa.lockout.max_failures = 3;
        c.auth.failed_password_limit = 1000;
    })
    .await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let mut answers = Vec::new();
    for name in ["ada", "ghost"] {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(browser.sign_in(name, "wrong", "/").await.status);
        }
        answers.push(statuses);
    }
    assert_eq!(answers[0], answers[1], "ada vs ghost");
}

/// Through Traefik (the shipped forward-auth example) as inline: the application gets its own
/// cookies and never gatehouse's session or CSRF cookie, however the browser or a client sends
/// them (SPEC §11).
#[tokio::test]
async fn traefik_keeps_gatehouses_cookies_from_the_app() {
    let app = Upstream::start().await;
    let (_gh, traefik) = crate::traefik_signin::deployment(&app).await;
    let mut browser = Visitor::new(traefik.addr());
    browser.cookies.insert("app".into(), "theirs".into());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let csrf = browser.cookies[CSRF_COOKIE].clone();
    let page = browser.get("/private/x").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen: Vec<String> = app
        .last()
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, vec!["app=theirs".to_owned()]);

    let s = format!("{SESSION_COOKIE}={id}");
    let c = format!("{CSRF_COOKIE}={csrf}");
    let client = http1_client();
    for (path, sent, forwarded) in [
        ("/private/x", vec![s.clone()], None),
        (
            "/private/x",
            vec![format!("a=1; {s}; {c}; b=2")],
            Some("a=1; b=2"),
        ),
        ("/private/x", vec![format!("{s}; {s}")], None),
        ("/private/x", vec!["a=1".to_owned(), s.clone()], Some("a=1")),
        // A public route is not authenticated, and the cookies are gatehouse's all the same.
        ("/public/x", vec![format!("{s}; a=1")], Some("a=1")),
        ("/public/x", vec!["a=1".to_owned()], Some("a=1")),
    ] {
        let mut request = client.get(traefik.url(path));
        for value in &sent {
            request = request.header("cookie", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} {sent:?}");
        let seen: Vec<String> = app
            .last()
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            seen,
            Vec::from_iter(forwarded.map(str::to_owned)),
            "{path} {sent:?}"
        );
    }
}

/// Through nginx (the shipped forward-auth example): a session cookie that gatehouse accepts
/// never reaches the application, in whatever spelling a client sends it.
#[tokio::test]
async fn nginx_keeps_every_spelling_of_an_accepted_session_cookie_from_the_app() {
    let app = Upstream::start().await;
    let gh = Gatehouse::start_url("http://127.0.0.1:9", |_| {}).await;
    user(&gh, "ada").await;
    let nginx = crate::ops::Nginx::start(gh.http_addr(), &app.url()).await;
    let mut browser = Visitor::new(nginx.addr());
    browser.sign_in("ada", PASSWORD, "/").await;
    let id = browser.session().unwrap();
    let client = http1_client();
    for sent in [
        vec![format!("{SESSION_COOKIE}={id}; {SESSION_COOKIE}={id}")],
        vec![format!("a=1; {SESSION_COOKIE} ={id}")],
        vec![format!("{SESSION_COOKIE}\t={id}; a=1")],
        vec![
            format!("{SESSION_COOKIE}={id}"),
            format!("{SESSION_COOKIE}={id}"),
        ],
    ] {
        let mut request = client.get(nginx.url("/private/x"));
        for value in &sent {
            request = request.header("cookie", value);
        }
        let response = request.send().await.unwrap();
        if response.status() != 200 {
            continue;
        }
        for value in app.last().headers.get_all("cookie") {
            let value = value.to_str().unwrap();
            assert!(!value.contains(&id), "{sent:?}: the app got {value:?}");
        }
    }
}

/// SPEC §10: logs never hold session ids, passwords or credentials from a query. A navigation's
/// query travels on inside `rd` (the sign-in page's URL, then the form): the access log redacts
/// its credentials there as it does in the navigation's own line.
#[tokio::test]
async fn the_sign_in_flow_leaves_no_secret_in_the_logs() {
    let upstream = Upstream::start().await;
    let extra = "[[routes]]\npath_prefix = \"/private/\"\naccess = \"authenticated\"\n";
    let mut gh = Process::start(
        &process_config(&upstream.url(), extra),
        &[("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    let response = http1_client()
        .post(format!(
            "http://{}/admin/v1/users",
            gh.addrs["listen.admin"]
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"userName": "ada", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut browser = Visitor::new(gh.addrs["listen.http"]);
    let page = browser
        .get("/private/report?access_token=supersecret&page=2")
        .await;
    assert_eq!(page.status, 302);
    let login = page.location().to_owned();
    let form = browser.get(&login).await;
    let rd = form.hidden("rd");
    assert!(rd.contains("supersecret"), "{rd}");
    browser.sign_in("ada", PASSWORD, &rd).await;
    browser.sign_in("ada", "wrong password typed", &rd).await;
    browser
        .get(&format!(
            "/auth/step-up?rd={}",
            crate::signin::urlencoding(&rd)
        ))
        .await;
    let id = browser.session().unwrap();
    let csrf = browser.cookies[CSRF_COOKIE].clone();
    gh.signal("TERM");
    gh.child.wait().await.unwrap();
    let logs = gh.logs();
    for secret in ["supersecret", PASSWORD, "wrong password typed", &id, &csrf] {
        let found: Vec<&String> = logs.iter().filter(|l| l.contains(secret)).collect();
        assert!(found.is_empty(), "{secret:?} in {found:#?}");
    }
}

/// With `auth.require_application_token`, a session (which no browser can pair with an
/// ApplicationToken header) is refused as unauthenticated, and a navigation is sent to sign in
/// again: after signing in, the browser is sent straight back to the sign-in page, forever.
#[tokio::test]
async fn a_signed_in_browser_is_not_sent_back_to_sign_in_in_a_loop() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.auth.require_application_token = true;
    })
    .await;
    user(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());
    let page = browser.sign_in("ada", PASSWORD, "/private/x").await;
    assert_eq!(page.status, 303, "{}", page.body);
    let page = browser.get("/private/x").await;
    assert!(
        !page.location().starts_with("/auth/login"),
        "signed in, and sent to sign in again: {}",
        page.location()
    );
}

/// An application at a fresh address that answers every request with 200 and the `Set-Cookie`
/// header lines `cookies`; its URL.
async fn app_setting_cookies(cookies: Vec<String>) -> String {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let head: String = cookies
        .iter()
        .map(|c| format!("set-cookie: {c}\r\n"))
        .collect();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = app.accept().await {
            let head = head.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\n{head}content-length: 2\r\n\r\nok").as_bytes(),
                    )
                    .await;
            });
        }
    });
    format!("http://{app_addr}")
}

/// The `Set-Cookie` values a response of `gh` to `GET /public/x` carries.
async fn set_cookies_through(gh: &Gatehouse) -> Vec<String> {
    let response = http1_client()
        .get(gh.http_url("/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// An application answering `Set-Cookie: __Host-gatehouse=…` (its own bug, an injected header,
/// or a hostile app behind a shared gatehouse) plants a session of its choosing in the browser:
/// the browser then acts as whoever that session belongs to (a login CSRF).
#[tokio::test]
async fn the_application_cannot_set_gatehouses_cookies() {
    let app = app_setting_cookies(vec![
        format!("{SESSION_COOKIE}=planted; Path=/; Secure; HttpOnly"),
        format!("{CSRF_COOKIE}=planted; Path=/; Secure"),
        "theme=dark".to_owned(),
    ])
    .await;
    let gh = Gatehouse::start_url(&app, |_| {}).await;
    assert_eq!(set_cookies_through(&gh).await, vec!["theme=dark"]);
}

/// A cookie without a name (`Set-Cookie: =gatehouse=x`) is sent back by the browser as its value
/// alone, `Cookie: gatehouse=x` (RFC 6265bis §5.7.3): the application plants gatehouse's cookie
/// under no name. Browsers refuse this only for `__Host-` and `__Secure-` values, and
/// `sessions.cookie_name` may be any name.
#[tokio::test]
async fn the_application_cannot_set_gatehouses_cookies_under_no_name() {
    let app = app_setting_cookies(vec![
        "=gatehouse=planted; Path=/".to_owned(),
        " = gatehouse-csrf=planted".to_owned(),
        "=__Host-gatehouse=planted".to_owned(),
        "=theme=dark".to_owned(),
    ])
    .await;
    let gh = Gatehouse::start_url(&app, |c| c.sessions.cookie_name = "gatehouse".to_owned()).await;
    assert_eq!(
        set_cookies_through(&gh).await,
        vec!["=__Host-gatehouse=planted", "=theme=dark"]
    );
    let gh = Gatehouse::start_url(&app, |_| {}).await;
    assert_eq!(
        set_cookies_through(&gh).await,
        vec![
            "=gatehouse=planted; Path=/",
            "= gatehouse-csrf=planted",
            "=theme=dark"
        ]
    );
}

/// The sign-in page locks a user after `max_failures` wrong passwords (SPEC §10, §11), but the
/// same password can be guessed with `Authorization: Basic` on any protected route, where only
/// the per-address limit would count: spread over addresses, guessing would never lock the user.
#[tokio::test]
async fn wrong_basic_passwords_count_towards_the_users_lockout() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.mfa.lockout.max_failures = 3;
        c.auth.failed_password_limit = 1000;
    })
    .await;
    user(&gh, "ada").await;
    let client = http1_client();
    let mut compared = 0;
    for i in 0..10 {
        let response = client
            .get(gh.http_url("/private/x"))
            .basic_auth("ada", Some(format!("guess {i}")))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            401 => compared += 1,
            429 => assert!(response.headers().contains_key("retry-after")),
            other => panic!("guess {i}: {other}"),
        }
    }
    assert_eq!(compared, 3, "max_failures guesses compared, then locked");
    // Locked for Basic too, even with the right password.
    let response = client
        .get(gh.http_url("/private/x"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let mut browser = Visitor::new(gh.http_addr());
    let page = browser.sign_in("ada", PASSWORD, "/").await;
    assert_eq!(page.status, 429, "ten wrong passwords did not lock ada");
}

/// A locked user refuses every password, the right one too (SPEC §10). A right Basic password
/// remembered from before the lock must not pass either: while a client of the user's keeps it
/// remembered, whoever guesses would be told 429 for every wrong password and 200 for the right
/// one, without a hash or a counted failure, however many guesses.
#[tokio::test]
async fn a_remembered_basic_password_does_not_pass_a_locked_user() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.mfa.lockout.max_failures = 3;
        c.auth.failed_password_limit = 1000;
        c.auth.basic_cache_ttl = Duration::from_secs(600);
    })
    .await;
    user(&gh, "ada").await;
    let client = http1_client();
    let basic = |password: String| {
        client
            .get(gh.http_url("/private/x"))
            .basic_auth("ada", Some(password))
            .send()
    };
    // ada's own client, remembered from now on.
    assert_eq!(basic(PASSWORD.to_owned()).await.unwrap().status(), 200);
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(basic(format!("guess {i}")).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 429, 429], "ada is locked");
    let right = basic(PASSWORD.to_owned()).await.unwrap();
    assert_eq!(
        right.status(),
        429,
        "the right password stands out from the wrong ones while ada is locked"
    );
    assert!(right.headers().contains_key("retry-after"));
}

/// A disabled user is refused like a wrong password (SPEC §11), in the lockout's count as well:
/// if the right password gave its attempt back, the 429 would come one guess later after it, and
/// a disabled account's password could be told from the wrong ones.
#[tokio::test]
async fn a_disabled_users_right_password_counts_like_a_wrong_one() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| {
        c.mfa.lockout.max_failures = 3;
        c.auth.failed_password_limit = 1000;
    })
    .await;
    user(&gh, "ada").await;
    let patch = gatehouse::store::UserPatch {
        is_valid: Some(false),
        ..Default::default()
    };
    gh.app
        .store
        .update_user("ada", patch, 1_767_225_600)
        .await
        .unwrap();
    let mut browser = Visitor::new(gh.http_addr());
    let mut statuses = Vec::new();
    for password in ["guess 1", PASSWORD, "guess 2", "guess 3"] {
        statuses.push(browser.sign_in("ada", password, "/").await.status);
    }
    assert_eq!(statuses, vec![401, 401, 401, 429], "sign-in page");
    // Basic likewise.
    user(&gh, "bea").await;
    let patch = gatehouse::store::UserPatch {
        is_valid: Some(false),
        ..Default::default()
    };
    gh.app
        .store
        .update_user("bea", patch, 1_767_225_600)
        .await
        .unwrap();
    let client = http1_client();
    let mut statuses = Vec::new();
    for password in ["guess 1", PASSWORD, "guess 2", "guess 3"] {
        let response = client
            .get(gh.http_url("/private/x"))
            .basic_auth("bea", Some(password))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 429], "Basic");
}
