//! The Ethernet port shared by the queue handles: its pool, counters (hardware and software,
//! summed per queue) and the zero-copy state of each queue; stopped and closed with the last handle.

use super::*;

/// This queue's part of the port's counters, so that the cores' counters add up to the
/// port's: its own packets and bytes (the PMD's per-queue counts, which cover the first 16
/// queues), and on queue 0 the port-wide drops and errors and the software counters.
pub(super) fn port_share(stats: &sys::rte_eth_stats, sw: &SoftCounters, queue: u16, queues: u16) -> NicCounters {
    let q = usize::from(queue);
    let mut c = if queues == 1 {
        NicCounters { rx_packets: stats.ipackets, rx_bytes: stats.ibytes, tx_packets: stats.opackets, tx_bytes: stats.obytes, ..Default::default() }
    } else if q < stats.q_ipackets.len() {
        NicCounters {
            rx_packets: stats.q_ipackets[q],
            rx_bytes: stats.q_ibytes[q],
            tx_packets: stats.q_opackets[q],
            tx_bytes: stats.q_obytes[q],
            ..Default::default()
        }
    } else {
        NicCounters::default()
    };
    if queue == 0 {
        c.rx_dropped = stats.imissed + stats.rx_nombuf + sw.rx_multi_seg.load(Ordering::Relaxed);
        c.rx_errors = stats.ierrors;
        c.tx_errors = stats.oerrors + sw.tx_bad_length.load(Ordering::Relaxed) + sw.tx_prepare_refused.load(Ordering::Relaxed);
    }
    c
}

/// The port, shared by its queue handles; stopped and closed when the last one goes.
pub(super) struct Port {
    pub(super) id: u16,
    pub(super) pool: NonNull<sys::rte_mempool>,
    pub(super) driver: String,
    pub(super) mac: [u8; 6],
    pub(super) mtu: usize,
    pub(super) queues: u16,
    pub(super) offloads: DpdkOffloads,
    /// Bytes one mbuf holds.
    pub(super) seg_bytes: usize,
    /// Largest frame `tx_gather` accepts: MTU plus the Ethernet header.
    pub(super) max_frame: usize,
    /// Largest TSO frame `tx_gather_offload` accepts (chained mbufs; 0 without TSO).
    pub(super) max_tso_frame: usize,
    /// Whether the PMD has rte_eth_tx_done_cleanup (asked once at start, on the empty ring of
    /// queue 0): without it, mbufs the device is done with are freed only by later transmit
    /// bursts, which many PMDs run only when their ring runs low.
    pub(super) tx_cleanup: bool,
    /// Descriptors per TX ring (as the PMD adjusted them).
    pub(super) tx_desc: u16,
    /// How `tx_tcp` uses the device's offloads.
    pub(super) tcp_tx: TcpTxPlan,
    /// Most mbufs of a zero-copy frame (0: zero-copy transmit is off on this port).
    pub(super) zc_max_segs: usize,
    /// Each queue's zero-copy state shared with the pools it sends from (empty when off).
    pub(super) zc: Vec<Arc<ZcQueue>>,
    /// Whether the device reads caller memory by DMA (not in NO_DMA_MAP_PMDS): storage pools
    /// are mapped for it before it may send from them.
    pub(super) dma_map_needed: bool,
    /// Storage pool regions registered and DMA-mapped for the device, in pieces (start, len)
    /// of at most MAX_EXTMEM_PAGES pages (kept leased, unmapped once the port is stopped).
    pub(super) dma_maps: Mutex<Vec<DmaMapping>>,
    /// Each queue's payload byte counters.
    pub(super) tx_payload: Vec<PayloadCounters>,
    /// Which queues have a live handle.
    pub(super) claimed: Mutex<Vec<bool>>,
    /// Serialises control-path calls (stats, xstats, link), which DPDK does not make
    /// thread-safe.
    pub(super) control: Mutex<()>,
    pub(super) sw: SoftCounters,
}

