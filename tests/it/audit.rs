//! The audit trail (SPEC §9, §13): what each security event records, the JSON lines of
//! `audit.sink`, `audit.retention`, and `GET /admin/v1/audit`'s filters and cursor, on both
//! stores.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::store::*;
use serde_json::{Value, json};

use crate::factors::Backend;
use crate::harness::*;
use crate::mfa::{totp, wrong_code};
use crate::signin::{PASSWORD, Visitor, enroll_totp, user};

/// An event as stored, at `time`.
fn event(time: &str, name: &str, user: Option<&str>) -> AuditEvent {
    AuditEvent {
        time: time.into(),
        event: name.into(),
        user_name: user.map(str::to_owned),
        ..AuditEvent::default()
    }
}

/// Yesterday's date (`YYYY-MM-DD`, UTC): events then are well within the default
/// `audit.retention` (30 days), so they are listed.
fn yesterday() -> String {
    use gatehouse::clock::Clock;
    let day = (gatehouse::clock::SystemClock.now() - time::Duration::days(1)).date();
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// Calls the admin API; status, `Link` header and JSON body.
async fn admin_get(gh: &Gatehouse, path: &str) -> (u16, Option<String>, Value) {
    let response = http1_client()
        .get(gh.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let link = response
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, link, body)
}

/// The path and query a `Link: <…>; rel="next"` names.
fn next_target(link: &str) -> String {
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    link.split_once('<')
        .unwrap()
        .1
        .split_once('>')
        .unwrap()
        .0
        .to_owned()
}

/// Every event `path` lists, following `Link` headers; the pages' sizes too.
async fn all_pages(gh: &Gatehouse, path: &str) -> (Vec<Value>, Vec<usize>) {
    let mut target = path.to_owned();
    let mut events = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let (status, link, page) = admin_get(gh, &target).await;
        assert_eq!(status, 200, "{target}: {page}");
        let page = page.as_array().unwrap().clone();
        sizes.push(page.len());
        events.extend(page);
        match link {
            Some(link) => target = next_target(&link),
            None => return (events, sizes),
        }
        assert!(sizes.len() < 1000, "the pages never end");
    }
}

