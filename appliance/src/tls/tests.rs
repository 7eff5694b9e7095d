//! In-memory end to end: a real rustls client against the handshake driver, then records
//! sealed by the fast path at the layout's boundaries, read back by that client.
use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, SupportedCipherSuite};

use super::handshake::{
    Handover, HandshakeDriver, HandshakeProgress, Incoming, KEY_UPDATE_RECORD_LEN,
};
use super::layout::{RecordFormat, RecordSource, ResponseLayout};
use super::record::{seal_in_place, seal_in_place_tls12};
use super::*;

struct TestPki {
    dir: std::path::PathBuf,
    ca_der: CertificateDer<'static>,
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_pki(name: &str, rsa: bool) -> TestPki {
    let alg = if rsa {
        &rcgen::PKCS_RSA_SHA256
    } else {
        &rcgen::PKCS_ECDSA_P256_SHA256
    };
    let ca_key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(alg).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["appliance.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("appliance-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Chain: leaf then CA.
    std::fs::write(dir.join("cert.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    TestPki {
        dir,
        ca_der: ca.der().clone(),
    }
}

fn client_config(pki: &TestPki, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let version = match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        _ => &rustls::version::TLS12,
    };
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..provider::default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn client(pki: &TestPki, suite: SupportedCipherSuite) -> ClientConnection {
    client_of(&client_config(pki, suite))
}

/// A connection of `config`'s: connections of one config share its session store, so a
/// later one resumes with a ticket an earlier one received.
fn client_of(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(config.clone(), ServerName::try_from("appliance.test").unwrap()).unwrap()
}

/// Server bytes not yet given to the client, by stream offset, as the stack would pull them.
fn server_to_client(driver: &mut HandshakeDriver, sent: &mut u64, client: &mut ClientConnection) {
    let mut buf = vec![0u8; 1000]; // small pieces, like segments
    while *sent < driver.tx_end() {
        let n = driver.tx_read(*sent, &mut buf);
        client.read_tls(&mut &buf[..n]).unwrap();
        client.process_new_packets().unwrap();
        *sent += n as u64;
        driver.ack(*sent);
    }
}

fn client_output(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// Handshake in memory; the client has queued `request` before the handshake finished.
fn handshake(
    pki: &TestPki,
    suite: SupportedCipherSuite,
    request: &[u8],
) -> (ClientConnection, Handover) {
    let config = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    handshake_of(config, client(pki, suite), request)
}

/// As [`handshake`], with this server configuration and client connection.
fn handshake_of(
    config: Arc<rustls::ServerConfig>,
    mut client: ClientConnection,
    request: &[u8],
) -> (ClientConnection, Handover) {
    let mut driver = HandshakeDriver::new(config).unwrap();
    client.writer().write_all(request).unwrap();
    let mut sent = 0;
    for _ in 0..10 {
        let bytes = client_output(&mut client);
        // Feed in two pieces to exercise partial records.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let mut progress = driver.receive(a).unwrap();
        if !b.is_empty() {
            progress = driver.receive(b).unwrap();
        }
        server_to_client(&mut driver, &mut sent, &mut client);
        if progress == HandshakeProgress::Complete {
            assert_eq!(driver.alpn_protocol(), Some(&b"http/1.1"[..]));
            let handover = driver.into_session().unwrap();
            assert!(!client.is_handshaking());
            assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
            return (client, handover);
        }
    }
    panic!("handshake did not complete");
}

/// Seal a whole response per `layout` with the fast-path functions; returns its wire bytes.
fn seal_response(keys: &Keys, layout: &ResponseLayout, head: &[u8], object: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(layout.wire_len() as usize);
    for r in 0..layout.record_count() {
        wire.extend_from_slice(&seal_one(keys, layout, r, head, object));
    }
    assert_eq!(wire.len() as u64, layout.wire_len());
    wire
}

/// Record `r` sealed as the pipeline will: header, payload and tag in separate buffers.
fn seal_one(keys: &Keys, layout: &ResponseLayout, r: u64, head: &[u8], object: &[u8]) -> Vec<u8> {
    let source = layout.record_source(r);
    let plain = match source {
        RecordSource::Head { start, end } => &head[start as usize..end as usize],
        RecordSource::Body {
            object_start,
            object_end,
        } => &object[object_start as usize..object_end as usize],
    };
    let mut payload = plain.to_vec();
    let mut tag = [0u8; 16];
    let mut out = Vec::new();
    match keys.version() {
        TlsVersion::Tls13 if matches!(source, RecordSource::Body { .. }) => {
            // Body records as storage fills them: the payload buffer holds content only.
            let (mut header, mut trailer) = ([0u8; 5], [0u8; record::TLS13_TRAILER_LEN]);
            record::seal_in_place_split(
                keys,
                layout.seq(r),
                &mut header,
                &mut payload,
                23,
                &mut trailer,
            )
            .unwrap();
            out.extend_from_slice(&header);
            out.extend_from_slice(&payload);
            out.extend_from_slice(&trailer);
            assert_eq!(
                out.len() as u64,
                layout.record_wire_range(r).end - layout.record_wire_range(r).start
            );
            return out;
        }
        TlsVersion::Tls13 => {
            payload.push(23);
            let mut header = [0u8; 5];
            seal_in_place(keys, layout.seq(r), &mut header, &mut payload, &mut tag).unwrap();
            out.extend_from_slice(&header);
        }
        TlsVersion::Tls12 => {
            let mut header = [0u8; 13];
            seal_in_place_tls12(keys, layout.seq(r), 23, &mut header, &mut payload, &mut tag)
                .unwrap();
            out.extend_from_slice(&header);
        }
    }
    out.extend_from_slice(&payload);
    out.extend_from_slice(&tag);
    assert_eq!(
        out.len() as u64,
        layout.record_wire_range(r).end - layout.record_wire_range(r).start
    );
    out
}

fn client_reads_all(client: &mut ClientConnection, wire: &[u8], expect: &[u8]) {
    let mut got = Vec::new();
    for chunk in wire.chunks(1448) {
        client.read_tls(&mut &chunk[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            match client.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "client read different bytes");
}

fn object(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0])
        .collect()
}

const REQUEST: &[u8] = b"GET /video.ts HTTP/1.1\r\nHost: appliance.test\r\n\r\n";

fn full_exchange(pki: &TestPki, suite: SupportedCipherSuite, version: TlsVersion) {
    let (client, handover) = handshake(pki, suite, REQUEST);
    assert!(!handover.resumed);
    exchange(client, handover, version);
}

/// After a handshake that carried [`REQUEST`]: the request read, two pipelined responses
/// sealed by the fast path and read byte-exact by the client, a second request, close_notify
/// both ways.
fn exchange(mut client: ClientConnection, handover: Handover, version: TlsVersion) {
    let request = REQUEST;
    let mut session = handover.session;
    assert_eq!(session.version(), version);
    // TLS 1.3 clients send the request with their Finished: rustls decrypts it if it came in
    // the same read, else the session opens it; TLS 1.2 clients send it after the server's
    // Finished (the session opens it).
    let mut got = handover.early_plaintext.clone();
    session.receive(&client_output(&mut client)).unwrap();
    while let Some(Incoming::AppData(d)) = session.next_incoming().unwrap() {
        got.extend_from_slice(d);
    }
    assert_eq!(got, request.to_vec());

    // Two pipelined responses: a 1 MB body from object offset 5000, then a small one; the
    // second continues the connection's record count.
    let object = object(1_200_000);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
    let format = RecordFormat::for_version(version);
    let keys = session.tx_keys(0).unwrap();
    let first =
        ResponseLayout::new(format, head.len(), 5000, 1_000_000, session.tx_seq_start()).unwrap();
    let wire1 = seal_response(keys, &first, head, &object);
    let second =
        ResponseLayout::new(format, 0, 16384 * 3 + 1, 20_000, first.next_seq_base()).unwrap();
    let wire2 = seal_response(keys, &second, head, &object);
    let mut expect = head.to_vec();
    expect.extend_from_slice(&object[5000..1_005_000]);
    expect.extend_from_slice(&object[16384 * 3 + 1..16384 * 3 + 1 + 20_000]);
    let mut wire = wire1.clone();
    wire.extend_from_slice(&wire2);
    // Retransmission: re-sealing any record with its seq gives the same bytes.
    for r in [0, 1, 2, first.record_count() - 1] {
        let range = first.record_wire_range(r);
        assert_eq!(
            seal_one(keys, &first, r, head, &object),
            wire1[range.start as usize..range.end as usize]
        );
    }
    client_reads_all(&mut client, &wire, &expect);

    // A second request from the client is opened by the session.
    client
        .writer()
        .write_all(b"GET /next HTTP/1.1\r\n\r\n")
        .unwrap();
    session.receive(&client_output(&mut client)).unwrap();
    assert_eq!(
        session.next_incoming().unwrap(),
        Some(Incoming::AppData(&b"GET /next HTTP/1.1\r\n\r\n"[..]))
    );
    assert_eq!(session.next_incoming().unwrap(), None);

    // close_notify both ways.
    let mut seq = second.next_seq_base();
    let mut alert = [0u8; 64];
    let n = session.seal_close_notify(0, seq, &mut alert).unwrap();
    seq += 1;
    let _ = seq;
    client.read_tls(&mut &alert[..n]).unwrap();
    let state = client.process_new_packets().unwrap();
    assert!(state.peer_has_closed());
    client.send_close_notify();
    session.receive(&client_output(&mut client)).unwrap();
    assert_eq!(
        session.next_incoming().unwrap(),
        Some(Incoming::CloseNotify)
    );
    assert!(session.peer_closed());
}

#[test]
fn tls13_aes128_ecdsa_end_to_end() {
    let pki = make_pki("t13-128", false);
    full_exchange(
        &pki,
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        TlsVersion::Tls13,
    );
}

#[test]
fn tls13_aes256_rsa_end_to_end() {
    let pki = make_pki("t13-256", true);
    full_exchange(
        &pki,
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        TlsVersion::Tls13,
    );
}

#[test]
fn tls13_chacha_end_to_end() {
    let pki = make_pki("t13-chacha", false);
    full_exchange(
        &pki,
        provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        TlsVersion::Tls13,
    );
}

#[test]
fn tls12_ecdhe_ecdsa_aes128_end_to_end() {
    let pki = make_pki("t12-ecdsa", false);
    full_exchange(
        &pki,
        provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TlsVersion::Tls12,
    );
}

#[test]
fn tls12_ecdhe_rsa_aes256_end_to_end() {
    let pki = make_pki("t12-rsa", true);
    full_exchange(
        &pki,
        provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TlsVersion::Tls12,
    );
}

/// A client comes back with a ticket from its first connection: the second handshake is a
/// resumption on both sides, and the fast path's records (after the tickets rustls sealed
/// under the same keys) read byte-exact.
fn resumption(name: &str, suite: SupportedCipherSuite, version: TlsVersion) {
    let pki = make_pki(name, false);
    let server = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    let clients = client_config(&pki, suite);
    let (first, handover) = handshake_of(server.clone(), client_of(&clients), REQUEST);
    assert!(!handover.resumed, "the first handshake is a full one");
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // TLS 1.3 sends its tickets after the handshake, in one record sealed under the traffic
    // keys: the fast path's first record follows it.
    if version == TlsVersion::Tls13 {
        assert_eq!(handover.session.tx_seq_start(), 1);
    }
    exchange(first, handover, version);
    for _ in 0..2 {
        let (again, handover) = handshake_of(server.clone(), client_of(&clients), REQUEST);
        assert!(handover.resumed, "the client came back with a ticket");
        assert_eq!(again.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        exchange(again, handover, version);
    }
}

#[test]
fn tls13_session_resumed_with_a_ticket() {
    resumption("resume13", provider::cipher_suite::TLS13_AES_128_GCM_SHA256, TlsVersion::Tls13);
}

#[test]
fn tls12_session_resumed_with_a_ticket() {
    resumption(
        "resume12",
        provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TlsVersion::Tls12,
    );
}

#[test]
fn tickets_off_or_from_another_server_make_full_handshakes() {
    let pki = make_pki("no-resume", false);
    let server = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    // A restarted server: same certificate, new ticket keys.
    let restarted = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    let off = handshake::without_resumption(&server);
    for (suite, version) in [
        (provider::cipher_suite::TLS13_AES_128_GCM_SHA256, TlsVersion::Tls13),
        (provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TlsVersion::Tls12),
    ] {
        let clients = client_config(&pki, suite);
        let (first, handover) = handshake_of(server.clone(), client_of(&clients), REQUEST);
        exchange(first, handover, version);
        for other in [&restarted, &off] {
            let (again, handover) = handshake_of(other.clone(), client_of(&clients), REQUEST);
            assert!(!handover.resumed, "{version:?}: a ticket the server cannot read is not resumed");
            assert_eq!(again.handshake_kind(), Some(rustls::HandshakeKind::Full));
            exchange(again, handover, version);
        }
        // Without tickets none is issued: the fast path's first TLS 1.3 record is the first
        // under the traffic keys (TLS 1.2's first is the server's Finished).
        let (fresh, handover) = handshake_of(off.clone(), client(&pki, suite), REQUEST);
        let first_seq = u64::from(version == TlsVersion::Tls12);
        assert_eq!(handover.session.tx_seq_start(), first_seq);
        exchange(fresh, handover, version);
        let (again, handover) = handshake_of(off.clone(), client_of(&clients), REQUEST);
        assert!(!handover.resumed);
        exchange(again, handover, version);
    }
}

#[test]
fn server_prefers_aes128_gcm() {
    let pki = make_pki("prefer", false);
    let (client, handover) =
        handshake(&pki, provider::cipher_suite::TLS13_AES_128_GCM_SHA256, b"x");
    assert_eq!(handover.session.suite(), AeadSuite::Aes128Gcm);
    drop(client);
    // A client offering all suites, ChaCha first, still gets AES-128-GCM.
    let config = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    let mut driver = HandshakeDriver::new(config).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let mut p = provider::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    let config = ClientConfig::builder_with_provider(Arc::new(p))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("appliance.test").unwrap(),
    )
    .unwrap();
    let mut sent = 0;
    for _ in 0..5 {
        let bytes = client_output(&mut client);
        let progress = driver.receive(&bytes).unwrap();
        server_to_client(&mut driver, &mut sent, &mut client);
        if progress == HandshakeProgress::Complete {
            break;
        }
    }
    assert_eq!(
        client.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[test]
fn corrupted_records_are_rejected_both_ways() {
    let pki = make_pki("corrupt", false);
    let (mut client, handover) = handshake(
        &pki,
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let mut session = handover.session;
    // Client -> server: a flipped ciphertext bit is a bad MAC, and the session has the
    // alert to send for it.
    client
        .writer()
        .write_all(b"GET /a HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut bytes = client_output(&mut client);
    bytes[10] ^= 0x80;
    session.receive(&bytes).unwrap();
    let err = session.next_incoming().unwrap_err();
    assert!(
        matches!(err, TlsError::Record(record::RecordError::BadMac)),
        "{err:?}"
    );
    let mut alert = [0u8; 64];
    let n = session
        .seal_fatal_alert_for(&err, 0, session.tx_seq_start(), &mut alert)
        .unwrap();
    assert!(n > 0);

    // Server -> client: the rustls client refuses a corrupted record.
    let layout =
        ResponseLayout::new(RecordFormat::TLS13, 0, 0, 3000, session.tx_seq_start()).unwrap();
    let mut wire = seal_response(session.tx_keys(0).unwrap(), &layout, b"", &object(3000));
    wire[100] ^= 1;
    client.read_tls(&mut &wire[..]).unwrap();
    assert!(client.process_new_packets().is_err());
}

#[test]
fn record_with_wrong_seq_is_rejected_by_client() {
    let pki = make_pki("seq", false);
    let (mut client, handover) =
        handshake(&pki, provider::cipher_suite::TLS13_AES_128_GCM_SHA256, b"x");
    let session = handover.session;
    let layout =
        ResponseLayout::new(RecordFormat::TLS13, 0, 0, 100, session.tx_seq_start() + 1).unwrap();
    let wire = seal_response(session.tx_keys(0).unwrap(), &layout, b"", &object(100));
    client.read_tls(&mut &wire[..]).unwrap();
    assert!(client.process_new_packets().is_err());
}

#[test]
fn client_key_update_is_honoured() {
    for suite in [
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ] {
        let pki = make_pki("keyupdate", false);
        let (mut client, handover) = handshake(&pki, suite, b"GET / HTTP/1.1\r\n\r\n");
        let mut session = handover.session;
        let format = RecordFormat::TLS13;
        let object = object(100_000);

        // Some data under the first keys.
        let first = ResponseLayout::new(format, 0, 0, 40_000, session.tx_seq_start()).unwrap();
        let wire = seal_response(session.tx_keys(0).unwrap(), &first, b"", &object);
        client_reads_all(&mut client, &wire, &object[..40_000]);

        // The client rotates its keys and asks us to rotate ours; its next request uses the
        // new keys, which the session derives itself.
        client.refresh_traffic_keys().unwrap();
        client
            .writer()
            .write_all(b"GET /after HTTP/1.1\r\n\r\n")
            .unwrap();
        session.receive(&client_output(&mut client)).unwrap();
        assert_eq!(
            session.next_incoming().unwrap(),
            Some(Incoming::KeyUpdated {
                update_requested: true
            })
        );
        assert!(session.key_update_requested());
        assert_eq!(
            session.next_incoming().unwrap(),
            Some(Incoming::AppData(&b"GET /after HTTP/1.1\r\n\r\n"[..]))
        );

        // Our KeyUpdate at the next record boundary, then the next response under epoch 1
        // from seq 0. Re-sealing the KeyUpdate under epoch 0 gives the same bytes.
        let ku_seq = first.next_seq_base();
        let mut ku = [0u8; KEY_UPDATE_RECORD_LEN];
        let n = session.seal_key_update(ku_seq, false, &mut ku).unwrap();
        assert_eq!(n, KEY_UPDATE_RECORD_LEN);
        assert_eq!(session.tx_epoch(), 1);
        assert!(!session.key_update_requested());
        let mut again = [0u8; KEY_UPDATE_RECORD_LEN];
        session
            .seal_record(0, ku_seq, 22, &[24, 0, 0, 1, 0], &mut again)
            .unwrap();
        assert_eq!(ku, again);
        let second = ResponseLayout::new(format, 0, 40_000, 60_000, 0).unwrap();
        let mut wire = ku.to_vec();
        wire.extend_from_slice(&seal_response(
            session.tx_keys(1).unwrap(),
            &second,
            b"",
            &object,
        ));
        client_reads_all(&mut client, &wire, &object[40_000..]);
        // Old epoch kept until released.
        assert!(session.tx_keys(0).is_ok());
        session.release_old_tx_epoch();
        assert!(matches!(session.tx_keys(0), Err(TlsError::NoSuchEpoch(0))));

        // A second client KeyUpdate without request: receive keys move again, ours stay.
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"again").unwrap();
        session.receive(&client_output(&mut client)).unwrap();
        // rustls always sets update_requested; the receive side must keep following.
        assert!(matches!(
            session.next_incoming().unwrap(),
            Some(Incoming::KeyUpdated { .. })
        ));
        assert_eq!(
            session.next_incoming().unwrap(),
            Some(Incoming::AppData(&b"again"[..]))
        );
    }
}

#[test]
fn plain_http_to_tls_port_fails_the_handshake_with_an_alert() {
    let pki = make_pki("plain", false);
    let config = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    let mut driver = HandshakeDriver::new(config).unwrap();
    let err = driver
        .receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_err();
    assert!(matches!(err, TlsError::Rustls(_)), "{err:?}");
    assert_eq!(err.reason(), "malformed_handshake", "{err:?}");
    assert!(driver.tx_end() > 0, "an alert is queued for the peer");
    let mut alert = [0u8; 16];
    let n = driver.tx_read(0, &mut alert);
    assert_eq!(alert[0], 21, "alert record: {:?}", &alert[..n]);
    assert!(driver.receive(b"more").is_err());
}

#[test]
fn a_handshake_message_larger_than_the_input_bound_ends_the_handshake() {
    // A ClientHello announced at 60,000 bytes, sent in full 16 KiB records: rustls keeps
    // every fragment until the message is whole, so the input grows to its bound and the
    // next record is refused instead of buffered.
    let pki = make_pki("bound", false);
    let config = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    let mut driver = HandshakeDriver::new(config).unwrap();
    let record = |first: bool| {
        let mut r = vec![22u8, 3, 1, 0x40, 0x00];
        let mut body = vec![0u8; 16384];
        if first {
            body[..4].copy_from_slice(&[1, 0x00, 0xea, 0x60]);
        }
        r.extend_from_slice(&body);
        r
    };
    let mut outcome = Ok(HandshakeProgress::NeedMoreInput);
    let mut fed = 0;
    for i in 0..4 {
        outcome = driver.receive(&record(i == 0));
        fed += 1;
        if outcome.is_err() {
            break;
        }
        assert_eq!(outcome.as_ref().ok(), Some(&HandshakeProgress::NeedMoreInput));
    }
    let err = outcome.unwrap_err();
    assert!(matches!(err, TlsError::HandshakeBufferFull(n) if n == handshake::MAX_HANDSHAKE_INPUT), "{err:?}");
    assert_eq!(err.reason(), "buffer_full");
    assert_eq!(fed, 3, "two records fit within the bound, the third does not");
}

#[test]
fn pem_errors_are_typed() {
    let pki = make_pki("pem", false);
    let missing = pki.dir.join("missing.pem");
    assert!(matches!(
        load_server_config(&missing, &pki.dir.join("key.pem")),
        Err(TlsError::Io { .. })
    ));
    // A key file where a certificate should be, and vice versa.
    assert!(matches!(
        load_server_config(&pki.dir.join("key.pem"), &pki.dir.join("key.pem")),
        Err(TlsError::NoCertificate(_))
    ));
    assert!(matches!(
        load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("cert.pem")),
        Err(TlsError::NoPrivateKey(_))
    ));
}

/// A session and a peer that seals with its receive keys (same raw material).
fn session_pair(version: TlsVersion) -> (handshake::RecordSession, handshake::RecordSession) {
    let suite = AeadSuite::Aes128Gcm;
    let a = ([1u8; 16], [2u8; 12]);
    let b = ([3u8; 16], [4u8; 12]);
    let secret = |s: u8| {
        (version == TlsVersion::Tls13).then(|| TrafficSecret::new(suite, &[s; 32]).unwrap())
    };
    let keys = |k: &([u8; 16], [u8; 12]), s: u8| match version {
        TlsVersion::Tls13 => Keys::from_traffic_secret(&secret(s).unwrap()).unwrap(),
        TlsVersion::Tls12 => Keys::new(version, suite, &k.0, &k.1).unwrap(),
    };
    let server =
        handshake::RecordSession::new(keys(&a, 1), secret(1), 0, keys(&b, 2), secret(2), 0);
    let peer = handshake::RecordSession::new(keys(&b, 2), secret(2), 0, keys(&a, 1), secret(1), 0);
    (server, peer)
}

fn peer_record(
    peer: &handshake::RecordSession,
    seq: u64,
    content_type: u8,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; plaintext.len() + 64];
    let n = peer
        .seal_record(0, seq, content_type, plaintext, &mut out)
        .unwrap();
    out.truncate(n);
    out
}

#[test]
fn session_refuses_renegotiation_and_reports_alerts() {
    let (mut server, peer) = session_pair(TlsVersion::Tls12);
    server
        .receive(&peer_record(&peer, 0, 22, &[1, 0, 0, 2, 3, 3]))
        .unwrap();
    assert_eq!(
        server.next_incoming().unwrap(),
        Some(Incoming::RenegotiationRefused)
    );
    server
        .receive(&peer_record(&peer, 1, 21, &[1, 90]))
        .unwrap();
    assert_eq!(
        server.next_incoming().unwrap(),
        Some(Incoming::WarningAlert(90))
    );
    // Records may arrive a byte at a time.
    for b in peer_record(&peer, 2, 23, b"split") {
        assert_eq!(server.next_incoming().unwrap(), None);
        server.receive(&[b]).unwrap();
    }
    assert_eq!(
        server.next_incoming().unwrap(),
        Some(Incoming::AppData(&b"split"[..]))
    );
    server
        .receive(&peer_record(&peer, 3, 21, &[2, 40]))
        .unwrap();
    assert!(matches!(
        server.next_incoming(),
        Err(TlsError::PeerAlert(40))
    ));
    assert!(matches!(
        server.seal_key_update(0, false, &mut [0u8; 64]),
        Err(TlsError::KeyUpdateNotTls13)
    ));
}

#[test]
fn session_rejects_malformed_post_handshake_messages() {
    for (content_type, body, what) in [
        (22u8, &[24u8, 0, 0, 1, 2][..], "bad KeyUpdate value"),
        (22, &[24, 0, 0, 2, 0, 0][..], "KeyUpdate too long"),
        (22, &[24, 0, 0][..], "truncated header"),
        (22, &[4, 0, 0, 0][..], "NewSessionTicket from a client"),
        (21, &[1][..], "short alert"),
    ] {
        let (mut server, peer) = session_pair(TlsVersion::Tls13);
        server
            .receive(&peer_record(&peer, 0, content_type, body))
            .unwrap();
        assert!(server.next_incoming().is_err(), "{what}");
    }
    // An oversized record header is refused before its body arrives.
    let (mut server, _) = session_pair(TlsVersion::Tls13);
    server.receive(&[23, 3, 3, 0xff, 0xff]).unwrap();
    assert!(matches!(
        server.next_incoming(),
        Err(TlsError::Record(record::RecordError::Overflow))
    ));
    // A peer flooding the receive buffer without completing a record gets a typed error.
    let (mut server, _) = session_pair(TlsVersion::Tls13);
    let junk = vec![0u8; 4096];
    let mut result = Ok(());
    for _ in 0..100 {
        result = server.receive(&junk);
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(TlsError::ReceiveBufferFull(_))));
}

#[test]
fn session_key_update_round_trip_between_two_sessions() {
    let (mut server, mut peer) = session_pair(TlsVersion::Tls13);
    let mut ku = [0u8; KEY_UPDATE_RECORD_LEN];
    peer.seal_key_update(0, true, &mut ku).unwrap();
    server.receive(&ku).unwrap();
    assert_eq!(
        server.next_incoming().unwrap(),
        Some(Incoming::KeyUpdated {
            update_requested: true
        })
    );
    let mut out = [0u8; 64];
    let n = peer.seal_record(1, 0, 23, b"new keys", &mut out).unwrap();
    server.receive(&out[..n]).unwrap();
    assert_eq!(
        server.next_incoming().unwrap(),
        Some(Incoming::AppData(&b"new keys"[..]))
    );
    // The same record under the old epoch is refused now.
    let n = peer.seal_record(0, 1, 23, b"old keys", &mut out).unwrap();
    server.receive(&out[..n]).unwrap();
    assert!(matches!(
        server.next_incoming(),
        Err(TlsError::Record(record::RecordError::BadMac))
    ));
}

/// The handshake driver and record session behind a loopback TCP socket, against the real
/// `openssl s_client` (needs `apt-get install openssl`): negotiates the given suite, gets a
/// response sealed by the fast path, and (TLS 1.3) a client KeyUpdate ("K" command) is
/// honoured with our own KeyUpdate before the second response.
fn openssl_s_client_exchange(
    rsa: bool,
    version_args: &[&str],
    key_update: bool,
    expect_cipher: &str,
) {
    use std::net::TcpListener;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let pki = make_pki(&format!("openssl-{expect_cipher}"), rsa);
    std::fs::write(pki.dir.join("ca.pem"), pem_of(&pki.ca_der)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "appliance.test",
        ])
        .args([
            "-CAfile",
            pki.dir.join("ca.pem").to_str().unwrap(),
            "-verify_return_error",
            "-alpn",
            "http/1.1",
        ])
        .args(version_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client runs (apt-get install openssl)");
    let mut stdin = child.stdin.take().unwrap();
    // Drain s_client's output while it runs (a full pipe would stall it).
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout_reader = drain(Box::new(child.stdout.take().unwrap()));
    let stderr_reader = drain(Box::new(child.stderr.take().unwrap()));
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 65536];
    let mut read = |sock: &mut std::net::TcpStream| -> Vec<u8> {
        assert!(Instant::now() < deadline, "openssl exchange timed out");
        match sock.read(&mut buf) {
            Ok(0) => panic!("s_client closed early"),
            Ok(n) => buf[..n].to_vec(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Vec::new()
            }
            Err(e) => panic!("read: {e}"),
        }
    };

    // Handshake.
    let config = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    let mut driver = HandshakeDriver::new(config).unwrap();
    let mut sent = 0u64;
    loop {
        let bytes = read(&mut sock);
        let progress = driver.receive(&bytes).unwrap();
        let mut out = vec![0u8; (driver.tx_end() - sent) as usize];
        let n = driver.tx_read(sent, &mut out);
        sock.write_all(&out[..n]).unwrap();
        sent += n as u64;
        driver.ack(sent);
        if progress == HandshakeProgress::Complete {
            break;
        }
    }
    let handover = driver.into_session().unwrap();
    let mut session = handover.session;
    let format = RecordFormat::for_version(session.version());
    let body: Vec<u8> = (0..6000)
        .flat_map(|i| format!("line {i:05}\n").into_bytes())
        .collect();
    let (mut epoch, mut seq) = (0u32, session.tx_seq_start());
    let respond = |session: &handshake::RecordSession,
                   sock: &mut std::net::TcpStream,
                   epoch: u32,
                   seq: &mut u64,
                   marker: &str| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len() + marker.len()
        );
        let mut object = body.clone();
        object.extend_from_slice(marker.as_bytes());
        let layout = ResponseLayout::new(format, head.len(), 0, object.len() as u64, *seq).unwrap();
        sock.write_all(&seal_response(
            session.tx_keys(epoch).unwrap(),
            &layout,
            head.as_bytes(),
            &object,
        ))
        .unwrap();
        *seq = layout.next_seq_base();
    };

    let mut requests = 0;
    let mut pending = handover.early_plaintext;
    stdin.write_all(b"GET /one HTTP/1.1\r\n").unwrap();
    stdin.flush().unwrap();
    while requests < 2 {
        let bytes = read(&mut sock);
        session.receive(&bytes).unwrap();
        while let Some(incoming) = session.next_incoming().unwrap() {
            match incoming {
                Incoming::AppData(d) => pending.extend_from_slice(d),
                Incoming::KeyUpdated { update_requested } => {
                    assert!(update_requested);
                    let mut ku = [0u8; KEY_UPDATE_RECORD_LEN];
                    let n = session.seal_key_update(seq, false, &mut ku).unwrap();
                    sock.write_all(&ku[..n]).unwrap();
                    (epoch, seq) = (session.tx_epoch(), 0);
                    stdin.write_all(b"GET /two HTTP/1.1\r\n").unwrap();
                    stdin.flush().unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
            pending.drain(..end + 2);
            requests += 1;
            respond(
                &session,
                &mut sock,
                epoch,
                &mut seq,
                if requests == 1 {
                    "BODY-ONE-END\n"
                } else {
                    "BODY-TWO-END\n"
                },
            );
            if requests == 1 {
                // s_client reads commands from stdin: "K" sends a KeyUpdate asking for ours.
                let next: &[u8] = if key_update {
                    b"K\n"
                } else {
                    b"GET /two HTTP/1.1\r\n"
                };
                stdin.write_all(next).unwrap();
                stdin.flush().unwrap();
            }
        }
    }
    let mut alert = [0u8; 64];
    let n = session.seal_close_notify(epoch, seq, &mut alert).unwrap();
    sock.write_all(&alert[..n]).unwrap();
    // close_notify, then FIN, as the pipeline will. s_client then exits (closing its stdin
    // first would make it quit before reading everything). Bounded wait.
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let wait_until = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > wait_until {
            let _ = child.kill();
            panic!("s_client did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let stdout = stdout_reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        stdout.contains(expect_cipher),
        "cipher {expect_cipher} not in s_client output:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(stdout.contains("ALPN protocol: http/1.1"), "{stdout}");
    for marker in ["line 05999\nBODY-ONE-END\n", "line 05999\nBODY-TWO-END\n"] {
        assert!(
            stdout.contains(marker),
            "missing {marker:?} in s_client output ({} lines, tail {:?}):\n{stderr}",
            stdout.matches("line ").count(),
            &stdout[stdout.len().saturating_sub(300)..]
        );
    }
    assert_eq!(
        stdout.matches("line 03000\n").count(),
        2,
        "both bodies arrive whole"
    );
    if key_update {
        // s_client reports the "K" command on stderr.
        assert!(stderr.contains("KEYUPDATE"), "{stderr}");
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use std::fmt::Write as _;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                B64[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        writeln!(pem, "{}", std::str::from_utf8(line).unwrap()).unwrap();
    }
    pem + "-----END CERTIFICATE-----\n"
}

#[test]
fn openssl_tls13_aes128_with_key_update() {
    openssl_s_client_exchange(
        false,
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
        true,
        "TLS_AES_128_GCM_SHA256",
    );
}

#[test]
fn openssl_tls13_aes256_rsa_with_key_update() {
    openssl_s_client_exchange(
        true,
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
        true,
        "TLS_AES_256_GCM_SHA384",
    );
}

#[test]
fn openssl_tls13_chacha20() {
    openssl_s_client_exchange(
        false,
        &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        false,
        "TLS_CHACHA20_POLY1305_SHA256",
    );
}

#[test]
fn openssl_tls12_ecdhe_rsa_aes256() {
    openssl_s_client_exchange(
        true,
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"],
        false,
        "ECDHE-RSA-AES256-GCM-SHA384",
    );
}

#[test]
fn openssl_tls12_ecdhe_ecdsa_aes128() {
    openssl_s_client_exchange(
        false,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        false,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    );
}

mod garbage {
    //! Bad input gets an error, never a panic.
    use super::*;
    use proptest::prelude::*;

    fn config() -> Arc<rustls::ServerConfig> {
        static CONFIG: std::sync::OnceLock<Arc<rustls::ServerConfig>> = std::sync::OnceLock::new();
        CONFIG
            .get_or_init(|| {
                let pki = make_pki("garbage", false);
                load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap()
            })
            .clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn handshake_driver_survives_garbage(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..8),
                                             tls_like in any::<bool>()) {
            let mut driver = HandshakeDriver::new(config()).unwrap();
            for (i, mut chunk) in chunks.into_iter().enumerate() {
                if tls_like && i == 0 && chunk.len() >= 5 {
                    // A plausible handshake record header over random contents.
                    let len = chunk.len() - 5;
                    chunk[..5].copy_from_slice(&[22, 3, 1, (len >> 8) as u8, len as u8]);
                }
                if driver.receive(&chunk).is_err() {
                    break;
                }
            }
            prop_assert!(!driver.is_complete());
        }

        #[test]
        fn record_session_survives_garbage(v13 in any::<bool>(), chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..8)) {
            let (mut server, _) = session_pair(if v13 { TlsVersion::Tls13 } else { TlsVersion::Tls12 });
            'outer: for chunk in chunks {
                if server.receive(&chunk).is_err() {
                    break;
                }
                loop {
                    match server.next_incoming() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }
    }
}

#[test]
fn handshake_fed_one_byte_at_a_time() {
    let pki = make_pki("bytewise", false);
    let config = load_server_config(&pki.dir.join("cert.pem"), &pki.dir.join("key.pem")).unwrap();
    let mut driver = HandshakeDriver::new(config).unwrap();
    let mut client = client(&pki, provider::cipher_suite::TLS13_AES_128_GCM_SHA256);
    client
        .writer()
        .write_all(b"GET /bytewise HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut sent = 0;
    let mut complete = false;
    for _ in 0..10 {
        for b in client_output(&mut client) {
            complete = driver.receive(&[b]).unwrap() == HandshakeProgress::Complete;
        }
        server_to_client(&mut driver, &mut sent, &mut client);
        if complete {
            break;
        }
    }
    assert!(complete);
    let handover = driver.into_session().unwrap();
    let mut session = handover.session;
    let mut got = handover.early_plaintext.clone();
    while let Some(Incoming::AppData(d)) = session.next_incoming().unwrap() {
        got.extend_from_slice(d);
    }
    assert_eq!(got, b"GET /bytewise HTTP/1.1\r\n\r\n".to_vec());
}
