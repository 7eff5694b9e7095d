//! TLS application-data records, sealed and opened in place (RFC 8446 5.2, RFC 5246 6.2.3.3
//! with RFC 5288 AES-GCM). Outgoing records keep header and tag outside the payload buffer so
//! that storage DMA lands exactly where the NIC reads; incoming records are opened in one
//! contiguous buffer. Wire format only: the sequence number is the caller's.
use aws_lc_rs::aead::{Aad, Nonce};

use super::keys::{BulkKey, Keys, TlsVersion};

pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// Legacy record version on the wire (TLS 1.2 value, also used by TLS 1.3).
pub const WIRE_VERSION: u16 = 0x0303;
pub const HEADER_LEN: usize = 5;
pub const TAG_LEN: usize = 16;
pub const TLS12_EXPLICIT_NONCE_LEN: usize = 8;
/// Largest plaintext of a record (2^14).
pub const MAX_PLAINTEXT: usize = 16384;
/// Largest TLS 1.3 ciphertext (2^14 + 256), RFC 8446 5.2.
pub const MAX_TLS13_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Largest TLS 1.2 ciphertext (2^14 + 2048), RFC 5246 6.2.3.
pub const MAX_TLS12_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;

/// Why a record was refused. `alert()` gives the alert to send before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("bad record MAC")]
    BadMac,
    #[error("bad record length {0}")]
    BadLength(usize),
    #[error("bad content type {0}")]
    BadContentType(u8),
    #[error("bad record version {0:#06x}")]
    BadVersion(u16),
    #[error("record plaintext longer than 2^14")]
    Overflow,
    #[error("keys are for {keys:?}, record function is for {wanted:?}")]
    WrongVersion {
        keys: TlsVersion,
        wanted: TlsVersion,
    },
    #[error("output buffer too small: need {0} bytes")]
    BufferTooSmall(usize),
}

impl RecordError {
    /// TLS alert description for this error (RFC 8446 6.2).
    pub fn alert(&self) -> u8 {
        match self {
            RecordError::BadMac => 20,            // bad_record_mac
            RecordError::Overflow => 22,          // record_overflow
            RecordError::BadContentType(_) => 10, // unexpected_message
            RecordError::BadLength(_) | RecordError::BadVersion(_) => 50, // decode_error
            RecordError::WrongVersion { .. } | RecordError::BufferTooSmall(_) => 80, // internal_error
        }
    }
}

/// A record header as read off the wire (checked only for shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub content_type: u8,
    pub version: u16,
    /// Length of what follows the header.
    pub len: usize,
}

impl RecordHeader {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> RecordHeader {
        RecordHeader {
            content_type: bytes[0],
            version: u16::from_be_bytes([bytes[1], bytes[2]]),
            len: u16::from_be_bytes([bytes[3], bytes[4]]) as usize,
        }
    }

    /// Total wire length of the record this header starts.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.len
    }
}

fn write_header(header: &mut [u8], content_type: u8, len: usize) {
    header[0] = content_type;
    header[1..3].copy_from_slice(&WIRE_VERSION.to_be_bytes());
    header[3..5].copy_from_slice(&(len as u16).to_be_bytes());
}

/// Seal one TLS 1.3 record in place. `payload` is the inner plaintext: content bytes followed
/// by the inner content-type byte (23 for application data), at most 2^14 + 1 bytes; it is
/// encrypted in place. The record header (AAD) is written to `header` and the tag to `tag`.
/// Deterministic: the same keys, seq and plaintext give the same bytes.
pub fn seal_in_place(
    keys: &Keys,
    seq: u64,
    header: &mut [u8; HEADER_LEN],
    payload: &mut [u8],
    tag: &mut [u8; TAG_LEN],
) -> Result<(), RecordError> {
    expect_version(keys, TlsVersion::Tls13)?;
    if payload.is_empty() || payload.len() > MAX_PLAINTEXT + 1 {
        return Err(RecordError::BadLength(payload.len()));
    }
    write_header(header, CONTENT_APPLICATION_DATA, payload.len() + TAG_LEN);
    let nonce = Nonce::assume_unique_for_key(keys.nonce(seq));
    let sealed = keys
        .with_aead(|k| k.seal_in_place_separate_tag(nonce, Aad::from(&header[..]), payload))
        .map_err(|_| RecordError::BadLength(payload.len()))?;
    tag.copy_from_slice(sealed.as_ref());
    Ok(())
}

/// Bytes after a TLS 1.3 record's content: the encrypted inner content type and the tag.
pub const TLS13_TRAILER_LEN: usize = 1 + TAG_LEN;

