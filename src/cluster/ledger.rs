//! Quota reservations for pods this replica admitted recently.
//!
//! The API server's ResourceQuota plugin charges a pod to `status.used` when it creates the
//! pod, and mlguard learns of that charge only when the quota's watch event arrives, a moment
//! later. Between the two, several pods would each see the same `remaining` figure. So every
//! GPU (or other quota-charged) pod mlguard admits is reserved here and added to the `used`
//! figures the policies read, until the quota's status shows it or the reservation expires.
//!
//! A reservation is settled when `status.used[key]` reaches its target: what was used when it
//! was made, plus the reservations before it, plus its own amount. Pods that end meanwhile
//! lower `used`, so a settlement can come late; then the reservation holds until it expires,
//! which over-counts for a bounded time and never under-counts. Pure: time is passed in.
//!
//! Each reservation names its pod by uid: one pod is reserved at most once, and a
//! reservation whose pod never appears (see `cluster::confirm`) is withdrawn before it expires.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::dra_usage::PodClaimCharges;
use super::state::Quota;
use super::usage::{scopes_select, PodDemand};
use super::ClusterState;

/// What a pod will be charged against one quota of its namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub quota: String,
    pub key: String,
    pub amount: f64,
}

#[derive(Debug, Clone)]
struct Reservation {
    namespace: String,
    pod: String,
    /// The pod's `metadata.uid`, which the API server gives it before validating admission.
    uid: String,
    charge: Charge,
    target: f64,
    expires: Instant,
}

/// Tolerance for comparing sums of quantities such as `0.1` CPU.
const EPSILON: f64 = 1e-9;

#[derive(Debug, Clone)]
pub struct Ledger {
    ttl: Duration,
    entries: Vec<Reservation>,
}

/// `state` with `charges` taken back out of the `used` figures of `namespace`'s quotas (never
/// below zero): how the quotas look to a pod that is already counted in them.
pub fn credit(state: &ClusterState, namespace: &str, charges: &[Charge]) -> ClusterState {
    let mut out = state.clone();
    if let Some(quotas) = out.quotas.get_mut(namespace) {
        let mut list = quotas.to_vec();
        for charge in charges {
            if let Some(q) = list.iter_mut().find(|q| q.name == charge.quota) {
                if let Some(used) = q.used.get_mut(&charge.key) {
                    *used = (*used - charge.amount).max(0.0);
                }
            }
        }
        *quotas = Arc::new(list);
    }
    out
}

/// Whether `actual` (what a pod is charged) covers every charge of `claimed` (what a review
/// of it reserved): a pod cannot be made to reserve more than it takes.
pub fn covers(actual: &[Charge], claimed: &[Charge]) -> bool {
    claimed.iter().all(|c| {
        let taken: f64 = actual
            .iter()
            .filter(|a| a.quota == c.quota && a.key == c.key)
            .map(|a| a.amount)
            .sum();
        taken + EPSILON >= c.amount
    })
}

/// The charges of `pod` against the quotas of `namespace` whose scopes select it.
pub fn charges(state: &ClusterState, namespace: &str, pod: &Json) -> Vec<Charge> {
    let mut out = Vec::new();
    let quotas = state.quotas.get(namespace);
    if quotas.is_none() {
        return out;
    }
    let demand = PodDemand::of(pod);
    // The devices of the claims made for the pod (DRA), and what it asks of an extended
    // resource a DeviceClass stands for, which that class's device quota counts too.
    let claims = PodClaimCharges::of(&state.dra, namespace, pod);
    for quota in quotas.into_iter().flat_map(|q| q.iter()) {
        if !scopes_select(&quota.scopes, pod) {
            continue;
        }
        let keys = || quota.hard.keys().map(String::as_str);
        let mut usage = demand.usage(keys());
        for (key, amount) in claims
            .iter()
            .flat_map(|c| c.usage(&demand.requests, keys()))
        {
            *usage.entry(key).or_insert(0.0) += amount;
        }
        for (key, amount) in usage {
            out.push(Charge {
                quota: quota.name.clone(),
                key,
                amount,
            });
        }
    }
    out
}

fn used(state: &ClusterState, namespace: &str, charge: &Charge) -> Option<f64> {
    let quota = state
        .quotas
        .get(namespace)?
        .iter()
        .find(|q| q.name == charge.quota)?;
    quota
        .hard
        .contains_key(&charge.key)
        .then(|| quota.used.get(&charge.key).copied().unwrap_or(0.0))
}

