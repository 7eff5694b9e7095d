//! Record boundaries as a pure function of the stream. A response is an optional head record
//! (the HTTP head, from memory) followed by body records that cover the object's plaintext in
//! pieces of up to 16 KiB aligned to 16 KiB object offsets (the first and last shorter).
//! Record `i` of a response has sequence number `seq_base + i`, where `seq_base` is the
//! connection's record count before the response. With that, any ciphertext byte can be
//! rebuilt from (layout, offset) alone: a retransmission re-reads and re-seals the same record.
use std::ops::Range;

/// Object-offset alignment and largest plaintext of a body record.
pub const RECORD_PLAINTEXT: u64 = 16384;

/// Per-record bytes on the wire around the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFormat {
    /// Record header, plus the explicit nonce in TLS 1.2 GCM.
    pub header_len: u32,
    /// Inner content-type byte after the plaintext (TLS 1.3).
    pub inner_type_len: u32,
    pub tag_len: u32,
}

impl RecordFormat {
    pub const TLS13: RecordFormat = RecordFormat {
        header_len: 5,
        inner_type_len: 1,
        tag_len: 16,
    };
    pub const TLS12_GCM: RecordFormat = RecordFormat {
        header_len: 13,
        inner_type_len: 0,
        tag_len: 16,
    };

    pub fn for_version(version: super::TlsVersion) -> RecordFormat {
        match version {
            super::TlsVersion::Tls13 => RecordFormat::TLS13,
            super::TlsVersion::Tls12 => RecordFormat::TLS12_GCM,
        }
    }

    /// Wire bytes a record adds to its plaintext.
    pub const fn overhead(&self) -> u64 {
        (self.header_len + self.inner_type_len + self.tag_len) as u64
    }
}

/// Where a record's plaintext comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordSource {
    /// Bytes `start..end` of the response head held in memory.
    Head { start: u32, end: u32 },
    /// Object bytes `object_start..object_end` (read from storage).
    Body { object_start: u64, object_end: u64 },
}

impl RecordSource {
    pub fn len(&self) -> u64 {
        match *self {
            RecordSource::Head { start, end } => u64::from(end - start),
            RecordSource::Body {
                object_start,
                object_end,
            } => object_end - object_start,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A byte's place inside its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordPart {
    /// Byte of the header (TLS 1.2: header then explicit nonce).
    Header(u32),
    /// Byte of the (encrypted) plaintext.
    Payload(u32),
    /// The encrypted inner content type (TLS 1.3).
    InnerType,
    Tag(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("response head of {0} bytes does not fit one record")]
    HeadTooLong(usize),
    #[error("object range overflows")]
    Overflow,
}

/// The records of one response on one connection. Wire offsets are relative to the
/// response's first ciphertext byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLayout {
    format: RecordFormat,
    head_len: u32,
    object_offset: u64,
    body_len: u64,
    seq_base: u64,
}

impl ResponseLayout {
    /// `head_len` bytes of head (0 for none, at most 16 KiB) then `body_len` object bytes
    /// from `object_offset`; the first record gets sequence number `seq_base`.
    pub fn new(
        format: RecordFormat,
        head_len: usize,
        object_offset: u64,
        body_len: u64,
        seq_base: u64,
    ) -> Result<ResponseLayout, LayoutError> {
        if head_len as u64 > RECORD_PLAINTEXT {
            return Err(LayoutError::HeadTooLong(head_len));
        }
        object_offset
            .checked_add(body_len)
            .ok_or(LayoutError::Overflow)?;
        Ok(ResponseLayout {
            format,
            head_len: head_len as u32,
            object_offset,
            body_len,
            seq_base,
        })
    }

    pub fn format(&self) -> RecordFormat {
        self.format
    }

    fn head_records(&self) -> u64 {
        u64::from(self.head_len > 0)
    }

    fn head_wire(&self) -> u64 {
        if self.head_len > 0 {
            u64::from(self.head_len) + self.format.overhead()
        } else {
            0
        }
    }

    fn body_records(&self) -> u64 {
        if self.body_len == 0 {
            return 0;
        }
        let first = self.object_offset / RECORD_PLAINTEXT;
        let last = (self.object_offset + self.body_len - 1) / RECORD_PLAINTEXT;
        last - first + 1
    }

