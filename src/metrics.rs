//! Prometheus metrics. Names follow the Prometheus conventions with the `mlguard_` prefix; the
//! alert rules in manifests/monitoring reference them, so renaming one is a breaking change.
//!
//! Namespaces and object names are deliberately not labels: a cluster with thousands of
//! namespaces would make every series explode. Per-namespace detail is in the decision log.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::policy::verdict::Verdict;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub kind: String,
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub policy: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub endpoint: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// Buckets from 100µs (a small review) to 10s (past any sane webhook timeout).
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<EndpointLabels, Histogram>,
    pub violations: Family<ViolationLabels, Counter>,
    pub dryrun_patches: Family<PolicyLabels, Counter>,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub policy_generation: Gauge,
    pub policy_last_reload_success: Gauge,
    pub certificate_reloads: Family<ResultLabels, Counter>,
    pub certificate_expiry: Gauge,
    cluster_state_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub quota_reservations: Gauge,
    pub quota_reservations_expired: Counter,
    pub limited: Family<LimitLabels, Counter>,
    pub quota_reservations_unconfirmed: Counter,
    pub exempted: Family<ReasonLabels, Counter>,
    /// Unix time of the last cluster-state update; 0 when the state is not live.
    cluster_state_updated: AtomicI64,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("MLGUARD_GIT_COMMIT");

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mlguard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by endpoint, kind, operation and outcome",
            requests.clone(),
        );
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "admission_request_duration_seconds",
            "Time to answer an admission review, from body received to reply built",
            duration.clone(),
        );
        let violations = Family::<ViolationLabels, Counter>::default();
        registry.register(
            "policy_violations",
            "Policy findings (deny and warn rules that fired), by policy and enforcement action",
            violations.clone(),
        );
        let dryrun_patches = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "policy_dryrun_patches",
            "Patch operations a policy in dryrun would have made and did not, by policy",
            dryrun_patches.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy set reloads, by result",
            policy_reloads.clone(),
        );
        let policy_generation = Gauge::default();
        registry.register(
            "policy_generation",
            "Generation of the policy set being served; increases on every successful reload",
            policy_generation.clone(),
        );
        let policy_last_reload_success = Gauge::default();
        policy_last_reload_success.set(1);
        registry.register(
            "policy_last_reload_success",
            "1 if the last policy reload succeeded, 0 if the last good set is still being served",
            policy_last_reload_success.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads, by result",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry of the serving certificate, Unix time",
            certificate_expiry.clone(),
        );
        let cluster_state_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cluster_state_age_seconds",
            "Seconds since the live cluster state (quotas, nodes, namespaces) was last known current: near 0 while the watches are healthy, growing while the API server is unreachable",
            cluster_state_age.clone(),
        );
        let quota_reservations = Gauge::default();
        registry.register(
            "quota_reservations",
            "GPU pods admitted whose quota charge the ResourceQuota status does not show yet (live cluster state only)",
            quota_reservations.clone(),
        );
        let quota_reservations_expired = Counter::default();
        registry.register(
            "quota_reservations_expired",
            "Reservations that expired before the ResourceQuota status showed them: pods rejected after mlguard admitted them (by another webhook or the API server), or deleted meanwhile",
            quota_reservations_expired.clone(),
        );
        let limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "reviews_limited",
            "Reviews answered by a limit rather than by the policies, by endpoint and limit: deadline (the configured deadline answer was sent), memory (no share of the review memory within the deadline), body_timeout, body_too_large",
            limited.clone(),
        );
        let quota_reservations_unconfirmed = Counter::default();
        registry.register(
            "quota_reservations_unconfirmed",
            "Reservations dropped because their pod did not appear with the review's uid: reviews that did not come from the API server, or pods refused after mlguard admitted them",
            quota_reservations_unconfirmed.clone(),
        );
        let exempted = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reviews_exempted",
            "Reviews admitted unchanged by an exemption before any policy ran, by reason: namespace, namespace_label, object_label, user, group, service_account",
            exempted.clone(),
        );
        registry.register(
            "build",
            "mlguard version and git commit",
            Info::new(BuildLabels {
                version: VERSION.into(),
                commit: COMMIT.into(),
            }),
        );
        // Reload counters exist from the start, so that rate() and the alerts see a zero
        // rather than no series at all.
        for family in [&policy_reloads, &certificate_reloads] {
            for result in ["success", "failure"] {
                let _ = family.get_or_create(&ResultLabels {
                    result: result.into(),
                });
            }
        }
        Metrics {
            registry,
            requests,
            duration,
            violations,
            dryrun_patches,
            policy_reloads,
            policy_generation,
            policy_last_reload_success,
            certificate_reloads,
            certificate_expiry,
            cluster_state_age,
            quota_reservations,
            quota_reservations_expired,
            limited,
            quota_reservations_unconfirmed,
            exempted,
            cluster_state_updated: AtomicI64::new(0),
        }
    }

    /// Marks the live cluster state as fresh now.
    pub fn cluster_state_updated(&self, unix: i64) {
        self.cluster_state_updated.store(unix, Ordering::Relaxed);
    }

    /// Seconds since the live cluster state was last known current; None when it is not live.
    pub fn cluster_state_age(&self) -> Option<i64> {
        let updated = self.cluster_state_updated.load(Ordering::Relaxed);
        (updated > 0).then(|| (crate::tls::now() - updated).max(0))
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(age) = self.cluster_state_age() {
            self.cluster_state_age.set(age as f64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts one answered review.
    pub fn observe(
        &self,
        endpoint: &str,
        kind: &str,
        operation: &str,
        verdict: &Verdict,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                kind: kind.into(),
                operation: operation.into(),
                outcome: verdict.outcome().into(),
            })
            .inc();
        self.duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(seconds);
        if let Some(exemption) = &verdict.exempted {
            self.exempted
                .get_or_create(&ReasonLabels {
                    reason: exemption.reason.as_str().into(),
                })
                .inc();
        }
        for fired in &verdict.fired {
            if matches!(fired.finding, crate::policy::verdict::Finding::Patch) {
                // Applied patches are counted by outcome; the ones dryrun held back are what
                // an admin watches before switching a mutating policy on.
                if fired.action == crate::policy::Action::Dryrun {
                    self.dryrun_patches
                        .get_or_create(&PolicyLabels {
                            policy: fired.policy.clone(),
                        })
                        .inc_by(fired.messages.len() as u64);
                }
                continue;
            }
            self.violations
                .get_or_create(&ViolationLabels {
                    policy: fired.policy.clone(),
                    action: fired.effect().into(),
                })
                .inc_by(fired.messages.len().max(1) as u64);
        }
    }

    /// Counts a review answered by `limit` rather than by the policies.
    pub fn observe_limited(&self, endpoint: &str, limit: &str) {
        self.limited
            .get_or_create(&LimitLabels {
                endpoint: endpoint.into(),
                limit: limit.into(),
            })
            .inc();
    }

    /// Counts a request that could not be answered from its content (HTTP 4xx).
    pub fn observe_rejected(&self, endpoint: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                kind: String::new(),
                operation: String::new(),
                outcome: "error".into(),
            })
            .inc();
        self.duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(seconds);
    }
}
