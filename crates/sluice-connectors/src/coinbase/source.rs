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
use tokio_tungstenite::tungstenite::Message;

use super::{
    config::{CoinbaseConfig, OnUnfillable},
    connector::{HOLES_RESOURCE, RESOURCE},
    feed::Frame,
    record::{CoinbaseRecord, Hole, Trade},
    rest::RestClient,
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
    /// Trade ids REST showed absent (held or skipped by policy).
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
        let rest = RestClient::new(&config.rest_url, config.rest_requests_per_second)?;
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
    /// Trades known beyond a gap (read on the socket or fetched from REST), waiting for it to
    /// close. At most [`MAX_AHEAD`]: beyond that, socket trades are left to REST.
    ahead: BTreeMap<u64, Trade>,
    /// The highest id known to exist (a heartbeat's `last_trade_id`), perhaps not in `ahead`.
    known_top: Option<u64>,
    gap_since: Option<Instant>,
    /// A heartbeat's `last_trade_id` above `last`, waiting one heartbeat before a backfill.
    suspect: Option<u64>,
    /// No backfill before then (REST lagging behind the socket, or a hole held).
    retry_at: Option<Instant>,
    /// Backfill attempts in a row that made no progress.
    attempts: u32,
    /// The newest id REST was seen to serve: below it, what REST does not serve is absent.
    rest_head: Option<u64>,
    /// The hole the cursor is held before (`on_unfillable = "hold"`).
    held: Option<(u64, u64)>,
}

impl Product {
    /// The lowest id known to exist above `last` that is not ready to emit: the gap below it
    /// (inclusive of it when it is not in `ahead`) is what a backfill fills.
    fn gap_top(&self) -> Option<u64> {
        let last = self.last?;
        let ahead = self.ahead.first_key_value().map(|(id, _)| *id);
        let top = ahead
            .into_iter()
            .chain(self.known_top)
            .filter(|t| *t > last)
            .min()?;
        (top > last + 1 || ahead != Some(top)).then_some(top)
    }

    /// The highest id known to exist (read ahead or named by a heartbeat).
    fn highest_known(&self) -> Option<u64> {
        let ahead = self.ahead.last_key_value().map(|(id, _)| *id);
        ahead.max(self.known_top)
    }

    /// The exclusive windows of ids in `(last, top]` not read ahead, neighbours merged while
    /// the merged window spans at most [`MERGE_SPAN`] ids: one request then reads several
    /// small gaps (a feed that drops one trade in twenty at 400 a second has twenty gaps a
    /// second, and Coinbase allows ten requests a second).
    fn missing_windows(&self, last: u64, top: u64) -> Vec<(u64, u64)> {
        let mut windows: Vec<(u64, u64)> = Vec::new();
        let mut push = |below: u64, above: u64| match windows.last_mut() {
            Some(prev) if above - prev.0 - 1 <= MERGE_SPAN => prev.1 = above,
            _ => windows.push((below, above)),
        };
        let mut below = last;
        for &id in self.ahead.range(last + 1..=top).map(|(id, _)| id) {
            if id > below + 1 {
                push(below, id);
            }
            below = id;
        }
        if below < top {
            push(below, top + 1);
        }
        windows
    }
}

/// Trades kept ahead of a gap per product, at most: a hole held for long must not grow memory
/// without bound. Trades beyond are fetched from REST once the gap closes.
const MAX_AHEAD: usize = 100_000;

/// What a product's lag counts: trade ids between the newest the feed named and the cursor.
const LAG_UNIT: &str = "trades";

/// Ids backfilled per pass, at most (the pass emits before it fetches the next).
const CHUNK: u64 = 1_000;

/// Gap windows closer than this are read as one: a page of 100 is what every version of the
/// endpoint serves (older docs cap `limit` at 100).
const MERGE_SPAN: u64 = 100;

/// What REST showed about the ids of a chunk.
#[derive(Debug, Default)]
struct Fetched {
    trades: BTreeMap<u64, super::feed::RestTrade>,
    /// Ranges of ids REST shows do not exist (served ids on both sides, or an empty page below
    /// a served id).
    absent: Vec<(u64, u64)>,
}

struct Session<'a> {
    source: &'a CoinbaseSource,
    ctx: &'a SourceContext<CoinbaseRecord>,
    products: HashMap<String, Product>,
}

