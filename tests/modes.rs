//! Enforcement modes end to end: per-policy actions, per-namespace overrides by name and by
//! label selector, the global `--mode` cap and server-side dry-run, through the webhook router
//! as the API server calls it, checking the AdmissionReview replies.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use serde_json::{json, Value as Json};
use tower::ServiceExt;

use mlguard::admission::Mode;
use mlguard::cluster::{snapshot, ClusterState};
use mlguard::policy::source::{FileKind, Origin, SourceFile};
use mlguard::policy::{Backend, Evaluator, PolicySet};
use mlguard::serve::Webhook;
use mlguard::sim::review_for;

const QUOTA: &str = r#"package mlguard.policies.quota

import rego.v1

deny contains msg if {
	input.review.object.metadata.labels.big == "true"
	msg := sprintf("pod asks for too much%s", [object.get(input.review.object.metadata, ["annotations", "note"], "")])
}
"#;

const HINT: &str = r#"package mlguard.policies.hint

import rego.v1

warn contains "consider a memory limit" if input.review.object.metadata.labels.hint == "true"
"#;

const TOLERATION: &str = r#"package mlguard.policies.toleration

import rego.v1

patch contains {"op": "add", "path": "/spec/tolerations/-", "value": {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}} if {
	input.review.object.metadata.labels.gpu == "true"
}
"#;

const CONFIG: &str = r#"
policies:
  quota:
    action: deny
    namespaces:
      - names: [research]
        action: warn
      - selector: {matchLabels: {stage: trial}}
        action: dryrun
  hint:
    action: deny
    namespaces:
      - names: [quiet]
        action: dryrun
  toleration:
    action: deny
    namespaces:
      - names: [shadow]
        action: dryrun
"#;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: trial-ns, labels: {stage: trial}}
"#;

fn state(mode: Mode) -> Arc<Webhook> {
    decision_log();
    let file = |name: &str, kind, text: &str| SourceFile {
        name: name.into(),
        kind,
        text: text.into(),
        layer: 0,
    };
    let files = vec![
        file("quota.rego", FileKind::Rego, QUOTA),
        file("hint.rego", FileKind::Rego, HINT),
        file("toleration.rego", FileKind::Rego, TOLERATION),
        file("config.yaml", FileKind::Data, CONFIG),
    ];
    let set = PolicySet::compile(files, Origin::Embedded, Backend::Vm).unwrap();
    let mut cluster = ClusterState::default();
    snapshot::add_text(&mut cluster, std::path::Path::new("cluster.yaml"), CLUSTER).unwrap();
    Arc::new(Webhook::new(
        Evaluator::new(set, Arc::new(cluster)).unwrap(),
        mode,
        4,
        None,
    ))
}

fn pod(labels: Json) -> Json {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

/// POSTs a review of `object` in `namespace` to `endpoint`; returns the `response`.
async fn call(
    state: &Arc<Webhook>,
    endpoint: &str,
    object: &Json,
    namespace: &str,
    dry_run: bool,
) -> Json {
    let body = review_for(object, namespace, "CREATE", None, dry_run, "uid-1");
    let request = Request::post(endpoint)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let reply = state.webhook_router().oneshot(request).await.unwrap();
    assert_eq!(
        reply.status(),
        StatusCode::OK,
        "a policy answer is always HTTP 200"
    );
    let bytes = axum::body::to_bytes(reply.into_body(), usize::MAX)
        .await
        .unwrap();
    let review: Json = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["response"]["uid"], "uid-1");
    review["response"].clone()
}

/// /validate for a pod with `labels` in `namespace`.
async fn validate(state: &Arc<Webhook>, labels: Json, namespace: &str) -> Json {
    call(state, "/validate", &pod(labels), namespace, false).await
}

fn warnings(response: &Json) -> Vec<String> {
    serde_json::from_value(response["warnings"].clone()).unwrap_or_default()
}

fn annotation(response: &Json, key: &str) -> Option<String> {
    response["auditAnnotations"][key].as_str().map(String::from)
}