    /// Plaintext length of the first body record (the one up to the first 16 KiB boundary).
    fn first_body_len(&self) -> u64 {
        let to_boundary = RECORD_PLAINTEXT - self.object_offset % RECORD_PLAINTEXT;
        to_boundary.min(self.body_len)
    }

    pub fn record_count(&self) -> u64 {
        self.head_records() + self.body_records()
    }

    /// Sequence number of record `record`.
    pub fn seq(&self, record: u64) -> u64 {
        self.seq_base + record
    }

    /// `seq_base` of the next response on the same connection.
    pub fn next_seq_base(&self) -> u64 {
        self.seq_base + self.record_count()
    }

    /// Total ciphertext bytes of the response.
    pub fn wire_len(&self) -> u64 {
        self.head_len as u64 + self.body_len + self.record_count() * self.format.overhead()
    }

    /// Plaintext source of record `record` (< record_count).
    pub fn record_source(&self, record: u64) -> RecordSource {
        debug_assert!(record < self.record_count());
        if record < self.head_records() {
            return RecordSource::Head {
                start: 0,
                end: self.head_len,
            };
        }
        let j = record - self.head_records();
        let block = self.object_offset / RECORD_PLAINTEXT + j;
        let object_start = (block * RECORD_PLAINTEXT).max(self.object_offset);
        let object_end = ((block + 1) * RECORD_PLAINTEXT).min(self.object_offset + self.body_len);
        RecordSource::Body {
            object_start,
            object_end,
        }
    }

    /// Ciphertext range of record `record` within the response.
    pub fn record_wire_range(&self, record: u64) -> Range<u64> {
        let ovh = self.format.overhead();
        let start = if record < self.head_records() {
            0
        } else {
            let j = record - self.head_records();
            let first_wire = self.first_body_len() + ovh;
            self.head_wire()
                + if j == 0 {
                    0
                } else {
                    first_wire + (j - 1) * (RECORD_PLAINTEXT + ovh)
                }
        };
        start..start + self.record_source(record).len() + ovh
    }

    /// The record holding ciphertext byte `wire_offset`, and the byte's place in it;
    /// None past the end.
    pub fn locate(&self, wire_offset: u64) -> Option<(u64, RecordPart)> {
        if wire_offset >= self.wire_len() {
            return None;
        }
        let record = if wire_offset < self.head_wire() {
            0
        } else {
            let b = wire_offset - self.head_wire();
            let first_wire = self.first_body_len() + self.format.overhead();
            let j = if b < first_wire {
                0
            } else {
                1 + (b - first_wire) / (RECORD_PLAINTEXT + self.format.overhead())
            };
            self.head_records() + j
        };
        let pos = wire_offset - self.record_wire_range(record).start;
        let f = self.format;
        let plain = self.record_source(record).len();
        let header = u64::from(f.header_len);
        let part = if pos < header {
            RecordPart::Header(pos as u32)
        } else if pos < header + plain {
            RecordPart::Payload((pos - header) as u32)
        } else if pos < header + plain + u64::from(f.inner_type_len) {
            RecordPart::InnerType
        } else {
            RecordPart::Tag((pos - header - plain - u64::from(f.inner_type_len)) as u32)
        };
        Some((record, part))
    }

