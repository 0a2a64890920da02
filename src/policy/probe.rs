//! The load-time probe: every policy runs on sample reviews (a GPU Pod, Job, Deployment whose
//! pods also use a DRA claim template, PyTorchJob, and the claim template) before a set may serve, so that output of the wrong shape, a policy that fails
//! on an ordinary GPU workload, or a set the VM evaluates differently from the interpreter is
//! caught at load, not on a user's pod.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ResourceQuota};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate, ResourceSlice};
use regorus::Value;

use crate::cluster::ClusterState;

use super::eval::{Evaluator, PolicyOutput};
use super::set::{Backend, PolicySet, Stage};
use super::PolicyError;

/// Sample reviews every policy is run against at load, so that output of the wrong shape, or
/// a policy that fails on an ordinary GPU pod, is refused before it can serve.
fn probe_reviews() -> Vec<serde_json::Value> {
    use serde_json::json;
    let container = json!({
        "name": "trainer", "image": "registry.example/train:1",
        "resources": {"requests": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"},
                      "limits": {"nvidia.com/gpu": "1", "memory": "16Gi"}}
    });
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"containers": [container]}});
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"parallelism": 2, "completions": 4,
                 "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}});
    let review = |kind: &str, group: &str, resource: &str, object: &serde_json::Value| {
        json!({"uid": "probe", "kind": {"group": group, "version": "v1", "kind": kind},
               "resource": {"group": group, "version": "v1", "resource": resource},
               "namespace": "default", "operation": "CREATE", "name": "probe",
               "userInfo": {"username": "probe"}, "object": object, "dryRun": false})
    };
    // Workloads that take the gang and quota paths of the default policies: a Deployment, and
    // a PyTorchJob whose gang is smaller than all its pods (minAvailable). The VM once read
    // such a gang as undefined where the interpreter did not. The Deployment's pods also get
    // GPUs through a DRA claim template (allocationMode All, and a firstAvailable request), of
    // a class that stands for nvidia.com/gpu: the claim paths of every policy, without a
    // sample of their own (each sample costs tens of milliseconds of start-up).
    let template = json!({"spec": {"containers": [container]}});
    let mut claim_user = container.clone();
    claim_user["resources"]["claims"] = json!([{"name": "gpus"}]);
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"replicas": 3, "template": {"spec": {
            "containers": [claim_user],
            "resourceClaims": [{"name": "gpus", "resourceClaimTemplateName": "probe"}]}}}});
    let pytorchjob = json!({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"runPolicy": {"schedulingPolicy": {"minAvailable": 2}},
                 "pytorchReplicaSpecs": {
                     "Master": {"replicas": 1, "template": template},
                     "Worker": {"replicas": 3, "template": template}}}});
    let claim_template = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"spec": probe_claims()}});
    vec![
        review("Pod", "", "pods", &pod),
        review("Job", "batch", "jobs", &job),
        review("Deployment", "apps", "deployments", &deployment),
        review("PyTorchJob", "kubeflow.org", "pytorchjobs", &pytorchjob),
        review(
            "ResourceClaimTemplate",
            "resource.k8s.io",
            "resourceclaimtemplates",
            &claim_template,
        ),
    ]
}

/// The claim spec of the sample claim template, also in the probe's cluster: devices in
/// allocationMode All, and a firstAvailable request.
fn probe_claims() -> serde_json::Value {
    serde_json::json!({"devices": {"requests": [
        {"name": "gpus", "exactly": {"deviceClassName": "gpu.nvidia.com", "allocationMode": "All"}},
        {"name": "spare", "firstAvailable": [
            {"name": "gpu", "deviceClassName": "gpu.nvidia.com", "count": 2},
            {"name": "mig", "deviceClassName": "mig.nvidia.com"}]}]}})
}

