//! Defines the SQLite sink: a table created from a [`TableSchema`], written one transaction per
//! batch, upserted by key so a replayed batch converges. When the checkpoint store is the same
//! file, the cursors commit in the same transaction (exactly-once).

use rusqlite::{
    Connection, Transaction, TransactionBehavior,
    types::{ToSqlOutput, Value as SqlValue, ValueRef},
};
use sluice::{
    Cell, CellWriter, CheckpointCommit, ColumnType, Record, Sink, SinkError, TableSchema,
    is_plain_decimal,
};
use sluice_stores::sqlite::{SqliteDb, classify, save_in_tx};

/// Writes records of any [`Record`] type into one SQLite table: a cached prepared insert, each
/// record's cells bound by index.
#[derive(Debug)]
pub struct SqliteSink {
    db: SqliteDb,
    schema: TableSchema,
    insert: String,
}

pub use crate::sql::quote;

fn sql_type(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::Integer | ColumnType::Boolean => "INTEGER",
        ColumnType::Float => "REAL",
        ColumnType::Decimal | ColumnType::Text | ColumnType::Timestamp | ColumnType::Json => "TEXT",
    }
}

fn sink_error(context: &str, error: rusqlite::Error) -> SinkError {
    SinkError::new(classify(&error), format!("sqlite: {context}")).with_source(error)
}

/// The `CREATE TABLE IF NOT EXISTS` statement of a schema.
pub fn create_table_sql(schema: &TableSchema) -> String {
    crate::sql::create_table(schema, sql_type)
}

fn insert_sql(schema: &TableSchema, version: Option<&str>) -> String {
    let names: Vec<_> = schema.columns.iter().map(|c| quote(&c.name)).collect();
    let params: Vec<_> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote(&schema.table),
        names.join(", "),
        params.join(", ")
    );
    if !schema.key.is_empty() {
        let key: Vec<_> = schema.key.iter().map(|k| quote(k)).collect();
        let updates: Vec<_> = schema
            .columns
            .iter()
            .filter(|c| !schema.key.contains(&c.name))
            .map(|c| format!("{0} = excluded.{0}", quote(&c.name)))
            .collect();
        if updates.is_empty() {
            sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", key.join(", ")));
        } else {
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                updates.join(", ")
            ));
            if let Some(version) = version {
                // An older version arriving late (a replay, a backfill) never beats newer data.
                sql.push_str(&format!(
                    " WHERE excluded.{0} >= {1}.{0}",
                    quote(version),
                    quote(&schema.table)
                ));
            }
        }
    }
    sql
}

/// Converts one cell to its SQLite value, or says why it cannot be.
fn bind(kind: ColumnType, nullable: bool, cell: Cell<'_>) -> Result<ToSqlOutput<'_>, String> {
    let mismatch = || format!("expects {kind:?}, got {}", cell.to_json());
    fn text(s: &str) -> ToSqlOutput<'_> {
        ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
    }
    let owned = |v: SqlValue| ToSqlOutput::Owned(v);
    Ok(match (kind, cell) {
        (_, Cell::Null) if nullable => owned(SqlValue::Null),
        (_, Cell::Null) => return Err("is null but the column is NOT NULL".into()),
        (ColumnType::Integer, Cell::Int(i)) => owned(SqlValue::Integer(i)),
        (ColumnType::Integer, Cell::UInt(u)) => {
            owned(SqlValue::Integer(i64::try_from(u).map_err(|_| mismatch())?))
        }
        (ColumnType::Float, Cell::Float(f)) => owned(SqlValue::Real(f)),
        (ColumnType::Float, Cell::Int(i)) => owned(SqlValue::Real(i as f64)),
        (ColumnType::Float, Cell::UInt(u)) => owned(SqlValue::Real(u as f64)),
        (ColumnType::Float, Cell::Number(n)) => {
            owned(SqlValue::Real(n.parse().map_err(|_| mismatch())?))
        }
        (ColumnType::Boolean, Cell::Bool(b)) => owned(SqlValue::Integer(i64::from(b))),
        (ColumnType::Decimal, Cell::Text(s) | Cell::Number(s)) if is_plain_decimal(s) => text(s),
        (ColumnType::Decimal, Cell::Int(i)) => owned(SqlValue::Text(i.to_string())),
        (ColumnType::Decimal, Cell::UInt(u)) => owned(SqlValue::Text(u.to_string())),
        (ColumnType::Text | ColumnType::Timestamp, Cell::Text(s)) => text(s),
        (ColumnType::Json, Cell::Json(v)) => owned(SqlValue::Text(v.to_string())),
        (ColumnType::Json, other) => owned(SqlValue::Text(other.to_json().to_string())),
        _ => return Err(mismatch()),
    })
}

