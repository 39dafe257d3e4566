//! The admin API of SPEC §7, on the admin listener.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn admin_api_needs_the_admin_token() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let client = http1_client();
    let none = client
        .get(gh.admin_url("/admin/v1/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = client
        .get(gh.admin_url("/admin/v1/audit"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let content_type = wrong.headers()["content-type"].to_str().unwrap().to_owned();
    assert_problem(
        401,
        Some(&content_type),
        &wrong.text().await.unwrap(),
        "unauthenticated",
    );
    let created = client
        .post(gh.admin_url("/admin/v1/users"))
        .bearer_auth("not-the-token")
        .json(&json!({"userName": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 401);
    assert!(
        gh.app
            .store
            .user_by_name("mallory")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn admin_api_without_a_configured_token_answers_503() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start_with(&upstream, |c| c.admin.token = None).await;
    let response = http1_client()
        .get(gh.admin_url("/admin/v1/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    // The answer says how to turn the admin API on.
    let problem: serde_json::Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    for needed in ["GATEHOUSE_ADMIN_TOKEN", "admin.token_file", "at least 22"] {
        assert!(detail.contains(needed), "{needed} not in: {detail}");
    }
    // Probes do not need a token.
    let ready = http1_client()
        .get(gh.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn users_are_created_read_changed_and_deleted() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let user = gh
        .create_user(json!({
            "userName": "ada", "password": "correct horse battery", "email": "ada@example.com",
            "phone": "+14155550123", "firstName": "Ada", "lastName": "Lovelace",
            "nickName": "countess", "scopes": ["read", "ops"]
        }))
        .await;
    assert!(user["id"].is_u64(), "{user}");
    assert!(uuid::Uuid::parse_str(user["uuid"].as_str().unwrap()).is_ok());
    assert_eq!(user["userName"], "ada");
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["scopes"], json!(["read", "ops"]));
    assert_eq!(user["isValid"], true);
    assert!(user.get("password").is_none() && user.get("passwordHash").is_none());

    let (status, body) = gh
        .admin("POST", "/admin/v1/users", Some(json!({"userName": "ADA"})))
        .await;
    assert_eq!(status, 409, "{body}");

    let (status, got) = gh.admin("GET", "/admin/v1/users/ada", None).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], user["id"]);

    let (status, patched) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"email": "ada@lovelace.org", "scopes": ["read"]})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["email"], "ada@lovelace.org");
    assert_eq!(patched["scopes"], json!(["read"]));
    assert_eq!(patched["phone"], "+14155550123");

    assert_eq!(
        gh.admin("POST", "/admin/v1/users/ada/mfa/reset", None)
            .await
            .0,
        204
    );
    assert_eq!(gh.admin("DELETE", "/admin/v1/users/ada", None).await.0, 204);
    assert_eq!(gh.admin("GET", "/admin/v1/users/ada", None).await.0, 404);
    assert_eq!(gh.admin("DELETE", "/admin/v1/users/ada", None).await.0, 404);
    assert_eq!(
        gh.admin("POST", "/admin/v1/users/ada/mfa/reset", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn invalid_user_bodies_are_400_and_change_nothing() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for body in [
        json!({}),
        json!({"userName": ""}),
        json!({"userName": "a/b"}),
        json!({"userName": "bob", "password": "short"}),
        json!({"userName": "bob", "email": "not-an-address"}),
        json!({"userName": "bob", "email": "bob@.example"}),
        json!({"userName": "bob", "email": "bob@example..com"}),
        json!({"userName": "bob", "phone": "555-0123"}),
        json!({"userName": "bob", "scopes": ["has space"]}),
        json!({"userName": "bob", "unknownField": 1}),
        json!({"userName": 42}),
    ] {
        let (status, problem) = gh
            .admin("POST", "/admin/v1/users", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body} → {problem}");
        assert_eq!(problem["status"], 400);
    }
    assert!(gh.app.store.user_by_name("bob").await.unwrap().is_none());
    let response = http1_client()
        .post(gh.admin_url("/admin/v1/users"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn applications_organizations_members_files_and_keys_are_granted() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    gh.create_user(json!({"userName": "ada"})).await;

    let (status, app) = gh
        .admin(
            "POST",
            "/admin/v1/applications",
            Some(json!({"name": "billing"})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    assert_eq!(app["name"], "billing");
    assert!(app["token"].as_str().unwrap().len() >= 40);
    assert_eq!(
        gh.admin(
            "POST",
            "/admin/v1/applications",
            Some(json!({"name": "billing"}))
        )
        .await
        .0,
        409
    );

    let (status, org) = gh
        .admin(
            "POST",
            "/admin/v1/organizations",
            Some(json!({"id": 7, "name": "Acme"})),
        )
        .await;
    assert_eq!(status, 201, "{org}");
    assert_eq!(org["id"], 7);
    assert_eq!(
        gh.admin(
            "POST",
            "/admin/v1/organizations",
            Some(json!({"id": 7, "name": "Acme 2"}))
        )
        .await
        .0,
        409
    );
    let (status, member) = gh
        .admin(
            "POST",
            "/admin/v1/organizations/7/members",
            Some(json!({"userName": "ada", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 201, "{member}");
    for (path, body, expected) in [
        (
            "/admin/v1/organizations/7/members",
            json!({"userName": "ada", "role": "owner"}),
            400,
        ),
        (
            "/admin/v1/organizations/8/members",
            json!({"userName": "ada", "role": "admin"}),
            404,
        ),
        (
            "/admin/v1/organizations/x/members",
            json!({"userName": "ada", "role": "admin"}),
            400,
        ),
        (
            "/admin/v1/organizations/7/members",
            json!({"userName": "nobody", "role": "admin"}),
            404,
        ),
        ("/admin/v1/files/x/members", json!({"userName": "ada"}), 400),
        (
            "/admin/v1/files/12/members",
            json!({"userName": "nobody"}),
            404,
        ),
        (
            "/admin/v1/ws-keys",
            json!({"userName": "nobody", "fileId": 12}),
            404,
        ),
    ] {
        let (status, problem) = gh.admin("POST", path, Some(body)).await;
        assert_eq!(status, expected, "{path}: {problem}");
    }

    let (status, file) = gh
        .admin(
            "POST",
            "/admin/v1/files/12/members",
            Some(json!({"userName": "ada"})),
        )
        .await;
    assert_eq!(status, 201, "{file}");
    let (status, key) = gh
        .admin(
            "POST",
            "/admin/v1/ws-keys",
            Some(json!({"userName": "ada", "fileId": 12})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    assert!(key["key"].as_str().unwrap().len() >= 40);

    let (_, user) = gh.admin("GET", "/admin/v1/users/ada", None).await;
    assert_eq!(
        user["organizations"],
        json!([{"organizationId": 7, "role": "admin"}])
    );
    assert_eq!(user["files"], json!([12]));

    let names = gh.audit_events(3).await;
    assert_eq!(names, ["wskey.created", "file.granted", "membership.set"]);
    assert_eq!(
        gh.admin("GET", "/admin/v1/audit?limit=0", None).await.0,
        400
    );
}

#[tokio::test]
async fn probes_answer_get_and_refuse_other_methods() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let client = http1_client();
    let ready = client.get(gh.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let wrong_method = client.post(gh.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
}

/// Runs `gatehouse admin …` against the test server; returns exit success, stdout, stderr.
pub(crate) async fn cli(
    gh: &Gatehouse,
    token: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(binary())
        .arg("admin")
        .arg("--url")
        .arg(gh.admin_url(""))
        .args(args)
        .env("GATEHOUSE_ADMIN_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .await
        .unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn admin_cli_drives_the_admin_api() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let (ok, out, err) = cli(
        &gh,
        ADMIN_TOKEN,
        &[
            "user",
            "create",
            "ada",
            "--email",
            "ada@example.com",
            "--scope",
            "read",
            "--scope",
            "ops",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    )
    .await;
    assert!(ok, "{err}");
    let user: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(user["scopes"], json!(["read", "ops"]));
    assert_eq!(user["hasPassword"], true);
    // The password given on stdin works, without its newline.
    let response = http1_client()
        .get(gh.http_url("/private/x"))
        .basic_auth("ada", Some("correct horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    for args in [
        &["org", "create", "7", "Acme"][..],
        &["org", "add-member", "7", "ada", "--role", "admin"],
        &["file-grant", "12", "ada"],
        &["user", "update", "ada", "--nick-name", "countess"],
    ] {
        let (ok, _, err) = cli(&gh, ADMIN_TOKEN, args, None).await;
        assert!(ok, "{args:?}: {err}");
    }
    let (ok, out, _) = cli(&gh, ADMIN_TOKEN, &["app", "create", "web"], None).await;
    assert!(ok);
    assert!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["token"].is_string());
    let (ok, out, _) = cli(&gh, ADMIN_TOKEN, &["ws-key", "ada", "12"], None).await;
    assert!(ok);
    assert!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["key"].is_string());
    let (ok, out, _) = cli(&gh, ADMIN_TOKEN, &["user", "get", "ada"], None).await;
    assert!(ok);
    let user: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(user["nickName"], "countess");
    assert_eq!(user["files"], json!([12]));
    let (ok, out, _) = cli(&gh, ADMIN_TOKEN, &["audit", "--limit", "2"], None).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Failures exit non-zero with the problem's detail.
    let (ok, _, err) = cli(&gh, ADMIN_TOKEN, &["user", "create", "ada"], None).await;
    assert!(!ok);
    assert!(err.starts_with("409"), "{err}");
    let (ok, _, err) = cli(&gh, "wrong", &["user", "get", "ada"], None).await;
    assert!(!ok);
    assert!(err.starts_with("401"), "{err}");
    let (ok, _, _) = cli(&gh, ADMIN_TOKEN, &["user", "delete", "ada"], None).await;
    assert!(ok);
    assert!(gh.app.store.user_by_name("ada").await.unwrap().is_none());
}

#[tokio::test]
async fn organization_ids_are_int32_so_the_domain_api_can_name_them() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let (status, problem) = gh
        .admin(
            "POST",
            "/admin/v1/organizations",
            Some(json!({"id": 2_147_483_648_i64, "name": "Too big"})),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(
        problem["type"],
        "https://gatehouse.dev/problems/invalid-request"
    );
    let (status, org) = gh
        .admin(
            "POST",
            "/admin/v1/organizations",
            Some(json!({"id": 2_147_483_647, "name": "Largest"})),
        )
        .await;
    assert_eq!(status, 201, "{org}");
}

#[tokio::test]
async fn names_a_trusted_issuer_may_not_use_are_refused_by_the_admin_api_too() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    gh.create_user(json!({"userName": "ada"})).await;
    for name in crate::identity::names_breaking_the_rules() {
        let (status, problem) = gh
            .admin("POST", "/admin/v1/users", Some(json!({"userName": name})))
            .await;
        assert_eq!(status, 400, "{name:?} → {problem}");
        let (status, problem) = gh
            .admin(
                "PATCH",
                "/admin/v1/users/ada",
                Some(json!({"userName": name})),
            )
            .await;
        assert_eq!(status, 400, "rename to {name:?} → {problem}");
        let (status, _) = gh
            .admin("GET", &crate::identity::admin_path(&name), None)
            .await;
        // 404, or 400 where the name cannot even be spelled in a path (`/`, NUL).
        assert!(
            matches!(status, 400 | 404),
            "{name:?} was stored ({status})"
        );
    }
    for body in [
        json!({"userName": "bob", "email": "bob@example.com\r\nX-Auth-User: root"}),
        json!({"userName": "bob", "email": "bob\t@example.com"}),
        json!({"userName": "bob", "nickName": "Bob\nforged"}),
        json!({"userName": "bob", "firstName": "Zoe\u{308}"}),
    ] {
        let (status, problem) = gh
            .admin("POST", "/admin/v1/users", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body} → {problem}");
    }
    assert_eq!(gh.admin("GET", "/admin/v1/users/ada", None).await.0, 200);
}

/// Spellings of admin API paths that the normaliser turns into a real operation (or refuses): none
/// may pass without the token.
const ADMIN_SPELLINGS: &[&str] = &[
    "/admin/v1/users",
    "/%61dmin/v1/users",
    "/admin/v%31/users",
    "/admin/v1/%75sers",
    "/%41DMIN/V1/USERS",
    "/ADMIN/v1/users",
    "/Admin/V1/Users",
    "//admin/v1/users",
    "/admin//v1///users",
    "/admin/./v1/users",
    "/admin/x/../v1/users",
    "/x/..;/admin/v1/users",
    "/admin;x/v1/users",
    "/admin/v1;a=b/users;c",
    "/admin/%2e/v1/users",
    "/healthz/../admin/v1/users",
    "/metrics/..;/admin/v1/users",
    "/admin/v1/users/",
    "/admin/v1/users/mallory",
    "/admin/v1/users/mallory/mfa/reset",
    "/admin/v1/users/mallory/sessions",
    "/admin/v1/applications",
    "/admin/v1/ws-keys",
    "/admin/v1/audit",
    "/admin/v1/nothing-here",
    "/admin/v2/users",
    "/admin",
    "/",
    "/no-such-path",
];

/// Spellings the normaliser refuses: 400 with or without the token.
const REFUSED_SPELLINGS: &[&str] = &[
    "/admin%2Fv1/users",
    "/admin/v1%2fusers",
    "/admin%3Bx/v1/users",
    "/admin/v1/users%3b",
    "/admin/v1/users%00",
    "/admin/%5Cv1/users",
    "/admin/v1/us%zzers",
];

async fn admin_raw(gh: &Gatehouse, method: &str, target: &str, token: Option<&str>) -> RawResponse {
    let body = r#"{"userName":"mallory","password":"correct horse battery","scopes":["admin"]}"#;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw(
        gh.addrs.admin,
        &format!(
            "{method} {target} HTTP/1.1\r\nHost: admin.test\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

#[tokio::test]
async fn percent_encoded_admin_path_without_token_is_401() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for method in ["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"] {
        for target in ADMIN_SPELLINGS {
            for token in [None, Some("not-the-token")] {
                let response = admin_raw(&gh, method, target, token).await;
                assert_eq!(response.status, 401, "{method} {target} {token:?}");
                if method != "HEAD" {
                    assert_problem(
                        401,
                        response.header("content-type"),
                        &response.body,
                        "unauthenticated",
                    );
                }
            }
        }
        for target in REFUSED_SPELLINGS {
            let response = admin_raw(&gh, method, target, None).await;
            assert_eq!(response.status, 400, "{method} {target}");
        }
    }
    assert!(
        gh.app
            .store
            .user_by_name("mallory")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn normalised_admin_spellings_with_the_token_reach_the_same_operation() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    let create = admin_raw(&gh, "POST", "/%61dmin/V%31/./users", Some(ADMIN_TOKEN)).await;
    assert_eq!(create.status, 201, "{}", create.body);
    for target in [
        "/admin/v1/users/mallory",
        "/ADMIN/v1/USERS/mallory",
        "//admin;x/v1/users/mallory",
        "/admin/v1/users/%6dallory",
        "/x/..;/admin/v1/users/mallory;p=1",
    ] {
        let response = admin_raw(&gh, "GET", target, Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status, 200, "{target}: {}", response.body);
        let user: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(user["userName"], "mallory", "{target}");
    }
    // Refused spellings stay refused with the token, and change nothing.
    for target in REFUSED_SPELLINGS {
        let response = admin_raw(&gh, "POST", target, Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status, 400, "{target}");
    }
    let unknown = admin_raw(&gh, "GET", "/admin/v1/nothing", Some(ADMIN_TOKEN)).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn probes_metrics_and_openapi_need_no_token_in_any_spelling() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for target in [
        "/healthz",
        "/HEALTHZ",
        "//readyz",
        "/x/../readyz",
        "/metrics;x",
        "/%6detrics",
        "/openapi.json",
    ] {
        let response = admin_raw(&gh, "GET", target, None).await;
        assert_eq!(response.status, 200, "{target}: {}", response.body);
    }
}

mod users_are_listed_by_name_a_page_at_a_time {
    #[tokio::test]
    async fn sled() {
        super::users_are_listed_by_name_a_page_at_a_time(crate::factors::Backend::Sled).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::users_are_listed_by_name_a_page_at_a_time(crate::factors::Backend::Postgres).await;
    }
}

/// The names in a page of `GET /admin/v1/users`, and its `next`.
fn page(answer: &serde_json::Value) -> (Vec<String>, serde_json::Value) {
    let names = answer["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {answer}"))
        .iter()
        .map(|u| u["userName"].as_str().unwrap().to_owned())
        .collect();
    (names, answer["next"].clone())
}

async fn users_are_listed_by_name_a_page_at_a_time(backend: crate::factors::Backend) {
    let upstream = Upstream::start().await;
    let (gh, _db) = backend.start(&upstream, |_| {}).await;
    for name in ["carol", "Ada", "bob", "dave", "Émile"] {
        gh.create_user(json!({"userName": name, "scopes": ["read"]}))
            .await;
    }
    let (status, first) = gh.admin("GET", "/admin/v1/users?limit=2", None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        page(&first),
        (vec!["Ada".into(), "bob".into()], json!("bob"))
    );
    // Users are shown as `GET /admin/v1/users/{userName}` shows them.
    let (_, ada) = gh.admin("GET", "/admin/v1/users/ada", None).await;
    assert_eq!(first["users"][0], ada);
    let (_, second) = gh
        .admin("GET", "/admin/v1/users?limit=2&after=bob", None)
        .await;
    assert_eq!(
        page(&second),
        (vec!["carol".into(), "dave".into()], json!("dave"))
    );
    // The cursor is a name in any letter case, escaped as a query value.
    let (_, last) = gh
        .admin("GET", "/admin/v1/users?limit=2&after=DAVE", None)
        .await;
    assert_eq!(page(&last), (vec!["Émile".into()], json!(null)));
    let (_, escaped) = gh
        .admin("GET", "/admin/v1/users?after=%C3%89mile", None)
        .await;
    assert_eq!(page(&escaped), (vec![], json!(null)));
    // A page exactly as long as what is left is the last one.
    let (_, all) = gh.admin("GET", "/admin/v1/users?limit=5", None).await;
    assert_eq!(page(&all).0.len(), 5);
    assert_eq!(all["next"], json!(null));
    for bad in ["limit=0", "limit=1001", "limit=ten"] {
        let (status, problem) = gh
            .admin("GET", &format!("/admin/v1/users?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(
            problem["type"],
            "https://gatehouse.dev/problems/invalid-request"
        );
    }
    // Without the token, nothing is listed.
    let response = http1_client()
        .get(gh.admin_url("/admin/v1/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The command-line client pages the same way.
    let (ok, out, err) = cli(
        &gh,
        ADMIN_TOKEN,
        &["user", "list", "--limit", "3", "--after", "Ada"],
        None,
    )
    .await;
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        page(&listed),
        (
            vec!["bob".into(), "carol".into(), "dave".into()],
            json!("dave")
        )
    );
}

/// A user the bootstrap file declares would be created again at the next start, so deleting or
/// renaming it away is refused with 409 naming the file, and nothing changes; once the entry is
/// taken out of the file, the same call succeeds without a restart.
async fn declared_users_are_kept_until_removed_from_the_bootstrap_file(
    backend: crate::mfa::Backend,
) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.toml");
    std::fs::write(
        &file,
        "[[users]]\nuser_name = \"ada\"\n[[users]]\nuser_name = \"bob\"\n",
    )
    .unwrap();
    let (gh, _db) = crate::mfa::start_on(&upstream, backend, |c| {
        c.bootstrap.file = Some(file.clone())
    })
    .await;
    let (_, ada) = gh.admin("GET", "/admin/v1/users/ada", None).await;
    for (method, path, body) in [
        ("DELETE", "/admin/v1/users/ada", None),
        ("DELETE", "/admin/v1/users/ADA", None),
        ("DELETE", "/admin/v1/users/%61da", None),
        (
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"userName": "ada2"})),
        ),
        (
            "PATCH",
            "/admin/v1/users/Ada",
            Some(json!({"userName": "lovelace", "email": "ada@example.com"})),
        ),
    ] {
        let (status, problem) = gh.admin(method, path, body).await;
        assert_eq!(status, 409, "{method} {path}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("declared-in-bootstrap"),
            "{problem}"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&file.display().to_string()) && detail.contains("bootstrap.file"),
            "{detail}"
        );
    }
    let (status, unchanged) = gh.admin("GET", "/admin/v1/users/ada", None).await;
    assert_eq!(status, 200);
    assert_eq!(unchanged, ada, "a refused call changed the user");
    assert!(
        !gh.audit_events(50)
            .await
            .iter()
            .any(|e| e == "user.deleted")
    );

    // Other changes to a declared user stand, as the bootstrap file leaves existing users alone.
    let (status, patched) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"email": "ada@example.com"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    // A user the file does not declare is deleted as before.
    gh.create_user(json!({"userName": "carol"})).await;
    assert_eq!(
        gh.admin("DELETE", "/admin/v1/users/carol", None).await.0,
        204
    );

    std::fs::write(&file, "[[users]]\nuser_name = \"bob\"\n").unwrap();
    assert_eq!(gh.admin("DELETE", "/admin/v1/users/ada", None).await.0, 204);
    assert_eq!(gh.admin("GET", "/admin/v1/users/ada", None).await.0, 404);
    assert_eq!(gh.admin("DELETE", "/admin/v1/users/bob", None).await.0, 409);
}

#[tokio::test]
async fn declared_users_are_kept_until_removed_from_the_bootstrap_file_on_sled() {
    declared_users_are_kept_until_removed_from_the_bootstrap_file(crate::mfa::Backend::Sled).await;
}

#[tokio::test]
async fn declared_users_are_kept_until_removed_from_the_bootstrap_file_on_postgres() {
    declared_users_are_kept_until_removed_from_the_bootstrap_file(crate::mfa::Backend::Postgres)
        .await;
}

/// The session cookie's name (`sessions.cookie_name`'s default) and its CSRF companion's.
pub(crate) const SESSION_COOKIE: &str = "__Host-gatehouse";
const CSRF_COOKIE: &str = "__Host-gatehouse-csrf";

/// The value of the cookie `name` a response sets.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// The `value` of the `<input>` whose name is `name`.
fn input_value(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no input `{name}` in the page: {page}"));
    let start = page[..at].rfind('<').unwrap();
    let end = at + page[at..].find('>').unwrap();
    let tag = &page[start..end];
    let value = tag.find("value=\"").unwrap() + "value=\"".len();
    let len = tag[value..].find('"').unwrap();
    tag[value..value + len].replace("&amp;", "&")
}

/// Signs `user` in on the plain HTTP listener as a browser does (the sign-in page for its CSRF
/// cookie and token, then the form post); the session cookie's value. The cookies are `Secure`,
/// so they are sent here by hand rather than by a cookie store.
pub(crate) async fn sign_in(gh: &Gatehouse, user: &str, password: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(gh.http_url("/auth/login?rd=/private/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the sign-in page");
    let csrf_cookie = set_cookie(&page, CSRF_COOKIE)
        .unwrap_or_else(|| panic!("the sign-in page sets no {CSRF_COOKIE}"));
    let body = page.text().await.unwrap();
    let (csrf, rd) = (input_value(&body, "csrf"), input_value(&body, "rd"));
    let posted = client
        .post(gh.http_url("/auth/login"))
        .header("accept", "text/html")
        .header("origin", format!("http://{}", gh.http_addr()))
        .header("cookie", format!("{CSRF_COOKIE}={csrf_cookie}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("rd", rd.as_str()),
            ("user", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303, "signing {user} in");
    set_cookie(&posted, SESSION_COOKIE)
        .unwrap_or_else(|| panic!("signing {user} in set no session cookie"))
}

/// The status of `GET /auth/session` with the session cookie `session`.
pub(crate) async fn session_status(gh: &Gatehouse, session: &str) -> u16 {
    http1_client()
        .get(gh.http_url("/auth/session"))
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const PASSWORD: &str = "correct horse battery";

/// The statuses of `GET /auth/session` for each of `sessions`.
async fn statuses(gh: &Gatehouse, sessions: &[&str]) -> Vec<u16> {
    let mut found = Vec::new();
    for session in sessions {
        found.push(session_status(gh, session).await);
    }
    found
}

#[tokio::test]
async fn signing_a_user_out_everywhere_ends_their_sessions_and_no_one_elses() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for name in ["ada", "bob"] {
        gh.create_user(json!({"userName": name, "password": PASSWORD}))
            .await;
    }
    let laptop = sign_in(&gh, "ada", PASSWORD).await;
    let phone = sign_in(&gh, "ada", PASSWORD).await;
    let bobs = sign_in(&gh, "bob", PASSWORD).await;
    assert_eq!(statuses(&gh, &[&laptop, &phone, &bobs]).await, [200; 3]);

    // Without the admin token nothing ends; an unknown user is 404.
    let refused = http1_client()
        .delete(gh.admin_url("/admin/v1/users/ada/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let (status, problem) = gh
        .admin("DELETE", "/admin/v1/users/nobody/sessions", None)
        .await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["type"], "https://gatehouse.dev/problems/not-found");
    assert_eq!(statuses(&gh, &[&laptop, &phone, &bobs]).await, [200; 3]);

    let (status, _) = gh
        .admin("DELETE", "/admin/v1/users/ADA/sessions", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        statuses(&gh, &[&laptop, &phone, &bobs]).await,
        [401, 401, 200]
    );
    let (_, events) = gh.admin("GET", "/admin/v1/audit?limit=1", None).await;
    assert_eq!(events[0]["event"], "sessions.revoked", "{events}");
    assert_eq!(events[0]["userName"], "ada");
    assert_eq!(events[0]["detail"], "2 sessions ended");

    // Ada signs in again afterwards; deleting bob ends his session too.
    let again = sign_in(&gh, "ada", PASSWORD).await;
    assert_eq!(gh.admin("DELETE", "/admin/v1/users/bob", None).await.0, 204);
    assert_eq!(statuses(&gh, &[&again, &bobs]).await, [200, 401]);
}

#[tokio::test]
async fn a_new_password_ends_the_users_sessions() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    gh.create_user(json!({"userName": "ada", "password": PASSWORD}))
        .await;
    let session = sign_in(&gh, "ada", PASSWORD).await;
    // Other changes leave sessions alone.
    let (status, _) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"email": "ada@example.com"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(session_status(&gh, &session).await, 200);

    let (status, _) = gh
        .admin(
            "PATCH",
            "/admin/v1/users/ada",
            Some(json!({"password": "a brand new passphrase"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(session_status(&gh, &session).await, 401);
    let fresh = sign_in(&gh, "ada", "a brand new passphrase").await;
    assert_eq!(session_status(&gh, &fresh).await, 200);
}

#[tokio::test]
async fn an_mfa_reset_ends_the_users_sessions() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for name in ["ada", "bob"] {
        gh.create_user(json!({"userName": name, "password": PASSWORD}))
            .await;
    }
    let adas = sign_in(&gh, "ada", PASSWORD).await;
    let bobs = sign_in(&gh, "bob", PASSWORD).await;
    assert_eq!(
        gh.admin("POST", "/admin/v1/users/ada/mfa/reset", None)
            .await
            .0,
        204
    );
    assert_eq!(statuses(&gh, &[&adas, &bobs]).await, [401, 200]);
}
