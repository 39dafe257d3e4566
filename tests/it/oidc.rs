//! Sign-in through external OpenID providers (SPEC §12) against a real provider (`idp`: npm's
//! oidc-provider with its development login page): two providers of gatehouse ("corp" and
//! "partner", two clients of the same provider) beside local password users, every way the
//! callback can fail, groups, a second factor at the provider, and back-channel logout. Here one
//! request at a time, with the cookie jars kept by the test; the same flows in Chromium are in
//! `oidc_browser`.

use std::sync::Arc;
use std::time::Duration;

use gatehouse::store::sled::SledStore;
use serde_json::{Value, json};

use crate::harness::*;
use crate::idp::{AtLogin, Idp, ProviderAgent};
use crate::keys::now;
use crate::signin::{PASSWORD, Page, SESSION_COOKIE, Visitor, urlencoding, user};

/// The cookie that binds a sign-in at a provider to the browser that started it.
pub const OIDC_COOKIE: &str = "__Host-gatehouse-oidc";
pub const CORP_CLIENT: &str = "gatehouse-corp";
pub const PARTNER_CLIENT: &str = "gatehouse-partner";
pub const CORP_SECRET: &str = "corp-secret-7Jx2Qm9LrT4vWc8NbZ1a";
const PARTNER_SECRET: &str = "partner-secret-Hk3Pz6YwE0sDq5Rf";
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The provider's accounts (login name -> claims).
fn accounts() -> Value {
    let person = |name: &str, email: &str, groups: &[&str]| {
        json!({
            "email": email, "email_verified": true, "name": name,
            "preferred_username": name.to_lowercase(), "groups": groups, "amr": ["pwd"],
        })
    };
    let mut dana = person("Dana", "dana@example.com", &["staff"]);
    dana["amr"] = json!(["pwd", "mfa"]);
    let mut mallory = person("Mallory", "mallory@example.com", &["staff"]);
    mallory["email_verified"] = json!(false);
    json!({
        "alice": person("Alice", "alice@example.com", &["staff"]),
        "bob": person("Bob", "bob@partner.example", &["partners"]),
        "carol": person("Carol", "carol@example.com", &["staff", "admins"]),
        "dana": dana,
        "eve": person("Eve", "eve@elsewhere.example", &["staff"]),
        "mallory": mallory,
        "oscar": person("Oscar", "oscar@example.com", &["contractors"]),
    })
}

/// How a test's gatehouse and provider are set up.
#[derive(Default)]
pub struct Options {
    /// Extra keys of the `corp` provider (TOML lines).
    pub corp: &'static str,
    /// Extra keys of the `partner` provider (TOML lines).
    pub partner: &'static str,
    /// More configuration after the providers (TOML).
    pub extra: String,
    /// The https listener on a port chosen before the start, named by `server.public_url`, so
    /// that the provider can send a real browser, and its back-channel calls, to it.
    pub reachable: bool,
    /// A PostgreSQL database (URL) to keep the store in instead of sled, so that
    /// [`Oidc::replica`] can start a second gatehouse on it.
    pub postgres: Option<String>,
    /// A store to run on instead (a [`crate::faulty::FaultyStore`]).
    pub store: Option<Arc<dyn gatehouse::store::Store>>,
}

/// Gatehouse with the providers `corp` ("Corporate SSO") and `partner` ("Partner login") at one
/// real OpenID provider, in front of an upstream.
pub struct Oidc {
    pub upstream: Upstream,
    pub idp: Idp,
    pub gh: Gatehouse,
    /// `server.public_url`.
    pub public_url: String,
    /// The configuration after the base one: the providers and `extra`.
    providers: String,
    postgres: Option<String>,
}

