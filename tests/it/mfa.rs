//! Nexus MFA: enrollment, the enrollment page, TOTP/SMS/email verification, lockout (SECURITY.md
//! promises 5, 7, 9).

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use crate::harness::*;
use crate::smtp::Smtp;

const PASSWORD: &str = "correct horse battery";

fn basic() -> (String, String) {
    use base64::Engine;
    (
        "authorization".into(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ada:{PASSWORD}"))
        ),
    )
}

async fn post(
    gh: &Gatehouse,
    path: &str,
    headers: &[(String, String)],
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = gh.tls_client(true).post(gh.https_url(path));
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

/// Starts gatehouse with a user `ada` (password, email, phone).
async fn start(
    upstream: &Upstream,
    adjust: impl FnOnce(&mut gatehouse::config::Config),
) -> (Gatehouse, u64) {
    let gh = Gatehouse::start_with(upstream, adjust).await;
    let user = gh
        .create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com", "phone": "+14155550123"}))
        .await;
    (gh, user["id"].as_u64().unwrap())
}

/// The path of a ticket URL (`https://localhost/enroll/…` → `/enroll/…`).
pub fn ticket_path(url: &str) -> String {
    let path = url.split_once("://").unwrap().1;
    format!("/{}", path.split_once('/').unwrap().1)
}

async fn page(gh: &Gatehouse, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let response = gh
        .tls_client(true)
        .get(gh.https_url(path))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.unwrap(), headers)
}

pub fn secret_from(html: &str) -> Vec<u8> {
    let start = html
        .find("<code id=\"secret\">")
        .expect("the page shows the secret")
        + 18;
    let end = start + html[start..].find("</code>").unwrap();
    totp_rs::Secret::try_from_base32(&html[start..end])
        .unwrap()
        .as_ref()
        .to_vec()
}

/// The TOTP code for `secret` at `offset` steps from now, computed independently of gatehouse.
pub fn totp(secret: &[u8], offset: i64) -> String {
    let totp = totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .build()
        .unwrap();
    let time = (crate::keys::now() + offset * 30) as u64;
    totp.generate(time).to_string()
}

/// A 6-digit code that is not `right`.
pub fn wrong_code(right: &str) -> &'static str {
    if right == "000000" {
        "111111"
    } else {
        "000000"
    }
}

/// Enrolls an authenticator app and confirms it with the current code; returns the secret.
async fn enroll_and_confirm_otp(gh: &Gatehouse) -> Vec<u8> {
    let secret = enroll_otp(gh).await;
    let body = json!({"otp": totp(&secret, 0)});
    let (status, granted, _) =
        post(gh, "/v1/me/verify-enrollment-otp", &[basic()], Some(body)).await;
    assert_eq!(status, 200, "{granted}");
    secret
}

