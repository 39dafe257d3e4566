//! Replicas on PostgreSQL keep what authenticated requests read (the user, the session, the
//! ApplicationToken's registration) in memory (SPEC §10, `auth.revocation_lag`): a change made
//! through one replica is still refused by every other on its next request, also while that
//! replica is serving many requests of the same user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::pg::Database;

/// Two in-process replicas on one database, opened as `gatehouse serve` opens a PostgreSQL
/// store (with the configured `auth.revocation_lag`), with `/scoped/` needing the scope `read`.
async fn replicas(upstream: &Upstream, db: &Database) -> (Gatehouse, Gatehouse) {
    let mut both = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "{}\n[[routes]]\npath_prefix = \"/scoped/\"\naccess = \"authenticated\"\nscopes = [\"read\"]\n",
            base_config(dir.path(), &upstream.url())
        );
        let url = db.url();
        let store = gatehouse::store::postgres::PgStore::connect(&url, 4)
            .await
            .unwrap();
        let gh = Gatehouse::start_toml(
            dir,
            &toml,
            |c| {
                // One master key for the replicas, as they share the signing keys it seals.
                c.secrets.master_key = Some(gatehouse::config::Secret::new(
                    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                ));
            },
            move |config| {
                let store: Arc<dyn gatehouse::store::Store> =
                    Arc::new(store.with_read_cache(config.auth.revocation_lag));
                store
            },
        )
        .await;
        both.push(gh);
    }
    let b = both.pop().unwrap();
    (both.pop().unwrap(), b)
}

fn bearer(gh: &Gatehouse, user: &serde_json::Value) -> String {
    let principal = gatehouse::auth::Principal {
        user_id: user["id"].to_string(),
        user_name: user["userName"].as_str().unwrap().to_owned(),
        email: None,
        scopes: vec!["read".into()],
        organizations: vec![],
        methods: vec![gatehouse::auth::Method::Pwd],
    };
    format!("Bearer {}", gh.app.tokens.issue_access(&principal).unwrap())
}

async fn status(gh: &Gatehouse, path: &str, authorization: &str) -> u16 {
    http1_client()
        .get(gh.http_url(path))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Requests `path` on `gh` from `tasks` concurrent clients while `change` runs, then a little
/// longer; every request sent after `change` returned must get `refused`.
async fn refused_from_the_next_request<F, Fut>(
    gh: &Gatehouse,
    path: &str,
    authorization: &str,
    refused: u16,
    change: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    assert_eq!(
        status(gh, path, authorization).await,
        200,
        "before the change"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (url, authorization, stop) =
            (gh.http_url(path), authorization.to_owned(), stop.clone());
        load.push(tokio::spawn(async move {
            let client = http1_client();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = Instant::now();
                let response = client
                    .get(&url)
                    .header("authorization", &authorization)
                    .send()
                    .await
                    .unwrap();
                seen.push((sent, response.status().as_u16()));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    change().await;
    let changed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut before = 0;
    let mut after = 0;
    for task in load {
        for (sent, code) in task.await.unwrap() {
            if sent < changed {
                before += 1;
                continue;
            }
            after += 1;
            assert_eq!(
                code, refused,
                "a request sent after the change was let through"
            );
        }
    }
    assert!(
        before > 0 && after > 0,
        "{before} requests before, {after} after"
    );
    assert_eq!(status(gh, path, authorization).await, refused);
}

/// Two replicas and the user `ada` (scope `read`) with a token; through replica A the admin call
/// `method path body`, answered `answered`, while B serves ada's requests to `route`: every one
/// sent after the answer gets `refused`. The replicas, the token and what they run on, for more
/// checks.
async fn admin_change_refused_at_once(
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    answered: u16,
    route: &str,
    refused: u16,
) -> (Gatehouse, Gatehouse, String, Database, Upstream) {
    let upstream = Upstream::start().await;
    let db = Database::on_shared_server().await;
    let (a, b) = replicas(&upstream, &db).await;
    let ada = a
        .create_user(json!({"userName": "ada", "scopes": ["read"]}))
        .await;
    let token = bearer(&a, &ada);
    refused_from_the_next_request(&b, route, &token, refused, || async {
        let (code, body) = a.admin(method, path, body).await;
        assert_eq!(code, answered, "{body}");
    })
    .await;
    (a, b, token, db, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_disabled_through_one_replica_is_refused_by_the_other_at_once() {
    let user = "/admin/v1/users/ada";
    admin_change_refused_at_once(
        "PATCH",
        user,
        Some(json!({"disabled": true})),
        200,
        "/private/x",
        401,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scope_removed_through_one_replica_is_missing_on_the_other_at_once() {
    let user = "/admin/v1/users/ada";
    admin_change_refused_at_once(
        "PATCH",
        user,
        Some(json!({"scopes": []})),
        200,
        "/scoped/x",
        403,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_revoked_through_one_replica_are_refused_by_the_other_at_once() {
    let revoke = "/admin/v1/users/ada/tokens/revoke";
    let (a, _b, token, _db, _upstream) =
        admin_change_refused_at_once("POST", revoke, None, 204, "/private/x", 401).await;
    // The same replica that made the change refuses it too.
    assert_eq!(status(&a, "/private/x", &token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_deleted_through_one_replica_is_refused_by_the_other_at_once() {
    let user = "/admin/v1/users/ada";
    admin_change_refused_at_once("DELETE", user, None, 204, "/private/x", 401).await;
}
