//! Manifests to the objects the API server would admit. Pods and Jobs are admitted as they
//! are; workloads that carry a pod template are admitted as the pods (and, for a CronJob, the
//! Job) their controller will create, with the metadata that controller would set, so that an
//! admin sees which pods would be rejected before the workload is applied.

use serde_json::{json, Map, Value as Json};

use crate::admission::object_name;
use crate::policy::WorkloadKinds;
pub use crate::sim::manifests::Source;

/// A manifest object's identity, as written (namespace filled from `--namespace`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    /// The name, or `generateName` followed by `*`.
    pub name: String,
}

/// What the API server is asked to admit for one manifest object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// A Pod, admitted as it is.
    Pod(Json),
    /// A Job, admitted as it is (or as a CronJob creates it); its pods are derived from the
    /// admitted, mutated Job, as the Job controller creates them from the stored object.
    Job(Json),
    /// The pod a workload's controller creates from its template.
    Template(Json),
    /// A Pod or Job already in the cluster, admitted alone as if it were created again.
    Running(Json),
    /// A workload kind of the kinds table, admitted whole as it is, then what its controller
    /// makes from it where mlguard knows the controller (a Deployment's pod, a CronJob's Job);
    /// an operator's kind (a PyTorchJob) is judged by its own admission alone.
    Workload {
        object: Json,
        then: Option<Box<Plan>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    Audit {
        id: Identity,
        plan: Plan,
    },
    /// A Kubernetes object of a kind mlguard does not admit.
    Skipped {
        id: Identity,
    },
    /// Not a Kubernetes object (no apiVersion or kind; the identity is empty), or a workload
    /// that cannot be audited.
    Invalid {
        id: Identity,
        message: String,
    },
}

fn text<'a>(v: &'a Json, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Json::as_str).unwrap_or("")
}

fn display_name(object: &Json) -> String {
    object_name(
        text(object, "/metadata/name"),
        text(object, "/metadata/generateName"),
    )
}

/// Sorts one manifest document into what the API server would admit for it. `kinds` are the
/// workload kinds the policies judge whole.
pub fn classify(object: &Json, default_namespace: &str, kinds: &WorkloadKinds) -> Manifest {
    if !object.is_object() {
        return Manifest::Invalid {
            id: Identity::default(),
            message: "not a Kubernetes object: the document is not a mapping".into(),
        };
    }
    let (api_version, kind) = (text(object, "/apiVersion"), text(object, "/kind"));
    if api_version.is_empty() || kind.is_empty() {
        let missing = match (api_version.is_empty(), kind.is_empty()) {
            (true, true) => "apiVersion and kind",
            (true, false) => "apiVersion",
            _ => "kind",
        };
        return Manifest::Invalid {
            id: Identity::default(),
            message: format!("not a Kubernetes object: no {missing}"),
        };
    }
    if object
        .get("metadata")
        .is_some_and(|m| !m.is_object() && !m.is_null())
    {
        return Manifest::Invalid {
            id: Identity::default(),
            message: format!("invalid {kind}: metadata is not a mapping"),
        };
    }
    let namespace = match text(object, "/metadata/namespace") {
        "" => default_namespace,
        ns => ns,
    };
    let id = Identity {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: display_name(object),
    };
    let mut object = object.clone();
    object["metadata"]["namespace"] = json!(namespace);
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let plan = match (group, kind) {
        ("", "Pod") => Some(Plan::Pod(object.clone())),
        ("batch", "Job") => Some(Plan::Job(object.clone())),
        ("batch", "CronJob") => job_of_cronjob(&object).map(Plan::Job),
        ("apps", "Deployment") => deployment_pod(&object).map(Plan::Template),
        ("apps", "StatefulSet") => statefulset_pod(&object).map(Plan::Template),
        ("apps", "DaemonSet") => daemonset_pod(&object).map(Plan::Template),
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            let name = id.name.trim_end_matches('*').to_string();
            template_pod(&object, "/spec/template", &format!("{name}-"), &object, &[])
                .map(Plan::Template)
        }
        _ => None,
    };
    // Pods and Jobs are planned above: a Job's admission already judges it whole.
    let judged_whole =
        !matches!((group, kind), ("", "Pod") | ("batch", "Job")) && kinds.covers(group, kind);
    let plan = match plan {
        Some(then) if judged_whole => Some(Plan::Workload {
            object,
            then: Some(Box::new(then)),
        }),
        None if judged_whole && !builtin_controller(group, kind) => {
            Some(Plan::Workload { object, then: None })
        }
        plan => plan,
    };
    let workload =
        builtin_controller(group, kind) || (group, kind) == ("", "ReplicationController");
    match plan {
        Some(plan) => Manifest::Audit { id, plan },
        None if workload => Manifest::Invalid {
            id: id.clone(),
            message: format!("{kind} {} has no pod template spec to audit", id.name),
        },
        None => Manifest::Skipped { id },
    }
}

