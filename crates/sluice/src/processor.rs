//! Defines the processor: it resolves each envelope's resource, transforms it, buffers records
//! per destination, flushes batches, isolates poison, and saves the contiguous watermark.
//!
//! This is the only code that sees both records and cursors, so "write, then save" can be read
//! in one place: a cursor is handed to the store (or to a transactional sink) only when every
//! envelope up to it is written, dropped or dead-lettered, across all destinations.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, BackoffPolicy},
    checkpoint::{CheckpointStore, Lease, merge_monotonic},
    envelope::{Checkpoint, Checkpoints, EnvelopeMeta, ResourceName},
    error::{ErrorClass, PipelineError, SinkError, StoreError},
    record::{DeadLetter, Record},
    resource::{Mapping, OnError, Resource, Transformed},
    sink::{BatchLimits, CheckpointCommit, Sink},
    source::{Item, Rejected},
    stats::PipelineStats,
};

/// Marks "no more envelopes will follow in this buffer": everything before this seq is done.
type Seq = u64;

#[derive(Clone, Copy, Debug)]
struct RecordMeta {
    seq: Seq,
    resource: u32,
}

/// One destination's buffer and its sink.
pub(crate) struct Slot<T, K> {
    pub(crate) name: String,
    pub(crate) sink: K,
    pub(crate) limits: BatchLimits,
    records: Vec<T>,
    meta: Vec<RecordMeta>,
    bytes: usize,
    first_at: Option<Instant>,
    transactional: bool,
}

impl<T: Record, K: Sink<T>> Slot<T, K> {
    pub(crate) fn new(name: String, sink: K, limits: BatchLimits) -> Self {
        Self {
            name,
            sink,
            limits,
            records: Vec::new(),
            meta: Vec::new(),
            bytes: 0,
            first_at: None,
            transactional: false,
        }
    }

    fn push(&mut self, record: T, meta: RecordMeta) {
        if self.records.is_empty() {
            self.first_at = Some(Instant::now());
        }
        self.bytes += record.size_hint();
        self.records.push(record);
        self.meta.push(meta);
    }

    fn is_full(&self) -> bool {
        self.records.len() >= self.limits.max_records || self.bytes >= self.limits.max_bytes
    }

    fn first_pending(&self) -> Option<Seq> {
        self.meta.first().map(|m| m.seq)
    }

    fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|at| at + self.limits.linger)
    }

    fn clear(&mut self) {
        self.records.clear();
        self.meta.clear();
        self.bytes = 0;
        self.first_at = None;
    }
}

pub(crate) struct ResolvedResource<P, R> {
    pub(crate) name: ResourceName,
    pub(crate) destination: usize,
    pub(crate) mapping: Mapping<P, R>,
    pub(crate) on_error: OnError,
}

/// Settings of the processor.
pub(crate) struct ProcessorOptions {
    pub(crate) retry: BackoffPolicy,
    pub(crate) commit_interval: Duration,
    pub(crate) chunk: usize,
}

/// Which buffer a flush concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Data(usize),
    DeadLetters,
}

/// Why a write loop gave up.
enum WriteFailure {
    Fatal(SinkError),
    Stopped,
}

pub(crate) struct Processor<'s, P, R, S, D, C> {
    pipeline: Arc<str>,
    resources: Vec<ResolvedResource<P, R>>,
    index: HashMap<ResourceName, u32>,
    unknown: OnError,
    slots: Vec<Slot<R, S>>,
    dead: Option<Slot<DeadLetter, D>>,
    store: &'s C,
    lease: Lease,
    next_seq: Seq,
    pending: VecDeque<(Seq, Checkpoint)>,
    saved: Checkpoints,
    /// The durable cursors, published after each save for sources that acknowledge upstream.
    durable: tokio::sync::watch::Sender<Checkpoints>,
    last_save: Instant,
    options: ProcessorOptions,
    hard_stop: CancellationToken,
    stats: Arc<PipelineStats>,
}

