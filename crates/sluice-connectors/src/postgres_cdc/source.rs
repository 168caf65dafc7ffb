//! The replication session: create the publication and slot when asked, stream pgoutput from
//! the saved LSN, emit change records, advance at commits and quiet keepalives, acknowledge only
//! what is durable.

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use sluice::{
    Checkpoint, Envelope, Heads, Position, Rejected, SessionEnd, Source, SourceContext, SourceError,
};

use super::{
    PARTITION,
    config::{Conn, PostgresCdcConfig, pg_error},
    pgoutput::{Message, RelationCache, decode},
    record::{NameCache, Names, records},
};
use crate::change::ChangeRecord;

/// What the slot's lag counts: bytes of WAL between the server's end and the durable LSN.
const LAG_UNIT: &str = "bytes";

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

/// How often the server's WAL position is read for the lag.
const HEAD_POLL: Duration = Duration::from_secs(1);

/// Reports the server's WAL position as the partition's head, every [`HEAD_POLL`], on a
/// connection of its own. The replication stream's keepalives carry only what the walsender has
/// sent, and it stops sending while the sink holds the session back (backpressure): exactly
/// when the lag matters, it would read small. A failed read is retried quietly: it only feeds
/// a status page.
async fn poll_head(conn: Conn, heads: Heads) {
    const SQL: &str = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0')::bigint";
    loop {
        match conn.control().await {
            Ok(client) => loop {
                match client.query_one(SQL, &[]).await {
                    Ok(row) => {
                        if let Ok(Some(lsn)) = row.try_get::<_, Option<i64>>(0) {
                            heads.set(PARTITION, lsn.unsigned_abs(), LAG_UNIT);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "postgres_cdc: reading the WAL position failed");
                        break;
                    }
                }
                tokio::time::sleep(HEAD_POLL).await;
            },
            Err(error) => {
                tracing::debug!(error = %error.message(), "postgres_cdc: no connection to read the WAL position");
            }
        }
        tokio::time::sleep(HEAD_POLL * 5).await;
    }
}

/// Aborts a task when dropped.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Source for PostgresCdcSource {
    type Payload = ChangeRecord;

    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&mut self, ctx: SourceContext<ChangeRecord>) -> Result<SessionEnd, SourceError> {
        let conn = Conn::parse(&self.config.url)?;
        if self.config.create {
            self.ensure(&conn).await?;
        }
        // Stopped with the session (the runtime drops the future on every end).
        let _poller = Aborting(tokio::spawn(poll_head(conn.clone(), ctx.heads())));
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
        let mut names = NameCache::new();
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
                    ctx.set_head(PARTITION, wal_end.as_u64(), LAG_UNIT);
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
                    ctx.set_head(PARTITION, end_lsn.as_u64(), LAG_UNIT);
                    advanced = advanced.max(end_lsn.as_u64());
                    ctx.advance(Checkpoint::new(PARTITION, Position::Int(end_lsn.as_u64())))
                        .await?;
                }
                ReplicationEvent::XLogData { data, wal_end, .. } => {
                    // The server's WAL end (0 in the middle of a transaction).
                    ctx.set_head(PARTITION, wal_end.as_u64(), LAG_UNIT);
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
                            names.insert(
                                oid,
                                Names {
                                    schema: relation.schema.as_str().into(),
                                    table: relation.table.as_str().into(),
                                    resource: self
                                        .resource(&relation.schema, &relation.table)
                                        .into(),
                                },
                            );
                            relations.insert(oid, relation);
                        }
                        Message::Change(change) => {
                            let Some((lsn, time, seq)) = txn.as_mut() else {
                                return Err(SourceError::transient(
                                    "postgres_cdc: change outside a transaction",
                                ));
                            };
                            for (resource, record) in
                                records(&relations, &names, change, *lsn, time, seq)?
                            {
                                ctx.emit(Envelope::new(resource, record)).await?;
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
