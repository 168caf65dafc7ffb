//! Defines the REST backfill client: `GET /products/{id}/trades` with exclusive `before`/`after`
//! cursors, 429 and 5xx retried with backoff, 400/404 reported as configuration errors.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use sluice::{Backoff, BackoffPolicy, SourceError};

use super::feed::{RestTrade, parse_rest_page};

/// The largest page the endpoint serves.
pub(crate) const PAGE: u64 = 1000;

/// How many times one page is tried before the session gives up (and reconnects).
const ATTEMPTS: u32 = 10;

/// Paces requests under the endpoint's public rate limit: every request, retries included,
/// waits for a permit, so a feed with many gaps slows its backfill instead of earning 429s.
type Limiter = governor::DefaultDirectRateLimiter;

#[derive(Debug, Clone)]
pub(crate) struct RestClient {
    http: reqwest::Client,
    base: String,
    limiter: Arc<Limiter>,
}

impl RestClient {
    pub(crate) fn new(base: &str, per_second: u32) -> Result<Self, SourceError> {
        let http = crate::http::client(Duration::from_secs(10))?;
        let per_second = NonZeroU32::new(per_second)
            .ok_or_else(|| SourceError::fatal("coinbase: rest_requests_per_second is 0"))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            limiter: Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                per_second,
            ))),
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
        let mut query = vec![
            ("after", before_id.to_string()),
            ("limit", PAGE.to_string()),
        ];
        if let Some(after_id) = after_id {
            query.push(("before", after_id.to_string()));
        }
        let after_id = after_id.unwrap_or(0);
        let mut trades = self.page(product, &query, alive).await?;
        trades.retain(|t| t.trade_id > after_id && t.trade_id < before_id);
        Ok(trades)
    }

    /// The newest trade id REST serves for `product` (`None` when it serves none): every id
    /// at or below it that REST does not serve is absent, not merely late. One request with
    /// no cursor and `limit=1`, whatever the page cap.
    pub(crate) async fn newest(
        &self,
        product: &str,
        alive: &(dyn Fn() + Sync),
    ) -> Result<Option<u64>, SourceError> {
        let page = self
            .page(product, &[("limit", "1".to_owned())], alive)
            .await?;
        Ok(page.iter().map(|t| t.trade_id).max())
    }

    /// One page for `query`, ascending by id; throttling and server errors retried.
    async fn page(
        &self,
        product: &str,
        query: &[(&str, String)],
        alive: &(dyn Fn() + Sync),
    ) -> Result<Vec<RestTrade>, SourceError> {
        let url = format!("{}/products/{product}/trades", self.base);
        let mut backoff = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            stable_after: Duration::ZERO,
        });
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            beating(alive, self.limiter.until_ready()).await;
            metrics::counter!("sluice_coinbase_rest_requests_total", "product" => product.to_owned()).increment(1);
            tracing::debug!(product, ?query, "REST trades request");
            let sent = beating(alive, self.http.get(&url).query(query).send()).await;
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
