use std::{collections::HashSet, sync::Arc, time::Duration};

use serde_json::Value;
use sluice::{
    BackoffPolicy, Checkpoint, CheckpointStore, Envelope, ErrorClass, MemoryStore, PipelineExit,
    PipelineOptions, Position,
    testing::{RecordingSink, ScriptedSource, SessionScript, json_log},
};
use tokio_util::sync::CancellationToken;

use crate::common::{fast_options, ns, pipeline};

/// Invariant 9: when the destination and the store share a transaction, cursors commit with the
/// records; a crash at any point and a restart leave every envelope exactly once.
#[tokio::test]
async fn crashes_with_a_transactional_destination_leave_every_envelope_exactly_once() {
    let store = Arc::new(MemoryStore::with_scope("mem:db"));
    let sink = RecordingSink::<Value>::new().transactional_with(store.clone(), "mem:db");
    crash_until_done(&store, &sink, 50, 5, 7).await;
    let rows = ns(&sink.rows());
    let unique: HashSet<_> = rows.iter().collect();
    assert_eq!(rows.len(), unique.len(), "duplicates after crashes");
    assert_eq!(unique.len() as u64, 200, "envelopes lost");
}

/// Runs the 200-envelope log into `sink` again and again, dropping the whole pipeline (a crash,
/// no drain) after 1 to `spread` writes each round, until a round finishes; asserts it crashed
/// more than 3 times.
async fn crash_until_done(
    store: &Arc<MemoryStore>,
    sink: &RecordingSink<Value>,
    rounds: u64,
    spread: u64,
    batch: usize,
) {
    let mut crashes = 0;
    for round in 0..rounds {
        let source = ScriptedSource::new(json_log("r", 200, 2)).sessions([], SessionScript::Finish);
        let run = pipeline(
            source,
            store.clone(),
            sink.clone(),
            RecordingSink::new(),
            batch,
        )
        .run(CancellationToken::new());
        let writes_before = sink.calls();
        let crash_after = 1 + (round % spread) as usize;
        let crashed = tokio::select! {
            result = run => { result.unwrap(); false }
            _ = async { while sink.calls() < writes_before + crash_after { tokio::task::yield_now().await } } => true,
        };
        crashes += crashed as u32;
        if !crashed {
            break;
        }
    }
    assert!(crashes > 3, "the test did not crash the pipeline");
}

/// Invariant 9 with a record the destination rejects: the batch is bisected and its parts
/// commit one by one; each part carries the cursors of what is done before its end, so a crash
/// between two parts replays nothing already committed (no duplicate in a keyless table).
#[tokio::test]
async fn crashes_while_a_batch_is_bisected_leave_every_envelope_exactly_once() {
    let store = Arc::new(MemoryStore::with_scope("mem:db"));
    let sink = RecordingSink::<Value>::new()
        .transactional_with(store.clone(), "mem:db")
        .rejecting(|r: &Value| r["n"] == 37 || r["n"] == 118);
    // Crash points spread over the parts of the bisected batches.
    crash_until_done(&store, &sink, 80, 9, 8).await;
    let rows = ns(&sink.rows());
    let unique: HashSet<_> = rows.iter().collect();
    assert_eq!(rows.len(), unique.len(), "duplicates after crashes");
    assert_eq!(unique.len(), 200 - 2, "envelopes lost");
}

/// Invariant 9 when few envelopes carry a cursor (a Realtime change, a row inside a
/// replicated transaction, a fan-out's records): no write after a part of a bisected batch may
/// hand the sink a cursor that part already committed, neither a later part nor the dead
/// letters written in the same transaction. The sink (as the Postgres sink does) takes a write
/// whose cursors are all stored for a retried commit and skips it: before the fix, rejecting
/// row 8 lost rows 5 and 6 (a later part), rejecting row 7 with transactional dead letters
/// lost its dead letter.
#[tokio::test]
async fn no_write_after_a_committed_part_carries_its_cursors_again() {
    for (poison, dead_in_the_transaction) in [(8, false), (8, true), (7, false), (7, true)] {
        let case =
            format!("row {poison} rejected, transactional dead letters: {dead_in_the_transaction}");
        let store = Arc::new(MemoryStore::with_scope("mem:db"));
        let sink = RecordingSink::<Value>::new()
            .transactional_with(store.clone(), "mem:db")
            .rejecting(move |r: &Value| r["n"] == poison);
        let dead = if dead_in_the_transaction {
            RecordingSink::new().transactional_with(store.clone(), "mem:db")
        } else {
            RecordingSink::new()
        };
        let log = (0..40u64)
            .map(|n| {
                let envelope = Envelope::new("r", serde_json::json!({ "n": n }));
                if n % 10 == 0 {
                    envelope.with_checkpoint(Checkpoint::new("p0", Position::Int(n / 10 + 1)))
                } else {
                    envelope
                }
            })
            .collect();
        pipeline(
            ScriptedSource::new(log),
            store.clone(),
            sink.clone(),
            dead.clone(),
            40,
        )
        .run(CancellationToken::new())
        .await
        .unwrap();
        let mut rows = ns(&sink.rows());
        rows.sort_unstable();
        let expected: Vec<u64> = (0..40).filter(|n| *n != poison).collect();
        assert_eq!(
            rows, expected,
            "{case}: every row but the rejected one, once"
        );
        assert_eq!(
            dead.rows().len(),
            1,
            "{case}: the rejected row is dead-lettered"
        );
        assert_eq!(
            store.snapshot("p").get("p0").and_then(|p| p.as_int()),
            Some(4),
            "{case}"
        );
    }
}

