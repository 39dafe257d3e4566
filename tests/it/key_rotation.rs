//! Signing-key rotation without logouts (SPEC §13): the next key is in the JWKS before it signs,
//! tokens and assertions signed by a retired key keep working until they expire, an upstream
//! caching the JWKS (PyJWT's `PyJWKClient`, tests/peers/jwks_upstream.py) never meets an unknown
//! `kid`, and replicas on one PostgreSQL agree on the keys, rotate once, and verify each other's
//! tokens.

use std::sync::Arc;
use std::time::Duration;

use gatehouse::app::App;
use gatehouse::auth::{Method, Principal};
use gatehouse::clock::{Clock, FixedClock, SystemClock};
use gatehouse::config::{self, Config, Secret};
use gatehouse::server::BoundAddrs;
use gatehouse::store::Store;
use gatehouse::store::postgres::PgStore;
use gatehouse::store::sled::SledStore;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::harness::*;
use crate::pg::{Database, eventually};
use crate::python_peer::PythonPeer;

const MASTER_KEY: &str = "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=";
/// 2026-12-01T00:00:00Z, where the fixed clocks start.
const T0: i64 = 1_796_083_200;

/// An in-process gatehouse on a given store and clock; stops when dropped.
struct Replica {
    app: Arc<App>,
    addrs: BoundAddrs,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn replica(
    upstream: &str,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    adjust: impl FnOnce(&mut Config),
) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config::from_toml_str(&base_config(dir.path(), upstream)).unwrap();
    config.admin.token = Some(Secret::new(ADMIN_TOKEN));
    config.secrets.master_key = Some(Secret::new(MASTER_KEY));
    adjust(&mut config);
    let app = Arc::new(App::with_store(config, store, clock).await.unwrap());
    let (server, _reloadable) = app.bind().await.unwrap();
    let addrs = server.addrs();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Replica {
        app,
        addrs,
        _dir: dir,
        _stop: stop,
    }
}

