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
//! Backfill pages newest first from the top of the gap (`after`) down to the cursor (`before`)
//! until every id of the gap is accounted for: a page shorter than asked proves nothing about the
//! ids it did not reach (servers cap pages at 100, 1,000 or lower). Before paging, the top of the
//! gap must be served: REST lags the socket, and ids it does not serve yet are not missing.
//! An id is a *hole* only when REST shows it does not exist — served ids on both sides of it (or
//! an empty page between the cursor and a served id). The default policy
//! ([`OnUnfillable::Hold`]) holds the cursor before the hole, retries with backoff and reports
//! it (log, `sluice_coinbase_held_holes_total`, [`CoinbaseStats::unfilled`], the pipeline not
//! ready); `on_unfillable = "skip"` moves past it and emits it to the `holes` resource.
//!
//! `last_match` and repeated frames are duplicates by `(product_id, trade_id)`. Prices and sizes stay exact decimal
//! strings (trailing zeros trimmed, so REST and websocket forms agree); times keep microseconds.

mod audit;
mod config;
mod connector;
mod feed;
mod record;
mod rest;
mod source;

pub use audit::{ProductAudit, audit_product, missing_ranges};
pub use config::{CoinbaseConfig, OnUnfillable};
pub use connector::{Coinbase, HOLES_RESOURCE, PIPELINE_ID, RESOURCE, template};
pub use feed::{decode_frame, decode_rest_page};
pub use record::{
    CoinbasePlan, CoinbaseRecord, Hole, Trade, holes_table, normalize_decimal, trades_table,
};
pub use source::{CoinbaseSource, CoinbaseStats};
