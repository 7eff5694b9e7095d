//! Submission and completion queue rings: the 64-byte command and 16-byte completion entry
//! layouts, tail/head bookkeeping, the phase bit, and doorbell writes.
use std::sync::atomic::{fence, Ordering};

use super::memory::DmaRegion;
use super::regs::RegisterAccess;

pub const SQE_SIZE: usize = 64;
pub const CQE_SIZE: usize = 16;

/// Admin command opcodes we use.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
    /// Identify CNS values.
    pub const CNS_NAMESPACE: u32 = 0x00;
    pub const CNS_CONTROLLER: u32 = 0x01;
    pub const CNS_ACTIVE_NAMESPACES: u32 = 0x02;
    /// Feature identifier: Number of Queues.
    pub const FEAT_NUM_QUEUES: u32 = 0x07;
}

/// NVM command set opcodes we use.
pub mod nvm {
    pub const READ: u8 = 0x02;
}

/// One submission queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub opcode: u8,
    pub cid: u16,
    pub nsid: u32,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Command {
    /// Write the entry at byte `offset` of `ring` (PSDT = 0: PRPs, no fused operation).
    pub fn write_to(&self, ring: &DmaRegion, offset: usize) {
        ring.write::<u32>(offset, self.opcode as u32 | (self.cid as u32) << 16);
        ring.write::<u32>(offset + 4, self.nsid);
        ring.write::<u64>(offset + 8, 0);
        ring.write::<u64>(offset + 16, 0); // metadata pointer
        ring.write::<u64>(offset + 24, self.prp1);
        ring.write::<u64>(offset + 32, self.prp2);
        let cdws = [self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15];
        for (i, v) in cdws.iter().enumerate() {
            ring.write::<u32>(offset + 40 + 4 * i, *v);
        }
    }

    /// Decode an entry (the test model reads what the driver wrote).
    pub fn read_from(ring: &DmaRegion, offset: usize) -> Command {
        let dw0 = ring.read::<u32>(offset);
        let cdw = |i: usize| ring.read::<u32>(offset + 40 + 4 * i);
        Command {
            opcode: dw0 as u8,
            cid: (dw0 >> 16) as u16,
            nsid: ring.read::<u32>(offset + 4),
            prp1: ring.read::<u64>(offset + 24),
            prp2: ring.read::<u64>(offset + 32),
            cdw10: cdw(0),
            cdw11: cdw(1),
            cdw12: cdw(2),
            cdw13: cdw(3),
            cdw14: cdw(4),
            cdw15: cdw(5),
        }
    }

    pub fn identify(cns: u32, nsid: u32, prp1: u64) -> Command {
        Command { opcode: admin::IDENTIFY, nsid, prp1, cdw10: cns, ..Default::default() }
    }

    /// Create I/O completion queue `qid` of `entries` entries, physically contiguous, with
    /// interrupts disabled (we poll).
    pub fn create_io_cq(qid: u16, entries: u16, prp1: u64) -> Command {
        Command {
            opcode: admin::CREATE_IO_CQ,
            prp1,
            cdw10: (entries as u32 - 1) << 16 | qid as u32,
            cdw11: 1, // PC=1, IEN=0
            ..Default::default()
        }
    }

    /// Create I/O submission queue `qid` bound to completion queue `cqid`.
    pub fn create_io_sq(qid: u16, entries: u16, cqid: u16, prp1: u64) -> Command {
        Command {
            opcode: admin::CREATE_IO_SQ,
            prp1,
            cdw10: (entries as u32 - 1) << 16 | qid as u32,
            cdw11: (cqid as u32) << 16 | 1, // PC=1, priority ignored (round robin)
            ..Default::default()
        }
    }

    /// Set Features / Number of Queues: ask for `n` I/O submission and completion queues.
    pub fn set_num_queues(n: u16) -> Command {
        let n = n.max(1) as u32 - 1;
        Command { opcode: admin::SET_FEATURES, cdw10: admin::FEAT_NUM_QUEUES, cdw11: n | n << 16, ..Default::default() }
    }

    /// Read `blocks` logical blocks from `lba` of namespace `nsid`.
    pub fn read(nsid: u32, lba: u64, blocks: u32, prp1: u64, prp2: u64) -> Command {
        Command {
            opcode: nvm::READ,
            nsid,
            prp1,
            prp2,
            cdw10: lba as u32,
            cdw11: (lba >> 32) as u32,
            cdw12: blocks - 1,
            ..Default::default()
        }
    }
}

