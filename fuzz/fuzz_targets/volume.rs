//! The volume header and index: `HeaderView::new`, `check_layout`, `EntryView::parse`,
//! `Volume::parse`, and `volume::load` over an in-memory medium.
//! Mode (first byte) 0: the input is the whole medium. 1: header fields and index bytes from
//! the input, checksums computed here (so the layout and entry checks are reached). 2: the
//! fixture volume (made by `pack`) with fuzzed byte edits, checksums optionally fixed after.
#![no_main]
use std::sync::Arc;

use appliance::volume::format::{self, EntryView, HeaderFields, HeaderView, BLOCK_SIZE, HEADER_LEN};
use appliance::volume::Volume;
use appliance_fuzz::{fixture_volume, Input, MemStorage};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// Largest medium built here.
const MAX_MEDIUM: u64 = 1 << 20;

fn check_volume(v: &Volume, medium_len: u64) {
    let (data_off, data_len) = v.data_region();
    assert!(v.total_len() <= medium_len);
    assert!(data_off + data_len == v.total_len());
    let mut sum = 0u64;
    let mut prev: Option<&str> = None;
    for o in v.objects() {
        assert!(o.offset >= data_off && o.offset + o.extent_len() <= data_off + data_len, "{} outside the data region", o.path);
        assert!(o.offset % BLOCK_SIZE == 0);
        assert!(o.path.starts_with('/'));
        assert!(format::check_path(&o.path).is_ok());
        assert!(prev.is_none_or(|p| p < o.path.as_str()), "objects not sorted by path");
        prev = Some(&o.path);
        assert_eq!(v.lookup(&o.path), Some(o));
        sum += o.size;
    }
    assert_eq!(sum, v.data_bytes());
}

/// Parse the header and index out of `medium` directly and through `load`; they must agree.
fn parse_and_load(medium: Vec<u8>) {
    let medium_len = medium.len() as u64;
    let direct = HeaderView::new(&medium).and_then(|h| {
        h.check_layout()?;
        let (off, len) = (h.index_offset(), h.index_len());
        let index = medium.get(off as usize..(off + len) as usize).unwrap_or(&[]);
        Volume::parse(&medium[..HEADER_LEN], index, medium_len)
    });
    let mut storage = MemStorage::new(Arc::new(medium), Vec::new());
    let loaded = appliance::volume::load(&mut storage);
    match (&direct, &loaded) {
        (Ok(a), Ok(b)) => {
            check_volume(b, medium_len);
            assert_eq!(a.objects(), b.objects());
        }
        (Err(_), Err(_)) => {}
        // A header that says the index is past the end of the medium: direct parsing got an
        // empty index, load refused it as truncated. Both refused, which is what matters.
        (a, b) => panic!("parse and load disagree: {:?} vs {:?}", a.as_ref().map(|_| ()), b.as_ref().map(|_| ())),
    }
}

/// `medium` with its header checksum recomputed.
fn rehash(mut medium: Vec<u8>) -> Vec<u8> {
    let sum: [u8; 32] = Sha256::digest(&medium[..HEADER_LEN - 32]).into();
    medium[HEADER_LEN - 32..HEADER_LEN].copy_from_slice(&sum);
    medium
}

fn entries(mut rest: &[u8]) {
    for _ in 0..64 {
        match EntryView::parse(rest) {
            Ok((e, after)) => {
                assert!(after.len() < rest.len());
                let o = e.to_object();
                assert_eq!(o.path, e.path());
                assert_eq!(format::entry_len(&o), rest.len() - after.len(), "entry length");
                let mut out = vec![0u8; format::entry_len(&o)];
                let n = format::emit_entry(&o, &mut out).expect("a parsed entry emits");
                assert_eq!(&out[..n], &rest[..rest.len() - after.len()], "emit(parse(e)) != e");
                rest = after;
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 3 {
        0 => {
            let medium = inp.rest().to_vec();
            entries(&medium);
            parse_and_load(medium);
        }
        1 => {
            let index_blocks = inp.u8() as u64 % 8;
            let data_blocks = inp.u8() as u64 % 8;
            let mut h = HeaderFields {
                object_count: inp.u8() as u64,
                index_offset: BLOCK_SIZE * (1 + index_blocks % 2),
                index_len: 0,
                data_offset: 0,
                data_len: BLOCK_SIZE * data_blocks,
                total_len: 0,
                created: inp.u32() as u64,
                index_sha256: [0; 32],
            };
            let tweak = inp.u8();
            let index = inp.rest().to_vec();
            entries(&index);
            h.index_len = index.len() as u64;
            h.data_offset = (h.index_offset + h.index_len).next_multiple_of(BLOCK_SIZE) + BLOCK_SIZE * (index_blocks / 2);
            h.total_len = h.data_offset + h.data_len;
            h.index_sha256 = Sha256::digest(&index).into();
            // A few deliberate inconsistencies.
            match tweak % 8 {
                1 => h.total_len += BLOCK_SIZE,
                2 => h.data_offset -= BLOCK_SIZE.min(h.data_offset),
                3 => h.index_len += 1,
                4 => h.object_count = u64::MAX,
                5 => h.total_len = u64::MAX,
                _ => {}
            }
            let mut medium = vec![0u8; h.total_len.min(MAX_MEDIUM) as usize];
            if medium.len() < HEADER_LEN {
                medium.resize(HEADER_LEN, 0);
            }
            format::emit_header(&h, &mut medium).unwrap();
            let at = h.index_offset as usize;
            if at + index.len() <= medium.len() {
                medium[at..at + index.len()].copy_from_slice(&index);
            }
            if tweak & 0x80 != 0 {
                medium.truncate(medium.len() - (tweak as usize & 0x3f) * 64);
            }
            parse_and_load(medium);
        }
        _ => {
            let mut medium = fixture_volume().to_vec();
            let fix = inp.u8();
            while !inp.is_empty() {
                let at = inp.u16() as usize % medium.len();
                medium[at] ^= inp.u8();
            }
            if fix & 1 != 0 {
                // Recompute the index checksum and then the header checksum, keeping every
                // other header byte (reserved ones included) as edited.
                let fields = HeaderView::new(&rehash(medium.clone())).map(|h| h.fields());
                if let Ok(mut f) = fields {
                    let (off, len) = (f.index_offset as usize, f.index_len as usize);
                    if let Some(index) = medium.get(off..off.saturating_add(len)) {
                        f.index_sha256 = Sha256::digest(index).into();
                    }
                    medium[72..104].copy_from_slice(&f.index_sha256);
                }
                medium = rehash(medium);
            }
            parse_and_load(medium);
        }
    }
});
