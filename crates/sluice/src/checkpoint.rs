//! Defines the checkpoint store contract, the lease that makes one pipeline id run in one place,
//! and an in-memory store.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    envelope::{Checkpoint, Checkpoints},
    error::StoreError,
};

/// The right to save cursors for one pipeline id, with a fencing token.
///
/// The token grows with every grant, so a writer that lost its lease (expired, taken over) is
/// refused on its next save, even if it does not know yet that it lost it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The pipeline id.
    pub pipeline: String,
    /// Who holds it (host, process id).
    pub holder: String,
    /// The fencing token.
    pub token: u64,
}

/// Keeps each pipeline's durable cursors, one per partition, and grants leases.
///
/// The runtime promises to call `save` only with cursors whose envelopes, and all before them, are
/// durably written; never concurrently for one pipeline; and only while holding a lease from
/// `acquire` (renewed at a third of its time to live). Implementers guarantee:
/// - `load` returns what the last successful `save` stored (no cache that can disagree);
/// - `save` is durable when it returns `Ok`, atomic over the partitions given, and **monotonic**:
///   a position not newer than the stored one for its partition is ignored, not an error;
/// - `save` and `renew` under a lease that is no longer current fail with a fatal error;
/// - `acquire` fails with a fatal error naming the holder while another live holder has the
///   lease, and succeeds (with a larger token) once it expired or its holder is gone.
///
/// # Cancel safety
/// None of the methods is cancel safe in the sense of knowing the outcome: a dropped `save` may
/// or may not have been applied. The runtime then reloads from the store before resuming.
pub trait CheckpointStore: Send + Sync {
    /// Takes the lease of `pipeline` for `holder` for `ttl`.
    fn acquire(
        &self,
        pipeline: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Extends a held lease by `ttl` from now.
    fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives the lease up (on a clean stop), so another process may start at once.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The saved cursors of `pipeline` (empty for a new pipeline).
    fn load(&self, pipeline: &str) -> impl Future<Output = Result<Checkpoints, StoreError>> + Send;

    /// Saves cursors, monotonically, under `lease`.
    fn save(
        &self,
        lease: &Lease,
        checkpoints: &[Checkpoint],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The transaction domain of this store; see [`crate::Sink::transaction_scope`].
    fn transaction_scope(&self) -> Option<&str> {
        None
    }
}

impl<C: CheckpointStore> CheckpointStore for Arc<C> {
    fn acquire(
        &self,
        pipeline: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send {
        (**self).acquire(pipeline, holder, ttl)
    }

    fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).renew(lease, ttl)
    }

    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).release(lease)
    }

    fn load(&self, pipeline: &str) -> impl Future<Output = Result<Checkpoints, StoreError>> + Send {
        (**self).load(pipeline)
    }

    fn save(
        &self,
        lease: &Lease,
        checkpoints: &[Checkpoint],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).save(lease, checkpoints)
    }

    fn transaction_scope(&self) -> Option<&str> {
        (**self).transaction_scope()
    }
}

/// Merges `checkpoints` into `stored`, keeping each partition's newest position. Returns how many
/// partitions moved. Shared by every store so that "monotonic" means one thing.
pub fn merge_monotonic(stored: &mut Checkpoints, checkpoints: &[Checkpoint]) -> usize {
    let mut moved = 0;
    for checkpoint in checkpoints {
        match stored.get_mut(&checkpoint.partition) {
            Some(position) if *position >= checkpoint.position => {}
            Some(position) => {
                *position = checkpoint.position.clone();
                moved += 1;
            }
            None => {
                stored.insert(checkpoint.partition.clone(), checkpoint.position.clone());
                moved += 1;
            }
        }
    }
    moved
}

/// The message of a lease conflict, shared by every store.
pub fn lease_held_message(pipeline: &str, holder: &str) -> String {
    format!(
        "pipeline {pipeline} is already running ({holder}); stop it first, or wait for its lease to expire"
    )
}

/// The message of a lost lease, shared by every store.
pub fn lease_lost_message(pipeline: &str) -> String {
    format!("lease of pipeline {pipeline} was lost to another writer; this writer stops saving")
}

#[derive(Debug, Default)]
struct MemoryPipeline {
    checkpoints: Checkpoints,
    holder: Option<(String, u64, Instant)>,
    last_token: u64,
}

