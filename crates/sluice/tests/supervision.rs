use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sluice::{
    BackoffPolicy, ErrorClass, PipelineError, PipelineExit, PipelineState, SourceError, Supervisor,
};
use tokio_util::sync::CancellationToken;

fn quick() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        stable_after: Duration::from_secs(5),
    }
}

/// A pipeline that panics or fails transiently is restarted; the others are not disturbed.
#[tokio::test]
async fn panics_and_transient_failures_are_restarted() {
    let mut supervisor = Supervisor::new(CancellationToken::new(), quick());
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    supervisor.spawn("flaky", move |_| {
        let attempt = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match attempt {
                0 => panic!("boom"),
                1 => Err(PipelineError::Source {
                    pipeline: "flaky".into(),
                    source: SourceError::transient("down"),
                }),
                _ => Ok(PipelineExit::Completed),
            }
        }
    });
    supervisor.spawn("steady", |_| async { Ok(PipelineExit::Completed) });
    let health = supervisor.health();
    let mut ended = supervisor.wait().await;
    ended.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(starts.load(Ordering::SeqCst), 3);
    assert!(matches!(ended[0], (ref id, Ok(PipelineExit::Completed)) if id == "flaky"));
    assert!(matches!(ended[1], (ref id, Ok(PipelineExit::Completed)) if id == "steady"));
    assert_eq!(
        health.lock().unwrap().get("flaky"),
        Some(&PipelineState::Completed)
    );
}

/// A fatal error is not restarted: the pipeline is reported failed, once.
#[tokio::test]
async fn a_fatal_failure_is_not_restarted() {
    let mut supervisor = Supervisor::new(CancellationToken::new(), quick());
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    supervisor.spawn("broken", move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            Err(PipelineError::Source {
                pipeline: "broken".into(),
                source: SourceError::fatal("bad credentials"),
            })
        }
    });
    let health = supervisor.health();
    let ended = supervisor.wait().await;
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    let error = ended[0].1.as_ref().unwrap_err();
    assert_eq!(error.class(), ErrorClass::Fatal);
    let state = health.lock().unwrap().get("broken").cloned();
    assert!(
        matches!(state, Some(PipelineState::Failed { ref error }) if error.contains("bad credentials")),
        "{state:?}"
    );
}

/// Shutdown stops a pipeline waiting to restart.
#[tokio::test]
async fn shutdown_ends_a_restart_wait() {
    let shutdown = CancellationToken::new();
    let slow = BackoffPolicy {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        ..quick()
    };
    let mut supervisor = Supervisor::new(shutdown.clone(), slow);
    supervisor.spawn("failing", |_| async {
        Err(PipelineError::Source {
            pipeline: "failing".into(),
            source: SourceError::transient("down"),
        })
    });
    let waiting = tokio::spawn(supervisor.wait());
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended[0].1, Ok(PipelineExit::Stopped)));
}
