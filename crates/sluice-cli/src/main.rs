//! The `sluice` binary: parses the command line, builds pipelines from configuration, runs them
//! under a supervisor, and maps the outcome to an exit code (0: finished or stopped cleanly;
//! 1: a pipeline failed; 2: bad configuration or usage).

mod cli;
mod config;
mod demo;
mod registry;
mod serve;

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Parser;
use sluice::{BackoffPolicy, PipelineError, PipelineExit, PipelineStats, Supervisor};
use sluice_connectors::{coinbase::CoinbaseConfig, supabase::SupabaseConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{CheckpointArgs, CheckpointsCommand, Cli, Command, ConfigArgs, RunArgs, SimCommand},
    config::{Config, Databases},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own progress; only errors go to the log unless RUST_LOG says more.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "info"
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
        Command::Run(args) => run(args).await,
        Command::Validate(args) => {
            let config = load(&args)?;
            let ids: Vec<_> = config.pipeline_ids().collect();
            println!(
                "{}: ok ({} pipeline(s): {})",
                args.config.display(),
                ids.len(),
                ids.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoints(CheckpointsCommand::Show(args)) => {
            let db = store_of(&args)?;
            let conn = db.lock();
            let pipeline = &args.pipeline;
            let cursors = sluice_stores::sqlite::load_checkpoints(&conn, pipeline)?;
            if let Some(holder) = sluice_stores::sqlite::live_holder(&conn, pipeline)? {
                println!("# running: {holder}");
            }
            if cursors.is_empty() {
                println!("# {pipeline}: no saved cursor (the next run starts from the beginning)");
            }
            for (partition, position) in cursors {
                println!("{partition}\t{position}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoints(CheckpointsCommand::Reset(args)) => {
            let db = store_of(&args)?;
            let conn = db.lock();
            let pipeline = &args.pipeline;
            if let Some(holder) = sluice_stores::sqlite::live_holder(&conn, pipeline)? {
                anyhow::bail!(
                    "pipeline {pipeline} is running ({holder}); stop it before resetting its cursors"
                );
            }
            let deleted = sluice_stores::sqlite::reset_checkpoints(&conn, pipeline)?;
            println!("{pipeline}: {deleted} cursor(s) deleted");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(SimCommand::Coinbase(args)) => demo::sim(args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::Codegen(args) => codegen(args).await,
    }
}

/// The store of a pipeline: the config's, or --db.
fn store_of(args: &CheckpointArgs) -> anyhow::Result<sluice_stores::sqlite::SqliteDb> {
    let path = match &args.config {
        Some(config) => {
            let config = Config::load(config, &args.db)?;
            config.select(std::slice::from_ref(&args.pipeline))?;
            config.store_path.clone()
        }
        None => args.db.clone(),
    };
    Ok(sluice_stores::sqlite::SqliteDb::open(&path)?)
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    Config::load(&args.config, &args.db)
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (config, ids) = match &args.config {
        Some(path) => {
            if args.coinbase.products.is_some()
                || args.coinbase.ws_url.is_some()
                || args.coinbase.rest_url.is_some()
                || args.sink.is_some()
            {
                anyhow::bail!(
                    "--products, --ws-url, --rest-url and --sink are for `sluice run coinbase`; with --config set them in the file"
                );
            }
            let config = Config::load(path, &args.db)?;
            let ids = config.select(&args.targets)?;
            (config, ids)
        }
        None => match args.targets.as_slice() {
            [name] if name == "coinbase" => {
                let defaults = CoinbaseConfig::default();
                let source = CoinbaseConfig {
                    products: args
                        .coinbase
                        .products
                        .as_deref()
                        .map(CoinbaseConfig::parse_products)
                        .unwrap_or(defaults.products.clone()),
                    ws_url: args
                        .coinbase
                        .ws_url
                        .clone()
                        .unwrap_or(defaults.ws_url.clone()),
                    rest_url: args
                        .coinbase
                        .rest_url
                        .clone()
                        .unwrap_or(defaults.rest_url.clone()),
                    ..defaults
                };
                let config = Config::builtin_coinbase(source, &args.db, args.sink.as_deref())?;
                (
                    config,
                    vec![sluice_connectors::coinbase::PIPELINE_ID.to_owned()],
                )
            }
            [name] if name == "supabase" => {
                let source =
                    SupabaseConfig::from_env().map_err(|e| anyhow::anyhow!("supabase: {e}"))?;
                let config = Config::builtin_supabase(source, &args.db, args.sink.as_deref())?;
                (
                    config,
                    vec![sluice_connectors::supabase::PIPELINE_ID.to_owned()],
                )
            }
            [] => anyhow::bail!(
                "nothing to run: `sluice run coinbase`, `sluice run supabase`, or `sluice run --config FILE [PIPELINE…]`"
            ),
            other => anyhow::bail!(
                "unknown built-in pipeline {:?} (built-in: coinbase, supabase); for configured pipelines pass --config FILE",
                other.join(" ")
            ),
        },
    };
    let config = Arc::new(config);
    let databases = Arc::new(Databases::default());
    // Build once up front so that configuration errors (unopenable files) fail fast with exit 2.
    for id in &ids {
        config
            .build(id, &databases)
            .with_context(|| format!("pipeline {id}"))?;
    }
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let mut supervisor = Supervisor::new(shutdown.clone(), BackoffPolicy::default());
    let metrics_addr = args.metrics_addr.or(config.metrics_addr);
    let prometheus = metrics_addr
        .map(|_| serve::install_recorder())
        .transpose()?;
    let mut live_stats = Vec::new();
    for id in &ids {
        let stats = Arc::new(PipelineStats::new(id));
        live_stats.push(stats.clone());
        let (config, databases, id) = (config.clone(), databases.clone(), id.clone());
        supervisor.spawn(id.clone(), move |token| {
            let built = config
                .build(&id, &databases)
                .map(|p| p.with_stats(stats.clone()));
            let id = id.clone();
            async move {
                match built {
                    Ok(pipeline) => pipeline.run(token).await,
                    Err(error) => Err(PipelineError::Config {
                        pipeline: id,
                        message: format!("{error:#}"),
                    }),
                }
            }
        });
    }
    if let (Some(addr), Some(prometheus)) = (metrics_addr, prometheus) {
        let (health, token) = (supervisor.health(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = serve::serve(addr, prometheus, health, live_stats, token).await {
                tracing::error!(%addr, error = %format!("{error:#}"), "metrics endpoint failed");
            }
        });
    }
    let mut failed = false;
    for (id, outcome) in supervisor.wait().await {
        match outcome {
            Ok(PipelineExit::Completed) => tracing::info!(pipeline = %id, "completed"),
            Ok(PipelineExit::Stopped) => tracing::info!(pipeline = %id, "stopped"),
            Err(error) => {
                failed = true;
                eprintln!("error: {}", sluice::report(&error));
            }
        }
    }
    shutdown.cancel();
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping sources, draining"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping sources, draining"),
        }
        shutdown.cancel();
    });
}

/// `sluice codegen`: introspect, generate, write.
async fn codegen(args: cli::CodegenArgs) -> anyhow::Result<ExitCode> {
    use sluice_connectors::supabase::codegen;
    let (client, connection) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("codegen: cannot connect: {e}"))?;
    tokio::spawn(connection);
    let tables = codegen::introspect(&client, &args.schema, &args.tables)
        .await
        .map_err(|e| anyhow::anyhow!("codegen: {e}"))?;
    let source = codegen::generate(&tables);
    match &args.out {
        Some(path) => std::fs::write(path, source)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{source}"),
    }
    Ok(ExitCode::SUCCESS)
}
