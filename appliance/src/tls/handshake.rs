//! The TLS handshake, sans-IO, through rustls's unbuffered server API, and the record-layer
//! session the connection becomes once its traffic keys are handed to the fast path.
//!
//! Why the unbuffered API: it keeps no send or receive buffers of its own (we hand it ours, as
//! a poll-mode stack does), and it converts a finished handshake into its traffic keys with
//! `dangerous_into_kernel_connection` without the buffered API's deprecation path. rustls
//! does not give traffic *secrets* (only keys), yet TLS 1.3 KeyUpdate needs them: the
//! `ServerConfig` made here logs them through a [`rustls::KeyLog`] that hands them to the
//! driver running on the same thread, and [`RecordSession`] steps the key schedule itself.
use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{aws_lc_rs as provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ProtocolVersion, ServerConfig};

use super::keys::{AeadSuite, Keys, TlsVersion, TrafficSecret};
use super::record::{
    self, RecordHeader, CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, HEADER_LEN,
};
use super::TlsError;

/// Most handshake bytes buffered from the peer before the handshake completes (a ClientHello
/// record plus the client's second flight; rustls needs whole records).
pub const MAX_HANDSHAKE_INPUT: usize = 2 * (HEADER_LEN + record::MAX_TLS12_CIPHERTEXT);
/// Largest incoming record after the handshake.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + record::MAX_TLS12_CIPHERTEXT;
/// Wire length of a sealed KeyUpdate record (TLS 1.3: 4-byte message, type, tag).
pub const KEY_UPDATE_RECORD_LEN: usize = HEADER_LEN + 5 + 1 + record::TAG_LEN;
/// Enough for any alert record (TLS 1.2 has the larger overhead).
pub const ALERT_RECORD_LEN: usize =
    HEADER_LEN + record::TLS12_EXPLICIT_NONCE_LEN + 2 + record::TAG_LEN;

const ALERT_LEVEL_WARNING: u8 = 1;
const ALERT_LEVEL_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_NO_RENEGOTIATION: u8 = 100;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Session tickets sent after each TLS 1.3 handshake (as OpenSSL and rustls do by default):
/// a player that opens a second connection has one to resume with as well.
pub const TLS13_TICKETS: usize = 2;

/// Server configuration from PEM files: a certificate chain (leaf first) and an RSA, ECDSA or
/// Ed25519 private key (PKCS#8, PKCS#1 or SEC1). TLS 1.3 with AES-128-GCM preferred, then
/// AES-256-GCM and ChaCha20-Poly1305; TLS 1.2 with ECDHE AES-GCM; ALPN http/1.1; no 0-RTT;
/// session resumption by stateless tickets ([`TLS13_TICKETS`] after a TLS 1.3 handshake, one
/// in a TLS 1.2 one; [`without_resumption`] turns them off); secret extraction on. rustls
/// never renegotiates.
pub fn load_server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, key) = read_pem_files(cert_pem, key_pem)?;
    server_config(certs, key)
}

/// The certificate chain and private key of two PEM files, each file read once.
pub fn read_pem_files(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| match e {
            rustls::pki_types::pem::Error::Io(source) => TlsError::Io {
                path: path.clone(),
                source,
            },
            other => TlsError::BadPem {
                path: path.clone(),
                reason: format!("{other:?}"),
            },
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(io_err(cert_pem))?
        .collect::<Result<_, _>>()
        .map_err(io_err(cert_pem))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_pem.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::NoPrivateKey(key_pem.to_path_buf())
        }
        other => io_err(key_pem)(other),
    })?;
    Ok((certs, key))
}

