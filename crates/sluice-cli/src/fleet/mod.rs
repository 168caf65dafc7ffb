//! Pipelines on a fleet of workers, run by Temporal (feature `temporal`; docs/fleet.md).
//!
//! `sluice worker` polls a task queue and runs whatever pipelines Temporal gives it;
//! `sluice deploy` starts one long-running workflow per pipeline; `sluice undeploy` cancels it
//! (the pipeline drains and saves); `sluice fleet pause|resume|rewind|status` signal and query
//! the workflows. The workers share one config file and one Postgres checkpoint store.

mod workflow;

use std::{process::ExitCode, str::FromStr as _, sync::Arc, time::Duration};

use anyhow::Context as _;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, Url, WorkflowCancelOptions,
    WorkflowDescribeOptions, WorkflowExecutionStatus, WorkflowGetResultOptions,
    WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowQueryOptions, WorkflowSignalOptions,
    WorkflowStartOptions, errors::WorkflowStartError,
};
use temporalio_sdk::{
    Runtime, Worker, WorkerOptions,
    runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder},
};
use tokio_util::sync::CancellationToken;

use self::workflow::{FleetActivities, FleetInput, FleetStatus, PipelineWorkflow, Rewind};
use crate::{
    cli::{DeployArgs, FleetCommand, TemporalArgs, UndeployArgs, WorkerArgs},
    commands::checkpoints::{OperatorStore, parse_position},
    config::{Databases, SinkSpec},
};

/// The workflow id of a pipeline: one per pipeline per namespace, which makes deploy idempotent.
fn workflow_id(pipeline: &str) -> String {
    format!("sluice/{pipeline}")
}

/// A client of the namespace of `args`.
async fn connect(args: &TemporalArgs) -> anyhow::Result<Client> {
    let address = if args.address.contains("://") {
        args.address.clone()
    } else {
        format!("http://{}", args.address)
    };
    let url = Url::from_str(&address).with_context(|| format!("--temporal {address}"))?;
    let connection = Connection::connect(
        ConnectionOptions::new(url)
            .identity(sluice::default_holder())
            .build(),
    )
    .await
    .with_context(|| format!("connecting to Temporal at {address}"))?;
    Ok(Client::new(
        connection,
        ClientOptions::new(args.namespace.clone()).build(),
    )?)
}

