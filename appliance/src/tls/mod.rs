//! TLS for the fast path, sans-IO: rustls runs the handshake ([`handshake`]), then the
//! connection's traffic keys move here and application-data records are sealed in place in the
//! buffers storage filled ([`record`]) at boundaries that are a pure function of the stream
//! offset ([`layout`]), so a retransmission re-seals to the same bytes. [`bench`](mod@bench) measures the
//! AEAD implementations this choice rests on.
pub mod bench;
pub mod certs;
pub mod choice;
pub mod emulation;
pub mod handshake;
pub mod keys;
pub mod layout;
pub mod record;

pub use handshake::{
    load_server_config, Handover, HandshakeDriver, HandshakeProgress, Incoming, RecordSession,
};
pub use choice::{AeadChoice, AeadImpl};
pub use keys::{AeadSuite, BulkKey, Keys, TlsVersion, TrafficSecret};
pub use layout::{RecordFormat, RecordPart, RecordSource, ResponseLayout};
pub use record::{
    open_in_place, seal_in_place, seal_in_place_split, seal_in_place_tls12, OpenedRecord,
    RecordError,
};

/// Errors of the TLS layer outside a single record's framing.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(std::path::PathBuf),
    #[error("no private key found in {0}")]
    NoPrivateKey(std::path::PathBuf),
    #[error("bad PEM in {path}: {reason}")]
    BadPem {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("record: {0}")]
    Record(#[from] RecordError),
    #[error("handshake buffer full: peer sent more than {0} bytes before the handshake completed")]
    HandshakeBufferFull(usize),
    #[error("receive buffer full: {0} bytes without a complete record")]
    ReceiveBufferFull(usize),
    #[error("handshake is not complete")]
    HandshakeNotComplete,
    #[error("negotiated an unsupported protocol version or cipher suite")]
    UnsupportedSuite,
    #[error("TLS 1.3 traffic secret was not captured (config not made by load_server_config?)")]
    SecretNotCaptured,
    #[error("bad key length {got} for {suite:?}")]
    BadKeyLength { suite: AeadSuite, got: usize },
    #[error("key update is only defined for TLS 1.3")]
    KeyUpdateNotTls13,
    #[error("peer sent a malformed {0}")]
    Malformed(&'static str),
    #[error("peer sent unexpected content type {0} after the handshake")]
    UnexpectedContent(u8),
    #[error("peer sent fatal alert {0}")]
    PeerAlert(u8),
    #[error("connection already closed by peer")]
    Closed,
    #[error("no transmit keys for epoch {0} (released or not yet made)")]
    NoSuchEpoch(u32),
    #[error("no room for its {0} in the core's slab")]
    NoRoom(&'static str),
}

impl TlsError {
    /// Short stable name of the failure, for per-reason counters (console `stats`).
    pub fn reason(&self) -> &'static str {
        match self {
            TlsError::Io { .. }
            | TlsError::NoCertificate(_)
            | TlsError::NoPrivateKey(_)
            | TlsError::BadPem { .. } => "config",
            TlsError::Rustls(rustls::Error::InvalidMessage(_)) => "malformed_handshake",
            TlsError::Rustls(rustls::Error::NoApplicationProtocol) => "no_alpn_match",
            TlsError::Rustls(rustls::Error::PeerIncompatible(_)) => "incompatible_peer",
            TlsError::Rustls(rustls::Error::AlertReceived(_)) => "peer_alert",
            TlsError::Rustls(rustls::Error::DecryptError) => "bad_mac",
            TlsError::Rustls(_) => "handshake",
            TlsError::Record(RecordError::BadMac) => "bad_mac",
            TlsError::Record(_) => "bad_record",
            TlsError::HandshakeBufferFull(_) | TlsError::ReceiveBufferFull(_) => "buffer_full",
            TlsError::HandshakeNotComplete => "not_complete",
            TlsError::UnsupportedSuite | TlsError::BadKeyLength { .. } => "unsupported_suite",
            TlsError::SecretNotCaptured => "secret_not_captured",
            TlsError::KeyUpdateNotTls13 | TlsError::NoSuchEpoch(_) => "key_update",
            TlsError::Malformed(_) | TlsError::UnexpectedContent(_) => "unexpected_message",
            TlsError::PeerAlert(_) => "peer_alert",
            TlsError::Closed => "closed",
            TlsError::NoRoom(_) => "no_room",
        }
    }
}

#[cfg(test)]
mod tests;