/// As [`load_server_config`], from DER already in memory.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = CryptoProvider {
        cipher_suites: vec![
            provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
            provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..provider::default_provider()
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.enable_secret_extraction = true;
    config.ignore_client_order = true;
    config.max_early_data_size = 0;
    // Resumption state lives in the tickets alone (encrypted under keys of this config's
    // ticketer, made at start-up and rotated every 6 hours; a ticket is good for 12): no
    // session cache for the cores to share. A resumed handshake skips the certificate and
    // its signature; TLS 1.3 still runs a fresh key exchange (rustls offers only
    // psk_dhe_ke), so the traffic keys keep forward secrecy.
    config.ticketer = provider::Ticketer::new()?;
    config.send_tls13_tickets = TLS13_TICKETS;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.key_log = Arc::new(TrafficSecretCapture);
    Ok(Arc::new(config))
}

/// A configuration for new credentials that keeps `current`'s session tickets: its ticketer
/// (tickets issued before still resume) and how many it sends (none when they are off).
pub fn replacing(
    current: &ServerConfig,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(keeping_tickets(server_config(certs, key)?, current))
}

/// `config` with `current`'s ticketer and ticket count.
pub fn keeping_tickets(config: Arc<ServerConfig>, current: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = Arc::unwrap_or_clone(config);
    config.ticketer = current.ticketer.clone();
    config.send_tls13_tickets = current.send_tls13_tickets;
    Arc::new(config)
}

