use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatehouse::app::App;
use gatehouse::config;
use gatehouse::reload;
use gatehouse::server::shutdown;

/// An authentication sidecar: TLS, MFA/OTP APIs and trusted identity headers for the app behind it.
#[derive(Parser)]
#[command(name = "gatehouse", version)]
struct Cli {
    /// Configuration file (TOML). Defaults to config/gatehouse.toml when it exists.
    #[arg(long, global = true, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// What to do; `serve` when none is given.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Validate the configuration and print it, secrets masked.
    CheckConfig,
    /// Manage users, applications, organisations and keys through the admin API.
    Admin(Box<gatehouse::cli::AdminArgs>),
    /// Explain the access rules: `routes explain METHOD PATH [--user NAME] [--source IP]`.
    Routes(Box<gatehouse::explain::RoutesArgs>),
    /// Serve the Kubernetes mutating admission webhook that injects the gatehouse sidecar.
    InjectWebhook(InjectArgs),
    /// Copy a sled store into an empty PostgreSQL database (moving from one replica to several).
    Migrate(MigrateArgs),
    /// Ask the admin listener's `/readyz` or `/healthz` (a Kubernetes exec probe): exit 0 if ready.
    Probe(gatehouse::probe::ProbeArgs),
    /// Run a tiny application that answers with the request it received (to try gatehouse out).
    ///
    /// Every request is answered 200 with its request line and every header that reached the
    /// application, as text: put it behind gatehouse to see what gatehouse adds and removes.
    DemoUpstream(gatehouse::demo::DemoArgs),
    /// Read a password from standard input and print its argon2id hash (a bootstrap file's
    /// `password_hash`).
    HashPassword,
    /// Read an ApplicationToken from standard input and print its hash (a bootstrap file's
    /// `token_hash`).
    HashToken,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The sled store's directory (no gatehouse may be running on it); default: `store.path`.
    #[arg(long)]
    from: Option<PathBuf>,
    /// The PostgreSQL URL to copy into; its schema is created first.
    #[arg(long, env = "GATEHOUSE_MIGRATE_TO", hide_env_values = true)]
    to: String,
}

#[derive(clap::Args)]
struct InjectArgs {
    /// Address to serve HTTPS on (`POST /mutate`, `GET /healthz`).
    #[arg(long, env = "GATEHOUSE_INJECT_LISTEN", default_value = "0.0.0.0:8443")]
    listen: std::net::SocketAddr,
    /// PEM certificate the API server trusts for the webhook's Service.
    #[arg(long, env = "GATEHOUSE_INJECT_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, env = "GATEHOUSE_INJECT_TLS_KEY")]
    tls_key: PathBuf,
    /// The gatehouse image injected sidecars run.
    #[arg(long, env = "GATEHOUSE_INJECT_IMAGE")]
    image: String,
    /// Open connections at most; one more is closed as soon as it is accepted.
    #[arg(long, env = "GATEHOUSE_INJECT_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Open connections at most from one client address (an IPv6 client: its /64).
    #[arg(long, env = "GATEHOUSE_INJECT_MAX_CONNECTIONS_PER_IP", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_ip: u32,
}

