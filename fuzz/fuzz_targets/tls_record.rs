//! The TLS record layer: `RecordHeader::parse`, `open_in_place` with fixed keys over raw
//! bytes, seal-then-open round trips, and `RecordSession` (reassembly, opening, alerts,
//! KeyUpdate, renegotiation) fed a stream of records sealed by a well-behaved peer mixed with
//! raw bytes, delivered in fuzzed chunks.
//!
//! Input: a mode byte (suite, version), then operations: 0 seal a record (type, TLS 1.3
//! padding, u16 length, plaintext), 1 raw bytes (u16 length), 2 deliver a u16 of pending
//! bytes, 3 deliver everything; anything else delivers one byte.
#![no_main]
use appliance::tls::handshake::{Incoming, RecordSession};
use appliance::tls::keys::{AeadSuite, Keys, TlsVersion, TrafficSecret};
use appliance::tls::record::{self, RecordHeader, HEADER_LEN, MAX_PLAINTEXT, TAG_LEN};
use appliance_fuzz::Input;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x11; 32];
const IV: [u8; 12] = [0x22; 12];
const SECRET: [u8; 48] = [0x33; 48];

fn hash_len(suite: AeadSuite) -> usize {
    if suite == AeadSuite::Aes256Gcm {
        48
    } else {
        32
    }
}

/// The peer's transmit state, mirrored by the session's receive state.
struct Sealer {
    keys: Keys,
    secret: Option<TrafficSecret>,
    seq: u64,
}

fn keys_for(version: TlsVersion, suite: AeadSuite) -> (Keys, Option<TrafficSecret>) {
    match version {
        TlsVersion::Tls13 => {
            let s = TrafficSecret::new(suite, &SECRET[..hash_len(suite)]).unwrap();
            (Keys::from_traffic_secret(&s).unwrap(), Some(s))
        }
        TlsVersion::Tls12 => (Keys::new(version, suite, &KEY[..suite.key_len()], &IV).unwrap(), None),
    }
}

fn valid_type(t: u8) -> bool {
    matches!(t, record::CONTENT_ALERT | record::CONTENT_HANDSHAKE | record::CONTENT_APPLICATION_DATA)
}

