//! Defines the REST backfill client: `GET /products/{id}/trades` with exclusive `before`/`after`
//! cursors, 429 and 5xx retried with backoff, 400/404 reported as configuration errors.

use std::time::Duration;

use sluice::{Backoff, BackoffPolicy, SourceError};

use super::types::RestTrade;

/// The largest page the endpoint serves.
pub(crate) const PAGE: u64 = 1000;

/// How many times one page is tried before the session gives up (and reconnects).
const ATTEMPTS: u32 = 10;

#[derive(Debug, Clone)]
pub(crate) struct RestClient {
    http: reqwest::Client,
    base: String,
}

impl RestClient {
    pub(crate) fn new(base: &str) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::fatal("cannot build the HTTP client").with_source(e))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// Trades of `product` with `after_id < id < before_id` (at most [`PAGE`]), ascending.
    /// (Coinbase names the cursors from the newest-first order: `before` = newer than.)
    pub(crate) async fn window(
        &self,
        product: &str,
        after_id: u64,
        before_id: u64,
    ) -> Result<Vec<RestTrade>, SourceError> {
        let url = format!("{}/products/{product}/trades", self.base);
        let query = [
            ("before", after_id.to_string()),
            ("after", before_id.to_string()),
            ("limit", PAGE.to_string()),
        ];
        let mut backoff = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            stable_after: Duration::ZERO,
        });
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            metrics::counter!("sluice_coinbase_rest_requests_total", "product" => product.to_owned()).increment(1);
            tracing::debug!(product, after_id, before_id, "REST trades request");
            match self.http.get(&url).query(&query).send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let mut trades: Vec<RestTrade> = response.json().await.map_err(|e| {
                            SourceError::transient(format!(
                                "REST trades of {product}: unreadable body"
                            ))
                            .with_source(e)
                        })?;
                        trades.retain(|t| t.trade_id > after_id && t.trade_id < before_id);
                        trades.sort_by_key(|t| t.trade_id);
                        return Ok(trades);
                    }
                    let body = response.text().await.unwrap_or_default();
                    let message = format!(
                        "REST trades of {product}: HTTP {status}: {}",
                        body.chars().take(200).collect::<String>()
                    );
                    if status.as_u16() == 429 || status.is_server_error() {
                        tracing::warn!(product, %status, "REST backfill throttled or failed; retrying");
                        last_error = Some(SourceError::transient(message));
                    } else {
                        // 400 (bad request), 401/403, 404 (unknown product): retrying cannot help.
                        return Err(SourceError::fatal(message));
                    }
                }
                Err(error) => {
                    tracing::warn!(product, %error, "REST backfill request failed; retrying");
                    last_error = Some(
                        SourceError::transient(format!("REST trades of {product}: request failed"))
                            .with_source(error),
                    );
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Err(last_error.unwrap_or_else(|| SourceError::transient("REST backfill failed")))
    }
}
