//! Attacks on passkeys (SPEC §14 with the rules of §10, §11 and §13): a passkey added from a
//! session voids the user's pending enrollment tickets like any confirmed factor, one
//! enrollment link cannot fill the replica's window of ceremonies, and a passkey signs in
//! nobody who is disabled, locked out or whose factors an administrator reset. A ceremony is
//! finished only by its own user and for its own purpose, another user's passkey steps nobody
//! up, and malformed answers and forged option posts get a page, never a failure of the server.

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
use crate::signin::{PASSWORD, SESSION_COOKIE};

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

/// A browser's visit to the sign-in pages made by a plain client (so that several users can be
/// signed in at once): its cookies and the newest CSRF token the pages gave.
struct Visitor {
    client: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
    csrf: String,
}

/// What gatehouse answered: the status, the session cookie set (if any) and the body.
struct Answered {
    status: u16,
    session: Option<String>,
    body: String,
    headers: reqwest::header::HeaderMap,
}

impl Visitor {
    async fn new(gh: &Gatehouse) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut visitor = Visitor {
            client,
            base: gh.http_url(""),
            cookies: Vec::new(),
            csrf: String::new(),
        };
        let page = visitor.get("/auth/login").await;
        assert_eq!(page.status, 200);
        visitor
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn keep(&mut self, response: reqwest::Response) -> Answered {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut session = None;
        for value in headers.get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if name == SESSION_COOKIE && !value.is_empty() {
                session = Some(value.to_owned());
            }
            self.cookies.retain(|(k, _)| k != name);
            self.cookies.push((name.to_owned(), value.to_owned()));
        }
        let body = response.text().await.unwrap();
        if let Some(token) = body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        {
            self.csrf = token.to_owned();
        }
        Answered {
            status,
            session,
            body,
            headers,
        }
    }

    async fn get(&mut self, path: &str) -> Answered {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    /// Posts the form `fields` to `path` with this visit's CSRF token.
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answered {
        let mut form: Vec<(&str, &str)> = vec![("csrf", &self.csrf)];
        form.extend_from_slice(fields);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    async fn sign_in(&mut self, user: &str) {
        let answered = self
            .post("/auth/login", &[("user", user), ("password", PASSWORD)])
            .await;
        assert_eq!(answered.status, 303, "{}", answered.body);
        assert!(answered.session.is_some());
        self.get("/auth/passkeys").await;
    }

    /// The options of a ceremony begun at `path`.
    async fn options(&mut self, path: &str, name: &str) -> Value {
        let answered = self
            .post(path, &[("action", "passkey-options"), ("name", name)])
            .await;
        assert_eq!(answered.status, 200, "{}", answered.body);
        serde_json::from_str(&answered.body).unwrap()
    }

    /// Posts the browser's answer `credential` to the ceremony `ceremony` at `path`.
    async fn finish(&mut self, path: &str, ceremony: &Value, credential: &str) -> Answered {
        let id = ceremony["ceremony"].as_str().unwrap().to_owned();
        self.post(
            path,
            &[
                ("action", "passkey"),
                ("ceremony", &id),
                ("credential", credential),
            ],
        )
        .await
    }
}

/// The browser's authenticator answers `options` (`create` or `get`), as an attacker's page
/// would: `allow` replaces the credentials asked for, `verification` the user verification
/// asked for. The answer, as the page's script posts it.
async fn answer(
    browser: &Browser,
    kind: &str,
    options: &Value,
    allow: Option<&[String]>,
    verification: Option<&str>,
) -> String {
    let answered = browser
        .execute(
            "const [kind, options, allow, uv, done] = arguments;\
             const dec = s => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), c => c.charCodeAt(0));\
             const enc = b => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');\
             const pk = options.publicKey;\
             pk.challenge = dec(pk.challenge);\
             if (pk.user) { pk.user.id = dec(pk.user.id); }\
             (pk.excludeCredentials || []).forEach(c => { c.id = dec(c.id); });\
             (pk.allowCredentials || []).forEach(c => { c.id = dec(c.id); });\
             if (allow) { pk.allowCredentials = allow.map(id => ({type: 'public-key', id: dec(id)})); }\
             if (uv) { if (kind === 'create') { pk.authenticatorSelection.userVerification = uv; } else { pk.userVerification = uv; } }\
             const call = kind === 'create' ? navigator.credentials.create({publicKey: pk}) : navigator.credentials.get({publicKey: pk});\
             call.then(c => { const r = c.response;\
               const out = {id: c.id, rawId: enc(c.rawId), type: c.type, extensions: c.getClientExtensionResults(), response: {clientDataJSON: enc(r.clientDataJSON)}};\
               if (r.attestationObject) { out.response.attestationObject = enc(r.attestationObject); }\
               else { out.response.authenticatorData = enc(r.authenticatorData); out.response.signature = enc(r.signature);\
                 if (r.userHandle) { out.response.userHandle = enc(r.userHandle); } }\
               done(JSON.stringify(out)); }, e => done('failed: ' + e));",
            &[json!(kind), options.clone(), json!(allow), json!(verification)],
            true,
        )
        .await;
    let answered = answered.as_str().unwrap().to_owned();
    assert!(!answered.starts_with("failed"), "{answered}");
    answered
}

/// The base64url ids of the credentials the virtual authenticator `id` holds, oldest first.
async fn credential_ids(browser: &Browser, id: &str) -> Vec<String> {
    crate::passkeys::credentials(browser, id)
        .await
        .iter()
        .map(|c| base64url(c["credentialId"].as_str().unwrap()))
        .collect()
}

/// Base64 `text` in base64url without padding.
fn base64url(text: &str) -> String {
    text.replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_owned()
}

/// Registers a passkey named `name` for the visitor's user from `/auth/passkeys`; its id.
async fn register(
    visitor: &mut Visitor,
    browser: &Browser,
    authenticator: &str,
    name: &str,
) -> String {
    let before = credential_ids(browser, authenticator).await;
    let options = visitor.options("/auth/passkeys", name).await;
    let credential = answer(browser, "create", &options, None, None).await;
    let added = visitor
        .finish("/auth/passkeys", &options, &credential)
        .await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(
        added.body.contains("Your passkey was added."),
        "{}",
        added.body
    );
    credential_ids(browser, authenticator)
        .await
        .into_iter()
        .find(|id| !before.contains(id))
        .unwrap()
}

#[tokio::test]
async fn ceremonies_and_passkeys_are_bound_to_their_user_and_purpose() {
    let (_upstream, gh) = start().await;
    crate::signin::user(&gh, "bob").await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let authenticator = authenticator(&browser).await;
    let mut ada = Visitor::new(&gh).await;
    ada.sign_in("ada").await;
    let mut bob = Visitor::new(&gh).await;
    bob.sign_in("bob").await;

    // Ada's registration, finished in Bob's session: refused, and Bob has no passkey.
    let options = ada.options("/auth/passkeys", "Ada's key").await;
    let credential = answer(&browser, "create", &options, None, None).await;
    let refused = bob.finish("/auth/passkeys", &options, &credential).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(!refused.body.contains("Ada&#39;s key") && !refused.body.contains("Ada's key"));
    let page = bob.get("/auth/passkeys").await;
    assert!(!page.body.contains("Ada"), "{}", page.body);
    // Nor does Ada's ceremony add it for Ada any more.
    let again = ada.finish("/auth/passkeys", &options, &credential).await;
    assert_eq!(again.status, 400, "{}", again.body);

    // A registration ceremony finished at the sign-in.
    let mut stranger = Visitor::new(&gh).await;
    let options = bob.options("/auth/passkeys", "Another").await;
    let credential = answer(&browser, "create", &options, None, None).await;
    let refused = stranger.finish("/auth/login", &options, &credential).await;
    assert_ne!(refused.status, 303, "{}", refused.body);
    assert_eq!(refused.session, None);

    let ada_key = register(&mut ada, &browser, &authenticator, "Ada's key").await;
    let bob_key = register(&mut bob, &browser, &authenticator, "Bob's key").await;
    let only = |id: &String| Some(vec![id.clone()]);

    // Ada's step-up ceremony, answered by Ada's passkey, finished in Bob's session.
    let options = ada.options("/auth/step-up", "").await;
    let credential = answer(&browser, "get", &options, only(&ada_key).as_deref(), None).await;
    let refused = bob.finish("/auth/step-up", &options, &credential).await;
    assert_eq!(refused.status, 400, "{}", refused.body);

    // Ada's passkey answering Bob's own step-up ceremony.
    let options = bob.options("/auth/step-up", "").await;
    let credential = answer(&browser, "get", &options, only(&ada_key).as_deref(), None).await;
    let refused = bob.finish("/auth/step-up", &options, &credential).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("That passkey was not accepted."));

    // A sign-in ceremony finished at the step-up, a step-up ceremony at the sign-in.
    let options = stranger.options("/auth/login", "").await;
    let credential = answer(&browser, "get", &options, only(&ada_key).as_deref(), None).await;
    let refused = ada.finish("/auth/step-up", &options, &credential).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let options = ada.options("/auth/step-up", "").await;
    let credential = answer(&browser, "get", &options, only(&ada_key).as_deref(), None).await;
    let refused = stranger.finish("/auth/login", &options, &credential).await;
    assert_ne!(refused.status, 303, "{}", refused.body);
    assert_eq!(refused.session, None);

    // The right answers still step up.
    for (visitor, key) in [(&mut ada, &ada_key), (&mut bob, &bob_key)] {
        let options = visitor.options("/auth/step-up", "").await;
        let credential = answer(&browser, "get", &options, only(key).as_deref(), None).await;
        let passed = visitor.finish("/auth/step-up", &options, &credential).await;
        assert_eq!(passed.status, 303, "{}", passed.body);
    }
    browser.quit().await;
}