impl Oidc {
    pub async fn start(corp: &'static str, partner: &'static str) -> Oidc {
        Oidc::start_with(Options {
            corp,
            partner,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(options: Options) -> Oidc {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (public_url, https) = if options.reachable {
            let port = closed_port().await.port();
            (
                format!("https://localhost:{port}"),
                format!("127.0.0.1:{port}"),
            )
        } else {
            ("https://localhost".to_owned(), "127.0.0.1:0".to_owned())
        };
        let client = |id: &str, client_id: &str, secret: &str| {
            json!({
                "client_id": client_id,
                "client_secret": secret,
                "redirect_uris": [format!("{public_url}/auth/callback/{id}")],
                "backchannel_logout_uri": format!("{public_url}/auth/backchannel-logout/{id}"),
                "backchannel_logout_session_required": true,
            })
        };
        let idp = Idp::start(json!({
            "clients": [
                client("corp", CORP_CLIENT, CORP_SECRET),
                client("partner", PARTNER_CLIENT, PARTNER_SECRET),
            ],
            "accounts": accounts(),
            "tls_ca_file": dir.path().join("gh.crt"),
        }))
        .await;
        let base = base_config(dir.path(), &upstream.url());
        let base = base
            .replace(
                "public_url = \"https://localhost\"",
                &format!("public_url = \"{public_url}\""),
            )
            .replace("https = \"127.0.0.1:0\"", &format!("https = \"{https}\""));
        let providers = format!(
            r#"
[[oidc.providers]]
id = "corp"
name = "Corporate SSO"
issuer = "{issuer}"
client_id = "{CORP_CLIENT}"
client_secret = "{CORP_SECRET}"
scopes = ["openid", "email", "profile", "groups"]
{corp}

[[oidc.providers]]
id = "partner"
name = "Partner login"
issuer = "{issuer}"
client_id = "{PARTNER_CLIENT}"
client_secret = "{PARTNER_SECRET}"
scopes = ["openid", "email", "profile", "groups"]
{partner}

{extra}
"#,
            issuer = idp.issuer,
            corp = options.corp,
            partner = options.partner,
            extra = options.extra,
        );
        let toml = format!("{base}{providers}");
        let gh = match options.store {
            Some(store) => Gatehouse::start_toml(dir, &toml, |_| {}, |_| store).await,
            None => start_on(dir, &toml, options.postgres.as_deref()).await,
        };
        Oidc {
            upstream,
            idp,
            gh,
            public_url,
            providers,
            postgres: options.postgres,
        }
    }

    /// A second gatehouse with the same providers on the same PostgreSQL database (listeners of
    /// its own, the same `server.public_url`).
    pub async fn replica(&self) -> Gatehouse {
        let postgres = self
            .postgres
            .as_deref()
            .expect("replicas share a PostgreSQL store");
        let dir = tempfile::tempdir().unwrap();
        let base = base_config(dir.path(), &self.upstream.url()).replace(
            "public_url = \"https://localhost\"",
            &format!("public_url = \"{}\"", self.public_url),
        );
        let toml = format!("{base}{}", self.providers);
        start_on(dir, &toml, Some(postgres)).await
    }

    /// A browser at gatehouse's plaintext listener (see `signin::Visitor`).
    pub fn visitor(&self) -> Visitor {
        Visitor::new(self.gh.http_addr())
    }

    /// Starts signing in through `id` for `rd`: the provider's authorization URL gatehouse
    /// redirects to.
    pub async fn begin(&self, visitor: &mut Visitor, id: &str, rd: &str) -> String {
        let page = visitor
            .get(&format!("/auth/login/{id}?rd={}", urlencoding(rd)))
            .await;
        assert_eq!(page.status, 302, "{}", page.body);
        assert!(
            visitor.cookies.contains_key(OIDC_COOKIE),
            "{:?}",
            page.headers
        );
        let location = page.location().to_owned();
        assert!(
            location.starts_with(&format!("{}/", self.idp.issuer)),
            "{location}"
        );
        location
    }

    /// Does `what` at the provider from its authorization URL `url`; returns the path and query
    /// of the callback on gatehouse the provider sends the browser back to.
    pub async fn at_provider(&self, agent: &mut ProviderAgent, url: &str, what: AtLogin) -> String {
        let back = agent
            .authorize(&self.idp, url, what, &self.public_url)
            .await;
        let path = back.strip_prefix(&self.public_url).unwrap().to_owned();
        assert!(path.starts_with("/auth/callback/"), "{back}");
        path
    }

    /// Signs in through `id` as `login` with a provider session of its own; returns the
    /// callback's answer.
    pub async fn sign_in(
        &self,
        visitor: &mut Visitor,
        id: &str,
        login: &'static str,
        rd: &str,
    ) -> Page {
        let url = self.begin(visitor, id, rd).await;
        let callback = self
            .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn(login))
            .await;
        visitor.get(&callback).await
    }

    /// A new browser signed in through `id` as `login`.
    pub async fn signed_in(&self, id: &str, login: &'static str) -> Visitor {
        let mut visitor = self.visitor();
        let page = self.sign_in(&mut visitor, id, login, "/private/").await;
        assert_eq!(
            page.status,
            303,
            "{login}: {}\n{}",
            page.body,
            self.recent_audit().await
        );
        assert_eq!(page.location(), "/private/");
        assert!(visitor.session().is_some());
        visitor
    }

    /// The newest audit events, for failure messages (the reason of a refused sign-in is there).
    pub async fn recent_audit(&self) -> String {
        let (_, events) = self.gh.admin("GET", "/admin/v1/audit?limit=5", None).await;
        events.to_string()
    }

    /// The request the upstream saw last for `path`.
    pub fn seen(&self, path: &str) -> Seen {
        self.upstream
            .all()
            .into_iter()
            .rfind(|s| s.target == path)
            .unwrap_or_else(|| panic!("the upstream never saw {path}"))
    }

    /// Posts `logout_token` to `/auth/backchannel-logout/{id}` as the provider would.
    pub async fn backchannel(&self, id: &str, token: &str) -> reqwest::Response {
        http1_client()
            .post(self.gh.http_url(&format!("/auth/backchannel-logout/{id}")))
            .form(&[("logout_token", token)])
            .send()
            .await
            .unwrap()
    }

    /// Claims of a valid logout token for the client `client_id` (add `sid` and/or `sub`).
    pub fn logout_claims(&self, client_id: &str) -> Value {
        json!({
            "iss": self.idp.issuer,
            "aud": client_id,
            "iat": now(),
            "jti": uuid::Uuid::new_v4().to_string(),
            "events": {LOGOUT_EVENT: {}},
        })
    }
}

/// Gatehouse with `toml`, its store in sled under its directory or in the PostgreSQL database
/// `postgres`.
async fn start_on(dir: tempfile::TempDir, toml: &str, postgres: Option<&str>) -> Gatehouse {
    let store: Option<Arc<dyn gatehouse::store::Store>> = match postgres {
        Some(url) => Some(Arc::new(
            gatehouse::store::postgres::PgStore::connect(url, 8)
                .await
                .unwrap(),
        )),
        None => None,
    };
    let shared = store.is_some();
    Gatehouse::start_toml(
        dir,
        toml,
        |c| {
            if shared {
                // One master key for the replicas, as they share the signing keys it seals.
                c.secrets.master_key = Some(gatehouse::config::Secret::new(
                    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                ));
            }
        },
        |config| match store {
            Some(store) => store,
            None => Arc::new(SledStore::open(&config.store.path).unwrap()),
        },
    )
    .await
}

/// Whether the browser's session is alive: the status of `/auth/session` with its cookies.
pub async fn session_status(visitor: &mut Visitor) -> u16 {
    visitor.get("/auth/session").await.status
}

/// The value of the query parameter `name` of `url` (absolute, or a path and query).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = if url.starts_with('/') {
        format!("https://localhost{url}")
    } else {
        url.to_owned()
    };
    reqwest::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `url` with the query parameter `name` set to `value` (removed when `None`).
fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut parsed = reqwest::Url::parse(&format!("https://localhost{url}")).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    format!("{}?{}", parsed.path(), parsed.query().unwrap_or_default())
}

