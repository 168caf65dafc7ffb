//! Defines the SQLite database handle shared by the SQLite store and sink, and the store.
//!
//! Tables (created on open):
//! - `sluice_checkpoints (pipeline, partition, position, updated_at_ms)`, primary key
//!   `(pipeline, partition)`; `position` is the JSON of a [`Position`].
//! - `sluice_leases (pipeline, holder, token, expires_at_ms)`, primary key `pipeline`.
//!
//! The connection runs in WAL mode with `synchronous = FULL`, so a committed transaction
//! survives a power loss, not only a process crash.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sluice::{Checkpoint, CheckpointStore, Checkpoints, ErrorClass, Lease, Position, StoreError};

/// A shared connection to one SQLite file. Cloning shares the connection, so the store and the
/// sink of one file write through the same handle and can share a transaction.
#[derive(Clone, Debug)]
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    wal: PathBuf,
    /// No WAL truncation before then (the last one missed).
    truncate_after: Arc<Mutex<Option<(std::time::Instant, Duration)>>>,
    scope: Arc<str>,
    _checkpointer: Arc<Checkpointer>,
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL size past which the checkpoint thread truncates it (also SQLite's
/// `journal_size_limit`, the size a reset WAL file is cut back to).
const WAL_LIMIT: u64 = 8 << 20;

/// Checkpoints the WAL from a thread of its own, once a second, so that copying the WAL into the
/// database (and its fsync) is not paid inside a batch commit: SQLite's automatic checkpoint
/// runs in the committing connection and was seen to stretch one commit to 117 ms. Dropping the
/// last handle of the database ends the thread (its channel disconnects).
#[derive(Debug)]
struct Checkpointer {
    /// Keeps the thread alive: dropping it disconnects the channel.
    _stop: std::sync::mpsc::Sender<()>,
}

/// The WAL file of the database at `path`.
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

impl Checkpointer {
    fn start(path: &Path) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("sluice-sqlite-checkpoint".into())
            .spawn(move || {
                let Ok(conn) = Connection::open(&path) else {
                    return;
                };
                let _ = conn.busy_timeout(Duration::from_secs(1));
                let wal = wal_path(&path);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_secs(1))
                {
                    // PASSIVE never blocks the writer; what it cannot copy now it copies next
                    // time. It never rewinds the WAL while commits keep landing, so past the
                    // limit the writer truncates it after its next commit
                    // (`SqliteDb::after_commit`); here only when the database is idle.
                    let idle_and_big = std::fs::metadata(&wal).is_ok_and(|m| {
                        m.len() > WAL_LIMIT
                            && m.modified().is_ok_and(|t| {
                                t.elapsed().is_ok_and(|e| e > Duration::from_secs(2))
                            })
                    });
                    let mode = if idle_and_big { "TRUNCATE" } else { "PASSIVE" };
                    if let Err(error) =
                        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                    {
                        tracing::debug!(%error, mode, "wal checkpoint skipped");
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the WAL checkpoint thread; SQLite checkpoints on commit");
        }
        Self { _stop: stop }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sluice_checkpoints (
    pipeline TEXT NOT NULL,
    partition TEXT NOT NULL,
    position TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, partition)
);
CREATE TABLE IF NOT EXISTS sluice_leases (
    pipeline TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sluice_checkpoint_changes (
    pipeline TEXT NOT NULL,
    partition TEXT NOT NULL,
    from_position TEXT,
    to_position TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sluice_controls (
    pipeline TEXT PRIMARY KEY,
    paused INTEGER NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at_ms INTEGER NOT NULL
);
";

/// Maps a SQLite error to a class: busy/locked and I/O are transient, the rest fatal.
pub fn classify(error: &rusqlite::Error) -> ErrorClass {
    use rusqlite::ErrorCode::*;
    match error.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull | OutOfMemory) => {
            ErrorClass::Transient
        }
        Some(ConstraintViolation | TypeMismatch | TooBig) => ErrorClass::Data,
        _ => ErrorClass::Fatal,
    }
}

fn store_error(context: &str, error: rusqlite::Error) -> StoreError {
    StoreError::new(classify(&error), format!("sqlite: {context}")).with_source(error)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl SqliteDb {
    /// Opens (or creates) the file and the sluice tables.
    ///
    /// # Errors
    /// A fatal error when the file cannot be opened or is not a database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path)
            .map_err(|e| store_error(&format!("open {}", path.display()), e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| store_error("busy_timeout", e))?;
        // Checkpoints run on their own thread (`Checkpointer`), not in commits.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_LIMIT};"
        ))
        .map_err(|e| store_error("pragmas", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| store_error("create sluice tables", e))?;
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let scope = format!("sqlite:{}", canonical.display()).into();
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            _checkpointer: Arc::new(Checkpointer::start(&path)),
            wal: wal_path(&path),
            truncate_after: Arc::default(),
            path,
            scope,
        })
    }

    /// Call after a commit, with the connection still locked. Past the WAL limit it checkpoints
    /// and truncates the WAL here, between two commits: under back-to-back commits that is the
    /// only moment no writer of this process holds the database, and the checkpoint thread
    /// alone would never find one. Its PASSIVE runs keep the work left here small.
    ///
    /// A reader that keeps an old snapshot (a backup, a `sqlite3` shell) makes TRUNCATE wait:
    /// it waits 100 ms at most, and after a miss the next try comes later (100 ms doubling to
    /// 10 s, back to at once after a success), so commits are never held up for long.
    pub fn after_commit(&self, conn: &Connection) {
        let now = std::time::Instant::now();
        let mut next_try = self
            .truncate_after
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if next_try.is_some_and(|(at, _)| now < at)
            || !std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > WAL_LIMIT)
        {
            return;
        }
        let _ = conn.busy_timeout(Duration::from_millis(100));
        let truncated: Result<(i64, i64, i64), _> =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        // The first column is 1 when the checkpoint could not complete (busy).
        *next_try = match truncated {
            Ok((0, _, _)) => None,
            Ok(_) | Err(_) => {
                let delay = next_try.map_or(Duration::from_millis(100), |(_, d)| {
                    (d * 2).min(Duration::from_secs(10))
                });
                tracing::debug!(
                    ?truncated,
                    ?delay,
                    "wal truncate missed; trying again later"
                );
                Some((now + delay, delay))
            }
        };
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The transaction scope: `sqlite:` and the canonical path.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Locks the connection (blocking). Use from blocking code only.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the connection on the blocking pool.
    ///
    /// # Errors
    /// `f`'s error, or a transient error if the blocking task could not run.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<JoinFailure> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| E::from(JoinFailure(e.to_string())))?
    }
}

