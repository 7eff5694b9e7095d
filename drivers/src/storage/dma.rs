//! Fixed pools of equally sized, block-aligned buffers for device reads.
//!
//! One region is allocated (or mapped) at start-up and cut into buffers; a [`DmaBuf`] is a
//! handle to one of them and goes back to the free list when dropped. The pool is per core
//! (`Rc`, not `Arc`): no locks on the fast path.
use std::cell::RefCell;
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

struct PoolInner {
    base: NonNull<u8>,
    buf_size: usize,
    count: usize,
    /// Device address of `base` (IOVA); equal to the virtual address for heap pools.
    iova_base: u64,
    free: RefCell<Vec<u32>>,
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
        let free = (0..count as u32).rev().collect();
        DmaPool {
            inner: Rc::new(PoolInner {
                base,
                buf_size,
                count,
                iova_base,
                free: RefCell::new(free),
                region: RefCell::new(Some(region)),
                leases: Arc::new(()),
            }),
        }
    }

    pub fn alloc(&self) -> Option<DmaBuf> {
        let idx = self.inner.free.borrow_mut().pop()?;
        Some(DmaBuf { pool: self.inner.clone(), idx })
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
            iova: self.inner.iova_base,
            _held: self.inner.leases.clone(),
        }
    }
}

/// The address range of a [`DmaPool`]'s region, held for a device that reads from it without
/// copying (a NIC sending payload straight out of storage buffers: [`crate::nic::Nic::tx_from_pool`]).
/// While a lease lives, dropping the pool leaks the region instead of releasing it, so the
/// addresses stay readable. A lease grants no access by itself: it only says where the region
/// is and keeps it mapped. `Send`: it holds addresses and a shared count, not the pool.
#[derive(Clone, Debug)]
pub struct RegionLease {
    start: usize,
    len: usize,
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
        self.pool.free.borrow_mut().push(self.idx);
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
}
