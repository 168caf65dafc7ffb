//! The polling session: sync every stream (page through what changed since its durable cursor),
//! sleep the interval, again. See the [module docs](super) for the algorithm.

use std::{collections::HashSet, num::NonZeroU32, sync::Arc, time::Duration};

use reqwest::header::{HeaderMap, HeaderName};
use serde_json::Value;
use sluice::{
    Backoff, BackoffPolicy, Checkpoint, Envelope, Rejected, Row, SessionEnd, Shapes, Source,
    SourceContext, SourceError,
};

use super::{
    config::{Action, Auth, HttpPollConfig, Method, Order, Pagination, StreamConfig},
    record::{CursorValue, at, key_of},
    request,
};

/// Where a sync's records go: the pipeline's [`SourceContext`], or an audit's collector. (A
/// sync is the same walk of the API either way.)
pub(crate) trait Outlet: Sync {
    /// The durable cursor of `stream`.
    fn cursor(&self, stream: &str) -> Option<sluice::Position>;
    /// A record.
    async fn emit(&self, envelope: Envelope<Row>) -> Result<(), SourceError>;
    /// Input that could not be decoded.
    async fn reject(&self, rejected: Rejected) -> Result<(), SourceError>;
    /// Progress without a record.
    async fn advance(&self, checkpoint: Checkpoint) -> Result<(), SourceError>;
    /// The feed is live (long waits).
    fn alive(&self);
    /// Resolves when the work must stop.
    async fn cancelled(&self);
}

impl Outlet for SourceContext<Row> {
    fn cursor(&self, stream: &str) -> Option<sluice::Position> {
        // The cursor as the runtime last made it durable (not the session's starting one: a
        // session runs many syncs), never the pages just fetched.
        self.durable().borrow().get(stream).cloned()
    }

    async fn emit(&self, envelope: Envelope<Row>) -> Result<(), SourceError> {
        SourceContext::emit(self, envelope).await
    }

    async fn reject(&self, rejected: Rejected) -> Result<(), SourceError> {
        SourceContext::reject(self, rejected).await
    }

    async fn advance(&self, checkpoint: Checkpoint) -> Result<(), SourceError> {
        SourceContext::advance(self, checkpoint).await
    }

    fn alive(&self) {
        SourceContext::alive(self);
    }

    async fn cancelled(&self) {
        SourceContext::cancelled(self).await;
    }
}

/// A secret read from the environment: never shown.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

fn secret(var: &str) -> Result<Secret, SourceError> {
    std::env::var(var).map(Secret).map_err(|_| {
        SourceError::fatal(format!(
            "http_poll: the environment variable {var} (a credential) is not set"
        ))
    })
}

fn secret_file(path: &std::path::Path) -> Result<Secret, SourceError> {
    std::fs::read_to_string(path)
        .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
        .map_err(|e| {
            SourceError::fatal(format!(
                "http_poll: the credential file {} cannot be read: {}",
                path.display(),
                e.kind()
            ))
        })
}

/// Credentials resolved from the environment.
#[derive(Debug, Clone)]
enum Credentials {
    None,
    Bearer(Secret),
    Basic(String, Secret),
    Header(HeaderName, Secret),
    Query(String, Secret),
    OAuth2(Arc<OAuth2>),
}

/// OAuth 2.0 client credentials and the token in use.
#[derive(Debug)]
struct OAuth2 {
    token_url: String,
    client_id: String,
    secret: Secret,
    scope: Option<String>,
    /// The token and when to fetch a new one.
    token: tokio::sync::Mutex<Option<(Secret, tokio::time::Instant)>>,
}

