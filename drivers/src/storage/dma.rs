//! Fixed pools of equally sized, block-aligned buffers for device reads.
//!
//! One region is allocated (or mapped) at start-up and cut into buffers; a [`DmaBuf`] is a
//! handle to one of them and goes back to the free list when dropped. The pool is per core
//! (`Rc`, not `Arc`): no locks on the fast path.
//!
//! The buffer given back last is handed out first: it is the likeliest to be in the core's
//! caches still, so a small working set of buffers stays there however large the pool (a
//! core that seals into a buffer, and copies it to a TAP, touches lines it had already).
//! A device that reads buffers after their handles came back (a NIC sending payload from
//! them without copying, see [`RegionLease`]) adds its [`DeviceHolds`]: then the free list is
//! first in, first out (the buffer given back longest ago is the likeliest to be let go of),
//! and a buffer the device still holds stays on the free list, in its place, and is not
//! handed out until the device lets go of it.
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

/// Who owns the region and how to give it back.
pub enum Region {
    /// Allocated with the global allocator and this layout.
    Heap(std::alloc::Layout),
    /// Mapped by a driver (hugepages, IOMMU); `release` unmaps it.
    Mapped(Box<dyn FnOnce(NonNull<u8>, usize)>),
}

/// What a device that reads a pool's buffers after their handles were dropped tells the pool
/// ([`DmaPool::add_device_holds`]). Called on the pool's core only; `Send + Sync` so that a
/// device backend may share it with its own per-queue state.
pub trait DeviceHolds: Send + Sync {
    /// Whether the device may still read buffer `index` (the pool then does not hand it out:
    /// a new read into it would change bytes the device has yet to send).
    fn held(&self, index: usize) -> bool;
    /// Every free buffer is held while someone needs one: the device should let go of what
    /// it is done with soon (its queue may be idle). `delayed` is true once for each
    /// allocation that failed for it (a read that must wait), false for a re-check.
    fn wanted(&self, delayed: bool);
}

struct PoolInner {
    base: NonNull<u8>,
    buf_size: usize,
    count: usize,
    /// Device address of `base` (IOVA); equal to the virtual address for heap pools.
    iova_base: u64,
    /// Free buffers, the one given back longest ago first (handed out from the back, or
    /// from the front when a device holds buffers). Room for every buffer: pushing never
    /// allocates.
    free: RefCell<VecDeque<u32>>,
    /// The devices that may still read free buffers (usually none or one).
    holds: RefCell<Vec<Arc<dyn DeviceHolds>>>,
    /// Allocations that found free buffers, all held by the device (see [`DmaPool::held_waits`]).
    held_waits: Cell<u64>,
    region: RefCell<Option<Region>>,
    /// Shared with every [`RegionLease`]: more than one holder means a lease is alive.
    leases: Arc<()>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let len = self.buf_size * self.count;
        if Arc::strong_count(&self.leases) > 1 {
            // A device may still read these addresses (a NIC sending from them): leaking
            // the region is safe, releasing it would not be.
            log::warn!("a DMA pool of {len} bytes is dropped while leased to a device: its memory is not released");
            std::mem::forget(self.region.borrow_mut().take());
            return;
        }
        match self.region.borrow_mut().take() {
            // SAFETY: base was returned by alloc with exactly this layout and every DmaBuf
            // holds an Rc to us, so no buffer outlives the region.
            Some(Region::Heap(layout)) => unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) },
            Some(Region::Mapped(release)) => release(self.base, len),
            None => {}
        }
    }
}

/// A pool of `count` buffers of `buf_size` bytes.
#[derive(Clone)]
pub struct DmaPool {
    inner: Rc<PoolInner>,
}

impl fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaPool")
            .field("buf_size", &self.inner.buf_size)
            .field("count", &self.inner.count)
            .field("free", &self.available())
            .finish()
    }
}

impl DmaPool {
    /// A heap pool whose buffers are aligned to `align` (a power of two, at least 4096 for
    /// O_DIRECT). `buf_size` is rounded up to a multiple of `align`.
    pub fn heap(buf_size: usize, count: usize, align: usize) -> DmaPool {
        assert!(align.is_power_of_two() && count > 0 && count <= u32::MAX as usize);
        let buf_size = buf_size.div_ceil(align) * align;
        let layout = std::alloc::Layout::from_size_align(buf_size * count, align)
            .expect("pool layout fits in memory");
        // SAFETY: the layout has a non-zero size (buf_size and count are positive).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: base points at buf_size * count bytes we own, released by Region::Heap.
        unsafe { Self::from_region(base, buf_size, count, base.as_ptr() as u64, Region::Heap(layout)) }
    }

