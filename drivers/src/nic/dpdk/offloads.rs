//! Transmit offloads: which ones the port was set up with, and how a TCP frame is cut into
//! the segments a PMD takes (TSO limits per segment and per mbuf chain).

use super::*;

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
    pub(super) fn tx_requests(&self) -> bool {
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
pub(super) struct TcpTxPlan {
    /// The device fills in TCP checksums (the stack leaves them zero).
    pub(super) checksum: bool,
    /// Largest TCP payload of one frame the device cuts into segments (0: no TSO).
    pub(super) tso_max_payload: usize,
    /// Largest segment the device's TSO emits, Ethernet header included: the segment size
    /// asked of it is the frame's MSS cut to fit.
    pub(super) tso_max_segment_frame: usize,
    /// Most segments the device cuts one frame into; a frame that needs more is segmented in
    /// software.
    pub(super) tso_max_segments: usize,
    /// Ask for even segment sizes only.
    pub(super) tso_even_segments: bool,
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
    pub(super) fn new(pmd: &str, offloads: &DpdkOffloads, max_tso_frame: usize, mtu: usize) -> TcpTxPlan {
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
    pub(super) fn tso_segsz(&self, tcp: TcpTx, payload: usize) -> Option<u16> {
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

/// The TX offload flags of `flags` by DPDK's names (lower case, without the prefix), and the
/// bits this backend has no name for in hex.
pub(super) fn tx_offload_names(flags: u64) -> String {
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
