//! A small in-memory NVMe controller behind [`RegisterAccess`], and fake DMA memory with its
//! own IOVA space, for the unit tests (and, with the cargo feature `nvme-model`, the
//! appliance's tests: never part of a normal build).
//!
//! The model decodes commands and PRPs itself (independently of the driver's encoders),
//! processes a submission doorbell at once (or holds commands until [`Model::flush`]), and
//! posts completions with the phase bit. It counts protocol mistakes of the driver (doorbells
//! of unknown queues, tails out of range, enabling with bad entry sizes) so tests can assert
//! there were none. Faults: media errors on chosen LBAs, a controller that stops answering
//! until it is reset, and one that never comes back.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::memory::{DmaMemory, DmaRegion};
use super::regs::{self, RegisterAccess};
use crate::storage::StorageError;

/// Where fake IOVAs start: far from any heap address, so a driver that hands the device a
/// virtual address instead of an IOVA gets a data transfer error.
const IOVA_BASE: u64 = 0x40_0000_0000;

#[derive(Default)]
struct FakeDmaInner {
    /// iova -> (virtual address, length)
    regions: BTreeMap<u64, (usize, usize)>,
    next_iova: u64,
}

/// Heap memory registered under fake IOVAs; the model reaches it only by IOVA.
#[derive(Clone, Default)]
pub struct FakeDma {
    inner: Arc<Mutex<FakeDmaInner>>,
}

impl FakeDma {
    pub fn new() -> FakeDma {
        let dma = FakeDma::default();
        dma.inner.lock().unwrap().next_iova = IOVA_BASE;
        dma
    }

    /// Live regions (to check nothing leaks).
    pub fn live_regions(&self) -> usize {
        self.inner.lock().unwrap().regions.len()
    }

    /// The host address of `len` bytes at `iova`, if they lie inside one region.
    fn translate(&self, iova: u64, len: usize) -> Option<*mut u8> {
        let inner = self.inner.lock().unwrap();
        let (&base, &(va, rlen)) = inner.regions.range(..=iova).next_back()?;
        let off = (iova - base) as usize;
        (off + len <= rlen).then(|| (va + off) as *mut u8)
    }

    pub fn write(&self, iova: u64, data: &[u8]) -> bool {
        match self.translate(iova, data.len()) {
            // SAFETY: translate checked the range lies inside a live region we allocated.
            Some(p) => unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) },
            None => return false,
        }
        true
    }

    pub fn read(&self, iova: u64, out: &mut [u8]) -> bool {
        match self.translate(iova, out.len()) {
            // SAFETY: translate checked the range lies inside a live region we allocated.
            Some(p) => unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) },
            None => return false,
        }
        true
    }

    pub fn read_u64(&self, iova: u64) -> u64 {
        let mut b = [0u8; 8];
        assert!(self.read(iova, &mut b), "iova {iova:#x} not mapped");
        u64::from_le_bytes(b)
    }
}

impl DmaMemory for FakeDma {
    fn alloc(&self, len: usize) -> Result<DmaRegion, StorageError> {
        let len = len.max(1).div_ceil(4096) * 4096;
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
        let iova = {
            let mut inner = self.inner.lock().unwrap();
            let iova = inner.next_iova;
            // A guard gap between regions: running off the end does not land in the next.
            inner.next_iova += len as u64 + 4096;
            inner.regions.insert(iova, (ptr.as_ptr() as usize, len));
            iova
        };
        let me = self.clone();
        let release = Box::new(move |p: NonNull<u8>, l: usize| {
            me.inner.lock().unwrap().regions.remove(&iova);
            // SAFETY: allocated above with this layout; the region is released once.
            unsafe { std::alloc::dealloc(p.as_ptr(), std::alloc::Layout::from_size_align(l, 4096).unwrap()) }
        });
        // SAFETY: we own `len` zeroed bytes until release; the model sees them at `iova`.
        Ok(unsafe { DmaRegion::new(ptr, iova, len, release) })
    }
}

