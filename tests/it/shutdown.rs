//! The real binary: graceful shutdown on SIGTERM, access logs.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(1500));
    let mut gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let url = gh.http_url("/public/slow");
    let in_flight = tokio::spawn(async move { http1_client().get(url).send().await });
    // Wait until the request has reached the upstream, then ask gatehouse to stop.
    for _ in 0..100 {
        if upstream.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.hits(), 1);
    gh.signal("TERM");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = tokio::net::TcpStream::connect(gh.addrs["listen.http"]).await;
    assert!(
        refused.is_err(),
        "new connections are still accepted while draining"
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "upstream ok");
    let status = tokio::time::timeout(Duration::from_secs(10), gh.child.wait())
        .await
        .expect("exited within 10 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_with_idle_keep_alive_connections_exits_promptly() {
    let upstream = Upstream::start().await;
    let mut gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let client = http1_client();
    // Leaves an idle keep-alive connection in the client's pool.
    let response = client.get(gh.http_url("/public/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    gh.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(5), gh.child.wait())
        .await
        .expect("an idle connection held shutdown open")
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(client);
}

#[tokio::test]
async fn each_request_leaves_one_access_log_line_without_credentials() {
    let upstream = Upstream::start().await;
    let mut gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let client = http1_client();
    client
        .get(gh.http_url("/public/./a/?access_token=supersecret&page=2"))
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    client.get(gh.http_url("/private/x")).send().await.unwrap();
    gh.signal("TERM");
    gh.child.wait().await.unwrap();

    let logs = gh.logs();
    let access: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "gatehouse::access")
        .collect();
    assert_eq!(access.len(), 2, "{logs:#?}");
    let first = &access[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/public/a/");
    assert_eq!(first["status"], 200);
    assert_eq!(first["request_id"], "log-test-1");
    assert_eq!(first["query"], "access_token=REDACTED&page=2");
    assert_eq!(first["client"], "127.0.0.1");
    // Latencies are whole microseconds, never floats such as 6.4249279999999995.
    assert!(first["latency_us"].is_u64(), "{first}");
    assert!(first["upstream_us"].is_u64(), "{first}");
    assert_eq!(access[1]["status"], 401);
    assert_eq!(access[1]["error"], "no credential");
    assert!(access[1]["upstream_us"].is_null());
    assert!(!logs.iter().any(|l| l.contains("supersecret")));
}

#[tokio::test]
async fn the_text_access_log_names_the_client_and_whole_microsecond_latencies() {
    let upstream = Upstream::start().await;
    let config =
        process_config(&upstream.url(), "").replace("format = \"json\"", "format = \"text\"");
    let mut gh = Process::start(&config, &[]).await;
    let client = http1_client();
    client
        .get(gh.http_url("/public/direct"))
        .send()
        .await
        .unwrap();
    // Loopback is a trusted proxy by default: the address it names is the client's.
    client
        .get(gh.http_url("/public/forwarded"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    gh.signal("TERM");
    gh.child.wait().await.unwrap();
    let logs = gh.logs();
    let line = |path: &str| {
        logs.iter()
            .find(|l| l.contains("gatehouse::access") && l.contains(path))
            .unwrap_or_else(|| panic!("no access line for {path}: {logs:#?}"))
            .clone()
    };
    let field = |line: &str, name: &str| -> String {
        line.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_owned()
    };
    let direct = line("/public/direct");
    assert_eq!(field(&direct, "client"), "127.0.0.1", "{direct}");
    for name in ["latency_us", "upstream_us"] {
        let value = field(&direct, name);
        assert!(
            value.parse::<u64>().is_ok(),
            "{name}={value} is not a whole number: {direct}"
        );
    }
    let forwarded = line("/public/forwarded");
    assert_eq!(field(&forwarded, "client"), "203.0.113.7", "{forwarded}");
}

#[tokio::test]
async fn no_secret_is_stored_or_logged_in_clear() {
    let upstream = Upstream::start().await;
    let admin_token = "ddfbzLGrnJCeFnFLpFcXy9dwiOK_7n90";
    let signing = crate::keys::TestKey::generate();
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("signing.pem");
    std::fs::write(&key_file, signing.pem()).unwrap();
    let extra = format!(
        "[tokens]\nsigning_key_file = \"{}\"\n[[routes]]\npath_prefix = \"/private/\"\naccess = \"authenticated\"\n",
        key_file.display()
    );
    let mut gh = Process::start(
        &process_config(&upstream.url(), &extra),
        &[("GATEHOUSE_ADMIN_TOKEN", admin_token)],
    )
    .await;
    let admin = format!("http://{}", gh.addrs["listen.admin"]);
    let client = http1_client();
    let password = "Sup3r-Secret-Passw0rd";
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(format!("{admin}{path}"))
            .bearer_auth(admin_token)
            .json(&body)
            .send()
    };
    let created = post(
        "/admin/v1/users",
        serde_json::json!({"userName": "ada", "password": password}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let user: serde_json::Value = created.json().await.unwrap();
    let app: serde_json::Value = post("/admin/v1/applications", serde_json::json!({"name": "web"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: serde_json::Value = post(
        "/admin/v1/ws-keys",
        serde_json::json!({"userName": "ada", "fileId": 3}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let app_token = app["token"].as_str().unwrap().to_owned();
    let ws_key = key["key"].as_str().unwrap().to_owned();
    for (user, pass) in [("ada", password), ("ada", "Wr0ng-Passw0rd-Guess")] {
        client
            .get(gh.http_url(&format!("/private/x?WsAccessKey={ws_key}")))
            .basic_auth(user, Some(pass))
            .header("applicationtoken", &app_token)
            .send()
            .await
            .unwrap();
    }
    let jwks: serde_json::Value = client
        .get(gh.http_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = crate::keys::now();
    let bearer = signing.sign(
        jwks["keys"][0]["kid"].as_str().unwrap(),
        &serde_json::json!({
            "iss": "https://localhost:8443", "aud": "gatehouse", "sub": user["id"].to_string(),
            "iat": now, "nbf": now, "exp": now + 300, "jti": "j", "scope": "", "amr": ["pwd"],
        }),
    );
    let response = client
        .get(gh.http_url("/private/y"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 2);
    assert!(!upstream.last().headers.contains_key("authorization"));
    for seen in upstream.all() {
        assert!(
            !seen.target.contains("WsAccessKey"),
            "the WsAccessKey reached the upstream: {}",
            seen.target
        );
    }
    gh.signal("TERM");
    gh.child.wait().await.unwrap();

    let secrets = [
        password,
        "Wr0ng-Passw0rd-Guess",
        app_token.as_str(),
        ws_key.as_str(),
        admin_token,
        bearer.as_str(),
    ];
    let logs = gh.logs().join("\n");
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret is in the log");
    }
    let mut files = vec![gh.dir.path().join("data")];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret is stored in clear in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 0, "the store wrote nothing");
}