    /// Records that overlap the ciphertext range `wire` (clamped to the response).
    pub fn records_overlapping(&self, wire: Range<u64>) -> Range<u64> {
        let end = wire.end.min(self.wire_len());
        if wire.start >= end {
            return 0..0;
        }
        let first = self.locate(wire.start).map_or(0, |(r, _)| r);
        let last = self.locate(end - 1).map_or(0, |(r, _)| r);
        first..last + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part_offset(f: RecordFormat, plain: u64, part: RecordPart) -> u64 {
        match part {
            RecordPart::Header(k) => u64::from(k),
            RecordPart::Payload(k) => u64::from(f.header_len) + u64::from(k),
            RecordPart::InnerType => u64::from(f.header_len) + plain,
            RecordPart::Tag(k) => {
                u64::from(f.header_len) + plain + u64::from(f.inner_type_len) + u64::from(k)
            }
        }
    }

    fn check_structure(l: &ResponseLayout, head_len: u64, offset: u64, body: u64) {
        let f = l.format();
        let mut wire = 0;
        let mut plain_total = 0;
        let mut next_object = offset;
        for r in 0..l.record_count() {
            let range = l.record_wire_range(r);
            assert_eq!(range.start, wire, "records are contiguous");
            let src = l.record_source(r);
            assert!(!src.is_empty() && src.len() <= RECORD_PLAINTEXT);
            assert_eq!(range.end - range.start, src.len() + f.overhead());
            match src {
                RecordSource::Head { start, end } => {
                    assert_eq!(r, 0);
                    assert_eq!((start as u64, end as u64), (0, head_len));
                }
                RecordSource::Body {
                    object_start,
                    object_end,
                } => {
                    assert_eq!(
                        object_start, next_object,
                        "body is contiguous in the object"
                    );
                    if object_start != offset {
                        assert_eq!(object_start % RECORD_PLAINTEXT, 0, "aligned to 16 KiB");
                    }
                    assert!(object_end == offset + body || object_end % RECORD_PLAINTEXT == 0);
                    next_object = object_end;
                }
            }
            plain_total += src.len();
            wire = range.end;
        }
        assert_eq!(next_object, offset + body);
        assert_eq!(plain_total, head_len + body);
        assert_eq!(wire, l.wire_len());
        assert_eq!(
            l.wire_len(),
            head_len + body + l.record_count() * f.overhead()
        );
        assert_eq!(l.locate(l.wire_len()), None);
    }

    fn check_locate(l: &ResponseLayout, off: u64) {
        let (r, part) = l.locate(off).expect("inside");
        let plain = l.record_source(r).len();
        assert_eq!(
            l.record_wire_range(r).start + part_offset(l.format(), plain, part),
            off
        );
    }

    fn format() -> impl Strategy<Value = RecordFormat> {
        prop_oneof![Just(RecordFormat::TLS13), Just(RecordFormat::TLS12_GCM)]
    }

    proptest! {
        #[test]
        fn every_byte_maps_once_small(f in format(), head in prop_oneof![Just(0usize), 1usize..=16384],
                                      offset in 0u64..100_000, body in 0u64..70_000, seq in 0u64..1000) {
            let l = ResponseLayout::new(f, head, offset, body, seq).unwrap();
            check_structure(&l, head as u64, offset, body);
            // Bijection: walking every byte visits each (record, part) in order, once.
            let mut prev: Option<(u64, RecordPart)> = None;
            for off in 0..l.wire_len() {
                check_locate(&l, off);
                let cur = l.locate(off).unwrap();
                prop_assert_ne!(Some(cur), prev);
                prev = Some(cur);
            }
            prop_assert_eq!(l.next_seq_base(), seq + l.record_count());
        }

        #[test]
        fn large_ranges_add_up(f in format(), head in 0usize..=16384, offset in 0u64..(1 << 40),
                               body in 0u64..(1 << 30), probes in proptest::collection::vec(any::<u64>(), 64)) {
            let l = ResponseLayout::new(f, head, offset, body, 0).unwrap();
            prop_assert_eq!(l.wire_len(), head as u64 + body + l.record_count() * f.overhead());
            if l.wire_len() > 0 {
                for p in probes {
                    let off = p % l.wire_len();
                    check_locate(&l, off);
                    let (r, _) = l.locate(off).unwrap();
                    prop_assert!(l.record_wire_range(r).contains(&off));
                    prop_assert_eq!(l.records_overlapping(off..off + 1), r..r + 1);
                }
                let last = l.record_count() - 1;
                prop_assert_eq!(l.record_wire_range(last).end, l.wire_len());
            }
        }
    }

    proptest! {
        /// Any ciphertext range (a retransmission of any part of the stream) maps to exactly
        /// the records it touches, and any split of it into pieces maps to the same records.
        #[test]
        fn any_sub_range_maps_to_the_records_it_touches(f in format(), head in prop_oneof![Just(0usize), 1usize..=16384],
                                                        offset in 0u64..100_000, body in 0u64..120_000, seq in 0u64..1000,
                                                        a in any::<u64>(), len in 0u64..60_000, cut in any::<u64>()) {
            let l = ResponseLayout::new(f, head, offset, body, seq).unwrap();
            let total = l.wire_len();
            let start = if total == 0 { a % 100 } else { a % (total + 100) };
            let end = start + len;
            let touched: Vec<u64> = (0..l.record_count())
                // An empty range (len 0) touches no record, wherever it starts.
                .filter(|&r| { let w = l.record_wire_range(r); start < end && w.start < end && start < w.end })
                .collect();
            let got = l.records_overlapping(start..end);
            prop_assert_eq!(got.clone().collect::<Vec<_>>(), touched.clone());
            if start < end {
                let m = start + cut % (end - start);
                let (x, y) = (l.records_overlapping(start..m), l.records_overlapping(m..end));
                let mut union: Vec<u64> = x.chain(y).collect();
                union.dedup();
                prop_assert_eq!(union, touched);
            }
            // A pure function of the parameters: an identical layout built later agrees.
            let again = ResponseLayout::new(f, head, offset, body, seq).unwrap();
            prop_assert_eq!(again.records_overlapping(start..end), got);
            for r in 0..l.record_count().min(8) {
                prop_assert_eq!(again.record_wire_range(r), l.record_wire_range(r));
                prop_assert_eq!(again.record_source(r), l.record_source(r));
                prop_assert_eq!(again.seq(r), seq + r);
            }
        }

        /// Consecutive responses on one connection: sequence numbers continue, and the
        /// boundaries of the second do not depend on where the first one ended.
        #[test]
        fn consecutive_responses_chain(f in format(), h1 in 0usize..2000, o1 in 0u64..70_000, b1 in 0u64..70_000,
                                       h2 in 0usize..2000, o2 in 0u64..70_000, b2 in 0u64..70_000) {
            let first = ResponseLayout::new(f, h1, o1, b1, 0).unwrap();
            let second = ResponseLayout::new(f, h2, o2, b2, first.next_seq_base()).unwrap();
            let alone = ResponseLayout::new(f, h2, o2, b2, 0).unwrap();
            prop_assert_eq!(second.wire_len(), alone.wire_len());
            for r in 0..second.record_count() {
                prop_assert_eq!(second.record_wire_range(r), alone.record_wire_range(r));
                prop_assert_eq!(second.seq(r), first.record_count() + r);
            }
        }
    }

    #[test]
    fn first_record_is_short_then_aligned() {
        let l = ResponseLayout::new(RecordFormat::TLS13, 200, 10_000, 38_000, 7).unwrap();
        assert_eq!(l.record_count(), 4);
        assert_eq!(
            l.record_source(0),
            RecordSource::Head { start: 0, end: 200 }
        );
        assert_eq!(
            l.record_source(1),
            RecordSource::Body {
                object_start: 10_000,
                object_end: 16384
            }
        );
        assert_eq!(
            l.record_source(2),
            RecordSource::Body {
                object_start: 16384,
                object_end: 32768
            }
        );
        assert_eq!(
            l.record_source(3),
            RecordSource::Body {
                object_start: 32768,
                object_end: 48_000
            }
        );
        assert_eq!(l.record_wire_range(1), 222..222 + 6384 + 22);
        assert_eq!(l.seq(3), 10);
        assert_eq!(l.next_seq_base(), 11);
        assert_eq!(l.wire_len(), 200 + 38_000 + 4 * 22);
        assert_eq!(l.locate(222 + 5), Some((1, RecordPart::Payload(0))));
        assert_eq!(l.locate(222 + 5 + 6384), Some((1, RecordPart::InnerType)));
        assert_eq!(l.locate(222 + 5 + 6384 + 1), Some((1, RecordPart::Tag(0))));
    }

    #[test]
    fn empty_response_and_bad_head() {
        let l = ResponseLayout::new(RecordFormat::TLS13, 0, 5, 0, 3).unwrap();
        assert_eq!(
            (l.record_count(), l.wire_len(), l.next_seq_base()),
            (0, 0, 3)
        );
        assert_eq!(l.locate(0), None);
        assert_eq!(l.records_overlapping(0..100), 0..0);
        assert_eq!(
            ResponseLayout::new(RecordFormat::TLS13, 16385, 0, 1, 0),
            Err(LayoutError::HeadTooLong(16385))
        );
        assert_eq!(
            ResponseLayout::new(RecordFormat::TLS13, 0, u64::MAX, 2, 0),
            Err(LayoutError::Overflow)
        );
    }
}
