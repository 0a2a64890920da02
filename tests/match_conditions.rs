//! The webhooks' matchConditions against the policies, with a CEL interpreter (the `cel`
//! crate) playing the API server's part:
//!
//! - the committed manifests and Helm chart are what the generator makes of
//!   policies/config.yaml, so the two cannot drift apart;
//! - on every golden case (tests/cases), under that case's configuration: whenever the
//!   policies deny, warn or patch anything but a TTL, the GPU condition is true and the GPU
//!   webhooks' rules match the request (no GPU workload slips past the fail-closed webhooks);
//!   when the GPU condition is false, its negation is true, the policies at most set a TTL,
//!   and the fail-open webhook's rules match the request when they do; the condition never
//!   fails to evaluate (with failurePolicy Fail an error refuses the request);
//! - the expression on hand-made objects: a MIG pod, an init-container GPU, a CPU pod, a
//!   PyTorchJob with a GPU Worker only, a RayCluster with a GPU worker group, an LWS with a
//!   GPU leaderTemplate only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cel::{Context, Program, Value};
use mlguard::admission::Mode;
use mlguard::casefile::{collect, CaseFile, PolicySets};
use mlguard::cluster::snapshot;
use mlguard::policy::settings::{build_config, merge, Merge};
use mlguard::policy::source::{embedded, Origin};
use mlguard::policy::webhooks::{Rule, WebhookMatch, SPEC_CHANGED};
use mlguard::policy::{Backend, Evaluator};
use mlguard::sim::{simulate, with_namespace, Request};
use serde::Deserialize;
use serde_json::{json, Value as Json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn default_config() -> Json {
    build_config(&embedded()).unwrap()
}

/// The condition `expression` gives for `object` under review as `operation`: the variables
/// the API server gives a matchCondition (`object`, `oldObject`, `request`).
fn eval(expression: &str, object: &Json, operation: &str) -> Result<bool, String> {
    eval_update(expression, object, &Json::Null, operation)
}

fn eval_update(
    expression: &str,
    object: &Json,
    old: &Json,
    operation: &str,
) -> Result<bool, String> {
    let program = Program::compile(expression).map_err(|e| format!("does not parse: {e}"))?;
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = json!({"group": group, "version": version, "kind": object["kind"]});
    let request = json!({"kind": kind, "requestKind": kind, "operation": operation,
        "namespace": object["metadata"]["namespace"], "name": object["metadata"]["name"]});
    let mut context = Context::default();
    context.add_variable("object", object).unwrap();
    context.add_variable("oldObject", old).unwrap();
    context.add_variable("request", &request).unwrap();
    match program.execute(&context) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("not a bool: {other:?}")),
        Err(e) => Err(format!("evaluation failed: {e}")),
    }
}

/// Whether `rules` send an `operation` of `object` to the webhook.
fn matches(
    rules: &[Rule],
    object: &Json,
    operation: &str,
    resource_of: &dyn Fn(&Json) -> String,
) -> bool {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = resource_of(object);
    rules.iter().any(|r| {
        r.group == group
            && (r.version == "*" || r.version == version)
            && r.resource == resource
            && (operation == "CREATE" || (operation == "UPDATE" && r.update))
    })
}

#[test]
fn committed_manifests_and_chart_are_generated_from_the_configuration() {
    let stale = mlguard::manifests::stale(root(), &default_config()).unwrap();
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the policy configuration gives; run `cargo run -- manifests write`"
    );
}

#[test]
fn the_gpu_condition_parses_and_stays_within_the_limits() {
    let m = WebhookMatch::from_config(&default_config()).unwrap();
    for e in [m.gpu_expression(), m.not_gpu_expression()] {
        Program::compile(&e).unwrap();
        // One expression per webhook, well under the API server's limits on a webhook
        // configuration's size; a kind's checks run only for its own requests.
        assert!(e.len() < 64 * 1024, "{} characters", e.len());
    }
}

struct Checked {
    cases: usize,
    gpu: usize,
    other: usize,
    failures: Vec<String>,
}

fn ttl_only(ops: &[Json]) -> bool {
    ops.iter().all(|op| {
        op["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/ttlSecondsAfterFinished"))
    })
}

