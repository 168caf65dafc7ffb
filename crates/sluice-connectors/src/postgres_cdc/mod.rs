//! Postgres logical replication (`pgoutput`) as a source: every committed insert, update,
//! delete and truncate of the published tables, in commit order, from a persistent replication
//! slot. The cursor is the commit's end LSN (partition `wal`); it is acknowledged to the server
//! (standby status `flush`) only once the runtime reports it durable, so the slot keeps every
//! change sluice has not stored, and a restart resumes from the slot with nothing lost.
//!
//! Transport (startup, auth, keepalives even while the sink is slow, status updates):
//! `pgwire-replication`. Decoding of the change messages: [`pgoutput`].

pub mod pgoutput;

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice::{
    Checkpoint, Column, ColumnType, Envelope, Position, Rejected, SessionEnd, Source,
    SourceContext, SourceError, TableSchema,
};

use self::pgoutput::{Change, Message, RelationCache, decode, tuple_json};

/// The partition of the cursor.
pub const PARTITION: &str = "wal";

/// `source = { kind = "postgres_cdc", … }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresCdcConfig {
    /// `postgres://user:password@host:port/database` (the password may be left out and given in
    /// `PGPASSWORD`).
    pub url: String,
    /// The replication slot (persistent: it holds the WAL sluice has not acknowledged).
    pub slot: String,
    /// The publication naming the tables.
    pub publication: String,
    /// Create the publication (for `tables`) and the slot when they do not exist.
    #[serde(default)]
    pub create: bool,
    /// Tables of the publication to create, `schema.table` or `table` (public).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The resource of every change (default `changes`); `"{schema}.{table}"` routes per table.
    #[serde(default = "default_resource")]
    pub resource: String,
}

fn default_resource() -> String {
    "changes".into()
}

