//! Userspace NVMe driver over vfio: owns a controller from reset to I/O, with one polled
//! I/O queue pair per core serving reads of namespace 1 into DMA buffers.
//!
//! - [`vfio`]: container, group, device, BAR0, DMA mappings (the only place that talks to
//!   the kernel).
//! - [`regs`]: register layout, behind [`RegisterAccess`] so the same code drives the mapped
//!   BAR and the in-memory model of the unit tests.
//! - [`queue`], [`prp`], [`memory`]: rings, PRP lists and DMA memory.
//! - Here: [`NvmeController`] (reset, admin queue, identify, queue creation, recovery) and
//!   [`NvmeStorage`] (one I/O queue pair implementing [`Storage`]).
//!
//! Recovery: a read older than [`NvmeConfig::command_timeout`] means the controller stopped
//! answering. Its queue resets the controller (CC.EN=0 stops all DMA, then the admin queue
//! is rebuilt); that read completes with [`StorageError::Timeout`], the other reads in flight
//! on every queue complete with [`StorageError::Device`], and each queue re-creates its I/O
//! queue pair the next time it is used. Only after the reset does a buffer the device may
//! have been writing go back to the caller. A controller that does not even stop (CSTS.RDY
//! stays 1 past CAP.TO) loses bus mastering, its reads fail, and its queues stay failed.
//! The reset runs on the core that noticed, which waits for it (up to CAP.TO).
pub mod memory;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod vfio;

#[cfg(any(test, feature = "nvme-model"))]
pub mod model;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

pub use memory::{DmaMemory, DmaRegion};
pub use regs::RegisterAccess;

use super::dma::Region;
use super::{Completion, DmaBuf, DmaPool, Storage, StorageCounters, StorageError};
use prp::PrpLists;
use queue::{Command, CompletionEntry, CompletionQueue, SubmissionQueue, CQE_SIZE, SQE_SIZE};
use regs::{cc, csts, Capabilities};

/// Reads are issued in units of this many bytes (volumes are 4 KiB aligned).
pub const BLOCK_SIZE: usize = 4096;
const ADMIN_QUEUE_ENTRIES: u16 = 32;
const NSID: u32 = 1;

/// How to bring the controller up.
#[derive(Clone, Debug)]
pub struct NvmeConfig {
    /// I/O queue pairs to create (one per core); fewer if the controller offers fewer.
    pub io_queues: usize,
    /// Reads in flight per queue pair (bounded by CAP.MQES).
    pub queue_depth: usize,
    /// A read not completed after this long makes its queue reset the controller.
    pub command_timeout: Duration,
    /// Limit for each admin command.
    pub admin_timeout: Duration,
    /// If the device is bound to a kernel driver (`nvme`), unbind it and bind vfio-pci.
    /// Off by default: taking a drive from the kernel is the operator's decision.
    pub take_from_kernel: bool,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        NvmeConfig {
            io_queues: 1,
            queue_depth: 64,
            command_timeout: Duration::from_secs(2),
            admin_timeout: Duration::from_secs(5),
            take_from_kernel: false,
        }
    }
}

/// What Identify Controller said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// PCI address, or "model" in tests.
    pub pci: String,
    pub vendor_id: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// NVMe version from the VS register, "1.4.0".
    pub version: String,
    /// Largest single read in bytes (MDTS and the PRP list limit).
    pub max_transfer: usize,
    /// Active namespace IDs.
    pub namespaces: Vec<u32>,
    /// Controller memory page size in use.
    pub page_size: usize,
}

/// What Identify Namespace said about namespace 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    /// Bytes per logical block (from the LBA format in use).
    pub lba_size: usize,
    /// Namespace size in logical blocks.
    pub blocks: u64,
}

