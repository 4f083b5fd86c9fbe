//! The `heimdall` binary: parses the command line, sets up logging, loads the config and hands
//! over to the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use heimdall::cli::{Cli, Command, ServeArgs};
use heimdall::config::{Config, LogFormat, Overrides};
use heimdall::db::Db;
use heimdall::App;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heimdall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Openapi) => {
                let doc = heimdall::http::openapi()
                    .to_pretty_json()
                    .map_err(|e| e.to_string())?;
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{doc}") {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
                    _ => Ok(()),
                }
            }
            Some(Command::Migrate(args)) => {
                let config = load(args.config.as_deref(), &args.overrides())?;
                init_logs(&config);
                let db = Db::connect(&config.database_url)
                    .await
                    .map_err(|e| e.to_string())?;
                db.migrate().await.map_err(|e| e.to_string())?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Some(Command::Serve(args)) => serve(args).await,
            None => serve(cli.serve).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("heimdall: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // Signals are caught from here on: one during start-up stops the service once it is up.
    let shutdown = heimdall::app::shutdown_signal();
    let config = load(args.config.as_deref(), &args.overrides())?;
    init_logs(&config);
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    app.run(shutdown).await.map_err(|e| e.to_string())
}

fn load(file: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, String> {
    Config::load(file, std::env::vars(), overrides).map_err(|e| e.to_string())
}

fn init_logs(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
