//! Attacks on passkeys (SPEC §14 with the rules of §10, §11 and §13): a passkey added from a
//! session voids the user's pending enrollment tickets like any confirmed factor, one
//! enrollment link cannot fill the replica's window of ceremonies, and a passkey signs in
//! nobody who is disabled, locked out or whose factors an administrator reset.

use std::sync::Arc;

use gatehouse::store::postgres::PgStore;
use gatehouse::store::sled::SledStore;
use gatehouse::store::*;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::harness::*;
use crate::passkeys::{
    add_passkey, authenticator, sign_in_from_page, sign_in_with_password, start,
};
use crate::signin::PASSWORD;

const NOW_UNIX: i64 = 1_767_225_600;

async fn tickets_voided_by_a_passkey_from_a_session(store: Arc<dyn Store>) {
    let user = store
        .create_user(
            NewUser {
                user_name: "ada".into(),
                ..NewUser::default()
            },
            NOW_UNIX,
        )
        .await
        .unwrap();
    // A pending ticket for another factor, made with a second factor.
    store
        .create_ticket(Ticket {
            v: SCHEMA_VERSION,
            id: "pending".into(),
            user_id: user.id,
            kind: FactorKind::Otp,
            sealed_secret: Some(vec![1, 2, 3]),
            destination: None,
            created_at: NOW_UNIX,
            expires_at: NOW_UNIX + 600,
            used: false,
            second_factor: true,
        })
        .await
        .unwrap();
    for (id, grant) in [
        ("first", PasskeyGrant::FirstFactor),
        ("second", PasskeyGrant::SecondFactor),
    ] {
        let passkey = Passkey {
            v: SCHEMA_VERSION,
            id: id.into(),
            user_id: user.id,
            user_handle: "handle".into(),
            name: "Laptop".into(),
            created: "2026-01-01T00:00:00Z".into(),
            last_used: None,
            counter: 0,
            discoverable: Some(true),
            credential: json!({}),
        };
        assert_eq!(
            store
                .add_passkey(passkey, grant, None, NOW_UNIX + 1)
                .await
                .unwrap(),
            PasskeyAdded::Added
        );
        assert!(
            store.ticket("pending").await.unwrap().unwrap().used,
            "a passkey added by {grant:?} voids the pending tickets"
        );
        assert_eq!(
            store
                .newest_pending_ticket(user.id, NOW_UNIX + 1)
                .await
                .unwrap(),
            None
        );
        // Another pending ticket, for the next grant.
        let mut again = store.ticket("pending").await.unwrap().unwrap();
        again.id = format!("pending-after-{id}");
        again.used = false;
        store.create_ticket(again).await.unwrap();
    }
}

#[tokio::test]
async fn a_passkey_added_from_a_session_voids_pending_enrollment_tickets_in_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    tickets_voided_by_a_passkey_from_a_session(store).await;
}

#[tokio::test]
async fn a_passkey_added_from_a_session_voids_pending_enrollment_tickets_in_postgres() {
    let db = crate::pg::Database::on_shared_server().await;
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url(), 4).await.unwrap());
    tickets_voided_by_a_passkey_from_a_session(store).await;
}

/// The path of a new passkey enrollment link of `ada`'s.
async fn webauthn_link(gh: &Gatehouse) -> String {
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
    url[url.find("/enroll/").unwrap()..].to_owned()
}

#[tokio::test]
async fn one_enrollment_link_cannot_begin_passkey_ceremonies_without_bound() {
    let (_upstream, gh) = start().await;
    let path = webauthn_link(&gh).await;
    let client = http1_client();
    let mut begun = 0;
    let mut refused = None;
    for _ in 0..200 {
        let response = client
            .post(gh.http_url(&path))
            .form(&[("action", "passkey-options"), ("name", "x")])
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => {
                let doc: Value = response.json().await.unwrap();
                assert!(doc["ceremony"].is_string(), "{doc}");
                begun += 1;
            }
            429 => {
                assert!(response.headers().contains_key("retry-after"));
                refused = Some(begun);
                break;
            }
            other => panic!("{other}: {}", response.text().await.unwrap()),
        }
    }
    assert!(begun >= 3, "a person may try a few times: {begun}");
    assert!(
        refused.is_some_and(|n| n <= 120),
        "ceremonies begun from one address by one link: {begun}"
    );
}

#[tokio::test]
async fn a_passkey_signs_in_nobody_disabled_locked_out_or_whose_factors_were_reset() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let _authenticator = authenticator(&browser).await;
    sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    add_passkey(&browser, "Laptop").await;
    browser.open(&gh.https_url("/auth/login")).await;

    // Disabled: refused, and no session.
    let set = |disabled: bool| {
        gh.admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({ "disabled": disabled })),
        )
    };
    assert_eq!(set(true).await.0, 200);
    let (status, page, session) = sign_in_from_page(&gh, &browser).await;
    assert_eq!(status, 401, "{page}");
    assert_eq!(session, None);
    assert_eq!(set(false).await.0, 200);
    let (status, _, session) = sign_in_from_page(&gh, &browser).await;
    assert_eq!(status, 303);
    assert!(session.is_some());

    // Locked out by wrong codes: the right passkey is refused until the lock ends.
    let mut locked = false;
    for _ in 0..20 {
        let response = http1_client()
            .post(gh.http_url("/v1/me/verify-otp"))
            .basic_auth("ada", Some(PASSWORD))
            .json(&json!({ "otp": "000000" }))
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 429 {
            locked = true;
            break;
        }
    }
    assert!(locked, "wrong codes lock the user out");
    let (status, page, session) = sign_in_from_page(&gh, &browser).await;
    assert_eq!(status, 429, "{page}");
    assert_eq!(session, None);

    // An MFA reset removes the passkey: it signs in nobody any more.
    let (status, _) = gh
        .admin("POST", "/admin/v1/users/ada/mfa/reset", None)
        .await;
    assert!((200..300).contains(&status), "{status}");
    let (status, page, session) = sign_in_from_page(&gh, &browser).await;
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("That passkey was not accepted."), "{page}");
    assert_eq!(session, None);
    browser.quit().await;
}
