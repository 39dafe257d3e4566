//! Sign-in through external OpenID providers in a real headless Chromium (see `browser`), through
//! the whole redirect dance at a real provider (see `idp`): the sign-in page with both
//! providers' buttons beside the password form, each provider and a local password signing in,
//! cancelling at the provider, and signing out at the provider ending the session through its
//! back-channel. The same flows one request at a time, and every failure, are in `oidc`.

use serde_json::Value;

use crate::browser::Browser;
use crate::harness::*;
use crate::oidc::{CORP_CLIENT, Oidc, Options};
use crate::signin::{PASSWORD, SESSION_COOKIE, user};

/// Gatehouse on an https port the provider can send the browser back to.
async fn start() -> Oidc {
    Oidc::start_with(Options {
        reachable: true,
        ..Options::default()
    })
    .await
}

/// The path and query of `url` when it is on gatehouse; `None` for anywhere else.
fn local(o: &Oidc, url: &str) -> Option<String> {
    url.strip_prefix(&o.public_url)
        .filter(|rest| rest.starts_with('/'))
        .map(str::to_owned)
}

/// The button of the provider `id` on the sign-in page (a form's button, or a link).
fn button(id: &str) -> String {
    format!("form[action='/auth/login/{id}'] button, a[href^='/auth/login/{id}?']")
}

/// At the provider's login page: signs in as `login` (any password), consents when asked, and
/// returns where the browser lands back at gatehouse.
async fn at_provider(browser: &Browser, o: &Oidc, login: &str) -> String {
    let url = browser
        .url_once(|url| url.contains("/interaction/") || local(o, url).is_some())
        .await;
    assert!(url.starts_with(&o.idp.issuer), "not at the provider: {url}");
    browser.source_containing("name=\"login\"").await;
    browser.type_into("input[name=login]", login).await;
    browser.type_into("input[name=password]", "any").await;
    browser.click("button.login-submit").await;
    for _ in 0..100 {
        let url = browser.url().await;
        if local(o, &url).is_some() {
            return url;
        }
        if browser.source().await.contains("value=\"consent\"") {
            browser.click("button.login-submit").await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the provider never sent the browser back: at {}",
        browser.url().await
    );
}

/// Forgets the provider's cookies (its session), so that the next sign-in there starts afresh.
async fn forget_provider(browser: &Browser, o: &Oidc) {
    browser
        .open(&o.idp.url("/.well-known/openid-configuration"))
        .await;
    browser.delete_cookies().await;
}

#[tokio::test]
async fn the_sign_in_page_offers_both_providers_beside_the_password_form_and_each_signs_in() {
    let o = start().await;
    user(&o.gh, "ada").await;
    let browser = Browser::start(true).await;
    browser.open(&o.gh.https_url("/private/page?x=1")).await;
    assert_eq!(
        local(&o, &browser.url().await).as_deref(),
        Some("/auth/login?rd=%2Fprivate%2Fpage%3Fx%3D1")
    );
    assert_eq!(browser.text(&button("corp")).await, "Corporate SSO");
    assert_eq!(browser.text(&button("partner")).await, "Partner login");
    browser.find("#user").await;
    browser.find("#password").await;
    browser
        .assert_accessible("the sign-in page with providers")
        .await;
    browser.screenshots("signin-providers").await;

    browser.click(&button("corp")).await;
    at_provider(&browser, &o, "alice").await;
    let landed = browser
        .url_once(|url| local(&o, url).as_deref() == Some("/private/page?x=1"))
        .await;
    assert_eq!(local(&o, &landed).as_deref(), Some("/private/page?x=1"));
    assert!(
        browser
            .source_containing("upstream ok")
            .await
            .contains("upstream ok")
    );
    assert_eq!(o.seen("/private/page?x=1").headers["x-auth-user"], "alice");
    assert!(browser.cookie(SESSION_COOKIE).await.is_some());
    browser.open(&o.gh.https_url("/auth/session")).await;
    let text = browser.text("body").await;
    let session: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(session["user"], "alice");

    // The other provider, as another person.
    forget_provider(&browser, &o).await;
    browser
        .open(&o.gh.https_url("/auth/login?rd=%2Fprivate%2Fbob"))
        .await;
    browser.click(&button("partner")).await;
    at_provider(&browser, &o, "bob").await;
    browser
        .url_once(|url| local(&o, url).as_deref() == Some("/private/bob"))
        .await;
    browser.source_containing("upstream ok").await;
    assert_eq!(o.seen("/private/bob").headers["x-auth-user"], "bob");

    // And a local password on the same page.
    browser.delete_cookies().await;
    browser
        .open(&o.gh.https_url("/auth/login?rd=%2Fprivate%2Fada"))
        .await;
    browser.type_into("#user", "ada").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    browser
        .url_once(|url| local(&o, url).as_deref() == Some("/private/ada"))
        .await;
    browser.source_containing("upstream ok").await;
    assert_eq!(o.seen("/private/ada").headers["x-auth-user"], "ada");
    browser.quit().await;
}

#[tokio::test]
async fn signing_out_at_the_provider_ends_the_session_in_the_browser() {
    let o = start().await;
    let browser = Browser::start(true).await;
    browser
        .open(&o.gh.https_url("/auth/login?rd=%2Fprivate%2F"))
        .await;
    browser.click(&button("corp")).await;
    at_provider(&browser, &o, "alice").await;
    browser
        .url_once(|url| local(&o, url).as_deref() == Some("/private/"))
        .await;
    browser.source_containing("upstream ok").await;
    let session = browser
        .cookie(SESSION_COOKIE)
        .await
        .expect("a session cookie");

    browser.open(&o.idp.url("/session/end")).await;
    browser.click("button[name=logout]").await;
    browser.source_containing("Sign-out Success").await;
    let deliveries = o.idp.backchannel_deliveries().await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["client_id"], CORP_CLIENT);
    assert_eq!(deliveries[0]["ok"], true, "{deliveries:?}");

    // The browser, still holding its cookie, is sent to sign in again.
    browser.open(&o.gh.https_url("/private/again")).await;
    let url = browser.url().await;
    assert_eq!(
        local(&o, &url).as_deref(),
        Some("/auth/login?rd=%2Fprivate%2Fagain")
    );
    let replayed = http1_client()
        .get(o.gh.http_url("/auth/session"))
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 401);
    browser.quit().await;
}

