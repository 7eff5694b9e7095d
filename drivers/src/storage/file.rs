//! The file backend: a volume in a regular file or on a block device.
//!
//! Reads go through io_uring (`storage::uring`): queued at submission, handed to the kernel
//! together at the next poll and reaped there, so the core goes on while the medium works,
//! as with the NVMe driver. Files in memory (tmpfs, ramfs), and any file where io_uring is
//! missing or refused (with a warning), are read with a synchronous `pread` at submission
//! whose completion is queued, which the caller drives the same way (submit, then poll). The file is opened read-only with
//! `O_DIRECT` so reads bypass the page cache like the NVMe driver does; file systems that
//! refuse `O_DIRECT` fall back to buffered reads with a warning.
//!
//! A file in memory is also mapped, under a read lease (`storage::mapping`), so that a caller
//! that passes over the bytes anyway can take them from the mapping ([`Storage::mapped`]).
//! Someone opening the file for writing breaks the lease: the mapping is dropped, and reads
//! go on with `pread`.
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::mapping::Mapping;
use super::uring::UringReads;
use super::{Completion, DmaBuf, DmaPool, Storage, StorageCounters, StorageError};

/// Read granularity and alignment of the file backend.
pub const FILE_BLOCK_SIZE: usize = 4096;
/// Reads in flight (or, with `pread`, completions not yet polled), at most.
pub const FILE_QUEUE_DEPTH: usize = 64;

/// A mapped file's lease is checked at a poll when it was last checked this long ago, so a
/// writer waiting for it is let go within a millisecond or two even when nothing is read (a
/// loop with connections polls at least once a millisecond; one without, every 10 ms).
const LEASE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

/// How the file backend reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileIo {
    /// io_uring; `pread` where the kernel refuses it, and for files on tmpfs or ramfs, which
    /// are also mapped ([`Storage::mapped`]; see [`FileStorage::unmap`]).
    Async,
    /// `pread` at submission: every read finished before `submit_read` returns.
    Synchronous,
}

/// A volume file or block device opened for block reads.
///
/// Counters: `reads`/`read_bytes` count completed reads; `errors` counts refused submissions
/// (unaligned, out of range) and failed reads. A full queue is back-pressure, not an error.
#[derive(Debug)]
pub struct FileStorage {
    /// The io_uring reads, or `None` for `pread`. Declared before `file` so that it drops
    /// first: dropping waits for reads in flight, whose queued entries name the descriptor.
    ring: Option<UringReads>,
    /// A file in memory, mapped under a read lease; dropped (before `file`, which it names)
    /// when the lease breaks.
    mapping: Option<Mapping>,
    /// When the lease was last checked (see [`LEASE_CHECK_EVERY`]).
    lease_checked: std::time::Instant,
    file: File,
    /// Bytes in the file (or on the device) when it was opened.
    capacity: u64,
    direct: bool,
    /// With `pread`: finished reads not yet polled.
    done: VecDeque<Completion>,
    counters: StorageCounters,
    /// With [`FileStorage::time_device`]: nanoseconds spent in `pread` or in handing reads to
    /// io_uring, the part that stands for the device (an NVMe drive moves the bytes by DMA
    /// while the core goes on).
    device_ns: Option<u64>,
}

impl FileStorage {
    /// Opens `path` (a regular file or a block device) read-only, for reads through
    /// io_uring where the kernel allows it.
    pub fn open(path: &Path) -> Result<FileStorage, StorageError> {
        FileStorage::open_with(path, FileIo::Async)
    }

