//! `sluice run`: the built-in pipelines (`coinbase`, `supabase`) or those of a config file,
//! under a supervisor, with the opt-in endpoints; SIGTERM/SIGINT drain.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use sluice::{BackoffPolicy, PipelineError, PipelineExit, PipelineStats, Supervisor};
use sluice_connectors::{coinbase::CoinbaseConfig, supabase::SupabaseConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::RunArgs,
    config::{Config, Databases},
    serve,
};

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
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
    let config = Arc::new(config.with_store(args.store.url.as_deref())?);
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
    let mut watched = Vec::new();
    let mut pauses = Vec::new();
    // Read once before the first session, so a pipeline paused in the store never starts one.
    // A store that cannot be read yet holds every pipeline paused until the first read (the
    // pipelines would wait for their store anyway).
    let controls = crate::commands::checkpoints::OperatorStore::lazy(&config)?;
    let paused_now = match controls.paused().await {
        Ok(paused) => Some(paused),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "pause flags not readable yet; pipelines wait for them");
            None
        }
    };
    for id in &ids {
        let stats = Arc::new(PipelineStats::new(id));
        watched.push(serve::Watched {
            id: id.clone(),
            stats: stats.clone(),
            max_cursor_age: config.pipelines.get(id).and_then(|p| p.max_cursor_age),
        });
        let (pause, paused) =
            tokio::sync::watch::channel(paused_now.as_ref().is_none_or(|p| p.contains(id)));
        pauses.push((id.clone(), pause));
        let (config, databases, id) = (config.clone(), databases.clone(), id.clone());
        supervisor.spawn(id.clone(), move |token| {
            let built = config
                .build(&id, &databases)
                .map(|p| p.with_stats(stats.clone()).pausable(paused.clone()));
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
    tokio::spawn(follow_pauses(controls, pauses, shutdown.clone()));
    if let (Some(addr), Some(prometheus)) = (metrics_addr, prometheus) {
        let (health, token) = (supervisor.health(), shutdown.clone());
        tokio::spawn(async move {
            let watched = Arc::new(std::sync::Mutex::new(watched));
            if let Err(error) = serve::serve(addr, prometheus, health, watched, token).await {
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

/// Applies `sluice pause|resume` to the running pipelines: polls the store's pause flags once a
/// second (a paused pipeline starts paused too: the flags were read before it started).
async fn follow_pauses(
    store: crate::commands::checkpoints::OperatorStore,
    pauses: Vec<(String, tokio::sync::watch::Sender<bool>)>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match store.paused().await {
            Ok(paused) => {
                for (id, pause) in &pauses {
                    pause.send_if_modified(|p| {
                        let now = paused.contains(id);
                        std::mem::replace(p, now) != now
                    });
                }
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "reading pause flags failed");
            }
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
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
