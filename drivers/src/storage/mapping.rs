//! A volume file that lives in memory (tmpfs, ramfs), mapped read-only under a read lease.
//!
//! For such a file a read is the core copying bytes out of memory, whichever way it is done.
//! Mapped, the caller's own pass over the bytes (sealing TLS records out of place into the
//! packet buffer) can be that copy, instead of a `pread` into the buffer followed by a seal in
//! place: one pass where there were two ([`crate::storage::Storage::mapped`]).
//!
//! The lease keeps the mapping sound. While it is held nobody has the file open for writing,
//! so the bytes cannot change under a reader (or vanish: a truncated file's pages fault with
//! SIGBUS). A process that opens the file for writing, or truncates it, is held back by the
//! kernel until the lease is given up (or `/proc/sys/fs/lease-break-time` passes); the lease
//! then reads as broken, which [`Mapping::intact`] reports, and the owner drops the mapping
//! (unmaps, then gives the lease up) and goes back to `pread`.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// fcntl's "signal to announce I/O readiness and lease breaks with" (asm-generic/fcntl.h;
/// the libc crate leaves it out for glibc targets).
const F_SETSIG: i32 = 10;

/// The file, mapped whole (rounded up to pages: past its end the last page reads as zeros).
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: i32,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.len).finish()
    }
}

impl Mapping {
    /// Take a read lease on `file` (open read-only, `len` bytes long) and map it. Fails when
    /// someone has the file open for writing (EAGAIN), when this process may not lease it
    /// (EACCES: not the owner and no CAP_LEASE), or when it cannot be mapped.
    pub(crate) fn new(file: &File, len: u64) -> io::Result<Mapping> {
        let fd = file.as_raw_fd();
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // A lease break is announced with a signal (SIGIO by default, which ends a process
        // that does not handle it). SIGURG is ignored unless handled: the break is seen by
        // polling the lease (`intact`) instead.
        fcntl(fd, F_SETSIG, libc::SIGURG)?;
        fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK)?;
        // SAFETY: a fresh read-only shared mapping of `len` bytes of an open descriptor; the
        // kernel picks the address, and nothing else in this process owns that range.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED | libc::MAP_POPULATE, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            let _ = fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
            return Err(err);
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mapping { ptr, len, fd })
    }

    /// Whether the lease still holds: nobody has asked to write the file since it was taken.
    /// One system call; the owner asks before each use of the bytes.
    pub(crate) fn intact(&self) -> bool {
        fcntl(self.fd, libc::F_GETLEASE, 0).is_ok_and(|kind| kind == libc::F_RDLCK)
    }

    /// The mapped bytes `offset..offset + len`, if they lie inside the mapping.
    pub(crate) fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len).filter(|&end| end <= self.len)?;
        // SAFETY: the mapping is `self.len` readable bytes for as long as `self` lives, and
        // `start..end` lies inside it. Under the read lease no process has the file open for
        // writing, so the bytes do not change while the slice is borrowed (see the top).
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        Some(&all[start..end])
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unmap first, then let a waiting writer go on.
        // SAFETY: `ptr`/`len` are this mapping's, mapped in `new`; no slice of it outlives
        // `self` (`bytes` borrows it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        let _ = fcntl(self.fd, libc::F_SETLEASE, libc::F_UNLCK);
    }
}

fn fcntl(fd: i32, cmd: i32, arg: i32) -> io::Result<i32> {
    // SAFETY: F_SETSIG, F_SETLEASE and F_GETLEASE take an integer argument and touch no
    // memory of this process; `fd` is open while its `File` lives.
    let rc = unsafe { libc::fcntl(fd, cmd, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