fn main() -> ExitCode {
    // Whatever gatehouse or a library it uses creates (the store's files, snapshots written while
    // running, keys, certificates, the SMS outbox) is readable by its own user only.
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Admin(args) => admin(*args),
        Command::Routes(args) => routes(*args, cli.config.as_deref()),
        Command::Probe(args) => probe(args),
        Command::DemoUpstream(args) => demo_upstream(args),
        Command::HashPassword => hash_stdin(false),
        Command::HashToken => hash_stdin(true),
        Command::InjectWebhook(args) => inject_webhook(args),
        Command::Migrate(args) => {
            let from = match args.from {
                Some(dir) => dir,
                None => match load(cli.config.as_deref()) {
                    Ok(config) => config.store.path,
                    Err(code) => return code,
                },
            };
            migrate(&from, &args.to)
        }
        Command::CheckConfig => {
            let loaded = config::load_report(cli.config.as_deref());
            let source = loaded_from(&loaded);
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            match checked(loaded.config) {
                Ok(config) => match config.to_toml() {
                    Ok(text) => {
                        println!("# configuration is valid\n# {source}\n{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cannot print the configuration: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => refused(&e, &source),
            }
        }
        Command::Serve => {
            let loaded = config::load_report(cli.config.as_deref());
            let source = loaded_from(&loaded);
            match checked(loaded.config) {
                Ok(config) => serve(
                    config,
                    config::file_path(cli.config.as_deref()),
                    &source,
                    &loaded.warnings,
                ),
                Err(e) => {
                    for warning in &loaded.warnings {
                        eprintln!("warning: {warning}");
                    }
                    refused(&e, &source)
                }
            }
        }
    }
}

/// Where the configuration came from: the file read (absolute), or that there was none.
fn loaded_from(loaded: &config::Loaded) -> String {
    match &loaded.file {
        Some(file) => format!("configuration file: {}", file.display()),
        None => format!(
            "no configuration file (none at {}): built-in defaults and GATEHOUSE_* variables",
            loaded.path.display()
        ),
    }
}

/// The configuration, or exit code 2 after printing every problem.
fn load(path: Option<&std::path::Path>) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
}

/// Prints the hash of the first line of standard input, for a bootstrap file: never the input.
fn hash_stdin(token: bool) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("cannot read standard input: {e}");
        return ExitCode::FAILURE;
    }
    let value = line.trim_end_matches(['\n', '\r']);
    let hashed = if value.is_empty() {
        Err("nothing to hash: give the secret on standard input".to_owned())
    } else if token && value.chars().count() < 32 {
        Err("an ApplicationToken must be at least 32 characters".to_owned())
    } else if token {
        Ok(gatehouse::auth::secret::hash_token(value))
    } else {
        gatehouse::auth::secret::hash_password(value)
    };
    match hashed {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration `serve` can start with: valid, and passing the checks start-up makes before
/// opening the store or binding ports ([`gatehouse::preflight`]). `check-config` and `serve` both
/// decide here, so they refuse the same configurations with the same problems.
fn checked(
    config: Result<config::Config, config::ConfigError>,
) -> Result<config::Config, config::ConfigError> {
    config.and_then(|config| gatehouse::preflight::check(&config).map(|()| config))
}

/// Exit code 2 after printing every problem and where the configuration came from.
fn refused(error: &config::ConfigError, source: &str) -> ExitCode {
    eprint!("{error}");
    eprintln!("({source})");
    ExitCode::from(2)
}

fn admin(args: gatehouse::cli::AdminArgs) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(gatehouse::cli::run(args)),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse routes …` with the configuration read and validated as `check-config` does (exit 2
/// when it is refused); the files it names (certificates, store) are not opened.
fn routes(args: gatehouse::explain::RoutesArgs, path: Option<&std::path::Path>) -> ExitCode {
    let loaded = config::load_report(path);
    let source = loaded_from(&loaded);
    let config = match loaded.config {
        Ok(config) => config,
        Err(e) => return refused(&e, &source),
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(gatehouse::explain::run(args, &config)),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::from(2)
        }
    }
}

fn probe(args: gatehouse::probe::ProbeArgs) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(gatehouse::probe::run(args)),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo_upstream(args: gatehouse::demo::DemoArgs) -> ExitCode {
    match server_runtime(0) {
        Ok(runtime) => runtime.block_on(gatehouse::demo::run(args)),
        Err(code) => code,
    }
}

fn migrate(from: &std::path::Path, to: &str) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let source = match gatehouse::store::sled::SledStore::open(from) {
            Ok(store) => store,
            Err(e) => {
                eprintln!("cannot open the sled store in {}: {e}", from.display());
                return ExitCode::FAILURE;
            }
        };
        let target = match gatehouse::store::postgres::PgStore::connect(to, 2).await {
            Ok(store) => store,
            Err(e) => {
                eprintln!("cannot open the PostgreSQL store: {e}");
                return ExitCode::FAILURE;
            }
        };
        match gatehouse::store::copy(&source, &target).await {
            Ok(copied) => {
                println!("copied {} from {}", copied.summary(), from.display());
                ExitCode::SUCCESS
            }
            Err(gatehouse::store::StoreError::Conflict(_)) => {
                eprintln!("the PostgreSQL store is not empty; nothing was copied");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("copy failed (nothing was committed): {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The multi-threaded runtime a server runs on, with one process-wide TLS provider for every
/// client library (SMTP, JWKS, SMS).
fn server_runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One worker: a current-thread runtime, whose I/O driver runs on that thread, so that a
    // ready socket wakes no other thread.
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if worker_threads > 1 {
        builder.worker_threads(worker_threads);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn inject_webhook(args: InjectArgs) -> ExitCode {
    gatehouse::telemetry::init(&config::LogConfig {
        format: config::LogFormat::Json,
        level: "info".into(),
    });
    let runtime = match server_runtime(0) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if args.max_connections_per_ip > args.max_connections {
        eprintln!(
            "cannot start: --max-connections-per-ip ({}) must not exceed --max-connections ({})",
            args.max_connections_per_ip, args.max_connections
        );
        return ExitCode::FAILURE;
    }
    let limits = gatehouse::inject::limits(
        args.max_connections as usize,
        args.max_connections_per_ip as usize,
    );
    runtime.block_on(async {
        let tls_config = config::TlsConfig {
            cert: args.tls_cert,
            key: args.tls_key,
            self_signed: false,
        };
        let tls = match gatehouse::server::tls::server_config(&tls_config, "") {
            Ok(tls) => std::sync::Arc::new(arc_swap::ArcSwap::new(tls)),
            Err(e) => {
                eprintln!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("cannot start: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listener = "inject-webhook", addr = %addr, image = %args.image, "listening");
        }
        let watcher = gatehouse::inject::watch_certificate(
            tls_config,
            tls.clone(),
            std::time::Duration::from_secs(60),
        );
        let settings = gatehouse::inject::Settings { image: args.image };
        gatehouse::inject::serve(listener, tls, settings, limits, shutdown::signal()).await;
        watcher.abort();
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn serve(
    config: config::Config,
    config_file: std::path::PathBuf,
    loaded_from: &str,
    warnings: &[String],
) -> ExitCode {
    gatehouse::telemetry::init(&config.log);
    tracing::info!("{loaded_from}");
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match server_runtime(config.server.worker_threads) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        // A fatal error is printed once, on stderr, whatever the log format.
        let app = match App::open(config).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        if app.config.admin.token.is_none() {
            tracing::warn!(
                "the admin API is off: no admin token is configured; set GATEHOUSE_ADMIN_TOKEN \
                 (or admin.token_file) to at least 22 base64 characters, e.g. \
                 `head -c 32 /dev/urandom | base64`, and start again"
            );
        }
        let (server, reloadable) = match app.bind().await {
            Ok(bound) => bound,
            Err(e) => {
                eprintln!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let reloads = match reload::watch(reloadable, config_file, reload::POLL_INTERVAL) {
            Ok(task) => Some(task),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGHUP; configuration reload is off");
                None
            }
        };
        server.run(shutdown::signal()).await;
        if let Some(task) = reloads {
            task.abort();
        }
        // The audit lines still queued are written before the process ends.
        if let Err(e) = tokio::task::spawn_blocking(gatehouse::audit::close).await {
            tracing::error!(error = %e, "cannot finish writing the audit sink");
        }
        if let Err(e) = app.store.flush().await {
            tracing::error!(error = %e, "cannot flush the store");
            return ExitCode::FAILURE;
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand and every option or argument of `command` and below that has no help
    /// text, by its path (`gatehouse admin user create --email`).
    fn without_help(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                let name = arg
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .unwrap_or_else(|| format!("<{}>", arg.get_id()));
                missing.push(format!("{path} {name}"));
            }
        }
        for sub in command.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            without_help(sub, &sub_path, missing);
        }
    }

    #[test]
    fn every_subcommand_and_option_has_help_text() {
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        without_help(&command, "gatehouse", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
