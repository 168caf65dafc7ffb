//! Defines the Coinbase source session: connect, subscribe, read frames, keep each product's
//! contiguous cursor, backfill gaps through REST, emit trades in order.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use sluice::{
    Checkpoint, Envelope, Rejected, ResourceName, SessionEnd, Source, SourceContext, SourceError,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{
    connector::{CoinbaseConfig, RESOURCE},
    rest::{PAGE, RestClient},
    types::{Frame, TradeRecord},
};

/// What the source did, for status pages and the demo.
#[derive(Debug, Default)]
pub struct CoinbaseStats {
    /// Frames read.
    pub frames: AtomicU64,
    /// Trades emitted from the websocket.
    pub trades_ws: AtomicU64,
    /// Trades emitted from REST backfill.
    pub trades_rest: AtomicU64,
    /// Trades seen again (`last_match`, repeats, replays) and skipped.
    pub duplicates: AtomicU64,
    /// Gaps closed by REST backfill.
    pub gaps_backfilled: AtomicU64,
    /// Trade ids REST could not provide (reported, then skipped).
    pub unfilled: AtomicU64,
    /// Frames of a type this source does not know (ignored).
    pub unknown: AtomicU64,
    /// Frames that could not be decoded (dead-lettered).
    pub malformed: AtomicU64,
    /// Sessions opened.
    pub sessions: AtomicU64,
}

impl CoinbaseStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Reads Coinbase Exchange trades. See the [module docs](super).
#[derive(Debug)]
pub struct CoinbaseSource {
    config: CoinbaseConfig,
    rest: RestClient,
    resource: ResourceName,
    stats: Arc<CoinbaseStats>,
}

impl CoinbaseSource {
    /// A source for `config`.
    ///
    /// # Errors
    /// A fatal error when the configuration is invalid.
    pub fn new(config: CoinbaseConfig) -> Result<Self, SourceError> {
        config
            .validate()
            .map_err(|e| SourceError::fatal(format!("coinbase: {e}")))?;
        let rest = RestClient::new(&config.rest_url)?;
        Ok(Self {
            config,
            rest,
            resource: RESOURCE.into(),
            stats: Arc::default(),
        })
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<CoinbaseStats> {
        self.stats.clone()
    }
}

/// One product's place in the feed.
#[derive(Debug, Default)]
struct Product {
    partition: Arc<str>,
    /// The last trade id emitted: everything up to it is emitted, in order.
    last: Option<u64>,
    /// Trades read ahead of a gap, waiting for it to close.
    ahead: BTreeMap<u64, TradeRecord>,
    gap_since: Option<Instant>,
    /// A heartbeat's `last_trade_id` above `last`, waiting one heartbeat before a backfill.
    suspect: Option<u64>,
}

struct Session<'a> {
    source: &'a CoinbaseSource,
    ctx: &'a SourceContext<serde_json::Value>,
    products: HashMap<String, Product>,
}

