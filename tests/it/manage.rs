//! The Manage family (seed 004): send and validate OTP for service accounts, in JSON and protobuf,
//! with its envelope on every answer.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gatehouse::api::manage::proto;
use prost::Message;
use serde_json::{Value, json};

use crate::faulty::FaultyStore;
use crate::harness::*;

const SEND: &str = "/manage/v2/user/send/otp";
const VALIDATE: &str = "/manage/v2/user/validate/otp";
const PHONE: &str = "+14155550123";
const SERVICE_PASSWORD: &str = "service account password";

/// The user object's fields, exactly as seed 004 names them.
const USER_FIELDS: [&str; 16] = [
    "firstName",
    "lastName",
    "userName",
    "email",
    "phone",
    "textNumber",
    "nickName",
    "uuid",
    "passwordExpires",
    "forcePasswordChange",
    "latestInviteStatus",
    "latestInviteDate",
    "latestInviteUUID",
    "isValid",
    "lastLoginTimestamp",
    "userRolloutStage",
];

fn service_auth() -> String {
    basic_auth("billing", SERVICE_PASSWORD)
}

fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Gatehouse texting through a webhook (the returned provider, a real HTTP server), with the
/// end user `ada` and the service account `billing` (scope `manage.otp.verify`).
async fn start(
    upstream: &Upstream,
    adjust: impl FnOnce(&mut gatehouse::config::Config),
) -> (Gatehouse, Upstream) {
    let provider = Upstream::start().await;
    let sms_url = format!("{}/sms", provider.url());
    let gh = Gatehouse::start_with(upstream, |c| {
        c.sms.kind = "webhook".into();
        c.sms.url = Some(sms_url);
        adjust(c);
    })
    .await;
    accounts(&gh).await;
    (gh, provider)
}

async fn accounts(gh: &Gatehouse) {
    gh.create_user(json!({
        "userName": "ada", "password": "ada's own password", "email": "ada@example.com",
        "phone": PHONE, "firstName": "Ada", "lastName": "Lovelace", "nickName": "countess"
    }))
    .await;
    gh.create_user(json!({
        "userName": "billing", "password": SERVICE_PASSWORD, "scopes": ["manage.otp.verify"]
    }))
    .await;
}

/// An answer: status, headers and body bytes.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The envelope's `apiRequestId`, checked to be a UUID and the `X-Request-Id` header.
    fn request_id(&self, id: &str) -> String {
        uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("apiRequestId {id:?} is not a UUID"));
        assert_eq!(self.header("x-request-id"), Some(id));
        id.to_owned()
    }
}

