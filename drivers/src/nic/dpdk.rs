//! DPDK poll-mode backend: owns the EAL (once per process), one mbuf pool sized at start-up and
//! one Ethernet port with an RX/TX queue pair per core. [`DpdkNic::start`] brings the port up
//! and hands out queue 0; [`DpdkNic::queue`] hands out the others, one handle per queue, each
//! driven by a single thread.
//!
//! Received frames are the PMD's mbufs ([`DpdkFrame`]), freed back to the pool on drop.
//! Transmit copies the gathered parts into one fresh mbuf (chained mbufs for a TSO frame),
//! except payload that lies in a storage pool handed over with [`Nic::tx_from_pool`]: on
//! PMDs with multi-segment transmit, payload parts of at least [`ZC_MIN_PART`] bytes go out
//! as mbufs pointing at that memory (external buffers, DMA-mapped for the device where it
//! needs it), chained behind an mbuf holding the headers and short parts; the storage pool
//! does not reuse a buffer while an mbuf points at it (see "Zero-copy transmit" below).
//!
//! TCP transmit offloads ([`Nic::tx_tcp`]): where the PMD reports TCP checksum offload (and
//! IPv4 checksum offload, TSO and multi-segment transmit for segmentation), the port is set
//! up with them and [`Nic::link`] advertises them; each TCP frame then goes to the device as
//! one mbuf chain with its offload request. Without them the frame is cut and checksummed in
//! software ([`offload::segment`]), as before.
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpdk_sys as sys;

use super::offload::{self, TcpTx, MAX_TSO_PAYLOAD};
use super::{FrameBuf, LinkInfo, Nic, NicCounters, NicError, TxOffloads};
use crate::storage::{DeviceHolds, DmaPool, RegionLease};

// Zero-copy transmit
//
// A payload part that lies inside one buffer of a leased storage pool ([`Nic::tx_from_pool`])
// and is at least ZC_MIN_PART bytes long is attached to an mbuf as an external buffer instead
// of being copied; the headers, the short parts (TLS record headers and trailers) and the odd
// bytes that keep every piece but the last of even length (net_tap checksums a chain piece by
// piece with __rte_raw_cksum, which is only right over even-length pieces) are copied into
// pool mbufs between them.
//
// Each storage buffer of a leased pool has its own rte_mbuf_ext_shared_info, made when the
// pool is leased and never freed; its free callback does nothing (the memory is the storage
// pool's) and its reference count is one (ours) plus one for every mbuf that points into the
// buffer, wherever that mbuf is: queued here, on the device's ring, or sent and not yet
// freed by the PMD. A buffer is held by the NIC while that count is above one.
//
// When may the storage layer reuse a buffer? Only when no mbuf of the NIC points at it any
// more. The application gives buffers back when their data is acknowledged, at a
// retransmission timeout and when a connection closes, none of which says that the device
// has read them: a retransmitted copy may still sit on the ring, a device that DMAs from the
// ring later (virtio behind vfio, a hardware NIC) reads a frame long after rte_eth_tx_burst
// returned, and the PMD frees sent mbufs when it likes (often only when its ring runs low).
// So the NIC installs its holds in the pool (storage::DeviceHolds): the pool's free list is
// first in, first out, and `alloc` hands out the oldest free buffer whose count is back at
// one, skipping held ones in place; a read that finds only held buffers waits (counted:
// sw_tx_zero_copy_buffer_waits), the application re-checks on its loop while it has waiters
// (DmaPool::ready, no allocation attempts), and the pool asks the NIC to let go: the queue,
// when it has nothing to send, frees what the device is done with (rte_eth_tx_done_cleanup;
// on PMDs without it the next transmit burst does). Frames queued but not flushed hold their
// buffers the same way, and frames the device did not take are freed at the flush.
//
// The device must be able to read the memory: for PMDs whose device reads by DMA the pool's
// region is registered with DPDK (rte_extmem_register) and mapped for the port's device
// (rte_dev_dma_map: the vfio container, through the IOMMU) at IOVA = VA, which needs the EAL
// in IOVA-as-VA mode. net_tap and net_af_packet need no mapping: the CPU copies the frame to
// the kernel in rte_eth_tx_burst (NO_DMA_MAP_PMDS). Where the mapping cannot be made (IOVA as
// PA, no vfio, a bus without DMA mapping) the queue copies, and says why in the log.

/// Shortest payload part sent from the caller's memory; shorter ones are copied.
pub const ZC_MIN_PART: usize = 256;
/// Longest piece one external-buffer mbuf points at (its lengths are 16-bit), kept even.
const ZC_MAX_PIECE: usize = (u16::MAX as usize) & !1;
/// Mbufs one wire segment of a zero-copy frame may touch, at most: the headers' and, in up to
/// 1500 bytes of payload, pieces of at least ZC_MIN_PART - 1 bytes each with a copied piece
/// before and after. The PMD's per-packet limit (`nb_mtu_seg_max`) must not be lower.
const ZC_MTU_SEGS: u16 = 1 + 2 * (1500 / (ZC_MIN_PART as u16 - 1) + 1) + 1;
/// Most mbufs that may point at one storage buffer through its shared-info block at a time
/// (the count is 16-bit): past it, frames are copied.
const ZC_MAX_REFS: u16 = 60_000;
/// PMDs whose device never reads caller memory by DMA: net_tap writes each frame to the TAP
/// with writev, net_af_packet copies it into its socket's ring, both in rte_eth_tx_burst. No
/// DMA mapping is made for them.
const NO_DMA_MAP_PMDS: [&str; 2] = ["net_tap", "net_af_packet"];

/// Pages one rte_extmem_register call may take (DPDK's RTE_MAX_MEMSEG_PER_LIST default).
const MAX_EXTMEM_PAGES: usize = 8192;

/// Most frames taken from or given to the PMD in one call.
const BURST: usize = 64;
const ETHERNET_HEADER: usize = 14;
/// Largest frame handed to TSO: an IPv4 packet of the largest length plus its Ethernet header.
const MAX_TSO_FRAME: usize = 65535 + ETHERNET_HEADER;
/// Largest Ethernet, IPv4 and TCP headers of a frame given to `tx_tcp`.
const MAX_TCP_HEADERS: usize = ETHERNET_HEADER + 60 + 60;
/// Mbufs one wire segment of a TSO frame may touch: the first (its headers) and the one or
/// two its payload lies in (a segment is shorter than one mbuf: the MTU is capped to it).
const TSO_MBUFS_PER_SEGMENT: u16 = 3;
/// net_tap's software TSO (DPDK's GSO library) cuts a frame into at most this many segments
/// (MAX_GSO_MBUFS in drivers/net/tap/rte_eth_tap.h) and refuses the frame otherwise.
const NET_TAP_MAX_TSO_SEGMENTS: usize = 64;

/// Set once `rte_eal_init` has been called: DPDK allows one initialisation per process.
static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// How the port is set up. Sizes are fixed at start-up; nothing grows afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkConfig {
    /// DPDK port id (0 is the first device EAL probed: a vdev or a bound PCI NIC).
    pub port: u16,
    /// RX/TX queue pairs, one per core. More than one needs RSS from the PMD: without it (or
    /// with fewer queue pairs) the port gets as many as it can take, unless `exact_queues`
    /// makes that an error. [`DpdkNic::queues`] says how many it got.
    pub queues: u16,
    pub exact_queues: bool,
    /// Mbufs in the pool shared by all queues (must cover every descriptor ring plus what the
    /// stack holds). With TSO, frames are capped so that a batch of `tx_batch` of them fits in
    /// what is left (64 KiB frames take 32 mbufs each).
    pub mbufs: u32,
    /// Per-lcore mbuf cache of the pool (0 for none).
    pub mbuf_cache: u32,
    /// Descriptors per RX and per TX ring (the PMD may round them).
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// Frames `tx_gather` may queue before `tx_flush` hands them to the device.
    pub tx_batch: usize,
    /// Send payload from storage pools handed over with [`Nic::tx_from_pool`] without copying
    /// it, where the PMD allows (see "Zero-copy transmit" in the source).
    pub zero_copy: bool,
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            port: 0,
            queues: 1,
            exact_queues: false,
            // About 36 MB: a one-queue port has room for a batch of full 64 KiB TSO frames
            // (33 mbufs each) beside its rings; two queues get frames of about 42 KB.
            mbufs: 16383,
            mbuf_cache: 256,
            rx_desc: 1024,
            tx_desc: 1024,
            tx_batch: 256,
            // DPDK_ZERO_COPY=0 in the environment turns it off, for comparisons.
            zero_copy: std::env::var_os("DPDK_ZERO_COPY").is_none_or(|v| v != "0"),
        }
    }
}

/// The offloads this backend enabled on the port: those it wants that the PMD reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpdkOffloads {
    /// RSS over IP and TCP spreads connections over the queues (only with more than one).
    pub rss: bool,
    pub rx_ipv4_cksum: bool,
    pub rx_tcp_cksum: bool,
    pub rx_udp_cksum: bool,
    pub tx_ipv4_cksum: bool,
    pub tx_tcp_cksum: bool,
    pub tx_udp_cksum: bool,
    pub tx_tcp_tso: bool,
    /// Chained (multi-segment) transmit, needed for header + payload mbufs.
    pub tx_multi_segs: bool,
}

impl DpdkOffloads {
    /// Whether frames may carry transmit offload requests (checksums, TSO) for the PMD.
    fn tx_requests(&self) -> bool {
        self.tx_ipv4_cksum || self.tx_tcp_cksum || self.tx_udp_cksum || self.tx_tcp_tso
    }
}

/// Per-packet transmit offload request for [`DpdkNic::tx_gather_offload`]: header lengths of the
/// frame and what the device should compute. Honoured only where [`DpdkNic::offloads`] says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffload {
    pub l2_len: u16,
    pub l3_len: u16,
    pub l4_len: u16,
    /// IPv4 header checksum (the frame's field may hold anything).
    pub ipv4_cksum: bool,
    /// TCP checksum: the frame's field must hold the pseudo-header checksum, as DPDK requires.
    pub tcp_cksum: bool,
    /// Segment the TCP payload into this many bytes per packet (0: no TSO).
    pub tso_segsz: u16,
}

