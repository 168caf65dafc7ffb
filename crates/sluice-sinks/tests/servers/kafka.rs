use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};
use serde_json::{Value, json};
use sluice::{
    DeadLetter, ErrorClass, MemoryStore, Pipeline, Resource, Resources, Sink,
    testing::{RecordingSink, ScriptedSource, json_log},
};
use sluice_sinks::kafka::{KafkaConfig, KafkaSink};
use tokio_util::sync::CancellationToken;

use crate::common::{fast_options, limits, service, unique};

/// Every message of `topic` (all partitions; in order within each), read with a manual assignment (the broker's first
/// group join is slow), until `expect` were read or 20 s passed.
fn consume(
    brokers: &str,
    topic: &str,
    expect: usize,
) -> Vec<(Option<String>, Value, BTreeMap<String, String>)> {
    consume_for(brokers, topic, expect, Duration::from_secs(20))
}

/// [`consume`] with its own patience.
fn consume_for(
    brokers: &str,
    topic: &str,
    expect: usize,
    patience: Duration,
) -> Vec<(Option<String>, Value, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + patience;
    let mut out = Vec::new();
    while out.len() < expect && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(message) = message else { continue };
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let value = serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
        let mut headers = BTreeMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push((key, value, headers));
    }
    out
}

