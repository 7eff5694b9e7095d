//! `Range: bytes=...` (RFC 9110 section 14.2) reduced to at most one byte range, and the
//! If-Range precondition.
//!
//! Choices: we never send multipart/byteranges. A header that is not a syntactically valid
//! `bytes` range set is ignored (full 200), as RFC 9110 allows. Several ranges are served as
//! one 206 when every one of them is satisfiable and together they form one contiguous span
//! (overlapping or adjacent); any other mix of satisfiable ranges gets the full object. When
//! no range is satisfiable the answer is 416. An empty object satisfies no range.

/// How to answer a GET carrying a Range header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Ignore the header: 200 with the whole object.
    Full,
    /// 206 with bytes `start..=end_inclusive` (always `start <= end_inclusive < size`).
    Partial { start: u64, end_inclusive: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Ranges beyond this many in one header are not coalesced (the full object is sent).
const MAX_RANGES: usize = 16;

enum Spec {
    /// `a-b` or `a-` (last = None).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// 1*DIGIT; values too large for u64 saturate (they mean "beyond any object").
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (trim_ows(first), trim_ows(last));
    if first.is_empty() {
        return Some(Spec::Suffix(digits(last)?));
    }
    let first = digits(first)?;
    if last.is_empty() {
        return Some(Spec::From { first, last: None });
    }
    let last = digits(last)?;
    (first <= last).then_some(Spec::From {
        first,
        last: Some(last),
    })
}

impl Spec {
    /// The inclusive span this spec selects in an object of `size` bytes, if satisfiable.
    fn resolve(&self, size: u64) -> Option<(u64, u64)> {
        if size == 0 {
            return None;
        }
        match *self {
            Spec::From { first, last } if first < size => {
                Some((first, last.map_or(size - 1, |l| l.min(size - 1))))
            }
            Spec::From { .. } => None,
            Spec::Suffix(0) => None,
            Spec::Suffix(n) => Some((size - n.min(size), size - 1)),
        }
    }
}

/// Decides what a `Range` header value asks of an object of `size` bytes (see the module
/// comment for how several ranges are handled).
pub fn parse_range(header: &str, size: u64) -> RangeOutcome {
    let Some((unit, set)) = header.split_once('=') else {
        return RangeOutcome::Full;
    };
    if !trim_ows(unit).eq_ignore_ascii_case("bytes") {
        return RangeOutcome::Full;
    }
    let mut spans = [(0u64, 0u64); MAX_RANGES];
    let mut n_spans = 0;
    let mut n_specs = 0;
    let mut too_many = false;
    for spec in set.split(',').map(trim_ows).filter(|s| !s.is_empty()) {
        n_specs += 1;
        let Some(spec) = parse_spec(spec) else {
            return RangeOutcome::Full;
        };
        if let Some(span) = spec.resolve(size) {
            match spans.get_mut(n_spans) {
                Some(slot) => *slot = span,
                None => too_many = true,
            }
            n_spans += 1;
        }
    }
    if n_specs == 0 {
        return RangeOutcome::Full;
    }
    if n_spans == 0 {
        return RangeOutcome::Unsatisfiable;
    }
    if n_spans != n_specs || too_many {
        return RangeOutcome::Full;
    }
    let spans = &mut spans[..n_spans];
    spans.sort_unstable();
    let (start, mut end) = spans[0];
    for &(first, last) in &spans[1..] {
        if first > end.saturating_add(1) {
            return RangeOutcome::Full;
        }
        end = end.max(last);
    }
    RangeOutcome::Partial {
        start,
        end_inclusive: end,
    }
}

/// If-Range (RFC 9110 section 13.1.5): the Range applies only when the validator still
/// matches: an entity-tag that equals `etag` by strong comparison (neither weak), or a date
/// equal to the exact `last_modified` string we send.
pub fn if_range_matches(if_range: &str, etag: &str, last_modified: &str) -> bool {
    let value = trim_ows(if_range);
    if value.starts_with('"') || value.starts_with("W/") {
        !value.starts_with("W/") && !etag.starts_with("W/") && value == etag
    } else {
        value == last_modified
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeOutcome::*;

    fn part(start: u64, end_inclusive: u64) -> RangeOutcome {
        Partial {
            start,
            end_inclusive,
        }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), part(0, 99));
        assert_eq!(parse_range("bytes=10-", 1000), part(10, 999));
        assert_eq!(parse_range("bytes=-100", 1000), part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), part(0, 999));
        assert_eq!(parse_range("bytes=500-5000", 1000), part(500, 999));
        assert_eq!(parse_range("bytes=999-999", 1000), part(999, 999));
        assert_eq!(parse_range("bytes=0-0", 1), part(0, 0));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 10),
            part(0, 9)
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", 10),
            part(0, 9)
        );
    }

    #[test]
    fn whitespace_and_case() {
        assert_eq!(parse_range(" BYTES = 1-2 ", 10), part(1, 2));
        assert_eq!(parse_range("Bytes=\t1 - 2,", 10), part(1, 2));
        assert_eq!(parse_range("bytes=, ,3-4", 10), part(3, 4));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=1000-2000", 1000), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 1000),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=2000-, -0", 1000), Unsatisfiable);
    }

    #[test]
    fn invalid_or_unknown_is_full() {
        for header in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=-",
            "bytes=",
            "bytes= , ",
            "bytes 0-1",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=1",
            "items=0-1",
            "bytes=0-1, 5-1",
            "bytes=0-1, x",
            "",
            "=",
        ] {
            assert_eq!(parse_range(header, 1000), Full, "{header:?}");
        }
        // Syntax is judged before size: an invalid header on an empty object is still Full.
        assert_eq!(parse_range("bytes=5-1", 0), Full);
    }

    #[test]
    fn multiple_ranges_coalesce_or_fall_back_to_full() {
        assert_eq!(parse_range("bytes=0-9,10-19", 100), part(0, 19));
        assert_eq!(parse_range("bytes=10-19, 0-9", 100), part(0, 19));
        assert_eq!(parse_range("bytes=0-50,20-30,40-", 100), part(0, 99));
        assert_eq!(parse_range("bytes=-10,80-89", 100), part(80, 99));
        assert_eq!(parse_range("bytes=0-9,11-19", 100), Full);
        assert_eq!(parse_range("bytes=0-9,200-300", 100), Full);
        assert_eq!(parse_range("bytes=200-300,300-", 100), Unsatisfiable);
        let many = ["0-1"; MAX_RANGES + 1].join(",");
        assert_eq!(parse_range(&format!("bytes={many}"), 100), Full);
        let max = ["0-1"; MAX_RANGES].join(",");
        assert_eq!(parse_range(&format!("bytes={max}"), 100), part(0, 1));
    }

    #[test]
    fn if_range() {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(if_range_matches("\"abc\"", "\"abc\"", lm));
        assert!(if_range_matches(" \"abc\" ", "\"abc\"", lm));
        assert!(!if_range_matches("\"abd\"", "\"abc\"", lm));
        assert!(!if_range_matches("W/\"abc\"", "\"abc\"", lm));
        assert!(!if_range_matches("W/\"abc\"", "W/\"abc\"", lm));
        assert!(if_range_matches(lm, "\"abc\"", lm));
        assert!(!if_range_matches(
            "Sun, 06 Nov 1994 08:49:38 GMT",
            "\"abc\"",
            lm
        ));
        assert!(!if_range_matches("", "\"abc\"", lm));
    }

    fn spec_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..2000, 0u64..2000).prop_map(|(a, b)| format!("{a}-{b}")),
            (0u64..2000).prop_map(|a| format!("{a}-")),
            (0u64..2000).prop_map(|n| format!("-{n}")),
        ]
    }

    proptest! {
        #[test]
        fn partial_is_always_inside_the_object(
            specs in prop::collection::vec(spec_strategy(), 1..4),
            size in 0u64..1500,
        ) {
            let header = format!("bytes={}", specs.join(","));
            if let Partial { start, end_inclusive } = parse_range(&header, size) {
                prop_assert!(start <= end_inclusive);
                prop_assert!(end_inclusive < size);
            }
        }

        #[test]
        fn single_range_arithmetic(a in 0u64..2000, b in 0u64..2000, size in 0u64..1500) {
            let got = parse_range(&format!("bytes={a}-{b}"), size);
            let want = if a > b {
                Full
            } else if a >= size {
                Unsatisfiable
            } else {
                part(a, b.min(size - 1))
            };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn open_ended_and_suffix_arithmetic(a in 0u64..2000, size in 0u64..1500) {
            let open = parse_range(&format!("bytes={a}-"), size);
            prop_assert_eq!(open, if a >= size { Unsatisfiable } else { part(a, size - 1) });
            let suffix = parse_range(&format!("bytes=-{a}"), size);
            let want = if a == 0 || size == 0 { Unsatisfiable } else { part(size - a.min(size), size - 1) };
            prop_assert_eq!(suffix, want);
        }

        /// Several ranges against a byte-set model: the union of the selected bytes, served
        /// as one 206 only if every spec selects something and the union has no gap.
        #[test]
        fn multiple_ranges_match_a_byte_set_model(
            specs in prop::collection::vec(prop_oneof![
                (0u64..320, 0u64..320).prop_map(|(a, b)| (Some(a), Some(b))),
                (0u64..320).prop_map(|a| (Some(a), None)),
                (0u64..320).prop_map(|n| (None, Some(n))),
            ], 1..20),
            size in 0u64..300,
        ) {
            let text: Vec<String> = specs.iter().map(|s| match *s {
                (Some(a), Some(b)) => format!("{a}-{b}"),
                (Some(a), None) => format!("{a}-"),
                (None, Some(n)) => format!("-{n}"),
                (None, None) => unreachable!(),
            }).collect();
            let got = parse_range(&format!("bytes={}", text.join(" , ")), size);
            let mut union = vec![false; size as usize];
            let mut empty_specs = 0;
            let mut invalid = false;
            for s in &specs {
                let bytes: Vec<u64> = match *s {
                    (Some(a), Some(b)) if a > b => { invalid = true; vec![] }
                    (Some(a), Some(b)) => (a..=b).filter(|&i| i < size).collect(),
                    (Some(a), None) => (a..size).collect(),
                    (None, Some(n)) => (size.saturating_sub(n)..size).collect(),
                    (None, None) => unreachable!(),
                };
                empty_specs += usize::from(bytes.is_empty());
                for i in bytes {
                    union[i as usize] = true;
                }
            }
            let set: Vec<u64> = (0..size).filter(|&i| union[i as usize]).collect();
            let want = if invalid {
                Full
            } else if set.is_empty() {
                Unsatisfiable
            } else if empty_specs > 0 || specs.len() > MAX_RANGES {
                Full
            } else if set.last().unwrap() - set[0] + 1 == set.len() as u64 {
                part(set[0], *set.last().unwrap())
            } else {
                Full
            };
            prop_assert_eq!(got, want, "{:?} of {}", text, size);
        }

        #[test]
        fn never_panics(header in "\\PC{0,40}", size in any::<u64>()) {
            if let Partial { start, end_inclusive } = parse_range(&header, size) {
                prop_assert!(start <= end_inclusive && end_inclusive < size);
            }
        }
    }
}
