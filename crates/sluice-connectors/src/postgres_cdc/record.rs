//! What a change becomes: one JSON record per changed row (key, row, old key, unchanged TOAST
//! named) and the change-log table it lands in.

use serde_json::{Value, json};
use sluice::{Column, ColumnType, SourceError, TableSchema};

use super::pgoutput::{self, Change, RelationCache, tuple_json};

/// The change records of one change: one per row (a truncate gives one per table).
pub(crate) fn records(
    relations: &RelationCache,
    change: Change,
    lsn: u64,
    time: &str,
) -> Result<Vec<Value>, SourceError> {
    let relation = |oid: u32| {
        relations.get(&oid).ok_or_else(|| {
            SourceError::transient(format!("postgres_cdc: change for unknown relation {oid}"))
        })
    };
    let record = |rel: &pgoutput::Relation,
                  op: &str,
                  row: Option<Value>,
                  key: Value,
                  unchanged: Vec<String>| {
        json!({
            "lsn": lsn, "op": op, "schema": rel.schema, "table": rel.table,
            "commit_time": time, "key": key, "row": row, "unchanged_toast": unchanged,
            "deleted": op == "delete", "old_key": null, "old_row": null,
        })
    };
    Ok(match change {
        Change::Insert { relation: oid, new } => {
            let rel = relation(oid)?;
            let (row, unchanged) = tuple_json(rel, &new, false);
            let (key, _) = tuple_json(rel, &new, true);
            vec![record(
                rel,
                "insert",
                Some(Value::Object(row)),
                Value::Object(key),
                unchanged,
            )]
        }
        Change::Update {
            relation: oid,
            new,
            old,
        } => {
            let rel = relation(oid)?;
            let (row, unchanged) = tuple_json(rel, &new, false);
            let (key, _) = tuple_json(rel, &new, true);
            let mut update = record(
                rel,
                "update",
                Some(Value::Object(row)),
                Value::Object(key),
                unchanged,
            );
            // The server sends the old tuple when the key changed (its key columns) or always
            // under REPLICA IDENTITY FULL (the whole row): the row under the old key is gone.
            if let Some(old) = old {
                let (old_key, _) = tuple_json(rel, &old, true);
                update["old_key"] = Value::Object(old_key);
                if rel.replica_identity == b'f' {
                    update["old_row"] = Value::Object(tuple_json(rel, &old, false).0);
                }
            }
            vec![update]
        }
        Change::Delete { relation: oid, old } => {
            let rel = relation(oid)?;
            let (key, _) = tuple_json(rel, &old, true);
            vec![record(rel, "delete", None, Value::Object(key), Vec::new())]
        }
        Change::Truncate { relations: oids } => oids
            .into_iter()
            .map(|oid| {
                relation(oid).map(|rel| record(rel, "truncate", None, json!({}), Vec::new()))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// The change-log table: one row per change, keyed by (commit LSN, ordinal in the transaction),
/// so a replayed transaction converges.
pub fn changes_table(table: &str) -> TableSchema {
    let col = Column::new;
    TableSchema {
        table: table.into(),
        columns: vec![
            col("lsn", ColumnType::Integer, false),
            col("seq", ColumnType::Integer, false),
            col("op", ColumnType::Text, false),
            col("schema", ColumnType::Text, false),
            col("table", ColumnType::Text, false),
            col("commit_time", ColumnType::Timestamp, false),
            col("key", ColumnType::Json, false),
            col("row", ColumnType::Json, true),
            col("unchanged_toast", ColumnType::Json, true),
            col("deleted", ColumnType::Boolean, false),
            // An update that changed the key: the key before it (the old row too under
            // REPLICA IDENTITY FULL). NULL otherwise.
            col("old_key", ColumnType::Json, true),
            col("old_row", ColumnType::Json, true),
        ],
        key: vec!["lsn".into(), "seq".into()],
    }
}
