//! The quota coordinator: live cluster state on the request path.
//!
//! The watch task publishes what the API server reports (the base state); admitted pods add
//! reservations (see `cluster::ledger`). The state the policies read is always base +
//! reservations, and it changes only under one lock, so that checking a pod against
//! `remaining` and reserving what it takes is a single step: two pods of the same namespace
//! cannot both pass on the same figure.
//!
//! A reservation names its pod (namespace, name, uid): a review without a pod uid reserves
//! nothing, and each reservation is checked against the pod a moment later by the
//! confirmation task (`cluster::confirm`), which drops it at once when the pod never
//! appeared. So a review that did not come from the API server cannot hold quota back from
//! other users' pods for longer than that check takes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use super::health::Latch;
use crate::admission::ParsedReview;
use crate::cluster::confirm::{
    self, ConfirmOptions, Lookup, Outcome, PendingPod, PodLookup, ReservationSink,
};
use crate::cluster::ledger::{charges, covers, Ledger};
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
    /// Namespaces where a reservation went unconfirmed lately, until when: their pods reserve
    /// nothing meanwhile (see [`SUSPECT_FOR`]).
    suspect: std::collections::HashMap<String, Instant>,
}

/// How long, after a reservation in a namespace went unconfirmed, pods there reserve nothing.
/// Dropping forged reservations after the confirmation delay is not enough on its own: a
/// forger who posts again every few seconds would hold the quota for good. In a suspect
/// namespace, admitted pods are not reserved, so forged reviews cannot hold quota there; the
/// cost is mlguard's burst precision there (two pods admitted at once may both pass on the
/// same figure, and the API server's quota plugin then refuses the second, as it does across
/// replicas).
pub const SUSPECT_FOR: Duration = Duration::from_secs(600);

pub struct QuotaCoordinator {
    inner: Mutex<Inner>,
    published: Arc<Published>,
    metrics: Arc<Metrics>,
    /// Opened by the first published state: readiness waits for it.
    synced: Arc<Latch>,
    /// The confirmation task's queue and how long after a reservation its pod is looked up,
    /// once the task runs (see [`QuotaCoordinator::spawn_confirmations`]).
    confirmations: OnceLock<(mpsc::Sender<PendingPod>, Duration)>,
    /// Set while the queue is full, so that a flood is logged once.
    queue_full: AtomicBool,
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
                suspect: Default::default(),
            }),
            published,
            metrics,
            synced,
            confirmations: OnceLock::new(),
            queue_full: AtomicBool::new(false),
        }
    }

    /// Starts the task that confirms each new reservation by its pod (`pods` looks pods up:
    /// the kube client, or a test's stand-in). Without it, reservations last until the quota
    /// status shows them or they expire. Call once, before reviews arrive.
    pub fn spawn_confirmations<P: PodLookup>(
        self: &Arc<Self>,
        pods: P,
        options: ConfirmOptions,
        stop: signal::Receiver<bool>,
    ) -> JoinHandle<()> {
        let (tx, rx) = confirm::channel();
        let _ = self.confirmations.set((tx, options.delay));
        confirm::spawn(pods, self.clone(), rx, options, stop)
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
        let (pod, charges) = match inner.base.quotas.contains_key(review.namespace.as_str()) {
            true => {
                let pod = review.object_json().unwrap_or_default();
                let charges = charges(&inner.base, &review.namespace, &pod);
                (pod, charges)
            }
            false => Default::default(),
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
            self.reserve(&mut inner, review, &pod, charges);
        }
        verdict
    }

    /// Reserves `charges` of the allowed `pod`, and queues its confirmation.
    fn reserve(
        &self,
        inner: &mut Inner,
        review: &ParsedReview,
        pod: &serde_json::Value,
        charges: Vec<crate::cluster::ledger::Charge>,
    ) {
        let meta = &pod["metadata"];
        let name = meta["name"].as_str().unwrap_or("");
        let uid = meta["uid"].as_str().unwrap_or("");
        if name.is_empty() || uid.is_empty() {
            // The API server names the pod and gives it a uid before validating admission;
            // a review without them was made by hand, and its pod cannot be checked.
            tracing::debug!(namespace = %review.namespace, pod = %review.name, user = %review.user,
                "a pod review without metadata.name and metadata.uid reserves no quota");
            return;
        }
        let confirmations = self.confirmations.get();
        let permit = match confirmations.map(|(tx, _)| tx.try_reserve()) {
            None => None,
            Some(Ok(permit)) => {
                if self.queue_full.swap(false, Ordering::Relaxed) {
                    tracing::info!("quota reservations are confirmed again");
                }
                Some(permit)
            }
            // The task has ended (shutting down): the reservation lasts until its TTL.
            Some(Err(mpsc::error::TrySendError::Closed(()))) => None,
            Some(Err(mpsc::error::TrySendError::Full(()))) => {
                if !self.queue_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queue = confirm::QUEUE,
                        "too many quota reservations waiting for confirmation; further pods reserve nothing until the queue drains (the API server's quota check still applies)"
                    );
                }
                return;
            }
        };
        tracing::debug!(namespace = %review.namespace, pod = name, uid, ?charges, "reserving quota");
        let base = inner.base.clone();
        let now = Instant::now();
        if inner
            .suspect
            .get(&review.namespace)
            .is_some_and(|until| *until > now)
        {
            tracing::debug!(namespace = %review.namespace, pod = name,
                "no quota reservation: a reservation in this namespace went unconfirmed lately");
            return;
        }
        if !inner
            .ledger
            .reserve(&base, &review.namespace, name, uid, charges, now)
        {
            return;
        }
        if let (Some(permit), Some((_, delay))) = (permit, confirmations) {
            permit.send(PendingPod {
                namespace: review.namespace.clone(),
                name: name.to_string(),
                uid: uid.to_string(),
                user: review.user.clone(),
                reserved_at: SystemTime::now(),
                due: now + *delay,
            });
        }
        self.metrics
            .quota_reservations
            .set(inner.ledger.len() as i64);
        inner.serve_namespace(&self.published, &review.namespace);
    }
}

