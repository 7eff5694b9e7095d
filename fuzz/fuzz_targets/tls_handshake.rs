//! The server's TLS handshake driver (`HandshakeDriver`, over rustls) and its handover to
//! the record session. Mode bit 0 clear: the input is raw bytes from a hostile client, fed in
//! chunks. Set: a real rustls client handshakes, the input picks the chunking of its bytes,
//! flips bytes in them and injects raw bytes; after the handover, application data the client
//! sends must come out of the record session unchanged (when nothing was corrupted).
#![no_main]
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use appliance::tls::handshake::{HandshakeDriver, HandshakeProgress, Incoming};
use appliance_fuzz::Input;
use libfuzzer_sys::fuzz_target;

type Configs = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);

fn configs() -> Configs {
    static CFG: OnceLock<Configs> = OnceLock::new();
    CFG.get_or_init(|| appliance::loopback::test_tls_configs().expect("test certificates")).clone()
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let (server_cfg, client_cfg) = configs();
    let mut hs = HandshakeDriver::new(server_cfg).expect("driver");
    if mode & 1 == 0 {
        while !inp.is_empty() {
            let n = inp.u8() as usize * 8 + 1;
            let chunk = inp.bytes(n);
            let before = hs.tx_end();
            let r = hs.receive(chunk);
            assert!(hs.tx_end() >= before);
            let mut out = vec![0u8; 64];
            let got = hs.tx_read(0, &mut out);
            assert!(got as u64 <= hs.tx_end());
            match r {
                Ok(HandshakeProgress::Complete) => panic!("a handshake completed from fuzzed bytes alone"),
                Ok(_) => {}
                Err(_) => {
                    assert!(hs.receive(b"x").is_err(), "a failed handshake stays failed");
                    return;
                }
            }
        }
        return;
    }
    let name = rustls::pki_types::ServerName::try_from("appliance.test").unwrap();
    let mut client = rustls::ClientConnection::new(client_cfg, name).unwrap();
    let n = inp_len(&mut inp);
    let request = inp.bytes(n).to_vec();
    client.writer().write_all(&request).unwrap();
    let mut corrupted = false;
    let mut acked = 0u64;
    let mut rounds = 0;
    let progress = loop {
        rounds += 1;
        if rounds > 64 {
            return;
        }
        let mut c2s = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        // Fuzz the client's flight: flip a byte, maybe add raw bytes.
        let op = inp.u8();
        if op & 1 != 0 && !c2s.is_empty() {
            let at = inp.u16() as usize % c2s.len();
            let x = inp.u8().max(1);
            c2s[at] ^= x;
            corrupted = true;
        }
        if op & 2 != 0 {
            let n = inp.u8() as usize;
            c2s.extend_from_slice(inp.bytes(n));
            corrupted = true;
        }
        let chunk = (op as usize >> 2) * 37 + 1;
        let mut result = Ok(HandshakeProgress::NeedMoreInput);
        for piece in c2s.chunks(chunk) {
            result = hs.receive(piece);
            if result.is_err() {
                break;
            }
        }
        // The server's bytes to the client, acknowledged as read.
        let out = hs.tx_bytes(acked).to_vec();
        acked += out.len() as u64;
        hs.ack(acked);
        let mut rd = &out[..];
        while !rd.is_empty() {
            match client.read_tls(&mut rd) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let client_failed = client.process_new_packets().is_err();
        match result {
            Err(_) => return,
            Ok(HandshakeProgress::Complete) => break HandshakeProgress::Complete,
            Ok(HandshakeProgress::PeerClosed) => return,
            Ok(HandshakeProgress::NeedMoreInput) => {}
        }
        if client_failed || (!client.wants_write() && c2s.is_empty() && inp.is_empty()) {
            return;
        }
    };
    assert_eq!(progress, HandshakeProgress::Complete);
    let Ok(mut handover) = hs.into_session() else {
        assert!(corrupted, "a clean handshake could not be handed over");
        return;
    };
    // Application data after the handover goes through the fast path's record session.
    let mut sent = request.clone();
    let n = inp_len(&mut inp);
    let more = inp.bytes(n).to_vec();
    client.writer().write_all(&more).unwrap();
    sent.extend_from_slice(&more);
    let mut c2s = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut c2s).unwrap();
    }
    let mut got = handover.early_plaintext.clone();
    let session = &mut handover.session;
    let mut failed = false;
    // What came with the client's Finished first, then the rest in fuzzed chunks.
    let chunk = 1 + inp.u8() as usize * 64;
    let mut pieces = std::iter::once(&[][..]).chain(c2s.chunks(chunk));
    while let Some(piece) = pieces.next().filter(|_| !failed) {
        if session.receive(piece).is_err() {
            failed = true;
            break;
        }
        loop {
            match session.next_incoming() {
                Ok(Some(Incoming::AppData(d))) => got.extend_from_slice(d),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    }
    if !corrupted {
        assert!(!failed, "the record session refused a clean client's records");
        assert_eq!(got, sent, "application data changed through the handover");
    }
    let _ = client.reader().read(&mut [0u8; 16]);
});

fn inp_len(inp: &mut Input) -> usize {
    inp.u8() as usize * 4
}
