//! The packet path over the simulated link does not touch the heap once the link is built:
//! a counting global allocator watches a steady stream of faulty traffic both ways.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use drivers::nic::sim::{pair, SimClock, SimConfig};
use drivers::nic::{FrameBuf, Nic};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

#[test]
fn steady_state_traffic_does_not_allocate() {
    let clock = SimClock::new();
    let cfg = |seed| SimConfig {
        seed,
        loss: 0.01,
        duplicate: 0.01,
        reorder: 0.01,
        corrupt: 0.01,
        delay: Duration::from_micros(50),
        jitter: Duration::from_micros(10),
        rate_bps: Some(10_000_000_000),
        queue_frames: 256,
        ..SimConfig::default()
    };
    let (mut a, mut b) = pair(cfg(1), cfg(2), clock.clone());
    let mut rx_a = Vec::with_capacity(64);
    let mut rx_b = Vec::with_capacity(64);
    let header = [0x11u8; 54];
    let payload = vec![0x22u8; 1446];
    let mut exchange = |rounds: u32| {
        let mut received = 0;
        for _ in 0..rounds {
            for _ in 0..32 {
                a.tx_gather(&[&header, &payload]);
            }
            a.tx_flush();
            for _ in 0..8 {
                b.tx_gather(&[&header]);
            }
            b.tx_flush();
            clock.advance(Duration::from_micros(100));
            b.rx_burst(&mut rx_b, 64);
            a.rx_burst(&mut rx_a, 64);
            received += rx_b
                .iter()
                .chain(rx_a.iter())
                .filter(|f| !f.bytes().is_empty())
                .count();
            rx_a.clear();
            rx_b.clear();
        }
        received
    };
    exchange(100);
    let before = allocations();
    let received = exchange(10_000);
    let during = allocations() - before;
    assert!(received > 350_000, "traffic flowed: {received} frames");
    assert_eq!(
        during, 0,
        "{during} heap allocations while moving {received} frames"
    );
}