/// Invariant 8 across the whole life of a pipeline: a lease of 150 ms is kept through the
/// reconnect backoff (up to 2 s here), not only inside sessions, so nobody else can take the
/// pipeline while this one is alive and about to write again.
#[tokio::test]
async fn the_lease_is_kept_through_reconnect_backoffs() {
    let store = Arc::new(MemoryStore::new());
    let disconnects = (0..8).map(|_| SessionScript::DisconnectAfter(1, ErrorClass::Transient));
    let slow = BackoffPolicy {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(2),
        multiplier: 1.0,
        stable_after: Duration::from_secs(60),
    };
    let shutdown = CancellationToken::new();
    let first = pipeline(
        ScriptedSource::new(json_log("r", 10, 1)).sessions(disconnects, SessionScript::Hold),
        store.clone(),
        RecordingSink::new(),
        RecordingSink::new(),
        10,
    )
    .options(PipelineOptions {
        holder: "host:1".into(),
        lease_ttl: Duration::from_millis(150),
        reconnect: slow,
        ..fast_options()
    });
    let stats = first.stats();
    let handle = tokio::spawn(first.run(shutdown.clone()));
    let started = tokio::time::Instant::now();
    let mut tries = 0;
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tries += 1;
        let taken = store.acquire("p", "host:2", Duration::from_secs(10)).await;
        assert!(
            taken.is_err(),
            "a second holder took the pipeline after {:?}, {} reconnects in",
            started.elapsed(),
            stats.snapshot().reconnects
        );
    }
    assert!(stats.snapshot().reconnects >= 1, "the backoff happened");
    assert!(tries > 40);
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

/// Invariant 9: the transactional path saves no cursor outside the write.
#[tokio::test]
async fn a_transactional_destination_commits_the_cursor_in_its_write() {
    let store = Arc::new(MemoryStore::with_scope("mem:db"));
    let sink = RecordingSink::<Value>::new().transactional_with(store.clone(), "mem:db");
    let run = pipeline(
        ScriptedSource::new(json_log("r", 30, 1)),
        store.clone(),
        sink.clone(),
        RecordingSink::new(),
        10,
    );
    let stats = run.stats();
    run.run(CancellationToken::new()).await.unwrap();
    assert_eq!(sink.batches(), vec![10, 10, 10]);
    assert_eq!(stats.snapshot().checkpoint_saves, 3);
    assert_eq!(
        store.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(30)
    );
}

/// Invariant 8: a second runner of the same pipeline id is refused while the first holds the
/// lease, and may start once the first stopped cleanly.
#[tokio::test]
async fn a_pipeline_id_runs_in_one_place_at_a_time() {
    let store = Arc::new(MemoryStore::new());
    let shutdown = CancellationToken::new();
    let first = pipeline(
        ScriptedSource::new(json_log("r", 3, 1)).sessions([], SessionScript::Hold),
        store.clone(),
        RecordingSink::new(),
        RecordingSink::new(),
        10,
    )
    .options(PipelineOptions {
        holder: "host:1".into(),
        ..fast_options()
    });
    let handle = tokio::spawn(first.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let second = || {
        pipeline(
            ScriptedSource::new(json_log("r", 3, 1)),
            store.clone(),
            RecordingSink::new(),
            RecordingSink::new(),
            10,
        )
        .options(PipelineOptions {
            holder: "host:2".into(),
            ..fast_options()
        })
    };
    let error = second().run(CancellationToken::new()).await.unwrap_err();
    assert!(
        error.to_string().contains("checkpoint store failed"),
        "{error}"
    );
    assert!(
        sluice::report(&error).contains("already running (host:1)"),
        "{}",
        sluice::report(&error)
    );

    shutdown.cancel();
    handle.await.unwrap().unwrap();
    second().run(CancellationToken::new()).await.unwrap();
}

/// A fleet worker given a pipeline whose lease is still live waits for it instead of failing,
/// and takes it (a new token) once the holder lets go.
#[tokio::test]
async fn a_waiting_worker_takes_the_pipeline_when_the_live_lease_ends() {
    let store = Arc::new(MemoryStore::new());
    let shutdown = CancellationToken::new();
    let first = pipeline(
        ScriptedSource::new(json_log("r", 3, 1)).sessions([], SessionScript::Hold),
        store.clone(),
        RecordingSink::new(),
        RecordingSink::new(),
        10,
    )
    .options(PipelineOptions {
        holder: "host:1".into(),
        ..fast_options()
    });
    let handle = tokio::spawn(first.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let sink = RecordingSink::new();
    let second = pipeline(
        ScriptedSource::new(json_log("r", 6, 1)),
        store.clone(),
        sink.clone(),
        RecordingSink::new(),
        10,
    )
    .options(PipelineOptions {
        holder: "host:2".into(),
        wait_for_lease: true,
        ..fast_options()
    });
    let waiting = tokio::spawn(second.run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the waiting worker must neither fail nor run while the lease is live"
    );
    assert!(sink.rows().is_empty());

    shutdown.cancel();
    handle.await.unwrap().unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting worker takes the released lease")
        .unwrap()
        .unwrap();
    assert_eq!(exit, PipelineExit::Completed);
    assert_eq!(
        sink.rows().len(),
        3,
        "it resumes from the first holder's durable cursor"
    );
}
