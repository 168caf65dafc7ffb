//! What a trade becomes: the record (exact decimals, µs times) and the tables it lands in —
//! `coinbase_trades`, keyed by `(product_id, trade_id)` so replays and `last_match` repeats
//! converge, and `coinbase_holes` for holes skipped by policy.

use std::sync::Arc;

use serde_json::Value;
use sluice::{
    Cell, CellWriter, Column, FieldPlan, IntoRecords, Record, Table, TableSchema, TransformError,
    Transformed,
};

/// A trade: one row of `coinbase_trades`, keyed by `(product_id, trade_id)` so replays and
/// `last_match` repeats converge.
#[derive(Debug, Clone, PartialEq, Record)]
#[record(table = "coinbase_trades", key(product_id, trade_id))]
pub struct Trade {
    /// The product (shared by every trade of it).
    pub product_id: Arc<str>,
    /// Coinbase's trade id, contiguous per product.
    pub trade_id: u64,
    /// The price, exact, trailing fractional zeros trimmed (websocket and REST agree).
    #[record(decimal)]
    pub price: String,
    /// The size, exact, trimmed likewise.
    #[record(decimal)]
    pub size: String,
    /// The maker order's side, as Coinbase sends it: `buy` or `sell`.
    pub side: &'static str,
    /// RFC 3339 UTC with microseconds.
    #[record(timestamp)]
    pub time: String,
    /// Only trades read from the websocket carry these; REST backfill does not.
    pub sequence: Option<u64>,
    /// The maker order (websocket only).
    pub maker_order_id: Option<String>,
    /// The taker order (websocket only).
    pub taker_order_id: Option<String>,
    /// `ws` or `rest`.
    pub source: &'static str,
}

/// A range of trade ids skipped under `on_unfillable = "skip"`: one row of `coinbase_holes`.
#[derive(Debug, Clone, PartialEq, Record)]
#[record(table = "coinbase_holes", key(product_id, from_id))]
pub struct Hole {
    /// The product.
    pub product_id: Arc<str>,
    /// The first missing id.
    pub from_id: u64,
    /// The last missing id.
    pub to_id: u64,
    /// When it was skipped (RFC 3339 UTC).
    #[record(timestamp)]
    pub seen_at: String,
}

/// What the Coinbase source emits: a trade (resource `trades`) or a skipped hole (`holes`).
#[derive(Debug, Clone, PartialEq)]
pub enum CoinbaseRecord {
    /// A trade.
    Trade(Trade),
    /// A hole skipped by policy.
    Hole(Hole),
}

/// The `coinbase_trades` table.
pub fn trades_table() -> TableSchema {
    Trade::schema()
}

/// The `coinbase_holes` table: ranges of trade ids skipped under `on_unfillable = "skip"`.
pub fn holes_table() -> TableSchema {
    Hole::schema()
}

/// Which variants can fill a table (a table of trades gets no holes: the resources route them).
#[derive(Debug)]
pub struct CoinbasePlan {
    trade: Result<FieldPlan, String>,
    hole: Result<FieldPlan, String>,
}

impl Record for CoinbaseRecord {
    type Plan = CoinbasePlan;

    fn plan(columns: &[Column]) -> Result<CoinbasePlan, String> {
        let plan = CoinbasePlan {
            trade: Trade::plan(columns),
            hole: Hole::plan(columns),
        };
        match (&plan.trade, &plan.hole) {
            (Err(trade), Err(hole)) => {
                Err(format!("neither a trade ({trade}) nor a hole ({hole})"))
            }
            _ => Ok(plan),
        }
    }

    fn write<W: CellWriter>(
        &self,
        plan: &CoinbasePlan,
        columns: &[Column],
        out: &mut W,
    ) -> Result<(), String> {
        match self {
            CoinbaseRecord::Trade(t) => {
                t.write(plan.trade.as_ref().map_err(Clone::clone)?, columns, out)
            }
            CoinbaseRecord::Hole(h) => {
                h.write(plan.hole.as_ref().map_err(Clone::clone)?, columns, out)
            }
        }
    }

    fn field(&self, name: &str) -> Option<Cell<'_>> {
        match self {
            CoinbaseRecord::Trade(t) => t.field(name),
            CoinbaseRecord::Hole(h) => h.field(name),
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            CoinbaseRecord::Trade(t) => t.write_json(out),
            CoinbaseRecord::Hole(h) => h.write_json(out),
        }
    }

    fn size_hint(&self) -> usize {
        match self {
            CoinbaseRecord::Trade(t) => t.size_hint(),
            CoinbaseRecord::Hole(h) => h.size_hint(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            CoinbaseRecord::Trade(t) => t.to_json(),
            CoinbaseRecord::Hole(h) => h.to_json(),
        }
    }
}

/// As its JSON row (how a dead letter shows it).
impl serde::Serialize for CoinbaseRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl IntoRecords<CoinbaseRecord> for CoinbaseRecord {
    fn into_records(self) -> Result<Transformed<CoinbaseRecord>, (Self, TransformError)> {
        Ok(Transformed::One(self))
    }
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
    product: Arc<str>,
    trade_id: u64,
    price: &str,
    size: &str,
    maker_side: &'static str,
    time: &str,
    sequence: Option<u64>,
    orders: Option<(&str, &str)>,
    source: &'static str,
) -> Result<Trade, String> {
    let price =
        normalize_decimal(price).ok_or_else(|| format!("price {price:?} is not a decimal"))?;
    let size = normalize_decimal(size).ok_or_else(|| format!("size {size:?} is not a decimal"))?;
    if !time.ends_with('Z') || time.len() < 20 {
        return Err(format!("time {time:?} is not RFC 3339 UTC"));
    }
    Ok(Trade {
        product_id: product,
        trade_id,
        price,
        size,
        side: maker_side,
        time: time.to_owned(),
        sequence,
        maker_order_id: orders.map(|(m, _)| m.to_owned()),
        taker_order_id: orders.map(|(_, t)| t.to_owned()),
        source,
    })
}
