//! Defines the Kafka sink: every record of a batch produced to one topic through an idempotent
//! rdkafka producer (`acks=all`), and the batch counted as written only when every delivery
//! report came back successful. A failed delivery fails the whole batch; the runtime offers it
//! again and the broker's idempotence (per producer session) plus the record key as message key
//! let consumers absorb what was delivered twice across sessions (at-least-once, keyed).

use std::{fmt, ops::Range, time::Duration};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, future_producer::DeliveryFuture},
};
use sluice::{Cell, CheckpointCommit, ErrorClass, Record, Sink, SinkError};

/// Where and how the sink produces.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic every record goes to.
    pub topic: String,
    /// The record fields that make the message key (one field: its text; several: a JSON
    /// array). Empty: messages have no key.
    pub key: Vec<String>,
    /// The pipeline id, sent in the `sluice-pipeline` header.
    pub pipeline: String,
    /// The resource, sent in the `sluice-resource` header.
    pub resource: String,
    /// Create the topic (partitions, replication factor) in `prepare` if it does not exist.
    pub create_topic: Option<(i32, i32)>,
    /// How long librdkafka may try to deliver one message before its report fails.
    pub delivery_timeout: Duration,
    /// Extra librdkafka settings (`compression.type`, `security.protocol`, `sasl.*`, …). Values of
    /// keys naming a password or secret are never shown.
    pub properties: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: Vec<_> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("create_topic", &self.create_topic)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("properties", &properties)
            .finish_non_exhaustive()
    }
}

fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "jaas",
        "oauthbearer.config",
        ".pem",
    ]
    .iter()
    .any(|word| key.contains(word))
        || key.ends_with(".key")
}

/// A Kafka URL as it may be shown: the query's values of secret keys redacted.
fn shown(url: &str) -> String {
    let Some((location, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret(key) => format!("{key}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{location}?{}", pairs.join("&"))
}

impl KafkaConfig {
    /// A configuration for `topic` at `brokers` with the defaults: no key, no topic creation,
    /// 30 s delivery timeout.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            key: Vec::new(),
            pipeline: String::new(),
            resource: String::new(),
            create_topic: None,
            delivery_timeout: Duration::from_secs(30),
            properties: Vec::new(),
        }
    }

    /// Parses `kafka://host:port[,host:port]/topic?key=a,b&partitions=N&replication=N&<librdkafka
    /// setting>=<value>…`. `partitions` (and `replication`, default 1) ask for the topic to be
    /// created; other query parameters are passed to librdkafka as they are.
    ///
    /// # Errors
    /// A message when the URL has no broker or no topic, or a number does not parse.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            format!(
                "bad Kafka URL {:?}: expected kafka://brokers/topic",
                shown(url)
            )
        })?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (brokers, topic) = location
            .split_once('/')
            .filter(|(b, t)| !b.is_empty() && !t.is_empty() && !t.contains('/'))
            .ok_or_else(|| {
                format!(
                    "bad Kafka URL {:?}: expected kafka://brokers/topic",
                    shown(url)
                )
            })?;
        let mut config = Self::new(brokers, topic);
        let (mut partitions, mut replication) = (None, 1);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |v: &str| {
                v.parse::<i32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("bad Kafka URL: {key} must be a positive number"))
            };
            match key {
                "key" => config.key = value.split(',').map(str::to_owned).collect(),
                "partitions" => partitions = Some(number(value)?),
                "replication" => replication = number(value)?,
                _ => config.properties.push((key.to_owned(), value.to_owned())),
            }
        }
        config.create_topic = partitions.map(|p| (p, replication));
        Ok(config)
    }

    /// The largest message librdkafka accepts (`message.max.bytes`, default 1,000,000).
    pub fn max_message_bytes(&self) -> usize {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == "message.max.bytes")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1_000_000)
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            // librdkafka's default queue is 1 GiB: at full speed it held tens of MiB.
            .set("queue.buffering.max.kbytes", "16384")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            );
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Produces JSON records to one topic.
pub struct KafkaSink {
    config: KafkaConfig,
    producer: FutureProducer,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The class of a produce or admin error.
fn classify(error: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge | C::InvalidMessage | C::InvalidMessageSize | C::InvalidRecord,
        ) => ErrorClass::Data,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidTopic
            | C::UnsupportedVersion
            | C::InvalidConfig,
        ) => ErrorClass::Fatal,
        _ => match error {
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => ErrorClass::Fatal,
            _ => ErrorClass::Transient,
        },
    }
}

fn sink_error(context: &str, error: KafkaError) -> SinkError {
    SinkError::new(classify(&error), format!("kafka: {context}")).with_source(error)
}