impl PostgresCdcConfig {
    /// Checks the configuration without connecting (what `run` would refuse for a config
    /// reason).
    ///
    /// # Errors
    /// What is wrong, for the user (never the password).
    pub fn validate(&self) -> Result<(), String> {
        Conn::parse(&self.url).map_err(|e| e.message().to_owned())?;
        // Postgres: slot names are lower-case letters, digits and underscores, at most 63.
        let slot_ok = !self.slot.is_empty()
            && self.slot.len() <= 63
            && self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !slot_ok {
            return Err(format!(
                "slot {:?}: use 1 to 63 lower-case letters, digits and underscores",
                self.slot
            ));
        }
        if self.publication.is_empty() {
            return Err("publication is empty".into());
        }
        if let Some(bad) = self
            .tables
            .iter()
            .find(|t| t.is_empty() || t.split('.').count() > 2 || t.split('.').any(str::is_empty))
        {
            return Err(format!("table {bad:?}: use table or schema.table"));
        }
        if self.resource.is_empty() {
            return Err("resource is empty".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for PostgresCdcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCdcConfig")
            .field("url", &redact(&self.url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("create", &self.create)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match url.parse::<reqwest::Url>() {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

/// The parts of a connection URL.
#[derive(Clone)]
struct Conn {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl Conn {
    fn parse(url: &str) -> Result<Self, SourceError> {
        let parsed: reqwest::Url = url
            .parse()
            .map_err(|e| SourceError::fatal(format!("postgres_cdc: bad url: {e}")))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(SourceError::fatal(
                "postgres_cdc: url must start with postgres://",
            ));
        }
        let decode = |s: &str| {
            let mut out = Vec::new();
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%'
                    && let Some(v) = s
                        .get(i + 1..i + 3)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        Ok(Self {
            host: parsed.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: parsed.port().unwrap_or(5432),
            user: decode(parsed.username()),
            password: parsed
                .password()
                .map(decode)
                .or_else(|| std::env::var("PGPASSWORD").ok())
                .unwrap_or_default(),
            database: decode(parsed.path().trim_start_matches('/')),
        })
    }

    async fn control(&self) -> Result<tokio_postgres::Client, SourceError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(pg_error)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// Classifies a control-connection error: auth and missing objects are fatal, the rest
/// (connection refused, server shutting down) transient.
fn pg_error(error: tokio_postgres::Error) -> SourceError {
    use tokio_postgres::error::SqlState;
    let fatal = error.code().is_some_and(|c| {
        [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_OBJECT,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_CATALOG_NAME,
        ]
        .contains(c)
    });
    let message = format!(
        "postgres_cdc: {}",
        error
            .as_db_error()
            .map_or_else(|| error.to_string(), |e| e.message().to_owned())
    );
    if fatal {
        SourceError::fatal(message)
    } else {
        SourceError::transient(message)
    }
}

fn replication_error(error: pgwire_replication::PgWireError) -> SourceError {
    use pgwire_replication::PgWireError as E;
    let text = error.to_string();
    match error {
        E::Auth(_) => SourceError::fatal(format!("postgres_cdc: {text}")),
        E::Server(ref m) if m.contains("does not exist") => SourceError::fatal(format!(
            "postgres_cdc: {text} (create it, or set create = true)"
        )),
        _ => SourceError::transient(format!("postgres_cdc: {text}")),
    }
}

/// Reads changes from a replication slot.
#[derive(Debug)]
pub struct PostgresCdcSource {
    config: PostgresCdcConfig,
    name: String,
}

impl PostgresCdcSource {
    /// A source for `config`.
    pub fn new(config: PostgresCdcConfig) -> Self {
        let name = format!("postgres_cdc:{}", config.slot);
        Self { config, name }
    }

    /// Creates the publication and the slot when asked and missing.
    async fn ensure(&self, conn: &Conn) -> Result<(), SourceError> {
        let client = conn.control().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.config.publication],
            )
            .await
            .map_err(pg_error)?
            .is_some();
        if !exists {
            if self.config.tables.is_empty() {
                return Err(SourceError::fatal(format!(
                    "postgres_cdc: publication {} does not exist and no tables are configured to create it",
                    self.config.publication
                )));
            }
            let tables: Vec<String> = self
                .config
                .tables
                .iter()
                .map(|t| {
                    t.split('.')
                        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .collect();
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION \"{}\" FOR TABLE {}",
                    self.config.publication.replace('"', "\"\""),
                    tables.join(", ")
                ))
                .await
                .map_err(pg_error)?;
            tracing::info!(publication = %self.config.publication, "publication created");
        }
        let slot = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await
            .map_err(pg_error)?;
        if slot.is_none() {
            client
                .query(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&self.config.slot],
                )
                .await
                .map_err(pg_error)?;
            tracing::info!(slot = %self.config.slot, "replication slot created");
        }
        Ok(())
    }

    fn resource(&self, schema: &str, table: &str) -> String {
        self.config
            .resource
            .replace("{schema}", schema)
            .replace("{table}", table)
    }
}

/// Microseconds since 2000-01-01 (Postgres epoch) as RFC 3339.
fn pg_time(micros: i64) -> String {
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    chrono::DateTime::from_timestamp_micros(micros + PG_EPOCH_US)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

impl Source for PostgresCdcSource {
    type Payload = Value;

    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&mut self, ctx: SourceContext<Value>) -> Result<SessionEnd, SourceError> {
        let conn = Conn::parse(&self.config.url)?;
        if self.config.create {
            self.ensure(&conn).await?;
        }
        let start = ctx
            .resume_after(PARTITION)
            .and_then(Position::as_int)
            .map(Lsn::from_u64)
            .unwrap_or(Lsn::ZERO);
        let config = ReplicationConfig::new(
            conn.host.clone(),
            conn.user.clone(),
            conn.password.clone(),
            conn.database.clone(),
            self.config.slot.clone(),
            self.config.publication.clone(),
        )
        .with_port(conn.port)
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(start)
        .with_ack_lsn(start)
        .with_status_interval(Duration::from_secs(1))
        .with_application_name("sluice");
        let mut client = ReplicationClient::connect(config)
            .await
            .map_err(replication_error)?;
        tracing::info!(slot = %self.config.slot, start = %start.to_pg_string(), "replication started");
        let mut durable = ctx.durable();
        let mut relations = RelationCache::new();
        // The transaction being read: commit LSN, commit time, ordinal of the next change.
        let mut txn: Option<(u64, String, u64)> = None;
        // The newest position handed to `ctx.advance`.
        let mut advanced = start.as_u64();
        loop {
            let event = tokio::select! {
                _ = ctx.cancelled() => {
                    let _ = client.shutdown().await;
                    return Ok(SessionEnd::Closed);
                }
                changed = durable.changed() => {
                    if changed.is_ok() {
                        let lsn = durable.borrow_and_update().get(PARTITION).and_then(Position::as_int);
                        if let Some(lsn) = lsn {
                            // Only now may the server drop the WAL up to here.
                            client.update_applied_lsn(Lsn::from_u64(lsn));
                        }
                    }
                    continue;
                }
                event = client.recv() => event.map_err(replication_error)?,
            };
            let Some(event) = event else {
                return Ok(SessionEnd::Closed);
            };
            match event {
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    ctx.alive();
                    // Between transactions the server has sent everything before `wal_end`: a
                    // quiet publication moves its cursor (and so the slot) with the cluster's
                    // WAL instead of pinning it. Saved, and so acknowledged, once durable.
                    let wal_end = wal_end.as_u64();
                    if txn.is_none() && wal_end > advanced {
                        advanced = wal_end;
                        ctx.advance(Checkpoint::new(PARTITION, Position::Int(wal_end)))
                            .await?;
                    }
                }
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => txn = Some((final_lsn.as_u64(), pg_time(commit_time_micros), 0)),
                ReplicationEvent::Commit { end_lsn, .. } => {
                    txn = None;
                    advanced = advanced.max(end_lsn.as_u64());
                    ctx.advance(Checkpoint::new(PARTITION, Position::Int(end_lsn.as_u64())))
                        .await?;
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let message = match decode(&data) {
                        Ok(message) => message,
                        Err(error) => {
                            ctx.reject(Rejected {
                                resource: self.config.resource.clone().into(),
                                raw: format!("{data:?}"),
                                reason: error.to_string(),
                                checkpoint: None,
                            })
                            .await?;
                            continue;
                        }
                    };
                    match message {
                        Message::Relation(oid, relation) => {
                            if relation.replica_identity == b'n' {
                                tracing::warn!(table = %relation.table, "table has REPLICA IDENTITY NOTHING: deletes carry no key");
                            }
                            relations.insert(oid, relation);
                        }
                        Message::Change(change) => {
                            let Some((lsn, time, seq)) = txn.as_mut() else {
                                return Err(SourceError::transient(
                                    "postgres_cdc: change outside a transaction",
                                ));
                            };
                            for record in records(&relations, change, *lsn, time)? {
                                let (schema, table) = (
                                    record["schema"].as_str().unwrap_or_default().to_owned(),
                                    record["table"].as_str().unwrap_or_default().to_owned(),
                                );
                                let mut record = record;
                                record["seq"] = json!(*seq);
                                *seq += 1;
                                ctx.emit(Envelope::new(self.resource(&schema, &table), record))
                                    .await?;
                            }
                        }
                        Message::Begin { .. } | Message::Commit { .. } | Message::Other(_) => {}
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(SessionEnd::Finished),
            }
        }
    }
}

/// The change records of one change: one per row (a truncate gives one per table).
fn records(
    relations: &RelationCache,
    change: Change,
    lsn: u64,
    time: &str,
) -> Result<Vec<Value>, SourceError> {
    let relation = |oid: u32| {
        relations.get(&oid).ok_or_else(|| {
            SourceError::transient(format!("postgres_cdc: change for unknown relation {oid}"))
        })
    };
    let record = |rel: &pgoutput::Relation,
                  op: &str,
                  row: Option<Value>,
                  key: Value,
                  unchanged: Vec<String>| {
        json!({
            "lsn": lsn, "op": op, "schema": rel.schema, "table": rel.table,
            "commit_time": time, "key": key, "row": row, "unchanged_toast": unchanged,
            "deleted": op == "delete", "old_key": null, "old_row": null,
        })
    };
    Ok(match change {
        Change::Insert { relation: oid, new } => {
            let rel = relation(oid)?;
            let (row, unchanged) = tuple_json(rel, &new, false);
            let (key, _) = tuple_json(rel, &new, true);
            vec![record(
                rel,
                "insert",
                Some(Value::Object(row)),
                Value::Object(key),
                unchanged,
            )]
        }
        Change::Update {
            relation: oid,
            new,
            old,
        } => {
            let rel = relation(oid)?;
            let (row, unchanged) = tuple_json(rel, &new, false);
            let (key, _) = tuple_json(rel, &new, true);
            let mut update = record(
                rel,
                "update",
                Some(Value::Object(row)),
                Value::Object(key),
                unchanged,
            );
            // The server sends the old tuple when the key changed (its key columns) or always
            // under REPLICA IDENTITY FULL (the whole row): the row under the old key is gone.
            if let Some(old) = old {
                let (old_key, _) = tuple_json(rel, &old, true);
                update["old_key"] = Value::Object(old_key);
                if rel.replica_identity == b'f' {
                    update["old_row"] = Value::Object(tuple_json(rel, &old, false).0);
                }
            }
            vec![update]
        }
        Change::Delete { relation: oid, old } => {
            let rel = relation(oid)?;
            let (key, _) = tuple_json(rel, &old, true);
            vec![record(rel, "delete", None, Value::Object(key), Vec::new())]
        }
        Change::Truncate { relations: oids } => oids
            .into_iter()
            .map(|oid| {
                relation(oid).map(|rel| record(rel, "truncate", None, json!({}), Vec::new()))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// The change-log table: one row per change, keyed by (commit LSN, ordinal in the transaction),
/// so a replayed transaction converges.
pub fn changes_table(table: &str) -> TableSchema {
    let col = Column::new;
    TableSchema {
        table: table.into(),
        columns: vec![
            col("lsn", ColumnType::Integer, false),
            col("seq", ColumnType::Integer, false),
            col("op", ColumnType::Text, false),
            col("schema", ColumnType::Text, false),
            col("table", ColumnType::Text, false),
            col("commit_time", ColumnType::Timestamp, false),
            col("key", ColumnType::Json, false),
            col("row", ColumnType::Json, true),
            col("unchanged_toast", ColumnType::Json, true),
            col("deleted", ColumnType::Boolean, false),
            // An update that changed the key: the key before it (the old row too under
            // REPLICA IDENTITY FULL). NULL otherwise.
            col("old_key", ColumnType::Json, true),
            col("old_row", ColumnType::Json, true),
        ],
        key: vec!["lsn".into(), "seq".into()],
    }
}