/// The callback's answer is a refusal: `status`, an HTML page that offers to start again, no
/// session cookie set, no session in the browser afterwards, and `signin.failed` audited.
pub async fn assert_refused(o: &Oidc, visitor: &mut Visitor, page: &Page, status: u16, what: &str) {
    assert_eq!(page.status, status, "{what}: {}", page.body);
    let content_type = page
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/html"),
        "{what}: {content_type}"
    );
    assert!(
        page.body.contains("href=\"/auth/login"),
        "{what}: no way to try again in {}",
        page.body
    );
    let set = page.set_cookie(SESSION_COOKIE);
    assert!(
        set.as_deref().is_none_or(|c| c.contains("Max-Age=0")),
        "{what}: {set:?}"
    );
    assert_eq!(visitor.session(), None, "{what}");
    assert_eq!(session_status(visitor).await, 401, "{what}");
    assert_eq!(o.gh.audit_events(1).await, ["signin.failed"], "{what}");
}

#[tokio::test]
async fn the_test_provider_publishes_its_discovery_document_and_keys() {
    let idp = Idp::start(json!({"clients": [], "accounts": accounts()})).await;
    let client = http1_client();
    let discovery: Value = client
        .get(idp.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], idp.issuer.as_str());
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(discovery["backchannel_logout_supported"], true);
    assert_eq!(discovery["backchannel_logout_session_supported"], true);
    assert!(discovery["end_session_endpoint"].is_string(), "{discovery}");
    let jwks: Value = client
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA", "{jwks}");
    assert!(key.get("d").is_none(), "only the public key is published");
}

