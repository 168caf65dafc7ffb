//! The Postgres checkpoint store: the shared state of pipelines that run on more than one
//! machine. Cursors per (pipeline, partition) merged monotonically; leases with a fencing token
//! that every save and renewal checks in the same transaction (`… WHERE token = $mine`), so a
//! writer that was cut off and comes back is refused; lease expiry by the server's clock, so
//! machines need not agree on the time. The tables are created and migrated on connect
//! ([`SCHEMA_VERSION`]).

use std::time::Duration;

use sluice::{Checkpoint, CheckpointStore, Checkpoints, ErrorClass, Lease, Position, StoreError};
use tokio::sync::Mutex;
use tokio_postgres::{Client, error::SqlState};

/// The schema's migrations, in order: migration `i` takes the tables from version `i` to
/// `i + 1`, and a database records its version in `sluice_schema_version`. Append, never edit.
/// The first one creates tables `IF NOT EXISTS`, so a database made before versions existed
/// takes version 1 as it is.
const MIGRATIONS: &[&str] = &["
CREATE TABLE IF NOT EXISTS sluice_checkpoints (
    pipeline text NOT NULL,
    partition text NOT NULL,
    position text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, partition)
);
CREATE TABLE IF NOT EXISTS sluice_leases (
    pipeline text PRIMARY KEY,
    holder text NOT NULL,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sluice_checkpoint_changes (
    pipeline text NOT NULL,
    partition text NOT NULL,
    from_position text,
    to_position text NOT NULL,
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS sluice_controls (
    pipeline text PRIMARY KEY,
    paused boolean NOT NULL,
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);"];

/// The schema version this build of sluice writes and reads.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings the tables to [`SCHEMA_VERSION`] in one transaction, under an advisory lock (two
/// stores connecting at once would otherwise race in `CREATE TABLE IF NOT EXISTS`, a unique
/// violation in the catalog, or apply a migration twice). A database at a newer version, made
/// by a newer sluice, is refused: this build would not know its tables.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| store_error("begin", e))?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7351101);
         CREATE TABLE IF NOT EXISTS sluice_schema_version (version integer NOT NULL)",
    )
    .await
    .map_err(|e| store_error("create sluice_schema_version", e))?;
    let version = tx
        .query_opt("SELECT max(version) FROM sluice_schema_version", &[])
        .await
        .map_err(|e| store_error("read the schema version", e))?
        .and_then(|row| row.get::<_, Option<i32>>(0))
        .map_or(0, |v| usize::try_from(v).unwrap_or(0));
    if version > SCHEMA_VERSION {
        return Err(StoreError::fatal(format!(
            "postgres store: the database's sluice tables are at schema version {version}, made by a newer sluice; this one knows versions up to {SCHEMA_VERSION}: upgrade it"
        )));
    }
    for migration in &MIGRATIONS[version..] {
        tx.batch_execute(migration)
            .await
            .map_err(|e| store_error("migrate the tables", e))?;
    }
    if version < SCHEMA_VERSION {
        let to = i32::try_from(SCHEMA_VERSION).unwrap_or(i32::MAX);
        tx.batch_execute("DELETE FROM sluice_schema_version")
            .await
            .map_err(|e| store_error("record the schema version", e))?;
        tx.execute("INSERT INTO sluice_schema_version VALUES ($1)", &[&to])
            .await
            .map_err(|e| store_error("record the schema version", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| store_error("commit the migration", e))
}

/// What a Postgres error means for the store: lost connections, serialization failures,
/// exhausted resources and shutdowns are transient; the rest (permissions, a missing database,
/// a server certificate refused) fatal.
pub fn classify(error: &tokio_postgres::Error) -> ErrorClass {
    match error.code() {
        // A server certificate refused (verify-ca, verify-full): configuration, not weather.
        None if crate::pg_tls::certificate_refused(error) => ErrorClass::Fatal,
        None => ErrorClass::Transient, // I/O, a closed connection
        Some(code) => {
            let class = &code.code()[..2];
            if matches!(class, "08" | "40" | "53" | "57" | "58")
                // The server ended an idle transaction (a writer that stalled): retry.
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                || *code == SqlState::LOCK_NOT_AVAILABLE
            {
                ErrorClass::Transient
            } else {
                ErrorClass::Fatal
            }
        }
    }
}

fn store_error(context: &str, error: tokio_postgres::Error) -> StoreError {
    StoreError::new(classify(&error), format!("postgres store: {context}")).with_source(error)
}

fn parse_position(text: &str) -> Result<Position, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::fatal(format!("stored position {text:?} is not valid")).with_source(e)
    })
}