/// Enrolls an authenticator app through the API and the page; returns the secret.
async fn enroll_otp(gh: &Gatehouse) -> Vec<u8> {
    let (status, enrollment, _) = post(
        gh,
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=true",
        &[basic()],
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrollment}");
    let (status, html, _) = page(gh, &ticket_path(enrollment["ticketUrl"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{html}");
    secret_from(&html)
}

#[tokio::test]
async fn totp_enrollment_yields_a_token_that_opens_mfa_routes() {
    let upstream = Upstream::start().await;
    let (gh, user_id) = start(&upstream, |_| {}).await;
    let (status, enrollment, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=TRUE",
        &[basic()],
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrollment}");
    assert_eq!(enrollment["emailSent"], false);
    let ticket_url = enrollment["ticketUrl"].as_str().unwrap();
    assert_eq!(
        ticket_url,
        format!(
            "https://localhost/enroll/{}",
            enrollment["ticketId"].as_str().unwrap()
        )
    );
    assert!(enrollment["ticketId"].as_str().unwrap().len() >= 22);

    let (status, html, headers) = page(&gh, &ticket_path(ticket_url)).await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'") && !csp.contains("script"),
        "{csp}"
    );
    assert!(!html.contains("<script"), "the page needs no script");
    assert!(
        html.contains("<svg")
            && html.contains("autocomplete=\"one-time-code\"")
            && html.contains("inputmode=\"numeric\"")
    );
    let secret = secret_from(&html);
    assert_eq!(secret.len(), 20, "160-bit secret");

    let (status, granted, _) = post(
        &gh,
        "/v1/me/verify-enrollment-otp",
        &[basic()],
        Some(json!({"otp": totp(&secret, 0), "oob": null})),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["tokenType"], "Bearer");
    assert_eq!(granted["expiresIn"], 3600);
    assert!(
        granted["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "mfa"),
        "{granted}"
    );
    let token = granted["accessToken"].as_str().unwrap();

    // The token verifies against the published JWKS and carries the factor.
    let jwks: JwkSet = gh
        .tls_client(true)
        .get(gh.https_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["gatehouse"]);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], user_id.to_string().as_str());
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));

    let response = http1_client()
        .get(gh.http_url("/secure/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().headers["x-auth-methods"], "pwd,otp");

    // The ticket is single use.
    let (status, html, _) = page(&gh, &ticket_path(ticket_url)).await;
    assert_eq!(status, 410, "{html}");
}

#[tokio::test]
async fn replayed_totp_code_is_rejected() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |_| {}).await;
    let secret = enroll_otp(&gh).await;
    let code = totp(&secret, 0);
    let (status, _, _) = post(
        &gh,
        "/v1/me/verify-enrollment-otp",
        &[basic()],
        Some(json!({"otp": code})),
    )
    .await;
    assert_eq!(status, 200);
    // The step used to enroll cannot be used again to verify.
    let (status, problem, _) = post(
        &gh,
        "/v1/me/verify-otp",
        &[basic()],
        Some(json!({"otp": code})),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(
        problem["type"],
        "https://gatehouse.dev/problems/invalid-code"
    );
    // The next step works once.
    let next = totp(&secret, 1);
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"otp": next}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"otp": next}))
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn five_failures_lock_out_even_the_right_code() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |_| {}).await;
    let secret = enroll_and_confirm_otp(&gh).await;
    let right = totp(&secret, 1);
    let wrong = wrong_code(&right);
    for i in 0..5 {
        let (status, _, _) = post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"otp": wrong})),
        )
        .await;
        assert_eq!(status, if i < 4 { 403 } else { 429 }, "attempt {i}");
    }
    let (status, problem, headers) = post(
        &gh,
        "/v1/me/verify-otp",
        &[basic()],
        Some(json!({"otp": right})),
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    let retry: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((800..=900).contains(&retry), "{retry}");
}

#[tokio::test]
async fn concurrent_wrong_guesses_are_all_counted() {
    let upstream = Upstream::start().await;
    let (gh, user_id) = start(&upstream, |c| c.mfa.lockout.max_failures = 100).await;
    let secret = enroll_and_confirm_otp(&gh).await;
    let right = totp(&secret, 1);
    let wrong = wrong_code(&right);
    let gh = std::sync::Arc::new(gh);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let gh = gh.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &gh,
                "/v1/me/verify-otp",
                &[basic()],
                Some(json!({"otp": wrong})),
            )
            .await
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 403);
    }
    let state = gh.app.store.lockout(user_id).await.unwrap();
    assert_eq!(state.failures.len(), 30);
}

#[tokio::test]
async fn enrollment_page_works_by_plain_form_post_and_shows_recovery_codes_once() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |_| {}).await;
    let (_, enrollment, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?isInteractive=true",
        &[basic()],
        None,
    )
    .await;
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let (_, html, _) = page(&gh, &path).await;
    let secret = secret_from(&html);
    let client = gh.tls_client(false);
    let wrong = client
        .post(gh.https_url(&path))
        .form(&[("code", "12345x")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert!(wrong.text().await.unwrap().contains("not right"));
    let done = client
        .post(gh.https_url(&path))
        .form(&[("code", totp(&secret, 0))])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let html = done.text().await.unwrap();
    assert!(html.contains("all set"), "{html}");
    let start = html.find("<ol id=\"recovery-codes\">").unwrap();
    let codes: Vec<String> = html[start..]
        .split("<li>")
        .skip(1)
        .map(|s| s.split("</li>").next().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    // A recovery code works once, typed sloppily.
    let sloppy = codes[3].to_uppercase().replace('-', " ");
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"otp": sloppy}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"otp": codes[3]}))
        )
        .await
        .0,
        403
    );
    // The page is gone now.
    assert_eq!(page(&gh, &path).await.0, 410);
}

#[tokio::test]
async fn unknown_and_expired_tickets_get_clear_pages() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |c| c.mfa.ticket_ttl = Duration::from_secs(1)).await;
    let (status, html, _) = page(&gh, "/enroll/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(status, 404);
    assert!(html.contains("not valid"));
    let (_, enrollment, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?isInteractive=true",
        &[basic()],
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, html, _) =
        page(&gh, &ticket_path(enrollment["ticketUrl"].as_str().unwrap())).await;
    assert_eq!(status, 410);
    assert!(html.contains("expired"));
    let (status, _, _) = post(
        &gh,
        "/v1/me/verify-enrollment-otp",
        &[basic()],
        Some(json!({"otp": "123456"})),
    )
    .await;
    assert_eq!(status, 404, "an expired ticket is no pending enrollment");
}

