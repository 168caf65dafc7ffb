//! sluice: durable connector pipelines.
//!
//! A [`Source`] emits [`Envelope`]s `{resource, payload, checkpoint}` through a bounded channel.
//! The processor maps each envelope through its [`Resource`] (destination, optional
//! [`Transform`], poison policy [`OnError`]) into records, batches them per destination
//! ([`BatchLimits`]), writes each batch with one [`Sink::write`], and saves the *contiguous
//! watermark* through the [`CheckpointStore`] only after the writes it covers are durable.
//!
//! ```text
//! Source ──emit──▶ [bounded channel] ──▶ processor ──▶ Sink (one per destination)
//!   ▲                                     │   └──────▶ dead letters
//!   └── resume after saved cursors ◀── CheckpointStore ◀── save watermark after the write
//! ```
//!
//! The [`Pipeline`] run loop owns one pipeline's life: lease, load, session, drain, save,
//! backoff, reopen. The [`Supervisor`] runs many and restarts the ones that fail transiently.
//! The durable contract this crate keeps is written down in `docs/contracts.md`.

mod backoff;
mod checkpoint;
mod envelope;
mod error;
#[cfg(feature = "jq")]
mod jq;
mod pipeline;
mod processor;
mod record;
mod resource;
mod sink;
mod source;
mod stats;
mod supervisor;
#[cfg(feature = "testing")]
pub mod testing;
mod watchdog;

pub use backoff::{Backoff, BackoffPolicy};
pub use checkpoint::{
    CheckpointStore, Lease, MemoryStore, lease_held_message, lease_lost_message, merge_monotonic,
};
pub use envelope::{Checkpoint, Checkpoints, Envelope, EnvelopeMeta, Position, ResourceName};
pub use error::{
    BoxError, ErrorClass, PipelineError, SinkError, SourceError, StoreError, TransformError,
};
#[cfg(feature = "jq")]
pub use jq::JqTransform;
pub use pipeline::{NoDeadLetters, Pipeline, PipelineExit, PipelineOptions, default_holder};
pub use record::{Column, ColumnType, DeadLetter, Record, TableSchema};
pub use resource::{IntoRecords, OnError, Resource, Resources, Transform, Transformed};
pub use sink::{BatchLimits, CheckpointCommit, NullSink, Sink};
pub use source::{Rejected, SessionEnd, Source, SourceContext};
pub use stats::{PipelineStats, StatsSnapshot};
pub use supervisor::{Health, PipelineState, Supervisor, report};
