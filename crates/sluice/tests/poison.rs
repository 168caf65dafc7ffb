use std::sync::Arc;

use serde_json::{Value, json};
use sluice::{
    Checkpoint, Envelope, EnvelopeMeta, ErrorClass, MemoryStore, OnError, Pipeline, PipelineError,
    Rejected, Resource, Resources, TransformError, Transformed,
    testing::{RecordingSink, ScriptedItem, ScriptedSource},
};
use tokio_util::sync::CancellationToken;

use crate::common::{fast_options, limits, ns, pipeline};

fn at(resource: &str, payload: Value, position: u64) -> Envelope<Value> {
    Envelope::new(resource, payload).with_checkpoint(Checkpoint::new("p", position))
}

fn failing_transform(
    payload: &Value,
    _: &EnvelopeMeta<'_>,
) -> Result<Transformed<Value>, TransformError> {
    if payload["bad"].as_bool() == Some(true) {
        Err(TransformError::new("field bad is set"))
    } else {
        Ok(Transformed::One(payload.clone()))
    }
}

/// Unknown resource, non-record payload and undecodable input each become a dead letter with
/// its reason; the envelopes around them are written; the cursor passes them.
#[tokio::test]
async fn poison_goes_to_the_dead_letters_and_the_pipeline_goes_on() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let dead = RecordingSink::new();
    let source = ScriptedSource::from_items(vec![
        ScriptedItem::Envelope(at("r", json!({"n": 0}), 1)),
        ScriptedItem::Envelope(at("nope", json!({"n": 1}), 2)),
        ScriptedItem::Envelope(at("r", json!(42), 3)),
        ScriptedItem::Rejected(Rejected {
            resource: "r".into(),
            raw: "{not json".into(),
            reason: "expected value at line 1".into(),
            checkpoint: Some(Checkpoint::new("p", 4)),
        }),
        ScriptedItem::Envelope(at("r", json!({"n": 4}), 5)),
    ]);
    pipeline(source, memory.clone(), sink.clone(), dead.clone(), 100)
        .run(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(ns(&sink.rows()), vec![0, 4]);
    let letters = dead.rows();
    let reasons: Vec<_> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(letters.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("no resource named \"nope\""));
    assert!(reasons[1].contains("not a JSON object"));
    assert_eq!(letters[2].payload, "{not json");
    assert_eq!(letters[1].payload, "42");
    assert_eq!(letters[0].position.as_deref(), Some("2"));
    assert_eq!(
        memory.snapshot("p").get("p").and_then(|p| p.as_int()),
        Some(5)
    );
}

/// A transform error follows the resource's policy: dead letter, skip (counted), or fail.
#[tokio::test]
async fn transform_errors_follow_the_resource_policy() {
    for policy in [OnError::DeadLetter, OnError::Skip, OnError::Fail] {
        let sink = RecordingSink::new();
        let dead = RecordingSink::new();
        let source = ScriptedSource::new(vec![
            at("r", json!({"n": 0}), 1),
            at("r", json!({"n": 1, "bad": true}), 2),
            at("r", json!({"n": 2}), 3),
        ]);
        let run = Pipeline::new(
            "p",
            source,
            Arc::new(MemoryStore::new()),
            Resources::new().with(
                "r",
                Resource::with_transform("main", failing_transform).on_error(policy),
            ),
        )
        .sink("main", sink.clone(), limits(100))
        .dead_letters(dead.clone(), limits(100))
        .options(fast_options());
        let stats = run.stats();
        let result = run.run(CancellationToken::new()).await;
        match policy {
            OnError::DeadLetter => {
                result.unwrap();
                assert_eq!(ns(&sink.rows()), vec![0, 2]);
                assert_eq!(dead.rows().len(), 1);
                assert_eq!(dead.rows()[0].reason, "field bad is set");
            }
            OnError::Skip => {
                result.unwrap();
                assert_eq!(ns(&sink.rows()), vec![0, 2]);
                assert!(dead.rows().is_empty());
                assert_eq!(stats.snapshot().skipped, 1);
            }
            OnError::Fail => {
                let error = result.unwrap_err();
                assert!(matches!(error, PipelineError::Poison { .. }), "{error}");
                assert!(error.to_string().contains("field bad is set"));
                assert!(dead.rows().is_empty());
            }
        }
    }
}

