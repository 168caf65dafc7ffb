//! Maps a [`TableSchema`] to ClickHouse: the `CREATE TABLE` statement and the JSONEachRow body
//! of a batch. Values are checked against their column here, so a bad field is a data error
//! naming the column instead of a server parse error about a whole batch.

use std::io::Write as _;

use chrono::{DateTime, Utc};
use sluice::{
    Cell, CellWriter, Column, ColumnType, Record, SinkError, TableSchema, is_plain_decimal,
};

use super::client::ServerVersion;

/// Digits after the point of `Decimal` columns: enough for crypto amounts (satoshis are 8,
/// wei 18) while leaving 20 digits before the point.
const DECIMAL_SCALE: u32 = 18;

/// Quotes an identifier for ClickHouse: `` `name` ``, backquotes and backslashes escaped.
pub(crate) fn quote(identifier: &str) -> String {
    format!("`{}`", identifier.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A string literal: `'text'`, quotes and backslashes escaped.
pub(crate) fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[derive(Debug)]
struct ColumnSpec {
    name: String,
    /// `"name":` ready to write.
    json_key: Vec<u8>,
    kind: ColumnType,
    nullable: bool,
    /// The version column is `UInt64` (ReplacingMergeTree wants an unsigned version).
    unsigned: bool,
}

/// The table definition and row encoder for one schema on one server version.
#[derive(Debug)]
pub(crate) struct Encoder {
    table: String,
    columns: Vec<ColumnSpec>,
    /// The schema's columns, for record plans.
    schema_columns: Vec<Column>,
    key: Vec<String>,
    version: Option<String>,
    datetime64: bool,
    /// RowBinary (the table's columns have exactly the types this encoder writes), else
    /// JSONEachRow.
    binary: bool,
}

impl Encoder {
    pub(crate) fn new(schema: &TableSchema, version: Option<&str>, server: ServerVersion) -> Self {
        let columns = schema
            .columns
            .iter()
            .map(|c| {
                let required = schema.key.contains(&c.name) || Some(c.name.as_str()) == version;
                let mut json_key = serde_json::to_vec(&c.name).unwrap_or_default();
                json_key.push(b':');
                ColumnSpec {
                    name: c.name.clone(),
                    json_key,
                    kind: c.kind,
                    nullable: c.nullable && !required,
                    unsigned: Some(c.name.as_str()) == version && c.kind == ColumnType::Integer,
                }
            })
            .collect();
        Self {
            table: schema.table.clone(),
            columns,
            schema_columns: schema.columns.clone(),
            key: schema.key.clone(),
            version: version.map(str::to_owned),
            datetime64: server.has_datetime64(),
            binary: false,
        }
    }

    /// Each column's name and the ClickHouse type this encoder creates and writes.
    pub(crate) fn column_types(&self) -> Vec<(String, String)> {
        self.columns
            .iter()
            .map(|c| (c.name.clone(), self.column_type(c)))
            .collect()
    }

    /// Writes RowBinary from now on (the caller checked the table's types are
    /// [`column_types`](Self::column_types)).
    pub(crate) fn use_binary(&mut self) {
        self.binary = true;
    }

    /// The `FORMAT` of the bodies [`rows`](Self::rows) makes.
    pub(crate) fn format(&self) -> &'static str {
        if self.binary {
            "RowBinary"
        } else {
            "JSONEachRow"
        }
    }

    pub(crate) fn has_timestamps(&self) -> bool {
        self.columns.iter().any(|c| c.kind == ColumnType::Timestamp)
    }

    fn column_type(&self, column: &ColumnSpec) -> String {
        let base = match column.kind {
            ColumnType::Integer if column.unsigned => "UInt64".to_owned(),
            ColumnType::Integer => "Int64".to_owned(),
            ColumnType::Float => "Float64".to_owned(),
            ColumnType::Decimal => format!("Decimal(38, {DECIMAL_SCALE})"),
            ColumnType::Text | ColumnType::Json => "String".to_owned(),
            ColumnType::Boolean => "UInt8".to_owned(),
            ColumnType::Timestamp if self.datetime64 => "DateTime64(6, 'UTC')".to_owned(),
            ColumnType::Timestamp => "DateTime('UTC')".to_owned(),
        };
        if column.nullable {
            format!("Nullable({base})")
        } else {
            base
        }
    }

    /// `CREATE TABLE IF NOT EXISTS`: `ReplacingMergeTree([version])` ordered by the key, or an
    /// append-only `MergeTree` without a key.
    pub(crate) fn create_table(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", quote(&c.name), self.column_type(c)))
            .collect();
        let (engine, order) = if self.key.is_empty() {
            ("MergeTree()".to_owned(), "tuple()".to_owned())
        } else {
            let key: Vec<_> = self.key.iter().map(|k| quote(k)).collect();
            let version = self.version.as_deref().map(quote).unwrap_or_default();
            (
                format!("ReplacingMergeTree({version})"),
                format!("({})", key.join(", ")),
            )
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE = {engine} ORDER BY {order}",
            quote(&self.table),
            columns.join(", ")
        )
    }

    /// The JSONEachRow body of `batch`.
    ///
    /// # Errors
    /// A data error naming the table and column of the first field that does not fit; a fatal
    /// error when the record type cannot fill the table's columns.
    pub(crate) fn rows<R: Record>(&self, batch: &[R]) -> Result<Vec<u8>, SinkError> {
        let table = &self.table;
        let plan = R::plan(&self.schema_columns)
            .map_err(|why| SinkError::fatal(format!("table {table}: {why}")))?;
        let mut out = Vec::with_capacity(batch.len() * 64 * self.columns.len().max(1));
        for record in batch {
            if !self.binary {
                out.push(b'{');
            }
            let mut row = Row {
                encoder: self,
                out: &mut out,
                next: 0,
            };
            record
                .write(&plan, &self.schema_columns, &mut row)
                .map_err(|why| SinkError::data(format!("table {table}: {why}")))?;
            if row.next != self.columns.len() {
                return Err(SinkError::data(format!(
                    "table {table}: the record wrote {} cells for {} columns",
                    row.next,
                    self.columns.len()
                )));
            }
            if !self.binary {
                out.extend_from_slice(b"}\n");
            }
        }
        Ok(out)
    }

    fn value(&self, out: &mut Vec<u8>, column: &ColumnSpec, cell: Cell<'_>) -> Result<(), String> {
        let mismatch = || format!("expects {:?}, got {}", column.kind, cell.to_json());
        let number = |out: &mut Vec<u8>, n: &dyn std::fmt::Display| {
            write!(out, "{n}").map_err(|e| e.to_string())
        };
        match (column.kind, cell) {
            (_, Cell::Null) if column.nullable => out.extend_from_slice(b"null"),
            (_, Cell::Null) => return Err("is null but the column is not nullable".into()),
            (ColumnType::Integer, Cell::Int(i)) if column.unsigned && i < 0 => {
                return Err(format!("is a version and must be ≥ 0, got {i}"));
            }
            (ColumnType::Integer, Cell::Int(i)) => number(out, &i)?,
            (ColumnType::Integer, Cell::UInt(u)) if column.unsigned => number(out, &u)?,
            (ColumnType::Integer, Cell::UInt(u)) => {
                number(out, &i64::try_from(u).map_err(|_| mismatch())?)?;
            }
            (ColumnType::Float, Cell::Float(f)) => number(out, &f)?,
            (ColumnType::Float, Cell::Int(i)) => number(out, &i)?,
            (ColumnType::Float, Cell::UInt(u)) => number(out, &u)?,
            (ColumnType::Float, Cell::Number(n)) => {
                number(out, &n.parse::<f64>().map_err(|_| mismatch())?)?;
            }
            // Exact digits, as read (serde_json's arbitrary precision, or text).
            (ColumnType::Decimal, Cell::Text(s) | Cell::Number(s)) if is_plain_decimal(s) => {
                write_decimal(out, s)?;
            }
            (ColumnType::Decimal, Cell::Int(i)) => number(out, &i)?,
            (ColumnType::Decimal, Cell::UInt(u)) => number(out, &u)?,
            (ColumnType::Text, Cell::Text(s)) => write_json(out, s)?,
            (ColumnType::Boolean, Cell::Bool(b)) => out.push(if b { b'1' } else { b'0' }),
            (ColumnType::Timestamp, Cell::Text(s)) => {
                let time = DateTime::parse_from_rfc3339(s)
                    .map_err(|e| format!("is not an RFC 3339 time ({e}): {s:?}"))?
                    .with_timezone(&Utc);
                self.write_time(out, time)?;
            }
            (ColumnType::Timestamp, Cell::Int(micros)) => {
                // Microseconds since the Unix epoch.
                let time = DateTime::from_timestamp_micros(micros).ok_or_else(mismatch)?;
                self.write_time(out, time)?;
            }
            (ColumnType::Json, Cell::Text(s)) => {
                write_json(out, &serde_json::to_string(s).map_err(|e| e.to_string())?)?;
            }
            (ColumnType::Json, other) => write_json(out, &other.to_json().to_string())?,
            _ => return Err(mismatch()),
        }
        Ok(())
    }

    /// One cell in RowBinary: little-endian numbers, LEB128-prefixed strings, a null byte
    /// before each Nullable value, decimals as Int128 scaled by 10^18, times as DateTime64(6)
    /// microseconds or DateTime seconds.
    fn binary_value(
        &self,
        out: &mut Vec<u8>,
        column: &ColumnSpec,
        cell: Cell<'_>,
    ) -> Result<(), String> {
        let mismatch = || format!("expects {:?}, got {}", column.kind, cell.to_json());
        if column.nullable {
            if cell == Cell::Null {
                out.push(1);
                return Ok(());
            }
            out.push(0);
        } else if cell == Cell::Null {
            return Err("is null but the column is not nullable".into());
        }
        match (column.kind, cell) {
            (ColumnType::Integer, Cell::Int(i)) if column.unsigned => {
                let u = u64::try_from(i)
                    .map_err(|_| format!("is a version and must be ≥ 0, got {i}"))?;
                out.extend_from_slice(&u.to_le_bytes());
            }
            (ColumnType::Integer, Cell::UInt(u)) if column.unsigned => {
                out.extend_from_slice(&u.to_le_bytes());
            }
            (ColumnType::Integer, Cell::Int(i)) => out.extend_from_slice(&i.to_le_bytes()),
            (ColumnType::Integer, Cell::UInt(u)) => {
                let i = i64::try_from(u).map_err(|_| mismatch())?;
                out.extend_from_slice(&i.to_le_bytes());
            }
            (ColumnType::Float, Cell::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
            (ColumnType::Float, Cell::Int(i)) => out.extend_from_slice(&(i as f64).to_le_bytes()),
            (ColumnType::Float, Cell::UInt(u)) => out.extend_from_slice(&(u as f64).to_le_bytes()),
            (ColumnType::Float, Cell::Number(n)) => {
                let f: f64 = n.parse().map_err(|_| mismatch())?;
                out.extend_from_slice(&f.to_le_bytes());
            }
            (ColumnType::Decimal, Cell::Text(s) | Cell::Number(s)) if is_plain_decimal(s) => {
                out.extend_from_slice(&scaled_decimal(s)?.to_le_bytes());
            }
            (ColumnType::Decimal, Cell::Int(i)) => {
                out.extend_from_slice(&scaled_decimal(&i.to_string())?.to_le_bytes());
            }
            (ColumnType::Decimal, Cell::UInt(u)) => {
                out.extend_from_slice(&scaled_decimal(&u.to_string())?.to_le_bytes());
            }
            (ColumnType::Text, Cell::Text(s)) => write_binary_string(out, s.as_bytes()),
            (ColumnType::Boolean, Cell::Bool(b)) => out.push(u8::from(b)),
            (ColumnType::Timestamp, Cell::Text(s)) => {
                let time = DateTime::parse_from_rfc3339(s)
                    .map_err(|e| format!("is not an RFC 3339 time ({e}): {s:?}"))?
                    .with_timezone(&Utc);
                self.write_binary_time(out, time)?;
            }
            (ColumnType::Timestamp, Cell::Int(micros)) => {
                let time = DateTime::from_timestamp_micros(micros).ok_or_else(mismatch)?;
                self.write_binary_time(out, time)?;
            }
            (ColumnType::Json, Cell::Text(s)) => {
                let text = serde_json::to_string(s).map_err(|e| e.to_string())?;
                write_binary_string(out, text.as_bytes());
            }
            (ColumnType::Json, other) => {
                let mut text = Vec::new();
                other.write_json(&mut text);
                write_binary_string(out, &text);
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }

    fn write_binary_time(&self, out: &mut Vec<u8>, time: DateTime<Utc>) -> Result<(), String> {
        if time.timestamp() < 0 {
            return Err(format!(
                "is before 1970 ({time}), which ClickHouse cannot store"
            ));
        }
        if self.datetime64 {
            out.extend_from_slice(&time.timestamp_micros().to_le_bytes());
        } else {
            let seconds = u32::try_from(time.timestamp())
                .map_err(|_| format!("is after 2106 ({time}), which DateTime cannot store"))?;
            out.extend_from_slice(&seconds.to_le_bytes());
        }
        Ok(())
    }

    fn write_time(&self, out: &mut Vec<u8>, time: DateTime<Utc>) -> Result<(), String> {
        if time.timestamp() < 0 {
            return Err(format!(
                "is before 1970 ({time}), which ClickHouse cannot store"
            ));
        }
        // `YYYY-MM-DD hh:mm:ss[.ffffff]`: what both old and new servers parse. Written from the
        // fields (chrono's `format` parses its pattern on every call: 2.5% of a run's cycles).
        use chrono::{Datelike, Timelike};
        let written = write!(
            out,
            "\"{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            time.year(),
            time.month(),
            time.day(),
            time.hour(),
            time.minute(),
            time.second()
        )
        .and_then(|()| {
            if self.datetime64 {
                // Leap seconds carry nanoseconds ≥ 1e9; clamp to the last microsecond.
                write!(out, ".{:06}", (time.nanosecond() / 1_000).min(999_999))
            } else {
                Ok(())
            }
        });
        written.map_err(|e| e.to_string())?;
        out.push(b'"');
        Ok(())
    }
}

/// Writes one record's cells as the fields of a JSONEachRow object.
struct Row<'a> {
    encoder: &'a Encoder,
    out: &'a mut Vec<u8>,
    next: usize,
}

impl CellWriter for Row<'_> {
    fn cell(&mut self, cell: Cell<'_>) -> Result<(), String> {
        let Some(column) = self.encoder.columns.get(self.next) else {
            return Err(format!(
                "more cells than the {} columns",
                self.encoder.columns.len()
            ));
        };
        let first = self.next == 0;
        self.next += 1;
        let written = if self.encoder.binary {
            self.encoder.binary_value(self.out, column, cell)
        } else {
            if !first {
                self.out.push(b',');
            }
            self.out.extend_from_slice(&column.json_key);
            self.encoder.value(self.out, column, cell)
        };
        written.map_err(|why| format!("column {} {why}", column.name))
    }
}

fn write_json(out: &mut Vec<u8>, text: &str) -> Result<(), String> {
    serde_json::to_writer(out, text).map_err(|e| e.to_string())
}

/// A RowBinary `String`: its length as LEB128, then the bytes.
fn write_binary_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// A plain decimal as the Int128 of `Decimal(38, 18)`: the value times 10^18, exactly.
fn scaled_decimal(s: &str) -> Result<i128, String> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if fraction.len() > DECIMAL_SCALE as usize {
        return Err(format!(
            "has {} digits after the point; the column keeps {DECIMAL_SCALE}",
            fraction.len()
        ));
    }
    let too_large = || format!("{s} is too large for Decimal(38, {DECIMAL_SCALE})");
    let mut value: i128 = 0;
    for byte in whole.bytes().chain(fraction.bytes()) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(byte - b'0')))
            .ok_or_else(too_large)?;
    }
    let pad = DECIMAL_SCALE as usize - fraction.len();
    value = value
        .checked_mul(10i128.pow(pad as u32))
        .ok_or_else(too_large)?;
    if value >= 10i128.pow(38) {
        return Err(too_large());
    }
    Ok(if negative { -value } else { value })
}

