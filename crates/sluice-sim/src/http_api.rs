//! A paginated REST API with the awkward parts real ones have, for the `http_poll` source:
//!
//! - `GET /items?since=&limit=&starting_after=` — a Stripe-style list: `{"data": [...],
//!   "has_more": bool}`, keyset pages after an opaque token (`starting_after` = the `cursor` of
//!   the last item), oldest `updated_at` first;
//! - `GET /issues?since=&per_page=&page=&direction=` — a GitHub-style list: a JSON array, page
//!   numbers, a `Link: <…>; rel="next"` header, oldest first or (`direction=desc`) newest first;
//!
//! - `POST /search` — a Notion-style search: a JSON body (`application/json`, else 415) with
//!   `filter.updated_at.on_or_after` and `filter.updated_at.before` (RFC 3339, the latter
//!   exclusive), `page_size` (a JSON *number*, else 400, as Notion answers) and `start_cursor`;
//!   answers `{"object": "list", "results": [...], "next_cursor", "has_more"}`;
//! - `POST /oauth/token` — OAuth 2.0 client credentials, when configured: every list then
//!   wants `Authorization: Bearer`, and tokens expire;
//!
//! the lists filtered by `updated_at >= since` (RFC 3339; the API compares at whole seconds, as
//! GitHub does, so a client must read its boundary again). Items are created and updated in
//! groups that share one `updated_at` (equal cursor values span pages). Faults: 429 with
//! `Retry-After`, 500s, slow pages, and changes *while a client pages* (an insert, and an update
//! of an item already served, which moves it to the end), and "soft" errors: a 200 whose body is
//! an error object (`{"object": "error", …}`), as some APIs answer when busy. Amounts are exact
//! decimals near 10^12. The initial items' `updated_at` start ten minutes before the simulator does; later
//! changes happen at the real time.
//!
//! The simulator keeps every item's versions, so a test can check that the destination holds
//! the newest version of every item and no item twice.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json,
    extract::{Query, State as Shared},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Faults of the API.
#[derive(Clone, Debug, Default)]
pub struct ApiFaults {
    /// Answer a request with 429 and `Retry-After: 1`.
    pub rate_429: f64,
    /// Answer a request with 500.
    pub rate_500: f64,
    /// Every page is this slow.
    pub delay: Duration,
    /// After a page is served: insert a group of items (new `updated_at`).
    pub insert_while_paging: f64,
    /// After a page is served: update an item it held (it moves to the end).
    pub update_while_paging: f64,
    /// Answer a request with 200 and an error object instead of a page.
    pub soft_error: f64,
}

/// OAuth 2.0 client credentials the API demands (`POST /oauth/token`, then `Authorization:
/// Bearer`), with tokens that expire.
#[derive(Clone, Debug)]
pub struct OAuthSim {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// How long a token lives (`expires_in`, whole seconds, at least 1).
    pub lifetime: Duration,
}

/// Configuration of an [`HttpApiSim`].
#[derive(Clone, Debug)]
pub struct HttpApiConfig {
    /// The port (0: any free port).
    pub port: u16,
    /// The largest page the API serves, whatever `limit` asks.
    pub page_cap: usize,
    /// Items created at start.
    pub initial: u64,
    /// Items per group sharing one `updated_at`.
    pub group: u64,
    /// The seed of every random choice.
    pub seed: u64,
    /// The faults.
    pub faults: ApiFaults,
    /// Demand OAuth 2.0 client-credentials tokens.
    pub oauth: Option<OAuthSim>,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self {
            port: 0,
            page_cap: 100,
            initial: 0,
            group: 5,
            seed: 7,
            faults: ApiFaults::default(),
            oauth: None,
        }
    }
}

/// Counters of what the API did.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Requests (any status).
    pub requests: AtomicU64,
    /// 429s served.
    pub throttled: AtomicU64,
    /// 500s served.
    pub errors: AtomicU64,
    /// Items inserted while a client paged.
    pub inserted_while_paging: AtomicU64,
    /// Items updated while a client paged.
    pub updated_while_paging: AtomicU64,
    /// 200 answers with an error object.
    pub soft_errors: AtomicU64,
    /// `POST /search` requests with a `before` bound (windows).
    pub windowed: AtomicU64,
    /// Tokens issued.
    pub tokens_issued: AtomicU64,
    /// Requests refused with 401 (no token, an unknown or an expired one).
    pub unauthorized: AtomicU64,
}