fn check_file(path: &Path, sets: &mut PolicySets, checked: &mut Checked) {
    let text = std::fs::read_to_string(path).unwrap();
    let file: CaseFile = serde_yaml::from_str(&text).unwrap();
    let dir = path.parent().unwrap();
    let load = |paths: &[PathBuf]| {
        let full: Vec<PathBuf> = paths.iter().map(|p| dir.join(p)).collect();
        Arc::new(snapshot::load(&full).unwrap())
    };
    let file_cluster = load(&file.cluster);
    for case in &file.cases {
        let at = format!("{} / {}", path.display(), case.name);
        // The case's configuration, merged as the case runner merges it: the policies and the
        // webhooks both derive from it.
        let overlay = match (&file.config, &case.config) {
            (None, None) => None,
            (a, b) => {
                let mut c = a.clone().unwrap_or(json!({}));
                if let Some(b) = b {
                    merge(&mut c, b.clone(), Merge::Override, "config").unwrap();
                }
                Some(c)
            }
        };
        let mut config = default_config();
        if let Some(overlay) = &overlay {
            merge(&mut config, overlay.clone(), Merge::Override, "config").unwrap();
        }
        let set = sets.get(overlay.as_ref()).unwrap();
        let kinds = mlguard::policy::kinds::parse(&config).unwrap();
        let m = WebhookMatch::from_config(&config).unwrap();
        let resource_of = |o: &Json| {
            let kind = o["kind"].as_str().unwrap_or_default();
            let group = o["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .rsplit_once('/')
                .map(|(g, _)| g)
                .unwrap_or("");
            kinds
                .iter()
                .find(|k| k.kind == kind && k.group == group)
                .map(|k| k.resource.clone())
                .unwrap_or_else(|| format!("{}s", kind.to_lowercase()))
        };
        let cluster = case
            .cluster
            .as_deref()
            .map(load)
            .unwrap_or_else(|| file_cluster.clone());
        let evaluator = Evaluator::new(set, cluster).unwrap();
        let object = match (&case.object, &case.object_file) {
            (Some(o), _) => o.clone(),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(dir.join(p)).unwrap();
                let first = serde_yaml::Deserializer::from_str(&text).next().unwrap();
                Json::deserialize(first).unwrap()
            }
            (None, None) => panic!("{at}: no object"),
        };
        if object["kind"] == "AdmissionReview" {
            continue;
        }
        let namespace = case
            .namespace
            .clone()
            .or_else(|| object["metadata"]["namespace"].as_str().map(String::from))
            .unwrap_or_else(|| "default".into());
        let operation = case.operation.as_deref().unwrap_or("CREATE");
        let mode: Mode = case.mode.as_deref().unwrap_or("enforce").parse().unwrap();
        let request = Request {
            namespace: &namespace,
            operation,
            old_object: case.old_object.as_ref(),
            dry_run: case.dry_run,
            user_info: case.user_info.as_ref(),
        };
        let Ok(sim) = simulate(&evaluator, &object, &request, mode) else {
            continue; // a review the webhook refuses as malformed never has an object to match
        };
        checked.cases += 1;
        let object = with_namespace(&object, &namespace);
        let gpu = match eval(&m.gpu_expression(), &object, operation) {
            Ok(b) => b,
            Err(e) => {
                checked
                    .failures
                    .push(format!("{at}: the GPU condition: {e}"));
                continue;
            }
        };
        let old = case.old_object.clone().unwrap_or(Json::Null);
        let changed = match eval_update(SPEC_CHANGED, &object, &old, operation) {
            Ok(b) => b,
            Err(e) => {
                checked
                    .failures
                    .push(format!("{at}: the spec-changed condition: {e}"));
                continue;
            }
        };
        let not_gpu = eval(&m.not_gpu_expression(), &object, operation);
        if not_gpu != Ok(!gpu) {
            checked.failures.push(format!(
                "{at}: the negation gives {not_gpu:?} where the condition gives {gpu}"
            ));
        }
        let patch: Vec<Json> = sim
            .mutate
            .patch
            .as_ref()
            .and_then(|p| p.ops_json().as_array().cloned())
            .unwrap_or_default();
        let would_patch = &sim.mutate.would_patch;
        let findings: Vec<String> = sim
            .both(|v| &v.denials)
            .into_iter()
            .chain(sim.both(|v| &v.warnings))
            .chain(sim.both(|v| &v.would_deny))
            .collect();
        let acts = !findings.is_empty() || !patch.is_empty() || !would_patch.is_empty();
        let gpu_action = !findings.is_empty()
            || !ttl_only(&patch)
            || would_patch
                .iter()
                .any(|p| !p.contains("ttlSecondsAfterFinished"));
        if gpu {
            checked.gpu += 1;
            if acts && !changed {
                checked.failures.push(format!("{at}: the policies act on an UPDATE that leaves the spec as it was, which the GPU webhooks do not receive: {findings:?}"));
            }
            if acts && !matches(&m.gpu_rules(), &object, operation, &resource_of) {
                checked.failures.push(format!("{at}: the policies act on it ({findings:?}, {patch:?}) but the GPU webhooks' rules do not send {operation} of it"));
            }
        } else {
            checked.other += 1;
            if gpu_action {
                checked.failures.push(format!(
                    "{at}: the GPU condition is false but the policies act on it beyond a TTL: {findings:?} {patch:?} {would_patch:?}"
                ));
            } else if acts && !matches(&m.lifecycle_rules(), &object, operation, &resource_of) {
                checked.failures.push(format!("{at}: the policies set a TTL ({patch:?}) but the fail-open webhook's rules do not send {operation} of it"));
            }
        }
    }
}