/// What `tx_tcp` asks of the device, fixed at start-up from what the PMD reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TcpTxPlan {
    /// The device fills in TCP checksums (the stack leaves them zero).
    checksum: bool,
    /// Largest TCP payload of one frame the device cuts into segments (0: no TSO).
    tso_max_payload: usize,
    /// Largest segment the device's TSO emits, Ethernet header included: the segment size
    /// asked of it is the frame's MSS cut to fit.
    tso_max_segment_frame: usize,
    /// Most segments the device cuts one frame into; a frame that needs more is segmented in
    /// software.
    tso_max_segments: usize,
    /// Ask for even segment sizes only.
    tso_even_segments: bool,
}

impl TcpTxPlan {
    /// The plan for a port with these enabled offloads, TSO frames of at most `max_tso_frame`
    /// bytes (0: none) and this MTU, with the PMD's own limits.
    ///
    /// net_tap (22.11) segments in software with DPDK's GSO library, and two of its limits are
    /// not in `rte_eth_dev_info`: it refuses a TSO frame whose segments, Ethernet header
    /// included, exceed the MTU (it compares `tso_segsz + l2_len + l3_len + l4_len` with the
    /// MTU), and it checksums each segment over its mbuf pieces with `__rte_raw_cksum`, which
    /// is only right when every piece but the last has even length: segments of an even size
    /// (with headers of even length and full mbufs of even size before them) keep them even.
    fn new(pmd: &str, offloads: &DpdkOffloads, max_tso_frame: usize, mtu: usize) -> TcpTxPlan {
        let checksum = offloads.tx_tcp_cksum;
        let tso_max_payload = if checksum && offloads.tx_tcp_tso && max_tso_frame > MAX_TCP_HEADERS
        {
            (max_tso_frame - MAX_TCP_HEADERS).min(MAX_TSO_PAYLOAD)
        } else {
            0
        };
        let net_tap = pmd == "net_tap";
        TcpTxPlan {
            checksum,
            tso_max_payload,
            tso_max_segment_frame: if net_tap { mtu } else { mtu + ETHERNET_HEADER },
            tso_max_segments: if net_tap {
                NET_TAP_MAX_TSO_SEGMENTS
            } else {
                usize::MAX
            },
            tso_even_segments: net_tap,
        }
    }

    /// The segment size to ask of the device for a frame of `payload` bytes shaped `tcp`: 0
    /// when it needs no segmenting, None when the device cannot segment it (software must).
    fn tso_segsz(&self, tcp: TcpTx, payload: usize) -> Option<u16> {
        if payload <= tcp.mss {
            return Some(0);
        }
        let room = self
            .tso_max_segment_frame
            .saturating_sub(tcp.l4_offset + tcp.l4_len);
        let mut segsz = tcp.mss.min(room).min(usize::from(u16::MAX));
        if self.tso_even_segments {
            segsz &= !1;
        }
        let fits = segsz > 0
            && payload <= self.tso_max_payload
            && payload.div_ceil(segsz) <= self.tso_max_segments;
        fits.then_some(segsz as u16)
    }
}