impl<'s, P, R, S, D, C> Processor<'s, P, R, S, D, C>
where
    P: Serialize + Send + 'static,
    R: Record,
    S: Sink<R>,
    D: Sink<DeadLetter>,
    C: CheckpointStore,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pipeline: Arc<str>,
        resources: Vec<(ResourceName, Resource<P, R>, usize)>,
        unknown: OnError,
        mut slots: Vec<Slot<R, S>>,
        mut dead: Option<Slot<DeadLetter, D>>,
        store: &'s C,
        lease: Lease,
        options: ProcessorOptions,
        hard_stop: CancellationToken,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let scope = store.transaction_scope();
        for slot in &mut slots {
            slot.transactional = scope.is_some() && slot.sink.transaction_scope() == scope;
        }
        if let Some(dead) = &mut dead {
            dead.transactional = scope.is_some() && dead.sink.transaction_scope() == scope;
        }
        let mut index = HashMap::new();
        let resources = resources
            .into_iter()
            .enumerate()
            .map(|(i, (name, resource, destination))| {
                index.insert(name.clone(), i as u32);
                ResolvedResource {
                    name,
                    destination,
                    mapping: resource.mapping,
                    on_error: resource.on_error,
                }
            })
            .collect();
        Self {
            pipeline,
            resources,
            index,
            unknown,
            slots,
            dead,
            store,
            lease,
            next_seq: 0,
            pending: VecDeque::new(),
            saved: Checkpoints::new(),
            durable: tokio::sync::watch::Sender::new(Checkpoints::new()),
            last_save: Instant::now(),
            options,
            hard_stop,
            stats,
        }
    }

    /// A receiver of the durable cursors (updated after every save).
    pub(crate) fn durable(&self) -> tokio::sync::watch::Receiver<Checkpoints> {
        self.durable.subscribe()
    }

    /// Starts a session from the cursors loaded from the store.
    pub(crate) fn begin_session(&mut self, saved: Checkpoints) {
        debug_assert!(
            self.pending.is_empty(),
            "a session began with unsaved cursors"
        );
        self.durable.send_replace(saved.clone());
        self.saved = saved;
    }

    /// Consumes the channel until it closes, then flushes everything and saves the last cursor.
    pub(crate) async fn consume(
        &mut self,
        rx: &mut mpsc::Receiver<Item<P>>,
    ) -> Result<(), PipelineError> {
        let mut chunk = Vec::with_capacity(self.options.chunk);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                received = rx.recv_many(&mut chunk, self.options.chunk) => {
                    if received == 0 {
                        break;
                    }
                    self.stats.add_envelopes(received as u64);
                    for item in chunk.drain(..) {
                        self.process(item).await?;
                        if self.dead.as_ref().is_some_and(Slot::is_full) {
                            self.flush(Target::DeadLetters).await?;
                        }
                    }
                    // A steady trickle keeps this branch ready, so the timer branch below may
                    // never be polled: honour lingers that expired meanwhile here.
                    if self.next_deadline().is_some_and(|d| d <= Instant::now()) {
                        self.flush_due().await?;
                    }
                }
                _ = sleep_until_opt(deadline) => self.flush_due().await?,
            }
        }
        self.drain().await
    }

    /// Flushes every buffer (data first: its rejects go to the dead letters) and saves.
    pub(crate) async fn drain(&mut self) -> Result<(), PipelineError> {
        for index in 0..self.slots.len() {
            self.flush(Target::Data(index)).await?;
        }
        self.flush(Target::DeadLetters).await?;
        self.save_ready().await
    }

    fn next_deadline(&self) -> Option<Instant> {
        let slots = self.slots.iter().filter_map(Slot::deadline);
        let dead = self.dead.as_ref().and_then(Slot::deadline);
        let save = self
            .has_unsaved_ready()
            .then(|| self.last_save + self.options.commit_interval);
        slots.chain(dead).chain(save).min()
    }

    async fn flush_due(&mut self) -> Result<(), PipelineError> {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if self.slots[index].deadline().is_some_and(|d| d <= now) {
                self.flush(Target::Data(index)).await?;
            }
        }
        if self
            .dead
            .as_ref()
            .and_then(Slot::deadline)
            .is_some_and(|d| d <= now)
        {
            self.flush(Target::DeadLetters).await?;
        }
        if self.has_unsaved_ready() && self.last_save + self.options.commit_interval <= now {
            self.save_ready().await?;
        }
        Ok(())
    }

    async fn process(&mut self, item: Item<P>) -> Result<(), PipelineError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        match item {
            Item::Envelope(envelope) => {
                if let Some(checkpoint) = &envelope.checkpoint {
                    self.pending.push_back((seq, checkpoint.clone()));
                }
                let Some(&resource) = self.index.get(&envelope.resource) else {
                    let reason = format!("no resource named {:?}", &*envelope.resource);
                    let payload = render(&envelope.payload);
                    let policy = self.unknown;
                    let letter = self.letter(
                        &envelope.resource,
                        reason,
                        ErrorClass::Data,
                        payload,
                        &envelope,
                    );
                    return self.poison(policy, letter, seq);
                };
                let entry = &self.resources[resource as usize];
                let checkpoint = envelope.checkpoint.as_ref();
                let mapped = match &entry.mapping {
                    Mapping::Direct(direct) => {
                        direct(envelope.payload).map_err(|(p, e)| (render(&p), e))
                    }
                    Mapping::Transform(transform) => {
                        let meta = EnvelopeMeta {
                            resource: &entry.name,
                            checkpoint,
                        };
                        transform
                            .apply(&envelope.payload, &meta)
                            .map_err(|e| (render(&envelope.payload), e))
                    }
                };
                match mapped {
                    Ok(records) => self.buffer(resource, seq, records).await,
                    Err((payload, error)) => {
                        let policy = entry.on_error;
                        let letter = DeadLetter::new(
                            &self.pipeline,
                            &entry.name,
                            error.to_string(),
                            ErrorClass::Data,
                            payload,
                            checkpoint,
                        );
                        self.poison(policy, letter, seq)
                    }
                }
            }
            Item::Advance(checkpoint) => {
                self.pending.push_back((seq, checkpoint));
                Ok(())
            }
            Item::Rejected(rejected) => {
                if let Some(checkpoint) = &rejected.checkpoint {
                    self.pending.push_back((seq, checkpoint.clone()));
                }
                let policy = self
                    .index
                    .get(&rejected.resource)
                    .map_or(self.unknown, |&i| self.resources[i as usize].on_error);
                let Rejected {
                    resource,
                    raw,
                    reason,
                    checkpoint,
                } = rejected;
                let letter = DeadLetter::new(
                    &self.pipeline,
                    &resource,
                    reason,
                    ErrorClass::Data,
                    raw,
                    checkpoint.as_ref(),
                );
                self.poison(policy, letter, seq)
            }
        }
    }

    fn letter(
        &self,
        resource: &str,
        reason: String,
        class: ErrorClass,
        payload: String,
        envelope: &crate::Envelope<P>,
    ) -> DeadLetter {
        DeadLetter::new(
            &self.pipeline,
            resource,
            reason,
            class,
            payload,
            envelope.checkpoint.as_ref(),
        )
    }

    async fn buffer(
        &mut self,
        resource: u32,
        seq: Seq,
        records: Transformed<R>,
    ) -> Result<(), PipelineError> {
        let index = self.resources[resource as usize].destination;
        let meta = RecordMeta { seq, resource };
        let slot = &mut self.slots[index];
        match records {
            Transformed::Drop => return Ok(()),
            Transformed::One(record) => slot.push(record, meta),
            Transformed::Many(records) => {
                for record in records {
                    slot.push(record, meta);
                }
            }
        }
        if slot.is_full() {
            self.flush(Target::Data(index)).await?;
        }
        Ok(())
    }

    /// The resource as a metric label: a configured resource's name, or `unknown` for names the
    /// input chose (a label per input-chosen name would be an unbounded set of series).
    fn metric_label<'n>(&self, resource: &'n str) -> &'n str {
        if self.resources.iter().any(|r| &*r.name == resource) {
            resource
        } else {
            "unknown"
        }
    }

    /// Applies a poison policy to one input. The dead-letter buffer is flushed by the caller's
    /// loop (not from here: a flush can reject records, which lands back here).
    fn poison(
        &mut self,
        policy: OnError,
        letter: DeadLetter,
        seq: Seq,
    ) -> Result<(), PipelineError> {
        self.stats.add_error(ErrorClass::Data);
        match policy {
            OnError::Fail => Err(PipelineError::Poison {
                pipeline: self.pipeline.to_string(),
                resource: letter.resource,
                reason: letter.reason,
            }),
            OnError::Skip => {
                tracing::warn!(pipeline = %self.pipeline, resource = %letter.resource, reason = %letter.reason, "poison input skipped");
                self.stats.add_skipped(self.metric_label(&letter.resource));
                Ok(())
            }
            OnError::DeadLetter => {
                tracing::warn!(pipeline = %self.pipeline, resource = %letter.resource, reason = %letter.reason, "poison input dead-lettered");
                self.stats
                    .add_dead_letter(self.metric_label(&letter.resource));
                let Some(dead) = &mut self.dead else {
                    return Err(PipelineError::Config {
                        pipeline: self.pipeline.to_string(),
                        message:
                            "poison input needs a dead-letter destination and none is configured"
                                .into(),
                    });
                };
                dead.push(
                    letter,
                    RecordMeta {
                        seq,
                        resource: u32::MAX,
                    },
                );
                Ok(())
            }
        }
    }

    /// The first envelope that is not done yet, ignoring `skip`'s buffer (as if it were flushed).
    fn first_not_done(&self, skip: Option<Target>) -> Seq {
        let data = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| skip != Some(Target::Data(*i)))
            .filter_map(|(_, slot)| slot.first_pending());
        let dead = match skip {
            Some(Target::DeadLetters) => None,
            _ => self.dead.as_ref().and_then(Slot::first_pending),
        };
        data.chain(dead).min().unwrap_or(self.next_seq)
    }

    fn has_unsaved_ready(&self) -> bool {
        self.pending
            .front()
            .is_some_and(|(seq, _)| *seq < self.first_not_done(None))
    }

    /// The newest position per partition among cursors of envelopes before `limit`.
    fn ready(&self, limit: Seq) -> Vec<Checkpoint> {
        ready(&self.pending, &self.saved, limit)
    }

    fn mark_saved(&mut self, limit: Seq, checkpoints: &[Checkpoint]) {
        while self.pending.front().is_some_and(|(seq, _)| *seq < limit) {
            self.pending.pop_front();
        }
        merge_monotonic(&mut self.saved, checkpoints);
        self.last_save = Instant::now();
        if !checkpoints.is_empty() {
            self.stats.add_checkpoint_save();
            self.stats.set_saved(&self.saved, checkpoints);
            self.durable.send_replace(self.saved.clone());
        }
    }

    /// Saves the watermark through the store, retrying transient errors.
    async fn save_ready(&mut self) -> Result<(), PipelineError> {
        let limit = self.first_not_done(None);
        let checkpoints = self.ready(limit);
        if !checkpoints.is_empty() {
            let mut backoff = Backoff::new(self.options.retry);
            loop {
                match self.store.save(&self.lease, &checkpoints).await {
                    Ok(()) => break,
                    Err(error) if error.class() == ErrorClass::Transient => {
                        self.stats.add_error(ErrorClass::Transient);
                        tracing::warn!(pipeline = %self.pipeline, %error, "checkpoint save failed; retrying");
                        if !self.wait(&mut backoff).await {
                            return Err(self.drain_timeout());
                        }
                    }
                    Err(error) => return Err(self.store_error(error)),
                }
            }
        }
        self.mark_saved(limit, &checkpoints);
        Ok(())
    }

    fn store_error(&self, source: StoreError) -> PipelineError {
        PipelineError::Store {
            pipeline: self.pipeline.to_string(),
            source,
        }
    }

    fn drain_timeout(&self) -> PipelineError {
        PipelineError::DrainTimeout {
            pipeline: self.pipeline.to_string(),
            seconds: 0.0,
        }
    }

    /// Sleeps one backoff step; false when the hard stop fired.
    async fn wait(&self, backoff: &mut Backoff) -> bool {
        let delay = backoff.next_delay();
        tokio::select! {
            _ = self.hard_stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Writes one buffer (the whole buffer), then saves the watermark it allows.
    async fn flush(&mut self, target: Target) -> Result<(), PipelineError> {
        // A transactional slot that stopped at a rejected record goes on after its dead letter.
        while self.flush_once(target).await? {}
        Ok(())
    }

    /// One pass of [`flush`](Self::flush); `true` when records are left to write.
    async fn flush_once(&mut self, target: Target) -> Result<bool, PipelineError> {
        let empty = match target {
            Target::Data(i) => self.slots[i].records.is_empty(),
            Target::DeadLetters => self.dead.as_ref().is_none_or(|d| d.records.is_empty()),
        };
        if empty {
            return Ok(false);
        }
        let limit = self.first_not_done(Some(target));
        let transactional = match target {
            Target::Data(i) => self.slots[i].transactional,
            Target::DeadLetters => self.dead.as_ref().is_some_and(|d| d.transactional),
        };
        let checkpoints = if transactional {
            self.ready(limit)
        } else {
            Vec::new()
        };
        // A transactional write always carries the lease (and the cursors it may save, perhaps
        // none): a writer that lost its lease must not commit rows either.
        let commit = transactional.then(|| CheckpointCommit {
            pipeline: &self.pipeline,
            lease: &self.lease,
            checkpoints: &checkpoints,
        });
        let pipeline = self.pipeline.clone();
        let retry = self.options.retry;
        let hard_stop = self.hard_stop.clone();
        let stats = self.stats.clone();
        let prefix = Prefix {
            pending: &self.pending,
            saved: &self.saved,
            limit,
        };
        let outcome = match target {
            Target::Data(i) => {
                write_isolating(
                    (&pipeline, &stats),
                    &mut self.slots[i],
                    commit.as_ref(),
                    Some(prefix),
                    retry,
                    &hard_stop,
                )
                .await
            }
            Target::DeadLetters => {
                let dead = self.dead.as_mut().expect("checked non-empty above");
                write_isolating(
                    (&pipeline, &stats),
                    dead,
                    commit.as_ref(),
                    Some(prefix),
                    retry,
                    &hard_stop,
                )
                .await
            }
        };
        let Isolated {
            committed,
            parts,
            rejected,
            resume,
        } = match outcome {
            Ok(done) => done,
            Err(WriteFailure::Stopped) => return Err(self.drain_timeout()),
            Err(WriteFailure::Fatal(source)) => {
                let destination = match target {
                    Target::Data(i) => self.slots[i].name.clone(),
                    Target::DeadLetters => "dead_letters".to_owned(),
                };
                return Err(PipelineError::Sink {
                    pipeline: self.pipeline.to_string(),
                    destination,
                    source,
                });
            }
        };
        if let Some((limit, cursors)) = parts {
            self.mark_saved(limit, &cursors);
        }
        match target {
            Target::Data(i) => {
                let slot = &mut self.slots[i];
                let mut records = std::mem::take(&mut slot.records);
                let mut meta = std::mem::take(&mut slot.meta);
                slot.clear();
                let rest = resume.map(|at| (records.split_off(at), meta.split_off(at)));
                self.stats
                    .add_written(&self.slots[i].name, records.len() - rejected.len());
                self.reject_records(records, meta, rejected)?;
                let slot = &mut self.slots[i];
                if let Some((records, meta)) = rest {
                    for (record, meta) in records.into_iter().zip(meta) {
                        slot.push(record, meta);
                    }
                    // The dead letters first (and the cursor up to them), then the rest.
                    Box::pin(self.flush(Target::DeadLetters)).await?;
                    return Ok(true);
                }
                if slot.records.capacity() == 0 {
                    slot.records.reserve(slot.limits.max_records.min(1 << 16));
                }
            }
            Target::DeadLetters => {
                if !rejected.is_empty() {
                    let (_, error) = &rejected[0];
                    return Err(PipelineError::Sink {
                        pipeline: self.pipeline.to_string(),
                        destination: "dead_letters".into(),
                        source: SinkError::fatal(format!(
                            "the dead-letter destination rejected a row: {error}"
                        )),
                    });
                }
                if let Some(dead) = &mut self.dead {
                    dead.clear();
                }
            }
        }
        if committed {
            self.mark_saved(limit, &checkpoints);
        } else {
            self.save_ready().await?;
        }
        Ok(false)
    }

    /// Sends records the destination rejected through their resource's poison policy.
    fn reject_records(
        &mut self,
        records: Vec<R>,
        meta: Vec<RecordMeta>,
        rejected: Vec<(usize, SinkError)>,
    ) -> Result<(), PipelineError> {
        if rejected.is_empty() {
            return Ok(());
        }
        for (index, error) in rejected {
            let RecordMeta { seq, resource } = meta[index];
            let entry = &self.resources[resource as usize];
            let checkpoint = self
                .pending
                .iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, c)| c.clone());
            let letter = DeadLetter::new(
                &self.pipeline,
                &entry.name,
                format!("rejected by the destination: {error}"),
                ErrorClass::Data,
                records[index].to_json().to_string(),
                checkpoint.as_ref(),
            );
            let policy = entry.on_error;
            self.poison(policy, letter, seq)?;
        }
        Ok(())
    }
}

