//! Helpers shared by the tests of cluster state (watch, audit reads, sizing): the bound on
//! every wait, and admission reviews taken through the webhook router as the API server would
//! send them.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mlguard::serve::Webhook;
use serde_json::Value as Json;
use tower::ServiceExt;

/// Longest wait for anything in these tests; a healthy run needs well under a second per step.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn fixture_pod_review() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/gpu-training-pod.json"
    ))
    .unwrap()
}

/// The fixture pod as validating admission sees it: the API server has named it (from its
/// generateName) and given it a uid, which a quota reservation needs. Each call is another pod.
pub fn validating_pod_review() -> Vec<u8> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut review: Json = serde_json::from_slice(&fixture_pod_review()).unwrap();
    let metadata = &mut review["request"]["object"]["metadata"];
    metadata["name"] = serde_json::json!(format!("resnet50-train-{n:05}"));
    metadata["uid"] = serde_json::json!(format!("3f1e0c2a-0000-4000-8000-{n:012}"));
    serde_json::to_vec(&review).unwrap()
}

/// POSTs a review to /validate; returns the AdmissionResponse.
pub async fn validate_response(app: &Arc<Webhook>, body: Vec<u8>) -> Json {
    let request = Request::post("/validate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app.webhook_router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let mut review: Json = serde_json::from_slice(&bytes).unwrap();
    review["response"].take()
}

/// POSTs a review to /validate; returns (allowed, message).
pub async fn validate(app: &Arc<Webhook>, body: Vec<u8>) -> (bool, String) {
    let r = validate_response(app, body).await;
    (
        r["allowed"].as_bool().unwrap(),
        r["status"]["message"].as_str().unwrap_or("").to_string(),
    )
}
