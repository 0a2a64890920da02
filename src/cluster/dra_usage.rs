//! What a pod's DRA claims are charged against a ResourceQuota, for the quota reservations of
//! pods admitted but not yet shown in the quota status (`ledger`). The policies judge the same
//! charges (policies/lib_dra.rego); this is their Rust side, as `usage` is for containers.
//!
//! ResourceQuota charges a claim when it is created, per class as
//! `<class>.deviceclass.resource.k8s.io/devices` (the API server's claim evaluator,
//! pkg/quota/v1/evaluator/core/resource_claims.go): ExactCount its count (default 1), All the
//! 32 devices an allocation holds at most, another mode nothing; a firstAvailable request its
//! largest alternative per class; requests add up. A pod's claims made from templates are
//! created for it; a ResourceClaim it shares was charged when it was made, and adds nothing.
//! Where a DeviceClass stands for an extended resource (KEP-5004), the quota controller keeps
//! `requests.<resource>` and the class's devices equal, so each counts the other's too.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::dra::DraState;

/// The most devices one allocation holds (`AllocationResultsMaxSize`): what ResourceQuota
/// charges a request in allocationMode All.
pub const ALL_MODE_CHARGE: f64 = 32.0;

const DEVICES_SUFFIX: &str = ".deviceclass.resource.k8s.io/devices";

fn ask_charge(ask: &Json) -> (Option<&str>, f64) {
    let class = ask["deviceClassName"].as_str();
    let charge = match ask["allocationMode"].as_str().unwrap_or("ExactCount") {
        "ExactCount" => ask["count"].as_f64().unwrap_or(1.0),
        "All" => ALL_MODE_CHARGE,
        _ => 0.0,
    };
    (class, charge)
}

/// What ResourceQuota charges a claim with this (cut) spec, per DeviceClass.
pub fn claim_charges(spec: &Json) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for request in spec["devices"]["requests"].as_array().into_iter().flatten() {
        let mut largest: BTreeMap<&str, f64> = BTreeMap::new();
        let asks: Vec<&Json> = if request["exactly"].is_object() {
            vec![&request["exactly"]]
        } else {
            request["firstAvailable"]
                .as_array()
                .into_iter()
                .flatten()
                .collect()
        };
        for ask in asks {
            if let (Some(class), charge) = ask_charge(ask) {
                let e = largest.entry(class).or_insert(0.0);
                *e = e.max(charge);
            }
        }
        for (class, charge) in largest {
            *out.entry(class.to_string()).or_insert(0.0) += charge;
        }
    }
    out
}

/// What a pod's claims are charged, per DeviceClass, and which extended resource each class
/// stands for: worked out once per pod, then read for each quota of its namespace.
#[derive(Debug, Clone, Default)]
pub struct PodClaimCharges {
    /// Devices per class of the claims made from the pod's ResourceClaimTemplates. A
    /// template the state does not hold charges nothing here: the policies warn of it (or
    /// refuse it, as configured).
    devices: BTreeMap<String, f64>,
    /// Class -> the extended resource it stands for (KEP-5004).
    standing_for: BTreeMap<String, String>,
}

impl PodClaimCharges {
    /// None when DRA changes nothing of the pod's charges: it has no claims, and no class
    /// stands for an extended resource.
    pub fn of(dra: &DraState, namespace: &str, pod: &Json) -> Option<PodClaimCharges> {
        let standing_for: BTreeMap<String, String> = dra
            .device_classes
            .iter()
            .filter_map(|(class, c)| Some((class.clone(), c.extended_resource_name.clone()?)))
            .collect();
        let claims = pod["spec"]["resourceClaims"].as_array();
        if claims.is_none() && standing_for.is_empty() {
            return None;
        }
        let mut devices: BTreeMap<String, f64> = BTreeMap::new();
        let templates = dra.claim_templates.get(namespace);
        for claim in claims.into_iter().flatten() {
            let Some(name) = claim["resourceClaimTemplateName"].as_str() else {
                continue;
            };
            let Some(spec) = templates.and_then(|t| t.get(name)) else {
                continue;
            };
            for (class, n) in claim_charges(spec) {
                *devices.entry(class).or_insert(0.0) += n;
            }
        }
        Some(PodClaimCharges {
            devices,
            standing_for,
        })
    }

