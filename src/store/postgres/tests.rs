#![allow(clippy::unwrap_used, clippy::panic)]
use super::schema::MIGRATIONS;
use super::*;
use std::sync::Arc;

use tokio_postgres::NoTls;

use crate::lockout::Policy;
use crate::store::sled::SledStore;
use crate::store::{
    Application, Domain, ExternalId, FactorKind, IdpLink, LoginFlow, Membership, NewUser, OobCode,
    Organization, Role, SCHEMA_VERSION, Session, SigningKey, Store, Ticket, User, UserPatch, WsKey,
};

const NOW: &str = "2026-01-01T00:00:00Z";
/// [`NOW`] in Unix seconds.
const NOW_UNIX: i64 = 1_767_225_600;

/// The server the tests create their databases on: `GATEHOUSE_TEST_DATABASE_URL`, a URL
/// without a database name (tests/run.sh starts a throwaway server and sets it).
fn server() -> String {
    match std::env::var("GATEHOUSE_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_owned(),
        _ => panic!(
            "this test needs a PostgreSQL server: run the tests with tests/run.sh, which \
             starts a throwaway one, or set GATEHOUSE_TEST_DATABASE_URL to a server URL \
             without a database (such as postgres://postgres@127.0.0.1:PORT) whose user may \
             create databases"
        ),
    }
}

async fn admin() -> tokio_postgres::Client {
    let url = format!("{}/postgres?sslmode=disable", server());
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", server()));
    tokio::spawn(connection);
    client
}

/// A fresh database for one test, dropped (best effort) when the test ends, even by a panic.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("gh_test_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name }
    }

    fn url(&self) -> String {
        format!("{}/{}?sslmode=disable", server(), self.name)
    }

    async fn store(&self) -> PgStore {
        PgStore::connect(&self.url(), 8).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await, and the test's runtime may be shutting down: use a runtime of
        // our own on a thread of our own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async { admin().await.batch_execute(&sql).await })
        })
        .join();
    }
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        user_name: name.into(),
        ..NewUser::default()
    }
}

fn factor(user_id: u64) -> Factor {
    Factor {
        v: SCHEMA_VERSION,
        user_id,
        kind: FactorKind::Otp,
        sealed_secret: Some(vec![1, 2, 3]),
        destination: None,
        last_step: None,
        created: NOW.into(),
    }
}

fn ticket(id: &str, user_id: u64, created_at: i64) -> Ticket {
    Ticket {
        v: SCHEMA_VERSION,
        id: id.into(),
        user_id,
        kind: FactorKind::Otp,
        sealed_secret: None,
        destination: None,
        created_at,
        expires_at: created_at + 100,
        used: false,
        second_factor: false,
    }
}

