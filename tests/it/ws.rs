//! The WS family: SMS 2FA opt-in and verification, JSON and XML (seed 003, SPEC §4.2).

use serde_json::{Value, json};

use crate::harness::*;

/// Gatehouse with SMS going to `provider` (webhook, or Twilio's format when `twilio`), a user
/// `ada` granted FileId 12, and a WsAccessKey for it.
async fn start(upstream: &Upstream, provider: &Upstream, twilio: bool) -> (Gatehouse, String) {
    let url = if twilio {
        provider.url()
    } else {
        format!("{}/sms", provider.url())
    };
    let gh = Gatehouse::start_with(upstream, |c| {
        c.sms.kind = if twilio { "twilio" } else { "webhook" }.into();
        c.sms.url = Some(url);
        if twilio {
            c.sms.account_sid = Some("AC0123".into());
            c.sms.auth_token = Some(gatehouse::config::Secret::new("twilio-secret"));
            c.sms.from = Some("+15005550006".into());
        }
    })
    .await;
    gh.create_user(json!({"userName": "ada"})).await;
    assert_eq!(
        gh.admin(
            "POST",
            "/admin/v1/files/12/members",
            Some(json!({"userName": "ada"}))
        )
        .await
        .0,
        201
    );
    let (_, key) = gh
        .admin(
            "POST",
            "/admin/v1/ws-keys",
            Some(json!({"userName": "ada", "fileId": 12})),
        )
        .await;
    (gh, key["key"].as_str().unwrap().to_owned())
}

