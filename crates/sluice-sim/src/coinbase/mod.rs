//! A simulated Coinbase Exchange: websocket feed on `/` and REST `GET /products/{id}/trades` on
//! the same loopback port.
//!
//! Trades are a pure function of `(seed, product, trade_id)`, so the simulator keeps no trade
//! log in memory: the log of a product is every id from its first to its last generated trade,
//! and any of them can be rendered again (for REST backfill and for verification). Trades are
//! generated at a set rate and fanned out to every subscribed connection; each connection applies
//! the fault knobs ([`Chaos`]) on its own.

mod feed;
mod rest;
mod trade;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::broadcast, time::Instant};
use tokio_util::sync::CancellationToken;
pub use trade::{Trade, rfc3339_micros};

/// Fault knobs. Probabilities are per `match` frame (per request for REST); durations are means
/// of per-connection exponential timers (`None`: never).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chaos {
    /// Drop a `match` frame (the heartbeat then reveals a higher `last_trade_id`).
    pub drop: f64,
    /// Send a `match` frame twice.
    pub duplicate: f64,
    /// Hold a `match` frame back and send it after the next one of its product.
    pub reorder: f64,
    /// Send an extra frame of an unknown `type`.
    pub unknown: f64,
    /// Send an extra frame that is not valid JSON or a `match` without its fields.
    pub malformed: f64,
    /// Go silent (socket open, nothing sent, heartbeats included).
    pub stall_every: Option<Duration>,
    /// Close abruptly (TCP close, no close frame).
    pub close_every: Option<Duration>,
    /// Send an `error` frame, then close.
    pub error_every: Option<Duration>,
    /// Answer a websocket upgrade with HTTP 429.
    pub throttle: f64,
    /// Answer a REST request with 429.
    pub rest_429: f64,
    /// Answer a REST request with 500.
    pub rest_500: f64,
    /// Serve at most this many trades per REST page, whatever `limit` asks (older docs and
    /// clients: 100; any server may cap lower under load). `None`: the documented 1,000.
    pub rest_page_cap: Option<u64>,
    /// REST serves a trade only this long after the socket announced it.
    pub rest_lag: Duration,
    /// A second REST replica this much further behind answers half the requests (a
    /// load-balanced endpoint): one answer may show trades the next does not.
    pub rest_replica_lag: Option<Duration>,
    /// Every REST answer is this slow.
    pub rest_delay: Duration,
    /// Which page a request with both cursors gets when the window holds more than a page.
    pub rest_window: RestWindow,
}

/// Which part of a `before`/`after` window a page holds when the window is larger than the
/// page. protocols.md §1.12 shows only windows that fit one page; a client must work with both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestWindow {
    /// The newest trades below `after` (walking backwards from `after`).
    #[default]
    NewestBelowAfter,
    /// The oldest trades above `before` (the page adjacent to `before`), still newest first.
    OldestAboveBefore,
}

impl Chaos {
    /// Every knob on, at rates that exercise each path in a short run.
    pub fn all() -> Self {
        Self {
            drop: 0.01,
            duplicate: 0.01,
            reorder: 0.01,
            unknown: 0.005,
            malformed: 0.002,
            stall_every: Some(Duration::from_secs(20)),
            close_every: Some(Duration::from_secs(8)),
            error_every: Some(Duration::from_secs(15)),
            throttle: 0.1,
            rest_429: 0.1,
            rest_500: 0.05,
            rest_page_cap: Some(100),
            rest_lag: Duration::from_millis(300),
            rest_replica_lag: Some(Duration::from_millis(700)),
            rest_delay: Duration::from_millis(20),
            rest_window: RestWindow::NewestBelowAfter,
        }
    }
}

