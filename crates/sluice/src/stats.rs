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
    /// The durable cursor of each partition.
    cursors: Mutex<BTreeMap<String, Cursor>>,
    /// Where the source says its provider is, per partition ([`SourceContext::set_head`]).
    ///
    /// [`SourceContext::set_head`]: crate::SourceContext::set_head
    heads: Mutex<BTreeMap<String, Head>>,
    /// Which session the heads belong to: bumped (under the `heads` lock) each time they are
    /// cleared, so a report from a task of an ended session ([`crate::Heads`]) is dropped.
    head_session: AtomicU64,
    /// `sluice_source_lag` per partition, registered once a lag is first known (never before:
    /// an exported 0 would read "caught up").
    lag_gauges: Mutex<BTreeMap<String, metrics::Gauge>>,
    /// When these counters started.
    started: Option<SystemTime>,
}

/// A partition's durable cursor.
#[derive(Debug)]
struct Cursor {
    /// The position, as JSON text.
    position: String,
    /// The position, when it is an integer (what lag is counted against).
    int: Option<u64>,
    /// When it last moved (`None`: not since this process started).
    moved: Option<SystemTime>,
}

/// The newest position a source knows its provider has in one partition.
#[derive(Debug)]
struct Head {
    at: u64,
    unit: &'static str,
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
    /// How far the durable cursor is behind the provider, where the source knows it.
    pub lag: Option<Lag>,
}

/// How far a partition's durable cursor is behind the newest position its provider has: what is
/// still to be read and written. Sources that know their provider's head report it (trades for
/// Coinbase, bytes of WAL for Postgres logical replication); the unit says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// Positions behind (0: caught up).
    pub behind: u64,
    /// What a position counts: `trades`, `bytes`…
    pub unit: &'static str,
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
        let heads = lock(&self.heads);
        lock(&self.cursors)
            .iter()
            .map(|(partition, cursor)| CursorStatus {
                partition: partition.clone(),
                position: cursor.position.clone(),
                age: since(cursor.moved),
                lag: heads.get(partition).and_then(|head| lag(head, cursor)),
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
                .or_insert_with(|| Cursor {
                    position: position.to_string(),
                    int: position.as_int(),
                    moved: None,
                });
        }
    }

    /// Cursors just made durable.
    pub(crate) fn set_saved(&self, saved: &Checkpoints, moved: &[crate::envelope::Checkpoint]) {
        let now = SystemTime::now();
        // Heads before cursors, everywhere.
        let heads = lock(&self.heads);
        let mut cursors = lock(&self.cursors);
        for checkpoint in moved {
            if let Some(position) = saved.get(&checkpoint.partition) {
                let cursor = Cursor {
                    position: position.to_string(),
                    int: position.as_int(),
                    moved: Some(now),
                };
                if let Some(head) = heads.get(&*checkpoint.partition) {
                    self.set_gauge(&checkpoint.partition, head, &cursor);
                }
                cursors.insert(checkpoint.partition.to_string(), cursor);
            }
        }
    }

    /// The newest position the provider of `partition` is known to have, in `unit` (a source
    /// keeps one unit). Within a session it never moves back: a stale report (an older
    /// heartbeat) is ignored.
    pub(crate) fn set_head(&self, partition: &str, at: u64, unit: &'static str) {
        self.set_head_of(None, partition, at, unit);
    }

    /// The session the heads now belong to ([`Self::set_head_of`]).
    pub(crate) fn head_session(&self) -> u64 {
        self.head_session.load(Ordering::Acquire)
    }

    /// As [`Self::set_head`], from a task of `session` (`None`: the current one). A report
    /// of a session that has ended is dropped: the task may outlive it by a moment (an abort
    /// takes effect at its next await, on another thread).
    pub(crate) fn set_head_of(
        &self,
        session: Option<u64>,
        partition: &str,
        at: u64,
        unit: &'static str,
    ) {
        let mut heads = lock(&self.heads);
        // Read under the lock that `clear_heads` bumps it under: no report slips in between.
        if session.is_some_and(|session| session != self.head_session()) {
            return;
        }
        let head = match heads.get_mut(partition) {
            Some(head) if head.at >= at => return,
            Some(head) => {
                head.at = at;
                head
            }
            None => heads
                .entry(partition.to_owned())
                .or_insert(Head { at, unit }),
        };
        if let Some(cursor) = lock(&self.cursors).get(partition) {
            self.set_gauge(partition, head, cursor);
        }
    }

    /// Forgets the heads when a session ends: what the provider had is not known while no
    /// session is open, and a new one may reach another server (a failover). Until a new
    /// session reports, status pages show no lag and the gauges read NaN (unknown).
    fn clear_heads(&self) {
        let mut heads = lock(&self.heads);
        heads.clear();
        self.head_session.fetch_add(1, Ordering::AcqRel);
        drop(heads);
        for gauge in lock(&self.lag_gauges).values() {
            gauge.set(f64::NAN);
        }
    }

    fn set_gauge(&self, partition: &str, head: &Head, cursor: &Cursor) {
        let Some(lag) = lag(head, cursor) else {
            return;
        };
        lock(&self.lag_gauges)
            .entry(partition.to_owned())
            .or_insert_with(|| {
                metrics::gauge!("sluice_source_lag", "pipeline" => self.pipeline.clone(), "partition" => partition.to_owned(), "unit" => head.unit)
            })
            .set(lag.behind as f64);
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
        if !up {
            self.clear_heads();
        }
        self.up.store(up, Ordering::Relaxed);
        metrics::gauge!("sluice_pipeline_up", "pipeline" => self.pipeline.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }
}

