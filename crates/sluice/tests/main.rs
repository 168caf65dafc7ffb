//! The durable contract as a specification: one integration binary, one module per concern.
//! Invariant numbers refer to DESIGN.md §1.

mod common;

// The four behaviour cases of the seed POC (seed-poc-behaviour.md §6), adapted where sluice
// deliberately differs.
mod seed_behaviour;
// Invariants 1 and 2: write then save, contiguous watermark, monotonic cursors, real resume.
mod durability;
// Invariant 4: poison is isolated.
mod poison;
// Invariant 5: errors have a class.
mod error_class;
// Invariant 6 and 7: bounded memory (backpressure) and cancellation.
mod flow;
// Invariant 8 and 9: single writer, and exactly-once with a transactional destination.
mod exactly_once;
// Random failure schedules never save ahead of the writes and never lose an envelope.
mod properties;
// The supervisor restarts transient failures and panics, stops on fatal ones.
mod supervision;
// Typed records: the derive and the dynamic JSON row.
mod records;