/// How the simulator runs.
#[derive(Clone, Debug)]
pub struct CoinbaseSimConfig {
    /// Products that trade.
    pub products: Vec<String>,
    /// Products that exist but are delisted (subscribing is an error).
    pub delisted: Vec<String>,
    /// Trades per second over all products (0: none).
    pub rate: f64,
    /// The seed of every random choice.
    pub seed: u64,
    /// The port (0: any free port).
    pub port: u16,
    /// The heartbeat period (one per product).
    pub heartbeat: Duration,
    /// How long a client has to subscribe before it is disconnected.
    pub subscribe_timeout: Duration,
    /// REST serves only the newest `n` trades of a product (`None`: all).
    pub rest_retention: Option<u64>,
    /// REST's public rate limit per client, as documented (protocols.md §1.12): 10 requests a
    /// second, bursts of 15; beyond it, 429. `None`: unlimited.
    pub rest_rate_limit: Option<RateLimit>,
    /// The faults.
    pub chaos: Chaos,
}

impl Default for CoinbaseSimConfig {
    fn default() -> Self {
        Self {
            products: vec!["BTC-USD".into(), "ETH-USD".into()],
            delisted: vec!["LOOM-USDC".into()],
            rate: 100.0,
            seed: 1,
            port: 0,
            heartbeat: Duration::from_secs(1),
            subscribe_timeout: Duration::from_secs(5),
            rest_retention: None,
            rest_rate_limit: Some(RateLimit::COINBASE_PUBLIC),
            chaos: Chaos::default(),
        }
    }
}

/// A token bucket: `per_second` requests refill, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests a second, sustained.
    pub per_second: f64,
    /// Requests at once.
    pub burst: f64,
}

impl RateLimit {
    /// Coinbase Exchange's public endpoints: 10 a second, bursts of 15.
    pub const COINBASE_PUBLIC: Self = Self {
        per_second: 10.0,
        burst: 15.0,
    };
}

/// Counters of what the simulator did, for tests and the demo.
#[derive(Debug, Default)]
pub struct SimCounters {
    /// Websocket connections accepted.
    pub connections: AtomicU64,
    /// Upgrades answered with 429.
    pub throttled: AtomicU64,
    /// `match` frames sent.
    pub matches_sent: AtomicU64,
    /// `match` frames dropped by chaos.
    pub dropped: AtomicU64,
    /// `match` frames duplicated.
    pub duplicated: AtomicU64,
    /// `match` frames reordered.
    pub reordered: AtomicU64,
    /// Connections stalled, closed abruptly, or closed after an error frame.
    pub stalls: AtomicU64,
    /// Abrupt closes.
    pub closes: AtomicU64,
    /// Error frames.
    pub errors: AtomicU64,
    /// REST requests served (any status).
    pub rest_requests: AtomicU64,
    /// REST requests failed on purpose (429 or 500).
    pub rest_failed: AtomicU64,
    /// REST requests answered 429.
    pub rest_throttled: AtomicU64,
    /// REST requests answered 500.
    pub rest_errors: AtomicU64,
    /// REST requests answered 429 for going over `rest_rate_limit` (also in `rest_throttled`).
    pub rest_rate_limited: AtomicU64,
    /// REST pages cut short by `rest_page_cap`.
    pub rest_capped: AtomicU64,
}

/// A generated trade, announced to connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Announce {
    pub(crate) product: usize,
    pub(crate) trade_id: u64,
}

pub(crate) struct State {
    pub(crate) config: CoinbaseSimConfig,
    pub(crate) chaos: Mutex<Chaos>,
    /// Per product: the first trade id and the next id to generate.
    pub(crate) first: Vec<u64>,
    pub(crate) next: Vec<AtomicU64>,
    pub(crate) trades: broadcast::Sender<Announce>,
    pub(crate) counters: SimCounters,
    pub(crate) rate: Mutex<f64>,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) shutdown: CancellationToken,
    emit_lock: Mutex<()>,
    /// Per product: (when, newest id announced then), oldest first, for REST's lag.
    announced: Vec<Mutex<std::collections::VecDeque<(Instant, u64)>>>,
    /// REST answers 429 to everything until then.
    pub(crate) rest_throttled_until: Mutex<Option<Instant>>,
    /// The rate limit's bucket: (tokens, when last refilled).
    rest_bucket: Mutex<(f64, Instant)>,
}