/// Awaits one delivery report; the flag says the producer failed fatally.
async fn delivered(topic: &str, delivery: DeliveryFuture) -> Result<(), (SinkError, bool)> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => {
            let fatal = error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
            let error = sink_error(&format!("delivery to {topic}"), error);
            Err((error, fatal))
        }
        Err(_) => Err((
            SinkError::transient("kafka: producer dropped before delivery"),
            false,
        )),
    }
}

/// The message key of `record`: the text of one field, or a JSON array of several.
fn message_key<R: Record>(fields: &[String], record: &R) -> Result<Option<Vec<u8>>, SinkError> {
    let field = |name: &String| match record.field(name) {
        Some(Cell::Null) | None => Err(SinkError::data(format!(
            "record has no key field {name}: {}",
            record.to_json()
        ))),
        Some(cell) => Ok(cell),
    };
    Ok(match fields {
        [] => None,
        [one] => Some(match field(one)? {
            Cell::Text(s) => s.as_bytes().to_vec(),
            other => {
                let mut key = Vec::new();
                other.write_json(&mut key);
                key
            }
        }),
        many => {
            let mut key = vec![b'['];
            for (i, name) in many.iter().enumerate() {
                if i > 0 {
                    key.push(b',');
                }
                field(name)?.write_json(&mut key);
            }
            key.push(b']');
            Some(key)
        }
    })
}

