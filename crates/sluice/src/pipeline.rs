//! Defines a pipeline (source + resources + destinations + store) and its run loop: acquire the
//! lease, load the cursors, run a session, stop the source, drain, save, back off, reopen.

use std::{fmt, pin::pin, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, BackoffPolicy},
    checkpoint::{CheckpointStore, Lease},
    envelope::Checkpoints,
    error::{ErrorClass, PipelineError, SinkError, SourceError, StoreError},
    processor::{Processor, ProcessorOptions, Slot},
    record::{DeadLetter, Record},
    resource::{OnError, Resources},
    sink::{BatchLimits, CheckpointCommit, Sink},
    source::{Liveness, SessionEnd, Source, SourceContext},
    stats::PipelineStats,
    watchdog,
};

/// Settings of a pipeline's runtime.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Envelopes that may wait between the source and the processor: the backpressure bound.
    pub channel_capacity: usize,
    /// Backoff between sessions (reconnects).
    pub reconnect: BackoffPolicy,
    /// Backoff between retries of a transient write or save.
    pub retry: BackoffPolicy,
    /// After shutdown is requested, how long in-flight writes and the last save may take.
    pub drain_timeout: Duration,
    /// How often cursors that moved without a write (dropped envelopes) are saved.
    pub commit_interval: Duration,
    /// The lease's time to live; it is renewed every third of it.
    pub lease_ttl: Duration,
    /// Who takes the lease (defaults to host and process id).
    pub holder: String,
    /// Overrides the source's idle timeout.
    pub idle_timeout: Option<Duration>,
    /// When another holder's lease is live: `false` (a single process) stops with a fatal
    /// error, the operator started the pipeline twice; `true` (a fleet worker, which was given
    /// the pipeline because its last holder is presumed dead) waits until that lease expires or
    /// is released, then takes it with a new token, which fences the old holder.
    pub wait_for_lease: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            channel_capacity: 4096,
            reconnect: BackoffPolicy::default(),
            retry: BackoffPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                stable_after: Duration::ZERO,
            },
            drain_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(15),
            holder: default_holder(),
            idle_timeout: None,
            wait_for_lease: false,
        }
    }
}

/// `host:pid`, the default lease holder.
pub fn default_holder() -> String {
    let host = host_identity().unwrap_or("localhost");
    format!("{host}:{}", std::process::id())
}

/// This process's host as lease holders name it: `HOSTNAME~BOOT.PIDNS`, the hostname, the
/// first characters of the kernel's boot id and the inode of this process's pid namespace.
/// A store may take a holder of the same identity whose process is gone for dead at once (a
/// SIGKILLed run must not block its restart until its lease expires); a hostname alone does
/// not say that a pid is one of this kernel and namespace (two machines, or two containers,
/// may share a hostname). `None` where `/proc` does not tell: then no holder is taken for dead
/// before its lease expires.
pub fn host_identity() -> Option<&'static str> {
    static IDENTITY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let boot: String = boot
                .chars()
                .filter(char::is_ascii_hexdigit)
                .take(8)
                .collect();
            // `pid:[4026531836]`
            let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
            let namespace: String = namespace
                .to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            (!boot.is_empty() && !namespace.is_empty())
                .then(|| format!("{}~{boot}.{namespace}", host.trim()))
        })
        .as_deref()
}

/// How a pipeline ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineExit {
    /// The source finished (a finite input) and everything was written and saved.
    Completed,
    /// Shutdown was requested; in-flight work was written and saved.
    Stopped,
}

/// A sink for dead letters when none is configured: refuses every write. A pipeline whose
/// policies may dead-letter is refused at start unless a real one is set.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDeadLetters;

impl Sink<DeadLetter> for NoDeadLetters {
    async fn write(
        &mut self,
        _: &[DeadLetter],
        _: Option<&CheckpointCommit<'_>>,
    ) -> Result<(), SinkError> {
        Err(SinkError::fatal("no dead-letter destination is configured"))
    }
}