impl State {
    pub(crate) fn product_index(&self, product: &str) -> Option<usize> {
        self.config.products.iter().position(|p| p == product)
    }

    /// The newest generated trade id of a product (`first - 1` before the first).
    pub(crate) fn last(&self, product: usize) -> u64 {
        self.next[product].load(Ordering::Acquire) - 1
    }

    /// The newest trade id REST serves: the newest announced at least `lag` ago.
    pub(crate) fn rest_last(&self, product: usize, lag: Duration) -> u64 {
        let last = self.last(product);
        if lag.is_zero() {
            return last;
        }
        let horizon = Instant::now().checked_sub(lag);
        let announced = self.announced[product]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        horizon
            .and_then(|h| announced.iter().rev().find(|(at, _)| *at <= h))
            .map_or(self.first[product] - 1, |(_, id)| *id)
            .min(last)
    }

    pub(crate) fn trade(&self, product: usize, trade_id: u64) -> Trade {
        Trade::generate(
            self.config.seed,
            product,
            &self.config.products[product],
            self.first[product],
            trade_id,
        )
    }

    pub(crate) fn chaos(&self) -> Chaos {
        self.chaos.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes a token of the REST rate limit; `false` when the client is over it.
    pub(crate) fn rest_allowed(&self) -> bool {
        let Some(limit) = self.config.rest_rate_limit else {
            return true;
        };
        let mut bucket = self.rest_bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, since) = *bucket;
        let tokens = (tokens.min(limit.burst)
            + now.duration_since(since).as_secs_f64() * limit.per_second)
            .min(limit.burst);
        let allowed = tokens >= 1.0;
        *bucket = (if allowed { tokens - 1.0 } else { tokens }, now);
        allowed
    }

    pub(crate) fn roll(&self, probability: f64) -> bool {
        probability > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < probability
    }

    pub(crate) fn exponential(&self, mean: Option<Duration>) -> Option<Duration> {
        let mean = mean?;
        let u = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .f64()
            .max(1e-9);
        Some(mean.mul_f64(-u.ln()))
    }
}

/// A running simulator. Dropping it stops it.
#[derive(Clone)]
pub struct CoinbaseSim {
    addr: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for CoinbaseSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoinbaseSim")
            .field("addr", &self.addr)
            .finish()
    }
}

