//! The NIC interface, shaped for batched poll-mode I/O, and its backends.
//!
//! A receive burst hands out frames that live in the driver's own pool ([`Nic::Rx`]); dropping
//! one returns it. A transmit is a gather list (headers, then payload slices that may live in
//! storage DMA buffers) queued on the driver's ring and handed to the device by
//! [`Nic::tx_flush`]; a backend may read the payload only then instead of copying it at once
//! ([`Nic::tx_from_pool`]). Nothing here allocates per packet once the backend is built.
pub mod bench;
pub mod checksum;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod offload;
pub mod packet;

use std::time::Duration;

mod frame_pool;
pub mod sim;
pub mod tap;

pub use frame_pool::{FramePool, PoolFrame};
pub use offload::{TcpTx, TxOffloads};

/// A received frame, owned by the driver's pool until dropped.
pub trait FrameBuf {
    /// The whole Ethernet frame (no FCS).
    fn bytes(&self) -> &[u8];

    /// What the port found of the frame's checksums (receive checksum offload); by default
    /// nothing, and the stack verifies them itself.
    fn rx_checksums(&self) -> RxChecksums {
        RxChecksums::UNCHECKED
    }
}

/// A port's verdict on one checksum of a received frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxVerdict {
    /// Not looked at (no offload, another protocol): the stack verifies it.
    #[default]
    Unchecked,
    /// Verified correct by the port, or the data is intact without one: a virtio peer on the
    /// same host hands over a TCP frame whose checksum it left for offload to fill in.
    Good,
    /// Verified wrong: the frame is dropped and counted as bad.
    Bad,
}

/// Receive checksum offload results of one frame: its IPv4 header and its TCP checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxChecksums {
    pub ipv4: RxVerdict,
    pub l4: RxVerdict,
}

impl RxChecksums {
    pub const UNCHECKED: RxChecksums = RxChecksums { ipv4: RxVerdict::Unchecked, l4: RxVerdict::Unchecked };
}

/// What the stack needs to know about the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The port's own MAC address (the stack may be configured with another one).
    pub mac: [u8; 6],
    /// Largest IP packet the link carries (1500 for Ethernet).
    pub mtu: usize,
    pub up: bool,
    /// `"tap"`, `"sim"`, or `"dpdk:<pmd name>"`: reported as `nic.driver`.
    pub driver: String,
    /// What the port does for TCP frames given to [`Nic::tx_tcp`].
    pub offloads: TxOffloads,
}

/// Monotonic counters of a port queue; the queues' counters add up to the port's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the device or the ring dropped (ring full, no buffer, oversize).
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

impl std::ops::AddAssign for NicCounters {
    fn add_assign(&mut self, o: Self) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_dropped += o.rx_dropped;
        self.tx_dropped += o.tx_dropped;
        self.rx_errors += o.rx_errors;
        self.tx_errors += o.tx_errors;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("cannot open {what}: {source}")]
    Open { what: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("device error: {0}")]
    Io(#[from] std::io::Error),
}

/// One port queue pair as the per-core loop drives it.
pub trait Nic {
    type Rx: FrameBuf;

    /// Receive at most `max` frames without blocking, appending them to `out` (whose capacity
    /// the caller reserved at start-up). Returns how many were appended.
    fn rx_burst(&mut self, out: &mut Vec<Self::Rx>, max: usize) -> usize;

    /// Queue one frame made of `parts` in order (total at most mtu + 14 bytes). Returns false
    /// only when the transmit ring is full: the frame is then not queued and the caller
    /// sends it again after a flush (the stack takes the segment back). A frame that could
    /// never be sent (bad length, refused offload, a write error) is dropped and counted in
    /// `tx_errors`, and returns true: retrying it would block the queue for ever.
    fn tx_gather(&mut self, parts: &[&[u8]]) -> bool;

    /// Queue one TCP/IPv4 frame whose headers are complete but for the TCP checksum (left
    /// zero) and whose payload may be longer than one segment (`tcp.mss`), as far as
    /// [`LinkInfo::offloads`] allows: the port cuts it into segments and checksums each.
    /// `parts[0]` is the Ethernet, IPv4 and TCP headers, the rest the payload. Ports without
    /// the offloads do it in software ([`offload::segment`]) and queue each segment with
    /// [`Nic::tx_gather`]. Returns false when the ring is full (segments queued before that
    /// stay queued, and go again with the rest when the caller retries: the receiver drops
    /// the duplicates); a frame that could never be sent is dropped and counted, as above.
    fn tx_tcp(&mut self, parts: &[&[u8]], tcp: TcpTx) -> bool {
        offload::segment(parts, tcp, |frame| self.tx_gather(&[frame]))
    }

    /// Hand the queued frames to the device. Returns how many were sent.
    fn tx_flush(&mut self) -> usize;

    /// Lets this queue send payload that lies in `pool`'s region without copying it (the DPDK
    /// backend points mbufs at it, maps the region for its device and installs its
    /// [`crate::storage::DeviceHolds`] in the pool, so that a buffer is not handed out for a
    /// new read while the device may still read it). Called at start-up with the pool the
    /// queue's core reads storage into; backends that copy every frame ignore it. The caller's
    /// side of the bargain: it does not write a buffer it has sent payload from (buffers are
    /// written only by the read that follows their allocation, and sealed in place before
    /// they are sent from).
    fn tx_from_pool(&mut self, _pool: &crate::storage::DmaPool) {}

    /// Whether received frames carry the port's checksum verdicts ([`FrameBuf::rx_checksums`]):
    /// on by default where the backend has them. Off, every frame is left unchecked and the
    /// stack verifies its checksums itself (`serve --no-rx-offload`: for comparisons, or a
    /// port whose verification is not to be trusted). Backends without verdicts ignore it.
    fn set_rx_checksum_offload(&mut self, on: bool) {
        let _ = on;
    }

    /// Block for at most `timeout` until a frame may be ready; used only when a whole loop
    /// iteration found no work. Poll-mode drivers return at once.
    fn wait_rx(&mut self, timeout: Duration);

    fn link(&self) -> LinkInfo;
    /// This queue's counters: summed over the queues (cores) they give the port's.
    fn counters(&self) -> NicCounters;

    /// The port's own extended statistics by name (DPDK's xstats and the backend's software
    /// counters), for the console; read on its request only. Empty where there are none.
    fn xstats(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}