fn lag(head: &Head, cursor: &Cursor) -> Option<Lag> {
    cursor.int.map(|at| Lag {
        behind: head.at.saturating_sub(at),
        unit: head.unit,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Checkpoint, Position};

    fn lag_of(stats: &PipelineStats, partition: &str) -> Option<Lag> {
        stats
            .cursors()
            .into_iter()
            .find(|c| c.partition == partition)
            .and_then(|c| c.lag)
    }

    #[test]
    fn lag_is_the_head_minus_the_durable_cursor() {
        let stats = PipelineStats::new("p");
        let mut saved = Checkpoints::new();
        saved.insert("BTC-USD".into(), Position::Int(100));
        saved.insert("file".into(), Position::Text("a".into()));
        stats.set_loaded(&saved);
        assert_eq!(lag_of(&stats, "BTC-USD"), None, "no head reported yet");

        stats.set_head("BTC-USD", 130, "trades");
        let behind = |n| {
            Some(Lag {
                behind: n,
                unit: "trades",
            })
        };
        assert_eq!(lag_of(&stats, "BTC-USD"), behind(30));
        stats.set_head("BTC-USD", 120, "trades");
        assert_eq!(
            lag_of(&stats, "BTC-USD"),
            behind(30),
            "an older head is ignored"
        );

        saved.insert("BTC-USD".into(), Position::Int(125));
        stats.set_saved(&saved, &[Checkpoint::new("BTC-USD", 125u64)]);
        assert_eq!(lag_of(&stats, "BTC-USD"), behind(5));
        saved.insert("BTC-USD".into(), Position::Int(140));
        stats.set_saved(&saved, &[Checkpoint::new("BTC-USD", 140u64)]);
        assert_eq!(
            lag_of(&stats, "BTC-USD"),
            behind(0),
            "past a stale head: caught up"
        );

        stats.set_head("file", 9, "lines");
        assert_eq!(lag_of(&stats, "file"), None, "a text cursor has no lag");

        stats.set_up(false);
        assert_eq!(
            lag_of(&stats, "BTC-USD"),
            None,
            "no session: the head is not known"
        );
        stats.set_head("BTC-USD", 90, "trades");
        assert_eq!(
            lag_of(&stats, "BTC-USD"),
            behind(0),
            "a new session's head counts, even below the last one"
        );
    }

    #[test]
    fn a_head_from_a_task_of_an_ended_session_is_dropped() {
        let stats = PipelineStats::new("p");
        let mut saved = Checkpoints::new();
        saved.insert("0/0".into(), Position::Int(100));
        stats.set_loaded(&saved);
        stats.set_up(true);
        let session = stats.head_session();
        stats.set_head_of(Some(session), "0/0", 150, "bytes");
        assert_eq!(
            lag_of(&stats, "0/0"),
            Some(Lag {
                behind: 50,
                unit: "bytes"
            })
        );
        // The session ends; its poller, aborted, still finishes the report it was making.
        stats.set_up(false);
        stats.set_head_of(Some(session), "0/0", 200, "bytes");
        assert_eq!(
            lag_of(&stats, "0/0"),
            None,
            "a stale lag from an ended session"
        );
        stats.set_up(true);
        assert_eq!(lag_of(&stats, "0/0"), None);
        stats.set_head_of(Some(stats.head_session()), "0/0", 120, "bytes");
        assert_eq!(
            lag_of(&stats, "0/0"),
            Some(Lag {
                behind: 20,
                unit: "bytes"
            }),
            "the next session's task reports"
        );
    }
}
