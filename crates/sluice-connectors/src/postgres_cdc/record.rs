//! What a change becomes: one [`ChangeRecord`] per changed row (key, row, old key, unchanged
//! TOAST named) and the change-log table it lands in.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};
use sluice::{Column, ColumnType, SourceError, TableSchema};

use super::pgoutput::{self, Change, RelationCache, tuple_json};
use crate::change::{ChangeRecord, wal_version};

/// The shared names of a relation: schema, table and the resource its changes go to.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) schema: Arc<str>,
    pub(crate) table: Arc<str>,
    pub(crate) resource: Arc<str>,
}

/// Names by relation OID, made once per Relation message.
pub(crate) type NameCache = HashMap<u32, Names>;

/// The change records of one change: one per row (a truncate gives one per table), with the
/// resource of each. `seq` is the ordinal of the next change in the transaction.
pub(crate) fn records(
    relations: &RelationCache,
    names: &NameCache,
    change: Change,
    lsn: u64,
    time: &str,
    seq: &mut u64,
) -> Result<Vec<(Arc<str>, ChangeRecord)>, SourceError> {
    let relation = |oid: u32| match (relations.get(&oid), names.get(&oid)) {
        (Some(rel), Some(names)) => Ok((rel, names)),
        _ => Err(SourceError::transient(format!(
            "postgres_cdc: change for unknown relation {oid}"
        ))),
    };
    let mut record = |names: &Names, op: &'static str, key: Value| {
        let mut record = ChangeRecord::new(
            names.schema.clone(),
            names.table.clone(),
            op,
            key,
            wal_version(lsn, *seq),
            "wal",
        );
        record.commit_time = Some(time.to_owned());
        record.lsn = Some(lsn);
        record.seq = Some(*seq);
        record.unchanged_toast = Some(json!([]));
        *seq += 1;
        record
    };
    let key_of = |rel: &pgoutput::Relation, tuple: &[pgoutput::Datum]| {
        Value::Object(tuple_json(rel, tuple, true).0)
    };
    Ok(match change {
        Change::Insert { relation: oid, new } => {
            let (rel, names) = relation(oid)?;
            let (row, unchanged) = tuple_json(rel, &new, false);
            let mut insert = record(names, "insert", key_of(rel, &new));
            insert.row = Some(Value::Object(row));
            insert.unchanged_toast = Some(json!(unchanged));
            vec![(names.resource.clone(), insert)]
        }
        Change::Update {
            relation: oid,
            new,
            old,
        } => {
            let (rel, names) = relation(oid)?;
            let (row, unchanged) = tuple_json(rel, &new, false);
            let mut update = record(names, "update", key_of(rel, &new));
            update.row = Some(Value::Object(row));
            update.unchanged_toast = Some(json!(unchanged));
            // The server sends the old tuple when the key changed (its key columns) or always
            // under REPLICA IDENTITY FULL (the whole row): the row under the old key is gone.
            if let Some(old) = old {
                update.old_key = Some(key_of(rel, &old));
                if rel.replica_identity == b'f' {
                    update.old_row = Some(Value::Object(tuple_json(rel, &old, false).0));
                }
            }
            vec![(names.resource.clone(), update)]
        }
        Change::Delete { relation: oid, old } => {
            let (rel, names) = relation(oid)?;
            let delete = record(names, "delete", key_of(rel, &old));
            vec![(names.resource.clone(), delete)]
        }
        Change::Truncate { relations: oids } => oids
            .into_iter()
            .map(|oid| {
                relation(oid).map(|(_, names)| {
                    (names.resource.clone(), record(names, "truncate", json!({})))
                })
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
