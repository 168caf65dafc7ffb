//! Defines the REST backfill client: `GET /products/{id}/trades` with exclusive `before`/`after`
//! cursors, 429 and 5xx retried with backoff, 400/404 reported as configuration errors.

use std::time::Duration;

use sluice::{Backoff, BackoffPolicy, SourceError};

use super::feed::{RestTrade, parse_rest_page};

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
        let http = crate::http::client(Duration::from_secs(10))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// One page of trades of `product` with `after_id < id < before_id`, ascending. The server
    /// may serve fewer than asked (page caps, lag): a page proves nothing about ids it did not
    /// reach. (Coinbase names the cursors from the newest-first order: `before` = newer than.)
    ///
    /// `alive` is called at least every second while requests and retry waits are under way, so
    /// a slow or throttled REST is not mistaken for a silent feed by the idle watchdog.
    ///
    /// Without `after_id` only the `after` cursor is sent: the newest trades below `before_id`
    /// (walking backwards, the one paging every server agrees on).
    pub(crate) async fn window(
        &self,
        product: &str,
        after_id: Option<u64>,
        before_id: u64,
        alive: &(dyn Fn() + Sync),
    ) -> Result<Vec<RestTrade>, SourceError> {
        let url = format!("{}/products/{product}/trades", self.base);
        let mut query = vec![
            ("after", before_id.to_string()),
            ("limit", PAGE.to_string()),
        ];
        if let Some(after_id) = after_id {
            query.push(("before", after_id.to_string()));
        }
        let after_id = after_id.unwrap_or(0);
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
            let sent = beating(alive, self.http.get(&url).query(&query).send()).await;
            match sent {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let body = beating(alive, response.bytes()).await.map_err(|e| {
                            SourceError::transient(format!(
                                "REST trades of {product}: body not read"
                            ))
                            .with_source(e)
                        })?;
                        let mut trades = parse_rest_page(&body).map_err(|e| {
                            SourceError::transient(format!(
                                "REST trades of {product}: unreadable body: {e}"
                            ))
                        })?;
                        trades.retain(|t| t.trade_id > after_id && t.trade_id < before_id);
                        trades.sort_by_key(|t| t.trade_id);
                        return Ok(trades);
                    }
                    let headers = response.headers().clone();
                    let body = beating(alive, response.bytes()).await.unwrap_or_default();
                    let error = crate::http::status_error(
                        &format!("REST trades of {product}"),
                        status.as_u16(),
                        &body,
                    );
                    if error.class() != sluice::ErrorClass::Transient {
                        // 400 (bad request), 401/403, 404 (unknown product): retrying cannot help.
                        return Err(error);
                    }
                    tracing::warn!(product, %status, "REST backfill throttled or failed; retrying");
                    last_error = Some(error);
                    // The server's own wait, when it names one, beats our guess.
                    if let Some(wait) = crate::http::retry_after(&headers, Duration::from_secs(30))
                    {
                        beating(alive, tokio::time::sleep(wait)).await;
                        continue;
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
            beating(alive, tokio::time::sleep(backoff.next_delay())).await;
        }
        Err(last_error.unwrap_or_else(|| SourceError::transient("REST backfill failed")))
    }
}

/// Awaits `work`, calling `alive` every second meanwhile (and once at each end).
async fn beating<T>(alive: &(dyn Fn() + Sync), work: impl std::future::Future<Output = T>) -> T {
    alive();
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => {
                alive();
                return out;
            }
            _ = tick.tick() => alive(),
        }
    }
}
