//! Postgres logical replication (`pgoutput`) as a source: every committed insert, update,
//! delete and truncate of the published tables, in commit order, from a persistent replication
//! slot. The cursor is the commit's end LSN (partition `wal`); it is acknowledged to the server
//! (standby status `flush`) only once the runtime reports it durable, so the slot keeps every
//! change sluice has not stored, and a restart resumes from the slot with nothing lost.
//!
//! Transport (startup, auth, keepalives even while the sink is slow, status updates):
//! `pgwire-replication`. Decoding of the change messages: [`pgoutput`].

mod audit;
mod config;
mod connector;
pub mod pgoutput;
mod record;
mod source;

pub use audit::{StoredChange, TableAudit, audit_table, fold};
pub use config::PostgresCdcConfig;
pub use connector::PostgresCdc;
pub use record::changes_table;
pub use source::PostgresCdcSource;

/// The partition of the cursor.
pub const PARTITION: &str = "wal";
