//! What a change becomes: the change record, its cursor position and version, and the tables —
//! one change row per event, and the current state per row.

use std::sync::Arc;

use serde_json::Value;
use sluice::{Column, ColumnType, Position, TableSchema};

use crate::change::ChangeRecord;

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

/// A timestamp as fixed-width UTC microseconds (`2026-09-29T13:46:08.990112Z`), so that text
/// order is time order; `None` when it is not a time.
pub fn normalize_time(text: &str) -> Option<String> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()?;
    Some(
        parsed
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
    )
}

/// The cursor position of a row: (version, primary key). Integer keys compare as integers.
pub fn position(version: &str, key: &Value) -> Position {
    let key = match key {
        Value::Number(n) if n.as_u64().is_some() => Position::Int(n.as_u64().unwrap_or_default()),
        Value::String(s) => Position::Text(s.clone()),
        other => Position::Text(other.to_string()),
    };
    Position::Tuple(vec![Position::Text(version.to_owned()), key])
}

/// A change record for the change table (and the current-state table, which takes a subset
/// of its fields by name).
#[allow(clippy::too_many_arguments)]
pub fn change_record(
    schema: &Arc<str>,
    table: &str,
    key: Value,
    version: &str,
    op: &'static str,
    commit_time: Option<&str>,
    row: Option<Value>,
    source: &'static str,
) -> ChangeRecord {
    let mut record = ChangeRecord::new(
        schema.clone(),
        table.into(),
        op,
        key,
        version.to_owned(),
        source,
    );
    record.commit_time = commit_time.map(str::to_owned);
    record.row = row;
    record
}