pub use crate::pg_tls::PgTarget;

/// The server of `url`: its settings with timeouts (a server that stops answering fails the
/// connection instead of holding it for the TCP default of hours) and its TLS (`sslmode`).
///
/// # Errors
/// A fatal error when `url` is not a Postgres URL or its TLS settings are wrong.
pub fn target(url: &str) -> Result<PgTarget, StoreError> {
    PgTarget::parse(url)
}

/// The transaction domain of a database: hosts, ports and database name.
pub fn scope_of(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, port)| match h {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres:{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

/// Checks, locking the lease row until the caller's commit (a takeover waits for it, then
/// fences every later save), that `lease` is still current.
async fn check_lease(
    tx: &tokio_postgres::Transaction<'_>,
    lease: &Lease,
) -> Result<(), StoreError> {
    let token: Option<i64> = tx
        .query_opt(
            "SELECT token FROM sluice_leases WHERE pipeline = $1 FOR UPDATE",
            &[&lease.pipeline],
        )
        .await
        .map_err(|e| store_error("read lease", e))?
        .map(|r| r.get(0));
    if token == Some(lease.token as i64) {
        Ok(())
    } else {
        Err(StoreError::lease_lost(&lease.pipeline))
    }
}

/// The stored position of a partition, its row locked until the caller's commit.
async fn stored_position(
    tx: &tokio_postgres::Transaction<'_>,
    lease: &Lease,
    partition: &str,
) -> Result<Option<Position>, StoreError> {
    tx.query_opt(
        "SELECT position FROM sluice_checkpoints WHERE pipeline = $1 AND partition = $2 FOR UPDATE",
        &[&lease.pipeline, &partition],
    )
    .await
    .map_err(|e| store_error("read checkpoint", e))?
    .map(|r| parse_position(&r.get::<_, String>(0)))
    .transpose()
}

/// Whether the cursors of a batch are already stored (its transaction committed, but the
/// acknowledgement was lost), checking the lease first, inside the caller's transaction. An
/// empty list is never "already saved".
///
/// # Errors
/// A fatal error when the lease is no longer current; Postgres errors by class.
pub async fn already_saved(
    tx: &tokio_postgres::Transaction<'_>,
    lease: &Lease,
    checkpoints: &[Checkpoint],
) -> Result<bool, StoreError> {
    check_lease(tx, lease).await?;
    if checkpoints.is_empty() {
        return Ok(false);
    }
    for checkpoint in checkpoints {
        let partition: &str = &checkpoint.partition;
        let stored = stored_position(tx, lease, partition).await?;
        match stored {
            Some(stored) if stored >= checkpoint.position => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// A transaction holding `pipeline`'s advisory lock: the one lock that serializes acquiring
/// its lease with the operator's changes to it.
async fn locked_transaction<'c>(
    client: &'c mut Client,
    pipeline: &str,
) -> Result<tokio_postgres::Transaction<'c>, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| store_error("begin", e))?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&pipeline])
        .await
        .map_err(|e| store_error("lock", e))?;
    Ok(tx)
}

/// A transaction on `pipeline` that no running process can race: serialized with `acquire`
/// (the same advisory lock: a pipeline starting meanwhile either takes its lease before, and
/// this is refused, or after, and loads what the transaction wrote), refused while a lease is
/// live, naming what the operator wanted (`doing`).
async fn idle_transaction<'c>(
    client: &'c mut Client,
    pipeline: &str,
    doing: &str,
) -> Result<tokio_postgres::Transaction<'c>, StoreError> {
    let tx = locked_transaction(client, pipeline).await?;
    let live = tx
        .query_opt(
            "SELECT holder FROM sluice_leases WHERE pipeline = $1 AND expires_at > now() FOR UPDATE",
            &[&pipeline],
        )
        .await
        .map_err(|e| store_error("read lease", e))?;
    if let Some(row) = live {
        let holder: String = row.get(0);
        return Err(StoreError::fatal(format!(
            "pipeline {pipeline} is running ({holder}); stop it before {doing}"
        )));
    }
    Ok(tx)
}

/// What operators do to a pipeline through the store (`sluice checkpoints`, `pause`,
/// `resume`): the same rules as the SQLite store's.
impl PostgresStore {
    /// The holder of `pipeline`'s lease while it is live (by the server's clock).
    ///
    /// # Errors
    /// Postgres errors by class.
    pub async fn live_holder(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        Ok(self.live_lease(pipeline).await?.map(|(holder, _)| holder))
    }

    /// The holder and token (the fencing epoch) of `pipeline`'s lease while it is live.
    ///
    /// # Errors
    /// Postgres errors by class.
    pub async fn live_lease(&self, pipeline: &str) -> Result<Option<(String, i64)>, StoreError> {
        let guard = self.client().await?;
        let client = guard
            .as_ref()
            .ok_or_else(|| StoreError::transient("no connection"))?;
        let row = client
            .query_opt(
                "SELECT holder, token FROM sluice_leases WHERE pipeline = $1 AND expires_at > now()",
                &[&pipeline],
            )
            .await
            .map_err(|e| store_error("read lease", e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Sets a cursor whatever it was, recording who, when, from and to, and fencing a writer
    /// that took the lease after the caller checked (the token is bumped, the lease expired).
    /// Refused while the lease is live.
    ///
    /// # Errors
    /// A fatal error while a holder is live; Postgres errors by class.
    pub async fn set_checkpoint(
        &self,
        pipeline: &str,
        partition: &str,
        position: &Position,
        by: &str,
    ) -> Result<Option<Position>, StoreError> {
        let mut guard = self.client().await?;
        let client = guard
            .as_mut()
            .ok_or_else(|| StoreError::transient("no connection"))?;
        let tx = idle_transaction(client, pipeline, "setting its cursor").await?;
        let before: Option<String> = tx
            .query_opt(
                "SELECT position FROM sluice_checkpoints WHERE pipeline = $1 AND partition = $2",
                &[&pipeline, &partition],
            )
            .await
            .map_err(|e| store_error("read cursor", e))?
            .map(|r| r.get(0));
        let to = position.to_string();
        tx.execute(
            "INSERT INTO sluice_checkpoints (pipeline, partition, position) VALUES ($1, $2, $3)
             ON CONFLICT (pipeline, partition) DO UPDATE SET position = excluded.position, updated_at = now()",
            &[&pipeline, &partition, &to],
        )
        .await
        .map_err(|e| store_error("set cursor", e))?;
        tx.execute(
            "INSERT INTO sluice_checkpoint_changes (pipeline, partition, from_position, to_position, changed_by)
             VALUES ($1, $2, $3, $4, $5)",
            &[&pipeline, &partition, &before, &to, &by],
        )
        .await
        .map_err(|e| store_error("record cursor change", e))?;
        fence(&tx, pipeline).await?;
        tx.commit().await.map_err(|e| store_error("commit", e))?;
        before.as_deref().map(parse_position).transpose()
    }

    /// The recorded cursor changes of `pipeline`, oldest first: (partition, from, to, by, at).
    ///
    /// # Errors
    /// Postgres errors by class.
    #[allow(clippy::type_complexity)]
    pub async fn checkpoint_changes(
        &self,
        pipeline: &str,
    ) -> Result<Vec<(String, Option<String>, String, String, String)>, StoreError> {
        let guard = self.client().await?;
        let client = guard
            .as_ref()
            .ok_or_else(|| StoreError::transient("no connection"))?;
        let rows = client
            .query(
                "SELECT partition, from_position, to_position, changed_by,
                        to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM sluice_checkpoint_changes WHERE pipeline = $1 ORDER BY changed_at",
                &[&pipeline],
            )
            .await
            .map_err(|e| store_error("read cursor changes", e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }

    /// Pauses (or resumes) `pipeline`: a flag every process running it on this store follows.
    ///
    /// # Errors
    /// Postgres errors by class.
    pub async fn set_paused(
        &self,
        pipeline: &str,
        paused: bool,
        by: &str,
    ) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let client = guard
            .as_ref()
            .ok_or_else(|| StoreError::transient("no connection"))?;
        client
            .execute(
                "INSERT INTO sluice_controls (pipeline, paused, changed_by) VALUES ($1, $2, $3)
                 ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused, changed_by = excluded.changed_by, changed_at = now()",
                &[&pipeline, &paused, &by],
            )
            .await
            .map_err(|e| store_error("set pause", e))?;
        Ok(())
    }

    /// The pipelines paused in this store.
    ///
    /// # Errors
    /// Postgres errors by class.
    pub async fn paused(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let guard = self.client().await?;
        let client = guard
            .as_ref()
            .ok_or_else(|| StoreError::transient("no connection"))?;
        let rows = client
            .query("SELECT pipeline FROM sluice_controls WHERE paused", &[])
            .await
            .map_err(|e| store_error("read pauses", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Deletes `pipeline`'s cursors and expires its lease with a new token (fencing older
    /// writers); refused while the lease is live. How many cursors went.
    ///
    /// # Errors
    /// A fatal error while a holder is live; Postgres errors by class.
    pub async fn reset(&self, pipeline: &str) -> Result<u64, StoreError> {
        let mut guard = self.client().await?;
        let client = guard
            .as_mut()
            .ok_or_else(|| StoreError::transient("no connection"))?;
        let tx = idle_transaction(client, pipeline, "resetting its cursors").await?;
        let deleted = tx
            .execute(
                "DELETE FROM sluice_checkpoints WHERE pipeline = $1",
                &[&pipeline],
            )
            .await
            .map_err(|e| store_error("reset cursors", e))?;
        fence(&tx, pipeline).await?;
        tx.commit().await.map_err(|e| store_error("commit", e))?;
        Ok(deleted)
    }
}

/// The Postgres checkpoint store. One connection, opened again when it breaks.
pub struct PostgresStore {
    target: PgTarget,
    client: Mutex<Option<Client>>,
    scope: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: only the scope (host and database) is shown.
        f.debug_struct("PostgresStore")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store at `url` (`postgres://user:password@host:port/database`); connects and creates
    /// its tables.
    ///
    /// # Errors
    /// Transient when the server cannot be reached, fatal when it refuses.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Self::new(url)?;
        drop(store.client().await?);
        Ok(store)
    }

    /// A store at `url` that connects (and creates its tables) on first use.
    ///
    /// # Errors
    /// A fatal error when `url` is not a Postgres URL.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let target = target(url)?;
        let scope = scope_of(&target.config);
        Ok(Self {
            target,
            client: Mutex::new(None),
            scope,
        })
    }

    /// The open connection, opened (and the tables made) when there is none or it broke.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let mut client = self
                .target
                .connect("postgres store")
                .await
                .map_err(|e| store_error("connect", e))?;
            migrate(&mut client).await?;
            *guard = Some(client);
        }
        Ok(guard)
    }
}

/// Checks the lease and merges `checkpoints` monotonically inside the caller's transaction
/// (a Postgres sink writing to the same database calls this in its write transaction).
///
/// # Errors
/// A fatal error when the lease is no longer current; Postgres errors by class.
pub async fn save_in_tx(
    tx: &tokio_postgres::Transaction<'_>,
    lease: &Lease,
    checkpoints: &[Checkpoint],
) -> Result<(), StoreError> {
    // The lease row is locked until the commit: a takeover waits for this save, then fences
    // every later one.
    check_lease(tx, lease).await?;
    for checkpoint in checkpoints {
        let partition: &str = &checkpoint.partition;
        let stored = stored_position(tx, lease, partition).await?;
        let newer = match stored {
            Some(stored) => checkpoint.position > stored,
            None => true,
        };
        if newer {
            let text = serde_json::to_string(&checkpoint.position)
                .map_err(|e| StoreError::fatal("serialize position").with_source(e))?;
            tx.execute(
                "INSERT INTO sluice_checkpoints (pipeline, partition, position, updated_at) VALUES ($1, $2, $3, now())
                 ON CONFLICT (pipeline, partition) DO UPDATE SET position = excluded.position, updated_at = now()",
                &[&lease.pipeline, &partition, &text],
            )
            .await
            .map_err(|e| store_error("write checkpoint", e))?;
        }
    }
    Ok(())
}

fn ttl_text(ttl: Duration) -> String {
    format!("{} milliseconds", ttl.as_millis())
}

impl CheckpointStore for PostgresStore {
    async fn acquire(
        &self,
        pipeline: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected above");
        // One acquirer at a time per pipeline, even before its lease row exists.
        let tx = locked_transaction(client, pipeline).await?;
        let current = tx
            .query_opt(
                "SELECT holder, token, expires_at > now() FROM sluice_leases WHERE pipeline = $1 FOR UPDATE",
                &[&pipeline],
            )
            .await
            .map_err(|e| store_error("read lease", e))?;
        let last = match current {
            Some(row) => {
                let (current, token, live): (String, i64, bool) =
                    (row.get(0), row.get(1), row.get(2));
                if live && current != holder && crate::holder_alive(&current) {
                    return Err(StoreError::lease_held(pipeline, &current));
                }
                token
            }
            None => 0,
        };
        let token = last + 1;
        tx.execute(
            "INSERT INTO sluice_leases (pipeline, holder, token, expires_at) VALUES ($1, $2, $3, now() + $4::text::interval)
             ON CONFLICT (pipeline) DO UPDATE SET holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at",
            &[&pipeline, &holder, &token, &ttl_text(ttl)],
        )
        .await
        .map_err(|e| store_error("write lease", e))?;
        tx.commit()
            .await
            .map_err(|e| store_error("commit lease", e))?;
        Ok(Lease {
            pipeline: pipeline.to_owned(),
            holder: holder.to_owned(),
            token: token as u64,
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        let updated = client
            .execute(
                "UPDATE sluice_leases SET expires_at = now() + $1::text::interval WHERE pipeline = $2 AND token = $3",
                &[&ttl_text(ttl), &lease.pipeline, &(lease.token as i64)],
            )
            .await
            .map_err(|e| store_error("renew lease", e))?;
        if updated == 0 {
            return Err(StoreError::lease_lost(&lease.pipeline));
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        client
            // Expired, not deleted: the token must keep growing, or a writer fenced before
            // could match a token handed out again.
            .execute(
                "UPDATE sluice_leases SET expires_at = '-infinity' WHERE pipeline = $1 AND token = $2",
                &[&lease.pipeline, &(lease.token as i64)],
            )
            .await
            .map_err(|e| store_error("release lease", e))?;
        Ok(())
    }

    async fn load(&self, pipeline: &str) -> Result<Checkpoints, StoreError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        let rows = client
            .query(
                "SELECT partition, position FROM sluice_checkpoints WHERE pipeline = $1",
                &[&pipeline],
            )
            .await
            .map_err(|e| store_error("load checkpoints", e))?;
        let mut checkpoints = Checkpoints::new();
        for row in rows {
            let (partition, position): (String, String) = (row.get(0), row.get(1));
            checkpoints.insert(partition.into(), parse_position(&position)?);
        }
        Ok(checkpoints)
    }

    async fn save(&self, lease: &Lease, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected above");
        let tx = client
            .transaction()
            .await
            .map_err(|e| store_error("begin", e))?;
        save_in_tx(&tx, lease, checkpoints).await?;
        tx.commit()
            .await
            .map_err(|e| store_error("commit checkpoints", e))
    }

    fn transaction_scope(&self) -> Option<&str> {
        Some(&self.scope)
    }
}

/// Ends `pipeline`'s lease and bumps its token inside an operator's change: a writer that took
/// the lease after the caller checked it is fenced (its next save is refused).
async fn fence(tx: &tokio_postgres::Transaction<'_>, pipeline: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE sluice_leases SET expires_at = now(), token = token + 1 WHERE pipeline = $1",
        &[&pipeline],
    )
    .await
    .map_err(|e| store_error("fence lease", e))?;
    Ok(())
}