fn domain(organization_id: i64, name: &str) -> Domain {
    Domain {
        v: SCHEMA_VERSION,
        organization_id,
        domain_id: 0,
        domain: name.into(),
        authentication_method: None,
        created: NOW.into(),
        created_by: "ada".into(),
        modified: NOW.into(),
        modified_by: "ada".into(),
        is_verified: false,
        verification_code: None,
        verification_code_expires: None,
        verification_code_expires_at: None,
        verification_method: None,
        owner_organization_id: organization_id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_once_even_when_replicas_start_together() {
    let db = TestDb::new().await;
    let url = db.url();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        starts.push(tokio::spawn(async move { PgStore::connect(&url, 2).await }));
    }
    for s in starts {
        s.await.unwrap().unwrap();
    }
    let again = db.store().await;
    again.migrate().await.unwrap();
    let client = again.client().await.unwrap();
    let versions: Vec<(i64, i64)> = client
        .query(
            "SELECT version, count(*) FROM gatehouse_migrations
             GROUP BY version ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i64, i64)> = MIGRATIONS.iter().map(|(v, _)| (*v, 1)).collect();
    assert_eq!(versions, expected);
    again.check().await.unwrap();
}

/// A database made by the release before sessions (schema version 1, with users in it) gains the
/// sessions table at its next start, and keeps what it held.
#[tokio::test]
async fn a_database_from_before_sessions_gains_them_at_the_next_start() {
    let db = TestDb::new().await;
    let old = db.store().await;
    let ada = old.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    old.client()
        .await
        .unwrap()
        .batch_execute(
            "DROP TABLE gatehouse_sessions; DROP TABLE gatehouse_login_flows;
             DELETE FROM gatehouse_migrations WHERE version > 1",
        )
        .await
        .unwrap();
    assert!(old.session("x").await.is_err(), "the table is gone");
    drop(old);

    let upgraded = db.store().await;
    let session = Session {
        id_hash: "a".repeat(64),
        user_id: ada.id,
        methods: vec!["pwd".into()],
        created: NOW_UNIX,
        last_seen: NOW_UNIX,
        expires: NOW_UNIX + 3600,
        idp: None,
    };
    upgraded.create_session(session.clone(), 20).await.unwrap();
    assert_eq!(
        upgraded.session(&session.id_hash).await.unwrap(),
        Some(session)
    );
    assert_eq!(upgraded.user_by_name("ada").await.unwrap(), Some(ada));
    let client = upgraded.client().await.unwrap();
    let versions: Vec<i64> = client
        .query(
            "SELECT version FROM gatehouse_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, expected);
    let indexed = client
        .query_opt(
            "SELECT 1 FROM pg_indexes WHERE tablename = 'gatehouse_sessions' \
             AND indexdef LIKE '%(user_id)%'",
            &[],
        )
        .await
        .unwrap();
    assert!(indexed.is_some(), "sessions are indexed by user");
}

/// A database made by the release before sign-in at external providers (schema version 2, with
/// a session in it) keeps that session, as a local one, and gains provider links and sign-in
/// flows at its next start.
#[tokio::test]
async fn a_database_from_before_external_sign_in_keeps_its_sessions_and_gains_flows() {
    let db = TestDb::new().await;
    let old = db.store().await;
    let ada = old.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    old.client()
        .await
        .unwrap()
        .batch_execute(
            "DROP TABLE gatehouse_login_flows; DROP INDEX gatehouse_sessions_idp;
             ALTER TABLE gatehouse_sessions DROP COLUMN idp_provider, DROP COLUMN idp_sid;
             DELETE FROM gatehouse_migrations WHERE version > 2",
        )
        .await
        .unwrap();
    let local = Session {
        id_hash: "a".repeat(64),
        user_id: ada.id,
        methods: vec!["pwd".into()],
        created: NOW_UNIX,
        last_seen: NOW_UNIX,
        expires: NOW_UNIX + 3600,
        idp: None,
    };
    old.client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO gatehouse_sessions (id_hash, user_id, methods, created, last_seen, expires)
             VALUES ($1, $2, '[\"pwd\"]', $3, $3, $4)",
            &[&local.id_hash, &key(ada.id), &NOW_UNIX, &local.expires],
        )
        .await
        .unwrap();
    drop(old);

    let upgraded = db.store().await;
    assert_eq!(
        upgraded.session(&local.id_hash).await.unwrap(),
        Some(local.clone())
    );
    let linked = Session {
        id_hash: "b".repeat(64),
        idp: Some(IdpLink {
            provider: "corp".into(),
            sid: Some("s1".into()),
        }),
        ..local.clone()
    };
    upgraded.create_session(linked.clone(), 20).await.unwrap();
    assert_eq!(
        upgraded.session(&linked.id_hash).await.unwrap(),
        Some(linked)
    );
    assert_eq!(
        upgraded
            .delete_idp_sessions("corp", None, Some("s1"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(upgraded.session(&local.id_hash).await.unwrap(), Some(local));
    let flow = LoginFlow {
        state_hash: "c".repeat(64),
        provider: "corp".into(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        rd: "/".into(),
        expires: NOW_UNIX + 600,
    };
    upgraded.create_login_flow(flow.clone()).await.unwrap();
    assert_eq!(
        upgraded
            .take_login_flow(&flow.state_hash, NOW_UNIX)
            .await
            .unwrap(),
        Some(flow)
    );
    let indexed = upgraded
        .client()
        .await
        .unwrap()
        .query_opt(
            "SELECT 1 FROM pg_indexes WHERE tablename = 'gatehouse_sessions' \
             AND indexdef LIKE '%(idp_provider, idp_sid)%'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        indexed.is_some(),
        "sessions are indexed by provider and sid"
    );
}

#[tokio::test]
async fn an_unreachable_database_fails_quickly_without_quoting_the_url() {
    let started = std::time::Instant::now();
    let Err(err) = PgStore::connect("postgres://u:hunter2@127.0.0.1:1/db?sslmode=disable", 2).await
    else {
        panic!("connected to nothing");
    };
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let Err(err) = PgStore::connect("postgres://u:hun?ter2@host/db", 2).await else {
        panic!("a malformed URL was accepted");
    };
    assert!(!err.to_string().contains("ter2"), "{err}");
}

#[tokio::test]
async fn tls_verifies_the_server_certificate() {
    // The test server's certificate is not one the system trusts (tests/run.sh's throwaway
    // server has a self-signed one for `localhost`): asked for by address, verified TLS must
    // refuse it.
    let ssl: String = admin()
        .await
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get(0);
    if ssl != "on" {
        return;
    }
    let url = format!("{}/postgres?sslmode=require", server());
    let Err(err) = PgStore::connect(&url, 1).await else {
        panic!("sslmode=require accepted a certificate for another name");
    };
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn users_are_unique_by_name_regardless_of_case_and_by_external_id() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let ada = store.create_user(new_user("Ada"), NOW_UNIX).await.unwrap();
    assert_eq!(ada.id, 1);
    let err = store
        .create_user(new_user("ada"), NOW_UNIX)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(what) if what == "user ada"),
        "{err}"
    );
    assert_eq!(store.user_by_name("ADA").await.unwrap().unwrap(), ada);
    assert_eq!(store.user_by_id(ada.id).await.unwrap().unwrap(), ada);
    assert!(store.user_by_name("a\0da").await.unwrap().is_none());

    let external = |name: &str| NewUser {
        external: Some(ExternalId {
            issuer: "https://idp".into(),
            subject: "42".into(),
        }),
        ..new_user(name)
    };
    let grace = store
        .create_user(external("grace"), NOW_UNIX)
        .await
        .unwrap();
    let err = store
        .create_user(external("hopper"), NOW_UNIX)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(what) if what == "external user"),
        "{err}"
    );
    assert_eq!(
        store.user_by_external("https://idp", "42").await.unwrap(),
        Some(grace)
    );
    assert!(
        store
            .user_by_external("https://idp", "4")
            .await
            .unwrap()
            .is_none()
    );

    store.create_user(new_user("bob"), NOW_UNIX).await.unwrap();
    let taken = UserPatch {
        user_name: Some("BOB".into()),
        ..UserPatch::default()
    };
    assert!(matches!(
        store.update_user("ada", taken, NOW_UNIX).await,
        Err(StoreError::Conflict(_))
    ));
    let rename = UserPatch {
        user_name: Some("Lovelace".into()),
        email: Some("ada@example.org".into()),
        ..UserPatch::default()
    };
    let later = "2026-02-01T00:00:00Z";
    let renamed = store
        .update_user("ada", rename, 1_769_904_000)
        .await
        .unwrap();
    assert_eq!(renamed.email.as_deref(), Some("ada@example.org"));
    assert_eq!(renamed.modified, later);
    assert!(store.user_by_name("ada").await.unwrap().is_none());
    assert_eq!(store.user_by_name("lovelace").await.unwrap(), Some(renamed));
    assert!(matches!(
        store
            .update_user("nobody", UserPatch::default(), NOW_UNIX)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn memberships_files_and_applications() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    let m = Membership {
        organization_id: 7,
        role: Role::Admin,
    };
    assert!(matches!(
        store.set_membership("ada", m, NOW_UNIX).await,
        Err(StoreError::NotFound(_))
    ));
    let org = Organization {
        v: SCHEMA_VERSION,
        id: 7,
        name: "Acme".into(),
        created: NOW.into(),
    };
    store.create_organization(org.clone()).await.unwrap();
    assert!(matches!(
        store.create_organization(org.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.organization(7).await.unwrap(), Some(org));
    store.set_membership("ada", m, NOW_UNIX).await.unwrap();
    let member = Membership {
        role: Role::Member,
        ..m
    };
    let user = store.set_membership("ada", member, NOW_UNIX).await.unwrap();
    assert_eq!(user.memberships, vec![member]);
    store.grant_file("ada", 5, NOW_UNIX).await.unwrap();
    let user = store.grant_file("ada", 5, NOW_UNIX).await.unwrap();
    assert_eq!(user.files, vec![5]);

    let app = |name: &str, token_hash: &str| Application {
        v: SCHEMA_VERSION,
        name: name.into(),
        token_hash: token_hash.into(),
        created: NOW.into(),
    };
    store.create_application(app("one", "t1")).await.unwrap();
    assert!(matches!(
        store.create_application(app("one", "t2")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.application_by_token_hash("t1").await.unwrap(),
        Some(app("one", "t1"))
    );
    assert!(
        store
            .application_by_token_hash("t2")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn keys_audit_and_what_a_deleted_user_takes_along() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let ada = store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    let ws = WsKey {
        v: SCHEMA_VERSION,
        key_hash: "h".into(),
        user_id: ada.id,
        file_id: 1,
        created: NOW.into(),
    };
    store.create_ws_key(ws.clone()).await.unwrap();
    assert!(matches!(
        store.create_ws_key(ws.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.ws_key("h").await.unwrap(), Some(ws));

    for kid in ["b", "a", "c"] {
        store
            .add_signing_key(SigningKey {
                v: SCHEMA_VERSION,
                kid: kid.into(),
                pkcs8: vec![1, 2],
                created: NOW.into(),
                activates: 0,
            })
            .await
            .unwrap();
    }
    let kids: Vec<String> = store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["b", "a", "c"], "oldest first");

    for i in 0..5 {
        store
            .append_audit(AuditEvent {
                time: NOW.into(),
                event: format!("e{i}"),
                user_name: Some("nul\0name".into()),
                detail: None,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let events: Vec<String> = store
        .audit(3)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events, ["e4", "e3", "e2"], "newest first");

    // Deleting a user takes its keys and MFA state along.
    store
        .create_ticket(ticket("t", ada.id, 1000))
        .await
        .unwrap();
    assert!(
        store
            .confirm_ticket("t", factor(ada.id), Some(vec!["r".into()]), 1000)
            .await
            .unwrap()
    );
    assert!(store.delete_user("ada").await.unwrap());
    assert!(store.ws_key("h").await.unwrap().is_none());
    assert!(store.factors(ada.id).await.unwrap().is_empty());
    assert!(store.ticket("t").await.unwrap().is_none());
    assert!(!store.consume_recovery_code(ada.id, "r").await.unwrap());
    assert!(!store.delete_user("ada").await.unwrap());
    store.flush().await.unwrap();
}

#[tokio::test]
async fn a_ticket_confirms_once_and_not_after_expiry() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.create_ticket(ticket("t1", 1, 1000)).await.unwrap();
    store.create_ticket(ticket("t2", 1, 1001)).await.unwrap();
    let newest = store.newest_pending_ticket(1, 1050).await.unwrap().unwrap();
    assert_eq!(newest.id, "t2");
    assert!(
        store
            .confirm_ticket("t2", factor(1), Some(vec!["h".into()]), 1050)
            .await
            .unwrap()
    );
    assert!(store.ticket("t2").await.unwrap().unwrap().used);
    assert!(
        !store
            .confirm_ticket("t2", factor(1), None, 1050)
            .await
            .unwrap()
    );
    assert!(
        !store
            .confirm_ticket("t1", factor(1), None, 1100)
            .await
            .unwrap(),
        "expired"
    );
    assert!(
        !store
            .confirm_ticket("t1", factor(2), None, 1050)
            .await
            .unwrap(),
        "other user"
    );
    assert!(
        !store
            .confirm_ticket("nope", factor(1), None, 1050)
            .await
            .unwrap()
    );
    // Confirming t2 voided t1: it was made against the factors before.
    assert!(
        store
            .newest_pending_ticket(1, 1050)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.ticket("t1").await.unwrap().unwrap().used);
    assert_eq!(store.factors(1).await.unwrap(), vec![factor(1)]);
    assert!(store.consume_recovery_code(1, "h").await.unwrap());
    assert!(!store.consume_recovery_code(1, "h").await.unwrap());
    store.reset_mfa(1).await.unwrap();
    assert!(store.factors(1).await.unwrap().is_empty());
    assert!(store.ticket("t1").await.unwrap().is_none());
    assert!(
        store
            .newest_pending_ticket(1, 1050)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_code_is_consumed_once_and_only_before_expiry() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let code = OobCode {
        v: SCHEMA_VERSION,
        user_id: 1,
        purpose: "verify:sms".into(),
        code_hash: "abc".into(),
        expires_at: 2000,
    };
    store.put_code(code.clone()).await.unwrap();
    assert!(
        !store
            .consume_code(1, "verify:sms", "abd", 1000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .consume_code(1, "verify:email", "abc", 1000)
            .await
            .unwrap()
    );
    assert!(
        store
            .consume_code(1, "verify:sms", "abc", 1000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .consume_code(1, "verify:sms", "abc", 1000)
            .await
            .unwrap()
    );
    store.put_code(code.clone()).await.unwrap();
    assert!(
        !store
            .consume_code(1, "verify:sms", "abc", 2000)
            .await
            .unwrap()
    );
    // A new code replaces the old one.
    store
        .put_code(OobCode {
            code_hash: "new".into(),
            ..code
        })
        .await
        .unwrap();
    assert!(
        !store
            .consume_code(1, "verify:sms", "abc", 1000)
            .await
            .unwrap()
    );
    assert!(
        store
            .consume_code(1, "verify:sms", "new", 1000)
            .await
            .unwrap()
    );
}

fn signing_key(kid: &str) -> SigningKey {
    SigningKey {
        v: SCHEMA_VERSION,
        kid: kid.into(),
        pkcs8: vec![1, 2, 3],
        created: NOW.into(),
        activates: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_agree_on_one_signing_key() {
    let db = TestDb::new().await;
    let replicas = [Arc::new(db.store().await), Arc::new(db.store().await)];
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = replicas[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store
                .init_signing_key(signing_key(&format!("k{i}")))
                .await
                .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    assert_eq!(seen[0].len(), 1);
    assert!(seen.iter().all(|keys| *keys == seen[0]), "{seen:?}");
    assert_eq!(replicas[1].signing_keys().await.unwrap(), seen[0]);
}

/// A database from before signing-key rotation (schema version 3, a key stored without an
/// activation time) keeps its key, read as signing from the start, and rotates at its next start.
#[tokio::test]
async fn a_database_from_before_rotation_keeps_its_key_and_rotates() {
    let db = TestDb::new().await;
    let old = db.store().await;
    let client = old.client().await.unwrap();
    client
        .batch_execute(
            "ALTER TABLE gatehouse_signing_keys DROP COLUMN activates;
             DELETE FROM gatehouse_migrations WHERE version > 3;
             INSERT INTO gatehouse_counters (name, value) VALUES ('signing_key', 1)",
        )
        .await
        .unwrap();
    // As the release before wrote it: no `activates` in the document either.
    client
        .execute(
            "INSERT INTO gatehouse_signing_keys (seq, kid, doc) VALUES (1, 'k0', $1)",
            &[&Json(serde_json::json!({
                "v": SCHEMA_VERSION, "kid": "k0", "pkcs8": [1, 2, 3], "created": NOW,
            }))],
        )
        .await
        .unwrap();
    drop(client);
    drop(old);

    let upgraded = db.store().await;
    assert_eq!(upgraded.signing_keys().await.unwrap(), [signing_key("k0")]);
    let next = SigningKey {
        activates: NOW_UNIX + 3600,
        ..signing_key("k1")
    };
    let rotated = upgraded
        .rotate_signing_key(next.clone(), NOW_UNIX)
        .await
        .unwrap();
    assert_eq!(rotated, next);
    let again = upgraded
        .rotate_signing_key(signing_key("k2"), NOW_UNIX)
        .await
        .unwrap();
    assert_eq!(again, next);
    assert_eq!(
        upgraded.signing_keys().await.unwrap(),
        [signing_key("k0"), next]
    );
}

/// A sled store holding one of everything an export carries, and its users ada and grace.
async fn a_sled_store_with_one_of_everything() -> (SledStore, User, User) {
    let sled = SledStore::temporary().unwrap();
    let ada = sled.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    let external = NewUser {
        external: Some(ExternalId {
            issuer: "https://idp".into(),
            subject: "7".into(),
        }),
        ..new_user("grace")
    };
    let grace = sled.create_user(external, NOW_UNIX).await.unwrap();
    for id in [7, -1] {
        sled.create_organization(Organization {
            v: SCHEMA_VERSION,
            id,
            name: format!("org {id}"),
            created: NOW.into(),
        })
        .await
        .unwrap();
    }
    sled.set_membership(
        "ada",
        Membership {
            organization_id: 7,
            role: Role::Admin,
        },
        NOW_UNIX,
    )
    .await
    .unwrap();
    sled.create_application(Application {
        v: SCHEMA_VERSION,
        name: "app".into(),
        token_hash: "th".into(),
        created: NOW.into(),
    })
    .await
    .unwrap();
    sled.create_ws_key(WsKey {
        v: SCHEMA_VERSION,
        key_hash: "wk".into(),
        user_id: ada.id,
        file_id: 3,
        created: NOW.into(),
    })
    .await
    .unwrap();
    sled.add_signing_key(signing_key("new")).await.unwrap();
    sled.add_signing_key(signing_key("k2")).await.unwrap();
    sled.create_ticket(ticket("t1", ada.id, 1000))
        .await
        .unwrap();
    sled.create_ticket(ticket("t2", grace.id, 1000))
        .await
        .unwrap();
    sled.confirm_ticket(
        "t1",
        factor(ada.id),
        Some(vec!["r1".into(), "r2".into()]),
        1000,
    )
    .await
    .unwrap();
    assert!(sled.accept_totp_step(ada.id, 42).await.unwrap());
    for purpose in ["verify:sms", "manage:email"] {
        sled.put_code(OobCode {
            v: SCHEMA_VERSION,
            user_id: grace.id,
            purpose: purpose.into(),
            code_hash: "abc".into(),
            expires_at: 2000,
        })
        .await
        .unwrap();
    }
    let policy = Policy {
        max_failures: 5,
        window: 300,
        duration: 900,
    };
    sled.reserve_attempt(grace.id, 1000, policy).await.unwrap();
    let verified = sled.create_domain(domain(7, "example.org")).await.unwrap();
    sled.save_domain(Domain {
        is_verified: true,
        ..verified.clone()
    })
    .await
    .unwrap();
    sled.create_domain(domain(-1, "example.com")).await.unwrap();
    for i in 0..3 {
        sled.append_audit(AuditEvent {
            time: NOW.into(),
            event: format!("e{i}"),
            user_name: None,
            detail: None,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    (sled, ada, grace)
}

#[tokio::test]
async fn a_sled_store_moves_over_unchanged() {
    let (sled, ada, grace) = a_sled_store_with_one_of_everything().await;
    let expected = sled.export().await.unwrap();

    let db = TestDb::new().await;
    let pg = db.store().await;
    pg.import(expected.clone()).await.unwrap();
    assert_eq!(pg.export().await.unwrap(), expected);

    let carol = pg.create_user(new_user("carol"), NOW_UNIX).await.unwrap();
    assert!(expected.users.iter().all(|u| u.id < carol.id));
    assert!(!pg.accept_totp_step(ada.id, 42).await.unwrap());
    assert!(pg.consume_recovery_code(ada.id, "r2").await.unwrap());
    assert!(
        pg.consume_code(grace.id, "verify:sms", "abc", 1000)
            .await
            .unwrap()
    );
    assert_eq!(
        pg.user_by_external("https://idp", "7")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(grace.id)
    );
    assert_eq!(
        pg.application_by_token_hash("th")
            .await
            .unwrap()
            .map(|a| a.name),
        Some("app".into())
    );
    let theirs = pg.create_domain(domain(-1, "example.org")).await;
    assert!(
        matches!(theirs, Err(StoreError::Conflict(_))),
        "the claim came along"
    );
    let fresh = pg.create_domain(domain(7, "example.net")).await.unwrap();
    assert!(
        expected
            .domains
            .iter()
            .all(|d| d.domain_id < fresh.domain_id)
    );
    pg.append_audit(AuditEvent {
        time: NOW.into(),
        event: "after".into(),
        user_name: None,
        detail: None,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(pg.audit(1).await.unwrap()[0].event, "after");

    let before = pg.export().await.unwrap();
    let err = pg.import(expected).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(pg.export().await.unwrap(), before, "nothing written");
}

/// A store that keeps what requests read for `lag`, once it hears other replicas' changes.
async fn cached_store(db: &TestDb, lag: Duration) -> PgStore {
    let store = db.store().await.with_read_cache(lag);
    for _ in 0..200 {
        if store.hears_changes() {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the cache never started listening");
}

/// Polls `check` for up to two seconds.
async fn within_two_seconds<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..80 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Whether `store` reads the user `id` as disabled.
async fn seen_disabled(store: &PgStore, id: u64) -> bool {
    store
        .shared_user_by_id(id)
        .await
        .unwrap()
        .unwrap()
        .disabled()
}

/// Disables the user `name` through `store`.
async fn disable(store: &PgStore, name: &str) {
    store
        .modify_user(name, NOW_UNIX, &|u: &mut User| u.is_valid = false)
        .await
        .unwrap();
}

fn session_of(user_id: u64, id_hash: &str) -> Session {
    Session {
        id_hash: id_hash.into(),
        user_id,
        methods: vec!["pwd".into()],
        created: NOW_UNIX,
        last_seen: NOW_UNIX,
        expires: NOW_UNIX + 3600,
        idp: None,
    }
}

#[tokio::test]
async fn a_user_disabled_through_another_replica_is_seen_disabled_at_once() {
    let db = TestDb::new().await;
    // A lag far longer than the test: only the announcement can explain a fresh read.
    let reader = cached_store(&db, Duration::from_secs(600)).await;
    let writer = db.store().await;
    let ada = writer.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    assert!(
        !reader
            .shared_user_by_id(ada.id)
            .await
            .unwrap()
            .unwrap()
            .disabled()
    );
    disable(&writer, "ada").await;
    assert!(
        within_two_seconds(|| async { seen_disabled(&reader, ada.id).await }).await,
        "the reader kept serving the enabled user"
    );
    // Deleted elsewhere: gone here too.
    writer.delete_user("ada").await.unwrap();
    assert!(
        within_two_seconds(|| async { reader.shared_user_by_id(ada.id).await.unwrap().is_none() })
            .await
    );
}

#[tokio::test]
async fn a_change_is_answered_once_its_announcement_came_back_to_the_replica_that_made_it() {
    let db = TestDb::new().await;
    let writer = cached_store(&db, Duration::from_secs(600)).await;
    let reader = cached_store(&db, Duration::from_secs(600)).await;
    let ada = writer.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    assert!(reader.shared_user_by_id(ada.id).await.unwrap().is_some());
    let before = writer.changes_heard_back();
    disable(&writer, "ada").await;
    // The database handed the announcement to every listener before the change returned.
    assert_eq!(writer.changes_heard_back(), before + 1);
    assert!(within_two_seconds(|| async { seen_disabled(&reader, ada.id).await }).await);
    // A session seen again holds nothing back: it is not awaited.
    let session = session_of(ada.id, "h1");
    writer.create_session(session, 10).await.unwrap();
    let before = writer.changes_heard_back();
    assert!(writer.touch_session("h1", NOW_UNIX + 5).await.unwrap());
    assert_eq!(writer.changes_heard_back(), before);
    // Only the writer's own marks end its waits: the reader heard none back.
    assert_eq!(reader.changes_heard_back(), 0);
}

#[tokio::test]
async fn a_change_nobody_announced_is_seen_once_the_lag_has_passed() {
    let db = TestDb::new().await;
    let lag = Duration::from_millis(400);
    let reader = cached_store(&db, lag).await;
    let ada = reader.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    assert!(reader.shared_user_by_id(ada.id).await.unwrap().is_some());
    disable_unannounced(&admin_of(&db).await, &ada).await;
    assert!(
        !reader
            .shared_user_by_id(ada.id)
            .await
            .unwrap()
            .unwrap()
            .disabled(),
        "the read was not cached"
    );
    tokio::time::sleep(lag + Duration::from_millis(100)).await;
    assert!(
        reader
            .shared_user_by_id(ada.id)
            .await
            .unwrap()
            .unwrap()
            .disabled()
    );
}

#[tokio::test]
async fn a_change_made_here_is_seen_here_on_the_next_read() {
    let db = TestDb::new().await;
    let store = cached_store(&db, Duration::from_secs(600)).await;
    let ada = store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    store
        .create_session(session_of(ada.id, "one"), 10)
        .await
        .unwrap();
    assert!(store.shared_user_by_id(ada.id).await.unwrap().is_some());
    assert!(store.session("one").await.unwrap().is_some());
    store
        .modify_user("ada", NOW_UNIX, &|u: &mut User| {
            u.scopes = vec!["read".into()]
        })
        .await
        .unwrap();
    let user = store.shared_user_by_id(ada.id).await.unwrap().unwrap();
    assert_eq!(user.scopes, vec!["read".to_owned()]);
    store.delete_session("one").await.unwrap();
    assert!(store.session("one").await.unwrap().is_none());
    // Beyond the cap, the oldest session ends and is not served again.
    store
        .create_session(session_of(ada.id, "two"), 1)
        .await
        .unwrap();
    assert!(store.session("two").await.unwrap().is_some());
    let mut newer = session_of(ada.id, "three");
    newer.created += 1;
    store.create_session(newer, 1).await.unwrap();
    assert!(store.session("two").await.unwrap().is_none());
    assert!(store.session("three").await.unwrap().is_some());
}

#[tokio::test]
async fn sessions_ended_through_another_replica_are_not_served_from_the_cache() {
    let db = TestDb::new().await;
    let reader = cached_store(&db, Duration::from_secs(600)).await;
    let writer = db.store().await;
    let ada = writer.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    for id in ["one", "two", "three"] {
        writer
            .create_session(session_of(ada.id, id), 10)
            .await
            .unwrap();
        assert!(reader.session(id).await.unwrap().is_some());
    }
    writer.delete_session("one").await.unwrap();
    assert!(within_two_seconds(|| async { reader.session("one").await.unwrap().is_none() }).await);
    assert!(reader.session("two").await.unwrap().is_some());
    writer.delete_user_sessions(ada.id).await.unwrap();
    assert!(
        within_two_seconds(|| async {
            reader.session("two").await.unwrap().is_none()
                && reader.session("three").await.unwrap().is_none()
        })
        .await
    );
}

#[tokio::test]
async fn without_a_revocation_lag_nothing_is_cached() {
    let db = TestDb::new().await;
    let store = db.store().await.with_read_cache(Duration::ZERO);
    let ada = store.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    assert!(store.shared_user_by_id(ada.id).await.unwrap().is_some());
    disable_unannounced(&admin_of(&db).await, &ada).await;
    assert!(
        store
            .shared_user_by_id(ada.id)
            .await
            .unwrap()
            .unwrap()
            .disabled()
    );
}

/// Disables `user` behind gatehouse's back: the row changes, and nobody announces it.
async fn disable_unannounced(client: &tokio_postgres::Client, user: &User) {
    let mut disabled = user.clone();
    disabled.is_valid = false;
    client
        .execute(
            "UPDATE gatehouse_users SET doc = $2 WHERE id = $1",
            &[&key(user.id), &tokio_postgres::types::Json(&disabled)],
        )
        .await
        .unwrap();
}

/// A plain connection to the test's database, beside gatehouse's.
async fn admin_of(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_replica_that_stops_hearing_changes_stops_serving_what_it_kept() {
    let db = TestDb::new().await;
    let reader = cached_store(&db, Duration::from_secs(600)).await;
    let ada = reader.create_user(new_user("ada"), NOW_UNIX).await.unwrap();
    assert!(reader.shared_user_by_id(ada.id).await.unwrap().is_some());
    let client = admin_of(&db).await;
    // The listening connection is cut, and a change is made that nobody announces.
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap();
    disable_unannounced(&client, &ada).await;
    assert!(
        within_two_seconds(|| async { seen_disabled(&reader, ada.id).await }).await,
        "the kept user outlived the connection that would have announced its change"
    );
    // Listening again after a while, the cache serves again what it reads from then on.
    assert!(within_two_seconds(|| async { reader.hears_changes() }).await);
}

/// A TCP relay to the test server that can go silent: bytes stop flowing both ways while every
/// connection stays open, as when a host vanishes without a word.
struct SilentRelay {
    addr: std::net::SocketAddr,
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl SilentRelay {
    async fn start() -> SilentRelay {
        let target = {
            use std::str::FromStr;
            let config = tokio_postgres::Config::from_str(&server()).unwrap();
            let host = match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
                _ => "127.0.0.1".to_owned(),
            };
            format!(
                "{host}:{}",
                config.get_ports().first().copied().unwrap_or(5432)
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quiet = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let quiet = quiet.clone();
                tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    let pipe =
                        |mut from: tokio::net::tcp::OwnedReadHalf,
                         mut to: tokio::net::tcp::OwnedWriteHalf,
                         quiet: Arc<std::sync::atomic::AtomicBool>| async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = vec![0u8; 16384];
                            loop {
                                let Ok(n) = from.read(&mut buf).await else {
                                    return;
                                };
                                if n == 0 {
                                    return;
                                }
                                if quiet.load(std::sync::atomic::Ordering::SeqCst) {
                                    // Swallowed, and the connection kept open.
                                    std::future::pending::<()>().await;
                                }
                                if to.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                    tokio::join!(pipe(cr, uw, quiet.clone()), pipe(ur, cw, quiet));
                });
            }
        });
        SilentRelay { addr, silent }
    }
}

#[tokio::test]
async fn a_listening_connection_that_goes_silent_stops_the_cache_within_the_lag() {
    let db = TestDb::new().await;
    let relay = SilentRelay::start().await;
    use std::str::FromStr;
    let config = tokio_postgres::Config::from_str(&server()).unwrap();
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let url = format!(
        "postgres://{user}@127.0.0.1:{}/{}?sslmode=disable",
        relay.addr.port(),
        db.name
    );
    let store = PgStore::connect(&url, 2)
        .await
        .unwrap()
        .with_read_cache(Duration::from_millis(400));
    assert!(within_two_seconds(|| async { store.hears_changes() }).await);
    relay
        .silent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        within_two_seconds(|| async { !store.hears_changes() }).await,
        "a silent listening connection still counted as hearing changes"
    );
}
