//! `POST /mutate` and `/validate`: glue between HTTP and [`admission::parse_and_admit`]. The
//! handlers hold only what they read: the published evaluator, the quota coordinator when
//! live cluster state is used, the global mode, the metrics and the limits.
//!
//! The limits, so that no single request can take the server down or be admitted unchecked:
//! - a body is at most [`MAX_BODY_BYTES`] and must arrive within the body timeout;
//! - before its body is read, a review takes its share of the review memory, counted from its
//!   declared size ([`memory_cost_kib`]); at most `max_concurrent` are evaluated at once;
//! - evaluation runs on the evaluation pool (`pool`), never on the threads that accept
//!   connections and answer the probes, so an expensive review cannot starve `/healthz`;
//! - every review has a deadline, waiting for memory and a turn included; when it passes,
//!   the configured deadline answer is sent (a denial by default, never a silent admission).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::Semaphore;

use super::pool::EvaluationPool;
use super::quota::QuotaCoordinator;
use crate::admission::{self, admit_until, Mode, ParsedReview, ReviewError, ReviewIds};
use crate::cli::DeadlineAnswer;
use crate::config::ReviewLimits;
use crate::metrics::Metrics;
use crate::policy::verdict::Verdict;
use crate::policy::{Evaluator, Published, Stage};

/// Largest AdmissionReview accepted. Kubernetes objects are capped at about 1.5 MiB by etcd; a
/// review carries the object and, on UPDATE, the old object, so 8 MiB leaves room without
/// letting one request hold unbounded memory.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Memory a review takes per byte of its body while it is answered: the body itself, the copy
/// of its objects kept as raw JSON, and the policy values built from it, which are at most
/// one per 6 bytes of JSON (`admission::review::value_budget`). Measured: an 8.3 MB Pod
/// review of short strings, built in full, raised the peak RSS by 114 MiB, 13.8 bytes a byte
/// (README, Operating: Bounds); 16 leaves a margin.
pub const MEMORY_PER_BODY_BYTE: usize = 16;

/// The share of the review memory a body of `bytes` takes, in KiB.
pub fn memory_cost_kib(bytes: usize) -> u32 {
    let kib = (bytes.max(1) * MEMORY_PER_BODY_BYTE).div_ceil(1024);
    u32::try_from(kib).unwrap_or(u32::MAX)
}

#[derive(Clone)]
pub struct WebhookState {
    pub published: Arc<Published>,
    /// Live cluster state: Pod CREATEs at /validate go through it to reserve quota.
    pub quota: Option<Arc<QuotaCoordinator>>,
    pub mode: Mode,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Semaphore>,
    /// KiB of review memory, shared by the reviews in flight.
    pub memory: Arc<Semaphore>,
    pub limits: ReviewLimits,
    pub pool: Arc<EvaluationPool>,
}

impl WebhookState {
    /// The verdict for one parsed review: through the quota coordinator when the review
    /// reserves quota, else straight against the published evaluator.
    fn admit(&self, review: &ParsedReview, stage: Stage, deadline: Instant) -> Verdict {
        let evaluate = |evaluator: &Evaluator| {
            admit_until(evaluator, review, stage, self.mode, Some(deadline))
        };
        match &self.quota {
            // Check the quota and reserve what the pod takes in one step (see `quota`).
            Some(quota) if QuotaCoordinator::reserves(review, stage) => {
                quota.decide_and_reserve(review, evaluate)
            }
            _ => evaluate(&self.published.load()),
        }
    }

