//! Emulated TLS, for benchmarks only (`serve --tls-emulation`, `bench --mode tls-emulation`):
//! the Disk|Crypt|Net paper's way of measuring TLS's cost without handshakes. On plain HTTP
//! connections the response head goes in clear and the body follows as TLS 1.3
//! TLS_AES_128_GCM_SHA256 application-data records sealed with a fixed, public dummy key,
//! laid out and sealed in place exactly as on a real TLS connection. It protects nothing.
//!
//! Keys: the TLS 1.3 key schedule's last step (HKDF-Expand-Label "key"/"iv", SHA-256) over the
//! 32 ASCII bytes of [`SECRET`], which gives [`KEY`] and [`IV`]. Each response's records are
//! numbered from 0 (nonce = IV XOR seq), so any response opens on its own, without knowing
//! what came before it on the connection. Nonces repeat across responses and connections:
//! with a public key that costs nothing, and the work per byte is the same as with unique ones.
use super::handshake::RecordSession;
use super::keys::{AeadSuite, Keys, TrafficSecret};
use super::layout::{RecordFormat, ResponseLayout};
use super::record::{self, RecordError, RecordHeader, CONTENT_APPLICATION_DATA, HEADER_LEN};
use super::TlsError;

/// The dummy traffic secret (public: it is in the source and the docs).
pub const SECRET: &[u8; 32] = b"appliance --tls-emulation dummy!";
/// AES-128-GCM key and IV derived from [`SECRET`] (checked by a test), for clients in other
/// languages.
pub const KEY: [u8; 16] = [0xf5, 0x13, 0xa0, 0xf8, 0x5f, 0x52, 0xcc, 0x17, 0xed, 0x84, 0x43, 0x8d, 0xc8, 0xc0, 0xfb, 0x2f];
pub const IV: [u8; 12] = [0xb7, 0x85, 0xb7, 0xd9, 0xbe, 0x98, 0x82, 0x78, 0x97, 0x7b, 0x40, 0xca];
/// Response header that marks an emulated body (and names its cipher).
pub const HEADER_NAME: &str = "X-Tls-Emulation";
pub const HEADER_VALUE: &str = "aes-128-gcm";

/// The transmit (and, unused, receive) keys of [`SECRET`].
pub fn keys() -> Result<Keys, TlsError> {
    Keys::from_traffic_secret(&TrafficSecret::new(AeadSuite::Aes128Gcm, SECRET)?)
}

/// A record session over the dummy keys, for the server's in-place sealing (epoch 0).
pub fn session() -> Result<RecordSession, TlsError> {
    Ok(RecordSession::new(keys()?, None, 0, keys()?, None, 0))
}

/// The records of an emulated body of object bytes `[obj_off, obj_off + len)`: no head
/// record, sequence numbers from 0.
pub fn body_layout(obj_off: u64, len: u64) -> Result<ResponseLayout, TlsError> {
    ResponseLayout::new(RecordFormat::TLS13, 0, obj_off, len, 0).map_err(|_| TlsError::Malformed("emulated body range"))
}

/// Client side: opens an emulated body's records as they arrive (the benchmark's clients and
/// tests; allocates its buffer once).
pub struct BodyOpener {
    keys: Keys,
    seq: u64,
    buf: Vec<u8>,
}

impl BodyOpener {
    pub fn new() -> Result<BodyOpener, TlsError> {
        Ok(BodyOpener { keys: keys()?, seq: 0, buf: Vec::with_capacity(HEADER_LEN + record::MAX_TLS13_CIPHERTEXT) })
    }

    /// Feed wire bytes; `plain` gets each record's plaintext in order.
    pub fn feed(&mut self, mut data: &[u8], mut plain: impl FnMut(&[u8])) -> Result<(), RecordError> {
        while !data.is_empty() {
            let need = if self.buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                let h = RecordHeader::parse(self.buf[..HEADER_LEN].try_into().expect("5 bytes"));
                if h.len > record::MAX_TLS13_CIPHERTEXT {
                    return Err(RecordError::BadLength(h.len));
                }
                h.record_len()
            };
            let take = (need - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == need && need > HEADER_LEN {
                let opened = record::open_in_place(&self.keys, self.seq, &mut self.buf)?;
                if opened.content_type != CONTENT_APPLICATION_DATA {
                    return Err(RecordError::BadContentType(opened.content_type));
                }
                self.seq += 1;
                plain(&self.buf[opened.plaintext]);
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// No record is half received.
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn records(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_key_and_iv_are_the_derived_ones() {
        let mut key = [0u8; 16];
        super::super::keys::hkdf_expand_label(aws_lc_rs::hkdf::HKDF_SHA256, SECRET, b"key", b"", &mut key);
        let mut iv = [0u8; 12];
        super::super::keys::hkdf_expand_label(aws_lc_rs::hkdf::HKDF_SHA256, SECRET, b"iv", b"", &mut iv);
        assert_eq!((key, iv), (KEY, IV), "key {key:02x?} iv {iv:02x?}");
    }

    /// A record sealed by the server's path opens with the documented key and IV in an
    /// independent AES-GCM implementation (RustCrypto), as a client in another language would.
    #[test]
    fn a_sealed_record_opens_with_the_documented_key_elsewhere() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let keys = keys().unwrap();
        let mut hdr = [0u8; 5];
        let mut body = b"sixteen KiB of a video, say".to_vec();
        let mut trl = [0u8; record::TLS13_TRAILER_LEN];
        record::seal_in_place_split(&keys, 3, &mut hdr, &mut body, CONTENT_APPLICATION_DATA, &mut trl).unwrap();
        let mut nonce = IV;
        nonce[11] ^= 3;
        let mut inner = [&body[..], &trl[..1]].concat();
        aes_gcm::Aes128Gcm::new_from_slice(&KEY)
            .unwrap()
            .decrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &hdr, &mut inner, aes_gcm::Tag::from_slice(&trl[1..]))
            .expect("opens with KEY and IV");
        assert_eq!(&inner[..inner.len() - 1], b"sixteen KiB of a video, say");
        assert_eq!(inner[inner.len() - 1], CONTENT_APPLICATION_DATA);
    }

    /// The client's opener takes records in any split, numbers them from 0, and refuses a
    /// flipped bit.
    #[test]
    fn the_opener_reassembles_and_checks() {
        let keys = keys().unwrap();
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (seq, len) in [100usize, 16384, 1].into_iter().enumerate() {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + seq) as u8).collect();
            want.extend_from_slice(&plain);
            let mut body = plain.clone();
            let (mut hdr, mut trl) = ([0u8; 5], [0u8; record::TLS13_TRAILER_LEN]);
            record::seal_in_place_split(&keys, seq as u64, &mut hdr, &mut body, CONTENT_APPLICATION_DATA, &mut trl).unwrap();
            wire.extend_from_slice(&hdr);
            wire.extend_from_slice(&body);
            wire.extend_from_slice(&trl);
        }
        for split in [1usize, 3, 5, 1000, wire.len()] {
            let mut o = BodyOpener::new().unwrap();
            let mut got = Vec::new();
            for piece in wire.chunks(split) {
                o.feed(piece, |p| got.extend_from_slice(p)).unwrap();
            }
            assert!(o.at_boundary());
            assert_eq!(o.records(), 3);
            assert_eq!(got, want, "split {split}");
        }
        let mut bad = wire.clone();
        bad[50] ^= 1;
        assert_eq!(BodyOpener::new().unwrap().feed(&bad, |_| {}), Err(RecordError::BadMac));
    }
}