/// Open the controller at `spec`: a PCI address ("0000:00:04.0") or "auto" (the first NVMe
/// controller bound to vfio-pci or to no driver). The device is bound to vfio-pci if needed,
/// reset, identified, and returned ready to hand out queue pairs.
pub fn open(spec: &str, config: &NvmeConfig) -> Result<NvmeController, StorageError> {
    open_in(&vfio::Container::open()?, spec, config, &[])
}

/// [`open`] in `container`: controllers opened in one container share its DMA memory, so
/// one buffer pool serves them all (several drives read by one core). "auto" skips the
/// controllers in `taken` (PCI addresses already in use).
pub fn open_in(
    container: &Arc<vfio::Container>,
    spec: &str,
    config: &NvmeConfig,
    taken: &[String],
) -> Result<NvmeController, StorageError> {
    let pci = if spec == "auto" { vfio::find_auto_except(taken)? } else { vfio::check_pci_address(spec)? };
    vfio::check_nvme_class(&pci)?;
    vfio::ensure_bound_to_vfio(&pci, config.take_from_kernel)?;
    let device = vfio::VfioDevice::open_in(container, &pci)?;
    let (regs, dma) = device.into_parts()?;
    NvmeController::new(regs, dma, config, &pci)
}

/// The admin side of a controller: the admin queue pair and a page for identify data.
struct Admin {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    data: DmaRegion,
    next_cid: u16,
}

/// State every queue pair of a controller shares. Only the reset path takes the lock.
struct Shared {
    regs: Arc<dyn RegisterAccess>,
    dma: Arc<dyn DmaMemory>,
    caps: Capabilities,
    page_size: usize,
    io_queues: usize,
    admin: Mutex<Admin>,
    /// Bumped by every controller reset; queues compare it with the one they were built in.
    generation: AtomicU64,
    /// The last reset failed: the controller is gone.
    failed: AtomicBool,
    admin_timeout: Duration,
    resets: AtomicU64,
}