    fn answer(
        &self,
        stage: Stage,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(ParsedReview, Verdict), ReviewError> {
        admission::parse_and_admit(body, |review| self.admit(review, stage, deadline))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn mutate(State(state): State<WebhookState>, request: Request) -> Response {
    review(state, Stage::Mutate, request).await
}

async fn validate(State(state): State<WebhookState>, request: Request) -> Response {
    review(state, Stage::Validate, request).await
}

/// A share of `kib` of the review memory, or None when none came free by `deadline` (or the
/// server is shutting down). Not a fair queue: a small review takes its share whenever one is
/// free, rather than wait behind a large one that waits for most of the memory, so that two
/// stalled uploads of the largest size cannot hold up every other review.
async fn memory_share(
    memory: &Arc<Semaphore>,
    kib: u32,
    deadline: tokio::time::Instant,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    use tokio::sync::TryAcquireError;
    loop {
        match memory.clone().try_acquire_many_owned(kib) {
            Ok(share) => return Some(share),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) if tokio::time::Instant::now() >= deadline => {
                return None
            }
            Err(TryAcquireError::NoPermits) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await
            }
        }
    }
}

/// A request refused before its review could be read: an HTTP error (the API server then
/// applies the webhook's failurePolicy), counted, and logged with the reason.
fn refuse(
    state: &WebhookState,
    endpoint: &str,
    started: Instant,
    status: StatusCode,
    limit: Option<&str>,
    message: String,
) -> Response {
    tracing::warn!(endpoint, status = status.as_u16(), reason = %message, "request refused before evaluation");
    if let Some(limit) = limit {
        state.metrics.observe_limited(endpoint, limit);
    }
    state
        .metrics
        .observe_rejected(endpoint, started.elapsed().as_secs_f64());
    (status, format!("{message}\n")).into_response()
}

async fn review(state: WebhookState, stage: Stage, request: Request) -> Response {
    let started = Instant::now();
    let endpoint = stage.as_str();
    let limits = state.limits.clone();
    let deadline = tokio::time::Instant::from_std(started + limits.deadline);
    let refuse = |status, limit, message| refuse(&state, endpoint, started, status, limit, message);
    if !is_json(request.headers()) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "Content-Type must be application/json (an admission.k8s.io/v1 AdmissionReview)".into(),
        );
    }
    // The API server always declares the length; a body that does not is charged the most.
    let declared = content_length(request.headers()).unwrap_or(MAX_BODY_BYTES);
    if declared > MAX_BODY_BYTES {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body_too_large"),
            format!("an AdmissionReview is at most {MAX_BODY_BYTES} bytes; this one declares {declared}"),
        );
    }
    let Some(_memory) = memory_share(&state.memory, memory_cost_kib(declared), deadline).await
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("memory"),
            format!(
                "no share of the review memory for a {declared}-byte review within the {:?} deadline; mlguard is busy with other large reviews",
                limits.deadline
            ),
        );
    };
    let body_deadline = deadline.min(tokio::time::Instant::from_std(
        started + limits.body_timeout,
    ));
    let body = match tokio::time::timeout_at(
        body_deadline,
        axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                Some("body_too_large"),
                format!("cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}"),
            )
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                Some("body_timeout"),
                format!(
                    "the body did not arrive within {:?}",
                    body_deadline.duration_since(tokio::time::Instant::from_std(started))
                ),
            )
        }
    };
    let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, state.limiter.acquire()).await else {
        return deadline_answer(&state, endpoint, started, &body);
    };
    let task = {
        let (evaluating, body) = (state.clone(), body.clone());
        let deadline = deadline.into_std();
        state
            .pool
            .run(move || evaluating.answer(stage, &body, deadline))
    };
    let result = match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(ReviewError::NotAReview(format!(
            "evaluation task failed: {e}"
        ))),
        Err(_) => return deadline_answer(&state, endpoint, started, &body),
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
            let evaluator = state.published.load();
            let context = crate::decision_log::Context {
                endpoint,
                seconds,
                cluster_age: state.metrics.cluster_state_age(),
                policy_layers: evaluator.set.origin.names(),
            };
            crate::decision_log::log(&parsed, &verdict, &context);
            Json(parsed.reply(&verdict)).into_response()
        }
    }
}

/// The answer when a review's deadline passed before its verdict: the configured deadline
/// answer, logged with the review's uid. The evaluation goes on in the background until its
/// own deadline check stops it, and its verdict is dropped.
fn deadline_answer(
    state: &WebhookState,
    endpoint: &str,
    started: Instant,
    body: &Bytes,
) -> Response {
    state.metrics.observe_limited(endpoint, "deadline");
    let seconds = started.elapsed().as_secs_f64();
    let Some(ids) = ReviewIds::read(body) else {
        state.metrics.observe_rejected(endpoint, seconds);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the review's deadline passed and its body is not an AdmissionReview\n",
        )
            .into_response();
    };
    let limits = &state.limits;
    let admit = limits.on_deadline == DeadlineAnswer::Warn;
    let message = match admit {
        true => format!(
            "mlguard admitted this request WITHOUT its policy checks: they did not finish within its {:?} review deadline (--on-deadline warn); see mlguard's log",
            limits.deadline
        ),
        false => format!(
            "mlguard could not finish evaluating this request within its {:?} review deadline, and does not admit what it has not checked; retry, and if it persists ask a cluster admin to check mlguard's load and policies",
            limits.deadline
        ),
    };
    tracing::warn!(
        target: "mlguard::decision",
        endpoint,
        uid = %ids.uid,
        decision = if admit { "admitted-unchecked" } else { "denied" },
        reason = "deadline",
        latency_us = (seconds * 1e6) as u64,
        "review deadline passed"
    );
    state.metrics.observe_rejected(endpoint, seconds);
    Json(admission::unevaluated(&ids, message, admit)).into_response()
}

/// POST /mutate and /validate.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .with_state(state)
}
