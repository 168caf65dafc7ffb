//! Resolves the raw configuration into a checked one: every error names the key and what is
//! wrong, and everything `run` would refuse for a configuration reason is refused here.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use sluice::{BatchLimits, JqTransform, OnError, PipelineOptions, TableSchema};
use sluice_connectors::{
    coinbase::{self, CoinbaseConfig},
    supabase::{self, SupabaseConfig},
    template::Template,
};
use sluice_sinks::{
    clickhouse::{ClickHouseEndpoint, ClickHouseOptions},
    kafka::KafkaConfig,
};

use super::raw::{RawConfig, RawPipeline, RawSink, RawSource, default_dead_letter_table};

/// A named sink.
#[derive(Debug, Clone)]
pub(crate) enum SinkSpec {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        url: String,
    },
    ClickHouse {
        endpoint: ClickHouseEndpoint,
        options: ClickHouseOptions,
    },
    Kafka {
        /// Brokers, topic (from a URL), topic creation and extra settings.
        config: KafkaConfig,
    },
    Jsonl {
        path: PathBuf,
    },
    Stdout,
    Null,
}

impl SinkSpec {
    fn is_table(&self) -> bool {
        matches!(
            self,
            SinkSpec::Sqlite { .. } | SinkSpec::ClickHouse { .. } | SinkSpec::Postgres { .. }
        )
    }

    /// A sink given as a URL on the command line: `clickhouse://…`, `kafka://…` or
    /// `postgres://…`.
    pub(crate) fn from_url(url: &str) -> anyhow::Result<Self> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => {
                // Checked (syntax, TLS options) without connecting, as the config's sinks are.
                sluice_stores::postgres::target(url).map_err(|e| anyhow!("--sink: {e}"))?;
                Ok(SinkSpec::Postgres {
                    url: url.to_owned(),
                })
            }
            "clickhouse" | "clickhouses" | "http" | "https" => Ok(SinkSpec::ClickHouse {
                endpoint: ClickHouseEndpoint::parse(url).map_err(|e| anyhow!("--sink: {e}"))?,
                options: ClickHouseOptions::default(),
            }),
            "kafka" => Ok(SinkSpec::Kafka {
                config: KafkaConfig::from_url(url).map_err(|e| anyhow!("--sink: {e}"))?,
            }),
            _ => bail!(
                "--sink: expected clickhouse://user:password@host:port/database, kafka://brokers/topic or postgres://user:password@host:port/database"
            ),
        }
    }
}

#[derive(Debug)]
pub(crate) struct ResourceSpec {
    pub(crate) name: String,
    pub(crate) sink: String,
    pub(crate) schema: Option<TableSchema>,
    /// The ClickHouse version column.
    pub(crate) version: Option<String>,
    /// The Kafka topic.
    pub(crate) topic: String,
    /// The Kafka message key fields.
    pub(crate) key: Vec<String>,
    pub(crate) transform: Option<Arc<JqTransform>>,
    pub(crate) on_error: OnError,
}

#[derive(Debug)]
pub(crate) struct PipelineSpec {
    pub(crate) source: RawSource,
    pub(crate) resources: Vec<ResourceSpec>,
    pub(crate) dead_letters: (String, String),
    pub(crate) on_unknown: OnError,
    pub(crate) limits: BatchLimits,
    pub(crate) drain_timeout: Duration,
    /// `/ready` fails when a cursor is older.
    pub(crate) max_cursor_age: Option<Duration>,
}

/// A checked configuration.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) store_path: PathBuf,
    /// The checkpoint store when it is not the SQLite file: a Postgres URL.
    pub(crate) store_url: Option<String>,
    pub(crate) sinks: BTreeMap<String, SinkSpec>,
    pub(crate) pipelines: BTreeMap<String, PipelineSpec>,
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// The sink name the default dead-letter destination (and built-ins' bookkeeping) uses: beside
/// the cursors, in the store's SQLite file or its Postgres database.
const STORE_SINK: &str = "(store)";

/// The sink beside the cursors: a Postgres store's database (so a fleet's dead letters are in
/// one place, not in each worker's file), else the SQLite file.
fn store_sink(store_url: Option<&str>, store_path: &Path) -> SinkSpec {
    match store_url {
        Some(url) => SinkSpec::Postgres {
            url: url.to_owned(),
        },
        None => SinkSpec::Sqlite {
            path: store_path.to_path_buf(),
        },
    }
}