fn config(brokers: &str, topic: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers, topic);
    config.key = vec!["n".into()];
    config.pipeline = "p".into();
    config.resource = "r".into();
    config.create_topic = Some((1, 1));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_land_exactly_with_keys_and_headers() {
    let Some(brokers) = service("SLUICE_TEST_KAFKA_BROKERS") else {
        return;
    };
    let topic = unique("exact");
    let memory = Arc::new(MemoryStore::new());
    Pipeline::new(
        "p",
        ScriptedSource::new(json_log("r", 2_000, 1)),
        memory.clone(),
        Resources::new().with("r", Resource::direct("topic")),
    )
    .sink(
        "topic",
        KafkaSink::new(config(&brokers, &topic)).unwrap(),
        limits(300),
    )
    .dead_letters(RecordingSink::<DeadLetter>::new(), limits(10))
    .options(fast_options())
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(
        memory.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(2_000)
    );
    let topic2 = topic.clone();
    let messages = tokio::task::spawn_blocking(move || consume(&brokers, &topic2, 2_000))
        .await
        .unwrap();
    assert_eq!(messages.len(), 2_000);
    for (i, (key, value, headers)) in messages.iter().enumerate() {
        assert_eq!(value, &json!({"n": i}), "in order, once each");
        assert_eq!(key.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(
            headers.get("sluice-pipeline").map(String::as_str),
            Some("p")
        );
        assert_eq!(
            headers.get("sluice-resource").map(String::as_str),
            Some("r")
        );
    }
}

/// One record larger than `message.max.bytes` among 100: it is refused alone and dead-lettered,
/// the 99 others are delivered exactly once (no bisection re-sending what was delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_dead_lettered_and_nothing_is_sent_twice() {
    let Some(brokers) = service("SLUICE_TEST_KAFKA_BROKERS") else {
        return;
    };
    let topic = unique("oversized");
    let mut cfg = config(&brokers, &topic);
    cfg.properties
        .push(("message.max.bytes".into(), "2000".into()));
    let log: Vec<_> = json_log("r", 100, 1)
        .into_iter()
        .map(|mut envelope| {
            if envelope.payload["n"] == 42 {
                envelope.payload["pad"] = json!("x".repeat(5_000));
            }
            envelope
        })
        .collect();
    let memory = Arc::new(MemoryStore::new());
    let dead = RecordingSink::<DeadLetter>::new();
    Pipeline::new(
        "p",
        ScriptedSource::new(log),
        memory.clone(),
        Resources::new().with("r", Resource::direct("topic")),
    )
    .sink("topic", KafkaSink::new(cfg).unwrap(), limits(100))
    .dead_letters(dead.clone(), limits(10))
    .options(fast_options())
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(
        memory.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(100)
    );
    let letters = dead.rows();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("message.max.bytes"),
        "{}",
        letters[0].reason
    );
    assert!(letters[0].payload.contains("\"n\":42"));
    // Everything was produced before: a few seconds read all there is (more than 99 if any
    // message had been sent twice).
    let messages = tokio::task::spawn_blocking(move || {
        consume_for(&brokers, &topic, 1_000, Duration::from_secs(5))
    })
    .await
    .unwrap();
    let ns: Vec<u64> = messages
        .iter()
        .map(|(_, v, _)| v["n"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<u64> = ns.iter().copied().collect();
    assert_eq!(
        ns.len(),
        99,
        "99 messages in the topic, none sent twice: {ns:?}"
    );
    assert_eq!(unique.len(), 99);
    assert!(!unique.contains(&42));
}

/// Deliveries fail while no broker answers: the batch fails as a whole (transient), the cursor
/// does not move, and when a broker is there the retried batch lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_fails_the_batch_and_holds_the_cursor() {
    let Some(brokers) = service("SLUICE_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(tansu) = service("SLUICE_TEST_TANSU_BIN") else {
        return;
    };
    // A port with no broker yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let topic = unique("outage");
    let mut cfg = config(&address, &topic);
    cfg.create_topic = None; // the broker creates topics on first use
    cfg.delivery_timeout = Duration::from_millis(1500);
    let mut sink = KafkaSink::new(cfg.clone()).unwrap();
    let batch: Vec<Value> = (0..10).map(|n| json!({"n": n})).collect();
    let error = Sink::<Value>::write(&mut sink, &batch, None)
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Transient, "{error:?}");

    // Now the pipeline: it keeps failing until the broker starts, the cursor stays put.
    let memory = Arc::new(MemoryStore::new());
    let run = tokio::spawn(
        Pipeline::new(
            "p",
            ScriptedSource::new(json_log("r", 500, 1)),
            memory.clone(),
            Resources::new().with("r", Resource::direct("topic")),
        )
        .sink("topic", KafkaSink::new(cfg).unwrap(), limits(100))
        .dead_letters(RecordingSink::<DeadLetter>::new(), limits(10))
        .options(fast_options())
        .run(CancellationToken::new()),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        memory.snapshot("p").is_empty(),
        "the cursor moved without a broker"
    );
    assert!(!run.is_finished());
    let mut broker = std::process::Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://{address}"),
            "--advertised-listener-url",
            &format!("tcp://{address}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), run).await;
    let messages = if result.is_ok() {
        let topic = topic.clone();
        let address = address.clone();
        tokio::task::spawn_blocking(move || consume(&address, &topic, 500))
            .await
            .unwrap()
    } else {
        Vec::new()
    };
    broker.kill().ok();
    broker.wait().ok();
    result
        .expect("the pipeline did not finish once the broker was up")
        .unwrap()
        .unwrap();
    assert_eq!(
        memory.snapshot("p").get("p0").and_then(|p| p.as_int()),
        Some(500)
    );
    let mut seen: Vec<u64> = messages
        .iter()
        .map(|(_, v, _)| v["n"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..500).collect::<Vec<_>>(), "every record delivered");
    let _ = &brokers;
}

#[tokio::test]
async fn a_record_without_its_key_is_a_data_error_and_nothing_is_sent() {
    let Some(brokers) = service("SLUICE_TEST_KAFKA_BROKERS") else {
        return;
    };
    let mut sink = KafkaSink::new(config(&brokers, &unique("keys"))).unwrap();
    Sink::<Value>::prepare(&mut sink).await.unwrap();
    let error = Sink::<Value>::write(&mut sink, &[json!({"n": 1}), json!({"m": 2})], None)
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Data);
    assert!(error.to_string().contains("no key field n"), "{error}");
}
