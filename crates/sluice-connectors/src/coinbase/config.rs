//! The Coinbase connector's configuration: serde with defaults, and `validate()`.

use std::time::Duration;

use serde::Deserialize;

/// Configuration of a [`super::CoinbaseSource`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoinbaseConfig {
    /// The websocket feed.
    #[serde(default = "default_ws_url")]
    pub ws_url: String,
    /// The REST base URL for backfill.
    #[serde(default = "default_rest_url")]
    pub rest_url: String,
    /// Products to follow.
    #[serde(default = "default_products")]
    pub products: Vec<String>,
    /// How long a gap may stay open before it is backfilled, in milliseconds.
    #[serde(default = "default_gap_grace_ms")]
    pub gap_grace_ms: u64,
    /// Silence (no frame, no heartbeat) before reconnecting, in milliseconds.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// What to do at a hole: trade ids REST shows do not exist (or no longer serves).
    #[serde(default)]
    pub on_unfillable: OnUnfillable,
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

fn default_ws_url() -> String {
    "wss://ws-feed.exchange.coinbase.com".into()
}

fn default_rest_url() -> String {
    "https://api.exchange.coinbase.com".into()
}

fn default_products() -> Vec<String> {
    vec!["BTC-USD".into(), "ETH-USD".into()]
}

fn default_gap_grace_ms() -> u64 {
    250
}

fn default_idle_timeout_ms() -> u64 {
    5_000
}

impl Default for CoinbaseConfig {
    fn default() -> Self {
        Self {
            ws_url: default_ws_url(),
            rest_url: default_rest_url(),
            products: default_products(),
            gap_grace_ms: default_gap_grace_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            on_unfillable: OnUnfillable::default(),
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
