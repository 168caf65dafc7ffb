//! The `coinbase` connector: Coinbase Exchange trades, gap-free.
//!
//! The websocket `matches` channel drops messages and cannot resume, so the source keeps one
//! cursor per product — the last *contiguous* trade id — and fills every hole through REST
//! `GET /products/{id}/trades` (exclusive `before`/`after` trade-id cursors):
//!
//! - on every (re)connect, from the saved cursor to the first live trade;
//! - on a trade id jump that the next frames do not close within `gap_grace` (a reordered
//!   frame closes it on its own);
//! - when a heartbeat's `last_trade_id` is above the last trade seen on two heartbeats in a row
//!   (one heartbeat of grace, so a trade still in flight is not fetched twice).
//!
//! `last_match` and repeated frames are duplicates by `(product_id, trade_id)`. A hole REST cannot
//! fill (older than its retention) is reported — log, `sluice_coinbase_unfilled_trades_total`,
//! [`CoinbaseStats::unfilled`] — and the cursor moves past it. Prices and sizes stay exact decimal
//! strings (trailing zeros trimmed, so REST and websocket forms agree); times keep microseconds.

mod connector;
mod rest;
mod sinks;
mod source;
mod types;

pub use connector::{CoinbaseConfig, PIPELINE_ID, RESOURCE};
pub use sinks::trades_table;
pub use source::{CoinbaseSource, CoinbaseStats};
pub use types::normalize_decimal;
