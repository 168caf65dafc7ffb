//! Polls HTTP list endpoints (SaaS REST APIs) incrementally: `kind = "http_poll"`.
//!
//! **Streams.** A source has one or more streams, each a list endpoint with its own resource
//! and its own cursor partition (the stream's name). Records are the API's JSON objects found at
//! a dotted path of each page (plus the stream's fixed `fields`), identified by a primary key.
//!
//! **The cursor** is a record field the API can filter on (`updated_at`, a sequence). A sync
//! asks for records at or after the durable cursor less `lookback` (inclusive: records that
//! share the cursor value are read again, never skipped), pages to the end, and emits each
//! record; the cursor moves only through the runtime, after the sink has the records:
//! - oldest first (`order = "ascending"`, the default): each record carries the highest value
//!   emitted so far as its checkpoint, so a restart resumes mid-sync;
//! - newest first: records carry none, paging stops below the start, and the newest value is
//!   saved once the sync ends (`ctx.advance`).
//!
//! Within a sync a record seen again at the highest value (pages shifted by an insert) is not
//! emitted twice; across a restart the boundary value and the lookback window are read again —
//! a keyed table converges (upsert by primary key), a change log gets each version at least
//! once. Records older than the window are skipped; a record without a primary key or cursor,
//! or a page that is not JSON, is dead-lettered.
//!
//! **Pagination**: none, the `Link` header, a next URL in the body, a token (from the body or
//! the last record, with an optional `has_more`), offset/limit, page numbers. Offset and page
//! numbers can skip a record that is updated while a sync pages (it moves to the end and shifts
//! the pages left): set `lookback` to at least a sync's duration, or page by token.
//!
//! **Schedule and errors**: syncs every stream, then sleeps `interval_ms` (+ `jitter_ms`).
//! Requests are paced by `requests_per_second` (a host budget); 429 and 5xx are retried with
//! backoff or the server's `Retry-After` / `X-RateLimit-Reset`; other statuses are classified
//! by the shared policy ([`crate::http`]): a bad credential or a missing endpoint is fatal.
//! Credentials (bearer, basic, API key in a header or the query) come from the environment and
//! never reach logs, errors or metrics.

mod audit;
mod config;
mod connector;
mod record;
mod request;
mod source;

pub use audit::{StreamAudit, audit_stream};
pub use config::{
    Action, Auth, BodyFormat, CursorConfig, CursorKind, HttpPollConfig, Inject, Method, Order,
    PageSize, Pagination, ParamsIn, Rule, StreamConfig,
};
pub use connector::HttpPoll;
pub use source::HttpPollSource;
