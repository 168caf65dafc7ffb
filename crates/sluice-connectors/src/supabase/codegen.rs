//! Generates Rust record types from a Postgres schema (`information_schema`), the Rust
//! counterpart of the seed's `supabase.generated.ts`: one struct per table, fields in column
//! order, `Option` for nullable columns, exact types for exact values (numeric as text), plus the
//! table's name, primary key and a [`sluice::TableSchema`] so transforms can decode a change's
//! `row` into a checked type and route it to a typed table.

use std::fmt::Write as _;

/// One column as `information_schema.columns` describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnInfo {
    /// The column name.
    pub name: String,
    /// `data_type` (`bigint`, `numeric`, `timestamp with time zone`, `ARRAY`, …).
    pub data_type: String,
    /// `is_nullable = 'YES'`.
    pub nullable: bool,
}

/// A table to generate a type for.
#[derive(Clone, Debug, PartialEq)]
pub struct TableInfo {
    /// The schema.
    pub schema: String,
    /// The table name.
    pub name: String,
    /// Columns in ordinal order.
    pub columns: Vec<ColumnInfo>,
    /// Primary key columns in key order.
    pub primary_key: Vec<String>,
}

/// Reads `tables` of `schema` from `information_schema`.
///
/// # Errors
/// The database error, or a message naming a table that does not exist.
pub async fn introspect(
    client: &tokio_postgres::Client,
    schema: &str,
    tables: &[String],
) -> Result<Vec<TableInfo>, String> {
    let mut out = Vec::new();
    for table in tables {
        let columns: Vec<ColumnInfo> = client
            .query(
                "SELECT column_name::text, data_type::text, is_nullable = 'YES' \
                 FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 \
                 ORDER BY ordinal_position",
                &[&schema, table],
            )
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| ColumnInfo {
                name: r.get(0),
                data_type: r.get(1),
                nullable: r.get(2),
            })
            .collect();
        if columns.is_empty() {
            return Err(format!(
                "table {schema}.{table} does not exist (or has no columns)"
            ));
        }
        let primary_key = client
            .query(
                "SELECT k.column_name::text FROM information_schema.table_constraints c \
                 JOIN information_schema.key_column_usage k \
                   ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema \
                      AND k.table_name = c.table_name \
                 WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
                 ORDER BY k.ordinal_position",
                &[&schema, table],
            )
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        out.push(TableInfo {
            schema: schema.to_owned(),
            name: table.clone(),
            columns,
            primary_key,
        });
    }
    Ok(out)
}

/// The Rust type and the sluice column type of a Postgres `data_type`.
fn types(data_type: &str) -> (&'static str, &'static str) {
    match data_type {
        "smallint" => ("i16", "Integer"),
        "integer" => ("i32", "Integer"),
        "bigint" => ("i64", "Integer"),
        "real" => ("f32", "Float"),
        "double precision" => ("f64", "Float"),
        "boolean" => ("bool", "Boolean"),
        // Exact: kept as the decimal text Postgres sends (Realtime may send a JSON number; the
        // generated deserializer accepts both).
        "numeric" => ("String", "Decimal"),
        "timestamp with time zone" | "timestamp without time zone" => ("String", "Timestamp"),
        "json" | "jsonb" | "ARRAY" | "USER-DEFINED" => ("serde_json::Value", "Json"),
        _ => ("String", "Text"),
    }
}

const KEYWORDS: [&str; 38] = [
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use",
    "where", "while", "yield",
];

/// A field identifier for a column name, and whether serde needs a rename.
fn field(name: &str) -> (String, bool) {
    let mut ident: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if ident.is_empty() || ident.starts_with(|c: char| c.is_ascii_digit()) {
        ident.insert(0, '_');
    }
    if KEYWORDS.contains(&ident.as_str()) {
        ident = format!("r#{ident}");
    }
    let renamed = ident.trim_start_matches("r#") != name;
    (ident, renamed)
}

/// `order_items` → `OrderItems`.
fn type_name(table: &str) -> String {
    let name: String = table
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
                .collect::<String>()
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) || name.is_empty() {
        format!("T{name}")
    } else {
        name
    }
}

/// The generated Rust source for `tables`.
pub fn generate(tables: &[TableInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "//! Record types generated by `sluice codegen` from information_schema. Do not edit;"
    );
    let _ = writeln!(out, "//! regenerate after a migration.");
    let _ = writeln!(out, "#![allow(dead_code)]");
    for table in tables {
        let name = type_name(&table.name);
        let _ = writeln!(out);
        let _ = writeln!(out, "/// A row of `{}.{}`.", table.schema, table.name);
        let _ = writeln!(
            out,
            "#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]"
        );
        let _ = writeln!(out, "pub struct {name} {{");
        for column in &table.columns {
            let (ident, renamed) = field(&column.name);
            let (rust, _) = types(&column.data_type);
            let _ = writeln!(
                out,
                "    /// `{}` ({}{}).",
                column.name,
                column.data_type,
                if column.nullable { ", nullable" } else { "" }
            );
            if renamed {
                let _ = writeln!(out, "    #[serde(rename = {:?})]", column.name);
            }
            if rust == "String" && column.data_type == "numeric" {
                let with = if column.nullable {
                    "sluice::codegen_support::opt_decimal"
                } else {
                    "sluice::codegen_support::decimal"
                };
                let _ = writeln!(out, "    #[serde(with = {with:?})]");
            }
            if column.nullable {
                let _ = writeln!(out, "    #[serde(default)]");
                let _ = writeln!(out, "    pub {ident}: Option<{rust}>,");
            } else {
                let _ = writeln!(out, "    pub {ident}: {rust},");
            }
        }
        let _ = writeln!(out, "}}");
        let _ = writeln!(out);
        let _ = writeln!(out, "impl {name} {{");
        let _ = writeln!(out, "    /// The table name.");
        let _ = writeln!(out, "    pub const TABLE: &'static str = {:?};", table.name);
        let _ = writeln!(out, "    /// The primary key columns.");
        let _ = writeln!(
            out,
            "    pub const PRIMARY_KEY: &'static [&'static str] = &{:?};",
            table.primary_key
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "    /// The table definition sluice sinks create and write."
        );
        let _ = writeln!(out, "    pub fn table_schema() -> sluice::TableSchema {{");
        let _ = writeln!(out, "        let col = sluice::Column::new;");
        let _ = writeln!(out, "        sluice::TableSchema {{");
        let _ = writeln!(out, "            table: Self::TABLE.into(),");
        let _ = writeln!(out, "            columns: vec![");
        for column in &table.columns {
            let (_, kind) = types(&column.data_type);
            let _ = writeln!(
                out,
                "                col({:?}, sluice::ColumnType::{kind}, {}),",
                column.name, column.nullable
            );
        }
        let _ = writeln!(out, "            ],");
        let _ = writeln!(
            out,
            "            key: Self::PRIMARY_KEY.iter().map(|k| (*k).into()).collect(),"
        );
        let _ = writeln!(out, "        }}");
        let _ = writeln!(out, "    }}");
        let _ = writeln!(out, "}}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_rust_identifiers() {
        assert_eq!(field("type"), ("r#type".into(), false));
        assert_eq!(field("Created At"), ("created_at".into(), true));
        assert_eq!(field("2fa"), ("_2fa".into(), true));
        assert_eq!(type_name("order_items"), "OrderItems");
        assert_eq!(type_name("9lives"), "T9lives");
    }
}
