//! The workflow and activities of a pipeline on the fleet.
//!
//! One long-running workflow per pipeline (id `sluice/PIPELINE`) runs the pipeline as one
//! heartbeating activity on whichever worker polls it. The workflow owns nothing durable: the
//! cursors and the lease live in the checkpoint store, and every write is fenced by the lease
//! token there. Temporal decides where the pipeline runs and restarts it elsewhere when a worker
//! stops heartbeating; the store decides who may write.
//!
//! Workflow code is replayed: it must be deterministic (no clock, no I/O, no randomness outside
//! the context). Everything that touches the world is an activity.

use std::{
    collections::{BTreeSet, VecDeque},
    pin::pin,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sluice::{ErrorClass, PipelineError, PipelineExit, PipelineStats, Position};
use temporalio_common::{RetryPolicy, protos::temporal::api::failure::v1::failure::FailureInfo};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, ContinueAsNewOptions,
    LocalActivityOptions, SyncWorkflowContext, WorkflowContext, WorkflowContextView,
    WorkflowResult, WorkflowTermination,
    activities::{ActivityContext, ActivityError},
};
use temporalio_workflow::CancellableFuture as _;
use tokio_util::sync::CancellationToken;

use crate::{
    commands::checkpoints::OperatorStore,
    config::{Config, Databases},
};

/// The error type of a fatal pipeline error: listed as non-retryable in the run activity's retry
/// policy, so Temporal stops retrying and the workflow fails with the message.
pub(crate) const FATAL: &str = "sluice.fatal";

/// What `sluice deploy` starts a workflow with (and what continue-as-new carries over).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct FleetInput {
    /// The pipeline id, as in the workers' config file.
    pub(crate) pipeline: String,
    /// Paused by the last signal (carried across continue-as-new).
    pub(crate) paused: bool,
    /// Whether `paused` is still to be written to the store's flag: at deploy, only with
    /// `--paused`; across continue-as-new, a signal not applied yet. The flag is otherwise left
    /// as it is, so a `sluice pause|resume` made in the store holds.
    #[serde(default)]
    pub(crate) pause_pending: bool,
    /// The run activity's heartbeat timeout: how long a silent worker keeps the pipeline before
    /// Temporal gives it to another.
    pub(crate) heartbeat_timeout_s: u64,
    /// Continue as new once the history holds this many events (bounded history).
    pub(crate) history_limit: u32,
    /// Runs of earlier generations (for status).
    pub(crate) generation: u32,
    /// Rewinds signalled but not applied yet (carried across continue-as-new).
    #[serde(default)]
    pub(crate) rewinds: Vec<Rewind>,
}

/// A `rewind` signal: set one cursor of the pipeline (backwards or forwards).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Rewind {
    /// The partition.
    pub(crate) partition: String,
    /// The new position, as `sluice checkpoints set` takes it.
    pub(crate) position: Position,
}

/// The `status` query's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct FleetStatus {
    /// The pipeline id.
    pub(crate) pipeline: String,
    /// running, paused, rewinding, completed.
    pub(crate) state: String,
    /// Whether an operator paused it (the store flag follows within a second).
    pub(crate) paused: bool,
    /// Run activities started by this workflow run (Temporal's retries of one are not counted).
    pub(crate) runs: u32,
    /// Continue-as-new generation.
    pub(crate) generation: u32,
    /// Rewinds applied.
    pub(crate) rewinds: u32,
    /// The last control that failed (a rewind to another kind of position, say).
    pub(crate) last_error: Option<String>,
}

/// What the run activity heartbeats: the durable cursor and the lease epoch, visible in
/// Temporal's UI and handed to the next attempt.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The lease holder (`host:pid` of the worker).
    pub(crate) holder: String,
    /// The lease token: the fencing epoch every save checks.
    pub(crate) epoch: u64,
    /// Partition → durable position (JSON text).
    pub(crate) cursors: Vec<(String, String)>,
    /// Partition → how far its durable cursor is behind the provider, and in what unit, where
    /// the source knows it.
    #[serde(default)]
    pub(crate) lag: Vec<(String, u64, String)>,
    /// Records acknowledged by destinations in this attempt.
    pub(crate) records_written: u64,
    /// Paused by an operator.
    pub(crate) paused: bool,
}

