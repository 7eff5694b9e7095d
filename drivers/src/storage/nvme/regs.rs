//! NVMe controller registers (BAR0): offsets, bitfields, and the [`RegisterAccess`] trait the
//! driver reads and writes them through, so the same code runs on the mapped BAR and on the
//! in-memory model of the unit tests.

/// Controller Capabilities (64 bit).
pub const CAP: usize = 0x00;
/// Version.
pub const VS: usize = 0x08;
/// Interrupt Mask Set: all vectors masked, we poll.
pub const INTMS: usize = 0x0c;
/// Controller Configuration.
pub const CC: usize = 0x14;
/// Controller Status.
pub const CSTS: usize = 0x1c;
/// Admin Queue Attributes.
pub const AQA: usize = 0x24;
/// Admin Submission Queue base address (64 bit).
pub const ASQ: usize = 0x28;
/// Admin Completion Queue base address (64 bit).
pub const ACQ: usize = 0x30;
/// First doorbell register; the others follow with a stride of `4 << CAP.DSTRD`.
pub const DOORBELL_BASE: usize = 0x1000;

/// 32 and 64 bit access to the controller's registers.
///
/// Methods take `&self`: registers are device state shared by every queue of the controller,
/// and each access is a single volatile load or store.
pub trait RegisterAccess: Send + Sync {
    fn read32(&self, offset: usize) -> u32;
    fn write32(&self, offset: usize, value: u32);
    /// 64-bit registers are accessed as two 32-bit halves, low first (allowed by the spec,
    /// and it works on buses that split 64-bit MMIO).
    fn read64(&self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        lo | hi << 32
    }
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
    /// Last resort when the controller ignores CC.EN=0: turn off PCI bus mastering so it can
    /// no longer write into buffers that go back to their owners. Returns whether it did.
    fn stop_dma(&self) -> bool {
        false
    }
}

/// Decoded CAP register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Maximum queue entries supported (1-based; CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// Queues must be physically contiguous.
    pub contiguous_queues_required: bool,
    /// Worst-case time for CSTS.RDY to follow CC.EN, in milliseconds (CAP.TO * 500).
    pub timeout_ms: u64,
    /// Doorbell stride in bytes (4 << CAP.DSTRD).
    pub doorbell_stride: usize,
    /// The NVM command set is supported.
    pub nvm_command_set: bool,
    /// Smallest memory page size in bytes (2 ^ (12 + CAP.MPSMIN)).
    pub min_page_size: usize,
    pub mps_min: u32,
}

impl Capabilities {
    pub fn decode(cap: u64) -> Capabilities {
        let mps_min = ((cap >> 48) & 0xf) as u32;
        Capabilities {
            max_queue_entries: (cap & 0xffff) as u32 + 1,
            contiguous_queues_required: cap >> 16 & 1 == 1,
            timeout_ms: ((cap >> 24) & 0xff) * 500,
            doorbell_stride: 4 << ((cap >> 32) & 0xf),
            nvm_command_set: (cap >> 37) & 1 == 1,
            min_page_size: 1 << (12 + mps_min),
            mps_min,
        }
    }
}

/// CC bits.
pub mod cc {
    pub const EN: u32 = 1;
    /// I/O submission queue entry size: 2^6 = 64 bytes.
    pub const IOSQES_64: u32 = 6 << 16;
    /// I/O completion queue entry size: 2^4 = 16 bytes.
    pub const IOCQES_16: u32 = 4 << 20;
    /// Memory page size field: page = 2^(12 + MPS).
    pub fn mps(mps: u32) -> u32 {
        (mps & 0xf) << 7
    }
    /// Shutdown notification field.
    pub const SHN_MASK: u32 = 3 << 14;
    pub const SHN_NORMAL: u32 = 1 << 14;
}

/// CSTS bits.
pub mod csts {
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 2;
}

/// Version register as "major.minor.tertiary".
pub fn version_string(vs: u32) -> String {
    format!("{}.{}.{}", vs >> 16, (vs >> 8) & 0xff, vs & 0xff)
}

/// Byte offset of submission queue `qid`'s tail doorbell.
pub fn sq_tail_doorbell(qid: u16, stride: usize) -> usize {
    DOORBELL_BASE + (2 * qid as usize) * stride
}

/// Byte offset of completion queue `qid`'s head doorbell.
pub fn cq_head_doorbell(qid: u16, stride: usize) -> usize {
    DOORBELL_BASE + (2 * qid as usize + 1) * stride
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_decode() {
        // MQES=1023, CQR, TO=20 (10 s), DSTRD=1, CSS bit 0 (NVM), MPSMIN=0, MPSMAX=4.
        let cap: u64 = 1023 | 1 << 16 | 20 << 24 | 1 << 32 | 1 << 37 | 4 << 52;
        let c = Capabilities::decode(cap);
        assert_eq!(c.max_queue_entries, 1024);
        assert!(c.contiguous_queues_required);
        assert_eq!(c.timeout_ms, 10_000);
        assert_eq!(c.doorbell_stride, 8);
        assert!(c.nvm_command_set);
        assert_eq!(c.min_page_size, 4096);
        assert_eq!(sq_tail_doorbell(0, 4), 0x1000);
        assert_eq!(cq_head_doorbell(0, 4), 0x1004);
        assert_eq!(sq_tail_doorbell(1, 8), 0x1010);
        assert_eq!(cq_head_doorbell(1, 8), 0x1018);
        assert_eq!(version_string(0x0001_0400), "1.4.0");
    }
}
