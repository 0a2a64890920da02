//! Confirming quota reservations by the pod appearing.
//!
//! Anyone who can reach the webhook can POST a review, and a Pod CREATE that mlguard allows
//! reserves quota (see `ledger`). A review from the API server is followed by its pod: the API
//! server names the pod and gives it its `metadata.uid` and `creationTimestamp` before
//! validating admission, and stores it right after. A forged review's pod never appears with
//! that uid. So each reservation is checked a short while after it was made with a GET of
//! its pod, and withdrawn at once when the pod is missing, has another uid, or is older than
//! the review.
//!
//! [`decide`] is that check, pure. [`spawn`] runs the checks in a background task fed by a
//! channel; it is given a [`PodLookup`] (a `kube::Client`, or a test's stand-in) and a
//! [`ReservationSink`] (the server's quota coordinator), nothing else.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value as Json;
use tokio::sync::{mpsc, watch as signal, Semaphore};
use tokio::task::JoinHandle;

/// A reservation waiting for its pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `userInfo.username` of the review, for the log.
    pub user: String,
    /// Wall-clock time of the reservation, compared with the pod's `creationTimestamp`.
    pub reserved_at: SystemTime,
    /// When to look for the pod.
    pub due: Instant,
}

/// What the API server said about the pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The pod, as JSON.
    Found(Json),
    /// 404.
    NotFound,
    /// Any other failure (unreachable, 403, a timeout): nothing is known about the pod.
    Failed(String),
}

/// What becomes of the reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pod exists and the review created it: kept until the quota status shows it.
    Confirmed,
    /// The review's pod does not exist: dropped at once. The reason is for the log.
    Unconfirmed(String),
    /// The pod could not be looked up: kept until the reservation's TTL (a real pod's
    /// reservation must not be lost because the API server did not answer).
    Unknown(String),
}

/// How far a pod's `creationTimestamp` may lie before the reservation's time and still be the
/// review's pod: the API server sets the timestamp just before it calls validating webhooks,
/// with whole-second precision, on a clock that can differ a little from mlguard's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Timings of the confirmation task. The defaults suit a cluster; tests shorten the delay.
#[derive(Debug, Clone)]
pub struct ConfirmOptions {
    /// How long after a reservation its pod is looked up. The API server stores a pod as soon
    /// as every validating webhook and the quota plugin have answered, so this needs to exceed
    /// the slowest of them; most reservations have settled (the quota status showed the pod)
    /// by then, and need no lookup.
    pub delay: Duration,
    /// Longest wait for one GET.
    pub timeout: Duration,
    /// Lookups in flight at once.
    pub concurrency: usize,
}

impl Default for ConfirmOptions {
    fn default() -> Self {
        ConfirmOptions {
            delay: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            concurrency: 8,
        }
    }
}

/// Reservations waiting for confirmation, at most. When the queue is full (a flood of
/// reviews) the coordinator reserves nothing for further pods rather than hold quota it
/// cannot check; the API server's ResourceQuota plugin still enforces the quota.
pub const QUEUE: usize = 10_000;

/// The queue between the coordinator and the confirmation task.
pub fn channel() -> (mpsc::Sender<PendingPod>, mpsc::Receiver<PendingPod>) {
    mpsc::channel(QUEUE)
}

/// Whether the reservation in `pending` is the pod's, from what `lookup` found.
pub fn decide(pending: &PendingPod, lookup: &Lookup, skew: Duration) -> Outcome {
    let pod = match lookup {
        Lookup::Found(pod) => pod,
        Lookup::NotFound => {
            return Outcome::Unconfirmed("no such pod was created".into());
        }
        Lookup::Failed(why) => return Outcome::Unknown(why.clone()),
    };
    let meta = &pod["metadata"];
    let uid = meta["uid"].as_str().unwrap_or("");
    if uid != pending.uid {
        return Outcome::Unconfirmed(format!(
            "the pod of that name has uid {uid:?}, not the review's {:?}",
            pending.uid
        ));
    }
    let created = meta["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
    let Some(created) = created else {
        return Outcome::Unconfirmed("the pod has no readable creationTimestamp".into());
    };
    let reserved_ms = pending
        .reserved_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let earliest_ms = reserved_ms - skew.as_millis() as i64;
    if created.as_millisecond() < earliest_ms {
        return Outcome::Unconfirmed(format!(
            "the pod was created at {created}, before the review (a copy of an existing pod's name and uid)"
        ));
    }
    Outcome::Confirmed
}

/// Reads a pod: the one thing the confirmation task asks of the API server.
pub trait PodLookup: Send + Sync + 'static {
    fn get(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup> + Send;
}

impl PodLookup for kube::Client {
    async fn get(&self, namespace: &str, name: &str) -> Lookup {
        let api: kube::Api<Pod> = kube::Api::namespaced(self.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(pod)) => match serde_json::to_value(pod) {
                Ok(json) => Lookup::Found(json),
                Err(e) => Lookup::Failed(format!("cannot read the pod: {e}")),
            },
            Ok(None) => Lookup::NotFound,
            Err(kube::Error::Api(s)) if s.code == 403 => Lookup::Failed(format!(
                "{} (forbidden: mlguard's ServiceAccount needs get on pods; see manifests/common/rbac.yaml)",
                s.message
            )),
            Err(e) => Lookup::Failed(e.to_string()),
        }
    }
}