/// How a run activity ended without an error.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    /// The source finished (a file read to its end) and everything was written and saved.
    Completed,
}

/// The workflow's state: signals change it, the run loop and the query read it.
#[workflow]
#[derive(Default)]
pub(crate) struct PipelineWorkflow {
    pipeline: String,
    /// What the last signal asked for.
    paused: bool,
    /// A signal (or `deploy --paused`) not yet written to the store's flag. The flag itself
    /// is the one control: `sluice pause|resume` set it without Temporal, and a new run of
    /// this workflow (a deploy, a continue-as-new) must not write its own idea over it.
    pause_pending: bool,
    rewinds: VecDeque<Rewind>,
    /// Controls that failed in a row (the store down): the backoff before the next try.
    control_failures: u32,
    status: FleetStatus,
}

impl PipelineWorkflow {
    fn control_pending(&self) -> bool {
        !self.rewinds.is_empty() || self.pause_pending
    }
}

#[workflow_methods]
impl PipelineWorkflow {
    /// Runs the pipeline until it completes (a finite source), fails fatally, or the workflow is
    /// cancelled (`sluice undeploy`).
    #[run]
    pub(crate) async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: FleetInput,
    ) -> WorkflowResult<String> {
        ctx.state_mut(|s| {
            s.pipeline.clone_from(&input.pipeline);
            s.paused = input.paused;
            s.pause_pending = input.pause_pending;
            s.rewinds.extend(input.rewinds.iter().cloned());
            s.status.pipeline.clone_from(&input.pipeline);
            s.status.generation = input.generation;
        });
        loop {
            // No run is active here: continue as new when the history is long, apply the
            // controls (each failure waits out a backoff timer and comes back here, so the
            // history check bounds a long store outage too), then start a run.
            if history_full(ctx, &input) {
                return continue_as_new(ctx, &input);
            }
            if !apply_pause(ctx).await? || !apply_rewinds(ctx).await? {
                continue;
            }
            ctx.state_mut(|s| {
                s.status.state = if s.paused { "paused" } else { "running" }.into();
                s.status.runs += 1;
            });
            let run = ctx.execute_activity(
                FleetActivities::run_pipeline,
                input.pipeline.clone(),
                run_options(&input),
            );
            let mut run = pin!(run);
            // Serve controls while the pipeline runs: a pause is a store flag the run follows;
            // a rewind (or a history grown past its limit) stops the run first.
            let run_over = loop {
                let control = ctx.wait_condition(PipelineWorkflow::control_pending);
                let mut control = pin!(control);
                futures::select_biased! {
                    outcome = run.as_mut() => {
                        match outcome {
                            // Rewinds signalled as it completed are applied, and it runs again.
                            Ok(RunOutcome::Completed) if ctx.state(|s| !s.rewinds.is_empty()) => {
                                break true;
                            }
                            Ok(RunOutcome::Completed) => {
                                ctx.state_mut(|s| s.status.state = "completed".into());
                                return Ok(format!("pipeline {} completed", input.pipeline));
                            }
                            Err(ActivityExecutionError::Cancelled(_)) => {
                                // Only the workflow's own cancellation (undeploy) cancels a run
                                // this branch sees; a rewind awaits its cancelled run below.
                                return undeployed(ctx, &input);
                            }
                            Err(error) => return Err(error.into()),
                        }
                    }
                    cancelled = control.as_mut() => {
                        if cancelled.is_err() {
                            // Undeployed: the run was cancelled with the workflow; wait for it
                            // to drain and save.
                            let _ = run.as_mut().await;
                            return undeployed(ctx, &input);
                        }
                        if ctx.state(|s| !s.rewinds.is_empty()) || history_full(ctx, &input) {
                            break false;
                        }
                        // One try; a failure waits out its backoff and comes back here, where
                        // the history is checked again.
                        apply_pause(ctx).await?;
                        ctx.state_mut(|s| {
                            s.status.state = if s.paused { "paused" } else { "running" }.into();
                        });
                    }
                }
            };
            if run_over {
                continue;
            }
            // Stop the run cleanly (source stopped, drained, saved, lease released) and wait
            // for it: a rewind while it runs would be refused, and continuing as new with an
            // activity in flight would leave it orphaned. Whatever ends it now (cancelled, timed
            // out because its worker died, failed because that worker was shutting down), the
            // run is over: the store's lease, not this workflow, keeps a straggler from writing,
            // and the next run waits for that lease. Only a fatal error ends the workflow.
            ctx.state_mut(|s| s.status.state = "rewinding".into());
            run.cancel();
            match run.as_mut().await {
                Ok(RunOutcome::Completed) if !ctx.state(|s| !s.rewinds.is_empty()) => {
                    ctx.state_mut(|s| s.status.state = "completed".into());
                    return Ok(format!("pipeline {} completed", input.pipeline));
                }
                Err(error) if is_fatal(&error) => return Err(error.into()),
                Ok(RunOutcome::Completed) | Err(ActivityExecutionError::Cancelled(_)) => {}
                Err(error) => {
                    let message = format!("the stopped run ended so: {error}");
                    ctx.state_mut(|s| s.status.last_error = Some(message));
                }
            }
            if ctx.cancellation_token().is_cancelled() {
                return undeployed(ctx, &input);
            }
        }
    }

    /// Pause: the running pipeline stops its session, writes and saves what it read, keeps its
    /// lease; it stays paused across workers and restarts until resumed.
    #[signal]
    pub(crate) fn pause(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.paused = true;
        self.pause_pending = true;
    }

    /// Resume a paused pipeline: a new session from its saved cursors.
    #[signal]
    pub(crate) fn resume(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.paused = false;
        self.pause_pending = true;
    }

    /// Set one cursor safely while the pipeline runs: the run is stopped (drained, saved,
    /// released), the cursor set and recorded, the run started again from it.
    #[signal]
    pub(crate) fn rewind(&mut self, _ctx: &mut SyncWorkflowContext<Self>, rewind: Rewind) {
        self.rewinds.push_back(rewind);
    }

    /// The pipeline's state as this workflow sees it (the store holds cursors and lease).
    #[query]
    pub(crate) fn status(&self, _ctx: &WorkflowContextView) -> FleetStatus {
        let mut status = self.status.clone();
        status.paused = self.paused;
        status
    }
}

