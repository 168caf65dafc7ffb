//! The Phoenix side: upgrade checks, both encodings, heartbeats, joins, change fan-out.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    extract::{
        Query, State as Shared, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{ChangeEvent, State};

fn error_response(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"error": message}))).into_response()
}

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Shared(state): Shared<Arc<State>>,
) -> Response {
    if let Some((status, message)) = state.faults().handshake_error {
        return error_response(status, &message);
    }
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| params.get("apikey").cloned());
    match key {
        None => return error_response(401, "API key is missing"),
        Some(key) if key != state.config.api_key => {
            return error_response(401, "Failed to validate JWT signature");
        }
        Some(_) => {}
    }
    let v2 = match params.get("vsn").map(String::as_str) {
        None | Some("1.0.0") => false,
        Some("2.0.0") => true,
        Some(_) => return error_response(400, "unsupported vsn"),
    };
    state.counters.connections.fetch_add(1, Ordering::Relaxed);
    ws.on_upgrade(move |socket| async move {
        let kick = state.kick.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let shutdown = state.shutdown.clone();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = kick.cancelled() => {}
            _ = connection(socket, state, v2) => {}
        }
    })
}

/// A decoded client frame.
struct Frame {
    join_ref: Option<String>,
    reference: Option<String>,
    topic: String,
    event: String,
    payload: Value,
}

fn parse(text: &str, v2: bool) -> Option<Frame> {
    let value: Value = serde_json::from_str(text).ok()?;
    let string = |v: &Value| v.as_str().map(str::to_owned);
    if v2 {
        let array = value.as_array().filter(|a| a.len() == 5)?;
        Some(Frame {
            join_ref: string(&array[0]),
            reference: string(&array[1]),
            topic: string(&array[2])?,
            event: string(&array[3])?,
            payload: array[4].clone(),
        })
    } else {
        Some(Frame {
            join_ref: string(&value["join_ref"]),
            reference: string(&value["ref"]),
            topic: string(&value["topic"])?,
            event: string(&value["event"])?,
            payload: value.get("payload")?.clone(),
        })
    }
}

/// Renders a server frame; 1.0.0 never carries `join_ref`.
fn render(
    v2: bool,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: Value,
) -> String {
    if v2 {
        json!([join_ref, reference, topic, event, payload]).to_string()
    } else {
        json!({"topic": topic, "event": event, "payload": payload, "ref": reference}).to_string()
    }
}

/// One joined channel of a connection.
struct Channel {
    topic: String,
    join_ref: Option<String>,
    /// (binding id, event filter, table) per binding.
    bindings: Vec<(u32, String, String)>,
    live: bool,
}

/// Phoenix computes `phash2` of the binding; any deterministic hash below 2^27 will do.
fn binding_id(binding: &Value) -> u32 {
    let text = binding.to_string();
    let mut hash: u32 = 2_166_136_261;
    for b in text.bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    hash % (1 << 27)
}

enum Internal {
    Live(String),
    SubscribeError(String, String),
}

async fn connection(mut socket: WebSocket, state: Arc<State>, v2: bool) {
    let mut changes = state.changes.subscribe();
    let mut expire = state.expire.subscribe();
    let (internal_tx, mut internal) = mpsc::unbounded_channel::<Internal>();
    let mut channels: Vec<Channel> = Vec::new();
    let idle = state.config.idle_timeout;
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let outgoing: Vec<String> = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return, // idle: the server closes
            message = socket.recv() => {
                let Some(Ok(message)) = message else { return };
                deadline = tokio::time::Instant::now() + idle;
                let Message::Text(text) = message else { continue };
                let Some(frame) = parse(text.as_str(), v2) else { continue };
                handle(&state, v2, frame, &mut channels, &internal_tx)
            }
            item = internal.recv() => {
                let Some(item) = item else { return };
                match item {
                    Internal::Live(topic) => channels
                        .iter_mut()
                        .filter(|c| c.topic == topic)
                        .map(|c| {
                            c.live = true;
                            let sub = topic.trim_start_matches("realtime:");
                            render(v2, c.join_ref.as_deref(), None, &topic, "system", json!({
                                "message": "Subscribed to PostgreSQL", "status": "ok",
                                "extension": "postgres_changes", "channel": sub}))
                        })
                        .collect(),
                    Internal::SubscribeError(topic, message) => channels
                        .iter()
                        .filter(|c| c.topic == topic)
                        .map(|c| render(v2, c.join_ref.as_deref(), None, &topic, "system", json!({
                            "message": message, "status": "error",
                            "extension": "postgres_changes", "channel": topic.trim_start_matches("realtime:")})))
                        .collect(),
                }
            }
            _ = expire.recv() => {
                let mut out = Vec::new();
                for c in channels.drain(..) {
                    out.push(render(v2, c.join_ref.as_deref(), None, &c.topic, "system", json!({
                        "message": "Token has expired 3 seconds ago", "status": "error",
                        "extension": "system", "channel": c.topic.trim_start_matches("realtime:")})));
                    out.push(render(v2, c.join_ref.as_deref(), c.join_ref.as_deref(), &c.topic, "phx_close", json!({})));
                }
                out
            }
            change = changes.recv() => match change {
                Ok(change) => fan_out(&state, v2, &channels, &change),
                Err(RecvError::Lagged(n)) => {
                    state.counters.dropped.fetch_add(n, Ordering::Relaxed);
                    Vec::new()
                }
                Err(RecvError::Closed) => return,
            },
        };
        for text in outgoing {
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
}

