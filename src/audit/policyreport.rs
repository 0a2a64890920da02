//! The audit as `wgpolicyk8s.io/v1alpha2` PolicyReports, the format Kyverno and Kubewarden
//! write their audit results in (kubernetes-sigs/wg-policy-prototypes): one PolicyReport per
//! namespace and one ClusterPolicyReport, for `kubectl apply -f -` or a dashboard that reads
//! them (Policy Reporter, for example).
//!
//! Every audited object gets one result per policy, so the summary counts (object, policy)
//! pairs as Kyverno's do:
//!
//! | mlguard | result |
//! | --- | --- |
//! | a denial by the policy | `fail` |
//! | a warning, or what the policy would deny or patch in `dryrun` | `warn` |
//! | nothing to object to (with or without a patch) | `pass` |
//! | the object could not be evaluated | `error` |
//! | a kind mlguard does not admit | `skip` |
//!
//! Objects of cluster-scoped kinds and documents that are not Kubernetes objects go to the
//! ClusterPolicyReport (the latter without `resources`, with their file in `properties`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

use super::{ObjectReport, Report, Status};

pub const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";
/// `metadata.name` of every report mlguard writes; applying a new audit replaces the last.
pub const REPORT_NAME: &str = "mlguard-audit";
/// `results[].source`.
pub const SOURCE: &str = "mlguard";
/// The `policy` of a finding that no policy claims (a patch that is not idempotent).
const UNATTRIBUTED: &str = "mlguard";

/// Built-in kinds that live outside namespaces, by API group: their results go to the
/// ClusterPolicyReport. Any other kind is taken to be namespaced.
const CLUSTER_SCOPED: &[(&str, &[&str])] = &[
    ("", &["Namespace", "Node", "PersistentVolume"]),
    (
        "admissionregistration.k8s.io",
        &[
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
        ],
    ),
    ("apiextensions.k8s.io", &["CustomResourceDefinition"]),
    ("apiregistration.k8s.io", &["APIService"]),
    (
        "certificates.k8s.io",
        &["CertificateSigningRequest", "ClusterTrustBundle"],
    ),
    (
        "flowcontrol.apiserver.k8s.io",
        &["FlowSchema", "PriorityLevelConfiguration"],
    ),
    (
        "networking.k8s.io",
        &["IngressClass", "IPAddress", "ServiceCIDR"],
    ),
    ("node.k8s.io", &["RuntimeClass"]),
    (
        "rbac.authorization.k8s.io",
        &["ClusterRole", "ClusterRoleBinding"],
    ),
    ("resource.k8s.io", &["DeviceClass", "ResourceSlice"]),
    ("scheduling.k8s.io", &["PriorityClass"]),
    (
        "storage.k8s.io",
        &[
            "CSIDriver",
            "CSINode",
            "StorageClass",
            "VolumeAttachment",
            "VolumeAttributesClass",
        ],
    ),
    ("wgpolicyk8s.io", &["ClusterPolicyReport"]),
];

fn cluster_scoped(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    CLUSTER_SCOPED
        .iter()
        .any(|(g, kinds)| *g == group && kinds.contains(&kind))
}

/// `[policy] message` as mlguard tags every finding, split; untagged text has no policy.
fn split_tag(message: &str) -> (Option<&str>, &str) {
    message
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
        .filter(|(policy, _)| !policy.is_empty() && !policy.contains(char::is_whitespace))
        .map_or((None, message), |(p, m)| (Some(p), m))
}

/// What one policy found over all the admissions of one object.
#[derive(Default)]
struct Findings {
    fail: Vec<String>,
    warn: Vec<String>,
    patched: Vec<String>,
}

fn add(
    to: &mut BTreeMap<String, Findings>,
    message: &str,
    prefix: &str,
    list: fn(&mut Findings) -> &mut Vec<String>,
) {
    let (policy, text) = split_tag(message);
    let entry = to
        .entry(policy.unwrap_or(UNATTRIBUTED).to_string())
        .or_default();
    list(entry).push(format!("{prefix}{text}"));
}