/// Whether the history has grown past its limit (or the server suggests continuing as new).
fn history_full(ctx: &WorkflowContext<PipelineWorkflow>, input: &FleetInput) -> bool {
    ctx.continue_as_new_suggested() || ctx.history_length() >= input.history_limit
}

/// Continues as new with what must outlive this run: the pause, the rewinds not yet applied.
fn continue_as_new(
    ctx: &WorkflowContext<PipelineWorkflow>,
    input: &FleetInput,
) -> WorkflowResult<String> {
    if ctx.cancellation_token().is_cancelled() {
        return undeployed(ctx, input);
    }
    let next = FleetInput {
        paused: ctx.state(|s| s.paused),
        pause_pending: ctx.state(|s| s.pause_pending),
        generation: input.generation + 1,
        rewinds: ctx.state(|s| s.rewinds.iter().cloned().collect()),
        ..input.clone()
    };
    ctx.continue_as_new(next, ContinueAsNewOptions::default())
        .map(|never| match never {})
}

fn undeployed(
    ctx: &WorkflowContext<PipelineWorkflow>,
    input: &FleetInput,
) -> WorkflowResult<String> {
    ctx.state_mut(|s| s.status.state = "undeployed".into());
    Ok(format!("pipeline {} undeployed", input.pipeline))
}

