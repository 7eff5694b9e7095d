//! What the fuzz targets share: a byte reader over the fuzz input, an in-memory storage backend
//! (with a fault schedule), a small packed volume, and frame builders for the network target.
pub mod net;

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use drivers::storage::{Completion, DmaBuf, DmaPool, Storage, StorageCounters, StorageError};

/// Reads the fuzz input front to back; past the end every read gives zeros / empty slices.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// What the in-memory backend does with one submitted read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Ok,
    /// Completes with a device error.
    DeviceError,
    /// Refused at submission as back-pressure (queue full).
    QueueFull,
    /// Completes only after the next poll (a slow drive).
    Late,
}

/// A medium in memory, 4096-byte blocks, completions at the next poll. `faults` is cycled
/// over the submitted reads (empty: every read succeeds).
pub struct MemStorage {
    data: Arc<Vec<u8>>,
    faults: Vec<Fault>,
    next_fault: usize,
    done: VecDeque<Completion>,
    late: Vec<Completion>,
    counters: StorageCounters,
}

pub const MEM_BLOCK: usize = 4096;
pub const MEM_QUEUE_DEPTH: usize = 64;

impl MemStorage {
    pub fn new(data: Arc<Vec<u8>>, faults: Vec<Fault>) -> Self {
        MemStorage { data, faults, next_fault: 0, done: VecDeque::new(), late: Vec::new(), counters: StorageCounters::default() }
    }
}

impl Storage for MemStorage {
    fn backend(&self) -> &'static str {
        "memory"
    }
    fn capacity(&self) -> u64 {
        self.data.len() as u64
    }
    fn block_size(&self) -> usize {
        MEM_BLOCK
    }
    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        if buf_size == 0 || count == 0 || buf_size > 1 << 24 || count > 1 << 16 {
            return Err(StorageError::Device(format!("invalid pool of {count} buffers of {buf_size} bytes")));
        }
        Ok(DmaPool::heap(buf_size, count, MEM_BLOCK))
    }
    fn submit_read(&mut self, tag: u64, offset: u64, len: usize, mut buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        if !offset.is_multiple_of(MEM_BLOCK as u64) || !len.is_multiple_of(MEM_BLOCK) || len > buf.len() {
            self.counters.errors += 1;
            return Err((StorageError::Unaligned { offset, len, block: MEM_BLOCK }, buf));
        }
        let readable = (self.data.len() as u64).div_ceil(MEM_BLOCK as u64) * MEM_BLOCK as u64;
        if offset.checked_add(len as u64).is_none_or(|end| end > readable) {
            self.counters.errors += 1;
            return Err((StorageError::OutOfRange { offset, len, capacity: self.capacity() }, buf));
        }
        if self.done.len() + self.late.len() >= MEM_QUEUE_DEPTH {
            return Err((StorageError::QueueFull, buf));
        }
        let fault = if self.faults.is_empty() {
            Fault::Ok
        } else {
            let f = self.faults[self.next_fault % self.faults.len()];
            self.next_fault += 1;
            f
        };
        if fault == Fault::QueueFull {
            return Err((StorageError::QueueFull, buf));
        }
        let dst = &mut buf.as_mut_slice()[..len];
        let start = (offset as usize).min(self.data.len());
        let end = (offset as usize + len).min(self.data.len());
        dst[..end - start].copy_from_slice(&self.data[start..end]);
        dst[end - start..].fill(0);
        let result = if fault == Fault::DeviceError {
            self.counters.errors += 1;
            Err(StorageError::Device("injected fault".into()))
        } else {
            self.counters.reads += 1;
            self.counters.read_bytes += len as u64;
            Ok(())
        };
        let c = Completion { tag, buf, result };
        if fault == Fault::Late {
            self.late.push(c);
        } else {
            self.done.push_back(c);
        }
        Ok(())
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        // Late reads complete at the poll after this one.
        self.done.extend(self.late.drain(..));
        n
    }
    fn in_flight(&self) -> usize {
        self.done.len() + self.late.len()
    }
    fn counters(&self) -> StorageCounters {
        self.counters
    }
}

/// Paths of the fixture volume's files and their contents.
pub fn fixture_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("index.html", b"<html><body>hello</body></html>\n".to_vec()),
        ("empty.txt", Vec::new()),
        ("hls/index.m3u8", b"#EXTM3U\n#EXT-X-VERSION:3\nseg-1.ts\n".to_vec()),
        ("hls/seg-1.ts", (0..40_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()),
        ("data.json", b"{\"a\": [1, 2, 3]}".to_vec()),
    ]
}

/// The fixture packed into a volume image (with `appliance::volume::pack`), built once.
pub fn fixture_volume() -> Arc<Vec<u8>> {
    static VOL: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    VOL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("apl-fuzz-fixture-{}", std::process::id()));
        let tree = dir.join("tree");
        for (p, bytes) in fixture_files() {
            let full = tree.join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, bytes).unwrap();
        }
        let vol = dir.join("media.vol");
        appliance::volume::pack(&tree, &vol).expect("pack the fixture volume");
        let bytes = std::fs::read(&vol).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(bytes)
    })
    .clone()
}
