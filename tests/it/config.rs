//! Configuration as the binary sees it: files, environment overrides, errors.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::harness::*;

/// Runs the binary in development (see [`DEVELOPMENT`]) unless `env` names another environment.
fn run(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(binary())
        .args(args)
        .env(DEVELOPMENT.0, DEVELOPMENT.1)
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

/// Runs the binary with no `GATEHOUSE_SERVER__ENVIRONMENT`: the file alone decides.
fn run_as_configured(args: &[&str], env: &[(&str, &str)], dir: &Path) -> std::process::Output {
    std::process::Command::new(binary())
        .args(args)
        .env_remove(DEVELOPMENT.0)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn shipped_development_config_is_valid_because_it_says_development() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatehouse.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = run_as_configured(
        &["--config", shipped.to_str().unwrap(), "check-config"],
        &[],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("environment = \"development\""));
    // The same file told it is production refuses its development settings.
    let out = run_as_configured(
        &["--config", shipped.to_str().unwrap(), "check-config"],
        &[("GATEHOUSE_SERVER__ENVIRONMENT", "production")],
        dir.path(),
    );
    assert!(!out.status.success());
}

/// A configuration with every development-only setting: the SMS outbox, a generated master key,
/// a self-signed certificate and a bootstrap file with a plaintext password and token.
fn development_settings(dir: &Path) -> std::path::PathBuf {
    let bootstrap = dir.join("bootstrap.toml");
    std::fs::write(
        &bootstrap,
        "[[users]]\nuser_name = \"ada\"\npassword = \"correct horse battery\"\n\
         [[applications]]\nname = \"web\"\ntoken = \"gha_0123456789abcdef0123456789abcdef\"\n",
    )
    .unwrap();
    let file = dir.join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [tls]\nself_signed = true\n[sms]\nkind = \"log\"\n[bootstrap]\nfile = \"{}\"\n",
            bootstrap.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn development_only_settings_are_refused_outside_development_by_serve_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = development_settings(dir.path());
    let bootstrap = dir.path().join("bootstrap.toml").display().to_string();
    // Production by default, and by name.
    for env in [
        vec![],
        vec![("GATEHOUSE_SERVER__ENVIRONMENT", "production")],
    ] {
        for command in ["check-config", "serve"] {
            let out = run_as_configured(
                &["--config", file.to_str().unwrap(), command],
                &env,
                dir.path(),
            );
            assert_eq!(out.status.code(), Some(2), "{command} {env:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            for needle in [
                "sms.kind: `log`",
                "secrets.master_key_file: no master key",
                "tls.self_signed: a self-signed certificate",
                &format!("bootstrap.file: {bootstrap}: users[0] (ada) has a plaintext `password`"),
                &format!(
                    "bootstrap.file: {bootstrap}: applications[0] (web) has a plaintext `token`"
                ),
                "server.environment = \"development\"",
            ] {
                assert!(
                    stderr.contains(needle),
                    "{command}: {needle} not in:\n{stderr}"
                );
            }
            assert!(
                !stderr.contains("correct horse") && !stderr.contains("gha_0123"),
                "{stderr}"
            );
            // Refused before anything is created.
            for created in ["data", "certs"] {
                assert!(
                    !dir.path().join(created).exists(),
                    "{command} created {created}"
                );
            }
        }
    }
    // Each is accepted in development.
    let out = run_as_configured(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[("GATEHOUSE_SERVER__ENVIRONMENT", "development")],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A master key from the environment is not a generated one.
    let out = run_as_configured(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[(
            "GATEHOUSE_MASTER_KEY",
            "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=",
        )],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("secrets.master_key_file") && stderr.contains("sms.kind"),
        "{stderr}"
    );
    // An unknown environment is named too.
    let out = run_as_configured(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[("GATEHOUSE_SERVER__ENVIRONMENT", "dev")],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.environment: expected `development` or `production`, got `dev`"),
        "{stderr}"
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// After a start with the development settings (and a text message sent to the outbox), every
/// file gatehouse created is 0600 and every directory 0700, whatever the umask.
#[tokio::test]
async fn files_gatehouse_creates_are_private_to_its_user() {
    let upstream = Upstream::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(development_settings(scratch.path()))
        .unwrap()
        .replace(
            "[listen]",
            &format!("[upstream]\nurl = \"{}\"\n[listen]", upstream.url()),
        );
    let token = "dS7BWKPPj6qMfyOLPBlJKv2zfGFyrlX6";
    let mut gh = Process::start(&config, &[("GATEHOUSE_ADMIN_TOKEN", token)]).await;
    // Whatever the umask it was started with, files created while it runs (sled's later
    // snapshots and blobs included) are private: the process runs with umask 077.
    let pid = gh.child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Umask:", "0077"]),
        "{status}"
    );
    // A text message, so that the outbox exists.
    let client = http1_client();
    let admin = format!("http://{}/admin/v1/users", gh.addrs["listen.admin"]);
    for body in [
        serde_json::json!({"userName": "zoe", "phone": "+14155550123"}),
        serde_json::json!({"userName": "billing", "password": "service secret", "scopes": ["manage.otp.verify"]}),
    ] {
        let created = client
            .post(&admin)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let sent = client
        .post(gh.http_url("/manage/v2/user/send/otp"))
        .basic_auth("billing", Some("service secret"))
        .json(&serde_json::json!({"userName": "zoe", "phoneNumber": "+14155550123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    gh.signal("TERM");
    assert!(gh.child.wait().await.unwrap().success());

    // The defaults: store.path = "data", the certificate in "certs/", beside the config file.
    let root = gh.dir.path();
    let data = root.join("data");
    for private in [
        data.join("master.key"),
        data.join("sms-outbox.log"),
        data.join("db"),
        data.join("conf"),
        root.join("certs/gatehouse.crt"),
        root.join("certs/gatehouse.key"),
    ] {
        assert_eq!(mode(&private), 0o600, "{}", private.display());
    }
    for dir in [data.clone(), root.join("certs")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    // Everything sled keeps in the store directory, whatever its name.
    let mut open = Vec::new();
    let mut stack = vec![data];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let m = mode(&path);
            if path.is_dir() {
                stack.push(path.clone());
            }
            if m & 0o077 != 0 {
                open.push(format!("{} {m:o}", path.display()));
            }
        }
    }
    assert!(open.is_empty(), "{open:?}");
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
        // Development allows the plaintext password, and says so at every start.
        let logs = gh.logs().join("\n");
        assert!(
            logs.contains("plaintext secret in the bootstrap file")
                && logs.contains("users[0] (ada) has a plaintext `password`"),
            "{logs}"
        );
        assert!(!logs.contains("correct horse battery"), "{logs}");
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
/// They run in development, so that the start-up checks are reached rather than the refusal of
/// development-only settings.
fn both_refuse(dir: &std::path::Path, env: &[(&str, &str)], expected: &[&str]) {
    let mut env = env.to_vec();
    env.push(crate::harness::DEVELOPMENT);
    let check = run_refused(&["--config", "gatehouse.toml", "check-config"], &env, dir);
    let serve = run_refused(&["--config", "gatehouse.toml", "serve"], &env, dir);
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
