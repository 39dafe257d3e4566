//! Configuration reload (SPEC §8): SIGHUP and file changes apply new routes and certificates
//! without dropping connections; an invalid file is refused and the old configuration stays.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::*;

/// One HTTP/1.1 connection kept open across requests.
struct KeepAlive {
    stream: BufReader<TcpStream>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// GETs `path` on this connection and returns the status (the body is read and dropped).
    async fn get(&mut self, path: &str) -> u16 {
        let head = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(head.as_bytes())
            .await
            .unwrap();
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await.unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {status_line:?} (connection closed?)"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        status
    }
}

/// Waits until the process has logged `message` at least `count` times.
async fn wait_for_log(gh: &Process, message: &str, count: usize) {
    for _ in 0..100 {
        let seen = gh
            .logs()
            .iter()
            .filter(|line| line.contains(message))
            .count();
        if seen >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{message:?} was not logged {count} time(s):\n{}",
        gh.logs().join("\n")
    );
}

fn config(upstream: &str, private_access: &str) -> String {
    process_config(
        upstream,
        &format!("[[routes]]\npath_prefix = \"/private/\"\naccess = \"{private_access}\"\n"),
    )
}

#[tokio::test]
async fn sighup_applies_new_routes_to_open_connections_and_refuses_an_invalid_file() {
    let upstream = Upstream::start().await;
    let gh = Process::start(&config(&upstream.url(), "authenticated"), &[]).await;
    let file = gh.dir.path().join("gatehouse.toml");
    let mut connection = KeepAlive::open(gh.addrs["listen.http"]).await;
    assert_eq!(connection.get("/private/").await, 401);

    std::fs::write(&file, config(&upstream.url(), "public")).unwrap();
    gh.signal("HUP");
    wait_for_log(&gh, "configuration reloaded", 1).await;
    assert_eq!(
        connection.get("/private/").await,
        200,
        "the same connection sees the new rule"
    );
    assert_eq!(upstream.hits(), 1);

    std::fs::write(&file, config(&upstream.url(), "everyone")).unwrap();
    gh.signal("HUP");
    // The file poll may have been reading the previous write when this one landed, and then
    // refuses it as still changing; the refusal that counts names the invalid key.
    wait_for_log(&gh, "routes[1].access", 1).await;
    let rejected = gh
        .logs()
        .into_iter()
        .find(|l| l.contains("routes[1].access"))
        .unwrap();
    assert!(
        rejected.contains("configuration reload rejected"),
        "{rejected}"
    );
    assert_eq!(connection.get("/private/").await, 200, "the old rules stay");
    assert_eq!(connection.get("/public/").await, 200);

    let metrics = http1_client()
        .get(format!("http://{}/metrics", gh.addrs["listen.admin"]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"rejected\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_changed_config_file_is_reloaded_without_a_signal() {
    let upstream = Upstream::start().await;
    let gh = Process::start(&config(&upstream.url(), "public"), &[]).await;
    let file = gh.dir.path().join("gatehouse.toml");
    let client = http1_client();
    let url = gh.http_url("/private/");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    std::fs::write(&file, config(&upstream.url(), "authenticated")).unwrap();
    wait_for_log(&gh, "configuration reloaded", 1).await;
    let line = gh
        .logs()
        .into_iter()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(line.contains("file changed"), "{line}");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
}

/// A certificate for `localhost` and the PEM of both halves, written to `dir`.
fn write_certificate(dir: &std::path::Path) -> String {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("tls.crt"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), generated.signing_key.serialize_pem()).unwrap();
    generated.cert.pem()
}

/// A client that trusts only `pem`, on a fresh connection each time.
async fn status_trusting(pem: &str, url: &str) -> Result<u16, String> {
    install_crypto();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_sighup() {
    let upstream = Upstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let first = write_certificate(certs.path());
    let text = format!(
        r#"
[listen]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[tls]
cert = "{dir}/tls.crt"
key = "{dir}/tls.key"
[upstream]
url = "{upstream}"
[proxy]
default = "public"
[log]
format = "json"
"#,
        dir = certs.path().display(),
        upstream = upstream.url()
    );
    let gh = Process::start(&text, &[]).await;
    let url = format!("https://localhost:{}/page", gh.addrs["listen.https"].port());
    assert_eq!(status_trusting(&first, &url).await, Ok(200));

    let second = write_certificate(certs.path());
    gh.signal("HUP");
    wait_for_log(&gh, "configuration reloaded", 1).await;
    assert_eq!(status_trusting(&second, &url).await, Ok(200));
    assert!(
        status_trusting(&first, &url).await.is_err(),
        "new connections get the new certificate"
    );
}

/// `proxy.default = "public"` with an mfa route: an empty file would put `authenticated` in
/// force everywhere, so a refused file is told from an applied one by `/other/` staying 200.
fn open_by_default(upstream: &str, comment: &str) -> String {
    config(upstream, "mfa") + &format!("[proxy]\ndefault = \"public\"\n# {comment}\n")
}

#[tokio::test]
async fn an_empty_or_unparseable_config_file_is_refused_and_the_running_one_stays() {
    let upstream = Upstream::start().await;
    let gh = Process::start(&open_by_default(&upstream.url(), "start"), &[]).await;
    let file = gh.dir.path().join("gatehouse.toml");
    let mut connection = KeepAlive::open(gh.addrs["listen.http"]).await;
    assert_eq!(connection.get("/other/").await, 200);
    assert_eq!(connection.get("/private/").await, 401);

    let refusals = [
        ("", "empty"),
        ("  \n\t\n", "empty"),
        ("# nothing yet\n", "empty"),
        (
            "[listen]\nhttps = \"\"\nhttp = \"127.0.0.1:",
            "not valid TOML",
        ),
    ];
    for (count, (content, reason)) in refusals.iter().enumerate() {
        std::fs::write(&file, content).unwrap();
        wait_for_log(&gh, "configuration reload rejected", count + 1).await;
        let line = gh
            .logs()
            .into_iter()
            .filter(|l| l.contains("configuration reload rejected"))
            .nth(count)
            .unwrap();
        assert!(line.contains(reason), "{content:?}: {line}");
        assert_eq!(connection.get("/other/").await, 200, "{content:?}");
        assert_eq!(connection.get("/private/").await, 401, "{content:?}");
    }
    gh.signal("HUP");
    wait_for_log(&gh, "configuration reload rejected", refusals.len() + 1).await;
    assert_eq!(connection.get("/other/").await, 200);
    assert!(
        !gh.logs()
            .iter()
            .any(|l| l.contains("configuration reloaded")),
        "{}",
        gh.logs().join("\n")
    );
}

#[tokio::test]
async fn a_config_file_still_being_written_is_applied_only_once_it_settles() {
    let upstream = Upstream::start().await;
    let gh = Process::start(&open_by_default(&upstream.url(), "start"), &[]).await;
    let file = gh.dir.path().join("gatehouse.toml");
    let client = http1_client();
    let url = gh.http_url("/private/");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);

    // Each version is valid and opens /private/; it must not be taken while it keeps changing.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, file, upstream) = (stop.clone(), file.clone(), upstream.url());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let text = config(&upstream, "public") + &format!("# version {n}\n");
                std::fs::write(&file, text).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    wait_for_log(&gh, "still changing", 2).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    wait_for_log(&gh, "configuration reloaded", 1).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_reload_that_loosens_access_is_applied_and_named_in_a_warning() {
    let upstream = Upstream::start().await;
    let gh = Process::start(&config(&upstream.url(), "authenticated"), &[]).await;
    let file = gh.dir.path().join("gatehouse.toml");
    let client = http1_client();
    let url = gh.http_url("/private/");
    let loosens = "loosens access";

    // Tightening: applied without the warning.
    let tighter = config(&upstream.url(), "mfa") + "[proxy]\ndefault = \"mfa\"\n";
    std::fs::write(&file, &tighter).unwrap();
    wait_for_log(&gh, "configuration reloaded", 1).await;
    assert!(
        !gh.logs().iter().any(|l| l.contains(loosens)),
        "{}",
        gh.logs().join("\n")
    );

    // Loosening: applied, and each loosened setting named at warn.
    std::fs::write(
        &file,
        config(&upstream.url(), "public")
            + "[server]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n",
    )
    .unwrap();
    wait_for_log(&gh, "configuration reloaded", 2).await;
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let line = gh
        .logs()
        .into_iter()
        .find(|l| l.contains(loosens))
        .unwrap_or_else(|| panic!("no warning:\n{}", gh.logs().join("\n")));
    assert!(line.contains("WARN"), "{line}");
    for named in [
        "proxy.default mfa -> authenticated",
        "route /private/ access mfa -> public",
        "server.trusted_proxies added ",
        "10.0.0.0/8",
    ] {
        assert!(line.contains(named), "{named}: {line}");
    }

    // Another site's pages may now open cookie-authenticated WebSockets: named too.
    std::fs::write(
        &file,
        config(&upstream.url(), "public")
            + "[server]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n\
               [websocket]\nallowed_origins = [\"https://b.example\"]\n",
    )
    .unwrap();
    wait_for_log(&gh, "configuration reloaded", 3).await;
    let lines: Vec<String> = gh
        .logs()
        .into_iter()
        .filter(|l| l.contains(loosens))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].contains("websocket.allowed_origins added https://b.example"),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn a_reload_cannot_switch_a_production_server_to_a_self_signed_certificate() {
    let upstream = Upstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let real = write_certificate(certs.path());
    let production = |extra: &str| {
        format!(
            r#"{extra}
[listen]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[sms]
kind = "none"
[upstream]
url = "{upstream}"
[proxy]
default = "public"
[log]
format = "json"
"#,
            upstream = upstream.url()
        )
    };
    let tls = |dir: &std::path::Path, self_signed: bool| {
        format!(
            "[tls]\nself_signed = {self_signed}\ncert = \"{d}/tls.crt\"\nkey = \"{d}/tls.key\"\n",
            d = dir.display()
        )
    };
    let master_key = [(
        "GATEHOUSE_MASTER_KEY",
        "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=",
    )];
    let gh =
        Process::start_as_configured(&production(&tls(certs.path(), false)), &master_key).await;
    let url = format!("https://localhost:{}/page", gh.addrs["listen.https"].port());
    assert_eq!(status_trusting(&real, &url).await, Ok(200));

    // The same file saying development, with a certificate gatehouse would generate itself.
    let elsewhere = gh.dir.path().join("generated");
    let file = gh.dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        production(&format!(
            "[server]\nenvironment = \"development\"\n{}",
            tls(&elsewhere, true)
        )),
    )
    .unwrap();
    gh.signal("HUP");
    wait_for_log(&gh, "configuration reload", 1).await;
    let line = gh
        .logs()
        .into_iter()
        .find(|l| l.contains("configuration reload"))
        .unwrap();
    assert!(
        line.contains("configuration reload rejected") && line.contains("server.environment"),
        "{line}"
    );
    assert_eq!(
        status_trusting(&real, &url).await,
        Ok(200),
        "the real certificate is still served"
    );
    assert!(!elsewhere.exists(), "no certificate was generated");
}

#[tokio::test]
async fn an_identity_header_renamed_by_a_reload_is_still_removed_from_clients() {
    let upstream = Upstream::start().await;
    let named = |user: &str| {
        config(&upstream.url(), "authenticated")
            + &format!("[identity_headers]\nuser = \"{user}\"\n")
    };
    let gh = Process::start(&named("x-app-user"), &[]).await;
    let file = gh.dir.path().join("gatehouse.toml");
    let client = http1_client();
    let send = |name: &'static str| {
        client
            .get(gh.http_url("/public/x"))
            .header(name, "admin")
            .send()
    };
    assert_eq!(send("x-app-user").await.unwrap().status(), 200);
    assert!(upstream.last().headers.get("x-app-user").is_none());

    // The application still reads the old name until it is changed too.
    std::fs::write(&file, named("x-app-login")).unwrap();
    gh.signal("HUP");
    wait_for_log(&gh, "configuration reloaded", 1).await;
    for name in ["x-app-user", "x-app-login", "X-App-User"] {
        assert_eq!(send(name).await.unwrap().status(), 200);
        let seen = upstream.last().headers;
        assert!(
            seen.get(name).is_none(),
            "{name} reached the upstream: {seen:?}"
        );
    }
}
