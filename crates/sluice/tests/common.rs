use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use sluice::{
    BackoffPolicy, BatchLimits, Checkpoint, CheckpointStore, DeadLetter, MemoryStore, Pipeline,
    PipelineOptions, Resource, Resources, Source,
    testing::{FlakyStore, RecordingSink},
};

pub(crate) fn fast_options() -> PipelineOptions {
    let quick = BackoffPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        stable_after: Duration::from_secs(5),
    };
    PipelineOptions {
        channel_capacity: 16,
        reconnect: quick,
        retry: quick,
        drain_timeout: Duration::from_secs(2),
        commit_interval: Duration::from_millis(10),
        holder: "test".into(),
        ..PipelineOptions::default()
    }
}

pub(crate) fn limits(max_records: usize) -> BatchLimits {
    BatchLimits {
        max_records,
        max_bytes: usize::MAX,
        linger: Duration::from_millis(20),
    }
}

/// A pipeline `p` with resource `r` → destination `main`, dead letters into `dead`.
pub(crate) fn pipeline<Src, C: CheckpointStore>(
    source: Src,
    store: C,
    main: RecordingSink<Value>,
    dead: RecordingSink<DeadLetter>,
    max_records: usize,
) -> Pipeline<Src, Value, RecordingSink<Value>, C, RecordingSink<DeadLetter>>
where
    Src: Source<Payload = Value> + 'static,
{
    Pipeline::new(
        "p",
        source,
        store,
        Resources::new().with("r", Resource::direct("main")),
    )
    .sink("main", main, limits(max_records))
    .dead_letters(dead, limits(max_records))
    .options(fast_options())
}

pub(crate) fn ns(rows: &[Value]) -> Vec<u64> {
    rows.iter().map(|r| r["n"].as_u64().unwrap()).collect()
}

/// A store that records every save (each save: the list of checkpoints).
pub(crate) type SaveLog = Arc<Mutex<Vec<Vec<Checkpoint>>>>;

pub(crate) fn recording_store() -> (Arc<MemoryStore>, FlakyStore, SaveLog) {
    let memory = Arc::new(MemoryStore::new());
    let saves = Arc::new(Mutex::new(Vec::new()));
    let log = saves.clone();
    let store =
        FlakyStore::new(memory.clone()).checking(move |c| log.lock().unwrap().push(c.to_vec()));
    (memory, store, saves)
}

pub(crate) fn positions(saves: &[Vec<Checkpoint>]) -> Vec<u64> {
    saves
        .iter()
        .flatten()
        .map(|c| c.position.as_int().unwrap())
        .collect()
}