/// A plain decimal, unquoted: 18.x servers read JSONEachRow decimals only as numbers.
fn write_decimal(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let fraction = s.split_once('.').map_or(0, |(_, f)| f.len());
    if fraction > DECIMAL_SCALE as usize {
        return Err(format!(
            "has {fraction} digits after the point; the column keeps {DECIMAL_SCALE}"
        ));
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice::Column;

    use super::*;

    fn schema() -> TableSchema {
        let col = |name: &str, kind| Column::new(name, kind, true);
        TableSchema {
            table: "trades".into(),
            columns: vec![
                col("id", ColumnType::Integer),
                col("price", ColumnType::Decimal),
                col("time", ColumnType::Timestamp),
                col("seq", ColumnType::Integer),
                col("meta", ColumnType::Json),
                col("ok", ColumnType::Boolean),
            ],
            key: vec!["id".into()],
        }
    }

    const OLD: ServerVersion = ServerVersion {
        major: 18,
        minor: 16,
    };
    const NEW: ServerVersion = ServerVersion {
        major: 24,
        minor: 8,
    };

    #[test]
    fn rows_encode_as_row_binary_exactly() {
        let mut encoder = Encoder::new(&schema(), Some("seq"), NEW);
        encoder.use_binary();
        assert_eq!(encoder.format(), "RowBinary");
        let row = json!({"id": -2, "price": serde_json::from_str::<serde_json::Value>("999999999999.12345670").unwrap(),
            "time": "2026-12-01T00:00:00.000001Z", "seq": 7, "meta": {"a": 1}, "ok": null});
        let out = encoder.rows(&[row]).unwrap();
        let mut want = Vec::new();
        want.extend((-2i64).to_le_bytes()); // id: key, not nullable
        want.push(0);
        want.extend(999_999_999_999_123_456_700_000_000_000i128.to_le_bytes());
        want.push(0);
        want.extend(1_796_083_200_000_001i64.to_le_bytes());
        want.extend(7u64.to_le_bytes()); // the version: UInt64, not nullable
        want.push(0);
        want.push(7);
        want.extend(br#"{"a":1}"#);
        want.push(1); // ok: null
        assert_eq!(out, want);
        assert_eq!(scaled_decimal("-0.5").unwrap(), -500_000_000_000_000_000);
        assert!(
            scaled_decimal("1.0000000000000000001").is_err(),
            "19 decimals"
        );
        assert!(
            scaled_decimal("100000000000000000000").is_err(),
            "10^20 does not fit"
        );
        assert_eq!(
            scaled_decimal("99999999999999999999.999999999999999999").unwrap(),
            10i128.pow(38) - 1
        );
        let mut long = Vec::new();
        write_binary_string(&mut long, &[b'x'; 300]);
        assert_eq!(&long[..2], &[0xac, 0x02], "300 as LEB128");
    }

    #[test]
    fn fractional_json_numbers_fill_float_columns() {
        let schema = TableSchema {
            table: "f".into(),
            columns: vec![Column::new("f", ColumnType::Float, false)],
            key: Vec::new(),
        };
        let row: serde_json::Value = serde_json::from_str(r#"{"f": 0.5}"#).unwrap();
        let mut encoder = Encoder::new(&schema, None, NEW);
        assert_eq!(
            encoder.rows(std::slice::from_ref(&row)).unwrap(),
            b"{\"f\":0.5}\n"
        );
        encoder.use_binary();
        assert_eq!(encoder.rows(&[row]).unwrap(), 0.5f64.to_le_bytes());
    }

    #[test]
    fn the_table_is_a_replacing_merge_tree_ordered_by_the_key() {
        let old = Encoder::new(&schema(), Some("seq"), OLD).create_table();
        assert_eq!(
            old,
            "CREATE TABLE IF NOT EXISTS `trades` (`id` Int64, `price` Nullable(Decimal(38, 18)), \
             `time` Nullable(DateTime('UTC')), `seq` UInt64, `meta` Nullable(String), \
             `ok` Nullable(UInt8)) ENGINE = ReplacingMergeTree(`seq`) ORDER BY (`id`)"
        );
        let new = Encoder::new(&schema(), None, NEW).create_table();
        assert!(
            new.contains("`time` Nullable(DateTime64(6, 'UTC'))"),
            "{new}"
        );
        assert!(new.contains("`seq` Nullable(Int64)"), "{new}");
        assert!(
            new.ends_with("ReplacingMergeTree() ORDER BY (`id`)"),
            "{new}"
        );
    }

    #[test]
    fn rows_keep_decimals_exact_and_times_to_the_microsecond_where_the_server_can() {
        let row = json!({"id": 1, "price": "84140.83000000", "time": "2024-01-02T03:04:05.123456Z",
                         "seq": 7, "meta": {"a": "b"}, "ok": true});
        let new = Encoder::new(&schema(), Some("seq"), NEW)
            .rows(std::slice::from_ref(&row))
            .unwrap();
        assert_eq!(
            String::from_utf8(new).unwrap(),
            "{\"id\":1,\"price\":84140.83000000,\"time\":\"2024-01-02 03:04:05.123456\",\
             \"seq\":7,\"meta\":\"{\\\"a\\\":\\\"b\\\"}\",\"ok\":1}\n"
        );
        let old = Encoder::new(&schema(), Some("seq"), OLD)
            .rows(&[row])
            .unwrap();
        assert!(
            String::from_utf8(old)
                .unwrap()
                .contains("\"time\":\"2024-01-02 03:04:05\"")
        );
    }

    #[test]
    fn a_field_that_does_not_fit_is_a_data_error_naming_the_column() {
        let encoder = Encoder::new(&schema(), Some("seq"), NEW);
        for (row, expect) in [
            (json!({"id": 1, "price": "1e5", "seq": 1}), "column price"),
            (json!({"price": "1", "seq": 1}), "column id is null"),
            (json!({"id": 1, "seq": -1}), "column seq is a version"),
            (
                json!({"id": 1, "seq": 1, "time": "yesterday"}),
                "column time",
            ),
            (
                json!({"id": 1, "seq": 1, "price": "0.1234567890123456789"}),
                "19 digits",
            ),
            (json!([1]), "not a JSON object"),
        ] {
            let error = encoder.rows(&[row]).unwrap_err();
            assert_eq!(error.class(), sluice::ErrorClass::Data);
            assert!(error.to_string().contains(expect), "{error}");
        }
    }

    #[test]
    fn identifiers_and_literals_are_escaped() {
        assert_eq!(quote("we`ird"), "`we\\`ird`");
        assert_eq!(string_literal("it's"), "'it\\'s'");
    }
}
