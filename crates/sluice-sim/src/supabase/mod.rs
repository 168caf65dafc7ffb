//! A simulated Supabase Realtime server (protocols.md §2.13) driven by a real Postgres: what the
//! database commits is what the server fans out, so a test can compare the database with what a
//! client stored.
//!
//! - Realtime: Phoenix channels over websocket at `/realtime/v1/websocket` and
//!   `/socket/websocket`, vsn 1.0.0 (objects) and 2.0.0 (arrays), `apikey` or `x-api-key`,
//!   heartbeats, `phx_join` with `postgres_changes` bindings (ids echoed), the
//!   "Subscribed to PostgreSQL" system message after a configurable delay (changes committed
//!   before it are not delivered: the premature-subscribe window), `access_token` accepted
//!   silently, `phx_leave`, unknown topics, an idle timeout. No replay: a change is delivered to
//!   the channels live at the moment it is read, and to no one else.
//! - Changes: read like Realtime does, by polling a temporary logical slot (`pgoutput`, decoded by
//!   sluice's own decoder) every `poll_interval`; values typed as wal2json does (numbers as JSON
//!   numbers), `old_record` primary key only, `commit_timestamp` in milliseconds.
//! - PostgREST: `GET /rest/v1/<table>` with `select=*`, `col=op.value` filters, `or=(…,and(…))`,
//!   `order=` and `limit=` — what a keyset backfill needs.
//! - Fault knobs (settable while running): handshake error, join error reply, system error on
//!   join, subscribe delay, heartbeats unanswered, drop and duplicate probabilities, non-null
//!   `errors`, close every socket, expire every channel's token.

mod realtime;
mod rest;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Map, Value, json};
use sluice_pgoutput::{self as pgoutput, Change, Datum, Message, Relation};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What the simulator serves.
#[derive(Clone, Debug)]
pub struct SupabaseSimConfig {
    /// The Postgres the changes come from (`postgres://…`).
    pub postgres_url: String,
    /// The tables (in schema `schema`) whose changes are published.
    pub tables: Vec<String>,
    /// The schema.
    pub schema: String,
    /// The API key clients must present.
    pub api_key: String,
    /// Port on 127.0.0.1 (0: any).
    pub port: u16,
    /// How often the slot is polled.
    pub poll_interval: Duration,
    /// Websocket idle timeout (no frame from the client).
    pub idle_timeout: Duration,
    /// Faults at start.
    pub faults: Faults,
}

impl SupabaseSimConfig {
    /// Defaults for `tables` of schema `public` in the database at `postgres_url`.
    pub fn new(postgres_url: impl Into<String>, tables: &[&str]) -> Self {
        Self {
            postgres_url: postgres_url.into(),
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            schema: "public".into(),
            api_key: "sim-service-role-key".into(),
            port: 0,
            poll_interval: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(60),
            faults: Faults::default(),
        }
    }
}

/// Fault knobs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Answer websocket upgrades with this status and `{"error": message}`.
    pub handshake_error: Option<(u16, String)>,
    /// Answer `phx_join` with `{"status":"error","response":{"reason": …}}`.
    pub join_error: Option<String>,
    /// After the ok reply, send a `postgres_changes` system error instead of "Subscribed".
    pub subscribe_error: Option<String>,
    /// Delay between the join reply and "Subscribed to PostgreSQL".
    pub subscribe_delay: Duration,
    /// Stop answering heartbeats (half-open connection).
    pub mute_heartbeats: bool,
    /// Probability a change is not delivered to a connection.
    pub drop: f64,
    /// Probability a change is delivered twice.
    pub duplicate: f64,
    /// Probability a change carries `errors: ["…"]` and a record cut to short fields.
    pub errors: f64,
    /// Probability a malformed text frame (not JSON) is sent before a change.
    pub malformed: f64,
    /// Probability a PostgREST request is answered 500.
    pub rest_500: f64,
}

/// Counters of what the simulator did.
#[derive(Debug, Default)]
pub struct SimCounters {
    /// Websocket connections accepted.
    pub connections: AtomicU64,
    /// Successful joins.
    pub joins: AtomicU64,
    /// Changes read from Postgres.
    pub changes: AtomicU64,
    /// Change messages sent (over all connections).
    pub delivered: AtomicU64,
    /// Changes dropped by the drop knob or because no channel was live.
    pub dropped: AtomicU64,
    /// PostgREST requests served.
    pub rest_requests: AtomicU64,
    /// PostgREST requests answered 500 on purpose.
    pub rest_errors: AtomicU64,
}