impl Ledger {
    pub fn new(ttl: Duration) -> Ledger {
        Ledger {
            ttl,
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn pending(&self, namespace: &str, charge: &Charge) -> f64 {
        self.entries
            .iter()
            .filter(|r| {
                r.namespace == namespace
                    && r.charge.quota == charge.quota
                    && r.charge.key == charge.key
            })
            .map(|r| r.charge.amount)
            .sum()
    }

    /// Whether the pod with `uid` holds a reservation.
    pub fn holds(&self, namespace: &str, uid: &str) -> bool {
        self.entries
            .iter()
            .any(|r| r.namespace == namespace && r.uid == uid)
    }

    /// What the pod with `uid` holds reserved (nothing once its reservation ended).
    pub fn reserved(&self, namespace: &str, uid: &str) -> Vec<Charge> {
        self.entries
            .iter()
            .filter(|r| r.namespace == namespace && r.uid == uid)
            .map(|r| r.charge.clone())
            .collect()
    }

    /// Records `charges` of the pod named `pod` with `uid`, admitted now, against `base` (the
    /// state as the API server last reported it, without reservations). A pod that holds a
    /// reservation already is not reserved twice (a review sent again for the same pod, or one
    /// that copies its uid): returns whether anything was reserved.
    pub fn reserve(
        &mut self,
        base: &ClusterState,
        namespace: &str,
        pod: &str,
        uid: &str,
        charges: Vec<Charge>,
        now: Instant,
    ) -> bool {
        if self.holds(namespace, uid) {
            return false;
        }
        let before = self.entries.len();
        for charge in charges {
            let Some(used) = used(base, namespace, &charge) else {
                continue;
            };
            let target = used + self.pending(namespace, &charge) + charge.amount;
            self.entries.push(Reservation {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                uid: uid.to_string(),
                charge,
                target,
                expires: now + self.ttl,
            });
        }
        self.entries.len() > before
    }

    /// Drops the reservation of the pod with `uid` (its pod never appeared). The reservations
    /// made after it counted it in their targets; those targets are lowered by its amounts, so
    /// that they settle when their own pods are charged. Returns whether it held anything.
    pub fn withdraw(&mut self, namespace: &str, uid: &str) -> bool {
        let mut withdrawn: Vec<Charge> = Vec::new();
        let mut kept = Vec::with_capacity(self.entries.len());
        for mut r in std::mem::take(&mut self.entries) {
            if r.namespace == namespace && r.uid == uid {
                withdrawn.push(r.charge);
                continue;
            }
            if r.namespace == namespace {
                for w in &withdrawn {
                    if w.quota == r.charge.quota && w.key == r.charge.key {
                        r.target -= w.amount;
                    }
                }
            }
            kept.push(r);
        }
        self.entries = kept;
        !withdrawn.is_empty()
    }

    /// Drops the reservations that `base` now shows as used, whose quota or key is gone, or
    /// that have expired. Returns the pods whose reservations expired unsettled, for the log.
    pub fn settle(&mut self, base: &ClusterState, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        self.entries.retain(|r| {
            let Some(used) = used(base, &r.namespace, &r.charge) else {
                return false;
            };
            if used + EPSILON >= r.target {
                return false;
            }
            if r.expires <= now {
                expired.push(format!("{}/{}", r.namespace, r.pod));
                return false;
            }
            true
        });
        expired.dedup();
        expired
    }

    /// The quotas of `namespace` in `base` with its pending reservations added to the `used`
    /// figures they are charged to, so that `remaining` shrinks with them.
    pub fn namespace_quotas(&self, base: &ClusterState, namespace: &str) -> Vec<Quota> {
        let mut quotas: Vec<Quota> = base
            .quotas
            .get(namespace)
            .map(|q| q.to_vec())
            .unwrap_or_default();
        for r in self.entries.iter().filter(|r| r.namespace == namespace) {
            if let Some(quota) = quotas.iter_mut().find(|q| q.name == r.charge.quota) {
                *quota.used.entry(r.charge.key.clone()).or_insert(0.0) += r.charge.amount;
            }
        }
        quotas
    }

    /// `base` with every pending reservation added (see [`Ledger::namespace_quotas`]).
    pub fn apply(&self, base: &ClusterState) -> ClusterState {
        let mut state = base.clone();
        let namespaces: BTreeSet<&str> =
            self.entries.iter().map(|r| r.namespace.as_str()).collect();
        for namespace in namespaces {
            if base.quotas.contains_key(namespace) {
                let quotas = self.namespace_quotas(base, namespace);
                state.quotas.insert(namespace.into(), Arc::new(quotas));
            }
        }
        state
    }

    /// When the oldest reservation expires, for the settling timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.iter().map(|r| r.expires).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceQuota;
    use serde_json::json;

    fn state(hard: &str, used: &str) -> ClusterState {
        let rq: ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": "gpu", "namespace": "ml"},
            "spec": {"hard": {"requests.nvidia.com/gpu": hard, "pods": "100"}},
            "status": {"used": {"requests.nvidia.com/gpu": used, "pods": "0"}},
        }))
        .unwrap();
        let mut s = ClusterState::default();
        s.add_quota(&rq);
        s
    }

    fn gpu_pod(gpus: u32) -> Json {
        json!({"spec": {"containers": [{"name": "c", "resources": {
            "limits": {"nvidia.com/gpu": gpus.to_string()}}}]}})
    }

    fn remaining(s: &ClusterState) -> f64 {
        s.quotas["ml"][0].remaining()["requests.nvidia.com/gpu"]
    }

    #[test]
    fn charges_name_each_quota_key_the_pod_uses() {
        let c = charges(&state("8", "0"), "ml", &gpu_pod(2));
        assert_eq!(
            c,
            vec![
                Charge {
                    quota: "gpu".into(),
                    key: "pods".into(),
                    amount: 1.0
                },
                Charge {
                    quota: "gpu".into(),
                    key: "requests.nvidia.com/gpu".into(),
                    amount: 2.0
                },
            ]
        );
        assert!(charges(&state("8", "0"), "other", &gpu_pod(2)).is_empty());
    }

    #[test]
    fn reservations_shrink_remaining_until_the_status_shows_them() {
        let now = Instant::now();
        let base = state("8", "2");
        let mut ledger = Ledger::new(Duration::from_secs(30));
        for pod in ["a", "b"] {
            let c = charges(&base, "ml", &gpu_pod(2));
            assert!(ledger.reserve(&base, "ml", pod, &format!("uid-{pod}"), c, now));
        }
        assert_eq!(remaining(&ledger.apply(&base)), 2.0);

        // The quota plugin charged the first pod only: the second stays reserved.
        let base = state("8", "4");
        assert!(ledger.settle(&base, now).is_empty());
        assert_eq!(remaining(&ledger.apply(&base)), 2.0);

        let base = state("8", "6");
        ledger.settle(&base, now);
        assert_eq!(remaining(&ledger.apply(&base)), 2.0);
        // `pods` was never charged in these statuses, so those reservations remain.
        assert!(ledger.entries.iter().all(|r| r.charge.key == "pods"));
    }

    /// A ledger holding one pod of `gpus` GPUs, reserved now against an unused 8-GPU quota.
    fn one_reserved(gpus: u32) -> (Ledger, ClusterState, Instant) {
        let now = Instant::now();
        let base = state("8", "0");
        let mut ledger = Ledger::new(Duration::from_secs(30));
        let c = charges(&base, "ml", &gpu_pod(gpus));
        ledger.reserve(&base, "ml", "train-0", "uid-0", c, now);
        (ledger, base, now)
    }

    #[test]
    fn unsettled_reservations_expire() {
        let (mut ledger, base, now) = one_reserved(3);
        assert_eq!(ledger.next_expiry(), Some(now + Duration::from_secs(30)));
        assert!(ledger
            .settle(&base, now + Duration::from_secs(29))
            .is_empty());
        let expired = ledger.settle(&base, now + Duration::from_secs(30));
        assert_eq!(expired, vec!["ml/train-0".to_string()]);
        assert!(ledger.is_empty());
        assert_eq!(remaining(&ledger.apply(&base)), 8.0);
    }

    #[test]
    fn a_deleted_quota_drops_its_reservations() {
        let (mut ledger, _, now) = one_reserved(1);
        ledger.settle(&ClusterState::default(), now);
        assert!(ledger.is_empty());
    }

    #[test]
    fn a_pod_is_reserved_once() {
        let (mut ledger, base, now) = one_reserved(2);
        let c = charges(&base, "ml", &gpu_pod(6));
        assert!(!ledger.reserve(&base, "ml", "copy", "uid-0", c, now));
        assert_eq!(remaining(&ledger.apply(&base)), 6.0);
        assert!(ledger.holds("ml", "uid-0"));
        assert!(!ledger.holds("other", "uid-0"));
    }

    #[test]
    fn a_withdrawn_reservation_lowers_the_targets_after_it() {
        let now = Instant::now();
        let base = state("8", "0");
        let mut ledger = Ledger::new(Duration::from_secs(30));
        for (pod, gpus) in [("forged", 3), ("real", 2)] {
            let c = charges(&base, "ml", &gpu_pod(gpus));
            ledger.reserve(&base, "ml", pod, &format!("uid-{pod}"), c, now);
        }
        assert_eq!(remaining(&ledger.apply(&base)), 3.0);
        assert!(ledger.withdraw("ml", "uid-forged"));
        assert!(!ledger.withdraw("ml", "uid-forged"));
        assert_eq!(remaining(&ledger.apply(&base)), 6.0);
        assert!(ledger.reserved("ml", "uid-forged").is_empty());
        // The real pod is charged: its reservation settles on its own amount.
        ledger.settle(&state("8", "2"), now);
        assert!(ledger
            .reserved("ml", "uid-real")
            .iter()
            .all(|c| c.key == "pods"));
    }

    #[test]
    fn covers_compares_each_quota_key() {
        let base = state("8", "0");
        let two = charges(&base, "ml", &gpu_pod(2));
        let six = charges(&base, "ml", &gpu_pod(6));
        assert!(covers(&two, &two));
        assert!(covers(&six, &two));
        assert!(!covers(&two, &six));
        assert!(!covers(&[], &two));
        assert!(covers(&[], &[]));
    }
}
