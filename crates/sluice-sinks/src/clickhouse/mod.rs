//! Defines the ClickHouse sink: one `INSERT … FORMAT JSONEachRow` over HTTP per batch into a
//! `ReplacingMergeTree` table keyed by the record key, so a replayed batch converges
//! (effectively-once; `SELECT … FINAL` or a merge removes the copies).
//!
//! Why JSONEachRow and not RowBinary: the rows arrive as JSON objects, the server parses both at
//! a similar cost for these narrow rows (BENCHMARKS.md, "ClickHouse formats"), and JSONEachRow
//! needs no per-version binary layout (Decimal widths, DateTime vs DateTime64) that an 18.16 and
//! a current server would disagree on.
//!
//! Errors: transient ones (network, 5xx, `TOO_MANY_PARTS`, timeouts) are retried here with
//! backoff a few times and then handed to the runtime as transient (it replays from the cursor);
//! a row the server cannot parse is a data error (the runtime bisects the batch to the row and
//! applies the resource's poison policy); an unknown table or column, a syntax error or bad
//! credentials are fatal.

mod client;
mod encode;

use std::time::{Duration, Instant};

pub use client::{ClickHouseEndpoint, ServerVersion};
use sluice::{
    Backoff, BackoffPolicy, CheckpointCommit, ErrorClass, Record, Sink, SinkError, TableSchema,
};

use self::{
    client::Client,
    encode::{Encoder, quote},
};

/// How the sink talks to the server.
#[derive(Clone, Debug)]
pub struct ClickHouseOptions {
    /// Timeout of one HTTP request (an INSERT of one batch).
    pub request_timeout: Duration,
    /// How many times a transient failure is retried inside one `write` before the runtime is
    /// told (it then replays from the cursor with its own backoff).
    pub retries: u32,
    /// The backoff between those retries.
    pub backoff: BackoffPolicy,
}

impl Default for ClickHouseOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            retries: 3,
            backoff: BackoffPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
                multiplier: 2.0,
                stable_after: Duration::ZERO,
            },
        }
    }
}

/// Writes JSON records into one ClickHouse table.
#[derive(Debug)]
pub struct ClickHouseSink {
    client: Client,
    schema: TableSchema,
    version_column: Option<String>,
    options: ClickHouseOptions,
    encoder: Option<Encoder>,
    insert: String,
}

impl ClickHouseSink {
    /// A sink writing `schema`'s table at `endpoint`.
    ///
    /// # Errors
    /// A fatal error when the schema is invalid or the HTTP client cannot be built.
    pub fn new(
        endpoint: ClickHouseEndpoint,
        schema: TableSchema,
        options: ClickHouseOptions,
    ) -> Result<Self, SinkError> {
        schema.validate().map_err(SinkError::fatal)?;
        let client = Client::new(endpoint, options.request_timeout)?;
        let names: Vec<_> = schema.columns.iter().map(|c| quote(&c.name)).collect();
        // The FORMAT is appended once `prepare` knows the table's types.
        let insert = format!(
            "INSERT INTO {} ({}) FORMAT ",
            quote(&schema.table),
            names.join(", ")
        );
        Ok(Self {
            client,
            schema,
            version_column: None,
            options,
            encoder: None,
            insert,
        })
    }

    /// The dead-letter table `table` at `endpoint` (append-only `MergeTree`).
    ///
    /// # Errors
    /// A fatal error when the HTTP client cannot be built.
    pub fn dead_letters(
        endpoint: ClickHouseEndpoint,
        table: &str,
        options: ClickHouseOptions,
    ) -> Result<Self, SinkError> {
        Self::new(endpoint, TableSchema::dead_letters(table), options)
    }

    /// Uses `column` as the `ReplacingMergeTree` version: of two rows with the same key the one
    /// with the larger version survives, so a replayed old batch never beats newer data. Pick a
    /// column that grows in source order (an LSN, a sequence, a trade id, `updated_at`); it must
    /// be an integer (stored as `UInt64`) or a timestamp. Without it, rows with equal keys are
    /// taken as copies of one another (right for immutable facts such as trades).
    ///
    /// # Errors
    /// A fatal error when the column is not in the schema or has another type.
    pub fn version(mut self, column: &str) -> Result<Self, SinkError> {
        let found = self.schema.columns.iter().find(|c| c.name == column);
        match found.map(|c| c.kind) {
            Some(sluice::ColumnType::Integer | sluice::ColumnType::Timestamp) => {}
            Some(other) => {
                return Err(SinkError::fatal(format!(
                    "table {}: version column {column} must be an integer or a timestamp, not {other:?}",
                    self.schema.table
                )));
            }
            None => {
                return Err(SinkError::fatal(format!(
                    "table {}: version column {column} is not a column",
                    self.schema.table
                )));
            }
        }
        self.version_column = Some(column.to_owned());
        Ok(self)
    }