/// A record's content and where its ciphertext goes: encrypted where it lies, or read from
/// one slice and written to another. Either way each byte is read once and written once
/// (docs/performance.md), except when ring seals a copy: it copies first, then seals in place.
///
/// ring has no scatter API, so it seals a TLS 1.3 record only when the inner content type can
/// sit right after the content: made by [`Content::in_buffer`], the byte after the content in
/// its buffer (the next record's first byte) is lent for the seal and given back. Without
/// that byte (the buffer's last record), aws-lc-rs seals it.
pub struct Content<'a> {
    from: Option<&'a [u8]>,
    /// `len` bytes of ciphertext, then perhaps the byte that may be lent.
    to: &'a mut [u8],
    len: usize,
}

impl<'a> Content<'a> {
    /// Sealed where it lies: all of `bytes`.
    pub fn in_place(bytes: &'a mut [u8]) -> Content<'a> {
        let len = bytes.len();
        Content { from: None, to: bytes, len }
    }

    /// Read from `from`, written to the start of `to` (sealing refuses a shorter `to`,
    /// leaving it untouched; ring may lend the byte after the content from a longer one).
    pub fn copied(from: &'a [u8], to: &'a mut [u8]) -> Content<'a> {
        Content { from: Some(from), len: from.len(), to }
    }

