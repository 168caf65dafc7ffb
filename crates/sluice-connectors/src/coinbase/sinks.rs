//! Defines the connector's default destination: table `coinbase_trades`, keyed by
//! `(product_id, trade_id)` so replays and `last_match` repeats converge.

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
