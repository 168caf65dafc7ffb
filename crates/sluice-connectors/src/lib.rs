//! Sources for sluice. Each connector is a folder in the seed's shape: `source.rs` (the
//! session: connect, read, resume), `types.rs` (wire and payload types), `connector.rs`
//! (defaults and composition), and `sinks.rs` where a connector ships default destinations.
//!
//! - [`file`](mod@file): tails a JSON-lines file; the cursor is the byte offset after the last line.
//! - [`coinbase`]: Coinbase Exchange trades (`matches` + `heartbeat`), gap-free: gaps are
//!   detected by trade id and heartbeat and backfilled through REST.
//! - [`postgres_cdc`]: Postgres logical replication (`pgoutput`) from a persistent slot; the
//!   commit LSN is the cursor and is acknowledged only once durable.
//! - [`supabase`]: Supabase Realtime `postgres_changes`, gap-free through PostgREST keyset
//!   backfill on every (re)subscribe.

#[cfg(feature = "coinbase")]
pub mod coinbase;
#[cfg(feature = "file")]
pub mod file;
pub mod fuzz;
#[cfg(any(feature = "coinbase", feature = "supabase"))]
pub mod http;
#[cfg(feature = "postgres_cdc")]
pub mod postgres_cdc;
#[cfg(feature = "supabase")]
pub mod supabase;
pub mod template;
#[cfg(any(feature = "coinbase", feature = "supabase"))]
pub mod websocket;
