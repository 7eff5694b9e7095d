//! Emitting the headers of frames we send: Ethernet + IPv4 + TCP (with options) into a small
//! header buffer, checksummed together with a payload slice that stays where it is.
use super::checksum;

pub const ETH_HEADER_LEN: usize = 14;
pub const IPV4_HEADER_LEN: usize = 20;
pub const TCP_HEADER_LEN: usize = 20;
/// Largest Ethernet + IPv4 + TCP header we emit (40 bytes of TCP options at most).
pub const MAX_HEADERS_LEN: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN + 40;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IP_PROTO_ICMP: u8 = 1;
pub const IP_PROTO_TCP: u8 = 6;

pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The options a segment carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    /// (TSval, TSecr)
    pub timestamp: Option<(u32, u32)>,
    /// Up to 3 SACK blocks (left, right) in sequence space; `sack_len` are valid.
    pub sack: [(u32, u32); 3],
    pub sack_len: u8,
}

impl TcpOptions {
    fn emit(&self, out: &mut [u8]) -> usize {
        let mut n = 0;
        if let Some(mss) = self.mss {
            out[n..n + 4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            n += 4;
        }
        if self.sack_permitted {
            out[n..n + 2].copy_from_slice(&[4, 2]);
            n += 2;
        }
        if let Some((val, ecr)) = self.timestamp {
            if n % 4 == 0 {
                out[n..n + 2].copy_from_slice(&[1, 1]);
                n += 2;
            }
            out[n..n + 2].copy_from_slice(&[8, 10]);
            out[n + 2..n + 6].copy_from_slice(&val.to_be_bytes());
            out[n + 6..n + 10].copy_from_slice(&ecr.to_be_bytes());
            n += 10;
        }
        if let Some(ws) = self.window_scale {
            out[n..n + 4].copy_from_slice(&[1, 3, 3, ws]);
            n += 4;
        }
        let blocks = self.sack_len.min(if self.timestamp.is_some() { 3 } else { 4 }) as usize;
        if blocks > 0 {
            // With timestamps (12 bytes) there is room for 3 blocks: 40 - 12 - 2 - 2 = 24 -> 3.
            let blocks = blocks.min(3);
            out[n..n + 4].copy_from_slice(&[1, 1, 5, 2 + 8 * blocks as u8]);
            n += 4;
            for &(l, r) in &self.sack[..blocks] {
                out[n..n + 4].copy_from_slice(&l.to_be_bytes());
                out[n + 4..n + 8].copy_from_slice(&r.to_be_bytes());
                n += 8;
            }
        }
        while n % 4 != 0 {
            out[n] = 1; // NOP padding keeps the header a multiple of 4 bytes.
            n += 1;
        }
        n
    }
}

/// Addresses of one TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

/// The TCP fields of one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFields {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: TcpOptions,
}

pub fn emit_ethernet(out: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Write a 20-byte IPv4 header (DF set, TTL 64) with its checksum.
pub fn emit_ipv4(out: &mut [u8], src: [u8; 4], dst: [u8; 4], protocol: u8, payload_len: usize, id: u16) {
    let total = (IPV4_HEADER_LEN + payload_len) as u16;
    out[0] = 0x45;
    out[1] = 0;
    out[2..4].copy_from_slice(&total.to_be_bytes());
    out[4..6].copy_from_slice(&id.to_be_bytes());
    out[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    out[8] = 64;
    out[9] = protocol;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src);
    out[16..20].copy_from_slice(&dst);
    let c = checksum::finish(checksum::accumulate(0, &out[..IPV4_HEADER_LEN]));
    out[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Where the TCP header starts in a frame this module emits.
pub const TCP_OFFSET: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN;

/// Write Ethernet + IPv4 + TCP headers for a segment carrying `payload` (gathered from
/// `parts`, in order) into `out` and return their length. With `tcp_checksum` the TCP
/// checksum covers the payload where it lies; without, it is left zero for the port to fill
/// in (checksum offload), and the payload is not read at all.
pub fn emit_tcp_segment(out: &mut [u8; MAX_HEADERS_LEN], ep: &Endpoints, f: &TcpFields, ip_id: u16, payload: &[&[u8]], tcp_checksum: bool) -> usize {
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    let tcp_at = ETH_HEADER_LEN + IPV4_HEADER_LEN;
    let opt_len = f.options.emit(&mut out[tcp_at + TCP_HEADER_LEN..]);
    let tcp_len = TCP_HEADER_LEN + opt_len;
    let seg_len = tcp_len + payload_len;
    emit_ethernet(&mut out[..], ep.dst_mac, ep.src_mac, ETHERTYPE_IPV4);
    emit_ipv4(&mut out[ETH_HEADER_LEN..], ep.src_ip, ep.dst_ip, IP_PROTO_TCP, seg_len, ip_id);
    let t = &mut out[tcp_at..tcp_at + tcp_len];
    t[0..2].copy_from_slice(&ep.src_port.to_be_bytes());
    t[2..4].copy_from_slice(&ep.dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&f.seq.to_be_bytes());
    t[8..12].copy_from_slice(&f.ack.to_be_bytes());
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = f.flags;
    t[14..16].copy_from_slice(&f.window.to_be_bytes());
    t[16..20].copy_from_slice(&[0, 0, 0, 0]);
    if !tcp_checksum {
        return tcp_at + tcp_len;
    }
    let mut acc = checksum::pseudo_header(ep.src_ip, ep.dst_ip, IP_PROTO_TCP, seg_len as u16);
    acc = checksum::accumulate(acc, t);
    acc = checksum::accumulate_parts(acc, payload);
    // The checksum pass is the CPU's one read of the payload (without checksum offload).
    crate::accounting::add_touched(payload_len);
    t[16..18].copy_from_slice(&checksum::finish(acc).to_be_bytes());
    tcp_at + tcp_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, TcpPacket, TcpRepr};

    #[test]
    fn emitted_segment_parses_with_valid_checksums_and_options() {
        let ep = Endpoints {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: [10, 0, 0, 1],
            dst_ip: [10, 0, 0, 2],
            src_port: 80,
            dst_port: 40000,
        };
        let mut opts = TcpOptions { mss: Some(1460), window_scale: Some(7), sack_permitted: true, timestamp: Some((5, 6)), ..Default::default() };
        opts.sack = [(100, 200), (300, 400), (0, 0)];
        opts.sack_len = 2;
        let f = TcpFields { seq: 1000, ack: 2000, flags: flags::ACK | flags::PSH, window: 512, options: opts };
        let payload = b"hello, world!";
        let mut hdr = [0u8; MAX_HEADERS_LEN];
        let n = emit_tcp_segment(&mut hdr, &ep, &f, 7, &[&payload[..5], &payload[5..]], true);
        let mut frame = hdr[..n].to_vec();
        frame.extend_from_slice(payload);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let repr = TcpRepr::parse(
            &tcp,
            &IpAddress::v4(10, 0, 0, 1),
            &IpAddress::v4(10, 0, 0, 2),
            &smoltcp::phy::ChecksumCapabilities::default(),
        )
        .unwrap();
        assert_eq!(repr.payload, payload);
        assert_eq!(repr.max_seg_size, Some(1460));
        assert_eq!(repr.window_scale, Some(7));
        assert!(repr.sack_permitted);
        assert_eq!(repr.timestamp.map(|t| (t.tsval, t.tsecr)), Some((5, 6)));
        assert_eq!(repr.sack_ranges[0], Some((100, 200)));
        assert_eq!(repr.sack_ranges[1], Some((300, 400)));
    }
}
