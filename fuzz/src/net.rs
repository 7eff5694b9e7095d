//! The network target: the whole server pipeline (`appliance::loopback::SimHarness`: ARP,
//! IPv4, ICMP, TCP, HTTP, TLS, storage) with frames from the fuzz input injected toward the
//! server between rounds, while real fetches (the in-process client) run over the simulated
//! link. Segments can be aimed at live connections: the harness watches what the server
//! sends, so an injected segment's seq/ack are offsets from what the server expects.
//!
//! Input: a header (TLS on/off, storage fault schedule), then operations until the input ends
//! (see [`run`]). At the end the clock runs on with nothing injected and every connection
//! must be gone and every storage buffer back.
use std::collections::HashMap;
use std::time::Duration;

use appliance::loopback::{SimHarness, CLIENT_IP, HTTPS_PORT, SERVER_IP};
use appliance::net::checksum;
use appliance::net::headers::{ETHERTYPE_ARP, ETHERTYPE_IPV4, IP_PROTO_ICMP, IP_PROTO_TCP};
use appliance::net::{MS, SEC};
use appliance::server::pipeline::{RX_BURST, TX_BUDGET};
use drivers::nic::sim::{SimConfig, SimNic};
use drivers::nic::{FrameBuf, Nic, RxChecksums};

use crate::{fixture_volume, Fault, Input, MemStorage};

/// Storage buffers of the server's pool.
pub const BUFFERS: usize = 16;
/// Largest frame injected.
const MAX_FRAME: usize = 1514 + 64;
/// Paths real fetches ask for (the last ones do not exist).
pub const PATHS: [&str; 7] = ["/index.html", "/hls/seg-1.ts", "/empty.txt", "/hls/index.m3u8", "/data.json", "/missing", "/%2e%2e/x"];

/// What the server last said on one connection (from its frames toward the client).
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    server_port: u16,
    /// Next sequence number after the server's last segment.
    server_next: u32,
    /// The server's last acknowledgement: the next byte it expects from the peer.
    server_ack: u32,
    /// The server's last TSval, if it sends timestamps.
    ts_val: Option<u32>,
}

struct Fuzz {
    h: SimHarness<MemStorage>,
    rx: Vec<<SimNic as Nic>::Rx>,
    /// Connections by client port, in the order first seen.
    order: Vec<u16>,
    seen: HashMap<u16, Seen>,
    /// The in-process client's real fetches: it owns ports 10001 to 10000 + `fetches`.
    fetches: usize,
    tls: bool,
    ip_id: u16,
}

fn tcp_view(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    // (IPv4 header, TCP segment) of an IPv4/TCP frame.
    if frame.len() < 34 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[9] != IP_PROTO_TCP || ihl < 20 || total < ihl + 20 || total > ip.len() {
        return None;
    }
    Some((&ip[..ihl], &ip[ihl..total]))
}

fn ts_option(tcp: &[u8]) -> Option<u32> {
    let off = ((tcp[12] >> 4) as usize * 4).min(tcp.len());
    let mut o = tcp.get(20..off)?;
    while let Some(&kind) = o.first() {
        match kind {
            0 => break,
            1 => o = &o[1..],
            _ => {
                let len = *o.get(1)? as usize;
                if len < 2 || len > o.len() {
                    break;
                }
                if kind == 8 && len == 10 {
                    return Some(u32::from_be_bytes([o[2], o[3], o[4], o[5]]));
                }
                o = &o[len..];
            }
        }
    }
    None
}

impl Fuzz {
    fn new(tls: bool, faults: Vec<Fault>) -> Fuzz {
        let image = fixture_volume();
        let mut storage = MemStorage::new(image, Vec::new());
        let volume = appliance::volume::load(&mut storage).expect("the fixture volume loads");
        let storage = MemStorage::new(storage_data(&storage), faults);
        // A short queue keeps the link's buffer slabs small; no faults on the link itself.
        let link = SimConfig { queue_frames: 64, delay: Duration::from_micros(50), ..SimConfig::default() };
        // Small tables (cheap to build, and the limits are reachable): 64 connections, SYN
        // cookies past 8 half-open ones.
        let mut h = SimHarness::with_limits(storage, volume, link.clone(), link, BUFFERS, 64, 8);
        // Short idle timeout: the final drain is bounded in virtual time.
        h.server.stack.cfg.idle_timeout = 5 * SEC;
        if tls {
            let (server, client) = tls_configs();
            h.enable_tls(server, client);
        }
        Fuzz { h, rx: Vec::with_capacity(RX_BURST), order: Vec::new(), seen: HashMap::new(), fetches: 0, tls, ip_id: 1 }
    }

    fn now(&self) -> u64 {
        self.h.clock.now().as_nanos() as u64
    }

