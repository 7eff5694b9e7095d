//! Several drives behind one [`Storage`]: a core's queue on each drive, and reads routed to
//! them by the drive number carried in the top bits of the offset.
//!
//! An address is `drive << DRIVE_SHIFT | offset` ([`address`], [`split`]): the byte at
//! `offset` of drive `drive`. Drive 0's addresses are its plain offsets, so a single drive is
//! addressed exactly as without [`Drives`]. Routing is a shift and an index, no allocation:
//! the fast path submits and polls as it did with one backend, and a completion comes back
//! with its tag whichever drive served it.
//!
//! Failure isolation: each drive is its own queue with its own counters, and nothing here
//! waits for one drive on behalf of another. A read that fails or times out on one drive
//! completes with that error, on that drive only; an NVMe controller that stops answering is
//! reset by its own queue ([`super::nvme`]) while the other drives go on serving.
//!
//! Buffers: every drive reads into the one pool the caller gets from [`Drives::dma_pool`]. It
//! is made by the first drive that [`Storage::needs_own_pool`] (an NVMe drive: its DMA
//! memory), else by drive 0. A file drive reads into any memory; NVMe drives reading from the
//! same pool must share one IOMMU address space ([`super::nvme::vfio::Container`]), which
//! `appliance serve` sees to by opening them all in one container.
use super::file::FileStorage;
use super::nvme::NvmeStorage;
use super::{Completion, DmaBuf, DmaPool, Storage, StorageCounters, StorageError};

/// The drive number sits above this bit of an address.
pub const DRIVE_SHIFT: u32 = 56;
/// Most drives one [`Drives`] routes to (the drive number takes the top 8 bits).
pub const MAX_DRIVES: usize = 1 << (64 - DRIVE_SHIFT);
/// Largest capacity of one drive: offsets below this fit under the drive number.
pub const MAX_DRIVE_CAPACITY: u64 = 1 << DRIVE_SHIFT;
const OFFSET_MASK: u64 = MAX_DRIVE_CAPACITY - 1;

/// The address of byte `offset` of drive `drive` (`drive` < [`MAX_DRIVES`], `offset` <
/// [`MAX_DRIVE_CAPACITY`]; other bits are cut off).
pub const fn address(drive: usize, offset: u64) -> u64 {
    ((drive as u64) << DRIVE_SHIFT) | (offset & OFFSET_MASK)
}

/// The drive and offset an address names.
pub const fn split(address: u64) -> (usize, u64) {
    ((address >> DRIVE_SHIFT) as usize, address & OFFSET_MASK)
}

/// Why a set of drives cannot be routed to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrivesError {
    #[error("no drives")]
    Empty,
    #[error("{0} drives: at most {MAX_DRIVES}")]
    TooMany(usize),
    #[error("drive {drive} holds {capacity} bytes: at most {MAX_DRIVE_CAPACITY} per drive")]
    TooLarge { drive: usize, capacity: u64 },
}

/// [`Storage::backend`] of [`Unavailable`].
pub const UNAVAILABLE: &str = "unavailable";

/// One core's queues on several drives, as one [`Storage`] addressed by [`address`].
#[derive(Debug)]
pub struct Drives<S> {
    drives: Vec<S>,
}

impl<S: Storage> Drives<S> {
    /// Routes to `drives`, drive `i` being `drives[i]`.
    pub fn new(drives: Vec<S>) -> Result<Self, DrivesError> {
        if drives.is_empty() {
            return Err(DrivesError::Empty);
        }
        if drives.len() > MAX_DRIVES {
            return Err(DrivesError::TooMany(drives.len()));
        }
        if let Some((drive, d)) = drives.iter().enumerate().find(|(_, d)| d.capacity() > MAX_DRIVE_CAPACITY) {
            return Err(DrivesError::TooLarge { drive, capacity: d.capacity() });
        }
        Ok(Drives { drives })
    }

    /// Puts `drive` in place of drive `index` (an [`Unavailable`] one for a drive that
    /// failed at start) and returns the one it replaces.
    pub fn replace(&mut self, index: usize, drive: S) -> Option<S> {
        self.drives.get_mut(index).map(|d| std::mem::replace(d, drive))
    }

    pub fn len(&self) -> usize {
        self.drives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.drives.is_empty()
    }

    pub fn drive(&self, drive: usize) -> Option<&S> {
        self.drives.get(drive)
    }

    pub fn drive_mut(&mut self, drive: usize) -> Option<&mut S> {
        self.drives.get_mut(drive)
    }