/// Kinds whose pods mlguard derives itself, as their controllers would.
fn builtin_controller(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        ("batch", "CronJob")
            | (
                "apps",
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
            )
    )
}

/// FNV-1a, 32 bits: what Kubernetes controllers hash pod templates with.
fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A template hash in the alphabet of Kubernetes' `rand.SafeEncodeString` (no vowels, no
/// look-alike characters), like the `pod-template-hash` of a Deployment's ReplicaSets.
fn template_hash(template: &Json) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv32(template.to_string().as_bytes())
        .to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// A stable, UUID-shaped uid for an owner that does not exist yet.
fn uid_for(owner: &Json) -> String {
    let key = format!(
        "{}/{}/{}",
        text(owner, "/kind"),
        text(owner, "/metadata/namespace"),
        text(owner, "/metadata/name")
    );
    let a = fnv32(key.as_bytes());
    let b = fnv32(format!("{key}#").as_bytes());
    let c = fnv32(format!("#{key}").as_bytes());
    format!(
        "{a:08x}-{:04x}-4{:03x}-8{:03x}-{:08x}{:04x}",
        b >> 16,
        b & 0xfff,
        c >> 20,
        c,
        a >> 16
    )
}

/// The controller reference a controller sets on what it creates.
fn controller_ref(owner: &Json) -> Json {
    json!({
        "apiVersion": text(owner, "/apiVersion"),
        "kind": text(owner, "/kind"),
        "name": text(owner, "/metadata/name"),
        "uid": uid_for(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn template_metadata(owner: &Json, template: &str, labels: &[(&str, String)]) -> Json {
    let mut meta = owner
        .pointer(&format!("{template}/metadata"))
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !labels.is_empty() {
        if !meta["labels"].is_object() {
            meta["labels"] = json!({});
        }
        for (k, v) in labels {
            meta["labels"][*k] = json!(v);
        }
    }
    meta["namespace"] = owner["metadata"]["namespace"].clone();
    meta
}

/// The pod a controller creates from the template at `template` in `controlled_by` (the
/// ReplicaSet, Job, ... that owns the pod): template metadata and spec, the owner's namespace,
/// `generateName`, a controller reference and the labels the controller adds.
fn template_pod(
    workload: &Json,
    template: &str,
    generate_name: &str,
    controlled_by: &Json,
    labels: &[(&str, String)],
) -> Option<Json> {
    let spec = workload
        .pointer(&format!("{template}/spec"))
        .filter(|s| s.is_object())?
        .clone();
    let mut metadata = template_metadata(workload, template, labels);
    metadata["generateName"] = json!(generate_name);
    if let Some(m) = metadata.as_object_mut() {
        m.remove("name");
    }
    metadata["ownerReferences"] = json!([controller_ref(controlled_by)]);
    Some(json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}))
}

/// Deployment → ReplicaSet `<name>-<hash>` → pods `<name>-<hash>-*`.
fn deployment_pod(deployment: &Json) -> Option<Json> {
    let hash = template_hash(deployment.pointer("/spec/template")?);
    let rs_name = format!("{}-{hash}", text(deployment, "/metadata/name"));
    let replica_set = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": rs_name, "namespace": deployment["metadata"]["namespace"]},
    });
    template_pod(
        deployment,
        "/spec/template",
        &format!("{rs_name}-"),
        &replica_set,
        &[("pod-template-hash", hash)],
    )
}