/// Binds one record's cells to the insert statement, by index.
struct Binder<'s, 'c> {
    stmt: &'s mut rusqlite::CachedStatement<'c>,
    schema: &'s TableSchema,
    /// Per column: whether NULL is allowed (nullable and not a key column).
    nullable: &'s [bool],
    next: usize,
}

impl CellWriter for Binder<'_, '_> {
    fn cell(&mut self, cell: Cell<'_>) -> Result<(), String> {
        let i = self.next;
        let Some(column) = self.schema.columns.get(i) else {
            return Err(format!(
                "more cells than the {} columns",
                self.schema.columns.len()
            ));
        };
        self.next += 1;
        let value = bind(column.kind, self.nullable[i], cell)
            .map_err(|why| format!("column {} {why}", column.name))?;
        self.stmt
            .raw_bind_parameter(i + 1, value)
            .map_err(|e| format!("column {}: {e}", column.name))
    }
}

/// Runs blocking SQLite work: in place on a multi-threaded runtime (no copy of the batch),
/// directly on a current-thread runtime (tests, the CLI's single-pipeline mode).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl SqliteSink {
    /// A sink writing `schema`'s table in `db`.
    ///
    /// # Errors
    /// A fatal error when the schema is invalid.
    pub fn new(db: SqliteDb, schema: TableSchema) -> Result<Self, SinkError> {
        schema.validate().map_err(SinkError::fatal)?;
        let insert = insert_sql(&schema, None);
        Ok(Self { db, schema, insert })
    }

    /// The dead-letter table `table` in `db`.
    pub fn dead_letters(db: SqliteDb, table: &str) -> Self {
        let schema = TableSchema::dead_letters(table);
        let insert = insert_sql(&schema, None);
        Self { db, schema, insert }
    }

    /// Upserts only when the incoming row's `column` is at least the stored one, so a replayed
    /// or late older version never overwrites newer data (a current-state table).
    ///
    /// # Errors
    /// A fatal error when the column is not in the schema or the table has no key.
    pub fn version(mut self, column: &str) -> Result<Self, SinkError> {
        if !self.schema.columns.iter().any(|c| c.name == column) || self.schema.key.is_empty() {
            return Err(SinkError::fatal(format!(
                "table {}: version column {column} must be a column of a keyed table",
                self.schema.table
            )));
        }
        self.insert = insert_sql(&self.schema, Some(column));
        Ok(self)
    }

    /// The table schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    fn write_rows<R: Record>(
        &self,
        batch: &[R],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        let mut conn = self.db.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sink_error("begin", e))?;
        self.insert_all(&tx, batch)?;
        if let Some(commit) = commit {
            save_in_tx(&tx, commit.lease, commit.checkpoints).map_err(|e| {
                SinkError::new(e.class(), "save cursors in the write transaction").with_source(e)
            })?;
        }
        tx.commit().map_err(|e| sink_error("commit", e))?;
        self.db.after_commit(&conn);
        Ok(())
    }

    fn insert_all<R: Record>(&self, tx: &Transaction<'_>, batch: &[R]) -> Result<(), SinkError> {
        let table = &self.schema.table;
        let plan = R::plan(&self.schema.columns)
            .map_err(|why| SinkError::fatal(format!("table {table}: {why}")))?;
        let nullable: Vec<bool> = self
            .schema
            .columns
            .iter()
            .map(|c| c.nullable && !self.schema.key.contains(&c.name))
            .collect();
        let mut stmt = tx
            .prepare_cached(&self.insert)
            .map_err(|e| sink_error("prepare insert", e))?;
        for record in batch {
            let mut binder = Binder {
                stmt: &mut stmt,
                schema: &self.schema,
                nullable: &nullable,
                next: 0,
            };
            record
                .write(&plan, &self.schema.columns, &mut binder)
                .map_err(|why| SinkError::data(format!("table {table}: {why}")))?;
            if binder.next != self.schema.columns.len() {
                // Parameters not bound now would keep the previous record's values.
                return Err(SinkError::data(format!(
                    "table {table}: the record wrote {} cells for {} columns",
                    binder.next,
                    self.schema.columns.len()
                )));
            }
            stmt.raw_execute().map_err(|e| {
                let class = classify(&e);
                SinkError::new(class, format!("sqlite: insert into {table}")).with_source(e)
            })?;
        }
        Ok(())
    }
}