impl KafkaSink {
    /// A sink producing to `config.topic`.
    ///
    /// # Errors
    /// A fatal error when librdkafka rejects the configuration.
    pub fn new(config: KafkaConfig) -> Result<Self, SinkError> {
        let producer = config
            .client_config()
            .create()
            .map_err(|e| sink_error("create producer", e))?;
        Ok(Self { config, producer })
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn headers(&self) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header {
                key: "sluice-pipeline",
                value: Some(self.config.pipeline.as_bytes()),
            })
            .insert(Header {
                key: "sluice-resource",
                value: Some(self.config.resource.as_bytes()),
            })
    }

    async fn produce<R: Record>(&mut self, batch: &[R]) -> Result<(), SinkError> {
        // Encode everything first: a bad record is a data error before anything is sent.
        let max = self.config.max_message_bytes();
        let headers = self.headers();
        let header_bytes = self.config.pipeline.len() + self.config.resource.len() + 64;
        // Every key and payload of the batch in one buffer (librdkafka copies what it sends):
        // one allocation a batch, not two a record, and freed at once.
        let mut buffer: Vec<u8> =
            Vec::with_capacity(batch.iter().map(Record::size_hint).sum::<usize>());
        let mut messages: Vec<(usize, Option<Range<usize>>, Range<usize>)> =
            Vec::with_capacity(batch.len());
        // Records refused before they were sent (too large, or refused by librdkafka when
        // enqueued), by index: the others are delivered.
        let mut refused: Vec<(usize, String)> = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let start = buffer.len();
            let key = message_key(&self.config.key, record)?.map(|key| {
                buffer.extend_from_slice(&key);
                start..buffer.len()
            });
            let payload_start = buffer.len();
            record.write_json(&mut buffer);
            let size = buffer.len() - start + header_bytes;
            if size > max {
                // librdkafka would refuse it too, after the records before it were delivered:
                // refused here, nothing of the batch is sent twice for it.
                buffer.truncate(start);
                refused.push((
                    index,
                    format!("kafka: message of {size} bytes exceeds message.max.bytes = {max}"),
                ));
                continue;
            }
            messages.push((index, key, payload_start..buffer.len()));
        }
        let topic = self.config.topic.as_str();
        let mut pending: std::collections::VecDeque<(usize, DeliveryFuture)> =
            std::collections::VecDeque::with_capacity(messages.len());
        // The first error that is not one record's own (transient or fatal): the batch fails.
        let mut outcome = Ok(());
        // Whether any report said the producer itself failed (not only the first error's).
        let mut producer_failed = false;
        // A failed delivery report fails the batch, whatever its class: the broker may refuse
        // a whole produce request (every message in it) for one message's size, so a report
        // does not prove which record was bad — a data error there is bisected by the runtime.
        let mut settle = |result: Result<(), (SinkError, bool)>,
                          outcome: &mut Result<(), SinkError>| {
            if let Err((error, fatal)) = result {
                producer_failed |= fatal;
                if outcome.is_ok() {
                    *outcome = Err(error);
                }
            }
        };
        for (index, key, payload) in &messages {
            if outcome.is_err() {
                break;
            }
            let mut record = FutureRecord::to(topic)
                .payload(&buffer[payload.clone()])
                .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(&buffer[key.clone()]);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back((*index, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for the oldest report, then try again.
                        record = back;
                        match pending.pop_front() {
                            Some((_, delivery)) => {
                                let result = delivered(topic, delivery).await;
                                settle(result, &mut outcome);
                            }
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((error, _)) => {
                        let error = sink_error("enqueue", error);
                        if error.class() == ErrorClass::Data {
                            refused.push((*index, sluice::report(&error)));
                        } else {
                            outcome = outcome.and(Err(error));
                        }
                        break;
                    }
                }
            }
        }
        // Every report is awaited, even after a failure: none is left dangling for the next
        // batch, and the error returned is the first one.
        for (_, delivery) in pending {
            let result = delivered(topic, delivery).await;
            settle(result, &mut outcome);
        }
        if producer_failed {
            self.renew_producer();
        }
        let delivered = batch.len() - refused.len();
        if outcome.is_ok() {
            metrics::counter!("sluice_kafka_messages_total", "topic" => self.config.topic.clone())
                .increment(delivered as u64);
        } else {
            metrics::counter!("sluice_kafka_batch_failures_total", "topic" => self.config.topic.clone())
                .increment(1);
        }
        outcome?;
        if refused.is_empty() {
            return Ok(());
        }
        refused.sort_by_key(|(i, _)| *i);
        Err(SinkError::partial(
            format!(
                "kafka: {} record(s) refused, {delivered} delivered",
                refused.len()
            ),
            refused,
        ))
    }

    /// Re-creates the producer after librdkafka reported it fatally failed: an idempotent
    /// producer in that state never recovers, and a new one (a new producer id) lets the replay
    /// of the batch go through.
    fn renew_producer(&mut self) {
        tracing::warn!(topic = %self.config.topic, "kafka producer failed fatally; recreating it");
        match self.config.client_config().create() {
            Ok(producer) => self.producer = producer,
            Err(error) => tracing::warn!(error = %error, "kafka producer could not be recreated"),
        }
    }

    async fn create_topic(&self, partitions: i32, replication: i32) -> Result<(), SinkError> {
        let admin: AdminClient<DefaultClientContext> = self
            .config
            .client_config()
            .create()
            .map_err(|e| sink_error("create admin client", e))?;
        let topic = NewTopic::new(
            &self.config.topic,
            partitions,
            TopicReplication::Fixed(replication),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| sink_error("create topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(sink_error(
                        &format!("create topic {name}"),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl<R: Record> Sink<R> for KafkaSink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        if let Some((partitions, replication)) = self.config.create_topic {
            self.create_topic(partitions, replication).await?;
        }
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &[R],
        _commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.produce(batch).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn urls_parse_and_secrets_are_not_shown() {
        let c = KafkaConfig::from_url(
            "kafka://a:9092,b:9092/trades?key=product_id,trade_id&partitions=3&sasl.password=hunter2",
        )
        .unwrap();
        assert_eq!(c.brokers, "a:9092,b:9092");
        assert_eq!(c.topic, "trades");
        assert_eq!(c.key, ["product_id", "trade_id"]);
        assert_eq!(c.create_topic, Some((3, 1)));
        assert!(!format!("{c:?}").contains("hunter2"));
        // Errors name the URL without its secrets.
        for bad in [
            "kafka://a:9092?sasl.password=hunter2",
            "http://a/t?sasl.password=hunter2&ssl.key.pem=hunter2",
        ] {
            let error = KafkaConfig::from_url(bad).unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
            assert!(error.contains("<redacted>"), "{error}");
        }
        for key in [
            "ssl.key.pem",
            "sasl.oauthbearer.config",
            "ssl.key.password",
            "sasl.password",
        ] {
            assert!(is_secret(key), "{key}");
        }
        assert!(!is_secret("compression.type"));
        for bad in [
            "kafka://a:9092",
            "kafka:///t",
            "http://a/t",
            "kafka://a/t?partitions=0",
        ] {
            assert!(KafkaConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_the_field_text_or_a_json_array() {
        let r = json!({"p": "BTC-USD", "id": 7});
        assert_eq!(message_key(&["p".into()], &r).unwrap().unwrap(), b"BTC-USD");
        assert_eq!(message_key(&["id".into()], &r).unwrap().unwrap(), b"7");
        assert_eq!(
            message_key(&["p".into(), "id".into()], &r)
                .unwrap()
                .unwrap(),
            br#"["BTC-USD",7]"#
        );
        assert_eq!(message_key(&[], &r).unwrap(), None);
        let e = message_key(&["nope".into()], &r).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Data);
    }
}
