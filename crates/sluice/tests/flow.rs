use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use sluice::{
    Checkpoint, CheckpointCommit, Envelope, ErrorClass, MemoryStore, PipelineError, PipelineExit,
    SessionEnd, Sink, SinkError, Source, SourceContext, SourceError,
    testing::{RecordingSink, ScriptedSource, SessionScript, json_log},
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::common::{ns, pipeline};

/// An endless source that counts what it emitted.
struct Endless {
    emitted: Arc<AtomicU64>,
}

impl Source for Endless {
    type Payload = Value;

    fn name(&self) -> &str {
        "endless"
    }

    async fn run(&mut self, ctx: SourceContext<Value>) -> Result<SessionEnd, SourceError> {
        let start = ctx.resume_after("p").and_then(|p| p.as_int()).unwrap_or(0);
        for n in start.. {
            ctx.emit(
                Envelope::new("r", json!({"n": n})).with_checkpoint(Checkpoint::new("p", n + 1)),
            )
            .await?;
            self.emitted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(SessionEnd::Finished)
    }
}

/// A sink whose writes wait for permits.
#[derive(Clone)]
struct Gated {
    permits: Arc<Semaphore>,
    inner: RecordingSink<Value>,
}

impl Sink<Value> for Gated {
    async fn write(
        &mut self,
        batch: &[Value],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.permits.acquire().await.expect("open").forget();
        self.inner.write(batch, commit).await
    }
}

/// Invariant 6: a stalled sink stops the source (backpressure); nothing buffers without bound.
#[tokio::test]
async fn a_stalled_sink_pauses_the_source() {
    let emitted = Arc::new(AtomicU64::new(0));
    let gated = Gated {
        permits: Arc::new(Semaphore::new(0)),
        inner: RecordingSink::new(),
    };
    let shutdown = CancellationToken::new();
    let run = sluice::Pipeline::new(
        "p",
        Endless {
            emitted: emitted.clone(),
        },
        Arc::new(MemoryStore::new()),
        sluice::Resources::new().with("r", sluice::Resource::direct("main")),
    )
    .sink("main", gated.clone(), crate::common::limits(100))
    .dead_letters(RecordingSink::new(), crate::common::limits(10))
    .options(sluice::PipelineOptions {
        drain_timeout: Duration::from_millis(200),
        ..crate::common::fast_options()
    });
    let handle = tokio::spawn(run.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = emitted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        emitted.load(Ordering::Relaxed),
        stalled,
        "source kept reading while the sink was stalled"
    );
    // Bound: one batch in the sink (100) + one chunk in hand (512) + the channel (16) + one.
    assert!(
        stalled <= 100 + 512 + 16 + 1,
        "{stalled} envelopes read ahead of a stalled sink"
    );
    // Let it go: writes resume and the source follows.
    gated.permits.add_permits(1000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(emitted.load(Ordering::Relaxed) > stalled);
    // The sink is open for good now: the drain writes what is in flight and the stop is clean.
    gated.permits.add_permits(Semaphore::MAX_PERMITS / 2);
    shutdown.cancel();
    let exit = handle.await.unwrap();
    assert_eq!(exit.unwrap(), PipelineExit::Stopped);
}

/// A destination that is never ready (its `prepare` fails, transiently, forever).
#[derive(Debug)]
struct NeverReady;

impl Sink<Value> for NeverReady {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        Err(SinkError::transient("not ready"))
    }

    async fn write(
        &mut self,
        _: &[Value],
        _: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Invariant 7: a shutdown while a destination is still being prepared is a clean stop —
/// nothing was written, nothing is lost — not a failure.
#[tokio::test]
async fn shutdown_while_a_destination_is_prepared_is_a_clean_stop() {
    let shutdown = CancellationToken::new();
    let run = sluice::Pipeline::new(
        "p",
        ScriptedSource::new(json_log("r", 5, 1)),
        Arc::new(MemoryStore::new()),
        sluice::Resources::new().with("r", sluice::Resource::direct("main")),
    )
    .sink("main", NeverReady, crate::common::limits(10))
    .dead_letters(RecordingSink::new(), crate::common::limits(10))
    .options(crate::common::fast_options());
    let handle = tokio::spawn(run.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!handle.is_finished(), "still preparing");
    shutdown.cancel();
    assert_eq!(handle.await.unwrap().unwrap(), PipelineExit::Stopped);
}

/// Invariant 7: shutdown stops the source, flushes what is in flight, saves, and exits cleanly.
#[tokio::test]
async fn shutdown_flushes_in_flight_work_and_saves() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(json_log("r", 50, 1)).sessions([], SessionScript::Hold);
    let shutdown = CancellationToken::new();
    // A batch limit above the log size and a long linger: only the drain can write these.
    let run = sluice::Pipeline::new(
        "p",
        source,
        memory.clone(),
        sluice::Resources::new().with("r", sluice::Resource::direct("main")),
    )
    .sink(
        "main",
        sink.clone(),
        sluice::BatchLimits {
            max_records: 1000,
            max_bytes: usize::MAX,
            linger: Duration::from_secs(3600),
        },
    )
    .dead_letters(RecordingSink::new(), crate::common::limits(10))
    .options(sluice::PipelineOptions {
        commit_interval: Duration::from_secs(3600),
        ..crate::common::fast_options()
    });
    let handle = tokio::spawn(run.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(sink.rows().is_empty());
    shutdown.cancel();
    assert_eq!(handle.await.unwrap().unwrap(), PipelineExit::Stopped);
    assert_eq!(ns(&sink.rows()), (0..50).collect::<Vec<_>>());
    assert_eq!(
        memory.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(50)
    );
}

/// Invariant 7: with the sink down, shutdown gives up after the drain timeout without saving
/// the unwritten cursor; a retry wait is not allowed to hold the process.
#[tokio::test(start_paused = true)]
async fn shutdown_with_the_sink_down_ends_at_the_drain_timeout_without_saving() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    sink.fail_next(usize::MAX, ErrorClass::Transient);
    let source = ScriptedSource::new(json_log("r", 5, 1)).sessions([], SessionScript::Hold);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(
        pipeline(
            source,
            memory.clone(),
            sink.clone(),
            RecordingSink::new(),
            2,
        )
        .run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = tokio::time::Instant::now();
    shutdown.cancel();
    let error = handle.await.unwrap().unwrap_err();
    assert!(
        matches!(error, PipelineError::DrainTimeout { .. }),
        "{error}"
    );
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(memory.snapshot("p").is_empty());
    assert!(
        sink.calls() > 3,
        "writes were retried while the sink was down"
    );
}

/// The idle watchdog turns a silent session into a reconnect from the saved cursor.
#[tokio::test]
async fn a_silent_session_is_reopened_by_the_watchdog() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(json_log("r", 10, 1))
        .sessions([SessionScript::StallAfter(4)], SessionScript::Finish)
        .idle_timeout(Duration::from_millis(100));
    let starts = source.starts();
    let run = pipeline(source, memory, sink.clone(), RecordingSink::new(), 2);
    let stats = run.stats();
    run.run(CancellationToken::new()).await.unwrap();
    assert_eq!(ns(&sink.rows()), (0..10).collect::<Vec<_>>());
    assert_eq!(stats.snapshot().reconnects, 1);
    assert_eq!(
        starts.lock().unwrap()[1].get("p0").and_then(|p| p.as_int()),
        Some(4)
    );
}

/// Regression: lease renewals more frequent than the idle timeout must not reset the watchdog.
#[tokio::test]
async fn the_watchdog_fires_even_when_the_lease_renews_more_often() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let source = ScriptedSource::new(json_log("r", 10, 1))
        .sessions([SessionScript::StallAfter(4)], SessionScript::Finish)
        .idle_timeout(Duration::from_millis(400));
    let run = pipeline(source, memory, sink.clone(), RecordingSink::new(), 2).options(
        sluice::PipelineOptions {
            lease_ttl: Duration::from_millis(150),
            ..crate::common::fast_options()
        },
    );
    let stats = run.stats();
    tokio::time::timeout(Duration::from_secs(10), run.run(CancellationToken::new()))
        .await
        .expect("the watchdog fired")
        .unwrap();
    assert_eq!(ns(&sink.rows()), (0..10).collect::<Vec<_>>());
    assert_eq!(stats.snapshot().reconnects, 1);
}

/// Runs an endless pipeline that `paused` pauses: its stats, its shutdown, its task.
fn run_pausable(
    memory: &Arc<MemoryStore>,
    sink: &RecordingSink<Value>,
    emitted: Arc<AtomicU64>,
    paused: tokio::sync::watch::Receiver<bool>,
) -> (
    Arc<sluice::PipelineStats>,
    CancellationToken,
    tokio::task::JoinHandle<Result<PipelineExit, PipelineError>>,
) {
    let run = pipeline(
        Endless { emitted },
        memory.clone(),
        sink.clone(),
        RecordingSink::new(),
        100,
    )
    .pausable(paused);
    let stats = run.stats();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run.run(shutdown.clone()));
    (stats, shutdown, handle)
}

/// An operator's pause: the session stops, what it sent is written and saved, nothing more is
/// written, the lease stays held (no one else takes the pipeline) and it is not ready; a resume
/// starts a session from the saved cursor — nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_writes_and_saves_keeps_the_lease_and_a_resume_goes_on() {
    use sluice::CheckpointStore as _;
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let (pause, paused) = tokio::sync::watch::channel(false);
    let (stats, shutdown, handle) = run_pausable(&memory, &sink, Arc::default(), paused);
    sluice::testing::eventually("records", Duration::from_secs(10), || {
        sink.rows().len() > 1000
    })
    .await;
    pause.send_replace(true);
    sluice::testing::eventually("paused", Duration::from_secs(10), || {
        stats.snapshot().paused
    })
    .await;
    let written = sink.rows().len() as u64;
    assert_eq!(
        memory.snapshot("p").get("p").and_then(|p| p.as_int()),
        Some(written),
        "everything written is saved"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sink.rows().len() as u64,
        written,
        "nothing is written while paused"
    );
    assert!(!stats.snapshot().ready());
    assert!(
        memory
            .acquire("p", "someone-else", Duration::from_secs(5))
            .await
            .is_err(),
        "the lease is kept while paused"
    );
    pause.send_replace(false);
    sluice::testing::eventually("resumed", Duration::from_secs(10), || {
        sink.rows().len() as u64 > written + 1000
    })
    .await;
    assert!(!stats.snapshot().paused);
    shutdown.cancel();
    assert_eq!(handle.await.unwrap().unwrap(), PipelineExit::Stopped);
    let got = ns(&sink.rows());
    assert_eq!(
        got,
        (0..got.len() as u64).collect::<Vec<_>>(),
        "no loss, no repeat"
    );
}

/// A pipeline paused before it starts opens no session; when its controller goes away while
/// it is paused it stays paused (no session, no spinning) until shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_paused_from_the_start_stays_paused_when_its_controller_goes() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let emitted = Arc::new(AtomicU64::new(0));
    let (pause, paused) = tokio::sync::watch::channel(true);
    let (stats, shutdown, handle) = run_pausable(&memory, &sink, emitted.clone(), paused);
    sluice::testing::eventually("paused", Duration::from_secs(10), || {
        stats.snapshot().paused
    })
    .await;
    drop(pause);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        emitted.load(Ordering::Relaxed),
        0,
        "no session while paused"
    );
    assert!(sink.rows().is_empty());
    assert!(stats.snapshot().paused);
    assert_eq!(stats.snapshot().reconnects, 0, "no session loop");
    shutdown.cancel();
    assert_eq!(handle.await.unwrap().unwrap(), PipelineExit::Stopped);
}