/// The 15-bit status field of a completion (phase bit removed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0);

    pub fn new(sct: u8, sc: u8) -> Status {
        Status((sct as u16 & 7) << 8 | sc as u16)
    }

    pub fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }

    /// Status Code Type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }

    /// Status Code.
    pub fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 >> 14 & 1 == 1
    }

    /// Human-readable text for logs and StorageError::Device.
    pub fn describe(self) -> String {
        let name = match (self.sct(), self.sc()) {
            (0, 0x00) => "successful completion",
            (0, 0x01) => "invalid command opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x03) => "command ID conflict",
            (0, 0x04) => "data transfer error",
            (0, 0x05) => "commands aborted due to power loss notification",
            (0, 0x06) => "internal error",
            (0, 0x07) => "command abort requested",
            (0, 0x08) => "command aborted due to SQ deletion",
            (0, 0x0b) => "invalid namespace or format",
            (0, 0x0d) => "invalid SGL segment descriptor",
            (0, 0x13) => "invalid PRP offset",
            (0, 0x80) => "LBA out of range",
            (0, 0x81) => "capacity exceeded",
            (0, 0x82) => "namespace not ready",
            (1, 0x00) => "invalid completion queue",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (1, _) => "command specific error",
            (2, 0x80) => "write fault",
            (2, 0x81) => "unrecovered read error",
            (2, 0x82) => "end-to-end guard check error",
            (2, 0x85) => "compare failure",
            (2, 0x86) => "access denied",
            (2, _) => "media or data integrity error",
            (3, _) => "path related error",
            (7, _) => "vendor specific error",
            _ => "unknown status",
        };
        format!("{name} (sct {:#x}, sc {:#04x}{})", self.sct(), self.sc(), if self.dnr() { ", do not retry" } else { "" })
    }
}

/// One completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletionEntry {
    /// Command specific result (dword 0).
    pub result: u32,
    /// How far the controller has consumed the submission queue.
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub status: Status,
}

impl CompletionEntry {
    /// Write the entry with phase bit `phase` (the model posts completions this way); the
    /// dword carrying the phase bit is written last.
    pub fn write_to(&self, ring: &DmaRegion, offset: usize, phase: bool) {
        ring.write::<u32>(offset, self.result);
        ring.write::<u32>(offset + 4, 0);
        ring.write::<u32>(offset + 8, self.sq_head as u32 | (self.sq_id as u32) << 16);
        fence(Ordering::Release);
        ring.write::<u32>(offset + 12, self.cid as u32 | (phase as u32) << 16 | (self.status.0 as u32) << 17);
    }
}

/// A submission queue: the host produces at `tail`, the controller consumes up to `head`.
#[derive(Debug)]
pub struct SubmissionQueue {
    ring: DmaRegion,
    entries: u16,
    tail: u16,
    head: u16,
    doorbell: usize,
}

impl SubmissionQueue {
    /// `ring` must hold at least `entries` 64-byte entries.
    pub fn new(ring: DmaRegion, entries: u16, doorbell: usize) -> SubmissionQueue {
        assert!(entries >= 2 && ring.len() >= entries as usize * SQE_SIZE);
        SubmissionQueue { ring, entries, tail: 0, head: 0, doorbell }
    }

    pub fn iova(&self) -> u64 {
        self.ring.iova()
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// One slot always stays empty so that full and empty differ.
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.entries == self.head
    }

    /// Place `cmd` at the tail. The controller sees it after [`Self::ring_doorbell`].
    /// Returns false when the ring is full.
    pub fn push(&mut self, cmd: &Command) -> bool {
        if self.is_full() {
            return false;
        }
        cmd.write_to(&self.ring, self.tail as usize * SQE_SIZE);
        self.tail = (self.tail + 1) % self.entries;
        true
    }

    /// Tell the controller about every entry pushed so far.
    pub fn ring_doorbell(&self, regs: &dyn RegisterAccess) {
        // Entries must be in memory before the controller is told to fetch them.
        fence(Ordering::SeqCst);
        regs.write32(self.doorbell, self.tail as u32);
    }

    /// The controller reported (in a completion) that it has fetched up to `head`.
    pub fn set_head(&mut self, head: u16) {
        if head < self.entries {
            self.head = head;
        }
    }

    /// Back to the state of a freshly created queue (after a controller reset).
    pub fn reset(&mut self) {
        self.ring.zero();
        self.tail = 0;
        self.head = 0;
    }
}

