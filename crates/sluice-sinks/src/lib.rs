//! Destinations for sluice, one feature each:
//!
//! - [`sqlite`]: a table created from a [`sluice::TableSchema`], upserted by key, sharing its
//!   transaction with the SQLite checkpoint store for exactly-once.
//! - [`jsonl`]: JSON lines appended to a file (fsynced per batch) or written to stdout.

#[cfg(feature = "jsonl")]
pub mod jsonl;
#[cfg(feature = "sqlite")]
pub mod sqlite;
