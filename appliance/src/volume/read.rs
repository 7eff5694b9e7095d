//! Reading byte ranges of a volume through any [`Storage`] backend, outside the fast path
//! (loading the index, verifying checksums): a window of block reads kept in flight, delivered
//! in order, with a bounded wait for each completion.
use std::time::{Duration, Instant};

use drivers::storage::{Completion, DmaBuf, DmaPool, Storage, StorageError};

use super::VolumeError;

/// Bytes per read.
const CHUNK_LEN: usize = 128 * 1024;
/// Reads in flight at most.
const WINDOW: usize = 8;

pub(crate) struct BlockReader<'s> {
    storage: &'s mut dyn Storage,
    pool: DmaPool,
    timeout: Duration,
    /// Tags are never reused, so a completion of an abandoned read is recognised and dropped.
    next_tag: u64,
    completions: Vec<Completion>,
}

impl<'s> BlockReader<'s> {
    pub(crate) fn new(storage: &'s mut dyn Storage, timeout: Duration) -> Result<BlockReader<'s>, VolumeError> {
        let block = storage.block_size();
        if block == 0 || !block.is_power_of_two() || !(super::format::BLOCK_SIZE as usize).is_multiple_of(block) {
            return Err(VolumeError::UnsupportedBlockSize { block });
        }
        let pool = storage.dma_pool(CHUNK_LEN, WINDOW).map_err(|source| VolumeError::Storage { offset: 0, source })?;
        if pool.buf_size() == 0 || !pool.buf_size().is_multiple_of(block) || pool.count() == 0 {
            return Err(VolumeError::Storage {
                offset: 0,
                source: StorageError::Device(format!(
                    "backend gave a pool of {} buffers of {} bytes",
                    pool.count(),
                    pool.buf_size()
                )),
            });
        }
        Ok(BlockReader { storage, pool, timeout, next_tag: 0, completions: Vec::with_capacity(WINDOW * 2) })
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.storage.capacity()
    }

    /// Reads `len` bytes at `offset` (block-aligned) and hands them to `sink` in order, in
    /// pieces. The last block is read whole and cut to `len`.
    pub(crate) fn read(
        &mut self,
        offset: u64,
        len: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), VolumeError>,
    ) -> Result<(), VolumeError> {
        let block = self.storage.block_size() as u64;
        let chunk = self.pool.buf_size() as u64;
        let padded = len.checked_next_multiple_of(block).filter(|p| offset.checked_add(*p).is_some()).ok_or(
            VolumeError::Storage {
                offset,
                source: StorageError::OutOfRange { offset, len: 0, capacity: self.storage.capacity() },
            },
        )?;
        let chunks = padded.div_ceil(chunk);
        let window = (self.pool.count() as u64).min(chunks).max(1);
        let base_tag = self.next_tag;
        self.next_tag += chunks;
        // Finished reads waiting for their turn, by chunk number modulo the window.
        let mut ready: Vec<Option<DmaBuf>> = (0..window).map(|_| None).collect();
        let (mut submitted, mut delivered) = (0u64, 0u64);
        let mut deadline = Instant::now() + self.timeout;
        while delivered < chunks {
            // Keep the window full.
            while submitted < chunks && submitted - delivered < window {
                let Some(buf) = self.pool.alloc() else { break };
                let at = offset + submitted * chunk;
                let n = chunk.min(padded - submitted * chunk) as usize;
                match self.storage.submit_read(base_tag + submitted, at, n, buf) {
                    Ok(()) => submitted += 1,
                    Err((StorageError::QueueFull, _)) => break,
                    Err((source, _)) => return Err(VolumeError::Storage { offset: at, source }),
                }
            }
            // Deliver the next chunk if it is here.
            if let Some(buf) = ready[(delivered % window) as usize].take() {
                let start = delivered * chunk;
                let n = chunk.min(len - start) as usize;
                sink(&buf.as_slice()[..n])?;
                delivered += 1;
                continue;
            }
            self.completions.clear();
            if self.storage.poll(&mut self.completions) == 0 {
                if Instant::now() >= deadline {
                    return Err(VolumeError::Timeout { offset: offset + delivered * chunk, waited: self.timeout });
                }
                std::thread::yield_now();
                continue;
            }
            deadline = Instant::now() + self.timeout;
            for c in self.completions.drain(..) {
                if c.tag < base_tag + delivered || c.tag >= base_tag + submitted {
                    // An abandoned read of an earlier call: its buffer just goes back.
                    continue;
                }
                let i = c.tag - base_tag;
                if let Err(source) = c.result {
                    return Err(VolumeError::Storage { offset: offset + i * chunk, source });
                }
                ready[(i % window) as usize] = Some(c.buf);
            }
        }
        Ok(())
    }
}