    /// A pool over a region a driver mapped.
    ///
    /// # Safety
    /// `base` must point at `buf_size * count` writable bytes that stay valid until `region`
    /// is released, and nothing else may use them meanwhile.
    pub unsafe fn from_region(
        base: NonNull<u8>,
        buf_size: usize,
        count: usize,
        iova_base: u64,
        region: Region,
    ) -> DmaPool {
        let free = (0..count as u32).collect();
        DmaPool {
            inner: Rc::new(PoolInner {
                base,
                buf_size,
                count,
                iova_base,
                free: RefCell::new(free),
                holds: RefCell::new(Vec::new()),
                held_waits: Cell::new(0),
                region: RefCell::new(Some(region)),
                leases: Arc::new(()),
            }),
        }
    }

    /// The free buffer given back last, or with a device that holds buffers, the one given
    /// back longest ago that it does not hold; None when there is none (when there are free
    /// buffers but all are held, the device is asked to let go).
    pub fn alloc(&self) -> Option<DmaBuf> {
        let mut free = self.inner.free.borrow_mut();
        let holds = self.inner.holds.borrow();
        let at = if holds.is_empty() {
            free.len().checked_sub(1)
        } else {
            let at = free.iter().position(|&i| !holds.iter().any(|h| h.held(i as usize)));
            if at.is_none() && !free.is_empty() {
                self.inner.held_waits.set(self.inner.held_waits.get() + 1);
                holds.iter().for_each(|h| h.wanted(true));
            }
            at
        }?;
        let idx = free.remove(at).expect("position is inside the free list");
        Some(DmaBuf { pool: self.inner.clone(), idx })
    }

    /// How many buffers [`DmaPool::alloc`] could hand out now, counting at most `max`: the
    /// free ones no device holds. For waking waiters: cheap when buffers are ready, and at
    /// worst one look at each free buffer. When all free buffers are held, the device is
    /// asked to let go of them (without counting a wait).
    pub fn ready(&self, max: usize) -> usize {
        let free = self.inner.free.borrow();
        let holds = self.inner.holds.borrow();
        if holds.is_empty() || max == 0 {
            return free.len().min(max);
        }
        let n = free.iter().filter(|&&i| !holds.iter().any(|h| h.held(i as usize))).take(max).count();
        if n == 0 && !free.is_empty() {
            holds.iter().for_each(|h| h.wanted(false));
        }
        n
    }

    /// Adds a device that may still read buffers after they were given back: from now on a
    /// buffer it (or any other device added) holds is not handed out.
    pub fn add_device_holds(&self, holds: Arc<dyn DeviceHolds>) {
        self.inner.holds.borrow_mut().push(holds);
    }

    /// Allocations that found only buffers a device still held (each a read that waited).
    pub fn held_waits(&self) -> u64 {
        self.inner.held_waits.get()
    }

    pub fn buf_size(&self) -> usize {
        self.inner.buf_size
    }

    pub fn count(&self) -> usize {
        self.inner.count
    }

    pub fn available(&self) -> usize {
        self.inner.free.borrow().len()
    }

    /// A lease on the pool's whole region, for a device that reads buffers after their
    /// handles may have gone back to the pool (see [`RegionLease`]).
    pub fn lease(&self) -> RegionLease {
        RegionLease {
            start: self.inner.base.as_ptr() as usize,
            len: self.inner.buf_size * self.inner.count,
            buf_size: self.inner.buf_size,
            iova: self.inner.iova_base,
            _held: self.inner.leases.clone(),
        }
    }
}

/// The address range of a [`DmaPool`]'s region, held for a device that reads from it without
/// copying (a NIC sending payload straight out of storage buffers: [`crate::nic::Nic::tx_from_pool`]).
/// While a lease lives, dropping the pool leaks the region instead of releasing it, so the
/// addresses stay readable. A lease grants no access by itself: it only says where the region
/// is and keeps it mapped; that the bytes of a buffer stay unchanged while the device reads
/// them is what [`DeviceHolds`] is for. `Send`: it holds addresses and a shared count, not
/// the pool.
#[derive(Clone, Debug)]
pub struct RegionLease {
    start: usize,
    len: usize,
    buf_size: usize,
    iova: u64,
    _held: Arc<()>,
}

