//! What a pod will be charged against a ResourceQuota, computed the way the API server's
//! ResourceQuota admission plugin computes it, and whether a quota's scopes select the pod.
//! Pure functions over the pod as JSON (the object of an AdmissionReview).
//!
//! The pod's demand per resource follows Kubernetes' rule: max(sum of containers, largest init
//! container), where sidecar init containers (`restartPolicy: Always`) run alongside the
//! containers and so count with them, and an ordinary init container runs alongside the
//! sidecars declared before it. `spec.overhead` is added on top, as the quota plugin does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use super::quantity;
use super::state::ScopeTerm;

type Resources = BTreeMap<String, f64>;

/// `requests` or `limits` of one container. A request left out where a limit is given defaults
/// to the limit, as the API server's defaulting does before admission.
/// A value that is not a quantity is left out: the policies refuse a pod whose GPU
/// quantities they cannot read, so no reservation is made for one.
fn container_resources(container: &Json, field: &str) -> Resources {
    let resources = &container["resources"];
    let read = |field: &str| -> Resources {
        resources[field]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), quantity::from_json(v).ok()?)))
            .collect()
    };
    let mut out = read(field);
    if field == "requests" {
        for (k, v) in read("limits") {
            out.entry(k).or_insert(v);
        }
    }
    out
}

fn add(into: &mut Resources, from: &Resources) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0.0) += v;
    }
}

fn max_into(into: &mut Resources, from: &Resources) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_insert(0.0);
        *e = e.max(*v);
    }
}

fn list<'a>(spec: &'a Json, field: &str) -> &'a [Json] {
    spec[field].as_array().map_or(&[], Vec::as_slice)
}

/// The pod's effective `requests` or `limits` per resource (Kubernetes' PodRequests/PodLimits).
pub fn pod_resources(pod: &Json, field: &str) -> Resources {
    let spec = &pod["spec"];
    let mut total = Resources::new();
    for c in list(spec, "containers") {
        add(&mut total, &container_resources(c, field));
    }
    let mut sidecars = Resources::new();
    let mut largest_init = Resources::new();
    for c in list(spec, "initContainers") {
        let own = container_resources(c, field);
        let running = if c["restartPolicy"].as_str() == Some("Always") {
            add(&mut total, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut with_sidecars = own;
            add(&mut with_sidecars, &sidecars);
            with_sidecars
        };
        max_into(&mut largest_init, &running);
    }
    max_into(&mut total, &largest_init);
    let overhead: Resources = spec["overhead"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), quantity::from_json(v).ok()?)))
        .collect();
    add(&mut total, &overhead);
    total
}

/// A pod's effective `requests` and `limits` per resource, worked out once for all the
/// quotas of its namespace.
#[derive(Debug, Clone, Default)]
pub struct PodDemand {
    pub requests: Resources,
    pub limits: Resources,
}

impl PodDemand {
    pub fn of(pod: &Json) -> PodDemand {
        PodDemand {
            requests: pod_resources(pod, "requests"),
            limits: pod_resources(pod, "limits"),
        }
    }

    /// What the pod will be charged for each of `keys` (quota `hard` keys), leaving out keys
    /// it does not use. `requests.X` and bare `X` are the pod's request of X, `limits.X` its
    /// limit, `pods` and `count/pods` count the pod itself. Other keys (services, storage,
    /// object counts) are not charged to pods.
    pub fn usage<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Resources {
        let mut out = Resources::new();
        for key in keys {
            let value = match key {
                "pods" | "count/pods" => 1.0,
                k if k.starts_with("count/") => 0.0,
                k => match k.split_once('.') {
                    Some(("requests", name)) => self.requests.get(name).copied().unwrap_or(0.0),
                    Some(("limits", name)) => self.limits.get(name).copied().unwrap_or(0.0),
                    _ => self.requests.get(k).copied().unwrap_or(0.0),
                },
            };
            if value > 0.0 {
                out.insert(key.to_string(), value);
            }
        }
        out
    }
}

/// [`PodDemand::usage`] of `pod`.
pub fn pod_usage<'a>(pod: &Json, keys: impl IntoIterator<Item = &'a str>) -> Resources {
    PodDemand::of(pod).usage(keys)
}

/// BestEffort QoS: no container of any kind requests or limits CPU or memory.
fn best_effort(pod: &Json) -> bool {
    let spec = &pod["spec"];
    list(spec, "containers")
        .iter()
        .chain(list(spec, "initContainers"))
        .all(|c| {
            ["requests", "limits"].iter().all(|field| {
                let r = container_resources(c, field);
                !r.contains_key("cpu") && !r.contains_key("memory")
            })
        })
}

fn cross_namespace_affinity(pod: &Json) -> bool {
    let affinity = &pod["spec"]["affinity"];
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let a = &affinity[kind];
        let required = list(a, "requiredDuringSchedulingIgnoredDuringExecution").iter();
        let preferred = list(a, "preferredDuringSchedulingIgnoredDuringExecution")
            .iter()
            .map(|w| &w["podAffinityTerm"]);
        required.chain(preferred).any(|term| {
            term["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                || term["namespaceSelector"].is_object()
        })
    })
}

