//! Defines what a destination receives: records, the table schema sinks create from, and the
//! dead-letter row that carries a poison input with its reason.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    cell::{Cell, CellWriter},
    envelope::Checkpoint,
    error::ErrorClass,
};

/// One row for a destination: it knows how to fill a table's columns.
///
/// The runtime needs of a record its approximate size (for the `max_bytes` batch limit) and a
/// JSON form (for a dead-letter row when the destination rejects it, and only then). Sinks need
/// its values: once per batch a sink asks the record type for a [`Plan`](Record::Plan) against
/// its table's columns, then has each record [`write`](Record::write) one [`Cell`] per column,
/// in column order, into the sink's [`CellWriter`] — no intermediate map.
///
/// Derive it: `#[derive(Record)] #[record(table = "trades", key(id))] struct Trade { … }`
/// makes the struct the table definition (see [`Table`]). Records whose fields are known only
/// at run time (a file's lines, a polled API's objects, a jq transform's output) are
/// [`Row`](crate::Row)s. `serde_json::Value` is a record too, for tests and quick experiments:
/// its fields are looked up by name in a map, so no built-in path uses it.
pub trait Record: Send + Sync + 'static {
    /// What `write` needs to fill a given list of columns (which field goes where).
    type Plan: Send + Sync;

    /// Works out how records of this type fill `columns`, once per batch.
    ///
    /// # Errors
    /// Why the type cannot fill them (a required column it has no field for): a fatal
    /// configuration error for the sink.
    fn plan(columns: &[Column]) -> Result<Self::Plan, String>
    where
        Self: Sized;

    /// Hands `out` one cell per column of `columns`, in order.
    ///
    /// # Errors
    /// The writer's reason a cell does not fit its column, or why this record is not a row
    /// (a JSON payload that is not an object): a data error for this record only.
    fn write<W: CellWriter>(
        &self,
        plan: &Self::Plan,
        columns: &[Column],
        out: &mut W,
    ) -> Result<(), String>
    where
        Self: Sized;

    /// The value of the field that fills column `name`, if the record has one (message keys,
    /// partitioning).
    fn field(&self, name: &str) -> Option<Cell<'_>>;

    /// Appends the record as one JSON object to `out` (schemaless destinations: topics, files).
    /// Numbers keep their exact text.
    fn write_json(&self, out: &mut Vec<u8>) {
        Cell::Json(&self.to_json()).write_json(out);
    }

    /// Approximate encoded size in bytes. Cheap; need not be exact.
    fn size_hint(&self) -> usize;

    /// The record as JSON, used when it must be dead-lettered.
    fn to_json(&self) -> Value;
}

/// A record type that is a table definition: its columns, types and key come from the type
/// (the derive writes this), so the record and its table cannot drift.
pub trait Table: Record {
    /// The table this type fills, under its default name.
    fn schema() -> TableSchema;
}

impl Record for Value {
    type Plan = ();

    fn plan(_: &[Column]) -> Result<(), String> {
        Ok(())
    }

    fn write<W: CellWriter>(&self, _: &(), columns: &[Column], out: &mut W) -> Result<(), String> {
        let Value::Object(fields) = self else {
            return Err(format!("record is not a JSON object: {self}"));
        };
        for column in columns {
            out.cell(fields.get(&column.name).map_or(Cell::Null, Cell::of_json))?;
        }
        Ok(())
    }

    fn field(&self, name: &str) -> Option<Cell<'_>> {
        self.get(name).map(Cell::of_json)
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        Cell::Json(self).write_json(out);
    }

    fn size_hint(&self) -> usize {
        json_size_hint(self)
    }

    fn to_json(&self) -> Value {
        self.clone()
    }
}

pub(crate) fn json_size_hint(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(json_size_hint).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 3 + json_size_hint(v))
                .sum::<usize>()
        }
    }
}

