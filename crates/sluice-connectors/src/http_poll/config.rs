//! The `http_poll` configuration: serde with defaults, and `validate()`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Configuration of an [`super::HttpPollSource`]; see `docs/connectors/http_poll.md`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpPollConfig {
    /// The API's base URL; each stream's `path` is appended.
    pub base_url: String,
    /// The streams: each its own resource and cursor partition.
    pub streams: Vec<StreamConfig>,
    /// How to authenticate.
    #[serde(default)]
    pub auth: Auth,
    /// Headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time between the end of one sync of every stream and the start of the next, in ms.
    #[serde(default = "defaults::interval_ms")]
    pub interval_ms: u64,
    /// Up to this much is added to each interval at random, in ms (so many pollers spread out).
    #[serde(default)]
    pub jitter_ms: u64,
    /// Requests a second to the host at most (bursts of as many).
    #[serde(default = "defaults::requests_per_second")]
    pub requests_per_second: u32,
    /// Per-request timeout, in ms.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Response rules for every stream, after the stream's own (see [`Rule`]).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

mod defaults {
    pub(super) fn interval_ms() -> u64 {
        60_000
    }
    pub(super) fn requests_per_second() -> u32 {
        5
    }
    pub(super) fn timeout_ms() -> u64 {
        30_000
    }
}

/// How requests authenticate. Secrets come from the environment or from a file of their own
/// (a mounted secret), never from the configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The environment variable holding the token (or `token_file`).
        #[serde(default)]
        token_env: Option<String>,
        /// A file holding the token, trailing newline ignored.
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// HTTP basic auth.
    Basic {
        /// The user name.
        user: String,
        /// The environment variable holding the password (or `password_file`).
        #[serde(default)]
        password_env: Option<String>,
        /// A file holding the password, trailing newline ignored.
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
    /// OAuth 2.0 client credentials (RFC 6749 §4.4): a token from `token_url`, sent as a bearer
    /// token, fetched again before it expires or when the API answers 401.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The environment variable holding the client secret (or `client_secret_file`).
        #[serde(default)]
        client_secret_env: Option<String>,
        /// A file holding the client secret (a mounted secret), trailing newline ignored.
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        /// The scope to ask for, if the API wants one.
        #[serde(default)]
        scope: Option<String>,
    },
    /// An API key in a header (`header`) or a query parameter (`query`).
    ApiKey {
        /// The header name, e.g. `X-Api-Key`.
        #[serde(default)]
        header: Option<String>,
        /// Or the query parameter name, e.g. `api_key`.
        #[serde(default)]
        query: Option<String>,
        /// The environment variable holding the key (or `value_file`).
        #[serde(default)]
        value_env: Option<String>,
        /// A file holding the key, trailing newline ignored.
        #[serde(default)]
        value_file: Option<PathBuf>,
    },
}

impl Auth {
    /// The secret's sources, named for messages: (env key, env var, file key, file).
    pub(crate) fn secret_source(&self) -> Option<(&'static str, Option<&str>, Option<&Path>)> {
        match self {
            Auth::None => None,
            Auth::Bearer {
                token_env,
                token_file,
            } => Some(("token", token_env.as_deref(), token_file.as_deref())),
            Auth::Basic {
                password_env,
                password_file,
                ..
            } => Some((
                "password",
                password_env.as_deref(),
                password_file.as_deref(),
            )),
            Auth::Oauth2 {
                client_secret_env,
                client_secret_file,
                ..
            } => Some((
                "client_secret",
                client_secret_env.as_deref(),
                client_secret_file.as_deref(),
            )),
            Auth::ApiKey {
                value_env,
                value_file,
                ..
            } => Some(("value", value_env.as_deref(), value_file.as_deref())),
        }
    }
}

