//! Configuration as the binary sees it: files, environment overrides, errors.

use std::process::Stdio;

use crate::harness::*;

fn run(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn invalid_values_fail_start_with_every_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nshutdown_grace = \"soon\"\n[upstream]\nurl = \"ftp://app\"\n[listen]\nadmin = \"nowhere\"\n",
    )
    .unwrap();
    let out = run(
        &["--config", file.to_str().unwrap(), "serve"],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["server.shutdown_grace", "upstream.url", "listen.admin"] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

#[test]
fn unknown_keys_fail_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[upstream]\nulr = \"http://127.0.0.1:1\"\n").unwrap();
    let out = run(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ulr"));
}

#[test]
fn invalid_environment_value_is_reported_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["check-config"],
        &[("GATEHOUSE_PROXY__DEFAULT", "everyone")],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxy.default"));
}

#[test]
fn missing_explicit_config_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--config", "nope.toml", "check-config"], &[], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["check-config"],
        &[
            (
                "GATEHOUSE_UPSTREAM__URL",
                "http://svc:s3cr3t@127.0.0.1:4999",
            ),
            ("GATEHOUSE_SERVER__SHUTDOWN_GRACE", "3s"),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("http://***@127.0.0.1:4999"), "{stdout}");
    assert!(stdout.contains("shutdown_grace = \"3s\""), "{stdout}");
    assert!(!stdout.contains("s3cr3t"), "{stdout}");
}

#[test]
fn weak_admin_tokens_are_refused_by_check_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // Short, outside the base64 alphabet, and the shipped Secret's placeholder.
    for weak in [
        "x",
        "KpSImazd7ffx1EnVv70SKY9TBgK8!0Yni",
        "REPLACE-ME-admin-token-from-head-c-32-dev-urandom-base64",
    ] {
        let out = run(
            &["check-config"],
            &[("GATEHOUSE_ADMIN_TOKEN", weak)],
            dir.path(),
        );
        assert!(!out.status.success(), "{weak} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("GATEHOUSE_ADMIN_TOKEN"), "{stderr}");
        assert!(!stderr.contains(weak), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains(weak), "{stdout}");
    }
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "changeme\n").unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!("[admin]\ntoken_file = \"{}\"\n", file.display()),
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let out = run(
            &["--config", config.to_str().unwrap(), command],
            &[],
            dir.path(),
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("admin.token_file"), "{stderr}");
        assert!(!stderr.contains("changeme"), "{stderr}");
    }
    std::fs::write(&file, "KpSImazd7ffx1EnVv70SKY9TBgK80Yni\n").unwrap();
    let out = run(
        &["--config", config.to_str().unwrap(), "check-config"],
        &[],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_development_config_is_valid() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatehouse.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["--config", shipped.to_str().unwrap(), "check-config"],
        &[],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn environment_overrides_the_file() {
    let upstream = Upstream::start().await;
    let dead = closed_port().await;
    // The file points at nothing; the environment points at the real upstream.
    let gh = Process::start(
        &process_config(&format!("http://{dead}"), ""),
        &[("GATEHOUSE_UPSTREAM__URL", &upstream.url())],
    )
    .await;
    let response = http1_client()
        .get(gh.http_url("/public/env"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn bootstrap_file_is_applied_at_every_start_without_duplicates() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.toml");
    std::fs::write(
        &bootstrap,
        "[[users]]\nuser_name = \"ada\"\npassword = \"correct horse battery\"\n\
         [[organizations]]\nid = 7\nname = \"Acme\"\nmembers = [{ user_name = \"ada\", role = \"admin\" }]\n",
    )
    .unwrap();
    let store = dir.path().join("data");
    let extra = format!(
        "[bootstrap]\nfile = \"{}\"\n[store]\npath = \"{}\"\n[[routes]]\npath_prefix = \"/private/\"\naccess = \"authenticated\"\n",
        bootstrap.display(),
        store.display()
    );
    for _ in 0..2 {
        let mut gh = Process::start(
            &process_config(&upstream.url(), &extra),
            &[("GATEHOUSE_ADMIN_TOKEN", "1QGdFOeG4Hvr6s1K7F9Yoripj7rWEdYC")],
        )
        .await;
        let client = http1_client();
        let response = client
            .get(gh.http_url("/private/x"))
            .basic_auth("ada", Some("correct horse battery"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let user: serde_json::Value = client
            .get(format!(
                "http://{}/admin/v1/users/ada",
                gh.addrs["listen.admin"]
            ))
            .bearer_auth("1QGdFOeG4Hvr6s1K7F9Yoripj7rWEdYC")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            user["organizations"],
            serde_json::json!([{"organizationId": 7, "role": "admin"}])
        );
        gh.signal("TERM");
        assert!(gh.child.wait().await.unwrap().success());
    }
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn broken_bootstrap_file_fails_start_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.toml");
    std::fs::write(&bootstrap, "[[files]]\nid = 3\nmembers = [\"ghost\"]\n").unwrap();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\nhttps = \"\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[bootstrap]\nfile = \"{}\"\n",
            bootstrap.display()
        ),
    )
    .unwrap();
    let out = run(
        &["--config", file.to_str().unwrap(), "serve"],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("files[0]") && stderr.contains("ghost"),
        "{stderr}"
    );
}