/// The byte a namespace holds at byte offset `pos` (position dependent, so a read of the
/// wrong block or into the wrong place shows).
pub fn pattern(pos: u64) -> u8 {
    let block = pos / 512;
    (block.wrapping_mul(0x9e37_79b9) >> 13) as u8 ^ (pos as u8).wrapping_mul(7)
}

/// Shape of the modelled controller.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// CAP.MQES (0-based maximum queue entries).
    pub mqes: u16,
    /// CAP.DSTRD.
    pub dstrd: u8,
    /// CAP.TO in 500 ms units.
    pub timeout_units: u8,
    /// Identify MDTS (0 = no limit).
    pub mdts: u8,
    /// LBA data size exponent of the format in use (9 = 512, 12 = 4096).
    pub lbads: u8,
    /// Metadata bytes per block of the format in use.
    pub metadata: u16,
    pub blocks: u64,
    /// I/O queues the controller grants.
    pub max_io_queues: u16,
    /// CSTS reads before RDY follows CC.EN.
    pub ready_delay_reads: u32,
    /// What namespace 1 holds: these bytes (zeros past their end), or [`pattern`] when None.
    pub image: Option<Image>,
}

/// The bytes of a modelled namespace (a media volume, in the appliance's tests).
#[derive(Clone)]
pub struct Image(pub Arc<[u8]>);

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({} bytes)", self.0.len())
    }
}

impl ModelConfig {
    /// A controller whose namespace 1 holds `bytes` in 512-byte blocks (rounded up).
    pub fn with_image(bytes: &[u8]) -> ModelConfig {
        ModelConfig { blocks: (bytes.len() as u64).div_ceil(512).max(1), image: Some(Image(bytes.into())), ..ModelConfig::default() }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            mqes: 1023,
            dstrd: 0,
            timeout_units: 2,
            mdts: 0,
            lbads: 9,
            metadata: 0,
            blocks: 1 << 20,
            max_io_queues: 8,
            ready_delay_reads: 3,
            image: None,
        }
    }
}

#[derive(Debug)]
struct Sq {
    base: u64,
    entries: u32,
    cqid: u16,
    head: u32,
    tail: u32,
}

#[derive(Debug)]
struct Cq {
    base: u64,
    entries: u32,
    tail: u32,
    head: u32,
    phase: bool,
    /// Completions waiting for room in the ring.
    backlog: VecDeque<[u32; 4]>,
    posted: u64,
}

#[derive(Default)]
struct State {
    cc: u32,
    rdy: bool,
    rdy_pending: Option<(bool, u32)>,
    aqa: u32,
    asq: u64,
    acq: u64,
    intms: u32,
    sqs: HashMap<u16, Sq>,
    cqs: HashMap<u16, Cq>,
    /// Commands fetched but not completed yet (flush mode): (sqid, command dwords).
    held: Vec<(u16, [u32; 16])>,
    hold: bool,
    hung: bool,
    dead: bool,
    dma_stopped: bool,
    bad_lbas: HashSet<u64>,
    stats: ModelStats,
}

/// What the model saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    pub enables: u64,
    pub disables: u64,
    pub sq_doorbells: u64,
    pub cq_doorbells: u64,
    pub reads: u64,
    pub prp_list_reads: u64,
    /// Completion queue wraps (phase flips) on I/O queues.
    pub phase_flips: u64,
    pub io_queues_created: u64,
    /// Driver mistakes; every test expects zero unless it provokes one.
    pub protocol_errors: Vec<String>,
}

/// The modelled controller.
pub struct Model {
    config: ModelConfig,
    dma: FakeDma,
    state: Mutex<State>,
}

impl Model {
    pub fn new(dma: FakeDma, config: ModelConfig) -> Arc<Model> {
        Arc::new(Model { config, dma, state: Mutex::new(State::default()) })
    }

    pub fn stats(&self) -> ModelStats {
        self.state.lock().unwrap().stats.clone()
    }

    /// Stop answering doorbells until the next reset.
    pub fn hang(&self) {
        self.state.lock().unwrap().hung = true;
    }

    /// Stop answering anything, CC writes included: a reset does not bring it back.
    pub fn die(&self) {
        let mut s = self.state.lock().unwrap();
        s.hung = true;
        s.dead = true;
    }