#[test]
fn the_gpu_condition_and_the_policies_agree_on_every_golden_case() {
    let files = collect(&[root().join("tests/cases")]);
    let mut checked = Checked {
        cases: 0,
        gpu: 0,
        other: 0,
        failures: Vec::new(),
    };
    let base = embedded();
    let origin = Origin::Embedded.into();
    let mut sets = PolicySets::new(&base, &origin, Backend::Vm);
    for file in &files {
        check_file(file, &mut sets, &mut checked);
    }
    assert!(
        checked.failures.is_empty(),
        "{} disagreements:\n{}",
        checked.failures.len(),
        checked.failures.join("\n")
    );
    // Both sides are exercised.
    assert!(
        checked.gpu > 50 && checked.other >= 5,
        "{} GPU, {} other of {}",
        checked.gpu,
        checked.other,
        checked.cases
    );
    eprintln!(
        "{} cases: {} matched as GPU workloads, {} not",
        checked.cases, checked.gpu, checked.other
    );
}

// --- Hand-made objects --------------------------------------------------------------------

fn gpu(object: Json) -> bool {
    let m = WebhookMatch::from_config(&default_config()).unwrap();
    let g = eval(&m.gpu_expression(), &object, "CREATE").unwrap();
    assert_eq!(
        eval(&m.not_gpu_expression(), &object, "CREATE").unwrap(),
        !g
    );
    g
}

fn container(resources: Json) -> Json {
    json!({"name": "c", "image": "img", "resources": resources})
}

fn pod(spec: Json) -> Json {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ml"}, "spec": spec})
}

#[test]
fn a_mig_pod_is_a_gpu_workload() {
    assert!(gpu(pod(
        json!({"containers": [container(json!({"limits": {"nvidia.com/mig-1g.10gb": 1}}))]})
    )));
}

#[test]
fn a_gpu_in_an_init_container_or_a_request_counts() {
    assert!(gpu(pod(json!({
        "initContainers": [container(json!({"limits": {"amd.com/gpu": 1}}))],
        "containers": [container(json!({"limits": {"cpu": 1}}))]
    }))));
    assert!(gpu(pod(
        json!({"containers": [container(json!({"requests": {"gpu.intel.com/i915": 1}}))]})
    )));
}

#[test]
fn a_cpu_pod_is_not() {
    assert!(!gpu(pod(
        json!({"containers": [container(json!({"limits": {"cpu": 1, "memory": "1Gi"}}))]})
    )));
    assert!(!gpu(pod(
        json!({"containers": [{"name": "c", "image": "img"}]})
    )));
    // A look-alike name is not a GPU resource.
    assert!(!gpu(pod(
        json!({"containers": [container(json!({"limits": {"nvidia.com/gpus": 1, "example.com/nvidia.com/gpu": 1}}))]})
    )));
}

#[test]
fn pods_with_dra_claims_and_the_claims_themselves_go_to_the_gpu_webhooks() {
    // Whether a claim is a GPU is in its DeviceClass, which CEL cannot read.
    let claims = json!([{"name": "gpu", "resourceClaimTemplateName": "single-gpu"}]);
    assert!(gpu(pod(json!({
        "containers": [{"name": "c", "image": "img", "resources": {"claims": [{"name": "gpu"}]}}],
        "resourceClaims": claims
    }))));
    assert!(gpu(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ml"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img"}],
                                        "resourceClaims": claims}}}})));
    for kind in ["ResourceClaim", "ResourceClaimTemplate"] {
        assert!(gpu(
            json!({"apiVersion": "resource.k8s.io/v1", "kind": kind,
            "metadata": {"name": "c", "namespace": "ml"}, "spec": {}})
        ));
    }
    // An empty list is no claim.
    assert!(!gpu(pod(
        json!({"containers": [{"name": "c", "image": "img"}], "resourceClaims": []})
    )));
    let m = WebhookMatch::from_config(&default_config()).unwrap();
    let rules = m.gpu_rules();
    for resource in ["resourceclaims", "resourceclaimtemplates"] {
        assert!(
            rules.iter().any(|r| r.group == "resource.k8s.io"
                && r.version == "v1"
                && r.resource == resource
                && !r.update),
            "{resource}"
        );
    }
}

