//! Defines how a record hands its values to a sink: one [`Cell`] per column, in the
//! destination's column order, through a [`CellWriter`] the sink implements. No map of owned
//! keys exists between a record and its encoding.

use std::sync::Arc;

use serde_json::Value;

use crate::record::{Column, ColumnType};

/// One value of a record, borrowed from it.
///
/// Exact values stay exact: a decimal or an integer past 64 bits is [`Cell::Number`] text,
/// never a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    /// No value (SQL `NULL`, a missing JSON field).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer (ids, offsets, LSNs).
    UInt(u64),
    /// A float (never money).
    Float(f64),
    /// An exact number as its text: a decimal (`"84140.83000000"`) or an integer of any width.
    Number(&'a str),
    /// Text: strings, RFC 3339 timestamps, and decimals that arrived as text.
    Text(&'a str),
    /// A JSON value (nested objects and arrays, or a JSON column's value).
    Json(&'a Value),
}

impl<'a> Cell<'a> {
    /// The cell of a JSON value: scalars become their cell, objects and arrays stay JSON.
    pub fn of_json(value: &'a Value) -> Self {
        match value {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => Cell::of_json_number(n),
            Value::String(s) => Cell::Text(s),
            Value::Array(_) | Value::Object(_) => Cell::Json(value),
        }
    }

    /// The cell of a JSON number: an integer that fits 64 bits, else its exact text (a decimal
    /// or a wider integer; never a float).
    pub fn of_json_number(n: &'a serde_json::Number) -> Self {
        match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cell::Int(i),
            (None, Some(u)) => Cell::UInt(u),
            // Arbitrary precision: the exact text the number was read from.
            (None, None) => Cell::Number(n.as_str()),
        }
    }

    /// The cell as a JSON value (for dead letters and JSON encoders); numbers keep their text.
    pub fn to_json(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(b),
            Cell::Int(i) => i.into(),
            Cell::UInt(u) => u.into(),
            Cell::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Cell::Number(text) => serde_json::from_str::<serde_json::Number>(text)
                .map_or_else(|_| Value::String(text.to_owned()), Value::Number),
            Cell::Text(text) => Value::String(text.to_owned()),
            Cell::Json(value) => value.clone(),
        }
    }

    /// Appends the cell as JSON to `out`: numbers as their exact text, text escaped.
    pub fn write_json(self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing to a Vec cannot fail; serde_json fails only on non-string map keys, which a
        // `Value` cannot hold.
        let _ = match self {
            Cell::Null => out.write_all(b"null"),
            Cell::Bool(b) => out.write_all(if b { b"true" } else { b"false" }),
            Cell::Int(i) => write!(out, "{i}"),
            Cell::UInt(u) => write!(out, "{u}"),
            Cell::Float(f) if f.is_finite() => write!(out, "{f:?}"),
            Cell::Float(_) => out.write_all(b"null"),
            Cell::Number(text) if serde_json::from_str::<serde_json::Number>(text).is_ok() => {
                out.write_all(text.as_bytes())
            }
            Cell::Number(text) | Cell::Text(text) => {
                serde_json::to_writer(&mut *out, text).map_err(std::io::Error::other)
            }
            Cell::Json(value) => {
                serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)
            }
        };
    }

    /// Approximate encoded size in bytes.
    pub fn size_hint(self) -> usize {
        match self {
            Cell::Null | Cell::Bool(_) => 4,
            Cell::Int(_) | Cell::UInt(_) | Cell::Float(_) => 8,
            Cell::Number(text) | Cell::Text(text) => text.len() + 2,
            Cell::Json(value) => crate::record::json_size_hint(value),
        }
    }
}

/// Receives the cells of one record, one call per column of the destination, in order.
///
/// Implemented by sinks. `Err` is the reason a cell does not fit its column (a data error the
/// sink reports naming the column); the record stops writing at the first one.
pub trait CellWriter {
    /// The next column's cell.
    fn cell(&mut self, cell: Cell<'_>) -> Result<(), String>;
}

/// A field type of a record: its cell, and the column type and nullability the derive gives it.
pub trait AsCell {
    /// The column type a field of this type gets (overridable per field in the derive).
    const KIND: ColumnType;
    /// Whether a field of this type may be null.
    const NULLABLE: bool = false;
    /// The field's value.
    fn as_cell(&self) -> Cell<'_>;
}

macro_rules! as_cell {
    ($($ty:ty => $kind:ident, |$v:ident| $cell:expr;)*) => {
        $(impl AsCell for $ty {
            const KIND: ColumnType = ColumnType::$kind;
            fn as_cell(&self) -> Cell<'_> {
                let $v = self;
                $cell
            }
        })*
    };
}