    /// Hold fetched commands until [`Self::flush`].
    pub fn hold(&self, hold: bool) {
        self.state.lock().unwrap().hold = hold;
    }

    /// Complete held commands, newest first (the controller may complete in any order).
    pub fn flush(&self) {
        let mut s = self.state.lock().unwrap();
        let held = std::mem::take(&mut s.held);
        for (sqid, cmd) in held.into_iter().rev() {
            self.execute(&mut s, sqid, cmd);
        }
    }

    pub fn fail_lba(&self, lba: u64) {
        self.state.lock().unwrap().bad_lbas.insert(lba);
    }

    pub fn cc(&self) -> u32 {
        self.state.lock().unwrap().cc
    }

    /// Whether the driver cut the controller off the bus.
    pub fn dma_stopped(&self) -> bool {
        self.state.lock().unwrap().dma_stopped
    }

    fn page_size(&self) -> usize {
        4096
    }

    fn stride(&self) -> usize {
        4 << self.config.dstrd
    }

    fn cap(&self) -> u64 {
        self.config.mqes as u64 | 1 << 16 | (self.config.timeout_units as u64) << 24 | (self.config.dstrd as u64) << 32 | 1 << 37
    }

    fn error(&self, s: &mut State, what: String) {
        s.stats.protocol_errors.push(what);
    }

    fn set_cc(&self, s: &mut State, value: u32) {
        if s.dead {
            return;
        }
        let was = s.cc & 1 == 1;
        let now = value & 1 == 1;
        s.cc = value;
        if !was && now {
            s.stats.enables += 1;
            let iosqes = (value >> 16) & 0xf;
            let iocqes = (value >> 20) & 0xf;
            let mps = (value >> 7) & 0xf;
            if iosqes != 6 || iocqes != 4 || mps != 0 || (value >> 4) & 7 != 0 {
                self.error(s, format!("enabled with CC {value:#x}"));
            }
            let sq_entries = (s.aqa & 0xfff) + 1;
            let cq_entries = ((s.aqa >> 16) & 0xfff) + 1;
            if !s.asq.is_multiple_of(4096) || !s.acq.is_multiple_of(4096) || sq_entries < 2 || cq_entries < 2 {
                self.error(s, format!("bad admin queue set-up: ASQ {:#x} ACQ {:#x} AQA {:#x}", s.asq, s.acq, s.aqa));
            }
            s.sqs.insert(0, Sq { base: s.asq, entries: sq_entries, cqid: 0, head: 0, tail: 0 });
            s.cqs.insert(0, Cq { base: s.acq, entries: cq_entries, tail: 0, head: 0, phase: true, backlog: VecDeque::new(), posted: 0 });
            s.hung = false;
            s.rdy_pending = Some((true, self.config.ready_delay_reads));
        } else if was && !now {
            s.stats.disables += 1;
            s.sqs.clear();
            s.cqs.clear();
            s.held.clear();
            s.hung = false;
            s.rdy_pending = Some((false, self.config.ready_delay_reads));
        }
    }