    /// One round of both loops, like `SimHarness::step`, watching the server's segments.
    /// Frames to connections the client did not open (injected ones) are swallowed, so the
    /// client's stack does not reset them. Returns whether anything happened.
    fn step(&mut self, advance: bool) -> bool {
        let now = self.now();
        let busy_server = self.h.server.poll(now).busy();
        let got = self.h.client_nic.rx_burst(&mut self.rx, RX_BURST);
        for f in self.rx.drain(..) {
            let bytes = f.bytes();
            let checks = f.rx_checksums();
            if let Some((_, tcp)) = tcp_view(bytes) {
                let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
                let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
                let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
                let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
                let flags = tcp[13];
                let hlen = ((tcp[12] >> 4) as usize * 4).clamp(20, tcp.len());
                let len = (tcp.len() - hlen) as u32 + u32::from(flags & 0x03 != 0);
                if !self.seen.contains_key(&dport) {
                    self.order.push(dport);
                }
                let s = self.seen.entry(dport).or_default();
                s.server_port = sport;
                s.server_next = seq.wrapping_add(len);
                if flags & 0x10 != 0 {
                    s.server_ack = ack;
                }
                if let Some(ts) = ts_option(tcp) {
                    s.ts_val = Some(ts);
                }
                if !(10001..=10000 + self.fetches as u16).contains(&dport) {
                    continue;
                }
            }
            self.h.client.on_frame(now, bytes, checks, &mut self.h.client_app, &mut self.h.client_nic);
        }
        self.h.client.poll_timers(now, &mut self.h.client_app);
        let sent = self.h.client.poll_tx(now, &mut self.h.client_app, &mut self.h.client_nic, TX_BUDGET);
        self.h.client_nic.tx_flush();
        let busy = busy_server || got > 0 || sent > 0;
        if advance && !busy {
            let due = [self.h.client_nic.next_due(), self.h.server.nic.next_due()].into_iter().flatten().min();
            let next = due.map_or(now + MS, |d| (d.as_nanos() as u64).clamp(now + 1, now + MS));
            self.h.clock.set(Duration::from_nanos(next));
        }
        busy
    }

    fn inject(&mut self, frame: &[u8]) {
        let now = self.now();
        let p = &mut self.h.server;
        p.stack.on_frame(now, frame, RxChecksums::UNCHECKED, &mut p.app, &mut p.nic);
    }

    fn server_mac(&self) -> [u8; 6] {
        self.h.server.nic.link().mac
    }

    fn client_mac(&self) -> [u8; 6] {
        self.h.client_nic.link().mac
    }

    fn fetch(&mut self, which: u8) {
        let path = PATHS[(which & 0x0f) as usize % PATHS.len()];
        let range = (which & 0x10 != 0).then_some((1, 100));
        let ok = if self.tls && which & 0x20 != 0 { self.h.start_fetch_tls(path, range) } else { self.h.start_fetch(path, range) };
        if ok {
            self.fetches += 1;
        }
    }

    /// A TCP segment from the client's address with the given fields, checksummed.
    #[allow(clippy::too_many_arguments)]
    fn segment(&mut self, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, window: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut opts = options[..options.len().min(40)].to_vec();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let tcp_len = 20 + opts.len() + payload.len();
        let mut f = Vec::with_capacity(34 + tcp_len);
        f.extend_from_slice(&self.server_mac());
        f.extend_from_slice(&self.client_mac());
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        self.ip_id = self.ip_id.wrapping_add(1);
        ipv4_header(&mut f, CLIENT_IP, SERVER_IP, IP_PROTO_TCP, tcp_len, self.ip_id);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.push((((20 + opts.len()) / 4) as u8) << 4);
        f.push(flags);
        f.extend_from_slice(&window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&opts);
        f.extend_from_slice(payload);
        fix_l4_checksum(&mut f);
        f
    }
}

fn storage_data(s: &MemStorage) -> std::sync::Arc<Vec<u8>> {
    s.data.clone()
}

fn tls_configs() -> (std::sync::Arc<rustls::ServerConfig>, std::sync::Arc<rustls::ClientConfig>) {
    type Configs = (std::sync::Arc<rustls::ServerConfig>, std::sync::Arc<rustls::ClientConfig>);
    static CFG: std::sync::OnceLock<Configs> = std::sync::OnceLock::new();
    CFG.get_or_init(|| appliance::loopback::test_tls_configs().expect("test certificates")).clone()
}

