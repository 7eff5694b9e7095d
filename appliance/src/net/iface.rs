//! One core's network interface: dispatches received frames (Ethernet → ARP | IPv4 → ICMP |
//! TCP), owns the connection table, the SYN cookies and the timer wheel, and drives each
//! connection's transmissions. The application (HTTP) plugs in through [`App`].
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use drivers::nic::{LinkInfo, Nic, RxChecksums, RxVerdict, TcpTx, TxOffloads};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress,
    IpProtocol, Ipv4Address, Ipv4Packet, TcpControl, TcpPacket, TcpRepr,
};

use super::arp::ArpCache;
use super::checksum;
use super::headers::{self, flags, Endpoints, TcpFields, TcpOptions, MAX_HEADERS_LEN};
use super::tcp::cookie::SynCookies;
use super::tcp::table::{ConnId, ConnKey, ConnTable, SlotList, SlotQueue};
use super::tcp::timer::TimerWheel;
use super::tcp::{self, DataSource, Ready, SegmentIn, State, TcpConn};
use super::{Instant, SEC};
use crate::stats::Stats;

/// Addresses and limits of the interface.
#[derive(Clone, Debug)]
pub struct IfaceConfig {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub prefix: u8,
    pub gateway: Option<[u8; 4]>,
    /// Largest IP packet (1500 on Ethernet).
    pub mtu: usize,
    pub listen_ports: Vec<u16>,
    pub max_conns: usize,
    /// Half-open connections kept before answering SYNs with cookies.
    pub syn_backlog: usize,
    /// A connection on which the peer made no progress for this long is closed (no new
    /// data or FIN from it, less than a segment of ours acknowledged: see
    /// `TcpConn::last_progress`).
    pub idle_timeout: u64,
    pub tcp: tcp::Config,
    /// What the port does for TCP frames (checksum, segmentation): see [`IfaceConfig::use_link`].
    pub offloads: TxOffloads,
}

impl IfaceConfig {
    pub fn new(mac: [u8; 6], ip: [u8; 4], prefix: u8) -> Self {
        IfaceConfig {
            mac,
            ip,
            prefix,
            gateway: None,
            mtu: 1500,
            listen_ports: Vec::new(),
            max_conns: 4096,
            syn_backlog: 256,
            idle_timeout: 60 * SEC,
            tcp: tcp::Config::default(),
            offloads: TxOffloads::default(),
        }
    }

    /// Take the port's MTU (and the MSS from it) and its transmit offloads.
    pub fn use_link(&mut self, link: &LinkInfo) {
        self.mtu = link.mtu;
        self.tcp.mss = (link.mtu.saturating_sub(40)).clamp(536, 9000) as u16;
        self.offloads = link.offloads;
        self.tcp.tso_max_payload = link.offloads.tso_max_payload.min(u32::MAX as usize) as u32;
    }

    fn on_link(&self, ip: [u8; 4]) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
        u32::from_be_bytes(ip) & mask == u32::from_be_bytes(self.ip) & mask
    }
}

/// Why a connection ended, for the application's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    Reset,
    TimedOut,
    Aborted,
}

/// The application above TCP, with per-connection state `Conn`.
pub trait App {
    type Conn;
    /// A connection is being opened on `local_port`; `None` refuses it (RST).
    fn accept(&mut self, now: Instant, local_port: u16) -> Option<Self::Conn>;
    /// How many received bytes the connection can take now (its receive window).
    fn rx_room(&self, c: &Self::Conn) -> usize;
    /// In-order bytes arrived. The application may extend the stream or close.
    fn on_data(&mut self, now: Instant, id: ConnId, c: &mut Self::Conn, tcp: &mut TcpConn, data: &[u8]);
    /// In-window bytes arrived but [`App::rx_room`] was 0, so TCP left them to be sent
    /// again: an application that closed the window for want of a shared buffer queues the
    /// connection, and reopens its window once one is free.
    fn on_rx_refused(&mut self, now: Instant, id: ConnId, c: &mut Self::Conn) {
        let _ = (now, id, c);
    }
    /// The peer sent its FIN.
    fn on_peer_fin(&mut self, now: Instant, c: &mut Self::Conn, tcp: &mut TcpConn);
    /// Stream bytes below `acked_to` are acknowledged: their buffers may go, and a
    /// connection that stopped parsing for want of room may go on.
    fn on_acked(&mut self, now: Instant, id: ConnId, c: &mut Self::Conn, tcp: &mut TcpConn, acked_to: u64);
    /// Segments went to the NIC this round: every stream byte below `sent_to` has been sent
    /// at least once (the NIC copied it or holds its buffer), so buffers of those bytes may go
    /// back before the ACK; a retransmission asks for them again.
    fn on_sent(&mut self, _c: &mut Self::Conn, _sent_to: u64) {}
    /// The connection's turn comes soon (it is queued to send, or a frame for it arrived):
    /// start loading what serving it will touch, without waiting for it (a hint: nothing
    /// may change).
    fn prefetch(&self, _c: &Self::Conn) {}
    /// The peer's window is closed and a timeout found it so, or it is smaller than a
    /// segment ([`TcpConn::peer_stalled`]; called after each segment received and each round
    /// of sending while it holds): what the application prepared and has not sent cannot go
    /// now, and may be given back to be prepared again (a client that stopped reading, or
    /// reads a few bytes at a time, must not hold shared buffers).
    fn on_peer_stalled(&mut self, c: &mut Self::Conn) {
        let _ = c;
    }
    /// A retransmission timeout fired: everything unacknowledged will be asked for again.
    fn on_rto(&mut self, c: &mut Self::Conn);
    /// Nothing was received for the idle timeout.
    fn on_idle(&mut self, now: Instant, c: &mut Self::Conn, tcp: &mut TcpConn) {
        let _ = (now, c);
        tcp.close();
    }
    /// The connection is gone; release everything it held.
    fn on_closed(&mut self, c: Self::Conn, reason: CloseReason);
    /// Whether the connection may be evicted when the table is full and a new peer (one that
    /// proved its address with a SYN cookie) needs its slot: nothing queued or in flight.
    fn evictable(&self, c: &Self::Conn) -> bool {
        let _ = c;
        false
    }
    /// The application's own next deadline for the connection (e.g. a request-head
    /// timeout), if any; [`App::on_deadline`] runs once `now` reaches it.
    fn deadline(&self, c: &Self::Conn) -> Option<Instant> {
        let _ = c;
        None
    }
    /// The application's deadline passed.
    fn on_deadline(&mut self, now: Instant, c: &mut Self::Conn, tcp: &mut TcpConn) {
        let _ = (now, c, tcp);
    }
    /// See [`DataSource::available`]. The bytes may lie in up to [`MAX_PARTS`] places.
    fn available(&mut self, now: Instant, id: ConnId, c: &mut Self::Conn, off: u64, max: usize, resend: bool) -> Ready;
    /// The `len` bytes from `off` promised by `available`, as slices in order. Fewer (or
    /// none) where they are not all there: the stack then takes the segment back and calls
    /// [`App::payload_short`] (an application may answer `available` from what it found at
    /// an earlier ask, and walk only here).
    fn payload<'a>(&'a self, c: &'a Self::Conn, off: u64, len: usize, parts: &mut Parts<'a>);
    /// `payload` gave fewer bytes than `available` promised: the next `available` must look
    /// afresh.
    fn payload_short(&mut self, c: &mut Self::Conn) {
        let _ = c;
    }
}

