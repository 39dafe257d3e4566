//! Passkeys (SPEC §14) in a real headless Chromium with a virtual authenticator (the DevTools
//! protocol's WebAuthn domain): registering one from a session and from an enrollment link,
//! stepping up with it, signing in without a password, and the refusals that matter: an answer
//! made for another origin, a cloned authenticator (its counter gone backwards), a replayed
//! answer. Every page is checked by axe-core and, with `GATEHOUSE_SCREENSHOTS=1`, photographed
//! into `docs/screenshots/`.

use std::sync::Arc;

use gatehouse::config::Config;
use gatehouse::store::Store;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::harness::*;
use crate::mfa::totp;
use crate::signin::{CSRF_COOKIE, PASSWORD, SESSION_COOKIE, enroll_totp, session_json, user};

/// Gatehouse on an https port known beforehand, so that `server.public_url` (the relying party
/// and the one origin passkeys answer) is the address the browser opens; `/admin/` needs a
/// second factor, `/app/` a session.
pub(crate) async fn start() -> (Upstream, Gatehouse) {
    start_adjusted(|_| {}).await
}

/// [`start`], with `more` changing the configuration.
async fn start_adjusted(more: impl FnOnce(&mut Config)) -> (Upstream, Gatehouse) {
    let upstream = Upstream::start().await;
    let port = closed_port().await.port();
    let gh = Gatehouse::start_with(&upstream, |c| {
        on_port(c, port);
        more(c);
    })
    .await;
    user(&gh, "ada").await;
    (upstream, gh)
}

/// The test configuration with `server.public_url` and the https listener on `port`, and the
/// routes `/app/` (a session) and `/admin/` (a second factor).
fn on_port(c: &mut Config, port: u16) {
    c.server.public_url = format!("https://localhost:{port}");
    c.listen.https = Some(format!("127.0.0.1:{port}").parse().unwrap());
    for (prefix, access) in [
        ("/app/", gatehouse::config::Access::Authenticated),
        ("/admin/", gatehouse::config::Access::Mfa),
    ] {
        c.routes.push(gatehouse::config::AccessRule {
            path_prefix: prefix.into(),
            access,
            scopes: vec![],
            ..Default::default()
        });
    }
}

/// The path and query of `url` when it is on `gh`'s https listener.
pub(crate) fn local(gh: &Gatehouse, url: &str) -> Option<String> {
    url.strip_prefix(&gh.https_url(""))
        .filter(|rest| rest.starts_with('/'))
        .map(str::to_owned)
}

/// A virtual platform authenticator (user verification, discoverable credentials) in the
/// browser's current tab; its id.
pub(crate) async fn authenticator(browser: &Browser) -> String {
    browser
        .devtools("WebAuthn.enable", json!({"enableUI": false}))
        .await;
    let added = browser
        .devtools(
            "WebAuthn.addVirtualAuthenticator",
            json!({"options": {
                "protocol": "ctap2",
                "ctap2Version": "ctap2_1",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
                "automaticPresenceSimulation": true,
            }}),
        )
        .await;
    added["authenticatorId"]
        .as_str()
        .unwrap_or_else(|| panic!("no virtual authenticator: {added}"))
        .to_owned()
}

/// The credentials the virtual authenticator `id` holds.
pub(crate) async fn credentials(browser: &Browser, id: &str) -> Vec<Value> {
    let listed = browser
        .devtools("WebAuthn.getCredentials", json!({"authenticatorId": id}))
        .await;
    listed["credentials"]
        .as_array()
        .unwrap_or_else(|| panic!("no credentials: {listed}"))
        .clone()
}

/// Signs in with the password form from `path` (a sign-in page); where the browser lands.
pub(crate) async fn sign_in_with_password(browser: &Browser, gh: &Gatehouse, path: &str) -> String {
    browser.open(&gh.https_url(path)).await;
    browser.type_into("#user", "ada").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    browser
        .url_once(|url| !local(gh, url).is_some_and(|p| p.starts_with("/auth/login")))
        .await
}

/// Registers a passkey named `name` on the passkeys page the browser shows.
pub(crate) async fn add_passkey(browser: &Browser, name: &str) -> String {
    browser
        .execute(
            "document.getElementById('passkey-name').value = arguments[0];",
            &[json!(name)],
            false,
        )
        .await;
    browser.click("#passkey-register").await;
    let page = browser.source_containing("Your passkey was added.").await;
    let said = browser
        .execute(
            "const s = document.querySelector('.passkey-status'); return s ? s.textContent : '';",
            &[],
            false,
        )
        .await;
    assert_eq!(said, "", "the page said");
    page
}