/// Sets the store's pause flag to what the last signal asked, through a local activity (a short
/// store write on the workflow's worker: it needs no activity slot, which long-running pipelines
/// may all hold). `Ok(true)`: applied (or nothing to do); `Ok(false)`: it failed (the store
/// down), the error is in the status and the backoff was waited out — the caller tries again
/// after checking the history. `Err` only when the workflow is cancelled.
async fn apply_pause(ctx: &WorkflowContext<PipelineWorkflow>) -> WorkflowResult<bool> {
    let (pipeline, paused, pending) =
        ctx.state(|s| (s.pipeline.clone(), s.paused, s.pause_pending));
    if !pending {
        return Ok(true);
    }
    match ctx
        .execute_local_activity(
            FleetActivities::set_paused,
            (pipeline, paused),
            control_options(),
        )
        .await
    {
        Ok(()) => {
            ctx.state_mut(|s| {
                // A signal that came while the write was under way is still to be written.
                s.pause_pending = s.paused != paused;
                s.control_failures = 0;
            });
            Ok(true)
        }
        Err(error) => retry_later(ctx, &error).await.map(|()| false),
    }
}

/// Applies the queued rewinds in order, while no run is active. A rewind refused for good
/// (another kind of position) is shown in the status and dropped; one that failed otherwise (the
/// store down, the last run's lease not yet released) stays queued: `Ok(false)` after the
/// backoff, as [`apply_pause`].
async fn apply_rewinds(ctx: &WorkflowContext<PipelineWorkflow>) -> WorkflowResult<bool> {
    while let Some(rewind) = ctx.state(|s| s.rewinds.front().cloned()) {
        let pipeline = ctx.state(|s| s.pipeline.clone());
        match ctx
            .execute_local_activity(
                FleetActivities::rewind,
                (pipeline, rewind),
                control_options(),
            )
            .await
        {
            Ok(()) => ctx.state_mut(|s| {
                s.rewinds.pop_front();
                s.status.rewinds += 1;
                s.status.last_error = None;
                s.control_failures = 0;
            }),
            Err(error) if is_fatal(&error) => {
                let message = error.to_string();
                ctx.state_mut(|s| {
                    s.rewinds.pop_front();
                    s.status.last_error = Some(message);
                });
            }
            Err(error) => return retry_later(ctx, &error).await.map(|()| false),
        }
    }
    Ok(true)
}

/// Records a control's failure and waits before it is tried again: 5 s doubling to 5 minutes
/// (a long outage costs a few history events an attempt). `Err` when the workflow was cancelled
/// meanwhile (undeploy).
async fn retry_later(
    ctx: &WorkflowContext<PipelineWorkflow>,
    error: &ActivityExecutionError,
) -> WorkflowResult<()> {
    let message = error.to_string();
    let failures = ctx.state_mut(|s| {
        s.status.last_error = Some(message);
        s.control_failures = s.control_failures.saturating_add(1);
        s.control_failures
    });
    let delay = Duration::from_secs(5u64 << failures.saturating_sub(1).min(6))
        .min(Duration::from_secs(300));
    ctx.timer(delay).await;
    if ctx.cancellation_token().is_cancelled() {
        return Err(WorkflowTermination::cancelled());
    }
    Ok(())
}

/// Whether an activity failed with a fatal (non-retryable) sluice error.
fn is_fatal(error: &ActivityExecutionError) -> bool {
    let mut failure = error.failure();
    while let Some(f) = failure {
        if let Some(FailureInfo::ApplicationFailureInfo(info)) = &f.failure_info
            && info.r#type == FATAL
        {
            return true;
        }
        failure = f.cause.as_deref();
    }
    false
}

/// The run activity: a heartbeat timeout (a worker silent that long loses the pipeline), no
/// practical end, retries forever with backoff except for fatal errors, and a cancel that waits
/// for the pipeline to drain and save.
fn run_options(input: &FleetInput) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(365 * 24 * 3600))
        .heartbeat_timeout(Duration::from_secs(input.heartbeat_timeout_s.max(1)))
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(30))
                .non_retryable_error_types([FATAL])
                .build(),
        )
        .build()
}