fn findings(o: &ObjectReport) -> BTreeMap<String, Findings> {
    let mut by_policy: BTreeMap<String, Findings> = BTreeMap::new();
    let map = &mut by_policy;
    for a in &o.admissions {
        for m in &a.denials {
            add(map, m, "", |f| &mut f.fail);
        }
        for m in &a.warnings {
            add(map, m, "", |f| &mut f.warn);
        }
        for m in &a.would_deny {
            add(map, m, "dryrun, would deny: ", |f| &mut f.warn);
        }
        for m in &a.would_patch {
            add(map, m, "dryrun, would patch: ", |f| &mut f.warn);
        }
        for op in &a.repatch {
            let m = format!(
                "mutating {} again changes {op}: a policy is not idempotent",
                a.subject()
            );
            add(map, &m, "", |f| &mut f.warn);
        }
        for c in &a.patch {
            let what = format!(
                "{} {} {}",
                a.subject(),
                c.op["op"].as_str().unwrap_or("?"),
                c.op["path"].as_str().unwrap_or("?")
            );
            map.entry(c.policy.clone()).or_default().patched.push(what);
        }
    }
    by_policy
}

fn object_reference(o: &ObjectReport, namespaced: bool) -> Json {
    let mut r = json!({
        "apiVersion": o.id.api_version,
        "kind": o.id.kind,
        "name": o.id.name,
    });
    if namespaced {
        r["namespace"] = json!(o.id.namespace);
    }
    r
}

/// The results of one object: one per policy, in the report's policy order, then any policy
/// a finding names that is not in that list.
fn results(report: &Report, o: &ObjectReport, namespaced: bool, timestamp: &Json) -> Vec<Json> {
    let mut found = findings(o);
    let mut policies: Vec<String> = report.policies.clone();
    policies.extend(
        found
            .keys()
            .filter(|p| !report.policies.contains(p))
            .cloned(),
    );
    let mut properties = json!({"source": o.source.to_string()});
    if o.admissions.len() > 1 || o.admissions.first().is_some_and(|a| a.kind != o.id.kind) {
        let admitted: Vec<String> = o.admissions.iter().map(|a| a.subject()).collect();
        properties["admitted"] = json!(admitted.join(", "));
    }
    policies
        .into_iter()
        .map(|policy| {
            let (result, message) = match o.status {
                Status::Error => (
                    "error",
                    o.message
                        .clone()
                        .unwrap_or_else(|| "cannot evaluate".into()),
                ),
                Status::Skipped => (
                    "skip",
                    o.message
                        .clone()
                        .unwrap_or_else(|| "not admitted by mlguard".into()),
                ),
                _ => {
                    let f = found.remove(&policy).unwrap_or_default();
                    if !f.fail.is_empty() {
                        ("fail", f.fail.join("; "))
                    } else if !f.warn.is_empty() {
                        ("warn", f.warn.join("; "))
                    } else if !f.patched.is_empty() {
                        (
                            "pass",
                            format!("admitted with changes: {}", f.patched.join(", ")),
                        )
                    } else {
                        ("pass", "admitted".to_string())
                    }
                }
            };
            let mut r = json!({
                "source": SOURCE,
                "policy": policy,
                "result": result,
                "message": message,
                "scored": result != "skip",
                "timestamp": timestamp,
                "properties": properties,
            });
            if !o.id.kind.is_empty() {
                r["resources"] = json!([object_reference(o, namespaced)]);
            }
            r
        })
        .collect()
}

fn summary(results: &[Json]) -> Json {
    let count = |what: &str| results.iter().filter(|r| r["result"] == what).count();
    json!({
        "pass": count("pass"),
        "fail": count("fail"),
        "warn": count("warn"),
        "error": count("error"),
        "skip": count("skip"),
    })
}

fn report_object(kind: &str, namespace: Option<&str>, results: Vec<Json>) -> Json {
    let mut metadata = json!({
        "name": REPORT_NAME,
        "labels": {"app.kubernetes.io/managed-by": "mlguard"},
    });
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": metadata,
        "summary": summary(&results),
        "results": results,
    })
}

