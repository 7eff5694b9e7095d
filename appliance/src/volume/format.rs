//! The on-medium wire format of a volume: zero-copy views that parse and check the header
//! block and the index entries, and the functions that emit them. No I/O here.
//!
//! Header block (4096 bytes, integers little-endian):
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! |      0 |    8 | magic `MEDIAVOL`                                        |
//! |      8 |    4 | format version (1)                                      |
//! |     12 |    4 | block size (4096)                                       |
//! |     16 |    8 | object count                                            |
//! |     24 |    8 | index offset (bytes, block-aligned)                     |
//! |     32 |    8 | index length (bytes, exact)                             |
//! |     40 |    8 | data region offset (bytes, block-aligned)               |
//! |     48 |    8 | data region length (bytes, block multiple)              |
//! |     56 |    8 | total volume length (= data offset + data length)       |
//! |     64 |    8 | creation time (unix seconds)                            |
//! |     72 |   32 | sha256 of the index bytes                               |
//! |    104 | 3960 | reserved, zero                                          |
//! |   4064 |   32 | sha256 of header bytes 0..4064                          |
//!
//! Index entry (64 fixed bytes, then the strings, no padding between entries):
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! |      0 |    8 | extent offset in the volume (bytes, block-aligned)      |
//! |      8 |    8 | size in bytes                                           |
//! |     16 |    8 | mtime of the source file (unix seconds)                 |
//! |     24 |   32 | sha256 of the content                                   |
//! |     56 |    2 | path length P (1..=4096)                                |
//! |     58 |    1 | content type length C (1..=255)                         |
//! |     59 |    1 | ETag length E (2..=255)                                 |
//! |     60 |    4 | reserved, zero                                          |
//! |     64 |    P | path, UTF-8                                             |
//! |   64+P |    C | content type, visible ASCII                             |
//! | 64+P+C |    E | ETag, a quoted strong entity-tag                        |
use sha2::{Digest, Sha256};

use super::{Object, VolumeError};

pub const MAGIC: [u8; 8] = *b"MEDIAVOL";
pub const VERSION: u32 = 1;
/// Alignment of the index, the data region and every extent.
pub const BLOCK_SIZE: u64 = 4096;
pub const HEADER_LEN: usize = 4096;
/// Bytes of the header covered by its own checksum (all but the checksum).
const HEADER_SUMMED_LEN: usize = HEADER_LEN - 32;
const FIELDS_END: usize = 104;
pub const ENTRY_FIXED_LEN: usize = 64;
/// Smallest possible entry: a one-byte path, a one-byte content type, an empty quoted ETag.
pub const ENTRY_MIN_LEN: usize = ENTRY_FIXED_LEN + 1 + 1 + 2;
pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
pub const MAX_ETAG_LEN: usize = 255;
/// The index is loaded into memory; a header asking for more than this is corrupt.
pub const MAX_INDEX_LEN: u64 = 1 << 30;

/// Rounds `n` up to the next multiple of [`BLOCK_SIZE`] (None on overflow).
pub fn block_align(n: u64) -> Option<u64> {
    n.checked_next_multiple_of(BLOCK_SIZE)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn sha_at(b: &[u8], at: usize) -> &[u8; 32] {
    b[at..at + 32].try_into().expect("32-byte field inside a checked slice")
}

/// The header's numeric fields, as written by [`emit_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    pub object_count: u64,
    pub index_offset: u64,
    pub index_len: u64,
    pub data_offset: u64,
    pub data_len: u64,
    pub total_len: u64,
    pub created: u64,
    pub index_sha256: [u8; 32],
}

/// A checked view of a header block: magic, version, block size and checksum are verified by
/// [`HeaderView::new`]; [`HeaderView::check_layout`] verifies the fields agree with each other.
#[derive(Clone, Copy, Debug)]
pub struct HeaderView<'a> {
    bytes: &'a [u8],
}