impl Session<'_> {
    async fn emit(
        &self,
        partition: Arc<str>,
        trade: Trade,
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
            checkpoint: Some(Checkpoint::new(partition, trade.trade_id)),
            payload: CoinbaseRecord::Trade(trade),
        };
        self.ctx.emit(envelope).await
    }

    /// A trade from the socket: emit it if it is next, keep it if it is ahead, skip a repeat.
    async fn on_trade(&mut self, trade: Trade) -> Result<(), SourceError> {
        let product = trade.product_id.clone();
        let product = &*product;
        let Some(state) = self.products.get_mut(product) else {
            CoinbaseStats::add(&self.source.stats.unknown, 1);
            return Ok(());
        };
        let id = trade.trade_id;
        self.ctx.set_head(&state.partition, id, LAG_UNIT);
        if state.last.is_some_and(|last| id <= last) || state.ahead.contains_key(&id) {
            CoinbaseStats::add(&self.source.stats.duplicates, 1);
            return Ok(());
        }
        match state.last {
            Some(last) if id > last + 1 => {
                if state.ahead.len() < MAX_AHEAD {
                    state.ahead.insert(id, trade);
                } else {
                    // REST serves it later; remember that it exists.
                    state.known_top = state.known_top.max(Some(id));
                }
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
                    state.attempts = 0;
                    let partition = state.partition.clone();
                    let from_rest = trade.source == "rest";
                    self.emit(partition, trade, from_rest).await?;
                }
                _ => {
                    if state.gap_top().is_none() {
                        state.gap_since = None;
                        state.attempts = 0;
                        state.retry_at = None;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Fills the product's gaps from REST, chunk by chunk from the cursor up, emitting as it
    /// goes. Stops early (and schedules a retry) when REST does not serve the first gap's top
    /// yet, or at a hole it holds.
    async fn backfill(&mut self, product: &str) -> Result<(), SourceError> {
        let state = &self.products[product];
        let (Some(last), Some(top)) = (state.last, state.gap_top()) else {
            return self.drain_ahead(product).await;
        };
        CoinbaseStats::add(&self.source.stats.gaps_backfilled, 1);
        tracing::info!(
            product,
            from = last + 1,
            to = top,
            "backfilling gap through REST"
        );
        // REST lags the socket: ids below a top it does not serve yet are not missing, only
        // not served yet. Only below the newest id REST serves does an unserved id prove a
        // hole. That head is asked for at most once a pass, when the gaps reach above it.
        let mut asked = false;
        loop {
            let state = &self.products[product];
            let (Some(last), Some(top)) = (state.last, state.gap_top()) else {
                break;
            };
            let want = state.highest_known().unwrap_or(top).min(last + CHUNK);
            if !asked && state.rest_head.is_none_or(|head| head < want) {
                asked = true;
                let alive = || self.ctx.alive();
                let fresh = self.source.rest.newest(product, &alive).await?;
                let state = self.products.get_mut(product).expect("known product");
                let before = state.rest_head.replace(fresh.unwrap_or(0));
                if before.is_some_and(|b| fresh.is_none_or(|f| f < b)) {
                    // REST serves less than it did (a lagging replica, a degraded answer):
                    // nothing it says now proves a hole.
                    tracing::warn!(
                        product,
                        ?before,
                        ?fresh,
                        "REST's newest trade went backwards; retrying"
                    );
                    self.retry_later(product);
                    return Ok(());
                }
            }
            let state = &self.products[product];
            let head = state.rest_head.unwrap_or(0);
            // Only the chunk's own top must be served: a gap wider than a chunk is filled a
            // chunk at a time under a head that has not reached the gap's top yet. A pass that
            // stops here has `head < want`, so the next one asks REST again.
            if head < top.min(want) {
                tracing::debug!(
                    product,
                    top,
                    head,
                    "REST does not serve the gap's top yet; retrying"
                );
                self.retry_later(product);
                return Ok(());
            }
            let chunk_top = want.min(head);
            let windows = state.missing_windows(last, chunk_top);
            let fetched = self.fetch(product, windows).await?;
            if !self.merge(product, chunk_top, fetched).await? {
                return Ok(());
            }
        }
        self.drain_ahead(product).await
    }

    /// Pages through the exclusive `windows` (below REST's head) until every id in them is
    /// served or shown absent. Pages may be short and may come from either end of a window:
    /// each served page splits what is left into the parts it did not reach, and the ids
    /// between two served ids do not exist.
    async fn fetch(&self, product: &str, windows: Vec<(u64, u64)>) -> Result<Fetched, SourceError> {
        let alive = || self.ctx.alive();
        let mut fetched = Fetched::default();
        // Exclusive windows still to read.
        let mut open = windows;
        while let Some((below, above)) = open.pop() {
            if above <= below + 1 {
                continue;
            }
            let mut page = self
                .source
                .rest
                .window(product, Some(below), above, &alive)
                .await?;
            if page.is_empty() {
                // A server may answer a window with its far end (capped, clamped by retention)
                // and find nothing there: ask once more, walking backwards from `above` only.
                page = self
                    .source
                    .rest
                    .window(product, None, above, &alive)
                    .await?;
                page.retain(|t| t.trade_id > below);
            }
            let (Some(lowest), Some(highest)) = (page.first(), page.last()) else {
                // Nothing between `below` and `above`, and `above` (or the gap's top above it)
                // is served: these ids do not exist (or REST no longer keeps them).
                fetched.absent.push((below + 1, above - 1));
                continue;
            };
            let (lowest, highest) = (lowest.trade_id, highest.trade_id);
            open.push((below, lowest));
            open.push((highest, above));
            let mut previous = lowest;
            for trade in page {
                if trade.trade_id > previous + 1 {
                    fetched.absent.push((previous + 1, trade.trade_id - 1));
                }
                previous = trade.trade_id;
                fetched.trades.insert(trade.trade_id, trade);
            }
        }
        Ok(fetched)
    }

    /// Emits `(last, chunk_top]` from what was read ahead and what REST served, applying the
    /// hole policy at ids REST showed absent. `false` when the cursor is held at a hole.
    async fn merge(
        &mut self,
        product: &str,
        chunk_top: u64,
        fetched: Fetched,
    ) -> Result<bool, SourceError> {
        // Served trades join those read ahead: what stops at a hole is not fetched again.
        let mut undecodable = BTreeMap::new();
        let state = self.products.get_mut(product).expect("known product");
        for (id, rest) in fetched.trades {
            if state.ahead.contains_key(&id) {
                continue;
            }
            match rest.record(&state.partition) {
                Ok(trade) => {
                    state.ahead.insert(id, trade);
                }
                Err(reason) => {
                    undecodable.insert(id, (format!("{rest:?}"), reason));
                }
            }
        }
        loop {
            self.drain_ahead(product).await?;
            let state = self.products.get_mut(product).expect("known product");
            let Some(last) = state.last else {
                return Ok(true);
            };
            if last >= chunk_top {
                return Ok(true);
            }
            let from = last + 1;
            if let Some((raw, reason)) = undecodable.remove(&from) {
                // Served but not a trade we can store: dead-lettered in its place.
                state.last = Some(from);
                let partition = state.partition.clone();
                self.reject(
                    raw,
                    format!("REST trade {from} of {product}: {reason}"),
                    Some(Checkpoint::new(partition, from)),
                )
                .await?;
                continue;
            }
            if !fetched
                .absent
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&from))
            {
                // Neither served nor shown absent: a server that contradicts itself. Try the
                // gap again later rather than guess.
                self.retry_later(product);
                return Ok(false);
            }
            let next_known = state
                .ahead
                .first_key_value()
                .map_or(chunk_top, |(id, _)| *id - 1)
                .min(chunk_top);
            let to = fetched
                .absent
                .iter()
                .find(|(a, b)| (*a..=*b).contains(&from))
                .map_or(from, |(_, b)| *b)
                .min(next_known);
            if !self.hole(product, from, to, to < chunk_top).await? {
                return Ok(false);
            }
        }
    }

    /// Applies the hole policy to `[from, to]`. `true` when the cursor moved past it.
    /// `bounded`: trade `to + 1` exists (served, or read from the socket), rather than the hole
    /// reaching the top of the chunk.
    async fn hole(
        &mut self,
        product: &str,
        from: u64,
        to: u64,
        bounded: bool,
    ) -> Result<bool, SourceError> {
        let missing = to - from + 1;
        let state = self.products.get_mut(product).expect("known product");
        match self.source.config.on_unfillable {
            OnUnfillable::Hold => {
                if state.held != Some((from, to)) {
                    state.held = Some((from, to));
                    CoinbaseStats::add(&self.source.stats.unfilled, missing);
                    metrics::counter!("sluice_coinbase_held_holes_total").increment(1);
                    tracing::warn!(
                        product,
                        from,
                        to,
                        missing,
                        "trades missing from the feed and from REST: cursor held before the hole, retrying (on_unfillable = \"skip\" moves past it and records it)"
                    );
                }
                self.retry_later(product);
                self.report_held();
                Ok(false)
            }
            OnUnfillable::Skip => {
                // Before moving past for good, one answer must show the hole: the trade right
                // above it and nothing in it. The pages that showed it empty may have come from
                // a replica that lags (a load-balanced REST). Walking back from above the hole
                // (the paging every server agrees on), a page that starts at `to + 1` holds
                // `to` next if that replica has it.
                let alive = || self.ctx.alive();
                let page = self
                    .source
                    .rest
                    .window(product, None, to + 2, &alive)
                    .await?;
                let inside = page.iter().any(|t| t.trade_id >= from && t.trade_id <= to);
                let above = page.iter().any(|t| t.trade_id == to + 1);
                if inside || (bounded && !above) {
                    tracing::warn!(
                        product,
                        from,
                        to,
                        inside,
                        "REST answers disagree about a hole; retrying before skipping it"
                    );
                    self.retry_later(product);
                    return Ok(false);
                }
                let state = self.products.get_mut(product).expect("known product");
                state.last = Some(to);
                state.held = None;
                let partition = state.partition.clone();
                CoinbaseStats::add(&self.source.stats.unfilled, missing);
                metrics::counter!("sluice_coinbase_skipped_trades_total").increment(missing);
                tracing::warn!(
                    product,
                    from,
                    to,
                    missing,
                    "trades missing from the feed and from REST: skipped, recorded in the holes table"
                );
                let seen_at =
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let envelope = Envelope {
                    resource: HOLES_RESOURCE.into(),
                    payload: CoinbaseRecord::Hole(Hole {
                        product_id: partition.clone(),
                        from_id: from,
                        to_id: to,
                        seen_at,
                    }),
                    checkpoint: Some(Checkpoint::new(partition, to)),
                };
                self.ctx.emit(envelope).await?;
                self.report_held();
                Ok(true)
            }
        }
    }

    /// Backs the product's next backfill off (250 ms doubling to 30 s).
    fn retry_later(&mut self, product: &str) {
        let state = self.products.get_mut(product).expect("known product");
        let delay = Duration::from_millis(250)
            .saturating_mul(1 << state.attempts.min(7))
            .min(Duration::from_secs(30));
        state.attempts += 1;
        state.retry_at = Some(Instant::now() + delay);
    }

    /// Tells the pipeline how many products are held at a hole.
    fn report_held(&mut self) {
        for state in self.products.values_mut() {
            if state
                .held
                .is_some_and(|(from, _)| state.last.is_some_and(|l| l >= from))
            {
                state.held = None;
            }
        }
        let held = self.products.values().filter(|p| p.held.is_some()).count();
        self.ctx.set_held(held as u64);
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

    /// Backfills every gap older than the grace whose retry time has come.
    async fn close_stale_gaps(&mut self) -> Result<(), SourceError> {
        let grace = self.source.config.gap_grace();
        let now = Instant::now();
        let stale: Vec<String> = self
            .products
            .iter()
            .filter(|(_, p)| p.gap_since.is_some_and(|since| since + grace <= now))
            .filter(|(_, p)| p.retry_at.is_none_or(|at| at <= now))
            .filter(|(_, p)| p.gap_top().is_some())
            .map(|(name, _)| name.clone())
            .collect();
        for product in stale {
            self.backfill(&product).await?;
            self.report_held();
        }
        Ok(())
    }

    /// A heartbeat: a `last_trade_id` above what was seen, twice in a row, is a gap.
    async fn on_heartbeat(&mut self, product: &str, last_trade_id: u64) -> Result<(), SourceError> {
        let Some(state) = self.products.get_mut(product) else {
            return Ok(());
        };
        self.ctx.set_head(&state.partition, last_trade_id, LAG_UNIT);
        let seen = state
            .ahead
            .last_key_value()
            .map(|(id, _)| *id)
            .max(state.last)
            .max(state.known_top);
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
                // The trades up to `previous` exist; the gap reaches it.
                state.known_top = Some(previous).max(state.known_top);
                state.gap_since = Some(Instant::now() - self.source.config.gap_grace());
                if state.retry_at.is_none_or(|at| at <= Instant::now()) {
                    self.backfill(product).await?;
                    self.report_held();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The shared name of `product` (its partition), or a new one for a product not followed.
    fn partition_of(&self, product: &str) -> Arc<str> {
        self.products
            .get(product)
            .map_or_else(|| product.into(), |p| p.partition.clone())
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
            Some("match" | "last_match") => match frame.trade(|p| self.partition_of(p)) {
                Ok(trade) => self.on_trade(trade).await,
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

impl Source for CoinbaseSource {
    type Payload = CoinbaseRecord;

    fn name(&self) -> &str {
        "coinbase"
    }

    fn idle_timeout(&self) -> Option<Duration> {
        Some(self.config.idle_timeout())
    }

    async fn run(&mut self, ctx: SourceContext<CoinbaseRecord>) -> Result<SessionEnd, SourceError> {
        CoinbaseStats::add(&self.stats.sessions, 1);
        let url = self.config.ws_url.clone();
        let mut socket = crate::websocket::connect(
            url.as_str(),
            &format!("coinbase: {url}"),
            Duration::from_secs(10),
        )
        .await?;
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
