//! Defines the counters a running pipeline keeps, both as Prometheus metrics (through the
//! `metrics` facade) and as atomics that status pages and the demo read directly.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::{envelope::Checkpoints, error::ErrorClass};

/// Live counters of one pipeline. Cheap to read from another task.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pipeline: String,
    envelopes: AtomicU64,
    records_written: AtomicU64,
    dead_letters: AtomicU64,
    skipped: AtomicU64,
    checkpoint_saves: AtomicU64,
    reconnects: AtomicU64,
    up: AtomicBool,
    held: AtomicU64,
    paused: AtomicBool,
    /// Errors seen, by class: transient, fatal, data.
    errors: [AtomicU64; 3],
    /// The lease: holder and token (the fencing epoch).
    lease: Mutex<Option<(String, u64)>>,
    /// The durable cursor of each partition and when it last moved (`None`: not since this
    /// process started).
    cursors: Mutex<BTreeMap<String, (String, Option<SystemTime>)>>,
    /// When these counters started.
    started: Option<SystemTime>,
}

/// A partition's durable cursor, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorStatus {
    /// The partition.
    pub partition: String,
    /// The position, as JSON text.
    pub position: String,
    /// How long since it last moved (since the pipeline started, when it has not).
    pub age: Duration,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Envelopes received from the source.
    pub envelopes: u64,
    /// Records acknowledged by destinations (dead letters excluded).
    pub records_written: u64,
    /// Inputs sent to the dead-letter destination.
    pub dead_letters: u64,
    /// Poison inputs skipped by policy.
    pub skipped: u64,
    /// Cursor saves (store or transactional sink).
    pub checkpoint_saves: u64,
    /// Sessions reopened after a disconnect.
    pub reconnects: u64,
    /// Whether a session is open.
    pub up: bool,
    /// Partitions whose cursor the source holds at a hole it cannot fill (not ready).
    pub held: u64,
    /// Paused by an operator: its session stopped, its lease kept.
    pub paused: bool,
    /// Transient errors (retried writes and saves, disconnects).
    pub errors_transient: u64,
    /// Fatal errors.
    pub errors_fatal: u64,
    /// Data errors (poison inputs and rejected records).
    pub errors_data: u64,
}

impl StatsSnapshot {
    /// Ready: a session is open and no partition is held at a hole.
    pub fn ready(&self) -> bool {
        self.up && self.held == 0 && !self.paused
    }
}

impl PipelineStats {
    /// Counters for `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            started: Some(SystemTime::now()),
            ..Self::default()
        }
    }

    /// The lease this pipeline holds (holder and token), once acquired.
    pub fn lease(&self) -> Option<(String, u64)> {
        lock(&self.lease).clone()
    }

    /// The durable cursor of every partition and its age.
    pub fn cursors(&self) -> Vec<CursorStatus> {
        let now = SystemTime::now();
        let since = |at: Option<SystemTime>| {
            at.or(self.started)
                .and_then(|at| now.duration_since(at).ok())
                .unwrap_or_default()
        };
        lock(&self.cursors)
            .iter()
            .map(|(partition, (position, moved))| CursorStatus {
                partition: partition.clone(),
                position: position.clone(),
                age: since(*moved),
            })
            .collect()
    }

    /// Whether every cursor moved within `max_age` (a pipeline without cursors is fresh).
    pub fn fresh(&self, max_age: Duration) -> bool {
        self.cursors().iter().all(|c| c.age <= max_age)
    }

    pub(crate) fn set_lease(&self, holder: &str, token: u64) {
        *lock(&self.lease) = Some((holder.to_owned(), token));
        metrics::gauge!("sluice_lease_epoch", "pipeline" => self.pipeline.clone())
            .set(token as f64);
    }

    /// The cursors a session starts from (not moves: their age counts from the start).
    pub(crate) fn set_loaded(&self, saved: &Checkpoints) {
        let mut cursors = lock(&self.cursors);
        for (partition, position) in saved {
            cursors
                .entry(partition.to_string())
                .or_insert_with(|| (position.to_string(), None));
        }
    }

    /// Cursors just made durable.
    pub(crate) fn set_saved(&self, saved: &Checkpoints, moved: &[crate::envelope::Checkpoint]) {
        let now = SystemTime::now();
        let mut cursors = lock(&self.cursors);
        for checkpoint in moved {
            if let Some(position) = saved.get(&checkpoint.partition) {
                cursors.insert(
                    checkpoint.partition.to_string(),
                    (position.to_string(), Some(now)),
                );
            }
        }
    }

    pub(crate) fn add_error(&self, class: ErrorClass) {
        let index = match class {
            ErrorClass::Transient => 0,
            ErrorClass::Fatal => 1,
            ErrorClass::Data => 2,
        };
        self.errors[index].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_errors_total", "pipeline" => self.pipeline.clone(), "class" => class.as_str())
            .increment(1);
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        metrics::gauge!("sluice_pipeline_paused", "pipeline" => self.pipeline.clone())
            .set(if paused { 1.0 } else { 0.0 });
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            envelopes: self.envelopes.load(Ordering::Relaxed),
            records_written: self.records_written.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            checkpoint_saves: self.checkpoint_saves.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            up: self.up.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            errors_transient: self.errors[0].load(Ordering::Relaxed),
            errors_fatal: self.errors[1].load(Ordering::Relaxed),
            errors_data: self.errors[2].load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_envelopes(&self, n: u64) {
        self.envelopes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("sluice_envelopes_total", "pipeline" => self.pipeline.clone())
            .increment(n);
    }

    pub(crate) fn add_written(&self, destination: &str, n: usize) {
        self.records_written.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_records_written_total", "pipeline" => self.pipeline.clone(), "destination" => destination.to_owned())
            .increment(n as u64);
        metrics::counter!("sluice_batches_written_total", "pipeline" => self.pipeline.clone(), "destination" => destination.to_owned())
            .increment(1);
    }

    pub(crate) fn add_dead_letter(&self, resource: &str) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_dead_letters_total", "pipeline" => self.pipeline.clone(), "resource" => resource.to_owned())
            .increment(1);
    }

    pub(crate) fn add_skipped(&self, resource: &str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_poison_skipped_total", "pipeline" => self.pipeline.clone(), "resource" => resource.to_owned())
            .increment(1);
    }

    pub(crate) fn add_checkpoint_save(&self) {
        self.checkpoint_saves.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_checkpoint_saves_total", "pipeline" => self.pipeline.clone())
            .increment(1);
    }

    pub(crate) fn add_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_reconnects_total", "pipeline" => self.pipeline.clone())
            .increment(1);
    }

    pub(crate) fn set_held(&self, partitions: u64) {
        self.held.store(partitions, Ordering::Relaxed);
        metrics::gauge!("sluice_partitions_held", "pipeline" => self.pipeline.clone())
            .set(partitions as f64);
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        metrics::gauge!("sluice_pipeline_up", "pipeline" => self.pipeline.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
