//! The threads that evaluate reviews: a fixed pool of its own, apart from the async workers
//! that accept connections and answer the probes, so that expensive reviews never starve
//! `/healthz` or the TLS accept loop.
//!
//! Fixed, not tokio's blocking pool: that pool grows a thread per waiting review (up to 512),
//! and each new thread brings a fresh allocator heap and a cold policy VM. Under load at 32
//! connections, that took the resident memory from 25 to 196 MiB and cost a third of the
//! throughput (scripts/loadbench.sh). A few long-lived threads keep their VMs warm.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

pub struct EvaluationPool {
    jobs: Sender<Job>,
}

/// The pool is gone (the server is shutting down), or the job panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the evaluation thread did not return a result")]
pub struct PoolError;

impl EvaluationPool {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> EvaluationPool {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mlguard-eval-{i}"))
                .spawn(move || work(&queue));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an evaluation thread");
            }
        }
        EvaluationPool { jobs }
    }

    /// The pool's default size: two threads a core, so that a review waiting on a slow one
    /// still finds a thread, with no more heaps and VMs than that.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
    }

    /// Runs `f` on a pool thread and waits for its result without blocking the caller's
    /// async worker.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (result, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = result.send(f());
            }))
            .map_err(|_| PoolError)?;
        answer.await.map_err(|_| PoolError)
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only to take the next job, never while one runs.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return; // the pool was dropped
        };
        // A job that panics drops its answer (the caller sees PoolError); the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pool_and_a_panic_costs_no_thread() {
        let pool = EvaluationPool::new(1);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("mlguard-eval-0"));
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, Err(PoolError));
        assert_eq!(pool.run(|| 2 + 2).await, Ok(4));
    }
}