    /// `buf[range]`: the bytes there, or those at the same offsets of `from` (the bytes that
    /// belong in `buf`, such as the chunk's in a mapping) written there. The byte after the
    /// range, when `buf` has one, may be lent to the seal and is given back. None when the
    /// range is not inside `buf` (or `from`).
    pub fn in_buffer(buf: &'a mut [u8], range: std::ops::Range<usize>, from: Option<&'a [u8]>) -> Option<Content<'a>> {
        let len = range.len();
        let from = match from {
            Some(from) => Some(from.get(range.clone())?),
            None => None,
        };
        if range.end > buf.len() {
            return None;
        }
        let end = (range.end + 1).min(buf.len());
        Some(Content { from, to: &mut buf[range.start..end], len })
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Seal with `extra` (encrypted after the content: a TLS 1.3 record's inner type) into
    /// `extra_out_and_tag`. Returns the payload bytes the CPU touched: the content's length,
    /// twice that when ring sealed a copy.
    fn seal(self, keys: &Keys, bulk: &BulkKey, nonce: [u8; 12], aad: &[u8], extra: Option<u8>, extra_out_and_tag: &mut [u8]) -> Result<usize, RecordError> {
        let Content { from, to, len } = self;
        if to.len() < len {
            return Err(RecordError::BadLength(len));
        }
        let extra_len = usize::from(extra.is_some());
        if let BulkKey::Ring(k) = bulk {
            if to.len() >= len + extra_len && extra_out_and_tag.len() == extra_len + TAG_LEN {
                return seal_ring(k, from, &mut to[..len + extra_len], nonce, aad, extra, extra_out_and_tag);
            }
        }
        let extra_in = extra.as_slice();
        let nonce = Nonce::assume_unique_for_key(nonce);
        keys.with_aead(|k| match from {
            None => k.seal_in_place_scatter(nonce, Aad::from(aad), &mut to[..len], extra_in, extra_out_and_tag),
            Some(from) => k.seal_out_of_place_scatter(nonce, Aad::from(aad), from, &mut to[..len], extra_in, extra_out_and_tag),
        })
        .map_err(|_| RecordError::BadLength(len))?;
        Ok(len)
    }
}

/// ring's seal of `whole` (the content, then room for `extra`): the content copied in first
/// when it comes `from` elsewhere, `extra` written after it, all sealed in place; the sealed
/// `extra` byte moves to `extra_out_and_tag[0]` and the lent byte gets its value back.
fn seal_ring(key: &ring::aead::LessSafeKey, from: Option<&[u8]>, whole: &mut [u8], nonce: [u8; 12], aad: &[u8], extra: Option<u8>, extra_out_and_tag: &mut [u8]) -> Result<usize, RecordError> {
    let len = whole.len() - usize::from(extra.is_some());
    let mut touched = len;
    if let Some(from) = from {
        whole[..len].copy_from_slice(from);
        touched += len;
    }
    let lent = extra.map(|e| std::mem::replace(&mut whole[len], e));
    let (extra_out, tag_out) = extra_out_and_tag.split_at_mut(extra_out_and_tag.len() - TAG_LEN);
    let sealed = key.seal_in_place_separate_tag(ring::aead::Nonce::assume_unique_for_key(nonce), ring::aead::Aad::from(aad), whole);
    if let Some(lent) = lent {
        extra_out[0] = std::mem::replace(&mut whole[len], lent);
    }
    // ring refuses only inputs past 2^36 bytes.
    let tag = sealed.map_err(|_| RecordError::BadLength(len))?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(touched)
}

fn expect_version(keys: &Keys, wanted: TlsVersion) -> Result<(), RecordError> {
    if keys.version() == wanted {
        Ok(())
    } else {
        Err(RecordError::WrongVersion { keys: keys.version(), wanted })
    }
}

/// Seal one TLS 1.3 record whose content fills `payload` exactly (a storage DMA buffer of up
/// to 16 KiB): the inner content type is encrypted into `trailer[0]` and the tag follows it in
/// `trailer[1..]`, so nothing is written past the payload buffer. The wire bytes are
/// `header || payload || trailer`, identical to [`seal_in_place`] over `payload || type`.
pub fn seal_in_place_split(
    keys: &Keys,
    seq: u64,
    header: &mut [u8; HEADER_LEN],
    payload: &mut [u8],
    inner_type: u8,
    trailer: &mut [u8; TLS13_TRAILER_LEN],
) -> Result<(), RecordError> {
    seal_split(keys, &BulkKey::Keys, seq, header, Content::in_place(payload), inner_type, trailer).map(drop)
}

/// [`seal_in_place_split`] for content in place or copied (sealed out of place), with the
/// keys' own AEAD or ring's (`bulk`): the same wire bytes every way. Returns the payload bytes
/// the CPU touched.
pub fn seal_split(
    keys: &Keys,
    bulk: &BulkKey,
    seq: u64,
    header: &mut [u8; HEADER_LEN],
    content: Content<'_>,
    inner_type: u8,
    trailer: &mut [u8; TLS13_TRAILER_LEN],
) -> Result<usize, RecordError> {
    expect_version(keys, TlsVersion::Tls13)?;
    if content.len() > MAX_PLAINTEXT {
        return Err(RecordError::BadLength(content.len()));
    }
    write_header(header, CONTENT_APPLICATION_DATA, content.len() + TLS13_TRAILER_LEN);
    content.seal(keys, bulk, keys.nonce(seq), &header[..], Some(inner_type), trailer)
}

/// Seal one TLS 1.2 AES-GCM record in place: `header` receives the 5-byte record header and the
/// 8-byte explicit nonce (the last 8 bytes of iv XOR seq, so deterministic and unique per key,
/// as rustls does it), `payload` is the plaintext of `content_type`.
pub fn seal_in_place_tls12(
    keys: &Keys,
    seq: u64,
    content_type: u8,
    header: &mut [u8; HEADER_LEN + TLS12_EXPLICIT_NONCE_LEN],
    payload: &mut [u8],
    tag: &mut [u8; TAG_LEN],
) -> Result<(), RecordError> {
    seal_tls12(keys, &BulkKey::Keys, seq, content_type, header, Content::in_place(payload), tag).map(drop)
}

/// [`seal_in_place_tls12`] for content in place or copied (sealed out of place), with the
/// keys' own AEAD or ring's (`bulk`): the same wire bytes every way. Returns the payload
/// bytes the CPU touched.
pub fn seal_tls12(
    keys: &Keys,
    bulk: &BulkKey,
    seq: u64,
    content_type: u8,
    header: &mut [u8; HEADER_LEN + TLS12_EXPLICIT_NONCE_LEN],
    content: Content<'_>,
    tag: &mut [u8; TAG_LEN],
) -> Result<usize, RecordError> {
    expect_version(keys, TlsVersion::Tls12)?;
    let len = content.len();
    if len > MAX_PLAINTEXT {
        return Err(RecordError::BadLength(len));
    }
    write_header(&mut header[..HEADER_LEN], content_type, TLS12_EXPLICIT_NONCE_LEN + len + TAG_LEN);
    let nonce = keys.nonce(seq);
    header[HEADER_LEN..].copy_from_slice(&nonce[4..]);
    content.seal(keys, bulk, nonce, &tls12_aad(seq, content_type, len), None, tag)
}

fn tls12_aad(seq: u64, content_type: u8, plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9..11].copy_from_slice(&WIRE_VERSION.to_be_bytes());
    aad[11..13].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    aad
}

