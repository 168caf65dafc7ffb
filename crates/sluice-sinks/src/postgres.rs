//! Defines the Postgres sink: a table created from a [`TableSchema`], each batch copied
//! (`COPY … FROM STDIN`, binary format) into a temporary staging table and merged with one
//! statement — an upsert by key that keeps the last record of a key in the batch, and with a
//! version column never lets an older row overwrite a newer one. Numerics are encoded from their
//! exact text, digit for digit. When the checkpoint store is the same database, the cursors commit in the same
//! transaction, under the lease (exactly-once), as with SQLite. A commit whose answer is lost
//! (the connection drops after COMMIT was sent) is resolved by its transaction id when the
//! batch is offered again (`txid_status`): it is not written twice, cursors or not.

use bytes::Bytes;
use futures_util::SinkExt;
use sluice::{CheckpointCommit, ColumnType, ErrorClass, Record, Sink, SinkError, TableSchema};
use tokio_postgres::Client;

/// A string literal of a table name (for the advisory lock key).
fn sluice_table_literal(table: &str) -> String {
    format!("'{}'", table.replace('\'', "''"))
}

use crate::sql::quote;

mod binary;

fn sql_type(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::Integer => "bigint",
        ColumnType::Float => "double precision",
        ColumnType::Decimal => "numeric",
        ColumnType::Text => "text",
        ColumnType::Boolean => "boolean",
        ColumnType::Timestamp => "timestamptz",
        ColumnType::Json => "jsonb",
    }
}

/// What a Postgres error means for a batch: bad data (class 22, 23) is the record's fault, lost
/// connections, serialization failures and exhausted resources pass, the rest is fatal.
fn classify(error: &tokio_postgres::Error) -> ErrorClass {
    match error.code().map(|c| &c.code()[..2]) {
        // Without a SQL state: the connection's (lost: transient; a refused certificate: fatal).
        None => sluice_stores::postgres::classify(error),
        Some("22" | "23") => ErrorClass::Data,
        Some("08" | "40" | "53" | "57" | "58") => ErrorClass::Transient,
        // The server ended an idle transaction (a writer that stalled): retry.
        Some(_)
            if error.code()
                == Some(&tokio_postgres::error::SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT) =>
        {
            ErrorClass::Transient
        }
        Some(_) => ErrorClass::Fatal,
    }
}

fn sink_error(context: &str, error: tokio_postgres::Error) -> SinkError {
    let detail = error
        .as_db_error()
        .map(|e| format!(": {}", e.message()))
        .unwrap_or_default();
    SinkError::new(classify(&error), format!("postgres: {context}{detail}")).with_source(error)
}

/// Writes records of any [`Record`] type into one Postgres table.
pub struct PostgresSink {
    target: sluice_stores::postgres::PgTarget,
    scope: String,
    schema: TableSchema,
    version: Option<String>,
    client: Option<Client>,
    /// A commit whose answer was lost: resolved before the next write.
    in_doubt: Option<InDoubt>,
}

/// A transaction whose COMMIT was sent but whose answer never came (the connection dropped):
/// it may or may not have committed. The runtime offers the same batch again after such an
/// error; the server's record of the transaction id says whether it is in already. This
/// covers what the cursors cannot: a write that carries no new cursor, or none at all.
#[derive(Debug)]
struct InDoubt {
    xid: i64,
    /// What the batch was, to be sure the retry is the same one.
    rows: usize,
    cursors: Vec<sluice::Checkpoint>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresSink")
            .field("scope", &self.scope)
            .field("table", &self.schema.table)
            .finish_non_exhaustive()
    }
}

impl PostgresSink {
    /// A sink writing `schema`'s table at `url` (connects when prepared).
    ///
    /// # Errors
    /// A fatal error when the schema is invalid or `url` is not a Postgres URL.
    pub fn new(url: &str, schema: TableSchema) -> Result<Self, SinkError> {
        schema.validate().map_err(SinkError::fatal)?;
        let target =
            sluice_stores::postgres::target(url).map_err(|e| SinkError::fatal(e.to_string()))?;
        let scope = sluice_stores::postgres::scope_of(&target.config);
        Ok(Self {
            target,
            scope,
            schema,
            version: None,
            client: None,
            in_doubt: None,
        })
    }