/// One stream: a list endpoint read incrementally.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream's name: its resource and its cursor partition.
    pub name: String,
    /// The path after `base_url` (`/repos/o/r/issues`).
    pub path: String,
    /// The HTTP method: `get`, or `post` for search-style APIs that take their parameters in
    /// a body.
    #[serde(default)]
    pub method: Method,
    /// Fixed query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Headers of this stream's requests (after the source's).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A fixed request body (`post`): a JSON object the parameters are added to.
    #[serde(default)]
    pub body: serde_json::Map<String, serde_json::Value>,
    /// How the body is sent: `json`, or `form` (`application/x-www-form-urlencoded`, top-level
    /// fields only).
    #[serde(default)]
    pub body_format: BodyFormat,
    /// Where the paging parameters (page size, offset, page, token) and the cursor go:
    /// `query`, or `body` (a dotted name nests: `filter.updated_at.on_or_after`).
    #[serde(default)]
    pub params_in: ParamsIn,
    /// Rules mapping a response to retry / fail / ignore, before the source's and the default
    /// status policy.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Where the records are in the body: a dotted path (`data`, `result.items`); empty when
    /// the body is the array.
    #[serde(default)]
    pub records: String,
    /// The field(s) that identify a record.
    pub primary_key: Vec<String>,
    /// Incremental reads; without it every sync reads everything.
    #[serde(default)]
    pub cursor: Option<CursorConfig>,
    /// How to page.
    #[serde(default)]
    pub pagination: Pagination,
    /// Fields added to every record (e.g. `{ stream = "issues" }`).
    #[serde(default)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// The cursor of a stream: a field of its records the API can filter on.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CursorConfig {
    /// The record field (dotted path).
    pub field: String,
    /// Its type: how values compare and how `lookback` moves them.
    #[serde(default)]
    pub kind: CursorKind,
    /// The parameter the start value goes in (`since`, `updated[gte]`); the API must return
    /// records whose cursor is at or after it.
    pub param: String,
    /// Where the start (and end) value goes: `query`, `header` or `body` (default: where the
    /// stream's `params_in` says).
    #[serde(default)]
    pub inject: Option<Inject>,
    /// The parameter the end of a window goes in (`until`, `created[lt]`), with `step`.
    #[serde(default)]
    pub end_param: Option<String>,
    /// Read in windows of this size (ms for datetimes, seconds for epochs) from the start to
    /// now, each window's end in `end_param`: a bounded backfill that saves its progress at the
    /// end of every window. Needs `initial` or a saved cursor, and a datetime or epoch cursor.
    #[serde(default)]
    pub step: Option<u64>,
    /// The start of the first sync (none: the API's beginning, the parameter not sent).
    #[serde(default)]
    pub initial: Option<String>,
    /// Re-read this much before the saved cursor (ms for datetimes, units for integers), to
    /// catch records updated while an earlier sync was paging.
    #[serde(default)]
    pub lookback: u64,
    /// The order the API returns records in.
    #[serde(default)]
    pub order: Order,
}

/// The HTTP method of a stream.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `GET`.
    #[default]
    Get,
    /// `POST` with a body.
    Post,
}

/// How a request body is encoded.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `application/json`.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// Where a stream's parameters go.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParamsIn {
    /// The query string.
    #[default]
    Query,
    /// The body (`post`).
    Body,
}

/// Where the cursor values go.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Inject {
    /// The query string.
    Query,
    /// A header named by the parameter.
    Header,
    /// The body (`post`).
    Body,
}

/// A response rule: when a response matches every condition given, `action` decides what it
/// is — whatever its status. The first matching rule wins; without one the shared status
/// policy decides (2xx read, 429/5xx retried, other statuses fatal).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The statuses it applies to (any when empty).
    #[serde(default)]
    pub status: Vec<u16>,
    /// Text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// A dotted path into a JSON body whose value must equal `equals`.
    #[serde(default)]
    pub body_path: Option<String>,
    /// The value at `body_path` (any value there, when not given).
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    /// What to do.
    pub action: Action,
}

/// What a response rule does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Try the request again later (backoff, or the server's `Retry-After`).
    Retry,
    /// Stop the pipeline with the response's status and a piece of its body.
    Fail,
    /// Take it as the end of this stream's listing for this sync (the cursor stays where the
    /// records read so far put it).
    Ignore,
}

/// How cursor values compare.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CursorKind {
    /// RFC 3339 (or `YYYY-MM-DD HH:MM:SS` UTC) times, compared as instants.
    #[default]
    Datetime,
    /// Seconds since the Unix epoch (integer).
    Epoch,
    /// Integers (a sequence, a version).
    Integer,
    /// Strings compared bytewise.
    String,
}

/// The order of the records in the API's answers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Oldest first: the cursor moves with every record.
    #[default]
    Ascending,
    /// Newest first: paging stops at the start value; the cursor moves once the sync ends.
    Descending,
}

/// How a stream pages.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request.
    #[default]
    None,
    /// The `Link: <…>; rel="next"` header (GitHub).
    Link {
        /// The page size parameter and value, when the API wants one.
        #[serde(default)]
        page_size: Option<PageSize>,
    },
    /// The next page's URL at a dotted path of the body.
    NextUrl {
        /// Where it is (`next`, `links.next`).
        path: String,
        /// The page size.
        #[serde(default)]
        page_size: Option<PageSize>,
    },
    /// A token from the body (or the last record) sent as a query parameter (Stripe's
    /// `starting_after`, `cursor`).
    Token {
        /// The parameter the token goes in.
        param: String,
        /// The dotted path of the token in the body; empty: the `token_field` of the last record.
        #[serde(default)]
        path: String,
        /// The record field that is the token when `path` is empty (Stripe: `id`).
        #[serde(default)]
        token_field: String,
        /// A boolean at this dotted path says whether there is more (Stripe: `has_more`);
        /// without it paging stops at an empty page or a missing token.
        #[serde(default)]
        has_more: String,
        /// The page size.
        #[serde(default)]
        page_size: Option<PageSize>,
    },
    /// `offset` and `limit` parameters.
    Offset {
        /// The offset parameter.
        param: String,
        /// The page size (required: offsets step by it).
        page_size: PageSize,
    },
    /// A page number parameter, from `first`.
    Page {
        /// The page parameter.
        param: String,
        /// The first page's number (usually 1).
        #[serde(default = "one")]
        first: u64,
        /// The page size.
        page_size: PageSize,
    },
}