impl Port {
    /// Makes `lease`'s region readable by the device and returns the device address of its
    /// first byte: for PMDs whose device reads by DMA, registered with DPDK and mapped for the
    /// port's device at IOVA = VA (kept until the port is stopped); for the others (the CPU
    /// copies) nothing to do. Err says why the device cannot read it.
    pub(super) fn dma_map(&self, lease: &RegionLease) -> Result<u64, String> {
        if !self.dma_map_needed {
            return Ok(lease.iova());
        }
        // SAFETY: reads the EAL's IOVA mode (EAL is initialised); no other effect.
        if unsafe { sys::dpdk_sys_iova_is_va() } == 0 {
            return Err("the EAL runs with IOVA as PA, and memory that is not DPDK's has no physical address table (run with --iova-mode=va behind an IOMMU)".into());
        }
        const HUGE: usize = 2 << 20;
        const PAGE: usize = 4096;
        let (start, len) = (lease.start(), lease.len());
        if start % PAGE != 0 || len % PAGE != 0 {
            return Err(format!("the region is not page-aligned ({len} bytes at {start:#x})"));
        }
        let page = if start % HUGE == 0 && len % HUGE == 0 { HUGE } else { PAGE };
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        // One memseg list holds at most MAX_EXTMEM_PAGES pages: larger regions go in pieces.
        let mut pieces = Vec::new();
        let mut at = start;
        while at < start + len {
            let n = (start + len - at).min(MAX_EXTMEM_PAGES * page);
            let mut stage = 0;
            // SAFETY: the piece is `n` bytes of the region the lease keeps allocated (the
            // lease is kept in `dma_maps` until the mapping is undone in Drop); DPDK records
            // and maps it, it does not write it. Control-path call under `control`.
            let ret = unsafe { sys::dpdk_sys_extmem_dma_map(self.id, at as *mut std::ffi::c_void, at as u64, n, page, &mut stage) };
            if ret != 0 {
                for &(p, l) in &pieces {
                    // SAFETY: undoes the pieces mapped above; the device was never given them.
                    unsafe { sys::dpdk_sys_extmem_dma_unmap(self.id, p as *mut std::ffi::c_void, p as u64, l) };
                }
                let what = if stage == 1 { "rte_extmem_register" } else { "rte_dev_dma_map" };
                let NicError::Config(msg) = dpdk_error(what, ret) else { unreachable!("dpdk_error makes Config") };
                return Err(msg);
            }
            pieces.push((at, n));
            at += n;
        }
        self.dma_maps.lock().unwrap_or_else(|e| e.into_inner()).push((lease.clone(), pieces));
        Ok(start as u64)
    }
}

/// What the backend itself dropped or refused, beside the device's counters.
#[derive(Default)]
pub(super) struct SoftCounters {
    /// Flushes that found the ring full: the frames it did not take stay queued for the next
    /// (and a full batch refuses new ones, which the stack takes back and sends later).
    pub(super) tx_ring_full: AtomicU64,
    /// Empty frames or frames larger than one mbuf given to `tx_gather` (dropped).
    pub(super) tx_bad_length: AtomicU64,
    /// `tx_gather` found the pool empty (refused, caller retries).
    pub(super) tx_no_mbuf: AtomicU64,
    /// Received frames spread over several mbufs (dropped: scatter is not enabled).
    pub(super) rx_multi_seg: AtomicU64,
    /// Frames whose offload request the PMD's `rte_eth_tx_prepare` refused (dropped).
    pub(super) tx_prepare_refused: AtomicU64,
    /// Frames with zero-copy parts that were copied after all (chain too long).
    pub(super) tx_zero_copy_fallback: AtomicU64,
    /// Storage pools whose region could not be DMA-mapped for the device (their payload is
    /// copied).
    pub(super) tx_zero_copy_unmapped: AtomicU64,
}

// SAFETY: the pool pointer refers to a DPDK mempool whose default ops ("ring_mp_mc") are safe
// for concurrent get/put from any thread; everything else in `Port` is plain data or
// synchronised (Mutex, atomics, Arc). Control-path ethdev calls go through `control`.
unsafe impl Send for Port {}

// SAFETY: see `Send` above: shared access only reads plain data, uses atomics, takes the
// `control` lock, or gets/puts mbufs through the MT-safe pool.
unsafe impl Sync for Port {}

impl Drop for Port {
    fn drop(&mut self) {
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the port was started by `DpdkNic::start` and no queue handle is left (this is
        // the last Arc), so no thread is in rx/tx burst on it. The mempool is not freed: frames
        // the stack still holds return to it when dropped.
        unsafe { sys::rte_eth_dev_stop(self.id) };
        // The device is stopped: it reads no storage buffer any more.
        for (_lease, pieces) in self.dma_maps.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            for (start, len) in pieces {
                // SAFETY: this piece was registered and mapped by dpdk_sys_extmem_dma_map at
                // IOVA = VA for this port's device, which no longer reads it; the lease kept
                // it allocated until now (dropped after this loop).
                unsafe { sys::dpdk_sys_extmem_dma_unmap(self.id, start as *mut std::ffi::c_void, start as u64, len) };
            }
        }
        // SAFETY: as above; the port is stopped.
        unsafe { sys::rte_eth_dev_close(self.id) };
    }
}
