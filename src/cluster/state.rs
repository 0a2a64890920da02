//! The cluster-state data model, built from Kubernetes objects, and its `data.mlguard.cluster`
//! form. Derived figures (remaining quota, largest node) are computed here once per change so
//! that policies stay simple and requests stay cheap.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, ResourceQuota};
use serde_json::{json, Map, Value as Json};

use super::dra::{self, DraState};
use super::quantity;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// One scope of a ResourceQuota: `spec.scopes` entries (operator `Exists`) and
/// `spec.scopeSelector.matchExpressions` alike. A scoped quota charges only the pods that every
/// term selects (see `usage::scopes_select`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeTerm {
    pub scope_name: String,
    pub operator: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    pub name: String,
    pub hard: BTreeMap<String, f64>,
    pub used: BTreeMap<String, f64>,
    pub scopes: Vec<ScopeTerm>,
}

impl Quota {
    /// hard − used per resource, never below zero.
    pub fn remaining(&self) -> BTreeMap<String, f64> {
        self.hard
            .iter()
            .map(|(k, hard)| {
                let used = self.used.get(k).copied().unwrap_or(0.0);
                (k.clone(), (hard - used).max(0.0))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    pub labels: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, f64>,
    pub unschedulable: bool,
}

/// What mlguard knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    // Shared so that a copy with one namespace's quotas changed (a quota reservation) costs
    // little on a large cluster; writers go through `Arc::make_mut`. The quota index is copied
    // for each reservation, so its keys are shared too: with owned strings, copying and
    // dropping them made a reservation take 5 ms at 10,000 namespaces (1 ms with shared keys).
    pub namespaces: Arc<BTreeMap<String, NamespaceInfo>>,
    pub quotas: BTreeMap<Arc<str>, Arc<Vec<Quota>>>,
    pub nodes: Arc<BTreeMap<String, NodeInfo>>,
    /// Dynamic Resource Allocation objects and the device capacity they give (`dra`).
    pub dra: Arc<DraState>,
    /// Messages about objects that could not be read (bad quantities); logged, never fatal.
    pub problems: Vec<String>,
}

fn numbers(m: &BTreeMap<String, f64>) -> Json {
    Json::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), quantity::to_json(*v)))
            .collect::<Map<_, _>>(),
    )
}

fn quantities(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    what: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, q) in map.into_iter().flatten() {
        match quantity::parse(&q.0) {
            Ok(v) => {
                out.insert(k.clone(), v);
            }
            Err(e) => problems.push(format!("{what} {k}: {e}")),
        }
    }
    out
}

impl ClusterState {
    pub fn add_namespace(&mut self, ns: &Namespace) {
        let Some(name) = ns.metadata.name.clone() else {
            return;
        };
        Arc::make_mut(&mut self.namespaces).insert(
            name,
            NamespaceInfo {
                labels: ns.metadata.labels.clone().unwrap_or_default(),
                annotations: ns.metadata.annotations.clone().unwrap_or_default(),
            },
        );
    }

    pub fn add_quota(&mut self, rq: &ResourceQuota) {
        let name = rq.metadata.name.clone().unwrap_or_default();
        let namespace = rq
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let what = format!("ResourceQuota {namespace}/{name}");
        let hard = quantities(
            rq.spec.as_ref().and_then(|s| s.hard.as_ref()),
            &format!("{what} spec.hard"),
            &mut self.problems,
        );
        let used = quantities(
            rq.status.as_ref().and_then(|s| s.used.as_ref()),
            &format!("{what} status.used"),
            &mut self.problems,
        );
        // status.hard is what the quota controller enforces; spec.hard is what was asked for.
        // They differ only briefly after an edit, and spec is the intent, so spec wins.
        let spec = rq.spec.as_ref();
        let mut scopes: Vec<ScopeTerm> = spec
            .and_then(|s| s.scopes.as_ref())
            .into_iter()
            .flatten()
            .map(|scope| ScopeTerm {
                scope_name: scope.clone(),
                operator: "Exists".into(),
                values: Vec::new(),
            })
            .collect();
        scopes.extend(
            spec.and_then(|s| s.scope_selector.as_ref())
                .and_then(|s| s.match_expressions.as_ref())
                .into_iter()
                .flatten()
                .map(|e| ScopeTerm {
                    scope_name: e.scope_name.clone(),
                    operator: e.operator.clone(),
                    values: e.values.clone().unwrap_or_default(),
                }),
        );
        let entry = Arc::make_mut(self.quotas.entry(namespace.into()).or_default());
        entry.retain(|q| q.name != name);
        entry.push(Quota {
            name,
            hard,
            used,
            scopes,
        });
        entry.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn add_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let allocatable = quantities(
            node.status.as_ref().and_then(|s| s.allocatable.as_ref()),
            &format!("Node {name} status.allocatable"),
            &mut self.problems,
        );
        Arc::make_mut(&mut self.nodes).insert(
            name,
            NodeInfo {
                labels: node.metadata.labels.clone().unwrap_or_default(),
                allocatable,
                unschedulable: node
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
            },
        );
    }

