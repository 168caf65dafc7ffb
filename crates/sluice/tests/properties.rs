//! Random schedules of sink failures, store failures, disconnects and crashes never save a cursor
//! ahead of the writes and never lose an envelope of a replayable source.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use proptest::prelude::*;
use serde_json::Value;
use sluice::{
    ErrorClass, MemoryStore,
    testing::{FlakyStore, RecordingSink, ScriptedSource, SessionScript, json_log},
};
use tokio_util::sync::CancellationToken;

use crate::common::{ns, pipeline};

#[derive(Clone, Debug)]
enum Step {
    SinkFails(usize),
    StoreFails(usize),
    Pass(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1usize..4).prop_map(Step::SinkFails),
        (1usize..4).prop_map(Step::StoreFails),
        (1usize..6).prop_map(Step::Pass),
    ]
}

fn session() -> impl Strategy<Value = SessionScript> {
    prop_oneof![
        (0usize..40).prop_map(|n| SessionScript::DisconnectAfter(n, ErrorClass::Transient)),
        (0usize..40).prop_map(SessionScript::CloseAfter),
    ]
}

const TOTAL: u64 = 120;
const PARTITIONS: u64 = 3;

/// Envelope `n` is in partition `p{n % 3}` at position `n / 3 + 1`.
fn covered(partition: &str, upto: u64) -> impl Iterator<Item = u64> + '_ {
    let p: u64 = partition[1..].parse().unwrap();
    (0..upto).map(move |i| i * PARTITIONS + p)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_failures_never_save_ahead_and_never_lose(
        steps in proptest::collection::vec(step(), 0..12),
        sessions in proptest::collection::vec(session(), 0..6),
        crashes in proptest::collection::vec(1usize..8, 0..4),
        batch in 1usize..20,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let memory = Arc::new(MemoryStore::new());
            let sink = RecordingSink::<Value>::new();
            let ahead = Arc::new(Mutex::new(Vec::new()));
            let (rows, found) = (sink.clone(), ahead.clone());
            let store = FlakyStore::new(memory.clone()).checking(move |saved| {
                let written: HashSet<u64> = ns(&rows.rows()).into_iter().collect();
                for checkpoint in saved {
                    let upto = checkpoint.position.as_int().unwrap();
                    if let Some(missing) = covered(&checkpoint.partition, upto).find(|n| !written.contains(n)) {
                        found.lock().unwrap().push((checkpoint.partition.to_string(), upto, missing));
                    }
                }
            });
            for step in &steps {
                match step {
                    Step::SinkFails(n) => sink.fail_next(*n, ErrorClass::Transient),
                    Step::StoreFails(n) => store.fail_next(*n, ErrorClass::Transient),
                    Step::Pass(n) => { sink.pass_next(*n); store.pass_next(*n); }
                }
            }
            // Crashed runs: drop the pipeline future after some writes, without a drain.
            for crash_after in &crashes {
                let source = ScriptedSource::new(json_log("r", TOTAL, PARTITIONS)).sessions(sessions.clone(), SessionScript::Finish);
                let before = sink.calls();
                let run = pipeline(source, store.clone(), sink.clone(), RecordingSink::new(), batch).run(CancellationToken::new());
                tokio::select! {
                    result = run => { result.unwrap(); }
                    _ = async { while sink.calls() < before + crash_after { tokio::time::sleep(std::time::Duration::from_millis(1)).await } } => {}
                }
            }
            // A final run to completion.
            let source = ScriptedSource::new(json_log("r", TOTAL, PARTITIONS)).sessions(sessions.clone(), SessionScript::Finish);
            pipeline(source, store.clone(), sink.clone(), RecordingSink::new(), batch)
                .run(CancellationToken::new())
                .await
                .unwrap();
            let ahead = ahead.lock().unwrap().clone();
            assert!(ahead.is_empty(), "saved ahead of the writes: {ahead:?}");
            let written: HashSet<u64> = ns(&sink.rows()).into_iter().collect();
            let lost: Vec<u64> = (0..TOTAL).filter(|n| !written.contains(n)).collect();
            assert!(lost.is_empty(), "lost envelopes: {lost:?}");
            let saved = sluice::testing::int_positions(&memory.snapshot("p"));
            assert_eq!(saved, vec![("p0".into(), 40), ("p1".into(), 40), ("p2".into(), 40)]);
        });
    }
}