/// Seal `plain` as `content_type` (TLS 1.3: with `pad` zeros), check that it opens back to
/// the same thing, and return the wire bytes and, for a valid record, its type and content.
fn seal(s: &mut Sealer, version: TlsVersion, content_type: u8, pad: usize, plain: &[u8]) -> (Vec<u8>, Option<(u8, Vec<u8>)>) {
    let wire = match version {
        TlsVersion::Tls13 => {
            let mut payload = plain.to_vec();
            payload.push(content_type);
            payload.resize(payload.len() + pad, 0);
            let mut header = [0u8; HEADER_LEN];
            let mut tag = [0u8; TAG_LEN];
            if record::seal_in_place(&s.keys, s.seq, &mut header, &mut payload, &mut tag).is_err() {
                assert!(payload.len() > MAX_PLAINTEXT + 1, "sealing {} bytes failed", payload.len());
                return (Vec::new(), None);
            }
            [&header[..], &payload, &tag].concat()
        }
        TlsVersion::Tls12 => {
            let mut out = vec![0u8; plain.len() + 64];
            let n = record::seal_record_into(&s.keys, s.seq, content_type, plain, &mut out).expect("TLS 1.2 seal");
            out.truncate(n);
            out
        }
    };
    // Round trip with the open function on a copy. TLS 1.3: the content type is the last
    // non-zero byte of the inner plaintext, so a zero type with content that ends in a valid
    // one opens as that (RFC 8446 5.4).
    let (eff_type, eff_plain) = match version {
        TlsVersion::Tls13 => {
            let mut inner = plain.to_vec();
            inner.push(content_type);
            match inner.iter().rposition(|&b| b != 0) {
                Some(at) => (inner[at], inner[..at].to_vec()),
                None => (0, Vec::new()),
            }
        }
        TlsVersion::Tls12 => (content_type, plain.to_vec()),
    };
    let mut copy = wire.clone();
    let opened = record::open_in_place(&s.keys, s.seq, &mut copy);
    let inner_len = plain.len() + usize::from(version == TlsVersion::Tls13) + pad;
    let expect_ok = valid_type(eff_type)
        && eff_plain.len() <= MAX_PLAINTEXT
        && (version == TlsVersion::Tls12 || inner_len <= MAX_PLAINTEXT + 256 - TAG_LEN);
    match opened {
        Ok(o) => {
            assert!(expect_ok, "opened a record that should have been refused");
            assert_eq!(o.content_type, eff_type);
            assert_eq!(&copy[o.plaintext.clone()], &eff_plain[..], "round trip changed the plaintext");
        }
        Err(e) => assert!(!expect_ok, "a record sealed with the right keys was refused: {e}"),
    }
    // The seal-side KeyUpdate: the well-behaved peer switches keys after sending one.
    let key_update = version == TlsVersion::Tls13
        && expect_ok
        && eff_type == record::CONTENT_HANDSHAKE
        && eff_plain.len() == 5
        && eff_plain[..4] == [24, 0, 0, 1]
        && eff_plain[4] <= 1;
    s.seq += 1;
    if key_update {
        let next = s.secret.as_ref().unwrap().next();
        s.keys = Keys::from_traffic_secret(&next).unwrap();
        s.secret = Some(next);
        s.seq = 0;
    }
    (wire, expect_ok.then_some((eff_type, eff_plain)))
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let suite = [AeadSuite::Aes128Gcm, AeadSuite::Aes256Gcm, AeadSuite::ChaCha20Poly1305, AeadSuite::Aes128Gcm][(mode & 3) as usize];
    let version = if mode & 4 != 0 && suite != AeadSuite::ChaCha20Poly1305 { TlsVersion::Tls12 } else { TlsVersion::Tls13 };

    // The header parser and the open function on raw bytes.
    let mut h = [0u8; HEADER_LEN];
    let raw = inp.bytes(HEADER_LEN);
    h[..raw.len()].copy_from_slice(raw);
    let header = RecordHeader::parse(&h);
    assert_eq!(header.record_len(), HEADER_LEN + u16::from_be_bytes([h[3], h[4]]) as usize);
    let (keys, _) = keys_for(version, suite);
    let raw_len = inp.u16() as usize;
    let mut rec = [&h[..], inp.bytes(raw_len)].concat();
    if let Ok(o) = record::open_in_place(&keys, 0, &mut rec) {
        assert!(o.plaintext.end <= rec.len() && valid_type(o.content_type));
    }

    // A session and its well-behaved peer.
    let (tx, tx_secret) = keys_for(version, suite);
    let (rx, rx_secret) = keys_for(version, suite);
    let mut session = RecordSession::new(tx, tx_secret, 0, rx, rx_secret, 0);
    let (peer_keys, peer_secret) = keys_for(version, suite);
    let mut peer = Sealer { keys: peer_keys, secret: peer_secret, seq: 0 };
    let mut wire: Vec<u8> = Vec::new();
    let mut delivered = 0usize;
    // Plaintexts of the sealed application-data records, in order, while no raw byte was sent.
    let mut expected: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut tainted = false;
    let mut out = vec![0u8; 2048];
    let mut ops = 0;
    'ops: while ops < 64 {
        ops += 1;
        let op = inp.u8();
        let mut deliver = 0usize;
        match op & 3 {
            0 if !inp.is_empty() => {
                let ct = inp.u8();
                let pad = if version == TlsVersion::Tls13 { inp.u8() as usize } else { 0 };
                let n = (inp.u16() as usize) % (MAX_PLAINTEXT + 64);
                let plain = inp.bytes(n);
                let (rec, valid) = seal(&mut peer, version, ct, pad, plain);
                if let Some((record::CONTENT_APPLICATION_DATA, p)) = valid {
                    expected.push_back(p);
                }
                wire.extend_from_slice(&rec);
            }
            1 => {
                let n = inp.u16() as usize;
                let b = inp.bytes(n);
                tainted |= !b.is_empty();
                wire.extend_from_slice(b);
            }
            2 => deliver = inp.u16() as usize,
            _ => deliver = if inp.is_empty() { usize::MAX } else { 1 },
        }
        if inp.is_empty() {
            deliver = usize::MAX;
        }
        while deliver > 0 && delivered < wire.len() {
            let n = deliver.min(wire.len() - delivered).min(session.rx_space());
            if n == 0 {
                break;
            }
            session.receive(&wire[delivered..delivered + n]).expect("receive within rx_space");
            delivered += n;
            deliver -= n;
            // Open everything complete.
            loop {
                match session.next_incoming() {
                    Ok(None) => break,
                    Ok(Some(Incoming::AppData(d))) => {
                        assert!(d.len() <= MAX_PLAINTEXT);
                        if !tainted {
                            let want = expected.pop_front().expect("no more application data was sealed");
                            assert_eq!(d, &want[..], "application data changed on the way");
                        }
                    }
                    Ok(Some(Incoming::KeyUpdated { update_requested })) => {
                        assert_eq!(version, TlsVersion::Tls13);
                        if update_requested {
                            assert!(session.key_update_requested());
                            let epoch = session.tx_epoch();
                            let n = session.seal_key_update(0, false, &mut out).expect("seal KeyUpdate");
                            assert!(n > HEADER_LEN && session.tx_epoch() == epoch + 1);
                            session.tx_keys(epoch).expect("old epoch kept for retransmissions");
                            session.release_old_tx_epoch();
                        }
                    }
                    Ok(Some(Incoming::CloseNotify)) => {
                        assert!(session.peer_closed());
                        session.seal_close_notify(session.tx_epoch(), 1, &mut out).expect("seal close_notify");
                        break 'ops;
                    }
                    Ok(Some(Incoming::RenegotiationRefused)) => assert_eq!(version, TlsVersion::Tls12),
                    Ok(Some(Incoming::WarningAlert(_))) => {}
                    Err(e) => {
                        // Fatal: the alert for it must seal.
                        session.seal_fatal_alert_for(&e, session.tx_epoch(), 1, &mut out).expect("seal the fatal alert");
                        break 'ops;
                    }
                }
            }
        }
    }
});