impl RegionLease {
    /// Virtual address of the region's first byte.
    pub fn start(&self) -> usize {
        self.start
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device address of the region's first byte (equal to the virtual one for heap pools).
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Bytes of each of the pool's buffers.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Buffers in the region.
    pub fn buffers(&self) -> usize {
        self.len.checked_div(self.buf_size).unwrap_or(0)
    }

    /// Index of the buffer that holds all of `bytes`, if they lie inside one buffer.
    pub fn buffer_of(&self, bytes: &[u8]) -> Option<usize> {
        if !self.contains(bytes) || bytes.is_empty() {
            return None;
        }
        let off = bytes.as_ptr() as usize - self.start;
        let idx = off / self.buf_size;
        ((off + bytes.len() - 1) / self.buf_size == idx).then_some(idx)
    }

    /// Whether `bytes` lie wholly inside the region.
    pub fn contains(&self, bytes: &[u8]) -> bool {
        let p = bytes.as_ptr() as usize;
        p >= self.start && p.checked_add(bytes.len()).is_some_and(|end| end <= self.start + self.len)
    }
}

/// One buffer of a [`DmaPool`]; returns to it when dropped.
pub struct DmaBuf {
    pool: Rc<PoolInner>,
    idx: u32,
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaBuf#{}", self.idx)
    }
}

impl DmaBuf {
    fn offset(&self) -> usize {
        self.idx as usize * self.pool.buf_size
    }

    /// The device (IO virtual) address of the buffer's first byte.
    pub fn iova(&self) -> u64 {
        self.pool.iova_base + self.offset() as u64
    }

    /// Index of the buffer in its pool.
    pub fn index(&self) -> u32 {
        self.idx
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.pool.buf_size
    }