/// One pipeline: a source, its resources, named destinations, a dead-letter destination and a
/// checkpoint store. Build it, then [`Pipeline::run`] it.
pub struct Pipeline<Src: Source, R, S, C, D = NoDeadLetters> {
    id: Arc<str>,
    source: Src,
    resources: Resources<Src::Payload, R>,
    sinks: Vec<(String, S, BatchLimits)>,
    dead_letters: Option<(D, BatchLimits)>,
    store: C,
    options: PipelineOptions,
    stats: Arc<PipelineStats>,
    pause: Option<tokio::sync::watch::Receiver<bool>>,
}

impl<Src: Source, R, S, C, D> fmt::Debug for Pipeline<Src, R, S, C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("id", &self.id)
            .field("source", &self.source.name())
            .field("resources", &self.resources)
            .field(
                "destinations",
                &self.sinks.iter().map(|(n, _, _)| n).collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish()
    }
}

impl<Src, R, S, C> Pipeline<Src, R, S, C, NoDeadLetters>
where
    Src: Source,
    Src::Payload: Serialize,
    R: Record,
    S: Sink<R>,
    C: CheckpointStore,
{
    /// A pipeline with no destination yet.
    pub fn new(
        id: impl Into<Arc<str>>,
        source: Src,
        store: C,
        resources: Resources<Src::Payload, R>,
    ) -> Self {
        let id = id.into();
        Self {
            stats: Arc::new(PipelineStats::new(&id)),
            id,
            source,
            resources,
            sinks: Vec::new(),
            dead_letters: None,
            store,
            options: PipelineOptions::default(),
            pause: None,
        }
    }
}