    /// Opens `path` read-only, reading as `io` says.
    pub fn open_with(path: &Path, io: FileIo) -> Result<FileStorage, StorageError> {
        // Check the type first: O_DIRECT on a directory also fails with EINVAL.
        let file_type = std::fs::metadata(path).map_err(|e| open_error(path, e))?.file_type();
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(not_a_medium(path));
        }
        let (mut file, direct) = match open_read_only(path, true) {
            Ok(file) => (file, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!("{}: file system refuses O_DIRECT, falling back to buffered reads", path.display());
                (open_read_only(path, false).map_err(|e| open_error(path, e))?, false)
            }
            Err(e) => return Err(open_error(path, e)),
        };
        let meta = file.metadata().map_err(|e| open_error(path, e))?;
        let file_type = meta.file_type();
        let capacity = if file_type.is_file() {
            meta.len()
        } else if file_type.is_block_device() {
            // lseek(SEEK_END) on a block device yields its size in bytes (as BLKGETSIZE64).
            file.seek(SeekFrom::End(0)).map_err(|e| open_error(path, e))?
        } else {
            return Err(not_a_medium(path));
        };
        let ring = match io {
            FileIo::Synchronous => None,
            // A read of a file in memory is a copy by the core whichever way it goes, and
            // io_uring cannot do it without blocking (tmpfs has no non-blocking reads): it
            // hands each one to a kernel worker thread, which shares the pinned core with
            // the pipeline. pread copies in place, without the two context switches.
            FileIo::Async if in_memory(&file) => None,
            FileIo::Async => match UringReads::new(file.as_raw_fd(), FILE_QUEUE_DEPTH) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    log::warn!("{}: io_uring unavailable ({e}), reading with pread, one read at a time", path.display());
                    None
                }
            },
        };
        let mapping = match io {
            FileIo::Async if ring.is_none() && in_memory(&file) => {
                // Up to the end of the last block: past the file's end its page reads as zeros,
                // as `read_into` gives them.
                match Mapping::new(&file, capacity.div_ceil(FILE_BLOCK_SIZE as u64) * FILE_BLOCK_SIZE as u64) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        log::info!("{}: not mapped ({e}), reading with pread", path.display());
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(FileStorage {
            mapping,
            lease_checked: std::time::Instant::now(),
            file,
            capacity,
            direct,
            ring,
            done: VecDeque::with_capacity(FILE_QUEUE_DEPTH),
            counters: StorageCounters::default(),
            device_ns: None,
        })
    }

    /// How reads are done: [`FileIo::Async`] when through io_uring.
    pub fn io(&self) -> FileIo {
        if self.ring.is_some() {
            FileIo::Async
        } else {
            FileIo::Synchronous
        }
    }

    /// Whether the file is mapped ([`Storage::mapped`] gives its bytes).
    pub fn is_mapped(&self) -> bool {
        self.mapping.is_some()
    }

    /// Read with `pread` only from now on, so that every read lands in a buffer as a drive's
    /// DMA does (benchmarks that stand the file in for a drive).
    pub fn unmap(&mut self) {
        self.mapping = None;
    }

    /// Drop the mapping if its lease broke (someone opened the file for writing, and waits
    /// for it); whether the mapping is still there.
    fn check_lease(&mut self) -> bool {
        self.lease_checked = std::time::Instant::now();
        match &self.mapping {
            Some(m) if m.intact() => true,
            Some(_) => {
                log::warn!("file storage: the volume file is being opened for writing; reading with pread from now on");
                self.mapping = None;
                false
            }
            None => false,
        }
    }

    /// Whether reads bypass the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Measure the real time spent in reads from now on (see [`FileStorage::device_ns`]).
    pub fn time_device(&mut self) {
        crate::cycles::init();
        self.device_ns.get_or_insert(0);
    }


    /// Reads `dst.len()` bytes at `offset`. Bytes past the end of the medium (the tail of a
    /// last block that the file does not fill) read as zeros.
    fn read_into(&self, offset: u64, dst: &mut [u8]) -> Result<(), StorageError> {
        let want = dst.len();
        let mut got = 0;
        while got < want {
            let pos = offset + got as u64;
            if pos >= self.capacity {
                // Past the end recorded at open: only the partial last block gets here
                // (submit_read checked the range), and it reads as zeros.
                dst[got..].fill(0);
                return Ok(());
            }
            match self.file.read_at(&mut dst[got..], pos) {
                Ok(0) => return Err(StorageError::Short { got, want }),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StorageError::Device(format!("read of {want} bytes at {offset}: {e}"))),
            }
        }
        Ok(())
    }
}