/// A blocking task that did not complete (runtime shutting down, or a panic in it).
#[derive(Debug)]
pub struct JoinFailure(pub String);

impl From<JoinFailure> for StoreError {
    fn from(failure: JoinFailure) -> Self {
        StoreError::transient(format!("sqlite task failed: {}", failure.0))
    }
}

impl From<JoinFailure> for sluice::SinkError {
    fn from(failure: JoinFailure) -> Self {
        sluice::SinkError::transient(format!("sqlite task failed: {}", failure.0))
    }
}

/// Checks the lease and merges `checkpoints` monotonically, inside the caller's transaction.
/// The SQLite sink calls this in its write transaction: records and cursors commit together.
///
/// # Errors
/// A fatal error when the lease is no longer current; SQLite errors by class.
pub fn save_in_tx(
    tx: &Transaction<'_>,
    lease: &Lease,
    checkpoints: &[Checkpoint],
) -> Result<(), StoreError> {
    let token: Option<i64> = tx
        .query_row(
            "SELECT token FROM sluice_leases WHERE pipeline = ?1",
            [&lease.pipeline],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store_error("read lease", e))?;
    if token != Some(lease.token as i64) {
        return Err(StoreError::lease_lost(&lease.pipeline));
    }
    let mut read = tx
        .prepare_cached(
            "SELECT position FROM sluice_checkpoints WHERE pipeline = ?1 AND partition = ?2",
        )
        .map_err(|e| store_error("prepare", e))?;
    let mut write = tx
        .prepare_cached(
            "INSERT INTO sluice_checkpoints (pipeline, partition, position, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pipeline, partition) DO UPDATE SET position = excluded.position, updated_at_ms = excluded.updated_at_ms",
        )
        .map_err(|e| store_error("prepare", e))?;
    for checkpoint in checkpoints {
        let stored: Option<String> = read
            .query_row(params![lease.pipeline, &*checkpoint.partition], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| store_error("read checkpoint", e))?;
        let newer = match stored.as_deref().map(parse_position).transpose()? {
            Some(stored) => checkpoint.position > stored,
            None => true,
        };
        if newer {
            let text = serde_json::to_string(&checkpoint.position)
                .map_err(|e| StoreError::fatal("serialize position").with_source(e))?;
            write
                .execute(params![
                    lease.pipeline,
                    &*checkpoint.partition,
                    text,
                    now_ms()
                ])
                .map_err(|e| store_error("write checkpoint", e))?;
        }
    }
    Ok(())
}