    pub fn add_device_class(&mut self, class: &k8s_openapi::api::resource::v1::DeviceClass) {
        Arc::make_mut(&mut self.dra).add_device_class(class);
    }

    pub fn add_resource_claim(&mut self, claim: &k8s_openapi::api::resource::v1::ResourceClaim) {
        Arc::make_mut(&mut self.dra).add_claim(claim);
    }

    pub fn add_resource_claim_template(
        &mut self,
        template: &k8s_openapi::api::resource::v1::ResourceClaimTemplate,
    ) {
        Arc::make_mut(&mut self.dra).add_claim_template(template);
    }

    pub fn add_resource_slice(&mut self, slice: &k8s_openapi::api::resource::v1::ResourceSlice) {
        Arc::make_mut(&mut self.dra).add_slice(slice, &mut self.problems);
    }

    /// DRA capacity from the slices added so far, merged into the nodes' allocatable (see
    /// [`dra::finish`] and [`dra::merge`]), so that `largest_allocatable` and the capacity
    /// policies see devices offered through DRA. Every source (snapshot files, the watch's
    /// rebuild, the one-time read) calls it once, after adding all objects.
    pub fn finish_dra(&mut self) {
        let nodes: BTreeMap<&str, bool> = self
            .nodes
            .iter()
            .map(|(name, n)| (name.as_str(), n.unschedulable))
            .collect();
        let found = dra::finish(Arc::make_mut(&mut self.dra), &nodes, &mut self.problems);
        if found.is_empty() {
            return;
        }
        let nodes = Arc::make_mut(&mut self.nodes);
        for devices in &found {
            if let Some(node) = nodes.get_mut(&devices.node) {
                dra::merge(&mut node.allocatable, devices);
            }
        }
    }

    /// How many ResourceQuotas, over all namespaces.
    pub fn quota_count(&self) -> usize {
        self.quotas.values().map(|q| q.len()).sum()
    }

