//! Read throughput of any [`Storage`] backend: random, block-aligned reads kept at a fixed
//! queue depth for a fixed time. The same loop measures the NVMe driver and the file backend
//! (O_DIRECT on the kernel's block device), so their figures compare side by side.
use std::time::{Duration, Instant};

use super::{Completion, Storage, StorageError};

/// What one run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BenchResult {
    pub reads: u64,
    pub bytes: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl BenchResult {
    pub fn reads_per_s(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Keep `queue_depth` random reads of `read_size` bytes in flight for `duration`, then drain.
/// Returns (reads per second, bytes per second) of the reads that succeeded.
pub fn bench_reads(
    storage: &mut dyn Storage,
    queue_depth: usize,
    read_size: usize,
    duration: Duration,
) -> Result<(f64, f64), StorageError> {
    let r = run(storage, queue_depth, read_size, duration)?;
    Ok((r.reads_per_s(), r.bytes_per_s()))
}

/// [`bench_reads`] with the raw counts.
pub fn run(
    storage: &mut dyn Storage,
    queue_depth: usize,
    read_size: usize,
    duration: Duration,
) -> Result<BenchResult, StorageError> {
    let block = storage.block_size();
    let read_size = read_size.max(block).div_ceil(block) * block;
    let slots = storage.capacity() / read_size as u64;
    if slots == 0 {
        return Err(StorageError::OutOfRange { offset: 0, len: read_size, capacity: storage.capacity() });
    }
    let queue_depth = queue_depth.max(1);
    let pool = storage.dma_pool(read_size, queue_depth)?;
    // xorshift64: a cheap, seeded sequence of read positions.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_offset = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % slots) * read_size as u64
    };
    let mut done: Vec<Completion> = Vec::with_capacity(queue_depth);
    let mut result = BenchResult::default();
    let mut failure = None;
    let start = Instant::now();
    // Reads still in flight this long after the end mean the backend stopped answering.
    let drain_limit = duration + Duration::from_secs(30);
    let mut tag = 0u64;
    loop {
        let elapsed = start.elapsed();
        let running = elapsed < duration && failure.is_none();
        while running && storage.in_flight() < queue_depth {
            let Some(buf) = pool.alloc() else { break };
            match storage.submit_read(tag, next_offset(), read_size, buf) {
                Ok(()) => tag += 1,
                Err((StorageError::QueueFull, _)) => break,
                Err((e, _)) => {
                    // Stop submitting, but collect what is in flight before reporting.
                    failure = Some(e);
                    break;
                }
            }
        }
        if !running && storage.in_flight() == 0 {
            break;
        }
        if elapsed > drain_limit {
            return Err(StorageError::Timeout);
        }
        storage.poll(&mut done);
        for c in done.drain(..) {
            match c.result {
                Ok(()) => {
                    result.reads += 1;
                    result.bytes += read_size as u64;
                }
                Err(_) => result.errors += 1,
            }
        }
    }
    result.elapsed = start.elapsed();
    match failure {
        Some(e) => Err(e),
        None => Ok(result),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::nvme::model::{FakeDma, Model, ModelConfig};
    use crate::storage::nvme::{NvmeConfig, NvmeController};
    use std::sync::Arc;

    #[test]
    fn nvme_bench_counts_reads_at_each_depth() {
        let dma = FakeDma::new();
        let model = Model::new(dma.clone(), ModelConfig::default());
        let ctrl = NvmeController::new(model, Arc::new(dma), &NvmeConfig::default(), "model").unwrap();
        let mut q = ctrl.into_queues().unwrap().remove(0).into_storage();
        for depth in [1, 8] {
            let r = run(&mut q, depth, 4096, Duration::from_millis(30)).unwrap();
            assert!(r.reads > 0 && r.errors == 0, "{r:?}");
            assert_eq!(r.bytes, r.reads * 4096);
            assert!(r.reads_per_s() > 0.0);
            assert_eq!(q.in_flight(), 0, "drained");
        }
        let (rps, bps) = bench_reads(&mut q, 4, 8192, Duration::from_millis(20)).unwrap();
        assert!((bps / rps - 8192.0).abs() < 1e-6);
    }
}