async fn call(gh: &Gatehouse, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let mut request = gh.tls_client(true).post(gh.https_url(path)).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

/// A JSON call as the service account.
async fn post(gh: &Gatehouse, path: &str, body: Value) -> Answer {
    let auth = service_auth();
    call(
        gh,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().into_bytes(),
    )
    .await
}

async fn send(gh: &Gatehouse, phone: &str) -> Answer {
    post(gh, SEND, json!({"userName": "ada", "phoneNumber": phone})).await
}

async fn validate(gh: &Gatehouse, phone: &str, otp: &str) -> Answer {
    post(
        gh,
        VALIDATE,
        json!({"userName": "ada", "phoneNumber": phone, "otp": otp}),
    )
    .await
}

/// The code in the last text the provider received, checked to have gone to ada's number.
fn texted_code(provider: &Upstream) -> String {
    let sms: Value = serde_json::from_slice(&provider.last().body).unwrap();
    assert_eq!(sms["to"], PHONE);
    let body = sms["body"].as_str().unwrap();
    body.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap()
        .to_owned()
}

/// Asserts a failure envelope: status, `errorCode`, no `user`, and a request id.
fn assert_error(answer: &Answer, status: u16, code: i64) -> Value {
    let body = answer.json();
    assert_eq!(answer.status, status, "{body}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["errors"][0]["errorCode"], code, "{body}");
    assert_eq!(body["warnings"], json!([]), "{body}");
    assert!(body.get("user").is_none(), "{body}");
    answer.request_id(body["apiRequestId"].as_str().unwrap());
    body
}

#[tokio::test]
async fn texted_code_validates_once_and_answers_the_user() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |_| {}).await;

    let sent = send(&gh, PHONE).await;
    let body = sent.json();
    assert_eq!(sent.status, 200, "{body}");
    assert_eq!(body["errors"], json!([]));
    assert_eq!(body["warnings"], json!([]));
    let sent_id = sent.request_id(body["apiRequestId"].as_str().unwrap());
    assert_eq!(provider.hits(), 1, "one text message");
    let code = texted_code(&provider);

    let before = gh.admin("GET", "/admin/v1/users/ada", None).await.1;
    assert_eq!(before["lastLoginTimestamp"], Value::Null);
    let validated = validate(&gh, PHONE, &code).await;
    let body = validated.json();
    assert_eq!(validated.status, 200, "{body}");
    assert_eq!(body["errors"], json!([]));
    let id = validated.request_id(body["apiRequestId"].as_str().unwrap());
    assert_ne!(id, sent_id, "every answer has its own apiRequestId");
    let user = body["user"].as_object().unwrap();
    let mut names: Vec<&str> = user.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected = USER_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "every field of the seed's user object");
    assert_eq!(user["userName"], "ada");
    assert_eq!(user["firstName"], "Ada");
    assert_eq!(user["lastName"], "Lovelace");
    assert_eq!(user["nickName"], "countess");
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["phone"], PHONE);
    assert_eq!(user["uuid"], before["uuid"]);
    assert_eq!(user["isValid"], true);
    assert_eq!(user["forcePasswordChange"], false);
    let login = user["lastLoginTimestamp"].as_str().unwrap();
    time::OffsetDateTime::parse(login, &time::format_description::well_known::Rfc3339).unwrap();
    let after = gh.admin("GET", "/admin/v1/users/ada", None).await.1;
    assert_eq!(after["lastLoginTimestamp"], login, "the login is stored");

    let again = validate(&gh, PHONE, &code).await;
    assert_error(&again, 400, 4001);
    let events = gh.audit_events(5).await;
    assert!(events.contains(&"manage.otp.sent".to_owned()), "{events:?}");
    assert!(
        events.contains(&"manage.otp.validated".to_owned()),
        "{events:?}"
    );
    // Each names the call that caused it (its apiRequestId) and the caller's address.
    let (_, events) = gh
        .admin("GET", "/admin/v1/audit?event=manage.*", None)
        .await;
    for (name, request) in [("manage.otp.sent", &sent_id), ("manage.otp.validated", &id)] {
        let event = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name} in {events}"));
        assert_eq!(event["requestId"], request.as_str(), "{event}");
        assert_eq!(event["client"], "127.0.0.1", "{event}");
        assert_eq!(event["outcome"], "success", "{event}");
        assert!(!event.to_string().contains(&code), "{event}");
    }
}

#[tokio::test]
async fn a_number_that_is_not_the_users_is_refused_and_nothing_is_texted() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |_| {}).await;

    assert_error(&send(&gh, "+14155550199").await, 400, 4003);
    let unknown = post(
        &gh,
        SEND,
        json!({"userName": "nobody", "phoneNumber": PHONE}),
    )
    .await;
    let unknown_body = assert_error(&unknown, 400, 4003);
    assert_eq!(
        provider.hits(),
        0,
        "no text for a number that is not the user's"
    );

    // The number as people write it is the same number.
    assert_eq!(send(&gh, "+1 (415) 555-0123").await.status, 200);
    let code = texted_code(&provider);
    let mismatch = validate(&gh, "+14155550199", &code).await;
    let mismatch_body = assert_error(&mismatch, 400, 4003);
    assert_eq!(
        mismatch_body["errors"], unknown_body["errors"],
        "an unknown user and a wrong number answer alike"
    );
    assert_eq!(
        validate(&gh, PHONE, &code).await.status,
        200,
        "the code was not used up"
    );
}