impl<'a> HeaderView<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<HeaderView<'a>, VolumeError> {
        let bytes = bytes.get(..HEADER_LEN).ok_or(VolumeError::HeaderTooShort { len: bytes.len() })?;
        let magic: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(VolumeError::BadMagic { found: magic });
        }
        let view = HeaderView { bytes };
        // The version comes before the checksum: another version may sum differently.
        if view.version() != VERSION {
            return Err(VolumeError::UnsupportedVersion { found: view.version() });
        }
        let computed: [u8; 32] = Sha256::digest(&bytes[..HEADER_SUMMED_LEN]).into();
        if &computed != sha_at(bytes, HEADER_SUMMED_LEN) {
            return Err(VolumeError::HeaderChecksum);
        }
        if view.block_size() as u64 != BLOCK_SIZE {
            return Err(VolumeError::BadLayout(format!("block size {} is not {BLOCK_SIZE}", view.block_size())));
        }
        Ok(view)
    }

    pub fn version(&self) -> u32 {
        u32_at(self.bytes, 8)
    }
    pub fn block_size(&self) -> u32 {
        u32_at(self.bytes, 12)
    }
    pub fn object_count(&self) -> u64 {
        u64_at(self.bytes, 16)
    }
    pub fn index_offset(&self) -> u64 {
        u64_at(self.bytes, 24)
    }
    pub fn index_len(&self) -> u64 {
        u64_at(self.bytes, 32)
    }
    pub fn data_offset(&self) -> u64 {
        u64_at(self.bytes, 40)
    }
    pub fn data_len(&self) -> u64 {
        u64_at(self.bytes, 48)
    }
    pub fn total_len(&self) -> u64 {
        u64_at(self.bytes, 56)
    }
    pub fn created(&self) -> u64 {
        u64_at(self.bytes, 64)
    }
    pub fn index_sha256(&self) -> &'a [u8; 32] {
        sha_at(self.bytes, 72)
    }

    pub fn fields(&self) -> HeaderFields {
        HeaderFields {
            object_count: self.object_count(),
            index_offset: self.index_offset(),
            index_len: self.index_len(),
            data_offset: self.data_offset(),
            data_len: self.data_len(),
            total_len: self.total_len(),
            created: self.created(),
            index_sha256: *self.index_sha256(),
        }
    }

    /// Checks that the regions are aligned, ordered header < index < data, do not overlap, and
    /// add up to the total length; and that the index is plausible for the object count.
    pub fn check_layout(&self) -> Result<(), VolumeError> {
        let bad = |s: String| Err(VolumeError::BadLayout(s));
        let h = self.fields();
        if self.bytes[FIELDS_END..HEADER_SUMMED_LEN].iter().any(|&b| b != 0) {
            return bad("reserved header bytes are not zero".into());
        }
        for (name, v) in [("index offset", h.index_offset), ("data offset", h.data_offset), ("data length", h.data_len)]
        {
            if v % BLOCK_SIZE != 0 {
                return bad(format!("{name} {v} is not a multiple of {BLOCK_SIZE}"));
            }
        }
        if h.index_offset < HEADER_LEN as u64 {
            return bad(format!("index offset {} overlaps the header", h.index_offset));
        }
        if h.index_len > MAX_INDEX_LEN {
            return bad(format!("index length {} exceeds the {MAX_INDEX_LEN} byte limit", h.index_len));
        }
        match h.index_offset.checked_add(h.index_len) {
            Some(end) if end <= h.data_offset => {}
            _ => {
                return bad(format!(
                    "index ({} bytes at {}) overlaps the data region at {}",
                    h.index_len, h.index_offset, h.data_offset
                ))
            }
        }
        if h.data_offset.checked_add(h.data_len) != Some(h.total_len) {
            return bad(format!(
                "total length {} is not data offset {} + data length {}",
                h.total_len, h.data_offset, h.data_len
            ));
        }
        if h.object_count > h.index_len / ENTRY_MIN_LEN as u64 {
            return bad(format!("{} objects cannot fit in an index of {} bytes", h.object_count, h.index_len));
        }
        Ok(())
    }
}