/// Most slices one segment's payload is gathered from (e.g. a TLS record's header, its
/// sealed payload in a storage buffer, its tag, and the next record's header).
pub const MAX_PARTS: usize = 16;

/// Frames of a received burst whose connection state [`Stack::warm`] loads ahead.
pub const WARM_MAX: usize = 64;

/// The slices of one segment's payload.
pub struct Parts<'a> {
    slices: [&'a [u8]; MAX_PARTS],
    n: usize,
}

impl<'a> Default for Parts<'a> {
    fn default() -> Self {
        Parts { slices: [&[]; MAX_PARTS], n: 0 }
    }
}

impl<'a> Parts<'a> {
    /// Append a slice; false when full (the caller stops there).
    pub fn push(&mut self, s: &'a [u8]) -> bool {
        if self.n == MAX_PARTS {
            return false;
        }
        self.slices[self.n] = s;
        self.n += 1;
        true
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.slices[..self.n]
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn total(&self) -> usize {
        self.as_slice().iter().map(|s| s.len()).sum()
    }
}

pub struct Entry<C> {
    pub tcp: TcpConn,
    pub peer_mac: [u8; 6],
    pub app: C,
    pub opened_at: Instant,
    ready: bool,
    half_open: bool,
}

/// Adapter handing the application to TCP as its data source.
struct Source<'a, A: App> {
    app: &'a mut A,
    conn: &'a mut A::Conn,
    id: ConnId,
    now: Instant,
}

impl<A: App> DataSource for Source<'_, A> {
    fn available(&mut self, off: u64, max: usize, resend: bool) -> Ready {
        self.app.available(self.now, self.id, self.conn, off, max, resend)
    }
}

pub struct Stack<C> {
    pub cfg: IfaceConfig,
    pub arp: ArpCache,
    conns: ConnTable<Entry<C>>,
    /// Connections the application lets go when the table is full, least recently active
    /// first (TIME-WAIT ones too).
    evictable: SlotList,
    /// One timer per slot: its connection's earliest deadline.
    wheel: TimerWheel,
    cookies: SynCookies,
    /// Slots with something to send. A slot whose connection went stays queued and is
    /// skipped (or serves its next connection, which then has a spurious turn).
    ready: SlotQueue,
    half_open: usize,
    ip_id: u16,
    iss_key: RandomState,
    /// Set by [`Stack::seed_iss`]: initial sequence numbers from this seed, for reproducible
    /// simulations.
    iss_seed: Option<(u64, u32, u32)>,
    scratch: Vec<u8>,
    /// ARP announcements still to send ([`Stack::announce`]) and when the next is due.
    announcements_left: u8,
    next_announcement: Instant,
    pub accepting: bool,
    pub stats: Stats,
}

/// Time between two ARP announcements (RFC 5227's ANNOUNCE_INTERVAL).
pub const ANNOUNCE_INTERVAL: Instant = 2 * super::SEC;

impl<C> Stack<C> {
    pub fn new(cfg: IfaceConfig, now: Instant) -> Self {
        let n = cfg.max_conns;
        Stack {
            conns: ConnTable::with_capacity(n),
            evictable: SlotList::with_capacity(n),
            wheel: TimerWheel::new(n, super::MS, now),
            cookies: SynCookies::default(),
            ready: SlotQueue::with_capacity(n),
            half_open: 0,
            ip_id: 1,
            iss_key: RandomState::new(),
            iss_seed: None,
            scratch: vec![0; 2048.max(cfg.mtu + 14)],
            arp: ArpCache::default(),
            announcements_left: 0,
            next_announcement: now,
            accepting: true,
            stats: Stats::default(),
            cfg,
        }
    }

    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &ConnKey, &Entry<C>)> {
        self.conns.iter()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn get(&self, id: ConnId) -> Option<&Entry<C>> {
        self.conns.get(id).map(|(_, e)| e)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Entry<C>> {
        self.conns.get_mut(id).map(|(_, e)| e)
    }

    /// The live entry in `slot` whose generation ends in `gen_low` (16 bits), for tags that
    /// carry a shortened handle (storage reads).
    pub fn get_by_short_id(&mut self, slot: u32, gen_low: u16) -> Option<(ConnId, &mut Entry<C>)> {
        let id = self.conns.id_of_slot(slot)?;
        if id.gen as u16 != gen_low {
            return None;
        }
        self.conns.get_mut(id).map(|(_, e)| (id, e))
    }

    /// The application has something new for `id` (a storage read completed, ...).
    pub fn wake(&mut self, id: ConnId) {
        if let Some((_, e)) = self.conns.get_mut(id) {
            e.tcp.unblock();
            if !e.ready {
                e.ready = true;
                self.ready.push_back(id.slot);
            }
        }
    }

    fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    /// Initial sequence numbers become a fixed function of `seed`, the 4-tuple and the clock:
    /// `base` plus a hash below `spread` (0: anywhere) plus the 4 µs clock. For tests and
    /// simulations only (a known key makes them predictable to an attacker); a `base` just
    /// below 2^32 makes every connection's sequence numbers wrap early.
    pub fn seed_iss(&mut self, seed: u64, base: u32, spread: u32) {
        self.iss_seed = Some((seed, base, spread));
    }

    fn iss_for(&self, key: &ConnKey, now: Instant) -> u32 {
        // RFC 6528: a keyed hash of the 4-tuple plus a 4 µs clock.
        let hash = match self.iss_seed {
            Some((seed, base, spread)) => {
                let mut z = seed ^ key.packed().wrapping_mul(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let h = if spread == 0 { z as u32 } else { (z % u64::from(spread)) as u32 };
                u64::from(base.wrapping_add(h))
            }
            None => {
                let mut h = self.iss_key.build_hasher();
                h.write_u64(key.packed());
                h.finish()
            }
        };
        (hash as u32).wrapping_add((now / 4_000) as u32)
    }

    fn next_hop(&self, ip: [u8; 4]) -> [u8; 4] {
        match self.cfg.gateway {
            Some(gw) if !self.cfg.on_link(ip) => gw,
            _ => ip,
        }
    }

    /// The MAC of the next hop toward `ip`, sending an ARP request (paced) when unknown.
    pub fn resolve<N: Nic>(&mut self, now: Instant, ip: [u8; 4], nic: &mut N) -> Option<[u8; 6]> {
        let hop = self.next_hop(ip);
        if let Some(mac) = self.arp.lookup(hop, now) {
            return Some(mac);
        }
        if self.arp.should_request(hop, now) {
            self.send_arp_request(nic, hop);
        }
        None
    }

    /// A broadcast ARP request for `target` from our address (for our own address: an
    /// announcement).
    fn send_arp_request<N: Nic>(&mut self, nic: &mut N, target: [u8; 4]) {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(self.cfg.mac),
            source_protocol_addr: Ipv4Address::from(self.cfg.ip),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Address::from(target),
        };
        self.send_arp(nic, [0xff; 6], &repr);
    }

    /// Announces our address `count` times, [`ANNOUNCE_INTERVAL`] apart, the first at the
    /// next transmit poll (RFC 5227 ARP announcements: a broadcast request for our own
    /// address). Neighbours, switches and routers then know where the address is without
    /// asking: after a boot, or when the address moved here from another machine.
    pub fn announce(&mut self, now: Instant, count: u8) {
        self.announcements_left = count;
        self.next_announcement = now;
    }

    fn send_announcement_if_due<N: Nic>(&mut self, now: Instant, nic: &mut N) {
        if self.announcements_left == 0 || now < self.next_announcement {
            return;
        }
        self.send_arp_request(nic, self.cfg.ip);
        self.stats.arp_announcements_sent += 1;
        self.announcements_left -= 1;
        self.next_announcement = now + ANNOUNCE_INTERVAL;
    }

    fn send_arp<N: Nic>(&mut self, nic: &mut N, dst: [u8; 6], repr: &ArpRepr) {
        let f = &mut self.scratch[..14 + 28];
        headers::emit_ethernet(f, dst, self.cfg.mac, headers::ETHERTYPE_ARP);
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        // A full ring loses the frame; ARP asks again.
        nic.tx_gather(&[f]);
    }
}

/// Parsed view of a received TCP segment plus its addresses.
struct Rx<'a> {
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_port: u16,
    src_port: u16,
    seg: SegmentIn<'a>,
}

