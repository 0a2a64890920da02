//! Memory accounting. The process's global allocator is regorus's build of mimalloc, which
//! regorus installs itself (its `allocator-memory-limits` feature): it keeps per-thread and
//! process-wide counts of live bytes, so that regorus can stop an evaluation that takes the
//! process past its memory limit (see `policy::limits`) instead of letting a runaway policy
//! grow until the container is OOM-killed. This module turns the allocator's transparent huge
//! pages off, and measures what a piece of code allocates, for `mlguard bench`.

/// Turns transparent huge pages off for this process, as mimalloc's `MI_NO_THP` build does:
/// with them, mimalloc's resident memory under load doubled (53 vs 26 MiB peak). Linux only; a
/// no-op elsewhere, and harmless where the kernel refuses (the system's setting then stays).
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only and touches no memory
    // of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Runs `f` and returns, with its result, the bytes it requested from the allocator on this
/// thread (gross: what it freed again is not subtracted).
pub fn allocated_while<T>(f: impl FnOnce() -> T) -> (T, u64) {
    use regorus_mimalloc::limits::{with_memory_budget_usage_scope, MemoryBudgetUsage};
    let mut usage = None;
    let out = with_memory_budget_usage_scope(Some(MemoryBudgetUsage::default()), &mut usage, f);
    (out, usage.map_or(0, MemoryBudgetUsage::requested_bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn allocations_are_measured() {
        let (v, bytes) = super::allocated_while(|| vec![0u8; 100_000]);
        assert_eq!(v.len(), 100_000);
        assert!(bytes >= 100_000, "{bytes}");
        let (_, none) = super::allocated_while(|| 1 + 1);
        assert_eq!(none, 0);
    }
}
