//! The quota coordinator: live cluster state on the request path.
//!
//! The watch task publishes what the API server reports (the base state); admitted pods add
//! reservations (see `cluster::ledger`). The state the policies read is always base +
//! reservations, and it changes only under one lock, so that checking a pod against
//! `remaining` and reserving what it takes is a single step: two pods of the same namespace
//! cannot both pass on the same figure.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::health::Latch;
use crate::admission::ParsedReview;
use crate::cluster::ledger::{charges, Ledger};
use crate::cluster::watch::ClusterSink;
use crate::cluster::ClusterState;
use crate::metrics::Metrics;
use crate::policy::verdict::Verdict;
use crate::policy::{Evaluator, Published, Stage};

struct Inner {
    base: Arc<ClusterState>,
    ledger: Ledger,
    /// The state last swapped into the evaluator (base + reservations).
    served: Option<Arc<ClusterState>>,
}

pub struct QuotaCoordinator {
    inner: Mutex<Inner>,
    published: Arc<Published>,
    metrics: Arc<Metrics>,
    /// Opened by the first published state: readiness waits for it.
    synced: Arc<Latch>,
}

impl Inner {
    /// Swaps base + reservations into the evaluator, unless that is what it serves already.
    fn serve(&mut self, published: &Published) {
        let effective = if self.ledger.is_empty() {
            self.base.clone()
        } else {
            Arc::new(self.ledger.apply(&self.base))
        };
        if self.served.as_deref() == Some(&*effective) && self.is_served(published) {
            return;
        }
        if let Err(e) = published.swap_cluster(effective.clone()) {
            tracing::error!(error = %e, "cannot load the cluster state into the policies; keeping the previous state");
            return;
        }
        self.served = Some(effective);
    }

    /// Drops the reservations the base state shows, and those that expired: logged and
    /// counted, since an expiry means a pod mlguard admitted was not created after all.
    fn settle(&mut self, metrics: &Metrics, now: Instant) {
        let base = self.base.clone();
        let expired = self.ledger.settle(&base, now);
        if !expired.is_empty() {
            tracing::info!(
                pods = ?expired,
                "quota reservations expired before the ResourceQuota status showed them (pods rejected after mlguard admitted them, or deleted meanwhile)"
            );
            metrics
                .quota_reservations_expired
                .inc_by(expired.len() as u64);
        }
        metrics.quota_reservations.set(self.ledger.len() as i64);
    }

    /// After a reservation in `namespace`: serves the state with that namespace's quotas
    /// updated, converting only them (see `Evaluator::with_namespace_quotas`).
    fn serve_namespace(&mut self, published: &Published, namespace: &str) {
        let Some(served) = self.served.clone().filter(|_| self.is_served(published)) else {
            return self.serve(published);
        };
        let mut effective = (*served).clone();
        effective.quotas.insert(
            namespace.into(),
            Arc::new(self.ledger.namespace_quotas(&self.base, namespace)),
        );
        let effective = Arc::new(effective);
        // Writers are serialized by `Published`; the evaluator can still have changed since
        // the check above (a policy reload keeps the cluster state, a cluster swap would not
        // come from elsewhere), so a changed one is rebuilt whole rather than patched.
        let next = published.update(|current| {
            if Arc::ptr_eq(&current.cluster, &served) {
                current.with_namespace_quotas(effective.clone(), namespace)
            } else {
                Evaluator::new(current.set.clone(), effective.clone())
            }
        });
        match next {
            Ok(_) => self.served = Some(effective),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the quota reservation into the policies");
            }
        }
    }

    /// Whether the evaluator serves exactly the state this lock last swapped in; a policy
    /// reload rebuilds the evaluator from whatever state it saw, which may be older.
    fn is_served(&self, published: &Published) -> bool {
        self.served
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(&published.load().cluster, s))
    }
}

impl QuotaCoordinator {
    /// `ttl` bounds how long a reservation the quota status never confirms is kept. `synced`
    /// is closed until the first state is published.
    pub fn new(
        ttl: Duration,
        published: Arc<Published>,
        metrics: Arc<Metrics>,
        synced: Arc<Latch>,
    ) -> QuotaCoordinator {
        synced.close();
        QuotaCoordinator {
            inner: Mutex::new(Inner {
                base: Arc::new(ClusterState::default()),
                ledger: Ledger::new(ttl),
                served: None,
            }),
            published,
            metrics,
            synced,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while evaluating under the lock leaves the ledger consistent: it is only
        // written after evaluation.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a state freshly built from the watch caches: settles the reservations it
    /// shows and serves it with the others added.
    pub fn publish(&self, base: ClusterState, now: Instant) {
        let mut inner = self.lock();
        inner.base = Arc::new(base);
        inner.settle(&self.metrics, now);
        inner.serve(&self.published);
        drop(inner);
        self.synced.open();
    }

    /// Drops expired reservations (timer).
    pub fn settle(&self, now: Instant) {
        let mut inner = self.lock();
        if inner.ledger.next_expiry().is_none_or(|t| t > now) {
            return;
        }
        inner.settle(&self.metrics, now);
        inner.serve(&self.published);
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.lock().ledger.next_expiry()
    }

    /// Pending reservations, for /status and tests.
    pub fn reservations(&self) -> usize {
        self.lock().ledger.len()
    }

    /// Requests that reserve quota: Pod CREATEs at /validate, except server-side dry runs.
    /// Jobs do not consume pod quota at admission; their pods do, each through here.
    pub fn reserves(review: &ParsedReview, stage: Stage) -> bool {
        stage == Stage::Validate
            && review.group.is_empty()
            && review.kind == "Pod"
            && review.operation == "CREATE"
            && review.sub_resource.is_empty()
            && !review.dry_run
    }

    /// Decides a Pod CREATE with `evaluate` and, if it is allowed, reserves what the pod will
    /// be charged against its namespace's quotas, in one step under the lock.
    pub fn decide_and_reserve(
        &self,
        review: &ParsedReview,
        evaluate: impl FnOnce(&Evaluator) -> Verdict,
    ) -> Verdict {
        let mut inner = self.lock();
        // Most namespaces have no quota: skip converting the pod for them.
        let charges = match inner.base.quotas.contains_key(review.namespace.as_str()) {
            true => {
                let pod = review.object_json().unwrap_or_default();
                charges(&inner.base, &review.namespace, &pod)
            }
            false => Vec::new(),
        };
        if charges.is_empty() {
            drop(inner);
            return evaluate(&self.published.load());
        }
        if !inner.is_served(&self.published) {
            inner.serve(&self.published);
        }
        let verdict = evaluate(&self.published.load());
        if verdict.allowed {
            tracing::debug!(namespace = %review.namespace, pod = %review.name, ?charges, "reserving quota");
            let base = inner.base.clone();
            inner.ledger.reserve(
                &base,
                &review.namespace,
                &review.name,
                charges,
                Instant::now(),
            );
            self.metrics
                .quota_reservations
                .set(inner.ledger.len() as i64);
            inner.serve_namespace(&self.published, &review.namespace);
        }
        verdict
    }
}

/// The watch task's view of the coordinator.
impl ClusterSink for QuotaCoordinator {
    fn publish(&self, state: ClusterState, now: Instant) {
        QuotaCoordinator::publish(self, state, now);
    }
    fn tick(&self, now: Instant) {
        self.settle(now);
    }
    fn fresh(&self, unix_now: i64) {
        self.metrics.cluster_state_updated(unix_now);
    }
    fn age_seconds(&self) -> Option<i64> {
        self.metrics.cluster_state_age()
    }
}
