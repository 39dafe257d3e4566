//! The binary as the README's walkthrough uses it: the demo upstream, and what start-up tells a
//! person who has no admin token or a store another gatehouse holds.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::*;

/// `gatehouse demo-upstream` on a free loopback port; the child and its base URL.
async fn demo_upstream() -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(binary())
        .args(["demo-upstream", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the demo upstream said where it listens within 10 s")
        .unwrap()
        .expect("the demo upstream exited before listening");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (child, url)
}

#[tokio::test]
async fn the_demo_upstream_answers_with_the_request_it_received() {
    let (_demo, url) = demo_upstream().await;
    let client = http1_client();
    for method in ["GET", "POST", "DELETE"] {
        let response = client
            .request(
                http::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{url}/some/path?q=1"),
            )
            .header("X-Custom", "one")
            .header("X-Custom", "two")
            .body("ignored")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        let text = response.text().await.unwrap();
        assert!(
            text.starts_with(&format!("{method} /some/path?q=1 HTTP/1.1\n")),
            "{text}"
        );
        assert!(text.contains("x-custom: one\nx-custom: two\n"), "{text}");
    }
}

#[tokio::test]
async fn through_gatehouse_the_demo_upstream_shows_the_identity_and_never_a_spoofed_one() {
    let (_demo, url) = demo_upstream().await;
    let gh = Gatehouse::start_url(&url, |_| {}).await;
    gh.create_user(json!({"userName": "ada", "password": "correct horse battery"}))
        .await;
    let client = http1_client();
    let spoof = |request: reqwest::RequestBuilder| {
        request
            .header("X-Auth-User", "admin")
            .header("x_auth_user", "admin")
            .header("X-Auth-Scopes", "admin")
    };

    // A public route: the client's identity headers are removed, none is added.
    let public = spoof(client.get(gh.http_url("/public/")))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    let seen = public.text().await.unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("get /public/ http/1.1\n"), "{seen}");
    assert!(!seen.contains("x-auth-"), "{seen}");
    assert!(!seen.contains("x_auth_user"), "{seen}");
    assert!(!seen.contains("admin"), "{seen}");

    // With a password: the application sees who it is, and only that.
    let private = spoof(client.get(gh.http_url("/private/")))
        .basic_auth("ada", Some("correct horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), 200);
    let seen = private.text().await.unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert!(lines.contains(&"x-auth-user: ada"), "{seen}");
    assert!(
        lines.iter().any(|l| l.starts_with("x-auth-assertion: ey")),
        "{seen}"
    );
    assert!(!seen.contains("admin"), "{seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("authorization"),
        "{seen}"
    );
}

#[tokio::test]
async fn start_without_an_admin_token_warns_that_the_admin_api_is_off() {
    let upstream = Upstream::start().await;
    let mut gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    gh.signal("TERM");
    gh.child.wait().await.unwrap();
    let logs = gh.logs();
    let warning = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("admin API is off")
        })
        .unwrap_or_else(|| panic!("no warning: {logs:#?}"));
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("GATEHOUSE_ADMIN_TOKEN"),
        "{warning}"
    );

    // With a token there is no such warning.
    let mut gh = Process::start(
        &process_config(&upstream.url(), ""),
        &[("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    gh.signal("TERM");
    gh.child.wait().await.unwrap();
    assert!(
        !gh.logs().iter().any(|l| l.contains("admin API is off")),
        "{:#?}",
        gh.logs()
    );
}

#[tokio::test]
async fn a_second_gatehouse_on_the_same_store_says_which_store_and_why_once() {
    let upstream = Upstream::start().await;
    let config = process_config(&upstream.url(), "");
    let first = Process::start(&config, &[("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let second = tokio::process::Command::new(binary())
        .args(["--config", "gatehouse.toml", "serve"])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env(crate::harness::DEVELOPMENT.0, crate::harness::DEVELOPMENT.1)
        .env_remove("RUST_LOG")
        .current_dir(first.dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let stdout = String::from_utf8_lossy(&second.stdout);
    let store = first.dir.path().canonicalize().unwrap().join("data");
    assert!(
        stderr.contains(&store.display().to_string()),
        "the store's path is not named: {stderr}"
    );
    assert!(stderr.contains("another gatehouse process"), "{stderr}");
    // Printed once: on stderr, not again in the log.
    assert_eq!(stderr.matches("cannot start").count(), 1, "{stderr}");
    assert!(!stdout.contains("cannot start"), "{stdout}");
    assert!(!stdout.contains("lock"), "{stdout}");
}

#[tokio::test]
async fn admin_cli_signs_a_user_out_everywhere() {
    use crate::admin::{cli, session_status, sign_in};
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    gh.create_user(json!({"userName": "ada", "password": "correct horse battery"}))
        .await;
    let session = sign_in(&gh, "ada", "correct horse battery").await;
    assert_eq!(session_status(&gh, &session).await, 200);

    let (ok, out, err) = cli(&gh, ADMIN_TOKEN, &["user", "sign-out", "ada"], None).await;
    assert!(ok, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(session_status(&gh, &session).await, 401);

    let (ok, _, err) = cli(&gh, ADMIN_TOKEN, &["user", "sign-out", "nobody"], None).await;
    assert!(!ok);
    assert!(err.starts_with("404"), "{err}");
    let (ok, _, err) = cli(&gh, "wrong", &["user", "sign-out", "ada"], None).await;
    assert!(!ok);
    assert!(err.starts_with("401"), "{err}");
}
