//! Destinations for sluice, one feature each:
//!
//! - [`sqlite`]: a table created from a [`sluice::TableSchema`], upserted by key, sharing its
//!   transaction with the SQLite checkpoint store for exactly-once.
//! - [`clickhouse`]: a `ReplacingMergeTree` table over HTTP, one INSERT per batch, replays
//!   converge by key (effectively-once); works with 18.16 and current servers.
//! - [`kafka`]: a topic through an idempotent rdkafka producer, a batch written when every
//!   delivery report succeeded.
//! - [`jsonl`]: JSON lines appended to a file (fsynced per batch) or written to stdout.
//! - [`postgres`]: a table fed by `COPY` into a staging table and one merge per batch, sharing
//!   its transaction with the Postgres checkpoint store for exactly-once.

#[cfg(feature = "clickhouse")]
pub mod clickhouse;
#[cfg(feature = "jsonl")]
pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