#[tokio::test]
async fn a_malformed_ticket_id_is_an_unknown_ticket_never_forwarded() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |_| {}).await;
    let long = format!("/enroll/{}", "A".repeat(65));
    for path in ["/enroll/%C2%84", "/enroll/a.b~c", long.as_str()] {
        let (status, html, headers) = page(&gh, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(html.contains("not valid"), "{path}: {html}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let response = gh
            .tls_client(true)
            .post(gh.https_url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("code=123456")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "POST {path}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn non_interactive_enrollment_emails_the_link_over_smtp() {
    let upstream = Upstream::start().await;
    let smtp = Smtp::start().await;
    let url = smtp.url();
    let (gh, _) = start(&upstream, |c| {
        c.smtp.url = Some(gatehouse::config::Secret::new(url))
    })
    .await;
    let (status, enrollment, _) = post(&gh, "/v1/me/mfa-enrollment", &[basic()], None).await;
    assert_eq!(status, 200, "{enrollment}");
    assert_eq!(enrollment["emailSent"], true);
    let messages = smtp.wait_for(1).await;
    let mail = &messages[0];
    assert!(mail.contains("ada@example.com"), "{mail}");
    assert!(
        mail.contains(enrollment["ticketUrl"].as_str().unwrap()),
        "the link is in the mail: {mail}"
    );
    assert!(mail.contains("text/plain") && mail.contains("text/html"));
    // The link opens with no cookie or session.
    assert_eq!(
        page(&gh, &ticket_path(enrollment["ticketUrl"].as_str().unwrap()))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn smtp_down_still_answers_200_with_email_not_sent() {
    let upstream = Upstream::start().await;
    let dead = closed_port().await;
    let (gh, _) = start(&upstream, |c| {
        c.smtp.url = Some(gatehouse::config::Secret::new(format!("smtp://{dead}")));
    })
    .await;
    let (status, enrollment, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?isInteractive=false",
        &[basic()],
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrollment}");
    assert_eq!(enrollment["emailSent"], false);
    assert!(enrollment["ticketUrl"].is_string());
}

#[tokio::test]
async fn sms_factor_is_enrolled_and_verified_with_codes_sent_to_the_webhook() {
    let upstream = Upstream::start().await;
    let (gh, provider, path) = start_sms_enrollment(&upstream, 5).await;
    let (_, html, _) = page(&gh, &path).await;
    assert!(html.contains("+1••••••0123"), "{html}");
    let client = gh.tls_client(false);
    let sent = client
        .post(gh.https_url(&path))
        .form(&[("action", "send")])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let code = sms_code(&provider);
    assert_eq!(
        client
            .post(gh.https_url(&path))
            .form(&[("code", code.as_str())])
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Later: a challenge sends a fresh code; it verifies once.
    let (status, _, _) = post(&gh, "/v1/me/mfa-challenge?factor=sms", &[basic()], None).await;
    assert_eq!(status, 202);
    let code = sms_code(&provider);
    let (status, granted, _) = post(
        &gh,
        "/v1/me/verify-otp",
        &[basic()],
        Some(json!({"oob": code})),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"oob": code}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        post(&gh, "/v1/me/mfa-challenge?factor=email", &[basic()], None)
            .await
            .0,
        404
    );
}

/// Gatehouse with SMS delivered to a webhook the test reads (the returned provider), and an SMS
/// enrollment started for `ada`; returns the enrollment page's path.
async fn start_sms_enrollment(
    upstream: &Upstream,
    send_limit: u32,
) -> (Gatehouse, Upstream, String) {
    let provider = Upstream::start().await;
    let sms_url = format!("{}/sms", provider.url());
    let (gh, _) = start(upstream, |c| {
        c.sms.kind = "webhook".into();
        c.sms.url = Some(sms_url);
        c.mfa.send_limit = send_limit;
    })
    .await;
    let (_, enrollment, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?factor=sms&isInteractive=true",
        &[basic()],
        None,
    )
    .await;
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    (gh, provider, path)
}

/// The 6-digit code in the last SMS the webhook received.
fn sms_code(provider: &Upstream) -> String {
    let sms: Value = serde_json::from_slice(&provider.last().body).unwrap();
    assert_eq!(sms["to"], "+14155550123");
    let body = sms["body"].as_str().unwrap();
    body.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap()
        .to_owned()
}

/// Confirms ada's pending authenticator-app enrollment with the code of `secret`: the grant,
/// whose `accessToken` carries the second factor.
async fn confirmed(gh: &Gatehouse, secret: &[u8]) -> Value {
    let (status, granted, _) = post(
        gh,
        "/v1/me/verify-enrollment-otp",
        &[basic()],
        Some(json!({"otp": totp(secret, 0)})),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    granted
}

/// The headers of a Nexus call with `granted`'s access token and a new application's
/// ApplicationToken beside it.
async fn with_application(gh: &Gatehouse, granted: &Value) -> [(String, String); 2] {
    let (_, app) = gh
        .admin(
            "POST",
            "/admin/v1/applications",
            Some(json!({"name": "portal"})),
        )
        .await;
    [
        (
            "authorization".to_owned(),
            format!("Bearer {}", granted["accessToken"].as_str().unwrap()),
        ),
        (
            "applicationtoken".to_owned(),
            app["token"].as_str().unwrap().to_owned(),
        ),
    ]
}

#[tokio::test]
async fn a_token_whose_user_was_deleted_gets_404_from_nexus_and_401_elsewhere() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |_| {}).await;
    let secret = enroll_otp(&gh).await;
    let granted = confirmed(&gh, &secret).await;
    let headers = with_application(&gh, &granted).await;
    let bearer = headers[0].1.clone();
    // While the user exists, a token refused for another reason stays 401, never 404.
    let user = "/admin/v1/users/ada";
    let disabled = Some(json!({"disabled": true}));
    assert_eq!(gh.admin("PATCH", user, disabled).await.0, 200);
    let (status, body, _) = post(&gh, "/v1/me/recovery-codes", &headers, None).await;
    assert_eq!(status, 401, "{body}");
    let enabled = Some(json!({"disabled": false}));
    assert_eq!(gh.admin("PATCH", user, enabled).await.0, 200);
    let (status, _) = gh.admin("DELETE", "/admin/v1/users/ada", None).await;
    assert_eq!(status, 204);
    for path in [
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=true",
        "/v1/me/recovery-codes",
    ] {
        let (status, problem, _) = post(&gh, path, &headers, None).await;
        assert_eq!(status, 404, "{path}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("user-not-found"),
            "{problem}"
        );
        // Without its ApplicationToken, or with a wrong one, the token is refused as before.
        assert_eq!(post(&gh, path, &headers[..1], None).await.0, 401, "{path}");
        let wrong = [
            headers[0].clone(),
            (
                "applicationtoken".to_owned(),
                "not-an-application".to_owned(),
            ),
        ];
        assert_eq!(post(&gh, path, &wrong, None).await.0, 401, "{path}");
    }
    // A forged token naming no user is 401, and proxied routes refuse the deleted user's.
    let forged = [
        ("authorization".to_owned(), format!("{bearer}x")),
        headers[1].clone(),
    ];
    let (status, _, _) = post(&gh, "/v1/me/recovery-codes", &forged, None).await;
    assert_eq!(status, 401);
    let proxied = http1_client()
        .get(gh.http_url("/private/x"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 401);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_user_with_a_factor_is_told_so_whatever_contact_details_the_request_lacks() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    // Neither an email address nor a phone number.
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    enroll_and_confirm_otp(&gh).await;
    for path in [
        "/v1/me/mfa-enrollment?factor=sms&isInteractive=true",
        "/v1/me/mfa-enrollment?factor=email&isInteractive=true",
        "/v1/me/mfa-enrollment?factor=otp",
    ] {
        let (status, problem, _) = post(&gh, path, &[basic()], None).await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("factor-already-enrolled"),
            "{path}: {problem}"
        );
    }
}

#[tokio::test]
async fn a_second_factor_needs_a_credential_with_a_second_factor() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |_| {}).await;
    let secret = enroll_otp(&gh).await;
    let granted = confirmed(&gh, &secret).await;
    let (status, problem, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?factor=email&isInteractive=true",
        &[basic()],
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("factor-already-enrolled")
    );
    // With the MFA token (and the ApplicationToken a Bearer needs here), it is allowed.
    let headers = with_application(&gh, &granted).await;
    let (status, body, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?factor=email&isInteractive=true",
        &headers,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A Bearer token alone is not enough for the Nexus family.
    let (status, _, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?factor=email&isInteractive=true",
        &headers[..1],
        None,
    )
    .await;
    assert_eq!(status, 401);
    // Recovery codes can be replaced with the MFA token, not with a password alone.
    let (status, codes, _) = post(&gh, "/v1/me/recovery-codes", &headers, None).await;
    assert_eq!(status, 200);
    assert_eq!(codes["recoveryCodes"].as_array().unwrap().len(), 10);
    assert_eq!(
        post(&gh, "/v1/me/recovery-codes", &[basic()], None).await.0,
        403
    );
}

#[tokio::test]
async fn bad_inputs_get_the_right_4xx_and_change_nothing() {
    let upstream = Upstream::start().await;
    let (gh, user_id) = start(&upstream, |_| {}).await;
    for (path, body, expected) in [
        ("/v1/me/mfa-enrollment?factor=voice", None, 400),
        ("/v1/me/mfa-enrollment?isInteractive=yes", None, 400),
        (
            "/v1/me/verify-enrollment-otp",
            Some(json!({"otp": "123456", "oob": "123456"})),
            400,
        ),
        (
            "/v1/me/verify-enrollment-otp",
            Some(json!({"otp": null, "oob": null})),
            400,
        ),
        ("/v1/me/verify-enrollment-otp", Some(json!({})), 400),
        ("/v1/me/verify-otp", Some(json!({"otp": 123456})), 400),
        (
            "/v1/me/verify-enrollment-otp",
            Some(json!({"otp": "123456", "accessToken": "not-a-token"})),
            400,
        ),
        ("/v1/me/mfa-challenge?factor=otp", None, 400),
    ] {
        let (status, problem, headers) = post(&gh, path, &[basic()], body).await;
        assert_eq!(status, expected, "{path}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
    }
    let client = gh.tls_client(true);
    let malformed = client
        .post(gh.https_url("/v1/me/verify-otp"))
        .header("authorization", basic().1)
        .body("{\"otp\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested = client
        .post(gh.https_url("/v1/me/verify-otp"))
        .header("authorization", basic().1)
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(nested.status(), 400);
    // Deep nesting in a field the body type ignores is refused as well.
    let ignored = format!(
        r#"{{"otp":"123456","extra":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let nested_ignored = client
        .post(gh.https_url("/v1/me/verify-otp"))
        .header("authorization", basic().1)
        .body(ignored)
        .send()
        .await
        .unwrap();
    assert_eq!(nested_ignored.status(), 400);
    let huge = client
        .post(gh.https_url("/v1/me/verify-otp"))
        .header("authorization", basic().1)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let wrong_method = client
        .get(gh.https_url("/v1/me/verify-otp"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let anonymous = client
        .post(gh.https_url("/v1/me/mfa-enrollment"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    assert!(
        gh.app
            .store
            .newest_pending_ticket(user_id, crate::keys::now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(gh.app.store.factors(user_id).await.unwrap().is_empty());
    assert_eq!(upstream.hits(), 0, "local endpoints are never forwarded");
}

#[tokio::test]
async fn confirmed_factor_survives_kill_9_right_after_the_200() {
    let upstream = Upstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let extra = format!(
        "[store]\npath = \"{}\"\n[[routes]]\npath_prefix = \"/secure/\"\naccess = \"mfa\"\n",
        data.path().display()
    );
    let config = process_config(&upstream.url(), &extra);
    let env = [("GATEHOUSE_ADMIN_TOKEN", "dS7BWKPPj6qMfyOLPBlJKv2zfGFyrlX6")];
    let mut gh = Process::start(&config, &env).await;
    let client = http1_client();
    let admin = format!("http://{}", gh.addrs["listen.admin"]);
    let created = client
        .post(format!("{admin}/admin/v1/users"))
        .bearer_auth("dS7BWKPPj6qMfyOLPBlJKv2zfGFyrlX6")
        .json(&json!({"userName": "ada", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let enrollment: Value = client
        .post(gh.http_url("/v1/me/mfa-enrollment?isInteractive=true"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let html = client
        .get(gh.http_url(&ticket_path(enrollment["ticketUrl"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let code = totp(&secret_from(&html), 0);
    let confirmed = client
        .post(gh.http_url("/v1/me/verify-enrollment-otp"))
        .basic_auth("ada", Some(PASSWORD))
        .json(&json!({"otp": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    gh.signal("KILL");
    gh.child.wait().await.unwrap();

    let gh = Process::start(&config, &env).await;
    // The factor is confirmed: a password alone may not add another, and the used step stays used.
    let again = client
        .post(gh.http_url("/v1/me/mfa-enrollment?isInteractive=true"))
        .basic_auth("ada", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let replay = client
        .post(gh.http_url("/v1/me/verify-otp"))
        .basic_auth("ada", Some(PASSWORD))
        .json(&json!({"otp": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 403);
}

#[tokio::test]
async fn mfa_flows_leave_audit_events_and_no_secret_in_the_store() {
    let upstream = Upstream::start().await;
    let (gh, _) = start(&upstream, |_| {}).await;
    let secret = enroll_otp(&gh).await;
    let code = totp(&secret, 0);
    let (_, granted, _) = post(
        &gh,
        "/v1/me/verify-enrollment-otp",
        &[basic()],
        Some(json!({"otp": code})),
    )
    .await;
    let wrong = wrong_code(&totp(&secret, 1));
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"otp": wrong}))
        )
        .await
        .0,
        403
    );
    let names = gh.audit_events(50).await;
    for expected in [
        "mfa.enrollment.created",
        "mfa.factor.confirmed",
        "token.issued",
        "mfa.code.failed",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    gh.app.store.flush().await.unwrap();
    let b32 = totp_rs::Secret::from(secret.clone()).to_base32();
    let token = granted["accessToken"].as_str().unwrap().to_owned();
    let mut files = vec![gh.dir.path().join("data")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for needle in [
            &secret[..],
            b32.as_bytes(),
            token.as_bytes(),
            PASSWORD.as_bytes(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a secret is stored in clear in {}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn asking_for_a_new_code_does_not_reset_the_failure_count() {
    let upstream = Upstream::start().await;
    let (gh, provider, path) = start_sms_enrollment(&upstream, 3).await;
    let client = gh.tls_client(false);
    client
        .post(gh.https_url(&path))
        .form(&[("action", "send")])
        .send()
        .await
        .unwrap();
    let code = sms_code(&provider);
    assert_eq!(
        client
            .post(gh.https_url(&path))
            .form(&[("code", code.as_str())])
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Four failures, then a fresh code: the count stands, and the fifth failure locks.
    assert_eq!(
        post(&gh, "/v1/me/mfa-challenge?factor=sms", &[basic()], None)
            .await
            .0,
        202
    );
    let code = sms_code(&provider);
    let wrong = wrong_code(&code);
    for _ in 0..4 {
        assert_eq!(
            post(
                &gh,
                "/v1/me/verify-otp",
                &[basic()],
                Some(json!({"oob": wrong}))
            )
            .await
            .0,
            403
        );
    }
    assert_eq!(
        post(&gh, "/v1/me/mfa-challenge?factor=sms", &[basic()], None)
            .await
            .0,
        202
    );
    let fresh = sms_code(&provider);
    let wrong = wrong_code(&fresh);
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"oob": wrong}))
        )
        .await
        .0,
        429
    );
    assert_eq!(
        post(
            &gh,
            "/v1/me/verify-otp",
            &[basic()],
            Some(json!({"oob": fresh}))
        )
        .await
        .0,
        429
    );
}

#[tokio::test]
async fn codes_are_sent_at_most_send_limit_times_per_window() {
    let upstream = Upstream::start().await;
    let (gh, provider, path) = start_sms_enrollment(&upstream, 3).await;
    let client = gh.tls_client(false);
    for _ in 0..3 {
        let sent = client
            .post(gh.https_url(&path))
            .form(&[("action", "send")])
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200);
    }
    let limited = client
        .post(gh.https_url(&path))
        .form(&[("action", "send")])
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(provider.hits(), 3);
}

/// The store a test runs gatehouse on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// sled, each operation delayed a little.
    Sled,
    Postgres,
}

/// Gatehouse on `backend`. For PostgreSQL, a fresh database that lives as long as the returned
/// guard (bind it to a named variable: `_` would drop it at once).
pub async fn start_on(
    upstream: &Upstream,
    backend: Backend,
    adjust: impl FnOnce(&mut gatehouse::config::Config),
) -> (Gatehouse, Option<crate::pg::Database>) {
    match backend {
        // Every operation takes a moment, as on a loaded disk, so that concurrent requests
        // overlap between their reads and writes as they can in production.
        Backend::Sled => {
            let gh = Gatehouse::start_store(&upstream.url(), adjust, |c| {
                let store = crate::faulty::FaultyStore::new(&c.store.path);
                store.slow(Duration::from_millis(2));
                store
            })
            .await;
            (gh, None)
        }
        Backend::Postgres => {
            let db = crate::pg::Database::on_shared_server().await;
            let store: std::sync::Arc<dyn gatehouse::store::Store> = std::sync::Arc::new(
                gatehouse::store::postgres::PgStore::connect(&db.url(), 16)
                    .await
                    .unwrap(),
            );
            let gh = Gatehouse::start_store(&upstream.url(), adjust, move |_| store).await;
            (gh, Some(db))
        }
    }
}

/// Runs every request at once: each waits at one barrier until all have started.
pub async fn at_once<T, F>(requests: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                request.await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// `gatehouse_otp_verifications_total{result}` in a Prometheus exposition (0 when absent).
pub fn otp_count(metrics: &str, result: &str) -> u64 {
    let prefix = format!("gatehouse_otp_verifications_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// How many codes were accepted, compared and refused unread so far: (accepted, rejected, locked).
pub fn otp_counts(metrics: &str) -> (u64, u64, u64) {
    (
        otp_count(metrics, "accepted"),
        otp_count(metrics, "rejected"),
        otp_count(metrics, "locked"),
    )
}

fn counts(gh: &Gatehouse) -> (u64, u64, u64) {
    otp_counts(&gh.app.meter.render())
}

/// Statuses sorted, as `(status, how many)`.
pub fn tally(statuses: &[u16]) -> Vec<(u16, usize)> {
    let mut tally: Vec<(u16, usize)> = Vec::new();
    for s in statuses {
        match tally.iter_mut().find(|(t, _)| t == s) {
            Some((_, n)) => *n += 1,
            None => tally.push((*s, 1)),
        }
    }
    tally.sort_unstable();
    tally
}

/// `n` posts of `body` to `path` as ada at once; their statuses.
async fn posts_at_once(gh: &std::sync::Arc<Gatehouse>, path: &str, bodies: Vec<Value>) -> Vec<u16> {
    let requests = bodies
        .into_iter()
        .map(|body| {
            let gh = gh.clone();
            let path = path.to_owned();
            async move { post(&gh, &path, &[basic()], Some(body)).await.0 }
        })
        .collect();
    at_once(requests).await
}

/// A hundred wrong codes at once against verify-otp: five are compared (the fifth locks), the
/// other ninety-five are refused unread, and then the right code is refused like a wrong one.
async fn a_hundred_concurrent_wrong_codes_compare_at_most_max_failures(backend: Backend) {
    let upstream = Upstream::start().await;
    let (gh, _db) = start_on(&upstream, backend, |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com"}))
        .await;
    let secret = enroll_and_confirm_otp(&gh).await;
    let right = totp(&secret, 1);
    let wrong = wrong_code(&right);
    let gh = std::sync::Arc::new(gh);
    let (accepted, rejected, locked) = counts(&gh);

    let statuses = posts_at_once(&gh, "/v1/me/verify-otp", vec![json!({"otp": wrong}); 100]).await;
    assert_eq!(tally(&statuses), [(403, 4), (429, 96)]);
    assert_eq!(
        counts(&gh),
        (accepted, rejected + 5, locked + 95),
        "only max_failures codes were compared"
    );

    let (status, problem, headers) = post(
        &gh,
        "/v1/me/verify-otp",
        &[basic()],
        Some(json!({"otp": right})),
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    let retry: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((800..=900).contains(&retry), "{retry}");
    assert_eq!(counts(&gh), (accepted, rejected + 5, locked + 96));
}

/// The right code among ninety-nine wrong ones, all at once: it is accepted only if it was among
/// the attempts compared; otherwise it is refused like the rest. Either way no more than
/// max_failures wrong codes are compared per count (a success starts a new one).
async fn the_right_code_among_a_hundred_is_no_way_past_the_limit(backend: Backend) {
    let upstream = Upstream::start().await;
    let (gh, _db) = start_on(&upstream, backend, |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com"}))
        .await;
    let secret = enroll_and_confirm_otp(&gh).await;
    let right = totp(&secret, 1);
    let wrong = wrong_code(&right);
    let gh = std::sync::Arc::new(gh);
    let (accepted, rejected, _) = counts(&gh);

    let mut bodies = vec![json!({"otp": wrong}); 99];
    bodies.insert(50, json!({"otp": right}));
    let statuses = posts_at_once(&gh, "/v1/me/verify-otp", bodies).await;
    let (now_accepted, now_rejected, _) = counts(&gh);
    let successes = now_accepted - accepted;
    assert!(successes <= 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count() as u64,
        successes
    );
    assert!(
        now_rejected - rejected <= 5 * (1 + successes),
        "{} wrong codes compared",
        now_rejected - rejected
    );
    assert!(
        [200, 429].contains(&statuses[50]),
        "the right code: {}",
        statuses[50]
    );
}

/// Enrollment confirmation, by the page and by verify-enrollment-otp at once, shares the limit.
async fn concurrent_wrong_enrollment_codes_compare_at_most_max_failures(backend: Backend) {
    let upstream = Upstream::start().await;
    let (gh, _db) = start_on(&upstream, backend, |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com"}))
        .await;
    let (status, enrollment, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=true",
        &[basic()],
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrollment}");
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let (_, html, _) = page(&gh, &path).await;
    let secret = secret_from(&html);
    let right = totp(&secret, 0);
    let wrong = wrong_code(&right).to_owned();
    let gh = std::sync::Arc::new(gh);
    let (accepted, rejected, locked) = counts(&gh);

    let client = gh.tls_client(false);
    let mut requests: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>> =
        Vec::new();
    for i in 0..100 {
        let gh = gh.clone();
        let wrong = wrong.clone();
        if i % 2 == 0 {
            requests.push(Box::pin(async move {
                post(
                    &gh,
                    "/v1/me/verify-enrollment-otp",
                    &[basic()],
                    Some(json!({"otp": wrong})),
                )
                .await
                .0
            }));
        } else {
            let (client, url) = (client.clone(), gh.https_url(&path));
            requests.push(Box::pin(async move {
                let response = client
                    .post(url)
                    .form(&[("code", wrong.as_str())])
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            }));
        }
    }
    let statuses = at_once(requests).await;
    assert_eq!(tally(&statuses), [(403, 4), (429, 96)]);
    assert_eq!(counts(&gh), (accepted, rejected + 5, locked + 95));

    let (status, _, headers) = post(
        &gh,
        "/v1/me/verify-enrollment-otp",
        &[basic()],
        Some(json!({"otp": right})),
    )
    .await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    let response = client
        .post(gh.https_url(&path))
        .form(&[("code", right.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(counts(&gh).0, accepted, "nothing was confirmed");
}

/// Texted codes against verify-otp (`oob`) share the limit the same way.
async fn concurrent_wrong_sms_codes_compare_at_most_max_failures(backend: Backend) {
    let upstream = Upstream::start().await;
    let provider = Upstream::start().await;
    let sms_url = format!("{}/sms", provider.url());
    let (gh, _db) = start_on(&upstream, backend, |c| {
        c.sms.kind = "webhook".into();
        c.sms.url = Some(sms_url);
    })
    .await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "phone": "+14155550123"}))
        .await;
    let (_, enrollment, _) = post(
        &gh,
        "/v1/me/mfa-enrollment?factor=sms&isInteractive=true",
        &[basic()],
        None,
    )
    .await;
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let client = gh.tls_client(false);
    let send = client.post(gh.https_url(&path)).form(&[("action", "send")]);
    assert_eq!(send.send().await.unwrap().status(), 200);
    let code = sms_code(&provider);
    let confirm = client
        .post(gh.https_url(&path))
        .form(&[("code", code.as_str())]);
    assert_eq!(confirm.send().await.unwrap().status(), 200);
    let (status, _, _) = post(&gh, "/v1/me/mfa-challenge?factor=sms", &[basic()], None).await;
    assert_eq!(status, 202);
    let right = sms_code(&provider);
    let wrong = wrong_code(&right);
    let gh = std::sync::Arc::new(gh);
    let (accepted, rejected, locked) = counts(&gh);

    let statuses = posts_at_once(&gh, "/v1/me/verify-otp", vec![json!({"oob": wrong}); 100]).await;
    assert_eq!(tally(&statuses), [(403, 4), (429, 96)]);
    assert_eq!(counts(&gh), (accepted, rejected + 5, locked + 95));
    let (status, _, headers) = post(
        &gh,
        "/v1/me/verify-otp",
        &[basic()],
        Some(json!({"oob": right})),
    )
    .await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
}

/// Each scenario above, once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sled() {
                    super::$name(super::Backend::Sled).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name(super::Backend::Postgres).await;
                }
            }
        )*
    };
}

on_both_backends!(
    a_hundred_concurrent_wrong_codes_compare_at_most_max_failures,
    the_right_code_among_a_hundred_is_no_way_past_the_limit,
    concurrent_wrong_enrollment_codes_compare_at_most_max_failures,
    concurrent_wrong_sms_codes_compare_at_most_max_failures,
);
