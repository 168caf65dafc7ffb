//! Defines the source contract and the context a source session emits through.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{
    envelope::{Checkpoint, Checkpoints, Envelope, Position, ResourceName},
    error::SourceError,
    stats::PipelineStats,
};

/// How a session ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The source has nothing more and never will (a finite file read to its end): the pipeline
    /// drains, saves and completes.
    Finished,
    /// The server closed the session cleanly: the pipeline drains, saves, backs off and opens a
    /// new session from the saved cursors.
    Closed,
}

/// Connects to one feed and runs sessions on it, emitting envelopes.
///
/// The runtime promises: `run` is called with a context holding the cursors saved in the store
/// (never cursors from memory), never while another session of the same source runs, and again
/// after every session ends (after a backoff) until the pipeline stops. Emitting waits while the
/// pipeline is behind: that is the backpressure, a source must not buffer around it.
///
/// Implementers guarantee: the session resumes strictly after the saved cursor of each partition
/// (replaying or backfilling what the provider cannot replay, and reporting holes that cannot be
/// filled); envelopes are emitted in order per partition and a checkpoint covers its envelope and
/// everything before it in its partition; input that cannot be decoded is handed to
/// [`SourceContext::reject`] and the session goes on; heartbeats that carry no envelope call
/// [`SourceContext::alive`] so the idle watchdog knows the feed is live. The source never
/// transforms, writes or saves a cursor.
///
/// Return values: `Ok(SessionEnd)` as documented there; `Err` with a transient class for a
/// disconnect (the pipeline reconnects with backoff), with a fatal class for a configuration or
/// credential problem (the pipeline stops with that message).
///
/// # Cancel safety
/// The runtime drops the `run` future to stop a session (shutdown, idle watchdog, a failed
/// pipeline): everything the session opened must be released by `Drop`, and nothing emitted is
/// lost by it, since an envelope counts as emitted only once [`SourceContext::emit`] returned.
pub trait Source: Send {
    /// The payload type of the envelopes.
    type Payload: Send + 'static;

    /// A short name for logs ("coinbase", "file").
    fn name(&self) -> &str;

    /// How long the feed may stay silent (no envelope, no [`SourceContext::alive`]) before the
    /// session is considered dead and reopened. `None`: never.
    fn idle_timeout(&self) -> Option<Duration> {
        None
    }

    /// Runs one session.
    fn run(
        &mut self,
        ctx: SourceContext<Self::Payload>,
    ) -> impl Future<Output = Result<SessionEnd, SourceError>> + Send;
}

/// Input a source could not decode; it goes through the resource's poison policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The resource it was meant for (or the source's best guess).
    pub resource: ResourceName,
    /// The raw input, as text.
    pub raw: String,
    /// Why it could not be decoded.
    pub reason: String,
    /// Where the source is after it, so the cursor can move past it once it is dead-lettered.
    pub checkpoint: Option<Checkpoint>,
}

pub(crate) enum Item<P> {
    Envelope(Envelope<P>),
    Rejected(Rejected),
    Advance(Checkpoint),
}

impl<P> Item<P> {
    fn map<Q>(self, f: fn(P) -> Q) -> Item<Q> {
        match self {
            Item::Envelope(e) => Item::Envelope(Envelope {
                resource: e.resource,
                payload: f(e.payload),
                checkpoint: e.checkpoint,
            }),
            Item::Rejected(r) => Item::Rejected(r),
            Item::Advance(c) => Item::Advance(c),
        }
    }
}

/// Reports the newest position a provider has, like [`SourceContext::set_head`], from any task.
/// It belongs to the session that made it: once that session ends, its reports are dropped.
#[derive(Clone, Debug)]
pub struct Heads {
    stats: Arc<PipelineStats>,
    session: u64,
}

impl Heads {
    /// As [`SourceContext::set_head`]; nothing once the session that made this handle ended.
    pub fn set(&self, partition: &str, head: u64, unit: &'static str) {
        self.stats
            .set_head_of(Some(self.session), partition, head, unit);
    }
}

/// The pipeline stopped reading.
struct Closed;

/// A send under way: done at once, or waiting for room (backpressure).
enum Sending<'a> {
    Done(Result<(), Closed>),
    Waiting(std::pin::Pin<Box<dyn Future<Output = Result<(), Closed>> + Send + 'a>>),
}

/// Where a context's items go: the pipeline's channel, perhaps through a payload conversion
/// ([`SourceContext::map`]). A trait object so that a context of one payload type can feed a
/// pipeline of another without the source knowing.
trait Outlet<P>: Send + Sync {
    fn send(&self, item: Item<P>) -> Sending<'_>;
}

impl<P: Send + 'static> Outlet<P> for mpsc::Sender<Item<P>> {
    fn send(&self, item: Item<P>) -> Sending<'_> {
        match self.try_send(item) {
            Ok(()) => Sending::Done(Ok(())),
            Err(mpsc::error::TrySendError::Closed(_)) => Sending::Done(Err(Closed)),
            Err(mpsc::error::TrySendError::Full(item)) => Sending::Waiting(Box::pin(async move {
                mpsc::Sender::send(self, item).await.map_err(|_| Closed)
            })),
        }
    }
}

/// An outlet that converts payloads on the way.
struct Mapped<Q, P> {
    inner: Arc<dyn Outlet<P>>,
    f: fn(Q) -> P,
}

impl<Q: Send + 'static, P: Send + 'static> Outlet<Q> for Mapped<Q, P> {
    fn send(&self, item: Item<Q>) -> Sending<'_> {
        self.inner.send(item.map(self.f))
    }
}