impl<C> Stack<C> {
    /// Start loading the connection state the TCP frames of a burst need, before
    /// [`Stack::on_frame`] handles them one by one: their index places, then the table slots
    /// those name, then what the application will touch for each (its `prefetch`). Each
    /// stage asks for all the burst's lines before the next reads any, so their misses
    /// overlap. Frames that are not TCP over IPv4, and those past the first [`WARM_MAX`], are
    /// passed over; nothing is checked or counted here.
    pub fn warm<'a, A: App<Conn = C>>(&self, frames: impl Iterator<Item = &'a [u8]>, app: &A) {
        let mut frames = frames.take(WARM_MAX).peekable();
        if frames.peek().is_none() {
            return; // an idle turn: nothing to set up
        }
        let mut places = [0usize; WARM_MAX];
        let mut n = 0;
        for frame in frames {
            let Some(key) = tcp_key_of(frame) else { continue };
            places[n] = self.conns.prefetch_place(&key);
            n += 1;
        }
        let mut slots = [0u32; WARM_MAX];
        let mut m = 0;
        for &at in &places[..n] {
            if let Some(slot) = self.conns.prefetch_slot_at(at) {
                slots[m] = slot;
                m += 1;
            }
        }
        for &slot in &slots[..m] {
            if let Some(e) = self.conns.value_of_slot(slot) {
                app.prefetch(&e.app);
            }
        }
    }

    /// Handle one received frame; `checks` says which of its checksums the port verified
    /// already (receive offload): those are not computed again.
    pub fn on_frame<A: App<Conn = C>, N: Nic>(&mut self, now: Instant, frame: &[u8], checks: RxChecksums, app: &mut A, nic: &mut N) {
        self.stats.eth_rx_frames += 1;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.stats.eth_rx_bad += 1;
            return;
        };
        let dst = eth.dst_addr().0;
        if dst != self.cfg.mac && dst != [0xff; 6] {
            self.stats.ip_rx_not_ours += 1;
            return;
        }
        let src_mac = eth.src_addr().0;
        match eth.ethertype() {
            EthernetProtocol::Arp => self.on_arp(now, src_mac, eth.payload(), nic),
            EthernetProtocol::Ipv4 if dst == self.cfg.mac => self.on_ipv4(now, src_mac, eth.payload(), checks, app, nic),
            _ => self.stats.ip_rx_not_ours += 1,
        }
    }

    fn on_arp<N: Nic>(&mut self, now: Instant, src_mac: [u8; 6], payload: &[u8], nic: &mut N) {
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            self.stats.eth_rx_bad += 1;
            return;
        };
        let ArpRepr::EthernetIpv4 { operation, source_hardware_addr, source_protocol_addr, target_protocol_addr, .. } = repr
        else {
            return;
        };
        let sender_ip = source_protocol_addr.octets();
        if sender_ip == self.cfg.ip && source_hardware_addr.0 != self.cfg.mac {
            // Another machine claims our address (a request, reply or announcement).
            self.stats.arp_address_conflicts += 1;
            return;
        }
        if target_protocol_addr.octets() != self.cfg.ip {
            return;
        }
        self.arp.insert(sender_ip, source_hardware_addr.0, now);
        match operation {
            ArpOperation::Request => {
                let reply = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: EthernetAddress(self.cfg.mac),
                    source_protocol_addr: Ipv4Address::from(self.cfg.ip),
                    target_hardware_addr: source_hardware_addr,
                    target_protocol_addr: source_protocol_addr,
                };
                self.send_arp(nic, src_mac, &reply);
                self.stats.arp_requests_answered += 1;
            }
            ArpOperation::Reply => self.stats.arp_replies += 1,
            _ => {}
        }
    }

    fn on_ipv4<A: App<Conn = C>, N: Nic>(&mut self, now: Instant, src_mac: [u8; 6], payload: &[u8], checks: RxChecksums, app: &mut A, nic: &mut N) {
        let Ok(ip) = Ipv4Packet::new_checked(payload) else {
            self.stats.ip_rx_bad += 1;
            return;
        };
        let ip_sum_ok = match checks.ipv4 {
            RxVerdict::Good => true,
            RxVerdict::Bad => false,
            RxVerdict::Unchecked => ip.verify_checksum(),
        };
        if ip.version() != 4 || !ip_sum_ok {
            self.stats.ip_rx_bad += 1;
            return;
        }
        if ip.dst_addr().octets() != self.cfg.ip {
            self.stats.ip_rx_not_ours += 1;
            return;
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            // We never send more than the MTU and do not reassemble.
            self.stats.ip_rx_fragments += 1;
            return;
        }
        let src_ip = ip.src_addr().octets();
        match ip.next_header() {
            IpProtocol::Icmp => self.on_icmp(src_mac, src_ip, ip.payload(), nic),
            IpProtocol::Tcp => {
                let Ok(pkt) = TcpPacket::new_checked(ip.payload()) else {
                    self.stats.tcp_rx_bad += 1;
                    return;
                };
                // A checksum the port verified is not summed again (smoltcp checks it on
                // receive unless told the device does).
                let mut caps = smoltcp::phy::ChecksumCapabilities::default();
                match checks.l4 {
                    RxVerdict::Good => {
                        caps.tcp = smoltcp::phy::Checksum::Tx;
                        self.stats.tcp_rx_checksum_offloaded += 1;
                    }
                    RxVerdict::Bad => {
                        self.stats.tcp_rx_bad += 1;
                        return;
                    }
                    RxVerdict::Unchecked => {}
                }
                let Ok(repr) = TcpRepr::parse(&pkt, &IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(ip.dst_addr()), &caps) else {
                    self.stats.tcp_rx_bad += 1;
                    return;
                };
                let mut fl = match repr.control {
                    TcpControl::Syn => flags::SYN,
                    TcpControl::Fin => flags::FIN,
                    TcpControl::Rst => flags::RST,
                    TcpControl::Psh => flags::PSH,
                    TcpControl::None => 0,
                };
                if repr.ack_number.is_some() {
                    fl |= flags::ACK;
                }
                let seg = SegmentIn {
                    seq: repr.seq_number.0 as u32,
                    ack: repr.ack_number.map(|a| a.0 as u32),
                    flags: fl,
                    window: repr.window_len,
                    mss: repr.max_seg_size,
                    window_scale: repr.window_scale,
                    sack_permitted: repr.sack_permitted,
                    sack: repr.sack_ranges,
                    timestamp: repr.timestamp.map(|t| (t.tsval, t.tsecr)),
                    payload: repr.payload,
                };
                self.stats.tcp_rx_segments += 1;
                let rx = Rx { src_mac, src_ip, dst_port: repr.dst_port, src_port: repr.src_port, seg };
                self.on_tcp(now, &rx, app, nic);
            }
            _ => self.stats.ip_rx_not_ours += 1,
        }
    }

    fn on_icmp<N: Nic>(&mut self, src_mac: [u8; 6], src_ip: [u8; 4], payload: &[u8], nic: &mut N) {
        let Ok(icmp) = Icmpv4Packet::new_checked(payload) else {
            self.stats.ip_rx_bad += 1;
            return;
        };
        if !icmp.verify_checksum() {
            self.stats.ip_rx_bad += 1;
            return;
        }
        // Echo request (type 8, code 0) → echo reply with the same identifier, sequence, data.
        if payload[0] != 8 || payload[1] != 0 {
            return;
        }
        let len = payload.len();
        if 14 + 20 + len > self.scratch.len() {
            self.stats.ip_rx_bad += 1;
            return;
        }
        let id = self.next_ip_id();
        let f = &mut self.scratch[..14 + 20 + len];
        headers::emit_ethernet(f, src_mac, self.cfg.mac, headers::ETHERTYPE_IPV4);
        headers::emit_ipv4(&mut f[14..], self.cfg.ip, src_ip, headers::IP_PROTO_ICMP, len, id);
        let icmp_out = &mut f[34..];
        icmp_out.copy_from_slice(payload);
        icmp_out[0] = 0;
        icmp_out[2..4].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::accumulate(0, icmp_out));
        icmp_out[2..4].copy_from_slice(&c.to_be_bytes());
        if nic.tx_gather(&[f]) {
            self.stats.icmp_echo_answered += 1;
        }
    }

    fn on_tcp<A: App<Conn = C>, N: Nic>(&mut self, now: Instant, rx: &Rx, app: &mut A, nic: &mut N) {
        let key = ConnKey { remote_ip: rx.src_ip, remote_port: rx.src_port, local_port: rx.dst_port };
        let seg = &rx.seg;
        let is = |f: u8| seg.flags & f != 0;
        if let Some(id) = self.conns.find(&key) {
            // A new SYN for a connection in TIME-WAIT (the client reuses its port): recycle.
            let recycle = is(flags::SYN)
                && !is(flags::ACK)
                && self.conns.get(id).is_some_and(|(_, e)| e.tcp.state == State::TimeWait);
            if !recycle {
                self.on_conn_segment(now, id, rx, app);
                // Something arrived: the connection is the most recently active.
                self.evictable.unlink(id.slot);
                self.after_event(now, id, app);
                return;
            }
            self.remove(id, CloseReason::Normal, app);
        }
        if is(flags::RST) {
            return;
        }
        if is(flags::SYN) && !is(flags::ACK) {
            self.on_syn(now, key, rx, app, nic);
            return;
        }
        if is(flags::ACK) && !is(flags::SYN) && self.cfg.listen_ports.contains(&rx.dst_port) && self.accepting {
            // Maybe the last step of a SYN-cookie handshake.
            if let Some(mss) = self.cookies.check(now, key.packed(), seg.seq.wrapping_sub(1), seg.ack.unwrap_or(0).wrapping_sub(1)) {
                if self.conns.len() >= self.conns.capacity() {
                    // A peer that proved its address gets the slot of the least recently
                    // active idle connection.
                    self.evict_oldest(app, nic);
                }
                if self.conns.len() < self.conns.capacity() {
                    if let Some(c) = app.accept(now, rx.dst_port) {
                        let tcp = TcpConn::accept_cookie(&self.cfg.tcp, now, seg, seg.ack.unwrap_or(0).wrapping_sub(1), mss);
                        let entry = Entry { tcp, peer_mac: rx.src_mac, app: c, opened_at: now, ready: false, half_open: false };
                        match self.conns.insert(key, entry) {
                            Ok(id) => {
                                self.stats.tcp_syn_cookies_accepted += 1;
                                self.stats.tcp_connections_opened += 1;
                                self.on_conn_segment(now, id, rx, app);
                                self.after_event(now, id, app);
                                return;
                            }
                            // Not reached (room was made above); the application frees what it made.
                            Err(entry) => app.on_closed(entry.app, CloseReason::Reset),
                        }
                    }
                }
            }
        }
        self.send_reset(now, rx, nic);
    }

    fn on_syn<A: App<Conn = C>, N: Nic>(&mut self, now: Instant, key: ConnKey, rx: &Rx, app: &mut A, nic: &mut N) {
        if !self.cfg.listen_ports.contains(&rx.dst_port) || !self.accepting {
            self.stats.tcp_connections_refused += 1;
            self.send_reset(now, rx, nic);
            return;
        }
        let full = self.conns.len() >= self.conns.capacity();
        if self.half_open >= self.cfg.syn_backlog || full {
            if full {
                self.stats.tcp_table_full += 1;
            }
            self.send_cookie(now, key, rx, nic);
            return;
        }
        let Some(c) = app.accept(now, rx.dst_port) else {
            self.stats.tcp_connections_refused += 1;
            self.send_reset(now, rx, nic);
            return;
        };
        let iss = self.iss_for(&key, now);
        let mut tcp = TcpConn::accept(&self.cfg.tcp, now, &rx.seg, iss);
        tcp.set_receive_window(app.rx_room(&c));
        let entry = Entry { tcp, peer_mac: rx.src_mac, app: c, opened_at: now, ready: false, half_open: true };
        match self.conns.insert(key, entry) {
            Ok(id) => {
                self.half_open += 1;
                self.stats.tcp_connections_opened += 1;
                self.after_event(now, id, app);
            }
            Err(entry) => {
                self.stats.tcp_table_full += 1;
                app.on_closed(entry.app, CloseReason::Reset);
            }
        }
    }

    fn on_conn_segment<A: App<Conn = C>>(&mut self, now: Instant, id: ConnId, rx: &Rx, app: &mut A) {
        let cfg = &self.cfg.tcp;
        let Some((_, e)) = self.conns.get_mut(id) else { return };
        let room = app.rx_room(&e.app);
        let out = e.tcp.on_segment(cfg, now, &rx.seg, room);
        if out.rejected {
            self.stats.tcp_out_of_window += 1;
        }
        if out.challenge_ack {
            self.stats.tcp_challenge_acks += 1;
        }
        if out.established && e.half_open {
            e.half_open = false;
            self.half_open -= 1;
        }
        if out.acked > 0 {
            let acked_to = e.tcp.acked_offset();
            app.on_acked(now, id, &mut e.app, &mut e.tcp, acked_to);
            // Released buffers may let the application read what it could not before.
            e.tcp.on_buffers_released();
        }
        if e.tcp.peer_stalled() {
            app.on_peer_stalled(&mut e.app);
        }
        if let Some((start, len)) = out.deliver {
            app.on_data(now, id, &mut e.app, &mut e.tcp, &rx.seg.payload[start..start + len]);
        } else if room == 0 && !rx.seg.payload.is_empty() {
            app.on_rx_refused(now, id, &mut e.app);
        }
        if out.peer_fin {
            app.on_peer_fin(now, &mut e.app, &mut e.tcp);
        }
        let room = app.rx_room(&e.app);
        e.tcp.set_receive_window(room);
        if out.reset {
            self.stats.tcp_connections_reset += 1;
        }
    }

    /// After anything happened to a connection: queue it for transmission, re-arm its timer,
    /// or remove it.
    fn after_event<A: App<Conn = C>>(&mut self, now: Instant, id: ConnId, app: &mut A) {
        let idle = self.cfg.idle_timeout;
        let Some((_, e)) = self.conns.get_mut(id) else { return };
        if e.tcp.is_closed() {
            let reason = if e.tcp.state == State::Closed && e.tcp.counters.segments_sent == 0 { CloseReason::Reset } else { CloseReason::Normal };
            self.remove(id, reason, app);
            return;
        }
        if e.tcp.wants_tx(now) && !e.ready {
            e.ready = true;
            self.ready.push_back(id.slot);
        }
        let may_evict = match e.tcp.state {
            State::TimeWait => true,
            State::SynReceived | State::Established | State::CloseWait => !e.ready && app.evictable(&e.app),
            _ => false,
        };
        if !may_evict {
            self.evictable.unlink(id.slot);
        } else if !self.evictable.contains(id.slot) {
            self.evictable.push_back(id.slot);
        }
        let tcp_deadline = e.tcp.next_deadline();
        let idle_deadline = if e.tcp.state == State::TimeWait { None } else { Some(e.tcp.last_progress() + idle) };
        // The application's clock runs once the handshake is done (half-open entries have TCP's).
        let app_deadline = if matches!(e.tcp.state, State::Established | State::CloseWait) { app.deadline(&e.app) } else { None };
        let deadline = [tcp_deadline, idle_deadline, app_deadline].into_iter().flatten().min();
        // The deadline itself, also when it has passed (the wheel fires it at its next tick):
        // `d.max(now)` would move a passed deadline to each event's `now`, and events handled
        // before the round's timers (frames) would then postpone it round after round.
        match deadline {
            Some(d) => self.wheel.arm(id.slot, d),
            None => self.wheel.cancel(id.slot),
        }
    }

    fn remove<A: App<Conn = C>>(&mut self, id: ConnId, reason: CloseReason, app: &mut A) {
        if let Some((_, e)) = self.conns.remove(id) {
            self.evictable.unlink(id.slot);
            // The slot's next connection starts without a timer.
            self.wheel.cancel(id.slot);
            if e.half_open {
                self.half_open -= 1;
            }
            self.stats.tcp_retransmits += e.tcp.counters.retransmits;
            self.stats.tcp_fast_retransmits += e.tcp.counters.fast_retransmits;
            self.stats.tcp_rto_timeouts += e.tcp.counters.rto_timeouts;
            self.stats.tcp_connections_closed += 1;
            app.on_closed(e.app, reason);
        }
    }

    /// Drop the least recently active evictable connection (RST to its peer unless it was in
    /// TIME-WAIT). O(1): the front of the list. Returns whether one was dropped.
    fn evict_oldest<A: App<Conn = C>, N: Nic>(&mut self, app: &mut A, nic: &mut N) -> bool {
        let Some(id) = self.evictable.front().and_then(|slot| self.conns.id_of_slot(slot)) else { return false };
        let Some((key, e)) = self.conns.get(id) else { return false };
        if e.tcp.state != State::TimeWait {
            let ep = toward_peer(&self.cfg, key, e.peer_mac);
            let f = e.tcp.reset_fields();
            let mut hdr = [0u8; MAX_HEADERS_LEN];
            let ip_id = self.next_ip_id();
            let n = headers::emit_tcp_segment(&mut hdr, &ep, &f, ip_id, &[], true);
            if nic.tx_gather(&[&hdr[..n]]) {
                self.stats.tcp_tx_segments += 1;
                self.stats.tcp_rst_sent += 1;
            }
        }
        self.stats.tcp_evicted += 1;
        self.remove(id, CloseReason::Aborted, app);
        true
    }

    /// Counters of live connections not yet folded into `stats` (they are at close).
    pub fn live_tcp_counters(&self) -> (u64, u64, u64) {
        self.conns.iter().fold((0, 0, 0), |(r, f, t), (_, _, e)| {
            (r + e.tcp.counters.retransmits, f + e.tcp.counters.fast_retransmits, t + e.tcp.counters.rto_timeouts)
        })
    }

    fn send_cookie<N: Nic>(&mut self, now: Instant, key: ConnKey, rx: &Rx, nic: &mut N) {
        let mss = rx.seg.mss.unwrap_or(536).min(self.cfg.tcp.mss);
        let isn = self.cookies.make(now, key.packed(), rx.seg.seq, mss);
        let f = TcpFields {
            seq: isn,
            ack: rx.seg.seq.wrapping_add(1),
            flags: flags::SYN | flags::ACK,
            window: self.cfg.tcp.max_rcv_wnd,
            options: TcpOptions { mss: Some(mss), ..Default::default() },
        };
        self.stats.tcp_syn_cookies_sent += 1;
        self.send_bare(rx, f, nic);
    }

    fn send_reset<N: Nic>(&mut self, _now: Instant, rx: &Rx, nic: &mut N) {
        let seg = &rx.seg;
        if seg.flags & flags::RST != 0 {
            return;
        }
        let f = match seg.ack {
            Some(ack) => TcpFields { seq: ack, ack: 0, flags: flags::RST, window: 0, options: TcpOptions::default() },
            None => {
                let len = seg.payload.len() as u32 + (seg.flags & flags::SYN != 0) as u32 + (seg.flags & flags::FIN != 0) as u32;
                TcpFields { seq: 0, ack: seg.seq.wrapping_add(len), flags: flags::RST | flags::ACK, window: 0, options: TcpOptions::default() }
            }
        };
        self.stats.tcp_rst_sent += 1;
        self.send_bare(rx, f, nic);
    }

    fn send_bare<N: Nic>(&mut self, rx: &Rx, f: TcpFields, nic: &mut N) {
        let ep = Endpoints {
            src_mac: self.cfg.mac,
            dst_mac: rx.src_mac,
            src_ip: self.cfg.ip,
            dst_ip: rx.src_ip,
            src_port: rx.dst_port,
            dst_port: rx.src_port,
        };
        let mut hdr = [0u8; MAX_HEADERS_LEN];
        let id = self.next_ip_id();
        let n = headers::emit_tcp_segment(&mut hdr, &ep, &f, id, &[], true);
        if nic.tx_gather(&[&hdr[..n]]) {
            self.stats.tcp_tx_segments += 1;
        }
    }

    /// Open the connection `key` (active open, to its remote address from its local port);
    /// the next hop's MAC must be resolved (see [`Stack::resolve`]).
    pub fn connect<A: App<Conn = C>>(&mut self, now: Instant, key: ConnKey, peer_mac: [u8; 6], c: C, app: &mut A) -> Option<ConnId> {
        if self.conns.find(&key).is_some() {
            return None;
        }
        let iss = self.iss_for(&key, now);
        let mut tcp = TcpConn::connect(&self.cfg.tcp, now, iss);
        tcp.set_receive_window(app.rx_room(&c));
        let entry = Entry { tcp, peer_mac, app: c, opened_at: now, ready: false, half_open: false };
        let id = match self.conns.insert(key, entry) {
            Ok(id) => id,
            Err(entry) => {
                app.on_closed(entry.app, CloseReason::Reset);
                return None;
            }
        };
        self.stats.tcp_connections_opened += 1;
        self.after_event(now, id, app);
        Some(id)
    }

    /// Transmit for connections that have something to send, at most `budget` segments.
    /// Returns how many segments went out.
    pub fn poll_tx<A: App<Conn = C>, N: Nic>(&mut self, now: Instant, app: &mut A, nic: &mut N, budget: usize) -> usize {
        self.send_announcement_if_due(now, nic);
        let mut sent = 0;
        let mut ring_full = false;
        // This round serves the slots queued now; those queued meanwhile wait for the next.
        for _ in 0..self.ready.len() {
            let Some(slot) = self.ready.pop_front() else { break };
            if sent >= budget || ring_full {
                // Out of budget or of ring: keep the rest for the next round.
                self.ready.push_back(slot);
                continue;
            }
            // What the next two turns touch is cold: start loading it now, so that its
            // misses overlap this turn's work (the next one's slot was asked for in the turn
            // before, so what it points to can be asked for now).
            let (next, after) = self.ready.first_two();
            if let Some(after) = after {
                self.conns.prefetch_slot(after);
            }
            if let Some(e) = next.and_then(|n| self.conns.value_of_slot(n)) {
                app.prefetch(&e.app);
            }
            let Some(id) = self.conns.id_of_slot(slot) else { continue };
            let Some((key, e)) = self.conns.get_mut(id) else { continue };
            e.ready = false;
            let ep = toward_peer(&self.cfg, key, e.peer_mac);
            let Entry { tcp, app: conn, .. } = e;
            let mut hdr = [0u8; MAX_HEADERS_LEN];
            let mut more = false;
            let mut queued_here = false;
            let mut short_once = false;
            loop {
                if sent >= budget {
                    more = true;
                    break;
                }
                let mut src = Source { app, conn, id, now };
                let before = tcp.clone();
                let Some(seg) = tcp.poll_tx(now, &mut src) else { break };
                let mut parts = Parts::default();
                app.payload(conn, seg.payload_off, seg.payload_len, &mut parts);
                if parts.total() != seg.payload_len {
                    // Promised and not there (the application answered from an earlier
                    // look): take the segment back and ask again, once, from a fresh look.
                    *tcp = before;
                    self.stats.tcp_tx_payload_short += 1;
                    app.payload_short(conn);
                    if short_once {
                        more = true;
                        break;
                    }
                    short_once = true;
                    continue;
                }
                let offload = self.cfg.offloads.tcp_checksum;
                let mss = tcp.wire_payload();
                // A segment longer than one MSS goes out as several: their IP ids with it.
                self.ip_id = self.ip_id.wrapping_add(1);
                let n = headers::emit_tcp_segment(&mut hdr, &ep, &seg.fields, self.ip_id, parts.as_slice(), !offload);
                self.ip_id = self.ip_id.wrapping_add((seg.payload_len.max(1).div_ceil(mss) - 1) as u16);
                let mut frame: [&[u8]; MAX_PARTS + 1] = [&[]; MAX_PARTS + 1];
                frame[0] = &hdr[..n];
                frame[1..=parts.len()].copy_from_slice(parts.as_slice());
                let frame = &frame[..=parts.len()];
                let queued = if offload {
                    nic.tx_tcp(frame, TcpTx { l4_offset: headers::TCP_OFFSET, l4_len: n - headers::TCP_OFFSET, mss })
                } else {
                    nic.tx_gather(frame)
                };
                if !queued {
                    // Ring full: the segment did not go. Take it back (the connection is as
                    // it was before it, and sends it first next round: a full ring is not a
                    // loss to recover from by timeout) and end the round, as the ring takes
                    // nothing more until the device drains it.
                    *tcp = before;
                    self.stats.tcp_tx_ring_full += 1;
                    nic.tx_flush();
                    ring_full = true;
                    more = true;
                    break;
                }
                sent += 1;
                queued_here = true;
                self.stats.tcp_tx_segments += 1;
                if seg.fields.flags & flags::RST != 0 {
                    self.stats.tcp_rst_sent += 1;
                }
            }
            if queued_here {
                app.on_sent(conn, tcp.sent_offset());
                if tcp.peer_stalled() {
                    app.on_peer_stalled(conn);
                }
            }
            if more {
                if let Some((_, e)) = self.conns.get_mut(id) {
                    e.ready = true;
                    self.ready.push_back(slot);
                }
            }
            // A closing connection gives its storage buffers back (on_closed), and a NIC may
            // read a queued frame's payload only when it is flushed (Nic::tx_from_pool).
            if queued_here && self.conns.get(id).is_some_and(|(_, e)| e.tcp.is_closed()) {
                nic.tx_flush();
            }
            self.after_event(now, id, app);
        }
        sent
    }

    /// Run the timers due at `now`.
    pub fn poll_timers<A: App<Conn = C>>(&mut self, now: Instant, app: &mut A) {
        self.wheel.advance(now);
        if !self.wheel.has_due() {
            return;
        }
        let idle = self.cfg.idle_timeout;
        let cfg = self.cfg.tcp.clone();
        // Re-arming (in after_event) never puts a timer back on the due list: this ends.
        while let Some(slot) = self.wheel.pop_due() {
            let Some(id) = self.conns.id_of_slot(slot) else { continue };
            let Some((_, e)) = self.conns.get_mut(id) else { continue };
            let out = e.tcp.on_timer(&cfg, now);
            if out.rto {
                app.on_rto(&mut e.app);
                e.tcp.unblock();
            }
            if !out.closed && matches!(e.tcp.state, State::Established | State::CloseWait) && app.deadline(&e.app).is_some_and(|d| now >= d) {
                app.on_deadline(now, &mut e.app, &mut e.tcp);
            }
            if !out.closed && !matches!(e.tcp.state, State::TimeWait | State::Closed) && now >= e.tcp.last_progress() + idle {
                self.stats.tcp_idle_timeouts += 1;
                if matches!(e.tcp.state, State::Established | State::CloseWait) && !e.tcp.fin_queued() {
                    app.on_idle(now, &mut e.app, &mut e.tcp);
                    e.tcp.note_activity(now);
                } else {
                    // Idle while closing (or half-open): the peer is gone.
                    e.tcp.abort();
                }
            }
            if out.closed && e.tcp.is_closed() {
                self.remove(id, CloseReason::TimedOut, app);
                continue;
            }
            self.after_event(now, id, app);
        }
    }
}