    /// The dead-letter table `table` at `url`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn dead_letters(url: &str, table: &str) -> Result<Self, SinkError> {
        Self::new(url, TableSchema::dead_letters(table))
    }

    /// Upserts only when the incoming row's `column` is at least the stored one.
    ///
    /// # Errors
    /// A fatal error when the column is not in the schema or the table has no key.
    pub fn version(mut self, column: &str) -> Result<Self, SinkError> {
        if !self.schema.columns.iter().any(|c| c.name == column) || self.schema.key.is_empty() {
            return Err(SinkError::fatal(format!(
                "table {}: version column {column} must be a column of a keyed table",
                self.schema.table
            )));
        }
        self.version = Some(column.to_owned());
        Ok(self)
    }

    fn stage(&self) -> String {
        quote(&format!("_sluice_stage_{}", self.schema.table))
    }

    async fn connect(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = self
                .target
                .connect("postgres sink")
                .await
                .map_err(|e| sink_error("connect", e))?;
            // The staging table lives as long as the connection; rows as long as a transaction.
            client
                .batch_execute(&format!(
                    // The sink's columns only, without constraints or defaults: a table with
                    // more columns (a NOT NULL one with a default) is filled by the merge.
                    "CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS
                       SELECT {names} FROM {table} WITH NO DATA;
                     ALTER TABLE {stage} ADD COLUMN IF NOT EXISTS _sluice_seq bigserial",
                    stage = self.stage(),
                    table = quote(&self.schema.table),
                    names = self
                        .schema
                        .columns
                        .iter()
                        .map(|c| quote(&c.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
                .await
                .map_err(|e| sink_error("create the staging table", e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// The statement moving the staged rows into the table: the last row of each key.
    fn merge_sql(&self) -> String {
        let schema = &self.schema;
        let names: Vec<String> = schema.columns.iter().map(|c| quote(&c.name)).collect();
        let names = names.join(", ");
        let (table, stage) = (quote(&schema.table), self.stage());
        if schema.key.is_empty() {
            return format!(
                "INSERT INTO {table} ({names}) SELECT {names} FROM {stage} ORDER BY _sluice_seq"
            );
        }
        let key: Vec<String> = schema.key.iter().map(|k| quote(k)).collect();
        let key = key.join(", ");
        let updates: Vec<String> = schema
            .columns
            .iter()
            .filter(|c| !schema.key.contains(&c.name))
            .map(|c| format!("{0} = excluded.{0}", quote(&c.name)))
            .collect();
        let conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            let mut action = format!("DO UPDATE SET {}", updates.join(", "));
            if let Some(version) = &self.version {
                // An older version arriving late (a replay, a backfill) never beats newer data.
                action.push_str(&format!(
                    " WHERE excluded.{0} >= {table}.{0}",
                    quote(version)
                ));
            }
            action
        };
        // The record of a key that stays: the newest version (with a version column), else the
        // last one of the batch.
        let newest = match &self.version {
            Some(version) => format!("{} DESC NULLS LAST, _sluice_seq DESC", quote(version)),
            None => "_sluice_seq DESC".to_owned(),
        };
        format!(
            "INSERT INTO {table} ({names})
             SELECT DISTINCT ON ({key}) {names} FROM {stage} ORDER BY {key}, {newest}
             ON CONFLICT ({key}) {conflict}"
        )
    }
}

/// What became of a commit whose answer was lost.
enum Settled {
    Committed,
    /// Aborted, too old to tell, or unknown to this server (a failover to a replica that never
    /// got it): the batch is to be written.
    NotCommitted,
}

/// Asks the server what became of transaction `xid`. `Err` (transient) while it cannot say
/// yet: the commit still in progress, or the question itself lost with the connection.
async fn settle(client: &Client, xid: i64) -> Result<Settled, SinkError> {
    match client.query_one("SELECT txid_status($1)", &[&xid]).await {
        Ok(row) => match row.get::<_, Option<String>>(0).as_deref() {
            Some("committed") => Ok(Settled::Committed),
            Some("in progress") => Err(SinkError::transient(
                "postgres: the last commit, whose answer was lost, is still in progress",
            )),
            _ => Ok(Settled::NotCommitted),
        },
        // The server answered that it does not know the id (a transaction id "in the future"
        // after a failover): not committed here.
        Err(error) if error.code().is_some_and(|c| &c.code()[..2] == "22") => {
            Ok(Settled::NotCommitted)
        }
        Err(error) => Err(SinkError::transient(
            "postgres: reading the status of the last commit failed",
        )
        .with_source(error)),
    }
}

impl<R: Record> Sink<R> for PostgresSink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        let create = crate::sql::create_table(&self.schema, sql_type);
        let table = self.schema.table.clone();
        {
            // The table first (the staging table is made LIKE it when connecting).
            let client = self
                .target
                .connect("postgres sink")
                .await
                .map_err(|e| sink_error("connect", e))?;
            client
                .batch_execute(&format!(
                    // Two pipelines creating one table at once race in the catalog otherwise.
                    "BEGIN; SELECT pg_advisory_xact_lock(hashtext({})); {create}; COMMIT",
                    sluice_table_literal(&table)
                ))
                .await
                .map_err(|e| sink_error(&format!("create table {table}"), e))?;
            drop(client);
        }
        self.connect().await?;
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &[R],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        let table = self.schema.table.clone();
        let columns = self.schema.columns.clone();
        let plan =
            R::plan(&columns).map_err(|why| SinkError::fatal(format!("table {table}: {why}")))?;
        let kinds: Vec<ColumnType> = columns.iter().map(|c| c.kind).collect();
        let mut body = Vec::with_capacity(batch.len() * 64 + binary::HEADER.len() + 2);
        body.extend_from_slice(binary::HEADER);
        for record in batch {
            binary::BinaryRow::start(&mut body, columns.len())
                .map_err(|why| SinkError::fatal(format!("table {table}: {why}")))?;
            let mut row = binary::BinaryRow {
                out: &mut body,
                kinds: &kinds,
                next: 0,
            };
            record
                .write(&plan, &columns, &mut row)
                .map_err(|why| SinkError::data(format!("table {table}: {why}")))?;
            if row.next != columns.len() {
                return Err(SinkError::data(format!(
                    "table {table}: the record wrote {} cells for {} columns",
                    row.next,
                    columns.len()
                )));
            }
        }
        body.extend_from_slice(binary::TRAILER);
        let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
        let copy = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.stage(),
            names.join(", ")
        );
        let merge = self.merge_sql();
        let cursors = commit.map_or(&[][..], |c| c.checkpoints);
        // Connected first: a failure to connect keeps the doubt for the next try.
        self.connect().await?;
        if let Some(doubt) = self.in_doubt.take()
            && doubt.rows == batch.len()
            && doubt.cursors == cursors
        {
            let client = self.client.as_mut().expect("connected above");
            match settle(client, doubt.xid).await {
                Ok(Settled::Committed) => {
                    tracing::info!(table = %table, "postgres: the batch whose commit was not acknowledged is in; not written again");
                    return Ok(());
                }
                Ok(Settled::NotCommitted) => {}
                Err(error) => {
                    self.in_doubt = Some(doubt);
                    return Err(error);
                }
            }
        }
        let client = self.connect().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| sink_error("begin", e))?;
        if let Some(commit) = commit
            && sluice_stores::postgres::already_saved(&tx, commit.lease, commit.checkpoints)
                .await
                .map_err(|e| {
                    SinkError::new(e.class(), "read cursors in the write transaction")
                        .with_source(e)
                })?
        {
            // A retry of a batch whose commit went through but whose acknowledgement was lost:
            // its cursors are stored, so its records are too (one transaction). Writing them
            // again would double a table without a key.
            tracing::info!(table = %table, "postgres: batch already committed (a lost acknowledgement); not written again");
            return Ok(());
        }
        let sink = tx
            .copy_in(&copy)
            .await
            .map_err(|e| sink_error(&format!("copy into {table}"), e))?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(body))
            .await
            .map_err(|e| sink_error(&format!("copy into {table}"), e))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| sink_error(&format!("copy into {table}"), e))?;
        tx.execute(&merge, &[])
            .await
            .map_err(|e| sink_error(&format!("merge into {table}"), e))?;
        if let Some(commit) = commit {
            sluice_stores::postgres::save_in_tx(&tx, commit.lease, commit.checkpoints)
                .await
                .map_err(|e| {
                    SinkError::new(e.class(), "save cursors in the write transaction")
                        .with_source(e)
                })?;
        }
        // The transaction's id, to tell later whether a commit whose answer is lost went in.
        let xid: i64 = tx
            .query_one("SELECT txid_current()", &[])
            .await
            .map_err(|e| sink_error("read the transaction id", e))?
            .get(0);
        let committed = tx.commit().await;
        match committed {
            Ok(()) => Ok(()),
            Err(error) => {
                // The connection broke (no SQL state, or a connection, operator or system
                // class: a pooler such as PgBouncer reports a lost server so): the server may
                // have committed. Other errors are the server's answer: rolled back.
                if error
                    .code()
                    .is_none_or(|code| matches!(&code.code()[..2], "08" | "57" | "58"))
                {
                    self.in_doubt = Some(InDoubt {
                        xid,
                        rows: batch.len(),
                        cursors: cursors.to_vec(),
                    });
                }
                Err(sink_error(&format!("commit {table}"), error))
            }
        }
    }

    fn transaction_scope(&self) -> Option<&str> {
        Some(&self.scope)
    }
}
