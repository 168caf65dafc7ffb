//! Checkpoint stores for sluice.
//!
//! - [`sqlite`]: the embedded default. One file holds cursors and leases, and (through
//!   `sluice-sinks`' SQLite sink) the records too, so both commit in one transaction.
//!
//! The memory store for tests lives in the core crate ([`sluice::MemoryStore`]).

#[cfg(feature = "sqlite")]
pub mod sqlite;
