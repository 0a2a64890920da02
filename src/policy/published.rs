//! The evaluator being served, and the one place where a policy set and a cluster state are
//! combined into a new one.
//!
//! Requests read it without locking (an `ArcSwap`). Its writers, a policy reload, a cluster
//! rebuild and a quota reservation, each build the next evaluator from the current one; they
//! are serialized so that none of them can replace the evaluator with one built from a state
//! another writer has already replaced (a policy reload racing a cluster rebuild would
//! otherwise serve the old policies, or the old cluster, with no error).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};

use crate::cluster::ClusterState;

use super::eval::Evaluator;
use super::set::PolicySet;
use super::PolicyError;

pub struct Published {
    current: ArcSwap<Evaluator>,
    /// 1 for the set served at start, plus one per policy set swapped in since.
    generation: AtomicU64,
    writer: Mutex<()>,
}

impl Published {
    pub fn new(evaluator: Evaluator) -> Published {
        Published {
            current: ArcSwap::from_pointee(evaluator),
            generation: AtomicU64::new(1),
            writer: Mutex::new(()),
        }
    }

    /// The current evaluator, for one request.
    pub fn load(&self) -> Guard<Arc<Evaluator>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Evaluator> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Serves the evaluator `next` builds from the current one. When `next` fails, the
    /// current evaluator keeps serving.
    pub fn update(
        &self,
        next: impl FnOnce(&Evaluator) -> Result<Evaluator, PolicyError>,
    ) -> Result<Arc<Evaluator>, PolicyError> {
        // The lock guards no data, only the order of writers: a panic under it leaves
        // nothing half-written.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let next = Arc::new(next(&self.current.load())?);
        self.current.store(next.clone());
        Ok(next)
    }

    /// Serves `set` with the current cluster state. Returns the new generation.
    pub fn swap_policies(&self, set: Arc<PolicySet>) -> Result<u64, PolicyError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let next = Evaluator::new(set, self.current.load().cluster.clone())?;
        self.current.store(Arc::new(next));
        Ok(self.generation.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Serves `cluster` with the current policy set.
    pub fn swap_cluster(&self, cluster: Arc<ClusterState>) -> Result<(), PolicyError> {
        self.update(|current| Evaluator::new(current.set.clone(), cluster))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::set::Backend;
    use crate::policy::source::Origin;

    #[test]
    fn policies_and_cluster_swap_independently() {
        let set = PolicySet::load(Origin::Embedded, Backend::Vm).unwrap();
        let published =
            Published::new(Evaluator::new(set.clone(), Arc::new(ClusterState::default())).unwrap());
        assert_eq!(published.generation(), 1);
        let mut cluster = ClusterState::default();
        cluster.add_quota(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "gpu", "namespace": "ml"},
                "spec": {"hard": {"requests.nvidia.com/gpu": "8"}}
            }))
            .unwrap(),
        );
        let cluster = Arc::new(cluster);
        published.swap_cluster(cluster.clone()).unwrap();
        assert_eq!(
            published.generation(),
            1,
            "a cluster swap is not a new policy generation"
        );
        assert_eq!(published.swap_policies(set.clone()).unwrap(), 2);
        let current = published.load_full();
        assert!(
            Arc::ptr_eq(&current.cluster, &cluster),
            "the policy swap kept the cluster"
        );
        assert!(Arc::ptr_eq(&current.set, &set));
        let failed = published.update(|_| Err(PolicyError::Empty("test".into())));
        assert!(failed.is_err());
        assert!(
            Arc::ptr_eq(&published.load_full(), &current),
            "a failed update serves the last good evaluator"
        );
    }
}