    /// Per resource, the most any one schedulable node offers.
    pub fn largest_allocatable(&self) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for node in self.nodes.values().filter(|n| !n.unschedulable) {
            for (k, v) in &node.allocatable {
                let e = out.entry(k.clone()).or_insert(0.0);
                *e = e.max(*v);
            }
        }
        out
    }

    /// Labels of `namespace`, for enforcement overrides by namespace selector.
    /// Borrowed, since every review asks: an unknown namespace has no labels.
    /// The labels of `namespace`, or None when the state does not hold that namespace.
    pub fn known_namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace).map(|n| &n.labels)
    }

    pub fn namespace_labels(&self, namespace: &str) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.namespaces.get(namespace).map_or(&NONE, |n| &n.labels)
    }

    /// `quotas[namespace]` of the `data.mlguard.cluster` document; None without quotas.
    pub fn namespace_quotas_json(&self, namespace: &str) -> Option<Json> {
        let list: Vec<Json> = self
            .quotas
            .get(namespace)?
            .iter()
            .map(|q| {
                let mut quota = json!({"name": q.name, "hard": numbers(&q.hard),
                    "used": numbers(&q.used), "remaining": numbers(&q.remaining())});
                // Only scoped quotas carry `scopes`, so unscoped documents are unchanged.
                if !q.scopes.is_empty() {
                    quota["scopes"] = q
                        .scopes
                        .iter()
                        .map(|t| {
                            json!({"scopeName": t.scope_name, "operator": t.operator,
                                   "values": t.values})
                        })
                        .collect();
                }
                quota
            })
            .collect();
        Some(Json::Array(list))
    }

    /// The `data.mlguard.cluster` document, as the policies' values. Built entry by entry: on
    /// a cluster of thousands of nodes and namespaces, the whole document as one JSON tree
    /// first took three times the memory of the result, on top of it.
    pub fn to_value(&self) -> regorus::Value {
        use regorus::Value;
        let object = |entries: Vec<(String, Value)>| {
            Value::from(
                entries
                    .into_iter()
                    .map(|(k, v)| (Value::from(k), v))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let namespaces = self
            .namespaces
            .iter()
            .map(|(k, n)| {
                let doc = json!({"labels": n.labels, "annotations": n.annotations});
                (k.clone(), Value::from(doc))
            })
            .collect();
        let quotas = self
            .quotas
            .keys()
            .filter_map(|ns| Some((ns.to_string(), Value::from(self.namespace_quotas_json(ns)?))))
            .collect();
        let nodes = self
            .nodes
            .iter()
            .map(|(k, n)| {
                let doc = json!({"labels": n.labels, "allocatable": numbers(&n.allocatable),
                                 "unschedulable": n.unschedulable});
                (k.clone(), Value::from(doc))
            })
            .collect();
        object(vec![
            ("namespaces".into(), object(namespaces)),
            ("quotas".into(), object(quotas)),
            ("nodes".into(), object(nodes)),
            ("node_count".into(), Value::from(self.nodes.len())),
            (
                "largest_allocatable".into(),
                Value::from(numbers(&self.largest_allocatable())),
            ),
            ("dra".into(), Value::from(self.dra.to_json())),
        ])
    }

    /// The document as JSON, for tests to index.
    #[cfg(test)]
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self.to_value()).expect("policy values are JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rq(yaml: &str) -> ResourceQuota {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn remaining_is_hard_minus_used_and_never_negative() {
        let mut s = ClusterState::default();
        s.add_quota(&rq(
            "metadata: {name: gpu, namespace: ml}\nspec: {hard: {requests.nvidia.com/gpu: '8', limits.nvidia.com/gpu: '4'}}\nstatus: {used: {requests.nvidia.com/gpu: '3', limits.nvidia.com/gpu: '6'}}",
        ));
        let j = s.to_json();
        assert_eq!(
            j["quotas"]["ml"][0]["remaining"]["requests.nvidia.com/gpu"],
            5
        );
        assert_eq!(
            j["quotas"]["ml"][0]["remaining"]["limits.nvidia.com/gpu"],
            0
        );
    }

    #[test]
    fn largest_node_skips_cordoned_nodes() {
        let mut s = ClusterState::default();
        for (name, gpus, cordoned) in [("a", "4", false), ("b", "8", true), ("c", "2", false)] {
            let node: Node = serde_yaml::from_str(&format!(
                "metadata: {{name: {name}}}\nspec: {{unschedulable: {cordoned}}}\nstatus: {{allocatable: {{nvidia.com/gpu: '{gpus}'}}}}"
            ))
            .unwrap();
            s.add_node(&node);
        }
        assert_eq!(s.largest_allocatable()["nvidia.com/gpu"], 4.0);
        assert_eq!(s.to_json()["node_count"], 3);
    }

    #[test]
    fn the_dra_entry_is_there_when_empty() {
        let j = ClusterState::default().to_json();
        assert_eq!(
            j["dra"],
            json!({"device_classes": {}, "claim_templates": {}, "claims": {},
                   "capacity": {}, "unknown_capacity": {}})
        );
    }

    #[test]
    fn bad_quantities_are_reported_not_fatal() {
        let mut s = ClusterState::default();
        s.add_quota(&rq(
            "metadata: {name: q, namespace: ml}\nspec: {hard: {requests.nvidia.com/gpu: lots}}",
        ));
        assert_eq!(s.problems.len(), 1);
        assert!(s.problems[0].contains("ml/q"), "{:?}", s.problems);
    }

    #[test]
    fn node_scoped_quota_and_namespace_entries_reach_the_policies() {
        let mut s = ClusterState::default();
        s.add_quota(&rq(
            "metadata: {name: gpu, namespace: ml}\nspec: {hard: {requests.nvidia.com/gpu: '8'}, scopes: [NotTerminating]}\nstatus: {used: {requests.nvidia.com/gpu: '3'}}",
        ));
        let node: k8s_openapi::api::core::v1::Node = serde_yaml::from_str(
            "metadata: {name: gpu-1, labels: {nvidia.com/gpu.product: H100}}\nstatus: {allocatable: {nvidia.com/gpu: '8', memory: 64Gi}}",
        )
        .unwrap();
        s.add_node(&node);
        let ns: k8s_openapi::api::core::v1::Namespace = serde_yaml::from_str(
            "metadata: {name: ml, labels: {team: vision}, annotations: {a: b}}",
        )
        .unwrap();
        s.add_namespace(&ns);
        let v = s.to_value();
        assert_eq!(
            v["namespaces"]["ml"]["annotations"]["a"],
            regorus::Value::from("b")
        );
        assert_eq!(
            v["quotas"]["ml"][0]["scopes"][0]["scopeName"],
            regorus::Value::from("NotTerminating")
        );
        assert_eq!(v["node_count"], regorus::Value::from(1u64));
        assert_eq!(
            s.to_value()["nodes"]["gpu-1"]["allocatable"]["nvidia.com/gpu"],
            regorus::Value::from(8u64)
        );
    }
}
