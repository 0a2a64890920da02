//! The process's global allocator: mimalloc, counting heap allocations made on the current
//! thread while `mlguard bench` measures (the check costs one relaxed load per allocation
//! otherwise). The binary installs it (`src/main.rs`); the library only reads the counts.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// mlguard's global allocator.
/// mimalloc rather than the system allocator because a review is thousands of small, short-lived
/// allocations (regorus values): malloc and free were a fifth of a review's CPU time.
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static ALLOCATED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        mimalloc::MiMalloc.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        mimalloc::MiMalloc.realloc(ptr, layout, new_size)
    }
}

#[inline]
fn count(bytes: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let _ = ALLOCATED.try_with(|c| {
            let (b, n) = c.get();
            c.set((b + bytes as u64, n + 1));
        });
    }
}

/// Bytes and allocations made so far on this thread, while counting was on. Always zero when
/// the running binary has not installed [`CountingAlloc`].
pub fn allocated() -> (u64, u64) {
    ALLOCATED.try_with(Cell::get).unwrap_or((0, 0))
}

/// Turns counting on or off, for every thread.
pub fn counting(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}
