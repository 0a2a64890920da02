//! Bounds on one policy evaluation, shared by the compiler (its engine), the load-time probe
//! and the evaluators.

use std::time::Duration;

/// Wall-clock budget of one rule evaluation. Policies take microseconds; this only stops a
/// runaway policy from using up the API server's webhook timeout (5 s in the manifests), so
/// that the request gets a clear denial instead of the API server's failure policy.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(500);

/// Instruction budget per rule evaluation on the VM: far above what a sane policy needs on a
/// large pod, low enough that a runaway policy fails fast instead of hanging a webhook call.
pub const MAX_INSTRUCTIONS: usize = 5_000_000;

/// Sets the process memory past which evaluations fail with an error: regorus checks it while
/// it builds collections and runs rules, so a policy that would grow without bound (at load,
/// on the probe's sample reviews, or on a review) fails instead of the process being killed.
/// The allocator that counts it is regorus's (see `crate::alloc`).
pub fn set_process_memory_limit(bytes: Option<u64>) {
    regorus::set_global_memory_limit(bytes);
}

pub(crate) fn eval_time_limit() -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: std::num::NonZeroU32::new(256).expect("non-zero"),
    }
}
