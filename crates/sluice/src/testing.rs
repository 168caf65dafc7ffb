//! Test doubles for the durable contract: a replayable scripted source, a recording sink that
//! can fail on command (and share a transaction with a memory store), and a store that fails on
//! command. Behind the `testing` feature.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use crate::{
    Checkpoint, CheckpointCommit, CheckpointStore, Checkpoints, Envelope, ErrorClass, Lease,
    MemoryStore, Position, Rejected, SessionEnd, Sink, SinkError, Source, SourceContext,
    SourceError, StoreError, merge_monotonic,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How one scripted session ends.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionScript {
    /// Emit at most `n` envelopes, then disconnect with an error of `class`.
    DisconnectAfter(usize, ErrorClass),
    /// Emit at most `n` envelopes, then close cleanly.
    CloseAfter(usize),
    /// Emit at most `n` envelopes, then go silent (for the idle watchdog).
    StallAfter(usize),
    /// Emit everything, then finish.
    Finish,
    /// Emit everything, then wait until cancelled (a live feed with nothing new).
    Hold,
}

/// One input of a scripted source: an envelope, or raw input the source cannot decode.
#[derive(Clone, Debug)]
pub enum ScriptedItem<P> {
    /// A decoded envelope.
    Envelope(Envelope<P>),
    /// Undecodable input.
    Rejected(Rejected),
    /// Progress without data.
    Advance(Checkpoint),
}

impl<P> ScriptedItem<P> {
    fn checkpoint(&self) -> Option<&Checkpoint> {
        match self {
            ScriptedItem::Envelope(e) => e.checkpoint.as_ref(),
            ScriptedItem::Rejected(r) => r.checkpoint.as_ref(),
            ScriptedItem::Advance(c) => Some(c),
        }
    }
}

/// A replayable source over a fixed log: each session emits the items whose position is after
/// the saved cursor of their partition (items without a checkpoint are emitted every session),
/// then ends as its script says. Records the cursors each session started from.
#[derive(Debug)]
pub struct ScriptedSource<P> {
    log: Vec<ScriptedItem<P>>,
    scripts: VecDeque<SessionScript>,
    after_scripts: SessionScript,
    starts: Arc<Mutex<Vec<Checkpoints>>>,
    idle_timeout: Option<Duration>,
}

impl<P: Clone + Send + Sync + 'static> ScriptedSource<P> {
    /// A source over `log` that emits everything and finishes.
    pub fn new(log: Vec<Envelope<P>>) -> Self {
        Self::from_items(log.into_iter().map(ScriptedItem::Envelope).collect())
    }

    /// A source over items, some of them rejected input.
    pub fn from_items(log: Vec<ScriptedItem<P>>) -> Self {
        Self {
            log,
            scripts: VecDeque::new(),
            after_scripts: SessionScript::Finish,
            starts: Arc::default(),
            idle_timeout: None,
        }
    }

    /// Scripts the sessions in order; after the script runs out, sessions do `then`.
    pub fn sessions(
        mut self,
        scripts: impl IntoIterator<Item = SessionScript>,
        then: SessionScript,
    ) -> Self {
        self.scripts = scripts.into_iter().collect();
        self.after_scripts = then;
        self
    }

    /// Sets the idle timeout the source declares.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The saved cursors each session started from, in order.
    pub fn starts(&self) -> Arc<Mutex<Vec<Checkpoints>>> {
        self.starts.clone()
    }
}

