//! The wire types of the Coinbase Exchange feed and REST trades (protocols.md §1) and their
//! decoding; what a trade becomes is in [`super::record`].

use std::{borrow::Cow, sync::Arc};

use super::record::{Trade, record, side};
use serde::Deserialize;

/// Any feed frame, parsed in one pass: every field optional, classified after parsing. (An
/// internally tagged enum would buffer each frame before choosing a variant.)
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Option<Cow<'a, str>>,
    pub(crate) trade_id: Option<u64>,
    pub(crate) sequence: Option<u64>,
    #[serde(borrow)]
    pub(crate) maker_order_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) taker_order_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) product_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) size: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) price: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) side: Option<Cow<'a, str>>,
    pub(crate) last_trade_id: Option<u64>,
    #[serde(borrow)]
    pub(crate) message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) reason: Option<Cow<'a, str>>,
}

/// A REST trade object.
#[derive(Debug, Deserialize)]
pub(crate) struct RestTrade {
    pub(crate) trade_id: u64,
    pub(crate) time: String,
    pub(crate) price: String,
    pub(crate) size: String,
    pub(crate) side: String,
}

impl Frame<'_> {
    /// The trade of a `match` / `last_match` frame, or why the frame is malformed;
    /// `product_of` gives the shared name of a product.
    pub(crate) fn trade(&self, product_of: impl Fn(&str) -> Arc<str>) -> Result<Trade, String> {
        let missing = |field: &str| format!("match frame without a valid {field}");
        let product = self
            .product_id
            .as_deref()
            .ok_or_else(|| missing("product_id"))?;
        let trade_id = self.trade_id.ok_or_else(|| missing("trade_id"))?;
        let maker_side = self
            .side
            .as_deref()
            .and_then(side)
            .ok_or_else(|| missing("side"))?;
        let maker = self
            .maker_order_id
            .as_deref()
            .ok_or_else(|| missing("maker_order_id"))?;
        let taker = self
            .taker_order_id
            .as_deref()
            .ok_or_else(|| missing("taker_order_id"))?;
        record(
            product_of(product),
            trade_id,
            self.price.as_deref().ok_or_else(|| missing("price"))?,
            self.size.as_deref().ok_or_else(|| missing("size"))?,
            maker_side,
            self.time.as_deref().ok_or_else(|| missing("time"))?,
            Some(self.sequence.ok_or_else(|| missing("sequence"))?),
            Some((maker, taker)),
            "ws",
        )
    }
}

/// A REST trades page: a JSON array of trade objects.
pub(crate) fn parse_rest_page(body: &[u8]) -> Result<Vec<RestTrade>, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a page of trades: {e}"))
}

/// Decodes a feed frame as the source does; `Err` for what it dead-letters. (A fuzz target.)
pub fn decode_frame(text: &str) -> Result<(), String> {
    let frame: Frame<'_> =
        serde_json::from_str(text).map_err(|e| format!("frame is not JSON: {e}"))?;
    match frame.kind.as_deref() {
        Some("match" | "last_match") => frame.trade(|p: &str| Arc::from(p)).map(drop),
        Some("heartbeat") if frame.product_id.is_none() || frame.last_trade_id.is_none() => {
            Err("heartbeat without product_id or last_trade_id".into())
        }
        _ => Ok(()),
    }
}

/// Decodes a REST page and every trade of it into a record of `product`. (A fuzz target.)
pub fn decode_rest_page(body: &[u8], product: &str) -> Result<(), String> {
    let product: Arc<str> = product.into();
    for trade in parse_rest_page(body)? {
        trade.record(&product)?;
    }
    Ok(())
}

impl RestTrade {
    /// The record of a REST trade of `product`.
    pub(crate) fn record(&self, product: &Arc<str>) -> Result<Trade, String> {
        let maker_side =
            side(&self.side).ok_or_else(|| format!("side {:?} is not buy or sell", self.side))?;
        record(
            product.clone(),
            self.trade_id,
            &self.price,
            &self.size,
            maker_side,
            &self.time,
            None,
            None,
            "rest",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{super::record::normalize_decimal, *};

    #[test]
    fn decimals_compare_as_decimals_not_as_strings() {
        assert_eq!(
            normalize_decimal("84140.80000000").as_deref(),
            Some("84140.8")
        );
        assert_eq!(normalize_decimal("84140.80"), normalize_decimal("84140.8"));
        assert_eq!(normalize_decimal("12.000").as_deref(), Some("12"));
        assert_eq!(
            normalize_decimal("0.00004104").as_deref(),
            Some("0.00004104")
        );
        assert_eq!(normalize_decimal("-1.50").as_deref(), Some("-1.5"));
        assert_eq!(normalize_decimal("1e5"), None);
        assert_eq!(normalize_decimal(""), None);
    }

    #[test]
    fn a_documented_match_frame_becomes_an_exact_record() {
        let text = r#"{"type":"match","trade_id":1099995624,"maker_order_id":"c1f2a9d0-5b7e-4e63-9a51-0f6f3c2d8e11","taker_order_id":"3e0b7d5a-1c44-4f0a-8e2b-7a9d6c5b4f30","side":"buy","size":"0.01250000","price":"84140.82","product_id":"BTC-USD","sequence":136967652391,"time":"2026-09-29T13:45:58.204113Z"}"#;
        let frame: Frame<'_> = serde_json::from_str(text).unwrap();
        let trade = frame.trade(|p: &str| Arc::from(p)).unwrap();
        assert_eq!(&*trade.product_id, "BTC-USD");
        assert_eq!(trade.trade_id, 1099995624);
        assert_eq!(trade.price, "84140.82");
        assert_eq!(trade.size, "0.0125");
        assert_eq!(trade.side, "buy");
        assert_eq!(trade.time, "2026-09-29T13:45:58.204113Z");
        assert_eq!(trade.sequence, Some(136967652391));
        assert_eq!(trade.source, "ws");
    }

    #[test]
    fn a_match_without_its_fields_is_malformed() {
        let frame: Frame<'_> =
            serde_json::from_str(r#"{"type":"match","product_id":"BTC-USD"}"#).unwrap();
        assert!(
            frame
                .trade(|p: &str| Arc::from(p))
                .unwrap_err()
                .contains("trade_id")
        );
        let frame: Frame<'_> = serde_json::from_str(r#"{"type":"match","trade_id":1,"product_id":"BTC-USD","side":"up","maker_order_id":"a","taker_order_id":"b","price":"1","size":"1","time":"2026-09-29T13:45:58.204113Z","sequence":1}"#).unwrap();
        assert!(
            frame
                .trade(|p: &str| Arc::from(p))
                .unwrap_err()
                .contains("side")
        );
    }
}