/// Where the confirmation task reports. The server's quota coordinator implements it.
pub trait ReservationSink: Send + Sync + 'static {
    /// Whether the reservation is still open; one the quota status has shown already needs
    /// no lookup.
    fn is_open(&self, pending: &PendingPod) -> bool;
    /// What the API server said about the pod: the sink decides (see [`decide`]) and keeps
    /// or drops the reservation.
    fn resolve(&self, pending: &PendingPod, lookup: Lookup);
}

/// Logs a failing lookup once, not per pod, and the recovery.
#[derive(Default)]
struct FailureLog {
    failing: AtomicBool,
}

impl FailureLog {
    fn record(&self, lookup: &Lookup) {
        match lookup {
            Lookup::Failed(why) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %why,
                        "cannot look up pods to confirm quota reservations; keeping them until --quota-reservation-ttl (logged once until a lookup succeeds)"
                    );
                }
            }
            _ => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("pod lookups for quota reservations work again");
                }
            }
        }
    }
}

/// Looks up the pod of each reservation from `queue` once it is due, and reports to `sink`,
/// until `stop` turns true or the queue closes.
pub fn spawn<P: PodLookup, S: ReservationSink>(
    pods: P,
    sink: Arc<S>,
    mut queue: mpsc::Receiver<PendingPod>,
    options: ConfirmOptions,
    mut stop: signal::Receiver<bool>,
) -> JoinHandle<()> {
    let pods = Arc::new(pods);
    let failures = Arc::new(FailureLog::default());
    let limit = Arc::new(Semaphore::new(options.concurrency.max(1)));
    tokio::spawn(async move {
        loop {
            // Reservations arrive in the order they were made, so each is due no earlier
            // than the one before it: waiting for the head of the queue delays no other.
            let pending = tokio::select! {
                p = queue.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(pending.due.into()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !sink.is_open(&pending) {
                continue;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let (pods, sink, failures) = (pods.clone(), sink.clone(), failures.clone());
            let timeout = options.timeout;
            tokio::spawn(async move {
                let lookup =
                    tokio::time::timeout(timeout, pods.get(&pending.namespace, &pending.name))
                        .await
                        .unwrap_or_else(|_| {
                            Lookup::Failed(format!("no answer within {timeout:?}"))
                        });
                failures.record(&lookup);
                sink.resolve(&pending, lookup);
                drop(permit);
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A reservation made at 2026-11-20T10:00:00Z.
    fn pending() -> PendingPod {
        PendingPod {
            namespace: "ml".into(),
            name: "train-0".into(),
            uid: "uid-1".into(),
            user: "alice".into(),
            reserved_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_168_800),
            due: Instant::now(),
        }
    }

    fn pod(uid: &str, created: &str) -> Lookup {
        Lookup::Found(json!({"metadata": {"name": "train-0", "namespace": "ml",
            "uid": uid, "creationTimestamp": created}}))
    }

    fn decided(lookup: Lookup) -> Outcome {
        decide(&pending(), &lookup, CLOCK_SKEW)
    }

    fn unconfirmed(outcome: Outcome) -> String {
        match outcome {
            Outcome::Unconfirmed(why) => why,
            other => panic!("expected Unconfirmed, got {other:?}"),
        }
    }

    #[test]
    fn the_reviewed_pod_confirms() {
        // The timestamp has whole seconds, set just before validating admission.
        assert_eq!(
            decided(pod("uid-1", "2026-11-20T10:00:00Z")),
            Outcome::Confirmed
        );
        assert_eq!(
            decided(pod("uid-1", "2026-11-20T09:59:56Z")),
            Outcome::Confirmed
        );
        assert_eq!(
            decided(pod("uid-1", "2026-11-20T10:00:01Z")),
            Outcome::Confirmed
        );
    }

    #[test]
    fn no_pod_drops() {
        assert!(unconfirmed(decided(Lookup::NotFound)).contains("no such pod"));
    }

    #[test]
    fn another_uid_drops() {
        let why = unconfirmed(decided(pod("uid-2", "2026-11-20T10:00:00Z")));
        assert!(why.contains("uid-2"), "{why}");
    }

    #[test]
    fn an_older_pod_drops() {
        let why = unconfirmed(decided(pod("uid-1", "2026-11-20T09:59:54Z")));
        assert!(why.contains("before the review"), "{why}");
        let why = unconfirmed(decided(pod("uid-1", "2026-11-19T10:00:00Z")));
        assert!(why.contains("before the review"), "{why}");
        assert!(unconfirmed(decided(pod("uid-1", "yesterday"))).contains("creationTimestamp"));
    }

    #[test]
    fn a_failed_lookup_keeps() {
        assert_eq!(
            decided(Lookup::Failed("403".into())),
            Outcome::Unknown("403".into())
        );
    }
}
