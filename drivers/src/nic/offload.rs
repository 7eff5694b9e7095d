//! TCP transmit offloads: what a port may do for the stack (checksum, segmentation) and the
//! software version of both, which ports without them use and which defines what the
//! hardware must produce.
//!
//! A frame handed to [`super::Nic::tx_tcp`] is one Ethernet + IPv4 + TCP header (options
//! included; the IPv4 header checksummed, the TCP checksum zero) and a payload of any length
//! up to [`TxOffloads::tso_max_payload`]. Cut into segments of `mss` payload bytes, each
//! segment gets the header with the IPv4 total length, identification (+1 per segment) and
//! checksum, the TCP sequence number advanced by the bytes before it, FIN and PSH on the last
//! segment only, CWR on the first only, and its own TCP checksum, as Linux's GSO and NICs'
//! TSO do.
use super::checksum;

/// Work a port does on TCP/IPv4 frames given to [`super::Nic::tx_tcp`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffloads {
    /// The port computes the TCP checksum (the stack leaves it zero).
    pub tcp_checksum: bool,
    /// Largest payload of one frame the port cuts into segments itself; 0: none (the stack
    /// sends one segment a frame).
    pub tso_max_payload: usize,
}

/// The shape of a frame given to [`super::Nic::tx_tcp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTx {
    /// Ethernet + IPv4 header bytes: the TCP header starts here.
    pub l4_offset: usize,
    /// TCP header bytes, options included.
    pub l4_len: usize,
    /// Payload bytes per segment on the wire.
    pub mss: usize,
}

/// Largest payload of one TCP/IPv4 frame: the IPv4 total length (65535) less the largest
/// IPv4 and TCP headers.
pub const MAX_TSO_PAYLOAD: usize = 65535 - 60 - 60;

/// Largest segment [`segment`] builds (a 9000-byte MTU with room for headers).
pub const MAX_SEGMENT_FRAME: usize = 9216;

const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;