/// Writes a header block into `out[..HEADER_LEN]` (reserved bytes zeroed, checksum last).
/// Returns None if `out` is too short.
pub fn emit_header(h: &HeaderFields, out: &mut [u8]) -> Option<()> {
    let out = out.get_mut(..HEADER_LEN)?;
    out.fill(0);
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    for (at, v) in [
        (16, h.object_count),
        (24, h.index_offset),
        (32, h.index_len),
        (40, h.data_offset),
        (48, h.data_len),
        (56, h.total_len),
        (64, h.created),
    ] {
        out[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    out[72..104].copy_from_slice(&h.index_sha256);
    let sum: [u8; 32] = Sha256::digest(&out[..HEADER_SUMMED_LEN]).into();
    out[HEADER_SUMMED_LEN..].copy_from_slice(&sum);
    Some(())
}

/// A checked view of one index entry: lengths fit, strings are well-formed.
#[derive(Clone, Copy, Debug)]
pub struct EntryView<'a> {
    fixed: &'a [u8],
    path: &'a str,
    content_type: &'a str,
    etag: &'a str,
}

impl<'a> EntryView<'a> {
    /// Parses the entry at the front of `bytes`; returns it and the bytes after it.
    pub fn parse(bytes: &'a [u8]) -> Result<(EntryView<'a>, &'a [u8]), String> {
        let fixed = bytes
            .get(..ENTRY_FIXED_LEN)
            .ok_or_else(|| format!("entry truncated: {} of {ENTRY_FIXED_LEN} fixed bytes", bytes.len()))?;
        let path_len = u16::from_le_bytes([fixed[56], fixed[57]]) as usize;
        let ct_len = fixed[58] as usize;
        let etag_len = fixed[59] as usize;
        if fixed[60..64] != [0; 4] {
            return Err("reserved entry bytes are not zero".into());
        }
        let strings_len = path_len + ct_len + etag_len;
        let rest = &bytes[ENTRY_FIXED_LEN..];
        let strings = rest
            .get(..strings_len)
            .ok_or_else(|| format!("entry truncated: {} of {strings_len} string bytes", rest.len()))?;
        let (path, strings) = strings.split_at(path_len);
        let (ct, etag) = strings.split_at(ct_len);
        let path = std::str::from_utf8(path).map_err(|_| "path is not UTF-8".to_string())?;
        check_path(path).map_err(|e| format!("path {path:?}: {e}"))?;
        let content_type = std::str::from_utf8(ct).map_err(|_| "content type is not ASCII".to_string())?;
        check_content_type(content_type).map_err(|e| format!("content type {content_type:?}: {e}"))?;
        let etag = std::str::from_utf8(etag).map_err(|_| "ETag is not ASCII".to_string())?;
        check_etag(etag).map_err(|e| format!("ETag {etag:?}: {e}"))?;
        Ok((EntryView { fixed, path, content_type, etag }, &rest[strings_len..]))
    }

    pub fn offset(&self) -> u64 {
        u64_at(self.fixed, 0)
    }
    pub fn size(&self) -> u64 {
        u64_at(self.fixed, 8)
    }
    pub fn mtime(&self) -> u64 {
        u64_at(self.fixed, 16)
    }
    pub fn sha256(&self) -> &'a [u8; 32] {
        sha_at(self.fixed, 24)
    }
    pub fn path(&self) -> &'a str {
        self.path
    }
    pub fn content_type(&self) -> &'a str {
        self.content_type
    }
    pub fn etag(&self) -> &'a str {
        self.etag
    }

    pub fn to_object(&self) -> Object {
        Object {
            path: self.path.to_owned(),
            offset: self.offset(),
            size: self.size(),
            content_type: self.content_type.to_owned(),
            etag: self.etag.to_owned(),
            mtime: self.mtime(),
            sha256: *self.sha256(),
        }
    }
}

/// Bytes the entry for `obj` takes in the index.
pub fn entry_len(obj: &Object) -> usize {
    ENTRY_FIXED_LEN + obj.path.len() + obj.content_type.len() + obj.etag.len()
}

/// Writes the entry for `obj` at the front of `out`; returns its length. Fails (with the
/// reason) if a string is not well-formed or `out` is too short.
pub fn emit_entry(obj: &Object, out: &mut [u8]) -> Result<usize, String> {
    check_path(&obj.path).map_err(|e| format!("path {:?}: {e}", obj.path))?;
    check_content_type(&obj.content_type).map_err(|e| format!("content type {:?}: {e}", obj.content_type))?;
    check_etag(&obj.etag).map_err(|e| format!("ETag {:?}: {e}", obj.etag))?;
    let len = entry_len(obj);
    let out = out.get_mut(..len).ok_or("index buffer too short")?;
    out[0..8].copy_from_slice(&obj.offset.to_le_bytes());
    out[8..16].copy_from_slice(&obj.size.to_le_bytes());
    out[16..24].copy_from_slice(&obj.mtime.to_le_bytes());
    out[24..56].copy_from_slice(&obj.sha256);
    out[56..58].copy_from_slice(&(obj.path.len() as u16).to_le_bytes());
    out[58] = obj.content_type.len() as u8;
    out[59] = obj.etag.len() as u8;
    out[60..64].fill(0);
    let mut at = ENTRY_FIXED_LEN;
    for s in [&obj.path, &obj.content_type, &obj.etag] {
        out[at..at + s.len()].copy_from_slice(s.as_bytes());
        at += s.len();
    }
    Ok(len)
}

/// A URL path an HTTP request can name: starts with '/', no empty, "." or ".." segments, no
/// control characters, at most [`MAX_PATH_LEN`] bytes.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err("length must be 1 to 4096 bytes");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("does not start with '/'");
    };
    if path.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    for segment in rest.split('/') {
        match segment {
            "" => return Err("has an empty segment"),
            "." | ".." => return Err("has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Safe to send verbatim as a header value: 1 to 255 visible ASCII characters or spaces.
fn check_content_type(ct: &str) -> Result<(), &'static str> {
    if ct.is_empty() || ct.len() > MAX_CONTENT_TYPE_LEN {
        return Err("length must be 1 to 255 bytes");
    }
    if !ct.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("contains a character that is not visible ASCII");
    }
    Ok(())
}

/// A strong entity-tag (RFC 9110): `"` etagc* `"` with etagc = %x21 / %x23-7E.
fn check_etag(etag: &str) -> Result<(), &'static str> {
    if etag.len() < 2 || etag.len() > MAX_ETAG_LEN {
        return Err("length must be 2 to 255 bytes");
    }
    let inner = etag.strip_prefix('"').and_then(|s| s.strip_suffix('"')).ok_or("is not a quoted strong entity-tag")?;
    if !inner.bytes().all(|b| b == 0x21 || (0x23..0x7f).contains(&b)) {
        return Err("contains a character not allowed in an entity-tag");
    }
    Ok(())
}