#[derive(Clone, Debug)]
struct Item {
    id: u64,
    /// Microseconds since the epoch, whole seconds (a group shares it).
    updated_us: i64,
    version: u64,
}

impl Item {
    /// The opaque keyset token of an item.
    fn token(&self) -> String {
        format!("{}_{}", self.updated_us, self.id)
    }

    fn json(&self) -> Value {
        let time = chrono::DateTime::from_timestamp_micros(self.updated_us)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        // An exact amount near 10^12 with 8 decimals and trailing zeros.
        let amount: Value = serde_json::from_str(&format!(
            "{}.{:08}",
            999_999_999_000 + self.id,
            self.version * 10
        ))
        .unwrap_or(Value::Null);
        json!({
            "id": self.id,
            "updated_at": time,
            "version": self.version,
            "amount": amount,
            "cursor": self.token(),
        })
    }
}

struct State {
    config: HttpApiConfig,
    faults: Mutex<ApiFaults>,
    items: Mutex<HashMap<u64, Item>>,
    /// The clock of `updated_at`, whole seconds, moving one second per group.
    clock: Mutex<i64>,
    next_id: AtomicU64,
    /// Set once the initial items exist: later changes happen at the real time.
    live: std::sync::atomic::AtomicBool,
    rng: Mutex<fastrand::Rng>,
    counters: ApiCounters,
    /// Tokens issued and when they expire.
    tokens: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl State {
    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < p
    }

    /// The `updated_at` of the next group: a second after the last one, and once the API is up
    /// never before the real time (so items change "now", as on a real API, and a client's
    /// windows up to now must see them).
    fn tick(&self) -> i64 {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        *clock += 1_000_000;
        if self.live.load(Ordering::Relaxed) {
            *clock = (*clock).max(chrono::Utc::now().timestamp() * 1_000_000);
        }
        *clock
    }

    fn insert_group(&self, n: u64) {
        let at = self.tick();
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..n {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            items.insert(
                id,
                Item {
                    id,
                    updated_us: at,
                    version: 1,
                },
            );
        }
    }

