//! `sluice checkpoints show|reset|set` (a pipeline's saved cursors) and `sluice pause|resume`
//! (its pause flag, which the running process follows), on the SQLite store or the Postgres one.

use std::{collections::BTreeSet, process::ExitCode};

use sluice::{CheckpointStore as _, Checkpoints, Position};
use sluice_stores::{postgres::PostgresStore, sqlite, sqlite::SqliteDb};

use crate::{
    cli::{CheckpointArgs, SetCheckpointArgs},
    config::{Config, StoreChoice},
};

/// The store a pipeline's cursors, lease and pause flag live in, for operators.
#[derive(Debug)]
pub(crate) enum OperatorStore {
    Sqlite(SqliteDb),
    Postgres(Box<PostgresStore>),
}

/// A recorded cursor change: partition, from, to, by, at (RFC 3339).
type Change = (String, Option<String>, String, String, String);

impl OperatorStore {
    /// The store of `config`: its Postgres URL, or its SQLite file.
    pub(crate) async fn of(config: &Config) -> anyhow::Result<Self> {
        Ok(match &config.store_url {
            Some(url) => Self::Postgres(Box::new(PostgresStore::connect(url).await?)),
            None => Self::Sqlite(SqliteDb::open(&config.store_path)?),
        })
    }

    /// The store of `config`, connecting to Postgres on first use (a server down now is not an
    /// error yet).
    pub(crate) fn lazy(config: &Config) -> anyhow::Result<Self> {
        Ok(match &config.store_url {
            Some(url) => Self::Postgres(Box::new(PostgresStore::new(url)?)),
            None => Self::Sqlite(SqliteDb::open(&config.store_path)?),
        })
    }

    pub(crate) async fn cursors(&self, pipeline: &str) -> anyhow::Result<Checkpoints> {
        Ok(match self {
            Self::Sqlite(db) => sqlite::load_checkpoints(&db.lock(), pipeline)?,
            Self::Postgres(store) => store.load(pipeline).await?,
        })
    }

    pub(crate) async fn live_holder(&self, pipeline: &str) -> anyhow::Result<Option<String>> {
        Ok(self.lease(pipeline).await?.map(|(holder, _)| holder))
    }

    /// The live lease of `pipeline`: holder and token (the fencing epoch).
    pub(crate) async fn lease(&self, pipeline: &str) -> anyhow::Result<Option<(String, i64)>> {
        Ok(match self {
            Self::Sqlite(db) => sqlite::live_lease(&db.lock(), pipeline)?,
            Self::Postgres(store) => store.live_lease(pipeline).await?,
        })
    }

    /// The pipelines paused in this store.
    pub(crate) async fn paused(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(match self {
            Self::Sqlite(db) => sqlite::paused(&db.lock())?,
            Self::Postgres(store) => store.paused().await?,
        })
    }

    async fn changes(&self, pipeline: &str) -> anyhow::Result<Vec<Change>> {
        Ok(match self {
            Self::Sqlite(db) => sqlite::checkpoint_changes(&db.lock(), pipeline)?
                .into_iter()
                .map(|(partition, from, to, by, at_ms)| (partition, from, to, by, rfc3339(at_ms)))
                .collect(),
            Self::Postgres(store) => store.checkpoint_changes(pipeline).await?,
        })
    }

    async fn set(
        &self,
        pipeline: &str,
        partition: &str,
        position: &Position,
    ) -> anyhow::Result<Option<Position>> {
        Ok(match self {
            Self::Sqlite(db) => {
                let mut conn = db.lock();
                if let Some(holder) = sqlite::live_holder(&conn, pipeline)? {
                    anyhow::bail!(
                        "pipeline {pipeline} is running ({holder}); stop it before setting its cursor"
                    );
                }
                sqlite::set_checkpoint(&mut conn, pipeline, partition, position, &operator())?
            }
            Self::Postgres(store) => {
                store
                    .set_checkpoint(pipeline, partition, position, &operator())
                    .await?
            }
        })
    }

    /// Sets one cursor after checking that it keeps its kind: positions order by kind first,
    /// so a text cursor where an integer was would never move again (every later save looks
    /// older). Refused while the pipeline's lease is live. Returns the position it replaced.
    pub(crate) async fn set_checked(
        &self,
        pipeline: &str,
        partition: &str,
        position: &Position,
    ) -> anyhow::Result<Option<Position>> {
        if let Some(old) = self.cursors(pipeline).await?.get(partition)
            && std::mem::discriminant(old) != std::mem::discriminant(position)
        {
            anyhow::bail!(
                "partition {partition} holds {old}; {position} is not the same kind of position (an integer, a text or a list)"
            );
        }
        self.set(pipeline, partition, position).await
    }

