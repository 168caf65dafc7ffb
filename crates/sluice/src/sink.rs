//! Defines the sink contract and the batch limits the runtime flushes by.

use std::{future::Future, time::Duration};

use crate::{checkpoint::Lease, envelope::Checkpoint, error::SinkError, record::DeadLetter};

/// The cursors that become durable with a write, handed to a sink that shares a transaction
/// with the checkpoint store (see [`Sink::transaction_scope`]).
#[derive(Debug)]
pub struct CheckpointCommit<'a> {
    /// The pipeline id.
    pub pipeline: &'a str,
    /// The lease under which the pipeline runs; the sink must refuse to save under a lost lease.
    pub lease: &'a Lease,
    /// The newest durable position of every partition that moved.
    pub checkpoints: &'a [Checkpoint],
}

/// Writes batches of records to one destination: a table, a topic, a file.
///
/// The runtime promises that `write` is never called concurrently on one sink and never with an
/// empty batch, and that a batch whose write failed is offered again (whole, or split when the
/// error is a data error) before anything after it. Implementers guarantee that `Ok` means
/// every record of the batch is durably acknowledged by the destination (transaction committed,
/// insert completed, every delivery report received); on `Err` the runtime assumes nothing was
/// written and may write the same records again, so writes must tolerate duplicates (upsert by
/// key, a version column, an idempotent producer). [`SinkError::class`] decides what follows:
/// transient errors are retried with backoff, a data error means a record of the batch is bad
/// (the runtime bisects the batch to find it and applies the resource's poison policy), a fatal
/// error stops the pipeline. A sink that knows which records were refused while the others
/// were written (per-message delivery reports) returns [`SinkError::partial`]: only those go
/// through the poison policy, and nothing is written twice.
///
/// When `commit` is `Some`, the sink must write those checkpoints in the same transaction as the
/// records (only sinks whose [`transaction_scope`](Sink::transaction_scope) equals the store's
/// get one), checking the lease: that is how SQLite and Postgres destinations get exactly-once.
///
/// # Cancel safety
/// `write` is not cancel safe: dropping its future may leave the batch written or not, and the
/// runtime then treats it as not written (the cursor did not move), so a replay follows.
pub trait Sink<R>: Send {
    /// Creates what the destination needs (tables, topics). Called once before the first write.
    fn prepare(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Writes `batch`, and `commit` in the same transaction when given.
    fn write(
        &mut self,
        batch: &[R],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// A name for the transaction domain this sink writes in (for example `sqlite:/abs/path.db`).
    /// When it equals the checkpoint store's, the runtime hands cursors to `write`.
    fn transaction_scope(&self) -> Option<&str> {
        None
    }
}

/// When a destination's buffer is flushed: whichever limit is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Records per write.
    pub max_records: usize,
    /// Approximate bytes per write ([`crate::Record::size_hint`]).
    pub max_bytes: usize,
    /// How long the first record of a batch may wait for more.
    pub linger: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_records: 10_000,
            max_bytes: 8 << 20,
            linger: Duration::from_millis(200),
        }
    }
}

/// A sink that acknowledges every batch and keeps nothing: for benchmarks and dry runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl<R: Sync> Sink<R> for NullSink {
    async fn write(&mut self, _: &[R], _: Option<&CheckpointCommit<'_>>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Writes dead letters through any sink — a table, a topic, a file. With
/// [`max_payload`](Self::max_payload) a payload is cut to a size the destination takes (an
/// input refused for its size would make a larger dead letter still; the cut and the original
/// length are recorded in it). A row the destination rejects is fatal: a dead letter has
/// nowhere left to go.
#[derive(Debug)]
pub struct DeadLetterSink<S> {
    inner: S,
    max_payload: Option<usize>,
}

impl<S> DeadLetterSink<S> {
    /// Dead letters through `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            max_payload: None,
        }
    }

    /// Cuts payloads longer than `bytes` (at a character boundary).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Sink<DeadLetter>> Sink<DeadLetter> for DeadLetterSink<S> {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.inner.prepare().await
    }

    async fn write(
        &mut self,
        batch: &[DeadLetter],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        let room = self.max_payload.unwrap_or(usize::MAX);
        let written = if batch.iter().any(|d| d.payload.len() > room) {
            let cut_batch: Vec<DeadLetter> = batch
                .iter()
                .cloned()
                .map(|mut d| {
                    cut(&mut d.payload, room);
                    d
                })
                .collect();
            self.inner.write(&cut_batch, commit).await
        } else {
            self.inner.write(batch, commit).await
        };
        written.map_err(SinkError::for_dead_letters)
    }

    fn transaction_scope(&self) -> Option<&str> {
        self.inner.transaction_scope()
    }
}

/// Cuts `text` to at most `room` bytes at a character boundary, noting the original length.
fn cut(text: &mut String, room: usize) {
    if text.len() <= room {
        return;
    }
    let original = text.len();
    let mut at = room;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    text.push_str(&format!("… (cut: {original} bytes in all)"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_payloads_are_cut_at_a_character_boundary() {
        let mut text = "é".repeat(10);
        cut(&mut text, 5);
        assert_eq!(text, "éé… (cut: 20 bytes in all)");
        let mut short = "abc".to_owned();
        cut(&mut short, 5);
        assert_eq!(short, "abc");
    }
}