impl<Src, R, S, C, D> Pipeline<Src, R, S, C, D>
where
    Src: Source + 'static,
    Src::Payload: Serialize,
    R: Record,
    S: Sink<R>,
    C: CheckpointStore,
    D: Sink<DeadLetter>,
{
    /// Adds a named destination.
    pub fn sink(mut self, name: impl Into<String>, sink: S, limits: BatchLimits) -> Self {
        self.sinks.push((name.into(), sink, limits));
        self
    }

    /// Sets the dead-letter destination.
    pub fn dead_letters<D2: Sink<DeadLetter>>(
        self,
        sink: D2,
        limits: BatchLimits,
    ) -> Pipeline<Src, R, S, C, D2> {
        Pipeline {
            id: self.id,
            source: self.source,
            resources: self.resources,
            sinks: self.sinks,
            dead_letters: Some((sink, limits)),
            store: self.store,
            options: self.options,
            stats: self.stats,
            pause: self.pause,
        }
    }

    /// Sets the runtime options.
    pub fn options(mut self, options: PipelineOptions) -> Self {
        self.options = options;
        self
    }

    /// The options, to change one of them after building (`options_mut().wait_for_lease`).
    pub fn options_mut(&mut self) -> &mut PipelineOptions {
        &mut self.options
    }

    /// The source (for its own counters).
    pub fn source(&self) -> &Src {
        &self.source
    }

    /// The pipeline id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Counts into `stats` (shared across restarts of the same pipeline id).
    pub fn with_stats(mut self, stats: Arc<PipelineStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The live counters, readable while the pipeline runs.
    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    /// Pauses while `pause` holds `true`: the session is stopped, what it sent is written and
    /// saved, and the lease is kept (no one else takes the pipeline); when it turns `false` a
    /// new session resumes from the store. A pipeline paused at its start waits before its
    /// first session.
    pub fn pausable(mut self, pause: tokio::sync::watch::Receiver<bool>) -> Self {
        self.pause = Some(pause);
        self
    }

    fn config_error(&self, message: impl Into<String>) -> PipelineError {
        PipelineError::Config {
            pipeline: self.id.to_string(),
            message: message.into(),
        }
    }

    /// Runs until the source finishes, `shutdown` is cancelled (then drains within the drain
    /// timeout), or a non-retryable error occurs. Disconnects and transient errors never end it.
    ///
    /// # Errors
    /// A [`PipelineError`] whose [`class`](PipelineError::class) says whether a supervisor may
    /// restart it.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<PipelineExit, PipelineError> {
        // Resolve resources to destinations and check the poison policies can be honoured.
        let mut resolved = Vec::new();
        let resources = std::mem::take(&mut self.resources);
        let needs_dead_letters = resources.unknown == OnError::DeadLetter
            || resources
                .map
                .values()
                .any(|r| r.on_error == OnError::DeadLetter);
        if needs_dead_letters && self.dead_letters.is_none() {
            return Err(self.config_error(
                "poison inputs go to the dead-letter destination (on_error = dead_letter), but none is configured; set one or choose on_error = skip or fail",
            ));
        }
        for (name, resource) in resources.map {
            let Some(index) = self
                .sinks
                .iter()
                .position(|(n, _, _)| *n == resource.destination)
            else {
                return Err(self.config_error(format!(
                    "resource {name:?} writes to destination {:?}, which is not defined",
                    resource.destination
                )));
            };
            resolved.push((name, resource, index));
        }
        let id = self.id.clone();
        let stats = self.stats.clone();
        let options = self.options.clone();
        let mut slots: Vec<Slot<R, S>> = Vec::new();
        for (name, sink, limits) in std::mem::take(&mut self.sinks) {
            slots.push(Slot::new(name, sink, limits));
        }
        let mut dead = self
            .dead_letters
            .take()
            .map(|(sink, limits)| Slot::new("dead_letters".into(), sink, limits));
        // Shutdown while a destination is still being prepared: nothing was written, nothing
        // is lost — a clean stop.
        for slot in &mut slots {
            if !prepare(&id, &slot.name, &mut slot.sink, &options, &shutdown).await? {
                return Ok(PipelineExit::Stopped);
            }
        }
        if let Some(dead) = &mut dead
            && !prepare(&id, &dead.name, &mut dead.sink, &options, &shutdown).await?
        {
            return Ok(PipelineExit::Stopped);
        }

        let store = &self.store;
        let Some(lease) = acquire_lease(store, &id, &options, &shutdown).await? else {
            return Ok(PipelineExit::Stopped);
        };
        tracing::info!(pipeline = %id, holder = %lease.holder, token = lease.token, "lease acquired");
        stats.set_lease(&lease.holder, lease.token);
        // A restart after a run that ended while paused: paused again only if still asked.
        stats.set_paused(false);

        let hard_stop = CancellationToken::new();
        let processor = Processor::new(
            id.clone(),
            resolved,
            resources.unknown,
            slots,
            dead,
            store,
            lease.clone(),
            ProcessorOptions {
                retry: options.retry,
                commit_interval: options.commit_interval,
                chunk: 512,
            },
            hard_stop.clone(),
            stats.clone(),
        );
        // The mutex hands the source from session to session (see `SessionTask`); a session
        // releases it when it is dropped.
        let source = Arc::new(tokio::sync::Mutex::new(self.source));
        // The lease is kept for the whole life of the pipeline — sessions, drains, reconnect
        // backoffs — by one keeper; the moment it is lost, every write and wait stops and the
        // session is stopped (its connection closed) before this returns.
        let lease_lost = CancellationToken::new();
        let sessions = run_sessions(
            &id,
            &source,
            processor,
            store,
            &options,
            (&shutdown, &hard_stop, &lease_lost),
            self.pause.take(),
            &stats,
        );
        let keeper = async {
            let error = keep_lease(&id, store, &lease, &options).await;
            tracing::error!(pipeline = %id, %error, "lease lost; stopped writing");
            hard_stop.cancel();
            lease_lost.cancel();
            error
        };
        let (mut sessions, mut keeper) = (pin!(sessions), pin!(keeper));
        let result = tokio::select! {
            result = &mut sessions => result,
            source = &mut keeper => {
                let _ = sessions.await;
                Err(PipelineError::Store { pipeline: id.to_string(), source })
            }
        };
        stats.set_up(false);
        if let Err(error) = &result {
            stats.add_error(error.class());
        }
        // A lost lease is not released: release is a no-op for a stale token in every store.
        if let Err(error) = store.release(&lease).await {
            tracing::warn!(pipeline = %id, %error, "lease release failed; it will expire");
        }
        result
    }
}