/// Seal a small record from a plaintext slice into `out` (header + ciphertext + tag
/// contiguous), for control records: alerts, KeyUpdate, HTTP heads. Returns the wire length.
pub fn seal_record_into(
    keys: &Keys,
    seq: u64,
    content_type: u8,
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<usize, RecordError> {
    match keys.version() {
        TlsVersion::Tls13 => {
            let wire = HEADER_LEN + plaintext.len() + 1 + TAG_LEN;
            if out.len() < wire {
                return Err(RecordError::BufferTooSmall(wire));
            }
            let (header, rest) = out.split_at_mut(HEADER_LEN);
            let (payload, rest) = rest.split_at_mut(plaintext.len() + 1);
            payload[..plaintext.len()].copy_from_slice(plaintext);
            payload[plaintext.len()] = content_type;
            let header: &mut [u8; HEADER_LEN] = header.try_into().expect("split at HEADER_LEN");
            let tag: &mut [u8; TAG_LEN] = (&mut rest[..TAG_LEN]).try_into().expect("sized above");
            seal_in_place(keys, seq, header, payload, tag)?;
            Ok(wire)
        }
        TlsVersion::Tls12 => {
            let head = HEADER_LEN + TLS12_EXPLICIT_NONCE_LEN;
            let wire = head + plaintext.len() + TAG_LEN;
            if out.len() < wire {
                return Err(RecordError::BufferTooSmall(wire));
            }
            let (header, rest) = out.split_at_mut(head);
            let (payload, rest) = rest.split_at_mut(plaintext.len());
            payload.copy_from_slice(plaintext);
            let header: &mut [u8; 13] = header.try_into().expect("split at 13");
            let tag: &mut [u8; TAG_LEN] = (&mut rest[..TAG_LEN]).try_into().expect("sized above");
            seal_in_place_tls12(keys, seq, content_type, header, payload, tag)?;
            Ok(wire)
        }
    }
}

/// An opened record: its (inner) content type and where its plaintext lies in the buffer
/// that was passed to [`open_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedRecord {
    pub content_type: u8,
    pub plaintext: std::ops::Range<usize>,
}

/// Open one whole incoming record (`record` = header + body, exactly one record) in place.
/// TLS 1.3: outer type must be application_data; padding zeros are stripped and the inner
/// content type returned. TLS 1.2: the explicit nonce is read from the record.
pub fn open_in_place(
    keys: &Keys,
    seq: u64,
    record: &mut [u8],
) -> Result<OpenedRecord, RecordError> {
    if record.len() < HEADER_LEN {
        return Err(RecordError::BadLength(record.len()));
    }
    let header = RecordHeader::parse(record[..HEADER_LEN].try_into().expect("checked length"));
    if header.record_len() != record.len() {
        return Err(RecordError::BadLength(record.len()));
    }
    if header.version != WIRE_VERSION {
        return Err(RecordError::BadVersion(header.version));
    }
    match keys.version() {
        TlsVersion::Tls13 => open_tls13(keys, seq, header, record),
        TlsVersion::Tls12 => open_tls12(keys, seq, header, record),
    }
}

fn open_tls13(
    keys: &Keys,
    seq: u64,
    header: RecordHeader,
    record: &mut [u8],
) -> Result<OpenedRecord, RecordError> {
    if header.content_type != CONTENT_APPLICATION_DATA {
        return Err(RecordError::BadContentType(header.content_type));
    }
    if header.len < 1 + TAG_LEN || header.len > MAX_TLS13_CIPHERTEXT {
        return Err(RecordError::BadLength(header.len));
    }
    let (head, body) = record.split_at_mut(HEADER_LEN);
    let nonce = Nonce::assume_unique_for_key(keys.nonce(seq));
    let plain_len = keys
        .with_aead(|k| k.open_in_place(nonce, Aad::from(&head[..]), body).map(|p| p.len()))
        .map_err(|_| RecordError::BadMac)?;
    // Inner plaintext: content || type || zeros. The type is the last non-zero byte.
    let inner = &body[..plain_len];
    let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
        return Err(RecordError::BadContentType(0));
    };
    if type_at > MAX_PLAINTEXT {
        return Err(RecordError::Overflow);
    }
    let content_type = inner[type_at];
    check_content_type(content_type)?;
    Ok(OpenedRecord {
        content_type,
        plaintext: HEADER_LEN..HEADER_LEN + type_at,
    })
}