/// Controls: short store writes, retried for a few seconds (kept under the workflow task's
/// timeout, so a slow one never makes the task heartbeat into the history), then the workflow's
/// own backoff timer.
fn control_options() -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .schedule_to_close_timeout(Duration::from_secs(8))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(500))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(5))
                .non_retryable_error_types([FATAL])
                .build(),
        )
        .build()
}

/// The activities of a worker: they build pipelines from the worker's config file.
#[derive(Debug)]
pub(crate) struct FleetActivities {
    pub(crate) config: Arc<Config>,
    pub(crate) databases: Arc<Databases>,
    /// The config's store, for the controls (one connection per worker).
    pub(crate) store: Arc<OperatorStore>,
    /// The pipelines paused in the store, read by one task per worker (`follow_pauses`), so that
    /// no heartbeat waits on Postgres.
    pub(crate) paused: tokio::sync::watch::Receiver<Option<BTreeSet<String>>>,
    /// The worker's shutdown: running pipelines drain and save when it fires.
    pub(crate) shutdown: CancellationToken,
    /// The pipelines running here, for the worker's `/status` and `/ready`.
    pub(crate) running: crate::serve::Registry,
    /// Their states, for `/health` and `/status`.
    pub(crate) health: sluice::Health,
    /// When a request of this worker last reached Temporal (`follow_temporal`).
    pub(crate) contact: tokio::sync::watch::Receiver<tokio::time::Instant>,
}

/// A pipeline's place in the worker's endpoints while its run lasts.
struct Shown<'a> {
    activities: &'a FleetActivities,
    id: String,
}

impl<'a> Shown<'a> {
    fn new(activities: &'a FleetActivities, id: &str, stats: Arc<PipelineStats>) -> Self {
        let max_cursor_age = activities
            .config
            .pipelines
            .get(id)
            .and_then(|p| p.max_cursor_age);
        lock(&activities.running).push(crate::serve::Watched {
            id: id.to_owned(),
            stats,
            max_cursor_age,
        });
        lock(&activities.health).insert(id.to_owned(), sluice::PipelineState::Running);
        Self {
            activities,
            id: id.to_owned(),
        }
    }
}

impl Drop for Shown<'_> {
    fn drop(&mut self) {
        lock(&self.activities.running).retain(|w| w.id != self.id);
        lock(&self.activities.health).remove(&self.id);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the store's pause flags once a second for every pipeline of the worker (`None` until
/// the first read succeeds), each read bounded so that a stuck connection only delays it.
pub(crate) async fn follow_pauses(
    store: Arc<OperatorStore>,
    flags: tokio::sync::watch::Sender<Option<BTreeSet<String>>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match tokio::time::timeout(Duration::from_secs(5), store.paused()).await {
            Ok(Ok(paused)) => {
                flags.send_if_modified(|now| {
                    let changed = now.as_ref() != Some(&paused);
                    *now = Some(paused);
                    changed
                });
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %format!("{error:#}"), "reading pause flags failed");
            }
            Err(_) => tracing::warn!("reading pause flags timed out"),
        }
    }
}

