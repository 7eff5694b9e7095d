//! The storage interface, shaped for asynchronous block reads into caller-provided DMA
//! buffers with polled completions, and its backends.
//!
//! A read moves a [`DmaBuf`] into the backend and the completion moves it back, so a buffer
//! the device may still write is never visible to the caller. Offsets and lengths are multiples
//! of [`Storage::block_size`].
pub mod bench;
pub mod dma;
pub mod drives;
pub mod file;
mod mapping;
pub mod nvme;
mod uring;

pub use dma::{DeviceHolds, DmaBuf, DmaPool, RegionLease};
pub use drives::{Backend, Drives, Unavailable};
pub use file::{FileIo, FileStorage};

/// Why a read did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("read of {len} bytes at {offset} is not aligned to the {block} byte block size")]
    Unaligned { offset: u64, len: usize, block: usize },
    #[error("read of {len} bytes at {offset} is past the end of the medium ({capacity} bytes)")]
    OutOfRange { offset: u64, len: usize, capacity: u64 },
    #[error("submission queue full")]
    QueueFull,
    #[error("device error: {0}")]
    Device(String),
    #[error("read timed out")]
    Timeout,
    #[error("short read: {got} of {want} bytes")]
    Short { got: usize, want: usize },
}

/// A finished read: the tag it was submitted with, and the buffer back.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub buf: DmaBuf,
    pub result: Result<(), StorageError>,
}

/// Monotonic counters of one backend queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageCounters {
    pub reads: u64,
    pub read_bytes: u64,
    /// Reads that failed or were refused (timeouts included).
    pub errors: u64,
    /// Reads that ended because the device did not answer in time.
    pub timeouts: u64,
    /// Controller resets this queue performed (an NVMe controller that stopped answering).
    pub resets: u64,
    /// Of `reads`, those taken from a mapping of the medium ([`Storage::mapped`]).
    pub mapped_reads: u64,
}

impl std::ops::AddAssign for StorageCounters {
    fn add_assign(&mut self, o: Self) {
        self.reads += o.reads;
        self.read_bytes += o.read_bytes;
        self.errors += o.errors;
        self.timeouts += o.timeouts;
        self.resets += o.resets;
        self.mapped_reads += o.mapped_reads;
    }
}

/// One storage queue as the per-core loop drives it.
pub trait Storage {
    /// "file" or "nvme-vfio": reported as `storage.backend`.
    fn backend(&self) -> &'static str;
    /// Size in bytes of the addressable medium.
    fn capacity(&self) -> u64;
    /// Read granularity and alignment in bytes (4096 for volumes).
    fn block_size(&self) -> usize;
    /// A pool of `count` buffers of `buf_size` bytes each that this backend can read into
    /// (aligned for O_DIRECT, or mapped for device DMA). Called at start-up only.
    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError>;
    /// Start reading `len` bytes at byte `offset` into the front of `buf`. On error the buffer
    /// comes back with the reason and nothing is queued.
    fn submit_read(
        &mut self,
        tag: u64,
        offset: u64,
        len: usize,
        buf: DmaBuf,
    ) -> Result<(), (StorageError, DmaBuf)>;
    /// The medium's bytes `offset..offset + len` when they lie in memory this core may read
    /// where they are (a volume file on tmpfs, mapped): the caller then takes them in the pass
    /// it makes over them anyway (sealing TLS records out of place into its buffer) instead
    /// of having them copied into a buffer first. Counted as a read. `None`: read them with
    /// [`Storage::submit_read`] (a device, a range outside the medium, unaligned, or a
    /// mapping given up). The slice must be used before this queue is used again.
    fn mapped(&mut self, _offset: u64, _len: usize) -> Option<&[u8]> {
        None
    }
    /// Whether reads at `offset` come from a mapping ([`Storage::mapped`]) as things stand:
    /// nothing to wait for, so nothing to read ahead.
    fn maps(&self, _offset: u64) -> bool {
        false
    }
    /// Move finished reads to `out` (capacity reserved by the caller). Returns how many.
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize;
    /// Reads submitted and not yet completed.
    fn in_flight(&self) -> usize;
    fn counters(&self) -> StorageCounters;
    /// Nanoseconds the core itself spent doing what the device does on hardware (the file
    /// backend's `pread`, when timed for a benchmark); 0 for a real device.
    fn device_ns(&self) -> u64 {
        0
    }
    /// Whether reads land by device DMA, so that the buffers must come from this backend's
    /// own [`Storage::dma_pool`] (mapped for the device); false when the core copies the bytes
    /// (any aligned memory will do). [`Drives`] takes its pool from such a drive.
    fn needs_own_pool(&self) -> bool {
        false
    }
    /// Drives behind this queue: 1 for a backend, several for [`Drives`].
    fn drives(&self) -> usize {
        1
    }
    /// Counters of drive `drive` (0..[`Storage::drives`]).
    fn drive_counters(&self, drive: usize) -> StorageCounters {
        if drive == 0 {
            self.counters()
        } else {
            StorageCounters::default()
        }
    }
    /// Backend of drive `drive`, as [`Storage::backend`].
    fn drive_backend(&self, _drive: usize) -> &'static str {
        self.backend()
    }
}

/// Poll `s` until `n` reads finished or `limit` passed; what finished (tests).
#[cfg(test)]
pub(crate) fn poll_for<S: Storage>(s: &mut S, n: usize, limit: std::time::Duration) -> Vec<Completion> {
    let mut out = Vec::with_capacity(64);
    let start = std::time::Instant::now();
    while out.len() < n && start.elapsed() < limit {
        if s.poll(&mut out) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    out
}
