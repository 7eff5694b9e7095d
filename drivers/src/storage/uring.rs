//! Asynchronous reads of the file backend through io_uring.
//!
//! A read is queued in the submission ring at once and handed to the kernel, all queued
//! reads in one system call, at the next poll; its completion is taken off the completion
//! ring there as well. The core never sleeps on the medium: while a disk works it goes on
//! with other connections, as it does with the NVMe driver (with a synchronous `pread` it
//! sat out every read, and a disk behind it saw one read at a time).
//!
//! The kernel writes into a buffer while its read is in flight, so the [`DmaBuf`] stays in a
//! slot here until its completion is reaped; dropping the queue waits for every read.
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use super::{Completion, DmaBuf, StorageError};

/// A read in flight: its buffer, and how much of it has arrived (a short read goes on).
struct InFlight {
    tag: u64,
    buf: DmaBuf,
    offset: u64,
    len: usize,
    got: usize,
}

/// A completion's meaning: the read finished (well or not), or the rest must be read again.
enum Step {
    Done(Result<(), StorageError>),
    Again,
}

/// One io_uring and up to `depth` reads in flight on it.
pub(crate) struct UringReads {
    ring: IoUring,
    fd: RawFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    /// Entries pushed to the submission ring and not yet handed to the kernel.
    queued: usize,
    /// Slots whose reads came back short, to push again (room for every slot).
    again: Vec<u32>,
}

impl std::fmt::Debug for UringReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringReads").field("in_flight", &self.in_flight()).field("queued", &self.queued).finish()
    }
}

impl UringReads {
    /// A ring for reads of `fd`, which must stay open while this lives. Fails where the
    /// kernel has no io_uring or refuses it (`kernel.io_uring_disabled`, seccomp).
    pub(crate) fn new(fd: RawFd, depth: usize) -> std::io::Result<UringReads> {
        let entries = depth.next_power_of_two() as u32;
        // Completions are not pushed at the core by interrupting it: the kernel raises a flag
        // in the ring instead and the next poll collects them (Linux 5.19 and later; older
        // kernels interrupt the task as by default).
        let ring = IoUring::builder().setup_coop_taskrun().setup_taskrun_flag().build(entries).or_else(|_| IoUring::new(entries))?;
        Ok(UringReads {
            ring,
            fd,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
            queued: 0,
            again: Vec::with_capacity(depth),
        })
    }

    /// Whether there is work for [`UringReads::submit_queued`]: reads queued in the
    /// submission ring, or finished reads the kernel will post on the next entry.
    pub(crate) fn needs_enter(&mut self) -> bool {
        self.queued > 0 || self.ring.submission().taskrun()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Queue a read of `len` bytes at `offset` into the front of `buf` (checked by the
    /// caller: aligned, in range, `len <= buf.len()`).
    pub(crate) fn submit(&mut self, tag: u64, offset: u64, len: usize, buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        let Some(slot) = self.free.pop() else {
            return Err((StorageError::QueueFull, buf));
        };
        self.slots[slot as usize] = Some(InFlight { tag, buf, offset, len, got: 0 });
        self.push(slot);
        Ok(())
    }

    /// Push the read entry of `slot` for its bytes still missing.
    fn push(&mut self, slot: u32) {
        let Some(r) = self.slots[slot as usize].as_mut() else { return };
        let rest = r.len - r.got;
        // SAFETY: the range is inside the buffer (len <= buf.len() was checked at submit),
        // and the buffer stays in this slot, untouched, until the entry's completion is
        // reaped (or until drop has waited for it).
        let ptr = unsafe { r.buf.as_mut_ptr().add(r.got) };
        let entry = opcode::Read::new(types::Fd(self.fd), ptr, rest as u32)
            .offset(r.offset + r.got as u64)
            .build()
            .user_data(u64::from(slot));
        // SAFETY: the entry's buffer is valid for the read as above; the ring has at least as
        // many entries as there are slots, and each slot has at most one entry queued or in
        // flight, so the push cannot fail.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "the submission ring has room for every slot");
        self.queued += 1;
    }

    /// Hand queued reads to the kernel and let it post finished ones. Returns the error of
    /// the system call, if any; the entries then stay queued and go with the next call.
    pub(crate) fn submit_queued(&mut self) -> std::io::Result<()> {
        let taken = self.ring.submit()?;
        self.queued -= taken.min(self.queued);
        Ok(())
    }

    /// Pass each finished read to `done` with its length; `capacity` is the medium's size
    /// (the tail of a last block past it reads as zeros). A read that came back short is
    /// queued again for the rest.
    pub(crate) fn reap(&mut self, capacity: u64, mut done: impl FnMut(Completion, usize)) {
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as u32;
            let Some(r) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                log::error!("io_uring completed an unknown read ({slot})");
                continue;
            };
            match step(r, cqe.result(), capacity) {
                Step::Again => self.again.push(slot),
                Step::Done(result) => {
                    if let Some(r) = self.slots[slot as usize].take() {
                        self.free.push(slot);
                        done(Completion { tag: r.tag, buf: r.buf, result }, r.len);
                    }
                }
            }
        }
        while let Some(slot) = self.again.pop() {
            self.push(slot);
        }
    }
}

/// What a completion with `res` (bytes read, or minus errno) means for read `r`.
fn step(r: &mut InFlight, res: i32, capacity: u64) -> Step {
    if res == -libc::EINTR || res == -libc::EAGAIN {
        return Step::Again;
    }
    if res < 0 {
        let err = std::io::Error::from_raw_os_error(-res);
        return Step::Done(Err(StorageError::Device(format!("read of {} bytes at {}: {err}", r.len, r.offset))));
    }
    r.got += res as usize;
    if r.got >= r.len {
        return Step::Done(Ok(()));
    }
    if r.offset + r.got as u64 >= capacity {
        // The partial last block: past the end recorded at open reads as zeros.
        r.buf.as_mut_slice()[r.got..r.len].fill(0);
        return Step::Done(Ok(()));
    }
    if res == 0 {
        return Step::Done(Err(StorageError::Short { got: r.got, want: r.len }));
    }
    Step::Again
}

impl Drop for UringReads {
    fn drop(&mut self) {
        // The kernel may still write into the buffers held here: wait for every read.
        while self.in_flight() > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Cannot tell when the kernel is done with them: leaking is safe, freeing not.
                log::error!("io_uring: cannot wait for {} reads in flight ({e}); their buffers are leaked", self.in_flight());
                for slot in self.slots.iter_mut() {
                    if let Some(r) = slot.take() {
                        std::mem::forget(r.buf);
                    }
                }
                return;
            }
            // Completions of a queue being dropped go nowhere, short ones included: the
            // kernel is done with the buffer either way.
            for cqe in self.ring.completion() {
                if let Some(r) = self.slots.get_mut(cqe.user_data() as usize).and_then(Option::take) {
                    drop(r.buf);
                    self.free.push(cqe.user_data() as u32);
                }
            }
        }
    }
}
