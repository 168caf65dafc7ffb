//! Defines the supervisor: it runs many pipelines, restarts one that failed with a transient
//! error or panicked (from its saved cursors, after a backoff), stops one that failed for good,
//! and propagates shutdown to all.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, BackoffPolicy},
    error::{ErrorClass, PipelineError},
    pipeline::PipelineExit,
};

/// The state of a supervised pipeline, for health pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PipelineState {
    /// Running (sessions may reconnect inside).
    Running,
    /// Failed with a transient error; waiting to restart.
    Restarting {
        /// The last error.
        error: String,
    },
    /// The source finished and everything is saved.
    Completed,
    /// Stopped on shutdown.
    Stopped,
    /// Failed for good.
    Failed {
        /// The error, with its cause chain.
        error: String,
    },
}

/// Shared view of every pipeline's state.
pub type Health = Arc<Mutex<BTreeMap<String, PipelineState>>>;

/// Runs pipelines and keeps them running.
#[derive(Debug)]
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: JoinSet<(String, Result<PipelineExit, PipelineError>)>,
    restart: BackoffPolicy,
    health: Health,
}

impl Supervisor {
    /// A supervisor whose pipelines stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken, restart: BackoffPolicy) -> Self {
        Self {
            shutdown,
            tasks: JoinSet::new(),
            restart,
            health: Health::default(),
        }
    }

    /// The state of every pipeline.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Supervises one pipeline. `start` builds and runs a fresh pipeline each time it is called
    /// (the first start and every restart); it must resume from the store.
    pub fn spawn<F, Fut>(&mut self, id: impl Into<String>, start: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<PipelineExit, PipelineError>> + Send + 'static,
    {
        let id = id.into();
        let shutdown = self.shutdown.clone();
        let health = self.health.clone();
        let mut backoff = Backoff::new(self.restart);
        set_state(&health, &id, PipelineState::Running);
        self.tasks.spawn(async move {
            loop {
                let started = tokio::time::Instant::now();
                // Its own task, so a panic is caught as a JoinError and the others run on.
                let outcome = match tokio::spawn(start(shutdown.clone())).await {
                    Ok(outcome) => outcome,
                    Err(join) => Err(PipelineError::Panicked {
                        pipeline: id.clone(),
                        message: panic_message(join),
                    }),
                };
                let state = match &outcome {
                    Ok(PipelineExit::Completed) => PipelineState::Completed,
                    Ok(PipelineExit::Stopped) => PipelineState::Stopped,
                    Err(error)
                        if error.class() == ErrorClass::Transient && !shutdown.is_cancelled() =>
                    {
                        PipelineState::Restarting {
                            error: report(error),
                        }
                    }
                    Err(error) => PipelineState::Failed {
                        error: report(error),
                    },
                };
                let restart = matches!(state, PipelineState::Restarting { .. });
                if let PipelineState::Failed { error } | PipelineState::Restarting { error } =
                    &state
                {
                    tracing::error!(pipeline = %id, %error, restart, "pipeline failed");
                }
                set_state(&health, &id, state);
                if !restart {
                    return (id, outcome);
                }
                backoff.reset_if_stable(started.elapsed());
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        set_state(&health, &id, PipelineState::Stopped);
                        return (id, Ok(PipelineExit::Stopped));
                    }
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                set_state(&health, &id, PipelineState::Running);
            }
        });
    }

    /// Waits for every pipeline to end and returns how each ended.
    pub async fn wait(mut self) -> Vec<(String, Result<PipelineExit, PipelineError>)> {
        let mut ended = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(outcome) => ended.push(outcome),
                Err(join) => tracing::error!(error = %join, "supervisor task failed"),
            }
        }
        ended
    }
}

fn set_state(health: &Health, id: &str, state: PipelineState) {
    health
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_owned(), state);
}

/// An error with its cause chain on one line: "a: b: c".
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into()),
        Err(join) => join.to_string(),
    }
}