/// A record the destination rejects is isolated by bisecting the batch: the rest of the batch
/// is written, only the bad record is dead-lettered.
#[tokio::test]
async fn a_record_the_destination_rejects_is_isolated_from_its_batch() {
    let memory = Arc::new(MemoryStore::new());
    let sink =
        RecordingSink::new().rejecting(|r: &Value| r["n"] == json!(5) || r["n"] == json!(12));
    let dead = RecordingSink::new();
    let log = (0..16).map(|n| at("r", json!({"n": n}), n + 1)).collect();
    pipeline(
        ScriptedSource::new(log),
        memory.clone(),
        sink.clone(),
        dead.clone(),
        16,
    )
    .run(CancellationToken::new())
    .await
    .unwrap();
    let expected: Vec<u64> = (0..16).filter(|n| *n != 5 && *n != 12).collect();
    assert_eq!(ns(&sink.rows()), expected, "order kept, nothing else lost");
    let payloads: Vec<Value> = dead
        .rows()
        .iter()
        .map(|l| serde_json::from_str(&l.payload).unwrap())
        .collect();
    assert_eq!(payloads, vec![json!({"n": 5}), json!({"n": 12})]);
    assert!(
        dead.rows()[0]
            .reason
            .contains("rejected by the destination")
    );
    assert_eq!(
        memory.snapshot("p").get("p").and_then(|p| p.as_int()),
        Some(16)
    );
}

/// The cursor moves past a dead letter only after the dead-letter write.
#[tokio::test]
async fn the_cursor_waits_for_the_dead_letter_write() {
    let memory = Arc::new(MemoryStore::new());
    let sink = RecordingSink::new();
    let dead = RecordingSink::new();
    dead.fail_next(1, ErrorClass::Fatal);
    let log = vec![
        at("r", json!({"n": 0}), 1),
        at("nope", json!({"n": 1}), 2),
        at("r", json!({"n": 2}), 3),
    ];
    let error = pipeline(
        ScriptedSource::new(log),
        memory.clone(),
        sink.clone(),
        dead,
        100,
    )
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(
        matches!(error, PipelineError::Sink { ref destination, .. } if destination == "dead_letters"),
        "{error}"
    );
    assert_eq!(ns(&sink.rows()), vec![0, 2]);
    let saved = memory.snapshot("p").get("p").and_then(|p| p.as_int());
    assert!(
        saved.is_none_or(|p| p < 2),
        "cursor passed an unwritten dead letter: {saved:?}"
    );
}

/// A pipeline that may dead-letter refuses to start without a dead-letter destination.
#[tokio::test]
async fn dead_letter_policy_without_a_destination_is_a_config_error() {
    let error = Pipeline::new(
        "p",
        ScriptedSource::new(vec![at("r", json!({}), 1)]),
        Arc::new(MemoryStore::new()),
        Resources::new().with("r", Resource::direct("main")),
    )
    .sink("main", RecordingSink::<Value>::new(), limits(10))
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(matches!(error, PipelineError::Config { .. }));
    assert!(error.to_string().contains("dead-letter"));
}

/// A resource that names an undefined destination is a config error naming both.
#[tokio::test]
async fn an_undefined_destination_is_a_config_error() {
    let error = Pipeline::new(
        "p",
        ScriptedSource::new(vec![at("r", json!({}), 1)]),
        Arc::new(MemoryStore::new()),
        Resources::new()
            .with("r", Resource::direct("elsewhere"))
            .on_unknown(OnError::Skip),
    )
    .sink("main", RecordingSink::<Value>::new(), limits(10))
    .dead_letters(RecordingSink::new(), limits(10))
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(error.to_string().contains("\"elsewhere\""), "{error}");
}

/// A counter's name and its labels.
type Registered = (String, Vec<(String, String)>);

/// Records the label sets of every counter registered (a recorder for this thread only).
#[derive(Default)]
struct Labels(std::sync::Mutex<Vec<Registered>>);

impl metrics::Recorder for Labels {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        self.0.lock().unwrap().push((key.name().to_owned(), labels));
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Resource names an input chose (unknown resources) never become metric label values: one
/// `unknown` series for all of them, so hostile input cannot grow the series without bound.
#[test]
fn unknown_resources_share_one_metric_label() {
    let recorder = Labels::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dead = RecordingSink::new();
    let items = (0..20)
        .map(|i| ScriptedItem::Envelope(at(&format!("evil-{i}"), json!({"n": i}), i + 1)))
        .collect();
    runtime
        .block_on(
            pipeline(
                ScriptedSource::from_items(items),
                Arc::new(MemoryStore::new()),
                RecordingSink::new(),
                dead.clone(),
                10,
            )
            .run(CancellationToken::new()),
        )
        .unwrap();
    assert_eq!(dead.rows().len(), 20);
    let seen = recorder.0.lock().unwrap();
    let values: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter(|(name, _)| name == "sluice_dead_letters_total")
        .flat_map(|(_, labels)| labels.iter())
        .filter(|(k, _)| k == "resource")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values, std::collections::BTreeSet::from(["unknown"]));
}