fn one() -> u64 {
    1
}

impl Pagination {
    /// The page size, when the API is told one.
    pub fn page_size(&self) -> Option<&PageSize> {
        match self {
            Pagination::Offset { page_size, .. } | Pagination::Page { page_size, .. } => {
                Some(page_size)
            }
            Pagination::Link { page_size }
            | Pagination::NextUrl { page_size, .. }
            | Pagination::Token { page_size, .. } => page_size.as_ref(),
            Pagination::None => None,
        }
    }
}

/// A page size and the query parameter it goes in.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PageSize {
    /// The parameter (`limit`, `per_page`).
    pub param: String,
    /// The size.
    pub size: u64,
}

impl HttpPollConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!(
                "base_url {:?} must start with http:// or https://",
                self.base_url
            ));
        }
        if self.streams.is_empty() {
            return Err("streams: at least one stream".into());
        }
        if self.requests_per_second == 0 {
            return Err("requests_per_second must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, stream) in self.streams.iter().enumerate() {
            let at = format!("streams[{i}]");
            if stream.name.is_empty() || !names.insert(stream.name.as_str()) {
                return Err(format!("{at}.name: empty or repeated {:?}", stream.name));
            }
            if !stream.path.starts_with('/') {
                return Err(format!("{at}.path {:?} must start with /", stream.path));
            }
            if stream.primary_key.is_empty() {
                return Err(format!("{at}.primary_key: at least one field"));
            }
            if let Some(cursor) = &stream.cursor {
                if cursor.field.is_empty() || cursor.param.is_empty() {
                    return Err(format!("{at}.cursor: field and param are required"));
                }
                if cursor.step.is_some() {
                    if !matches!(cursor.kind, CursorKind::Datetime | CursorKind::Epoch) {
                        return Err(format!(
                            "{at}.cursor.step: only datetime and epoch cursors have windows"
                        ));
                    }
                    if cursor.step == Some(0)
                        || cursor.end_param.as_deref().is_none_or(str::is_empty)
                    {
                        return Err(format!("{at}.cursor.step: a step > 0 and an end_param"));
                    }
                    if cursor.initial.is_none() {
                        return Err(format!("{at}.cursor.step: windows start at `initial`"));
                    }
                    if stream.pagination == Pagination::None {
                        return Err(format!(
                            "{at}.cursor.step: windows need a pagination (one page of an API that caps its pages would be taken for the whole window)"
                        ));
                    }
                }
                let body = stream.method == Method::Post;
                if !body && (cursor.inject == Some(Inject::Body)) {
                    return Err(format!(
                        "{at}.cursor.inject = \"body\" needs method = \"post\""
                    ));
                }
                if let Some(initial) = &cursor.initial {
                    super::record::CursorValue::parse(cursor.kind, initial)
                        .map_err(|e| format!("{at}.cursor.initial {initial:?}: {e}"))?;
                }
            }
            if stream
                .pagination
                .page_size()
                .is_some_and(|s| s.size == 0 || s.param.is_empty())
            {
                return Err(format!(
                    "{at}.pagination.page_size: a parameter and a size > 0"
                ));
            }
            if stream.method == Method::Get
                && (stream.params_in == ParamsIn::Body || !stream.body.is_empty())
            {
                return Err(format!(
                    "{at}: a body (params_in = \"body\", body) needs method = \"post\""
                ));
            }
            for rule in self.rules.iter().chain(&stream.rules) {
                if rule.status.is_empty()
                    && rule.body_contains.is_none()
                    && rule.body_path.is_none()
                {
                    return Err(format!(
                        "{at}.rules: a rule needs a status, body_contains or body_path"
                    ));
                }
            }
            if let Pagination::Token {
                path, token_field, ..
            } = &stream.pagination
                && path.is_empty()
                && token_field.is_empty()
            {
                return Err(format!(
                    "{at}.pagination: a token `path` in the body or a `token_field` of the records"
                ));
            }
        }
        if let Auth::ApiKey { header, query, .. } = &self.auth
            && header.is_some() == query.is_some()
        {
            return Err(
                "auth: an api_key goes in a `header` or a `query` parameter (one of them)".into(),
            );
        }
        match self.auth.secret_source() {
            Some((name, env, file)) if env.is_some() == file.is_some() => Err(format!(
                "auth: the {name} comes from `{name}_env` or `{name}_file` (one of them)"
            )),
            _ => Ok(()),
        }
    }

    /// The interval between syncs.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}
