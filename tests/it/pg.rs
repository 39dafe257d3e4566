//! PostgreSQL for the tests: fresh databases on the server that `GATEHOUSE_TEST_DATABASE_URL`
//! names (tests/run.sh starts a throwaway one when the variable is unset), and private servers
//! (initdb in a temporary directory) that a test may stop and start again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The variable naming the server the tests share: a URL without a database name, such as
/// `postgres://postgres@127.0.0.1:PORT`, whose user may create and drop databases.
pub const DATABASE_URL_VAR: &str = "GATEHOUSE_TEST_DATABASE_URL";

/// The variable naming the directory of `initdb` and `pg_ctl`, for [`PrivateServer`]; without it,
/// they are looked for on `PATH`, then in the newest `/usr/lib/postgresql/*/bin`.
pub const PG_BIN_VAR: &str = "GATEHOUSE_TEST_PG_BIN";

/// The URL of the server the tests share, from [`DATABASE_URL_VAR`].
pub fn shared_server() -> String {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_owned(),
        _ => panic!(
            "this test needs a PostgreSQL server: run the tests with tests/run.sh, which starts a \
             throwaway one, or set {DATABASE_URL_VAR} to a server URL without a database (such as \
             postgres://postgres@127.0.0.1:PORT) whose user may create databases"
        ),
    }
}

/// A database of its own on a server, dropped when this goes out of scope.
pub struct Database {
    server: String,
    name: String,
}

impl Database {
    /// A new, empty database on the server the tests share ([`shared_server`]).
    pub async fn on_shared_server() -> Database {
        Database::create(&shared_server()).await
    }

    /// A new, empty database on the server at `server` (a URL without a database name).
    pub async fn create(server: &str) -> Database {
        let name = format!("gh_it_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) =
            tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {server}: {e}"));
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE on {server}: {e}"));
        Database {
            server: server.to_owned(),
            name,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Best effort, on a runtime of its own (the test's may be shutting down).
        let admin = format!("{}/postgres", self.server);
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&sql).await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}

/// A PostgreSQL server tool: from [`PG_BIN_VAR`]'s directory, else `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), as tests/run.sh looks for them.
fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_BIN_VAR).filter(|d| !d.is_empty()) {
        let tool = PathBuf::from(dir).join(name);
        assert!(
            tool.is_file(),
            "{PG_BIN_VAR} names no directory with {name}: {}",
            tool.display()
        );
        return tool;
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(tool) = on_path.iter().map(|d| d.join(name)).find(|t| t.is_file()) {
        return tool;
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: Result<Vec<u32>, _> =
                e.file_name().to_str()?.split('.').map(str::parse).collect();
            Some((version.ok()?, e.path().join("bin").join(name)))
        })
        .filter(|(_, tool)| tool.is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, tool)| tool).unwrap_or_else(|| {
        panic!(
            "no {name} on PATH nor under /usr/lib/postgresql/*/bin: run the tests with \
             tests/run.sh, which installs PostgreSQL, or set {PG_BIN_VAR} to the directory of \
             initdb and pg_ctl"
        )
    })
}

/// Runs a PostgreSQL tool as the `postgres` user (the server refuses to run as root).
fn as_postgres(tool: &str, args: &[&str]) -> std::process::Output {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let tool = bin(tool);
    let output = if is_root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&tool)
            .args(args)
            .output()
    } else {
        Command::new(&tool).args(args).output()
    };
    output.unwrap_or_else(|e| panic!("{}: {e}", tool.display()))
}

/// A PostgreSQL server of this test's own, on a free loopback port.
pub struct PrivateServer {
    _dir: tempfile::TempDir,
    data: PathBuf,
    pub port: u16,
}

impl PrivateServer {
    pub async fn start() -> PrivateServer {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let server = PrivateServer {
            _dir: dir,
            data,
            port,
        };
        server.resume().await;
        server
    }

    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut all = vec!["-D", self.data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = as_postgres("pg_ctl", &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (again) and waits until it accepts connections.
    pub async fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            socket_dir(&self.data).display()
        );
        let log = self.data.join("server.log");
        self.pg_ctl(&["-w", "-l", log.to_str().unwrap(), "-o", &options, "start"]);
    }

    /// Stops at once, as an outage would (connections are cut).
    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }
}

fn socket_dir(data: &Path) -> PathBuf {
    data.to_path_buf()
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// Waits for `check` to hold, polling for up to `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
