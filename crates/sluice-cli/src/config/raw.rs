//! Defines the raw configuration: a serde mirror of the TOML file, as close to what the user
//! wrote as possible. Validation and building happen in `resolve`.

use std::collections::BTreeMap;

pub(crate) use crate::registry::RawSource;
use serde::Deserialize;
use sluice::{Column, OnError};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Where cursors (and leases) are kept.
    #[serde(default)]
    pub(crate) store: RawStore,
    /// Named destinations.
    #[serde(default)]
    pub(crate) sinks: BTreeMap<String, RawSink>,
    /// Pipelines by id.
    #[serde(default)]
    pub(crate) pipelines: BTreeMap<String, RawPipeline>,
    /// Prometheus metrics and health endpoints, e.g. `127.0.0.1:9898` (off when absent).
    #[serde(default)]
    pub(crate) metrics_addr: Option<String>,
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    /// `sqlite` (default) or `postgres`.
    pub(crate) kind: Option<String>,
    /// The SQLite file (default `./sluice.db`, or `SLUICE_DB`); with a Postgres store, the file
    /// of the default SQLite sink and dead letters.
    pub(crate) path: Option<String>,
    /// The Postgres URL (`postgres://user:password@host:port/database`).
    pub(crate) url: Option<String>,
    /// Or the environment variable holding it.
    pub(crate) url_env: Option<String>,
}

/// `[sinks.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawSink {
    /// Tables in a SQLite file.
    Sqlite {
        /// The file (default: the store's file, so records and cursors commit together).
        path: Option<String>,
    },
    /// Tables in a ClickHouse database (over HTTP).
    Clickhouse {
        /// `clickhouse://user:password@host:8123/database`; better kept out of the file with
        /// `url_env`.
        url: Option<String>,
        /// The environment variable holding the URL (default `CLICKHOUSE_URL` when `url` is
        /// absent).
        url_env: Option<String>,
        /// Seconds one INSERT may take.
        timeout_s: Option<f64>,
        /// Retries of a transient failure inside one write.
        retries: Option<u32>,
    },
    /// Tables in a Postgres database (COPY into staging, one merge per batch; exactly-once
    /// when the store is the same database).
    Postgres {
        /// `postgres://user:password@host:5432/database`; better kept out of the file with
        /// `url_env`.
        url: Option<String>,
        /// The environment variable holding the URL (default `DATABASE_URL` when `url` is
        /// absent).
        url_env: Option<String>,
    },
    /// Topics of a Kafka-protocol cluster.
    Kafka {
        /// `host:port[,host:port]`.
        brokers: String,
        /// Create missing topics with this many partitions (default: let the broker decide).
        partitions: Option<i32>,
        /// Replication factor of created topics.
        replication: Option<i32>,
        /// Extra librdkafka settings.
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
    /// JSON lines appended to a file.
    Jsonl {
        /// The file.
        path: String,
    },
    /// JSON lines on stdout.
    Stdout,
    /// Discards everything (benchmarks, dry runs).
    Null,
}

/// `[pipelines.ID]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPipeline {
    /// The source.
    pub(crate) source: RawSource,
    /// Resources by name.
    pub(crate) resources: BTreeMap<String, RawResource>,
    /// Where poison goes (default: table `sluice_dead_letters` in the store's file).
    #[serde(default)]
    pub(crate) dead_letters: Option<RawDeadLetters>,
    /// What happens to envelopes of a resource not listed.
    #[serde(default)]
    pub(crate) on_unknown: OnError,
    /// Batch limits for every destination of the pipeline.
    #[serde(default)]
    pub(crate) batch: RawBatch,
    /// Seconds a shutdown may spend flushing.
    #[serde(default)]
    pub(crate) drain_timeout_s: Option<f64>,
    /// `/ready` fails when a cursor has not moved for longer than this many seconds.
    #[serde(default)]
    pub(crate) max_cursor_age_s: Option<f64>,
}

/// `[pipelines.ID.resources.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResource {
    /// The sink name.
    pub(crate) sink: String,
    /// The table, for table sinks (default: the resource name).
    #[serde(default)]
    pub(crate) table: Option<String>,
    /// The topic, for Kafka sinks (default: the table, then the resource name).
    #[serde(default)]
    pub(crate) topic: Option<String>,
    /// The column whose larger value wins between rows of equal key (ClickHouse
    /// `ReplacingMergeTree` version).
    #[serde(default)]
    pub(crate) version: Option<String>,
    /// Key columns: writes upsert by key (the message key for Kafka).
    #[serde(default)]
    pub(crate) key: Vec<String>,
    /// Columns, for table sinks.
    #[serde(default)]
    pub(crate) columns: Vec<Column>,
    /// A jq program.
    #[serde(default)]
    pub(crate) transform: Option<String>,
    /// The poison policy.
    #[serde(default)]
    pub(crate) on_error: OnError,
}

/// `dead_letters = { sink = …, table = … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeadLetters {
    /// The sink name.
    pub(crate) sink: String,
    /// The table, for table sinks.
    #[serde(default = "default_dead_letter_table")]
    pub(crate) table: String,
}

pub(crate) fn default_dead_letter_table() -> String {
    "sluice_dead_letters".into()
}

/// `batch = { … }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatch {
    pub(crate) max_records: Option<usize>,
    pub(crate) max_bytes: Option<usize>,
    pub(crate) linger_ms: Option<u64>,
}