async fn call(
    gh: &Gatehouse,
    path: &str,
    content_type: &str,
    accept: Option<&str>,
    body: String,
) -> (u16, String, String) {
    let mut request = http1_client()
        .post(gh.http_url(path))
        .header("content-type", content_type)
        .body(body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

fn code_from(body: &str) -> String {
    body.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap()
        .to_owned()
}

fn webhook_code(provider: &Upstream) -> String {
    let sms: Value = serde_json::from_slice(&provider.last().body).unwrap();
    assert_eq!(sms["to"], "+14155550123");
    code_from(sms["body"].as_str().unwrap())
}

fn fixture(name: &str, provider_user_id: i64, otp: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(path)
        .unwrap()
        .replace("{ProviderUserId}", &provider_user_id.to_string())
        .replace("{Otp}", otp)
}

async fn opt_in(gh: &Gatehouse, key: &str) -> i64 {
    let (status, _, body) = call(
        gh,
        &format!("/User/2fa-opt-in?FileId=12&WsAccessKey={key}"),
        "application/json",
        None,
        json!({"MobileNumber": "+14155550123"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let rels: Vec<&str> = answer["_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rel"].as_str().unwrap())
        .collect();
    assert!(
        rels.contains(&"verify") && rels.contains(&"resend"),
        "{answer}"
    );
    answer["ProviderUserId"].as_i64().unwrap()
}

#[tokio::test]
async fn json_opt_in_and_verification_work_once() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, false).await;
    let provider_user_id = opt_in(&gh, &key).await;
    let code = webhook_code(&provider);
    let path = format!("/user/VERIFY-2FA-OPT-IN?fileid=12&WsAccessKey={key}");
    let body = fixture("ws_verify_request.json", provider_user_id, &code);
    let (status, content_type, answer) =
        call(&gh, &path, "application/json", None, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(content_type.starts_with("application/json"));
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert!(
        answer["StatusMessage"].is_string() && answer["_links"].is_array(),
        "{answer}"
    );
    let factors = gh
        .app
        .store
        .factors(gh.app.store.user_by_name("ada").await.unwrap().unwrap().id)
        .await
        .unwrap();
    assert_eq!(factors.len(), 1);
    assert_eq!(factors[0].destination.as_deref(), Some("+14155550123"));
    // The same code again: 400 with a resend link.
    let (status, _, again) = call(&gh, &path, "text/json", None, body).await;
    assert_eq!(status, 400, "{again}");
    let again: Value = serde_json::from_str(&again).unwrap();
    assert!(
        again["_links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["rel"] == "resend"),
        "{again}"
    );
}

#[tokio::test]
async fn xml_in_xml_out_matches_the_seed_shapes() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, false).await;
    let provider_user_id = opt_in(&gh, &key).await;
    let code = webhook_code(&provider);
    let body = fixture("ws_verify_request.xml", provider_user_id, &code);
    let path = format!("/User/verify-2fa-opt-in?FileId=12&WsAccessKey={key}");
    let (status, content_type, answer) =
        call(&gh, &path, "application/xml", Some("application/xml"), body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        content_type.starts_with("application/xml"),
        "{content_type}"
    );
    let golden = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ws_base_response.xml"),
    )
    .unwrap();
    assert_eq!(answer.trim(), golden.trim());
}

#[tokio::test]
async fn json_in_xml_out_and_xml_in_json_out() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, false).await;
    let (status, content_type, answer) = call(
        &gh,
        &format!("/User/2fa-opt-in?FileId=12&WsAccessKey={key}"),
        "application/json",
        Some("text/xml"),
        json!({"MobileNumber": "+14155550123"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(content_type.starts_with("text/xml"));
    assert!(
        answer.contains("<BaseResponseModel ")
            && answer.contains("<rel>verify</rel>")
            && answer.contains("<ProviderUserId>"),
        "{answer}"
    );
    let provider_user_id: i64 = answer
        .split("<ProviderUserId>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let code = webhook_code(&provider);
    let xml = fixture("ws_verify_request.xml", provider_user_id, &code);
    let (status, content_type, answer) = call(
        &gh,
        &format!("/User/verify-2fa-opt-in?FileId=12&WsAccessKey={key}"),
        "text/xml",
        Some("application/json"),
        xml,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(content_type.starts_with("application/json"));
}

#[tokio::test]
async fn twilio_format_carries_the_code_that_verifies() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, true).await;
    let provider_user_id = opt_in(&gh, &key).await;
    let sent = provider.last();
    assert_eq!(sent.target, "/2010-04-01/Accounts/AC0123/Messages.json");
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("AC0123:twilio-secret")
    );
    assert_eq!(sent.headers["authorization"], expected.as_str());
    assert_eq!(
        sent.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&sent.body).into_owned().collect();
    assert_eq!(form["To"], "+14155550123");
    assert_eq!(form["From"], "+15005550006");
    let code = code_from(&form["Body"]);
    let body = json!({"ProviderUserId": provider_user_id, "Otp": code}).to_string();
    let (status, _, answer) = call(
        &gh,
        &format!("/User/verify-2fa-opt-in?FileId=12&WsAccessKey={key}"),
        "application/json",
        None,
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn file_ids_and_keys_are_checked() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, false).await;
    let (_, other) = gh
        .admin(
            "POST",
            "/admin/v1/ws-keys",
            Some(json!({"userName": "ada", "fileId": 99})),
        )
        .await;
    let other = other["key"].as_str().unwrap();
    let body = || json!({"MobileNumber": "+14155550123"}).to_string();
    for (path, expected) in [
        (format!("/User/2fa-opt-in?WsAccessKey={key}"), 400),
        (
            format!("/User/2fa-opt-in?FileId=twelve&WsAccessKey={key}"),
            400,
        ),
        (
            format!("/User/2fa-opt-in?FileId=12&WsAccessKey={other}"),
            403,
        ),
        (
            "/User/2fa-opt-in?FileId=12&WsAccessKey=ghk_unknown".to_owned(),
            401,
        ),
        ("/User/2fa-opt-in?FileId=12".to_owned(), 401),
    ] {
        let (status, _, answer) = call(&gh, &path, "application/json", None, body()).await;
        assert_eq!(status, expected, "{path}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert!(answer["StatusMessage"].is_string(), "{answer}");
        let links = answer["_links"].as_array().unwrap();
        assert!(!links.is_empty(), "{answer}");
        assert!(
            links
                .iter()
                .all(|l| !l["href"].as_str().unwrap().contains("WsAccessKey")),
            "{answer}"
        );
    }
    // Bearer: the user must hold the FileId.
    let principal = gatehouse::auth::Principal {
        user_id: gh
            .app
            .store
            .user_by_name("ada")
            .await
            .unwrap()
            .unwrap()
            .id
            .to_string(),
        user_name: "ada".into(),
        email: None,
        scopes: vec![],
        organizations: vec![],
        methods: vec![gatehouse::auth::Method::Pwd],
    };
    let token = gh.app.tokens.issue_access(&principal).unwrap();
    let bearer = |path: &str| {
        http1_client()
            .post(gh.http_url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body())
            .send()
    };
    assert_eq!(
        bearer("/User/2fa-opt-in?FileId=13").await.unwrap().status(),
        403
    );
    assert_eq!(
        bearer("/User/2fa-opt-in?FileId=12").await.unwrap().status(),
        200
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn hostile_xml_and_wrong_formats_are_refused_and_store_nothing() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, false).await;
    let path = format!("/User/2fa-opt-in?FileId=12&WsAccessKey={key}");
    let deep = format!(
        "<OptIn2FARequest>{}{}</OptIn2FARequest>",
        "<a>".repeat(20_000),
        "</a>".repeat(20_000)
    );
    for body in [
        r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><OptIn2FARequest><MobileNumber>&x;</MobileNumber></OptIn2FARequest>"#.to_owned(),
        r#"<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><OptIn2FARequest><MobileNumber>&b;</MobileNumber></OptIn2FARequest>"#.to_owned(),
        "<OptIn2FARequest><MobileNumber>&custom;</MobileNumber></OptIn2FARequest>".to_owned(),
        deep,
        "<OptIn2FARequest><MobileNumber>+14155550123</MobileNumber>".to_owned(),
    ] {
        let (status, _, answer) = call(&gh, &path, "application/xml", None, body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(!answer.contains("root:"), "an entity was expanded");
    }
    let (status, _, _) = call(
        &gh,
        &path,
        "text/plain",
        None,
        "MobileNumber=+14155550123".into(),
    )
    .await;
    assert_eq!(status, 415);
    let (status, content_type, _) = call(
        &gh,
        &path,
        "application/json",
        Some("text/html"),
        json!({"MobileNumber": "+14155550123"}).to_string(),
    )
    .await;
    assert_eq!(status, 406);
    assert!(content_type.starts_with("application/json"));
    let (status, _, _) = call(
        &gh,
        &path,
        "application/json",
        None,
        "{\"MobileNumber\": ".into(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(provider.hits(), 0, "no code was sent");
    let user = gh.app.store.user_by_name("ada").await.unwrap().unwrap();
    assert!(
        gh.app
            .store
            .newest_pending_ticket(user.id, crate::keys::now())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn wrong_codes_lock_out_with_429() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, false).await;
    let provider_user_id = opt_in(&gh, &key).await;
    let right = webhook_code(&provider);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let path = format!("/User/verify-2fa-opt-in?FileId=12&WsAccessKey={key}");
    for attempt in 0..5 {
        let body = json!({"ProviderUserId": provider_user_id, "Otp": wrong}).to_string();
        let (status, _, _) = call(&gh, &path, "application/json", None, body).await;
        assert_eq!(
            status,
            if attempt < 4 { 400 } else { 429 },
            "attempt {attempt}"
        );
    }
    let body = json!({"ProviderUserId": provider_user_id, "Otp": right}).to_string();
    assert_eq!(
        call(&gh, &path, "application/json", None, body).await.0,
        429
    );
    let names = gh.audit_events(20).await;
    assert!(
        names.iter().any(|n| n == "mfa.lockout") && names.iter().any(|n| n == "mfa.code.failed"),
        "{names:?}"
    );
}

#[tokio::test]
async fn an_opt_in_code_confirms_only_the_registration_it_was_sent_for() {
    let (upstream, provider) = (Upstream::start().await, Upstream::start().await);
    let (gh, key) = start(&upstream, &provider, false).await;
    let register = |number: &'static str| {
        let (gh, key) = (&gh, &key);
        async move {
            let (status, _, body) = call(
                gh,
                &format!("/User/2fa-opt-in?FileId=12&WsAccessKey={key}"),
                "application/json",
                None,
                json!({"MobileNumber": number}).to_string(),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["ProviderUserId"]
                .as_i64()
                .unwrap()
        }
    };
    let sent_to = |number: &str| {
        let sms: Value = serde_json::from_slice(&provider.last().body).unwrap();
        assert_eq!(sms["to"], number);
        code_from(sms["body"].as_str().unwrap())
    };
    // A registration for a number the caller does not hold, then one for a number it does.
    let theirs = register("+14155550199").await;
    let their_code = sent_to("+14155550199");
    register("+14155550123").await;
    let my_code = sent_to("+14155550123");
    let path = format!("/User/verify-2fa-opt-in?FileId=12&WsAccessKey={key}");
    let verify = |id: i64, code: &str| {
        call(
            &gh,
            &path,
            "application/json",
            None,
            fixture("ws_verify_request.json", id, code),
        )
    };
    // The code texted to the first number does not confirm the second number's registration.
    let (status, _, answer) = verify(theirs, &my_code).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(gh.audit_events(1).await, ["mfa.code.failed"]);
    let ada = gh.app.store.user_by_name("ada").await.unwrap().unwrap().id;
    assert!(gh.app.store.factors(ada).await.unwrap().is_empty());
    // Its own code does, and the factor is the number that code was texted to.
    let (status, _, answer) = verify(theirs, &their_code).await;
    assert_eq!(status, 200, "{answer}");
    let factors = gh.app.store.factors(ada).await.unwrap();
    assert_eq!(factors.len(), 1);
    assert_eq!(factors[0].destination.as_deref(), Some("+14155550199"));
}
