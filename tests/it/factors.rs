//! Adding a factor (SPEC §4.1, §10; SECURITY.md promise 12): beside a confirmed factor only a
//! credential with a second factor may add one, by every route; confirming or resetting a factor
//! voids pending tickets; the enrollment page serves only 256-bit tickets. Each test runs on sled
//! and on PostgreSQL.

use std::sync::Arc;

use gatehouse::store::Store;
use gatehouse::store::postgres::PgStore;
use serde_json::{Value, json};

use crate::harness::*;
use crate::mfa::{secret_from, ticket_path, totp};
use crate::pg::Database;

const PASSWORD: &str = "correct horse battery";
const VICTIM_PHONE: &str = "+14155550123";
const ATTACKER_PHONE: &str = "+14155550199";

/// Runs the test function `$name` once per store backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sled() {
                    super::$name(super::Backend::Sled).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(super::Backend::Postgres).await;
                }
            }
        )*
    };
}

on_both_backends!(
    ws_opt_in_with_password_and_key_cannot_add_a_factor_beside_totp,
    ws_registration_made_before_enrollment_cannot_be_confirmed_after_it,
    stale_enrollment_ticket_cannot_replace_the_victims_totp,
    mfa_reset_voids_pending_tickets,
    ticket_made_without_a_second_factor_is_refused_once_the_user_has_one,
    ws_opt_in_registration_is_not_served_by_the_enrollment_page,
    enrollment_link_of_a_disabled_user_shows_no_secret_and_adds_no_factor,
);

#[derive(Clone, Copy)]
pub enum Backend {
    Sled,
    Postgres,
}

impl Backend {
    /// Gatehouse in front of `upstream` on this backend (a fresh PostgreSQL database, kept
    /// alive by the second value).
    pub async fn start(
        self,
        upstream: &Upstream,
        adjust: impl FnOnce(&mut gatehouse::config::Config),
    ) -> (Gatehouse, Option<Database>) {
        match self {
            Backend::Sled => (Gatehouse::start_with(upstream, adjust).await, None),
            Backend::Postgres => {
                let db = Database::on_shared_server().await;
                let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url(), 4).await.unwrap());
                let gh = Gatehouse::start_store(&upstream.url(), adjust, move |_| store).await;
                (gh, Some(db))
            }
        }
    }
}

/// Gatehouse on `backend`, SMS to a webhook (`sms`), a user `ada` (password, email, phone,
/// FileId 12) and a WsAccessKey of hers.
struct Setup {
    gh: Gatehouse,
    sms: Upstream,
    key: String,
    _upstream: Upstream,
    _db: Option<Database>,
}

async fn setup(backend: Backend) -> Setup {
    let upstream = Upstream::start().await;
    let sms = Upstream::start().await;
    let sms_url = format!("{}/sms", sms.url());
    let adjust = |c: &mut gatehouse::config::Config| {
        c.sms.kind = "webhook".into();
        c.sms.url = Some(sms_url);
    };
    let (gh, db) = backend.start(&upstream, adjust).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD, "email": "ada@example.com", "phone": VICTIM_PHONE}))
        .await;
    let (status, _) = gh
        .admin(
            "POST",
            "/admin/v1/files/12/members",
            Some(json!({"userName": "ada"})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, key) = gh
        .admin(
            "POST",
            "/admin/v1/ws-keys",
            Some(json!({"userName": "ada", "fileId": 12})),
        )
        .await;
    Setup {
        gh,
        sms,
        key: key["key"].as_str().unwrap().to_owned(),
        _upstream: upstream,
        _db: db,
    }
}

fn basic() -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ada:{PASSWORD}"))
    )
}