impl Session<'_> {
    async fn emit(
        &self,
        partition: Arc<str>,
        trade: TradeRecord,
        from_rest: bool,
    ) -> Result<(), SourceError> {
        let counter = if from_rest {
            &self.source.stats.trades_rest
        } else {
            &self.source.stats.trades_ws
        };
        CoinbaseStats::add(counter, 1);
        let envelope = Envelope {
            resource: self.source.resource.clone(),
            payload: trade.record,
            checkpoint: Some(Checkpoint::new(partition, trade.trade_id)),
        };
        self.ctx.emit(envelope).await
    }

    /// A trade from the socket: emit it if it is next, keep it if it is ahead, skip a repeat.
    async fn on_trade(&mut self, product: &str, trade: TradeRecord) -> Result<(), SourceError> {
        let Some(state) = self.products.get_mut(product) else {
            CoinbaseStats::add(&self.source.stats.unknown, 1);
            return Ok(());
        };
        let id = trade.trade_id;
        if state.last.is_some_and(|last| id <= last) || state.ahead.contains_key(&id) {
            CoinbaseStats::add(&self.source.stats.duplicates, 1);
            return Ok(());
        }
        match state.last {
            Some(last) if id > last + 1 => {
                state.ahead.insert(id, trade);
                state.gap_since.get_or_insert_with(Instant::now);
                Ok(())
            }
            _ => {
                // The next trade, or the first of a pipeline that has no cursor yet.
                state.last = Some(id);
                let partition = state.partition.clone();
                self.emit(partition, trade, false).await?;
                self.drain_ahead(product).await
            }
        }
    }

    /// Emits trades kept ahead once they are next.
    async fn drain_ahead(&mut self, product: &str) -> Result<(), SourceError> {
        loop {
            let state = self.products.get_mut(product).expect("known product");
            let next = state.last.map_or(0, |l| l + 1);
            match state.ahead.first_key_value() {
                Some((&id, _)) if id == next => {
                    let (_, trade) = state.ahead.pop_first().expect("present");
                    state.last = Some(id);
                    let partition = state.partition.clone();
                    self.emit(partition, trade, false).await?;
                }
                _ => {
                    if state.ahead.is_empty() {
                        state.gap_since = None;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Fills `(last, upto)` from REST (preferring trades read ahead on the socket), then drains.
    async fn backfill(&mut self, product: &str, upto: u64) -> Result<(), SourceError> {
        let Some(mut last) = self.products[product].last else {
            return Ok(());
        };
        if last + 1 >= upto {
            return self.drain_ahead(product).await;
        }
        CoinbaseStats::add(&self.source.stats.gaps_backfilled, 1);
        tracing::info!(
            product,
            from = last + 1,
            to = upto - 1,
            "backfilling gap through REST"
        );
        while last + 1 < upto {
            let window_end = upto.min(last + PAGE + 1);
            let mut page = self.source.rest.window(product, last, window_end).await?;
            if (page.len() as u64) < window_end - last - 1 {
                // The newest trades may not be served yet: look once more before calling it a hole.
                tokio::time::sleep(Duration::from_millis(500)).await;
                page = self.source.rest.window(product, last, window_end).await?;
            }
            let mut from_rest: BTreeMap<u64, _> =
                page.into_iter().map(|t| (t.trade_id, t)).collect();
            let mut hole: Option<(u64, u64)> = None;
            for id in last + 1..window_end {
                let state = self.products.get_mut(product).expect("known product");
                let partition = state.partition.clone();
                if let Some(trade) = state.ahead.remove(&id) {
                    state.last = Some(id);
                    self.emit(partition, trade, false).await?;
                } else if let Some(rest) = from_rest.remove(&id) {
                    match rest.record(product) {
                        Ok(trade) => {
                            state.last = Some(id);
                            self.emit(partition, trade, true).await?;
                        }
                        Err(reason) => {
                            state.last = Some(id);
                            self.reject(
                                format!("{rest:?}"),
                                format!("REST trade {id} of {product}: {reason}"),
                                Some(Checkpoint::new(partition, id)),
                            )
                            .await?;
                        }
                    }
                } else {
                    state.last = Some(id);
                    hole = Some(hole.map_or((id, id), |(from, _)| (from, id)));
                }
            }
            if let Some((from, to)) = hole {
                let missing = to - from + 1;
                CoinbaseStats::add(&self.source.stats.unfilled, missing);
                metrics::counter!("sluice_coinbase_unfilled_trades_total", "product" => product.to_owned()).increment(missing);
                tracing::warn!(
                    product,
                    from,
                    to,
                    missing,
                    "trades missing from the feed and from REST (retention?): hole reported, cursor moves past it"
                );
            }
            last = window_end - 1;
        }
        self.drain_ahead(product).await
    }

    async fn reject(
        &self,
        raw: String,
        reason: String,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(), SourceError> {
        CoinbaseStats::add(&self.source.stats.malformed, 1);
        self.ctx
            .reject(Rejected {
                resource: self.source.resource.clone(),
                raw,
                reason,
                checkpoint,
            })
            .await
    }

    /// Backfills every gap older than the grace.
    async fn close_stale_gaps(&mut self) -> Result<(), SourceError> {
        let grace = self.source.config.gap_grace();
        let stale: Vec<(String, u64)> = self
            .products
            .iter()
            .filter(|(_, p)| p.gap_since.is_some_and(|since| since.elapsed() >= grace))
            .filter_map(|(name, p)| p.ahead.first_key_value().map(|(id, _)| (name.clone(), *id)))
            .collect();
        for (product, upto) in stale {
            self.backfill(&product, upto).await?;
        }
        Ok(())
    }

    /// A heartbeat: a `last_trade_id` above what was seen, twice in a row, is a gap.
    async fn on_heartbeat(&mut self, product: &str, last_trade_id: u64) -> Result<(), SourceError> {
        let Some(state) = self.products.get_mut(product) else {
            return Ok(());
        };
        let seen = state
            .ahead
            .last_key_value()
            .map(|(id, _)| *id)
            .max(state.last);
        let Some(seen) = seen else {
            // A new pipeline that has seen no trade yet starts after this one, durably: a
            // disconnect before its first trade must not move the starting point later.
            state.last = Some(last_trade_id);
            let checkpoint = Checkpoint::new(state.partition.clone(), last_trade_id);
            return self.ctx.advance(checkpoint).await;
        };
        if last_trade_id <= seen {
            state.suspect = None;
            return Ok(());
        }
        match state.suspect.replace(last_trade_id) {
            Some(previous) if previous > seen => {
                state.suspect = None;
                let upto = previous + 1;
                // Trades read ahead below `upto` are merged by the backfill.
                self.backfill(product, upto).await
            }
            _ => Ok(()),
        }
    }

    /// Handles one text frame.
    async fn on_text(&mut self, text: &str, subscribed: &mut bool) -> Result<(), SourceError> {
        CoinbaseStats::add(&self.source.stats.frames, 1);
        let frame: Frame<'_> = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(error) => {
                return self
                    .reject(text.to_owned(), format!("frame is not JSON: {error}"), None)
                    .await;
            }
        };
        match frame.kind.as_deref() {
            Some("match" | "last_match") => match frame.trade() {
                Ok((product, trade)) => self.on_trade(&product, trade).await,
                Err(reason) => self.reject(text.to_owned(), reason, None).await,
            },
            Some("heartbeat") => {
                self.ctx.alive();
                match (frame.product_id.as_deref(), frame.last_trade_id) {
                    (Some(product), Some(last)) => self.on_heartbeat(product, last).await,
                    _ => {
                        self.reject(
                            text.to_owned(),
                            "heartbeat without product_id or last_trade_id".into(),
                            None,
                        )
                        .await
                    }
                }
            }
            Some("subscriptions") => {
                *subscribed = true;
                Ok(())
            }
            Some("error") => {
                let message = frame.message.as_deref().unwrap_or("error");
                let reason = frame.reason.as_deref().unwrap_or("");
                let text = format!("coinbase: {message}: {reason}");
                let refused = reason.contains("not a valid product")
                    || reason.contains("delisted")
                    || reason.contains("at least one product");
                Err(if refused {
                    SourceError::fatal(text)
                } else {
                    SourceError::transient(text)
                })
            }
            Some(_) | None => {
                CoinbaseStats::add(&self.source.stats.unknown, 1);
                metrics::counter!("sluice_coinbase_unknown_frames_total").increment(1);
                Ok(())
            }
        }
    }
}

fn connect_error(url: &str, error: tungstenite::Error) -> SourceError {
    let class = match &error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            if status == 429 || status >= 500 {
                sluice::ErrorClass::Transient
            } else {
                sluice::ErrorClass::Fatal
            }
        }
        tungstenite::Error::Url(_) => sluice::ErrorClass::Fatal,
        _ => sluice::ErrorClass::Transient,
    };
    SourceError::new(class, format!("coinbase: cannot connect to {url}")).with_source(error)
}

impl Source for CoinbaseSource {
    type Payload = serde_json::Value;

    fn name(&self) -> &str {
        "coinbase"
    }

    fn idle_timeout(&self) -> Option<Duration> {
        Some(self.config.idle_timeout())
    }

    async fn run(
        &mut self,
        ctx: SourceContext<serde_json::Value>,
    ) -> Result<SessionEnd, SourceError> {
        CoinbaseStats::add(&self.stats.sessions, 1);
        let url = self.config.ws_url.clone();
        let (mut socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            // No Nagle on our side either: the subscribe goes out at once.
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
        )
        .await
        .map_err(|_| SourceError::transient(format!("coinbase: connecting to {url} timed out")))?
        .map_err(|e| connect_error(&url, e))?;
        let subscribe = json!({"type": "subscribe", "product_ids": self.config.products, "channels": ["matches", "heartbeat"]});
        socket
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .map_err(|e| SourceError::transient("coinbase: subscribe failed").with_source(e))?;
        let products = self
            .config
            .products
            .iter()
            .map(|p| {
                let last = ctx.resume_after(p).and_then(sluice::Position::as_int);
                (
                    p.clone(),
                    Product {
                        partition: p.as_str().into(),
                        last,
                        ..Product::default()
                    },
                )
            })
            .collect();
        tracing::info!(url = %url, products = ?self.config.products, "coinbase subscribed; waiting for the reply");
        let mut session = Session {
            source: self,
            ctx: &ctx,
            products,
        };
        let mut subscribed = false;
        let subscribe_deadline = Instant::now() + Duration::from_secs(5);
        let mut gaps = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => session.on_text(&text, &mut subscribed).await?,
                    Some(Ok(Message::Close(close))) => {
                        tracing::info!(?close, "coinbase closed the connection");
                        return Ok(SessionEnd::Closed);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(SourceError::transient("coinbase: connection lost").with_source(error)),
                    None => return Err(SourceError::transient("coinbase: connection ended")),
                },
                _ = gaps.tick() => {
                    if !subscribed && Instant::now() >= subscribe_deadline {
                        return Err(SourceError::transient("coinbase: no subscriptions reply within 5 s"));
                    }
                    session.close_stale_gaps().await?;
                }
            }
        }
    }
}
