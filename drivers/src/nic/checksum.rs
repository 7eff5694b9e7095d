//! The Internet checksum (RFC 1071) over several slices, for headers emitted here and
//! payloads gathered from storage buffers.

use super::{RxChecksums, RxVerdict};

/// Add `data` to a running one's-complement sum. Every slice but the last must have even
/// length for the sum to be the checksum of their concatenation.
#[inline]
pub fn accumulate(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the two 32-bit halves; a u64 accumulator cannot overflow for any packet size.
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = rest.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

/// Fold a running sum into the 16-bit one's-complement checksum field value.
#[inline]
pub fn finish(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Add the concatenation of `parts` to a running sum; parts may have any length (a part
/// that starts at an odd offset has its bytes' roles swapped, which byte-swapping its
/// folded sum undoes: RFC 1071's byte-order independence).
#[inline]
pub fn accumulate_parts(mut acc: u64, parts: &[&[u8]]) -> u64 {
    let mut odd = false;
    for p in parts {
        if p.is_empty() {
            continue;
        }
        let folded = fold(accumulate(0, p));
        acc += if odd { folded.swap_bytes() } else { folded } as u64;
        odd ^= p.len() % 2 == 1;
    }
    acc
}

/// Fold a running sum to 16 bits with end-around carry (not complemented).
#[inline]
fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The running sum of the IPv4 pseudo-header for TCP/UDP.
#[inline]
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u64 {
    let mut acc = accumulate(0, &src);
    acc = accumulate(acc, &dst);
    acc + protocol as u64 + len as u64
}

/// What a port with receive checksum offload finds of an Ethernet frame: the IPv4 header
/// checksum, and the TCP checksum of an unfragmented TCP packet. What it cannot judge
/// (another ethertype or protocol, a fragment, lengths that do not add up) stays
/// [`RxVerdict::Unchecked`], for the stack to look at and refuse.
pub fn verify_ipv4_tcp(frame: &[u8]) -> RxChecksums {
    const ETH_HLEN: usize = 14;
    let mut out = RxChecksums::UNCHECKED;
    let Some(ip) = frame.get(ETH_HLEN..) else { return out };
    if frame[12..14] != [0x08, 0x00] || ip.len() < 20 || ip[0] >> 4 != 4 {
        return out;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return out;
    }
    out.ipv4 = verdict(finish(accumulate(0, &ip[..ihl])) == 0);
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[9] != 6 || fragment || out.ipv4 == RxVerdict::Bad {
        return out;
    }
    let tcp = &ip[ihl..total];
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    out.l4 = verdict(finish(accumulate(pseudo_header(src, dst, 6, tcp.len() as u16), tcp)) == 0);
    out
}

fn verdict(good: bool) -> RxVerdict {
    if good {
        RxVerdict::Good
    } else {
        RxVerdict::Bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { (c[0] as u16) << 8 };
            sum += w as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An Ethernet + IPv4 + TCP frame with both checksums computed by [`reference`].
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 2]);
        f[30..34].copy_from_slice(&[10, 0, 0, 1]);
        let ip_sum = reference(&f[14..34]);
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&443u16.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = 0x10;
        f.extend_from_slice(payload);
        let mut pseudo = vec![10, 0, 0, 2, 10, 0, 0, 1, 0, 6];
        pseudo.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        pseudo.extend_from_slice(&f[34..]);
        let tcp_sum = reference(&pseudo);
        f[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
        f
    }

    #[test]
    fn receive_offload_verdicts() {
        let good = RxChecksums { ipv4: RxVerdict::Good, l4: RxVerdict::Good };
        for len in [0usize, 1, 7, 1460] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let f = tcp_frame(&payload);
            assert_eq!(verify_ipv4_tcp(&f), good, "{len} payload bytes");
            // Trailing Ethernet padding is not part of the packet.
            let mut padded = f.clone();
            padded.extend_from_slice(&[0xee; 6]);
            assert_eq!(verify_ipv4_tcp(&padded), good);
            if len > 0 {
                let mut bad = f.clone();
                *bad.last_mut().unwrap() ^= 0x40;
                assert_eq!(verify_ipv4_tcp(&bad), RxChecksums { ipv4: RxVerdict::Good, l4: RxVerdict::Bad });
            }
        }
        let f = tcp_frame(b"data");
        let mut bad_ip = f.clone();
        bad_ip[22] ^= 1; // TTL
        assert_eq!(verify_ipv4_tcp(&bad_ip), RxChecksums { ipv4: RxVerdict::Bad, l4: RxVerdict::Unchecked });
        // What a port cannot judge is left to the stack.
        let mut udp = f.clone();
        udp[23] = 17;
        udp[24..26].copy_from_slice(&[0, 0]);
        let sum = reference(&udp[14..34]);
        udp[24..26].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(verify_ipv4_tcp(&udp), RxChecksums { ipv4: RxVerdict::Good, l4: RxVerdict::Unchecked });
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(verify_ipv4_tcp(&arp), RxChecksums::UNCHECKED);
        let mut long = f.clone();
        long[16..18].copy_from_slice(&1500u16.to_be_bytes());
        assert_eq!(verify_ipv4_tcp(&long), RxChecksums::UNCHECKED);
        for cut in [0, 13, 20, 33] {
            assert_eq!(verify_ipv4_tcp(&f[..cut]), RxChecksums::UNCHECKED, "cut at {cut}");
        }
    }

    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(accumulate(0, &data)), !0xddf2);
    }

    proptest::proptest! {
        #[test]
        fn parts_of_any_length_sum_like_their_concatenation(data: Vec<u8>, cuts: Vec<usize>) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts {
                parts.push(&data[at..c]);
                at = c;
            }
            parts.push(&data[at..]);
            proptest::prop_assert_eq!(finish(accumulate_parts(0, &parts)), reference(&data));
        }

        #[test]
        fn matches_reference_split_anywhere_even(data: Vec<u8>, split in 0usize..64) {
            let split = (split * 2).min(data.len() & !1);
            let acc = accumulate(accumulate(0, &data[..split]), &data[split..]);
            proptest::prop_assert_eq!(finish(acc), reference(&data));
        }
    }
}