/// This queue's part of the port's counters, so that the cores' counters add up to the
/// port's: its own packets and bytes (the PMD's per-queue counts, which cover the first 16
/// queues), and on queue 0 the port-wide drops and errors and the software counters.
fn port_share(stats: &sys::rte_eth_stats, sw: &SoftCounters, queue: u16, queues: u16) -> NicCounters {
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

/// Why a frame was not queued.
enum TxRefused {
    /// Batch full or pool empty: flush and retry.
    Full,
    /// Empty or larger than one mbuf: dropped and counted, never worth a retry.
    BadLength,
}

/// The port, shared by its queue handles; stopped and closed when the last one goes.
struct Port {
    id: u16,
    pool: NonNull<sys::rte_mempool>,
    driver: String,
    mac: [u8; 6],
    mtu: usize,
    queues: u16,
    offloads: DpdkOffloads,
    /// Bytes one mbuf holds.
    seg_bytes: usize,
    /// Largest frame `tx_gather` accepts: MTU plus the Ethernet header.
    max_frame: usize,
    /// Largest TSO frame `tx_gather_offload` accepts (chained mbufs; 0 without TSO).
    max_tso_frame: usize,
    /// Whether the PMD has rte_eth_tx_done_cleanup (asked once at start, on the empty ring of
    /// queue 0): without it, mbufs the device is done with are freed only by later transmit
    /// bursts, which many PMDs run only when their ring runs low.
    tx_cleanup: bool,
    /// Descriptors per TX ring (as the PMD adjusted them).
    tx_desc: u16,
    /// How `tx_tcp` uses the device's offloads.
    tcp_tx: TcpTxPlan,
    /// Most mbufs of a zero-copy frame (0: zero-copy transmit is off on this port).
    zc_max_segs: usize,
    /// Each queue's zero-copy state shared with the pools it sends from (empty when off).
    zc: Vec<Arc<ZcQueue>>,
    /// Whether the device reads caller memory by DMA (not in NO_DMA_MAP_PMDS): storage pools
    /// are mapped for it before it may send from them.
    dma_map_needed: bool,
    /// Storage pool regions registered and DMA-mapped for the device, in pieces (start, len)
    /// of at most MAX_EXTMEM_PAGES pages (kept leased, unmapped once the port is stopped).
    dma_maps: Mutex<Vec<DmaMapping>>,
    /// Each queue's payload byte counters.
    tx_payload: Vec<PayloadCounters>,
    /// Which queues have a live handle.
    claimed: Mutex<Vec<bool>>,
    /// Serialises control-path calls (stats, xstats, link), which DPDK does not make
    /// thread-safe.
    control: Mutex<()>,
    sw: SoftCounters,
}

impl Port {
    /// Makes `lease`'s region readable by the device and returns the device address of its
    /// first byte: for PMDs whose device reads by DMA, registered with DPDK and mapped for the
    /// port's device at IOVA = VA (kept until the port is stopped); for the others (the CPU
    /// copies) nothing to do. Err says why the device cannot read it.
    fn dma_map(&self, lease: &RegionLease) -> Result<u64, String> {
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

/// Payload bytes (the parts after the first) one queue sent from the caller's memory and
/// copied. Written by the queue's thread only, read by the console's.
#[derive(Default)]
#[repr(align(64))]
struct PayloadCounters {
    zero_copy: AtomicU64,
    copied: AtomicU64,
}

impl PayloadCounters {
    fn add(&self, zero_copy: usize, copied: usize) {
        // One writer: a plain load and store is enough (and no locked instruction per frame).
        if zero_copy > 0 {
            let v = self.zero_copy.load(Ordering::Relaxed);
            self.zero_copy.store(v + zero_copy as u64, Ordering::Relaxed);
        }
        if copied > 0 {
            let v = self.copied.load(Ordering::Relaxed);
            self.copied.store(v + copied as u64, Ordering::Relaxed);
        }
    }
}

/// A storage pool region mapped for the device: its lease and the pieces (start, len) it was
/// registered and mapped in.
type DmaMapping = (RegionLease, Vec<(usize, usize)>);

/// One queue's zero-copy state, shared with the [`BufferHolds`] of the pools it sends from.
#[derive(Default)]
struct ZcQueue {
    /// Buffer allocations that found only buffers this queue's mbufs still pointed at.
    buffer_waits: AtomicU64,
    /// A pool asked for held buffers back: free what the device is done with when idle.
    release_wanted: AtomicBool,
}

/// The holds of one queue on one leased storage pool: a shared-info block per buffer, whose
/// count above one means mbufs still point into the buffer (see "Zero-copy transmit").
struct BufferHolds {
    /// Indexed by buffer; the blocks are never freed (an mbuf the PMD frees late may still
    /// point at one), only this array of pointers to them.
    shinfo: Box<[NonNull<sys::rte_mbuf_ext_shared_info>]>,
    queue: Arc<ZcQueue>,
}

// SAFETY: the blocks live for the rest of the process and are only read here through DPDK's
// atomic reference count (rte_mbuf_ext_refcnt_read); the rest is atomics.
unsafe impl Send for BufferHolds {}
// SAFETY: as for Send: shared access only reads atomic counts or updates atomics.
unsafe impl Sync for BufferHolds {}

impl BufferHolds {
    /// Blocks for `buffers` buffers; None when out of memory.
    fn new(buffers: usize, queue: Arc<ZcQueue>) -> Option<BufferHolds> {
        let mut shinfo = Vec::with_capacity(buffers);
        for _ in 0..buffers {
            // SAFETY: allocates and initialises a block that is never freed; no other effect.
            shinfo.push(NonNull::new(unsafe { sys::dpdk_sys_ext_shinfo_new() })?);
        }
        Some(BufferHolds { shinfo: shinfo.into_boxed_slice(), queue })
    }

    /// Mbufs pointing into buffer `index` plus one.
    fn refs(&self, index: usize) -> u16 {
        match self.shinfo.get(index) {
            // SAFETY: the block lives for the rest of the process; reading its count has no
            // other effect.
            Some(s) => unsafe { sys::dpdk_sys_ext_shinfo_refcnt(s.as_ptr()) },
            None => 1,
        }
    }
}

impl DeviceHolds for BufferHolds {
    fn held(&self, index: usize) -> bool {
        self.refs(index) > 1
    }

    fn wanted(&self, delayed: bool) {
        // Called on the queue's own core (the pool is per core): plain load and store.
        if delayed {
            let w = &self.queue.buffer_waits;
            w.store(w.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        self.queue.release_wanted.store(true, Ordering::Relaxed);
    }
}

/// A leased storage pool a queue sends from without copying.
struct ZcRegion {
    lease: RegionLease,
    /// Device address of the region's first byte (its virtual address when DMA-mapped).
    iova: u64,
    holds: Arc<BufferHolds>,
}

/// What the backend itself dropped or refused, beside the device's counters.
#[derive(Default)]
struct SoftCounters {
    /// Flushes that found the ring full: the frames it did not take stay queued for the next
    /// (and a full batch refuses new ones, which the stack takes back and sends later).
    tx_ring_full: AtomicU64,
    /// Empty frames or frames larger than one mbuf given to `tx_gather` (dropped).
    tx_bad_length: AtomicU64,
    /// `tx_gather` found the pool empty (refused, caller retries).
    tx_no_mbuf: AtomicU64,
    /// Received frames spread over several mbufs (dropped: scatter is not enabled).
    rx_multi_seg: AtomicU64,
    /// Frames whose offload request the PMD's `rte_eth_tx_prepare` refused (dropped).
    tx_prepare_refused: AtomicU64,
    /// Frames with zero-copy parts that were copied after all (chain too long).
    tx_zero_copy_fallback: AtomicU64,
    /// Storage pools whose region could not be DMA-mapped for the device (their payload is
    /// copied).
    tx_zero_copy_unmapped: AtomicU64,
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

/// A received frame: the PMD's mbuf, returned to the pool when dropped.
pub struct DpdkFrame {
    mbuf: NonNull<sys::rte_mbuf>,
    data: NonNull<u8>,
    len: usize,
}

// SAFETY: the frame exclusively owns its mbuf; freeing it from another thread is safe with the
// MT-safe pool ops the backend uses.
unsafe impl Send for DpdkFrame {}

impl FrameBuf for DpdkFrame {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `data`/`len` are the single segment's data pointer and length read when the
        // frame was received; the mbuf stays owned by this frame (not freed, not written by
        // the PMD) until drop, so the bytes stay valid for the borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl Drop for DpdkFrame {
    fn drop(&mut self) {
        // SAFETY: the frame owns this mbuf (taken from rte_eth_rx_burst, freed only here).
        unsafe { sys::dpdk_sys_pktmbuf_free(self.mbuf.as_ptr()) }
    }
}

impl std::fmt::Debug for DpdkFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkFrame").field("len", &self.len).finish()
    }
}

/// One RX/TX queue pair of a DPDK port, driven by one thread.
pub struct DpdkNic {
    port: Arc<Port>,
    queue: u16,
    /// Frames queued by `tx_gather`, owned here until `tx_flush` hands them to the PMD (those
    /// a full ring did not take stay, in order, for the next flush).
    tx: Vec<NonNull<sys::rte_mbuf>>,
    /// How many of `tx`, from the front, `rte_eth_tx_prepare` has seen already.
    tx_prepared: usize,
    tx_batch: usize,
    rx_scratch: [*mut sys::rte_mbuf; BURST],
    /// Storage pool regions payload may be sent from without copying ([`Nic::tx_from_pool`]).
    zc_regions: Vec<ZcRegion>,
    /// Whether to call rte_eth_tx_done_cleanup (the port has it, and it has not refused).
    tx_cleanup: bool,
}

/// Why a zero-copy build stopped.
enum ZcStop {
    Refused(TxRefused),
    /// More mbufs than the port allows: copy the frame instead.
    TooLong,
}

/// A frame's mbuf chain being built: its head, the tailroom of its last mbuf (0 when that one
/// points at caller memory), that mbuf's length, and the chain's length.
struct Chain {
    head: NonNull<sys::rte_mbuf>,
    room: usize,
    last_len: usize,
    segs: usize,
}

// SAFETY: a queue handle is used by one thread at a time (`&mut self` for bursts), which is
// all DPDK asks of a queue; the mbufs it holds are exclusively its own.
unsafe impl Send for DpdkNic {}

impl Drop for DpdkNic {
    fn drop(&mut self) {
        self.free_queued_tx();
        let mut claimed = self.port.claimed.lock().unwrap_or_else(|e| e.into_inner());
        claimed[usize::from(self.queue)] = false;
    }
}

fn config_error(msg: impl Into<String>) -> NicError {
    NicError::Config(msg.into())
}

/// DPDK's message for the calling thread's `rte_errno`, or for `-ret` when given.
fn dpdk_error(what: &str, ret: c_int) -> NicError {
    let errnum = if ret < 0 {
        -ret
    } else {
        // SAFETY: reads the calling thread's rte_errno; no other effect.
        unsafe { sys::dpdk_sys_errno() }
    };
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // that stays valid until the next call on this thread; it is copied at once.
    let msg = unsafe { CStr::from_ptr(sys::rte_strerror(errnum)) }
        .to_string_lossy()
        .into_owned();
    NicError::Config(format!("{what}: {msg} ({errnum})"))
}

/// Splits the EAL argument string like a POSIX shell would (quotes, backslashes).
pub fn split_eal_args(eal_args: &str) -> Result<Vec<String>, NicError> {
    shlex::split(eal_args).ok_or_else(|| {
        config_error(format!(
            "cannot split DPDK EAL arguments {eal_args:?}: unbalanced quote"
        ))
    })
}

fn eal_init(eal_args: &str) -> Result<(), NicError> {
    let mut args = vec!["appliance".to_string()];
    args.extend(split_eal_args(eal_args)?);
    let args: Vec<CString> = args
        .into_iter()
        .map(|a| CString::new(a).map_err(|_| config_error("DPDK EAL argument holds a NUL byte")))
        .collect::<Result<_, _>>()?;
    if EAL_STARTED.swap(true, Ordering::SeqCst) {
        return Err(config_error(
            "DPDK EAL is already initialised in this process (once only)",
        ));
    }
    // EAL keeps pointers into argv (and permutes it): both live for the rest of the process.
    let args: &'static [CString] = Box::leak(args.into_boxed_slice());
    let argv: &'static mut [*mut c_char] = Box::leak(
        args.iter()
            .map(|a| a.as_ptr() as *mut c_char)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    log::info!("dpdk: EAL init with {:?}", args);
    // SAFETY: sets DPDK's global log stream to the process's stderr (valid for its whole
    // life); allowed before EAL init. Keeps EAL and PMD messages off a stdio console.
    if unsafe { sys::dpdk_sys_log_to_stderr() } != 0 {
        log::warn!("dpdk: cannot send DPDK's log to stderr");
    }
    let affinity = thread_affinity();
    // SAFETY: argv holds argc valid NUL-terminated strings that are never freed; EAL init
    // runs at most once per process (guarded by EAL_STARTED).
    let ret = unsafe { sys::rte_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
    if ret < 0 {
        return Err(dpdk_error("DPDK EAL initialisation failed", 0));
    }
    // EAL pins the calling thread to its main lcore; the appliance places its own threads
    // (and those they spawn inherit this mask), so give the caller its mask back.
    if let Some(set) = affinity {
        // SAFETY: `set` is a cpu_set_t filled by sched_getaffinity for this same thread.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0
        {
            log::warn!(
                "dpdk: cannot restore the CPU affinity EAL changed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The calling thread's CPU affinity mask, if the kernel tells it.
fn thread_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is valid; sched_getaffinity
    // writes at most its size into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// The TX offload flags of `flags` by DPDK's names (lower case, without the prefix), and the
/// bits this backend has no name for in hex.
fn tx_offload_names(flags: u64) -> String {
    let c = sys::consts();
    let known = [
        (c.tx_offload_ipv4_cksum, "ipv4_cksum"),
        (c.tx_offload_tcp_cksum, "tcp_cksum"),
        (c.tx_offload_udp_cksum, "udp_cksum"),
        (c.tx_offload_tcp_tso, "tcp_tso"),
        (c.tx_offload_multi_segs, "multi_segs"),
        (c.tx_offload_mbuf_fast_free, "mbuf_fast_free"),
        (c.tx_offload_vlan_insert, "vlan_insert"),
    ];
    let mut names: Vec<String> = known
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let other = known.iter().fold(flags, |rest, (f, _)| rest & !f);
    if other != 0 {
        names.push(format!("other {other:#x}"));
    }
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(",")
    }
}

/// A Toeplitz key whose 16-bit period makes the hash symmetric: swapping source and
/// destination address and port gives the same queue, so both directions of a connection meet.
fn symmetric_rss_key(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 2 == 0 { 0x6d } else { 0x5a })
        .collect()
}

impl DpdkNic {
    /// Initialises the EAL from `eal_args` (split like a shell would), creates the mbuf pool,
    /// configures port `cfg.port` with `cfg.queues` RX/TX queue pairs and starts it. Returns
    /// the handle of queue 0; [`DpdkNic::queue`] gives the others.
    pub fn start(eal_args: &str, cfg: DpdkConfig) -> Result<DpdkNic, NicError> {
        if cfg.queues == 0 {
            return Err(config_error("DPDK needs at least one queue"));
        }
        if cfg.tx_batch == 0 {
            return Err(config_error("DPDK tx_batch must be at least 1"));
        }
        eal_init(eal_args)?;
        let consts = sys::consts();
        let port = cfg.port;

        // SAFETY: EAL is initialised; the call only reads the ethdev table.
        if unsafe { sys::rte_eth_dev_is_valid_port(port) } == 0 {
            // SAFETY: as above.
            let avail = unsafe { sys::rte_eth_dev_count_avail() };
            return Err(config_error(format!(
                "DPDK port {port} does not exist ({avail} port(s) probed: check --vdev/-a and the PMD)"
            )));
        }
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port; `info` is a properly sized, writable rte_eth_dev_info.
        let ret = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
        if ret != 0 {
            return Err(dpdk_error("rte_eth_dev_info_get", ret));
        }
        let pmd = if info.driver_name.is_null() {
            "unknown".to_string()
        } else {
            // SAFETY: driver_name points to the PMD's static NUL-terminated name.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        let mut cfg = cfg;
        let rss_hf = (consts.rss_ip | consts.rss_tcp) & info.flow_type_rss_offloads;
        if cfg.queues > 1 && (rss_hf == 0 || !cfg.exact_queues) {
            // Fewer queues than cores is a slower appliance, not a broken one, unless asked.
            let most = info.max_rx_queues.min(info.max_tx_queues).max(1);
            let fits = if rss_hf == 0 { 1 } else { cfg.queues.min(most) };
            if fits < cfg.queues {
                log::warn!(
                    "dpdk: port {port} ({pmd}) {}: {fits} queue(s) instead of {}",
                    if rss_hf == 0 { "has no RSS over IP/TCP".to_string() } else { format!("has at most {most} queue pairs") },
                    cfg.queues
                );
                cfg.queues = fits;
            }
        }
        if cfg.queues > info.max_rx_queues || cfg.queues > info.max_tx_queues {
            return Err(config_error(format!(
                "DPDK port {port} ({pmd}) has at most {} RX / {} TX queues, {} asked",
                info.max_rx_queues, info.max_tx_queues, cfg.queues
            )));
        }

        let mut conf = sys::rte_eth_conf::default();
        let mut offloads = DpdkOffloads::default();
        let mut rss_key = Vec::new();
        if cfg.queues > 1 {
            if rss_hf == 0 {
                return Err(config_error(format!(
                    "DPDK port {port} ({pmd}) has no RSS over IP/TCP: cannot keep connections on one of {} queues",
                    cfg.queues
                )));
            }
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
            if info.hash_key_size > 0 {
                rss_key = symmetric_rss_key(usize::from(info.hash_key_size));
                conf.rx_adv_conf.rss_conf.rss_key = rss_key.as_mut_ptr();
                conf.rx_adv_conf.rss_conf.rss_key_len = info.hash_key_size;
            }
            offloads.rss = true;
        }
        let rx_want = [
            (consts.rx_offload_ipv4_cksum, &mut offloads.rx_ipv4_cksum),
            (consts.rx_offload_tcp_cksum, &mut offloads.rx_tcp_cksum),
            (consts.rx_offload_udp_cksum, &mut offloads.rx_udp_cksum),
        ];
        for (flag, enabled) in rx_want {
            if info.rx_offload_capa & flag != 0 {
                conf.rxmode.offloads |= flag;
                *enabled = true;
            }
        }
        let tx_capa = info.tx_offload_capa;
        let has = |flag: u64| tx_capa & flag != 0;
        offloads.tx_ipv4_cksum = has(consts.tx_offload_ipv4_cksum);
        offloads.tx_tcp_cksum = has(consts.tx_offload_tcp_cksum);
        offloads.tx_udp_cksum = has(consts.tx_offload_udp_cksum);
        offloads.tx_multi_segs = has(consts.tx_offload_multi_segs);
        // TSO takes a frame in chained mbufs and redoes the IPv4 and TCP checksums of each
        // segment; each segment may touch up to TSO_MBUFS_PER_SEGMENT mbufs.
        let lim = info.tx_desc_lim;
        let mtu_segs_ok = lim.nb_mtu_seg_max == 0 || lim.nb_mtu_seg_max >= TSO_MBUFS_PER_SEGMENT;
        offloads.tx_tcp_tso = has(consts.tx_offload_tcp_tso)
            && offloads.tx_multi_segs
            && offloads.tx_ipv4_cksum
            && offloads.tx_tcp_cksum
            && mtu_segs_ok;
        if has(consts.tx_offload_tcp_tso) && !offloads.tx_tcp_tso {
            log::info!(
                "dpdk: port {port} ({pmd}): TSO left off (it needs multi-segment transmit, IPv4 and TCP checksum offload and {TSO_MBUFS_PER_SEGMENT} mbufs a segment; the PMD has {})",
                tx_offload_names(tx_capa & !consts.tx_offload_tcp_tso)
            );
        }
        let tx_enabled = [
            (consts.tx_offload_ipv4_cksum, offloads.tx_ipv4_cksum),
            (consts.tx_offload_tcp_cksum, offloads.tx_tcp_cksum),
            (consts.tx_offload_udp_cksum, offloads.tx_udp_cksum),
            (consts.tx_offload_tcp_tso, offloads.tx_tcp_tso),
            (consts.tx_offload_multi_segs, offloads.tx_multi_segs),
        ];
        for (flag, enabled) in tx_enabled {
            if enabled {
                conf.txmode.offloads |= flag;
            }
        }
        // SAFETY: valid port, stopped; `conf` (and the RSS key it points to, alive until the
        // end of this function) is read during the call only.
        let ret = unsafe { sys::rte_eth_dev_configure(port, cfg.queues, cfg.queues, &conf) };
        drop(rss_key);
        if ret != 0 {
            return Err(dpdk_error(
                &format!("configuring DPDK port {port} ({pmd})"),
                ret,
            ));
        }
        let (mut rx_desc, mut tx_desc) = (cfg.rx_desc, cfg.tx_desc);
        // SAFETY: valid, configured port; both pointers are to live u16s.
        let ret =
            unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut rx_desc, &mut tx_desc) };
        if ret != 0 {
            return Err(dpdk_error("rte_eth_dev_adjust_nb_rx_tx_desc", ret));
        }

        let queues = u32::from(cfg.queues);
        let queues = u64::from(queues);
        let needed = queues
            * (u64::from(rx_desc) + u64::from(tx_desc) + cfg.tx_batch as u64 + BURST as u64)
            + u64::from(cfg.mbuf_cache) * (queues + 1);
        if u64::from(cfg.mbufs) < needed {
            return Err(config_error(format!(
                "DPDK pool of {} mbufs is too small for {} queue(s) of {rx_desc} RX + {tx_desc} TX descriptors: need at least {needed}",
                cfg.mbufs, cfg.queues
            )));
        }
        // SAFETY: valid port; no side effect.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
        let socket = if socket < 0 {
            consts.socket_id_any
        } else {
            socket
        };
        let data_room = consts.mbuf_default_buf_size;
        let pool_name = CString::new(format!("appl_mbufs_p{port}")).expect("no NUL in pool name");
        // SAFETY: EAL is initialised; the name is a valid C string copied by DPDK.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(
                pool_name.as_ptr(),
                cfg.mbufs,
                cfg.mbuf_cache,
                0,
                data_room as u16,
                socket,
            )
        };
        let pool = NonNull::new(pool)
            .ok_or_else(|| dpdk_error(&format!("creating a pool of {} mbufs", cfg.mbufs), 0))?;

        for q in 0..cfg.queues {
            // SAFETY: configured port, queue index below the configured count; NULL rx_conf
            // means the PMD's defaults; the pool lives for the rest of the process.
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(
                    port,
                    q,
                    rx_desc,
                    socket as u32,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if ret != 0 {
                return Err(dpdk_error(
                    &format!("setting up RX queue {q} of port {port}"),
                    ret,
                ));
            }
            // The PMD's default queue settings with the port's offloads (which apply to every
            // queue anyway).
            let txconf = sys::rte_eth_txconf {
                offloads: conf.txmode.offloads,
                ..info.default_txconf
            };
            // SAFETY: as above, for the TX queue; `txconf` is read during the call only.
            let ret =
                unsafe { sys::rte_eth_tx_queue_setup(port, q, tx_desc, socket as u32, &txconf) };
            if ret != 0 {
                return Err(dpdk_error(
                    &format!("setting up TX queue {q} of port {port}"),
                    ret,
                ));
            }
        }
        // SAFETY: every queue is set up.
        let ret = unsafe { sys::rte_eth_dev_start(port) };
        if ret != 0 {
            return Err(dpdk_error(
                &format!("starting DPDK port {port} ({pmd})"),
                ret,
            ));
        }
        // SAFETY: started port. Failure (PMD without the control) is only logged: the stack
        // filters on its own MAC anyway.
        let ret = unsafe { sys::rte_eth_promiscuous_disable(port) };
        if ret != 0 {
            log::warn!("dpdk: port {port} ({pmd}): cannot turn promiscuous mode off ({ret})");
        }
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: valid port; `mac` is a writable rte_ether_addr.
        let ret = unsafe { sys::rte_eth_macaddr_get(port, &mut mac) };
        if ret != 0 {
            return Err(dpdk_error("rte_eth_macaddr_get", ret));
        }
        let mut mtu: u16 = 1500;
        // SAFETY: valid port; `mtu` is a writable u16.
        if unsafe { sys::rte_eth_dev_get_mtu(port, &mut mtu) } != 0 {
            mtu = 1500;
        }
        let seg_bytes = (data_room - consts.pktmbuf_headroom) as usize;
        let mtu = usize::from(mtu).min(seg_bytes - ETHERNET_HEADER);
        let segs = match info.tx_desc_lim.nb_seg_max {
            0 => usize::MAX,
            n => usize::from(n),
        };
        // `needed` counts one mbuf for each frame a full batch queues: a batch of the
        // largest frames (in mbufs) must fit in what the rings and caches leave of the pool,
        // or transmit would find it empty (and TCP count the frames refused as lost).
        let spare = (u64::from(cfg.mbufs) - needed) / (queues * cfg.tx_batch as u64);
        let pool_segs = usize::try_from(spare + 1).unwrap_or(usize::MAX);
        let max_tso_frame = if offloads.tx_tcp_tso && offloads.tx_multi_segs {
            MAX_TSO_FRAME.min(segs.min(pool_segs).saturating_mul(seg_bytes))
        } else {
            0
        };
        let zc_why_not = if !cfg.zero_copy {
            Some("turned off (DPDK_ZERO_COPY=0)".to_string())
        } else if !offloads.tx_multi_segs {
            Some("the PMD has no multi-segment transmit".to_string())
        } else if (1..ZC_MTU_SEGS).contains(&info.tx_desc_lim.nb_mtu_seg_max) {
            Some(format!("the PMD takes at most {} mbufs a packet", info.tx_desc_lim.nb_mtu_seg_max))
        } else {
            None
        };
        let zc_max_segs = if zc_why_not.is_none() { segs.min(pool_segs).min(usize::from(u16::MAX)) } else { 0 };
        let zc = if zc_max_segs > 0 { (0..cfg.queues).map(|_| Arc::new(ZcQueue::default())).collect() } else { Vec::new() };
        let dma_map_needed = !NO_DMA_MAP_PMDS.contains(&pmd.as_str());
        match &zc_why_not {
            None => log::info!(
                "dpdk: port {port} ({pmd}): payload parts of at least {ZC_MIN_PART} bytes in storage buffers are sent without copying (at most {zc_max_segs} mbufs a frame; {})",
                if dma_map_needed { "each storage pool DMA-mapped for the device first" } else { "the PMD copies to the kernel: no DMA mapping" }
            ),
            Some(why) => log::info!("dpdk: port {port} ({pmd}): payload is copied into mbufs: {why}"),
        }
        // SAFETY: started port; no queue handle exists yet, so no thread drives queue 0, and
        // its ring is empty (nothing to free).
        let tx_cleanup = unsafe { sys::dpdk_sys_tx_done_cleanup(port, 0) } != -libc::ENOTSUP;
        if zc_max_segs > 0 && !tx_cleanup {
            log::info!("dpdk: port {port} ({pmd}) has no rte_eth_tx_done_cleanup: storage buffers its transmit ring still points at are let go only by its later transmit bursts");
        }
        let tcp_tx = TcpTxPlan::new(&pmd, &offloads, max_tso_frame, mtu);
        log::info!(
            "dpdk: port {port} driver {pmd} mac {:02x?} mtu {mtu} queues {} rx_desc {rx_desc} tx_desc {tx_desc} mbufs {} offloads {offloads:?}",
            mac.addr_bytes,
            cfg.queues,
            cfg.mbufs
        );
        log::info!(
            "dpdk: port {port} ({pmd}) TX offloads: the PMD has {}; enabled {}; TCP frames: {}",
            tx_offload_names(tx_capa),
            tx_offload_names(conf.txmode.offloads),
            match (tcp_tx.checksum, tcp_tx.tso_max_payload) {
                (false, _) => "checksummed and segmented in software".to_string(),
                (true, 0) => "checksum by the device, segmented in software".to_string(),
                (true, n) => format!(
                    "checksum and segmentation (TSO) by the device, up to {n} payload bytes a frame (at most {} mbufs: a batch of {} such frames fits the pool){}",
                    max_tso_frame.div_ceil(seg_bytes),
                    cfg.tx_batch,
                    if tcp_tx.tso_max_segments < usize::MAX {
                        format!(
                            " in at most {} segments of at most {} bytes with headers",
                            tcp_tx.tso_max_segments, tcp_tx.tso_max_segment_frame
                        )
                    } else {
                        String::new()
                    }
                ),
            }
        );
        let mut claimed = vec![false; usize::from(cfg.queues)];
        claimed[0] = true;
        let port = Arc::new(Port {
            id: port,
            pool,
            driver: format!("dpdk:{pmd}"),
            mac: mac.addr_bytes,
            mtu,
            queues: cfg.queues,
            offloads,
            seg_bytes,
            max_frame: mtu + ETHERNET_HEADER,
            max_tso_frame,
            tcp_tx,
            zc_max_segs,
            tx_cleanup,
            tx_desc,
            zc,
            dma_map_needed,
            dma_maps: Mutex::new(Vec::new()),
            tx_payload: (0..cfg.queues).map(|_| PayloadCounters::default()).collect(),
            claimed: Mutex::new(claimed),
            control: Mutex::new(()),
            sw: SoftCounters::default(),
        });
        Ok(DpdkNic::handle(port, 0, cfg.tx_batch))
    }

    fn handle(port: Arc<Port>, queue: u16, tx_batch: usize) -> DpdkNic {
        DpdkNic {
            tx_cleanup: port.tx_cleanup,
            port,
            queue,
            tx: Vec::with_capacity(tx_batch),
            tx_prepared: 0,
            tx_batch,
            rx_scratch: [std::ptr::null_mut(); BURST],
            zc_regions: Vec::new(),
        }
    }

    /// The handle of queue `queue` of the same port, for another core. Each queue has at most
    /// one live handle; dropping it makes the queue available again.
    pub fn queue(&self, queue: u16) -> Result<DpdkNic, NicError> {
        let mut claimed = self.port.claimed.lock().unwrap_or_else(|e| e.into_inner());
        match claimed.get_mut(usize::from(queue)) {
            None => Err(config_error(format!(
                "DPDK port {} has {} queue(s), no queue {queue}",
                self.port.id, self.port.queues
            ))),
            Some(true) => Err(config_error(format!(
                "DPDK queue {queue} is already in use"
            ))),
            Some(slot) => {
                *slot = true;
                Ok(DpdkNic::handle(self.port.clone(), queue, self.tx_batch))
            }
        }
    }

    /// This handle's queue index.
    pub fn queue_id(&self) -> u16 {
        self.queue
    }

    /// Queue pairs the port was configured with.
    pub fn queues(&self) -> u16 {
        self.port.queues
    }

    /// The offloads enabled on the port (what the PMD reported among those we use).
    pub fn offloads(&self) -> DpdkOffloads {
        self.port.offloads
    }

    /// Gives the calling (non-EAL) thread an lcore id so that it uses the pool's per-lcore
    /// cache; call once on each core's thread before its loop. Harmless to skip (slower pool).
    pub fn register_thread() -> Result<(), NicError> {
        // SAFETY: only reads thread-local EAL state.
        if unsafe { sys::dpdk_sys_lcore_id() } != sys::consts().lcore_id_any {
            return Ok(());
        }
        // SAFETY: EAL may be initialised or not: rte_thread_register reports failure itself.
        if unsafe { sys::rte_thread_register() } != 0 {
            return Err(dpdk_error("rte_thread_register", 0));
        }
        Ok(())
    }

    /// Largest frame `tx_gather_offload` takes for TSO (0 when the PMD has no TSO or no
    /// multi-segment transmit).
    pub fn max_tso_frame(&self) -> usize {
        self.port.max_tso_frame
    }

    /// Mbufs free in the pool (for the console and leak checks).
    pub fn pool_available(&self) -> u32 {
        // SAFETY: the pool lives for the rest of the process; the count is a racy read.
        unsafe { sys::rte_mempool_avail_count(self.port.pool.as_ptr()) }
    }

    /// The port's extended statistics by name (the PMD's own set), then the backend's own
    /// drop counters prefixed with `sw_`.
    pub fn xstats(&self) -> Vec<(String, u64)> {
        let port = self.port.id;
        let mut out = Vec::new();
        {
            let _guard = self.port.control.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: NULL/0 asks only for the count.
            let n = unsafe { sys::rte_eth_xstats_get_names(port, std::ptr::null_mut(), 0) };
            if n > 0 {
                let n = n as usize;
                let mut names = vec![sys::rte_eth_xstat_name::default(); n];
                let mut values = vec![sys::rte_eth_xstat::default(); n];
                // SAFETY: both buffers hold `n` writable entries, as the size passed says.
                let got_names =
                    unsafe { sys::rte_eth_xstats_get_names(port, names.as_mut_ptr(), n as u32) };
                // SAFETY: as above.
                let got_values =
                    unsafe { sys::rte_eth_xstats_get(port, values.as_mut_ptr(), n as u32) };
                if got_names > 0 && got_values > 0 {
                    let got_names = (got_names as usize).min(n);
                    for v in &values[..(got_values as usize).min(n)] {
                        let Some(name) = names[..got_names].get(v.id as usize) else {
                            continue;
                        };
                        // SAFETY: DPDK writes NUL-terminated names into the 64-byte arrays;
                        // the array is zero-initialised so a NUL exists in any case.
                        let name = unsafe { CStr::from_ptr(name.name.as_ptr()) };
                        out.push((name.to_string_lossy().into_owned(), v.value));
                    }
                }
            }
        }
        let sw = &self.port.sw;
        out.push((
            "sw_tx_ring_full".into(),
            sw.tx_ring_full.load(Ordering::Relaxed),
        ));
        out.push((
            "sw_tx_bad_length".into(),
            sw.tx_bad_length.load(Ordering::Relaxed),
        ));
        out.push((
            "sw_tx_no_mbuf".into(),
            sw.tx_no_mbuf.load(Ordering::Relaxed),
        ));
        out.push((
            "sw_rx_multi_seg".into(),
            sw.rx_multi_seg.load(Ordering::Relaxed),
        ));
        out.push((
            "sw_tx_prepare_refused".into(),
            sw.tx_prepare_refused.load(Ordering::Relaxed),
        ));
        let (zc, copied) = self.port.tx_payload.iter().fold((0, 0), |(z, c), q| {
            (z + q.zero_copy.load(Ordering::Relaxed), c + q.copied.load(Ordering::Relaxed))
        });
        out.push(("sw_tx_payload_zero_copy_bytes".into(), zc));
        out.push(("sw_tx_payload_copied_bytes".into(), copied));
        out.push((
            "sw_tx_zero_copy_fallback".into(),
            sw.tx_zero_copy_fallback.load(Ordering::Relaxed),
        ));
        let waits = self.port.zc.iter().map(|q| q.buffer_waits.load(Ordering::Relaxed)).sum();
        out.push(("sw_tx_zero_copy_buffer_waits".into(), waits));
        out.push((
            "sw_tx_zero_copy_unmapped_pools".into(),
            sw.tx_zero_copy_unmapped.load(Ordering::Relaxed),
        ));
        out
    }

    /// Whether this queue sends payload from a storage pool without copying (the port allows
    /// it and a pool was handed over).
    pub fn zero_copy(&self) -> bool {
        self.port.zc_max_segs > 0 && !self.zc_regions.is_empty()
    }

    /// Like [`Nic::tx_gather`], with a per-packet offload request (checksums, TSO) that the
    /// device carries out where [`DpdkNic::offloads`] says it can. With `tso_segsz` set and
    /// TSO available, the frame may be up to [`DpdkNic::max_tso_frame`] bytes (copied into
    /// chained mbufs).
    pub fn tx_gather_offload(&mut self, parts: &[&[u8]], offload: &TxOffload) -> bool {
        let limit = if offload.tso_segsz > 0 && self.port.max_tso_frame > 0 {
            self.port.max_tso_frame
        } else {
            self.port.max_frame
        };
        let c = sys::consts();
        let have = self.port.offloads;
        let mut flags = 0;
        if offload.ipv4_cksum || offload.tcp_cksum || offload.tso_segsz > 0 {
            flags |= c.mbuf_tx_ipv4;
        }
        if offload.ipv4_cksum && have.tx_ipv4_cksum {
            flags |= c.mbuf_tx_ip_cksum;
        }
        if offload.tcp_cksum && have.tx_tcp_cksum {
            flags |= c.mbuf_tx_tcp_cksum;
        }
        let mut tso = 0;
        if offload.tso_segsz > 0 && have.tx_tcp_tso {
            flags |= c.mbuf_tx_tcp_seg;
            tso = offload.tso_segsz;
        }
        self.queue_frame(parts, limit, |m| {
            // SAFETY: `m` is a fresh mbuf owned by this handle (not yet queued).
            unsafe {
                sys::dpdk_sys_pktmbuf_set_tx_offload(
                    m.as_ptr(),
                    flags,
                    offload.l2_len,
                    offload.l3_len,
                    offload.l4_len,
                    tso,
                )
            };
            true
        })
    }

    /// Copies `parts` into fresh mbufs (at most `limit` bytes), lets `finish` set the head's
    /// offload request, and queues the frame. What [`Nic::tx_gather`] returns: false only when
    /// the batch or the pool is full; a frame of a bad length, or one `finish` refuses (false),
    /// is dropped and counted.
    fn queue_frame(
        &mut self,
        parts: &[&[u8]],
        limit: usize,
        finish: impl FnOnce(NonNull<sys::rte_mbuf>) -> bool,
    ) -> bool {
        match self.build_frame(parts, limit) {
            Ok(m) if finish(m) => self.tx.push(m),
            Ok(m) => {
                self.port.sw.tx_bad_length.fetch_add(1, Ordering::Relaxed);
                // SAFETY: `m` and its chain are ours, not queued.
                unsafe { sys::dpdk_sys_pktmbuf_free(m.as_ptr()) };
            }
            Err(TxRefused::Full) => return false,
            // Dropped and counted: a retry could never succeed.
            Err(TxRefused::BadLength) => {}
        }
        true
    }

    /// Passes the queued mbufs from `from` on (at most `u16::MAX` of them) to one of DPDK's
    /// transmit burst calls on this queue: `rte_eth_tx_prepare`, which checks and fixes up
    /// their offload requests, or `rte_eth_tx_burst`, which takes the first ones it returns
    /// (the caller then forgets them). Returns how many were passed and what the call returned.
    fn burst_queued(
        &mut self,
        from: usize,
        burst: unsafe extern "C" fn(u16, u16, *mut *mut sys::rte_mbuf, u16) -> u16,
    ) -> (usize, usize) {
        let n = (self.tx.len() - from).min(usize::from(u16::MAX));
        // SAFETY: started port, queue driven by this handle only; the `n` pointers from `from`
        // on are mbufs we own and have not given to the PMD (NonNull<rte_mbuf> has the layout
        // of *mut rte_mbuf). Ownership of what tx_burst takes is the caller's to give up.
        let done = unsafe {
            burst(
                self.port.id,
                self.queue,
                self.tx.as_mut_ptr().add(from) as *mut *mut sys::rte_mbuf,
                n as u16,
            )
        };
        (n, usize::from(done))
    }

    /// Lets the PMD check the queued frames' offload requests and fix up what its device needs
    /// (`rte_eth_tx_prepare`); a frame it refuses is dropped and counted.
    fn prepare_queued(&mut self) {
        let mut from = self.tx_prepared;
        while from < self.tx.len() {
            let (n, ok) = self.burst_queued(from, sys::dpdk_sys_tx_prepare);
            if ok >= n {
                from += n;
                continue;
            }
            // SAFETY: reads the calling thread's rte_errno; no other effect.
            let errno = unsafe { sys::dpdk_sys_errno() };
            log::debug!(
                "dpdk: port {}: rte_eth_tx_prepare refused a frame ({errno})",
                self.port.id
            );
            let refused = self.tx.remove(from + ok);
            self.port
                .sw
                .tx_prepare_refused
                .fetch_add(1, Ordering::Relaxed);
            // SAFETY: the refused mbuf was ours and is no longer queued.
            unsafe { sys::dpdk_sys_pktmbuf_free(refused.as_ptr()) };
            from += ok;
        }
        self.tx_prepared = self.tx.len();
    }

    /// Where `part` may go out from without copying: the device address of its first byte
    /// and the shared-info block of the storage buffer it lies in. None when it is short,
    /// outside every leased pool, across two buffers, or its buffer has references to spare
    /// no more.
    fn zc_piece(&self, part: &[u8]) -> Option<(u64, NonNull<sys::rte_mbuf_ext_shared_info>)> {
        if part.len() < ZC_MIN_PART {
            return None;
        }
        let r = self.zc_regions.iter().find(|r| r.lease.contains(part))?;
        let idx = r.lease.buffer_of(part)?;
        if r.holds.refs(idx) >= ZC_MAX_REFS {
            return None;
        }
        let iova = r.iova + (part.as_ptr() as usize - r.lease.start()) as u64;
        Some((iova, *r.holds.shinfo.get(idx)?))
    }

    /// Builds the frame `parts` (at most `limit` bytes) into a fresh mbuf chain owned by the
    /// caller: payload parts from a leased pool by reference where possible
    /// ([`DpdkNic::attach_into_mbufs`]), everything else copied ([`DpdkNic::copy_into_mbuf`]).
    fn build_frame(&mut self, parts: &[&[u8]], limit: usize) -> Result<NonNull<sys::rte_mbuf>, TxRefused> {
        if self.zc_regions.is_empty() || !parts.iter().skip(1).any(|p| self.zc_piece(p).is_some()) {
            return self.copy_into_mbuf(parts, limit);
        }
        if self.tx.len() >= self.tx_batch {
            return Err(TxRefused::Full);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > limit {
            // The copy path refuses it and counts it.
            return self.copy_into_mbuf(parts, limit);
        }
        let head = self.alloc_mbuf()?;
        let mut chain = Chain { head, room: self.port.seg_bytes, last_len: 0, segs: 1 };
        let mut bytes = (0, 0);
        match self.attach_into_mbufs(parts, &mut chain, &mut bytes) {
            Ok(()) => {
                self.port.tx_payload[usize::from(self.queue)].add(bytes.0, bytes.1);
                Ok(chain.head)
            }
            Err(stop) => {
                // SAFETY: the chain is ours and not queued; freeing it drops the references
                // its external-buffer mbufs took.
                unsafe { sys::dpdk_sys_pktmbuf_free(chain.head.as_ptr()) };
                match stop {
                    ZcStop::Refused(r) => Err(r),
                    ZcStop::TooLong => {
                        self.port.sw.tx_zero_copy_fallback.fetch_add(1, Ordering::Relaxed);
                        self.copy_into_mbuf(parts, limit)
                    }
                }
            }
        }
    }

    /// Fills `chain` (holding one empty mbuf) with `parts`: the headers and short payload
    /// parts copied, payload parts in a leased pool's buffer attached as external buffers of
    /// at most ZC_MAX_PIECE bytes, under that buffer's shared-info block. Every mbuf but the last gets an even length: a byte is copied in
    /// front of an attached piece when the copied bytes before it are odd, and an odd last
    /// byte of a part is copied after it. Adds (zero-copy, copied) payload bytes to `bytes`.
    /// On error the caller frees the chain.
    fn attach_into_mbufs(&self, parts: &[&[u8]], chain: &mut Chain, bytes: &mut (usize, usize)) -> Result<(), ZcStop> {
        for (i, part) in parts.iter().enumerate() {
            let mut part: &[u8] = part;
            let piece = if i > 0 { self.zc_piece(part) } else { None };
            if let Some((mut iova, shinfo)) = piece {
                if chain.last_len % 2 == 1 {
                    self.chain_copy(chain, &part[..1])?;
                    bytes.1 += 1;
                    part = &part[1..];
                    iova += 1;
                }
                while part.len() >= 2 {
                    let n = part.len().min(ZC_MAX_PIECE) & !1;
                    // The device reads the piece at `iova` (DMA-mapped for it, or unused by
                    // the PMDs in NO_DMA_MAP_PMDS, whose CPU copies it).
                    self.chain_attach(chain, &part[..n], iova, shinfo)?;
                    bytes.0 += n;
                    part = &part[n..];
                    iova += n as u64;
                }
            }
            if i > 0 {
                bytes.1 += part.len();
            }
            self.chain_copy(chain, part)?;
        }
        Ok(())
    }

    /// Appends a fresh mbuf to `chain`, after `fill` has set its data (one more mbuf than the
    /// port allows is TooLong).
    fn chain_mbuf(&self, chain: &mut Chain, fill: impl FnOnce(NonNull<sys::rte_mbuf>)) -> Result<(), ZcStop> {
        if chain.segs >= self.port.zc_max_segs {
            return Err(ZcStop::TooLong);
        }
        let seg = self.alloc_mbuf().map_err(ZcStop::Refused)?;
        fill(seg);
        // SAFETY: both are ours; `seg` is a single mbuf whose pkt_len is its data_len (chain
        // adds it to the head's). On failure (chain too long) they are not linked: `seg` is
        // freed here (dropping any reference it took), the chain by the caller.
        if unsafe { sys::dpdk_sys_pktmbuf_chain(chain.head.as_ptr(), seg.as_ptr()) } != 0 {
            // SAFETY: as above.
            unsafe { sys::dpdk_sys_pktmbuf_free(seg.as_ptr()) };
            return Err(ZcStop::TooLong);
        }
        chain.segs += 1;
        Ok(())
    }

    /// Copies `bytes` to the end of `chain`, in new mbufs where the last has no room.
    fn chain_copy(&self, chain: &mut Chain, mut bytes: &[u8]) -> Result<(), ZcStop> {
        while !bytes.is_empty() {
            if chain.room == 0 {
                self.chain_mbuf(chain, |_| {})?;
                chain.room = self.port.seg_bytes;
                chain.last_len = 0;
            }
            let n = chain.room.min(bytes.len());
            // SAFETY: the chain is ours; its last mbuf is a pool mbuf with `room` >= n bytes of
            // tailroom (tracked since it was allocated), so append returns where they start.
            let dst = unsafe { sys::dpdk_sys_pktmbuf_append(chain.head.as_ptr(), n as u16) } as *mut u8;
            if dst.is_null() {
                // Cannot happen while `room` tracks the tailroom; refuse rather than write.
                self.port.sw.tx_bad_length.fetch_add(1, Ordering::Relaxed);
                return Err(ZcStop::Refused(TxRefused::BadLength));
            }
            // SAFETY: `dst` has `n` writable bytes inside a pool mbuf, which cannot overlap the
            // caller's slices.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n) };
            chain.room -= n;
            chain.last_len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Appends an mbuf pointing at `piece` (caller memory in one buffer of a leased pool, at
    /// most ZC_MAX_PIECE bytes) to `chain`, under that buffer's shared-info block.
    fn chain_attach(
        &self,
        chain: &mut Chain,
        piece: &[u8],
        iova: u64,
        shinfo: NonNull<sys::rte_mbuf_ext_shared_info>,
    ) -> Result<(), ZcStop> {
        self.chain_mbuf(chain, |seg| {
            // `piece` lies in one buffer of a leased pool (kept allocated while the lease, which
            // this handle or the port holds, lives), and the reference taken on the buffer's
            // block keeps the pool from handing the buffer out for a new read until the PMD
            // has freed this mbuf (BufferHolds, installed in the pool).
            // SAFETY: `seg` is a fresh direct mbuf of ours, not yet linked; `piece` stays
            // valid and unchanged while attached (above); the device only reads it.
            unsafe {
                sys::dpdk_sys_pktmbuf_attach_ext(
                    seg.as_ptr(),
                    piece.as_ptr() as *mut std::ffi::c_void,
                    iova,
                    piece.len() as u16,
                    shinfo.as_ptr(),
                )
            }
        })?;
        chain.room = 0;
        chain.last_len = piece.len();
        Ok(())
    }

    /// Copies `parts` into a fresh mbuf owned by the caller, chaining more mbufs when the
    /// frame is larger than one (only allowed up to `limit`).
    fn copy_into_mbuf(
        &mut self,
        parts: &[&[u8]],
        limit: usize,
    ) -> Result<NonNull<sys::rte_mbuf>, TxRefused> {
        if self.tx.len() >= self.tx_batch {
            return Err(TxRefused::Full);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > limit || total == 0 {
            self.port.sw.tx_bad_length.fetch_add(1, Ordering::Relaxed);
            log::debug!("dpdk: dropping a {total}-byte frame (at most {limit} allowed)");
            return Err(TxRefused::BadLength);
        }
        let head = self.alloc_mbuf()?;
        let mut room = self.port.seg_bytes;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                if room == 0 {
                    let seg = match self.alloc_mbuf() {
                        Ok(seg) => seg,
                        Err(refused) => {
                            // SAFETY: `head` (and what is chained to it) is ours, not queued.
                            unsafe { sys::dpdk_sys_pktmbuf_free(head.as_ptr()) };
                            return Err(refused);
                        }
                    };
                    // SAFETY: both are ours; `seg` is a fresh empty mbuf. On failure (chain
                    // too long) neither is linked, so both are freed separately.
                    if unsafe { sys::dpdk_sys_pktmbuf_chain(head.as_ptr(), seg.as_ptr()) } != 0 {
                        // SAFETY: as above: both still ours, not linked.
                        unsafe {
                            sys::dpdk_sys_pktmbuf_free(seg.as_ptr());
                            sys::dpdk_sys_pktmbuf_free(head.as_ptr());
                        }
                        self.port.sw.tx_bad_length.fetch_add(1, Ordering::Relaxed);
                        return Err(TxRefused::BadLength);
                    }
                    room = self.port.seg_bytes;
                }
                let n = room.min(part.len());
                // SAFETY: `head` is ours; append grows its last segment, which has `room` >= n
                // bytes of tailroom, and returns where they start.
                let dst =
                    unsafe { sys::dpdk_sys_pktmbuf_append(head.as_ptr(), n as u16) } as *mut u8;
                if dst.is_null() {
                    // Cannot happen while `room` tracks the tailroom; refuse rather than write.
                    // SAFETY: `head` and its chain are ours, not queued.
                    unsafe { sys::dpdk_sys_pktmbuf_free(head.as_ptr()) };
                    self.port.sw.tx_bad_length.fetch_add(1, Ordering::Relaxed);
                    return Err(TxRefused::BadLength);
                }
                // SAFETY: `dst` has `n` writable bytes inside the mbuf, which cannot overlap the
                // caller's slices (it was just taken from the pool).
                unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), dst, n) };
                room -= n;
                part = &part[n..];
            }
        }
        let payload: usize = parts.iter().skip(1).map(|p| p.len()).sum();
        self.port.tx_payload[usize::from(self.queue)].add(0, payload);
        Ok(head)
    }

    fn alloc_mbuf(&self) -> Result<NonNull<sys::rte_mbuf>, TxRefused> {
        // SAFETY: the pool lives for the rest of the process and is MT-safe.
        let m = unsafe { sys::dpdk_sys_pktmbuf_alloc(self.port.pool.as_ptr()) };
        NonNull::new(m).ok_or_else(|| {
            self.port.sw.tx_no_mbuf.fetch_add(1, Ordering::Relaxed);
            TxRefused::Full
        })
    }

    /// The queue has nothing to send: if a storage pool waits for buffers this queue's mbufs
    /// still point at, free what the device is done with (rte_eth_tx_done_cleanup; PMDs
    /// without it free them in their next transmit burst).
    fn release_held(&mut self) {
        let Some(zc) = self.port.zc.get(usize::from(self.queue)) else { return };
        if !zc.release_wanted.load(Ordering::Relaxed) {
            return;
        }
        zc.release_wanted.store(false, Ordering::Relaxed);
        if !self.tx_cleanup {
            return;
        }
        // SAFETY: started port; this handle alone drives this queue (as for tx_burst).
        let ret = unsafe { sys::dpdk_sys_tx_done_cleanup(self.port.id, self.queue) };
        if ret == -libc::ENOTSUP || ret == -libc::EOPNOTSUPP {
            self.tx_cleanup = false;
            log::info!(
                "dpdk: port {} ({}) has no rte_eth_tx_done_cleanup: storage buffers its transmit ring still points at are let go at its next transmit burst",
                self.port.id,
                self.port.driver
            );
        } else if ret < 0 {
            log::debug!("dpdk: port {} queue {}: rte_eth_tx_done_cleanup: {ret}", self.port.id, self.queue);
        }
    }

    fn free_queued_tx(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        // SAFETY: every queued mbuf is owned by this handle and not given to the PMD;
        // NonNull<rte_mbuf> has the layout of *mut rte_mbuf.
        unsafe {
            sys::rte_pktmbuf_free_bulk(
                self.tx.as_mut_ptr() as *mut *mut sys::rte_mbuf,
                self.tx.len() as u32,
            )
        };
        self.tx.clear();
    }
}

impl Nic for DpdkNic {
    type Rx = DpdkFrame;

    fn rx_burst(&mut self, out: &mut Vec<DpdkFrame>, max: usize) -> usize {
        let mut appended = 0;
        let mut asked = 0;
        while asked < max {
            let want = (max - asked).min(BURST);
            asked += want;
            // SAFETY: the port is started, this handle alone drives this queue, and
            // rx_scratch has room for `want` <= BURST pointers.
            let n = unsafe {
                sys::dpdk_sys_rx_burst(
                    self.port.id,
                    self.queue,
                    self.rx_scratch.as_mut_ptr(),
                    want as u16,
                )
            } as usize;
            for &m in &self.rx_scratch[..n] {
                // SAFETY: the PMD returned `m` as a valid received mbuf now owned by us.
                let (segs, data, len) = unsafe {
                    (
                        sys::dpdk_sys_pktmbuf_nb_segs(m),
                        sys::dpdk_sys_pktmbuf_mtod(m) as *mut u8,
                        sys::dpdk_sys_pktmbuf_data_len(m),
                    )
                };
                match (NonNull::new(m), NonNull::new(data)) {
                    (Some(mbuf), Some(data)) if segs == 1 => {
                        out.push(DpdkFrame {
                            mbuf,
                            data,
                            len: usize::from(len),
                        });
                        appended += 1;
                    }
                    _ => {
                        self.port.sw.rx_multi_seg.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: we own `m` and drop it here.
                        unsafe { sys::dpdk_sys_pktmbuf_free(m) };
                    }
                }
            }
            if n < want {
                break;
            }
        }
        appended
    }

    fn tx_gather(&mut self, parts: &[&[u8]]) -> bool {
        self.queue_frame(parts, self.port.max_frame, |_| true)
    }

    /// With the PMD's TCP checksum offload the frame goes to the device as one mbuf chain
    /// asking for the checksum and, when its payload is longer than `tcp.mss`, segmentation
    /// (TSO; in segments cut to fit the PMD's limits, see `TcpTxPlan::new`). Frames the
    /// device cannot take whole, and every frame on ports without the offloads, are cut and
    /// checksummed in software into [`Nic::tx_gather`]. A malformed frame is dropped and
    /// counted (true: a retry could never succeed).
    fn tx_tcp(&mut self, parts: &[&[u8]], tcp: TcpTx) -> bool {
        let plan = self.port.tcp_tx;
        let hdr_len = tcp.l4_offset + tcp.l4_len;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let segsz = plan.tso_segsz(tcp, total.saturating_sub(hdr_len));
        let (true, Some(segsz)) = (plan.checksum, segsz) else {
            return offload::segment(parts, tcp, |frame| self.tx_gather(&[frame]));
        };
        let shape_ok = parts.first().is_some_and(|h| h.len() == hdr_len)
            && tcp.l4_offset >= ETHERNET_HEADER + 20
            && tcp.l4_len >= 20
            && hdr_len <= MAX_TCP_HEADERS
            && tcp.mss > 0;
        if !shape_ok {
            self.port.sw.tx_bad_length.fetch_add(1, Ordering::Relaxed);
            log::debug!("dpdk: dropping a malformed TCP frame of {total} bytes ({tcp:?})");
            return true;
        }
        let limit = if segsz > 0 {
            self.port.max_tso_frame
        } else {
            self.port.max_frame
        };
        let (l3_len, l4_len) = ((tcp.l4_offset - ETHERNET_HEADER) as u16, tcp.l4_len as u16);
        self.queue_frame(parts, limit, |m| {
            // SAFETY: `m` is a fresh mbuf chain owned by this handle (not yet queued) holding
            // the whole frame; the shim writes only inside its first segment's headers, after
            // checking that they lie there.
            unsafe {
                sys::dpdk_sys_pktmbuf_tcp4_tx_offload(
                    m.as_ptr(),
                    ETHERNET_HEADER as u16,
                    l3_len,
                    l4_len,
                    segsz,
                ) == 0
            }
        })
    }

    fn tx_flush(&mut self) -> usize {
        if self.tx.is_empty() {
            self.release_held();
            return 0;
        }
        if self.port.offloads.tx_requests() {
            self.prepare_queued();
        }
        let mut sent = 0;
        while sent < self.tx.len() {
            // The PMD owns the `taken` mbufs it took: they are forgotten with `tx` below.
            let (_, taken) = self.burst_queued(sent, sys::dpdk_sys_tx_burst);
            if taken == 0 {
                break;
            }
            sent += taken;
        }
        // The PMD owns the first `sent`. The rest (a full ring) stay queued for the next
        // flush: the batch has that much less room meanwhile, and a full batch refuses new
        // frames, which the stack takes back (a full ring is back-pressure, not loss).
        self.tx.drain(..sent);
        self.tx_prepared = self.tx.len();
        if !self.tx.is_empty() {
            self.port.sw.tx_ring_full.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Sends payload in `pool`'s buffers without copying from now on: maps the pool's region
    /// for the device where it reads by DMA, makes a shared-info block per buffer and installs
    /// this queue's holds in the pool (see "Zero-copy transmit"). Where the region cannot be
    /// mapped, says why and copies.
    fn tx_from_pool(&mut self, pool: &DmaPool) {
        let Some(zc) = self.port.zc.get(usize::from(self.queue)) else { return };
        let lease = pool.lease();
        if lease.is_empty() || lease.buffers() == 0 || self.zc_regions.iter().any(|r| r.lease.start() == lease.start()) {
            return;
        }
        let iova = match self.port.dma_map(&lease) {
            Ok(iova) => iova,
            Err(why) => {
                self.port.sw.tx_zero_copy_unmapped.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "dpdk: port {} ({}) queue {}: cannot map the storage pool ({} bytes at {:#x}) for the device's DMA: {why}; its payload is copied",
                    self.port.id,
                    self.port.driver,
                    self.queue,
                    lease.len(),
                    lease.start()
                );
                return;
            }
        };
        let Some(holds) = BufferHolds::new(lease.buffers(), zc.clone()) else {
            log::error!("dpdk: out of memory for the shared-info blocks of {} storage buffers: their payload is copied", lease.buffers());
            return;
        };
        let holds = Arc::new(holds);
        pool.add_device_holds(holds.clone());
        if !self.port.tx_cleanup && lease.buffers() <= usize::from(self.port.tx_desc) {
            // At most: a frame holds one buffer in the worst case, and a virtio ring is often
            // shorter than the descriptors asked for. Said once, for an operator sizing pools.
            log::info!(
                "dpdk: port {} ({}): {} storage buffers for a transmit ring of up to {} descriptors and no rte_eth_tx_done_cleanup: should the ring ever point at every free buffer while the queue is idle, reads wait for its next transmit (more buffers avoid it)",
                self.port.id,
                self.port.driver,
                lease.buffers(),
                self.port.tx_desc
            );
        }
        log::info!(
            "dpdk: port {} ({}) queue {} sends payload from {} storage buffers of {} bytes at {:#x} (device address {iova:#x}) without copying",
            self.port.id,
            self.port.driver,
            self.queue,
            lease.buffers(),
            lease.buf_size(),
            lease.start()
        );
        self.zc_regions.push(ZcRegion { lease, iova, holds });
    }

    fn wait_rx(&mut self, _timeout: Duration) {
        // Poll mode: the caller's loop polls again at once.
    }

    fn link(&self) -> LinkInfo {
        let (mut up, mut speed) = (0, 0u32);
        let ret = {
            let _guard = self.port.control.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: valid port; both pointers are to live locals.
            unsafe { sys::dpdk_sys_link_get(self.port.id, &mut up, &mut speed) }
        };
        LinkInfo {
            mac: self.port.mac,
            mtu: self.port.mtu,
            up: ret == 0 && up != 0,
            driver: self.port.driver.clone(),
            offloads: TxOffloads {
                tcp_checksum: self.port.tcp_tx.checksum,
                tso_max_payload: self.port.tcp_tx.tso_max_payload,
            },
        }
    }

    fn xstats(&self) -> Vec<(String, u64)> {
        DpdkNic::xstats(self)
    }

    fn counters(&self) -> NicCounters {
        let mut stats = sys::rte_eth_stats::default();
        let ret = {
            let _guard = self.port.control.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: valid port; `stats` is a writable rte_eth_stats.
            unsafe { sys::rte_eth_stats_get(self.port.id, &mut stats) }
        };
        if ret != 0 {
            log::debug!("dpdk: rte_eth_stats_get failed ({ret})");
            stats = sys::rte_eth_stats::default();
        }
        port_share(&stats, &self.port.sw, self.queue, self.port.queues)
    }
}

pub use super::bench::{bench_rx, bench_tx, BENCH_RX_IDLE};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_args_split_like_a_shell() {
        let args = split_eal_args("--no-huge -m 256 --vdev='net_tap0,iface=a b' \"-l\" 0").unwrap();
        assert_eq!(
            args,
            [
                "--no-huge",
                "-m",
                "256",
                "--vdev=net_tap0,iface=a b",
                "-l",
                "0"
            ]
        );
        assert!(split_eal_args("--vdev='unterminated").is_err());
        assert!(split_eal_args("").unwrap().is_empty());
    }

    #[test]
    fn rss_key_is_symmetric() {
        let key = symmetric_rss_key(40);
        assert_eq!(key.len(), 40);
        // 16-bit period: any window starting at an even offset is the same.
        assert!(key.chunks(2).all(|c| c == [0x6d, 0x5a]));
        assert_eq!(
            toeplitz(&key, &tuple([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80)),
            toeplitz(&key, &tuple([10, 0, 0, 2], [10, 0, 0, 1], 80, 1234))
        );
        let plain = [
            0x6du8, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
            0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
            0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ];
        // The default (Microsoft) key is not symmetric: the test above can tell the difference.
        assert_ne!(
            toeplitz(&plain, &tuple([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80)),
            toeplitz(&plain, &tuple([10, 0, 0, 2], [10, 0, 0, 1], 80, 1234))
        );
    }

    fn all_tx() -> DpdkOffloads {
        DpdkOffloads {
            tx_ipv4_cksum: true,
            tx_tcp_cksum: true,
            tx_tcp_tso: true,
            tx_multi_segs: true,
            ..DpdkOffloads::default()
        }
    }

    #[test]
    fn tcp_tx_plan_follows_the_pmd() {
        // A device with TSO: MSS-sized segments, frames up to the largest IPv4 packet.
        let plan = TcpTxPlan::new("net_ice", &all_tx(), MAX_TSO_FRAME, 1500);
        assert!(plan.checksum);
        assert_eq!(plan.tso_max_payload, MAX_TSO_PAYLOAD);
        let tcp = TcpTx {
            l4_offset: 34,
            l4_len: 32,
            mss: 1448,
        };
        assert_eq!(
            plan.tso_segsz(tcp, 1448),
            Some(0),
            "one segment: checksum only"
        );
        assert_eq!(plan.tso_segsz(tcp, 60_000), Some(1448));
        assert_eq!(plan.tso_segsz(tcp, MAX_TSO_PAYLOAD + 1), None);
        // Fewer segments a packet (tx_desc_lim.nb_seg_max) shorten the frames.
        let plan = TcpTxPlan::new("net_ice", &all_tx(), 8 * 2048, 1500);
        assert_eq!(plan.tso_max_payload, 8 * 2048 - MAX_TCP_HEADERS);
        // Checksum without TSO, or nothing.
        let csum = DpdkOffloads {
            tx_tcp_tso: false,
            ..all_tx()
        };
        let plan = TcpTxPlan::new("net_ice", &csum, 0, 1500);
        assert!(plan.checksum && plan.tso_max_payload == 0);
        assert_eq!(plan.tso_segsz(tcp, 1000), Some(0));
        assert_eq!(plan.tso_segsz(tcp, 3000), None, "software segments it");
        let plan = TcpTxPlan::new("net_af_packet", &DpdkOffloads::default(), 0, 1500);
        assert_eq!(
            plan,
            TcpTxPlan {
                tso_max_segment_frame: 1514,
                tso_max_segments: usize::MAX,
                ..TcpTxPlan::default()
            }
        );
    }

    #[test]
    fn net_tap_segments_fit_its_mtu_check_and_stay_even() {
        let plan = TcpTxPlan::new("net_tap", &all_tx(), MAX_TSO_FRAME, 1500);
        // 1448 + 66 bytes of headers is more than the 1500 net_tap compares with.
        let ts = TcpTx {
            l4_offset: 34,
            l4_len: 32,
            mss: 1448,
        };
        assert_eq!(plan.tso_segsz(ts, 60_000), Some(1434));
        let plain = TcpTx {
            l4_offset: 34,
            l4_len: 20,
            mss: 1460,
        };
        assert_eq!(plan.tso_segsz(plain, 60_000), Some(1446));
        // Odd sizes round down; small ones stay.
        assert_eq!(plan.tso_segsz(TcpTx { mss: 1001, ..ts }, 5000), Some(1000));
        assert_eq!(plan.tso_segsz(TcpTx { mss: 536, ..ts }, 5000), Some(536));
        // At most 64 segments: more go to software.
        assert_eq!(
            plan.tso_segsz(TcpTx { mss: 536, ..ts }, 64 * 536),
            Some(536)
        );
        assert_eq!(plan.tso_segsz(TcpTx { mss: 536, ..ts }, 64 * 536 + 1), None);
        assert_eq!(
            plan.tso_segsz(TcpTx { mss: 1, ..ts }, 2),
            None,
            "an even size of 0 is none"
        );
    }

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&src);
        t.extend_from_slice(&dst);
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t
    }

    fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
        let mut hash = 0u32;
        for (i, byte) in input.iter().enumerate() {
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    let off = i * 8 + bit;
                    // The 32-bit window of the key starting at bit `off`.
                    let mut window = 0u32;
                    for k in 0..32 {
                        let b = off + k;
                        let kb = (key[b / 8] >> (7 - b % 8)) & 1;
                        window = (window << 1) | u32::from(kb);
                    }
                    hash ^= window;
                }
            }
        }
        hash
    }
}
