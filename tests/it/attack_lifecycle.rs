//! Attacks on the account lifecycle (SPEC §13): credentials of a disabled user and tokens of a
//! revoked one that must stay refused, whatever the order and timing of the admin's calls, and
//! signing-key rotations that must log nobody out on any replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::config::{Config, Secret};
use gatehouse::store::Store;
use gatehouse::store::sled::SledStore;
use serde_json::{Value, json};

use crate::harness::*;
use crate::mfa::totp;
use crate::signin::{PASSWORD, enroll_totp, user};

async fn revoke(gh: &Gatehouse, name: &str) {
    let (status, body) = gh
        .admin(
            "POST",
            &format!("/admin/v1/users/{name}/tokens/revoke"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

/// A token from a step-up of `name` with the TOTP code `offset` steps ahead.
async fn stepped_up(gh: &Gatehouse, name: &str, secret: &[u8], offset: i64) -> String {
    let granted: Value = http1_client()
        .post(gh.http_url("/v1/me/verify-otp"))
        .basic_auth(name, Some(PASSWORD))
        .json(&json!({ "otp": totp(secret, offset) }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    format!("Bearer {}", granted["accessToken"].as_str().unwrap())
}

/// A token for `name` issued the way a step-up issues one: after the user's cut-off.
async fn issued_now(gh: &Gatehouse, name: &str) -> String {
    let user = gh.app.store.user_by_name(name).await.unwrap().unwrap();
    let principal = gatehouse::auth::Principal {
        user_id: user.id.to_string(),
        user_name: user.user_name.clone(),
        email: None,
        scopes: vec!["read".into()],
        organizations: vec![],
        methods: vec![gatehouse::auth::Method::Pwd],
    };
    let token = gh
        .app
        .tokens
        .issue_access_after(&principal, user.tokens_not_before)
        .unwrap();
    format!("Bearer {token}")
}

async fn bearer_status(gh: &Gatehouse, token: &str) -> u16 {
    http1_client()
        .get(gh.http_url("/private/x"))
        .header("authorization", token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token issued between two revocations is issued before the second one: it is refused,
/// even when both revocations and the issue fall within one second (then the token's `iat`
/// already carries the first revocation's cut-off).
#[tokio::test]
async fn a_token_issued_between_two_revocations_in_one_second_is_refused_after_the_second() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let secret = enroll_totp(&gh, "ada").await;
    revoke(&gh, "ada").await;
    let between = stepped_up(&gh, "ada", &secret, 1).await;
    assert_eq!(bearer_status(&gh, &between).await, 200);
    revoke(&gh, "ada").await;
    assert_eq!(bearer_status(&gh, &between).await, 401);
    // Again, issued as a step-up issues them but faster, so that most rounds fall within one
    // second; and a token issued after the last revocation is accepted.
    for _ in 0..5 {
        let between = issued_now(&gh, "ada").await;
        assert_eq!(bearer_status(&gh, &between).await, 200);
        revoke(&gh, "ada").await;
        assert_eq!(bearer_status(&gh, &between).await, 401);
    }
    let after = issued_now(&gh, "ada").await;
    assert_eq!(bearer_status(&gh, &after).await, 200);
}

const MASTER_KEY: &str = "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=";

/// With `tokens.key_prepublish = "0s"`, a rotation still lets every replica read the next key
/// before any replica signs with it: each token one replica signs, before and after the switch,
/// is accepted by the other at once.
#[tokio::test]
async fn without_a_prepublish_period_the_next_key_signs_only_once_every_replica_knows_it() {
    let upstream = Upstream::start().await;
    let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
    let shared = |c: &mut Config| {
        c.tokens.key_prepublish = Duration::ZERO;
        c.secrets.master_key = Some(Secret::new(MASTER_KEY));
    };
    let a = Gatehouse::start_store(&upstream.url(), shared, |_| store.clone()).await;
    let b = Gatehouse::start_store(&upstream.url(), shared, |_| store.clone()).await;
    let (status, ada) = a
        .admin(
            "POST",
            "/admin/v1/users",
            Some(json!({"userName": "ada", "scopes": ["read"]})),
        )
        .await;
    assert_eq!(status, 201, "{ada}");
    let principal = gatehouse::auth::Principal {
        user_id: ada["id"].to_string(),
        user_name: "ada".into(),
        email: None,
        scopes: vec!["read".into()],
        organizations: vec![],
        methods: vec![gatehouse::auth::Method::Pwd],
    };
    let (status, rotation) = a.admin("POST", "/admin/v1/keys/rotate", None).await;
    assert_eq!(status, 201, "{rotation}");
    let next = rotation["kid"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let token = a.app.tokens.issue_access(&principal).unwrap();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert_eq!(
            bearer_status(&b, &format!("Bearer {token}")).await,
            200,
            "a token signed with {kid} (next {next}) is refused by the other replica"
        );
        if kid == next {
            break;
        }
        assert!(Instant::now() < deadline, "the next key never signed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
