//! The probe port: `GET /healthz`, `/readyz`, `/metrics` and `/status`. Read-only views of
//! the handles the rest of the server writes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::health::Health;
use super::quota::QuotaCoordinator;
use crate::admission::Mode;
use crate::metrics::Metrics;
use crate::policy::Published;

#[derive(Clone)]
pub struct ProbeState {
    pub published: Arc<Published>,
    pub quota: Option<Arc<QuotaCoordinator>>,
    pub mode: Mode,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ProbeState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<ProbeState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn status(State(state): State<ProbeState>) -> Json<serde_json::Value> {
    let evaluator = state.published.load();
    let set = &evaluator.set;
    let health = &state.health;
    Json(serde_json::json!({
        "version": crate::metrics::VERSION,
        "commit": crate::metrics::COMMIT,
        "mode": state.mode.as_str(),
        "ready": health.readiness().err().unwrap_or_else(|| "ready".into()),
        "policies": {
            "origin": set.origin.to_string(),
            "layers": set.origin.names(),
            "exemptions": !set.exemptions.is_empty(),
            "generation": state.published.generation(),
            "evaluator": set.backend.as_str(),
            "vm_fallback_reason": set.vm_fallback_reason,
            "hints": set.hints,
            "names": set.policy_names(),
            "files": set.files,
            "last_reload_error": health.policy_error.get(),
        },
        "certificate": {
            "not_after": health.cert.as_ref().map(|c| c.not_after()),
            "last_reload_error": health.cert_error.get(),
        },
        "cluster": {
            "namespaces": evaluator.cluster.namespaces.len(),
            "quotas": evaluator.cluster.quota_count(),
            "nodes": evaluator.cluster.nodes.len(),
            "live": state.quota.is_some(),
            "age_seconds": state.metrics.cluster_state_age(),
            "quota_reservations": state.quota.as_ref().map(|q| q.reservations()),
        },
    }))
}

/// GET /healthz, /readyz, /metrics, /status.
pub fn router(state: ProbeState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}
