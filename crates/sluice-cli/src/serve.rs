//! Defines the opt-in HTTP endpoints: `/metrics` (Prometheus text), `/health` (200 unless a
//! pipeline failed for good or the process is draining: 503), `/ready` (200 when every pipeline
//! has a session open and holds no partition at a hole it cannot fill).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluice::{Health, PipelineState, PipelineStats};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Shared {
    prometheus: PrometheusHandle,
    health: Health,
    stats: Arc<Vec<Arc<PipelineStats>>>,
    shutdown: CancellationToken,
}

/// Installs the Prometheus recorder. Call once, before pipelines start counting.
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}

/// Serves the endpoints until `shutdown`.
pub(crate) async fn serve(
    addr: SocketAddr,
    prometheus: PrometheusHandle,
    health: Health,
    stats: Vec<Arc<PipelineStats>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Shared {
        prometheus,
        health,
        stats: Arc::new(stats),
        shutdown: shutdown.clone(),
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move { s.prometheus.render() }),
        )
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics /health /ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn health_handler(State(s): State<Shared>) -> (StatusCode, String) {
    if s.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let health = s.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut body = String::new();
    let mut ok = true;
    for (id, state) in &health {
        ok &= !matches!(state, PipelineState::Failed { .. });
        body.push_str(&format!("{id}: {state:?}\n"));
    }
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

async fn ready_handler(State(s): State<Shared>) -> StatusCode {
    if !s.shutdown.is_cancelled() && s.stats.iter().all(|st| st.snapshot().ready()) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
