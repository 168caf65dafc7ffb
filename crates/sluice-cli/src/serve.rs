//! Defines the opt-in HTTP endpoints: `/metrics` (Prometheus text), `/health` (200 while the
//! process serves: alive, whatever its pipelines and sinks are doing, so an orchestrator never
//! restart-loops it over a down sink), `/ready` (200 when every pipeline holds its lease, has a
//! session open, holds no partition at a hole, is not paused, and no cursor is older than its
//! pipeline's `max_cursor_age_s`), and `/status` (JSON: the live view `sluice status` shows).

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use sluice::{Health, PipelineState, PipelineStats};
use tokio_util::sync::CancellationToken;

/// One pipeline as the endpoints see it: its counters and its freshness limit.
#[derive(Clone, Debug)]
pub(crate) struct Watched {
    pub(crate) id: String,
    pub(crate) stats: Arc<PipelineStats>,
    /// `/ready` fails when a cursor has not moved for longer.
    pub(crate) max_cursor_age: Option<Duration>,
}

/// The pipelines the endpoints show: fixed for `sluice run`, changing for a fleet worker (a
/// pipeline is added when its run starts there and removed when it ends).
pub(crate) type Registry = Arc<Mutex<Vec<Watched>>>;

/// The in and out counters of each pipeline at one moment.
type Counts = BTreeMap<String, (u64, u64)>;

/// Counter samples, one a second, for rates over the last few seconds.
type Samples = Arc<Mutex<VecDeque<(Instant, Counts)>>>;

#[derive(Clone)]
struct Shared {
    prometheus: PrometheusHandle,
    health: Health,
    pipelines: Registry,
    samples: Samples,
    shutdown: CancellationToken,
}

/// The seconds rates are measured over.
const RATE_WINDOW: usize = 5;

/// Bucket bounds of the `_seconds` histograms: a millisecond to a minute (a batch write with
/// its retries). Without buckets the exporter renders summaries, which cannot be summed across
/// processes (a fleet's workers).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder. Call once, before pipelines start counting.
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)?
        .install_recorder()?)
}

/// Serves the endpoints until `shutdown`.
pub(crate) async fn serve(
    addr: SocketAddr,
    prometheus: PrometheusHandle,
    health: Health,
    pipelines: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Shared {
        prometheus,
        health,
        pipelines,
        samples: Samples::default(),
        shutdown: shutdown.clone(),
    };
    tokio::spawn(sample(shared.clone()));
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move { s.prometheus.render() }),
        )
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .route("/status", get(status_handler))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics /health /ready /status");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