/// Prepares a destination, retrying transient failures; `false` when shutdown came first.
async fn prepare<T, K: Sink<T>>(
    pipeline: &str,
    destination: &str,
    sink: &mut K,
    options: &PipelineOptions,
    shutdown: &CancellationToken,
) -> Result<bool, PipelineError> {
    let mut backoff = Backoff::new(options.retry);
    loop {
        let prepared = tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            prepared = sink.prepare() => prepared,
        };
        match prepared {
            Ok(()) => return Ok(true),
            Err(error) if error.class() == ErrorClass::Transient => {
                tracing::warn!(pipeline, destination, %error, "destination not ready; retrying");
                if !sleep_or_cancel(backoff.next_delay(), shutdown).await {
                    return Ok(false);
                }
            }
            Err(error) => {
                return Err(PipelineError::Sink {
                    pipeline: pipeline.into(),
                    destination: destination.into(),
                    source: error,
                });
            }
        }
    }
}

/// Calls a store operation until it succeeds, fails for good, or shutdown (`Ok(None)`).
async fn retry_store<T, F, Fut>(
    pipeline: &str,
    options: &PipelineOptions,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<Option<T>, PipelineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new(options.retry);
    loop {
        match op().await {
            Ok(value) => return Ok(Some(value)),
            Err(error) if error.class() == ErrorClass::Transient => {
                tracing::warn!(pipeline, %error, "checkpoint store unavailable; retrying");
                if !sleep_or_cancel(backoff.next_delay(), shutdown).await {
                    return Ok(None);
                }
            }
            Err(source) => {
                return Err(PipelineError::Store {
                    pipeline: pipeline.into(),
                    source,
                });
            }
        }
    }
}

/// Takes the pipeline's lease, retrying a store that is down; with `wait_for_lease`, also
/// waits out another holder's live lease (polled every third of a lease time to live).
/// `Ok(None)`: shutdown came first.
async fn acquire_lease<C: CheckpointStore>(
    store: &C,
    id: &str,
    options: &PipelineOptions,
    shutdown: &CancellationToken,
) -> Result<Option<Lease>, PipelineError> {
    loop {
        let acquired = retry_store(id, options, shutdown, || {
            store.acquire(id, &options.holder, options.lease_ttl)
        })
        .await;
        match acquired {
            Err(PipelineError::Store { source, .. })
                if options.wait_for_lease && source.lease_holder().is_some() =>
            {
                tracing::info!(
                    pipeline = id,
                    holder = source.lease_holder().unwrap_or_default(),
                    "lease held by another worker; waiting for it to expire"
                );
                let poll = (options.lease_ttl / 3).max(Duration::from_millis(10));
                if !sleep_or_cancel(poll, shutdown).await {
                    return Ok(None);
                }
            }
            other => return other,
        }
    }
}

/// Renews the lease every third of its time to live until a renewal fails for good (another
/// holder took it, the token is stale); transient failures are retried at the next tick.
async fn keep_lease<C: CheckpointStore>(
    id: &str,
    store: &C,
    lease: &Lease,
    options: &PipelineOptions,
) -> StoreError {
    let every = (options.lease_ttl / 3).max(Duration::from_millis(10));
    let mut renew = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        renew.tick().await;
        match store.renew(lease, options.lease_ttl).await {
            Ok(()) => {}
            Err(error) if error.class() == ErrorClass::Transient => {
                tracing::warn!(pipeline = id, %error, "lease renewal failed; retrying");
            }
            Err(error) => return error,
        }
    }
}

