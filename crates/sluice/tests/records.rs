//! `#[derive(Record)]` makes the struct the table definition and writes cells in a sink's
//! column order; `serde_json::Value` is the dynamic row, looked up by column name.

use std::sync::Arc;

use serde_json::{Value, json};
use sluice::{Cell, CellWriter, Column, ColumnType, Record, Table, TableSchema};

#[derive(Debug, Clone, Record)]
#[record(table = "trades", key(product_id, trade_id))]
struct Trade {
    product_id: Arc<str>,
    trade_id: u64,
    #[record(decimal)]
    price: String,
    #[record(timestamp, rename = "time")]
    at: String,
    sequence: Option<u64>,
    #[record(json)]
    meta: Value,
}

fn trade() -> Trade {
    Trade {
        product_id: "BTC-USD".into(),
        trade_id: u64::MAX,
        price: "999999999999.12345670".into(),
        at: "2026-12-01T00:00:00.000001Z".into(),
        sequence: None,
        meta: json!({"n": 1}),
    }
}

/// Collects cells as JSON, as a sink's encoder would see them.
#[derive(Default)]
struct Collect(Vec<Value>);

impl CellWriter for Collect {
    fn cell(&mut self, cell: Cell<'_>) -> Result<(), String> {
        self.0.push(cell.to_json());
        Ok(())
    }
}

fn cells<R: Record>(record: &R, columns: &[Column]) -> Result<Vec<Value>, String> {
    let plan = R::plan(columns)?;
    let mut out = Collect::default();
    record.write(&plan, columns, &mut out)?;
    Ok(out.0)
}

#[test]
fn the_struct_is_the_table_definition() {
    let schema = Trade::schema();
    let col = Column::new;
    assert_eq!(
        schema,
        TableSchema {
            table: "trades".into(),
            columns: vec![
                col("product_id", ColumnType::Text, false),
                col("trade_id", ColumnType::Integer, false),
                col("price", ColumnType::Decimal, false),
                col("time", ColumnType::Timestamp, false),
                col("sequence", ColumnType::Integer, true),
                col("meta", ColumnType::Json, false),
            ],
            key: vec!["product_id".into(), "trade_id".into()],
        }
    );
    schema.validate().unwrap();
}

#[test]
fn cells_come_in_the_sinks_column_order_with_exact_values() {
    let record = trade();
    let in_order = cells(&record, &Trade::schema().columns).unwrap();
    assert_eq!(
        in_order,
        vec![
            json!("BTC-USD"),
            json!(u64::MAX),
            json!("999999999999.12345670"),
            json!("2026-12-01T00:00:00.000001Z"),
            Value::Null,
            json!({"n": 1}),
        ]
    );
    // Another table's order, a column the record lacks (nullable), a field the table lacks.
    let columns = [
        Column::new("price", ColumnType::Decimal, false),
        Column::new("note", ColumnType::Text, true),
        Column::new("trade_id", ColumnType::Integer, false),
    ];
    assert_eq!(
        cells(&record, &columns).unwrap(),
        vec![json!("999999999999.12345670"), Value::Null, json!(u64::MAX)]
    );
    let required = [Column::new("note", ColumnType::Text, false)];
    assert!(cells(&record, &required).unwrap_err().contains("note"));
}

#[test]
fn a_derived_record_is_json_for_dead_letters_and_sizes_itself() {
    let record = trade();
    assert_eq!(
        record.to_json(),
        json!({
            "product_id": "BTC-USD", "trade_id": u64::MAX, "price": "999999999999.12345670",
            "time": "2026-12-01T00:00:00.000001Z", "sequence": null, "meta": {"n": 1}
        })
    );
    assert!(record.size_hint() >= "999999999999.12345670".len() + "BTC-USD".len());
    let mut text = Vec::new();
    record.write_json(&mut text);
    let parsed: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(parsed, record.to_json());
    assert!(
        String::from_utf8(text)
            .unwrap()
            .contains(r#""price":"999999999999.12345670""#)
    );
    assert_eq!(record.field("trade_id"), Some(Cell::UInt(u64::MAX)));
    assert_eq!(
        record.field("time"),
        Some(Cell::Text("2026-12-01T00:00:00.000001Z"))
    );
    assert_eq!(record.field("at"), None, "fields are named by their column");
}

#[test]
fn a_json_row_is_looked_up_by_column_name_and_keeps_big_numbers_exact() {
    let row: Value = serde_json::from_str(
        r#"{"trade_id": 123456789012345678901234567890, "price": 1000000000000.00000000}"#,
    )
    .unwrap();
    let columns = [
        Column::new("price", ColumnType::Decimal, false),
        Column::new("missing", ColumnType::Text, true),
        Column::new("trade_id", ColumnType::Decimal, false),
    ];
    <Value as Record>::plan(&columns).unwrap();
    let mut out = Vec::new();
    struct Texts<'a>(&'a mut Vec<String>);
    impl CellWriter for Texts<'_> {
        fn cell(&mut self, cell: Cell<'_>) -> Result<(), String> {
            self.0.push(format!("{cell:?}"));
            Ok(())
        }
    }
    row.write(&(), &columns, &mut Texts(&mut out)).unwrap();
    assert_eq!(
        out,
        vec![
            r#"Number("1000000000000.00000000")"#,
            "Null",
            r#"Number("123456789012345678901234567890")"#
        ]
    );
    let not_a_row = json!([1, 2]);
    assert!(
        not_a_row
            .write(&(), &columns, &mut Texts(&mut Vec::new()))
            .unwrap_err()
            .contains("not a JSON object")
    );
}