/// Percent-encodes a form value (RFC 3986 unreserved characters kept).
fn form_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl OAuth2 {
    /// The token to send: the one in use, or a new one when it expires (or was refused).
    async fn token(&self, http: &reqwest::Client) -> Result<Secret, SourceError> {
        let mut token = self.token.lock().await;
        if let Some((value, refresh_at)) = token.as_ref()
            && tokio::time::Instant::now() < *refresh_at
        {
            return Ok(value.clone());
        }
        let mut body = "grant_type=client_credentials".to_owned();
        if let Some(scope) = &self.scope {
            body.push_str(&format!("&scope={}", form_value(scope)));
        }
        let response = http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(&self.secret.0))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                SourceError::transient("http_poll: token request failed")
                    .with_source(e.without_url())
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            SourceError::transient("http_poll: token response not read")
                .with_source(e.without_url())
        })?;
        if !status.is_success() {
            return Err(crate::http::status_error(
                "http_poll: token request",
                status.as_u16(),
                &bytes,
            ));
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|_| SourceError::transient("http_poll: the token response is not JSON"))?;
        let Some(access) = answer.get("access_token").and_then(Value::as_str) else {
            return Err(SourceError::transient(
                "http_poll: the token response has no access_token",
            ));
        };
        let lifetime = answer
            .get("expires_in")
            .and_then(Value::as_u64)
            .map_or(Duration::from_secs(3600), Duration::from_secs);
        // Fetched again a little before it expires (a minute, or half its life when short).
        let margin = (lifetime / 2).min(Duration::from_secs(60));
        let value = Secret(access.to_owned());
        *token = Some((
            value.clone(),
            tokio::time::Instant::now() + lifetime - margin,
        ));
        metrics::counter!("sluice_http_poll_tokens_total").increment(1);
        Ok(value)
    }

    /// Forgets the token (the API refused it).
    async fn refused(&self) {
        *self.token.lock().await = None;
    }
}

/// How many times one page is tried before the session ends (and the pipeline reconnects).
const ATTEMPTS: u32 = 8;

/// The longest wait a server may ask for (`Retry-After`, a rate-limit reset) before we retry.
const MAX_WAIT: Duration = Duration::from_secs(900);

/// How far before now a window may close (ms), at least.
const WINDOW_SETTLE_MS: u64 = 60_000;

/// Polls HTTP list endpoints. See the [module docs](super).
#[derive(Debug)]
pub struct HttpPollSource {
    config: HttpPollConfig,
    http: reqwest::Client,
    credentials: Credentials,
    limiter: Arc<governor::DefaultDirectRateLimiter>,
    name: String,
    shapes: Shapes,
}

