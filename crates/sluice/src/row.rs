//! Defines the dynamic record of configured pipelines: field names shared by every row of the
//! same shape, and one owned value per field. JSON is what a jq transform sees; a [`Row`] is
//! what a sink receives, so no map of owned keys travels from a source to its sink.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::{
    cell::{Cell, CellWriter, FieldPlan},
    record::{Column, Record},
};

/// The field names of a row, in order, shared by every row of the same shape.
pub type Names = Arc<[Box<str>]>;

/// One value of a [`Row`], owned. Exact numbers keep their text: a decimal or an integer past
/// 64 bits is [`Datum::Number`], never a float.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer past `i64::MAX`.
    UInt(u64),
    /// A float (a JSON number never becomes one: see [`Datum::Number`]).
    Float(f64),
    /// An exact number as its text.
    Number(Box<str>),
    /// Text.
    Text(Box<str>),
    /// A nested object or array.
    Json(Box<Value>),
}

impl Datum {
    /// The datum of a JSON value, moving its text: scalars become their datum, objects and
    /// arrays stay JSON.
    pub fn from_json(value: Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(b),
            Value::Number(n) => match Cell::of_json_number(&n) {
                Cell::Int(i) => Self::Int(i),
                Cell::UInt(u) => Self::UInt(u),
                _ => Self::Number(n.as_str().into()),
            },
            Value::String(s) => Self::Text(s.into_boxed_str()),
            other @ (Value::Array(_) | Value::Object(_)) => Self::Json(Box::new(other)),
        }
    }

    /// The value as a cell.
    pub fn cell(&self) -> Cell<'_> {
        match self {
            Self::Null => Cell::Null,
            Self::Bool(b) => Cell::Bool(*b),
            Self::Int(i) => Cell::Int(*i),
            Self::UInt(u) => Cell::UInt(*u),
            Self::Float(f) => Cell::Float(*f),
            Self::Number(text) => Cell::Number(text),
            Self::Text(text) => Cell::Text(text),
            Self::Json(value) => Cell::Json(value),
        }
    }
}

/// A record whose fields are known at run time: the rows of a file, of a polled API, of a jq
/// transform. Its names are shared with the rows of the same shape (see [`Shapes`]); its values
/// are owned [`Datum`]s. A sink fills its columns by name, working out the match once per shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    names: Names,
    values: Box<[Datum]>,
}

impl Row {
    /// A row of `names` and their `values`.
    ///
    /// # Panics
    /// When the two differ in length (a programming error).
    pub fn new(names: Names, values: impl Into<Box<[Datum]>>) -> Self {
        let values = values.into();
        assert_eq!(names.len(), values.len(), "a row needs one value per name");
        Self { names, values }
    }

    /// The row of a JSON object, its names shared through `shapes`; anything else is handed
    /// back.
    ///
    /// # Errors
    /// The value itself when it is not an object.
    pub fn from_json(value: Value, shapes: &Shapes) -> Result<Self, Value> {
        match value {
            Value::Object(fields) => Ok(Self::from_map(fields, shapes)),
            other => Err(other),
        }
    }

    /// The row of a JSON object's fields, its names shared through `shapes`.
    pub fn from_map(fields: Map<String, Value>, shapes: &Shapes) -> Self {
        let names = shapes.names(fields.keys());
        let values = fields
            .into_iter()
            .map(|(_, v)| Datum::from_json(v))
            .collect();
        Self { names, values }
    }

    /// The field names, in order.
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// The values, in the order of the names.
    pub fn values(&self) -> &[Datum] {
        &self.values
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&Datum> {
        self.names
            .iter()
            .position(|n| &**n == name)
            .map(|i| &self.values[i])
    }

    /// The row as a JSON object (what a jq transform sees; a dead letter's payload).
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.names
                .iter()
                .zip(self.values.iter())
                .map(|(name, value)| (name.to_string(), value.cell().to_json()))
                .collect(),
        )
    }
}

/// As a JSON object (numbers keep their exact text).
impl serde::Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.names.len()))?;
        for (name, value) in self.names.iter().zip(self.values.iter()) {
            map.serialize_entry(&**name, value)?;
        }
        map.end()
    }
}

/// As JSON (numbers keep their exact text).
impl serde::Serialize for Datum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => serializer.serialize_none(),
            Self::Bool(b) => serializer.serialize_bool(*b),
            Self::Int(i) => serializer.serialize_i64(*i),
            Self::UInt(u) => serializer.serialize_u64(*u),
            Self::Float(f) => serializer.serialize_f64(*f),
            Self::Text(text) => serializer.serialize_str(text),
            Self::Number(_) | Self::Json(_) => self.cell().to_json().serialize(serializer),
        }
    }
}

/// Shares the names of rows of the same shape: consecutive rows with the same field names get
/// the same [`Names`], so a sink matches them to its columns once. Keeps the last shape only —
/// the rows of one source almost always have one.
#[derive(Debug, Default)]
pub struct Shapes {
    last: Mutex<Option<Names>>,
}