fn ipv4_header(f: &mut Vec<u8>, src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize, id: u16) {
    let at = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let c = checksum::finish(checksum::accumulate(0, &f[at..at + 20]));
    f[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

/// Recompute the IPv4 header checksum and the TCP or ICMP checksum of an IPv4 frame, over
/// whatever the headers claim (clamped to the frame), so mutated frames get past them.
pub fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 || u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE_IPV4 {
        return;
    }
    let ihl = ((f[14] & 0x0f) as usize * 4).clamp(20, f.len() - 14);
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::finish(checksum::accumulate(0, &f[14..14 + ihl]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    fix_l4_checksum(f);
}

fn fix_l4_checksum(f: &mut [u8]) {
    if f.len() < 34 {
        return;
    }
    let ihl = ((f[14] & 0x0f) as usize * 4).clamp(20, f.len() - 14);
    let total = (u16::from_be_bytes([f[16], f[17]]) as usize).clamp(ihl, f.len() - 14);
    let l4 = 14 + ihl;
    let end = 14 + total;
    let (src, dst) = (f[26..30].try_into().unwrap(), f[30..34].try_into().unwrap());
    match f[23] {
        IP_PROTO_TCP if end >= l4 + 18 => {
            f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
            let acc = checksum::pseudo_header(src, dst, IP_PROTO_TCP, (end - l4) as u16);
            let c = checksum::finish(checksum::accumulate(acc, &f[l4..end]));
            f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        }
        IP_PROTO_ICMP if end >= l4 + 4 => {
            f[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
            let c = checksum::finish(checksum::accumulate(0, &f[l4..end]));
            f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
}

/// Operations (low nibble of the op byte; the high nibble is its argument `a`):
/// - 0 raw frame: u16 length, bytes; `a` bit 0: set the addresses (MACs, IPs) to client ->
///   server, bit 1: fix the checksums.
/// - 1 run `a + 1` rounds; 2 advance the clock by a u16 of milliseconds, then one round.
/// - 3 start a real fetch: a byte (path, range, TLS).
/// - 4 segment on a known connection (`a` picks it): flags, i16 seq and ack offsets from what
///   the server expects / sent last, u16 window, option mode (bit 0: a timestamp option that
///   echoes the server's, bit 1: a SACK block), raw option bytes (u8 length), payload (u16
///   length).
/// - 5 segment on a new 4-tuple: u16 source port, destination port (`a` bit 0: 443, bit 1:
///   from the input, else 80), u32 seq, u32 ack, flags, u16 window, options, payload.
/// - 6 ARP: u16 operation, sender MAC and IP, target IP (`a` bit 0: sender is the client).
/// - 7 ICMP to the server: type, code, u16 length of the rest, rest.
/// - anything else: one round.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let head = inp.u8();
    let fault_bits = inp.u32();
    let faults: Vec<Fault> = if fault_bits == 0 {
        Vec::new()
    } else {
        (0..16).map(|i| match (fault_bits >> (2 * i)) & 3 {
            0 | 1 => Fault::Ok,
            2 => if head & 2 != 0 { Fault::DeviceError } else { Fault::Late },
            _ => Fault::QueueFull,
        }).collect()
    };
    let mut fz = Fuzz::new(head & 1 != 0, faults);
    let mut ops = 0;
    while !inp.is_empty() && ops < 256 {
        ops += 1;
        let op = inp.u8();
        let a = op >> 4;
        match op & 0x0f {
            0 => {
                let len = (inp.u16() as usize).min(MAX_FRAME);
                let mut f = inp.bytes(len).to_vec();
                if a & 1 != 0 && f.len() >= 14 {
                    let (s, c) = (fz.server_mac(), fz.client_mac());
                    f[..6].copy_from_slice(&s);
                    f[6..12].copy_from_slice(&c);
                    if f.len() >= 34 && u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_IPV4 {
                        f[26..30].copy_from_slice(&CLIENT_IP);
                        f[30..34].copy_from_slice(&SERVER_IP);
                    }
                }
                if a & 2 != 0 {
                    fix_checksums(&mut f);
                }
                fz.inject(&f);
            }
            1 => {
                for _ in 0..=a {
                    fz.step(true);
                }
            }
            2 => {
                let ms = inp.u16() as u64;
                fz.h.clock.advance(Duration::from_millis(ms));
                fz.step(false);
            }
            3 => {
                let which = inp.u8();
                fz.fetch(which);
            }
            4 => {
                let (port, s) = match fz.order.get(a as usize % fz.order.len().max(1)) {
                    Some(p) => (*p, fz.seen[p]),
                    None => (40000, Seen { server_port: 80, ..Seen::default() }),
                };
                let flags = inp.u8();
                let dseq = inp.u16() as i16;
                let dack = inp.u16() as i16;
                let window = inp.u16();
                let mode = inp.u8();
                let mut opts = Vec::new();
                if mode & 1 != 0 {
                    let ecr = s.ts_val.unwrap_or(0);
                    opts.extend_from_slice(&[1, 1, 8, 10]);
                    opts.extend_from_slice(&(fz.now() / MS) .wrapping_add(1).to_be_bytes()[4..]);
                    opts.extend_from_slice(&ecr.to_be_bytes());
                }
                if mode & 2 != 0 {
                    let l = s.server_next.wrapping_sub(inp.u16() as u32);
                    let r = l.wrapping_add(inp.u16() as u32);
                    opts.extend_from_slice(&[1, 1, 5, 10]);
                    opts.extend_from_slice(&l.to_be_bytes());
                    opts.extend_from_slice(&r.to_be_bytes());
                }
                let n = inp.u8() as usize;
                opts.extend_from_slice(inp.bytes(n));
                let plen = (inp.u16() as usize).min(1460);
                let payload = inp.bytes(plen);
                let seq = s.server_ack.wrapping_add(dseq as u32);
                let ack = s.server_next.wrapping_add(dack as u32);
                let f = fz.segment(port, s.server_port, seq, ack, flags, window, &opts, payload);
                fz.inject(&f);
            }
            5 => {
                let sport = inp.u16();
                let dport = if a & 1 != 0 { HTTPS_PORT } else if a & 2 != 0 { inp.u16() } else { 80 };
                let seq = inp.u32();
                let ack = inp.u32();
                let flags = inp.u8();
                let window = inp.u16();
                let n = inp.u8() as usize;
                let opts = inp.bytes(n);
                let plen = (inp.u16() as usize).min(1460);
                let payload = inp.bytes(plen);
                let f = fz.segment(sport, dport, seq, ack, flags, window, opts, payload);
                fz.inject(&f);
            }
            6 => {
                let oper = inp.u16();
                let mut sha = [0u8; 6];
                sha.copy_from_slice(&{
                    let mut b = inp.bytes(6).to_vec();
                    b.resize(6, 0);
                    b
                });
                let mut spa = [0u8; 4];
                spa.copy_from_slice(&{
                    let mut b = inp.bytes(4).to_vec();
                    b.resize(4, 0);
                    b
                });
                if a & 1 != 0 {
                    sha = fz.client_mac();
                    spa = CLIENT_IP;
                }
                let tpa = if a & 2 != 0 { SERVER_IP } else { inp.u32().to_be_bytes() };
                let mut f = Vec::with_capacity(42);
                f.extend_from_slice(&[0xff; 6]);
                f.extend_from_slice(&sha);
                f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
                f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
                f.extend_from_slice(&oper.to_be_bytes());
                f.extend_from_slice(&sha);
                f.extend_from_slice(&spa);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&tpa);
                fz.inject(&f);
            }
            7 => {
                let ty = inp.u8();
                let code = inp.u8();
                let n = (inp.u16() as usize).min(1472);
                let rest = inp.bytes(n);
                let mut f = Vec::with_capacity(42 + n);
                f.extend_from_slice(&fz.server_mac());
                f.extend_from_slice(&fz.client_mac());
                f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                fz.ip_id = fz.ip_id.wrapping_add(1);
                ipv4_header(&mut f, CLIENT_IP, SERVER_IP, IP_PROTO_ICMP, 4 + rest.len(), fz.ip_id);
                f.extend_from_slice(&[ty, code, 0, 0]);
                f.extend_from_slice(rest);
                fix_l4_checksum(&mut f);
                fz.inject(&f);
            }
            _ => {
                fz.step(true);
            }
        }
    }
    drain(&mut fz);
}

/// Let virtual time run with nothing injected: idle timeouts, retransmission limits and
/// TIME-WAIT must end every connection, and every storage buffer must come back.
fn drain(fz: &mut Fuzz) {
    let end = fz.now() + 1800 * SEC;
    while fz.now() < end {
        let busy = fz.step(true);
        let server = &fz.h.server;
        if server.stack.connection_count() == 0 && server.app.buffers_free() == BUFFERS && server.app.reads_in_flight() == 0 {
            return;
        }
        if !busy {
            // Nothing on the wire: jump ahead (timers are deadlines, so jumps are safe).
            fz.h.clock.advance(Duration::from_millis(250));
        }
    }
    let server = &fz.h.server;
    for (_, key, e) in server.stack.connections() {
        eprintln!("left: {key:?} now {} {:?} next_deadline {:?}", fz.now(), e.tcp, e.tcp.next_deadline());
    }
    panic!(
        "after 30 minutes of quiet: {} connections left, {} of {BUFFERS} storage buffers free, {} reads in flight",
        server.stack.connection_count(),
        server.app.buffers_free(),
        server.app.reads_in_flight()
    );
}
