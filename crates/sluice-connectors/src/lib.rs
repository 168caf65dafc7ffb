//! Sources for sluice. Each connector is a folder of the same shape: `config.rs` (serde and
//! `validate()`), `source.rs` (the session: connect, read, resume), `record.rs` (its typed
//! records and their tables), `connector.rs` (the kind and the built-in pipeline, see
//! [`template`]), and protocol files where needed. `docs/guide/writing-a-connector.md` has the
//! steps to add one.
//!
//! - [`file`](mod@file): tails a JSON-lines file; the cursor is the byte offset after the last line.
//! - [`coinbase`]: Coinbase Exchange trades (`matches` + `heartbeat`), gap-free: gaps are
//!   detected by trade id and heartbeat and backfilled through REST.
//! - [`postgres_cdc`]: Postgres logical replication (`pgoutput`) from a persistent slot; the
//!   commit LSN is the cursor and is acknowledged only once durable.
//! - [`supabase`]: Supabase Realtime `postgres_changes`, gap-free through PostgREST keyset
//!   backfill on every (re)subscribe.
//! - [`http_poll`]: polls HTTP list endpoints incrementally (cursor field, lookback, pagination).
//! - [`change`]: the change record both database sources emit.

#[cfg(any(feature = "postgres_cdc", feature = "supabase"))]
pub mod change;
#[cfg(feature = "coinbase")]
pub mod coinbase;
#[cfg(feature = "file")]
pub mod file;
pub mod fuzz;
#[cfg(any(feature = "coinbase", feature = "supabase", feature = "http_poll"))]
pub mod http;
#[cfg(feature = "http_poll")]
pub mod http_poll;
#[cfg(feature = "postgres_cdc")]
pub mod postgres_cdc;
#[cfg(feature = "supabase")]
pub mod supabase;
pub mod template;
#[cfg(any(feature = "coinbase", feature = "supabase"))]
pub mod websocket;