impl Config {
    /// Reads and checks `path`.
    pub(crate) fn load(path: &Path, default_store: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        Self::resolve(raw, default_store).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    /// The `--store` of the command line, over the file's `[store]`: a `postgres://` URL, or
    /// `sqlite:PATH` — as `[store] path = PATH` would: SQLite sinks that wrote to the store's
    /// file (records and cursors in one transaction) follow it.
    pub(crate) fn with_store(mut self, store: Option<&str>) -> anyhow::Result<Self> {
        match store.map(StoreChoice::parse).transpose()? {
            None => {}
            Some(StoreChoice::Sqlite(path)) => {
                for sink in self.sinks.values_mut() {
                    if let SinkSpec::Sqlite { path: sink_path } = sink
                        && *sink_path == self.store_path
                    {
                        sink_path.clone_from(&path);
                    }
                }
                self.store_url = None;
                self.store_path = path;
            }
            Some(StoreChoice::Postgres(url)) => self.store_url = Some(url),
        }
        self.sinks.insert(
            STORE_SINK.into(),
            store_sink(self.store_url.as_deref(), &self.store_path),
        );
        Ok(self)
    }

    fn resolve(raw: RawConfig, default_store: &Path) -> anyhow::Result<Self> {
        let store_url = match raw.store.kind.as_deref() {
            None | Some("sqlite") => {
                if raw.store.url.is_some() || raw.store.url_env.is_some() {
                    bail!("store: url and url_env are for kind = \"postgres\"");
                }
                None
            }
            Some("postgres") => {
                let url = match (&raw.store.url, &raw.store.url_env) {
                    (Some(url), None) => url.clone(),
                    (None, Some(var)) => std::env::var(var).map_err(|_| {
                        anyhow!("store.url_env: the environment variable {var} is not set")
                    })?,
                    _ => bail!("store: a postgres store needs url or url_env (one of them)"),
                };
                Some(check_store_url(&url).map_err(|e| anyhow!("store.url: {e}"))?)
            }
            Some(other) => bail!("store.kind: {other:?} is not sqlite or postgres"),
        };
        let store_path = raw
            .store
            .path
            .map(PathBuf::from)
            .unwrap_or_else(|| default_store.to_path_buf());
        let mut sinks = BTreeMap::new();
        for (name, sink) in raw.sinks {
            let spec = match sink {
                RawSink::Sqlite { path } => SinkSpec::Sqlite {
                    path: path
                        .map(PathBuf::from)
                        .unwrap_or_else(|| store_path.clone()),
                },
                RawSink::Postgres { url, url_env } => {
                    let url = match (url, url_env) {
                        (Some(url), None) => url,
                        (None, env) => {
                            let var = env.unwrap_or_else(|| "DATABASE_URL".to_owned());
                            std::env::var(&var).map_err(|_| {
                                anyhow!("sinks.{name}: environment variable {var} (the Postgres URL) is not set")
                            })?
                        }
                        (Some(_), Some(_)) => bail!("sinks.{name}: set url or url_env, not both"),
                    };
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                        bail!("sinks.{name}.url: must start with postgres://");
                    }
                    SinkSpec::Postgres { url }
                }
                RawSink::Clickhouse {
                    url,
                    url_env,
                    timeout_s,
                    retries,
                } => {
                    let url = match (url, url_env) {
                        (Some(url), None) => url,
                        (None, env) => {
                            let var = env.unwrap_or_else(|| "CLICKHOUSE_URL".to_owned());
                            std::env::var(&var).map_err(|_| {
                                anyhow!("sinks.{name}: environment variable {var} (the ClickHouse URL) is not set")
                            })?
                        }
                        (Some(_), Some(_)) => bail!("sinks.{name}: set url or url_env, not both"),
                    };
                    let endpoint = ClickHouseEndpoint::parse(&url)
                        .map_err(|e| anyhow!("sinks.{name}: {e}"))?;
                    let defaults = ClickHouseOptions::default();
                    let request_timeout = match timeout_s {
                        Some(s) if !(s.is_finite() && s > 0.0) => {
                            bail!("sinks.{name}.timeout_s: must be a positive number of seconds")
                        }
                        Some(s) => Duration::from_secs_f64(s),
                        None => defaults.request_timeout,
                    };
                    SinkSpec::ClickHouse {
                        endpoint,
                        options: ClickHouseOptions {
                            request_timeout,
                            retries: retries.unwrap_or(defaults.retries),
                            ..defaults
                        },
                    }
                }
                RawSink::Kafka {
                    brokers,
                    partitions,
                    replication,
                    properties,
                } => {
                    if brokers.trim().is_empty() {
                        bail!("sinks.{name}.brokers: empty; e.g. brokers = \"127.0.0.1:9092\"");
                    }
                    let mut config = KafkaConfig::new(brokers, "");
                    config.create_topic =
                        partitions.map(|p| (p.max(1), replication.unwrap_or(1).max(1)));
                    config.properties = properties.into_iter().collect();
                    SinkSpec::Kafka { config }
                }
                RawSink::Jsonl { path } => SinkSpec::Jsonl { path: path.into() },
                RawSink::Stdout => SinkSpec::Stdout,
                RawSink::Null => SinkSpec::Null,
            };
            sinks.insert(name, spec);
        }
        sinks.insert(
            STORE_SINK.into(),
            store_sink(store_url.as_deref(), &store_path),
        );
        if raw.pipelines.is_empty() {
            bail!("pipelines: no pipeline is defined; add a [pipelines.NAME] table");
        }
        let mut pipelines = BTreeMap::new();
        for (id, pipeline) in raw.pipelines {
            let spec = resolve_pipeline(&id, pipeline, &sinks)
                .with_context(|| format!("pipelines.{id}"))?;
            pipelines.insert(id, spec);
        }
        let metrics_addr = raw
            .metrics_addr
            .map(|a| {
                a.parse().map_err(|e| {
                    anyhow!("metrics_addr: {a:?} is not an address like 127.0.0.1:9898: {e}")
                })
            })
            .transpose()?;
        Ok(Self {
            store_path,
            store_url,
            sinks,
            pipelines,
            metrics_addr,
        })
    }

