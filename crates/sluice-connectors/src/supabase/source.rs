//! Defines the Supabase source session: connect, join with `postgres_changes` bindings, wait for
//! "Subscribed to PostgreSQL", backfill every table through PostgREST, then follow live events,
//! with heartbeats and a client-side heartbeat timeout throughout.

use std::{collections::VecDeque, future::Future, pin::Pin, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice::{
    Checkpoint, Envelope, Position, Rejected, SessionEnd, Source, SourceContext, SourceError,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::change::ChangeRecord;

use super::{
    config::SupabaseConfig,
    connector::{RESOURCE, STATE_RESOURCE},
    phoenix::Frame,
    record::{change_record, normalize_time, position},
    rest::{From, RestClient},
};

/// Reads Supabase Realtime changes and backfills through PostgREST. See the [module docs](super).
#[derive(Debug)]
pub struct SupabaseSource {
    config: SupabaseConfig,
    rest: RestClient,
    name: String,
}

type Page = Pin<Box<dyn Future<Output = Result<Vec<Value>, SourceError>> + Send>>;

/// Where the subscription is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Join sent, reply awaited until the deadline.
    Joining(Instant),
    /// Join ok, "Subscribed to PostgreSQL" awaited until the deadline.
    Subscribing(Instant),
    /// Live: changes flow.
    Live,
}

/// Classifies a join error reason (protocols.md §2.4).
fn join_error(reason: &str) -> SourceError {
    const FATAL: [&str; 10] = [
        "expired",
        "MalformedJWT",
        "JwtSignatureError",
        "Unauthorized",
        "JwtSignerError",
        "InvalidJWT",
        "TopicNameRequired",
        "TenantNotFound",
        "RealtimeDisabled",
        "PrivateOnly",
    ];
    let message = format!("supabase: join refused: {reason}");
    if FATAL.iter().any(|f| reason.contains(f)) {
        SourceError::fatal(message)
    } else {
        // Rate limits, database initialising, Realtime restarting: back off and rejoin.
        SourceError::transient(message)
    }
}

/// Queues a targeted re-read of `table` from `from`, at most one per table: a queued one is
/// widened to the earlier start instead (the queue stays bounded by the number of tables).
fn queue_reread(backfills: &mut VecDeque<(String, From, bool)>, table: String, from: From) {
    // Normalised times compare as text.
    let earlier = |a: &From, b: &From| match (a, b) {
        (From::AtOrAfter(x), From::AtOrAfter(y)) => From::AtOrAfter(x.min(y).clone()),
        _ => From::Start,
    };
    // A queued re-read that has not started (not a continuation page).
    match backfills
        .iter_mut()
        .find(|(t, queued, vouch)| !vouch && *t == table && !matches!(queued, From::After(..)))
    {
        Some((_, queued, _)) => *queued = earlier(queued, &from),
        None => backfills.push_back((table, from, false)),
    }
}

/// The time `ms` milliseconds before `version` (a normalised time), normalised.
fn minus(version: &str, ms: u64) -> String {
    chrono::DateTime::parse_from_rfc3339(version)
        .map(|t| {
            (t.with_timezone(&chrono::Utc) - chrono::Duration::milliseconds(ms as i64))
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string()
        })
        .unwrap_or_else(|_| version.to_owned())
}

impl SupabaseSource {
    /// A source for `config`.
    ///
    /// # Errors
    /// A fatal error when the configuration is invalid.
    pub fn new(mut config: SupabaseConfig) -> Result<Self, SourceError> {
        config
            .resolve_key()
            .and_then(|()| config.validate())
            .map_err(|e| SourceError::fatal(format!("supabase: {e}")))?;
        let rest = RestClient::new(config.clone())?;
        let name = format!("supabase:{}", config.schema);
        Ok(Self { config, rest, name })
    }

    /// Emits a change on `changes` and, with `current_state`, on `state`; the checkpoint rides
    /// on the last envelope so it moves only once both are written.
    async fn emit(
        &self,
        ctx: &SourceContext<ChangeRecord>,
        record: ChangeRecord,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(), SourceError> {
        let with = |envelope: Envelope<ChangeRecord>| match checkpoint.clone() {
            Some(c) => envelope.with_checkpoint(c),
            None => envelope,
        };
        if self.config.current_state {
            ctx.emit(Envelope::new(RESOURCE, record.clone())).await?;
            ctx.emit(with(Envelope::new(STATE_RESOURCE, record))).await
        } else {
            ctx.emit(with(Envelope::new(RESOURCE, record))).await
        }
    }

    fn page(&self, table: &str, from: From) -> Page {
        let rest = self.rest.clone();
        let table = table.to_owned();
        Box::pin(async move { rest.page(&table, &from).await })
    }

    /// The key object and normalised version of a row. `Err(Fatal)` when the table has no such
    /// primary key column (configuration); `Ok(Err(reason))` for a row whose cursor column is
    /// NULL or not a time (data: dead-lettered, the rest goes on).
    fn identify(
        &self,
        table: &str,
        row: &Value,
    ) -> Result<Result<(Value, String), String>, SourceError> {
        let c = &self.config;
        let Some(key) = row.get(&c.primary_key).filter(|v| !v.is_null()) else {
            return Err(SourceError::fatal(format!(
                "supabase: table {}.{table} has no primary key column {:?} (set primary_key)",
                c.schema, c.primary_key
            )));
        };
        let version = row
            .get(&c.cursor_column)
            .and_then(Value::as_str)
            .and_then(normalize_time);
        Ok(match version {
            Some(version) => Ok((json!({ c.primary_key.clone(): key }), version)),
            None => Err(format!(
                "supabase: row {key} of {}.{table}: column {:?} is NULL or not a time; backfill needs a monotonic timestamp (set cursor_column)",
                c.schema, c.cursor_column
            )),
        })
    }

    /// Where a table's backfill starts: the durable cursor minus the overlap, or the start.
    fn backfill_from(&self, cursors: &sluice::Checkpoints, table: &str) -> From {
        match cursors.get(table) {
            Some(Position::Tuple(parts)) => match parts.first() {
                Some(Position::Text(version)) => {
                    From::AtOrAfter(minus(version, self.config.overlap_ms))
                }
                _ => From::Start,
            },
            _ => From::Start,
        }
    }
}

impl Source for SupabaseSource {
    type Payload = ChangeRecord;

    fn name(&self) -> &str {
        &self.name
    }

    fn idle_timeout(&self) -> Option<Duration> {
        // Heartbeat replies count as life; two missed intervals mean a dead socket.
        Some(self.config.heartbeat() * 3)
    }

    #[allow(clippy::too_many_lines)]
    async fn run(&mut self, ctx: SourceContext<ChangeRecord>) -> Result<SessionEnd, SourceError> {
        let c = self.config.clone();
        let schema: std::sync::Arc<str> = c.schema.as_str().into();
        let v2 = c.vsn == "2.0.0";
        let mut request = c
            .socket_url()
            .into_client_request()
            .map_err(|e| SourceError::fatal("supabase: bad realtime url").with_source(e))?;
        request.headers_mut().insert(
            "x-api-key",
            c.key
                .parse()
                .map_err(|_| SourceError::fatal("supabase: the key is not a valid header value"))?,
        );
        let socket =
            crate::websocket::connect(request, "supabase: realtime", c.join_timeout()).await?;
        let (mut out, mut incoming) = socket.split();
        let mut next_ref = 0u64;
        let mut fresh_ref = move || {
            next_ref += 1;
            next_ref.to_string()
        };
        let topic = "realtime:sluice".to_owned();
        let join_ref = fresh_ref();
        let bindings: Vec<Value> = c
            .tables
            .iter()
            .map(|t| json!({"event": "*", "schema": c.schema, "table": t}))
            .collect();
        let join = Frame::push(
            Some(&join_ref),
            &join_ref,
            &topic,
            "phx_join",
            json!({
                "config": {"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
                           "postgres_changes": bindings, "private": false},
                "access_token": c.key,
            }),
        );
        out.send(Message::text(join.encode(v2)))
            .await
            .map_err(|e| SourceError::transient("supabase: sending the join").with_source(e))?;
        let mut phase = Phase::Joining(Instant::now() + c.join_timeout());
        let mut ids: Vec<u64> = Vec::new();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + c.heartbeat(), c.heartbeat());
        let mut awaiting_heartbeat: Option<String> = None;
        // (table, from, vouch): a pass that vouches carries checkpoints; a targeted re-read does not.
        let mut backfills: VecDeque<(String, From, bool)> = VecDeque::new();
        let mut page: Option<(String, bool, Page)> = None;
        let mut backfill_done = false;
        let mut system_error = String::new();
        let durable = ctx.durable();
        let reconcile_every = Duration::from_millis(if c.reconcile_ms == 0 {
            u64::MAX / 4
        } else {
            c.reconcile_ms
        });
        let mut reconcile =
            tokio::time::interval_at(Instant::now() + reconcile_every, reconcile_every);
        loop {
            let deadline = match phase {
                Phase::Joining(d) | Phase::Subscribing(d) => Some(d),
                Phase::Live => None,
            };
            if page.is_none()
                && let Some((table, from, vouch)) = backfills.pop_front()
            {
                let fut = self.page(&table, from);
                page = Some((table, vouch, fut));
            }
            tokio::select! {
                _ = ctx.cancelled() => {
                    let _ = out.send(Message::Close(None)).await;
                    return Ok(SessionEnd::Closed);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return Err(SourceError::transient(match phase {
                        Phase::Joining(_) => "supabase: no reply to the join in time",
                        _ => "supabase: joined, but \"Subscribed to PostgreSQL\" never came",
                    }));
                }
                _ = reconcile.tick() => {
                    // Targeted re-reads waiting do not hold a pass back (a steady flow of
                    // truncated records must not keep the cursor from moving).
                    if phase == Phase::Live && backfill_done && !backfills.iter().any(|(_, _, vouch)| *vouch) {
                        backfill_done = false;
                        let cursors = durable.borrow().clone();
                        for table in &c.tables {
                            backfills.push_back((table.clone(), self.backfill_from(&cursors, table), true));
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if awaiting_heartbeat.is_some() {
                        return Err(SourceError::transient("supabase: heartbeat timeout (no reply to the last heartbeat)"));
                    }
                    let reference = fresh_ref();
                    let frame = Frame::push(None, &reference, "phoenix", "heartbeat", json!({}));
                    out.send(Message::text(frame.encode(v2))).await
                        .map_err(|e| SourceError::transient("supabase: sending a heartbeat").with_source(e))?;
                    awaiting_heartbeat = Some(reference);
                }
                rows = async { page.as_mut().expect("guarded").2.as_mut().await }, if page.is_some() => {
                    let (table, vouch, _) = page.take().expect("guarded");
                    let rows = rows?;
                    let full = rows.len() >= c.page_size;
                    let mut last = None;
                    for row in rows {
                        let (key, version) = match self.identify(&table, &row)? {
                            Ok(identified) => identified,
                            Err(reason) => {
                                ctx.reject(Rejected { resource: RESOURCE.into(), raw: row.to_string(), reason, checkpoint: None }).await?;
                                continue;
                            }
                        };
                        // A targeted re-read (after a truncated record) starts mid-table: it
                        // vouches for nothing below its start, so it moves no cursor.
                        let checkpoint = vouch.then(|| Checkpoint::new(table.as_str(), position(&version, &key[&c.primary_key])));
                        last = Some((version.clone(), key[&c.primary_key].clone()));
                        let record = change_record(&schema, &table, key, &version, "snapshot", None, Some(row), "backfill");
                        self.emit(&ctx, record, checkpoint).await?;
                    }
                    metrics::counter!("sluice_supabase_backfill_pages_total").increment(1);
                    match last {
                        Some((version, key)) if full => backfills.push_front((table, From::After(version, key), vouch)),
                        _ => {}
                    }
                    if vouch && !backfill_done && !backfills.iter().any(|(_, _, v)| *v) {
                        backfill_done = true;
                        tracing::info!(tables = c.tables.len(), "supabase backfill pass done; the cursor is verified through it");
                    }
                }
                message = incoming.next() => {
                    let text = match message {
                        None => return Err(SourceError::transient("supabase: realtime closed the socket")),
                        Some(Err(e)) => return Err(SourceError::transient("supabase: realtime socket failed").with_source(e)),
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            return Err(SourceError::transient(format!(
                                "supabase: realtime closed the socket ({})",
                                frame.map(|f| f.reason.to_string()).unwrap_or_default()
                            )));
                        }
                        // Binary frames carry broadcasts only; pings are answered by tungstenite.
                        Some(Ok(_)) => continue,
                    };
                    let frame = match Frame::decode(text.as_str()) {
                        Ok(frame) => frame,
                        Err(reason) => {
                            ctx.reject(Rejected { resource: RESOURCE.into(), raw: text.to_string(), reason, checkpoint: None }).await?;
                            continue;
                        }
                    };
                    match (frame.topic.as_str(), frame.event.as_str()) {
                        ("phoenix", "phx_reply") => {
                            if awaiting_heartbeat.is_some() && frame.reference == awaiting_heartbeat {
                                awaiting_heartbeat = None;
                                ctx.alive();
                            }
                        }
                        (t, "phx_reply") if t == topic && frame.reference.as_deref() == Some(join_ref.as_str()) => {
                            let payload = &frame.payload;
                            if payload["status"] != "ok" {
                                let reason = payload["response"]["reason"].as_str().map(str::to_owned)
                                    .unwrap_or_else(|| payload["response"].to_string());
                                return Err(join_error(&reason));
                            }
                            let echoed = payload["response"]["postgres_changes"].as_array().cloned().unwrap_or_default();
                            let matches = echoed.len() == c.tables.len()
                                && echoed.iter().zip(&c.tables).all(|(e, t)| e["table"] == t.as_str() && e["schema"] == c.schema.as_str());
                            if !matches {
                                return Err(SourceError::transient("supabase: mismatch between server and client bindings for postgres changes"));
                            }
                            ids = echoed.iter().filter_map(|e| e["id"].as_u64()).collect();
                            phase = Phase::Subscribing(Instant::now() + c.join_timeout());
                        }
                        (t, "system") if t == topic => {
                            let p = &frame.payload;
                            let message = p["message"].as_str().unwrap_or_default();
                            match (p["status"].as_str(), p["extension"].as_str()) {
                                (Some("ok"), Some("postgres_changes")) if message.contains("Subscribed to PostgreSQL") && phase != Phase::Live => {
                                        phase = Phase::Live;
                                        ctx.alive();
                                        backfill_done = false;
                                        let cursors = durable.borrow().clone();
                                        for table in &c.tables {
                                            backfills.push_back((table.clone(), self.backfill_from(&cursors, table), true));
                                        }
                                        tracing::info!(tables = c.tables.len(), "supabase subscription live; backfilling");
                                }
                                (Some("error"), Some("postgres_changes")) => {
                                    return Err(SourceError::fatal(format!(
                                        "supabase: realtime cannot follow the tables (is the table in the supabase_realtime publication, and does it exist?): {message}"
                                    )));
                                }
                                (Some("error"), _) => system_error = message.to_owned(),
                                _ => {}
                            }
                        }
                        (t, "phx_close" | "phx_error") if t == topic => {
                            return Err(SourceError::transient(format!(
                                "supabase: the server closed the channel ({}){}",
                                frame.event,
                                if system_error.is_empty() { String::new() } else { format!(": {system_error}") }
                            )));
                        }
                        (t, "postgres_changes") if t == topic => {
                            let event_ids: Vec<u64> = frame.payload["ids"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
                            if event_ids.iter().any(|id| !ids.contains(id)) {
                                return Err(SourceError::transient("supabase: change for bindings this channel does not have; rejoining"));
                            }
                            let data = &frame.payload["data"];
                            let table = data["table"].as_str().unwrap_or_default().to_owned();
                            let commit = data["commit_timestamp"].as_str().and_then(normalize_time);
                            let kind = data["type"].as_str().unwrap_or_default();
                            if !data["errors"].is_null() {
                                // A truncated record: store nothing partial; read the row again.
                                ctx.reject(Rejected {
                                    resource: RESOURCE.into(),
                                    raw: text.to_string(),
                                    reason: format!("realtime sent a truncated change ({}); backfilled instead", data["errors"]),
                                    checkpoint: None,
                                }).await?;
                                let from = commit.as_deref().map(|t| From::AtOrAfter(minus(t, c.overlap_ms))).unwrap_or(From::Start);
                                queue_reread(&mut backfills, table, from);
                                continue;
                            }
                            let (record, checkpoint) = match kind {
                                "INSERT" | "UPDATE" => {
                                    let row = data["record"].clone();
                                    let (key, version) = match self.identify(&table, &row)? {
                                        Ok(identified) => identified,
                                        Err(reason) => {
                                            ctx.reject(Rejected { resource: RESOURCE.into(), raw: text.to_string(), reason, checkpoint: None }).await?;
                                            continue;
                                        }
                                    };
                                    let op = if kind == "INSERT" { "insert" } else { "update" };
                                    let record = change_record(&schema, &table, key, &version, op, commit.as_deref(), Some(row), "realtime");
                                    // Live events never move the cursor: Realtime drops changes
                                    // without a sign, so only a backfill pass that read the
                                    // table through a point in time may vouch for it.
                                    (record, None)
                                }
                                "DELETE" => {
                                    let old = &data["old_record"];
                                    let key = match old.get(&c.primary_key) {
                                        Some(pk) => json!({ c.primary_key.clone(): pk }),
                                        None => old.clone(),
                                    };
                                    let version = commit.clone().unwrap_or_default();
                                    (change_record(&schema, &table, key, &version, "delete", commit.as_deref(), None, "realtime"), None)
                                }
                                _ => continue,
                            };
                            metrics::counter!("sluice_supabase_changes_total", "op" => kind.to_owned()).increment(1);
                            self.emit(&ctx, record, checkpoint).await?;
                        }
                        // presence_state, presence_diff, broadcast, replies to other pushes.
                        _ => metrics::counter!("sluice_supabase_ignored_frames_total").increment(1),
                    }
                }
            }
        }
    }
}