impl HttpPollSource {
    /// A source for `config`.
    ///
    /// # Errors
    /// A fatal error when the configuration is invalid or a credential is missing.
    pub fn new(config: HttpPollConfig) -> Result<Self, SourceError> {
        config
            .validate()
            .map_err(|e| SourceError::fatal(format!("http_poll: {e}")))?;
        let secret = || match config.auth.secret_source() {
            Some((_, Some(var), _)) => secret(var),
            Some((_, None, Some(path))) => secret_file(path),
            _ => Err(SourceError::fatal("http_poll: auth: no secret configured")),
        };
        let credentials = match &config.auth {
            Auth::None => Credentials::None,
            Auth::Bearer { .. } => Credentials::Bearer(secret()?),
            Auth::Basic { user, .. } => Credentials::Basic(user.clone(), secret()?),
            Auth::Oauth2 {
                token_url,
                client_id,
                scope,
                ..
            } => Credentials::OAuth2(Arc::new(OAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                secret: secret()?,
                scope: scope.clone(),
                token: tokio::sync::Mutex::new(None),
            })),
            Auth::ApiKey {
                header: Some(header),
                ..
            } => Credentials::Header(
                HeaderName::try_from(header.as_str()).map_err(|_| {
                    SourceError::fatal(format!(
                        "http_poll: auth.header {header:?} is not a header name"
                    ))
                })?,
                secret()?,
            ),
            Auth::ApiKey { query, .. } => {
                Credentials::Query(query.clone().unwrap_or_default(), secret()?)
            }
        };
        let http = crate::http::client(Duration::from_millis(config.timeout_ms.max(1)))?;
        let per_second = NonZeroU32::new(config.requests_per_second)
            .ok_or_else(|| SourceError::fatal("http_poll: requests_per_second is 0"))?;
        let limiter = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
            per_second,
        )));
        let name = format!("http_poll:{}", config.base_url);
        Ok(Self {
            config,
            http,
            credentials,
            limiter,
            name,
            shapes: Shapes::default(),
        })
    }

    /// One request of `stream`: paced by the host budget; the stream's and the source's rules
    /// first, then 429, 5xx and failures retried with backoff (the server's `Retry-After` or
    /// rate-limit reset when it names one) and other statuses classified by the shared policy.
    /// `None`: a rule said to ignore the response (the listing ends here for this sync).
    async fn fetch(
        &self,
        ctx: &impl Outlet,
        stream: &StreamConfig,
        url: &str,
        params: &[(String, String)],
    ) -> Result<Option<(Vec<u8>, HeaderMap)>, SourceError> {
        let mut backoff = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            stable_after: Duration::ZERO,
        });
        let what = || {
            let method = match stream.method {
                Method::Get => "GET",
                Method::Post => "POST",
            };
            format!("http_poll: {method} {}", shown(url))
        };
        let mut last = None;
        let mut refreshed = false;
        for _ in 0..ATTEMPTS {
            self.limiter.until_ready().await;
            let mut request =
                request::build(&self.http, &self.config.headers, stream, url, params)?;
            request = match &self.credentials {
                Credentials::None => request,
                Credentials::Bearer(token) => request.bearer_auth(&token.0),
                Credentials::Basic(user, password) => request.basic_auth(user, Some(&password.0)),
                Credentials::Header(name, value) => request.header(name.clone(), value.0.as_str()),
                Credentials::Query(param, value) => request.query(&[(param, &value.0)]),
                Credentials::OAuth2(oauth) => {
                    request.bearer_auth(&oauth.token(&self.http).await?.0)
                }
            };
            metrics::counter!("sluice_http_poll_requests_total").increment(1);
            ctx.alive();
            let wait = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(body) => {
                            let rules = stream.rules.iter().chain(&self.config.rules);
                            let error =
                                || crate::http::status_error(&what(), status.as_u16(), &body);
                            match request::verdict(rules, status.as_u16(), &body) {
                                Some(Action::Ignore) => {
                                    tracing::info!(stream = %stream.name, status = status.as_u16(), "http_poll: response ignored by a rule; the listing ends here");
                                    metrics::counter!("sluice_http_poll_ignored_total", "stream" => stream.name.clone()).increment(1);
                                    return Ok(None);
                                }
                                Some(Action::Fail) => {
                                    return Err(SourceError::fatal(format!(
                                        "{} answered {status} and a rule says to fail: {}",
                                        what(),
                                        crate::http::reason(&body)
                                    )));
                                }
                                Some(Action::Retry) => {
                                    tracing::warn!(stream = %stream.name, status = status.as_u16(), "http_poll: a rule says to retry");
                                    last = Some(SourceError::transient(format!(
                                        "{} answered {status} and a rule says to retry",
                                        what()
                                    )));
                                    crate::http::retry_after(&headers, MAX_WAIT)
                                }
                                None if status.is_success() => {
                                    if let Some(reset) = exhausted(&headers) {
                                        // The budget is spent: the next request waits for its
                                        // reset.
                                        tracing::info!(
                                            wait_ms = reset.as_millis() as u64,
                                            "http_poll: rate limit reached; waiting for its reset"
                                        );
                                        sleep_cancellable(ctx, reset).await;
                                    }
                                    return Ok(Some((body.to_vec(), headers)));
                                }
                                None if status == reqwest::StatusCode::UNAUTHORIZED
                                    && matches!(self.credentials, Credentials::OAuth2(_))
                                    && !refreshed =>
                                {
                                    // An expired or revoked token: one new token, then the
                                    // request again; a second 401 is the credentials' fault.
                                    refreshed = true;
                                    if let Credentials::OAuth2(oauth) = &self.credentials {
                                        oauth.refused().await;
                                    }
                                    continue;
                                }
                                None if error().class() != sluice::ErrorClass::Transient => {
                                    return Err(error());
                                }
                                None => {
                                    tracing::warn!(status = status.as_u16(), url = %shown(url), "http_poll: throttled or failing; retrying");
                                    last = Some(error());
                                    crate::http::retry_after(&headers, MAX_WAIT)
                                        .or_else(|| exhausted(&headers))
                                }
                            }
                        }
                        Err(e) => {
                            last = Some(
                                SourceError::transient("http_poll: body not read")
                                    .with_source(e.without_url()),
                            );
                            None
                        }
                    }
                }
                Err(e) => {
                    let e = e.without_url();
                    tracing::warn!(error = %e, "http_poll: request failed; retrying");
                    last =
                        Some(SourceError::transient(format!("{} failed", what())).with_source(e));
                    None
                }
            };
            sleep_cancellable(ctx, wait.unwrap_or_else(|| backoff.next_delay())).await;
        }
        Err(last.unwrap_or_else(|| SourceError::transient("http_poll: request failed")))
    }

    /// The first request of a sync of `stream` from cursor value `from`: the URL and the query
    /// (fixed parameters, the cursor, the page size, the first offset or page).
    fn first_request(
        &self,
        stream: &StreamConfig,
        from: Option<&CursorValue>,
        end: Option<&CursorValue>,
    ) -> (String, Vec<(String, String)>) {
        let url = format!(
            "{}{}",
            self.config.base_url.trim_end_matches('/'),
            stream.path
        );
        let mut query: Vec<(String, String)> = stream
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let (Some(c), Some(from)) = (&stream.cursor, from) {
            query.push((c.param.clone(), from.param()));
        }
        if let (Some(param), Some(end)) = (
            stream.cursor.as_ref().and_then(|c| c.end_param.as_ref()),
            end,
        ) {
            query.push((param.clone(), end.param()));
        }
        if let Some(size) = stream.pagination.page_size() {
            query.push((size.param.clone(), size.size.to_string()));
        }
        match &stream.pagination {
            Pagination::Offset { param, .. } => query.push((param.clone(), "0".into())),
            Pagination::Page { param, first, .. } => {
                query.push((param.clone(), first.to_string()));
            }
            _ => {}
        }
        (url, query)
    }

    /// The durable cursor of `stream`, and where its next sync starts: that cursor (or
    /// `initial`) less the lookback.
    fn start_of(
        ctx: &impl Outlet,
        stream: &StreamConfig,
    ) -> Result<(Option<CursorValue>, Option<CursorValue>), SourceError> {
        let Some(cursor) = stream.cursor.as_ref() else {
            return Ok((None, None));
        };
        let saved = ctx
            .cursor(&stream.name)
            .and_then(|p| CursorValue::from_position(cursor.kind, &p));
        let start = match (&saved, cursor.initial.as_deref()) {
            (Some(saved), _) => Some(saved.clone()),
            (None, Some(initial)) => {
                Some(CursorValue::parse(cursor.kind, initial).map_err(|e| {
                    SourceError::fatal(format!("http_poll: {}.cursor.initial: {e}", stream.name))
                })?)
            }
            (None, None) => None,
        };
        let from = start.map(|s| s.minus(cursor.kind, cursor.lookback));
        Ok((saved, from))
    }

    /// Syncs one stream: pages from its durable cursor (less the lookback) to the end; with a
    /// `step`, window by window up to now, the cursor saved at the end of each window.
    pub(crate) async fn sync(
        &self,
        ctx: &impl Outlet,
        stream: &StreamConfig,
    ) -> Result<(), SourceError> {
        let (_, from) = Self::start_of(ctx, stream)?;
        // Windows close only up to a margin before now (the lookback, at least a minute): an
        // API's index or clock may lag, and a closed window's end becomes the cursor without a
        // record vouching for it. Past that the last window stays open.
        let windows = stream.cursor.as_ref().and_then(|c| {
            let margin = c.lookback.max(WINDOW_SETTLE_MS);
            let closable = CursorValue::now(c.kind)?.minus(c.kind, margin);
            Some((c.kind, c.step?, closable))
        });
        let (Some((kind, step, closable)), Some(mut start)) = (windows, from) else {
            return self.sync_window(ctx, stream, None, None).await.map(drop);
        };
        loop {
            let end = start.plus(kind, step).filter(|end| *end <= closable);
            let last = end.is_none();
            let finished = self
                .sync_window(ctx, stream, Some(start.clone()), end.clone())
                .await?;
            let Some(end) = end.filter(|_| finished && !last) else {
                return Ok(());
            };
            // Everything before the window's end was read: that is the cursor, once the
            // window's records are written.
            ctx.advance(Checkpoint::new(stream.name.as_str(), end.position()))
                .await?;
            tracing::debug!(stream = %stream.name, end = %end.param(), "http_poll: window read");
            start = end;
        }
    }

    /// Syncs one window of a stream: from `start` (or its durable cursor less the lookback)
    /// to `end` (or the end of the listing). Whether the listing was read to its end.
    #[allow(clippy::too_many_lines)]
    async fn sync_window(
        &self,
        ctx: &impl Outlet,
        stream: &StreamConfig,
        start: Option<CursorValue>,
        end: Option<CursorValue>,
    ) -> Result<bool, SourceError> {
        let resource: Arc<str> = stream.name.as_str().into();
        let cursor = stream.cursor.as_ref();
        let (saved, from) = match Self::start_of(ctx, stream)? {
            (saved, from) if start.is_none() => (saved, from),
            // A window: its checkpoints never fall below the durable cursor or its start.
            (saved, _) => (saved.max(start.clone()), start),
        };
        let (mut url, mut query) = self.first_request(stream, from.as_ref(), end.as_ref());
        // The cursor parameter as last sent: oldest-first listings paged by offset or page
        // number start again from the highest value read, so that a record updated meanwhile
        // (moving to the end and shifting the pages left) cannot push another out of reach.
        let mut since_sent = from.as_ref().map(CursorValue::param);
        let set = |query: &mut Vec<(String, String)>, param: &str, value: String| {
            query.retain(|(k, _)| k != param);
            query.push((param.to_owned(), value));
        };
        // The highest cursor value emitted (never below the saved one): every checkpoint.
        let mut high = saved.clone();
        // Keys emitted in this sync at the value `high`: a record seen again at the boundary
        // (pages shifted by an insert, or a listing started again from `high`) is not emitted
        // twice.
        let mut at_high: HashSet<String> = HashSet::new();
        let ascending = cursor.is_some_and(|c| c.order == Order::Ascending);
        // Per-record checkpoints while the records come oldest first; an API that breaks its
        // order makes the rest of the sync save its cursor only at the end.
        let mut in_order = ascending;
        let mut previous: Option<CursorValue> = None;
        // Requests made in this sync: a listing that points back at a page already read (a
        // token that does not move, an ignored offset) ends the sync instead of looping.
        let mut requested: HashSet<String> = HashSet::new();
        let mut pages = 0u64;
        // Whether the listing was read to its end (the only way a newest-first sync, or one
        // whose order broke, may move the cursor).
        let mut finished = false;
        loop {
            let signature = format!("{url}?{query:?}");
            if !requested.insert(signature) {
                tracing::warn!(stream = %stream.name, url = %shown(&url), "http_poll: the listing points back at a page already read; ending this sync");
                break;
            }
            let Some((body, headers)) = self.fetch(ctx, stream, &url, &query).await? else {
                break;
            };
            pages += 1;
            let page: Value = match serde_json::from_slice(&body) {
                Ok(page) => page,
                Err(e) => {
                    self.reject(ctx, &resource, &body, format!("page is not JSON: {e}"))
                        .await?;
                    return Ok(false);
                }
            };
            let Some(Value::Array(records)) = at(&page, &stream.records) else {
                let reason = format!("page has no array at {:?}", stream.records);
                self.reject(ctx, &resource, &body, reason).await?;
                return Ok(false);
            };
            let count = records.len() as u64;
            // Within a page, a record's checkpoint never passes a value still to come on it.
            let values: Vec<Option<CursorValue>> = records
                .iter()
                .map(|r| {
                    cursor
                        .and_then(|c| at(r, &c.field).and_then(|v| CursorValue::of(c.kind, v).ok()))
                })
                .collect();
            let mut last_record = None;
            let mut older = false;
            for (index, record) in records.iter().enumerate() {
                last_record = Some(record);
                let Value::Object(object) = record else {
                    self.reject(
                        ctx,
                        &resource,
                        record.to_string().as_bytes(),
                        "record is not a JSON object".into(),
                    )
                    .await?;
                    continue;
                };
                let key = match key_of(record, &stream.primary_key) {
                    Ok(key) => key,
                    Err(reason) => {
                        self.reject(ctx, &resource, record.to_string().as_bytes(), reason)
                            .await?;
                        continue;
                    }
                };
                let mut checkpoint = None;
                if let Some(c) = cursor {
                    let value = match at(record, &c.field).map(|v| CursorValue::of(c.kind, v)) {
                        Some(Ok(value)) => value,
                        Some(Err(reason)) => {
                            self.reject(ctx, &resource, record.to_string().as_bytes(), reason)
                                .await?;
                            continue;
                        }
                        None => {
                            let reason = format!("record has no cursor field {:?}", c.field);
                            self.reject(ctx, &resource, record.to_string().as_bytes(), reason)
                                .await?;
                            continue;
                        }
                    };
                    if from.as_ref().is_some_and(|from| &value < from) {
                        // Before the window: an API that does not filter, or the end of a
                        // newest-first listing.
                        older = true;
                        continue;
                    }
                    if in_order && previous.as_ref().is_some_and(|p| &value < p) {
                        tracing::warn!(stream = %stream.name, "http_poll: records are not oldest first; the cursor moves at the end of this sync (set order = \"descending\", or a lookback, if the API does not sort)");
                        in_order = false;
                    }
                    previous = Some(value.clone());
                    match high.as_ref().map(|h| value.cmp(h)) {
                        Some(std::cmp::Ordering::Equal) => {
                            if !at_high.insert(key) {
                                continue;
                            }
                        }
                        Some(std::cmp::Ordering::Less) => {}
                        None | Some(std::cmp::Ordering::Greater) => {
                            high = Some(value);
                            at_high.clear();
                            at_high.insert(key);
                        }
                    }
                    let still_to_come = values[index + 1..].iter().flatten().min();
                    if in_order && still_to_come.is_none_or(|next| Some(next) >= high.as_ref()) {
                        checkpoint = high
                            .as_ref()
                            .map(|h| Checkpoint::new(resource.clone(), h.position()));
                    }
                }
                let mut fields = object.clone();
                for (name, value) in &stream.fields {
                    fields.insert(name.clone(), value.clone());
                }
                let envelope = Envelope {
                    resource: resource.clone(),
                    payload: Row::from_map(fields, &self.shapes),
                    checkpoint,
                };
                ctx.emit(envelope).await?;
            }
            if older && !ascending {
                finished = true;
                break;
            }
            // A short page proves nothing: only an empty page, or a listing without a next
            // pointer, ends it.
            let next = match &stream.pagination {
                Pagination::None => None,
                _ if count == 0
                    && matches!(
                        stream.pagination,
                        Pagination::Offset { .. } | Pagination::Page { .. }
                    ) =>
                {
                    None
                }
                Pagination::Offset { .. } | Pagination::Page { .. } | Pagination::Link { .. }
                    if ascending && high.as_ref().map(CursorValue::param) != since_sent =>
                {
                    // Oldest first by position: start again from the highest value read.
                    let (first_url, first_query) =
                        self.first_request(stream, high.as_ref(), end.as_ref());
                    since_sent = high.as_ref().map(CursorValue::param);
                    query = first_query;
                    Some(first_url)
                }
                // A next URL carries its own query.
                Pagination::Link { .. } => next_link(&headers)
                    .and_then(|s| resolve(&url, &s))
                    .inspect(|_| query.clear()),
                Pagination::NextUrl { path, .. } => at(&page, path)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .and_then(|s| resolve(&url, s))
                    .inspect(|_| query.clear()),
                Pagination::Token {
                    param,
                    path,
                    token_field,
                    has_more,
                    ..
                } => {
                    let more = has_more.is_empty()
                        || at(&page, has_more).and_then(Value::as_bool) == Some(true);
                    let token = if path.is_empty() {
                        last_record.and_then(|r| at(r, token_field))
                    } else {
                        at(&page, path)
                    };
                    match token.filter(|_| more) {
                        Some(Value::String(t)) if !t.is_empty() => {
                            set(&mut query, param, t.clone());
                            Some(url.clone())
                        }
                        Some(Value::Number(n)) => {
                            set(&mut query, param, n.to_string());
                            Some(url.clone())
                        }
                        _ => None,
                    }
                }
                Pagination::Offset { param, .. } => {
                    let offset = query
                        .iter()
                        .find(|(k, _)| k == param)
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    set(&mut query, param, (offset + count).to_string());
                    Some(url.clone())
                }
                Pagination::Page { param, .. } => {
                    let number = query
                        .iter()
                        .find(|(k, _)| k == param)
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    set(&mut query, param, (number + 1).to_string());
                    Some(url.clone())
                }
            };
            match next {
                Some(next) => url = next,
                None => {
                    finished = true;
                    break;
                }
            }
        }
        metrics::counter!("sluice_http_poll_pages_total", "stream" => stream.name.clone())
            .increment(pages);
        if finished
            && !in_order
            && let (Some(high), true) = (&high, high != saved)
        {
            // Newest first: only a finished sync vouches for everything up to its newest value.
            ctx.advance(Checkpoint::new(resource.clone(), high.position()))
                .await?;
        }
        Ok(finished)
    }

    async fn reject(
        &self,
        ctx: &impl Outlet,
        resource: &Arc<str>,
        raw: &[u8],
        reason: String,
    ) -> Result<(), SourceError> {
        let raw: String = String::from_utf8_lossy(raw)
            .chars()
            .take(64 * 1024)
            .collect();
        ctx.reject(Rejected {
            resource: resource.clone(),
            raw,
            reason,
            checkpoint: None,
        })
        .await
    }
}

