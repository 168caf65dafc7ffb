//! Workload `core` (issue 2): an in-memory source of N envelopes (one partition, a checkpoint on
//! every envelope, an 8-byte payload), the identity resource, a null sink, and the SQLite
//! checkpoint store (WAL, synchronous = FULL) saving the watermark once per batch. Everything
//! on one core (a current-thread runtime; SQLite calls run on the blocking pool).
//!
//! Baseline `seed`: what the seed's event processor does per event, strictly serially: one
//! write of one record to the same null sink, then one cursor save (an autocommit upsert into
//! SQLite, WAL, synchronous = NORMAL: the baseline's best case).
//!
//! Usage: `cargo run --release -p sluice-bench -- core [N]` (default 5,000,000; the baseline
//! runs N/50 events, enough for a stable rate).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use sluice::{
    BatchLimits, Checkpoint, CheckpointCommit, Envelope, NullSink, Pipeline, PipelineOptions,
    Record, Resource, Resources, SessionEnd, Sink, Source, SourceContext, SourceError,
};
use sluice_stores::sqlite::{SqliteDb, SqliteStore};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Serialize, Record)]
#[record(table = "ticks", key(n))]
struct Tick {
    n: u64,
}

/// Emits `total` envelopes from memory, one checkpoint each.
struct MemorySource {
    total: u64,
}

impl Source for MemorySource {
    type Payload = Tick;

    fn name(&self) -> &str {
        "memory"
    }

    async fn run(&mut self, ctx: SourceContext<Tick>) -> Result<SessionEnd, SourceError> {
        let partition: Arc<str> = "p".into();
        let resource: Arc<str> = "ticks".into();
        let start = ctx.resume_after("p").and_then(|p| p.as_int()).unwrap_or(0);
        for n in start..self.total {
            let envelope = Envelope {
                resource: resource.clone(),
                payload: Tick { n },
                checkpoint: Some(Checkpoint::new(partition.clone(), n + 1)),
            };
            ctx.emit(envelope).await?;
        }
        Ok(SessionEnd::Finished)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn core(total: u64, dir: &std::path::Path) -> (Duration, u64) {
    let db = SqliteDb::open(dir.join("core.db")).expect("db");
    let store = SqliteStore::new(db.clone());
    let limits = BatchLimits {
        max_records: 10_000,
        max_bytes: usize::MAX,
        linger: Duration::from_millis(50),
    };
    let pipeline = Pipeline::new(
        "bench",
        MemorySource { total },
        store,
        Resources::new().with("ticks", Resource::<Tick, Tick>::identity("null")),
    )
    .sink("null", NullSink, limits)
    .dead_letters(NullSink, limits)
    .options(PipelineOptions {
        channel_capacity: 8192,
        ..PipelineOptions::default()
    });
    let stats = pipeline.stats();
    let started = Instant::now();
    runtime()
        .block_on(pipeline.run(CancellationToken::new()))
        .expect("pipeline");
    let elapsed = started.elapsed();
    let saved: i64 = db
        .lock()
        .query_row(
            "SELECT CAST(position AS INTEGER) FROM sluice_checkpoints",
            [],
            |r| r.get(0),
        )
        .expect("cursor");
    assert_eq!(saved as u64, total, "the last cursor is saved");
    (elapsed, stats.snapshot().checkpoint_saves)
}

fn seed_baseline(total: u64, dir: &std::path::Path) -> Duration {
    let conn = rusqlite::Connection::open(dir.join("seed.db")).expect("db");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE cursor (pipeline TEXT PRIMARY KEY, checkpoint TEXT NOT NULL);",
    )
    .expect("schema");
    let mut sink = NullSink;
    let started = Instant::now();
    runtime().block_on(async {
        let mut save = conn.prepare("INSERT INTO cursor VALUES ('bench', ?1) ON CONFLICT (pipeline) DO UPDATE SET checkpoint = excluded.checkpoint").expect("prepare");
        for n in 0..total {
            let record = Tick { n };
            Sink::<Tick>::write(&mut sink, std::slice::from_ref(&record), None::<&CheckpointCommit<'_>>).await.expect("write");
            let checkpoint = serde_json::to_string(&serde_json::json!({ "sequence": n + 1 })).expect("json");
            save.execute([checkpoint]).expect("save");
        }
    });
    started.elapsed()
}

pub(crate) fn main(arg: Option<String>) {
    let total: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(5_000_000);
    let baseline_total = (total / 50).max(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let (elapsed, saves) = core(total, dir.path());
    let base = seed_baseline(baseline_total, dir.path());
    let rate = total as f64 / elapsed.as_secs_f64();
    let base_rate = baseline_total as f64 / base.as_secs_f64();
    println!(
        "workload: in-memory source -> identity -> null sink, SQLite cursor per batch of 10,000 (one core)"
    );
    println!(
        "sluice runtime : {total:>10} events in {:>8.3} s = {:>12.0} events/s ({saves} cursor saves)",
        elapsed.as_secs_f64(),
        rate
    );
    println!(
        "seed baseline  : {baseline_total:>10} events in {:>8.3} s = {:>12.0} events/s (1 write + 1 SQLite cursor save per event)",
        base.as_secs_f64(),
        base_rate
    );
    println!("ratio          : {:.0}x", rate / base_rate);
}
