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

/// POSTs a review to /validate; returns (allowed, message).
pub async fn validate(app: &Arc<Webhook>, body: Vec<u8>) -> (bool, String) {
    let request = Request::post("/validate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app.webhook_router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let review: Json = serde_json::from_slice(&bytes).unwrap();
    let r = &review["response"];
    (
        r["allowed"].as_bool().unwrap(),
        r["status"]["message"].as_str().unwrap_or("").to_string(),
    )
}