/// The newest audit events' names and details.
pub(crate) async fn audit(gh: &Gatehouse) -> Vec<(String, String)> {
    let events = gh.admin("GET", "/admin/v1/audit?limit=50", None).await;
    events
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_passkey_added_from_a_session_steps_up_and_then_signs_in_without_a_password() {
    let (upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let authenticator = authenticator(&browser).await;
    browser
        .assert_accessible("the sign-in page with a passkey button")
        .await;
    browser.screenshots("passkey-signin").await;

    // A password session, and the first factor added from it: a passkey.
    let landed = sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/auth/passkeys"));
    assert!(browser.source().await.contains("You have no passkey yet."));
    browser.assert_accessible("the empty passkeys page").await;
    let page = add_passkey(&browser, "Laptop").await;
    assert!(page.contains("Laptop"), "{page}");
    assert!(
        page.contains("id=\"recovery-codes\""),
        "a first factor comes with recovery codes"
    );
    browser.assert_accessible("the passkeys page").await;
    browser.screenshots("passkeys").await;
    let held = credentials(&browser, &authenticator).await;
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0]["isResidentCredential"], true,
        "a discoverable passkey"
    );
    assert_eq!(held[0]["rpId"], "localhost");

    // The password session meets a second-factor page: step-up, with the passkey.
    browser.open(&gh.https_url("/admin/x")).await;
    let at = browser
        .url_once(|url| local(&gh, url).is_some_and(|p| p.starts_with("/auth/step-up")))
        .await;
    assert_eq!(
        local(&gh, &at).as_deref(),
        Some("/auth/step-up?rd=%2Fadmin%2Fx")
    );
    browser
        .assert_accessible("the step-up page with a passkey")
        .await;
    browser.screenshots("passkey-step-up").await;
    let password_only = browser.cookie(SESSION_COOKIE).await.unwrap();
    browser.click("#passkey-step-up").await;
    let landed = browser
        .url_once(|url| local(&gh, url).as_deref() == Some("/admin/x"))
        .await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/admin/x"));
    let stepped_up = browser.cookie(SESSION_COOKIE).await.unwrap();
    assert_ne!(stepped_up, password_only, "the id is rotated at step-up");
    let (_, doc) = session_json(&gh, &stepped_up).await;
    assert_eq!(doc["methods"], json!(["pwd", "hwk"]));
    let seen = upstream
        .all()
        .into_iter()
        .rfind(|s| s.target == "/admin/x")
        .expect("the upstream saw the page");
    assert_eq!(seen.headers["x-auth-methods"], "pwd,hwk");

    // Signed out, the passkey alone signs in, straight to a second-factor page.
    browser.delete_cookies().await;
    browser
        .open(&gh.https_url("/auth/login?rd=%2Fadmin%2Fy"))
        .await;
    browser.click("#passkey-sign-in").await;
    let landed = browser
        .url_once(|url| local(&gh, url).as_deref() == Some("/admin/y"))
        .await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/admin/y"));
    let passwordless = browser.cookie(SESSION_COOKIE).await.unwrap();
    let (status, doc) = session_json(&gh, &passwordless).await;
    assert_eq!(status, 200);
    assert_eq!(doc["user"], "ada");
    assert_eq!(doc["methods"], json!(["hwk", "user"]));
    let seen = upstream
        .all()
        .into_iter()
        .rfind(|s| s.target == "/admin/y")
        .expect("the upstream saw the page");
    assert_eq!(seen.headers["x-auth-user"], "ada");
    assert_eq!(seen.headers["x-auth-methods"], "hwk,user");

    let events = audit(&gh).await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.contains(&"mfa.factor.confirmed"), "{names:?}");
    assert!(
        events
            .iter()
            .any(|(e, d)| e == "signin" && d.contains("hwk,user")),
        "{events:?}"
    );
    browser.quit().await;
}