/// A checkpoint store in memory, for tests and ephemeral pipelines. Share it between restarts
/// of a pipeline with an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pipelines: Mutex<HashMap<String, MemoryPipeline>>,
    scope: Option<String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that declares a transaction scope, for tests of transactional sinks.
    pub fn with_scope(scope: &str) -> Self {
        Self {
            scope: Some(scope.to_owned()),
            ..Self::default()
        }
    }

    /// Saves synchronously under `lease`: what a transactional sink calls inside its write.
    ///
    /// # Errors
    /// A fatal error when the lease is no longer current.
    pub fn save_now(&self, lease: &Lease, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        self.with(&lease.pipeline, |state| {
            Self::check(state, lease)?;
            merge_monotonic(&mut state.checkpoints, checkpoints);
            Ok(())
        })
    }

    /// The stored cursors of `pipeline`, synchronously (for tests).
    pub fn snapshot(&self, pipeline: &str) -> Checkpoints {
        let pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        pipelines
            .get(pipeline)
            .map(|p| p.checkpoints.clone())
            .unwrap_or_default()
    }

    fn with<T>(&self, pipeline: &str, f: impl FnOnce(&mut MemoryPipeline) -> T) -> T {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        f(pipelines.entry(pipeline.to_owned()).or_default())
    }

    fn check(state: &MemoryPipeline, lease: &Lease) -> Result<(), StoreError> {
        match &state.holder {
            Some((_, token, _)) if *token == lease.token => Ok(()),
            _ => Err(StoreError::lease_lost(&lease.pipeline)),
        }
    }
}

impl CheckpointStore for MemoryStore {
    async fn acquire(
        &self,
        pipeline: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.with(pipeline, |state| {
            let now = Instant::now();
            if let Some((current, _, expires)) = &state.holder
                && current != holder
                && *expires > now
            {
                return Err(StoreError::lease_held(pipeline, current));
            }
            state.last_token += 1;
            state.holder = Some((holder.to_owned(), state.last_token, now + ttl));
            Ok(Lease {
                pipeline: pipeline.to_owned(),
                holder: holder.to_owned(),
                token: state.last_token,
            })
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        self.with(&lease.pipeline, |state| {
            Self::check(state, lease)?;
            if let Some((_, _, expires)) = &mut state.holder {
                *expires = Instant::now() + ttl;
            }
            Ok(())
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.with(&lease.pipeline, |state| {
            if Self::check(state, lease).is_ok() {
                state.holder = None;
            }
            Ok(())
        })
    }

    async fn load(&self, pipeline: &str) -> Result<Checkpoints, StoreError> {
        Ok(self.with(pipeline, |state| state.checkpoints.clone()))
    }

    async fn save(&self, lease: &Lease, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        self.save_now(lease, checkpoints)
    }

    fn transaction_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_stored_cursor_never_moves_backwards() {
        let store = MemoryStore::new();
        let lease = store.acquire("p", "a", TTL).await.unwrap();
        store
            .save(&lease, &[Checkpoint::new("x", 10)])
            .await
            .unwrap();
        store
            .save(&lease, &[Checkpoint::new("x", 4), Checkpoint::new("y", 1)])
            .await
            .unwrap();
        let saved = store.load("p").await.unwrap();
        assert_eq!(saved.get("x").and_then(|p| p.as_int()), Some(10));
        assert_eq!(saved.get("y").and_then(|p| p.as_int()), Some(1));
    }

    #[tokio::test]
    async fn a_second_holder_is_refused_while_the_lease_is_live() {
        let store = MemoryStore::new();
        let _lease = store.acquire("p", "a", TTL).await.unwrap();
        let error = store.acquire("p", "b", TTL).await.unwrap_err();
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert!(error.to_string().contains("already running"));
    }

    #[tokio::test]
    async fn a_fenced_writer_can_no_longer_save() {
        let store = MemoryStore::new();
        let old = store.acquire("p", "a", Duration::ZERO).await.unwrap();
        let new = store.acquire("p", "b", TTL).await.unwrap();
        assert!(new.token > old.token);
        let error = store
            .save(&old, &[Checkpoint::new("x", 1)])
            .await
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert!(store.load("p").await.unwrap().is_empty());
    }
}