/// The PolicyReports of the namespaces that have objects (in name order), then the
/// ClusterPolicyReport, always, so that applying the stream replaces the last cluster-wide one.
pub fn reports(report: &Report, now: SystemTime) -> Vec<Json> {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let timestamp = json!({"seconds": since.as_secs(), "nanos": since.subsec_nanos()});
    let mut namespaced: BTreeMap<&str, Vec<Json>> = BTreeMap::new();
    let mut cluster = Vec::new();
    for o in &report.objects {
        let in_namespace = !o.id.kind.is_empty() && !cluster_scoped(&o.id.api_version, &o.id.kind);
        let rs = results(report, o, in_namespace, &timestamp);
        if in_namespace {
            namespaced
                .entry(o.id.namespace.as_str())
                .or_default()
                .extend(rs);
        } else {
            cluster.extend(rs);
        }
    }
    let mut out: Vec<Json> = namespaced
        .into_iter()
        .map(|(ns, rs)| report_object("PolicyReport", Some(ns), rs))
        .collect();
    out.push(report_object("ClusterPolicyReport", None, cluster));
    out
}

/// A YAML stream of `documents`, each starting with `---`.
pub fn yaml(documents: &[Json]) -> String {
    let mut out = String::new();
    for d in documents {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Mode;
    use crate::audit::objects::{Identity, Source};
    use crate::audit::{Admission, Change};
    use std::time::Duration;

    fn object(
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        status: Status,
        admissions: Vec<Admission>,
    ) -> ObjectReport {
        ObjectReport {
            source: Source {
                file: "k8s/a.yaml".into(),
                index: 2,
            },
            id: Identity {
                api_version: api_version.into(),
                kind: kind.into(),
                namespace: ns.into(),
                name: name.into(),
            },
            status,
            message: None,
            admissions,
        }
    }

    fn admission(kind: &str, name: &str) -> Admission {
        Admission {
            kind: kind.into(),
            namespace: "ml".into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn sample() -> Report {
        let mut denied = admission("Pod", "train");
        denied
            .denials
            .push("[gpu_limits] Pod ml/train: no limit".into());
        denied
            .warnings
            .push("[gpu_memory_limit] Pod ml/train: no memory limit".into());
        let mut job = admission("Job", "sweep");
        job.patch.push(Change {
            policy: "job_lifecycle".into(),
            op: json!({"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": 86400}),
        });
        let mut job_pod = admission("Pod", "sweep-*");
        job_pod
            .would_deny
            .push("[gpu_limits] Pod ml/sweep-*: no limit".into());
        let mut skipped = object("v1", "ConfigMap", "ml", "c", Status::Skipped, vec![]);
        skipped.message = Some("ConfigMap is not admitted by mlguard".into());
        let mut invalid = object("", "", "", "", Status::Error, vec![]);
        invalid.id = Identity::default();
        invalid.message = Some("not a Kubernetes object: no kind".into());
        Report {
            mode: Mode::Enforce,
            policies: vec![
                "gpu_limits".into(),
                "gpu_memory_limit".into(),
                "job_lifecycle".into(),
            ],
            objects: vec![
                object("v1", "Pod", "ml", "train", Status::Denied, vec![denied]),
                object(
                    "batch/v1",
                    "Job",
                    "ml",
                    "sweep",
                    Status::Warned,
                    vec![job, job_pod],
                ),
                skipped,
                object(
                    "v1",
                    "Pod",
                    "serving",
                    "api",
                    Status::Clean,
                    vec![admission("Pod", "api")],
                ),
                object(
                    "rbac.authorization.k8s.io/v1",
                    "ClusterRole",
                    "default",
                    "r",
                    Status::Skipped,
                    vec![],
                ),
                invalid,
            ],
        }
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_700_000_000, 5)
    }

    #[test]
    fn one_report_per_namespace_and_a_cluster_report() {
        let docs = reports(&sample(), at());
        let heads: Vec<(String, String)> = docs
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().into(),
                    d["metadata"]["namespace"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        assert_eq!(
            heads,
            [
                ("PolicyReport".into(), "ml".into()),
                ("PolicyReport".into(), "serving".into()),
                ("ClusterPolicyReport".into(), String::new())
            ]
        );
        assert!(docs
            .iter()
            .all(|d| d["apiVersion"] == API_VERSION && d["metadata"]["name"] == REPORT_NAME));
    }

    #[test]
    fn results_map_mlguard_findings() {
        let docs = reports(&sample(), at());
        let ml = &docs[0];
        let result = |name: &str, policy: &str| {
            ml["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["resources"][0]["name"] == name && r["policy"] == policy)
                .cloned()
                .unwrap()
        };
        let fail = result("train", "gpu_limits");
        assert_eq!(
            (fail["result"].as_str(), fail["message"].as_str()),
            (Some("fail"), Some("Pod ml/train: no limit"))
        );
        assert_eq!(fail["source"], "mlguard");
        assert_eq!(fail["scored"], true);
        assert_eq!(
            fail["timestamp"],
            json!({"seconds": 1_700_000_000u64, "nanos": 5})
        );
        assert_eq!(
            fail["resources"][0],
            json!({"apiVersion": "v1", "kind": "Pod", "namespace": "ml", "name": "train"})
        );
        assert_eq!(fail["properties"]["source"], "k8s/a.yaml#2");
        assert_eq!(result("train", "gpu_memory_limit")["result"], "warn");
        assert_eq!(result("train", "job_lifecycle")["result"], "pass");
        let dry = result("sweep", "gpu_limits");
        assert_eq!(dry["result"], "warn");
        assert!(
            dry["message"]
                .as_str()
                .unwrap()
                .starts_with("dryrun, would deny: Pod ml/sweep-*"),
            "{dry}"
        );
        assert_eq!(
            dry["properties"]["admitted"],
            "Job ml/sweep, Pod ml/sweep-*"
        );
        let patched = result("sweep", "job_lifecycle");
        assert_eq!(patched["result"], "pass");
        assert!(
            patched["message"]
                .as_str()
                .unwrap()
                .contains("Job ml/sweep add /spec/ttlSecondsAfterFinished"),
            "{patched}"
        );
        let skip = result("c", "gpu_limits");
        assert_eq!(
            (skip["result"].as_str(), skip["scored"].as_bool()),
            (Some("skip"), Some(false))
        );
        assert_eq!(
            ml["summary"],
            json!({"pass": 3, "fail": 1, "warn": 2, "error": 0, "skip": 3})
        );
        assert_eq!(
            docs[1]["summary"],
            json!({"pass": 3, "fail": 0, "warn": 0, "error": 0, "skip": 0})
        );
    }

    #[test]
    fn cluster_scoped_objects_and_non_objects_go_to_the_cluster_report() {
        let docs = reports(&sample(), at());
        let cluster = docs.last().unwrap();
        assert!(cluster["metadata"].get("namespace").is_none());
        let results = cluster["results"].as_array().unwrap();
        assert_eq!(results.len(), 6);
        let role = &results[0];
        assert_eq!(
            role["resources"][0],
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "r"})
        );
        let invalid = &results[3];
        assert!(invalid.get("resources").is_none());
        assert_eq!(invalid["result"], "error");
        assert_eq!(invalid["message"], "not a Kubernetes object: no kind");
        assert_eq!(
            cluster["summary"],
            json!({"pass": 0, "fail": 0, "warn": 0, "error": 3, "skip": 3})
        );
    }

    #[test]
    fn a_finding_of_a_policy_outside_the_list_still_gets_a_result() {
        let mut report = sample();
        report.policies.truncate(1);
        let docs = reports(&report, at());
        let policies: Vec<&str> = docs[0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resources"][0]["name"] == "train")
            .map(|r| r["policy"].as_str().unwrap())
            .collect();
        assert_eq!(policies, ["gpu_limits", "gpu_memory_limit"]);
    }

    #[test]
    fn the_yaml_stream_parses_back() {
        let docs = reports(&sample(), at());
        let text = yaml(&docs);
        assert!(
            text.starts_with("---\napiVersion: wgpolicyk8s.io/v1alpha2\n"),
            "{text}"
        );
        let back: Vec<Json> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(back, docs);
    }

    #[test]
    fn tags_are_split_only_when_they_name_a_policy() {
        assert_eq!(split_tag("[gpu_quota] Pod x"), (Some("gpu_quota"), "Pod x"));
        assert_eq!(split_tag("[not a tag] x"), (None, "[not a tag] x"));
        assert_eq!(split_tag("plain"), (None, "plain"));
    }
}
