//! Supabase Realtime `postgres_changes` as a source, made gap-free by backfill.
//!
//! Realtime never replays: whatever changes while the socket is down, or between the join reply
//! and "Subscribed to PostgreSQL", is never delivered. So on every (re)subscribe, once the
//! subscription is live, each table is read again through PostgREST by keyset on a monotonic
//! column (`updated_at` by default, primary key as tie-breaker) from the table's durable cursor
//! minus an overlap window; backfilled rows and live events are written to a change table keyed
//! by (table, key, version, deleted), so what arrives twice converges. One cursor per table:
//! `(version, primary key)` of the last row a backfill pass read — only backfill moves it;
//! live events are stored at once but never move it, since Realtime drops changes without a
//! sign (a reconcile pass every `reconcile_ms` reads the table through again).
//!
//! Hard deletes are only seen live (backfill cannot see a row that is gone): a DELETE's
//! `old_record` holds the primary key with the default replica identity (set
//! `REPLICA IDENTITY FULL` for the whole old row; soft deletes make deletes backfillable).
//!
//! Layout, as every connector: [`config`] (serde + `validate()`), [`source`] (the session),
//! [`record`] (change records and their tables), [`connector`] (the built-in pipeline), and the
//! protocol files [`phoenix`] (Realtime frames) and [`rest`] (PostgREST keyset reads);
//! [`codegen`] generates record types from `information_schema`.

mod audit;
pub mod codegen;
pub mod config;
pub mod connector;
pub mod phoenix;
pub mod record;
pub mod rest;
pub mod source;

pub use audit::{StoredRow, TableAudit, audit_table, key_text};
pub use config::SupabaseConfig;
pub use connector::{PIPELINE_ID, RESOURCE, STATE_RESOURCE, Supabase, template};
pub use record::{change_record, changes_table, normalize_time, position, state_table};
pub use source::SupabaseSource;