#[tokio::test]
async fn a_passkey_from_an_enrollment_link_is_renamed_and_the_last_one_is_kept_without_a_second_factor()
 {
    let (_upstream, gh) = start().await;
    // The enrollment link a webauthn ticket makes (Nexus enrollment with factor=webauthn).
    let enrollment: Value = http1_client()
        .post(gh.http_url("/v1/me/mfa-enrollment?factor=webauthn&isInteractive=true"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = enrollment["ticketUrl"].as_str().unwrap();
    let path = &url[url.find("/enroll/").unwrap()..];

    let browser = Browser::start(true).await;
    browser.open(&gh.https_url(path)).await;
    let authenticator = authenticator(&browser).await;
    browser
        .assert_accessible("the passkey enrollment page")
        .await;
    browser.screenshots("passkey-enroll").await;
    browser
        .execute(
            "document.getElementById('passkey-name').value = 'Phone';",
            &[],
            false,
        )
        .await;
    browser.click("#passkey-register").await;
    let done = browser.source_containing("recovery").await;
    assert!(done.to_lowercase().contains("recovery"), "{done}");
    assert_eq!(credentials(&browser, &authenticator).await.len(), 1);
    // The link worked once.
    browser.open(&gh.https_url(path)).await;
    assert_ne!(browser.status().await, 200);

    // A password session lists it, renames it, and may not remove the last factor.
    let landed = sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/auth/passkeys"));
    assert!(browser.source().await.contains("Phone"));
    browser
        .execute(
            "document.getElementById('rename-0').value = 'Work phone';",
            &[],
            false,
        )
        .await;
    browser.click("#rename-button-0").await;
    let page = browser.source_containing("was renamed").await;
    assert!(page.contains("Work phone"), "{page}");
    browser.click("#remove-0").await;
    let page = browser.source_containing("last second factor").await;
    assert!(page.contains("Work phone"), "still there: {page}");

    // Stepped up with it, the same session may remove it.
    browser
        .open(&gh.https_url("/auth/step-up?rd=%2Fauth%2Fpasskeys"))
        .await;
    browser.click("#passkey-step-up").await;
    browser
        .url_once(|url| local(&gh, url).as_deref() == Some("/auth/passkeys"))
        .await;
    browser.click("#remove-0").await;
    let page = browser.source_containing("was removed").await;
    assert!(page.contains("You have no passkey yet."), "{page}");
    browser.quit().await;
}

/// Asks gatehouse for sign-in options over HTTP (with a CSRF cookie of its own), has the browser
/// answer them on the page it shows, and posts the answer; the status and page gatehouse
/// answers, and the session cookie it set, if any.
pub(crate) async fn sign_in_from_page(
    gh: &Gatehouse,
    browser: &Browser,
) -> (u16, String, Option<String>) {
    sign_in_across(gh, gh, browser).await
}

/// [`sign_in_from_page`] with the options from `begin` and the answer posted to `finish`.
async fn sign_in_across(
    begin: &Gatehouse,
    finish: &Gatehouse,
    browser: &Browser,
) -> (u16, String, Option<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(begin.http_url("/auth/login"))
        .send()
        .await
        .unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(CSRF_COOKIE))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let post = |gh: &Gatehouse, fields: Vec<(&'static str, String)>| {
        client
            .post(gh.http_url("/auth/login"))
            .header("cookie", &cookie)
            .form(&fields)
            .send()
    };
    let options: Value = post(
        begin,
        vec![("csrf", csrf.clone()), ("action", "passkey-options".into())],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let answer = browser
        .execute(
            "const [options, done] = arguments;\
             const dec = s => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), c => c.charCodeAt(0));\
             const enc = b => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');\
             const pk = options.publicKey;\
             pk.challenge = dec(pk.challenge);\
             navigator.credentials.get({publicKey: pk}).then(c => done(JSON.stringify({\
               id: c.id, rawId: enc(c.rawId), type: c.type, extensions: {},\
               response: {clientDataJSON: enc(c.response.clientDataJSON),\
                 authenticatorData: enc(c.response.authenticatorData),\
                 signature: enc(c.response.signature), userHandle: enc(c.response.userHandle)}})),\
               e => done('failed: ' + e));",
            std::slice::from_ref(&options),
            true,
        )
        .await;
    let answer = answer.as_str().unwrap().to_owned();
    assert!(!answer.starts_with("failed"), "{answer}");
    let mut outcomes = Vec::new();
    // The same answer twice: the ceremony is used once, whatever the first outcome.
    for _ in 0..2 {
        let response = post(
            finish,
            vec![
                ("csrf", csrf.clone()),
                ("action", "passkey".into()),
                ("ceremony", options["ceremony"].as_str().unwrap().to_owned()),
                ("credential", answer.clone()),
            ],
        )
        .await
        .unwrap();
        let status = response.status().as_u16();
        let session = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .find(|v| v.starts_with(&format!("{SESSION_COOKIE}=")))
            .map(|v| v.split(';').next().unwrap().to_owned());
        outcomes.push((status, response.text().await.unwrap(), session));
    }
    let replayed = outcomes.pop().unwrap();
    assert_ne!(replayed.0, 303, "a replayed answer signs nobody in");
    assert_eq!(replayed.2, None);
    outcomes.pop().unwrap()
}

#[tokio::test]
async fn an_answer_made_for_another_origin_is_refused_and_a_replayed_one_too() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let _authenticator = authenticator(&browser).await;
    sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    add_passkey(&browser, "Laptop").await;

    // The page of another origin with the same host (the plain-HTTP listener): the browser signs
    // for it, and names it in the signed client data.
    let other = format!("http://localhost:{}/auth/login", gh.http_addr().port());
    browser.open(&other).await;
    let (status, page, session) = sign_in_from_page(&gh, &browser).await;
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("That passkey was not accepted."), "{page}");
    assert_eq!(session, None);
    let events = audit(&gh).await;
    assert!(
        events
            .iter()
            .any(|(e, d)| e == "mfa.code.failed" && d.contains("another origin")),
        "{events:?}"
    );

    // The same ceremony on the public URL's own page signs in (and is not accepted twice).
    browser.open(&gh.https_url("/auth/login")).await;
    let (status, _, session) = sign_in_from_page(&gh, &browser).await;
    assert_eq!(status, 303);
    assert!(session.is_some());
    browser.quit().await;
}

