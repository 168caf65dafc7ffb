use std::sync::Arc;

use sluice::{
    ErrorClass, MemoryStore, PipelineError,
    testing::{FlakyStore, RecordingSink, ScriptedSource, SessionScript, json_log},
};
use tokio_util::sync::CancellationToken;

use crate::common::{ns, pipeline};

/// Transient source errors reconnect (with backoff) and lose nothing.
#[tokio::test]
async fn transient_disconnects_reconnect_and_lose_nothing() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let scripts = (0..5).map(|_| SessionScript::DisconnectAfter(3, ErrorClass::Transient));
    let source = ScriptedSource::new(json_log("r", 20, 1)).sessions(scripts, SessionScript::Finish);
    let run = pipeline(source, memory, sink.clone(), RecordingSink::new(), 2);
    let stats = run.stats();
    run.run(CancellationToken::new()).await.unwrap();
    assert_eq!(ns(&sink.rows()), (0..20).collect::<Vec<_>>());
    assert_eq!(stats.snapshot().reconnects, 5);
}

/// A fatal source error (bad credentials, unknown product) stops the pipeline with that error:
/// no reconnect loop.
#[tokio::test]
async fn a_fatal_source_error_stops_without_reconnecting() {
    let source = ScriptedSource::new(json_log("r", 5, 1)).sessions(
        [SessionScript::DisconnectAfter(2, ErrorClass::Fatal)],
        SessionScript::Finish,
    );
    let starts = source.starts();
    let sink = RecordingSink::new();
    let error = pipeline(
        source,
        Arc::new(MemoryStore::new()),
        sink.clone(),
        RecordingSink::new(),
        10,
    )
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(matches!(error, PipelineError::Source { .. }));
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert_eq!(starts.lock().unwrap().len(), 1);
    assert_eq!(
        ns(&sink.rows()),
        vec![0, 1],
        "what was read before the error is still written"
    );
}

/// Transient store failures (load and save) are retried; the cursor is saved in the end.
#[tokio::test]
async fn transient_store_failures_are_retried() {
    let memory = Arc::new(MemoryStore::new());
    let store = FlakyStore::new(memory.clone());
    store.fail_next(3, ErrorClass::Transient); // the first load, then saves
    store.pass_next(1);
    store.fail_next(2, ErrorClass::Transient);
    let sink = RecordingSink::new();
    pipeline(
        ScriptedSource::new(json_log("r", 10, 1)),
        store,
        sink.clone(),
        RecordingSink::new(),
        3,
    )
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(sink.rows().len(), 10);
    assert_eq!(
        memory.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(10)
    );
}

/// A fatal store error stops the pipeline with one clear message.
#[tokio::test]
async fn a_fatal_store_error_stops_the_pipeline() {
    let memory = Arc::new(MemoryStore::new());
    let store = FlakyStore::new(memory.clone());
    store.pass_next(1); // the load
    store.fail_next(1, ErrorClass::Fatal);
    let error = pipeline(
        ScriptedSource::new(json_log("r", 10, 1)),
        store,
        RecordingSink::new(),
        RecordingSink::new(),
        3,
    )
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(matches!(error, PipelineError::Store { .. }), "{error}");
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert!(memory.snapshot("p").is_empty());
}