/// A pod with a deadline (`activeDeadlineSeconds` >= 0) is Terminating for quota scopes.
fn terminating(pod: &Json) -> bool {
    pod["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|s| s >= 0)
}

fn term_matches(term: &ScopeTerm, pod: &Json) -> bool {
    let spec = &pod["spec"];
    match term.scope_name.as_str() {
        "Terminating" => terminating(pod),
        "NotTerminating" => !terminating(pod),
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "CrossNamespacePodAffinity" => cross_namespace_affinity(pod),
        "PriorityClass" => {
            let class = spec["priorityClassName"].as_str().unwrap_or("");
            match term.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => term.values.iter().any(|v| v == class),
                "NotIn" => !term.values.iter().any(|v| v == class),
                // The quota plugin matches against a label set that always holds the key.
                _ => false,
            }
        }
        // Scopes for other objects (e.g. VolumeAttributesClass for claims) never select pods.
        _ => false,
    }
}

/// Whether a quota with these scopes charges the pod: every term must select it (a quota
/// without scopes charges every pod in its namespace).
pub fn scopes_select(scopes: &[ScopeTerm], pod: &Json) -> bool {
    scopes.iter().all(|t| term_matches(t, pod))
}

/// Every `hard` key of the quotas, for [`pod_usage`].
pub fn quota_keys<'a>(hard: impl IntoIterator<Item = &'a String>) -> BTreeSet<&'a str> {
    hard.into_iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(requests: Json, limits: Json) -> Json {
        json!({"name": "c", "resources": {"requests": requests, "limits": limits}})
    }

    fn pod(spec: Json) -> Json {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
    }

    const KEYS: [&str; 6] = [
        "requests.nvidia.com/gpu",
        "limits.nvidia.com/gpu",
        "cpu",
        "requests.memory",
        "pods",
        "services",
    ];

    #[test]
    fn containers_add_up_and_bare_names_mean_requests() {
        let p = pod(json!({"containers": [
            container(json!({"nvidia.com/gpu": "2", "cpu": "500m"}), json!({"nvidia.com/gpu": "2"})),
            container(json!({"cpu": "1", "memory": "1Gi"}), json!({})),
        ]}));
        let u = pod_usage(&p, KEYS);
        assert_eq!(u["requests.nvidia.com/gpu"], 2.0);
        assert_eq!(u["limits.nvidia.com/gpu"], 2.0);
        assert_eq!(u["cpu"], 1.5);
        assert_eq!(u["requests.memory"], 1024.0 * 1024.0 * 1024.0);
        assert_eq!(u["pods"], 1.0);
        assert!(!u.contains_key("services"));
    }

    #[test]
    fn requests_default_to_limits() {
        let p = pod(json!({"containers": [container(json!({}), json!({"nvidia.com/gpu": "4"}))]}));
        assert_eq!(pod_usage(&p, KEYS)["requests.nvidia.com/gpu"], 4.0);
    }

    #[test]
    fn largest_init_container_wins_over_a_smaller_sum() {
        let p = pod(json!({
            "initContainers": [container(json!({"nvidia.com/gpu": "4"}), json!({"nvidia.com/gpu": "4"}))],
            "containers": [container(json!({"nvidia.com/gpu": "1"}), json!({"nvidia.com/gpu": "1"}))],
        }));
        assert_eq!(pod_usage(&p, KEYS)["requests.nvidia.com/gpu"], 4.0);
    }

    #[test]
    fn sidecars_count_with_containers_and_with_later_init_containers() {
        let mut sidecar = container(json!({"nvidia.com/gpu": "1"}), json!({}));
        sidecar["restartPolicy"] = json!("Always");
        let p = pod(json!({
            "initContainers": [sidecar, container(json!({"nvidia.com/gpu": "2"}), json!({}))],
            "containers": [container(json!({"nvidia.com/gpu": "1"}), json!({}))],
        }));
        // Containers with the sidecar: 1 + 1 = 2; the second init container runs next to the
        // sidecar: 2 + 1 = 3, which is the larger.
        assert_eq!(pod_usage(&p, KEYS)["requests.nvidia.com/gpu"], 3.0);
    }

    #[test]
    fn overhead_is_charged() {
        let p = pod(json!({"overhead": {"cpu": "250m"},
                           "containers": [container(json!({"cpu": "1"}), json!({}))]}));
        assert_eq!(pod_usage(&p, KEYS)["cpu"], 1.25);
    }

    fn term(scope: &str, operator: &str, values: &[&str]) -> ScopeTerm {
        ScopeTerm {
            scope_name: scope.into(),
            operator: operator.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn scopes_select_like_the_quota_plugin() {
        let gpu = pod(
            json!({"priorityClassName": "high", "activeDeadlineSeconds": 60,
                             "containers": [container(json!({"cpu": "1"}), json!({}))]}),
        );
        let plain = pod(json!({"containers": [{"name": "c"}]}));
        assert!(scopes_select(&[], &plain));
        assert!(scopes_select(&[term("Terminating", "Exists", &[])], &gpu));
        assert!(!scopes_select(
            &[term("Terminating", "Exists", &[])],
            &plain
        ));
        assert!(scopes_select(&[term("BestEffort", "Exists", &[])], &plain));
        assert!(scopes_select(&[term("NotBestEffort", "Exists", &[])], &gpu));
        assert!(scopes_select(
            &[term("PriorityClass", "In", &["high"])],
            &gpu
        ));
        assert!(!scopes_select(
            &[term("PriorityClass", "In", &["high"])],
            &plain
        ));
        assert!(scopes_select(
            &[term("PriorityClass", "NotIn", &["high"])],
            &plain
        ));
        assert!(!scopes_select(
            &[term("PriorityClass", "Exists", &[])],
            &plain
        ));
        assert!(!scopes_select(
            &[term("VolumeAttributesClass", "Exists", &[])],
            &gpu
        ));
        let both = [
            term("Terminating", "Exists", &[]),
            term("PriorityClass", "In", &["low"]),
        ];
        assert!(!scopes_select(&both, &gpu));
    }
}