fn parse_position(text: &str) -> Result<Position, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::fatal(format!("stored position {text:?} is not valid")).with_source(e)
    })
}

/// Reads the saved cursors of `pipeline`.
///
/// # Errors
/// SQLite errors by class; a fatal error for an unreadable position.
pub fn load_checkpoints(conn: &Connection, pipeline: &str) -> Result<Checkpoints, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT partition, position FROM sluice_checkpoints WHERE pipeline = ?1")
        .map_err(|e| store_error("prepare", e))?;
    let rows = stmt
        .query_map([pipeline], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(|e| store_error("load checkpoints", e))?;
    let mut checkpoints = Checkpoints::new();
    for row in rows {
        let (partition, position) = row.map_err(|e| store_error("load checkpoints", e))?;
        checkpoints.insert(partition.into(), parse_position(&position)?);
    }
    Ok(checkpoints)
}

/// Deletes the saved cursors of `pipeline` and expires its lease (the token stays, to keep
/// fencing older writers). Returns how many cursors went.
///
/// # Errors
/// SQLite errors by class.
pub fn reset_checkpoints(conn: &Connection, pipeline: &str) -> Result<usize, StoreError> {
    let deleted = conn
        .execute(
            "DELETE FROM sluice_checkpoints WHERE pipeline = ?1",
            [pipeline],
        )
        .map_err(|e| store_error("reset checkpoints", e))?;
    // The lease row stays (expired): its token keeps fencing writers from before the reset.
    // A new token too: a writer that took the lease between the caller's check and this reset
    // is fenced, rather than saving the cursors it loaded back over the reset.
    conn.execute(
        "UPDATE sluice_leases SET expires_at_ms = 0, token = token + 1 WHERE pipeline = ?1",
        [pipeline],
    )
    .map_err(|e| store_error("reset lease", e))?;
    Ok(deleted)
}

/// Sets `pipeline`'s cursor of `partition` to `position` whatever it was — an operator's
/// rewind or skip — and records the change in `sluice_checkpoint_changes` (who, when, from,
/// to), in one transaction. The lease token is bumped, so a writer that took the lease after
/// the caller checked is fenced rather than saving over the change. Returns the position before.
///
/// # Errors
/// SQLite errors by class.
pub fn set_checkpoint(
    conn: &mut Connection,
    pipeline: &str,
    partition: &str,
    position: &Position,
    by: &str,
) -> Result<Option<Position>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| store_error("begin", e))?;
    let before: Option<String> = tx
        .query_row(
            "SELECT position FROM sluice_checkpoints WHERE pipeline = ?1 AND partition = ?2",
            [pipeline, partition],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store_error("read cursor", e))?;
    let to = position.to_string();
    let now = now_ms();
    tx.execute(
        "INSERT INTO sluice_checkpoints (pipeline, partition, position, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (pipeline, partition) DO UPDATE SET position = excluded.position, updated_at_ms = excluded.updated_at_ms",
        params![pipeline, partition, to, now],
    )
    .map_err(|e| store_error("set cursor", e))?;
    tx.execute(
        "INSERT INTO sluice_checkpoint_changes VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![pipeline, partition, before, to, by, now],
    )
    .map_err(|e| store_error("record cursor change", e))?;
    tx.execute(
        "UPDATE sluice_leases SET expires_at_ms = 0, token = token + 1 WHERE pipeline = ?1",
        [pipeline],
    )
    .map_err(|e| store_error("fence lease", e))?;
    tx.commit().map_err(|e| store_error("commit", e))?;
    before.as_deref().map(parse_position).transpose()
}