/// The newest position per partition among `pending` cursors of envelopes before `limit`, those
/// newer than `saved` only.
fn ready(
    pending: &VecDeque<(Seq, Checkpoint)>,
    saved: &Checkpoints,
    limit: Seq,
) -> Vec<Checkpoint> {
    // Few partitions per pipeline and long runs of the same one: a vector searched from its
    // end beats a map on this per-envelope path.
    let mut newest: Vec<&Checkpoint> = Vec::new();
    for (seq, checkpoint) in pending {
        if *seq >= limit {
            break;
        }
        let same = |c: &&Checkpoint| {
            Arc::ptr_eq(&c.partition, &checkpoint.partition) || c.partition == checkpoint.partition
        };
        match newest.iter().rposition(same) {
            Some(i) => newest[i] = checkpoint,
            None => newest.push(checkpoint),
        }
    }
    newest
        .into_iter()
        .filter(|c| saved.get(&c.partition).is_none_or(|p| *p < c.position))
        .cloned()
        .collect()
}

/// What a transactional slot commits with a part of its buffer when it is bisected: the cursors
/// of the envelopes wholly before the part's end.
struct Prefix<'a> {
    pending: &'a VecDeque<(Seq, Checkpoint)>,
    saved: &'a Checkpoints,
    /// The watermark of the whole buffer.
    limit: Seq,
}