fn fan_out(state: &State, v2: bool, channels: &[Channel], change: &ChangeEvent) -> Vec<String> {
    let mut out = Vec::new();
    let faults = state.faults();
    for channel in channels {
        let ids: Vec<u32> = channel
            .bindings
            .iter()
            .filter(|(_, event, table)| {
                (event == "*" || event == change.kind) && (table == "*" || *table == change.table)
            })
            .map(|(id, ..)| *id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        // Faithful: no replay; a channel not yet live never gets this change.
        if !channel.live || state.roll(faults.drop) {
            state.counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut data = change.data.clone();
        if state.roll(faults.errors) {
            data["errors"] = json!(["Error 413: Payload Too Large"]);
            if let Some(record) = data.get_mut("record").and_then(Value::as_object_mut) {
                record.retain(|_, v| v.to_string().len() <= 64);
            }
        }
        if state.roll(faults.malformed) {
            out.push("{\"topic\": \"realtime:".to_owned());
        }
        let text = render(
            v2,
            None,
            None,
            &channel.topic,
            "postgres_changes",
            json!({"ids": ids, "data": data}),
        );
        if state.roll(faults.duplicate) {
            out.push(text.clone());
        }
        out.push(text);
        state.counters.delivered.fetch_add(1, Ordering::Relaxed);
    }
    out
}

fn reply(v2: bool, frame: &Frame, status: &str, response: Value) -> String {
    render(
        v2,
        frame.join_ref.as_deref(),
        frame.reference.as_deref(),
        &frame.topic,
        "phx_reply",
        json!({"status": status, "response": response}),
    )
}

fn handle(
    state: &Arc<State>,
    v2: bool,
    frame: Frame,
    channels: &mut Vec<Channel>,
    internal: &mpsc::UnboundedSender<Internal>,
) -> Vec<String> {
    let faults = state.faults();
    match (frame.topic.as_str(), frame.event.as_str()) {
        ("phoenix", "heartbeat") if faults.mute_heartbeats => Vec::new(),
        ("phoenix", "heartbeat") => vec![reply(v2, &frame, "ok", json!({}))],
        (topic, "phx_join") if topic.starts_with("realtime:") => {
            if topic == "realtime:" {
                return vec![reply(
                    v2,
                    &frame,
                    "error",
                    json!({"reason": "TopicNameRequired: You must provide a topic name"}),
                )];
            }
            if let Some(reason) = faults.join_error {
                return vec![reply(v2, &frame, "error", json!({"reason": reason}))];
            }
            let requested = frame.payload["config"]["postgres_changes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut echoed = Vec::new();
            let mut bindings = Vec::new();
            let mut unknown = Vec::new();
            for binding in requested {
                let id = binding_id(&binding);
                let table = binding["table"].as_str().unwrap_or("*").to_owned();
                if table != "*" && !state.config.tables.contains(&table) {
                    unknown.push(table.clone());
                }
                let event = binding["event"].as_str().unwrap_or("*").to_owned();
                let mut with_id = binding.clone();
                with_id["id"] = json!(id);
                echoed.push(with_id);
                bindings.push((id, event, table));
            }
            // A second join on a topic closes the old channel.
            let mut out = Vec::new();
            if let Some(i) = channels.iter().position(|c| c.topic == frame.topic) {
                let old = channels.remove(i);
                out.push(render(
                    v2,
                    old.join_ref.as_deref(),
                    old.join_ref.as_deref(),
                    &old.topic,
                    "phx_close",
                    json!({}),
                ));
            }
            channels.push(Channel {
                topic: frame.topic.clone(),
                join_ref: frame.join_ref.clone().or(frame.reference.clone()),
                bindings,
                live: false,
            });
            state.counters.joins.fetch_add(1, Ordering::Relaxed);
            out.push(reply(v2, &frame, "ok", json!({"postgres_changes": echoed})));
            let delay = faults.subscribe_delay;
            let failure = faults.subscribe_error.or_else(|| {
                (!unknown.is_empty()).then(|| {
                    format!(
                        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [schema: {}, table: {}, filters: []]",
                        state.config.schema,
                        unknown.join(", ")
                    )
                })
            });
            let internal = internal.clone();
            let topic = frame.topic.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay.max(Duration::from_millis(1))).await;
                let _ = internal.send(match failure {
                    Some(message) => Internal::SubscribeError(topic, message),
                    None => Internal::Live(topic),
                });
            });
            out
        }
        (topic, "phx_leave") if channels.iter().any(|c| c.topic == topic) => {
            channels.retain(|c| c.topic != topic);
            vec![
                reply(v2, &frame, "ok", json!({})),
                render(
                    v2,
                    frame.join_ref.as_deref(),
                    frame.reference.as_deref(),
                    &frame.topic,
                    "phx_close",
                    json!({}),
                ),
            ]
        }
        (topic, "access_token") if channels.iter().any(|c| c.topic == topic) => Vec::new(),
        _ => vec![reply(
            v2,
            &frame,
            "error",
            json!({"reason": "unmatched topic"}),
        )],
    }
}