/// The JSON Patch of a response. `patch` is Go's `[]byte`, which the AdmissionReview API
/// documents as a base64 string; mlguard sends that form.
fn decoded_patch(response: &Json) -> Option<Json> {
    let bytes: Vec<u8> = match &response["patch"] {
        Json::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        Json::Null => return None,
        other => panic!("patch is not a base64 string: {other}"),
    };
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn deny_is_a_403_with_the_policy_and_the_object_named() {
    let s = state(Mode::Enforce);
    let r = validate(&s, json!({"big": "true"}), "prod").await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    assert_eq!(r["status"]["reason"], "Forbidden");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("Pod prod/p") && message.contains("[quota] pod asks for too much"),
        "{message}"
    );
    assert!(warnings(&r).is_empty());
    assert!(annotation(&r, "would-deny").is_none());
}

#[tokio::test]
async fn warn_override_by_namespace_name_admits_with_a_warning() {
    let s = state(Mode::Enforce);
    let r = validate(&s, json!({"big": "true"}), "research").await;
    assert_eq!(r["allowed"], true);
    assert_eq!(warnings(&r), ["[quota] pod asks for too much"]);
    assert!(r
        .get("auditAnnotations")
        .is_none_or(|a| a.as_object().is_none_or(|m| m.is_empty())));
}

