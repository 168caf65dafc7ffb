//! Defines REST `GET /products/{id}/trades` with `limit`, exclusive `before` (newer than) and
//! `after` (older than) trade-id cursors, newest first, `CB-BEFORE`/`CB-AFTER` headers, and the
//! failure statuses of protocols.md §1.12.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Json,
    extract::{Path, Query, State as Shared},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{RestWindow, State};

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

pub(crate) async fn trades(
    Path(product): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    Shared(state): Shared<Arc<State>>,
) -> Response {
    state.counters.rest_requests.fetch_add(1, Ordering::Relaxed);
    if !state.rest_allowed() {
        for counter in [
            &state.counters.rest_throttled,
            &state.counters.rest_rate_limited,
        ] {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        return message(StatusCode::TOO_MANY_REQUESTS, "Public rate limit exceeded");
    }
    let chaos = state.chaos();
    if !chaos.rest_delay.is_zero() {
        tokio::time::sleep(chaos.rest_delay).await;
    }
    let throttled = state
        .rest_throttled_until
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|until| tokio::time::Instant::now() < until);
    if throttled || state.roll(chaos.rest_429) {
        state.counters.rest_failed.fetch_add(1, Ordering::Relaxed);
        state
            .counters
            .rest_throttled
            .fetch_add(1, Ordering::Relaxed);
        return message(StatusCode::TOO_MANY_REQUESTS, "Public rate limit exceeded");
    }
    if state.roll(chaos.rest_500) {
        state.counters.rest_failed.fetch_add(1, Ordering::Relaxed);
        state.counters.rest_errors.fetch_add(1, Ordering::Relaxed);
        return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
    }
    let Some(p) = state.product_index(&product) else {
        return message(StatusCode::NOT_FOUND, "NotFound");
    };
    let number = |key: &str| query.get(key).map(|v| v.parse::<u64>());
    let (limit, before, after) = match (number("limit"), number("before"), number("after")) {
        (Some(Err(_)), ..) | (_, Some(Err(_)), _) | (.., Some(Err(_))) => {
            return message(StatusCode::BAD_REQUEST, "Invalid pagination parameter");
        }
        (limit, before, after) => (
            limit.map(Result::unwrap).unwrap_or(1000),
            before.map(Result::unwrap),
            after.map(Result::unwrap),
        ),
    };
    if limit == 0 || limit > 1000 {
        return message(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000");
    }
    let served = chaos.rest_page_cap.map_or(limit, |cap| cap.clamp(1, limit));
    if served < limit {
        state.counters.rest_capped.fetch_add(1, Ordering::Relaxed);
    }
    let limit = served;
    let lag = match chaos.rest_replica_lag {
        Some(behind) if state.roll(0.5) => chaos.rest_lag + behind,
        _ => chaos.rest_lag,
    };
    let last = state.rest_last(p, lag);
    let oldest = match state.config.rest_retention {
        Some(keep) => state.first[p].max(last.saturating_sub(keep.saturating_sub(1))),
        None => state.first[p],
    };
    // The page adjacent to the cursor(s), newest first.
    let (lo, hi) = match (before, after) {
        (Some(b), None) => (b + 1, b.saturating_add(limit).min(last)),
        (Some(b), Some(a)) if chaos.rest_window == RestWindow::OldestAboveBefore => (
            (b + 1).max(oldest),
            b.saturating_add(limit).min(a.saturating_sub(1)).min(last),
        ),
        (b, Some(a)) => (
            a.saturating_sub(limit).max(b.map_or(0, |b| b + 1)),
            a.saturating_sub(1).min(last),
        ),
        (None, None) => (last.saturating_sub(limit - 1), last),
    };
    let lo = lo.max(oldest);
    let page: Vec<Value> = if lo > hi {
        Vec::new()
    } else {
        (lo..=hi)
            .rev()
            .map(|id| state.trade(p, id).rest())
            .collect()
    };
    let mut headers = HeaderMap::new();
    if lo <= hi {
        headers.insert("cb-before", HeaderValue::from(hi));
        headers.insert("cb-after", HeaderValue::from(lo));
    }
    (StatusCode::OK, headers, Json(Value::Array(page))).into_response()
}