fn template(resources: Json) -> Json {
    json!({"spec": {"containers": [container(resources)]}})
}

#[test]
fn a_pytorchjob_with_a_gpu_worker_only() {
    let job = |worker: Json| {
        json!({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "j", "namespace": "ml"},
           "spec": {"pytorchReplicaSpecs": {
               "Master": {"replicas": 1, "template": template(json!({"limits": {"cpu": 1}}))},
               "Worker": {"replicas": 3, "template": template(worker)}}}})
    };
    assert!(gpu(job(json!({"limits": {"nvidia.com/gpu": 8}}))));
    assert!(!gpu(job(json!({"limits": {"cpu": 8}}))));
}

#[test]
fn a_raycluster_with_a_gpu_worker_group() {
    let cluster = |worker: Json| {
        json!({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "r", "namespace": "ml"},
           "spec": {"headGroupSpec": {"template": template(json!({"limits": {"cpu": 2}}))},
                    "workerGroupSpecs": [
                        {"groupName": "cpu", "replicas": 2, "template": template(json!({"limits": {"cpu": 4}}))},
                        {"groupName": "gpu", "replicas": 2, "template": template(worker)}]}})
    };
    assert!(gpu(cluster(json!({"limits": {"nvidia.com/gpu": 1}}))));
    assert!(!gpu(cluster(json!({"limits": {"cpu": 1}}))));
}

#[test]
fn a_leaderworkerset_with_a_gpu_leader_template_only() {
    let lws = |leader: Json| {
        json!({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": "l", "namespace": "ml"},
           "spec": {"replicas": 2, "leaderWorkerTemplate": {"size": 4,
               "leaderTemplate": template(leader),
               "workerTemplate": template(json!({"limits": {"cpu": 1}}))}}})
    };
    assert!(gpu(lws(json!({"limits": {"nvidia.com/gpu": 1}}))));
    assert!(!gpu(lws(json!({"limits": {"cpu": 1}}))));
}

#[test]
fn a_kind_is_judged_by_its_own_paths_only() {
    // A Deployment-shaped object under another kind's name is not looked into, and a kind
    // outside the table never matches.
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ml"},
        "spec": {"template": template(json!({"limits": {"nvidia.com/gpu": 1}}))}});
    assert!(gpu(d.clone()));
    d["kind"] = json!("Widget");
    assert!(!gpu(d));
}

#[test]
fn updates_that_leave_the_spec_alone_are_not_sent() {
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}},
        "spec": {"replicas": 1, "template": template(json!({"limits": {"nvidia.com/gpu": 1}}))}});
    let mut relabelled = d.clone();
    relabelled["metadata"]["labels"]["a"] = json!("2");
    let mut scaled = d.clone();
    scaled["spec"]["replicas"] = json!(4);
    assert!(eval_update(SPEC_CHANGED, &d, &Json::Null, "CREATE").unwrap());
    assert!(!eval_update(SPEC_CHANGED, &relabelled, &d, "UPDATE").unwrap());
    assert!(eval_update(SPEC_CHANGED, &scaled, &d, "UPDATE").unwrap());
}

#[test]
fn a_half_written_object_is_no_error() {
    // Missing specs, templates and containers: the has() guards answer, never an error (which
    // the fail-closed webhooks would turn into a refusal naming the webhook, not the problem).
    for (object, sent) in [
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
            false,
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {}}}}),
            false,
        ),
        // Optional templates: a RayJob on an existing cluster has none.
        (
            json!({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "r"}, "spec": {"rayClusterSpec": {"workerGroupSpecs": [{}]}}}),
            false,
        ),
        // A template the table does not call optional is missing: mlguard cannot tell what it
        // runs and refuses it, so the fail-closed webhooks get it.
        (
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {}}}),
            true,
        ),
        (
            json!({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "j"}, "spec": {"pytorchReplicaSpecs": {"Worker": {}}}}),
            true,
        ),
        (
            json!({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "j"}, "spec": {}}),
            true,
        ),
    ] {
        assert_eq!(gpu(object.clone()), sent, "{object}");
    }
}
