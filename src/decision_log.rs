//! The decision log: one line per answered review, with everything needed to find out why a
//! given pod was denied, patched or warned.

use crate::admission::ParsedReview;
use crate::policy::verdict::Verdict;

/// `cluster_age` is how many seconds old the live cluster state is (None without live state):
/// a decision taken while the API server was unreachable says so.
pub fn log(
    endpoint: &str,
    review: &ParsedReview,
    verdict: &Verdict,
    seconds: f64,
    cluster_age: Option<i64>,
) {
    let fired: Vec<serde_json::Value> = verdict
        .fired
        .iter()
        .map(|f| {
            serde_json::json!({
                "policy": f.policy, "finding": f.finding.as_str(), "action": f.action.as_str(),
                "messages": f.messages,
            })
        })
        .collect();
    let decision = verdict.outcome();
    let patch_ops = verdict.patch.as_ref().map_or(0, |p| p.ops.len());
    tracing::info!(
        target: "mlguard::decision",
        endpoint,
        uid = %review.uid,
        kind = %review.kind,
        namespace = %review.namespace,
        name = %review.name,
        user = %review.user,
        operation = %review.operation,
        dry_run = review.dry_run,
        decision,
        patch_ops,
        would_deny = ?verdict.would_deny,
        would_patch = ?verdict.would_patch,
        policies = %serde_json::Value::Array(fired),
        latency_us = (seconds * 1e6) as u64,
        cluster_state_age_s = cluster_age.unwrap_or(-1),
        "admission review"
    );
}