#[tokio::test]
async fn signing_in_through_a_provider_creates_the_user_once_and_a_session_with_their_identity() {
    let o = Oidc::start("", "").await;
    let mut visitor = o.visitor();
    let page = visitor
        .get("/auth/login/corp?rd=%2Fprivate%2Fpage%3Fx%3D1")
        .await;
    assert_eq!(page.status, 302, "{}", page.body);
    let state_cookie = page.set_cookie(OIDC_COOKIE).expect("the flow's cookie");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(state_cookie.contains(attribute), "{state_cookie}");
    }
    let url = page.location().to_owned();
    assert!(url.starts_with(&o.idp.url("/auth?")), "{url}");
    let param =
        |name: &str| query_param(&url, name).unwrap_or_else(|| panic!("no {name} in {url}"));
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("client_id"), CORP_CLIENT);
    assert_eq!(
        param("redirect_uri"),
        format!("{}/auth/callback/corp", o.public_url)
    );
    assert!(param("scope").split(' ').any(|s| s == "openid"), "{url}");
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("code_challenge").len(), 43, "a SHA-256 in base64url");
    assert!(param("nonce").len() >= 16, "{url}");
    assert_eq!(
        visitor.cookies[OIDC_COOKIE],
        param("state"),
        "the cookie holds the state"
    );

    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    let page = visitor.get(&callback).await;
    assert_eq!(page.status, 303, "{}", o.recent_audit().await);
    assert_eq!(page.location(), "/private/page?x=1");
    let session = page.set_cookie(SESSION_COOKIE).expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(
        page.set_cookie(OIDC_COOKIE)
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the flow's cookie is cleared"
    );

    let page = visitor.get("/private/page?x=1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = o.seen("/private/page?x=1");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    let id = seen.headers["x-auth-user-id"].clone();
    let document: Value = serde_json::from_str(&visitor.get("/auth/session").await.body).unwrap();
    assert_eq!(document["user"], "alice");
    assert_eq!(document["methods"], json!([]));
    let (status, created) = o.gh.admin("GET", "/admin/v1/users/alice", None).await;
    assert_eq!(status, 200, "{created}");

    // The same person again is the same user, found by issuer and subject.
    let mut again = o.signed_in("corp", "alice").await;
    again.get("/private/again").await;
    assert_eq!(o.seen("/private/again").headers["x-auth-user-id"], id);
}

#[tokio::test]
async fn two_providers_and_local_passwords_sign_in_side_by_side() {
    let o = Oidc::start("", "").await;
    user(&o.gh, "ada").await;
    let page = o.visitor().get("/auth/login?rd=%2Fprivate%2F").await;
    assert_eq!(page.status, 200);
    for (id, name) in [("corp", "Corporate SSO"), ("partner", "Partner login")] {
        // A form with a button, or a link, to the provider's start, labelled with its name.
        let as_form = page.body.contains(&format!("action=\"/auth/login/{id}\""))
            && page.body.contains(&format!(">{name}</button>"));
        let as_link = page.body.contains(&format!(
            "href=\"/auth/login/{id}?rd=%2Fprivate%2F\">{name}</a>"
        ));
        assert!(as_form || as_link, "{id}: {}", page.body);
    }

    let mut alice = o.signed_in("corp", "alice").await;
    let mut bob = o.signed_in("partner", "bob").await;
    let mut ada = o.visitor();
    let signed = ada.sign_in("ada", PASSWORD, "/private/").await;
    assert_eq!(signed.status, 303, "{}", signed.body);
    for (visitor, name) in [(&mut alice, "alice"), (&mut bob, "bob"), (&mut ada, "ada")] {
        let path = format!("/private/{name}");
        assert_eq!(visitor.get(&path).await.status, 200);
        assert_eq!(o.seen(&path).headers["x-auth-user"], name);
    }
}

#[tokio::test]
async fn consent_denied_or_an_error_at_the_provider_shows_a_page_and_starts_no_session() {
    let o = Oidc::start("", "").await;
    let mut visitor = o.visitor();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::Cancel)
        .await;
    assert_eq!(
        query_param(&callback, "error").as_deref(),
        Some("access_denied")
    );
    let page = visitor.get(&callback).await;
    assert_refused(&o, &mut visitor, &page, 403, "consent denied").await;

    // Any other error the provider reports, with the flow's own state.
    let mut visitor = o.visitor();
    o.begin(&mut visitor, "corp", "/private/").await;
    let state = visitor.cookies[OIDC_COOKIE].clone();
    let page = visitor
        .get(&format!(
            "/auth/callback/corp?error=server_error&error_description=down&state={state}"
        ))
        .await;
    assert_refused(&o, &mut visitor, &page, 400, "server_error").await;
}