/// The same configuration with new session-ticket keys (a new ticketer): tickets issued under
/// `current`'s no longer resume; the certificate and ticket count stay.
pub fn with_new_ticket_keys(current: &ServerConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = current.clone();
    config.ticketer = provider::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// The same configuration with session resumption off (`serve --no-tls-tickets`): no tickets
/// issued, none accepted, every handshake a full one.
pub fn without_resumption(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = config.clone();
    config.ticketer = Arc::new(NoTickets);
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// A ticketer that issues and accepts nothing (rustls keeps its own private).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[derive(Default)]
struct CapturedSecrets {
    client: Option<Vec<u8>>,
    server: Option<Vec<u8>>,
}

thread_local! {
    // rustls calls the key log synchronously from inside process_tls_records, on the thread
    // of the driver that called it; the driver takes what was logged right after the call.
    static CAPTURED: RefCell<CapturedSecrets> = RefCell::new(CapturedSecrets::default());
}

/// Catches the TLS 1.3 application traffic secrets for the driver (never writes them out).
#[derive(Debug)]
struct TrafficSecretCapture;

impl rustls::KeyLog for TrafficSecretCapture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURED.with(|c| {
            let mut c = c.borrow_mut();
            match label {
                "CLIENT_TRAFFIC_SECRET_0" => c.client = Some(secret.to_vec()),
                "SERVER_TRAFFIC_SECRET_0" => c.server = Some(secret.to_vec()),
                _ => {}
            }
        });
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

/// Where a handshake stands after the bytes fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeProgress {
    /// Waiting for more bytes from the peer (send what [`HandshakeDriver::tx_read`] has).
    NeedMoreInput,
    /// Done: call [`HandshakeDriver::into_session`].
    Complete,
    /// The peer sent close_notify before the handshake finished.
    PeerClosed,
}

/// One server-side handshake: received TCP payload in, bytes to send out (kept, by stream
/// offset, until acknowledged, since the stack has no send buffer).
pub struct HandshakeDriver {
    conn: UnbufferedServerConnection,
    /// Received bytes rustls has not discarded yet. Grows with what the peer sends (a
    /// ClientHello is a few hundred bytes) up to `MAX_HANDSHAKE_INPUT`, so that thousands of
    /// handshakes under way do not each hold (and zero) the largest size.
    incoming: Vec<u8>,
    /// Handshake bytes not yet acknowledged; `outgoing[0]` is at stream offset `out_base`.
    outgoing: Vec<u8>,
    out_base: u64,
    /// Application data that arrived with the client's last flight, already decrypted.
    plaintext: Vec<u8>,
    client_secret: Option<Vec<u8>>,
    server_secret: Option<Vec<u8>>,
    complete: bool,
    failed: bool,
}

/// What the fast path takes over from a finished handshake.
pub struct Handover {
    pub session: RecordSession,
    /// Application data (the first request bytes) rustls already decrypted.
    pub early_plaintext: Vec<u8>,
    /// Handshake bytes still unacknowledged, starting at stream offset `handshake_tx_base`;
    /// the first fast-path record starts at `handshake_tx_base + handshake_tx.len()`.
    pub handshake_tx: Vec<u8>,
    pub handshake_tx_base: u64,
    /// The client resumed a session with a ticket (no certificate was sent).
    pub resumed: bool,
}

impl HandshakeDriver {
    pub fn new(config: Arc<ServerConfig>) -> Result<HandshakeDriver, TlsError> {
        Ok(HandshakeDriver {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::with_capacity(4096),
            out_base: 0,
            plaintext: Vec::new(),
            client_secret: None,
            server_secret: None,
            complete: false,
            failed: false,
        })
    }

    /// Feed TCP payload received from the peer and advance the handshake. On error the alert
    /// rustls produced (if any) is left in the output: send it, then close.
    pub fn receive(&mut self, tcp_payload: &[u8]) -> Result<HandshakeProgress, TlsError> {
        if self.failed {
            return Err(TlsError::Rustls(rustls::Error::General(
                "handshake already failed".into(),
            )));
        }
        if self.complete {
            // Bytes after completion belong to the record session: keep them for it.
            return self
                .buffer(tcp_payload)
                .map(|_| HandshakeProgress::Complete);
        }
        self.buffer(tcp_payload)?;
        let result = self.advance();
        self.take_captured();
        if result.is_err() {
            self.failed = true;
            self.flush_alert();
        }
        result
    }

    /// Keep `bytes` for the next step without running the handshake (see
    /// [`HandshakeDriver::receive`], which also runs it).
    pub fn buffer(&mut self, bytes: &[u8]) -> Result<(), TlsError> {
        let end = self.incoming.len() + bytes.len();
        if end > MAX_HANDSHAKE_INPUT {
            return Err(TlsError::HandshakeBufferFull(MAX_HANDSHAKE_INPUT));
        }
        if end > self.incoming.capacity() {
            // Powers of two, capped: never more than the largest input is reserved.
            let capacity = end.next_power_of_two().clamp(1024, MAX_HANDSHAKE_INPUT);
            self.incoming.reserve_exact(capacity - self.incoming.len());
        }
        self.incoming.extend_from_slice(bytes);
        Ok(())
    }

    fn take_captured(&mut self) {
        CAPTURED.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(s) = c.client.take() {
                self.client_secret = Some(s);
            }
            if let Some(s) = c.server.take() {
                self.server_secret = Some(s);
            }
        });
    }

    /// Run rustls until it needs more input or is done.
    fn advance(&mut self) -> Result<HandshakeProgress, TlsError> {
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming);
            let mut write_traffic = false;
            let mut blocked = false;
            let mut peer_closed = false;
            match state {
                Err(e) => {
                    drop_front(&mut self.incoming, discard);
                    return Err(e.into());
                }
                Ok(ConnectionState::EncodeTlsData(mut s)) => {
                    encode_into(&mut self.outgoing, |buf| s.encode(buf))?
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        discard += rec.discard;
                        self.plaintext.extend_from_slice(rec.payload);
                    }
                }
                Ok(ConnectionState::BlockedHandshake) => blocked = true,
                Ok(ConnectionState::WriteTraffic(_)) => write_traffic = true,
                Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => peer_closed = true,
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    return Err(TlsError::Rustls(rustls::Error::General(
                        "0-RTT data is not accepted".into(),
                    )))
                }
                Ok(_) => {
                    return Err(TlsError::Rustls(rustls::Error::General(
                        "unknown rustls state".into(),
                    )))
                }
            }
            drop_front(&mut self.incoming, discard);
            if peer_closed {
                return Ok(HandshakeProgress::PeerClosed);
            }
            if write_traffic && !self.conn.is_handshaking() {
                self.complete = true;
                return Ok(HandshakeProgress::Complete);
            }
            if write_traffic || blocked {
                // TLS 1.3 servers may write after their own Finished (0.5-RTT) but are not
                // done until the client's Finished arrives.
                return Ok(HandshakeProgress::NeedMoreInput);
            }
        }
    }

    /// After a failure rustls has queued one fatal alert (earlier output was already drained:
    /// rustls hands out queued records before it reads the next message). One call moves it
    /// to the output. rustls keeps offsets into the input across calls, so the same
    /// undiscarded bytes are passed; a further call would deframe the bad input again.
    fn flush_alert(&mut self) {
        let status = self
            .conn
            .process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut s)) = status.state {
            // The connection is being closed: failing to encode only loses the alert.
            let _ = encode_into(&mut self.outgoing, |buf| s.encode(buf));
        }
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Stream offset just past the last handshake byte produced.
    pub fn tx_end(&self) -> u64 {
        self.out_base + self.outgoing.len() as u64
    }

    /// Copy produced bytes from `stream_offset` into `out`; returns how many.
    pub fn tx_read(&self, stream_offset: u64, out: &mut [u8]) -> usize {
        if stream_offset < self.out_base || stream_offset >= self.tx_end() {
            return 0;
        }
        let from = (stream_offset - self.out_base) as usize;
        let n = out.len().min(self.outgoing.len() - from);
        out[..n].copy_from_slice(&self.outgoing[from..from + n]);
        n
    }

    /// The produced bytes from `stream_offset` on, in place (empty outside what is held).
    pub fn tx_bytes(&self, stream_offset: u64) -> &[u8] {
        if stream_offset < self.out_base || stream_offset >= self.tx_end() {
            return &[];
        }
        &self.outgoing[(stream_offset - self.out_base) as usize..]
    }

    /// The peer acknowledged everything below `stream_offset`.
    pub fn ack(&mut self, stream_offset: u64) {
        let upto = stream_offset.clamp(self.out_base, self.tx_end());
        self.outgoing.drain(..(upto - self.out_base) as usize);
        self.out_base = upto;
    }

    /// Negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The handshake resumed a session (known once it is complete).
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Hand the finished connection to the fast path.
    pub fn into_session(self) -> Result<Handover, TlsError> {
        if !self.complete {
            return Err(TlsError::HandshakeNotComplete);
        }
        let version = match self.conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
            Some(ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
            _ => return Err(TlsError::UnsupportedSuite),
        };
        let resumed = self.resumed();
        let (secrets, _kernel) = self.conn.dangerous_into_kernel_connection()?;
        let tx_keys = Keys::from_rustls(version, &secrets.tx.1)?;
        let rx_keys = Keys::from_rustls(version, &secrets.rx.1)?;
        let (tx_secret, rx_secret) = match version {
            TlsVersion::Tls13 => {
                let suite = tx_keys.suite();
                let server = self
                    .server_secret
                    .as_deref()
                    .ok_or(TlsError::SecretNotCaptured)?;
                let client = self
                    .client_secret
                    .as_deref()
                    .ok_or(TlsError::SecretNotCaptured)?;
                (
                    Some(TrafficSecret::new(suite, server)?),
                    Some(TrafficSecret::new(suite, client)?),
                )
            }
            TlsVersion::Tls12 => (None, None),
        };
        let mut session = RecordSession::new(
            tx_keys,
            tx_secret,
            secrets.tx.0,
            rx_keys,
            rx_secret,
            secrets.rx.0,
        );
        // Bytes that came after the last record rustls consumed (a partial record).
        session.receive(&self.incoming)?;
        Ok(Handover {
            session,
            early_plaintext: self.plaintext,
            handshake_tx: self.outgoing,
            handshake_tx_base: self.out_base,
            resumed,
        })
    }
}