fn open_read_only(path: &Path, direct: bool) -> io::Result<File> {
    let flags = if direct { libc::O_DIRECT } else { 0 };
    OpenOptions::new().read(true).custom_flags(flags | libc::O_CLOEXEC).open(path)
}

/// Whether `file` lives on a file system kept in memory (tmpfs, ramfs).
fn in_memory(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes at most one statfs into the pointer it is given, which points
    // at one; the descriptor is open for the call.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it filled the struct (and zeroed() made every byte valid).
    #[allow(clippy::unnecessary_cast)] // f_type is i64 here, narrower on other targets
    let kind = unsafe { st.assume_init() }.f_type as i64;
    kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
}

/// A finished read of `len` bytes in the counters (and a failed one in the log).
fn count_read(counters: &mut StorageCounters, result: &Result<(), StorageError>, len: usize) {
    match result {
        Ok(()) => {
            counters.reads += 1;
            counters.read_bytes += len as u64;
        }
        Err(e) => {
            log::warn!("file storage: {e}");
            counters.errors += 1;
        }
    }
}

fn not_a_medium(path: &Path) -> StorageError {
    StorageError::Device(format!("{}: not a regular file or block device", path.display()))
}

fn open_error(path: &Path, e: io::Error) -> StorageError {
    StorageError::Device(format!("{}: {e}", path.display()))
}

