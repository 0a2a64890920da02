//! The decision log: one line per answered review, with everything needed to find out why a
//! given pod was denied, patched, warned or exempted.
//!
//! With `--log-format json` the line is one JSON object whose structured fields (`policies`,
//! `would_deny`, `would_patch`, `exempted`, `policy_layers`) are JSON values, not strings
//! holding JSON: tracing's JSON formatter can only write a field as a string, number or
//! boolean, so mlguard serializes this record itself, in the formatter's shape (`timestamp`,
//! `level`, `target`, `message`, then the fields), and writes it to standard error in one
//! write, as the formatter does. The log level filter still applies. With `--log-format text`
//! the line goes through tracing, the structured fields written as JSON text.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Map, Value as Json};

use crate::admission::ParsedReview;
use crate::policy::verdict::Verdict;

pub const TARGET: &str = "mlguard::decision";

static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Called by the logging set-up: whether log lines are JSON objects.
pub fn set_json(json: bool) {
    JSON_LINES.store(json, Ordering::Relaxed);
}

/// Where and how a review was answered, besides the review and its verdict.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub endpoint: &'a str,
    pub seconds: f64,
    /// How many seconds old the live cluster state is (None without live state): a decision
    /// taken while the API server was unreachable says so.
    pub cluster_age: Option<i64>,
    /// The policy layers of the set that decided, bottom first.
    pub policy_layers: &'a [String],
}

/// The decision's fields, as JSON values.
pub fn record(
    review: &ParsedReview,
    verdict: &Verdict,
    context: &Context<'_>,
) -> Map<String, Json> {
    let fired: Vec<Json> = verdict
        .fired
        .iter()
        .map(|f| {
            json!({
                "policy": f.policy, "finding": f.finding.as_str(), "action": f.effect(),
                "messages": f.messages,
            })
        })
        .collect();
    let exempted = verdict
        .exempted
        .as_ref()
        .map(|e| json!({"reason": e.reason.as_str(), "matched": e.matched}));
    let fields = json!({
        "endpoint": context.endpoint,
        "uid": review.uid,
        "kind": review.kind,
        "namespace": review.namespace,
        "name": review.name,
        "user": review.user,
        "operation": review.operation,
        "dry_run": review.dry_run,
        "decision": verdict.outcome(),
        "patch_ops": verdict.patch.as_ref().map_or(0, |p| p.ops.len()),
        "would_deny": verdict.would_deny,
        "would_patch": verdict.would_patch,
        "policies": fired,
        "exempted": exempted,
        "policy_layers": context.policy_layers,
        "latency_us": (context.seconds * 1e6) as u64,
        "cluster_state_age_s": context.cluster_age.unwrap_or(-1),
    });
    match fields {
        Json::Object(map) => map,
        _ => Map::new(),
    }
}

pub fn log(review: &ParsedReview, verdict: &Verdict, context: &Context<'_>) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let fields = record(review, verdict, context);
    if JSON_LINES.load(Ordering::Relaxed) {
        write_json_line(fields);
        return;
    }
    let text = |k: &str| fields.get(k).map(Json::to_string).unwrap_or_default();
    tracing::info!(
        target: TARGET,
        endpoint = context.endpoint,
        uid = %review.uid,
        kind = %review.kind,
        namespace = %review.namespace,
        name = %review.name,
        user = %review.user,
        operation = %review.operation,
        dry_run = review.dry_run,
        decision = verdict.outcome(),
        patch_ops = verdict.patch.as_ref().map_or(0, |p| p.ops.len()),
        would_deny = %text("would_deny"),
        would_patch = %text("would_patch"),
        policies = %text("policies"),
        exempted = %text("exempted"),
        policy_layers = %text("policy_layers"),
        latency_us = (context.seconds * 1e6) as u64,
        cluster_state_age_s = context.cluster_age.unwrap_or(-1),
        "admission review"
    );
}

/// One line in the shape of tracing's JSON formatter (flattened fields).
fn write_json_line(fields: Map<String, Json>) {
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut tracing_subscriber::fmt::format::Writer::new(
        &mut timestamp,
    ));
    let mut line = Map::new();
    line.insert("timestamp".into(), Json::String(timestamp));
    line.insert("level".into(), Json::String("INFO".into()));
    line.insert("message".into(), Json::String("admission review".into()));
    line.extend(fields);
    line.insert("target".into(), Json::String(TARGET.into()));
    let Ok(mut bytes) = serde_json::to_vec(&Json::Object(line)) else {
        return;
    };
    bytes.push(b'\n');
    // One write of the whole line, so that it never interleaves with another.
    let _ = std::io::stderr().lock().write_all(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::exemptions::{Exemption, Reason};
    use crate::policy::verdict::{Finding, Fired};
    use crate::policy::Action;

    fn review() -> ParsedReview {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "ml", "name": "p", "operation": "CREATE",
                        "userInfo": {"username": "alice"},
                        "object": {"metadata": {"name": "p"}}}
        });
        crate::admission::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    const CONTEXT: Context<'static> = Context {
        endpoint: "mutate",
        seconds: 0.000_5,
        cluster_age: None,
        policy_layers: &[],
    };

    /// Structured fields are JSON values, and a patch is logged as a patch whatever the
    /// policy's action.
    #[test]
    fn fields_are_json_values_and_a_patch_is_a_patch() {
        let verdict = Verdict {
            allowed: true,
            would_deny: vec!["[q] no".into()],
            fired: vec![
                Fired {
                    policy: "p".into(),
                    action: Action::Deny,
                    finding: Finding::Patch,
                    messages: vec!["add /spec/x".into()],
                },
                Fired {
                    policy: "q".into(),
                    action: Action::Dryrun,
                    finding: Finding::Deny,
                    messages: vec!["no".into()],
                },
                Fired {
                    policy: "w".into(),
                    action: Action::Deny,
                    finding: Finding::Warn,
                    messages: vec!["hm".into()],
                },
            ],
            ..Default::default()
        };
        let layers = vec!["embedded".to_string(), "/etc/mlguard/policies".to_string()];
        let r = record(
            &review(),
            &verdict,
            &Context {
                policy_layers: &layers,
                ..CONTEXT
            },
        );
        assert_eq!(r["policies"][0]["action"], "patch");
        assert_eq!(r["policies"][1]["action"], "dryrun");
        assert_eq!(r["policies"][2]["action"], "warn");
        assert_eq!(r["would_deny"], json!(["[q] no"]));
        assert_eq!(r["would_patch"], json!([]));
        assert_eq!(r["exempted"], Json::Null);
        assert_eq!(r["policy_layers"], json!(layers));
        assert_eq!(r["latency_us"], 500);
    }

    #[test]
    fn an_exemption_names_its_reason_and_match() {
        let verdict = Verdict::exempt(Exemption {
            reason: Reason::ServiceAccount,
            matched: "kube-system/job-controller".into(),
        });
        let r = record(&review(), &verdict, &CONTEXT);
        assert_eq!(
            r["exempted"],
            json!({"reason": "service_account", "matched": "kube-system/job-controller"})
        );
        assert_eq!(r["decision"], "allowed");
    }
}