/// A change as fanned out: its table and the `data` object of the `postgres_changes` payload.
#[derive(Clone, Debug)]
pub(crate) struct ChangeEvent {
    pub(crate) table: String,
    pub(crate) kind: &'static str,
    pub(crate) data: Value,
}

pub(crate) struct State {
    pub(crate) config: SupabaseSimConfig,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) changes: broadcast::Sender<ChangeEvent>,
    /// Closes every websocket (abrupt disconnect) when cancelled; replaced after each use.
    pub(crate) kick: Mutex<CancellationToken>,
    /// Expires every channel's token.
    pub(crate) expire: broadcast::Sender<()>,
    pub(crate) counters: SimCounters,
    pub(crate) shutdown: CancellationToken,
    pub(crate) rng: Mutex<fastrand::Rng>,
    /// The connection PostgREST requests use.
    pub(crate) rest: tokio_postgres::Client,
}

impl State {
    pub(crate) fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < p
    }
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct SupabaseSim {
    state: Arc<State>,
    addr: SocketAddr,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Postgres refused the setup (publication, slot, types).
    #[error("supabase sim: postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The port could not be bound.
    #[error("supabase sim: bind: {0}")]
    Bind(#[from] std::io::Error),
}

impl SupabaseSim {
    /// Starts the simulator: creates a publication for the tables and a temporary logical slot
    /// (both named after the port), then serves.
    ///
    /// # Errors
    /// When Postgres refuses the setup or the port cannot be bound.
    pub async fn start(config: SupabaseSimConfig) -> Result<Self, SimError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        let (client, connection) =
            tokio_postgres::connect(&config.postgres_url, tokio_postgres::NoTls).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(connection);
        let name = format!("sluice_sim_{}_{}", std::process::id(), addr.port());
        let tables: Vec<String> = config
            .tables
            .iter()
            .map(|t| format!("{}.{}", quote(&config.schema), quote(t)))
            .collect();
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {name}; CREATE PUBLICATION {name} FOR TABLE {}",
                tables.join(", ")
            ))
            .await?;
        client
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)",
                &[&name],
            )
            .await?;
        let types: HashMap<u32, String> = client
            .query("SELECT oid, typname::text FROM pg_type", &[])
            .await?
            .into_iter()
            .map(|row| (row.get::<_, u32>(0), row.get::<_, String>(1)))
            .collect();
        let (rest, rest_connection) =
            tokio_postgres::connect(&config.postgres_url, tokio_postgres::NoTls).await?;
        tokio::spawn(rest_connection);
        // PostgREST renders times in the session time zone; Supabase projects run in UTC.
        rest.batch_execute("SET TIME ZONE 'UTC'").await?;
        let (changes, _) = broadcast::channel(65_536);
        let (expire, _) = broadcast::channel(16);
        let state = Arc::new(State {
            faults: Mutex::new(config.faults.clone()),
            config,
            changes,
            kick: Mutex::new(CancellationToken::new()),
            expire,
            counters: SimCounters::default(),
            shutdown: shutdown.clone(),
            rng: Mutex::new(fastrand::Rng::with_seed(7)),
            rest,
        });
        tokio::spawn(poll(state.clone(), client, name, types));
        let app = axum::Router::new()
            .route(
                "/realtime/v1/websocket",
                axum::routing::get(realtime::upgrade),
            )
            .route("/socket/websocket", axum::routing::get(realtime::upgrade))
            .route("/rest/v1/{table}", axum::routing::get(rest::select))
            .with_state(state.clone());
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self { state, addr })
    }

    /// The project URL clients are configured with (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API key clients must present.
    pub fn api_key(&self) -> &str {
        &self.state.config.api_key
    }

    /// Changes the fault knobs.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Closes every websocket at once, without `phx_close` (an abrupt disconnect).
    pub fn close_all(&self) {
        let mut kick = self.state.kick.lock().unwrap_or_else(|e| e.into_inner());
        kick.cancel();
        *kick = CancellationToken::new();
    }

    /// Expires every joined channel's token: a system error, then `phx_close`.
    pub fn expire_tokens(&self) {
        let _ = self.state.expire.send(());
    }

    /// What the simulator did.
    pub fn counters(&self) -> &SimCounters {
        &self.state.counters
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.state.shutdown.cancel();
    }
}

