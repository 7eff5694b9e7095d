//! A per-NIC pool of fixed-size frame buffers, shared by the TAP and simulated backends.
//!
//! Every buffer is allocated once when the pool is built; a [`PoolFrame`] owns one of them
//! while a frame is in flight or held by the stack, and puts it back on the free list when
//! dropped. The free list has room for every buffer, so returning one never allocates. The pool
//! is per core (`Rc`, not `Arc`): no locks on the fast path.
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use super::{FrameBuf, RxChecksums};

struct PoolInner {
    free: Vec<Box<[u8]>>,
    count: usize,
    buf_size: usize,
}

/// `count` buffers of `buf_size` bytes.
#[derive(Clone)]
pub struct FramePool {
    inner: Rc<RefCell<PoolInner>>,
}

impl fmt::Debug for FramePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("FramePool")
            .field("buf_size", &inner.buf_size)
            .field("count", &inner.count)
            .field("free", &inner.free.len())
            .finish()
    }
}

impl FramePool {
    /// Allocates all `count` buffers now (zeroed).
    pub fn new(count: usize, buf_size: usize) -> FramePool {
        let mut free = Vec::with_capacity(count);
        for _ in 0..count {
            free.push(vec![0u8; buf_size].into_boxed_slice());
        }
        FramePool {
            inner: Rc::new(RefCell::new(PoolInner {
                free,
                count,
                buf_size,
            })),
        }
    }

    /// Takes a free buffer (length 0), or None when every buffer is in use.
    pub fn take(&self) -> Option<PoolFrame> {
        let buf = self.inner.borrow_mut().free.pop()?;
        Some(PoolFrame {
            buf: Some(buf),
            len: 0,
            checksums: RxChecksums::UNCHECKED,
            home: Rc::clone(&self.inner),
        })
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.inner.borrow().free.len()
    }

    /// Buffers the pool was built with (it never grows).
    pub fn capacity(&self) -> usize {
        self.inner.borrow().count
    }

    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.inner.borrow().buf_size
    }
}

/// One frame in a pool buffer; dropping it returns the buffer to its pool.
pub struct PoolFrame {
    /// Always Some until Drop takes it.
    buf: Option<Box<[u8]>>,
    len: usize,
    /// What the port found of its checksums (set by a driver with receive offload).
    checksums: RxChecksums,
    home: Rc<RefCell<PoolInner>>,
}

impl fmt::Debug for PoolFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolFrame").field("len", &self.len).finish()
    }
}

impl PoolFrame {
    /// The frame's bytes, mutable (e.g. to build a reply in place).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.whole_mut()[..len]
    }

    /// Number of bytes in the frame.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffer, for a driver to fill before [`PoolFrame::set_len`].
    pub(crate) fn whole_mut(&mut self) -> &mut [u8] {
        match self.buf.as_deref_mut() {
            Some(buf) => buf,
            None => &mut [],
        }
    }

    /// Records what the port found of the frame's checksums.
    pub(crate) fn set_rx_checksums(&mut self, checksums: RxChecksums) {
        self.checksums = checksums;
    }

    /// Sets the frame length (clamped to the buffer size).
    pub(crate) fn set_len(&mut self, len: usize) {
        let cap = self.buf.as_ref().map_or(0, |b| b.len());
        self.len = len.min(cap);
    }

    /// Copies `parts` back to back into the buffer; false (and length 0) if they do not fit.
    pub(crate) fn fill_from(&mut self, parts: &[&[u8]]) -> bool {
        let buf = self.whole_mut();
        let mut at = 0;
        for part in parts {
            let Some(dst) = buf.get_mut(at..at + part.len()) else {
                self.len = 0;
                return false;
            };
            dst.copy_from_slice(part);
            at += part.len();
        }
        self.len = at;
        true
    }
}

impl FrameBuf for PoolFrame {
    fn bytes(&self) -> &[u8] {
        match self.buf.as_deref() {
            Some(buf) => &buf[..self.len],
            None => &[],
        }
    }

    fn rx_checksums(&self) -> RxChecksums {
        self.checksums
    }
}

impl Drop for PoolFrame {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // The free list was built with room for every buffer: this push never allocates.
            self.home.borrow_mut().free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_return_to_pool_and_pool_never_grows() {
        let pool = FramePool::new(4, 64);
        let mut held = Vec::new();
        while let Some(mut f) = pool.take() {
            assert!(f.fill_from(&[b"abc", b"de"]));
            assert_eq!(f.bytes(), b"abcde");
            held.push(f);
        }
        assert_eq!(held.len(), 4);
        assert_eq!(pool.available(), 0);
        held.truncate(1);
        assert_eq!(pool.available(), 3);
        drop(held);
        assert_eq!(pool.available(), 4);
        assert_eq!(pool.capacity(), 4);
    }

    #[test]
    fn oversized_fill_is_refused() {
        let pool = FramePool::new(1, 4);
        let mut f = pool.take().unwrap();
        assert!(!f.fill_from(&[b"abc", b"de"]));
        assert!(f.is_empty());
        f.set_len(100);
        assert_eq!(f.len(), 4);
    }
}
