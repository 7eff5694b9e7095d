//! Memory the controller can reach by DMA: a [`DmaRegion`] is a virtually contiguous range
//! with a contiguous device address (IOVA) range, handed out by a [`DmaMemory`] (hugepages
//! mapped through the IOMMU by vfio, or the fake device memory of the unit tests).
//!
//! Every access the driver makes to memory the device also touches (queue rings, PRP lists)
//! goes through the bounds-checked volatile accessors here.
use std::ptr::NonNull;

use crate::storage::StorageError;

/// Hands out DMA-reachable memory. Shared by every queue of a controller.
pub trait DmaMemory: Send + Sync {
    /// `len` bytes (rounded up to the allocator's granule), zeroed, at least 4096-byte aligned
    /// in both address spaces.
    fn alloc(&self, len: usize) -> Result<DmaRegion, StorageError>;
}

/// Gives a region back (unmap from the IOMMU, free): called once with its address and length.
pub type Release = Box<dyn FnOnce(NonNull<u8>, usize) + Send>;

/// One mapped range; released (unmapped from the IOMMU, freed) when dropped.
pub struct DmaRegion {
    ptr: NonNull<u8>,
    iova: u64,
    len: usize,
    release: Option<Release>,
}

// SAFETY: the region is exclusively owned memory (like a Box<[u8]>); the release closure is
// Send. Moving it to another thread moves that ownership.
unsafe impl Send for DmaRegion {}

impl std::fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DmaRegion(iova={:#x}, len={})", self.iova, self.len)
    }
}

impl DmaRegion {
    /// # Safety
    /// `ptr` must point at `len` writable bytes owned by the caller until `release` runs, and
    /// the device must see them at `iova..iova+len`.
    pub unsafe fn new(
        ptr: NonNull<u8>,
        iova: u64,
        len: usize,
        release: Release,
    ) -> DmaRegion {
        DmaRegion { ptr, iova, len, release: Some(release) }
    }

    pub fn iova(&self) -> u64 {
        self.iova
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Give up ownership without releasing: the caller takes over `release`.
    pub fn into_raw(mut self) -> (NonNull<u8>, u64, usize, Release) {
        let release = self.release.take().expect("release is present until drop");
        (self.ptr, self.iova, self.len, release)
    }

    fn check<T>(&self, offset: usize) {
        assert!(
            offset.is_multiple_of(std::mem::align_of::<T>()) && offset + std::mem::size_of::<T>() <= self.len,
            "DMA region access out of bounds: offset {offset} in {} bytes",
            self.len
        );
    }

    /// A volatile load: the device may have written the value behind the compiler's back.
    pub fn read<T: Copy>(&self, offset: usize) -> T {
        self.check::<T>(offset);
        // SAFETY: bounds and alignment checked above; the region is live while &self is.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(offset) as *const T) }
    }

    /// A volatile store, so it is not elided or merged before the doorbell write.
    pub fn write<T: Copy>(&self, offset: usize, value: T) {
        self.check::<T>(offset);
        // SAFETY: bounds and alignment checked above; the region is live while &self is.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(offset) as *mut T, value) }
    }

    /// Copy bytes out (identify data): the device is done with them when this is called.
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len);
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read::<u8>(offset + i);
        }
    }

    /// Zero the whole region (a ring before it is handed to the controller again).
    pub fn zero(&self) {
        for off in (0..self.len).step_by(8) {
            self.write::<u64>(off, 0);
        }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(self.ptr, self.len);
        }
    }
}