impl Replica {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.http.unwrap())
    }

    async fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        let response = http1_client()
            .request(
                http::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{}{path}", self.addrs.admin),
            )
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn rotate(&self) -> (u16, Value) {
        self.admin("POST", "/admin/v1/keys/rotate").await
    }

    /// The `kid`s of the JWKS, in its order.
    async fn jwks(&self) -> Vec<String> {
        let jwks: Value = http1_client()
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn create_user(&self, name: &str) -> Principal {
        let (status, user) = {
            let response = http1_client()
                .post(format!("http://{}/admin/v1/users", self.addrs.admin))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"userName": name, "scopes": ["read"]}))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        };
        assert_eq!(status, 201, "{user}");
        Principal {
            user_id: user["id"].to_string(),
            user_name: name.into(),
            email: None,
            scopes: vec!["read".into()],
            organizations: vec![],
            methods: vec![Method::Pwd],
        }
    }

    fn token(&self, principal: &Principal) -> String {
        self.app.tokens.issue_access(principal).unwrap()
    }

    /// The status of a request to /private/ with `token`.
    async fn bearer(&self, token: &str) -> u16 {
        http1_client()
            .get(self.url("/private/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// The `kid` in a JWT's header.
fn kid(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

/// The `kid` of the assertion the upstream received last.
fn assertion_kid(upstream: &Upstream) -> String {
    kid(upstream.last().headers["x-auth-assertion"]
        .to_str()
        .unwrap())
}

async fn sled_store() -> (Arc<dyn Store>, Box<dyn std::any::Any>) {
    (Arc::new(SledStore::temporary().unwrap()), Box::new(()))
}

async fn postgres_store() -> (Arc<dyn Store>, Box<dyn std::any::Any>) {
    let db = Database::on_shared_server().await;
    let store = Arc::new(PgStore::connect(&db.url(), 8).await.unwrap());
    (store, Box::new(db))
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sled() {
                    let (store, _keep) = super::sled_store().await;
                    super::$name(store).await;
                }

                #[tokio::test]
                async fn postgres() {
                    let (store, _keep) = super::postgres_store().await;
                    super::$name(store).await;
                }
            }
        )*
    };
}

on_both_stores!(
    a_token_issued_before_a_rotation_keeps_working_until_its_exp,
    the_next_key_is_published_before_anything_is_signed_with_it,
);

/// Access tokens live 2 minutes, the next key is published 4 s ahead (so the keys are reread
/// every second); the clock is moved by hand.
fn short_tokens(c: &mut Config) {
    c.tokens.access_ttl = Duration::from_secs(120);
    c.tokens.key_prepublish = Duration::from_secs(4);
}

async fn a_token_issued_before_a_rotation_keeps_working_until_its_exp(store: Arc<dyn Store>) {
    let upstream = Upstream::start().await;
    let clock = FixedClock::at(T0);
    let gh = replica(&upstream.url(), store.clone(), clock.clone(), short_tokens).await;
    let ada = gh.create_user("ada").await;
    let first = gh.jwks().await;
    assert_eq!(first.len(), 1);

    let (status, rotation) = gh.rotate().await;
    assert_eq!(status, 201, "{rotation}");
    let next = rotation["kid"].as_str().unwrap().to_owned();
    assert_eq!(rotation["activates"], T0 + 4);
    // Just before the next key signs, a token is issued with the first one.
    clock.advance(3);
    let old = gh.token(&ada);
    assert_eq!(kid(&old), first[0]);
    clock.advance(1);
    let new = gh.token(&ada);
    assert_eq!(kid(&new), next);
    assert_eq!(gh.bearer(&new).await, 200);
    // The old token works until its `exp` (with the minute of leeway), and not after.
    assert_eq!(gh.bearer(&old).await, 200);
    clock.advance(119 + 60);
    assert_eq!(gh.bearer(&old).await, 200);
    clock.advance(1);
    assert_eq!(gh.bearer(&old).await, 401);
    assert_eq!(gh.bearer(&new).await, 200);

    // The retired key is published until what it signed has expired (2 min + 1 min of leeway
    // after it was retired), then it leaves the JWKS and the store.
    assert_eq!(gh.jwks().await, [first[0].clone(), next.clone()]);
    clock.advance(1);
    assert_eq!(gh.jwks().await, std::slice::from_ref(&next));
    let deleted = eventually(Duration::from_secs(10), || async {
        store
            .signing_keys()
            .await
            .unwrap()
            .iter()
            .all(|k| k.kid != first[0])
    })
    .await;
    assert!(deleted, "the expired key is still in the store");
    let (status, keys) = gh.admin("GET", "/admin/v1/keys").await;
    assert_eq!(status, 200);
    assert_eq!(keys[0]["kid"], next.as_str());
    assert_eq!(keys[0]["state"], "active");
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
}

async fn the_next_key_is_published_before_anything_is_signed_with_it(store: Arc<dyn Store>) {
    let upstream = Upstream::start().await;
    let clock = FixedClock::at(T0);
    let gh = replica(&upstream.url(), store, clock.clone(), short_tokens).await;
    let ada = gh.create_user("ada").await;
    let first = gh.jwks().await;

    let (status, rotation) = gh.rotate().await;
    assert_eq!(status, 201, "{rotation}");
    let next = rotation["kid"].as_str().unwrap().to_owned();
    assert_eq!(gh.jwks().await, [first[0].clone(), next.clone()]);
    let (_, keys) = gh.admin("GET", "/admin/v1/keys").await;
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active", "pending"]);

    // Rotating again while that key is pending adds none: the answer is the pending key.
    let (status, again) = gh.rotate().await;
    assert_eq!((status, &again), (200, &rotation));
    assert_eq!(gh.jwks().await.len(), 2);

    // Published, not signing: tokens and assertions still carry the first key.
    let token = gh.token(&ada);
    assert_eq!(kid(&token), first[0]);
    assert_eq!(gh.bearer(&token).await, 200);
    assert_eq!(assertion_kid(&upstream), first[0]);

    // (An assertion is reused for its principal's requests for half its minute: another user
    // gets a fresh one.)
    clock.advance(4);
    let grace = gh.create_user("grace").await;
    let token = gh.token(&grace);
    assert_eq!(kid(&token), next);
    assert_eq!(gh.bearer(&token).await, 200);
    assert_eq!(assertion_kid(&upstream), next);
    let (_, keys) = gh.admin("GET", "/admin/v1/keys").await;
    assert_eq!(keys[0]["state"], "retired");
    assert_eq!(keys[0]["retired"], T0 + 4);
    assert_eq!(keys[0]["expires"], T0 + 4 + 120 + 60);
    assert_eq!(keys[1]["state"], "active");

    let events = audit_events(&gh).await;
    assert_eq!(
        events.iter().filter(|e| *e == "keys.rotated").count(),
        1,
        "{events:?}"
    );
}

async fn audit_events(gh: &Replica) -> Vec<String> {
    let (status, events) = gh.admin("GET", "/admin/v1/audit?limit=1000").await;
    assert_eq!(status, 200, "{events}");
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_rotation_is_refused_when_the_key_comes_from_a_file() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = crate::keys::TestKey::generate();
    let path = dir.path().join("signing.pem");
    std::fs::write(&path, key.pem()).unwrap();
    let gh = replica(
        &upstream.url(),
        Arc::new(SledStore::temporary().unwrap()),
        Arc::new(SystemClock),
        |c| c.tokens.signing_key_file = Some(path.clone()),
    )
    .await;
    let before = gh.jwks().await;
    let response = http1_client()
        .post(format!("http://{}/admin/v1/keys/rotate", gh.addrs.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    assert_problem(status, Some(&content_type), &body, "signing-key-file");
    assert_eq!(status, 409);
    assert!(body.contains("tokens.signing_key_file"), "{body}");
    assert_eq!(gh.jwks().await, before);
    assert!(!audit_events(&gh).await.contains(&"keys.rotated".to_owned()));
}

#[tokio::test]
async fn an_upstream_verifying_assertions_with_pyjwt_never_meets_an_unknown_kid() {
    let upstream = PythonPeer::start("jwks_upstream.py").await;
    let gh = replica(
        &upstream.url(),
        Arc::new(SledStore::temporary().unwrap()),
        Arc::new(SystemClock),
        |c| c.tokens.key_prepublish = Duration::from_secs(3),
    )
    .await;
    // The upstream keeps the JWK Set for as long as gatehouse lets caches keep it.
    let jwks = http1_client()
        .get(gh.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.headers()["cache-control"], "max-age=1");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("jwks", &gh.url("/.well-known/jwks.json"))
        .append_pair("audience", &gh.app.config.upstream.audience)
        .append_pair("lifespan", "1")
        .finish();
    let configure = http1_client()
        .post(format!("{}/configure?{query}", upstream.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(configure.status(), 200);

    let mut sent = 0;
    let mut kids = Vec::new();
    for rotation in 0..3 {
        let (status, answer) = gh.rotate().await;
        assert_eq!(status, 201, "rotation {rotation}: {answer}");
        kids.push(answer["kid"].as_str().unwrap().to_owned());
        // Requests all through the prepublish period and past the switch, each from a user of
        // its own so that each carries a freshly signed assertion (gatehouse reuses one
        // principal's assertion for half its minute).
        let until = std::time::Instant::now() + Duration::from_millis(3800);
        while std::time::Instant::now() < until {
            let principal = gh.create_user(&format!("u{sent}")).await;
            let response = http1_client()
                .get(gh.url("/private/x"))
                .bearer_auth(gh.token(&principal))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert_eq!(status, 200, "request {sent}: {body}");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let stats: Value = http1_client()
        .get(format!("{}/stats", upstream.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["unknown"], json!([]), "{stats}");
    assert_eq!(stats["failed"], json!([]), "{stats}");
    assert_eq!(stats["verified"], sent, "{stats}");
    // Every rotated key signed assertions the upstream verified.
    for kid in &kids {
        assert!(
            stats["kids"].as_array().unwrap().contains(&json!(kid)),
            "{kid} never signed: {stats}"
        );
    }
}

/// Two replicas on one PostgreSQL database with the same master key and clock.
async fn two_replicas(
    upstream: &Upstream,
    clock: Arc<dyn Clock>,
    adjust: impl Fn(&mut Config) + Clone,
) -> (Replica, Replica, Database) {
    let db = Database::on_shared_server().await;
    let a_store = Arc::new(PgStore::connect(&db.url(), 8).await.unwrap());
    let b_store = Arc::new(PgStore::connect(&db.url(), 8).await.unwrap());
    let a = replica(&upstream.url(), a_store, clock.clone(), adjust.clone()).await;
    let b = replica(&upstream.url(), b_store, clock, adjust).await;
    (a, b, db)
}

#[tokio::test]
async fn two_replicas_agree_on_the_jwks_and_verify_each_others_tokens_after_a_rotation() {
    let upstream = Upstream::start().await;
    let (a, b, _db) = two_replicas(&upstream, Arc::new(SystemClock), |c| {
        c.tokens.key_prepublish = Duration::from_secs(3);
    })
    .await;
    assert_eq!(a.jwks().await, b.jwks().await);
    let ada = a.create_user("ada").await;
    let before_a = a.token(&ada);
    let before_b = b.token(&ada);
    assert_eq!(kid(&before_a), kid(&before_b));

    let (status, rotation) = a.rotate().await;
    assert_eq!(status, 201, "{rotation}");
    let next = rotation["kid"].as_str().unwrap().to_owned();
    // B learns of the key within a quarter of the prepublish period (at least every second).
    let agreed = eventually(Duration::from_secs(10), || async {
        let (ja, jb) = (a.jwks().await, b.jwks().await);
        ja == jb && ja.contains(&next)
    })
    .await;
    assert!(agreed, "{:?} / {:?}", a.jwks().await, b.jwks().await);

    // Once the key signs, each replica accepts what the other signed, old tokens included.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (after_a, after_b) = (a.token(&ada), b.token(&ada));
    assert_eq!(kid(&after_a), next);
    assert_eq!(kid(&after_b), next);
    for token in [&before_a, &before_b, &after_a, &after_b] {
        assert_eq!(a.bearer(token).await, 200);
        assert_eq!(b.bearer(token).await, 200);
    }
}

#[tokio::test]
async fn a_replica_that_has_not_reread_the_keys_learns_a_new_one_from_the_first_token() {
    let upstream = Upstream::start().await;
    // A key published 2 minutes ahead is reread every 30 s; the clock is moved by hand.
    let clock = FixedClock::at(T0);
    let (a, b, _db) = two_replicas(&upstream, clock.clone(), |c| {
        c.tokens.key_prepublish = Duration::from_secs(120);
    })
    .await;
    let ada = a.create_user("ada").await;
    // Let B's first reading of the keys pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, rotation) = a.rotate().await;
    assert_eq!(status, 201, "{rotation}");
    clock.advance(120);
    let token = a.token(&ada);
    assert_eq!(kid(&token), rotation["kid"].as_str().unwrap());
    let accepted = eventually(Duration::from_secs(5), || async {
        b.bearer(&token).await == 200
    })
    .await;
    assert!(accepted, "B never learnt the key {}", kid(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_on_two_replicas_leave_one_pending_key() {
    let upstream = Upstream::start().await;
    let (a, b, _db) = two_replicas(&upstream, Arc::new(SystemClock), |_| {}).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut calls = Vec::new();
    for i in 0..12 {
        let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
        calls.push(tokio::spawn(async move { replica.rotate().await }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let created: Vec<&(u16, Value)> = answers.iter().filter(|(s, _)| *s == 201).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let pending = &created[0].1;
    assert!(
        answers
            .iter()
            .all(|(s, v)| (*s == 201 || *s == 200) && v == pending),
        "{answers:?}"
    );
    let (_, keys) = a.admin("GET", "/admin/v1/keys").await;
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active", "pending"], "{keys}");
    assert_eq!(keys[1]["kid"], pending["kid"]);
}

#[tokio::test]
async fn rotate_every_rotates_once_per_period_across_two_replicas() {
    let upstream = Upstream::start().await;
    // Every 20 s, published 4 s ahead (so each replica rereads the keys every second).
    let clock = FixedClock::at(T0);
    let (a, b, _db) = two_replicas(&upstream, clock.clone(), |c| {
        c.tokens.key_prepublish = Duration::from_secs(4);
        c.tokens.rotate_every = Some(Duration::from_secs(20));
    })
    .await;
    // 5 s of the clock per step, each long enough for both replicas to look: the rotations
    // fall due at +20 (activating at +24), +40 (+44) and +60 (+64).
    for _ in 0..12 {
        clock.advance(5);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let activates = || async {
        let (_, keys) = a.admin("GET", "/admin/v1/keys").await;
        keys.as_array()
            .unwrap()
            .iter()
            .map(|k| k["activates"].as_i64().unwrap())
            .collect::<Vec<i64>>()
    };
    // (On a busy machine a replica may look a step late, but no period passes unrotated.)
    assert!(
        eventually(Duration::from_secs(10), || async {
            activates().await.len() == 4
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let activates = activates().await;
    assert_eq!(activates.len(), 4, "{activates:?}");
    assert_eq!(activates[0], T0);
    assert!(
        activates.windows(2).all(|w| w[1] - w[0] >= 20),
        "{activates:?}"
    );
    if activates != [T0, T0 + 24, T0 + 44, T0 + 64] {
        eprintln!("a replica looked late: {activates:?}");
    }
    let events = audit_events(&b).await;
    assert_eq!(
        events.iter().filter(|e| *e == "keys.rotated").count(),
        3,
        "{events:?}"
    );
    assert_eq!(a.jwks().await, b.jwks().await);
}

/// `gatehouse admin keys …` against `gh`: success, standard output, standard error.
async fn keys_cli(gh: &Replica, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(binary())
        .arg("admin")
        .arg("--url")
        .arg(format!("http://{}", gh.addrs.admin))
        .arg("keys")
        .args(args)
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn admin_cli_rotates_and_lists_the_keys() {
    let upstream = Upstream::start().await;
    let gh = replica(
        &upstream.url(),
        Arc::new(SledStore::temporary().unwrap()),
        Arc::new(SystemClock),
        |_| {},
    )
    .await;
    let (ok, out, err) = keys_cli(&gh, &["rotate"]).await;
    assert!(ok, "{err}");
    let rotation: Value = serde_json::from_str(&out).unwrap();
    let kid = rotation["kid"].as_str().unwrap();
    assert!(gh.jwks().await.contains(&kid.to_owned()));
    // Again while that key is pending: the same key, nothing added.
    let (ok, again, err) = keys_cli(&gh, &["rotate"]).await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), rotation);

    let (ok, out, err) = keys_cli(&gh, &["list"]).await;
    assert!(ok, "{err}");
    let keys: Value = serde_json::from_str(&out).unwrap();
    let listed: Vec<(&str, &str)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kid"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(listed.len(), 2, "{keys}");
    assert_eq!(listed[0].1, "active");
    assert_eq!(listed[1], (kid, "pending"));
}

#[test]
fn the_rotation_settings_are_checked_with_their_keys_named() {
    let dir = tempfile::tempdir().unwrap();
    let with = |tokens: &str| {
        let toml = format!(
            "{}\n[tokens]\n{tokens}\n",
            base_config(dir.path(), "http://127.0.0.1:1")
        );
        config::from_toml_str(&toml).map(|c| c.tokens)
    };
    let tokens = with("").unwrap();
    assert_eq!(tokens.key_prepublish, Duration::from_secs(3600));
    assert_eq!(tokens.rotate_every, None);
    let tokens = with("rotate_every = \"30d\"\nkey_prepublish = \"2h\"").unwrap();
    assert_eq!(tokens.rotate_every, Some(Duration::from_secs(30 * 86400)));
    assert_eq!(tokens.key_prepublish, Duration::from_secs(7200));

    for (settings, key, says) in [
        (
            "rotate_every = \"30m\"",
            "tokens.rotate_every",
            "longer than tokens.key_prepublish (1h)",
        ),
        (
            "rotate_every = \"1h\"",
            "tokens.rotate_every",
            "longer than",
        ),
        (
            "rotate_every = \"30s\"\nkey_prepublish = \"10s\"",
            "tokens.rotate_every",
            "more than 100 keys",
        ),
        ("rotate_every = \"soon\"", "tokens.rotate_every", "duration"),
        (
            "key_prepublish = \"31d\"",
            "tokens.key_prepublish",
            "at most 30d",
        ),
        (
            "rotate_every = \"30d\"\nsigning_key_file = \"/k.pem\"",
            "tokens.rotate_every",
            "tokens.signing_key_file",
        ),
    ] {
        let problem = with(settings).map(drop).unwrap_err().to_string();
        assert!(
            problem.contains(&format!("{key}: ")) && problem.contains(says),
            "{settings}: {problem}"
        );
    }
}
