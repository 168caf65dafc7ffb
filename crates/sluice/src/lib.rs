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
//!
//! # Example
//!
//! A source of numbers, a transform that keeps the even ones as typed records, a sink that keeps
//! what it gets, and the in-memory store; a second run resumes after the saved cursor and writes
//! nothing again. The record is a struct with `#[derive(Record)]`: the struct is its table
//! definition (columns, types, key), and sinks take its values column by column, with no map in
//! between.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use sluice::*;
//! use tokio_util::sync::CancellationToken;
//!
//! struct Numbers(u64);
//!
//! impl Source for Numbers {
//!     type Payload = u64;
//!     fn name(&self) -> &str { "numbers" }
//!     async fn run(&mut self, ctx: SourceContext<u64>) -> Result<SessionEnd, SourceError> {
//!         let after = ctx.resume_after("n").and_then(Position::as_int).unwrap_or(0);
//!         for n in after + 1..=self.0 {
//!             ctx.emit(Envelope::new("numbers", n).with_checkpoint(Checkpoint::new("n", n))).await?;
//!         }
//!         Ok(SessionEnd::Finished)
//!     }
//! }
//!
//! #[derive(Clone, Debug, Record)]
//! #[record(table = "evens", key(n))]
//! struct Even {
//!     n: u64,
//!     #[record(decimal)]
//!     half: String,
//! }
//!
//! #[derive(Clone, Default)]
//! struct Keep(Arc<Mutex<Vec<Even>>>);
//!
//! impl Sink<Even> for Keep {
//!     async fn write(&mut self, batch: &[Even], _: Option<&CheckpointCommit<'_>>) -> Result<(), SinkError> {
//!         self.0.lock().unwrap().extend_from_slice(batch);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), PipelineError> {
//! let store = Arc::new(MemoryStore::new());
//! let kept = Keep::default();
//! let evens = |n: &u64, _: &EnvelopeMeta<'_>| -> Result<Transformed<Even>, TransformError> {
//!     Ok(if n % 2 == 0 { Transformed::One(Even { n: *n, half: (n / 2).to_string() }) } else { Transformed::Drop })
//! };
//! for _ in 0..2 {
//!     let resources = Resources::new().with("numbers", Resource::with_transform("kept", evens).on_error(OnError::Fail));
//!     Pipeline::new("example", Numbers(10), store.clone(), resources.on_unknown(OnError::Fail))
//!         .sink("kept", kept.clone(), BatchLimits::default())
//!         .run(CancellationToken::new())
//!         .await?;
//! }
//! assert_eq!(kept.0.lock().unwrap().len(), 5);
//! assert_eq!(<Even as Table>::schema().key, ["n"]);
//! assert_eq!(store.snapshot("example").get("n"), Some(&Position::Int(10)));
//! # Ok(())
//! # }
//! ```

// The derive names `::sluice::…`; this lets the crate derive its own records.
extern crate self as sluice;

mod backoff;
mod cell;
mod checkpoint;
pub mod codegen_support;
mod envelope;
mod error;
#[cfg(feature = "jq")]
mod jq;
mod pipeline;
mod processor;
mod record;
mod resource;
mod row;
mod sink;
mod source;
mod stats;
mod supervisor;
#[cfg(feature = "testing")]
pub mod testing;
mod watchdog;

pub use backoff::{Backoff, BackoffPolicy};
pub use cell::{AsCell, Cell, CellWriter, FieldPlan};
pub use checkpoint::{
    CheckpointStore, Lease, MemoryStore, lease_held_message, lease_lost_message, merge_monotonic,
};
pub use envelope::{Checkpoint, Checkpoints, Envelope, EnvelopeMeta, Position, ResourceName};
pub use error::{
    BoxError, ErrorClass, LeaseHeld, LeaseLost, PartialWrite, PipelineError, SinkError,
    SourceError, StoreError, TransformError,
};
#[cfg(feature = "jq")]
pub use jq::JqTransform;
pub use pipeline::{
    NoDeadLetters, Pipeline, PipelineExit, PipelineOptions, default_holder, host_identity,
};
pub use record::{Column, ColumnType, DeadLetter, Record, Table, TableSchema, is_plain_decimal};
/// `#[derive(Record)]`: see [`Record`] and the `sluice-derive` crate.
pub use sluice_derive::Record;

#[doc(hidden)]
pub mod __private {
    //! What derived code names; not public API.
    pub use serde_json;
}
pub use resource::{IntoRecords, OnError, Resource, Resources, Transform, Transformed};
pub use row::{Datum, Names, Row, RowPlan, Shapes};
pub use sink::{BatchLimits, CheckpointCommit, DeadLetterSink, NullSink, Sink};
pub use source::{Heads, Rejected, SessionEnd, Source, SourceContext};
pub use stats::{CursorStatus, PipelineStats, StatsSnapshot};
pub use supervisor::{Health, PipelineState, Supervisor, report};