fn drop_front(buf: &mut Vec<u8>, n: usize) {
    buf.drain(..n.min(buf.len()));
}

fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    let start = out.len();
    out.resize(start + 2048, 0);
    let n = match encode(&mut out[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(need)) => {
            out.resize(start + need.required_size, 0);
            match encode(&mut out[start..]) {
                Ok(n) => n,
                Err(e) => {
                    out.truncate(start);
                    return Err(TlsError::Rustls(rustls::Error::General(format!(
                        "encode: {e}"
                    ))));
                }
            }
        }
        Err(e) => {
            out.truncate(start);
            return Err(TlsError::Rustls(rustls::Error::General(format!(
                "encode: {e}"
            ))));
        }
    };
    out.truncate(start + n);
    Ok(())
}

/// Transmit keys of one epoch (TLS 1.3 KeyUpdate starts a new one, with seq from 0).
struct TxEpoch {
    epoch: u32,
    keys: Keys,
    secret: Option<TrafficSecret>,
}

/// What an incoming record carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Application data (request bytes).
    AppData(&'a [u8]),
    /// The peer closed its side (send our close_notify, then close).
    CloseNotify,
    /// A TLS 1.3 KeyUpdate: receive keys were rotated. If `update_requested`, call
    /// [`RecordSession::seal_key_update`] at the next record boundary.
    KeyUpdated { update_requested: bool },
    /// A TLS 1.2 renegotiation attempt, refused: send [`RecordSession::seal_alert`] with
    /// level warning and no_renegotiation, as rustls does.
    RenegotiationRefused,
    /// A warning alert other than close_notify (ignored).
    WarningAlert(u8),
}

