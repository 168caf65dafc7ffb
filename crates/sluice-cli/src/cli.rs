//! Defines the command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Durable connector pipelines: feeds, change streams and files into SQLite, ClickHouse and
/// Kafka, with cursors saved only after the writes.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run pipelines from a config file until they finish or SIGTERM/SIGINT (then drain, exit 0).
    Run(RunArgs),
    /// Check a config file: syntax, references, schemas, jq programs.
    Validate(ConfigArgs),
    /// Show or reset saved cursors.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The pipelines file (TOML).
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// The SQLite file used when the config names none.
    #[arg(long, env = "SLUICE_DB", default_value = "sluice.db")]
    pub(crate) db: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Pipelines to run (default: all in the file).
    pub(crate) pipelines: Vec<String>,
    /// Serve Prometheus metrics on /metrics and health on /health and /ready at this address.
    #[arg(long, env = "SLUICE_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CheckpointsCommand {
    /// Print the saved cursors of a pipeline.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// The pipeline id.
        pipeline: String,
    },
    /// Delete the saved cursors of a pipeline: its next run starts from the beginning.
    Reset {
        #[command(flatten)]
        config: ConfigArgs,
        /// The pipeline id.
        pipeline: String,
    },
}