/// `sluice worker`: runs the fleet's workflows and pipelines until SIGTERM/SIGINT, then stops
/// polling, drains its pipelines (each saves what it wrote) and exits; Temporal hands them to
/// the other workers.
pub(crate) async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(args.pipelines.load()?);
    if config.store_url.is_none() {
        tracing::warn!(
            "the config's store is a local SQLite file: workers on other machines will not see its cursors or leases; use [store] kind = \"postgres\""
        );
    }
    for (name, sink) in &config.sinks {
        if matches!(sink, SinkSpec::Sqlite { .. }) && config.store_url.is_some() {
            tracing::warn!(
                sink = %name,
                "a sqlite sink writes to a file on whichever worker runs the pipeline: its rows end up spread over the machines"
            );
        }
    }
    let client = connect(&args.temporal).await?;
    let runtime = Runtime::from_current_tokio(Default::default())
        .map_err(|e| anyhow::anyhow!("temporal runtime: {e}"))?;
    let shutdown = CancellationToken::new();
    let store = Arc::new(OperatorStore::lazy(&config)?);
    let (flags, paused) = tokio::sync::watch::channel(None);
    tokio::spawn(workflow::follow_pauses(
        store.clone(),
        flags,
        shutdown.clone(),
    ));
    let (touch, contact) = tokio::sync::watch::channel(tokio::time::Instant::now());
    tokio::spawn(workflow::follow_temporal(
        client.clone(),
        touch,
        shutdown.clone(),
    ));
    let running = crate::serve::Registry::default();
    let health = sluice::Health::default();
    if let Some(addr) = args.metrics_addr {
        let prometheus = crate::serve::install_recorder()?;
        let (running, health, token) = (running.clone(), health.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::serve::serve(addr, prometheus, health, running, token).await
            {
                tracing::error!(%addr, error = %format!("{error:#}"), "metrics endpoint failed");
            }
        });
    }
    let activities = FleetActivities {
        store,
        paused,
        config,
        databases: Arc::new(Databases::default()),
        shutdown: shutdown.clone(),
        running,
        health,
        contact,
    };
    let slots = |n: usize| FixedSizeSlotSupplier::new(n.max(1));
    let options = WorkerOptions::new(args.temporal.task_queue.clone())
        .register_workflow::<PipelineWorkflow>()?
        .register_activities(activities)
        // Each running pipeline holds one activity slot for its whole life.
        .tuner(
            TunerHolder::builder()
                .workflow_task_slot_supplier(slots(100))
                .activity_task_slot_supplier(slots(args.max_pipelines))
                .local_activity_task_slot_supplier(slots(100))
                .nexus_task_slot_supplier(slots(1))
                .build(),
        )
        .graceful_shutdown_period(Duration::from_secs(30))
        .build();
    let mut worker = Worker::new(&runtime, client, options)
        .map_err(|e| anyhow::anyhow!("temporal worker: {e}"))?;
    let stop_polling = worker.shutdown_handle();
    let on_signal = CancellationToken::new();
    crate::commands::run::spawn_signal_handler(on_signal.clone());
    tokio::spawn(async move {
        on_signal.cancelled().await;
        stop_polling();
        shutdown.cancel();
    });
    tracing::info!(
        task_queue = %args.temporal.task_queue,
        namespace = %args.temporal.namespace,
        max_pipelines = args.max_pipelines,
        "worker polling"
    );
    worker
        .run()
        .await
        .map_err(|e| anyhow::anyhow!("temporal worker: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice deploy`: one workflow per pipeline; a pipeline already deployed is left as it is.
pub(crate) async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let config = args.file.load()?;
    let ids = config.select(&args.pipelines)?;
    let client = connect(&args.temporal).await?;
    for id in ids {
        let input = FleetInput {
            pipeline: id.clone(),
            paused: args.paused,
            // Without --paused, the store's flag stays as `sluice pause|resume` left it.
            pause_pending: args.paused,
            heartbeat_timeout_s: args.heartbeat_timeout_s,
            history_limit: args.history_limit,
            generation: 0,
            rewinds: Vec::new(),
        };
        let options = WorkflowStartOptions::new(args.temporal.task_queue.clone(), workflow_id(&id))
            .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
            .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
            .build();
        match client
            .start_workflow(PipelineWorkflow::run, input, options)
            .await
        {
            Ok(handle) => println!(
                "{id}: deployed (workflow {}, run {})",
                workflow_id(&id),
                handle.run_id().unwrap_or_default()
            ),
            Err(WorkflowStartError::AlreadyStarted { .. }) => {
                println!("{id}: already deployed (workflow {})", workflow_id(&id));
            }
            Err(error) => return Err(error).with_context(|| format!("deploying {id}")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice undeploy`: cancels the workflows; each pipeline drains and saves, then its workflow
/// ends. With `--wait`, returns when it has.
pub(crate) async fn undeploy(args: UndeployArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.temporal).await?;
    for id in &args.pipelines {
        let handle = client.get_workflow_handle::<PipelineWorkflow>(workflow_id(id));
        handle
            .cancel(
                WorkflowCancelOptions::builder()
                    .reason("sluice undeploy".to_owned())
                    .build(),
            )
            .await
            .with_context(|| format!("undeploying {id}"))?;
        if args.wait {
            let ended = handle.get_result(WorkflowGetResultOptions::default()).await;
            println!("{id}: {}", ended.unwrap_or_else(|e| format!("ended: {e}")));
        } else {
            println!("{id}: undeploy requested (it drains and saves, then ends)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice fleet pause|resume|rewind|status`.
pub(crate) async fn fleet(command: FleetCommand) -> anyhow::Result<ExitCode> {
    let pause = matches!(command, FleetCommand::Pause(_));
    match command {
        FleetCommand::Pause(args) | FleetCommand::Resume(args) => {
            let client = connect(&args.temporal).await?;
            let handle =
                client.get_workflow_handle::<PipelineWorkflow>(workflow_id(&args.pipeline));
            let options = WorkflowSignalOptions::default();
            let sent = if pause {
                handle.signal(PipelineWorkflow::pause, (), options).await
            } else {
                handle.signal(PipelineWorkflow::resume, (), options).await
            };
            let what = if pause { "pause" } else { "resume" };
            sent.with_context(|| format!("{what} {}", args.pipeline))?;
            println!("{}: {what} signalled", args.pipeline);
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Rewind(args) => {
            let rewind = Rewind {
                partition: args.partition.clone(),
                position: parse_position(&args.position)?,
            };
            let client = connect(&args.target.temporal).await?;
            client
                .get_workflow_handle::<PipelineWorkflow>(workflow_id(&args.target.pipeline))
                .signal(
                    PipelineWorkflow::rewind,
                    rewind,
                    WorkflowSignalOptions::default(),
                )
                .await
                .with_context(|| format!("rewinding {}", args.target.pipeline))?;
            println!(
                "{} {}: rewind to {} signalled (the run stops, the cursor is set, the run starts again)",
                args.target.pipeline, args.partition, args.position
            );
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Status(args) => {
            let config = args.file.load()?;
            let ids = config.select(&args.pipelines)?;
            let client = connect(&args.temporal).await?;
            let store = OperatorStore::of(&config).await?;
            let mut drawn = 0usize;
            loop {
                let mut lines = vec![format!(
                    "{:<28} {:<11} {:<9} {:>5} {:<26} cursors",
                    "pipeline", "workflow", "state", "epoch", "holder"
                )];
                for id in &ids {
                    lines.push(status_line(&client, &store, id).await?);
                }
                crate::commands::status::draw(&lines, args.watch, &mut drawn);
                if !args.watch {
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(args.interval_ms.max(100))) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
    }
}

/// The run activity's last heartbeat (its details and how long ago), from a description.
fn last_heartbeat(
    description: &temporalio_client::WorkflowExecutionDescription,
) -> Option<(workflow::Progress, Option<f64>)> {
    let activity = description.raw_description.pending_activities.first()?;
    let payload = activity.heartbeat_details.as_ref()?.payloads.first()?;
    let progress = serde_json::from_slice(&payload.data).ok()?;
    let age = activity.last_heartbeat_time.as_ref().and_then(|at| {
        let at = std::time::UNIX_EPOCH.checked_add(Duration::new(
            u64::try_from(at.seconds).ok()?,
            u32::try_from(at.nanos).ok()?,
        ))?;
        Some(
            std::time::SystemTime::now()
                .duration_since(at)
                .ok()?
                .as_secs_f64(),
        )
    });
    Some((progress, age))
}

/// The run activity's retries: its attempt once past the first with the last failure, and
/// whether it is waiting for that attempt (backing off) rather than running it.
fn retries(
    description: &temporalio_client::WorkflowExecutionDescription,
) -> Option<(bool, String)> {
    let activity = description.raw_description.pending_activities.first()?;
    if activity.attempt <= 1 {
        return None;
    }
    let waiting = activity.state().as_str_name() == "PENDING_ACTIVITY_STATE_SCHEDULED";
    let failure = activity
        .last_failure
        .as_ref()
        .map_or("-", |f| f.message.as_str());
    Some((
        waiting,
        format!("attempt {}; last failure: {failure}", activity.attempt),
    ))
}

/// An error and its causes on one line, each said once.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        cause = error.source();
    }
    said
}

/// One pipeline's line: the workflow's status and query answer, the store's holder, epoch and
/// cursors.
async fn status_line(client: &Client, store: &OperatorStore, id: &str) -> anyhow::Result<String> {
    let handle = client.get_workflow_handle::<PipelineWorkflow>(workflow_id(id));
    let (workflow, answer, beat, retried, failure) =
        match handle.describe(WorkflowDescribeOptions::default()).await {
            Err(_) => ("-".to_owned(), None, None, None, None),
            Ok(description) => {
                let beat = last_heartbeat(&description);
                let retried = retries(&description);
                let status = description.status();
                let answer = if status == WorkflowExecutionStatus::Running {
                    handle
                        .query(
                            PipelineWorkflow::status,
                            (),
                            WorkflowQueryOptions::default(),
                        )
                        .await
                        .ok()
                } else {
                    None
                };
                // A failed workflow's reason: the fatal pipeline error that ended it.
                let failure = if status == WorkflowExecutionStatus::Failed {
                    handle
                        .get_result(WorkflowGetResultOptions::default())
                        .await
                        .err()
                        .map(|error| error_chain(&error))
                } else {
                    None
                };
                (
                    format!("{status:?}").to_lowercase(),
                    answer,
                    beat,
                    retried,
                    failure,
                )
            }
        };
    let answer: Option<FleetStatus> = answer;
    let state = answer.as_ref().map_or("-", |a| a.state.as_str()).to_owned();
    // Running or paused is the store's flag (signals and `sluice pause|resume` both set it),
    // not the workflow's memory of its last signal.
    let state = match state.as_str() {
        "running" | "paused" if store.paused().await?.contains(id) => "paused".to_owned(),
        // The run failed and waits out its retry backoff.
        "running" if retried.as_ref().is_some_and(|(waiting, _)| *waiting) => {
            "backing_off".to_owned()
        }
        "running" | "paused" => "running".to_owned(),
        _ => state,
    };
    let (holder, epoch) = store
        .lease(id)
        .await?
        .map_or(("-".to_owned(), "-".to_owned()), |(h, t)| {
            (h, t.to_string())
        });
    let cursors = store
        .cursors(id)
        .await?
        .into_iter()
        .map(|(partition, position)| format!("{partition}={position}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut line = format!("{id:<28} {workflow:<11} {state:<9} {epoch:>5} {holder:<26} {cursors}");
    if let Some(answer) = answer {
        line.push_str(&format!(
            " gen={} runs={} rewinds={}",
            answer.generation, answer.runs, answer.rewinds
        ));
        if let Some((progress, age)) = beat {
            let lag = progress
                .lag
                .iter()
                .map(|(partition, behind, unit)| format!(" {partition} {behind} {unit}"))
                .collect::<String>();
            let age = age.map_or_else(String::new, |age| format!("{age:.1} s ago, "));
            line.push_str(&format!(
                "\n    heartbeat: {age}{} written this attempt{}",
                progress.records_written,
                if lag.is_empty() {
                    String::new()
                } else {
                    format!(", behind:{lag}")
                }
            ));
        }
        if let Some((_, retried)) = retried {
            line.push_str(&format!("\n    {retried}"));
        }
        if let Some(error) = answer.last_error {
            line.push_str(&format!("\n    last control refused: {error}"));
        }
    }
    if let Some(failure) = failure {
        line.push_str(&format!("\n    {failure}"));
    }
    Ok(line)
}