impl Shapes {
    /// The shared names equal to `keys`.
    pub fn names<'a>(&self, keys: impl ExactSizeIterator<Item = &'a String> + Clone) -> Names {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(names) = last.as_ref()
            && names.len() == keys.len()
            && names.iter().zip(keys.clone()).all(|(a, b)| **a == **b)
        {
            return names.clone();
        }
        let names: Names = keys.map(|k| k.as_str().into()).collect();
        *last = Some(names.clone());
        names
    }
}

/// How rows fill a destination's columns: the field of each column, worked out once per shape
/// of row (a row's names are shared, so this is a pointer compare per row).
#[derive(Debug, Default)]
pub struct RowPlan {
    last: Mutex<Option<(Names, FieldPlan)>>,
}

impl Record for Row {
    type Plan = RowPlan;

    fn plan(_: &[Column]) -> Result<RowPlan, String> {
        Ok(RowPlan::default())
    }

    fn write<W: CellWriter>(
        &self,
        plan: &RowPlan,
        columns: &[Column],
        out: &mut W,
    ) -> Result<(), String> {
        let mut last = plan.last.lock().unwrap_or_else(|e| e.into_inner());
        let fields = match last.as_ref() {
            Some((names, fields)) if Arc::ptr_eq(names, &self.names) => fields,
            _ => {
                let names: Vec<&str> = self.names.iter().map(|n| &**n).collect();
                let fields = FieldPlan::new(columns, &names, "row")?;
                &last.insert((self.names.clone(), fields)).1
            }
        };
        for &field in fields.fields() {
            out.cell(self.values.get(field).map_or(Cell::Null, Datum::cell))?;
        }
        Ok(())
    }

    fn field(&self, name: &str) -> Option<Cell<'_>> {
        self.get(name).map(Datum::cell)
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (name, value)) in self.names.iter().zip(self.values.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            Cell::Text(name).write_json(out);
            out.push(b':');
            value.cell().write_json(out);
        }
        out.push(b'}');
    }

    fn size_hint(&self) -> usize {
        2 + self
            .names
            .iter()
            .zip(self.values.iter())
            .map(|(name, value)| name.len() + 3 + value.cell().size_hint())
            .sum::<usize>()
    }

    fn to_json(&self) -> Value {
        Row::to_json(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::record::ColumnType;

    struct Cells(Vec<String>);

    impl CellWriter for Cells {
        fn cell(&mut self, cell: Cell<'_>) -> Result<(), String> {
            let mut out = Vec::new();
            cell.write_json(&mut out);
            self.0.push(String::from_utf8(out).unwrap());
            Ok(())
        }
    }

    fn row(text: &str, shapes: &Shapes) -> Row {
        Row::from_json(serde_json::from_str(text).unwrap(), shapes).unwrap()
    }

    #[test]
    fn rows_of_one_shape_share_their_names_and_keep_exact_numbers() {
        let shapes = Shapes::default();
        let a = row(
            r#"{"id": 18446744073709551616, "amount": 999999999999.12345670, "n": 3}"#,
            &shapes,
        );
        let b = row(r#"{"n": -1, "id": 1, "amount": "0.10"}"#, &shapes);
        assert!(Arc::ptr_eq(&a.names, &b.names), "same keys, same names");
        let c = row(r#"{"id": 1}"#, &shapes);
        assert!(!Arc::ptr_eq(&a.names, &c.names));
        assert_eq!(
            a.get("id"),
            Some(&Datum::Number("18446744073709551616".into()))
        );
        assert_eq!(
            a.get("amount"),
            Some(&Datum::Number("999999999999.12345670".into()))
        );
        assert_eq!(a.get("n"), Some(&Datum::Int(3)));
        let mut out = Vec::new();
        a.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"amount":999999999999.12345670,"id":18446744073709551616,"n":3}"#
        );
        assert_eq!(
            a.to_json().to_string(),
            r#"{"amount":999999999999.12345670,"id":18446744073709551616,"n":3}"#
        );
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"amount":999999999999.12345670,"id":18446744073709551616,"n":3}"#
        );
        assert_eq!(Row::from_json(json!([1]), &shapes), Err(json!([1])));
    }

    #[test]
    fn a_row_fills_columns_by_name_whatever_its_shape() {
        let shapes = Shapes::default();
        let columns = [
            Column::new("id", ColumnType::Integer, false),
            Column::new("note", ColumnType::Text, true),
            Column::new("tags", ColumnType::Json, true),
        ];
        let plan = Row::plan(&columns).unwrap();
        let mut out = Cells(Vec::new());
        for text in [
            r#"{"tags": ["x"], "id": 1}"#,
            r#"{"id": 2, "note": "a\"b", "extra": true}"#,
            r#"{"tags": [], "id": 3}"#,
        ] {
            row(text, &shapes).write(&plan, &columns, &mut out).unwrap();
        }
        assert_eq!(
            out.0,
            [
                "1",
                "null",
                r#"["x"]"#,
                "2",
                r#""a\"b""#,
                "null",
                "3",
                "null",
                "[]"
            ]
        );
        let error = row(r#"{"note": "no id"}"#, &shapes)
            .write(&plan, &columns, &mut out)
            .unwrap_err();
        assert!(error.contains("column id is NOT NULL"), "{error}");
    }
}