async fn post(gh: &Gatehouse, path: &str, auth: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http1_client()
        .post(gh.http_url(path))
        .header("authorization", auth);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn page(gh: &Gatehouse, path: &str, form: Option<&[(&str, &str)]>) -> (u16, String) {
    let request = match form {
        None => http1_client().get(gh.http_url(path)),
        Some(form) => http1_client().post(gh.http_url(path)).form(form),
    };
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A WS call as `ada`: with her WsAccessKey, or with a Bearer token when `bearer` is given.
async fn ws(s: &Setup, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let url = match bearer {
        None => {
            s.gh.http_url(&format!("{path}?FileId=12&WsAccessKey={}", s.key))
        }
        Some(_) => s.gh.http_url(&format!("{path}?FileId=12")),
    };
    let mut request = http1_client().post(url).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The texts the SMS webhook received for `to`, oldest first.
fn texts_to(sms: &Upstream, to: &str) -> Vec<String> {
    sms.all()
        .iter()
        .filter_map(|seen| serde_json::from_slice::<Value>(&seen.body).ok())
        .filter(|m| m["to"] == to)
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

fn code_in(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap()
        .to_owned()
}

/// Ada enrolls an authenticator app with her password (her first factor), confirming it on the
/// page of her own ticket, then gets an MFA token from verify-otp; returns the secret and token.
async fn enroll_totp(gh: &Gatehouse) -> (Vec<u8>, String) {
    let (status, enrollment) = post(
        gh,
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=true",
        &basic(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrollment}");
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let (status, html) = page(gh, &path, None).await;
    assert_eq!(status, 200, "{html}");
    let secret = secret_from(&html);
    let code = totp(&secret, 0);
    let (status, html) = page(gh, &path, Some(&[("code", code.as_str())])).await;
    assert_eq!(status, 200, "{html}");
    let (status, granted) = post(
        gh,
        "/v1/me/verify-otp",
        &basic(),
        Some(json!({"otp": totp(&secret, 1)})),
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    (secret, granted["accessToken"].as_str().unwrap().to_owned())
}

async fn factor_kinds(gh: &Gatehouse) -> Vec<String> {
    let ada = gh.app.store.user_by_name("ada").await.unwrap().unwrap();
    let mut kinds: Vec<String> = gh
        .app
        .store
        .factors(ada.id)
        .await
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f.kind.as_str(),
                f.destination.as_deref().unwrap_or("")
            )
        })
        .collect();
    kinds.sort();
    kinds
}

async fn ws_opt_in_with_password_and_key_cannot_add_a_factor_beside_totp(backend: Backend) {
    let s = setup(backend).await;
    let (_, mfa_token) = enroll_totp(&s.gh).await;

    // The attacker knows the password and holds the WsAccessKey: no second factor.
    let (status, answer) = ws(
        &s,
        "/User/2fa-opt-in",
        None,
        json!({"MobileNumber": ATTACKER_PHONE}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["StatusMessage"].is_string() && answer["_links"].is_array());
    assert!(texts_to(&s.sms, ATTACKER_PHONE).is_empty(), "no code sent");
    assert_eq!(factor_kinds(&s.gh).await, ["otp:"]);

    // The Nexus route refuses the password alone the same way.
    let (status, problem) = post(
        &s.gh,
        "/v1/me/mfa-enrollment?factor=sms&isInteractive=true",
        &basic(),
        None,
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("factor-already-enrolled")
    );

    // With a Bearer token that holds the second factor, the user adds the number.
    let (status, answer) = ws(
        &s,
        "/User/2fa-opt-in",
        Some(&mfa_token),
        json!({"MobileNumber": VICTIM_PHONE}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let code = code_in(texts_to(&s.sms, VICTIM_PHONE).last().unwrap());
    let (status, answer) = ws(
        &s,
        "/User/verify-2fa-opt-in",
        Some(&mfa_token),
        json!({"ProviderUserId": answer["ProviderUserId"], "Otp": code}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        factor_kinds(&s.gh).await,
        ["otp:".to_owned(), format!("sms:{VICTIM_PHONE}")]
    );
}

async fn ws_registration_made_before_enrollment_cannot_be_confirmed_after_it(backend: Backend) {
    let s = setup(backend).await;
    // Before the user has a factor, the attacker registers their own number...
    let (status, answer) = ws(
        &s,
        "/User/2fa-opt-in",
        None,
        json!({"MobileNumber": ATTACKER_PHONE}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let code = code_in(texts_to(&s.sms, ATTACKER_PHONE).last().unwrap());
    // ...then the user enrolls an authenticator app...
    enroll_totp(&s.gh).await;
    // ...and the registration can no longer be confirmed, right code or not.
    let (status, answer) = ws(
        &s,
        "/User/verify-2fa-opt-in",
        None,
        json!({"ProviderUserId": answer["ProviderUserId"], "Otp": code}),
    )
    .await;
    assert_ne!(status, 200, "{answer}");
    assert!(answer["StatusMessage"].is_string());
    assert_eq!(factor_kinds(&s.gh).await, ["otp:"]);

    // Nor does a token through verify-otp come out of that number.
    let (status, _) = post(&s.gh, "/v1/me/mfa-challenge?factor=sms", &basic(), None).await;
    assert_ne!(status, 202);
    assert_eq!(texts_to(&s.sms, ATTACKER_PHONE).len(), 1);
}

async fn stale_enrollment_ticket_cannot_replace_the_victims_totp(backend: Backend) {
    let s = setup(backend).await;
    // The attacker, with the password only, makes a ticket before the victim enrolled.
    let (status, stale) = post(
        &s.gh,
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=true",
        &basic(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{stale}");
    let stale_path = ticket_path(stale["ticketUrl"].as_str().unwrap());
    let (status, html) = page(&s.gh, &stale_path, None).await;
    assert_eq!(status, 200);
    let attacker_secret = secret_from(&html);

    enroll_totp(&s.gh).await;

    // The stale ticket is void: the page says so and the attacker's code confirms nothing.
    let (status, _) = page(&s.gh, &stale_path, None).await;
    assert!(status == 404 || status == 410, "{status}");
    let code = totp(&attacker_secret, 0);
    let (status, html) = page(&s.gh, &stale_path, Some(&[("code", code.as_str())])).await;
    assert!(status == 404 || status == 410, "{status}: {html}");
    let (status, problem) = post(
        &s.gh,
        "/v1/me/verify-enrollment-otp",
        &basic(),
        Some(json!({"otp": code})),
    )
    .await;
    assert_eq!(status, 404, "{problem}");

    // The victim's authenticator is still the only one: the attacker's gives no MFA token.
    assert_eq!(factor_kinds(&s.gh).await, ["otp:"]);
    let (status, problem) = post(
        &s.gh,
        "/v1/me/verify-otp",
        &basic(),
        Some(json!({"otp": totp(&attacker_secret, 1)})),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
}

async fn mfa_reset_voids_pending_tickets(backend: Backend) {
    let s = setup(backend).await;
    let (_, mfa_token) = enroll_totp(&s.gh).await;
    // A ticket for another factor, made properly with the second factor...
    let app =
        s.gh.admin(
            "POST",
            "/admin/v1/applications",
            Some(json!({"name": "web"})),
        )
        .await
        .1;
    let response = http1_client()
        .post(s.gh.http_url("/v1/me/mfa-enrollment?factor=otp&isInteractive=true"))
        .bearer_auth(&mfa_token)
        .header("ApplicationToken", app["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let pending: Value = response.json().await.unwrap();
    let path = ticket_path(pending["ticketUrl"].as_str().unwrap());
    assert_eq!(page(&s.gh, &path, None).await.0, 200);
    // ...and a WS registration.
    let (status, _) = ws(
        &s,
        "/User/2fa-opt-in",
        Some(&mfa_token),
        json!({"MobileNumber": VICTIM_PHONE}),
    )
    .await;
    assert_eq!(status, 200);

    let (status, _) =
        s.gh.admin("POST", "/admin/v1/users/ada/mfa/reset", None)
            .await;
    assert_eq!(status, 204);
    let (status, _) = page(&s.gh, &path, None).await;
    assert!(status == 404 || status == 410, "{status}");
    let ada = s.gh.app.store.user_by_name("ada").await.unwrap().unwrap();
    assert_eq!(
        s.gh.app
            .store
            .newest_pending_ticket(ada.id, crate::keys::now())
            .await
            .unwrap(),
        None
    );
    assert!(factor_kinds(&s.gh).await.is_empty());
}

async fn ws_opt_in_registration_is_not_served_by_the_enrollment_page(backend: Backend) {
    let s = setup(backend).await;
    let (status, answer) = ws(
        &s,
        "/User/2fa-opt-in",
        None,
        json!({"MobileNumber": VICTIM_PHONE}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let provider_user_id = answer["ProviderUserId"].as_i64().unwrap();
    let code = code_in(texts_to(&s.sms, VICTIM_PHONE).last().unwrap());
    let sent = s.sms.hits();

    let path = format!("/enroll/ws-optin-{provider_user_id}");
    let (status, html) = page(&s.gh, &path, None).await;
    assert_eq!(status, 404, "{html}");
    let (status, _) = page(&s.gh, &path, Some(&[("action", "send")])).await;
    assert_eq!(status, 404);
    assert_eq!(s.sms.hits(), sent, "the page sends nothing");
    for _ in 0..6 {
        let (status, _) = page(&s.gh, &path, Some(&[("code", "000000")])).await;
        assert_eq!(status, 404);
    }
    let (status, _) = page(&s.gh, &path, Some(&[("code", code.as_str())])).await;
    assert_eq!(status, 404);
    assert!(factor_kinds(&s.gh).await.is_empty());

    // The page's guesses counted nothing: the registration still verifies where it belongs.
    let (status, answer) = ws(
        &s,
        "/User/verify-2fa-opt-in",
        None,
        json!({"ProviderUserId": provider_user_id, "Otp": code}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(factor_kinds(&s.gh).await, [format!("sms:{VICTIM_PHONE}")]);
}

async fn ticket_made_without_a_second_factor_is_refused_once_the_user_has_one(backend: Backend) {
    use gatehouse::store::{FactorKind, SCHEMA_VERSION, Ticket};
    let s = setup(backend).await;
    enroll_totp(&s.gh).await;
    // A ticket that escaped voiding (a record from before the rule, say), made with the password.
    let ada = s.gh.app.store.user_by_name("ada").await.unwrap().unwrap();
    let now = crate::keys::now();
    let id = "S".repeat(43);
    s.gh.app
        .store
        .create_ticket(Ticket {
            v: SCHEMA_VERSION,
            id: id.clone(),
            user_id: ada.id,
            kind: FactorKind::Sms,
            sealed_secret: None,
            destination: Some(ATTACKER_PHONE.into()),
            created_at: now,
            expires_at: now + 3600,
            used: false,
            second_factor: false,
        })
        .await
        .unwrap();
    let path = format!("/enroll/{id}");
    let (status, html) = page(&s.gh, &path, None).await;
    assert_eq!(status, 410, "{html}");
    let (status, _) = page(&s.gh, &path, Some(&[("action", "send")])).await;
    assert_eq!(status, 410);
    assert!(texts_to(&s.sms, ATTACKER_PHONE).is_empty(), "no code sent");
    let (status, problem) = post(
        &s.gh,
        "/v1/me/verify-enrollment-otp",
        &basic(),
        Some(json!({"oob": "123456"})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("factor-already-enrolled")
    );
    assert_eq!(factor_kinds(&s.gh).await, ["otp:"]);
}

async fn enrollment_link_of_a_disabled_user_shows_no_secret_and_adds_no_factor(backend: Backend) {
    let s = setup(backend).await;
    let (status, enrollment) = post(
        &s.gh,
        "/v1/me/mfa-enrollment?factor=otp&isInteractive=true",
        &basic(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrollment}");
    let path = ticket_path(enrollment["ticketUrl"].as_str().unwrap());
    let (status, html) = page(&s.gh, &path, None).await;
    assert_eq!(status, 200, "{html}");
    let secret = secret_from(&html);
    let (status, _) = post(
        &s.gh,
        "/v1/me/mfa-enrollment?factor=sms&isInteractive=true",
        &basic(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let sms_ticket = s.gh.app.store.user_by_name("ada").await.unwrap().unwrap();
    let sms_ticket =
        s.gh.app
            .store
            .newest_pending_ticket(sms_ticket.id, crate::keys::now())
            .await
            .unwrap()
            .unwrap()
            .id;

    let patch = gatehouse::store::UserPatch {
        is_valid: Some(false),
        ..Default::default()
    };
    s.gh.app
        .store
        .update_user("ada", patch, 1_767_225_600)
        .await
        .unwrap();
    // The link is a credential like any other: a user who may not sign in is refused by it too.
    let (status, html) = page(&s.gh, &path, None).await;
    assert!(matches!(status, 404 | 410), "{status}: {html}");
    assert!(!html.contains("id=\"secret\""), "{html}");
    let code = totp(&secret, 0);
    let (status, html) = page(&s.gh, &path, Some(&[("code", code.as_str())])).await;
    assert!(matches!(status, 404 | 410), "{status}: {html}");
    let sms_path = format!("/enroll/{sms_ticket}");
    let (status, _) = page(&s.gh, &sms_path, Some(&[("action", "send")])).await;
    assert!(matches!(status, 404 | 410), "{status}");
    assert!(texts_to(&s.sms, VICTIM_PHONE).is_empty(), "no code sent");
    assert!(factor_kinds(&s.gh).await.is_empty());
}
