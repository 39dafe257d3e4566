use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatehouse::app::App;
use gatehouse::config;
use gatehouse::server::{Server, shutdown};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => match config.to_toml() {
            Ok(text) => {
                println!("# configuration is valid\n{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => serve(config),
    }
}

fn serve(config: config::Config) -> ExitCode {
    gatehouse::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let app = match App::open(config).await {
            Ok(app) => app,
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
        server.run(shutdown::signal()).await;
        if let Err(e) = app.store.flush().await {
            tracing::error!(error = %e, "cannot flush the store");
            return ExitCode::FAILURE;
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
