//! Builds pipelines from a resolved [`Config`]: opens SQLite files (one connection per file,
//! shared), sinks and sources. Nothing here checks configuration — `resolve` did.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::anyhow;
use sluice::{DeadLetterSink, NullSink, Pipeline, PipelineOptions, Resource, Resources};
use sluice_sinks::{
    clickhouse::ClickHouseSink, jsonl::JsonlSink, kafka::KafkaSink, sqlite::SqliteSink,
};
use sluice_stores::sqlite::{SqliteDb, SqliteStore};

use super::resolve::{Config, PipelineSpec, ResourceSpec, SinkSpec};
use crate::registry::{AnyJq, AnyRecord, AnySink, AnySource, AnyStore};

/// A pipeline as the CLI builds it.
pub(crate) type CliPipeline =
    Pipeline<AnySource, AnyRecord, AnySink, AnyStore, DeadLetterSink<AnySink>>;

impl Config {
    /// Builds pipeline `id` (its sinks open their files now).
    pub(crate) fn build(&self, id: &str, databases: &Databases) -> anyhow::Result<CliPipeline> {
        let spec = self
            .pipelines
            .get(id)
            .ok_or_else(|| anyhow!("no pipeline named {id:?}"))?;
        let store = match &self.store_url {
            // Connects on first use: the pipeline's start reports a server that is down.
            Some(url) => AnyStore::Postgres(std::sync::Arc::new(
                sluice_stores::postgres::PostgresStore::new(url)?,
            )),
            None => AnyStore::Sqlite(SqliteStore::new(databases.open(&self.store_path)?)),
        };
        let source = spec.source.build()?;
        let mut resources = Resources::new().on_unknown(spec.on_unknown);
        let mut sinks = Vec::new();
        for resource in &spec.resources {
            let definition = match &resource.transform {
                Some(jq) => Resource::with_transform(resource.name.clone(), AnyJq::new(jq.clone())),
                None => Resource::direct(resource.name.clone()),
            };
            resources = resources.with(
                resource.name.as_str(),
                definition.on_error(resource.on_error),
            );
            let sink = self.open_sink(&resource.sink, id, Some(resource), databases)?;
            sinks.push((resource.name.clone(), sink));
        }
        let (dead_sink, dead_table) = &spec.dead_letters;
        // A topic takes messages up to a size: dead letters are cut to fit, with room for the
        // envelope around their payload.
        let mut room = None;
        let dead = match self.sinks.get(dead_sink).expect("checked in resolve") {
            SinkSpec::Sqlite { path } => {
                AnySink::Sqlite(SqliteSink::dead_letters(databases.open(path)?, dead_table))
            }
            SinkSpec::Postgres { url } => AnySink::Postgres(Box::new(
                sluice_sinks::postgres::PostgresSink::dead_letters(url, dead_table)?,
            )),
            SinkSpec::ClickHouse { endpoint, options } => AnySink::ClickHouse(Box::new(
                ClickHouseSink::dead_letters(endpoint.clone(), dead_table, options.clone())?,
            )),
            SinkSpec::Kafka { config } => {
                let mut config = config.clone();
                config.topic = dead_table.clone();
                config.pipeline = id.to_owned();
                config.resource = "dead_letters".to_owned();
                room = Some(config.max_message_bytes().saturating_sub(4_096).max(256));
                AnySink::Kafka(KafkaSink::new(config)?)
            }
            _ => self.open_sink(dead_sink, id, None, databases)?,
        };
        let mut dead = DeadLetterSink::new(dead);
        if let Some(room) = room {
            dead = dead.max_payload(room);
        }
        Ok(Self::assemble(
            id, spec, source, store, resources, sinks, dead,
        ))
    }

    /// The pipeline from its parts.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        id: &str,
        spec: &PipelineSpec,
        source: AnySource,
        store: AnyStore,
        resources: Resources<AnyRecord, AnyRecord>,
        sinks: Vec<(String, AnySink)>,
        dead: DeadLetterSink<AnySink>,
    ) -> CliPipeline {
        let mut pipeline = Pipeline::new(id, source, store, resources);
        for (name, sink) in sinks {
            pipeline = pipeline.sink(name, sink, spec.limits);
        }
        let options = PipelineOptions {
            drain_timeout: spec.drain_timeout,
            ..PipelineOptions::default()
        };
        pipeline.dead_letters(dead, spec.limits).options(options)
    }

    fn open_sink(
        &self,
        name: &str,
        pipeline: &str,
        resource: Option<&ResourceSpec>,
        databases: &Databases,
    ) -> anyhow::Result<AnySink> {
        let schema = || {
            resource
                .and_then(|r| r.schema.clone())
                .expect("table sinks have a schema (checked in resolve)")
        };
        Ok(match self.sinks.get(name).expect("checked in resolve") {
            SinkSpec::Sqlite { path } => {
                let mut sink = SqliteSink::new(databases.open(path)?, schema())?;
                if let Some(version) = resource.and_then(|r| r.version.as_deref()) {
                    sink = sink.version(version)?;
                }
                AnySink::Sqlite(sink)
            }
            SinkSpec::Postgres { url } => {
                let mut sink = sluice_sinks::postgres::PostgresSink::new(url, schema())?;
                if let Some(version) = resource.and_then(|r| r.version.as_deref()) {
                    sink = sink.version(version)?;
                }
                AnySink::Postgres(Box::new(sink))
            }
            SinkSpec::ClickHouse { endpoint, options } => {
                let mut sink = ClickHouseSink::new(endpoint.clone(), schema(), options.clone())?;
                if let Some(version) = resource.and_then(|r| r.version.as_deref()) {
                    sink = sink.version(version)?;
                }
                AnySink::ClickHouse(Box::new(sink))
            }
            SinkSpec::Kafka { config } => {
                let resource = resource.expect("kafka sinks are opened for a resource");
                let mut config = config.clone();
                if config.topic.is_empty() {
                    config.topic = resource.topic.clone();
                }
                config.key = resource.key.clone();
                config.pipeline = pipeline.to_owned();
                config.resource = resource.name.clone();
                AnySink::Kafka(KafkaSink::new(config)?)
            }
            SinkSpec::Jsonl { path } => AnySink::Jsonl(JsonlSink::new(path)),
            SinkSpec::Stdout => AnySink::Jsonl(JsonlSink::stdout()),
            SinkSpec::Null => AnySink::Null(NullSink),
        })
    }
}

/// Open SQLite files, one connection per file, shared by stores and sinks of every pipeline.
#[derive(Debug, Default)]
pub(crate) struct Databases {
    open: std::sync::Mutex<HashMap<PathBuf, SqliteDb>>,
}

impl Databases {
    pub(crate) fn open(&self, path: &Path) -> anyhow::Result<SqliteDb> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(db) = open.get(&key) {
            return Ok(db.clone());
        }
        let db = SqliteDb::open(path)?;
        let key = std::fs::canonicalize(path).unwrap_or(key);
        open.insert(key, db.clone());
        Ok(db)
    }
}
