//! Defines the websocket feed: subscribe handshake, `subscriptions` reply, `last_match` per
//! product, `match` frames as trades are generated, heartbeats per product per second, and the
//! per-connection faults.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    extract::{
        State as Shared, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use super::{State, trade::rfc3339_micros};

pub(crate) async fn upgrade(ws: WebSocketUpgrade, Shared(state): Shared<Arc<State>>) -> Response {
    if state.roll(state.chaos().throttle) {
        state.counters.throttled.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "You are connecting too fast and are being throttled!",
        )
            .into_response();
    }
    state.counters.connections.fetch_add(1, Ordering::Relaxed);
    ws.on_upgrade(move |socket| async move {
        let token = state.shutdown.clone();
        tokio::select! {
            _ = token.cancelled() => {}
            _ = connection(socket, state) => {}
        }
    })
}

fn error_frame(message: &str, reason: &str) -> String {
    json!({"type": "error", "message": message, "reason": reason}).to_string()
}

/// Validates a subscribe message; returns the subscribed products of `matches` and `heartbeat`.
fn subscription(state: &State, text: &str) -> Result<(Vec<usize>, Vec<usize>, Value), String> {
    let fail = |reason: &str| error_frame("Failed to subscribe", reason);
    let message: Value = serde_json::from_str(text)
        .map_err(|_| error_frame("Malformed JSON", "message is not JSON"))?;
    if message["type"] != "subscribe" {
        return Err(fail("Type has to be either subscribe or unsubscribe"));
    }
    let root: Vec<String> = message["product_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut channels: HashMap<String, BTreeSet<String>> = HashMap::new();
    for channel in message["channels"].as_array().into_iter().flatten() {
        let (name, ids) = match channel {
            Value::String(name) => (name.clone(), Vec::new()),
            Value::Object(o) => (
                o.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                o.get("product_ids")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => continue,
        };
        channels
            .entry(name)
            .or_default()
            .extend(root.iter().cloned().chain(ids));
    }
    let mut resolve = |name: &str| -> Result<Vec<usize>, String> {
        let Some(ids) = channels.remove(name) else {
            return Ok(Vec::new());
        };
        if ids.is_empty() {
            return Err(fail(&format!(
                "You need to specify at least one product ID for channel {name}"
            )));
        }
        ids.iter()
            .map(|id| {
                if state.config.delisted.contains(id) {
                    Err(fail(&format!("{id} is delisted")))
                } else {
                    state
                        .product_index(id)
                        .ok_or_else(|| fail(&format!("{id} is not a valid product")))
                }
            })
            .collect()
    };
    let matches = resolve("matches")?;
    let heartbeat = resolve("heartbeat")?;
    let name = |ids: &[usize]| {
        ids.iter()
            .map(|i| state.config.products[*i].clone())
            .collect::<Vec<_>>()
    };
    let mut listed = Vec::new();
    if !matches.is_empty() {
        listed.push(json!({"name": "matches", "product_ids": name(&matches)}));
    }
    if !heartbeat.is_empty() {
        listed.push(json!({"name": "heartbeat", "product_ids": name(&heartbeat)}));
    }
    let reply = json!({"type": "subscriptions", "channels": listed});
    Ok((matches, heartbeat, reply))
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

fn deadline(after: Option<Duration>) -> Option<Instant> {
    after.map(|d| Instant::now() + d)
}

async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn connection(mut socket: WebSocket, state: Arc<State>) {
    // 1. The client must subscribe in time.
    let first = tokio::time::timeout(state.config.subscribe_timeout, socket.recv()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        return;
    };
    let (matches, heartbeat, reply) = match subscription(&state, &text) {
        Ok(parts) => parts,
        Err(frame) => {
            let _ = send(&mut socket, frame).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    // 2. Listen before replying, so no trade falls between last_match and the stream.
    let mut trades = state.trades.subscribe();
    if !send(&mut socket, reply.to_string()).await {
        return;
    }
    let mut sent_up_to: Vec<u64> = state.first.iter().map(|f| f - 1).collect();
    for &p in &matches {
        let last = state.last(p);
        if last >= state.first[p] {
            if !send(&mut socket, state.trade(p, last).frame("last_match")).await {
                return;
            }
            sent_up_to[p] = last;
        }
    }
    let chaos = state.chaos();
    // Each of these ends the connection when it fires, so each fires at most once.
    let stall_at = deadline(state.exponential(chaos.stall_every));
    let close_at = deadline(state.exponential(chaos.close_every));
    let error_at = deadline(state.exponential(chaos.error_every));
    let mut beat = tokio::time::interval(state.config.heartbeat);
    let mut held: HashMap<usize, String> = HashMap::new();
    loop {
        tokio::select! {
            announced = trades.recv() => {
                let announce = match announced {
                    Ok(announce) => announce,
                    // A consumer too slow for the feed is disconnected (ErrSlowConsume).
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => return,
                };
                let p = announce.product;
                if !matches.contains(&p) || announce.trade_id <= sent_up_to[p] {
                    continue;
                }
                sent_up_to[p] = announce.trade_id;
                for frame in faulted(&state, p, state.trade(p, announce.trade_id).frame("match"), &mut held) {
                    if !send(&mut socket, frame).await {
                        return;
                    }
                }
            }
            _ = beat.tick() => {
                for &p in &heartbeat {
                    let last = state.last(p);
                    let frame = json!({
                        "type": "heartbeat",
                        "last_trade_id": last,
                        "product_id": state.config.products[p],
                        "sequence": state.trade(p, last).sequence + 1,
                        "time": rfc3339_micros(chrono::Utc::now().timestamp_micros()),
                    });
                    if !send(&mut socket, frame.to_string()).await {
                        return;
                    }
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = at(stall_at) => {
                state.counters.stalls.fetch_add(1, Ordering::Relaxed);
                stall(&mut socket).await;
                return;
            }
            _ = at(close_at) => {
                state.counters.closes.fetch_add(1, Ordering::Relaxed);
                return; // dropping the socket closes TCP without a close frame
            }
            _ = at(error_at) => {
                state.counters.errors.fetch_add(1, Ordering::Relaxed);
                let _ = send(&mut socket, error_frame("Internal server error", "simulated failure")).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

/// Applies the per-frame faults to one `match` frame; returns what to send, in order.
fn faulted(
    state: &State,
    product: usize,
    frame: String,
    held: &mut HashMap<usize, String>,
) -> Vec<String> {
    let chaos = state.chaos();
    let counters = &state.counters;
    let mut out = Vec::with_capacity(3);
    if state.roll(chaos.unknown) {
        out.push(json!({"type": "ticker_batch_v2", "product_id": state.config.products[product], "note": "a type this client does not know"}).to_string());
    }
    if state.roll(chaos.malformed) {
        let broken = if state.roll(0.5) {
            "{\"type\":\"match\",\"trade_id\":".to_owned()
        } else {
            json!({"type": "match", "product_id": state.config.products[product]}).to_string()
        };
        out.push(broken);
    }
    if state.roll(chaos.drop) {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        out.extend(held.remove(&product));
        return out;
    }
    if state.roll(chaos.reorder) && !held.contains_key(&product) {
        counters.reordered.fetch_add(1, Ordering::Relaxed);
        held.insert(product, frame);
        return out;
    }
    counters.matches_sent.fetch_add(1, Ordering::Relaxed);
    let duplicate = state.roll(chaos.duplicate);
    out.push(frame.clone());
    out.extend(held.remove(&product));
    if duplicate {
        counters.duplicated.fetch_add(1, Ordering::Relaxed);
        out.push(frame);
    }
    out
}

/// Keeps the socket open and silent until the client goes away.
async fn stall(socket: &mut WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Close(_)) {
            return;
        }
    }
}
