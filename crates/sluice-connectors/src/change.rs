//! The change record shared by the database change sources (`postgres_cdc`, `supabase`): one
//! row change with the same operation names, the same key and old-key fields and the same
//! version rule, whichever source read it.
//!
//! - `op`: `insert`, `update`, `delete`, `truncate` (Postgres), `snapshot` (a row read by a
//!   backfill, not a change event); `deleted` is `op == "delete"`.
//! - `key`: the primary key (replica identity) columns of the row; `old_key` (and `old_row` when
//!   the source has the whole old row) only when an update changed the key.
//! - `version`: text whose order is the order of the changes of one row, fixed-width —
//!   Postgres: the commit LSN and the ordinal in the transaction (`00000000016B3748/00000003`);
//!   Supabase: the cursor column's time in UTC microseconds (the commit time for a delete).
//!   Each connector's tables key on it (with the row's key) so a change read twice is stored once.

use std::sync::Arc;

use serde_json::Value;
use sluice::{IntoRecords, Record, TransformError, Transformed};

/// One row change. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Record)]
#[record(table = "changes", key(schema, table, key, version))]
pub struct ChangeRecord {
    /// The schema of the changed table.
    pub schema: Arc<str>,
    /// The changed table.
    pub table: Arc<str>,
    /// `insert`, `update`, `delete`, `truncate` or `snapshot`.
    pub op: &'static str,
    /// The key columns of the row (an empty object for a truncate).
    #[record(json)]
    pub key: Value,
    /// The change's version (see the module docs).
    pub version: String,
    /// Whether the row is gone (`op == "delete"`).
    pub deleted: bool,
    /// When the change committed, if the source knows.
    #[record(timestamp)]
    pub commit_time: Option<String>,
    /// The row after the change (none for deletes and truncates).
    #[record(json)]
    pub row: Option<Value>,
    /// The key before an update that changed it.
    #[record(json)]
    pub old_key: Option<Value>,
    /// The whole row before an update, when the source has it (REPLICA IDENTITY FULL).
    #[record(json)]
    pub old_row: Option<Value>,
    /// Columns whose large (TOAST) value did not change and was not sent.
    #[record(json)]
    pub unchanged_toast: Option<Value>,
    /// The commit LSN (Postgres).
    pub lsn: Option<u64>,
    /// The ordinal of the change in its transaction (Postgres).
    pub seq: Option<u64>,
    /// Where it was read: `wal`, `realtime` or `backfill`.
    pub source: &'static str,
}

impl ChangeRecord {
    /// A change of `op` to the row with `key` in `schema.table`; the other fields empty.
    pub fn new(
        schema: Arc<str>,
        table: Arc<str>,
        op: &'static str,
        key: Value,
        version: String,
        source: &'static str,
    ) -> Self {
        Self {
            schema,
            table,
            op,
            key,
            version,
            deleted: op == "delete",
            commit_time: None,
            row: None,
            old_key: None,
            old_row: None,
            unchanged_toast: None,
            lsn: None,
            seq: None,
            source,
        }
    }
}

/// Postgres's version of a change: the commit LSN and the ordinal, fixed-width hex and decimal,
/// so text order is (LSN, ordinal) order.
pub fn wal_version(lsn: u64, seq: u64) -> String {
    format!("{lsn:016X}/{seq:08}")
}

/// As its JSON row (how a dead letter shows it).
impl serde::Serialize for ChangeRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl IntoRecords<ChangeRecord> for ChangeRecord {
    fn into_records(self) -> Result<Transformed<ChangeRecord>, (Self, TransformError)> {
        Ok(Transformed::One(self))
    }
}

/// One table's audit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableAudit {
    /// `schema.table`.
    pub table: String,
    /// Rows in the source table.
    pub source_rows: u64,
    /// Rows the destination's changes add up to.
    pub destination_rows: u64,
    /// Keys (as JSON) in the table, not in the destination.
    pub missing: Vec<String>,
    /// Keys in the destination, not in the table.
    pub extra: Vec<String>,
    /// Keys whose row differs.
    pub stale: Vec<String>,
}

impl TableAudit {
    /// Whether the destination holds exactly the table.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.stale.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_versions_order_as_lsn_then_ordinal() {
        let mut versions = vec![
            wal_version(0x1_0000_0000, 0),
            wal_version(0x16B_3748, 10),
            wal_version(0x16B_3748, 9),
            wal_version(0xF, 100_000),
        ];
        versions.sort();
        assert_eq!(
            versions,
            vec![
                wal_version(0xF, 100_000),
                wal_version(0x16B_3748, 9),
                wal_version(0x16B_3748, 10),
                wal_version(0x1_0000_0000, 0),
            ]
        );
        assert_eq!(wal_version(0x16B_3748, 3), "00000000016B3748/00000003");
    }
}
