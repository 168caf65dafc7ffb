//! Defines the counters a running pipeline keeps, both as Prometheus metrics (through the
//! `metrics` facade) and as atomics that status pages and the demo read directly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
}

impl StatsSnapshot {
    /// Ready: a session is open and no partition is held at a hole.
    pub fn ready(&self) -> bool {
        self.up && self.held == 0
    }
}

impl PipelineStats {
    /// Counters for `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            ..Self::default()
        }
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