/// Writes a slot's buffer: retries transient errors with backoff, bisects on data errors to find
/// the records the destination rejects. Returns whether `commit` went in with the write, and the
/// indices of rejected records with their errors.
///
/// A transactional slot commits every part it writes with the cursors of what is done before the
/// part's end (never past a rejected record, whose dead letter is not written yet), so a crash
/// between two parts replays nothing already committed.
async fn write_isolating<T: Record, K: Sink<T>>(
    (pipeline, stats): (&str, &PipelineStats),
    slot: &mut Slot<T, K>,
    commit: Option<&CheckpointCommit<'_>>,
    prefix: Option<Prefix<'_>>,
    retry: BackoffPolicy,
    hard_stop: &CancellationToken,
) -> Result<Isolated, WriteFailure> {
    let mut rejected: Vec<(usize, SinkError)> = Vec::new();
    let mut backoff = Backoff::new(retry);
    // Ranges still to write, last = next; the whole buffer first, with the cursors.
    let mut todo = vec![(0, slot.records.len())];
    let mut committed = false;
    // The cursors stored by the parts committed so far: a later part carries only newer ones.
    // Handing it an older part's cursors again would read, to a sink that detects a retried
    // commit by its cursors (Postgres), as "this part is already in": its rows would be
    // dropped. Cloned on the first part only (bisection is the rare path).
    let mut parts_saved: Option<Checkpoints> = None;
    // What the parts committed, for the caller's `saved` (see `Isolated::parts`).
    let mut parts: Option<(Seq, Vec<Checkpoint>)> = None;
    let started = std::time::Instant::now();
    while let Some((from, to)) = todo.pop() {
        let whole = from == 0 && to == slot.records.len();
        // Parts are written left to right: everything before `from` is written or rejected.
        // A transactional slot (`commit` is `Some`) commits each part with the lease check and
        // the cursors done before the part's end.
        let (part_limit, part_cursors) = match (&prefix, commit) {
            (Some(prefix), Some(_)) if !whole => {
                let end = slot.meta.get(to).map_or(prefix.limit, |m| m.seq);
                let first_rejected = rejected.iter().map(|(i, _)| slot.meta[*i].seq).min();
                let limit = first_rejected.map_or(end, |r| r.min(end)).min(prefix.limit);
                let cursors = ready(
                    prefix.pending,
                    parts_saved.as_ref().unwrap_or(prefix.saved),
                    limit,
                );
                (limit, cursors)
            }
            _ => (Seq::default(), Vec::new()),
        };
        let part_commit = commit.map(|c| CheckpointCommit {
            pipeline: c.pipeline,
            lease: c.lease,
            checkpoints: &part_cursors,
        });
        let with_commit = if whole { commit } else { part_commit.as_ref() };
        let result = tokio::select! {
            biased;
            _ = hard_stop.cancelled() => return Err(WriteFailure::Stopped),
            result = slot.sink.write(&slot.records[from..to], with_commit) => result,
        };
        match result {
            Ok(()) => {
                committed |= whole && commit.is_some();
                if !whole && !part_cursors.is_empty() {
                    merge_monotonic(
                        parts_saved.get_or_insert_with(|| {
                            prefix.as_ref().map(|p| p.saved.clone()).unwrap_or_default()
                        }),
                        &part_cursors,
                    );
                    let (limit, cursors) = parts.get_or_insert_with(Default::default);
                    *limit = part_limit;
                    cursors.extend(part_cursors.iter().cloned());
                }
            }
            Err(error) => match error.class() {
                ErrorClass::Transient => {
                    stats.add_error(ErrorClass::Transient);
                    tracing::warn!(pipeline, destination = %slot.name, %error, attempt = backoff.attempts() + 1, "write failed; retrying");
                    metrics::counter!("sluice_write_retries_total", "pipeline" => pipeline.to_owned(), "destination" => slot.name.clone()).increment(1);
                    todo.push((from, to));
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = hard_stop.cancelled() => return Err(WriteFailure::Stopped),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                ErrorClass::Data
                    if error.partial_rejections().is_some() && with_commit.is_none() =>
                {
                    // The rest of the part is written: only these records are poison.
                    for (index, reason) in error.partial_rejections().unwrap_or_default() {
                        if from + index < to {
                            rejected.push((from + index, SinkError::data(reason.clone())));
                        }
                    }
                    rejected.sort_by_key(|(i, _)| *i);
                }
                ErrorClass::Data if to - from == 1 => {
                    rejected.push((from, error));
                    if prefix.is_some() && commit.is_some() && to < slot.records.len() {
                        // Transactional: what follows may commit its cursors only once this
                        // record's dead letter is written. Stop here; the rest is written after.
                        return Ok(Isolated {
                            committed,
                            parts,
                            rejected,
                            resume: Some(to),
                        });
                    }
                }
                ErrorClass::Data => {
                    let mid = from + (to - from) / 2;
                    todo.push((mid, to));
                    todo.push((from, mid));
                }
                ErrorClass::Fatal => return Err(WriteFailure::Fatal(error)),
            },
        }
    }
    tracing::debug!(pipeline, destination = %slot.name, records = slot.records.len(), write_ms = started.elapsed().as_secs_f64() * 1e3, "batch written");
    metrics::histogram!("sluice_batch_write_seconds", "pipeline" => pipeline.to_owned(), "destination" => slot.name.clone())
        .record(started.elapsed().as_secs_f64());
    Ok(Isolated {
        committed,
        parts,
        rejected,
        resume: None,
    })
}

/// What [`write_isolating`] did.
struct Isolated {
    /// Whether the whole buffer's cursors went in with the write.
    committed: bool,
    /// When the buffer was bisected: the limit of the last part that committed cursors, and
    /// the cursors the parts committed. The caller marks them saved before any other write, or
    /// the next write in the same transaction (the dead letters of a rejected record) would
    /// carry them again and be taken for a retried commit.
    parts: Option<(Seq, Vec<Checkpoint>)>,
    /// Indices of rejected records, with their errors.
    rejected: Vec<(usize, SinkError)>,
    /// Where writing stopped after a rejected record (transactional slots): the records from
    /// here on are not written yet.
    resume: Option<usize>,
}

fn render<P: Serialize>(payload: &P) -> String {
    serde_json::to_string(payload)
        .unwrap_or_else(|error| format!("<payload not serializable: {error}>"))
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
