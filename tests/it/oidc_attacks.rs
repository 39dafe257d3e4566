//! External sign-in under attack (SPEC §10, §12): tokens signed without the provider's keys, a
//! callback carried to another provider, a logout token naming one person and another person's
//! session, and names from the provider that belong to somebody else here.

use serde_json::json;

use crate::idp::{AtLogin, ProviderAgent};
use crate::oidc::*;
use crate::signin::user;

#[tokio::test]
async fn id_tokens_unsigned_or_signed_with_the_client_secret_start_no_session() {
    let o = Oidc::start("", "").await;
    let cases = [
        ("alg none", json!({"alg": "none", "kid": null}), json!(null)),
        (
            "HS256 with the client secret",
            json!({"alg": "HS256", "kid": null}),
            json!({"secret": CORP_SECRET}),
        ),
        (
            "HS256 with the client secret, under the published kid",
            json!({"alg": "HS256"}),
            json!({"secret": CORP_SECRET}),
        ),
    ];
    for (what, header, key) in cases {
        let mut visitor = o.visitor();
        let url = o.begin(&mut visitor, "corp", "/private/").await;
        let callback = o
            .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
            .await;
        o.idp.tamper_next_id_token_header(header, key).await;
        let page = visitor.get(&callback).await;
        assert_refused(&o, &mut visitor, &page, 400, what).await;
    }
}

#[tokio::test]
async fn logout_tokens_unsigned_or_signed_with_the_client_secret_end_nothing() {
    let o = Oidc::start("", "").await;
    let mut alice = o.signed_in("corp", "alice").await;
    let claims = || {
        let mut claims = o.logout_claims(CORP_CLIENT);
        claims["sub"] = json!("alice");
        claims
    };
    let cases = [
        ("alg none", json!({"alg": "none", "kid": null}), json!(null)),
        (
            "HS256 with the client secret",
            json!({"alg": "HS256", "kid": null}),
            json!({"secret": CORP_SECRET}),
        ),
        (
            "HS256 with the client secret, under the published kid",
            json!({"alg": "HS256"}),
            json!({"secret": CORP_SECRET}),
        ),
    ];
    for (what, header, key) in cases {
        let token = o.idp.logout_token_signed(header, claims(), key).await;
        let response = o.backchannel("corp", &token).await;
        assert_eq!(response.status(), 400, "{what}");
    }
    assert_eq!(session_status(&mut alice).await, 200, "nothing ended");
}

#[tokio::test]
async fn a_callback_carried_to_another_providers_path_starts_no_session() {
    let o = Oidc::start("", "").await;
    // The code and state of a sign-in at corp, delivered to partner's callback.
    let mut visitor = o.visitor();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    let moved = callback.replacen("/auth/callback/corp", "/auth/callback/partner", 1);
    let page = visitor.get(&moved).await;
    assert_refused(&o, &mut visitor, &page, 400, "corp's callback at partner").await;
    // The flow is spent: the genuine callback no longer works either.
    let page = visitor.get(&callback).await;
    assert_eq!(page.status, 400, "{}", page.body);

    // A code partner issued, with the state of a flow started for corp.
    let mut visitor = o.visitor();
    let corp_url = o.begin(&mut visitor, "corp", "/private/").await;
    let state = query_param(&corp_url, "state").unwrap();
    let mut other = o.visitor();
    let partner_url = o.begin(&mut other, "partner", "/private/").await;
    let partner_callback = o
        .at_provider(
            &mut ProviderAgent::new(),
            &partner_url,
            AtLogin::SignIn("alice"),
        )
        .await;
    let code = query_param(&partner_callback, "code").unwrap();
    let page = visitor
        .get(&format!("/auth/callback/corp?code={code}&state={state}"))
        .await;
    assert_refused(&o, &mut visitor, &page, 400, "partner's code at corp").await;
}

#[tokio::test]
async fn a_logout_token_naming_an_unknown_subject_ends_no_session_of_another_user() {
    let o = Oidc::start("", "").await;
    let mut alice = o.signed_in("corp", "alice").await;
    let sid = o.idp.id_tokens().await.last().unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Alice's provider session, but a subject gatehouse never saw: no such session here.
    let mut claims = o.logout_claims(CORP_CLIENT);
    claims["sid"] = json!(sid);
    claims["sub"] = json!("somebody-else");
    let token = o.idp.logout_token(claims).await;
    assert_eq!(o.backchannel("corp", &token).await.status(), 200);
    assert_eq!(session_status(&mut alice).await, 200);

    // Another known user's subject with alice's sid: not alice's session either.
    o.signed_in("corp", "bob").await;
    let mut claims = o.logout_claims(CORP_CLIENT);
    claims["sid"] = json!(sid);
    claims["sub"] = json!("bob");
    let token = o.idp.logout_token(claims).await;
    assert_eq!(o.backchannel("corp", &token).await.status(), 200);
    assert_eq!(session_status(&mut alice).await, 200);
}

#[tokio::test]
async fn a_provider_name_taken_by_a_local_user_gives_another_user() {
    let o = Oidc::start("", "").await;
    user(&o.gh, "ada").await;
    o.idp
        .set_account(
            "imposter",
            json!({"preferred_username": "ada", "email": "imposter@example.com",
                   "email_verified": true}),
        )
        .await;
    let mut visitor = o.signed_in("corp", "imposter").await;
    visitor.get("/private/who").await;
    let name = o.seen("/private/who").headers["x-auth-user"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(name, "ada");
    assert!(name.starts_with("ada#"), "{name}");
}

#[tokio::test]
async fn an_email_verified_given_as_the_string_false_is_not_a_verified_email() {
    let o = Oidc::start(r#"allowed_email_domains = ["example.com"]"#, "").await;
    o.idp
        .set_account(
            "stringly",
            json!({"preferred_username": "stringly", "email": "stringly@example.com",
                   "email_verified": "false"}),
        )
        .await;
    let mut visitor = o.visitor();
    let page = o
        .sign_in(&mut visitor, "corp", "stringly", "/private/")
        .await;
    assert_ne!(page.status, 303, "{}", page.body);
    assert_eq!(session_status(&mut visitor).await, 401);
}

#[tokio::test]
async fn a_return_address_of_another_site_kept_in_the_flow_becomes_the_root() {
    let o = Oidc::start("", "").await;
    for rd in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let mut visitor = o.visitor();
        let page = o.sign_in(&mut visitor, "corp", "alice", rd).await;
        assert_eq!(page.status, 303, "{rd}: {}", page.body);
        assert_eq!(page.location(), "/", "{rd}");
    }
}