#[tokio::test]
async fn a_cloned_authenticator_whose_counter_went_back_is_refused() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let original = authenticator(&browser).await;
    sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    add_passkey(&browser, "Key").await;
    // Two uses move the counter forwards.
    for n in 0..2 {
        browser.delete_cookies().await;
        browser
            .open(&gh.https_url("/auth/login?rd=%2Fapp%2F"))
            .await;
        browser.click("#passkey-sign-in").await;
        let landed = browser
            .url_once(|url| local(&gh, url).as_deref() == Some("/app/"))
            .await;
        assert_eq!(local(&gh, &landed).as_deref(), Some("/app/"), "use {n}");
    }
    let credential = credentials(&browser, &original).await.remove(0);
    assert!(
        credential["signCount"].as_u64().unwrap() >= 2,
        "{credential}"
    );

    // A copy of the key whose counter starts again from zero.
    browser
        .devtools(
            "WebAuthn.removeVirtualAuthenticator",
            json!({"authenticatorId": original}),
        )
        .await;
    let clone = authenticator(&browser).await;
    let mut copied = credential.clone();
    copied["signCount"] = json!(0);
    browser
        .devtools(
            "WebAuthn.addCredential",
            json!({"authenticatorId": clone, "credential": copied}),
        )
        .await;
    browser.delete_cookies().await;
    browser
        .open(&gh.https_url("/auth/login?rd=%2Fapp%2F"))
        .await;
    browser.click("#passkey-sign-in").await;
    let page = browser.source_containing("was not accepted").await;
    assert!(page.contains("That passkey was not accepted."), "{page}");
    assert_eq!(browser.cookie(SESSION_COOKIE).await, None);
    let events = audit(&gh).await;
    assert!(
        events
            .iter()
            .any(|(e, d)| e == "mfa.code.failed" && d.contains("counter did not move forwards")),
        "{events:?}"
    );
    browser.quit().await;
}

#[tokio::test]
async fn failed_passkey_answers_count_towards_the_lockout() {
    let (_upstream, gh) = start_adjusted(|c| c.mfa.lockout.max_failures = 2).await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let _authenticator = authenticator(&browser).await;
    sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    add_passkey(&browser, "Laptop").await;

    let other = format!("http://localhost:{}/auth/login", gh.http_addr().port());
    browser.open(&other).await;
    for n in 0..2 {
        let (status, page, _) = sign_in_from_page(&gh, &browser).await;
        assert_ne!(status, 303, "answer {n}: {page}");
    }
    // Locked: even a right answer is refused, before its signature is checked.
    browser.open(&gh.https_url("/auth/login")).await;
    let (status, page, session) = sign_in_from_page(&gh, &browser).await;
    assert_eq!(status, 429, "{page}");
    assert_eq!(session, None);
    let names = gh.audit_events(20).await;
    assert!(names.contains(&"mfa.lockout".to_owned()), "{names:?}");
    browser.quit().await;
}

