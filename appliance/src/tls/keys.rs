//! Traffic keys of one direction of a connection (AEAD key + static IV), and the TLS 1.3 key
//! schedule step this layer needs once rustls has handed the connection over: deriving key/IV
//! from a traffic secret and the next secret on KeyUpdate (RFC 8446 7.1-7.3), on aws-lc-rs;
//! and the ring context a chunk's records may be sealed with instead ([`BulkKey`]).
use aws_lc_rs::{aead, hkdf};
use rustls::ConnectionTrafficSecrets;

use super::choice::AeadImpl;
use super::TlsError;

/// Record protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The AEADs the fast path seals with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadSuite {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadSuite {
    pub fn key_len(self) -> usize {
        match self {
            AeadSuite::Aes128Gcm => 16,
            AeadSuite::Aes256Gcm | AeadSuite::ChaCha20Poly1305 => 32,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            AeadSuite::Aes128Gcm => &aead::AES_128_GCM,
            AeadSuite::Aes256Gcm => &aead::AES_256_GCM,
            AeadSuite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// The hash of the TLS 1.3 suite using this AEAD (TLS_AES_256_GCM_SHA384 is the only
    /// SHA-384 one).
    fn tls13_hkdf(self) -> hkdf::Algorithm {
        match self {
            AeadSuite::Aes256Gcm => hkdf::HKDF_SHA384,
            AeadSuite::Aes128Gcm | AeadSuite::ChaCha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    fn tls13_hash_len(self) -> usize {
        match self {
            AeadSuite::Aes256Gcm => 48,
            AeadSuite::Aes128Gcm | AeadSuite::ChaCha20Poly1305 => 32,
        }
    }
}

/// Heap bytes behind one [`Keys`]: aws-lc allocates its `EVP_AEAD_CTX` (584 bytes on 64-bit
/// targets: key schedule and GHASH table) with `OPENSSL_malloc`, which adds an 8-byte length
/// prefix. C allocations bypass Rust's global allocator, so memory accounting adds this.
pub const AEAD_CONTEXT_BYTES: usize = 584 + 8;

/// Key and IV of one direction: the nonce of record `seq` is `iv XOR seq` (TLS 1.3, and the
/// TLS 1.2 AES-GCM construction rustls uses: 4-byte salt + 8-byte nonce base).
///
/// The AEAD context (key schedule and GHASH table, [`AEAD_CONTEXT_BYTES`] in C) exists only
/// while the connection is busy: [`Keys::sleep`] drops it when the connection goes idle and
/// [`Keys::wake`] builds it again from the raw key, so that an idle connection holds 32 bytes
/// of key instead of a context. Sealing or opening with sleeping keys still works: it builds
/// a context for that one call (counted by [`Keys::cold_uses`]; the server wakes its keys
/// first so that this does not happen).
pub struct Keys {
    version: TlsVersion,
    suite: AeadSuite,
    raw: [u8; 32],
    iv: [u8; 12],
    key: Option<aead::LessSafeKey>,
    cold_uses: std::cell::Cell<u32>,
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.raw.fill(0);
        std::hint::black_box(&self.raw);
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keys")
            .field("version", &self.version)
            .field("suite", &self.suite)
            .finish()
    }
}

impl Keys {
    /// Keys from raw material. TLS 1.2 is supported with the AES-GCM suites only.
    pub fn new(
        version: TlsVersion,
        suite: AeadSuite,
        key: &[u8],
        iv: &[u8; 12],
    ) -> Result<Keys, TlsError> {
        if version == TlsVersion::Tls12 && suite == AeadSuite::ChaCha20Poly1305 {
            return Err(TlsError::UnsupportedSuite);
        }
        if key.len() != suite.key_len() {
            return Err(TlsError::BadKeyLength { suite, got: key.len() });
        }
        let mut raw = [0u8; 32];
        raw[..key.len()].copy_from_slice(key);
        let mut keys = Keys {
            version,
            suite,
            raw,
            iv: *iv,
            key: None,
            cold_uses: std::cell::Cell::new(0),
        };
        keys.wake();
        Ok(keys)
    }

    /// A context from the raw key (its length was checked when the keys were made).
    fn build(&self) -> aead::LessSafeKey {
        let key = &self.raw[..self.suite.key_len()];
        aead::LessSafeKey::new(
            aead::UnboundKey::new(self.suite.algorithm(), key).expect("key length checked in Keys::new"),
        )
    }

    /// Build the AEAD context if it was dropped; returns whether one was built.
    pub fn wake(&mut self) -> bool {
        if self.key.is_some() {
            return false;
        }
        self.key = Some(self.build());
        true
    }

    /// Drop the AEAD context (the raw key stays).
    pub fn sleep(&mut self) {
        self.key = None;
    }

    pub fn is_awake(&self) -> bool {
        self.key.is_some()
    }

    /// Seals or opens done while asleep, each with a context built for it alone.
    pub fn cold_uses(&self) -> u32 {
        self.cold_uses.get()
    }

    /// Keys as rustls hands them over (`ExtractedSecrets`).
    pub fn from_rustls(
        version: TlsVersion,
        secrets: &ConnectionTrafficSecrets,
    ) -> Result<Keys, TlsError> {
        let (suite, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (AeadSuite::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (AeadSuite::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (AeadSuite::ChaCha20Poly1305, key, iv)
            }
            _ => return Err(TlsError::UnsupportedSuite),
        };
        let iv: &[u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| TlsError::UnsupportedSuite)?;
        Keys::new(version, suite, key.as_ref(), iv)
    }

    /// TLS 1.3 keys of a traffic secret: key = HKDF-Expand-Label(secret, "key", "", key_len),
    /// iv = HKDF-Expand-Label(secret, "iv", "", 12).
    pub fn from_traffic_secret(secret: &TrafficSecret) -> Result<Keys, TlsError> {
        let suite = secret.suite;
        let mut key = [0u8; 32];
        let key = &mut key[..suite.key_len()];
        hkdf_expand_label(suite.tls13_hkdf(), secret.as_bytes(), b"key", b"", key);
        let mut iv = [0u8; 12];
        hkdf_expand_label(suite.tls13_hkdf(), secret.as_bytes(), b"iv", b"", &mut iv);
        Keys::new(TlsVersion::Tls13, suite, key, &iv)
    }

    pub fn version(&self) -> TlsVersion {
        self.version
    }

    pub fn suite(&self) -> AeadSuite {
        self.suite
    }

    /// The per-record nonce: iv XOR big-endian seq in the last 8 bytes.
    pub fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// Run `f` with the AEAD context: the kept one, or (asleep) one built for this call.
    pub(crate) fn with_aead<R>(&self, f: impl FnOnce(&aead::LessSafeKey) -> R) -> R {
        match &self.key {
            Some(key) => f(key),
            None => {
                self.cold_uses.set(self.cold_uses.get().saturating_add(1));
                f(&self.build())
            }
        }
    }

    /// First 4 bytes of the IV: the TLS 1.2 GCM salt.
    pub(crate) fn salt(&self) -> [u8; 4] {
        [self.iv[0], self.iv[1], self.iv[2], self.iv[3]]
    }
}

/// The AEAD a chunk's records are sealed with: the [`Keys`]' own context (aws-lc-rs), or a
/// ring context made from the same key for that chunk alone ([`Keys::bulk_key`]). Made on the
/// stack per chunk, it costs an AES key expansion and a GHASH table per 512 KiB and nothing
/// while the connection is idle.
#[allow(clippy::large_enum_variant)] // on the stack for one chunk: a Box would allocate per chunk
pub enum BulkKey {
    Keys,
    Ring(ring::aead::LessSafeKey),
}

impl Keys {
    /// What to seal a chunk's records with when `with` is the implementation chosen
    /// ([`super::choice`]): ring for the AES-GCM suites when it is; the keys' own otherwise
    /// (ChaCha20-Poly1305 stays on aws-lc-rs: the choice measures AES-128-GCM).
    pub fn bulk_key(&self, with: AeadImpl) -> BulkKey {
        let algorithm = match (with, self.suite) {
            (AeadImpl::AwsLcRs, _) | (_, AeadSuite::ChaCha20Poly1305) => return BulkKey::Keys,
            (AeadImpl::Ring, AeadSuite::Aes128Gcm) => &ring::aead::AES_128_GCM,
            (AeadImpl::Ring, AeadSuite::Aes256Gcm) => &ring::aead::AES_256_GCM,
        };
        match ring::aead::UnboundKey::new(algorithm, &self.raw[..self.suite.key_len()]) {
            Ok(key) => BulkKey::Ring(ring::aead::LessSafeKey::new(key)),
            // The length was checked when the keys were made; the keys' own AEAD seals the
            // same bytes.
            Err(_) => BulkKey::Keys,
        }
    }
}

/// A TLS 1.3 application traffic secret (32 or 48 bytes, by the suite's hash).
#[derive(Clone)]
pub struct TrafficSecret {
    suite: AeadSuite,
    bytes: [u8; 48],
}

impl std::fmt::Debug for TrafficSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficSecret")
            .field("suite", &self.suite)
            .finish()
    }
}

impl TrafficSecret {
    pub fn new(suite: AeadSuite, secret: &[u8]) -> Result<TrafficSecret, TlsError> {
        if secret.len() != suite.tls13_hash_len() {
            return Err(TlsError::BadKeyLength {
                suite,
                got: secret.len(),
            });
        }
        let mut bytes = [0u8; 48];
        bytes[..secret.len()].copy_from_slice(secret);
        Ok(TrafficSecret { suite, bytes })
    }

    pub fn suite(&self) -> AeadSuite {
        self.suite
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.suite.tls13_hash_len()]
    }

    /// The secret after a KeyUpdate: HKDF-Expand-Label(secret, "traffic upd", "", Hash.length).
    pub fn next(&self) -> TrafficSecret {
        let len = self.suite.tls13_hash_len();
        let mut bytes = [0u8; 48];
        hkdf_expand_label(
            self.suite.tls13_hkdf(),
            self.as_bytes(),
            b"traffic upd",
            b"",
            &mut bytes[..len],
        );
        TrafficSecret {
            suite: self.suite,
            bytes,
        }
    }
}

struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 7.1) filling `out` (at most 255 bytes, labels short).
pub fn hkdf_expand_label(
    alg: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) {
    const PREFIX: &[u8] = b"tls13 ";
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(PREFIX.len() + label.len()) as u8];
    let context_len = [context.len() as u8];
    let info: [&[u8]; 6] = [&length, &label_len, PREFIX, label, &context_len, context];
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    // Lengths here are at most 48 bytes, far below HKDF's 255 * HashLen bound, so expand
    // and fill cannot fail.
    let okm = prk
        .expand(&info, OutLen(out.len()))
        .expect("HKDF output length within bounds");
    okm.fill(out).expect("HKDF output length within bounds");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8448 section 3 (simple 1-RTT handshake): server application traffic secret and
    /// the key and IV derived from it.
    #[test]
    fn rfc8448_server_application_keys() {
        let secret = hex("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43");
        let mut key = [0u8; 16];
        hkdf_expand_label(hkdf::HKDF_SHA256, &secret, b"key", b"", &mut key);
        assert_eq!(
            key.to_vec(),
            hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56")
        );
        let mut iv = [0u8; 12];
        hkdf_expand_label(hkdf::HKDF_SHA256, &secret, b"iv", b"", &mut iv);
        assert_eq!(iv.to_vec(), hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84"));
    }

    /// RFC 8448 section 3: client application traffic secret -> key and IV.
    #[test]
    fn rfc8448_client_application_keys() {
        let secret = hex("9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5");
        let ts = TrafficSecret::new(AeadSuite::Aes128Gcm, &secret).unwrap();
        let keys = Keys::from_traffic_secret(&ts).unwrap();
        let mut key = [0u8; 16];
        hkdf_expand_label(hkdf::HKDF_SHA256, &secret, b"key", b"", &mut key);
        assert_eq!(
            key.to_vec(),
            hex("17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51")
        );
        assert_eq!(
            keys.nonce(0).to_vec(),
            hex("5b 78 92 3d ee 08 57 90 33 e5 23 d9")
        );
        // seq 1 flips the last bit of the IV.
        assert_eq!(
            keys.nonce(1).to_vec(),
            hex("5b 78 92 3d ee 08 57 90 33 e5 23 d8")
        );
    }

    #[test]
    fn traffic_update_matches_the_label_definition() {
        let secret = [7u8; 48];
        let ts = TrafficSecret::new(AeadSuite::Aes256Gcm, &secret).unwrap();
        let mut want = [0u8; 48];
        hkdf_expand_label(hkdf::HKDF_SHA384, &secret, b"traffic upd", b"", &mut want);
        assert_eq!(ts.next().as_bytes(), &want[..]);
        assert_ne!(ts.next().as_bytes(), ts.as_bytes());
        assert!(TrafficSecret::new(AeadSuite::Aes256Gcm, &[0u8; 32]).is_err());
    }

    #[test]
    fn tls12_chacha_is_refused_and_bad_key_length_is_typed() {
        assert!(matches!(
            Keys::new(
                TlsVersion::Tls12,
                AeadSuite::ChaCha20Poly1305,
                &[0; 32],
                &[0; 12]
            ),
            Err(TlsError::UnsupportedSuite)
        ));
        assert!(matches!(
            Keys::new(TlsVersion::Tls13, AeadSuite::Aes128Gcm, &[0; 15], &[0; 12]),
            Err(TlsError::BadKeyLength { .. })
        ));
    }
}
