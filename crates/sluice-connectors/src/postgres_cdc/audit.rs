//! Proves a change-log destination complete against the source table: the destination's change
//! records folded into the current state per key (inserts and updates set the row, keeping
//! unchanged TOAST values; deletes and truncates remove it; a changed key moves it), compared
//! with the table's rows in Postgres, read as the replication stream renders them. Reports the
//! keys missing from the destination, the keys it holds that the table does not, and the keys
//! whose row differs.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice::SourceError;

pub use crate::change::TableAudit;

use super::{
    PostgresCdcConfig,
    config::{Conn, pg_error},
    pgoutput::to_json,
};

/// One change as the destination stored it.
#[derive(Debug, Clone)]
pub struct StoredChange {
    /// `insert`, `update`, `delete`, `truncate` or `snapshot`.
    pub op: String,
    /// The key columns (JSON object).
    pub key: Value,
    /// The row after the change.
    pub row: Option<Value>,
    /// The key before an update that changed it.
    pub old_key: Option<Value>,
    /// Columns whose TOAST value was unchanged and not sent.
    pub unchanged_toast: Vec<String>,
}

/// The current state the changes add up to, by key (JSON text); `changes` in commit order.
pub fn fold(changes: impl IntoIterator<Item = StoredChange>) -> BTreeMap<String, Value> {
    let mut state: BTreeMap<String, Value> = BTreeMap::new();
    for change in changes {
        let key = change.key.to_string();
        match change.op.as_str() {
            "delete" => {
                state.remove(&key);
            }
            "truncate" => state.clear(),
            _ => {
                let previous = match change.old_key.as_ref().map(Value::to_string) {
                    Some(old) if old != key => state.remove(&old),
                    _ => state.get(&key).cloned(),
                };
                let Some(Value::Object(mut row)) = change.row else {
                    continue;
                };
                if let Some(Value::Object(before)) = previous {
                    for column in &change.unchanged_toast {
                        if let Some(value) = before.get(column) {
                            row.insert(column.clone(), value.clone());
                        }
                    }
                }
                state.insert(key, Value::Object(row));
            }
        }
    }
    state
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Audits `schema.table` of the source against `destination` (from [`fold`]).
///
/// # Errors
/// The source cannot be reached or read (transient), or has no such table (fatal).
pub async fn audit_table(
    config: &PostgresCdcConfig,
    schema: &str,
    table: &str,
    destination: &BTreeMap<String, Value>,
) -> Result<TableAudit, SourceError> {
    let client = Conn::parse(&config.url)?.control().await?;
    let relation = format!("{}.{}", quote(schema), quote(table));
    // Columns in order, their types, and whether they are in the replica identity (the key
    // the change records carry: the primary key by default).
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8, coalesce(a.attnum = ANY(i.indkey), false)
             FROM pg_attribute a
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND (i.indisreplident OR i.indisprimary)
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&relation],
        )
        .await
        .map_err(pg_error)?;
    let columns: Vec<(String, u32, bool)> = columns
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1) as u32,
                r.get::<_, bool>(2),
            )
        })
        .collect();
    let select = columns
        .iter()
        .map(|(name, _, _)| format!("{}::text", quote(name)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = client
        .query(&format!("SELECT {select} FROM {relation}"), &[])
        .await
        .map_err(pg_error)?;
    let mut source: BTreeMap<String, Value> = BTreeMap::new();
    for row in &rows {
        let mut record = Map::new();
        let mut key = Map::new();
        for (i, (name, oid, is_key)) in columns.iter().enumerate() {
            let value = row
                .get::<_, Option<String>>(i)
                .map_or(Value::Null, |text| to_json(*oid, &text));
            if *is_key {
                key.insert(name.clone(), value.clone());
            }
            record.insert(name.clone(), value);
        }
        source.insert(Value::Object(key).to_string(), Value::Object(record));
    }
    let mut audit = TableAudit {
        table: format!("{schema}.{table}"),
        source_rows: source.len() as u64,
        destination_rows: destination.len() as u64,
        missing: Vec::new(),
        extra: Vec::new(),
        stale: Vec::new(),
    };
    for (key, row) in &source {
        match destination.get(key) {
            None => audit.missing.push(key.clone()),
            Some(stored) if stored != row => audit.stale.push(key.clone()),
            Some(_) => {}
        }
    }
    audit.extra = destination
        .keys()
        .filter(|k| !source.contains_key(*k))
        .cloned()
        .collect();
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn change(op: &str, id: i64, row: Option<Value>) -> StoredChange {
        StoredChange {
            op: op.into(),
            key: json!({"id": id}),
            row,
            old_key: None,
            unchanged_toast: Vec::new(),
        }
    }

    #[test]
    fn changes_fold_into_the_current_state() {
        let mut moved = change("update", 3, Some(json!({"id": 3, "body": null})));
        moved.old_key = Some(json!({"id": 2}));
        let mut toast = change("update", 1, Some(json!({"id": 1, "n": 2})));
        toast.unchanged_toast = vec!["body".into()];
        let state = fold([
            change("insert", 1, Some(json!({"id": 1, "n": 1, "body": "long"}))),
            change("insert", 2, Some(json!({"id": 2, "body": null}))),
            change("insert", 4, Some(json!({"id": 4}))),
            toast,
            moved,
            change("delete", 4, None),
        ]);
        assert_eq!(
            state,
            BTreeMap::from([
                (
                    json!({"id": 1}).to_string(),
                    json!({"id": 1, "n": 2, "body": "long"})
                ),
                (json!({"id": 3}).to_string(), json!({"id": 3, "body": null})),
            ])
        );
        assert!(
            fold([
                change("insert", 1, Some(json!({}))),
                change("truncate", 0, None)
            ])
            .is_empty()
        );
    }
}