    async fn reset(&self, pipeline: &str) -> anyhow::Result<u64> {
        Ok(match self {
            Self::Sqlite(db) => {
                let conn = db.lock();
                if let Some(holder) = sqlite::live_holder(&conn, pipeline)? {
                    anyhow::bail!(
                        "pipeline {pipeline} is running ({holder}); stop it before resetting its cursors"
                    );
                }
                sqlite::reset_checkpoints(&conn, pipeline)? as u64
            }
            Self::Postgres(store) => store.reset(pipeline).await?,
        })
    }

    pub(crate) async fn set_paused(&self, pipeline: &str, paused: bool) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(db) => sqlite::set_paused(&db.lock(), pipeline, paused, &operator())?,
            Self::Postgres(store) => store.set_paused(pipeline, paused, &operator()).await?,
        }
        Ok(())
    }
}

/// Prints the cursors, the holder while the pipeline runs, its pause, and the recorded changes.
pub(crate) async fn show(args: &CheckpointArgs) -> anyhow::Result<ExitCode> {
    let store = store_of(args).await?;
    let pipeline = &args.pipeline;
    let cursors = store.cursors(pipeline).await?;
    if let Some(holder) = store.live_holder(pipeline).await? {
        println!("# running: {holder}");
    }
    if cursors.is_empty() {
        println!("# {pipeline}: no saved cursor (the next run starts from the beginning)");
    }
    for (partition, position) in cursors {
        println!("{partition}\t{position}");
    }
    if store.paused().await?.contains(pipeline) {
        println!("# paused (`sluice resume {pipeline}`)");
    }
    for (partition, from, to, by, at) in store.changes(pipeline).await? {
        let from = from.as_deref().unwrap_or("(none)");
        println!("# set {partition}: {from} -> {to} by {by} at {at}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes the cursors; refused while another process runs the pipeline.
pub(crate) async fn reset(args: &CheckpointArgs) -> anyhow::Result<ExitCode> {
    let store = store_of(args).await?;
    let deleted = store.reset(&args.pipeline).await?;
    println!("{}: {deleted} cursor(s) deleted", args.pipeline);
    Ok(ExitCode::SUCCESS)
}

/// Sets one cursor; refused while another process holds the pipeline's lease.
pub(crate) async fn set(args: &SetCheckpointArgs) -> anyhow::Result<ExitCode> {
    let store = store_of(&args.target).await?;
    let pipeline = &args.target.pipeline;
    let position = parse_position(&args.position)?;
    let before = store
        .set_checked(pipeline, &args.partition, &position)
        .await?;
    let from = before.map_or_else(|| "(none)".to_owned(), |p| p.to_string());
    println!("{pipeline} {}: {from} -> {position}", args.partition);
    Ok(ExitCode::SUCCESS)
}

/// A position as an operator types it: JSON (`1234`, `"text"`, `["v", 7]`), else the word as
/// text.
pub(crate) fn parse_position(text: &str) -> anyhow::Result<Position> {
    serde_json::from_str(text)
        .or_else(|_| serde_json::from_value(serde_json::Value::String(text.to_owned())))
        .map_err(|e| anyhow::anyhow!("position {text:?}: {e}"))
}

/// Sets or clears the pause flag of a pipeline.
pub(crate) async fn pause(args: &CheckpointArgs, paused: bool) -> anyhow::Result<ExitCode> {
    let store = store_of(args).await?;
    store.set_paused(&args.pipeline, paused).await?;
    let what = if paused { "paused" } else { "resumed" };
    match store.live_holder(&args.pipeline).await? {
        Some(holder) => println!(
            "{}: {what} (the running process, {holder}, follows within a second)",
            args.pipeline
        ),
        None => println!(
            "{}: {what} (not running now; applies when it starts)",
            args.pipeline
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Who made a change: `$USER@host`.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", sluice::default_holder())
}

/// Milliseconds since the epoch as RFC 3339 UTC (seconds).
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The store of a pipeline: the config's (SQLite or Postgres), or --db.
async fn store_of(args: &CheckpointArgs) -> anyhow::Result<OperatorStore> {
    let store = args.store.url.as_deref();
    match &args.config {
        Some(config) => {
            let config = Config::load(config, &args.db)?.with_store(store)?;
            config.select(std::slice::from_ref(&args.pipeline))?;
            OperatorStore::of(&config).await
        }
        None => match store.map(StoreChoice::parse).transpose()? {
            Some(StoreChoice::Postgres(url)) => Ok(OperatorStore::Postgres(Box::new(
                PostgresStore::connect(&url).await?,
            ))),
            Some(StoreChoice::Sqlite(path)) => Ok(OperatorStore::Sqlite(SqliteDb::open(&path)?)),
            None => Ok(OperatorStore::Sqlite(SqliteDb::open(&args.db)?)),
        },
    }
}