fn open_tls12(
    keys: &Keys,
    seq: u64,
    header: RecordHeader,
    record: &mut [u8],
) -> Result<OpenedRecord, RecordError> {
    check_content_type(header.content_type)?;
    if header.len < TLS12_EXPLICIT_NONCE_LEN + TAG_LEN || header.len > MAX_TLS12_CIPHERTEXT {
        return Err(RecordError::BadLength(header.len));
    }
    let plain_len = header.len - TLS12_EXPLICIT_NONCE_LEN - TAG_LEN;
    if plain_len > MAX_PLAINTEXT {
        return Err(RecordError::Overflow);
    }
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&keys.salt());
    nonce[4..].copy_from_slice(&record[HEADER_LEN..HEADER_LEN + TLS12_EXPLICIT_NONCE_LEN]);
    let aad = tls12_aad(seq, header.content_type, plain_len);
    let start = HEADER_LEN + TLS12_EXPLICIT_NONCE_LEN;
    let (body, tag) = record[start..].split_at_mut(plain_len);
    keys.with_aead(|k| k.open_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad[..]), tag, body))
        .map_err(|_| RecordError::BadMac)?;
    Ok(OpenedRecord {
        content_type: header.content_type,
        plaintext: start..start + plain_len,
    })
}

fn check_content_type(content_type: u8) -> Result<(), RecordError> {
    match content_type {
        CONTENT_ALERT | CONTENT_HANDSHAKE | CONTENT_APPLICATION_DATA => Ok(()),
        other => Err(RecordError::BadContentType(other)),
    }
}

#[cfg(test)]
mod tests {
    //! Records sealed here are opened by an independent implementation (RustCrypto `aes-gcm`,
    //! `chacha20poly1305`), and records sealed by it are opened here.
    use super::*;
    use crate::tls::keys::AeadSuite;
    use crate::tls::AeadImpl;
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use proptest::prelude::*;

    fn rc_open(
        suite: AeadSuite,
        key: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let nonce = aes_gcm::Nonce::from_slice(nonce);
        let tag = aes_gcm::Tag::from_slice(tag);
        match suite {
            AeadSuite::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(key)
                .unwrap()
                .decrypt_in_place_detached(nonce, aad, buf, tag)
                .is_ok(),
            AeadSuite::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .unwrap()
                .decrypt_in_place_detached(nonce, aad, buf, tag)
                .is_ok(),
            AeadSuite::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .unwrap()
                .decrypt_in_place_detached(nonce, aad, buf, tag)
                .is_ok(),
        }
    }

    fn rc_seal(
        suite: AeadSuite,
        key: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; 16] {
        let nonce = aes_gcm::Nonce::from_slice(nonce);
        let tag = match suite {
            AeadSuite::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(nonce, aad, buf),
            AeadSuite::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(nonce, aad, buf),
            AeadSuite::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(nonce, aad, buf),
        }
        .unwrap();
        tag.into()
    }

    fn suite() -> impl Strategy<Value = AeadSuite> {
        prop_oneof![
            Just(AeadSuite::Aes128Gcm),
            Just(AeadSuite::Aes256Gcm),
            Just(AeadSuite::ChaCha20Poly1305)
        ]
    }