#[tokio::test]
async fn five_wrong_codes_lock_the_user_out_even_for_the_right_code() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |_| {}).await;
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let code = texted_code(&provider);
    let wrong = if code == "000000" { "111111" } else { "000000" };

    for _ in 0..4 {
        assert_error(&validate(&gh, PHONE, wrong).await, 400, 4001);
    }
    let locked = validate(&gh, PHONE, wrong).await;
    assert_error(&locked, 429, 4290);
    let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    assert_error(&validate(&gh, PHONE, &code).await, 429, 4290);
    assert!(gh.audit_events(3).await.contains(&"mfa.lockout".to_owned()));
    let metrics = gh.app.meter.render();
    for series in [
        "gatehouse_lockouts_total 1",
        "gatehouse_otp_verifications_total{result=\"rejected\"} 5",
        "gatehouse_otp_verifications_total{result=\"locked\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}

#[tokio::test]
async fn an_expired_code_is_refused_as_expired() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |c| c.mfa.code_ttl = Duration::from_secs(1)).await;
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let code = texted_code(&provider);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_error(&validate(&gh, PHONE, &code).await, 400, 4002);
}

#[tokio::test]
async fn protobuf_answers_carry_the_same_data_as_json() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |_| {}).await;
    let auth = service_auth();
    let protobuf_headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/x-protobuf"),
        ("accept", "application/x-protobuf"),
    ];

    // A protobuf request and answer.
    let request = proto::SendOtpRequest {
        user_name: "ada".into(),
        phone_number: PHONE.into(),
    };
    let sent = call(&gh, SEND, &protobuf_headers, request.encode_to_vec()).await;
    assert_eq!(sent.status, 200);
    assert_eq!(sent.header("content-type"), Some("application/x-protobuf"));
    let decoded = proto::Response::decode(sent.body.as_slice()).unwrap();
    assert!(decoded.errors.is_empty());
    sent.request_id(&decoded.api_request_id);

    let request = proto::ValidateOtpRequest {
        user_name: "ada".into(),
        phone_number: PHONE.into(),
        otp: texted_code(&provider),
    };
    let answer = call(&gh, VALIDATE, &protobuf_headers, request.encode_to_vec()).await;
    assert_eq!(answer.status, 200);
    let from_protobuf = proto::ValidateOtpResponse::decode(answer.body.as_slice()).unwrap();
    answer.request_id(&from_protobuf.api_request_id);
    let proto_user = from_protobuf.user.clone().unwrap();
    assert_eq!(proto_user.user_name, "ada");
    assert_eq!(proto_user.first_name.as_deref(), Some("Ada"));
    assert_eq!(proto_user.text_number, None, "absent stays absent");
    assert!(proto_user.is_valid);

    // The same validation in JSON carries the same data (only the request id and login time,
    // which this second login moves, differ).
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let json_answer = validate(&gh, PHONE, &texted_code(&provider)).await;
    assert_eq!(json_answer.status, 200);
    let mut from_json = json_answer.json();
    let mut protobuf_as_json = serde_json::to_value(&from_protobuf).unwrap();
    for doc in [&mut from_json, &mut protobuf_as_json] {
        doc["apiRequestId"] = Value::Null;
        doc["user"]["lastLoginTimestamp"] = Value::Null;
    }
    assert_eq!(protobuf_as_json, from_json);

    // Errors too.
    let wrong = proto::ValidateOtpRequest {
        otp: "12345x".into(),
        ..request
    };
    let error = call(&gh, VALIDATE, &protobuf_headers, wrong.encode_to_vec()).await;
    assert_eq!(error.status, 400);
    assert_eq!(error.header("content-type"), Some("application/x-protobuf"));
    let decoded = proto::ValidateOtpResponse::decode(error.body.as_slice()).unwrap();
    assert_eq!(decoded.errors.len(), 1);
    assert_eq!(decoded.errors[0].error_code, 4001);
    assert_eq!(decoded.user, None);
    let json_error = assert_error(&validate(&gh, PHONE, "12345x").await, 400, 4001);
    assert_eq!(
        serde_json::to_value(&decoded.errors).unwrap(),
        json_error["errors"]
    );
}

