use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatehouse::app::App;
use gatehouse::config;
use gatehouse::server::{Server, reload, shutdown};

/// An authentication sidecar: TLS, MFA/OTP APIs and trusted identity headers for the app behind it.
#[derive(Parser)]
#[command(name = "gatehouse", version)]
struct Cli {
    /// Configuration file (TOML). Defaults to config/gatehouse.toml when it exists.
    #[arg(long, global = true, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
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
    /// Serve the Kubernetes mutating admission webhook that injects the gatehouse sidecar.
    InjectWebhook(InjectArgs),
    /// Copy a sled store into an empty PostgreSQL database (moving from one replica to several).
    Migrate(MigrateArgs),
    /// Ask the admin listener's `/readyz` or `/healthz` (a Kubernetes exec probe): exit 0 if ready.
    Probe(gatehouse::probe::ProbeArgs),
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
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Admin(args) => admin(*args),
        Command::Probe(args) => probe(args),
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
        Command::CheckConfig => match load(cli.config.as_deref()) {
            Ok(config) => match config.to_toml() {
                Ok(text) => {
                    println!("# configuration is valid\n{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot print the configuration: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Command::Serve => match load(cli.config.as_deref()) {
            Ok(config) => serve(config, config::file_path(cli.config.as_deref())),
            Err(code) => code,
        },
    }
}

/// The configuration, or exit code 2 after printing every problem.
fn load(path: Option<&std::path::Path>) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
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

fn serve(config: config::Config, config_file: std::path::PathBuf) -> ExitCode {
    gatehouse::telemetry::init(&config.log);
    let runtime = match server_runtime(config.server.worker_threads) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let app = match App::open(config).await {
            Ok(app) => std::sync::Arc::new(app),
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::bind(&app).await {
            Ok(server) => server,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let reloads = match reload::watch(
            app.clone(),
            server.reloadable(),
            config_file,
            reload::POLL_INTERVAL,
        ) {
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
        if let Err(e) = app.store.flush().await {
            tracing::error!(error = %e, "cannot flush the store");
            return ExitCode::FAILURE;
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