/// Whether a gRPC status means the request did not reach Temporal (the transport failed) rather
/// than an answer of the server.
fn unreached(code: temporalio_client::tonic::Code) -> bool {
    use temporalio_client::tonic::Code;
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// The shortest silence from Temporal that stops a run (a heartbeat timeout shorter than a few
/// probes would stop runs on one slow answer).
const CONTACT_AT_LEAST: Duration = Duration::from_secs(5);

/// Follows this worker's contact with Temporal: `contact` holds when a request last reached
/// the server (a describe of a workflow that does not exist: "not found" is an answer too).
///
/// The SDK sends heartbeats in the background and only logs their failures, so a worker cut
/// off from Temporal but not from Postgres would go on running its pipelines and renewing
/// their leases, while Temporal retries them elsewhere, where they wait for the lease for as
/// long as the cut lasts. With this, the run activity stops a pipeline once the contact is
/// older than its heartbeat timeout (see `run_pipeline`).
pub(crate) async fn follow_temporal(
    client: temporalio_client::Client,
    contact: tokio::sync::watch::Sender<tokio::time::Instant>,
    shutdown: CancellationToken,
) {
    let probe = client.get_workflow_handle::<PipelineWorkflow>("sluice/(contact probe)");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout(
            Duration::from_secs(2),
            probe.describe(temporalio_client::WorkflowDescribeOptions::default()),
        )
        .await
        {
            Ok(Ok(_) | Err(temporalio_client::errors::WorkflowInteractionError::NotFound(_))) => {
                contact.send_replace(asked);
            }
            // Any other answer of the server (throttled, refused) is contact too: only a
            // request that did not reach it counts as silence.
            Ok(Err(temporalio_client::errors::WorkflowInteractionError::Rpc(status)))
                if !unreached(status.code()) =>
            {
                contact.send_replace(asked);
            }
            Ok(Err(error)) => tracing::debug!(%error, "temporal did not answer"),
            Err(_) => tracing::debug!("temporal did not answer within 2 s"),
        }
    }
}

#[activities]
impl FleetActivities {
    /// Runs one pipeline until it completes, fails or is cancelled, heartbeating its progress.
    /// It waits out another holder's live lease (the worker Temporal took the pipeline from may
    /// only be cut off); it then holds a new token, which fences that worker's late writes.
    /// Each attempt holds the lease under its own name, so that a stale attempt in the same
    /// process cannot take the lease back from the current one.
    #[activity]
    pub(crate) async fn run_pipeline(
        self: Arc<Self>,
        ctx: ActivityContext,
        pipeline: String,
    ) -> Result<RunOutcome, ActivityError> {
        let info = ctx.info();
        if let Ok(Some(last)) = ctx.heartbeat_details().deserialize::<Progress>() {
            tracing::info!(%pipeline, attempt = info.attempt, last_holder = %last.holder, last_epoch = last.epoch, "taking the pipeline over");
        }
        if !self.config.pipelines.contains_key(&pipeline) {
            // A worker with an older config file (a rolling update): another worker may have it.
            return Err(retryable(anyhow::anyhow!(
                "pipeline {pipeline} is not in this worker's config file"
            )));
        }
        let run_id = info.workflow_run_id.as_deref().unwrap_or_default();
        let holder = format!(
            "{}/{}.{}@{}",
            &run_id[..run_id.len().min(8)],
            info.activity_id,
            info.attempt,
            sluice::default_holder()
        );
        let stats = Arc::new(PipelineStats::new(&pipeline));
        let _shown = Shown::new(&self, &pipeline, stats.clone());
        let mut flags = self.paused.clone();
        // Until the flags were read once, the pipeline waits paused (it would wait for its store
        // anyway).
        let is_paused = |flags: &Option<BTreeSet<String>>| {
            flags.as_ref().is_none_or(|set| set.contains(&pipeline))
        };
        let (pause, paused) = tokio::sync::watch::channel(is_paused(&flags.borrow_and_update()));
        let mut built = self
            .config
            .build(&pipeline, &self.databases)
            .map_err(fatal)?
            .with_stats(stats.clone())
            .pausable(paused);
        built.options_mut().wait_for_lease = true;
        built.options_mut().holder = holder;
        let stop = self.shutdown.child_token();
        let mut task = tokio::spawn(built.run(stop.clone()));
        let every = info
            .heartbeat_timeout
            .map_or(Duration::from_secs(3), |t| t / 3)
            .max(Duration::from_millis(200));
        let mut tick = tokio::time::interval(every);
        let mut cancelled = false;
        let mut cut_off = false;
        let joined = loop {
            tokio::select! {
                joined = &mut task => break joined,
                _ = tick.tick() => {
                    // Heartbeats go on while the pipeline drains after a cancel: a drain as
                    // long as the timeout must not look like a dead worker.
                    if let Err(error) = ctx.record_heartbeat(progress(&stats)).await {
                        tracing::warn!(%pipeline, %error, "heartbeat not recorded");
                    }
                    // Temporal has given this run to another worker by now (no heartbeat for
                    // as long): stop it, so that the other gets the lease. Never sooner than a
                    // few probes (one a second, each given 2 s) could tell.
                    let silent = self.contact.borrow().elapsed();
                    let limit = info.heartbeat_timeout.map(|t| t.max(CONTACT_AT_LEAST));
                    if !cut_off && limit.is_some_and(|limit| silent > limit) {
                        tracing::warn!(%pipeline, silent_s = silent.as_secs(), "no contact with temporal for longer than the heartbeat timeout: stopping the run (drained, saved, lease released) for another worker to take");
                        cut_off = true;
                        stop.cancel();
                    }
                }
                Ok(()) = flags.changed() => {
                    let now = is_paused(&flags.borrow_and_update());
                    pause.send_if_modified(|p| std::mem::replace(p, now) != now);
                }
                () = ctx.cancelled(), if !cancelled => {
                    // Cancelled by the workflow (rewind, undeploy) or lost to another attempt
                    // (the server no longer knows this one): stop, drain, save, release.
                    cancelled = true;
                    stop.cancel();
                }
            }
        };
        if cut_off && !cancelled {
            return Err(retryable(anyhow::anyhow!(
                "pipeline {pipeline} stopped on this worker: no contact with Temporal for longer than the heartbeat timeout; it goes on from its saved cursors"
            )));
        }
        if cancelled {
            tracing::info!(%pipeline, "run cancelled; drained and saved");
            return match joined {
                Ok(Err(error)) if error.class() == ErrorClass::Fatal && !lease_lost(&error) => {
                    Err(pipeline_failure(&error))
                }
                _ => Err(ActivityError::cancelled()),
            };
        }
        match joined {
            Ok(Ok(PipelineExit::Completed)) => Ok(RunOutcome::Completed),
            // Stopped without being cancelled: the worker shuts down, or the lease went to
            // another attempt. The next attempt goes on from the store (after that lease).
            Ok(Ok(PipelineExit::Stopped)) => Err(retryable(anyhow::anyhow!(
                "pipeline {pipeline} stopped on this worker (shutdown or lease lost); it goes on from its saved cursors"
            ))),
            Ok(Err(error)) => Err(pipeline_failure(&error)),
            Err(join) => Err(retryable(anyhow::anyhow!(
                "pipeline {pipeline} panicked: {join}; restarting from the saved cursors"
            ))),
        }
    }