    pub fn into_inner(self) -> Vec<S> {
        self.drives
    }

    /// The drive whose pool every drive reads into.
    fn pool_drive(&self) -> usize {
        self.drives.iter().position(Storage::needs_own_pool).unwrap_or(0)
    }
}

impl<S: Storage> Storage for Drives<S> {
    /// The drives' common backend ("mixed" for several kinds), drives that are
    /// [`UNAVAILABLE`] aside (unless all are).
    fn backend(&self) -> &'static str {
        let mut kinds = self.drives.iter().map(Storage::backend).filter(|b| *b != UNAVAILABLE);
        match kinds.next() {
            None => UNAVAILABLE,
            Some(first) if kinds.all(|b| b == first) => first,
            Some(_) => "mixed",
        }
    }

    /// The end of the addresses in use: the last drive's capacity above its drive number
    /// (a single drive's own capacity).
    fn capacity(&self) -> u64 {
        let last = self.drives.len() - 1;
        address(last, 0) + self.drives[last].capacity()
    }

    fn block_size(&self) -> usize {
        self.drives.iter().map(Storage::block_size).max().unwrap_or(4096)
    }

    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        let drive = self.pool_drive();
        self.drives[drive].dma_pool(buf_size, count)
    }

    fn submit_read(&mut self, tag: u64, offset: u64, len: usize, buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        let (drive, local) = split(offset);
        let capacity = self.capacity();
        match self.drives.get_mut(drive) {
            Some(d) => d.submit_read(tag, local, len, buf),
            None => Err((StorageError::OutOfRange { offset, len, capacity }, buf)),
        }
    }

    fn mapped(&mut self, offset: u64, len: usize) -> Option<&[u8]> {
        let (drive, local) = split(offset);
        self.drives.get_mut(drive)?.mapped(local, len)
    }

    fn maps(&self, offset: u64) -> bool {
        let (drive, local) = split(offset);
        self.drives.get(drive).is_some_and(|d| d.maps(local))
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        // Every drive, every time: a drive with nothing in flight may still hand back reads
        // a controller reset ended.
        self.drives.iter_mut().map(|d| d.poll(out)).sum()
    }

    fn in_flight(&self) -> usize {
        self.drives.iter().map(Storage::in_flight).sum()
    }

    fn counters(&self) -> StorageCounters {
        let mut total = StorageCounters::default();
        for d in &self.drives {
            total += d.counters();
        }
        total
    }

    fn device_ns(&self) -> u64 {
        self.drives.iter().map(Storage::device_ns).sum()
    }

    fn needs_own_pool(&self) -> bool {
        self.drives.iter().any(Storage::needs_own_pool)
    }

    fn drives(&self) -> usize {
        self.drives.len()
    }

    fn drive_counters(&self, drive: usize) -> StorageCounters {
        self.drives.get(drive).map(Storage::counters).unwrap_or_default()
    }

    fn drive_backend(&self, drive: usize) -> &'static str {
        self.drives.get(drive).map_or("none", Storage::backend)
    }
}

/// A drive that could not be opened or whose volume could not be loaded at start: it keeps
/// its drive number (the other drives' addresses do not move) and refuses every read with
/// the reason. Nothing is looked up on it, so no read should come.
#[derive(Debug)]
pub struct Unavailable {
    reason: String,
    counters: StorageCounters,
}

impl Unavailable {
    pub fn new(reason: impl Into<String>) -> Unavailable {
        Unavailable { reason: reason.into(), counters: StorageCounters::default() }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Storage for Unavailable {
    fn backend(&self) -> &'static str {
        UNAVAILABLE
    }

    fn capacity(&self) -> u64 {
        0
    }

    fn block_size(&self) -> usize {
        4096
    }

    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        if buf_size == 0 || count == 0 || count > u32::MAX as usize {
            return Err(StorageError::Device(format!("invalid pool of {count} buffers of {buf_size} bytes")));
        }
        Ok(DmaPool::heap(buf_size, count, 4096))
    }

    fn submit_read(&mut self, _tag: u64, _offset: u64, _len: usize, buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        self.counters.errors += 1;
        Err((StorageError::Device(format!("drive unavailable: {}", self.reason)), buf))
    }

    fn poll(&mut self, _out: &mut Vec<Completion>) -> usize {
        0
    }

    fn in_flight(&self) -> usize {
        0
    }

