//! What a trade becomes: the record (exact decimals, µs times) and the tables it lands in —
//! `coinbase_trades`, keyed by `(product_id, trade_id)` so replays and `last_match` repeats
//! converge, and `coinbase_holes` for holes skipped by policy.

use serde_json::{Map, Value};
use sluice::{Column, ColumnType, TableSchema};

/// The `coinbase_trades` table.
pub fn trades_table() -> TableSchema {
    let col = Column::new;
    TableSchema {
        table: "coinbase_trades".into(),
        columns: vec![
            col("product_id", ColumnType::Text, false),
            col("trade_id", ColumnType::Integer, false),
            col("price", ColumnType::Decimal, false),
            col("size", ColumnType::Decimal, false),
            // The maker order's side, as Coinbase sends it.
            col("side", ColumnType::Text, false),
            col("time", ColumnType::Timestamp, false),
            // Only trades read from the websocket carry these; REST backfill does not.
            col("sequence", ColumnType::Integer, true),
            col("maker_order_id", ColumnType::Text, true),
            col("taker_order_id", ColumnType::Text, true),
            // "ws" or "rest".
            col("source", ColumnType::Text, false),
        ],
        key: vec!["product_id".into(), "trade_id".into()],
    }
}

/// The `coinbase_holes` table: ranges of trade ids skipped under `on_unfillable = "skip"`.
pub fn holes_table() -> TableSchema {
    let col = Column::new;
    TableSchema {
        table: "coinbase_holes".into(),
        columns: vec![
            col("product_id", ColumnType::Text, false),
            col("from_id", ColumnType::Integer, false),
            col("to_id", ColumnType::Integer, false),
            col("seen_at", ColumnType::Timestamp, false),
        ],
        key: vec!["product_id".into(), "from_id".into()],
    }
}

/// A trade on its way to becoming a record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TradeRecord {
    pub(crate) trade_id: u64,
    pub(crate) record: Value,
}

/// Trims trailing fractional zeros so `"84140.80000000"` (REST) and `"84140.80"` (websocket)
/// are the same text; `None` when it is not a plain decimal.
pub fn normalize_decimal(text: &str) -> Option<String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !plain {
        return None;
    }
    let fraction = fraction.trim_end_matches('0');
    let sign = if text.starts_with('-') { "-" } else { "" };
    Some(if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    })
}

pub(crate) fn side(text: &str) -> Option<&'static str> {
    match text {
        "buy" => Some("buy"),
        "sell" => Some("sell"),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    product: &str,
    trade_id: u64,
    price: &str,
    size: &str,
    maker_side: &'static str,
    time: &str,
    sequence: Option<u64>,
    orders: Option<(&str, &str)>,
    source: &'static str,
) -> Result<TradeRecord, String> {
    let price =
        normalize_decimal(price).ok_or_else(|| format!("price {price:?} is not a decimal"))?;
    let size = normalize_decimal(size).ok_or_else(|| format!("size {size:?} is not a decimal"))?;
    if !time.ends_with('Z') || time.len() < 20 {
        return Err(format!("time {time:?} is not RFC 3339 UTC"));
    }
    let mut map = Map::new();
    map.insert("product_id".into(), product.into());
    map.insert("trade_id".into(), trade_id.into());
    map.insert("price".into(), price.into());
    map.insert("size".into(), size.into());
    map.insert("side".into(), maker_side.into());
    map.insert("time".into(), time.into());
    map.insert("sequence".into(), sequence.map_or(Value::Null, Value::from));
    let (maker, taker) = orders.map_or((Value::Null, Value::Null), |(m, t)| (m.into(), t.into()));
    map.insert("maker_order_id".into(), maker);
    map.insert("taker_order_id".into(), taker);
    map.insert("source".into(), source.into());
    Ok(TradeRecord {
        trade_id,
        record: Value::Object(map),
    })
}