impl<P: Clone + Send + Sync + 'static> Source for ScriptedSource<P> {
    type Payload = P;

    fn name(&self) -> &str {
        "scripted"
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    async fn run(&mut self, ctx: SourceContext<P>) -> Result<SessionEnd, SourceError> {
        lock(&self.starts).push(ctx.checkpoints().clone());
        let script = self
            .scripts
            .pop_front()
            .unwrap_or_else(|| self.after_scripts.clone());
        let limit = match &script {
            SessionScript::DisconnectAfter(n, _)
            | SessionScript::CloseAfter(n)
            | SessionScript::StallAfter(n) => *n,
            SessionScript::Finish | SessionScript::Hold => usize::MAX,
        };
        let mut emitted = 0;
        for item in &self.log {
            if emitted == limit {
                break;
            }
            let replayed = item.checkpoint().is_some_and(|c| {
                ctx.resume_after(&c.partition)
                    .is_some_and(|saved| c.position <= *saved)
            });
            if replayed {
                continue;
            }
            match item.clone() {
                ScriptedItem::Envelope(e) => ctx.emit(e).await?,
                ScriptedItem::Rejected(r) => ctx.reject(r).await?,
                ScriptedItem::Advance(c) => ctx.advance(c).await?,
            }
            emitted += 1;
        }
        match script {
            SessionScript::DisconnectAfter(_, class) => {
                Err(SourceError::new(class, "scripted disconnect"))
            }
            SessionScript::CloseAfter(_) => Ok(SessionEnd::Closed),
            SessionScript::Finish => Ok(SessionEnd::Finished),
            SessionScript::StallAfter(_) => std::future::pending().await,
            SessionScript::Hold => {
                ctx.cancelled().await;
                Ok(SessionEnd::Closed)
            }
        }
    }
}

/// What a [`RecordingSink`] or [`FlakyStore`] does on its next calls.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// How many calls.
    pub times: usize,
    /// Fail with this class, or (`None`) behave normally.
    pub class: Option<ErrorClass>,
}

fn next_fault(faults: &mut VecDeque<Fault>) -> Option<ErrorClass> {
    let fault = faults.front_mut()?;
    fault.times = fault.times.saturating_sub(1);
    let class = fault.class;
    if fault.times == 0 {
        faults.pop_front();
    }
    class
}

#[derive(Debug)]
struct SinkState<R> {
    rows: Vec<R>,
    batches: Vec<usize>,
    faults: VecDeque<Fault>,
    calls: usize,
}

type Predicate<R> = Arc<dyn Fn(&R) -> bool + Send + Sync>;
type SaveCheck = Arc<dyn Fn(&[Checkpoint]) + Send + Sync>;

/// A sink that keeps every acknowledged record in memory. Clones share the rows, so a test keeps
/// one clone and hands the other to the pipeline.
///
/// It can fail its next writes ([`RecordingSink::fail_next`]), reject records a predicate picks
/// (a data error for any batch holding one, as a database with a constraint would), and share a
/// transaction with a [`MemoryStore`] ([`RecordingSink::transactional_with`]); then, like the
/// Postgres sink, it takes a write whose cursors are all stored already for a retried commit and
/// acknowledges it without writing.
#[derive(Clone)]
pub struct RecordingSink<R> {
    state: Arc<Mutex<SinkState<R>>>,
    reject: Option<Predicate<R>>,
    store: Option<(Arc<MemoryStore>, String)>,
}

impl<R> std::fmt::Debug for RecordingSink<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingSink").finish_non_exhaustive()
    }
}

impl<R: Clone + Send + Sync + 'static> Default for RecordingSink<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: crate::Record + Clone> RecordingSink<R> {
    /// The acknowledged rows as JSON, in write order.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.rows().iter().map(crate::Record::to_json).collect()
    }
}

