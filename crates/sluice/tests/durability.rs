use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use sluice::{
    BatchLimits, Checkpoint, Envelope, ErrorClass, MemoryStore, Pipeline, Resource, Resources,
    testing::{FlakyStore, RecordingSink, ScriptedItem, ScriptedSource, SessionScript, json_log},
};
use tokio_util::sync::CancellationToken;

use crate::common::{fast_options, limits, ns, pipeline, positions, recording_store};

/// Invariant 1 across destinations: resource `a` flushes every 2 records, resource `b` waits
/// long; no save may cover an envelope of `b` that is not written yet.
#[tokio::test]
async fn the_cursor_waits_for_the_slowest_destination() {
    let a = RecordingSink::<Value>::new();
    let b = RecordingSink::<Value>::new();
    let violations = Arc::new(Mutex::new(Vec::new()));
    let (ca, cb, v) = (a.clone(), b.clone(), violations.clone());
    let memory = Arc::new(MemoryStore::new());
    let store = FlakyStore::new(memory.clone()).checking(move |saved| {
        let written: HashSet<u64> = ns(&ca.rows()).into_iter().chain(ns(&cb.rows())).collect();
        for checkpoint in saved {
            let upto = checkpoint.position.as_int().unwrap();
            // Positions are 1-based: envelope n has position n + 1.
            if let Some(missing) = (0..upto).find(|n| !written.contains(n)) {
                v.lock().unwrap().push((upto, missing));
            }
        }
    });
    let log: Vec<_> = (0..40u64)
        .map(|n| {
            let resource = if n % 2 == 0 { "a" } else { "b" };
            Envelope::new(resource, json!({"n": n})).with_checkpoint(Checkpoint::new("p", n + 1))
        })
        .collect();
    let slow = BatchLimits {
        max_records: 1000,
        max_bytes: usize::MAX,
        linger: Duration::from_secs(3600),
    };
    Pipeline::new(
        "p",
        ScriptedSource::new(log),
        store,
        Resources::new()
            .with("a", Resource::direct("A"))
            .with("b", Resource::direct("B")),
    )
    .sink("A", a.clone(), limits(2))
    .sink("B", b.clone(), slow)
    .dead_letters(RecordingSink::new(), limits(10))
    .options(fast_options())
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert!(
        violations.lock().unwrap().is_empty(),
        "saved ahead of writes: {:?}",
        violations.lock().unwrap()
    );
    assert_eq!(a.rows().len(), 20);
    assert_eq!(b.batches(), vec![20], "b wrote once, at the drain");
    assert_eq!(
        memory.snapshot("p").get("p").and_then(|p| p.as_int()),
        Some(40)
    );
}

/// Invariant 3: after a disconnect the next session starts from the cursor in the store and the
/// replayable source resumes strictly after it: every envelope lands exactly once.
#[tokio::test]
async fn a_reconnect_resumes_strictly_after_the_saved_cursor() {
    let (memory, store, saves) = recording_store();
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(json_log("r", 30, 1)).sessions(
        [
            SessionScript::DisconnectAfter(10, ErrorClass::Transient),
            SessionScript::CloseAfter(7),
        ],
        SessionScript::Finish,
    );
    let starts = source.starts();
    let run = pipeline(source, store, sink.clone(), RecordingSink::new(), 4);
    let stats = run.stats();
    run.run(CancellationToken::new()).await.unwrap();
    assert_eq!(ns(&sink.rows()), (0..30).collect::<Vec<_>>());
    let starts: Vec<_> = starts
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.get("p0").and_then(|p| p.as_int()))
        .collect();
    assert_eq!(starts, vec![None, Some(10), Some(17)]);
    assert_eq!(stats.snapshot().reconnects, 2);
    let saved = positions(&saves.lock().unwrap());
    assert!(
        saved.windows(2).all(|w| w[0] < w[1]),
        "not monotonic: {saved:?}"
    );
    assert_eq!(
        memory.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(30)
    );
}

/// Invariant 2: one cursor per partition, each monotonic, all saved.
#[tokio::test]
async fn each_partition_keeps_its_own_cursor() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    pipeline(
        ScriptedSource::new(json_log("r", 30, 3)),
        memory.clone(),
        sink,
        RecordingSink::new(),
        7,
    )
    .run(CancellationToken::new())
    .await
    .unwrap();
    let saved = sluice::testing::int_positions(&memory.snapshot("p"));
    assert_eq!(
        saved,
        vec![("p0".into(), 10), ("p1".into(), 10), ("p2".into(), 10)]
    );
}

/// Batching: records are written per batch by count, with one save per batch, not per event.
#[tokio::test]
async fn writes_and_saves_are_per_batch_not_per_event() {
    let (_memory, store, saves) = recording_store();
    let sink = RecordingSink::new();
    pipeline(
        ScriptedSource::new(json_log("r", 100, 1)),
        store,
        sink.clone(),
        RecordingSink::new(),
        25,
    )
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(sink.batches(), vec![25, 25, 25, 25]);
    assert_eq!(positions(&saves.lock().unwrap()), vec![25, 50, 75, 100]);
}