#[tokio::test]
async fn dryrun_override_by_namespace_selector_records_an_audit_annotation() {
    let s = state(Mode::Enforce);
    let r = validate(&s, json!({"big": "true"}), "trial-ns").await;
    assert_eq!(r["allowed"], true);
    assert!(
        warnings(&r).is_empty(),
        "dry-run tells the user nothing: {r}"
    );
    assert_eq!(
        annotation(&r, "would-deny").unwrap(),
        "[quota] pod asks for too much"
    );
    let metrics = s.metrics.render();
    assert!(
        metrics.contains(r#"mlguard_policy_violations_total{policy="quota",action="dryrun"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn warn_rules_warn_unless_their_policy_is_in_dryrun() {
    let s = state(Mode::Enforce);
    let r = validate(&s, json!({"hint": "true"}), "prod").await;
    assert_eq!(r["allowed"], true);
    assert_eq!(warnings(&r), ["[hint] consider a memory limit"]);
    let r = validate(&s, json!({"hint": "true"}), "quiet").await;
    assert!(warnings(&r).is_empty());
}

#[tokio::test]
async fn mutating_policy_in_dryrun_sends_no_patch_but_records_it() {
    let s = state(Mode::Enforce);
    let gpu = pod(json!({"gpu": "true"}));
    let r = call(&s, "/mutate", &gpu, "prod", false).await;
    let patch = decoded_patch(&r).expect("enforced mutation patches");
    assert_eq!(patch[1]["path"], "/spec/tolerations/-");
    assert!(annotation(&r, "would-patch").is_none());

    // The API server applies the patch to the object it holds.
    let mut applied = gpu.clone();
    json_patch::patch(
        &mut applied,
        &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
    )
    .unwrap();
    assert_eq!(applied["spec"]["tolerations"][0]["key"], "nvidia.com/gpu");

    let r = call(&s, "/mutate", &gpu, "shadow", false).await;
    assert_eq!(r["allowed"], true);
    assert!(
        r.get("patch").is_none_or(Json::is_null),
        "dry-run must not patch: {r}"
    );
    assert_eq!(
        annotation(&r, "would-patch").unwrap(),
        "[toleration] add /spec/tolerations/-"
    );
    let metrics = s.metrics.render();
    assert!(
        metrics.contains(r#"mlguard_policy_dryrun_patches_total{policy="toleration"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn global_warn_cap_turns_denials_into_warnings_and_keeps_patches() {
    let s = state(Mode::Warn);
    let r = validate(&s, json!({"big": "true"}), "prod").await;
    assert_eq!(r["allowed"], true);
    assert_eq!(warnings(&r), ["[quota] pod asks for too much"]);
    let r = call(&s, "/mutate", &pod(json!({"gpu": "true"})), "prod", false).await;
    assert!(decoded_patch(&r).is_some(), "warn mode still mutates");
    // The cap only loosens: a dryrun override stays dryrun.
    let r = validate(&s, json!({"big": "true"}), "trial-ns").await;
    assert!(warnings(&r).is_empty());
    assert!(annotation(&r, "would-deny").is_some());
}

#[tokio::test]
async fn global_dryrun_cap_admits_everything_unchanged() {
    let s = state(Mode::Dryrun);
    let all = pod(json!({"big": "true", "hint": "true", "gpu": "true"}));
    let v = call(&s, "/validate", &all, "prod", false).await;
    assert_eq!(v["allowed"], true);
    assert!(warnings(&v).is_empty());
    assert_eq!(
        annotation(&v, "would-deny").unwrap(),
        "[quota] pod asks for too much"
    );
    let m = call(&s, "/mutate", &all, "prod", false).await;
    assert_eq!(m["allowed"], true);
    assert!(m.get("patch").is_none_or(Json::is_null));
    assert!(annotation(&m, "would-patch")
        .unwrap()
        .contains("/spec/tolerations"));
}

#[tokio::test]
async fn audit_annotations_are_bounded() {
    let s = state(Mode::Dryrun);
    let mut big = pod(json!({"big": "true"}));
    big["metadata"]["annotations"] = json!({"note": format!(": {}", "é".repeat(3000))});
    let r = call(&s, "/validate", &big, "prod", false).await;
    let value = annotation(&r, "would-deny").unwrap();
    assert!(
        value.len() <= mlguard::policy::verdict::AUDIT_ANNOTATION_LIMIT,
        "{}",
        value.len()
    );
    assert!(value.ends_with("..."));
}

#[tokio::test]
async fn server_side_dry_run_is_answered_exactly_as_the_real_request() {
    for mode in [Mode::Enforce, Mode::Warn, Mode::Dryrun] {
        let s = state(mode);
        for labels in [
            json!({"big": "true"}),
            json!({"gpu": "true", "hint": "true"}),
            json!({}),
        ] {
            for ns in ["prod", "research", "trial-ns", "shadow"] {
                for endpoint in ["/mutate", "/validate"] {
                    let object = pod(labels.clone());
                    let real = call(&s, endpoint, &object, ns, false).await;
                    let dry = call(&s, endpoint, &object, ns, true).await;
                    assert_eq!(real, dry, "{mode:?} {endpoint} {ns} {labels}");
                }
            }
        }
    }
}

/// Collects what the decision log writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static DECISION_LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();

/// Every test's decision log, as JSON lines. Installed as the global subscriber before any
/// request is made (by `state`), so that no log call site caches "no subscriber".
fn decision_log() -> Captured {
    DECISION_LOG
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            captured
        })
        .clone()
}

#[tokio::test]
async fn dryrun_records_reach_the_decision_log() {
    let s = state(Mode::Dryrun);
    let all = pod(json!({"big": "true", "gpu": "true"}));
    call(&s, "/validate", &all, "logged", false).await;
    call(&s, "/mutate", &all, "logged", false).await;
    let log = String::from_utf8(decision_log().0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Json> = log
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|l| l["fields"]["namespace"] == "logged")
        .collect();
    let validate = lines
        .iter()
        .find(|l| l["fields"]["endpoint"] == "validate")
        .expect("validate logged");
    assert_eq!(validate["fields"]["decision"], "allowed");
    assert!(
        validate["fields"]["would_deny"]
            .as_str()
            .unwrap()
            .contains("[quota] pod asks for too much"),
        "{validate}"
    );
    let mutate = lines
        .iter()
        .find(|l| l["fields"]["endpoint"] == "mutate")
        .expect("mutate logged");
    assert!(
        mutate["fields"]["would_patch"]
            .as_str()
            .unwrap()
            .contains("/spec/tolerations/-"),
        "{mutate}"
    );
    assert_eq!(mutate["fields"]["patch_ops"], 0);
}