/// Request headers, as name and value.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// The golden envelopes of every error a caller can provoke before a code is even looked at:
/// `tests/fixtures/manage_errors.json`, with `apiRequestId` checked and then left out.
/// `GOLDEN_UPDATE=1` rewrites the file from what gatehouse answers.
#[tokio::test]
async fn every_error_answer_matches_its_golden_envelope() {
    let upstream = Upstream::start().await;
    let (gh, _provider) = start(&upstream, |_| {}).await;
    gh.create_user(
        json!({"userName": "reporting", "password": SERVICE_PASSWORD, "scopes": ["read"]}),
    )
    .await;
    let service = service_auth();
    let wrong_password = basic_auth("billing", "not the password");
    let unscoped = basic_auth("reporting", SERVICE_PASSWORD);
    let json_type = ("content-type", "application/json");
    let good = json!({"userName": "ada", "phoneNumber": PHONE, "otp": "123456"}).to_string();
    // Deeper than any decoder should follow.
    let deep = format!(
        "{{\"userName\": \"ada\", \"phoneNumber\": \"{PHONE}\", \"otp\": {}\"1\"{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(&str, Headers, String)> = vec![
        ("no_credentials", vec![json_type], good.clone()),
        (
            "wrong_password",
            vec![("authorization", &wrong_password), json_type],
            good.clone(),
        ),
        (
            "bearer_token",
            vec![("authorization", "Bearer a.b.c"), json_type],
            good.clone(),
        ),
        (
            "missing_scope",
            vec![("authorization", &unscoped), json_type],
            good.clone(),
        ),
        (
            "bad_client_ip",
            vec![
                ("authorization", &service),
                ("clientip", "10.0.0.300"),
                json_type,
            ],
            good.clone(),
        ),
        (
            "malformed_json",
            vec![("authorization", &service), json_type],
            "{\"userName\": \"ada\",".into(),
        ),
        (
            "missing_field",
            vec![("authorization", &service), json_type],
            json!({"userName": "ada", "phoneNumber": PHONE}).to_string(),
        ),
        (
            "wrong_type",
            vec![("authorization", &service), json_type],
            json!({"userName": "ada", "phoneNumber": PHONE, "otp": 123456}).to_string(),
        ),
        (
            "deep_nesting",
            vec![("authorization", &service), json_type],
            deep,
        ),
        (
            "unknown_field",
            vec![("authorization", &service), json_type],
            json!({"userName": "ada", "phoneNumber": PHONE, "otp": "123456", "OTP": "1"})
                .to_string(),
        ),
        (
            "empty_otp",
            vec![("authorization", &service), json_type],
            json!({"userName": "ada", "phoneNumber": PHONE, "otp": ""}).to_string(),
        ),
        (
            "bad_phone_number",
            vec![("authorization", &service), json_type],
            json!({"userName": "ada", "phoneNumber": "call me", "otp": "123456"}).to_string(),
        ),
        (
            "unsupported_media_type",
            vec![("authorization", &service), ("content-type", "text/xml")],
            "<ValidateOtp/>".into(),
        ),
    ];
    let mut answers = serde_json::Map::new();
    for (name, headers, body) in cases {
        let answer = call(&gh, VALIDATE, &headers, body.into_bytes()).await;
        let mut envelope = answer.json();
        answer.request_id(envelope["apiRequestId"].as_str().unwrap());
        envelope["apiRequestId"] = json!("<uuid>");
        answers.insert(
            name.into(),
            json!({"status": answer.status, "body": envelope}),
        );
    }
    let get = gh
        .tls_client(true)
        .get(gh.https_url(VALIDATE))
        .header("authorization", &service)
        .send()
        .await
        .unwrap();
    assert_eq!(get.headers()["allow"], "POST");
    let status = get.status().as_u16();
    let mut envelope: Value = get.json().await.unwrap();
    envelope["apiRequestId"] = json!("<uuid>");
    answers.insert(
        "method_not_allowed".into(),
        json!({"status": status, "body": envelope}),
    );

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manage_errors.json");
    let actual = Value::Object(answers);
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&actual).unwrap() + "\n").unwrap();
    }
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (name, expected) in golden.as_object().unwrap() {
        assert_eq!(&actual[name], expected, "{name}");
    }
    assert_eq!(
        actual.as_object().unwrap().len(),
        golden.as_object().unwrap().len()
    );
}