#[tokio::test]
async fn cancelling_at_the_provider_shows_an_accessible_page_that_offers_to_try_again() {
    let o = start().await;
    let browser = Browser::start(true).await;
    browser
        .open(&o.gh.https_url("/auth/login?rd=%2Fprivate%2F"))
        .await;
    browser.click(&button("corp")).await;
    browser.source_containing("name=\"login\"").await;
    browser.click("a[href$='/abort']").await;
    let url = browser
        .url_once(|url| local(&o, url).is_some_and(|p| p.starts_with("/auth/callback/corp")))
        .await;
    assert!(local(&o, &url).is_some(), "{url}");
    let page = browser.source_containing("/auth/login").await;
    assert_eq!(browser.status().await, 403, "{page}");
    assert_eq!(browser.cookie(SESSION_COOKIE).await, None);
    browser
        .assert_accessible("the page of a sign-in refused at the provider")
        .await;
    browser.screenshots("signin-provider-refused").await;

    browser.click("a[href^='/auth/login']").await;
    let url = browser
        .url_once(|url| local(&o, url).is_some_and(|p| p.starts_with("/auth/login")))
        .await;
    assert!(
        local(&o, &url).is_some_and(|p| p.starts_with("/auth/login")),
        "{url}"
    );
    browser.find(&button("corp")).await;
    browser.quit().await;
}