/// The recorded cursor changes of `pipeline`, oldest first: (partition, from, to, by, at ms).
///
/// # Errors
/// SQLite errors by class.
#[allow(clippy::type_complexity)]
pub fn checkpoint_changes(
    conn: &Connection,
    pipeline: &str,
) -> Result<Vec<(String, Option<String>, String, String, i64)>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT partition, from_position, to_position, changed_by, changed_at_ms
             FROM sluice_checkpoint_changes WHERE pipeline = ?1 ORDER BY rowid",
        )
        .map_err(|e| store_error("prepare", e))?;
    let rows = stmt
        .query_map([pipeline], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(|e| store_error("read cursor changes", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| store_error("read cursor changes", e))
}

/// Pauses (or resumes) `pipeline`: a flag every `sluice run` on this store polls. Kept across
/// restarts: a paused pipeline starts paused.
///
/// # Errors
/// SQLite errors by class.
pub fn set_paused(
    conn: &Connection,
    pipeline: &str,
    paused: bool,
    by: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO sluice_controls (pipeline, paused, changed_by, changed_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused, changed_by = excluded.changed_by, changed_at_ms = excluded.changed_at_ms",
        params![pipeline, paused, by, now_ms()],
    )
    .map_err(|e| store_error("set pause", e))?;
    Ok(())
}

/// The pipelines paused in this store.
///
/// # Errors
/// SQLite errors by class.
pub fn paused(conn: &Connection) -> Result<std::collections::BTreeSet<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT pipeline FROM sluice_controls WHERE paused <> 0")
        .map_err(|e| store_error("prepare", e))?;
    let rows = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| store_error("read pauses", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| store_error("read pauses", e))
}

/// The current lease holder of `pipeline` if its lease is live.
///
/// # Errors
/// SQLite errors by class.
pub fn live_holder(conn: &Connection, pipeline: &str) -> Result<Option<String>, StoreError> {
    Ok(live_lease(conn, pipeline)?.map(|(holder, _)| holder))
}

/// The holder and token (the fencing epoch) of `pipeline`'s lease while it is live.
///
/// # Errors
/// A transient error when the file cannot be read.
pub fn live_lease(conn: &Connection, pipeline: &str) -> Result<Option<(String, i64)>, StoreError> {
    let row: Option<(String, i64, i64)> = conn
        .query_row(
            "SELECT holder, expires_at_ms, token FROM sluice_leases WHERE pipeline = ?1",
            [pipeline],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| store_error("read lease", e))?;
    Ok(row
        .filter(|(holder, expires, _)| *expires > now_ms() && crate::holder_alive(holder))
        .map(|(holder, _, token)| (holder, token)))
}

/// The SQLite checkpoint store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: SqliteDb,
}

impl SqliteStore {
    /// A store in `db`.
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }

    /// The database handle (to share with a SQLite sink).
    pub fn db(&self) -> &SqliteDb {
        &self.db
    }
}