#[tokio::test]
async fn unauthorized_answers_name_basic_and_change_nothing() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |_| {}).await;
    let answer = call(
        &gh,
        SEND,
        &[("content-type", "application/json")],
        json!({"userName": "ada", "phoneNumber": PHONE})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_error(&answer, 401, 4010);
    assert!(
        answer
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(provider.hits(), 0);
    assert_eq!(
        upstream.hits(),
        0,
        "the family's paths are answered, never forwarded"
    );
}

#[tokio::test]
async fn client_ips_are_limited_per_address_and_audited() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |c| c.apis.manage.client_ip_limit = 3).await;
    let auth = service_auth();
    let body = json!({"userName": "ada", "phoneNumber": PHONE}).to_string();
    let from = |ip: &'static str| {
        let auth = auth.clone();
        let body = body.clone();
        let gh = &gh;
        async move {
            call(
                gh,
                SEND,
                &[
                    ("authorization", &auth),
                    ("clientip", ip),
                    ("content-type", "application/json"),
                ],
                body.into_bytes(),
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(from("203.0.113.7").await.status, 200);
    }
    let limited = from("203.0.113.7").await;
    assert_error(&limited, 429, 4291);
    assert_eq!(limited.header("retry-after"), Some("60"));
    assert_eq!(provider.hits(), 3, "a limited request texts nothing");
    assert_eq!(
        from("2001:db8::7").await.status,
        200,
        "another address has its own budget"
    );

    let (_, events) = gh.admin("GET", "/admin/v1/audit?limit=1", None).await;
    assert_eq!(events[0]["event"], "manage.otp.sent");
    let detail = events[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("billing") && detail.contains("2001:db8::7"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_store_failure_answers_500_and_leaves_the_code_usable() {
    let upstream = Upstream::start().await;
    let provider = Upstream::start().await;
    let sms_url = format!("{}/sms", provider.url());
    let store = std::sync::Mutex::new(None::<Arc<FaultyStore>>);
    let gh = Gatehouse::start_store(
        &upstream.url(),
        |c| {
            c.sms.kind = "webhook".into();
            c.sms.url = Some(sms_url);
        },
        |c| {
            let faulty = FaultyStore::new(&c.store.path);
            *store.lock().unwrap() = Some(faulty.clone());
            faulty
        },
    )
    .await;
    let store = store.lock().unwrap().clone().unwrap();
    accounts(&gh).await;

    store.fail(&["put_code"]);
    assert_error(&send(&gh, PHONE).await, 500, 5000);
    assert_eq!(provider.hits(), 0, "no text without a stored code");
    store.recover();
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let code = texted_code(&provider);

    store.fail(&["login_with_code"]);
    let failed = validate(&gh, PHONE, &code).await;
    let body = assert_error(&failed, 500, 5000);
    assert!(
        !body.to_string().contains("injected"),
        "store details stay in the log: {body}"
    );
    store.recover();
    // Without a reserved attempt no code is compared: 500, and the code stays usable.
    store.fail(&["reserve_attempt"]);
    assert_error(&validate(&gh, PHONE, &code).await, 500, 5000);
    store.recover();
    let user = gh.admin("GET", "/admin/v1/users/ada", None).await.1;
    assert_eq!(
        user["lastLoginTimestamp"],
        Value::Null,
        "no login was recorded"
    );
    assert_eq!(
        validate(&gh, PHONE, &code).await.status,
        200,
        "the code was not used up"
    );
}

#[tokio::test]
async fn the_family_moves_with_its_base_path_and_is_proxied_when_disabled() {
    let upstream = Upstream::start().await;
    let (gh, _provider) = start(&upstream, |c| {
        c.apis.manage.family.base_path = "/otp".into()
    })
    .await;
    assert_eq!(
        post(
            &gh,
            "/otp/v2/user/send/otp",
            json!({"userName": "ada", "phoneNumber": PHONE})
        )
        .await
        .status,
        200
    );
    // The old path is an ordinary proxied path now (authenticated by the Basic credential).
    assert_eq!(send(&gh, PHONE).await.status, 200);
    assert_eq!(upstream.last().target, SEND);
    gh.stop().await;

    let upstream = Upstream::start().await;
    let (gh, _provider) = start(&upstream, |c| c.apis.manage.family.enabled = false).await;
    let _ = send(&gh, PHONE).await;
    assert_eq!(
        upstream.hits(),
        1,
        "a disabled family's paths are forwarded"
    );
}

#[tokio::test]
async fn concurrent_wrong_codes_are_all_counted() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |c| c.mfa.lockout.max_failures = 20).await;
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let code = texted_code(&provider);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let gh = Arc::new(gh);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let gh = gh.clone();
        tasks.push(tokio::spawn(async move {
            validate(&gh, PHONE, wrong).await.status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    let expected: Vec<u16> = [vec![400; 19], vec![429]].concat();
    assert_eq!(
        statuses, expected,
        "the 20th failure locks, whichever it is"
    );
    assert_error(&validate(&gh, PHONE, &code).await, 429, 4290);
}

#[tokio::test]
async fn a_validated_code_stays_used_after_kill_9_and_no_secret_is_logged() {
    let upstream = Upstream::start().await;
    let provider = Upstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let extra = format!(
        "[store]\npath = \"{}\"\n[sms]\nkind = \"webhook\"\nurl = \"{}/sms\"\n",
        data.path().display(),
        provider.url()
    );
    let config = process_config(&upstream.url(), &extra);
    let token = "dS7BWKPPj6qMfyOLPBlJKv2zfGFyrlX6";
    let env = [("GATEHOUSE_ADMIN_TOKEN", token)];
    let mut gh = Process::start(&config, &env).await;
    let client = http1_client();
    let admin = format!("http://{}/admin/v1/users", gh.addrs["listen.admin"]);
    for body in [
        json!({"userName": "ada", "password": "ada's own password", "phone": PHONE}),
        json!({"userName": "billing", "password": SERVICE_PASSWORD, "scopes": ["manage.otp.verify"]}),
    ] {
        let created = client
            .post(&admin)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let call = |gh: &Process, path: &str, body: Value| {
        client
            .post(gh.http_url(path))
            .basic_auth("billing", Some(SERVICE_PASSWORD))
            .header("clientip", "198.51.100.4")
            .json(&body)
            .send()
    };
    let sent = call(&gh, SEND, json!({"userName": "ada", "phoneNumber": PHONE}))
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let code = texted_code(&provider);
    let body = json!({"userName": "ada", "phoneNumber": PHONE, "otp": code});
    let validated = call(&gh, VALIDATE, body.clone()).await.unwrap();
    assert_eq!(validated.status(), 200);
    let request_id = validated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let login = validated.json::<Value>().await.unwrap()["user"]["lastLoginTimestamp"].clone();
    gh.signal("KILL");
    gh.child.wait().await.unwrap();
    let logs = gh.logs().join("\n");
    assert!(
        logs.contains(&request_id),
        "the apiRequestId is in the access log"
    );
    for secret in [code.as_str(), SERVICE_PASSWORD, "ada's own password"] {
        assert!(!logs.contains(secret), "{secret:?} was logged");
    }

    let gh = Process::start(&config, &env).await;
    let replay = call(&gh, VALIDATE, body).await.unwrap();
    assert_eq!(replay.status(), 400, "the code stays used");
    let ada: Value = client
        .get(format!(
            "http://{}/admin/v1/users/ada",
            gh.addrs["listen.admin"]
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ada["lastLoginTimestamp"], login, "the login stays recorded");
}

/// [`start`] on `backend`.
async fn start_on(
    upstream: &Upstream,
    backend: crate::mfa::Backend,
) -> (Gatehouse, Upstream, Option<crate::pg::Database>) {
    let provider = Upstream::start().await;
    let sms_url = format!("{}/sms", provider.url());
    let (gh, db) = crate::mfa::start_on(upstream, backend, |c| {
        c.sms.kind = "webhook".into();
        c.sms.url = Some(sms_url);
    })
    .await;
    accounts(&gh).await;
    (gh, provider, db)
}

fn otp_counts(gh: &Gatehouse) -> (u64, u64, u64) {
    crate::mfa::otp_counts(&gh.app.meter.render())
}

/// A hundred wrong codes at once: five are compared, ninety-five refused unread, and then the
/// right code gets the locked answer too.
async fn a_hundred_concurrent_wrong_codes_compare_at_most_max_failures(
    backend: crate::mfa::Backend,
) {
    let upstream = Upstream::start().await;
    let (gh, provider, _db) = start_on(&upstream, backend).await;
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let code = texted_code(&provider);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let gh = Arc::new(gh);
    let before = otp_counts(&gh);

    let requests = (0..100)
        .map(|_| {
            let gh = gh.clone();
            async move { validate(&gh, PHONE, wrong).await.status }
        })
        .collect();
    let statuses = crate::mfa::at_once(requests).await;
    assert_eq!(crate::mfa::tally(&statuses), [(400, 4), (429, 96)]);
    assert_eq!(
        otp_counts(&gh),
        (before.0, before.1 + 5, before.2 + 95),
        "only max_failures codes were compared"
    );
    let locked = validate(&gh, PHONE, &code).await;
    assert_error(&locked, 429, 4290);
    assert!(locked.header("retry-after").is_some());
}

mod a_hundred_concurrent_wrong_codes_compare_at_most_max_failures {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sled() {
        super::a_hundred_concurrent_wrong_codes_compare_at_most_max_failures(
            crate::mfa::Backend::Sled,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        super::a_hundred_concurrent_wrong_codes_compare_at_most_max_failures(
            crate::mfa::Backend::Postgres,
        )
        .await;
    }
}

#[tokio::test]
async fn a_new_code_does_not_reset_the_count_and_a_success_does() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |_| {}).await;
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let first = texted_code(&provider);
    let wrong = |code: &str| if code == "000000" { "111111" } else { "000000" };
    for _ in 0..3 {
        assert_error(&validate(&gh, PHONE, wrong(&first)).await, 400, 4001);
    }
    // A new code keeps the three failures: two more lock.
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let second = texted_code(&provider);
    assert_error(&validate(&gh, PHONE, wrong(&second)).await, 400, 4001);
    assert_eq!(validate(&gh, PHONE, &second).await.status, 200);
    // The success reset the count: four failures in a row are not a lockout, the fifth is.
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let third = texted_code(&provider);
    for _ in 0..4 {
        assert_error(&validate(&gh, PHONE, wrong(&third)).await, 400, 4001);
    }
    assert_eq!(send(&gh, PHONE).await.status, 200);
    let fourth = texted_code(&provider);
    assert_error(&validate(&gh, PHONE, wrong(&fourth)).await, 429, 4290);
    assert_error(&validate(&gh, PHONE, &fourth).await, 429, 4290);
}

/// The document allows a `userName` of up to 128 characters, as user names are: one written in
/// letters that take several bytes each is a name like any other, not too long.
#[tokio::test]
async fn a_long_user_name_in_non_ascii_letters_gets_its_code() {
    let upstream = Upstream::start().await;
    let (gh, provider) = start(&upstream, |_| {}).await;
    // 128 characters, 384 bytes in UTF-8.
    let name = "語".repeat(128);
    gh.create_user(
        json!({ "userName": name, "password": "a long name's password", "phone": PHONE }),
    )
    .await;

    let sent = post(&gh, SEND, json!({"userName": name, "phoneNumber": PHONE})).await;
    assert_eq!(sent.status, 200, "{}", sent.json());
    let code = texted_code(&provider);
    let validated = post(
        &gh,
        VALIDATE,
        json!({"userName": name, "phoneNumber": PHONE, "otp": code}),
    )
    .await;
    assert_eq!(validated.status, 200, "{}", validated.json());
    assert_eq!(validated.json()["user"]["userName"], name.as_str());
}