/// Checks an existing table has every column of the schema.
fn check_columns(conn: &Connection, schema: &TableSchema) -> Result<(), SinkError> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({})", quote(&schema.table)))
        .map_err(|e| sink_error("table_info", e))?;
    let existing: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(1))
        .and_then(|rows| rows.collect())
        .map_err(|e| sink_error("table_info", e))?;
    let missing: Vec<_> = schema
        .columns
        .iter()
        .filter(|c| !existing.contains(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(SinkError::fatal(format!(
            "table {} exists without column(s) {}; migrate it or write to another table",
            schema.table,
            missing.join(", ")
        )));
    }
    Ok(())
}

impl<R: Record> Sink<R> for SqliteSink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        blocking(|| {
            let conn = self.db.lock();
            conn.execute_batch(&create_table_sql(&self.schema))
                .map_err(|e| sink_error("create table", e))?;
            check_columns(&conn, &self.schema)
        })
    }

    async fn write(
        &mut self,
        batch: &[R],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        blocking(|| self.write_rows(batch, commit))
    }

    fn transaction_scope(&self) -> Option<&str> {
        Some(self.db.scope())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};
    use sluice::{Column, ErrorClass, Lease};

    use super::*;

    fn schema(key: &[&str]) -> TableSchema {
        let col = |name: &str, kind| Column::new(name, kind, true);
        TableSchema {
            table: "trades".into(),
            columns: vec![
                col("id", ColumnType::Integer),
                col("price", ColumnType::Decimal),
                col("meta", ColumnType::Json),
            ],
            key: key.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn open() -> (tempfile::TempDir, SqliteDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    fn count(db: &SqliteDb, sql: &str) -> i64 {
        db.lock().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn a_replayed_batch_converges_by_key_and_decimals_stay_exact() {
        let (_dir, db) = open();
        let mut sink = SqliteSink::new(db.clone(), schema(&["id"])).unwrap();
        Sink::<Value>::prepare(&mut sink).await.unwrap();
        let batch = [
            json!({"id": 1, "price": "84140.83000000", "meta": {"a": 1}}),
            json!({"id": 2, "price": "0.1"}),
        ];
        Sink::<Value>::write(&mut sink, &batch, None).await.unwrap();
        Sink::<Value>::write(&mut sink, &batch, None).await.unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM trades"), 2);
        let price: String = db
            .lock()
            .query_row("SELECT price FROM trades WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(price, "84140.83000000");
    }

    #[tokio::test]
    async fn with_a_version_column_an_older_row_never_overwrites_a_newer_one() {
        let (_dir, db) = open();
        let mut schema = schema(&["id"]);
        schema.columns.push(Column {
            name: "v".into(),
            kind: ColumnType::Text,
            nullable: false,
        });
        let mut sink = SqliteSink::new(db.clone(), schema)
            .unwrap()
            .version("v")
            .unwrap();
        Sink::<Value>::prepare(&mut sink).await.unwrap();
        let row = |price: &str, v: &str| json!({"id": 1, "price": price, "v": v});
        Sink::<Value>::write(&mut sink, &[row("2", "2026-01-02")], None)
            .await
            .unwrap();
        Sink::<Value>::write(&mut sink, &[row("1", "2026-01-01")], None)
            .await
            .unwrap();
        let price: String = db
            .lock()
            .query_row("SELECT price FROM trades", [], |r| r.get(0))
            .unwrap();
        assert_eq!(price, "2", "the late older row lost");
        Sink::<Value>::write(&mut sink, &[row("3", "2026-01-03")], None)
            .await
            .unwrap();
        assert_eq!(
            count(&db, "SELECT count(*) FROM trades WHERE price = '3'"),
            1
        );
        assert!(
            SqliteSink::new(db, schema_without_key())
                .unwrap()
                .version("id")
                .is_err()
        );
    }

    fn schema_without_key() -> TableSchema {
        schema(&[])
    }

    #[tokio::test]
    async fn a_bad_record_is_a_data_error_and_nothing_of_its_batch_is_written() {
        let (_dir, db) = open();
        let mut sink = SqliteSink::new(db.clone(), schema(&["id"])).unwrap();
        Sink::<Value>::prepare(&mut sink).await.unwrap();
        let batch = [
            json!({"id": 1, "price": "1"}),
            json!({"id": 2, "price": "one"}),
        ];
        let error = Sink::<Value>::write(&mut sink, &batch, None)
            .await
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Data);
        assert!(error.to_string().contains("column price"), "{error}");
        assert_eq!(count(&db, "SELECT count(*) FROM trades"), 0);
        let error = Sink::<Value>::write(&mut sink, &[json!({"price": "1"})], None)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("column id is null"), "{error}");
    }

    #[tokio::test]
    async fn an_existing_table_without_a_column_is_a_fatal_error() {
        let (_dir, db) = open();
        db.lock()
            .execute_batch("CREATE TABLE trades (id INTEGER)")
            .unwrap();
        let mut sink = SqliteSink::new(db, schema(&["id"])).unwrap();
        let error = Sink::<Value>::prepare(&mut sink).await.unwrap_err();
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert!(error.to_string().contains("price, meta"), "{error}");
    }

    #[tokio::test]
    async fn cursors_commit_with_the_records_and_a_stale_lease_commits_neither() {
        use sluice::{Checkpoint, CheckpointStore};
        let (_dir, db) = open();
        let store = Arc::new(sluice_stores::sqlite::SqliteStore::new(db.clone()));
        let lease = store
            .acquire("p", "h:1", std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let mut sink = SqliteSink::new(db.clone(), schema(&[])).unwrap();
        Sink::<Value>::prepare(&mut sink).await.unwrap();
        let checkpoints = [Checkpoint::new("f", 5)];
        let commit = CheckpointCommit {
            pipeline: "p",
            lease: &lease,
            checkpoints: &checkpoints,
        };
        Sink::<Value>::write(&mut sink, &[json!({"id": 1})], Some(&commit))
            .await
            .unwrap();
        assert_eq!(
            store
                .load("p")
                .await
                .unwrap()
                .get("f")
                .and_then(|p| p.as_int()),
            Some(5)
        );
        let stale = Lease {
            token: lease.token + 7,
            ..lease.clone()
        };
        let checkpoints = [Checkpoint::new("f", 9)];
        let commit = CheckpointCommit {
            pipeline: "p",
            lease: &stale,
            checkpoints: &checkpoints,
        };
        let error = Sink::<Value>::write(&mut sink, &[json!({"id": 2})], Some(&commit))
            .await
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert_eq!(
            count(&db, "SELECT count(*) FROM trades"),
            1,
            "the record rolled back with the cursor"
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        let sql = create_table_sql(&TableSchema {
            table: "we\"ird".into(),
            columns: vec![Column {
                name: "select".into(),
                kind: ColumnType::Text,
                nullable: false,
            }],
            key: vec![],
        });
        assert_eq!(
            sql,
            "CREATE TABLE IF NOT EXISTS \"we\"\"ird\" (\"select\" TEXT NOT NULL)"
        );
    }
}