impl CoinbaseSim {
    /// Binds `127.0.0.1:port` and starts serving and generating.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(config: CoinbaseSimConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        // Realistic, distinct id ranges per product (BTC ≈ 1.1e9, ETH ≈ 8.5e8 in late 2026).
        let first: Vec<u64> = (0..config.products.len() as u64)
            .map(|i| 1_099_995_623 / (i + 1))
            .collect();
        let next = first.iter().map(|f| AtomicU64::new(*f)).collect();
        let products = first.len();
        let (trades, _) = broadcast::channel(1 << 16);
        let state = Arc::new(State {
            chaos: Mutex::new(config.chaos.clone()),
            rate: Mutex::new(config.rate),
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed ^ 0x5eed)),
            config,
            first,
            next,
            trades,
            counters: SimCounters::default(),
            shutdown: CancellationToken::new(),
            emit_lock: Mutex::new(()),
            announced: (0..products).map(|_| Mutex::default()).collect(),
            rest_throttled_until: Mutex::new(None),
            rest_bucket: Mutex::new((f64::MAX, Instant::now())),
        });
        let app = axum::Router::new()
            .route("/", axum::routing::get(feed::upgrade))
            .route(
                "/products/{product}/trades",
                axum::routing::get(rest::trades),
            )
            .with_state(state.clone());
        let token = state.shutdown.clone();
        tokio::spawn(async move {
            // Frames go out as they are generated, like the real feed: no Nagle delay.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "simulator server failed");
            }
        });
        tokio::spawn(generate(state.clone()));
        tracing::info!(%addr, "coinbase simulator listening");
        Ok(Self { addr, state })
    }

    /// The websocket feed URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The REST base URL.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The products that trade.
    pub fn products(&self) -> &[String] {
        &self.state.config.products
    }

    /// The first and the newest generated trade id of `product` (empty range when none yet).
    pub fn trade_range(&self, product: &str) -> Option<std::ops::RangeInclusive<u64>> {
        let i = self.state.product_index(product)?;
        Some(self.state.first[i]..=self.state.last(i))
    }

    /// Renders trade `trade_id` of `product` (generated or not).
    pub fn trade(&self, product: &str, trade_id: u64) -> Option<Trade> {
        let i = self.state.product_index(product)?;
        Some(self.state.trade(i, trade_id))
    }

    /// Trades generated so far, over all products.
    pub fn generated(&self) -> u64 {
        (0..self.state.first.len())
            .map(|i| self.state.last(i) + 1 - self.state.first[i])
            .sum()
    }

    /// Generates `n` trades at once (round robin over products), beside the rate.
    pub fn burst(&self, n: u64) {
        emit_trades(&self.state, n);
    }

    /// Changes the trade rate (0 stops generating; heartbeats go on).
    /// Once it returns, no trade is generated at the old rate (the generator reads the rate
    /// under the lock it emits under): a test may read `generated()` right after.
    pub fn set_rate(&self, rate: f64) {
        let _serial = self
            .state
            .emit_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *self.state.rate.lock().unwrap_or_else(|e| e.into_inner()) = rate;
    }

    /// Changes the fault knobs for what happens next.
    pub fn set_chaos(&self, chaos: Chaos) {
        *self.state.chaos.lock().unwrap_or_else(|e| e.into_inner()) = chaos;
    }

    /// Answers every REST request with 429 for `duration` from now.
    pub fn throttle_rest_for(&self, duration: Duration) {
        *self
            .state
            .rest_throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + duration);
    }

    /// What the simulator did.
    pub fn counters(&self) -> &SimCounters {
        &self.state.counters
    }

    /// Stops serving (connections close abruptly).
    pub fn stop(&self) {
        self.state.shutdown.cancel();
    }
}

/// Announces `n` new trades, round robin over products.
fn emit_trades(state: &State, n: u64) {
    // One emitter at a time, so every connection sees each product's ids in order.
    let _serial = state.emit_lock.lock().unwrap_or_else(|e| e.into_inner());
    emit_trades_serially(state, n);
}

/// [`emit_trades`] under the emit lock the caller holds.
fn emit_trades_serially(state: &State, n: u64) {
    let products = state.first.len();
    if products == 0 {
        return;
    }
    let base = state.generated_total();
    for i in 0..n {
        let product = ((base + i) % products as u64) as usize;
        let trade_id = state.next[product].fetch_add(1, Ordering::AcqRel);
        let _ = state.trades.send(Announce { product, trade_id });
    }
    let now = Instant::now();
    for (product, announced) in state.announced.iter().enumerate() {
        let mut announced = announced.lock().unwrap_or_else(|e| e.into_inner());
        let last = state.last(product);
        if announced.back().is_some_and(|(_, id)| *id == last) {
            continue;
        }
        announced.push_back((now, last));
        // Keep a minute of history (REST lags by far less), and always the oldest entry within it.
        while announced.len() > 1 && announced[1].0 + Duration::from_secs(60) < now {
            announced.pop_front();
        }
    }
}

impl State {
    fn generated_total(&self) -> u64 {
        (0..self.first.len())
            .map(|i| self.next[i].load(Ordering::Acquire) - self.first[i])
            .sum()
    }
}

/// Generates trades at the configured rate until shutdown.
async fn generate(state: Arc<State>) {
    let tick = Duration::from_millis(5);
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let _serial = state.emit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let rate = *state.rate.lock().unwrap_or_else(|e| e.into_inner());
        owed += rate * tick.as_secs_f64();
        let due = owed.floor();
        owed -= due;
        emit_trades_serially(&state, due as u64);
    }
}
