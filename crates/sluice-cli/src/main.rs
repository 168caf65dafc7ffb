//! The `sluice` binary: parses the command line, builds pipelines from configuration, runs them
//! under a supervisor, and maps the outcome to an exit code (0: finished or stopped cleanly;
//! 1: a pipeline failed; 2: bad configuration or usage).

mod cli;
mod commands;
mod config;
#[cfg(feature = "temporal")]
mod fleet;
mod registry;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{CheckpointsCommand, Cli, Command, SimCommand},
    commands::{audit, checkpoints, codegen, demo, run, sim, status, validate},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own progress; only errors go to the log unless RUST_LOG says more.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        // Postgres's notices (a schema that already exists) are not news.
        "info,tokio_postgres=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run::run(args).await,
        Command::Validate(args) => validate::validate(&args),
        Command::Checkpoints(CheckpointsCommand::Show(args)) => checkpoints::show(&args).await,
        Command::Checkpoints(CheckpointsCommand::Reset(args)) => checkpoints::reset(&args).await,
        Command::Checkpoints(CheckpointsCommand::Set(args)) => checkpoints::set(&args).await,
        Command::Pause(args) => checkpoints::pause(&args, true).await,
        Command::Resume(args) => checkpoints::pause(&args, false).await,
        Command::Status(args) => status::status(args).await,
        Command::Sim(SimCommand::Coinbase(args)) => sim::sim(args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::Codegen(args) => codegen::codegen(args).await,
        Command::Audit(args) => audit::audit(args).await,
        #[cfg(feature = "temporal")]
        Command::Worker(args) => fleet::worker(args).await,
        #[cfg(feature = "temporal")]
        Command::Deploy(args) => fleet::deploy(args).await,
        #[cfg(feature = "temporal")]
        Command::Undeploy(args) => fleet::undeploy(args).await,
        #[cfg(feature = "temporal")]
        Command::Fleet(command) => fleet::fleet(command).await,
    }
}