    /// The built-in Coinbase pipeline (its connector's template): trades into table
    /// `coinbase_trades` of `db`, cursors in the same file (one transaction: exactly-once), poison
    /// in `sluice_dead_letters`. With `sink` (a [`SinkSpec::from_url`] URL) trades go there
    /// instead; cursors, holes and dead letters stay in `db`.
    pub(crate) fn builtin_coinbase(
        source: CoinbaseConfig,
        db: &Path,
        sink: Option<&str>,
    ) -> anyhow::Result<Self> {
        source.validate().map_err(|e| anyhow!("coinbase: {e}"))?;
        Self::builtin(coinbase::template(), RawSource::Coinbase(source), db, sink)
    }

    /// The built-in Supabase pipeline (its connector's template): every change into table
    /// `supabase_changes` of `db` (or `sink`), the newest version of each row into
    /// `supabase_rows`, cursors in `db`.
    pub(crate) fn builtin_supabase(
        source: SupabaseConfig,
        db: &Path,
        sink: Option<&str>,
    ) -> anyhow::Result<Self> {
        source.validate().map_err(|e| anyhow!("supabase: {e}"))?;
        let source = SupabaseConfig {
            current_state: true,
            ..source
        };
        Self::builtin(supabase::template(), RawSource::Supabase(source), db, sink)
    }