/// Reassembly room for received records: two of the largest.
pub const RX_BUF_LEN: usize = 2 * MAX_RECORD_LEN;

/// The record layer of one connection after the handshake: receive side (reassembly,
/// opening, alerts, KeyUpdate) and the transmit keys by epoch. Transmit sequence numbers
/// belong to the caller (see [`super::layout::ResponseLayout`]).
pub struct RecordSession {
    version: TlsVersion,
    /// Current epoch and, until released, the one before it (for retransmissions).
    tx: [Option<TxEpoch>; 2],
    tx_seq_start: u64,
    rx_keys: Keys,
    rx_secret: Option<TrafficSecret>,
    rx_seq: u64,
    /// Empty (no allocation) while no record bytes are held: the owner may lend one
    /// ([`RecordSession::lend_rx_buf`]) and take it back when idle.
    rx_buf: Box<[u8]>,
    rx_len: usize,
    /// Bytes of the record opened last, to drop before the next one.
    rx_consumed: usize,
    key_update_requested: bool,
    peer_closed: bool,
    pub records_opened: u64,
}

impl RecordSession {
    /// Build from keys directly (the handshake uses this; tests and tools may too).
    pub fn new(
        tx_keys: Keys,
        tx_secret: Option<TrafficSecret>,
        tx_seq: u64,
        rx_keys: Keys,
        rx_secret: Option<TrafficSecret>,
        rx_seq: u64,
    ) -> RecordSession {
        RecordSession {
            version: tx_keys.version(),
            tx: [
                Some(TxEpoch {
                    epoch: 0,
                    keys: tx_keys,
                    secret: tx_secret,
                }),
                None,
            ],
            tx_seq_start: tx_seq,
            rx_keys,
            rx_secret,
            rx_seq,
            // Lent or allocated when a record arrives: an idle connection holds no buffer.
            rx_buf: Box::default(),
            rx_len: 0,
            rx_consumed: 0,
            key_update_requested: false,
            peer_closed: false,
            records_opened: 0,
        }
    }

    pub fn version(&self) -> TlsVersion {
        self.version
    }

    pub fn suite(&self) -> AeadSuite {
        self.rx_keys.suite()
    }

    /// The first sequence number the fast path may use under epoch 0 (where rustls stopped).
    pub fn tx_seq_start(&self) -> u64 {
        self.tx_seq_start
    }

    /// The current transmit epoch (0 until the first KeyUpdate we send).
    pub fn tx_epoch(&self) -> u32 {
        self.tx[0].as_ref().map_or(0, |e| e.epoch)
    }

