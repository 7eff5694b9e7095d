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
    }
}