    /// Sets or clears the pipeline's pause flag in the store (the running pipeline follows).
    #[activity]
    pub(crate) async fn set_paused(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: (String, bool),
    ) -> Result<(), ActivityError> {
        let (pipeline, paused) = input;
        self.store
            .set_paused(&pipeline, paused)
            .await
            .map_err(retryable)?;
        Ok(())
    }

    /// Sets one cursor, as `sluice checkpoints set` does: refused (and retried) while a lease
    /// is live, refused for good for another kind of position; recorded in the audit table.
    #[activity]
    pub(crate) async fn rewind(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: (String, Rewind),
    ) -> Result<(), ActivityError> {
        let (pipeline, rewind) = input;
        let store = &self.store;
        if let Some(holder) = store.live_holder(&pipeline).await.map_err(retryable)? {
            return Err(retryable(anyhow::anyhow!(
                "pipeline {pipeline} still held by {holder}; waiting for its release"
            )));
        }
        let cursors = store.cursors(&pipeline).await.map_err(retryable)?;
        if let Some(old) = cursors.get(rewind.partition.as_str())
            && std::mem::discriminant(old) != std::mem::discriminant(&rewind.position)
        {
            return Err(fatal(anyhow::anyhow!(
                "partition {} holds {old}; {} is not the same kind of position (an integer, a text or a list)",
                rewind.partition,
                rewind.position
            )));
        }
        store
            .set_checked(&pipeline, &rewind.partition, &rewind.position)
            .await
            .map_err(retryable)?;
        tracing::info!(%pipeline, partition = %rewind.partition, position = %rewind.position, "cursor set by the rewind signal");
        Ok(())
    }
}