    fn update(&self, ids: &[u64]) {
        let at = self.tick();
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(item) = items.get_mut(id) {
                item.updated_us = at;
                item.version += 1;
            }
        }
    }

    /// Items at or after `since` (whole seconds), in (updated_at, id) order.
    fn listing(&self, since: Option<i64>) -> Vec<Item> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Item> = items
            .values()
            .filter(|i| since.is_none_or(|s| i.updated_us >= s))
            .cloned()
            .collect();
        list.sort_by_key(|i| (i.updated_us, i.id));
        list
    }

    /// Before a page: the token, the faults, then the `since` filter; `Err(response)` when
    /// the request fails.
    async fn before_page(
        &self,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
    ) -> Result<Option<i64>, Box<Response>> {
        if self.config.oauth.is_some() {
            let token = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let valid = token.is_some_and(|t| {
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(t)
                    .is_some_and(|expires| tokio::time::Instant::now() < *expires)
            });
            if !valid {
                self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                return Err(Box::new(
                    (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"message": "token missing, unknown or expired"})),
                    )
                        .into_response(),
                ));
            }
        }
        if let Some(failed) = self.fault().await {
            return Err(Box::new(failed));
        }
        since(query)
    }

    /// A fault for this request: `Some(response)` when it fails.
    async fn fault(&self) -> Option<Response> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        if self.roll(faults.rate_429) {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", HeaderValue::from_static("1"));
            return Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    headers,
                    Json(json!({"message": "rate limited"})),
                )
                    .into_response(),
            );
        }
        if self.roll(faults.soft_error) {
            self.counters.soft_errors.fetch_add(1, Ordering::Relaxed);
            return Some(
                Json(json!({
                    "object": "error", "status": 503, "code": "service_unavailable",
                    "message": "busy; try again"
                }))
                .into_response(),
            );
        }
        if self.roll(faults.rate_500) {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return Some(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"message": "internal error"})),
                )
                    .into_response(),
            );
        }
        None
    }

    /// Changes while a client pages: after serving `page`.
    fn after_page(&self, page: &[Item]) {
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.roll(faults.insert_while_paging) {
            self.insert_group(self.config.group);
            self.counters
                .inserted_while_paging
                .fetch_add(self.config.group, Ordering::Relaxed);
        }
        if !page.is_empty() && self.roll(faults.update_while_paging) {
            let pick = self
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .usize(..page.len());
            self.update(&[page[pick].id]);
            self.counters
                .updated_while_paging
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn since(query: &HashMap<String, String>) -> Result<Option<i64>, Box<Response>> {
    match query.get("since") {
        None => Ok(None),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            // Whole seconds, as GitHub compares.
            .map(|t| Some(t.timestamp() * 1_000_000))
            .map_err(|_| {
                Box::new(
                    (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Json(json!({"message": "since is not an ISO 8601 time"})),
                    )
                        .into_response(),
                )
            }),
    }
}

fn number(query: &HashMap<String, String>, key: &str, default: usize) -> usize {
    query
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn items(
    Query(query): Query<HashMap<String, String>>,
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
) -> Response {
    let since = match state.before_page(&headers, &query).await {
        Ok(since) => since,
        Err(response) => return *response,
    };
    let limit = number(&query, "limit", 10).clamp(1, state.config.page_cap);
    let list = state.listing(since);
    let start = match query.get("starting_after") {
        Some(token) => list.partition_point(|i| i.token().as_str() <= token.as_str()),
        None => 0,
    };
    let page: Vec<Item> = list.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < list.len();
    let body = json!({
        "object": "list",
        "data": page.iter().map(Item::json).collect::<Vec<_>>(),
        "has_more": has_more,
    });
    state.after_page(&page);
    Json(body).into_response()
}

async fn issues(
    Query(query): Query<HashMap<String, String>>,
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
) -> Response {
    let since = match state.before_page(&headers, &query).await {
        Ok(since) => since,
        Err(response) => return *response,
    };
    let per_page = number(&query, "per_page", 30).clamp(1, state.config.page_cap);
    let page_number = number(&query, "page", 1).max(1);
    let mut list = state.listing(since);
    if query.get("direction").is_some_and(|d| d == "desc") {
        list.reverse();
    }
    let page: Vec<Item> = list
        .iter()
        .skip((page_number - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    let mut headers = HeaderMap::new();
    if page_number * per_page < list.len() {
        let mut next: BTreeMap<&str, String> =
            query.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        next.insert("page", (page_number + 1).to_string());
        let text = next
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        if let Ok(link) = HeaderValue::try_from(format!("</issues?{text}>; rel=\"next\"")) {
            headers.insert("link", link);
        }
    }
    state.after_page(&page);
    (
        headers,
        Json(Value::Array(page.iter().map(Item::json).collect())),
    )
        .into_response()
}

fn bad_request(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"object": "error", "status": status.as_u16(), "message": message})),
    )
        .into_response()
}

/// A time at `path` of a search body: `Ok(None)` when absent, `Err(())` when not a time.
fn body_time(body: &Value, path: &[&str]) -> Result<Option<i64>, ()> {
    let mut value = body;
    for part in path {
        match value.get(part) {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| Some(t.timestamp() * 1_000_000))
        .ok_or(())
}

async fn search(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = state.before_page(&headers, &HashMap::new()).await {
        return *response;
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return bad_request(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be JSON");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let (Ok(since), Ok(before)) = (
        body_time(&request, &["filter", "updated_at", "on_or_after"]),
        body_time(&request, &["filter", "updated_at", "before"]),
    ) else {
        return bad_request(StatusCode::BAD_REQUEST, "filter times are ISO 8601 strings");
    };
    let limit = match request.get("page_size") {
        None => 100,
        Some(Value::Number(n)) => n.as_u64().unwrap_or(100) as usize,
        Some(_) => return bad_request(StatusCode::BAD_REQUEST, "page_size should be a number"),
    }
    .clamp(1, state.config.page_cap);
    if before.is_some() {
        state.counters.windowed.fetch_add(1, Ordering::Relaxed);
    }
    let list: Vec<Item> = state
        .listing(since)
        .into_iter()
        .filter(|i| before.is_none_or(|b| i.updated_us < b))
        .collect();
    let start = match request.get("start_cursor").and_then(Value::as_str) {
        Some(token) => list.partition_point(|i| i.token().as_str() <= token),
        None => 0,
    };
    let page: Vec<Item> = list.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < list.len();
    let body = json!({
        "object": "list",
        "results": page.iter().map(Item::json).collect::<Vec<_>>(),
        "next_cursor": if has_more { page.last().map(Item::token) } else { None },
        "has_more": has_more,
    });
    state.after_page(&page);
    Json(body).into_response()
}

/// `POST /oauth/token` (client credentials, HTTP basic): a token that expires.
async fn token(Shared(state): Shared<Arc<State>>, headers: HeaderMap, body: String) -> Response {
    use base64::Engine as _;
    let Some(oauth) = &state.config.oauth else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response();
    };
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", oauth.client_id, oauth.client_secret));
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Basic {expected}"));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if !body
        .split('&')
        .any(|p| p == "grant_type=client_credentials")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let n = state.counters.tokens_issued.fetch_add(1, Ordering::Relaxed);
    let value = format!(
        "tok-{n}-{}",
        state.rng.lock().unwrap_or_else(|e| e.into_inner()).u64(..)
    );
    let lifetime = oauth.lifetime.max(Duration::from_secs(1));
    state
        .tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(value.clone(), tokio::time::Instant::now() + lifetime);
    Json(json!({"access_token": value, "token_type": "bearer", "expires_in": lifetime.as_secs()}))
        .into_response()
}

/// The simulated API, serving until dropped.
pub struct HttpApiSim {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for HttpApiSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApiSim")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for HttpApiSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl HttpApiSim {
    /// Binds `127.0.0.1:port` and serves.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(config: HttpApiConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            faults: Mutex::new(config.faults.clone()),
            items: Mutex::new(HashMap::new()),
            // Ten minutes ago, whole seconds: windows up to now are few.
            clock: Mutex::new((chrono::Utc::now().timestamp() - 600) * 1_000_000),
            next_id: AtomicU64::new(1),
            live: std::sync::atomic::AtomicBool::new(false),
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            counters: ApiCounters::default(),
            tokens: Mutex::new(HashMap::new()),
            config,
        });
        let groups = state.config.initial.div_ceil(state.config.group.max(1));
        for _ in 0..groups {
            state.insert_group(state.config.group.max(1));
        }
        state.live.store(true, Ordering::Relaxed);
        let app = axum::Router::new()
            .route("/items", axum::routing::get(items))
            .route("/issues", axum::routing::get(issues))
            .route("/search", axum::routing::post(search))
            .route("/oauth/token", axum::routing::post(token))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Self {
            addr,
            state,
            shutdown,
        })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Inserts `n` items (in groups sharing an `updated_at`).
    pub fn insert(&self, n: u64) {
        let group = self.state.config.group.max(1);
        let mut left = n;
        while left > 0 {
            let now = left.min(group);
            self.state.insert_group(now);
            left -= now;
        }
    }

    /// Updates the items `ids` (a new version, a new `updated_at`).
    pub fn update(&self, ids: &[u64]) {
        self.state.update(ids);
    }

    /// Revokes every token issued (as an API does on a key rotation): the next request with
    /// one gets 401.
    pub fn revoke_tokens(&self) {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: ApiFaults) {
        *self.state.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Every item's newest version, by id.
    pub fn versions(&self) -> BTreeMap<u64, u64> {
        self.state
            .items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|i| (i.id, i.version))
            .collect()
    }

    /// The counters.
    pub fn counters(&self) -> &ApiCounters {
        &self.state.counters
    }
}