#[tokio::test]
async fn malformed_passkey_answers_and_forged_option_posts_are_refused_with_a_page() {
    let (_upstream, gh) = start().await;
    let mut ada = Visitor::new(&gh).await;
    ada.sign_in("ada").await;
    let mut stranger = Visitor::new(&gh).await;
    let huge = format!("{{\"id\":\"{}\"}}", "A".repeat(900_000));
    let answers = [
        "",
        "not json",
        "{",
        "[]",
        "null",
        "{\"id\": 1, \"rawId\": [], \"type\": false, \"response\": \"x\"}",
        "{\"id\":\"%%%\",\"rawId\":\"%%%\",\"type\":\"public-key\",\"extensions\":{},\
         \"response\":{\"clientDataJSON\":\"***\",\"authenticatorData\":\"***\",\
         \"signature\":\"***\",\"userHandle\":\"***\"}}",
        "{\"id\":\"AAAA\",\"rawId\":\"AAAA\",\"type\":\"public-key\",\"extensions\":{},\
         \"response\":{\"clientDataJSON\":\"AAAA\",\"attestationObject\":\"AAAA\"}}",
        &huge,
    ];
    for credential in answers {
        for (visitor, path) in [(&mut stranger, "/auth/login"), (&mut ada, "/auth/passkeys")] {
            let options = visitor.options(path, "Key").await;
            let refused = visitor.finish(path, &options, credential).await;
            assert!(
                [400, 401, 413].contains(&refused.status),
                "{path} {}: {}",
                refused.status,
                &refused.body[..refused.body.len().min(300)]
            );
            assert!(refused.body.starts_with("<!doctype html>"), "{path}");
            assert_eq!(refused.session, None);
        }
    }
    // Nothing was added to Ada's account.
    let page = ada.get("/auth/passkeys").await;
    assert!(!page.body.contains("Remove"), "{}", page.body);

    // The options are given to this site's own form posts only.
    for path in ["/auth/login", "/auth/step-up", "/auth/passkeys"] {
        let cookie = ada.cookie_header();
        let client = &ada.client;
        let post = |csrf: &str, origin: Option<&str>| {
            let mut request = client
                .post(gh.http_url(path))
                .header("cookie", &cookie)
                .form(&[("csrf", csrf), ("action", "passkey-options")]);
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            request.send()
        };
        for response in [
            post("", None).await.unwrap(),
            post("forged", None).await.unwrap(),
            post(&ada.csrf, Some("https://evil.example")).await.unwrap(),
        ] {
            assert_eq!(response.status().as_u16(), 403, "{path}");
            assert!(
                !response
                    .headers()
                    .keys()
                    .any(|k| k.as_str().starts_with("access-control-")),
                "{path}"
            );
        }
        let got = ada.get(path).await;
        assert_ne!(got.headers.get("content-type").unwrap(), "application/json");
        assert!(
            !got.headers
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_passkey_that_did_not_verify_the_user_signs_nobody_in_and_does_not_step_up_once_it_did() {
    let (_upstream, gh) = start().await;
    let browser = Browser::start(true).await;
    browser.open(&gh.https_url("/auth/login")).await;
    let authenticator = authenticator(&browser).await;
    sign_in_with_password(&browser, &gh, "/auth/login?rd=%2Fauth%2Fpasskeys").await;
    add_passkey(&browser, "Laptop").await;
    // From now on the authenticator answers without verifying the user wherever a page lets it
    // (an attacker's page asks it not to).
    browser
        .devtools(
            "WebAuthn.setUserVerified",
            json!({"authenticatorId": authenticator, "isUserVerified": false}),
        )
        .await;
    browser.open(&gh.https_url("/auth/login")).await;

    let mut visitor = Visitor::new(&gh).await;
    let options = visitor.options("/auth/login", "").await;
    let credential = answer(&browser, "get", &options, None, Some("discouraged")).await;
    let refused = visitor.finish("/auth/login", &options, &credential).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.session.is_none());
    assert!(refused.body.contains("That passkey was not accepted."));

    // Registered with user verification, the passkey keeps needing it: an answer without it does
    // not step up either (no downgrade by a page that asks for none).
    let mut visitor = Visitor::new(&gh).await;
    visitor.sign_in("ada").await;
    visitor.get("/auth/step-up").await;
    let options = visitor.options("/auth/step-up", "").await;
    let credential = answer(&browser, "get", &options, None, Some("discouraged")).await;
    let stepped_up = visitor.finish("/auth/step-up", &options, &credential).await;
    assert_eq!(stepped_up.status, 401, "{}", stepped_up.body);
    assert!(stepped_up.session.is_none());
    let events = gh.admin("GET", "/admin/v1/audit?limit=5", None).await.1;
    assert!(
        events.to_string().contains("verif"),
        "the refusal names user verification: {events}"
    );
    browser.quit().await;
}
