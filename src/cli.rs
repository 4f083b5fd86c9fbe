//! The command line: `heimdall serve | migrate | openapi`, with `serve` the default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "heimdall",
    version,
    about = "Governance service for LLM API gateways"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve`'s flags, for running with no subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(MigrateArgs),
    /// Print the OpenAPI document and exit.
    Openapi,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "HEIMDALL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, env = "HEIMDALL_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// sqlite://FILE or postgres://USER@HOST/DB.
    #[arg(long, env = "HEIMDALL_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct MigrateArgs {
    /// TOML config file (for its database_url).
    #[arg(long, env = "HEIMDALL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// sqlite://FILE or postgres://USER@HOST/DB.
    #[arg(long, env = "HEIMDALL_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            database_url: self.database_url.clone(),
        }
    }
}

impl MigrateArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: None,
            database_url: self.database_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["heimdall"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.serve.listen.is_none() || std::env::var("HEIMDALL_LISTEN").is_ok());
    }

    #[test]
    fn subcommands_take_their_flags() {
        let cli = Cli::try_parse_from(["heimdall", "serve", "--listen", "127.0.0.1:0"]).unwrap();
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(args.listen.as_deref(), Some("127.0.0.1:0")),
            other => panic!("expected serve, got {other:?}"),
        }
        let cli = Cli::try_parse_from(["heimdall", "migrate", "--database-url", "sqlite://x.db"])
            .unwrap();
        assert!(
            matches!(cli.command, Some(Command::Migrate(a)) if a.database_url.as_deref() == Some("sqlite://x.db"))
        );
        assert!(matches!(
            Cli::try_parse_from(["heimdall", "openapi"])
                .unwrap()
                .command,
            Some(Command::Openapi)
        ));
        assert!(Cli::try_parse_from(["heimdall", "migrate", "--listen", "x"]).is_err());
    }
}