    /// Keys of transmit epoch `epoch` (the current one, or the previous one until released).
    pub fn tx_keys(&self, epoch: u32) -> Result<&Keys, TlsError> {
        self.tx
            .iter()
            .flatten()
            .find(|e| e.epoch == epoch)
            .map(|e| &e.keys)
            .ok_or(TlsError::NoSuchEpoch(epoch))
    }

    /// Everything sealed under epochs before the current one is acknowledged: drop their keys.
    pub fn release_old_tx_epoch(&mut self) {
        self.tx[1] = None;
    }

    /// The peer asked us to update our keys (KeyUpdate with update_requested).
    pub fn key_update_requested(&self) -> bool {
        self.key_update_requested
    }

    /// Seal a KeyUpdate into `out` under the current epoch at `seq`, then switch to the next
    /// epoch (its records start at seq 0). The old epoch stays available for retransmissions
    /// (re-seal the same KeyUpdate with [`RecordSession::seal_record`] at the old epoch).
    /// Returns the wire length.
    pub fn seal_key_update(
        &mut self,
        seq: u64,
        request_peer_update: bool,
        out: &mut [u8],
    ) -> Result<usize, TlsError> {
        let current = self.tx[0].take().ok_or(TlsError::NoSuchEpoch(0))?;
        let result = (|| {
            let secret = current.secret.as_ref().ok_or(TlsError::KeyUpdateNotTls13)?;
            let msg = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(request_peer_update)];
            let n = record::seal_record_into(&current.keys, seq, CONTENT_HANDSHAKE, &msg, out)?;
            let next_secret = secret.next();
            let next = TxEpoch {
                epoch: current.epoch + 1,
                keys: Keys::from_traffic_secret(&next_secret)?,
                secret: Some(next_secret),
            };
            Ok((n, next))
        })();
        match result {
            Ok((n, next)) => {
                self.tx[1] = Some(current);
                self.tx[0] = Some(next);
                self.key_update_requested = false;
                Ok(n)
            }
            Err(e) => {
                self.tx[0] = Some(current);
                Err(e)
            }
        }
    }

    /// Seal a record of `content_type` from `plaintext` under `epoch` at `seq` into `out`.
    pub fn seal_record(
        &self,
        epoch: u32,
        seq: u64,
        content_type: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TlsError> {
        Ok(record::seal_record_into(
            self.tx_keys(epoch)?,
            seq,
            content_type,
            plaintext,
            out,
        )?)
    }

    /// Seal an alert record (`level` 1 warning, 2 fatal).
    pub fn seal_alert(
        &self,
        epoch: u32,
        seq: u64,
        level: u8,
        description: u8,
        out: &mut [u8],
    ) -> Result<usize, TlsError> {
        self.seal_record(epoch, seq, CONTENT_ALERT, &[level, description], out)
    }

    /// Seal our close_notify.
    pub fn seal_close_notify(
        &self,
        epoch: u32,
        seq: u64,
        out: &mut [u8],
    ) -> Result<usize, TlsError> {
        self.seal_alert(epoch, seq, ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY, out)
    }

    /// Seal the fatal alert matching a receive error (bad_record_mac, decode_error...).
    pub fn seal_fatal_alert_for(
        &self,
        error: &TlsError,
        epoch: u32,
        seq: u64,
        out: &mut [u8],
    ) -> Result<usize, TlsError> {
        let description = match error {
            TlsError::Record(e) => e.alert(),
            TlsError::Malformed(_) => 50,
            TlsError::UnexpectedContent(_) => 10,
            TlsError::HandshakeBufferFull(_) | TlsError::ReceiveBufferFull(_) => 22,
            _ => 80,
        };
        self.seal_alert(epoch, seq, ALERT_LEVEL_FATAL, description, out)
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Append received TCP payload (after the handshake) to the reassembly buffer.
    pub fn receive(&mut self, tcp_payload: &[u8]) -> Result<(), TlsError> {
        if tcp_payload.is_empty() {
            return Ok(());
        }
        self.compact();
        let end = self.rx_len + tcp_payload.len();
        if end > RX_BUF_LEN {
            return Err(TlsError::ReceiveBufferFull(RX_BUF_LEN));
        }
        if self.rx_buf.is_empty() {
            // Nobody lent one: allocate (tools and tests; the server lends from its pool).
            self.rx_buf = vec![0; RX_BUF_LEN].into_boxed_slice();
        }
        self.rx_buf[self.rx_len..end].copy_from_slice(tcp_payload);
        self.rx_len = end;
        Ok(())
    }

    /// Whether a reassembly buffer is held.
    pub fn has_rx_buf(&self) -> bool {
        !self.rx_buf.is_empty()
    }

    /// Hold `buf` (of [`RX_BUF_LEN`] bytes) for reassembly; ignored if one is held already.
    pub fn lend_rx_buf(&mut self, buf: Box<[u8]>) {
        if self.rx_buf.is_empty() && buf.len() == RX_BUF_LEN {
            self.rx_buf = buf;
        }
    }

    /// The reassembly buffer, if it holds no unopened bytes (the owner's pool takes it back).
    pub fn take_idle_rx_buf(&mut self) -> Option<Box<[u8]>> {
        if self.rx_buf.is_empty() || self.rx_len > self.rx_consumed {
            return None;
        }
        self.rx_len = 0;
        self.rx_consumed = 0;
        Some(std::mem::take(&mut self.rx_buf))
    }

    /// The reassembly buffer whatever it holds (the connection is gone).
    pub fn take_rx_buf(&mut self) -> Option<Box<[u8]>> {
        self.rx_len = 0;
        self.rx_consumed = 0;
        (!self.rx_buf.is_empty()).then(|| std::mem::take(&mut self.rx_buf))
    }

    /// Heap bytes held beside the struct: the reassembly buffer and the AEAD contexts.
    pub fn heap_bytes(&self) -> usize {
        self.rx_buf.len() + self.aead_context_bytes()
    }

    /// Bytes of the keys' AEAD contexts, which aws-lc allocates with C malloc (unseen by
    /// Rust's global allocator, so memory accounting adds them). Sleeping keys hold none.
    pub fn aead_context_bytes(&self) -> usize {
        self.all_keys().filter(|k| k.is_awake()).count() * super::keys::AEAD_CONTEXT_BYTES
    }

    fn all_keys(&self) -> impl Iterator<Item = &Keys> {
        self.tx.iter().flatten().map(|e| &e.keys).chain(std::iter::once(&self.rx_keys))
    }

    /// Build the AEAD contexts of every key held (the connection has work to do); returns
    /// how many were built (each a C allocation of [`super::keys::AEAD_CONTEXT_BYTES`]).
    pub fn wake_keys(&mut self) -> u32 {
        let tx = self.tx.iter_mut().flatten().map(|e| &mut e.keys);
        tx.chain(std::iter::once(&mut self.rx_keys)).map(|k| u32::from(k.wake())).sum()
    }

    /// Drop the AEAD contexts (the connection is idle): the raw keys stay.
    pub fn sleep_keys(&mut self) {
        self.tx.iter_mut().flatten().for_each(|e| e.keys.sleep());
        self.rx_keys.sleep();
    }

    pub fn keys_awake(&self) -> bool {
        self.all_keys().all(Keys::is_awake)
    }

    /// Seals and opens done with sleeping keys (each built a context for itself).
    pub fn cold_key_uses(&self) -> u64 {
        self.all_keys().map(|k| u64::from(k.cold_uses())).sum()
    }

    /// Free space in the reassembly buffer (what the TCP receive window may offer).
    pub fn rx_space(&self) -> usize {
        RX_BUF_LEN - self.rx_len + self.rx_consumed
    }

    fn compact(&mut self) {
        if self.rx_consumed > 0 {
            self.rx_buf.copy_within(self.rx_consumed..self.rx_len, 0);
            self.rx_len -= self.rx_consumed;
            self.rx_consumed = 0;
        }
    }

    /// Open the next complete record, if one is buffered. Any error is fatal for the
    /// connection: seal [`RecordSession::seal_fatal_alert_for`] and close.
    pub fn next_incoming(&mut self) -> Result<Option<Incoming<'_>>, TlsError> {
        self.compact();
        if self.peer_closed {
            return Err(TlsError::Closed);
        }
        if self.rx_len < HEADER_LEN {
            return Ok(None);
        }
        let header = RecordHeader::parse(
            self.rx_buf[..HEADER_LEN]
                .try_into()
                .expect("length checked"),
        );
        if header.record_len() > MAX_RECORD_LEN {
            return Err(record::RecordError::Overflow.into());
        }
        if self.rx_len < header.record_len() {
            return Ok(None);
        }
        let len = header.record_len();
        let opened = record::open_in_place(&self.rx_keys, self.rx_seq, &mut self.rx_buf[..len])?;
        self.rx_seq += 1;
        self.records_opened += 1;
        self.rx_consumed = len;
        let body = opened.plaintext.clone();
        match opened.content_type {
            CONTENT_APPLICATION_DATA => Ok(Some(Incoming::AppData(&self.rx_buf[body]))),
            CONTENT_ALERT => {
                let alert = &self.rx_buf[body];
                if alert.len() != 2 {
                    return Err(TlsError::Malformed("alert"));
                }
                let (level, description) = (alert[0], alert[1]);
                if description == ALERT_CLOSE_NOTIFY {
                    self.peer_closed = true;
                    Ok(Some(Incoming::CloseNotify))
                } else if level == ALERT_LEVEL_WARNING && self.version == TlsVersion::Tls12 {
                    Ok(Some(Incoming::WarningAlert(description)))
                } else {
                    // TLS 1.3: every alert but close_notify/user_canceled is fatal.
                    if self.version == TlsVersion::Tls13 && description == 90 {
                        return Ok(Some(Incoming::WarningAlert(description)));
                    }
                    Err(TlsError::PeerAlert(description))
                }
            }
            CONTENT_HANDSHAKE => {
                let (start, end) = (body.start, body.end);
                self.handshake_message(start, end)
            }
            other => Err(TlsError::UnexpectedContent(other)),
        }
    }

    /// Post-handshake handshake messages: KeyUpdate (TLS 1.3); a ClientHello (TLS 1.2
    /// renegotiation) is refused. Messages must not span records.
    fn handshake_message(
        &mut self,
        start: usize,
        end: usize,
    ) -> Result<Option<Incoming<'_>>, TlsError> {
        let msg = &self.rx_buf[start..end];
        if msg.len() < 4 {
            return Err(TlsError::Malformed("handshake message"));
        }
        let body_len = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
        if msg.len() != 4 + body_len {
            return Err(TlsError::Malformed(
                "handshake message (fragmented or coalesced)",
            ));
        }
        match (self.version, msg[0]) {
            (TlsVersion::Tls13, HANDSHAKE_KEY_UPDATE) => {
                let update_requested = match (body_len, msg.get(4)) {
                    (1, Some(0)) => false,
                    (1, Some(1)) => true,
                    _ => return Err(TlsError::Malformed("KeyUpdate")),
                };
                let secret = self
                    .rx_secret
                    .as_ref()
                    .ok_or(TlsError::KeyUpdateNotTls13)?
                    .next();
                self.rx_keys = Keys::from_traffic_secret(&secret)?;
                self.rx_secret = Some(secret);
                self.rx_seq = 0;
                if update_requested {
                    self.key_update_requested = true;
                }
                Ok(Some(Incoming::KeyUpdated { update_requested }))
            }
            (TlsVersion::Tls12, HANDSHAKE_CLIENT_HELLO) => Ok(Some(Incoming::RenegotiationRefused)),
            _ => Err(TlsError::UnexpectedContent(CONTENT_HANDSHAKE)),
        }
    }
}

/// Warning level and no_renegotiation, for [`Incoming::RenegotiationRefused`].
pub const NO_RENEGOTIATION_ALERT: (u8, u8) = (ALERT_LEVEL_WARNING, ALERT_NO_RENEGOTIATION);
