//! Turns decoded `pgoutput` tuples (from [`sluice_pgoutput`]) into JSON rows: types mapped
//! exactly (numeric as text, json/jsonb with every digit), unchanged TOAST values named, never
//! nulled.

use serde_json::{Map, Value};
pub use sluice_pgoutput::{
    Change, Datum, DecodeError, Message, Relation, RelationCache, RelationColumn, decode,
};

/// A text value as JSON by type: booleans, integers, floats and JSON as themselves; numeric and
/// everything else as text (numeric stays exact).
pub fn to_json(type_oid: u32, text: &str) -> Value {
    match type_oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 | 26 => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
        _ => Value::String(text.to_owned()),
    }
}

/// A tuple as a JSON object; unchanged TOAST columns are left out and named in the second value
/// (never written as NULL). With `keys_only`, only replica identity columns.
pub fn tuple_json(
    relation: &Relation,
    tuple: &[Datum],
    keys_only: bool,
) -> (Map<String, Value>, Vec<String>) {
    let mut row = Map::new();
    let mut unchanged = Vec::new();
    for (column, datum) in relation.columns.iter().zip(tuple) {
        if keys_only && !column.key {
            continue;
        }
        match datum {
            Datum::Null => {
                row.insert(column.name.clone(), Value::Null);
            }
            Datum::UnchangedToast => unchanged.push(column.name.clone()),
            Datum::Text(text) => {
                row.insert(column.name.clone(), to_json(column.type_oid, text));
            }
        }
    }
    (row, unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation() -> Relation {
        let mut m = vec![b'R'];
        m.extend(16_384u32.to_be_bytes());
        m.extend(b"public\0items\0d");
        m.extend(3i16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 20u32), (0, "price", 1700), (0, "body", 25)] {
            m.push(flags);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        let Message::Relation(_, relation) = decode(&m).unwrap() else {
            panic!("not a relation")
        };
        relation
    }

    #[test]
    fn rows_type_values_and_name_unchanged_toast() {
        let new = vec![
            Datum::Text("7".into()),
            Datum::Text("12.500".into()),
            Datum::UnchangedToast,
        ];
        let (row, unchanged) = tuple_json(&relation(), &new, false);
        assert_eq!(
            Value::Object(row),
            serde_json::json!({"id": 7, "price": "12.500"})
        );
        assert_eq!(unchanged, ["body"]);
    }
    /// json/jsonb numbers keep Postgres's digits: past 2^64, long decimals, `0.1`.
    #[test]
    fn json_numbers_are_exact() {
        for text in [
            "-12345678901234567890",
            "123456789012345678901234567890",
            "0.1",
            "106262360299.10000000",
            "3.14159265358979323846264338327950288",
        ] {
            assert_eq!(to_json(3802, text).to_string(), text);
            let doc = format!(r#"{{"n": {text}}}"#);
            assert_eq!(to_json(114, &doc)["n"].to_string(), text);
        }
    }
}