/// What a session gets from the runtime: the saved cursors, the bounded emit channel, the
/// cancellation token and the liveness signal.
pub struct SourceContext<P> {
    checkpoints: Checkpoints,
    tx: Arc<dyn Outlet<P>>,
    cancel: CancellationToken,
    liveness: Arc<Liveness>,
    durable: tokio::sync::watch::Receiver<Checkpoints>,
    stats: Arc<PipelineStats>,
}

impl<P> std::fmt::Debug for Item<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Envelope(e) => write!(f, "Envelope({})", e.resource),
            Item::Rejected(r) => write!(f, "Rejected({})", r.resource),
            Item::Advance(c) => write!(f, "Advance({})", c.partition),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Liveness {
    pub(crate) beats: AtomicU64,
    pub(crate) blocked: AtomicBool,
}

impl<P> std::fmt::Debug for SourceContext<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceContext")
            .field("checkpoints", &self.checkpoints)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl<P: Send + 'static> SourceContext<P> {
    pub(crate) fn new(
        checkpoints: Checkpoints,
        tx: mpsc::Sender<Item<P>>,
        cancel: CancellationToken,
        liveness: Arc<Liveness>,
        durable: tokio::sync::watch::Receiver<Checkpoints>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        stats.set_held(0);
        Self {
            checkpoints,
            tx: Arc::new(tx),
            cancel,
            liveness,
            durable,
            stats,
        }
    }

    /// Reports how many partitions the source holds at a hole it cannot fill (0: none). While
    /// any is held the pipeline is not ready (`/ready` answers 503); each session starts at 0.
    pub fn set_held(&self, partitions: u64) {
        self.stats.set_held(partitions);
    }

    /// Reports the newest position the provider has in `partition` (a socket's newest trade id,
    /// the server's WAL end), counted in `unit` (`"trades"`, `"bytes"`). Status pages then show
    /// the partition's lag, head minus durable cursor, and `sluice_source_lag` exports it. Only
    /// for integer positions; a report older than one already made is ignored. Cheap enough
    /// to call for every message.
    pub fn set_head(&self, partition: &str, head: u64, unit: &'static str) {
        self.stats.set_head(partition, head, unit);
    }

    /// A handle that reports heads from another task (a poller of the provider's position,
    /// which must keep reporting while the session waits on backpressure). Reports made
    /// after the session ended are dropped; stop the task with the session all the same.
    pub fn heads(&self) -> Heads {
        Heads {
            session: self.stats.head_session(),
            stats: self.stats.clone(),
        }
    }

    /// The cursors the runtime has made durable, updated after every save (and equal to
    /// [`checkpoints`](Self::checkpoints) when the session starts). A source whose upstream
    /// wants an acknowledgement (a Postgres replication slot's flush position, a queue's ack)
    /// sends it from here and from nowhere else: only what this shows may be acknowledged.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<Checkpoints> {
        self.durable.clone()
    }

    /// The saved cursors of every partition.
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// The saved position of `partition`: resume strictly after it.
    pub fn resume_after(&self, partition: &str) -> Option<&Position> {
        self.checkpoints.get(partition)
    }

    /// Emits an envelope, waiting while the pipeline is behind (backpressure).
    ///
    /// # Errors
    /// A transient error when the pipeline stopped reading (it is shutting down or failed): the
    /// session should return it.
    ///
    /// # Cancel safety
    /// Not cancel safe: if the future is dropped before it completes, the envelope may not have
    /// been emitted.
    pub async fn emit(&self, envelope: Envelope<P>) -> Result<(), SourceError> {
        self.send(Item::Envelope(envelope)).await
    }

    /// Hands over input that could not be decoded; the resource's poison policy applies.
    ///
    /// # Errors
    /// As [`SourceContext::emit`].
    pub async fn reject(&self, rejected: Rejected) -> Result<(), SourceError> {
        self.send(Item::Rejected(rejected)).await
    }

    /// Moves a partition's cursor without an envelope: progress that carries no data (a new
    /// pipeline's starting point, a heartbeat of a quiet table). It is saved like the cursor of
    /// a dropped envelope: once everything emitted before it is durable.
    ///
    /// # Errors
    /// As [`SourceContext::emit`].
    pub async fn advance(&self, checkpoint: Checkpoint) -> Result<(), SourceError> {
        self.send(Item::Advance(checkpoint)).await
    }

    /// This context for a source of payload `Q`, each converted by `f` on the way: how one
    /// pipeline of a record enum runs sources of its variants (`ctx.map(Any::Trade)`).
    pub fn map<Q: Send + 'static>(self, f: fn(Q) -> P) -> SourceContext<Q> {
        SourceContext {
            checkpoints: self.checkpoints,
            tx: Arc::new(Mapped { inner: self.tx, f }),
            cancel: self.cancel,
            liveness: self.liveness,
            durable: self.durable,
            stats: self.stats,
        }
    }

    async fn send(&self, item: Item<P>) -> Result<(), SourceError> {
        self.alive();
        let waiting = match self.tx.send(item) {
            Sending::Done(sent) => return sent.map_err(|_| stopped()),
            Sending::Waiting(waiting) => waiting,
        };
        self.liveness.blocked.store(true, Ordering::Relaxed);
        let sent = waiting.await;
        self.liveness.blocked.store(false, Ordering::Relaxed);
        self.alive();
        sent.map_err(|_| stopped())
    }

    /// Tells the idle watchdog the feed is live (a heartbeat that carries no envelope).
    pub fn alive(&self) {
        self.liveness.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when the session must stop (shutdown). Sessions blocked on I/O are simply dropped;
    /// this is for sources that want to close gracefully (send a close frame) first.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether the session must stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

fn stopped() -> SourceError {
    SourceError::transient("pipeline stopped reading")
}