    fn doorbell(&self, s: &mut State, offset: usize, value: u32) {
        let index = (offset - regs::DOORBELL_BASE) / self.stride();
        if !(offset - regs::DOORBELL_BASE).is_multiple_of(self.stride()) {
            return self.error(s, format!("doorbell write at {offset:#x} between strides"));
        }
        let qid = (index / 2) as u16;
        if index % 2 == 1 {
            s.stats.cq_doorbells += 1;
            let Some(cq) = s.cqs.get_mut(&qid) else {
                return self.error(s, format!("head doorbell of missing CQ {qid}"));
            };
            if value >= cq.entries {
                return self.error(s, format!("CQ {qid} head {value} out of range"));
            }
            cq.head = value;
            self.drain_backlog(s, qid);
            return;
        }
        s.stats.sq_doorbells += 1;
        let Some(sq) = s.sqs.get_mut(&qid) else {
            return self.error(s, format!("tail doorbell of missing SQ {qid}"));
        };
        if value >= sq.entries {
            return self.error(s, format!("SQ {qid} tail {value} out of range"));
        }
        sq.tail = value;
        if s.hung || !s.rdy {
            return;
        }
        // Fetch everything between head and tail.
        loop {
            let sq = s.sqs.get_mut(&qid).expect("checked above");
            if sq.head == sq.tail {
                break;
            }
            let addr = sq.base + sq.head as u64 * 64;
            sq.head = (sq.head + 1) % sq.entries;
            let mut raw = [0u8; 64];
            if !self.dma.read(addr, &mut raw) {
                self.error(s, format!("SQ {qid} entry at unmapped iova {addr:#x}"));
                break;
            }
            let mut cmd = [0u32; 16];
            for (i, dw) in cmd.iter_mut().enumerate() {
                *dw = u32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().unwrap());
            }
            if s.hold && qid != 0 {
                s.held.push((qid, cmd));
            } else {
                self.execute(s, qid, cmd);
            }
        }
    }

    /// Run one command and post its completion.
    fn execute(&self, s: &mut State, sqid: u16, cmd: [u32; 16]) {
        let (result, status) = if sqid == 0 { self.admin(s, &cmd) } else { self.io(s, &cmd) };
        let Some(sq) = s.sqs.get(&sqid) else { return };
        let (cqid, sq_head) = (sq.cqid, sq.head);
        let cid = cmd[0] >> 16;
        let entry = [result, 0, sq_head | (sqid as u32) << 16, cid | (status as u32) << 17];
        s.cqs.get_mut(&cqid).expect("SQ bound to an existing CQ").backlog.push_back(entry);
        self.drain_backlog(s, cqid);
    }

    fn drain_backlog(&self, s: &mut State, cqid: u16) {
        let Some(cq) = s.cqs.get_mut(&cqid) else { return };
        while (cq.tail + 1) % cq.entries != cq.head {
            let Some(mut entry) = cq.backlog.pop_front() else { break };
            entry[3] |= (cq.phase as u32) << 16;
            let mut bytes = [0u8; 16];
            for (i, dw) in entry.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&dw.to_le_bytes());
            }
            // Everything but the phase dword first, as a device would order its writes.
            let addr = cq.base + cq.tail as u64 * 16;
            let ok = self.dma.write(addr, &bytes[..12]) && self.dma.write(addr + 12, &bytes[12..]);
            assert!(ok, "CQ {cqid} ring at unmapped iova {addr:#x}");
            cq.posted += 1;
            cq.tail += 1;
            if cq.tail == cq.entries {
                cq.tail = 0;
                cq.phase = !cq.phase;
                if cqid != 0 {
                    s.stats.phase_flips += 1;
                }
            }
        }
    }

    /// Data-pointer segments of a transfer described by PRP1/PRP2, as the spec reads them.
    fn prp_segments(&self, s: &mut State, prp1: u64, prp2: u64, len: usize) -> Result<Vec<(u64, usize)>, u16> {
        const INVALID_PRP_OFFSET: u16 = 0x13;
        const DATA_TRANSFER_ERROR: u16 = 0x04;
        let page = self.page_size() as u64;
        if !prp1.is_multiple_of(4) {
            return Err(INVALID_PRP_OFFSET);
        }
        let first = ((page - prp1 % page) as usize).min(len);
        let mut segs = vec![(prp1, first)];
        let mut left = len - first;
        if left == 0 {
            return Ok(segs);
        }
        if left <= page as usize {
            if !prp2.is_multiple_of(page) {
                return Err(INVALID_PRP_OFFSET);
            }
            segs.push((prp2, left));
            return Ok(segs);
        }
        s.stats.prp_list_reads += 1;
        let mut list = prp2;
        if !list.is_multiple_of(8) {
            return Err(INVALID_PRP_OFFSET);
        }
        while left > 0 {
            let mut b = [0u8; 8];
            if !self.dma.read(list, &mut b) {
                return Err(DATA_TRANSFER_ERROR);
            }
            let entry = u64::from_le_bytes(b);
            // The last entry of a list page points at the next list when more pages follow.
            let last_in_page = (list + 8).is_multiple_of(page);
            if last_in_page && left > page as usize {
                list = entry;
                continue;
            }
            if entry % page != 0 {
                return Err(INVALID_PRP_OFFSET);
            }
            let n = left.min(page as usize);
            segs.push((entry, n));
            left -= n;
            list += 8;
        }
        Ok(segs)
    }

    fn write_data(&self, s: &mut State, prp1: u64, prp2: u64, data: &[u8]) -> u16 {
        match self.prp_segments(s, prp1, prp2, data.len()) {
            Err(sc) => sc,
            Ok(segs) => {
                let mut done = 0;
                for (iova, n) in segs {
                    if !self.dma.write(iova, &data[done..done + n]) {
                        return 0x04; // data transfer error
                    }
                    done += n;
                }
                0
            }
        }
    }

    fn admin(&self, s: &mut State, cmd: &[u32; 16]) -> (u32, u16) {
        let opcode = cmd[0] as u8;
        let nsid = cmd[1];
        let prp1 = cmd[6] as u64 | (cmd[7] as u64) << 32;
        let prp2 = cmd[8] as u64 | (cmd[9] as u64) << 32;
        let (cdw10, cdw11) = (cmd[10], cmd[11]);
        let sc = |sct: u16, sc: u16| sct << 8 | sc;
        match opcode {
            0x06 => {
                let mut page = vec![0u8; 4096];
                match (cdw10 & 0xff, nsid) {
                    (1, _) => {
                        page[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                        page[4..24].copy_from_slice(b"MODEL0001           ");
                        let mut mn = [b' '; 40];
                        mn[..10].copy_from_slice(b"nvme-model");
                        page[24..64].copy_from_slice(&mn);
                        page[64..72].copy_from_slice(b"1.0     ");
                        page[77] = self.config.mdts;
                        page[516..520].copy_from_slice(&2u32.to_le_bytes());
                    }
                    (2, _) => {
                        page[0..4].copy_from_slice(&1u32.to_le_bytes());
                        page[4..8].copy_from_slice(&2u32.to_le_bytes());
                    }
                    (0, 1) => {
                        for o in [0, 8, 16] {
                            page[o..o + 8].copy_from_slice(&self.config.blocks.to_le_bytes());
                        }
                        page[25] = 1; // two formats
                        page[26] = 1; // format 1 in use
                        let lbaf0 = 9u32 << 16;
                        let lbaf1 = (self.config.lbads as u32) << 16 | self.config.metadata as u32;
                        page[128..132].copy_from_slice(&lbaf0.to_le_bytes());
                        page[132..136].copy_from_slice(&lbaf1.to_le_bytes());
                    }
                    _ => return (0, sc(0, 0x0b)),
                }
                (0, self.write_data(s, prp1, prp2, &page))
            }
            0x09 if cdw10 & 0xff == 0x07 => {
                let want = (cdw11 & 0xffff).min(self.config.max_io_queues as u32 - 1);
                (want | want << 16, 0)
            }
            0x05 => {
                let qid = (cdw10 & 0xffff) as u16;
                let entries = (cdw10 >> 16) + 1;
                if qid == 0 || s.cqs.contains_key(&qid) || qid > self.config.max_io_queues {
                    return (0, sc(1, 0x01));
                }
                if entries > self.config.mqes as u32 + 1 || entries < 2 {
                    return (0, sc(1, 0x02));
                }
                if cdw11 & 1 == 0 || cdw11 & 2 != 0 || !prp1.is_multiple_of(4096) {
                    return (0, sc(0, 0x02));
                }
                s.cqs.insert(qid, Cq { base: prp1, entries, tail: 0, head: 0, phase: true, backlog: VecDeque::new(), posted: 0 });
                (0, 0)
            }
            0x01 => {
                let qid = (cdw10 & 0xffff) as u16;
                let entries = (cdw10 >> 16) + 1;
                let cqid = (cdw11 >> 16) as u16;
                if !s.cqs.contains_key(&cqid) || cqid == 0 {
                    return (0, sc(1, 0x00));
                }
                if qid == 0 || s.sqs.contains_key(&qid) || qid > self.config.max_io_queues {
                    return (0, sc(1, 0x01));
                }
                if entries > self.config.mqes as u32 + 1 || entries < 2 {
                    return (0, sc(1, 0x02));
                }
                if cdw11 & 1 == 0 || !prp1.is_multiple_of(4096) {
                    return (0, sc(0, 0x02));
                }
                s.sqs.insert(qid, Sq { base: prp1, entries, cqid, head: 0, tail: 0 });
                s.stats.io_queues_created += 1;
                (0, 0)
            }
            _ => (0, sc(0, 0x01)),
        }
    }

    fn io(&self, s: &mut State, cmd: &[u32; 16]) -> (u32, u16) {
        let opcode = cmd[0] as u8;
        if opcode != 0x02 {
            return (0, 0x01);
        }
        if cmd[1] != 1 {
            return (0, 0x0b);
        }
        let prp1 = cmd[6] as u64 | (cmd[7] as u64) << 32;
        let prp2 = cmd[8] as u64 | (cmd[9] as u64) << 32;
        let slba = cmd[10] as u64 | (cmd[11] as u64) << 32;
        let nlb = (cmd[12] & 0xffff) as u64 + 1;
        if slba + nlb > self.config.blocks {
            return (0, 0x80);
        }
        let lba_size = 1usize << self.config.lbads;
        let len = nlb as usize * lba_size;
        if self.config.mdts != 0 && len > self.page_size() << self.config.mdts {
            return (0, 0x02);
        }
        if (slba..slba + nlb).any(|l| s.bad_lbas.contains(&l)) {
            return (0, 2 << 8 | 0x81);
        }
        let start = slba * lba_size as u64;
        let data: Vec<u8> = match &self.config.image {
            Some(Image(bytes)) => (start..start + len as u64).map(|p| bytes.get(p as usize).copied().unwrap_or(0)).collect(),
            None => (0..len as u64).map(|i| pattern(start + i)).collect(),
        };
        s.stats.reads += 1;
        (0, self.write_data(s, prp1, prp2, &data))
    }
}