    fn counters(&self) -> StorageCounters {
        self.counters
    }
}

/// One drive's queue, whichever backend drives it: what `appliance serve` puts in [`Drives`]
/// so that file and NVMe drives mix.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per drive and core, built once and never moved after
pub enum Backend {
    File(FileStorage),
    Nvme(NvmeStorage),
    Unavailable(Unavailable),
}

macro_rules! each {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            Backend::File($d) => $e,
            Backend::Nvme($d) => $e,
            Backend::Unavailable($d) => $e,
        }
    };
}

impl Storage for Backend {
    fn backend(&self) -> &'static str {
        each!(self, d => d.backend())
    }

    fn capacity(&self) -> u64 {
        each!(self, d => d.capacity())
    }

    fn block_size(&self) -> usize {
        each!(self, d => d.block_size())
    }

    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        each!(self, d => d.dma_pool(buf_size, count))
    }

    fn submit_read(&mut self, tag: u64, offset: u64, len: usize, buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        each!(self, d => d.submit_read(tag, offset, len, buf))
    }

    fn mapped(&mut self, offset: u64, len: usize) -> Option<&[u8]> {
        each!(self, d => d.mapped(offset, len))
    }

    fn maps(&self, offset: u64) -> bool {
        each!(self, d => d.maps(offset))
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        each!(self, d => d.poll(out))
    }

    fn in_flight(&self) -> usize {
        each!(self, d => d.in_flight())
    }

    fn counters(&self) -> StorageCounters {
        each!(self, d => d.counters())
    }

    fn device_ns(&self) -> u64 {
        each!(self, d => d.device_ns())
    }

    fn needs_own_pool(&self) -> bool {
        each!(self, d => d.needs_own_pool())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::storage::nvme::model::{pattern, FakeDma, Model, ModelConfig};
    use crate::storage::nvme::{NvmeConfig, NvmeController};

    #[test]
    fn addresses_carry_the_drive_in_their_top_bits() {
        assert_eq!(address(0, 4096), 4096, "drive 0 is addressed by its plain offsets");
        assert_eq!(split(4096), (0, 4096));
        assert_eq!(address(1, 0), 1 << 56);
        assert_eq!(split(address(3, 123 * 4096)), (3, 123 * 4096));
        assert_eq!(split(address(MAX_DRIVES - 1, MAX_DRIVE_CAPACITY - 1)), (255, MAX_DRIVE_CAPACITY - 1));
        assert_eq!(split(u64::MAX), (255, MAX_DRIVE_CAPACITY - 1));
        // An offset too large for its field does not spill into the drive number.
        assert_eq!(split(address(2, MAX_DRIVE_CAPACITY + 8192)), (2, 8192));
    }

    /// A file of `blocks` 4 KiB blocks, each filled with `fill` + its block number.
    fn drive_file(fill: u8, blocks: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for b in 0..blocks {
            f.write_all(&[fill.wrapping_add(b as u8); 4096]).unwrap();
        }
        f.flush().unwrap();
        f
    }

    use crate::storage::poll_for;

    #[test]
    fn mapped_ranges_are_routed_by_drive() {
        let (_da, a) = crate::storage::file::tests::shm_file(&[0x10; 2 * 4096]);
        let (_db, b) = crate::storage::file::tests::shm_file(&[0x80; 4096]);
        let files = vec![Backend::File(FileStorage::open(&a).unwrap()), Backend::File(FileStorage::open(&b).unwrap())];
        let mut d = Drives::new(files).unwrap();
        assert_eq!(d.mapped(address(1, 0), 4096), Some(&[0x80; 4096][..]));
        assert_eq!(d.mapped(address(0, 4096), 4096), Some(&[0x10; 4096][..]));
        // Past one drive's end (not into the next), and a drive that does not exist.
        assert_eq!(d.mapped(address(1, 4096), 4096), None);
        assert_eq!(d.mapped(address(2, 0), 4096), None);
        assert_eq!((d.drive_counters(0).mapped_reads, d.drive_counters(1).mapped_reads, d.counters().mapped_reads), (1, 1, 2));
    }

    #[test]
    fn reads_are_routed_by_drive_and_counted_per_drive() {
        let (a, b) = (drive_file(0x10, 4), drive_file(0x80, 2));
        let files = vec![FileStorage::open(a.path()).unwrap(), FileStorage::open(b.path()).unwrap()];
        let mut d = Drives::new(files).unwrap();
        assert_eq!((d.drives(), d.backend(), d.block_size()), (2, "file", 4096));
        assert_eq!(d.capacity(), address(1, 2 * 4096));
        let pool = d.dma_pool(4096, 8).unwrap();
        // Interleaved: drive 1 block 1, drive 0 block 3, drive 1 block 0.
        for (tag, addr) in [(1u64, address(1, 4096)), (2, address(0, 3 * 4096)), (3, address(1, 0))] {
            d.submit_read(tag, addr, 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        }
        assert_eq!(d.in_flight(), 3);
        let out = poll_for(&mut d, 3, Duration::from_secs(10));
        assert_eq!(out.len(), 3);
        assert_eq!(d.in_flight(), 0);
        let first_byte = |tag: u64| out.iter().find(|c| c.tag == tag).map(|c| c.buf.as_slice()[0]).unwrap();
        assert_eq!((first_byte(1), first_byte(2), first_byte(3)), (0x81, 0x13, 0x80));
        assert!(out.iter().all(|c| c.result.is_ok() && c.buf.as_slice()[..4096].iter().all(|&x| x == c.buf.as_slice()[0])));
        drop(out);
        assert_eq!((d.drive_counters(0).reads, d.drive_counters(1).reads), (1, 2));
        assert_eq!(d.counters().reads, 3);
        assert_eq!(d.counters().read_bytes, 3 * 4096);
        assert_eq!(d.drive_backend(1), "file");
        // A drive that does not exist, and a range past one drive's end (not into the next).
        let (e, _) = d.submit_read(9, address(2, 0), 4096, pool.alloc().unwrap()).unwrap_err();
        assert!(matches!(e, StorageError::OutOfRange { .. }), "{e:?}");
        let (e, _) = d.submit_read(9, address(0, 4 * 4096), 4096, pool.alloc().unwrap()).unwrap_err();
        assert!(matches!(e, StorageError::OutOfRange { .. }), "{e:?}");
        assert_eq!((d.drive_counters(0).errors, d.drive_counters(1).errors), (1, 0));
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn an_unavailable_drive_refuses_reads_and_keeps_the_others_numbers() {
        let a = drive_file(0x20, 2);
        let mut d = Drives::new(vec![Backend::Unavailable(Unavailable::new("no such file")), Backend::File(FileStorage::open(a.path()).unwrap())])
            .unwrap();
        assert_eq!((d.backend(), d.drive_backend(0), d.drive_backend(1)), ("file", UNAVAILABLE, "file"));
        let pool = d.dma_pool(4096, 2).unwrap();
        let (e, _) = d.submit_read(1, address(0, 0), 4096, pool.alloc().unwrap()).unwrap_err();
        assert!(matches!(e, StorageError::Device(ref r) if r.contains("no such file")), "{e:?}");
        d.submit_read(2, address(1, 4096), 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        let done = poll_for(&mut d, 1, Duration::from_secs(1));
        assert_eq!((done[0].tag, done[0].buf.as_slice()[0]), (2, 0x21));
        assert_eq!((d.drive_counters(0).errors, d.drive_counters(1).reads), (1, 1));
        drop(done);
        let old = d.replace(1, Backend::Unavailable(Unavailable::new("gone"))).unwrap();
        assert_eq!(old.backend(), "file");
        assert_eq!(d.backend(), UNAVAILABLE);
        assert!(d.replace(2, Backend::Unavailable(Unavailable::new("x"))).is_none());
    }

    #[test]
    fn one_drive_is_addressed_as_without_drives() {
        let a = drive_file(1, 3);
        let mut d = Drives::new(vec![FileStorage::open(a.path()).unwrap()]).unwrap();
        assert_eq!(d.capacity(), 3 * 4096);
        assert_eq!(d.drive_counters(1), StorageCounters::default());
        let pool = d.dma_pool(4096, 1).unwrap();
        d.submit_read(7, 2 * 4096, 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        let done = poll_for(&mut d, 1, Duration::from_secs(1));
        assert_eq!((done[0].tag, done[0].buf.as_slice()[0]), (7, 3));
        assert!(matches!(Drives::<FileStorage>::new(Vec::new()), Err(DrivesError::Empty)));
    }

    fn nvme_config() -> NvmeConfig {
        NvmeConfig { queue_depth: 8, command_timeout: Duration::from_millis(60), ..NvmeConfig::default() }
    }

    /// An NVMe drive on `dma` (shared by drives that read into one pool, as one vfio
    /// container is), and its model.
    fn nvme_drive(dma: &FakeDma) -> (Arc<Model>, NvmeStorage) {
        let model = Model::new(dma.clone(), ModelConfig::default());
        let ctrl = NvmeController::new(model.clone(), Arc::new(dma.clone()), &nvme_config(), "model").unwrap();
        (model, ctrl.into_queues().unwrap().remove(0).into_storage())
    }

    fn check_pattern(c: &Completion, offset: u64) {
        assert_eq!(c.result, Ok(()), "tag {}", c.tag);
        for (i, b) in c.buf.as_slice()[..4096].iter().enumerate() {
            assert_eq!(*b, pattern(offset + i as u64), "byte {i} of tag {}", c.tag);
        }
    }

    #[test]
    fn file_and_nvme_drives_share_the_nvme_pool() {
        let dma = FakeDma::new();
        let (_model, nvme) = nvme_drive(&dma);
        let a = drive_file(0x40, 2);
        let mut d = Drives::new(vec![Backend::File(FileStorage::open(a.path()).unwrap()), Backend::Nvme(nvme)]).unwrap();
        assert_eq!(d.backend(), "mixed");
        assert_eq!((d.drive_backend(0), d.drive_backend(1)), ("file", "nvme-vfio"));
        assert!(d.needs_own_pool());
        // The pool is the NVMe drive's (device memory): the model reaches buffers only by
        // IOVA, so a heap pool would fail its reads.
        let pool = d.dma_pool(4096, 4).unwrap();
        d.submit_read(1, address(1, 8192), 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        d.submit_read(2, address(0, 4096), 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        let done = poll_for(&mut d, 2, Duration::from_secs(2));
        assert_eq!(done.len(), 2);
        let by_tag = |t: u64| done.iter().find(|c| c.tag == t).unwrap();
        check_pattern(by_tag(1), 8192);
        assert_eq!(by_tag(2).result, Ok(()));
        assert!(by_tag(2).buf.as_slice()[..4096].iter().all(|&b| b == 0x41));
    }

    /// Drive 1's controller stops answering: its reads time out and it is reset, while drive
    /// 0 keeps completing reads, byte-exact, the whole time; afterwards drive 1 serves again.
    #[test]
    fn a_silent_drive_is_reset_while_the_other_serves() {
        let dma = FakeDma::new();
        let (_m0, q0) = nvme_drive(&dma);
        let (m1, q1) = nvme_drive(&dma);
        let mut d = Drives::new(vec![q0, q1]).unwrap();
        let pool = d.dma_pool(4096, 16).unwrap();
        m1.hang();
        d.submit_read(100, address(1, 0), 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        d.submit_read(101, address(1, 4096), 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        // While drive 1 is silent, drive 0 serves read after read.
        let start = Instant::now();
        let (mut served, mut ended) = (0u64, Vec::new());
        let mut out = Vec::with_capacity(16);
        while ended.len() < 2 && start.elapsed() < Duration::from_secs(5) {
            let offset = (served % 64) * 4096;
            d.submit_read(served, address(0, offset), 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
            out.clear();
            let until = Instant::now() + Duration::from_secs(1);
            while !out.iter().any(|c: &Completion| c.tag == served) && Instant::now() < until {
                d.poll(&mut out);
            }
            for c in out.drain(..) {
                if c.tag >= 100 {
                    ended.push((c.tag, c.result));
                } else {
                    check_pattern(&c, offset);
                    served += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        ended.sort_by_key(|(tag, _)| *tag);
        assert_eq!(ended.len(), 2, "drive 1's reads ended: {ended:?}");
        assert!(ended.iter().all(|(_, r)| r == &Err(StorageError::Timeout)), "{ended:?}");
        assert!(served >= 10, "drive 0 served {served} reads meanwhile");
        let (c0, c1) = (d.drive_counters(0), d.drive_counters(1));
        assert_eq!((c0.reads, c0.errors, c0.timeouts, c0.resets), (served, 0, 0, 0));
        assert_eq!((c1.reads, c1.errors, c1.timeouts, c1.resets), (0, 2, 2, 1));
        assert_eq!(d.counters().resets, 1);
        assert_eq!(pool.available(), 16, "every buffer back");
        // Reset and answering again.
        d.submit_read(200, address(1, 3 * 4096), 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        let done = poll_for(&mut d, 1, Duration::from_secs(1));
        check_pattern(&done[0], 3 * 4096);
        assert_eq!(m1.stats().disables, 1);
    }
}