impl Shared {
    fn lock_admin(&self) -> MutexGuard<'_, Admin> {
        self.admin.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_ready(&self, ready: bool) -> Result<(), StorageError> {
        // CAP.TO is the worst case; give a little more and at least 500 ms.
        let limit = Duration::from_millis(self.caps.timeout_ms.max(500) + 100);
        let start = Instant::now();
        loop {
            let status = self.regs.read32(regs::CSTS);
            if status == u32::MAX {
                return Err(StorageError::Device("controller registers read all ones: device gone".into()));
            }
            if ready && status & csts::CFS != 0 {
                return Err(StorageError::Device("controller fatal status (CSTS.CFS) while enabling".into()));
            }
            if (status & csts::RDY != 0) == ready {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(StorageError::Device(format!(
                    "controller did not {} within {} ms (CSTS {status:#x})",
                    if ready { "become ready" } else { "stop" },
                    limit.as_millis()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// CC.EN=0 and wait for CSTS.RDY=0: the controller drops every queue and stops DMA.
    fn disable(&self) -> Result<(), StorageError> {
        let cc_val = self.regs.read32(regs::CC);
        if cc_val & cc::EN != 0 {
            self.regs.write32(regs::CC, cc_val & !cc::EN);
        }
        self.wait_ready(false)
    }

    /// Program the admin queue and enable the controller.
    fn enable(&self, admin: &mut Admin) -> Result<(), StorageError> {
        admin.sq.reset();
        admin.cq.reset();
        let entries = ADMIN_QUEUE_ENTRIES as u32;
        self.regs.write32(regs::AQA, (entries - 1) << 16 | (entries - 1));
        self.regs.write64(regs::ASQ, admin.sq.iova());
        self.regs.write64(regs::ACQ, admin.cq.iova());
        // No interrupts: mask them all (we poll every queue).
        self.regs.write32(regs::INTMS, u32::MAX);
        let cc_val = cc::EN | cc::IOSQES_64 | cc::IOCQES_16 | cc::mps(self.caps.mps_min);
        self.regs.write32(regs::CC, cc_val);
        self.wait_ready(true)
    }

    /// Run one admin command to completion.
    fn admin_command(&self, admin: &mut Admin, mut cmd: Command) -> Result<CompletionEntry, StorageError> {
        cmd.cid = admin.next_cid;
        admin.next_cid = admin.next_cid.wrapping_add(1);
        if !admin.sq.push(&cmd) {
            return Err(StorageError::QueueFull);
        }
        admin.sq.ring_doorbell(&*self.regs);
        let start = Instant::now();
        loop {
            if let Some(entry) = admin.cq.peek() {
                admin.cq.advance();
                admin.cq.ring_doorbell(&*self.regs);
                admin.sq.set_head(entry.sq_head);
                if entry.cid != cmd.cid {
                    warn!("nvme: stray admin completion for cid {} (waiting for {})", entry.cid, cmd.cid);
                    continue;
                }
                if !entry.status.is_success() {
                    return Err(StorageError::Device(format!(
                        "admin command {:#04x}: {}",
                        cmd.opcode,
                        entry.status.describe()
                    )));
                }
                return Ok(entry);
            }
            if start.elapsed() > self.admin_timeout {
                return Err(StorageError::Device(format!(
                    "admin command {:#04x} timed out after {} ms",
                    cmd.opcode,
                    self.admin_timeout.as_millis()
                )));
            }
            std::thread::yield_now();
        }
    }

    /// Reset and re-enable; on success every queue pair must be created again.
    fn reset_locked(&self, admin: &mut Admin) -> Result<(), StorageError> {
        let result = self.disable().and_then(|()| self.enable(admin)).and_then(|()| {
            self.admin_command(admin, Command::set_num_queues(self.io_queues as u16)).map(|_| ())
        });
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(()) => {
                self.failed.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // It may still be fetching and writing: cut it off the bus before the
                // buffers of its reads go back to their owners.
                let stopped = self.regs.stop_dma();
                error!("nvme: controller reset failed: {e}; bus mastering {}", if stopped { "disabled" } else { "unchanged" });
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Reset the controller unless another queue already did since `seen_generation`.
    /// Returns whether this call reset it (successfully or not).
    fn recover(&self, seen_generation: u64, why: &str) -> bool {
        let mut admin = self.lock_admin();
        if self.generation.load(Ordering::Acquire) != seen_generation {
            return false;
        }
        warn!("nvme: {why}: resetting the controller");
        if self.reset_locked(&mut admin).is_ok() {
            info!("nvme: controller reset done");
        }
        true
    }

    fn create_io_queues(&self, qid: u16, sq: &SubmissionQueue, cq: &CompletionQueue) -> Result<(), StorageError> {
        let mut admin = self.lock_admin();
        self.admin_command(&mut admin, Command::create_io_cq(qid, cq.entries(), cq.iova()))?;
        self.admin_command(&mut admin, Command::create_io_sq(qid, sq.entries(), qid, sq.iova()))?;
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Stop the controller before its queues and our DMA memory go away.
        if let Err(e) = self.disable() {
            warn!("nvme: disabling the controller on close: {e}");
        }
    }
}

/// A controller after reset and identify, ready to hand out its I/O queue pairs.
pub struct NvmeController {
    shared: Arc<Shared>,
    info: ControllerInfo,
    namespace: NamespaceInfo,
    queue_depth: usize,
    command_timeout: Duration,
}

impl std::fmt::Debug for NvmeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeController").field("info", &self.info).field("namespace", &self.namespace).finish()
    }
}

fn ascii_field(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches([' ', '\0']).trim().to_string()
}

impl NvmeController {
    /// Bring up the controller behind `regs`: reset, admin queue, enable, Identify controller,
    /// active namespaces and namespace 1. `pci` only names it in messages.
    pub fn new(
        regs: Arc<dyn RegisterAccess>,
        dma: Arc<dyn DmaMemory>,
        config: &NvmeConfig,
        pci: &str,
    ) -> Result<NvmeController, StorageError> {
        let cap = regs.read64(regs::CAP);
        if cap == u64::MAX {
            return Err(StorageError::Device(format!("{pci}: BAR0 reads all ones: not an NVMe controller or gone")));
        }
        let caps = Capabilities::decode(cap);
        if !caps.nvm_command_set {
            return Err(StorageError::Device(format!("{pci}: controller does not support the NVM command set")));
        }
        let page_size = caps.min_page_size;
        let version = regs::version_string(regs.read32(regs::VS));
        debug!("nvme {pci}: CAP {cap:#x} ({caps:?}), version {version}");

        let admin_ring = |entry: usize| dma.alloc((ADMIN_QUEUE_ENTRIES as usize * entry).max(4096));
        let stride = caps.doorbell_stride;
        let admin = Admin {
            sq: SubmissionQueue::new(admin_ring(SQE_SIZE)?, ADMIN_QUEUE_ENTRIES, regs::sq_tail_doorbell(0, stride)),
            cq: CompletionQueue::new(admin_ring(CQE_SIZE)?, ADMIN_QUEUE_ENTRIES, regs::cq_head_doorbell(0, stride)),
            data: dma.alloc(page_size)?,
            next_cid: 0,
        };
        let io_queues = config.io_queues.clamp(1, u16::MAX as usize - 1);
        let shared = Arc::new(Shared {
            regs,
            dma,
            caps,
            page_size,
            io_queues,
            admin: Mutex::new(admin),
            generation: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            admin_timeout: config.admin_timeout,
            resets: AtomicU64::new(0),
        });

        let (info, namespace, granted) = {
            let mut admin = shared.lock_admin();
            let admin = &mut *admin;
            shared.disable()?;
            shared.enable(admin)?;

            shared.admin_command(admin, Command::identify(queue::admin::CNS_CONTROLLER, 0, admin.data.iova()))?;
            let mut id = vec![0u8; 4096];
            admin.data.copy_out(0, &mut id);
            let mdts = id[77];
            let mut max_transfer = PrpLists::max_transfer(page_size);
            if mdts != 0 {
                max_transfer = max_transfer.min(page_size << mdts.min(20));
            }
            let mut info = ControllerInfo {
                pci: pci.to_string(),
                vendor_id: u16::from_le_bytes([id[0], id[1]]),
                serial: ascii_field(&id[4..24]),
                model: ascii_field(&id[24..64]),
                firmware: ascii_field(&id[64..72]),
                version,
                max_transfer,
                namespaces: Vec::new(),
                page_size,
            };

            shared.admin_command(admin, Command::identify(queue::admin::CNS_ACTIVE_NAMESPACES, 0, admin.data.iova()))?;
            admin.data.copy_out(0, &mut id);
            info.namespaces = id
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .take_while(|&n| n != 0)
                .collect();
            if !info.namespaces.contains(&NSID) {
                return Err(StorageError::Device(format!(
                    "{pci}: namespace 1 is not active (active: {:?})",
                    info.namespaces
                )));
            }

            shared.admin_command(admin, Command::identify(queue::admin::CNS_NAMESPACE, NSID, admin.data.iova()))?;
            admin.data.copy_out(0, &mut id);
            let namespace = parse_namespace(&id, pci)?;

            // Ask for one queue pair per core; the controller may grant fewer.
            let granted = match shared.admin_command(admin, Command::set_num_queues(io_queues as u16)) {
                Ok(entry) => {
                    let sq = (entry.result & 0xffff) as usize + 1;
                    let cq = (entry.result >> 16) as usize + 1;
                    io_queues.min(sq).min(cq)
                }
                Err(e) => {
                    warn!("nvme {pci}: Set Features (number of queues) failed: {e}; asking for {io_queues} anyway");
                    io_queues
                }
            };
            (info, namespace, granted)
        };
        info!(
            "nvme {pci}: {} (serial {}, firmware {}, NVMe {}), namespace 1: {} blocks of {} bytes, {granted} I/O queue pair(s)",
            info.model, info.serial, info.firmware, info.version, namespace.blocks, namespace.lba_size
        );
        let depth = config.queue_depth.clamp(1, caps.max_queue_entries as usize - 1).min(u16::MAX as usize - 1);
        // The controller may have granted fewer queues than asked for.
        let shared = match Arc::try_unwrap(shared) {
            Ok(mut s) => {
                s.io_queues = granted;
                Arc::new(s)
            }
            Err(s) => s,
        };
        Ok(NvmeController { shared, info, namespace, queue_depth: depth, command_timeout: config.command_timeout })
    }

    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    pub fn namespace(&self) -> NamespaceInfo {
        self.namespace
    }

    /// How many I/O queue pairs [`Self::into_queues`] will create.
    pub fn io_queues(&self) -> usize {
        self.shared.io_queues
    }

    /// Create the I/O queue pairs (queue IDs 1..=n), one per core. Each is `Send`: build
    /// them here, move one to each core's thread and call [`NvmeQueue::into_storage`] there.
    pub fn into_queues(self) -> Result<Vec<NvmeQueue>, StorageError> {
        (1..=self.shared.io_queues as u16).map(|qid| NvmeQueue::new(&self, qid)).collect()
    }
}

fn parse_namespace(id: &[u8], pci: &str) -> Result<NamespaceInfo, StorageError> {
    let u64_at = |o: usize| u64::from_le_bytes(id[o..o + 8].try_into().expect("8 bytes"));
    let blocks = u64_at(0);
    let nlbaf = id[25] as usize;
    let flbas = id[26];
    let format = (flbas & 0xf) as usize;
    if format > nlbaf {
        return Err(StorageError::Device(format!("{pci}: namespace 1 uses LBA format {format} of {}", nlbaf + 1)));
    }
    let lbaf = u32::from_le_bytes(id[128 + 4 * format..132 + 4 * format].try_into().expect("4 bytes"));
    let metadata = (lbaf & 0xffff) as usize;
    let lbads = (lbaf >> 16) & 0xff;
    if !(9..=12).contains(&lbads) {
        return Err(StorageError::Device(format!(
            "{pci}: namespace 1 has {}-byte logical blocks; only sizes dividing {BLOCK_SIZE} are supported",
            1u64.checked_shl(lbads).unwrap_or(0)
        )));
    }
    if metadata != 0 {
        return Err(StorageError::Device(format!(
            "{pci}: namespace 1 carries {metadata} bytes of metadata per block; format it without metadata"
        )));
    }
    if blocks == 0 {
        return Err(StorageError::Device(format!("{pci}: namespace 1 is empty")));
    }
    Ok(NamespaceInfo { nsid: NSID, lba_size: 1 << lbads, blocks })
}

/// A read the controller owns: the buffer stays here until all of its commands completed or
/// the controller has been reset. A read longer than one command may carry is split.
#[derive(Debug)]
struct InFlight {
    tag: u64,
    buf: DmaBuf,
    len: usize,
    submitted: Instant,
    commands_left: u16,
    /// The first failure among its commands.
    error: Option<StorageError>,
}

/// One I/O queue pair of namespace 1, created and not yet started: `Send`, so the
/// controller can be set up on one thread and each queue moved to its core's thread, where
/// [`NvmeQueue::into_storage`] turns it into the [`Storage`] that core drives.
pub struct NvmeQueue {
    qid: u16,
    sq: SubmissionQueue,
    cq: CompletionQueue,
    prps: PrpLists,
    depth: usize,
    lba_shift: u32,
    capacity: u64,
    max_transfer: usize,
    command_timeout: Duration,
    /// Controller generation our I/O queues were created in.
    generation: u64,
    /// Why this queue cannot be used (queue creation failed after a reset).
    broken: Option<String>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NvmeQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeQueue").field("qid", &self.qid).field("depth", &self.depth).finish()
    }
}

impl NvmeQueue {
    fn new(ctrl: &NvmeController, qid: u16) -> Result<NvmeQueue, StorageError> {
        let shared = ctrl.shared.clone();
        let depth = ctrl.queue_depth;
        let entries = (depth + 1) as u16;
        let stride = shared.caps.doorbell_stride;
        let sq_ring = shared.dma.alloc(entries as usize * SQE_SIZE)?;
        let cq_ring = shared.dma.alloc(entries as usize * CQE_SIZE)?;
        let page = shared.page_size;
        let prps = PrpLists::new(shared.dma.alloc(depth * page)?, page, depth);
        let sq = SubmissionQueue::new(sq_ring, entries, regs::sq_tail_doorbell(qid, stride));
        let cq = CompletionQueue::new(cq_ring, entries, regs::cq_head_doorbell(qid, stride));
        let generation = shared.generation.load(Ordering::Acquire);
        shared.create_io_queues(qid, &sq, &cq)?;
        Ok(NvmeQueue {
            qid,
            sq,
            cq,
            prps,
            depth,
            lba_shift: ctrl.namespace.lba_size.trailing_zeros(),
            capacity: ctrl.namespace.blocks * ctrl.namespace.lba_size as u64,
            max_transfer: ctrl.info.max_transfer,
            command_timeout: ctrl.command_timeout,
            generation,
            broken: None,
            shared,
        })
    }

    /// Queue ID of this pair on the controller (1-based).
    pub fn queue_id(&self) -> u16 {
        self.qid
    }

    /// Start using the queue on this thread.
    pub fn into_storage(self) -> NvmeStorage {
        let depth = self.depth;
        NvmeStorage {
            slots: (0..depth).map(|_| None).collect(),
            free_slots: (0..depth as u16).rev().collect(),
            command_slot: vec![None; depth],
            free_cids: (0..depth as u16).rev().collect(),
            ended: Vec::with_capacity(depth),
            next_timeout_check: Instant::now(),
            counters: StorageCounters::default(),
            q: self,
        }
    }
}

/// One I/O queue pair of namespace 1, driven by one core: the [`Storage`] of the NVMe backend.
/// Not `Send` (it holds the caller's buffers while the device fills them); see [`NvmeQueue`].
pub struct NvmeStorage {
    /// In-flight reads.
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<u16>,
    /// The read each command ID in use belongs to.
    command_slot: Vec<Option<u16>>,
    free_cids: Vec<u16>,
    /// Reads ended by a reset, waiting for the next poll.
    ended: Vec<Completion>,
    /// Scanning the slots for expired reads happens at most this often.
    next_timeout_check: Instant,
    counters: StorageCounters,
    q: NvmeQueue,
}

impl std::fmt::Debug for NvmeStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeStorage").field("qid", &self.q.qid).field("in_flight", &self.in_flight()).finish()
    }
}

impl NvmeStorage {
    /// Queue ID of this pair on the controller (1-based).
    pub fn queue_id(&self) -> u16 {
        self.q.qid
    }

    /// Largest transfer of one command; longer reads are split into several commands.
    pub fn max_transfer(&self) -> usize {
        self.q.max_transfer
    }

    /// Largest read this queue accepts (every command slot used for one read).
    pub fn max_read(&self) -> usize {
        self.q.max_transfer * self.q.depth
    }

    /// Controller resets so far (by any queue).
    pub fn controller_resets(&self) -> u64 {
        self.q.shared.resets.load(Ordering::Relaxed)
    }

    /// Reset the controller now (an operator's command, or a caller that gave up on it).
    /// Reads in flight on every queue end with an error; this queue is usable again when
    /// this returns Ok, the others re-create their queues on their next call.
    pub fn reset_controller(&mut self) -> Result<(), StorageError> {
        if self.q.shared.recover(self.q.generation, "reset requested") {
            self.counters.resets += 1;
        }
        self.follow_resets(Instant::now());
        match &self.q.broken {
            Some(reason) => Err(StorageError::Device(reason.clone())),
            None => Ok(()),
        }
    }

    /// End every read in flight; those older than the timeout end with Timeout.
    fn end_in_flight(&mut self, now: Instant) {
        for (cid, read) in self.command_slot.iter_mut().enumerate() {
            if read.take().is_some() {
                self.free_cids.push(cid as u16);
            }
        }
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(read) = slot.take() {
                let result = if now.duration_since(read.submitted) >= self.q.command_timeout {
                    self.counters.timeouts += 1;
                    Err(StorageError::Timeout)
                } else {
                    Err(StorageError::Device("aborted by controller reset".into()))
                };
                self.counters.errors += 1;
                self.ended.push(Completion { tag: read.tag, buf: read.buf, result });
                self.free_slots.push(index as u16);
            }
        }
    }

    /// After a reset (ours or another queue's): end what was in flight and create our
    /// queues again. Cheap when nothing changed: one atomic load.
    fn follow_resets(&mut self, now: Instant) {
        let generation = self.q.shared.generation.load(Ordering::Acquire);
        if generation == self.q.generation {
            return;
        }
        self.end_in_flight(now);
        self.q.sq.reset();
        self.q.cq.reset();
        self.q.generation = generation;
        if self.q.shared.failed.load(Ordering::Acquire) {
            self.q.broken = Some("controller failed and did not come back after a reset".into());
            return;
        }
        match self.q.shared.create_io_queues(self.q.qid, &self.q.sq, &self.q.cq) {
            Ok(()) => self.q.broken = None,
            Err(e) => {
                error!("nvme: re-creating I/O queue {} after reset: {e}", self.q.qid);
                self.q.broken = Some(format!("I/O queue {} not re-created after reset: {e}", self.q.qid));
            }
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        if now < self.next_timeout_check {
            return;
        }
        self.next_timeout_check = now + (self.q.command_timeout / 8).max(Duration::from_micros(500));
        let expired = self
            .slots
            .iter()
            .flatten()
            .any(|read| now.duration_since(read.submitted) >= self.q.command_timeout);
        if expired {
            error!("nvme: read on queue {} timed out after {} ms", self.q.qid, self.q.command_timeout.as_millis());
            if self.q.shared.recover(self.q.generation, "a read timed out") {
                self.counters.resets += 1;
            }
            self.follow_resets(now);
        }
    }
}

impl Storage for NvmeStorage {
    fn backend(&self) -> &'static str {
        "nvme-vfio"
    }

    fn capacity(&self) -> u64 {
        self.q.capacity
    }

    fn block_size(&self) -> usize {
        BLOCK_SIZE
    }

    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<DmaPool, StorageError> {
        if buf_size == 0 || count == 0 || count > u32::MAX as usize {
            return Err(StorageError::Device(format!("bad DMA pool shape: {count} buffers of {buf_size} bytes")));
        }
        let buf_size = buf_size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let total = buf_size
            .checked_mul(count)
            .ok_or_else(|| StorageError::Device("DMA pool size overflows".into()))?;
        let region = self.q.shared.dma.alloc(total)?;
        let (base, iova, len, release) = region.into_raw();
        let region = Region::Mapped(Box::new(move |base, _| release(base, len)));
        // SAFETY: the DmaRegion gave us `len >= total` bytes that nothing else uses, valid
        // until `release` runs, which the pool calls when its last buffer is gone.
        Ok(unsafe { DmaPool::from_region(base, buf_size, count, iova, region) })
    }

    fn submit_read(&mut self, tag: u64, offset: u64, len: usize, buf: DmaBuf) -> Result<(), (StorageError, DmaBuf)> {
        self.follow_resets(Instant::now());
        if let Some(reason) = &self.q.broken {
            self.counters.errors += 1;
            return Err((StorageError::Device(reason.clone()), buf));
        }
        if !offset.is_multiple_of(BLOCK_SIZE as u64) || !len.is_multiple_of(BLOCK_SIZE) || len == 0 {
            self.counters.errors += 1;
            return Err((StorageError::Unaligned { offset, len, block: BLOCK_SIZE }, buf));
        }
        if offset.checked_add(len as u64).is_none_or(|end| end > self.q.capacity) {
            self.counters.errors += 1;
            return Err((StorageError::OutOfRange { offset, len, capacity: self.q.capacity }, buf));
        }
        let commands = len.div_ceil(self.q.max_transfer);
        if len > buf.len() || commands > self.q.depth || !buf.iova().is_multiple_of(4) {
            self.counters.errors += 1;
            let reason = format!(
                "read of {len} bytes does not fit (buffer {} bytes, at most {} bytes per read)",
                buf.len(),
                self.max_read()
            );
            return Err((StorageError::Device(reason), buf));
        }
        if commands > self.free_cids.len() {
            return Err((StorageError::QueueFull, buf));
        }
        let Some(slot) = self.free_slots.pop() else {
            return Err((StorageError::QueueFull, buf));
        };
        // One command per max_transfer bytes; the doorbell once for all of them. The SQ has
        // one entry more than there are command IDs, so it cannot be full here.
        let chunk = self.q.max_transfer;
        for i in 0..commands {
            let cid = self.free_cids.pop().expect("counted above");
            let start = i * chunk;
            let part = chunk.min(len - start);
            let prps = self
                .q
                .prps
                .build(cid as usize, buf.iova() + start as u64, part)
                .expect("alignment and length checked above");
            let lba = (offset + start as u64) >> self.q.lba_shift;
            let blocks = (part >> self.q.lba_shift) as u32;
            let cmd = Command { cid, ..Command::read(NSID, lba, blocks, prps.prp1, prps.prp2) };
            let pushed = self.q.sq.push(&cmd);
            debug_assert!(pushed, "SQ sized above the number of command IDs");
            self.command_slot[cid as usize] = Some(slot);
        }
        self.q.sq.ring_doorbell(&*self.q.shared.regs);
        self.slots[slot as usize] = Some(InFlight {
            tag,
            buf,
            len,
            submitted: Instant::now(),
            commands_left: commands as u16,
            error: None,
        });
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let start = out.len();
        let now = Instant::now();
        self.follow_resets(now);
        out.append(&mut self.ended);
        while let Some(entry) = self.q.cq.peek() {
            self.q.cq.advance();
            self.q.sq.set_head(entry.sq_head);
            let Some(slot) = self.command_slot.get_mut(entry.cid as usize).and_then(Option::take) else {
                warn!("nvme: completion for unknown command {} on queue {}", entry.cid, self.q.qid);
                self.counters.errors += 1;
                continue;
            };
            self.free_cids.push(entry.cid);
            let read = self.slots[slot as usize].as_mut().expect("a command in use belongs to a read in flight");
            if !entry.status.is_success() && read.error.is_none() {
                read.error = Some(StorageError::Device(entry.status.describe()));
            }
            read.commands_left -= 1;
            if read.commands_left > 0 {
                continue;
            }
            let read = self.slots[slot as usize].take().expect("checked above");
            self.free_slots.push(slot);
            let result = match read.error {
                None => {
                    self.counters.reads += 1;
                    self.counters.read_bytes += read.len as u64;
                    Ok(())
                }
                Some(e) => {
                    self.counters.errors += 1;
                    debug!("nvme: read tag {} failed: {e}", read.tag);
                    Err(e)
                }
            };
            out.push(Completion { tag: read.tag, buf: read.buf, result });
        }
        self.q.cq.ring_doorbell(&*self.q.shared.regs);
        if self.in_flight() > 0 {
            self.check_timeouts(now);
            out.append(&mut self.ended);
        }
        out.len() - start
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    fn counters(&self) -> StorageCounters {
        self.counters
    }

    /// The device writes the buffers: they must be in its DMA memory.
    fn needs_own_pool(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
