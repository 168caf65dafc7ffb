//! SQL text shared by the SQL sinks (SQLite, Postgres): identifiers quoted the standard way and
//! the `CREATE TABLE` of a schema, with each sink's own column types.

use sluice::{ColumnType, TableSchema};

/// Quotes an identifier for SQLite and Postgres: `"name"`, inner quotes doubled.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The `CREATE TABLE IF NOT EXISTS` statement of a schema, `sql_type` naming each column's type:
/// key columns and non-nullable ones NOT NULL, the key as primary key.
pub(crate) fn create_table(
    schema: &TableSchema,
    sql_type: fn(ColumnType) -> &'static str,
) -> String {
    let mut columns: Vec<String> = schema
        .columns
        .iter()
        .map(|c| {
            let null = if c.nullable && !schema.key.contains(&c.name) {
                ""
            } else {
                " NOT NULL"
            };
            format!("{} {}{null}", quote(&c.name), sql_type(c.kind))
        })
        .collect();
    if !schema.key.is_empty() {
        let key: Vec<_> = schema.key.iter().map(|k| quote(k)).collect();
        columns.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote(&schema.table),
        columns.join(", ")
    )
}
