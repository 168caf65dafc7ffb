//! Defines the default destination of the Supabase connector: one change row per event.

use sluice::{Column, ColumnType, TableSchema};

/// The change table: one row per change, keyed by (table, key, version, deleted) so a change
/// seen live and again by backfill (or twice live) is stored once. `version` is the cursor
/// column's value normalised to UTC microseconds (the commit time for deletes), so two writes to
/// one row within the same second stay two rows (seed §4 item 14); `op` is the one operation
/// column (item 16).
pub fn changes_table(table: &str) -> TableSchema {
    let col = Column::new;
    TableSchema {
        table: table.into(),
        columns: vec![
            col("schema", ColumnType::Text, false),
            col("table", ColumnType::Text, false),
            col("key", ColumnType::Json, false),
            col("version", ColumnType::Timestamp, false),
            col("deleted", ColumnType::Boolean, false),
            col("op", ColumnType::Text, false),
            col("commit_time", ColumnType::Timestamp, true),
            col("row", ColumnType::Json, true),
            col("source", ColumnType::Text, false),
        ],
        key: vec![
            "table".into(),
            "key".into(),
            "version".into(),
            "deleted".into(),
        ],
    }
}

/// The current-state table: one row per source row, keyed by (schema, table, key); the sink
/// keeps the newest `version` (a late or replayed older change never wins), and a delete stays as
/// a tombstone (`deleted = true`, `row` null) so a late older update cannot resurrect the row.
pub fn state_table(table: &str) -> TableSchema {
    let col = Column::new;
    TableSchema {
        table: table.into(),
        columns: vec![
            col("schema", ColumnType::Text, false),
            col("table", ColumnType::Text, false),
            col("key", ColumnType::Json, false),
            col("version", ColumnType::Timestamp, false),
            col("deleted", ColumnType::Boolean, false),
            col("row", ColumnType::Json, true),
            col("source", ColumnType::Text, false),
        ],
        key: vec!["schema".into(), "table".into(), "key".into()],
    }
}
