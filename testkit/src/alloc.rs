//! One counting global allocator for the allocation tests and benches.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: tether_testkit::alloc::Counting = tether_testkit::alloc::Counting::SYSTEM;
//! ```
//!
//! It forwards every call unchanged to the wrapped allocator and counts
//! allocations (alloc, alloc_zeroed, realloc; not dealloc) in two ways,
//! each off until switched on, so an idle counter costs one relaxed load:
//! - per process ([`count_process`], [`process_allocs`]): for a whole
//!   program, e.g. a proxy under load;
//! - per thread ([`count_threads`], [`thread_allocs`]): a `const`
//!   thread-local, so the counter never allocates and the tests of one
//!   binary may run in parallel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static PROCESS_ON: AtomicBool = AtomicBool::new(false);
static THREADS_ON: AtomicBool = AtomicBool::new(false);
static PROCESS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

/// Counts allocations, then hands them to `A`.
pub struct Counting<A = System>(pub A);

impl Counting<System> {
    /// Over the system allocator.
    pub const SYSTEM: Counting<System> = Counting(System);
}

/// Switches the process-wide count on or off.
pub fn count_process(on: bool) {
    PROCESS_ON.store(on, Ordering::SeqCst);
}

/// Switches the per-thread counts on or off.
pub fn count_threads(on: bool) {
    THREADS_ON.store(on, Ordering::SeqCst);
}

/// Allocations counted in this process while [`count_process`] was on.
pub fn process_allocs() -> u64 {
    PROCESS.load(Ordering::Relaxed)
}

/// Allocations counted on this thread while [`count_threads`] was on.
pub fn thread_allocs() -> u64 {
    THREAD.with(Cell::get)
}

#[inline]
fn count() {
    if PROCESS_ON.load(Ordering::Relaxed) {
        PROCESS.fetch_add(1, Ordering::Relaxed);
    }
    if THREADS_ON.load(Ordering::Relaxed) {
        // `try_with`: nothing to count once the thread's locals are gone.
        let _ = THREAD.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call goes unchanged to the wrapped allocator; the counters
// have no effect on the memory handed out and never allocate.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// Starts a thread that writes [`process_allocs`] to `path` every 5 ms
/// without allocating (a fixed buffer written in place), and switches the
/// process count on: how a child process tells a bench its count.
pub fn publish_process_count(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).expect("alloc count file");
    count_process(true);
    std::thread::spawn(move || loop {
        let mut buf = [b' '; 24];
        let mut n = process_allocs();
        let mut i = 20;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        buf[23] = b'\n';
        if file.write_at(&buf, 0).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    });
}

/// The count a [`publish_process_count`] thread last wrote to `path`.
pub fn read_published_count(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