impl<R: Clone + Send + Sync + 'static> RecordingSink<R> {
    /// An empty sink.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(SinkState {
                rows: Vec::new(),
                batches: Vec::new(),
                faults: VecDeque::new(),
                calls: 0,
            })),
            reject: None,
            store: None,
        }
    }

    /// Rejects (data error) every batch that holds a record `predicate` picks.
    pub fn rejecting(mut self, predicate: impl Fn(&R) -> bool + Send + Sync + 'static) -> Self {
        self.reject = Some(Arc::new(predicate));
        self
    }

    /// Commits checkpoints handed to `write` into `store` atomically with the rows, as a
    /// database destination that is also the checkpoint store does. `store` must report the
    /// same scope (see [`MemoryStore::with_scope`]).
    pub fn transactional_with(mut self, store: Arc<MemoryStore>, scope: &str) -> Self {
        self.store = Some((store, scope.to_owned()));
        self
    }

    /// Makes the next `times` writes fail with `class` (queued after earlier faults).
    pub fn fail_next(&self, times: usize, class: ErrorClass) {
        lock(&self.state).faults.push_back(Fault {
            times,
            class: Some(class),
        });
    }

    /// Lets the next `times` writes behave normally (queued after earlier faults).
    pub fn pass_next(&self, times: usize) {
        lock(&self.state)
            .faults
            .push_back(Fault { times, class: None });
    }

    /// Every acknowledged record, in write order.
    pub fn rows(&self) -> Vec<R> {
        lock(&self.state).rows.clone()
    }

    /// The size of every acknowledged batch.
    pub fn batches(&self) -> Vec<usize> {
        lock(&self.state).batches.clone()
    }

    /// How many times `write` was called.
    pub fn calls(&self) -> usize {
        lock(&self.state).calls
    }
}

impl<R: Clone + Send + Sync + 'static> Sink<R> for RecordingSink<R> {
    async fn write(
        &mut self,
        batch: &[R],
        commit: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        let mut state = lock(&self.state);
        state.calls += 1;
        if let Some(class) = next_fault(&mut state.faults) {
            return Err(SinkError::new(class, "scripted sink failure"));
        }
        if let Some(reject) = &self.reject
            && batch.iter().any(|r| reject(r))
        {
            return Err(SinkError::data("constraint violated"));
        }
        if let Some(commit) = commit {
            let (store, _) = self
                .store
                .as_ref()
                .ok_or_else(|| SinkError::fatal("commit handed to a non-transactional sink"))?;
            let store_error = |e: StoreError| SinkError::new(e.class(), e.to_string());
            // The lease first, then, as the Postgres sink does, a write whose cursors are all
            // stored already is taken for the retry of a commit whose acknowledgement was lost:
            // acknowledged without writing its rows again.
            store.save_now(commit.lease, &[]).map_err(store_error)?;
            let stored = store.snapshot(&commit.lease.pipeline);
            if !commit.checkpoints.is_empty()
                && commit
                    .checkpoints
                    .iter()
                    .all(|c| stored.get(&c.partition).is_some_and(|at| *at >= c.position))
            {
                return Ok(());
            }
            store
                .save_now(commit.lease, commit.checkpoints)
                .map_err(store_error)?;
        }
        state.rows.extend_from_slice(batch);
        state.batches.push(batch.len());
        Ok(())
    }

    fn transaction_scope(&self) -> Option<&str> {
        self.store.as_ref().map(|(_, scope)| scope.as_str())
    }
}

/// A store that wraps a [`MemoryStore`] and fails its next saves or loads on command, and can
/// check every save against the writes with a callback.
#[derive(Clone)]
pub struct FlakyStore {
    inner: Arc<MemoryStore>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    check: Option<SaveCheck>,
}

impl std::fmt::Debug for FlakyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlakyStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FlakyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<MemoryStore>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
            check: None,
        }
    }

    /// Calls `check` with every save before it is applied (to assert write-then-save).
    pub fn checking(mut self, check: impl Fn(&[Checkpoint]) + Send + Sync + 'static) -> Self {
        self.check = Some(Arc::new(check));
        self
    }

    /// Makes the next `times` saves and loads fail with `class`.
    pub fn fail_next(&self, times: usize, class: ErrorClass) {
        lock(&self.faults).push_back(Fault {
            times,
            class: Some(class),
        });
    }

    /// Lets the next `times` saves and loads behave normally.
    pub fn pass_next(&self, times: usize) {
        lock(&self.faults).push_back(Fault { times, class: None });
    }

    fn fault(&self) -> Result<(), StoreError> {
        match next_fault(&mut lock(&self.faults)) {
            Some(class) => Err(StoreError::new(class, "scripted store failure")),
            None => Ok(()),
        }
    }
}