/// StatefulSet → pod `<name>-0` with its stable identity and the claims of
/// `volumeClaimTemplates` as volumes, as the StatefulSet controller creates it.
fn statefulset_pod(sts: &Json) -> Option<Json> {
    let name = text(sts, "/metadata/name");
    let pod_name = format!("{name}-0");
    let hash = template_hash(sts.pointer("/spec/template")?);
    let mut pod = template_pod(
        sts,
        "/spec/template",
        "",
        sts,
        &[
            ("controller-revision-hash", format!("{name}-{hash}")),
            ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
            ("apps.kubernetes.io/pod-index", "0".into()),
        ],
    )?;
    let meta = pod["metadata"].as_object_mut()?;
    meta.remove("generateName");
    meta.insert("name".into(), json!(pod_name));
    pod["spec"]["hostname"] = json!(pod_name);
    if let Some(service) = sts.pointer("/spec/serviceName").and_then(Json::as_str) {
        pod["spec"]["subdomain"] = json!(service);
    }
    let claims = sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Json::as_array);
    for claim in claims.into_iter().flatten() {
        let claim_name = text(claim, "/metadata/name");
        let volume = json!({"name": claim_name,
            "persistentVolumeClaim": {"claimName": format!("{claim_name}-{pod_name}")}});
        if !pod["spec"]["volumes"].is_array() {
            pod["spec"]["volumes"] = json!([]);
        }
        let volumes = pod["spec"]["volumes"].as_array_mut()?;
        volumes.retain(|v| v["name"] != volume["name"]);
        volumes.push(volume);
    }
    Some(pod)
}

/// The tolerations the DaemonSet controller adds to every daemon pod.
fn daemonset_tolerations(host_network: bool) -> Vec<Json> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
    ];
    for key in [
        "disk-pressure",
        "memory-pressure",
        "pid-pressure",
        "unschedulable",
    ] {
        t.push(json!({"key": format!("node.kubernetes.io/{key}"), "operator": "Exists", "effect": "NoSchedule"}));
    }
    if host_network {
        t.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// DaemonSet → pods `<name>-*` with the controller's tolerations. The per-node affinity the
/// controller also sets is left out: which node is not known offline.
fn daemonset_pod(ds: &Json) -> Option<Json> {
    let name = text(ds, "/metadata/name");
    let mut pod = template_pod(ds, "/spec/template", &format!("{name}-"), ds, &[])?;
    let host_network = pod["spec"]["hostNetwork"].as_bool().unwrap_or(false);
    if !pod["spec"]["tolerations"].is_array() {
        pod["spec"]["tolerations"] = json!([]);
    }
    let tolerations = pod["spec"]["tolerations"].as_array_mut()?;
    for t in daemonset_tolerations(host_network) {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    Some(pod)
}

/// CronJob → the Job it creates from `jobTemplate`: `<name>-<scheduled minute>`, controlled
/// by the CronJob.
fn job_of_cronjob(cronjob: &Json) -> Option<Json> {
    let template = cronjob.pointer("/spec/jobTemplate")?;
    let spec = template.get("spec").filter(|s| s.is_object())?.clone();
    // A scheduled minute since the epoch, stable for a given template.
    let minute = 29_000_000 + fnv32(template.to_string().as_bytes()) % 1_000_000;
    let mut metadata = template_metadata(cronjob, "/spec/jobTemplate", &[]);
    metadata["name"] = json!(format!("{}-{minute}", text(cronjob, "/metadata/name")));
    metadata["ownerReferences"] = json!([controller_ref(cronjob)]);
    Some(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}))
}

/// The pod the Job controller creates for `job` (the Job as stored, after mutation): labels
/// that tie it to the Job, `generateName` `<job>-`, the completion index for Indexed Jobs.
pub fn pod_of_job(job: &Json) -> Option<Json> {
    let name = match text(job, "/metadata/name") {
        "" => text(job, "/metadata/generateName")
            .trim_end_matches('-')
            .to_string(),
        n => n.to_string(),
    };
    let uid = uid_for(job);
    let mut labels = vec![
        ("batch.kubernetes.io/controller-uid", uid.clone()),
        ("batch.kubernetes.io/job-name", name.clone()),
        ("controller-uid", uid),
        ("job-name", name.clone()),
    ];
    let indexed = text(job, "/spec/completionMode") == "Indexed";
    if indexed {
        labels.push(("batch.kubernetes.io/job-completion-index", "0".into()));
    }
    let mut owner = job.clone();
    owner["metadata"]["name"] = json!(name);
    let mut pod = template_pod(job, "/spec/template", &format!("{name}-"), &owner, &labels)?;
    if indexed {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = Json::Object(Map::new());
        }
        pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] = json!("0");
    }
    Some(pod)
}