#[tokio::test]
async fn every_sign_in_event_names_its_outcome_client_and_request() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    user(&gh, "ada").await;
    let secret = enroll_totp(&gh, "ada").await;
    let mut browser = Visitor::new(gh.http_addr());

    // A wrong password for a user who exists, and one for a name that names nobody (perhaps a
    // password typed into the wrong field: it is not kept).
    let wrong = browser.sign_in("ada", "not the password", "/").await;
    assert_eq!(wrong.status, 401);
    let failed_id = wrong.headers["x-request-id"].to_str().unwrap().to_owned();
    let unknown = browser.sign_in("hunter2-typed-here", "x", "/").await;
    assert_eq!(unknown.status, 401);

    let page = browser.sign_in("ada", PASSWORD, "/secure/vault").await;
    assert_eq!(page.status, 303, "{}", page.body);
    let signin_id = page.headers["x-request-id"].to_str().unwrap().to_owned();
    let bad_code = wrong_code(&totp(&secret, 1));
    assert_eq!(browser.step_up(bad_code, "/secure/vault").await.status, 401);
    let good_code = totp(&secret, 1);
    let page = browser.step_up(&good_code, "/secure/vault").await;
    assert_eq!(page.status, 303, "{}", page.body);
    let step_up_id = page.headers["x-request-id"].to_str().unwrap().to_owned();
    let page = browser.sign_out().await;
    assert_eq!(page.status, 200);
    let logout_id = page.headers["x-request-id"].to_str().unwrap().to_owned();

    // Signed in again, then signed out everywhere by an admin.
    browser.sign_in("ada", PASSWORD, "/").await;
    let response = http1_client()
        .delete(gh.admin_url("/admin/v1/users/ada/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", "admin-call-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["x-request-id"], "admin-call-1");

    let (status, _, events) = admin_get(&gh, "/admin/v1/audit?limit=1000").await;
    assert_eq!(status, 200, "{events}");
    let events = events.as_array().unwrap();
    let find = |name: &str, request_id: &str| -> Value {
        events
            .iter()
            .find(|e| e["event"] == name && e["requestId"] == request_id)
            .unwrap_or_else(|| panic!("no {name} for request {request_id} in {events:?}"))
            .clone()
    };
    let failed = find("signin.failed", &failed_id);
    assert_eq!(failed["outcome"], "failure");
    assert_eq!(failed["userName"], "ada");
    assert_eq!(failed["client"], "127.0.0.1");
    let nobody: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "signin.failed" && e["requestId"] != failed_id.as_str())
        .collect();
    assert_eq!(nobody.len(), 1, "{events:?}");
    assert!(nobody[0].get("userName").is_none(), "{events:?}");
    for (name, id) in [
        ("signin", signin_id.as_str()),
        ("signin.step_up", &step_up_id),
        ("signin.logout", &logout_id),
    ] {
        let e = find(name, id);
        assert_eq!(e["outcome"], "success", "{e}");
        assert_eq!(e["userName"], "ada", "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(e["id"].as_u64().is_some(), "{e}");
    }
    let revoked = find("sessions.revoked", "admin-call-1");
    assert_eq!(revoked["outcome"], "success");
    assert_eq!(revoked["userName"], "ada");
    // Also under the JSON-line schema's names.
    assert_eq!(revoked["user"], "ada");
    assert_eq!(revoked["details"], revoked["detail"]);
    assert!(revoked["details"].is_string(), "{revoked}");
    assert_eq!(revoked["client"], "127.0.0.1");
    let wrong_code_event = events
        .iter()
        .find(|e| e["event"] == "mfa.code.failed")
        .expect("the wrong step-up code is recorded");
    assert_eq!(wrong_code_event["outcome"], "failure");

    // No secret in any event.
    let text = serde_json::to_string(events).unwrap();
    for secret in [
        PASSWORD,
        "not the password",
        "hunter2-typed-here",
        bad_code,
        &good_code,
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    for cookie in browser.cookies.values() {
        assert!(!text.contains(cookie.as_str()), "a cookie in {text}");
    }
}

mod filters_and_the_cursor_page_through_the_admin_api {
    #[tokio::test]
    async fn sled() {
        super::filters_and_the_cursor_page_through_the_admin_api(crate::factors::Backend::Sled)
            .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::filters_and_the_cursor_page_through_the_admin_api(crate::factors::Backend::Postgres)
            .await;
    }
}

async fn filters_and_the_cursor_page_through_the_admin_api(backend: Backend) {
    let upstream = Upstream::start().await;
    let (gh, _db) = backend.start(&upstream, |_| {}).await;
    let store = gh.app.store.clone();
    let day = yesterday();
    let names = [
        "signin",
        "signin.failed",
        "signin.step_up",
        "signinx",
        "user.created",
    ];
    for i in 0..150 {
        let who = ["Ada", "bob", "ADA"][i % 3];
        let time = format!("{day}T00:{:02}:{:02}Z", i / 60, i % 60);
        store
            .append_audit(event(&time, names[i % names.len()], Some(who)))
            .await
            .unwrap();
    }

    // Unfiltered, 7 at a time: every event once, newest first, pages full but the last.
    let (events, sizes) = all_pages(&gh, "/admin/v1/audit?limit=7").await;
    assert_eq!(events.len(), 150);
    assert!(
        sizes[..sizes.len() - 1].iter().all(|n| *n == 7),
        "{sizes:?}"
    );
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    // A user in any letter case; an exact event; a family (`signinx` is not in `signin.*`).
    let (ada, _) = all_pages(&gh, "/admin/v1/audit?user=aDa&limit=9").await;
    assert_eq!(ada.len(), 100);
    assert!(ada.iter().all(|e| e["userName"] != "bob"));
    let (failed, _) = all_pages(&gh, "/admin/v1/audit?event=signin.failed&limit=4").await;
    assert_eq!(failed.len(), 30);
    assert!(failed.iter().all(|e| e["event"] == "signin.failed"));
    let (family, _) = all_pages(&gh, "/admin/v1/audit?event=signin.*&limit=11").await;
    assert_eq!(family.len(), 90);
    assert!(family.iter().all(|e| e["event"] != "signinx"));
    // `since` is inclusive, in any offset; filters combine and the Link keeps them.
    let (since, _) = all_pages(
        &gh,
        &format!("/admin/v1/audit?since={day}T02:02:00%2B02:00&user=bob&event=signin.*&limit=2"),
    )
    .await;
    let times: Vec<&str> = since.iter().map(|e| e["time"].as_str().unwrap()).collect();
    let expected: Vec<String> = (120..150)
        .rev()
        .filter(|i| i % 3 == 1 && i % 5 < 3)
        .map(|i| format!("{day}T00:{:02}:{:02}Z", i / 60, i % 60))
        .collect();
    assert_eq!(times, expected);

    // Bad parameters are 400 problems.
    for bad in [
        "limit=0",
        "limit=1001",
        "event=Signin",
        "event=*",
        "event=signin..failed",
        "since=yesterday",
        "cursor=12",
        "cursor=a!",
        "user=",
        "user=a&user=b",
        "users=ada",
    ] {
        let (status, _, body) = admin_get(&gh, &format!("/admin/v1/audit?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["type"].as_str().unwrap().ends_with("invalid-request"),
            "{body}"
        );
    }
}

mod pages_neither_repeat_nor_skip_while_events_are_appended {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn gatehouse::store::Store> =
            std::sync::Arc::new(gatehouse::store::sled::SledStore::open(dir.path()).unwrap());
        super::pages_neither_repeat_nor_skip_while_events_are_appended(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = crate::pg::Database::on_shared_server().await;
        let store = gatehouse::store::postgres::PgStore::connect(&db.url(), 4)
            .await
            .unwrap();
        super::pages_neither_repeat_nor_skip_while_events_are_appended(std::sync::Arc::new(store))
            .await;
    }
}

async fn pages_neither_repeat_nor_skip_while_events_are_appended(store: Arc<dyn Store>) {
    for i in 0..300 {
        store
            .append_audit(event("2026-01-01T00:00:00Z", &format!("old.e{i}"), None))
            .await
            .unwrap();
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                store
                    .append_audit(event("2026-01-01T00:00:01Z", &format!("new.e{i}"), None))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .audit_page(&AuditQuery {
                before,
                limit: 13,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        seen.extend(page.events.iter().map(|e| e.event.clone()));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let old: Vec<&String> = seen.iter().filter(|e| e.starts_with("old.")).collect();
    let expected: Vec<String> = (0..300).rev().map(|i| format!("old.e{i}")).collect();
    assert_eq!(old, expected.iter().collect::<Vec<_>>());
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event came twice");

    // A filter that matches little still pages with bounded work, and finds what matches.
    let page = store
        .audit_page(&AuditQuery {
            event: Some(EventFilter::Exact("old.e3".into())),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].event, "old.e3");
}

mod retention_purges_only_older_events {
    #[tokio::test]
    async fn sled() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn gatehouse::store::Store> =
            std::sync::Arc::new(gatehouse::store::sled::SledStore::open(dir.path()).unwrap());
        super::retention_purges_only_older_events(store).await;
    }

    #[tokio::test]
    async fn postgres() {
        let db = crate::pg::Database::on_shared_server().await;
        let store = gatehouse::store::postgres::PgStore::connect(&db.url(), 4)
            .await
            .unwrap();
        super::retention_purges_only_older_events(std::sync::Arc::new(store)).await;
    }
}

async fn retention_purges_only_older_events(store: Arc<dyn Store>) {
    for (day, name) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        store
            .append_audit(event(&format!("2026-01-0{day}T12:00:00Z"), name, None))
            .await
            .unwrap();
    }
    assert_eq!(store.purge_audit("2026-01-03T12:00:00Z").await.unwrap(), 2);
    let left: Vec<String> = store
        .audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(left, ["d", "c"]);
    assert_eq!(store.purge_audit("2026-01-03T12:00:00Z").await.unwrap(), 0);
}

/// Starts the real binary with `audit` settings; creates a user through the admin API (one
/// `user.created` event) and signs them out everywhere (`sessions.revoked`).
async fn process_with(audit: &str, upstream: &Upstream) -> Process {
    let config = process_config(&upstream.url(), &format!("[audit]\n{audit}\n"));
    Process::start(&config, &[("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

async fn cause_events(gh: &Process, name: &str) {
    let admin = format!("http://{}", gh.addrs["listen.admin"]);
    let response = http1_client()
        .post(format!("{admin}/admin/v1/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"userName": name, "password": PASSWORD, "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = http1_client()
        .delete(format!("{admin}/admin/v1/users/{name}/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

/// The JSON lines of the audit schema among `lines`.
fn audit_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["schema"] == "gatehouse.audit.v1")
        .collect()
}

async fn eventually<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(found) = probe() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 5 s");
}

#[tokio::test]
async fn the_stdout_sink_writes_one_json_line_per_event_between_log_lines() {
    let upstream = Upstream::start().await;
    let gh = process_with("sink = \"stdout\"", &upstream).await;
    cause_events(&gh, "ada").await;
    let lines = eventually(|| {
        let logs = gh.logs();
        (audit_lines(&logs).len() >= 2).then_some(logs)
    })
    .await;
    // Every stdout line is whole JSON: no audit line landed inside a log line or the reverse.
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not one JSON document: {line}"
        );
    }
    let events = audit_lines(&lines);
    let created = events
        .iter()
        .find(|e| e["event"] == "user.created")
        .unwrap();
    assert_eq!(created["user"], "ada");
    assert_eq!(created["outcome"], "success");
    assert_eq!(created["client"], "127.0.0.1");
    assert!(
        created["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(created["time"].as_str().unwrap().ends_with('Z'));
    let keys: BTreeSet<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in keys {
        assert!(
            [
                "schema",
                "time",
                "event",
                "outcome",
                "user",
                "client",
                "requestId",
                "details"
            ]
            .contains(&key),
            "{key} is not in the documented schema"
        );
    }
    assert!(events.iter().any(|e| e["event"] == "sessions.revoked"));
    assert!(!lines.iter().any(|l| l.contains(PASSWORD)));
}

#[tokio::test]
async fn the_file_sink_appends_privately_and_follows_a_rotation() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let gh = process_with(
        &format!("sink = \"file\"\nfile = \"{}\"", path.display()),
        &upstream,
    )
    .await;
    cause_events(&gh, "ada").await;
    let read = |p: &std::path::Path| -> Vec<Value> {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let first = eventually(|| Some(read(&path)).filter(|e| e.len() >= 2)).await;
    assert_eq!(first[0]["event"], "user.created");
    assert_eq!(first[1]["event"], "sessions.revoked");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // The stdout log holds no audit line when the sink is a file.
    assert!(audit_lines(&gh.logs()).is_empty());

    // logrotate moves the file away; the next events go to a new file at the path.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cause_events(&gh, "bob").await;
    let second = eventually(|| Some(read(&path)).filter(|e| e.len() >= 2)).await;
    assert!(second.iter().all(|e| e["user"] == "bob"), "{second:?}");
    assert_eq!(
        read(&rotated).len(),
        2,
        "the rotated file is left as it was"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn audit_settings_are_checked() {
    for (extra, expected) in [
        (
            "sink = \"syslog\"",
            "audit.sink: expected one of store, stdout, file",
        ),
        (
            "sink = \"file\"",
            "audit.file: is required when audit.sink = \"file\"",
        ),
        (
            "file = \"/tmp/x\"",
            "audit.file: is only used when audit.sink = \"file\"",
        ),
        (
            "retention = \"10s\"",
            "audit.retention: must be at least 1m",
        ),
    ] {
        let toml = process_config("http://127.0.0.1:9", &format!("[audit]\n{extra}\n"));
        let problems = gatehouse::config::from_toml_str(&toml)
            .unwrap_err()
            .to_string();
        assert!(problems.contains(expected), "{extra}: {problems}");
    }
}

/// `gatehouse admin audit …` against `gh`: its standard output and standard error.
async fn cli_audit(gh: &Gatehouse, args: &[&str]) -> (Value, String) {
    let output = tokio::process::Command::new(binary())
        .args(["admin", "--url", &gh.admin_url(""), "audit"])
        .args(args)
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    (serde_json::from_slice(&output.stdout).unwrap(), stderr)
}

#[tokio::test]
async fn the_cli_filters_and_prints_the_next_pages_cursor() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let day = yesterday();
    for (i, (name, who)) in [
        ("signin", "ada"),
        ("signin.failed", "bob"),
        ("signin.failed", "Ada"),
        ("user.created", "ada"),
        ("signin.step_up", "ada"),
    ]
    .into_iter()
    .enumerate()
    {
        gh.app
            .store
            .append_audit(event(&format!("{day}T00:00:0{i}Z"), name, Some(who)))
            .await
            .unwrap();
    }
    let (first, stderr) = cli_audit(
        &gh,
        &["--user", "ADA", "--event", "signin.*", "--limit", "2"],
    )
    .await;
    let names: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["signin.step_up", "signin.failed"]);
    let cursor = stderr
        .lines()
        .find_map(|l| l.strip_prefix("next page: --cursor "))
        .unwrap_or_else(|| panic!("no cursor in {stderr:?}"));
    let (second, stderr) = cli_audit(
        &gh,
        &[
            "--user", "ADA", "--event", "signin.*", "--limit", "2", "--cursor", cursor,
        ],
    )
    .await;
    assert_eq!(second.as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second[0]["event"], "signin");
    assert!(!stderr.contains("next page"), "{stderr}");
    let (since, _) = cli_audit(&gh, &["--since", &format!("{day}T00:00:03Z")]).await;
    assert_eq!(since.as_array().unwrap().len(), 2, "{since}");
}

#[tokio::test]
async fn events_past_the_retention_are_purged_by_the_running_server() {
    let upstream = Upstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("data");
    {
        let store = gatehouse::store::sled::SledStore::open(&path).unwrap();
        store
            .append_audit(event("2020-01-01T00:00:00Z", "user.created", Some("old")))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let gh = process_with(
        &format!("retention = \"1h\"\n[store]\npath = \"{}\"", path.display()),
        &upstream,
    )
    .await;
    cause_events(&gh, "ada").await;
    let admin = format!("http://{}", gh.addrs["listen.admin"]);
    let events: Value = http1_client()
        .get(format!("{admin}/admin/v1/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["userName"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["ada", "ada"], "{events}");
    let metrics = http1_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\ngatehouse_audit_dropped_total 0\n"),
        "{metrics}"
    );
}

/// An event past `audit.retention` is never listed, even before the hourly purge has removed it
/// from the store, whatever `since` asks for.
#[tokio::test]
async fn events_past_the_retention_are_not_listed_before_they_are_purged() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let store = gh.app.store.clone();
    // A `user.created` event, recorded now.
    let create = |name: &'static str| {
        let gh = &gh;
        async move {
            let body = json!({"userName": name, "password": PASSWORD});
            let (status, answer) = gh.admin("POST", "/admin/v1/users", Some(body)).await;
            assert_eq!(status, 201, "{answer}");
        }
    };
    create("ada").await;
    // The first event may start the hourly purge; an old event stored after it stays stored.
    let old = || event("2020-01-01T00:00:00Z", "user.created", Some("old"));
    let holds_old = || async {
        store
            .audit(1000)
            .await
            .unwrap()
            .iter()
            .any(|e| e.user_name.as_deref() == Some("old"))
    };
    for _ in 0..10 {
        store.append_audit(old()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if holds_old().await {
            break;
        }
    }
    assert!(holds_old().await, "the old event is stored");
    // Events come in time order: a newer one follows.
    create("bob").await;
    for query in ["", "?since=2019-01-01T00:00:00Z", "?user=old"] {
        let (status, _, events) = admin_get(&gh, &format!("/admin/v1/audit{query}")).await;
        assert_eq!(status, 200, "{query}");
        assert!(
            !events
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["userName"] == "old"),
            "{query}: {events}"
        );
    }
    // Recent events are listed as before.
    let (_, _, events) = admin_get(&gh, "/admin/v1/audit").await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "user.created"),
        "{events}"
    );
}