/// The cluster the sample reviews are judged against: a GPU quota in their namespace that the
/// workloads overrun, and a node, so that the quota and capacity paths run too.
fn probe_cluster() -> ClusterState {
    let mut cluster = ClusterState::default();
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "3"}},
        "status": {"used": {"requests.nvidia.com/gpu": "1"}}
    }))
    .expect("a valid ResourceQuota");
    cluster.add_quota(&quota);
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe-gpu-node"},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}}
    }))
    .expect("a valid Node");
    cluster.add_node(&node);
    // NVIDIA's GPU class, standing for nvidia.com/gpu, with a slice of 4 GPUs on the node.
    let class: DeviceClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gpu.nvidia.com"},
        "spec": {"selectors": [{"cel": {"expression":
            "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}],
                 "extendedResourceName": "nvidia.com/gpu"}
    }))
    .expect("a valid DeviceClass");
    cluster.add_device_class(&class);
    let devices: Vec<serde_json::Value> = (0..4)
        .map(|i| serde_json::json!({"name": format!("gpu-{i}"), "attributes": {"type": {"string": "gpu"}}}))
        .collect();
    let slice: ResourceSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe-gpu-node-gpu.nvidia.com"},
        "spec": {"driver": "gpu.nvidia.com", "nodeName": "probe-gpu-node",
                 "pool": {"name": "probe-gpu-node", "generation": 1, "resourceSliceCount": 1},
                 "devices": devices}
    }))
    .expect("a valid ResourceSlice");
    cluster.add_resource_slice(&slice);
    let template: ResourceClaimTemplate = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"spec": probe_claims()}
    }))
    .expect("a valid ResourceClaimTemplate");
    cluster.add_resource_claim_template(&template);
    cluster.finish_dra();
    cluster
}

/// Runs every policy on the sample reviews. A policy that fails on them is an error. When the
/// set runs on the VM, the interpreter runs them too: the VM is younger and does not yet
/// agree with the interpreter on every construct, and a policy that means one thing in a test
/// and another in production is worse than a slower one. Returns the disagreement, if any.
pub(crate) fn probe(set: &Arc<PolicySet>) -> Result<Option<String>, PolicyError> {
    let cluster = Arc::new(probe_cluster());
    let evaluator = Evaluator::new(set.clone(), cluster.clone())?;
    let reference = match set.backend {
        Backend::Vm => Some(Evaluator::with_backend(
            set.clone(),
            cluster,
            Backend::Interpreter,
        )?),
        Backend::Interpreter => None,
    };
    // Each sample's evaluations, the interpreter's above all (tens of milliseconds a review),
    // run on threads of their own: on a machine with more than one core, start-up and a
    // reload take the time of the slowest sample instead of the sum. Judged in order after.
    let samples: Vec<(String, Value)> = probe_reviews()
        .into_iter()
        .map(|review| {
            let kind = review["kind"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (kind, Value::from(review))
        })
        .collect();
    let evaluate = |review: &Value| {
        Stage::ALL.map(|stage| {
            let outputs = evaluator.evaluate(review, stage);
            let expected = reference.as_ref().map(|r| r.evaluate(review, stage));
            (stage, outputs, expected)
        })
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .iter()
            .map(|(_, review)| scope.spawn(|| evaluate(review)))
            .collect();
        // A panic in an evaluation goes on as it would have without the threads.
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
            .collect()
    });
    let mut disagreement = None;
    for ((kind, _), per_stage) in samples.iter().zip(results) {
        for (stage, outputs, expected) in per_stage {
            if let Some(e) = outputs.iter().find_map(|o| o.error.clone()) {
                return Err(PolicyError::Shape {
                    policy: e.policy,
                    rule: e.rule.into(),
                    message: format!("on a sample GPU {kind}: {}", e.message),
                });
            }
            let Some(expected) = expected else {
                continue;
            };
            if disagreement.is_some() {
                continue;
            }
            disagreement = first_difference(&outputs, &expected).map(|policy| {
                format!(
                    "the bytecode VM and the interpreter disagree on policy {policy} for a sample \
                     GPU {kind} ({}); the interpreter is used",
                    stage.as_str()
                )
            });
        }
    }
    Ok(disagreement)
}

/// The first policy whose output differs between two evaluations.
fn first_difference(a: &[PolicyOutput], b: &[PolicyOutput]) -> Option<String> {
    let find = |list: &[PolicyOutput], name: &str| list.iter().find(|o| o.policy == name).cloned();
    a.iter()
        .chain(b)
        .map(|o| o.policy.as_str())
        .find(|name| find(a, name) != find(b, name))
        .map(str::to_string)
}