/// A Pod or Job read from the cluster (see [`Plan::Running`]).
pub fn running(object: Json) -> Manifest {
    let id = Identity {
        api_version: text(&object, "/apiVersion").to_string(),
        kind: text(&object, "/kind").to_string(),
        namespace: text(&object, "/metadata/namespace").to_string(),
        name: display_name(&object),
    };
    Manifest::Audit {
        id,
        plan: Plan::Running(object),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Json {
        json!({"metadata": {"labels": {"app": "train"}},
               "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    fn planned(object: Json) -> (Identity, Json) {
        match classify(&object, "default", &WorkloadKinds::default()) {
            Manifest::Audit {
                id,
                plan: Plan::Pod(o) | Plan::Job(o) | Plan::Template(o),
            } => (id, o),
            other => panic!("not audited: {other:?}"),
        }
    }

    #[test]
    fn deployment_pods_belong_to_a_replicaset() {
        let (id, pod) = planned(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "serve", "namespace": "ml"},
            "spec": {"template": template()}}));
        assert_eq!(id.namespace, "ml");
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        let rs = owner["name"].as_str().unwrap();
        assert!(rs.starts_with("serve-"), "{rs}");
        assert_eq!(pod["metadata"]["generateName"], format!("{rs}-"));
        assert_eq!(pod["metadata"]["labels"]["app"], "train");
        assert_eq!(
            pod["metadata"]["labels"]["pod-template-hash"],
            rs.trim_start_matches("serve-")
        );
        assert_eq!(pod["metadata"]["namespace"], "ml");
        assert_eq!(pod["spec"], template()["spec"]);
    }

    #[test]
    fn statefulset_pod_has_identity_and_claims() {
        let (_, pod) = planned(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {"serviceName": "db-hl", "template": template(),
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}));
        assert_eq!(pod["metadata"]["name"], "db-0");
        assert!(pod["metadata"].get("generateName").is_none());
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["spec"]["subdomain"], "db-hl");
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data-db-0"
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    }

    #[test]
    fn cronjob_creates_a_job_whose_pods_belong_to_it() {
        let (id, job) = planned(json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "ml"},
            "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": template()}}}}));
        assert_eq!(id.kind, "CronJob");
        assert_eq!(job["kind"], "Job");
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        let name = job["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("nightly-2"), "{name}");
        let pod = pod_of_job(&job).unwrap();
        assert_eq!(pod["metadata"]["generateName"], format!("{name}-"));
        assert_eq!(pod["metadata"]["labels"]["job-name"], name);
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    }

    #[test]
    fn daemonset_pods_get_the_controller_tolerations() {
        let (_, pod) = planned(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "dcgm"}, "spec": {"template": template()}}));
        let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), 6);
    }

    #[test]
    fn owners_uids_are_stable_and_distinct() {
        let a = json!({"kind": "Job", "metadata": {"name": "a", "namespace": "x"}});
        let b = json!({"kind": "Job", "metadata": {"name": "b", "namespace": "x"}});
        assert_eq!(uid_for(&a), uid_for(&a));
        assert_ne!(uid_for(&a), uid_for(&b));
        assert_eq!(uid_for(&a).len(), 36);
    }

    #[test]
    fn other_kinds_are_skipped_and_non_objects_are_errors() {
        let none = WorkloadKinds::default();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert!(
            matches!(classify(&cm, "d", &none), Manifest::Skipped { id } if id.namespace == "d")
        );
        // A Job of another API group is not a batch Job.
        let crd = json!({"apiVersion": "example.com/v1", "kind": "Job", "metadata": {"name": "j"}});
        assert!(matches!(
            classify(&crd, "d", &none),
            Manifest::Skipped { .. }
        ));
        let values = json!({"replicaCount": 2});
        match classify(&values, "d", &none) {
            Manifest::Invalid { message, .. } => assert!(message.contains("apiVersion and kind")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&json!("text"), "d", &none),
            Manifest::Invalid { .. }
        ));
        let odd = json!({"apiVersion": "v1", "kind": "Pod", "metadata": "p"});
        assert!(matches!(
            classify(&odd, "d", &none),
            Manifest::Invalid { .. }
        ));
        // A workload whose template has no usable spec is an error, not a skip.
        let broken = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "x"}, "spec": {"template": {"spec": "oops"}}});
        match classify(&broken, "d", &none) {
            Manifest::Invalid { message, .. } => {
                assert!(message.contains("DaemonSet x"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