#[tokio::test]
async fn a_callback_without_state_or_code_starts_no_session() {
    let o = Oidc::start("", "").await;
    let mut visitor = o.visitor();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    let stateless = with_param(&callback, "state", None);
    let page = visitor.get(&stateless).await;
    assert_refused(&o, &mut visitor, &page, 400, "no state").await;

    let mut visitor = o.visitor();
    o.begin(&mut visitor, "corp", "/private/").await;
    let state = visitor.cookies[OIDC_COOKIE].clone();
    let page = visitor
        .get(&format!("/auth/callback/corp?state={state}"))
        .await;
    assert_refused(&o, &mut visitor, &page, 400, "no code").await;
}

#[tokio::test]
async fn a_replayed_callback_starts_no_second_session() {
    let o = Oidc::start("", "").await;
    let mut visitor = o.visitor();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let flow_cookie = visitor.cookies[OIDC_COOKIE].clone();
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    let page = visitor.get(&callback).await;
    assert_eq!(page.status, 303, "{}", page.body);

    // The same address with the same flow cookie, from wherever it was copied.
    let mut replayer = o.visitor();
    replayer.cookies.insert(OIDC_COOKIE.into(), flow_cookie);
    let page = replayer.get(&callback).await;
    assert_refused(&o, &mut replayer, &page, 400, "replayed").await;
}

