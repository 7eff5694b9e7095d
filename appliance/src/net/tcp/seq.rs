//! Sequence-number arithmetic modulo 2^32 (RFC 793 / RFC 1982 style comparisons).

/// `a < b` in sequence space.
#[inline]
pub fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
pub fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

#[inline]
pub fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}

#[inline]
pub fn ge(a: u32, b: u32) -> bool {
    le(b, a)
}

/// Signed distance from `b` to `a`.
#[inline]
pub fn diff(a: u32, b: u32) -> i64 {
    a.wrapping_sub(b) as i32 as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ordering_is_consistent_across_wrap(a: u32, d in 1u32..(1 << 31)) {
            let b = a.wrapping_add(d);
            prop_assert!(lt(a, b));
            prop_assert!(gt(b, a));
            prop_assert!(le(a, a) && ge(a, a));
            prop_assert!(!lt(b, a));
            prop_assert_eq!(diff(b, a), d as i64);
            prop_assert_eq!(diff(a, b), -(d as i64));
        }

        /// Exactly one of <, =, > holds (except at the ambiguous distance 2^31), and the
        /// operators agree with each other and with `diff`.
        #[test]
        fn trichotomy_and_agreement(a: u32, b: u32) {
            let d = b.wrapping_sub(a);
            if d != 1 << 31 {
                let n = [lt(a, b), a == b, gt(a, b)].iter().filter(|&&x| x).count();
                prop_assert_eq!(n, 1);
                prop_assert_eq!(lt(a, b), gt(b, a));
            }
            prop_assert_eq!(le(a, b), lt(a, b) || a == b);
            prop_assert_eq!(ge(a, b), gt(a, b) || a == b);
            prop_assert_eq!(lt(a, b), diff(a, b) < 0);
            prop_assert_eq!(le(a, b), diff(a, b) <= 0);
            prop_assert_eq!(a.wrapping_add(diff(b, a) as u32), b);
        }

        /// Stream offsets less than 2^31 apart compare in sequence space as they do as
        /// integers, wherever the initial sequence number puts them (wrap included).
        #[test]
        fn offsets_compare_like_integers_across_wrap(iss: u32, x in 0u64..(1 << 40), dx in 0u64..(1 << 31)) {
            let y = x + dx;
            let (sx, sy) = (iss.wrapping_add(x as u32), iss.wrapping_add(y as u32));
            prop_assert_eq!(lt(sx, sy), x < y);
            prop_assert_eq!(le(sx, sy), x <= y);
            prop_assert_eq!(gt(sy, sx), y > x);
            prop_assert_eq!(diff(sy, sx), dx as i64);
            // Transitivity within a window.
            let z = sy.wrapping_add(1);
            if dx < (1 << 31) - 1 {
                prop_assert!(le(sx, sy) && lt(sy, z) && lt(sx, z));
            }
        }
    }
}
