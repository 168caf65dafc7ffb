//! Defines a simulated trade: a pure function of `(seed, product, trade_id)`, rendered as the
//! websocket `match` frame and as the REST trade object of protocols.md §1.5 and §1.12.

use serde_json::{Value, json};

/// One trade, with the fields of a `match` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trade {
    /// The product id.
    pub product_id: String,
    /// The per-product trade id.
    pub trade_id: u64,
    /// The product's feed sequence number (jumps between trades, as on the real `matches` feed).
    pub sequence: u64,
    /// Price in cents.
    pub price_cents: u64,
    /// Size in units of 1e-8.
    pub size_sats: u64,
    /// The maker side.
    pub side: &'static str,
    /// The resting order.
    pub maker_order_id: String,
    /// The aggressor order.
    pub taker_order_id: String,
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64: a fixed, well-distributed hash so trades can be rendered again from their id.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn uuid(h: u64, g: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        0x8000 | (g >> 48) & 0x3fff,
        g & 0xffff_ffff_ffff
    )
}

/// 2026-09-29T13:45:58Z, the time of the first simulated trade.
const EPOCH_US: i64 = 1_790_689_558_000_000;

impl Trade {
    /// Trade `trade_id` of product number `index` named `product`, whose first id is `first`.
    pub fn generate(seed: u64, index: usize, product: &str, first: u64, trade_id: u64) -> Self {
        let h = mix(seed ^ ((index as u64) << 56) ^ trade_id);
        let g = mix(h);
        let base_cents: u64 = if index == 0 {
            8_414_083
        } else {
            412_550 / (index as u64)
        };
        let offset = trade_id.saturating_sub(first);
        Self {
            product_id: product.to_owned(),
            trade_id,
            sequence: 136_967_652_357 + offset * 4 + h % 3,
            price_cents: base_cents.saturating_sub(5_000) + h % 10_000,
            size_sats: 1 + (g % 200_000_000),
            side: if h >> 63 == 0 { "buy" } else { "sell" },
            maker_order_id: uuid(h, g),
            taker_order_id: uuid(g, h),
            time_us: EPOCH_US + offset as i64 * 997 + (g % 500) as i64,
        }
    }

    /// The price as the websocket sends it (`"84140.83"`).
    pub fn price(&self) -> String {
        format!("{}.{:02}", self.price_cents / 100, self.price_cents % 100)
    }

    /// The size as the websocket sends it (`"0.01250000"`).
    pub fn size(&self) -> String {
        format!(
            "{}.{:08}",
            self.size_sats / 100_000_000,
            self.size_sats % 100_000_000
        )
    }

    /// The time, RFC 3339 with microseconds.
    pub fn time(&self) -> String {
        rfc3339_micros(self.time_us)
    }

    /// The `match` (or `last_match`) frame.
    pub fn frame(&self, kind: &str) -> String {
        json!({
            "type": kind,
            "trade_id": self.trade_id,
            "maker_order_id": self.maker_order_id,
            "taker_order_id": self.taker_order_id,
            "side": self.side,
            "size": self.size(),
            "price": self.price(),
            "product_id": self.product_id,
            "sequence": self.sequence,
            "time": self.time(),
        })
        .to_string()
    }

    /// The REST trade object: no product id or order ids, prices with trailing zeros.
    pub fn rest(&self) -> Value {
        json!({
            "time": self.time(),
            "trade_id": self.trade_id,
            "price": format!("{}.{:02}000000", self.price_cents / 100, self.price_cents % 100),
            "size": self.size(),
            "side": self.side,
        })
    }
}

/// RFC 3339 in UTC with microseconds: `2026-09-29T13:45:58.116787Z`.
pub fn rfc3339_micros(unix_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(unix_us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trades_render_again_identically_and_ids_follow_the_protocol_shapes() {
        let a = Trade::generate(1, 0, "BTC-USD", 100, 105);
        assert_eq!(a, Trade::generate(1, 0, "BTC-USD", 100, 105));
        let frame: Value = serde_json::from_str(&a.frame("match")).unwrap();
        assert_eq!(frame["trade_id"], 105);
        assert!(
            frame["price"]
                .as_str()
                .unwrap()
                .split_once('.')
                .unwrap()
                .1
                .len()
                == 2
        );
        assert!(frame["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            frame["time"].as_str().unwrap().len(),
            "2026-09-29T13:45:58.116787Z".len()
        );
        let next = Trade::generate(1, 0, "BTC-USD", 100, 106);
        assert!(
            next.sequence > a.sequence + 1,
            "sequence jumps between matches"
        );
        assert!(next.time_us > a.time_us);
    }
}