/// A next-page reference resolved against the URL of the page that named it (RFC 3986: a
/// relative path, an absolute path or a full URL).
fn resolve(current: &str, next: &str) -> Option<String> {
    reqwest::Url::parse(current)
        .and_then(|base| base.join(next))
        .map(String::from)
        .ok()
}

/// The URL of `rel="next"` in a `Link` header (RFC 8288).
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            is_next.then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
        })
}

/// How long until the rate limit resets when `X-RateLimit-Remaining` says none is left
/// (`X-RateLimit-Reset`: epoch seconds, or seconds from now when small).
fn exhausted(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if number("x-ratelimit-remaining")? > 0 {
        return None;
    }
    let reset = number("x-ratelimit-reset")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let wait = if reset > 1_000_000_000 {
        reset.saturating_sub(now)
    } else {
        reset
    };
    Some(Duration::from_secs(wait).min(MAX_WAIT))
}

/// The URL without its query (which may carry a key).
fn shown(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Sleeps, calling `alive` every second (a long wait is not a dead feed), until cancelled.
async fn sleep_cancellable(ctx: &impl Outlet, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        ctx.alive();
        let step = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(step) => {}
            () = ctx.cancelled() => return,
        }
    }
}

impl Source for HttpPollSource {
    type Payload = Row;

    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&mut self, ctx: SourceContext<Row>) -> Result<SessionEnd, SourceError> {
        loop {
            for stream in &self.config.streams {
                if ctx.is_cancelled() {
                    return Ok(SessionEnd::Closed);
                }
                self.sync(&ctx, stream).await?;
            }
            let jitter = match self.config.jitter_ms {
                0 => 0,
                j => {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .subsec_nanos() as u64
                        % j
                }
            };
            sleep_cancellable(&ctx, self.config.interval() + Duration::from_millis(jitter)).await;
            if ctx.is_cancelled() {
                return Ok(SessionEnd::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn the_next_link_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(
                r#"<https://api.example/x?page=1>; rel="prev", <https://api.example/x?page=3>; rel="next", <https://api.example/x?page=9>; rel="last""#,
            ),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://api.example/x?page=3")
        );
        assert_eq!(next_link(&HeaderMap::new()), None);
        assert_eq!(
            resolve("http://h:1/api/issues?page=1", "/issues?page=2").as_deref(),
            Some("http://h:1/issues?page=2")
        );
        assert_eq!(
            resolve("http://h:1/api/issues", "https://other/x").as_deref(),
            Some("https://other/x")
        );
    }

    #[test]
    fn an_exhausted_budget_waits_for_its_reset() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(exhausted(&headers), Some(Duration::from_secs(3)));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("10"));
        assert_eq!(exhausted(&headers), None);
    }

    #[test]
    fn windows_need_pagination_and_a_start() {
        let mut config: HttpPollConfig = serde_json::from_value(serde_json::json!({
            "base_url": "http://127.0.0.1:9",
            "streams": [{
                "name": "s", "path": "/s", "primary_key": ["id"],
                "cursor": {"field": "t", "param": "since", "end_param": "until", "step": 60000, "initial": "2026-01-01T00:00:00Z"}
            }],
        }))
        .unwrap();
        let error = config.validate().unwrap_err();
        assert!(error.contains("windows need a pagination"), "{error}");
        config.streams[0].pagination = Pagination::Link { page_size: None };
        config.validate().unwrap();
        config.streams[0].cursor.as_mut().unwrap().initial = None;
        let error = config.validate().unwrap_err();
        assert!(error.contains("windows start at `initial`"), "{error}");
    }

    #[test]
    fn a_secret_comes_from_its_file_or_its_variable_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t0ken-value\n").unwrap();
        let mut config: HttpPollConfig = serde_json::from_value(serde_json::json!({
            "base_url": "http://127.0.0.1:9",
            "streams": [{"name": "s", "path": "/s", "primary_key": ["id"]}],
            "auth": {"kind": "bearer", "token_file": path},
        }))
        .unwrap();
        let source = HttpPollSource::new(config.clone()).unwrap();
        assert!(
            matches!(&source.credentials, Credentials::Bearer(s) if s.0 == "t0ken-value"),
            "the file's secret, without its newline"
        );
        assert!(!format!("{source:?}").contains("t0ken"), "{source:?}");
        config.auth = Auth::Basic {
            user: "u".into(),
            password_env: Some("SLUICE_TEST_UNSET_PASSWORD".into()),
            password_file: Some(path),
        };
        let error = config.validate().unwrap_err();
        assert!(
            error.contains("`password_env` or `password_file`"),
            "{error}"
        );
        config.auth = Auth::ApiKey {
            header: Some("x-api-key".into()),
            query: None,
            value_env: None,
            value_file: None,
        };
        let error = config.validate().unwrap_err();
        assert!(error.contains("`value_env` or `value_file`"), "{error}");
        config.auth = Auth::Basic {
            user: "u".into(),
            password_env: Some("SLUICE_TEST_UNSET_PASSWORD".into()),
            password_file: None,
        };
        let error = HttpPollSource::new(config).unwrap_err().to_string();
        assert!(
            error.contains("SLUICE_TEST_UNSET_PASSWORD") && error.contains("not set"),
            "{error}"
        );
    }
}