/// The heartbeat's details now.
fn progress(stats: &PipelineStats) -> Progress {
    let (holder, epoch) = stats.lease().unwrap_or_default();
    let snapshot = stats.snapshot();
    let cursors = stats.cursors();
    Progress {
        holder,
        epoch,
        lag: cursors
            .iter()
            .filter_map(|c| {
                c.lag
                    .map(|lag| (c.partition.clone(), lag.behind, lag.unit.to_owned()))
            })
            .collect(),
        cursors: cursors
            .into_iter()
            .map(|c| (c.partition, c.position))
            .collect(),
        records_written: snapshot.records_written,
        paused: snapshot.paused,
    }
}

/// A pipeline's error as an activity failure: fatal ones (and data ones that stopped it under
/// `on_error = fail`) are not retried; the rest are, from the saved cursors.
fn pipeline_failure(error: &PipelineError) -> ActivityError {
    let message = sluice::report(error);
    match error.class() {
        // A lost lease stops this attempt, not the pipeline: the next attempt waits for the
        // lease (the attempt that took it may itself be a straggler that lets go).
        _ if lease_lost(error) => retryable(anyhow::anyhow!(message)),
        ErrorClass::Transient => retryable(anyhow::anyhow!(message)),
        ErrorClass::Fatal | ErrorClass::Data => fatal(anyhow::anyhow!(message)),
    }
}

/// Whether the lease was lost, wherever it surfaced: the keeper's renewal, a save, or a
/// transactional sink's write (the chain is then sink error → store error → `LeaseLost`).
fn lease_lost(error: &PipelineError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<sluice::LeaseLost>() {
            return true;
        }
        cause = error.source();
    }
    false
}

fn fatal(error: anyhow::Error) -> ActivityError {
    ActivityError::application(
        temporalio_sdk::ApplicationFailure::builder(format!("{error:#}"))
            .type_name(FATAL.to_owned())
            .non_retryable(true)
            .build(),
    )
}

fn retryable(error: anyhow::Error) -> ActivityError {
    ActivityError::application(temporalio_sdk::ApplicationFailure::new(format!(
        "{error:#}"
    )))
}

#[cfg(test)]
mod tests {
    use sluice::{SinkError, StoreError};

    use super::*;

    /// A throttled or refused request reached Temporal (contact); a transport failure did not.
    #[test]
    fn only_a_request_that_did_not_reach_temporal_is_silence() {
        use temporalio_client::tonic::Code;
        assert!(unreached(Code::Unavailable) && unreached(Code::DeadlineExceeded));
        assert!(!unreached(Code::ResourceExhausted) && !unreached(Code::PermissionDenied));
    }

    fn non_retryable(error: &ActivityError) -> bool {
        match error {
            ActivityError::Application(failure) => failure.is_non_retryable(),
            _ => false,
        }
    }

    /// A lost lease is retried wherever it surfaced (the keeper, a save, or a transactional
    /// sink's write, where it is wrapped in the sink's error); another fatal error is not.
    #[test]
    fn a_lost_lease_is_retried_wherever_it_surfaced_and_a_fatal_error_is_not() {
        let store = PipelineError::Store {
            pipeline: "p".into(),
            source: StoreError::lease_lost("p"),
        };
        let sink = PipelineError::Sink {
            pipeline: "p".into(),
            destination: "pg".into(),
            source: SinkError::fatal("save cursors in the write transaction")
                .with_source(StoreError::lease_lost("p")),
        };
        let fatal = PipelineError::Sink {
            pipeline: "p".into(),
            destination: "pg".into(),
            source: SinkError::fatal("permission denied for table t"),
        };
        assert!(!non_retryable(&pipeline_failure(&store)));
        assert!(!non_retryable(&pipeline_failure(&sink)));
        assert!(non_retryable(&pipeline_failure(&fatal)));
    }
}