/// Batching by bytes: a small byte budget splits batches before the record limit.
#[tokio::test]
async fn the_byte_limit_flushes_before_the_record_limit() {
    let sink = RecordingSink::new();
    let bytes = BatchLimits {
        max_records: 1000,
        max_bytes: 100,
        linger: Duration::from_secs(60),
    };
    Pipeline::new(
        "p",
        ScriptedSource::new(json_log("r", 50, 1)),
        Arc::new(MemoryStore::new()),
        Resources::new().with("r", Resource::direct("main")),
    )
    .sink("main", sink.clone(), bytes)
    .dead_letters(RecordingSink::new(), limits(10))
    .options(fast_options())
    .run(CancellationToken::new())
    .await
    .unwrap();
    let batches = sink.batches();
    assert!(batches.len() > 5, "{batches:?}");
    assert_eq!(batches.iter().sum::<usize>(), 50);
}

/// Linger: a live source that goes quiet still gets its records written and saved.
#[tokio::test]
async fn linger_flushes_a_partial_batch_of_a_live_source() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(json_log("r", 3, 1)).sessions([], SessionScript::Hold);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        pipeline(
            source,
            memory.clone(),
            sink.clone(),
            RecordingSink::new(),
            1000,
        )
        .run(shutdown.clone()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while memory.snapshot("p").is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        sink.rows().len(),
        3,
        "written by linger, before any shutdown"
    );
    assert_eq!(
        memory.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(3)
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// Progress without data (`ctx.advance`) is saved, but never ahead of an earlier write.
#[tokio::test]
async fn an_advance_without_data_is_saved_after_what_came_before() {
    let (memory, store, saves) = recording_store();
    let sink = RecordingSink::new();
    sink.fail_next(2, ErrorClass::Transient);
    let items = vec![
        ScriptedItem::Envelope(
            Envelope::new("r", json!({"n": 0})).with_checkpoint(Checkpoint::new("p", 1)),
        ),
        ScriptedItem::Advance(Checkpoint::new("p", 5)),
        ScriptedItem::Advance(Checkpoint::new("q", 9)),
    ];
    pipeline(
        ScriptedSource::from_items(items),
        store,
        sink.clone(),
        RecordingSink::new(),
        10,
    )
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(sink.rows().len(), 1);
    let saves = saves.lock().unwrap().clone();
    assert_eq!(saves.len(), 1, "one save, after the write: {saves:?}");
    assert_eq!(
        sluice::testing::int_positions(&memory.snapshot("p")),
        vec![("p".into(), 5), ("q".into(), 9)]
    );
}

/// A source that acknowledges upstream from `ctx.durable()`: every value it sees is already in
/// the store and its records are written, the values never go back, and a failed write holds
/// them (the acknowledgement is never ahead of durability).
struct Acking {
    memory: Arc<MemoryStore>,
    sink: RecordingSink<Value>,
    seen: Arc<Mutex<Vec<u64>>>,
    /// What was acknowledgeable too early (a panic would only restart the session).
    violations: Arc<Mutex<Vec<String>>>,
}

impl sluice::Source for Acking {
    type Payload = Value;

    fn name(&self) -> &str {
        "acking"
    }

    async fn run(
        &mut self,
        ctx: sluice::SourceContext<Value>,
    ) -> Result<sluice::SessionEnd, sluice::SourceError> {
        let mut durable = ctx.durable();
        let start = ctx.resume_after("p").and_then(|p| p.as_int()).unwrap_or(0);
        for n in start + 1..=6 {
            ctx.emit(Envelope::new("r", json!({"n": n})).with_checkpoint(Checkpoint::new("p", n)))
                .await?;
        }
        loop {
            let acked = durable
                .borrow_and_update()
                .get("p")
                .and_then(|p| p.as_int());
            if let Some(acked) = acked {
                let stored = self.memory.snapshot("p").get("p").and_then(|p| p.as_int());
                let written = ns(&self.sink.rows());
                let mut violations = self.violations.lock().unwrap();
                if stored < Some(acked) {
                    violations.push(format!("acknowledgeable {acked} before the store had it"));
                }
                if !(1..=acked).all(|n| written.contains(&n)) {
                    violations.push(format!(
                        "{acked} acknowledgeable before its records were written"
                    ));
                }
                drop(violations);
                self.seen.lock().unwrap().push(acked);
                if acked == 6 {
                    return Ok(sluice::SessionEnd::Finished);
                }
            }
            if durable.changed().await.is_err() {
                return Ok(sluice::SessionEnd::Closed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_cursors_reach_sources_only_after_the_save() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    sink.fail_next(1, ErrorClass::Transient); // the first write fails: nothing may be acked
    let seen = Arc::new(Mutex::new(Vec::new()));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let source = Acking {
        memory: memory.clone(),
        sink: sink.clone(),
        seen: seen.clone(),
        violations: violations.clone(),
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        pipeline(
            source,
            memory.clone(),
            sink.clone(),
            RecordingSink::new(),
            2,
        )
        .run(CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last(), Some(&6), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "went back: {seen:?}");
    let violations = violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
}