/// The strong ETag of content with this sha256: the first 16 hex digits, quoted.
pub fn etag_for(sha256: &[u8; 32]) -> String {
    let mut s = String::with_capacity(18);
    s.push('"');
    s.push_str(&hex(&sha256[..8]));
    s.push('"');
    s
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_fields() -> HeaderFields {
        HeaderFields {
            object_count: 2,
            index_offset: 4096,
            index_len: 300,
            data_offset: 8192,
            data_len: 3 * 4096,
            total_len: 8192 + 3 * 4096,
            created: 1_700_000_000,
            index_sha256: [7; 32],
        }
    }

    fn sample_object() -> Object {
        let sha = [0xab; 32];
        Object {
            path: "/hls/720p/seg-00001.ts".into(),
            offset: 8192,
            size: 5000,
            content_type: "video/mp2t".into(),
            etag: etag_for(&sha),
            mtime: 1_600_000_000,
            sha256: sha,
        }
    }

    #[test]
    fn header_round_trips() {
        let mut block = vec![0xffu8; HEADER_LEN + 10];
        emit_header(&sample_fields(), &mut block).unwrap();
        let view = HeaderView::new(&block).unwrap();
        assert_eq!(view.fields(), sample_fields());
        assert_eq!(view.version(), VERSION);
        view.check_layout().unwrap();
        assert!(emit_header(&sample_fields(), &mut [0u8; 100]).is_none());
    }

    #[test]
    fn header_refuses_short_input_and_bad_magic() {
        let mut block = vec![0u8; HEADER_LEN];
        emit_header(&sample_fields(), &mut block).unwrap();
        assert!(matches!(HeaderView::new(&block[..4095]), Err(VolumeError::HeaderTooShort { len: 4095 })));
        block[0] = b'X';
        assert!(matches!(HeaderView::new(&block), Err(VolumeError::BadMagic { .. })));
    }

    #[test]
    fn inconsistent_layouts_are_refused() {
        let cases: [fn(&mut HeaderFields); 6] = [
            |h| h.index_offset = 100,
            |h| h.index_offset = 0,
            |h| h.index_len = 5000,
            |h| h.total_len += 4096,
            |h| h.data_len = 100,
            |h| h.object_count = 1000,
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut h = sample_fields();
            mutate(&mut h);
            let mut block = vec![0u8; HEADER_LEN];
            emit_header(&h, &mut block).unwrap();
            let err = HeaderView::new(&block).unwrap().check_layout().unwrap_err();
            assert!(matches!(err, VolumeError::BadLayout(_)), "case {i}: {err:?}");
        }
    }

    #[test]
    fn entry_round_trips() {
        let obj = sample_object();
        let mut buf = vec![0u8; 200];
        let n = emit_entry(&obj, &mut buf).unwrap();
        assert_eq!(n, entry_len(&obj));
        let (view, rest) = EntryView::parse(&buf).unwrap();
        assert_eq!(rest.len(), 200 - n);
        assert_eq!(view.to_object(), obj);
        assert_eq!(view.etag(), "\"abababababababab\"");
        for cut in 0..n {
            assert!(EntryView::parse(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_strings_are_refused() {
        for path in ["", "a", "/a//b", "/a/", "/./a", "/a/../b", "/a\nb", "/a\u{7f}"] {
            assert!(check_path(path).is_err(), "{path:?}");
        }
        for path in ["/", "/a", "/a b/c.ts", "/vidéo/🎬.mp4", "/.hidden"] {
            // "/" alone has one empty segment and is refused; the rest are fine.
            assert_eq!(check_path(path).is_ok(), path != "/", "{path:?}");
        }
        assert!(check_etag("\"ab\"").is_ok());
        for etag in ["ab", "\"a\"b\"", "W/\"ab\"", "\"a b\"", "\""] {
            assert!(check_etag(etag).is_err(), "{etag:?}");
        }
        assert!(check_content_type("text/html; charset=utf-8").is_ok());
        assert!(check_content_type("text/html\r\nX: y").is_err());
        let mut obj = sample_object();
        obj.path = "no-slash".into();
        assert!(emit_entry(&obj, &mut [0u8; 200]).is_err());
    }
}
