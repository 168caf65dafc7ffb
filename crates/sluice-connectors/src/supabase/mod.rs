//! Supabase Realtime `postgres_changes` as a source, made gap-free by backfill.
//!
//! Realtime never replays: whatever changes while the socket is down, or between the join reply
//! and "Subscribed to PostgreSQL", is never delivered. So on every (re)subscribe, once the
//! subscription is live, each table is read again through PostgREST by keyset on a monotonic
//! column (`updated_at` by default, primary key as tie-breaker) from the table's durable cursor
//! minus an overlap window; backfilled rows and live events are written to a change table keyed
//! by (table, key, version, deleted), so what arrives twice converges. One cursor per table:
//! `(version, primary key)` of the last durable change; live events move it only once the
//! session's backfill is done, so a crash mid-backfill resumes below anything it may have missed.
//!
//! Hard deletes are only seen live (backfill cannot see a row that is gone): a DELETE's
//! `old_record` holds the primary key with the default replica identity (set
//! `REPLICA IDENTITY FULL` for the whole old row; soft deletes make deletes backfillable).
//!
//! Layout as in the seed: [`connector`] (configuration, defaults), [`types`] (Phoenix frames,
//! change records), [`source`] (the session), [`rest`] (PostgREST keyset reads), [`sinks`]
//! (default tables), [`codegen`] (record types from `information_schema`).

pub mod codegen;
pub mod connector;
pub mod rest;
pub mod sinks;
pub mod source;
pub mod types;

pub use connector::{PIPELINE_ID, RESOURCE, STATE_RESOURCE, SupabaseConfig};
pub use sinks::{changes_table, state_table};
pub use source::SupabaseSource;