    /// A built-in pipeline from its connector's template: each resource into its table of `db`,
    /// or of `sink` when given (except bookkeeping kept beside the cursors).
    fn builtin(
        template: Template,
        source: RawSource,
        db: &Path,
        sink: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut sinks = BTreeMap::new();
        sinks.insert(
            STORE_SINK.to_owned(),
            SinkSpec::Sqlite {
                path: db.to_path_buf(),
            },
        );
        let mut target = STORE_SINK.to_owned();
        let mut kafka_topic = None;
        let remote = sink.is_some();
        if let Some(url) = sink {
            let spec = SinkSpec::from_url(url)?;
            if let SinkSpec::Kafka { config } = &spec {
                kafka_topic = Some(config.topic.clone());
            }
            target = "out".to_owned();
            sinks.insert(target.clone(), spec);
        }
        let mut resources = Vec::new();
        for (i, resource) in template.resources.into_iter().enumerate() {
            let table = resource.table;
            let to_sink = resource.follows_sink && !resource.beside_cursors;
            // The main resource takes the Kafka URL's topic; others keep their table name.
            let topic = match (&kafka_topic, to_sink && i == 0) {
                (Some(topic), true) => topic.clone(),
                _ => table.table.clone(),
            };
            resources.push(ResourceSpec {
                name: resource.name.into(),
                sink: if to_sink {
                    target.clone()
                } else {
                    STORE_SINK.to_owned()
                },
                key: table.key.clone(),
                version: resource.version.map(str::to_owned),
                schema: Some(table),
                topic,
                transform: None,
                on_error: OnError::DeadLetter,
            });
        }
        let spec = PipelineSpec {
            source,
            resources,
            dead_letters: (STORE_SINK.to_owned(), default_dead_letter_table()),
            on_unknown: OnError::DeadLetter,
            limits: if remote {
                // Network sinks pay a round trip per batch and ClickHouse a part per INSERT
                // (too many small parts fail with TOO_MANY_PARTS): fewer, larger batches.
                // Kafka batches on its own side: 5,000 records keep the memory a batch holds
                // (its records and librdkafka's copies) small.
                BatchLimits {
                    linger: Duration::from_millis(50),
                    max_records: if kafka_topic.is_some() { 5_000 } else { 20_000 },
                    ..BatchLimits::default()
                }
            } else {
                BatchLimits {
                    // A short linger keeps frame-to-durable latency low at feed rates; under load
                    // batches fill by count first.
                    linger: Duration::from_millis(5),
                    // Small enough that the source fills the next batch (channel: 4096) while this
                    // one is written: reading and writing overlap on two cores.
                    max_records: 2_000,
                    ..BatchLimits::default()
                }
            },
            drain_timeout: PipelineOptions::default().drain_timeout,
            max_cursor_age: None,
        };
        let pipelines = BTreeMap::from([(template.pipeline.to_owned(), spec)]);
        Ok(Self {
            store_path: db.to_path_buf(),
            store_url: None,
            sinks,
            pipelines,
            metrics_addr: None,
        })
    }

    /// The pipeline ids.
    pub(crate) fn pipeline_ids(&self) -> impl Iterator<Item = &str> {
        self.pipelines.keys().map(String::as_str)
    }

    /// Checks that `ids` name pipelines of this file.
    pub(crate) fn select(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(self.pipelines.keys().cloned().collect());
        }
        for id in ids {
            if !self.pipelines.contains_key(id) {
                let known: Vec<_> = self.pipeline_ids().collect();
                bail!("no pipeline named {id:?} (defined: {})", known.join(", "));
            }
        }
        Ok(ids.to_vec())
    }
}

