//! The Coinbase connector's configuration: serde with defaults, and `validate()`.

use std::time::Duration;

use serde::Deserialize;

/// Configuration of a [`super::CoinbaseSource`]; every field has a default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoinbaseConfig {
    /// The websocket feed.
    pub ws_url: String,
    /// The REST base URL for backfill.
    pub rest_url: String,
    /// Products to follow.
    pub products: Vec<String>,
    /// How long a gap may stay open before it is backfilled, in milliseconds.
    pub gap_grace_ms: u64,
    /// Silence (no frame, no heartbeat) before reconnecting, in milliseconds.
    pub idle_timeout_ms: u64,
    /// What to do at a hole: trade ids REST shows do not exist (or no longer serves).
    pub on_unfillable: OnUnfillable,
    /// REST requests a second at most, over all products (bursts of as many). Coinbase allows
    /// 10 a second per IP, bursts of 15, and answers 429 beyond; the default leaves room.
    pub rest_requests_per_second: u32,
}

/// The policy for a hole REST cannot fill.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnfillable {
    /// Hold the product's cursor before the hole, retry with backoff, report it (log,
    /// `sluice_coinbase_held_holes_total`, the pipeline not ready) until REST serves it.
    #[default]
    Hold,
    /// Move past the hole and write it to the `holes` resource (table `coinbase_holes`:
    /// product, from, to, seen_at), so nothing is lost silently.
    Skip,
}

fn default_products() -> Vec<String> {
    vec!["BTC-USD".into(), "ETH-USD".into()]
}

impl Default for CoinbaseConfig {
    fn default() -> Self {
        Self {
            ws_url: "wss://ws-feed.exchange.coinbase.com".into(),
            rest_url: "https://api.exchange.coinbase.com".into(),
            products: default_products(),
            gap_grace_ms: 250,
            idle_timeout_ms: 5_000,
            on_unfillable: OnUnfillable::default(),
            rest_requests_per_second: 8,
        }
    }
}

impl CoinbaseConfig {
    /// Products from a comma-separated list (trimmed, empty entries dropped), as the seed read
    /// `COINBASE_PRODUCTS`; an empty list gives the defaults.
    pub fn parse_products(list: &str) -> Vec<String> {
        let products: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if products.is_empty() {
            default_products()
        } else {
            products
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// What is wrong, for the user.
    pub fn validate(&self) -> Result<(), String> {
        if self.products.is_empty() {
            return Err("no product to follow".into());
        }
        if let Some(bad) = self
            .products
            .iter()
            .find(|p| p.is_empty() || p.contains(|c: char| c.is_whitespace() || c == '/'))
        {
            return Err(format!("product id {bad:?} is not valid"));
        }
        if !(self.ws_url.starts_with("ws://") || self.ws_url.starts_with("wss://")) {
            return Err(format!(
                "ws_url {:?} must start with ws:// or wss://",
                self.ws_url
            ));
        }
        if !(self.rest_url.starts_with("http://") || self.rest_url.starts_with("https://")) {
            return Err(format!(
                "rest_url {:?} must start with http:// or https://",
                self.rest_url
            ));
        }
        if self.rest_requests_per_second == 0 {
            return Err("rest_requests_per_second must be at least 1".into());
        }
        Ok(())
    }

    /// The gap grace.
    pub fn gap_grace(&self) -> Duration {
        Duration::from_millis(self.gap_grace_ms)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_parse_like_the_seed() {
        assert_eq!(
            CoinbaseConfig::parse_products(" BTC-USD, ,ETH-USD "),
            vec!["BTC-USD", "ETH-USD"]
        );
        assert_eq!(
            CoinbaseConfig::parse_products(""),
            vec!["BTC-USD", "ETH-USD"]
        );
    }

    #[test]
    fn bad_urls_and_products_are_refused() {
        let config = CoinbaseConfig {
            ws_url: "http://x".into(),
            ..CoinbaseConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("ws_url"));
        let config = CoinbaseConfig {
            products: vec!["BTC USD".into()],
            ..CoinbaseConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("not valid"));
    }
}