/// A completion queue: the controller produces entries whose phase bit flips on every pass,
/// the host consumes at `head`.
#[derive(Debug)]
pub struct CompletionQueue {
    ring: DmaRegion,
    entries: u16,
    head: u16,
    phase: bool,
    doorbell: usize,
    /// Entries consumed since the head doorbell was last written.
    unreported: u16,
}

impl CompletionQueue {
    /// `ring` must hold at least `entries` 16-byte entries and be zeroed.
    pub fn new(ring: DmaRegion, entries: u16, doorbell: usize) -> CompletionQueue {
        assert!(entries >= 2 && ring.len() >= entries as usize * CQE_SIZE);
        CompletionQueue { ring, entries, head: 0, phase: true, doorbell, unreported: 0 }
    }

    pub fn iova(&self) -> u64 {
        self.ring.iova()
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// The entry at the head if the controller has posted it (its phase bit matches ours).
    pub fn peek(&self) -> Option<CompletionEntry> {
        let off = self.head as usize * CQE_SIZE;
        let dw3 = self.ring.read::<u32>(off + 12);
        if (dw3 >> 16 & 1 == 1) != self.phase {
            return None;
        }
        // The rest of the entry must not be read before the phase bit said it is complete.
        fence(Ordering::Acquire);
        let dw2 = self.ring.read::<u32>(off + 8);
        Some(CompletionEntry {
            result: self.ring.read::<u32>(off),
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            status: Status((dw3 >> 17) as u16),
        })
    }

    /// Consume the head entry; the phase we expect flips when the head wraps.
    pub fn advance(&mut self) {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.unreported += 1;
    }

    /// Give consumed entries back to the controller (one doorbell write per batch).
    pub fn ring_doorbell(&mut self, regs: &dyn RegisterAccess) {
        if self.unreported > 0 {
            regs.write32(self.doorbell, self.head as u32);
            self.unreported = 0;
        }
    }

    pub fn reset(&mut self) {
        self.ring.zero();
        self.head = 0;
        self.phase = true;
        self.unreported = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::nvme::model::FakeDma;
    use crate::storage::nvme::memory::DmaMemory;

    #[test]
    fn command_round_trips_through_ring_layout() {
        let dma = FakeDma::new();
        let ring = dma.alloc(4096).unwrap();
        let cmd = Command::read(1, 0x1_2345_6789, 8, 0x1000, 0x2000);
        let cmd = Command { cid: 77, ..cmd };
        cmd.write_to(&ring, 128);
        assert_eq!(Command::read_from(&ring, 128), cmd);
        assert_eq!(ring.read::<u32>(128 + 40), 0x2345_6789);
        assert_eq!(ring.read::<u32>(128 + 44), 1);
        assert_eq!(ring.read::<u32>(128 + 48), 7, "NLB is zero-based");
    }

    #[test]
    fn completion_phase_flips_on_wrap() {
        let dma = FakeDma::new();
        let mut cq = CompletionQueue::new(dma.alloc(4096).unwrap(), 4, 0x1004);
        fn post(cq: &CompletionQueue, slot: usize, cid: u16, phase: bool) {
            CompletionEntry { result: 0, sq_head: 0, sq_id: 1, cid, status: Status::SUCCESS }
                .write_to(&cq.ring, slot * CQE_SIZE, phase)
        }
        assert!(cq.peek().is_none());
        for i in 0..4 {
            post(&cq, i, i as u16, true);
        }
        for i in 0..4 {
            assert_eq!(cq.peek().unwrap().cid, i);
            cq.advance();
        }
        // Stale entries of the previous pass (phase 1) are not new completions.
        assert!(cq.peek().is_none());
        post(&cq, 0, 9, false);
        assert_eq!(cq.peek().unwrap().cid, 9);
    }

    #[test]
    fn submission_queue_keeps_one_slot_free() {
        let dma = FakeDma::new();
        let mut sq = SubmissionQueue::new(dma.alloc(4096).unwrap(), 4, 0x1000);
        let cmd = Command::default();
        assert!(sq.push(&cmd) && sq.push(&cmd) && sq.push(&cmd));
        assert!(!sq.push(&cmd), "4 entries hold 3 commands");
        sq.set_head(2);
        assert!(sq.push(&cmd) && sq.push(&cmd));
        assert!(!sq.push(&cmd));
    }

    #[test]
    fn status_text_names_media_errors() {
        let s = Status::new(2, 0x81);
        assert!(!s.is_success());
        assert!(s.describe().starts_with("unrecovered read error"), "{}", s.describe());
        assert!(Status::SUCCESS.is_success());
    }
}
