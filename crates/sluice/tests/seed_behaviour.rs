use std::sync::Arc;

use serde_json::{Value, json};
use sluice::{
    Checkpoint, Envelope, EnvelopeMeta, ErrorClass, MemoryStore, Pipeline, PipelineError,
    PipelineExit, Resource, Resources, TransformError, Transformed,
    testing::{RecordingSink, ScriptedSource},
};
use tokio_util::sync::CancellationToken;

use crate::common::{fast_options, limits, pipeline, positions, recording_store};

fn seq_envelope(resource: &str, payload: Value, sequence: u64) -> Envelope<Value> {
    Envelope::new(resource, payload).with_checkpoint(Checkpoint::new("default", sequence))
}

/// Seed case 1: one envelope to a destination gives one write and one saved checkpoint.
#[tokio::test]
async fn one_envelope_gives_one_write_and_one_checkpoint() {
    let (_memory, store, saves) = recording_store();
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(vec![seq_envelope(
        "r",
        json!({"sequence": 1, "value": "A"}),
        1,
    )]);
    let exit = pipeline(source, store, sink.clone(), RecordingSink::new(), 100)
        .run(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(exit, PipelineExit::Completed);
    assert_eq!(sink.rows(), vec![json!({"sequence": 1, "value": "A"})]);
    assert_eq!(positions(&saves.lock().unwrap()), vec![1]);
}

/// Seed case 2: one / fan-out / drop. The seed never saves the dropped envelope's checkpoint;
/// sluice saves it once everything before it is durable, so a filter-heavy stream does not lag
/// (docs/contracts.md, "drops advance the cursor").
#[tokio::test]
async fn transform_writes_one_fans_out_and_drops_and_the_drop_still_advances_the_cursor() {
    let (memory, store, saves) = recording_store();
    let sink = RecordingSink::new();
    let transform = |payload: &Value,
                     _: &EnvelopeMeta<'_>|
     -> Result<Transformed<Value>, TransformError> {
        Ok(match payload["kind"].as_str() {
            Some("single") => Transformed::One(json!({"id": "a"})),
            Some("fanout") => Transformed::Many(vec![json!({"id": "b-1"}), json!({"id": "b-2"})]),
            _ => Transformed::Drop,
        })
    };
    let source = ScriptedSource::new(vec![
        seq_envelope("r", json!({"kind": "single"}), 1),
        seq_envelope("r", json!({"kind": "fanout"}), 2),
        seq_envelope("r", json!({"kind": "drop"}), 3),
    ]);
    Pipeline::new(
        "p",
        source,
        store,
        Resources::new().with("r", Resource::with_transform("main", transform)),
    )
    .sink("main", sink.clone(), limits(100))
    .dead_letters(RecordingSink::new(), limits(100))
    .options(fast_options())
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(
        sink.rows(),
        vec![
            json!({"id": "a"}),
            json!({"id": "b-1"}),
            json!({"id": "b-2"})
        ]
    );
    // Batching: one write for the three envelopes, one save covering all three.
    assert_eq!(sink.batches(), vec![3]);
    assert_eq!(positions(&saves.lock().unwrap()), vec![3]);
    assert_eq!(
        memory.snapshot("p").get("default").and_then(|p| p.as_int()),
        Some(3)
    );
}

/// Seed case 3: an envelope without a checkpoint is written and no save happens.
#[tokio::test]
async fn an_envelope_without_checkpoint_is_written_without_a_save() {
    let (memory, store, saves) = recording_store();
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(vec![Envelope::new("r", json!({"v": 1}))]);
    pipeline(source, store, sink.clone(), RecordingSink::new(), 100)
        .run(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(sink.rows().len(), 1);
    assert!(saves.lock().unwrap().is_empty());
    assert!(memory.snapshot("p").is_empty());
}

/// Seed case 4, transient: the seed poisons its chain on a failed write, loses the rest of the
/// connection and resumes from memory. sluice retries the write, loses nothing, and saves
/// only after it succeeded.
#[tokio::test]
async fn a_failed_second_write_is_retried_and_nothing_is_lost() {
    let (_memory, store, saves) = recording_store();
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(
        (1..=3)
            .map(|i| seq_envelope("r", json!({"n": i}), i))
            .collect(),
    );
    // The first write succeeds; the second fails twice, then succeeds.
    sink.pass_next(1);
    sink.fail_next(2, ErrorClass::Transient);
    pipeline(source, store, sink.clone(), RecordingSink::new(), 1)
        .run(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(sink.calls(), 5);
    assert_eq!(crate::common::ns(&sink.rows()), vec![1, 2, 3]);
    let saved = positions(&saves.lock().unwrap());
    assert!(
        saved.windows(2).all(|w| w[0] < w[1]),
        "saves moved backwards: {saved:?}"
    );
    assert_eq!(saved.last(), Some(&3));
}

/// Seed case 4, fatal: the pipeline stops with the write's error; the saved cursor is the
/// first envelope's, and the next start resumes from the store (not from memory).
#[tokio::test]
async fn a_fatal_second_write_stops_and_the_restart_resumes_from_the_store() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let log: Vec<_> = (1..=3)
        .map(|i| seq_envelope("r", json!({"n": i}), i))
        .collect();
    sink.pass_next(1);
    sink.fail_next(1, ErrorClass::Fatal);
    let source = ScriptedSource::new(log.clone());
    let starts = source.starts();
    let handle = tokio::spawn(
        pipeline(
            source,
            memory.clone(),
            sink.clone(),
            RecordingSink::new(),
            1,
        )
        .run(CancellationToken::new()),
    );
    let error = handle.await.unwrap().unwrap_err();
    assert!(matches!(error, PipelineError::Sink { .. }), "{error}");
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert_eq!(
        starts.lock().unwrap()[0].len(),
        0,
        "first start has no cursor"
    );
    assert_eq!(
        memory.snapshot("p").get("default").and_then(|p| p.as_int()),
        Some(1)
    );

    let source = ScriptedSource::new(log);
    let starts = source.starts();
    pipeline(
        source,
        memory.clone(),
        sink.clone(),
        RecordingSink::new(),
        1,
    )
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(
        starts.lock().unwrap()[0]
            .get("default")
            .and_then(|p| p.as_int()),
        Some(1)
    );
    assert_eq!(crate::common::ns(&sink.rows()), vec![1, 2, 3]);
}