impl CheckpointStore for SqliteStore {
    async fn acquire(
        &self,
        pipeline: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let (pipeline, holder) = (pipeline.to_owned(), holder.to_owned());
        self.db
            .call(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| store_error("begin", e))?;
                if let Some(current) = live_holder(&tx, &pipeline)?
                    && current != holder
                {
                    return Err(StoreError::lease_held(&pipeline, &current));
                }
                let last: Option<i64> = tx
                    .query_row("SELECT token FROM sluice_leases WHERE pipeline = ?1", [&pipeline], |r| r.get(0))
                    .optional()
                    .map_err(|e| store_error("read lease", e))?;
                let token = last.unwrap_or(0) + 1;
                tx.execute(
                    "INSERT INTO sluice_leases (pipeline, holder, token, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline) DO UPDATE SET holder = excluded.holder, token = excluded.token, expires_at_ms = excluded.expires_at_ms",
                    params![pipeline, holder, token, now_ms() + ttl.as_millis() as i64],
                )
                .map_err(|e| store_error("write lease", e))?;
                tx.commit().map_err(|e| store_error("commit lease", e))?;
                Ok(Lease { pipeline, holder, token: token as u64 })
            })
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.db
            .call(move |conn| {
                let updated = conn
                    .execute(
                        "UPDATE sluice_leases SET expires_at_ms = ?1 WHERE pipeline = ?2 AND token = ?3",
                        params![now_ms() + ttl.as_millis() as i64, lease.pipeline, lease.token as i64],
                    )
                    .map_err(|e| store_error("renew lease", e))?;
                if updated == 0 {
                    return Err(StoreError::lease_lost(&lease.pipeline));
                }
                Ok(())
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.db
            .call(move |conn| {
                // Expired, not deleted: the token must keep growing, or a writer fenced before
                // could match a token handed out again.
                conn.execute(
                    "UPDATE sluice_leases SET expires_at_ms = 0 WHERE pipeline = ?1 AND token = ?2",
                    params![lease.pipeline, lease.token as i64],
                )
                .map_err(|e| store_error("release lease", e))?;
                Ok(())
            })
            .await
    }

    async fn load(&self, pipeline: &str) -> Result<Checkpoints, StoreError> {
        let pipeline = pipeline.to_owned();
        self.db
            .call(move |conn| load_checkpoints(conn, &pipeline))
            .await
    }

    async fn save(&self, lease: &Lease, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        let (lease, checkpoints) = (lease.clone(), checkpoints.to_vec());
        let db = self.db.clone();
        self.db
            .call(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| store_error("begin", e))?;
                save_in_tx(&tx, &lease, &checkpoints)?;
                tx.commit()
                    .map_err(|e| store_error("commit checkpoints", e))?;
                db.after_commit(conn);
                Ok(())
            })
            .await
    }

    fn transaction_scope(&self) -> Option<&str> {
        Some(self.db.scope())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    /// Commits 5 ms apart for 20 s (≈ 40 MB of pages): the checkpoint thread keeps the WAL
    /// bounded instead of letting it grow with every commit that lands during a checkpoint.
    #[test]
    #[allow(clippy::disallowed_methods)] // a blocking test of blocking code: no runtime here
    fn the_wal_stays_bounded_under_steady_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let db = SqliteDb::open(&path).unwrap();
        db.lock()
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB)")
            .unwrap();
        let wal = dir.path().join("w.db-wal");
        let started = std::time::Instant::now();
        let mut largest = 0;
        let mut id = 0;
        while started.elapsed() < Duration::from_secs(20) {
            {
                let mut conn = db.lock();
                let tx = conn.transaction().unwrap();
                for _ in 0..10 {
                    id += 1;
                    tx.execute("INSERT INTO t VALUES (?1, zeroblob(1000))", [id])
                        .unwrap();
                }
                tx.commit().unwrap();
                db.after_commit(&conn);
            }
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(id > 10_000, "{id} rows");
        assert!(largest < 16 << 20, "the WAL reached {} MB", largest >> 20);
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(dir.path().join("s.db")).unwrap();
        (dir, SqliteStore::new(db))
    }

    #[tokio::test]
    async fn cursors_survive_reopen_and_never_move_backwards() {
        let (dir, store) = store();
        let lease = store.acquire("p", "h:1", TTL).await.unwrap();
        let tuple = Position::Tuple(vec![
            Position::Text("2026-01-01T00:00:00.000001Z".into()),
            Position::Int(7),
        ]);
        store
            .save(
                &lease,
                &[
                    Checkpoint::new("a", 10),
                    Checkpoint::new("t", tuple.clone()),
                ],
            )
            .await
            .unwrap();
        store
            .save(&lease, &[Checkpoint::new("a", 3)])
            .await
            .unwrap();
        drop(store);
        let reopened = SqliteStore::new(SqliteDb::open(dir.path().join("s.db")).unwrap());
        let saved = reopened.load("p").await.unwrap();
        assert_eq!(saved.get("a"), Some(&Position::Int(10)));
        assert_eq!(saved.get("t"), Some(&tuple));
    }

    #[tokio::test]
    async fn a_live_holder_keeps_others_out_and_a_stale_token_cannot_save() {
        let (_dir, store) = store();
        // Our own pid: alive on this host.
        let me = sluice::default_holder();
        let lease = store.acquire("p", &me, TTL).await.unwrap();
        let error = store.acquire("p", "otherhost:1", TTL).await.unwrap_err();
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert!(error.to_string().contains("already running"), "{error}");
        // Expired: the other holder gets it with a larger token and fences us.
        store.acquire("p", &me, Duration::ZERO).await.unwrap();
        let other = store.acquire("p", "otherhost:1", TTL).await.unwrap();
        assert!(other.token > lease.token);
        let error = store
            .save(&lease, &[Checkpoint::new("a", 1)])
            .await
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Fatal);
        assert!(store.renew(&lease, TTL).await.is_err());
        // A clean release lets the next holder in at once, and tokens never start over: the
        // fenced writer stays fenced whoever comes next.
        store.release(&other).await.unwrap();
        let next = store.acquire("p", &me, TTL).await.unwrap();
        assert!(
            next.token > other.token,
            "{} after {}",
            next.token,
            other.token
        );
        assert!(
            store
                .save(&lease, &[Checkpoint::new("a", 1)])
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_dead_process_on_this_host_does_not_block_a_restart() {
        let (_dir, store) = store();
        let host = sluice::host_identity().unwrap();
        // A pid that cannot exist (above pid_max).
        store
            .acquire("p", &format!("{host}:4294967"), TTL)
            .await
            .unwrap();
        store
            .acquire("p", &format!("{host}:{}", std::process::id()), TTL)
            .await
            .unwrap();
    }

    /// Another machine (or container) with the same hostname: its pid says nothing here, so a
    /// pid that does not exist on this host does not make its live lease dead.
    #[tokio::test]
    async fn a_holder_of_another_machine_with_our_hostname_is_not_taken_for_dead() {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let hostname = hostname.trim();
        // Named by the hostname alone, or with another kernel's boot id and namespace.
        for elsewhere in [
            format!("{hostname}:4294967"),
            format!("{hostname}~00000000.1:4294967"),
        ] {
            let (_dir, store) = store();
            store.acquire("p", &elsewhere, TTL).await.unwrap();
            let error = store
                .acquire("p", &sluice::default_holder(), TTL)
                .await
                .unwrap_err();
            assert!(
                error.to_string().contains("already running"),
                "{elsewhere}: {error}"
            );
        }
    }

    /// A holder killed but not yet reaped by its parent (a zombie) is dead: the restart that
    /// follows a `kill -9` at once does not exit "already running".
    #[tokio::test]
    async fn a_killed_unreaped_holder_is_dead() {
        let (_dir, store) = store();
        let host = sluice::host_identity().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let holder = format!("{host}:{}", child.id());
        store.acquire("p", &holder, TTL).await.unwrap();
        assert!(
            store.acquire("p", "other:1", TTL).await.is_err(),
            "alive: refused"
        );
        child.kill().unwrap(); // SIGKILL, not reaped yet
        let stat = format!("/proc/{}/stat", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z")) {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store
            .acquire("p", &format!("{host}:{}", std::process::id()), TTL)
            .await
            .unwrap();
        child.wait().unwrap();
    }
}