    /// The table schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The insert format chosen by `prepare`: `RowBinary` when the table has exactly the types
    /// the sink writes, else `JSONEachRow` (a table made by someone else). `None` before.
    pub fn format(&self) -> Option<&'static str> {
        self.encoder.as_ref().map(Encoder::format)
    }

    async fn server_version(&self) -> Result<ServerVersion, SinkError> {
        let text = self.client.execute("SELECT version()", None).await?;
        ServerVersion::parse(&text).ok_or_else(|| {
            SinkError::fatal(format!(
                "clickhouse {}: unexpected version {:?}",
                self.client.endpoint(),
                text.trim()
            ))
        })
    }

    /// Checks the table has every column; returns each existing column's name and type.
    async fn check_columns(&self) -> Result<Vec<(String, String)>, SinkError> {
        let query = format!(
            "SELECT name, type FROM system.columns WHERE database = {} AND table = {} FORMAT TabSeparated",
            encode::string_literal(self.client.endpoint().database()),
            encode::string_literal(&self.schema.table),
        );
        let text = self.client.execute(&query, None).await?;
        // TabSeparated escapes tabs, newlines, quotes and backslashes; unescape the common ones.
        let unescape = |t: &str| {
            t.replace("\\t", "\t")
                .replace("\\n", "\n")
                .replace("\\'", "'")
                .replace("\\\\", "\\")
        };
        let existing: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(name, kind)| (unescape(name), unescape(kind)))
            .collect();
        let missing: Vec<_> = self
            .schema
            .columns
            .iter()
            .filter(|c| !existing.iter().any(|(name, _)| name == &c.name))
            .map(|c| c.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(SinkError::fatal(format!(
                "clickhouse table {}.{} exists without column(s) {}; migrate it or write to another table",
                self.client.endpoint().database(),
                self.schema.table,
                missing.join(", ")
            )));
        }
        Ok(existing)
    }

    async fn insert<R: Record>(&mut self, batch: &[R]) -> Result<(), SinkError> {
        let encoder = self
            .encoder
            .as_ref()
            .ok_or_else(|| SinkError::fatal("clickhouse sink written before prepare"))?;
        // Shared, not copied, by each retry attempt.
        let body = bytes::Bytes::from(encoder.rows(batch)?);
        let bytes = body.len();
        let labels = [("table", self.schema.table.clone())];
        let mut backoff = Backoff::new(self.options.backoff);
        loop {
            let started = Instant::now();
            let insert = format!("{}{}", self.insert, encoder.format());
            match self.client.execute(&insert, Some(body.clone())).await {
                Ok(_) => {
                    metrics::histogram!("sluice_clickhouse_insert_seconds", &labels)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("sluice_clickhouse_rows_total", &labels)
                        .increment(batch.len() as u64);
                    metrics::counter!("sluice_clickhouse_bytes_total", &labels)
                        .increment(bytes as u64);
                    return Ok(());
                }
                Err(error) => {
                    metrics::counter!(
                        "sluice_clickhouse_insert_errors_total",
                        "table" => self.schema.table.clone(),
                        "class" => error.class().as_str()
                    )
                    .increment(1);
                    if error.class() != ErrorClass::Transient
                        || backoff.attempts() >= self.options.retries
                    {
                        return Err(error);
                    }
                    let wait = backoff.next_delay();
                    tracing::warn!(
                        table = %self.schema.table,
                        attempt = backoff.attempts(),
                        wait_ms = wait.as_millis() as u64,
                        error = %error,
                        "clickhouse insert failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

impl<R: Record> Sink<R> for ClickHouseSink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        let version = self.server_version().await?;
        let mut encoder = Encoder::new(&self.schema, self.version_column.as_deref(), version);
        if !version.has_datetime64() && encoder.has_timestamps() {
            tracing::warn!(
                server = %version,
                table = %self.schema.table,
                "clickhouse server has no DateTime64: timestamps are stored to the second"
            );
        }
        self.client.execute(&encoder.create_table(), None).await?;
        let existing = self.check_columns().await?;
        // RowBinary when the table has exactly the types this encoder writes (it made the
        // table, or an identical one); JSONEachRow, which the server converts, for a table
        // made otherwise.
        let differing: Vec<String> = encoder
            .column_types()
            .into_iter()
            .filter(|(name, kind)| !existing.iter().any(|(n, k)| n == name && k == kind))
            .map(|(name, kind)| format!("{name} (expected {kind})"))
            .collect();
        if differing.is_empty() {
            encoder.use_binary();
        } else {
            tracing::info!(table = %self.schema.table, columns = %differing.join(", "), "clickhouse table has other column types: writing JSONEachRow");
        }
        tracing::info!(
            endpoint = %self.client.endpoint(),
            table = %self.schema.table,
            server = %version,
            "clickhouse table ready"
        );
        self.encoder = Some(encoder);
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &[R],
        _commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        self.insert(batch).await
    }
}
