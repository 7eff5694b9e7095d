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
//! does not reuse a buffer while an mbuf points at it (see `zerocopy.rs`).
//!
//! TCP transmit offloads ([`Nic::tx_tcp`]): where the PMD reports TCP checksum offload (and
//! IPv4 checksum offload, TSO and multi-segment transmit for segmentation), the port is set
//! up with them and [`Nic::link`] advertises them; each TCP frame then goes to the device as
//! one mbuf chain with its offload request. Without them the frame is cut and checksummed in
//! software ([`offload::segment`]), as before.
//!
//! One file per concept: the EAL (`eal.rs`), the port shared by the queue handles (`port.rs`),
//! transmit offloads and how a TCP frame is cut for the PMD (`offloads.rs`), zero-copy
//! transmit and the building of mbuf chains (`zerocopy.rs`); this file sets the port up and
//! drives a queue (receive, queue and flush transmit).

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpdk_sys as sys;

use super::offload::{self, TcpTx, MAX_TSO_PAYLOAD};
use super::{FrameBuf, LinkInfo, Nic, NicCounters, NicError, RxChecksums, RxVerdict, TxOffloads};
use crate::storage::{DeviceHolds, DmaPool, RegionLease};

mod eal;
mod offloads;
mod port;
mod zerocopy;

pub use eal::split_eal_args;
pub use offloads::{DpdkOffloads, TxOffload};
pub use zerocopy::ZC_MIN_PART;
use eal::*;
use offloads::*;
use port::*;
use zerocopy::*;

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
    /// it, where the PMD allows (see `zerocopy.rs`).
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

/// Why a frame was not queued.
enum TxRefused {
    /// Batch full or pool empty: flush and retry.
    Full,
    /// Empty or larger than one mbuf: dropped and counted, never worth a retry.
    BadLength,
}

/// A received frame: the PMD's mbuf, returned to the pool when dropped.
pub struct DpdkFrame {
    mbuf: NonNull<sys::rte_mbuf>,
    data: NonNull<u8>,
    len: usize,
    checksums: RxChecksums,
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

    fn rx_checksums(&self) -> RxChecksums {
        self.checksums
    }
}

/// The verdicts of [`sys::dpdk_sys_rx_cksum_verdicts`], two bits each.
fn rx_checksums_of(verdicts: u8) -> RxChecksums {
    let one = |bits: u8| match u32::from(bits & 3) {
        sys::DPDK_SYS_CKSUM_GOOD => RxVerdict::Good,
        sys::DPDK_SYS_CKSUM_BAD => RxVerdict::Bad,
        _ => RxVerdict::Unchecked,
    };
    RxChecksums { ipv4: one(verdicts), l4: one(verdicts >> 2) }
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
    /// Hand over the PMD's receive checksum verdicts (where the port was set up for them).
    rx_verdicts: bool,
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
            rx_verdicts: true,
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
        let counters = [
            ("sw_tx_ring_full", &sw.tx_ring_full),
            ("sw_tx_bad_length", &sw.tx_bad_length),
            ("sw_tx_no_mbuf", &sw.tx_no_mbuf),
            ("sw_rx_multi_seg", &sw.rx_multi_seg),
            ("sw_tx_prepare_refused", &sw.tx_prepare_refused),
        ];
        out.extend(counters.iter().map(|(name, n)| (name.to_string(), n.load(Ordering::Relaxed))));
        let (zc, copied) = self.port.tx_payload.iter().fold((0, 0), |(z, c), q| {
            (z + q.zero_copy.load(Ordering::Relaxed), c + q.copied.load(Ordering::Relaxed))
        });
        out.push(("sw_tx_payload_zero_copy_bytes".into(), zc));
        out.push(("sw_tx_payload_copied_bytes".into(), copied));
        out.push(("sw_tx_zero_copy_fallback".into(), sw.tx_zero_copy_fallback.load(Ordering::Relaxed)));
        let waits = self.port.zc.iter().map(|q| q.buffer_waits.load(Ordering::Relaxed)).sum();
        out.push(("sw_tx_zero_copy_buffer_waits".into(), waits));
        out.push(("sw_tx_zero_copy_unmapped_pools".into(), sw.tx_zero_copy_unmapped.load(Ordering::Relaxed)));
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
        let rx_offload = self.rx_verdicts && (self.port.offloads.rx_ipv4_cksum || self.port.offloads.rx_tcp_cksum);
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
                let (segs, data, len, verdicts) = unsafe {
                    (
                        sys::dpdk_sys_pktmbuf_nb_segs(m),
                        sys::dpdk_sys_pktmbuf_mtod(m) as *mut u8,
                        sys::dpdk_sys_pktmbuf_data_len(m),
                        sys::dpdk_sys_rx_cksum_verdicts(m),
                    )
                };
                // Verdicts are read only where the port was set up to give them.
                let checksums = if rx_offload { rx_checksums_of(verdicts) } else { RxChecksums::UNCHECKED };
                match (NonNull::new(m), NonNull::new(data)) {
                    (Some(mbuf), Some(data)) if segs == 1 => {
                        out.push(DpdkFrame {
                            mbuf,
                            data,
                            len: usize::from(len),
                            checksums,
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
    /// this queue's holds in the pool (see `zerocopy.rs`). Where the region cannot be
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

    fn set_rx_checksum_offload(&mut self, on: bool) {
        self.rx_verdicts = on;
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
    fn checksum_verdict_bits_are_read_per_checksum() {
        let (u, g, b) = (sys::DPDK_SYS_CKSUM_UNCHECKED as u8, sys::DPDK_SYS_CKSUM_GOOD as u8, sys::DPDK_SYS_CKSUM_BAD as u8);
        assert_eq!(rx_checksums_of(u | u << 2), RxChecksums::UNCHECKED);
        assert_eq!(rx_checksums_of(g | b << 2), RxChecksums { ipv4: RxVerdict::Good, l4: RxVerdict::Bad });
        assert_eq!(rx_checksums_of(b | g << 2), RxChecksums { ipv4: RxVerdict::Bad, l4: RxVerdict::Good });
        assert_eq!(rx_checksums_of(3 | 3 << 2), RxChecksums::UNCHECKED, "no such verdict");
    }

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