/// The addresses of a segment from this port to a connection's peer.
fn toward_peer(cfg: &IfaceConfig, key: &ConnKey, peer_mac: [u8; 6]) -> Endpoints {
    Endpoints {
        src_mac: cfg.mac,
        dst_mac: peer_mac,
        src_ip: cfg.ip,
        dst_ip: key.remote_ip,
        src_port: key.local_port,
        dst_port: key.remote_port,
    }
}

/// The connection key of an Ethernet frame carrying TCP over IPv4 (no check of the headers'
/// checksums or of whom the frame is for).
fn tcp_key_of(frame: &[u8]) -> Option<ConnKey> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(ConnKey { remote_ip: ip.src_addr().octets(), remote_port: tcp.src_port(), local_port: tcp.dst_port() })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drivers::nic::sim::SimConfig;
    use drivers::nic::{Nic, RxChecksums, RxVerdict};

    use crate::loopback::{tiny_volume, SimHarness, CLIENT_IP, SERVER_IP};
    use crate::net::headers::{self, flags, Endpoints, TcpFields, TcpOptions, MAX_HEADERS_LEN};
    use crate::net::{MS, SEC};

    /// The (sender, target) addresses of the ARP requests in `frames`.
    fn arp_requests(frames: &[drivers::nic::PoolFrame]) -> Vec<([u8; 4], [u8; 4])> {
        use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol};
        frames
            .iter()
            .filter_map(|f| {
                let eth = EthernetFrame::new_checked(drivers::nic::FrameBuf::bytes(f)).ok()?;
                if eth.ethertype() != EthernetProtocol::Arp || eth.dst_addr().0 != [0xff; 6] {
                    return None;
                }
                match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()? {
                    ArpRepr::EthernetIpv4 { operation: ArpOperation::Request, source_protocol_addr, target_protocol_addr, .. } => {
                        Some((source_protocol_addr.octets(), target_protocol_addr.octets()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    #[test]
    fn the_address_is_announced_twice_two_seconds_apart_and_a_claim_on_it_is_counted() {
        let (_dir, storage, volume) = tiny_volume();
        let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
        let start = h.now();
        h.server.stack.announce(start, 2);
        let mut seen = Vec::new();
        let mut rx = Vec::new();
        while h.now() < start + 5 * SEC {
            h.server.poll(h.now());
            let now = h.now();
            h.clock.set(Duration::from_nanos(now + 10 * MS));
            h.client_nic.rx_burst(&mut rx, 64);
            for (sender, target) in arp_requests(&rx) {
                seen.push((sender, target, h.now() / MS));
            }
            rx.clear();
        }
        let times: Vec<u64> = seen.iter().map(|&(_, _, t)| t - start / MS).collect();
        assert_eq!(seen.len(), 2, "two announcements: {seen:?}");
        assert!(seen.iter().all(|&(s, t, _)| s == SERVER_IP && t == SERVER_IP), "{seen:?}");
        assert!(times[0] <= 20 && (1990..=2030).contains(&(times[1] - times[0])), "{times:?}");
        assert_eq!(h.server.stats().arp_announcements_sent, 2);

        // Another machine (the client's MAC) announces the server's address: counted, not
        // learnt, not answered.
        let claim = smoltcp::wire::ArpRepr::EthernetIpv4 {
            operation: smoltcp::wire::ArpOperation::Request,
            source_hardware_addr: smoltcp::wire::EthernetAddress(h.client_nic.link().mac),
            source_protocol_addr: SERVER_IP.into(),
            target_hardware_addr: smoltcp::wire::EthernetAddress([0; 6]),
            target_protocol_addr: SERVER_IP.into(),
        };
        let mut frame = [0u8; 14 + 28];
        headers::emit_ethernet(&mut frame, [0xff; 6], h.client_nic.link().mac, headers::ETHERTYPE_ARP);
        claim.emit(&mut smoltcp::wire::ArpPacket::new_unchecked(&mut frame[14..]));
        assert!(h.client_nic.tx_gather(&[&frame]));
        h.client_nic.tx_flush();
        h.run_for(Duration::from_millis(50));
        assert_eq!(h.server.stats().arp_address_conflicts, 1);
        assert_eq!(h.server.stats().arp_requests_answered, 0);
    }

    /// An ICMP echo request in two IPv4 fragments: both dropped, counted as fragments (not
    /// as bad headers), no answer.
    #[test]
    fn ip_fragments_are_dropped_and_counted_apart() {
        let (_dir, storage, volume) = tiny_volume();
        let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
        // MF with offset 0, then the last fragment at offset 8 bytes (one unit).
        for flags_offset in [0x2000u16, 0x0001] {
            let mut frame = [0u8; 14 + 20 + 8];
            headers::emit_ethernet(&mut frame, h.server.nic.link().mac, h.client_nic.link().mac, headers::ETHERTYPE_IPV4);
            headers::emit_ipv4(&mut frame[14..34], CLIENT_IP, SERVER_IP, 1, 8, 7);
            frame[20..22].copy_from_slice(&flags_offset.to_be_bytes());
            frame[24..26].copy_from_slice(&[0, 0]);
            let sum = crate::net::checksum::finish(crate::net::checksum::accumulate(0, &frame[14..34]));
            frame[24..26].copy_from_slice(&sum.to_be_bytes());
            frame[34] = 8; // echo request
            assert!(h.client_nic.tx_gather(&[&frame]));
        }
        h.client_nic.tx_flush();
        h.run_for(Duration::from_millis(50));
        let s = h.server.stats();
        assert_eq!((s.ip_rx_fragments, s.ip_rx_bad, s.icmp_echo_answered), (2, 0, 0));
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_active_idle_connection() {
        let (_dir, storage, volume) = tiny_volume();
        let mut h = SimHarness::with_limits(storage, volume, SimConfig::default(), SimConfig::default(), 16, 4, 4);
        let mut ports = Vec::new();
        for _ in 0..4 {
            ports.push(h.start_raw(b"GET /index.html HTTP/1.1\r\n").expect("connect"));
            h.run_for(Duration::from_millis(50));
        }
        assert_eq!(h.server.stack.connection_count(), 4);
        // Activity on the oldest (one more header byte, as a slowloris client sends) makes
        // the second the least recently active.
        let second = ports[1];
        assert!(h.send_more(ports[0], b"H"));
        h.run_for(Duration::from_millis(50));
        // A new client: its SYN finds the table full (a cookie answers), its ACK proves the
        // address and takes the slot of the least recently active idle connection.
        assert!(h.start_fetch("/a.txt", None));
        assert!(h.run_until_fetches(2, Duration::from_secs(5)), "fetches: {:?}", h.client_app.fetches);
        let s = h.server.stats();
        assert!(s.tcp_table_full >= 1, "the SYN found the table full");
        assert_eq!(s.tcp_syn_cookies_accepted, 1);
        assert_eq!(s.tcp_evicted, 1);
        let mut statuses: Vec<_> = h.client_app.fetches.iter().map(|f| (f.status, f.body_len)).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, vec![(0, 0), (200, 100_000)], "the evicted one was reset, the new one served");
        let left: Vec<u16> = h.server.stack.connections().map(|(_, k, _)| k.remote_port).collect();
        assert!(!left.contains(&second), "the second (least recently active) was evicted: {left:?} of {ports:?}");
        assert!(left.contains(&ports[0]) && left.contains(&ports[2]) && left.contains(&ports[3]));
    }

    #[test]
    fn a_busy_connection_is_never_evicted() {
        let (_dir, storage, volume) = tiny_volume();
        let slow = SimConfig { rate_bps: Some(10_000_000), delay: Duration::from_millis(1), ..SimConfig::default() };
        let mut h = SimHarness::with_limits(storage, volume, slow, SimConfig::default(), 16, 2, 2);
        // Two connections that each have a response under way: nothing may be evicted.
        assert!(h.start_fetch("/a.txt", None));
        assert!(h.start_fetch("/a.txt", None));
        h.run_until(Duration::from_secs(10), |h| h.server.stack.connections().filter(|(_, _, e)| !e.app.idle()).count() == 2);
        assert_eq!(h.server.stack.connections().filter(|(_, _, e)| !e.app.idle()).count(), 2);
        assert!(h.start_fetch("/index.html", None));
        assert!(h.run_until_fetches(3, Duration::from_secs(10)), "fetches: {:?}", h.client_app.fetches);
        let s = h.server.stats();
        assert_eq!(s.tcp_evicted, 0);
        let ok = h.client_app.fetches.iter().filter(|f| f.status == 200 && f.complete).count();
        assert!(ok >= 2, "both transfers completed: {:?}", h.client_app.fetches);
    }

    /// A NIC whose transmit ring is full refuses a frame: the segment did not go, so the
    /// stack takes it back and sends it in a later round. Not a loss: no retransmission and
    /// no timeout (before, each refused segment waited for an RTO, 200 ms or more, and
    /// the whole flight behind it went again).
    #[test]
    fn a_full_transmit_ring_delays_segments_but_loses_none() {
        let (_dir, storage, volume) = tiny_volume();
        let ring = SimConfig { backpressure: true, queue_frames: 4, ..SimConfig::default() };
        let mut h = SimHarness::new(storage, volume, ring, SimConfig::default(), 16);
        for _ in 0..40 {
            assert!(h.start_fetch("/a.txt", None));
        }
        assert!(h.run_until_fetches(40, Duration::from_secs(60)));
        for f in &h.client_app.fetches {
            assert!(f.complete && f.status == 200 && f.body_len == 100_000, "{f:?}");
        }
        let s = h.server.stats();
        assert!(s.tcp_tx_ring_full > 0, "the ring was full at times");
        assert_eq!((s.tcp_retransmits, s.tcp_rto_timeouts), (0, 0), "{} refusals", s.tcp_tx_ring_full);
        assert_eq!(h.server.nic.fault_counters().queue_drops, 0);
    }

    /// The fuzz target's lost timer (fuzz/regressions/net_frames/timer-lost-after-rto-with-
    /// zero-window): a connection whose deadline has passed keeps getting segments that change
    /// nothing (out of window: not activity), each handled at a new `now` before the round's
    /// timers run. Its timer must fire all the same: re-arming it with a deadline already past
    /// must not move it to the current time, or it slides along with the clock for ever.
    #[test]
    fn a_passed_deadline_fires_while_segments_keep_arriving_before_the_timers() {
        let (_dir, storage, volume) = tiny_volume();
        let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
        h.server.stack.cfg.idle_timeout = SEC;
        assert!(h.start_idle(false));
        h.run_for(Duration::from_millis(20));
        let (id, key) = h.server.stack.connections().next().map(|(id, k, _)| (id, *k)).expect("connected");
        let ep = Endpoints {
            src_mac: h.client_nic.link().mac,
            dst_mac: h.server.nic.link().mac,
            src_ip: CLIENT_IP,
            dst_ip: SERVER_IP,
            src_port: key.remote_port,
            dst_port: key.local_port,
        };
        let end = h.now() + 3 * SEC;
        while h.now() < end && h.server.stats().tcp_idle_timeouts == 0 {
            let now = h.now();
            if let Some(e) = h.server.stack.get(id) {
                // The server's RST fields carry what it expects next: aim far beyond it.
                let expect = e.tcp.reset_fields();
                let f = TcpFields { seq: expect.ack.wrapping_add(1 << 30), ack: expect.seq, flags: flags::ACK, window: 65535, options: TcpOptions::default() };
                let mut frame = [0u8; MAX_HEADERS_LEN];
                let n = headers::emit_tcp_segment(&mut frame, &ep, &f, 1, &[], true);
                let p = &mut h.server;
                p.stack.on_frame(now, &frame[..n], RxChecksums::UNCHECKED, &mut p.app, &mut p.nic);
            }
            h.step(false);
            h.clock.advance(Duration::from_millis(1));
        }
        let s = h.server.stats();
        assert!(s.tcp_out_of_window > 900, "the segments were out of window: {}", s.tcp_out_of_window);
        assert_eq!(s.tcp_idle_timeouts, 1, "the idle timeout fired (at {} ms)", h.now() / MS);
        assert!(h.now() <= end - SEC, "about 1 s after the last activity, not {} ms", h.now() / MS);
    }

    /// Checksums the port verified are not summed again, and a port's bad verdict drops the
    /// frame as a wrong checksum would: the verdict decides, not the bytes.
    #[test]
    fn receive_checksum_verdicts_of_the_port_are_trusted() {
        let (_dir, storage, volume) = tiny_volume();
        let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
        let ep = Endpoints {
            src_mac: h.client_nic.link().mac,
            dst_mac: h.server.nic.link().mac,
            src_ip: CLIENT_IP,
            dst_ip: SERVER_IP,
            src_port: 40000,
            dst_port: 80,
        };
        let mut frame = [0u8; MAX_HEADERS_LEN];
        let mut syn = |port: u16| {
            let f = TcpFields { seq: 7, ack: 0, flags: flags::SYN, window: 65535, options: TcpOptions::default() };
            let n = headers::emit_tcp_segment(&mut frame, &Endpoints { src_port: port, ..ep }, &f, 1, &[], true);
            frame[..n].to_vec()
        };
        let (good, ip_bad, tcp_bad, unchecked) = (
            RxChecksums { ipv4: RxVerdict::Good, l4: RxVerdict::Good },
            RxChecksums { ipv4: RxVerdict::Bad, l4: RxVerdict::Unchecked },
            RxChecksums { ipv4: RxVerdict::Good, l4: RxVerdict::Bad },
            RxChecksums::UNCHECKED,
        );
        let feed = |h: &mut SimHarness<_>, frame: &[u8], checks| {
            let before = h.server.stats();
            let now = h.now();
            let p = &mut h.server;
            p.stack.on_frame(now, frame, checks, &mut p.app, &mut p.nic);
            let after = h.server.stats();
            (after.ip_rx_bad - before.ip_rx_bad, after.tcp_rx_bad - before.tcp_rx_bad, after.tcp_rx_segments - before.tcp_rx_segments)
        };
        // Both checksums wrong: refused when the stack checks, taken on the port's word.
        let mut wrong = syn(40001);
        wrong[14 + 10] ^= 0x5a; // IPv4 header checksum
        wrong[14 + 20 + 16] ^= 0x5a; // TCP checksum
        assert_eq!(feed(&mut h, &wrong, unchecked), (1, 0, 0));
        let mut tcp_wrong = syn(40002);
        tcp_wrong[14 + 20 + 16] ^= 0x5a;
        assert_eq!(feed(&mut h, &tcp_wrong, unchecked), (0, 1, 0));
        assert_eq!(feed(&mut h, &wrong, good), (0, 0, 1));
        // Right bytes, bad verdicts: dropped and counted.
        assert_eq!(feed(&mut h, &syn(40003), ip_bad), (1, 0, 0));
        assert_eq!(feed(&mut h, &syn(40004), tcp_bad), (0, 1, 0));
        assert_eq!(feed(&mut h, &syn(40005), unchecked), (0, 0, 1));
    }

    /// The burst warm-up finds the key a TCP frame is looked up by, and passes over what is
    /// not TCP over IPv4 or is cut short.
    #[test]
    fn warm_up_reads_the_key_of_tcp_frames_only() {
        let ep = Endpoints { src_mac: [2; 6], dst_mac: [4; 6], src_ip: [10, 0, 0, 9], dst_ip: [10, 0, 0, 1], src_port: 40000, dst_port: 443 };
        let f = TcpFields { seq: 1, ack: 0, flags: flags::SYN, window: 65535, options: TcpOptions::default() };
        let mut frame = [0u8; MAX_HEADERS_LEN];
        let n = headers::emit_tcp_segment(&mut frame, &ep, &f, 1, &[], true);
        let key = super::tcp_key_of(&frame[..n]).expect("a TCP frame");
        assert_eq!(key, super::ConnKey { remote_ip: [10, 0, 0, 9], remote_port: 40000, local_port: 443 });
        assert_eq!(super::tcp_key_of(&frame[..30]), None, "cut short");
        let mut not_tcp = frame;
        not_tcp[23] = headers::IP_PROTO_ICMP;
        assert_eq!(super::tcp_key_of(&not_tcp[..n]), None);
        let mut arp = frame;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(super::tcp_key_of(&arp[..n]), None);
        // The table's warm-up of a held key names the slot the lookup finds.
        let mut t = super::ConnTable::with_capacity(4);
        let id = t.insert(key, ()).unwrap();
        assert_eq!(t.prefetch_slot_at(t.prefetch_place(&key)), Some(id.slot));
        assert_eq!(t.value_of_slot(id.slot), Some(&()));
        assert_eq!(t.value_of_slot(id.slot + 1), None, "a slot never used");
        assert_eq!(t.value_of_slot(99), None, "beyond the table");
    }
}
