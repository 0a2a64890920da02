//! `POST /mutate` and `/validate`: glue between HTTP and [`admission::parse_and_admit`]. The
//! handlers hold only what they read: the published evaluator, the quota coordinator when
//! live cluster state is used, the global mode, the metrics and the concurrency limit.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::Semaphore;

use super::quota::QuotaCoordinator;
use crate::admission::{self, admit, Mode, ParsedReview, ReviewError};
use crate::metrics::Metrics;
use crate::policy::verdict::Verdict;
use crate::policy::{Evaluator, Published, Stage};

/// Largest AdmissionReview accepted. Kubernetes objects are capped at about 1.5 MiB by etcd; a
/// review carries the object and, on UPDATE, the old object, so 8 MiB leaves room without
/// letting one request hold unbounded memory.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Bodies above this are evaluated on the blocking pool so they cannot stall the async
/// workers that serve everyone else's small reviews.
const INLINE_BODY_BYTES: usize = 128 * 1024;

#[derive(Clone)]
pub struct WebhookState {
    pub published: Arc<Published>,
    /// Live cluster state: Pod CREATEs at /validate go through it to reserve quota.
    pub quota: Option<Arc<QuotaCoordinator>>,
    pub mode: Mode,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Semaphore>,
}

impl WebhookState {
    /// The verdict for one parsed review: through the quota coordinator when the review
    /// reserves quota, else straight against the published evaluator.
    fn admit(&self, review: &ParsedReview, stage: Stage) -> Verdict {
        let evaluate = |evaluator: &Evaluator| admit(evaluator, review, stage, self.mode);
        match &self.quota {
            // Check the quota and reserve what the pod takes in one step (see `quota`).
            Some(quota) if QuotaCoordinator::reserves(review, stage) => {
                quota.decide_and_reserve(review, evaluate)
            }
            _ => evaluate(&self.published.load()),
        }
    }

    fn answer(&self, stage: Stage, body: &[u8]) -> Result<(ParsedReview, Verdict), ReviewError> {
        admission::parse_and_admit(body, |review| self.admit(review, stage))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

async fn mutate(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    review(state, Stage::Mutate, headers, body).await
}

async fn validate(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    review(state, Stage::Validate, headers, body).await
}

async fn review(state: WebhookState, stage: Stage, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let endpoint = stage.as_str();
    if !is_json(&headers) {
        state
            .metrics
            .observe_rejected(endpoint, started.elapsed().as_secs_f64());
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json (an admission.k8s.io/v1 AdmissionReview)\n",
        )
            .into_response();
    }
    let Ok(_permit) = state.limiter.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let result = if body.len() > INLINE_BODY_BYTES {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.answer(stage, &body))
            .await
            .unwrap_or_else(|e| {
                Err(ReviewError::NotAReview(format!(
                    "evaluation task failed: {e}"
                )))
            })
    } else {
        state.answer(stage, &body)
    };
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "rejected a request that is not a usable AdmissionReview");
            state.metrics.observe_rejected(endpoint, seconds);
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Ok((parsed, verdict)) => {
            state
                .metrics
                .observe(endpoint, &parsed.kind, &parsed.operation, &verdict, seconds);
            let cluster_age = state.metrics.cluster_state_age();
            crate::decision_log::log(endpoint, &parsed, &verdict, seconds, cluster_age);
            Json(parsed.reply(&verdict)).into_response()
        }
    }
}

/// POST /mutate and /validate.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