impl Drop for SupabaseSim {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Reads the slot every `poll_interval` and fans out each change.
async fn poll(
    state: Arc<State>,
    client: tokio_postgres::Client,
    slot: String,
    types: HashMap<u32, String>,
) {
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut commit_micros = 0i64;
    // The slot and the publication share one generated name (no quoting needed).
    let query = format!(
        "SELECT data FROM pg_logical_slot_get_binary_changes('{slot}', NULL, NULL, \
         'proto_version', '1', 'publication_names', '{slot}')"
    );
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(state.config.poll_interval) => {}
        }
        let rows = match client.query(&query, &[]).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "supabase sim: polling the slot failed");
                continue;
            }
        };
        for row in rows {
            let data: Vec<u8> = row.get(0);
            match pgoutput::decode(&data) {
                Ok(Message::Relation(oid, relation)) => {
                    relations.insert(oid, relation);
                }
                Ok(Message::Begin {
                    commit_time_micros, ..
                }) => commit_micros = commit_time_micros,
                Ok(Message::Change(change)) => {
                    if let Some(event) = change_event(&relations, &types, change, commit_micros) {
                        state.counters.changes.fetch_add(1, Ordering::Relaxed);
                        if state.changes.send(event).is_err() {
                            state.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "supabase sim: undecodable change"),
            }
        }
    }
}

/// A text value typed as wal2json does: numbers (numeric included) and booleans as JSON, json
/// as JSON, the rest as text.
fn wal2json_value(type_name: &str, text: &str) -> Value {
    match type_name {
        "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" | "oid" => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        "bool" => Value::Bool(text == "t"),
        "json" | "jsonb" => serde_json::from_str(text).unwrap_or(Value::String(text.to_owned())),
        _ => Value::String(text.to_owned()),
    }
}

fn record(relation: &Relation, types: &HashMap<u32, String>, tuple: &[Datum], keys: bool) -> Value {
    let mut map = Map::new();
    for (column, datum) in relation.columns.iter().zip(tuple) {
        if keys && !column.key {
            continue;
        }
        let type_name = types.get(&column.type_oid).map_or("text", String::as_str);
        match datum {
            Datum::Null => {
                map.insert(column.name.clone(), Value::Null);
            }
            Datum::Text(text) => {
                map.insert(column.name.clone(), wal2json_value(type_name, text));
            }
            Datum::UnchangedToast => {}
        }
    }
    Value::Object(map)
}

fn change_event(
    relations: &HashMap<u32, Relation>,
    types: &HashMap<u32, String>,
    change: Change,
    commit_micros: i64,
) -> Option<ChangeEvent> {
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    let (oid, kind, new, old) = match change {
        Change::Insert { relation, new } => (relation, "INSERT", Some(new), None),
        Change::Update { relation, new, old } => (relation, "UPDATE", Some(new), old),
        Change::Delete { relation, old } => (relation, "DELETE", None, Some(old)),
        // Realtime does not deliver truncates.
        Change::Truncate { .. } => return None,
    };
    let relation = relations.get(&oid)?;
    let columns: Vec<Value> = relation
        .columns
        .iter()
        .map(|c| json!({"name": c.name, "type": types.get(&c.type_oid).map_or("text", String::as_str)}))
        .collect();
    let commit = chrono::DateTime::from_timestamp_micros(commit_micros + PG_EPOCH_US)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut data = json!({
        "schema": relation.schema, "table": relation.table, "commit_timestamp": commit,
        "type": kind, "columns": columns, "errors": null,
    });
    if let Some(new) = &new {
        data["record"] = record(relation, types, new, false);
    }
    match (kind, old, &new) {
        (_, Some(old), _) => data["old_record"] = record(relation, types, &old, true),
        // Default replica identity: an UPDATE that kept its key sends no old tuple; Realtime
        // still sends the primary key.
        ("UPDATE", None, Some(new)) => data["old_record"] = record(relation, types, new, true),
        _ => {}
    }
    Some(ChangeEvent {
        table: relation.table.clone(),
        kind,
        data,
    })
}
