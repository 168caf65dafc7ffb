//! The `http_poll` configuration: serde with defaults, and `validate()`.

use std::{collections::BTreeMap, time::Duration};

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

/// How requests authenticate. Secrets come from the environment, never from the file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The environment variable holding the token.
        token_env: String,
    },
    /// HTTP basic auth.
    Basic {
        /// The user name.
        user: String,
        /// The environment variable holding the password.
        password_env: String,
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
        client_secret_file: Option<std::path::PathBuf>,
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
        /// The environment variable holding the key.
        value_env: String,
    },
}

/// One stream: a list endpoint read incrementally.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream's name: its resource and its cursor partition.
    pub name: String,
    /// The path after `base_url` (`/repos/o/r/issues`).
    pub path: String,
    /// Fixed query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
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
    /// The query parameter the start value goes in (`since`, `updated[gte]`); the API must
    /// return records whose cursor is at or after it.
    pub param: String,
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
        match &self.auth {
            Auth::ApiKey { header, query, .. } if header.is_some() == query.is_some() => Err(
                "auth: an api_key goes in a `header` or a `query` parameter (one of them)".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The interval between syncs.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}