impl Storage for FileStorage {
    fn backend(&self) -> &'static str {
        "file"
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn block_size(&self) -> usize {
        FILE_BLOCK_SIZE
    }

    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        let total = buf_size.checked_next_multiple_of(FILE_BLOCK_SIZE).and_then(|b| b.checked_mul(count));
        if buf_size == 0 || count == 0 || count > u32::MAX as usize || total.is_none_or(|t| t > isize::MAX as usize / 2)
        {
            return Err(StorageError::Device(format!("invalid pool of {count} buffers of {buf_size} bytes")));
        }
        Ok(DmaPool::heap(buf_size, count, FILE_BLOCK_SIZE))
    }

    fn submit_read(
        &mut self,
        tag: u64,
        offset: u64,
        len: usize,
        mut buf: DmaBuf,
    ) -> Result<(), (StorageError, DmaBuf)> {
        let block = FILE_BLOCK_SIZE;
        if !offset.is_multiple_of(block as u64) || !len.is_multiple_of(block) || len > buf.len() {
            self.counters.errors += 1;
            return Err((StorageError::Unaligned { offset, len, block }, buf));
        }
        // The last block may extend past the end of a file whose size is not block-aligned.
        let readable = self.capacity.div_ceil(block as u64) * block as u64;
        if offset.checked_add(len as u64).is_none_or(|end| end > readable) {
            self.counters.errors += 1;
            return Err((StorageError::OutOfRange { offset, len, capacity: self.capacity }, buf));
        }
        if let Some(ring) = &mut self.ring {
            return ring.submit(tag, offset, len, buf);
        }
        if self.done.len() >= FILE_QUEUE_DEPTH {
            return Err((StorageError::QueueFull, buf));
        }
        let t0 = self.device_ns.map(|_| crate::cycles::now());
        let result = self.read_into(offset, &mut buf.as_mut_slice()[..len]);
        if let (Some(t0), Some(d)) = (t0, &mut self.device_ns) {
            *d += crate::cycles::ns_since(t0);
        }
        count_read(&mut self.counters, &result, len);
        self.done.push_back(Completion { tag, buf, result });
        Ok(())
    }

    fn mapped(&mut self, offset: u64, len: usize) -> Option<&[u8]> {
        let block = FILE_BLOCK_SIZE as u64;
        // Unmapped (a drive's stand-in, or a file system that cannot map): no lease to check,
        // and no clock to read on every read.
        if self.mapping.is_none() || !offset.is_multiple_of(block) || !(len as u64).is_multiple_of(block) || !self.check_lease() {
            return None;
        }
        let bytes = self.mapping.as_ref()?.bytes(offset, len)?;
        count_read(&mut self.counters, &Ok(()), len);
        self.counters.mapped_reads += 1;
        Some(bytes)
    }

    fn maps(&self, _offset: u64) -> bool {
        self.mapping.is_some()
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        if self.mapping.is_some() && self.lease_checked.elapsed() >= LEASE_CHECK_EVERY {
            self.check_lease();
        }
        let Some(ring) = &mut self.ring else {
            let n = self.done.len();
            out.extend(self.done.drain(..));
            return n;
        };
        if ring.needs_enter() {
            // The system call stands for the device's doorbell and command processing.
            let t0 = self.device_ns.map(|_| crate::cycles::now());
            let submitted = ring.submit_queued();
            if let (Some(t0), Some(d)) = (t0, &mut self.device_ns) {
                *d += crate::cycles::ns_since(t0);
            }
            if let Err(e) = submitted {
                // EAGAIN/EBUSY (the kernel short of memory or of completion room) or EINTR:
                // the reads stay queued and go with the next poll.
                log::debug!("file storage: io_uring submission deferred: {e}");
            }
        }
        let n = out.len();
        let counters = &mut self.counters;
        ring.reap(self.capacity, |c, len| {
            count_read(counters, &c.result, len);
            out.push(c);
        });
        out.len() - n
    }

    fn in_flight(&self) -> usize {
        self.ring.as_ref().map_or(self.done.len(), UringReads::in_flight)
    }

    fn counters(&self) -> StorageCounters {
        self.counters
    }

    /// Nanoseconds spent reading (or handing reads to io_uring) since
    /// [`FileStorage::time_device`] (0 before).
    fn device_ns(&self) -> u64 {
        self.device_ns.unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// Both ways of reading: every test that reads runs with each.
    const BOTH: [FileIo; 2] = [FileIo::Async, FileIo::Synchronous];

    fn read_one(s: &mut FileStorage, pool: &DmaPool, offset: u64, len: usize) -> Completion {
        let buf = pool.alloc().unwrap();
        s.submit_read(9, offset, len, buf).map_err(|(e, _)| e).unwrap();
        assert_eq!(s.in_flight(), 1);
        let mut out = crate::storage::poll_for(s, 1, std::time::Duration::from_secs(10));
        assert_eq!(out.len(), 1);
        assert_eq!(s.in_flight(), 0);
        out.pop().unwrap()
    }

    #[test]
    fn aligned_reads_return_the_bytes() {
        for io in BOTH {
            let data = pattern(5 * 4096);
            let f = file_with(&data);
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            assert_eq!(s.backend(), "file");
            assert_eq!(s.block_size(), 4096);
            assert_eq!(s.capacity(), data.len() as u64);
            let pool = s.dma_pool(3 * 4096, 2).unwrap();
            let c = read_one(&mut s, &pool, 4096, 2 * 4096);
            assert_eq!(c.tag, 9);
            c.result.unwrap();
            assert_eq!(&c.buf.as_slice()[..8192], &data[4096..3 * 4096]);
            let counters = s.counters();
            assert_eq!((counters.reads, counters.read_bytes, counters.errors), (1, 8192, 0));
        }
    }

    #[test]
    fn unaligned_reads_are_refused() {
        for io in BOTH {
            let f = file_with(&pattern(4 * 4096));
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            let pool = s.dma_pool(8192, 1).unwrap();
            for (offset, len) in [(1u64, 4096usize), (4096, 100), (0, 3 * 4096)] {
                let buf = pool.alloc().unwrap();
                let (e, buf) = s.submit_read(1, offset, len, buf).unwrap_err();
                assert!(matches!(e, StorageError::Unaligned { .. }), "{offset} {len}: {e:?}");
                drop(buf);
            }
            assert_eq!(s.in_flight(), 0);
            assert_eq!(s.counters().errors, 3);
            assert_eq!(pool.available(), 1, "refused buffers come back");
        }
    }

    #[test]
    fn reads_past_the_end_are_refused() {
        for io in BOTH {
            let f = file_with(&pattern(2 * 4096));
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            let pool = s.dma_pool(8192, 1).unwrap();
            for (offset, len) in [(2 * 4096u64, 4096usize), (4096, 8192), (u64::MAX - 4095, 4096)] {
                let (e, buf) = s.submit_read(1, offset, len, pool.alloc().unwrap()).unwrap_err();
                assert!(matches!(e, StorageError::OutOfRange { .. }), "{offset} {len}: {e:?}");
                drop(buf);
            }
            assert_eq!(s.in_flight(), 0);
        }
    }

    #[test]
    fn tail_of_a_partial_last_block_reads_as_zeros() {
        for io in BOTH {
            let data = pattern(4096 + 100);
            let f = file_with(&data);
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            let pool = s.dma_pool(8192, 1).unwrap();
            {
                // Dirty the buffer first so the zeros must come from the read.
                let mut b = pool.alloc().unwrap();
                b.as_mut_slice().fill(0xAA);
            }
            let c = read_one(&mut s, &pool, 0, 8192);
            c.result.as_ref().unwrap();
            let got = c.buf.as_slice();
            assert_eq!(&got[..data.len()], &data[..]);
            assert!(got[data.len()..8192].iter().all(|&b| b == 0));
            // A block wholly past the end is still refused.
            drop(c);
            let (e, _) = s.submit_read(1, 8192, 4096, pool.alloc().unwrap()).unwrap_err();
            assert!(matches!(e, StorageError::OutOfRange { .. }));
        }
    }

    #[test]
    fn queue_is_bounded() {
        for io in BOTH {
            let f = file_with(&pattern(4096));
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            let pool = s.dma_pool(4096, FILE_QUEUE_DEPTH + 1).unwrap();
            for tag in 0..FILE_QUEUE_DEPTH as u64 {
                s.submit_read(tag, 0, 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
            }
            assert_eq!(s.in_flight(), FILE_QUEUE_DEPTH);
            let (e, buf) = s.submit_read(99, 0, 4096, pool.alloc().unwrap()).unwrap_err();
            assert_eq!(e, StorageError::QueueFull);
            drop(buf);
            assert_eq!(pool.available(), 1);
            let mut out = crate::storage::poll_for(&mut s, FILE_QUEUE_DEPTH, std::time::Duration::from_secs(10));
            assert_eq!(out.len(), FILE_QUEUE_DEPTH);
            // io_uring may finish them in any order.
            let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
            tags.sort_unstable();
            assert_eq!(tags, (0..FILE_QUEUE_DEPTH as u64).collect::<Vec<_>>());
            assert!(out.iter().all(|c| c.result.is_ok()));
            out.clear();
            s.submit_read(100, 0, 4096, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
        }
    }

    #[test]
    fn a_file_that_shrinks_after_open_gives_an_error_completion() {
        for io in BOTH {
            let f = file_with(&pattern(3 * 4096));
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            f.as_file().set_len(4096).unwrap();
            let pool = s.dma_pool(8192, 1).unwrap();
            let c = read_one(&mut s, &pool, 4096, 8192);
            assert!(matches!(c.result, Err(StorageError::Short { got: 0, want: 8192 })), "{:?}", c.result);
            assert_eq!(s.counters().errors, 1);
            assert_eq!(s.counters().reads, 0);
            drop(c);
            assert!(s.dma_pool(usize::MAX / 2, 4).is_err());
            assert!(s.dma_pool(4096, 0).is_err());
        }
    }

    #[test]
    fn missing_files_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(FileStorage::open(&dir.path().join("nope")), Err(StorageError::Device(_))));
        assert!(matches!(FileStorage::open(dir.path()), Err(StorageError::Device(_))));
    }

    #[test]
    fn tmpfs_files_are_readable() {
        for io in BOTH {
            let shm = Path::new("/dev/shm");
            if !shm.is_dir() {
                return;
            }
            let data = pattern(4096);
            let mut f = tempfile::NamedTempFile::new_in(shm).unwrap();
            f.write_all(&data).unwrap();
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            let pool = s.dma_pool(4096, 1).unwrap();
            let c = read_one(&mut s, &pool, 0, 4096);
            c.result.unwrap();
            assert_eq!(c.buf.as_slice(), &data[..]);
        }
    }

    /// `bytes` in a file of its own on tmpfs (/dev/shm), closed (no writer holds it).
    pub(crate) fn shm_file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
        let path = dir.path().join("vol");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn a_file_in_memory_is_mapped_and_gives_the_bytes_a_read_gives() {
        let data = pattern(3 * 4096 + 100);
        let (_dir, path) = shm_file(&data);
        let mut s = FileStorage::open(&path).unwrap();
        assert!(s.is_mapped());
        let pool = s.dma_pool(4 * 4096, 1).unwrap();
        let read = read_one(&mut s, &pool, 0, 4 * 4096);
        read.result.unwrap();
        let mapped = s.mapped(0, 4 * 4096).unwrap();
        assert_eq!(mapped, &read.buf.as_slice()[..4 * 4096]);
        assert_eq!(&mapped[..data.len()], &data[..]);
        assert!(mapped[data.len()..].iter().all(|&b| b == 0), "past the end of the file: zeros, as read");
        assert_eq!(s.mapped(4096, 4096).unwrap(), &data[4096..8192]);
        assert_eq!(s.counters().mapped_reads, 2);
        assert_eq!(s.counters().reads, 3);
        // Unaligned, or past the last block: not given (submit_read refuses those).
        assert!(s.mapped(1, 4096).is_none());
        assert!(s.mapped(0, 100).is_none());
        assert!(s.mapped(4096, 4 * 4096).is_none());
        assert_eq!(s.counters().mapped_reads, 2);
        s.unmap();
        assert!(!s.is_mapped() && s.mapped(0, 4096).is_none());
        // Read with pread only when asked, and never a file on disk.
        assert!(!FileStorage::open_with(&path, FileIo::Synchronous).unwrap().is_mapped());
        let f = file_with(&data);
        if !in_memory(f.as_file()) {
            assert!(!FileStorage::open(f.path()).unwrap().is_mapped());
        }
    }

    #[test]
    fn a_file_someone_has_open_for_writing_is_not_mapped() {
        let (_dir, path) = shm_file(&pattern(4096));
        let writer = OpenOptions::new().write(true).open(&path).unwrap();
        let mut s = FileStorage::open(&path).unwrap();
        assert!(!s.is_mapped(), "no lease while a writer holds the file");
        assert!(s.mapped(0, 4096).is_none());
        drop(writer);
    }

    /// Someone opens the file for writing: the kernel holds the opener back until the lease
    /// is given up; the backend gives it up (at a read, or at a poll if none comes), and reads
    /// go on with pread, seeing what the writer wrote.
    #[test]
    fn a_writer_breaks_the_lease_and_reads_go_on_with_pread() {
        for by_poll in [false, true] {
            let data = pattern(2 * 4096);
            let (_dir, path) = shm_file(&data);
            let mut s = FileStorage::open(&path).unwrap();
            assert!(s.is_mapped());
            let writer = {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
                    f.write_all(&[0xee; 4096]).unwrap();
                })
            };
            let start = std::time::Instant::now();
            let mut out = Vec::new();
            while s.is_mapped() && start.elapsed() < std::time::Duration::from_secs(20) {
                if by_poll {
                    s.poll(&mut out);
                } else if let Some(bytes) = s.mapped(0, 4096) {
                    assert_eq!(bytes, &data[..4096], "the writer waits: the bytes are as they were");
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            assert!(!s.is_mapped(), "the lease break was not noticed (by_poll {by_poll})");
            writer.join().unwrap();
            assert!(s.mapped(0, 4096).is_none());
            let pool = s.dma_pool(4096, 1).unwrap();
            let c = read_one(&mut s, &pool, 0, 4096);
            c.result.unwrap();
            assert_eq!(c.buf.as_slice(), &[0xee; 4096][..]);
            assert!(start.elapsed() < std::time::Duration::from_secs(20), "the writer was let go at once, not at lease-break-time");
        }
    }

    /// Whether this kernel lets processes use io_uring (`kernel.io_uring_disabled` 0).
    fn io_uring_allowed() -> bool {
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "0")
    }

    #[test]
    fn disk_files_are_read_through_io_uring_and_files_in_memory_with_pread() {
        let f = file_with(&pattern(4096));
        let s = FileStorage::open(f.path()).unwrap();
        if io_uring_allowed() && !in_memory(f.as_file()) {
            assert_eq!(s.io(), FileIo::Async);
        }
        assert_eq!(FileStorage::open_with(f.path(), FileIo::Synchronous).unwrap().io(), FileIo::Synchronous);
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let g = tempfile::NamedTempFile::new_in(shm).unwrap();
            assert!(in_memory(g.as_file()));
            assert_eq!(FileStorage::open(g.path()).unwrap().io(), FileIo::Synchronous);
        }
    }

    /// A full queue of 64 KiB reads at scattered offsets: every buffer holds its own bytes,
    /// and the next round reuses the buffers (nothing held back by the ring).
    #[test]
    fn a_full_queue_of_scattered_reads_returns_each_its_bytes() {
        const LEN: usize = 64 << 10;
        let blocks = 1024;
        let data = pattern(blocks * 4096);
        let f = file_with(&data);
        for io in BOTH {
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            let pool = s.dma_pool(LEN, FILE_QUEUE_DEPTH).unwrap();
            for round in 0..3u64 {
                let offset = |tag: u64| (tag * 37 + round * 11) % (blocks as u64 - 16) * 4096;
                for tag in 0..FILE_QUEUE_DEPTH as u64 {
                    s.submit_read(tag, offset(tag), LEN, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
                }
                let out = crate::storage::poll_for(&mut s, FILE_QUEUE_DEPTH, std::time::Duration::from_secs(10));
                assert_eq!(out.len(), FILE_QUEUE_DEPTH, "{io:?}");
                for c in &out {
                    c.result.as_ref().unwrap();
                    let at = offset(c.tag) as usize;
                    assert!(c.buf.as_slice()[..LEN] == data[at..at + LEN], "{io:?}: read {} at {at}", c.tag);
                }
            }
            assert_eq!(s.counters().reads, 3 * FILE_QUEUE_DEPTH as u64);
            assert_eq!(pool.available(), FILE_QUEUE_DEPTH);
        }
    }

    /// Dropping the backend with reads in flight waits for them: the buffers come back and
    /// the kernel writes into none after that.
    #[test]
    fn dropping_the_backend_with_reads_in_flight_gives_the_buffers_back() {
        let f = file_with(&pattern(256 * 4096));
        for io in BOTH {
            let mut s = FileStorage::open_with(f.path(), io).unwrap();
            let pool = s.dma_pool(64 << 10, FILE_QUEUE_DEPTH).unwrap();
            for tag in 0..FILE_QUEUE_DEPTH as u64 {
                s.submit_read(tag, tag % 16 * (64 << 10), 64 << 10, pool.alloc().unwrap()).map_err(|(e, _)| e).unwrap();
            }
            // Handed to the kernel by one poll; most still in flight when dropped.
            let mut out = Vec::with_capacity(FILE_QUEUE_DEPTH);
            s.poll(&mut out);
            drop(out);
            drop(s);
            assert_eq!(pool.available(), FILE_QUEUE_DEPTH, "{io:?}");
        }
    }
}
