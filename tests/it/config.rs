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
            ("GATEHOUSE_LISTEN__HTTPS", ""),
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
        format!(
            "[listen]\nhttps = \"\"\n[admin]\ntoken_file = \"{}\"\n",
            file.display()
        ),
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

/// Runs the binary like [`run`], but a `serve` that starts after all is stopped at the deadline
/// and the test fails, rather than hanging.
fn run_refused(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (i32, String) {
    let mut child = std::process::Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{args:?} started instead of refusing the configuration");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

/// The problem lines of an "invalid configuration" report.
fn problems(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("  - ")).collect()
}

/// For each configuration: `check-config` and `serve` both exit 2 with the same problems, each
/// expected one among them, and neither has created the store, a key or a certificate.
fn both_refuse(dir: &std::path::Path, env: &[(&str, &str)], expected: &[&str]) {
    let check = run_refused(&["--config", "gatehouse.toml", "check-config"], env, dir);
    let serve = run_refused(&["--config", "gatehouse.toml", "serve"], env, dir);
    for (command, (code, stderr)) in [("check-config", &check), ("serve", &serve)] {
        assert_eq!(*code, 2, "{command}:\n{stderr}");
        for problem in expected {
            assert!(
                stderr.contains(problem),
                "{command}: {problem} missing from:\n{stderr}"
            );
        }
    }
    assert_eq!(problems(&check.1), problems(&serve.1));
    for made in ["data", "certs"] {
        assert!(!dir.join(made).exists(), "{made} was created");
    }
}

#[test]
fn check_config_and_serve_refuse_the_same_start_up_problems_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    // An ECDSA key: PKCS#8 PEM, but not the Ed25519 key tokens are signed with.
    let ecdsa = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("signing.pem"), ecdsa.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("bootstrap.toml"),
        "[[users]\nuser_name = \"ada\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        format!(
            "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\nself_signed = false\n\
             [tokens]\nsigning_key_file = \"{}\"\n[bootstrap]\nfile = \"{}\"\n\
             [smtp]\nfrom = \"not a mailbox\"\n",
            path("certs/none.crt"),
            path("certs/none.key"),
            path("signing.pem"),
            path("bootstrap.toml"),
        ),
    )
    .unwrap();
    let not_base64 = "not-base64-master-key!";
    both_refuse(
        dir.path(),
        &[("GATEHOUSE_MASTER_KEY", not_base64)],
        &[
            "GATEHOUSE_MASTER_KEY: the master key must be base64",
            "tls.cert: cannot read",
            "tokens.signing_key_file:",
            "bootstrap.file:",
            "smtp.from: not a mailbox",
        ],
    );
    let (_, stderr) = run_refused(
        &["--config", "gatehouse.toml", "check-config"],
        &[("GATEHOUSE_MASTER_KEY", not_base64)],
        dir.path(),
    );
    assert!(!stderr.contains(not_base64), "{stderr}");
}

#[test]
fn check_config_and_serve_refuse_the_same_store_key_and_listener_problems() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.path().join("store-file"), "not a directory").unwrap();
    std::fs::write(dir.path().join("master.key"), "c2hvcnQ=\n").unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        format!(
            "[listen]\nhttps = \"\"\nhttp = \"127.0.0.1:{port}\"\nadmin = \"0.0.0.0:{port}\"\n\
             [store]\npath = \"store-file\"\n[secrets]\nmaster_key_file = \"master.key\"\n"
        ),
    )
    .unwrap();
    both_refuse(
        dir.path(),
        &[],
        &[
            "store.path: cannot open store-file: not a directory",
            "secrets.master_key_file: the master key must be 32 bytes",
            &format!("listen.admin: 0.0.0.0:{port} takes the port of listen.http"),
        ],
    );
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "[listen]\nhttps = \"\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [store]\nbackend = \"postgres\"\nurl = \"postgres://gh:hunter2@db:notaport/gh\"\n",
    )
    .unwrap();
    both_refuse(
        dir.path(),
        &[],
        &["store.url: store failure: the database URL is not a valid PostgreSQL URL"],
    );
}

#[test]
fn check_config_names_the_file_it_read_and_prints_durations_as_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "[listen]\nhttps = \"\"\n[mfa]\nticket_ttl = \"24h\"\n[server]\nshutdown_grace = \"1h30m\"\n",
    )
    .unwrap();
    let out = run(
        &["--config", "gatehouse.toml", "check-config"],
        &[],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let absolute = dir.path().canonicalize().unwrap().join("gatehouse.toml");
    assert!(
        stdout.contains(&format!("# configuration file: {}", absolute.display())),
        "{stdout}"
    );
    // Durations as they were written, not `1day` or `1h 30m`.
    assert!(stdout.contains("ticket_ttl = \"24h\""), "{stdout}");
    assert!(stdout.contains("shutdown_grace = \"1h30m\""), "{stdout}");
    let out = run(
        &["check-config"],
        &[("GATEHOUSE_LISTEN__HTTPS", "")],
        dir.path(),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("# no configuration file (none at config/gatehouse.toml)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn serve_logs_the_configuration_file_it_read() {
    let upstream = Upstream::start().await;
    let gh = Process::start(&process_config(&upstream.url(), ""), &[]).await;
    let absolute = gh.dir.path().canonicalize().unwrap().join("gatehouse.toml");
    let expected = format!("configuration file: {}", absolute.display());
    assert!(
        gh.logs().iter().any(|line| line.contains(&expected)),
        "{:#?}",
        gh.logs()
    );
}

#[test]
fn unknown_keys_and_invalid_values_are_reported_together_with_readable_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "[listen]\nhttps = \"\"\n[server]\nshutdown_grace = \"soon\"\n\
         [[routes]]\npath_prefix = \"/a/\"\naccess = \"public\"\n\
         [[routes]]\npath_prefix = \"/b/\"\nacess = \"mfa\"\n\
         [[routes]]\npath_prefix = \"/c/\"\naccess = \"everyone\"\n",
    )
    .unwrap();
    let out = run(
        &["--config", "gatehouse.toml", "check-config"],
        &[
            ("GATEHOUSE_UPSTREM__URL", "http://127.0.0.1:3000"),
            ("GATEHOUSE_PROXY__DEFAULT", "everyone"),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "server.shutdown_grace: expected a duration",
        "routes[1].acess: unknown key; did you mean `routes[1].access`?",
        "routes[2].access: expected one of",
        "proxy.default: expected one of `public`, `authenticated`, `mfa`, got `everyone` (set by GATEHOUSE_PROXY__DEFAULT)",
        "GATEHOUSE_UPSTREM__URL: unknown section \"upstrem\"; did you mean GATEHOUSE_UPSTREAM__URL",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from:\n{stderr}"
        );
    }
    assert!(!stderr.contains("default."), "{stderr}");
    assert!(!stderr.contains("routes[0]"), "{stderr}");
}

#[test]
fn a_variable_with_one_underscore_is_warned_about_with_the_right_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["check-config"],
        &[
            ("GATEHOUSE_LISTEN__HTTPS", ""),
            ("GATEHOUSE_UPSTREAM_URL", "http://127.0.0.1:5000"),
            ("GATEHOUSE_SERVICE_HOST", "10.0.0.1"),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: GATEHOUSE_UPSTREAM_URL is ignored")
            && stderr.contains("did you mean GATEHOUSE_UPSTREAM__URL (`upstream.url`)?"),
        "{stderr}"
    );
    // What Kubernetes sets for a Service is not gatehouse's business.
    assert!(!stderr.contains("GATEHOUSE_SERVICE_HOST"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("url = \"http://127.0.0.1:3000\""));
}