    fn nonce_of(iv: &[u8; 12], seq: u64) -> [u8; 12] {
        let mut n = *iv;
        for (a, b) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *a ^= b;
        }
        n
    }

    proptest! {
        #[test]
        fn tls13_seal_is_opened_by_rustcrypto_and_back(suite in suite(), key in proptest::collection::vec(any::<u8>(), 32),
                                                        iv in any::<[u8; 12]>(), seq in any::<u64>(),
                                                        plain in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let key = &key[..suite.key_len()];
            let keys = Keys::new(TlsVersion::Tls13, suite, key, &iv).unwrap();
            let mut payload = plain.clone();
            payload.push(CONTENT_APPLICATION_DATA);
            let (mut header, mut tag) = ([0u8; 5], [0u8; 16]);
            seal_in_place(&keys, seq, &mut header, &mut payload, &mut tag).unwrap();
            prop_assert_eq!(header, [23, 3, 3, ((plain.len() + 17) >> 8) as u8, (plain.len() + 17) as u8]);
            let mut check = payload.clone();
            prop_assert!(rc_open(suite, key, &nonce_of(&iv, seq), &header, &mut check, &tag));
            prop_assert_eq!(&check[..plain.len()], &plain[..]);

            // RustCrypto-sealed record, opened here.
            let mut body = plain.clone();
            body.push(CONTENT_APPLICATION_DATA);
            body.extend_from_slice(&[0, 0, 0]); // padding
            let hdr = [23, 3, 3, ((body.len() + 16) >> 8) as u8, (body.len() + 16) as u8];
            let tag = rc_seal(suite, key, &nonce_of(&iv, seq), &hdr, &mut body);
            let mut record = hdr.to_vec();
            record.extend_from_slice(&body);
            record.extend_from_slice(&tag);
            let opened = open_in_place(&keys, seq, &mut record).unwrap();
            prop_assert_eq!(opened.content_type, CONTENT_APPLICATION_DATA);
            prop_assert_eq!(&record[opened.plaintext], &plain[..]);
        }

        #[test]
        fn tls12_seal_is_opened_by_rustcrypto_and_back(aes256 in any::<bool>(), key in proptest::collection::vec(any::<u8>(), 32),
                                                        iv in any::<[u8; 12]>(), seq in any::<u64>(),
                                                        plain in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let suite = if aes256 { AeadSuite::Aes256Gcm } else { AeadSuite::Aes128Gcm };
            let key = &key[..suite.key_len()];
            let keys = Keys::new(TlsVersion::Tls12, suite, key, &iv).unwrap();
            let mut payload = plain.clone();
            let (mut header, mut tag) = ([0u8; 13], [0u8; 16]);
            seal_in_place_tls12(&keys, seq, CONTENT_APPLICATION_DATA, &mut header, &mut payload, &mut tag).unwrap();
            let nonce = nonce_of(&iv, seq);
            prop_assert_eq!(&header[5..], &nonce[4..]);
            let aad = tls12_aad(seq, CONTENT_APPLICATION_DATA, plain.len());
            let mut check = payload.clone();
            prop_assert!(rc_open(suite, key, &nonce, &aad, &mut check, &tag));
            prop_assert_eq!(&check, &plain);

            // Record sealed by RustCrypto with an arbitrary explicit nonce, opened here.
            let explicit = seq.wrapping_mul(31).to_be_bytes();
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&iv[..4]);
            n[4..].copy_from_slice(&explicit);
            let mut body = plain.clone();
            let tag = rc_seal(suite, key, &n, &aad, &mut body);
            let len = 8 + body.len() + 16;
            let mut record = vec![23, 3, 3, (len >> 8) as u8, len as u8];
            record.extend_from_slice(&explicit);
            record.extend_from_slice(&body);
            record.extend_from_slice(&tag);
            let opened = open_in_place(&keys, seq, &mut record).unwrap();
            prop_assert_eq!(&record[opened.plaintext], &plain[..]);
        }
    }

    proptest! {
        #[test]
        fn split_seal_matches_contiguous_seal(suite in suite(), seq in any::<u64>(),
                                             plain in proptest::collection::vec(any::<u8>(), 0..20000)) {
            let plain = &plain[..plain.len().min(MAX_PLAINTEXT)];
            let keys = Keys::new(TlsVersion::Tls13, suite, &[9u8; 32][..suite.key_len()], &[5; 12]).unwrap();
            let mut contiguous = plain.to_vec();
            contiguous.push(CONTENT_APPLICATION_DATA);
            let (mut h1, mut t1) = ([0u8; 5], [0u8; 16]);
            seal_in_place(&keys, seq, &mut h1, &mut contiguous, &mut t1).unwrap();
            let mut split = plain.to_vec();
            let (mut h2, mut trailer) = ([0u8; 5], [0u8; TLS13_TRAILER_LEN]);
            seal_in_place_split(&keys, seq, &mut h2, &mut split, CONTENT_APPLICATION_DATA, &mut trailer).unwrap();
            prop_assert_eq!(h1, h2);
            prop_assert_eq!(&split[..], &contiguous[..plain.len()]);
            prop_assert_eq!(trailer[0], contiguous[plain.len()]);
            prop_assert_eq!(&trailer[1..], &t1[..]);
        }

        #[test]
        fn sealing_a_copy_gives_the_bytes_of_sealing_in_place(suite in suite(), tls12 in any::<bool>(), seq in any::<u64>(),
                                                              plain in proptest::collection::vec(any::<u8>(), 0..20000)) {
            let plain = &plain[..plain.len().min(MAX_PLAINTEXT)];
            // TLS 1.2 has AES-GCM suites only here.
            let (version, suite) = if tls12 { (TlsVersion::Tls12, AeadSuite::Aes256Gcm) } else { (TlsVersion::Tls13, suite) };
            let keys = Keys::new(version, suite, &[7u8; 32][..suite.key_len()], &[3; 12]).unwrap();
            let mut in_place = plain.to_vec();
            let mut copied = vec![0xa5u8; plain.len()];
            if tls12 {
                let (mut h1, mut t1, mut h2, mut t2) = ([0u8; 13], [0u8; 16], [0u8; 13], [0u8; 16]);
                seal_in_place_tls12(&keys, seq, CONTENT_APPLICATION_DATA, &mut h1, &mut in_place, &mut t1).unwrap();
                seal_tls12(&keys, &BulkKey::Keys, seq, CONTENT_APPLICATION_DATA, &mut h2, Content::copied(plain, &mut copied), &mut t2).unwrap();
                prop_assert_eq!((h1, t1), (h2, t2));
            } else {
                let (mut h1, mut t1, mut h2, mut t2) = ([0u8; 5], [0u8; TLS13_TRAILER_LEN], [0u8; 5], [0u8; TLS13_TRAILER_LEN]);
                seal_in_place_split(&keys, seq, &mut h1, &mut in_place, CONTENT_APPLICATION_DATA, &mut t1).unwrap();
                seal_split(&keys, &BulkKey::Keys, seq, &mut h2, Content::copied(plain, &mut copied), CONTENT_APPLICATION_DATA, &mut t2).unwrap();
                prop_assert_eq!((h1, t1), (h2, t2));
            }
            prop_assert_eq!(in_place, copied);
        }

        /// ring seals a record of a chunk buffer (borrowing the next byte, or with none to
        /// borrow) to the bytes aws-lc-rs makes, in place or from a copy, and gives the
        /// borrowed byte back.
        #[test]
        fn ring_seals_a_chunk_record_as_aws_lc_does(suite in suite(), tls12 in any::<bool>(), copied in any::<bool>(), seq in any::<u64>(),
                                                   len in 0usize..=MAX_PLAINTEXT, start in 0usize..64, after in 0usize..3) {
            let (version, suite) = if tls12 { (TlsVersion::Tls12, AeadSuite::Aes128Gcm) } else { (TlsVersion::Tls13, suite) };
            let keys = Keys::new(version, suite, &[4u8; 32][..suite.key_len()], &[6; 12]).unwrap();
            let plain: Vec<u8> = (0..start + len + after).map(|i| (i * 13 + 1) as u8).collect();
            let range = start..start + len;
            let seal = |bulk: &BulkKey| {
                let mut buf = if copied { vec![0xeeu8; plain.len()] } else { plain.clone() };
                // The bytes around the record, as the chunk had them before.
                buf[range.end..].copy_from_slice(&plain[range.end..]);
                let from = copied.then_some(&plain[..]);
                let content = Content::in_buffer(&mut buf, range.clone(), from).unwrap();
                let (mut h, mut t) = ([0u8; 13], [0u8; TLS13_TRAILER_LEN]);
                let touched = match version {
                    TlsVersion::Tls13 => seal_split(&keys, bulk, seq, (&mut h[..5]).try_into().unwrap(), content, CONTENT_APPLICATION_DATA, &mut t),
                    TlsVersion::Tls12 => seal_tls12(&keys, bulk, seq, CONTENT_APPLICATION_DATA, &mut h, content, (&mut t[..16]).try_into().unwrap()),
                }.unwrap();
                (buf, h, t, touched)
            };
            let (aws_buf, aws_h, aws_t, aws_touched) = seal(&BulkKey::Keys);
            let ring_key = keys.bulk_key(AeadImpl::Ring);
            prop_assert_eq!(matches!(ring_key, BulkKey::Ring(_)), suite != AeadSuite::ChaCha20Poly1305);
            let (ring_buf, ring_h, ring_t, ring_touched) = seal(&ring_key);
            prop_assert_eq!(&aws_buf, &ring_buf);
            prop_assert_eq!((aws_h, aws_t), (ring_h, ring_t));
            prop_assert_eq!(&ring_buf[range.end..], &plain[range.end..], "the byte after the record is given back");
            prop_assert_eq!(aws_touched, len);
            let ring_copies = copied && matches!(ring_key, BulkKey::Ring(_)) && (after > 0 || tls12);
            prop_assert_eq!(ring_touched, if ring_copies { 2 * len } else { len });
        }
    }

    #[test]
    fn a_copy_into_a_slice_of_another_length_is_refused_untouched() {
        let keys = tls13_keys();
        let (mut h, mut t, mut to) = ([0u8; 5], [0u8; TLS13_TRAILER_LEN], [0u8; 99]);
        for bulk in [BulkKey::Keys, keys.bulk_key(AeadImpl::Ring)] {
            let err = seal_split(&keys, &bulk, 0, &mut h, Content::copied(&[1; 100], &mut to), CONTENT_APPLICATION_DATA, &mut t);
            assert_eq!(err, Err(RecordError::BadLength(100)));
            assert_eq!(to, [0u8; 99]);
        }
        let mut buf = [0u8; 100];
        assert!(Content::in_buffer(&mut buf, 50..101, None).is_none());
        assert!(Content::in_buffer(&mut buf, 0..10, Some(&[1; 9])).is_none());
    }

    fn tls13_keys() -> Keys {
        Keys::new(TlsVersion::Tls13, AeadSuite::Aes128Gcm, &[1; 16], &[2; 12]).unwrap()
    }

    fn sealed_record(keys: &Keys, seq: u64, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; inner.len() + 64];
        let n = seal_record_into(
            keys,
            seq,
            inner[inner.len() - 1],
            &inner[..inner.len() - 1],
            &mut out,
        )
        .unwrap();
        out.truncate(n);
        out
    }

    /// Keys that dropped their AEAD context seal the same bytes and open the same records,
    /// each use building a context of its own (counted); woken, they use theirs again.
    #[test]
    fn sleeping_keys_seal_and_open_the_same_bytes() {
        for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
            let mut keys = Keys::new(version, AeadSuite::Aes128Gcm, &[1; 16], &[2; 12]).unwrap();
            let awake = sealed_record(&keys, 7, b"hello\x17");
            keys.sleep();
            assert!(!keys.is_awake());
            assert_eq!(sealed_record(&keys, 7, b"hello\x17"), awake);
            assert!(open_in_place(&keys, 7, &mut awake.clone()).is_ok());
            assert_eq!(keys.cold_uses(), 2);
            assert!(keys.wake());
            assert!(!keys.wake(), "already awake");
            assert_eq!(sealed_record(&keys, 7, b"hello\x17"), awake);
            assert_eq!(keys.cold_uses(), 2);
        }
    }

    #[test]
    fn corrupted_wrong_seq_and_malformed_records_get_typed_errors() {
        let keys = tls13_keys();
        let good = sealed_record(&keys, 5, b"hello\x17");
        assert!(open_in_place(&keys, 5, &mut good.clone()).is_ok());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let err = open_in_place(&keys, 5, &mut bad).unwrap_err();
            let expected = match i {
                0 => RecordError::BadContentType(22),
                1 | 2 => RecordError::BadVersion(if i == 1 { 0x0203 } else { 0x0302 }),
                3 | 4 => RecordError::BadLength(bad.len()),
                _ => RecordError::BadMac,
            };
            assert_eq!(err, expected, "byte {i}");
        }
        assert_eq!(
            open_in_place(&keys, 6, &mut good.clone()),
            Err(RecordError::BadMac)
        );
        assert_eq!(
            open_in_place(&keys, 5, &mut good[..4].to_vec()),
            Err(RecordError::BadLength(4))
        );
        // Too short to hold a type byte and tag.
        let mut short = vec![23, 3, 3, 0, 16];
        short.extend_from_slice(&[0; 16]);
        assert_eq!(
            open_in_place(&keys, 0, &mut short),
            Err(RecordError::BadLength(16))
        );
        // All-zero inner plaintext has no content type.
        let zeros = sealed_record(&keys, 1, &[0, 0, 0]);
        assert_eq!(
            open_in_place(&keys, 1, &mut zeros.clone()),
            Err(RecordError::BadContentType(0))
        );
        // An unknown inner type.
        let odd = sealed_record(&keys, 1, b"x\x63");
        assert_eq!(
            open_in_place(&keys, 1, &mut odd.clone()),
            Err(RecordError::BadContentType(0x63))
        );
        assert_eq!(RecordError::BadMac.alert(), 20);
    }

    #[test]
    fn sealing_is_deterministic_and_checks_version_and_length() {
        let keys = tls13_keys();
        let a = sealed_record(&keys, 9, b"same bytes\x17");
        let b = sealed_record(&keys, 9, b"same bytes\x17");
        let c = sealed_record(&keys, 10, b"same bytes\x17");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let (mut h, mut t) = ([0u8; 5], [0u8; 16]);
        assert_eq!(
            seal_in_place(&keys, 0, &mut h, &mut [], &mut t),
            Err(RecordError::BadLength(0))
        );
        assert_eq!(
            seal_in_place(&keys, 0, &mut h, &mut vec![0u8; MAX_PLAINTEXT + 2], &mut t),
            Err(RecordError::BadLength(MAX_PLAINTEXT + 2))
        );
        let mut h12 = [0u8; 13];
        assert!(matches!(
            seal_in_place_tls12(&keys, 0, 23, &mut h12, &mut [1], &mut t),
            Err(RecordError::WrongVersion { .. })
        ));
        assert_eq!(
            seal_record_into(&keys, 0, 23, b"abc", &mut [0u8; 10]),
            Err(RecordError::BufferTooSmall(25))
        );
    }
}