impl RegisterAccess for Model {
    fn stop_dma(&self) -> bool {
        self.state.lock().unwrap().dma_stopped = true;
        true
    }

    fn read32(&self, offset: usize) -> u32 {
        let mut s = self.state.lock().unwrap();
        match offset {
            regs::CAP => self.cap() as u32,
            0x04 => (self.cap() >> 32) as u32,
            regs::VS => 0x0001_0400,
            regs::INTMS => s.intms,
            regs::CC => s.cc,
            regs::CSTS => {
                if let Some((target, left)) = s.rdy_pending {
                    if left == 0 {
                        s.rdy = target;
                        s.rdy_pending = None;
                    } else {
                        s.rdy_pending = Some((target, left - 1));
                    }
                }
                s.rdy as u32
            }
            regs::AQA => s.aqa,
            o if o == regs::ASQ || o == regs::ASQ + 4 || o == regs::ACQ || o == regs::ACQ + 4 => {
                let v = if o < regs::ACQ { s.asq } else { s.acq };
                if o % 8 == 0 { v as u32 } else { (v >> 32) as u32 }
            }
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.state.lock().unwrap();
        let s = &mut *s;
        match offset {
            regs::CC => self.set_cc(s, value),
            regs::INTMS => s.intms |= value,
            regs::AQA => s.aqa = value,
            regs::ASQ => s.asq = s.asq & !0xffff_ffff | value as u64,
            o if o == regs::ASQ + 4 => s.asq = s.asq & 0xffff_ffff | (value as u64) << 32,
            regs::ACQ => s.acq = s.acq & !0xffff_ffff | value as u64,
            o if o == regs::ACQ + 4 => s.acq = s.acq & 0xffff_ffff | (value as u64) << 32,
            o if o >= regs::DOORBELL_BASE => {
                if !s.dead {
                    self.doorbell(s, o, value)
                }
            }
            o => self.error(s, format!("write of {value:#x} to read-only or unknown register {o:#x}")),
        }
    }
}