    /// What the pod's claims add to each of `keys` (quota `hard` keys): a class's devices to
    /// its `<class>.deviceclass.resource.k8s.io/devices`, and, for a class that stands for an
    /// extended resource, to `requests.<resource>`, `limits.<resource>` and `<resource>` as
    /// well; and what the pod's containers request of such a resource (`requests`) to the
    /// class's devices.
    pub fn usage<'a>(
        &self,
        requests: &BTreeMap<String, f64>,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for key in keys {
            let amount = match key.strip_suffix(DEVICES_SUFFIX) {
                Some(class) => {
                    self.devices.get(class).copied().unwrap_or(0.0)
                        + self
                            .standing_for
                            .get(class)
                            .and_then(|r| requests.get(r))
                            .copied()
                            .unwrap_or(0.0)
                }
                // requests.R, limits.R or R: a device is requested and limited alike, as the
                // policies count it.
                None => {
                    let resource = key
                        .strip_prefix("requests.")
                        .or_else(|| key.strip_prefix("limits."))
                        .unwrap_or(key);
                    self.devices
                        .iter()
                        .filter(|(class, _)| {
                            self.standing_for.get(*class).map(String::as_str) == Some(resource)
                        })
                        .map(|(_, n)| n)
                        .sum()
                }
            };
            if amount > 0.0 {
                out.insert(key.to_string(), amount);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(requests: Json) -> Json {
        json!({"devices": {"requests": requests}})
    }

    /// The API server's own cases (resource_claims_test.go), as lib_dra_test.rego has them.
    #[test]
    fn charges_follow_the_api_servers_claim_evaluator() {
        let exact = |extra: Json| {
            let mut e =
                json!({"deviceClassName": "gpu", "allocationMode": "ExactCount", "count": 1});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({"name": "req-0", "exactly": e})
        };
        let charge = |requests: Json| claim_charges(&spec(requests));
        assert_eq!(charge(json!([exact(json!({}))]))["gpu"], 1.0);
        assert_eq!(
            charge(json!([
                exact(json!({})),
                exact(json!({})),
                exact(json!({}))
            ]))["gpu"],
            3.0
        );
        assert_eq!(charge(json!([exact(json!({"count": 5}))]))["gpu"], 5.0);
        assert_eq!(
            charge(json!([exact(json!({"allocationMode": "All"}))]))["gpu"],
            32.0
        );
        assert_eq!(
            charge(json!([exact(json!({"allocationMode": "future-mode"}))]))["gpu"],
            0.0
        );
        assert_eq!(
            charge(json!([exact(json!({"adminAccess": true}))]))["gpu"],
            1.0
        );
        assert_eq!(
            charge(json!([{"name": "r", "exactly": {"deviceClassName": "gpu"}}]))["gpu"],
            1.0
        );
        let prioritized = charge(json!([{"name": "req-0", "firstAvailable": [
            {"name": "a", "deviceClassName": "gpu", "count": 2},
            {"name": "b", "deviceClassName": "gpu"},
            {"name": "c", "deviceClassName": "tpu", "allocationMode": "All"}]}]));
        assert_eq!(prioritized["gpu"], 2.0);
        assert_eq!(prioritized["tpu"], 32.0);
    }

    #[test]
    fn a_pods_templates_are_charged_its_shared_claims_and_unknown_templates_not() {
        let mut dra = DraState::default();
        dra.device_classes.insert(
            "gpu.nvidia.com".into(),
            crate::cluster::dra::DeviceClassInfo {
                extended_resource_name: Some("nvidia.com/gpu".into()),
                selectors: Vec::new(),
            },
        );
        dra.claim_templates.entry("ml".into()).or_default().insert(
            "eight".into(),
            spec(json!([{"name": "g", "exactly": {"deviceClassName": "gpu.nvidia.com", "count": 8}}])),
        );
        let pod = json!({"spec": {"resourceClaims": [
            {"name": "a", "resourceClaimTemplateName": "eight"},
            {"name": "b", "resourceClaimName": "shared"},
            {"name": "c", "resourceClaimTemplateName": "not-yet"}]}});
        let requests = BTreeMap::from([("nvidia.com/gpu".to_string(), 2.0)]);
        let keys = [
            "gpu.nvidia.com.deviceclass.resource.k8s.io/devices",
            "requests.nvidia.com/gpu",
            "mig.nvidia.com.deviceclass.resource.k8s.io/devices",
            "requests.cpu",
        ];
        let usage = PodClaimCharges::of(&dra, "ml", &pod)
            .unwrap()
            .usage(&requests, keys);
        // The class's devices: 8 through the template and the 2 nvidia.com/gpu it stands for.
        assert_eq!(
            usage["gpu.nvidia.com.deviceclass.resource.k8s.io/devices"],
            10.0
        );
        // requests.nvidia.com/gpu: only what the claims add; the containers' own 2 are usage's.
        assert_eq!(usage["requests.nvidia.com/gpu"], 8.0);
        assert_eq!(usage.len(), 2);
        let elsewhere = PodClaimCharges::of(&dra, "other", &pod).unwrap();
        assert!(elsewhere.usage(&BTreeMap::new(), keys).is_empty());
        // No claims and no class standing for a resource: nothing to work out.
        assert!(PodClaimCharges::of(&DraState::default(), "ml", &json!({"spec": {}})).is_none());
    }
}