as_cell! {
    String => Text, |v| Cell::Text(v);
    Arc<str> => Text, |v| Cell::Text(v);
    &'static str => Text, |v| Cell::Text(v);
    bool => Boolean, |v| Cell::Bool(*v);
    i64 => Integer, |v| Cell::Int(*v);
    i32 => Integer, |v| Cell::Int(i64::from(*v));
    u32 => Integer, |v| Cell::UInt(u64::from(*v));
    u64 => Integer, |v| Cell::UInt(*v);
    f64 => Float, |v| Cell::Float(*v);
    Value => Json, |v| Cell::Json(v);
}

impl<T: AsCell> AsCell for Option<T> {
    const KIND: ColumnType = T::KIND;
    const NULLABLE: bool = true;
    fn as_cell(&self) -> Cell<'_> {
        self.as_ref().map_or(Cell::Null, AsCell::as_cell)
    }
}

/// Which field of a record fills each column of a destination, worked out once per batch by a
/// derived record (`#[derive(Record)]`): columns are matched by name, in the destination's
/// order, so a table may order its columns differently or leave some fields out. A nullable
/// column the record does not have gets `NULL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPlan(Box<[usize]>);

impl FieldPlan {
    /// The index for a column the record has no field for (written as `NULL`).
    pub const NULL: usize = usize::MAX;

    /// Matches `columns` to the record's `fields` by name.
    ///
    /// # Errors
    /// A NOT NULL column the record has no field for, naming it.
    pub fn new(columns: &[Column], fields: &[&str], record: &str) -> Result<Self, String> {
        columns
            .iter()
            .map(
                |column| match fields.iter().position(|f| *f == column.name) {
                    Some(index) => Ok(index),
                    None if column.nullable => Ok(Self::NULL),
                    None => Err(format!(
                        "column {} is NOT NULL and record {record} has no field of that name",
                        column.name
                    )),
                },
            )
            .collect::<Result<Box<[usize]>, String>>()
            .map(Self)
    }

    /// The field index of each column, in column order.
    pub fn fields(&self) -> &[usize] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_numbers_keep_their_exact_text_and_width() {
        let big: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert_eq!(
            Cell::of_json(&big),
            Cell::Number("123456789012345678901234567890")
        );
        let decimal: Value = serde_json::from_str("999999999999.12345670").unwrap();
        assert_eq!(
            Cell::of_json(&decimal),
            Cell::Number("999999999999.12345670")
        );
        assert_eq!(Cell::of_json(&json!(u64::MAX)), Cell::UInt(u64::MAX));
        assert_eq!(Cell::of_json(&json!(-3)), Cell::Int(-3));
        assert_eq!(Cell::of_json(&big).to_json().to_string(), big.to_string());
        assert_eq!(
            Cell::of_json(&decimal).to_json().to_string(),
            "999999999999.12345670"
        );
    }

    #[test]
    fn cells_write_json_exactly() {
        let mut out = Vec::new();
        for cell in [
            Cell::Null,
            Cell::Bool(true),
            Cell::Int(-1),
            Cell::UInt(u64::MAX),
            Cell::Float(0.1),
            Cell::Number("1000000000000.00000000"),
            Cell::Text("a\"b"),
            Cell::Json(&json!({"k": [1]})),
        ] {
            cell.write_json(&mut out);
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "null true -1 18446744073709551615 0.1 1000000000000.00000000 \"a\\\"b\" {\"k\":[1]} "
        );
    }

    #[test]
    fn a_plan_matches_columns_by_name_and_refuses_a_missing_required_column() {
        let columns = [
            Column::new("b", ColumnType::Text, false),
            Column::new("extra", ColumnType::Text, true),
            Column::new("a", ColumnType::Integer, false),
        ];
        let plan = FieldPlan::new(&columns, &["a", "b"], "R").unwrap();
        assert_eq!(plan.fields(), &[1, FieldPlan::NULL, 0]);
        let required = [Column::new("c", ColumnType::Text, false)];
        let error = FieldPlan::new(&required, &["a", "b"], "R").unwrap_err();
        assert!(
            error.contains("column c") && error.contains("record R"),
            "{error}"
        );
    }
}
