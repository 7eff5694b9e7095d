//! The Internet checksum (RFC 1071) over several slices, for headers emitted here and
//! payloads gathered from storage buffers.

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