    pub fn is_empty(&self) -> bool {
        self.pool.buf_size == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer lies inside the region the pool keeps alive (we hold an Rc), and
        // the free list hands each index to one DmaBuf at a time, so no other alias exists.
        unsafe { std::slice::from_raw_parts(self.pool.base.as_ptr().add(self.offset()), self.pool.buf_size) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; &mut self makes this the only live reference.
        unsafe {
            std::slice::from_raw_parts_mut(self.pool.base.as_ptr().add(self.offset()), self.pool.buf_size)
        }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.pool.free.borrow_mut().push_back(self.idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_distinct_and_recycled() {
        let pool = DmaPool::heap(5000, 3, 4096);
        assert_eq!(pool.buf_size(), 8192);
        let mut a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        let c = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        assert_eq!(a.as_ptr() as usize % 4096, 0);
        assert_ne!(a.iova(), b.iova());
        a.as_mut_slice()[0] = 7;
        assert_eq!(b.as_slice()[0], 0);
        drop(c);
        assert_eq!(pool.available(), 1);
        drop(pool);
        assert_eq!(a.as_slice()[0], 7, "buffers keep the region alive");
    }

    #[test]
    fn a_lease_covers_the_region_and_outlives_the_pool() {
        let pool = DmaPool::heap(4096, 2, 4096);
        let lease = pool.lease();
        let a = pool.alloc().unwrap();
        assert!(lease.contains(a.as_slice()));
        assert!(lease.contains(&a.as_slice()[100..200]));
        assert!(!lease.contains(&[0u8; 4][..]));
        assert_eq!(lease.len(), 8192);
        let start = lease.start() as *const u8;
        drop(a);
        drop(pool);
        // The region is leaked, not released: still readable through the lease's addresses.
        // SAFETY: the region was allocated zeroed and is never released while leased.
        assert_eq!(unsafe { *start.add(8191) }, 0);
    }

    /// A device's holds for tests: which buffers it holds, and what it was told.
    #[derive(Default)]
    struct FakeHolds {
        held: std::sync::Mutex<Vec<usize>>,
        wanted: std::sync::Mutex<Vec<bool>>,
    }

    impl DeviceHolds for FakeHolds {
        fn held(&self, index: usize) -> bool {
            self.held.lock().unwrap().contains(&index)
        }
        fn wanted(&self, delayed: bool) {
            self.wanted.lock().unwrap().push(delayed);
        }
    }

    /// Takes all four buffers of a fresh `pool`, then gives back those with indices 2, 0 and
    /// 3, in that order. Returns the indices in the order they first came out, and the buffer
    /// kept (index 1).
    fn all_out_then_2_0_3_back(pool: &DmaPool) -> (Vec<u32>, DmaBuf) {
        let mut bufs: Vec<DmaBuf> = (0..4).map(|_| pool.alloc().unwrap()).collect();
        let first_out = bufs.iter().map(|b| b.index()).collect();
        for i in [2, 0, 3] {
            let at = bufs.iter().position(|b| b.index() == i).unwrap();
            drop(bufs.remove(at));
        }
        (first_out, bufs.pop().unwrap())
    }

    /// Without a device that holds buffers, the one given back last goes out first (warm in
    /// the caches): a core that takes and gives back one buffer at a time keeps using it.
    #[test]
    fn the_buffer_given_back_last_goes_out_first() {
        let pool = DmaPool::heap(4096, 4, 4096);
        let (first_out, _one) = all_out_then_2_0_3_back(&pool);
        assert_eq!(first_out, [3, 2, 1, 0], "fresh pool: from the back");
        // Handed out again the other way round.
        let three = pool.alloc().unwrap();
        assert_eq!(three.index(), 3);
        let again = pool.alloc().unwrap();
        assert_eq!(again.index(), 0);
        drop(again); // back on top, above 2
        for _ in 0..3 {
            let b = pool.alloc().unwrap();
            assert_eq!(b.index(), 0, "one buffer in use at a time: always the same one");
        }
        let (zero, two) = (pool.alloc().unwrap(), pool.alloc().unwrap());
        assert_eq!((zero.index(), two.index()), (0, 2));
        assert!(pool.alloc().is_none());
        drop((zero, two, three));
        assert_eq!(pool.held_waits(), 0);
    }

    /// With a device that holds buffers, the one given back longest ago goes out first: the
    /// likeliest to have been let go of.
    #[test]
    fn with_a_device_the_free_list_is_first_in_first_out() {
        let pool = DmaPool::heap(4096, 4, 4096);
        pool.add_device_holds(Arc::new(FakeHolds::default()));
        let (first_out, _one) = all_out_then_2_0_3_back(&pool);
        assert_eq!(first_out, [0, 1, 2, 3], "fresh pool: in order");
        // Handed out again in the order given back.
        let two = pool.alloc().unwrap();
        assert_eq!(two.index(), 2);
        let again = pool.alloc().unwrap();
        assert_eq!(again.index(), 0);
        drop(again); // now behind 3
        let three = pool.alloc().unwrap();
        assert_eq!(three.index(), 3);
        assert_eq!(pool.alloc().unwrap().index(), 0);
        drop((two, three));
        assert_eq!(pool.held_waits(), 0);
    }

    #[test]
    fn held_buffers_are_skipped_in_place_and_waits_counted() {
        let pool = DmaPool::heap(4096, 4, 4096);
        let holds = Arc::new(FakeHolds::default());
        pool.add_device_holds(holds.clone());
        let bufs: Vec<DmaBuf> = (0..4).map(|_| pool.alloc().unwrap()).collect();
        drop(bufs); // free list: 0 1 2 3
        *holds.held.lock().unwrap() = vec![0, 1];
        assert_eq!(pool.available(), 4, "held buffers are free, just not ready");
        assert_eq!(pool.ready(10), 2);
        assert_eq!(pool.ready(1), 1);
        let b2 = pool.alloc().unwrap();
        assert_eq!(b2.index(), 2, "the oldest buffer the device let go of");
        let b3 = pool.alloc().unwrap();
        assert_eq!(b3.index(), 3);
        assert!(holds.wanted.lock().unwrap().is_empty(), "not asked while buffers were ready");
        // Only held buffers left: no buffer, one wait counted, the device asked to let go.
        assert_eq!(pool.ready(10), 0);
        assert!(pool.alloc().is_none());
        assert!(pool.alloc().is_none());
        assert_eq!(pool.held_waits(), 2);
        assert_eq!(*holds.wanted.lock().unwrap(), [false, true, true], "a re-check asks without counting");
        // The device lets go of 1: it is handed out, 0 keeps its place at the front.
        holds.held.lock().unwrap().retain(|&i| i != 1);
        assert_eq!(pool.ready(10), 1);
        let b1 = pool.alloc().unwrap();
        assert_eq!(b1.index(), 1);
        drop(b2); // free list: 0 2
        holds.held.lock().unwrap().clear();
        assert_eq!(pool.alloc().unwrap().index(), 0, "oldest first once nothing is held");
        drop((b1, b3));
    }

    #[test]
    fn an_empty_pool_is_not_a_held_wait() {
        let pool = DmaPool::heap(4096, 1, 4096);
        let holds = Arc::new(FakeHolds::default());
        pool.add_device_holds(holds.clone());
        let _b = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        assert_eq!(pool.ready(4), 0);
        assert_eq!(pool.held_waits(), 0);
        assert!(holds.wanted.lock().unwrap().is_empty(), "nothing the device could give back");
    }

    #[test]
    fn a_lease_finds_the_buffer_of_a_slice() {
        let pool = DmaPool::heap(4096, 3, 4096);
        let lease = pool.lease();
        assert_eq!((lease.buf_size(), lease.buffers()), (4096, 3));
        let _a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!(lease.buffer_of(&b.as_slice()[10..4000]), Some(1));
        assert_eq!(lease.buffer_of(b.as_slice()), Some(1));
        // SAFETY: the pool's region holds 3 * 4096 bytes; this slice straddles buffers 0 and 1.
        let across = unsafe { std::slice::from_raw_parts((lease.start() + 4000) as *const u8, 200) };
        assert_eq!(lease.buffer_of(across), None, "a slice over two buffers has no one buffer");
        assert_eq!(lease.buffer_of(&[]), None);
    }
}
