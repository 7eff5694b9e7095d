//! Per-thread accounting for the benchmark: payload bytes the CPU reads or writes on the send
//! path, heap allocations (counted by [`CountingAlloc`] when the binary installs it), the
//! time and allocations of TLS handshakes, kept apart from the bulk of serving, and the time
//! spent sealing body records.
//!
//! Each pipeline runs on its own thread, so plain thread-local cells suffice: no atomics on
//! the fast path, nothing shared between cores.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static TOUCHED: Cell<u64> = const { Cell::new(0) };
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
    static HANDSHAKE_NS: Cell<u64> = const { Cell::new(0) };
    static HANDSHAKE_ALLOCS: Cell<u64> = const { Cell::new(0) };
    static SEALING_NS: Cell<u64> = const { Cell::new(0) };
}

/// Set once the counting allocator has served an allocation: without it the allocation
/// figures are unknown, not zero.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Payload bytes the CPU touched on this thread, a pass at a time: a checksum pass reads each
/// byte (1 per byte), in-place sealing reads and rewrites each where it lies (1 per byte), a
/// copy reads one byte and writes another (2 per byte). Copies by devices (DMA) are not
/// counted.
pub fn add_touched(bytes: usize) {
    TOUCHED.with(|t| t.set(t.get() + bytes as u64));
}

pub fn touched() -> u64 {
    TOUCHED.with(Cell::get)
}

/// Whether the counting allocator is the global allocator of this process.
pub fn allocator_installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Runs `f` with allocations on this thread counted. Never inlined: `ci/profile-bench` tells
/// the server's samples from the in-process clients' by this frame.
#[inline(never)]
pub fn counting<R>(f: impl FnOnce() -> R) -> R {
    let was = COUNTING.with(|c| c.replace(true));
    let r = f();
    COUNTING.with(|c| c.set(was));
    r
}

/// Runs `f`, a step of a TLS handshake (rustls): inside [`counting`] its time and allocations
/// are also added to [`handshake_work`]. Outside (in `serve`) it costs nothing. Never inlined,
/// for `ci/profile-bench` as [`counting`].
#[inline(never)]
pub fn handshake<R>(f: impl FnOnce() -> R) -> R {
    if !COUNTING.with(Cell::get) {
        return f();
    }
    let (t0, allocs0) = (drivers::cycles::now(), ALLOCS.with(Cell::get));
    let r = f();
    HANDSHAKE_NS.with(|c| c.set(c.get() + drivers::cycles::ns_since(t0)));
    HANDSHAKE_ALLOCS.with(|c| c.set(c.get() + ALLOCS.with(Cell::get) - allocs0));
    r
}

/// Nanoseconds and allocations of TLS handshake steps on this thread so far (see [`handshake`]).
pub fn handshake_work() -> (u64, u64) {
    (HANDSHAKE_NS.with(Cell::get), HANDSHAKE_ALLOCS.with(Cell::get))
}

/// Runs `f`, the sealing of a chunk's body records: inside [`counting`] its time is also added
/// to [`sealing_ns`], so that the bench can tell the cipher's share of the server's time from
/// the rest (two reads of [`drivers::cycles`] a chunk of 32 records: the cheap clock, as
/// what the reads cost lands in the server's time). Outside it costs nothing.
pub fn sealing<R>(f: impl FnOnce() -> R) -> R {
    if !COUNTING.with(Cell::get) {
        return f();
    }
    let t0 = drivers::cycles::now();
    let r = f();
    SEALING_NS.with(|c| c.set(c.get() + drivers::cycles::ns_since(t0)));
    r
}

/// Nanoseconds spent sealing body records on this thread so far (see [`sealing`]).
pub fn sealing_ns() -> u64 {
    SEALING_NS.with(Cell::get)
}

/// Allocations counted on this thread so far, and the bytes they still hold (allocated minus
/// freed, both while counting).
pub fn allocations() -> (u64, i64) {
    (ALLOCS.with(Cell::get), LIVE_BYTES.with(Cell::get))
}

/// The system allocator, counting on threads inside [`counting`].
pub struct CountingAlloc;

fn note(delta: i64, new_block: bool) {
    // try_with: the allocator can run while a thread's locals are torn down.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            if new_block {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
            let _ = LIVE_BYTES.try_with(|l| l.set(l.get() + delta));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's layout unchanged; the
// bookkeeping touches only const-initialised thread-local cells, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        note(layout.size() as i64, true);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        note(layout.size() as i64, true);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64), false);
        // SAFETY: `ptr` came from this allocator (so from `System`) with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64, true);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_bytes_add_up_per_thread() {
        let before = touched();
        add_touched(10);
        add_touched(5);
        assert_eq!(touched() - before, 15);
        let other = std::thread::spawn(touched).join().unwrap();
        assert_eq!(other, 0, "another thread has its own count");
    }

    #[test]
    fn counting_scope_nests_and_restores() {
        assert!(!COUNTING.with(Cell::get));
        counting(|| {
            assert!(COUNTING.with(Cell::get));
            counting(|| ());
            assert!(COUNTING.with(Cell::get), "an inner scope does not end the outer one");
        });
        assert!(!COUNTING.with(Cell::get));
    }
}
