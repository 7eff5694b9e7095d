//! Zero-copy transmit
//!
//! A payload part that lies inside one buffer of a leased storage pool ([`Nic::tx_from_pool`])
//! and is at least ZC_MIN_PART bytes long is attached to an mbuf as an external buffer instead
//! of being copied; the headers, the short parts (TLS record headers and trailers) and the odd
//! bytes that keep every piece but the last of even length (net_tap checksums a chain piece by
//! piece with __rte_raw_cksum, which is only right over even-length pieces) are copied into
//! pool mbufs between them.
//!
//! Each storage buffer of a leased pool has its own rte_mbuf_ext_shared_info, made when the
//! pool is leased and never freed; its free callback does nothing (the memory is the storage
//! pool's) and its reference count is one (ours) plus one for every mbuf that points into the
//! buffer, wherever that mbuf is: queued here, on the device's ring, or sent and not yet
//! freed by the PMD. A buffer is held by the NIC while that count is above one.
//!
//! When may the storage layer reuse a buffer? Only when no mbuf of the NIC points at it any
//! more. The application gives buffers back when their data is acknowledged, at a
//! retransmission timeout and when a connection closes, none of which says that the device
//! has read them: a retransmitted copy may still sit on the ring, a device that DMAs from the
//! ring later (virtio behind vfio, a hardware NIC) reads a frame long after rte_eth_tx_burst
//! returned, and the PMD frees sent mbufs when it likes (often only when its ring runs low).
//! So the NIC installs its holds in the pool (storage::DeviceHolds): the pool's free list is
//! first in, first out, and `alloc` hands out the oldest free buffer whose count is back at
//! one, skipping held ones in place; a read that finds only held buffers waits (counted:
//! sw_tx_zero_copy_buffer_waits), the application re-checks on its loop while it has waiters
//! (DmaPool::ready, no allocation attempts), and the pool asks the NIC to let go: the queue,
//! when it has nothing to send, frees what the device is done with (rte_eth_tx_done_cleanup;
//! on PMDs without it the next transmit burst does). Frames queued but not flushed hold their
//! buffers the same way, and frames the device did not take are freed at the flush.
//!
//! The device must be able to read the memory: for PMDs whose device reads by DMA the pool's
//! region is registered with DPDK (rte_extmem_register) and mapped for the port's device
//! (rte_dev_dma_map: the vfio container, through the IOMMU) at IOVA = VA, which needs the EAL
//! in IOVA-as-VA mode. net_tap and net_af_packet need no mapping: the CPU copies the frame to
//! the kernel in rte_eth_tx_burst (NO_DMA_MAP_PMDS). Where the mapping cannot be made (IOVA as
//! PA, no vfio, a bus without DMA mapping) the queue copies, and says why in the log.

use super::*;

/// Shortest payload part sent from the caller's memory; shorter ones are copied.
pub const ZC_MIN_PART: usize = 256;

/// Longest piece one external-buffer mbuf points at (its lengths are 16-bit), kept even.
pub(super) const ZC_MAX_PIECE: usize = (u16::MAX as usize) & !1;

/// Mbufs one wire segment of a zero-copy frame may touch, at most: the headers' and, in up to
/// 1500 bytes of payload, pieces of at least ZC_MIN_PART - 1 bytes each with a copied piece
/// before and after. The PMD's per-packet limit (`nb_mtu_seg_max`) must not be lower.
pub(super) const ZC_MTU_SEGS: u16 = 1 + 2 * (1500 / (ZC_MIN_PART as u16 - 1) + 1) + 1;

/// Most mbufs that may point at one storage buffer through its shared-info block at a time
/// (the count is 16-bit): past it, frames are copied.
pub(super) const ZC_MAX_REFS: u16 = 60_000;

/// PMDs whose device never reads caller memory by DMA: net_tap writes each frame to the TAP
/// with writev, net_af_packet copies it into its socket's ring, both in rte_eth_tx_burst. No
/// DMA mapping is made for them.
pub(super) const NO_DMA_MAP_PMDS: [&str; 2] = ["net_tap", "net_af_packet"];

/// Pages one rte_extmem_register call may take (DPDK's RTE_MAX_MEMSEG_PER_LIST default).
pub(super) const MAX_EXTMEM_PAGES: usize = 8192;