/// The confirmation task's view of the coordinator.
impl ReservationSink for QuotaCoordinator {
    fn is_open(&self, pending: &PendingPod) -> bool {
        self.lock().ledger.holds(&pending.namespace, &pending.uid)
    }

    fn resolve(&self, pending: &PendingPod, lookup: Lookup) {
        let mut inner = self.lock();
        let reserved = inner.ledger.reserved(&pending.namespace, &pending.uid);
        if reserved.is_empty() {
            return; // the quota status showed it meanwhile
        }
        let outcome = match confirm::decide(pending, &lookup, confirm::CLOCK_SKEW) {
            Outcome::Confirmed => match &lookup {
                Lookup::Found(pod) => {
                    if covers(&charges(&inner.base, &pending.namespace, pod), &reserved) {
                        Outcome::Confirmed
                    } else {
                        Outcome::Unconfirmed(
                            "the pod is charged less than the review claimed".into(),
                        )
                    }
                }
                _ => Outcome::Confirmed,
            },
            other => other,
        };
        let why = match outcome {
            Outcome::Confirmed => {
                tracing::debug!(namespace = %pending.namespace, pod = %pending.name, "quota reservation confirmed by its pod");
                return;
            }
            // Kept until its TTL; the confirmation task logs why, once.
            Outcome::Unknown(_) => return,
            Outcome::Unconfirmed(why) => why,
        };
        inner.ledger.withdraw(&pending.namespace, &pending.uid);
        let now = Instant::now();
        inner.suspect.retain(|_, until| *until > now);
        inner
            .suspect
            .insert(pending.namespace.clone(), now + SUSPECT_FOR);
        tracing::warn!(
            namespace = %pending.namespace,
            pod = %pending.name,
            uid = %pending.uid,
            user = %pending.user,
            reason = %why,
            "dropped a quota reservation whose pod did not appear: a review that did not come from the API server, or a pod refused after mlguard admitted it"
        );
        self.metrics.quota_reservations_unconfirmed.inc();
        inner.settle(&self.metrics, Instant::now());
        inner.serve(&self.published);
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