#[tokio::test]
async fn a_callback_in_another_browser_than_the_one_that_started_it_starts_no_session() {
    let o = Oidc::start("", "").await;
    let mut victim = o.visitor();
    let url = o.begin(&mut victim, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    // The attacker's browser holds a flow of its own, and none at all.
    let mut attacker = o.visitor();
    o.begin(&mut attacker, "corp", "/private/").await;
    let page = attacker.get(&callback).await;
    assert_refused(&o, &mut attacker, &page, 400, "another browser's flow").await;
    let mut bare = o.visitor();
    let page = bare.get(&callback).await;
    assert_refused(&o, &mut bare, &page, 400, "no flow cookie").await;
}

#[tokio::test]
async fn an_expired_or_already_used_code_starts_no_session() {
    let o = Oidc::start("", "").await;
    // A code used once already: sign in with it, then present it with another flow's state.
    let mut first = o.visitor();
    let url = o.begin(&mut first, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    let used = query_param(&callback, "code").unwrap();
    assert_eq!(first.get(&callback).await.status, 303);
    let mut visitor = o.visitor();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    let page = visitor
        .get(&with_param(&callback, "code", Some(&used)))
        .await;
    assert_refused(&o, &mut visitor, &page, 400, "used code").await;

    // A code past its lifetime at the provider.
    o.idp.set_code_lifetime(1).await;
    let mut visitor = o.visitor();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let page = visitor.get(&callback).await;
    assert_refused(&o, &mut visitor, &page, 400, "expired code").await;
}

#[tokio::test]
async fn an_id_token_that_fails_verification_starts_no_session() {
    let o = Oidc::start("", "").await;
    let cases = [
        ("another audience", json!({"aud": "someone-else"})),
        ("another nonce", json!({"nonce": "not-this-flows-nonce"})),
        ("no nonce", json!({"nonce": null})),
        ("another issuer", json!({"iss": "http://127.0.0.1:9"})),
        ("expired", json!({"exp": now() - 3600, "iat": now() - 7200})),
    ];
    for (what, claims) in cases {
        let mut visitor = o.visitor();
        let url = o.begin(&mut visitor, "corp", "/private/").await;
        let callback = o
            .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
            .await;
        o.idp.tamper_next_id_token(claims).await;
        let page = visitor.get(&callback).await;
        assert_refused(&o, &mut visitor, &page, 400, what).await;
    }
    let mut visitor = o.visitor();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    o.idp.sign_next_id_token_with_foreign_key().await;
    let page = visitor.get(&callback).await;
    assert_refused(&o, &mut visitor, &page, 400, "a signature by another key").await;

    // Untampered, the same steps sign in.
    o.signed_in("corp", "alice").await;
}

#[tokio::test]
async fn users_outside_the_allowed_domains_or_groups_are_refused() {
    let o = Oidc::start(
        "allowed_email_domains = [\"example.com\"]\nallowed_groups = [\"staff\"]",
        "",
    )
    .await;
    for (login, what) in [
        ("eve", "an email of another domain"),
        ("mallory", "an unverified email"),
        ("oscar", "outside the allowed groups"),
    ] {
        let mut visitor = o.visitor();
        let page = o.sign_in(&mut visitor, "corp", login, "/private/").await;
        assert_refused(&o, &mut visitor, &page, 403, what).await;
    }
    o.signed_in("corp", "alice").await;
    // The other provider has no such rule.
    o.signed_in("partner", "oscar").await;
}

#[tokio::test]
async fn groups_map_to_scopes_at_each_sign_in_and_a_lost_group_loses_its_scopes() {
    let o = Oidc::start(
        "scopes_from_groups = { admins = [\"admin\"], staff = [\"read\"] }",
        "",
    )
    .await;
    let scopes = |seen: &Seen| {
        let mut scopes: Vec<String> = seen.headers["x-auth-scopes"]
            .to_str()
            .unwrap()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        scopes.sort();
        scopes
    };
    let mut carol = o.signed_in("corp", "carol").await;
    carol.get("/private/1").await;
    assert_eq!(scopes(&o.seen("/private/1")), ["admin", "read"]);

    // A scope given by other means is no mapping's business.
    let (status, patched) =
        o.gh.admin(
            "PATCH",
            "/admin/v1/users/carol",
            Some(json!({"scopes": ["admin", "read", "write"]})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");

    let mut claims = accounts()["carol"].clone();
    claims["groups"] = json!(["staff"]);
    o.idp.set_account("carol", claims).await;
    let mut carol = o.signed_in("corp", "carol").await;
    carol.get("/private/2").await;
    assert_eq!(scopes(&o.seen("/private/2")), ["read", "write"]);
}

#[tokio::test]
async fn a_second_factor_at_the_provider_opens_mfa_routes_only_when_trusted() {
    let o = Oidc::start("trust_idp_mfa = true", "").await;
    let mut trusted = o.signed_in("corp", "dana").await;
    let page = trusted.get("/secure/x").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let methods = o.seen("/secure/x").headers["x-auth-methods"].clone();
    assert!(
        methods.to_str().unwrap().split(',').any(|m| m == "mfa"),
        "{methods:?}"
    );
    let document: Value = serde_json::from_str(&trusted.get("/auth/session").await.body).unwrap();
    assert_eq!(document["methods"], json!(["mfa"]));

    let mut untrusted = o.signed_in("partner", "dana").await;
    let page = untrusted.get("/secure/y").await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert!(
        page.location().starts_with("/auth/step-up"),
        "{}",
        page.location()
    );
    let document: Value = serde_json::from_str(&untrusted.get("/auth/session").await.body).unwrap();
    assert_eq!(document["methods"], json!([]));

    // A password alone at a trusted provider is no second factor.
    let mut password_only = o.signed_in("corp", "alice").await;
    let page = password_only.get("/secure/z").await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert!(
        page.location().starts_with("/auth/step-up"),
        "{}",
        page.location()
    );
}

#[tokio::test]
async fn new_users_beyond_a_providers_limit_are_refused_and_known_users_still_sign_in() {
    let o = Oidc::start("max_new_users = 1\nnew_users_window = \"1h\"", "").await;
    o.signed_in("corp", "alice").await;
    let mut visitor = o.visitor();
    let page = o.sign_in(&mut visitor, "corp", "bob", "/private/").await;
    assert_refused(&o, &mut visitor, &page, 429, "a second new user").await;
    o.signed_in("corp", "alice").await;
}

#[tokio::test]
async fn a_logout_token_for_a_user_ends_their_sessions_through_that_provider_only() {
    let o = Oidc::start("", "").await;
    user(&o.gh, "ada").await;
    let mut corp_1 = o.signed_in("corp", "alice").await;
    let mut corp_2 = o.signed_in("corp", "alice").await;
    let mut partner = o.signed_in("partner", "alice").await;
    let mut local = o.visitor();
    assert_eq!(local.sign_in("ada", PASSWORD, "/").await.status, 303);

    let mut claims = o.logout_claims(CORP_CLIENT);
    claims["sub"] = json!("alice");
    let token = o.idp.logout_token(claims).await;
    let response = o.backchannel("corp", &token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.text().await.unwrap(), "");

    assert_eq!(session_status(&mut corp_1).await, 401);
    assert_eq!(session_status(&mut corp_2).await, 401);
    assert_eq!(
        session_status(&mut partner).await,
        200,
        "another provider's"
    );
    assert_eq!(session_status(&mut local).await, 200, "another user's");
    let page = corp_1.get("/private/x").await;
    assert_eq!(page.status, 302);
    assert_eq!(page.location(), "/auth/login?rd=%2Fprivate%2Fx");
}

/// A logout the store fails to carry out is answered 503, and the provider's next try of the
/// same token ends the sessions: the token is not spent on the failed try.
#[tokio::test]
async fn a_logout_token_the_store_failed_to_carry_out_works_when_sent_again() {
    let data = tempfile::tempdir().unwrap();
    let faulty = crate::faulty::FaultyStore::new(data.path());
    let o = Oidc::start_with(Options {
        store: Some(faulty.clone()),
        ..Options::default()
    })
    .await;
    let mut alice = o.signed_in("corp", "alice").await;
    let mut claims = o.logout_claims(CORP_CLIENT);
    claims["sub"] = json!("alice");
    let token = o.idp.logout_token(claims).await;
    faulty.fail(&["delete_idp_sessions"]);
    let response = o.backchannel("corp", &token).await;
    assert_eq!(response.status(), 503);
    faulty.recover();
    assert_eq!(session_status(&mut alice).await, 200, "nothing ended yet");
    assert_eq!(o.backchannel("corp", &token).await.status(), 200);
    assert_eq!(session_status(&mut alice).await, 401);
    // Once carried out, the token is spent.
    assert_eq!(o.backchannel("corp", &token).await.status(), 400);
}

#[tokio::test]
async fn a_logout_token_for_a_provider_session_ends_only_that_session() {
    let o = Oidc::start("", "").await;
    let mut first = o.signed_in("corp", "alice").await;
    let sid = o.idp.id_tokens().await.last().unwrap()["sid"]
        .as_str()
        .expect("the provider puts sid in its ID tokens")
        .to_owned();
    let mut second = o.signed_in("corp", "alice").await;
    assert_ne!(o.idp.id_tokens().await.last().unwrap()["sid"], sid.as_str());

    let mut claims = o.logout_claims(CORP_CLIENT);
    claims["sid"] = json!(sid);
    let token = o.idp.logout_token(claims).await;
    assert_eq!(o.backchannel("corp", &token).await.status(), 200);
    assert_eq!(session_status(&mut first).await, 401);
    assert_eq!(session_status(&mut second).await, 200);

    // A session the provider knows and gatehouse does not: nothing to end, still 200.
    let mut claims = o.logout_claims(CORP_CLIENT);
    claims["sid"] = json!("unknown-session");
    let token = o.idp.logout_token(claims).await;
    assert_eq!(o.backchannel("corp", &token).await.status(), 200);
    assert_eq!(session_status(&mut second).await, 200);
}

#[tokio::test]
async fn signing_out_at_the_provider_ends_the_session_through_its_back_channel() {
    let o = Oidc::start_with(Options {
        reachable: true,
        ..Options::default()
    })
    .await;
    let mut visitor = o.visitor();
    let mut agent = ProviderAgent::new();
    let url = o.begin(&mut visitor, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut agent, &url, AtLogin::SignIn("alice"))
        .await;
    assert_eq!(visitor.get(&callback).await.status, 303);
    assert_eq!(session_status(&mut visitor).await, 200);

    agent.sign_out(&o.idp).await;
    let deliveries = o.idp.backchannel_deliveries().await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["client_id"], CORP_CLIENT);
    assert_eq!(deliveries[0]["ok"], true, "{deliveries:?}");
    assert_eq!(session_status(&mut visitor).await, 401);
}

#[tokio::test]
async fn logout_tokens_that_fail_verification_are_refused_and_end_nothing() {
    let o = Oidc::start("", "").await;
    let mut alice = o.signed_in("corp", "alice").await;
    let valid = || {
        let mut claims = o.logout_claims(CORP_CLIENT);
        claims["sub"] = json!("alice");
        claims
    };
    let changed = |name: &str, value: Value| {
        let mut claims = valid();
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value;
        }
        claims
    };
    let mut cases = vec![
        ("another audience", changed("aud", json!("someone-else"))),
        (
            "the other client's audience",
            changed("aud", json!(PARTNER_CLIENT)),
        ),
        (
            "another issuer",
            changed("iss", json!("http://127.0.0.1:9")),
        ),
        ("a nonce", changed("nonce", json!("n-0S6_WzA2Mj"))),
        ("no events", changed("events", Value::Null)),
        (
            "another event",
            changed("events", json!({"http://example.com/other": {}})),
        ),
        ("issued long ago", changed("iat", json!(now() - 3600))),
        ("no iat", changed("iat", Value::Null)),
    ];
    let mut neither = valid();
    neither.as_object_mut().unwrap().remove("sub");
    cases.push(("neither sid nor sub", neither));
    let mut tokens = Vec::new();
    for (what, claims) in cases {
        tokens.push((what, o.idp.logout_token(claims).await));
    }
    tokens.push((
        "a signature by another key",
        o.idp.logout_token_with_foreign_key(valid()).await,
    ));
    tokens.push(("not a JWT", "not.a.jwt".to_owned()));
    for (what, token) in &tokens {
        let response = o.backchannel("corp", token).await;
        assert_eq!(response.status(), 400, "{what}");
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(body["error"], "invalid_request", "{what}: {body}");
        assert!(body["error_description"].is_string(), "{what}: {body}");
    }
    let response = http1_client()
        .post(o.gh.http_url("/auth/backchannel-logout/corp"))
        .form(&[("other", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "no logout_token");
    assert_eq!(session_status(&mut alice).await, 200, "nothing ended");

    // A provider gatehouse does not know.
    let token = o.idp.logout_token(valid()).await;
    assert_eq!(o.backchannel("nobody", &token).await.status(), 404);

    // A valid token works once: its jti cannot be replayed.
    let token = o.idp.logout_token(valid()).await;
    assert_eq!(o.backchannel("corp", &token).await.status(), 200);
    assert_eq!(session_status(&mut alice).await, 401);
    let replayed = o.backchannel("corp", &token).await;
    assert_eq!(replayed.status(), 400, "a replayed jti");
}

#[tokio::test]
async fn a_provider_whose_discovery_fails_answers_503_and_the_others_work() {
    let closed = closed_port().await;
    let o = Oidc::start_with(Options {
        extra: format!(
            "[[oidc.providers]]\nid = \"gone\"\nname = \"Gone SSO\"\nissuer = \"http://{closed}\"\n\
             client_id = \"gatehouse\"\nclient_secret = \"gone-secret-5Tq8Lm2Xv7Rb\"\n"
        ),
        ..Options::default()
    })
    .await;
    let mut visitor = o.visitor();
    let page = visitor.get("/auth/login/gone?rd=%2Fprivate%2F").await;
    assert_eq!(page.status, 503, "{}", page.body);
    let content_type = page.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert_eq!(visitor.session(), None);
    let page = visitor.get("/auth/login/nobody").await;
    assert_eq!(page.status, 404, "{}", page.body);

    o.signed_in("corp", "alice").await;
    o.signed_in("partner", "bob").await;
}

/// On PostgreSQL, a sign-in started on one replica finishes on another, its callback works once
/// whichever replica sees it again, and a back-channel logout received by one replica ends the
/// session on both.
#[tokio::test]
async fn replicas_share_sign_ins_at_a_provider_and_end_them_together() {
    let db = crate::pg::Database::on_shared_server().await;
    let o = Oidc::start_with(Options {
        postgres: Some(db.url()),
        ..Options::default()
    })
    .await;
    let b = o.replica().await;

    let mut at_a = o.visitor();
    let url = o.begin(&mut at_a, "corp", "/private/").await;
    let callback = o
        .at_provider(&mut ProviderAgent::new(), &url, AtLogin::SignIn("alice"))
        .await;
    let mut at_b = Visitor::new(b.http_addr());
    at_b.cookies = at_a.cookies.clone();
    let page = at_b.get(&callback).await;
    assert_eq!(
        page.status,
        303,
        "{}\n{}",
        page.body,
        o.recent_audit().await
    );
    assert!(at_b.session().is_some());

    // The same callback, with the same flow cookie, on the replica that started it.
    let replay = at_a.get(&callback).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert_eq!(session_status(&mut at_a).await, 401);

    at_a.cookies = at_b.cookies.clone();
    assert_eq!(session_status(&mut at_a).await, 200);
    assert_eq!(session_status(&mut at_b).await, 200);

    let sid = o.idp.id_tokens().await.last().unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut claims = o.logout_claims(CORP_CLIENT);
    claims["sid"] = json!(sid);
    let token = o.idp.logout_token(claims).await;
    assert_eq!(o.backchannel("corp", &token).await.status(), 200);
    assert_eq!(session_status(&mut at_b).await, 401);
    assert_eq!(session_status(&mut at_a).await, 401);

    // The token was used on one replica: the other refuses it.
    let replayed = http1_client()
        .post(b.http_url("/auth/backchannel-logout/corp"))
        .form(&[("logout_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 400);
}
