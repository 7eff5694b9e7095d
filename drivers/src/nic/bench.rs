//! Benchmarks of a NIC backend alone (no stack): transmit of fixed-size frames and receive of
//! a flood another party sends. The same loops measure TAP, AF_PACKET and DPDK ports, so their
//! figures compare side by side (`drivers/examples/nic_bench.rs`, `ci/bench-nic`).
use std::time::{Duration, Instant};

use super::{FrameBuf, Nic};

/// Frames per burst.
const BURST: usize = 64;

/// Transmit benchmark of any backend: sends `frames` frames of `frame_len` bytes (broadcast,
/// a local experimental EtherType) in bursts and returns frames per second handed to the
/// device. Frames the device refused are not counted.
pub fn bench_tx<N: Nic>(nic: &mut N, frames: u64, frame_len: usize) -> f64 {
    let mut frame = vec![0u8; frame_len.max(60)];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&nic.link().mac);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    let start = Instant::now();
    let mut sent = 0u64;
    let mut stalls = 0u32;
    // Gives up when the device takes nothing for many flushes in a row.
    while sent < frames && stalls < 1_000_000 {
        let want = (frames - sent).min(BURST as u64);
        for _ in 0..want {
            if !nic.tx_gather(&[&frame]) {
                break;
            }
        }
        match nic.tx_flush() {
            0 => stalls += 1,
            n => {
                sent += n as u64;
                stalls = 0;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if secs > 0.0 {
        sent as f64 / secs
    } else {
        0.0
    }
}

/// Receive benchmark of any backend: drains what another party floods at it, dropping each
/// frame at once, until `frames` flood frames (those `is_flood` accepts) arrived, `limit`
/// passed, or the flood paused for [`BENCH_RX_IDLE`] after its first frame. Returns the flood
/// frames received and their rate from the first to the last. Other frames (the kernel's own
/// IPv6 neighbour solicitations, say) are dropped uncounted.
pub fn bench_rx<N: Nic>(
    nic: &mut N,
    frames: u64,
    limit: Duration,
    is_flood: impl Fn(&[u8]) -> bool,
) -> (u64, f64) {
    let deadline = Instant::now() + limit;
    let mut burst = Vec::with_capacity(BURST);
    let mut received = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while received < frames {
        let now = Instant::now();
        if now >= deadline || (first.is_some() && now.duration_since(last) > BENCH_RX_IDLE) {
            break;
        }
        if nic.rx_burst(&mut burst, BURST) > 0 {
            let flood = burst.drain(..).filter(|f| is_flood(f.bytes())).count();
            if flood > 0 {
                last = Instant::now();
                first.get_or_insert(last);
                received += flood as u64;
            }
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    let pps = if secs > 0.0 {
        received as f64 / secs
    } else {
        0.0
    };
    (received, pps)
}

/// A pause in the flood this long ends [`bench_rx`].
pub const BENCH_RX_IDLE: Duration = Duration::from_millis(50);