/// Sleeps; false if shutdown came first.
async fn sleep_or_cancel(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// How a session ended, before the drain.
enum Ending {
    Source(Result<SessionEnd, SourceError>),
    Shutdown,
    Idle,
    Processor(Result<(), PipelineError>),
    /// The processor drained a closed channel; the source's result.
    Drained(Result<SessionEnd, SourceError>),
    /// The lease keeper lost the lease: stop the session, write nothing more.
    LeaseLost,
    /// An operator paused the pipeline: stop the session, write and save what it sent.
    Paused,
}

/// Resolves when `pause` turns `true`; never without one.
async fn paused(pause: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match pause {
        Some(pause) => {
            if pause.wait_for(|paused| *paused).await.is_err() {
                // The controller is gone: never paused again.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

type SessionFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<SessionEnd, SourceError>> + Send>>;

/// A running source session: its own task on a multi-threaded runtime (the source parses on one
/// core while the processor writes on another), polled in place on a current-thread runtime
/// (where a second task would only add wake-ups).
enum SessionTask {
    Inline(Option<SessionFuture>),
    Spawned(tokio::task::JoinHandle<Result<SessionEnd, SourceError>>),
}

impl SessionTask {
    fn start(session: SessionFuture) -> Self {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => Self::Spawned(tokio::spawn(session)),
            _ => Self::Inline(Some(session)),
        }
    }

    /// Stops the session: drops it, which closes its connection and its end of the channel.
    async fn stop(&mut self) {
        match self {
            Self::Inline(session) => drop(session.take()),
            Self::Spawned(handle) => {
                handle.abort();
                let _ = handle.await;
            }
        }
    }

    /// The result of a session whose channel closed. A source that dropped its context but goes
    /// on running is stopped after a grace period.
    async fn finish(&mut self) -> Result<SessionEnd, SourceError> {
        match tokio::time::timeout(Duration::from_secs(5), &mut *self).await {
            Ok(result) => result,
            Err(_) => {
                self.stop().await;
                Err(SourceError::transient(
                    "the source dropped its context but kept running; stopped",
                ))
            }
        }
    }
}

impl Future for SessionTask {
    type Output = Result<SessionEnd, SourceError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Self::Inline(Some(session)) => session.as_mut().poll(cx),
            Self::Inline(None) => std::task::Poll::Pending,
            Self::Spawned(handle) => std::pin::Pin::new(handle).poll(cx).map(|joined| {
                joined.unwrap_or_else(|join| {
                    Err(SourceError::transient(format!(
                        "source task failed: {join}"
                    )))
                })
            }),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_sessions<Src, R, S, C, D>(
    id: &Arc<str>,
    source: &Arc<tokio::sync::Mutex<Src>>,
    mut processor: Processor<'_, Src::Payload, R, S, D, C>,
    store: &C,
    options: &PipelineOptions,
    (shutdown, hard_stop, lease_lost): (&CancellationToken, &CancellationToken, &CancellationToken),
    mut pause: Option<tokio::sync::watch::Receiver<bool>>,
    stats: &Arc<PipelineStats>,
) -> Result<PipelineExit, PipelineError>
where
    Src: Source + 'static,
    Src::Payload: Serialize,
    R: Record,
    S: Sink<R>,
    C: CheckpointStore,
    D: Sink<DeadLetter>,
{
    let mut backoff = Backoff::new(options.reconnect);
    let (name, idle_timeout) = {
        let source = source.lock().await;
        (
            source.name().to_owned(),
            options.idle_timeout.or_else(|| source.idle_timeout()),
        )
    };
    loop {
        // Paused: no session until resumed (the lease is kept by the keeper meanwhile).
        if let Some(pause) = pause.as_mut()
            && *pause.borrow_and_update()
        {
            stats.set_paused(true);
            tracing::info!(pipeline = %id, "paused");
            let resumed = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(PipelineExit::Stopped),
                _ = lease_lost.cancelled() => return Ok(PipelineExit::Stopped),
                resumed = pause.wait_for(|paused| !paused) => resumed.is_ok(),
            };
            if !resumed {
                // The controller is gone while paused: paused it stays, until the end.
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(PipelineExit::Stopped),
                    _ = lease_lost.cancelled() => return Ok(PipelineExit::Stopped),
                }
            }
            stats.set_paused(false);
            tracing::info!(pipeline = %id, "resumed");
        }
        // Resume from what the store holds, never from memory.
        let Some(saved): Option<Checkpoints> =
            retry_store(id, options, shutdown, || store.load(id)).await?
        else {
            return Ok(PipelineExit::Stopped);
        };
        tracing::info!(pipeline = %id, source = %name, cursors = saved.len(), "session starting");
        stats.set_loaded(&saved);
        processor.begin_session(saved.clone());
        let (tx, mut rx) = mpsc::channel(options.channel_capacity);
        let liveness = Arc::new(Liveness::default());
        let ctx = SourceContext::new(
            saved,
            tx,
            shutdown.child_token(),
            liveness.clone(),
            processor.durable(),
            stats.clone(),
        );
        let started = Instant::now();
        stats.set_up(true);

        let guard = source.clone().lock_owned().await;
        let mut session = SessionTask::start(Box::pin(async move {
            let mut source = guard;
            source.run(ctx).await
        }));
        let mut session_done = false;
        let mut consume = pin!(processor.consume(&mut rx));
        // Created once per session, so it measures the silence of the whole session.
        let mut idle = pin!(watchdog::idle(&liveness, idle_timeout));
        let ending = tokio::select! {
            biased;
            result = &mut consume => match result {
                // The channel closed: the source's task ended (or dropped its context) and
                // everything it sent is written. Its own result says how it ended.
                Ok(()) => {
                    session_done = true;
                    Ending::Drained(session.finish().await)
                }
                Err(error) => Ending::Processor(Err(error)),
            },
            result = &mut session => {
                session_done = true;
                Ending::Source(result)
            }
            _ = shutdown.cancelled() => Ending::Shutdown,
            _ = lease_lost.cancelled() => Ending::LeaseLost,
            _ = &mut idle => Ending::Idle,
            () = paused(&mut pause) => Ending::Paused,
        };
        // Stop the source first: dropping the session closes its connection and the channel,
        // so the drain below is a barrier, not a snapshot.
        if !session_done {
            session.stop().await;
        }
        stats.set_up(false);
        let (drained, ending) = match ending {
            // Nothing more is written: the caller reports the keeper's error.
            Ending::LeaseLost => return Ok(PipelineExit::Stopped),
            Ending::Drained(result) => (Ok(()), Ending::Source(result)),
            Ending::Processor(Err(error)) => (Err(error), Ending::Shutdown),
            other => (
                drain(&mut consume, shutdown, hard_stop, options.drain_timeout).await,
                other,
            ),
        };
        if let Err(error) = drained {
            if let PipelineError::DrainTimeout { pipeline, .. } = error {
                return Err(PipelineError::DrainTimeout {
                    pipeline,
                    seconds: options.drain_timeout.as_secs_f64(),
                });
            }
            return Err(error);
        }
        let up_for = started.elapsed();
        match ending {
            Ending::Source(Ok(SessionEnd::Finished)) => {
                tracing::info!(pipeline = %id, "source finished; pipeline complete");
                return Ok(PipelineExit::Completed);
            }
            Ending::Shutdown => {
                tracing::info!(pipeline = %id, "stopped; in-flight work written and saved");
                return Ok(PipelineExit::Stopped);
            }
            Ending::Source(Err(error)) if error.class() == ErrorClass::Fatal => {
                return Err(PipelineError::Source {
                    pipeline: id.to_string(),
                    source: error,
                });
            }
            Ending::Source(Err(error)) => {
                stats.add_error(error.class());
                tracing::warn!(pipeline = %id, %error, class = error.class().as_str(), "source disconnected");
            }
            // Written and saved: wait at the top of the loop, no backoff.
            Ending::Paused => continue,
            Ending::Source(Ok(SessionEnd::Closed)) => {
                tracing::info!(pipeline = %id, "source closed the session")
            }
            Ending::Idle => {
                tracing::warn!(pipeline = %id, timeout_s = idle_timeout.unwrap_or_default().as_secs_f64(), "source idle; reconnecting")
            }
            Ending::Processor(_) | Ending::Drained(_) | Ending::LeaseLost => {
                unreachable!("mapped above")
            }
        }
        stats.add_reconnect();
        backoff.reset_if_stable(up_for);
        let delay = backoff.next_delay();
        tracing::info!(pipeline = %id, delay_ms = delay.as_millis() as u64, attempt = backoff.attempts(), "reconnecting after backoff");
        tokio::select! {
            _ = lease_lost.cancelled() => return Ok(PipelineExit::Stopped),
            slept = sleep_or_cancel(delay, shutdown) => if !slept {
                return Ok(PipelineExit::Stopped);
            }
        }
    }
}

/// Awaits the processor's drain; once shutdown is requested, gives it `timeout` before firing the
/// hard stop, which ends every write and retry wait.
async fn drain<F>(
    consume: &mut std::pin::Pin<&mut F>,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
    timeout: Duration,
) -> Result<(), PipelineError>
where
    F: std::future::Future<Output = Result<(), PipelineError>>,
{
    let mut deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            result = consume.as_mut() => return result,
            _ = shutdown.cancelled(), if deadline.is_none() => deadline = Some(Instant::now() + timeout),
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() && !hard_stop.is_cancelled() => {
                hard_stop.cancel();
            }
        }
    }
}