impl Shared {
    /// The pipelines now (a copy: the registry is not held while a page is built).
    fn watched(&self) -> Vec<Watched> {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Samples the in/out counters once a second, keeping the last few seconds.
async fn sample(shared: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let counts = shared
            .watched()
            .iter()
            .map(|p| {
                let s = p.stats.snapshot();
                (p.id.clone(), (s.envelopes, s.records_written))
            })
            .collect();
        let mut samples = shared.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((Instant::now(), counts));
        while samples.len() > RATE_WINDOW + 1 {
            samples.pop_front();
        }
    }
}

async fn health_handler(State(s): State<Shared>) -> (StatusCode, String) {
    let mut body = String::new();
    if s.shutdown.is_cancelled() {
        body.push_str("draining\n");
    }
    let health = s.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (id, state) in &health {
        body.push_str(&format!("{id}: {state:?}\n"));
    }
    (StatusCode::OK, body)
}

async fn ready_handler(State(s): State<Shared>) -> (StatusCode, String) {
    let mut body = String::new();
    let mut ready = !s.shutdown.is_cancelled();
    for p in &s.watched() {
        let snapshot = p.stats.snapshot();
        let reason = if !snapshot.up && snapshot.paused {
            Some("paused".to_owned())
        } else if !snapshot.up {
            Some("no session (connecting, backing off, or no lease)".to_owned())
        } else if snapshot.held > 0 {
            Some(format!("{} partition(s) held at a hole", snapshot.held))
        } else {
            p.max_cursor_age.and_then(|limit| {
                p.stats
                    .cursors()
                    .into_iter()
                    .find(|c| c.age > limit)
                    .map(|c| {
                        format!(
                            "cursor {} has not moved for {:.0} s (limit {} s)",
                            c.partition,
                            c.age.as_secs_f64(),
                            limit.as_secs()
                        )
                    })
            })
        };
        ready &= reason.is_none();
        body.push_str(&format!(
            "{}: {}\n",
            p.id,
            reason.as_deref().unwrap_or("ready")
        ));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// The `/status` document: one entry per pipeline.
#[derive(Debug, Serialize)]
pub(crate) struct StatusPage {
    pipelines: Vec<PipelineStatus>,
}

#[derive(Debug, Serialize)]
struct PipelineStatus {
    id: String,
    /// `running`, `backing_off`, `paused`, `completed`, `stopped` or `failed`.
    state: &'static str,
    /// The last error of a pipeline backing off or failed.
    error: Option<String>,
    holder: Option<String>,
    epoch: Option<u64>,
    connected: bool,
    cursors: Vec<CursorEntry>,
    records_in: u64,
    records_out: u64,
    /// Per second, over the last few seconds.
    rate_in: f64,
    rate_out: f64,
    dead_letters: u64,
    skipped: u64,
    reconnects: u64,
    held_partitions: u64,
    errors: Errors,
}

#[derive(Debug, Serialize)]
struct CursorEntry {
    partition: String,
    position: serde_json::Value,
    age_s: f64,
    /// How far the durable cursor is behind the provider, where the source knows it.
    lag: Option<LagEntry>,
}

#[derive(Debug, Serialize)]
struct LagEntry {
    behind: u64,
    unit: &'static str,
}

#[derive(Debug, Serialize)]
struct Errors {
    transient: u64,
    fatal: u64,
    data: u64,
}

async fn status_handler(State(s): State<Shared>) -> Json<StatusPage> {
    let health = s.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let samples = s.samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let pipelines = s
        .watched()
        .iter()
        .map(|p| {
            let snapshot = p.stats.snapshot();
            let (state, error) = match health.get(&p.id) {
                Some(PipelineState::Running) if snapshot.paused => ("paused", None),
                Some(PipelineState::Running) | None => ("running", None),
                Some(PipelineState::Restarting { error }) => ("backing_off", Some(error.clone())),
                Some(PipelineState::Completed) => ("completed", None),
                Some(PipelineState::Stopped) => ("stopped", None),
                Some(PipelineState::Failed { error }) => ("failed", Some(error.clone())),
            };
            let (rate_in, rate_out) = rates(&samples, &p.id);
            let lease = p.stats.lease();
            PipelineStatus {
                id: p.id.clone(),
                state,
                error,
                holder: lease.as_ref().map(|(holder, _)| holder.clone()),
                epoch: lease.map(|(_, token)| token),
                connected: snapshot.up,
                cursors: p
                    .stats
                    .cursors()
                    .into_iter()
                    .map(|c| CursorEntry {
                        position: serde_json::from_str(&c.position)
                            .unwrap_or(serde_json::Value::String(c.position)),
                        partition: c.partition,
                        age_s: (c.age.as_secs_f64() * 10.0).round() / 10.0,
                        lag: c.lag.map(|lag| LagEntry {
                            behind: lag.behind,
                            unit: lag.unit,
                        }),
                    })
                    .collect(),
                records_in: snapshot.envelopes,
                records_out: snapshot.records_written,
                rate_in,
                rate_out,
                dead_letters: snapshot.dead_letters,
                skipped: snapshot.skipped,
                reconnects: snapshot.reconnects,
                held_partitions: snapshot.held,
                errors: Errors {
                    transient: snapshot.errors_transient,
                    fatal: snapshot.errors_fatal,
                    data: snapshot.errors_data,
                },
            }
        })
        .collect();
    Json(StatusPage { pipelines })
}

/// Records per second in and out of pipeline `index` over the sampled window.
fn rates(samples: &VecDeque<(Instant, Counts)>, id: &str) -> (f64, f64) {
    let (Some((t0, first)), Some((t1, last))) = (samples.front(), samples.back()) else {
        return (0.0, 0.0);
    };
    let seconds = t1.duration_since(*t0).as_secs_f64();
    match (first.get(id), last.get(id)) {
        (Some(a), Some(b)) if seconds > 0.0 => (
            b.0.saturating_sub(a.0) as f64 / seconds,
            b.1.saturating_sub(a.1) as f64 / seconds,
        ),
        _ => (0.0, 0.0),
    }
}