#[tokio::test]
async fn a_route_that_asks_for_a_passkey_takes_no_other_factor_and_a_reset_removes_passkeys() {
    let (_upstream, gh) = start_adjusted(|c| {
        let mut rule = gatehouse::config::AccessRule::new("/keys/", gatehouse::config::Access::Mfa);
        rule.factors = vec![gatehouse::config::Factor::Webauthn];
        c.routes.push(rule);
    })
    .await;
    let secret = enroll_totp(&gh, "ada").await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let _authenticator = authenticator(&browser).await;

    // With a factor already, a password session may not add a passkey (SPEC §10).
    let landed = sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/auth/passkeys"));
    browser.click("#passkey-register").await;
    let mut said = Value::Null;
    for _ in 0..50 {
        said = browser
            .execute(
                "return document.querySelector('.passkey-status').textContent;",
                &[],
                false,
            )
            .await;
        if said.as_str().is_some_and(|t| !t.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        said.as_str().unwrap().contains("second factor first"),
        "{said}"
    );

    // Stepped up with the authenticator app, it may.
    browser
        .open(&gh.https_url("/auth/step-up?rd=%2Fauth%2Fpasskeys"))
        .await;
    browser.type_into("#code", &totp(&secret, 1)).await;
    browser.click("#verify").await;
    browser
        .url_once(|url| local(&gh, url).as_deref() == Some("/auth/passkeys"))
        .await;
    let page = add_passkey(&browser, "Laptop").await;
    assert!(
        !page.contains("id=\"recovery-codes\""),
        "not a first factor"
    );

    // The TOTP session does not open a passkey route; the passkey does.
    let totp_session = browser.cookie(SESSION_COOKIE).await.unwrap();
    let refused = http1_client()
        .get(gh.http_url("/keys/x"))
        .header("cookie", format!("{SESSION_COOKIE}={totp_session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    browser.open(&gh.https_url("/keys/x")).await;
    let at = browser
        .url_once(|url| local(&gh, url).is_some_and(|p| p.starts_with("/auth/step-up")))
        .await;
    assert!(
        local(&gh, &at).unwrap().starts_with("/auth/step-up"),
        "{at}"
    );
    // Only the passkey is offered: a code would not open the route.
    let page = browser.source().await;
    assert!(page.contains("id=\"passkey-step-up\""), "{page}");
    assert!(!page.contains("id=\"code\""), "{page}");
    browser.click("#passkey-step-up").await;
    let landed = browser
        .url_once(|url| local(&gh, url).as_deref() == Some("/keys/x"))
        .await;
    assert_eq!(local(&gh, &landed).as_deref(), Some("/keys/x"));

    // The admin's MFA reset takes the passkeys too: they sign nobody in any more.
    let (status, _) = gh
        .admin("POST", "/admin/v1/users/ada/mfa/reset", None)
        .await;
    assert!(status == 200 || status == 204, "{status}");
    browser.delete_cookies().await;
    browser
        .open(&gh.https_url("/auth/login?rd=%2Fapp%2F"))
        .await;
    browser.click("#passkey-sign-in").await;
    let page = browser.source_containing("was not accepted").await;
    assert!(page.contains("That passkey was not accepted."), "{page}");
    assert_eq!(browser.cookie(SESSION_COOKIE).await, None);
    browser.quit().await;
}

#[tokio::test]
async fn a_ceremony_begun_on_one_replica_finishes_on_another() {
    let upstream = Upstream::start().await;
    let db = crate::pg::Database::on_shared_server().await;
    let port = closed_port().await.port();
    let mut replicas = Vec::new();
    for n in 0..2 {
        let store: Arc<dyn Store> = Arc::new(
            gatehouse::store::postgres::PgStore::connect(&db.url(), 4)
                .await
                .unwrap(),
        );
        let shared = |c: &mut Config| {
            // One public URL, served by the first; one master key, so CSRF tokens hold on both.
            on_port(c, port);
            if n > 0 {
                c.listen.https = Some("127.0.0.1:0".parse().unwrap());
            }
            c.secrets.master_key = Some(gatehouse::config::Secret::new(
                "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=",
            ));
        };
        replicas.push(Gatehouse::start_store(&upstream.url(), shared, move |_| store).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    user(a, "ada").await;
    let browser = Browser::start(true).await;
    browser.open(&a.https_url("/auth/login")).await;
    let _authenticator = authenticator(&browser).await;
    sign_in_with_password(&browser, a, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    add_passkey(&browser, "Laptop").await;

    browser.open(&a.https_url("/auth/login")).await;
    let (status, page, session) = sign_in_across(a, b, &browser).await;
    assert_eq!(status, 303, "{page}");
    let session = session.unwrap();
    let id = session.split_once('=').unwrap().1;
    let (status, doc) = session_json(a, id).await;
    assert_eq!(status, 200);
    assert_eq!(doc["methods"], json!(["hwk", "user"]));
    browser.quit().await;
}