impl CheckpointStore for FlakyStore {
    fn acquire(
        &self,
        pipeline: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send {
        self.inner.acquire(pipeline, holder, ttl)
    }

    fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.renew(lease, ttl)
    }

    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.release(lease)
    }

    async fn load(&self, pipeline: &str) -> Result<Checkpoints, StoreError> {
        self.fault()?;
        self.inner.load(pipeline).await
    }

    async fn save(&self, lease: &Lease, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        self.fault()?;
        if let Some(check) = &self.check {
            check(checkpoints);
        }
        self.inner.save(lease, checkpoints).await
    }

    fn transaction_scope(&self) -> Option<&str> {
        self.inner.transaction_scope()
    }
}

/// A log of `n` JSON envelopes `{"n": i}` for resource `resource`, spread round-robin over
/// `partitions` partitions named `p0`, `p1`, …, each with positions 1, 2, 3, …
pub fn json_log(resource: &str, n: u64, partitions: u64) -> Vec<Envelope<serde_json::Value>> {
    (0..n)
        .map(|i| {
            let partition = format!("p{}", i % partitions.max(1));
            let position = i / partitions.max(1) + 1;
            Envelope::new(resource, serde_json::json!({ "n": i }))
                .with_checkpoint(Checkpoint::new(partition, Position::Int(position)))
        })
        .collect()
}

/// Positions saved per partition, as integers (for assertions).
pub fn int_positions(checkpoints: &Checkpoints) -> Vec<(String, u64)> {
    checkpoints
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_int().unwrap_or(u64::MAX)))
        .collect()
}

/// Merges checkpoints into a map; exposed for tests that mirror the store.
pub fn merged(checkpoints: &[Checkpoint]) -> Checkpoints {
    let mut map = Checkpoints::new();
    merge_monotonic(&mut map, checkpoints);
    map
}

/// The value of a test-server variable that `scripts/services` sets (`SLUICE_TEST_POSTGRES_URL`,
/// …), or `None` when it is unset and the servers are not required: the test then returns early.
/// With `SLUICE_REQUIRE_SERVICES` set (as `scripts/test` and CI do) an unset variable panics, so
/// a suite against a real server can never pass by skipping there.
///
/// # Panics
/// When the variable is unset and `SLUICE_REQUIRE_SERVICES` is set.
pub fn service_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var_os("SLUICE_REQUIRE_SERVICES").is_some() => {
            panic!("{var} is not set: run the tests through scripts/test (it starts the servers)")
        }
        _ => {
            eprintln!("skipped: {var} is not set (scripts/services start sets it)");
            None
        }
    }
}

/// Polls `done` every 20 ms until it holds; panics with `what` after `timeout`. The one way tests
/// wait for a condition (never a bare sleep standing in for one).
///
/// # Panics
/// When `done` does not hold within `timeout`.
pub async fn eventually(what: &str, timeout: std::time::Duration, done: impl FnMut() -> bool) {
    eventually_with(timeout, done, || what.to_owned()).await;
}

/// [`eventually`] with a message computed when it fails (what is still missing, say).
///
/// # Panics
/// When `done` does not hold within `timeout`.
pub async fn eventually_with(
    timeout: std::time::Duration,
    mut done: impl FnMut() -> bool,
    what: impl FnOnce() -> String,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {}", what());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a plain thread (no runtime): polls `done` every 20 ms.
///
/// # Panics
/// When `done` does not hold within `timeout`.
#[allow(clippy::disallowed_methods)] // a plain thread polling: no runtime to block
pub fn eventually_blocking(
    what: &str,
    timeout: std::time::Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