/// Cut the TCP frame `parts` (headers in `parts[0]`, payload in the rest) into segments of
/// `tcp.mss` payload bytes with their checksums, handing each whole frame to `emit`. Stops at
/// the first segment `emit` refuses and returns false then (also for a malformed frame, which
/// is not sent at all).
pub fn segment(parts: &[&[u8]], tcp: TcpTx, mut emit: impl FnMut(&[u8]) -> bool) -> bool {
    let Some((&hdr, payload)) = parts.split_first() else { return false };
    let hlen = tcp.l4_offset + tcp.l4_len;
    let ip_at = 14;
    if hdr.len() != hlen || tcp.l4_offset < ip_at + 20 || tcp.l4_len < 20 || tcp.mss == 0 || hlen + tcp.mss > MAX_SEGMENT_FRAME {
        return false;
    }
    let total: usize = payload.iter().map(|p| p.len()).sum();
    let mut frame = [0u8; MAX_SEGMENT_FRAME];
    frame[..hlen].copy_from_slice(hdr);
    let seq0 = u32::from_be_bytes([hdr[tcp.l4_offset + 4], hdr[tcp.l4_offset + 5], hdr[tcp.l4_offset + 6], hdr[tcp.l4_offset + 7]]);
    let id0 = u16::from_be_bytes([hdr[ip_at + 4], hdr[ip_at + 5]]);
    let flags0 = hdr[tcp.l4_offset + 13];
    let (src, dst) = (&hdr[ip_at + 12..ip_at + 16], &hdr[ip_at + 16..ip_at + 20]);
    let (src, dst): ([u8; 4], [u8; 4]) = (src.try_into().expect("4 bytes"), dst.try_into().expect("4 bytes"));
    // Walk the payload parts once, segment by segment.
    let (mut part, mut within) = (0usize, 0usize);
    let mut sent = 0usize;
    let mut index: u16 = 0;
    loop {
        let len = tcp.mss.min(total - sent);
        let mut filled = 0;
        while filled < len {
            let p = payload[part];
            let take = (p.len() - within).min(len - filled);
            frame[hlen + filled..hlen + filled + take].copy_from_slice(&p[within..within + take]);
            filled += take;
            within += take;
            if within == p.len() {
                part += 1;
                within = 0;
            }
        }
        let last = sent + len == total;
        let ip_len = (tcp.l4_offset - ip_at + tcp.l4_len + len) as u16;
        frame[ip_at + 2..ip_at + 4].copy_from_slice(&ip_len.to_be_bytes());
        frame[ip_at + 4..ip_at + 6].copy_from_slice(&id0.wrapping_add(index).to_be_bytes());
        frame[ip_at + 10..ip_at + 12].copy_from_slice(&[0, 0]);
        let ip_sum = checksum::finish(checksum::accumulate(0, &frame[ip_at..tcp.l4_offset]));
        frame[ip_at + 10..ip_at + 12].copy_from_slice(&ip_sum.to_be_bytes());
        let t = tcp.l4_offset;
        frame[t + 4..t + 8].copy_from_slice(&seq0.wrapping_add(sent as u32).to_be_bytes());
        let mut fl = flags0;
        if !last {
            fl &= !(FIN | PSH);
        }
        if index > 0 {
            fl &= !CWR;
        }
        frame[t + 13] = fl;
        frame[t + 16..t + 18].copy_from_slice(&[0, 0]);
        let seg_len = tcp.l4_len + len;
        let acc = checksum::pseudo_header(src, dst, 6, seg_len as u16);
        let sum = checksum::finish(checksum::accumulate(acc, &frame[t..t + seg_len]));
        frame[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
        if !emit(&frame[..hlen + len]) {
            return false;
        }
        sent += len;
        index = index.wrapping_add(1);
        if sent == total {
            return true;
        }
    }
}

/// Fill in the TCP checksum of a whole TCP/IPv4 frame in place (what a port with checksum
/// offload does to a frame it sends unsegmented). False for a frame too short for `tcp`.
pub fn fill_tcp_checksum(frame: &mut [u8], tcp: TcpTx) -> bool {
    let t = tcp.l4_offset;
    if frame.len() < t + tcp.l4_len || t < 34 {
        return false;
    }
    let src: [u8; 4] = frame[26..30].try_into().expect("4 bytes");
    let dst: [u8; 4] = frame[30..34].try_into().expect("4 bytes");
    let seg_len = frame.len() - t;
    frame[t + 16..t + 18].copy_from_slice(&[0, 0]);
    let acc = checksum::pseudo_header(src, dst, 6, seg_len as u16);
    let sum = checksum::finish(checksum::accumulate(acc, &frame[t..]));
    frame[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 frame header: 20-byte IPv4 header (checksummed), TCP with 12 option bytes.
    fn header(seq: u32, flags: u8, payload_len: usize) -> Vec<u8> {
        let mut h = vec![0u8; 14 + 20 + 32];
        h[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut h[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + 32 + payload_len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let sum = checksum::finish(checksum::accumulate(0, ip));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let t = &mut h[34..];
        t[0..2].copy_from_slice(&80u16.to_be_bytes());
        t[2..4].copy_from_slice(&40000u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        h
    }

    fn verify(frame: &[u8]) -> (u32, u8, u16, Vec<u8>) {
        let ip = &frame[14..34];
        assert_eq!(checksum::finish(checksum::accumulate(0, ip)), 0, "IPv4 checksum");
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        assert_eq!(total, frame.len() - 14, "IPv4 total length");
        let t = &frame[34..];
        let acc = checksum::pseudo_header([10, 0, 0, 1], [10, 0, 0, 2], 6, t.len() as u16);
        assert_eq!(checksum::finish(checksum::accumulate(acc, t)), 0, "TCP checksum");
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        (seq, t[13], u16::from_be_bytes([ip[4], ip[5]]), t[32..].to_vec())
    }

    proptest::proptest! {
        /// Segments carry the payload in order, each at most `mss`, with valid checksums, seq
        /// advancing by the bytes before it, FIN/PSH only last, CWR only first, ids counting.
        #[test]
        fn segments_reassemble_to_the_payload(payload in proptest::collection::vec(proptest::num::u8::ANY, 1..20_000),
                                              cuts in proptest::collection::vec(0usize..20_000, 0..6),
                                              mss in 1usize..3000, seq in proptest::num::u32::ANY) {
            let tcp = TcpTx { l4_offset: 34, l4_len: 32, mss };
            let hdr = header(seq, 0x80 | 0x10 | 0x08 | 0x01, payload.len());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % payload.len()).collect();
            cuts.sort_unstable();
            let mut parts: Vec<&[u8]> = vec![&hdr];
            let mut at = 0;
            for c in cuts {
                parts.push(&payload[at..c]);
                at = c;
            }
            parts.push(&payload[at..]);
            let mut frames = Vec::new();
            let all_sent = segment(&parts, tcp, |f| {
                frames.push(f.to_vec());
                true
            });
            proptest::prop_assert!(all_sent);
            proptest::prop_assert_eq!(frames.len(), payload.len().div_ceil(mss));
            let mut got = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let (s, fl, id, data) = verify(f);
                proptest::prop_assert_eq!(s, seq.wrapping_add(got.len() as u32));
                proptest::prop_assert!(data.len() <= mss && !data.is_empty());
                let last = i + 1 == frames.len();
                proptest::prop_assert_eq!(fl & 0x09 != 0, last, "FIN/PSH on the last only");
                proptest::prop_assert_eq!(fl & 0x80 != 0, i == 0, "CWR on the first only");
                proptest::prop_assert_eq!(fl & 0x10, 0x10);
                proptest::prop_assert_eq!(id, 0xfffeu16.wrapping_add(i as u16));
                got.extend_from_slice(&data);
            }
            proptest::prop_assert_eq!(got, payload);
        }
    }

    #[test]
    fn a_refused_segment_stops_the_rest_and_bad_shapes_send_nothing() {
        let payload = vec![9u8; 5000];
        let hdr = header(1, 0x18, payload.len());
        let tcp = TcpTx { l4_offset: 34, l4_len: 32, mss: 1000 };
        let mut n = 0;
        assert!(!segment(&[&hdr, &payload], tcp, |_| {
            n += 1;
            n < 3
        }));
        assert_eq!(n, 3);
        let mut sent = 0;
        for bad in [TcpTx { l4_len: 20, ..tcp }, TcpTx { mss: 0, ..tcp }, TcpTx { mss: MAX_SEGMENT_FRAME, ..tcp }, TcpTx { l4_offset: 20, ..tcp }] {
            assert!(!segment(&[&hdr, &payload], bad, |_| {
                sent += 1;
                true
            }));
        }
        assert!(!segment(&[], tcp, |_| true));
        assert_eq!(sent, 0);
    }

    #[test]
    fn filled_checksum_verifies() {
        let payload = [1u8, 2, 3, 4, 5];
        let mut f = header(7, 0x18, payload.len());
        f.extend_from_slice(&payload);
        assert!(fill_tcp_checksum(&mut f, TcpTx { l4_offset: 34, l4_len: 32, mss: 1460 }));
        verify(&f);
    }
}