/// A poison input kept with its reason, so an operator can inspect, fix and replay it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, crate::Record)]
#[record(table = "dead_letters")]
pub struct DeadLetter {
    /// The pipeline id.
    pub pipeline: String,
    /// The resource the input was addressed to.
    pub resource: String,
    /// Why it is poison (unknown resource, transform error, rejected by the destination, …).
    pub reason: String,
    /// The error class of the reason.
    pub class: String,
    /// The input: the payload or the rejected record as JSON, or the raw text a source could not
    /// decode.
    pub payload: String,
    /// The partition of the envelope's checkpoint, if it had one.
    pub partition: Option<String>,
    /// The position of the envelope's checkpoint as JSON, if it had one.
    pub position: Option<String>,
    /// When it was dead-lettered, in microseconds since the Unix epoch.
    pub failed_at_us: i64,
}

impl DeadLetter {
    /// A dead letter for `payload` (already rendered as text).
    pub fn new(
        pipeline: &str,
        resource: &str,
        reason: impl Into<String>,
        class: ErrorClass,
        payload: String,
        checkpoint: Option<&Checkpoint>,
    ) -> Self {
        let failed_at_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default();
        Self {
            pipeline: pipeline.to_owned(),
            resource: resource.to_owned(),
            reason: reason.into(),
            class: class.as_str().to_owned(),
            payload,
            partition: checkpoint.map(|c| c.partition.to_string()),
            position: checkpoint.map(|c| c.position.to_string()),
            failed_at_us,
        }
    }
}

/// The type of a column, mapped by each sink to its nearest native type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// A 64-bit signed integer.
    Integer,
    /// A 64-bit float (never used for money: see `Decimal`).
    Float,
    /// An exact decimal, stored as its text so nothing is rounded.
    Decimal,
    /// UTF-8 text.
    Text,
    /// A boolean.
    Boolean,
    /// A timestamp in UTC with microseconds (RFC 3339 text on the wire).
    Timestamp,
    /// Any JSON value, stored as its text.
    Json,
}

/// Whether `text` is a plain decimal: optional sign, digits, optional fraction — what exchanges
/// and databases send for exact amounts (`"84140.83000000"`, `"-0.5"`), and what
/// [`ColumnType::Decimal`] columns accept as text.
pub fn is_plain_decimal(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    !(whole.is_empty() && fraction.is_empty())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The column name (also the field name in a JSON record).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Whether it may be null.
    #[serde(default = "default_nullable")]
    pub nullable: bool,
}

impl Column {
    /// A column `name` of type `kind`.
    pub fn new(name: &str, kind: ColumnType, nullable: bool) -> Self {
        Self {
            name: name.into(),
            kind,
            nullable,
        }
    }
}

fn default_nullable() -> bool {
    true
}

/// The definition of a table a sink creates and writes: columns in order and the key columns
/// that make writes idempotent (an upsert by key; a replayed batch converges).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The table name.
    pub table: String,
    /// The columns, in order.
    pub columns: Vec<Column>,
    /// The key columns; empty means an append-only table.
    #[serde(default)]
    pub key: Vec<String>,
}

impl TableSchema {
    /// Checks that the key names existing columns and that names are not empty or repeated.
    pub fn validate(&self) -> Result<(), String> {
        if self.table.is_empty() {
            return Err("table name is empty".into());
        }
        if self.columns.is_empty() {
            return Err(format!("table {}: no columns", self.table));
        }
        let mut seen = std::collections::HashSet::new();
        for column in &self.columns {
            if column.name.is_empty() || !seen.insert(column.name.as_str()) {
                return Err(format!(
                    "table {}: empty or repeated column {:?}",
                    self.table, column.name
                ));
            }
        }
        for key in &self.key {
            if !seen.contains(key.as_str()) {
                return Err(format!(
                    "table {}: key column {key:?} is not a column",
                    self.table
                ));
            }
        }
        Ok(())
    }

    /// The schema of the dead-letter table: [`DeadLetter`]'s, named `table`, every column
    /// nullable (as tables created by earlier versions are).
    pub fn dead_letters(table: &str) -> Self {
        let mut schema = <DeadLetter as Table>::schema();
        schema.table = table.into();
        for column in &mut schema.columns {
            column.nullable = true;
        }
        schema
    }
}