/// Payload bytes (the parts after the first) one queue sent from the caller's memory and
/// copied. Written by the queue's thread only, read by the console's.
#[derive(Default)]
#[repr(align(64))]
pub(super) struct PayloadCounters {
    pub(super) zero_copy: AtomicU64,
    pub(super) copied: AtomicU64,
}

impl PayloadCounters {
    pub(super) fn add(&self, zero_copy: usize, copied: usize) {
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
pub(super) type DmaMapping = (RegionLease, Vec<(usize, usize)>);

/// One queue's zero-copy state, shared with the [`BufferHolds`] of the pools it sends from.
#[derive(Default)]
pub(super) struct ZcQueue {
    /// Buffer allocations that found only buffers this queue's mbufs still pointed at.
    pub(super) buffer_waits: AtomicU64,
    /// A pool asked for held buffers back: free what the device is done with when idle.
    pub(super) release_wanted: AtomicBool,
}

/// The holds of one queue on one leased storage pool: a shared-info block per buffer, whose
/// count above one means mbufs still point into the buffer (see the top of this file).
pub(super) struct BufferHolds {
    /// Indexed by buffer; the blocks are never freed (an mbuf the PMD frees late may still
    /// point at one), only this array of pointers to them.
    pub(super) shinfo: Box<[NonNull<sys::rte_mbuf_ext_shared_info>]>,
    pub(super) queue: Arc<ZcQueue>,
}

// SAFETY: the blocks live for the rest of the process and are only read here through DPDK's
// atomic reference count (rte_mbuf_ext_refcnt_read); the rest is atomics.
unsafe impl Send for BufferHolds {}

// SAFETY: as for Send: shared access only reads atomic counts or updates atomics.
unsafe impl Sync for BufferHolds {}

impl BufferHolds {
    /// Blocks for `buffers` buffers; None when out of memory.
    pub(super) fn new(buffers: usize, queue: Arc<ZcQueue>) -> Option<BufferHolds> {
        let mut shinfo = Vec::with_capacity(buffers);
        for _ in 0..buffers {
            // SAFETY: allocates and initialises a block that is never freed; no other effect.
            shinfo.push(NonNull::new(unsafe { sys::dpdk_sys_ext_shinfo_new() })?);
        }
        Some(BufferHolds { shinfo: shinfo.into_boxed_slice(), queue })
    }

    /// Mbufs pointing into buffer `index` plus one.
    pub(super) fn refs(&self, index: usize) -> u16 {
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
pub(super) struct ZcRegion {
    pub(super) lease: RegionLease,
    /// Device address of the region's first byte (its virtual address when DMA-mapped).
    pub(super) iova: u64,
    pub(super) holds: Arc<BufferHolds>,
}

/// Why a zero-copy build stopped.
pub(super) enum ZcStop {
    Refused(TxRefused),
    /// More mbufs than the port allows: copy the frame instead.
    TooLong,
}

/// A frame's mbuf chain being built: its head, the tailroom of its last mbuf (0 when that one
/// points at caller memory), that mbuf's length, and the chain's length.
pub(super) struct Chain {
    pub(super) head: NonNull<sys::rte_mbuf>,
    pub(super) room: usize,
    pub(super) last_len: usize,
    pub(super) segs: usize,
}

impl DpdkNic {
    /// Where `part` may go out from without copying: the device address of its first byte
    /// and the shared-info block of the storage buffer it lies in. None when it is short,
    /// outside every leased pool, across two buffers, or its buffer has references to spare
    /// no more.
    pub(super) fn zc_piece(&self, part: &[u8]) -> Option<(u64, NonNull<sys::rte_mbuf_ext_shared_info>)> {
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
    pub(super) fn build_frame(&mut self, parts: &[&[u8]], limit: usize) -> Result<NonNull<sys::rte_mbuf>, TxRefused> {
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
    pub(super) fn attach_into_mbufs(&self, parts: &[&[u8]], chain: &mut Chain, bytes: &mut (usize, usize)) -> Result<(), ZcStop> {
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
    pub(super) fn chain_mbuf(&self, chain: &mut Chain, fill: impl FnOnce(NonNull<sys::rte_mbuf>)) -> Result<(), ZcStop> {
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
    pub(super) fn chain_copy(&self, chain: &mut Chain, mut bytes: &[u8]) -> Result<(), ZcStop> {
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
    pub(super) fn chain_attach(
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
    pub(super) fn copy_into_mbuf(
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
}