fn resolve_pipeline(
    id: &str,
    raw: RawPipeline,
    sinks: &BTreeMap<String, SinkSpec>,
) -> anyhow::Result<PipelineSpec> {
    if id.is_empty() || id.chars().any(|c| c.is_whitespace()) {
        bail!("pipeline ids must be non-empty without spaces");
    }
    // Everything `run` would refuse about the source, refused here (no connection made).
    let checked = raw.source.validate();
    checked.map_err(|e| anyhow!("source: {e}"))?;
    if raw.resources.is_empty() {
        bail!("resources: no resource is defined; add a [pipelines.{id}.resources.NAME] table");
    }
    let known = || {
        sinks
            .keys()
            .filter(|k| *k != STORE_SINK)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A source with a fixed set of resources: a name it never emits would route nothing (every
    // record dead-lettered as "no resource named …").
    if let RawSource::Coinbase(_) = &raw.source {
        let emitted = [coinbase::RESOURCE, coinbase::HOLES_RESOURCE];
        if let Some(name) = raw
            .resources
            .keys()
            .find(|name| !emitted.contains(&name.as_str()))
        {
            bail!(
                "resources.{name}: the coinbase source emits only \"{}\" (trades) and \"{}\" (skipped holes)",
                coinbase::RESOURCE,
                coinbase::HOLES_RESOURCE
            );
        }
    }
    let mut resources = Vec::new();
    for (name, resource) in raw.resources {
        let context = format!("resources.{name}");
        let sink = sinks.get(&resource.sink).ok_or_else(|| {
            anyhow!(
                "{context}.sink: no sink named {:?} (defined: {})",
                resource.sink,
                known()
            )
        })?;
        if resource.version.is_some() && !sink.is_table() {
            bail!(
                "{context}.version: only table sinks (sqlite, postgres, clickhouse) have a version column"
            );
        }
        let mut version = resource.version.clone();
        if resource.topic.is_some() && !matches!(sink, SinkSpec::Kafka { .. }) {
            bail!("{context}.topic: only Kafka sinks have topics");
        }
        let key = resource.key.clone();
        let schema = if sink.is_table() {
            let table = resource.table.clone().unwrap_or_else(|| name.clone());
            let fixed = resource
                .columns
                .is_empty()
                .then(|| raw.source.default_table(&name, &table))
                .flatten();
            if let Some((schema, default_version)) = fixed {
                // Records of a fixed shape: the connector's table unless told otherwise.
                if let Some(column) = default_version {
                    version.get_or_insert_with(|| column.to_owned());
                }
                Some(schema)
            } else if resource.columns.is_empty() {
                bail!(
                    "{context}.columns: the table sink {:?} needs columns, e.g. columns = [{{ name = \"id\", type = \"integer\" }}]",
                    resource.sink
                );
            } else {
                let schema = TableSchema {
                    table: resource.table.clone().unwrap_or_else(|| name.clone()),
                    columns: resource.columns,
                    key: resource.key,
                };
                schema.validate().map_err(|e| anyhow!("{context}: {e}"))?;
                Some(schema)
            }
        } else {
            None
        };
        let transform = resource
            .transform
            .map(|code| {
                JqTransform::compile(&code)
                    .map(Arc::new)
                    .map_err(|e| anyhow!("{context}.transform: {e}"))
            })
            .transpose()?;
        if let (Some(version), Some(schema)) = (&resource.version, &schema)
            && !schema.columns.iter().any(|c| &c.name == version)
        {
            bail!("{context}.version: {version:?} is not one of the columns");
        }
        // Written as the source emits them, its records must fill the table's columns.
        if let (None, Some(schema)) = (&transform, &schema) {
            raw.source
                .check_columns(&schema.columns)
                .map_err(|e| anyhow!("{context}.columns: {e}"))?;
        }
        let topic = resource
            .topic
            .or_else(|| resource.table.clone())
            .unwrap_or_else(|| name.clone());
        resources.push(ResourceSpec {
            name,
            sink: resource.sink,
            schema,
            version,
            topic,
            key,
            transform,
            on_error: resource.on_error,
        });
    }
    let dead_letters = match raw.dead_letters {
        Some(d) => {
            if !sinks.contains_key(&d.sink) {
                bail!(
                    "dead_letters.sink: no sink named {:?} (defined: {})",
                    d.sink,
                    known()
                );
            }
            (d.sink, d.table)
        }
        None => (STORE_SINK.to_owned(), default_dead_letter_table()),
    };
    let defaults = BatchLimits::default();
    let limits = BatchLimits {
        max_records: raw.batch.max_records.unwrap_or(defaults.max_records).max(1),
        max_bytes: raw.batch.max_bytes.unwrap_or(defaults.max_bytes).max(1),
        linger: raw
            .batch
            .linger_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.linger),
    };
    let drain_timeout = match raw.drain_timeout_s {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("drain_timeout_s: must be a positive number of seconds")
        }
        Some(s) => Duration::from_secs_f64(s),
        None => PipelineOptions::default().drain_timeout,
    };
    let max_cursor_age = match raw.max_cursor_age_s {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("max_cursor_age_s: must be a positive number of seconds")
        }
        s => s.map(Duration::from_secs_f64),
    };
    Ok(PipelineSpec {
        source: raw.source,
        resources,
        dead_letters,
        on_unknown: raw.on_unknown,
        limits,
        drain_timeout,
        max_cursor_age,
    })
}

/// What `--store` names.
#[derive(Debug, PartialEq)]
pub(crate) enum StoreChoice {
    /// `sqlite:PATH` (or `sqlite://PATH`).
    Sqlite(PathBuf),
    /// A checked `postgres://` URL.
    Postgres(String),
}

impl StoreChoice {
    /// Parses `--store`; an empty SQLite path is refused (SQLite would open a throwaway
    /// database, and the cursors would be lost at exit).
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        match text.strip_prefix("sqlite:") {
            Some(rest) => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    bail!("--store: sqlite: needs a file path (sqlite:PATH)");
                }
                Ok(Self::Sqlite(PathBuf::from(path)))
            }
            None => Ok(Self::Postgres(
                check_store_url(text).map_err(|e| anyhow!("--store: {e}"))?,
            )),
        }
    }
}

/// A Postgres store URL, checked (scheme and syntax) without connecting.
fn check_store_url(url: &str) -> anyhow::Result<String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("must be postgres://… (or sqlite:PATH on the command line)");
    }
    sluice_stores::postgres::PostgresStore::new(url).map_err(|e| anyhow!("{e}"))?;
    Ok(url.to_owned())
}
